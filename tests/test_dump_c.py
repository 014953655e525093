"""The compiled core writes its dump lines and settles its export in C++
(`_c/dumpfile.h`): byte for byte what the twin's Python path
(`_dump.settle`, `_dump._dump_line`) writes for the same table, every
string escape, timestamp and tree link included."""

from __future__ import annotations

import json
import pathlib
import random
from typing import Any

import pytest
from conftest import PY, FakeClock
from test_dump_load import parts, populate, write_dump

from rlm_fast import RlmConfig, Serialization, _dump

c = pytest.importorskip("rlm_fast._session_c")

pytestmark = pytest.mark.in_process("the compiled core's own dump writer")

# Every escape serde_json makes, DEL and non-ASCII (raw), U+2028, an emoji.
AWKWARD = "".join(chr(i) for i in range(0x20)) + '"\\/\x7f\u00e9\u2028\U0001f600 end'


def both_ways(m: Any, tmp_path: pathlib.Path) -> tuple[bytes, bytes]:
    """The compiled dump's file, and the Python path's over the same export."""
    fast, slow = tmp_path / "c.jsonl", tmp_path / "py.jsonl"
    m.dump(fast)
    _dump.dump(m, slow)
    return fast.read_bytes(), slow.read_bytes()


def test_a_populated_table_dumps_as_the_python_path_does(
    clock: FakeClock, tmp_path: pathlib.Path
) -> None:
    m = c.SessionManager(RlmConfig(session_duration_secs=60), clock=clock)
    populate(m, clock)
    root = m.create_session().id
    child = m.create_child_session(root).id
    m.create_child_session(child)
    m.increment_recursion_depth(child)
    m.assign_vm(child, AWKWARD)
    m.set_context_variable(root, AWKWARD, AWKWARD)
    m.set_context_variable(root, "", "")
    m.record_snapshot_created(root, AWKWARD, True)
    fast, slow = both_ways(m, tmp_path)
    assert fast == slow
    assert fast.count(b"\n") == len(m) + 2  # header, a line a session, trailer
    assert type(m).load(tmp_path / "c.jsonl").list_sessions() == m.list_sessions()


@pytest.mark.parametrize(
    "now",
    [
        -(2**63) + 10**9,  # 1677
        -1,  # 1969-12-31T23:59:59.999999999Z
        0,
        1,
        951_782_400 * 10**9,  # 2000-02-29
        1_709_164_800 * 10**9 + 123_000_000,  # 2024-02-29, .123
        4_102_444_799 * 10**9 + 100_000,  # 2099-12-31T23:59:59.0001
        2**63 - 1 - 10**14,  # 2262, about a day before the end
    ],
)
def test_timestamps_are_written_as_the_python_path_writes_them(
    now: int, tmp_path: pathlib.Path
) -> None:
    clock = FakeClock(now)
    m = c.SessionManager(RlmConfig(session_duration_secs=1800), clock=clock)
    for step in (0, 1, 10, 999_999_999, 86_399 * 10**9):
        clock.now = now + step
        m.create_session()
    fast, slow = both_ways(m, tmp_path)
    assert fast == slow


def test_random_tables_dump_as_the_python_path_does(
    clock: FakeClock, tmp_path: pathlib.Path
) -> None:
    rng = random.Random(7)
    alphabet = AWKWARD + "abcxyz0123"
    m = c.SessionManager(RlmConfig(session_duration_secs=600), clock=clock)
    ids = []
    for i in range(300):
        clock.advance(ns=rng.randrange(10**9))  # at most 300 s in all: none expires
        parent = rng.choice(ids) if ids and rng.random() < 0.4 else None
        sid = (m.create_session() if parent is None else m.create_child_session(parent)).id
        ids.append(sid)
        if rng.random() < 0.3:
            m.assign_vm(sid, f"vm-{i}-" + "".join(rng.choices(alphabet, k=3)))
        for _ in range(rng.randrange(3)):
            m.set_context_variable(
                sid, "".join(rng.choices(alphabet, k=rng.randrange(5))),
                "".join(rng.choices(alphabet, k=rng.randrange(8))),
            )
        m.charge_tokens(sid, rng.randrange(1000))
    fast, slow = both_ways(m, tmp_path)
    assert fast == slow


