"""What Multus and Whereabouts ask of the sandbox API server, as real Kubernetes answers it.

- Whereabouts' kubernetes datastore takes a `coordination.k8s.io/v1` Lease (`whereabouts`, in its
  namespace) through client-go's leader election before each allocation.
- Multus writes `k8s.v1.cni.cncf.io/network-status` with a pods/status update (UpdateStatus, a
  protobuf body);
  Kubernetes keeps a pod's labels and annotations on that path (pkg/registry/core/pod/strategy.go,
  podStatusStrategy.PrepareForUpdate resets only the spec and ownerReferences).
"""

from __future__ import annotations

import time
from typing import Any


def test_leases_are_served(kube_api_client: Any) -> None:
    import kubernetes.client

    api = kubernetes.client.CoordinationV1Api(kube_api_client)
    lease = api.create_namespaced_lease("kube-system", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "whereabouts"},
        "spec": {"holderIdentity": "default/pod-a", "leaseDurationSeconds": 2}})
    assert lease.spec.holder_identity == "default/pod-a"
    lease.spec.holder_identity = "default/pod-b"
    updated = api.replace_namespaced_lease("whereabouts", "kube-system", lease)
    assert updated.spec.holder_identity == "default/pod-b"
    assert updated.metadata.resource_version != lease.metadata.resource_version
    groups = {g.name for g in kubernetes.client.ApisApi(kube_api_client).get_api_versions().groups}
    assert "coordination.k8s.io" in groups


def test_pod_status_update_keeps_annotations(kube_api_client: Any) -> None:
    import kubernetes.client

    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    pod = core.read_namespaced_pod("p", "default")
    while pod.status.phase != "Running":  # the simulated kubelet writes the pod once; wait for it
        time.sleep(0.05)
        pod = core.read_namespaced_pod("p", "default")
    pod.metadata.annotations = {"k8s.v1.cni.cncf.io/network-status": "[]"}
    pod.metadata.owner_references = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}]
    pod.spec.containers[0].image = "changed"
    core.replace_namespaced_pod_status("p", "default", pod)
    after = core.read_namespaced_pod("p", "default")
    assert after.metadata.annotations == {"k8s.v1.cni.cncf.io/network-status": "[]"}
    assert not after.metadata.owner_references  # not changeable through pods/status
    assert after.spec.containers[0].image == "busybox"  # nor the spec


def test_json_patch_test_of_a_missing_member_against_null() -> None:
    """Whereabouts guards each new allocation with `test <path> == null` (evanphx/json-patch semantics)."""
    import pytest

    from sandbox.kube.apply import json_patch
    from sandbox.kube.status import ApiError

    pool = {"spec": {"allocations": {"1": {"id": "a", "podref": "default/p1"}}}}
    out = json_patch(pool, [{"op": "test", "path": "/spec/allocations/2", "value": None},
                            {"op": "add", "path": "/spec/allocations/2", "value": {"id": "b", "podref": "default/p2"}}])
    assert set(out["spec"]["allocations"]) == {"1", "2"}
    with pytest.raises(ApiError):  # a taken offset fails the guard
        json_patch(pool, [{"op": "test", "path": "/spec/allocations/1", "value": None}])
    with pytest.raises(ApiError):  # the parent must exist
        json_patch(pool, [{"op": "test", "path": "/spec/nothing/1", "value": None}])


def _pb_field(num: int, payload: bytes) -> bytes:
    key, size = (num << 3) | 2, len(payload)
    out = bytearray([key])
    while True:
        b = size & 0x7F
        size >>= 7
        out.append(b | (0x80 if size else 0))
        if not size:
            return bytes(out) + payload


def test_protobuf_pod_metadata_is_decoded() -> None:
    """The envelope and ObjectMeta field numbers of k8s.io/api and apimachinery's generated.proto."""
    from sandbox.kube.protobuf import decode_pod_metadata

    entry = _pb_field(1, b"k8s.v1.cni.cncf.io/network-status") + _pb_field(2, b"[]" * 100)
    meta = (_pb_field(1, b"p1") + _pb_field(3, b"default") + _pb_field(6, b"42") + _pb_field(11, _pb_field(1, b"a")
            + _pb_field(2, b"b")) + _pb_field(12, entry))
    pod = _pb_field(1, meta) + _pb_field(3, b"\x0a\x07Running")
    body = b"k8s\x00" + _pb_field(1, _pb_field(1, b"v1") + _pb_field(2, b"Pod")) + _pb_field(2, pod)
    assert decode_pod_metadata(body) == {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "p1", "namespace": "default", "resourceVersion": "42", "labels": {"a": "b"},
        "annotations": {"k8s.v1.cni.cncf.io/network-status": "[]" * 100}}}
