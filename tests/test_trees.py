"""Call trees (SPEC section 11, with the choices docs/trees.md fixes).

Every test runs on every manager through the `core` fixture (the twin, the
compiled core and Redis); time is a FakeClock. A call that raises must
change nothing: `snapshot(m)` is compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import types
from typing import Any

import pytest
from conftest import PY, C

from rlm_fast import (
    BudgetStatus,
    InvalidSessionState,
    InvalidSessionToken,
    MaxExtensionsReached,
    RecursionDepthExceeded,
    RlmError,
    Serialization,
    SessionExpired,
    SessionNotFound,
    SessionState,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

NS = 10**9
U64_MAX = 2**64 - 1

# The crate's SessionInfo serde keys, in order (no tree field: SPEC 11).
INFO_KEYS = [
    "id",
    "state",
    "created_at",
    "expires_at",
    "extension_count",
    "recursion_depth",
    "budget_status",
    "vm_instance_id",
    "context_variables",
    "current_snapshot_id",
    "snapshot_count",
]

# Every write that follows the full order of checks, with valid arguments
# (as in test_session_api.py).
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
    ("create_child_session", ()),
]

HOWS = ["terminated", "state_expired", "clock"]


def counters(m: Any) -> tuple[int, ...]:
    """The table's counters (SPEC 12's refusal counters left out: a refused
    call counts itself there by design)."""
    s = m.get_stats()
    return (
        s.total_sessions_created,
        s.active_sessions,
        s.sessions_with_vm,
        s.total_sessions_destroyed,
        s.total_sessions_expired,
    )


def snapshot(m: Any) -> tuple[Any, ...]:
    """Everything a refused call must leave as it was: rows (tree links
    included, SessionInfo equality covers parent_id/root_id), counters,
    every session's children, len."""
    infos = m.list_sessions()
    return infos, counters(m), {str(i.id): m.children(i.id) for i in infos}, len(m)


def used(m: Any, sid: Any) -> tuple[int, int]:
    status = m.get_session(sid).budget_status
    return status.tokens_used, status.time_used_ms


def amounts(err: Any) -> tuple[int, int]:
    """(used, budget) of a TokenBudgetExceeded or TimeBudgetExceeded."""
    if isinstance(err, TokenBudgetExceeded):
        return err.used, err.budget
    return err.used_ms, err.budget_ms


def by_id(ids: Any) -> list[Any]:
    return sorted(ids, key=int)


def tree(m: Any, **child_kwargs: Any) -> types.SimpleNamespace:
    """root -> a -> (a1, a2); root -> b -> b1."""
    root = m.create_session().id
    a = m.create_child_session(root, **child_kwargs).id
    b = m.create_child_session(root, **child_kwargs).id
    a1 = m.create_child_session(a, **child_kwargs).id
    a2 = m.create_child_session(a, **child_kwargs).id
    b1 = m.create_child_session(b, **child_kwargs).id
    return types.SimpleNamespace(root=root, a=a, b=b, a1=a1, a2=a2, b1=b1)


def kill(m: Any, clock: Any, sid: Any, how: str) -> None:
    """Make `sid` invalid: terminated, state EXPIRED, or expired by the clock
    (for "clock", every other session of the family was extended first)."""
    if how == "terminated":
        m.update_session_state(sid, SessionState.TERMINATED)
    elif how == "state_expired":
        m.update_session_state(sid, SessionState.EXPIRED)
    else:
        clock.advance(seconds=61)


def family(m: Any, victim: str) -> dict[str, Any]:
    """root -> mid -> leaf, root -> aunt, all made now and expiring in 60 s;
    then every member but `victim` is extended by 60 s, so that a 61 s
    advance expires the victim alone by its own clock."""
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    aunt = m.create_child_session(root).id
    fam = {"root": root, "mid": mid, "leaf": leaf, "aunt": aunt}
    for name, sid in fam.items():
        if name != victim:
            m.extend_session(sid)
    return fam


def family_manager(make_manager: Any) -> Any:
    return make_manager(
        session_duration_secs=60,
        extension_increment_secs=60,
        max_extensions=3,
        max_snapshots_per_session=0,
    )


# --------------------------------------------------------------------------
# SessionInfo.parent_id / root_id, children()
# --------------------------------------------------------------------------


def test_a_root_has_no_parent_and_is_its_own_root(core, make_manager) -> None:
    m = make_manager()
    info = m.create_session()
    assert info.parent_id is None
    assert info.root_id == info.id
    assert isinstance(info.root_id, core.SessionId)
    for got in (m.get_session(info.id), m.validate_session(info.id), m.list_sessions()[0]):
        assert got.parent_id is None
        assert got.root_id == info.id
    assert m.children(info.id) == []


