"""Prechecks: each finding is triggered by exactly the field it checks, in protos and REST JSON alike.

The REST samples under `tests/samples/clusters/` have the shape of
`gcloud container clusters describe --format=json` (and `node-pools list --format=json`); a test
proves they parse strictly into `container_v1` messages, so they cannot drift from the API.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.cloud import container_v1

from shared.core import prechecks
from shared.core.errors import Rejected
from shared.core.prechecks import (
    ClusterFacts,
    Finding,
    PodNetwork,
    PoolNetworks,
    blocking,
    check_cluster,
    check_node_pools,
    eligible,
    parse_gke_version,
    precheck,
    suitable_pools,
)

SAMPLES = Path(__file__).parent / "samples" / "clusters"


def sample(name: str):
    return json.loads((SAMPLES / f"{name}.json").read_text())


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def proto_cluster(**overrides) -> container_v1.Cluster:
    """An eligible cluster built with the client library's own types; `overrides` break one field."""
    pool = container_v1.NodePool(
        name="multus-pool", status=container_v1.NodePool.Status.RUNNING,
        network_config=container_v1.NodeNetworkConfig(
            additional_node_network_configs=[container_v1.AdditionalNodeNetworkConfig(
                network="multus-vpc", subnetwork="multus-subnet")],
            additional_pod_network_configs=[container_v1.AdditionalPodNetworkConfig(
                subnetwork="multus-subnet", secondary_pod_range="multus-pods",
                max_pods_per_node=container_v1.MaxPodsConstraint(max_pods_per_node=8))]))
    fields = dict(
        name="multus-prod", location="us-central1", current_master_version="1.30.5-gke.1014001",
        status=container_v1.Cluster.Status.RUNNING, endpoint="34.41.12.7",
        resource_labels={"multus-provisioner": "enabled"},
        autopilot=container_v1.Autopilot(enabled=False),
        network_config=container_v1.NetworkConfig(
            datapath_provider=container_v1.DatapathProvider.ADVANCED_DATAPATH, enable_multi_networking=True),
        ip_allocation_policy=container_v1.IPAllocationPolicy(use_ip_aliases=True),
        node_pools=[container_v1.NodePool(name="default-pool"), pool],
    )
    fields.update(overrides)
    return container_v1.Cluster(**fields)


# --- version parsing -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "parsed"), [
    ("1.27.16-gke.1148000", (1, 27, 16)),
    ("1.27.3", (1, 27, 3)),
    ("1.28.0-gke.1", (1, 28, 0)),
    ("1.28", (1, 28, 0)),
    ("1.30.5-gke.1014001", (1, 30, 5)),
    ("1.31.1-gke.1678000", (1, 31, 1)),
    ("2.0.0", (2, 0, 0)),
    ("latest", None),
    ("", None),
    ("garbage", None),
    ("1.27.x", None),
    ("1", None),
    ("v1.30.5", None),
    ("1.30.5-", None),
    ("1.30.5 -gke.1", None),
    ("1.30.5-gke.1\n1.31", None),
    (None, None),
    (130, None),
])
def test_parse_gke_version(text, parsed):
    assert parse_gke_version(text) == parsed


@pytest.mark.parametrize(("version", "finding"), [
    ("1.27.16-gke.1148000", True), ("1.28.0-gke.1", False), ("1.30.5-gke.1014001", False),
    ("latest", True), ("", True), ("garbage", True), ("1.9.7", True), ("1.100.0", False),
])
def test_version_finding_in_both_forms(version, finding):
    rest = sample("eligible-regional")
    rest["currentMasterVersion"] = version
    rest["initialClusterVersion"] = version
    proto = proto_cluster(current_master_version=version)
    for cluster in (rest, proto):
        assert ids(precheck(cluster)) == (["version"] if finding else [])
    if finding:
        f = precheck(rest)[0]
        assert "1.28" in f.message and "--cluster-version=1.28 or later" in f.fix


# --- one field, one finding ----------------------------------------------------------------------

