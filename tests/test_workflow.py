"""The workflow in-process against real servers (Firestore emulator, sandbox GKE and cluster APIs).

The end-to-end suite proves the same paths through Pub/Sub and functions-framework; here the
workflow is called directly, so that branches that are awkward to reach through the wire
(policy documents, attempts exhausted, permanent errors, stalled workflows) are tested exactly.
Flow logic that needs no real server (opt-in by labels, re-checks, adoption, a re-created
cluster found by reconcile) runs on the fakes in tests/test_flows_on_fakes.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.gke.scenario import NodePoolSpec
from sandbox.stack import Stack
from shared.app import Controller
from shared.core import decisions as d
from shared.core.errors import NotYet, Transient
from shared.core.events import decode_audit, decode_nad_request, decode_reconcile
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from tests.fakes import nad_docs


@pytest.fixture(scope="module")
def local_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from sandbox.gke.realism import Realism

    # Realistic: three zones per regional pool, the captured audit shapes, GKE's own operation after
    # each create (which `new_cluster` ends at once: these tests call the workflow by hand, so a
    # refusal would surface as the Busy error Pub/Sub retries; test_ordinary_day.py lets it run).
    s = Stack(state_dir=Path(tmp_path_factory.mktemp("local")), emulators=emulators, operation_delay=0.05,
              crd_delay=0.05, rollout_delay=0.05, with_functions=False, realism=Realism())
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_wf(local_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_stack.env["FIRESTORE_EMULATOR_HOST"])
    prefix = f"wf{uuid.uuid4().hex[:8]}_"

    def make(**env: str) -> Controller:
        settings = Settings.from_env({**local_stack.env, "MULTUS_PROVISIONER_COLLECTION_PREFIX": prefix,
                                      "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "2", **env})
        return Controller(settings)

    return make


def ce(payload: dict[str, Any] | bytes, message_id: str | None = None) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    mid = message_id or uuid.uuid4().hex
    return {"id": mid, "data": {"message": {"data": base64.b64encode(data).decode(), "messageId": mid}}}


def new_cluster(stack: Stack, **overrides: Any) -> tuple[ClusterRef, list[dict[str, Any]]]:
    """Create a cluster in the GKE sandbox; returns its ref and the audit entries it produced."""
    name = f"wf-{uuid.uuid4().hex[:8]}"
    overrides.setdefault("labels", {"multus-provisioner": "enabled"})
    overrides.setdefault("node_pools", (NodePoolSpec("default-pool"),))
    stack.gke.create_cluster(name, wait=True, **overrides)
    end_own_operation(stack, name)
    entries = [e for e in stack.take_audit() if name in json.dumps(e)]
    return ClusterRef(stack.project, "us-central1", name), entries


def end_own_operation(stack: Stack, name: str) -> None:
    """End GKE's own operation that starts as a create ends (see `local_stack`)."""
    op = stack.gke.world.running_operation("us-central1", name)
    if op is not None:
        stack.gke.world.complete_operation(op.name)


def feed(wf: Controller, stack: Stack, entries: list[dict[str, Any]]) -> list[Any]:
    return [wf.handle_audit(decode_audit(ce(e))) for e in entries]


def to_ready(wf: Controller, stack: Stack, **overrides: Any) -> ClusterRef:
    ref, entries = new_cluster(stack, **overrides)
    feed(wf, stack, entries)  # -> CREATING_NODE_POOL
    assert stack.gke.wait_idle(10)
    feed(wf, stack, [e for e in stack.take_audit() if ref.cluster in json.dumps(e)])
    assert wf.store.get_cluster(ref).state == d.READY
    return ref


