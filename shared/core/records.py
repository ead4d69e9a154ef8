"""The words of the workflow state, as types: cluster states, NAD states, step outcomes.

They are `StrEnum`s, so a member is the very word people read in the Firestore console and in
`status` (`ClusterState.READY == "READY"`, `f"{ClusterState.READY}"` is `READY`) and documents
keep their shape; but a typo in code (`ClusterState.REDAY`) is caught by the type checker, and
a function that takes a `ClusterState` cannot be handed a NAD state. `shared.core.decisions`
keeps its module constants (`decisions.READY`) as aliases of these members.

`ClusterWorkflow` is a cluster's workflow record as typed values, `NadRecord` a NAD's (its applied
part `AppliedNad` and its last request `LastRequest`, once each), `FleetRollout` the fleet's
bundle rollout (`rollouts/current`: its `Wave`s, its `RolloutCluster`s, the `BundleOptions` it
rolls out and back), `LedgerEntry` a handled event (with the `LedgerNote` of a NAD request); only
the store adapter turns them into Firestore documents and back (its `CLUSTER_FIELDS`, `NAD_FIELDS`,
`ROLLOUT_FIELDS` and `LEDGER_NOTE_FIELDS` tables), so the documents people read in the console
keep their camelCase shape (docs/FIRESTORE.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum

from shared.core.prechecks import Finding


class ClusterState(StrEnum):
    """Where a cluster's workflow is (docs/WORKFLOW.md)."""

    DISCOVERED = "DISCOVERED"  # known; waiting for the cluster to finish provisioning
    IGNORED = "IGNORED"  # not opted in: left alone
    INELIGIBLE = "INELIGIBLE"  # prechecks failed: findings say what to fix
    AWAITING_NODE_POOL = "AWAITING_NODE_POOL"  # eligible; needs a pool with additional networks
    CREATING_NODE_POOL = "CREATING_NODE_POOL"  # the controller asked GKE for one
    INSTALLING = "INSTALLING"  # applying the Multus + Whereabouts bundle
    READY = "READY"  # bundle installed, CRDs Established
    FAILED = "FAILED"  # a permanent error; lastError says why
    DELETED = "DELETED"  # the cluster is gone; nothing is applied to it again


class NadState(StrEnum):
    """Where a NAD record is (docs/FIRESTORE.md `clusters/{id}/nads`)."""

    PENDING = "PENDING"  # the cluster is not READY yet
    APPLYING = "APPLYING"  # claimed by a worker: range reserved, being applied to the cluster
    APPLIED = "APPLIED"
    VERIFIED = "VERIFIED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    DELETED = "DELETED"
    DELETING = "DELETING"  # claimed by a worker that is deleting it from the cluster
    ORPHANED = "ORPHANED"  # found on the cluster with our label and no record; conflicts, so not adopted


class StepOutcome(StrEnum):
    """How a step ended, in its history entry and ledger entry."""

    OK = "ok"
    RETRY = "retry"
    FAILED = "failed"
    REJECTED = "rejected"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    WARNING = "warning"


# --------------------------------------------------------------------------- the cluster workflow

@dataclass(frozen=True)
class LastError:
    """Why the last attempt of a step failed (`lastError`)."""

    message: str
    step: str
    event_id: str
    at: datetime | None = None  # set when `release` recorded it; a finding's error carries none


@dataclass(frozen=True)
class NodePoolFacts:
    """The multi-network pool the bundle was installed for, and the CIDR behind its range name (`nodePool`)."""

    name: str
    subnetwork: str
    secondary_pod_range: str
    cidr: str
    max_pods_per_node: int | None = None
    interface: str = "eth1"  # the nodes' NIC on `subnetwork`: every NAD's IPVLAN master (PoolNetworks.interface_of)


@dataclass(frozen=True)
class PoolFailureNote:
    """One failure of a node pool the controller asked for, as GKE reported it."""

    operation: str
    reason: str
    message: str


@dataclass(frozen=True)
class NodePoolRequest:
    """The node pool the controller asked GKE for (`nodePoolRequested`), and how its attempts went."""

    name: str
    operation: str = ""
    subnetwork: str = ""
    secondary_pod_range: str = ""
    attempt: int = 1
    failures: tuple[PoolFailureNote, ...] = ()
    failed_operation: str | None = None  # the operation whose failure was handled
    retry: bool | None = None  # True: the failed pool is being deleted, to be created again
    retry_after: float | None = None  # wall clock (s) before which it is not created again
    delete_operation: str | None = None