def test_settle_in_cpp_is_settle_in_python(clock: FakeClock) -> None:
    """An export read while the table changed: a child whose parent is
    gone, its own child, and a VM read on two sessions (it moved)."""
    m = c.SessionManager(RlmConfig(session_duration_secs=60), clock=clock)
    a, b = m.create_session().id, m.create_session().id
    kid = m.create_child_session(a).id
    grandkid = m.create_child_session(kid).id
    m.assign_vm(a, "vm-1")
    early = m.get_session(a)  # holds vm-1
    m.assign_vm(b, "vm-1")  # vm-1 moves to b
    infos = sorted(
        [early, m.get_session(b), m.get_session(grandkid), m.get_session(kid)],
        key=lambda info: info.id,
    )
    starts = [1 if info.parent_id is not None else 0 for info in infos]
    orphaned = [info for info in infos if info.id != kid]  # kid removed before it was read
    orphaned_starts = [1 if info.parent_id is not None else 0 for info in orphaned]
    stats = m.get_stats()
    for rows, depths in ((infos, starts), (orphaned, orphaned_starts)):
        kept, kept_depths, _ = _dump.settle(rows, stats, depths)
        python = "".join(_dump._dump_line(i, d) + "\n" for i, d in zip(kept, kept_depths))
        assert c._dump_bytes(rows, depths) == python.encode("utf-8")
    kept, _, _ = _dump.settle(orphaned, stats, orphaned_starts)
    assert [i.id for i in kept] == sorted([a, b])  # both children went with kid
    holders = {i.id: i.vm_instance_id for i in kept}  # the row read later keeps the VM
    assert holders[max(a, b)] == "vm-1" and holders[min(a, b)] is None


# --------------------------------------------------------------------------
# load: canonical lines are read in C++; anything else is left to Python
# --------------------------------------------------------------------------


def canonical(clock: FakeClock, tmp_path: pathlib.Path) -> tuple[dict[str, Any], list[str]]:
    """The header and session lines of a compiled dump with every kind of row."""
    m = c.SessionManager(RlmConfig(session_duration_secs=60), clock=clock)
    populate(m, clock)
    root = m.create_session().id
    child = m.create_child_session(root).id
    m.increment_recursion_depth(child)
    grandchild = m.create_child_session(child).id
    m.assign_vm(grandchild, AWKWARD)
    path = tmp_path / "canonical.jsonl"
    m.dump(path)
    return parts(path)


def outcome(core: Any, path: pathlib.Path) -> tuple[Any, ...]:
    try:
        m = core.SessionManager.load(path)
    except Serialization as exc:
        return ("refused", str(exc))
    infos = sorted(m.list_sessions(), key=lambda i: str(i.id))
    return ("loaded", [(i.to_json(), str(i.parent_id), str(i.root_id)) for i in infos],
            m.get_stats()._astuple()[:5], [len(m.children(i.id)) for i in infos])


