"""SessionManager.dump/load (SPEC 8, docs/dump-format.md): nothing lost, one
core's dump loads in the other, the write is atomic, a damaged file is
refused whole, and a dumper killed with SIGKILL at random moments always
leaves a file that loads completely."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from typing import Any

import pytest
from conftest import PY, C, FakeClock

import rlm_fast
from rlm_fast import BudgetStatus, RlmConfig, Serialization, SessionState

CORES = [PY] + ([C] if C is not None else [])
CORE_PAIRS = [pytest.param(a, b, id=f"{a.name}-to-{b.name}") for a in CORES for b in CORES]


def rows(manager: Any) -> tuple[list[tuple[Any, ...]], Any]:
    """Everything a manager holds, ids as text so the two cores compare; the
    table's counters without the refusal counts (a dump does not keep them)."""
    infos, stats, starts = manager._export()
    return [(str(i.id), *i._astuple()[1:]) for i in infos], stats._astuple()[:5], starts


def populate(manager: Any, clock: FakeClock, n: int = 12) -> None:
    """Sessions in every state, with VMs, context, snapshots, budgets, depth
    and extensions; counters moved by destroy and cleanup; one session
    expired by time but not cleaned up. The manager's sessions last 60 s."""
    old = [manager.create_session().id for _ in range(3)]
    manager.assign_vm(old[0], "vm-old")
    clock.advance(seconds=10)
    stale = manager.create_session().id
    clock.advance(seconds=30)
    ids = [manager.create_session().id for _ in range(n)]
    for i, sid in enumerate(ids):
        if i % 2 == 0:
            manager.assign_vm(sid, f"vm-{i}")
        if i % 3 == 0:
            manager.set_context_variable(sid, "task", f"chunk {i} \u2615")
            manager.set_context_variable(sid, "quote", 'a "b"\n\\c')
        if i % 4 == 0:
            manager.record_snapshot_created(sid, f"snap-{i}", True)
            manager.record_snapshot_created(sid, f"snap-{i}b")
        if i % 5 == 0:
            manager.extend_session(sid)
        manager.charge_tokens(sid, 10 * i)
        manager.charge_time(sid, i)
        if i % 3 == 1:
            manager.increment_recursion_depth(sid)
    manager.update_budget(ids[1], BudgetStatus(7, 3, 9, 4, 2, 1))
    manager.update_session_state(ids[2], SessionState.EXECUTING)
    manager.update_session_state(ids[3], SessionState.PAUSED)
    manager.update_session_state(ids[4], SessionState.TERMINATED)  # keeps its VM
    manager.update_session_state(ids[5], SessionState.EXPIRED)
    manager.destroy_session(ids[6])
    clock.advance(seconds=25)
    assert manager.cleanup_expired_sessions() == sorted(old)
    clock.advance(seconds=10)
    assert not manager.is_session_valid(stale)  # expired, still in the table
    assert stale in manager


def make(core: types.SimpleNamespace, clock: FakeClock, **config: Any) -> Any:
    config.setdefault("session_duration_secs", 60)
    return core.SessionManager(RlmConfig(**config), clock=clock)


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dumper, loader", CORE_PAIRS)
def test_dump_load_round_trip(
    dumper: types.SimpleNamespace,
    loader: types.SimpleNamespace,
    clock: FakeClock,
    tmp_path: pathlib.Path,
) -> None:
    m = make(dumper, clock, max_extensions=5)
    populate(m, clock)
    stats = m.get_stats()
    assert (
        stats.total_sessions_destroyed and stats.total_sessions_expired and stats.sessions_with_vm
    )
    path = tmp_path / "sessions.jsonl"
    m.dump(path)
    loaded = loader.SessionManager.load(path, clock=clock)
    assert type(loaded) is loader.SessionManager
    assert rows(loaded) == rows(m)
    # The dump keeps the table's counters; refusal counts start over.
    assert loaded.get_stats()._astuple()[:5] == m.get_stats()._astuple()[:5]
    assert [i.to_json() for i in loaded.list_sessions()] == [i.to_json() for i in m.list_sessions()]
    assert loaded.config == m.config  # the dumped config
    again = tmp_path / "again.jsonl"
    loaded.dump(again)
    assert again.read_bytes() == path.read_bytes()  # both cores write the same bytes
    # the maps work: VM lookups both ways, and the counters go on
    for info in m.list_sessions():
        assert loaded.get_assigned_vm(str(info.id)) == info.vm_instance_id
        if info.vm_instance_id is not None:
            assert str(loaded.get_session_for_vm(info.vm_instance_id)) == str(info.id)
    loaded.create_session()
    assert loaded.get_stats().total_sessions_created == stats.total_sessions_created + 1


