"""BudgetTracker (the crate's budget.rs), run against both cores.

The crate's own unit tests come first, ported; then SPEC 4.9's fixes, the
semantics decided where the crate is silent, bad input and threads. Every
expected message is spelled out, so both cores must produce the same text.
"""

from __future__ import annotations

import pickle
import random
import sys
import threading

import pytest

from rlm_fast import (
    BudgetStatus,
    ConfigError,
    RecursionDepthExceeded,
    RlmConfig,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

pytestmark = pytest.mark.in_process("BudgetTracker is in-process only; the Redis manager has no tracker of its own")

U64_MAX = 2**64 - 1
MS = 1_000_000  # ns


def crate_config(**changes: int) -> RlmConfig:
    """The crate tests' `test_config()`: 1000 tokens, 1 minute, depth 5."""
    fields = {"token_budget": 1000, "time_budget_ms": 60_000, "max_recursion_depth": 5}
    fields.update(changes)
    return RlmConfig(**fields)


@pytest.fixture
def tracker(core, clock):  # type: ignore[no-untyped-def]
    return core.BudgetTracker(crate_config(), clock=clock)


# ---------------------------------------------------------------------------
# budget.rs unit tests, ported
# ---------------------------------------------------------------------------


def test_token_tracking(tracker) -> None:
    assert tracker.add_tokens(500) == 500
    assert tracker.tokens_used() == 500
    assert tracker.tokens_remaining() == 500

    assert tracker.add_tokens(400) == 900
    assert tracker.tokens_used() == 900

    with pytest.raises(TokenBudgetExceeded):
        tracker.add_tokens(200)


def test_recursion_tracking(tracker) -> None:
    assert tracker.push_recursion() == 1
    assert tracker.push_recursion() == 2
    assert tracker.current_depth() == 2

    assert tracker.pop_recursion() == 1
    assert tracker.current_depth() == 1

    for _ in range(4):
        tracker.push_recursion()

    with pytest.raises(RecursionDepthExceeded):
        tracker.push_recursion()


def test_budget_status(tracker) -> None:
    tracker.add_tokens(250)
    tracker.push_recursion()

    status = tracker.status()
    assert status.tokens_used == 250
    assert status.token_budget == 1000
    assert status.current_recursion_depth == 1
    assert status.max_recursion_depth == 5


def test_child_budget(tracker) -> None:
    parent = tracker
    parent.add_tokens(400)
    parent.push_recursion()

    child = parent.child(parent.tokens_remaining(), parent.time_remaining_ms())

    assert child.status().token_budget == 600
    assert child.current_depth() == 2

    assert child.add_tokens(300) == 300
    assert child.tokens_remaining() == 300


def test_near_exhaustion(core, clock) -> None:
    tracker = core.BudgetTracker(crate_config(token_budget=100), clock=clock)
    assert not tracker.is_near_exhaustion()
    tracker.add_tokens(85)
    assert tracker.is_near_exhaustion()


def test_check_all(tracker) -> None:
    tracker.check_all()
    with pytest.raises(TokenBudgetExceeded):
        tracker.add_tokens(1001)
    with pytest.raises(TokenBudgetExceeded):
        tracker.check_all()


# ---------------------------------------------------------------------------
# construction and config
# ---------------------------------------------------------------------------


def test_defaults_are_the_crate_constants(core) -> None:
    status = core.BudgetTracker().status()
    assert (status.token_budget, status.time_budget_ms, status.max_recursion_depth) == (
        100_000,
        300_000,
        10,
    )
    assert (status.tokens_used, status.current_recursion_depth) == (0, 0)


def test_config_positional_and_copied(core, clock) -> None:
    config = crate_config()
    tracker = core.BudgetTracker(config, clock=clock)
    config.token_budget = 5  # later changes to the dataclass change nothing
    assert tracker.tokens_remaining() == 1000


def test_config_must_be_an_rlmconfig(core) -> None:
    with pytest.raises(TypeError, match="config must be an RlmConfig, not dict"):
        core.BudgetTracker({"token_budget": 5})


def test_config_is_validated(core) -> None:
    with pytest.raises(ConfigError):
        core.BudgetTracker(RlmConfig(token_budget=-1))
    with pytest.raises(ConfigError):
        core.BudgetTracker(RlmConfig(max_recursion_depth=True))  # type: ignore[arg-type]


def test_clock_must_be_callable(core) -> None:
    with pytest.raises(TypeError, match="clock must be a callable returning int nanoseconds"):
        core.BudgetTracker(clock=123)


def test_real_clock_by_default(core) -> None:
    # Without a clock the tracker measures real (monotonic) time in ms: its
    # elapsed time lies within what the test itself measured around it.
    import time

    before = time.monotonic_ns()
    tracker = core.BudgetTracker()
    elapsed = tracker.elapsed_ms()
    remaining = tracker.time_remaining_ms()
    outer_ms = (time.monotonic_ns() - before) // 1_000_000
    assert 0 <= elapsed <= outer_ms
    assert 300_000 - outer_ms <= remaining <= 300_000
    tracker.check_time_budget()


def test_repr(tracker) -> None:
    tracker.add_tokens(7)
    tracker.push_recursion()
    assert repr(tracker) == (
        "BudgetTracker(tokens_used=7, token_budget=1000, time_budget_ms=60000, "
        "current_depth=1, max_recursion_depth=5)"
    )


def test_not_picklable(tracker) -> None:
    with pytest.raises(TypeError, match=r"use status\(\) and BudgetTracker.from_status\(\)"):
        pickle.dumps(tracker)


def test_module_name(core) -> None:
    if core.name == "python":
        assert core.BudgetTracker.__module__ == "rlm_fast"
    assert core.BudgetTracker.__name__ == "BudgetTracker"


# ---------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------


def test_over_budget_keeps_the_charge_then_raises(tracker) -> None:
    tracker.add_tokens(900)
    with pytest.raises(TokenBudgetExceeded) as info:
        tracker.add_tokens(200)
    assert (info.value.used, info.value.budget) == (1100, 1000)
    assert str(info.value) == "Token budget exceeded: used 1100 of 1000 tokens"
    assert tracker.tokens_used() == 1100  # it was spent
    assert tracker.tokens_remaining() == 0  # saturates
    with pytest.raises(TokenBudgetExceeded) as info:
        tracker.add_tokens(0)
    assert info.value.used == 1100


def test_exactly_at_budget(tracker) -> None:
    # add_tokens refuses above the budget (>), the check at it (>=), as the crate.
    assert tracker.add_tokens(1000) == 1000
    with pytest.raises(TokenBudgetExceeded) as info:
        tracker.check_token_budget()
    assert (info.value.used, info.value.budget) == (1000, 1000)
    assert tracker.tokens_remaining() == 0


def test_check_token_budget_passes_below(tracker) -> None:
    tracker.add_tokens(999)
    assert tracker.check_token_budget() is None


@pytest.mark.parametrize(
    ("bad", "exc", "message"),
    [
        (True, TypeError, "tokens must be an int, not bool"),
        (1.0, TypeError, "tokens must be an int, not float"),
        ("5", TypeError, "tokens must be an int, not str"),
        (None, TypeError, "tokens must be an int, not NoneType"),
        (-1, ValueError, "tokens must be in 0..2**64-1, got -1"),
        (2**64, ValueError, f"tokens must be in 0..2**64-1, got {2**64}"),
    ],
)
def test_add_tokens_bad_input(tracker, bad, exc, message) -> None:
    tracker.add_tokens(10)
    with pytest.raises(exc) as info:
        tracker.add_tokens(bad)
    assert str(info.value) == message
    assert tracker.tokens_used() == 10


def test_add_tokens_int_subclass_is_its_value(tracker) -> None:
    class Tokens(int):
        pass

    assert tracker.add_tokens(Tokens(12)) == 12
    assert type(tracker.tokens_used()) is int


def test_charge_past_u64_is_refused_whole(core, clock) -> None:
    status = BudgetStatus(token_budget=U64_MAX, tokens_used=U64_MAX - 1)
    tracker = core.BudgetTracker.from_status(status, clock=clock)
    with pytest.raises(ValueError) as info:
        tracker.add_tokens(2)
    assert str(info.value) == "charge would take tokens_used past 2**64-1"
    assert tracker.tokens_used() == U64_MAX - 1
    assert tracker.add_tokens(1) == U64_MAX  # exactly the maximum is fine
    with pytest.raises(ValueError):
        tracker.add_tokens(1)
    assert tracker.add_tokens(0) == U64_MAX


def test_huge_charge_over_budget(tracker) -> None:
    with pytest.raises(TokenBudgetExceeded) as info:
        tracker.add_tokens(U64_MAX)
    assert info.value.used == U64_MAX
    assert tracker.tokens_used() == U64_MAX
    with pytest.raises(ValueError):
        tracker.add_tokens(1)


# ---------------------------------------------------------------------------
# time and the injected clock
# ---------------------------------------------------------------------------


def test_elapsed_follows_the_clock(tracker, clock) -> None:
    assert tracker.elapsed_ms() == 0
    clock.advance(seconds=1.5)
    assert tracker.elapsed_ms() == 1500
    clock.advance(ns=999_999)  # milliseconds truncate, as Duration::as_millis
    assert tracker.elapsed_ms() == 1500
    clock.advance(ns=1)
    assert tracker.elapsed_ms() == 1501
    assert tracker.time_remaining_ms() == 60_000 - 1501
    assert tracker.status().time_used_ms == 1501


def test_time_budget(tracker, clock) -> None:
    clock.advance(ns=59_999 * MS + 999_999)
    tracker.check_time_budget()
    clock.advance(ns=1)
    with pytest.raises(TimeBudgetExceeded) as info:
        tracker.check_time_budget()
    assert (info.value.used_ms, info.value.budget_ms) == (60_000, 60_000)
    assert str(info.value) == "Time budget exceeded: used 60000ms of 60000ms"
    assert tracker.time_remaining_ms() == 0
    clock.advance(seconds=10)
    assert tracker.time_remaining_ms() == 0  # saturates


def test_clock_going_back_counts_as_no_time(tracker, clock) -> None:
    clock.advance(seconds=-5)
    assert tracker.elapsed_ms() == 0
    assert tracker.time_remaining_ms() == 60_000


def test_extreme_clock_values(core) -> None:
    now = [-(2**63)]
    tracker = core.BudgetTracker(crate_config(), clock=lambda: now[0])
    now[0] = 2**63 - 1
    assert tracker.elapsed_ms() == (2**64 - 1) // MS
    assert tracker.time_remaining_ms() == 0


def test_elapsed_saturates_at_u64(core, clock) -> None:
    status = BudgetStatus(time_budget_ms=U64_MAX, time_used_ms=U64_MAX - 1)
    tracker = core.BudgetTracker.from_status(status, clock=clock)
    assert tracker.elapsed_ms() == U64_MAX - 1
    clock.advance(seconds=10)
    assert tracker.elapsed_ms() == U64_MAX
    with pytest.raises(TimeBudgetExceeded):
        tracker.check_time_budget()


class ClockError(Exception):
    pass


def _raising_clock() -> int:
    raise ClockError("clock broke")


def test_raising_clock_at_construction(core) -> None:
    with pytest.raises(ClockError, match="clock broke"):
        core.BudgetTracker(clock=_raising_clock)
    with pytest.raises(ClockError):
        core.BudgetTracker.from_status(BudgetStatus(), clock=_raising_clock)


@pytest.mark.parametrize(
    "method",
    [
        "elapsed_ms",
        "time_remaining_ms",
        "check_time_budget",
        "check_all",
        "status",
        "is_near_exhaustion",
        "child",
    ],
)
def test_raising_clock_passes_through_and_changes_nothing(core, clock, method) -> None:
    calls = {"fail": False}

    def flaky() -> int:
        if calls["fail"]:
            raise ClockError("clock broke")
        return clock()

    tracker = core.BudgetTracker(crate_config(), clock=flaky)
    tracker.add_tokens(3)
    tracker.push_recursion()
    before = tracker.status()
    calls["fail"] = True
    with pytest.raises(ClockError, match="clock broke"):
        getattr(tracker, method)()
    calls["fail"] = False
    assert tracker.status() == before


def test_clock_not_read_where_no_time_is_needed(core) -> None:
    calls = []

    def counting() -> int:
        calls.append(1)
        return 0

    tracker = core.BudgetTracker(crate_config(), clock=counting)
    assert len(calls) == 1
    tracker.add_tokens(1)
    tracker.push_recursion()
    tracker.pop_recursion()
    tracker.check_token_budget()
    tracker.check_recursion_depth()
    tracker.tokens_used(), tracker.tokens_remaining()
    tracker.current_depth(), tracker.depth_remaining()
    repr(tracker)
    assert len(calls) == 1
    for name in ("status", "check_all", "is_near_exhaustion", "elapsed_ms", "child"):
        getattr(tracker, name)()
    assert len(calls) == 6  # once per call


@pytest.mark.parametrize(
    ("value", "exc", "message"),
    [
        (1.5, TypeError, "clock must return int nanoseconds, not float"),
        (True, TypeError, "clock must return int nanoseconds, not bool"),
        (None, TypeError, "clock must return int nanoseconds, not NoneType"),
        (2**63, ValueError, f"clock returned {2**63}, outside the int64 range"),
    ],
)
def test_bad_clock_value(core, clock, value, exc, message) -> None:
    with pytest.raises(exc) as info:
        core.BudgetTracker(clock=lambda: value)
    assert str(info.value) == message
    answer = [clock()]
    tracker = core.BudgetTracker(crate_config(), clock=lambda: answer[0])
    tracker.add_tokens(1)
    answer[0] = value
    with pytest.raises(exc) as info:
        tracker.status()
    assert str(info.value) == message
    answer[0] = clock()
    assert tracker.tokens_used() == 1


def test_clock_may_call_back_into_the_tracker(core, clock) -> None:
    # The clock runs before any lock: re-entering cannot deadlock.
    box = {}

    def reentrant() -> int:
        if "t" in box:
            box["t"].add_tokens(1)
            box["t"].push_recursion()
            box["t"].pop_recursion()
        return clock()

    box["t"] = tracker = core.BudgetTracker(crate_config(), clock=reentrant)
    status = tracker.status()
    assert status.tokens_used == 1
    tracker.check_all()
    assert tracker.tokens_used() == 2


# ---------------------------------------------------------------------------
# recursion depth (SPEC 4.9)
# ---------------------------------------------------------------------------


def test_pop_at_zero_stays_zero(tracker) -> None:
    assert tracker.pop_recursion() == 0
    assert tracker.current_depth() == 0
    assert tracker.depth_remaining() == 5
    assert tracker.push_recursion() == 1


def test_push_at_max_raises_and_changes_nothing(tracker) -> None:
    for expected in range(1, 6):
        assert tracker.push_recursion() == expected
    assert tracker.depth_remaining() == 0
    with pytest.raises(RecursionDepthExceeded) as info:
        tracker.push_recursion()
    assert (info.value.depth, info.value.max_depth) == (6, 5)
    assert str(info.value) == "Recursion depth limit exceeded: 6 >= 5"
    assert tracker.current_depth() == 5
    tracker.check_recursion_depth()  # depth == max is allowed


def test_zero_max_depth(core, clock) -> None:
    tracker = core.BudgetTracker(crate_config(max_recursion_depth=0), clock=clock)
    with pytest.raises(RecursionDepthExceeded) as info:
        tracker.push_recursion()
    assert (info.value.depth, info.value.max_depth) == (1, 0)
    assert tracker.current_depth() == 0


def test_push_at_u32_max_depth_reports_without_wrapping(core, clock) -> None:
    # The crate's depth is a u32: the largest a BudgetStatus can carry.
    status = BudgetStatus(max_recursion_depth=2**32 - 1, current_recursion_depth=2**32 - 1)
    tracker = core.BudgetTracker.from_status(status, clock=clock)
    with pytest.raises(RecursionDepthExceeded) as info:
        tracker.push_recursion()
    assert info.value.depth == 2**32
    assert tracker.current_depth() == 2**32 - 1


def test_check_recursion_depth_above_max(core, clock) -> None:
    tracker = core.BudgetTracker.from_status(
        BudgetStatus(max_recursion_depth=3, current_recursion_depth=4), clock=clock
    )
    with pytest.raises(RecursionDepthExceeded) as info:
        tracker.check_recursion_depth()
    assert (info.value.depth, info.value.max_depth) == (4, 3)
    assert tracker.depth_remaining() == 0
    assert tracker.pop_recursion() == 3
    tracker.check_recursion_depth()


def test_push_under_8_threads_never_passes_max(core, clock) -> None:
    max_depth = 3
    tracker = core.BudgetTracker(crate_config(max_recursion_depth=max_depth), clock=clock)
    threads_n, rounds = 8, 2000
    barrier = threading.Barrier(threads_n + 1)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        highest = 0
        barrier.wait()
        try:
            for _ in range(rounds):
                try:
                    depth = tracker.push_recursion()
                except RecursionDepthExceeded as exc:
                    assert exc.depth == max_depth + 1
                    continue
                highest = max(highest, depth, tracker.current_depth())
                tracker.pop_recursion()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        seen.append(highest)

    def watcher() -> None:
        barrier.wait()
        highest = 0
        while not stop.is_set():
            highest = max(highest, tracker.current_depth(), tracker.status().current_recursion_depth)
        seen.append(highest)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=worker) for _ in range(threads_n)]
        watch = threading.Thread(target=watcher)
        for t in (*workers, watch):
            t.start()
        for t in workers:
            t.join()
        stop.set()
        watch.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    assert max(seen) <= max_depth
    assert tracker.current_depth() == 0


