"""Lifecycle and observability (SPEC 12, with the choices docs/lifecycle.md
fixes): on_remove, destroy_session's result, pop_expired_sessions, the
removal counters, the reaper, the refusal counters and logging.

Every test runs on every manager through the `core` fixture (the twin, the
compiled core and Redis); time is a FakeClock. `new_manager` builds a
manager with an `on_remove` on any core (the Redis one on a fresh
namespace of the test server)."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FakeClock, table_state

from rlm_fast import (
    InvalidSessionState,
    InvalidSessionToken,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    RlmConfig,
    SessionExpired,
    SessionNotFound,
    SessionState,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

NS = 10**9
DURATION = 1800  # RlmConfig's session_duration_secs and extension_increment_secs

REJECTED = (
    "rejected_not_found",
    "rejected_invalid_token",
    "rejected_terminated",
    "rejected_expired",
    "rejected_tokens",
    "rejected_time",
    "rejected_depth",
)
BASE_STATS = (
    "total_sessions_created",
    "active_sessions",
    "sessions_with_vm",
    "total_sessions_destroyed",
    "total_sessions_expired",
)
MALFORMED = "not-a-session-id"


# -- helpers -------------------------------------------------------------------


def new_manager(
    core: Any,
    clock: Callable[[], int] | None,
    on_remove: Any = None,
    **fields: Any,
) -> Any:
    """A manager of the core under test with `on_remove` and `clock`."""
    config = RlmConfig(**fields)
    if core.name == "redis":
        from rlm_fast.redis import RedisSessionManager

        return RedisSessionManager(
            core.client,
            config,
            namespace=f"lc{uuid.uuid4().hex[:12]}",
            clock=clock,
            on_remove=on_remove,
        )
    return core.SessionManager(config, clock=clock, on_remove=on_remove)


class Recorder:
    """An on_remove that records (info, reason, thread ident)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, info: Any, reason: str) -> None:
        with self.lock:
            self.calls.append((info, reason, threading.get_ident()))

    @property
    def seen(self) -> list[tuple[str, str]]:
        return [(str(info.id), reason) for info, reason, _ in self.calls]


def rejected(m: Any) -> dict[str, int]:
    stats = m.get_stats()
    return {name: getattr(stats, name) for name in REJECTED}


def only(**counts: int) -> dict[str, int]:
    """The rejected_* counters with these (short-named) values, others 0."""
    out = dict.fromkeys(REJECTED, 0)
    for short, value in counts.items():
        out[f"rejected_{short}"] = value
    return out


def base(m: Any) -> tuple[int, ...]:
    stats = m.get_stats()
    return tuple(getattr(stats, name) for name in BASE_STATS)


def by_id(ids: Any) -> list[str]:
    return [str(i) for i in sorted(ids, key=int)]


def gone_id(m: Any) -> Any:
    """A well-formed id of no session (created and destroyed, which counts
    no refusal)."""
    sid = m.create_session().id
    m.destroy_session(sid)
    return sid


