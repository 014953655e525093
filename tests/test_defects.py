"""SPEC section 4: the reference design's defects, one test each.

Defects 5 (check-then-act races) and 6 (counters under concurrency) are
exercised with threads in test_threads.py; here defect 6 is checked at rest.
Defect 9 is BudgetTracker's and is covered by its own test module.
"""

from __future__ import annotations

import pytest
from conftest import table_state

from rlm_fast import (
    BudgetStatus,
    ConfigError,
    InvalidSessionState,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    SessionExpired,
    SessionNotFound,
    SessionState,
    TokenBudgetExceeded,
)

NS = 10**9
I64_MAX = 2**63 - 1


def assert_vm_maps_consistent(m, vms) -> None:  # type: ignore[no-untyped-def]
    """The VM map and every SessionInfo.vm_instance_id are exact inverses."""
    infos = m.list_sessions()
    holders = {}
    for info in infos:
        assert m.get_assigned_vm(info.id) == info.vm_instance_id
        if info.vm_instance_id is not None:
            assert info.vm_instance_id not in holders, "one VM held by two sessions"
            holders[info.vm_instance_id] = info.id
    for vm in vms:
        owner = m.get_session_for_vm(vm)
        if vm in holders:
            assert owner == holders[vm]
        else:
            assert owner is None
    assert m.get_stats().sessions_with_vm == len(holders)


def state_of(m):  # type: ignore[no-untyped-def]
    return table_state(m)


# --------------------------------------------------------------------------
# 1. VM moves keep both maps exact inverses
# --------------------------------------------------------------------------


def test_defect_1_vm_moves_keep_maps_inverse(make_manager) -> None:
    m = make_manager()
    s = m.create_session().id
    t = m.create_session().id
    vms = ["vm-a", "vm-b"]

    # A session moves to a new VM: the old VM is free again.
    m.assign_vm(s, "vm-a")
    m.assign_vm(s, "vm-b")
    assert m.get_session_for_vm("vm-a") is None
    assert m.get_session_for_vm("vm-b") == s
    assert m.get_assigned_vm(s) == "vm-b"
    assert m.get_stats().sessions_with_vm == 1
    assert_vm_maps_consistent(m, vms)

    # A VM moves to a new session: the old session no longer holds it, and
    # keeps its state.
    m.update_session_state(s, SessionState.EXECUTING)
    m.assign_vm(t, "vm-b")
    assert m.get_session_for_vm("vm-b") == t
    assert m.get_assigned_vm(s) is None
    info_s = m.get_session(s)
    assert info_s.vm_instance_id is None
    assert info_s.state is SessionState.EXECUTING
    info_t = m.get_session(t)
    assert info_t.vm_instance_id == "vm-b"
    assert info_t.state is SessionState.READY
    assert m.get_stats().sessions_with_vm == 1
    assert_vm_maps_consistent(m, vms)

    # Re-assigning a session its own VM changes nothing but the state.
    m.assign_vm(t, "vm-b")
    assert m.get_session_for_vm("vm-b") == t
    assert m.get_stats().sessions_with_vm == 1
    assert_vm_maps_consistent(m, vms)


# --------------------------------------------------------------------------
# 2. Destroy and cleanup remove only the removed session's mappings
# --------------------------------------------------------------------------


def test_defect_2_destroy_and_cleanup_spare_other_sessions_mappings(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=3600)
    vms = ["vm-a", "vm-b"]

    # destroy: S held vm-a, T took it; destroying S must leave vm-a -> T.
    s = m.create_session().id
    t = m.create_session().id
    m.assign_vm(s, "vm-a")
    m.assign_vm(t, "vm-a")
    m.destroy_session(s)
    assert m.get_session_for_vm("vm-a") == t
    assert m.get_assigned_vm(t) == "vm-a"
    assert m.get_session(t).vm_instance_id == "vm-a"
    assert_vm_maps_consistent(m, vms)

    # cleanup: an old session held vm-b, a young one took it; cleaning up
    # the old one must leave vm-b -> young.
    old = m.create_session().id
    m.assign_vm(old, "vm-b")
    clock.advance(seconds=1800)
    young = m.create_session().id
    m.assign_vm(young, "vm-b")
    clock.advance(seconds=1800, ns=1)  # `old` (and t) are past their expiry
    removed = m.cleanup_expired_sessions()
    assert sorted(removed, key=int) == sorted([t, old], key=int)
    assert m.get_session_for_vm("vm-b") == young
    assert m.get_assigned_vm(young) == "vm-b"
    assert m.get_session_for_vm("vm-a") is None  # t's own VM did go
    assert_vm_maps_consistent(m, vms)
    assert m.get_stats().sessions_with_vm == 1


