"""The controller against the real thing: kube-apiserver v1.33, controller-manager, scheduler and
kwok built from pinned sources (`sandbox/kube/real.py`), under the same adapter and the same stack
as the simulated server.

- The server-side apply engine (`shared/adapters/kube.py`) installs the bundle on a real API server:
  the CRDs are Established by the real apiextensions controller, the DaemonSet is rolled out by the
  real DaemonSet controller and scheduler over kwok nodes in three zones, a `-broken` image stalls
  it in ImagePullBackOff and the good one recovers it.
- End to end through Pub/Sub push and the real functions (`Stack(kube="real")`): a cluster created
  through the GKE API ends READY; NADs requested before and after READY are APPLIED; drift (a
  deleted ConfigMap, an edited NAD) is repaired by reconcile; an overlapping update is refused and
  the live object kept; a delete removes it; a bundle rollout in waves halts on a broken canary
  and rolls it back.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core.multus import load_bundle
from tests.fakes import nad_doc
from tests.test_kube_engine import nad
from tests.test_kube_engine import wait_for as wait_kube

pytestmark = pytest.mark.real

ZONES = ("us-central1-a", "us-central1-b", "us-central1-c")
BROKEN = "gcr.io/gke-release/multus-cni:v4.2.2-gke.1-broken@sha256:" + "ef" * 32


@pytest.fixture(scope="module")
def real_server() -> Iterator[Any]:
    from sandbox.kube.real import RealKubeApiServer

    server = RealKubeApiServer(token=secrets.token_urlsafe(16), nodes=[], name="real-adapter")
    server.start()
    try:
        for zone in ZONES:  # a regional pool: one node in each of three zones
            server.add_nodes([f"gke-pool-b-{zone[-1]}"], labels={"cloud.google.com/gke-nodepool": "pool-b",
                                                                 "topology.kubernetes.io/zone": zone})
        yield server
    finally:
        server.stop()


@pytest.fixture
def real_kube(real_server: Any, tmp_path: Path) -> Iterator[Any]:
    from shared.adapters.kube import Kube
    from tests.fixtures_kube import make_api_client

    client = make_api_client(real_server, tmp_path)
    try:
        yield Kube(client, timeout=30.0)
    finally:
        client.close()


def _pods(kube: Any, namespace: str) -> list[dict[str, Any]]:
    _, out, _ = kube._call("GET", f"/api/v1/namespaces/{namespace}/pods")
    return list((out or {}).get("items") or [])


def test_the_bundle_installs_on_a_real_api_server_and_rolls_out_over_three_zones(real_kube: Any,
                                                                                  real_server: Any) -> None:
    bundle = load_bundle()
    first = real_kube.apply(bundle.objects)
    assert [r.key[1] for r in first] == [o["kind"] for o in bundle.objects] and all(r.changed for r in first)
    real_kube.wait_established(bundle.crd_names, timeout=60, poll=0.2)
    rollout = wait_kube(lambda: (lambda r: r if r.complete else None)(real_kube.daemonset_rollout(*bundle.daemonset)),
                        timeout=120, poll=0.2)
    assert rollout.desired == rollout.ready == 3  # the real DaemonSet controller, scheduler and kwok
    pods = _pods(real_kube, "kube-system")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(real_server.node_names())
    assert all(p["spec"]["priorityClassName"] == "system-node-critical" for p in pods)
    assert all(p["spec"]["priority"] == 2000001000 for p in pods)  # the real Priority admission resolved it

    again = real_kube.apply(bundle.objects)  # server-side apply of the same bundle changes nothing
    assert not any(r.changed for r in again), [r.key for r in again if r.changed]

    real_server.stats.reset()
    real_kube.apply([nad("data-plane", rng="172.16.1.0/26")])
    assert real_server.stats.by_verb() == {"PATCH": 1}  # counted from the API server's own audit log
    live = real_kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "data-plane")
    assert json.loads(live["spec"]["config"])["plugins"][0]["ipam"]["range"] == "172.16.1.0/26"
    assert real_kube.delete_nad("default", "data-plane")
    assert real_kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "data-plane") is None


def test_a_broken_image_stalls_the_real_daemonset_and_the_good_one_recovers_it(real_kube: Any) -> None:
    good, bad = load_bundle(), load_bundle(multus_image=BROKEN)
    real_kube.apply(good.objects)
    real_kube.wait_established(good.crd_names, timeout=60, poll=0.2)
    wait_kube(lambda: real_kube.daemonset_rollout(*good.daemonset).complete, timeout=120, poll=0.2)
    real_kube.apply(bad.objects)
    stuck = wait_kube(lambda: [p for p in _pods(real_kube, "kube-system")
                               if any((s.get("state") or {}).get("waiting", {}).get("reason") == "ImagePullBackOff"
                                      for s in p["status"].get("initContainerStatuses") or [])],
                      timeout=120, poll=0.2)
    assert stuck and not real_kube.daemonset_rollout(*bad.daemonset).complete
    waiting = {s["state"]["waiting"]["message"] for s in stuck[0]["status"]["initContainerStatuses"]
               if "waiting" in s["state"]}
    assert waiting == {f'Back-off pulling image "{BROKEN}"'}  # the simulated kubelet's words too
    real_kube.apply(good.objects)
    wait_kube(lambda: real_kube.daemonset_rollout(*good.daemonset).complete, timeout=120, poll=0.2)


def test_what_only_a_simulation_can_do_is_refused_by_name(real_server: Any) -> None:
    from sandbox.kube.real import RealTierError

    with pytest.raises(RealTierError, match="--kube sim"):
        real_server.faults.add("GET", ".*", 500)
    with pytest.raises(RealTierError, match="--kube sim"):
        real_server.paused()


def test_a_dead_owners_control_plane_is_swept(tmp_path: Path) -> None:
    """A run directory whose owner is gone: its process group is killed and the directory removed."""
    import subprocess

    from sandbox.kube import real

    run = real._run_root() / f"999999999-kube-crashed-{uuid.uuid4().hex[:6]}"
    run.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "600", str(run)], start_new_session=True)
    (run / "kube-apiserver.pid").write_text(str(proc.pid))
    try:
        assert run.name in real.sweep()
        assert proc.wait(timeout=30) != 0 and not run.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_owner_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL gives no chance to stop: the owner's reaper ends its control plane and etcd."""
    import subprocess
    import sys

    from sandbox.kube import real
    from tests.fixtures_stack import wait_for

    script = tmp_path / "owner.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from sandbox.kube.real import RealKubeApiServer\n"
        "s = RealKubeApiServer(token='t0ken', nodes=1, name='owner')\n"
        "s.start()\n"
        "print(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    owner = proc.stdout.split()[0]

    def left() -> list[str]:
        runs = [p.name for p in real._run_root().glob(f"{owner}-*")] if real._run_root().exists() else []
        procs = [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                 .splitlines() if f"multus-provisioner-real/{owner}-" in line]
        return runs + procs

    wait_for(lambda: not left(), 60, "the reaper to remove what the killed owner left")


