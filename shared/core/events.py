"""From a Pub/Sub CloudEvent to one typed event, or one typed `Rejected`.

The functions are triggered by `google.cloud.pubsub.topic.v1.messagePublished` CloudEvents:
Eventarc sends `data = {"message": {...}, "subscription": ...}`; functions-framework's
conversion of a raw push drops `subscription`. Both decode the same. The payload is either a
Cloud Audit Logs `LogEntry` for a GKE write (published by a Logging sink), a NAD request, or a
reconcile nudge.

Whatever arrives -- other services, other methods, broken base64, non-UTF-8, non-JSON, wrong
types -- the decoders raise `Rejected` with a `kind` and a precise reason, and nothing else:
the function then records and acknowledges it instead of crashing into a retry storm.
Pure module: standard library plus `shared.nad`/`shared.refs`.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.core.errors import NOT_FOR_US, NotForUs, Problem, Rejected, RejectionKind
from shared.core.nad import NadRequest, load_json, parse_cluster, parse_request, plain
from shared.core.refs import ClusterRef, check_parts, parse_resource_name, valid_node_pool_name
from shared.core.requesters import token_from_attributes

MAX_MESSAGE_BYTES = 1024 * 1024  # an audit LogEntry is a few KiB; Pub/Sub's own cap is 10 MB
AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
SERVICE = "container.googleapis.com"
ACTIONS = {
    "CreateCluster": "cluster.created",
    "DeleteCluster": "cluster.deleted",
    "CreateNodePool": "node_pool.created",
    "DeleteNodePool": "node_pool.deleted",
    # Changes to a cluster that exists: opting in or out later (labels), an upgrade that may make an
    # INELIGIBLE cluster eligible. The cluster is looked at again when the operation is done.
    "SetLabels": "cluster.labels_set",
    "UpdateCluster": "cluster.updated",
    "UpdateMaster": "cluster.updated",
}
API_VERSIONS = ("v1", "v1beta1")
METHODS = {f"google.container.{v}.ClusterManager.{m}": a for v in API_VERSIONS for m, a in ACTIONS.items()}
RESOURCE_TYPES = ("gke_cluster", "gke_nodepool")
# The kinds an event's decoding refuses with (`RejectionKind` members); those of input not addressed to
# the controller (`NOT_FOR_US`) are raised as `NotForUs`, acknowledged unrecorded.
KINDS = (RejectionKind.ENVELOPE, RejectionKind.ENCODING, RejectionKind.JSON, RejectionKind.NOT_AUDIT,
         RejectionKind.OTHER_SERVICE, RejectionKind.OTHER_METHOD, RejectionKind.INVALID)


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    publish_time: str | None = None
    subscription: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    """A GKE cluster or node pool was created, deleted or changed (one audit entry of the operation).

    `refused`: the request was refused at once (GKE writes a single entry without `operation`,
    severity ERROR, with a status): no operation ran, so it ends nothing anyone waits for.
    """

    event_id: str
    action: str
    cluster: ClusterRef
    node_pool: str | None
    first: bool
    last: bool
    operation_id: str | None
    method: str
    status_code: int | None = None
    timestamp: str | None = None
    principal: str | None = None  # who did it; carried for the record, kept out of logs
    status_message: str | None = None

    @property
    def refused(self) -> bool:
        return self.failed and self.operation_id is None

    @property
    def failed(self) -> bool:
        return self.status_code is not None and self.status_code != 0


@dataclass(frozen=True)
class NadRequestEvent:
    event_id: str
    request: NadRequest
    # The requester's ID token from the message attributes (verified by the NAD flow); kept out
    # of repr, logs and records: only the email it proves is recorded.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReconcileEvent:
    """A nudge to re-examine one cluster (scope) or every known cluster (scope None)."""

    event_id: str
    scope: ClusterRef | None = None
    # Set on the scoped messages the scheduled tick fans out (the tick's event id): a sweep is
    # not a user's re-check, so it leaves INELIGIBLE / FAILED / IGNORED clusters alone.
    sweep: str | None = None


HEADLINES = {
    RejectionKind.ENVELOPE: "not a Pub/Sub messagePublished event",
    RejectionKind.ENCODING: "undecodable message data",
    RejectionKind.JSON: "message data is not valid JSON",
    RejectionKind.NOT_AUDIT: "not an audit log entry",
    RejectionKind.OTHER_SERVICE: "audit entry of another service",
    RejectionKind.OTHER_METHOD: "audit entry of another method",
    RejectionKind.INVALID: "invalid event",
}


def _reject(detail: str, kind: RejectionKind, field_: str = "", *, event_id: str | None = None,
            cluster: ClusterRef | None = None) -> Rejected:
    """`reason` is the kind's headline; the one problem names the field and says precisely why."""
    cls = NotForUs if kind in NOT_FOR_US else Rejected
    return cls(HEADLINES[kind], [Problem(field_, detail)], kind=kind, event_id=event_id, cluster=cluster)


