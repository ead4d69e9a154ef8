"""Firestore adapter: workflow documents, transactions, the event ledger, the audit history.

Layout (collection names get `settings.collection_prefix` in front; see docs/FIRESTORE.md):
- `clusters/{project}~{location}~{cluster}`: state, stateSince, createdAt, updatedAt, lease
  {holder, step, expiresAt} | None, lastError | None, attempts, plus the workflow's fields
  (findings, nodePool, bundleVersion, ...). camelCase names, states as words, UTC timestamps.
- `clusters/{id}/nads/{namespace}~{name}`: one document per NAD, so independent NADs never
  contend on the cluster's document (Firestore, and its emulator even more, serialises
  transactions per document).
- `clusters/{id}/history/{event}~{step}[...]`: deterministic ids written with `set` inside the
  step's transaction, so a redelivered step can never add a second entry.
- `clusters/{id}/rejections/{event}` and top-level `rejections/{event}`: refused requests.
- `events/{ledger key}`: the idempotency ledger, with `expireAt` for a TTL policy.
- `config/policy`: operator policy (read-only here).

Every step is ONE transaction: begin, one `get_all` of the documents it decides on, commit with
the state change, ledger entry and history entry together — 3 RPCs (4 when the transaction is
rolled back because the decision was "already handled" or "busy"). `Store.rpc_count` and
`Store.count_rpcs()` count the RPCs really sent, with a gRPC interceptor on the client's channel.

Errors at this edge: ABORTED/UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED/INTERNAL become
`Transient` (Pub/Sub redelivers), PERMISSION_DENIED/INVALID_ARGUMENT/FAILED_PRECONDITION (and other
4xx) become `Permanent`. `google.cloud.firestore` and grpc are imported lazily (cold start).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

from shared.core.errors import Permanent, Problem, Rejected, RejectionKind, Transient, UnknownCluster
from shared.core.names import is_dns_label, is_object_name
from shared.core.prechecks import Finding
from shared.core.records import (
    Adoption,
    ApiEndpoint,
    AppliedNad,
    BundleOptions,
    ClusterWorkflow,
    FleetRollout,
    HistoryEntry,
    Incarnation,
    LastError,
    LastRequest,
    LedgerEntry,
    LedgerNote,
    NadClaim,
    NadRecord,
    NodePoolFacts,
    NodePoolRequest,
    OrphanNote,
    PoolFailureNote,
    PrunedNote,
    RolloutCluster,
    RolloutReport,
    RolloutState,
    VerificationNote,
    VerifyPodMarker,
    Wave,
    WaveClusterState,
    WorkflowUpdate,
    nad_state,
)
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from shared.ports import DELETE, AlreadyHandled, ClusterRecord, Lease, NadVersion

T = TypeVar("T")
P = ParamSpec("P")

OUTCOMES = ("ok", "retry", "failed", "rejected", "ignored", "skipped", "warning")
EXCERPT_MAX = 512
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
# Fields the store owns: a workflow passing them in `fields` is a bug, reported at once.
_OWNED = frozenset({"state", "stateSince", "createdAt", "updatedAt", "lease"})
_CLUSTER_IDENTITY = ("project", "location", "cluster", "path")
_LOST_TRANSACTION = re.compile(r"transaction.{0,40}(invalid|closed|expired|no longer valid)", re.I)
_NAD_IDENTITY = ("namespace", "name", "clusterPath")


# --------------------------------------------------------------------------- helpers

def safe_id(text: str) -> str:
    """A Firestore document id for any string, injective: percent-encode all but [A-Za-z0-9._-].

    `~` is encoded too, because ids are joined with `~`; `/` would otherwise open a subcollection.
    Very long keys (Firestore caps ids at 1500 bytes) keep a readable head plus a digest.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty string for a document id, got {text!r}")
    out = urllib.parse.quote(text, safe="-._").replace("~", "%7E")  # quote() always keeps "~"
    if out in (".", ".."):
        out = out.replace(".", "%2E")
    if out.startswith("__") and out.endswith("__"):
        out = "%5F" + out[1:]
    if len(out) > 400:
        import hashlib

        out = out[:300] + "~sha256-" + hashlib.sha256(text.encode()).hexdigest()
    return out


def _now() -> datetime:
    return datetime.now(UTC)


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")


