"""Issue 12, "NAD truth": what Firestore says is what is on the cluster.

In-process against the real servers (Firestore emulator, sandbox GKE and cluster API), one test
per bullet of the issue; the story as it was reported, through Pub/Sub and the functions, is
`test_the_story_of_issue_12_end_to_end` at the end, and the invariants under random
concurrent sequences are tests/test_nad_invariants.py.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from shared.core import decisions as d
from shared.core import nad as nadlib
from shared.core.errors import Transient
from shared.core.events import decode_nad_request, decode_reconcile
from shared.core.refs import ClusterRef
from tests import test_workflow as _wf
from tests.fakes import nad_change, nad_doc
from tests.fixtures_stack import ref_of, wait_for, wait_state
from tests.test_workflow import ce, to_ready

local_stack, make_wf = _wf.local_stack, _wf.make_wf  # the in-process fixtures of tests/test_workflow.py

NAD = ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")


def send(wf: Any, ref: ClusterRef, name: str, message_id: str | None = None, **fields: Any) -> Any:
    return wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": name, **fields}, message_id)))


def kube(wf: Any, ref: ClusterRef) -> Any:
    return wf.ctx.kube_for(ref)


def on_cluster(wf: Any, ref: ClusterRef, name: str, namespace: str = "default") -> tuple[str, str] | None:
    obj = kube(wf, ref).get(*NAD, namespace, name)
    return nadlib.config_range(obj) if obj else None


def reconcile(wf: Any, ref: ClusterRef) -> Any:
    return wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))


def history_of(wf: Any, ref: ClusterRef) -> list[dict[str, Any]]:
    return wf.store.history(ref, page_size=1000)[0]


def unrecorded(wf: Any, ref: ClusterRef, name: str, cidr: str, master: str = "eth1") -> None:
    """A managed NAD put on the cluster by someone else (an older controller, a restore, kubectl)."""
    req = nadlib.parse_request({"cluster": ref.path, "name": name, "range": cidr, "master": master})
    kube(wf, ref).apply_nad(nadlib.render_nad(req, cidr))


# -- the record separates the applied part from the last request ---------------------------------

def test_refused_update_keeps_the_object_and_the_applied_part_and_says_so(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "net-a", range="172.16.1.0/26").status == "done"
    assert send(wf, ref, "net-b", range="172.16.1.64/26").status == "done"
    out = send(wf, ref, "net-a", message_id="upd-1", range="172.16.1.64/27")
    assert out.status == "rejected" and out.state == d.NAD_APPLIED
    doc = nad_doc(wf.store, ref, "default", "net-a")
    assert doc["state"] == "APPLIED" and doc["range"] == "172.16.1.0/26"
    assert doc["applied"]["range"] == "172.16.1.0/26" and doc["applied"]["master"] == "eth1"
    assert doc["applied"]["configDigest"] == nadlib.config_digest(doc["config"])
    assert json.loads(doc["config"])["plugins"][0]["ipam"]["range"] == "172.16.1.0/26"
    assert doc["message"].startswith("update refused: net-a keeps 172.16.1.0/26; range 172.16.1.64/27 overlaps "
                                     "default/net-b (172.16.1.64/26)"), doc["message"]
    last = doc["lastRequest"]
    assert (last["state"], last["messageId"], last["range"], last["action"]) == \
        ("REJECTED", "upd-1", "172.16.1.64/27", "apply")
    assert "overlaps default/net-b" in last["reasons"][0]
    assert on_cluster(wf, ref, "net-a") == ("eth1", "172.16.1.0/26")  # the object did not change
    entry = [h for h in history_of(wf, ref) if h["eventId"] == "upd-1"]
    assert entry and entry[0]["state"] == "APPLIED" and entry[0]["message"].startswith("update refused: net-a keeps")
    # an accepted update moves both parts
    out = send(wf, ref, "net-a", message_id="upd-2", range="172.16.1.128/26")
    assert out.status == "done"
    doc = nad_doc(wf.store, ref, "default", "net-a")
    assert doc["applied"]["range"] == doc["range"] == "172.16.1.128/26" and doc["lastRequest"]["messageId"] == "upd-2"
    assert "reasons" not in doc and on_cluster(wf, ref, "net-a") == ("eth1", "172.16.1.128/26")


def test_a_record_written_before_the_applied_part_existed_is_read_by_its_state(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "old", range="172.16.1.0/26").status == "done"
    doc = wf.store._nad_doc(ref, "default", "old")
    from google.cloud import firestore

    doc.update({"applied": firestore.DELETE_FIELD, "lastRequest": firestore.DELETE_FIELD})  # an old record
    assert send(wf, ref, "new", range="172.16.1.32/27").status == "rejected"
    assert send(wf, ref, "old", range="172.16.1.64/26", verify=False, mtu=1400,
                gateway="172.16.1.65").status == "done"
    assert nad_doc(wf.store, ref, "default", "old")["applied"]["range"] == "172.16.1.64/26"


# -- decisions count everything that is or may be on the cluster ---------------------------------

def test_overlap_and_limit_count_managed_objects_without_a_record(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_MAX_NADS_PER_CLUSTER="2")
    ref = to_ready(wf, local_stack)
    unrecorded(wf, ref, "stray", "172.16.1.0/26")
    out = send(wf, ref, "mine", range="172.16.1.0/27")
    assert out.status == "rejected"
    assert "overlaps default/stray (172.16.1.0/26) on master eth1 (found on the cluster)" in out.message
    assert send(wf, ref, "apart", range="172.16.1.64/27").status == "done"
    out = send(wf, ref, "third", range="172.16.1.128/27")
    assert out.status == "rejected" and "policy limit 2" in out.message, out.message


def test_a_claim_in_flight_makes_a_second_request_for_the_same_nad_wait(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "busy", range="172.16.1.0/26").status == "done"
    # a worker has claimed an update of `busy` and not finished (its claim is live)
    order = f"{time.time_ns():020d}~feedface"
    assert wf.store.put_nad(ref, "default", "busy",
                            change=nad_change(d.NAD_APPLYING, {"claimOrder": order, "claim": {
                                "range": "172.16.1.0/25", "master": "eth1", "ledger": "w1", "eventId": "w1"}}),
                            event_id="w1", step="claim-nad", history=False)
    with pytest.raises(Transient, match="busy"):
        send(wf, ref, "busy", range="172.16.1.64/26")
    # and its claimed range counts for the others meanwhile, besides the applied one
    out = send(wf, ref, "near", range="172.16.1.64/26")
    assert out.status == "rejected" and "busy (172.16.1.0/25)" in out.message, out.message


def test_a_transient_failure_gives_the_claim_back_to_the_redelivery(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    server = local_stack.kube_server(ref.cluster)
    server.faults.add("PATCH", r"/network-attachment-definitions/flaky$", 503, times=1)
    with pytest.raises(Transient):
        send(wf, ref, "flaky", message_id="fl-1", range="172.16.1.0/26")
    doc = nad_doc(wf.store, ref, "default", "flaky")
    assert doc["state"] == "APPLYING" and doc["claim"]["released"] is True and "503" in doc["claim"]["why"]
    assert send(wf, ref, "close", range="172.16.1.0/27").status == "rejected"  # its range stays reserved
    out = send(wf, ref, "flaky", message_id="fl-1", range="172.16.1.0/26")  # the redelivery, at once
    assert out.status == "done", out.message
    doc = nad_doc(wf.store, ref, "default", "flaky")
    assert doc["state"] == "APPLIED" and "claim" not in doc and doc["lastRequest"]["messageId"] == "fl-1"


# -- reconcile compares both ways ----------------------------------------------------------------

def test_reconcile_adopts_a_managed_object_without_record_that_conflicts_with_nothing(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    unrecorded(wf, ref, "found", "172.16.1.192/26")
    out = reconcile(wf, ref)
    assert any("adopted orphan NAD default/found" in r for r in out.details["repaired"]), out.details
    doc = nad_doc(wf.store, ref, "default", "found")
    assert doc["state"] == "APPLIED" and doc["applied"]["range"] == "172.16.1.192/26" and doc["adopted"]
    assert doc["config"] == kube(wf, ref).get(*NAD, "default", "found")["spec"]["config"]
    assert any(h["step"] == "adopt-nad" and h["message"].startswith("orphan adopted: default/found")
               for h in history_of(wf, ref))
    assert send(wf, ref, "late", range="172.16.1.192/27").status == "rejected"  # it counts now
    # a record's object deleted on the cluster comes back from the record
    kube(wf, ref).delete_nad("default", "found")
    reconcile(wf, ref)
    assert on_cluster(wf, ref, "found") == ("eth1", "172.16.1.192/26")


def test_reconcile_reports_a_conflicting_orphan_and_prunes_it_only_when_the_policy_says_so(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "owner", range="172.16.1.0/26").status == "done"
    unrecorded(wf, ref, "squatter", "172.16.1.32/27")
    reconcile(wf, ref)
    doc = nad_doc(wf.store, ref, "default", "squatter")
    assert doc["state"] == "ORPHANED" and doc["applied"]["range"] == "172.16.1.32/27"
    assert "overlaps default/owner (172.16.1.0/26)" in doc["orphan"]["reason"]
    assert doc["message"].startswith("orphan reported: default/squatter")
    assert on_cluster(wf, ref, "squatter") is not None  # never deleted silently
    reconcile(wf, ref)  # reported once, not at every run
    assert len([h for h in history_of(wf, ref) if h["step"] == "report-orphan"]) == 1
    # the operator switches pruning on (policy document): deleted, its config kept in the record
    wf.store._col("config").document("policy").set({"pruneOrphans": True})
    wf = make_wf()  # a fresh instance reads the policy now
    out = reconcile(wf, ref)
    assert any("pruned orphan NAD default/squatter" in r for r in out.details["repaired"]), out.details
    assert on_cluster(wf, ref, "squatter") is None
    doc = nad_doc(wf.store, ref, "default", "squatter")
    assert doc["state"] == "DELETED" and "applied" not in doc
    assert nadlib.config_range({"spec": {"config": doc["pruned"]["config"]}}) == ("eth1", "172.16.1.32/27")
    assert any(h["step"] == "prune-orphan" and h["message"].startswith("orphan pruned") for h in history_of(wf, ref))
    assert on_cluster(wf, ref, "owner") == ("eth1", "172.16.1.0/26")  # recorded NADs are never pruned


def test_prune_orphans_is_validated_in_the_policy_document_and_the_environment():
    from shared.core.policy import Policy
    from shared.core.settings import ConfigError, Settings

    assert Settings().prune_orphans is False
    assert Settings.from_env({"MULTUS_PROVISIONER_PRUNE_ORPHANS": "true"}).prune_orphans is True
    with pytest.raises(ConfigError, match="MULTUS_PROVISIONER_PRUNE_ORPHANS='maybe': expected true or false"):
        Settings.from_env({"MULTUS_PROVISIONER_PRUNE_ORPHANS": "maybe"})
    base = Policy.from_settings(Settings())
    assert base.merged({"pruneOrphans": True}).prune_orphans is True
    with pytest.raises(ConfigError, match="pruneOrphans: expected true or false"):
        base.merged({"pruneOrphans": "yes"})


# -- deletes are true ----------------------------------------------------------------------------

def test_a_delete_the_cluster_refused_is_not_recorded_as_done(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "stuck", range="172.16.1.0/26").status == "done"
    server = local_stack.kube_server(ref.cluster)
    server.faults.add("DELETE", r"/network-attachment-definitions/stuck$", 403, times=1)
    out = send(wf, ref, "stuck", message_id="del-1", action="delete")
    assert out.status == "failed" and out.state == d.NAD_APPLIED
    assert server.faults.pending() == []
    doc = nad_doc(wf.store, ref, "default", "stuck")
    assert doc["state"] == "APPLIED" and doc["applied"]["range"] == "172.16.1.0/26"
    assert doc["lastRequest"]["state"] == "FAILED" and doc["lastRequest"]["action"] == "delete"
    assert doc["message"].startswith("delete refused by the cluster: stuck keeps 172.16.1.0/26")
    assert on_cluster(wf, ref, "stuck") is not None
    assert send(wf, ref, "overlap", range="172.16.1.0/27").status == "rejected"  # still counted
    assert send(wf, ref, "stuck", action="delete").status == "done"
    assert on_cluster(wf, ref, "stuck") is None
    assert send(wf, ref, "overlap", range="172.16.1.0/27").status == "done"  # freed at once


def test_a_delete_while_the_cluster_is_not_ready_waits_then_is_carried_out(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    assert send(wf, ref, "later", range="172.16.1.0/26").status == "done"
    wf.store.claim(ref, event_id="upgrade", step="install")
    wf.store.advance(ref, event_id="upgrade", step="install", state=d.INSTALLING, release=True)
    out = send(wf, ref, "later", message_id="del-2", action="delete")
    assert out.status == "pending" and out.state == d.NAD_PENDING
    doc = nad_doc(wf.store, ref, "default", "later")
    assert doc["state"] == "PENDING" and doc["applied"]["range"] == "172.16.1.0/26"
    assert doc["lastRequest"]["action"] == "delete" and "delete waits" in doc["message"]
    assert on_cluster(wf, ref, "later") is not None
    assert send(wf, ref, "near", range="172.16.1.0/27").status == "pending"  # no range check before READY
    wf.store.claim(ref, event_id="upgrade-done", step="install")
    wf.store.advance(ref, event_id="upgrade-done", step="install", state=d.READY, release=True)
    reconcile(wf, ref)
    doc = nad_doc(wf.store, ref, "default", "later")
    assert doc["state"] == "DELETED" and doc["lastRequest"]["messageId"] == "del-2" and "applied" not in doc
    assert on_cluster(wf, ref, "later") is None
    assert nad_doc(wf.store, ref, "default", "near")["state"] == "APPLIED"


def test_a_delete_of_a_nad_never_applied_is_done_at_once(local_stack, make_wf):
    wf = make_wf()
    ref = ClusterRef(local_stack.project, "us-central1", f"nope-{uuid.uuid4().hex[:6]}")
    assert send(wf, ref, "queued", range="172.16.1.0/26").status == "pending"
    out = send(wf, ref, "queued", action="delete")
    assert out.status == "done" and out.state == d.NAD_DELETED
    assert "not on the cluster" in nad_doc(wf.store, ref, "default", "queued")["message"]


# -- verify pods never linger --------------------------------------------------------------------

def test_the_verify_pod_is_deleted_even_when_the_first_delete_fails(local_stack, make_wf):
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    server = local_stack.kube_server(ref.cluster)
    server.faults.add("DELETE", r"/api/v1/namespaces/default/pods/mp-verify-", 503, times=2)
    out = send(wf, ref, "checked", range="172.16.1.0/26", verify=True)
    assert out.status == "done" and out.state == d.NAD_VERIFIED, out.message
    assert server.faults.pending() == []  # both failed deletes happened; the third one worked
    assert kube(wf, ref).list_pods("multus-provisioner.io/purpose=verify") == []


def test_reconcile_removes_leftover_verify_pods_whose_check_is_over(local_stack, make_wf):
    from shared.flows.verify import VERIFY_UNTIL_ANNOTATION, mark_verifying, verify_pod_manifest

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    k = kube(wf, ref)
    # reconcile looks for verify pods when a record says one can exist (issue 21): a verification started
    assert send(wf, ref, "whatever", range="172.16.1.0/26").status == "done"
    mark_verifying(wf.store, ref, "default", "whatever", event_id="verify-1", timeout=3600)
    for name, until in (("mp-verify-old-1", time.time() - 5), ("mp-verify-now-1", time.time() + 3600)):
        pod = verify_pod_manifest(name, "default", "whatever", None)
        pod["metadata"]["annotations"][VERIFY_UNTIL_ANNOTATION] = f"{until:.0f}"
        k.create_pod(pod)
    out = reconcile(wf, ref)
    assert any("removed leftover verify pod default/mp-verify-old-1" in r for r in out.details["repaired"])
    assert wait_for(lambda: k.get_pod("default", "mp-verify-old-1") is None, 10, "old verify pod gone")
    assert k.get_pod("default", "mp-verify-now-1") is not None  # a check still running is left alone
    k.delete_pod("default", "mp-verify-now-1")


# -- the story, end to end through Pub/Sub and the functions ---------------------------------------

@pytest.mark.e2e
def test_the_story_of_issue_12_end_to_end(stack, e2e_store, cluster_name):
    from tests.test_e2e import create, kube_engine, request_nad

    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref_of(stack, cluster_name), "READY", 40)

    def outcome(name: str, message_id: str) -> dict[str, Any] | None:
        doc = nad_doc(e2e_store, ref, "default", name) or {}
        last = doc.get("lastRequest") or {}
        return doc if last.get("messageId") == message_id and last.get("state") in d.REQUEST_SETTLED else None

    def settled(name: str, message_id: str) -> dict[str, Any]:
        return wait_for(lambda: outcome(name, message_id), 30, f"{name}'s outcome of {message_id}")

    assert settled("net-a", request_nad(stack, ref, "net-a", range="172.16.1.0/26"))["state"] == "APPLIED"
    assert settled("net-b", request_nad(stack, ref, "net-b", range="172.16.1.64/26"))["state"] == "APPLIED"
    doc = settled("net-a", request_nad(stack, ref, "net-a", range="172.16.1.64/27"))
    assert doc["lastRequest"]["state"] == "REJECTED"
    assert doc["state"] == "APPLIED" and doc["applied"]["range"] == "172.16.1.0/26" == doc["range"]
    assert doc["message"].startswith("update refused: net-a keeps 172.16.1.0/26; range 172.16.1.64/27 overlaps "
                                     "default/net-b")
    k = kube_engine(stack, cluster_name)
    assert nadlib.config_range(k.get(*NAD, "default", "net-a")) == ("eth1", "172.16.1.0/26")  # unchanged
    doc = settled("net-c", request_nad(stack, ref, "net-c", range="172.16.1.0/27"))
    assert doc["state"] == "REJECTED" and "overlaps default/net-a (172.16.1.0/26)" in doc["message"]
    assert settled("net-a", request_nad(stack, ref, "net-a", action="delete"))["state"] == "DELETED"
    assert k.get(*NAD, "default", "net-a") is None
    doc = settled("net-c", request_nad(stack, ref, "net-c", range="172.16.1.0/27"))
    assert doc["state"] == "APPLIED" and doc["applied"]["range"] == "172.16.1.0/27"
    assert nadlib.config_range(k.get(*NAD, "default", "net-c")) == ("eth1", "172.16.1.0/27")
