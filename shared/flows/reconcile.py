"""reconcile: the scheduled safety net for lost events and drift.

Events can be lost (a sink misconfigured for an hour, a message dead-lettered). Every run:
- drives again each workflow left in a waiting state (DISCOVERED, AWAITING_NODE_POOL,
  CREATING_NODE_POOL, INSTALLING) that has not moved for `STALL_SECONDS`;
- on READY clusters, re-applies bundle objects that are missing (or the whole bundle when its
  version changed), restores managed NADs deleted or edited on the cluster, refreshes the rollout;
- adopts opted-in clusters of the project that have no workflow yet.
A run scoped to one cluster (`{"cluster": "projects/..."}`) is also the user's way to ask for a
re-check after fixing an INELIGIBLE or FAILED cluster. Each repair is a history entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from shared.core import decisions, logs
from shared.core.errors import ProvisionerError
from shared.core.prechecks import ClusterFacts
from shared.core.records import RolloutReport
from shared.core.refs import ClusterRef
from shared.core.settings import ConfigError
from shared.flows import addresses
from shared.flows.cluster import ClusterFlow, rollout_report
from shared.flows.context import Context, Outcome
from shared.flows.drift import bundle_drift
from shared.flows.nad import NadFlow
from shared.flows.nad_repair import VerifySweep, plan_nads, plan_verify_sweep, repair_nads, sweep_verify_pods
from shared.ports import AlreadyHandled

# What one cluster's trouble may raise without stopping the sweep for the others (bugs still surface).
SWEEP_ERRORS = (ProvisionerError, ConfigError)


class ReconcileFlow:
    def __init__(self, ctx: Context, clusters: ClusterFlow, nads: NadFlow) -> None:
        self.ctx = ctx
        self.clusters = clusters
        self.nads = nads

    def run(self, ev: Any) -> Outcome:
        """Resume stalled workflows, adopt opted-in clusters with none, repair drift on READY ones."""
        return reconcile(self, ev)


def reconcile(wf: ReconcileFlow, ev: Any) -> Outcome:
    """Resume stalled workflows, adopt opted-in clusters with none, repair drift on READY ones."""
    store = wf.ctx.store
    policy = wf.ctx.policy()
    resumed, adopted, repaired, errors = [], [], [], []
    recreated: set[str] = set()  # found by a READY cluster's repair (drift check reads the cluster)
    records = [store.get_cluster(ev.scope)] if ev.scope else store.list_clusters()
    records = [r for r in records if r is not None]
    tracked = {r.ref.doc_id for r in records}
    by_id = {r.ref.doc_id: r for r in records}
    if ev.scope is None:  # a sweep in this invocation does a bounded amount of work too (fanout.bounded)
        from shared.flows.fanout import bounded

        records, _ = bounded(records, wf.ctx.settings.reconcile_fanout_limit, ev.event_id)
    now = time.time()
    for rec in records:
        sub_event = f"{ev.event_id}~{rec.ref.doc_id}"
        try:
            # A scoped run is how a user asks for a re-check after fixing a cluster (enabling
            # multi-networking emits none of the four audited methods); a full run leaves
            # INELIGIBLE / FAILED / IGNORED alone so that a broken cluster does not loop.
            # A scoped re-check of a DELETED workflow finds a cluster created again under its name.
            recheck = ev.scope is not None and ev.sweep is None and rec.state in (
                decisions.INELIGIBLE, decisions.FAILED, decisions.IGNORED, decisions.DELETED)
            if recheck or (rec.state in decisions.RESUMABLE and _stale(rec, now, wf.ctx.settings.stall_seconds)):
                why = "re-check requested" if recheck else "workflow was stalled"
                out = wf.clusters.drive(rec.ref, sub_event, trigger=f"reconcile: {why}", create=False)
                resumed.append(f"{rec.ref.path}: {out.state}")
            elif rec.state == decisions.READY:
                fixed = repair(wf, rec, sub_event)
                if fixed:
                    repaired.append(f"{rec.ref.path}: {', '.join(fixed)}")
        except Recreated as r:
            adopted.append(str(r))
            recreated.add(rec.ref.doc_id)
        except AlreadyHandled:
            continue
        except SWEEP_ERRORS as e:
            errors.append(f"{rec.ref.path}: {e}")
    if not ev.scope:
        rechecked, recheck_errors = recheck_changed(wf, ev, records)
        resumed += rechecked
        errors += recheck_errors
    if ev.scope and not records:  # a re-check of a cluster the controller never saw (or a sweep's adoption)
        try:
            out = wf.clusters.drive(ev.scope, f"{ev.event_id}~{ev.scope.doc_id}",
                                    trigger="reconcile: untracked cluster" if ev.sweep
                                    else "reconcile: re-check requested")
            adopted.append(f"{ev.scope.path}: {out.state}")
        except SWEEP_ERRORS as e:
            errors.append(f"{ev.scope.path}: {e}")
    if not ev.scope and wf.ctx.settings.project:
        found, listing_errors = adopt_untracked(wf, ev, tracked, by_id, recreated, policy)
        adopted += found
        errors += listing_errors
    if resumed or adopted or repaired or not ev.scope:
        # A scoped run that found its cluster in sync writes nothing at all (issue 21); a run that
        # changed something, and the in-process sweep of every cluster, leave their ledger entry.
        store.record_ledger(ev.event_id, event_id=ev.event_id, step="reconcile", outcome="ok", cluster=None)
    message = (f"reconcile: {len(records)} tracked; resumed {len(resumed)}, adopted {len(adopted)}, "
               f"repaired {len(repaired)}, errors {len(errors)}")
    if errors:
        logs.warning("reconcile could not finish every cluster", eventId=ev.event_id, error=errors[:10])
    return Outcome("done", message, None, None,
                   {"resumed": resumed, "adopted": adopted, "repaired": repaired, "errors": errors})

def adopt_untracked(wf: ReconcileFlow, ev: Any, tracked: set[str], by_id: dict[str, Any], recreated: set[str],
                    policy: Any) -> tuple[list[str], list[str]]:
    """The in-process sweep's listing pass: opted-in clusters of the project that nobody tracks are
    adopted, and tracked ones GKE shows created again start their new workflow. (adopted, errors)"""
    adopted: list[str] = []
    errors: list[str] = []
    try:
        clusters = wf.ctx.gke.list_clusters(wf.ctx.settings.project)
    except SWEEP_ERRORS as e:
        clusters = []
        errors.append(f"list clusters: {e}")
    for facts in clusters:
        ref = ClusterRef(wf.ctx.settings.project, facts.location, facts.name)
        if ref.doc_id in recreated:
            continue
        if ref.doc_id in tracked:
            out_ = drive_new_incarnation(wf, ev, by_id.get(ref.doc_id), facts)
            if out_:
                (adopted if out_[0] else errors).append(out_[1])
            continue
        if not policy.opted_in(dict(facts.labels)):
            continue
        # The tracked set was read when this run started; an event may have created (and even
        # failed) the workflow since. Adopt only what is still untracked now.
        if wf.ctx.store.get_cluster(ref) is not None:
            continue
        try:
            out = wf.clusters.drive(ref, f"{ev.event_id}~{ref.doc_id}", trigger="reconcile: untracked cluster")
            adopted.append(f"{ref.path}: {out.state}")
        except SWEEP_ERRORS as e:
            errors.append(f"{ref.path}: {e}")
    return adopted, errors


class Recreated(Exception):
    """A READY cluster's repair found another incarnation under its name and drove it instead."""


