"""The bad-input corpus (tests/corpus/*.jsonl) delivered to the real functions over HTTP.

Every case names the function that receives it, its payload and its documented outcome. The
module creates one READY cluster on the sandbox stack, delivers every case (as a raw Pub/Sub
push, and a subset also as an Eventarc binary CloudEvent) in parallel, then checks:

- no delivery is answered 5xx (bad input is recorded and acknowledged, never retried);
- the outcome the function logged and what Firestore holds match the case's `expect`;
- nothing malformed reached the cluster: the requests its API server counted during the run
  are exactly one PATCH per accepted NAD delivery (and the DELETE of the one delete case), and
  the managed NADs on it are exactly the accepted ones, each a conflist that validates.

`tests/corpus/README.md` is generated from the files: `python -m tests.test_corpus` rewrites it
and `test_readme_is_generated_from_the_corpus` fails when it is stale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import nad_doc

CORPUS = Path(__file__).resolve().parent / "corpus"
README = CORPUS / "README.md"
ROOT = CORPUS.parent.parent
FUNCTIONS = ("on_nad_request", "on_cluster_event", "on_node_pool_event", "reconcile")
PAYLOAD_KEYS = ("json", "text", "base64", "generate", "envelope", "body", "body_text")
OUTCOMES = ("done", "duplicate", "ignored", "rejected", "pending", "waiting", "failed")
RECORDS = ("cluster", "global", "none")
EXPECT_KEYS = {"outcome", "kind", "field", "record", "nad", "reason", "name", "namespace", "target", "cluster",
               "history", "kube"}
PLACEHOLDERS = ("<<CLUSTER>>", "<<UNKNOWN>>", "<<PROJECT>>", "<<LOCATION>>", "<<NAME>>", "<<UNKNOWN_NAME>>")
LOCATION = "us-central1"
NAD_PATH = "/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions/{name}"


# --------------------------------------------------------------------------------------------
# The corpus as data
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    file: str
    function: str
    about: str
    payload_key: str
    payload: Any
    expect: dict[str, Any]
    forms: tuple[str, ...] = ("push",)
    phase: int = 0
    # The requester's ID token in the message attributes (issue 24): every NAD request is signed by
    # the sandbox user unless the case says "none", "expired", "wrong-audience" or "other-key".
    token: str = "sandbox"

    @property
    def target(self) -> str:
        """Which cluster the case is about: the module's READY cluster or one nobody tracks."""
        return self.expect.get("target", "ready")

    def nad_key(self) -> tuple[str, str]:
        body = self.payload if self.payload_key == "json" and isinstance(self.payload, dict) else {}
        name = self.expect.get("name") or body.get("name")
        namespace = self.expect.get("namespace") or body.get("namespace") or "default"
        return namespace, name


def load_corpus() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            keys = [k for k in PAYLOAD_KEYS if k in raw]
            assert len(keys) == 1, f"{path.name}:{n}: exactly one payload key of {PAYLOAD_KEYS}, got {keys}"
            cases.append(Case(id=raw["id"], file=path.stem, function=raw["function"], about=raw["about"],
                              payload_key=keys[0], payload=raw[keys[0]], expect=raw["expect"],
                              forms=tuple(raw.get("forms", ("push",))), phase=raw.get("phase", 0),
                              token=raw.get("token", "sandbox")))
    return cases


CASES = load_corpus()


