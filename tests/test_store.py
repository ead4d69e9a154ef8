"""The Firestore store, on Google's emulator, through the wire.

The four guarantees of issue 3 are the `test_guarantee_*` tests; they run against the emulator
the session fixture starts, or any Firestore named by an externally set FIRESTORE_EMULATOR_HOST.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.store import DELETE, EXCERPT_MAX, AlreadyHandled, Store, safe_id, translate
from shared.core.errors import Permanent, Problem, Rejected, Transient
from shared.core.refs import ClusterRef
from shared.core.settings import Settings

pytestmark = pytest.mark.emulator
ROOT = Path(__file__).resolve().parent.parent
REF = ClusterRef.of("proj-one", "us-central1", "alpha")


@pytest.fixture
def store(store_settings: Settings) -> Store:
    return Store(store_settings)


def _history_ids(store: Store, ref: ClusterRef = REF) -> list[str]:
    entries, token = store.history(ref, page_size=1000)
    assert token is None
    return [e["id"] for e in entries]


def _create(store: Store, ref: ClusterRef = REF, *, event: str = "create-1") -> None:
    store.claim(ref, event_id=event, step="discover", ledger_key=event, create_state="DISCOVERED",
                create_fields={"path": ref.path})
    store.advance(ref, event_id=event, step="discover", ledger_key=event, release=True, message="created")


# --------------------------------------------------------------------------- basics

def test_claim_creates_the_document_with_readable_fields(store: Store) -> None:
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


def test_claim_of_an_unknown_cluster_is_rejected(store: Store) -> None:
    with pytest.raises(Rejected) as info:
        store.claim(REF, event_id="e1", step="precheck")
    assert info.value.kind == "unknown-cluster" and info.value.cluster == REF
    with pytest.raises(Rejected):
        store.advance(REF, event_id="e1", step="precheck")


def test_advance_changes_state_fields_and_lease(store: Store) -> None:
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


def test_fields_the_store_owns_are_refused(store: Store) -> None:
    _create(store)
    for bad in ({"state": "READY"}, {"lease": None}, {"createdAt": 1}, {"a.b": 1}, {"path": "elsewhere"}):
        with pytest.raises(ValueError) as info:
            store.advance(REF, event_id="e9", step="x", fields=bad)
        assert next(iter(bad)) in str(info.value)
    with pytest.raises(ValueError, match="outcome"):
        store.advance(REF, event_id="e9", step="x", outcome="done")


def test_ledger_makes_a_second_advance_a_no_op(store: Store) -> None:
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


def test_ledger_entry_has_an_expiry_for_the_ttl_policy(store: Store, firestore_client: Any) -> None:
    before = datetime.now(UTC)
    assert store.record_ledger("evt/with~odd chars", event_id="evt", step="close", outcome="ignored",
                               cluster=REF) is True
    assert store.record_ledger("evt/with~odd chars", event_id="evt", step="close", outcome="ignored",
                               cluster=REF) is False
    assert store.seen("evt/with~odd chars") and not store.seen("evt/with~odd")
    doc = firestore_client.collection(store.settings.collection("events")).document(
        safe_id("evt/with~odd chars")).get().to_dict()
    ttl = timedelta(days=store.settings.ledger_ttl_days)
    assert before + ttl <= doc["expireAt"] <= datetime.now(UTC) + ttl
    assert doc["eventId"] == "evt" and doc["cluster"] == REF.path and doc["outcome"] == "ignored"


def test_release_counts_attempts_and_shows_every_retry(store: Store) -> None:
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


def test_release_of_a_lease_held_by_another_event_keeps_it(store: Store) -> None:
    _create(store)
    store.claim(REF, event_id="owner", step="install")
    rec = store.release(REF, event_id="intruder", step="install", error="boom")
    assert rec.lease is not None and rec.lease.holder == "owner"


def test_nads_have_their_own_documents(store: Store) -> None:
    _create(store)
    assert store.get_nad(REF, "default", "net-a") is None
    assert store.put_nad(REF, "default", "net-a", event_id="n1", step="request-nad", state="PENDING",
                         fields={"request": {"range": "172.16.1.0/24"}, "namespace": "default"},
                         ledger_key="n1")
    first = store.get_nad(REF, "default", "net-a")
    assert first is not None and first["state"] == "PENDING" and first["clusterPath"] == REF.path
    assert not store.put_nad(REF, "default", "net-a", event_id="n1", step="request-nad", state="REJECTED",
                             fields={}, ledger_key="n1"), "a duplicate writes nothing"
    assert store.put_nad(REF, "default", "net-a", event_id="r1", step="apply-nad", state="APPLIED",
                         fields={"config": '{"cniVersion":"0.3.1"}', "request": {"range": "172.16.2.0/24"}})
    store.put_nad(REF, "team-b", "net-b", event_id="n2", step="request-nad", state="PENDING", fields={})
    nad = store.get_nad(REF, "default", "net-a")
    assert nad is not None and nad["state"] == "APPLIED" and nad["createdAt"] == first["createdAt"]
    assert nad["stateSince"] > first["stateSince"] and nad["request"] == {"range": "172.16.2.0/24"}
    assert [(n["namespace"], n["name"], n["state"]) for n in store.list_nads(REF)] == [
        ("default", "net-a", "APPLIED"), ("team-b", "net-b", "PENDING")]
    assert [n["name"] for n in store.list_nads(REF, state="PENDING")] == ["net-b"]
    with pytest.raises(Rejected) as info:
        store.put_nad(REF, "Bad_NS", "x", event_id="n3", step="s", state="PENDING", fields={})
    assert info.value.problems[0].field == "namespace"
    with pytest.raises(ValueError, match="name"):
        store.put_nad(REF, "default", "net-a", event_id="n4", step="s", state="X", fields={"name": "other"})
    nad_entries = [e for e in store.history(REF)[0] if e.get("nad")]
    assert [(e["nad"], e["state"]) for e in nad_entries] == [
        ("default/net-a", "PENDING"), ("default/net-a", "APPLIED"), ("team-b/net-b", "PENDING")]


def test_list_clusters_by_state(store: Store) -> None:
    refs = [ClusterRef.of("proj-one", "us-central1", f"c{i}") for i in range(4)]
    for i, ref in enumerate(refs):
        _create(store, ref, event=f"create-{i}")
        if i % 2:
            store.advance(ref, event_id=f"ready-{i}", step="install", state="READY")
    assert sorted(r.ref.cluster for r in store.list_clusters()) == ["c0", "c1", "c2", "c3"]
    assert sorted(r.ref.cluster for r in store.list_clusters("READY")) == ["c1", "c3"]
    assert len(store.list_clusters(limit=3)) == 3
    assert store.list_clusters("INELIGIBLE") == []


def test_history_pages_in_time_order(store: Store) -> None:
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


def test_rejections_under_the_cluster_and_top_level(store: Store) -> None:
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


def test_policy_document(store: Store, firestore_client: Any) -> None:
    assert store.get_policy() is None
    firestore_client.collection(store.settings.collection("config")).document("policy").set(
        {"optInLabel": "multus=yes"})
    assert store.get_policy() == {"optInLabel": "multus=yes"}


def test_delete_cluster_tree(store: Store) -> None:
    _create(store)
    store.put_nad(REF, "default", "net-a", event_id="n1", step="s", state="PENDING", fields={})
    store.record_rejection(event_id="r", cluster=REF, reason="x", problems=[], kind="invalid")
    other = ClusterRef.of("proj-one", "us-central1", "beta")
    _create(store, other, event="other")
    store.delete_cluster_tree(REF)
    assert store.get_cluster(REF) is None and store.list_nads(REF) == []
    assert store.history(REF) == ([], None) and store.list_rejections(REF) == []
    assert store.get_cluster(other) is not None and len(_history_ids(store, other)) == 1


def test_wire_errors_become_permanent(store: Store) -> None:
    _create(store)
    with pytest.raises(Permanent) as info:
        store.put_nad(REF, "default", "big", event_id="b", step="s", state="PENDING",
                      fields={"blob": "x" * 1_100_000})
    assert info.value.code == "INVALID_ARGUMENT" and "blob" in str(info.value)


def test_translate_maps_error_kinds() -> None:
    from google.api_core import exceptions as gexc

    for exc in (gexc.Aborted("a"), gexc.ServiceUnavailable("u"), gexc.DeadlineExceeded("d"),
                gexc.ResourceExhausted("r"), gexc.InternalServerError("i")):
        assert isinstance(translate(exc), Transient), exc
    for exc in (gexc.PermissionDenied("p"), gexc.InvalidArgument("i"), gexc.FailedPrecondition("f")):
        assert isinstance(translate(exc), Permanent), exc
    exhausted = ValueError("Failed to commit transaction in 5 attempts.")
    exhausted.__cause__ = gexc.Aborted("contention")
    assert isinstance(translate(exhausted), Transient)
    plain = KeyError("x")
    assert translate(plain) is plain


def test_safe_id_is_injective_and_valid() -> None:
    keys = ["a/b", "a_b", "a%2Fb", "a~b", "..", ".", "__x__", "x" * 3000, "x" * 2999 + "y", "é"]
    ids = [safe_id(k) for k in keys]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert "/" not in i and "~" not in i[:300] and i not in (".", "..") and len(i.encode()) <= 1500
        assert not (i.startswith("__") and i.endswith("__"))


# --------------------------------------------------------------------------- RPCs

def test_a_step_costs_three_rpcs(store: Store) -> None:
    with store.count_rpcs() as n:
        store.claim(REF, event_id="e1", step="discover", ledger_key="e1", create_state="DISCOVERED")
    assert n.total == 3 and dict(n.by_method) == {"BeginTransaction": 1, "BatchGetDocuments": 1, "Commit": 1}
    with store.count_rpcs() as n:
        store.advance(REF, event_id="e1", step="discover", state="AWAITING_NODE_POOL", ledger_key="e1",
                      fields={"findings": []}, release=True)
    assert n.total == 3 and dict(n.by_method) == {"BeginTransaction": 1, "BatchGetDocuments": 1, "Commit": 1}
    with store.count_rpcs() as n:
        store.put_nad(REF, "default", "net-a", event_id="n1", step="apply-nad", state="APPLIED", fields={},
                      ledger_key="n1")
    # a NAD record is lock-free: one batched read, one commit guarded by preconditions
    assert n.total == 2 and dict(n.by_method) == {"BatchGetDocuments": 1, "Commit": 1}
    with store.count_rpcs() as n, pytest.raises(AlreadyHandled):
        store.advance(REF, event_id="e1", step="discover", ledger_key="e1")
    assert n.total == 3 and n.by_method["Rollback"] == 1 and "Commit" not in n.by_method
    with store.count_rpcs() as n:
        store.record_ledger("x", event_id="x", step="s", outcome="ok", cluster=None)
        store.get_cluster(REF)
    assert dict(n.by_method) == {"Commit": 1, "BatchGetDocuments": 1}
    assert store.rpc_count == 13, "the counter sees every RPC this store's client sent"


def test_stores_sharing_a_client_share_one_counter(store_settings: Settings, firestore_client: Any) -> None:
    a, b = Store(store_settings, firestore_client), Store(store_settings, firestore_client)
    before = a.rpc_count
    b.get_cluster(REF)
    assert a.rpc_count == b.rpc_count == before + 1


# --------------------------------------------------------------------------- guarantees

def test_guarantee_1_same_event_many_times_one_change(store_settings: Settings) -> None:
    """N deliveries of one event, concurrent (one Store each, as separate instances) and then
    sequential, make exactly one state change and one history entry."""
    _create(Store(store_settings))
    workers = 5
    stores = [Store(store_settings) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    side_effects: list[int] = []

    def deliver(i: int) -> str:
        s = stores[i]
        barrier.wait()
        try:
            s.claim(REF, event_id="dup", step="precheck", ledger_key="dup")
            side_effects.append(i)  # idempotent side effect: may run more than once
            s.advance(REF, event_id="dup", step="precheck", state="AWAITING_NODE_POOL", ledger_key="dup",
                      message=f"worker {i}", release=True)
            return "done"
        except AlreadyHandled:
            return "duplicate"
        except Transient:
            return "retry"

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(deliver, range(workers)))
    print(f"\n{workers} concurrent deliveries of one event: {time.monotonic() - started:.2f} s, {results}")
    # Pub/Sub redelivers what ended Transient (contention), then a few more duplicates arrive.
    rounds = 0
    while "retry" in results and rounds < 5:
        rounds += 1
        results = [_redeliver(stores[i]) if r == "retry" else r for i, r in enumerate(results)]
    for i in range(3):
        results.append(_redeliver(stores[i]))
    assert results.count("done") == 1 and "retry" not in results, results
    store = stores[0]
    entries = [e for e in store.history(REF)[0] if e["eventId"] == "dup"]
    assert len(entries) == 1 and entries[0]["previousState"] == "DISCOVERED"
    rec = store.get_cluster(REF)
    assert rec is not None and rec.state == "AWAITING_NODE_POOL" and rec.lease is None
    changes = [e for e in store.history(REF)[0] if e["state"] != e.get("previousState")]
    assert len(changes) == 1, "exactly one state change after creation"


def _redeliver(s: Store) -> str:
    try:
        s.claim(REF, event_id="dup", step="precheck", ledger_key="dup")
        s.advance(REF, event_id="dup", step="precheck", state="AWAITING_NODE_POOL", ledger_key="dup",
                  release=True)
        return "done"
    except AlreadyHandled:
        return "duplicate"
    except Transient:
        return "retry"


def test_guarantee_2_nads_of_one_cluster_do_not_contend(store_settings: Settings,
                                                        record_property: Any) -> None:
    """Many workers advancing different NADs of one cluster lose nothing and never retry a
    write (NAD records are lock-free: one read, one guarded commit; a lost race would show as an
    extra BatchGetDocuments + Commit pair)."""
    _create(Store(store_settings))
    workers, per_worker = 8, 4
    stores = [Store(store_settings) for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def work(i: int) -> dict[str, int]:
        s = stores[i]
        barrier.wait()
        with s.count_rpcs() as n:
            for j in range(per_worker):
                name = f"net-{i}-{j}"
                assert s.put_nad(REF, "default", name, event_id=f"req-{i}-{j}", step="request-nad",
                                 state="PENDING", fields={"request": {"worker": i}}, ledger_key=f"req-{i}-{j}")
                assert s.put_nad(REF, "default", name, event_id=f"ready-{i}", step="apply-nad",
                                 state="APPLIED", fields={"config": f"cfg-{i}-{j}"})
        return dict(n.by_method)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        counts = list(pool.map(work, range(workers)))
    elapsed = time.monotonic() - started
    transactions = workers * per_worker * 2
    record_property("nad_transactions", transactions)
    record_property("seconds", round(elapsed, 2))
    print(f"\n{transactions} NAD transactions by {workers} workers on one cluster: {elapsed:.2f} s")
    assert sum(c.get("Commit", 0) for c in counts) == transactions, counts
    assert sum(c.get("BatchGetDocuments", 0) for c in counts) == transactions, counts
    assert sum(c.get("BeginTransaction", 0) + c.get("Rollback", 0) for c in counts) == 0
    nads = stores[0].list_nads(REF)
    assert len(nads) == workers * per_worker
    assert all(n["state"] == "APPLIED" and n["config"] == f"cfg-{n['name'][4:]}" for n in nads)
    entries = [e for e in stores[0].history(REF, page_size=1000)[0] if e.get("nad")]
    assert len(entries) == transactions
    assert elapsed < 30, f"{transactions} independent transactions took {elapsed:.1f} s: they contend"


def test_guarantee_3_expired_lease_can_be_taken_over(store: Store) -> None:
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


_WORKER = """
import sys, time
from pathlib import Path
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from shared.adapters.store import Store
store = Store(Settings.from_env())
ref = ClusterRef.parse(sys.argv[1])
store.claim(ref, event_id="evt-kill", step="install", ledger_key="evt-kill", lease_seconds=300)
Path(sys.argv[2]).write_text("bundle v1 applied\\n")   # the side effect
print("SIDE-EFFECT-DONE", flush=True)
time.sleep(600)                                         # killed here, before advance
"""


def test_guarantee_4_killed_worker_then_redelivery(store: Store, store_settings: Settings,
                                                   tmp_path: Path) -> None:
    _create(store)
    marker = tmp_path / "applied"
    env = {**os.environ, "MULTUS_PROVISIONER_PROJECT": store_settings.project,
           "MULTUS_PROVISIONER_COLLECTION_PREFIX": store_settings.collection_prefix}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, REF.path, str(marker)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "SIDE-EFFECT-DONE", (line, proc.stderr.read())
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert marker.read_text() == "bundle v1 applied\n"
    left = store.get_cluster(REF)
    assert left is not None and left.lease is not None and left.lease.holder == "evt-kill"
    assert not store.seen("evt-kill") and "evt-kill~install" not in _history_ids(store)
    # Another event cannot barge in while the dead worker's lease lives ...
    with pytest.raises(Transient):
        store.claim(REF, event_id="evt-other", step="precheck")
    # ... but Pub/Sub redelivers the same event, which resumes and completes the step.
    rec = store.claim(REF, event_id="evt-kill", step="install", ledger_key="evt-kill")
    marker.write_text("bundle v1 applied\n")  # the idempotent side effect, again
    rec = store.advance(REF, event_id="evt-kill", step="install", state="READY", ledger_key="evt-kill",
                        release=True, message="bundle applied")
    assert rec.state == "READY" and rec.lease is None
    with pytest.raises(AlreadyHandled):
        store.claim(REF, event_id="evt-kill", step="install", ledger_key="evt-kill")
    assert _history_ids(store).count("evt-kill~install") == 1
    assert len([e for e in store.history(REF)[0] if e["eventId"] == "evt-kill"]) == 1


def test_put_nad_compare_and_set_lets_exactly_one_concurrent_writer_win(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store.put_nad(REF, "default", "race", event_id="q", step="queue-nad", state="PENDING", fields={})

    def take(i: int) -> bool:
        return store.put_nad(REF, "default", "race", event_id=f"w{i}", step="claim-nad", state="APPLYING",
                             fields={"claimOrder": f"{i:04d}"}, expect_states=("PENDING",), history=False)

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(take, range(6)))
    assert won.count(True) == 1, won
    doc = store.get_nad(REF, "default", "race")
    assert doc["state"] == "APPLYING" and doc["claimOrder"] == f"{won.index(True):04d}"
    # an unconditional writer is never lost: it re-reads and writes after the winner
    assert store.put_nad(REF, "default", "race", event_id="z", step="reject-nad", state="REJECTED", fields={})
    assert store.get_nad(REF, "default", "race")["state"] == "REJECTED"


def test_get_cluster_unless_seen_reads_both_in_one_rpc(store: Store) -> None:
    with store.count_rpcs() as n:
        assert store.get_cluster_unless_seen(REF, "never") == (None, False)
    assert n.total == 1
    store.claim(REF, event_id="g1", step="discover", ledger_key="g1", create_state="DISCOVERED")
    rec, seen = store.get_cluster_unless_seen(REF, "g1")
    assert rec is not None and rec.state == "DISCOVERED" and not seen
    store.record_ledger("g1", event_id="g1", step="discover", outcome="ok", cluster=REF)
    assert store.get_cluster_unless_seen(REF, "g1") == (None, True)


def test_every_call_carries_an_explicit_deadline_and_retry_policy(store: Store) -> None:
    """retry= and timeout= are the client's public arguments: one policy, bounded by the store's timeout."""
    from google.api_core import exceptions as gexc

    from shared.adapters.store import call_options

    opts = call_options(2.5)
    assert opts["timeout"] == 2.5 and opts["retry"].timeout == 2.5
    retryable = opts["retry"]._predicate
    assert retryable(gexc.ServiceUnavailable("x")) and retryable(gexc.InternalServerError("x"))
    assert not retryable(gexc.Aborted("x")) and not retryable(gexc.PermissionDenied("x"))
    assert store._opts["timeout"] == store.timeout == store.settings.api_timeout_seconds
