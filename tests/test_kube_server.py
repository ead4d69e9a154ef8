"""The sandbox Kubernetes API server through the real kubernetes Python client (typed APIs,
watch, dynamic discovery) and raw HTTPS: auth, TLS, CRUD, patches, SSA, CRDs, rollout, faults, CLI."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_kube import make_api_client

NAD_CRD = "network-attachment-definitions.k8s.cni.cncf.io"


def https(server: Any, method: str, path: str, body: Any = None, token: str | None = None,
          content_type: str = "application/json") -> tuple[int, Any]:
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    req = urllib.request.Request(server.url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token != "":
        req.add_header("Authorization", f"Bearer {token or server.token}")
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, _decode(r.read(), r.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read(), e.headers.get("Content-Type", ""))


def _decode(raw: bytes, content_type: str) -> Any:
    """JSON bodies decoded; a plain-text one (an unknown API group's `404 page not found`) as text."""
    if content_type.startswith("text/plain"):
        return raw.decode()
    return json.loads(raw or b"null")


def bundle_crd() -> dict[str, Any]:
    from shared.core.multus import load_bundle

    return next(o for o in load_bundle().objects if o["metadata"]["name"] == NAD_CRD)


def wait_for(fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def test_401_with_a_wrong_token_403_without_one(kube_server: Any) -> None:
    code, body = https(kube_server, "GET", "/api/v1/namespaces", token="wrong")
    assert code == 401
    assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
    code, body = https(kube_server, "GET", "/api/v1/namespaces", token="")  # anonymous, as on Kubernetes
    assert code == 403 and body["reason"] == "Forbidden" and "system:anonymous" in body["message"]
    assert https(kube_server, "GET", "/api/v1/namespaces")[0] == 200


def test_tls_is_verified_against_the_servers_own_ca(kube_server: Any, tmp_path: Path) -> None:
    import kubernetes.client
    import urllib3

    from sandbox.kube import KubeApiServer

    other = KubeApiServer(token="x", nodes=0, name="other")  # another cluster's CA, never started
    client = make_api_client(kube_server, tmp_path, ca_pem=other.ca_pem)
    with pytest.raises((urllib3.exceptions.MaxRetryError, urllib3.exceptions.SSLError,
                        kubernetes.client.exceptions.ApiException)) as e:
        kubernetes.client.CoreV1Api(client).list_namespace()
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    good = make_api_client(kube_server, tmp_path)
    assert {n.metadata.name for n in kubernetes.client.CoreV1Api(good).list_namespace().items} >= {
        "default", "kube-system"}


def test_discovery_and_crd_establishment(kube_server: Any, kube_api_client: Any) -> None:
    import kubernetes.client
    from kubernetes.dynamic import DynamicClient

    code, apis = https(kube_server, "GET", "/apis")
    assert code == 200 and "k8s.cni.cncf.io" not in [g["name"] for g in apis["groups"]]
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    with kube_server.paused():  # the CRD controller waits: what is seen before Established is not a race
        ext.create_custom_resource_definition(bundle_crd())
        crd = ext.read_custom_resource_definition(NAD_CRD)
        conds = {c.type: c.status for c in crd.status.conditions}
        assert conds == {"NamesAccepted": "True"} and crd.status.accepted_names.short_names == ["net-attach-def"]
        assert https(kube_server, "GET", "/apis/k8s.cni.cncf.io/v1")[0] == 404  # not served before Established
    wait_for(lambda: {c.type: c.status for c in ext.read_custom_resource_definition(NAD_CRD).status.conditions}
             .get("Established") == "True")
    code, rl = https(kube_server, "GET", "/apis/k8s.cni.cncf.io/v1")
    assert code == 200
    (res,) = rl["resources"]
    assert res["name"] == "network-attachment-definitions" and res["shortNames"] == ["net-attach-def"]
    assert res["namespaced"] is True and "patch" in res["verbs"]
    dyn = DynamicClient(kube_api_client)
    nads = dyn.resources.get(api_version="k8s.cni.cncf.io/v1", kind="NetworkAttachmentDefinition")
    nads.create(body={"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                      "metadata": {"name": "n1"}, "spec": {"config": "{}"}}, namespace="default")
    assert [i.metadata.name for i in nads.get(namespace="default").items] == ["n1"]
    assert https(kube_server, "GET", "/apis/k8s.cni.cncf.io/v1/namespaces/default/widgets")[0] == 404


def test_custom_resources_are_validated_against_the_crd_schema(kube_server: Any, kube_api_client: Any) -> None:
    import kubernetes.client

    from shared.core.multus import load_bundle

    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    for o in load_bundle().objects:
        if o["kind"] == "CustomResourceDefinition":
            ext.create_custom_resource_definition(o)
    wait_for(lambda: https(kube_server, "GET", "/apis/whereabouts.cni.cncf.io/v1alpha1")[0] == 200)
    wait_for(lambda: https(kube_server, "GET", "/apis/k8s.cni.cncf.io/v1")[0] == 200)
    co = kubernetes.client.CustomObjectsApi(kube_api_client)
    with pytest.raises(kubernetes.client.ApiException) as e:
        co.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", "default", "network-attachment-definitions", {
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "bad"}, "spec": {"config": 42}})
    status = json.loads(e.value.body)
    assert e.value.status == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.config"
    with pytest.raises(kubernetes.client.ApiException) as e:   # required + additionalProperties schema
        co.create_namespaced_custom_object("whereabouts.cni.cncf.io", "v1alpha1", "kube-system", "ippools", {
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"range": "10.0.0.0/24", "allocations": {"1": {"podref": "x"}}}})
    fields = {c["field"] for c in json.loads(e.value.body)["details"]["causes"]}
    assert fields == {"spec.allocations.1.id"}
    ok = co.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", "default", "network-attachment-definitions", {
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "good"}, "spec": {"config": "{}", "unknown": 1}})
    assert ok["spec"] == {"config": "{}"}                       # unknown fields pruned, as Kubernetes does


