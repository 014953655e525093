"""SPEC section 7 (and 10): bad input, for every method, on both cores.

Every rejected call must leave the manager exactly as it was: the test
compares `list_sessions()` and `get_stats()` before and after.
"""

from __future__ import annotations

import pytest
from conftest import table_state

from rlm_fast import (
    BudgetStatus,
    InvalidSessionToken,
    RlmError,
    SessionNotFound,
    SessionState,
)

GOOD_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well formed, in no manager

# Neither SessionId nor str.
NOT_IDS = [
    123,
    None,
    1.5,
    GOOD_ID.encode(),
    bytearray(GOOD_ID.encode()),
    [GOOD_ID],
    object(),
    int(2**100),
]

# Strings that are not 26 Crockford base32 characters with a first char <= 7.
MALFORMED_IDS = [
    "",
    "x",
    GOOD_ID[:-1],
    GOOD_ID + "0",
    "8" + GOOD_ID[1:],
    "Z" * 26,
    GOOD_ID[:-1] + "I",
    GOOD_ID[:-1] + "L",
    GOOD_ID[:-1] + "O",
    GOOD_ID[:-1] + "U",
    GOOD_ID[:-1] + "u",
    " " + GOOD_ID[1:],
    GOOD_ID[:-1] + "\n",
    GOOD_ID[:-1] + "é",
    GOOD_ID[:-1] + "-",
    "\ud800" * 26,
    "\x00" * 26,
    GOOD_ID * 10,
]

# method name -> arguments after the session id (all valid).
ID_CALLS = {
    "get_session": (),
    "update_session_state": (SessionState.READY,),
    "validate_session": (),
    "extend_session": (),
    "assign_vm": ("vm-new",),
    "get_assigned_vm": (),
    "release_vm": (),
    "set_context_variable": ("k", "v"),
    "get_context_variable": ("k",),
    "get_all_context_variables": (),
    "delete_context_variable": ("k",),
    "update_budget": (BudgetStatus(),),
    "increment_recursion_depth": (),
    "decrement_recursion_depth": (),
    "record_snapshot_created": ("snap-new",),
    "record_snapshot_restored": ("snap-new",),
    "get_current_snapshot": (),
    "clear_snapshot_tracking": (),
    "charge_tokens": (1,),
    "charge_time": (1,),
    "check_budget": (),
    "destroy_session": (),
}


def call(m, name, *args):  # type: ignore[no-untyped-def]
    if name == "recursion":
        with m.recursion(*args):
            pytest.fail("the body of a refused recursion() must not run")
        return None
    return getattr(m, name)(*args)


def snapshot(m):  # type: ignore[no-untyped-def]
    return table_state(m)


@pytest.fixture
def populated(make_manager):  # type: ignore[no-untyped-def]
    """A manager with a live, a terminated and a plain session."""
    m = make_manager(session_duration_secs=3600)
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
    m.create_session()
    return m, live, term


def assert_refused(m, exc, name, *args):  # type: ignore[no-untyped-def]
    before = snapshot(m)
    with pytest.raises(exc):
        call(m, name, *args)
    assert snapshot(m) == before, f"{name}{args!r} changed the manager"


# --------------------------------------------------------------------------
# session ids
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*ID_CALLS, "recursion"])
def test_non_str_id_is_a_type_error(name, populated) -> None:
    m, _, _ = populated
    for bad in NOT_IDS:
        assert_refused(m, TypeError, name, bad, *ID_CALLS.get(name, ()))


@pytest.mark.parametrize("name", [*ID_CALLS, "recursion"])
def test_malformed_id_is_invalid_session_token(name, populated) -> None:
    m, _, _ = populated
    for bad in MALFORMED_IDS:
        assert_refused(m, InvalidSessionToken, name, bad, *ID_CALLS.get(name, ()))


def test_is_session_valid_and_contains_on_bad_ids(populated) -> None:
    m, _, _ = populated
    before = snapshot(m)
    for bad in MALFORMED_IDS:
        assert m.is_session_valid(bad) is False
        assert (bad in m) is False
    for bad in NOT_IDS:
        with pytest.raises(TypeError):
            m.is_session_valid(bad)
        assert (bad in m) is False
    assert snapshot(m) == before


def test_invalid_session_token_is_a_value_error(populated) -> None:
    m, _, _ = populated
    with pytest.raises(ValueError) as excinfo:
        m.get_session("nope")
    assert isinstance(excinfo.value, InvalidSessionToken)
    assert isinstance(excinfo.value, RlmError)


