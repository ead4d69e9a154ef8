"""Address awareness (issue 14): `range-capacity`, Whereabouts' IPPools in the sandbox, the
`ranges` report and command, and reconcile's pool-use warnings and stale allocation count."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from multus_cli import main as cli
from multus_cli.ranges import draw
from shared.core import prechecks, ranges
from tests.fixtures_stack import push, ref_of, wait_for, wait_nad, wait_state
from tests.test_kube_engine import install, nad, pod
from tests.test_kube_engine import wait_for as wait_kube


def pool_json(*, count: int = 1, zones: int = 1, max_pods: int | None = 8, autoscale: int | None = None,
              ) -> dict[str, Any]:
    pod_net: dict[str, Any] = {"subnetwork": "multus-subnet", "secondaryPodRange": "multus-pods"}
    if max_pods is not None:
        pod_net["maxPodsPerNode"] = {"maxPodsPerNode": str(max_pods)}
    out: dict[str, Any] = {
        "name": "multus-pool", "initialNodeCount": count,
        "locations": [f"us-central1-{z}" for z in "abc"[:zones]],
        "networkConfig": {"additionalNodeNetworkConfigs": [{"network": "vpc-b", "subnetwork": "multus-subnet"}],
                          "additionalPodNetworkConfigs": [pod_net]}}
    if autoscale is not None:
        out["autoscaling"] = {"enabled": True, "minNodeCount": 1, "maxNodeCount": autoscale}
    return out


# -- range-capacity -----------------------------------------------------------------------------
@pytest.mark.parametrize(("max_pods", "prefix"), [(8, 28), (9, 27), (16, 27), (17, 26), (32, 26), (33, 25),
                                                  (64, 25), (65, 24), (110, 24), (111, 23), (256, 23)])
def test_per_node_range_follows_gkes_table(max_pods: int, prefix: int) -> None:
    assert prechecks.per_node_prefix(max_pods) == prefix


def test_per_node_range_refuses_impossible_values() -> None:
    for bad in (0, 257):
        with pytest.raises(prechecks.Rejected, match="maxPodsPerNode"):
            prechecks.per_node_prefix(bad)


def test_range_that_holds_the_pool_has_no_finding() -> None:
    # /26 = four /28 blocks: four nodes at 8 pods per node fit exactly
    assert prechecks.check_range_capacity(pool_json(count=4), "10.20.0.0/26") == []


def test_regional_pool_counts_nodes_in_every_zone_with_numbers_and_fix() -> None:
    cluster = {"name": "c1", "location": "us-central1"}
    [f] = prechecks.check_range_capacity(pool_json(count=2, zones=3), "10.20.0.0/26", cluster=cluster)
    assert f.id == prechecks.RANGE_CAPACITY and f.severity == prechecks.WARNING
    assert "holds 4 node(s)" in f.message and "6 node(s) (2 per zone x 3 zones)" in f.message
    assert "a /28 per node" in f.message and "10.20.0.0/26" in f.message
    assert "/25 or larger" in f.fix and "--region us-central1" in f.fix and "--num-nodes 1" in f.fix
    assert prechecks.eligible([f])  # a warning: the cluster still gets Multus


def test_autoscaling_maximum_and_default_max_pods_count() -> None:
    # no maxPodsPerNode: GKE's default of 110 -> a /24 per node; a /24 range holds one node
    [f] = prechecks.check_range_capacity(pool_json(count=1, max_pods=None, autoscale=3), "10.0.0.0/24")
    assert "holds 1 node(s) at max-pods-per-node 110 (a /24 per node)" in f.message
    assert "can have 3 node(s)" in f.message and "/22 or larger" in f.fix


def test_bad_secondary_range_is_a_clear_error() -> None:
    with pytest.raises(prechecks.Rejected) as e:
        prechecks.check_range_capacity(pool_json(), "not-a-cidr")
    assert e.value.problems[0].field == "cidr"


# -- the report -----------------------------------------------------------------------------------
def ippool(name: str, rng: str, allocations: dict[int, str]) -> dict[str, Any]:
    return {"apiVersion": "whereabouts.cni.cncf.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"range": rng, "allocations": {str(k): {"id": "c" * 64, "podref": v}
                                                   for k, v in allocations.items()}}}


def test_report_counts_capacity_use_stale_and_overlaps() -> None:
    nads = [nad("a", rng="172.16.1.0/28", range_start="172.16.1.2", exclude=["172.16.1.4/31"]),
            nad("b", rng="172.16.1.8/29"),
            nad("c", rng="10.9.0.0/30")]
    pools = [ippool("172.16.1.0-28", "172.16.1.0/28", {2: "default/p1", 3: "default/gone"}),
             ippool("10.1.1.0-24", "10.1.1.0/24", {})]
    rep = ranges.report("172.16.1.0/24", nads, pools, ["default/p1"])
    a, b, _c = rep.slices
    assert (a.start, a.end, a.capacity) == ("172.16.1.2", "172.16.1.14", 11)  # 13 minus .4 and .5
    assert (a.used, a.free, a.stale) == (2, 9, 1)
    assert [x.ip for x in a.allocations] == ["172.16.1.2", "172.16.1.3"] and a.allocations[1].podref == "default/gone"
    assert (b.capacity, b.used) == (6, 0)
    assert any("default/a" in o and "default/b" in o and "172.16.1.9-172.16.1.14" in o for o in rep.overlaps)
    assert rep.outside == ("default/c 10.9.0.0/30 is not inside the secondary range 172.16.1.0/24",)
    assert rep.unclaimed_pools == ("10.1.1.0-24",)
    assert json.loads(json.dumps(rep.to_dict()))["slices"][0]["percent"] == 18.2
    assert ranges.level(79.9) == 0 and ranges.level(80) == 80 and ranges.level(96) == 95


def test_report_names_an_unreadable_config() -> None:
    broken = nad("x")
    broken["spec"]["config"] = "{not json"
    [s] = ranges.report("172.16.1.0/24", [broken], [], []).slices
    assert "not JSON" in s.problem



def test_capacity_counts_an_address_excluded_twice_once() -> None:
    """Overlapping or repeated exclude blocks: Whereabouts skips each address once (the real plugin,
    tests/test_whereabouts_arithmetic.py, handed out 10.9.0.1, .4, .5, .6 here)."""
    [s] = ranges.report("", [nad("a", rng="10.9.0.0/29", exclude=["10.9.0.2/31", "10.9.0.3/32"])], [], []).slices
    assert s.capacity == 4
    [s] = ranges.report("", [nad("a", rng="10.9.0.0/29", exclude=["10.9.0.1/32", "10.9.0.1/32", "10.9.0.0/30"])],
                        [], []).slices
    assert s.capacity == 3  # .4 .5 .6

def test_bar_shows_each_slice_and_what_is_handed_out() -> None:
    rep = ranges.report("172.16.1.0/24", [nad("a", rng="172.16.1.0/25"), nad("b", rng="172.16.1.128/26")],
                        [ippool("172.16.1.0-25", "172.16.1.0/25", {1: "default/p"})], ["default/p"])
    lines = draw(rep, width=16)
    assert lines[1] == "  [AAAAAAAABBBB....]"
    assert lines[2].startswith("  [#AAAAAAABBBB....]")


# -- the sandbox's Whereabouts writes IPPools -------------------------------------------------------
def test_sandbox_whereabouts_writes_ippools_and_frees_them_after_the_pod_goes(kube: Any, kube_server: Any) -> None:
    install(kube)
    kube.apply_nad(nad("pool-nad", rng="10.200.2.0/29", network_name="blue"))
    kube.create_pod(pod("p1", "default/pool-nad"))
    kube.create_pod(pod("p2", "default/pool-nad"))
    wait_kube(lambda: kube.pod_network_status("default", "p2"))
    [ipp] = wait_kube(lambda: [p for p in kube.list_ippools() if len(p["spec"]["allocations"]) == 2])
    assert ipp["apiVersion"] == "whereabouts.cni.cncf.io/v1alpha1" and ipp["kind"] == "IPPool"
    assert ipp["metadata"] == {**ipp["metadata"], "name": "blue-10.200.2.0-29", "namespace": "kube-system"}
    assert ipp["spec"]["range"] == "10.200.2.0/29"
    allocs = ipp["spec"]["allocations"]
    assert sorted(allocs) == ["1", "2"] and {a["podref"] for a in allocs.values()} == {"default/p1", "default/p2"}
    assert all(len(a["id"]) == 64 and sorted(a) == ["id", "podref"] for a in allocs.values())  # as v0.7.0 writes
    # the same object through the API by name (a real custom resource, schema-checked on write)
    assert kube.get("whereabouts.cni.cncf.io/v1alpha1", "IPPool", "kube-system", "blue-10.200.2.0-29") is not None

    kube_server.sim.ippool_release_delay = 3600.0  # Whereabouts' reconciler has not run yet
    kube.delete_pod("default", "p1")
    assert "default/p1" not in kube.list_pod_refs()
    [ipp] = kube.list_ippools()
    assert {a["podref"] for a in ipp["spec"]["allocations"].values()} == {"default/p1", "default/p2"}  # stale
    kube_server.sim.ippool_release_delay = 0.0
    kube.delete_pod("default", "p2")
    wait_kube(lambda: kube.list_ippools()[0]["spec"]["allocations"].keys() == {"1"})


# -- end to end: ranges CLI and reconcile warnings on a stack -----------------------------------------
def test_ranges_command_and_reconcile_warnings_end_to_end(stack: Any, e2e_store: Any, cluster_name: str,
                                                          capsys: Any) -> None:
    from sandbox.gke.scenario import NodePoolSpec
    from shared.adapters.kube import Kube

    stack.gke.create_cluster(cluster_name, wait=False, labels={"multus-provisioner": "enabled"},
                             node_pools=(NodePoolSpec("default-pool"),))
    ref = ref_of(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    # five addresses: .10 to .15 minus .12
    stack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "small", "range": "172.16.1.0/24",
                                              "range_start": "172.16.1.10", "range_end": "172.16.1.15",
                                              "exclude": ["172.16.1.12/32"]}).encode())
    wait_nad(e2e_store, ref, "default", "small", "APPLIED")
    from kubernetes import config as kconfig

    kube = Kube(kconfig.new_client_from_config(
        config_file=f"{stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{cluster_name}.yaml"))
    for i in range(4):
        kube.create_pod(pod(f"w{i}", "default/small"))
    for i in range(4):
        wait_for(lambda i=i: kube.pod_network_status("default", f"w{i}"), 30, f"w{i} net1")

    env_file = str(stack.write_env_file(stack.state_dir / "env"))
    assert cli.main(["ranges", "--sandbox", env_file, "--json", cluster_name]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["secondaryRange"] == "172.16.1.0/24"
    [s] = [x for x in out["slices"] if x["nad"] == "default/small"]
    assert (s["capacity"], s["used"], s["free"], s["stale"], s["percent"]) == (5, 4, 1, 0, 80.0)
    assert s["start"] == "172.16.1.10" and s["end"] == "172.16.1.15" and s["exclude"] == ["172.16.1.12/32"]

    def reconcile_once() -> list[dict[str, Any]]:
        code = push(stack.function_urls["reconcile"], json.dumps({"cluster": ref.path}).encode(),
                    f"rec-{uuid.uuid4().hex[:8]}")
        assert code == 200
        entries, _ = e2e_store.history(ref, page_size=500)
        return [h for h in entries if h.get("outcome") == "warning"]

    warned = reconcile_once()
    assert len(warned) == 1 and "80% used (4 of 5 addresses, 1 free; passed 80%)" in warned[0]["message"]
    assert reconcile_once() == warned  # once per crossing
    assert e2e_store.get_cluster(ref).data["poolUsage"] == {"default~small": 80}

    server = stack.kube_server(cluster_name)
    server.sim.ippool_release_delay = 3600.0  # Whereabouts' reconciler has not freed it yet
    kube.delete_pod("default", "w0")
    kube.create_pod(pod("w4", "default/small"))
    wait_for(lambda: kube.pod_network_status("default", "w4"), 30, "w4 net1")  # the last free address
    warned = reconcile_once()
    assert len(warned) == 2 and "100% used" in warned[1]["message"] and "passed 95%" in warned[1]["message"]
    assert "1 Whereabouts allocation(s) belong to pods that no longer exist" in warned[1]["message"]
    assert e2e_store.get_cluster(ref).data["staleAllocations"] == 1

    assert cli.main(["ranges", "--sandbox", env_file, cluster_name]) == 0
    text = capsys.readouterr().out
    assert "default/small" in text and "1 stale" in text and "held by default/w0" in text
    server.sim.ippool_release_delay = 0.0


# -- the workflow records range-capacity once the pool's range is known --------------------------------
from tests.test_workflow import feed, local_stack, make_wf, new_cluster  # noqa: E402,F401


def test_cluster_flow_records_a_range_capacity_warning_and_still_installs(local_stack, make_wf):  # noqa: F811
    from sandbox.gke.scenario import NodeNetwork, NodePoolSpec, PodNetwork
    from shared.core import decisions as d

    wf = make_wf()
    big = NodePoolSpec("big-pool", node_count=20,
                       additional_node_networks=(NodeNetwork("multus-vpc", "multus-subnet"),),
                       additional_pod_networks=(PodNetwork("multus-subnet", "multus-pods", 8),))
    ref, entries = new_cluster(local_stack, node_pools=(NodePoolSpec("default-pool"), big))
    feed(wf, local_stack, entries)
    rec = wf.store.get_cluster(ref)
    assert rec.state == d.READY
    [f] = [x for x in rec.data["findings"] if x["id"] == "range-capacity"]
    assert f["severity"] == "warning"
    # A regional pool spreads over three zones on GKE (and the realistic sandbox): 20 nodes per zone.
    assert "172.16.1.0/24" in f["message"] and "holds 16 node(s)" in f["message"]
    assert "60 node(s) (20 per zone x 3 zones)" in f["message"], f["message"]
    assert "/22 or larger" in f["fix"]  # 60 nodes, a /28 each: 960 addresses


def test_offline_precheck_checks_range_capacity_with_the_secondary_range(capsys):
    from pathlib import Path

    sample = Path(__file__).parent / "samples" / "clusters" / "eligible-regional.json"
    # multus-pool: 1 node per zone x 3 zones at 8 pods per node = three /28 blocks
    assert cli.main(["precheck", "--cluster-json", str(sample), "--secondary-range", "172.16.1.0/27", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [f] = [x for x in out["findings"] if x["id"] == "range-capacity"]
    assert "holds 2 node(s)" in f["message"] and "3 node(s) (1 per zone x 3 zones)" in f["message"]
    assert out["eligible"] is True
    assert cli.main(["precheck", "--cluster-json", str(sample), "--secondary-range", "172.16.1.0/26", "--json"]) == 0
    assert not [x for x in json.loads(capsys.readouterr().out)["findings"] if x["id"] == "range-capacity"]
    assert cli.main(["precheck", "--cluster-json", str(sample), "--secondary-range", "nope"]) == 2
    assert "cidr" in capsys.readouterr().err