@dataclass(frozen=True)
class Look:
    """A READY cluster compared with its records, read-only: what differs, if anything.

    Taken once without a claim (an in-sync cluster ends there: reads only), and again under the
    claim before anything is changed, since another worker may have changed it meanwhile."""

    cluster: ClusterFacts
    recreated: bool = False  # another incarnation under the name (deleted and created again)
    kube: Any = None
    bundle: Any = None
    missing: tuple[dict[str, Any], ...] = ()
    bundle_version_changed: bool = False
    nads: NadLook | None = None  # None when the bundle must be re-applied first (its CRDs may be gone)

    @property
    def needs_repair(self) -> bool:
        return (self.recreated or bool(self.missing) or self.bundle_version_changed
                or self.nads is None or self.nads.needs_repair)


@dataclass(frozen=True)
class NadLook:
    """The NAD and address half of a look: the NAD plan, verify pods, waiting NADs, figures."""

    on_cluster: list[dict[str, Any]]
    plan: list[Any]
    sweep: VerifySweep
    waiting: int
    rollout: RolloutReport
    rollout_changed: bool
    usage: addresses.Usage

    @property
    def needs_repair(self) -> bool:
        return bool(self.plan or self.sweep.needed or self.waiting or self.rollout_changed or self.usage.changed)