def test_crud_conflicts_selectors_and_status_bodies(kube_api_client: Any) -> None:
    import kubernetes.client
    from kubernetes.client import ApiException

    core = kubernetes.client.CoreV1Api(kube_api_client)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"team": "x"}},
          "data": {"k": "v"}}
    created = core.create_namespaced_config_map("default", cm)
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", cm)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    core.create_namespaced_config_map("default", {**cm, "metadata": {"name": "b", "labels": {"team": "y"}}})
    assert [c.metadata.name for c in core.list_namespaced_config_map("default", label_selector="team=x").items] == ["a"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(
        "default", label_selector="team in (x,y),team!=x").items] == ["b"]
    assert [c.metadata.name for c in core.list_config_map_for_all_namespaces(
        field_selector="metadata.name=b").items] == ["b"]
    stale = {**cm, "metadata": {"name": "a", "resourceVersion": created.metadata.resource_version}}
    core.replace_namespaced_config_map("a", "default", {**stale, "data": {"k": "v2"}})
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("a", "default", {**stale, "data": {"k": "v3"}})
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"
    rv = core.read_namespaced_config_map("a", "default").metadata.resource_version
    core.replace_namespaced_config_map("a", "default", core.read_namespaced_config_map("a", "default"))
    assert core.read_namespaced_config_map("a", "default").metadata.resource_version == rv  # no-op update
    core.delete_namespaced_config_map("a", "default")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("a", "default")
    assert e.value.status == 404 and json.loads(e.value.body)["message"] == 'configmaps "a" not found'
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("nope", {**cm, "metadata": {"name": "c"}})
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", {**cm, "metadata": {"name": "Not_Valid"}})
    assert e.value.status == 422 and "metadata.name" in json.loads(e.value.body)["message"]


def test_patches_merge_json_and_strategic(kube_server: Any, kube_api_client: Any) -> None:
    server = kube_server
    import kubernetes.client

    apps = kubernetes.client.AppsV1Api(kube_api_client)
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "default"},
          "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
              "containers": [{"name": "one", "image": "i:1"}, {"name": "two", "image": "j:1"}]}}}}
    apps.create_namespaced_daemon_set("default", ds)
    # strategic merge (the client's default for dict bodies): containers merged by name
    apps.patch_namespaced_daemon_set("d", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "two", "image": "j:2"}]}}}})
    got = apps.read_namespaced_daemon_set("d", "default")
    assert [(c.name, c.image) for c in got.spec.template.spec.containers] == [("one", "i:1"), ("two", "j:2")]
    assert got.metadata.generation == 2
    # JSON patch
    apps.patch_namespaced_daemon_set("d", "default", [{"op": "add", "path": "/metadata/labels", "value": {"x": "1"}}])
    assert apps.read_namespaced_daemon_set("d", "default").metadata.labels == {"x": "1"}
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "m"}, "data": {"a": "1", "b": "2"}})
    code, _ = https(server, "PATCH", "/api/v1/namespaces/default/configmaps/m", {"data": {"a": None, "c": "3"}},
                    content_type="application/merge-patch+json")
    assert code == 200 and core.read_namespaced_config_map("m", "default").data == {"b": "2", "c": "3"}
    code, body = https(server, "PATCH", "/api/v1/namespaces/default/configmaps/m", {"data": {}},
                       content_type="text/plain")
    assert code == 415 and body["reason"] == "UnsupportedMediaType"


