"""The reconcile fan-out (issue 14), in-process against real servers: the Pub/Sub and Firestore
emulators, the sandbox GKE and cluster APIs. The tick publishes one scoped reconcile per cluster
with work; each is then reconciled on its own under its own ledger key; the drift check of a
READY cluster makes at most 8 cluster requests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.stack import Stack
from shared.app import Controller
from shared.core import decisions as d
from shared.core.events import decode_reconcile
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from tests.test_workflow import ce, new_cluster, to_ready


@pytest.fixture(scope="module")
def fan_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from sandbox.gke.realism import Realism

    s = Stack(state_dir=Path(tmp_path_factory.mktemp("fanout")), emulators=emulators, operation_delay=0.05,
              crd_delay=0.05, rollout_delay=0.05, with_functions=False, realism=Realism.calm())
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def topic(fan_stack: Stack) -> Iterator[tuple[str, str]]:
    from google.cloud import pubsub_v1

    name = f"fanout-{uuid.uuid4().hex[:8]}"
    topic_path = f"projects/{fan_stack.project}/topics/{name}"
    sub_path = f"projects/{fan_stack.project}/subscriptions/{name}-pull"
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    pub.create_topic(name=topic_path)
    sub.create_subscription(name=sub_path, topic=topic_path, ack_deadline_seconds=60)
    try:
        yield topic_path, sub_path
    finally:
        sub.delete_subscription(subscription=sub_path)
        pub.delete_topic(topic=topic_path)
        sub.close()
        pub.stop()


def pull_all(sub_path: str, expected: int, timeout: float = 30.0) -> list[Any]:
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            resp = sub.pull(subscription=sub_path, max_messages=100, timeout=5)
            if resp.received_messages:
                sub.acknowledge(subscription=sub_path, ack_ids=[m.ack_id for m in resp.received_messages])
                got += [m.message for m in resp.received_messages]
            elif len(got) >= expected:
                break
    finally:
        sub.close()
    return got


def test_tick_publishes_one_scoped_reconcile_per_cluster_with_work(fan_stack, topic, monkeypatch):
    topic_path, sub_path = topic
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", fan_stack.env["FIRESTORE_EMULATOR_HOST"])
    prefix = f"fan{uuid.uuid4().hex[:8]}_"
    settings = Settings.from_env({**fan_stack.env, "MULTUS_PROVISIONER_COLLECTION_PREFIX": prefix,
                                  "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "2",
                                  "MULTUS_PROVISIONER_TOPIC_RECONCILE": topic_path,
                                  "MULTUS_PROVISIONER_FANOUT_BATCH": "2",
                                  "MULTUS_PROVISIONER_MANAGED_PROJECTS": "other-project-1"})
    wf = Controller(settings)
    ready = [to_ready(wf, fan_stack) for _ in range(2)]
    untracked, _ = new_cluster(fan_stack)  # opted in, its events lost: the sweep adopts it
    quiet, _ = new_cluster(fan_stack, labels={"team": "x"})  # not opted in: no message
    legacy = ClusterRef(fan_stack.project, "us-central1", "demo-legacy")  # INELIGIBLE once tracked
    wf.reconcile(decode_reconcile(ce({"cluster": legacy.path})))
    assert wf.store.get_cluster(legacy).state == d.INELIGIBLE

    tick = uuid.uuid4().hex
    out = wf.reconcile(decode_reconcile(ce(b"{}", tick)))
    assert out.status == "done" and "published" in out.message
    assert any("other-project-1" in e for e in out.details["errors"])  # the managed project was listed
    messages = pull_all(sub_path, out.details["published"])
    bodies = [json.loads(m.data) for m in messages]
    assert len(bodies) == out.details["published"]
    assert all(b["sweep"] == tick for b in bodies)
    paths = {b["cluster"] for b in bodies}
    assert {r.path for r in ready} | {untracked.path} <= paths
    assert legacy.path not in paths and quiet.path not in paths  # ineligible / not opted in: left alone
    assert wf.reconcile(decode_reconcile(ce(b"{}", tick))).status == "duplicate"  # a redelivered tick

    # each scoped message is one invocation of its own, with its own ledger key
    for m in messages:
        body = json.loads(m.data)
        if body["cluster"] not in {r.path for r in ready} | {untracked.path}:
            continue
        res = wf.reconcile(decode_reconcile(ce(m.data, m.message_id)))
        assert res.status == "done"
        # a cluster found in sync is reconciled with reads only, no ledger entry (issue 21)
        changed = res.details["adopted"] or res.details["repaired"] or res.details["resumed"]
        assert wf.store.seen(m.message_id) == bool(changed)
    assert wf.store.get_cluster(untracked).state == d.CREATING_NODE_POOL  # adopted by its sweep message
    # a sweep message never re-checks an INELIGIBLE cluster (a user's scoped reconcile does)
    sweep_legacy = json.dumps({"cluster": legacy.path, "sweep": tick}).encode()
    wf.reconcile(decode_reconcile(ce(sweep_legacy)))
    steps = [h["step"] for h in wf.store.history(legacy, page_size=100)[0]]
    assert steps.count("precheck") == 1


def test_drift_check_of_a_ready_cluster_makes_at_most_8_cluster_requests(fan_stack, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", fan_stack.env["FIRESTORE_EMULATOR_HOST"])
    settings = Settings.from_env({**fan_stack.env, "MULTUS_PROVISIONER_COLLECTION_PREFIX": f"dr{uuid.uuid4().hex[:6]}_",
                                  "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "2"})
    wf = Controller(settings)
    ref = to_ready(wf, fan_stack)
    wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))  # settles the rollout figure
    kube = wf.ctx.kube_for(ref)
    before = kube.requests
    wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))
    used = kube.requests - before
    assert used <= 8, used  # 6 LISTs of the bundle's kinds + the managed NADs + Whereabouts' IPPools

    # drift is still found: a deleted DaemonSet comes back
    server = fan_stack.kube_server(ref.cluster)
    server.store.delete(("apps", "daemonsets", "kube-system", "gke-multinet"))
    out = wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))
    assert any("re-applied DaemonSet gke-multinet" in r for r in out.details["repaired"]), out.details
    assert server.store.get(("apps", "daemonsets", "kube-system", "gke-multinet")) is not None
