"""What every manager (twin, compiled, Redis) does around its table, once:
the `rlm_fast` logger and its records, reporting removed sessions to
`on_remove`, the reaper thread, and the `call()` context manager of the
model-call step (docs/lifecycle.md). Nothing here runs under a manager's
lock: the managers call these after releasing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("rlm_fast")
log.addHandler(logging.NullHandler())

REMOVAL_REASONS = ("destroyed", "expired", "cascade")


def check_on_remove(on_remove: object) -> Callable[[Any, str], object] | None:
    """The constructor's `on_remove`: None or a callable."""
    if on_remove is not None and not callable(on_remove):
        raise TypeError(
            f"on_remove must be a callable (info, reason), not {type(on_remove).__name__}"
        )
    return on_remove


def log_created(info: Any) -> None:
    if log.isEnabledFor(logging.INFO):
        sid = str(info.id)
        if info.parent_id is None:
            log.info("created session %s", sid, extra={"session_id": sid})
        else:
            log.info(
                "created session %s, a child of %s", sid, info.parent_id,
                extra={"session_id": sid},
            )


def log_vm_moved(vm: str, old: Any, new: Any) -> None:
    """A VM taken from one session by another (the crate logs it too)."""
    if log.isEnabledFor(logging.INFO):
        sid = str(new)
        log.info(
            "VM %s reassigned from session %s to session %s", vm, old, sid,
            extra={"session_id": sid},
        )


def checkpoint() -> None:
    """A point where another thread may take its turn: calling a Python
    function lets the interpreter honour a pending request for the GIL (or,
    on a free-threaded build, a stop-the-world), as its eval loop does
    between bytecodes. The compiled core's loops that build many result
    objects with the GIL held call it every few hundred objects (SPEC 15).
    It must stay a plain Python function: a compiled one would not pass
    through the eval loop."""


def report_removed(
    on_remove: Callable[[Any, str], object] | None,
    removed: Iterable[tuple[Any, str]],
) -> None:
    """Log each removed session and hand it to `on_remove`, in order. An
    exception from the callback is logged and stops nothing."""
    info_enabled = log.isEnabledFor(logging.INFO)
    for info, reason in removed:
        if info_enabled:
            sid = str(info.id)
            log.info("session %s %s", sid, _VERB[reason], extra={"session_id": sid})
        if on_remove is not None:
            try:
                on_remove(info, reason)
            except Exception:
                log.exception(
                    "on_remove(%s, %r) raised; the session stays removed", info.id, reason,
                    extra={"session_id": str(info.id)},
                )


_VERB = {"destroyed": "destroyed", "expired": "expired", "cascade": "removed with its ancestor"}


class Reaper:
    """A daemon thread removing expired sessions every `interval_s` seconds
    through `sweep` (a manager's `pop_expired_sessions`, so its removals go
    through `on_remove`). `stop()` ends it; it is also a context manager."""

    def __init__(self, sweep: Callable[[], object], interval_s: float, name: str) -> None:
        self._sweep = sweep
        self._interval = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._sweep()
            except Exception:  # the next round tries again
                log.exception("the reaper's sweep raised")

    def start(self) -> "Reaper":
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (a sweep under way completes)."""
        self._stopped.set()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "Reaper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Reaper every {self._interval}s {'running' if self.running else 'stopped'}>"


def check_interval(interval_s: object) -> float:
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)):
        raise TypeError(f"interval_s must be a number, not {type(interval_s).__name__}")
    if not 0 < interval_s < float("inf"):
        raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
    return float(interval_s)


class ReaperSlot:
    """A manager's one reaper: `start` refuses a second while one runs."""

    __slots__ = ("_lock", "_reaper")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reaper: Reaper | None = None

    def start(self, sweep: Callable[[], object], interval_s: object) -> Reaper:
        interval = check_interval(interval_s)
        with self._lock:
            if self._reaper is not None and self._reaper.running:
                raise RuntimeError("this manager already has a running reaper; stop() it first")
            self._reaper = Reaper(sweep, interval, "rlm_fast-reaper").start()
            return self._reaper


class ModelCall:
    """`manager.call(id)`: `begin_call` on entry; on every exit, exception
    or not, `end_call` with the `tokens` the caller set and the elapsed
    time in whole milliseconds (docs/lifecycle.md)."""

    __slots__ = ("_begin", "_end", "_clock", "_started", "tokens", "status")

    def __init__(
        self,
        begin: Callable[[], Any],
        end: Callable[[int, int], Any],
        clock: Callable[[], int] | None,
    ) -> None:
        self._begin = begin
        self._end = end
        self._clock = time.monotonic_ns if clock is None else clock
        self._started = 0
        self.tokens = 0
        self.status: Any = None  # the BudgetStatus begin_call returned

    def __enter__(self) -> "ModelCall":
        self.status = self._begin()
        self._started = self._clock()
        return self

    def _elapsed_ms(self) -> int:
        return max(0, self._clock() - self._started) // 1_000_000

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._end(self.tokens, self._elapsed_ms())
        except Exception:
            if exc_type is None:
                raise
            # The body's exception wins; the charge itself was recorded
            # (an over-budget charge is kept), so nothing is lost.
            log.debug("end_call after a failed call raised", exc_info=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} tokens={self.tokens}>"


class AsyncModelCall(ModelCall):
    """`async with manager.call(id)` for the async managers: the same rules
    as ModelCall, over coroutine `begin` and `end`."""

    __slots__ = ()

    async def __aenter__(self) -> "AsyncModelCall":
        self.status = await self._begin()
        self._started = self._clock()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Shielded: a task cancelled while end_call is in flight still has
        # its charge and its depth decrease applied (the cancellation is
        # raised after); the charge is never lost half-way.
        import asyncio  # loaded already: this runs in an event loop

        try:
            await asyncio.shield(self._end(self.tokens, self._elapsed_ms()))
        except Exception:
            if exc_type is None:
                raise
            log.debug("end_call after a failed call raised", exc_info=True)
