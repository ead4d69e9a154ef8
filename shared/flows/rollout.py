"""Bundle rollouts: a new bundle reaches the fleet in waves behind a health gate, with rollback.

The bundle's options (images, log level) come from the policy (settings, overridden by the
`config/policy` document). The scheduled tick calls `RolloutFlow.tick`: when the policy's bundle
differs from the one the fleet last finished on, it plans waves (`shared.core.waves.plan`) over
the READY clusters and keeps the plan in `rollouts/current`. Each tick then drives the current
wave: every cluster of it gets the target bundle (CRDs first, Established, then the rest) and
must pass the health gate — CRDs Established, no DaemonSet pod stuck (ImagePullBackOff...),
the DaemonSet rolled out, and a verify pod on the multi-network pool gets `net1` from one of
the cluster's NAD ranges — before the next wave starts. A failed gate (or a gate not passed
within `rollout_gate_seconds`) rolls that cluster back to the previous bundle, records both in
its history, and halts the rollout until `rollout resume` or `rollout abort`.

While a rollout is in force every other path (install, reconcile's drift repair) asks
`Context.bundle(ref)`, which answers with the target only for the clusters the rollout has
updated (`waves.spec_for`): nothing reaches a cluster before its wave.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from shared.core import decisions, logs, waves
from shared.core.errors import Permanent, Rejected, RejectionKind, Transient
from shared.core.policy import Policy
from shared.core.refs import ClusterRef
from shared.flows.context import Context, bundle_of
from shared.flows.verify import clear_verifying, mark_verifying, run_verification
from shared.ports import AlreadyHandled, StorePort

STUCK_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                 "CreateContainerConfigError")
PASS, FAIL, PENDING = "pass", "fail", "pending"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RolloutFlow:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- the tick -------------------------------------------------------------------------
    def tick(self, event_id: str, labels: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """Start a rollout when the policy's bundle changed, else drive the one in force a step.

        `labels` are the clusters' GKE labels by document id (for the canary label). Returns a
        one-line summary for the tick's outcome.
        """
        policy = self.ctx.policy(fresh=True)
        target_spec = self._versioned(policy.bundle_spec())
        doc, update_time = _rollout_doc(self.ctx.store)
        if doc is None or (doc.get("target") or {}).get("version") != target_spec["version"]:
            doc, update_time = self._start(event_id, doc, update_time, policy, target_spec, labels or {})
        if doc.get("state") != waves.RUNNING:
            return f"rollout {doc.get('state')}: {doc.get('reason') or _summary(doc)}"
        doc = self._drive(event_id, doc, update_time)
        return f"rollout {doc.get('state')}: {doc.get('reason') or _summary(doc)}"

    def _versioned(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        bundle = bundle_of(spec, allow_unpinned=self.ctx.settings.allow_unpinned_images)
        return {"multusImage": bundle.multus_image, "whereaboutsImage": bundle.whereabouts_image,
                "logLevel": bundle.log_level, "version": bundle.version}

    def _start(self, event_id: str, doc: Any, update_time: Any, policy: Policy, target: dict[str, Any],
               labels: Mapping[str, Mapping[str, str]]) -> tuple[dict[str, Any], Any]:
        if doc is None:  # the first rollout starts from the bundle the deployment installs
            previous = self._versioned(Policy.from_settings(self.ctx.settings).bundle_spec())
        elif doc.get("state") == waves.COMPLETED:
            previous = dict(doc.get("target") or {})
        else:  # aborted, halted or superseded: the last good bundle
            previous = dict(doc.get("previous") or doc.get("target") or {})
        now = _now()
        base: dict[str, Any] = {"target": target, "previous": previous, "startedAt": now, "updatedAt": now,
                                "startedBy": event_id, "reason": "", "haltedCluster": "", "finishedAt": ""}
        if previous.get("version") == target["version"]:
            new = {**base, "state": waves.COMPLETED, "waves": [], "wave": 0, "clusters": {}, "finishedAt": now}
        else:
            ready = self.ctx.store.list_clusters(state=decisions.READY)
            size = waves.WaveSize.parse(policy.rollout_wave_size, field="rolloutWaveSize")
            plan = waves.plan([(r.ref.doc_id, labels.get(r.ref.doc_id) or {}) for r in ready],
                          canary=policy.rollout_canary, size=size)
            wave_of = {cid: i for i, wave in enumerate(plan) for cid in wave["clusters"]}
            clusters = {r.ref.doc_id: {"path": r.ref.path, "wave": wave_of[r.ref.doc_id], "state": waves.WAITING,
                                       "since": now, "message": ""} for r in ready}
            new = {**base, "state": waves.RUNNING if plan else waves.COMPLETED, "waves": plan, "wave": 0,
                   "clusters": clusters, "waveSize": str(size), "canary": policy.rollout_canary}
            if not plan:
                new["finishedAt"] = now
        update_time = self.ctx.store.put_rollout(new, update_time)
        logs.info(f"rollout started: {previous.get('version')} -> {target['version']} "
                  f"({len(new['waves'])} wave(s))", eventId=event_id)
        self.ctx.remember_rollout(new)
        return new, update_time

    def _drive(self, event_id: str, doc: dict[str, Any], update_time: Any) -> dict[str, Any]:
        """Drive the current wave until it waits on a gate, halts or the rollout completes."""
        s = self.ctx.settings
        deadline = time.monotonic() + max(1.0, s.rollout_wait_seconds)
        while doc["state"] == waves.RUNNING:
            wave = doc["waves"][doc["wave"]]
            starting = [cid for cid in wave["clusters"] if self._claim(doc, cid)]
            if starting:  # recorded first: from now on every other path gives these clusters the target
                update_time = self._save(doc, update_time)
            for cid in starting:
                self._update(event_id, doc, cid)
            for cid in wave["clusters"]:
                entry = doc["clusters"][cid]
                failed = self._gate(event_id, doc, cid) if entry["state"] == waves.UPDATING else None
                if failed is not None:
                    # Halt and record first: from now on every other path gives this cluster the
                    # previous bundle; then put it back.
                    entry.update(state=waves.ROLLED_BACK, since=_now(), message=failed)
                    doc.update(state=waves.HALTED, haltedCluster=cid,
                               reason=f"{entry['path']} failed the health gate: {failed}")
                    update_time = self._save(doc, update_time)
                    self._rollback(event_id, doc, cid, failed)
                    break
            if doc["state"] == waves.RUNNING and all(doc["clusters"][c]["state"] in (waves.PASSED, waves.SKIPPED)
                                                 for c in wave["clusters"]):
                doc["wave"] += 1
                if doc["wave"] >= len(doc["waves"]):
                    doc["wave"] = len(doc["waves"]) - 1
                    doc["state"] = waves.COMPLETED
                    doc["finishedAt"] = _now()
                doc["updatedAt"] = _now()
                update_time = self._save(doc, update_time)
                continue
            update_time = self._save(doc, update_time)
            if time.monotonic() >= deadline:
                break
            time.sleep(max(0.05, s.crd_poll_seconds))
        self.ctx.remember_rollout(doc)
        return doc

    def _save(self, doc: dict[str, Any], update_time: Any) -> Any:
        doc["updatedAt"] = _now()
        return self.ctx.store.put_rollout(doc, update_time)

    # -- one cluster ------------------------------------------------------------------------
    def _bundle(self, doc: Mapping[str, Any], which: str) -> Any:
        return bundle_of(doc[which], allow_unpinned=self.ctx.settings.allow_unpinned_images)

    def _claim(self, doc: dict[str, Any], cid: str) -> bool:
        """WAITING -> UPDATING for a READY cluster of the current wave (SKIPPED if it is not READY)."""
        entry = doc["clusters"][cid]
        if entry["state"] != waves.WAITING:
            return False
        rec = self.ctx.store.get_cluster(ClusterRef.parse(entry["path"]))
        if rec is None or rec.state != decisions.READY:
            entry.update(state=waves.SKIPPED, since=_now(), message=f"not READY ({rec.state if rec else 'gone'})")
            return False
        entry.update(state=waves.UPDATING, since=_now(), started=time.time(), message="applying the target bundle")
        return True

    def _update(self, event_id: str, doc: dict[str, Any], cid: str) -> None:
        """Apply the target bundle to a cluster the rollout just moved to UPDATING."""
        entry = doc["clusters"][cid]
        ref = ClusterRef.parse(entry["path"])
        bundle = self._bundle(doc, "target")
        try:
            kube = self.ctx.kube_for(ref, self.ctx.gke.get_cluster(ref))
            _apply(kube, bundle, self.ctx.settings)
        except (Transient, Permanent, Rejected) as e:
            # Drift repair applies the target too (the cluster is UPDATING); the gate waits for it.
            entry["message"] = f"could not apply the bundle yet: {e}"
            return
        entry["message"] = f"bundle {bundle.version} applied (wave {entry['wave']})"
        self._record(ref, f"{event_id}~rollout~{cid}~update", "rollout", "ok",
                     f"rollout: bundle {doc['previous'].get('version')} -> {bundle.version} "
                     f"({doc['waves'][entry['wave']]['name']}); waiting for the health gate",
                     bundle.version)

    def _gate(self, event_id: str, doc: dict[str, Any], cid: str) -> str | None:
        """Check one UPDATING cluster: PASSED (recorded), still pending, or why it failed."""
        entry = doc["clusters"][cid]
        ref = ClusterRef.parse(entry["path"])
        bundle = self._bundle(doc, "target")
        try:
            kube = self.ctx.kube_for(ref)
            verdict, message = health_gate(self.ctx, ref, kube, bundle)
        except (Transient, Permanent, Rejected) as e:
            verdict, message = PENDING, f"health gate could not run: {e}"
        waited = time.time() - float(entry.get("started") or time.time())
        if verdict == PENDING and waited >= self.ctx.settings.rollout_gate_seconds:
            verdict, message = FAIL, f"health gate not passed within {self.ctx.settings.rollout_gate_seconds:g}s: " \
                                     f"{message}"
        entry["message"] = message
        if verdict == PASS:
            entry.update(state=waves.PASSED, since=_now())
            self._record(ref, f"{event_id}~rollout~{cid}~pass", "rollout-gate", "ok",
                         f"rollout: health gate passed for bundle {bundle.version}: {message}", None)
        return message if verdict == FAIL else None

    def _rollback(self, event_id: str, doc: dict[str, Any], cid: str, why: str) -> None:
        """Put a cluster that failed its gate back on the previous bundle (the rollout is HALTED)."""
        entry = doc["clusters"][cid]
        ref = ClusterRef.parse(entry["path"])
        previous = self._bundle(doc, "previous")
        try:
            _apply(self.ctx.kube_for(ref), previous, self.ctx.settings)
            done = f"rolled back to {previous.version}"
        except (Transient, Permanent, Rejected) as e:
            done = f"rollback to {previous.version} failed: {e}; reconcile retries it"
        entry["message"] = f"{why}; {done}"
        doc["reason"] = f"{entry['path']} failed the health gate: {why}; {done}"
        self._record(ref, f"{event_id}~rollout~{cid}~rollback", "rollback", "failed",
                     f"rollout halted: health gate failed for bundle {doc['target'].get('version')}: {why}; {done}",
                     previous.version)

    def _record(self, ref: ClusterRef, event_id: str, step: str, outcome: str, message: str,
                bundle_version: str | None) -> None:
        """A history entry on the cluster (its own lease, as every step).

        A drift check or a NAD step may hold the cluster's lease for a moment: wait for it (up to one
        lease) rather than lose the entry, since the history is what users audit."""
        store = self.ctx.store
        deadline = time.monotonic() + self.ctx.settings.lease_seconds
        pause = 0.1
        while True:
            try:
                rec = store.claim(ref, event_id=event_id, step=step, ledger_key=event_id)
                was = rec.workflow
                update = was.update(replace(was, bundle_version=bundle_version)) if bundle_version else None
                store.advance(ref, event_id=event_id, step=step, outcome=outcome, message=message, update=update,
                              ledger_key=event_id, release=True)
                return
            except AlreadyHandled:
                return
            except Transient as e:
                if time.monotonic() + pause > deadline:
                    logs.warning("rollout: could not record a history entry", cluster=ref.path, error=str(e))
                    return
                time.sleep(pause)
                pause = min(2.0, pause * 2)
            except Permanent as e:
                logs.warning("rollout: could not record a history entry", cluster=ref.path, error=str(e))
                return

    # -- the CLI's actions ------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        doc, _ = _rollout_doc(self.ctx.store)
        return doc

    def resume(self) -> dict[str, Any]:
        """HALTED -> RUNNING; the cluster that failed its gate is tried again in its wave."""
        doc, update_time = _rollout_doc(self.ctx.store)
        if doc is None or doc.get("state") != waves.HALTED:
            raise Rejected("nothing to resume", kind=RejectionKind.NOT_HALTED,
                           problems=[_problem(f"the rollout is {doc.get('state') if doc else 'absent'}, "
                                              "only a HALTED rollout can be resumed")])
        cid = doc.get("haltedCluster")
        if cid in (doc.get("clusters") or {}):
            doc["clusters"][cid].update(state=waves.WAITING, since=_now(), message="resumed")
        doc.update(state=waves.RUNNING, reason="", haltedCluster="", resumedAt=_now())
        self._save(doc, update_time)
        return doc

    def abort(self) -> dict[str, Any]:
        """Stop the rollout: every cluster goes back to the last good bundle (reconcile applies it)."""
        doc, update_time = _rollout_doc(self.ctx.store)
        if doc is None or doc.get("state") not in (waves.RUNNING, waves.HALTED):
            raise Rejected("nothing to abort", kind=RejectionKind.NOT_RUNNING,
                           problems=[_problem(f"the rollout is {doc.get('state') if doc else 'absent'}, "
                                              "only a RUNNING or HALTED rollout can be aborted")])
        doc.update(state=waves.ABORTED, reason=f"aborted; clusters return to {doc['previous'].get('version')}",
                   finishedAt=_now())
        self._save(doc, update_time)
        return doc


def health_gate(ctx: Context, ref: ClusterRef, kube: Any, bundle: Any) -> tuple[str, str]:
    """(pass | fail | pending, what was seen) for one cluster on `bundle`."""
    s = ctx.settings
    try:
        kube.wait_established(bundle.crd_names, timeout=s.crd_poll_seconds, poll=s.crd_poll_seconds)
    except Transient as e:
        return PENDING, str(e)
    ns, name = bundle.daemonset
    ds = next(o for o in bundle.objects if o["kind"] == "DaemonSet")
    selector = ",".join(f"{k}={v}" for k, v in sorted(((ds["spec"].get("selector") or {})
                                                        .get("matchLabels") or {}).items()))
    for pod in kube.list_pods(selector, namespace=ns):
        st = pod.get("status") or {}
        for c in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            waiting = (c.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return FAIL, (f"DaemonSet pod {pod['metadata']['name']} on {(pod.get('spec') or {}).get('nodeName')}: "
                              f"{c.get('name')}: {waiting['reason']}: {waiting.get('message', '')}")
    live = kube.get("apps/v1", "DaemonSet", ns, name) or {}
    images = sorted(c.get("image", "") for c in _containers(live))
    if images != sorted(c.get("image", "") for c in _containers(ds)):
        return PENDING, f"DaemonSet {ns}/{name} does not run the target images yet"
    rollout = kube.rollout_of(live)
    if not rollout.complete:
        return PENDING, f"DaemonSet {ns}/{name}: {rollout.ready}/{rollout.desired} ready, {rollout.updated} updated"
    rec = ctx.store.get_cluster(ref)
    pool = rec.workflow.node_pool.name if rec and rec.workflow.node_pool else None
    live = sorted((n.namespace, n.name, n.range) for n in ctx.store.list_nads(ref, fields=("state", "range"))
                  if n.state in decisions.NAD_LIVE and n.range)
    if not live:
        return PASS, f"DaemonSet rolled out ({rollout.ready}/{rollout.desired}); no NAD to verify net1 with"
    nad_namespace, nad_name, nad_range = live[0]
    timeout = max(5.0, s.rollout_wait_seconds)
    event_id = f"rollout-gate~{ref.doc_id}"  # names nothing written: the marker has no history entry
    mark_verifying(ctx.store, ref, nad_namespace, nad_name, event_id=event_id, timeout=timeout)
    result = run_verification(kube, nad_namespace, nad_name, nad_range, pool=pool, cluster=ref.path,
                              timeout=timeout)
    if result.left is None:  # the marker goes with the pod; one left behind keeps it for reconcile's sweep
        clear_verifying(ctx.store, ref, nad_namespace, nad_name, event_id=event_id)
    where = f"verify pod on {nad_namespace}/{nad_name}: {result.detail}"
    return (PASS if result.ok else FAIL), (f"DaemonSet rolled out ({rollout.ready}/{rollout.desired}); {where}")


def _containers(ds: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _apply(kube: Any, bundle: Any, settings: Any) -> None:
    crds = [o for o in bundle.objects if o["kind"] == "CustomResourceDefinition"]
    kube.apply(crds)
    kube.wait_established(bundle.crd_names, timeout=settings.crd_timeout_seconds, poll=settings.crd_poll_seconds)
    kube.apply([o for o in bundle.objects if o["kind"] != "CustomResourceDefinition"])


def _rollout_doc(store: StorePort) -> tuple[dict[str, Any] | None, object]:
    """`rollouts/current` as this flow edits it: a nested map (fields: docs/FIRESTORE.md,
    `shared.core.waves`), and the update time its next write is preconditioned on."""
    doc, update_time = store.get_rollout()
    edited: dict[str, Any] | None = dict(doc) if doc is not None else None
    return edited, update_time


def _summary(doc: Mapping[str, Any]) -> str:
    states: dict[str, int] = {}
    for entry in (doc.get("clusters") or {}).values():
        states[entry.get("state", "")] = states.get(entry.get("state", ""), 0) + 1
    planned = doc.get("waves") or []
    where = f"wave {doc.get('wave', 0) + 1}/{len(planned)}" if planned else "no waves"
    return f"{where}; " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "no clusters")


def _problem(message: str) -> Any:
    from shared.core.errors import Problem

    return Problem("rollout", message)
