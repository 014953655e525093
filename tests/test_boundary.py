"""SPEC 7 at the boundary, beyond tests/test_bad_input.py, on both cores.

test_bad_input.py covers: non-str and malformed ids for every id-taking
method, token messages, the common bad VM ids / keys / values / snapshot ids,
bad charges, bad states, non-BudgetStatus budgets and the order of checks.
This file adds what it leaves out: huge numbers (2**64, 10**100, numbers too
long to print), other numeric types, more non-str types, surrogate pairs,
very long and empty strings (accepted, exactly), very long malformed ids,
`set_as_current`, budgets of other shapes, the constructors, a misbehaving
clock on every method that reads it, the bulk API, wrong arity, the result
types' own methods, and BudgetTracker's state after refused calls. Every
refused call must leave the manager exactly as it was (`list_sessions()` and
`get_stats()` compared before and after).
"""

from __future__ import annotations

import decimal
import enum
import fractions

import pytest
from conftest import table_state

from rlm_fast import (
    BackendType,
    ConfigError,
    InvalidSessionToken,
    KgStrictness,
    RlmConfig,
    SessionExpired,
    SessionNotFound,
    SessionState,
)

U64_MAX = 2**64 - 1
NS = 10**9
GOOD_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well formed, in no manager
HUGE = 10**5000  # more digits than int->str conversion allows by default

try:
    import numpy as np
except ImportError:
    np = None


class IntSub(int):
    pass


class StrSub(str):
    pass


class HostileStr(str):
    """A str subclass whose methods all raise: only its value may be used."""

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        raise RuntimeError("encode")


class StrLike:
    """Not a str, though it converts to one."""

    def __str__(self) -> str:
        return "vm-like"


def snapshot(m):  # type: ignore[no-untyped-def]
    return table_state(m)


