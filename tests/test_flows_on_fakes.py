"""The flows on the in-memory fakes (tests/fakes.py): no emulator, no server, milliseconds each.

The fakes are held honest by the contract suite (tests/test_store_contract.py runs the same tests
on `FakeStore` and on the real store on the Firestore emulator); the emulator and stack tiers
keep the end-to-end stories (tests/test_workflow.py, test_e2e.py, test_ordinary_day.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.cloud import container_v1

from shared.app import Controller
from shared.core import decisions
from shared.core.errors import Busy, Transient, Wait
from shared.core.events import AuditEvent, NadRequestEvent, ReconcileEvent
from shared.core.nad import parse_request
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from tests.fakes import FakeGke, FakeKube, FakePublisher, FakeStore, nad_doc

REF = ClusterRef.of("proj-one", "us-central1", "multus-prod")
CREATE = "google.container.v1.ClusterManager.CreateCluster"


def eligible_cluster(**overrides: Any) -> container_v1.Cluster:
    """An opted-in cluster that can carry Multus, with a pool on the additional networks."""
    pool = container_v1.NodePool(
        name="multus-pool", status=container_v1.NodePool.Status.RUNNING,
        network_config=container_v1.NodeNetworkConfig(
            additional_node_network_configs=[container_v1.AdditionalNodeNetworkConfig(
                network="multus-vpc", subnetwork="multus-subnet")],
            additional_pod_network_configs=[container_v1.AdditionalPodNetworkConfig(
                subnetwork="multus-subnet", secondary_pod_range="multus-pods",
                max_pods_per_node=container_v1.MaxPodsConstraint(max_pods_per_node=8))]))
    fields: dict[str, Any] = dict(
        name=REF.cluster, location=REF.location, current_master_version="1.30.5-gke.1014001",
        status=container_v1.Cluster.Status.RUNNING, endpoint="34.41.12.7", id="incarnation-1",
        resource_labels={"multus-provisioner": "enabled"},
        autopilot=container_v1.Autopilot(enabled=False),
        network_config=container_v1.NetworkConfig(
            datapath_provider=container_v1.DatapathProvider.ADVANCED_DATAPATH, enable_multi_networking=True),
        ip_allocation_policy=container_v1.IPAllocationPolicy(use_ip_aliases=True),
        node_pools=[container_v1.NodePool(name="default-pool"), pool])
    fields.update(overrides)
    return container_v1.Cluster(**fields)


class World:
    """A controller wired to fakes, and the fakes themselves."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(project=REF.project, policy_document=False, **settings)
        self.store, self.gke, self.kube = FakeStore(self.settings), FakeGke(), FakeKube()
        self.publisher = FakePublisher(batch=self.settings.fanout_batch)
        self.gke.ranges[("multus-subnet", "multus-pods")] = "172.16.1.0/24"
        self.wf = Controller(self.settings, store=self.store, gke=self.gke, kube_factory=lambda cluster: self.kube,
                             publisher=self.publisher)
        self.events = 0

    def audit(self, action: str = "cluster.created", *, last: bool = True, method: str = CREATE) -> Any:
        """One audit entry of an operation on the cluster, as `decode_audit` makes it."""
        self.events += 1
        return self.wf.handle_audit(AuditEvent(event_id=f"audit-{self.events}", action=action, cluster=REF,
                                               node_pool=None, first=not last, last=last, operation_id="op-1",
                                               method=method))

    def request(self, **fields: Any) -> Any:
        self.events += 1
        req = parse_request({"cluster": REF.path, "name": "data-plane", "namespace": "apps", **fields})
        return self.wf.handle_nad(NadRequestEvent(event_id=f"nad-{self.events}", request=req))

    def reconcile(self, body: dict[str, Any] | None = None) -> Any:
        """A reconcile run: the in-process sweep of every cluster ({}), or one cluster's."""
        self.events += 1
        return self.wf.reconcile(ReconcileEvent(event_id=f"reconcile-{self.events}",
                                                scope=ClusterRef.parse(body["cluster"]) if body else None))

    def history(self) -> list[tuple[str, str | None]]:
        """The cluster's own steps (NAD entries left out)."""
        return [(e["step"], e["state"]) for e in self.store.history(REF, page_size=1000)[0] if not e.get("nad")]


@pytest.fixture
def world() -> World:
    return World()


