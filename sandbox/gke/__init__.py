"""The sandbox GKE API server (`google.container.v1.ClusterManager` on loopback).

Public surface: `GkeSandbox`, `HttpPushSink`, `load_scenario`, `ScenarioError`, `ClusterKey`.
Kept import-light: grpc and the GKE client types load on first use of these names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClusterKey", "GkeSandbox", "HttpPushSink", "ScenarioError", "load_scenario"]


def __getattr__(name: str) -> Any:
    if name == "GkeSandbox":
        from sandbox.gke.server import GkeSandbox
        return GkeSandbox
    if name == "HttpPushSink":
        from sandbox.gke.audit import HttpPushSink
        return HttpPushSink
    if name == "ClusterKey":
        from sandbox.gke.world import ClusterKey
        return ClusterKey
    if name == "ScenarioError":
        from sandbox.gke.scenario import ScenarioError
        return ScenarioError
    if name == "load_scenario":
        from sandbox.gke.scenario import load
        return load
    raise AttributeError(name)