def _check_fields(fields: Mapping[str, Any] | None, identity: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Workflow fields: camelCase names, not the store's own, identity equal to the document's."""
    out: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if not isinstance(key, str) or not _FIELD_NAME.match(key):
            raise ValueError(f"{what} fields: {key!r} is not a plain field name (letters, digits, '_')")
        if key in _OWNED:
            raise ValueError(f"{what} fields: {key!r} is maintained by the store; pass state= instead"
                             if key == "state" else f"{what} fields: {key!r} is maintained by the store")
        if key in identity:
            if value != identity[key]:
                raise ValueError(f"{what} fields: {key}={value!r} contradicts the document's {identity[key]!r}")
            continue
        out[key] = value
    return out


def _apply(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """What a document looks like after `update(changes)` (top-level fields replaced or deleted)."""
    new = dict(data)
    for key, value in changes.items():
        if value is DELETE:
            new.pop(key, None)
        else:
            new[key] = value
    return new


def _unchanged(current: Mapping[str, Any], key: str, value: Any) -> bool:
    """Whether `update({key: value})` would leave `current` as it is: deleting an absent field, or
    writing the value it has, of the same type all the way down (1 is not 1.0 nor True in
    Firestore). Only plain values are compared; anything else (timestamps, sentinels) is written."""
    if value is DELETE:
        return key not in current
    return key in current and _equal(current[key], value)


def _equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a is None or (isinstance(a, str | int | float | bytes) and a == b)  # bool is an int


def _wire(changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes` ready for `update`: DELETE becomes firestore.DELETE_FIELD.

    Keys are top-level names checked by `_check_fields` (letters, digits, '_'), so each is a
    simple field path and `update` replaces that whole field (nested maps are not merged).
    """
    from google.cloud import firestore

    return {key: firestore.DELETE_FIELD if value is DELETE else value for key, value in changes.items()}


def _plain(value: Any) -> Any:
    """Dataclasses (e.g. `Problem`) as dicts, so callers may pass either."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _encode_token(at: Any, doc_id: str) -> str:
    stamp = at.rfc3339() if hasattr(at, "rfc3339") else at.isoformat()
    raw = json.dumps({"at": stamp, "id": doc_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[Any, str]:
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        stamp, doc_id = data["at"], data["id"]
        at: datetime = (DatetimeWithNanoseconds.from_rfc3339(stamp)  # type: ignore[no-untyped-call]
                        if stamp.endswith("Z") else datetime.fromisoformat(stamp))
        if not isinstance(doc_id, str):
            raise TypeError
        return at, doc_id
    except (ValueError, TypeError, KeyError, AttributeError):
        raise Rejected("invalid page token", [Problem("page_token", "not a token returned by history()")])


# --------------------------------------------------------------------------- the cluster workflow's table

def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [x for x in value if isinstance(x, Mapping)] if isinstance(value, list | tuple) else []


def _optional(doc: dict[str, Any], **values: Any) -> dict[str, Any]:
    """`doc` plus the values that are set (a key absent from a map means "not recorded")."""
    return {**doc, **{k: v for k, v in values.items() if v is not None}}


def _last_error_doc(e: LastError) -> dict[str, Any]:
    return _optional({"message": e.message, "step": e.step, "eventId": e.event_id}, at=e.at)


def _last_error(v: Any) -> LastError | None:
    if not isinstance(v, Mapping):
        return None
    return LastError(str(v.get("message") or ""), str(v.get("step") or ""), str(v.get("eventId") or ""),
                     v.get("at") if isinstance(v.get("at"), datetime) else None)


def _node_pool(v: Any) -> NodePoolFacts | None:
    if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
        return None
    return NodePoolFacts(v["name"], str(v.get("subnetwork") or ""), str(v.get("secondaryPodRange") or ""),
                         str(v.get("cidr") or ""), _int(v.get("maxPodsPerNode")),
                         str(v.get("interface") or "eth1"))  # recorded before the field: GKE's first NIC


def _node_pool_doc(p: NodePoolFacts) -> dict[str, Any]:
    return {"name": p.name, "subnetwork": p.subnetwork, "secondaryPodRange": p.secondary_pod_range,
            "cidr": p.cidr, "maxPodsPerNode": p.max_pods_per_node, "interface": p.interface}


def _node_pool_request(v: Any) -> NodePoolRequest | None:
    if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
        return None
    failures = tuple(PoolFailureNote(str(f.get("operation") or ""), str(f.get("reason") or ""),
                                     str(f.get("message") or "")) for f in _maps(v.get("failures")))
    return NodePoolRequest(v["name"], str(v.get("operation") or ""), str(v.get("subnetwork") or ""),
                           str(v.get("secondaryPodRange") or ""), _int(v.get("attempt")) or 1, failures,
                           _text(v.get("failedOperation")),
                           v.get("retry") if isinstance(v.get("retry"), bool) else None,
                           _number(v.get("retryAfter")), _text(v.get("deleteOperation")))


def _node_pool_request_doc(r: NodePoolRequest) -> dict[str, Any]:
    return _optional(
        {"name": r.name, "operation": r.operation, "subnetwork": r.subnetwork,
         "secondaryPodRange": r.secondary_pod_range, "attempt": r.attempt,
         "failures": [{"operation": f.operation, "reason": f.reason, "message": f.message} for f in r.failures]},
        failedOperation=r.failed_operation, retry=r.retry, retryAfter=r.retry_after,
        deleteOperation=r.delete_operation)


def _rollout(v: Any) -> RolloutReport | None:
    if not isinstance(v, Mapping):
        return None
    return RolloutReport(_int(v.get("desired")) or 0, _int(v.get("updated")) or 0, _int(v.get("ready")) or 0,
                         _int(v.get("available")) or 0, bool(v.get("complete")), str(v.get("summary") or ""))


def _findings(v: Any) -> tuple[Finding, ...]:
    return tuple(Finding(str(f.get("id") or ""), str(f.get("severity") or ""), str(f.get("message") or ""),
                         str(f.get("fix") or "")) for f in _maps(v))


def _endpoint(v: Any) -> ApiEndpoint | None:
    if not isinstance(v, Mapping):
        return None
    return ApiEndpoint(str(v.get("kind") or ""), str(v.get("address") or ""), str(v.get("why") or ""))


def _incarnations(v: Any) -> tuple[Incarnation, ...]:
    return tuple(Incarnation(str(i.get("clusterId") or ""), str(i.get("createTime") or ""),
                             str(i.get("endState") or "")) for i in _maps(v))


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _Field:
    """One workflow attribute: its document field, and how its value is written and read."""

    attr: str
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    null: bool = False  # None is stored as null (the field stays); otherwise None removes the field


def _decoded(table: Sequence[_Field], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A record's attributes from a document through its table: a field absent, null or malformed
    (decoded as None) leaves the attribute at its default."""
    values: dict[str, Any] = {}
    for f in table:
        raw = doc.get(f.name)
        if raw is not None:
            decoded = f.decode(raw)
            if decoded is not None:
                values[f.attr] = decoded
    return values


# The one table of the cluster document's workflow fields (docs/FIRESTORE.md `clusters/{id}`):
# `ClusterWorkflow` attribute -> camelCase field. Adding a workflow field: the attribute in
# `shared.core.records.ClusterWorkflow`, and a row here.
CLUSTER_FIELDS: tuple[_Field, ...] = (
    _Field("version", "version", _same, _text),
    _Field("status", "status", _same, _text),
    _Field("trigger", "trigger", _same, _text),
    _Field("findings", "findings", lambda v: [f.to_dict() for f in v], _findings),
    _Field("facts_digest", "factsDigest", _same, _text),
    _Field("attempts", "attempts", _same, lambda v: _int(v) or 0),
    _Field("releases", "releases", _same, lambda v: _int(v) or 0),
    _Field("last_error", "lastError", _last_error_doc, _last_error, null=True),
    _Field("busy_since", "busySince", _same, _number),
    _Field("node_pool", "nodePool", _node_pool_doc, _node_pool),
    _Field("node_pool_requested", "nodePoolRequested", _node_pool_request_doc, _node_pool_request),
    _Field("bundle_version", "bundleVersion", _same, _text),
    _Field("rollout", "rollout", lambda r: {"desired": r.desired, "updated": r.updated, "ready": r.ready,
                                            "available": r.available, "complete": r.complete,
                                            "summary": r.summary}, _rollout),
    _Field("install_requests", "installRequests", _same, _int),
    _Field("api_endpoint", "apiEndpoint", lambda e: {"kind": e.kind, "address": e.address, "why": e.why},
           _endpoint),
    _Field("cluster_id", "clusterId", _same, _text),
    _Field("create_time", "createTime", _same, _text),
    _Field("incarnation", "incarnation", _same, _int),
    _Field("previous_incarnations", "previousIncarnations",
           lambda v: [{"clusterId": i.cluster_id, "createTime": i.create_time, "endState": i.end_state}
                      for i in v], _incarnations),
    _Field("new_incarnation_end", "newIncarnation", lambda v: {"endState": v},
           lambda v: _text(v.get("endState")) if isinstance(v, Mapping) else None),
    _Field("pool_usage", "poolUsage", lambda v: dict(v), lambda v: dict(v) if isinstance(v, Mapping) else None),
    _Field("stale_allocations", "staleAllocations", _same, _int),
)


def workflow_of(data: Mapping[str, Any]) -> ClusterWorkflow:
    """A cluster document's workflow fields as the typed record (missing or malformed: the defaults)."""
    return ClusterWorkflow(**_decoded(CLUSTER_FIELDS, data))


def workflow_changes(update: WorkflowUpdate | None) -> dict[str, Any]:
    """The document fields an update writes: changed attributes, encoded; None -> DELETE (or null)."""
    if update is None:
        return {}
    by_attr = {f.attr: f for f in CLUSTER_FIELDS}
    out: dict[str, Any] = {}
    for attr in update.changed():
        f = by_attr[attr]
        value = getattr(update.after, attr)
        out[f.name] = (None if f.null else DELETE) if value is None else f.encode(value)
    return out


def lease_doc(lease: Lease) -> dict[str, object]:
    """The `lease` map of a cluster document."""
    return {"holder": lease.holder, "step": lease.step, "expiresAt": lease.expires_at}


def lease_of(doc: object) -> Lease | None:
    """The `lease` map as a `Lease` (None: no lease, or a map without a holder or expiry)."""
    if not isinstance(doc, Mapping) or not doc.get("holder"):
        return None
    expires = doc.get("expiresAt")
    if not isinstance(expires, datetime):
        return None
    return Lease(str(doc["holder"]), str(doc.get("step", "")), expires)


# The history entry: (attribute of `HistoryEntry`, document field, written when None).
HISTORY_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("event_id", "eventId", True), ("step", "step", True), ("outcome", "outcome", True),
    ("message", "message", True), ("state", "state", True), ("previous_state", "previousState", True),
    ("nad", "nad", False), ("attempt", "attempt", False), ("kind", "kind", False),
    ("requester", "requester", False),
)
MESSAGE_MAX = 4000

# The ledger entry's note (`LedgerNote` attribute -> field); the entry's own fields are written by
# `Store._ledger_entry` (eventId, cluster, step, outcome, at, expireAt).
LEDGER_NOTE_FIELDS: tuple[tuple[str, str], ...] = (("digest", "digest"), ("request_id", "requestId"))


def ledger_note_doc(note: LedgerNote | None) -> dict[str, object]:
    """The note's fields as the ledger entry stores them (a None attribute is left out)."""
    if note is None:
        return {}
    return {name: getattr(note, attr) for attr, name in LEDGER_NOTE_FIELDS if getattr(note, attr) is not None}


def ledger_entry_of(doc: Mapping[str, Any]) -> LedgerEntry:
    """A ledger document as its typed entry (a field of the wrong type reads as absent)."""
    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) else None

    note = LedgerNote(**{attr: text(name) for attr, name in LEDGER_NOTE_FIELDS})
    return LedgerEntry(text("eventId") or "", text("step") or "", text("outcome") or "", text("cluster"), note)


def history_doc(entry: HistoryEntry) -> dict[str, object]:
    """A history entry's fields (without `at` and `seq`, which the writer adds)."""
    out: dict[str, object] = {}
    for attr, name, always in HISTORY_FIELDS:
        value = getattr(entry, attr)
        if value is not None or always:
            out[name] = value
    out["message"] = str(entry.message)[:MESSAGE_MAX]
    return out


def nad_view(data: dict[str, Any]) -> dict[str, Any]:
    """A NAD document as readers see it: `lastRequest` with its `request`.

    The document holds a request once: `lastRequest.request` is left out when it is the top-level
    `request` (`request_once`), so it is put back here, on every read, and the flows, the CLI
    and `--json` see the record whole."""
    last = data.get("lastRequest")
    if isinstance(last, Mapping) and "request" not in last and isinstance(data.get("request"), Mapping):
        return {**data, "lastRequest": {**last, "request": data["request"]}}
    return data


