"""Whole-table calls of the compiled core in bounded pieces (SPEC 15,
docs/design.md "No stalls"): no lock hold covers more than a piece of
sessions (`_session_c._set_piece` lowers it, `_session_c._piece_stats`
counts the holds and the widest one), results stay in id order and whole,
removals exact, and dumps taken while the table changes load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rlm_fast import RlmConfig
from rlm_fast.errors import SessionExpired, SessionNotFound
from test_whole_table import churn  # and its dump test runs on this core too

c = pytest.importorskip("rlm_fast._session_c")

pytestmark = pytest.mark.in_process("pieces and locks of the compiled core")

PIECE = 16


@pytest.fixture(autouse=True)
def small_pieces() -> Iterator[None]:
    old = c._set_piece(PIECE)
    try:
        yield
    finally:
        c._set_piece(old)


def test_set_piece_checks_its_argument() -> None:
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError):
            c._set_piece(bad)
    assert c._set_piece(PIECE) == PIECE


def manager(clock: Any, n: int, **config: Any) -> Any:
    m = c.SessionManager(RlmConfig(session_duration_secs=60, **config), clock=clock)
    for _ in range(n):
        m.create_session()
    return m


# A key scan finishes the hash bucket it is in (a bucket holds a few keys).
SLACK = 8


@pytest.mark.parametrize("call", ["list_sessions", "_export", "budget_table"])
def test_listings_hold_a_lock_for_one_piece_at_most(call: str, clock: Any) -> None:
    if call == "budget_table":
        pytest.importorskip("numpy")
    n = 1000
    m = manager(clock, n)
    c._piece_stats(m, reset=True)
    result = getattr(m, call)()
    holds, widest = c._piece_stats(m)
    assert widest <= PIECE + SLACK
    # the key scans (at least a hold per shard) and the lookups
    assert holds >= n // PIECE + 16
    rows = result[0] if call == "_export" else result
    assert len(rows) == n
    ids = [r["id"].tobytes() for r in rows] if call == "budget_table" else [r.id for r in rows]
    assert ids == sorted(ids)


@pytest.mark.parametrize("call", ["cleanup_expired_sessions", "pop_expired_sessions"])
def test_removals_hold_a_lock_for_one_piece_at_most(call: str, clock: Any) -> None:
    m = manager(clock, 500)
    clock.advance(seconds=30)
    keep = {m.create_session().id for _ in range(300)}
    for i, sid in enumerate(list(m.list_sessions())[:40]):
        m.assign_vm(sid.id, f"vm-{i}")  # due sessions holding VMs: vm_mu_ too
    clock.advance(seconds=31)  # the first 500 due
    c._piece_stats(m, reset=True)
    removed = getattr(m, call)()
    holds, widest = c._piece_stats(m)
    assert widest <= PIECE
    assert holds >= 500 // PIECE
    ids = removed if call == "cleanup_expired_sessions" else [i.id for i in removed]
    assert len(ids) == 500 and ids == sorted(ids)
    assert {i.id for i in m.list_sessions()} == keep
    stats = m.get_stats()
    assert (stats.total_sessions_expired, stats.active_sessions, stats.sessions_with_vm) == (
        500,
        300,
        0,
    )
    assert stats.total_sessions_created == 800


def test_counters_need_no_walk(clock: Any) -> None:
    m = manager(clock, 1000)
    c._piece_stats(m, reset=True)
    assert len(m) == 1000
    assert m.get_stats().active_sessions == 1000
    assert c._piece_stats(m) == (0, 0)


def test_a_tree_is_removed_whole_in_one_hold(clock: Any) -> None:
    seen: list[tuple[str, str]] = []
    m = c.SessionManager(
        RlmConfig(session_duration_secs=60),
        clock=clock,
        on_remove=lambda info, why: seen.append((str(info.id), why)),
    )
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(3 * PIECE)]
    grandkid = m.create_child_session(kids[0]).id
    m.assign_vm(grandkid, "vm-1")
    clock.advance(seconds=1)
    other = m.create_session().id
    clock.advance(seconds=60)  # root and its tree due, `other` not
    c._piece_stats(m, reset=True)
    removed = m.pop_expired_sessions()
    _, widest = c._piece_stats(m)
    assert widest >= 3 * PIECE + 2  # the whole tree in one hold
    assert len(removed) == 3 * PIECE + 2
    assert [str(i.id) for i in removed] == sorted(str(i.id) for i in removed)
    assert {why for _, why in seen} == {"expired"}  # every child expires with its root
    assert list(m.list_sessions())[0].id == other and len(m) == 1
    assert m.get_session_for_vm("vm-1") is None


def test_cascade_reasons_with_pieces(clock: Any) -> None:
    seen: dict[str, str] = {}
    m = c.SessionManager(
        RlmConfig(session_duration_secs=60, extension_increment_secs=600, max_extensions=5),
        clock=clock,
        on_remove=lambda info, why: seen.__setitem__(str(info.id), why),
    )
    roots = [m.create_session().id for _ in range(3 * PIECE)]
    clock.advance(seconds=1)
    kids = [m.create_child_session(r).id for r in roots]
    for k in kids:
        m.extend_session(k)  # past its parent's expiry
    clock.advance(seconds=60)  # roots due; kids only with them (cascade) if extended
    removed = m.pop_expired_sessions()
    assert len(removed) == 6 * PIECE and len(m) == 0
    for r in roots:
        assert seen[str(r)] == "expired"
    for k in kids:
        info = next(i for i in removed if i.id == k)
        assert seen[str(k)] == ("expired" if info.expires_at_ns < clock() else "cascade")


def run_with_churn(m: Any, body: Any, work: Any = churn) -> None:
    stop: threading.Event = threading.Event()
    errors: list[BaseException] = []
    worker = threading.Thread(target=work, args=(m, stop, errors))
    worker.start()
    try:
        body()
    finally:
        stop.set()
        worker.join()
    assert not errors


def test_listings_during_churn_are_whole_and_ordered() -> None:
    c._set_piece(7)
    m = c.SessionManager()
    for _ in range(300):
        m.create_session()

    def body() -> None:
        for _ in range(60):
            infos = m.list_sessions()
            keys = [str(i.id) for i in infos]
            assert keys == sorted(keys) and len(keys) == len(set(keys))
            assert len(keys) >= 300  # the 300 quiet ones are always there
            for info in infos:
                assert info.recursion_depth == info.budget_status.current_recursion_depth
                assert (info.parent_id is None) == (info.root_id == info.id)
            stats = m.get_stats()
            assert stats.total_sessions_created == (
                stats.total_sessions_destroyed + stats.total_sessions_expired
                + stats.active_sessions
            )

    run_with_churn(m, body)


def tolerant_churn(m: Any, stop: threading.Event, errors: list[BaseException]) -> None:
    """churn, where a session may expire or be removed by cleanup at any
    moment: those refusals are expected."""
    n = 0
    while not stop.is_set():
        n += 1
        if len(m) > 3000:  # keep the table small: each round lists it
            time.sleep(0.001)
            continue
        try:
            root = m.create_session().id
            kid = m.create_child_session(root).id
            m.assign_vm(kid, f"vm-{n % 7}")
            m.create_child_session(kid)
            if n % 3 == 0:
                m.destroy_session(root)
        except (SessionNotFound, SessionExpired):
            pass
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append(exc)
            return


def test_cleanup_during_churn_removes_only_expired(clock: Any) -> None:
    """Sessions expire in waves while another thread works on the table:
    every removal was due, nothing due is left, counters balance."""
    c._set_piece(7)
    lock = threading.Lock()
    now: list[int] = [clock()]

    def read_clock() -> int:
        with lock:
            return now[0]

    m = c.SessionManager(RlmConfig(session_duration_secs=10), clock=read_clock)

    def body() -> None:
        for _ in range(20):
            for _ in range(100):
                m.create_session()
            with lock:
                now[0] += 11 * 10**9  # every session made so far is due
            cut = read_clock()
            # due and in the table before the pop began (a create that read
            # the clock before the advance may add a due one meanwhile)
            due = {i.id for i in m.list_sessions() if i.expires_at_ns < cut}
            removed = m.pop_expired_sessions()
            assert all(info.expires_at_ns < cut for info in removed)
            ids = [str(i.id) for i in removed]
            assert ids == sorted(ids)
            assert not due & {i.id for i in m.list_sessions()}

    run_with_churn(m, body, tolerant_churn)
    stats = m.get_stats()
    assert stats.total_sessions_created == (
        stats.total_sessions_destroyed + stats.total_sessions_expired + len(m)
    )
    assert stats.total_sessions_expired >= 2000


def test_long_result_loops_give_other_threads_turns(clock: Any, monkeypatch: Any) -> None:
    """Loops that build many result objects with the GIL call
    `_lifecycle.checkpoint` every few hundred objects, where the
    interpreter hands the GIL to a waiting thread (SPEC 15)."""
    from rlm_fast import _lifecycle

    calls: list[int] = []
    monkeypatch.setattr(_lifecycle, "checkpoint", lambda: calls.append(1))
    m = manager(clock, 3000)
    m.list_sessions()
    assert len(calls) >= 3000 // 256
    calls.clear()
    m._export()
    assert len(calls) >= 2 * (3000 // 256)  # the start depths, then the rows
    calls.clear()
    clock.advance(seconds=61)
    assert len(m.cleanup_expired_sessions()) == 3000
    assert len(calls) >= 3000 // 256


def test_an_interrupt_at_a_checkpoint_loses_no_removal(clock: Any, monkeypatch: Any) -> None:
    """A KeyboardInterrupt raised at a checkpoint (a signal handler runs
    there) is raised once the removed sessions are reported, not before."""
    from rlm_fast import _lifecycle

    heard: list[Any] = []
    m = c.SessionManager(RlmConfig(session_duration_secs=60), clock=clock,
                         on_remove=lambda info, reason: heard.append(info.id))
    ids = [m.create_session().id for _ in range(1000)]

    def interrupt() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_lifecycle, "checkpoint", interrupt)
    clock.advance(seconds=61)
    with pytest.raises(KeyboardInterrupt):
        m.pop_expired_sessions()
    assert sorted(heard) == sorted(ids)
    assert len(m) == 0 and m.get_stats().total_sessions_expired == 1000
