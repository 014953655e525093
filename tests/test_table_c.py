"""The compiled core's table layout (docs/design.md "The table"): rows in a
slab that are reused, an open-addressing index, and an expiry index of
(expiry, row) entries. What these tests hold it to: a reused row never
makes a session look due early or removes one twice, a clock that stands
still cannot pile up index entries, and the index finds every session
through growth and deletion."""

from __future__ import annotations

import pathlib
import random

import pytest
from conftest import PY, FakeClock
from test_dump_load import parts, write_dump

from rlm_fast import RlmConfig

c = pytest.importorskip("rlm_fast._session_c")


def manager(clock: FakeClock, **config: int) -> object:
    config.setdefault("session_duration_secs", 60)
    return c.SessionManager(RlmConfig(**config), clock=clock)


def test_a_clock_that_stands_still_cannot_pile_up_index_entries(clock: FakeClock) -> None:
    m = manager(clock)
    keep = m.create_session().id
    for _ in range(20_000):  # each reuses the row just freed, with the same expiry
        m.destroy_session(m.create_session().id)
    assert len(m) == 1 and keep in m
    # Each of the 16 shards purges once it holds 2 x its sessions + 64
    # entries; without dropping copies all 20,000 entries would stay live.
    assert c._expiry_entries(m) <= 16 * (2 * len(m) + 64 + 1)
    clock.advance(seconds=61)
    assert m.cleanup_expired_sessions() == [keep]
    stats = m.get_stats()
    assert (stats.total_sessions_expired, stats.total_sessions_destroyed) == (1, 20_000)


def test_a_reused_row_with_the_same_expiry_is_removed_once(clock: FakeClock) -> None:
    m = manager(clock)
    first = m.create_session().id
    m.destroy_session(first)
    second = m.create_session().id  # same row, same expiry: two entries name it
    clock.advance(seconds=60)
    assert m.cleanup_expired_sessions() == []  # expires_at == now: not yet
    clock.advance(ns=1)
    assert m.cleanup_expired_sessions() == [second]
    assert m.cleanup_expired_sessions() == []
    stats = m.get_stats()
    assert (stats.active_sessions, stats.total_sessions_expired) == (0, 1)


def test_a_reused_row_does_not_make_its_new_session_due_early(clock: FakeClock) -> None:
    m = manager(clock)
    first = m.create_session().id
    m.destroy_session(first)
    clock.advance(seconds=30)
    second = m.create_session().id  # same row, expires 30 s after the first would have
    clock.advance(seconds=31)  # past the first's expiry, not the second's
    assert m.cleanup_expired_sessions() == []
    assert m.is_session_valid(second)
    clock.advance(seconds=30)
    assert m.cleanup_expired_sessions() == [second]


def test_extensions_keep_the_right_entry_live(clock: FakeClock) -> None:
    m = manager(clock, max_extensions=3, extension_increment_secs=60)
    sid = m.create_session().id
    m.extend_session(sid)  # expires at +120 s; the +60 s entry goes stale
    clock.advance(seconds=61)
    assert m.cleanup_expired_sessions() == []
    clock.advance(seconds=60)
    assert m.cleanup_expired_sessions() == [sid]


def test_the_index_finds_every_session_through_growth_and_deletion(clock: FakeClock) -> None:
    rng = random.Random(3)
    m = manager(clock, session_duration_secs=3600)
    live: set[object] = set()
    gone: list[object] = []
    for round_ in range(4):
        live.update(m.create_session().id for _ in range(6_000))
        for sid in rng.sample(sorted(live), len(live) // 2):
            m.destroy_session(sid)
            live.remove(sid)
            gone.append(sid)
        assert len(m) == len(live), round_
        assert all(sid in m for sid in live)
        assert not any(sid in m for sid in gone)
    assert sorted(i.id for i in m.list_sessions()) == sorted(live)
    for sid in live:
        m.destroy_session(sid)
    assert len(m) == 0 and m.list_sessions() == []
    assert c._expiry_entries(m) > 1000  # stale entries wait for the next purge
    for _ in range(16 * 65):  # a purge in every shard drops them
        m.destroy_session(m.create_session().id)
    assert c._expiry_entries(m) <= 16 * 65


def test_cleanup_sorts_many_ids_some_alike_in_their_high_half(
    clock: FakeClock, tmp_path: pathlib.Path
) -> None:
    """The ids of a large cleanup are sorted by a radix sort on their high
    64 bits and an insertion pass on the low 64 (_c/session.h
    rlm_sort_keys); ids alike in the high half take that second pass."""
    src = manager(clock)
    for _ in range(3000):
        src.create_session()
    path = tmp_path / "made.jsonl"
    src.dump(path)
    header, lines = parts(path)
    rng = random.Random(5)
    shared = rng.getrandbits(64)
    ids = [c.SessionId.from_int(((shared if i % 3 else rng.getrandbits(64)) << 64)
                                | rng.getrandbits(64)) for i in range(len(lines))]
    assert len(set(ids)) == len(ids)
    prefix = len('{"id":"') + 26
    write_dump(path, header, [f'{{"id":"{sid}' + line[prefix:] for sid, line in zip(ids, lines)])
    loaded = [core.SessionManager.load(path, clock=clock) for core in (c, PY)]
    clock.advance(seconds=61)
    for m in loaded:
        assert m.cleanup_expired_sessions() == sorted(ids)


@pytest.mark.skipif(
    c._debug_build(),
    reason="the debug build checks a whole shard after every change: 300,000 creates take hours",
)
def test_listings_of_a_large_table_free_their_buffers_in_steps(clock: FakeClock) -> None:
    """300,000 sessions copied out make a buffer of over 64 MB, whose pages
    rlm_free_vector hands back in steps (madvise, on Linux) before freeing
    it: the table and the next listings are untouched by that."""
    m = manager(clock, session_duration_secs=3600)
    ids = sorted(m.create_session().id for _ in range(300_000))
    for _ in range(2):
        listed = m.list_sessions()
        assert len(listed) == len(ids)
        assert listed[0].id == ids[0] and listed[-1].id == ids[-1]
        assert [info.id for info in listed[::997]] == ids[::997]
        del listed
    infos, _, starts = m._export()
    assert len(infos) == len(ids) and starts == [0] * len(ids)
    clock.advance(seconds=3601)
    assert m.cleanup_expired_sessions() == ids
