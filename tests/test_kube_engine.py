"""The server-side apply engine (shared/adapters/kube.py) against the sandbox API server, through the real
kubernetes client's REST layer: install, idempotence, NADs, pods, error mapping."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from shared.adapters.kube import FIELD_MANAGER, Kube, Rollout
from shared.core.errors import Permanent, Rejected, Transient
from shared.core.multus import load_bundle

NAD_RANGE = "172.16.1.0/24"


def nad(name: str, namespace: str = "default", *, rng: str = NAD_RANGE, **ipam: Any) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "name": name, "plugins": [
        {"type": "ipvlan", "master": "eth1", "mode": "l2", "ipam": {"type": "whereabouts", "range": rng, **ipam}}]}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "multus-provisioner"},
                         "annotations": {"multus-provisioner.io/cluster": "projects/p/locations/l/clusters/c"}},
            "spec": {"config": json.dumps(config)}}


def pod(name: str, networks: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}


def wait_for(fn, timeout: float = 5.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value {value!r}")
        time.sleep(poll)


def install(kube: Kube) -> None:
    b = load_bundle()
    kube.apply(b.objects)
    kube.wait_established(b.crd_names, timeout=5, poll=0.05)
    wait_for(lambda: kube.daemonset_rollout(*b.daemonset).complete)


def test_install_bundle_then_reapply_changes_nothing(kube: Kube, kube_server: Any) -> None:
    b = load_bundle()
    first = kube.apply(b.objects)
    assert kube.requests == len(b.objects) == 10          # one request per object, no discovery
    assert all(r.changed for r in first)
    assert [r.key[1] for r in first] == [o["kind"] for o in b.objects]  # bundle order kept
    polls = kube.wait_established(b.crd_names, timeout=5, poll=0.05)
    assert polls >= 1
    ns, name = b.daemonset
    seen = [kube.daemonset_rollout(ns, name)]
    while not seen[-1].complete:
        time.sleep(0.03)
        seen.append(kube.daemonset_rollout(ns, name))
        assert len(seen) < 300
    assert seen[-1] == Rollout(desired=2, updated=2, ready=2, available=2, observed=True)
    assert any(not r.complete for r in seen)               # the rollout was observed in progress

    before = {r.key: kube.get(r.key[0], r.key[1], r.key[2] or None, r.key[3]) for r in first}
    kube_server.stats.reset()
    again = kube.apply(b.objects)
    assert kube_server.stats.total == 10 and set(kube_server.stats.by_verb()) == {"PATCH"}
    assert not any(r.changed for r in again)
    for r in again:
        assert r.resource_version == before[r.key]["metadata"]["resourceVersion"], r.key
    # A fresh engine (a new function invocation) writes nothing either.
    fresh = Kube(kube._client)
    assert all(r.resource_version == before[r.key]["metadata"]["resourceVersion"] for r in fresh.apply(b.objects))
    mf = before[("v1", "ConfigMap", "kube-system", "multus-cni-config")]["metadata"]["managedFields"]
    assert [(m["manager"], m["operation"]) for m in mf] == [(FIELD_MANAGER, "Apply")]


def test_changed_object_is_reported_and_dropped_fields_removed(kube: Kube) -> None:
    b = load_bundle()
    cm = next(o for o in b.objects if o["kind"] == "ConfigMap")
    kube.apply([cm])
    edited = json.loads(json.dumps(cm))
    edited["metadata"]["labels"] = {"app": "gke-multinet", "extra": "yes"}
    (r,) = kube.apply([edited])
    assert r.changed
    assert kube.get("v1", "ConfigMap", "kube-system", "multus-cni-config")["metadata"]["labels"]["extra"] == "yes"
    (r,) = kube.apply([cm])                                 # the manager stops applying `extra`
    assert r.changed
    assert "extra" not in kube.get("v1", "ConfigMap", "kube-system", "multus-cni-config")["metadata"]["labels"]


def test_nad_apply_update_list_delete_check_ownership_then_write_once(kube: Kube) -> None:
    """Each NAD write is one GET (is it the controller's? issue 24) and one PATCH or DELETE."""
    from shared.core.errors import NotOurs

    install(kube)
    n0 = kube.requests
    r = kube.apply_nad(nad("my-nad"))
    assert kube.requests == n0 + 2 and r.changed and r.key == (
        "k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "my-nad")
    same = kube.apply_nad(nad("my-nad"))
    assert not same.changed and same.resource_version == r.resource_version
    updated = kube.apply_nad(nad("my-nad", rng="172.16.2.0/24"))
    assert updated.changed and int(updated.resource_version) > int(r.resource_version)
    got = kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "my-nad")
    assert "172.16.2.0/24" in got["spec"]["config"]
    unmanaged = nad("theirs")
    del unmanaged["metadata"]["labels"]
    kube.apply_nad(unmanaged)
    assert [o["metadata"]["name"] for o in kube.list_managed_nads()] == ["my-nad"]
    with pytest.raises(NotOurs):  # someone else's now: neither taken over nor deleted
        kube.apply_nad(nad("theirs"))
    with pytest.raises(NotOurs):
        kube.delete_nad("default", "theirs")
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "theirs")
    n0 = kube.requests
    assert kube.delete_nad("default", "my-nad") is True
    assert kube.delete_nad("default", "my-nad") is False
    assert kube.requests == n0 + 3  # GET + DELETE, then a GET that finds nothing
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "my-nad") is None


