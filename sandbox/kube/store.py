"""Objects, the resourceVersion counter and the watch log of one sandbox API server.

Keys are (group, plural, namespace, name) with namespace "" for cluster-scoped objects. Every
write gets the next resourceVersion (monotonic, like etcd's revision) and an entry in a bounded
event log that watches read from; a watch older than the log gets 410 Expired, as from etcd.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: Key
    obj: dict[str, Any]


class Store:
    def __init__(self, log_size: int = 5000) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = 1
        self._log: deque[WatchEvent] = deque(maxlen=log_size)
        self.closed = False
        self._floor = 0

    def open_watch_window(self) -> None:
        """Watches may start from now on, not before: kube-apiserver's watch cache begins at the
        revision it listed when it started, and a watch from an older resourceVersion gets 410
        Expired (an ERROR event) even on a fresh cluster."""
        with self.lock:
            self._floor = self._rv

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def oldest_watchable(self) -> int:
        with self.lock:
            logged = self._log[0].rv - 1 if self._log and len(self._log) == self._log.maxlen else 0
            return max(logged, self._floor)

    def get(self, key: Key) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def items(self, group: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of one resource (all namespaces when `namespace` is None), sorted like etcd keys."""
        with self.lock:
            keys = sorted(k for k in self._objects
                          if k[0] == group and k[1] == plural and (namespace is None or k[2] == namespace))
            return [copy.deepcopy(self._objects[k]) for k in keys]

    def put(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        """Store `obj` under the next resourceVersion; return the stored copy."""
        with self.lock:
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
            kind = "MODIFIED" if key in self._objects else "ADDED"
            self._objects[key] = obj
            self._log.append(WatchEvent(self._rv, kind, key, copy.deepcopy(obj)))
            self.changed.notify_all()
            return copy.deepcopy(obj)

    def delete(self, key: Key) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.pop(key, None)
            if obj is None:
                return None
            self._rv += 1
            # A deletion event carries the object at the deletion's resourceVersion, as etcd does.
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._log.append(WatchEvent(self._rv, "DELETED", key, gone))
            self.changed.notify_all()
            return copy.deepcopy(gone)

    def events_after(self, rv: int) -> Iterator[WatchEvent]:
        with self.lock:
            return iter([e for e in self._log if e.rv > rv])

    def wait_for_change(self, rv: int, timeout: float) -> None:
        with self.lock:
            if self._rv > rv or self.closed:
                return
            self.changed.wait(timeout)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