def test_recursion_context_manager(tracker) -> None:
    with tracker.recursion() as depth:
        assert depth == 1
        with tracker.recursion() as inner:
            assert inner == 2
            assert tracker.current_depth() == 2
        assert tracker.current_depth() == 1
    assert tracker.current_depth() == 0


def test_recursion_decrements_when_the_block_raises(tracker) -> None:
    with pytest.raises(KeyError):
        with tracker.recursion():
            with tracker.recursion():
                raise KeyError("boom")
    assert tracker.current_depth() == 0


def test_recursion_at_max_raises_on_entry(tracker) -> None:
    for _ in range(5):
        tracker.push_recursion()
    body_ran = False
    with pytest.raises(RecursionDepthExceeded):
        with tracker.recursion():
            body_ran = True
    assert not body_ran
    assert tracker.current_depth() == 5


def test_recursion_exit_never_wraps(tracker) -> None:
    with tracker.recursion():
        tracker.pop_recursion()  # someone else took it back already
    assert tracker.current_depth() == 0


# ---------------------------------------------------------------------------
# near exhaustion (SPEC 4.9)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["token_budget", "time_budget_ms", "max_recursion_depth"]
)
def test_zero_budget_is_near_exhaustion(core, clock, field) -> None:
    tracker = core.BudgetTracker(crate_config(**{field: 0}), clock=clock)
    assert tracker.is_near_exhaustion() is True
    tracker = core.BudgetTracker.from_status(BudgetStatus(**{field: 0}), clock=clock)
    assert tracker.is_near_exhaustion() is True