def test_child_and_grandchild_carry_parent_and_root(core, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    child_info = m.create_child_session(root)
    child = child_info.id
    grand_info = m.create_child_session(child)
    grand = grand_info.id
    assert isinstance(child_info, core.SessionInfo)
    assert isinstance(child, core.SessionId)
    assert len({int(root), int(child), int(grand)}) == 3
    assert isinstance(child_info.parent_id, core.SessionId)
    assert isinstance(child_info.root_id, core.SessionId)
    assert (child_info.parent_id, child_info.root_id) == (root, root)
    assert (grand_info.parent_id, grand_info.root_id) == (child, root)
    # Every way of reading a session gives the same links.
    assert m.get_session(child) == child_info
    assert m.get_session(grand) == grand_info
    assert m.validate_session(grand) == grand_info
    listed = {str(i.id): i for i in m.list_sessions()}
    assert listed[str(child)] == child_info and listed[str(grand)] == grand_info
    assert listed[str(root)].parent_id is None
    assert m.children(root) == [child]
    assert m.children(child) == [grand]
    assert m.children(grand) == []
    # The links are part of an immutable snapshot.
    with pytest.raises(AttributeError):
        grand_info.parent_id = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        grand_info.root_id = grand  # type: ignore[misc]
    m.destroy_session(root)
    assert (grand_info.parent_id, grand_info.root_id) == (child, root)


def test_create_child_session_initial_fields(core, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=600, max_recursion_depth=7)
    parent = m.create_session().id
    m.assign_vm(parent, "vm-parent")  # state READY
    m.set_context_variable(parent, "task", "t")
    m.record_snapshot_created(parent, "snap-p", set_as_current=True)
    m.extend_session(parent)
    m.update_session_state(parent, SessionState.EXECUTING)
    clock.advance(seconds=5, ns=123)
    info = m.create_child_session(parent)
    assert info.state is SessionState.INITIALIZING
    assert info.created_at_ns == clock.now
    assert info.expires_at_ns == clock.now + 600 * NS
    assert info.extension_count == 0
    assert info.vm_instance_id is None
    assert dict(info.context_variables) == {}
    assert info.current_snapshot_id is None
    assert info.snapshot_count == 0
    assert info.recursion_depth == 1
    assert info.budget_status.current_recursion_depth == 1
    assert info.budget_status.max_recursion_depth == 7
    assert (info.budget_status.tokens_used, info.budget_status.time_used_ms) == (0, 0)
    assert info.id.timestamp_ms == clock.now // 10**6  # the manager's clock stamps the id
    # The parent is untouched: it keeps its VM, state, context and snapshot.
    p = m.get_session(parent)
    assert (p.state, p.vm_instance_id, p.current_snapshot_id) == (
        SessionState.EXECUTING,
        "vm-parent",
        "snap-p",
    )
    assert m.get_session_for_vm("vm-parent") == parent
    assert m.get_assigned_vm(info.id) is None
    stats = m.get_stats()
    assert (stats.total_sessions_created, stats.active_sessions, stats.sessions_with_vm) == (2, 2, 1)
    assert len(m) == 2
    assert info.id in m and str(info.id) in m
    assert m.is_session_valid(info.id) is True


def test_child_accepts_the_parent_id_in_any_form(core, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    for form in (root, str(root), str(root).lower()):
        assert m.create_child_session(form).parent_id == root
    kid = m.children(root)[0]
    for form in (kid, str(kid), str(kid).lower()):
        assert m.children(form) == []
    assert len(m.children(str(root).lower())) == 3


def test_children_are_direct_and_in_id_order(clock, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(20)]  # same millisecond
    clock.advance(ns=3 * 10**6)
    kids += [m.create_child_session(root).id for _ in range(5)]
    grand = [m.create_child_session(kids[0]).id for _ in range(4)]
    assert m.children(root) == by_id(kids)
    assert m.children(kids[0]) == by_id(grand)
    assert all(m.children(k) == [] for k in kids[1:])
    # list_sessions includes every child, in id order.
    assert [i.id for i in m.list_sessions()] == by_id([root, *kids, *grand])
    assert len(m) == 1 + 25 + 4
    assert m.get_stats().total_sessions_created == 30
    assert m.get_stats().active_sessions == 30


def test_children_is_a_read_only_lookup(core, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    unknown = core.SessionId()
    with pytest.raises(SessionNotFound) as excinfo:
        m.children(unknown)
    assert str(excinfo.value.session_id) == str(unknown)
    with pytest.raises(TypeError):
        m.children(12345)
    with pytest.raises(TypeError):
        m.children(None)
    with pytest.raises(InvalidSessionToken):
        m.children("garbage")
    m.update_session_state(root, SessionState.TERMINATED)
    assert m.children(root) == [kid]
    clock.advance(seconds=61)
    assert m.children(root) == [kid]
    assert m.children(kid) == []


def test_total_sessions_created_counts_children(make_manager) -> None:
    m = make_manager()
    t = tree(m)
    stats = m.get_stats()
    assert stats.total_sessions_created == 6
    assert stats.active_sessions == 6 == len(m)
    m.create_session()
    m.create_child_session(t.a1)
    assert m.get_stats().total_sessions_created == 8


# --------------------------------------------------------------------------
# creating a child: expiry, depth
# --------------------------------------------------------------------------


def test_child_expires_no_later_than_its_parent(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60, extension_increment_secs=100, max_extensions=1)
    t0 = clock.now
    parent = m.create_session().id
    same_time = m.create_child_session(parent)
    assert same_time.expires_at_ns == t0 + 60 * NS
    clock.advance(seconds=30)
    later = m.create_child_session(parent)
    assert later.created_at_ns == t0 + 30 * NS
    assert later.expires_at_ns == t0 + 60 * NS  # the parent's, not now + 60 s
    m.extend_session(parent)  # the parent now lasts until t0 + 160 s
    # A child's expiry is set once, at creation: the parent's extension
    # does not move it.
    assert m.get_session(same_time.id).expires_at_ns == t0 + 60 * NS
    assert m.get_session(later.id).expires_at_ns == t0 + 60 * NS
    after_extension = m.create_child_session(parent)
    assert after_extension.expires_at_ns == t0 + 90 * NS  # now + 60 s is sooner
    grand = m.create_child_session(later.id)
    assert grand.expires_at_ns == t0 + 60 * NS  # capped by its own parent
    # At the parent's very expiry instant the parent is still valid: the
    # child expires at that same instant.
    clock.now = later.expires_at_ns
    at_edge = m.create_child_session(later.id)
    assert at_edge.expires_at_ns == later.expires_at_ns
    assert m.is_session_valid(at_edge.id) is True
    clock.advance(ns=1)
    before = snapshot(m)
    with pytest.raises(SessionExpired) as excinfo:
        m.create_child_session(later.id)
    assert str(excinfo.value.session_id) == str(later.id)
    assert snapshot(m) == before


def test_child_starts_one_deeper_and_inherits_the_maximum(make_manager) -> None:
    m = make_manager(max_recursion_depth=4)
    root = m.create_session().id
    assert m.create_child_session(root).recursion_depth == 1
    m.increment_recursion_depth(root)
    m.increment_recursion_depth(root)
    child = m.create_child_session(root)
    assert child.recursion_depth == 3
    assert child.budget_status.current_recursion_depth == 3
    assert child.budget_status.max_recursion_depth == 4
    # A later change of the parent's depth does not move the child.
    m.decrement_recursion_depth(root)
    assert m.get_session(child.id).recursion_depth == 3
    # The child inherits the parent's current maximum, not the config's.
    m.update_budget(root, BudgetStatus(max_recursion_depth=9, current_recursion_depth=1))
    wider = m.create_child_session(root)
    assert (wider.recursion_depth, wider.budget_status.max_recursion_depth) == (2, 9)
    # The grandchild starts from its own parent's depth.
    grand = m.create_child_session(child.id)
    assert (grand.recursion_depth, grand.budget_status.max_recursion_depth) == (4, 4)
    before = snapshot(m)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.create_child_session(grand.id)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (5, 4)
    assert str(excinfo.value) == "Recursion depth limit exceeded: 5 >= 4"
    assert snapshot(m) == before


def test_the_depth_limit_creates_nothing(make_manager) -> None:
    m = make_manager(max_recursion_depth=2)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    assert m.create_child_session(root).recursion_depth == 2  # at the maximum: allowed
    m.increment_recursion_depth(root)
    before = snapshot(m)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.create_child_session(root)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (3, 2)
    # Depth is checked before the budget.
    with pytest.raises(RecursionDepthExceeded):
        m.create_child_session(root, token_budget=10**9)
    assert snapshot(m) == before
    assert m.get_stats().total_sessions_created == 2

    flat = make_manager(max_recursion_depth=0)
    top = flat.create_session().id
    before = snapshot(flat)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        flat.create_child_session(top)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (1, 0)
    assert snapshot(flat) == before


# --------------------------------------------------------------------------
# creating a child: budgets
# --------------------------------------------------------------------------


def test_child_budgets_default_to_what_the_parent_has_left(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=500)
    root = m.create_session().id
    first = m.create_child_session(root)
    assert first.budget_status == BudgetStatus(1000, 0, 500, 0, 10, 1)
    m.charge_tokens(root, 300)
    m.charge_time(root, 100)
    second = m.create_child_session(root)
    assert second.budget_status == BudgetStatus(700, 0, 400, 0, 10, 1)
    m.charge_tokens(first.id, 50)  # rolls up: the root has 650 left
    m.charge_time(first.id, 20)  # and 380 ms
    third = m.create_child_session(root)
    assert (third.budget_status.token_budget, third.budget_status.time_budget_ms) == (650, 380)
    # A grandchild gets its own parent's remainder.
    grand = m.create_child_session(first.id)
    assert (grand.budget_status.token_budget, grand.budget_status.time_budget_ms) == (950, 480)
    # Only the parent's remainder counts, even where an ancestor has less.
    m.charge_tokens(root, 600)  # root: 950 of 1000 used
    assert m.create_child_session(first.id).budget_status.token_budget == 950
    # Over budget: the remainder is 0, not negative.
    with pytest.raises(TokenBudgetExceeded):
        m.charge_tokens(root, 100)
    with pytest.raises(TimeBudgetExceeded):
        m.charge_time(root, 1000)
    broke = m.create_child_session(root)
    assert (broke.budget_status.token_budget, broke.budget_status.time_budget_ms) == (0, 0)
    assert m.create_child_session(root, token_budget=0, time_budget_ms=0).budget_status == (
        BudgetStatus(0, 0, 0, 0, 10, 1)
    )
    before = snapshot(m)
    with pytest.raises(ValueError):
        m.create_child_session(root, token_budget=1)
    with pytest.raises(ValueError):
        m.create_child_session(root, time_budget_ms=1)
    assert snapshot(m) == before


def test_explicit_child_budgets(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=500)
    root = m.create_session().id
    m.charge_tokens(root, 400)
    m.charge_time(root, 200)
    exact = m.create_child_session(root, token_budget=600, time_budget_ms=300)
    assert exact.budget_status == BudgetStatus(600, 0, 300, 0, 10, 1)
    small = m.create_child_session(root, token_budget=7)
    assert (small.budget_status.token_budget, small.budget_status.time_budget_ms) == (7, 300)
    small_time = m.create_child_session(root, time_budget_ms=9)
    assert (small_time.budget_status.token_budget, small_time.budget_status.time_budget_ms) == (
        600,
        9,
    )
    before = snapshot(m)
    for kwargs in (
        {"token_budget": 601},
        {"time_budget_ms": 301},
        {"token_budget": 601, "time_budget_ms": 1},
        {"token_budget": 1, "time_budget_ms": 301},
        {"token_budget": U64_MAX},
    ):
        with pytest.raises(ValueError) as excinfo:
            m.create_child_session(root, **kwargs)
        assert not isinstance(excinfo.value, RlmError), kwargs
        assert snapshot(m) == before, kwargs
    # Against the parent's remainder only: a grandchild may ask for more
    # than the root has left.
    m.charge_tokens(root, 590)  # root: 990 of 1000 used
    grand = m.create_child_session(exact.id, token_budget=600)
    assert grand.budget_status.token_budget == 600
    with pytest.raises(ValueError):
        m.create_child_session(small.id, token_budget=8)  # small has 7 left


BAD_TYPES = ["10", 1.5, True, False, [], b"1", object()]
BAD_VALUES = [-1, -(2**70), 2**64, 2**100]


@pytest.mark.parametrize("field", ["token_budget", "time_budget_ms"])
def test_bad_child_budget_values(field, core, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    before = snapshot(m)
    for bad in BAD_TYPES:
        with pytest.raises(TypeError):
            m.create_child_session(root, **{field: bad})
    for bad in BAD_VALUES:
        with pytest.raises(ValueError) as excinfo:
            m.create_child_session(root, **{field: bad})
        assert not isinstance(excinfo.value, RlmError)
    # The values are checked before any lock: before the parent's existence
    # and validity ...
    unknown = core.SessionId()
    with pytest.raises(TypeError):
        m.create_child_session(unknown, **{field: "10"})
    with pytest.raises(ValueError) as excinfo:
        m.create_child_session(unknown, **{field: -1})
    assert not isinstance(excinfo.value, RlmError)
    # ... but after the id's type and form.
    with pytest.raises(InvalidSessionToken):
        m.create_child_session("garbage", **{field: "10"})
    with pytest.raises(TypeError):
        m.create_child_session(42, **{field: -1})
    assert snapshot(m) == before
    m.update_session_state(root, SessionState.TERMINATED)
    with pytest.raises(TypeError):
        m.create_child_session(root, **{field: True})
    assert m.children(root) == []


def test_order_of_checks_path_then_depth_then_budget(core, make_manager) -> None:
    m = make_manager(max_recursion_depth=1, token_budget=100)
    root = m.create_session().id
    m.increment_recursion_depth(root)  # a child would be at depth 2 of 1
    unknown = core.SessionId()
    # Existence before the budget's remainder (a well-formed int).
    with pytest.raises(SessionNotFound):
        m.create_child_session(unknown, token_budget=10**6)
    m.update_session_state(root, SessionState.TERMINATED)
    before = snapshot(m)
    # The path's validity before the depth and the budget.
    with pytest.raises(InvalidSessionState) as excinfo:
        m.create_child_session(root, token_budget=10**6)
    assert str(excinfo.value.session_id) == str(root)
    assert snapshot(m) == before

    m = make_manager(max_recursion_depth=1, token_budget=100, session_duration_secs=60)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    m.update_session_state(root, SessionState.EXPIRED)
    with pytest.raises(SessionExpired):
        m.create_child_session(root, time_budget_ms=10**9)
    assert m.children(root) == []


def test_budgets_are_keyword_only(make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    with pytest.raises(TypeError):
        m.create_child_session(root, 10)  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.create_child_session(root, 10, 10)  # type: ignore[misc]
    assert m.children(root) == []
    assert len(m) == 1


# --------------------------------------------------------------------------
# creating a child: the parent's path
# --------------------------------------------------------------------------


def test_create_child_of_an_unknown_or_malformed_parent(core, make_manager) -> None:
    m = make_manager()
    m.create_session()
    unknown = core.SessionId()
    before = snapshot(m)
    with pytest.raises(SessionNotFound) as excinfo:
        m.create_child_session(unknown)
    assert str(excinfo.value.session_id) == str(unknown)
    assert str(excinfo.value) == f"Session not found: {unknown}"
    with pytest.raises(SessionNotFound):
        m.create_child_session(str(unknown))
    for bad in (123, None, 1.5, b"x" * 16):
        with pytest.raises(TypeError):
            m.create_child_session(bad)
    for junk in ("", "garbage", "I" * 26, "8" + "0" * 25):
        with pytest.raises(InvalidSessionToken):
            m.create_child_session(junk)
    assert snapshot(m) == before


@pytest.mark.parametrize("how", HOWS)
def test_create_child_of_a_dead_parent(how, clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    parent = m.create_session().id
    kill(m, clock, parent, how)
    before = snapshot(m)
    if how == "terminated":
        with pytest.raises(InvalidSessionState) as excinfo:
            m.create_child_session(parent)
        err = excinfo.value
        assert str(err.session_id) == str(parent)
        assert (err.state, err.operation) == ("Terminated", "create_child_session")
        assert str(err) == (
            f"Session {parent} is in invalid state Terminated for operation create_child_session"
        )
    else:
        with pytest.raises(SessionExpired) as excinfo:
            m.create_child_session(parent)
        assert str(excinfo.value.session_id) == str(parent)
        assert str(excinfo.value) == f"Session expired: {parent}"
    assert snapshot(m) == before


@pytest.mark.parametrize("how", HOWS)
def test_create_child_under_a_dead_grandparent_names_the_grandparent(
    how, clock, make_manager
) -> None:
    m = family_manager(make_manager)
    fam = family(m, "root")
    kill(m, clock, fam["root"], how)
    before = snapshot(m)
    for parent in (fam["mid"], fam["leaf"], fam["aunt"]):
        expected = InvalidSessionState if how == "terminated" else SessionExpired
        with pytest.raises(expected) as excinfo:
            m.create_child_session(parent)
        assert str(excinfo.value.session_id) == str(fam["root"])
        if how == "terminated":
            assert excinfo.value.operation == "create_child_session"
            assert excinfo.value.state == "Terminated"
    assert snapshot(m) == before


def test_the_path_is_checked_from_the_root_down(clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, "nobody")
    root, leaf = fam["root"], fam["leaf"]
    # The leaf terminated, the root expired by state: the root answers.
    m.update_session_state(leaf, SessionState.TERMINATED)
    m.update_session_state(root, SessionState.EXPIRED)
    before = snapshot(m)
    with pytest.raises(SessionExpired) as excinfo:
        m.create_child_session(leaf)
    assert str(excinfo.value.session_id) == str(root)
    with pytest.raises(SessionExpired) as excinfo:
        m.charge_tokens(leaf, 1)
    assert str(excinfo.value.session_id) == str(root)
    assert snapshot(m) == before

    m2 = family_manager(make_manager)
    fam2 = family(m2, "nobody")
    # The mid expired by state, the root terminated: the root answers.
    m2.update_session_state(fam2["mid"], SessionState.EXPIRED)
    m2.update_session_state(fam2["root"], SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState) as excinfo:
        m2.create_child_session(fam2["leaf"])
    assert str(excinfo.value.session_id) == str(fam2["root"])
    with pytest.raises(InvalidSessionState) as excinfo:
        m2.set_context_variable(fam2["mid"], "k", "v")
    assert str(excinfo.value.session_id) == str(fam2["root"])

    m3 = family_manager(make_manager)
    fam3 = family(m3, "root")  # only the root will expire by the clock
    # The mid terminated, the root expired by the clock: the root answers.
    m3.update_session_state(fam3["mid"], SessionState.TERMINATED)
    clock.advance(seconds=61)
    for sid in (fam3["mid"], fam3["leaf"]):
        with pytest.raises(SessionExpired) as excinfo:
            m3.create_child_session(sid)
        assert str(excinfo.value.session_id) == str(fam3["root"])
        with pytest.raises(SessionExpired) as excinfo:
            m3.validate_session(sid)
        assert str(excinfo.value.session_id) == str(fam3["root"])


def test_a_terminated_middle_session_names_itself_for_its_subtree(make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    m.update_session_state(mid, SessionState.TERMINATED)
    for sid in (mid, leaf):
        with pytest.raises(InvalidSessionState) as excinfo:
            m.create_child_session(sid)
        assert str(excinfo.value.session_id) == str(mid)
    # The root and its other children are unaffected.
    assert m.is_session_valid(root) is True
    other = m.create_child_session(root).id
    assert m.is_session_valid(other) is True
    assert m.children(root) == by_id([mid, other])


# --------------------------------------------------------------------------
# charges roll up
# --------------------------------------------------------------------------


def test_charges_roll_up_to_every_ancestor(make_manager) -> None:
    m = make_manager()
    t = tree(m)
    assert m.charge_tokens(t.a1, 10) == 10
    assert m.charge_time(t.a1, 3) == 3
    expected = {"root": (10, 3), "a": (10, 3), "a1": (10, 3), "a2": (0, 0), "b": (0, 0), "b1": (0, 0)}
    assert {k: used(m, getattr(t, k)) for k in expected} == expected
    # The return value is the session's own total, roll-ups included.
    assert m.charge_tokens(t.a, 5) == 15
    assert m.charge_time(t.a, 2) == 5
    assert m.charge_tokens(t.b1, 7) == 7
    assert m.charge_time(t.b1, 1) == 1
    assert m.charge_tokens(t.a2, 1) == 1
    assert m.charge_tokens(t.root, 1) == 24
    assert m.charge_time(t.root, 0) == 6
    expected = {
        "root": (24, 6),
        "a": (16, 5),
        "a1": (10, 3),
        "a2": (1, 0),
        "b": (7, 1),
        "b1": (7, 1),
    }
    assert {k: used(m, getattr(t, k)) for k in expected} == expected


def test_a_charge_up_to_a_budget_is_not_over_it(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=50)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    assert m.charge_tokens(kid, 100) == 100
    assert m.charge_time(kid, 50) == 50
    assert used(m, root) == (100, 50)


def test_a_child_over_its_own_budget(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=1000)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=50, time_budget_ms=40).id
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(kid, 60)
    assert (excinfo.value.used, excinfo.value.budget) == (60, 50)
    assert str(excinfo.value) == "Token budget exceeded: used 60 of 50 tokens"
    with pytest.raises(TimeBudgetExceeded) as tinfo:
        m.charge_time(kid, 45)
    assert (tinfo.value.used_ms, tinfo.value.budget_ms) == (45, 40)
    assert str(tinfo.value) == "Time budget exceeded: used 45ms of 40ms"
    # It was spent: recorded on the whole path.
    assert used(m, kid) == (60, 45)
    assert used(m, root) == (60, 45)


def test_the_error_names_the_budget_nearest_the_root(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=100)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=50, time_budget_ms=50).id
    assert m.charge_tokens(kid, 40) == 40
    assert m.charge_tokens(root, 50) == 90
    assert m.charge_time(kid, 40) == 40
    assert m.charge_time(root, 50) == 90
    # Both the child (60 > 50) and the root (110 > 100) are passed.
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(kid, 20)
    assert (excinfo.value.used, excinfo.value.budget) == (110, 100)
    with pytest.raises(TimeBudgetExceeded) as tinfo:
        m.charge_time(kid, 20)
    assert (tinfo.value.used_ms, tinfo.value.budget_ms) == (110, 100)
    assert used(m, kid) == (60, 60)
    assert used(m, root) == (110, 110)


def test_a_middle_budget_alone_is_passed(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=1000)
    root = m.create_session().id
    mid = m.create_child_session(root, token_budget=100, time_budget_ms=100).id
    leaf = m.create_child_session(mid).id
    status = m.get_session(leaf).budget_status
    assert (status.token_budget, status.time_budget_ms) == (100, 100)
    m.update_budget(leaf, status.replace(token_budget=1000, time_budget_ms=1000))
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(leaf, 150)
    assert (excinfo.value.used, excinfo.value.budget) == (150, 100)
    with pytest.raises(TimeBudgetExceeded) as tinfo:
        m.charge_time(leaf, 150)
    assert (tinfo.value.used_ms, tinfo.value.budget_ms) == (150, 100)
    assert used(m, leaf) == used(m, mid) == used(m, root) == (150, 150)


def test_a_sibling_spends_the_roots_budget(make_manager) -> None:
    m = make_manager(token_budget=100)
    t = tree(m)  # every child's budget: the root's 100
    assert m.charge_tokens(t.a1, 60) == 60
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(t.b1, 50)  # b1: 50 of 100, b: 50 of 100, root: 110 of 100
    assert (excinfo.value.used, excinfo.value.budget) == (110, 100)
    assert [used(m, s)[0] for s in (t.root, t.a, t.a1, t.a2, t.b, t.b1)] == [110, 60, 60, 0, 50, 50]


def test_an_ancestor_already_over_budget_refuses_every_charge(make_manager) -> None:
    m = make_manager(token_budget=1000, time_budget_ms=1000)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    with pytest.raises(TokenBudgetExceeded):
        m.charge_tokens(root, 1200)
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(kid, 0)
    assert (excinfo.value.used, excinfo.value.budget) == (1200, 1000)
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(kid, 5)
    assert (excinfo.value.used, excinfo.value.budget) == (1205, 1000)
    assert used(m, kid) == (5, 0)
    assert m.charge_time(kid, 5) == 5  # time is a separate budget


@pytest.mark.parametrize("kind", ["tokens", "time"])
def test_a_charge_past_u64_anywhere_on_the_path_is_refused_whole(kind, make_manager) -> None:
    charge = "charge_tokens" if kind == "tokens" else "charge_time"
    used_f = "tokens_used" if kind == "tokens" else "time_used_ms"
    budget_f = "token_budget" if kind == "tokens" else "time_budget_ms"
    over = TokenBudgetExceeded if kind == "tokens" else TimeBudgetExceeded

    # At the root.
    m = make_manager()
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    status = m.get_session(root).budget_status
    m.update_budget(root, status.replace(**{budget_f: U64_MAX, used_f: U64_MAX - 5}))
    before = snapshot(m)
    with pytest.raises(ValueError) as excinfo:
        getattr(m, charge)(leaf, 6)
    assert not isinstance(excinfo.value, RlmError)
    assert snapshot(m) == before
    assert getattr(m, charge)(leaf, 5) == 5
    assert getattr(m.get_session(root).budget_status, used_f) == U64_MAX
    assert getattr(m.get_session(mid).budget_status, used_f) == 5

    # In the middle, while the root is already over its budget: the
    # overflow wins and nothing is recorded anywhere.
    m = make_manager(token_budget=10, time_budget_ms=10)
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    with pytest.raises(over):
        getattr(m, charge)(root, 20)
    status = m.get_session(mid).budget_status
    m.update_budget(mid, status.replace(**{budget_f: U64_MAX, used_f: U64_MAX - 1}))
    before = snapshot(m)
    with pytest.raises(ValueError):
        getattr(m, charge)(leaf, 2)
    with pytest.raises(ValueError):
        getattr(m, charge)(mid, 2)
    assert snapshot(m) == before
    with pytest.raises(over) as excinfo2:
        getattr(m, charge)(leaf, 1)  # the root is passed (21 > 10): its error
    assert amounts(excinfo2.value) == (21, 10)
    assert [getattr(m.get_session(s).budget_status, used_f) for s in (root, mid, leaf)] == [
        21,
        U64_MAX,
        1,
    ]

    # At the session itself.
    m = make_manager()
    root = m.create_session().id
    leaf = m.create_child_session(root).id
    status = m.get_session(leaf).budget_status
    m.update_budget(leaf, status.replace(**{budget_f: U64_MAX, used_f: U64_MAX}))
    before = snapshot(m)
    with pytest.raises(ValueError):
        getattr(m, charge)(leaf, 1)
    assert snapshot(m) == before
    assert getattr(m.get_session(root).budget_status, used_f) == 0


def test_a_deep_chain_rolls_up_to_every_level(make_manager) -> None:
    m = make_manager(max_recursion_depth=40, token_budget=10**6, time_budget_ms=10**6)
    chain = [m.create_session().id]
    for _ in range(30):
        chain.append(m.create_child_session(chain[-1]).id)
    assert m.get_session(chain[-1]).recursion_depth == 30
    assert m.get_session(chain[-1]).root_id == chain[0]
    assert m.charge_tokens(chain[-1], 7) == 7
    assert m.charge_time(chain[15], 3) == 3
    for level, sid in enumerate(chain):
        assert used(m, sid) == (7, 3 if level <= 15 else 0), level
    # A budget passed halfway down names that level.
    status = m.get_session(chain[10]).budget_status
    m.update_budget(chain[10], status.replace(token_budget=10))
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.charge_tokens(chain[-1], 4)
    assert (excinfo.value.used, excinfo.value.budget) == (11, 10)
    assert all(used(m, sid)[0] == 11 for sid in chain)
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        m.check_budget(chain[-1])
    assert (excinfo.value.used, excinfo.value.budget) == (11, 10)
    assert m.check_budget(chain[9]).tokens_used == 11  # above the exhausted level
    # Terminating a middle level invalidates everything below it.
    m.update_session_state(chain[20], SessionState.TERMINATED)
    assert [m.is_session_valid(s) for s in chain] == [True] * 20 + [False] * 11
    with pytest.raises(InvalidSessionState) as err:
        m.charge_tokens(chain[-1], 1)
    assert str(err.value.session_id) == str(chain[20])
    m.destroy_session(chain[5])
    assert [i.id for i in m.list_sessions()] == by_id(chain[:5])
    assert m.get_stats().total_sessions_destroyed == 26


# --------------------------------------------------------------------------
# check_budget over the path, update_budget on a child
# --------------------------------------------------------------------------


def test_check_budget_checks_the_path_root_first(make_manager) -> None:
    m = make_manager(token_budget=100, time_budget_ms=100, max_recursion_depth=5)
    root = m.create_session().id
    mid = m.create_child_session(root).id  # start depth 1
    leaf = m.create_child_session(mid).id  # start depth 2
    fine_root = BudgetStatus(100, 0, 100, 0, 5, 0)
    fine_mid = BudgetStatus(100, 0, 100, 0, 5, 1)
    fine_leaf = BudgetStatus(100, 0, 100, 0, 5, 2)

    def setup(r: BudgetStatus, md: BudgetStatus, lf: BudgetStatus) -> None:
        m.update_budget(root, r)
        m.update_budget(mid, md)
        m.update_budget(leaf, lf)

    setup(fine_root, fine_mid, fine_leaf)
    assert m.check_budget(leaf) == fine_leaf  # the session's own status
    assert m.check_budget(mid) == fine_mid
    assert m.check_budget(root) == fine_root

    # The root's tokens before the leaf's time.
    setup(fine_root.replace(tokens_used=150), fine_mid, fine_leaf.replace(time_budget_ms=80, time_used_ms=90))
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.check_budget(leaf)
    assert (tok.value.used, tok.value.budget) == (150, 100)
    # The root's time before the leaf's tokens.
    setup(fine_root.replace(time_used_ms=120), fine_mid, fine_leaf.replace(token_budget=70, tokens_used=75))
    with pytest.raises(TimeBudgetExceeded) as tim:
        m.check_budget(leaf)
    assert (tim.value.used_ms, tim.value.budget_ms) == (120, 100)
    # The root's depth before the leaf's tokens.
    setup(
        fine_root.replace(max_recursion_depth=1, current_recursion_depth=2),
        fine_mid,
        fine_leaf.replace(token_budget=70, tokens_used=75),
    )
    with pytest.raises(RecursionDepthExceeded) as dep:
        m.check_budget(leaf)
    assert (dep.value.depth, dep.value.max_depth) == (2, 1)
    # The middle's tokens before the leaf's time; the root is fine.
    setup(
        fine_root,
        fine_mid.replace(token_budget=60, tokens_used=61),
        fine_leaf.replace(time_budget_ms=80, time_used_ms=90),
    )
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.check_budget(leaf)
    assert (tok.value.used, tok.value.budget) == (61, 60)
    # The middle's depth before the leaf's tokens.
    setup(
        fine_root,
        fine_mid.replace(max_recursion_depth=1, current_recursion_depth=3),
        fine_leaf.replace(token_budget=70, tokens_used=75),
    )
    with pytest.raises(RecursionDepthExceeded) as dep:
        m.check_budget(leaf)
    assert (dep.value.depth, dep.value.max_depth) == (3, 1)
    # Within the leaf itself: tokens, then time, then depth.
    setup(
        fine_root,
        fine_mid,
        BudgetStatus(70, 75, 80, 90, 2, 3),
    )
    with pytest.raises(TokenBudgetExceeded) as tok:
        m.check_budget(leaf)
    assert (tok.value.used, tok.value.budget) == (75, 70)
    setup(fine_root, fine_mid, BudgetStatus(70, 69, 80, 90, 2, 3))
    with pytest.raises(TimeBudgetExceeded) as tim:
        m.check_budget(leaf)
    assert (tim.value.used_ms, tim.value.budget_ms) == (90, 80)
    setup(fine_root, fine_mid, BudgetStatus(70, 69, 80, 79, 2, 3))
    with pytest.raises(RecursionDepthExceeded) as dep:
        m.check_budget(leaf)
    assert (dep.value.depth, dep.value.max_depth) == (3, 2)
    # A budget below the leaf does not matter to the leaf's ancestors.
    assert m.check_budget(mid) == fine_mid
    assert m.check_budget(root) == fine_root
    # Exhausted at exactly the budget (used >= budget).
    setup(fine_root.replace(tokens_used=100), fine_mid, fine_leaf)
    with pytest.raises(TokenBudgetExceeded):
        m.check_budget(leaf)
    # check_budget changes nothing.
    setup(fine_root, fine_mid, fine_leaf)
    before = snapshot(m)
    m.check_budget(leaf)
    assert snapshot(m) == before


def test_update_budget_on_a_child_changes_only_it(make_manager) -> None:
    m = make_manager(token_budget=100, max_recursion_depth=6)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    m.increment_recursion_depth(root)
    kid = m.create_child_session(root).id  # start depth 3
    grand = m.create_child_session(kid).id
    root_before = m.get_session(root)
    grand_before = m.get_session(grand)
    new = BudgetStatus(5000, 40, 7000, 30, 8, 4)
    assert m.update_budget(kid, new) is None
    info = m.get_session(kid)
    assert info.budget_status == new
    assert info.recursion_depth == 4
    assert m.get_session(root) == root_before  # no roll-up of an update
    assert m.get_session(grand) == grand_before
    # At the start depth: accepted.
    m.update_budget(kid, new.replace(current_recursion_depth=3))
    assert m.get_session(kid).recursion_depth == 3
    # Below it: ValueError, nothing changed.
    before = snapshot(m)
    for depth in (2, 0):
        with pytest.raises(ValueError) as excinfo:
            m.update_budget(kid, new.replace(current_recursion_depth=depth))
        assert not isinstance(excinfo.value, RlmError)
    with pytest.raises(ValueError):
        m.update_budget(grand, BudgetStatus())
    assert snapshot(m) == before
    # A root may go down to 0.
    m.update_budget(root, BudgetStatus(current_recursion_depth=0))
    assert m.get_session(root).recursion_depth == 0
    # The new budget applies to later charges, which still roll up.
    assert m.charge_tokens(kid, 70) == 110  # kid: 110 of 5000
    assert used(m, root)[0] == 70  # the root's update set its own count to 0
    assert used(m, grand)[0] == 0


# --------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------


def test_siblings_never_trip_each_other(make_manager) -> None:
    m = make_manager(max_recursion_depth=3)
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(4)]
    for kid in kids:
        assert m.increment_recursion_depth(kid) == 2
        assert m.increment_recursion_depth(kid) == 3
    for kid in kids:
        with pytest.raises(RecursionDepthExceeded) as excinfo:
            m.increment_recursion_depth(kid)
        assert (excinfo.value.depth, excinfo.value.max_depth) == (4, 3)
    # The root's depth is its own.
    assert m.get_session(root).recursion_depth == 0
    assert [m.increment_recursion_depth(root) for _ in range(3)] == [1, 2, 3]
    assert [m.get_session(k).recursion_depth for k in kids] == [3, 3, 3, 3]
    for kid in kids:
        info = m.get_session(kid)
        assert info.budget_status.current_recursion_depth == info.recursion_depth == 3


def test_decrement_saturates_at_the_start_depth(make_manager) -> None:
    m = make_manager(max_recursion_depth=6)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    m.increment_recursion_depth(root)
    kid = m.create_child_session(root).id  # start depth 3
    assert m.decrement_recursion_depth(kid) == 3
    assert m.increment_recursion_depth(kid) == 4
    assert m.increment_recursion_depth(kid) == 5
    assert m.decrement_recursion_depth(kid) == 4
    assert m.decrement_recursion_depth(kid) == 3
    assert m.decrement_recursion_depth(kid) == 3
    info = m.get_session(kid)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (3, 3)
    grand = m.create_child_session(kid).id  # start depth 4
    assert m.decrement_recursion_depth(grand) == 4
    # The root still goes down to 0.
    assert [m.decrement_recursion_depth(root) for _ in range(3)] == [1, 0, 0]
    # The start depth is fixed at creation: after an update_budget that
    # raised the depth, decrements stop at the start depth, not at 0.
    m.update_budget(kid, m.get_session(kid).budget_status.replace(current_recursion_depth=6))
    assert [m.decrement_recursion_depth(kid) for _ in range(5)] == [5, 4, 3, 3, 3]


def test_recursion_on_a_child(make_manager) -> None:
    m = make_manager(max_recursion_depth=3)
    root = m.create_session().id
    kid = m.create_child_session(root).id  # start depth 1
    with m.recursion(kid) as depth:
        assert depth == 2
        with m.recursion(kid) as inner:
            assert inner == 3
            ran = False
            with pytest.raises(RecursionDepthExceeded) as excinfo:
                with m.recursion(kid):
                    ran = True
            assert ran is False
            assert (excinfo.value.depth, excinfo.value.max_depth) == (4, 3)
        assert m.get_session(kid).recursion_depth == 2
    assert m.get_session(kid).recursion_depth == 1
    assert m.get_session(root).recursion_depth == 0

    class Boom(Exception):
        pass

    with pytest.raises(Boom), m.recursion(kid):
        raise Boom
    assert m.get_session(kid).recursion_depth == 1
    # An exit never goes below the start depth.
    with m.recursion(kid) as depth:
        assert depth == 2
        m.update_budget(kid, m.get_session(kid).budget_status.replace(current_recursion_depth=1))
    info = m.get_session(kid)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (1, 1)


def test_recursion_exit_when_the_tree_is_destroyed_inside(make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    with m.recursion(kid) as depth:
        assert depth == 2
        m.destroy_session(root)  # takes kid along; the exit must not raise
    assert kid not in m
    assert len(m) == 0


@pytest.mark.parametrize("how", HOWS)
def test_recursion_exit_under_an_ancestor_that_died_inside(how, clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, "root")
    leaf = fam["leaf"]  # start depth 2
    with m.recursion(leaf) as depth:
        assert depth == 3
        kill(m, clock, fam["root"], how)
    # The session still exists: its depth went back down, nothing raised.
    info = m.get_session(leaf)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (2, 2)
    # Entry now raises the ancestor's error and the body does not run.
    expected = InvalidSessionState if how == "terminated" else SessionExpired
    with pytest.raises(expected) as excinfo, m.recursion(leaf):
        pytest.fail("body must not run")
    assert str(excinfo.value.session_id) == str(fam["root"])
    assert m.get_session(leaf).recursion_depth == 2


# --------------------------------------------------------------------------
# validity flows down
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("victim", ["root", "mid"])
def test_is_session_valid_follows_the_ancestors(victim, how, clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, victim)
    assert all(m.is_session_valid(s) for s in fam.values())
    kill(m, clock, fam[victim], how)
    below = {"root": ["root", "mid", "leaf", "aunt"], "mid": ["mid", "leaf"]}[victim]
    for name, sid in fam.items():
        assert m.is_session_valid(sid) is (name not in below), name
        assert m.is_session_valid(str(sid)) is (name not in below), name
    if victim == "mid":
        # The rest of the tree works as before.
        assert m.charge_tokens(fam["aunt"], 3) == 3
        assert m.create_child_session(fam["aunt"]).parent_id == fam["aunt"]
        assert m.validate_session(fam["root"]).id == fam["root"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("victim", ["root", "mid"])
def test_writes_under_a_dead_ancestor_raise_its_error(victim, how, clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, victim)
    leaf, dead = fam["leaf"], fam[victim]
    m.set_context_variable(leaf, "k", "v")
    m.assign_vm(leaf, "vm-leaf")
    kill(m, clock, dead, how)
    before = snapshot(m)
    for name, args in WRITES:
        # The error the dead ancestor gives for this call itself ...
        with pytest.raises(RlmError) as own:
            getattr(m, name)(dead, *args)
        # ... is the one its descendant gives, naming the ancestor.
        with pytest.raises(RlmError) as excinfo:
            getattr(m, name)(leaf, *args)
        err = excinfo.value
        if how == "terminated":
            assert isinstance(err, InvalidSessionState), name
            assert str(err.session_id) == str(dead), name
            assert err.state == "Terminated", name
            assert err.operation == own.value.operation, name
            assert str(err) == str(own.value), name
        else:
            assert isinstance(err, SessionExpired), name
            assert str(err.session_id) == str(dead), name
            assert str(err) == f"Session expired: {dead}", name
        assert type(own.value) is type(err), name
    with pytest.raises(InvalidSessionState if how == "terminated" else SessionExpired) as excinfo:
        m.create_child_session(leaf)
    if how == "terminated":
        assert excinfo.value.operation == "create_child_session"
    assert snapshot(m) == before


@pytest.mark.parametrize("how", HOWS)
def test_read_only_lookups_under_a_dead_ancestor(how, clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, "root")
    leaf = fam["leaf"]
    m.assign_vm(leaf, "vm-leaf")
    m.set_context_variable(leaf, "b", "2")
    m.set_context_variable(leaf, "a", "1")
    m.record_snapshot_created(leaf, "snap-1", set_as_current=True)
    grand = m.create_child_session(leaf).id
    kill(m, clock, fam["root"], how)

    info = m.get_session(leaf)
    assert (info.id, info.parent_id, info.root_id) == (leaf, fam["mid"], fam["root"])
    assert info.vm_instance_id == "vm-leaf"
    assert m.get_assigned_vm(leaf) == "vm-leaf"
    assert m.get_session_for_vm("vm-leaf") == leaf
    assert m.get_context_variable(leaf, "a") == "1"
    assert m.get_all_context_variables(leaf) == {"a": "1", "b": "2"}
    assert m.get_current_snapshot(leaf) == "snap-1"
    assert m.children(leaf) == [grand]
    assert m.children(fam["root"]) == by_id([fam["mid"], fam["aunt"]])
    assert [i.id for i in m.list_sessions()] == by_id([*fam.values(), grand])
    assert leaf in m and grand in m
    assert m.is_session_valid(grand) is False


@pytest.mark.parametrize("how", HOWS)
def test_release_and_destroy_under_a_dead_ancestor(how, clock, make_manager) -> None:
    m = family_manager(make_manager)
    fam = family(m, "root")
    leaf, mid = fam["leaf"], fam["mid"]
    m.assign_vm(leaf, "vm-leaf")
    m.assign_vm(mid, "vm-mid")
    kill(m, clock, fam["root"], how)
    assert m.release_vm(leaf) == "vm-leaf"
    assert m.get_session_for_vm("vm-leaf") is None
    assert m.get_session(leaf).vm_instance_id is None
    assert m.get_stats().sessions_with_vm == 1
    assert m.release_vm(leaf) is None
    m.destroy_session(leaf)
    assert leaf not in m
    assert m.children(mid) == []
    m.destroy_session(mid)
    assert m.get_session_for_vm("vm-mid") is None
    assert m.children(fam["root"]) == [fam["aunt"]]
    stats = m.get_stats()
    assert (stats.active_sessions, stats.sessions_with_vm, stats.total_sessions_destroyed) == (2, 0, 2)


def test_extending_a_child_is_not_capped_by_its_parent(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60, extension_increment_secs=100, max_extensions=2)
    t0 = clock.now
    root = m.create_session().id
    kid = m.create_child_session(root).id
    assert m.get_session(kid).expires_at_ns == t0 + 60 * NS
    extended = m.extend_session(kid)
    assert extended.expires_at_ns == t0 + 160 * NS
    assert extended.extension_count == 1
    assert m.get_session(root).expires_at_ns == t0 + 60 * NS
    m.extend_session(kid)
    with pytest.raises(MaxExtensionsReached) as excinfo:
        m.extend_session(kid)  # the child's own count
    assert str(excinfo.value.session_id) == str(kid)
    assert m.get_session(root).extension_count == 0
    # Past the root's expiry the child is invalid, naming the root ...
    clock.advance(seconds=61)
    assert m.is_session_valid(kid) is False
    with pytest.raises(SessionExpired) as exp:
        m.validate_session(kid)
    assert str(exp.value.session_id) == str(root)
    # ... and is removed with it.
    assert m.cleanup_expired_sessions() == by_id([root, kid])
    assert len(m) == 0
    assert m.get_stats().total_sessions_expired == 2


# --------------------------------------------------------------------------
# removal cascades
# --------------------------------------------------------------------------


def test_destroying_a_root_removes_its_whole_tree(core, make_manager) -> None:
    m = make_manager()
    t = tree(m)
    outside = m.create_session().id
    names = ["root", "a", "b", "a1", "a2", "b1"]
    for name in names:
        m.assign_vm(getattr(t, name), f"vm-{name}")
    m.set_context_variable(t.a1, "k", "v")
    # b1's VM moved to a session outside the tree: destroying the tree must
    # leave that mapping alone.
    m.assign_vm(outside, "vm-b1")
    assert m.get_stats().sessions_with_vm == 6
    m.destroy_session(t.root)
    for name in names:
        sid = getattr(t, name)
        assert sid not in m, name
        assert str(sid) not in m, name
        with pytest.raises(SessionNotFound) as excinfo:
            m.get_session(sid)
        assert str(excinfo.value.session_id) == str(sid)
        with pytest.raises(SessionNotFound):
            m.children(sid)
        assert m.get_assigned_vm(sid) is None
        assert m.is_session_valid(sid) is False
    for name in ["root", "a", "b", "a1", "a2"]:
        assert m.get_session_for_vm(f"vm-{name}") is None
    assert m.get_session_for_vm("vm-b1") == outside
    assert [i.id for i in m.list_sessions()] == [outside]
    assert len(m) == 1
    stats = m.get_stats()
    assert stats.total_sessions_created == 7
    assert stats.active_sessions == 1
    assert stats.sessions_with_vm == 1
    assert stats.total_sessions_destroyed == 6
    assert stats.total_sessions_expired == 0
    # The removed ids are gone for every call.
    with pytest.raises(SessionNotFound):
        m.destroy_session(t.a1)
    with pytest.raises(SessionNotFound):
        m.create_child_session(t.b)
    # A freed VM can be used again.
    m.assign_vm(outside, "vm-a1")
    assert m.get_session_for_vm("vm-a1") == outside


def test_destroying_a_middle_session_removes_its_subtree(make_manager) -> None:
    m = make_manager()
    t = tree(m)
    for name in ["root", "a", "b", "a1", "a2", "b1"]:
        m.assign_vm(getattr(t, name), f"vm-{name}")
    m.charge_tokens(t.a1, 10)
    m.destroy_session(t.a)
    for sid in (t.a, t.a1, t.a2):
        assert sid not in m
    for name in ["a", "a1", "a2"]:
        assert m.get_session_for_vm(f"vm-{name}") is None
    for name in ["root", "b", "b1"]:
        assert m.get_session_for_vm(f"vm-{name}") == getattr(t, name)
    assert m.children(t.root) == [t.b]
    assert m.children(t.b) == [t.b1]
    assert [i.id for i in m.list_sessions()] == by_id([t.root, t.b, t.b1])
    # What was charged stays charged on the ancestors.
    assert used(m, t.root) == (10, 0)
    stats = m.get_stats()
    assert (stats.active_sessions, stats.sessions_with_vm, stats.total_sessions_destroyed) == (3, 3, 3)
    assert stats.total_sessions_created == 6
    # Destroying a leaf updates its parent's children.
    m.destroy_session(t.b1)
    assert m.children(t.b) == []
    assert m.get_stats().total_sessions_destroyed == 4
    # The remaining tree still works.
    assert m.create_child_session(t.b).parent_id == t.b
    assert m.charge_tokens(t.b, 1) == 1
    assert used(m, t.root) == (11, 0)


def test_destroy_keeps_a_vm_that_moved_into_the_tree(make_manager) -> None:
    m = make_manager()
    outside = m.create_session().id
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.assign_vm(outside, "vm-x")
    m.assign_vm(kid, "vm-x")  # the VM moves into the tree
    assert m.get_assigned_vm(outside) is None
    m.destroy_session(root)
    assert m.get_session_for_vm("vm-x") is None  # it belonged to kid
    assert m.get_session(outside).vm_instance_id is None
    assert m.get_stats().sessions_with_vm == 0


def test_cleanup_removes_every_expired_session_with_its_subtree(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60, extension_increment_secs=600, max_extensions=5)
    # Tree 1: the root expires; its children were extended, but go with it.
    r1 = m.create_session().id
    r1a = m.create_child_session(r1).id
    r1a1 = m.create_child_session(r1a).id
    r1b = m.create_child_session(r1).id
    m.extend_session(r1a)
    m.extend_session(r1a1)
    # Tree 2: the root lives; its child r2a expires and takes its extended
    # grandchild along; r2b lives.
    r2 = m.create_session().id
    r2a = m.create_child_session(r2).id
    r2a1 = m.create_child_session(r2a).id
    r2b = m.create_child_session(r2).id
    for sid in (r2, r2a1, r2b):
        m.extend_session(sid)
    r3 = m.create_session().id
    m.extend_session(r3)
    m.assign_vm(r1a1, "vm-1")
    m.assign_vm(r2a1, "vm-2")
    m.assign_vm(r2b, "vm-3")
    m.assign_vm(r1, "vm-4")
    assert m.cleanup_expired_sessions() == []
    clock.advance(seconds=61)
    assert m.is_session_valid(r1a) is False  # own expiry far, root expired
    assert m.is_session_valid(r2a1) is False
    assert m.is_session_valid(r2b) is True
    removed = m.cleanup_expired_sessions()
    assert removed == by_id([r1, r1a, r1a1, r1b, r2a, r2a1])
    assert len(set(removed)) == len(removed)
    assert all(isinstance(x, type(r1)) for x in removed)
    assert [i.id for i in m.list_sessions()] == by_id([r2, r2b, r3])
    assert m.children(r2) == [r2b]
    for vm in ("vm-1", "vm-2", "vm-4"):
        assert m.get_session_for_vm(vm) is None
    assert m.get_session_for_vm("vm-3") == r2b
    stats = m.get_stats()
    assert stats.total_sessions_created == 9
    assert stats.active_sessions == 3 == len(m)
    assert stats.sessions_with_vm == 1
    assert stats.total_sessions_expired == 6  # each removed session once
    assert stats.total_sessions_destroyed == 0
    assert m.cleanup_expired_sessions() == []
    assert m.get_stats().total_sessions_expired == 6


def test_cleanup_counts_a_child_expired_with_its_parent_once(clock, make_manager) -> None:
    m = make_manager(session_duration_secs=60)
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(3)]
    grand = m.create_child_session(kids[0]).id
    clock.advance(seconds=61)  # all five expired by their own clocks too
    assert m.cleanup_expired_sessions() == by_id([root, *kids, grand])
    stats = m.get_stats()
    assert (stats.total_sessions_created, stats.active_sessions, stats.total_sessions_expired) == (
        5,
        0,
        5,
    )
    assert len(m) == 0


def test_cleanup_removes_by_time_only(clock, make_manager) -> None:
    # A terminated ancestor makes its subtree invalid, not expired: cleanup
    # leaves it (SPEC 10: cleanup removes by time only).
    m = make_manager(session_duration_secs=60)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.update_session_state(kid, SessionState.EXPIRED)
    m.update_session_state(root, SessionState.TERMINATED)
    assert m.cleanup_expired_sessions() == []
    assert len(m) == 2


# --------------------------------------------------------------------------
# JSON and the SessionInfo type
# --------------------------------------------------------------------------


def test_to_json_stays_the_crates_form(core, make_manager) -> None:
    m = make_manager()
    root_info = m.create_session()
    kid_info = m.create_child_session(root_info.id)
    for info in (root_info, kid_info):
        text = info.to_json()
        assert list(json.loads(text)) == INFO_KEYS
        assert "parent_id" not in text and "root_id" not in text
        assert list(info.to_dict()) == INFO_KEYS
        assert list(json.loads(info.to_json(indent=2))) == INFO_KEYS
    # Equal documents but for the id: the child's JSON has no tree at all.
    root_doc, kid_doc = json.loads(root_info.to_json()), json.loads(kid_info.to_json())
    assert root_doc["recursion_depth"] == 0 and kid_doc["recursion_depth"] == 1
    # Reading gives a root.
    back = core.SessionInfo.from_json(kid_info.to_json())
    assert back.id == kid_info.id
    assert back.parent_id is None
    assert back.root_id == kid_info.id
    assert back != kid_info  # the tree links take part in ==
    assert back.to_json() == kid_info.to_json()
    again = core.SessionInfo.from_dict(kid_info.to_dict())
    assert (again.parent_id, again.root_id) == (None, kid_info.id)
    assert core.SessionInfo.from_json(root_info.to_json()) == root_info


def test_session_info_tree_keywords(core, make_manager) -> None:
    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    grand_info = m.create_child_session(kid)
    fields = (
        grand_info.id,
        grand_info.state,
        grand_info.created_at_ns,
        grand_info.expires_at_ns,
        grand_info.extension_count,
        grand_info.recursion_depth,
        grand_info.budget_status,
        grand_info.vm_instance_id,
        grand_info.context_variables,
        grand_info.current_snapshot_id,
        grand_info.snapshot_count,
    )
    built = core.SessionInfo(*fields, parent_id=kid, root_id=root)
    assert built == grand_info
    assert hash(built) == hash(grand_info)
    assert (built.parent_id, built.root_id) == (kid, root)
    by_text = core.SessionInfo(*fields, parent_id=str(kid), root_id=str(root))
    assert by_text == grand_info
    as_root = core.SessionInfo(*fields)
    assert (as_root.parent_id, as_root.root_id) == (None, grand_info.id)
    assert core.SessionInfo(*fields, root_id=None) == as_root
    assert as_root != grand_info
    assert core.SessionInfo(*fields, parent_id=kid, root_id=kid) != grand_info
    # repr: the links appear for a child only.
    assert "parent_id" not in repr(as_root) and "root_id" not in repr(as_root)
    text = repr(grand_info)
    assert "parent_id" in text and "root_id" in text
    assert str(kid) in text and str(root) in text
    root_text = repr(m.get_session(root))
    assert "parent_id" not in root_text and "root_id" not in root_text


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_childs_session_info_pickles_with_its_links(protocol, make_manager) -> None:
    import pickle

    m = make_manager()
    root = m.create_session().id
    kid = m.create_child_session(root).id
    info = m.create_child_session(kid)
    again = pickle.loads(pickle.dumps(info, protocol=protocol))
    assert again == info
    assert (again.parent_id, again.root_id) == (kid, root)
    top = pickle.loads(pickle.dumps(m.get_session(root), protocol=protocol))
    assert (top.parent_id, top.root_id) == (None, root)


# --------------------------------------------------------------------------
# dump and load keep the trees
# --------------------------------------------------------------------------


def _populated_tree(m: Any, clock: Any) -> types.SimpleNamespace:
    root = m.create_session().id
    m.increment_recursion_depth(root)
    kid = m.create_child_session(root, token_budget=5000).id  # start depth 2
    m.increment_recursion_depth(kid)
    m.increment_recursion_depth(kid)  # depth 4
    grand = m.create_child_session(kid).id  # start depth 5
    m.increment_recursion_depth(grand)  # depth 6
    sib = m.create_child_session(root).id  # start depth 2
    other = m.create_session().id
    m.assign_vm(kid, "vm-kid")
    m.assign_vm(grand, "vm-grand")
    m.set_context_variable(grand, "task", "sub \u2615")
    m.record_snapshot_created(sib, "snap-sib", True)
    m.charge_tokens(grand, 30)
    m.charge_time(grand, 7)
    m.charge_tokens(sib, 4)
    gone = m.create_child_session(kid).id
    m.destroy_session(gone)
    clock.advance(seconds=1)
    return types.SimpleNamespace(root=root, kid=kid, grand=grand, sib=sib, other=other)


def test_dump_and_load_keep_the_trees(core, clock, make_manager, tmp_path: pathlib.Path) -> None:
    m = make_manager(session_duration_secs=600, max_recursion_depth=8)
    t = _populated_tree(m, clock)
    path = tmp_path / "tree.jsonl"
    m.dump(path)
    loaded = core.SessionManager.load(path, clock=clock)
    assert loaded.list_sessions() == m.list_sessions()  # parent_id, root_id included
    assert counters(loaded) == counters(m)
    for info in m.list_sessions():
        assert loaded.children(info.id) == m.children(info.id)
    assert loaded.get_session(t.grand).parent_id == t.kid
    assert loaded.get_session(t.grand).root_id == t.root
    assert loaded.get_session(t.other).parent_id is None
    again = tmp_path / "again.jsonl"
    loaded.dump(again)
    assert again.read_bytes() == path.read_bytes()
    # The start depths came back: decrements saturate where they did.
    assert [loaded.decrement_recursion_depth(t.grand) for _ in range(3)] == [5, 5, 5]
    assert [loaded.decrement_recursion_depth(t.kid) for _ in range(4)] == [3, 2, 2, 2]
    assert [loaded.decrement_recursion_depth(t.sib) for _ in range(2)] == [2, 2]
    assert [loaded.decrement_recursion_depth(t.root) for _ in range(2)] == [0, 0]
    with pytest.raises(ValueError):
        loaded.update_budget(t.kid, BudgetStatus(current_recursion_depth=1))
    # Charges still roll up, the depth limit and the expiry cap still apply.
    assert loaded.charge_tokens(t.grand, 5) == 35
    assert used(loaded, t.kid)[0] == 35
    assert used(loaded, t.root)[0] == 39
    assert used(loaded, t.sib)[0] == 4
    assert loaded.create_child_session(t.grand).recursion_depth == 6
    # Validity still flows down, and removal still cascades.
    loaded.update_session_state(t.root, SessionState.TERMINATED)
    assert loaded.is_session_valid(t.grand) is False
    with pytest.raises(InvalidSessionState) as excinfo:
        loaded.charge_tokens(t.grand, 1)
    assert str(excinfo.value.session_id) == str(t.root)
    loaded.destroy_session(t.root)
    assert [i.id for i in loaded.list_sessions()] == [t.other]
    assert loaded.get_session_for_vm("vm-kid") is None
    assert loaded.get_session_for_vm("vm-grand") is None
    stats = loaded.get_stats()
    assert stats.active_sessions == 1 and stats.sessions_with_vm == 0
    assert stats.total_sessions_destroyed == m.get_stats().total_sessions_destroyed + 5


def test_dump_and_load_of_children_listed_before_their_parents(
    core, clock, make_manager, tmp_path: pathlib.Path
) -> None:
    # In one millisecond ids order by their random bits, so many children
    # come before their parent in the file (id order): load must not care.
    m = make_manager(session_duration_secs=600)
    roots = [m.create_session().id for _ in range(3)]
    kids = [m.create_child_session(r).id for r in roots for _ in range(8)]
    grand = [m.create_child_session(k).id for k in kids[::3]]
    order = [str(i.id) for i in m.list_sessions()]
    parent_of = {str(i.id): str(i.parent_id) for i in m.list_sessions() if i.parent_id is not None}
    assert any(order.index(c) < order.index(p) for c, p in parent_of.items())
    path = tmp_path / "d.jsonl"
    m.dump(path)
    loaded = core.SessionManager.load(path, clock=clock)
    assert loaded.list_sessions() == m.list_sessions()
    for sid in [*roots, *kids, *grand]:
        assert loaded.children(sid) == m.children(sid)
    assert all(loaded.decrement_recursion_depth(g) == 2 for g in grand)
    loaded.destroy_session(roots[0])
    assert len(loaded) == len(m) - 1 - 8 - len([k for k in kids[::3] if k in kids[:8]])


def test_the_dump_file_of_a_tree(core, clock, make_manager, tmp_path: pathlib.Path) -> None:
    m = make_manager(session_duration_secs=600, max_recursion_depth=8)
    t = _populated_tree(m, clock)
    path = tmp_path / "tree.jsonl"
    m.dump(path)
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    header = json.loads(lines[0])
    assert header["format"] == "rlm_fast.dump" and header["version"] == 2
    assert header["created"] == 6 and header["destroyed"] == 1 and header["sessions"] == 5
    infos = m.list_sessions()
    starts = {str(t.root): None, str(t.other): None, str(t.kid): 2, str(t.grand): 5, str(t.sib): 2}
    body = lines[1:-1]
    assert len(body) == len(infos)
    for info, line in zip(infos, body):  # one line per session, in id order
        start = starts[str(info.id)]
        if start is None:
            assert line == info.to_json()  # a root's line is the crate's document
        else:
            # docs/trees.md: the crate's serde document followed by two more
            # keys, "parent_id" and "start_depth".
            assert line == (
                info.to_json()[:-1] + f',"parent_id":"{info.parent_id}","start_depth":{start}}}'
            )


_IN_PROCESS = [PY] + ([C] if C is not None else [])


@pytest.mark.parametrize(
    "dumper, loader",
    [pytest.param(a, b, id=f"{a.name}-to-{b.name}") for a in _IN_PROCESS for b in _IN_PROCESS],
)
def test_one_cores_tree_dump_loads_in_the_other(dumper, loader, clock, tmp_path) -> None:
    from rlm_fast import RlmConfig

    m = dumper.SessionManager(
        RlmConfig(session_duration_secs=600, max_recursion_depth=8), clock=clock
    )
    t = _populated_tree(m, clock)
    path = tmp_path / "tree.jsonl"
    m.dump(path)
    loaded = loader.SessionManager.load(path, clock=clock)

    def rows(manager: Any) -> list[tuple[Any, ...]]:
        return [
            (str(i.id), str(i.parent_id), str(i.root_id), i.to_json())
            for i in manager.list_sessions()
        ]

    assert rows(loaded) == rows(m)
    again = tmp_path / "again.jsonl"
    loaded.dump(again)
    assert again.read_bytes() == path.read_bytes()
    assert [loaded.decrement_recursion_depth(str(t.grand)) for _ in range(3)] == [5, 5, 5]
    assert [str(c) for c in loaded.children(str(t.root))] == [str(c) for c in m.children(t.root)]


def _write_dump(path: pathlib.Path, header: dict[str, Any], lines: list[str]) -> None:
    """A dump file around `lines` with a correct count and checksum, so that
    only the checks behind the checksum can refuse it."""
    body = "".join(line + "\n" for line in [json.dumps(header), *lines]).encode("utf-8")
    end = {"end": "rlm_fast.dump", "sessions": len(lines), "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(body + json.dumps(end).encode() + b"\n")


def test_load_refuses_a_broken_tree(core, clock, make_manager, tmp_path: pathlib.Path) -> None:
    m = make_manager(session_duration_secs=600, max_recursion_depth=8)
    t = _populated_tree(m, clock)
    path = tmp_path / "tree.jsonl"
    m.dump(path)
    text = path.read_text(encoding="utf-8").split("\n")[:-1]
    header, lines = json.loads(text[0]), text[1:-1]
    docs = [json.loads(line) for line in lines]
    index = {d["id"]: i for i, d in enumerate(docs)}

    def variant(change: Any) -> list[str]:
        changed = [dict(d) for d in docs]
        change(changed)
        return [json.dumps(d, ensure_ascii=False, separators=(",", ":")) for d in changed]

    # The control: the same lines, rewritten, load.
    _write_dump(path, header, variant(lambda ds: None))
    assert len(core.SessionManager.load(path, clock=clock)) == 5

    def missing_parent(ds: list[dict[str, Any]]) -> None:
        ds[index[str(t.grand)]]["parent_id"] = str(core.SessionId())

    def cycle(ds: list[dict[str, Any]]) -> None:
        ds[index[str(t.kid)]]["parent_id"] = str(t.grand)  # kid -> grand -> kid

    def too_deep(ds: list[dict[str, Any]]) -> None:
        d = ds[index[str(t.grand)]]
        d["start_depth"] = d["recursion_depth"] + 1

    def own_parent(ds: list[dict[str, Any]]) -> None:
        ds[index[str(t.sib)]]["parent_id"] = str(t.sib)

    for change in (missing_parent, cycle, too_deep, own_parent):
        _write_dump(path, header, variant(change))
        with pytest.raises(Serialization):
            core.SessionManager.load(path, clock=clock)


def test_a_version_1_file_loads_as_roots(core, clock, make_manager, tmp_path: pathlib.Path) -> None:
    m = make_manager(session_duration_secs=600)
    ids = [m.create_session().id for _ in range(3)]
    m.charge_tokens(ids[0], 5)
    path = tmp_path / "v1.jsonl"
    m.dump(path)
    text = path.read_text(encoding="utf-8").split("\n")[:-1]
    header, lines = json.loads(text[0]), text[1:-1]
    _write_dump(path, {**header, "version": 1}, lines)
    loaded = core.SessionManager.load(path, clock=clock)
    assert loaded.list_sessions() == m.list_sessions()
    for info in loaded.list_sessions():
        assert (info.parent_id, info.root_id) == (None, info.id)
        assert loaded.children(info.id) == []
