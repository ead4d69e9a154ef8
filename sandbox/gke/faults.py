"""Fault injection for the sandbox GKE API: fail or delay the next N calls of a method.

Reliability tests need GKE to misbehave on cue (UNAVAILABLE, quota errors, slow answers) while
the client library stays unmodified, so faults are injected on the server side, per RPC method.
Used in process (`sandbox.faults.fail("GetCluster", "UNAVAILABLE")`) or over the admin HTTP
endpoint (see docs/SANDBOX_GKE.md).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

METHODS = (
    "GetCluster", "ListClusters", "CreateCluster", "DeleteCluster",
    "ListNodePools", "GetNodePool", "CreateNodePool", "DeleteNodePool",
    "GetOperation", "ListOperations", "ListUsableSubnetworks",
    "UpdateCluster", "UpdateMaster", "SetLabels",
)


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str


def status_code(code: grpc.StatusCode | str) -> grpc.StatusCode:
    """`"UNAVAILABLE"` (or a StatusCode) -> grpc.StatusCode; ValueError for anything else."""
    if isinstance(code, grpc.StatusCode):
        status = code
    elif isinstance(code, str) and code.upper() in grpc.StatusCode.__members__:
        status = grpc.StatusCode[code.upper()]
    else:
        raise ValueError(f"unknown gRPC status code {code!r}")
    if status is grpc.StatusCode.OK:
        raise ValueError("a fault needs an error status code, not OK")
    return status


class Faults:
    """Thread-safe queues of pending faults per method; each call consumes at most one of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: dict[str, list[Failure]] = {}
        self._delay: dict[str, list[float]] = {}

    @staticmethod
    def _method(method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        return method

    def fail(self, method: str, code: grpc.StatusCode | str, times: int = 1, message: str = "") -> None:
        """Make the next `times` calls of `method` fail with `code` (and `message`)."""
        status = status_code(code)
        if not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        text = message or f"injected fault: {status.name} for {method}"
        with self._lock:
            self._fail.setdefault(self._method(method), []).extend([Failure(status, text)] * times)

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        """Make the next `times` calls of `method` wait `seconds` before being served."""
        if not isinstance(seconds, int | float) or not 0 <= seconds <= 600:
            raise ValueError(f"seconds must be a number in 0..600, got {seconds!r}")
        if not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        with self._lock:
            self._delay.setdefault(self._method(method), []).extend([float(seconds)] * times)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._delay.clear()

    def pending(self) -> dict[str, dict[str, object]]:
        """What is still armed, per method (for the admin endpoint and for test assertions)."""
        with self._lock:
            names = sorted(set(self._fail) | set(self._delay))
            return {m: {"fail": [f.code.name for f in self._fail.get(m, [])],
                        "delay": list(self._delay.get(m, []))}
                    for m in names if self._fail.get(m) or self._delay.get(m)}

    def take(self, method: str) -> tuple[float, Failure | None]:
        """Consume this call's delay (seconds, 0 if none) and failure (None if none)."""
        with self._lock:
            delays = self._delay.get(method)
            fails = self._fail.get(method)
            return (delays.pop(0) if delays else 0.0), (fails.pop(0) if fails else None)

    def apply(self, method: str, context: grpc.ServicerContext) -> None:
        """Sleep and/or abort the call as armed (context.abort raises)."""
        seconds, failure = self.take(method)
        if seconds:
            time.sleep(seconds)
        if failure is not None:
            context.abort(failure.code, failure.message)
