"""The bulk API (numpy): validate_many and budget_table, on both cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlm_fast import BudgetStatus, SessionState

np = pytest.importorskip("numpy", reason="the bulk API needs numpy")

FIELDS = (
    "id state expires_at_ns tokens_used token_budget time_used_ms time_budget_ms "
    "recursion_depth max_recursion_depth extension_count snapshot_count has_vm"
).split()


@pytest.fixture
def table(make_manager, clock):  # type: ignore[no-untyped-def]
    m = make_manager(session_duration_secs=60, max_extensions=5)
    ids = [m.create_session().id for _ in range(6)]
    m.assign_vm(ids[0], "vm-0")
    m.charge_tokens(ids[0], 7)
    m.charge_time(ids[1], 9)
    m.increment_recursion_depth(ids[1])
    m.extend_session(ids[2])
    m.record_snapshot_created(ids[2], "s", set_as_current=True)
    m.update_session_state(ids[3], SessionState.TERMINATED)
    m.update_session_state(ids[4], SessionState.EXPIRED)
    m.update_budget(ids[5], BudgetStatus(token_budget=2**64 - 1, tokens_used=2**63))
    return m, ids


def test_validate_many_agrees_with_is_session_valid(table, core, clock) -> None:
    m, ids = table
    unknown = core.SessionId()
    queries = [*ids, str(ids[0]), str(ids[1]).lower(), unknown, "not-an-id", "8" * 26]
    expected = [m.is_session_valid(q) for q in queries]
    assert expected == [True, True, True, False, False, True, True, True, False, False, False]
    got = m.validate_many(queries)
    assert got.dtype == np.bool_ and got.shape == (len(queries),)
    assert got.tolist() == expected
    clock.advance(seconds=61)  # all but the extended one expire
    assert m.validate_many(ids).tolist() == [False, False, True, False, False, False]


def test_validate_many_refuses_non_ids_whole(table) -> None:
    m, ids = table
    with pytest.raises(TypeError):
        m.validate_many([ids[0], 5])
    with pytest.raises(TypeError):
        m.validate_many(np.zeros(3, dtype="S8"))  # not 16-byte items


def test_validate_many_reads_an_id_column(table) -> None:
    m, ids = table
    column = m.budget_table()["id"]
    assert m.validate_many(column).tolist() == [m.is_session_valid(i) for i in sorted(ids)]
    assert m.validate_many([]).tolist() == []


def test_budget_table_matches_list_sessions(table, core) -> None:
    m, ids = table
    t = m.budget_table()
    assert list(t.dtype.names) == FIELDS
    infos = m.list_sessions()
    assert len(t) == len(infos) == 6
    states = list(SessionState)
    for row, info in zip(t, infos):
        b = info.budget_status
        assert core.SessionId.from_bytes(bytes(row["id"])) == info.id
        assert states[row["state"]] is info.state
        assert int(row["expires_at_ns"]) == info.expires_at_ns
        assert (int(row["tokens_used"]), int(row["token_budget"])) == (b.tokens_used, b.token_budget)
        assert (int(row["time_used_ms"]), int(row["time_budget_ms"])) == (b.time_used_ms, b.time_budget_ms)
        assert int(row["recursion_depth"]) == info.recursion_depth
        assert int(row["max_recursion_depth"]) == b.max_recursion_depth
        assert int(row["extension_count"]) == info.extension_count
        assert int(row["snapshot_count"]) == info.snapshot_count
        assert bool(row["has_vm"]) is (info.vm_instance_id is not None)
    assert int(t["token_budget"].max()) == 2**64 - 1  # no wrap in u64


def test_ids_ending_in_zero_bytes_survive(core, make_manager, clock) -> None:
    # numpy's "S" type would strip trailing NULs from such an id.
    from rlm_fast import SessionInfo

    crafted = [core.SessionId.from_int((1 << 100) | (n << 16)) for n in range(1, 4)]
    m = make_manager()
    m._restore(
        [SessionInfo(sid, "Ready", clock.now, clock.now + 10**9) for sid in crafted], (3, 0, 0)
    )
    column = m.budget_table()["id"]
    assert [bytes(v) for v in column] == [sid.bytes for sid in crafted]
    assert m.validate_many(column).tolist() == [True, True, True]


def test_budget_table_of_an_empty_manager(make_manager) -> None:
    t = make_manager().budget_table()
    assert len(t) == 0 and list(t.dtype.names) == FIELDS


@pytest.mark.in_process("runs the core module in a subprocess")
def test_the_scalar_api_never_needs_numpy(core) -> None:
    # numpy made unimportable: import and scalar calls work, the bulk API
    # says what it needs.
    code = f"""
import sys
sys.modules["numpy"] = None
import importlib
import rlm_fast
mod = importlib.import_module({{"python": "rlm_fast._session_py", "cython": "rlm_fast._session_c"}}[{core.name!r}])
m = mod.SessionManager()
sid = m.create_session().id
assert m.is_session_valid(sid)
try:
    m.budget_table()
except ImportError as e:
    assert "numpy" in str(e), e
else:
    raise SystemExit("budget_table worked without numpy")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
