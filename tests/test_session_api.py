"""SessionManager semantics, method by method (SPEC sections 3 and 10).

Run against both cores through the `core` fixture; time is a FakeClock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from conftest import table_state

from rlm_fast import (
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
    BudgetStatus,
    ConfigError,
    InvalidSessionState,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    RlmConfig,
    RlmError,
    SessionExpired,
    SessionInfo,
    SessionNotFound,
    SessionState,
    SessionStats,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

NS = 10**9
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def state_of(m):  # type: ignore[no-untyped-def]
    return table_state(m)


# Every write that follows the full order of checks, with valid arguments.
WRITES = [
    ("update_session_state", (SessionState.READY,)),
    ("validate_session", ()),
    ("extend_session", ()),
    ("assign_vm", ("vm-w",)),
    ("set_context_variable", ("k", "v")),
    ("delete_context_variable", ("k",)),
    ("update_budget", (BudgetStatus(),)),
    ("increment_recursion_depth", ()),
    ("decrement_recursion_depth", ()),
    ("record_snapshot_created", ("snap-w",)),
    ("record_snapshot_restored", ("snap-w",)),
    ("clear_snapshot_tracking", ()),
    ("charge_tokens", (1,)),
    ("charge_time", (1,)),
    ("check_budget", ()),
]


# --------------------------------------------------------------------------
# order of checks
# --------------------------------------------------------------------------


def test_unknown_session_is_not_found_for_every_id_call(core, make_manager) -> None:
    m = make_manager()
    m.create_session()
    unknown = core.SessionId()
    before = state_of(m)
    for name, args in WRITES:
        with pytest.raises(SessionNotFound) as excinfo:
            getattr(m, name)(unknown, *args)
        assert str(excinfo.value.session_id) == str(unknown), name
    for name in (
        "get_session",
        "get_all_context_variables",
        "get_current_snapshot",
        "destroy_session",
        "release_vm",
    ):
        with pytest.raises(SessionNotFound):
            getattr(m, name)(unknown)
    with pytest.raises(SessionNotFound):
        m.get_context_variable(unknown, "k")
    with pytest.raises(SessionNotFound):
        with m.recursion(unknown):
            pytest.fail("body must not run")
    # Lookups that answer None for an unknown session or VM, as in the crate.
    assert m.get_assigned_vm(unknown) is None
    assert m.get_session_for_vm("no-such-vm") is None
    assert m.is_session_valid(unknown) is False
    assert state_of(m) == before


def test_session_not_found_error_fields(core, make_manager) -> None:
    m = make_manager()
    unknown = core.SessionId()
    with pytest.raises(SessionNotFound) as excinfo:
        m.get_session(unknown)
    err = excinfo.value
    assert isinstance(err, LookupError)
    assert isinstance(err, RlmError)
    assert str(err) == f"Session not found: {unknown}"


def test_terminated_is_checked_before_expiry(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    s = m.create_session().id
    m.update_session_state(s, SessionState.TERMINATED)
    clock.advance(seconds=61)  # expired as well
    before = state_of(m)
    for name, args in WRITES:
        with pytest.raises(InvalidSessionState) as excinfo:
            getattr(m, name)(s, *args)
        assert str(excinfo.value.session_id) == str(s), name
    assert state_of(m) == before


def test_expiry_is_checked_before_the_calls_own_rule(clock, make_manager) -> None:
    m = make_manager(
        session_duration_secs=60,
        max_extensions=0,
        max_recursion_depth=0,
        max_snapshots_per_session=1,
        token_budget=5,
        time_budget_ms=5,
    )
    s = m.create_session().id
    m.record_snapshot_created(s, "snap-1")
    # While live, each call's own rule answers.
    with pytest.raises(MaxExtensionsReached):
        m.extend_session(s)
    with pytest.raises(RecursionDepthExceeded):
        m.increment_recursion_depth(s)
    with pytest.raises(MaxSnapshotsReached):
        m.record_snapshot_created(s, "snap-2")
    clock.advance(seconds=61)
    before = state_of(m)
    with pytest.raises(SessionExpired):
        m.extend_session(s)
    with pytest.raises(SessionExpired):
        m.increment_recursion_depth(s)
    with pytest.raises(SessionExpired):
        m.record_snapshot_created(s, "snap-2")
    with pytest.raises(SessionExpired):
        m.charge_tokens(s, 6)
    with pytest.raises(SessionExpired):
        m.charge_time(s, 6)
    assert state_of(m) == before
    assert m.get_session(s).budget_status.tokens_used == 0


def test_session_expired_error_fields(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    s = m.create_session().id
    clock.advance(seconds=61)
    with pytest.raises(SessionExpired) as excinfo:
        m.validate_session(s)
    assert str(excinfo.value.session_id) == str(s)
    assert str(excinfo.value) == f"Session expired: {s}"


# --------------------------------------------------------------------------
# read-only lookups, destroy and release on dead sessions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["terminated", "clock", "state_expired"])
def test_read_only_lookups_work_on_dead_sessions(how, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    m.set_context_variable(s, "b", "2")
    m.set_context_variable(s, "a", "1")
    m.record_snapshot_created(s, "snap-1", set_as_current=True)
    if how == "terminated":
        m.update_session_state(s, SessionState.TERMINATED)
    elif how == "state_expired":
        m.update_session_state(s, SessionState.EXPIRED)
    else:
        clock.advance(seconds=61)

    info = m.get_session(s)
    assert info.id == s
    assert info.vm_instance_id == "vm-1"
    assert m.get_assigned_vm(s) == "vm-1"
    assert m.get_session_for_vm("vm-1") == s
    assert m.get_context_variable(s, "a") == "1"
    assert m.get_all_context_variables(s) == {"a": "1", "b": "2"}
    assert m.get_current_snapshot(s) == "snap-1"
    assert [i.id for i in m.list_sessions()] == [s]
    assert m.is_session_valid(s) is False
    assert s in m


@pytest.mark.parametrize("how", ["terminated", "clock", "state_expired"])
def test_release_and_destroy_work_on_dead_sessions(how, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    if how == "terminated":
        m.update_session_state(s, SessionState.TERMINATED)
        # Terminating keeps the VM until it is released or destroyed.
        assert m.get_assigned_vm(s) == "vm-1"
        assert m.get_stats().sessions_with_vm == 1
    elif how == "state_expired":
        m.update_session_state(s, SessionState.EXPIRED)
    else:
        clock.advance(seconds=61)

    assert m.release_vm(s) == "vm-1"
    assert m.get_session_for_vm("vm-1") is None
    assert m.get_session(s).vm_instance_id is None
    assert m.get_stats().sessions_with_vm == 0
    assert m.release_vm(s) is None

    m.destroy_session(s)
    assert s not in m
    assert len(m) == 0
    assert m.get_stats().total_sessions_destroyed == 1


# --------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------


def test_update_session_state_accepts_members_and_values(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_session_state(s, SessionState.EXECUTING)
    assert m.get_session(s).state is SessionState.EXECUTING
    m.update_session_state(s, "Paused")
    assert m.get_session(s).state is SessionState.PAUSED
    m.update_session_state(s, "Initializing")
    assert m.get_session(s).state is SessionState.INITIALIZING
    m.update_session_state(s, SessionState.TERMINATED)
    assert m.get_session(s).state is SessionState.TERMINATED
    for target in list(SessionState) + [s.value for s in SessionState]:
        with pytest.raises(InvalidSessionState) as excinfo:
            m.update_session_state(s, target)
        assert str(excinfo.value.session_id) == str(s)
    assert m.get_session(s).state is SessionState.TERMINATED


def test_validate_session(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    s = m.create_session().id
    assert m.validate_session(s) == m.get_session(s)
    m.update_session_state(s, SessionState.PAUSED)
    assert m.validate_session(s).state is SessionState.PAUSED
    m.update_session_state(s, SessionState.EXPIRED)
    with pytest.raises(SessionExpired):
        m.validate_session(s)
    t = m.create_session().id
    m.update_session_state(t, SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState):
        m.validate_session(t)
    assert m.is_session_valid(t) is False


def test_assign_vm_sets_ready(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_session_state(s, SessionState.PAUSED)
    m.assign_vm(s, "vm-1")
    info = m.get_session(s)
    assert info.state is SessionState.READY
    assert info.vm_instance_id == "vm-1"


def test_release_vm(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    t = m.create_session().id
    assert m.release_vm(s) is None
    m.assign_vm(s, "vm-1")
    m.assign_vm(t, "vm-2")
    assert m.release_vm(s) == "vm-1"
    assert m.get_assigned_vm(s) is None
    assert m.get_session_for_vm("vm-1") is None
    assert m.get_session_for_vm("vm-2") == t
    assert m.get_stats().sessions_with_vm == 1
    # The released VM can go to another session.
    m.assign_vm(t, "vm-1")
    assert m.get_session_for_vm("vm-2") is None
    assert m.get_session_for_vm("vm-1") == t


# --------------------------------------------------------------------------
# budgets
# --------------------------------------------------------------------------


def test_budgets_come_from_the_config(make_manager) -> None:
    m = make_manager(token_budget=500, time_budget_ms=600, max_recursion_depth=4)
    info = m.create_session()
    assert info.budget_status == BudgetStatus(500, 0, 600, 0, 4, 0)


def test_charge_tokens(make_manager) -> None:
    m = make_manager(token_budget=100)
    s = m.create_session().id
    assert m.charge_tokens(s, 0) == 0
    assert m.charge_tokens(s, 40) == 40
    assert m.charge_tokens(s, 60) == 100  # at the budget: not above it
    assert m.get_session(s).budget_status.tokens_used == 100
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(s, 5)
    err = excinfo.value
    assert (err.used, err.budget) == (105, 100)
    assert str(err) == "Token budget exceeded: used 105 of 100 tokens"
    assert m.get_session(s).budget_status.tokens_used == 105  # it was spent


def test_charge_time(make_manager) -> None:
    m = make_manager(time_budget_ms=1000)
    s = m.create_session().id
    assert m.charge_time(s, 999) == 999
    assert m.charge_time(s, 1) == 1000
    with pytest.raises(TimeBudgetExceeded) as excinfo:
        m.charge_time(s, 250)
    err = excinfo.value
    assert (err.used_ms, err.budget_ms) == (1250, 1000)
    assert str(err) == "Time budget exceeded: used 1250ms of 1000ms"
    info = m.get_session(s)
    assert info.budget_status.time_used_ms == 1250
    assert info.budget_status.tokens_used == 0


def test_charge_past_u64_is_refused_whole(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_budget(s, BudgetStatus(token_budget=U64_MAX, time_budget_ms=U64_MAX))
    assert m.charge_tokens(s, U64_MAX - 1) == U64_MAX - 1
    assert m.charge_time(s, U64_MAX) == U64_MAX
    before = state_of(m)
    with pytest.raises(ValueError):
        m.charge_tokens(s, 2)
    with pytest.raises(ValueError):
        m.charge_time(s, 1)
    assert state_of(m) == before
    assert m.charge_tokens(s, 1) == U64_MAX  # exactly the top still fits


def test_check_budget_order(make_manager) -> None:
    m = make_manager(token_budget=10, time_budget_ms=10, max_recursion_depth=3)
    s = m.create_session().id
    assert m.check_budget(s) == BudgetStatus(10, 0, 10, 0, 3, 0)

    m.update_budget(s, BudgetStatus(10, 10, 10, 10, 2, 3))
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.check_budget(s)
    assert (tok.value.used, tok.value.budget) == (10, 10)

    m.update_budget(s, BudgetStatus(10, 9, 10, 10, 2, 3))
    with pytest.raises(TimeBudgetExceeded) as tim:
        m.check_budget(s)
    assert (tim.value.used_ms, tim.value.budget_ms) == (10, 10)

    m.update_budget(s, BudgetStatus(10, 9, 10, 9, 2, 3))
    with pytest.raises(RecursionDepthExceeded) as dep:
        m.check_budget(s)
    assert (dep.value.depth, dep.value.max_depth) == (3, 2)

    m.update_budget(s, BudgetStatus(10, 9, 10, 9, 3, 3))
    assert m.check_budget(s) == BudgetStatus(10, 9, 10, 9, 3, 3)
    assert m.get_session(s).budget_status == BudgetStatus(10, 9, 10, 9, 3, 3)


def test_update_budget_takes_the_status_whole(make_manager) -> None:
    m = make_manager(token_budget=10)
    s = m.create_session().id
    status = BudgetStatus(
        token_budget=1000,
        tokens_used=7,
        time_budget_ms=2000,
        time_used_ms=8,
        max_recursion_depth=6,
        current_recursion_depth=2,
    )
    assert m.update_budget(s, status) is None
    info = m.get_session(s)
    assert info.budget_status == status
    assert info.recursion_depth == 2
    assert m.charge_tokens(s, 500) == 507  # the new budget applies
    with pytest.raises(TypeError):
        m.update_budget(s, {"token_budget": 5})
    with pytest.raises(TypeError):
        m.update_budget(s, None)
    assert m.get_session(s).budget_status.token_budget == 1000


# --------------------------------------------------------------------------
# recursion depth
# --------------------------------------------------------------------------


def test_increment_beyond_max_changes_nothing(make_manager) -> None:
    m = make_manager(max_recursion_depth=2)
    s = m.create_session().id
    assert m.increment_recursion_depth(s) == 1
    assert m.increment_recursion_depth(s) == 2
    before = state_of(m)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(s)
    err = excinfo.value
    assert (err.depth, err.max_depth) == (3, 2)
    assert str(err) == "Recursion depth limit exceeded: 3 >= 2"
    assert state_of(m) == before


def test_decrement_saturates_at_zero(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    assert m.decrement_recursion_depth(s) == 0
    assert m.increment_recursion_depth(s) == 1
    assert m.decrement_recursion_depth(s) == 0
    assert m.decrement_recursion_depth(s) == 0
    info = m.get_session(s)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (0, 0)


def test_recursion_context_manager(make_manager) -> None:
    m = make_manager(max_recursion_depth=2)
    s = m.create_session().id
    with m.recursion(s) as depth:
        assert depth == 1
        assert m.get_session(s).recursion_depth == 1
        with m.recursion(s) as inner:
            assert inner == 2
            ran = False
            with pytest.raises(RecursionDepthExceeded):
                with m.recursion(s):
                    ran = True
            assert ran is False
            assert m.get_session(s).recursion_depth == 2
        assert m.get_session(s).recursion_depth == 1
    assert m.get_session(s).recursion_depth == 0

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with m.recursion(s):
            raise Boom
    info = m.get_session(s)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (0, 0)


@pytest.mark.parametrize("how", ["destroyed", "terminated", "clock", "state_expired"])
def test_recursion_exit_never_raises_for_a_dead_session(how, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)

    def kill(sid) -> None:  # type: ignore[no-untyped-def]
        if how == "destroyed":
            m.destroy_session(sid)
        elif how == "terminated":
            m.update_session_state(sid, SessionState.TERMINATED)
        elif how == "state_expired":
            m.update_session_state(sid, SessionState.EXPIRED)
        else:
            clock.advance(seconds=61)

    s = m.create_session().id
    m.increment_recursion_depth(s)
    with m.recursion(s) as depth:
        assert depth == 2
        kill(s)
    if how == "destroyed":
        assert s not in m
    else:
        # The session still exists: its depth went back down.
        info = m.get_session(s)
        assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (1, 1)

    # A body exception is the one that comes out.
    t = m.create_session().id
    with pytest.raises(KeyError):
        with m.recursion(t):
            kill(t)
            raise KeyError("body")
    if how != "destroyed":
        assert m.get_session(t).recursion_depth == 0


def test_recursion_entry_on_terminated_raises(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_session_state(s, SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState):
        with m.recursion(s):
            pytest.fail("body must not run")
    assert m.get_session(s).recursion_depth == 0


def test_recursion_exit_does_not_wrap_below_zero(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    with m.recursion(s) as depth:
        assert depth == 1
        m.update_budget(s, BudgetStatus(current_recursion_depth=0))
    info = m.get_session(s)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (0, 0)


def test_increment_at_the_top_of_u64(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_budget(s, BudgetStatus(max_recursion_depth=2**32 - 1, current_recursion_depth=2**32 - 1))
    before = state_of(m)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(s)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (2**32, 2**32 - 1)
    assert state_of(m) == before
    assert m.decrement_recursion_depth(s) == 2**32 - 2


# --------------------------------------------------------------------------
# snapshots
# --------------------------------------------------------------------------


def test_snapshots_limit(make_manager) -> None:
    m = make_manager(max_snapshots_per_session=2)
    s = m.create_session().id
    m.record_snapshot_created(s, "snap-1")
    assert m.get_current_snapshot(s) is None  # set_as_current defaults to False
    m.record_snapshot_created(s, "snap-2", set_as_current=True)
    before = state_of(m)
    with pytest.raises(MaxSnapshotsReached) as excinfo:
        m.record_snapshot_created(s, "snap-3", set_as_current=True)
    assert excinfo.value.max == 2
    assert str(excinfo.value) == "Maximum snapshots (2) reached for session"
    assert state_of(m) == before
    info = m.get_session(s)
    assert (info.snapshot_count, info.current_snapshot_id) == (2, "snap-2")

    m.record_snapshot_restored(s, "snap-1")
    info = m.get_session(s)
    assert (info.snapshot_count, info.current_snapshot_id) == (2, "snap-1")
    assert m.get_current_snapshot(s) == "snap-1"

    m.clear_snapshot_tracking(s)
    info = m.get_session(s)
    assert (info.snapshot_count, info.current_snapshot_id) == (0, None)
    # After a clear, the count starts again.
    m.record_snapshot_created(s, "snap-4", True)
    m.record_snapshot_created(s, "snap-5", False)
    info = m.get_session(s)
    assert (info.snapshot_count, info.current_snapshot_id) == (2, "snap-4")


def test_snapshots_zero_means_unlimited(make_manager) -> None:
    m = make_manager(max_snapshots_per_session=0)
    s = m.create_session().id
    for i in range(25):
        m.record_snapshot_created(s, f"snap-{i}", set_as_current=(i % 2 == 0))
    info = m.get_session(s)
    assert (info.snapshot_count, info.current_snapshot_id) == (25, "snap-24")


# --------------------------------------------------------------------------
# expiry, extension, cleanup
# --------------------------------------------------------------------------


def test_expiry_boundary(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    info = m.create_session()
    s = info.id
    clock.now = info.expires_at_ns  # now == expires_at: not expired
    assert m.is_session_valid(s) is True
    assert m.validate_session(s).id == s
    assert info.is_expired(clock.now) is False
    assert m.cleanup_expired_sessions() == []
    clock.advance(ns=1)  # now > expires_at
    assert m.is_session_valid(s) is False
    assert info.is_expired(clock.now) is True
    with pytest.raises(SessionExpired):
        m.validate_session(s)
    assert m.cleanup_expired_sessions() == [s]
    assert s not in m


def test_expired_sessions_stay_until_cleanup(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    ids = [m.create_session().id for _ in range(3)]
    clock.advance(seconds=61)
    assert len(m) == 3
    assert sorted(i.id for i in m.list_sessions()) == sorted(ids)
    assert m.get_stats().active_sessions == 3
    assert all(sid in m for sid in ids)
    assert sorted(m.cleanup_expired_sessions(), key=int) == sorted(ids, key=int)
    assert len(m) == 0
    assert m.get_stats().active_sessions == 0
    assert m.get_stats().total_sessions_expired == 3


def test_cleanup_is_by_time_only(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    by_state = m.create_session().id
    term = m.create_session().id
    m.update_session_state(by_state, SessionState.EXPIRED)
    m.update_session_state(term, SessionState.TERMINATED)
    assert m.cleanup_expired_sessions() == []
    assert len(m) == 2
    clock.advance(seconds=61)
    assert sorted(m.cleanup_expired_sessions(), key=int) == sorted([by_state, term], key=int)
    assert len(m) == 0


def test_extension_moves_expiry_and_revives_nothing(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60, extension_increment_secs=30, max_extensions=2)
    info = m.create_session()
    clock.advance(seconds=50)
    extended = m.extend_session(info.id)
    assert extended.expires_at_ns == info.expires_at_ns + 30 * NS
    assert extended.extension_count == 1
    assert extended == m.get_session(info.id)
    assert extended.can_extend(2) is True
    clock.advance(seconds=35)  # past the original expiry, not the extended one
    assert m.is_session_valid(info.id) is True
    assert m.cleanup_expired_sessions() == []
    clock.advance(seconds=6)  # past the extended expiry
    with pytest.raises(SessionExpired):
        m.extend_session(info.id)
    assert m.get_session(info.id).extension_count == 1


def test_extension_to_exactly_int64_max_then_overflow(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60, extension_increment_secs=30, max_extensions=3)
    clock.now = I64_MAX - 90 * NS
    info = m.create_session()
    assert m.extend_session(info.id).expires_at_ns == I64_MAX
    before = state_of(m)
    with pytest.raises(ConfigError):
        m.extend_session(info.id)
    assert state_of(m) == before


def test_create_with_expiry_past_int64_is_refused(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    clock.now = I64_MAX - 60 * NS + 1
    with pytest.raises(ConfigError):
        m.create_session()
    assert len(m) == 0
    assert m.get_stats() == SessionStats(0, 0, 0, 0, 0)
    clock.now = I64_MAX - 60 * NS
    assert m.create_session().expires_at_ns == I64_MAX


# --------------------------------------------------------------------------
# SessionInfo
# --------------------------------------------------------------------------


def test_session_info_is_an_immutable_snapshot(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.set_context_variable(s, "k", "v1")
    snap = m.get_session(s)
    same = m.get_session(s)
    assert snap == same

    m.set_context_variable(s, "k", "v2")
    m.set_context_variable(s, "k2", "x")
    m.assign_vm(s, "vm-1")
    m.increment_recursion_depth(s)
    m.charge_tokens(s, 3)
    m.record_snapshot_created(s, "snap", True)
    m.extend_session(s)

    assert dict(snap.context_variables) == {"k": "v1"}
    assert snap.state is SessionState.INITIALIZING
    assert snap.vm_instance_id is None
    assert snap.recursion_depth == 0
    assert snap.budget_status.tokens_used == 0
    assert snap.current_snapshot_id is None
    assert snap.snapshot_count == 0
    assert snap.extension_count == 0
    assert snap == same
    assert snap != m.get_session(s)

    with pytest.raises(AttributeError):
        snap.state = SessionState.READY  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.context_variables["k"] = "x"  # type: ignore[index]

    # A dict returned by the manager is the caller's own copy.
    got = m.get_all_context_variables(s)
    got["k"] = "changed"
    got["new"] = "x"
    assert m.get_all_context_variables(s) == {"k": "v2", "k2": "x"}


def test_session_info_datetimes(core, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=3600)
    clock.now = 1_767_225_600 * NS + 123_456_789  # 2026-01-01T00:00:00.123456789Z
    info = m.create_session()
    assert isinstance(info, core.SessionInfo)
    assert info.created_at_ns == clock.now
    assert info.expires_at_ns == clock.now + 3600 * NS
    for value in (info.created_at, info.expires_at):
        assert value.tzinfo is not None
        assert value.utcoffset() == dt.timedelta(0)
    assert info.created_at == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert info.expires_at == dt.datetime(2026, 1, 1, 1, 0, 0, 123456, tzinfo=UTC)
    # The manager's clock stamps the ULID time of the ids it makes.
    assert info.id.timestamp_ms == clock.now // 10**6


# --------------------------------------------------------------------------
# stats, listing, context variables, len / in
# --------------------------------------------------------------------------


def test_get_stats_fields(core, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    assert m.get_stats() == SessionStats(0, 0, 0, 0, 0)
    a, b, c, d = (m.create_session().id for _ in range(4))
    m.assign_vm(a, "vm-a")
    m.assign_vm(b, "vm-b")
    m.destroy_session(c)
    stats = m.get_stats()
    assert isinstance(stats, core.SessionStats)
    assert stats.total_sessions_created == 4
    assert stats.active_sessions == 3
    assert stats.sessions_with_vm == 2
    assert stats.total_sessions_destroyed == 1
    assert stats.total_sessions_expired == 0
    clock.advance(seconds=61)
    m.cleanup_expired_sessions()
    assert m.get_stats() == SessionStats(
        total_sessions_created=4,
        active_sessions=0,
        sessions_with_vm=0,
        total_sessions_destroyed=1,
        total_sessions_expired=3,
    )


def test_list_sessions_and_cleanup_are_in_id_order(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    ids = []
    for _ in range(20):  # same millisecond: order is decided by the random bits
        ids.append(m.create_session().id)
    clock.advance(ns=3 * 10**6)
    for _ in range(5):
        ids.append(m.create_session().id)
    ordered = sorted(ids, key=int)
    assert [i.id for i in m.list_sessions()] == ordered
    assert sorted(ordered) == ordered  # ids order like their integers
    clock.advance(seconds=61)
    assert m.cleanup_expired_sessions() == ordered


def test_context_variables(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    for key in ("zeta", "alpha", "mid", "Beta", ""):
        m.set_context_variable(s, key, key.upper() or "empty")
    m.set_context_variable(s, "mid", "overwritten")
    expected_keys = sorted(["zeta", "alpha", "mid", "Beta", ""])
    got = m.get_all_context_variables(s)
    assert isinstance(got, dict)
    assert list(got) == expected_keys
    assert list(m.get_session(s).context_variables) == expected_keys
    assert got["mid"] == "overwritten"
    assert got[""] == "empty"
    assert m.get_context_variable(s, "alpha") == "ALPHA"
    assert m.delete_context_variable(s, "alpha") == "ALPHA"
    assert m.delete_context_variable(s, "alpha") is None
    assert m.get_context_variable(s, "alpha") is None
    assert list(m.get_all_context_variables(s)) == ["", "Beta", "mid", "zeta"]
    # Non-ASCII survives the round trip.
    m.set_context_variable(s, "ключ", "значение ✓")
    assert m.get_context_variable(s, "ключ") == "значение ✓"


def test_strings_round_trip_exactly(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    keys = ["a", "\u00e9", "\U0001f600", "z", "\x7f", "\uffff", "k\x00x", "A"]
    for key in keys:
        m.set_context_variable(s, key, "v\x00" + key)
    got = m.get_all_context_variables(s)
    assert list(got) == sorted(keys)  # code point order
    assert got == {key: "v\x00" + key for key in keys}
    assert m.get_context_variable(s, "k\x00x") == "v\x00k\x00x"
    assert m.get_context_variable(s, "k") is None  # no truncation at NUL
    big = "x" * (1 << 20) + "\U0001f600"
    m.set_context_variable(s, "big", big)
    assert m.get_context_variable(s, "big") == big
    m.assign_vm(s, "vm\x00a")
    assert m.get_session_for_vm("vm\x00a") == s
    assert m.get_session_for_vm("vm") is None
    assert m.get_assigned_vm(s) == "vm\x00a"
    m.record_snapshot_created(s, "snap\x00\U0001f600", set_as_current=True)
    assert m.get_current_snapshot(s) == "snap\x00\U0001f600"


def test_invalid_session_state_fields(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    m.update_session_state(s, SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState) as excinfo:
        m.assign_vm(s, "vm-1")
    err = excinfo.value
    assert str(err.session_id) == str(s)
    assert err.state == "Terminated"
    assert str(err) == (
        f"Session {s} is in invalid state Terminated for operation {err.operation}"
    )


def test_len_and_contains(core, make_manager) -> None:
    m = make_manager()
    assert len(m) == 0
    s = m.create_session().id
    t = m.create_session().id
    assert len(m) == 2
    for form in (s, str(s), str(s).lower()):
        assert form in m
    assert core.SessionId() not in m
    for junk in ("", "garbage", "I" * 26, "8" + "0" * 25, 123, None, b"x", 1.5, object()):
        assert (junk in m) is False
    m.destroy_session(t)
    assert t not in m
    assert str(t) not in m
    assert len(m) == 1


@pytest.mark.parametrize("form", ["sid", "upper", "lower"])
def test_every_method_accepts_id_or_string(form, core, make_manager) -> None:
    m = make_manager(max_recursion_depth=5)
    sid = m.create_session().id
    x = {"sid": sid, "upper": str(sid), "lower": str(sid).lower()}[form]

    assert x in m
    assert m.get_session(x).id == sid
    m.update_session_state(x, SessionState.EXECUTING)
    assert m.is_session_valid(x) is True
    assert m.validate_session(x).state is SessionState.EXECUTING
    assert m.extend_session(x).extension_count == 1
    m.assign_vm(x, "vm-1")
    assert m.get_assigned_vm(x) == "vm-1"
    found = m.get_session_for_vm("vm-1")
    assert isinstance(found, core.SessionId)
    assert found == sid
    m.set_context_variable(x, "k", "v")
    assert m.get_context_variable(x, "k") == "v"
    assert m.get_all_context_variables(x) == {"k": "v"}
    assert m.delete_context_variable(x, "k") == "v"
    m.update_budget(x, BudgetStatus(max_recursion_depth=5))
    assert m.increment_recursion_depth(x) == 1
    assert m.decrement_recursion_depth(x) == 0
    with m.recursion(x) as depth:
        assert depth == 1
    m.record_snapshot_created(x, "snap", True)
    m.record_snapshot_restored(x, "snap-0")
    assert m.get_current_snapshot(x) == "snap-0"
    m.clear_snapshot_tracking(x)
    assert m.charge_tokens(x, 3) == 3
    assert m.charge_time(x, 4) == 4
    assert m.check_budget(x).tokens_used == 3
    assert m.release_vm(x) == "vm-1"
    m.destroy_session(x)
    assert x not in m
    assert len(m) == 0


# --------------------------------------------------------------------------
# the clock
# --------------------------------------------------------------------------


_OK = object()


class ToggleClock:
    """A clock that can be told to raise or to return garbage."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns
        self.bad: object = _OK

    def __call__(self) -> object:
        if isinstance(self.bad, BaseException):
            raise self.bad
        if self.bad is not _OK:
            return self.bad
        return self.now


