"""The typed workflow record and the store's one table of its document fields.

A workflow field is an attribute of `shared.core.records.ClusterWorkflow` and a row of
`shared.adapters.store.CLUSTER_FIELDS`, nothing else: these tests hold the two together (every
attribute has its row, names are unique and camelCase, a full record survives the round trip
through the document unchanged) and keep the document's shape as docs/FIRESTORE.md shows it.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from datetime import UTC, datetime

from shared.adapters.store import CLUSTER_FIELDS, DELETE, workflow_changes, workflow_of
from shared.core.prechecks import Finding
from shared.core.records import (
    ApiEndpoint,
    ClusterState,
    ClusterWorkflow,
    Incarnation,
    LastError,
    NadState,
    NodePoolFacts,
    NodePoolRequest,
    PoolFailureNote,
    RolloutReport,
    StepOutcome,
)

FULL = ClusterWorkflow(
    version="1.30.5-gke.1014001", status="RUNNING", trigger="cluster created",
    findings=(Finding("range-capacity", "warning", "small", "grow it"),), facts_digest="sha256:f",
    attempts=2, releases=3, last_error=LastError("install: boom", "install", "e1", datetime(2026, 1, 2, tzinfo=UTC)),
    busy_since=1700000000.5,
    node_pool=NodePoolFacts("multus-pool", "multus-subnet", "multus-pods", "172.16.1.0/24", 8),
    node_pool_requested=NodePoolRequest("multus-pool", "op-1", "multus-subnet", "multus-pods", 2,
                                        (PoolFailureNote("op-0", "GCE_STOCKOUT", "no capacity"),),
                                        failed_operation="op-0", retry=True, retry_after=1700000100.0,
                                        delete_operation="op-d"),
    bundle_version="v4.2.1-gke.6+abc", rollout=RolloutReport(3, 3, 3, 3, True, "rolled out: 3/3 ready"),
    install_requests=17, api_endpoint=ApiEndpoint("public-ip", "34.41.12.7", "public endpoint"),
    cluster_id="123", create_time="2026-01-01T00:00:00Z", incarnation=2,
    previous_incarnations=(Incarnation("122", "2025-12-01T00:00:00Z", "DELETED"),),
    new_incarnation_end="DELETED", pool_usage={"apps~data": 80}, stale_allocations=1)


def test_every_workflow_attribute_has_exactly_one_row() -> None:
    attrs = [f.name for f in fields(ClusterWorkflow)]
    rows = [f.attr for f in CLUSTER_FIELDS]
    assert sorted(rows) == sorted(attrs), "an attribute without a row (or a row without an attribute)"
    names = [f.name for f in CLUSTER_FIELDS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", n) for n in names), names
    assert not {"state", "stateSince", "createdAt", "updatedAt", "lease", "path"} & set(names)


def test_a_full_record_survives_the_document() -> None:
    doc = workflow_changes(ClusterWorkflow().update(FULL))
    assert all(f.name in doc for f in CLUSTER_FIELDS)
    assert workflow_of(doc) == FULL


def test_the_document_keeps_its_console_shape() -> None:
    doc = workflow_changes(ClusterWorkflow().update(FULL))
    assert doc["nodePool"] == {"name": "multus-pool", "subnetwork": "multus-subnet",
                               "secondaryPodRange": "multus-pods", "cidr": "172.16.1.0/24", "maxPodsPerNode": 8,
                               "interface": "eth1"}
    assert doc["lastError"] == {"message": "install: boom", "step": "install", "eventId": "e1",
                                "at": datetime(2026, 1, 2, tzinfo=UTC)}
    assert doc["findings"] == [{"id": "range-capacity", "severity": "warning", "message": "small", "fix": "grow it"}]
    assert doc["newIncarnation"] == {"endState": "DELETED"}
    assert doc["nodePoolRequested"]["failures"] == [{"operation": "op-0", "reason": "GCE_STOCKOUT",
                                                     "message": "no capacity"}]
    fresh = workflow_changes(ClusterWorkflow().update(replace(FULL, node_pool_requested=NodePoolRequest("p"))))
    assert set(fresh["nodePoolRequested"]) == {"name", "operation", "subnetwork", "secondaryPodRange", "attempt",
                                               "failures"}, "unset optional keys stay out of the map"


def test_an_update_writes_what_changed_and_removes_what_became_none() -> None:
    changes = workflow_changes(FULL.update(replace(FULL, busy_since=None, attempts=0, last_error=None)))
    assert changes == {"busySince": DELETE, "attempts": 0, "lastError": None}
    assert workflow_changes(FULL.update(FULL)) == {}


def test_malformed_documents_read_as_defaults() -> None:
    odd = workflow_of({"attempts": "3", "nodePool": "x", "busySince": True, "findings": [1, {"id": "a"}],
                       "rollout": None})
    assert odd.attempts == 0 and odd.node_pool is None and odd.busy_since is None and odd.rollout is None
    assert odd.findings == (Finding("a", "", "", ""),)


def test_states_and_outcomes_are_the_words_people_read() -> None:
    assert ClusterState.READY == "READY" and f"{ClusterState.READY}" == "READY"
    assert NadState.APPLIED == "APPLIED" and StepOutcome.OK == "ok"
