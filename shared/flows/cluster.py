"""The cluster flow: each GKE audit event moves a cluster through its steps, one at a time.

Shape of every step (docs/WORKFLOW.md): read the workflow and claim the step in one Firestore
transaction (with a short lease), ask the pure decision core (`shared.core.decisions`) what to
do, perform the side effect (idempotent: server-side apply with a fixed field manager, create
node pool where ALREADY_EXISTS means done), then record the outcome, the history entry and the
ledger entry in one transaction.

Errors are decided where they arise (adapters raise `Transient` / `Permanent`, decoders raise
`Rejected`); here they only choose between "record and acknowledge" and "release and retry".
When a cluster becomes READY, the NADs that waited for it are handed to the NAD flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.core import decisions, logs
from shared.core.errors import (
    Busy,
    NeedsFix,
    NotFound,
    NotYet,
    Permanent,
    Problem,
    Rejected,
    RejectionKind,
    Transient,
    UnknownCluster,
    Wait,
)
from shared.core.prechecks import ClusterFacts, Finding, PoolNetworks
from shared.core.records import (
    ApiEndpoint,
    ClusterWorkflow,
    Incarnation,
    LastError,
    NodePoolFacts,
    NodePoolRequest,
    PoolFailureNote,
    RolloutReport,
)
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Cursor, Outcome
from shared.flows.nad import NadFlow
from shared.ports import ClusterRecord, StorePort


class ClusterFlow:
    def __init__(self, ctx: Context, nads: NadFlow) -> None:
        self.ctx = ctx
        self.nads = nads

    # -- audit events ------------------------------------------------------------------------
    def handle_audit(self, ev: Any) -> Outcome:
        """A GKE audit entry: cluster or node pool created or deleted."""
        ref: ClusterRef = ev.cluster
        why = self.ctx.policy().project_problem(ref.project)
        if why:  # refused at top level: nothing is recorded under a cluster of a project not managed
            raise Rejected("event refused", [Problem("resource.labels.project_id", why)],
                           kind=RejectionKind.UNKNOWN_PROJECT, event_id=ev.event_id)
        verb = ev.method.rsplit(".", 1)[-1]
        said = f": {ev.status_message}" if ev.status_message else ""
        if ev.refused:  # one entry, no operation: nothing ran, so nothing anyone waits for has ended
            return self._note(ref, ev.event_id, "audit",
                              f"{verb} was refused at once by GKE (status {ev.status_code}{said}); no operation ran",
                              outcome="ignored")
        if ev.status_code and ev.action == "node_pool.created" and ev.last:
            # The pool failed after it was accepted: the workflow reads the stored operation and decides.
            return self.drive(ref, ev.event_id, trigger=f"node pool {ev.node_pool} creation failed in GKE "
                                                        f"(status {ev.status_code})", create=False)
        if ev.status_code:
            return self._note(ref, ev.event_id, "audit",
                              f"{verb} failed in GKE (status {ev.status_code}{said}); nothing to do",
                              outcome="ignored")
        if ev.action == "cluster.deleted":
            if not ev.last:
                return self._note(ref, ev.event_id, "cluster-deleting",
                                  "cluster deletion started; closing the workflow when it completes",
                                  outcome="ignored")
            return self._close(ref, ev.event_id)
        if ev.action == "cluster.created" and not ev.last:
            return self._discover(ref, ev.event_id)
        if ev.action == "node_pool.created" and not ev.last:
            return self._note(ref, ev.event_id, "node-pool-creating",
                              f"node pool {ev.node_pool} is being created", outcome="ignored")
        if ev.action == "node_pool.deleted" and not ev.last:
            return self._note(ref, ev.event_id, "node-pool-deleting",
                              f"node pool {ev.node_pool} is being deleted", outcome="ignored")
        if ev.action in ("cluster.labels_set", "cluster.updated") and not ev.last:
            return self._note(ref, ev.event_id, "cluster-updating",
                              f"{ev.method.rsplit('.', 1)[-1]} started; the cluster is looked at again when it is done",
                              outcome="ignored")
        trigger = {"cluster.created": "cluster created",
                   "cluster.labels_set": "labels changed",
                   "cluster.updated": f"cluster updated ({ev.method.rsplit('.', 1)[-1]})",
                   "node_pool.created": f"node pool {ev.node_pool} created",
                   "node_pool.deleted": f"node pool {ev.node_pool} deleted"}[ev.action]
        # Labels can opt an unknown cluster in (a workflow starts; an opt-out is recorded as IGNORED);
        # an update of a cluster the controller does not track is reconcile's to adopt, if opted in.
        create = {"cluster.created": True, "cluster.labels_set": True, "cluster.updated": False}.get(ev.action)
        return self.drive(ref, ev.event_id, trigger=trigger, create=create)

    def _note(self, ref: ClusterRef, event_id: str, step: str, message: str, *, outcome: str) -> Outcome:
        """Record an event that needs no step: in the cluster's history when we know the cluster."""
        store = self.ctx.store
        rec = store.get_cluster(ref)
        if rec is None:
            store.record_ledger(event_id, event_id=event_id, step=step, outcome=outcome, cluster=ref)
            return Outcome("ignored", message + " (cluster not tracked)", ref.path)
        from shared.ports import AlreadyHandled

        try:  # no claim: a note changes no state, so it only needs the lease to be free
            rec = store.advance(ref, event_id=event_id, step=step, outcome=outcome, message=message,
                                ledger_key=event_id)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        return Outcome("ignored", message, ref.path, rec.state)

    def _discover(self, ref: ClusterRef, event_id: str) -> Outcome:
        """CreateCluster started: record the cluster as DISCOVERED; the last entry resumes it."""
        from shared.ports import AlreadyHandled

        store = self.ctx.store
        message = "cluster creation started; waiting for it to finish"
        try:
            rec = store.claim(ref, event_id=event_id, step="discover", ledger_key=event_id,
                              create_state=decisions.DISCOVERED)
            again = rec.state == decisions.DELETED
            if again:  # re-created under the same name: the new incarnation starts when GKE is done
                message = ("cluster created again under this name (the previous one was deleted); "
                           "a new workflow starts when its creation is done")
            rec = store.advance(ref, event_id=event_id, step="discover", message=message,
                                state=decisions.DISCOVERED if again else None,
                                update=rec.workflow.update(replace(rec.workflow,
                                                                   new_incarnation_end=decisions.DELETED))
                                if again else None,
                                ledger_key=event_id, release=True)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        return Outcome("waiting", message, ref.path, rec.state)

    def _close(self, ref: ClusterRef, event_id: str) -> Outcome:
        from shared.ports import AlreadyHandled

        store = self.ctx.store
        if store.get_cluster(ref) is None:
            store.record_ledger(event_id, event_id=event_id, step="close", outcome="ignored", cluster=ref)
            return Outcome("ignored", "deletion of a cluster the controller never tracked", ref.path)
        # An audit entry is a message anyone with publish rights on the topic can forge: GKE has
        # the last word. Only NOT_FOUND closes the workflow.
        try:
            found = self.ctx.gke.get_cluster(ref)
        except NotFound:
            found = None
        if found is not None:
            status = getattr(found, "status", None)
            name = str(getattr(status, "name", status))
            if name == "STOPPING":
                raise Wait(f"DeleteCluster done, but GKE still shows {ref.path} STOPPING; closing once it is gone",
                           code="BACKOFF", api="gke")
            return self._note(ref, event_id, "delete-unconfirmed",
                              f"a DeleteCluster entry arrived but GKE still has the cluster ({name}): the workflow "
                              "stays open (a forged or misrouted entry)", outcome="ignored")
        try:
            store.claim(ref, event_id=event_id, step="close", ledger_key=event_id)
            rec = store.advance(ref, event_id=event_id, step="close", state=decisions.DELETED,
                                message="cluster deleted; workflow closed, nothing is applied to it again",
                                ledger_key=event_id, release=True)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        self.ctx.forget_cluster(ref)
        return Outcome("done", "workflow closed", ref.path, rec.state)

    # -- the cluster state machine -----------------------------------------------------------
    def drive(self, ref: ClusterRef, event_id: str, *, trigger: str, create: bool | None = True) -> Outcome:
        """Take the cluster as far as it can go now. Safe to call again with the same event id."""
        from shared.ports import AlreadyHandled

        store = self.ctx.store
        cursor = Cursor("precheck")
        cursor.holder = f"{event_id}#{cursor.holder}"
        try:
            rec = store.claim(ref, event_id=event_id, step=cursor.phase, ledger_key=event_id, holder=cursor.holder,
                              create_state=decisions.DISCOVERED if create is not False else None)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        except UnknownCluster:
            return Outcome("ignored", "cluster not tracked", ref.path)
        claimed = _ClaimedDrive(store, ref, event_id, cursor, rec)
        try:
            return self._drive_claimed(claimed, trigger)
        except AlreadyHandled:  # a concurrent duplicate of this event finished first
            return Outcome("duplicate", "event already handled", ref.path)
        except Wait as e:
            return self._busy(claimed, e)
        except Transient as e:
            rec = store.release(ref, event_id=event_id, step=cursor.phase, holder=cursor.holder,
                                error=f"{cursor.phase}: {e}", outcome="retry")
            attempts = rec.workflow.attempts
            if attempts >= self.ctx.settings.max_attempts:
                return self._fail(ref, event_id, cursor,
                                  f"gave up after {attempts} attempts; last error: {e}")
            logs.warning("transient failure; Pub/Sub will redeliver", eventId=event_id, cluster=ref.path,
                         step=cursor.phase, error=str(e), attempt=attempts)
            raise
        except NeedsFix as e:
            return self._needs_fix(claimed, e)
        except Permanent as e:
            return self._fail(ref, event_id, cursor, f"{cursor.phase}: {e}")
        except Exception as e:  # a bug, not an answer of an API: surface it, but never leave the lease behind
            store.release(ref, event_id=event_id, step=cursor.phase, holder=cursor.holder, outcome="retry",
                          error=f"{cursor.phase}: unexpected {type(e).__name__}: {e}", count_attempt=False)
            raise

    def _busy(self, claimed: _ClaimedDrive, e: Wait) -> Outcome:
        """GKE runs another operation on the cluster: retry until it is over, bounded by time, not attempts.

        `busy_since` (wall clock, seconds) marks the start of the window; any step that moves the
        cluster on clears it.
        """
        ref, event_id, cursor = claimed.ref, claimed.event_id, claimed.cursor
        store, limit = self.ctx.store, self.ctx.settings.busy_wait_seconds
        workflow = claimed.rec.workflow
        now = time.time()
        since = workflow.busy_since if workflow.busy_since is not None else now
        if now - since >= limit:
            return self._fail(ref, event_id, cursor, f"{cursor.phase}: GKE was still busy with another operation "
                                                     f"after {limit}s; last answer: {e}")
        if isinstance(e, Busy):
            why = f"waiting for GKE's operation{' ' + e.operation if e.operation else ''} to end: {e}"
        else:
            why = f"waiting: {e}"
        store.release(ref, event_id=event_id, step=cursor.phase, holder=cursor.holder, outcome="retry",
                      error=f"{cursor.phase}: {why}", count_attempt=False,
                      update=workflow.update(replace(workflow, busy_since=since)))
        logs.warning("not yet (GKE busy, or a backoff); Pub/Sub will redeliver",
                     eventId=event_id, cluster=ref.path, step=cursor.phase, error=str(e))
        raise e

    def _needs_fix(self, claimed: _ClaimedDrive, e: NeedsFix) -> Outcome:
        """Something outside the controller must change: a finding, the cluster INELIGIBLE until re-checked."""
        ref, event_id, cursor = claimed.ref, claimed.event_id, claimed.cursor
        finding = Finding(e.finding_id, "error", str(e), e.fix)

        def needs_fix(w: ClusterWorkflow) -> ClusterWorkflow:
            return replace(w, findings=(finding,), attempts=0,
                           # recorded, so the scheduled reconcile re-checks it only once the cluster changed
                           facts_digest=cursor.facts_digest or w.facts_digest,
                           last_error=LastError(f"{cursor.phase}: {e}"[:4000], cursor.phase, event_id))

        rec = claimed.advance(step=cursor.phase, state=decisions.INELIGIBLE, outcome="failed",
                              message=f"{cursor.phase}: {e}. Fix: {e.fix}", change=needs_fix,
                              ledger_key=event_id, release=True)
        logs.warning("cluster needs a fix outside the controller", eventId=event_id, cluster=ref.path,
                     step=cursor.phase, error=str(e))
        return Outcome("done", f"{e}. Fix: {e.fix}", ref.path, rec.state)

    def _fail(self, ref: ClusterRef, event_id: str, cursor: Cursor, message: str) -> Outcome:
        store, step = self.ctx.store, cursor.phase
        store.release(ref, event_id=event_id, step=step, error=message, outcome="failed",
                      state=decisions.FAILED, count_attempt=False, holder=cursor.holder)
        store.record_ledger(event_id, event_id=event_id, step=step, outcome="failed", cluster=ref)
        logs.error("step failed permanently", eventId=event_id, cluster=ref.path, step=step, error=message)
        return Outcome("failed", message, ref.path, decisions.FAILED)

    def _drive_claimed(self, claimed: _ClaimedDrive, trigger: str) -> Outcome:
        """Read the cluster from GKE, decide the step (pure), and carry it out."""
        from shared.core import prechecks

        ref, event_id, cursor, rec = claimed.ref, claimed.event_id, claimed.cursor, claimed.rec
        try:
            cluster = self.ctx.gke.get_cluster(ref)
        except NotFound:
            if rec.state == decisions.DELETED:
                claimed.advance(step="precheck", outcome="skipped", message=f"{trigger}: the workflow is closed",
                                ledger_key=event_id, release=True)
                return Outcome("ignored", "workflow closed", ref.path, decisions.DELETED)
            rec = claimed.advance(step="precheck", state=decisions.DELETED,
                                  message=f"{trigger}: cluster no longer exists in GKE",
                                  ledger_key=event_id, release=True)
            return Outcome("done", "cluster no longer exists", ref.path, rec.state)
        if new_incarnation(rec, cluster):
            rec = self._new_incarnation(claimed, rec, cluster, trigger)
        if rec.state == decisions.CREATING_NODE_POOL:
            failed = self._pool_failed(claimed, rec, trigger)
            if failed is not None:
                return failed
        facts = cluster
        findings = prechecks.precheck(facts)
        policy = self.ctx.policy()
        bundle = self.ctx.bundle(ref)
        requested = rec.workflow.node_pool_requested
        decision = decisions.decide_cluster(state=rec.state, facts=facts, findings=findings,
                                            opted_in=policy.opted_in(dict(facts.labels)),
                                            suitable=prechecks.suitable_pools(facts.node_pools),
                                            have_template=policy.node_pool_template is not None,
                                            bundle_version=bundle.version,
                                            retry_pool=requested is not None and bool(requested.retry)
                                            and not any(p.name == requested.name for p in cluster.node_pools))
        facts_digest = cursor.facts_digest = prechecks.facts_digest(facts)
        cluster_id, create_time = cluster.cluster_id, cluster.create_time

        def observed(w: ClusterWorkflow) -> ClusterWorkflow:
            """What this drive saw of the cluster, recorded with whatever step it ends in."""
            return replace(w, version=facts.version, status=facts.status, findings=tuple(findings), trigger=trigger,
                           busy_since=None, facts_digest=facts_digest, cluster_id=cluster_id, create_time=create_time)

        if decision.kind in (decision.CLOSED, decision.IGNORE, decision.WAIT, decision.INELIGIBLE, decision.AWAIT_POOL):
            rec = claimed.advance(step="precheck", state=decision.state,
                                  outcome="ignored" if decision.kind == decision.IGNORE else "ok",
                                  message=f"{trigger}: {decision.message}",
                                  change=lambda w: replace(observed(w), attempts=0),
                                  ledger_key=event_id, release=True)
            if decision.kind in (decision.IGNORE, decision.INELIGIBLE):
                self.nads.reject_pending(ref, event_id, decision.message)
            status = {"ignore": "ignored", "ineligible": "done", "closed": "ignored"}.get(decision.kind, "waiting")
            return Outcome(status, decision.message, ref.path, rec.state)
        if decision.kind == decision.CREATE_POOL:
            return self._create_pool(claimed, decision, policy, observed, trigger)
        return self._install_and_apply(claimed, decision, cluster, bundle, policy, observed, trigger)

    def _new_incarnation(self, claimed: _ClaimedDrive, rec: ClusterRecord, cluster: ClusterFacts,
                         trigger: str) -> ClusterRecord:
        """The name now belongs to another cluster (deleted and created again): a new workflow.

        The document stays (the history under it is kept, both incarnations' entries in order);
        what belonged to the old cluster is cleared; the run is marked in the history entry.
        """
        cluster_id, create_time = cluster.cluster_id, cluster.create_time
        was = rec.workflow
        previous = was.cluster_id or "unknown"
        earlier = (*was.previous_incarnations,
                   Incarnation(previous, was.create_time or "", was.new_incarnation_end or rec.state))[-20:]
        self.ctx.forget_cluster(claimed.ref)
        return claimed.advance(
            step="new-incarnation", state=decisions.DISCOVERED,
            message=f"{trigger}: new incarnation {cluster_id or 'unknown'}, previous {previous}",
            change=lambda w: replace(w, cluster_id=cluster_id, create_time=create_time,
                                     previous_incarnations=earlier, incarnation=(w.incarnation or 1) + 1,
                                     new_incarnation_end=None, bundle_version=None, node_pool=None,
                                     node_pool_requested=None, rollout=None, install_requests=None,
                                     attempts=0, last_error=None, busy_since=None),
            next_step="precheck")

    def _pool_failed(self, claimed: _ClaimedDrive, rec: ClusterRecord, trigger: str) -> Outcome | None:
        """The pool the controller asked for: did GKE fail it after accepting it? (the stored operation)

        Transient (stockout, quota): the failed pool is deleted and created again after a backoff,
        each attempt in the history, up to `max_attempts`; otherwise, or then, FAILED with GKE's
        message and the fix. None: the operation runs or succeeded, or was read before.
        """
        requested = rec.workflow.node_pool_requested
        operation = requested.operation if requested is not None else ""
        if requested is None or not operation or requested.failed_operation == operation:
            return None
        claimed.cursor.phase = "create-node-pool"
        failure = self.ctx.gke.operation_failure(claimed.ref, operation)
        if failure is None:
            return None
        ref, name, attempt = claimed.ref, requested.name, requested.attempt
        limit = self.ctx.settings.max_attempts
        what = f"{trigger}: node pool {name} failed in GKE ({failure.reason}): {failure.message}"
        failures = (*requested.failures, PoolFailureNote(operation, failure.reason, failure.message[:1000]))[-10:]
        if failure.transient and attempt < limit:
            delay = self.ctx.settings.node_pool_retry_seconds * 2 ** (attempt - 1)
            deleting = self.ctx.gke.delete_node_pool(ref, name)
            retry = replace(requested, failed_operation=operation, failures=failures, retry=True,
                            retry_after=time.time() + delay, delete_operation=deleting or "")
            rec = claimed.advance(step=f"node-pool-failed-{attempt}", outcome="retry",
                                  state=decisions.CREATING_NODE_POOL,
                                  message=f"{what}; GKE says this passes: attempt {attempt} of {limit}, deleting the "
                                        f"failed pool and creating it again in {delay}s ({failure.fix})",
                                  change=lambda w: replace(w, node_pool_requested=retry),
                                  ledger_key=claimed.event_id, release=True)
            return Outcome("waiting", f"node pool {name} failed transiently; retrying", ref.path, rec.state)
        tail = f"; gave up after {attempt} attempts" if failure.transient else ""
        message = f"{what}{tail}. Fix: {failure.fix}"
        rec = claimed.advance(step="node-pool-failed", outcome="failed", state=decisions.FAILED, message=message,
                              change=lambda w: replace(
                                  w, node_pool_requested=replace(requested, failed_operation=operation,
                                                                 failures=failures, retry=False),
                                  last_error=LastError(message[:4000], "create-node-pool", claimed.event_id)),
                              ledger_key=claimed.event_id, release=True)
        logs.error("node pool failed in GKE", eventId=claimed.event_id, cluster=ref.path, error=message)
        return Outcome("failed", message, ref.path, rec.state)

    def _create_pool(self, claimed: _ClaimedDrive, decision: decisions.ClusterStep, policy: Any,
                     observed: Callable[[ClusterWorkflow], ClusterWorkflow], trigger: str) -> Outcome:
        """The policy gives a node pool template and the cluster has no suitable pool: create it.
        Its completion arrives as the CreateNodePool audit event, not by polling."""
        ref = claimed.ref
        claimed.cursor.phase = "create-node-pool"
        tpl = policy.node_pool_template
        now = claimed.store.get_cluster(ref)
        before = now.workflow.node_pool_requested if now is not None else None
        again = before is not None and bool(before.retry) and before.name == tpl.name
        retry_after = (before.retry_after if before is not None else None) or 0.0
        if again and time.time() < retry_after:
            raise Wait(f"node pool {tpl.name} is created again after its backoff "
                       f"({retry_after - time.time():.0f}s left)", code="BACKOFF", api="gke")
        operation = self.ctx.gke.create_node_pool(ref, tpl)
        if operation is None and again:  # the failed pool is still being deleted
            raise Wait(f"the failed node pool {tpl.name} is still being deleted", code="BACKOFF", api="gke")
        attempt = before.attempt + 1 if again and before is not None else 1
        requested = NodePoolRequest(tpl.name, operation or "", tpl.subnetwork, tpl.secondary_pod_range, attempt,
                                    before.failures if again and before is not None else ())
        rec = claimed.advance(step="create-node-pool", state=decisions.CREATING_NODE_POOL,
                              message=f"{trigger}: {decision.message} ({tpl.name}"
                                      + (f", operation {operation}" if operation else ", already exists")
                                      + (f", attempt {attempt})" if again else ")"),
                              change=lambda w: replace(observed(w), attempts=0, node_pool_requested=requested),
                              ledger_key=claimed.event_id, release=True)
        return Outcome("waiting", decision.message, ref.path, rec.state)

    def _node_pool_facts(self, ref: ClusterRef, rec: ClusterRecord, pool: PoolNetworks,
                         cursor: Cursor) -> NodePoolFacts:
        """The multi-network pool and the CIDR behind its secondary range name (resolved once)."""
        pod_net = pool.pod_networks[0]
        node_pool = rec.workflow.node_pool
        interface = pool.interface_of(pod_net.subnetwork)
        if node_pool is not None and node_pool.name == pool.name and node_pool.cidr:
            return replace(node_pool, interface=interface)
        cursor.phase = "resolve-range"
        cidr = self.ctx.gke.secondary_range_cidr(ref, pod_net.subnetwork, pod_net.secondary_pod_range)
        return NodePoolFacts(pool.name, pod_net.subnetwork, pod_net.secondary_pod_range, cidr,
                             pod_net.max_pods_per_node, interface)

    def _install_and_apply(self, claimed: _ClaimedDrive, decision: decisions.ClusterStep, cluster: ClusterFacts,
                           bundle: Any, policy: Any, observed: Callable[[ClusterWorkflow], ClusterWorkflow],
                           trigger: str) -> Outcome:
        """Install the bundle when it is missing or outdated, then apply the NADs that waited."""
        ref, cursor, event_id, rec = claimed.ref, claimed.cursor, claimed.event_id, claimed.rec
        node_pool = self._node_pool_facts(ref, rec, decision.pool, cursor)
        capacity = _capacity_findings(decision.pool, node_pool, cluster)
        cursor.phase = "endpoint"  # NeedsFix (a private-only cluster without VPC egress) -> a finding
        endpoint = self.ctx.gke.endpoint(cluster).to_dict()
        reach = ApiEndpoint(str(endpoint["kind"]), str(endpoint["address"]), str(endpoint["why"]))

        def seen(w: ClusterWorkflow) -> ClusterWorkflow:
            now = observed(w)
            return replace(now, findings=now.findings + capacity, node_pool=node_pool, api_endpoint=reach)

        if decision.kind == decision.INSTALL or rec.workflow.bundle_version != bundle.version:
            cursor.phase = "install"
            rec = claimed.advance(step="precheck", state=decisions.INSTALLING, message=f"{trigger}: {decision.message}",
                                  change=seen, next_step="install")
            kube = self.ctx.kube_for(ref, cluster)
            report = self._install(kube, bundle, cursor, renew=claimed.hold)
            rollout = RolloutReport(**report["rollout"])
            rec = claimed.advance(step="install", state=decisions.READY,
                                  message=(f"bundle {bundle.version} applied ({report['objects']} objects, "
                                           f"{report['requests']} API requests); CRDs Established; "
                                           f"DaemonSet {rollout.summary}"),
                                  change=lambda w: replace(w, attempts=0, bundle_version=bundle.version,
                                                           rollout=rollout, install_requests=report["requests"],
                                                           last_error=None),
                                  next_step="apply-nads")
            applied = self.nads.apply_pending(ref, rec, kube, event_id, policy, first_ready=True)
        else:
            kube = self.ctx.kube_for(ref, cluster)
            applied = self.nads.apply_pending(ref, rec, kube, event_id, policy, first_ready=False)
        rec = claimed.advance(step="apply-nads", message=f"{trigger}: READY; {applied} pending NAD(s) processed",
                              change=seen, ledger_key=event_id, release=True)
        return Outcome("done", "cluster READY", ref.path, rec.state, {"nads": applied})

    def _install(self, kube: Any, bundle: Any, cursor: Cursor,
                 renew: Callable[[str], None] = lambda phase: None) -> dict[str, Any]:
        """Apply CRDs, wait until Established, then the rest: nothing uses a CRD before it serves.

        The two waits can outlast the step's lease: `renew(phase)` extends it every third of a lease,
        the lease then naming the phase (and stops the step with the busy error if another delivery
        took the cluster meanwhile).
        """
        settings = self.ctx.settings
        every = max(1.0, settings.lease_seconds / 3)
        before = kube.requests
        crds = [o for o in bundle.objects if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in bundle.objects if o["kind"] != "CustomResourceDefinition"]
        cursor.phase = "apply-crds"
        kube.apply(crds)
        cursor.phase = "wait-crds"
        deadline = time.monotonic() + settings.crd_timeout_seconds
        while True:
            renew(cursor.phase)
            left = deadline - time.monotonic()
            try:
                kube.wait_established(bundle.crd_names, timeout=max(0.0, min(left, every)),
                                      poll=settings.crd_poll_seconds)
                break
            except NotYet:
                if left <= every:
                    raise
        cursor.phase = "apply-bundle"
        renew(cursor.phase)
        kube.apply(rest)
        cursor.phase = "rollout"
        # Report the rollout rather than assume it (the seed allows maxUnavailable: 2): wait a
        # bounded time, record what was reached; reconcile keeps the figure current afterwards.
        deadline = time.monotonic() + settings.rollout_wait_seconds
        renewed = time.monotonic()
        rollout = kube.daemonset_rollout(*bundle.daemonset)
        while not rollout.complete and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.05, settings.crd_poll_seconds)))
            if time.monotonic() - renewed >= every:
                renew(cursor.phase)
                renewed = time.monotonic()
            rollout = kube.daemonset_rollout(*bundle.daemonset)
        cursor.phase = "install"
        return {"objects": len(bundle.objects), "requests": kube.requests - before, "rollout": rollout_fields(rollout)}


