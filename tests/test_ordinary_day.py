"""GKE on an ordinary day (issue 11): every cluster's story ends right, end to end.

Publisher / sandbox GKE -> Logging sink stand-in -> Pub/Sub emulator -> push -> functions-framework
-> the real functions -> Firestore emulator, against a *realistic* sandbox (sandbox/gke/realism.py:
GKE's own operation after each create, three zones per regional pool, the captured audit shapes, a
single ERROR entry per refusal). Nothing is mocked; the GKE client is the unmodified
ClusterManagerClient, as a user or Terraform would drive it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.cloud import container_v1 as c
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

from sandbox.gke.realism import Realism
from sandbox.gke.scenario import DEFAULT_SCENARIO, NodeNetwork, NodePoolSpec, PodNetwork
from shared.core import endpoints
from shared.core.errors import NeedsFix, Transient
from shared.core.refs import ClusterRef
from tests.fixtures_stack import direct_store, start_stack, wait_for, wait_nad, wait_state

pytestmark = pytest.mark.e2e

OPTED_IN = {"multus-provisioner": "enabled"}
HOST = "shared-vpc-host"
REGION = "us-central1"


@pytest.fixture(scope="module")
def day(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A realistic stack with a Shared VPC host. GKE's own operation after every create does not end by
    itself (a test ends it with `finish_own_operation`), so no story depends on how fast a cold
    function instance is."""
    state = Path(tmp_path_factory.mktemp("ordinary-day"))
    scenario = yaml.safe_load(Path(DEFAULT_SCENARIO).read_text())
    scenario["subnetworks"] += [
        {"project": HOST, "network": "shared-vpc", "subnetwork": "shared-subnet", "region": REGION,
         "primary_range": "10.20.0.0/24", "secondary_ranges": {"shared-pods": "172.20.0.0/24"}},
        {"project": HOST, "network": "shared-vpc", "subnetwork": "locked-subnet", "region": REGION,
         "primary_range": "10.21.0.0/24", "secondary_ranges": {"locked-pods": "172.21.0.0/24"},
         "network_user": False}]
    path = state / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    patient = dataclasses.replace(Realism(), own_operation_seconds=600)
    s = start_stack(emulators, state, f"day{uuid.uuid4().hex[:6]}_", scenario=path, realism=patient,
                    reconcile_every=None,
                    env={"MULTUS_PROVISIONER_MAX_ATTEMPTS": "3", "MULTUS_PROVISIONER_NODE_POOL_RETRY_SECONDS": "1"})
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def store(day: Any) -> Any:
    return direct_store(day)


@pytest.fixture
def client(day: Any) -> Iterator[c.ClusterManagerClient]:
    channel = grpc.insecure_channel(day.env["MULTUS_PROVISIONER_GKE_ENDPOINT"])
    yield c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    channel.close()


def name() -> str:
    return f"day-{uuid.uuid4().hex[:8]}"


def create(day: Any, cluster: str, *, own_operation: bool = False, **overrides: Any) -> ClusterRef:
    """CreateCluster as a user does; GKE's own operation that follows is ended at once unless
    `own_operation` (then the test ends it with `finish_own_operation`)."""
    overrides.setdefault("labels", OPTED_IN)
    overrides.setdefault("node_pools", (NodePoolSpec("default-pool"),))
    day.gke.create_cluster(cluster, wait=False, **overrides)
    ref = ClusterRef(day.project, overrides.get("location", REGION), cluster)
    if not own_operation:
        finish_own_operation(day, ref)
    return ref


def finish_own_operation(day: Any, ref: ClusterRef) -> None:
    """Wait for GKE's own operation on the new cluster (it starts as the create ends), then end it."""
    def own() -> Any:
        op = day.gke.world.running_operation(ref.location, ref.cluster)
        return op if op is not None and op.operation_type == c.Operation.Type.UPGRADE_NODES else None

    op = wait_for(own, 30, f"GKE's own operation on {ref.cluster}")
    day.gke.world.complete_operation(op.name)


def history(store: Any, ref: ClusterRef) -> list[dict[str, Any]]:
    return store.history(ref, page_size=500)[0]


def messages(store: Any, ref: ClusterRef) -> str:
    return "\n".join(h.get("message", "") for h in history(store, ref))


def request_nad(day: Any, ref: ClusterRef, nad: str, **fields: Any) -> str:
    return day.publish("nad-requests", json.dumps({"cluster": ref.path, "name": nad, **fields}).encode())


def wait_idle(day: Any, ref: ClusterRef, timeout: float = 30.0) -> None:
    """GKE has no operation running on the cluster (its own one included)."""
    wait_for(lambda: day.gke.world.running_operation(ref.location, ref.cluster) is None, timeout,
             f"GKE to be done with {ref.cluster}")


# ------------------------------------------------------------------------------------- the stories

