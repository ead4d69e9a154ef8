"""shared.adapters.gke against the sandbox GKE server, through the real ClusterManagerClient (no mocks)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from google.cloud import container_v1

from shared.adapters.gke import Gke, credentials, decode_cluster, map_error, raise_mapped
from shared.core.errors import Busy, Permanent, Rejected, Transient
from shared.core.refs import ClusterRef
from shared.core.settings import NodePoolTemplate, Settings

PROJECT, LOCATION = "multus-sandbox", "us-central1"
ELIGIBLE = ClusterRef(PROJECT, LOCATION, "demo-eligible")
LEGACY = ClusterRef(PROJECT, LOCATION, "demo-legacy")
TEMPLATE = NodePoolTemplate(name="multus-pool", network="multus-vpc", subnetwork="multus-subnet",
                            secondary_pod_range="multus-pods", node_count=2, labels={"multus": "true"})


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def create_settled(sandbox, name: str) -> None:
    """Create a scenario cluster and end GKE's own operation that follows (a realistic sandbox runs
    one right after every create; tests of other things must not race it)."""
    sandbox.create_cluster(name)
    op = sandbox.world.running_operation(LOCATION, name)
    if op is not None:
        sandbox.world.complete_operation(op.name)


# ---------------------------------------------------------------------------------------------- reads

def test_reads_cluster_and_pools(gke, gke_sandbox):
    legacy = gke.get_cluster(LEGACY)  # decoded at the edge: the pure ClusterFacts, no protobuf
    assert legacy.version.startswith("1.27.")
    assert not legacy.dataplane_v2
    assert legacy.labels["multus-provisioner"] == "enabled"
    assert legacy.cluster_id and legacy.create_time and legacy.endpoints is not None

    create_settled(gke_sandbox, "demo-eligible")
    c = gke.get_cluster(ELIGIBLE)
    assert c.status == "RUNNING"
    assert c.version.startswith("1.30.")
    assert c.dataplane_v2
    assert c.ip_alias and c.multi_networking
    assert not c.autopilot
    pools = gke.list_node_pools(ELIGIBLE)
    assert [p.name for p in pools] == ["default-pool"]
    assert not pools[0].network_config.additional_node_network_configs
    assert gke.get_node_pool(ELIGIBLE, "default-pool").status == container_v1.NodePool.Status.RUNNING
    assert gke.calls["get_cluster"] == 2 and gke.calls["list_node_pools"] == 1


def test_list_clusters(gke, gke_sandbox):
    assert [c.name for c in gke.list_clusters(PROJECT)] == ["demo-legacy"]
    create_settled(gke_sandbox, "demo-eligible")
    assert sorted(c.name for c in gke.list_clusters(PROJECT, LOCATION)) == ["demo-eligible", "demo-legacy"]
    assert gke.list_clusters(PROJECT, "europe-west1") == []
    with pytest.raises(Permanent) as e:
        gke.list_clusters("other-project")
    assert e.value.code == "PERMISSION_DENIED"
    with pytest.raises(Rejected):
        gke.list_clusters("BAD PROJECT")


def test_secondary_range_cidr(gke):
    assert gke.secondary_range_cidr(LEGACY, "multus-subnet", "multus-pods") == "172.16.1.0/24"
    full = f"projects/{PROJECT}/regions/{LOCATION}/subnetworks/multus-subnet"
    assert gke.secondary_range_cidr(LEGACY, full, "multus-pods") == "172.16.1.0/24"
    url = "https://www.googleapis.com/compute/v1/" + full
    assert gke.secondary_range_cidr(LEGACY, url, "multus-pods") == "172.16.1.0/24"
    with pytest.raises(Permanent) as e:
        gke.secondary_range_cidr(LEGACY, "multus-subnet", "no-such-range")
    assert "multus-subnet" in str(e.value) and "no-such-range" in str(e.value)
    with pytest.raises(Permanent) as e:
        gke.secondary_range_cidr(LEGACY, "no-such-subnet", "multus-pods")
    assert "no-such-subnet" in str(e.value) and "multus-pods" in str(e.value)


# ---------------------------------------------------------------------------------------------- writes

def test_create_node_pool_operation_pool_and_audit(gke, gke_sandbox):
    create_settled(gke_sandbox, "demo-eligible")
    before = len(gke_sandbox.audit_log)
    op_name = gke.create_node_pool(ELIGIBLE, TEMPLATE)
    assert op_name and op_name.startswith("operation-")
    op = gke.get_operation(PROJECT, LOCATION, op_name)
    assert op.operation_type == container_v1.Operation.Type.CREATE_NODE_POOL
    done = wait_for(lambda: gke.get_operation(PROJECT, LOCATION, op_name).status
                    == container_v1.Operation.Status.DONE)
    assert done
    pool = gke.get_node_pool(ELIGIBLE, "multus-pool")
    assert pool.status == container_v1.NodePool.Status.RUNNING
    assert pool.initial_node_count == 2 and pool.config.labels["multus"] == "true"
    node_net = pool.network_config.additional_node_network_configs[0]
    pod_net = pool.network_config.additional_pod_network_configs[0]
    assert (node_net.network, node_net.subnetwork) == ("multus-vpc", "multus-subnet")
    assert (pod_net.subnetwork, pod_net.secondary_pod_range) == ("multus-subnet", "multus-pods")
    assert pod_net.max_pods_per_node.max_pods_per_node == 8
    nodes = gke_sandbox.world.cluster_nodes(LOCATION, "demo-eligible")["multus-pool"]
    # a regional cluster: node_count per zone, three zones (GKE docs, "Regional clusters")
    assert len(nodes) == 2 * 3 and all(n.startswith("gke-demo-eligible-multus-pool-") for n in nodes)

    entries = wait_for(lambda: gke_sandbox.audit_log[before:] if len(gke_sandbox.audit_log) >= before + 2
                       else None)
    first, last = entries
    for e in (first, last):
        assert e["protoPayload"]["@type"] == "type.googleapis.com/google.cloud.audit.AuditLog"
        assert e["protoPayload"]["serviceName"] == "container.googleapis.com"
        assert e["protoPayload"]["methodName"] == "google.container.v1.ClusterManager.CreateNodePool"
        assert e["protoPayload"]["resourceName"] == f"{ELIGIBLE.path}/nodePools/multus-pool"
        assert e["resource"] == {"type": "gke_nodepool", "labels": {
            "project_id": PROJECT, "location": LOCATION, "cluster_name": "demo-eligible",
            "nodepool_name": "multus-pool"}}
        assert e["logName"] == f"projects/{PROJECT}/logs/cloudaudit.googleapis.com%2Factivity"
        assert e["operation"]["id"] == op_name and e["operation"]["producer"] == "container.googleapis.com"
        assert e["severity"] == "NOTICE" and e["timestamp"].endswith("Z") and e["insertId"]
    # as GKE writes them (khi captures): who did it on the first entry; the last one is bare
    assert first["protoPayload"]["authenticationInfo"]["principalEmail"].endswith(".iam.gserviceaccount.com")
    assert "authenticationInfo" not in last["protoPayload"] and last["protoPayload"]["metadata"]["operationType"]
    assert first["operation"].get("first") is True and "last" not in first["operation"]
    assert last["operation"].get("last") is True and "first" not in last["operation"]
    assert first["protoPayload"]["request"]["nodePool"]["name"] == "multus-pool"
    assert first["protoPayload"]["response"]["status"] == "PENDING"  # node pool operations, as khi captured

    # The controller's own decoder reads them, wrapped as a Logging sink -> Pub/Sub push would be.
    from sandbox.gke.audit import push_envelope
    from shared.core.events import decode_audit

    decoded = []
    for e in (first, last):
        envelope = push_envelope(e, subscription="projects/multus-sandbox/subscriptions/audit")
        decoded.append(decode_audit({"id": envelope["message"]["messageId"], "data": envelope}))
    assert [(d.first, d.last) for d in decoded] == [(True, False), (False, True)]
    assert {d.cluster for d in decoded} == {ELIGIBLE}
    assert {d.node_pool for d in decoded} == {"multus-pool"}
    assert {d.operation_id for d in decoded} == {op_name}
    assert not any(d.failed for d in decoded)


def test_create_node_pool_twice_is_done(gke, gke_sandbox):
    create_settled(gke_sandbox, "demo-eligible")
    assert gke.create_node_pool(ELIGIBLE, TEMPLATE)
    assert gke.create_node_pool(ELIGIBLE, TEMPLATE) is None  # ALREADY_EXISTS while running
    assert gke_sandbox.wait_idle()
    assert gke.create_node_pool(ELIGIBLE, TEMPLATE) is None  # and once done
    assert gke.calls["create_node_pool"] == 3


def test_bad_template_is_rejected_before_any_call(gke):
    bad = NodePoolTemplate(name="Bad_Name", network="multus vpc", subnetwork="multus-subnet",
                           secondary_pod_range="multus-pods", max_pods_per_node=0, labels={"a b": "c"})
    with pytest.raises(Rejected) as e:
        gke.create_node_pool(ELIGIBLE, bad)
    fields = {p.field for p in e.value.problems}
    assert {"node_pool_template.name", "node_pool_template.network", "node_pool_template.max_pods_per_node",
            "node_pool_template.labels"} <= fields
    assert gke.calls["create_node_pool"] == 0


def test_invalid_node_pool_and_operation_names_are_rejected(gke):
    with pytest.raises(Rejected):
        gke.get_node_pool(LEGACY, "../etc")
    with pytest.raises(Rejected):
        gke.get_operation(PROJECT, LOCATION, "op/../x")
    assert not gke.calls


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED"])
def test_retryable_codes_are_transient(gke, gke_sandbox, code):
    gke_sandbox.faults.fail("GetCluster", code, message=f"simulated {code.lower()}")
    with pytest.raises(Transient) as e:
        gke.get_cluster(LEGACY)
    assert e.value.code == code and e.value.api == "gke"
    assert f"simulated {code.lower()}" in str(e.value)
    assert gke_sandbox.calls["GetCluster"] == 1  # no hidden client-side retry
    assert gke.get_cluster(LEGACY).name == "demo-legacy"  # the fault was for one call only


@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED"])
def test_final_codes_are_permanent_with_gke_message(gke, gke_sandbox, code):
    gke_sandbox.faults.fail("ListNodePools", code, message=f"GKE says {code}")
    with pytest.raises(Permanent) as e:
        gke.list_node_pools(LEGACY)
    assert e.value.code == code and e.value.api == "gke"
    assert f"GKE says {code}" in str(e.value)


def test_real_server_errors_map_with_their_messages(gke, gke_sandbox):
    with pytest.raises(Permanent) as e:
        gke.get_cluster(ClusterRef(PROJECT, LOCATION, "missing"))
    assert e.value.code == "NOT_FOUND" and "clusters/missing" in str(e.value)
    with pytest.raises(Permanent) as e:
        gke.get_cluster(ClusterRef("other-project", LOCATION, "demo-legacy"))
    assert e.value.code == "PERMISSION_DENIED" and "other-project" in str(e.value)
    with pytest.raises(Permanent) as e:  # demo-legacy has no multi-networking
        gke.create_node_pool(LEGACY, TEMPLATE)
    assert e.value.code == "INVALID_ARGUMENT" and "multi-networking" in str(e.value)
    create_settled(gke_sandbox, "demo-eligible")
    assert gke.create_node_pool(ELIGIBLE, TEMPLATE)
    with pytest.raises(Busy) as e:  # another write while the operation runs: it passes when that ends
        gke.create_node_pool(ELIGIBLE, NodePoolTemplate(**{**TEMPLATE.__dict__, "name": "second-pool"}))
    assert e.value.code == "CLUSTER_ALREADY_HAS_OPERATION" and "incompatible operation" in str(e.value)
    assert e.value.operation and e.value.operation.startswith("operation-")


def test_incompatible_operation_is_busy_by_its_error_info_and_other_preconditions_stay_permanent(gke, gke_sandbox):
    """GKE's reason (ErrorInfo in the status details) decides, not the code alone: a label
    fingerprint mismatch is FAILED_PRECONDITION too, and a retry of the same request cannot fix it."""
    from google.api_core import exceptions as gexc

    create_settled(gke_sandbox, "demo-eligible")
    gke.create_node_pool(ELIGIBLE, TEMPLATE)
    try:
        gke.client.create_node_pool(parent=ELIGIBLE.path, node_pool=gke.node_pool_message(
            NodePoolTemplate(**{**TEMPLATE.__dict__, "name": "second-pool"})), retry=None)
    except gexc.FailedPrecondition as raw:
        assert raw.reason == "CLUSTER_ALREADY_HAS_OPERATION"  # the client library read the details
        mapped = map_error(raw, "x")
        assert isinstance(mapped, Busy)
    else:
        raise AssertionError("the second write was not refused")
    # the older wording GKE used ("... Please wait and try again once it is done.") without details
    old = gexc.FailedPrecondition("Operation operation-1 is currently upgrading cluster c. Please wait and try "
                                  "again once it is done.")
    assert isinstance(map_error(old, "x"), Busy) and map_error(old, "x").operation == "operation-1"
    fingerprint = gexc.FailedPrecondition("Labels could not be set due to fingerprint mismatch; try again with "
                                          "the proper fingerprint")
    assert type(map_error(fingerprint, "x")) is Permanent


def test_an_unknown_exception_is_a_bug_that_surfaces_not_a_retry():
    """Only the API's, auth's and the transport's errors are mapped; anything else is raised as it is."""
    assert map_error(KeyError("x"), "x") is None
    assert isinstance(map_error(ConnectionResetError("peer"), "x"), Transient)
    with pytest.raises(KeyError):
        try:
            raise KeyError("x")
        except KeyError as e:
            raise_mapped(e, "x")