def test_server_side_apply_ownership(kube_server: Any) -> None:
    def apply(obj: dict, manager: str, force: bool = False) -> tuple[int, Any]:
        q = f"?fieldManager={manager}" + ("&force=true" if force else "")
        return https(kube_server, "PATCH", "/api/v1/namespaces/default/configmaps/s" + q, obj,
                     content_type="application/apply-patch+yaml")

    base = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}}
    code, first = apply({**base, "data": {"a": "1", "b": "2"}}, "m1")
    assert code == 201
    code, again = apply({**base, "data": {"a": "1", "b": "2"}}, "m1")
    assert code == 200 and again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    code, conflict = apply({**base, "data": {"a": "other"}}, "m2")
    assert code == 409 and conflict["reason"] == "Conflict" and "m1" in conflict["message"]
    code, shared = apply({**base, "data": {"a": "1", "c": "3"}}, "m2")      # same value: co-owned
    assert code == 200 and shared["data"] == {"a": "1", "b": "2", "c": "3"}
    code, dropped = apply({**base, "data": {"b": "2"}}, "m1")               # m1 stops applying a
    assert dropped["data"] == {"a": "1", "b": "2", "c": "3"}                 # still owned by m2
    code, dropped = apply({**base, "data": {}}, "m1")                       # m1 drops b: removed
    assert dropped["data"] == {"a": "1", "c": "3"}
    code, forced = apply({**base, "data": {"a": "9"}}, "m1", force=True)
    assert code == 200 and forced["data"]["a"] == "9"
    managers = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert managers["m1"] == {"f:data": {"f:a": {}}} and managers["m2"] == {"f:data": {"f:c": {}}}
    code, missing = https(kube_server, "PATCH", "/api/v1/namespaces/default/configmaps/s", base,
                          content_type="application/apply-patch+yaml")
    assert code == 422 and "fieldManager" in missing["message"]


def test_watch_streams_changes(kube_api_client: Any) -> None:
    import kubernetes.client
    import kubernetes.watch

    core = kubernetes.client.CoreV1Api(kube_api_client)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "w"}, "data": {}})
    core.delete_namespaced_config_map("w", "default")
    events = [(e["type"], e["object"].metadata.name) for e in kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=1)]
    assert events == [("ADDED", "w"), ("DELETED", "w")]