def test_policy_document_overrides_settings_and_default_nads_apply_on_first_ready(local_stack, make_wf):
    from shared.core.settings import ConfigError

    wf = make_wf()
    policy = wf.store._col("config").document("policy")
    policy.set({"deniedNamespaces": ["blocked"], "maxNadsPerCluster": 3,
                "defaultNads": [{"name": "default-net", "range": "172.16.1.0/28"},
                                {"name": "Broken Name"}]})
    ref, entries = new_cluster(local_stack)
    # the configuration is validated before the event is handled: one error naming the field, no lease taken
    with pytest.raises(ConfigError, match=r"defaultNads\[1\]\.name"):
        wf.handle_audit(decode_audit(ce(entries[-1])))
    assert wf.store.get_cluster(ref) is None
    policy.set({"deniedNamespaces": ["blocked"], "maxNadsPerCluster": 3, "protectedNamespaces": [],
                "defaultNads": [{"name": "default-net", "range": "172.16.1.0/28"}]})
    wf = make_wf()  # a fresh instance reads the fixed document at once (others within a minute)
    feed(wf, local_stack, entries)
    assert local_stack.gke.wait_idle(10)
    feed(wf, local_stack, [e for e in local_stack.take_audit() if ref.cluster in json.dumps(e)])
    assert wf.store.get_cluster(ref).state == d.READY
    nads = {n["name"]: n for n in nad_docs(wf.store, ref)}
    assert nads["default-net"]["state"] == d.NAD_APPLIED and nads["default-net"]["range"] == "172.16.1.0/28"
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "x", "namespace": "blocked"})))
    assert out.status == "rejected" and "denied by policy" in out.message
    # kube-system is allowed now: the document replaced the default deny list and lifted the protected
    # namespaces (kube-*, gke-*, gmp-*, istio-system: issue 24), which replacing deniedNamespaces alone does not
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "sys", "namespace": "kube-system",
                                               "range": "172.16.1.16/28"})))
    assert out.status == "done", out.message
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "third", "range": "172.16.1.32/28"})))
    assert out.status == "done"
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "fourth", "range": "172.16.1.48/28"})))
    assert out.status == "rejected" and "policy limit 3" in out.message


def test_invalid_policy_document_is_reported_by_name(local_stack, make_wf):
    from shared.core.settings import ConfigError

    wf = make_wf()
    wf.store._col("config").document("policy").set({"maxNads": 3})
    with pytest.raises(ConfigError, match="unknown field"):
        wf.policy()


def test_transient_errors_retry_then_fail_after_max_attempts(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_MAX_ATTEMPTS="2")
    ref, entries = new_cluster(local_stack)
    last = [e for e in entries if e.get("operation", {}).get("last")]
    event = decode_audit(ce(last[0]))
    local_stack.gke.faults.fail("GetCluster", "UNAVAILABLE", times=5)
    try:
        with pytest.raises(Transient):
            wf.handle_audit(event)
        rec = wf.store.get_cluster(ref)
        assert rec.data["attempts"] == 1 and rec.data["lease"] is None and rec.data["lastError"]["step"] == "precheck"
        out = wf.handle_audit(event)  # the redelivery: second attempt, limit reached
    finally:
        local_stack.gke.faults.clear()
    assert out.status == "failed" and out.state == d.FAILED and "gave up after 2 attempts" in out.message
    assert wf.handle_audit(event).status == "duplicate"  # acknowledged: the ledger has it
    outcomes = [h["outcome"] for h in wf.store.history(ref, page_size=50)[0]]
    assert outcomes.count("retry") == 2 and outcomes.count("failed") == 1


def test_gke_busy_with_another_operation_is_retried_without_burning_attempts(local_stack, make_wf):
    """"Cluster is running incompatible operation" passes when GKE's operation ends: the step is
    retried (Pub/Sub redelivers) as often as it takes within busy_wait_seconds, attempts stay 0."""
    wf = make_wf(MULTUS_PROVISIONER_MAX_ATTEMPTS="1")
    ref, entries = new_cluster(local_stack)
    last = decode_audit(ce(next(e for e in entries if e.get("operation", {}).get("last"))))
    local_stack.gke.faults.fail("CreateNodePool", "FAILED_PRECONDITION", times=3,
                                message="Cluster is running incompatible operation operation-1700000000000-abcd.")
    try:
        for _ in range(3):  # more refusals than MAX_ATTEMPTS allows failures
            with pytest.raises(Transient, match="incompatible operation"):
                wf.handle_audit(last)
            rec = wf.store.get_cluster(ref)
            assert rec.attempts == 0 and rec.data["lease"] is None and rec.data["busySince"]
            assert "waiting for GKE's operation operation-1700000000000-abcd" in rec.last_error["message"]
    finally:
        local_stack.gke.faults.clear()
    out = wf.handle_audit(last)  # the operation is over: the same event goes on
    assert out.state == d.CREATING_NODE_POOL, out.message
    assert "busySince" not in wf.store.get_cluster(ref).data