def first(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def edit(needle: str, old: str, new: str) -> Any:
    """Replace `old` by `new` in the first line holding `needle`."""
    def apply(lines: list[str], header: dict[str, Any]) -> None:
        i = first(lines, needle)
        assert old in lines[i], (old, lines[i])
        lines[i] = lines[i].replace(old, new, 1)
    return apply


def drop_parent(lines: list[str], header: dict[str, Any]) -> None:
    """Remove the line of a session that has a child (the counters kept balanced)."""
    parent = json.loads(lines[first(lines, '"parent_id"')])["parent_id"]
    del lines[first(lines, f'{{"id":"{parent}"')]
    header["sessions"] -= 1
    header["created"] -= 1


def twice(lines: list[str], header: dict[str, Any]) -> None:
    lines.append(lines[0])
    header["sessions"] += 1
    header["created"] += 1


def unsorted_context(lines: list[str], header: dict[str, Any]) -> None:
    i = first(lines, '"quote":')
    doc = json.loads(lines[i])
    ctx = ",".join(f'{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}'
                   for k, v in sorted(doc["context_variables"].items(), reverse=True))
    start = lines[i].index('"context_variables":{') + len('"context_variables":{')
    end = lines[i].index('},"current_snapshot_id"')
    lines[i] = lines[i][:start] + ctx + lines[i][end:]


def created(delta: int) -> Any:
    def apply(lines: list[str], header: dict[str, Any]) -> None:
        header["created"] += delta
    return apply


# (name, edit, whether the C++ reader takes the file). Each is loaded by
# both cores: the same sessions, or the same refusal.
EDITS = [
    ("unchanged", None, True),
    ("a space after a colon", edit('"id"', '{"id":', '{"id": '), False),
    ("current depth differs", edit('"current_recursion_depth":0}', '"current_recursion_depth":0}',
                                   '"current_recursion_depth":3}'), False),
    ("context keys out of order", unsorted_context, False),
    ("an escape not written", edit('"vm-0"', '"vm-0"', '"\\u0076m-0"'), False),
    ("uppercase hex", edit("\\u001f", "\\u001f", "\\u001F"), False),
    ("lowercase z", edit('"id"', 'Z","expires_at"', 'z","expires_at"'), False),
    ("an offset", edit('"id"', 'Z","expires_at"', '+00:00","expires_at"'), False),
    ("lowercase id", edit('"id"', '{"id":"01', '{"id":"0a'), False),
    ("u32 out of range", edit('"id"', '"extension_count":', '"extension_count":4294967296'), False),
    ("u64 out of range", edit('"id"', '"token_budget":', '"token_budget":99999999999999999999'),
     False),
    ("no such date", edit('"id"', '"created_at":"2026-01-01', '"created_at":"2026-02-30'), False),
    ("a leading zero", edit('"id"', '"snapshot_count":', '"snapshot_count":0'), False),
    ("an unknown state", edit('"state":"Ready"', '"state":"Ready"', '"state":"Ready2"'), False),
    ("an extra field", edit('"id"', '{"id":', '{"x":1,"id":'), False),
    ("a bad literal", edit('"vm_instance_id":null', '"vm_instance_id":null',
                           '"vm_instance_id":nul'), False),
    ("an empty VM", edit('"vm-0"', '"vm-0"', '""'), False),
    ("a VM held twice", edit('"vm-2"', '"vm-2"', '"vm-0"'), False),
    ("an id twice", twice, False),
    ("a parent missing", drop_parent, False),
    ("start depth 0", edit('"start_depth":1', '"start_depth":1', '"start_depth":0'), False),
    ("start depth past the depth", edit('"start_depth":1', '"start_depth":1',
                                        '"start_depth":9'), False),
    ("counters off", created(1), False),
]


@pytest.mark.parametrize("name, change, taken", EDITS, ids=[e[0] for e in EDITS])
def test_load_reads_canonical_lines_in_cpp_and_leaves_the_rest_to_python(
    name: str, change: Any, taken: bool, clock: FakeClock, tmp_path: pathlib.Path
) -> None:
    header, lines = canonical(clock, tmp_path)
    if change is not None:
        change(lines, header)
    path = tmp_path / "edited.jsonl"
    write_dump(path, header, lines)
    data = path.read_bytes()
    head, start, end = _dump._check_file(data)
    m = c.SessionManager(RlmConfig.from_dict(head["config"]))
    counters = (head["created"], head["destroyed"], head["expired"])
    assert c._restore_lines(m, data, start, end, head["sessions"], counters) is taken
    assert len(m) == (len(lines) if taken else 0)  # a file not taken changed nothing
    assert outcome(c, path) == outcome(PY, path)
    if name == "unchanged":
        assert outcome(c, path)[0] == "loaded"
