"""The real `gcloud` (and kubectl through gke-gcloud-auth-plugin) against the sandbox's REST port.

One GKE sandbox per module, each cluster backed by a sandbox Kubernetes API server that wants
the same Bearer token as the REST port, and a gcloud configuration written by
`sandbox.stack.write_gcloud_config` (the one `multus-provisioner sandbox` writes). The commands
are the how-to's (docs/TUTORIAL.md), verbatim apart from names.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import container_v1
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

from sandbox.gke.server import GkeSandbox
from sandbox.stack import write_gcloud_config

SDK_BIN = Path("/usr/lib/google-cloud-sdk/bin")
TOKEN = "gcloud-test-token"
PROJECT = "multus-sandbox"
ZONE = "us-central1-c"

Run = Callable[..., subprocess.CompletedProcess[str]]


class KubeHooks:
    """A sandbox Kubernetes API server per cluster, as the stack gives them (sandbox/stack.py)."""

    def __init__(self) -> None:
        self.servers: dict[str, Any] = {}

    def on_cluster(self, cluster: Any) -> tuple[str, bytes]:
        from sandbox.kube import KubeApiServer

        server = KubeApiServer(token=TOKEN, nodes=[], name=cluster.name, crd_delay=0.05, rollout_delay=0.05)
        server.start(port=0)
        self.servers[cluster.name] = server
        return server.endpoint, server.ca_pem

    def on_node_pool(self, key: Any, pool: Any, nodes: list[str]) -> None:
        server = self.servers.get(key.cluster)
        if server is not None:
            server.add_nodes(nodes, labels={"cloud.google.com/gke-nodepool": pool.name})

    def on_cluster_deleted(self, key: Any, _cluster: Any) -> None:
        server = self.servers.pop(key.cluster, None)
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def hooks() -> Iterator[KubeHooks]:
    h = KubeHooks()
    try:
        yield h
    finally:
        for server in h.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def sandbox(hooks: KubeHooks) -> Iterator[GkeSandbox]:
    # operation_delay 0: GKE operations finish at once, so gcloud's first poll usually sees DONE
    # (it sleeps 5 s between polls otherwise: slower, never wrong).
    # GKE's own operation after CreateCluster is held (600 s) until the test ends it, so what gcloud
    # sees meanwhile (RECONCILING, a refused node pool write) is not a race against its timer.
    from sandbox.gke.realism import Realism

    s = GkeSandbox("sandbox/scenarios/tutorial.yaml", operation_delay=0.0, token=TOKEN,
                   on_cluster=hooks.on_cluster, on_node_pool=hooks.on_node_pool,
                   on_cluster_deleted=hooks.on_cluster_deleted, realism=Realism(own_operation_seconds=600))
    s.start(rest_port=0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sandbox: GkeSandbox) -> Path:
    root = tmp_path_factory.mktemp("gcloud")
    (root / "token").write_text(TOKEN)
    write_gcloud_config(root / "config", rest_url=sandbox.rest_url or "", token_file=root / "token",
                        project=PROJECT, location="us-central1")
    return root


def _env(home: Path) -> dict[str, str]:
    return {"PATH": f"{SDK_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
            "CLOUDSDK_CONFIG": str(home / "config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "KUBECONFIG": str(home / "kubeconfig"), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def gcloud(home: Path) -> Run:
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["gcloud", *args], env=_env(home), capture_output=True, text=True, timeout=120)
        if ok:
            assert p.returncode == 0, f"gcloud {' '.join(args)}:\n{p.stderr}"
        return p
    return run


def kubectl(home: Path, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = SDK_BIN / f"kubectl.{version}"
    assert binary.exists(), f"{binary} is part of this project's machine image"
    p = subprocess.run([str(binary), *args], env=_env(home), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"kubectl.{version} {' '.join(args)}:\n{p.stderr}"
    return p


def grpc_client(sandbox: GkeSandbox) -> tuple[Any, grpc.Channel]:
    channel = grpc.insecure_channel(sandbox.endpoint or "")
    return container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel)), channel


def test_the_configuration_is_what_gcloud_reads(gcloud: Run, sandbox: GkeSandbox) -> None:
    props = json.loads(gcloud("config", "list", "--format=json").stdout)
    assert props["api_endpoint_overrides"] == {"compute": f"{sandbox.rest_url}/compute/v1/",
                                               "container": f"{sandbox.rest_url}/",
                                               "serviceusage": f"{sandbox.rest_url}/"}
    assert props["core"]["project"] == PROJECT and props["compute"] == {"region": "us-central1", "zone": ZONE}
    assert props["core"]["check_gce_metadata"] == "False"


def test_vpc_and_subnet_as_the_how_to_creates_them(gcloud: Run, sandbox: GkeSandbox) -> None:
    gcloud("compute", "networks", "create", "vpc-a", "--subnet-mode=custom")
    gcloud("compute", "networks", "subnets", "create", "subnet-a", "--range=10.0.1.0/24", "--network=vpc-a",
           "--region=us-central1", "--secondary-range=pods-a=172.16.1.0/24")
    net = json.loads(gcloud("compute", "networks", "describe", "vpc-a", "--format=json").stdout)
    assert net["autoCreateSubnetworks"] is False and net["subnetworks"][0].endswith("/subnetworks/subnet-a")
    sub = json.loads(gcloud("compute", "networks", "subnets", "describe", "subnet-a", "--region=us-central1",
                            "--format=json").stdout)
    assert sub["secondaryIpRanges"] == [{"ipCidrRange": "172.16.1.0/24", "rangeName": "pods-a"}]
    listed = json.loads(gcloud("compute", "networks", "subnets", "list", "--format=json").stdout)
    assert {s["name"] for s in listed} == {"default", "subnet-a"}
    assert {n["name"] for n in json.loads(gcloud("compute", "networks", "list", "--format=json").stdout)} == {
        "default", "vpc-a"}
    # what Compute created is what GKE lists as usable
    client, channel = grpc_client(sandbox)
    try:
        usable = {u.subnetwork: u for u in client.list_usable_subnetworks(request={"parent": f"projects/{PROJECT}"})}
    finally:
        channel.close()
    mine = usable[f"projects/{PROJECT}/regions/us-central1/subnetworks/subnet-a"]
    assert [(r.range_name, r.ip_cidr_range) for r in mine.secondary_ip_ranges] == [("pods-a", "172.16.1.0/24")]
    # Compute's refusals reach the user as gcloud prints them
    again = gcloud("compute", "networks", "create", "vpc-a", "--subnet-mode=custom", ok=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    overlap = gcloud("compute", "networks", "subnets", "create", "subnet-b", "--range=10.0.1.128/25",
                     "--network=vpc-a", "--region=us-central1", ok=False)
    assert overlap.returncode == 1 and "conflicts with existing subnetwork 'subnet-a'" in overlap.stderr


def test_cluster_pool_credentials_kubectl_and_delete(gcloud: Run, sandbox: GkeSandbox, hooks: KubeHooks,
                                                     home: Path) -> None:
    if "subnet-a" not in {s.subnetwork for s in sandbox.world.subnetworks()}:
        gcloud("compute", "networks", "create", "vpc-a", "--subnet-mode=custom")
        gcloud("compute", "networks", "subnets", "create", "subnet-a", "--range=10.0.1.0/24", "--network=vpc-a",
               "--region=us-central1", "--secondary-range=pods-a=172.16.1.0/24")
    before = len(sandbox.audit_log)
    gcloud("container", "clusters", "create", "howto", "--cluster-version=1.30", "--enable-dataplane-v2",
           "--enable-ip-alias", "--enable-multi-networking", "--labels=multus-provisioner=enabled")
    desc = json.loads(gcloud("container", "clusters", "describe", "howto", "--zone", ZONE, "--format=json").stdout)
    # Right after creation GKE runs an operation of its own (cluster RECONCILING); a node pool write
    # meanwhile is refused, as GKE refuses it (docs/SANDBOX_GKE.md, "An ordinary day").
    assert desc["status"] == "RECONCILING" and desc["location"] == ZONE
    pool_args = ("container", "node-pools", "create", "multus-pool", "--cluster", "howto", "--zone", ZONE,
                 "--additional-node-network", "network=vpc-a,subnetwork=subnet-a",
                 "--additional-pod-network", "subnetwork=subnet-a,pod-ipv4-range=pods-a,max-pods-per-node=8")
    refused = gcloud(*pool_args, ok=False)
    assert refused.returncode != 0 and "incompatible operation" in refused.stderr, refused.stderr
    running = json.loads(gcloud("container", "operations", "list", "--zone", ZONE,
                                "--filter=status=RUNNING", "--format=json").stdout)
    assert [op["operationType"] for op in running] == ["UPGRADE_NODES"], running
    sandbox.world.complete_operation(running[0]["name"])
    desc = json.loads(gcloud("container", "clusters", "describe", "howto", "--zone", ZONE, "--format=json").stdout)
    assert desc["status"] == "RUNNING"
    assert desc["networkConfig"]["datapathProvider"] == "ADVANCED_DATAPATH"
    assert desc["networkConfig"]["enableMultiNetworking"] is True
    assert desc["ipAllocationPolicy"]["useIpAliases"] is True
    assert desc["resourceLabels"] == {"multus-provisioner": "enabled"}
    assert desc["currentMasterVersion"].startswith("1.30.")

    gcloud(*pool_args)
    pools = json.loads(gcloud("container", "node-pools", "list", "--cluster", "howto", "--zone", ZONE,
                              "--format=json").stdout)
    assert [p["name"] for p in pools] == ["default-pool", "multus-pool"]
    net = pools[1]["networkConfig"]
    assert net["additionalPodNetworkConfigs"] == [{"subnetwork": "subnet-a", "secondaryPodRange": "pods-a",
                                                   "maxPodsPerNode": {"maxPodsPerNode": "8"}}]
    listed = gcloud("container", "clusters", "list").stdout
    assert "howto" in listed and ZONE in listed
    one = json.loads(gcloud("container", "node-pools", "describe", "multus-pool", "--cluster", "howto", "--zone",
                            ZONE, "--format=json").stdout)
    assert one["status"] == "RUNNING" and one["networkConfig"] == net
    ops = json.loads(gcloud("container", "operations", "list", "--zone", ZONE, "--format=json").stdout)
    assert {o["operationType"] for o in ops} >= {"CREATE_CLUSTER", "CREATE_NODE_POOL"}
    assert all(o["status"] == "DONE" for o in ops)

    # The refused write logged one ERROR entry of its own, with no operation (as GKE logs refusals).
    entries = sandbox.audit_log[before:]
    methods = [(e["protoPayload"]["methodName"].rsplit(".", 1)[1],
                e["operation"].get("last", False) if "operation" in e else "refused") for e in entries]
    assert methods == [("CreateCluster", False), ("CreateCluster", True), ("CreateNodePool", "refused"),
                       ("CreateNodePool", False), ("CreateNodePool", True)]
    assert entries[2]["severity"] == "ERROR" and entries[2]["protoPayload"]["status"]["code"] == 9
    pool_entry = entries[3]
    assert pool_entry["resource"]["labels"]["nodepool_name"] == "multus-pool"

    # get-credentials: the exec plugin hands kubectl the sandbox's token; the CA is the cluster's
    (home / "kubeconfig").unlink(missing_ok=True)
    gcloud("container", "clusters", "get-credentials", "howto", "--zone", ZONE)
    server = hooks.servers["howto"]
    cfg = json.loads(kubectl(home, "1.33", "config", "view", "--raw", "-o", "json").stdout)
    cluster_entry = cfg["clusters"][0]["cluster"]
    assert cluster_entry["server"] == f"https://{desc['endpoint']}" == f"https://{server.endpoint}"
    assert cluster_entry["certificate-authority-data"] == desc["masterAuth"]["clusterCaCertificate"]
    assert base64.b64decode(cluster_entry["certificate-authority-data"]) == server.ca_pem
    assert cfg["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"
    for version in ("1.27", "1.33"):
        nodes = json.loads(kubectl(home, version, "get", "nodes", "-o", "json").stdout)["items"]
        by_pool = {n["metadata"]["labels"]["cloud.google.com/gke-nodepool"] for n in nodes}
        assert by_pool == {"default-pool", "multus-pool"}, version
        assert sorted(n["metadata"]["name"] for n in nodes) == sorted(server.node_names())

    # the subnet is in use now: Compute refuses to delete it, as it refuses the network with subnets
    busy = gcloud("compute", "networks", "subnets", "delete", "subnet-a", "--region=us-central1", ok=False)
    assert busy.returncode == 1 and "already being used by" in busy.stderr
    busy = gcloud("compute", "networks", "delete", "vpc-a", ok=False)
    assert busy.returncode == 1 and "already being used by" in busy.stderr

    gcloud("container", "clusters", "delete", "howto", "--zone", ZONE)
    assert "howto" not in hooks.servers
    assert "howto" not in gcloud("container", "clusters", "list").stdout
    gcloud("compute", "networks", "subnets", "delete", "subnet-a", "--region=us-central1")
    gcloud("compute", "networks", "delete", "vpc-a")
    assert "subnet-a" not in {s.subnetwork for s in sandbox.world.subnetworks()}


def test_gke_refusals_reach_the_user(gcloud: Run) -> None:
    missing = gcloud("container", "clusters", "describe", "nowhere", "--zone", ZONE, ok=False)
    assert missing.returncode == 1
    assert f"Not found: projects/{PROJECT}/locations/{ZONE}/clusters/nowhere." in missing.stderr
    pool = gcloud("container", "node-pools", "create", "p", "--cluster", "nowhere", "--zone", ZONE,
                  "--additional-node-network", "network=vpc-x,subnetwork=subnet-x", ok=False)
    assert pool.returncode == 1 and "Not found" in pool.stderr