def test_gke_busy_for_longer_than_busy_wait_seconds_fails_with_gke_message(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_BUSY_WAIT_SECONDS="0")
    _ref, entries = new_cluster(local_stack)
    last = decode_audit(ce(next(e for e in entries if e.get("operation", {}).get("last"))))
    local_stack.gke.faults.fail("CreateNodePool", "FAILED_PRECONDITION", times=1,
                                message="Cluster is running incompatible operation operation-1-x.")
    try:
        out = wf.handle_audit(last)
    finally:
        local_stack.gke.faults.clear()
    assert out.state == d.FAILED and "still busy with another operation after 0s" in out.message
    assert "incompatible operation" in out.message


def test_permanent_error_fails_at_once_with_the_api_message(local_stack, make_wf):
    wf = make_wf()
    ref, entries = new_cluster(local_stack)
    local_stack.gke.faults.fail("CreateNodePool", "PERMISSION_DENIED", times=1,
                                message="Required 'container.clusters.update' permission")
    try:
        out = feed(wf, local_stack, entries)[-1]
    finally:
        local_stack.gke.faults.clear()
    assert out.status == "failed" and "container.clusters.update" in out.message
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.FAILED and "create-node-pool" in rec.data["lastError"]["message"]


def test_reconcile_resumes_a_workflow_whose_event_was_lost(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_STALL_SECONDS="1")
    ref, entries = new_cluster(local_stack)
    feed(wf, local_stack, entries)
    assert wf.store.get_cluster(ref).state == d.CREATING_NODE_POOL
    assert local_stack.gke.wait_idle(10)
    local_stack.take_audit()  # the node pool's audit entries are lost
    import time

    time.sleep(1.1)
    out = wf.reconcile(decode_reconcile(ce(b"")))
    assert any(ref.path in r and "READY" in r for r in out.details["resumed"]), out.details
    assert wf.store.get_cluster(ref).state == d.READY


def test_reconcile_adopts_an_opted_in_cluster_without_workflow(local_stack, make_wf):
    wf = make_wf()
    ref, _ = new_cluster(local_stack)  # its audit entries never reach the controller
    out = wf.reconcile(decode_reconcile(ce(b"{}")))
    assert any(ref.path in a for a in out.details["adopted"]), out.details
    assert wf.store.get_cluster(ref).state == d.CREATING_NODE_POOL
    # demo-legacy (in the scenario from the start, opted in, ineligible) is adopted too
    legacy = ClusterRef(local_stack.project, "us-central1", "demo-legacy")
    assert wf.store.get_cluster(legacy).state == d.INELIGIBLE


def test_node_pool_deletion_is_recorded(local_stack, make_wf):
    import grpc
    from google.cloud import container_v1
    from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    channel = grpc.insecure_channel(local_stack.env["MULTUS_PROVISIONER_GKE_ENDPOINT"])
    client = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    client.delete_node_pool(name=f"{ref.path}/nodePools/multus-pool")
    channel.close()
    assert local_stack.gke.wait_idle(10)
    outs = feed(wf, local_stack, [e for e in local_stack.take_audit() if ref.cluster in json.dumps(e)])
    assert outs[0].status == "ignored"  # first entry: noted
    rec = wf.store.get_cluster(ref)
    # the only pool with extra networks is gone: the template makes the controller create it again
    assert rec.state == d.CREATING_NODE_POOL, rec.state


def set_labels(stack: Stack, ref: ClusterRef, labels: dict[str, str]) -> None:
    """SetLabels as gcloud sends it: the current fingerprint, all labels replaced."""
    from google.cloud import container_v1 as c

    world = stack.gke.world
    cluster = world.get_cluster(c.GetClusterRequest(name=ref.path))
    world.set_labels(c.SetLabelsRequest(name=ref.path, resource_labels=labels,
                                        label_fingerprint=cluster.label_fingerprint))
    assert stack.gke.wait_idle(10)


