"""The pure decision core: given what is known, what is the next step?

Nothing here talks to an API. The flows (`shared.flows`) gather facts through the
ports, ask these functions what to do, perform the side effect and record the outcome.
Keeping decisions pure makes every branch of the state machine testable without servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.core.nad import config_range, range_within, ranges_overlap
from shared.core.records import AppliedNad, ClusterState, NadRecord, NadState

# Cluster workflow states (the words shown in Firestore and `status`); the types are in `records`.
DISCOVERED = ClusterState.DISCOVERED
IGNORED = ClusterState.IGNORED
INELIGIBLE = ClusterState.INELIGIBLE
AWAITING_NODE_POOL = ClusterState.AWAITING_NODE_POOL
CREATING_NODE_POOL = ClusterState.CREATING_NODE_POOL
INSTALLING = ClusterState.INSTALLING
READY = ClusterState.READY
FAILED = ClusterState.FAILED
DELETED = ClusterState.DELETED

CLUSTER_STATES = (DISCOVERED, IGNORED, INELIGIBLE, AWAITING_NODE_POOL, CREATING_NODE_POOL,
                  INSTALLING, READY, FAILED, DELETED)
# States that record progress made on the cluster: waiting for GKE never takes them back.
PROGRESS = (AWAITING_NODE_POOL, CREATING_NODE_POOL, INSTALLING, READY)
# States a lost event could leave hanging: `reconcile` resumes them once they are stale.
RESUMABLE = (DISCOVERED, AWAITING_NODE_POOL, CREATING_NODE_POOL, INSTALLING)

# NAD states.
NAD_PENDING = NadState.PENDING
NAD_APPLYING = NadState.APPLYING
NAD_APPLIED = NadState.APPLIED
NAD_VERIFIED = NadState.VERIFIED
NAD_REJECTED = NadState.REJECTED
NAD_FAILED = NadState.FAILED
NAD_DELETED = NadState.DELETED
NAD_DELETING = NadState.DELETING
NAD_ORPHANED = NadState.ORPHANED
NAD_LIVE = (NAD_APPLIED, NAD_VERIFIED)
NAD_IN_FLIGHT = (NAD_APPLYING, NAD_DELETING)
NAD_COUNTED = (NAD_PENDING, NAD_APPLYING, NAD_DELETING, NAD_APPLIED, NAD_VERIFIED, NAD_ORPHANED)
# A request has its outcome once its NAD is in one of these (PENDING and APPLYING are on the way).
NAD_SETTLED = (NAD_APPLIED, NAD_VERIFIED, NAD_REJECTED, NAD_FAILED, NAD_DELETED)
# The outcome of the last request (`lastRequest.state`) once it has one.
REQUEST_SETTLED = (NAD_APPLIED, NAD_VERIFIED, NAD_REJECTED, NAD_FAILED, NAD_DELETED)

BLOCKING_FINDING_EXEMPT = "node-pool-networks"


@dataclass(frozen=True)
class ClusterStep:
    """What to do with a cluster now. `kind` is one of the class constants."""

    kind: str
    state: str
    message: str
    pool: Any = None  # PoolNetworks chosen for INSTALL
    findings: tuple[Any, ...] = ()

    IGNORE = "ignore"
    WAIT = "wait"
    INELIGIBLE = "ineligible"
    CREATE_POOL = "create-pool"
    AWAIT_POOL = "await-pool"
    INSTALL = "install"
    NOTHING = "nothing"
    CLOSED = "closed"


def decide_cluster(*, state: str | None, facts: Any, findings: Sequence[Any], opted_in: bool,
                   suitable: Sequence[Any], have_template: bool, bundle_version: str,
                   retry_pool: bool = False) -> ClusterStep:
    """The next step for a cluster, from its recorded state and what GKE says now.

    `facts` is a `prechecks.ClusterFacts`; `findings` the prechecks' findings; `suitable` the
    node pools that have both an additional node network and an additional pod network;
    `retry_pool` that the pool the controller asked for failed transiently and was deleted to be
    created again.
    """
    if state == DELETED:
        return ClusterStep(ClusterStep.CLOSED, DELETED, "cluster was deleted; nothing is applied to it")
    if not opted_in:
        if state in PROGRESS:
            return ClusterStep(ClusterStep.IGNORE, IGNORED, "cluster was opted out (label removed); left alone, "
                                                            "what was installed stays on the cluster")
        return ClusterStep(ClusterStep.IGNORE, IGNORED, "cluster is not opted in (label missing); left alone")
    status = (getattr(facts, "status", "") or "").upper()
    # A cluster never loses progress it made: a wait keeps the state reached (READY stays READY).
    kept = state if state in PROGRESS else DISCOVERED
    if status in ("PROVISIONING", "STATUS_UNSPECIFIED", ""):
        return ClusterStep(ClusterStep.WAIT, kept,
                           f"cluster is {status or 'in an unknown status'}; waiting for it to be RUNNING")
    if status in ("STOPPING", "ERROR", "DEGRADED"):
        return ClusterStep(ClusterStep.WAIT, kept, f"cluster status is {status}; not acting now")
    # RECONCILING (an upgrade, a label change, GKE's own operation after a create): the API server
    # still answers, so the cluster is decided as if RUNNING; a GKE write it refuses meanwhile
    # ("incompatible operation") is retried until the operation is over (errors.Busy).
    blocking = [f for f in findings if getattr(f, "severity", "error") == "error"
                and getattr(f, "id", "") != BLOCKING_FINDING_EXEMPT]
    if blocking:
        return ClusterStep(ClusterStep.INELIGIBLE, INELIGIBLE,
                           f"{len(blocking)} precheck(s) failed: " + "; ".join(f.message for f in blocking),
                           findings=tuple(blocking))
    if not suitable:
        if state == CREATING_NODE_POOL and retry_pool and have_template:
            return ClusterStep(ClusterStep.CREATE_POOL, CREATING_NODE_POOL,
                               "the node pool failed in GKE for a reason that passes; creating it again")
        if state == CREATING_NODE_POOL:
            return ClusterStep(ClusterStep.WAIT, CREATING_NODE_POOL,
                               "node pool creation requested; waiting for its completion event")
        if have_template:
            return ClusterStep(ClusterStep.CREATE_POOL, CREATING_NODE_POOL,
                               "no node pool with additional networks; creating one from the policy template")
        missing = [f for f in findings if getattr(f, "id", "") == BLOCKING_FINDING_EXEMPT]
        fix = str(getattr(missing[0], "fix", "") or "") if missing else ""
        return ClusterStep(ClusterStep.AWAIT_POOL, AWAITING_NODE_POOL,
                           "waiting for a node pool with an additional node network and pod network"
                           + (f" ({fix})" if fix else ""),
                           findings=tuple(missing))
    pool = sorted(suitable, key=lambda p: p.name)[0]
    if state == READY:
        return ClusterStep(ClusterStep.NOTHING, READY, "cluster is READY", pool=pool)
    return ClusterStep(ClusterStep.INSTALL, INSTALLING,
                       f"node pool {pool.name} has additional networks; installing bundle {bundle_version}",
                       pool=pool)


@dataclass(frozen=True)
class NadStep:
    kind: str  # apply | pending | reject | delete
    state: str
    message: str
    range: str | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    APPLY = "apply"
    PENDING = "pending"
    REJECT = "reject"
    DELETE = "delete"


def decide_nad(*, request: Any, cluster_state: str | None, pool_cidr: str | None,
               existing: Iterable[Mapping[str, Any]] | None, namespace_problem: str | None,
               max_nads: int | None, pool_interface: str | None = None) -> NadStep:
    """What to do with a validated NAD request on a cluster in `cluster_state`.

    `existing` are the cluster's NAD documents (dicts with namespace, name, state, master, range).
    The workflow passes `existing=None, max_nads=None`: it checks overlaps and the limit only after
    the request has claimed its NAD (`limit_problem`, `arbitrate`), when concurrent requests see
    each other; a caller with a settled snapshot can have every check made here at once.
    `pool_interface` is the nodes' NIC on the pool's network (`NodePoolFacts.interface`): the only
    link IPVLAN can use as `master` there.
    """
    key = f"{request.namespace}~{request.name}"
    # A delete passes the namespace policy too: a namespace no NAD may be applied to is one where
    # no request may delete one either (kube-system's NADs are not the requesters' to remove).
    if namespace_problem:
        return NadStep(NadStep.REJECT, NAD_REJECTED, namespace_problem, reasons=(namespace_problem,))
    if request.action == "delete":
        return NadStep(NadStep.DELETE, NAD_DELETED, f"delete {request.namespace}/{request.name}")
    if cluster_state in (IGNORED, INELIGIBLE, DELETED):
        refusals: dict[str, str] = {IGNORED: "the cluster is not opted in",
                                    INELIGIBLE: "the cluster is INELIGIBLE (see its findings)",
                                    DELETED: "the cluster was deleted"}
        why = refusals[cluster_state]
        return NadStep(NadStep.REJECT, NAD_REJECTED, why, reasons=(why,))
    others = [n for n in existing or () if n.get("key", f"{n.get('namespace')}~{n.get('name')}") != key]
    over_limit = limit_problem(others, max_nads) if max_nads is not None else None
    if over_limit:
        return NadStep(NadStep.REJECT, NAD_REJECTED, over_limit, reasons=(over_limit,))
    if cluster_state != READY or not pool_cidr:
        return NadStep(NadStep.PENDING, NAD_PENDING,
                       f"cluster is {cluster_state or 'not known yet'}; the NAD is applied once it is READY")
    cidr = request.range or pool_cidr
    reasons = []
    if request.range and not range_within(request.range, pool_cidr):
        reasons.append(f"range {request.range} is not inside the node pool's secondary pod range {pool_cidr}")
    if pool_interface and request.master != pool_interface:
        reasons.append(f"master {request.master} is not the node pool's interface on its additional network "
                       f"({pool_interface}): IPVLAN finds no such link on the nodes; use master {pool_interface}")
    for other in others:
        if other.get("state") not in NAD_LIVE or other.get("master") != request.master or not other.get("range"):
            continue
        if ranges_overlap(cidr, other["range"]):
            reasons.append(f"range {cidr} overlaps {other.get('namespace')}/{other.get('name')} "
                           f"({other['range']}) on master {request.master}")
    if reasons:
        return NadStep(NadStep.REJECT, NAD_REJECTED, "; ".join(reasons), reasons=tuple(reasons))
    return NadStep(NadStep.APPLY, NAD_APPLIED, f"apply {request.namespace}/{request.name} with range {cidr}",
                   range=cidr)


def limit_problem(others: Iterable[Mapping[str, Any]], max_nads: int) -> str | None:
    """Why one more NAD would exceed the policy's per-cluster limit, or None (`others` excludes
    the NAD being decided). A NAD is counted once however many footprints it has."""
    counted = len({(n.get("namespace"), n.get("name")) for n in others if n.get("state") in NAD_COUNTED})
    if counted >= max_nads:
        return f"the cluster already has {counted} NADs (policy limit {max_nads})"
    return None


@dataclass(frozen=True)
class Arbitration:
    """Which overlapping NADs a claim loses to, and which later claims it must turn away."""

    lose_to: tuple[Mapping[str, Any], ...]
    win_over: tuple[Mapping[str, Any], ...]


def arbitrate(*, key: str, master: str, cidr: str, order: str, others: Iterable[Mapping[str, Any]]) -> Arbitration:
    """Settle overlapping ranges between concurrent requests of one cluster.

    Each worker first writes its claim (state APPLYING, `claimOrder`), then reads the others: of
    two concurrent claims at least one sees the other, so the rule must be one both can apply
    alone. An overlapping NAD that is already APPLIED/VERIFIED wins; between two claims the
    smaller `claimOrder` wins, and whoever sees a conflict enforces it (the winner rejects the
    loser's claim with a compare-and-set; a loser rejects itself).
    """
    lose: list[Mapping[str, Any]] = []
    win: list[Mapping[str, Any]] = []
    lost = set()
    for other in others:
        if f"{other.get('namespace')}~{other.get('name')}" == key:
            continue
        if other.get("master") != master or not other.get("range") or not ranges_overlap(cidr, other["range"]):
            continue
        state = other.get("state")
        if state in NAD_LIVE or state == NAD_ORPHANED:
            mark = (other.get("namespace"), other.get("name"), other["range"])
            if mark not in lost:  # a record's applied part and its object on the cluster are one reason
                lost.add(mark)
                lose.append(other)
        elif state == NAD_APPLYING:
            (lose if str(other.get("claimOrder") or "") < order else win).append(other)
    return Arbitration(tuple(lose), tuple(win))


def applied_part(rec: NadRecord) -> AppliedNad | None:
    """What of this NAD record is on the cluster (`applied`: range, master, ...), or None.

    Records written before the record had an `applied` part are read by their state: an
    APPLIED/VERIFIED one with a range is on the cluster with that range.
    """
    if rec.applied is not None:
        return rec.applied if rec.applied.range else None
    if rec.state in NAD_LIVE and rec.range:
        return AppliedNad(rec.range, rec.master or "", state=rec.state)
    return None


def nad_object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return (str(md.get("namespace") or "default"), str(md.get("name") or ""))


def footprints(records: Iterable[NadRecord],
               objects: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Everything that is or may be on the cluster, in the shape `arbitrate` and `limit_problem` read.

    - each record's applied part (state APPLIED): it is on the cluster, whatever its last request;
    - each claim in flight (state APPLYING, `claim` range), unless the claim was turned away;
    - each PENDING record (counted for the limit; it has no range yet);
    - each managed object found on the cluster (state APPLIED, master and range read from its
      config): an object without a record, or one that drifted from its record, still hands
      out addresses.
    One NAD may leave several footprints (an update in flight: its applied range and its claim).
    """
    out: list[dict[str, Any]] = []
    for rec in records:
        ident = {"namespace": rec.namespace, "name": rec.name}
        part = applied_part(rec)
        if part is not None:
            out.append({**ident, "state": NAD_APPLIED, "master": part.master, "range": part.range})
        if rec.state == NAD_APPLYING and not rec.claim_refused:
            claim = rec.claim
            out.append({**ident, "state": NAD_APPLYING, "master": claim.master if claim else rec.master,
                        "range": claim.range if claim else rec.range, "claimOrder": rec.claim_order})
        elif rec.state in NAD_COUNTED and part is None:
            out.append({**ident, "state": rec.state, "master": rec.master, "range": None})
    for obj in objects:
        ns, name = nad_object_key(obj)
        found = config_range(obj)
        out.append({"namespace": ns, "name": name, "state": NAD_APPLIED, "onCluster": True,
                    "master": found[0] if found else "", "range": found[1] if found else None})
    return out


def conflicts(*, key: str, master: str, cidr: str, others: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The footprints of other NADs on `master` whose range overlaps `cidr` (one per NAD and range)."""
    seen, out = set(), []
    for other in others:
        okey = f"{other.get('namespace')}~{other.get('name')}"
        if okey == key or other.get("master") != master or not other.get("range"):
            continue
        if ranges_overlap(cidr, other["range"]) and (okey, other["range"]) not in seen:
            seen.add((okey, other["range"]))
            out.append(other)
    return out