def test_all_zero_status_is_near_exhaustion(core, clock) -> None:
    tracker = core.BudgetTracker.from_status(
        BudgetStatus(token_budget=0, time_budget_ms=0, max_recursion_depth=0), clock=clock
    )
    assert tracker.is_near_exhaustion() is True


def test_near_exhaustion_boundary_is_strictly_above_80_percent(core, clock) -> None:
    tracker = core.BudgetTracker(crate_config(token_budget=100), clock=clock)
    tracker.add_tokens(80)
    assert tracker.is_near_exhaustion() is False
    tracker.add_tokens(1)
    assert tracker.is_near_exhaustion() is True

    tracker = core.BudgetTracker(crate_config(), clock=clock)  # depth 5
    for _ in range(4):
        tracker.push_recursion()
    assert tracker.is_near_exhaustion() is False  # 4/5 is not above 0.8
    tracker.push_recursion()
    assert tracker.is_near_exhaustion() is True

    tracker = core.BudgetTracker(crate_config(), clock=clock)  # 60 s
    clock.advance(seconds=48)
    assert tracker.is_near_exhaustion() is False
    clock.advance(ns=MS)
    assert tracker.is_near_exhaustion() is True


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6, 7, 99, 101, 10**18 + 3, U64_MAX - 1, U64_MAX])
def test_near_exhaustion_is_exact_for_any_budget(core, clock, budget) -> None:
    # used/budget > 0.8 exactly (no float rounding), for huge budgets too.
    threshold = (4 * budget) // 5  # largest used with 5*used <= 4*budget
    for used, expected in ((threshold, False), (threshold + 1, True)):
        status = BudgetStatus(token_budget=budget, tokens_used=used)
        tracker = core.BudgetTracker.from_status(status, clock=clock)
        assert tracker.is_near_exhaustion() is expected, (budget, used)