def test_a_cluster_deleted_and_created_again_starts_a_new_incarnation_with_both_histories(local_stack, make_wf):
    from google.cloud import container_v1 as c

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    first_id = wf.store.get_cluster(ref).data["clusterId"]
    assert first_id and wf.store.get_cluster(ref).data["createTime"]
    local_stack.gke.world.delete_cluster(c.DeleteClusterRequest(name=ref.path))
    assert local_stack.gke.wait_idle(10)
    feed(wf, local_stack, [e for e in local_stack.take_audit() if ref.cluster in json.dumps(e)])
    assert wf.store.get_cluster(ref).state == d.DELETED
    local_stack.gke.create_cluster(ref.cluster, wait=True, labels={"multus-provisioner": "enabled"},
                                   node_pools=(NodePoolSpec("default-pool"),))
    end_own_operation(local_stack, ref.cluster)
    outs = feed(wf, local_stack, [e for e in local_stack.take_audit() if ref.cluster in json.dumps(e)])
    assert outs[-1].state == d.CREATING_NODE_POOL, outs[-1].message
    assert local_stack.gke.wait_idle(10)
    feed(wf, local_stack, [e for e in local_stack.take_audit() if ref.cluster in json.dumps(e)])
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.READY and rec.data["clusterId"] != first_id and rec.data["incarnation"] == 2
    assert rec.data["previousIncarnations"][-1]["clusterId"] == first_id
    assert rec.data["previousIncarnations"][-1]["endState"] == d.DELETED
    messages = [h["message"] for h in wf.store.history(ref, page_size=200)[0]]
    assert f"new incarnation {rec.data['clusterId']}, previous {first_id}" in " ".join(messages)
    assert sum("bundle " in m and "applied" in m for m in messages) == 2  # both incarnations' installs


def settle(wf: Controller, stack: Stack, ref: ClusterRef, rounds: int = 8) -> list[Any]:
    """Feed the cluster's audit entries as GKE writes them until GKE is idle and nothing new came."""
    outs: list[Any] = []
    for _ in range(rounds):
        assert stack.gke.wait_idle(10)
        entries = [e for e in stack.take_audit() if ref.cluster in json.dumps(e)]
        if not entries:
            return outs
        outs += feed(wf, stack, entries)
    return outs


def test_a_node_pool_that_fails_transiently_is_deleted_and_created_again(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_NODE_POOL_RETRY_SECONDS="0")
    ref, entries = new_cluster(local_stack)
    local_stack.gke.world.fail_node_pool(ref.cluster, "multus-pool", "GCE_STOCKOUT", times=1)
    feed(wf, local_stack, entries)
    settle(wf, local_stack, ref)
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.READY, rec.data.get("lastError")
    assert rec.data["nodePoolRequested"]["attempt"] == 2
    assert rec.data["nodePoolRequested"]["failures"][0]["reason"] == "GCE_STOCKOUT"
    messages = [h["message"] for h in wf.store.history(ref, page_size=200)[0]]
    failed = next(m for m in messages if "failed in GKE (GCE_STOCKOUT)" in m)
    assert "[GCE_STOCKOUT]" in failed and "attempt 1 of 5" in failed and "creating it again" in failed


def test_a_node_pool_that_keeps_failing_ends_failed_with_gke_message_and_the_fix(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_NODE_POOL_RETRY_SECONDS="0", MULTUS_PROVISIONER_MAX_ATTEMPTS="2")
    ref, entries = new_cluster(local_stack)
    local_stack.gke.world.fail_node_pool(ref.cluster, "multus-pool", "QUOTA_EXCEEDED", times=5)
    feed(wf, local_stack, entries)
    settle(wf, local_stack, ref)
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.FAILED
    message = rec.last_error["message"]
    assert "[QUOTA_EXCEEDED]" in message and "Quota 'CPUS' exceeded" in message, message
    assert "gave up after 2 attempts" in message and "Fix: raise the quota" in message
    outcomes = [h["outcome"] for h in wf.store.history(ref, page_size=200)[0] if h["step"].startswith("node-pool-f")]
    assert sorted(outcomes) == ["failed", "retry"]


def test_reconcile_reads_the_stored_operation_when_the_failure_event_was_lost(local_stack, make_wf):
    wf = make_wf(MULTUS_PROVISIONER_STALL_SECONDS="1", MULTUS_PROVISIONER_MAX_ATTEMPTS="1")
    ref, entries = new_cluster(local_stack)
    local_stack.gke.world.fail_node_pool(ref.cluster, "multus-pool", "GCE_STOCKOUT", times=1)
    feed(wf, local_stack, entries)
    assert local_stack.gke.wait_idle(10)
    local_stack.take_audit()  # the failed CreateNodePool's entries are lost
    import time

    time.sleep(1.1)
    wf.reconcile(decode_reconcile(ce(b"")))
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.FAILED and "[GCE_STOCKOUT]" in rec.last_error["message"]


