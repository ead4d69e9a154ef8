"""Cloud Audit Logs entries for the sandbox's GKE writes, and sinks that deliver them.

The controller reacts to GKE's Admin Activity audit log, routed by a Logging sink to Pub/Sub.
The sandbox must therefore produce the same JSON `LogEntry` Cloud Logging exports
(`protoPayload` of type `google.cloud.audit.AuditLog`, `resource` gke_cluster / gke_nodepool,
`operation` {id, producer, first|last}) or the controller would be tested against a fiction.
A long-running GKE operation logs twice: `operation.first` when accepted (with the request and
the RUNNING Operation as response) and `operation.last` when done (status only, as GKE does).

Sinks: any callable taking the entry dict; `HttpPushSink` wraps each entry in the Pub/Sub push
envelope a push subscription POSTs (the form functions-framework turns into a CloudEvent).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import logging
import queue
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SERVICE = "container.googleapis.com"
AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def rfc3339(when: dt.datetime | None = None) -> str:
    """Cloud Logging's timestamp form: UTC, microseconds, `Z`."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_entry(
    *,
    project: str,
    method: str,
    resource_name: str,
    resource_labels: Mapping[str, str],
    principal: str,
    operation_id: str | None,
    first: bool,
    location: str,
    permission: str,
    request: Mapping[str, Any] | None = None,
    response: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    shape: str = "sandbox",
    cluster_resource: str | None = None,
    operation_type: str | None = None,
) -> dict[str, Any]:
    """One Admin Activity audit LogEntry, as exported by a Logging sink (JSON field names).

    `method` is the short RPC name (`CreateNodePool`); `resource_labels` must hold project_id,
    location, cluster_name and, for node pool operations, nodepool_name (which selects the
    `gke_nodepool` monitored resource type, as GKE does). `operation_id` None: a request refused
    at once, logged as one entry without `operation`.

    `shape="gke"` reproduces the captured real entries (GoogleCloudPlatform/khi,
    test/logs/gke_audit/): the first entry carries who, the authorization (on the cluster, also
    for node pool methods), the request and the Operation; the `last` entry carries none of them,
    only `metadata.operationType` and the status. `shape="sandbox"` is the uniform older shape.
    """
    if shape not in ("gke", "sandbox"):
        raise ValueError(f"shape must be 'gke' or 'sandbox', got {shape!r}")
    now = rfc3339()
    if shape == "gke":
        payload = _gke_payload(method=method, resource_name=resource_name, principal=principal,
                               first=first or operation_id is None, location=location, permission=permission,
                               request=request, response=response, status=status,
                               cluster_resource=cluster_resource or resource_name, operation_type=operation_type)
    else:
        payload = {
            "@type": AUDIT_LOG_TYPE,
            "status": dict(status or {}),
            "authenticationInfo": {"principalEmail": principal},
            "requestMetadata": {
                "callerIp": "127.0.0.1",
                "callerSuppliedUserAgent": "google-cloud-sdk sandbox,gzip(gfe)",
                "requestAttributes": {"time": now, "auth": {}},
                "destinationAttributes": {},
            },
            "serviceName": SERVICE,
            "methodName": f"google.container.v1.ClusterManager.{method}",
            "authorizationInfo": [{
                "resource": resource_name,
                "permission": permission,
                "granted": True,
                "resourceAttributes": {},
            }],
            "resourceName": resource_name,
            "resourceLocation": {"currentLocations": [location]},
        }
        if request is not None:
            payload["request"] = dict(request)
        if response is not None:
            payload["response"] = dict(response)
    failed = bool(status and status.get("code"))
    entry: dict[str, Any] = {
        "protoPayload": payload,
        "insertId": secrets.token_hex(6),
        "resource": {
            "type": "gke_nodepool" if "nodepool_name" in resource_labels else "gke_cluster",
            "labels": dict(resource_labels),
        },
        "timestamp": now,
        "severity": "ERROR" if failed else "NOTICE",
        "logName": f"projects/{project}/logs/cloudaudit.googleapis.com%2Factivity",
    }
    if operation_id is not None:
        operation: dict[str, Any] = {"id": operation_id, "producer": SERVICE}
        operation["first" if first else "last"] = True
        entry["operation"] = operation
    entry["receiveTimestamp"] = now
    return entry


