"""Fleet bundle rollouts (issue 14): the sandbox kubelet's image-pull refusal, wave planning,
the policy's bundle fields, and rollouts end to end through the real functions on a stack."""

from __future__ import annotations

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