# ---------------------------------------------------------------------------
# status, check_all
# ---------------------------------------------------------------------------


def test_status_is_a_budget_status(tracker, clock) -> None:
    tracker.add_tokens(10)
    tracker.push_recursion()
    clock.advance(seconds=2)
    assert tracker.status() == BudgetStatus(
        token_budget=1000,
        tokens_used=10,
        time_budget_ms=60_000,
        time_used_ms=2000,
        max_recursion_depth=5,
        current_recursion_depth=1,
    )


def test_check_all_returns_the_status_it_checked(core, tracker, clock) -> None:
    tracker.add_tokens(1)
    clock.advance(seconds=1)
    status = tracker.check_all()
    assert isinstance(status, core.BudgetStatus)
    assert (status.tokens_used, status.time_used_ms) == (1, 1000)


def test_check_all_order_tokens_time_depth(core, clock) -> None:
    status = BudgetStatus(
        token_budget=10,
        tokens_used=10,
        time_budget_ms=5,
        time_used_ms=5,
        max_recursion_depth=1,
        current_recursion_depth=2,
    )
    tracker = core.BudgetTracker.from_status(status, clock=clock)
    with pytest.raises(TokenBudgetExceeded):
        tracker.check_all()
    tracker = core.BudgetTracker.from_status(status.replace(tokens_used=9), clock=clock)
    with pytest.raises(TimeBudgetExceeded) as info:
        tracker.check_all()
    assert (info.value.used_ms, info.value.budget_ms) == (5, 5)
    tracker = core.BudgetTracker.from_status(
        status.replace(tokens_used=9, time_used_ms=4), clock=clock
    )
    with pytest.raises(RecursionDepthExceeded) as info:
        tracker.check_all()
    assert (info.value.depth, info.value.max_depth) == (2, 1)
    tracker.pop_recursion()
    tracker.check_all()