@dataclass(frozen=True)
class RolloutReport:
    """The DaemonSet's rollout as last seen (`rollout`)."""

    desired: int
    updated: int
    ready: int
    available: int
    complete: bool
    summary: str


@dataclass(frozen=True)
class Incarnation:
    """An earlier cluster under the same name (`previousIncarnations[]`)."""

    cluster_id: str
    create_time: str
    end_state: str


@dataclass(frozen=True)
class ApiEndpoint:
    """How the control plane is reached (`apiEndpoint`): `core.endpoints.Endpoint` as recorded."""

    kind: str
    address: str
    why: str


@dataclass(frozen=True)
class ClusterWorkflow:
    """What the workflow records about a cluster, beyond its state and lease.

    Flows read it from `ClusterRecord.workflow` and change it with `dataclasses.replace` (checked
    by mypy); `WorkflowUpdate` carries the change to the store, whose table
    (`shared.adapters.store.CLUSTER_FIELDS`) is the only place that knows the document's field
    names. Adding a field: an attribute here and a row there.
    """

    version: str | None = None  # GKE version when last checked
    status: str | None = None  # GKE status when last checked
    trigger: str | None = None  # what started the last drive
    findings: tuple[Finding, ...] = ()
    facts_digest: str | None = None  # of the facts the last decision was made on
    attempts: int = 0  # failed attempts (release counts them; a success resets them)
    releases: int = 0  # how many times `release` ran (numbers the retry history entries)
    last_error: LastError | None = None
    busy_since: float | None = None  # wall clock (s): since when GKE is busy with another operation
    node_pool: NodePoolFacts | None = None
    node_pool_requested: NodePoolRequest | None = None
    bundle_version: str | None = None
    rollout: RolloutReport | None = None
    install_requests: int | None = None
    api_endpoint: ApiEndpoint | None = None
    cluster_id: str | None = None  # GKE's id of this incarnation
    create_time: str | None = None
    incarnation: int | None = None
    previous_incarnations: tuple[Incarnation, ...] = ()
    new_incarnation_end: str | None = None  # set when the deleted cluster was created again
    pool_usage: Mapping[str, object] | None = None  # addresses per range (shared.flows.addresses)
    stale_allocations: int | None = None

    def update(self, after: ClusterWorkflow) -> WorkflowUpdate:
        """The change from this (as read) to `after`: the store writes only the fields that differ."""
        return WorkflowUpdate(self, after)


@dataclass(frozen=True)
class WorkflowUpdate:
    """A change of a cluster's workflow: the fields where `after` differs from `before` are written
    (a field that becomes None is removed, or set null where the document keeps a null)."""

    before: ClusterWorkflow
    after: ClusterWorkflow

    def changed(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(ClusterWorkflow)
                     if getattr(self.before, f.name) != getattr(self.after, f.name))

    def then(self, after: ClusterWorkflow) -> WorkflowUpdate:
        """This change followed by another made on its result."""
        return WorkflowUpdate(self.before, after)


# --------------------------------------------------------------------------- the history

@dataclass(frozen=True)
class HistoryEntry:
    """One step's outcome in a cluster's history (`clusters/{id}/history/{id}`).

    The store writes it through its table (`shared.adapters.store.HISTORY_FIELDS`) and adds the
    commit time (`at`) and its writer's clock (`seq`)."""

    event_id: str
    step: str
    outcome: str  # a `StepOutcome` word
    message: str
    state: str | None  # after the step (None: a rejection, which changes no state)
    previous_state: str | None = None
    nad: str | None = None  # `namespace/name` of a NAD step
    attempt: int | None = None  # of a retry or failure
    kind: str | None = None  # of a rejection
    requester: str | None = None  # the verified email of who asked, for a NAD step that records a request


# --------------------------------------------------------------------------- the NAD record