def _subject(principal: str) -> str:
    return f"serviceAccount:{principal}" if principal.endswith(".gserviceaccount.com") else principal


def _gke_payload(*, method: str, resource_name: str, principal: str, first: bool, location: str, permission: str,
                 request: Mapping[str, Any] | None, response: Mapping[str, Any] | None,
                 status: Mapping[str, Any] | None, cluster_resource: str,
                 operation_type: str | None) -> dict[str, Any]:
    """The protoPayload of a real GKE entry, key for key (see `log_entry`)."""
    payload: dict[str, Any] = {"@type": AUDIT_LOG_TYPE}
    if first:
        payload["authenticationInfo"] = {"principalEmail": principal, "principalSubject": _subject(principal)}
        payload["authorizationInfo"] = [{
            "granted": True, "permission": permission, "permissionType": "ADMIN_WRITE",
            "resource": cluster_resource,
            "resourceAttributes": {"name": cluster_resource, "service": SERVICE,
                                   "type": f"{SERVICE}/Cluster"}}]
    else:
        payload["metadata"] = {"operationType": operation_type or "TYPE_UNSPECIFIED",
                               "requestID": f"0x{secrets.token_hex(8)}"}
    payload["methodName"] = f"google.container.v1.ClusterManager.{method}"
    payload["policyViolationInfo"] = {"orgPolicyViolationInfo": {}}
    if first:
        if request is not None:
            payload["request"] = dict(request)
        payload["requestMetadata"] = {"callerIp": "127.0.0.1",
                                      "callerSuppliedUserAgent": "google-cloud-sdk sandbox,gzip(gfe)",
                                      "destinationAttributes": {}, "requestAttributes": {}}
    payload["resourceLocation"] = {"currentLocations": [location]}
    payload["resourceName"] = resource_name
    if first and response is not None:
        payload["response"] = dict(response)
    payload["serviceName"] = SERVICE
    if status is not None or not first:  # a started operation's first entry has no status at all
        payload["status"] = dict(status or {})
    return payload


_message_ids = itertools.count(int(time.time() * 1000) % 10**12)


def push_envelope(entry: Mapping[str, Any], *, subscription: str) -> dict[str, Any]:
    """The Pub/Sub push request body a Logging sink -> topic -> push subscription would POST.

    The sink adds the `logging.googleapis.com/timestamp` attribute, as Cloud Logging does.
    """
    message_id = str(next(_message_ids))
    publish_time = rfc3339()
    return {
        "message": {
            "data": base64.b64encode(json.dumps(entry, separators=(",", ":")).encode()).decode(),
            "attributes": {"logging.googleapis.com/timestamp": str(entry.get("timestamp", publish_time))},
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": publish_time,
            "publish_time": publish_time,
        },
        "subscription": subscription,
    }


class HttpPushSink:
    """Delivers entries as Pub/Sub push requests to a loopback URL, in order, off the caller's thread.

    Like a push subscription it retries a non-2xx answer (or a refused connection) with backoff,
    up to `attempts` times, then drops the entry with a warning (the sandbox has no dead-letter
    topic). The URL must be on loopback: the sandbox never sends traffic elsewhere.
    """

    def __init__(self, url: str, *, subscription: str = "projects/sandbox/subscriptions/gke-audit-push",
                 attempts: int = 5, backoff: float = 0.5, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in _LOOPBACK:
            raise ValueError(f"audit push URL must be http(s) on 127.0.0.1/localhost, got {url!r}")
        self.url = url
        self.subscription = subscription
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self.delivered = 0
        self.dropped = 0
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gke-audit-push", daemon=True)
        self._thread.start()

    def __call__(self, entry: Mapping[str, Any]) -> None:
        self._queue.put(entry)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within `timeout`), then stop the worker thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            self._deliver(entry)

    def _deliver(self, entry: Mapping[str, Any]) -> None:
        body = json.dumps(push_envelope(entry, subscription=self.subscription)).encode()
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
            except (urllib.error.URLError, OSError) as e:
                log.info("audit push to %s failed (attempt %d): %s", self.url, attempt, e)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        self.dropped += 1
        log.warning("audit push to %s dropped after %d attempts", self.url, self.attempts)