# ---------------------------------------------------------------------------
# child
# ---------------------------------------------------------------------------


def test_child_defaults_to_what_is_left(tracker, clock) -> None:
    tracker.add_tokens(400)
    tracker.push_recursion()
    clock.advance(seconds=10)
    child = tracker.child()
    assert child.status() == BudgetStatus(
        token_budget=600,
        tokens_used=0,
        time_budget_ms=50_000,
        time_used_ms=0,
        max_recursion_depth=5,
        current_recursion_depth=2,
    )


def test_child_with_explicit_budgets(tracker) -> None:
    child = tracker.child(remaining_tokens=50, remaining_time_ms=70)
    status = child.status()
    assert (status.token_budget, status.time_budget_ms) == (50, 70)
    child = tracker.child(remaining_tokens=7)
    assert child.status().time_budget_ms == 60_000
    assert child.status().token_budget == 7


def test_child_shares_the_clock_not_the_counters(tracker, clock) -> None:
    clock.advance(seconds=1)
    child = tracker.child()
    assert child.elapsed_ms() == 0
    clock.advance(seconds=2)
    assert child.elapsed_ms() == 2000
    assert tracker.elapsed_ms() == 3000
    child.add_tokens(5)
    child.push_recursion()
    assert tracker.tokens_used() == 0
    assert tracker.current_depth() == 0
    assert child.current_depth() == 2