def test_invalid_nad_is_permanent_422_naming_the_field(kube: Kube) -> None:
    install(kube)
    bad = nad("bad")
    bad["spec"]["config"] = {"not": "a string"}
    with pytest.raises(Permanent) as e:
        kube.apply_nad(bad)
    assert e.value.code == 422 and e.value.api == "kubernetes"
    assert "spec.config" in str(e.value) and "must be of type string" in str(e.value)


def test_nad_before_crd_established_is_permanent_404(kube: Kube) -> None:
    with pytest.raises(Permanent) as e:
        kube.apply_nad(nad("early"))
    assert e.value.code == 404


def test_bad_references_are_rejected_before_any_request(kube: Kube) -> None:
    with pytest.raises(Rejected) as e:
        kube.apply_nad({**nad("x"), "metadata": {"name": "../etc", "namespace": "default"}})
    assert any(p.field == "metadata.name" for p in e.value.problems)
    with pytest.raises(Rejected) as e:
        kube.apply([{"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}}])
    assert e.value.problems[0].field == "objects[0].kind"
    with pytest.raises(Rejected):
        kube.delete_nad("Bad_NS", "x")
    assert kube.requests == 0


def test_wait_established_times_out_naming_the_crds(kube: Kube) -> None:
    with pytest.raises(Transient) as e:
        kube.wait_established(["ippools.whereabouts.cni.cncf.io"], timeout=0.2, poll=0.05)
    assert "ippools.whereabouts.cni.cncf.io" in str(e.value)


@pytest.mark.parametrize(("status", "kind"), [
    (500, Transient), (503, Transient), (429, Transient), (409, Transient),
    (400, Permanent), (401, Permanent), (403, Permanent), (404, Permanent), (422, Permanent)])
def test_error_mapping(kube: Kube, kube_server: Any, status: int, kind: type) -> None:
    kube_server.faults.add("PATCH", r"/configmaps/", status, message=f"boom {status}")
    cm = next(o for o in load_bundle().objects if o["kind"] == "ConfigMap")
    with pytest.raises(kind) as e:
        kube.apply([cm])
    assert e.value.code == status and f"boom {status}" in str(e.value)
    kube.apply([cm])  # the fault was for one request only


def test_timeout_and_connection_errors_are_transient(kube_server: Any, kube_api_client: Any) -> None:
    kube = Kube(kube_api_client, timeout=0.3)
    kube_server.faults.add("GET", r"/daemonsets/", 0, delay=1.0)
    with pytest.raises(Transient):
        kube.daemonset_rollout("kube-system", "gke-multinet")
    kube_server.stop()
    with pytest.raises(Transient):
        kube.get("v1", "ConfigMap", "kube-system", "x")


def test_pod_gets_net1_with_an_ip_in_range(kube: Kube) -> None:
    install(kube)
    kube.apply_nad(nad("my-nad", rng="10.200.1.0/29", range_start="10.200.1.2", exclude=["10.200.1.3/32"]))
    kube.create_pod(pod("p1", "default/my-nad"))
    kube.create_pod(pod("p2", "my-nad"))
    s1 = wait_for(lambda: kube.pod_network_status("default", "p1"))
    s2 = wait_for(lambda: kube.pod_network_status("default", "p2"))
    assert [i["interface"] for i in s1] == ["eth0", "net1"] and s1[0]["default"] is True
    assert s1[1]["name"] == "default/my-nad"
    ips = {s1[1]["ips"][0], s2[1]["ips"][0]}
    assert ips == {"10.200.1.2", "10.200.1.4"}        # range_start honoured, .3 excluded
    assert kube.get_pod("default", "p1")["status"]["phase"] == "Running"
    events = kube.pod_events("default", "p1")
    assert any(e["reason"] == "AddedInterface" and "net1" in e["message"] for e in events)


def test_exhausted_range_and_missing_nad_leave_the_pod_pending_with_an_event(kube: Kube) -> None:
    install(kube)
    kube.apply_nad(nad("tiny", rng="10.9.0.0/30"))                  # two usable addresses
    for i in range(2):
        kube.create_pod(pod(f"ok{i}", "default/tiny"))
    for i in range(2):
        wait_for(lambda i=i: kube.pod_network_status("default", f"ok{i}"))
    kube.create_pod(pod("starved", "default/tiny"))
    ev = wait_for(lambda: [e for e in kube.pod_events("default", "starved")
                           if e["reason"] == "FailedCreatePodSandBox"])
    assert ev[0]["type"] == "Warning" and "Could not allocate IP in range" in ev[0]["message"]
    assert kube.get_pod("default", "starved")["status"]["phase"] == "Pending"
    assert kube.pod_network_status("default", "starved") is None
    assert kube.delete_pod("default", "ok0") is True                 # releases its address
    status = wait_for(lambda: kube.pod_network_status("default", "starved"))
    assert status[1]["ips"] == ["10.9.0.1"]

    kube.create_pod(pod("lost", "default/nowhere"))
    ev = wait_for(lambda: [e for e in kube.pod_events("default", "lost") if e["reason"] == "FailedCreatePodSandBox"])
    assert 'network-attachment-definitions.k8s.cni.cncf.io "nowhere" not found' in ev[0]["message"]
    kube.apply_nad(nad("nowhere", rng="10.8.0.0/24"))
    assert wait_for(lambda: kube.pod_network_status("default", "lost"))[1]["ips"] == ["10.8.0.1"]


def test_without_multus_the_annotation_is_ignored(kube: Kube) -> None:
    kube.create_pod(pod("plain", "default/my-nad"))
    wait_for(lambda: (kube.get_pod("default", "plain") or {}).get("status", {}).get("phase") == "Running")
    assert kube.pod_network_status("default", "plain") is None
    assert kube.get_pod("default", "nope") is None and kube.delete_pod("default", "nope") is False
