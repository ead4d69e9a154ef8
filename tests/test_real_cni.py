"""The real data path: pods get net1 from real Multus v4.2.1, IPVLAN (CNI plugins v1.7.1) and
Whereabouts v0.7.0 in a UML guest, against the sandbox API server, and reach each other over L2.

Each node is a network namespace in the guest (eth0 on the primary network, eth1 on its pool's
subnetwork bridge); the Multus configuration is the bundle's ConfigMap as applied to the cluster.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator

import pytest

from shared.core.nad import parse_request, render_nad
from tests import test_workflow as _wf
from tests.realnet import CLUSTER, NETWORK_STATUS, Cluster, require_netns, wait_for

local_stack, make_wf = _wf.local_stack, _wf.make_wf  # the in-process controller of tests/test_workflow.py

pytestmark = pytest.mark.e2e

NODES = {"pool-b-1": "pool-b", "pool-b-2": "pool-b"}


def _nad_config(name: str, range_cidr: str) -> dict:
    """The controller's rendering of a NAD request (what it applies)."""
    nad = render_nad(parse_request({"cluster": CLUSTER, "name": name, "namespace": "default", "range": range_cidr}))
    return json.loads(nad["spec"]["config"])


@pytest.fixture(scope="module")
def real() -> Iterator[Cluster]:
    require_netns()
    cluster = Cluster(NODES, real=True)
    try:
        yield cluster
    finally:
        cluster.close()


def test_two_pods_on_two_nodes_reach_each_other_over_ipvlan_l2(real: Cluster) -> None:
    real.apply_nad("blue", _nad_config("blue", "10.200.2.0/29"))
    started = time.monotonic()
    real.start_pod("a", "pool-b-1", "default/blue")
    real.start_pod("b", "pool-b-2", "default/blue")
    a, b = real.wait_running("a"), real.wait_running("b")
    elapsed = time.monotonic() - started
    # Multus wrote network-status itself (default network first, then net1 from the NAD).
    ips = {p["metadata"]["name"]: real.net1(p) for p in (a, b)}
    assert sorted(ips["a"] + ips["b"]) == ["10.200.2.1", "10.200.2.2"], ips
    # The kernel shows the address on net1, an IPVLAN link inside the pod's namespace.
    cni = real.cni
    for pod in (a, b):
        links = cni.addresses(pod["metadata"]["uid"])
        assert [x["local"] for x in links[0]["addr_info"] if x["family"] == "inet"] == real.net1(pod)
        assert links[0]["ifname"] == "net1"
    # Whereabouts recorded both in its IPPool, keyed by offset, with each pod's podref.
    assert real.allocations()["10.200.2.0-29"] == {
        str(int(ipaddress.ip_address(ips[n][0])) - int(ipaddress.ip_address("10.200.2.0"))): f"default/{n}"
        for n in ("a", "b")}
    # Layer 2 between the two nodes' namespaces: ICMP and ARP from a to b over net1.
    reach = cni.ping(a["metadata"]["uid"], ips["b"][0])
    assert reach["icmp"] and reach["arp"], reach
    assert cni.pod_info(a["metadata"]["uid"])["node"] != cni.pod_info(b["metadata"]["uid"])["node"]
    print(f"\nreal path: guest boot {cni.timings['guest_boot']:.1f} s, two pods running in {elapsed:.1f} s, "
          f"last CNI ADD {cni.timings['last_add']:.1f} s")


def test_deleting_a_pod_runs_cni_del_and_frees_its_address(real: Cluster) -> None:
    real.apply_nad("green", _nad_config("green", "10.200.3.0/30"))  # two usable addresses
    real.start_pod("g1", "pool-b-1", "default/green")
    real.start_pod("g2", "pool-b-2", "default/green")
    freed = real.net1(real.wait_running("g1"))
    real.wait_running("g2")
    real.start_pod("g3", "pool-b-1", "default/green")
    message = real.wait_refused("g3")  # the range is exhausted: real Whereabouts says so
    assert "Could not allocate IP in range" in message, message
    real.delete_pod("g1")
    wait_for(lambda: "default/g1" not in real.allocations().get("10.200.3.0-30", {}).values(), "g1's address freed")
    g3 = real.wait_running("g3")  # the kubelet's retry gets the freed address
    assert real.net1(g3) == freed


