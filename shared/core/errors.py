"""Errors as types, decided once at the edge where they are raised.

The functions map them to Pub/Sub behaviour without comparing strings:

- `Rejected`: the input is bad or the request is refused. Recorded where the user looks
  (Firestore, `status`), then the message is acknowledged: retrying cannot help.
- `Permanent`: an external API refused the call in a way a retry will not fix (403, 404, 422,
  INVALID_ARGUMENT, FAILED_PRECONDITION...). Recorded as FAILED with the API's message.
- `Transient`: worth retrying (5xx, 429, timeouts, ABORTED, a lease held by someone else).
  The function raises, Pub/Sub redelivers with backoff, then dead-letters.
- `Busy` (a `Transient`): GKE refused a write because an operation is running on the cluster
  ("incompatible operation", CLUSTER_ALREADY_HAS_OPERATION). It ends when the operation ends, so
  it is retried for a bounded *time* (`busy_wait_seconds`), not counted as a failed attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RejectionKind(StrEnum):
    """What kind of input was refused: recorded with the rejection (`kind`), logged, and what
    callers branch on (a member, never a string compared by hand). `NOT_FOR_US` lists the kinds
    of input not addressed to the controller (raised as `NotForUs`)."""

    INVALID = "invalid"  # a field is wrong
    ENVELOPE = "envelope"  # not a Pub/Sub messagePublished event
    ENCODING = "encoding"  # undecodable message data
    JSON = "json"  # message data is not valid JSON
    TOO_LARGE = "too-large"
    NOT_AUDIT = "not-audit"
    OTHER_SERVICE = "other-service"
    OTHER_METHOD = "other-method"
    UNKNOWN_CLUSTER = "unknown-cluster"  # only a creation event starts a workflow
    REQUEST_ID_REUSED = "request-id-reused"
    NOT_APPLIED = "not-applied"  # verify of a NAD that is not on the cluster
    NOT_HALTED = "not-halted"  # rollout resume
    NOT_RUNNING = "not-running"  # rollout abort
    UNKNOWN_PROJECT = "unknown-project"  # a project the controller does not manage
    UNAUTHENTICATED = "unauthenticated"  # a NAD request without a valid ID token


NOT_FOR_US = (RejectionKind.NOT_AUDIT, RejectionKind.OTHER_SERVICE, RejectionKind.OTHER_METHOD)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, named by the path of the field that holds it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ProvisionerError(Exception):
    """Base of every error the controller raises on purpose."""


class Rejected(ProvisionerError):
    """Bad input or a refused request; never retried.

    `problems` lists every problem found (validation collects them all rather than stopping at
    the first). `event_id` and `cluster` carry what could be parsed, so the rejection can be
    recorded under the cluster the request named.
    """

    def __init__(
        self,
        reason: str,
        problems: tuple[Problem, ...] | list[Problem] = (),
        *,
        event_id: str | None = None,
        cluster: Any = None,
        kind: RejectionKind = RejectionKind.INVALID,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.problems = tuple(problems)
        self.event_id = event_id
        self.cluster = cluster
        self.kind = kind
        self.context = dict(context or {})
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if not self.problems:
            return self.reason
        return self.reason + ": " + "; ".join(str(p) for p in self.problems)


class Permanent(ProvisionerError):
    """An external API refused the call for good (permission, not found, invalid)."""

    def __init__(self, message: str, *, code: str | int | None = None, api: str = "") -> None:
        self.code = code
        self.api = api
        super().__init__(message)


class UnknownCluster(Rejected):
    """An event names a cluster that has no workflow document (only a creation event starts one)."""

    def __init__(self, reason: str, problems: tuple[Problem, ...] | list[Problem] = (), *,
                 event_id: str | None = None, cluster: Any = None) -> None:
        super().__init__(reason, problems, event_id=event_id, cluster=cluster,
                         kind=RejectionKind.UNKNOWN_CLUSTER)


class NotForUs(Rejected):
    """An input that is valid but not addressed to the controller (an audit entry of another
    service or method, a log entry that is no audit entry): acknowledged and logged, not recorded."""


class Transient(ProvisionerError):
    """A failure worth retrying: the function raises so that Pub/Sub redelivers."""

    def __init__(self, message: str, *, code: str | int | None = None, api: str = "") -> None:
        self.code = code
        self.api = api
        super().__init__(message)


class NotYet(Transient):
    """A wait ran out of time before the state it waited for (CRDs Established): the caller may wait
    again while its own deadline allows (`code` DEADLINE_EXCEEDED, as the API would say)."""

    def __init__(self, message: str, *, api: str = "") -> None:
        super().__init__(message, code="DEADLINE_EXCEEDED", api=api)


class Wait(Transient):
    """Not a failure: the step can only go on later (GKE busy, a retry's backoff not over yet).

    Retried (Pub/Sub redelivers) for a bounded *time* (`busy_wait_seconds`), never counted as a
    failed attempt of the step.
    """


class Busy(Wait):
    """GKE is running another operation on the cluster; the same write succeeds once it is over.

    Not a failure of the step: retrying it does not burn the cluster's attempts (terraform-provider-google
    PR 1660 retries exactly this refusal). `operation` names the running operation when GKE said it.
    """

    def __init__(self, message: str, *, code: str | int | None = "CLUSTER_ALREADY_HAS_OPERATION", api: str = "",
                 operation: str | None = None) -> None:
        self.operation = operation
        super().__init__(message, code=code, api=api)


class NotFound(Permanent):
    """The API says the object does not exist (404, NOT_FOUND): a cluster deleted meanwhile."""


class NotOurs(Permanent):
    """The cluster holds an object of that name that the controller does not own (no managed-by
    label, or no cluster annotation, or another cluster's): it is neither changed nor deleted.
    A request that meets one is refused naming `owner` (shared/core/nad.py `foreign_nad`)."""

    def __init__(self, message: str, *, owner: str, api: str = "kubernetes") -> None:
        self.owner = owner
        super().__init__(message, code="NOT_OURS", api=api)


class NeedsFix(Permanent):
    """Something the operator must change outside the controller, said as a precheck finding.

    The workflow records it as a finding (`finding_id`, the message, `fix`) and the cluster as
    INELIGIBLE, so the fix is shown where every other precheck's fix is, and a re-check after the
    fix takes it up again.
    """

    def __init__(self, message: str, *, finding_id: str, fix: str, code: str | int | None = None,
                 api: str = "") -> None:
        self.finding_id = finding_id
        self.fix = fix
        super().__init__(message, code=code, api=api)
