# cython: language_level=3, freethreading_compatible=True, embedsignature=True, embedsignature.format=clinic
# distutils: language = c++
"""Compiled twin of the budget tracker (the crate's `budget.rs`).

Same behaviour as `_budget_py.py`. `tokens_used` and the depth are
`std::atomic<uint64_t>`, so one-value getters read them without a lock; a
`cython.pymutex` per tracker serialises every write and the reads that need
both at one instant (status, check_all, child, ...): only C work runs under it.
"""

cimport cython
from cpython.time cimport monotonic_ns
from libc.stdint cimport int64_t, uint64_t, UINT64_MAX
from libcpp.atomic cimport atomic

from ._session_c import BudgetStatus  # the compiled core's C-backed class
from ._checks import MSG_DEPTH_OVERFLOW, MSG_TOKENS_OVERFLOW, check_clock_value, check_u64
from ._registry import result_kind
from .config import RlmConfig, resolve_config
from .errors import RecursionDepthExceeded, TimeBudgetExceeded, TokenBudgetExceeded

__all__ = ["BudgetTracker"]

MSG_NO_PICKLE = (
    "cannot pickle 'BudgetTracker' object: use status() and "
    "BudgetTracker.from_status()"
)

_BudgetStatus_trusted = BudgetStatus._trusted

cdef enum:
    NS_PER_MS = 1000000


cdef object _check_clock(object clock):
    if clock is not None and not callable(clock):
        raise TypeError("clock must be a callable returning int nanoseconds")
    return clock


cdef int64_t _read_clock(object clock) except? -1:
    # Now, in ns: the user clock (checked), else the monotonic clock (only
    # differences matter without a user clock). Called before any lock.
    if clock is None:
        return monotonic_ns()
    return check_clock_value(clock())