@dataclass(frozen=True)
class AppliedNad:
    """What of a NAD is on the cluster (`applied`): changed only when the cluster was changed."""

    range: str
    master: str
    config_digest: str | None = None  # `sha256:` of the `spec.config` applied
    request_id: str | None = None
    message_id: str | None = None
    state: str = NadState.APPLIED  # APPLIED or VERIFIED
    at: datetime | None = None
    requester: str | None = None  # the verified email of who asked (absent: the controller, or auth off)


@dataclass(frozen=True)
class LastRequest:
    """The last request on a NAD and its outcome (`lastRequest`); `request-nad --wait` reads it."""

    action: str
    state: str  # APPLYING/DELETING/PENDING on the way, then the outcome
    reasons: tuple[str, ...] = ()
    request_id: str | None = None
    message_id: str | None = None
    event_id: str | None = None
    range: str | None = None
    master: str | None = None
    digest: str | None = None
    request: Mapping[str, object] | None = None  # the request's body (`shared.core.nad` schema)
    at: datetime | None = None
    requester: str | None = None


@dataclass(frozen=True)
class NadClaim:
    """The claim of the worker carrying out a request (`claim`), removed when it settles."""

    action: str
    range: str | None
    master: str | None
    ledger: str
    event_id: str
    request_id: str | None
    previous_state: str | None
    holder: str
    released: bool | None = None  # its worker gave it back after a transient failure
    why: str | None = None


@dataclass(frozen=True)
class VerificationNote:
    """The last verification (`verification`)."""

    ok: bool
    message: str


@dataclass(frozen=True)
class VerifyPodMarker:
    """A verify pod of this NAD may exist until `until` (`verifyPod`); `pod` names one left behind."""

    until: float  # unix seconds
    pod: str | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class Adoption:
    """Reconcile recorded a managed object that had no record (`adopted`)."""

    at: datetime | None
    by: str


@dataclass(frozen=True)
class OrphanNote:
    """Why a managed object without a record is ORPHANED (`orphan`)."""

    reason: str
    found_at: datetime | None


@dataclass(frozen=True)
class PrunedNote:
    """An orphan reconcile deleted (`pruned`), with the config it had."""

    config: str
    at: datetime | None
    reason: str


@dataclass(frozen=True)
class NadRecord:
    """A NAD's record (`clusters/{id}/nads/{namespace}~{name}`) as typed values.

    It keeps what is on the cluster (`applied`, with the top-level `range`, `master`, `config`
    and `request` it was rendered from) apart from what was asked last (`last_request`).
    Flows read it from the store and change it with `dataclasses.replace`: a `put_nad` change
    takes the record as read and returns it as it should be, and the store writes the fields
    that differ through its table (`shared.adapters.store.NAD_FIELDS`), the only place that
    knows the document's field names. Adding a field: an attribute here and a row there.

    `namespace` and `name` are the record's identity; `updated_at` and `data` are the store's
    (when it last wrote the document, and the document as read, for display and tests): a change
    of them is not written.
    """

    namespace: str
    name: str
    state: NadState | None = None  # None: no document yet
    message: str = ""
    applied: AppliedNad | None = None
    range: str | None = None
    master: str | None = None
    config: str | None = None  # the exact `spec.config` applied (reconcile re-applies it byte for byte)
    request: Mapping[str, object] | None = None  # the request the config was rendered from
    request_id: str | None = None
    mode: str | None = None
    action: str | None = None
    last_request: LastRequest | None = None
    reasons: tuple[str, ...] | None = None  # why the last request was refused
    last_error: str | None = None  # why it failed
    claim_order: str | None = None
    claim: NadClaim | None = None
    claim_refused: str | None = None  # set by an overlapping claim that won
    adopted: Adoption | None = None
    orphan: OrphanNote | None = None
    pruned: PrunedNote | None = None
    verification: VerificationNote | None = None
    resource_version: str | None = None
    verify_pod: VerifyPodMarker | None = None
    request_excerpt: str | None = None  # of a request refused before it could be parsed
    updated_at: datetime | None = field(default=None, compare=False)
    data: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


def nad_state(value: object) -> NadState | None:
    """A stored state word as a `NadState` (None: absent, or not a NAD state)."""
    return NadState(value) if isinstance(value, str) and value in _NAD_STATES else None


_NAD_STATES = frozenset(s.value for s in NadState)



# --------------------------------------------------------------------------- the fleet's bundle rollout

