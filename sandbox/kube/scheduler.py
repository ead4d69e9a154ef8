"""One timer thread per sandbox server: the simulated controllers run their steps here."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Scheduler:
    """Runs the simulated controllers' steps when they are due.

    `paused()` holds every step (due or not) until the block ends: a test that must observe the
    state *before* a simulated controller acts (a CRD not yet Established) holds the clock instead
    of racing a delay, which a loaded machine can overshoot.
    """

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._holds = 0
        self._thread = threading.Thread(target=self._run, name=f"kube-sim-{name}", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._count), fn))
            self._cond.notify()

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._holds or not self._heap or self._heap[0][0] > time.monotonic()):
                    due = None if self._holds or not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(due)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a simulated controller's bug must not kill the timer thread
                log.exception("sandbox kube simulation step failed")