# -- end to end through Pub/Sub push and the real functions -----------------------------------------
@pytest.fixture(scope="module")
def real_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _real_stack(emulators, tmp_path_factory)


@pytest.fixture
def real_fleet(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A stack of its own: a rollout plans every READY cluster of a project, so the fleet test must
    not see the other tests' clusters (and their NADs' verify gates)."""
    yield from _real_stack(emulators, tmp_path_factory)


def _real_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox.gke.realism import Realism
    from tests.fixtures_stack import start_stack

    stack = start_stack(emulators, tmp_path_factory.mktemp("real-stack"), f"real_{uuid.uuid4().hex[:6]}_",
                        kube="real", realism=Realism(),
                        env={"MULTUS_PROVISIONER_ROLLOUT_WAVE_SIZE": "1", "MULTUS_PROVISIONER_ROLLOUT_CANARY": "1",
                             "MULTUS_PROVISIONER_ROLLOUT_GATE_SECONDS": "90",
                             "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "15"})
    try:
        yield stack
    finally:
        stack.stop()


def _store(stack: Any) -> Any:
    from tests.fixtures_stack import direct_store

    return direct_store(stack)


def _engine(stack: Any, name: str) -> Any:
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    path = f"{stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{name}.yaml"
    return Kube(kconfig.new_client_from_config(config_file=path), timeout=30.0)


def _request(stack: Any, ref: Any, name: str, **fields: Any) -> None:
    stack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": name, **fields}).encode())


def test_the_workflow_end_to_end_on_real_clusters(real_stack: Any) -> None:
    from sandbox.gke.scenario import NodePoolSpec
    from tests.fixtures_stack import ref_of, wait_for, wait_nad, wait_state

    stack, store = real_stack, _store(real_stack)
    name = f"real-{uuid.uuid4().hex[:6]}"
    ref = ref_of(stack, name)
    _request(stack, ref, "early", range="172.16.1.0/26")
    wait_nad(store, ref, "default", "early", "PENDING", 60)
    stack.gke.create_cluster(name, wait=False, labels={"multus-provisioner": "enabled"},
                             node_pools=(NodePoolSpec("default-pool", node_count=1),))
    rec = wait_state(store, ref, "READY", 240)
    assert rec.data["rollout"]["complete"] is True
    wait_nad(store, ref, "default", "early", "APPLIED", 120)
    kube = _engine(stack, name)
    ds = kube.daemonset_rollout("kube-system", "gke-multinet")
    # the template's pool is regional: its nodes in three zones, every one running the DaemonSet's pod
    assert ds.desired == ds.ready == rec.data["rollout"]["desired"] >= 3
    server = stack.kube_server(name)
    assert type(server).__name__ == "RealKubeApiServer"

    _request(stack, ref, "late", range="172.16.1.64/26")
    wait_nad(store, ref, "default", "late", "APPLIED", 120)

    # drift: a deleted bundle object and an edited NAD are repaired by reconcile
    kube._call("DELETE", "/api/v1/namespaces/kube-system/configmaps/multus-cni-config")
    edited = kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "late")
    edited["spec"]["config"] = edited["spec"]["config"].replace("172.16.1.64/26", "172.16.1.192/26")
    kube._call("PUT", "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/late",
               body={k: edited[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    stack.publish("reconcile", json.dumps({"cluster": ref.path}).encode())
    wait_for(lambda: kube.get("v1", "ConfigMap", "kube-system", "multus-cni-config"), 120, "ConfigMap restored")
    wait_for(lambda: "172.16.1.64/26" in kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default",
                                                  "late")["spec"]["config"], 120, "NAD restored")

    # an update that would overlap another NAD is refused; the live object stays as it was
    _request(stack, ref, "late", range="172.16.1.0/25", request_id="overlap-1")
    refused = wait_for(lambda: (lambda d: d if d and "overlap" in str(d.get("message", "")) else None)(
        nad_doc(store, ref, "default", "late")), 120, "the overlapping update refused")
    assert "early" in refused["message"]
    live = kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "late")
    assert "172.16.1.64/26" in live["spec"]["config"]

    _request(stack, ref, "late", action="delete")
    wait_nad(store, ref, "default", "late", "DELETED", 120)
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "late") is None


def test_a_rollout_in_waves_on_real_clusters_halts_on_a_broken_canary_and_rolls_it_back(real_fleet: Any,
                                                                                         capsys: Any) -> None:
    """Two real clusters, the canary labelled; a good bundle passes every gate, a broken one halts
    at the canary (its DaemonSet pods wait in ImagePullBackOff on the real controllers) and the
    canary is rolled back while the other cluster never sees the broken bundle."""
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.gke.scenario import NodePoolSpec
    from tests.fixtures_stack import ref_of, wait_for, wait_state
    from tests.test_rollout import FLEET_BROKEN, GOOD_MULTUS, _rollout, _set_policy, _tick

    stack, store = real_fleet, _store(real_fleet)
    tag = uuid.uuid4().hex[:4]
    names = [f"wave-{tag}-a", f"wave-{tag}-b"]
    for name in names:
        labels = {"multus-provisioner": "enabled"}
        if name.endswith("-a"):
            labels["multus-provisioner-wave"] = "canary"
        stack.gke.create_cluster(name, wait=False, labels=labels, node_pools=(NodePoolSpec("default-pool"),))
    refs = [ref_of(stack, n) for n in names]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: wait_state(store, r, "READY", 240), refs))

    def image(name: str) -> str:
        ds = _engine(stack, name).get("apps/v1", "DaemonSet", "kube-system", "gke-multinet")
        return next(c["image"] for c in ds["spec"]["template"]["spec"]["initContainers"] if "multus" in c["image"])

    def run_until_settled(ticks: int) -> dict[str, Any]:
        for _ in range(ticks):
            _tick(stack)
            doc = _rollout(stack, capsys)
            if doc["state"] != "RUNNING":
                return doc
        return doc

    _tick(stack)  # the first tick records the deployment's bundle
    _set_policy(store, multusImage=GOOD_MULTUS)
    doc = run_until_settled(8)
    assert doc["state"] == "COMPLETED", doc
    ours = {r.doc_id for r in refs}
    assert {c["state"] for k, c in doc["clusters"].items() if k in ours} == {"PASSED"}
    assert all(image(n) == GOOD_MULTUS for n in names)

    _set_policy(store, multusImage=FLEET_BROKEN)
    doc = run_until_settled(6)
    assert doc["state"] == "HALTED", doc
    canary, other = refs
    assert doc["haltedCluster"] == canary.doc_id and "ImagePullBackOff" in doc["reason"]
    assert doc["clusters"][canary.doc_id]["state"] == "ROLLED_BACK"
    wait_for(lambda: image(canary.cluster) == GOOD_MULTUS, 120, "the canary rolled back")
    assert image(other.cluster) == GOOD_MULTUS  # never saw the broken bundle
    kube = _engine(stack, canary.cluster)
    wait_for(lambda: kube.daemonset_rollout("kube-system", "gke-multinet").complete, 180, "the canary healthy again")
    _set_policy(store)  # leave the policy as the module found it