# --------------------------------------------------------------------------
# InvalidSessionToken messages
# --------------------------------------------------------------------------


def token_error(m, raw):  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSessionToken) as excinfo:
        m.get_session(raw)
    err = excinfo.value
    assert str(err) == f"Invalid session token: {err.token}"
    return err


def test_token_message_is_cut_at_64_chars(populated) -> None:
    m, _, _ = populated
    err = token_error(m, "A" * 100)
    assert "A" * 64 in err.token
    assert "A" * 65 not in err.token
    assert err.token.endswith("…")
    assert "A" * 65 not in str(err)


def test_token_message_at_the_64_char_boundary(populated) -> None:
    m, _, _ = populated
    exact = token_error(m, "B" * 64)
    assert "B" * 64 in exact.token
    assert not exact.token.endswith("…")
    over = token_error(m, "C" * 65)
    assert "C" * 64 in over.token
    assert "C" * 65 not in over.token
    assert over.token.endswith("…")


def test_token_message_is_escaped(populated) -> None:
    m, _, _ = populated
    err = token_error(m, "bad\ntoken\x00\x1b[31m")
    for raw in ("\n", "\x00", "\x1b"):
        assert raw not in str(err)
        assert raw not in err.token
    assert "\\n" in err.token
    assert "\\x00" in err.token
    assert "\\x1b" in err.token
    assert "bad" in err.token and "token" in err.token

    short = token_error(m, "garbage")
    assert "garbage" in short.token
    assert not short.token.endswith("…")

    surrogate = token_error(m, "x\ud800y")
    assert "\ud800" not in surrogate.token
    assert "\\ud800" in surrogate.token
    str(surrogate).encode("utf-8")  # printable and encodable


def test_token_message_counts_characters_before_escaping(populated) -> None:
    m, _, _ = populated
    # 70 newlines: the first 64 are kept (each escaped as two characters).
    err = token_error(m, "\n" * 70)
    assert err.token.count("\\n") == 64
    assert err.token.endswith("…")


def test_session_id_from_string_message(core) -> None:
    with pytest.raises(InvalidSessionToken) as excinfo:
        core.SessionId.from_string("Z" * 80)
    err = excinfo.value
    assert "Z" * 64 in err.token
    assert "Z" * 65 not in err.token
    assert err.token.endswith("…")


# --------------------------------------------------------------------------
# the other arguments
# --------------------------------------------------------------------------

NOT_STRS = [None, 1, 1.5, b"bytes", ["x"], object()]


def test_vm_ids(populated) -> None:
    m, live, _ = populated
    for bad in NOT_STRS:
        assert_refused(m, TypeError, "assign_vm", live, bad)
        with pytest.raises(TypeError):
            m.get_session_for_vm(bad)
    assert_refused(m, ValueError, "assign_vm", live, "")
    assert_refused(m, ValueError, "assign_vm", live, "\ud800")
    assert_refused(m, ValueError, "assign_vm", live, "vm-\udfff")
    with pytest.raises(ValueError):
        m.get_session_for_vm("")
    with pytest.raises(ValueError):
        m.get_session_for_vm("\ud800")
    # A str subclass is accepted and stored as plain str.

    class S(str):
        pass

    m.assign_vm(live, S("vm-sub"))
    assert m.get_session_for_vm("vm-sub") == live
    assert type(m.get_assigned_vm(live)) is str


def test_context_keys_and_values(populated) -> None:
    m, live, _ = populated
    for bad in NOT_STRS:
        assert_refused(m, TypeError, "set_context_variable", live, bad, "v")
        assert_refused(m, TypeError, "set_context_variable", live, "k2", bad)
        assert_refused(m, TypeError, "get_context_variable", live, bad)
        assert_refused(m, TypeError, "delete_context_variable", live, bad)
    for bad in ("\ud800", "ok\udc80"):
        assert_refused(m, ValueError, "set_context_variable", live, bad, "v")
        assert_refused(m, ValueError, "set_context_variable", live, "k2", bad)
        assert_refused(m, ValueError, "get_context_variable", live, bad)
        assert_refused(m, ValueError, "delete_context_variable", live, bad)
    assert m.get_all_context_variables(live) == {"k": "v"}