def test_slow_server_hits_the_call_timeout(gke_sandbox, gke_settings):
    gke = Gke(gke_settings, timeout=0.3)
    try:
        gke_sandbox.faults.delay("GetCluster", 1.0)
        started = time.monotonic()
        with pytest.raises(Transient) as e:
            gke.get_cluster(LEGACY)
        assert time.monotonic() - started < 0.9
        assert e.value.code == "DEADLINE_EXCEEDED"
    finally:
        gke.close()


def test_unreachable_endpoint_is_transient():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gke = Gke(Settings(project=PROJECT, gke_endpoint=f"127.0.0.1:{port}"), timeout=2.0)
    try:
        with pytest.raises(Transient) as e:
            gke.get_cluster(LEGACY)
        assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        gke.close()


def test_given_client_is_used_as_is(gke_sandbox):
    import grpc
    from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

    channel = grpc.insecure_channel(gke_sandbox.endpoint)
    client = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    gke = Gke(Settings(project=PROJECT), client)  # no endpoint in settings: only the client says where
    try:
        assert gke.get_cluster(LEGACY).name == "demo-legacy"
    finally:
        channel.close()


# ---------------------------------------------------------------------------------------------- credentials

@dataclass
class Tls:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_tls(name: str) -> Tls:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Tls(ca.public_bytes(pem), cert.public_bytes(pem),
               key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Tls, list[str]]]:
    """A tiny HTTPS server on 127.0.0.1 answering /version and recording Authorization headers."""
    tls = make_tls("sandbox-test")
    (tmp_path / "cert.pem").write_bytes(tls.cert_pem)
    (tmp_path / "key.pem").write_bytes(tls.key_pem)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps({"major": "1", "minor": "30", "gitVersion": "v1.30.5-gke.1014001",
                               "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2024-10-01T00:00:00Z",
                               "goVersion": "go1.22.6", "compiler": "gc", "platform": "linux/amd64"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", tls, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_api_client_verifies_tls_with_the_ca_from_gke(https_server, tmp_path):
    import kubernetes.client

    from sandbox.gke.server import GkeSandbox

    endpoint, tls, seen = https_server
    token_file = tmp_path / "token"
    token_file.write_text("sandbox-token-1\n")
    sandbox = GkeSandbox(operation_delay=0.05, on_cluster=lambda cluster: (endpoint, tls.ca_pem))
    sandbox.start()
    gke = Gke(Settings(project=PROJECT, gke_endpoint=sandbox.endpoint, access_token_file=str(token_file)))
    try:
        cluster = gke.get_cluster(LEGACY)  # endpoint and CA exactly as the GKE API reports them
        assert base64.b64decode(cluster.ca_certificate) == tls.ca_pem
        before = set(os.listdir(tempfile.gettempdir()))
        api = gke.api_client(cluster)
        # the CA is kept in memory, never in a file that a killed process would leave behind
        assert api.configuration.ca_cert_data == tls.ca_pem.decode() and api.configuration.ssl_ca_cert is None
        assert not [f for f in set(os.listdir(tempfile.gettempdir())) - before if f.startswith("multus-gke-ca-")]
        assert api.configuration.verify_ssl is True
        assert kubernetes.client.VersionApi(api).get_code().git_version == "v1.30.5-gke.1014001"
        assert seen[-1] == "Bearer sandbox-token-1"

        time.sleep(0.01)  # a rotated token reaches the long-lived client through the refresh hook
        token_file.write_text("sandbox-token-2\n")
        os.utime(token_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        kubernetes.client.VersionApi(api).get_code()
        assert seen[-1] == "Bearer sandbox-token-2"

        api.close()
    finally:
        gke.close()
        sandbox.stop()


def test_api_client_fails_with_a_wrong_ca(https_server, tmp_path):
    import kubernetes.client
    import urllib3

    endpoint, _, seen = https_server
    other = make_tls("impostor")
    token_file = tmp_path / "token"
    token_file.write_text("sandbox-token")
    cluster = container_v1.Cluster(name="demo-eligible", endpoint=endpoint, status="RUNNING",
                                   master_auth=container_v1.MasterAuth(
                                       cluster_ca_certificate=base64.b64encode(other.ca_pem).decode()))
    gke = Gke(Settings(project=PROJECT, access_token_file=str(token_file)))
    api = gke.api_client(decode_cluster(cluster))
    api.configuration.retries = False
    try:
        with pytest.raises(urllib3.exceptions.MaxRetryError) as e:
            kubernetes.client.VersionApi(api).get_code()
        assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        assert seen == []  # no request (and no token) reached the impostor-checked server
    finally:
        api.close()


def test_api_client_refuses_bad_cluster_fields(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t")
    gke = Gke(Settings(project=PROJECT, access_token_file=str(token_file)))
    ca = base64.b64encode(make_tls("x").ca_pem).decode()
    with pytest.raises(Transient):  # still provisioning: no endpoint yet
        gke.api_client(decode_cluster(container_v1.Cluster(
            name="c", master_auth=container_v1.MasterAuth(cluster_ca_certificate=ca))))
    with pytest.raises(Permanent, match="endpoint"):
        gke.api_client(decode_cluster(container_v1.Cluster(
            name="c", endpoint="evil.example/path?x", master_auth=container_v1.MasterAuth(cluster_ca_certificate=ca))))
    with pytest.raises(Permanent, match="cluster_ca_certificate"):
        gke.api_client(decode_cluster(container_v1.Cluster(
            name="c", endpoint="127.0.0.1",
            master_auth=container_v1.MasterAuth(cluster_ca_certificate="bm90IGEgY2VydA=="))))


def test_credentials_from_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  abc.def-123  \n")
    creds = credentials(Settings(access_token_file=str(token_file)))
    assert creds.token == "abc.def-123" and creds.valid
    with pytest.raises(Permanent, match="ACCESS_TOKEN_FILE"):
        credentials(Settings(access_token_file=str(tmp_path / "missing")))
    token_file.write_text("two words")
    with pytest.raises(Permanent, match="ACCESS_TOKEN_FILE"):
        credentials(Settings(access_token_file=str(token_file)))


# ---------------------------------------------------------------------------------------------- Shared VPC

def test_shared_vpc_ranges_are_listed_with_the_host_filter_and_a_missing_permission_is_a_finding():
    """A pool on projects/HOST/regions/R/subnetworks/S: ListUsableSubnetworks lists the host's
    subnetworks only with filter networkProjectId=HOST, and one the caller may not use without
    ranges but with a statusMessage (the method's REST reference)."""
    from sandbox.gke.realism import Realism
    from sandbox.gke.scenario import parse
    from sandbox.gke.server import GkeSandbox
    from shared.core.errors import NeedsFix

    host = "shared-vpc-host"
    world = parse({"project": PROJECT, "location": LOCATION, "subnetworks": [
        {"network": "multus-vpc", "subnetwork": "multus-subnet", "region": LOCATION, "primary_range": "10.0.1.0/24",
         "secondary_ranges": {"multus-pods": "172.16.1.0/24"}},
        {"project": host, "network": "shared-vpc", "subnetwork": "shared-subnet", "region": LOCATION,
         "primary_range": "10.20.0.0/24", "secondary_ranges": {"shared-pods": "172.20.0.0/24"}},
        {"project": host, "network": "shared-vpc", "subnetwork": "locked-subnet", "region": LOCATION,
         "primary_range": "10.21.0.0/24", "secondary_ranges": {"locked-pods": "172.21.0.0/24"},
         "network_user": False}],
        "clusters": [{"name": "demo-legacy", "node_pools": [{"name": "default-pool"}]}]}, source="test")
    sandbox = GkeSandbox(world, realism=Realism.calm(), operation_delay=0.05)
    sandbox.start()
    gke = Gke(Settings(project=PROJECT, gke_endpoint=sandbox.endpoint))
    try:
        shared = f"projects/{host}/regions/{LOCATION}/subnetworks/shared-subnet"
        assert gke.secondary_range_cidr(LEGACY, shared, "shared-pods") == "172.20.0.0/24"
        with pytest.raises(NeedsFix) as e:
            gke.secondary_range_cidr(LEGACY, f"projects/{host}/regions/{LOCATION}/subnetworks/locked-subnet",
                                     "locked-pods")
        assert e.value.finding_id == "shared-vpc-permission" and "roles/compute.networkUser" in str(e.value)
        assert f"host project {host}" in e.value.fix and "roles/container.hostServiceAgentUser" in e.value.fix
        # the cluster's own project needs no filter; the host's subnetwork is not in it
        assert gke.secondary_range_cidr(LEGACY, "multus-subnet", "multus-pods") == "172.16.1.0/24"
        with pytest.raises(Permanent, match="not usable"):
            gke.secondary_range_cidr(LEGACY, "shared-subnet", "shared-pods")
    finally:
        gke.close()
        sandbox.stop()
