"""Pure-Python twin of the budget tracker (the crate's `budget.rs`).

The readable specification of `_budget_c.pyx`. One `threading.Lock` per
tracker guards the two counters that change (`tokens_used`, the recursion
depth); budgets, clock and start time are fixed at construction. Arguments
are checked and the clock is read before the lock is taken.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, NoReturn, cast

from ._checks import (
    MSG_DEPTH_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    U32_MAX,
    U64_MAX,
    check_clock_value,
    check_u64,
)
from ._registry import result_kind
from ._results import BudgetStatus
from .config import RlmConfig, resolve_config
from .errors import RecursionDepthExceeded, TimeBudgetExceeded, TokenBudgetExceeded

__all__ = ["BudgetTracker"]

MSG_NO_PICKLE = (
    "cannot pickle 'BudgetTracker' object: use status() and "
    "BudgetTracker.from_status()"
)
_NS_PER_MS = 1_000_000

Clock = Callable[[], int]


def _check_clock(clock: object) -> Clock | None:
    if clock is not None and not callable(clock):
        raise TypeError("clock must be a callable returning int nanoseconds")
    return cast("Clock | None", clock)  # callable() checked above


def _read_clock(clock: Clock | None) -> int:
    """Now, in ns: the user clock (checked), else the monotonic clock.

    Without a user clock only differences matter, so the monotonic clock
    keeps elapsed time right across wall-clock jumps.
    """
    if clock is None:
        return time.monotonic_ns()
    return check_clock_value(clock())


def _over_80_percent(used: int, budget: int) -> bool:
    # used / budget > 0.8, exactly; a zero budget counts as exhausted (SPEC 4.9).
    return budget == 0 or 5 * used > 4 * budget


class BudgetTracker:
    """Tokens, wall time and recursion depth of one (sub-)call tree.

    The crate's `BudgetTracker`, thread-safe, with SPEC 4.9's fixes: depth
    never wraps below 0 nor passes the maximum, and a zero budget counts as
    exhausted in `is_near_exhaustion`.
    """

    __slots__ = (
        "_token_budget",
        "_time_budget_ms",
        "_max_depth",
        "_clock",
        "_start_ns",
        "_base_ms",
        "_lock",
        "_tokens_used",
        "_depth",
        "__weakref__",
    )

    _token_budget: int
    _time_budget_ms: int
    _max_depth: int
    _clock: Clock | None
    _start_ns: int  # clock reading at construction
    _base_ms: int  # time already used before construction (from_status)
    _lock: threading.Lock
    _tokens_used: int  # guarded by _lock
    _depth: int  # guarded by _lock

    def __init__(self, config: RlmConfig | None = None, *, clock: Clock | None = None) -> None:
        config = resolve_config(config)
        token_budget = check_u64(config.token_budget, "token_budget")
        time_budget_ms = check_u64(config.time_budget_ms, "time_budget_ms")
        max_depth = check_u64(config.max_recursion_depth, "max_recursion_depth")
        clock = _check_clock(clock)
        now = _read_clock(clock)
        self._setup(token_budget, 0, time_budget_ms, 0, max_depth, 0, clock, now)

    def _setup(
        self,
        token_budget: int,
        tokens_used: int,
        time_budget_ms: int,
        time_used_ms: int,
        max_depth: int,
        depth: int,
        clock: Clock | None,
        now: int,
    ) -> None:
        self._token_budget = token_budget
        self._time_budget_ms = time_budget_ms
        self._max_depth = max_depth
        self._clock = clock
        self._start_ns = now
        self._base_ms = time_used_ms
        self._lock = threading.Lock()
        self._tokens_used = tokens_used
        self._depth = depth

    @classmethod
    def from_status(cls, status: BudgetStatus, *, clock: Clock | None = None) -> "BudgetTracker":
        """A tracker that resumes from `status`: its budgets, its counts, and
        its `time_used_ms` as time already spent (the clock runs on from it)."""
        if result_kind(status) != "BudgetStatus":
            raise TypeError(f"status must be a BudgetStatus, not {type(status).__name__}")
        values = (
            check_u64(status.token_budget, "token_budget"),
            check_u64(status.tokens_used, "tokens_used"),
            check_u64(status.time_budget_ms, "time_budget_ms"),
            check_u64(status.time_used_ms, "time_used_ms"),
            check_u64(status.max_recursion_depth, "max_recursion_depth"),
            check_u64(status.current_recursion_depth, "current_recursion_depth"),
        )
        clock = _check_clock(clock)
        now = _read_clock(clock)
        self = cls.__new__(cls)
        self._setup(*values, clock, now)
        return self

    def child(
        self,
        remaining_tokens: int | None = None,
        remaining_time_ms: int | None = None,
    ) -> "BudgetTracker":
        """A tracker for a recursive call, as the crate's `child`.

        Its budgets are the given ones, by default what this tracker has
        left now; it counts its own tokens from 0 and its own time from now
        on this tracker's clock; its depth is this tracker's depth + 1 and
        its maximum depth this tracker's. Nothing is shared after creation.
        """
        if remaining_tokens is not None:
            remaining_tokens = check_u64(remaining_tokens, "remaining_tokens")
        if remaining_time_ms is not None:
            remaining_time_ms = check_u64(remaining_time_ms, "remaining_time_ms")
        now = _read_clock(self._clock)
        with self._lock:
            used = self._tokens_used
            depth = self._depth
        if depth >= U32_MAX:
            raise ValueError(MSG_DEPTH_OVERFLOW)
        if remaining_tokens is None:
            remaining_tokens = max(0, self._token_budget - used)
        if remaining_time_ms is None:
            remaining_time_ms = max(0, self._time_budget_ms - self._elapsed(now))
        cls = type(self)
        child = cls.__new__(cls)
        child._setup(
            remaining_tokens, 0, remaining_time_ms, 0, self._max_depth, depth + 1, self._clock, now
        )
        return child

    def _elapsed(self, now: int) -> int:
        """Milliseconds used at clock reading `now` (never negative, capped)."""
        return min(U64_MAX, self._base_ms + max(0, now - self._start_ns) // _NS_PER_MS)

    # -- tokens -----------------------------------------------------------------

    def add_tokens(self, tokens: int) -> int:
        """Add to tokens_used and return the new total.

        Over budget, the charge stays recorded (it was spent), then
        `TokenBudgetExceeded` is raised. A charge that would pass 2**64-1 is
        refused whole with ValueError.
        """
        amount = check_u64(tokens, "tokens")
        with self._lock:
            total = self._tokens_used + amount
            if total <= U64_MAX:
                self._tokens_used = total
        if total > U64_MAX:
            raise ValueError(MSG_TOKENS_OVERFLOW)
        if total > self._token_budget:
            raise TokenBudgetExceeded(total, self._token_budget)
        return total

    def check_token_budget(self) -> None:
        """Raise `TokenBudgetExceeded` when tokens_used >= token_budget."""
        used = self._tokens_used
        if used >= self._token_budget:
            raise TokenBudgetExceeded(used, self._token_budget)

    def tokens_used(self) -> int:
        return self._tokens_used

    def tokens_remaining(self) -> int:
        return max(0, self._token_budget - self._tokens_used)

    # -- time -------------------------------------------------------------------

    def check_time_budget(self) -> None:
        """Raise `TimeBudgetExceeded` when elapsed_ms >= time_budget_ms."""
        elapsed = self._elapsed(_read_clock(self._clock))
        if elapsed >= self._time_budget_ms:
            raise TimeBudgetExceeded(elapsed, self._time_budget_ms)

    def elapsed_ms(self) -> int:
        return self._elapsed(_read_clock(self._clock))

    def time_remaining_ms(self) -> int:
        return max(0, self._time_budget_ms - self._elapsed(_read_clock(self._clock)))

    # -- recursion depth --------------------------------------------------------

    def check_recursion_depth(self) -> None:
        """Raise `RecursionDepthExceeded` when depth > max_recursion_depth."""
        depth = self._depth
        if depth > self._max_depth:
            raise RecursionDepthExceeded(depth, self._max_depth)

    def push_recursion(self) -> int:
        """Depth + 1, returned; at the maximum, raise and change nothing."""
        with self._lock:
            depth = self._depth
            if depth < self._max_depth:
                self._depth = depth = depth + 1
                return depth
        raise RecursionDepthExceeded(depth + 1, self._max_depth)

    def pop_recursion(self) -> int:
        """Depth - 1, returned; at 0 it stays 0."""
        with self._lock:
            if self._depth > 0:
                self._depth -= 1
            return self._depth

    def current_depth(self) -> int:
        return self._depth

    def depth_remaining(self) -> int:
        return max(0, self._max_depth - self._depth)

    def recursion(self) -> "_RecursionScope":
        """Context manager: `push_recursion()` on entry (yields the new
        depth), `pop_recursion()` on exit, exception or not."""
        return _RecursionScope(self)

    # -- all at once ----------------------------------------------------------------

    def _snapshot(self) -> BudgetStatus:
        now = _read_clock(self._clock)
        with self._lock:
            used = self._tokens_used
            depth = self._depth
        return BudgetStatus._trusted(
            self._token_budget,
            used,
            self._time_budget_ms,
            self._elapsed(now),
            self._max_depth,
            depth,
        )

    def status(self) -> BudgetStatus:
        """All six values, tokens and depth read together at one instant."""
        return self._snapshot()

    def check_all(self) -> BudgetStatus:
        """Raise the first exhausted budget (tokens, then time, then depth)
        of one consistent snapshot; return that snapshot when none is."""
        status = self._snapshot()
        if status.tokens_used >= status.token_budget:
            raise TokenBudgetExceeded(status.tokens_used, status.token_budget)
        if status.time_used_ms >= status.time_budget_ms:
            raise TimeBudgetExceeded(status.time_used_ms, status.time_budget_ms)
        if status.current_recursion_depth > status.max_recursion_depth:
            raise RecursionDepthExceeded(
                status.current_recursion_depth, status.max_recursion_depth
            )
        return status

    def is_near_exhaustion(self) -> bool:
        """True when any budget is more than 80% used, or is zero."""
        status = self._snapshot()
        return (
            _over_80_percent(status.tokens_used, status.token_budget)
            or _over_80_percent(status.time_used_ms, status.time_budget_ms)
            or _over_80_percent(status.current_recursion_depth, status.max_recursion_depth)
        )

    # -- Python protocol --------------------------------------------------------------

    def __repr__(self) -> str:
        with self._lock:
            used = self._tokens_used
            depth = self._depth
        return (
            f"BudgetTracker(tokens_used={used}, token_budget={self._token_budget}, "
            f"time_budget_ms={self._time_budget_ms}, current_depth={depth}, "
            f"max_recursion_depth={self._max_depth})"
        )

    def __reduce__(self) -> NoReturn:
        # A live tracker holds a lock and a clock; its state travels as status().
        raise TypeError(MSG_NO_PICKLE)


BudgetTracker.__module__ = "rlm_fast"


class _RecursionScope:
    """What `BudgetTracker.recursion()` returns."""

    __slots__ = ("_tracker", "_entered")

    def __init__(self, tracker: BudgetTracker) -> None:
        self._tracker = tracker
        self._entered = 0

    def __enter__(self) -> int:
        depth = self._tracker.push_recursion()
        self._entered += 1
        return depth

    def __exit__(self, *exc: object) -> None:
        if self._entered:
            self._entered -= 1
            self._tracker.pop_recursion()
