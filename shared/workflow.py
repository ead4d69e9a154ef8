"""The workflow: each event moves a cluster (or a NAD) through its steps, one at a time.

Shape of every handler (DESIGN.md): read the workflow and claim the step in one Firestore
transaction (with a short lease), ask the pure decision core (`shared.decisions`) what to do,
perform the side effect (idempotent: server-side apply with a fixed field manager, create
node pool where ALREADY_EXISTS means done), then record the outcome, the history entry and,
at the end, the ledger entry in one transaction.

Errors are decided where they arise (adapters raise `Transient` / `Permanent`, decoders raise
`Rejected`); here they only choose between "record and acknowledge" and "release and retry".
The adapters are built lazily so that a function instance pays for the SDKs it uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import decisions as d
from shared import logs
from shared.errors import Permanent, Rejected, Transient
from shared.policy import Policy
from shared.refs import ClusterRef
from shared.settings import Settings

KUBE_CACHE_SECONDS = 300.0
# What the NAD decisions read of the other NADs (namespace and name come from the doc id).
NAD_DECISION_FIELDS = ("state", "master", "range", "claimOrder")


@dataclass(frozen=True)
class Outcome:
    """What a handler did, for the function's log line and for tests."""

    status: str  # done | duplicate | ignored | rejected | failed | pending | waiting
    message: str
    cluster: str | None = None
    state: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class Workflow:
    def __init__(self, settings: Settings, *, store: Any = None, gke: Any = None,
                 kube_factory: Callable[[Any], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._store = store
        self._gke = gke
        self._kube_factory = kube_factory
        self._kube_cache: dict[str, tuple[float, Any]] = {}
        self._policy: tuple[float, Policy] | None = None
        self._clock = clock

    # -- adapters, built on first use -------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from shared.store import Store

            self._store = Store(self.settings)
        return self._store

    @property
    def gke(self) -> Any:
        if self._gke is None:
            from shared.gke import Gke

            self._gke = Gke(self.settings, timeout=self.settings.api_timeout_seconds)
        return self._gke

    def kube_for(self, ref: ClusterRef, cluster: Any = None) -> Any:
        """A cluster API engine for `ref`, cached per process for a few minutes.

        A warm function instance handling many NAD requests for one cluster then makes one
        cluster API request per NAD, not a GKE call plus credentials each time.
        """
        now = self._clock()
        hit = self._kube_cache.get(ref.doc_id)
        if hit and hit[0] > now and cluster is None:
            return hit[1]
        if cluster is None:
            cluster = self.gke.get_cluster(ref)
        if self._kube_factory is not None:
            kube = self._kube_factory(cluster)
        else:
            from shared.kube import Kube

            kube = Kube(self.gke.api_client(cluster), timeout=self.settings.api_timeout_seconds)
        self._kube_cache[ref.doc_id] = (now + KUBE_CACHE_SECONDS, kube)
        return kube

    def policy(self) -> Policy:
        """Settings merged with the Firestore `config/policy` document (re-read every minute)."""
        now = self._clock()
        if self._policy and self._policy[0] > now:
            return self._policy[1]
        policy = Policy.from_settings(self.settings)
        if self.settings.policy_document:
            policy = policy.merged(self.store.get_policy())
        self._policy = (now + 60.0, policy)
        return policy

    def bundle(self) -> Any:
        from shared.multus import load_bundle

        s = self.settings
        return load_bundle(multus_image=s.multus_image, whereabouts_image=s.whereabouts_image,
                           allow_unpinned=s.allow_unpinned_images, log_level=s.multus_log_level)

    # -- audit events ------------------------------------------------------------------------
    def handle_audit(self, ev: Any) -> Outcome:
        """A GKE audit entry: cluster or node pool created or deleted."""
        ref: ClusterRef = ev.cluster
        if ev.status_code:
            return self._note(ref, ev.event_id, "audit",
                              f"{ev.method} failed in GKE (status {ev.status_code}); nothing to do",
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
        trigger = {"cluster.created": "cluster created",
                   "node_pool.created": f"node pool {ev.node_pool} created",
                   "node_pool.deleted": f"node pool {ev.node_pool} deleted"}[ev.action]
        create = ev.action == "cluster.created"
        return self.drive(ref, ev.event_id, trigger=trigger, create=create or None)

    def _note(self, ref: ClusterRef, event_id: str, step: str, message: str, *, outcome: str) -> Outcome:
        """Record an event that needs no step: in the cluster's history when we know the cluster."""
        store = self.store
        rec = store.get_cluster(ref)
        if rec is None:
            store.record_ledger(event_id, event_id=event_id, step=step, outcome=outcome, cluster=ref)
            return Outcome("ignored", message + " (cluster not tracked)", ref.path)
        from shared.store import AlreadyHandled

        try:  # no claim: a note changes no state, so it only needs the lease to be free
            rec = store.advance(ref, event_id=event_id, step=step, outcome=outcome, message=message,
                                ledger_key=event_id)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        return Outcome("ignored", message, ref.path, rec.state)

    def _discover(self, ref: ClusterRef, event_id: str) -> Outcome:
        """CreateCluster started: record the cluster as DISCOVERED; the last entry resumes it."""
        from shared.store import AlreadyHandled

        store = self.store
        message = "cluster creation started; waiting for it to finish"
        try:
            store.claim(ref, event_id=event_id, step="discover", ledger_key=event_id,
                        create_state=d.DISCOVERED, create_fields=_cluster_fields(ref))
            rec = store.advance(ref, event_id=event_id, step="discover", message=message,
                                ledger_key=event_id, release=True)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        return Outcome("waiting", message, ref.path, rec.state)

    def _close(self, ref: ClusterRef, event_id: str) -> Outcome:
        from shared.store import AlreadyHandled

        store = self.store
        if store.get_cluster(ref) is None:
            store.record_ledger(event_id, event_id=event_id, step="close", outcome="ignored", cluster=ref)
            return Outcome("ignored", "deletion of a cluster the controller never tracked", ref.path)
        try:
            store.claim(ref, event_id=event_id, step="close", ledger_key=event_id)
            rec = store.advance(ref, event_id=event_id, step="close", state=d.DELETED,
                                message="cluster deleted; workflow closed, nothing is applied to it again",
                                ledger_key=event_id, release=True)
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        self._kube_cache.pop(ref.doc_id, None)
        return Outcome("done", "workflow closed", ref.path, rec.state)

    # -- the cluster state machine -----------------------------------------------------------
    def drive(self, ref: ClusterRef, event_id: str, *, trigger: str, create: bool | None = True) -> Outcome:
        """Take the cluster as far as it can go now. Safe to call again with the same event id."""
        from shared.store import AlreadyHandled

        store = self.store
        cursor = _Cursor("precheck")
        cursor.holder = f"{event_id}#{cursor.holder}"
        try:
            rec = store.claim(ref, event_id=event_id, step=cursor.step, ledger_key=event_id, holder=cursor.holder,
                              create_state=d.DISCOVERED if create is not False else None,
                              create_fields=_cluster_fields(ref))
        except AlreadyHandled:
            return Outcome("duplicate", "event already handled", ref.path)
        except Rejected as e:
            if e.kind == "unknown-cluster":
                return Outcome("ignored", "cluster not tracked", ref.path)
            raise
        try:
            return self._drive_claimed(ref, rec, event_id, trigger, cursor)
        except AlreadyHandled:  # a concurrent duplicate of this event finished first
            return Outcome("duplicate", "event already handled", ref.path)
        except Transient as e:
            rec = store.release(ref, event_id=event_id, step=cursor.step, holder=cursor.holder,
                                error=f"{cursor.step}: {e}", outcome="retry")
            attempts = int(rec.data.get("attempts", 0) or 0)
            if attempts >= self.settings.max_attempts:
                return self._fail(ref, event_id, cursor,
                                  f"gave up after {attempts} attempts; last error: {e}")
            logs.warning("transient failure; Pub/Sub will redeliver", eventId=event_id, cluster=ref.path,
                         step=cursor.step, error=str(e), attempt=attempts)
            raise
        except Permanent as e:
            return self._fail(ref, event_id, cursor, f"{cursor.step}: {e}")

    def _fail(self, ref: ClusterRef, event_id: str, cursor: _Cursor, message: str) -> Outcome:
        store, step = self.store, cursor.step
        store.release(ref, event_id=event_id, step=step, error=message, outcome="failed",
                      state=d.FAILED, count_attempt=False, holder=cursor.holder)
        store.record_ledger(event_id, event_id=event_id, step=step, outcome="failed", cluster=ref)
        logs.error("step failed permanently", eventId=event_id, cluster=ref.path, step=step, error=message)
        return Outcome("failed", message, ref.path, d.FAILED)

    def _drive_claimed(self, ref: ClusterRef, rec: Any, event_id: str, trigger: str,
                       cursor: _Cursor) -> Outcome:
        from shared import prechecks

        store = self.store

        def advance(**kw: Any) -> Any:
            return store.advance(ref, holder=cursor.holder, event_id=event_id, **kw)

        if rec.state == d.DELETED:
            advance(step="precheck", outcome="skipped",
                          message=f"{trigger}: the workflow is closed", ledger_key=event_id, release=True)
            return Outcome("ignored", "workflow closed", ref.path, d.DELETED)
        try:
            cluster = self.gke.get_cluster(ref)
        except Permanent as e:
            if str(e.code).upper() in ("NOT_FOUND", "404", "5"):
                rec = advance(step="precheck", state=d.DELETED,
                                    message=f"{trigger}: cluster no longer exists in GKE",
                                    ledger_key=event_id, release=True)
                return Outcome("done", "cluster no longer exists", ref.path, rec.state)
            raise
        facts = prechecks.ClusterFacts.of(cluster)
        findings = prechecks.precheck(cluster)
        policy = self.policy()
        suitable = prechecks.suitable_pools(list(cluster.node_pools))
        bundle = self.bundle()
        step = d.decide_cluster(state=rec.state, facts=facts, findings=findings,
                                opted_in=policy.opted_in(dict(facts.labels)), suitable=suitable,
                                have_template=policy.node_pool_template is not None,
                                bundle_version=bundle.version)
        base = {"version": facts.version, "status": facts.status,
                "findings": [f.to_dict() for f in findings], "trigger": trigger}
        finish = {"attempts": 0}
        if step.kind in (step.CLOSED, step.IGNORE, step.WAIT, step.INELIGIBLE, step.AWAIT_POOL):
            rec = advance(step="precheck", state=step.state,
                                outcome="ignored" if step.kind == step.IGNORE else "ok",
                                message=f"{trigger}: {step.message}", fields={**base, **finish},
                                ledger_key=event_id, release=True)
            if step.kind in (step.IGNORE, step.INELIGIBLE):
                self._reject_pending(ref, event_id, step.message)
            status = {"ignore": "ignored", "ineligible": "done", "closed": "ignored"}.get(step.kind, "waiting")
            return Outcome(status, step.message, ref.path, rec.state)
        if step.kind == step.CREATE_POOL:
            cursor.step = "create-node-pool"
            tpl = policy.node_pool_template
            operation = self.gke.create_node_pool(ref, tpl)
            rec = advance(step="create-node-pool", state=d.CREATING_NODE_POOL,
                                message=f"{trigger}: {step.message} ({tpl.name}"
                                        + (f", operation {operation})" if operation else ", already exists)"),
                                fields={**base, **finish, "nodePoolRequested": {
                                    "name": tpl.name, "operation": operation or "",
                                    "subnetwork": tpl.subnetwork, "secondaryPodRange": tpl.secondary_pod_range}},
                                ledger_key=event_id, release=True)
            return Outcome("waiting", step.message, ref.path, rec.state)
        pool = step.pool
        pod_net = pool.pod_networks[0]
        node_pool = dict(rec.data.get("nodePool") or {})
        if node_pool.get("name") != pool.name or not node_pool.get("cidr"):
            cursor.step = "resolve-range"
            cidr = self.gke.secondary_range_cidr(ref, pod_net.subnetwork, pod_net.secondary_pod_range)
            node_pool = {"name": pool.name, "subnetwork": pod_net.subnetwork,
                         "secondaryPodRange": pod_net.secondary_pod_range, "cidr": cidr,
                         "maxPodsPerNode": pod_net.max_pods_per_node}
        if step.kind == step.INSTALL or rec.data.get("bundleVersion") != bundle.version:
            cursor.step = "install"
            rec = advance(step="precheck", state=d.INSTALLING,
                                message=f"{trigger}: {step.message}",
                                fields={**base, "nodePool": node_pool}, next_step="install")
            kube = self.kube_for(ref, cluster)
            report = self._install(kube, bundle, cursor)
            rec = advance(step="install", state=d.READY,
                                message=(f"bundle {bundle.version} applied ({report['objects']} objects, "
                                         f"{report['requests']} API requests); CRDs Established; "
                                         f"DaemonSet {report['rollout']['summary']}"),
                                fields={**finish, "bundleVersion": bundle.version, "rollout": report["rollout"],
                                        "installRequests": report["requests"], "lastError": None},
                                next_step="apply-nads")
            applied = self._apply_pending(ref, rec, kube, event_id, policy, first_ready=True)
        else:
            kube = self.kube_for(ref, cluster)
            applied = self._apply_pending(ref, rec, kube, event_id, policy, first_ready=False)
        rec = advance(step="apply-nads",
                            message=f"{trigger}: READY; {applied} pending NAD(s) processed",
                            fields={"nodePool": node_pool}, ledger_key=event_id, release=True)
        return Outcome("done", "cluster READY", ref.path, rec.state, {"nads": applied})

    def _install(self, kube: Any, bundle: Any, cursor: _Cursor) -> dict[str, Any]:
        """Apply CRDs, wait until Established, then the rest: nothing uses a CRD before it serves."""
        before = kube.requests
        crds = [o for o in bundle.objects if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in bundle.objects if o["kind"] != "CustomResourceDefinition"]
        cursor.step = "apply-crds"
        kube.apply(crds)
        cursor.step = "wait-crds"
        kube.wait_established(bundle.crd_names, timeout=self.settings.crd_timeout_seconds,
                              poll=self.settings.crd_poll_seconds)
        cursor.step = "apply-bundle"
        kube.apply(rest)
        cursor.step = "rollout"
        # Report the rollout rather than assume it (the seed allows maxUnavailable: 2): wait a
        # bounded time, record what was reached; reconcile keeps the figure current afterwards.
        deadline = time.monotonic() + self.settings.rollout_wait_seconds
        rollout = kube.daemonset_rollout(*bundle.daemonset)
        while not rollout.complete and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.05, self.settings.crd_poll_seconds)))
            rollout = kube.daemonset_rollout(*bundle.daemonset)
        cursor.step = "install"
        return {"objects": len(bundle.objects), "requests": kube.requests - before, "rollout": rollout_fields(rollout)}

    # -- NADs ----------------------------------------------------------------------------------
    def handle_nad(self, ev: Any) -> Outcome:
        """A validated NAD request: decide, apply (or wait, or reject), record."""
        req = ev.request
        ref: ClusterRef = req.cluster
        store = self.store
        ledger = _nad_ledger_key(ev.event_id, req)
        rec, seen = store.get_cluster_unless_seen(ref, ledger)
        if seen:
            return Outcome("duplicate", "request already handled", ref.path)
        cluster_state = rec.state if rec else None
        out = self._decide_and_carry_out(ref, rec, req, ev.event_id, ledger, expect=None)
        if out.state == d.NAD_PENDING and out.status == "pending":
            # Lost wake-up guard: the cluster may have become READY (and scanned its PENDING NADs)
            # between our read of it and our write. Look once more; the compare-and-set on PENDING
            # makes sure only one of us and that scan applies the NAD.
            rec = store.get_cluster(ref)
            if rec is not None and rec.state == d.READY and cluster_state != d.READY:
                return self._decide_and_carry_out(ref, rec, req, ev.event_id, f"{ledger}~late",
                                                  expect=(d.NAD_PENDING,))
        return out

    def _decide_and_carry_out(self, ref: ClusterRef, rec: Any, req: Any, event_id: str, ledger: str, *,
                              expect: tuple[str | None, ...] | None, expect_claim: str | None = None) -> Outcome:
        """The pure checks first (state, namespace, range inside the pool's); the checks that
        depend on the other NADs (overlap, limit) are made after this request's claim, see
        `_apply_nad`."""
        policy = self.policy()
        cluster_state = rec.state if rec else None
        pool_cidr = ((rec.data.get("nodePool") or {}).get("cidr")) if rec else None
        step = d.decide_nad(request=req, cluster_state=cluster_state, pool_cidr=pool_cidr, existing=None,
                            namespace_problem=policy.namespace_problem(req.namespace), max_nads=None)
        if step.kind == step.APPLY:
            return self._apply_nad(ref, req, step.range, event_id, ledger, expect=expect, expect_claim=expect_claim)
        return self._carry_out_nad(ref, req, step, event_id, ledger, cluster_state, expect=expect,
                                   expect_claim=expect_claim)

    def _carry_out_nad(self, ref: ClusterRef, req: Any, step: d.NadStep, event_id: str, ledger: str,
                       cluster_state: str | None, *, expect: tuple[str | None, ...] | None = None,
                       expect_claim: str | None = None) -> Outcome:
        """Delete, reject or queue a NAD (applying is `_apply_nad`)."""
        store = self.store
        fields = _nad_fields(req)
        label = f"{req.namespace}/{req.name}"
        if step.kind == step.DELETE:
            deleted = False
            if cluster_state == d.READY:
                try:
                    deleted = self.kube_for(ref).delete_nad(req.namespace, req.name)
                except Permanent as e:
                    return self._nad_failed(ref, req, event_id, ledger, "delete", e)
            message = f"{label} deleted" + ("" if deleted else " (it was not on the cluster)")
            wrote = store.put_nad(ref, req.namespace, req.name, event_id=event_id, step="delete-nad",
                                  state=d.NAD_DELETED, fields=fields, message=message, ledger_key=ledger)
            return Outcome("done" if wrote else "duplicate", message, ref.path, d.NAD_DELETED)
        extra = {"reasons": list(step.reasons)} if step.reasons else {}
        wrote = store.put_nad(ref, req.namespace, req.name, event_id=event_id,
                              step="reject-nad" if step.kind == step.REJECT else "queue-nad",
                              state=step.state, fields={**fields, **extra},
                              outcome="rejected" if step.kind == step.REJECT else "ok",
                              message=f"{label}: {step.message}", ledger_key=ledger, expect_states=expect,
                              expect_fields={"claimOrder": expect_claim} if expect_claim else None)
        status = "rejected" if step.kind == step.REJECT else "pending"
        return Outcome(status if wrote else "duplicate", step.message, ref.path, step.state)

    def _apply_nad(self, ref: ClusterRef, req: Any, cidr: str, event_id: str, ledger: str, *,
                   expect: tuple[str | None, ...] | None, expect_claim: str | None = None) -> Outcome:
        """Claim, check against the other NADs, apply to the cluster, record.

        Two requests of one cluster handled at once must not both get overlapping ranges, yet a
        lock per cluster would make every NAD of a cluster wait on one document. So each request
        claims its NAD document first (APPLYING + `claimOrder`), then reads the others and
        settles conflicts with `decisions.arbitrate`; the final record is a compare-and-set on the
        claim, so a claim turned away meanwhile withdraws its object from the cluster.
        """

        store = self.store
        ns, name, label = req.namespace, req.name, f"{req.namespace}/{req.name}"
        order = f"{time.time_ns():020d}~{secrets.token_hex(4)}"
        mine = {"claimOrder": order}
        if not store.put_nad(ref, ns, name, event_id=event_id, step="claim-nad", state=d.NAD_APPLYING,
                             fields={**_nad_fields(req), "range": cidr, **mine},
                             message=f"{label}: applying with range {cidr}", ledger_key=ledger,
                             expect_states=expect, history=False, write_ledger=False,
                             expect_fields={"claimOrder": expect_claim} if expect_claim else None):
            return Outcome("duplicate", "request already handled, or taken by another worker", ref.path)
        try:
            return self._apply_claimed(ref, req, cidr, event_id, ledger, order)
        except Transient:
            if expect == (d.NAD_PENDING,):  # hand it back to the queue for the next drive or reconcile
                with contextlib.suppress(Transient, Permanent):
                    store.put_nad(ref, ns, name, event_id=event_id, step="claim-nad", state=d.NAD_PENDING,
                                  fields={}, message=f"{label}: waiting again after a transient failure",
                                  expect_states=(d.NAD_APPLYING,), expect_fields=mine, history=False)
            raise

    def _apply_claimed(self, ref: ClusterRef, req: Any, cidr: str, event_id: str, ledger: str,
                       order: str) -> Outcome:
        from shared import nad as nadlib

        store = self.store
        ns, name, label = req.namespace, req.name, f"{req.namespace}/{req.name}"
        mine = {"claimOrder": order}
        policy = self.policy()
        others = [n for n in store.list_nads(ref, fields=NAD_DECISION_FIELDS)
                  if (n["namespace"], n["name"]) != (ns, name)]
        limit = d.limit_problem(others, policy.max_nads_per_cluster)
        reasons = [limit] if limit else []
        arb = d.arbitrate(key=f"{ns}~{name}", master=req.master, cidr=cidr, order=order, others=others)
        lose_to = list(arb.lose_to)
        # Only a claim that is going to be applied turns later claims away.
        for other in (arb.win_over if not (lose_to or reasons) else ()):
            o_label = f"{other['namespace']}/{other['name']}"
            why = f"range {other['range']} overlaps {label} ({cidr}) on master {req.master}, claimed first"
            if not store.put_nad(ref, other["namespace"], other["name"], event_id=event_id, step="reject-nad",
                                 state=d.NAD_REJECTED, fields={"reasons": [why]}, outcome="rejected",
                                 message=f"{o_label}: {why}", expect_states=(d.NAD_APPLYING,),
                                 expect_fields={"claimOrder": other.get("claimOrder")}):
                now = store.get_nad(ref, other["namespace"], other["name"]) or {}
                if now.get("state") in d.NAD_LIVE and now.get("range") == other["range"]:
                    lose_to.append(now)  # it finished first after all
        reasons += [f"range {cidr} overlaps {o.get('namespace')}/{o.get('name')} ({o.get('range')}) "
                    f"on master {req.master}" for o in lose_to]
        if reasons:
            if not store.put_nad(ref, ns, name, event_id=event_id, step="reject-nad", state=d.NAD_REJECTED,
                                 fields={"reasons": reasons}, outcome="rejected",
                                 message=f"{label}: " + "; ".join(reasons), ledger_key=ledger,
                                 expect_states=(d.NAD_APPLYING,), expect_fields=mine):
                store.record_ledger(ledger, event_id=event_id, step="reject-nad", outcome="rejected", cluster=ref)
            return Outcome("rejected", "; ".join(reasons), ref.path, d.NAD_REJECTED)
        obj = nadlib.render_nad(req, cidr)
        fields = {**_nad_fields(req), "range": cidr, "config": obj["spec"]["config"]}
        try:
            kube = self.kube_for(ref)
            result = kube.apply_nad(obj)
        except Permanent as e:
            return self._nad_failed(ref, req, event_id, ledger, "apply", e, expect_fields=mine)
        fields["resourceVersion"] = getattr(result, "resource_version", "")
        state, message = d.NAD_APPLIED, f"{label} applied with range {cidr}"
        if req.verify:
            ok, detail = self._verify_pod(kube, req, cidr, ref)
            fields["verification"] = {"ok": ok, "message": detail}
            state = d.NAD_VERIFIED if ok else d.NAD_APPLIED
            message += f"; verify: {detail}"
        if store.put_nad(ref, ns, name, event_id=event_id, step="apply-nad", state=state, fields=fields,
                         message=message, ledger_key=ledger, expect_states=(d.NAD_APPLYING,), expect_fields=mine):
            return Outcome("done", message, ref.path, state)
        if store.seen(ledger):
            return Outcome("duplicate", "request already handled", ref.path)
        now = store.get_nad(ref, ns, name) or {}
        if now.get("state") != d.NAD_REJECTED:
            # Another worker claimed it since (a duplicate of this request, or a take-over): it
            # applies the same object and records the outcome, ledger included; nothing to undo.
            return Outcome("superseded", f"{label}: a newer request for the same NAD took over", ref.path,
                           now.get("state"))
        # Turned away while applying (an overlapping claim with an earlier order won): withdraw.
        try:
            kube.delete_nad(ns, name)
        finally:
            store.record_ledger(ledger, event_id=event_id, step="apply-nad", outcome="rejected", cluster=ref)
        return Outcome("rejected", f"{label} withdrawn: an overlapping request claimed its range first",
                       ref.path, d.NAD_REJECTED)

    def _nad_failed(self, ref: ClusterRef, req: Any, event_id: str, ledger: str, what: str,
                    err: Exception, *, expect_fields: dict[str, Any] | None = None) -> Outcome:
        message = f"{req.namespace}/{req.name}: {what} refused by the cluster: {err}"
        self.store.put_nad(ref, req.namespace, req.name, event_id=event_id, step=f"{what}-nad",
                           state=d.NAD_FAILED, fields={**_nad_fields(req), "lastError": str(err)},
                           outcome="failed", message=message, ledger_key=ledger, expect_fields=expect_fields)
        return Outcome("failed", message, ref.path, d.NAD_FAILED)

    def _apply_pending(self, ref: ClusterRef, rec: Any, kube: Any, event_id: str, policy: Policy,
                       *, first_ready: bool) -> int:
        """Apply the NADs that waited for READY (and the policy's default NADs on first READY).

        Each goes through the same path as a new request; the compare-and-set on PENDING makes a
        NAD that a concurrent request handler is already applying a no-op here.
        """
        from shared import nad as nadlib

        store = self.store
        nads = store.list_nads(ref, fields=("state", "request", "claimOrder"))
        known = {(n.get("namespace"), n.get("name")) for n in nads}
        todo: list[tuple[Any, tuple[str | None, ...], str | None]] = []
        if first_ready:
            for raw in policy.default_nads:
                try:
                    req = nadlib.parse_request({**raw, "cluster": ref.path})
                except Rejected as e:
                    logs.error("default NAD in policy is invalid", cluster=ref.path, error=e.message)
                    continue
                if (req.namespace, req.name) not in known:
                    todo.append((req, (None,), None))
        # A claim is abandoned, not slow, once it is three leases old: a request whose worker hit a
        # transient error keeps its claim while Pub/Sub redelivers it (seconds to minutes of
        # backoff), and that redelivery re-claims it itself; taking over earlier would only race it.
        stale_before = f"{time.time_ns() - int(3 * self.settings.lease_seconds * 1e9):020d}"
        for doc in nads:
            if not isinstance(doc.get("request"), Mapping):
                continue
            claim = None
            if doc.get("state") == d.NAD_PENDING:
                expect: tuple[str | None, ...] = (d.NAD_PENDING,)
            elif doc.get("state") == d.NAD_APPLYING and str(doc.get("claimOrder") or "") < stale_before:
                expect, claim = (d.NAD_APPLYING,), doc.get("claimOrder")  # its worker died: take it over
            else:
                continue
            try:
                todo.append((nadlib.parse_request(dict(doc["request"])), expect, claim))
            except Rejected as e:
                store.put_nad(ref, doc["namespace"], doc["name"], event_id=event_id, step="apply-nad",
                              state=d.NAD_REJECTED, fields={"reasons": [e.message]}, outcome="rejected",
                              message=e.message, ledger_key=f"{event_id}~{doc['namespace']}~{doc['name']}",
                              expect_states=(d.NAD_PENDING,))
        for req, expect, claim in todo:
            ledger = f"{event_id}~{req.namespace}~{req.name}"
            self._decide_and_carry_out(ref, rec, req, event_id, ledger, expect=expect, expect_claim=claim)
        return len(todo)

    def _reject_pending(self, ref: ClusterRef, event_id: str, why: str) -> None:
        for doc in self.store.list_nads(ref, state=d.NAD_PENDING):
            self.store.put_nad(ref, doc["namespace"], doc["name"], event_id=event_id, step="reject-nad",
                               state=d.NAD_REJECTED, fields={"reasons": [why]}, outcome="rejected",
                               message=f"{doc['namespace']}/{doc['name']}: {why}",
                               ledger_key=f"{event_id}~{doc['namespace']}~{doc['name']}")

    # -- verify ----------------------------------------------------------------------------------
    def verify(self, ref: ClusterRef, namespace: str, name: str, event_id: str) -> Outcome:
        """Start a short-lived pod on the NAD, check net1's address, record VERIFIED or why not."""
        store = self.store
        doc = store.get_nad(ref, namespace, name)
        if doc is None or doc.get("state") not in d.NAD_LIVE:
            state = doc.get("state") if doc else "unknown"
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} is {state}; only APPLIED NADs can be verified",
                           kind="not-applied", cluster=ref)
        from shared import nad as nadlib

        req = nadlib.parse_request(dict(doc["request"]))
        kube = self.kube_for(ref)
        ok, detail = self._verify_pod(kube, req, doc.get("range"), ref)
        state = d.NAD_VERIFIED if ok else d.NAD_APPLIED
        store.put_nad(ref, namespace, name, event_id=event_id, step="verify-nad", state=state,
                      fields={"verification": {"ok": ok, "message": detail}},
                      outcome="ok" if ok else "failed", message=f"{namespace}/{name}: verify: {detail}",
                      ledger_key=f"{event_id}~verify~{namespace}~{name}")
        return Outcome("done" if ok else "failed", detail, ref.path, state)

    def _verify_pod(self, kube: Any, req: Any, cidr: str | None, ref: ClusterRef) -> tuple[bool, str]:
        from shared.verify import run_verification

        rec = self.store.get_cluster(ref)
        pool = ((rec.data.get("nodePool") or {}).get("name")) if rec else None
        return run_verification(kube, req.namespace, req.name, cidr, pool=pool, cluster=ref.path)

    # -- reconcile --------------------------------------------------------------------------------
    def reconcile(self, ev: Any) -> Outcome:
        """Resume stalled workflows, adopt opted-in clusters with none, repair drift (`shared.reconcile`)."""
        from shared.reconcile import reconcile

        return reconcile(self, ev)

    # -- rejected input ---------------------------------------------------------------------------
    def record_rejection(self, err: Rejected, *, event_id: str, excerpt: str = "") -> Outcome:
        """Record refused input where `status` and the Firestore console show it."""
        cluster = err.cluster if isinstance(err.cluster, ClusterRef) else None
        name = err.context.get("name")
        namespace = err.context.get("namespace") or "default"
        problems = [{"field": p.field, "message": p.message} for p in err.problems]
        if cluster is not None and isinstance(name, str) and _dns_label(name) and _dns_label(namespace):
            self.store.put_nad(cluster, namespace, name, event_id=event_id, step="validate-nad",
                               state=d.NAD_REJECTED,
                               fields={"namespace": namespace, "name": name, "reasons": [str(p) for p in err.problems]
                                       or [err.reason], "requestExcerpt": excerpt[:512]},
                               outcome="rejected", message=err.message, ledger_key=event_id)
        self.store.record_rejection(event_id=event_id, cluster=cluster, reason=err.reason, problems=problems,
                                    kind=err.kind, excerpt=excerpt[:512], ledger_key=None)
        return Outcome("rejected", err.message, cluster.path if cluster else None)


