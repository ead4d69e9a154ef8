"""Helpers for the tests of the real CNI data path (sandbox.kube.realcni): a sandbox cluster with
the controller's bundle applied, pods placed on named nodes, and waits for states (never for time).
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

NETWORKS = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
POOL_LABEL = "cloud.google.com/gke-nodepool"
CLUSTER = "projects/demo-project/locations/us-central1-a/clusters/real"
CRDS = ("ippools.whereabouts.cni.cncf.io", "overlappingrangeipreservations.whereabouts.cni.cncf.io",
        "network-attachment-definitions.k8s.cni.cncf.io")


def require_netns() -> None:
    """Fail (never skip) with what to do when this machine cannot make network namespaces or guests."""
    import pytest

    from sandbox.kube.uml import GuestError, preflight

    try:
        preflight()
    except GuestError as e:
        pytest.fail(f"the real CNI tests cannot run here: {e}", pytrace=False)


def wait_for(fn: Callable[[], T | None], what: str, limit: float = 120.0) -> T:
    """Poll until `fn` returns something truthy; `limit` only bounds a hang, no margin is relied on."""
    end = time.monotonic() + limit
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Cluster:
    """A started sandbox API server with the bundle applied and its pods' networks on `cni`."""

    def __init__(self, nodes: dict[str, str], real: bool, whereabouts: str = "v0.7.0") -> None:
        from sandbox.kube import KubeApiServer
        from shared.adapters.kube import Kube
        from shared.core.multus import load_bundle
        from tests.fixtures_kube import make_api_client

        self.server = KubeApiServer(token=secrets.token_urlsafe(16), nodes=[], crd_delay=0.05, rollout_delay=0.2,
                                    pod_delay=0.01, name="real" if real else "sim")
        self.server.start()
        self._tmp = tempfile.TemporaryDirectory(prefix="mp-realnet-")
        try:
            for node, pool in nodes.items():
                self.server.add_nodes([node], labels={POOL_LABEL: pool})
            self.client = make_api_client(self.server, Path(self._tmp.name))
            self.kube = Kube(self.client, timeout=30.0)
            self.kube.apply(load_bundle().objects)
            self.kube.wait_established(CRDS, timeout=60, poll=0.05)
            wait_for(self.server.sim.multus_ready, "the Multus DaemonSet to be ready")
            self.cni = self.server.use_real_cni(whereabouts) if real else None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.server.stop()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        self._tmp.cleanup()

    def apply_nad(self, name: str, config: dict[str, Any], namespace: str = "default") -> None:
        self.kube.apply([{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                          "metadata": {"name": name, "namespace": namespace},
                          "spec": {"config": json.dumps(config)}}])

    def start_pod(self, name: str, node: str, networks: str, namespace: str = "default") -> None:
        self.kube.create_pod({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "namespace": namespace, "annotations": {NETWORKS: networks}},
                              "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.kube.get_pod(namespace, name)

    def wait_running(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return wait_for(lambda: (p := self.pod(name, namespace)) and p["status"].get("phase") == "Running" and p,
                        f"pod {namespace}/{name} to run")

    def wait_refused(self, name: str, namespace: str = "default") -> str:
        """The message of the pod's first FailedCreatePodSandBox Event."""
        def failed() -> str | None:
            for e in self.kube.pod_events(namespace, name):
                if e.get("reason") == "FailedCreatePodSandBox":
                    return str(e.get("message", ""))
            return None
        return wait_for(failed, f"pod {namespace}/{name} to fail its sandbox")

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        self.kube.delete_pod(namespace, name)

    def net1(self, pod: dict[str, Any]) -> list[str]:
        status = json.loads((pod["metadata"].get("annotations") or {}).get(NETWORK_STATUS) or "[]")
        return [ip for i in status if i.get("interface") == "net1" for ip in i.get("ips") or []]

    def allocations(self) -> dict[str, dict[str, str]]:
        """IPPool name -> {offset: podref} (what Whereabouts recorded in the cluster)."""
        return {p["metadata"]["name"]: {k: a.get("podref", "") for k, a in
                                        ((p.get("spec") or {}).get("allocations") or {}).items()}
                for p in self.kube.list_ippools()}