def test_daemonset_rollout_follows_nodes(kube_server: Any, kube_api_client: Any) -> None:
    import kubernetes.client

    apps = kubernetes.client.AppsV1Api(kube_api_client)
    apps.create_namespaced_daemon_set("kube-system", {
        "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    first = apps.read_namespaced_daemon_set_status("d", "kube-system").status
    assert (first.desired_number_scheduled, first.number_ready, first.observed_generation) == (0, 0, None)

    def done(n: int) -> bool:
        st = apps.read_namespaced_daemon_set("d", "kube-system").status
        return st.desired_number_scheduled == n and st.number_available == n and st.updated_number_scheduled == n
    wait_for(lambda: done(2))
    kube_server.add_nodes(["pool-b-1", "pool-b-2"], labels={"cloud.google.com/gke-nodepool": "pool-b"})
    wait_for(lambda: done(4))
    kube_server.remove_nodes(["pool-b-1"])
    wait_for(lambda: done(3))
    node = kubernetes.client.CoreV1Api(kube_api_client).read_node("pool-b-2")
    assert node.metadata.labels["cloud.google.com/gke-nodepool"] == "pool-b"


def test_faults_and_stats_in_process_and_over_http(kube_server: Any) -> None:
    kube_server.stats.reset()
    kube_server.faults.add("GET", r"^/api/v1/namespaces$", 503, times=2)
    assert https(kube_server, "GET", "/api/v1/namespaces")[0] == 503
    assert https(kube_server, "GET", "/api/v1/namespaces")[0] == 503
    assert https(kube_server, "GET", "/api/v1/namespaces")[0] == 200
    assert kube_server.stats.snapshot() == {("GET", "/api/v1/namespaces"): 3}
    code, _ = https(kube_server, "POST", "/sandbox/faults", {"verb": "DELETE", "path": "/configmaps/", "status": 500})
    assert code == 200
    assert https(kube_server, "DELETE", "/api/v1/namespaces/default/configmaps/x")[0] == 500
    assert https(kube_server, "DELETE", "/api/v1/namespaces/default/configmaps/x")[0] == 404
    code, stats = https(kube_server, "GET", "/sandbox/stats")
    assert stats["total"] == 5 and stats["byVerb"] == {"GET": 3, "DELETE": 2}
    assert https(kube_server, "GET", "/sandbox/stats", token="")[0] == 403
    assert https(kube_server, "POST", "/sandbox/faults", {"status": 200})[0] == 400
    code, nodes = https(kube_server, "POST", "/sandbox/nodes", {"add": ["n-x"]})
    assert code == 200 and "n-x" in nodes["nodes"]
    assert https(kube_server, "DELETE", "/sandbox/stats")[1]["total"] == 0


def test_cli_prints_url_writes_kubeconfig_and_stops_on_sigterm(tmp_path: Path) -> None:
    import kubernetes.client
    import kubernetes.config

    kc = tmp_path / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.kube", "--port", "0", "--kubeconfig", str(kc),
                             "--nodes", "3"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:")
        assert proc.stdout.readline().startswith("kubeconfig:")
        assert oct(os.stat(kc).st_mode & 0o777) == "0o600"
        client = kubernetes.config.new_client_from_config(str(kc))
        assert len(kubernetes.client.CoreV1Api(client).list_node().items) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_pods_land_only_on_nodes_their_node_selector_matches(kube_server: Any, kube_api_client: Any) -> None:
    """The scheduler's NodeAffinity filter: `verify`'s peer pod is pinned to another node of the pool
    by the hostname label, and a selector no node matches leaves the pod Pending, Unschedulable."""
    import kubernetes.client

    core = kubernetes.client.CoreV1Api(kube_api_client)
    kube_server.add_nodes(["pool-c-1", "pool-c-2"], labels={"cloud.google.com/gke-nodepool": "pool-c"})

    def pod(name: str, selector: dict[str, str]) -> Any:
        return core.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": {
            "nodeSelector": selector, "containers": [{"name": "c", "image": "i"}]}})

    for i in range(4):
        pod(f"on-pool-{i}", {"cloud.google.com/gke-nodepool": "pool-c"})
    assert {core.read_namespaced_pod(f"on-pool-{i}", "default").spec.node_name for i in range(4)} == \
        {"pool-c-1", "pool-c-2"}
    for i in range(3):
        pod(f"pinned-{i}", {"cloud.google.com/gke-nodepool": "pool-c", "kubernetes.io/hostname": "pool-c-2"})
        assert core.read_namespaced_pod(f"pinned-{i}", "default").spec.node_name == "pool-c-2"
    stuck = pod("nowhere", {"cloud.google.com/gke-nodepool": "no-such-pool"})
    assert stuck.spec.node_name is None
    cond = core.read_namespaced_pod("nowhere", "default").status.conditions[0]
    assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
    assert cond.message == ("0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector. "
                            "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.")


def test_answers_are_not_held_back_by_nagle(kube_server: Any) -> None:
    """Every connection has TCP_NODELAY, as kube-apiserver's (Go) do: a small answer written after
    its headers must not wait for the client's delayed ACK (40 ms per request on Linux)."""
    import socket

    from sandbox.kube.server import _Handler

    seen: list[int] = []
    setup = _Handler.setup

    def spy(handler: Any) -> None:
        setup(handler)
        seen.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    _Handler.setup = spy  # type: ignore[method-assign,assignment]
    try:
        assert https(kube_server, "GET", "/api/v1/namespaces")[0] == 200
    finally:
        _Handler.setup = setup  # type: ignore[method-assign]
    assert seen and all(seen), seen
