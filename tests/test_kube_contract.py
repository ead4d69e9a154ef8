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
