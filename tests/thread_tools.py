"""Helpers of the thread tests (tests/test_threads.py,
tests/test_trees_threads.py): threads started together and joined with a
timeout, and a clock several threads may advance."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

N_THREADS = 8
JOIN_TIMEOUT = 120.0
NS = 10**9


def run_threads(target: Callable[[int], None], n: int = N_THREADS) -> None:
    """Run target(index) in n threads started together; re-raise failures."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def wrapper(index: int) -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            target(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,), daemon=True) for i in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # on a GIL build: switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(interval)
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running (deadlock?): {alive}"
    if errors:
        raise errors[0]


class LockedClock:
    """A FakeClock that several threads may advance."""

    def __init__(self, start_ns: int = 1_767_225_600 * NS) -> None:
        self._lock = threading.Lock()
        self._now = start_ns

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ns: int) -> None:
        with self._lock:
            self._now += ns
