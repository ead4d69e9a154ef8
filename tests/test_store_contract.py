"""The store's contract: every test here runs against the in-memory `FakeStore` (tests/fakes.py)
and against the real `Store` on Google's Firestore emulator, parametrised, so the fake the flow
tests use cannot drift from what Firestore does.

The Firestore-only properties (RPC counts, deadlines, wire errors, the killed-worker guarantee,
the ledger's TTL field) stay in tests/test_store.py; `make unit` runs the fake's half of this
file, `make test` both halves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.adapters.store import DELETE, EXCERPT_MAX, AlreadyHandled
from shared.core.errors import Problem, Rejected, Transient, UnknownCluster
from shared.core.records import (
    AppliedNad,
    BundleOptions,
    FleetRollout,
    LedgerEntry,
    LedgerNote,
    NadRecord,
    NadState,
    RolloutCluster,
    RolloutState,
    Wave,
    WaveClusterState,
)
from shared.core.refs import ClusterRef
from shared.ports import StorePort
from tests.fakes import FakeStore, nad_change, nad_doc, nad_docs, nad_expect, rollout_stored

REF = ClusterRef.of("proj-one", "us-central1", "alpha")


@pytest.fixture(params=["fake", pytest.param("firestore", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest) -> Iterator[StorePort]:
    """The same tests on the fake and on the real store (the emulator only for the second)."""
    if request.param == "fake":
        yield FakeStore()
        return
    from shared.adapters.store import Store

    yield Store(request.getfixturevalue("store_settings"))


def _history_ids(store: StorePort, ref: ClusterRef = REF) -> list[str]:
    entries, token = store.history(ref, page_size=1000)
    assert token is None
    return [e["id"] for e in entries]


def _create(store: StorePort, ref: ClusterRef = REF, *, event: str = "create-1") -> None:
    store.claim(ref, event_id=event, step="discover", ledger_key=event, create_state="DISCOVERED",
                create_fields={"path": ref.path})
    store.advance(ref, event_id=event, step="discover", ledger_key=event, release=True, message="created")


def test_claim_creates_the_document_with_readable_fields(store: StorePort) -> None:
    assert store.get_cluster(REF) is None
    rec = store.claim(REF, event_id="e1", step="discover", create_state="DISCOVERED",
                      create_fields={"project": "proj-one", "nodePool": {"name": "p"}})
    stored = store.get_cluster(REF)
    assert stored is not None and stored.state == rec.state == "DISCOVERED"
    for name in ("project", "location", "cluster", "path", "state", "stateSince", "createdAt", "updatedAt",
                 "lease", "lastError", "attempts", "nodePool"):
        assert name in stored.data, name
    assert stored.data["path"] == REF.path and stored.get("nodePool") == {"name": "p"}
    assert stored.lease is not None and stored.lease.holder == "e1" and stored.lease.step == "discover"
    assert stored.data["createdAt"].tzinfo is not None
    assert stored.get("lastError") is None and stored.attempts == 0


def test_claim_of_an_unknown_cluster_is_rejected(store: StorePort) -> None:
    with pytest.raises(Rejected) as info:
        store.claim(REF, event_id="e1", step="precheck")
    assert info.value.kind == "unknown-cluster" and info.value.cluster == REF
    with pytest.raises(Rejected):
        store.advance(REF, event_id="e1", step="precheck")


def test_advance_changes_state_fields_and_lease(store: StorePort) -> None:
    _create(store)
    first = store.get_cluster(REF)
    assert first is not None and first.lease is None
    store.claim(REF, event_id="e2", step="precheck", ledger_key="e2")
    rec = store.advance(REF, event_id="e2", step="precheck", state="INSTALLING", message="pool found",
                        fields={"findings": [{"code": "ok"}], "nodePool": {"name": "multus"}},
                        next_step="install")
    assert rec.state == "INSTALLING" and rec.lease is not None and rec.lease.step == "install"
    assert rec.data["stateSince"] > first.data["stateSince"]
    since = rec.data["stateSince"]
    rec = store.advance(REF, event_id="e2", step="install", state="INSTALLING",
                        fields={"nodePool": {"other": 1}, "findings": DELETE}, ledger_key="e2", release=True)
    stored = store.get_cluster(REF)
    assert stored is not None
    assert stored.data == rec.data  # what advance returns is what is stored
    assert stored.lease is None and "findings" not in stored.data
    assert stored.get("nodePool") == {"other": 1}, "a map field is replaced, not merged"
    assert stored.data["stateSince"] == since, "stateSince moves only when the state changes"
    entries, _ = store.history(REF)
    assert [(e["step"], e["state"], e["outcome"]) for e in entries] == [
        ("discover", "DISCOVERED", "ok"), ("precheck", "INSTALLING", "ok"), ("install", "INSTALLING", "ok")]
    assert entries[1]["message"] == "pool found" and entries[1]["previousState"] == "DISCOVERED"


def test_fields_the_store_owns_are_refused(store: StorePort) -> None:
    _create(store)
    for bad in ({"state": "READY"}, {"lease": None}, {"createdAt": 1}, {"a.b": 1}, {"path": "elsewhere"}):
        with pytest.raises(ValueError) as info:
            store.advance(REF, event_id="e9", step="x", fields=bad)
        assert next(iter(bad)) in str(info.value)
    with pytest.raises(ValueError, match="outcome"):
        store.advance(REF, event_id="e9", step="x", outcome="done")


def test_ledger_makes_a_second_advance_a_no_op(store: StorePort) -> None:
    _create(store)
    store.claim(REF, event_id="e2", step="precheck", ledger_key="e2")
    store.advance(REF, event_id="e2", step="precheck", state="READY", ledger_key="e2", release=True)
    assert store.seen("e2")
    with pytest.raises(AlreadyHandled):
        store.claim(REF, event_id="e2", step="precheck", ledger_key="e2")
    with pytest.raises(AlreadyHandled):
        store.advance(REF, event_id="e2", step="precheck", state="FAILED", ledger_key="e2")
    rec = store.get_cluster(REF)
    assert rec is not None and rec.state == "READY"


def test_release_counts_attempts_and_shows_every_retry(store: StorePort) -> None:
    _create(store)
    for attempt in (1, 2):
        store.claim(REF, event_id="e3", step="install", ledger_key="e3")
        rec = store.release(REF, event_id="e3", step="install", error=f"apiserver timeout #{attempt}")
        assert rec.lease is None and rec.attempts == attempt
        assert rec.last_error is not None and rec.last_error["message"] == f"apiserver timeout #{attempt}"
        assert rec.last_error["step"] == "install"
    rec = store.release(REF, event_id="e3", step="install", error="gave up", outcome="failed", state="FAILED",
                        count_attempt=False)
    assert rec.state == "FAILED" and rec.attempts == 2
    entries, _ = store.history(REF)
    retries = [e for e in entries if e["eventId"] == "e3"]
    assert [(e["outcome"], e["message"]) for e in retries] == [
        ("retry", "apiserver timeout #1"), ("retry", "apiserver timeout #2"), ("failed", "gave up")]
    assert len({e["id"] for e in retries}) == 3
    assert not store.seen("e3"), "a retried event must stay redeliverable"


def test_release_of_a_lease_held_by_another_event_keeps_it(store: StorePort) -> None:
    _create(store)
    store.claim(REF, event_id="owner", step="install")
    rec = store.release(REF, event_id="intruder", step="install", error="boom")
    assert rec.lease is not None and rec.lease.holder == "owner"


def test_nads_have_their_own_documents(store: StorePort) -> None:
    _create(store)
    assert nad_doc(store, REF, "default", "net-a") is None
    assert store.put_nad(REF, "default", "net-a",
                         change=nad_change("PENDING", {"request": {"range": "172.16.1.0/24"}, "namespace": "default"}),
                         event_id="n1", step="request-nad", ledger_key="n1")
    first = nad_doc(store, REF, "default", "net-a")
    assert first is not None and first["state"] == "PENDING" and first["clusterPath"] == REF.path
    assert not store.put_nad(REF, "default", "net-a", change=nad_change("REJECTED", {}), event_id="n1",
                             step="request-nad", ledger_key="n1"), "a duplicate writes nothing"
    assert store.put_nad(REF, "default", "net-a",
                         change=nad_change("APPLIED", {"config": '{"cniVersion":"0.3.1"}',
                                                      "request": {"range": "172.16.2.0/24"}}),
                         event_id="r1", step="apply-nad")
    store.put_nad(REF, "team-b", "net-b", change=nad_change("PENDING", {}), event_id="n2", step="request-nad")
    nad = nad_doc(store, REF, "default", "net-a")
    assert nad is not None and nad["state"] == "APPLIED" and nad["createdAt"] == first["createdAt"]
    assert nad["stateSince"] > first["stateSince"] and nad["request"] == {"range": "172.16.2.0/24"}
    assert [(n["namespace"], n["name"], n["state"]) for n in nad_docs(store, REF)] == [
        ("default", "net-a", "APPLIED"), ("team-b", "net-b", "PENDING")]
    assert [n["name"] for n in nad_docs(store, REF, state="PENDING")] == ["net-b"]
    with pytest.raises(Rejected) as info:
        store.put_nad(REF, "Bad_NS", "x", change=nad_change("PENDING", {}), event_id="n3", step="s")
    assert info.value.problems[0].field == "namespace"
    with pytest.raises(ValueError, match="name"):
        store.put_nad(REF, "default", "net-a", change=nad_change("X", {"name": "other"}), event_id="n4", step="s")
    nad_entries = [e for e in store.history(REF)[0] if e.get("nad")]
    assert [(e["nad"], e["state"]) for e in nad_entries] == [
        ("default/net-a", "PENDING"), ("default/net-a", "APPLIED"), ("team-b/net-b", "PENDING")]


def test_list_clusters_by_state(store: StorePort) -> None:
    refs = [ClusterRef.of("proj-one", "us-central1", f"c{i}") for i in range(4)]
    for i, ref in enumerate(refs):
        _create(store, ref, event=f"create-{i}")
        if i % 2:
            store.advance(ref, event_id=f"ready-{i}", step="install", state="READY")
    assert sorted(r.ref.cluster for r in store.list_clusters()) == ["c0", "c1", "c2", "c3"]
    assert sorted(r.ref.cluster for r in store.list_clusters("READY")) == ["c1", "c3"]
    assert len(store.list_clusters(limit=3)) == 3
    assert store.list_clusters("INELIGIBLE") == []


def test_history_pages_in_time_order(store: StorePort) -> None:
    _create(store)
    for i in range(6):
        store.advance(REF, event_id=f"h{i}", step="note", message=f"entry {i}")
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        entries, token = store.history(REF, page_size=3, page_token=token)
        pages += 1
        seen += [e["message"] for e in entries]
        if token is None:
            break
        store.advance(REF, event_id=f"late{pages}", step="note", message=f"late {pages}")
    assert seen[:7] == ["created"] + [f"entry {i}" for i in range(6)]
    assert seen[7:] == ["late 1", "late 2"], "entries appended while paging are read at the end, once"
    assert pages == 3
    with pytest.raises(Rejected) as info:
        store.history(REF, page_token="not-a-token")
    assert info.value.problems[0].field == "page_token"
    with pytest.raises(Rejected):
        store.history(REF, page_size=0)


def test_rejections_under_the_cluster_and_top_level(store: StorePort) -> None:
    _create(store)
    payload = "{" + "x" * 2000 + "}"
    assert store.record_rejection(event_id="bad-1", cluster=REF, reason="invalid NAD request",
                                  problems=[Problem("spec.range", "not a CIDR")], kind="invalid",
                                  excerpt=payload, ledger_key="bad-1")
    assert not store.record_rejection(event_id="bad-1", cluster=REF, reason="again", problems=[],
                                      kind="invalid", excerpt=payload, ledger_key="bad-1")
    assert store.record_rejection(event_id="bad-2", cluster=None, reason="no cluster named",
                                  problems=[{"field": "cluster", "message": "missing"}], kind="invalid",
                                  excerpt="short")
    assert store.seen("bad-1")
    (rej,) = store.list_rejections(REF)
    assert rej["reason"] == "invalid NAD request" and rej["problems"] == [
        {"field": "spec.range", "message": "not a CIDR"}]
    assert rej["excerpt"] == payload[:EXCERPT_MAX] and len(rej["excerpt"]) == EXCERPT_MAX
    (top,) = store.list_rejections()
    assert top["eventId"] == "bad-2" and top["cluster"] is None
    entry = [e for e in store.history(REF)[0] if e["outcome"] == "rejected"]
    assert len(entry) == 1 and "spec.range: not a CIDR" in entry[0]["message"]


def test_delete_cluster_tree(store: StorePort) -> None:
    _create(store)
    store.put_nad(REF, "default", "net-a", change=nad_change("PENDING", {}), event_id="n1", step="s")
    store.record_rejection(event_id="r", cluster=REF, reason="x", problems=[], kind="invalid")
    other = ClusterRef.of("proj-one", "us-central1", "beta")
    _create(store, other, event="other")
    store.delete_cluster_tree(REF)
    assert store.get_cluster(REF) is None and nad_docs(store, REF) == []
    assert store.history(REF) == ([], None) and store.list_rejections(REF) == []
    assert store.get_cluster(other) is not None and len(_history_ids(store, other)) == 1


def test_guarantee_3_expired_lease_can_be_taken_over(store: StorePort) -> None:
    _create(store)
    store.claim(REF, event_id="slow", step="install", lease_seconds=1)
    with pytest.raises(Transient) as info:
        store.claim(REF, event_id="other", step="precheck")
    assert "slow" in str(info.value) and "install" in str(info.value)
    with pytest.raises(Transient):
        store.advance(REF, event_id="other", step="precheck", state="READY")
    time.sleep(1.1)
    rec = store.claim(REF, event_id="other", step="precheck", lease_seconds=60)
    assert rec.lease is not None and rec.lease.holder == "other"
    with pytest.raises(Transient) as info:
        store.advance(REF, event_id="slow", step="install", state="READY")
    assert "other" in str(info.value)
    store.advance(REF, event_id="other", step="precheck", state="READY", release=True)
    final = store.get_cluster(REF)
    assert final is not None and final.state == "READY" and final.lease is None


def test_put_nad_compare_and_set_lets_exactly_one_concurrent_writer_win(store: StorePort) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store.put_nad(REF, "default", "race", change=nad_change("PENDING", {}), event_id="q", step="queue-nad")

    def take(i: int) -> bool:
        return store.put_nad(REF, "default", "race", change=nad_change("APPLYING", {"claimOrder": f"{i:04d}"}),
                             event_id=f"w{i}", step="claim-nad", expect_states=("PENDING",), history=False)

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(take, range(6)))
    assert won.count(True) == 1, won
    doc = nad_doc(store, REF, "default", "race")
    assert doc["state"] == "APPLYING" and doc["claimOrder"] == f"{won.index(True):04d}"
    # an unconditional writer is never lost: it re-reads and writes after the winner
    assert store.put_nad(REF, "default", "race", change=nad_change("REJECTED", {}), event_id="z", step="reject-nad")
    assert nad_doc(store, REF, "default", "race")["state"] == "REJECTED"


# --------------------------------------------------------------------------- more of the contract

def test_unknown_cluster_is_its_own_error_type(store: StorePort) -> None:
    with pytest.raises(UnknownCluster) as info:
        store.advance(REF, event_id="e1", step="precheck")
    assert info.value.kind == "unknown-cluster" and info.value.cluster == REF
    with pytest.raises(UnknownCluster):
        store.release(REF, event_id="e1", step="precheck", error="x")
    with pytest.raises(UnknownCluster):
        store.hold(REF, holder="e1", step="precheck")


def test_record_ledger_and_get_cluster_unless_seen(store: StorePort) -> None:
    assert store.get_cluster_unless_seen(REF, "never") == (None, False)
    store.claim(REF, event_id="g1", step="discover", ledger_key="g1", create_state="DISCOVERED")
    rec, seen = store.get_cluster_unless_seen(REF, "g1")
    assert rec is not None and rec.state == "DISCOVERED" and not seen
    assert store.record_ledger("g1", event_id="g1", step="discover", outcome="ok", cluster=REF,
                               note=LedgerNote("sha256:abc")) is True
    assert store.record_ledger("g1", event_id="g1", step="discover", outcome="ok", cluster=REF) is False
    assert store.get_cluster_unless_seen(REF, "g1") == (None, True)
    entry = store.get_ledger("g1")
    assert entry == LedgerEntry("g1", "discover", "ok", REF.path, LedgerNote("sha256:abc"))
    assert store.get_ledger("other") is None


def test_hold_renews_and_drops_only_its_own_lease(store: StorePort) -> None:
    _create(store)
    store.claim(REF, event_id="e1", step="install", holder="h1", lease_seconds=5)
    store.hold(REF, holder="h1", step="wait-crds", seconds=60)
    rec = store.get_cluster(REF)
    assert rec is not None and rec.lease is not None and rec.lease.step == "wait-crds"
    with pytest.raises(Transient):
        store.hold(REF, holder="h2", step="x")
    store.hold(REF, holder="h1", step="wait-crds", seconds=0)
    rec = store.get_cluster(REF)
    assert rec is not None and rec.lease is None
    entries, _ = store.history(REF)
    assert [e["step"] for e in entries] == ["discover"], "a hold writes no history"


def test_release_writes_fields_and_keeps_the_state_unless_told(store: StorePort) -> None:
    _create(store)
    store.claim(REF, event_id="e1", step="install")
    rec = store.release(REF, event_id="e1", step="install", error="busy", count_attempt=False,
                        fields={"busySince": 12.5})
    assert rec.state == "DISCOVERED" and rec.attempts == 0 and rec.get("busySince") == 12.5
    assert rec.data["releases"] == 1 and rec.lease is None


def test_claim_create_fields_and_delete_marker(store: StorePort) -> None:
    rec = store.claim(REF, event_id="c1", step="discover", create_state="DISCOVERED",
                      create_fields={"path": REF.path, "gone": DELETE, "nodePool": {"name": "p"}})
    assert "gone" not in rec.data and rec.get("nodePool") == {"name": "p"}
    stored = store.get_cluster(REF)
    assert stored is not None and "gone" not in stored.data
    rec = store.advance(REF, event_id="c1", step="discover", fields={"nodePool": DELETE}, next_step="precheck")
    assert "nodePool" not in rec.data and rec.lease is not None and rec.lease.step == "precheck"
    assert store.get_cluster(REF).data == rec.data  # type: ignore[union-attr]


def test_put_nad_conditions_derive_and_ledger(store: StorePort) -> None:
    assert store.put_nad(REF, "default", "net",
                         change=nad_change("PENDING", {"claimOrder": "0001"}, message="queued"), event_id="n1",
                         step="queue-nad", ledger_key="k1", ledger_note=LedgerNote("d1", "rid-1"))
    assert store.get_ledger("k1").note == LedgerNote("d1", "rid-1")  # type: ignore[union-attr]
    assert not store.put_nad(REF, "default", "net", change=nad_change("APPLYING", {}), event_id="n2", step="s",
                             expect=nad_expect({"claimOrder": "0002"}))
    assert not store.put_nad(REF, "default", "net", change=nad_change("APPLYING", {}), event_id="n2", step="s",
                             expect_states=("APPLIED",))
    seen: list[NadRecord] = []

    def change(current: NadRecord) -> NadRecord:
        seen.append(current)
        return replace(current, state=NadState.APPLIED, message="derived", applied=AppliedNad("10.0.0.0/24", "eth1"),
                       claim_order=None)

    assert store.put_nad(REF, "default", "net", event_id="n3", step="apply-nad", change=change,
                         expect_states=("PENDING",), expect=lambda cur: cur.claim_order == "0001",
                         ledger_key="k3", write_ledger=False)
    assert seen[0].state == NadState.PENDING and seen[0].claim_order == "0001" and seen[0].message == "queued"
    rec = store.get_nad(REF, "default", "net")
    assert rec is not None and rec.state == NadState.APPLIED and rec.message == "derived"
    assert rec.claim_order is None and rec.applied == AppliedNad("10.0.0.0/24", "eth1")
    doc = nad_doc(store, REF, "default", "net")
    assert doc is not None and doc["state"] == "APPLIED" and "claimOrder" not in doc
    assert doc["applied"] == {"range": "10.0.0.0/24", "master": "eth1", "configDigest": None, "requestId": None,
                              "messageId": None, "state": "APPLIED", "at": None}
    assert not store.seen("k3"), "write_ledger=False only checks the ledger"
    entries = [e for e in store.history(REF)[0] if e.get("nad")]
    assert [(e["step"], e["state"], e["previousState"]) for e in entries] == [
        ("queue-nad", "PENDING", None), ("apply-nad", "APPLIED", "PENDING")]
    (listed,) = store.list_nads(REF, fields=("state", "applied"))  # a projection: the rest is not read
    assert (listed.namespace, listed.name, listed.state, listed.applied) == ("default", "net", "APPLIED", rec.applied)
    assert set(listed.data) == {"state", "applied"} and listed.message == ""
    (part,) = store.list_nads(REF, fields=("state", "applied.range", "applied.master"))  # two keys of a part
    assert part.data == {"state": "APPLIED", "applied": {"range": "10.0.0.0/24", "master": "eth1"}}
    assert part.applied is not None and (part.applied.range, part.applied.master) == ("10.0.0.0/24", "eth1")
    assert nad_docs(store, REF, state="PENDING") == []


def test_the_rollout_is_written_only_over_what_was_read(store: StorePort) -> None:
    assert store.get_rollout() == (None, None)
    running = FleetRollout(
        RolloutState.RUNNING, BundleOptions("T", "gcr.io/gke-release/multus@sha256:1", None, "debug"),
        BundleOptions("P", "gcr.io/gke-release/multus@sha256:0", "gcr.io/gke-release/whereabouts@sha256:0", None),
        waves=(Wave("canary", (REF.doc_id,)), Wave("wave 1", ("p~l~other",))), wave=0,
        clusters={REF.doc_id: RolloutCluster(REF.path, 0, WaveClusterState.WAITING, "2026-03-01T12:00:00+00:00"),
                  "p~l~other": RolloutCluster("projects/p/locations/l/clusters/other", 1, WaveClusterState.WAITING)},
        started_at="2026-03-01T12:00:00+00:00", started_by="tick-1", updated_at="2026-03-01T12:00:00+00:00",
        resumed_at="2026-03-01T11:00:00+00:00", wave_size="1", canary=1)
    first = store.put_rollout(running, None)
    with pytest.raises(Transient):  # another writer created it in between
        store.put_rollout(replace(running, state=RolloutState.HALTED), None)
    got, version = store.get_rollout()
    assert got == running and version == first
    stored = rollout_stored(store)
    assert stored is not None and stored["state"] == "RUNNING" and stored["haltedCluster"] == ""
    assert stored["target"] == {"version": "T", "multusImage": "gcr.io/gke-release/multus@sha256:1",
                                "whereaboutsImage": None, "logLevel": "debug"}
    assert stored["waves"] == [{"name": "canary", "clusters": [REF.doc_id]}, {"name": "wave 1",
                                                                               "clusters": ["p~l~other"]}]
    assert stored["clusters"][REF.doc_id] == {"path": REF.path, "wave": 0, "state": "WAITING",
                                              "since": "2026-03-01T12:00:00+00:00", "message": ""}

    entry = replace(running.clusters[REF.doc_id], state=WaveClusterState.UPDATING, started=1772366400.5,
                    message="applying the target bundle")
    moved = replace(running.with_cluster(REF.doc_id, entry), resumed_at=None)
    second = store.put_rollout(moved, version)
    with pytest.raises(Transient):  # a writer that read the first version comes too late
        store.put_rollout(replace(running, state=RolloutState.ABORTED), version)
    got, latest = store.get_rollout()
    assert got == moved and latest == second and got.state == RolloutState.RUNNING
    stored = rollout_stored(store)
    assert stored is not None and "resumedAt" not in stored, "an attribute set to None removes its field"
    assert stored["clusters"][REF.doc_id]["started"] == 1772366400.5
    assert store.put_rollout(replace(moved, wave=1), latest) != latest


def test_list_clusters_skips_nothing_of_ours_and_reads_states(store: StorePort) -> None:
    _create(store)
    before = datetime.now(UTC)
    (rec,) = store.list_clusters()
    assert rec.ref == REF and rec.state == "DISCOVERED" and rec.data["updatedAt"] <= before
    assert time.time() > 0


def test_the_fake_and_the_store_have_the_ports_signatures() -> None:
    """Every method of `StorePort` exists on both, with the port's parameters (names, kinds, defaults)."""
    import inspect

    from shared.adapters.store import Store

    methods = [n for n, v in vars(StorePort).items() if callable(v) and not n.startswith("_")]
    assert "advance" in methods and "put_nad" in methods
    for name in methods:
        want = inspect.signature(getattr(StorePort, name)).parameters
        for impl in (FakeStore, Store):
            have = inspect.signature(getattr(impl, name)).parameters
            for param, spec in want.items():
                assert param in have, f"{impl.__name__}.{name} lacks {param}"
                assert (have[param].kind, have[param].default) == (spec.kind, spec.default), (impl, name, param)