def test_an_eligible_cluster_becomes_ready_and_a_waiting_nad_is_applied(world: World) -> None:
    assert world.request(range="172.16.1.0/25").status == "pending"  # before the cluster exists
    world.gke.add(REF, eligible_cluster())
    assert world.audit(last=False).state == decisions.DISCOVERED
    out = world.audit()
    assert out.status == "done" and out.state == decisions.READY and out.details == {"nads": 1}
    rec = world.store.get_cluster(REF)
    assert rec is not None and rec.lease is None and rec.get("nodePool")["cidr"] == "172.16.1.0/24"
    assert rec.get("bundleVersion") and rec.get("clusterId") == "incarnation-1"
    assert [s for s, _ in world.history()][-3:] == ["precheck", "install", "apply-nads"]
    nad = nad_doc(world.store, REF, "apps", "data-plane")
    assert nad is not None and nad["state"] == decisions.NAD_APPLIED and nad["applied"]["range"] == "172.16.1.0/25"
    assert list(world.kube.nads()) == ["apps/data-plane"]
    assert world.audit().status in ("done", "duplicate")


def test_a_cluster_not_opted_in_is_ignored(world: World) -> None:
    world.gke.add(REF, eligible_cluster(resource_labels={}))
    out = world.audit()
    assert out.status == "ignored" and out.state == decisions.IGNORED
    assert world.kube.objects == {}


