"""Reconcile's NAD part: the records and the cluster's managed NADs, compared both ways.

- A record whose applied part is not on the cluster (deleted, or edited) is applied again from
  the config it records, byte for byte.
- A managed object (label `app.kubernetes.io/managed-by: multus-provisioner`) without a record,
  or whose record holds nothing applied, is adopted into a record when it conflicts with nothing
  (its range overlaps nothing on its master), or else recorded as an ORPHANED record, which the
  overlap checks count like any NAD on the cluster and `status`/`history` show. With the
  policy's `pruneOrphans` an orphan is deleted from the cluster, and its config stays in the
  record (`pruned`): user data is never deleted silently.
- Verify pods whose check is over (their deadline annotation has passed) are deleted: each holds
  a Whereabouts address.
Kept apart from `reconcile.py` so that the cluster part and the NAD part can change separately.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.core import decisions as d
from shared.core import logs
from shared.core.errors import Permanent, Transient
from shared.core.refs import ClusterRef
from shared.flows.context import Context
from shared.flows.verify import VERIFY_SELECTOR, VERIFY_UNTIL_ANNOTATION
from shared.ports import DELETE


def repair_nads(ctx: Context, ref: ClusterRef, kube: Any, event_id: str,
                objects: list[dict[str, Any]] | None = None) -> list[str]:
    """Bring records and cluster in line; returns what was done, one phrase each. `objects` are the
    managed NADs on the cluster when the caller has listed them already (one LIST per sweep)."""
    store = ctx.store
    docs = store.list_nads(ref)
    objects = kube.list_managed_nads() if objects is None else objects
    on_cluster = {d.nad_object_key(o): o for o in objects}
    by_key = {(doc["namespace"], doc["name"]): doc for doc in docs}
    fixes: list[str] = []
    for key, doc in sorted(by_key.items()):
        fixes += _repair_record(ctx, ref, kube, key, doc, on_cluster.get(key), event_id)
    for key, obj in sorted(on_cluster.items()):
        found = by_key.get(key)
        state = (found or {}).get("state")
        if found is not None and state != d.NAD_ORPHANED and (
                d.applied_part(found) is not None or state in d.NAD_IN_FLIGHT or state == d.NAD_PENDING):
            continue  # recorded, or a request is on its way to it
        others = d.footprints([x for k, x in by_key.items() if k != key],
                              [o for k, o in on_cluster.items() if k != key])
        fix = _adopt_or_report(ctx, ref, kube, key, obj, found, others, event_id)
        if fix:
            fixes.append(fix)
    return fixes


def _repair_record(ctx: Context, ref: ClusterRef, kube: Any, key: tuple[str, str], doc: Mapping[str, Any],
                   live: Mapping[str, Any] | None, event_id: str) -> list[str]:
    from shared.core import nad as nadlib

    ns, name = key
    part = d.applied_part(doc)
    state = doc.get("state")
    if part is None or state in d.NAD_IN_FLIGHT or state == d.NAD_PENDING:
        return []
    if state == d.NAD_ORPHANED:
        if live is not None:
            return []
        # An orphan is not ours to restore: once it is gone, its record says so.
        ctx.store.put_nad(ref, ns, name, event_id=event_id, step="orphan-gone", state=d.NAD_DELETED,
                          fields={"applied": DELETE, "orphan": DELETE}, expect_states=(d.NAD_ORPHANED,),
                          message=f"{ns}/{name}: the orphan is no longer on the cluster",
                          ledger_key=f"{event_id}~orphan-gone~{ns}~{name}")
        return [f"orphan NAD {ns}/{name} gone"]
    config = doc.get("config")
    if live is not None and config and (live.get("spec") or {}).get("config") == config:
        return []
    if config:
        obj = nadlib.nad_object(ref.path, ns, name, config, part.get("requestId"))
    elif isinstance(doc.get("request"), Mapping):
        obj = nadlib.render_nad(nadlib.parse_request(dict(doc["request"])), part["range"])
    else:
        return []
    fresh = ctx.store.get_nad(ref, ns, name) or {}
    if fresh.get("updatedAt") != doc.get("updatedAt"):
        return []  # a request changed it since the list was read: it is its worker's to apply (next run checks)
    kube.apply_nad(obj)
    return [f"{'re-created' if live is None else 'restored'} NAD {ns}/{name}"]


def _adopt_or_report(ctx: Context, ref: ClusterRef, kube: Any, key: tuple[str, str], obj: Mapping[str, Any],
                     doc: Mapping[str, Any] | None, others: list[dict[str, Any]], event_id: str) -> str | None:
    from shared.core import nad as nadlib

    store, policy = ctx.store, ctx.policy()
    ns, name = key
    found = nadlib.config_range(obj)
    config = str((obj.get("spec") or {}).get("config") or "")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    request_id = annotations.get(nadlib.REQUEST_ID_ANNOTATION)
    now = datetime.now(UTC)
    expect = (doc.get("state") if doc else None,)
    if found is None:
        why = "its spec.config has no Whereabouts range the controller can read"
        clash: list[Mapping[str, Any]] = []
    else:
        clash = d.conflicts(key=f"{ns}~{name}", master=found[0], cidr=found[1], others=others)
        why = "; ".join(f"{found[1]} overlaps {o.get('namespace')}/{o.get('name')} ({o.get('range')}) "
                        f"on master {found[0]}" for o in clash)
    what = f"{ns}/{name}" + (f" ({found[1]} on master {found[0]})" if found else "")
    applied = ({"range": found[1], "master": found[0], "configDigest": nadlib.config_digest(config),
                "requestId": request_id, "messageId": None, "state": d.NAD_APPLIED, "at": now} if found else DELETE)
    identity = {"range": found[1], "master": found[0]} if found else {}
    if found is not None and not clash:
        store.put_nad(ref, ns, name, event_id=event_id, step="adopt-nad", state=d.NAD_APPLIED,
                      fields={**identity, "applied": applied, "config": config, "requestId": request_id,
                              "adopted": {"at": now, "by": "reconcile"}, "orphan": DELETE, "reasons": DELETE,
                              "lastError": DELETE},
                      message=f"orphan adopted: {what} was on the cluster without a record and conflicts with "
                              "nothing; recorded as applied", expect_states=expect,
                      ledger_key=f"{event_id}~adopt~{ns}~{name}")
        return f"adopted orphan NAD {ns}/{name}"
    if policy.prune_orphans:
        try:
            kube.delete_nad(ns, name)
        except (Transient, Permanent) as e:
            logs.warning("could not prune an orphan NAD", cluster=ref.path, nad=f"{ns}/{name}", error=str(e))
            return None
        store.put_nad(ref, ns, name, event_id=event_id, step="prune-orphan", state=d.NAD_DELETED,
                      fields={**identity, "applied": DELETE, "orphan": DELETE,
                              "pruned": {"config": config, "at": now, "reason": why}},
                      message=f"orphan pruned: {what} was on the cluster without a record and {why}; deleted "
                              "because the policy prunes orphans; its config is kept in this record (`pruned`)",
                      expect_states=expect, ledger_key=f"{event_id}~prune~{ns}~{name}")
        return f"pruned orphan NAD {ns}/{name}"
    if doc is not None and doc.get("state") == d.NAD_ORPHANED and (doc.get("orphan") or {}).get("reason") == why:
        return None  # reported already, nothing changed
    store.put_nad(ref, ns, name, event_id=event_id, step="report-orphan", state=d.NAD_ORPHANED, outcome="skipped",
                  fields={**identity, "applied": applied, "config": config, "requestId": request_id,
                          "orphan": {"reason": why, "foundAt": now}},
                  message=f"orphan reported: {what} is on the cluster without a record and {why}; left in place "
                          "(set the policy's pruneOrphans to delete it)", expect_states=expect,
                  ledger_key=f"{event_id}~orphan~{ns}~{name}")
    return f"reported orphan NAD {ns}/{name}"


def sweep_verify_pods(kube: Any, *, cluster: str = "", now: float | None = None) -> list[str]:
    """Delete verify pods whose check is over: a lingering one holds a Whereabouts address."""
    now = time.time() if now is None else now
    fixes = []
    for pod in kube.list_pods(VERIFY_SELECTOR):
        md = pod.get("metadata") or {}
        until = (md.get("annotations") or {}).get(VERIFY_UNTIL_ANNOTATION)
        try:
            over = float(str(until)) < now  # None or junk: ValueError
        except (TypeError, ValueError):
            over = True  # no deadline (an older controller's pod): its check is long over
        if not over:
            continue
        try:
            kube.delete_pod(md.get("namespace") or "default", md.get("name"))
        except (Transient, Permanent) as e:
            logs.warning("could not delete a leftover verify pod", cluster=cluster, error=str(e))
            continue
        fixes.append(f"removed leftover verify pod {md.get('namespace')}/{md.get('name')}")
    return fixes

