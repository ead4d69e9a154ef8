"""The ports: what the flows need from the outside world, as small typed interfaces.

The flows (`shared.flows`) are written against these `Protocol`s, never against an SDK or an
adapter module, so they can be read (and tested with a small fake) without Firestore, GKE or a
cluster. The adapters (`shared.adapters`) implement them; the composition root (`shared.app`)
plugs one into the other. The value types that cross a port (`ClusterRecord`, `NadVersion`,
`Document`, `AlreadyHandled`, `DELETE`) live here too: they belong to the contract, not to one
implementation; the typed records themselves (`ClusterWorkflow`, `NadRecord`, `FleetRollout`,
`LedgerEntry`) are the core's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.core.endpoints import Endpoint
from shared.core.errors import Problem, RejectionKind
from shared.core.observed import ApplyResult, KubeObject, Listed, PoolFailure, Rollout
from shared.core.prechecks import ClusterFacts
from shared.core.records import ClusterWorkflow, FleetRollout, LedgerEntry, LedgerNote, NadRecord, WorkflowUpdate
from shared.core.refs import ClusterRef
from shared.core.requesters import Requester
from shared.core.settings import NodePoolTemplate

# The policy document as read: operators' input (docs/FIRESTORE.md `config/policy`), not a record the store owns, so
# it crosses as decoded JSON and `shared.core.policy.Policy.merged` validates it, naming unknown
# and malformed fields. Every record the controller writes crosses typed.
Document = dict[str, object]


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
    """Who holds a cluster's workflow, for which step, until when (the store maps it to `lease`)."""

    holder: str  # the delivery that holds it
    step: str
    expires_at: dt.datetime

    def live(self, now: dt.datetime) -> bool:
        return self.expires_at > now


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster's workflow as the store read it: the state, the lease and the typed `workflow`.

    Flows read `workflow` (and `state`, `lease`, `updated_at`), whose fields the store alone maps
    to the document's. `data` is the document as stored, for display (`status CLUSTER`) and tests.
    """

    ref: ClusterRef
    state: str
    data: Mapping[str, object] = field(default_factory=dict)  # the whole document as stored
    lease: Lease | None = None
    workflow: ClusterWorkflow = field(default_factory=ClusterWorkflow)
    updated_at: dt.datetime | None = None  # when the store last wrote it (reconcile resumes stalled ones)

    def get(self, name: str, default: object = None) -> object:
        """A document field by its stored name (display and tests)."""
        value = self.data.get(name, default)
        return default if value is None else value

    @property
    def attempts(self) -> int:
        return self.workflow.attempts

    @property
    def last_error(self) -> Mapping[str, object] | None:
        """`lastError` as stored (display and tests; flows read `workflow.last_error`)."""
        value = self.data.get("lastError")
        return value if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class NadVersion:
    """A NAD record as a worker last read or wrote it, and its update time (None: there was no
    document). Handed back to `put_nad_version(known=...)`, it is the precondition of the next
    write instead of a read: a NAD apply reads its document once and never again."""

    record: NadRecord | None
    update_time: object  # opaque: the store's own precondition


# A `put_nad` change: the NAD record as read (state None: no document yet) -> as it should be.
NadChange = Callable[[NadRecord], NadRecord]


class StorePort(Protocol):
    """Workflow documents, the ledger and the history (Firestore in production).

    Every method is spelled out (no `**kw`): `shared.adapters.store.Store` is checked against
    this by mypy (`shared.app`), and `tests/fakes.py`'s `FakeStore` by the same contract tests
    (`tests/test_store_contract.py`) as the real store.
    """

    def get_cluster(self, ref: ClusterRef) -> ClusterRecord | None: ...
    def get_cluster_unless_seen(self, ref: ClusterRef, ledger_key: str) -> tuple[ClusterRecord | None, bool]: ...
    def claim(self, ref: ClusterRef, *, event_id: str, step: str, ledger_key: str | None = None,
              create_state: str | None = None, lease_seconds: int | None = None,
              holder: str | None = None) -> ClusterRecord: ...
    def advance(self, ref: ClusterRef, *, event_id: str, step: str, outcome: str = "ok", message: str = "",
                state: str | None = None, next_step: str | None = None,
                ledger_key: str | None = None, release: bool = False,
                holder: str | None = None, update: WorkflowUpdate | None = None) -> ClusterRecord: ...
    def release(self, ref: ClusterRef, *, event_id: str, step: str, error: str, outcome: str = "retry",
                state: str | None = None, count_attempt: bool = True,
                holder: str | None = None, update: WorkflowUpdate | None = None) -> ClusterRecord: ...
    def hold(self, ref: ClusterRef, *, holder: str, step: str, seconds: int | None = None) -> None: ...
    def list_clusters(self, state: str | None = None, *, limit: int | None = None) -> list[ClusterRecord]: ...
    def seen(self, ledger_key: str) -> bool: ...
    def get_ledger(self, ledger_key: str) -> LedgerEntry | None: ...
    def record_ledger(self, ledger_key: str, *, event_id: str, step: str, outcome: str,
                      cluster: ClusterRef | None, note: LedgerNote | None = None) -> bool: ...
    def get_nad(self, ref: ClusterRef, namespace: str, name: str) -> NadRecord | None: ...
    def put_nad(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                change: NadChange, outcome: str = "ok", ledger_key: str | None = None,
                expect_states: tuple[str | None, ...] | None = None,
                expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                known: NadVersion | None = None) -> bool: ...
    def put_nad_version(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                        change: NadChange, outcome: str = "ok", ledger_key: str | None = None,
                        expect_states: tuple[str | None, ...] | None = None,
                        expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                        write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                        known: NadVersion | None = None) -> NadVersion | None: ...
    def get_cluster_and_nad_unless_seen(self, ref: ClusterRef, ledger_key: str, namespace: str,
                                        name: str) -> tuple[ClusterRecord | None, bool, NadVersion]: ...
    # `fields`: the `NadRecord` attributes to read (a projection); the others keep their defaults.
    def list_nads(self, ref: ClusterRef, state: str | None = None, *,
                  fields: tuple[str, ...] | None = None) -> list[NadRecord]: ...
    def record_rejection(self, *, event_id: str, cluster: ClusterRef | None, reason: str,
                         problems: Sequence[Problem], kind: RejectionKind, excerpt: str = "",
                         ledger_key: str | None = None) -> bool: ...
    def get_policy(self) -> Document | None: ...
    # `rollouts/current`. The update time is opaque to the flows: read with the record, handed back
    # as the precondition of the next write (`Transient` when another writer came in between);
    # `put_rollout` writes the record whole and returns the new update time.
    def get_rollout(self) -> tuple[FleetRollout | None, object]: ...
    def put_rollout(self, rollout: FleetRollout, update_time: object) -> object: ...


class GkePort(Protocol):
    """The GKE API (ClusterManager) as the flows use it: GKE's messages are decoded by the adapter
    (`shared.adapters.gke.decode_cluster`), so only pure values cross."""

    def get_cluster(self, ref: ClusterRef) -> ClusterFacts: ...
    def list_clusters(self, project: str, location: str = "-") -> list[ClusterFacts]: ...
    def secondary_range_cidr(self, ref: ClusterRef, subnetwork: str, range_name: str) -> str: ...
    def create_node_pool(self, ref: ClusterRef, template: NodePoolTemplate) -> str | None: ...
    def delete_node_pool(self, ref: ClusterRef, name: str) -> str | None: ...
    def operation_failure(self, ref: ClusterRef, operation: str) -> PoolFailure | None: ...
    def endpoint(self, cluster: ClusterFacts) -> Endpoint: ...  # NeedsFix when it cannot be reached
    def api_client(self, cluster: ClusterFacts) -> object: ...  # what `shared.adapters.kube.Kube` is built on


class ClusterApiPort(Protocol):
    """One cluster's Kubernetes API: server-side apply, waits, reads (`shared.adapters.kube.Kube`).

    Objects cross as `KubeObject` (a JSON object as the API server serves it): Kubernetes' own
    schema, read by the pure code that knows each kind (`shared.core.multus`, `shared.core.nad`)."""

    requests: int

    def apply(self, objects: Iterable[KubeObject]) -> Sequence[ApplyResult]: ...
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> KubeObject | None: ...
    def rollout_of(self, ds: KubeObject) -> Rollout: ...
    # NotYet when `timeout` passes first (the caller may wait again)
    def wait_established(self, crd_names: Iterable[str], *, timeout: float = 60.0, poll: float = 1.0) -> int: ...
    def daemonset_rollout(self, namespace: str, name: str) -> Rollout: ...
    def apply_nad(self, obj: KubeObject, *, listed: Listed | None = None) -> ApplyResult: ...
    def delete_nad(self, namespace: str, name: str, *, cluster: str | None = None) -> bool: ...
    def list_nads(self) -> list[KubeObject]: ...  # every NAD, anyone's
    def list_managed_nads(self) -> list[KubeObject]: ...
    def list_ippools(self) -> list[KubeObject]: ...
    def list_pod_refs(self) -> list[str]: ...
    def list_pods(self, label_selector: str, namespace: str | None = None) -> list[KubeObject]: ...
    def create_pod(self, obj: KubeObject) -> KubeObject: ...
    def get_pod(self, namespace: str, name: str) -> KubeObject | None: ...
    def delete_pod(self, namespace: str, name: str) -> bool: ...
    def pod_network_status(self, namespace: str, name: str) -> list[KubeObject] | None: ...
    def pod_events(self, namespace: str, name: str) -> list[KubeObject]: ...
    # Last: a method named `list` would shadow the builtin in the annotations after it.
    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[KubeObject]: ...


class IdentityPort(Protocol):
    """Verifies a requester's ID token (shared/adapters/idtoken.py); `Rejected` says why not."""

    def verify(self, token: str | None) -> Requester: ...


class PublisherPort(Protocol):
    """Pub/Sub publishing (the reconcile fan-out)."""

    def publish(self, topic: str, messages: Sequence[bytes]) -> list[str]: ...


@dataclass(frozen=True)
class PodDataPath:
    """One pod's secondary interface as the node's kernel shows it (`ip -j addr` in its namespace)."""

    netns: str
    addresses: tuple[str, ...]  # "10.0.0.5/24", IPv4 and IPv6 as the kernel lists them


@dataclass(frozen=True)
class Reach:
    """Whether one pod reaches an address over its secondary interface: ICMP echo, and ARP
    (the answer only a neighbour on the same layer-2 segment gives)."""

    icmp: bool
    arp: bool
    detail: str = ""


class DataPathPort(Protocol):
    """The node side of a pod's network, which the Kubernetes API does not show.

    `None` from either method means "not checked": a deployed controller has no way into a
    node's namespaces (GKE gives it none), so only the sandbox's probe answers.
    """

    def observe(self, ref: ClusterRef, pod_uid: str, ifname: str) -> PodDataPath | None: ...
    def reach(self, ref: ClusterRef, pod_uid: str, address: str, ifname: str) -> Reach | None: ...
