"""Reconcile's NAD part: the records and the cluster's managed NADs, compared both ways.

- A record whose applied part is not on the cluster (deleted, or edited) is applied again from
  the config it records, byte for byte, once that config has passed the request path's validation
  again (`nad.request_of_config`, and the namespace policy): a record that fails is not applied,
  and says why (`lastError`, a `reapply-refused` history entry).
- A managed object (label `app.kubernetes.io/managed-by: multus-provisioner`) without a record,
  or whose record holds nothing applied, is adopted into a record when it conflicts with nothing
  (its range overlaps nothing on its master), or else recorded as an ORPHANED record, which the
  overlap checks count like any NAD on the cluster and `status`/`history` show. With the
  policy's `pruneOrphans` an orphan is deleted from the cluster, and its config stays in the
  record (`pruned`): user data is never deleted silently.
- Verify pods whose check is over (their deadline annotation has passed) are deleted: each holds
  a Whereabouts address. They are listed only when a record says one can exist (see
  `shared.flows.verify`), so a cluster without verifications costs no request for them.
Each part is a plan first (read-only: an empty plan means in sync, and reconcile claims nothing),
then carried out under the cluster's claim.
Kept apart from `reconcile.py` so that the cluster part and the NAD part can change separately.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.core import decisions, logs
from shared.core.errors import NotOurs, Permanent, Problem, Transient
from shared.core.records import Adoption, AppliedNad, NadRecord, OrphanNote, PrunedNote
from shared.core.refs import ClusterRef
from shared.flows.context import Context
from shared.flows.verify import (
    NETWORKS_ANNOTATION,
    VERIFY_SELECTOR,
    VERIFY_UNTIL_ANNOTATION,
    clear_verifying,
    may_have_verify_pod,
)


class FixKind(StrEnum):
    """What reconcile does about one NAD."""

    ORPHAN_GONE = "orphan-gone"  # an ORPHANED record whose object left the cluster: closed
    REAPPLY = "reapply"  # a managed NAD deleted or edited on the cluster: applied again
    REFUSE = "refuse"  # a record whose stored config fails validation: not re-applied, said so
    ADOPT = "adopt"  # a managed object without a record that conflicts with nothing: recorded
    PRUNE = "prune"  # an orphan that conflicts (or cannot be read), with pruneOrphans: deleted
    REPORT = "report"  # an orphan that conflicts: recorded ORPHANED


@dataclass(frozen=True)
class NadFix:
    """One thing reconcile has to do about a NAD, decided on the records and objects as read.

    The plan (`plan_nads`) reads nothing and writes nothing: an empty plan is what lets an
    in-sync reconcile return without a claim; `repair_nads` carries a plan out under the claim."""

    kind: FixKind
    key: tuple[str, str]
    doc: NadRecord | None = None
    live: Mapping[str, Any] | None = None
    obj: Mapping[str, Any] | None = None  # reapply: what to apply
    found: tuple[str, str] | None = None  # an orphan's (master, range) when readable
    why: str = ""  # an orphan's conflict


def plan_nads(policy: Any, ref: ClusterRef, records: Sequence[NadRecord],
              objects: list[dict[str, Any]]) -> list[NadFix]:
    """What would bring records and cluster in line (nothing when they agree)."""
    on_cluster = {decisions.nad_object_key(o): o for o in objects}
    by_key = {(rec.namespace, rec.name): rec for rec in records}
    plan: list[NadFix] = []
    for key, doc in sorted(by_key.items()):
        fix = _plan_record(ref, key, doc, on_cluster.get(key), policy)
        if fix is not None:
            plan.append(fix)
    for key, obj in sorted(on_cluster.items()):
        found = by_key.get(key)
        state = found.state if found is not None else None
        if found is not None and state != decisions.NAD_ORPHANED and (
                decisions.applied_part(found) is not None or state in decisions.NAD_IN_FLIGHT
                or state == decisions.NAD_PENDING):
            continue  # recorded, or a request is on its way to it
        others = decisions.footprints([x for k, x in by_key.items() if k != key],
                              [o for k, o in on_cluster.items() if k != key])
        fix = _plan_orphan(policy, key, obj, found, others)
        if fix is not None:
            plan.append(fix)
    return plan


def repair_nads(ctx: Context, ref: ClusterRef, kube: Any, event_id: str, plan: list[NadFix]) -> list[str]:
    """Carry out `plan` (under the cluster's claim); returns what was done, one phrase each."""
    fixes: list[str] = []
    for fix in plan:
        done: str | None
        if fix.kind == FixKind.REFUSE:
            done = _refuse_record(ctx, ref, fix, event_id)
        elif fix.kind in (FixKind.ORPHAN_GONE, FixKind.REAPPLY):
            done = _repair_record(ctx, ref, kube, fix, event_id)
        else:
            done = _adopt_or_report(ctx, ref, kube, fix, event_id)
        if done:
            fixes.append(done)
    return fixes


def _plan_record(ref: ClusterRef, key: tuple[str, str], doc: NadRecord,
                 live: Mapping[str, Any] | None, policy: Any = None) -> NadFix | None:
    from shared.core import nad as nadlib
    from shared.core.errors import Rejected

    ns, name = key
    part = decisions.applied_part(doc)
    state = doc.state
    if part is None or state in decisions.NAD_IN_FLIGHT or state == decisions.NAD_PENDING:
        return None
    if state == decisions.NAD_ORPHANED:
        # An orphan is not ours to restore: once it is gone, its record says so.
        return None if live is not None else NadFix(FixKind.ORPHAN_GONE, key, doc, live)
    config = doc.config
    if live is not None and config and (live.get("spec") or {}).get("config") == config:
        return None
    # A record is a Firestore document: what it holds is validated again, as a request is, before
    # anything of it reaches the cluster (the namespace policy, then the config itself).
    try:
        why = policy.namespace_problem(ns) if policy is not None else None
        if why:
            raise Rejected("namespace refused", [Problem("namespace", why)])
        if config:
            nadlib.request_of_config(ref.path, ns, name, config)
            obj = nadlib.nad_object(ref.path, ns, name, config, part.request_id)
        elif doc.request is not None:
            obj = nadlib.render_nad(nadlib.parse_request(dict(doc.request)), part.range)
        else:
            return None
    except Rejected as e:
        message = (f"{ns}/{name}: not re-applied: the stored record failed validation: "
                   + "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in e.problems or ())
                   or e.message)
        if doc.last_error == message:
            return None  # refused and recorded already; nothing changed
        return NadFix(FixKind.REFUSE, key, doc, live, why=message)
    return NadFix(FixKind.REAPPLY, key, doc, live, obj=obj)


def _repair_record(ctx: Context, ref: ClusterRef, kube: Any, fix: NadFix, event_id: str) -> str | None:
    ns, name = fix.key
    if fix.kind == FixKind.ORPHAN_GONE:
        message = f"{ns}/{name}: the orphan is no longer on the cluster"
        ctx.store.put_nad(ref, ns, name, event_id=event_id, step="orphan-gone",
                          change=lambda cur: replace(cur, state=decisions.NAD_DELETED, message=message, applied=None,
                                                     orphan=None),
                          expect_states=(decisions.NAD_ORPHANED,), ledger_key=f"{event_id}~orphan-gone~{ns}~{name}")
        return f"orphan NAD {ns}/{name} gone"
    fresh = ctx.store.get_nad(ref, ns, name)
    if (fresh.updated_at if fresh else None) != (fix.doc.updated_at if fix.doc else None):
        return None  # a request changed it since the list was read: it is its worker's to apply (next run checks)
    try:
        kube.apply_nad(fix.obj)
    except NotOurs as e:  # someone else's object took the name: never taken over (issue 24)
        logs.warning("a recorded NAD's name is held by an object the controller does not own; left alone",
                     cluster=ref.path, nad=f"{ns}/{name}", owner=e.owner)
        return None
    return f"{'re-created' if fix.live is None else 'restored'} NAD {ns}/{name}"


def _refuse_record(ctx: Context, ref: ClusterRef, fix: NadFix, event_id: str) -> str:
    """Record, on the NAD and in the history, why its stored config was not re-applied."""
    ns, name = fix.key
    logs.error("stored NAD record refused", cluster=ref.path, nad=f"{ns}/{name}", error=fix.why)
    ctx.store.put_nad(ref, ns, name, event_id=event_id, step="reapply-refused",
                      change=lambda cur: replace(cur, last_error=fix.why, message=fix.why), outcome="failed",
                      expect_states=(fix.doc.state if fix.doc else None,),
                      ledger_key=f"{event_id}~reapply-refused~{ns}~{name}")
    return f"refused to re-apply NAD {ns}/{name}"


def _plan_orphan(policy: Any, key: tuple[str, str], obj: Mapping[str, Any], doc: NadRecord | None,
                 others: list[dict[str, Any]]) -> NadFix | None:
    from shared.core import nad as nadlib

    ns, name = key
    found = nadlib.config_range(obj)
    if found is None:
        why = "its spec.config has no Whereabouts range the controller can read"
        clash: list[Mapping[str, Any]] = []
    else:
        clash = decisions.conflicts(key=f"{ns}~{name}", master=found[0], cidr=found[1], others=others)
        why = "; ".join(f"{found[1]} overlaps {o.get('namespace')}/{o.get('name')} ({o.get('range')}) "
                        f"on master {found[0]}" for o in clash)
    if found is not None and not clash:
        return NadFix(FixKind.ADOPT, key, doc, obj, found=found, why=why)
    if policy.prune_orphans:
        return NadFix(FixKind.PRUNE, key, doc, obj, found=found, why=why)
    if doc is not None and doc.state == decisions.NAD_ORPHANED and doc.orphan is not None \
            and doc.orphan.reason == why:
        return None  # reported already, nothing changed
    return NadFix(FixKind.REPORT, key, doc, obj, found=found, why=why)


def _adopt_or_report(ctx: Context, ref: ClusterRef, kube: Any, fix: NadFix, event_id: str) -> str | None:
    from shared.core import nad as nadlib

    store = ctx.store
    ns, name = fix.key
    obj, doc, found, why = fix.live or {}, fix.doc, fix.found, fix.why
    config = str((obj.get("spec") or {}).get("config") or "")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    request_id = annotations.get(nadlib.REQUEST_ID_ANNOTATION)
    now = datetime.now(UTC)
    expect = (doc.state if doc else None,)
    what = f"{ns}/{name}" + (f" ({found[1]} on master {found[0]})" if found else "")
    applied = (AppliedNad(found[1], found[0], nadlib.config_digest(config), request_id, None, decisions.NAD_APPLIED,
                          now) if found else None)

    def found_on_cluster(cur: NadRecord) -> NadRecord:
        """The object as found: its range and master (when readable), config and request id."""
        out = replace(cur, applied=applied, config=config, request_id=request_id)
        return replace(out, range=found[1], master=found[0]) if found else out

    if fix.kind == FixKind.ADOPT:
        message = (f"orphan adopted: {what} was on the cluster without a record and conflicts with nothing; "
                   "recorded as applied")
        store.put_nad(ref, ns, name, event_id=event_id, step="adopt-nad",
                      change=lambda cur: replace(found_on_cluster(cur), state=decisions.NAD_APPLIED, message=message,
                                                 adopted=Adoption(now, "reconcile"), orphan=None, reasons=None,
                                                 last_error=None),
                      expect_states=expect, ledger_key=f"{event_id}~adopt~{ns}~{name}")
        return f"adopted orphan NAD {ns}/{name}"
    if fix.kind == FixKind.PRUNE:
        try:
            kube.delete_nad(ns, name, cluster=ref.path)
        except (Transient, Permanent) as e:
            logs.warning("could not prune an orphan NAD", cluster=ref.path, nad=f"{ns}/{name}", error=str(e))
            return None
        message = (f"orphan pruned: {what} was on the cluster without a record and {why}; deleted because the "
                   "policy prunes orphans; its config is kept in this record (`pruned`)")

        def pruned(cur: NadRecord) -> NadRecord:
            out = replace(cur, state=decisions.NAD_DELETED, message=message, applied=None, orphan=None,
                          pruned=PrunedNote(config, now, why))
            return replace(out, range=found[1], master=found[0]) if found else out

        store.put_nad(ref, ns, name, event_id=event_id, step="prune-orphan", change=pruned,
                      expect_states=expect, ledger_key=f"{event_id}~prune~{ns}~{name}")
        return f"pruned orphan NAD {ns}/{name}"
    message = (f"orphan reported: {what} is on the cluster without a record and {why}; left in place "
               "(set the policy's pruneOrphans to delete it)")
    store.put_nad(ref, ns, name, event_id=event_id, step="report-orphan", outcome="skipped",
                  change=lambda cur: replace(found_on_cluster(cur), state=decisions.NAD_ORPHANED, message=message,
                                             orphan=OrphanNote(why, now)),
                  expect_states=expect, ledger_key=f"{event_id}~orphan~{ns}~{name}")
    return f"reported orphan NAD {ns}/{name}"


@dataclass(frozen=True)
class VerifySweep:
    """Leftover verify pods and the records whose marker can go, decided on one LIST of the
    verify pods, made only when a record says a pod can exist (`verify.may_have_verify_pod`)."""

    over: tuple[dict[str, Any], ...] = ()  # pods whose check is over: to delete
    markers: tuple[tuple[str, str], ...] = ()  # records whose marker is done: no pod of theirs runs

    @property
    def needed(self) -> bool:
        return bool(self.over or self.markers)


def plan_verify_sweep(kube: Any, records: Sequence[NadRecord], *, now: float | None = None) -> VerifySweep:
    """Reads the verify pods only when some record says one can exist; otherwise no request."""
    if not any(may_have_verify_pod(rec) for rec in records):
        return VerifySweep()
    now = time.time() if now is None else now
    over, running, live_pods = [], set(), set()
    for pod in kube.list_pods(VERIFY_SELECTOR):
        md = pod.get("metadata") or {}
        annotations = md.get("annotations") or {}
        try:
            done = float(str(annotations.get(VERIFY_UNTIL_ANNOTATION))) < now  # None or junk: ValueError
        except (TypeError, ValueError):
            done = True  # no deadline (an older controller's pod): its check is long over
        if done:
            over.append(pod)
        else:
            running.add(str(annotations.get(NETWORKS_ANNOTATION) or ""))
            live_pods.add((md.get("namespace") or "default", md.get("name")))
    markers = []
    for rec in records:
        marker = rec.verify_pod
        if marker is None or rec.label in running:
            continue  # no marker, or a check of this NAD is still running
        if marker.pod:  # the pod a verification left: done once it is gone (or deleted now)
            finished = (marker.namespace or rec.namespace, marker.pod) not in live_pods
        else:  # a verification that started: done once its check is over (a marker without one: over)
            finished = marker.until < now
        if finished:
            markers.append((rec.namespace, rec.name))
    return VerifySweep(tuple(over), tuple(markers))


def sweep_verify_pods(ctx: Context, ref: ClusterRef, kube: Any, sweep: VerifySweep, event_id: str) -> list[str]:
    """Delete verify pods whose check is over (a lingering one holds a Whereabouts address), then
    drop the markers of records none of whose pods is left (a pod that resisted keeps its marker)."""
    fixes, kept = [], set()
    for pod in sweep.over:
        md = pod.get("metadata") or {}
        try:
            kube.delete_pod(md.get("namespace") or "default", md.get("name"))
        except (Transient, Permanent) as e:
            logs.warning("could not delete a leftover verify pod", cluster=ref.path, error=str(e))
            kept.add(str((md.get("annotations") or {}).get(NETWORKS_ANNOTATION) or ""))
            continue
        fixes.append(f"removed leftover verify pod {md.get('namespace')}/{md.get('name')}")
    for ns, name in sweep.markers:
        if f"{ns}/{name}" not in kept:
            clear_verifying(ctx.store, ref, ns, name, event_id=event_id)
    return fixes