# --------------------------------------------------------------------------
# 3. A call that raises changes nothing
# --------------------------------------------------------------------------


def test_defect_3_a_failing_call_changes_nothing(core, clock, make_manager) -> None:
    m = make_manager(
        max_extensions=1, max_recursion_depth=1, max_snapshots_per_session=1, token_budget=10
    )
    s = m.create_session().id
    t = m.create_session().id
    m.assign_vm(s, "vm-a")
    m.update_session_state(s, "Executing")
    m.update_session_state(t, SessionState.TERMINATED)
    unknown = core.SessionId()

    before = state_of(m)
    # The crate strips vm-a from S before finding out the target is unknown.
    with pytest.raises(SessionNotFound):
        m.assign_vm(unknown, "vm-a")
    assert state_of(m) == before
    assert m.get_session_for_vm("vm-a") == s
    with pytest.raises(InvalidSessionState):
        m.assign_vm(t, "vm-a")
    assert state_of(m) == before
    assert m.get_assigned_vm(s) == "vm-a"

    # Each call's own rule: refused whole.
    m.extend_session(s)
    m.increment_recursion_depth(s)
    m.record_snapshot_created(s, "snap-1", set_as_current=True)
    before = state_of(m)
    with pytest.raises(MaxExtensionsReached):
        m.extend_session(s)
    with pytest.raises(RecursionDepthExceeded):
        m.increment_recursion_depth(s)
    with pytest.raises(MaxSnapshotsReached):
        m.record_snapshot_created(s, "snap-2", set_as_current=True)
    assert state_of(m) == before
    assert m.get_current_snapshot(s) == "snap-1"

    # The one exception by design: an over-budget charge is kept, then raised.
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(s, 11)
    assert (excinfo.value.used, excinfo.value.budget) == (11, 10)
    assert m.get_session(s).budget_status.tokens_used == 11

    # A charge that would wrap is refused whole.
    with pytest.raises(ValueError):
        m.charge_tokens(s, 2**64 - 11)
    assert m.get_session(s).budget_status.tokens_used == 11


# --------------------------------------------------------------------------
# 4. TERMINATED is final; writes on terminated/expired sessions raise
# --------------------------------------------------------------------------

WRITES = [
    ("assign_vm", ("vm-x",)),
    ("extend_session", ()),
    ("set_context_variable", ("k", "v")),
    ("delete_context_variable", ("k",)),
    ("update_budget", (BudgetStatus(),)),
    ("increment_recursion_depth", ()),
    ("decrement_recursion_depth", ()),
    ("charge_tokens", (1,)),
    ("charge_time", (1,)),
    ("record_snapshot_created", ("snap",)),
    ("record_snapshot_restored", ("snap",)),
    ("clear_snapshot_tracking", ()),
    ("check_budget", ()),
    ("validate_session", ()),
]


def test_defect_4_terminated_is_final_and_dead_sessions_refuse_writes(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=3600)
    term = m.create_session().id
    m.increment_recursion_depth(term)
    m.set_context_variable(term, "k", "v")
    m.update_session_state(term, SessionState.TERMINATED)

    by_state = m.create_session().id
    m.set_context_variable(by_state, "k", "v")
    m.update_session_state(by_state, SessionState.EXPIRED)

    # No call moves a terminated session to another state, not even
    # to TERMINATED again.
    for state in SessionState:
        with pytest.raises(InvalidSessionState):
            m.update_session_state(term, state)
        with pytest.raises(InvalidSessionState):
            m.update_session_state(term, state.value)
    assert m.get_session(term).state is SessionState.TERMINATED

    before = state_of(m)
    for name, args in WRITES:
        with pytest.raises(InvalidSessionState):
            getattr(m, name)(term, *args)
        with pytest.raises(SessionExpired):
            getattr(m, name)(by_state, *args)
    with pytest.raises(SessionExpired):
        m.update_session_state(by_state, SessionState.READY)
    assert state_of(m) == before

    # validate_session / is_session_valid treat state EXPIRED like the clock.
    assert m.is_session_valid(term) is False
    assert m.is_session_valid(by_state) is False

    # Expired by the clock: the same writes raise SessionExpired.
    by_clock = m.create_session().id
    m.set_context_variable(by_clock, "k", "v")
    m.increment_recursion_depth(by_clock)
    clock.advance(seconds=3600, ns=1)
    before = state_of(m)
    for name, args in WRITES:
        with pytest.raises(SessionExpired):
            getattr(m, name)(by_clock, *args)
    with pytest.raises(SessionExpired):
        m.update_session_state(by_clock, SessionState.READY)
    assert state_of(m) == before
    assert m.is_session_valid(by_clock) is False


