"""GKE on an ordinary day (issue 11): the sandbox does what real GKE does, through the unmodified client.

One test per behaviour (docs/SANDBOX_GKE.md, "An ordinary day"). Operations that would take real
time (GKE's own operation) are finished by driving the world (`complete_operation`), and every
wait is on a state, with a generous timeout only as a safety net.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import container_v1 as c
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

from sandbox.gke.audit import push_envelope
from sandbox.gke.protos import cluster_message, node_pool_message
from sandbox.gke.realism import Realism
from sandbox.gke.scenario import DEFAULT_SCENARIO, NodePoolSpec, ScenarioError, load, parse
from sandbox.gke.server import GkeSandbox
from shared.core.events import decode_audit

PROJECT, REGION, ZONE = "multus-sandbox", "us-central1", "us-central1-a"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
HOST = "shared-vpc-host"
# Long enough never to end by itself during a test: tests finish it with complete_operation.
PATIENT = dataclasses.replace(Realism(), own_operation_seconds=600)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def scenario(**extra: Any) -> Any:
    data = {
        "project": PROJECT, "location": REGION,
        "subnetworks": [
            {"network": "multus-vpc", "subnetwork": "multus-subnet", "region": REGION,
             "primary_range": "10.0.1.0/24", "secondary_ranges": {"multus-pods": "172.16.1.0/24"}},
            {"project": HOST, "network": "shared-vpc", "subnetwork": "shared-subnet", "region": REGION,
             "primary_range": "10.20.0.0/24", "secondary_ranges": {"shared-pods": "172.20.0.0/24"}},
            {"project": HOST, "network": "shared-vpc", "subnetwork": "locked-subnet", "region": REGION,
             "primary_range": "10.21.0.0/24", "secondary_ranges": {"locked-pods": "172.21.0.0/24"},
             "network_user": False},
        ],
        "clusters": [
            {"name": "fresh", "create_at_start": False, "labels": {"multus-provisioner": "enabled"},
             "node_pools": [{"name": "default-pool"}]},
            {"name": "old", "version": "1.29", "node_pools": [{"name": "default-pool"}]},
        ],
        **extra,
    }
    return parse(data, source="test")


@pytest.fixture
def world_sandbox(request: pytest.FixtureRequest) -> Iterator[GkeSandbox]:
    """A started realistic sandbox; parametrize indirectly with a dict to extend the scenario."""
    sandbox = GkeSandbox(scenario(**getattr(request, "param", {})), realism=PATIENT, operation_delay=0.05)
    sandbox.start(admin_port=0)
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def client(world_sandbox: GkeSandbox) -> Iterator[c.ClusterManagerClient]:
    channel = grpc.insecure_channel(world_sandbox.endpoint)
    yield c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    channel.close()


def done(client: c.ClusterManagerClient, op: c.Operation, location: str = REGION) -> c.Operation:
    name = f"projects/{PROJECT}/locations/{location}/operations/{op.name}"
    return wait_for(lambda: (o := client.get_operation(name=name)).status == c.Operation.Status.DONE and o,
                    f"{op.name} to be DONE")


def create(client: c.ClusterManagerClient, sandbox: GkeSandbox, name: str = "fresh",
           location: str = REGION) -> c.Operation:
    spec = sandbox.cluster_spec(name, location=location)
    return done(client, client.create_cluster(parent=f"projects/{PROJECT}/locations/{location}",
                                              cluster=cluster_message(spec)), location)


def own_operation(sandbox: GkeSandbox, cluster: str = "fresh", location: str = REGION) -> c.Operation:
    op = sandbox.world.running_operation(location, cluster)
    assert op is not None, "GKE's own operation should be running"
    return op


def admin(sandbox: GkeSandbox, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(sandbox.admin_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def decode(entry: dict) -> Any:
    env = push_envelope(entry, subscription="projects/multus-sandbox/subscriptions/audit")
    return decode_audit({"id": env["message"]["messageId"], "data": env})


def entries_of(sandbox: GkeSandbox, method: str) -> list[dict]:
    return [e for e in sandbox.audit_log if e["protoPayload"]["methodName"].endswith(f".{method}")]


# ---------------------------------------------------------------------------------------------- the switch

def test_realistic_by_default_and_calm_by_one_switch(tmp_path):
    assert Realism().own_operation_seconds > 0 and Realism().regional_zones == 3 and Realism().audit_shapes
    assert load(DEFAULT_SCENARIO).realism == "realistic"
    sandbox = GkeSandbox(operation_delay=0.01)
    assert sandbox.world.realism == Realism() and sandbox.world.realism.name == "realistic"
    calm_file = tmp_path / "calm.yaml"
    calm_file.write_text("project: multus-sandbox\nrealism: calm\n")
    assert GkeSandbox(calm_file).world.realism == Realism.calm()
    assert GkeSandbox(calm_file, realism=Realism()).world.realism == Realism()  # the parameter wins
    with pytest.raises(ScenarioError, match="realism: 'sunny'"):
        parse({"project": PROJECT, "realism": "sunny"})
    with pytest.raises(ValueError, match="own_operation_type"):
        Realism(own_operation_type="NAP")


def test_calm_world_has_no_operation_of_its_own():
    sandbox = GkeSandbox(scenario(), realism=Realism.calm(), operation_delay=0.01)
    try:
        sandbox.create_cluster("fresh")
        assert sandbox.world.running_operation(REGION, "fresh") is None
        ops = sandbox.world.list_operations(c.ListOperationsRequest(parent=PARENT)).operations
        assert [o.operation_type for o in ops] == [c.Operation.Type.CREATE_CLUSTER]
    finally:
        sandbox.stop()


# ---------------------------------------------------------------------------------------------- 1. own operation

def test_own_operation_after_create_refuses_writes_with_gke_error_info(world_sandbox, client):
    create(client, world_sandbox)
    own = own_operation(world_sandbox)
    listed = client.list_operations(parent=PARENT).operations
    assert [(o.operation_type, o.status) for o in listed] == [
        (c.Operation.Type.CREATE_CLUSTER, c.Operation.Status.DONE),
        (c.Operation.Type.UPGRADE_NODES, c.Operation.Status.RUNNING)]
    assert listed[1].name == own.name and listed[1].target_link.endswith("/clusters/fresh/nodePools/default-pool")
    cluster = client.get_cluster(name=f"{PARENT}/clusters/fresh")
    assert cluster.status == c.Cluster.Status.RECONCILING
    assert cluster.node_pools[0].status == c.NodePool.Status.RECONCILING

    with pytest.raises(gexc.FailedPrecondition) as e:  # what the unmodified ClusterManagerClient raises
        client.create_node_pool(parent=f"{PARENT}/clusters/fresh",
                                node_pool=node_pool_message(NodePoolSpec("extra")), retry=None)
    assert e.value.message == f"Cluster is running incompatible operation {own.name}."
    assert e.value.reason == "CLUSTER_ALREADY_HAS_OPERATION"
    assert e.value.domain == "container.googleapis.com"
    # google-api-core 2.44 exposes the ErrorInfo as .reason/.domain/.metadata (no public .error_info)
    assert not hasattr(e.value, "error_info") or e.value.error_info.reason == "CLUSTER_ALREADY_HAS_OPERATION"
    kinds = [type(d).__name__ for d in e.value.details]
    assert kinds == ["ErrorInfo", "RequestInfo"] and e.value.details[1].request_id.startswith("0x")
    assert e.value.details[0].reason == "CLUSTER_ALREADY_HAS_OPERATION"

    finished = world_sandbox.world.complete_operation(own.name)  # drive the clock: GKE's operation ends
    assert finished.status == c.Operation.Status.DONE
    assert client.get_cluster(name=f"{PARENT}/clusters/fresh").status == c.Cluster.Status.RUNNING
    op = client.create_node_pool(parent=f"{PARENT}/clusters/fresh", node_pool=node_pool_message(NodePoolSpec("extra")))
    assert done(client, op).error.code == 0
    assert not [e for e in world_sandbox.audit_log if e.get("operation", {}).get("id") == own.name]  # not audited


# ---------------------------------------------------------------------------------------------- 2. upgrades

def test_update_master_makes_the_cluster_reconciling_and_is_audited(world_sandbox, client):
    name = f"{PARENT}/clusters/old"
    op = client.update_master(request={"name": name, "master_version": "1.30"})
    assert op.operation_type == c.Operation.Type.UPGRADE_MASTER
    assert client.get_cluster(name=name).status == c.Cluster.Status.RECONCILING
    with pytest.raises(gexc.FailedPrecondition) as e:
        client.set_labels(request={"name": name, "resource_labels": {"a": "b"},
                                   "label_fingerprint": client.get_cluster(name=name).label_fingerprint})
    assert e.value.reason == "CLUSTER_ALREADY_HAS_OPERATION"
    done(client, op)
    cluster = client.get_cluster(name=name)
    assert cluster.status == c.Cluster.Status.RUNNING and cluster.current_master_version.startswith("1.30.")
    assert cluster.current_node_version.startswith("1.29.")
    first, last = [e for e in entries_of(world_sandbox, "UpdateMaster") if "operation" in e]
    assert first["protoPayload"]["methodName"] == "google.container.v1.ClusterManager.UpdateMaster"
    assert first["protoPayload"]["response"]["operationType"] == "UPGRADE_MASTER"
    assert last["protoPayload"]["metadata"]["operationType"] == "UPGRADE_MASTER"

    with pytest.raises(gexc.InvalidArgument, match="downgrading"):
        client.update_master(request={"name": name, "master_version": "1.29"})
    refused = entries_of(world_sandbox, "UpdateMaster")[-1]
    assert refused["severity"] == "ERROR" and "operation" not in refused
    assert refused["protoPayload"]["status"]["code"] == 3


def test_update_cluster_master_and_node_versions(world_sandbox, client):
    name = f"{PARENT}/clusters/old"
    op = client.update_cluster(name=name, update=c.ClusterUpdate(desired_master_version="1.30"))
    assert op.operation_type == c.Operation.Type.UPGRADE_MASTER
    assert client.get_cluster(name=name).status == c.Cluster.Status.RECONCILING
    done(client, op)
    with pytest.raises(gexc.InvalidArgument, match="cannot be newer than the control plane"):
        client.update_cluster(name=name, update=c.ClusterUpdate(desired_node_version="1.31"))
    op = client.update_cluster(name=name, update=c.ClusterUpdate(desired_node_version="1.30"))
    assert op.operation_type == c.Operation.Type.UPGRADE_NODES
    assert client.get_cluster(name=name).node_pools[0].status == c.NodePool.Status.RECONCILING
    done(client, op)
    cluster = client.get_cluster(name=name)
    assert cluster.status == c.Cluster.Status.RUNNING
    assert cluster.node_pools[0].version.startswith("1.30.") and cluster.current_node_version.startswith("1.30.")
    assert {e["protoPayload"]["methodName"] for e in entries_of(world_sandbox, "UpdateCluster")} == {
        "google.container.v1.ClusterManager.UpdateCluster"}
    with pytest.raises(gexc.MethodNotImplemented, match="desired_logging_service"):
        client.update_cluster(name=name, update=c.ClusterUpdate(desired_logging_service="none"))


# ---------------------------------------------------------------------------------------------- 3. labels

def test_set_labels_needs_the_current_fingerprint(world_sandbox, client):
    name = f"{PARENT}/clusters/old"
    before = client.get_cluster(name=name)
    with pytest.raises(gexc.FailedPrecondition) as e:
        client.set_labels(request={"name": name, "resource_labels": {"multus-provisioner": "enabled"},
                                   "label_fingerprint": ""})
    assert str(e.value.message) == (
        "Labels could not be set due to fingerprint mismatch; try again with the proper fingerprint: "
        f"incorrect fingerprint supplied was \"\", the expected one is \"{before.label_fingerprint}\".")
    op = client.set_labels(request={"name": name, "resource_labels": {"multus-provisioner": "enabled"},
                                    "label_fingerprint": before.label_fingerprint})
    assert op.operation_type == c.Operation.Type.UPDATE_CLUSTER
    done(client, op)
    after = client.get_cluster(name=name)
    assert dict(after.resource_labels) == {"multus-provisioner": "enabled"}
    assert after.label_fingerprint != before.label_fingerprint and after.status == c.Cluster.Status.RUNNING
    with pytest.raises(gexc.FailedPrecondition, match="fingerprint mismatch"):  # the old one is stale now
        client.set_labels(request={"name": name, "resource_labels": {}, "label_fingerprint": before.label_fingerprint})
    first = next(e for e in entries_of(world_sandbox, "SetLabels") if e.get("operation", {}).get("first"))
    assert first["protoPayload"]["request"]["resourceLabels"] == {"multus-provisioner": "enabled"}
    assert first["protoPayload"]["request"]["@type"] == "type.googleapis.com/google.container.v1alpha1.SetLabelsRequest"


# ---------------------------------------------------------------------------------------------- 4. re-created

def test_recreated_cluster_gets_a_new_id_and_create_time(world_sandbox, client):
    create(client, world_sandbox)
    first = client.get_cluster(name=f"{PARENT}/clusters/fresh")
    world_sandbox.world.complete_operation(own_operation(world_sandbox).name)
    done(client, client.delete_cluster(name=f"{PARENT}/clusters/fresh"))
    with pytest.raises(gexc.NotFound):
        client.get_cluster(name=f"{PARENT}/clusters/fresh")
    time.sleep(0.002)  # create_time has microseconds; make sure the clock moved (not a margin: a precondition)
    create(client, world_sandbox)
    second = client.get_cluster(name=f"{PARENT}/clusters/fresh")
    assert second.id != first.id and len(second.id) == 32
    assert second.create_time > first.create_time


# ---------------------------------------------------------------------------------------------- 5. pool failures

@pytest.mark.parametrize("world_sandbox", [{"node_pool_failures": [
    {"cluster": "old", "node_pool": "multus-pool", "error": "GCE_STOCKOUT"}]}], indirect=True)
def test_node_pool_fails_after_acceptance_stockout_from_scenario_quota_from_admin(world_sandbox, client):
    parent = f"{PARENT}/clusters/old"
    op = client.create_node_pool(parent=parent, node_pool=node_pool_message(NodePoolSpec("multus-pool", 2)))
    finished = done(client, op)
    assert finished.error.code == 8 and "[GCE_STOCKOUT]" in finished.status_message
    assert "does not have enough resources available to fulfill the request" in finished.status_message
    assert "Expected 6, running 0, transitioning 6" in finished.status_message  # 2 per zone x 3 zones
    assert finished.nodepool_conditions[0].code == c.StatusCondition.Code.GCE_STOCKOUT
    pool = client.get_node_pool(name=f"{parent}/nodePools/multus-pool")
    assert pool.status == c.NodePool.Status.ERROR and pool.status_message == finished.status_message
    last = [e for e in entries_of(world_sandbox, "CreateNodePool") if e.get("operation", {}).get("last")][-1]
    assert last["severity"] == "ERROR" and last["protoPayload"]["status"]["code"] == 8
    assert decode(last).failed and decode(last).status_code == 8
    assert world_sandbox.world.cluster_nodes(REGION, "old")["multus-pool"] == []

    done(client, client.delete_node_pool(name=f"{parent}/nodePools/multus-pool"))
    status, body = admin(world_sandbox, "POST", "/node-pool-failures",
                         {"cluster": "old", "node_pool": "multus-pool", "error": "QUOTA_EXCEEDED"})
    assert status == 200 and body["pending"] == {"old/multus-pool": ["QUOTA_EXCEEDED"]}
    assert admin(world_sandbox, "POST", "/node-pool-failures", {"cluster": "old", "node_pool": "p",
                                                                 "error": "TEAPOT"})[0] == 400
    finished = done(client, client.create_node_pool(parent=parent,
                                                    node_pool=node_pool_message(NodePoolSpec("multus-pool"))))
    assert "[QUOTA_EXCEEDED]" in finished.status_message and "Quota 'CPUS' exceeded" in finished.status_message
    assert finished.nodepool_conditions[0].code == c.StatusCondition.Code.GCE_QUOTA_EXCEEDED
    assert admin(world_sandbox, "GET", "/node-pool-failures") == (200, {})
    third = done(client, client.create_node_pool(parent=parent, node_pool=node_pool_message(NodePoolSpec("other"))))
    assert third.error.code == 0  # armed failures are per pool and consumed


# ---------------------------------------------------------------------------------------------- 6. Shared VPC

def test_shared_vpc_filter_and_missing_permission(world_sandbox, client):
    own = list(client.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}"}))
    assert [s.subnetwork for s in own] == [f"projects/{PROJECT}/regions/{REGION}/subnetworks/multus-subnet"]
    host = {s.subnetwork.rsplit("/", 1)[1]: s for s in client.list_usable_subnetworks(
        request={"parent": f"projects/{PROJECT}", "filter": f"networkProjectId={HOST}"})}
    assert set(host) == {"shared-subnet", "locked-subnet"}
    assert host["shared-subnet"].network == f"projects/{HOST}/global/networks/shared-vpc"
    assert [r.range_name for r in host["shared-subnet"].secondary_ip_ranges] == ["shared-pods"]
    assert not host["shared-subnet"].status_message
    locked = host["locked-subnet"]
    assert list(locked.secondary_ip_ranges) == [] and "roles/compute.networkUser" in locked.status_message
    assert HOST in locked.status_message
    with pytest.raises(gexc.InvalidArgument, match="networkProjectId"):
        client.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}", "filter": "name=x"})

    sub = f"projects/{HOST}/regions/{REGION}/subnetworks/shared-subnet"  # a pool on the host's subnetwork
    pool = c.NodePool(name="shared-pool", initial_node_count=1, network_config=c.NodeNetworkConfig(
        additional_node_network_configs=[c.AdditionalNodeNetworkConfig(
            network=f"projects/{HOST}/global/networks/shared-vpc", subnetwork=sub)],
        additional_pod_network_configs=[c.AdditionalPodNetworkConfig(subnetwork=sub,
                                                                     secondary_pod_range="shared-pods")]))
    op = client.create_node_pool(parent=f"{PARENT}/clusters/old", node_pool=pool)
    assert done(client, op).error.code == 0
    wrong = c.NodePool(name="wrong-pool", initial_node_count=1, network_config=c.NodeNetworkConfig(
        additional_node_network_configs=[c.AdditionalNodeNetworkConfig(
            network="shared-vpc", subnetwork=f"projects/{PROJECT}/regions/{REGION}/subnetworks/shared-subnet")]))
    with pytest.raises(gexc.InvalidArgument, match="not found"):  # the host's subnet is not in this project
        client.create_node_pool(parent=f"{PARENT}/clusters/old", node_pool=wrong)


# ---------------------------------------------------------------------------------------------- 7. regional

def test_regional_pools_span_three_zones_zonal_pools_one():
    seen: dict[str, list[str]] = {}
    sandbox = GkeSandbox(scenario(), realism=PATIENT, operation_delay=0.01,
                         on_node_pool=lambda ref, pool, nodes: seen.__setitem__(f"{ref.cluster}/{pool.name}", nodes))
    try:
        sandbox.create_cluster("fresh", node_pools=(NodePoolSpec("default-pool", node_count=2),))
        cluster = sandbox.world.get_cluster(c.GetClusterRequest(name=f"{PARENT}/clusters/fresh"))
        pool = cluster.node_pools[0]
        assert list(pool.locations) == ["us-central1-a", "us-central1-b", "us-central1-c"]
        assert list(cluster.locations) == list(pool.locations)
        assert len(seen["fresh/default-pool"]) == 6 and cluster.current_node_count == 6  # per zone x 3
        assert len({n.rsplit("-", 1)[0] for n in seen["fresh/default-pool"]}) == 3  # one instance group per zone
        assert [u.split("/zones/")[1].split("/")[0] for u in pool.instance_group_urls] == list(pool.locations)

        sandbox.create_cluster("zonal", location=ZONE, node_pools=(NodePoolSpec("default-pool", node_count=2),))
        zonal = sandbox.world.get_cluster(
            c.GetClusterRequest(name=f"projects/{PROJECT}/locations/{ZONE}/clusters/zonal"))
        assert list(zonal.node_pools[0].locations) == [ZONE] and zonal.current_node_count == 2
    finally:
        sandbox.stop()


# ---------------------------------------------------------------------------------------------- 9. audit shapes

# Keys of the captured real entries (GoogleCloudPlatform/khi, test/logs/gke_audit/*.yaml).
FIRST_KEYS = {"@type", "authenticationInfo", "authorizationInfo", "methodName", "policyViolationInfo", "request",
              "requestMetadata", "resourceLocation", "resourceName", "response", "serviceName"}
LAST_KEYS = {"@type", "metadata", "methodName", "policyViolationInfo", "resourceLocation", "resourceName",
             "serviceName", "status"}
REFUSED_KEYS = FIRST_KEYS | {"status"}


def test_audit_entries_have_the_captured_shapes_and_decode(world_sandbox, client):
    create(client, world_sandbox, "fresh", ZONE)  # a zonal cluster, requested in the locations/ form
    world_sandbox.world.complete_operation(own_operation(world_sandbox, "fresh", ZONE).name)
    first, last = entries_of(world_sandbox, "CreateCluster")
    zones_name = f"projects/{PROJECT}/zones/{ZONE}/clusters/fresh"
    assert set(first["protoPayload"]) == FIRST_KEYS and set(last["protoPayload"]) == LAST_KEYS
    assert first["protoPayload"]["resourceName"] == last["protoPayload"]["resourceName"] == zones_name
    assert first["protoPayload"]["request"]["@type"] == \
        "type.googleapis.com/google.container.v1alpha1.CreateClusterRequest"
    assert first["protoPayload"]["request"]["parent"] == f"projects/{PROJECT}/locations/{ZONE}"
    response = first["protoPayload"]["response"]
    assert response["@type"] == "type.googleapis.com/google.container.v1alpha1.Operation"
    assert (response["status"], response["operationType"]) == ("RUNNING", "CREATE_CLUSTER")
    assert f"/v1alpha1/projects/{world_sandbox.world.project_number}/zones/{ZONE}/operations/" in response["selfLink"]
    auth = first["protoPayload"]["authorizationInfo"][0]
    assert (auth["permission"], auth["permissionType"], auth["resource"]) == \
        ("container.clusters.create", "ADMIN_WRITE", zones_name)
    assert last["protoPayload"]["metadata"]["operationType"] == "CREATE_CLUSTER"
    assert last["protoPayload"]["status"] == {} and last["severity"] == "NOTICE"

    op = client.create_node_pool(parent=f"projects/{PROJECT}/locations/{ZONE}/clusters/fresh",
                                 node_pool=node_pool_message(NodePoolSpec("multus-pool")))
    done(client, op, ZONE)
    pool_first, pool_last = entries_of(world_sandbox, "CreateNodePool")
    assert pool_first["protoPayload"]["response"]["status"] == "PENDING"  # as captured for node pools
    assert pool_first["protoPayload"]["authorizationInfo"][0]["resource"] == zones_name  # the cluster, not the pool
    assert pool_last["protoPayload"]["resourceName"] == f"{zones_name}/nodePools/multus-pool"

    with pytest.raises(gexc.AlreadyExists):
        client.create_node_pool(parent=f"projects/{PROJECT}/locations/{ZONE}/clusters/fresh",
                                node_pool=node_pool_message(NodePoolSpec("multus-pool")))
    refused = entries_of(world_sandbox, "CreateNodePool")[-1]
    assert set(refused["protoPayload"]) == REFUSED_KEYS and "operation" not in refused
    assert refused["severity"] == "ERROR" and refused["protoPayload"]["status"]["code"] == 6
    assert refused["protoPayload"]["response"] == {"@type": "type.googleapis.com/google.container.v1alpha1.Operation"}

    decoded = [decode(e) for e in (first, last, pool_first, pool_last, refused)]
    assert [(d.action, d.first, d.last) for d in decoded] == [
        ("cluster.created", True, False), ("cluster.created", False, True),
        ("node_pool.created", True, False), ("node_pool.created", False, True), ("node_pool.created", True, True)]
    assert {str(d.cluster) for d in decoded} == {f"projects/{PROJECT}/locations/{ZONE}/clusters/fresh"}
    assert decoded[1].principal is None and decoded[0].principal  # `last` entries say nothing of who
    assert decoded[4].failed and decoded[4].operation_id is None

    # regional clusters keep the locations/ form (no capture shows otherwise)
    op = client.update_master(request={"name": f"{PARENT}/clusters/old", "master_version": "1.30"})
    done(client, op)
    assert entries_of(world_sandbox, "UpdateMaster")[0]["protoPayload"]["resourceName"] == f"{PARENT}/clusters/old"


# ---------------------------------------------------------------------------------------------- 8. endpoints

def _stack_hooks(tmp_path: Path) -> Any:
    """The stack's own on_cluster hook (one KubeApiServer per cluster), without emulators or functions."""
    from sandbox.kube.certs import CertAuthority
    from sandbox.stack import Stack

    stack = Stack(state_dir=tmp_path)
    (tmp_path / "kubeconfig").mkdir()
    stack.public_ca = CertAuthority()
    return stack