def test_simulated_cni_gives_the_same_answer_as_the_real_path(real: Cluster) -> None:
    """The same NAD and pods on a simulated cluster: same net1 addresses, network-status entries and
    IPPool records (offsets, podrefs, the fields each allocation carries)."""
    config = _nad_config("same", "10.200.4.0/28")
    config["plugins"][0]["ipam"].update({"range_start": "10.200.4.4", "exclude": ["10.200.4.5/32"]})
    sim = Cluster(NODES, real=False)
    try:
        answers = []
        for cluster in (real, sim):
            cluster.apply_nad("same", config)
            out = {}
            for name, node in (("s1", "pool-b-1"), ("s2", "pool-b-2"), ("s3", "pool-b-1")):
                cluster.start_pod(name, node, "default/same")
                pod = cluster.wait_running(name)
                status = json.loads(pod["metadata"]["annotations"][NETWORK_STATUS])
                out[name] = (cluster.net1(pod), [(i["name"], i["interface"], bool(i.get("default"))) for i in status])
            pools = {p["metadata"]["name"]: p for p in cluster.kube.list_ippools()
                     if p["metadata"]["name"].startswith("10.200.4.")}
            records = {name: (p["spec"]["range"], {k: (a["podref"], sorted(a)) for k, a in
                                                   p["spec"]["allocations"].items()}) for name, p in pools.items()}
            answers.append((out, records))
        assert answers[0] == answers[1]
        assert [answers[0][0][n][0] for n in ("s1", "s2", "s3")] == [["10.200.4.4"], ["10.200.4.6"], ["10.200.4.7"]]
    finally:
        sim.close()


# -- why the controller refuses overlapping ranges, with the real plugins ------------------------

TEAM_A = {"name": "team-a", "range": "172.16.1.0/28"}
TEAM_B = {"name": "team-b", "range": "172.16.1.0/29"}  # inside team-a's range, same master eth1


def _rendered(req: dict) -> dict:
    nad = render_nad(parse_request({"cluster": CLUSTER, "namespace": "default", **req}))
    return json.loads(nad["spec"]["config"])


def test_overlapping_nads_applied_by_hand_hand_out_one_address_twice(real: Cluster) -> None:
    """Straight to the cluster (no controller): the two NADs as rendered, each with its own
    Whereabouts pool name (`network_name`, as each team would set its own). Real Whereabouts hands
    172.16.1.1 out twice. On one node the kernel's IPVLAN refuses the second on the same master
    ("address already in use": the pod never starts); on two nodes both pods run with the same
    address on one layer-2 segment.

    Without `network_name` (the controller's rendering) Whereabouts' cluster-wide
    OverlappingRangeIPReservation keeps the two apart (the second pod gets .2): the duplicate needs
    two pool names, which nothing stops a hand-applied NAD from having."""
    for req, pool in ((TEAM_A, "team-a"), (TEAM_B, "team-b")):
        config = _rendered(req)
        config["plugins"][0]["ipam"]["network_name"] = pool
        real.apply_nad(f"{req['name']}-own", config)
    real.start_pod("dup-a", "pool-b-1", "default/team-a-own")
    a = real.wait_running("dup-a")
    assert real.net1(a) == ["172.16.1.1"]
    real.start_pod("dup-b", "pool-b-1", "default/team-b-own")  # same node, same master eth1
    message = real.wait_refused("dup-b")
    assert "172.16.1.1" in message and "address already in use" in message, message
    real.delete_pod("dup-b")
    wait_for(lambda: not real.allocations().get("team-b-172.16.1.0-29"), "dup-b's address freed")
    real.start_pod("dup-c", "pool-b-2", "default/team-b-own")  # the other node, same segment
    c = real.wait_running("dup-c")
    for pod in (a, c):
        [link] = real.cni.addresses(pod["metadata"]["uid"])
        assert [x["local"] for x in link["addr_info"] if x["family"] == "inet"] == ["172.16.1.1"]
    pools = real.allocations()
    assert pools["team-a-172.16.1.0-28"] == {"1": "default/dup-a"}
    assert pools["team-b-172.16.1.0-29"] == {"1": "default/dup-c"}
    # The controller's own rendering (no network_name), on ranges of their own: the reservation
    # separates them.
    real.apply_nad("team-a", _rendered({**TEAM_A, "range": "172.16.2.0/28"}))
    real.apply_nad("team-b", _rendered({**TEAM_B, "range": "172.16.2.0/29"}))
    real.start_pod("sep-a", "pool-b-1", "default/team-a")
    first = real.net1(real.wait_running("sep-a"))
    real.start_pod("sep-b", "pool-b-2", "default/team-b")
    second = real.net1(real.wait_running("sep-b"))
    assert (first, second) == (["172.16.2.1"], ["172.16.2.2"])