def _break_rest(what: str, c: dict) -> None:
    if what == "autopilot":
        c["autopilot"] = {"enabled": True}
    elif what == "dataplane-v2":
        c["networkConfig"]["datapathProvider"] = "LEGACY_DATAPATH"
    elif what == "ip-alias":
        c["ipAllocationPolicy"]["useIpAliases"] = False
    elif what == "multi-networking":
        del c["networkConfig"]["enableMultiNetworking"]
    elif what == "node-pool-networks":
        for p in c["nodePools"]:
            p["networkConfig"].pop("additionalPodNetworkConfigs", None)
    elif what == "version":
        c["currentMasterVersion"] = "1.27.16-gke.1148000"


def _break_proto(what: str) -> container_v1.Cluster:
    c = proto_cluster()
    if what == "autopilot":
        c.autopilot.enabled = True
    elif what == "dataplane-v2":
        c.network_config.datapath_provider = container_v1.DatapathProvider.LEGACY_DATAPATH
    elif what == "ip-alias":
        c.ip_allocation_policy.use_ip_aliases = False
    elif what == "multi-networking":
        c.network_config.enable_multi_networking = False
    elif what == "node-pool-networks":
        c = proto_cluster(node_pools=[container_v1.NodePool(name="default-pool")])
    elif what == "version":
        c.current_master_version = "1.27.16-gke.1148000"
    return c


ALL_IDS = ["version", "autopilot", "dataplane-v2", "ip-alias", "multi-networking", "node-pool-networks"]
FLAGS = {
    "version": "--cluster-version=1.28 or later",
    "autopilot": "create a Standard cluster",
    "dataplane-v2": "--enable-dataplane-v2",
    "ip-alias": "--enable-ip-alias",
    "multi-networking": "--enable-multi-networking",
    "node-pool-networks": "--additional-node-network network=VPC_NAME,subnetwork=SUBNET_NAME "
                          "--additional-pod-network subnetwork=SUBNET_NAME,pod-ipv4-range=SECONDARY_RANGE_NAME,"
                          "max-pods-per-node=8",
}


@pytest.mark.parametrize("what", ALL_IDS)
def test_each_finding_is_triggered_by_exactly_its_field_rest(what):
    c = sample("eligible-regional")
    _break_rest(what, c)
    findings = precheck(c)
    assert ids(findings) == [what]
    assert findings[0].severity == "error"
    assert FLAGS[what] in findings[0].fix
    assert blocking(findings) == ([] if what == "node-pool-networks" else findings)
    assert not eligible(findings)


@pytest.mark.parametrize("what", ALL_IDS)
def test_each_finding_is_triggered_by_exactly_its_field_proto(what):
    findings = precheck(_break_proto(what))
    assert ids(findings) == [what]
    assert FLAGS[what] in findings[0].fix


def test_an_eligible_cluster_has_no_findings_in_either_form():
    for cluster in (sample("eligible-regional"), sample("eligible-zonal"), proto_cluster(),
                    container_v1.Cluster.from_json((SAMPLES / "eligible-regional.json").read_text())):
        findings = precheck(cluster)
        assert findings == []
        assert eligible(findings) and blocking(findings) == []


def test_everything_wrong_gives_every_finding_in_a_stable_order():
    c = sample("eligible-regional")
    for what in ALL_IDS:
        _break_rest(what, c)
    assert ids(precheck(c)) == ALL_IDS
    assert ids(check_cluster(c)) == ALL_IDS[:-1]


def test_an_empty_cluster_object_is_judged_not_crashed():
    assert ids(precheck({})) == ["version", "dataplane-v2", "ip-alias", "multi-networking", "node-pool-networks"]
    assert ids(precheck(container_v1.Cluster())) == ids(precheck({}))


# --- the samples ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("eligible-regional", []),
    ("eligible-zonal", []),
    ("awaiting-node-pool", ["node-pool-networks"]),
    ("autopilot", ["autopilot", "multi-networking", "node-pool-networks"]),
    ("legacy", ["version", "dataplane-v2", "ip-alias", "multi-networking", "node-pool-networks"]),
    ("provisioning", ["node-pool-networks"]),
])
def test_samples_rest_and_proto_agree(name, expected):
    text = (SAMPLES / f"{name}.json").read_text()
    proto = container_v1.Cluster.from_json(text)  # strict: unknown fields would raise
    assert ids(precheck(json.loads(text))) == expected
    assert precheck(proto) == precheck(json.loads(text))
    assert ClusterFacts.of(proto) == ClusterFacts.of(json.loads(text))


