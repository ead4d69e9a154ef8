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


def _answers(call: Callable[[], Any]) -> bool:
    """True once `call` succeeds (a Transient answer is the server still starting up; a 403 raises)."""
    from shared.core.errors import Transient

    try:
        call()
    except Transient:
        return False
    return True


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
    # a CRD Established a moment ago may still answer 429 "storage is (re)initializing": wait for it
    wait_kube(lambda: _answers(scoped_kube.list_ippools), timeout=60, poll=0.2)
    scoped_kube.list_pod_refs()
    assert scoped_kube.list("v1", "Node")  # verification places its peer pod on another node of the pool
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


# -- end to end: the functions run as the scoped user -------------------------------------------------------
def _scoped_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory, rbac: Any) -> Iterator[Any]:
    from sandbox.gke.realism import Realism
    from tests.fixtures_stack import start_stack

    stack = start_stack(emulators, tmp_path_factory.mktemp("rbac-stack"), f"rbac_{uuid.uuid4().hex[:6]}_",
                        kube="real", realism=Realism(), controller_rbac=rbac)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def scoped_stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _scoped_stack(emulators, tmp_path_factory, True)


def without_escalate(user: str) -> list[dict[str, Any]]:
    """The opt-in RBAC with one verb fewer: `escalate` on the bundle's ClusterRoles."""
    objects = controller_rbac(user, ["default"])
    rules = objects[0]["rules"]
    rule = next(r for r in rules if "escalate" in r["verbs"])
    rule["verbs"] = [v for v in rule["verbs"] if v != "escalate"]
    return objects


@pytest.fixture
def stack_without_escalate(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _scoped_stack(emulators, tmp_path_factory, without_escalate)


def _opt_in(stack: Any, prefix: str) -> Any:
    from sandbox.gke.scenario import NodePoolSpec
    from tests.fixtures_stack import ref_of

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    stack.gke.create_cluster(name, wait=False, labels={"multus-provisioner": "enabled"},
                             node_pools=(NodePoolSpec("default-pool", node_count=1),))
    return ref_of(stack, name)


def _admin_engine(stack: Any, name: str) -> Any:
    """The operator's client (the kubeconfig's token, system:masters): what a person edits with."""
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    path = f"{stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{name}.yaml"
    return Kube(kconfig.new_client_from_config(config_file=path), timeout=30.0)


def test_the_workflow_passes_with_only_the_scoped_rbac(scoped_stack: Any) -> None:
    from tests.fixtures_stack import direct_store, wait_for, wait_nad, wait_state

    stack, store = scoped_stack, direct_store(scoped_stack)
    ref = _opt_in(stack, "rbac")
    rec = wait_state(store, ref, "READY", 240)  # bundle install, CRDs Established, DaemonSet rolled out
    assert rec.data["rollout"]["complete"] is True
    server = stack.kube_server(ref.cluster)
    assert server.controller_user == SANDBOX_USER and type(server).__name__ == "RealKubeApiServer"
    # every request the functions made came from the scoped user, never from an admin
    users = {e["user"]["username"] for e in map(json.loads, server.audit_log.read_text().splitlines())
             if e.get("user", {}).get("username") not in ("sandbox-operator", "system:apiserver")
             and not e.get("user", {}).get("username", "").startswith(("sandbox:", "system:"))}
    assert users == {SANDBOX_USER}, users

    stack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "data", "range": "172.16.1.0/26",
                                              "verify": True}).encode())
    wait_nad(store, ref, "default", "data", "VERIFIED", 180)  # NAD apply, a verify pod created and deleted

    admin = _admin_engine(stack, ref.cluster)
    admin._call("DELETE", "/api/v1/namespaces/kube-system/configmaps/multus-cni-config")
    stack.publish("reconcile", json.dumps({"cluster": ref.path}).encode())
    wait_for(lambda: admin.get("v1", "ConfigMap", "kube-system", "multus-cni-config"), 120, "ConfigMap restored")

    stack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "data", "action": "delete"}).encode())
    wait_nad(store, ref, "default", "data", "DELETED", 120)
    assert admin.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "data") is None
    denied = [e for e in map(json.loads, server.audit_log.read_text().splitlines())
              if e.get("user", {}).get("username") == SANDBOX_USER
              and (e.get("responseStatus") or {}).get("code") == 403]
    assert denied == [], denied[:3]  # nothing the workflow does needed a right it lacks


def test_one_verb_fewer_fails_the_install_step_naming_the_permission(stack_without_escalate: Any) -> None:
    from tests.fixtures_stack import direct_store, wait_state

    stack, store = stack_without_escalate, direct_store(stack_without_escalate)
    ref = _opt_in(stack, "noesc")
    rec = wait_state(store, ref, "FAILED", 240)
    entries, _ = store.history(ref, page_size=500)
    failed = [h for h in entries if h.get("outcome") == "failed"]
    assert failed and failed[-1]["step"] == "apply-bundle", failed
    message = str(failed[-1].get("message") or failed[-1].get("error") or "")
    print(message)
    assert "multus-role" in message and "escalate" in message, failed[-1]
    assert "multus-role" in str(rec.data.get("lastError") or rec.data), rec.data  # what `status` shows
