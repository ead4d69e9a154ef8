"""Cloud Functions entry points (gen2, Pub/Sub-triggered CloudEvents). Thin on purpose.

decode once -> flow -> acknowledge (return) or retry (raise). Each entry point accepts what
Eventarc sends (a binary-mode CloudEvent whose data is the messagePublished envelope) and a
raw Pub/Sub push (which functions-framework converts into the same CloudEvent). The envelope is
decoded here, once, into a `PubSubMessage`; the log line, the excerpt of a refused payload, the
decoder of the payload and the rejection record all use that one value.

- A handled, ignored or rejected event returns normally: Pub/Sub acknowledges it. Bad input is
  recorded where the user looks (Firestore rejections / the NAD's document), never retried.
- A `Transient` error raises: the function answers 500, Pub/Sub redelivers with backoff and
  finally dead-letters.

Only `functions_framework` is imported at module load: even the pure decoders (their regular
expressions and dataclasses) are imported with the first event, and the Google and Kubernetes
SDKs by the adapters on first use (cold start, see docs/BENCHMARKS.md: the import of this module
costs at most 10 % more than functions-framework's alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import functions_framework

if TYPE_CHECKING:
    from shared.core.errors import Rejected
    from shared.core.events import PubSubMessage

_CONTROLLER: Any = None


def _controller() -> Any:
    """One controller (and its clients) per function instance, created on the first event."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from shared.app import Controller
        from shared.core.settings import Settings

        _CONTROLLER = Controller(Settings.from_env())
    return _CONTROLLER


def _cloudevent_id(cloud_event: Any) -> str:
    """The CloudEvent's own id, for the log line of an envelope that could not be decoded."""
    try:
        return str(cloud_event["id"])[:256]
    except Exception:
        return "unknown"


def _run(function: str, cloud_event: Any, handle: Callable[[PubSubMessage], Any]) -> None:
    from shared.core import logs
    from shared.core.errors import Rejected, Transient
    from shared.core.events import message_from_cloudevent
    from shared.core.settings import ConfigError

    started = time.monotonic()
    msg: PubSubMessage | None = None
    try:
        msg = message_from_cloudevent(cloud_event)
        outcome = handle(msg)
    except Rejected as err:
        outcome = _reject(function, msg, err, msg.message_id if msg else _cloudevent_id(cloud_event))
    except ConfigError as err:  # the operator's configuration: one clear line; redelivered once fixed
        logs.error(f"{function}: invalid operator configuration (fix it; the event is redelivered): {err}",
                   function=function, eventId=msg.message_id if msg else None, error=str(err))
        raise
    except Transient as err:
        logs.warning(f"{function}: transient failure, asking Pub/Sub to redeliver: {err}",
                     function=function, eventId=msg.message_id if msg else None, error=str(err))
        raise
    except Exception as err:
        logs.error(f"{function}: unexpected {type(err).__name__}: {err}", function=function,
                   eventId=msg.message_id if msg else None)
        raise
    logs.info(f"{function}: {outcome.status}: {outcome.message}",
              function=function, eventId=msg.message_id if msg else _cloudevent_id(cloud_event),
              cluster=outcome.cluster, state=outcome.state, outcome=outcome.status,
              durationMs=round((time.monotonic() - started) * 1000, 1))


def _reject(function: str, msg: PubSubMessage | None, err: Rejected, event_id: str) -> Any:
    """Record refused input, then acknowledge. Recording problems must not cause a retry storm,
    except when Firestore itself is briefly unavailable (then the record is worth a retry)."""
    from shared.core import logs
    from shared.core.errors import NotForUs
    from shared.flows.context import Outcome

    logs.warning(f"{function}: rejected: {err.message}", function=function, eventId=event_id,
                 kind=err.kind, cluster=getattr(err.cluster, "path", None),
                 problems=[str(p) for p in err.problems][:20])
    if isinstance(err, NotForUs):
        return Outcome("ignored", err.message, getattr(err.cluster, "path", None))
    excerpt = msg.data[:512].decode("utf-8", "replace") if msg else ""
    _controller().record_rejection(err, event_id=err.event_id or event_id, excerpt=excerpt)
    return Outcome("rejected", err.message, getattr(err.cluster, "path", None))


@functions_framework.cloud_event
def on_cluster_event(cloud_event: Any) -> None:
    """Cluster created or deleted (audit log entries routed by a Logging sink)."""
    from shared.core.errors import NotForUs, RejectionKind
    from shared.core.events import decode_audit

    def handle(msg: PubSubMessage) -> Any:
        ev = decode_audit(msg)
        if not ev.action.startswith("cluster."):
            raise NotForUs(f"{ev.method} is not a cluster event", kind=RejectionKind.OTHER_METHOD, cluster=ev.cluster)
        return _controller().handle_audit(ev)

    _run("on_cluster_event", cloud_event, handle)


@functions_framework.cloud_event
def on_node_pool_event(cloud_event: Any) -> None:
    """Node pool created or deleted."""
    from shared.core.errors import NotForUs, RejectionKind
    from shared.core.events import decode_audit

    def handle(msg: PubSubMessage) -> Any:
        ev = decode_audit(msg)
        if not ev.action.startswith("node_pool."):
            raise NotForUs(f"{ev.method} is not a node pool event", kind=RejectionKind.OTHER_METHOD, cluster=ev.cluster)
        return _controller().handle_audit(ev)

    _run("on_node_pool_event", cloud_event, handle)


@functions_framework.cloud_event
def on_nad_request(cloud_event: Any) -> None:
    """A NAD request published by a user (JSON, see docs/NAD_REQUESTS.md)."""
    from shared.core.events import decode_nad_request

    _run("on_nad_request", cloud_event, lambda msg: _controller().handle_nad(decode_nad_request(msg)))


@functions_framework.cloud_event
def reconcile(cloud_event: Any) -> None:
    """Scheduled: resume stalled workflows, adopt missed clusters, repair drift."""
    from shared.core.events import decode_reconcile

    _run("reconcile", cloud_event, lambda msg: _controller().reconcile(decode_reconcile(msg)))
