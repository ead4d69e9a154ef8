"""The sandbox GKE server itself: scenarios, API behaviour, hooks, audit sinks, faults, the CLI.

Everything goes through the unmodified ClusterManagerClient over gRPC on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import container_v1 as c
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

from sandbox.gke.audit import HttpPushSink
from sandbox.gke.realism import Realism
from sandbox.gke.scenario import DEFAULT_SCENARIO, ScenarioError, load, parse
from sandbox.gke.server import GkeSandbox

ROOT = Path(__file__).resolve().parent.parent
PROJECT, LOCATION = "multus-sandbox", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
CALM = Realism.calm()  # these tests predate GKE's ordinary day (tests/test_gke_realism.py covers it)
NODE_NAME = re.compile(r"^gke-[a-z0-9-]+-[0-9a-f]{8}-[a-z0-9]{4}$")



@pytest.fixture
def gke_sandbox(calm_gke_sandbox: object) -> object:
    """Calm here: these tests pin the server's exact answers and node counts in a world without
    GKE's own operations and with one zone per pool; the ordinary day is tests/test_gke_realism.py."""
    return calm_gke_sandbox

@pytest.fixture
def client(gke_sandbox) -> Iterator[c.ClusterManagerClient]:
    channel = grpc.insecure_channel(gke_sandbox.endpoint)
    yield c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    channel.close()


def multus_pool(name: str = "multus-pool") -> c.NodePool:
    return c.NodePool(
        name=name, initial_node_count=1,
        network_config=c.NodeNetworkConfig(
            additional_node_network_configs=[c.AdditionalNodeNetworkConfig(network="multus-vpc",
                                                                           subnetwork="multus-subnet")],
            additional_pod_network_configs=[c.AdditionalPodNetworkConfig(
                subnetwork="multus-subnet", secondary_pod_range="multus-pods",
                max_pods_per_node=c.MaxPodsConstraint(max_pods_per_node=8))]))


# ---------------------------------------------------------------------------------------------- scenarios

def test_default_scenario_matches_the_brief():
    s = load(DEFAULT_SCENARIO)
    assert (s.project, s.location) == (PROJECT, LOCATION)
    eligible, legacy = s.cluster("demo-eligible"), s.cluster("demo-legacy")
    assert (eligible.version, eligible.dataplane_v2, eligible.ip_alias, eligible.multi_networking) == \
        ("1.30", True, True, True)
    assert not eligible.create_at_start and eligible.labels == {"multus-provisioner": "enabled"}
    assert [p.additional_node_networks for p in eligible.node_pools] == [()]
    assert (legacy.version, legacy.dataplane_v2, legacy.create_at_start) == ("1.27", False, True)
    assert legacy.labels == {"multus-provisioner": "enabled"}
    subnet = next(x for x in s.subnetworks if x.subnetwork == "multus-subnet")
    assert (subnet.network, subnet.primary_range, dict(subnet.secondary_ranges)) == \
        ("multus-vpc", "10.0.1.0/24", {"multus-pods": "172.16.1.0/24"})


def test_scenario_errors_name_every_bad_field():
    data = {
        "project": "multus-sandbox",
        "extra": 1,
        "subnetworks": [{"network": "vpc", "subnetwork": "sub", "region": "us-central1",
                         "primary_range": "10.0.1.1/24", "secondary_ranges": {"pods": "not-a-cidr"}}],
        "clusters": [
            {"name": "ok-cluster"},
            {"name": "bad", "version": 1.3, "status": "SLEEPING", "labels": {"Key": "v"},
             "node_pools": [{"name": "p", "node_count": -1,
                             "additional_pod_networks": [{"subnetwork": "nope", "secondary_pod_range": "x"}]}]},
            {"name": "ok-cluster", "version": "banana", "dataplane_v2": "yes"},
        ],
    }
    with pytest.raises(ScenarioError) as e:
        parse(data, source="test.yaml")
    problems = "\n".join(e.value.problems)
    for expected in ("extra: unknown field", "subnetworks[0].primary_range:",
                     "subnetworks[0].secondary_ranges.pods:", "clusters[1].version:", "quote it",
                     "clusters[1].status:", "clusters[1].labels.Key:", "clusters[1].node_pools[0].node_count:",
                     "clusters[1].node_pools[0].additional_pod_networks[0].subnetwork:",
                     "clusters[2].version:", "clusters[2].dataplane_v2:", "clusters[2].name: duplicate"):
        assert expected in problems, expected
    assert str(e.value).startswith("invalid scenario test.yaml: ")