def test_child_of_exhausted_parent(tracker, clock) -> None:
    with pytest.raises(TokenBudgetExceeded):
        tracker.add_tokens(2000)
    clock.advance(seconds=120)
    child = tracker.child()
    status = child.status()
    assert (status.token_budget, status.time_budget_ms) == (0, 0)
    with pytest.raises(TokenBudgetExceeded):
        child.check_all()
    assert child.is_near_exhaustion() is True


def test_child_at_max_depth_is_over_its_limit(tracker) -> None:
    # As in the crate, child() does not refuse; the child's check does.
    for _ in range(5):
        tracker.push_recursion()
    child = tracker.child()
    assert child.current_depth() == 6
    with pytest.raises(RecursionDepthExceeded) as info:
        child.check_recursion_depth()
    assert (info.value.depth, info.value.max_depth) == (6, 5)
    with pytest.raises(RecursionDepthExceeded):
        child.push_recursion()
    assert child.depth_remaining() == 0
    grandchild = child.child()
    assert grandchild.current_depth() == 7


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"remaining_tokens": True}, TypeError, "remaining_tokens must be an int, not bool"),
        ({"remaining_tokens": -1}, ValueError, "remaining_tokens must be in 0..2**64-1, got -1"),
        ({"remaining_time_ms": 1.5}, TypeError, "remaining_time_ms must be an int, not float"),
        (
            {"remaining_time_ms": 2**64},
            ValueError,
            f"remaining_time_ms must be in 0..2**64-1, got {2**64}",
        ),
    ],
)
def test_child_bad_input(tracker, kwargs, exc, message) -> None:
    with pytest.raises(exc) as info:
        tracker.child(**kwargs)
    assert str(info.value) == message


