"""The NAD flow: a request is decided, applied (or queued, or refused) and recorded.

A NAD request is checked by the pure core (`shared.core.decisions`) against the cluster's state,
the namespace policy and the node pool's secondary range; the checks that depend on the other
NADs of the cluster (overlap, limit) are made after this request has claimed its document, so
two concurrent requests cannot both take overlapping ranges (see `_apply_nad`). The same path
applies the NADs that waited for their cluster (`apply_pending`, called by the cluster flow and
by reconcile).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any

from shared.core import decisions as d
from shared.core import logs
from shared.core.errors import Permanent, Rejected, Transient
from shared.core.policy import Policy
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Outcome
from shared.flows.verify import VerifyFlow
from shared.ports import DELETE

# What the NAD decisions read of the other NADs (namespace and name come from the doc id).
NAD_DECISION_FIELDS = ("state", "master", "range", "claimOrder")


class NadFlow:
    def __init__(self, ctx: Context, verifier: VerifyFlow) -> None:
        self.ctx = ctx
        self.verifier = verifier

    def handle_nad(self, ev: Any) -> Outcome:
        """A validated NAD request: decide, apply (or wait, or reject), record."""
        req = ev.request
        ref: ClusterRef = req.cluster
        store = self.ctx.store
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
        policy = self.ctx.policy()
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
        store = self.ctx.store
        fields = _nad_fields(req)
        label = f"{req.namespace}/{req.name}"
        if step.kind == step.DELETE:
            deleted = False
            if cluster_state == d.READY:
                try:
                    deleted = self.ctx.kube_for(ref).delete_nad(req.namespace, req.name)
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

        store = self.ctx.store
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
        from shared.core import nad as nadlib

        store = self.ctx.store
        ns, name, label = req.namespace, req.name, f"{req.namespace}/{req.name}"
        mine = {"claimOrder": order}
        policy = self.ctx.policy()
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
            kube = self.ctx.kube_for(ref)
            result = kube.apply_nad(obj)
        except Permanent as e:
            return self._nad_failed(ref, req, event_id, ledger, "apply", e, expect_fields=mine)
        fields["resourceVersion"] = getattr(result, "resource_version", "")
        state, message = d.NAD_APPLIED, f"{label} applied with range {cidr}"
        if req.verify:
            ok, detail = self.verifier.check(kube, req, cidr, ref)
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
        self.ctx.store.put_nad(ref, req.namespace, req.name, event_id=event_id, step=f"{what}-nad",
                           state=d.NAD_FAILED, fields={**_nad_fields(req), "lastError": str(err)},
                           outcome="failed", message=message, ledger_key=ledger, expect_fields=expect_fields)
        return Outcome("failed", message, ref.path, d.NAD_FAILED)

    def apply_pending(self, ref: ClusterRef, rec: Any, kube: Any, event_id: str, policy: Policy,
                       *, first_ready: bool) -> int:
        """Apply the NADs that waited for READY (and the policy's default NADs on first READY).

        Each goes through the same path as a new request; the compare-and-set on PENDING makes a
        NAD that a concurrent request handler is already applying a no-op here.
        """
        from shared.core import nad as nadlib

        store = self.ctx.store
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
        stale_before = f"{time.time_ns() - int(3 * self.ctx.settings.lease_seconds * 1e9):020d}"
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

    def reject_pending(self, ref: ClusterRef, event_id: str, why: str) -> None:
        for doc in self.ctx.store.list_nads(ref, state=d.NAD_PENDING):
            self.ctx.store.put_nad(ref, doc["namespace"], doc["name"], event_id=event_id, step="reject-nad",
                               state=d.NAD_REJECTED, fields={"reasons": [why]}, outcome="rejected",
                               message=f"{doc['namespace']}/{doc['name']}: {why}",
                               ledger_key=f"{event_id}~{doc['namespace']}~{doc['name']}")



def _nad_fields(req: Any) -> dict[str, Any]:
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
