"""What the outside world answers, as pure values the ports return: a server-side apply's result,
a DaemonSet's rollout, a node pool operation that failed.

They were the adapters' own types; the ports name them, so they live in the core, and the
adapters (`shared.adapters.kube`, `shared.adapters.gke`) build them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Key = tuple[str, str, str, str]

# A Kubernetes object as the API server serves it (decoded JSON). Its schema is Kubernetes', per
# kind; the code that reads one narrows what it reads (`isinstance`), as it would for any JSON.
KubeObject = dict[str, object]


def nested(obj: Mapping[str, object] | None, *path: str) -> object:
    """`obj[path[0]][path[1]]...`, or None where a step is missing or not an object."""
    value: object = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


@dataclass(frozen=True)
class ApplyResult:
    key: Key                # (apiVersion, kind, namespace or "", name)
    changed: bool           # created, or its content/ownership changed (see Kube.apply)
    resource_version: str


@dataclass(frozen=True)
class Listed:
    """What a LIST of the cluster's NADs, made after the caller's claim, found under one NAD's name
    (`live` None: nothing). Handed to `apply_nad`, it stands for the GET the apply would otherwise
    make to see whether a NAD of that name exists and whose it is: a NAD request already lists
    the cluster's NADs for its overlap check, so the second look cost a round trip for nothing."""

    live: KubeObject | None


@dataclass(frozen=True)
class Rollout:
    desired: int
    updated: int
    ready: int
    available: int
    observed: bool          # the controller has seen the current generation

    @property
    def complete(self) -> bool:
        """As `kubectl rollout status` decides for a DaemonSet."""
        return self.observed and self.updated >= self.desired and self.available >= self.desired


@dataclass(frozen=True)
class PoolFailure:
    """A node pool operation that ended DONE with an error, as GKE reported it."""

    message: str
    transient: bool
    reason: str  # GCE_STOCKOUT, GCE_QUOTA_EXCEEDED, or GKE's code name
    fix: str
