"""Issue 21, economy: what a reconcile and a NAD request cost, counted on real servers.

In-process against the Firestore emulator and the sandbox GKE and cluster APIs (the fixtures of
tests/test_workflow.py). Firestore calls are counted by the store's own gRPC interceptor
(`Store.count_rpcs`), cluster requests by the sandbox API server; nothing is timed here (the
throughput is a benchmark: `make bench`, docs/BENCHMARKS.md).

- A READY cluster in sync is reconciled with reads only: no claim, no ledger entry, no history
  entry; every document under the cluster keeps its update time.
- A difference is claimed, looked at again under the claim, and repaired as before.
- A NAD apply is 4 Firestore calls: one read (cluster, ledger, the NAD), the claim's commit,
  the list of the other NADs, the record's commit preconditioned on the claim's update time;
  and 2 cluster requests: a LIST of every NAD, the server-side apply.
- The drift check lists verify pods only when a record says one can exist.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.core import decisions as d
from shared.core.events import decode_nad_request, decode_reconcile
from shared.core.ranges import allocations
from shared.core.refs import ClusterRef
from tests import test_workflow as _wf
from tests.fakes import nad_change, nad_doc
from tests.fixtures_stack import wait_for
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


def test_an_in_sync_reconcile_reads_and_writes_nothing(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "net-a", range="172.16.1.0/26").status == "done"
    reconcile(wf, ref)  # settles the rollout figure recorded at install time
    before = documents(wf, ref)
    with wf.store.count_rpcs() as n:
        out, used = requests_of(local_stack, ref, lambda: reconcile(wf, ref, "in-sync-1"))
    assert out.status == "done" and out.details["repaired"] == [] and out.details["errors"] == []
    assert not any(n.by_method.get(m) for m in WRITES), dict(n.by_method)
    assert n.total <= 4, dict(n.by_method)  # the record, the rollout document, the NAD records
    assert documents(wf, ref) == before  # no claim, no history entry: every update time unchanged
    assert not wf.store.seen("in-sync-1") and not wf.store.seen(f"in-sync-1~{ref.doc_id}")
    assert sum(used.values()) == 8, used  # 6 bundle kinds, the managed NADs, Whereabouts' IPPools
    assert VERIFY_LIST not in used  # no record says a verify pod can exist


def test_a_difference_is_claimed_and_repaired(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "net-a", range="172.16.1.0/26").status == "done"
    reconcile(wf, ref)
    wf.ctx.kube_for(ref).delete_nad("default", "net-a")
    with wf.store.count_rpcs() as n:
        out = reconcile(wf, ref, "drifted-1")
    assert any("re-created NAD default/net-a" in r for r in out.details["repaired"]), out.details
    assert n.by_method.get("Commit"), dict(n.by_method)  # the claim and the record
    assert wf.store.seen(f"drifted-1~{ref.doc_id}")
    rec = wf.store.get_cluster(ref)
    assert rec.lease is None  # released with the record
    steps = [h["step"] for h in wf.store.history(ref, page_size=1000)[0] if h["eventId"] == f"drifted-1~{ref.doc_id}"]
    assert steps == ["repair"]
    assert wf.ctx.kube_for(ref).get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "net-a")
    # and the next run finds it in sync again: reads only
    before = documents(wf, ref)
    with wf.store.count_rpcs() as n:
        reconcile(wf, ref)
    assert not any(n.by_method.get(m) for m in WRITES), dict(n.by_method)
    assert documents(wf, ref) == before


def test_a_waiting_nad_is_a_difference(local_stack, make_wf):
    """A PENDING record on a READY cluster (its wake-up was lost) makes reconcile claim and apply it."""
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    reconcile(wf, ref)
    wf.store.put_nad(ref, "default", "late",
                     change=nad_change(d.NAD_PENDING, {"request": {"cluster": ref.path, "name": "late",
                                                                   "range": "172.16.1.0/28"}}),
                     event_id="lost", step="queue-nad")
    out = reconcile(wf, ref)
    assert any("took up 1 waiting NAD" in r for r in out.details["repaired"]), out.details
    assert nad_doc(wf.store, ref, "default", "late")["state"] == d.NAD_APPLIED


def test_a_nad_apply_costs_four_firestore_calls(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "warm", range="172.16.1.192/28").status == "done"  # policy, client cached (apart on eth1)
    with wf.store.count_rpcs() as n:
        out, used = requests_of(local_stack, ref, lambda: send(wf, ref, "net-a", range="172.16.1.0/26"))
    assert out.status == "done" and out.state == d.NAD_APPLIED
    assert n.total == 4, dict(n.by_method)
    # on the cluster: one LIST of every NAD (the overlap check and the ownership check), one apply
    assert sum(used.values()) == 2 and {v for v, _ in used} == {"GET", "PATCH"}, used
    assert dict(n.by_method) == {"BatchGetDocuments": 1, "Commit": 2, "ListDocuments": 1}
    doc = nad_doc(wf.store, ref, "default", "net-a")
    assert doc["applied"]["range"] == "172.16.1.0/26" and "claim" not in doc and "claimOrder" in doc
    # an update of the same NAD decides on the document read with the cluster: 4 again
    with wf.store.count_rpcs() as n:
        out = send(wf, ref, "net-a", range="172.16.1.0/27")
    assert out.status == "done" and n.total == 4, dict(n.by_method)
    assert nad_doc(wf.store, ref, "default", "net-a")["applied"]["range"] == "172.16.1.0/27"
    # a refusal after the claim is 4 too, and keeps what is on the cluster
    with wf.store.count_rpcs() as n:
        out = send(wf, ref, "net-b", range="172.16.1.0/28")
    assert out.status == "rejected" and n.total == 4, dict(n.by_method)
    # a duplicate delivery stops at the first read
    first = nad_doc(wf.store, ref, "default", "net-b")["lastRequest"]["messageId"]
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
        wf.store.put_nad(ref, "default", "net-a",
                         change=nad_change(d.NAD_APPLYING,
                                           {"claimRefused": "range overlaps default/other, claimed first"}),
                         event_id="other", step="refuse-claim", history=False, expect_states=(d.NAD_APPLYING,))
        return real(self, job, cidr, order, version)

    monkeypatch.setattr(nadflow.NadFlow, "_apply_claimed", refused_meanwhile)
    out = send(wf, ref, "net-a", range="172.16.1.0/26")
    assert out.status == "rejected" and "withdrawn" in out.message, out.message
    rec = wf.store.get_nad(ref, "default", "net-a")
    assert rec.state == d.NAD_REJECTED and d.applied_part(rec) is None
    assert wf.ctx.kube_for(ref).get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "net-a") is None


def test_verify_pods_are_listed_only_when_a_record_says_one_can_exist(local_stack, make_wf, monkeypatch):
    from shared.adapters.kube import Kube
    from shared.flows.verify import (
        VERIFY_SELECTOR,
        VERIFY_UNTIL_ANNOTATION,
        mark_verifying,
        verify_pod_manifest,
    )

    listed: list[str] = []  # the verify-pod LISTs (the server counts paths without their label selector)
    real = Kube.list_pods

    def counted(self: Any, label_selector: str, namespace: str | None = None) -> Any:
        if label_selector == VERIFY_SELECTOR:
            listed.append(label_selector)
        return real(self, label_selector, namespace)

    monkeypatch.setattr(Kube, "list_pods", counted)

    def verify_lists(fn: Any) -> int:
        before = len(listed)
        fn()
        return len(listed) - before

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    server = local_stack.kube_server(ref.cluster)
    k = wf.ctx.kube_for(ref)
    assert send(wf, ref, "net-a", range="172.16.1.0/26").status == "done"
    reconcile(wf, ref)
    _, used = requests_of(local_stack, ref, lambda: reconcile(wf, ref))
    assert VERIFY_LIST not in used and sum(used.values()) == 8, used
    assert verify_lists(lambda: reconcile(wf, ref)) == 0

    # a verification whose pod cannot be deleted: the record names the pod left behind
    server.faults.add("DELETE", r"/api/v1/namespaces/default/pods/mp-verify-", 503, times=4)
    out = send(wf, ref, "checked", range="172.16.1.64/26", verify=True)
    assert out.status == "done", out.message
    marker = nad_doc(wf.store, ref, "default", "checked")["verifyPod"]
    assert marker["pod"].startswith("mp-verify-checked-") and k.get_pod("default", marker["pod"]) is not None
    # its peer pod was deleted: wait for Whereabouts' reconciler (the sandbox's) to free its address
    wait_for(lambda: not any(a.podref.endswith("-peer") for _, a in allocations(k.list_ippools())), timeout=30)
    reconcile(wf, ref)  # settles the pool-use figures of the new NAD
    before = documents(wf, ref)
    # listed: its check is not over yet, so it stays, and nothing is written
    assert verify_lists(lambda: reconcile(wf, ref)) == 1
    assert k.get_pod("default", marker["pod"]) is not None and documents(wf, ref) == before

    # a verification that claims nothing (the CLI, the rollout gate) marks the record first; once
    # its check is over, the sweep deletes its pod and drops the marker; then no more LIST
    k.delete_pod("default", marker["pod"])
    mark_verifying(wf.store, ref, "default", "net-a", event_id="cli-verify", timeout=-120)  # over already
    pod = verify_pod_manifest("mp-verify-net-a-old", "default", "net-a", None)
    pod["metadata"]["annotations"][VERIFY_UNTIL_ANNOTATION] = "1"
    k.create_pod(pod)
    out = reconcile(wf, ref)
    assert any("removed leftover verify pod default/mp-verify-net-a-old" in r for r in out.details["repaired"])
    assert "verifyPod" not in nad_doc(wf.store, ref, "default", "net-a")
    assert "verifyPod" not in nad_doc(wf.store, ref, "default", "checked")  # its pod is gone too
    assert verify_lists(lambda: reconcile(wf, ref)) == 0


def test_a_verification_cut_short_leaves_the_marker_for_the_sweep(local_stack, make_wf):
    """A request with `verify` whose worker hits a transient failure mid-check gives its claim back;
    the redelivery's claim sees a verification was under way and marks the record, so reconcile
    still looks for the first attempt's pod once this request has settled."""
    from shared.core.errors import Transient
    from shared.flows.verify import may_have_verify_pod

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    server = local_stack.kube_server(ref.cluster)
    server.faults.add("GET", r"/api/v1/namespaces/default/pods/mp-verify-", 503, times=1)
    try:
        send(wf, ref, "checked", message_id="verify-1", range="172.16.1.0/26", verify=True)
    except Transient:
        pass
    else:
        raise AssertionError("the injected 503 should have been a transient failure")
    rec = wf.store.get_nad(ref, "default", "checked")
    assert rec.state == d.NAD_APPLYING and rec.claim.released and may_have_verify_pod(rec)
    out = send(wf, ref, "checked", message_id="verify-1", range="172.16.1.0/26", verify=True)  # the redelivery
    assert out.status == "done" and out.state == d.NAD_VERIFIED, out.message
    rec = wf.store.get_nad(ref, "default", "checked")
    assert rec.verify_pod.until > 0 and may_have_verify_pod(rec)
