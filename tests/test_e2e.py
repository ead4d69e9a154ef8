"""End to end: publisher -> Pub/Sub emulator -> push -> functions-framework -> workflow ->
Firestore emulator / sandbox GKE / sandbox cluster API. Nothing is mocked."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from multus_cli import main as cli
from shared.core.refs import ClusterRef
from tests.fakes import nad_doc
from tests.fixtures_stack import push, ref_of, wait_for, wait_nad, wait_state

pytestmark = pytest.mark.e2e

OPTED_IN = {"multus-provisioner": "enabled"}


def create(stack: Any, name: str, **overrides: Any) -> ClusterRef:
    from sandbox.gke.scenario import NodePoolSpec

    overrides.setdefault("labels", OPTED_IN)
    overrides.setdefault("node_pools", (NodePoolSpec("default-pool", node_count=1),))
    stack.gke.create_cluster(name, wait=False, **overrides)
    return ref_of(stack, name)


def request_nad(stack: Any, ref: ClusterRef, name: str, **fields: Any) -> str:
    body = {"cluster": ref.path, "name": name, **fields}
    return stack.publish("nad-requests", json.dumps(body).encode())


def history(store: Any, ref: ClusterRef) -> list[dict[str, Any]]:
    entries, _ = store.history(ref, page_size=500)
    return entries


def kube_engine(stack: Any, name: str) -> Any:
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    path = f"{stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{name}.yaml"
    return Kube(kconfig.new_client_from_config(config_file=path))


def test_happy_path_nad_before_cluster_then_ready_and_verified(stack, e2e_store, cluster_name, capsys):
    ref = ref_of(stack, cluster_name)
    request_nad(stack, ref, "early")
    doc = wait_nad(e2e_store, ref, "default", "early", "PENDING")
    assert "not known yet" in doc["message"]

    create(stack, cluster_name)
    rec = wait_state(e2e_store, ref, "READY", 40)
    assert rec.data["bundleVersion"].startswith("sha256:")
    assert rec.data["nodePool"]["cidr"] == "172.16.1.0/24"
    assert rec.data["rollout"]["complete"] is True
    doc = wait_nad(e2e_store, ref, "default", "early", "APPLIED")
    assert doc["range"] == "172.16.1.0/24"
    config = json.loads(doc["config"])
    assert config["plugins"][0]["ipam"] == {"type": "whereabouts", "range": "172.16.1.0/24"}

    kube = kube_engine(stack, cluster_name)
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "early") is not None
    ds = kube.daemonset_rollout("kube-system", "gke-multinet")
    assert ds.desired >= 2

    # Pub/Sub does not keep order: CreateCluster's first entry ("discover") may be delivered after
    # its last one drove the cluster to READY. Wait for every step's entry, then check them all.
    wanted = ("queue-nad", "discover", "create-node-pool", "precheck", "install", "apply-nad", "apply-nads")
    wait_for(lambda: set(wanted) <= {h["step"] for h in history(e2e_store, ref)}, timeout=60)
    steps = [h["step"] for h in history(e2e_store, ref)]
    for step in wanted:
        assert step in steps, steps

    # structured logs as Cloud Logging reads them: one JSON object per line, severity, event id, cluster
    lines = [json.loads(x) for x in stack.function_log("on_node_pool_event").splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("cluster") == ref.path]
    assert mine and all(x["severity"] in ("INFO", "WARNING", "ERROR") and x["eventId"] for x in mine)
    assert any(x.get("state") == "READY" and x.get("outcome") == "done" for x in mine)

    env_file = stack.write_env_file(stack.state_dir / "env")
    assert cli.main(["verify", "--sandbox", str(env_file), cluster_name, "default/early"]) == 0
    text = capsys.readouterr().out
    assert "VERIFIED" in text and "kernel: not checked" in text, text
    # --json: the pod and its peer on another node of the pool, each with Whereabouts' IPPool entry;
    # the simulated tier has no kernel to ask, so the data path says "not checked"
    assert cli.main(["verify", "--sandbox", str(env_file), "--json", cluster_name, "default/early"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["state"] == "VERIFIED"
    pods = out["datapath"]["pods"]
    assert len(pods) == 2 and pods[0]["node"] != pods[1]["node"], pods
    for pod in pods:
        assert pod["ippool"]["ip"] == pod["net1"][0] and pod["ippool"]["podref"] == f"default/{pod['pod']}"
        assert pod["kernel"] is None
    assert pods[0]["net1"] != pods[1]["net1"]
    assert out["datapath"]["reach"] == {"from": pods[0]["pod"], "to": pods[1]["net1"][0], "checked": False}
    assert nad_doc(e2e_store, ref, "default", "early")["state"] == "VERIFIED"
    assert cli.main(["status", "--sandbox", str(env_file), "--json", cluster_name]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "READY" and [n["state"] for n in status["nads"]] == ["VERIFIED"]


def _deliver_three_times(stack: Any, entries: list[dict], tag: str) -> list[int]:
    codes = []
    for i, entry in enumerate(entries):
        url = stack.function_urls[stack.audit_topic(entry)]
        payload, mid = json.dumps(entry).encode(), f"dup-{tag}-{i}"
        with ThreadPoolExecutor(3) as pool:
            codes += list(pool.map(lambda b, u=url, p=payload, m=mid: push(u, p, m, binary=b), [False, True, False]))
    return codes


def test_each_event_delivered_three_times_both_forms(stack, e2e_store, cluster_name):
    """Duplicates (same message id), concurrent, as raw push and as Eventarc CloudEvents."""
    stack.hold_audit()
    try:
        ref = create(stack, cluster_name)
        assert stack.gke.wait_idle(10)
        held_cluster = stack.take_audit()
        codes = _deliver_three_times(stack, held_cluster, cluster_name)
        wait_state(e2e_store, ref, "CREATING_NODE_POOL", 20)
        assert stack.gke.wait_idle(10)
        pool_entries = stack.take_audit()
        assert [e["protoPayload"]["methodName"].rsplit(".", 1)[-1] for e in pool_entries] == \
            ["CreateNodePool", "CreateNodePool"]
        codes += _deliver_three_times(stack, pool_entries, cluster_name + "-pool")
    finally:
        stack.take_audit(release=True)
    rec = wait_state(e2e_store, ref, "READY", 30)
    # Concurrent copies of one delivery: one runs, the others hear "busy, retry" (500), which is
    # what makes Pub/Sub redeliver them; every event was acknowledged by at least one copy.
    assert set(codes) <= {200, 500}, codes
    assert all(200 in codes[i:i + 3] for i in range(0, len(codes), 3)), codes
    # the redeliveries Pub/Sub would make: all acknowledged as duplicates, nothing changes
    before = history(e2e_store, ref)
    assert set(_deliver_three_times(stack, held_cluster, cluster_name)) == {200}
    assert set(_deliver_three_times(stack, pool_entries, cluster_name + "-pool")) == {200}
    assert history(e2e_store, ref) == before
    entries = history(e2e_store, ref)
    keys = [(h["eventId"], h["step"]) for h in entries if h.get("outcome") != "retry"]
    assert len(keys) == len(set(keys)), keys
    steps = [h["step"] for h in entries]
    assert steps.count("install") == 1 and steps.count("create-node-pool") == 1 and steps.count("discover") == 1
    assert rec.data["attempts"] == 0
    assert len(stack.gke.world.cluster_nodes("us-central1", cluster_name)) >= 2


def test_nad_while_cluster_is_not_ready_waits_then_applies(stack, e2e_store, cluster_name):
    stack.hold_audit()
    try:
        ref = create(stack, cluster_name)
        wait_for(lambda: stack.gke.wait_idle(0.1), 10, "cluster creation")
        held = stack.take_audit()
        for i, entry in enumerate(held):
            assert push(stack.function_urls[stack.audit_topic(entry)], json.dumps(entry).encode(),
                        f"nr-{cluster_name}-{i}") == 200
        wait_state(e2e_store, ref, "CREATING_NODE_POOL")
        request_nad(stack, ref, "mid", range="172.16.1.64/26")
        doc = wait_nad(e2e_store, ref, "default", "mid", "PENDING")
        assert "CREATING_NODE_POOL" in doc["message"]
        wait_for(lambda: stack.gke.wait_idle(0.1), 10, "node pool creation")
    finally:
        held = stack.take_audit(release=True)
    for entry in held:
        stack._route_audit(entry)
    wait_state(e2e_store, ref, "READY")
    doc = wait_nad(e2e_store, ref, "default", "mid", "APPLIED")
    assert doc["range"] == "172.16.1.64/26"


def test_cluster_not_opted_in_is_left_alone(stack, e2e_store, cluster_name):
    ref = create(stack, cluster_name, labels={"team": "web"})
    rec = wait_state(e2e_store, ref, "IGNORED")
    assert any(h["outcome"] == "ignored" for h in history(e2e_store, ref))
    assert "nodePoolRequested" not in rec.data
    assert stack.kube_server(cluster_name).stats.total == 0  # nothing was sent to the cluster
    request_nad(stack, ref, "nope")
    doc = wait_nad(e2e_store, ref, "default", "nope", "REJECTED")
    assert "not opted in" in doc["message"]


def test_ineligible_cluster_records_findings_and_rejects_nads(stack, e2e_store, cluster_name):
    ref = create(stack, cluster_name, version="1.27", dataplane_v2=False)
    rec = wait_state(e2e_store, ref, "INELIGIBLE")
    ids = {f["id"] for f in rec.data["findings"]}
    assert {"version", "dataplane-v2"} <= ids
    assert all(f["fix"] for f in rec.data["findings"])
    request_nad(stack, ref, "n1")
    assert "INELIGIBLE" in wait_nad(e2e_store, ref, "default", "n1", "REJECTED")["message"]


def test_invalid_requests_are_recorded_acknowledged_and_not_retried(stack, e2e_store, cluster_name):
    ref = ref_of(stack, cluster_name)
    url = stack.function_urls["on_nad_request"]
    bad = json.dumps({"cluster": ref.path, "name": "bad-range", "range": "172.16.1.5/24", "mode": "l9"}).encode()
    assert push(url, bad, f"bad-{cluster_name}") == 200
    assert push(url, b"\xff\xfe not json", f"garbage-{cluster_name}") == 200
    assert push(url, b'{"range": SECONDARY_RANGE_NAME}', f"seed-{cluster_name}", binary=True) == 200
    doc = wait_nad(e2e_store, ref, "default", "bad-range", "REJECTED")
    assert any("172.16.1.0/24" in r for r in doc["reasons"]) and any("mode" in r for r in doc["reasons"])
    rejections = e2e_store.list_rejections(ref)
    assert rejections and rejections[0]["problems"]
    top = e2e_store.list_rejections(None)
    assert any(r.get("eventId") == f"garbage-{cluster_name}" for r in top)
    # through Pub/Sub: handled once, acknowledged (no redelivery after a 2xx)
    request_nad(stack, ref, "UPPER")
    wait_for(lambda: any("UPPER" in (r.get("excerpt") or "") for r in e2e_store.list_rejections(ref)), 20,
             "rejection of UPPER")
    log = stack.function_log("on_nad_request")
    assert log.count('"UPPER"') == 0  # request bodies never reach the logs


def test_transient_gke_and_cluster_api_faults_then_success(stack, e2e_store, cluster_name):
    stack.gke.faults.fail("GetCluster", "UNAVAILABLE", times=1)
    stack.hold_audit()
    try:
        ref = create(stack, cluster_name)
        wait_for(lambda: stack.gke.wait_idle(0.1), 10, "cluster creation")
        server = stack.kube_server(cluster_name)
        server.faults.add("PATCH", r"/apis/apps/v1/namespaces/kube-system/daemonsets/gke-multinet", 503, times=1)
    finally:
        held = stack.take_audit(release=True)
    for entry in held:
        stack._route_audit(entry)
    rec = wait_state(e2e_store, ref, "READY", 60)
    retries = [h for h in history(e2e_store, ref) if h.get("outcome") == "retry"]
    assert len(retries) >= 2, [h["message"] for h in retries]
    assert any("UNAVAILABLE" in h["message"] or "unavailable" in h["message"].lower() for h in retries)
    assert any("apply-bundle" in h["message"] for h in retries)
    assert rec.data["attempts"] == 0


def test_nad_delete_and_cluster_deletion(stack, e2e_store, cluster_name):
    import grpc
    from google.cloud import container_v1
    from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    request_nad(stack, ref, "gone-soon", range="172.16.1.0/28")
    wait_nad(e2e_store, ref, "default", "gone-soon", "APPLIED")
    kube = kube_engine(stack, cluster_name)
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "gone-soon")
    request_nad(stack, ref, "gone-soon", action="delete")
    wait_nad(e2e_store, ref, "default", "gone-soon", "DELETED")
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "gone-soon") is None

    channel = grpc.insecure_channel(stack.env["MULTUS_PROVISIONER_GKE_ENDPOINT"])
    client = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    client.delete_cluster(name=ref.path)
    wait_state(e2e_store, ref, "DELETED", 30)
    channel.close()
    request_nad(stack, ref, "after")
    assert "deleted" in wait_nad(e2e_store, ref, "default", "after", "REJECTED")["message"]


def test_reconcile_repairs_deleted_daemonset_and_nad(stack, e2e_store, cluster_name):
    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    request_nad(stack, ref, "keep-me", range="172.16.1.128/26")
    wait_nad(e2e_store, ref, "default", "keep-me", "APPLIED")
    kube = kube_engine(stack, cluster_name)
    kube._call("DELETE", "/apis/apps/v1/namespaces/kube-system/daemonsets/gke-multinet")
    assert kube.delete_nad("default", "keep-me")
    assert kube.get("apps/v1", "DaemonSet", "kube-system", "gke-multinet") is None
    stack.publish("reconcile", json.dumps({"cluster": ref.path}).encode())
    wait_for(lambda: kube.get("apps/v1", "DaemonSet", "kube-system", "gke-multinet"), 30, "DaemonSet back")
    wait_for(lambda: kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "keep-me"), 30,
             "NAD back")
    repaired = wait_for(lambda: [h for h in history(e2e_store, ref) if h["step"] == "repair"], 10, "repair entry")
    assert "DaemonSet gke-multinet" in repaired[0]["message"] and "keep-me" in repaired[0]["message"]


def test_overlapping_and_out_of_range_nads_are_rejected_naming_both(stack, e2e_store, cluster_name):
    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    request_nad(stack, ref, "first", range="172.16.1.0/25")
    wait_nad(e2e_store, ref, "default", "first", "APPLIED")
    request_nad(stack, ref, "second", range="172.16.1.64/26")
    assert "overlaps default/first" in wait_nad(e2e_store, ref, "default", "second", "REJECTED")["message"]
    request_nad(stack, ref, "outside", range="10.9.0.0/24")
    msg = wait_nad(e2e_store, ref, "default", "outside", "REJECTED")["message"]
    assert "10.9.0.0/24" in msg and "172.16.1.0/24" in msg
    request_nad(stack, ref, "sysns", namespace="kube-system")
    assert "denied" in wait_nad(e2e_store, ref, "kube-system", "sysns", "REJECTED")["message"]
    kube = kube_engine(stack, cluster_name)
    names = sorted(o["metadata"]["name"] for o in kube.list_managed_nads())
    assert names == ["first"]  # nothing rejected reached the cluster


def test_an_unsigned_request_is_refused_and_recorded_a_signed_one_applied(stack, e2e_store, cluster_name):
    """Issue 24 through the real functions: the NAD topic is not an authority, the ID token is."""
    from sandbox.identity import SANDBOX_USER

    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    body = json.dumps({"cluster": ref.path, "name": "who-asked", "range": "172.16.1.0/28"}).encode()
    unsigned = stack.publish("nad-requests", body, signed=False)
    forged = stack.publish("nad-requests", body, **stack.requester_attributes(aud="someone-else"))
    found = wait_for(lambda: (lambda r: r if {unsigned, forged} <= set(r) else None)(
        {x["eventId"]: x for x in e2e_store.list_rejections(ref)}), 30, "both refusals recorded")
    for mid in (unsigned, forged):
        assert found[mid]["kind"] == "unauthenticated"
        assert found[mid]["problems"][0]["field"] == "attributes.idToken"
    assert nad_doc(e2e_store, ref, "default", "who-asked") is None  # refused before the NAD was touched
    signed = stack.publish("nad-requests", body)  # signed by the sandbox user, as request-nad does
    doc = wait_nad(e2e_store, ref, "default", "who-asked", "APPLIED")
    assert doc["lastRequest"]["messageId"] == signed and doc["lastRequest"]["requester"] == SANDBOX_USER
    assert any(h.get("requester") == SANDBOX_USER for h in history(e2e_store, ref) if h.get("nad"))
    kube = kube_engine(stack, cluster_name)
    assert [o["metadata"]["name"] for o in kube.list_managed_nads()] == ["who-asked"]


def _outcome_of(stack: Any, fn: str, message_id: str) -> str | None:
    for line in stack.function_log(fn).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("eventId") == message_id and "outcome" in entry:
            return entry["outcome"]
    return None


def _ledger_key(ref: ClusterRef, rid: str) -> str:
    from shared.flows.nad import _nad_ledger_key

    class _Req:
        request_id = rid
        cluster = ref

    return _nad_ledger_key("unused", _Req())


def test_request_id_deduplicates_republished_requests(stack, e2e_store, cluster_name):
    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    rid = uuid.uuid4().hex
    request_nad(stack, ref, "idem", range="172.16.1.192/27", request_id=rid)
    wait_nad(e2e_store, ref, "default", "idem", "APPLIED")
    same = request_nad(stack, ref, "idem", range="172.16.1.192/27", request_id=rid)
    assert wait_for(lambda: _outcome_of(stack, "on_nad_request", same), 20, "second request handled") == "duplicate"
    # the same key with another body is not a duplicate of the first: it is refused, saying why
    other = request_nad(stack, ref, "idem", range="172.16.1.192/27", request_id=rid, action="delete")
    assert wait_for(lambda: _outcome_of(stack, "on_nad_request", other), 20, "third request handled") == "rejected"
    doc = nad_doc(e2e_store, ref, "default", "idem")
    assert doc["state"] == "APPLIED" and doc["applied"]["range"] == "172.16.1.192/27"
    refusals = [r for r in e2e_store.list_rejections(ref) if r["eventId"] == other]
    assert refusals and refusals[0]["kind"] == "request-id-reused", refusals
    assert f"request_id {rid!r} was already used for a different request" in refusals[0]["problems"][0]["message"]
    ledger = e2e_store.get_ledger(_ledger_key(ref, rid))
    assert ledger is not None and (ledger.note.digest or "").startswith("sha256:") and ledger.note.request_id == rid