class ClockBroke(Exception):
    pass


CLOCK_CALLS = [
    ("create_session", lambda m, s: m.create_session()),
    ("extend_session", lambda m, s: m.extend_session(s)),
    ("validate_session", lambda m, s: m.validate_session(s)),
    ("is_session_valid", lambda m, s: m.is_session_valid(s)),
    ("assign_vm", lambda m, s: m.assign_vm(s, "vm-2")),
    ("set_context_variable", lambda m, s: m.set_context_variable(s, "k", "v2")),
    ("charge_tokens", lambda m, s: m.charge_tokens(s, 1)),
    ("increment_recursion_depth", lambda m, s: m.increment_recursion_depth(s)),
    ("record_snapshot_created", lambda m, s: m.record_snapshot_created(s, "x", True)),
    ("cleanup_expired_sessions", lambda m, s: m.cleanup_expired_sessions()),
]


@pytest.mark.parametrize("name,call", CLOCK_CALLS, ids=[c[0] for c in CLOCK_CALLS])
def test_a_raising_clock_lets_its_exception_through(name, call, core) -> None:
    tc = ToggleClock(1_767_225_600 * NS)
    m = core.SessionManager(RlmConfig(session_duration_secs=60), clock=tc)
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    m.set_context_variable(s, "k", "v")
    tc.now += 61 * NS  # expired, so that cleanup would remove it
    before = state_of(m)
    tc.bad = ClockBroke("clock down")
    with pytest.raises(ClockBroke):
        call(m, s)
    tc.bad = _OK
    assert state_of(m) == before


