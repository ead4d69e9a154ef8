"""Bundle rollouts: a new bundle reaches the fleet in waves behind a health gate, with rollback.

The bundle's options (images, log level) come from the policy (settings, overridden by the
`config/policy` document). The scheduled tick calls `RolloutFlow.tick`: when the policy's bundle
differs from the one the fleet last finished on, it plans waves (`shared.core.waves.plan`) over
the READY clusters and keeps the plan in `rollouts/current` (a `FleetRollout`, changed with
`dataclasses.replace` and written whole over the version read). Each tick then drives the current
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
from shared.core.records import BundleOptions, FleetRollout, RolloutCluster
from shared.core.refs import ClusterRef
from shared.flows.context import Context, bundle_of
from shared.flows.verify import clear_verifying, mark_verifying, run_verification
from shared.ports import AlreadyHandled

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
        target = self._versioned(policy.bundle_spec())
        rollout, update_time = self.ctx.store.get_rollout()
        if rollout is None or rollout.target.version != target.version:
            rollout, update_time = self._start(event_id, rollout, update_time, policy, target, labels or {})
        if rollout.state == waves.RUNNING:
            rollout = self._drive(event_id, rollout, update_time)
        return f"rollout {rollout.state}: {rollout.reason or _summary(rollout)}"

    def _versioned(self, spec: BundleOptions) -> BundleOptions:
        bundle = bundle_of(spec, allow_unpinned=self.ctx.settings.allow_unpinned_images)
        return BundleOptions(version=bundle.version, multus_image=bundle.multus_image,
                             whereabouts_image=bundle.whereabouts_image, log_level=bundle.log_level)

    def _start(self, event_id: str, was: FleetRollout | None, update_time: object, policy: Policy,
               target: BundleOptions, labels: Mapping[str, Mapping[str, str]]) -> tuple[FleetRollout, object]:
        if was is None:  # the first rollout starts from the bundle the deployment installs
            previous = self._versioned(Policy.from_settings(self.ctx.settings).bundle_spec())
        elif was.state == waves.COMPLETED:
            previous = was.target
        else:  # aborted, halted or superseded: the last good bundle
            previous = was.previous if was.previous.given else was.target
        now = _now()
        base = FleetRollout(state=waves.COMPLETED, target=target, previous=previous, started_at=now, updated_at=now,
                            started_by=event_id)
        if previous.version == target.version:
            new = replace(base, finished_at=now)
        else:
            ready = self.ctx.store.list_clusters(state=decisions.READY)
            size = waves.WaveSize.parse(policy.rollout_wave_size, field="rolloutWaveSize")
            plan = waves.plan([(r.ref.doc_id, labels.get(r.ref.doc_id) or {}) for r in ready],
                              canary=policy.rollout_canary, size=size)
            wave_of = {cid: i for i, wave in enumerate(plan) for cid in wave.clusters}
            clusters = {r.ref.doc_id: RolloutCluster(r.ref.path, wave_of[r.ref.doc_id], waves.WAITING, since=now)
                        for r in ready}
            new = replace(base, state=waves.RUNNING if plan else waves.COMPLETED, waves=plan, clusters=clusters,
                          wave_size=str(size), canary=policy.rollout_canary, finished_at="" if plan else now)
        update_time = self.ctx.store.put_rollout(new, update_time)
        logs.info(f"rollout started: {previous.version} -> {target.version} "
                  f"({len(new.waves)} wave(s))", eventId=event_id)
        self.ctx.remember_rollout(new)
        return new, update_time

    def _drive(self, event_id: str, rollout: FleetRollout, update_time: object) -> FleetRollout:
        """Drive the current wave until it waits on a gate, halts or the rollout completes."""
        s = self.ctx.settings
        deadline = time.monotonic() + max(1.0, s.rollout_wait_seconds)
        while rollout.state == waves.RUNNING:
            wave = rollout.waves[rollout.wave]
            starting = []
            for cid in wave.clusters:
                rollout, claimed = self._claim(rollout, cid)
                if claimed:
                    starting.append(cid)
            if starting:  # recorded first: from now on every other path gives these clusters the target
                rollout, update_time = self._save(rollout, update_time)
            for cid in starting:
                rollout = self._update(event_id, rollout, cid)
            for cid in wave.clusters:
                entry = rollout.clusters.get(cid)
                if entry is None or entry.state != waves.UPDATING:
                    continue
                rollout, failed = self._gate(event_id, rollout, cid)
                if failed is not None:
                    # Halt and record first: from now on every other path gives this cluster the
                    # previous bundle; then put it back.
                    rollout = replace(rollout.with_cluster(cid, replace(entry, state=waves.ROLLED_BACK, since=_now(),
                                                                        message=failed)),
                                      state=waves.HALTED, halted_cluster=cid,
                                      reason=f"{entry.path} failed the health gate: {failed}")
                    rollout, update_time = self._save(rollout, update_time)
                    rollout = self._rollback(event_id, rollout, cid, failed)
                    break
            if rollout.state == waves.RUNNING and all(_wave_done(rollout, c) for c in wave.clusters):
                if rollout.wave + 1 >= len(rollout.waves):
                    rollout = replace(rollout, state=waves.COMPLETED, finished_at=_now())
                else:
                    rollout = replace(rollout, wave=rollout.wave + 1)
                rollout, update_time = self._save(rollout, update_time)
                continue
            rollout, update_time = self._save(rollout, update_time)
            if time.monotonic() >= deadline:
                break
            time.sleep(max(0.05, s.crd_poll_seconds))
        self.ctx.remember_rollout(rollout)
        return rollout

    def _save(self, rollout: FleetRollout, update_time: object) -> tuple[FleetRollout, object]:
        """Write the rollout over the version read (`Transient` if another writer came in between)."""
        rollout = replace(rollout, updated_at=_now())
        return rollout, self.ctx.store.put_rollout(rollout, update_time)

    # -- one cluster ------------------------------------------------------------------------
    def _bundle(self, options: BundleOptions) -> Any:
        return bundle_of(options, allow_unpinned=self.ctx.settings.allow_unpinned_images)

    def _claim(self, rollout: FleetRollout, cid: str) -> tuple[FleetRollout, bool]:
        """WAITING -> UPDATING for a READY cluster of the current wave (SKIPPED if it is not READY)."""
        entry = rollout.clusters.get(cid)
        if entry is None or entry.state != waves.WAITING:
            return rollout, False
        rec = self.ctx.store.get_cluster(ClusterRef.parse(entry.path))
        if rec is None or rec.state != decisions.READY:
            return rollout.with_cluster(cid, replace(entry, state=waves.SKIPPED, since=_now(),
                                                     message=f"not READY ({rec.state if rec else 'gone'})")), False
        return rollout.with_cluster(cid, replace(entry, state=waves.UPDATING, since=_now(), started=time.time(),
                                                 message="applying the target bundle")), True

    def _update(self, event_id: str, rollout: FleetRollout, cid: str) -> FleetRollout:
        """Apply the target bundle to a cluster the rollout just moved to UPDATING."""
        entry = rollout.clusters[cid]
        ref = ClusterRef.parse(entry.path)
        bundle = self._bundle(rollout.target)
        try:
            kube = self.ctx.kube_for(ref, self.ctx.gke.get_cluster(ref))
            _apply(kube, bundle, self.ctx.settings)
        except (Transient, Permanent, Rejected) as e:
            # Drift repair applies the target too (the cluster is UPDATING); the gate waits for it.
            return rollout.with_cluster(cid, replace(entry, message=f"could not apply the bundle yet: {e}"))
        wave = rollout.waves[entry.wave].name if 0 <= entry.wave < len(rollout.waves) else f"wave {entry.wave}"
        self._record(ref, f"{event_id}~rollout~{cid}~update", "rollout", "ok",
                     f"rollout: bundle {rollout.previous.version} -> {bundle.version} "
                     f"({wave}); waiting for the health gate",
                     bundle.version)
        return rollout.with_cluster(cid, replace(entry, message=f"bundle {bundle.version} applied (wave {entry.wave})"))

    def _gate(self, event_id: str, rollout: FleetRollout, cid: str) -> tuple[FleetRollout, str | None]:
        """Check one UPDATING cluster: PASSED (recorded), still pending, or why it failed."""
        entry = rollout.clusters[cid]
        ref = ClusterRef.parse(entry.path)
        bundle = self._bundle(rollout.target)
        try:
            kube = self.ctx.kube_for(ref)
            verdict, message = health_gate(self.ctx, ref, kube, bundle)
        except (Transient, Permanent, Rejected) as e:
            verdict, message = PENDING, f"health gate could not run: {e}"
        waited = time.time() - (entry.started or time.time())
        if verdict == PENDING and waited >= self.ctx.settings.rollout_gate_seconds:
            verdict, message = FAIL, f"health gate not passed within {self.ctx.settings.rollout_gate_seconds:g}s: " \
                                     f"{message}"
        entry = replace(entry, message=message)
        if verdict == PASS:
            entry = replace(entry, state=waves.PASSED, since=_now())
            self._record(ref, f"{event_id}~rollout~{cid}~pass", "rollout-gate", "ok",
                         f"rollout: health gate passed for bundle {bundle.version}: {message}", None)
        return rollout.with_cluster(cid, entry), (message if verdict == FAIL else None)

    def _rollback(self, event_id: str, rollout: FleetRollout, cid: str, why: str) -> FleetRollout:
        """Put a cluster that failed its gate back on the previous bundle (the rollout is HALTED)."""
        entry = rollout.clusters[cid]
        ref = ClusterRef.parse(entry.path)
        previous = self._bundle(rollout.previous)
        try:
            _apply(self.ctx.kube_for(ref), previous, self.ctx.settings)
            done = f"rolled back to {previous.version}"
        except (Transient, Permanent, Rejected) as e:
            done = f"rollback to {previous.version} failed: {e}; reconcile retries it"
        self._record(ref, f"{event_id}~rollout~{cid}~rollback", "rollback", "failed",
                     f"rollout halted: health gate failed for bundle {rollout.target.version}: {why}; {done}",
                     previous.version)
        return replace(rollout.with_cluster(cid, replace(entry, message=f"{why}; {done}")),
                       reason=f"{entry.path} failed the health gate: {why}; {done}")

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
    def status(self) -> FleetRollout | None:
        rollout, _ = self.ctx.store.get_rollout()
        return rollout

    def resume(self) -> FleetRollout:
        """HALTED -> RUNNING; the cluster that failed its gate is tried again in its wave."""
        rollout, update_time = self.ctx.store.get_rollout()
        if rollout is None or rollout.state != waves.HALTED:
            raise Rejected("nothing to resume", kind=RejectionKind.NOT_HALTED,
                           problems=[_problem(f"the rollout is {_state_word(rollout)}, "
                                              "only a HALTED rollout can be resumed")])
        entry = rollout.clusters.get(rollout.halted_cluster)
        if entry is not None:
            rollout = rollout.with_cluster(rollout.halted_cluster,
                                           replace(entry, state=waves.WAITING, since=_now(), message="resumed"))
        rollout, _ = self._save(replace(rollout, state=waves.RUNNING, reason="", halted_cluster="",
                                        resumed_at=_now()), update_time)
        return rollout

    def abort(self) -> FleetRollout:
        """Stop the rollout: every cluster goes back to the last good bundle (reconcile applies it)."""
        rollout, update_time = self.ctx.store.get_rollout()
        if rollout is None or rollout.state not in (waves.RUNNING, waves.HALTED):
            raise Rejected("nothing to abort", kind=RejectionKind.NOT_RUNNING,
                           problems=[_problem(f"the rollout is {_state_word(rollout)}, "
                                              "only a RUNNING or HALTED rollout can be aborted")])
        rollout, _ = self._save(replace(rollout, state=waves.ABORTED, finished_at=_now(),
                                        reason=f"aborted; clusters return to {rollout.previous.version}"),
                                update_time)
        return rollout


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


def _wave_done(rollout: FleetRollout, cid: str) -> bool:
    """Whether a cluster of the current wave lets the next wave start: PASSED or SKIPPED (or not
    in the rollout's clusters at all: a hand-edited document holds nothing back)."""
    entry = rollout.clusters.get(cid)
    return entry is None or entry.state in (waves.PASSED, waves.SKIPPED)


def _state_word(rollout: FleetRollout | None) -> str:
    return "absent" if rollout is None else str(rollout.state)


def _summary(rollout: FleetRollout) -> str:
    states: dict[str, int] = {}
    for entry in rollout.clusters.values():
        word = str(entry.state or "")
        states[word] = states.get(word, 0) + 1
    where = f"wave {rollout.wave + 1}/{len(rollout.waves)}" if rollout.waves else "no waves"
    return f"{where}; " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "no clusters")


def _problem(message: str) -> Any:
    from shared.core.errors import Problem

    return Problem("rollout", message)
