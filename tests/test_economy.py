"""Issue 21, economy: what a reconcile and a NAD request cost, counted on real servers.

In-process against the Firestore emulator and the sandbox GKE and cluster APIs (the fixtures of
tests/test_workflow.py). Firestore calls are counted by the store's own gRPC interceptor
(`Store.count_rpcs`), cluster requests by the sandbox API server; nothing is timed here (the
throughput is a benchmark: `make bench`, docs/BENCHMARKS.md).

- A READY cluster in sync is reconciled with reads only: no claim, no ledger entry, no history
  entry; every document under the cluster keeps its update time.
- A difference is claimed, looked at again under the claim, and repaired as before.
- A NAD apply is 4 Firestore calls: one read (cluster, ledger, the NAD), the claim's commit,
  the query of the other NADs, the record's commit preconditioned on the claim's update time.
- The drift check lists verify pods only when a record says one can exist.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.core import decisions as d
from shared.core.events import decode_nad_request, decode_reconcile
from shared.core.refs import ClusterRef
from tests import test_workflow as _wf
from tests.test_workflow import ce, to_ready

local_stack, make_wf = _wf.local_stack, _wf.make_wf  # the in-process fixtures of tests/test_workflow.py

WRITES = ("Commit", "BeginTransaction", "BatchWrite", "Rollback")
VERIFY_LIST = ("GET", "/api/v1/pods")


def send(wf: Any, ref: ClusterRef, name: str, message_id: str | None = None, **fields: Any) -> Any:
    return wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": name, **fields}, message_id)))


def reconcile(wf: Any, ref: ClusterRef, message_id: str | None = None) -> Any:
    return wf.reconcile(decode_reconcile(ce({"cluster": ref.path}, message_id)))


def documents(wf: Any, ref: ClusterRef) -> dict[str, Any]:
    """Every document under the cluster's (and the cluster's own), with its update time."""
    doc = wf.store._cluster_doc(ref)
    out = {doc.path: doc.get().update_time}
    for sub in doc.collections():
        for snap in sub.stream():
            out[snap.reference.path] = snap.update_time
    return out


def requests_of(stack: Any, ref: ClusterRef, fn: Any) -> tuple[Any, Counter]:
    stats = stack.kube_server(ref.cluster).stats
    before = Counter(stats.snapshot())
    out = fn()
    return out, Counter(stats.snapshot()) - before


def test_a_nad_apply_costs_four_firestore_calls(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "warm", range="172.16.1.0/28", master="eth2").status == "done"  # policy, client cached
    with wf.store.count_rpcs() as n:
        out = send(wf, ref, "net-a", range="172.16.1.0/26")
    assert out.status == "done" and out.state == d.NAD_APPLIED
    assert n.total == 4, dict(n.by_method)
    assert dict(n.by_method) == {"BatchGetDocuments": 1, "Commit": 2, "RunQuery": 1}
    doc = wf.store.get_nad(ref, "default", "net-a")
    assert doc["applied"]["range"] == "172.16.1.0/26" and "claim" not in doc and "claimOrder" in doc
    # an update of the same NAD decides on the document read with the cluster: 4 again
    with wf.store.count_rpcs() as n:
        out = send(wf, ref, "net-a", range="172.16.1.0/27")
    assert out.status == "done" and n.total == 4, dict(n.by_method)
    assert wf.store.get_nad(ref, "default", "net-a")["applied"]["range"] == "172.16.1.0/27"
    # a refusal after the claim is 4 too, and keeps what is on the cluster
    with wf.store.count_rpcs() as n:
        out = send(wf, ref, "net-b", range="172.16.1.0/28")
    assert out.status == "rejected" and n.total == 4, dict(n.by_method)
    # a duplicate delivery stops at the first read
    first = wf.store.get_nad(ref, "default", "net-b")["lastRequest"]["messageId"]
    with wf.store.count_rpcs() as n:
        assert send(wf, ref, "net-b", message_id=first, range="172.16.1.0/28").status == "duplicate"
    assert n.total == 1


def test_a_write_between_claim_and_record_is_noticed(local_stack, make_wf, monkeypatch):
    """The record's precondition is the claim's update time: another worker's write in between
    (here: the claim refused by an earlier overlapping claim) fails it, and the request then
    decides on a fresh read as before: it is withdrawn, nothing of it stays on the cluster."""
    from shared.flows import nad as nadflow

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    real = nadflow.NadFlow._apply_claimed

    def refused_meanwhile(self: Any, job: Any, cidr: str, order: str, version: Any) -> Any:
        wf.store.put_nad(ref, "default", "net-a", event_id="other", step="refuse-claim", state=d.NAD_APPLYING,
                         fields={"claimRefused": "range overlaps default/other, claimed first"}, history=False,
                         expect_states=(d.NAD_APPLYING,))
        return real(self, job, cidr, order, version)

    monkeypatch.setattr(nadflow.NadFlow, "_apply_claimed", refused_meanwhile)
    out = send(wf, ref, "net-a", range="172.16.1.0/26")
    assert out.status == "rejected" and "withdrawn" in out.message, out.message
    doc = wf.store.get_nad(ref, "default", "net-a")
    assert doc["state"] == d.NAD_REJECTED and d.applied_part(doc) is None
    assert wf.ctx.kube_for(ref).get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "net-a") is None