@pytest.mark.parametrize("bad", [1.767e18, "1767225600000000000", None, True])
@pytest.mark.parametrize("name,call", CLOCK_CALLS, ids=[c[0] for c in CLOCK_CALLS])
def test_a_clock_returning_a_non_int_is_a_type_error(name, call, bad, core) -> None:
    tc = ToggleClock(1_767_225_600 * NS)
    m = core.SessionManager(RlmConfig(session_duration_secs=60), clock=tc)
    s = m.create_session().id
    before = state_of(m)
    tc.bad = bad
    with pytest.raises(TypeError):
        call(m, s)
    tc.bad = _OK
    assert state_of(m) == before


# --------------------------------------------------------------------------
# construction and config
# --------------------------------------------------------------------------


def test_default_config(core) -> None:
    m = core.SessionManager()
    info = m.create_session()
    assert info.expires_at_ns - info.created_at_ns == 1800 * NS  # the crate's default
    assert info.budget_status == BudgetStatus(
        DEFAULT_TOKEN_BUDGET, 0, DEFAULT_TIME_BUDGET_MS, 0, DEFAULT_MAX_RECURSION_DEPTH, 0
    )
    assert core.SessionManager(None).create_session().budget_status == info.budget_status


def test_the_manager_copies_its_config(core, clock) -> None:
    cfg = RlmConfig(
        session_duration_secs=60,
        token_budget=500,
        max_extensions=1,
        max_snapshots_per_session=1,
        max_recursion_depth=2,
    )
    m = core.SessionManager(cfg, clock=clock)
    cfg.session_duration_secs = 1
    cfg.token_budget = 7
    cfg.max_extensions = 10
    cfg.max_snapshots_per_session = 10
    cfg.max_recursion_depth = 10
    info = m.create_session()
    assert info.expires_at_ns - info.created_at_ns == 60 * NS
    assert info.budget_status.token_budget == 500
    assert info.budget_status.max_recursion_depth == 2
    m.extend_session(info.id)
    with pytest.raises(MaxExtensionsReached):
        m.extend_session(info.id)
    m.record_snapshot_created(info.id, "a")
    with pytest.raises(MaxSnapshotsReached):
        m.record_snapshot_created(info.id, "b")