def test_a_nad_request_reads_once_and_writes_on_what_it_read(store: StorePort) -> None:
    """The NAD apply's first look (cluster, ledger and NAD in one read) and the versioned writes:
    a write on a stale version is decided again on the current document, never lost or doubled."""
    _create(store)
    rec, seen, version = store.get_cluster_and_nad_unless_seen(REF, "n-1", "default", "net")
    assert rec is not None and rec.state == "DISCOVERED" and not seen
    assert version.update_time is None and version.record is None
    first = store.put_nad_version(REF, "default", "net", change=nad_change("APPLYING", {"claimOrder": "a"}),
                                  event_id="n-1", step="claim", ledger_key="n-1", write_ledger=False,
                                  expect_states=(None,), known=version)
    assert first is not None and first.record is not None and first.update_time is not None
    assert first.record.state == NadState.APPLYING and first.record.data["state"] == "APPLYING"
    _, _, again = store.get_cluster_and_nad_unless_seen(REF, "n-2", "default", "net")
    assert again.record is not None and again.record.claim_order == "a" and again.update_time is not None
    # another writer got there in between: the stale version's write is re-checked on the current one
    store.put_nad(REF, "default", "net", change=nad_change("APPLYING", {"claimOrder": "b"}), event_id="n-9",
                  step="other")
    lost = store.put_nad_version(REF, "default", "net", change=nad_change("APPLIED", {}), event_id="n-1",
                                 step="apply", expect_states=("APPLYING",), known=first,
                                 expect=nad_expect({"claimOrder": "a"}))
    assert lost is None and (nad_doc(store, REF, "default", "net") or {})["claimOrder"] == "b"
    store.record_ledger("n-3", event_id="n-3", step="x", outcome="ok", cluster=REF)
    assert store.get_cluster_and_nad_unless_seen(REF, "n-3", "default", "net")[:2] == (None, True)


