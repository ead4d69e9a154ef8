"""Fleet bundle rollouts (issue 14): the sandbox kubelet's image-pull refusal, wave planning,
the policy's bundle fields, and rollouts end to end through the real functions on a stack."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.core.multus import load_bundle
from tests.test_kube_engine import install
from tests.test_kube_engine import wait_for as wait_kube

BROKEN_MULTUS = "gcr.io/gke-release/multus-cni:v4.2.1-gke.6-broken@sha256:" + "ab" * 32


# -- the sandbox can fail a rollout -----------------------------------------------------------------
def _pods(kube: Any, namespace: str) -> list[dict[str, Any]]:
    _, out, _ = kube._call("GET", f"/api/v1/namespaces/{namespace}/pods")
    return list((out or {}).get("items") or [])


def test_broken_image_tag_stalls_the_daemonset_with_image_pull_back_off(kube: Any) -> None:
    install(kube)
    good = load_bundle()
    bad = load_bundle(multus_image=BROKEN_MULTUS)
    kube.apply(bad.objects)
    rollout = wait_kube(lambda: (lambda r: r if r.observed and r.updated == r.desired else None)(
        kube.daemonset_rollout(*bad.daemonset)))
    assert not rollout.complete and rollout.ready == 0 and rollout.desired == 2
    pods = wait_kube(lambda: [p for p in _pods(kube, "kube-system") if p["status"]["phase"] == "Pending"])
    assert len(pods) == 2
    pod = pods[0]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    stuck = [s for s in pod["status"]["initContainerStatuses"] if s["image"] == BROKEN_MULTUS]
    assert stuck and all(s["state"]["waiting"] == {"reason": "ImagePullBackOff",
                                                   "message": f'Back-off pulling image "{BROKEN_MULTUS}"'}
                         for s in stuck)
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    events = kube.pod_events("kube-system", pod["metadata"]["name"])
    messages = [e["message"] for e in events]
    assert "Error: ImagePullBackOff" in messages and "Error: ErrImagePull" in messages
    assert any(m.startswith(f'Failed to pull image "{BROKEN_MULTUS}": rpc error: code = NotFound') for m in messages)
    # still stalled a while later (nothing moves by itself)
    assert not kube.daemonset_rollout(*bad.daemonset).complete

    kube.apply(good.objects)  # rolling back replaces the unavailable pods at once
    wait_kube(lambda: kube.daemonset_rollout(*good.daemonset).complete)
    assert _pods(kube, "kube-system") == []


# -- wave planning and the policy's bundle fields (pure) ------------------------------------------
import pytest  # noqa: E402

from shared.core import waves  # noqa: E402
from shared.core.errors import Rejected  # noqa: E402
from shared.core.policy import Policy  # noqa: E402
from shared.core.records import (  # noqa: E402
    BundleOptions,
    FleetRollout,
    RolloutCluster,
    Wave,
    WaveClusterState,
)
from shared.core.settings import ConfigError, Settings  # noqa: E402


def test_canary_label_first_then_waves_of_at_most_n() -> None:
    fleet = [(f"p~l~c{i}", {}) for i in range(7)]
    fleet[4] = ("p~l~c4", {"multus-provisioner-wave": "canary"})
    plan = waves.plan(fleet, canary=2, size=waves.WaveSize.parse("3"))
    assert [w.name for w in plan] == ["canary", "wave 1", "wave 2"]
    assert plan[0].clusters == ("p~l~c4",)
    assert plan[1].clusters == ("p~l~c0", "p~l~c1", "p~l~c2") and plan[2].clusters == ("p~l~c3", "p~l~c5",
                                                                                        "p~l~c6")


def test_without_label_the_first_n_are_the_canary_and_a_share_sizes_the_waves() -> None:
    fleet = [(f"c{i:02d}", {}) for i in range(10)]
    plan = waves.plan(fleet, canary=1, size=waves.WaveSize.parse("25%"))
    assert plan[0] == Wave("canary", ("c00",))
    assert [len(w.clusters) for w in plan[1:]] == [2, 2, 2, 2, 1]
    assert waves.plan([], canary=1, size=waves.WaveSize.parse("1")) == ()


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "x", "", True, None, "-1"])
def test_bad_wave_sizes_are_named(bad: object) -> None:
    with pytest.raises(Rejected) as e:
        waves.WaveSize.parse(bad)
    assert e.value.problems[0].field == "waveSize"


def test_spec_for_holds_clusters_on_the_previous_bundle_until_their_wave() -> None:
    def at(state: WaveClusterState) -> RolloutCluster:
        return RolloutCluster("projects/p/locations/l/clusters/c", 0, state)

    rollout = FleetRollout(waves.RUNNING, BundleOptions("T"), BundleOptions("P"),
                           clusters={"a": at(waves.UPDATING), "b": at(waves.WAITING), "c": at(waves.ROLLED_BACK),
                                     "d": at(waves.PASSED)})

    def version(r: FleetRollout | None, cid: str) -> str | None:
        spec = waves.spec_for(r, cid)
        return spec.version if spec is not None else None

    assert [version(rollout, c) for c in "abcde"] == ["T", "P", "P", "T", "P"]
    assert version(replace(rollout, state=waves.COMPLETED), "b") == "T"
    assert version(replace(rollout, state=waves.ABORTED), "a") == "P"
    assert waves.spec_for(None, "a") is None
    # no previous bundle recorded: the target stands in; nothing recorded at all: the policy's bundle applies
    assert version(replace(rollout, previous=BundleOptions()), "b") == "T"
    assert waves.spec_for(FleetRollout(waves.RUNNING), "a") is None


def test_policy_document_sets_the_bundle_and_names_bad_fields() -> None:
    base = Policy.from_settings(Settings())
    image = "gcr.io/gke-release/multus-cni:v4.2.2-gke.1@sha256:" + "cd" * 32
    p = base.merged({"multusImage": image, "multusLogLevel": "Debug", "rolloutWaveSize": "10%",
                     "rolloutCanary": 2, "managedProjects": ["team-a-prod"]})
    assert p.bundle_spec() == BundleOptions(multus_image=image, whereabouts_image=None, log_level="debug")
    assert (p.rollout_wave_size, p.rollout_canary, p.managed_projects) == ("10%", 2, ("team-a-prod",))
    for doc, field in (({"multusImage": "gcr.io/x/multus:v1"}, "multusImage"),
                       ({"whereaboutsImage": 7}, "whereaboutsImage"),
                       ({"multusLogLevel": "loud"}, "multusLogLevel"),
                       ({"rolloutWaveSize": "0%"}, "rolloutWaveSize"),
                       ({"rolloutCanary": -1}, "rolloutCanary"),
                       ({"managedProjects": ["Not A Project"]}, "managedProjects")):
        with pytest.raises(ConfigError, match=field):
            base.merged(doc)


# -- end to end on a stack of its own: a rollout that completes, one halted and rolled back ---------
GOOD_MULTUS = "gcr.io/gke-release/multus-cni:v4.2.2-gke.1@sha256:" + "cd" * 32
FLEET_BROKEN = "gcr.io/gke-release/multus-cni:v4.2.2-gke.1-broken@sha256:" + "ef" * 32


@pytest.fixture(scope="module")
def fleet(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.gke.scenario import NodePoolSpec
    from tests.fixtures_stack import direct_store, ref_of, start_stack, wait_state

    prefix = f"roll_{uuid.uuid4().hex[:6]}_"
    stack = start_stack(emulators, tmp_path_factory.mktemp("rollout"), prefix, env={
        "MULTUS_PROVISIONER_ROLLOUT_WAVE_SIZE": "1", "MULTUS_PROVISIONER_ROLLOUT_CANARY": "1",
        "MULTUS_PROVISIONER_ROLLOUT_GATE_SECONDS": "60", "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "8"})
    try:
        store = direct_store(stack)
        names = ["fleet-a", "fleet-b", "fleet-c"]
        for name in names:
            labels = {"multus-provisioner": "enabled"}
            if name == "fleet-b":
                labels["multus-provisioner-wave"] = "canary"
            stack.gke.create_cluster(name, wait=False, labels=labels, node_pools=(NodePoolSpec("default-pool"),))
        refs = [ref_of(stack, n) for n in names]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda r: wait_state(store, r, "READY", 90), refs))
        yield stack, store, refs
    finally:
        stack.stop()


def _tick(stack: Any) -> None:
    import uuid

    from tests.fixtures_stack import push

    assert push(stack.function_urls["reconcile"], b"{}", f"tick-{uuid.uuid4().hex[:8]}", timeout=120) == 200


def _set_policy(store: Any, **fields: Any) -> None:
    store.client.collection(store.settings.collection("config")).document("policy").set(fields)


def _ds_image(stack: Any, name: str) -> str:
    ds = stack.kube_server(name).store.get(("apps", "daemonsets", "kube-system", "gke-multinet"))
    return next(c["image"] for c in ds["spec"]["template"]["spec"]["initContainers"] if "multus" in c["image"])


def _rollout(stack: Any, capsys: Any) -> dict[str, Any]:
    import json

    from multus_cli import main as cli

    capsys.readouterr()
    env = str(stack.write_env_file(stack.state_dir / "env"))
    assert cli.main(["rollout", "status", "--json", "--sandbox", env]) == 0
    return json.loads(capsys.readouterr().out)["rollout"]


def _history(store: Any, ref: Any) -> list[dict[str, Any]]:
    entries, _ = store.history(ref, page_size=500)
    return entries


def test_rollout_in_waves_completes_then_a_broken_image_halts_and_rolls_back(fleet: Any, capsys: Any) -> None:
    import json

    from multus_cli import main as cli
    from shared.core.multus import DEFAULT_MULTUS_IMAGE
    from tests.fixtures_stack import wait_for, wait_nad

    stack, store, refs = fleet
    for ref in refs:  # a NAD on each cluster: the gate's verify pod needs one
        stack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "gate-net"}).encode())
    for ref in refs:
        wait_nad(store, ref, "default", "gate-net", "APPLIED", 60)

    _tick(stack)  # no policy bundle yet: the fleet is on the deployment's bundle
    first = _rollout(stack, capsys)
    assert first["state"] == "COMPLETED" and first["waves"] == []
    baseline = first["target"]["version"]
    assert all(_ds_image(stack, r.cluster) == DEFAULT_MULTUS_IMAGE for r in refs)

    _set_policy(store, multusImage=GOOD_MULTUS)
    for _ in range(6):
        _tick(stack)
        doc = _rollout(stack, capsys)
        if doc["state"] != "RUNNING":
            break
    assert doc["state"] == "COMPLETED", doc
    assert doc["previous"]["version"] == baseline and doc["target"]["multusImage"] == GOOD_MULTUS
    assert [w["name"] for w in doc["waves"]] == ["canary", "wave 1", "wave 2"]
    assert doc["waves"][0]["clusters"] == [refs[1].doc_id]  # the labelled canary goes first
    assert {c["state"] for c in doc["clusters"].values()} == {"PASSED"}
    assert all("net1 got" in c["message"] for c in doc["clusters"].values())
    for ref in refs:
        assert _ds_image(stack, ref.cluster) == GOOD_MULTUS
        steps = [h["step"] for h in _history(store, ref)]
        assert "rollout" in steps and "rollout-gate" in steps
    good = doc["target"]["version"]
    wait_for(lambda: all(store.get_cluster(r).data["bundleVersion"] == good for r in refs), 30, "bundleVersion")

    _set_policy(store, multusImage=FLEET_BROKEN)
    for _ in range(4):
        _tick(stack)
        doc = _rollout(stack, capsys)
        if doc["state"] != "RUNNING":
            break
    assert doc["state"] == "HALTED", doc
    canary = refs[1]
    assert doc["haltedCluster"] == canary.doc_id and "ImagePullBackOff" in doc["reason"]
    assert doc["clusters"][canary.doc_id]["state"] == "ROLLED_BACK"
    assert {doc["clusters"][r.doc_id]["state"] for r in (refs[0], refs[2])} == {"WAITING"}
    assert doc["previous"]["version"] == good
    # the canary is back on the last good bundle and rolls out; the others never saw the broken one
    wait_for(lambda: _ds_image(stack, canary.cluster) == GOOD_MULTUS, 30, "canary rolled back")
    assert _ds_image(stack, refs[0].cluster) == GOOD_MULTUS and _ds_image(stack, refs[2].cluster) == GOOD_MULTUS
    [rollback] = [h for h in _history(store, canary) if h["step"] == "rollback"]
    assert rollback["outcome"] == "failed" and "ImagePullBackOff" in rollback["message"]
    assert f"rolled back to {good}" in rollback["message"]
    env = str(stack.write_env_file(stack.state_dir / "env"))
    capsys.readouterr()
    assert cli.main(["rollout", "status", "--sandbox", env]) == 0
    text = capsys.readouterr().out
    assert "HALTED" in text and "ImagePullBackOff" in text and "canary <- current" in text

    _tick(stack)  # halted: ticks change nothing
    assert _rollout(stack, capsys)["state"] == "HALTED"
    assert cli.main(["rollout", "resume", "--sandbox", env]) == 0  # it fails again, and halts again
    capsys.readouterr()
    _tick(stack)
    assert _rollout(stack, capsys)["state"] == "HALTED"
    assert cli.main(["rollout", "abort", "--sandbox", env]) == 0
    capsys.readouterr()
    _tick(stack)
    doc = _rollout(stack, capsys)
    assert doc["state"] == "ABORTED"  # the same target does not start again
    assert cli.main(["rollout", "resume", "--sandbox", env]) == 2
    assert "only a HALTED rollout can be resumed" in capsys.readouterr().err
    wait_for(lambda: _ds_image(stack, canary.cluster) == GOOD_MULTUS, 30, "canary on the last good bundle")