def test_snapshot_ids(populated) -> None:
    m, live, _ = populated
    for bad in NOT_STRS:
        assert_refused(m, TypeError, "record_snapshot_created", live, bad)
        assert_refused(m, TypeError, "record_snapshot_created", live, bad, True)
        assert_refused(m, TypeError, "record_snapshot_restored", live, bad)
    assert_refused(m, ValueError, "record_snapshot_created", live, "\ud800", True)
    assert_refused(m, ValueError, "record_snapshot_restored", live, "\ud800")
    assert m.get_current_snapshot(live) == "snap-1"


@pytest.mark.parametrize("method", ["charge_tokens", "charge_time"])
def test_charges(method, populated) -> None:
    m, live, _ = populated
    for bad in (True, False, 1.0, 2.5, "5", None, b"5", [5]):
        assert_refused(m, TypeError, method, live, bad)
    for bad in (-1, -(10**100), 2**64, 10**100):
        assert_refused(m, ValueError, method, live, bad)


def test_states(populated) -> None:
    m, live, _ = populated
    for bad in ("ready", "READY", "Nope", "", "Ready ", "\ud800"):
        assert_refused(m, ValueError, "update_session_state", live, bad)
    for bad in (1, None, b"Ready", 1.5, ["Ready"]):
        assert_refused(m, TypeError, "update_session_state", live, bad)


def test_update_budget_needs_a_budget_status(populated) -> None:
    m, live, _ = populated
    for bad in (None, {}, (100_000, 0, 300_000, 0, 10, 0), 5, "budget"):
        assert_refused(m, TypeError, "update_budget", live, bad)


# --------------------------------------------------------------------------
# argument checks come before the table is looked at
# --------------------------------------------------------------------------


def test_argument_checks_come_before_existence(populated) -> None:
    m, _, term = populated
    # Unknown (well-formed) id with a bad argument: the argument's error.
    assert_refused(m, TypeError, "assign_vm", GOOD_ID, 5)
    assert_refused(m, ValueError, "assign_vm", GOOD_ID, "")
    assert_refused(m, TypeError, "set_context_variable", GOOD_ID, "k", None)
    assert_refused(m, ValueError, "charge_tokens", GOOD_ID, -1)
    assert_refused(m, TypeError, "charge_time", GOOD_ID, 1.0)
    assert_refused(m, ValueError, "update_session_state", GOOD_ID, "bogus")
    assert_refused(m, TypeError, "update_budget", GOOD_ID, None)
    # Terminated session with a bad argument: still the argument's error.
    assert_refused(m, TypeError, "assign_vm", term, None)
    assert_refused(m, ValueError, "charge_tokens", term, 2**64)
    # Malformed id with a bad argument: the id's error comes first.
    assert_refused(m, InvalidSessionToken, "assign_vm", "nope", 5)
    assert_refused(m, TypeError, "assign_vm", None, "")
    # Everything fine but the id unknown.
    assert_refused(m, SessionNotFound, "assign_vm", GOOD_ID, "vm-a")


# --------------------------------------------------------------------------
# many rejected calls in a row do not crash the interpreter (subprocess)
# --------------------------------------------------------------------------

_MODULE_OF_CORE = {"python": "rlm_fast._session_py", "cython": "rlm_fast._session_c"}

_HAMMER = """
import importlib, sys
from rlm_fast import RlmConfig, BudgetStatus
core = importlib.import_module(sys.argv[1])
m = core.SessionManager(RlmConfig())
s = m.create_session().id
bad_ints = (-1, 2**64, 10**100, -(10**100), True, 1.0, None)
for _ in range(2000):
    for value in bad_ints:
        for call in (m.charge_tokens, m.charge_time):
            try:
                call(s, value)
            except (TypeError, ValueError):
                pass
            else:
                raise SystemExit(f"{call.__name__}({value!r}) was accepted")
    for text in ("", "\\ud800", 5):
        try:
            m.assign_vm(s, text)
        except (TypeError, ValueError):
            pass
    for token in ("nope", "\\ud800" * 26, None):
        try:
            m.get_session(token)
        except (TypeError, ValueError):
            pass
assert m.get_session(s).budget_status == BudgetStatus()
print("ok")
"""


@pytest.mark.in_process("a crash guard for the compiled module, run in a subprocess per core module")
def test_many_rejected_calls_do_not_crash(core) -> None:
    # SPEC 7: nothing crashes the interpreter. Run apart, so a crash is a
    # failed test and not the end of the run (STYLE habit 9).
    import os
    import subprocess
    import sys

    import rlm_fast

    parent = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-c", _HAMMER, _MODULE_OF_CORE[core.name]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout == "ok\n"