def in_thread(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run fn in a daemon thread; fail (not hang) on a deadlock."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "deadlock: the call did not return"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def rich_session(m: Any) -> Any:
    """A session with a VM, context, a snapshot and some use."""
    sid = m.create_session().id
    m.assign_vm(sid, "vm-rich")
    m.set_context_variable(sid, "b", "2")
    m.set_context_variable(sid, "a", "1")
    m.record_snapshot_created(sid, "snap-1", True)
    m.charge_tokens(sid, 7)
    m.charge_time(sid, 9)
    m.extend_session(sid)
    return sid


def tree(m: Any) -> dict[str, Any]:
    """root -> a -> (a1, a2); root -> b."""
    root = m.create_session().id
    a = m.create_child_session(root).id
    b = m.create_child_session(root).id
    a1 = m.create_child_session(a).id
    a2 = m.create_child_session(a).id
    return {"root": root, "a": a, "b": b, "a1": a1, "a2": a2}


# -- on_remove -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, "callback", object(), [print]])
def test_a_non_callable_on_remove_is_a_type_error(bad, core, clock) -> None:
    with pytest.raises(TypeError):
        new_manager(core, clock, bad)


def test_on_remove_none_is_allowed(core, clock) -> None:
    m = new_manager(core, clock, None)
    sid = m.create_session().id
    assert m.destroy_session(sid).id == sid


def test_destroy_reports_the_last_state(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    sid = rich_session(m)
    before = m.get_session(sid)
    returned = m.destroy_session(sid)
    assert rec.seen == [(str(sid), "destroyed")]
    info = rec.calls[0][0]
    for got in (info, returned):
        assert got == before
        assert got.id == sid
        assert got.vm_instance_id == "vm-rich"
        assert got.context_variables == {"a": "1", "b": "2"}
        assert got.current_snapshot_id == "snap-1"
        assert got.snapshot_count == 1
        assert got.extension_count == 1
        assert got.state == SessionState.READY
        assert got.budget_status.tokens_used == 7
        assert got.budget_status.time_used_ms == 9
    assert sid not in m
    assert m.get_session_for_vm("vm-rich") is None
    with pytest.raises(SessionNotFound):
        m.get_session(sid)


def test_destroy_session_returns_its_info_without_on_remove(core, clock) -> None:
    m = new_manager(core, clock)
    sid = m.create_session().id
    m.assign_vm(sid, "vm-1")
    m.set_context_variable(sid, "k", "v")
    before = m.get_session(sid)
    info = m.destroy_session(sid)
    assert info == before
    assert type(info) is type(before)
    assert info.vm_instance_id == "vm-1"
    assert info.context_variables == {"k": "v"}
    assert base(m) == (1, 0, 0, 1, 0)


def test_destroy_of_a_tree_reports_itself_then_descendants_in_id_order(
    core, clock
) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    t = tree(m)
    other = m.create_session().id
    before = {str(i.id): i for i in m.list_sessions()}
    info = m.destroy_session(t["root"])
    assert info.id == t["root"]
    descendants = by_id([t["a"], t["b"], t["a1"], t["a2"]])
    assert rec.seen == [(str(t["root"]), "destroyed")] + [
        (d, "cascade") for d in descendants
    ]
    for got, _, _ in rec.calls:
        assert got == before[str(got.id)]
    assert [i.id for i in m.list_sessions()] == [other]
    assert base(m) == (6, 1, 0, 5, 0)


def test_destroy_of_a_middle_session(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    t = tree(m)
    m.destroy_session(t["a"])
    assert rec.seen == [(str(t["a"]), "destroyed")] + [
        (d, "cascade") for d in by_id([t["a1"], t["a2"]])
    ]
    assert by_id(i.id for i in m.list_sessions()) == by_id([t["root"], t["b"]])
    assert m.children(t["root"]) == [t["b"]]
    assert base(m) == (5, 2, 0, 3, 0)


def test_destroy_of_an_unknown_session_reports_nothing(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    sid = gone_id(m)
    rec.calls.clear()
    with pytest.raises(SessionNotFound):
        m.destroy_session(sid)
    with pytest.raises(InvalidSessionToken):
        m.destroy_session(MALFORMED)
    assert rec.calls == []
    assert base(m) == (1, 0, 0, 1, 0)


def test_cleanup_reports_expired_in_id_order(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    old = [m.create_session().id for _ in range(4)]
    clock.advance(seconds=10)
    young = m.create_session().id
    before = {str(i.id): i for i in m.list_sessions()}
    clock.advance(seconds=DURATION - 10, ns=1)  # the old ones are 1 ns past
    removed = m.cleanup_expired_sessions()
    assert [str(i) for i in removed] == by_id(old)
    assert rec.seen == [(s, "expired") for s in by_id(old)]
    for got, _, _ in rec.calls:
        assert got == before[str(got.id)]
    assert [i.id for i in m.list_sessions()] == [young]
    assert base(m) == (5, 1, 0, 0, 4)


def test_expiring_exactly_now_is_not_removed(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    sid = m.create_session().id
    clock.advance(seconds=DURATION)  # expires_at == now
    assert m.pop_expired_sessions() == []
    assert m.cleanup_expired_sessions() == []
    assert rec.calls == []
    clock.advance(ns=1)
    assert [i.id for i in m.pop_expired_sessions()] == [sid]
    assert rec.seen == [(str(sid), "expired")]


def test_cleanup_of_a_tree_reports_cascade_for_unexpired_descendants(
    core, clock
) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    grandkid = m.create_child_session(kid).id
    early = m.create_child_session(root).id  # expires with the root
    m.extend_session(kid)  # now outlives its parent by DURATION
    m.extend_session(grandkid)
    clock.advance(seconds=DURATION, ns=1)  # root and early are past
    popped = m.pop_expired_sessions()
    everyone = by_id([root, kid, grandkid, early])
    assert [str(i.id) for i in popped] == everyone
    reasons = {
        str(root): "expired",
        str(early): "expired",
        str(kid): "cascade",
        str(grandkid): "cascade",
    }
    assert rec.seen == [(s, reasons[s]) for s in everyone]
    assert [info for info, _, _ in rec.calls] == popped
    assert len(m) == 0
    assert base(m) == (4, 0, 0, 0, 4)


def test_an_expired_child_alone(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    root = m.create_session().id
    m.extend_session(root)
    kid = m.create_child_session(root).id
    grandkid = m.create_child_session(kid).id
    m.extend_session(grandkid)  # outlives kid
    clock.advance(seconds=DURATION, ns=1)  # kid (and not root, not grandkid) is past
    assert by_id(m.cleanup_expired_sessions()) == by_id([kid, grandkid])
    assert rec.seen == [
        (s, {str(kid): "expired", str(grandkid): "cascade"}[s])
        for s in by_id([kid, grandkid])
    ]
    assert m.children(root) == []
    assert [i.id for i in m.list_sessions()] == [root]
    assert base(m) == (3, 1, 0, 0, 2)


def test_pop_expired_sessions_removes_what_cleanup_would(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    ids = [rich_session(m) for _ in range(1)] + [
        m.create_session().id for _ in range(3)
    ]
    m.extend_session(ids[1])  # survives
    before = {str(i.id): i for i in m.list_sessions()}
    clock.advance(seconds=DURATION, ns=1)
    # rich_session extended ids[0] too: only ids[2], ids[3] are past.
    popped = m.pop_expired_sessions()
    assert isinstance(popped, list)
    assert [str(i.id) for i in popped] == by_id(ids[2:])
    assert all(type(i) is type(before[str(ids[0])]) for i in popped)
    assert popped == [before[s] for s in by_id(ids[2:])]
    assert m.pop_expired_sessions() == []
    clock.advance(seconds=DURATION)
    removed = m.cleanup_expired_sessions()
    assert isinstance(removed, list)
    assert all(type(i).__name__ == "SessionId" for i in removed)
    assert [str(i) for i in removed] == by_id(ids[:2])
    assert rec.seen == [(s, "expired") for s in by_id(ids[2:]) + by_id(ids[:2])]
    assert (
        rec.calls[2][0].vm_instance_id == "vm-rich"
        or rec.calls[3][0].vm_instance_id == "vm-rich"
    )
    assert base(m) == (4, 0, 0, 0, 4)
    assert m.get_session_for_vm("vm-rich") is None


@pytest.mark.sync_redis("calls the manager back from on_remove, which runs on the adapter's event-loop thread: a sync callback there cannot await the async manager")
def test_on_remove_runs_after_the_removal_and_may_call_back(core, clock) -> None:
    seen: list[Any] = []
    holder: dict[str, Any] = {}

    def callback(info: Any, reason: str) -> None:
        m = holder["m"]
        # Every session of the call is already gone, and the manager is
        # usable from inside: no lock is held.
        seen.append(
            (
                str(info.id),
                reason,
                info.id in m,
                [str(i.id) for i in m.list_sessions()],
                m.get_stats().active_sessions,
                m.is_session_valid(info.id),
            )
        )
        m.create_session()  # a write, from inside

    m = new_manager(core, clock, callback)
    holder["m"] = m
    t = tree(m)
    in_thread(lambda: m.destroy_session(t["root"]))
    assert [s[:3] for s in seen[:1]] == [(str(t["root"]), "destroyed", False)]
    assert len(seen) == 5
    assert seen[0][3] == []  # the whole tree was gone at the first report
    assert seen[0][4] == 0
    assert [s[5] for s in seen] == [False] * 5
    assert len(m) == 5  # one session created per report
    clock.advance(seconds=DURATION, ns=1)
    seen.clear()
    in_thread(m.cleanup_expired_sessions)
    assert len(seen) == 5
    assert all(s[2] is False for s in seen)
    assert seen[0][3] == []  # all five were gone at the first report
    assert [s[1] for s in seen] == ["expired"] * 5
    assert len(m) == 5


@pytest.mark.sync_redis("on_remove runs on the adapter's event-loop thread (the thread doing the removal), not the thread that called the adapter")
def test_on_remove_runs_in_the_removing_thread(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    a = m.create_session().id
    b = m.create_session().id
    ident: dict[str, int] = {}

    def destroy() -> None:
        ident["destroy"] = threading.get_ident()
        m.destroy_session(a)

    def cleanup() -> None:
        ident["cleanup"] = threading.get_ident()
        m.pop_expired_sessions()

    in_thread(destroy)
    clock.advance(seconds=DURATION, ns=1)
    in_thread(cleanup)
    assert rec.seen == [(str(a), "destroyed"), (str(b), "expired")]
    assert [c[2] for c in rec.calls] == [ident["destroy"], ident["cleanup"]]
    assert threading.get_ident() not in (ident["destroy"], ident["cleanup"])


def test_an_exception_in_on_remove_is_logged_and_changes_nothing(
    core, clock, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="rlm_fast")
    calls: list[tuple[str, str]] = []

    def callback(info: Any, reason: str) -> None:
        calls.append((str(info.id), reason))
        raise RuntimeError(f"boom {len(calls)}")

    m = new_manager(core, clock, callback)
    t = tree(m)
    info = m.destroy_session(t["root"])  # does not raise
    assert info.id == t["root"]
    assert len(calls) == 5  # every session still reported
    assert calls[0] == (str(t["root"]), "destroyed")
    assert len(m) == 0
    assert base(m) == (5, 0, 0, 5, 0)
    errors = [
        r
        for r in caplog.records
        if r.name == "rlm_fast" and r.levelno >= logging.WARNING
    ]
    assert len(errors) == 5
    assert all(r.levelno == logging.ERROR for r in errors)
    assert all(
        r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError)
        for r in errors
    )
    assert [str(r.exc_info[1]) for r in errors] == [f"boom {i}" for i in range(1, 6)]
    # cleanup too
    calls.clear()
    caplog.clear()
    s1, s2 = m.create_session().id, m.create_session().id
    clock.advance(seconds=DURATION, ns=1)
    assert by_id(m.cleanup_expired_sessions()) == by_id([s1, s2])
    assert calls == [(s, "expired") for s in by_id([s1, s2])]
    assert len(m) == 0
    assert m.get_stats().total_sessions_expired == 2
    errors = [
        r
        for r in caplog.records
        if r.name == "rlm_fast" and r.levelno >= logging.WARNING
    ]
    assert len(errors) == 2


def test_on_remove_is_called_once_per_session(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    t = tree(m)
    solo = m.create_session().id
    m.destroy_session(t["a"])
    clock.advance(seconds=DURATION, ns=1)
    m.cleanup_expired_sessions()
    m.cleanup_expired_sessions()
    m.pop_expired_sessions()
    ids = [s for s, _ in rec.seen]
    assert sorted(ids) == sorted(str(s) for s in [*t.values(), solo])
    assert len(ids) == len(set(ids)) == 6


# -- counters for removals ------------------------------------------------------------


def test_cascades_count_in_destroyed_and_expired(core, clock) -> None:
    m = new_manager(core, clock)
    t1 = tree(m)
    tree(m)
    m.assign_vm(t1["a1"], "vm-a1")
    assert base(m) == (10, 10, 1, 0, 0)
    m.destroy_session(t1["root"])
    assert base(m) == (10, 5, 0, 5, 0)
    clock.advance(seconds=DURATION, ns=1)
    assert len(m.pop_expired_sessions()) == 5
    stats = m.get_stats()
    assert base(m) == (10, 0, 0, 5, 5)
    assert stats.total_sessions_created == (
        stats.total_sessions_destroyed
        + stats.total_sessions_expired
        + stats.active_sessions
    )


# -- the reaper ------------------------------------------------------------------------


def test_the_reaper_removes_expired_sessions_through_on_remove(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    a = m.create_session().id
    clock.advance(seconds=10)
    b = m.create_session().id
    reaper = m.start_reaper(0.01)
    try:
        assert reaper.running is True
        clock.advance(seconds=DURATION - 10, ns=1)  # a is past, b is not
        assert wait_for(lambda: len(rec.calls) == 1)
        time.sleep(0.05)  # a few more rounds remove nothing more
        assert rec.seen == [(str(a), "expired")]
        assert rec.calls[0][2] != threading.get_ident()
        assert [i.id for i in m.list_sessions()] == [b]
        clock.advance(seconds=10)
        assert wait_for(lambda: len(rec.calls) == 2)
        assert rec.seen[1] == (str(b), "expired")
        assert base(m) == (2, 0, 0, 0, 2)
    finally:
        reaper.stop()
    assert reaper.running is False


def test_reaper_stop_and_a_second_reaper(core, clock) -> None:
    m = new_manager(core, clock)
    first = m.start_reaper(0.05)
    try:
        with pytest.raises(RuntimeError):
            m.start_reaper(0.05)
        assert first.running is True
    finally:
        first.stop()
    assert first.running is False
    second = m.start_reaper(0.05)  # a new one may start after stop()
    try:
        assert second.running is True
        with pytest.raises(RuntimeError):
            m.start_reaper()
    finally:
        second.stop()
    assert second.running is False
    second.stop()  # idempotent
    # Another manager has its own slot.
    other = new_manager(core, clock)
    with other.start_reaper(0.05) as r, m.start_reaper(0.05) as r2:
        assert r.running and r2.running
    assert not r.running and not r2.running


def test_a_stopped_reaper_removes_nothing(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    m.create_session()
    reaper = m.start_reaper(0.01)
    reaper.stop()
    clock.advance(seconds=DURATION, ns=1)
    time.sleep(0.05)
    assert rec.calls == []
    assert len(m) == 1


def test_the_reaper_as_a_context_manager(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    sid = m.create_session().id
    with m.start_reaper(0.01) as reaper:
        assert reaper.running is True
        clock.advance(seconds=DURATION, ns=1)
        assert wait_for(lambda: len(rec.calls) == 1)
    assert reaper.running is False
    assert rec.seen == [(str(sid), "expired")]
    with m.start_reaper(0.01) as again:  # the slot is free again
        assert again.running is True
    assert again.running is False


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
        ([1], TypeError),
        (0, ValueError),
        (0.0, ValueError),
        (-1, ValueError),
        (-0.5, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
    ],
)
def test_bad_reaper_interval(interval, error, core, clock) -> None:
    m = new_manager(core, clock)
    with pytest.raises(error):
        m.start_reaper(interval)
    # Nothing was started: a good one may start now.
    with m.start_reaper(0.05) as reaper:
        assert reaper.running is True


def test_the_reaper_interval_default_and_keyword(core, clock) -> None:
    m = new_manager(core, clock)
    with m.start_reaper() as reaper:  # 1.0 s by default
        assert reaper.running is True
    with m.start_reaper(interval_s=0.5) as reaper:
        assert reaper.running is True


class FlakyClock(FakeClock):
    """A FakeClock that raises while `broken` is set."""

    broken = False

    def __call__(self) -> int:
        if self.broken:
            raise RuntimeError("the clock broke")
        return self.now


def test_a_failing_sweep_is_logged_and_the_reaper_goes_on(core, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="rlm_fast")
    clock = FlakyClock()
    rec = Recorder()
    m = new_manager(core, clock, rec)
    sid = m.create_session().id
    clock.advance(seconds=DURATION, ns=1)
    clock.broken = True
    with m.start_reaper(0.01) as reaper:
        assert wait_for(
            lambda: any(
                r.name == "rlm_fast"
                and r.exc_info is not None
                and "the clock broke" in str(r.exc_info[1])
                for r in caplog.records
            )
        )
        assert reaper.running is True
        assert rec.calls == []
        clock.broken = False
        assert wait_for(lambda: len(rec.calls) == 1)
        assert reaper.running is True
    assert rec.seen == [(str(sid), "expired")]
    errors = [
        r for r in caplog.records if r.name == "rlm_fast" and r.levelno >= logging.ERROR
    ]
    assert errors and all(r.exc_info is not None for r in errors)


def test_an_on_remove_error_does_not_stop_the_reaper(core, clock, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="rlm_fast")
    calls: list[str] = []

    def callback(info: Any, reason: str) -> None:
        calls.append(str(info.id))
        raise ValueError("callback failed")

    m = new_manager(core, clock, callback)
    a = m.create_session().id
    with m.start_reaper(0.01):
        clock.advance(seconds=DURATION, ns=1)
        assert wait_for(lambda: len(calls) == 1)
        b = m.create_session().id
        clock.advance(seconds=DURATION, ns=1)
        assert wait_for(lambda: len(calls) == 2)
    assert calls == [str(a), str(b)]
    assert len(m) == 0
    assert (
        len(
            [
                r
                for r in caplog.records
                if r.name == "rlm_fast" and r.levelno == logging.ERROR
            ]
        )
        >= 2
    )


# -- refusal counters ---------------------------------------------------------------------

# Methods that take a session id first and raise SessionNotFound /
# InvalidSessionToken for an unknown / malformed one.
LOOKUPS = [
    ("get_session", ()),
    ("children", ()),
    ("destroy_session", ()),
    ("release_vm", ()),
    ("get_context_variable", ("k",)),
    ("get_all_context_variables", ()),
    ("get_current_snapshot", ()),
]
# Writes: every check of a write, in order (path validity first).
WRITES = [
    ("update_session_state", (SessionState.READY,)),
    ("validate_session", ()),
    ("extend_session", ()),
    ("assign_vm", ("vm-w",)),
    ("set_context_variable", ("k", "v")),
    ("delete_context_variable", ("k",)),
    ("update_budget", ("<BudgetStatus>",)),
    ("increment_recursion_depth", ()),
    ("decrement_recursion_depth", ()),
    ("record_snapshot_created", ("snap-w",)),
    ("record_snapshot_restored", ("snap-w",)),
    ("clear_snapshot_tracking", ()),
    ("charge_tokens", (1,)),
    ("charge_time", (1,)),
    ("check_budget", ()),
    ("create_child_session", ()),
    ("begin_call", ()),
    ("end_call", ()),
]


def enter_recursion(m: Any, sid: Any) -> None:
    with m.recursion(sid):
        pass


def enter_call(m: Any, sid: Any) -> None:
    with m.call(sid):
        pass


ALL = [(name, args) for name, args in LOOKUPS + WRITES]


def invoke(core: Any, m: Any, name: str, sid: Any, args: tuple[Any, ...]) -> None:
    # the core's own BudgetStatus (the twin takes only its own)
    args = tuple(core.BudgetStatus() if a == "<BudgetStatus>" else a for a in args)
    if name == "recursion":
        enter_recursion(m, sid)
    elif name == "call":
        enter_call(m, sid)
    else:
        getattr(m, name)(sid, *args)


ENTRIES = [("recursion", ()), ("call", ())]


@pytest.mark.parametrize(
    ("name", "args"), ALL + ENTRIES, ids=[n for n, _ in ALL + ENTRIES]
)
def test_not_found_and_invalid_token_count_once(name, args, core, clock) -> None:
    m = new_manager(core, clock)
    sid = gone_id(m)
    assert rejected(m) == only()
    with pytest.raises(SessionNotFound):
        invoke(core, m, name, sid, args)
    assert rejected(m) == only(not_found=1)
    with pytest.raises(SessionNotFound):
        invoke(core, m, name, str(sid), args)
    assert rejected(m) == only(not_found=2)
    with pytest.raises(InvalidSessionToken):
        invoke(core, m, name, MALFORMED, args)
    assert rejected(m) == only(not_found=2, invalid_token=1)
    # A non-str, non-SessionId id is a TypeError and counts nowhere.
    with pytest.raises(TypeError):
        invoke(core, m, name, 12345, args)
    with pytest.raises(TypeError):
        invoke(core, m, name, None, args)
    assert rejected(m) == only(not_found=2, invalid_token=1)


@pytest.mark.parametrize(
    ("name", "args"), WRITES + ENTRIES, ids=[n for n, _ in WRITES + ENTRIES]
)
@pytest.mark.parametrize(
    "how", ["terminated", "ancestor_terminated", "clock", "state", "ancestor_clock"]
)
def test_dead_sessions_count_by_reason(name, args, how, core, clock) -> None:
    m = new_manager(core, clock)
    root = m.create_session().id
    sid = root
    if how == "terminated":
        m.update_session_state(root, SessionState.TERMINATED)
    elif how == "ancestor_terminated":
        sid = m.create_child_session(root).id
        m.update_session_state(root, SessionState.TERMINATED)
    elif how == "state":
        m.update_session_state(root, SessionState.EXPIRED)
    elif how == "clock":
        clock.advance(seconds=DURATION, ns=1)
    else:  # ancestor_clock: the child outlives its parent's expiry
        sid = m.create_child_session(root).id
        m.extend_session(sid)
        clock.advance(seconds=DURATION, ns=1)
    assert rejected(m) == only()
    before = table_state(m)
    error = InvalidSessionState if "terminated" in how else SessionExpired
    with pytest.raises(error):
        invoke(core, m, name, sid, args)
    assert table_state(m) == before
    key = "terminated" if "terminated" in how else "expired"
    assert rejected(m) == only(**{key: 1})
    assert m.is_session_valid(sid) is False
    assert rejected(m) == only(**{key: 2})


@pytest.mark.parametrize(
    "how",
    [
        "check_budget",
        "begin_call",
        "call",
        "charge_tokens",
        "end_call",
        "child_check_budget",
    ],
)
def test_token_refusals_count(how, core, clock) -> None:
    m = new_manager(core, clock, token_budget=10, time_budget_ms=10)
    sid = m.create_session().id
    if how in ("charge_tokens", "end_call"):
        if how == "end_call":
            m.begin_call(sid)
        with pytest.raises(TokenBudgetExceeded):
            if how == "end_call":
                m.end_call(sid, tokens=11)
            else:
                m.charge_tokens(sid, 11)
        # The over-budget charge stays recorded and counts once.
        assert m.get_session(sid).budget_status.tokens_used == 11
        assert rejected(m) == only(tokens=1)
        return
    m.charge_tokens(sid, 10)  # exhausted, not over: no refusal
    assert rejected(m) == only()
    target = sid
    if how == "child_check_budget":  # the root's budget refuses the child
        target = m.create_child_session(sid, token_budget=0).id
        how = "check_budget"
    with pytest.raises(TokenBudgetExceeded) as excinfo:
        if how == "call":
            enter_call(m, target)
        else:
            getattr(m, how)(target)
    assert (excinfo.value.used, excinfo.value.budget) == (10, 10)
    assert rejected(m) == only(tokens=1)


@pytest.mark.parametrize(
    "how", ["check_budget", "begin_call", "call", "charge_time", "end_call"]
)
def test_time_refusals_count(how, core, clock) -> None:
    m = new_manager(core, clock, time_budget_ms=10)
    sid = m.create_session().id
    if how in ("charge_time", "end_call"):
        if how == "end_call":
            m.begin_call(sid)
            with pytest.raises(TimeBudgetExceeded):
                m.end_call(sid, elapsed_ms=11)
        else:
            with pytest.raises(TimeBudgetExceeded):
                m.charge_time(sid, 11)
        assert m.get_session(sid).budget_status.time_used_ms == 11
        assert rejected(m) == only(time=1)
        return
    m.charge_time(sid, 10)
    assert rejected(m) == only()
    with pytest.raises(TimeBudgetExceeded):
        if how == "call":
            enter_call(m, sid)
        else:
            getattr(m, how)(sid)
    assert rejected(m) == only(time=1)


def test_an_over_budget_end_call_counts_tokens_once(core, clock) -> None:
    m = new_manager(core, clock, token_budget=10, time_budget_ms=10)
    sid = m.create_session().id
    m.begin_call(sid)
    with pytest.raises(TokenBudgetExceeded):
        m.end_call(sid, tokens=11, elapsed_ms=11)  # both over: tokens raised
    assert rejected(m) == only(tokens=1)


@pytest.mark.parametrize(
    "how",
    [
        "increment_recursion_depth",
        "begin_call",
        "call",
        "recursion",
        "create_child_session",
        "check_budget",
    ],
)
def test_depth_refusals_count(how, core, clock) -> None:
    m = new_manager(core, clock, max_recursion_depth=1)
    sid = m.create_session().id
    if how == "check_budget":
        # a depth past the maximum, set through update_budget
        m.update_budget(
            sid, m.get_session(sid).budget_status.replace(current_recursion_depth=2)
        )
    else:
        m.increment_recursion_depth(sid)
    assert rejected(m) == only()
    with pytest.raises(RecursionDepthExceeded):
        if how == "call":
            enter_call(m, sid)
        elif how == "recursion":
            enter_recursion(m, sid)
        else:
            getattr(m, how)(sid)
    assert rejected(m) == only(depth=1)


def test_is_session_valid_counts_by_reason(core, clock) -> None:
    m = new_manager(core, clock)
    live = m.create_session().id
    kid = m.create_child_session(live).id
    assert m.is_session_valid(live) is True
    assert m.is_session_valid(str(kid)) is True
    assert rejected(m) == only()
    assert m.is_session_valid(MALFORMED) is False
    assert m.is_session_valid("") is False
    assert rejected(m) == only(invalid_token=2)
    assert m.is_session_valid(gone_id(m)) is False
    assert rejected(m) == only(invalid_token=2, not_found=1)
    dead = m.create_session().id
    m.update_session_state(dead, SessionState.TERMINATED)
    dead_kid = m.create_child_session(live).id
    m.update_session_state(
        live, SessionState.TERMINATED
    )  # kid and dead_kid by ancestry
    assert [m.is_session_valid(s) for s in (dead, live, kid, dead_kid)] == [False] * 4
    assert rejected(m) == only(invalid_token=2, not_found=1, terminated=4)
    old = m.create_session().id
    m.update_session_state(old, SessionState.EXPIRED)
    assert m.is_session_valid(old) is False
    fresh = m.create_session().id
    clock.advance(seconds=DURATION, ns=1)
    assert m.is_session_valid(fresh) is False
    assert rejected(m) == only(invalid_token=2, not_found=1, terminated=4, expired=2)
    with pytest.raises(TypeError):
        m.is_session_valid(42)
    assert rejected(m) == only(invalid_token=2, not_found=1, terminated=4, expired=2)


def test_what_counts_nowhere(core, clock, tmp_path: pathlib.Path) -> None:
    m = new_manager(core, clock, max_extensions=1, max_snapshots_per_session=1)
    sid = m.create_session().id
    unknown = gone_id(m)
    # None / False by design
    assert m.get_assigned_vm(unknown) is None
    assert m.get_assigned_vm(sid) is None
    assert (unknown in m) is False
    assert (MALFORMED in m) is False
    assert (12 in m) is False
    assert m.get_session_for_vm("vm-none") is None
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    else:
        assert list(m.validate_many([sid, unknown, MALFORMED])) == [True, False, False]
    # Other errors
    m.extend_session(sid)
    with pytest.raises(MaxExtensionsReached):
        m.extend_session(sid)
    m.record_snapshot_created(sid, "s1")
    with pytest.raises(MaxSnapshotsReached):
        m.record_snapshot_created(sid, "s2")
    with pytest.raises(ValueError):
        m.charge_tokens(sid, -1)
    with pytest.raises(TypeError):
        m.charge_time(sid, "1")
    with pytest.raises(ValueError):
        m.end_call(sid, tokens=-1)
    with pytest.raises(TypeError):
        m.assign_vm(sid, 5)
    with pytest.raises((ValueError, TypeError)):
        m.update_session_state(sid, "no-such-state")
    with pytest.raises(TypeError):
        m.get_session(3.5)
    with pytest.raises(ValueError):
        m.create_child_session(sid, token_budget=10**9)
    assert rejected(m) == only()


def test_refusals_are_exact_under_threads(core, clock) -> None:
    m = new_manager(core, clock)
    unknown = gone_id(m)
    live = m.create_session().id
    threads, rounds = 4, 50
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        barrier.wait()
        for _ in range(rounds):
            with pytest.raises(SessionNotFound):
                m.get_session(unknown)
            assert m.is_session_valid(unknown) is False
            with pytest.raises(InvalidSessionToken):
                m.charge_tokens(MALFORMED, 1)
            assert m.is_session_valid(live) is True
            m.charge_tokens(live, 1)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not any(w.is_alive() for w in workers)
    total = threads * rounds
    assert rejected(m) == only(not_found=2 * total, invalid_token=total)
    assert m.get_session(live).budget_status.tokens_used == total


def test_refusal_counters_are_not_dumped(core, clock, tmp_path: pathlib.Path) -> None:
    m = new_manager(core, clock)
    sid = m.create_session().id
    m.destroy_session(m.create_session().id)
    unknown = gone_id(m)
    assert m.is_session_valid(unknown) is False
    assert m.is_session_valid(MALFORMED) is False
    with pytest.raises(SessionNotFound):
        m.validate_session(unknown)
    assert rejected(m) == only(not_found=2, invalid_token=1)
    path = tmp_path / "dump.json"
    m.dump(path)
    loaded = core.SessionManager.load(path, clock=clock)
    stats = loaded.get_stats()
    assert base(loaded) == base(m) == (3, 1, 0, 2, 0)
    assert rejected(loaded) == only()
    assert [i.id for i in loaded.list_sessions()] == [sid]
    text = path.read_text()
    assert "rejected" not in text
    assert stats.total_sessions_destroyed == 2


def test_is_session_valid_counts_the_first_refusal_root_first(core, clock) -> None:
    """A child whose own expiry passed under a terminated root: False counts
    as the root's refusal (terminated), the one a write would raise."""
    m = core.SessionManager(RlmConfig(session_duration_secs=60, max_extensions=5), clock=clock)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.extend_session(root)  # the root now outlives its child
    m.update_session_state(root, "Terminated")
    clock.advance(seconds=61)  # the child's own expiry passed, the root's not
    assert m.is_session_valid(kid) is False
    assert rejected(m) == only(terminated=1)
    with pytest.raises(InvalidSessionState):
        m.validate_session(kid)


def test_load_takes_on_remove(core, clock, tmp_path: pathlib.Path) -> None:
    """A loaded manager reports its removals like a constructed one."""
    m = new_manager(core, clock)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    m.assign_vm(kid, "vm-loaded")
    path = tmp_path / "dump.json"
    m.dump(path)
    heard: list[tuple[str, str, object]] = []
    loaded = core.SessionManager.load(
        path, clock=clock, on_remove=lambda info, why: heard.append((str(info.id), why, info.vm_instance_id))
    )
    loaded.destroy_session(root)
    assert heard == [(str(root), "destroyed", None), (str(kid), "cascade", "vm-loaded")]
    with pytest.raises(TypeError):
        core.SessionManager.load(path, clock=clock, on_remove=42)


def test_session_stats_fields_and_forms(core, clock) -> None:
    stats = core.SessionStats(*range(1, 13))
    assert [getattr(stats, n) for n in BASE_STATS + REJECTED] == list(range(1, 13))
    kw = core.SessionStats(rejected_time=6, rejected_depth=7, rejected_not_found=1)
    assert (kw.rejected_time, kw.rejected_depth, kw.rejected_not_found) == (6, 7, 1)
    assert kw.total_sessions_created == 0
    assert list(stats.to_dict()) == list(BASE_STATS + REJECTED)
    assert list(json.loads(stats.to_json())) == list(BASE_STATS + REJECTED)
    m = new_manager(core, clock)
    assert m.get_stats() == core.SessionStats()
    with pytest.raises(SessionNotFound):
        m.get_session(gone_id(m))
    assert m.get_stats().to_dict()["rejected_not_found"] == 1


# -- logging ------------------------------------------------------------------------


def records(caplog: Any) -> list[tuple[str, str | None]]:
    return [
        (r.getMessage(), getattr(r, "session_id", None))
        for r in caplog.records
        if r.name == "rlm_fast" and r.levelno == logging.INFO
    ]


def test_the_logger_has_only_a_null_handler() -> None:
    logger = logging.getLogger("rlm_fast")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers)


def test_log_records_of_the_lifecycle(core, clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rlm_fast")
    m = new_manager(core, clock)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    assert records(caplog) == [
        (f"created session {root}", str(root)),
        (f"created session {kid}, a child of {root}", str(kid)),
    ]
    caplog.clear()
    m.destroy_session(root)
    assert records(caplog) == [
        (f"session {root} destroyed", str(root)),
        (f"session {kid} removed with its ancestor", str(kid)),
    ]
    caplog.clear()
    a = m.create_session().id
    b = m.create_child_session(a).id
    m.extend_session(b)
    caplog.clear()
    clock.advance(seconds=DURATION, ns=1)
    m.cleanup_expired_sessions()
    assert records(caplog) == [
        (f"session {a} expired", str(a))
        if s == str(a)
        else (f"session {b} removed with its ancestor", str(b))
        for s in by_id([a, b])
    ]


def test_vm_reassignment_is_logged(core, clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rlm_fast")
    m = new_manager(core, clock)
    a = m.create_session().id
    b = m.create_session().id
    caplog.clear()
    m.assign_vm(a, "vm-1")
    m.assign_vm(a, "vm-1")  # the same again: no move
    m.assign_vm(a, "vm-2")  # a's own VM changes: no session loses it
    assert records(caplog) == []
    m.assign_vm(b, "vm-2")
    assert records(caplog) == [
        (f"VM vm-2 reassigned from session {a} to session {b}", str(b))
    ]
    assert m.get_session_for_vm("vm-2") == b
    assert m.get_assigned_vm(a) is None


def test_a_level_change_after_calls_is_heard_at_once(core, clock, caplog) -> None:
    # The compiled core reads the logger's own isEnabledFor memo; a level
    # set between calls (which clears that memo), and `disabled`, are
    # honoured on the very next call.
    logger = logging.getLogger("rlm_fast")
    caplog.set_level(logging.INFO, logger="rlm_fast")  # restored after the test
    logger.setLevel(logging.WARNING)
    m = new_manager(core, clock)
    quiet = m.create_session().id  # the memo now says INFO is off
    m.destroy_session(quiet)
    assert records(caplog) == []
    logger.setLevel(logging.INFO)
    loud = m.create_session().id
    assert records(caplog) == [(f"created session {loud}", str(loud))]
    caplog.clear()
    logger.disabled = True  # the memo says INFO is on; disabled wins
    try:
        m.destroy_session(loud)
        m.create_session()
    finally:
        logger.disabled = False
    assert records(caplog) == []
    logger.setLevel(logging.WARNING)
    m.create_session()
    assert records(caplog) == []


def test_nothing_is_logged_when_disabled(core, clock, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rlm_fast")
    m = new_manager(core, clock)
    a = m.create_session().id
    kid = m.create_child_session(a).id
    b = m.create_session().id
    m.assign_vm(a, "vm")
    m.assign_vm(b, "vm")
    m.destroy_session(b)
    clock.advance(seconds=DURATION, ns=1)
    m.pop_expired_sessions()
    assert kid not in m
    assert [r for r in caplog.records if r.name == "rlm_fast"] == []


class CallingHandler(logging.Handler):
    """A handler that calls back into the manager for every record: it
    deadlocks if a record is emitted while the manager's lock is held."""

    def __init__(self, manager: Any) -> None:
        super().__init__(logging.INFO)
        self.manager = manager
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(
            (record.getMessage(), self.manager.get_stats().active_sessions)
        )


@pytest.mark.sync_redis("calls the manager back from a logging handler, which runs on the adapter's event-loop thread: a sync callback there cannot await the async manager")
def test_records_are_never_emitted_under_a_lock(core, clock) -> None:
    logger = logging.getLogger("rlm_fast")
    m = new_manager(core, clock)
    handler = CallingHandler(m)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:

        def work() -> None:
            a = m.create_session().id
            m.create_child_session(a)
            b = m.create_session().id
            m.assign_vm(a, "vm")
            m.assign_vm(b, "vm")
            m.destroy_session(a)
            clock.advance(seconds=DURATION, ns=1)
            m.cleanup_expired_sessions()

        in_thread(work)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [text.split(" ")[0] for text, _ in handler.seen]
    assert messages == [
        "created",
        "created",
        "created",
        "VM",
        "session",
        "session",
        "session",
    ]
    assert [n for _, n in handler.seen] == [1, 2, 3, 3, 1, 1, 0]


def test_racing_removals_report_each_session_once(core, clock) -> None:
    rec = Recorder()
    m = new_manager(core, clock, rec)
    trees = [tree(m) for _ in range(3)]
    roots = [t["root"] for t in trees]
    loose = [m.create_session().id for _ in range(6)]
    threads = 4
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def destroy_all() -> None:
        barrier.wait()
        for sid in roots:
            try:
                m.destroy_session(sid)
                result = "ok"
            except SessionNotFound:
                result = "gone"
            with lock:
                outcomes.append(result)

    workers = [threading.Thread(target=destroy_all) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert outcomes.count("ok") == 3
    assert outcomes.count("gone") == 3 * (threads - 1)
    ids = [s for s, _ in rec.seen]
    assert sorted(ids) == sorted(str(s) for t in trees for s in t.values())
    assert [r for _, r in rec.seen].count("destroyed") == 3
    # Racing cleanups: each expired session is popped and reported once.
    rec.calls.clear()
    clock.advance(seconds=DURATION, ns=1)
    popped: list[str] = []
    barrier2 = threading.Barrier(threads)

    def sweep() -> None:
        barrier2.wait()
        got = [str(i.id) for i in m.pop_expired_sessions()]
        with lock:
            popped.extend(got)

    workers = [threading.Thread(target=sweep) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert sorted(popped) == sorted(str(s) for s in loose)
    assert sorted(s for s, _ in rec.seen) == sorted(popped)
    assert base(m) == (21, 0, 0, 15, 6)