def test_child_depth_cannot_wrap(core, clock) -> None:
    tracker = core.BudgetTracker.from_status(
        BudgetStatus(max_recursion_depth=2**32 - 1, current_recursion_depth=2**32 - 1), clock=clock
    )
    with pytest.raises(ValueError) as info:
        tracker.child()
    assert str(info.value) == "child recursion depth would pass 2**32-1"


# ---------------------------------------------------------------------------
# from_status
# ---------------------------------------------------------------------------


def test_from_status_round_trip(tracker, clock, core) -> None:
    tracker.add_tokens(123)
    tracker.push_recursion()
    clock.advance(seconds=4)
    status = tracker.status()
    copy = core.BudgetTracker.from_status(status, clock=clock)
    assert copy.status() == status
    clock.advance(seconds=1)
    assert copy.elapsed_ms() == 5000  # the time already used, then the clock
    assert copy.tokens_used() == 123
    assert copy.current_depth() == 1


def test_from_status_is_a_classmethod_on_the_core(core) -> None:
    tracker = core.BudgetTracker.from_status(BudgetStatus())
    assert type(tracker) is core.BudgetTracker
    assert tracker.status().token_budget == 100_000
    assert tracker.status().time_used_ms < 60_000


def test_from_status_needs_a_budget_status(core) -> None:
    with pytest.raises(TypeError, match="status must be a BudgetStatus, not dict"):
        core.BudgetTracker.from_status({"token_budget": 1})
    with pytest.raises(TypeError, match="clock must be a callable"):
        core.BudgetTracker.from_status(BudgetStatus(), clock="now")


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