def test_scenario_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("project: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load(tmp_path / "list.yaml")
    with pytest.raises(ScenarioError, match="project: is required"):
        parse({"clusters": []})


# ---------------------------------------------------------------------------------------------- API

def test_names_in_both_forms_and_list_calls(gke_sandbox, client):
    by_name = client.get_cluster(name=f"{PARENT}/clusters/demo-legacy")
    by_fields = client.get_cluster(project_id=PROJECT, zone=LOCATION, cluster_id="demo-legacy")
    assert by_name.name == by_fields.name == "demo-legacy"
    assert by_name.self_link.endswith(f"{PARENT}/clusters/demo-legacy")
    assert [x.name for x in client.list_clusters(parent=f"projects/{PROJECT}/locations/-").clusters] == \
        ["demo-legacy"]
    assert client.list_clusters(parent=f"projects/{PROJECT}/locations/europe-west1").clusters == []
    pools = client.list_node_pools(project_id=PROJECT, zone=LOCATION, cluster_id="demo-legacy").node_pools
    assert [p.name for p in pools] == ["default-pool"]
    pool = client.get_node_pool(project_id=PROJECT, zone=LOCATION, cluster_id="demo-legacy",
                                node_pool_id="default-pool")
    assert pool.status == c.NodePool.Status.RUNNING and pool.locations == ["us-central1-a"]


@pytest.mark.parametrize("call, exc", [
    (lambda cl: cl.get_cluster(name="projects/multus-sandbox/clusters/x"), gexc.InvalidArgument),
    (lambda cl: cl.get_cluster(name=f"{PARENT}/clusters/UPPER"), gexc.InvalidArgument),
    (lambda cl: cl.get_cluster(project_id=PROJECT, zone=LOCATION), gexc.InvalidArgument),
    (lambda cl: cl.get_cluster(name=f"{PARENT}/clusters/absent"), gexc.NotFound),
    (lambda cl: cl.get_cluster(name="projects/someone-else/locations/us-central1/clusters/x"),
     gexc.PermissionDenied),
    (lambda cl: cl.get_node_pool(name=f"{PARENT}/clusters/demo-legacy/nodePools/absent"), gexc.NotFound),
    (lambda cl: cl.get_operation(name=f"{PARENT}/operations/operation-0-none"), gexc.NotFound),
    (lambda cl: cl.get_operation(name="operation-1"), gexc.InvalidArgument),
    (lambda cl: cl.list_usable_subnetworks(request={"parent": "projects"}), gexc.InvalidArgument),
    (lambda cl: cl.create_node_pool(parent=f"{PARENT}/clusters/demo-legacy",
                                    node_pool=c.NodePool(name="default-pool", initial_node_count=1)),
     gexc.AlreadyExists),
    (lambda cl: cl.create_node_pool(parent=f"{PARENT}/clusters/demo-legacy", node_pool=multus_pool()),
     gexc.InvalidArgument),  # no multi-networking on demo-legacy
])
def test_status_codes(client, call, exc):
    with pytest.raises(exc):
        call(client)


def test_create_cluster_hooks_pool_and_audit(tmp_path):
    events: list[tuple] = []
    entries: list[dict] = []
    ca_pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    def on_cluster(cluster):
        events.append(("cluster", cluster.name, cluster.status))
        return "127.0.0.1:6443", ca_pem

    sandbox = GkeSandbox(
        realism=CALM, operation_delay=0.05, audit_sink=entries.append, on_cluster=on_cluster,
        on_node_pool=lambda ref, pool, nodes: events.append(("pool", ref.doc_id, pool.name, tuple(nodes))),
        on_node_pool_deleted=lambda ref, pool, nodes: events.append(("pool-deleted", pool.name, len(nodes))),
        on_cluster_deleted=lambda ref, cluster: events.append(("cluster-deleted", ref.path)))
    endpoint = sandbox.start()
    channel = grpc.insecure_channel(endpoint)
    client = c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    try:
        assert [e[:2] for e in events] == [("cluster", "demo-legacy"), ("pool", f"{PROJECT}~{LOCATION}~demo-legacy")]
        events.clear()
        from sandbox.gke.protos import cluster_message

        spec = sandbox.scenario.cluster("demo-eligible")
        op = client.create_cluster(parent=PARENT, cluster=cluster_message(spec))
        assert op.status == c.Operation.Status.RUNNING and op.operation_type == c.Operation.Type.CREATE_CLUSTER
        provisioning = client.get_cluster(name=f"{PARENT}/clusters/demo-eligible")
        assert provisioning.status == c.Cluster.Status.PROVISIONING and not provisioning.endpoint
        with pytest.raises(gexc.AlreadyExists):
            client.create_cluster(parent=PARENT, cluster=cluster_message(spec))
        with pytest.raises(gexc.FailedPrecondition):
            client.create_node_pool(parent=f"{PARENT}/clusters/demo-eligible", node_pool=multus_pool())
        assert sandbox.wait_idle(5)
        cluster = client.get_cluster(name=f"{PARENT}/clusters/demo-eligible")
        assert cluster.status == c.Cluster.Status.RUNNING and cluster.endpoint == "127.0.0.1:6443"
        assert base64.b64decode(cluster.master_auth.cluster_ca_certificate) == ca_pem
        assert cluster.current_node_count == 1
        done = client.get_operation(name=f"{PARENT}/operations/{op.name}")
        assert done.status == c.Operation.Status.DONE and done.end_time
        assert events[0] == ("cluster", "demo-eligible", c.Cluster.Status.PROVISIONING)
        kind, doc_id, pool_name, nodes = events[1]
        assert (kind, doc_id, pool_name) == ("pool", f"{PROJECT}~{LOCATION}~demo-eligible", "default-pool")
        assert len(nodes) == 1 and NODE_NAME.match(nodes[0]) and nodes[0].startswith("gke-demo-eligible-default-p")

        created = [e for e in entries if e["protoPayload"]["methodName"].endswith("CreateCluster")]
        assert [("first" in e["operation"], "last" in e["operation"]) for e in created] == [(True, False),
                                                                                          (False, True)]
        assert created[0]["resource"] == {"type": "gke_cluster", "labels": {
            "project_id": PROJECT, "location": LOCATION, "cluster_name": "demo-eligible"}}
        assert created[0]["protoPayload"]["request"]["cluster"]["name"] == "demo-eligible"

        # deprecated fields -> the zones/ resource name form, as GKE logs it
        op = client.create_node_pool(project_id=PROJECT, zone=LOCATION, cluster_id="demo-eligible",
                                     node_pool=multus_pool())
        assert sandbox.wait_idle(5)
        assert entries[-1]["protoPayload"]["resourceName"] == \
            f"projects/{PROJECT}/zones/{LOCATION}/clusters/demo-eligible/nodePools/multus-pool"
        assert [o.name for o in client.list_operations(parent=f"projects/{PROJECT}/locations/-").operations][-1] \
            == op.name

        client.delete_node_pool(name=f"{PARENT}/clusters/demo-eligible/nodePools/multus-pool")
        assert sandbox.wait_idle(5)
        assert ("pool-deleted", "multus-pool", 1) in events
        client.delete_cluster(name=f"{PARENT}/clusters/demo-eligible")
        assert sandbox.wait_idle(5)
        assert events[-1] == ("cluster-deleted", f"{PARENT}/clusters/demo-eligible")
        with pytest.raises(gexc.NotFound):
            client.get_cluster(name=f"{PARENT}/clusters/demo-eligible")
        methods = [e["protoPayload"]["methodName"].rsplit(".", 1)[1] for e in entries]
        assert methods == ["CreateCluster"] * 2 + ["CreateNodePool"] * 2 + ["DeleteNodePool"] * 2 + \
            ["DeleteCluster"] * 2
    finally:
        channel.close()
        sandbox.stop()


def test_usable_subnetworks_paginate(client):
    pages = client.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}", "page_size": 1})
    subnets = list(pages)
    assert [s.subnetwork.rsplit("/", 1)[1] for s in subnets] == ["multus-subnet", "default"]
    assert subnets[0].network == f"projects/{PROJECT}/global/networks/multus-vpc"
    assert {r.range_name: r.ip_cidr_range for r in subnets[0].secondary_ip_ranges} == {
        "multus-pods": "172.16.1.0/24"}