def _substitute(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, repl in subs.items():
            value = value.replace(key, repl)
        return value
    if isinstance(value, list):
        return [_substitute(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, subs) for k, v in value.items()}
    return value


def _generate(spec: dict[str, Any], subs: dict[str, str]) -> bytes:
    """Large or deep payloads are described, not stored, so the repository stays small."""
    kind = spec["kind"]
    if kind == "padded":
        base = _substitute(spec["base"], subs)
        size = len(json.dumps({**base, "padding": ""}).encode())
        return json.dumps({**base, "padding": "x" * (spec["bytes"] - size)}).encode()
    if kind == "deep-array":
        return b"[" * spec["depth"] + b"]" * spec["depth"]
    if kind == "deep-object":
        nested = '{"a":' * spec["depth"] + "1" + "}" * spec["depth"]
        text = json.dumps(_substitute({**spec["base"], spec["at"]: "<<DEEP>>"}, subs))
        return text.replace('"<<DEEP>>"', nested).encode()
    raise ValueError(f"unknown generator {kind!r}")


def payload_bytes(case: Case, subs: dict[str, str]) -> bytes:
    if case.payload_key == "json":
        return json.dumps(_substitute(case.payload, subs), ensure_ascii=False).encode()
    if case.payload_key == "text":
        return _substitute(case.payload, subs).encode()
    if case.payload_key == "base64":
        return base64.b64decode(case.payload)
    if case.payload_key == "generate":
        return _generate(case.payload, subs)
    raise ValueError(case.payload_key)


# --------------------------------------------------------------------------------------------
# README, generated from the files
# --------------------------------------------------------------------------------------------

def describe(expect: dict[str, Any]) -> str:
    out = expect["outcome"]
    if expect.get("kind"):
        out += f" ({expect['kind']}, field `{expect.get('field') or '-'}`)"
    parts = [out]
    record = expect.get("record")
    if record == "cluster":
        parts.append("rejection recorded on the cluster")
    elif record == "global":
        parts.append("rejection recorded at top level")
    if expect.get("nad"):
        parts.append(f"NAD {expect['nad']}" + (f" ({expect['reason']})" if expect.get("reason") else ""))
    if "cluster" in expect:
        parts.append(f"cluster {expect['cluster'] or 'not tracked'}")
    if expect.get("history"):
        parts.append(f"history step `{expect['history']}`")
    if expect.get("kube"):
        parts.append(f"one cluster {expect['kube']}")
    if expect.get("target") == "unknown":
        parts.append("(untracked cluster)")
    return "; ".join(parts)


def _cell(text: str) -> str:
    shown = json.dumps(text, ensure_ascii=True)[1:-1] if any(not c.isprintable() or ord(c) > 126 for c in text) \
        else text
    return shown.replace("|", "\\|").replace("`", "'")


def render_readme(cases: list[Case]) -> str:
    by_file: dict[str, list[Case]] = {}
    for c in cases:
        by_file.setdefault(c.file, []).append(c)
    binary = sum(1 for c in cases if "binary" in c.forms)
    lines = [
        "# Bad-input corpus",
        "",
        "Generated by `python -m tests.test_corpus` from the `*.jsonl` files in this folder; "
        "`tests/test_corpus.py` fails when this page is stale and delivers every case to the real functions.",
        "",
        f"{len(cases)} cases ({binary} also delivered as an Eventarc binary CloudEvent).",
        "",
        "One JSON object per line: `id`, `function` (the entry point that receives it), `about`, one payload "
        "key, optional `forms` (`push` = raw Pub/Sub push, `binary` = Eventarc CloudEvent; default push only), "
        "optional `phase` (phase 1 is delivered after phase 0 finished), optional `token` (the ID token a NAD "
        "request carries: the sandbox user's by default, `none`, `expired`, `wrong-audience`, `other-key`), "
        "and `expect`.",
        "",
        "Payload keys: `json` (encoded with a JSON encoder), `text` (UTF-8 as is), `base64` (raw bytes), "
        "`generate` (`padded` to N bytes, `deep-array` / `deep-object` of depth N: large inputs stay out of git), "
        "`envelope` (fields of the Pub/Sub message itself, e.g. broken base64), `body` / `body_text` "
        "(the whole CloudEvent data, binary form only). Placeholders: `<<CLUSTER>>` (the READY cluster's path), "
        "`<<PROJECT>>`, `<<LOCATION>>`, `<<NAME>>`, and `<<UNKNOWN>>` / `<<UNKNOWN_NAME>>` (a cluster no one "
        "tracks, unique per case).",
        "",
        "Outcomes (what the function logs): `done`, `pending`, `waiting`, `duplicate`, `ignored` (not ours: "
        "acknowledged, nothing recorded but the ledger/history), `rejected` (recorded: top level when no "
        "cluster could be read, else on the cluster; the NAD document too when its name and namespace are "
        "valid). Every delivery is answered 2xx; no request reaches the cluster for anything rejected.",
    ]
    for name, group in by_file.items():
        lines += ["", f"## {name} ({len(group)})", "", "| id | function | forms | input | expected |",
                  "|---|---|---|---|---|"]
        for c in group:
            forms = "+".join(c.forms) + (f", phase {c.phase}" if c.phase else "") + \
                (f", token {c.token}" if c.token != "sandbox" else "")
            lines.append(f"| `{c.id}` | {c.function} | {forms} | {_cell(c.about)} | {_cell(describe(c.expect))} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Offline checks of the corpus itself
# --------------------------------------------------------------------------------------------

def test_corpus_is_large_unique_and_well_formed() -> None:
    assert len(CASES) >= 100
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    for c in CASES:
        assert c.function in FUNCTIONS, c.id
        assert set(c.forms) <= {"push", "binary"} and c.forms, c.id
        assert c.phase in (0, 1), c.id
        e = c.expect
        assert set(e) <= EXPECT_KEYS, (c.id, set(e) - EXPECT_KEYS)
        assert e["outcome"] in OUTCOMES and e.get("record", "none") in RECORDS, c.id
        if e["outcome"] == "rejected" and e.get("record") != "none":
            assert "kind" in e and "field" in e, c.id
        if c.payload_key in ("body", "body_text"):
            assert c.forms == ("binary",), f"{c.id}: a non-envelope body only exists as a CloudEvent"
    covered = {c.function for c in CASES}
    assert covered == set(FUNCTIONS)
    assert sum("binary" in c.forms for c in CASES) >= 20


def test_every_issue_item_has_cases() -> None:
    """The checklist of issue 8 "Bad input", each item matched by at least one case id."""
    ids = " ".join(c.id for c in CASES)
    for needle in ("base64", "non-utf8", "not-json", "array", "number", "missing", "10mb", "deep",
                   "name-slash", "dotdot", "upper", "cyrillic", "64-chars", "host-bits", "slash-0", "slash-32",
                   "ipv6", "outside-secondary", "overlap", "start-after-end", "exclude-outside", "master-space",
                   "master-double-quote", "master-newline", "other-service", "other-method", "first-only",
                   "delete-unknown",
                   # issue 24: forged deletes, kube-system deletes, foreign NAD takeover, unknown projects,
                   # escape sequences, unsigned and forged tokens
                   "forged-delete", "kube-system-delete", "foreign-takeover", "unknown-project", "escape",
                   "unsigned", "wrongly-signed"):
        assert needle in ids, needle
    for name in ("cluster", "name", "namespace", "master", "mode", "range", "range-start", "range-end",
                  "gateway", "action", "request-id", "exclude"):
        for flavour in ("json", "yaml", "shell"):
            assert f"inj-{name}-{flavour}" in ids


def test_generators_make_what_they_say() -> None:
    subs = {"<<CLUSTER>>": "projects/p-proj1/locations/us-central1/clusters/c"}
    big = next(c for c in CASES if c.id == "env-10mb")
    assert len(payload_bytes(big, subs)) == 10 * 1024 * 1024
    deep = next(c for c in CASES if c.id == "pl-deep-object-in-name")
    text = payload_bytes(deep, subs).decode()
    assert text.count('{"a":') == 5000 and text.startswith('{"cluster": "projects/p-proj1/')


def test_readme_is_generated_from_the_corpus() -> None:
    assert README.read_text() == render_readme(CASES), "stale: run `.venv/bin/python -m tests.test_corpus`"


# --------------------------------------------------------------------------------------------
# Delivery to the real functions
# --------------------------------------------------------------------------------------------

@dataclass
class Delivery:
    case: Case
    form: str
    message_id: str
    status: int = 0

    @property
    def event_ids(self) -> tuple[str, ...]:
        """The ids the function may log or record it under (an over-long id is cut to 256)."""
        override = self.case.payload.get("messageId") if self.case.payload_key == "envelope" else None
        ids = [self.message_id]
        if isinstance(override, str):
            ids += [override, override[:256]]
        return tuple(ids)


@dataclass
class Run:
    stack: Any
    store: Any
    ready: Any
    subs_base: dict[str, str]
    token: str
    deliveries: list[Delivery] = field(default_factory=list)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    stats_diff: Counter = field(default_factory=Counter)
    rejections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def unknown(self, case: Case) -> Any:
        from shared.core.refs import ClusterRef

        digest = hashlib.sha256(f"{self.token}/{case.id}".encode()).hexdigest()[:10]
        return ClusterRef(self.ready.project, LOCATION, f"u-{digest}")

    def subs(self, case: Case) -> dict[str, str]:
        unknown = self.unknown(case)
        return {**self.subs_base, "<<UNKNOWN>>": unknown.path, "<<UNKNOWN_NAME>>": unknown.cluster}

    def ref(self, case: Case) -> Any:
        return self.unknown(case) if case.target == "unknown" else self.ready


def _envelope(message: dict[str, Any]) -> dict[str, Any]:
    return {"message": message, "subscription": "projects/multus-sandbox/subscriptions/corpus"}


def attributes_of(case: Case, run: Run) -> dict[str, str]:
    """The message attributes of a delivery: a NAD request's ID token, as the case says."""
    if case.function != "on_nad_request" or case.token == "none":
        return {}
    if case.token == "other-key":
        from sandbox.identity import SANDBOX_USER, Issuer
        from shared.core.requesters import token_attributes

        return token_attributes(Issuer().token("multus-provisioner", SANDBOX_USER))
    claims: dict[str, Any] = {"expired": {"now": time.time() - 7200}, "wrong-audience": {"aud": "another-service"},
                              "sandbox": {}}[case.token]
    return dict(run.stack.requester_attributes(**claims))


def body_and_headers(d: Delivery, run: Run) -> tuple[bytes, dict[str, str]]:
    case = d.case
    if case.payload_key == "body":
        body = json.dumps(case.payload).encode()
    elif case.payload_key == "body_text":
        body = case.payload.encode()
    else:
        message: dict[str, Any] = {"messageId": d.message_id, "publishTime": datetime.now(UTC).isoformat(),
                                   "attributes": attributes_of(case, run)}
        if case.payload_key == "envelope":
            message.update(case.payload)
        else:
            message["data"] = base64.b64encode(payload_bytes(case, run.subs(case))).decode()
        body = json.dumps(_envelope(message)).encode()
    headers = {"content-type": "application/json"}
    if d.form == "binary":
        headers.update({"ce-id": d.message_id, "ce-specversion": "1.0",
                        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                        "ce-source": "//pubsub.googleapis.com/projects/multus-sandbox/topics/corpus",
                        "ce-time": datetime.now(UTC).isoformat()})
    return body, headers


def _deliver(d: Delivery, run: Run) -> None:
    """Push once, and again after a 500 as Pub/Sub redelivers (two copies of one NAD's request
    contend: the one that finds the NAD busy is answered 500 and comes back)."""
    import requests

    body, headers = body_and_headers(d, run)
    for attempt in range(10):
        d.status = requests.post(run.stack.function_urls[d.case.function], data=body, headers=headers,
                                 timeout=120).status_code
        if d.status != 500:
            return
        time.sleep(min(2.0, 0.2 * 2 ** attempt))


def _outcomes(stack: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for fn in FUNCTIONS:
        for line in stack.function_log(fn).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "outcome" in entry and "eventId" in entry:
                out.setdefault(entry["eventId"], []).append(entry["outcome"])
    return out


def _writes_cluster_doc(case: Case) -> bool:
    """Audit notes on the READY cluster write its own document. Concurrent writers of one document
    contend (the loser is answered 500 and redelivered by Pub/Sub: tests/test_concurrency.py's
    subject), so the corpus delivers these one at a time, after the parallel batch."""
    return bool(case.expect.get("history")) and case.target == "ready"


@pytest.fixture(scope="module")
def run(stack: Any) -> Iterator[Run]:
    from sandbox.gke.scenario import NodePoolSpec
    from shared.adapters.store import Store
    from shared.core.refs import ClusterRef
    from shared.core.settings import Settings
    from tests.fixtures_stack import wait_for, wait_state

    store = Store(Settings.from_env(stack.env))
    name = f"corpus-{uuid.uuid4().hex[:8]}"
    ready = ClusterRef(stack.project, LOCATION, name)
    stack.gke.create_cluster(name, wait=False, labels={"multus-provisioner": "enabled"},
                             node_pools=(NodePoolSpec("default-pool", node_count=1),))
    wait_state(store, ready, "READY", 60)
    # READY is written before the last step lets go of the cluster's lease; deliveries that find
    # it held would (rightly) be answered "busy, retry", which is not what the corpus is about.
    wait_for(lambda: not store.get_cluster(ready).data.get("lease"), 30, "the install to release its lease")
    server = stack.kube_server(name)
    _foreign_nad(stack, ready, "create")  # a NAD someone else made: the takeover cases aim at it
    r = Run(stack=stack, store=store, ready=ready, token=uuid.uuid4().hex[:8],
            subs_base={"<<CLUSTER>>": ready.path, "<<PROJECT>>": ready.project, "<<LOCATION>>": LOCATION,
                       "<<NAME>>": name})
    for c in CASES:
        for form in c.forms:
            r.deliveries.append(Delivery(c, form, f"corpus-{r.token}-{c.id}-{form}"))
    before = Counter(server.stats.snapshot())
    with ThreadPoolExecutor(8) as pool:
        for phase in (0, 1):
            batch = [d for d in r.deliveries if d.case.phase == phase]
            list(pool.map(lambda d: _deliver(d, r), [d for d in batch if not _writes_cluster_doc(d.case)]))
            for d in (d for d in batch if _writes_cluster_doc(d.case)):
                _deliver(d, r)
    r.stats_diff = Counter(server.stats.snapshot()) - before
    r.outcomes = _outcomes(stack)
    refs = {r.ready.doc_id: r.ready}
    refs.update({r.unknown(c).doc_id: r.unknown(c) for c in CASES if c.target == "unknown"})
    r.rejections = {"global": {x["eventId"]: x for x in store.list_rejections(None, limit=5000)}}
    for doc_id, ref in refs.items():
        if any(c.expect.get("record") == "cluster" and r.ref(c).doc_id == doc_id for c in CASES):
            r.rejections[doc_id] = {x["eventId"]: x for x in store.list_rejections(ref, limit=5000)}
    yield r


FOREIGN = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "foreign-net", "namespace": "default", "labels": {"team": "platform"}},
           "spec": {"config": '{"cniVersion":"0.3.1","name":"foreign-net","type":"macvlan"}'}}


def _foreign_nad(stack: Any, ready: Any, what: str) -> Any:
    """Create (as kubectl would) or read back default/foreign-net on the READY cluster."""
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    path = Path(stack.env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / f"{ready.cluster}.yaml"
    kube = Kube(kconfig.new_client_from_config(config_file=str(path)))
    if what == "create":
        kube._call("POST", "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions",
                   query={"fieldManager": "kubectl-client-side-apply"}, body=FOREIGN)
    return kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "foreign-net")


def _rejection(run: Run, where: str, d: Delivery) -> dict[str, Any] | None:
    found = run.rejections.get(where, {})
    return next((found[i] for i in d.event_ids if i in found), None)


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_outcome(case: Case, run: Run) -> None:
    e = case.expect
    ref = run.ref(case)
    mine = [d for d in run.deliveries if d.case is case]
    # The same valid request delivered in two forms at once is two requests for one NAD: one
    # applies it, the other may find its claim taken over ("superseded") — never both lost.
    superseded_ok = e["outcome"] == "done" and len(mine) > 1
    outcomes = []
    for d in mine:
        assert 200 <= d.status < 300, f"{case.id} ({d.form}): HTTP {d.status}"
        logged = next((run.outcomes[i] for i in d.event_ids if i in run.outcomes), None)
        outcomes += logged or []
        if superseded_ok and logged == ["superseded"]:
            continue
        assert logged == [e["outcome"]], f"{case.id} ({d.form}): logged {logged}, expected {e['outcome']}"
    assert e["outcome"] in outcomes, (case.id, outcomes)
    for d in mine:
        record = e.get("record", "none")
        at_cluster = _rejection(run, ref.doc_id, d) if ref.doc_id in run.rejections else None
        at_top = _rejection(run, "global", d)
        if record == "none":
            assert at_cluster is None and at_top is None, f"{case.id}: unexpected rejection record"
        else:
            rec = at_cluster if record == "cluster" else at_top
            other = at_top if record == "cluster" else at_cluster
            assert rec is not None and other is None, f"{case.id} ({d.form}): rejection not recorded at {record}"
            assert rec["kind"] == e["kind"], (case.id, rec["kind"], rec["problems"])
            fields = [p.get("field") for p in rec["problems"]]
            assert e["field"] in fields, (case.id, rec["problems"])
            assert rec["cluster"] == (ref.path if record == "cluster" else None)
        if e.get("history"):
            entries, _ = run.store.history(ref, page_size=1000)
            assert any(h.get("eventId") in d.event_ids and h["step"] == e["history"] for h in entries), case.id
    if e.get("nad"):
        namespace, name = case.nad_key()
        doc = nad_doc(run.store, ref, namespace, name)
        assert doc is not None and doc["state"] == e["nad"], (case.id, doc and doc.get("state"),
                                                              doc and doc.get("message"))
        if e["nad"] in ("REJECTED", "FAILED"):
            said = " ".join([doc.get("message", ""), *doc.get("reasons", [])])
            if e.get("reason"):
                assert e["reason"] in said, (case.id, said)
            if e.get("field"):
                assert e["field"] in said, (case.id, said)
    if "cluster" in e:
        rec = run.store.get_cluster(ref)
        state = rec.state if rec is not None else None
        assert state == e["cluster"], (case.id, state)


def _accepted(kind: str) -> Counter:
    """The cluster requests the corpus may cause: one per accepted delivery, nothing else."""
    want: Counter = Counter()
    for c in CASES:
        if c.target != "ready":
            continue
        namespace, name = c.nad_key()
        if c.expect.get("nad") == "APPLIED" and c.expect["outcome"] == "done" and kind == "PATCH":
            want[("PATCH", NAD_PATH.format(ns=namespace, name=name))] += len(c.forms)
        if c.expect.get("kube") == kind:
            want[(kind, NAD_PATH.format(ns=namespace, name=name))] += len(c.forms)
    return want


@pytest.mark.e2e
def test_nothing_malformed_reached_the_cluster(run: Run) -> None:
    import jsonschema

    writes = Counter({k: n for k, n in run.stats_diff.items() if k[0] != "GET"})
    assert writes == _accepted("PATCH") + _accepted("DELETE"), run.stats_diff
    # Reads: the list of managed NADs, which an apply reads to see what is on the cluster, and the
    # NAD itself, which an apply or a delete reads to check that it is the controller's (issue 24).
    reads = {k for k in run.stats_diff if k[0] == "GET"}
    nad_paths = {("GET", NAD_PATH.format(ns=ns, name=name)) for c in CASES for ns, name in [c.nad_key()]}
    assert reads <= {("GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")} | nad_paths, reads
    theirs = _foreign_nad(run.stack, run.ready, "read")  # neither taken over nor deleted
    assert theirs["spec"] == FOREIGN["spec"] and theirs["metadata"]["labels"] == {"team": "platform"}
    from kubernetes import config as kconfig

    from shared.adapters.kube import Kube

    # read back through the API (after the request snapshot was taken)
    path = Path(run.stack.env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / f"{run.ready.cluster}.yaml"
    kube = Kube(kconfig.new_client_from_config(config_file=str(path)))
    on_cluster = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in kube.list_managed_nads()}
    applied = {c.nad_key() for c in CASES if c.target == "ready" and c.expect.get("nad") == "APPLIED"}
    assert set(on_cluster) == applied
    schema = json.loads((ROOT / "shared" / "schemas" / "ipvlan-conflist.v1.json").read_text())
    for obj in on_cluster.values():
        config = json.loads(obj["spec"]["config"])
        jsonschema.Draft202012Validator(schema).validate(config)
        text = json.dumps(obj)
        for evil in ("bridge", "Secret", "$(", "`", ";", "\\n"):
            assert evil not in text, (obj["metadata"]["name"], evil)
    assert run.store.get_cluster(run.ready).state == "READY"


if __name__ == "__main__":
    README.write_text(render_readme(load_corpus()))
    sys.stdout.write(f"wrote {README.relative_to(ROOT)} ({len(CASES)} cases)\n")