def test_add_tokens_from_8_threads_is_exact(core, clock) -> None:
    threads_n, rounds = 8, 5000
    tracker = core.BudgetTracker(crate_config(token_budget=U64_MAX), clock=clock)
    barrier = threading.Barrier(threads_n)
    totals: list[list[int]] = [[] for _ in range(threads_n)]

    def worker(i: int) -> None:
        barrier.wait()
        out = totals[i]
        for k in range(rounds):
            out.append(tracker.add_tokens(1 + (k % 3)))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    expected = threads_n * sum(1 + (k % 3) for k in range(rounds))
    assert tracker.tokens_used() == expected
    # Every returned total is distinct: each add saw a total of its own.
    flat = [x for out in totals for x in out]
    assert len(set(flat)) == len(flat)
    assert max(flat) == expected


def test_over_budget_from_8_threads_keeps_every_charge(core, clock) -> None:
    threads_n, rounds, budget = 8, 1000, 1000
    tracker = core.BudgetTracker(crate_config(token_budget=budget), clock=clock)
    barrier = threading.Barrier(threads_n)
    raised = [0] * threads_n

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(rounds):
            try:
                tracker.add_tokens(1)
            except TokenBudgetExceeded:
                raised[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.tokens_used() == threads_n * rounds
    # Totals 1..8000 were each seen once; exactly those above 1000 raised.
    assert sum(raised) == threads_n * rounds - budget


# ---------------------------------------------------------------------------
# the two cores agree on a random workload
# ---------------------------------------------------------------------------


def _run_script(tracker_cls, clock_cls, seed: int) -> list[object]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    clock = clock_cls()
    tracker = tracker_cls(crate_config(token_budget=500, time_budget_ms=1000), clock=clock)
    trackers = [tracker]
    log: list[object] = []
    ops = [
        ("add_tokens", lambda: (rng.choice([0, 1, 7, 50, 200, -1, True, 2**64]),)),
        ("push_recursion", tuple),
        ("pop_recursion", tuple),
        ("check_all", tuple),
        ("check_token_budget", tuple),
        ("check_time_budget", tuple),
        ("check_recursion_depth", tuple),
        ("status", tuple),
        ("is_near_exhaustion", tuple),
        ("tokens_remaining", tuple),
        ("time_remaining_ms", tuple),
        ("depth_remaining", tuple),
        ("child", tuple),
    ]
    for _ in range(400):
        clock.advance(ns=rng.randrange(0, 20 * MS))
        name, make_args = rng.choice(ops)
        target = rng.choice(trackers)
        try:
            result = getattr(target, name)(*make_args())
        except Exception as exc:  # noqa: BLE001 - compared below
            log.append((name, type(exc).__name__, str(exc)))
            continue
        if name == "child":
            trackers.append(result)
            result = result.status()
        log.append((name, result))
    log.append([t.status() for t in trackers])
    return log


def test_both_cores_agree(clock) -> None:
    from rlm_fast import _budget_py

    try:
        from rlm_fast import _budget_c
    except ImportError:
        pytest.skip("compiled core not built")
    for seed in range(20):
        assert _run_script(_budget_py.BudgetTracker, type(clock), seed) == _run_script(
            _budget_c.BudgetTracker, type(clock), seed
        )