def _capacity_findings(pool: PoolNetworks, node_pool: NodePoolFacts, cluster: ClusterFacts) -> tuple[Finding, ...]:
    """`range-capacity` warnings once the pool's secondary range CIDR is known (issue 14)."""
    from shared.core import prechecks

    if not node_pool.cidr:
        return ()
    return tuple(prechecks.check_range_capacity(pool, node_pool.cidr, cluster=cluster))


def new_incarnation(rec: ClusterRecord, cluster: ClusterFacts) -> bool:
    """Is the cluster GKE shows another one than the workflow recorded (same name, re-created)?
    GKE's `id` is new on every re-creation."""
    if rec.state == decisions.DELETED or rec.workflow.new_incarnation_end:
        return True
    recorded, now = rec.workflow.cluster_id, cluster.cluster_id
    return bool(recorded and now and recorded != now)


def rollout_report(r: Any) -> RolloutReport:
    """A DaemonSet rollout as the workflow records it."""
    done = "rolled out" if r.complete else "rollout in progress"
    return RolloutReport(r.desired, r.updated, r.ready, r.available, bool(r.complete),
                         f"{done}: {r.ready}/{r.desired} ready, {r.updated} updated, {r.available} available")


def rollout_fields(r: Any) -> dict[str, Any]:
    """`rollout_report` as the document's map (reconcile still writes raw fields)."""
    report = rollout_report(r)
    return {"desired": report.desired, "updated": report.updated, "ready": report.ready,
            "available": report.available, "complete": report.complete, "summary": report.summary}