def test_long_waits_renew_the_lease_and_a_lost_lease_stops_the_step(local_stack, make_wf):
    """The CRD wait and the rollout wait can outlast a lease: the drive renews it every third of a
    lease (through the real store), and another delivery cannot renew a lease it does not hold."""
    from shared.adapters.kube import Rollout
    from shared.flows.context import Cursor

    wf = make_wf(MULTUS_PROVISIONER_LEASE_SECONDS="5", MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS="5",
                 MULTUS_PROVISIONER_CRD_POLL_SECONDS="0.05",
                 MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS="60")
    ref = to_ready(wf, local_stack)
    wf.store.claim(ref, event_id="long-install", step="install")
    renewals: list[str] = []

    def renew(step: str) -> None:
        wf.store.hold(ref, holder="long-install", step=step)
        renewals.append(step)

    class SlowCluster:
        """Our ClusterApiPort with slow CRDs and a rollout that completes only after a renewal in it."""

        requests = 0
        waits = 0

        def apply(self, objects: Any) -> list[Any]:
            return list(objects)

        def wait_established(self, names: Any, *, timeout: float = 60.0, poll: float = 1.0) -> int:
            self.waits += 1
            if self.waits < 3:
                raise NotYet("CRDs not Established yet", api="kubernetes")  # the port's "not yet"
            return 1

        def daemonset_rollout(self, namespace: str, name: str) -> Rollout:
            done = "rollout" in renewals
            return Rollout(desired=3, updated=3 if done else 1, ready=3 if done else 1,
                           available=3 if done else 1, observed=True)

    report = wf.clusters._install(SlowCluster(), wf.ctx.bundle(), Cursor("install"), renew=renew)
    assert report["rollout"]["complete"] is True
    assert renewals.count("wait-crds") == 3 and "apply-bundle" in renewals and "rollout" in renewals
    lease = wf.store.get_cluster(ref).lease
    assert lease.holder == "long-install" and lease.step == "rollout"
    with pytest.raises(Transient, match="busy"):
        wf.store.hold(ref, holder="another-delivery", step="rollout")
    wf.store.hold(ref, holder="long-install", step="rollout", seconds=0)
    assert wf.store.get_cluster(ref).lease is None


def test_reconcile_claims_a_ready_cluster_before_it_repairs_anything(local_stack, make_wf):
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "net1", "range": "172.16.1.0/28"})))
    assert out.status == "done", out.message
    path = f"{local_stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{ref.cluster}.yaml"
    kube = Kube(kconfig.new_client_from_config(config_file=path))
    assert kube.delete_nad("default", "net1")
    wf.store.claim(ref, event_id="someone-else", step="install")  # another delivery works on the cluster
    out = wf.reconcile(decode_reconcile(ce(b"{}")))
    assert any(ref.path in e and "busy" in e for e in out.details["errors"]), out.details
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "net1") is None  # untouched
    wf.store.hold(ref, holder="someone-else", step="install", seconds=0)
    out = wf.reconcile(decode_reconcile(ce(b"{}")))
    assert any(ref.path in r and "re-created NAD default/net1" in r for r in out.details["repaired"]), out.details
    assert wf.store.get_cluster(ref).lease is None


def test_a_bad_bundle_option_is_one_clear_error_and_never_leaks_a_lease(local_stack, make_wf):
    from shared.core.settings import ConfigError

    ref, entries = new_cluster(local_stack)
    bad = make_wf(MULTUS_PROVISIONER_MULTUS_IMAGE="ghcr.io/k8snetworkplumbingwg/multus-cni:latest")
    with pytest.raises(ConfigError, match="MULTUS_PROVISIONER_MULTUS_IMAGE"):
        bad.handle_audit(decode_audit(ce(entries[-1])))
    with pytest.raises(ConfigError, match="MULTUS_PROVISIONER_MULTUS_IMAGE"):
        bad.reconcile(decode_reconcile(ce(b"{}")))
    assert bad.store.get_cluster(ref) is None
    good = make_wf()
    assert feed(good, local_stack, entries)[-1].state == d.CREATING_NODE_POOL
    assert good.store.get_cluster(ref).lease is None
