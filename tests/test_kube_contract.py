"""The cluster API port's contract: every test runs on the in-memory `FakeKube` (tests/fakes.py) and
on the real adapter (`shared.adapters.kube.Kube`) against the sandbox Kubernetes API server, so
the fake the flow tests use keeps the adapter's answers (apply results, the managed-NAD list,
deletes, refusals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.core.errors import Rejected
from shared.core.multus import load_bundle
from shared.core.nad import nad_object
from tests.fakes import FakeKube

CLUSTER = "projects/p/locations/us-central1/clusters/c"


@pytest.fixture(params=["fake", "sandbox"])
def api(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The fake, or the real adapter on the sandbox API server (tests/fixtures_kube.py's `kube`)."""
    if request.param == "fake":
        yield FakeKube()
        return
    yield request.getfixturevalue("kube")


@pytest.fixture
def with_nad_crd(api: Any) -> Any:
    """The NetworkAttachmentDefinition CRD installed and Established (as the bundle does it)."""
    bundle = load_bundle()
    crd = [o for o in bundle.objects if o["kind"] == "CustomResourceDefinition"
           and o["metadata"]["name"].startswith("network-attachment-definitions")]
    api.apply(crd)
    api.wait_established([crd[0]["metadata"]["name"]], timeout=10, poll=0.05)
    return api


def _config_map(data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": "default"},
            "data": data}


def test_apply_says_whether_it_changed_the_object(api: Any) -> None:
    (first,) = api.apply([_config_map({"a": "1"})])
    assert first.changed and first.key == ("v1", "ConfigMap", "default", "probe") and first.resource_version
    (again,) = api.apply([_config_map({"a": "1"})])
    assert not again.changed and again.resource_version == first.resource_version
    (other,) = api.apply([_config_map({"a": "2"})])
    assert other.changed and other.resource_version != first.resource_version
    got = api.get("v1", "ConfigMap", "default", "probe")
    assert got is not None and got["data"] == {"a": "2"}
    assert api.get("v1", "ConfigMap", "default", "absent") is None


def test_managed_nads_are_listed_applied_and_deleted(with_nad_crd: Any) -> None:
    kube = with_nad_crd
    ours = nad_object(CLUSTER, "default", "ours", '{"cniVersion":"0.3.1"}', "req-1")
    theirs = {**nad_object(CLUSTER, "default", "theirs", "{}"),
              "metadata": {"name": "theirs", "namespace": "default"}}
    assert kube.apply_nad(ours).changed
    assert not kube.apply_nad(ours).changed
    kube.apply([theirs])
    listed = kube.list_managed_nads()
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed] == [("default", "ours")]
    assert listed[0]["spec"]["config"] == '{"cniVersion":"0.3.1"}'
    assert kube.delete_nad("default", "ours") is True
    assert kube.delete_nad("default", "ours") is False
    assert kube.list_managed_nads() == []


def test_a_list_of_every_nad_stands_for_the_apply_s_ownership_get(with_nad_crd: Any) -> None:
    """`list_nads` has everyone's NADs; what it found under a name, handed to `apply_nad` as
    `Listed`, replaces the apply's GET: the same refusal of someone else's NAD, one request less."""
    from shared.core.errors import NotOurs
    from shared.core.observed import Listed

    kube = with_nad_crd
    ours = nad_object(CLUSTER, "default", "ours", '{"cniVersion":"0.3.1"}', "req-1")
    theirs = {**nad_object(CLUSTER, "default", "theirs", "{}"), "metadata": {"name": "theirs", "namespace": "default"}}
    kube.apply([theirs])
    listed = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in kube.list_nads()}
    assert set(listed) == {("default", "theirs")}
    before = kube.requests
    assert kube.apply_nad(ours, listed=Listed(None)).changed
    assert kube.requests - before == 1
    again = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in kube.list_nads()}
    assert set(again) == {("default", "ours"), ("default", "theirs")}
    assert not kube.apply_nad(ours, listed=Listed(again[("default", "ours")])).changed
    with pytest.raises(NotOurs):
        kube.apply_nad({**theirs, "metadata": nad_object(CLUSTER, "default", "theirs", "{}")["metadata"]},
                       listed=Listed(again[("default", "theirs")]))
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "theirs")["spec"]["config"] == "{}"


def test_apply_nad_refuses_any_other_kind(api: Any) -> None:
    with pytest.raises(Rejected) as info:
        api.apply_nad(_config_map({}))
    assert info.value.problems[0].field == "kind"


def test_requests_are_counted(api: Any) -> None:
    before = api.requests
    api.apply([_config_map({"a": "1"}), _config_map({"a": "1"})])
    assert api.requests - before == 2


def test_rollout_of_reads_a_daemonset_status(api: Any) -> None:
    ds = {"metadata": {"generation": 2},
          "status": {"desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3,
                     "numberAvailable": 3, "observedGeneration": 2}}
    rollout = api.rollout_of(ds)
    assert rollout.complete and (rollout.desired, rollout.available) == (3, 3)
    assert not api.rollout_of({**ds, "status": {**ds["status"], "observedGeneration": 1}}).complete


def test_list_returns_every_object_of_a_kind_in_a_namespace(api: Any) -> None:
    api.apply([_config_map({"a": "1"}),
               {**_config_map({"b": "2"}), "metadata": {"name": "probe-2", "namespace": "default"}},
               {**_config_map({"c": "3"}), "metadata": {"name": "probe", "namespace": "kube-system"}}])
    before = api.requests
    names = {o["metadata"]["name"] for o in api.list("v1", "ConfigMap", "default")}
    assert api.requests - before == 1
    assert {"probe", "probe-2"} <= names
    in_kube_system = api.list("v1", "ConfigMap", "kube-system")
    assert any(o["metadata"]["name"] == "probe" and o["data"] == {"c": "3"} for o in in_kube_system)
    assert all(o["metadata"]["namespace"] == "kube-system" for o in in_kube_system)


def test_the_fakes_have_their_ports_methods() -> None:
    """Every method of each port exists on its fake and its adapter, with the port's parameters."""
    import inspect

    from shared.adapters.datapath import HttpDataPath, NoDataPath
    from shared.adapters.gke import Gke
    from shared.adapters.idtoken import IdTokenVerifier
    from shared.adapters.kube import Kube
    from shared.adapters.pubsub import Publisher
    from shared.ports import ClusterApiPort, DataPathPort, GkePort, IdentityPort, PublisherPort
    from tests.fakes import FakeDataPath, FakeGke, FakeIdentity, FakePublisher

    for port, impls in ((ClusterApiPort, (FakeKube, Kube)), (GkePort, (FakeGke, Gke)),
                        (PublisherPort, (FakePublisher, Publisher)), (IdentityPort, (FakeIdentity, IdTokenVerifier)),
                        (DataPathPort, (FakeDataPath, HttpDataPath, NoDataPath))):
        methods = [n for n, v in vars(port).items() if callable(v) and not n.startswith("_")]
        assert methods, port
        for name in methods:
            want = inspect.signature(getattr(port, name)).parameters
            for impl in impls:
                assert hasattr(impl, name), f"{impl.__name__} lacks {name}"
                have = inspect.signature(getattr(impl, name)).parameters
                for param, spec in want.items():
                    if param == "self":  # a staticmethod (Kube.rollout_of) answers the same call
                        continue
                    assert param in have, f"{impl.__name__}.{name} lacks {param}"
                    assert (have[param].kind, have[param].default) == (spec.kind, spec.default), (impl, name, param)