class _ClaimedDrive:
    """One claimed drive of a cluster: every write it makes carries its lease holder, and `rec` is
    the record as the last write left it (the drive holds the lease: nobody else writes it)."""

    def __init__(self, store: StorePort, ref: ClusterRef, event_id: str, cursor: Cursor, rec: ClusterRecord) -> None:
        self.store, self.ref, self.event_id, self.cursor, self.rec = store, ref, event_id, cursor, rec

    def advance(self, *, step: str, state: str | None = None, outcome: str = "ok", message: str = "",
                change: Callable[[ClusterWorkflow], ClusterWorkflow] | None = None, next_step: str | None = None,
                ledger_key: str | None = None, release: bool = False) -> ClusterRecord:
        """Record a step; `change` turns the workflow as last written into what it should be now."""
        workflow = self.rec.workflow
        self.rec = self.store.advance(self.ref, holder=self.cursor.holder, event_id=self.event_id, step=step,
                                      state=state, outcome=outcome, message=message, next_step=next_step,
                                      update=workflow.update(change(workflow)) if change is not None else None,
                                      ledger_key=ledger_key, release=release)
        return self.rec

    def hold(self, step: str) -> None:
        """Renew this drive's lease during a long wait."""
        self.store.hold(self.ref, holder=self.cursor.holder, step=step)