def _tls(address: tuple[str, int], server_hostname: str, ca_pem: bytes, token: str) -> int:
    """GET /version over TLS to `address`, verifying the certificate for `server_hostname` with `ca_pem`."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(address, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(f"GET /version HTTP/1.1\r\nHost: {server_hostname}\r\nAuthorization: Bearer {token}\r\n"
                    "Connection: close\r\n\r\n".encode())
        return int(tls.recv(64).split()[1])


ENDPOINT_CLUSTERS = [
    {"name": "dns-only", "public_endpoint": False, "dns_endpoint": True, "node_pools": [{"name": "p"}]},
    {"name": "private-only", "public_endpoint": False, "node_pools": [{"name": "p"}]},
    {"name": "guarded", "authorized_networks": ["203.0.113.0/24"], "node_pools": [{"name": "p"}]},
    {"name": "allowed", "authorized_networks": ["127.0.0.0/8"], "node_pools": [{"name": "p"}]},
]


def test_private_authorized_and_dns_endpoints(tmp_path):
    stack = _stack_hooks(tmp_path)
    sandbox = GkeSandbox(scenario(clusters=ENDPOINT_CLUSTERS), realism=PATIENT, operation_delay=0.01,
                         on_cluster=stack._on_cluster)
    try:
        get = lambda name: sandbox.world.get_cluster(c.GetClusterRequest(name=f"{PARENT}/clusters/{name}"))  # noqa: E731

        dns = get("dns-only")
        cfg = dns.control_plane_endpoints_config
        host, port = cfg.dns_endpoint_config.endpoint.rsplit(":", 1)
        assert host.endswith(f".{REGION}.gke.goog") and cfg.dns_endpoint_config.allow_external_traffic
        assert not cfg.ip_endpoints_config.enable_public_endpoint
        private = ipaddress.ip_address(dns.endpoint)  # the private address: published, never dialled
        assert private in ipaddress.ip_network("10.0.0.0/8") and not private.is_loopback
        assert dns.endpoint == cfg.ip_endpoints_config.private_endpoint == dns.private_cluster_config.private_endpoint
        # The DNS endpoint answers at the sandbox's DNS address with a certificate for its name from the
        # public-style CA, not from the cluster CA (and the name is never looked up).
        assert _tls(("127.0.0.1", int(port)), host, stack.public_ca.ca_pem, stack.token) == 200
        cluster_ca = base64.b64decode(dns.master_auth.cluster_ca_certificate)
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls(("127.0.0.1", int(port)), host, cluster_ca, stack.token)
        kube = stack.kube_servers["dns-only"]
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):  # the IP listener is closed to us
            _tls(("127.0.0.1", int(kube.endpoint.rsplit(":", 1)[1])), "127.0.0.1", cluster_ca, stack.token)

        private_only = get("private-only")
        assert ipaddress.ip_address(private_only.endpoint).is_private
        assert not private_only.control_plane_endpoints_config.dns_endpoint_config.allow_external_traffic
        assert ":" not in private_only.control_plane_endpoints_config.dns_endpoint_config.endpoint  # not served

        guarded = get("guarded")
        assert guarded.master_authorized_networks_config.enabled
        assert [b.cidr_block for b in guarded.master_authorized_networks_config.cidr_blocks] == ["203.0.113.0/24"]
        g_host, g_port = guarded.endpoint.rsplit(":", 1)
        assert g_host == "127.0.0.1"
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            _tls((g_host, int(g_port)), g_host, base64.b64decode(guarded.master_auth.cluster_ca_certificate),
                 stack.token)
        allowed = get("allowed")
        a_host, a_port = allowed.endpoint.rsplit(":", 1)
        assert _tls((a_host, int(a_port)), a_host, base64.b64decode(allowed.master_auth.cluster_ca_certificate),
                    stack.token) == 200
    finally:
        sandbox.stop()
        for server in stack.kube_servers.values():
            server.stop()


# ---------------------------------------------------------------------------------------------- the stack

def test_stack_env_offers_admin_url_ca_bundle_and_filters_like_the_sink(emulators, tmp_path):
    from multus_cli.envfile import load_env_file
    from sandbox.stack import Stack

    stack = Stack(state_dir=tmp_path, emulators=emulators, with_functions=False, operation_delay=0.01)
    stack.start()
    try:
        env = load_env_file(tmp_path / "env")
        assert env["MULTUS_PROVISIONER_SANDBOX_REALISM"] == "realistic"
        assert Path(env["MULTUS_PROVISIONER_SANDBOX_CA_BUNDLE"]).read_bytes() == stack.public_ca.ca_pem
        assert env["MULTUS_PROVISIONER_SANDBOX_DNS_ADDRESS"] == "127.0.0.1"
        with urllib.request.urlopen(env["MULTUS_PROVISIONER_GKE_ADMIN"] + "/realism", timeout=10) as resp:
            assert json.loads(resp.read())["name"] == "realistic"
        assert env["MULTUS_PROVISIONER_GKE_ADMIN"].startswith("http://127.0.0.1:")

        world = stack.gke.world
        legacy = world.get_cluster(c.GetClusterRequest(name=f"{PARENT}/clusters/demo-legacy"))
        world.set_labels(c.SetLabelsRequest(name=f"{PARENT}/clusters/demo-legacy", resource_labels={"a": "b"},
                                            label_fingerprint=legacy.label_fingerprint))
        assert stack.gke.wait_idle(10)
        forwarded = {e["protoPayload"]["methodName"] for e in stack.take_audit()}  # the sinks select it
        assert entries_of(stack.gke, "SetLabels") and forwarded == {"google.container.v1.ClusterManager.SetLabels"}
    finally:
        stack.stop()
