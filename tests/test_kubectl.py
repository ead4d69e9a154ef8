"""kubectl (the oldest and the newest on the machine image) against the sandbox API server:
server-side and client-side apply of the bundle, waits over watch, gets, deletes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.core.multus import load_bundle

SDK_BIN = Path("/usr/lib/google-cloud-sdk/bin")
VERSIONS = ("1.27", "1.33")
NAD_YAML = """\
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: my-nad
  namespace: default
spec:
  config: '{"cniVersion": "0.3.1", "name": "my-nad", "plugins": [{"type": "ipvlan", "master": "eth1",
    "mode": "l2", "ipam": {"type": "whereabouts", "range": "172.16.1.0/24"}}]}'
"""


@pytest.fixture(params=VERSIONS)
def kubectl(request: Any, kube_server: Any, tmp_path: Path):
    binary = SDK_BIN / f"kubectl.{request.param}"
    assert binary.exists(), f"{binary} is part of this project's machine image"
    kubeconfig = kube_server.write_kubeconfig(tmp_path / "kubeconfig")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": kubeconfig}

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([str(binary), *args], env=env, input=input, capture_output=True, text=True,
                           timeout=60)
        if check:
            assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
        return p
    return run


def resource_versions(server: Any) -> dict[tuple[str, ...], str]:
    out = {}
    for o in load_bundle().objects:
        rt = server.api.find_kind(o["apiVersion"], o["kind"])
        obj = server.store.get(server.api.key(rt, o["metadata"].get("namespace"), o["metadata"]["name"]))
        out[(o["kind"], o["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
    return out


def test_server_side_apply_bundle_twice_then_nads(kubectl: Any, kube_server: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(load_bundle().to_yaml())
    kube_server.stats.reset()
    out = kubectl("apply", "--server-side", "-f", str(bundle)).stdout.splitlines()
    assert len(out) == 10 and all(line.endswith(" serverside-applied") for line in out)
    assert kube_server.stats.by_verb()["PATCH"] == 10       # plus kubectl's discovery GETs
    kubectl("wait", "--for", "condition=Established", "crd/network-attachment-definitions.k8s.cni.cncf.io",
            "--timeout=20s")
    kubectl("rollout", "status", "ds/gke-multinet", "-n", "kube-system", "--timeout=30s")
    ds = kubectl("get", "ds", "-n", "kube-system").stdout
    assert "gke-multinet" in ds
    status = json.loads(kubectl("get", "ds", "gke-multinet", "-n", "kube-system", "-o", "json").stdout)["status"]
    assert status["numberAvailable"] == status["desiredNumberScheduled"] == 2

    before = resource_versions(kube_server)
    again = kubectl("apply", "--server-side", "-f", str(bundle)).stdout.splitlines()
    assert len(again) == 10
    assert resource_versions(kube_server) == before            # nothing written the second time

    nad = tmp_path / "nad.yaml"
    nad.write_text(NAD_YAML)
    assert "created" in kubectl("apply", "-f", str(nad)).stdout
    assert "unchanged" in kubectl("apply", "-f", str(nad)).stdout
    listed = kubectl("get", "net-attach-def", "-A").stdout
    assert "default" in listed and "my-nad" in listed
    assert "deleted" in kubectl("delete", "-f", str(nad)).stdout
    gone = kubectl("get", "net-attach-def", "my-nad", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_client_side_apply_bundle_twice_reports_unchanged(kubectl: Any, kube_server: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(load_bundle().to_yaml())
    first = kubectl("apply", "-f", str(bundle)).stdout.splitlines()
    assert len(first) == 10 and all(line.endswith(" created") for line in first)
    kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=20s")
    before = resource_versions(kube_server)
    second = kubectl("apply", "-f", str(bundle)).stdout.splitlines()
    assert all(line.endswith(" unchanged") for line in second)
    assert resource_versions(kube_server) == before


def test_errors_reach_kubectl_as_kubernetes_reports_them(kubectl: Any, kube_server: Any) -> None:
    missing = kubectl("get", "configmap", "nope", "-n", "default", check=False)
    assert missing.returncode != 0 and 'configmaps "nope" not found' in missing.stderr
    unknown = kubectl("get", "net-attach-def", check=False)             # CRD not installed
    assert unknown.returncode != 0 and "net-attach-def" in unknown.stderr
    kube_server.faults.add("GET", r"/configmaps", 403, message="forbidden by the test")
    denied = kubectl("get", "configmaps", "-n", "default", check=False)
    assert denied.returncode != 0 and "forbidden by the test" in denied.stderr
