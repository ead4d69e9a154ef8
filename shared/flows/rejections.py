"""Refused input is recorded where users look: the NAD's document (when the request named a
valid cluster, namespace and name) and the `rejections` collections that `status` lists."""

from __future__ import annotations

from dataclasses import replace

from shared.core.decisions import NAD_REJECTED
from shared.core.errors import Rejected
from shared.core.names import is_dns_label
from shared.core.records import NadRecord
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Outcome


def record_rejection(ctx: Context, err: Rejected, *, event_id: str, excerpt: str = "") -> Outcome:
    """Record refused input where `status` and the Firestore console show it."""
    cluster = err.cluster if isinstance(err.cluster, ClusterRef) else None
    name = err.context.get("name")
    namespace = err.context.get("namespace") or "default"
    if cluster is not None and isinstance(name, str) and is_dns_label(name) and is_dns_label(namespace):
        reasons = tuple(str(p) for p in err.problems) or (err.reason,)

        def refused(cur: NadRecord) -> NadRecord:
            return replace(cur, state=NAD_REJECTED, message=err.message, reasons=reasons,
                           request_excerpt=excerpt[:512])

        ctx.store.put_nad(cluster, namespace, name, event_id=event_id, step="validate-nad", change=refused,
                          outcome="rejected", ledger_key=event_id)
    ctx.store.record_rejection(event_id=event_id, cluster=cluster, reason=err.reason, problems=err.problems,
                                kind=err.kind, excerpt=excerpt[:512], ledger_key=None)
    return Outcome("rejected", err.message, cluster.path if cluster else None)
