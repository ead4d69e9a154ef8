"""Measure the Firestore store: RPCs per operation and the cost of contention, on the emulator.

    .venv/bin/python -m scripts.store_rpcs [--workers 8] [--per-worker 4]

Uses FIRESTORE_EMULATOR_HOST when set, else starts Google's emulator (sandbox.emulators) for
the run. Prints a Markdown table of RPCs per store operation (counted by the gRPC interceptor
`Store.count_rpcs()`, not estimated) and the wall time of three concurrent workloads:
independent NAD documents (the design), one event delivered concurrently, and different events
writing one cluster document (what the design avoids).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from sandbox.emulators import Emulators
from shared.adapters.store import AlreadyHandled, Store
from shared.core.errors import Transient
from shared.core.records import NadRecord, NadState
from shared.core.refs import ClusterRef
from shared.core.settings import Settings

REF = ClusterRef.of("bench-project", "us-central1", "bench")


@contextlib.contextmanager

def _to(state: NadState) -> Callable[[NadRecord], NadRecord]:
    """A `put_nad` change that sets the record's state."""
    return lambda cur: replace(cur, state=state)

def firestore() -> Iterator[None]:
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        yield
        return
    with Emulators(project="multus-bench", pubsub=False) as emu:
        os.environ.update(emu.env())
        yield


def settings() -> Settings:
    return Settings(project="multus-bench", collection_prefix=f"bench{uuid.uuid4().hex[:8]}_")


def rpcs(store: Store, label: str, fn: Callable[[], Any], rows: list[tuple[str, int, str]]) -> None:
    with store.count_rpcs() as n, contextlib.suppress(AlreadyHandled):
        fn()
    rows.append((label, n.total, ", ".join(f"{k} {v}" for k, v in sorted(n.by_method.items()))))


def per_operation() -> list[tuple[str, int, str]]:
    s = Store(settings())
    rows: list[tuple[str, int, str]] = []
    rpcs(s, "claim (creates the cluster document)", lambda: s.claim(
        REF, event_id="e1", step="discover", ledger_key="e1", create_state="DISCOVERED"), rows)
    rpcs(s, "advance (state + fields + history + ledger, release)", lambda: s.advance(
        REF, event_id="e1", step="discover", state="AWAITING_NODE_POOL", fields={"findings": []},
        ledger_key="e1", release=True), rows)
    rpcs(s, "claim (existing document)", lambda: s.claim(REF, event_id="e2", step="install",
                                                           ledger_key="e2"), rows)
    rpcs(s, "advance with next_step (lease renewed)", lambda: s.advance(
        REF, event_id="e2", step="install", state="INSTALLING", next_step="apply-nads"), rows)
    rpcs(s, "release (retry: lastError, attempts, history)", lambda: s.release(
        REF, event_id="e2", step="apply-nads", error="timeout"), rows)
    rpcs(s, "advance of a handled event (AlreadyHandled, rolled back)", lambda: s.advance(
        REF, event_id="e1", step="discover", ledger_key="e1"), rows)
    rpcs(s, "put_nad (ledger + NAD document + history)", lambda: s.put_nad(REF, "default", "net-a",
                                                                           change=_to(NadState.APPLIED),
                                                                           event_id="n1", step="apply-nad",
                                                                           ledger_key="n1"),
        rows)
    rpcs(s, "put_nad duplicate (returns False)", lambda: s.put_nad(REF, "default", "net-a",
                                                                   change=_to(NadState.APPLIED), event_id="n1",
                                                                   step="apply-nad", ledger_key="n1"),
        rows)
    rpcs(s, "record_rejection (+ history + ledger)", lambda: s.record_rejection(
        event_id="r1", cluster=REF, reason="bad", problems=[], kind="invalid", ledger_key="r1"), rows)
    rpcs(s, "record_ledger", lambda: s.record_ledger("x1", event_id="x1", step="s", outcome="ok",
                                                      cluster=None), rows)
    rpcs(s, "seen", lambda: s.seen("x1"), rows)
    rpcs(s, "get_cluster", lambda: s.get_cluster(REF), rows)
    rpcs(s, "get_nad", lambda: s.get_nad(REF, "default", "net-a"), rows)
    rpcs(s, "list_nads", lambda: s.list_nads(REF), rows)
    rpcs(s, "history (one page)", lambda: s.history(REF), rows)
    return rows


def timed(workers: int, fn: Callable[[int], Any]) -> tuple[float, list[Any]]:
    barrier = threading.Barrier(workers)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(run, range(workers)))
    return time.monotonic() - started, out


def contention(workers: int, per_worker: int) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    st = settings()
    setup = Store(st)
    setup.claim(REF, event_id="c", step="discover", create_state="DISCOVERED")
    setup.advance(REF, event_id="c", step="discover", release=True)
    stores = [Store(st) for _ in range(workers)]

    def nads(i: int) -> int:
        s = stores[i]
        with s.count_rpcs() as n:
            for j in range(per_worker):
                s.put_nad(REF, "default", f"n-{i}-{j}", change=_to(NadState.PENDING), event_id=f"q-{i}-{j}",
                          step="request-nad", ledger_key=f"q-{i}-{j}")
                s.put_nad(REF, "default", f"n-{i}-{j}", change=_to(NadState.APPLIED), event_id=f"a-{i}",
                          step="apply-nad")
        return n.by_method["BeginTransaction"]

    seconds, begins = timed(workers, nads)
    total = workers * per_worker * 2
    rows.append((f"{total} put_nad by {workers} workers, different NADs of one cluster", seconds,
                 f"{sum(begins)} transactions begun for {total} (0 retries)" if sum(begins) == total
                 else f"{sum(begins) - total} retries"))

    def duplicate(i: int) -> str:
        s = stores[i]
        try:
            s.claim(REF, event_id="dup", step="precheck", ledger_key="dup")
            s.advance(REF, event_id="dup", step="precheck", state="READY", ledger_key="dup", release=True)
            return "done"
        except AlreadyHandled:
            return "duplicate"
        except Transient:
            return "retry"

    seconds, out = timed(min(workers, 5), duplicate)
    rows.append((f"one event delivered {len(out)}x at once (claim + advance each)", seconds,
                 ", ".join(f"{k} {out.count(k)}" for k in sorted(set(out)))))

    small = min(workers, 4)

    def same_doc(i: int) -> tuple[int, int]:
        s = stores[i]
        gave_up = 0
        with s.count_rpcs() as n:
            for j in range(2):
                try:
                    s.advance(REF, event_id=f"w-{i}-{j}", step="note", fields={f"worker{i}": j})
                except Transient:
                    gave_up += 1
        return n.by_method["BeginTransaction"], gave_up

    seconds, out = timed(small, same_doc)
    rows.append((f"{small * 2} advance by {small} workers on ONE cluster document (avoided by design)", seconds,
                 f"{sum(b for b, _ in out) - small * 2} transaction attempts beyond one each; "
                 f"{sum(g for _, g in out)} gave up (Transient after {stores[0].max_attempts} attempts)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--per-worker", type=int, default=4)
    args = parser.parse_args()
    with firestore():
        print("| operation | RPCs | by method |\n|---|---|---|")
        for label, n, detail in per_operation():
            print(f"| {label} | {n} | {detail} |")
        print("\n| concurrent workload | wall s | notes |\n|---|---|---|")
        for label, seconds, detail in contention(args.workers, args.per_worker):
            print(f"| {label} | {seconds:.2f} | {detail} |")


if __name__ == "__main__":
    main()