def test_start_all_and_overrides():
    from sandbox.gke.scenario import NodePoolSpec

    sandbox = GkeSandbox(operation_delay=0.01, start_all=True, realism=CALM)
    try:
        world = sandbox.world
        assert world.cluster_nodes(LOCATION, "demo-eligible")  # created at start despite the flag
        with pytest.raises(RuntimeError, match="initial_node_count"):  # no pools and no node count
            sandbox.create_cluster("extra-cluster", version="1.29")
        sandbox.create_cluster("extra-cluster", version="1.29", labels={"team": "a"},
                               node_pools=(NodePoolSpec("pool-a", node_count=3),))
        assert [len(v) for v in world.cluster_nodes(LOCATION, "extra-cluster").values()] == [3]
        assert world.get_cluster(c.GetClusterRequest(name=f"{PARENT}/clusters/extra-cluster")) \
            .current_master_version.startswith("1.29.")
    finally:
        sandbox.stop()


# ---------------------------------------------------------------------------------------------- faults

def test_faults_in_process_consume_in_order(gke_sandbox, client):
    gke_sandbox.faults.fail("GetCluster", "UNAVAILABLE", times=2)
    assert gke_sandbox.faults.pending() == {"GetCluster": {"fail": ["UNAVAILABLE", "UNAVAILABLE"], "delay": []}}
    name = f"{PARENT}/clusters/demo-legacy"
    for _ in range(2):
        with pytest.raises(gexc.ServiceUnavailable):
            client.get_cluster(name=name, retry=None)
    assert client.get_cluster(name=name, retry=None).name == "demo-legacy"
    assert gke_sandbox.calls["GetCluster"] == 3
    with pytest.raises(ValueError, match="unknown method"):
        gke_sandbox.faults.fail("GetClusterz", "UNAVAILABLE")
    with pytest.raises(ValueError, match="status code"):
        gke_sandbox.faults.fail("GetCluster", "TEAPOT")


