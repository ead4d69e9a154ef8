"""The ports: what the flows need from the outside world, as small typed interfaces.

The flows (`shared.flows`) are written against these `Protocol`s, never against an SDK or an
adapter module, so they can be read (and tested with a small fake) without Firestore, GKE or a
cluster. The adapters (`shared.adapters`) implement them; the composition root (`shared.app`)
plugs one into the other. The value types that cross a port (`ClusterRecord`, `AlreadyHandled`,
`DELETE`) live here too: they belong to the contract, not to one implementation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.core.refs import ClusterRef
from shared.core.settings import NodePoolTemplate


class AlreadyHandled(Exception):
    """The ledger already holds this key: the event was handled before; do nothing."""


class _Delete:
    """The `DELETE` sentinel: a field given this value is removed from the document."""

    _instance: _Delete | None = None

    def __new__(cls) -> _Delete:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "store.DELETE"


DELETE = _Delete()


@dataclass(frozen=True)
class Lease:
    holder: str  # the delivery that holds it
    step: str
    expires_at: dt.datetime

    def live(self, now: dt.datetime) -> bool:
        return self.expires_at > now

    def to_doc(self) -> dict[str, Any]:
        return {"holder": self.holder, "step": self.step, "expiresAt": self.expires_at}

    @classmethod
    def from_doc(cls, doc: Any) -> Lease | None:
        if not isinstance(doc, Mapping) or not doc.get("holder") or doc.get("expiresAt") is None:
            return None
        return cls(str(doc["holder"]), str(doc.get("step", "")), doc["expiresAt"])


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster's workflow document as the store read it."""

    ref: ClusterRef
    state: str
    data: dict[str, Any] = field(default_factory=dict)  # the whole document as stored
    lease: Lease | None = None

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value

    @property
    def attempts(self) -> int:
        return int(self.data.get("attempts") or 0)

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.data.get("lastError")

    @classmethod
    def of(cls, ref: ClusterRef, data: dict[str, Any]) -> ClusterRecord:
        return cls(ref, str(data.get("state", "")), data, Lease.from_doc(data.get("lease")))


@dataclass(frozen=True)
class NadVersion:
    """A NAD document as a worker last read or wrote it, and its update time (None: there was no
    document). Handed back to `put_nad_version(known=...)`, it is the precondition of the next
    write instead of a read: a NAD apply reads its document once and never again."""

    data: Mapping[str, Any]
    update_time: Any


class StorePort(Protocol):
    """Workflow documents, the ledger and the history (Firestore in production)."""

    def get_cluster(self, ref: ClusterRef) -> ClusterRecord | None: ...
    def get_cluster_unless_seen(self, ref: ClusterRef, ledger_key: str) -> tuple[ClusterRecord | None, bool]: ...
    def claim(self, ref: ClusterRef, *, event_id: str, step: str, ledger_key: str | None = None,
              **kw: Any) -> ClusterRecord: ...
    def advance(self, ref: ClusterRef, *, event_id: str, step: str, **kw: Any) -> ClusterRecord: ...
    def release(self, ref: ClusterRef, *, event_id: str, step: str, error: str, **kw: Any) -> ClusterRecord: ...
    def hold(self, ref: ClusterRef, *, holder: str, step: str, seconds: int | None = None) -> None: ...
    def list_clusters(self, state: str | None = None, *, limit: int | None = None) -> list[ClusterRecord]: ...
    def seen(self, ledger_key: str) -> bool: ...
    def get_ledger(self, ledger_key: str) -> dict[str, Any] | None: ...
    def record_ledger(self, ledger_key: str, *, event_id: str, step: str, outcome: str,
                      cluster: ClusterRef | None, fields: Mapping[str, Any] | None = None) -> None: ...
    def get_nad(self, ref: ClusterRef, namespace: str, name: str) -> dict[str, Any] | None: ...
    def put_nad(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str, state: str,
                **kw: Any) -> bool: ...
    def put_nad_version(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str, state: str,
                        **kw: Any) -> NadVersion | None: ...
    def get_cluster_and_nad_unless_seen(self, ref: ClusterRef, ledger_key: str, namespace: str,
                                        name: str) -> tuple[ClusterRecord | None, bool, NadVersion]: ...
    def list_nads(self, ref: ClusterRef, state: str | None = None, **kw: Any) -> list[dict[str, Any]]: ...
    def record_rejection(self, *, event_id: str, cluster: ClusterRef | None, reason: str, **kw: Any) -> None: ...
    def get_policy(self) -> dict[str, Any] | None: ...
    def get_rollout(self) -> tuple[dict[str, Any] | None, Any]: ...
    def put_rollout(self, doc: Mapping[str, Any], update_time: Any) -> Any: ...


class GkePort(Protocol):
    """The GKE API (ClusterManager) as the flows use it."""

    def get_cluster(self, ref: ClusterRef) -> Any: ...
    def list_clusters(self, project: str, location: str = "-") -> list[Any]: ...
    def secondary_range_cidr(self, ref: ClusterRef, subnetwork: str, range_name: str) -> str: ...
    def create_node_pool(self, ref: ClusterRef, template: NodePoolTemplate) -> str | None: ...
    def delete_node_pool(self, ref: ClusterRef, name: str) -> str | None: ...
    def operation_failure(self, ref: ClusterRef, operation: str) -> Any: ...  # a PoolFailure or None
    def endpoint(self, cluster: Any) -> Any: ...  # a core.endpoints.Endpoint; NeedsFix when unreachable
    def api_client(self, cluster: Any) -> Any: ...


class ClusterApiPort(Protocol):
    """One cluster's Kubernetes API: server-side apply, waits, reads (`shared.adapters.kube.Kube`)."""

    requests: int

    def apply(self, objects: Iterable[Mapping[str, Any]]) -> Sequence[Any]: ...
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...
    def rollout_of(self, ds: Mapping[str, Any]) -> Any: ...
    def wait_established(self, crd_names: Iterable[str], *, timeout: float = 60.0, poll: float = 1.0) -> int: ...
    def daemonset_rollout(self, namespace: str, name: str) -> Any: ...
    def apply_nad(self, obj: Mapping[str, Any]) -> Any: ...
    def delete_nad(self, namespace: str, name: str) -> bool: ...
    def list_managed_nads(self) -> list[dict[str, Any]]: ...
    def list_ippools(self) -> list[dict[str, Any]]: ...
    def list_pod_refs(self) -> list[str]: ...
    def list_pods(self, label_selector: str, namespace: str | None = None) -> list[dict[str, Any]]: ...
    def create_pod(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def delete_pod(self, namespace: str, name: str) -> bool: ...
    def pod_network_status(self, namespace: str, name: str) -> list[dict[str, Any]] | None: ...
    def pod_events(self, namespace: str, name: str) -> list[dict[str, Any]]: ...


class PublisherPort(Protocol):
    """Pub/Sub publishing (the reconcile fan-out)."""

    def publish(self, topic: str, messages: Sequence[bytes]) -> list[str]: ...