def test_the_constructor_validates_the_config(core) -> None:
    with pytest.raises(ConfigError):
        core.SessionManager(RlmConfig(pool_min_size=10, pool_max_size=5))
    with pytest.raises(ConfigError):
        core.SessionManager(dataclasses.replace(RlmConfig(), backend_preference=[]))
    with pytest.raises(ConfigError):
        core.SessionManager(RlmConfig(token_budget=-1))
    with pytest.raises(ConfigError):
        core.SessionManager(RlmConfig(session_duration_secs=-5))


@pytest.mark.parametrize("bad", ["config", {"token_budget": 5}, 42, RlmConfig])
def test_the_constructor_rejects_a_non_config(bad, core) -> None:
    with pytest.raises(TypeError):
        core.SessionManager(bad)


def test_a_clock_that_is_not_callable_is_a_type_error(core) -> None:
    with pytest.raises(TypeError):
        # Refused at construction or, at the latest, at the first reading.
        core.SessionManager(RlmConfig(), clock=12345).create_session()


def test_the_other_cores_session_id_is_accepted(core, make_manager) -> None:
    # Both cores can be loaded in one process (this suite, or a pickle read
    # as rlm_fast.SessionId): an id of the other core names the same session.
    from conftest import C, PY

    # The core whose ids are not the ones this manager returns (for Redis:
    # whichever core is not rlm_fast's).
    other = next((c for c in (PY, C) if c is not None and c.SessionId is not core.SessionId), None)
    if other is None:
        pytest.skip("only one core is built")
    m = make_manager()
    sid = m.create_session().id
    foreign = other.SessionId.from_int(int(sid))
    assert type(foreign) is not type(sid)
    assert m.get_session(foreign).id == sid
    assert m.is_session_valid(foreign) is True
    assert foreign in m
    assert other.SessionId.from_int(int(sid) ^ 1) not in m


