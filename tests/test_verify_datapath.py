"""`verify`'s data path, in pieces: the probe's settings, the IPPool lookup, the verdict, the probe
server's input checks, and the controller's HTTP adapter against the sandbox's probe server.

The real thing end to end (two pods on two nodes, real Multus, Whereabouts and IPVLAN, ICMP and
ARP) is tests/test_demo_real.py; the simulated tier's `verify --json` is tests/test_e2e.py.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from shared.adapters.datapath import HttpDataPath, NoDataPath
from shared.core import ranges
from shared.core.errors import Transient
from shared.core.ranges import Allocation
from shared.core.refs import ClusterRef
from shared.core.settings import ConfigError, Settings
from shared.flows.verify import PodCheck, Verification, _judge, verify_pod_manifest
from shared.ports import PodDataPath, Reach

REF = ClusterRef("multus-sandbox", "us-central1", "blue")
UID_A = "0b8f8a3e-1111-4222-8333-944455556666"
UID_B = "0b8f8a3e-1111-4222-8333-944455557777"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/"])
def test_the_probe_url_is_loopback_http_only(url: str) -> None:
    assert Settings.from_env({"MULTUS_PROVISIONER_DATAPATH_URL": url}).datapath_url == "http://127.0.0.1:8080"
    assert Settings.from_env({}).datapath_url is None


@pytest.mark.parametrize("url", ["https://127.0.0.1:8080", "http://10.0.0.1:80", "http://localhost:80",
                                 "http://127.0.0.1", "http://127.0.0.1:80/x", "http://u:p@127.0.0.1:80",
                                 "http://127.0.0.1:99999", "127.0.0.1:80"])
def test_any_other_probe_url_is_refused_by_name(url: str) -> None:
    with pytest.raises(ConfigError, match=r"DATAPATH_URL.*http://127\.0\.0\.1:PORT"):
        Settings.from_env({"MULTUS_PROVISIONER_DATAPATH_URL": url})


def test_the_verify_timeout_must_end_within_three_leases() -> None:
    assert Settings.from_env({}).verify_timeout_seconds == 30.0
    assert Settings.from_env({"MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS": "120"}).verify_timeout_seconds == 120
    with pytest.raises(ConfigError, match="VERIFY_TIMEOUT_SECONDS=121"):
        Settings.from_env({"MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS": "121"})
    with pytest.raises(ConfigError, match="within 3 leases"):
        Settings.from_env({"MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS": "60", "MULTUS_PROVISIONER_LEASE_SECONDS": "40"})


def test_allocations_are_addressed_from_each_pool_range() -> None:
    pools = [
        {"metadata": {"name": "172.16.1.0-24"},
         "spec": {"range": "172.16.1.0/24", "allocations": {
             "3": {"id": "c1", "podref": "default/a", "ifname": "net1"},
             "10": {"id": "c2", "podref": "default/b"}, "-1": {"podref": "bad"}, "x": "junk"}}},
        {"metadata": {"name": "broken"}, "spec": {"range": "not-a-range", "allocations": {"1": {"podref": "p/q"}}}},
    ]
    assert ranges.allocations(pools) == [("172.16.1.0-24", Allocation("172.16.1.3", "default/a", "c1", False)),
                                         ("172.16.1.0-24", Allocation("172.16.1.10", "default/b", "c2", False))]


def _check(name: str, ip: str, *, alloc: str | None = None, kernel: tuple[str, ...] | None = None,
           uid: str = UID_A) -> PodCheck:
    return PodCheck(name, f"node-{name}", uid, (ip,),
                    Allocation(alloc, f"default/{name}", "c", False) if alloc else None, "pool",
                    PodDataPath("pod-ns", kernel) if kernel is not None else None)


class _Probe:
    """A `DataPathPort` answering from a table (the verdict's logic only)."""

    def __init__(self, reach: Reach | None) -> None:
        self.answer = reach
        self.asked: list[tuple[str, str]] = []

    def observe(self, ref: ClusterRef, pod_uid: str, ifname: str) -> PodDataPath | None:
        return None

    def reach(self, ref: ClusterRef, pod_uid: str, address: str, ifname: str) -> Reach | None:
        self.asked.append((pod_uid, address))
        return self.answer


def test_the_verdict_needs_multus_whereabouts_and_the_kernel_to_agree() -> None:
    ok = _check("a", "10.0.0.1", alloc="10.0.0.1", kernel=("10.0.0.1/24",))
    assert _judge(True, "fine", [ok], None, None) == (True, "fine", None)
    bad_pool = _check("a", "10.0.0.1", alloc="10.0.0.9")
    assert _judge(True, "", [bad_pool], None, None)[1] == \
        "a: Multus reports 10.0.0.1 but Whereabouts allocated 10.0.0.9"
    bad_kernel = _check("a", "10.0.0.1", kernel=("10.0.0.2/24",))
    assert _judge(True, "", [bad_kernel], None, None)[1] == \
        "a: Multus reports 10.0.0.1 but the kernel shows 10.0.0.2/24 on net1"
    twice = [_check("a", "10.0.0.1"), _check("b", "10.0.0.1", uid=UID_B)]
    assert _judge(True, "", twice, None, None)[1] == "both pods got 10.0.0.1: the address is handed out twice"
    assert _judge(False, "no net1", [ok], None, None) == (False, "no net1", None)


def test_reachability_is_asked_from_the_first_pod_to_the_peer_and_judged() -> None:
    pods = [_check("a", "10.0.0.1"), _check("b", "10.0.0.2", uid=UID_B)]
    probe = _Probe(Reach(True, True))
    ok, detail, reach = _judge(True, "seen", pods, probe, REF)
    assert ok and reach == Reach(True, True) and probe.asked == [(UID_A, "10.0.0.2")]
    assert detail == "seen; a reaches 10.0.0.2 over net1 (ICMP and ARP answered)"
    ok, detail, _ = _judge(True, "seen", pods, _Probe(Reach(True, False, "timeout")), REF)
    assert not ok and detail == "a does not reach the peer's 10.0.0.2 over net1 (ICMP ok, ARP no answer): timeout"
    assert _judge(True, "seen", pods, _Probe(None), REF) == (True, "seen; reachability not checked", None)
    assert _judge(True, "seen", pods, NoDataPath(), REF) == (True, "seen; reachability not checked", None)


def test_the_report_keeps_one_shape_checked_or_not() -> None:
    a = _check("a", "10.0.0.1", alloc="10.0.0.1", kernel=("10.0.0.1/24",))
    b = _check("b", "10.0.0.2", uid=UID_B)
    checked = Verification(True, "", None, (a, b), "", Reach(True, False)).report()
    assert checked["reach"] == {"from": "a", "to": "10.0.0.2", "icmp": True, "arp": False, "checked": True}
    assert checked["pods"][0] == {"pod": "a", "node": "node-a", "uid": UID_A, "net1": ["10.0.0.1"],
                                  "ippool": {"pool": "pool", "ip": "10.0.0.1", "podref": "default/a",
                                             "containerId": "c"},
                                  "kernel": {"netns": "pod-ns", "net1": ["10.0.0.1/24"]}}
    assert checked["pods"][1]["ippool"] is None and checked["pods"][1]["kernel"] is None
    alone = Verification(True, "", None, (a,), "pool p has no other ready node than n: no peer pod").report()
    assert alone["reach"] is None and alone["peer"].endswith("no peer pod")


def test_the_peer_is_pinned_through_the_scheduler_on_the_pool() -> None:
    spec = verify_pod_manifest("p", "default", "nad", "multus-pool", node="node-2")["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-nodepool": "multus-pool", "kubernetes.io/hostname": "node-2"}
    assert "nodeName" not in spec


class _Cni:
    """The real CNI path's interface as the probe reads it, answering from a table."""

    def __init__(self) -> None:
        self.pinged: list[tuple[str, str, str]] = []

    def pod_info(self, uid: str) -> dict[str, str] | None:
        return {"netns": "pod-abc"} if uid == UID_A else None

    def addresses(self, uid: str, ifname: str = "net1") -> list[dict[str, Any]]:
        return [{"ifname": ifname, "addr_info": [
            {"family": "inet", "local": "172.16.1.3", "prefixlen": 24, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]}]

    def ping(self, uid: str, address: str, ifname: str = "net1", count: int = 3) -> dict[str, Any]:
        self.pinged.append((uid, address, ifname))
        return {"icmp": True, "arp": False, "detail": ["1 packets transmitted", "0 received"]}


@pytest.fixture
def probe_server():
    from sandbox.datapath import DataPathProbe

    cni = _Cni()
    probe = DataPathProbe(lambda name: cni if name == "blue" else None)
    url = probe.start()
    try:
        yield url, cni
    finally:
        probe.stop()


def test_the_adapter_reads_the_kernel_and_reachability_from_the_sandbox_probe(probe_server) -> None:
    url, cni = probe_server
    path = HttpDataPath(url, timeout=10)
    assert path.observe(REF, UID_A, "net1") == PodDataPath("pod-abc", ("172.16.1.3/24",))
    assert path.reach(REF, UID_A, "172.16.1.4", "net1") == Reach(True, False, "1 packets transmitted 0 received")
    assert cni.pinged == [(UID_A, "172.16.1.4", "net1")]
    # a pod the real path does not know, a cluster on the simulated CNI: not checked
    assert path.observe(REF, UID_B, "net1") is None
    assert path.reach(ClusterRef("multus-sandbox", "us-central1", "green"), UID_A, "172.16.1.4", "net1") is None


@pytest.mark.parametrize(("body", "named"), [
    ({"cluster": "blue", "pod": UID_A}, "cluster"),
    ({"cluster": REF.path, "pod": "../../etc"}, "pod"),
    ({"cluster": REF.path, "pod": UID_A, "ifname": "net1; reboot"}, "ifname"),
    ({"cluster": REF.path, "pod": UID_A, "address": "-c 1000 172.16.1.4"}, "address"),
])
def test_the_probe_refuses_what_could_reach_a_command_naming_the_field(probe_server, body, named) -> None:
    url, cni = probe_server
    req = urllib.request.Request(f"{url}/v1/reach", data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and json.loads(err.value.read())["error"].startswith(named)
    assert cni.pinged == []


def test_an_unreachable_probe_is_a_transient_error_naming_it() -> None:
    from sandbox.datapath import DataPathProbe

    probe = DataPathProbe(lambda name: None)
    url = probe.start()
    probe.stop()  # nothing listens there any more
    with pytest.raises(Transient, match=f"data-path probe observe at {url}"):
        HttpDataPath(url, timeout=5).observe(REF, UID_A, "net1")