def assert_refused(m, exc, call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """call(*args) raises exc and changes nothing; returns the exception."""
    before = snapshot(m)
    with pytest.raises(exc) as info:
        call(*args, **kwargs)
    assert snapshot(m) == before, f"{call.__name__}{args!r} changed the manager"
    return info.value


@pytest.fixture
def table(make_manager, clock):  # type: ignore[no-untyped-def]
    """A manager with a live, a terminated and an expired (not yet cleaned
    up) session; the live one holds a VM, a context variable, a snapshot,
    charges and depth."""
    m = make_manager(session_duration_secs=3600)
    expired = m.create_session().id
    clock.advance(seconds=3000)
    live = m.create_session().id
    m.assign_vm(live, "vm-a")
    m.set_context_variable(live, "k", "v")
    m.record_snapshot_created(live, "snap-1", set_as_current=True)
    m.charge_tokens(live, 12)
    m.charge_time(live, 34)
    m.increment_recursion_depth(live)
    term = m.create_session().id
    m.assign_vm(term, "vm-t")
    m.update_session_state(term, SessionState.TERMINATED)
    clock.advance(seconds=700)  # `expired` is past its expiry, the others not
    assert not m.is_session_valid(expired) and m.is_session_valid(live)
    return m, {"live": live, "terminated": term, "expired": expired, "unknown": GOOD_ID}


KINDS = ("live", "terminated", "expired", "unknown")


# --------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------

TOO_BIG_OR_NEGATIVE = (2**64, 2**64 + 2**63, 10**100, -1, -(2**63), -(10**100), IntSub(2**64), IntSub(-1))
NOT_INTS = [
    True,
    False,
    1.0,
    float("nan"),
    float("inf"),
    complex(1, 0),
    decimal.Decimal(5),
    fractions.Fraction(5, 1),
    "5",
    b"5",
    None,
    [5],
]
if np is not None:
    NOT_INTS += [np.int64(5), np.uint64(5), np.bool_(True)]


@pytest.mark.parametrize("method", ["charge_tokens", "charge_time"])
@pytest.mark.parametrize("kind", KINDS)
def test_charges_out_of_range_on_every_kind_of_session(method, kind, table) -> None:
    # The argument is checked before the table is looked at, so the error
    # is the argument's whatever the session (SPEC 10, order of checks).
    m, ids = table
    for bad in TOO_BIG_OR_NEGATIVE:
        assert_refused(m, ValueError, getattr(m, method), ids[kind], bad)
    for bad in NOT_INTS:
        assert_refused(m, TypeError, getattr(m, method), ids[kind], bad)


@pytest.mark.parametrize("method, name", [("charge_tokens", "tokens"), ("charge_time", "elapsed_ms")])
@pytest.mark.parametrize("bad", [HUGE, -HUGE], ids=["10**5000", "-10**5000"])
def test_a_charge_too_long_to_print_names_its_argument(method, name, bad, table) -> None:
    # A ValueError that says which argument is wrong, not the int->str
    # conversion limit's "Exceeds the limit (4300 digits)".
    m, ids = table
    err = assert_refused(m, ValueError, getattr(m, method), ids["live"], bad)
    assert str(err).startswith(f"{name} must be in 0..2**64-1"), str(err)


@pytest.mark.parametrize("method, field", [("charge_tokens", "tokens_used"), ("charge_time", "time_used_ms")])
def test_charges_at_the_edges(method, field, table) -> None:
    m, ids = table
    live = ids["live"]
    charge = getattr(m, method)
    used = charge(live, 0)
    assert type(used) is int
    result = charge(live, IntSub(1))  # an int subclass counts as its value
    assert result == used + 1 and type(result) is int
    # Up to exactly 2**64-1 is recorded (over budget: it stays, then raises).
    with pytest.raises(Exception) as info:
        charge(live, U64_MAX - result)
    assert type(info.value).__name__ in ("TokenBudgetExceeded", "TimeBudgetExceeded")
    assert getattr(m.get_session(live).budget_status, field) == U64_MAX
    # One more is refused whole, nothing recorded.
    assert_refused(m, ValueError, charge, live, 1)
    assert_refused(m, ValueError, charge, live, U64_MAX)
    assert charge.__self__ is m


# --------------------------------------------------------------------------
# strings
# --------------------------------------------------------------------------

MORE_NOT_STRS = [
    bytearray(b"vm"),
    memoryview(b"vm"),
    10**100,
    {"vm": 1},
    ("vm",),
    StrLike(),
    SessionState.READY,
]
# Each of these is two lone surrogates to Python (a UTF-16 pair spelled as
# code points), or a surrogate hidden in a long string: not UTF-8.
NOT_UTF8 = ["\ud83d\ude00", "x" * 100_000 + "\udc80", "\udfff" + "ok"]

STR_ARGUMENT_CALLS = {
    # name -> (method, function building the call's args from (sid, value))
    "vm_instance_id": ("assign_vm", lambda sid, v: (sid, v)),
    "key (set)": ("set_context_variable", lambda sid, v: (sid, v, "value")),
    "value": ("set_context_variable", lambda sid, v: (sid, "key", v)),
    "key (get)": ("get_context_variable", lambda sid, v: (sid, v)),
    "key (delete)": ("delete_context_variable", lambda sid, v: (sid, v)),
    "snapshot_id (created)": ("record_snapshot_created", lambda sid, v: (sid, v, True)),
    "snapshot_id (restored)": ("record_snapshot_restored", lambda sid, v: (sid, v)),
}


@pytest.mark.parametrize("argument", list(STR_ARGUMENT_CALLS))
@pytest.mark.parametrize("kind", KINDS)
def test_str_arguments_of_other_types_and_not_utf8(argument, kind, table) -> None:
    m, ids = table
    method, build = STR_ARGUMENT_CALLS[argument]
    for bad in MORE_NOT_STRS:
        assert_refused(m, TypeError, getattr(m, method), *build(ids[kind], bad))
    for bad in NOT_UTF8:
        assert_refused(m, ValueError, getattr(m, method), *build(ids[kind], bad))


def test_get_session_for_vm_other_types_and_not_utf8(table) -> None:
    m, _ = table
    for bad in MORE_NOT_STRS:
        assert_refused(m, TypeError, m.get_session_for_vm, bad)
    for bad in NOT_UTF8:
        assert_refused(m, ValueError, m.get_session_for_vm, bad)
    assert m.get_session_for_vm("x" * 1_000_000) is None


def test_very_long_strings_are_kept_exactly(table) -> None:
    m, ids = table
    live = ids["live"]
    big = "\U0001f600" + "x" * (8 << 20) + "\x00é"  # 8 MiB and some
    m.assign_vm(live, big)
    assert m.get_session_for_vm(big) == live
    assert m.get_assigned_vm(live) == big
    m.set_context_variable(live, big, big)
    assert m.get_context_variable(live, big) == big
    m.record_snapshot_created(live, big, set_as_current=True)
    assert m.get_current_snapshot(live) == big
    info = m.get_session(live)
    assert info.vm_instance_id == big and info.context_variables[big] == big
    assert m.delete_context_variable(live, big) == big
    assert m.release_vm(live) == big
    assert m.get_session_for_vm(big) is None


def test_empty_strings_are_values_not_errors(table) -> None:
    # Only a VM id must be non-empty (SPEC 7); an empty key, value or
    # snapshot id is a value like any other.
    m, ids = table
    live = ids["live"]
    m.set_context_variable(live, "", "")
    assert m.get_context_variable(live, "") == ""
    assert m.get_all_context_variables(live)[""] == ""
    assert m.delete_context_variable(live, "") == ""
    assert m.get_context_variable(live, "") is None
    m.record_snapshot_created(live, "", set_as_current=True)
    assert m.get_current_snapshot(live) == ""
    m.record_snapshot_restored(live, "")
    assert m.get_current_snapshot(live) == ""
    assert_refused(m, ValueError, m.assign_vm, live, "")
    assert_refused(m, ValueError, m.assign_vm, live, StrSub(""))


def test_str_subclasses_are_read_as_their_value_only(table) -> None:
    # No method of a caller's str subclass runs (its __hash__, __eq__,
    # __str__, encode all raise here), and what is stored is a plain str.
    m, ids = table
    live = ids["live"]
    m.assign_vm(live, HostileStr("vm-h"))
    m.set_context_variable(live, HostileStr("kh"), HostileStr("vh"))
    m.record_snapshot_restored(live, HostileStr("snap-h"))
    assert m.get_session_for_vm(HostileStr("vm-h")) == live
    assert type(m.get_assigned_vm(live)) is str
    assert m.get_context_variable(live, HostileStr("kh")) == "vh"
    assert m.get_session(HostileStr(str(live))).id == live
    assert m.get_session(HostileStr(str(live).lower())).id == live
    info = m.get_session(live)
    assert [type(k) for k in info.context_variables] == [str] * len(info.context_variables)
    assert type(info.current_snapshot_id) is str


@pytest.mark.sync_redis("calls recursion(id) without entering it; AsyncRedisSessionManager checks the id at `async with` entry (documented), not at the call")
@pytest.mark.parametrize("length", [27, 1000, 10**7])
def test_very_long_malformed_ids(length, table) -> None:
    m, _ = table
    raw = "0" * length
    for name in ("get_session", "destroy_session", "charge_tokens", "recursion"):
        args = (raw, 1) if name == "charge_tokens" else (raw,)
        err = assert_refused(m, InvalidSessionToken, getattr(m, name), *args)
        assert len(str(err)) < 200  # at most 64 characters of the token
    assert m.is_session_valid(raw) is False
    assert (raw in m) is False


def test_malformed_ids_with_every_kind_of_character(table) -> None:
    m, _ = table
    for raw in (
        GOOD_ID[:25] + "\x00",
        GOOD_ID[:25] + "\U0001f600",
        GOOD_ID[:25] + "\u212a",  # KELVIN SIGN: "k" under Unicode case folding
        GOOD_ID[:25] + "\u0131",  # dotless i
        "\uff10" * 26,  # fullwidth digit zero
        GOOD_ID.replace("0", "O"),
        GOOD_ID.replace("1", "l"),
        "0" * 13 + "\udc80" + "0" * 12,
    ):
        assert_refused(m, InvalidSessionToken, m.get_session, raw)
        assert m.is_session_valid(raw) is False
        assert (raw in m) is False


@pytest.mark.parametrize(
    "other",
    [{}, [], set(), {"a": 1}, bytearray(b"x"), 10**100, HUGE],
    ids=["dict", "list", "set", "dict1", "bytearray", "10**100", "10**5000"],
)
def test_contains_never_raises(other, table) -> None:
    m, _ = table
    before = snapshot(m)
    assert (other in m) is False
    assert snapshot(m) == before


# --------------------------------------------------------------------------
# states, set_as_current, budgets
# --------------------------------------------------------------------------


class NotAState(enum.Enum):
    READY = "Ready"


@pytest.mark.parametrize("kind", KINDS)
def test_states_of_other_types(kind, table) -> None:
    m, ids = table
    for bad in (KgStrictness.NORMAL, BackendType.LOCAL, NotAState.READY, b"Ready",
                bytearray(b"Ready"), 0, True, 10**100, HUGE):
        assert_refused(m, TypeError, m.update_session_state, ids[kind], bad)
    for bad in ("x" * 10**6, "Ready\x00", "Ready\ud800", "\u0280eady", "Terminated "):
        err = assert_refused(m, ValueError, m.update_session_state, ids[kind], bad)
        assert len(str(err)) < 400  # the value is cut in the message


@pytest.mark.parametrize("kind", KINDS)
def test_set_as_current_must_be_a_bool(kind, table) -> None:
    m, ids = table
    bads = [1, 0, None, "yes", 1.0, [], IntSub(1)]
    if np is not None:
        bads.append(np.bool_(True))
    for bad in bads:
        assert_refused(m, TypeError, m.record_snapshot_created, ids[kind], "snap-x", bad)
        assert_refused(
            m, TypeError, m.record_snapshot_created, ids[kind], "snap-x", set_as_current=bad
        )


def test_update_budget_with_budgets_of_other_shapes(core, table) -> None:
    m, ids = table

    class Duck:  # every attribute of a BudgetStatus, but not one
        token_budget = 1
        tokens_used = 0
        time_budget_ms = 1
        time_used_ms = 0
        max_recursion_depth = 1
        current_recursion_depth = 0

    for kind in KINDS:
        for bad in (Duck(), core.SessionStats(), m.get_session(ids["live"]), 10**100, [1, 2]):
            assert_refused(m, TypeError, m.update_budget, ids[kind], bad)


@pytest.mark.parametrize("field", range(6))
def test_budget_status_refuses_out_of_range_fields(core, field) -> None:
    for bad, exc in ((2**64, ValueError), (-1, ValueError), (10**100, ValueError),
                     (True, TypeError), (1.0, TypeError), (None, TypeError), ("1", TypeError)):
        values = [1] * 6
        values[field] = bad
        with pytest.raises(exc):
            core.BudgetStatus(*values)
    values = [U64_MAX] * 4 + [2**32 - 1] * 2
    assert core.BudgetStatus(*values)._astuple() == tuple(values)


def test_update_budget_takes_each_field_at_its_maximum(core, table) -> None:
    m, ids = table
    # u64 budgets, u32 depths (the crate's types)
    m.update_budget(ids["live"], core.BudgetStatus(*[U64_MAX] * 4, 2**32 - 1, 2**32 - 1))
    info = m.get_session(ids["live"])
    assert info.recursion_depth == info.budget_status.current_recursion_depth == 2**32 - 1
    assert_refused(m, ValueError, m.charge_tokens, ids["live"], 1)
    assert_refused(m, ValueError, m.charge_time, ids["live"], 1)
    with pytest.raises(Exception) as err:
        m.increment_recursion_depth(ids["live"])  # depth == max: refused
    assert type(err.value).__name__ == "RecursionDepthExceeded"
    assert err.value.depth == 2**32  # reported past the u32 limit, exactly


# --------------------------------------------------------------------------
# constructors and the clock
# --------------------------------------------------------------------------


def test_constructor_arguments(core, clock) -> None:
    for bad in ({}, "config", 5, RlmConfig):
        with pytest.raises(TypeError):
            core.SessionManager(bad)
    for bad in (5, "clock", 1.5):
        with pytest.raises(TypeError):
            core.SessionManager(RlmConfig(), clock=bad)
    with pytest.raises(TypeError):
        core.SessionManager(RlmConfig(), clock)  # clock is keyword-only
    for fields in ({"token_budget": -1}, {"token_budget": 2**64}, {"session_duration_secs": 2**63},
                   {"max_extensions": True}, {"pool_min_size": 11}, {"backend_preference": []}):
        with pytest.raises(ConfigError):
            core.SessionManager(RlmConfig(**fields))


@pytest.mark.parametrize("field", ["token_budget", "session_duration_secs", "pool_min_size"])
def test_config_with_an_int_too_long_to_print_is_a_config_error(core, field) -> None:
    # RlmConfig.validate() raises ConfigError for any bad field (SPEC 2),
    # including an int with more digits than int->str allows.
    with pytest.raises(ConfigError):
        RlmConfig(**{field: HUGE}).validate()
    with pytest.raises(ConfigError):
        core.SessionManager(RlmConfig(**{field: HUGE}))


class ClockFailed(Exception):
    pass


class BadClock:
    def __init__(self, start: int) -> None:
        self.now = start
        self.mode = ""

    def __call__(self) -> object:
        if self.mode == "raise":
            raise ClockFailed
        return {
            "": self.now,
            "float": float(self.now),
            "bool": True,
            "none": None,
            "high": 2**63,
            "low": -(2**63) - 1,
            "huge": HUGE,
        }[self.mode]


CLOCK_CASES = [
    ("raise", ClockFailed),
    ("float", TypeError),
    ("bool", TypeError),
    ("none", TypeError),
    ("high", ValueError),
    ("low", ValueError),
]

CLOCK_CALLS = {
    "create_session": (),
    "update_session_state": (SessionState.PAUSED,),
    "is_session_valid": (),
    "validate_session": (),
    "extend_session": (),
    "assign_vm": ("vm-b",),
    "set_context_variable": ("k2", "v2"),
    "delete_context_variable": ("k",),
    "update_budget": (None,),  # replaced by a BudgetStatus below
    "increment_recursion_depth": (),
    "decrement_recursion_depth": (),
    "charge_tokens": (1,),
    "charge_time": (1,),
    "check_budget": (),
    "record_snapshot_created": ("snap-2",),
    "record_snapshot_restored": ("snap-2",),
    "clear_snapshot_tracking": (),
    "cleanup_expired_sessions": (),
    "recursion": (),
}


@pytest.mark.parametrize("name", list(CLOCK_CALLS))
@pytest.mark.parametrize("mode, exc", CLOCK_CASES)
def test_a_misbehaving_clock_changes_nothing(core, name, mode, exc) -> None:
    clock = BadClock(1_767_225_600 * NS)
    m = core.SessionManager(RlmConfig(), clock=clock)
    sid = m.create_session().id
    m.set_context_variable(sid, "k", "v")
    args = CLOCK_CALLS[name]
    if name == "update_budget":
        args = (core.BudgetStatus(),)
    listing = snapshot(m)
    clock.mode = mode

    def call() -> None:
        if name == "create_session" or name == "cleanup_expired_sessions":
            getattr(m, name)()
        elif name == "recursion":
            with m.recursion(sid):
                pytest.fail("entered with a bad clock")
        else:
            getattr(m, name)(sid, *args)

    with pytest.raises(exc):
        call()
    clock.mode = ""
    assert snapshot(m) == listing


def test_a_clock_too_long_to_print(core) -> None:
    clock = BadClock(1_767_225_600 * NS)
    m = core.SessionManager(RlmConfig(), clock=clock)
    clock.mode = "huge"
    with pytest.raises(ValueError) as err:
        m.create_session()
    assert "clock" in str(err.value)
    clock.mode = ""
    assert len(m) == 0


# --------------------------------------------------------------------------
# the bulk API, arity, result types, BudgetTracker
# --------------------------------------------------------------------------


@pytest.mark.skipif(np is None, reason="the bulk API needs numpy")
def test_validate_many_bad_input(table) -> None:
    m, ids = table
    for bad in (5, None, [ids["live"], 5], [None], np.zeros((2, 2), dtype="V16"),
                np.zeros(3, dtype="V8"), np.zeros(3, dtype="i8")):
        assert_refused(m, TypeError, m.validate_many, bad)
    # Malformed strings are "not valid", not errors.
    assert m.validate_many(["nope", "0" * 10**6, ids["live"]]).tolist() == [False, False, True]
    assert m.validate_many(np.zeros(0, dtype="V16")).tolist() == []


ARITY = {
    "get_session": 1, "update_session_state": 2, "is_session_valid": 1,
    "validate_session": 1, "extend_session": 1, "assign_vm": 2, "release_vm": 1,
    "get_assigned_vm": 1, "get_session_for_vm": 1, "set_context_variable": 3,
    "get_context_variable": 2, "get_all_context_variables": 1, "delete_context_variable": 2,
    "update_budget": 2, "increment_recursion_depth": 1, "decrement_recursion_depth": 1,
    "record_snapshot_restored": 2, "get_current_snapshot": 1, "clear_snapshot_tracking": 1,
    "charge_tokens": 2, "charge_time": 2, "check_budget": 1, "destroy_session": 1,
    "recursion": 1, "create_session": 0, "cleanup_expired_sessions": 0, "get_stats": 0,
    "list_sessions": 0,
}


@pytest.mark.parametrize("name", list(ARITY))
def test_wrong_number_of_arguments(name, table) -> None:
    m, ids = table
    n = ARITY[name]
    good = [ids["live"], "Ready", "x"][:n]
    assert_refused(m, TypeError, getattr(m, name), *good, "extra")
    if n:
        assert_refused(m, TypeError, getattr(m, name), *good[:-1])


def test_record_snapshot_created_arity(table) -> None:
    m, ids = table
    assert_refused(m, TypeError, m.record_snapshot_created, ids["live"])
    assert_refused(m, TypeError, m.record_snapshot_created, ids["live"], "s", True, "extra")
    assert_refused(m, TypeError, m.record_snapshot_created, ids["live"], "s", bogus=True)


def test_result_methods_bad_input(table) -> None:
    m, ids = table
    info = m.get_session(ids["live"])
    for bad in ("1", 1.5, True, [1]):
        with pytest.raises(TypeError):
            info.is_expired(bad)
    for bad, exc in ((-1, ValueError), (2**64, ValueError), (HUGE, ValueError),
                     (True, TypeError), (1.5, TypeError), (None, TypeError)):
        with pytest.raises(exc):
            info.can_extend(bad)
    assert info.can_extend(U64_MAX) is True
    assert info.is_expired(10**100) is True  # any int is a time to compare with
    assert info.is_expired(-(10**100)) is False


@pytest.mark.in_process("BudgetTracker is in-process only")
def test_budget_tracker_refused_calls_change_nothing(core, clock) -> None:
    tracker = core.BudgetTracker(RlmConfig(token_budget=100, max_recursion_depth=2), clock=clock)
    tracker.add_tokens(10)
    tracker.push_recursion()
    before = tracker.status()
    for bad, exc in ((-1, ValueError), (2**64, ValueError), (10**100, ValueError),
                     (True, TypeError), (1.0, TypeError), (None, TypeError), ("1", TypeError)):
        with pytest.raises(exc):
            tracker.add_tokens(bad)
        if bad is not None:  # child(None) means "what is left"
            for kwargs in ({"remaining_tokens": bad}, {"remaining_time_ms": bad}):
                with pytest.raises(exc):
                    tracker.child(**kwargs)
        assert tracker.status() == before
    with pytest.raises(ValueError):
        tracker.add_tokens(U64_MAX)  # past 2**64-1: refused whole
    assert tracker.status() == before
    for bad in (None, {}, before._astuple()):
        with pytest.raises(TypeError):
            core.BudgetTracker.from_status(bad)
    with pytest.raises(TypeError):
        core.BudgetTracker(RlmConfig(), clock=5)
    with pytest.raises(ConfigError):
        core.BudgetTracker(RlmConfig(token_budget=-1))


def test_expired_session_with_bad_arguments_reports_the_argument(table) -> None:
    # SPEC 10: argument checks come before existence, TERMINATED and expiry.
    m, ids = table
    expired = ids["expired"]
    assert_refused(m, SessionExpired, m.charge_tokens, expired, 1)
    assert_refused(m, ValueError, m.charge_tokens, expired, -1)
    assert_refused(m, TypeError, m.assign_vm, expired, None)
    assert_refused(m, ValueError, m.update_session_state, expired, "bogus")
    assert_refused(m, TypeError, m.record_snapshot_created, expired, "s", 1)
    assert_refused(m, SessionNotFound, m.charge_tokens, GOOD_ID, 1)


def test_nested_recursion_scopes_stop_at_the_maximum(table) -> None:
    # Scopes entered one inside another until the maximum refuses one; all
    # exits bring the depth back to where it was.
    m, ids = table
    live = ids["live"]
    depth = m.get_session(live).recursion_depth
    scopes = []
    while True:
        scope = m.recursion(live)
        try:
            scope.__enter__()
        except Exception as exc:  # noqa: BLE001
            assert type(exc).__name__ == "RecursionDepthExceeded"
            break
        scopes.append(scope)
        assert len(scopes) < 1000
    for scope in reversed(scopes):
        scope.__exit__(None, None, None)
    assert m.get_session(live).recursion_depth == depth