@pytest.mark.parametrize("increment", [0, 7])
def test_cleanup_after_churn_removes_exactly_the_due(core, clock, make_manager, increment) -> None:
    # The compiled core finds due sessions through an expiry heap with stale
    # entries (destroyed or extended sessions): cleanup must still remove
    # exactly the sessions with expires_at < now, whatever happened before.
    import random

    rng = random.Random(increment)
    m = make_manager(session_duration_secs=60, extension_increment_secs=increment, max_extensions=3)
    live: list = []
    for step in range(3000):
        clock.advance(seconds=rng.random() / 10)
        roll = rng.random()
        if roll < 0.5 or not live:
            live.append(m.create_session().id)
        elif roll < 0.7:
            m.destroy_session(live.pop(rng.randrange(len(live))))
        elif roll < 0.9:
            sid = live[rng.randrange(len(live))]
            if m.is_session_valid(sid) and m.get_session(sid).extension_count < 3:
                m.extend_session(sid)
        else:
            now = clock.now
            due = sorted(i.id for i in m.list_sessions() if i.expires_at_ns < now)
            assert m.cleanup_expired_sessions() == due, step
            gone = set(due)
            live = [s for s in live if s not in gone]
    for _ in range(3000):  # stale entries pile up (and get purged)
        m.destroy_session(m.create_session().id)
    now = clock.now
    due = sorted(i.id for i in m.list_sessions() if i.expires_at_ns < now)
    assert due and m.cleanup_expired_sessions() == due
    clock.advance(seconds=10_000)
    live = [s for s in live if s in m]
    assert sorted(m.cleanup_expired_sessions()) == sorted(live)
    assert len(m) == 0 and m.get_stats().active_sessions == 0
