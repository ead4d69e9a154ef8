"""The sandbox GKE REST surface against the unmodified REST client, side by side with the gRPC one.

Contract: on one World, `ClusterManagerClient(transport="rest")` against the REST port and the
gRPC client against the gRPC port see the same clusters, node pools, operations, subnetworks
and the same errors (code and message); writes over REST emit the same audit entries. Also the
wire details the client does not show: Google's JSON error shape, auth, query binding, enums.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.cloud import container_v1
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport
from google.oauth2.credentials import Credentials

from sandbox.gke import rest
from sandbox.gke.server import _RPCS, GkeSandbox

TOKEN = "rest-test-token"
PROJECT = "multus-sandbox"
LEGACY = f"projects/{PROJECT}/locations/us-central1/clusters/demo-legacy"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[GkeSandbox]:
    s = GkeSandbox(operation_delay=0.05, token=TOKEN)
    s.start(rest_port=0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def clients(sandbox: GkeSandbox) -> Iterator[tuple[Any, Any]]:
    channel = grpc.insecure_channel(sandbox.endpoint)
    g = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    r = container_v1.ClusterManagerClient(transport="rest", credentials=Credentials(TOKEN),
                                          client_options={"api_endpoint": sandbox.rest_url})
    try:
        yield g, r
    finally:
        channel.close()


def http(sandbox: GkeSandbox, verb: str, path: str, *, token: str | None = TOKEN, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(verb, f"{sandbox.rest_url}{path}", headers=headers, timeout=30, **kw)


def same(a: Any, b: Any) -> None:
    assert type(a).to_json(a) == type(b).to_json(b)


# -- the rule table ------------------------------------------------------------------------------
def test_every_method_of_the_rest_transport_is_routed() -> None:
    from google.cloud.container_v1.services.cluster_manager.transports.base import ClusterManagerTransport

    def snake(name: str) -> str:
        return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()

    methods = {k for k, v in vars(ClusterManagerTransport).items()
               if isinstance(v, property) and not k.startswith("_")} - {"host", "kind"}
    routed = {r.rpc for r in rest.rules()}
    assert {snake(r) for r in routed} == methods
    assert set(_RPCS) <= routed
    for rpc in ("GetCluster", "CreateNodePool", "DeleteCluster"):  # both resource-name forms
        templates = [r.template for r in rest.rules() if r.rpc == rpc]
        assert any("locations/" in t for t in templates) and any("/zones/" in t for t in templates), templates


def test_template_matching_keeps_custom_verbs_apart() -> None:
    found = rest.find_rule("POST", f"/v1/projects/{PROJECT}/zones/us-central1-a/clusters/c1:setMasterAuth")
    assert found is not None and found[0].rpc == "SetMasterAuth"
    assert found[1] == {"project_id": PROJECT, "zone": "us-central1-a", "cluster_id": "c1"}
    found = rest.find_rule("GET", f"/v1/{LEGACY}")
    assert found is not None and found[0].rpc == "GetCluster" and found[1] == {"name": LEGACY}
    assert rest.find_rule("GET", f"/v1/{LEGACY}:nope") is None


# -- the two surfaces agree ----------------------------------------------------------------------
def test_reads_agree(clients: tuple[Any, Any]) -> None:
    g, r = clients
    same(g.get_cluster(name=LEGACY), r.get_cluster(name=LEGACY))
    same(g.get_cluster(project_id=PROJECT, zone="us-central1", cluster_id="demo-legacy"),
         r.get_cluster(project_id=PROJECT, zone="us-central1", cluster_id="demo-legacy"))
    same(g.list_clusters(parent=f"projects/{PROJECT}/locations/-"),
         r.list_clusters(parent=f"projects/{PROJECT}/locations/-"))
    same(g.list_node_pools(parent=LEGACY), r.list_node_pools(parent=LEGACY))
    same(g.get_node_pool(name=f"{LEGACY}/nodePools/default-pool"),
         r.get_node_pool(name=f"{LEGACY}/nodePools/default-pool"))
    gp = list(g.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}", "page_size": 1}))
    rp = list(r.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}", "page_size": 1}))
    assert [type(s).to_json(s) for s in gp] == [type(s).to_json(s) for s in rp]
    assert len(rp) == 2  # paged through page_size and page_token in the query string


@pytest.mark.parametrize(("call", "code", "grpc_type"), [
    (lambda c: c.get_cluster(name=f"projects/{PROJECT}/locations/us-central1/clusters/nope"), 404,
     exceptions.NotFound),
    (lambda c: c.get_cluster(name=f"projects/{PROJECT}/locations/Mars/clusters/c"), 400, exceptions.InvalidArgument),
    (lambda c: c.get_cluster(project_id=PROJECT, zone="us-central1", cluster_id="Bad_Name"), 400,
     exceptions.InvalidArgument),
    (lambda c: c.get_cluster(name="projects/other-project/locations/us-central1/clusters/c"), 403,
     exceptions.PermissionDenied),
    (lambda c: c.create_cluster(parent=f"projects/{PROJECT}/locations/us-central1",
                                cluster=container_v1.Cluster(name="demo-legacy", initial_node_count=1)), 409,
     exceptions.AlreadyExists),
], ids=["missing", "bad-location", "bad-cluster-id", "other-project", "duplicate"])
def test_errors_agree(clients: tuple[Any, Any], call: Any, code: int, grpc_type: type) -> None:
    g, r = clients
    with pytest.raises(grpc_type) as from_grpc:
        call(g)
    with pytest.raises(exceptions.GoogleAPICallError) as from_rest:
        call(r)
    assert from_grpc.value.code == from_rest.value.code == code
    assert from_rest.value.message.endswith(": " + from_grpc.value.message)


def test_error_json_has_googles_shape(sandbox: GkeSandbox) -> None:
    resp = http(sandbox, "GET", f"/v1/projects/{PROJECT}/locations/us-central1/clusters/nope?alt=json")
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": 404, "status": "NOT_FOUND",
                                     "message": f"Not found: projects/{PROJECT}/locations/us-central1/clusters/nope."}}


def test_writes_over_rest_run_the_worlds_operations_and_audit(sandbox: GkeSandbox, clients: tuple[Any, Any]) -> None:
    g, r = clients
    parent = f"projects/{PROJECT}/locations/us-central1-b"
    before = len(sandbox.audit_log)
    op = r.create_cluster(parent=parent, cluster=container_v1.Cluster(
        name="rest-made", initial_cluster_version="1.30", resource_labels={"multus-provisioner": "enabled"},
        network_config=container_v1.NetworkConfig(enable_multi_networking=True), initial_node_count=1))
    assert op.operation_type == container_v1.Operation.Type.CREATE_CLUSTER
    assert sandbox.wait_idle(10)
    same(r.get_operation(name=f"{parent}/operations/{op.name}"), g.get_operation(name=f"{parent}/operations/{op.name}"))
    assert r.get_operation(name=f"{parent}/operations/{op.name}").status == container_v1.Operation.Status.DONE
    same(g.get_cluster(name=f"{parent}/clusters/rest-made"), r.get_cluster(name=f"{parent}/clusters/rest-made"))
    entries = sandbox.audit_log[before:]
    assert [(e["protoPayload"]["methodName"], e["operation"].get("first", False), e["operation"].get("last", False))
            for e in entries] == [("google.container.v1.ClusterManager.CreateCluster", True, False),
                                  ("google.container.v1.ClusterManager.CreateCluster", False, True)]
    assert entries[0]["protoPayload"]["request"]["cluster"]["resourceLabels"] == {"multus-provisioner": "enabled"}
    op = r.delete_cluster(name=f"{parent}/clusters/rest-made")
    assert sandbox.wait_idle(10)
    with pytest.raises(exceptions.NotFound):
        g.get_cluster(name=f"{parent}/clusters/rest-made")


def test_refusal_while_an_operation_runs_is_the_same(clients: tuple[Any, Any]) -> None:
    slow = GkeSandbox(operation_delay=600, token=TOKEN)
    slow.start(rest_port=0)
    channel = grpc.insecure_channel(slow.endpoint)
    try:
        g = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
        r = container_v1.ClusterManagerClient(transport="rest", credentials=Credentials(TOKEN),
                                              client_options={"api_endpoint": slow.rest_url})
        g.delete_node_pool(name=f"{LEGACY}/nodePools/default-pool")  # RUNNING for 600 s
        pool = container_v1.NodePool(name="second", initial_node_count=1)
        with pytest.raises(exceptions.FailedPrecondition) as from_grpc:
            g.create_node_pool(parent=LEGACY, node_pool=pool)
        with pytest.raises(exceptions.BadRequest) as from_rest:  # FAILED_PRECONDITION is HTTP 400
            r.create_node_pool(parent=LEGACY, node_pool=pool)
        assert from_rest.value.message.endswith(": " + from_grpc.value.message)
        body = http(slow, "POST", f"/v1/{LEGACY}/nodePools", json={"nodePool": {"name": "second"}}).json()
        assert body["error"]["status"] == "FAILED_PRECONDITION" and body["error"]["code"] == 400
    finally:
        channel.close()
        slow.stop()


def test_unserved_methods_answer_unimplemented(sandbox: GkeSandbox, clients: tuple[Any, Any]) -> None:
    _, r = clients
    unserved = sorted({x.rpc for x in rest.rules()} - set(_RPCS))
    assert "SetNodePoolSize" in unserved
    with pytest.raises(exceptions.MethodNotImplemented, match="SetNodePoolSize"):
        r.set_node_pool_size(request={"name": f"{LEGACY}/nodePools/default-pool", "node_count": 3})
    resp = http(sandbox, "POST", f"/v1/{LEGACY}/nodePools/default-pool:setSize", json={"nodeCount": 3})
    assert resp.status_code == 501 and resp.json()["error"]["status"] == "UNIMPLEMENTED"


# -- wire details ----------------------------------------------------------------------------------
def test_bearer_token_is_required(sandbox: GkeSandbox) -> None:
    for token in (None, "wrong"):
        resp = http(sandbox, "GET", f"/v1/{LEGACY}", token=token)
        assert resp.status_code == 401, token
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert http(sandbox, "GET", f"/v1/{LEGACY}").status_code == 200


def test_enums_are_names_unless_ints_are_asked_for(sandbox: GkeSandbox) -> None:
    assert http(sandbox, "GET", f"/v1/{LEGACY}?alt=json").json()["status"] == "RUNNING"
    assert http(sandbox, "GET", f"/v1/{LEGACY}", params={"$alt": "json;enum-encoding=int"}).json()["status"] == 2
    resp = http(sandbox, "GET", f"/v1/{LEGACY}?alt=proto")
    assert resp.status_code == 400 and "alt" in resp.json()["error"]["message"]


def test_bad_requests_are_invalid_argument(sandbox: GkeSandbox) -> None:
    resp = http(sandbox, "GET", f"/v1/{LEGACY}?colour=blue")
    assert resp.status_code == 400 and "Cannot bind query parameter" in resp.json()["error"]["message"]
    resp = http(sandbox, "POST", f"/v1/{LEGACY}/nodePools", data=b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT"
    resp = http(sandbox, "POST", f"/v1/{LEGACY}/nodePools", json={"nodePool": {"name": "p", "colour": 1}})
    assert resp.status_code == 400 and "colour" in resp.json()["error"]["message"]
    resp = http(sandbox, "GET", f"/v1/{LEGACY}", data=b'{"x": 1}')
    assert resp.status_code == 400 and "takes no request body" in resp.json()["error"]["message"]
    resp = http(sandbox, "GET", "/v2/nothing/here")
    assert resp.status_code == 404 and resp.json()["error"]["status"] == "NOT_FOUND"


def test_faults_and_call_counts_are_shared_with_grpc(sandbox: GkeSandbox, clients: tuple[Any, Any]) -> None:
    g, _ = clients
    before = sandbox.calls["GetCluster"]
    sandbox.faults.fail("GetCluster", "RESOURCE_EXHAUSTED", message="Too many operations")
    resp = http(sandbox, "GET", f"/v1/{LEGACY}")
    assert resp.status_code == 429
    assert resp.json()["error"] == {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many operations"}
    g.get_cluster(name=LEGACY)  # the fault was consumed by the REST call
    assert sandbox.calls["GetCluster"] == before + 2


def test_service_usage_reports_every_service_enabled(sandbox: GkeSandbox) -> None:
    body = http(sandbox, "GET", f"/v1/projects/{PROJECT}/services/container.googleapis.com?alt=json").json()
    assert body["state"] == "ENABLED" and body["config"]["name"] == "container.googleapis.com"
    assert http(sandbox, "GET", "/v1/projects/someone-else/services/compute.googleapis.com").status_code == 403


def test_http_status_table_follows_google_rpc_code() -> None:
    assert set(rest.HTTP_STATUS) == set(grpc.StatusCode.__members__)
    assert json.dumps(rest.RPC_CODE["UNAUTHENTICATED"]) == "16"


# -- Compute Engine, sharing the World's subnetworks ------------------------------------------------
COMPUTE = f"/compute/v1/projects/{PROJECT}"


def test_compute_operations_run_then_wait_returns_done() -> None:
    slow = GkeSandbox(operation_delay=0.3, token=TOKEN)
    slow.start(rest_port=0)
    try:
        op = http(slow, "POST", f"{COMPUTE}/global/networks", json={"name": "vpc-w", "autoCreateSubnetworks": False})
        body = op.json()
        assert op.status_code == 200 and body["status"] == "RUNNING" and body["operationType"] == "insert"
        assert body["targetLink"].endswith("/global/networks/vpc-w")
        assert http(slow, "GET", f"{COMPUTE}/global/networks/vpc-w").status_code == 200  # visible at once
        done = http(slow, "POST", f"{COMPUTE}/global/operations/{body['name']}/wait").json()
        assert done["status"] == "DONE" and done["progress"] == 100 and "endTime" in done
        op = http(slow, "POST", f"{COMPUTE}/regions/us-central1/subnetworks", json={
            "name": "sub-w", "network": f"{slow.rest_url}{COMPUTE}/global/networks/vpc-w", "ipCidrRange": "10.9.0.0/24",
            "secondaryIpRanges": [{"rangeName": "pods-w", "ipCidrRange": "172.20.0.0/24"}]}).json()
        assert op["region"].endswith("/regions/us-central1")
        assert http(slow, "GET", f"{COMPUTE}/global/operations/{op['name']}").status_code == 404  # regional
        waited = http(slow, "POST", f"{COMPUTE}/regions/us-central1/operations/{op['name']}/wait").json()
        assert waited["status"] == "DONE"
    finally:
        slow.stop()


def test_compute_subnetworks_are_the_worlds(sandbox: GkeSandbox, clients: tuple[Any, Any]) -> None:
    g, _ = clients
    assert http(sandbox, "POST", f"{COMPUTE}/global/networks",
                json={"name": "vpc-s", "autoCreateSubnetworks": False}).status_code == 200
    assert http(sandbox, "POST", f"{COMPUTE}/regions/us-central1/subnetworks", json={
        "name": "sub-s", "network": "global/networks/vpc-s", "ipCidrRange": "10.7.0.0/24",
        "secondaryIpRanges": [{"rangeName": "pods-s", "ipCidrRange": "172.17.0.0/24"}]}).status_code == 200
    usable = {u.subnetwork: u for u in g.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}"})}
    mine = usable[f"projects/{PROJECT}/regions/us-central1/subnetworks/sub-s"]
    assert mine.network == f"projects/{PROJECT}/global/networks/vpc-s" and mine.ip_cidr_range == "10.7.0.0/24"
    agg = http(sandbox, "GET", f"{COMPUTE}/aggregated/subnetworks").json()
    assert "sub-s" in {s["name"] for s in agg["items"]["regions/us-central1"]["subnetworks"]}
    # node pool validation sees the range; then Compute refuses to delete what a pool uses
    pool = container_v1.NodePool(name="on-sub-s", initial_node_count=1, network_config=container_v1.NodeNetworkConfig(
        additional_node_network_configs=[container_v1.AdditionalNodeNetworkConfig(network="vpc-s", subnetwork="sub-s")],
        additional_pod_network_configs=[container_v1.AdditionalPodNetworkConfig(
            subnetwork="sub-s", secondary_pod_range="pods-s")]))
    cluster = f"projects/{PROJECT}/locations/us-central1-f/clusters/multi"
    g.create_cluster(parent=f"projects/{PROJECT}/locations/us-central1-f", cluster=container_v1.Cluster(
        name="multi", initial_node_count=1, network_config=container_v1.NetworkConfig(enable_multi_networking=True)))
    assert sandbox.wait_idle(10)
    g.create_node_pool(parent=cluster, node_pool=pool)
    assert sandbox.wait_idle(10)
    busy = http(sandbox, "DELETE", f"{COMPUTE}/regions/us-central1/subnetworks/sub-s")
    assert busy.status_code == 400 and busy.json()["error"]["errors"][0]["reason"] == "resourceInUseByAnotherResource"
    busy = http(sandbox, "DELETE", f"{COMPUTE}/global/networks/vpc-s")
    assert busy.status_code == 400 and "already being used by" in busy.json()["error"]["message"]
    g.delete_cluster(name=cluster)
    assert sandbox.wait_idle(10)
    assert http(sandbox, "DELETE", f"{COMPUTE}/regions/us-central1/subnetworks/sub-s").status_code == 200
    assert http(sandbox, "DELETE", f"{COMPUTE}/global/networks/vpc-s").status_code == 200
    assert "sub-s" not in {s.subnetwork for s in sandbox.world.subnetworks()}


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/global/networks", {"name": "Bad_Name", "autoCreateSubnetworks": False}, 400, "Must be a match of regex"),
    ("/global/networks", {"name": "auto-net", "autoCreateSubnetworks": True}, 400, "custom-mode networks only"),
    ("/global/networks", {"name": "multus-vpc", "autoCreateSubnetworks": False}, 409, "already exists"),
    ("/global/networks", {"name": "n1", "autoCreateSubnetworks": False, "colour": "red"}, 400, "Unknown name"),
    ("/regions/us-central1/subnetworks", {"name": "s1", "network": "global/networks/nowhere",
                                          "ipCidrRange": "10.99.0.0/24"}, 400, "cannot be found"),
    ("/regions/us-central1/subnetworks", {"name": "s1", "network": "global/networks/multus-vpc",
                                          "ipCidrRange": "10.99.0.1/24"}, 400, "Invalid IPCidrRange"),
    ("/regions/us-central1/subnetworks", {"name": "s1", "network": "global/networks/multus-vpc",
                                          "ipCidrRange": "10.0.1.0/25"}, 400, "conflicts with existing subnetwork"),
    ("/regions/us-central1/subnetworks", {"name": "multus-subnet", "network": "global/networks/multus-vpc",
                                          "ipCidrRange": "10.98.0.0/24"}, 409, "already exists"),
], ids=["name", "auto-mode", "duplicate-network", "unknown-field", "no-network", "host-bits", "overlap",
        "duplicate-subnet"])
def test_compute_refusals(sandbox: GkeSandbox, path: str, body: dict[str, Any], status: int, needle: str) -> None:
    resp = http(sandbox, "POST", f"{COMPUTE}{path}", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["errors"][0]["message"] == error["message"]
    assert http(sandbox, "GET", f"{COMPUTE}/global/networks/nowhere").status_code == 404
    assert http(sandbox, "GET", "/compute/v1/projects/someone-else/global/networks").status_code == 403


def test_compute_refuses_subnet_kinds_it_does_not_model(sandbox: GkeSandbox) -> None:
    resp = http(sandbox, "POST", f"{COMPUTE}/regions/us-central1/subnetworks", json={
        "name": "v6", "network": "global/networks/multus-vpc", "ipCidrRange": "10.97.0.0/24", "stackType": "IPV4_IPV6"})
    assert resp.status_code == 400 and "IPV4_ONLY" in resp.json()["error"]["message"]


def test_the_process_serves_rest_with_a_token_file(tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.gke", "--rest-port", "0", "--token-file", str(token_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(3)] if proc.stdout else []
        assert lines[0].startswith("MULTUS_PROVISIONER_GKE_ENDPOINT=127.0.0.1:")
        key, _, url = lines[2].partition("=")
        assert key == "MULTUS_PROVISIONER_GKE_REST" and url.startswith("http://127.0.0.1:")
        ok = requests.get(f"{url}/v1/{LEGACY}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["name"] == "demo-legacy"
        assert requests.get(f"{url}/v1/{LEGACY}", timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    empty = tmp_path / "empty"
    empty.write_text("")
    bad = subprocess.run([sys.executable, "-m", "sandbox.gke", "--rest-port", "0", "--token-file", str(empty)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected one token" in bad.stderr


def test_error_details_are_rendered_as_json() -> None:
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo(reason="CLUSTER_ALREADY_HAS_OPERATION", domain="container.googleapis.com")
    assert rest._details([info, {"@type": "x"}, object()]) == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CLUSTER_ALREADY_HAS_OPERATION",
         "domain": "container.googleapis.com"}, {"@type": "x"}]