def test_new_cluster_with_gkes_own_operation_ends_ready(day, store):
    """Right after the create, GKE runs an operation of its own; the controller's CreateNodePool is
    refused ("incompatible operation") and retried until it is over, without burning attempts."""
    ref = create(day, name(), own_operation=True)
    wait_for(lambda: "waiting for GKE's operation" in messages(store, ref), 60, "the controller to be refused")
    assert store.get_cluster(ref).attempts == 0
    finish_own_operation(day, ref)
    rec = wait_state(store, ref, "READY", 90)
    assert rec.data["clusterId"] and rec.data["createTime"]
    text = messages(store, ref)
    assert "waiting for GKE's operation operation-" in text and "incompatible operation" in text
    assert "gave up" not in text
    assert rec.data["apiEndpoint"]["kind"] == endpoints.PUBLIC_IP
    # GKE logged the refusal as one ERROR entry without `operation`; it reached node-pool-events and
    # was only noted: it ended nothing the controller waited for.
    refused = [e for e in day.gke.audit_log if ref.cluster in json.dumps(e) and "operation" not in e]
    assert refused and refused[0]["severity"] == "ERROR"
    wait_for(lambda: "refused at once by GKE" in messages(store, ref), 30, "the refusal to be noted")


def test_ready_cluster_upgraded_while_nads_are_requested_stays_ready(day, store, client):
    ref = create(day, name())
    wait_state(store, ref, "READY", 90)
    wait_idle(day, ref)
    op = client.update_master(request={"name": ref.path, "master_version": "1.31"})
    assert client.get_cluster(name=ref.path).status == c.Cluster.Status.RECONCILING
    request_nad(day, ref, "during-upgrade", range="172.16.1.0/28")
    doc = wait_nad(store, ref, "default", "during-upgrade", "APPLIED", 60)
    assert doc["range"] == "172.16.1.0/28"
    assert store.get_cluster(ref).state == "READY"
    wait_for(lambda: client.get_operation(name=f"projects/{ref.project}/locations/{ref.location}/operations/"
                                                f"{op.name}").status == c.Operation.Status.DONE, 30, "upgrade")
    # the UpdateMaster entry reaches on_cluster_event: the cluster is looked at again and stays READY
    wait_for(lambda: "cluster updated (UpdateMaster)" in messages(store, ref), 30, "the upgrade to be seen")
    assert store.get_cluster(ref).state == "READY"
    assert store.get_cluster(ref).data["version"].startswith("1.31")


def test_labelled_after_creation_ends_ready_in_seconds_and_opt_out_is_recorded(day, store, client):
    ref = create(day, name(), labels={"team": "net"})
    wait_state(store, ref, "IGNORED", 60)
    wait_idle(day, ref)
    fingerprint = client.get_cluster(name=ref.path).label_fingerprint
    client.set_labels(request={"name": ref.path, "resource_labels": {"team": "net", **OPTED_IN},
                               "label_fingerprint": fingerprint})
    wait_state(store, ref, "READY", 90)  # no reconcile runs in this stack: the SetLabels entry did it
    assert "labels changed" in messages(store, ref)
    wait_idle(day, ref)
    fingerprint = client.get_cluster(name=ref.path).label_fingerprint
    client.set_labels(request={"name": ref.path, "resource_labels": {"team": "net"},
                               "label_fingerprint": fingerprint})
    rec = wait_state(store, ref, "IGNORED", 60)
    assert "opted out" in messages(store, ref) and rec.data["bundleVersion"]


def test_delete_and_re_create_ends_ready_with_both_histories(day, store, client):
    cluster = name()
    ref = create(day, cluster)
    first = wait_state(store, ref, "READY", 90).data["clusterId"]
    wait_idle(day, ref)
    client.delete_cluster(name=ref.path)
    wait_state(store, ref, "DELETED", 60)
    create(day, cluster)
    rec = wait_state(store, ref, "READY", 90)
    assert rec.data["clusterId"] != first and rec.data["previousIncarnations"][-1]["clusterId"] == first
    text = messages(store, ref)
    assert f"new incarnation {rec.data['clusterId']}, previous {first}" in text
    assert "workflow closed" in text or "cluster deleted" in text


def test_async_node_pool_failure_is_retried_with_gkes_message(day, store):
    cluster = name()
    day.gke.world.fail_node_pool(cluster, "multus-pool", "GCE_STOCKOUT", times=1)
    ref = create(day, cluster)
    rec = wait_state(store, ref, "READY", 120)
    assert rec.data["nodePoolRequested"]["attempt"] == 2
    text = messages(store, ref)
    assert "failed in GKE (GCE_STOCKOUT)" in text and "[GCE_STOCKOUT]" in text and "attempt 1 of 3" in text


