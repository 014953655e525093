"""The model-call step (SPEC 13, with the choices docs/lifecycle.md fixes):
begin_call, end_call and the call() context manager, on every manager
through the `core` fixture; time is a FakeClock."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import table_state

from rlm_fast import (
    InvalidSessionState,
    InvalidSessionToken,
    RecursionDepthExceeded,
    RlmError,
    SessionExpired,
    SessionNotFound,
    SessionState,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

U64_MAX = 2**64 - 1
DURATION = 1800
MS = 1_000_000  # ns


def status_of(m: Any, sid: Any) -> tuple[int, int, int]:
    """(tokens_used, time_used_ms, depth) of a session."""
    info = m.get_session(sid)
    return (
        info.budget_status.tokens_used,
        info.budget_status.time_used_ms,
        info.recursion_depth,
    )


def gone_id(m: Any) -> Any:
    sid = m.create_session().id
    m.destroy_session(sid)
    return sid


# -- begin_call ----------------------------------------------------------------


def test_begin_call_increments_the_depth_and_returns_the_status(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=50, max_recursion_depth=3)
    sid = m.create_session().id
    m.charge_tokens(sid, 7)
    m.charge_time(sid, 4)
    status = m.begin_call(sid)
    assert (status.token_budget, status.tokens_used) == (100, 7)
    assert (status.time_budget_ms, status.time_used_ms) == (50, 4)
    assert (status.max_recursion_depth, status.current_recursion_depth) == (3, 1)
    assert status == m.get_session(sid).budget_status
    assert type(status) is type(m.get_session(sid).budget_status)
    assert m.begin_call(str(sid)).current_recursion_depth == 2
    assert m.begin_call(sid).current_recursion_depth == 3
    before = table_state(m)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.begin_call(sid)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (4, 3)
    assert table_state(m) == before
    assert status_of(m, sid) == (7, 4, 3)


def test_begin_call_refuses_bad_ids(core, make_manager) -> None:
    m = make_manager()
    with pytest.raises(SessionNotFound):
        m.begin_call(gone_id(m))
    with pytest.raises(InvalidSessionToken):
        m.begin_call("nope")
    with pytest.raises(TypeError):
        m.begin_call(17)


@pytest.mark.parametrize("how", ["terminated", "state_expired", "clock"])
def test_begin_call_on_a_dead_session_or_under_a_dead_ancestor(
    how, clock, make_manager
) -> None:
    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.extend_session(kid)
    if how == "terminated":
        m.update_session_state(root, SessionState.TERMINATED)
    elif how == "state_expired":
        m.update_session_state(root, SessionState.EXPIRED)
    else:
        clock.advance(seconds=DURATION, ns=1)  # the root, not the kid
    error = InvalidSessionState if how == "terminated" else SessionExpired
    before = table_state(m)
    for target in (root, kid):
        with pytest.raises(error) as excinfo:
            m.begin_call(target)
        assert str(excinfo.value.session_id) == str(root)  # the ancestor is named
    assert table_state(m) == before


def test_validity_comes_before_budgets(clock, make_manager) -> None:
    m = make_manager(token_budget=5)
    sid = m.create_session().id
    m.charge_tokens(sid, 5)
    m.update_session_state(sid, SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState):
        m.begin_call(sid)


def test_begin_call_checks_every_budget_on_the_path_root_first(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=100, max_recursion_depth=10)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=50, time_budget_ms=50).id
    leaf = m.create_child_session(kid, token_budget=20, time_budget_ms=20).id

    def set_used(sid: Any, tokens: int, time_ms: int) -> None:
        status = m.get_session(sid).budget_status
        m.update_budget(sid, status.replace(tokens_used=tokens, time_used_ms=time_ms))

    # Exhausted (used == budget) is refused; below is admitted.
    set_used(leaf, 19, 19)
    assert m.begin_call(leaf).current_recursion_depth == 3
    m.end_call(leaf)
    set_used(leaf, 20, 0)
    before = table_state(m)
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.begin_call(leaf)
    assert (tok.value.used, tok.value.budget) == (20, 20)
    assert table_state(m) == before
    # Tokens before time on one session.
    set_used(leaf, 20, 20)
    with pytest.raises(TokenBudgetExceeded):
        m.begin_call(leaf)
    set_used(leaf, 0, 20)
    with pytest.raises(TimeBudgetExceeded) as tim:
        m.begin_call(leaf)
    assert (tim.value.used_ms, tim.value.budget_ms) == (20, 20)
    # Root first: the root's time before the leaf's tokens.
    set_used(leaf, 20, 0)
    set_used(root, 0, 100)
    with pytest.raises(TimeBudgetExceeded) as tim2:
        m.begin_call(leaf)
    assert (tim2.value.used_ms, tim2.value.budget_ms) == (100, 100)
    # The middle's tokens before the leaf's time.
    set_used(root, 0, 0)
    set_used(kid, 50, 0)
    set_used(leaf, 0, 20)
    with pytest.raises(TokenBudgetExceeded) as tok2:
        m.begin_call(leaf)
    assert (tok2.value.used, tok2.value.budget) == (50, 50)
    # The root is not refused by its child's exhausted budget.
    assert m.begin_call(root).current_recursion_depth == 1
    assert status_of(m, leaf)[2] == 2  # nothing moved on refusals


def test_begin_call_depth_over_the_maximum_set_by_update_budget(make_manager) -> None:
    m = make_manager(max_recursion_depth=5)
    sid = m.create_session().id
    status = m.get_session(sid).budget_status
    m.update_budget(
        sid, status.replace(max_recursion_depth=2, current_recursion_depth=3)
    )
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.begin_call(sid)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (
        3,
        2,
    )  # check_budget's error
    m.update_budget(
        sid, status.replace(max_recursion_depth=2, current_recursion_depth=2)
    )
    with pytest.raises(RecursionDepthExceeded) as excinfo2:
        m.begin_call(sid)
    assert (excinfo2.value.depth, excinfo2.value.max_depth) == (3, 2)  # the increment's
    assert status_of(m, sid)[2] == 2


def test_begin_call_on_a_child_at_the_limit(make_manager) -> None:
    m = make_manager(max_recursion_depth=2)
    root = m.create_session().id
    kid = m.create_child_session(root).id  # starts at 1
    assert m.begin_call(kid).current_recursion_depth == 2
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.begin_call(kid)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (3, 2)
    assert status_of(m, root)[2] == 0  # the parent's depth does not move


# -- end_call ------------------------------------------------------------------


def test_end_call_charges_and_decrements(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=1000)
    sid = m.create_session().id
    m.begin_call(sid)
    m.begin_call(sid)
    status = m.end_call(sid, tokens=30, elapsed_ms=12)
    assert (
        status.tokens_used,
        status.time_used_ms,
        status.current_recursion_depth,
    ) == (30, 12, 1)
    assert status == m.get_session(sid).budget_status
    status = m.end_call(str(sid), tokens=5)
    assert (
        status.tokens_used,
        status.time_used_ms,
        status.current_recursion_depth,
    ) == (35, 12, 0)
    # Without a begin_call: the depth saturates at 0, the charge is made.
    status = m.end_call(sid, elapsed_ms=8)
    assert (
        status.tokens_used,
        status.time_used_ms,
        status.current_recursion_depth,
    ) == (35, 20, 0)
    assert m.end_call(sid) == m.get_session(sid).budget_status


def test_end_call_amounts_are_keyword_only(make_manager) -> None:
    m = make_manager()
    sid = m.create_session().id
    with pytest.raises(TypeError):
        m.end_call(sid, 5)  # type: ignore[misc]
    assert status_of(m, sid) == (0, 0, 0)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("tokens", -1, ValueError),
        ("tokens", 2**64, ValueError),
        ("tokens", "1", TypeError),
        ("tokens", 1.0, TypeError),
        ("tokens", True, TypeError),
        ("tokens", None, TypeError),
        ("elapsed_ms", -1, ValueError),
        ("elapsed_ms", 2**64, ValueError),
        ("elapsed_ms", 2.5, TypeError),
        ("elapsed_ms", False, TypeError),
    ],
)
def test_end_call_bad_amounts_change_nothing(
    field, value, error, core, make_manager
) -> None:
    m = make_manager()
    sid = m.create_session().id
    m.begin_call(sid)
    before = table_state(m)
    stats = m.get_stats()
    with pytest.raises(error) as excinfo:
        m.end_call(
            sid, **{field: value, ("elapsed_ms" if field == "tokens" else "tokens"): 1}
        )
    assert not isinstance(excinfo.value, RlmError)
    assert table_state(m) == before
    assert m.get_stats() == stats  # counts nowhere
    assert status_of(m, sid) == (0, 0, 1)


def test_amounts_are_checked_before_validity(make_manager) -> None:
    m = make_manager()
    sid = m.create_session().id
    m.update_session_state(sid, SessionState.TERMINATED)
    with pytest.raises(ValueError):
        m.end_call(sid, tokens=-1)
    with pytest.raises(TypeError):
        m.end_call(gone_id(m), elapsed_ms="5")
    with pytest.raises(InvalidSessionState):
        m.end_call(sid, tokens=1)


@pytest.mark.parametrize("how", ["terminated", "state_expired", "clock", "destroyed"])
def test_end_call_on_a_session_that_died_during_the_call(
    how, clock, make_manager
) -> None:
    m = make_manager()
    sid = m.create_session().id
    m.begin_call(sid)
    if how == "terminated":
        m.update_session_state(sid, SessionState.TERMINATED)
    elif how == "state_expired":
        m.update_session_state(sid, SessionState.EXPIRED)
    elif how == "clock":
        clock.advance(seconds=DURATION, ns=1)
    else:
        m.destroy_session(sid)
    error = {
        "terminated": InvalidSessionState,
        "state_expired": SessionExpired,
        "clock": SessionExpired,
        "destroyed": SessionNotFound,
    }[how]
    before = table_state(m)
    with pytest.raises(error):
        m.end_call(sid, tokens=10, elapsed_ms=10)
    assert table_state(m) == before
    if how != "destroyed":
        assert status_of(m, sid) == (0, 0, 1)  # nothing recorded, depth kept


@pytest.mark.parametrize("how", ["terminated", "clock", "destroyed"])
def test_end_call_under_an_ancestor_that_died_during_the_call(
    how, clock, make_manager
) -> None:
    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.extend_session(kid)
    m.begin_call(kid)
    if how == "terminated":
        m.update_session_state(root, SessionState.TERMINATED)
    elif how == "clock":
        clock.advance(seconds=DURATION, ns=1)
    else:
        m.destroy_session(root)
    error = {
        "terminated": InvalidSessionState,
        "clock": SessionExpired,
        "destroyed": SessionNotFound,
    }[how]
    with pytest.raises(error):
        m.end_call(kid, tokens=3, elapsed_ms=3)
    if how != "destroyed":
        assert status_of(m, kid) == (0, 0, 2)
        assert status_of(m, root) == (0, 0, 0)


def test_end_call_rolls_up_to_every_ancestor(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=1000)
    root = m.create_session().id
    a = m.create_child_session(root, token_budget=500, time_budget_ms=500).id
    b = m.create_child_session(root, token_budget=500, time_budget_ms=500).id
    a1 = m.create_child_session(a, token_budget=100, time_budget_ms=100).id
    m.begin_call(a1)
    status = m.end_call(a1, tokens=11, elapsed_ms=7)
    assert (
        status.tokens_used,
        status.time_used_ms,
        status.current_recursion_depth,
    ) == (11, 7, 2)
    m.begin_call(b)
    m.end_call(b, tokens=5, elapsed_ms=1)
    assert status_of(m, root) == (16, 8, 0)
    assert status_of(m, a) == (11, 7, 1)
    assert status_of(m, a1) == (11, 7, 2)
    assert status_of(m, b) == (5, 1, 1)


def test_end_call_depth_saturates_at_the_start_depth(make_manager) -> None:
    m = make_manager(max_recursion_depth=10)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    m.increment_recursion_depth(root)
    kid = m.create_child_session(root).id  # starts at 3
    grand = m.create_child_session(kid).id  # starts at 4
    assert m.end_call(kid).current_recursion_depth == 3
    assert m.begin_call(kid).current_recursion_depth == 4
    assert m.begin_call(kid).current_recursion_depth == 5
    assert [m.end_call(kid).current_recursion_depth for _ in range(4)] == [4, 3, 3, 3]
    assert [m.end_call(grand, tokens=1).current_recursion_depth for _ in range(2)] == [
        4,
        4,
    ]
    assert status_of(m, root) == (2, 0, 2)  # charges roll up, depths do not


def test_end_call_over_budget_records_then_raises(make_manager) -> None:
    m = make_manager(token_budget=10, time_budget_ms=10)
    sid = m.create_session().id
    m.begin_call(sid)
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.end_call(sid, tokens=11, elapsed_ms=11)  # both passed: tokens raised
    assert (tok.value.used, tok.value.budget) == (11, 10)
    assert status_of(m, sid) == (11, 11, 0)  # recorded and decremented
    m.update_budget(
        sid, m.get_session(sid).budget_status.replace(tokens_used=0, time_used_ms=0)
    )
    m.begin_call(sid)
    with pytest.raises(TimeBudgetExceeded) as tim:
        m.end_call(sid, tokens=10, elapsed_ms=12)  # tokens at (not past) the budget
    assert (tim.value.used_ms, tim.value.budget_ms) == (12, 10)
    assert status_of(m, sid) == (10, 12, 0)
    # Up to the budget exactly is not over it.
    m.update_budget(
        sid, m.get_session(sid).budget_status.replace(tokens_used=0, time_used_ms=0)
    )
    m.begin_call(sid)
    status = m.end_call(sid, tokens=10, elapsed_ms=10)
    assert (
        status.tokens_used,
        status.time_used_ms,
        status.current_recursion_depth,
    ) == (10, 10, 0)


def test_end_call_names_the_budget_nearest_the_root(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=100)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=60, time_budget_ms=60).id
    leaf = m.create_child_session(kid, token_budget=60, time_budget_ms=60).id
    m.charge_tokens(root, 50)
    m.charge_time(root, 50)
    m.begin_call(leaf)
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.end_call(
            leaf, tokens=55, elapsed_ms=5
        )  # root 105 > 100, kid and leaf 55 < 60
    assert (tok.value.used, tok.value.budget) == (105, 100)
    assert status_of(m, leaf) == (55, 5, 2)
    assert status_of(m, kid) == (55, 5, 1)
    assert status_of(m, root) == (105, 55, 0)
    with pytest.raises(
        TokenBudgetExceeded
    ) as tok2:  # no begin_call: the root is exhausted
        m.end_call(leaf, tokens=10)  # leaf 65 > 60, kid 65 > 60, root 115 > 100
    assert (tok2.value.used, tok2.value.budget) == (115, 100)
    # The time of the middle session only.
    m2 = make_manager(token_budget=100, time_budget_ms=100)
    r2 = m2.create_session().id
    k2 = m2.create_child_session(r2, time_budget_ms=30).id
    l2 = m2.create_child_session(k2).id
    with pytest.raises(TimeBudgetExceeded) as tim:
        m2.end_call(l2, tokens=1, elapsed_ms=31)
    assert (tim.value.used_ms, tim.value.budget_ms) == (31, 30)


@pytest.mark.parametrize("kind", ["tokens", "time"])
@pytest.mark.parametrize("where", ["root", "middle", "self"])
def test_end_call_past_u64_anywhere_is_refused_whole(kind, where, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    m.begin_call(leaf)
    used_f = "tokens_used" if kind == "tokens" else "time_used_ms"
    budget_f = "token_budget" if kind == "tokens" else "time_budget_ms"
    target = {"root": root, "middle": mid, "self": leaf}[where]
    status = m.get_session(target).budget_status
    m.update_budget(target, status.replace(**{budget_f: U64_MAX, used_f: U64_MAX - 5}))
    before = table_state(m)
    amounts = (
        {"tokens": 6, "elapsed_ms": 1}
        if kind == "tokens"
        else {"tokens": 1, "elapsed_ms": 6}
    )
    with pytest.raises(ValueError) as excinfo:
        m.end_call(leaf, **amounts)
    assert not isinstance(excinfo.value, RlmError)
    assert table_state(m) == before  # neither amount recorded, depth unchanged
    assert m.get_session(leaf).recursion_depth == 3
    # Exactly up to 2**64-1 is accepted.
    ok = (
        {"tokens": 5, "elapsed_ms": 1}
        if kind == "tokens"
        else {"tokens": 1, "elapsed_ms": 5}
    )
    m.end_call(leaf, **ok)
    assert getattr(m.get_session(target).budget_status, used_f) == U64_MAX
    assert m.get_session(leaf).recursion_depth == 2


# -- call() --------------------------------------------------------------------


def test_call_measures_elapsed_time_with_the_clock(clock, make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=100_000)
    sid = m.create_session().id
    with m.call(sid) as c:
        assert c.tokens == 0
        assert c.status == m.get_session(sid).budget_status
        assert c.status.current_recursion_depth == 1
        assert status_of(m, sid) == (0, 0, 1)
        clock.advance(ns=1_234 * MS + 999_999)  # whole milliseconds: 1234
        c.tokens = 42
    assert status_of(m, sid) == (42, 1234, 0)
    with m.call(str(sid)) as c2:
        clock.advance(ns=999_999)  # under a millisecond: 0
    assert c2.tokens == 0
    assert status_of(m, sid) == (42, 1234, 0)
    with m.call(sid) as c3:
        c3.tokens = 8
        clock.advance(seconds=2)
    assert status_of(m, sid) == (50, 3234, 0)


def test_call_without_a_clock_measures_wall_time(core) -> None:
    import time

    from rlm_fast import RlmConfig

    m = core.SessionManager(RlmConfig())
    sid = m.create_session().id
    started = time.monotonic()
    with m.call(sid) as c:
        time.sleep(0.03)
        c.tokens = 1
    wall_ms = (time.monotonic() - started) * 1000
    tokens, elapsed, depth = status_of(m, sid)
    assert (tokens, depth) == (1, 0)
    assert 30 <= elapsed <= wall_ms + 1


def test_call_nests_and_rolls_up(clock, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    with m.call(root) as outer:
        clock.advance(ns=5 * MS)
        with m.call(kid) as inner:
            assert inner.status.current_recursion_depth == 2
            clock.advance(ns=10 * MS)
            inner.tokens = 3
        outer.tokens = 4
    assert status_of(m, kid) == (3, 10, 1)
    assert status_of(m, root) == (7, 25, 0)


def test_a_refused_entry_runs_no_body_and_charges_nothing(clock, make_manager) -> None:
    m = make_manager(token_budget=5, max_recursion_depth=1)
    sid = m.create_session().id
    m.charge_tokens(sid, 5)
    ran = []
    before = table_state(m)
    with pytest.raises(TokenBudgetExceeded), m.call(sid):
        ran.append(1)
    assert ran == []
    assert table_state(m) == before
    m2 = make_manager(max_recursion_depth=1)
    s2 = m2.create_session().id
    m2.increment_recursion_depth(s2)
    with pytest.raises(RecursionDepthExceeded), m2.call(s2):
        ran.append(2)
    assert ran == []
    assert status_of(m2, s2) == (0, 0, 1)


def test_call_on_bad_ids(make_manager) -> None:
    m = make_manager()
    with pytest.raises(SessionNotFound), m.call(gone_id(m)):
        pass
    with pytest.raises(InvalidSessionToken), m.call("nope"):
        pass
    with pytest.raises(TypeError), m.call(1.5):
        pass


def test_the_body_exception_wins_and_the_charge_is_recorded(
    clock, make_manager
) -> None:
    m = make_manager(token_budget=10)
    sid = m.create_session().id
    with pytest.raises(KeyError), m.call(sid) as c:
        c.tokens = 4
        clock.advance(ns=3 * MS)
        raise KeyError("body")
    assert status_of(m, sid) == (4, 3, 0)
    # An over-budget charge after a failing body: the body's error, and the
    # charge is kept.
    with pytest.raises(ZeroDivisionError), m.call(sid) as c:
        c.tokens = 20
        1 / 0  # noqa: B018
    assert status_of(m, sid) == (24, 3, 0)
    # Without a body error, end_call's error is raised.
    m.update_budget(sid, m.get_session(sid).budget_status.replace(tokens_used=0))
    with pytest.raises(TokenBudgetExceeded) as excinfo, m.call(sid) as c:
        c.tokens = 11
    assert (excinfo.value.used, excinfo.value.budget) == (11, 10)
    assert status_of(m, sid) == (11, 3, 0)


def test_the_body_exception_wins_over_a_session_that_died_inside(
    clock, make_manager
) -> None:
    m = make_manager()
    sid = m.create_session().id
    with pytest.raises(LookupError), m.call(sid) as c:
        c.tokens = 5
        m.destroy_session(sid)
        raise LookupError("body")
    other = m.create_session().id
    with pytest.raises(InvalidSessionState), m.call(other) as c:
        c.tokens = 5
        m.update_session_state(other, SessionState.TERMINATED)
    assert status_of(m, other) == (0, 0, 1)  # nothing recorded


def test_call_tokens_is_settable_and_invalid_tokens_raise_on_exit(
    clock, make_manager
) -> None:
    m = make_manager()
    sid = m.create_session().id
    with m.call(sid) as c:
        c.tokens = 1
        c.tokens += 2
        assert c.tokens == 3
    assert status_of(m, sid)[0] == 3
    with pytest.raises(ValueError), m.call(sid) as c:
        c.tokens = -1
    assert status_of(m, sid) == (3, 0, 1)  # refused whole: nothing, depth kept
    m.end_call(sid)
    with pytest.raises(TypeError), m.call(sid) as c:
        c.tokens = "many"
    assert status_of(m, sid) == (3, 0, 1)


# -- threads -------------------------------------------------------------------


@pytest.mark.parametrize("threads", [4])
def test_many_threads_calling_on_one_tree_give_exact_totals(
    threads, clock, make_manager
) -> None:
    rounds = 40
    m = make_manager(token_budget=10**9, time_budget_ms=10**9, max_recursion_depth=40)
    root = m.create_session().id
    a = m.create_child_session(root).id
    b = m.create_child_session(root).id
    a1 = m.create_child_session(a).id
    targets = [root, a, b, a1]
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            sid = targets[index % len(targets)]
            for i in range(rounds):
                if i % 2:
                    with m.call(sid) as c:
                        c.tokens = 3
                else:
                    m.begin_call(sid)
                    m.end_call(sid, tokens=2, elapsed_ms=5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    per_thread = (rounds // 2) * 3 + (rounds // 2) * 2
    time_per_thread = (rounds // 2) * 5
    own = {str(s): 0 for s in targets}
    for i in range(threads):
        own[str(targets[i % len(targets)])] += 1
    subtree = {
        str(root): own[str(root)] + own[str(a)] + own[str(b)] + own[str(a1)],
        str(a): own[str(a)] + own[str(a1)],
        str(b): own[str(b)],
        str(a1): own[str(a1)],
    }
    start = {str(root): 0, str(a): 1, str(b): 1, str(a1): 2}
    for s in targets:
        n = subtree[str(s)]
        assert status_of(m, s) == (n * per_thread, n * time_per_thread, start[str(s)])


def test_many_threads_on_one_session(clock, make_manager) -> None:
    threads, rounds = 4, 50
    m = make_manager(
        token_budget=10**9, time_budget_ms=10**9, max_recursion_depth=threads + 1
    )
    root = m.create_session().id
    sid = m.create_child_session(root).id
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                with m.call(sid) as c:
                    c.tokens = 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    assert status_of(m, sid) == (threads * rounds, 0, 1)
    assert status_of(m, root) == (threads * rounds, 0, 0)


def test_begin_call_admits_exactly_up_to_the_depth_limit_under_threads(make_manager) -> None:
    limit, threads = 5, 8
    m = make_manager(max_recursion_depth=limit)
    sid = m.create_session().id
    barrier = threading.Barrier(threads)
    results: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        try:
            m.begin_call(sid)
            result = "in"
        except RecursionDepthExceeded:
            result = "refused"
        with lock:
            results.append(result)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert sorted(results) == ["in"] * limit + ["refused"] * (threads - limit)
    assert status_of(m, sid) == (0, 0, limit)
    assert m.get_stats().rejected_depth == threads - limit
    for _ in range(limit):
        m.end_call(sid, tokens=1)
    assert status_of(m, sid) == (limit, 0, 0)