def look(wf: ReconcileFlow, rec: Any) -> Look:
    """Compare a READY cluster with its records without writing anything."""
    from shared.flows.cluster import new_incarnation

    ref = rec.ref
    cluster = wf.ctx.gke.get_cluster(ref)
    if new_incarnation(rec, cluster):
        return Look(cluster, recreated=True)
    kube = wf.ctx.kube_for(ref, cluster)
    bundle = wf.ctx.bundle(ref)
    missing, listed_rollout = bundle_drift(kube, bundle)
    changed = rec.workflow.bundle_version != bundle.version
    nads = None if (missing or changed) else look_nads(wf, rec, kube, bundle, listed_rollout)
    return Look(cluster, False, kube, bundle, tuple(missing), changed, nads)


def look_nads(wf: ReconcileFlow, rec: Any, kube: Any, bundle: Any, listed_rollout: Any) -> NadLook:
    """The NAD records (one query, whole documents) against the managed NADs, verify pods only
    when a record says one can exist, waiting NADs, the rollout and pool-use figures."""
    ref = rec.ref
    on_cluster = kube.list_managed_nads()
    records = wf.ctx.store.list_nads(ref)
    plan = plan_nads(wf.ctx.policy(), ref, records, on_cluster)
    sweep = plan_verify_sweep(kube, records)
    waiting = len(wf.nads.waiting(records))
    # The rollout recorded at install time may have been partial; keep the figure current.
    rollout = rollout_report(listed_rollout or kube.daemonset_rollout(*bundle.daemonset))
    rollout_changed = rollout.summary != (rec.workflow.rollout.summary if rec.workflow.rollout else None)
    usage = addresses.check(rec, kube, on_cluster)
    return NadLook(on_cluster, plan, sweep, waiting, rollout, rollout_changed, usage)


def repair(wf: ReconcileFlow, rec: Any, event_id: str) -> list[str]:
    """Re-apply what drifted on a READY cluster. A cluster in sync costs reads only: no claim, no
    ledger or history entry. A difference takes the cluster's lease (before any change) and is
    looked at again under it: nothing else changes the cluster meanwhile."""
    if not look(wf, rec).needs_repair:
        return []
    store = wf.ctx.store
    claimed = store.claim(rec.ref, event_id=event_id, step="repair", ledger_key=event_id)  # before any change
    try:
        return _repair_claimed(wf, claimed, event_id)
    except Recreated:
        raise  # the new incarnation's drive took and released the lease itself
    except BaseException:
        store.hold(rec.ref, holder=event_id, step="repair", seconds=0)
        raise