class RolloutState(StrEnum):
    """Where the fleet's bundle rollout is (`rollouts/current.state`; docs/WORKFLOW.md "Bundle rollouts")."""

    RUNNING = "RUNNING"  # waves in progress
    HALTED = "HALTED"  # a cluster failed its health gate and was rolled back
    COMPLETED = "COMPLETED"  # every cluster of the plan passed: the target is the fleet's bundle
    ABORTED = "ABORTED"  # stopped: every cluster returns to the previous bundle


class WaveClusterState(StrEnum):
    """Where one cluster is in the rollout (`rollouts/current.clusters.{id}.state`)."""

    WAITING = "WAITING"  # not reached yet: it keeps the previous bundle
    UPDATING = "UPDATING"  # recorded before the target is applied; its gate is pending
    PASSED = "PASSED"  # its health gate passed
    ROLLED_BACK = "ROLLED_BACK"  # its gate failed: back on the previous bundle, the rollout HALTED
    SKIPPED = "SKIPPED"  # no longer READY when its wave came


@dataclass(frozen=True)
class BundleOptions:
    """The options a bundle is built from (`rollouts/current.target`/`previous`, the policy's bundle):
    None is the deployment's default; `version` names the bundle built (None: not built yet)."""

    version: str | None = None
    multus_image: str | None = None
    whereabouts_image: str | None = None
    log_level: str | None = None

    @property
    def given(self) -> bool:
        """Whether anything is set (an absent or empty map in the document reads as nothing given)."""
        return any(v is not None for v in (self.version, self.multus_image, self.whereabouts_image, self.log_level))


@dataclass(frozen=True)
class Wave:
    """One wave of a rollout's plan (`waves[]`): its name (`canary`, `wave 1`...) and cluster ids."""

    name: str
    clusters: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolloutCluster:
    """One cluster in the rollout (`clusters.{id}`). Times are ISO text as written by the flow."""

    path: str  # projects/P/locations/L/clusters/C
    wave: int
    state: WaveClusterState | None  # None: an unknown word (a hand-edited document); nothing acts on it
    since: str = ""
    message: str = ""
    started: float | None = None  # wall clock (s) when it went UPDATING: the gate's deadline counts from it


@dataclass(frozen=True)
class FleetRollout:
    """The fleet's bundle rollout (`rollouts/current`) as typed values.

    The rollout flow (`shared.flows.rollout`) reads it with `StorePort.get_rollout`, changes it
    with `dataclasses.replace` and writes it whole with `put_rollout`, preconditioned on the
    update time it read; the store's table (`shared.adapters.store.ROLLOUT_FIELDS`) is the only
    place that knows the document's field names. Adding a field: an attribute here and a row there.
    """

    state: RolloutState | None = None  # None: an unknown word (a hand-edited document); it is not driven
    target: BundleOptions = BundleOptions()
    previous: BundleOptions = BundleOptions()
    waves: tuple[Wave, ...] = ()
    wave: int = 0  # the index of the current wave in `waves`
    clusters: Mapping[str, RolloutCluster] = field(default_factory=dict)  # by cluster document id
    reason: str = ""  # why it halted or was aborted
    halted_cluster: str = ""  # the id of the cluster whose gate failed
    started_at: str = ""
    started_by: str = ""  # the event that started it
    updated_at: str = ""
    finished_at: str = ""
    resumed_at: str | None = None  # the last `rollout resume`
    wave_size: str | None = None  # the plan's wave size (`10`, `25%`), absent when nothing was planned
    canary: int | None = None  # the plan's canary count, absent when nothing was planned

    def with_cluster(self, cluster_id: str, entry: RolloutCluster) -> FleetRollout:
        """This rollout with one cluster's entry replaced."""
        return replace(self, clusters={**self.clusters, cluster_id: entry})


# --------------------------------------------------------------------------- the ledger

@dataclass(frozen=True)
class LedgerNote:
    """What a NAD request's ledger entry keeps of the request (`digest`, `requestId`): a request
    id used again with another body is told apart from a duplicate by its digest."""

    digest: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """One handled event (`ledger/{key}`): which event, which step, how it ended, and the note."""

    event_id: str
    step: str
    outcome: str
    cluster: str | None = None  # the cluster's path; None for a fleet-wide event
    note: LedgerNote = LedgerNote()