def test_dump_of_an_empty_manager(core: types.SimpleNamespace, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.jsonl"
    core.SessionManager().dump(str(path))
    loaded = core.SessionManager.load(str(path))
    assert len(loaded) == 0
    assert loaded.get_stats() == rlm_fast.SessionStats()
    assert len(path.read_bytes().splitlines()) == 2  # header and trailer


def test_load_uses_the_given_config_and_clock(
    core: types.SimpleNamespace, clock: FakeClock, tmp_path: pathlib.Path
) -> None:
    m = make(core, clock, session_duration_secs=100, max_extensions=1)
    sid = m.create_session().id
    m.dump(tmp_path / "d")
    dumped = core.SessionManager.load(tmp_path / "d")
    assert dumped.config.max_extensions == 1 and dumped.config.session_duration_secs == 100
    other = RlmConfig(max_extensions=4)
    loaded = core.SessionManager.load(tmp_path / "d", other, clock=clock)
    assert loaded.config == other
    for _ in range(4):
        loaded.extend_session(sid)  # the given config's limit
    assert loaded.is_session_valid(sid)
    clock.advance(seconds=100 + 4 * other.extension_increment_secs + 1)
    assert not loaded.is_session_valid(sid)  # the given clock decides


def test_load_checks_its_arguments_first(
    core: types.SimpleNamespace, tmp_path: pathlib.Path
) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(TypeError):
        core.SessionManager.load(missing, config={"max_extensions": 1})
    with pytest.raises(rlm_fast.ConfigError):
        core.SessionManager.load(missing, RlmConfig(pool_min_size=99))
    with pytest.raises(FileNotFoundError):
        core.SessionManager.load(missing)


def test_dump_of_a_changing_manager_loads_consistent(
    core: types.SimpleNamespace, tmp_path: pathlib.Path
) -> None:
    # SPEC 15: a dump is read in pieces and need not be one instant of the
    # table (a session destroyed after its piece was read and one created
    # in a piece not yet read may both be in the file), but the file loads
    # into a table whose maps and counters are consistent.
    m = core.SessionManager()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            sid = m.create_session().id
            m.assign_vm(sid, "vm-shared")  # the VM moves between sessions
            m.assign_vm(sid, f"vm-{sid}")
            kid = m.create_child_session(sid).id
            m.destroy_session(sid)  # the child goes with it
            assert kid not in m

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for i in range(10):
            m.dump(tmp_path / f"d{i}")
    finally:
        stop.set()
        for w in workers:
            w.join()
    for i in range(10):
        loaded = core.SessionManager.load(tmp_path / f"d{i}")
        s = loaded.get_stats()
        rows = loaded.list_sessions()
        assert s.total_sessions_created == (
            s.total_sessions_destroyed + s.total_sessions_expired + s.active_sessions
        )
        assert s.active_sessions == len(rows)
        ids = {str(r.id) for r in rows}
        for r in rows:  # every child's parent is in the file
            assert r.parent_id is None or str(r.parent_id) in ids
        held = [r for r in rows if r.vm_instance_id is not None]
        assert s.sessions_with_vm == len(held)
        assert len({r.vm_instance_id for r in held}) == len(held)  # one holder per VM
        for r in held:
            assert str(loaded.get_session_for_vm(r.vm_instance_id)) == str(r.id)


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------


def test_file_format(core: types.SimpleNamespace, clock: FakeClock, tmp_path: pathlib.Path) -> None:
    m = make(core, clock, token_budget=5000)
    populate(m, clock, n=8)
    path = tmp_path / "d.jsonl"
    m.dump(path)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    infos, stats = m._export()[:2]
    header = json.loads(lines[0])
    assert list(header) == [
        "format",
        "version",
        "config",
        "created",
        "destroyed",
        "expired",
        "sessions",
    ]
    assert header["format"] == "rlm_fast.dump" and header["version"] == 2
    assert header["config"] == m.config.to_dict()
    assert (header["created"], header["destroyed"], header["expired"], header["sessions"]) == (
        stats.total_sessions_created,
        stats.total_sessions_destroyed,
        stats.total_sessions_expired,
        len(infos),
    )
    # one compact serde document per session, in id order
    assert [line.decode("utf-8") for line in lines[1:-1]] == [i.to_json() for i in infos]
    trailer = json.loads(lines[-1])
    assert list(trailer) == ["end", "sessions", "sha256"]
    body = data[: len(data) - len(lines[-1]) - 1]
    assert trailer == {
        "end": "rlm_fast.dump",
        "sessions": len(infos),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    if os.name == "posix":  # the config may hold secrets
        assert path.stat().st_mode & 0o777 == 0o600


def test_dump_replaces_atomically_and_leaves_no_temp_file(
    core: types.SimpleNamespace, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("previous")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        assert os.path.dirname(src) == str(tmp_path)  # same directory
        assert pathlib.Path(src).read_bytes().endswith(b"\n")  # complete before the rename
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    core.SessionManager().dump(path)
    if sys.platform.startswith("linux"):
        assert events == ["fsync", "replace", "fsync-dir"]
    assert os.listdir(tmp_path) == ["d.jsonl"]
    assert path.read_text().startswith('{"format":"rlm_fast.dump"')


def test_a_failed_dump_keeps_the_previous_file(
    core: types.SimpleNamespace, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.jsonl"
    m = core.SessionManager()
    m.create_session()
    m.dump(path)
    before = path.read_bytes()
    m.create_session()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        m.dump(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.jsonl"]  # the temp file is gone


# --------------------------------------------------------------------------
# damaged files are refused whole
# --------------------------------------------------------------------------


@pytest.fixture
def dump_file(clock: FakeClock, tmp_path: pathlib.Path) -> pathlib.Path:
    m = make(PY, clock)
    populate(m, clock, n=8)
    path = tmp_path / "good.jsonl"
    m.dump(path)
    return path


def write_dump(
    path: pathlib.Path, header: dict[str, Any], lines: list[str], **trailer: Any
) -> None:
    """A dump file with a correct checksum around whatever lines are given,
    to reach the checks behind the checksum."""
    body = "".join(line + "\n" for line in [json.dumps(header), *lines]).encode("utf-8")
    end = {
        "end": "rlm_fast.dump",
        "sessions": len(lines),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    end.update(trailer)
    path.write_bytes(body + json.dumps(end).encode() + b"\n")


def parts(path: pathlib.Path) -> tuple[dict[str, Any], list[str]]:
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return json.loads(lines[0]), lines[1:-1]


def refused(core: types.SimpleNamespace, path: pathlib.Path, message: str) -> None:
    with pytest.raises(Serialization, match=message) as info:
        core.SessionManager.load(path)
    assert str(path) in str(info.value)


def test_truncated_anywhere(core: types.SimpleNamespace, dump_file: pathlib.Path) -> None:
    data = dump_file.read_bytes()
    cuts = sorted({0, 1, len(data) - 1, *random.Random(1).sample(range(len(data)), 60)})
    for cut in cuts:
        dump_file.write_bytes(data[:cut])
        refused(core, dump_file, "empty file|truncated")


def test_corrupted_anywhere(core: types.SimpleNamespace, dump_file: pathlib.Path) -> None:
    data = dump_file.read_bytes()
    rng = random.Random(2)
    for pos in rng.sample(range(len(data)), 60):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << rng.randrange(8)
        dump_file.write_bytes(bytes(damaged))
        refused(core, dump_file, "corrupted|truncated")


def test_lines_added_or_removed(core: types.SimpleNamespace, dump_file: pathlib.Path) -> None:
    data = dump_file.read_bytes()
    lines = data.split(b"\n")
    dump_file.write_bytes(data + b"\n")
    refused(core, dump_file, "truncated or corrupted")
    dump_file.write_bytes(data + lines[1] + b"\n")
    refused(core, dump_file, "truncated or corrupted")
    dump_file.write_bytes(b"\n".join(lines[:2] + lines[3:]))
    refused(core, dump_file, "corrupted: the sha256")


def test_checks_behind_the_checksum(core: types.SimpleNamespace, dump_file: pathlib.Path) -> None:
    header, lines = parts(dump_file)
    cases: list[tuple[dict[str, Any], list[str], dict[str, Any], str]] = [
        ({**header, "version": 3}, lines, {}, "unsupported dump version 3"),
        ({**header, "version": True}, lines, {}, "unsupported dump version True"),
        ({**header, "format": "other"}, lines, {}, "not an rlm_fast dump"),
        ({**header, "sessions": len(lines) + 1}, lines, {}, "session count mismatch"),
        (header, lines, {"sessions": len(lines) + 1}, "session count mismatch"),
        ({**header, "created": -1}, lines, {}, "line 1: created: -1 is out of range"),
        (
            {k: v for k, v in header.items() if k != "expired"},
            lines,
            {},
            "line 1: header: missing field `expired`",
        ),
        ({**header, "config": {"pool_min_size": 99}}, lines, {}, "line 1: config: .*pool_min_size"),
        ({**header, "config": {"no_such": 1}}, lines, {}, "line 1: config: .*no_such"),
        ({**header, "config": []}, lines, {}, "line 1: config"),
        (header, lines[:1] + ["{}"] + lines[2:], {}, "line 3: SessionInfo: missing field `id`"),
        (header, lines[:2] + [lines[2][:-1]] + lines[3:], {}, "line 4: invalid JSON"),
        (
            header,
            lines[:1] + [lines[1].replace('"state":"', '"state":"X')] + lines[2:],
            {},
            "line 3: state",
        ),
        # rows that are well formed but do not fit together
        (header, [lines[0], lines[0], *lines[1:]], {}, "count mismatch"),
        (
            {**header, "sessions": len(lines) + 1},
            [lines[0], *lines],
            {},
            "inconsistent dump: .*appears twice",
        ),
        (
            {**header, "created": header["created"] + 1},
            lines,
            {},
            "inconsistent dump: counters do not balance",
        ),
        (
            {**header, "sessions": len(lines) - 1},
            lines[:-1],
            {},
            "inconsistent dump: counters do not balance",
        ),
    ]
    for new_header, new_lines, trailer, message in cases:
        write_dump(dump_file, new_header, new_lines, **trailer)
        refused(core, dump_file, message)


def test_two_sessions_holding_one_vm_are_refused(
    core: types.SimpleNamespace, dump_file: pathlib.Path
) -> None:
    header, lines = parts(dump_file)
    docs = [json.loads(line) for line in lines]
    with_vm = [d for d in docs if d["vm_instance_id"] is not None]
    with_vm[1]["vm_instance_id"] = with_vm[0]["vm_instance_id"]
    write_dump(dump_file, header, [json.dumps(d, ensure_ascii=False) for d in docs])
    refused(core, dump_file, "inconsistent dump: VM .* is held by two sessions")


def test_a_good_file_written_by_hand_loads(
    core: types.SimpleNamespace, dump_file: pathlib.Path
) -> None:
    # The checks above are not refusing everything: the same helper with the
    # lines unchanged gives a file that loads.
    header, lines = parts(dump_file)
    write_dump(dump_file, header, lines)
    assert len(core.SessionManager.load(dump_file)) == len(lines)


def test_an_unreadable_file_is_an_os_error(
    core: types.SimpleNamespace, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(IsADirectoryError if os.name == "posix" else OSError):
        core.SessionManager.load(tmp_path)


# --------------------------------------------------------------------------
# crash test: SIGKILL at random moments
# --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from rlm_fast import _session_py
    if sys.argv[1] == "cython":
        from rlm_fast import _session_c as core
    else:
        core = _session_py
    target, ref_a, ref_b = sys.argv[2:5]
    a, b = core.SessionManager.load(ref_a), core.SessionManager.load(ref_b)
    print("ready", flush=True)
    while True:
        b.dump(target)
        a.dump(target)
    """
)


def build_state(core: types.SimpleNamespace, tag: str, n: int, destroyed: int) -> Any:
    m = core.SessionManager(RlmConfig(session_duration_secs=10**6, max_snapshots_per_session=0))
    for i in range(n):
        sid = m.create_session().id
        m.set_context_variable(sid, "task", f"{tag} chunk {i} \u2615")
        if i % 2:
            m.assign_vm(sid, f"{tag}-vm-{i}")
            m.record_snapshot_created(sid, f"{tag}-snap-{i}", True)
    for _ in range(destroyed):
        m.destroy_session(m.create_session().id)
    return m


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("core_name", [c.name for c in CORES])
def test_sigkill_mid_dump_never_leaves_a_bad_file(core_name: str, tmp_path: pathlib.Path) -> None:
    core = {c.name: c for c in CORES}[core_name]
    target, ref_a, ref_b = (str(tmp_path / name) for name in ("target.jsonl", "a.jsonl", "b.jsonl"))
    a, b = build_state(core, "a", 3000, 1), build_state(core, "b", 2500, 2)
    a.dump(ref_a)
    b.dump(ref_b)
    a.dump(target)
    expected = {"a": rows(a), "b": rows(b)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rng = random.Random()
    seen: list[str] = []
    mid_write = 0  # kills that caught a dump between its temp file and the rename
    for kill in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, core_name, target, ref_a, ref_b],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.0, 0.2))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        state = rows(core.SessionManager.load(target))  # loads completely...
        name = next((k for k, v in expected.items() if v == state), None)
        assert name is not None, (
            f"kill {kill}: the file holds neither dumped state"
        )  # ...as one of them
        seen.append(name)
        for leftover in tmp_path.glob(".target.jsonl.*.tmp"):  # a killed dump's temp file
            leftover.unlink()
            mid_write += 1
    assert len(seen) == 20
    # Dumps stream into the temp file, so most kills land mid-write; none at
    # all would mean this test no longer exercises the dangerous window.
    assert mid_write > 0, seen