def test_node_pool_list_samples_are_real_node_pools():
    for name in ("node-pools-with-multus", "node-pools-partial"):
        for pool in sample(name):
            container_v1.NodePool.from_json(json.dumps(pool))


def test_separate_node_pools_replace_the_clusters_own():
    cluster = sample("awaiting-node-pool")
    assert ids(precheck(cluster)) == ["node-pool-networks"]
    assert precheck(cluster, sample("node-pools-with-multus")) == []
    assert ids(precheck(sample("eligible-regional"), [])) == ["node-pool-networks"]
    protos = [container_v1.NodePool.from_json(json.dumps(p)) for p in sample("node-pools-with-multus")]
    assert precheck(cluster, protos) == []


def test_a_pool_with_only_one_of_the_two_networks_is_not_enough_and_is_named():
    findings = check_node_pools(sample("node-pools-partial"))
    assert ids(findings) == ["node-pool-networks"]
    assert "half-pool has only one of the two" in findings[0].message
    assert "2 node pool(s) checked" in findings[0].message
    only_pod = {"name": "p", "networkConfig": {"additionalPodNetworkConfigs": [
        {"subnetwork": "s", "secondaryPodRange": "r"}]}}
    assert ids(check_node_pools([only_pod])) == ["node-pool-networks"]


def test_cluster_facts_from_the_regional_sample():
    facts = ClusterFacts.of(sample("eligible-regional"))
    assert (facts.name, facts.location, facts.version, facts.status, facts.endpoint) == (
        "multus-prod", "us-central1", "1.30.5-gke.1014001", "RUNNING", "34.41.12.7")
    assert facts.labels == {"multus-provisioner": "enabled", "env": "prod"}
    assert (facts.autopilot, facts.dataplane_v2, facts.ip_alias, facts.multi_networking) == (False, True, True, True)
    assert [p.name for p in facts.node_pools] == ["default-pool", "multus-pool"]
    pool = facts.node_pools[1]
    assert pool == PoolNetworks(
        name="multus-pool", node_networks=(("multus-vpc", "multus-subnet"),),
        pod_networks=(PodNetwork("multus-subnet", "multus-pods", 8),), status="RUNNING")
    assert pool.suitable and not facts.node_pools[0].suitable
    assert suitable_pools(facts.node_pools) == [pool]
    assert suitable_pools(sample("eligible-regional")["nodePools"]) == [pool]
    assert json.loads(json.dumps(facts.to_dict()))["node_pools"][1]["pod_networks"][0]["max_pods_per_node"] == 8


def test_a_provisioning_cluster_falls_back_to_its_initial_version():
    facts = ClusterFacts.of(sample("provisioning"))
    assert (facts.status, facts.version, facts.endpoint) == ("PROVISIONING", "1.30.5-gke.1014001", "")
    assert ClusterFacts.of(container_v1.Cluster(status=container_v1.Cluster.Status.PROVISIONING)).status == \
        "PROVISIONING"


# --- zones and regions ---------------------------------------------------------------------------

def test_fixes_use_zone_for_zonal_and_region_for_regional_clusters():
    zonal = sample("legacy")  # us-east1-b
    regional = sample("autopilot")  # us-central1
    for f in precheck(zonal):
        assert "--zone us-east1-b" in f.fix and "--region" not in f.fix, f
    for f in precheck(regional):
        assert "--region us-central1" in f.fix and "--zone" not in f.fix, f
    assert "--cluster legacy-cluster --zone us-east1-b" in precheck(zonal)[-1].fix


def test_location_falls_back_to_the_deprecated_zone_field():
    c = sample("eligible-zonal")
    del c["location"]
    assert ClusterFacts.of(c).location == "us-central1-c"
    assert ClusterFacts.of(container_v1.Cluster(zone="europe-west4-a")).location == "europe-west4-a"


def test_fix_without_any_location_uses_a_placeholder():
    (f,) = check_node_pools([])
    assert "--cluster CLUSTER_NAME --location LOCATION" in f.fix


