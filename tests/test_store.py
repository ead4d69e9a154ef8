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

from shared.adapters.store import AlreadyHandled, Store, safe_id, translate
from shared.core.errors import Permanent, Transient
from shared.core.settings import Settings
from tests.fakes import nad_change, nad_doc, nad_docs
from tests.test_store_contract import REF, _create, _history_ids

pytestmark = pytest.mark.emulator
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(store_settings: Settings) -> Store:
    return Store(store_settings)


# --------------------------------------------------------------------------- basics

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


def test_policy_document(store: Store, firestore_client: Any) -> None:
    assert store.get_policy() is None
    firestore_client.collection(store.settings.collection("config")).document("policy").set(
        {"optInLabel": "multus=yes"})
    assert store.get_policy() == {"optInLabel": "multus=yes"}


def test_wire_errors_become_permanent(store: Store) -> None:
    _create(store)
    with pytest.raises(Permanent) as info:
        store.put_nad(REF, "default", "big", change=nad_change("PENDING", {"config": "x" * 1_100_000}), event_id="b",
                      step="s")
    assert info.value.code == "INVALID_ARGUMENT" and "config" in str(info.value)


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
        store.put_nad(REF, "default", "net-a", change=nad_change("APPLIED", {}), event_id="n1", step="apply-nad",
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
                assert s.put_nad(REF, "default", name, change=nad_change("PENDING", {"request": {"worker": i}}),
                                 event_id=f"req-{i}-{j}", step="request-nad", ledger_key=f"req-{i}-{j}")
                assert s.put_nad(REF, "default", name, change=nad_change("APPLIED", {"config": f"cfg-{i}-{j}"}),
                                 event_id=f"ready-{i}", step="apply-nad")
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
    assert all(n.state == "APPLIED" and n.config == f"cfg-{n.name[4:]}" for n in nads)
    entries = [e for e in stores[0].history(REF, page_size=1000)[0] if e.get("nad")]
    assert len(entries) == transactions
    assert elapsed < 30, f"{transactions} independent transactions took {elapsed:.1f} s: they contend"


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


def test_queries_decode_documents_as_the_library_does(store: Store, firestore_client: Any) -> None:
    """`list_nads` (ListDocuments, or a query for one state) and a request's first read (`_fetch`,
    BatchGetDocuments) decode each answer's protobuf themselves (no DocumentSnapshot, issue 21):
    every value type comes back as the library's own `stream()` and `get_all()` give it, with and
    without a projection (nested keys included), and the update time to the nanosecond."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter
    from google.cloud.firestore_v1.vector import Vector

    from shared.core.refs import ClusterRef

    _create(store)
    nads = firestore_client.collection(store.settings.collection("clusters")).document(REF.doc_id).collection("nads")
    other = firestore_client.document("elsewhere/doc")
    values = {"state": "APPLIED", "master": "eth1", "range": "172.16.1.0/28", "none": None, "yes": True, "n": 7,
              "big": 2**62, "x": 1.5, "nan": float("nan"), "at": datetime(2026, 12, 4, 8, 30, 1, 123456, tzinfo=UTC),
              "raw": b"\x00\xff", "where": firestore.GeoPoint(48.85, 2.35), "ref": other, "empty": {}, "list": [],
              "applied": {"range": "172.16.1.0/28", "master": "eth1", "at": datetime(2026, 1, 1, tzinfo=UTC),
                          "deep": {"list": [1, "two", None, {"three": [3.0]}]}},
              "vector": Vector([1.0, 2.5])}
    nads.document("default~all").set(values)
    nads.document("kube-system~other").set({"state": "PENDING", "master": "eth2"})
    for fields in (None, ("state", "master", "applied", "claim"), ("state", "applied.range", "applied.deep")):
        query = nads if fields is None else nads.select(list(fields))
        expected = {s.id: s.to_dict() for s in query.stream()}
        got = store.list_nads(REF, fields=fields)  # ListDocuments, projected by `mask`
        assert [(n.namespace, n.name) for n in got] == [("default", "all"), ("kube-system", "other")]
        for n in got:
            want = expected[f"{n.namespace}~{n.name}"]
            assert _typed({k: v for k, v in n.data.items() if k in want}) == _typed(want)
    (applied,) = store.list_nads(REF, state="APPLIED")  # one state: a query, decoded the same way
    assert _typed({k: v for k, v in applied.data.items() if k in values}) == _typed(
        next(nads.where(filter=FieldFilter("state", "==", "APPLIED")).stream()).to_dict())
    # a request's first look (`_fetch`): the same values and update time as `get_all`, None when absent
    refs = [nads.document("default~all"), nads.document("kube-system~other"), nads.document("default~absent")]
    snaps = {s.reference.path: s for s in firestore_client.get_all(refs)}
    fetched = store._fetch(refs)
    for ref in refs:
        snap = snaps[ref.path]
        if not snap.exists:
            assert fetched[ref.path] is None
            continue
        data, updated = fetched[ref.path]  # type: ignore[misc]
        assert _typed(data) == _typed(snap.to_dict()) and updated == snap.update_time
        assert updated.nanosecond == snap.update_time.nanosecond  # a write's precondition: nanoseconds kept
    assert nad_docs(store, ClusterRef.of("proj-one", "us-central1", "nobody")) == []


def _typed(value: Any) -> Any:
    """A value with the type of every part spelled out (True is not 1, 1.0 is not 1) and NaN and
    document references made comparable."""
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    if hasattr(value, "path") and hasattr(value, "_client"):
        return (type(value).__name__, value.path)
    return (type(value).__name__, repr(value))


def test_a_query_failing_at_its_start_is_retried_within_the_timeout(store_settings: Settings, emulators: Any,
                                                                    monkeypatch: Any) -> None:
    """`list_nads` reads through the store's call options: a ListDocuments answered UNAVAILABLE (before
    or after it reached Firestore) is sent again; one that keeps failing is the caller's Transient
    within the store's timeout, not the library's default minutes."""
    from sandbox.grpc_proxy import GrpcProxy

    with GrpcProxy(emulators.firestore_host) as proxy:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        store = Store(store_settings, timeout=1.0)
        _create(store)
        for i in range(3):
            assert store.put_nad(REF, "default", f"n{i}", change=nad_change("PENDING", {}), event_id=f"e{i}",
                                 step="s")
        method = "google.firestore.v1.Firestore/ListDocuments"
        proxy.faults.fail(method, "UNAVAILABLE", after=True)  # forwarded, its documents replaced by the error
        proxy.faults.fail(method, "UNAVAILABLE")
        with store.count_rpcs() as n:
            assert [x["name"] for x in nad_docs(store, REF)] == ["n0", "n1", "n2"]
        assert n.by_method["ListDocuments"] == 3
        proxy.faults.fail(method, "UNAVAILABLE", times=1000)
        started = time.monotonic()
        with pytest.raises(Transient):
            nad_docs(store, REF)
        assert time.monotonic() - started < 5 * store.timeout


def test_a_nad_record_sends_only_the_fields_that_change(store: Store, monkeypatch: Any) -> None:
    """The update of a NAD's document leaves out a field written with the value (and the type)
    it has, and a delete of an absent field: the record after a claim rewrites the request, names
    and range as the claim wrote them. The document ends the same."""
    from shared.ports import DELETE

    _create(store)
    request = {"name": "n", "routes": [{"dst": "10.0.0.0/8"}], "verify": False, "mtu": 1500}
    claimed = store.put_nad_version(REF, "default", "n",
                                    change=nad_change("APPLYING", {"request": request, "master": "eth1",
                                                                 "resourceVersion": "1"}),
                                    event_id="e1", step="claim-nad", history=False)
    assert claimed is not None
    commits: list[list[Any]] = []  # the writes of each batch committed (the batch clears them)
    batch = store.client.batch

    def recorded() -> Any:
        b = batch()
        commit = b.commit
        b.commit = lambda **kw: commits.append(list(b._write_pbs)) or commit(**kw)
        return b

    monkeypatch.setattr(store.client, "batch", recorded)

    def sent() -> set[str]:
        return set(commits[-1][0].update_mask.field_paths)  # the NAD document is the first write

    fields = {"request": dict(request), "master": "eth2", "resourceVersion": "2", "reasons": DELETE, "config": "{}"}
    assert store.put_nad(REF, "default", "n", change=nad_change("APPLIED", fields), event_id="e2", step="apply-nad",
                         known=claimed)
    assert sent() == {"master", "resourceVersion", "config", "state", "stateSince", "updatedAt"}
    again = {"request": {**request, "mtu": 9000}, "master": "eth2", "resourceVersion": "2"}
    assert store.put_nad(REF, "default", "n", change=nad_change("APPLIED", again), event_id="e3", step="apply-nad")
    assert sent() == {"request", "updatedAt"}
    doc = nad_doc(store, REF, "default", "n")
    assert doc is not None and doc["request"] == {**request, "mtu": 9000} and doc["master"] == "eth2"
    assert doc["resourceVersion"] == "2" and doc["config"] == "{}" and doc["state"] == "APPLIED"
    assert "reasons" not in doc
