"""The pure decision core and the policy: every branch, no servers needed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.core import decisions as d
from shared.core.policy import Policy
from shared.core.settings import ConfigError, NodePoolTemplate, Settings


@dataclass(frozen=True)
class F:
    id: str
    severity: str = "error"
    message: str = "m"
    fix: str = "fix it"


@dataclass(frozen=True)
class Facts:
    status: str = "RUNNING"


@dataclass(frozen=True)
class Pool:
    name: str


def decide(**kw):
    args = dict(state=None, facts=Facts(), findings=[], opted_in=True, suitable=[Pool("p")],
                have_template=False, bundle_version="sha256:x")
    args.update(kw)
    return d.decide_cluster(**args)


def test_not_opted_in_is_ignored():
    assert decide(opted_in=False).kind == d.ClusterStep.IGNORE


def test_deleted_is_closed_whatever_else():
    assert decide(state=d.DELETED, opted_in=False).kind == d.ClusterStep.CLOSED


@pytest.mark.parametrize("status", ["PROVISIONING", ""])
def test_provisioning_waits(status):
    step = decide(facts=Facts(status))
    assert step.kind == d.ClusterStep.WAIT and step.state == d.DISCOVERED


@pytest.mark.parametrize("state", [d.READY, d.INSTALLING, d.CREATING_NODE_POOL, d.AWAITING_NODE_POOL])
@pytest.mark.parametrize("status", ["PROVISIONING", "ERROR", "DEGRADED", "STOPPING"])
def test_a_wait_never_takes_back_progress(state, status):
    step = decide(state=state, facts=Facts(status))
    assert step.kind == d.ClusterStep.WAIT and step.state == state


def test_reconciling_is_decided_as_running_so_ready_stays_ready():
    """An upgrade or a label change makes the cluster RECONCILING; its API server still answers."""
    step = decide(state=d.READY, facts=Facts("RECONCILING"))
    assert step.kind == d.ClusterStep.NOTHING and step.state == d.READY
    assert decide(facts=Facts("RECONCILING")).kind == d.ClusterStep.INSTALL
    assert decide(facts=Facts("RECONCILING"), suitable=[], have_template=True).kind == d.ClusterStep.CREATE_POOL


def test_blocking_findings_make_ineligible_but_node_pool_finding_does_not():
    step = decide(findings=[F("version"), F("node-pool-networks")], suitable=[])
    assert step.kind == d.ClusterStep.INELIGIBLE
    assert [f.id for f in step.findings] == ["version"]
    step = decide(findings=[F("node-pool-networks")], suitable=[])
    assert step.kind == d.ClusterStep.AWAIT_POOL and step.state == d.AWAITING_NODE_POOL
    assert "fix it" in step.message


def test_warnings_do_not_block():
    assert decide(findings=[F("version", severity="warning")]).kind == d.ClusterStep.INSTALL


def test_template_creates_pool_once():
    assert decide(suitable=[], have_template=True).kind == d.ClusterStep.CREATE_POOL
    step = decide(state=d.CREATING_NODE_POOL, suitable=[], have_template=True)
    assert step.kind == d.ClusterStep.WAIT and step.state == d.CREATING_NODE_POOL


def test_suitable_pool_installs_first_by_name_and_ready_does_nothing():
    step = decide(suitable=[Pool("b"), Pool("a")])
    assert step.kind == d.ClusterStep.INSTALL and step.pool.name == "a"
    assert decide(state=d.READY).kind == d.ClusterStep.NOTHING


@dataclass(frozen=True)
class Req:
    name: str = "n1"
    namespace: str = "default"
    master: str = "eth1"
    range: str | None = None
    action: str = "apply"


def nad(**kw):
    args = dict(request=Req(), cluster_state=d.READY, pool_cidr="172.16.1.0/24", existing=[],
                namespace_problem=None, max_nads=3)
    args.update(kw)
    return d.decide_nad(**args)


def test_nad_applies_with_pool_range_when_absent():
    step = nad()
    assert step.kind == d.NadStep.APPLY and step.range == "172.16.1.0/24"


def test_nad_range_must_lie_inside_pool_range_and_names_both():
    step = nad(request=Req(range="10.9.0.0/24"))
    assert step.kind == d.NadStep.REJECT
    assert "10.9.0.0/24" in step.message and "172.16.1.0/24" in step.message
    assert nad(request=Req(range="172.16.1.0/25")).range == "172.16.1.0/25"


def test_nad_overlap_on_same_master_only():
    other = {"namespace": "default", "name": "x", "state": "APPLIED", "master": "eth1", "range": "172.16.1.0/26"}
    assert nad(request=Req(range="172.16.1.0/25"), existing=[other]).kind == d.NadStep.REJECT
    assert nad(request=Req(range="172.16.1.128/25"), existing=[other]).kind == d.NadStep.APPLY
    on_eth2 = {**other, "master": "eth2"}
    assert nad(request=Req(range="172.16.1.0/25"), existing=[on_eth2]).kind == d.NadStep.APPLY
    rejected = {**other, "state": "REJECTED"}
    assert nad(request=Req(range="172.16.1.0/25"), existing=[rejected]).kind == d.NadStep.APPLY
    itself = {**other, "name": "n1"}
    assert nad(request=Req(range="172.16.1.0/25"), existing=[itself]).kind == d.NadStep.APPLY


def test_nad_pending_until_ready_and_rejected_for_closed_clusters():
    for state in (None, d.DISCOVERED, d.INSTALLING, d.AWAITING_NODE_POOL, d.FAILED):
        assert nad(cluster_state=state).kind == d.NadStep.PENDING
    for state in (d.IGNORED, d.INELIGIBLE, d.DELETED):
        assert nad(cluster_state=state).kind == d.NadStep.REJECT
    assert nad(pool_cidr=None).kind == d.NadStep.PENDING


def test_nad_limits_namespace_and_delete():
    live = [{"namespace": "default", "name": f"x{i}", "state": "APPLIED"} for i in range(3)]
    assert nad(existing=live).kind == d.NadStep.REJECT
    assert nad(namespace_problem="denied").kind == d.NadStep.REJECT
    # issue 24: a delete passes the namespace policy too (a kube-system delete is refused)
    assert nad(request=Req(action="delete"), namespace_problem="denied").kind == d.NadStep.REJECT
    assert nad(request=Req(action="delete")).kind == d.NadStep.DELETE


def test_policy_from_settings_and_firestore_override():
    s = Settings.from_env({"MULTUS_PROVISIONER_OPT_IN_LABEL": "net=multus",
                           "MULTUS_PROVISIONER_ALLOWED_NAMESPACES": "apps,data"})
    p = Policy.from_settings(s)
    assert p.opted_in({"net": "multus"}) and not p.opted_in({"net": "other"})
    assert p.namespace_problem("kube-system") and p.namespace_problem("web") and not p.namespace_problem("apps")
    # kube-* stays protected when deniedNamespaces is emptied; protectedNamespaces [] lifts it (issue 24)
    assert p.merged({"deniedNamespaces": [], "allowedNamespaces": []}).namespace_problem("kube-system")
    q = p.merged({"maxNadsPerCluster": 5, "deniedNamespaces": [], "allowedNamespaces": [], "protectedNamespaces": [],
                  "nodePoolTemplate": {"network": "v", "subnetwork": "s", "secondary_pod_range": "r"}})
    assert q.max_nads_per_cluster == 5 and q.namespace_problem("kube-system") is None
    assert q.node_pool_template == NodePoolTemplate(network="v", subnetwork="s", secondary_pod_range="r")
    with pytest.raises(ConfigError, match="unknown field"):
        p.merged({"maxNads": 1})
    with pytest.raises(ConfigError, match="maxNadsPerCluster"):
        p.merged({"maxNadsPerCluster": True})


@pytest.mark.parametrize("env, needle", [
    ({"MULTUS_PROVISIONER_LEASE_SECONDS": "x"}, "LEASE_SECONDS"),
    ({"MULTUS_PROVISIONER_LEASE_SECONDS": "1"}, "LEASE_SECONDS"),
    ({"MULTUS_PROVISIONER_OPT_IN_LABEL": "novalue"}, "OPT_IN_LABEL"),
    ({"MULTUS_PROVISIONER_NODE_POOL_TEMPLATE": "{"}, "NODE_POOL_TEMPLATE"),
    ({"MULTUS_PROVISIONER_NODE_POOL_TEMPLATE": '{"network": "v"}'}, "TEMPLATE.subnetwork: is required"),
    ({"MULTUS_PROVISIONER_DENIED_NAMESPACES": "Kube_System"}, "DENIED_NAMESPACES"),
    ({"MULTUS_PROVISIONER_COLLECTION_PREFIX": "a/b"}, "COLLECTION_PREFIX"),
    ({"MULTUS_PROVISIONER_DEFAULT_NADS": '{"a": 1}'}, "DEFAULT_NADS"),
])
def test_settings_errors_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def _n(name, state, rng, order="", master="eth1"):
    return {"namespace": "default", "name": name, "state": state, "range": rng, "master": master,
            "claimOrder": order}


def test_arbitrate_live_wins_then_the_earlier_claim():
    others = [_n("live", "APPLIED", "172.16.1.0/26"), _n("early", "APPLYING", "172.16.1.64/26", "0001"),
              _n("late", "APPLYING", "172.16.1.0/25", "0009"), _n("apart", "APPLYING", "172.16.1.192/26", "0000"),
              _n("eth2", "APPLIED", "172.16.1.0/24", master="eth2"), _n("gone", "REJECTED", "172.16.1.0/24"),
              _n("me", "APPLIED", "172.16.1.0/24")]
    arb = d.arbitrate(key="default~me", master="eth1", cidr="172.16.1.0/25", order="0005", others=others)
    assert [o["name"] for o in arb.lose_to] == ["live", "early"]
    assert [o["name"] for o in arb.win_over] == ["late"]


def test_arbitrate_is_symmetric_for_two_claims():
    a, b = _n("a", "APPLYING", "172.16.1.0/25", "0001"), _n("b", "APPLYING", "172.16.1.64/26", "0002")
    from_a = d.arbitrate(key="default~a", master="eth1", cidr=a["range"], order=a["claimOrder"], others=[b])
    from_b = d.arbitrate(key="default~b", master="eth1", cidr=b["range"], order=b["claimOrder"], others=[a])
    assert (len(from_a.win_over), len(from_a.lose_to)) == (1, 0)
    assert (len(from_b.win_over), len(from_b.lose_to)) == (0, 1)


def _obj(name, cidr, master="eth1", ns="default"):
    import json as _json

    config = {"cniVersion": "0.3.1", "name": name,
              "plugins": [{"type": "ipvlan", "master": master, "ipam": {"type": "whereabouts", "range": cidr}}]}
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"config": _json.dumps(config)}}


def _rec(doc):
    """A NAD document as the store reads it (its table decodes it)."""
    from shared.adapters.store import nad_of

    return nad_of(doc.get("namespace", "default"), doc.get("name", "n"), doc)


def test_applied_part_is_what_is_on_the_cluster_whatever_the_last_request():
    from shared.core.records import AppliedNad

    kept = {"state": "APPLIED", "range": "172.16.1.0/26", "applied": {"range": "172.16.1.0/26", "master": "eth1"}}
    assert d.applied_part(_rec(kept)).range == "172.16.1.0/26"
    claiming = {**kept, "state": "APPLYING"}
    assert d.applied_part(_rec(claiming)).range == "172.16.1.0/26"  # an update in flight: still there
    legacy = {"state": "VERIFIED", "range": "172.16.1.0/26", "master": "eth2"}  # written before `applied`
    assert d.applied_part(_rec(legacy)) == AppliedNad("172.16.1.0/26", "eth2", state="VERIFIED")
    assert d.applied_part(_rec({"state": "REJECTED", "range": "172.16.1.0/26"})) is None
    assert d.applied_part(_rec({"state": "DELETED", "range": "172.16.1.0/26"})) is None


def test_footprints_count_applied_parts_claims_pending_and_objects_without_record():
    docs = [
        {"namespace": "default", "name": "upd", "state": "APPLYING", "claimOrder": "0002",
         "applied": {"range": "172.16.1.0/26", "master": "eth1"},
         "claim": {"range": "172.16.1.64/26", "master": "eth1"}},
        {"namespace": "default", "name": "lost", "state": "APPLYING", "claimOrder": "0001", "range": "172.16.1.128/26",
         "master": "eth1", "claimRefused": "overlaps x"},
        {"namespace": "default", "name": "wait", "state": "PENDING", "master": "eth1"},
        {"namespace": "default", "name": "gone", "state": "DELETED", "range": "172.16.1.192/26", "master": "eth1"},
    ]
    fp = d.footprints([_rec(doc) for doc in docs], [_obj("stray", "172.16.1.192/27")])
    shown = sorted((f["name"], f["state"], f["range"]) for f in fp)
    # a claim turned away still counts for the limit until its worker records it, not for overlaps
    assert shown == [("lost", "APPLYING", None), ("stray", "APPLIED", "172.16.1.192/27"),
                     ("upd", "APPLIED", "172.16.1.0/26"), ("upd", "APPLYING", "172.16.1.64/26"),
                     ("wait", "PENDING", None)]
    # an update in flight is counted once for the limit, though it has two footprints
    assert d.limit_problem(fp, 5) is None and "already has 4 NADs" in d.limit_problem(fp, 4)
    lose = d.arbitrate(key="default~new", master="eth1", cidr="172.16.1.0/24", order="0009", others=fp).lose_to
    assert sorted(o["name"] for o in lose) == ["stray", "upd", "upd"]
    both = d.conflicts(key="default~new", master="eth1", cidr="172.16.1.0/25", others=fp)
    assert sorted((o["name"], o["range"]) for o in both) == [("upd", "172.16.1.0/26"), ("upd", "172.16.1.64/26")]
    assert d.conflicts(key="default~new", master="eth2", cidr="172.16.1.0/24", others=fp) == []


def test_nad_master_must_be_the_pools_nic_on_its_additional_network():
    """IPVLAN's master is a link on the node: only the pool's NIC on its network exists there."""
    assert nad(pool_interface="eth1").kind == d.NadStep.APPLY
    step = nad(request=Req(master="ens4.100"), pool_interface="eth1")
    assert step.kind == d.NadStep.REJECT and step.reasons == (
        "master ens4.100 is not the node pool's interface on its additional network (eth1): IPVLAN finds no "
        "such link on the nodes; use master eth1",)
    assert nad(request=Req(master="eth2"), pool_interface="eth2").kind == d.NadStep.APPLY
    assert nad(request=Req(master="eth1"), pool_interface="eth2").kind == d.NadStep.REJECT
    assert nad(request=Req(master="ens4.100")).kind == d.NadStep.APPLY  # no pool facts: not decided here


def test_the_pools_nic_follows_the_order_of_its_additional_node_networks():
    from shared.core.prechecks import PodNetwork, PoolNetworks

    pool = PoolNetworks("multus-pool", node_networks=(("vpc-a", "projects/p/regions/r/subnetworks/sub-a"),
                                                      ("vpc-b", "sub-b")),
                        pod_networks=(PodNetwork("sub-b", "pods-b"),))
    assert pool.interface_of("sub-a") == "eth1"
    assert pool.interface_of("projects/p/regions/r/subnetworks/sub-b") == "eth2"
    assert pool.interface_of("unknown") == "eth1"