# --- input forms and bad input -------------------------------------------------------------------

def test_snake_case_json_and_raw_protobuf_are_read_too():
    proto = proto_cluster()
    snake = type(proto).to_dict(proto, preserving_proto_field_name=True, use_integers_for_enums=False)
    assert ClusterFacts.of(snake) == ClusterFacts.of(proto)
    assert ClusterFacts.of(proto._pb) == ClusterFacts.of(proto)
    assert PoolNetworks.of(proto.node_pools[1]._pb).suitable


def test_facts_and_pool_networks_pass_through():
    facts = ClusterFacts.of(sample("eligible-regional"))
    assert ClusterFacts.of(facts) is facts
    assert PoolNetworks.of(facts.node_pools[0]) is facts.node_pools[0]
    assert precheck(facts) == []


@pytest.mark.parametrize(("mutate", "fields"), [
    (lambda c: c.update(nodePools={"a": 1}), ["cluster.nodePools"]),
    (lambda c: c["nodePools"].append("pool"), ["cluster.nodePools[2]"]),
    (lambda c: c["nodePools"][1].update(networkConfig=[]), ["cluster.nodePools[1].networkConfig"]),
    (lambda c: c["nodePools"][1]["networkConfig"]["additionalPodNetworkConfigs"][0].update(
        maxPodsPerNode={"maxPodsPerNode": "eight"}),
     ["cluster.nodePools[1].networkConfig.additionalPodNetworkConfigs[0].maxPodsPerNode"]),
    (lambda c: c["nodePools"][1]["networkConfig"]["additionalNodeNetworkConfigs"].append(7),
     ["cluster.nodePools[1].networkConfig.additionalNodeNetworkConfigs[1]"]),
    (lambda c: c["networkConfig"].update(enableMultiNetworking="yes"), ["cluster.networkConfig.enableMultiNetworking"]),
    (lambda c: c.update(currentMasterVersion=1.3), ["cluster.currentMasterVersion"]),
    (lambda c: c.update(resourceLabels={"a": 1}), ["cluster.resourceLabels.a"]),
    (lambda c: c.update(autopilot=True, name=["x"]), ["cluster.name", "cluster.autopilot"]),
])
def test_wrong_types_are_rejected_naming_every_field(mutate, fields):
    c = copy.deepcopy(sample("eligible-regional"))
    mutate(c)
    with pytest.raises(Rejected) as err:
        precheck(c)
    assert [p.field for p in err.value.problems] == fields


@pytest.mark.parametrize("value", [None, "cluster", 42, ["a"], b"{}"])
def test_non_cluster_input_is_rejected(value):
    with pytest.raises(Rejected) as err:
        precheck(value)
    assert err.value.problems[0].field == "cluster"


@pytest.mark.parametrize("pools", ["pools", {"name": "p"}, 3, None])
def test_node_pools_must_be_a_list(pools):
    with pytest.raises(Rejected) as err:
        check_node_pools(pools)
    assert err.value.problems[0].field == "nodePools"


def test_finding_to_dict_and_helpers():
    f = Finding("ip-alias", "error", "m", "--enable-ip-alias")
    assert f.to_dict() == {"id": "ip-alias", "severity": "error", "message": "m", "fix": "--enable-ip-alias"}
    w = Finding("x", "warning", "m", "f")
    assert eligible([w]) and blocking([w]) == []
    assert json.loads(json.dumps([x.to_dict() for x in precheck(sample("legacy"))]))[0]["id"] == "version"


def test_dict_input_does_not_import_the_gke_client():
    code = ("import sys, json; from shared.core import prechecks; "
            "prechecks.precheck(json.load(open('tests/samples/clusters/legacy.json'))); "
            "bad = [m for m in ('google.cloud.container_v1', 'google.protobuf', 'grpc') if m in sys.modules]; "
            "print(bad); raise SystemExit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONPATH": "."})
    assert out.returncode == 0, out.stdout + out.stderr


def test_module_constants_match_the_ids():
    assert tuple(ALL_IDS) == (*prechecks.CLUSTER_CHECKS, prechecks.NODE_POOL_NETWORKS)