@pytest.mark.emulator
def test_the_same_two_requests_through_the_controller_get_the_second_refused(local_stack, make_wf) -> None:
    from shared.core.events import decode_nad_request
    from tests.test_workflow import ce, to_ready

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    outs = [wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, **req}))) for req in (TEAM_A, TEAM_B)]
    assert outs[0].status == "done", outs[0].message
    assert outs[1].status == "rejected"
    assert "overlaps default/team-a (172.16.1.0/28) on master eth1" in outs[1].message, outs[1].message


# -- the request corpus's rendered configs against the real plugins ------------------------------

def test_every_config_the_controller_renders_from_the_corpus_is_accepted_by_the_plugins(real: Cluster) -> None:
    """Each on_nad_request case of tests/corpus that the controller's validation accepts is
    rendered and fed to the real IPVLAN + Whereabouts (ADD, then DEL, in a throwaway namespace on a
    node whose additional network is eth1). The controller's acceptance is its decoding and its
    decision for a READY cluster whose pool has that network (secondary range 172.16.1.0/24, NIC
    eth1). A config the plugins refuse must be one the corpus expects the controller to refuse,
    naming the field. (`master-not-pool-nic`, master `ens4.100`, was this test's find: accepted once,
    refused by IPVLAN with 'Link not found'; the decision now refuses it.)"""
    from shared.core.decisions import READY, NadStep, decide_nad
    from shared.core.errors import Rejected
    from tests.test_corpus import load_corpus, payload_bytes

    project, location, name = "demo-project", "us-central1", "real"
    subs = {"<<CLUSTER>>": f"projects/{project}/locations/{location}/clusters/{name}", "<<PROJECT>>": project,
            "<<LOCATION>>": location, "<<NAME>>": name, "<<UNKNOWN>>": f"projects/{project}/locations/{location}/"
            "clusters/nobody", "<<UNKNOWN_NAME>>": "nobody"}
    fed, refused, decided = 0, [], []
    for case in load_corpus():
        if case.function != "on_nad_request" or case.payload_key not in ("json", "text"):
            continue
        try:
            req = parse_request(payload_bytes(case, subs))  # the controller's own decoding
        except Rejected:
            continue  # refused before anything is rendered
        step = decide_nad(request=req, cluster_state=READY, pool_cidr="172.16.1.0/24", existing=None,
                          namespace_problem=None, max_nads=None, pool_interface="eth1")
        if step.kind != NadStep.APPLY:
            decided.append(case.id)
            continue
        nad = render_nad(req, step.range)
        # A node of its own (no pods of the other tests on its eth1), as a fresh node of the pool.
        ok, message = real.cni.try_config(json.loads(nad["spec"]["config"]), "corpus-probe", case.id)
        fed += 1
        if not ok:
            refused.append((case.id, message))
            assert case.expect.get("outcome") == "rejected" and case.expect.get("field"), (
                f"{case.id}: the plugins refuse a config the controller accepts: {message}")
    assert fed >= 10, fed
    assert "master-not-pool-nic" in decided, decided
    print(f"\ncorpus: {fed} rendered configs fed to the real plugins; refused by them: {refused}")
