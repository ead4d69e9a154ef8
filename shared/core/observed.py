"""What the outside world answers, as pure values the ports return: a server-side apply's result,
a DaemonSet's rollout, a node pool operation that failed.

They were the adapters' own types; the ports name them, so they live in the core, and the
adapters (`shared.adapters.kube`, `shared.adapters.gke`) build them.
"""

from __future__ import annotations

from dataclasses import dataclass

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class ApplyResult:
    key: Key                # (apiVersion, kind, namespace or "", name)
    changed: bool           # created, or its content/ownership changed (see Kube.apply)
    resource_version: str


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