def _stored_nad(store: StorePort, namespace: str, name: str) -> dict[str, object]:
    """The NAD document as stored (what the Firestore console shows), not as read through the port."""
    if isinstance(store, FakeStore):
        return dict(store.nads[REF.doc_id][f"{namespace}~{name}"])
    from shared.adapters.store import Store

    assert isinstance(store, Store)
    return dict(store._nad_doc(REF, namespace, name).get().to_dict() or {})


def test_a_nad_document_holds_its_request_once(store: StorePort) -> None:
    _create(store)
    body = {"namespace": "default", "name": "net-a", "range": "172.16.1.0/28"}
    other = {**body, "range": "172.16.1.16/28"}
    last = {"action": "apply", "state": "APPLIED", "messageId": "m1"}
    assert store.put_nad(REF, "default", "net-a",
                         change=nad_change("APPLIED", {"request": body, "lastRequest": {**last, "request": body}}),
                         event_id="e1", step="apply-nad")
    stored = _stored_nad(store, "default", "net-a")
    assert stored["request"] == body and "request" not in stored["lastRequest"]  # type: ignore[operator]
    read = nad_doc(store, REF, "default", "net-a")
    assert read is not None and read["lastRequest"]["request"] == body  # read whole
    [listed] = store.list_nads(REF, fields=("state", "last_request"))
    assert listed.last_request is not None and listed.last_request.request == body

    # A refused update keeps the applied request on top and its own body in lastRequest.
    assert store.put_nad(REF, "default", "net-a",
                         change=nad_change("APPLIED", {"lastRequest": {**last, "state": "REJECTED", "request": other}}),
                         event_id="e2", step="apply-nad")
    stored = _stored_nad(store, "default", "net-a")
    assert stored["request"] == body and stored["lastRequest"]["request"] == other  # type: ignore[index]
    # A write that changes `request` alone keeps the last request's body where it was read from.
    assert store.put_nad(REF, "default", "net-a",
                         change=nad_change("APPLIED", {"lastRequest": {**last, "request": body}}), event_id="e3",
                         step="apply-nad")
    assert store.put_nad(REF, "default", "net-a", change=nad_change("APPLIED", {"request": other}), event_id="e4",
                         step="adopt")
    read = nad_doc(store, REF, "default", "net-a")
    assert read is not None and read["request"] == other and read["lastRequest"]["request"] == body


def test_history_entries_carry_their_fields_through_one_table(store: StorePort) -> None:
    _create(store)
    store.put_nad(REF, "default", "net-h", change=nad_change("APPLIED", {}, message="applied"), event_id="e-h",
                  step="apply-nad")
    store.claim(REF, event_id="e-r", step="install")
    store.release(REF, event_id="e-r", step="install", error="timeout")
    entries, _ = store.history(REF, page_size=1000)  # type: ignore[attr-defined]
    by_step = {e["step"]: e for e in entries}
    nad, retry = by_step["apply-nad"], by_step["install"]
    assert nad["nad"] == "default/net-h" and nad["previousState"] is None and "attempt" not in nad
    assert retry["attempt"] == 1 and retry["outcome"] == "retry" and "nad" not in retry and "kind" not in retry
    for entry in (nad, retry):
        assert {"eventId", "step", "outcome", "message", "state", "previousState", "at", "seq"} <= set(entry)
