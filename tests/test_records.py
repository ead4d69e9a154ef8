"""The typed workflow record and the store's one table of its document fields.

A workflow field is an attribute of `shared.core.records.ClusterWorkflow` and a row of
`shared.adapters.store.CLUSTER_FIELDS`, nothing else: these tests hold the two together (every
attribute has its row, names are unique and camelCase, a full record survives the round trip
through the document unchanged) and keep the document's shape as docs/FIRESTORE.md shows it.
The NAD record (`NAD_FIELDS`) and the fleet's rollout (`ROLLOUT_FIELDS`) are held the same way.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from datetime import UTC, datetime

from shared.adapters.store import (
    CLUSTER_FIELDS,
    DELETE,
    NAD_FIELDS,
    ROLLOUT_FIELDS,
    nad_changes,
    nad_of,
    nad_view,
    rollout_changes,
    rollout_doc,
    rollout_of,
    workflow_changes,
    workflow_of,
)
from shared.core.prechecks import Finding
from shared.core.records import (
    Adoption,
    ApiEndpoint,
    AppliedNad,
    BundleOptions,
    ClusterState,
    ClusterWorkflow,
    FleetRollout,
    Incarnation,
    LastError,
    LastRequest,
    NadClaim,
    NadRecord,
    NadState,
    NodePoolFacts,
    NodePoolRequest,
    OrphanNote,
    PoolFailureNote,
    PrunedNote,
    RolloutCluster,
    RolloutReport,
    RolloutState,
    StepOutcome,
    VerificationNote,
    VerifyPodMarker,
    Wave,
    WaveClusterState,
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


# --------------------------------------------------------------------------- the NAD record
#
# A NAD field is an attribute of `NadRecord` and a row of `NAD_FIELDS`, nothing else: the store
# writes a change by the table (`nad_changes`) and reads a document by it (`nad_of`).

_NAD_OWN = {"namespace", "name", "updated_at", "data"}  # the identity, and what the store keeps itself
_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_BODY = {"cluster": "projects/p/locations/l/clusters/c", "namespace": "apps", "name": "net", "range": "10.0.0.0/28",
         "master": "eth1", "verify": True}


def _full_nad() -> NadRecord:
    """Every attribute set to a value other than its default (so a missing row shows)."""
    return NadRecord(
        "apps", "net", state=NadState.VERIFIED, message="applied", range="10.0.0.0/28", master="eth1",
        applied=AppliedNad("10.0.0.0/28", "eth1", "sha256:c", "r1", "m1", "VERIFIED", _AT, "a@example.com"),
        config='{"cniVersion":"0.3.1"}', request=_BODY, request_id="r1", mode="l2", action="apply",
        last_request=LastRequest("apply", "REJECTED", ("overlaps",), "r2", "m2", "e2", "10.0.0.16/28", "eth1",
                                 "sha256:d", {**_BODY, "range": "10.0.0.16/28"}, _AT, "b@example.com"),
        reasons=("overlaps",), last_error="boom", claim_order="0001~ab",
        claim=NadClaim("apply", "10.0.0.0/28", "eth1", "ledger", "e1", "r1", "PENDING", "h1", True, "timeout"),
        claim_refused="overlaps x", adopted=Adoption(_AT, "reconcile"), orphan=OrphanNote("overlaps y", _AT),
        pruned=PrunedNote("{}", _AT, "overlaps z"), verification=VerificationNote(True, "net1 got 10.0.0.2"),
        resource_version="7", verify_pod=VerifyPodMarker(1700000000, "mp-verify-net-1", "apps"),
        request_excerpt="{...}")


def _document(rec: NadRecord) -> dict[str, object]:
    """The document a new record is created as (what the store writes, DELETEs left out)."""
    return {k: v for k, v in nad_changes(NadRecord(rec.namespace, rec.name), rec).items() if v is not DELETE}


def test_every_nad_attribute_has_exactly_one_row() -> None:
    attrs = [f.attr for f in NAD_FIELDS]
    names = [f.name for f in NAD_FIELDS]
    assert sorted(attrs) == sorted(f.name for f in fields(NadRecord) if f.name not in _NAD_OWN)
    assert len(set(attrs)) == len(attrs) and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", n) for n in names), names
    full = _full_nad()
    assert all(getattr(full, f.name) != f.default for f in fields(NadRecord) if f.name not in _NAD_OWN)


def test_a_full_nad_record_survives_the_document() -> None:
    full = _full_nad()
    doc = _document(full)
    assert set(doc) == {f.name for f in NAD_FIELDS}
    assert nad_of("apps", "net", nad_view(doc)) == full  # read back whole, the request put back in its place
    # its request is held once: the last request keeps its own body only when it differs
    same = replace(full, last_request=replace(full.last_request, request=_BODY))  # type: ignore[arg-type]
    once = _document(same)
    assert "request" not in once["lastRequest"] and nad_of("apps", "net", nad_view(once)) == same  # type: ignore


def test_nad_documents_of_the_present_shape_read_whole() -> None:
    """A document as docs/FIRESTORE.md describes it (and as tests/test_store_contract.py writes it)."""
    doc = {"namespace": "apps", "name": "net", "clusterPath": "projects/p/locations/l/clusters/c", "state": "APPLIED",
           "stateSince": _AT, "createdAt": _AT, "updatedAt": _AT, "message": "apps/net applied with range 10.0.0.0/28",
           "applied": {"range": "10.0.0.0/28", "master": "eth1", "configDigest": "sha256:c", "requestId": None,
                       "messageId": "m1", "state": "APPLIED", "at": _AT},
           "range": "10.0.0.0/28", "master": "eth1", "config": "{}", "request": _BODY, "requestId": None,
           "mode": "l2", "action": "apply", "resourceVersion": "3",
           "lastRequest": {"action": "apply", "state": "APPLIED", "reasons": [], "requestId": None, "messageId": "m1",
                           "eventId": "m1", "range": "10.0.0.0/28", "master": "eth1", "digest": "sha256:d",
                           "at": _AT},
           "verifyPod": {"until": 1700000000}}
    rec = nad_of("apps", "net", nad_view(doc))
    assert rec.state == NadState.APPLIED and rec.updated_at == _AT and rec.data["clusterPath"] == doc["clusterPath"]
    assert rec.applied == AppliedNad("10.0.0.0/28", "eth1", "sha256:c", None, "m1", "APPLIED", _AT)
    assert rec.last_request is not None and rec.last_request.request == _BODY  # the top-level request
    assert rec.verify_pod == VerifyPodMarker(1700000000) and rec.claim is None and rec.reasons is None
    # nothing changed, nothing written; a change writes its own fields only
    assert nad_changes(rec, rec) == {}
    moved = replace(rec, state=NadState.VERIFIED, verify_pod=None)
    assert nad_changes(rec, moved) == {"state": "VERIFIED", "verifyPod": DELETE}
    # a record written before `applied` existed reads as what it was (decisions.applied_part reads it by state)
    legacy = nad_of("apps", "old", {"state": "VERIFIED", "range": "10.0.0.0/28", "master": "eth2"})
    assert legacy.applied is None and legacy.range == "10.0.0.0/28" and legacy.state == NadState.VERIFIED
    # malformed or unknown values read as the defaults
    odd = nad_of("apps", "odd", {"state": "SOMETHING", "applied": "x", "reasons": "no", "claim": 3})
    assert odd == NadRecord("apps", "odd")


# --------------------------------------------------------------------------- the fleet's rollout
#
# A rollout field is an attribute of `FleetRollout` and a row of `ROLLOUT_FIELDS`, nothing else:
# the store writes the record through the table (`rollout_changes`) and reads it back by it (`rollout_of`).

_NOW = "2026-03-01T12:00:00+00:00"


def _full_rollout() -> FleetRollout:
    """Every attribute set to a value other than its default (so a missing row shows)."""
    return FleetRollout(
        state=RolloutState.HALTED,
        target=BundleOptions("v2+abc", "gcr.io/gke-release/multus@sha256:2", "gcr.io/gke-release/wa@sha256:2", "debug"),
        previous=BundleOptions("v1+abc", "gcr.io/gke-release/multus@sha256:1", None, None),
        waves=(Wave("canary", ("p~l~a",)), Wave("wave 1", ("p~l~b", "p~l~c"))), wave=1,
        clusters={"p~l~a": RolloutCluster("projects/p/locations/l/clusters/a", 0, WaveClusterState.PASSED, _NOW,
                                          "DaemonSet rolled out (3/3); net1 got 10.0.0.2", 1772366400.5),
                  "p~l~b": RolloutCluster("projects/p/locations/l/clusters/b", 1, WaveClusterState.ROLLED_BACK, _NOW,
                                          "ImagePullBackOff; rolled back to v1+abc", 1772366460.0),
                  "p~l~c": RolloutCluster("projects/p/locations/l/clusters/c", 1, WaveClusterState.WAITING, _NOW)},
        reason="projects/p/locations/l/clusters/b failed the health gate", halted_cluster="p~l~b",
        started_at=_NOW, started_by="tick-1", updated_at=_NOW, finished_at=_NOW, resumed_at=_NOW, wave_size="25%",
        canary=1)


def test_every_rollout_attribute_has_exactly_one_row() -> None:
    attrs = [f.attr for f in ROLLOUT_FIELDS]
    names = [f.name for f in ROLLOUT_FIELDS]
    assert sorted(attrs) == sorted(f.name for f in fields(FleetRollout))
    assert len(set(attrs)) == len(attrs) and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", n) for n in names), names
    full, empty = _full_rollout(), FleetRollout()
    assert all(getattr(full, f.name) != getattr(empty, f.name) for f in fields(FleetRollout))


def test_a_full_rollout_survives_the_document() -> None:
    full = _full_rollout()
    doc = rollout_doc(full)
    assert set(doc) == {f.name for f in ROLLOUT_FIELDS}
    assert rollout_of(doc) == full
    assert rollout_of(rollout_doc(FleetRollout())) == FleetRollout()
    # written whole: an attribute that is None removes its field
    changes = rollout_changes(replace(full, resumed_at=None, wave_size=None, canary=None))
    assert changes["resumedAt"] is DELETE and changes["waveSize"] is DELETE and changes["canary"] is DELETE
    assert changes["clusters"] == doc["clusters"] and changes["state"] == "HALTED"


def test_rollout_documents_of_the_present_shape_read_whole() -> None:
    """A document as docs/FIRESTORE.md and docs/WORKFLOW.md describe it (as the flow wrote it before
    the record was typed): it reads as the record, and the record writes it back unchanged."""
    doc = {"state": "RUNNING", "startedAt": _NOW, "updatedAt": _NOW, "startedBy": "tick-1", "reason": "",
           "haltedCluster": "", "finishedAt": "", "waveSize": "1", "canary": 1, "wave": 0,
           "target": {"multusImage": "gcr.io/gke-release/multus@sha256:2", "whereaboutsImage": None,
                      "logLevel": None, "version": "v2+abc"},
           "previous": {"multusImage": None, "whereaboutsImage": None, "logLevel": None, "version": "v1+abc"},
           "waves": [{"name": "canary", "clusters": ["p~l~a"]}, {"name": "wave 1", "clusters": ["p~l~b"]}],
           "clusters": {"p~l~a": {"path": "projects/p/locations/l/clusters/a", "wave": 0, "state": "UPDATING",
                                  "since": _NOW, "message": "applying the target bundle", "started": 1772366400.5},
                        "p~l~b": {"path": "projects/p/locations/l/clusters/b", "wave": 1, "state": "WAITING",
                                  "since": _NOW, "message": ""}}}
    rec = rollout_of(doc)
    assert rec.state == RolloutState.RUNNING and rec.target.version == "v2+abc" and rec.previous.given
    assert rec.waves[1] == Wave("wave 1", ("p~l~b",)) and rec.canary == 1 and rec.resumed_at is None
    assert rec.clusters["p~l~a"] == RolloutCluster("projects/p/locations/l/clusters/a", 0, WaveClusterState.UPDATING,
                                                   _NOW, "applying the target bundle", 1772366400.5)
    assert rollout_doc(rec) == doc
    # a first rollout that planned nothing has no waveSize nor canary
    done = {k: v for k, v in doc.items() if k not in ("waveSize", "canary")}
    assert rollout_doc(rollout_of({**done, "state": "COMPLETED", "waves": [], "clusters": {}})) == {
        **done, "state": "COMPLETED", "waves": [], "clusters": {}}


def test_malformed_rollout_documents_read_as_safe_defaults() -> None:
    """A hand-edited (or forged) document: what cannot be read is left at its default; unknown state
    words read as None, which nothing drives (the flow acts on RUNNING, a cluster on WAITING)."""
    odd = rollout_of({"state": "SOMETHING", "target": "x", "previous": {"version": 3}, "waves": [1, {"name": "w"}],
                      "wave": "2", "clusters": {"a": {"state": "BOGUS", "wave": True}, "b": "x"},
                      "canary": "1", "startedAt": 5, "unknownField": "kept out"})
    assert odd == FleetRollout(state=None, previous=BundleOptions(), waves=(Wave("w"),),
                               clusters={"a": RolloutCluster("", 0, None)})
    assert not odd.target.given and "unknownField" not in rollout_doc(odd)
    # the forged document of tests/test_security_policy.py: its target's image is still read (and refused there)
    forged = rollout_of({"state": "RUNNING", "target": {"version": "forged", "multusImage": "ghcr.io/x/multus:1"},
                         "previous": {"version": "p"}, "clusters": {"c": {"state": "UPDATING"}}})
    assert forged.target.multus_image == "ghcr.io/x/multus:1"
    assert forged.clusters["c"].state == WaveClusterState.UPDATING and forged.clusters["c"].path == ""
