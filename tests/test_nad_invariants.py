"""The NAD invariants under random, concurrent, duplicated and reordered requests (issue 12).

Seeded random sequences of apply, update and delete over several NADs and two masters, with
ranges drawn from a small set so that overlaps are frequent, are delivered through the real
function (HTTP push to `on_nad_request` of the sandbox stack, as Pub/Sub does): each step is a
batch of requests pushed at once by several threads, some of them twice (a Pub/Sub redelivery:
same message id, at once or in a later step), some with a `request_id` republished under a new
message id; a push answered 5xx is pushed again, as Pub/Sub would; now and then a reconcile run
(pushed to `reconcile`, scoped to the cluster) compares records and cluster at the same time.
After every settled step (all pushes acknowledged) and at the end:

  (a) every managed object on the cluster has a record whose applied part matches it;
  (b) every record with an applied part has its object;
  (c) no two objects on one master overlap;
  (d) every request has an outcome (its ledger entry; no record is left in flight).

The seed is printed (and named in every failure); `NAD_INVARIANT_SEED` replays one,
`NAD_INVARIANT_STEPS` (requests, default 150) runs longer: `scripts/bench.py --nad-invariants`.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from shared.core import decisions as d
from shared.core import nad as nadlib
from tests.fakes import nad_docs
from tests.fixtures_stack import push, ref_of, wait_state

pytestmark = pytest.mark.e2e

NAMES = ("n0", "n1", "n2", "n3", "n4")
MASTERS = ("eth1", "eth2")
RANGES = ("172.16.1.0/26", "172.16.1.64/26", "172.16.1.128/26", "172.16.1.192/26", "172.16.1.0/25",
          "172.16.1.128/25", "172.16.1.32/27", "172.16.1.96/27", "172.16.1.160/27", "172.16.1.224/27")
STEPS = int(os.environ.get("NAD_INVARIANT_STEPS", "150"))
BATCH = (2, 7)
THREADS = 6
PUSH_ATTEMPTS = 400  # 5xx answers (a NAD busy with another request) before the test gives up


@dataclass(frozen=True)
class Sent:
    """One request as published: its body, its message id and the ledger key it is recorded under."""

    body: dict[str, Any]
    message_id: str

    @property
    def label(self) -> str:
        return f"{self.body.get('name', 'reconcile')}:{self.body.get('action', 'apply')}:{self.body.get('range', '')}"


def make_request(rng: random.Random, path: str) -> dict[str, Any]:
    body: dict[str, Any] = {"cluster": path, "name": rng.choice(NAMES)}
    if rng.random() < 0.25:
        body["action"] = "delete"
    else:
        body["master"] = rng.choice(MASTERS)
        body["range"] = rng.choice(RANGES)
    if rng.random() < 0.2:
        body["request_id"] = uuid.UUID(int=rng.getrandbits(128)).hex
    return body


def deliver(url: str, sent: Sent, binary: bool, attributes: dict[str, str] | None = None) -> None:
    """Push until acknowledged, as Pub/Sub redelivers a message answered 5xx."""
    payload = json.dumps(sent.body).encode()
    for attempt in range(PUSH_ATTEMPTS):
        code = push(url, payload, sent.message_id, binary=binary, attributes=attributes)
        if 200 <= code < 300:
            return
        time.sleep(min(0.02 * (attempt + 1), 0.3))
    raise AssertionError(f"{sent.label} ({sent.message_id}) never acknowledged")


def check(store: Any, kube: Any, ref: Any, sent: list[Sent], where: str) -> None:
    from shared.flows.nad import _nad_ledger_key

    records = {(n.namespace, n.name): n for n in store.list_nads(ref)}
    objects = {d.nad_object_key(o): o for o in kube.list_managed_nads()}
    problems = []
    for key, obj in objects.items():  # (a)
        rec = records.get(key)
        part = d.applied_part(rec) if rec else None
        found = nadlib.config_range(obj)
        if part is None:
            problems.append(f"(a) {key} is on the cluster ({found}) without an applied record "
                            f"({rec and rec.state}: {rec and rec.message})")
        elif found != (part.master, part.range) or rec.config != obj["spec"]["config"]:
            problems.append(f"(a) {key}: on the cluster {found}, recorded {part.master, part.range}")
    for key, rec in records.items():  # (b)
        if d.applied_part(rec) is not None and key not in objects:
            problems.append(f"(b) {key} is recorded on the cluster ({rec.state}, "
                            f"{d.applied_part(rec)}) but is not there")
    live = sorted((nadlib.config_range(o) or ("", ""), k) for k, o in objects.items())
    for i, ((m1, r1), k1) in enumerate(live):  # (c)
        for (m2, r2), k2 in live[i + 1:]:
            if m1 == m2 and r1 and r2 and nadlib.ranges_overlap(r1, r2):
                problems.append(f"(c) {k1} {r1} and {k2} {r2} overlap on master {m1}")
    for rec in records.values():  # (d)
        if rec.state in (d.NAD_APPLYING, d.NAD_DELETING, d.NAD_PENDING):
            problems.append(f"(d) {rec.name} is left {rec.state}: {rec.message}")
    for s in sent:
        if "name" not in s.body:
            continue  # a reconcile run
        req = nadlib.parse_request(s.body)
        if not store.seen(_nad_ledger_key(s.message_id, req)):
            problems.append(f"(d) {s.label} ({s.message_id}) has no outcome")
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


def test_nad_invariants_hold_under_concurrent_duplicated_reordered_requests(stack, e2e_store, cluster_name):
    from tests.test_e2e import create, kube_engine

    seed = int(os.environ.get("NAD_INVARIANT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nNAD invariants: seed {seed}, {STEPS} requests (replay: NAD_INVARIANT_SEED={seed})")
    rng = random.Random(seed)
    ref = create(stack, cluster_name)
    wait_state(e2e_store, ref_of(stack, cluster_name), "READY", 40)
    kube = kube_engine(stack, cluster_name)
    url = stack.function_urls["on_nad_request"]
    reconcile_url = stack.function_urls["reconcile"]
    signed = stack.requester_attributes()  # the sandbox user's ID token, as request-nad attaches it
    sent: list[Sent] = []
    by_request_id: dict[str, Sent] = {}
    started, step, pushes = time.monotonic(), 0, 0
    with ThreadPoolExecutor(THREADS) as pool:
        while len(sent) < STEPS:
            step += 1
            batch: list[tuple[Sent, bool]] = []
            for _ in range(rng.randint(*BATCH)):
                body = make_request(rng, ref.path)
                rid = body.get("request_id")
                if rid in by_request_id or (rid and rng.random() < 0.5 and by_request_id):
                    # republished under a new message id: the same request, whatever the id says
                    first = by_request_id[rid] if rid in by_request_id else rng.choice(list(by_request_id.values()))
                    body = dict(first.body)
                s = Sent(body, f"inv-{seed}-{len(sent)}")
                sent.append(s)
                if body.get("request_id"):
                    by_request_id.setdefault(body["request_id"], s)
                batch.append((s, rng.random() < 0.5))
                if rng.random() < 0.3:  # redelivered at once (same message id)
                    batch.append((s, rng.random() < 0.5))
            if len(sent) > 3 and rng.random() < 0.5:  # a late redelivery of an earlier request
                batch.append((rng.choice(sent[:-1]), False))
            if rng.random() < 0.3:  # reconcile runs at the same time (it compares records and cluster)
                batch.append((Sent({"cluster": ref.path}, f"inv-{seed}-reconcile-{step}"), False))
            rng.shuffle(batch)
            pushes += len(batch)
            list(pool.map(lambda item: deliver(reconcile_url, *item) if "reconcile" in item[0].message_id
                          else deliver(url, *item, attributes=signed), batch))
            check(e2e_store, kube, ref, sent, f"seed {seed}, after step {step} ({len(sent)} requests)")
    elapsed = time.monotonic() - started
    states = [n.get("state") for n in nad_docs(e2e_store, ref)]
    print(f"NAD invariants: {len(sent)} requests, {pushes} pushes in {step} steps, {elapsed:.1f}s; "
          f"final states {sorted(states)}")
    # the sequences really exercised the rules: some requests were refused, some applied
    outcomes = [h.get("step") for h in e2e_store.history(ref, page_size=1000)[0] if h.get("nad")]
    assert "reject-nad" in outcomes and "apply-nad" in outcomes and "delete-nad" in outcomes, (seed, outcomes)