def test_admin_endpoint():
    sandbox = GkeSandbox(operation_delay=0.01, realism=CALM)
    sandbox.start(admin_port=0)
    channel = grpc.insecure_channel(sandbox.endpoint)
    cl = c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        req = urllib.request.Request(sandbox.admin_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        assert call("GET", "/healthz") == (200, {"ok": True, "endpoint": sandbox.endpoint})
        status, body = call("POST", "/faults", {"method": "ListNodePools", "code": "RESOURCE_EXHAUSTED",
                                                "message": "quota"})
        assert status == 200 and body["pending"]["ListNodePools"]["fail"] == ["RESOURCE_EXHAUSTED"]
        with pytest.raises(gexc.ResourceExhausted, match="quota"):
            cl.list_node_pools(parent=f"{PARENT}/clusters/demo-legacy", retry=None)
        assert call("GET", "/calls")[1] == {"ListNodePools": 1}
        assert call("POST", "/faults", {"method": "Nope", "code": "INTERNAL"})[0] == 400
        assert call("POST", "/faults", {"method": "GetCluster", "code": "INTERNAL", "delay": 1})[0] == 400
        call("POST", "/faults", {"method": "GetCluster", "delay": 0.01, "times": 3})
        assert call("DELETE", "/faults") == (200, {"cleared": True})
        assert call("GET", "/faults") == (200, {})
        status, body = call("POST", "/clusters", {"name": "demo-eligible", "wait": True})
        assert status == 200 and body["operation"].startswith("operation-")
        assert len(call("GET", "/audit")[1]) == 2
    finally:
        channel.close()
        sandbox.stop()


# ---------------------------------------------------------------------------------------------- sinks

def test_http_push_sink_retries_and_sends_the_push_envelope():
    received: list[dict] = []
    answers = iter([500, 204, 204])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            code = next(answers)
            if code < 300:
                received.append(body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink = HttpPushSink(f"http://127.0.0.1:{server.server_address[1]}/push", backoff=0.05,
                        subscription="projects/multus-sandbox/subscriptions/audit-push")
    try:
        sink({"insertId": "a", "timestamp": "2026-01-01T00:00:00.000000Z"})
        sink({"insertId": "b", "timestamp": "2026-01-01T00:00:01.000000Z"})
        sink.close()
        assert sink.delivered == 2 and sink.dropped == 0
        assert [json.loads(base64.b64decode(r["message"]["data"]))["insertId"] for r in received] == ["a", "b"]
        msg = received[0]["message"]
        assert msg["messageId"] and msg["publishTime"].endswith("Z")
        assert msg["attributes"] == {"logging.googleapis.com/timestamp": "2026-01-01T00:00:00.000000Z"}
        assert received[0]["subscription"] == "projects/multus-sandbox/subscriptions/audit-push"
    finally:
        server.shutdown()
        server.server_close()


def test_http_push_sink_only_posts_to_loopback():
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        HttpPushSink("http://example.com/push")


# ---------------------------------------------------------------------------------------------- CLI

def test_module_prints_endpoint_first_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.gke", "--scenario", str(DEFAULT_SCENARIO),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stdout.readline().strip()
        m = re.fullmatch(r"MULTUS_PROVISIONER_GKE_ENDPOINT=127\.0\.0\.1:(\d+)", first)
        assert m, first
        assert proc.stdout.readline().startswith("MULTUS_PROVISIONER_GKE_ADMIN=http://127.0.0.1:")
        channel = grpc.insecure_channel(f"127.0.0.1:{m.group(1)}")
        cl = c.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
        assert cl.get_cluster(name=f"{PARENT}/clusters/demo-legacy").name == "demo-legacy"
        channel.close()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_module_rejects_a_bad_scenario(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: multus-sandbox\nclusters:\n  - name: x\n    version: 1.30\n")
    proc = subprocess.run([sys.executable, "-m", "sandbox.gke", "--scenario", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "clusters[0].version" in proc.stderr and proc.stdout == ""


def test_failing_hook_fails_the_operation():
    entries: list[dict] = []

    def broken(ref, pool, nodes):
        if pool.name == "multus-pool":
            raise RuntimeError("kube sandbox is down")

    sandbox = GkeSandbox(operation_delay=0.01, start_all=True, on_node_pool=broken, audit_sink=entries.append,
                         realism=CALM)
    try:
        op = sandbox.world.create_node_pool(c.CreateNodePoolRequest(parent=f"{PARENT}/clusters/demo-eligible",
                                                                    node_pool=multus_pool()))
        assert sandbox.wait_idle(5)
        done = sandbox.world.get_operation(c.GetOperationRequest(name=f"{PARENT}/operations/{op.name}"))
        assert done.status == c.Operation.Status.DONE
        assert "kube sandbox is down" in done.status_message and done.error.code == 13
        assert entries[-1]["protoPayload"]["status"] == {"code": 13, "message": "kube sandbox is down"}
        assert entries[-1]["severity"] == "ERROR" and entries[-1]["operation"]["last"] is True
    finally:
        sandbox.stop()