@dataclass
class _Cursor:
    """Where a drive currently is, so an error is recorded against the step that raised it.

    `holder` names this delivery of the event in the lease: two concurrent deliveries of one
    event (Pub/Sub is at least once) must not both run the steps, so each has its own holder and
    the second gets a `Transient` "busy" answer; it is redelivered later and finds the ledger.
    """

    step: str
    holder: str = field(default_factory=lambda: secrets.token_hex(6))


def rollout_fields(r: Any) -> dict[str, Any]:
    done = "rolled out" if r.complete else "rollout in progress"
    return {"desired": r.desired, "updated": r.updated, "ready": r.ready, "available": r.available,
            "complete": bool(r.complete),
            "summary": f"{done}: {r.ready}/{r.desired} ready, {r.updated} updated, {r.available} available"}


def _cluster_fields(ref: ClusterRef) -> dict[str, Any]:
    return {"project": ref.project, "location": ref.location, "cluster": ref.cluster, "path": ref.path}


def _nad_fields(req: Any) -> dict[str, Any]:
    from shared.store import DELETE

    # `reasons` and `lastError` belong to a previous outcome; a new one clears them unless it sets them.
    return {"namespace": req.namespace, "name": req.name, "request": req.to_dict(), "master": req.master,
            "mode": req.mode, "action": req.action, "requestId": req.request_id, "reasons": DELETE,
            "lastError": DELETE}


def _nad_ledger_key(event_id: str, req: Any) -> str:
    """Requests carrying a request_id are deduplicated by it, whatever their message id."""
    if req.request_id:
        digest = hashlib.sha256(f"{req.cluster.doc_id}/{req.request_id}".encode()).hexdigest()[:32]
        return f"request-{digest}"
    return event_id


def _dns_label(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value))