@cython.cdivision(True)
cdef inline bint _over_80_percent(uint64_t used, uint64_t budget) noexcept nogil:
    # used / budget > 0.8 exactly, i.e. 5*used > 4*budget without overflow:
    # with budget = 5q + r, that is used > 4q + floor(4r / 5). A zero budget
    # counts as exhausted (SPEC 4.9).
    if budget == 0:
        return True
    return used > 4 * (budget // 5) + (4 * (budget % 5)) // 5


cdef class BudgetTracker:
    """Tokens, wall time and recursion depth of one (sub-)call tree.

    The crate's `BudgetTracker`, thread-safe, with SPEC 4.9's fixes: depth
    never wraps below 0 nor passes the maximum, and a zero budget counts as
    exhausted in `is_near_exhaustion`.
    """

    # Fixed at construction.
    cdef uint64_t _token_budget
    cdef uint64_t _time_budget_ms
    cdef uint64_t _max_depth
    cdef object _clock
    cdef int64_t _start_ns       # clock reading at construction
    cdef uint64_t _base_ms       # time already used before construction
    # Written only under _lock; atomic so one-value getters need no lock.
    cdef atomic[uint64_t] _tokens_used
    cdef atomic[uint64_t] _depth
    cdef cython.pymutex _lock
    cdef object __weakref__

    def __init__(self, config=None, *, clock=None):
        config = resolve_config(config)
        cdef uint64_t token_budget = check_u64(config.token_budget, "token_budget")
        cdef uint64_t time_budget_ms = check_u64(config.time_budget_ms, "time_budget_ms")
        cdef uint64_t max_depth = check_u64(config.max_recursion_depth, "max_recursion_depth")
        clock = _check_clock(clock)
        cdef int64_t now = _read_clock(clock)
        self._setup(token_budget, 0, time_budget_ms, 0, max_depth, 0, clock, now)

    cdef void _setup(
        self,
        uint64_t token_budget,
        uint64_t tokens_used,
        uint64_t time_budget_ms,
        uint64_t time_used_ms,
        uint64_t max_depth,
        uint64_t depth,
        object clock,
        int64_t now,
    ) noexcept:
        self._token_budget = token_budget
        self._time_budget_ms = time_budget_ms
        self._max_depth = max_depth
        self._clock = clock
        self._start_ns = now
        self._base_ms = time_used_ms
        self._tokens_used.store(tokens_used)
        self._depth.store(depth)

    @classmethod
    def from_status(cls, status, *, clock=None):
        """A tracker that resumes from `status`: its budgets, its counts, and
        its `time_used_ms` as time already spent (the clock runs on from it)."""
        if result_kind(status) != "BudgetStatus":
            raise TypeError(f"status must be a BudgetStatus, not {type(status).__name__}")
        cdef uint64_t token_budget = check_u64(status.token_budget, "token_budget")
        cdef uint64_t tokens_used = check_u64(status.tokens_used, "tokens_used")
        cdef uint64_t time_budget_ms = check_u64(status.time_budget_ms, "time_budget_ms")
        cdef uint64_t time_used_ms = check_u64(status.time_used_ms, "time_used_ms")
        cdef uint64_t max_depth = check_u64(status.max_recursion_depth, "max_recursion_depth")
        cdef uint64_t depth = check_u64(
            status.current_recursion_depth, "current_recursion_depth"
        )
        clock = _check_clock(clock)
        cdef int64_t now = _read_clock(clock)
        cdef BudgetTracker self = cls.__new__(cls)
        self._setup(
            token_budget, tokens_used, time_budget_ms, time_used_ms, max_depth, depth, clock, now
        )
        return self

    def child(self, remaining_tokens=None, remaining_time_ms=None):
        """A tracker for a recursive call, as the crate's `child`.

        Its budgets are the given ones, by default what this tracker has
        left now; it counts its own tokens from 0 and its own time from now
        on this tracker's clock; its depth is this tracker's depth + 1 and
        its maximum depth this tracker's. Nothing is shared after creation.
        """
        cdef bint given_tokens = remaining_tokens is not None
        cdef bint given_time = remaining_time_ms is not None
        cdef uint64_t tokens = 0, time_ms = 0, used, depth, elapsed
        if given_tokens:
            tokens = check_u64(remaining_tokens, "remaining_tokens")
        if given_time:
            time_ms = check_u64(remaining_time_ms, "remaining_time_ms")
        cdef int64_t now = _read_clock(self._clock)
        with self._lock:
            used = self._tokens_used.load()
            depth = self._depth.load()
        if depth >= 0xFFFFFFFF:  # U32_MAX: the crate's depth is a u32
            raise ValueError(MSG_DEPTH_OVERFLOW)
        if not given_tokens:
            tokens = self._token_budget - used if self._token_budget > used else 0
        if not given_time:
            elapsed = self._elapsed(now)
            time_ms = self._time_budget_ms - elapsed if self._time_budget_ms > elapsed else 0
        cdef BudgetTracker child = type(self).__new__(type(self))
        child._setup(tokens, 0, time_ms, 0, self._max_depth, depth + 1, self._clock, now)
        return child

    @cython.cdivision(True)
    cdef uint64_t _elapsed(self, int64_t now) noexcept nogil:
        # Milliseconds used at clock reading `now` (never negative, capped).
        cdef uint64_t ms = 0
        if now > self._start_ns:
            # Two's complement: the difference of two int64 fits in uint64.
            ms = (<uint64_t>now - <uint64_t>self._start_ns) // NS_PER_MS
        if ms > UINT64_MAX - self._base_ms:
            return UINT64_MAX
        return self._base_ms + ms

    # -- tokens -----------------------------------------------------------------

    def add_tokens(self, tokens):
        """Add to tokens_used and return the new total.

        Over budget, the charge stays recorded (it was spent), then
        `TokenBudgetExceeded` is raised. A charge that would pass 2**64-1 is
        refused whole with ValueError.
        """
        cdef uint64_t amount = check_u64(tokens, "tokens")
        cdef uint64_t used, total = 0
        cdef bint overflow = False
        with self._lock:
            used = self._tokens_used.load()
            if amount > UINT64_MAX - used:
                overflow = True
            else:
                total = used + amount
                self._tokens_used.store(total)
        if overflow:
            raise ValueError(MSG_TOKENS_OVERFLOW)
        if total > self._token_budget:
            raise TokenBudgetExceeded(total, self._token_budget)
        return total

    def check_token_budget(self):
        """Raise `TokenBudgetExceeded` when tokens_used >= token_budget."""
        cdef uint64_t used = self._tokens_used.load()
        if used >= self._token_budget:
            raise TokenBudgetExceeded(used, self._token_budget)

    def tokens_used(self):
        return self._tokens_used.load()

    def tokens_remaining(self):
        cdef uint64_t used = self._tokens_used.load()
        return self._token_budget - used if self._token_budget > used else 0

    # -- time -------------------------------------------------------------------

    def check_time_budget(self):
        """Raise `TimeBudgetExceeded` when elapsed_ms >= time_budget_ms."""
        cdef uint64_t elapsed = self._elapsed(_read_clock(self._clock))
        if elapsed >= self._time_budget_ms:
            raise TimeBudgetExceeded(elapsed, self._time_budget_ms)

    def elapsed_ms(self):
        return self._elapsed(_read_clock(self._clock))

    def time_remaining_ms(self):
        cdef uint64_t elapsed = self._elapsed(_read_clock(self._clock))
        return self._time_budget_ms - elapsed if self._time_budget_ms > elapsed else 0

    # -- recursion depth --------------------------------------------------------

    def check_recursion_depth(self):
        """Raise `RecursionDepthExceeded` when depth > max_recursion_depth."""
        cdef uint64_t depth = self._depth.load()
        if depth > self._max_depth:
            raise RecursionDepthExceeded(depth, self._max_depth)

    def push_recursion(self):
        """Depth + 1, returned; at the maximum, raise and change nothing."""
        cdef uint64_t depth
        cdef bint ok = False
        with self._lock:
            depth = self._depth.load()
            if depth < self._max_depth:
                depth += 1
                self._depth.store(depth)
                ok = True
        if ok:
            return depth
        # depth + 1 as a Python int: no wrap even at 2**64-1.
        raise RecursionDepthExceeded(<object>depth + 1, self._max_depth)

    def pop_recursion(self):
        """Depth - 1, returned; at 0 it stays 0."""
        cdef uint64_t depth
        with self._lock:
            depth = self._depth.load()
            if depth > 0:
                depth -= 1
                self._depth.store(depth)
        return depth

    def current_depth(self):
        return self._depth.load()

    def depth_remaining(self):
        cdef uint64_t depth = self._depth.load()
        return self._max_depth - depth if self._max_depth > depth else 0

    def recursion(self):
        """Context manager: `push_recursion()` on entry (yields the new
        depth), `pop_recursion()` on exit, exception or not."""
        cdef _RecursionScope scope = _RecursionScope.__new__(_RecursionScope)
        scope._tracker = self
        return scope

    # -- all at once ----------------------------------------------------------------

    cdef void _read_both(self, uint64_t* used, uint64_t* depth) noexcept:
        with self._lock:
            used[0] = self._tokens_used.load()
            depth[0] = self._depth.load()

    def status(self):
        """All six values, tokens and depth read together at one instant."""
        cdef int64_t now = _read_clock(self._clock)
        cdef uint64_t used, depth
        self._read_both(&used, &depth)
        return _BudgetStatus_trusted(
            self._token_budget,
            used,
            self._time_budget_ms,
            self._elapsed(now),
            self._max_depth,
            depth,
        )

    def check_all(self):
        """Raise the first exhausted budget (tokens, then time, then depth)
        of one consistent snapshot; return that snapshot when none is."""
        cdef int64_t now = _read_clock(self._clock)
        cdef uint64_t used, depth
        self._read_both(&used, &depth)
        cdef uint64_t elapsed = self._elapsed(now)
        if used >= self._token_budget:
            raise TokenBudgetExceeded(used, self._token_budget)
        if elapsed >= self._time_budget_ms:
            raise TimeBudgetExceeded(elapsed, self._time_budget_ms)
        if depth > self._max_depth:
            raise RecursionDepthExceeded(depth, self._max_depth)
        return _BudgetStatus_trusted(
            self._token_budget, used, self._time_budget_ms, elapsed, self._max_depth, depth
        )

    def is_near_exhaustion(self):
        """True when any budget is more than 80% used, or is zero."""
        cdef int64_t now = _read_clock(self._clock)
        cdef uint64_t used, depth
        self._read_both(&used, &depth)
        return (
            _over_80_percent(used, self._token_budget)
            or _over_80_percent(self._elapsed(now), self._time_budget_ms)
            or _over_80_percent(depth, self._max_depth)
        )

    # -- Python protocol --------------------------------------------------------------

    def __repr__(self):
        cdef uint64_t used, depth
        self._read_both(&used, &depth)
        return (
            f"BudgetTracker(tokens_used={used}, token_budget={self._token_budget}, "
            f"time_budget_ms={self._time_budget_ms}, current_depth={depth}, "
            f"max_recursion_depth={self._max_depth})"
        )

    def __reduce__(self):
        # A live tracker holds a lock and a clock; its state travels as status().
        raise TypeError(MSG_NO_PICKLE)


@cython.final
cdef class _RecursionScope:
    """What `BudgetTracker.recursion()` returns."""

    cdef BudgetTracker _tracker
    cdef Py_ssize_t _entered

    def __enter__(self):
        depth = self._tracker.push_recursion()
        self._entered += 1
        return depth

    def __exit__(self, *exc):
        if self._entered:
            self._entered -= 1
            self._tracker.pop_recursion()