def _repair_claimed(wf: ReconcileFlow, rec: Any, event_id: str) -> list[str]:
    """Missing bundle objects and managed NADs re-applied, the rollout figure refreshed; the lease
    taken by `repair` is released with the record (or dropped when there is nothing to record)."""
    ref = rec.ref
    store = wf.ctx.store
    now = look(wf, rec)  # again, under the claim: what another worker did meanwhile counts
    if now.recreated:  # deleted and created again while its events were lost
        store.hold(ref, holder=event_id, step="repair", seconds=0)
        out = wf.clusters.drive(ref, f"{event_id}~incarnation", trigger="reconcile: the cluster was created again",
                                create=False)
        raise Recreated(f"{ref.path}: {out.state}")
    kube, bundle = now.kube, now.bundle
    fixes: list[str] = []
    if now.missing or now.bundle_version_changed:
        todo = bundle.objects if now.bundle_version_changed else list(now.missing)
        crds = [o for o in todo if o["kind"] == "CustomResourceDefinition"]
        if crds:
            kube.apply(crds)
            kube.wait_established([o["metadata"]["name"] for o in crds],
                                  timeout=wf.ctx.settings.crd_timeout_seconds, poll=wf.ctx.settings.crd_poll_seconds)
        kube.apply([o for o in todo if o["kind"] != "CustomResourceDefinition"])
        fixes += [f"re-applied {o['kind']} {o['metadata']['name']}" for o in now.missing]
        if now.bundle_version_changed:
            fixes.append(f"bundle {rec.workflow.bundle_version} -> {bundle.version}")
    # Re-applied: read the NADs and the DaemonSet again, after the bundle.
    nads = now.nads if now.nads is not None else look_nads(wf, rec, kube, bundle, None)
    # NADs: records and managed objects compared both ways; leftover verify pods removed.
    fixes += repair_nads(wf.ctx, ref, kube, event_id, nads.plan)
    fixes += sweep_verify_pods(wf.ctx, ref, kube, nads.sweep, event_id)
    # NADs still waiting on a READY cluster (a lost wake-up) or claimed by a worker that died.
    if nads.waiting:
        handled = wf.nads.apply_pending(ref, rec, kube, event_id, wf.ctx.policy(), first_ready=False)
        if handled:
            fixes.append(f"took up {handled} waiting NAD(s)")
    rollout, usage = nads.rollout, nads.usage
    if fixes or nads.rollout_changed or usage.changed:
        message = ("reconcile repaired: " + "; ".join(fixes)) if fixes else "reconcile: nothing to repair"
        message += f"; DaemonSet {rollout.summary}"
        if usage.warnings:
            message += "; warning: " + "; ".join(usage.warnings)
        store.advance(ref, event_id=event_id, step="repair", message=message,
                      outcome="warning" if usage.warnings else "ok",
                      update=rec.workflow.update(usage.recorded(replace(rec.workflow, bundle_version=bundle.version,
                                                                        rollout=rollout))),
                      ledger_key=event_id, release=True)
    else:
        store.hold(ref, holder=event_id, step="repair", seconds=0)
    return fixes


def drive_new_incarnation(wf: ReconcileFlow, ev: Any, rec: Any, cluster: ClusterFacts) -> tuple[bool, str] | None:
    """A listed cluster that is another incarnation than the workflow recorded (deleted and created
    again while the events were lost): drive it, which starts its new workflow. (ok, line) or None."""
    from shared.flows.cluster import new_incarnation

    if rec is None or not new_incarnation(rec, cluster):
        return None
    try:
        out = wf.clusters.drive(rec.ref, f"{ev.event_id}~{rec.ref.doc_id}~incarnation",
                                trigger="reconcile: the cluster was created again", create=False)
    except AlreadyHandled:
        return None
    except SWEEP_ERRORS as e:
        return False, f"{rec.ref.path}: {e}"
    return True, f"{rec.ref.path}: {out.state}"


def recheck_changed(wf: ReconcileFlow, ev: Any, records: list[Any]) -> tuple[list[str], list[str]]:
    """IGNORED and INELIGIBLE clusters whose labels or facts changed since they were decided: drive again.

    A label added later or an upgrade out of an unsupported version is normally seen through its
    audit entry (SetLabels, UpdateCluster, UpdateMaster); this catches the ones whose entry was lost.
    Cheap: one ListClusters per project of such clusters, compared with the digest recorded.
    """
    from shared.core import prechecks

    waiting = [r for r in records if r.state in (decisions.IGNORED, decisions.INELIGIBLE)]
    done, errors = [], []
    listed: dict[str, Any] = {}
    for project in sorted({r.ref.project for r in waiting}):
        try:
            for facts in wf.ctx.gke.list_clusters(project):
                listed[ClusterRef(project, facts.location, facts.name).doc_id] = facts
        except SWEEP_ERRORS as e:
            errors.append(f"list clusters of {project}: {e}")
    for rec in waiting:
        seen_now = listed.get(rec.ref.doc_id)
        if seen_now is None or prechecks.facts_digest(seen_now) == rec.workflow.facts_digest:
            continue
        try:
            out = wf.clusters.drive(rec.ref, f"{ev.event_id}~{rec.ref.doc_id}",
                                    trigger="reconcile: labels or cluster facts changed", create=False)
            done.append(f"{rec.ref.path}: {out.state}")
        except AlreadyHandled:
            continue
        except SWEEP_ERRORS as e:
            errors.append(f"{rec.ref.path}: {e}")
    return done, errors


def _stale(rec: Any, now: float, stall_seconds: int) -> bool:
    updated = rec.updated_at
    return updated is None or now - updated.timestamp() >= stall_seconds


