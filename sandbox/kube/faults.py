"""Fault injection and request statistics of a sandbox API server."""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass
class Fault:
    verb: str          # HTTP method, or "*"
    path: re.Pattern[str]
    status: int        # 0: only delay, then serve normally
    times: int         # remaining matches; -1 = forever
    delay: float
    message: str = ""


class Faults:
    """`add(verb, path_regex, status, times=1, delay=0)`: the next `times` matching requests fail."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, verb: str, path_regex: str, status: int, times: int = 1, delay: float = 0.0,
            message: str = "") -> None:
        if not isinstance(status, int) or not (status == 0 or 400 <= status <= 599):
            raise ValueError(f"status must be 0 (delay only) or an HTTP error code, got {status!r}")
        if not isinstance(times, int) or times == 0 or times < -1:
            raise ValueError(f"times must be a positive integer or -1 (forever), got {times!r}")
        if not isinstance(delay, int | float) or delay < 0 or delay > 300:
            raise ValueError(f"delay must be between 0 and 300 seconds, got {delay!r}")
        with self._lock:
            self._faults.append(Fault(verb.upper(), re.compile(path_regex), status, times, float(delay), message))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def match(self, verb: str, path: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if (f.verb in ("*", verb)) and f.path.search(path):
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            self._faults.remove(f)
                    return f
        return None

    def pending(self) -> list[dict]:
        with self._lock:
            return [{"verb": f.verb, "path": f.path.pattern, "status": f.status, "times": f.times,
                     "delay": f.delay} for f in self._faults]


class Stats:
    """Requests counted by (HTTP method, path without query), as the benchmarks compare them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, verb: str, path: str) -> None:
        with self._lock:
            self._counts[(verb, path)] += 1

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def by_verb(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (v, _), n in self.snapshot().items():
            out[v] += n
        return dict(out)

    def to_json(self) -> dict:
        snap = self.snapshot()
        return {"total": sum(snap.values()), "byVerb": self.by_verb(),
                "requests": [{"verb": v, "path": p, "count": n} for (v, p), n in sorted(snap.items())]}