def test_async_node_pool_failure_that_persists_ends_failed_with_gkes_message(day, store):
    cluster = name()
    day.gke.world.fail_node_pool(cluster, "multus-pool", "QUOTA_EXCEEDED", times=10)
    ref = create(day, cluster)
    rec = wait_state(store, ref, "FAILED", 180)
    assert "Quota 'CPUS' exceeded" in rec.last_error["message"]
    assert "gave up after 3 attempts" in rec.last_error["message"] and "Fix:" in rec.last_error["message"]


def _shared_pool(subnet: str, rng: str) -> NodePoolSpec:
    path = f"projects/{HOST}/regions/{REGION}/subnetworks/{subnet}"
    return NodePoolSpec("shared-pool", additional_node_networks=(
        NodeNetwork(f"projects/{HOST}/global/networks/shared-vpc", path),),
        additional_pod_networks=(PodNetwork(path, rng),))


def test_shared_vpc_pool_resolves_its_range_and_missing_permission_is_a_finding(day, store):
    ok = create(day, name(), node_pools=(NodePoolSpec("default-pool"), _shared_pool("shared-subnet", "shared-pods")))
    locked = create(day, name(), node_pools=(NodePoolSpec("default-pool"),
                                             _shared_pool("locked-subnet", "locked-pods")))
    rec = wait_state(store, ok, "READY", 90)
    assert rec.data["nodePool"]["cidr"] == "172.20.0.0/24"
    rec = wait_state(store, locked, "INELIGIBLE", 90)
    finding = rec.data["findings"][0]
    assert finding["id"] == "shared-vpc-permission" and "roles/compute.networkUser" in finding["message"]
    assert f"host project {HOST}" in finding["fix"] and "roles/container.hostServiceAgentUser" in finding["fix"]
    assert rec.data["factsDigest"]  # a full reconcile re-checks it only once the cluster changed


def test_regional_rollout_counts_three_zones_of_nodes(day, store):
    ref = create(day, name())
    rec = wait_state(store, ref, "READY", 90)
    nodes = day.gke.world.cluster_nodes(ref.location, ref.cluster)
    assert len(nodes["multus-pool"]) == 3 * 2  # the template's node_count 2, per zone, three zones
    assert rec.data["rollout"]["desired"] == sum(len(v) for v in nodes.values()) == 3 * (1 + 2)


def test_cluster_reachable_only_through_its_dns_endpoint_ends_ready(day, store, capsys):
    from multus_cli import main as cli

    ref = create(day, name(), public_endpoint=False, dns_endpoint=True)
    rec = wait_state(store, ref, "READY", 90)
    assert rec.data["apiEndpoint"]["kind"] == endpoints.DNS
    assert rec.data["apiEndpoint"]["address"].startswith("gke-") and ".gke.goog:" in rec.data["apiEndpoint"]["address"]
    # the choice is what `status` shows
    env_file = day.write_env_file(day.state_dir / "env")
    capsys.readouterr()
    assert cli.main(["status", "--sandbox", str(env_file), ref.cluster]) == 0
    out = capsys.readouterr().out
    assert "endpoint  dns gke-" in out and "the DNS-based endpoint allows external traffic" in out


def test_private_only_cluster_without_egress_ends_with_the_finding(day, store):
    ref = create(day, name(), public_endpoint=False)
    rec = wait_state(store, ref, "INELIGIBLE", 90)
    finding = rec.data["findings"][0]
    assert finding["id"] == "control-plane-unreachable" and "--enable-dns-access" in finding["fix"]
    assert "vpc_connector" in finding["fix"]


# ------------------------------------------------------------------------------------- endpoint choice

def test_endpoint_choice_prefers_dns_then_public_then_private_with_egress():
    f = endpoints.EndpointFields
    dns = endpoints.choose(f("c", endpoint="10.128.0.2", dns_endpoint="gke-1.us-central1.gke.goog", dns_external=True,
                             ip_config_present=True, public_enabled=False, private_endpoint="10.128.0.2"),
                           vpc_egress=False)
    assert (dns.kind, dns.host, dns.port) == (endpoints.DNS, "gke-1.us-central1.gke.goog", None)
    public = endpoints.choose(f("c", endpoint="34.1.2.3", dns_endpoint="gke-1.x.gke.goog", ip_config_present=True,
                                private_endpoint="10.128.0.2", authorized_networks=True), vpc_egress=False)
    assert public.kind == endpoints.PUBLIC_IP and "authorized networks" in public.why
    private = f("c", endpoint="10.128.0.2", ip_config_present=True, public_enabled=False, private_endpoint="10.128.0.2")
    assert endpoints.choose(private, vpc_egress=True).kind == endpoints.PRIVATE_IP
    with pytest.raises(NeedsFix, match="only a private"):
        endpoints.choose(private, vpc_egress=False)
    legacy = f("c", endpoint="10.0.0.2")  # no ip_endpoints_config: a private address is not public
    with pytest.raises(NeedsFix):
        endpoints.choose(legacy, vpc_egress=False)
    with pytest.raises(Transient, match="no endpoint yet"):
        endpoints.choose(f("c"), vpc_egress=False)