def request_once(view: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The changes of a NAD write, with `lastRequest.request` left out when it is the top-level
    `request` the document will hold (docs/FIRESTORE.md). `view` is the document as read
    (`nad_view`): a write that changes `request` alone keeps the last request's own body."""
    out = dict(changes)
    request = out.get("request", view.get("request"))
    last = out.get("lastRequest")
    if last is None and "request" in out and isinstance(view.get("lastRequest"), Mapping):
        last = dict(view["lastRequest"])
    if isinstance(last, Mapping):
        if isinstance(request, Mapping) and last.get("request") == request:
            last = {k: v for k, v in last.items() if k != "request"}
        out["lastRequest"] = last
    return out


# --------------------------------------------------------------------------- the NAD record's table

def _stamp(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _texts(value: Any) -> tuple[str, ...] | None:
    return tuple(str(x) for x in value) if isinstance(value, list | tuple) else None


def _body(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _applied_doc(a: AppliedNad) -> dict[str, Any]:
    return _optional({"range": a.range, "master": a.master, "configDigest": a.config_digest,
                      "requestId": a.request_id, "messageId": a.message_id, "state": a.state, "at": a.at},
                     requester=a.requester)


def _applied_of(v: Any) -> AppliedNad | None:
    if not isinstance(v, Mapping):
        return None
    return AppliedNad(str(v.get("range") or ""), str(v.get("master") or ""), _text(v.get("configDigest")),
                      _text(v.get("requestId")), _text(v.get("messageId")), str(v.get("state") or "APPLIED"),
                      _stamp(v.get("at")), _text(v.get("requester")))


def _last_request_doc(r: LastRequest) -> dict[str, Any]:
    return _optional({"action": r.action, "state": r.state, "reasons": list(r.reasons), "requestId": r.request_id,
                      "messageId": r.message_id, "eventId": r.event_id, "range": r.range, "master": r.master,
                      "digest": r.digest, "request": dict(r.request) if r.request is not None else None,
                      "at": r.at}, requester=r.requester)


def _last_request_of(v: Any) -> LastRequest | None:
    if not isinstance(v, Mapping):
        return None
    return LastRequest(str(v.get("action") or ""), str(v.get("state") or ""), _texts(v.get("reasons")) or (),
                       _text(v.get("requestId")), _text(v.get("messageId")), _text(v.get("eventId")),
                       _text(v.get("range")), _text(v.get("master")), _text(v.get("digest")), _body(v.get("request")),
                       _stamp(v.get("at")), _text(v.get("requester")))


def _claim_doc(c: NadClaim) -> dict[str, Any]:
    return _optional({"action": c.action, "range": c.range, "master": c.master, "ledger": c.ledger,
                      "eventId": c.event_id, "requestId": c.request_id, "previousState": c.previous_state,
                      "holder": c.holder}, released=c.released, why=c.why)


def _claim_of(v: Any) -> NadClaim | None:
    if not isinstance(v, Mapping):
        return None
    return NadClaim(str(v.get("action") or ""), _text(v.get("range")), _text(v.get("master")),
                    str(v.get("ledger") or ""), str(v.get("eventId") or ""), _text(v.get("requestId")),
                    _text(v.get("previousState")), str(v.get("holder") or ""),
                    v.get("released") if isinstance(v.get("released"), bool) else None, _text(v.get("why")))


def _verify_pod_doc(m: VerifyPodMarker) -> dict[str, Any]:
    return _optional({}, pod=m.pod, namespace=m.namespace, until=m.until)


def _verify_pod_of(v: Any) -> VerifyPodMarker | None:
    if not isinstance(v, Mapping):
        return None
    until = v.get("until")
    return VerifyPodMarker(until if isinstance(until, int | float) and not isinstance(until, bool) else 0.0,
                           _text(v.get("pod")), _text(v.get("namespace")))


def _map_of(cls: Callable[..., T], *names: str) -> Callable[[Any], T | None]:
    """A decoder of a flat map into `cls`, its fields in the order of `names` (document names)."""
    def decode(v: Any) -> T | None:
        return cls(*(v.get(n) for n in names)) if isinstance(v, Mapping) else None
    return decode


# The one table of a NAD document's fields (docs/FIRESTORE.md `clusters/{id}/nads`): `NadRecord`
# attribute -> camelCase field. Adding a field: the attribute in `shared.core.records.NadRecord`,
# and a row here. `namespace`, `name`, `clusterPath`, `stateSince`, `createdAt` and `updatedAt`
# are the store's own. The request is held once: `lastRequest.request` is left out of the
# document when it is the top-level `request`, and put back when read (`nad_view`, `request_once`).
NAD_FIELDS: tuple[_Field, ...] = (
    _Field("state", "state", str, nad_state),
    _Field("message", "message", lambda v: str(v)[:MESSAGE_MAX] if v else None, lambda v: _text(v) or ""),
    _Field("applied", "applied", _applied_doc, _applied_of),
    _Field("range", "range", _same, _text),
    _Field("master", "master", _same, _text),
    _Field("config", "config", _same, _text),
    _Field("request", "request", dict, _body),
    _Field("request_id", "requestId", _same, _text),
    _Field("mode", "mode", _same, _text),
    _Field("action", "action", _same, _text),
    _Field("last_request", "lastRequest", _last_request_doc, _last_request_of),
    _Field("reasons", "reasons", list, _texts),
    _Field("last_error", "lastError", _same, _text),
    _Field("claim_order", "claimOrder", _same, _text),
    _Field("claim", "claim", _claim_doc, _claim_of),
    _Field("claim_refused", "claimRefused", _same, _text),
    _Field("adopted", "adopted", lambda a: {"at": a.at, "by": a.by}, _map_of(Adoption, "at", "by")),
    _Field("orphan", "orphan", lambda o: {"reason": o.reason, "foundAt": o.found_at},
           _map_of(OrphanNote, "reason", "foundAt")),
    _Field("pruned", "pruned", lambda p: {"config": p.config, "at": p.at, "reason": p.reason},
           _map_of(PrunedNote, "config", "at", "reason")),
    _Field("verification", "verification", lambda v: {"ok": v.ok, "message": v.message},
           _map_of(VerificationNote, "ok", "message")),
    _Field("resource_version", "resourceVersion", _same, _text),
    _Field("verify_pod", "verifyPod", _verify_pod_doc, _verify_pod_of),
    _Field("request_excerpt", "requestExcerpt", _same, _text),
)
_NAD_BY_ATTR = {f.attr: f for f in NAD_FIELDS}
NAD_BY_NAME = {f.name: f for f in NAD_FIELDS}


def nad_of(namespace: str, name: str, view: Mapping[str, Any], update_time: Any = None) -> NadRecord:
    """A NAD document, as read (`nad_view`: the last request whole), as the typed record."""
    values = _decoded(NAD_FIELDS, view)
    updated = view.get("updatedAt")
    return NadRecord(namespace, name, **values, updated_at=updated if isinstance(updated, datetime) else None,
                     data=view)


def nad_fields_of(attrs: Sequence[str]) -> list[str]:
    """The document fields a projection of `attrs` reads (`lastRequest` comes with the `request`
    its body may be in). `attr.key` reads one key of a part (`applied.range`: the key as the
    part stores it), so a decision that needs two keys of a part does not decode all of them."""
    names = []
    for a in attrs:
        head, dot, key = a.partition(".")
        names.append(_NAD_BY_ATTR[head].name + dot + key)
    return names + (["request"] if "lastRequest" in names and "request" not in names else [])


def projected(doc: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """What a Firestore projection (`mask`) of `paths` returns of `doc`: the named fields, and of
    a dotted path the map holding only that key (the in-memory store's projection)."""
    out: dict[str, Any] = {}
    for path in paths:
        head, _, key = path.partition(".")
        if head not in doc:
            continue
        if not key:
            out[head] = doc[head]
        elif isinstance(doc[head], Mapping) and key in doc[head]:
            part = out.setdefault(head, {})
            if isinstance(part, dict):
                part[key] = doc[head][key]
    return out


def nad_changes(before: NadRecord, after: NadRecord) -> dict[str, Any]:
    """The document fields that `after` changes of `before` (None -> DELETE), encoded through the
    table; `lastRequest` is written without its `request` when that is the top-level one."""
    if (after.namespace, after.name) != (before.namespace, before.name):
        raise ValueError(f"put_nad: a change may not rename {before.label} to {after.label}")
    if after.state is None:
        raise ValueError(f"put_nad: {after.label}: a NAD record needs a state")
    out: dict[str, Any] = {}
    for f in NAD_FIELDS:
        value = getattr(after, f.attr)
        if value == getattr(before, f.attr) and not (f.attr == "last_request" and value is not None
                                                      and after.request != before.request):
            continue
        encoded = None if value is None else f.encode(value)
        out[f.name] = DELETE if encoded is None else encoded
    last = out.get("lastRequest")
    if isinstance(last, dict) and last.get("request") is not None and last["request"] == out.get(
            "request", before.request):
        del last["request"]  # held once: the top-level `request`
    return out


# --------------------------------------------------------------------------- the rollout document's table

def _bundle_options_doc(b: BundleOptions) -> dict[str, Any]:
    return {"version": b.version, "multusImage": b.multus_image, "whereaboutsImage": b.whereabouts_image,
            "logLevel": b.log_level}


def _bundle_options_of(v: Any) -> BundleOptions | None:
    if not isinstance(v, Mapping):
        return None
    return BundleOptions(_text(v.get("version")), _text(v.get("multusImage")), _text(v.get("whereaboutsImage")),
                         _text(v.get("logLevel")))


def _waves_of(v: Any) -> tuple[Wave, ...]:
    return tuple(Wave(str(w.get("name") or ""), _texts(w.get("clusters")) or ()) for w in _maps(v))


def _wave_cluster_state(value: Any) -> WaveClusterState | None:
    return WaveClusterState(value) if isinstance(value, str) and value in _WAVE_CLUSTER_STATES else None


def _rollout_state(value: Any) -> RolloutState | None:
    return RolloutState(value) if isinstance(value, str) and value in _ROLLOUT_STATES else None


_WAVE_CLUSTER_STATES = frozenset(s.value for s in WaveClusterState)
_ROLLOUT_STATES = frozenset(s.value for s in RolloutState)


def _rollout_cluster_doc(c: RolloutCluster) -> dict[str, Any]:
    return _optional({"path": c.path, "wave": c.wave}, state=str(c.state) if c.state is not None else None,
                     since=c.since, message=c.message, started=c.started)


def _rollout_cluster_of(v: Mapping[str, Any]) -> RolloutCluster:
    return RolloutCluster(str(v.get("path") or ""), _int(v.get("wave")) or 0, _wave_cluster_state(v.get("state")),
                          _text(v.get("since")) or "", _text(v.get("message")) or "", _number(v.get("started")))


def _rollout_clusters_of(v: Any) -> dict[str, RolloutCluster] | None:
    if not isinstance(v, Mapping):
        return None
    return {str(cid): _rollout_cluster_of(entry) for cid, entry in v.items() if isinstance(entry, Mapping)}


# The one table of `rollouts/current` (docs/FIRESTORE.md): `FleetRollout` attribute -> camelCase
# field. Adding a field: the attribute in `shared.core.records.FleetRollout`, and a row here.
# `put_rollout` writes the record whole: an attribute that is None is not written (its field
# removed); the maps (`target`, `previous`, `clusters.{id}`) are written whole.
ROLLOUT_FIELDS: tuple[_Field, ...] = (
    _Field("state", "state", str, _rollout_state),
    _Field("target", "target", _bundle_options_doc, _bundle_options_of),
    _Field("previous", "previous", _bundle_options_doc, _bundle_options_of),
    _Field("waves", "waves", lambda ws: [{"name": w.name, "clusters": list(w.clusters)} for w in ws], _waves_of),
    _Field("wave", "wave", _same, _int),
    _Field("clusters", "clusters", lambda cs: {cid: _rollout_cluster_doc(c) for cid, c in cs.items()},
           _rollout_clusters_of),
    _Field("reason", "reason", _same, _text),
    _Field("halted_cluster", "haltedCluster", _same, _text),
    _Field("started_at", "startedAt", _same, _text),
    _Field("started_by", "startedBy", _same, _text),
    _Field("updated_at", "updatedAt", _same, _text),
    _Field("finished_at", "finishedAt", _same, _text),
    _Field("resumed_at", "resumedAt", _same, _text),
    _Field("wave_size", "waveSize", _same, _text),
    _Field("canary", "canary", _same, _int),
)


def rollout_of(data: Mapping[str, Any]) -> FleetRollout:
    """`rollouts/current` as the typed record: a field missing or malformed reads as the attribute's
    default (an unknown state word as None, which nothing drives); fields not in the table are left out."""
    return FleetRollout(**_decoded(ROLLOUT_FIELDS, data))


def rollout_changes(rollout: FleetRollout) -> dict[str, Any]:
    """The fields `put_rollout` writes: every attribute through the table, None -> DELETE."""
    return {f.name: DELETE if (value := getattr(rollout, f.attr)) is None else f.encode(value)
            for f in ROLLOUT_FIELDS}


def rollout_doc(rollout: FleetRollout) -> dict[str, Any]:
    """`rollouts/current` as the record is written (what `rollout status --json` prints)."""
    return {k: v for k, v in rollout_changes(rollout).items() if v is not DELETE}


def record_of(ref: ClusterRef, data: Mapping[str, Any]) -> ClusterRecord:
    """The typed record of a cluster document (the document itself stays in `data`, for display)."""
    updated = data.get("updatedAt")
    return ClusterRecord(ref, str(data.get("state", "")), data, lease_of(data.get("lease")), workflow_of(data),
                         updated if isinstance(updated, datetime) else None)



# --------------------------------------------------------------------------- errors at the edge

def translate(exc: BaseException) -> BaseException:
    """A Firestore/gRPC failure as the controller's error type (unknown exceptions unchanged)."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, ValueError) and isinstance(exc.__cause__, gexc.Aborted):
        return Transient(f"Firestore transaction kept aborting on contention: {exc}", code="ABORTED",
                         api="firestore")
    if not isinstance(exc, gexc.GoogleAPIError):
        return exc
    code = getattr(exc, "grpc_status_code", None)
    name = getattr(code, "name", None) or type(exc).__name__
    message = f"Firestore {name}: {getattr(exc, 'message', None) or exc}"
    if isinstance(exc, gexc.InvalidArgument) and _LOST_TRANSACTION.search(message):
        # The client library retries a Commit whose answer was lost (UNAVAILABLE); if the first
        # Commit did land, the retry hears "transaction is invalid or closed". The step's fate is
        # unknown, not refused: redeliver, and the ledger tells whether it was recorded.
        return Transient(message + " (the transaction's outcome is unknown; retrying the event)",
                         code=name, api="firestore")
    transient = (gexc.Aborted, gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.TooManyRequests,
                 gexc.InternalServerError, gexc.ServerError, gexc.RetryError, gexc.Unknown)
    if isinstance(exc, transient):
        return Transient(message, code=name, api="firestore")
    return Permanent(message, code=name, api="firestore")


def _edge(method: Callable[P, T]) -> Callable[P, T]:
    """Translate what escapes a store method into the controller's errors; the signature is kept."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (AlreadyHandled, Rejected, Transient, Permanent):
            raise
        except Exception as e:
            mapped = translate(e)
            if mapped is e:
                raise
            raise mapped from e

    return wrapper


# --------------------------------------------------------------------------- RPC counting

class RpcCounter:
    """Counts the gRPC calls a Firestore client really sends, by method, overall and per thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.max_timeout: float | None = None  # clamps every call's deadline (Store's timeout)
        self.total = 0
        self.by_method: Counter[str] = Counter()
        self._local = threading.local()

    def hit(self, method: str) -> None:
        short = method.rsplit("/", 1)[-1]
        with self._lock:
            self.total += 1
            self.by_method[short] += 1
        for tally in getattr(self._local, "stack", ()):
            tally.total += 1
            tally.by_method[short] += 1

    @contextlib.contextmanager
    def tally(self) -> Iterator[RpcTally]:
        stack = self._local.__dict__.setdefault("stack", [])
        t = RpcTally()
        stack.append(t)
        try:
            yield t
        finally:
            stack.remove(t)

    def interceptor(self) -> Any:
        import grpc

        counter = self

        def clamp(details: Any) -> Any:
            # The library's defaults are 60-300 s per call; a call must not outlive the lease
            # or the function's deadline, so the store's timeout caps it (docs/RELIABILITY.md).
            limit = counter.max_timeout
            if limit is None or (details.timeout is not None and details.timeout <= limit):
                return details
            return details._replace(timeout=limit)

        # grpc ships no types: its interceptor bases are Any to mypy.
        class _Interceptor(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                           grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                           grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
                           grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
            def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
                counter.hit(details.method)
                return continuation(clamp(details), request)

            def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
                counter.hit(details.method)
                return continuation(clamp(details), request)

            def intercept_stream_unary(self, continuation, details, it):  # type: ignore[no-untyped-def]
                counter.hit(details.method)
                return continuation(clamp(details), it)

            def intercept_stream_stream(self, continuation, details, it):  # type: ignore[no-untyped-def]
                counter.hit(details.method)
                return continuation(clamp(details), it)

        return _Interceptor()


@dataclass
class RpcTally:
    """The RPCs sent by this thread inside one `Store.count_rpcs()` block."""

    total: int = 0
    by_method: Counter[str] = field(default_factory=Counter)


def instrument(client: Any) -> RpcCounter:
    """Put a counting interceptor on a firestore.Client's channel (once per client).

    The client builds its GAPIC client lazily from a channel it creates itself; we let it do so
    (so credentials, emulator and endpoint choices stay the library's), then rebuild the GAPIC
    client on the same channel wrapped by `grpc.intercept_channel`. This relies on two private
    attributes of google-cloud-firestore 2.x (`_firestore_api_internal`, `_transport`), pinned <3
    in requirements.txt and exercised by tests/test_store.py. Every call that takes them carries
    `retry=`/`timeout=` (`call_options`); the interceptor's cap remains only because a
    transaction's BeginTransaction and Commit (`Transaction._begin`/`_commit`, run by
    `firestore.transactional`) offer no public deadline (tests/test_faults.py delays a Commit).
    """
    existing = getattr(client, "_multus_rpc_counter", None)
    if isinstance(existing, RpcCounter):
        return existing
    import grpc
    from google.cloud.firestore_v1.services.firestore import FirestoreClient
    from google.cloud.firestore_v1.services.firestore.transports.grpc import FirestoreGrpcTransport

    counter = RpcCounter()
    api = client._firestore_api  # builds the library's own channel and transport
    channel = grpc.intercept_channel(api._transport.grpc_channel, counter.interceptor())
    transport = FirestoreGrpcTransport(host=client._target, channel=channel)
    client._transport = transport
    client._firestore_api_internal = FirestoreClient(transport=transport, client_options=client._client_options)
    client._multus_rpc_counter = counter
    return counter


# --------------------------------------------------------------------------- call options

def call_options(timeout: float) -> dict[str, Any]:
    """`retry=` and `timeout=` for every Firestore call that takes them (the client's public arguments).

    One explicit policy instead of the library's per-method defaults (60-300 s): a short retry of
    what a retry can fix (UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED), all within `timeout`, so a
    call never outlives the lease or the function's deadline. ABORTED is not retried here: the
    transaction runner owns contention. (A transaction's BeginTransaction and Commit take no such
    argument in google-cloud-firestore 2.x; `instrument`'s interceptor caps those at `timeout`.)
    """
    from google.api_core import exceptions as gexc
    from google.api_core import retry as gretry

    policy = gretry.Retry(predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError,
                                                             gexc.ResourceExhausted),
                          initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)
    return {"retry": policy, "timeout": timeout}


# --------------------------------------------------------------------------- the store

class Store:
    """The controller's Firestore documents. One instance per process; thread-safe (the client is)."""

    def __init__(self, settings: Settings, client: Any = None, *, max_attempts: int = 5,
                 timeout: float | None = None) -> None:
        self.settings = settings
        if client is None:
            from google.cloud import firestore

            client = firestore.Client(project=settings.project or None, database=settings.database)
        self.client = client
        self.max_attempts = max_attempts
        self.timeout = settings.api_timeout_seconds if timeout is None else timeout
        self._opts = call_options(self.timeout)
        self._rpcs = instrument(client)
        self._rpcs.max_timeout = self.timeout
        self._policy_client: Any = None

    # -- measurement
    @property
    def rpc_count(self) -> int:
        """RPCs sent by this store's client since it was created (all threads)."""
        return self._rpcs.total

    def count_rpcs(self) -> contextlib.AbstractContextManager[RpcTally]:
        """`with store.count_rpcs() as n: ...; n.total` — RPCs sent by this thread in the block."""
        return self._rpcs.tally()

    # -- references
    def _col(self, name: str) -> Any:
        return self.client.collection(self.settings.collection(name))

    def _cluster_doc(self, ref: ClusterRef) -> Any:
        if not isinstance(ref, ClusterRef):
            raise TypeError(f"expected a ClusterRef, got {type(ref).__name__}")
        return self._col("clusters").document(ref.doc_id)

    def _ledger_doc(self, key: str) -> Any:
        return self._col("events").document(safe_id(key))

    def _nad_doc(self, ref: ClusterRef, namespace: str, name: str) -> Any:
        problems = []
        if not is_dns_label(namespace):
            problems.append(Problem("namespace", f"{namespace!r} is not a valid Kubernetes namespace name"))
        if not is_object_name(name):
            problems.append(Problem("name", f"{name!r} is not a valid Kubernetes object name"))
        if problems:
            raise Rejected("invalid NAD reference", problems, cluster=ref)
        return self._cluster_doc(ref).collection("nads").document(f"{namespace}~{name}")

    def _history_doc(self, ref: ClusterRef, doc_id: str) -> Any:
        return self._cluster_doc(ref).collection("history").document(doc_id)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(transaction, *args)` in one transaction (retried on ABORTED by the client)."""
        from google.cloud import firestore

        return cast(T, firestore.transactional(fn)(self.client.transaction(max_attempts=self.max_attempts), *args))

    def _read(self, transaction: Any, *docs: Any) -> list[Any]:
        """One `get_all` for every document the step decides on, in the order asked."""
        wanted = [d for d in docs if d is not None]
        snaps = {s.reference.path: s for s in transaction.get_all(wanted, **self._opts)}
        return [snaps.get(d.path) if d is not None else None for d in docs]

    def _documents(self, query: Any) -> list[tuple[str, dict[str, Any]]]:
        """A query's documents as (id, data), decoded from the wire by the library's own decoder.

        Why not `query.stream()`: it wraps each document in a `DocumentSnapshot`, which deep-copies
        the data twice (once kept, once handed out by `to_dict`) and builds a reference, three
        timestamps and proto-plus wrappers around it. With tens of NADs per cluster that was most
        of a NAD request's CPU (docs/BENCHMARKS.md). Here each result's raw protobuf goes to
        `_helpers.decode_dict`, the call the snapshot makes itself, so the values are the same
        (tests/test_store.py compares them on every value type). The call takes `call_options`,
        whose retry covers a stream failing before its first document (the client fetches that
        one when the call starts); a stream broken after it raises, like any failed read (the
        library would resume after the last document). Relies on `Query._get_stream_iterator` of
        google-cloud-firestore 2.x (pinned <3, see `instrument`).
        """
        from google.cloud.firestore_v1 import _helpers

        if not hasattr(query, "_get_stream_iterator"):  # a collection reference: its query of everything
            query = query._query()
        responses, _ = query._get_stream_iterator(None, self._opts["retry"], self._opts["timeout"])
        out = []
        for response in responses:
            pb = response._pb
            if pb.HasField("document"):
                data = _helpers.decode_dict(pb.document.fields, self.client)
                out.append((pb.document.name.rpartition("/")[2], cast(dict[str, Any], data)))
        return out

    def _fetch(self, refs: list[Any]) -> dict[str, tuple[dict[str, Any], Any] | None]:
        """Documents by path in one BatchGetDocuments: (data, update time), or None when absent.

        Why not `client.get_all`: it decodes each document through proto-plus wrappers (every
        value marshalled on access) and builds a `DocumentSnapshot` whose `to_dict` deep-copies
        the data again. Here each answer's raw protobuf goes to `_helpers.decode_dict`, as
        `_documents` does, and the update time is the library's own `DatetimeWithNanoseconds`
        (nanoseconds kept: it is a write's precondition). The call and its retry are the
        library's (`batch_get_documents` with the store's call options)."""
        from google.api_core.datetime_helpers import DatetimeWithNanoseconds
        from google.cloud.firestore_v1 import _helpers

        paths = {r._document_path: r.path for r in refs}
        stream = self.client._firestore_api.batch_get_documents(
            request={"database": self.client._database_string, "documents": list(paths)},
            metadata=self.client._rpc_metadata, retry=self._opts["retry"], timeout=self._opts["timeout"])
        out: dict[str, tuple[dict[str, Any], Any] | None] = {}
        for response in stream:
            pb = response._pb
            kind = pb.WhichOneof("result")
            if kind == "found":
                data = cast(dict[str, Any], _helpers.decode_dict(pb.found.fields, self.client))
                updated = DatetimeWithNanoseconds.from_timestamp_pb(pb.found.update_time)  # type: ignore[no-untyped-call]
                out[paths[pb.found.name]] = (data, updated)
            elif kind == "missing":
                out[paths[pb.missing]] = None
        return out

    def _listed(self, parent: Any, collection_id: str, fields: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
        """Every document of a subcollection as (id, data), `fields` alone when given: one unary
        ListDocuments per 1,000 documents instead of a query.

        Why not a query: RunQuery is a gRPC stream that answers with one message per document, and
        the Python client hands each message from gRPC's polling thread to the caller through a
        condition variable and wraps it in proto-plus; with tens of NADs per cluster that handoff
        was a fifth of a NAD request's CPU (docs/BENCHMARKS.md). ListDocuments answers a page in
        one message, takes the same projection (`mask`), and reads as strongly as a query. The
        raw pages come from the GAPIC pager's public `pages`, and each document is decoded with
        `_helpers.decode_dict`, as `_documents` does (tests/test_store.py compares the values)."""
        from google.cloud.firestore_v1 import _helpers
        from google.cloud.firestore_v1.field_path import FieldPath

        request: dict[str, Any] = {"parent": parent._document_path, "collection_id": collection_id,
                                   "page_size": 1000}
        if fields is not None:
            request["mask"] = {"field_paths": [FieldPath(*f.split(".")).to_api_repr() for f in fields]}
        pager = self.client._firestore_api.list_documents(
            request=request, metadata=self.client._rpc_metadata,
            retry=self._opts["retry"], timeout=self._opts["timeout"])
        out = []
        for page in pager.pages:
            for doc in page._pb.documents:
                data = _helpers.decode_dict(doc.fields, self.client)
                out.append((doc.name.rpartition("/")[2], cast(dict[str, Any], data)))
        return out

    @staticmethod
    def _history_entry(entry: HistoryEntry) -> dict[str, object]:
        from google.cloud import firestore

        return {**history_doc(entry), "at": firestore.SERVER_TIMESTAMP, "seq": time.time_ns()}

    def _ledger_entry(self, *, event_id: str, step: str, outcome: str, cluster: ClusterRef | None,
                      now: datetime) -> dict[str, Any]:
        from google.cloud import firestore

        return {"eventId": event_id, "cluster": cluster.path if cluster else None, "step": step,
                "outcome": outcome, "at": firestore.SERVER_TIMESTAMP,
                "expireAt": now + timedelta(days=self.settings.ledger_ttl_days)}

    @staticmethod
    def _unknown(ref: ClusterRef, event_id: str) -> UnknownCluster:
        return UnknownCluster(f"cluster {ref.path} is not tracked by the controller",
                              [Problem("cluster", "no workflow document; only a creation event starts one")],
                              event_id=event_id, cluster=ref)

    @staticmethod
    def _busy(ref: ClusterRef, lease: Lease) -> Transient:
        return Transient(f"cluster {ref.path} is busy: event {lease.holder} holds step {lease.step!r} "
                         f"until {lease.expires_at.isoformat()}", code="LEASE_HELD", api="firestore")

    # -- clusters
    @_edge
    def get_cluster(self, ref: ClusterRef) -> ClusterRecord | None:
        snap = self._cluster_doc(ref).get(**self._opts)
        return record_of(ref, snap.to_dict() or {}) if snap.exists else None

    @_edge
    def get_cluster_unless_seen(self, ref: ClusterRef, ledger_key: str) -> tuple[ClusterRecord | None, bool]:
        """The cluster's record and whether the ledger has `ledger_key`, in one read (a request's
        first look: a duplicate stops here, anything else needs the cluster's state anyway)."""
        doc, ledger = self._cluster_doc(ref), self._ledger_doc(ledger_key)
        found = self._fetch([doc, ledger])
        if found.get(ledger.path) is not None:
            return None, True
        cluster = found.get(doc.path)
        return (record_of(ref, cluster[0]) if cluster is not None else None), False

    @_edge
    def claim(self, ref: ClusterRef, *, event_id: str, step: str, ledger_key: str | None = None,
              create_state: str | None = None, create_fields: dict[str, Any] | None = None,
              lease_seconds: int | None = None, holder: str | None = None) -> ClusterRecord:
        """Take the cluster's lease for `step` (creating the document when `create_state` is given)."""
        doc = self._cluster_doc(ref)
        ledger = self._ledger_doc(ledger_key) if ledger_key else None
        identity = {"project": ref.project, "location": ref.location, "cluster": ref.cluster, "path": ref.path}
        extra = _check_fields(create_fields, identity, "create")
        seconds = self.settings.lease_seconds if lease_seconds is None else lease_seconds

        def txn(transaction: Any) -> ClusterRecord:
            snap, seen = self._read(transaction, doc, ledger)
            if seen is not None and seen.exists:
                raise AlreadyHandled(ledger_key)
            now = _now()
            lease = Lease(holder or event_id, step, now + timedelta(seconds=seconds))
            if not snap.exists:
                if create_state is None:
                    raise self._unknown(ref, event_id)
                data = {**identity, **extra, "state": create_state, "stateSince": now, "createdAt": now,
                        "updatedAt": now, "lease": lease_doc(lease), "lastError": None, "attempts": 0}
                data = {k: v for k, v in data.items() if v is not DELETE}
                transaction.create(doc, data)
                return record_of(ref, data)  # what was stored (tests/test_store_contract.py)
            data = snap.to_dict() or {}
            held = lease_of(data.get("lease"))
            if held is not None and held.holder != (holder or event_id) and held.live(now):
                raise self._busy(ref, held)
            changes = {"lease": lease_doc(lease), "updatedAt": now}
            transaction.update(doc, _wire(changes))
            return record_of(ref, _apply(data, changes))

        return self._run(txn)

    @_edge
    def advance(self, ref: ClusterRef, *, event_id: str, step: str, outcome: str = "ok", message: str = "",
                state: str | None = None, fields: dict[str, Any] | None = None, next_step: str | None = None,
                ledger_key: str | None = None, release: bool = False,
                holder: str | None = None, update: WorkflowUpdate | None = None) -> ClusterRecord:
        """Record a step: state, fields, history and ledger in one commit; renew or drop the lease.

        `update` changes the typed workflow (the fields it changes, through `CLUSTER_FIELDS`);
        `fields` are raw document fields, for what has no typed attribute yet."""
        _check_outcome(outcome)
        doc = self._cluster_doc(ref)
        ledger = self._ledger_doc(ledger_key) if ledger_key else None
        history = self._history_doc(ref, f"{safe_id(event_id)}~{safe_id(step)}")
        identity = {"project": ref.project, "location": ref.location, "cluster": ref.cluster, "path": ref.path}
        extra = {**_check_fields(fields, identity, "advance"), **workflow_changes(update)}

        def txn(transaction: Any) -> ClusterRecord:
            snap, seen = self._read(transaction, doc, ledger)
            if seen is not None and seen.exists:
                raise AlreadyHandled(ledger_key)
            if not snap.exists:
                raise self._unknown(ref, event_id)
            now = _now()
            data = snap.to_dict() or {}
            held = lease_of(data.get("lease"))
            if held is not None and held.holder != (holder or event_id) and held.live(now):
                raise self._busy(ref, held)
            changes: dict[str, Any] = {**extra, "updatedAt": now}
            before = data.get("state")
            if state is not None and state != before:
                changes["state"] = state
                changes["stateSince"] = now
            if release:
                changes["lease"] = None
            elif next_step is not None:
                seconds = self.settings.lease_seconds
                changes["lease"] = lease_doc(Lease(holder or event_id, next_step, now + timedelta(seconds=seconds)))
            new = _apply(data, changes)
            transaction.update(doc, _wire(changes))
            transaction.set(history, self._history_entry(HistoryEntry(
                event_id, step, outcome, message, new.get("state"), previous_state=before)))
            if ledger is not None:
                transaction.set(ledger, self._ledger_entry(event_id=event_id, step=step, outcome=outcome,
                                                           cluster=ref, now=now))
            return record_of(ref, new)

        return self._run(txn)

    @_edge
    def hold(self, ref: ClusterRef, *, holder: str, step: str, seconds: int | None = None) -> None:
        """Renew our lease for `step` (a long wait), or drop it (`seconds=0`), without a history entry.

        Raises the busy `Transient` if another delivery holds a live lease: ours expired and was
        taken, so this one must stop before it changes anything more.
        """
        doc = self._cluster_doc(ref)
        lease_seconds = self.settings.lease_seconds if seconds is None else seconds

        def txn(transaction: Any) -> None:
            (snap,) = self._read(transaction, doc)
            if not snap.exists:
                raise self._unknown(ref, holder)
            now = _now()
            held = lease_of((snap.to_dict() or {}).get("lease"))
            if held is not None and held.holder != holder and held.live(now):
                raise self._busy(ref, held)
            if lease_seconds <= 0:
                if held is not None and held.holder == holder:
                    transaction.update(doc, {"lease": None})
                return
            transaction.update(doc, {"lease": lease_doc(Lease(holder, step, now + timedelta(seconds=lease_seconds)))})

        self._run(txn)

    @_edge
    def release(self, ref: ClusterRef, *, event_id: str, step: str, error: str, outcome: str = "retry",
                state: str | None = None, count_attempt: bool = True,
                holder: str | None = None, fields: Mapping[str, Any] | None = None,
                update: WorkflowUpdate | None = None) -> ClusterRecord:
        """A step failed: drop our lease, keep the error and count the attempt, visibly in history.

        `update` (or raw `fields`) is written with it (e.g. since when GKE has been busy)."""
        if outcome not in ("retry", "failed"):
            raise ValueError(f"outcome: expected 'retry' or 'failed', got {outcome!r}")
        doc = self._cluster_doc(ref)

        def txn(transaction: Any) -> ClusterRecord:
            (snap,) = self._read(transaction, doc)
            if not snap.exists:
                raise self._unknown(ref, event_id)
            now = _now()
            data = snap.to_dict() or {}
            attempts = int(data.get("attempts") or 0) + (1 if count_attempt else 0)
            releases = int(data.get("releases") or 0) + 1
            changes: dict[str, Any] = {
                "lastError": {"message": str(error)[:4000], "step": step, "eventId": event_id, "at": now},
                "attempts": attempts, "releases": releases, "updatedAt": now, **dict(fields or {}),
                **workflow_changes(update)}
            held = lease_of(data.get("lease"))
            if held is not None and held.holder == (holder or event_id):
                changes["lease"] = None
            before = data.get("state")
            if state is not None and state != before:
                changes["state"] = state
                changes["stateSince"] = now
            new = _apply(data, changes)
            transaction.update(doc, _wire(changes))
            # One entry per release: the id carries the cluster's release counter, so every retry shows.
            history = self._history_doc(ref, f"{safe_id(event_id)}~{safe_id(step)}~{outcome}{releases}")
            transaction.set(history, self._history_entry(HistoryEntry(
                event_id, step, outcome, error, new.get("state"), previous_state=before, attempt=attempts)))
            return record_of(ref, new)

        return self._run(txn)

    @_edge
    def list_clusters(self, state: str | None = None, *, limit: int | None = None) -> list[ClusterRecord]:
        query = self._col("clusters")
        if state is not None:
            from google.cloud.firestore_v1.base_query import FieldFilter

            query = query.where(filter=FieldFilter("state", "==", state))
        if limit is not None:
            query = query.limit(limit)
        out = []
        for snap in query.stream(**self._opts):
            try:
                ref = ClusterRef.from_doc_id(snap.id)
            except Rejected:
                continue  # a document someone wrote by hand under another id: not ours to show
            out.append(record_of(ref, snap.to_dict() or {}))
        return out

    # -- the ledger
    @_edge
    def seen(self, ledger_key: str) -> bool:
        return bool(self._ledger_doc(ledger_key).get(**self._opts).exists)

    @_edge
    def get_ledger(self, ledger_key: str) -> LedgerEntry | None:
        """The ledger entry of `ledger_key` (who handled it, and the request's digest), or None."""
        snap = self._ledger_doc(ledger_key).get()
        return ledger_entry_of(snap.to_dict() or {}) if snap.exists else None

    @_edge
    def record_ledger(self, ledger_key: str, *, event_id: str, step: str, outcome: str,
                      cluster: ClusterRef | None, note: LedgerNote | None = None) -> bool:
        """Create the ledger entry if absent (one commit RPC); False when it existed already."""
        from google.api_core import exceptions as gexc

        _check_outcome(outcome)
        try:
            self._ledger_doc(ledger_key).create(
                {**self._ledger_entry(event_id=event_id, step=step, outcome=outcome, cluster=cluster, now=_now()),
                 **ledger_note_doc(note)},
                **self._opts)
        except gexc.AlreadyExists:
            return False
        return True

    # -- NADs
    @_edge
    def get_nad(self, ref: ClusterRef, namespace: str, name: str) -> NadRecord | None:
        snap = self._nad_doc(ref, namespace, name).get()
        return nad_of(namespace, name, nad_view(snap.to_dict() or {})) if snap.exists else None

    def put_nad(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                change: Callable[[NadRecord], NadRecord], outcome: str = "ok", ledger_key: str | None = None,
                expect_states: tuple[str | None, ...] | None = None,
                expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                known: NadVersion | None = None) -> bool:
        """Record a NAD's state (see `put_nad_version`); True when it was written."""
        return self.put_nad_version(
            ref, namespace, name, event_id=event_id, step=step, change=change, outcome=outcome,
            ledger_key=ledger_key, expect_states=expect_states, expect=expect, history=history,
            write_ledger=write_ledger, ledger_note=ledger_note, known=known) is not None

    @_edge
    def get_cluster_and_nad_unless_seen(self, ref: ClusterRef, ledger_key: str, namespace: str,
                                        name: str) -> tuple[ClusterRecord | None, bool, NadVersion]:
        """A NAD request's first look in one read: the cluster's record, whether the ledger has
        `ledger_key`, and the NAD's record with its update time (the claim's precondition, so
        the claim needs no read of its own)."""
        doc, ledger, nad = self._cluster_doc(ref), self._ledger_doc(ledger_key), self._nad_doc(ref, namespace, name)
        found = self._fetch([doc, ledger, nad])
        if found.get(ledger.path) is not None:
            return None, True, NadVersion(None, None)
        cluster, mine = found.get(doc.path), found.get(nad.path)
        rec = record_of(ref, cluster[0]) if cluster is not None else None
        version = (NadVersion(nad_of(namespace, name, nad_view(mine[0])), mine[1]) if mine is not None
                   else NadVersion(None, None))
        return rec, False, version

    @_edge
    def put_nad_version(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                        change: Callable[[NadRecord], NadRecord], outcome: str = "ok",
                        ledger_key: str | None = None, expect_states: tuple[str | None, ...] | None = None,
                        expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                        write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                        known: NadVersion | None = None) -> NadVersion | None:
        """Record a NAD's state; ledger, NAD document and history entry in one atomic commit.

        `change(current)` takes the record as read (a blank `NadRecord` with state None when there
        is no document) and returns it as it should be: its state, message and fields. It runs
        inside the compare-and-set, so it decides on what is really there; it may raise
        `Transient` (a busy NAD). The fields that differ are written through `NAD_FIELDS`.

        Returns None (and writes nothing) when `ledger_key` was recorded before, or when the
        record's current state is not one of `expect_states` (None in it stands for "no document
        yet") or `expect(current)` is false: a compare-and-set, so that of two workers moving one
        NAD out of PENDING or APPLYING exactly one succeeds. `history=False` records no history
        entry (a transient reservation); `write_ledger=False` checks the ledger only.
        The cluster's own document is neither read nor written, so NADs never wait on it.
        `ledger_note` goes into the ledger entry (the digest of the request, for idempotency keys).

        Returns the record as written and its update time (None when nothing was written).
        `known` is the record as this worker last read or wrote it: the first attempt decides
        on it instead of reading again, and its update time is the commit's precondition, so
        any write since (another worker's) fails the commit and the attempt is made again on a
        fresh read, with every condition checked as usual. It may be used only when nothing
        else read in this call has changed meaning since: the ledger, when it is written, is
        guarded by its own create.
        """
        _check_outcome(outcome)
        doc = self._nad_doc(ref, namespace, name)
        ledger = self._ledger_doc(ledger_key) if ledger_key else None
        identity = {"namespace": namespace, "name": name, "clusterPath": ref.path}
        history_doc = self._history_doc(
            ref, f"{safe_id(event_id)}~{safe_id(step)}~{namespace}~{name}")
        blank = NadRecord(namespace, name)

        # Optimistic, not a transaction: one batched read, then one atomic commit guarded by
        # preconditions (the document's update time, the ledger entry's absence). The emulator
        # (like Firestore) locks documents read in a transaction; NAD writes of one cluster race
        # each other by design (claims), and a lost race is an answer here, not a retry.
        from google.api_core import exceptions as gexc

        attempts = 4
        for attempt in range(attempts):
            current: NadRecord
            if attempt == 0 and known is not None:
                update_time = known.update_time
                current = known.record if known.record is not None and update_time is not None else blank
            else:
                found = self._fetch([d for d in (doc, ledger) if d is not None])
                if ledger is not None and found.get(ledger.path) is not None:
                    return None
                mine = found.get(doc.path)
                if mine is not None:
                    current, update_time = nad_of(namespace, name, nad_view(mine[0])), mine[1]
                else:
                    current, update_time = blank, None
            exists = update_time is not None
            now = _now()
            before = current.state if exists else None
            if expect_states is not None and before not in expect_states:
                return None
            if expect is not None and not expect(current):
                return None
            after = change(current)
            changes: dict[str, Any] = {**nad_changes(current, after), "updatedAt": now}
            if after.state != before:
                changes["stateSince"] = now
            batch = self.client.batch()
            if exists:
                # Only what differs goes on the wire: under the update-time precondition `current`
                # is the document, so a field rewritten with its own value changes nothing.
                stored = request_once(current.data, current.data)  # the view as the document holds it
                sent = {k: v for k, v in changes.items() if not _unchanged(stored, k, v)}
                batch.update(doc, _wire(sent), option=self.client.write_option(last_update_time=update_time))
                written = _apply(dict(current.data), changes)
            else:
                written = {**identity, **{k: v for k, v in changes.items() if v is not DELETE}, "createdAt": now}
                batch.create(doc, written)
            if history:
                last = after.last_request
                batch.set(history_doc, self._history_entry(HistoryEntry(
                    event_id, step, outcome, after.message, after.state, previous_state=before,
                    nad=f"{namespace}/{name}",
                    requester=last.requester if last is not None and last != current.last_request else None)))
            if ledger is not None and write_ledger:
                batch.create(ledger, {**self._ledger_entry(event_id=event_id, step=step, outcome=outcome,
                                                           cluster=ref, now=now), **ledger_note_doc(ledger_note)})
            try:
                results = batch.commit()
            except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Conflict, gexc.Aborted, gexc.NotFound):
                continue  # another writer got there first: read again and re-check the conditions
            # the NAD document is the batch's first write
            return NadVersion(nad_of(namespace, name, nad_view(written)), results[0].update_time)
        raise Transient(f"NAD {namespace}/{name} of {ref.path}: {attempts} writes lost to concurrent writers",
                        code="ABORTED", api="firestore")

    @_edge
    def list_nads(self, ref: ClusterRef, state: str | None = None, *,
                  fields: tuple[str, ...] | None = None) -> list[NadRecord]:
        """The NAD records of a cluster; `fields` (`NadRecord` attributes) projects them: the
        decision on a new request needs only state, master and range, not each NAD's rendered
        config and request. An attribute not projected has its default."""
        wanted = nad_fields_of(fields) if fields else None
        if state is None:
            found = self._listed(self._cluster_doc(ref), "nads", wanted)
        else:
            from google.cloud.firestore_v1.base_query import FieldFilter

            query = self._cluster_doc(ref).collection("nads").where(filter=FieldFilter("state", "==", state))
            found = self._documents(query.select(wanted) if wanted else query)
        out = []
        for doc_id, raw in found:
            namespace, _, name = doc_id.partition("~")
            out.append(nad_of(namespace, name, nad_view(raw)))
        return sorted(out, key=lambda r: (r.namespace, r.name))

    # -- history
    @_edge
    def history(self, ref: ClusterRef, *, page_size: int = 50,
                page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """The cluster's history in time order, `page_size` entries at a time.

        Returns (entries, next token or None). The token is opaque (the last entry's commit time
        and id), so a page is stable even while new entries are appended.
        """
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise Rejected("invalid page size", [Problem("page_size", f"expected 1..1000, got {page_size!r}")])
        col = self._cluster_doc(ref).collection("history")
        query = col.order_by("at").order_by("__name__")
        if page_token:
            at, doc_id = _decode_token(page_token)
            query = query.start_after({"at": at, "__name__": doc_id})
        snaps = list(query.limit(page_size + 1).stream(**self._opts))
        more = len(snaps) > page_size
        snaps = snaps[:page_size]
        entries = [{**(s.to_dict() or {}), "id": s.id} for s in snaps]
        token = _encode_token(entries[-1]["at"], snaps[-1].id) if more and entries else None
        return entries, token

    # -- rejections
    @_edge
    def record_rejection(self, *, event_id: str, cluster: ClusterRef | None, reason: str,
                         problems: Sequence[Problem | Mapping[str, Any]], kind: RejectionKind, excerpt: str = "",
                         ledger_key: str | None = None) -> bool:
        """Keep a refused request where people look; False (nothing written) if recorded before."""
        if cluster is not None:
            doc = self._cluster_doc(cluster).collection("rejections").document(safe_id(event_id))
            history = self._history_doc(cluster, f"{safe_id(event_id)}~rejected")
        else:
            doc = self._col("rejections").document(safe_id(event_id))
            history = None
        ledger = self._ledger_doc(ledger_key) if ledger_key else None
        items = [_plain(p) for p in problems]
        text = excerpt if isinstance(excerpt, str) else repr(excerpt)

        def txn(transaction: Any) -> bool:
            snap, seen = self._read(transaction, doc, ledger)
            if snap.exists or (seen is not None and seen.exists):
                return False
            from google.cloud import firestore

            now = _now()
            transaction.set(doc, {
                "eventId": event_id, "cluster": cluster.path if cluster else None, "reason": str(reason),
                "kind": str(kind), "problems": items, "excerpt": text[:EXCERPT_MAX],
                "at": firestore.SERVER_TIMESTAMP})
            if history is not None:
                summary = str(reason) + (": " + "; ".join(
                    f"{p.get('field')}: {p.get('message')}" if isinstance(p, Mapping) and p.get("field")
                    else str(p.get("message", p)) if isinstance(p, Mapping) else str(p)
                    for p in items) if items else "")
                transaction.set(history, self._history_entry(HistoryEntry(
                    event_id, "reject", "rejected", summary, None, kind=str(kind))))
            if ledger is not None:
                transaction.set(ledger, self._ledger_entry(event_id=event_id, step="reject", outcome="rejected",
                                                           cluster=cluster, now=now))
            return True

        return self._run(txn)

    @_edge
    def list_rejections(self, ref: ClusterRef | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: the cluster's rejections, or the top-level ones when `ref` is None."""
        from google.cloud import firestore

        col = (self._cluster_doc(ref).collection("rejections") if ref is not None
               else self._col("rejections"))
        query = col.order_by("at", direction=firestore.Query.DESCENDING).limit(limit)
        return [{**(s.to_dict() or {}), "id": s.id} for s in query.stream(**self._opts)]

    # -- policy and housekeeping
    @_edge
    def get_policy(self) -> dict[str, Any] | None:
        snap = self._policy_doc().get(**self._opts)
        return snap.to_dict() if snap.exists else None

    def _policy_doc(self) -> Any:
        """`config/policy`, in a database of its own when `policy_database` names one: there the
        runtime identity may only read it and only `policy_writers` may change it (infra/firestore.tf,
        infra/iam.tf; docs/SECURITY.md "Who may change the policy")."""
        db = self.settings.policy_database
        if not db or db == self.settings.database:
            return self._col("config").document("policy")
        if self._policy_client is None:
            from google.cloud import firestore

            self._policy_client = firestore.Client(project=self.settings.project or None, database=db)
        return self._policy_client.collection(self.settings.collection("config")).document("policy")

    # -- bundle rollouts (shared/flows/rollout.py)
    def _rollout_doc(self) -> Any:
        return self._col("rollouts").document("current")

    @_edge
    def get_rollout(self) -> tuple[FleetRollout | None, Any]:
        """`rollouts/current` and its update time (the precondition of the next `put_rollout`)."""
        snap = self._rollout_doc().get()
        return (rollout_of(snap.to_dict() or {}), snap.update_time) if snap.exists else (None, None)

    @_edge
    def put_rollout(self, rollout: FleetRollout, update_time: Any) -> Any:
        """Write `rollouts/current` (the record whole, through `ROLLOUT_FIELDS`) unless it changed
        since it was read at `update_time` (None: it did not exist), and return its new update time.
        A concurrent change (a tick, `rollout resume`/`abort`) is `Transient`."""
        from google.api_core import exceptions as gexc

        ref = self._rollout_doc()
        try:
            if update_time is None:
                result = ref.create(rollout_doc(rollout))
            else:
                result = ref.update(_wire(rollout_changes(rollout)),
                                    option=self.client.write_option(last_update_time=update_time))
        except (gexc.Conflict, gexc.FailedPrecondition, gexc.NotFound) as e:
            raise Transient(f"rollouts/current changed while it was being updated ({type(e).__name__}); "
                            "read it again", code="ABORTED", api="firestore") from None
        return result.update_time

    @_edge
    def delete_cluster_tree(self, ref: ClusterRef) -> None:
        """Tests and sandbox only: the cluster's document and all its subcollections."""
        doc = self._cluster_doc(ref)
        for sub in doc.collections():
            while True:
                snaps = list(sub.limit(400).stream(**self._opts))
                if not snaps:
                    break
                batch = self.client.batch()
                for s in snaps:
                    batch.delete(s.reference)
                batch.commit(**self._opts)
        doc.delete(**self._opts)
