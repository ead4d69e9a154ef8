"""The GKE port's contract: every test runs on `FakeGke` (tests/fakes.py), seeded from the default
sandbox scenario, and on the real adapter (`shared.adapters.gke.Gke`) against the sandbox GKE
server on that same scenario, so the fake the flow tests use answers as the adapter does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.gke.scenario import DEFAULT_SCENARIO
from shared.core.errors import NotFound, Permanent, Rejected
from shared.core.refs import ClusterRef
from shared.core.settings import NodePoolTemplate
from tests.fakes import FakeGke

LEGACY = ClusterRef.of("multus-sandbox", "us-central1", "demo-legacy")
GONE = ClusterRef.of("multus-sandbox", "us-central1", "never-created")
TEMPLATE = NodePoolTemplate(name="multus-pool", network="multus-vpc", subnetwork="multus-subnet",
                            secondary_pod_range="multus-pods")


@pytest.fixture(params=["fake", "sandbox"])
def gke_port(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fake":
        fake = FakeGke()
        fake.seed(DEFAULT_SCENARIO)
        yield fake
        return
    yield request.getfixturevalue("gke")


def test_get_cluster_and_not_found(gke_port: Any) -> None:
    cluster = gke_port.get_cluster(LEGACY)
    assert cluster.name == "demo-legacy" and [p.name for p in cluster.node_pools] == ["default-pool"]
    with pytest.raises(NotFound):
        gke_port.get_cluster(GONE)


def test_list_clusters_of_the_project(gke_port: Any) -> None:
    assert [c.name for c in gke_port.list_clusters("multus-sandbox")] == ["demo-legacy"]


def test_secondary_range_cidr(gke_port: Any) -> None:
    assert gke_port.secondary_range_cidr(LEGACY, "multus-subnet", "multus-pods") == "172.16.1.0/24"
    with pytest.raises(Permanent):
        gke_port.secondary_range_cidr(LEGACY, "multus-subnet", "no-such-range")


def test_a_template_is_checked_before_gke_is_asked(gke_port: Any) -> None:
    with pytest.raises(Rejected) as info:
        gke_port.create_node_pool(LEGACY, NodePoolTemplate(name="Bad_Name"))
    assert info.value.reason == "invalid node pool template"
    assert gke_port.delete_node_pool(LEGACY, "no-such-pool") is None


def test_additional_networks_need_multi_networking(gke_port: Any) -> None:
    with pytest.raises(Permanent) as info:
        gke_port.create_node_pool(LEGACY, TEMPLATE)
    assert info.value.code == "INVALID_ARGUMENT" and "multi-networking" in str(info.value)


def test_endpoint_of_a_cluster(gke_port: Any) -> None:
    endpoint = gke_port.endpoint(gke_port.get_cluster(LEGACY))
    assert endpoint.kind and endpoint.address and endpoint.why
