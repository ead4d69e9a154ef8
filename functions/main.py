"""Cloud Functions entry points (gen2, Pub/Sub-triggered CloudEvents). Thin on purpose.

decode -> workflow -> acknowledge (return) or retry (raise). Each entry point accepts what
Eventarc sends (a binary-mode CloudEvent whose data is the messagePublished envelope) and a
raw Pub/Sub push (which functions-framework converts into the same CloudEvent).

- A handled, ignored or rejected event returns normally: Pub/Sub acknowledges it. Bad input is
  recorded where the user looks (Firestore rejections / the NAD's document), never retried.
- A `Transient` error raises: the function answers 500, Pub/Sub redelivers with backoff and
  finally dead-letters.

Only `functions_framework` and the pure decoders are imported at module load; the Google and
Kubernetes SDKs are imported by the adapters on first use (cold start, see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import time
from typing import Any

import functions_framework

from shared import logs
from shared.errors import Rejected, Transient

_WORKFLOW: Any = None


def _workflow() -> Any:
    """One workflow (and its clients) per function instance, created on the first event."""
    global _WORKFLOW
    if _WORKFLOW is None:
        from shared.settings import Settings
        from shared.workflow import Workflow

        _WORKFLOW = Workflow(Settings.from_env())
    return _WORKFLOW


def _event_id(cloud_event: Any) -> str:
    try:
        from shared.events import message_from_cloudevent

        return message_from_cloudevent(cloud_event).message_id
    except Exception:  # the decoder itself reports the problem; this is only for the log line
        try:
            return str(cloud_event["id"])
        except Exception:
            return "unknown"


def _excerpt(cloud_event: Any) -> str:
    try:
        from shared.events import message_from_cloudevent

        return message_from_cloudevent(cloud_event).data[:512].decode("utf-8", "replace")
    except Exception:
        return ""


def _run(function: str, cloud_event: Any, handle: Any) -> None:
    started = time.monotonic()
    event_id = _event_id(cloud_event)
    try:
        outcome = handle(cloud_event)
    except Rejected as err:
        outcome = _reject(function, cloud_event, err, event_id)
    except Transient as err:
        logs.warning(f"{function}: transient failure, asking Pub/Sub to redeliver: {err}",
                     function=function, eventId=event_id, error=str(err))
        raise
    except Exception as err:
        logs.error(f"{function}: unexpected {type(err).__name__}: {err}", function=function, eventId=event_id)
        raise
    logs.info(f"{function}: {outcome.status}: {outcome.message}", function=function, eventId=event_id,
              cluster=outcome.cluster, state=outcome.state, outcome=outcome.status,
              durationMs=round((time.monotonic() - started) * 1000, 1))


def _reject(function: str, cloud_event: Any, err: Rejected, event_id: str) -> Any:
    """Record refused input, then acknowledge. Recording problems must not cause a retry storm,
    except when Firestore itself is briefly unavailable (then the record is worth a retry)."""
    from shared.workflow import Outcome

    logs.warning(f"{function}: rejected: {err.message}", function=function, eventId=event_id,
                 kind=err.kind, cluster=getattr(err.cluster, "path", None),
                 problems=[str(p) for p in err.problems][:20])
    if err.kind in ("other-service", "other-method", "not-audit"):
        return Outcome("ignored", err.message, getattr(err.cluster, "path", None))
    _workflow().record_rejection(err, event_id=err.event_id or event_id, excerpt=_excerpt(cloud_event))
    return Outcome("rejected", err.message, getattr(err.cluster, "path", None))


@functions_framework.cloud_event
def on_cluster_event(cloud_event: Any) -> None:
    """Cluster created or deleted (audit log entries routed by a Logging sink)."""
    from shared.events import decode_audit

    def handle(ce: Any) -> Any:
        ev = decode_audit(ce)
        if not ev.action.startswith("cluster."):
            raise Rejected(f"{ev.method} is not a cluster event", kind="other-method", cluster=ev.cluster)
        return _workflow().handle_audit(ev)

    _run("on_cluster_event", cloud_event, handle)


@functions_framework.cloud_event
def on_node_pool_event(cloud_event: Any) -> None:
    """Node pool created or deleted."""
    from shared.events import decode_audit

    def handle(ce: Any) -> Any:
        ev = decode_audit(ce)
        if not ev.action.startswith("node_pool."):
            raise Rejected(f"{ev.method} is not a node pool event", kind="other-method", cluster=ev.cluster)
        return _workflow().handle_audit(ev)

    _run("on_node_pool_event", cloud_event, handle)


@functions_framework.cloud_event
def on_nad_request(cloud_event: Any) -> None:
    """A NAD request published by a user (JSON, see docs/NAD_REQUESTS.md)."""
    from shared.events import decode_nad_request

    _run("on_nad_request", cloud_event, lambda ce: _workflow().handle_nad(decode_nad_request(ce)))


@functions_framework.cloud_event
def reconcile(cloud_event: Any) -> None:
    """Scheduled: resume stalled workflows, adopt missed clusters, repair drift."""
    from shared.events import decode_reconcile

    _run("reconcile", cloud_event, lambda ce: _workflow().reconcile(decode_reconcile(ce)))
