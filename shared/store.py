"""Firestore adapter: workflow documents, transactions, the event ledger, the audit history.

INTERFACE STUB — to be implemented (issue 3). The workflow is written against exactly these
signatures; keep them (add, don't change).

Layout (collection names get `settings.collection_prefix` in front):
- `clusters/{project}~{location}~{cluster}`: state, findings, nodePool, bundleVersion, timestamps,
  lastError, lease {holder, step, expiresAt}, ...  (camelCase field names, readable in the console)
- `clusters/{id}/nads/{namespace}~{name}`: request, config, state, timestamps, ...
- `clusters/{id}/history/{event_id}~{step}`: eventId, step, outcome, message, state, at
  (deterministic id and `set`, so a redelivered step can never add a second entry)
- `clusters/{id}/rejections/{event_id}` and top-level `rejections/{event_id}`: requests refused
  before a NAD could be named.
- `events/{ledger_key}`: the idempotency ledger, with `expireAt` for a TTL policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.refs import ClusterRef
from shared.settings import Settings


class AlreadyHandled(Exception):  # noqa: N818 - a signal, not a failure
    """The ledger already holds this key: the event was handled before; do nothing."""


@dataclass(frozen=True)
class Lease:
    holder: str  # the event id that holds it
    step: str
    expires_at: datetime


@dataclass(frozen=True)
class ClusterRecord:
    ref: ClusterRef
    state: str
    data: dict[str, Any] = field(default_factory=dict)  # the whole document as stored
    lease: Lease | None = None


class Store:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        raise NotImplementedError
