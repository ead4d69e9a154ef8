"""What Multus and Whereabouts ask of the sandbox API server, as real Kubernetes answers it.

- Whereabouts' kubernetes datastore takes a `coordination.k8s.io/v1` Lease (`whereabouts`, in its
  namespace) through client-go's leader election before each allocation.
- Multus writes `k8s.v1.cni.cncf.io/network-status` with a pods/status update (UpdateStatus);
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
