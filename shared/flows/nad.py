"""The NAD flow: a request is decided, applied (or queued, or refused) and recorded.

A NAD request is checked by the pure core (`shared.core.decisions`) against the cluster's state,
the namespace policy and the node pool's secondary range; the checks that depend on the other
NADs of the cluster (overlap, limit) are made after this request has claimed its document, so
two concurrent requests cannot both take overlapping ranges (see `_apply_nad`). The same path
applies the NADs that waited for their cluster (`apply_pending`, called by the cluster flow and
by reconcile).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from shared.core import decisions, logs
from shared.core.errors import NotOurs, Permanent, Problem, Rejected, RejectionKind, Transient
from shared.core.nad import config_digest, request_digest
from shared.core.observed import Listed
from shared.core.policy import Policy
from shared.core.records import (
    AppliedNad,
    LastRequest,
    LedgerNote,
    NadClaim,
    NadRecord,
    NadState,
    VerificationNote,
    VerifyPodMarker,
    nad_state,
)
from shared.core.refs import ClusterRef
from shared.core.requesters import DEFAULT_GRANTS, Grant, Requester, authorize, namespace_quota_problem, quota_problems
from shared.flows.context import Context, Outcome
from shared.flows.verify import (
    VERIFY_WINDOW_SECONDS,
    Verification,
    VerifyFlow,
    marker_of,
    may_have_verify_pod,
    verify_deadline,
)
from shared.ports import NadVersion

A = TypeVar("A")
B = TypeVar("B")

# What the overlap and limit checks read of the other NADs (`NadRecord` attributes; namespace and
# name are the id): of the applied part and of a claim in flight only their master and range
# (`footprints`), not their digests, ids and times.
NAD_DECISION_FIELDS = ("state", "master", "range", "claim_order", "claim_refused", "applied.range", "applied.master",
                       "claim.range", "claim.master")
# A claim is abandoned, not slow, once it is this many leases old (see `apply_pending`).
STALE_LEASES = 3


class NadFlow:
    def __init__(self, ctx: Context, verifier: VerifyFlow) -> None:
        self.ctx = ctx
        self.verifier = verifier

    def handle_nad(self, ev: Any) -> Outcome:
        """A validated NAD request: decide, apply (or wait, or reject), record."""
        req = ev.request
        ref: ClusterRef = req.cluster
        requester = self._admit(ev)
        store = self.ctx.store
        ledger = _nad_ledger_key(ev.event_id, req)
        # One read for the cluster, the ledger and this NAD's document: the claim decides on the
        # document as read here, with its update time as the precondition (no read of its own).
        rec, seen, known = store.get_cluster_and_nad_unless_seen(ref, ledger, req.namespace, req.name)
        if seen:
            return self._duplicate(ref, req, ev.event_id, ledger)
        cluster_state = rec.state if rec else None
        out = self._decide_and_carry_out(ref, rec, req, ev.event_id, ledger, expect=None, origin=ev.event_id,
                                         known=known, requester=requester)
        if out.state == decisions.NAD_PENDING and out.status == "pending":
            # Lost wake-up guard: the cluster may have become READY (and scanned its PENDING NADs)
            # between our read of it and our write. Look once more; the compare-and-set on PENDING
            # makes sure only one of us and that scan applies the NAD.
            rec = store.get_cluster(ref)
            if rec is not None and rec.state == decisions.READY and cluster_state != decisions.READY:
                return self._decide_and_carry_out(ref, rec, req, ev.event_id, f"{ledger}~late",
                                                  expect=(decisions.NAD_PENDING,), origin=ev.event_id,
                                                  requester=requester)
        return out

    def _admit(self, ev: Any) -> Requester | None:
        """Before anything is read or written under the cluster: the request's project is one the
        controller manages (else refused at top level, so invented clusters leave nothing behind),
        and its ID token verifies (else refused on the cluster's rejections; the NAD's record is
        not touched: an unverified request may not even mark it). None: verification is off."""
        ref: ClusterRef = ev.request.cluster
        why = self.ctx.policy().project_problem(ref.project)
        if why:
            raise Rejected("request refused", [Problem("cluster", why)], kind=RejectionKind.UNKNOWN_PROJECT,
                           event_id=ev.event_id)
        identity = self.ctx.identity
        if identity is None:
            return None
        try:
            requester: Requester = identity.verify(getattr(ev, "token", None))
        except Rejected as e:
            e.event_id, e.cluster = ev.event_id, ref
            raise
        return requester

    def _duplicate(self, ref: ClusterRef, req: Any, event_id: str, ledger: str) -> Outcome:
        """A request whose ledger key was handled before: a duplicate, unless its request_id was
        first used with another body (an idempotency key names one request, not a NAD)."""
        store = self.ctx.store
        if req.request_id:
            entry = store.get_ledger(ledger)
            first = entry.note.digest if entry is not None else None
            if first and first != request_digest(req):
                why = (f"request_id {req.request_id!r} was already used for a different request on this cluster "
                       f"(digest {first[:19]}, this one {request_digest(req)[:19]}); send a new request_id")
                store.record_rejection(event_id=event_id, cluster=ref, reason="request_id reused with a different body",
                                       problems=[Problem("request_id", why)],
                                       kind=RejectionKind.REQUEST_ID_REUSED,
                                       ledger_key=f"{event_id}~request-id-reused")
                return Outcome("rejected", why, ref.path, None)
        return Outcome("duplicate", "request already handled", ref.path)

    def _decide_and_carry_out(self, ref: ClusterRef, rec: Any, req: Any, event_id: str, ledger: str, *,
                              expect: tuple[str | None, ...] | None, expect_claim: str | None = None,
                              origin: str | None = None, known: NadVersion | None = None,
                              requester: Requester | None = None) -> Outcome:
        """The pure checks first (state, namespace, range inside the pool's); the checks that
        depend on the other NADs (overlap, limit) are made after this request's claim, see
        `_apply_nad`. `origin` is the message id of the request being carried out (a waiting
        request keeps its own when the cluster's scan applies it). `known` is this NAD's document
        as the caller read it (the claim's precondition), or None to read it."""
        policy = self.ctx.policy()
        cluster_state = rec.state if rec else None
        pool = rec.workflow.node_pool if rec else None
        pool_cidr = pool.cidr if pool else None
        # Who may ask for this (the policy's grants), and the address quota of the grant that allows it.
        problems, grant = authorize(policy.requesters, requester, req)
        if problems:  # an identity outside its grants learns nothing more about the cluster
            reasons = tuple(str(p) for p in problems)
            step = decisions.NadStep(decisions.NadStep.REJECT, decisions.NAD_REJECTED, "; ".join(reasons),
                                     reasons=reasons)
        else:
            step = decisions.decide_nad(request=req, cluster_state=cluster_state, pool_cidr=pool_cidr, existing=None,
                                namespace_problem=policy.namespace_problem(req.namespace), max_nads=None,
                                pool_interface=pool.interface if pool else None)
            if req.action == "apply" and (req.range or (cluster_state == decisions.READY and pool_cidr)):
                quota = tuple(str(p) for p in quota_problems(grant, requested=req.range,
                                                              cidr=str(req.range or pool_cidr)))
                if quota:  # after the cluster's own reasons (a range outside the pool says that first)
                    reasons = (*step.reasons, *quota) if step.kind == step.REJECT else quota
                    step = decisions.NadStep(decisions.NadStep.REJECT, decisions.NAD_REJECTED, "; ".join(reasons),
                                             reasons=reasons)
        job = _Job(ref, req, event_id, ledger, origin or event_id, self._stale_before(), self._stale_before(1),
                   requester=requester.email if requester else None, grant=grant)
        if step.kind == step.APPLY:
            assert step.range is not None  # decide_nad gives every APPLY its range
            return self._apply_nad(job, step.range, expect=expect, expect_claim=expect_claim, known=known)
        if step.kind == step.DELETE:
            return self._delete_nad(job, cluster_state, expect=expect, expect_claim=expect_claim, known=known)
        return self._carry_out_nad(job, step, expect=expect, expect_claim=expect_claim)

    def _stale_before(self, leases: int = STALE_LEASES) -> str:
        return f"{time.time_ns() - int(leases * self.ctx.settings.lease_seconds * 1e9):020d}"

    def _carry_out_nad(self, job: _Job, step: decisions.NadStep, *, expect: tuple[str | None, ...] | None = None,
                       expect_claim: str | None = None) -> Outcome:
        """Reject or queue a NAD (applying is `_apply_nad`, deleting `_delete_nad`)."""
        if step.kind == step.REJECT:
            return self._refuse(job, list(step.reasons), None, expect_states=expect, expect_claim=expect_claim)
        change = _Change(decisions.NAD_PENDING, lambda cur: _pending(job, cur, step.message))
        wrote = self.ctx.store.put_nad(job.ref, job.req.namespace, job.req.name, event_id=job.event_id,
                                       step="queue-nad", change=change, ledger_key=job.ledger,
                                       ledger_note=job.ledger_note, expect_states=expect,
                                       expect=_claim_is(expect_claim) if expect_claim else None)
        return Outcome("pending" if wrote else "duplicate", change.message or step.message, job.ref.path,
                       change.state)

    def _refuse(self, job: _Job, reasons: list[str], cidr: str | None, *,
                expect_states: tuple[str | None, ...] | None, expect_claim: str | None,
                known: NadVersion | None = None) -> Outcome:
        """Record a refusal: a NAD on the cluster keeps its applied part and says so."""
        change = _Change(decisions.NAD_REJECTED, lambda cur: _refused(job, cur, reasons, cidr))
        wrote = self.ctx.store.put_nad(job.ref, job.req.namespace, job.req.name, event_id=job.event_id,
                                       step="reject-nad", change=change, outcome="rejected", ledger_key=job.ledger,
                                       ledger_note=job.ledger_note, expect_states=expect_states,
                                       expect=_claim_is(expect_claim) if expect_claim else None, known=known)
        if not wrote and expect_claim and expect_states == (decisions.NAD_APPLYING,):
            # our claim was taken over meanwhile; the request has its outcome all the same
            self.ctx.store.record_ledger(job.ledger, event_id=job.event_id, step="reject-nad", outcome="rejected",
                                         cluster=job.ref, note=job.ledger_note)
            return Outcome("rejected", "; ".join(reasons), job.ref.path, decisions.NAD_REJECTED)
        return Outcome("rejected" if wrote else "duplicate", "; ".join(reasons), job.ref.path, change.state)

    def _claim(self, job: _Job, cidr: str | None, state: NadState, *, expect: tuple[str | None, ...] | None,
               expect_claim: str | None, known: NadVersion | None = None) -> tuple[str, NadVersion] | None:
        """Claim the NAD for this request (APPLYING or DELETING + `claim_order`); None when the
        request was handled already or the claim was taken by another worker. A NAD another
        live request is carrying out answers `Transient` (busy): the request is redelivered and
        carried out after it, so one NAD is changed by one worker at a time. Returns the claim's
        order and the record as claimed: its update time is the precondition of the outcome's
        record, so no other write can come between the claim and the outcome unnoticed."""
        order = f"{time.time_ns():020d}~{secrets.token_hex(4)}"
        verb = "deleting" if state == decisions.NAD_DELETING else f"applying with range {cidr}"
        message = f"{job.label}: {verb}"
        version = self.ctx.store.put_nad_version(
            job.ref, job.req.namespace, job.req.name, event_id=job.event_id, step="claim-nad",
            change=lambda cur: _claimed(job, cur, cidr, order, state, expect_claim, message),
            ledger_key=job.ledger, expect_states=expect, history=False, write_ledger=False,
            expect=_claim_is(expect_claim) if expect_claim else None, known=known)
        return None if version is None else (order, version)

    def _delete_nad(self, job: _Job, cluster_state: str | None, *, expect: tuple[str | None, ...] | None,
                    expect_claim: str | None, known: NadVersion | None = None) -> Outcome:
        """A delete is done when the object is gone: on a READY cluster it is deleted under a
        claim and recorded after the cluster answered; a refusal keeps the record as it was; on a
        cluster that is not READY a NAD still on it waits (PENDING delete)."""
        store, ref, req = self.ctx.store, job.ref, job.req
        if cluster_state != decisions.READY:
            change = _Change(decisions.NAD_PENDING, lambda cur: _delete_waits(job, cur, cluster_state))
            wrote = store.put_nad(ref, req.namespace, req.name, event_id=job.event_id, step="delete-nad",
                                  change=change, ledger_key=job.ledger, ledger_note=job.ledger_note,
                                  expect_states=expect, expect=_claim_is(expect_claim) if expect_claim else None,
                                  known=known)
            status = "pending" if change.state == decisions.NAD_PENDING else "done"
            return Outcome(status if wrote else "duplicate", change.message, ref.path, change.state)
        claimed = self._claim(job, None, decisions.NAD_DELETING, expect=expect, expect_claim=expect_claim, known=known)
        if claimed is None:
            return Outcome("duplicate", "request already handled, or taken by another worker", ref.path)
        order, version = claimed
        try:
            deleted = self.ctx.kube_for(ref).delete_nad(req.namespace, req.name, cluster=ref.path)
        except NotOurs as e:  # a NAD someone else made: refused, naming its owner; the record stays
            return self._refuse(job, [str(e)], None, expect_states=(decisions.NAD_DELETING,), expect_claim=order,
                                known=version)
        except Permanent as e:
            return self._nad_failed(job, "delete", e, expect_claim=order)
        except Transient as e:
            self._release(job, order, decisions.NAD_DELETING, e)
            raise
        message = f"{job.label} deleted" + ("" if deleted else " (it was not on the cluster)")
        wrote = store.put_nad(ref, req.namespace, req.name, event_id=job.event_id, step="delete-nad",
                              change=lambda cur: _deleted(job, cur, message), ledger_key=job.ledger,
                              ledger_note=job.ledger_note, expect_states=(decisions.NAD_DELETING,),
                              expect=_claim_is(order), known=version)
        if not wrote:
            store.record_ledger(job.ledger, event_id=job.event_id, step="delete-nad", outcome="ok", cluster=ref,
                                note=job.ledger_note)
        return Outcome("done" if wrote else "superseded", message, ref.path, decisions.NAD_DELETED)

    def _apply_nad(self, job: _Job, cidr: str, *, expect: tuple[str | None, ...] | None,
                   expect_claim: str | None = None, known: NadVersion | None = None) -> Outcome:
        """Claim, check against the other NADs, apply to the cluster, record.

        Two requests of one cluster handled at once must not both get overlapping ranges, yet a
        lock per cluster would make every NAD of a cluster wait on one document. So each request
        claims its NAD record first (APPLYING + `claim_order`), then reads the others and
        settles conflicts with `decisions.arbitrate`; the final record is a compare-and-set on the
        claim, so a claim turned away meanwhile puts back what its record says is on the cluster.
        """
        ref = job.ref
        claimed = self._claim(job, cidr, decisions.NAD_APPLYING, expect=expect, expect_claim=expect_claim, known=known)
        if claimed is None:
            return Outcome("duplicate", "request already handled, or taken by another worker", ref.path)
        order, version = claimed
        try:
            return self._apply_claimed(job, cidr, order, version)
        except Transient as e:
            self._release(job, order, decisions.NAD_APPLYING, e)
            raise

    def _release(self, job: _Job, order: str, claimed: NadState, err: Exception) -> None:
        """A transient failure: give the claim back, so that the redelivery (or, for a NAD that
        waited for its cluster, the next drive or reconcile) carries the request out."""
        with contextlib.suppress(Transient, Permanent):
            self.ctx.store.put_nad(job.ref, job.req.namespace, job.req.name, event_id=job.event_id,
                                   step="claim-nad", change=lambda cur: _released(job, cur, err),
                                   expect_states=(claimed,), expect=_claim_is(order), history=False)

    def _apply_claimed(self, job: _Job, cidr: str, order: str, version: NadVersion) -> Outcome:
        from shared.core import nad as nadlib

        store, ref, req = self.ctx.store, job.ref, job.req
        ns, name, label = req.namespace, req.name, job.label
        policy = self.ctx.policy()
        kube = self.ctx.kube_for(ref)
        # Everything that is or may be on the cluster: the records' applied parts, the claims in
        # flight, and the managed objects the cluster really has (with or without a record). Both
        # reads come after the claim (that is what makes two concurrent claims see each other)
        # and neither depends on the other, so they are made at the same time. The cluster's LIST
        # has every NAD, anyone's: what it finds under this name is the ownership check of the
        # apply (`Listed`), which then needs no GET of its own.
        records, listed = _both(lambda: store.list_nads(ref, fields=NAD_DECISION_FIELDS), kube.list_nads)
        docs = [n for n in records if (n.namespace, n.name) != (ns, name)]
        mine_now = [o for o in listed if decisions.nad_object_key(o) == (ns, name)]
        objects = [o for o in listed if decisions.nad_object_key(o) != (ns, name) and nadlib.managed(o)]
        others = decisions.footprints(docs, objects)
        limit = decisions.limit_problem(others, policy.max_nads_per_cluster)
        reasons = [limit] if limit else []
        per_namespace = namespace_quota_problem(job.grant or DEFAULT_GRANTS[0], others, ns, decisions.NAD_COUNTED)
        if per_namespace:
            reasons.append(per_namespace)
        arb = decisions.arbitrate(key=f"{ns}~{name}", master=req.master, cidr=cidr, order=order, others=others)
        lose_to = list(arb.lose_to)
        # Only a claim that is going to be applied turns later claims away; the loser's own worker
        # records the refusal (and puts back what was on the cluster), so its NAD stays claimed
        # until it has done so.
        for other in (arb.win_over if not (lose_to or reasons) else ()):
            why = (f"range {other['range']} overlaps {label} ({cidr}) on master {req.master}, claimed first")
            if not store.put_nad(ref, other["namespace"], other["name"], event_id=job.event_id, step="refuse-claim",
                                 change=functools.partial(_turned_away, why=why), history=False,
                                 expect_states=(decisions.NAD_APPLYING,),
                                 expect=_unrefused_claim(other.get("claimOrder"))):
                now = store.get_nad(ref, other["namespace"], other["name"])
                part = decisions.applied_part(now) if now is not None else None
                if part and part.master == req.master and nadlib.ranges_overlap(cidr, part.range):
                    lose_to.append({**other, "range": part.range})  # it finished first after all
        reasons += _overlap_reasons(cidr, req.master, lose_to)
        if reasons:
            return self._refuse(job, reasons, cidr, expect_states=(decisions.NAD_APPLYING,), expect_claim=order,
                                known=version)
        obj = nadlib.render_nad(req, cidr)
        try:
            result = kube.apply_nad(obj, listed=Listed(mine_now[0] if mine_now else None))
        except NotOurs as e:  # a NAD of that name someone else made: never taken over
            return self._refuse(job, [str(e)], cidr, expect_states=(decisions.NAD_APPLYING,), expect_claim=order,
                                known=version)
        except Permanent as e:
            return self._nad_failed(job, "apply", e, expect_claim=order)
        state, message = decisions.NAD_APPLIED, f"{label} applied with range {cidr}"
        verification, checked = None, None
        if req.verify:  # the claim says a verification is on its way (verify.may_have_verify_pod)
            checked = self.verifier.check(kube, req, cidr, ref)
            verification = VerificationNote(checked.ok, checked.detail)
            state = decisions.NAD_VERIFIED if checked.ok else decisions.NAD_APPLIED
            message += f"; verify: {checked.detail}"
        config, resource_version = obj["spec"]["config"], getattr(result, "resource_version", "")
        if store.put_nad(ref, ns, name, event_id=job.event_id, step="apply-nad",
                         change=lambda cur: _applied(job, cur, cidr, config, resource_version, state, message,
                                                     verification, checked),
                         ledger_key=job.ledger, ledger_note=job.ledger_note,
                         expect_states=(decisions.NAD_APPLYING,), expect=_unrefused_claim(order), known=version):
            return Outcome("done", message, ref.path, state)
        if store.seen(job.ledger):
            return Outcome("duplicate", "request already handled", ref.path)
        now = store.get_nad(ref, ns, name)
        if now is None or now.claim_order != order:
            # An abandoned-looking claim was taken over (`apply_pending`): the taker carries out
            # this same request and records its outcome, ledger included.
            return Outcome("superseded", f"{label}: another worker took this request over", ref.path,
                           now.state if now is not None else None)
        # Turned away while applying (an overlapping claim with an earlier order won): put back
        # what the record says is on the cluster, then record the refusal.
        self._restore(kube, ref, now)
        why = now.claim_refused or "an overlapping request claimed its range first"
        out = self._refuse(job, [why], cidr, expect_states=(decisions.NAD_APPLYING,), expect_claim=order)
        return Outcome("rejected", f"{label} withdrawn: {why}", ref.path, out.state)

    def _restore(self, kube: Any, ref: ClusterRef, rec: NadRecord) -> None:
        """Make the cluster hold what `rec`'s applied part says: its config again, or nothing."""
        from shared.core import nad as nadlib

        part = decisions.applied_part(rec)
        if part is None:
            kube.delete_nad(rec.namespace, rec.name, cluster=ref.path)
        elif rec.config:
            kube.apply_nad(nadlib.nad_object(ref.path, rec.namespace, rec.name, rec.config, part.request_id))
        elif rec.request is not None:
            kube.apply_nad(nadlib.render_nad(nadlib.parse_request(dict(rec.request)), part.range))

    def _nad_failed(self, job: _Job, what: str, err: Exception, *, expect_claim: str | None = None) -> Outcome:
        change = _Change(decisions.NAD_FAILED, lambda cur: _failed(job, cur, what, err))
        self.ctx.store.put_nad(job.ref, job.req.namespace, job.req.name, event_id=job.event_id, step=f"{what}-nad",
                               change=change, outcome="failed", ledger_key=job.ledger, ledger_note=job.ledger_note,
                               expect=_claim_is(expect_claim) if expect_claim else None)
        return Outcome("failed", change.message, job.ref.path, change.state)

    def apply_pending(self, ref: ClusterRef, rec: Any, kube: Any, event_id: str, policy: Policy,
                       *, first_ready: bool) -> int:
        """Apply the NADs that waited for READY (and the policy's default NADs on first READY).

        Each goes through the same path as a new request; the compare-and-set on PENDING makes a
        NAD that a concurrent request handler is already applying a no-op here.
        """
        from shared.core import nad as nadlib

        store = self.ctx.store
        nads = store.list_nads(ref, fields=("state", "request", "claim_order", "last_request"))
        known = {(n.namespace, n.name) for n in nads}
        todo: list[tuple[Any, tuple[str | None, ...], str | None, str | None, Requester | None]] = []
        if first_ready:
            for raw in policy.default_nads:
                try:
                    req = nadlib.parse_request({**raw, "cluster": ref.path})
                except Rejected as e:
                    logs.error("default NAD in policy is invalid", cluster=ref.path, error=e.message)
                    continue
                if (req.namespace, req.name) not in known:
                    todo.append((req, (None,), None, None, None))
        # A claim is abandoned, not slow, once it is three leases old: a request whose worker hit a
        # transient error keeps its claim while Pub/Sub redelivers it (seconds to minutes of
        # backoff), and that redelivery re-claims it itself; taking over earlier would only race it.
        stale_before = self._stale_before()
        for nad in nads:
            taken = _scan_takes(nad, stale_before)
            if taken is None:
                continue
            expect, claim, body = taken
            last = nad.last_request
            try:
                who = last.requester if last else None  # verified when the request arrived; the grants are today's
                todo.append((nadlib.parse_request(dict(body)), expect, claim, last.message_id if last else None,
                             Requester(who) if who is not None else None))
            except Rejected as e:
                store.put_nad(ref, nad.namespace, nad.name, event_id=event_id, step="apply-nad",
                              change=functools.partial(_unreadable, why=e.message), outcome="rejected",
                              ledger_key=f"{event_id}~{nad.namespace}~{nad.name}",
                              expect_states=(decisions.NAD_PENDING,))
        for req, expect, claim, origin, requester in todo:
            ledger = f"{event_id}~{req.namespace}~{req.name}"
            try:
                self._decide_and_carry_out(ref, rec, req, event_id, ledger, expect=expect, expect_claim=claim,
                                           origin=origin, requester=requester)
            except Transient as e:  # one busy or unlucky NAD must not keep the others waiting
                logs.warning("a waiting NAD could not be carried out now", cluster=ref.path,
                             nad=f"{req.namespace}/{req.name}", error=str(e))
        return len(todo)

    def waiting(self, records: Sequence[NadRecord]) -> list[NadRecord]:
        """The NADs among `records` (as `list_nads` reads them) that `apply_pending` would carry out
        now: reconcile claims the cluster for them only when there is one."""
        stale_before = self._stale_before()
        return [rec for rec in records if _scan_takes(rec, stale_before) is not None]

    def reject_pending(self, ref: ClusterRef, event_id: str, why: str) -> None:
        """The cluster will never be READY: refuse what waits for it (a PENDING delete of a NAD
        still recorded on the cluster keeps its applied part: it is refused, not done)."""
        for nad in self.ctx.store.list_nads(ref, state=decisions.NAD_PENDING):
            self.ctx.store.put_nad(ref, nad.namespace, nad.name, event_id=event_id, step="reject-nad",
                                   change=functools.partial(_refused_waiting, last=nad.last_request, why=why),
                                   outcome="rejected", ledger_key=f"{event_id}~{nad.namespace}~{nad.name}",
                                   expect_states=(decisions.NAD_PENDING,))


_READS: ThreadPoolExecutor | None = None
_READS_LOCK = threading.Lock()


def _both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """`first()` here and `second()` on a thread of this process's pool, at the same time: two
    independent reads of a request (its records in Firestore, its objects on the cluster) cost
    the longer of the two, not the sum. An error of either is raised here, after both ended
    (the second is waited for, so nothing of this request runs on after it)."""
    global _READS
    with _READS_LOCK:
        if _READS is None:
            _READS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="nad-read")
    later = _READS.submit(contextvars.copy_context().run, second)
    try:
        a = first()
    finally:
        concurrent.futures.wait([later])
    return a, later.result()


def _scan_takes(rec: NadRecord, stale_before: str) -> tuple[tuple[str | None, ...], str | None,
                                                             Mapping[str, object]] | None:
    """(expected states, claim to take over, request body) when a cluster's scan carries this NAD
    out: it waits (PENDING), or its claim is abandoned (its worker died); else None."""
    last = rec.last_request
    body = last.request if last is not None and last.request is not None else rec.request
    if body is None:
        return None
    if rec.state == decisions.NAD_PENDING:
        return (decisions.NAD_PENDING,), None, body
    if rec.state in decisions.NAD_IN_FLIGHT and (rec.claim_order or "") < stale_before:
        return (rec.state,), rec.claim_order, body  # its worker died: take it over
    return None


def _turned_away(cur: NadRecord, why: str) -> NadRecord:
    """An overlapping claim with an earlier order won: this claim is refused (its worker records it)."""
    return replace(cur, state=decisions.NAD_APPLYING, claim_refused=why)


def _unreadable(cur: NadRecord, why: str) -> NadRecord:
    """A waiting request whose stored body no longer parses: refused."""
    return replace(cur, state=decisions.NAD_REJECTED, reasons=(why,), message=why)


# --------------------------------------------------------------------------- records
#
# A NAD record separates what is on the cluster from what was asked last (docs/FIRESTORE.md,
# `shared.core.records.NadRecord`):
# - `applied` (`AppliedNad`), with the top-level `range`, `master`, `config` and `request` it
#   was rendered from: changed only when the cluster was changed (applied, deleted, adopted);
# - `last_request` (`LastRequest`): the last request and its outcome, whatever it was.
# A record without an applied part (a NAD never applied, or deleted) shows its last request in
# the top-level fields, as before. Each function below takes the record as read and returns it
# as the step leaves it (`put_nad`'s `change`); the store writes what differs.


@dataclass(frozen=True)
class _Job:
    """One request being carried out: where, what, and under which keys it is recorded."""

    ref: ClusterRef
    req: Any
    event_id: str
    ledger: str
    origin: str  # the message id the request arrived with
    stale_before: str  # claims older than this are abandoned (STALE_LEASES leases)
    redelivery_before: str  # this request's own claim older than this was left by a dead worker (one lease)
    holder: str = field(default_factory=lambda: secrets.token_hex(6))  # this delivery, in the claims it writes
    requester: str | None = None  # the verified email of who asked (None: the controller itself, or auth off)
    grant: Grant | None = None  # the policy grant that allowed it (its quota)

    @property
    def label(self) -> str:
        return f"{self.req.namespace}/{self.req.name}"

    @property
    def digest(self) -> str:
        return request_digest(self.req)

    @property
    def ledger_note(self) -> LedgerNote:
        return LedgerNote(self.digest, self.req.request_id)

    def last(self, state: NadState, *, reasons: Sequence[str] = (), cidr: str | None = None) -> LastRequest:
        req = self.req
        return LastRequest(req.action, state, tuple(reasons), req.request_id, self.origin, self.event_id,
                           cidr or req.range, req.master, self.digest, req.to_dict(), datetime.now(UTC),
                           self.requester)


class _Change:
    """A `put_nad` change that remembers the state and message it chose (for the Outcome)."""

    def __init__(self, state: NadState, fn: Callable[[NadRecord], NadRecord]) -> None:
        self.state: NadState | None = state
        self.message, self._fn = "", fn

    def __call__(self, current: NadRecord) -> NadRecord:
        after = self._fn(current)
        self.state, self.message = after.state, after.message
        return after


def _claim_is(order: str | None) -> Callable[[NadRecord], bool]:
    """`put_nad`'s condition: the record is (still) held by the claim of this order."""
    return lambda cur: cur.claim_order == order


def _unrefused_claim(order: str | None) -> Callable[[NadRecord], bool]:
    """The record is held by the claim of this order, and no overlapping claim turned it away."""
    return lambda cur: cur.claim_order == order and cur.claim_refused is None


def _settled(rec: NadRecord) -> NadRecord:
    """The claim is over: its marks go."""
    return replace(rec, claim=None, claim_refused=None)


def _with_request(rec: NadRecord, req: Any) -> NadRecord:
    """The request in the top-level fields (a record with no applied part shows its last request).
    `reasons` and `last_error` belong to a previous outcome; a new one clears them unless it sets them."""
    return replace(rec, request=req.to_dict(), master=req.master, mode=req.mode, action=req.action,
                   request_id=req.request_id, reasons=None, last_error=None)


def _busy_check(job: _Job, cur: NadRecord, takeover: str | None) -> None:
    if cur.state not in decisions.NAD_IN_FLIGHT:
        return
    claim = cur.claim
    theirs = cur.claim_order or ""
    if claim is not None and (claim.holder == job.holder or claim.released):
        return  # our own claim, or one whose worker gave it back after a transient failure
    if (takeover and theirs == takeover) or theirs < job.stale_before:
        return  # the claim we take over, or an abandoned one
    if claim is not None and claim.ledger == job.ledger and theirs < job.redelivery_before:
        return  # this request's own claim, left by a worker that died a lease ago: a redelivery
    # (a copy of this request delivered at the same time is busy too: it finds the ledger later)
    who = (claim.request_id or claim.event_id if claim is not None else None) or "another request"
    raise Transient(f"{job.label} is busy: {who} is being carried out ({cur.state}); "
                    f"this request is retried after it", code="NAD_BUSY", api="controller")


def _claimed(job: _Job, cur: NadRecord, cidr: str | None, order: str, state: NadState,
             takeover: str | None, message: str) -> NadRecord:
    _busy_check(job, cur, takeover)
    out = replace(cur, state=state, message=message, claim_order=order, claim_refused=None, reasons=None,
                  last_error=None, last_request=job.last(state, cidr=cidr),
                  claim=NadClaim(job.req.action, cidr, job.req.master, job.ledger, job.event_id, job.req.request_id,
                                 cur.state, job.holder))
    part = decisions.applied_part(cur)
    if part is None:
        out = _with_request(out, job.req)
        if cidr:
            out = replace(out, range=cidr)
    elif cur.applied is None:
        out = replace(out, applied=part)  # a record written before `applied` existed
    if cur.state in decisions.NAD_IN_FLIGHT:
        out = _verify_may_linger(cur, out)  # a claim taken over: its worker may have left a verify pod
    return out


def _verify_may_linger(cur: NadRecord, out: NadRecord) -> NadRecord:
    """`out` with the verify-pod marker when `cur`'s verification was cut short (its worker died or
    gave its claim back): its pod may be left, and once this claim settles nothing else says so."""
    if cur.verify_pod is not None or not may_have_verify_pod(cur):
        return out
    return replace(out, verify_pod=VerifyPodMarker(round(verify_deadline(VERIFY_WINDOW_SECONDS))))


def _released(job: _Job, cur: NadRecord, err: Exception) -> NadRecord:
    """A waiting NAD goes back to the queue (PENDING); any other claim stays, its range reserved,
    marked released: no worker is on it, so its redelivery (or any other request) may claim it."""
    claim = cur.claim
    if claim is not None and claim.previous_state == decisions.NAD_PENDING:
        return _verify_may_linger(cur, _settled(replace(
            cur, state=decisions.NAD_PENDING, last_request=job.last(decisions.NAD_PENDING),
            message=f"{job.label}: waiting again after a transient failure ({err})")))
    return replace(cur, claim=replace(claim, released=True, why=str(err)[:500]) if claim is not None else None,
                   message=f"{job.label}: retried after a transient failure ({err})")


def _pending(job: _Job, cur: NadRecord, why: str) -> NadRecord:
    _busy_check(job, cur, None)
    out = _settled(replace(cur, state=decisions.NAD_PENDING, last_request=job.last(decisions.NAD_PENDING)))
    part = decisions.applied_part(cur)
    if part is None:
        return replace(_with_request(out, job.req), message=f"{job.label}: {why}")
    return replace(out, message=f"{job.label}: update waits ({why}); the cluster keeps {part.range} until then")


def _refused(job: _Job, cur: NadRecord, reasons: list[str], cidr: str | None) -> NadRecord:
    _busy_check(job, cur, None)
    text = "; ".join(reasons)
    last = job.last(decisions.NAD_REJECTED, reasons=reasons, cidr=cidr)
    part = decisions.applied_part(cur)
    if part is None:
        out = replace(_settled(_with_request(cur, job.req)), state=decisions.NAD_REJECTED, reasons=tuple(reasons),
                      last_request=last, message=f"{job.label}: {text}")
        return replace(out, range=cidr) if cidr else out
    what = "delete" if job.req.action == "delete" else "update"
    return replace(_settled(cur), state=_kept_state(cur, part), reasons=tuple(reasons), last_request=last,
                   message=f"{what} refused: {job.req.name} keeps {part.range}; {text}")


def _refused_waiting(cur: NadRecord, last: LastRequest | None, why: str) -> NadRecord:
    part = decisions.applied_part(cur)
    now = datetime.now(UTC)
    new_last = (replace(last, state=decisions.NAD_REJECTED, reasons=(why,), at=now) if last is not None
                else LastRequest(cur.action or "", decisions.NAD_REJECTED, (why,), at=now))
    out = replace(_settled(cur), reasons=(why,), last_request=new_last)
    if part is None:
        return replace(out, state=decisions.NAD_REJECTED, message=f"{cur.label}: {why}")
    return replace(out, state=_kept_state(cur, part),
                   message=f"{(last.action if last else '') or 'update'} refused: {cur.name} keeps {part.range}; {why}")


def _failed(job: _Job, cur: NadRecord, what: str, err: Exception) -> NadRecord:
    last = job.last(decisions.NAD_FAILED, reasons=[str(err)])
    part = decisions.applied_part(cur)
    if part is None:
        return replace(_settled(_with_request(cur, job.req)), state=decisions.NAD_FAILED, last_error=str(err),
                       last_request=last, message=f"{job.label}: {what} refused by the cluster: {err}")
    return replace(_settled(cur), state=_kept_state(cur, part), last_error=str(err), last_request=last,
                   message=f"{what} refused by the cluster: {job.req.name} keeps {part.range}: {err}")


def _kept_state(cur: NadRecord, part: AppliedNad) -> NadState:
    if cur.state in decisions.NAD_LIVE or cur.state == decisions.NAD_ORPHANED:
        return cur.state
    return nad_state(part.state) or decisions.NAD_APPLIED


def _deleted(job: _Job, cur: NadRecord, message: str) -> NadRecord:
    return replace(_settled(cur), state=decisions.NAD_DELETED, message=message, applied=None, config=None,
                   resource_version=None, verification=None, reasons=None, last_error=None, action="delete",
                   request_id=job.req.request_id, last_request=job.last(decisions.NAD_DELETED))


def _delete_waits(job: _Job, cur: NadRecord, cluster_state: str | None) -> NadRecord:
    _busy_check(job, cur, None)
    part = decisions.applied_part(cur)
    if part is None or cluster_state in (None, decisions.DELETED):
        gone = "the cluster is gone" if cluster_state == decisions.DELETED else "it was not on the cluster"
        return _deleted(job, cur, f"{job.label} deleted ({gone})")
    return replace(_settled(cur), state=decisions.NAD_PENDING, last_request=job.last(decisions.NAD_PENDING),
                   message=f"{job.label}: delete waits: the cluster is {cluster_state}; the NAD stays on it "
                           f"with {part.range} until the cluster is READY")


def _applied(job: _Job, cur: NadRecord, cidr: str, config: str, resource_version: str, state: NadState,
             message: str, verification: VerificationNote | None, checked: Verification | None) -> NadRecord:
    applied = AppliedNad(cidr, job.req.master, config_digest(config), job.req.request_id, job.origin, state,
                         datetime.now(UTC), job.requester)
    out = replace(_settled(_with_request(cur, job.req)), state=state, message=message, range=cidr, config=config,
                  resource_version=resource_version, applied=applied, last_request=job.last(state, cidr=cidr),
                  verification=verification)
    # a verify pod that could not be deleted: the marker names it for reconcile's sweep
    left = marker_of(checked) if checked is not None else None
    return replace(out, verify_pod=left) if left is not None else out


def _overlap_reasons(cidr: str, master: str, lose_to: Sequence[Mapping[str, Any]]) -> list[str]:
    out, seen = [], set()
    for o in lose_to:
        text = (f"range {cidr} overlaps {o.get('namespace')}/{o.get('name')} ({o.get('range')}) on master {master}"
                + (" (found on the cluster)" if o.get("onCluster") else ""))
        key = (o.get("namespace"), o.get("name"), o.get("range"))
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def _nad_ledger_key(event_id: str, req: Any) -> str:
    """Requests carrying a request_id are deduplicated by it, whatever their message id."""
    if req.request_id:
        digest = hashlib.sha256(f"{req.cluster.doc_id}/{req.request_id}".encode()).hexdigest()[:32]
        return f"request-{digest}"
    return event_id