T = TypeVar("T")


def _only_rejected(fn: Callable[..., T]) -> Callable[..., T]:
    """Last line of defence: an input shape nobody foresaw still comes out as `Rejected`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Rejected:
            raise
        except Exception as e:  # the contract is "nothing but Rejected"
            raise Rejected(f"undecodable event ({type(e).__name__})", kind=RejectionKind.INVALID) from e

    return wrapper


# --------------------------------------------------------------------------------------------
# The Pub/Sub envelope
# --------------------------------------------------------------------------------------------

def _ce_parts(ce: Any) -> tuple[Any, Any]:
    if isinstance(ce, Mapping):
        return ce.get("id"), ce.get("data")
    try:
        ce_id = ce["id"]
    except (KeyError, TypeError, IndexError):
        ce_id = None
    if not hasattr(ce, "data"):
        raise _reject("not a CloudEvent: no data", RejectionKind.ENVELOPE)
    return ce_id, ce.data


@_only_rejected
def message_from_cloudevent(ce: Any) -> PubSubMessage:
    """The Pub/Sub message inside a messagePublished CloudEvent (or a plain mapping of one)."""
    ce_id, data = _ce_parts(ce)
    if isinstance(data, bytes | bytearray | str):
        try:
            data = load_json(bytes(data) if isinstance(data, bytearray) else data,
                             max_bytes=2 * MAX_MESSAGE_BYTES, what="CloudEvent data")
        except Rejected as e:
            raise _reject(f"CloudEvent data is not a JSON envelope: {e.message}", RejectionKind.ENVELOPE) from None
    if not isinstance(data, Mapping):
        raise _reject(f"CloudEvent data must be an object with 'message', got {type(data).__name__}",
                      RejectionKind.ENVELOPE, "data")
    message = data.get("message")
    if not isinstance(message, Mapping):
        raise _reject("CloudEvent data has no 'message' object", RejectionKind.ENVELOPE, "data.message")

    message_id = _first_str(message, "messageId", "message_id")
    if message_id is None and isinstance(ce_id, str) and ce_id:
        message_id = ce_id
    if message_id is None:
        raise _reject("no message id (data.message.messageId) nor CloudEvent id", RejectionKind.ENVELOPE,
                      "data.message.messageId")
    if len(message_id) > 256:
        raise _reject("message id longer than 256 characters", RejectionKind.ENVELOPE, "data.message.messageId",
                      event_id=message_id[:256])

    raw = message.get("data")
    if raw is None:
        payload = b""
    elif not isinstance(raw, str):
        raise _reject(f"data.message.data must be a base64 string, got {type(raw).__name__}", RejectionKind.ENVELOPE,
                      "data.message.data", event_id=message_id)
    else:
        if len(raw) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
            raise _reject(f"message data over {MAX_MESSAGE_BYTES} bytes", RejectionKind.ENVELOPE, "data.message.data",
                          event_id=message_id)
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _reject(f"data.message.data is not valid base64 ({e})", RejectionKind.ENCODING, "data.message.data",
                          event_id=message_id) from None

    attributes = message.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise _reject("data.message.attributes must map strings to strings", RejectionKind.ENVELOPE,
                      "data.message.attributes", event_id=message_id)
    subscription = data.get("subscription")
    return PubSubMessage(
        message_id=message_id,
        data=payload,
        attributes=dict(attributes),
        publish_time=_first_str(message, "publishTime", "publish_time"),
        subscription=subscription if isinstance(subscription, str) else None,
    )


def _first_str(obj: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def as_message(event: PubSubMessage | Any) -> PubSubMessage:
    """The decoders take the message the entry point decoded once; a CloudEvent is decoded here
    (for callers that have nothing else, such as tests and tools)."""
    return event if isinstance(event, PubSubMessage) else message_from_cloudevent(event)


def _json_payload(msg: PubSubMessage, what: str) -> Any:
    try:
        return load_json(msg.data, max_bytes=MAX_MESSAGE_BYTES, what=what)
    except Rejected as e:
        kind = e.kind if e.kind in (RejectionKind.ENCODING, RejectionKind.JSON) else RejectionKind.ENVELOPE
        raise Rejected(e.reason, e.problems, kind=kind, event_id=msg.message_id) from None


# --------------------------------------------------------------------------------------------
# Audit log entries
# --------------------------------------------------------------------------------------------

@_only_rejected
def decode_audit(event: PubSubMessage | Any) -> AuditEvent:
    """A GKE Create/Delete Cluster/NodePool audit `LogEntry` -> `AuditEvent`."""
    msg = as_message(event)
    eid = msg.message_id
    entry = _json_payload(msg, "audit log entry")
    if not isinstance(entry, Mapping):
        raise _reject(f"a LogEntry is a JSON object, got {type(entry).__name__}", RejectionKind.NOT_AUDIT, event_id=eid)
    proto = entry.get("protoPayload")
    if not isinstance(proto, Mapping):
        raise _reject("no protoPayload: not an audit log entry", RejectionKind.NOT_AUDIT, "protoPayload", event_id=eid)
    type_url = proto.get("@type")
    if type_url is not None and type_url != AUDIT_LOG_TYPE:
        raise _reject(f"protoPayload is {_short(type_url)}, not an AuditLog", RejectionKind.NOT_AUDIT,
                      "protoPayload.@type", event_id=eid)
    service = proto.get("serviceName")
    if service != SERVICE:
        raise _reject(f"service {_short(service)} is not {SERVICE}", RejectionKind.OTHER_SERVICE,
                      "protoPayload.serviceName", event_id=eid)
    method = proto.get("methodName")
    if not isinstance(method, str) or method not in METHODS:
        raise _reject(f"method {_short(method)} is not one the controller reacts to", RejectionKind.OTHER_METHOD,
                      "protoPayload.methodName", event_id=eid)
    action = METHODS[method]

    cluster, node_pool = _where(entry, proto, eid)
    if action.startswith("node_pool.") and node_pool is None:
        raise _reject("node pool event without a node pool name", RejectionKind.INVALID,
                      "resource.labels.nodepool_name", event_id=eid, cluster=cluster)

    first, last, operation_id = _operation(entry.get("operation"), eid, cluster)
    status_code = _status_code(proto.get("status"), eid, cluster)
    status = proto.get("status")
    status_message = status.get("message") if isinstance(status, Mapping) else None
    auth = proto.get("authenticationInfo")
    principal = auth.get("principalEmail") if isinstance(auth, Mapping) else None
    timestamp = entry.get("timestamp")
    return AuditEvent(
        event_id=eid,
        action=action,
        cluster=cluster,
        node_pool=node_pool if action.startswith("node_pool.") else None,
        first=first,
        last=last,
        operation_id=operation_id,
        method=method,
        status_code=status_code,
        status_message=status_message[:2000] if isinstance(status_message, str) and status_code else None,
        timestamp=timestamp if isinstance(timestamp, str) else None,
        principal=principal if isinstance(principal, str) else None,
    )


def _where(entry: Mapping[str, Any], proto: Mapping[str, Any], eid: str) -> tuple[ClusterRef, str | None]:
    """Resource labels and resourceName (zones/ or locations/ form) -> one ClusterRef (+ pool).

    When both are present they must agree: a mismatch means the entry is not what we think.
    """
    from_labels: ClusterRef | None = None
    pool_label: str | None = None
    resource = entry.get("resource")
    if resource is not None and not isinstance(resource, Mapping):
        raise _reject("resource must be an object", RejectionKind.INVALID, "resource", event_id=eid)
    if isinstance(resource, Mapping):
        rtype = resource.get("type")
        if rtype is not None and rtype not in RESOURCE_TYPES:
            raise _reject(f"resource.type {_short(rtype)} is not gke_cluster or gke_nodepool", RejectionKind.INVALID,
                          "resource.type", event_id=eid)
        labels = resource.get("labels")
        if labels is not None and not isinstance(labels, Mapping):
            raise _reject("resource.labels must be an object", RejectionKind.INVALID, "resource.labels", event_id=eid)
        labels = labels or {}
        parts = (labels.get("project_id"), labels.get("location"), labels.get("cluster_name"))
        if any(p is not None for p in parts):
            problems = check_parts(*parts, field="resource.labels")
            if problems:
                raise Rejected("invalid resource labels", problems, kind=RejectionKind.INVALID, event_id=eid)
            from_labels = ClusterRef(*parts)  # type: ignore[arg-type]
        pool = labels.get("nodepool_name")
        if pool is not None:
            if not valid_node_pool_name(pool) or not plain(pool):
                raise _reject(f"invalid node pool name {_short(pool)}", RejectionKind.INVALID,
                              "resource.labels.nodepool_name", event_id=eid, cluster=from_labels)
            pool_label = pool

    from_name: ClusterRef | None = None
    pool_name: str | None = None
    resource_name = proto.get("resourceName")
    if resource_name is not None:
        if isinstance(resource_name, str) and not plain(resource_name):
            raise _reject(f"whitespace or control characters in {_short(resource_name)}", RejectionKind.INVALID,
                          "protoPayload.resourceName", event_id=eid, cluster=from_labels)
        try:
            from_name, pool_name = parse_resource_name(resource_name, field="protoPayload.resourceName")
        except Rejected as e:
            raise Rejected(e.reason, e.problems, kind=RejectionKind.INVALID, event_id=eid,
                           cluster=from_labels) from None

    if from_labels and from_name and from_labels != from_name:
        raise _reject(f"resource labels name {from_labels} but resourceName names {from_name}", RejectionKind.INVALID,
                      "protoPayload.resourceName", event_id=eid, cluster=from_labels)
    cluster = from_labels or from_name
    if cluster is None:
        raise _reject("no cluster: neither resource.labels nor protoPayload.resourceName", RejectionKind.INVALID,
                      "resource.labels", event_id=eid)
    if pool_label and pool_name and pool_label != pool_name:
        raise _reject(f"node pool label {pool_label!r} but resourceName names {pool_name!r}", RejectionKind.INVALID,
                      "protoPayload.resourceName", event_id=eid, cluster=cluster)
    pool = pool_label or pool_name or _pool_in_request(proto)
    return cluster, pool


def _pool_in_request(proto: Mapping[str, Any]) -> str | None:
    """CreateNodePool entries also carry the pool in request.nodePool.name."""
    request = proto.get("request")
    node_pool = request.get("nodePool") if isinstance(request, Mapping) else None
    name = node_pool.get("name") if isinstance(node_pool, Mapping) else None
    return name if valid_node_pool_name(name) and plain(name) else None


def _operation(op: Any, eid: str, cluster: ClusterRef) -> tuple[bool, bool, str | None]:
    """(first, last, id). An entry with neither flag is a single-entry operation: both."""
    if op is None:
        return True, True, None
    if not isinstance(op, Mapping):
        raise _reject("operation must be an object", RejectionKind.INVALID, "operation", event_id=eid, cluster=cluster)
    first, last = op.get("first", False), op.get("last", False)
    if not isinstance(first, bool) or not isinstance(last, bool):
        raise _reject("operation.first/last must be booleans", RejectionKind.INVALID, "operation", event_id=eid,
                      cluster=cluster)
    if not first and not last:
        first = last = True
    op_id = op.get("id")
    if op_id is not None and not isinstance(op_id, str):
        raise _reject("operation.id must be a string", RejectionKind.INVALID, "operation.id", event_id=eid,
                      cluster=cluster)
    return first, last, op_id or None


def _status_code(status: Any, eid: str, cluster: ClusterRef) -> int | None:
    if status is None:
        return None
    if not isinstance(status, Mapping):
        raise _reject("protoPayload.status must be an object", RejectionKind.INVALID, "protoPayload.status",
                      event_id=eid, cluster=cluster)
    code = status.get("code")
    if code is None:
        return None  # `status: {}` is how a successful operation is often logged
    if type(code) is not int:
        raise _reject("protoPayload.status.code must be an integer", RejectionKind.INVALID, "protoPayload.status.code",
                      event_id=eid, cluster=cluster)
    return code or None


# --------------------------------------------------------------------------------------------
# NAD requests and reconcile nudges
# --------------------------------------------------------------------------------------------

@_only_rejected
def decode_nad_request(event: PubSubMessage | Any) -> NadRequestEvent:
    """A NAD request message -> `NadRequestEvent`; `Rejected` carries event_id and cluster."""
    msg = as_message(event)
    try:
        return NadRequestEvent(msg.message_id, parse_request(msg.data), token_from_attributes(msg.attributes))
    except Rejected as e:
        e.event_id = msg.message_id
        raise


@_only_rejected
def decode_reconcile(event: PubSubMessage | Any) -> ReconcileEvent:
    """An empty payload or `{}` -> every cluster; `{"cluster": "projects/..."}` -> that one."""
    msg = as_message(event)
    if not msg.data.strip():
        return ReconcileEvent(msg.message_id, None)
    obj = _json_payload(msg, "reconcile request")
    if not isinstance(obj, Mapping):
        raise _reject(f"a reconcile request is a JSON object, got {type(obj).__name__}", RejectionKind.INVALID,
                      event_id=msg.message_id)
    unknown = sorted(str(k)[:100] for k in obj if k not in ("cluster", "sweep"))
    if unknown:
        raise Rejected("invalid reconcile request", [Problem(k, "unknown field") for k in unknown],
                       kind=RejectionKind.INVALID, event_id=msg.message_id)
    sweep = obj.get("sweep")
    if sweep is not None and (not isinstance(sweep, str) or not 0 < len(sweep) <= 256 or obj.get("cluster") is None):
        raise Rejected("invalid reconcile request", [Problem("sweep", "the tick's event id (a string of 1..256 "
                                                                      "characters), with a cluster")],
                       kind=RejectionKind.INVALID, event_id=msg.message_id)
    if obj.get("cluster") is None:
        return ReconcileEvent(msg.message_id, None)
    try:
        return ReconcileEvent(msg.message_id, parse_cluster(obj["cluster"], field="cluster"), sweep)
    except Rejected as e:
        raise Rejected(e.reason, e.problems, kind=RejectionKind.INVALID, event_id=msg.message_id) from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."