# --------------------------------------------------------------------------
# 6. Counters at rest (the concurrent version is in test_threads.py)
# --------------------------------------------------------------------------


def test_defect_6_counters_agree_with_the_table_at_rest(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=3600)

    def check(created: int) -> None:
        stats = m.get_stats()
        infos = m.list_sessions()
        assert stats.total_sessions_created == created
        assert stats.active_sessions == len(m) == len(infos)
        assert stats.sessions_with_vm == sum(i.vm_instance_id is not None for i in infos)
        assert created == (
            stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
        )

    ids = [m.create_session().id for _ in range(5)]
    check(5)
    m.assign_vm(ids[0], "vm-1")
    m.assign_vm(ids[1], "vm-1")  # moves
    m.assign_vm(ids[1], "vm-2")  # moves again
    m.assign_vm(ids[2], "vm-3")
    check(5)
    assert m.get_stats().sessions_with_vm == 2
    m.release_vm(ids[2])
    assert m.release_vm(ids[2]) is None  # twice: no double count
    check(5)
    assert m.get_stats().sessions_with_vm == 1
    m.destroy_session(ids[3])
    with pytest.raises(SessionNotFound):
        m.destroy_session(ids[3])  # a failed destroy must not count
    check(5)
    assert m.get_stats().total_sessions_destroyed == 1
    clock.advance(seconds=3601)
    newer = m.create_session().id
    assert len(m.cleanup_expired_sessions()) == 4
    assert m.cleanup_expired_sessions() == []
    check(6)
    stats = m.get_stats()
    assert (stats.active_sessions, stats.total_sessions_expired, stats.sessions_with_vm) == (1, 4, 0)
    m.destroy_session(newer)
    check(6)
    stats = m.get_stats()
    assert (stats.active_sessions, stats.total_sessions_destroyed) == (0, 2)


# --------------------------------------------------------------------------
# 7. Timestamps never overflow
# --------------------------------------------------------------------------


def test_defect_7_expiry_past_int64_is_a_config_error(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=3600, extension_increment_secs=1800, max_extensions=3)

    # Expires exactly 10 ns before the largest int64: creatable, not extendable.
    clock.now = I64_MAX - 3600 * NS - 10
    s = m.create_session()
    assert s.expires_at_ns == I64_MAX - 10
    before = state_of(m)
    with pytest.raises(ConfigError):
        m.extend_session(s.id)
    assert state_of(m) == before
    assert m.get_session(s.id).extension_count == 0

    # A create whose expiry would not fit is refused, nothing created.
    clock.now = I64_MAX - 3600 * NS + 1
    before = state_of(m)
    with pytest.raises(ConfigError):
        m.create_session()
    assert state_of(m) == before
    assert m.get_stats().total_sessions_created == 1


# --------------------------------------------------------------------------
# 8. Depth has one source of truth
# --------------------------------------------------------------------------


def test_defect_8_depth_has_one_source_of_truth(make_manager) -> None:
    m = make_manager(max_recursion_depth=10)
    s = m.create_session().id

    def depth() -> int:
        info = m.get_session(s)
        assert info.recursion_depth == info.budget_status.current_recursion_depth
        (listed,) = m.list_sessions()
        assert listed.recursion_depth == listed.budget_status.current_recursion_depth
        if not info.budget_status.depth_exhausted():
            assert m.check_budget(s).current_recursion_depth == info.recursion_depth
        return info.recursion_depth

    assert m.increment_recursion_depth(s) == 1
    assert m.increment_recursion_depth(s) == 2
    assert depth() == 2

    # update_budget: the given status is taken whole, depth included.
    m.update_budget(s, BudgetStatus(max_recursion_depth=10, current_recursion_depth=5))
    assert depth() == 5
    assert m.decrement_recursion_depth(s) == 4
    assert depth() == 4

    # A maximum below the current depth is accepted; the next increment raises.
    m.update_budget(s, BudgetStatus(max_recursion_depth=2, current_recursion_depth=4))
    assert depth() == 4
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(s)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (5, 2)
    assert m.get_session(s).recursion_depth == 4
    assert m.decrement_recursion_depth(s) == 3
    assert m.get_session(s).budget_status.current_recursion_depth == 3

    # Decrement saturates at zero, in both views.
    m.update_budget(s, BudgetStatus(current_recursion_depth=0))
    assert m.decrement_recursion_depth(s) == 0
    assert depth() == 0


# Defect 9 (BudgetTracker: pop at 0, push never above max, near-exhaustion
# with a zero budget) is tested with BudgetTracker's own suite.