def test_a_cluster_gone_from_gke_closes_its_workflow(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    world.audit()
    del world.gke.clusters[REF.path]  # deleted, its audit entry lost
    out = world.wf.clusters.drive(REF, "reconcile-1", trigger="reconcile", create=False)
    assert out.state == decisions.DELETED and out.message == "cluster no longer exists"


def test_an_event_for_an_untracked_cluster_is_ignored(world: World) -> None:
    out = world.wf.clusters.drive(REF, "update-1", trigger="cluster updated", create=False)
    assert out.status == "ignored" and world.store.get_cluster(REF) is None


def test_gke_busy_is_waited_for_without_burning_attempts(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    world.gke.errors["secondary_range_cidr"] = Busy("GKE: another operation runs", operation="op-9")
    with pytest.raises(Wait):
        world.audit()
    rec = world.store.get_cluster(REF)
    assert rec is not None and rec.attempts == 0 and rec.lease is None
    assert isinstance(rec.get("busySince"), float) and "op-9" in rec.last_error["message"]  # type: ignore[index]
    assert world.audit().state == decisions.READY
    assert "busySince" not in world.store.get_cluster(REF).data  # type: ignore[union-attr]


def test_transient_failures_count_attempts_then_fail(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    for attempt in range(1, world.settings.max_attempts):
        world.gke.errors["secondary_range_cidr"] = Transient("GKE: UNAVAILABLE", code="UNAVAILABLE", api="gke")
        with pytest.raises(Transient):
            world.wf.clusters.drive(REF, "created-1", trigger="cluster created")
        assert world.store.get_cluster(REF).attempts == attempt  # type: ignore[union-attr]
    world.gke.errors["secondary_range_cidr"] = Transient("GKE: UNAVAILABLE", code="UNAVAILABLE", api="gke")
    out = world.wf.clusters.drive(REF, "created-1", trigger="cluster created")
    assert out.status == "failed" and out.state == decisions.FAILED
    assert world.store.seen("created-1")


def test_a_nad_outside_the_pool_range_is_refused_with_both_ranges(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    world.audit()
    out = world.request(range="10.9.0.0/24")
    assert out.status == "rejected" or out.state == decisions.NAD_REJECTED
    nad = nad_doc(world.store, REF, "apps", "data-plane")
    assert nad is not None and nad["state"] == decisions.NAD_REJECTED
    assert any("172.16.1.0/24" in r and "10.9.0.0/24" in r for r in nad["reasons"])
    assert world.kube.nads() == {}


# ---------------------------------------------------------------------------- moved from test_workflow.py
# Flow logic that needed the whole stack there (Firestore emulator, GKE and cluster sandboxes);
# the stack tier keeps the paths through the real servers (errors mapped from gRPC, audit shapes).

LABELS_SET = "google.container.v1.ClusterManager.SetLabels"
UPDATE = "google.container.v1.ClusterManager.UpdateCluster"
DELETE = "google.container.v1.ClusterManager.DeleteCluster"


def test_a_cluster_without_a_template_waits_for_a_node_pool(world: World) -> None:
    assert world.settings.node_pool_template is None
    world.gke.add(REF, eligible_cluster(node_pools=[container_v1.NodePool(name="default-pool")]))
    out = world.audit()
    assert world.store.get_cluster(REF).state == decisions.AWAITING_NODE_POOL  # type: ignore[union-attr]
    assert "additional-pod-network" in out.message


def test_an_update_of_an_untracked_cluster_is_left_to_reconcile(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    out = world.audit("cluster.updated", method=UPDATE)
    assert out.status == "ignored" and world.store.get_cluster(REF) is None


def test_labels_set_later_opt_a_cluster_in_and_out(world: World) -> None:
    world.gke.add(REF, eligible_cluster(resource_labels={"team": "net"}))
    assert world.audit().state == decisions.IGNORED
    world.gke.add(REF, eligible_cluster(resource_labels={"team": "net", "multus-provisioner": "enabled"}))
    assert world.audit("cluster.labels_set", last=False, method=LABELS_SET).status == "ignored"  # noted
    assert world.audit("cluster.labels_set", method=LABELS_SET).state == decisions.READY  # the workflow starts
    world.gke.add(REF, eligible_cluster(resource_labels={"team": "net"}))  # opted out again
    out = world.audit("cluster.labels_set", method=LABELS_SET)
    assert world.store.get_cluster(REF).state == decisions.IGNORED and "opted out" in out.message  # type: ignore
    assert any("opted out" in h["message"] for h in world.store.history(REF, page_size=50)[0])


def test_scoped_reconcile_rechecks_an_ineligible_cluster_after_it_was_fixed(world: World) -> None:
    not_multi = container_v1.NetworkConfig(datapath_provider=container_v1.DatapathProvider.ADVANCED_DATAPATH,
                                           enable_multi_networking=False)
    world.gke.add(REF, eligible_cluster(network_config=not_multi))
    assert world.audit().state == decisions.INELIGIBLE
    out = world.reconcile()  # a full run leaves it alone
    assert not any(REF.path in r for r in out.details["resumed"])
    world.gke.add(REF, eligible_cluster())  # the user enables multi-networking
    out = world.reconcile({"cluster": REF.path})
    assert any(REF.path in r for r in out.details["resumed"]), out.details
    assert world.store.get_cluster(REF).state == decisions.READY  # type: ignore[union-attr]


def test_scoped_reconcile_of_an_untracked_cluster_adopts_it(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    out = world.reconcile({"cluster": REF.path})
    assert out.details["adopted"] == [f"{REF.path}: {decisions.READY}"], out.details
    missing = ClusterRef.of(REF.project, REF.location, "never-existed")
    world.reconcile({"cluster": missing.path})
    assert world.store.get_cluster(missing).state == decisions.DELETED  # type: ignore[union-attr]  # NOT_FOUND


def test_full_reconcile_rechecks_ignored_and_ineligible_clusters_whose_facts_changed(world: World) -> None:
    quiet = ClusterRef.of(REF.project, REF.location, "quiet")
    not_multi = container_v1.NetworkConfig(datapath_provider=container_v1.DatapathProvider.ADVANCED_DATAPATH,
                                           enable_multi_networking=False)
    world.gke.add(REF, eligible_cluster(network_config=not_multi))
    assert world.audit().state == decisions.INELIGIBLE
    world.gke.add(quiet, eligible_cluster(name="quiet", resource_labels={}, id="quiet-1"))
    assert world.wf.clusters.drive(quiet, "quiet-created", trigger="cluster created").state == decisions.IGNORED
    out = world.reconcile()
    assert not any(REF.path in r or quiet.path in r for r in out.details["resumed"]), out.details
    world.gke.add(REF, eligible_cluster())  # fixed, and its audit entry lost
    world.gke.add(quiet, eligible_cluster(name="quiet", id="quiet-1"))  # opted in, its entry lost
    out = world.reconcile()
    assert f"{REF.path}: {decisions.READY}" in out.details["resumed"], out.details
    assert f"{quiet.path}: {decisions.READY}" in out.details["resumed"], out.details


def test_a_cluster_deleted_and_created_again_starts_a_new_incarnation_with_both_histories(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    assert world.audit().state == decisions.READY
    first_id = world.store.get_cluster(REF).data["clusterId"]  # type: ignore[union-attr]
    del world.gke.clusters[REF.path]
    assert world.audit("cluster.deleted", method=DELETE).state == decisions.DELETED
    world.gke.add(REF, eligible_cluster(id="incarnation-2"))
    world.audit(last=False)
    assert world.audit().state == decisions.READY
    rec = world.store.get_cluster(REF)
    assert rec is not None and rec.data["clusterId"] == "incarnation-2" != first_id and rec.data["incarnation"] == 2
    assert rec.data["previousIncarnations"][-1]["clusterId"] == first_id  # type: ignore[index]
    assert rec.data["previousIncarnations"][-1]["endState"] == decisions.DELETED  # type: ignore[index]
    messages = [h["message"] for h in world.store.history(REF, page_size=200)[0]]
    assert f"new incarnation incarnation-2, previous {first_id}" in " ".join(messages)
    assert sum("bundle " in m and "applied" in m for m in messages) == 2  # both incarnations' installs


def test_reconcile_finds_a_re_created_cluster_whose_events_were_lost(world: World) -> None:
    world.gke.add(REF, eligible_cluster())
    assert world.audit().state == decisions.READY
    world.gke.add(REF, eligible_cluster(id="incarnation-2"))  # deleted and created again, every entry lost
    out = world.reconcile()
    assert f"{REF.path}: {decisions.READY}" in out.details["adopted"], out.details
    rec = world.store.get_cluster(REF)
    assert rec is not None and rec.data["clusterId"] == "incarnation-2"
    assert rec.data["previousIncarnations"][-1]["endState"] == decisions.READY  # type: ignore[index]


def test_the_tick_publishes_one_scoped_reconcile_per_cluster_with_work() -> None:
    """The scheduled tick with a reconcile topic (moved from test_fanout.py's stack test, whose
    publishing half the Pub/Sub contract suite now holds): READY and untracked opted-in clusters
    get a message; INELIGIBLE and not-opted-in ones none; batches of `fanout_batch`."""
    world = World(reconcile_topic="multus-reconcile", fanout_batch=2)
    topic = f"projects/{REF.project}/topics/multus-reconcile"
    world.publisher.create_topic(topic)
    ready = [ClusterRef.of(REF.project, REF.location, f"ready-{i}") for i in range(2)]
    for i, ref in enumerate(ready):
        world.gke.add(ref, eligible_cluster(name=ref.cluster, id=f"ready-{i}"))
        assert world.wf.clusters.drive(ref, f"created-{i}", trigger="cluster created").state == decisions.READY
    untracked = ClusterRef.of(REF.project, REF.location, "untracked")  # opted in, its events lost
    world.gke.add(untracked, eligible_cluster(name="untracked", id="untracked-1"))
    quiet = ClusterRef.of(REF.project, REF.location, "quiet")  # not opted in
    world.gke.add(quiet, eligible_cluster(name="quiet", id="quiet-1", resource_labels={}))
    legacy = ClusterRef.of(REF.project, REF.location, "legacy")  # INELIGIBLE once tracked
    world.gke.add(legacy, eligible_cluster(name="legacy", id="legacy-1", current_master_version="1.27.3-gke.100"))
    assert world.wf.clusters.drive(legacy, "legacy-created", trigger="cluster created").state == decisions.INELIGIBLE

    out = world.wf.reconcile(ReconcileEvent(event_id="tick-1"))
    assert out.status == "done" and "published" in out.message
    bodies = [json.loads(m) for m in world.publisher.topics[topic]]
    assert len(bodies) == out.details["published"] == 3
    assert all(b["sweep"] == "tick-1" for b in bodies)
    assert {b["cluster"] for b in bodies} == {r.path for r in ready} | {untracked.path}
    assert world.publisher.calls == 2  # 3 messages in batches of 2
    assert world.wf.reconcile(ReconcileEvent(event_id="tick-1")).status == "duplicate"  # a redelivered tick

    # each scoped message is a reconcile of its own: the untracked cluster is adopted by its sweep message
    for body in bodies:
        world.wf.reconcile(ReconcileEvent(event_id=f"m-{body['cluster']}", scope=ClusterRef.parse(body["cluster"]),
                                          sweep=body["sweep"]))
    assert world.store.get_cluster(untracked).state == decisions.READY  # type: ignore[union-attr]
    # a sweep message never re-checks an INELIGIBLE cluster (a user's scoped reconcile does)
    world.wf.reconcile(ReconcileEvent(event_id="m-legacy", scope=legacy, sweep="tick-1"))
    assert [h["step"] for h in world.store.history(legacy, page_size=100)[0]].count("precheck") == 1


def test_the_two_reads_after_a_claim_overlap_and_report_either_error() -> None:
    """A NAD's records and the cluster's objects are read at the same time (`nad._both`, issue 21):
    each read waits for the other to have started, so run one after the other this deadlocks and
    the barrier breaks; an error of either read is raised once both have ended."""
    import threading

    from shared.flows.nad import _both

    barrier = threading.Barrier(2, timeout=30)
    assert _both(lambda: (barrier.wait(), "records")[1], lambda: (barrier.wait(), "objects")[1]) == (
        "records", "objects")

    def cluster_down() -> Any:
        raise Transient("the cluster API is unavailable", code="UNAVAILABLE", api="kubernetes")

    with pytest.raises(Transient):
        _both(lambda: "records", cluster_down)
    ended = threading.Event()

    def slow() -> str:
        barrier.wait()
        ended.set()
        return "objects"

    def firestore_down() -> Any:
        barrier.wait()
        raise Transient("Firestore UNAVAILABLE", code="UNAVAILABLE", api="firestore")

    with pytest.raises(Transient, match="Firestore"):
        _both(firestore_down, slow)
    assert ended.is_set()


def test_a_bundle_rollout_runs_its_waves_and_resume_and_abort_act_on_the_record(world: World) -> None:
    """The rollout flow on the fakes: the first tick records the deployment's bundle, a new bundle
    (another log level) goes through its one wave and completes; `resume`/`abort` change a halted
    record and refuse what they may not act on (the end-to-end story: tests/test_rollout.py)."""
    from dataclasses import replace

    from shared.core.errors import Rejected
    from shared.core.records import RolloutState, WaveClusterState
    from tests.fakes import rollout_stored

    world.gke.add(REF, eligible_cluster())
    assert world.audit().state == decisions.READY
    assert world.wf.rollouts.tick("tick-1").startswith("rollout COMPLETED: no waves")
    first, _ = world.store.get_rollout()
    assert first is not None and first.state == RolloutState.COMPLETED and first.waves == ()

    later = Controller(Settings(project=REF.project, policy_document=False, multus_log_level="debug",
                                rollout_wait_seconds=1),
                       store=world.store, gke=world.gke, kube_factory=lambda cluster: world.kube)
    assert later.rollouts.tick("tick-2") == "rollout COMPLETED: wave 1/1; PASSED 1"
    done, version = world.store.get_rollout()
    assert done is not None and done.previous == first.target and done.target.log_level == "debug"
    assert [(w.name, w.clusters) for w in done.waves] == [("canary", (REF.doc_id,))]
    entry = done.clusters[REF.doc_id]
    assert entry.state == WaveClusterState.PASSED and entry.started is not None and entry.path == REF.path
    assert "no NAD to verify net1 with" in entry.message
    assert [s for s, _ in world.history()][-2:] == ["rollout", "rollout-gate"]
    stored = rollout_stored(world.store)
    assert stored is not None and stored["clusters"][REF.doc_id]["state"] == "PASSED" and stored["waveSize"] == "25%"

    with pytest.raises(Rejected, match="nothing to resume"):
        later.rollouts.resume()
    halted = replace(done.with_cluster(REF.doc_id, replace(entry, state=WaveClusterState.ROLLED_BACK)),
                     state=RolloutState.HALTED, halted_cluster=REF.doc_id, reason="failed the health gate")
    world.store.put_rollout(halted, version)
    resumed = later.rollouts.resume()
    assert resumed.state == RolloutState.RUNNING and resumed.reason == "" and resumed.resumed_at
    assert resumed.clusters[REF.doc_id].state == WaveClusterState.WAITING
    assert world.store.get_rollout()[0] == resumed
    aborted = later.rollouts.abort()
    assert aborted.state == RolloutState.ABORTED
    assert aborted.reason == f"aborted; clusters return to {first.target.version}"
    assert world.store.get_rollout()[0] == aborted
    with pytest.raises(Rejected, match="nothing to abort"):
        later.rollouts.abort()
