"""8 threads hammer one manager (SPEC 4.5, 4.6 and 6), on both cores.

Threads start together on a Barrier and are joined with a timeout; a thread
still alive afterwards fails the test (a deadlock), as does any exception a
thread did not expect. Only the end state is asserted, never timings.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Callable

import pytest
from thread_tools import N_THREADS, NS, LockedClock, run_threads

from rlm_fast import (
    RecursionDepthExceeded,
    RlmConfig,
    SessionNotFound,
    TokenBudgetExceeded,
)

U64_MAX = 2**64 - 1


# --------------------------------------------------------------------------
# (a) charges
# --------------------------------------------------------------------------


def test_defect_5_charges_are_atomic(core, make_manager) -> None:
    m = make_manager()
    sids = [m.create_session().id for _ in range(4)]
    for sid in sids:
        m.update_budget(sid, m.get_session(sid).budget_status.replace(
            token_budget=U64_MAX, time_budget_ms=U64_MAX))
    per_thread = 2000
    returned: list[list[tuple[int, int]]] = [[] for _ in range(N_THREADS)]
    time_sums = [Counter() for _ in range(N_THREADS)]

    def work(index: int) -> None:
        rng = random.Random(index)
        out = returned[index]
        for i in range(per_thread):
            k = (index + i) % 4
            out.append((k, m.charge_tokens(sids[k], 1)))
            ms = rng.randint(0, 5)
            m.charge_time(sids[k], ms)
            time_sums[index][k] += ms

    run_threads(work)

    totals = Counter(k for chunk in returned for k, _ in chunk)
    for k, sid in enumerate(sids):
        status = m.get_session(sid).budget_status
        assert status.tokens_used == totals[k]
        assert status.time_used_ms == sum(c[k] for c in time_sums)
        # Each charge saw its own total: the returned totals are 1..N exactly.
        seen = sorted(v for chunk in returned for kk, v in chunk if kk == k)
        assert seen == list(range(1, totals[k] + 1))
    assert sum(totals.values()) == N_THREADS * per_thread


def test_defect_5_over_budget_charges_are_exact(core, make_manager) -> None:
    m = make_manager(token_budget=1000)
    sid = m.create_session().id
    per_thread = 200
    ok: list[list[int]] = [[] for _ in range(N_THREADS)]
    over: list[list[tuple[int, int]]] = [[] for _ in range(N_THREADS)]

    def work(index: int) -> None:
        for _ in range(per_thread):
            try:
                ok[index].append(m.charge_tokens(sid, 1))
            except TokenBudgetExceeded as exc:
                over[index].append((exc.used, exc.budget))

    run_threads(work)

    oks = sorted(v for chunk in ok for v in chunk)
    overs = sorted(v for chunk in over for v in chunk)
    assert oks == list(range(1, 1001))
    assert overs == [(used, 1000) for used in range(1001, 1601)]
    assert m.get_session(sid).budget_status.tokens_used == 1600


# --------------------------------------------------------------------------
# (b) VM assignment
# --------------------------------------------------------------------------


def test_defect_5_vm_assignment_keeps_the_maps_inverse(core, make_manager) -> None:
    m = make_manager()
    sids = [m.create_session().id for _ in range(6)]
    doomed = [m.create_session().id for _ in range(4)]
    everyone = sids + doomed
    vms = [f"vm-{i}" for i in range(4)]

    def work(index: int) -> None:
        rng = random.Random(1000 + index)
        for i in range(2000):
            sid = rng.choice(everyone)
            op = rng.random()
            try:
                if op < 0.6:
                    m.assign_vm(sid, rng.choice(vms))
                elif op < 0.85:
                    m.release_vm(sid)
                else:
                    vm = rng.choice(vms)
                    owner = m.get_session_for_vm(vm)
                    assert owner is None or owner in everyone
            except SessionNotFound:
                assert sid in doomed
            if index == 0 and i % 500 == 499:
                m.destroy_session(doomed[i // 500])

    run_threads(work)

    infos = m.list_sessions()
    assert sorted(i.id for i in infos) == sorted(sids)
    holders = {}
    for info in infos:
        assert m.get_assigned_vm(info.id) == info.vm_instance_id
        if info.vm_instance_id is not None:
            assert info.vm_instance_id not in holders
            holders[info.vm_instance_id] = info.id
    for vm in vms:
        assert m.get_session_for_vm(vm) == holders.get(vm)
    for sid in everyone:
        for vm in vms:
            owner_says = m.get_session_for_vm(vm) == sid
            session_says = sid in m and m.get_session(sid).vm_instance_id == vm
            assert owner_says == session_says
    assert m.get_stats().sessions_with_vm == len(holders)


# --------------------------------------------------------------------------
# (c) create / destroy / cleanup with a moving clock
# --------------------------------------------------------------------------


def test_defect_6_counters_never_drift(core) -> None:
    clock = LockedClock()
    m = core.SessionManager(RlmConfig(session_duration_secs=60), clock=clock)
    creates = [0] * N_THREADS
    destroys = [0] * N_THREADS
    expired = [0] * N_THREADS

    def work(index: int) -> None:
        rng = random.Random(2000 + index)
        if index == N_THREADS - 1:
            # The janitor: moves the clock and reaps.
            for _ in range(400):
                clock.advance(rng.randint(1, 5) * NS)
                expired[index] += len(m.cleanup_expired_sessions())
            return
        if index == N_THREADS - 2:
            # A reader: every answer is well formed.
            for _ in range(400):
                stats = m.get_stats()
                assert stats.active_sessions >= 0
                len(m)
                for info in m.list_sessions():
                    assert info.recursion_depth == info.budget_status.current_recursion_depth
            return
        mine = []
        for _ in range(600):
            mine.append(m.create_session().id)
            creates[index] += 1
            if rng.random() < 0.5 and mine:
                victim = mine.pop(rng.randrange(len(mine)))
                try:
                    m.destroy_session(victim)
                except SessionNotFound:
                    pass  # the janitor got it first
                else:
                    destroys[index] += 1
            if rng.random() < 0.2:
                expired[index] += len(m.cleanup_expired_sessions())

    run_threads(work)

    stats = m.get_stats()
    infos = m.list_sessions()
    assert stats.total_sessions_created == sum(creates)
    assert stats.total_sessions_destroyed == sum(destroys)
    assert stats.total_sessions_expired == sum(expired)
    assert stats.active_sessions == len(m) == len(infos)
    assert stats.total_sessions_created == (
        stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
    )
    assert len({i.id for i in infos}) == len(infos)
    # And after a final sweep far in the future, nothing is left.
    clock.advance(3600 * NS)
    assert len(m.cleanup_expired_sessions()) == len(infos)
    assert len(m) == 0
    assert m.get_stats().active_sessions == 0


# --------------------------------------------------------------------------
# (d) recursion depth
# --------------------------------------------------------------------------


def test_recursion_depth_never_exceeds_the_maximum(core, make_manager) -> None:
    m = make_manager(max_recursion_depth=3)
    sid = m.create_session().id
    seen_depths: list[set[int]] = [set() for _ in range(N_THREADS)]
    refusals = [0] * N_THREADS

    def work(index: int) -> None:
        rng = random.Random(3000 + index)
        for _ in range(500):
            try:
                if rng.random() < 0.5:
                    with m.recursion(sid) as depth:
                        seen_depths[index].add(depth)
                        info = m.get_session(sid)
                        assert info.recursion_depth <= 3
                        assert info.recursion_depth == info.budget_status.current_recursion_depth
                else:
                    depth = m.increment_recursion_depth(sid)
                    seen_depths[index].add(depth)
                    m.decrement_recursion_depth(sid)
            except RecursionDepthExceeded as exc:
                assert (exc.depth, exc.max_depth) == (4, 3)
                refusals[index] += 1

    run_threads(work)

    everything = set().union(*seen_depths)
    assert everything <= {1, 2, 3}
    assert 1 in everything
    info = m.get_session(sid)
    assert (info.recursion_depth, info.budget_status.current_recursion_depth) == (0, 0)


# --------------------------------------------------------------------------
# (e) a clock that calls back into the manager
# --------------------------------------------------------------------------


@pytest.mark.sync_redis("calls the manager back from the clock, which runs on the adapter's event-loop thread: a sync callback there cannot await the async manager")
def test_a_reentrant_clock_does_not_deadlock(core) -> None:
    state = threading.local()
    base = LockedClock()
    reentries = Counter()
    holder: dict[str, object] = {}

    def clock() -> int:
        m = holder.get("m")
        if m is not None and not getattr(state, "inside", False):
            state.inside = True  # the manager's own calls below may read us too
            try:
                m.get_stats()  # type: ignore[attr-defined]
                len(m)  # type: ignore[arg-type]
                m.list_sessions()  # type: ignore[attr-defined]
                reentries[threading.get_ident()] += 1
            finally:
                state.inside = False
        return base()

    m = core.SessionManager(
        RlmConfig(session_duration_secs=60, max_extensions=1000, token_budget=10**12),
        clock=clock,
    )
    holder["m"] = m
    shared = m.create_session().id

    def work(index: int) -> None:
        own = m.create_session().id
        for i in range(200):
            m.validate_session(own)
            m.charge_tokens(shared, 1)
            m.extend_session(own)
            m.set_context_variable(own, "i", str(i))
            with m.recursion(shared):
                pass
            if index == 0:
                base.advance(10**6)  # 1 ms: nobody expires
                assert m.cleanup_expired_sessions() == []
        m.destroy_session(own)

    run_threads(work)

    assert sum(reentries.values()) > 0
    assert m.get_session(shared).budget_status.tokens_used == N_THREADS * 200
    assert len(m) == 1
    assert m.get_stats().total_sessions_destroyed == N_THREADS


# --------------------------------------------------------------------------
# check-then-act, made deterministic: the clock is read before the lock, so
# a clock that acts on the table runs exactly between a call's argument
# checks and its atomic body.
# --------------------------------------------------------------------------


class HookClock:
    """Runs `hook` once, at the next reading, then returns the time."""

    def __init__(self) -> None:
        self.now = 1_767_225_600 * NS
        self.hook: Callable[[], object] | None = None

    def __call__(self) -> int:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.now


@pytest.mark.sync_redis("calls the manager back from the clock, which runs on the adapter's event-loop thread: a sync callback there cannot await the async manager")
def test_defect_5_check_then_act_through_the_clock(core) -> None:
    from rlm_fast import InvalidSessionState, SessionExpired, SessionState

    clock = HookClock()
    m = core.SessionManager(RlmConfig(max_recursion_depth=2), clock=clock)

    # The session disappears between the checks and the act.
    s = m.create_session().id
    clock.hook = lambda: m.destroy_session(s)
    with pytest.raises(SessionNotFound):
        m.assign_vm(s, "vm-a")
    assert m.get_session_for_vm("vm-a") is None
    assert m.get_stats().sessions_with_vm == 0
    assert len(m) == 0

    # The VM's owner changes between the checks and the act.
    a = m.create_session().id
    b = m.create_session().id
    m.assign_vm(a, "vm-a")
    clock.hook = lambda: m.assign_vm(b, "vm-a")
    m.assign_vm(a, "vm-b")
    assert m.get_session_for_vm("vm-a") == b
    assert m.get_session_for_vm("vm-b") == a
    assert m.get_session(a).vm_instance_id == "vm-b"
    assert m.get_session(b).vm_instance_id == "vm-a"
    assert m.get_stats().sessions_with_vm == 2

    # Terminated in between: the charge is refused, nothing recorded.
    clock.hook = lambda: m.update_session_state(a, SessionState.TERMINATED)
    with pytest.raises(InvalidSessionState):
        m.charge_tokens(a, 5)
    assert m.get_session(a).budget_status.tokens_used == 0

    # Expired (by state) in between: the extension is refused.
    clock.hook = lambda: m.update_session_state(b, SessionState.EXPIRED)
    with pytest.raises(SessionExpired):
        m.extend_session(b)
    assert m.get_session(b).extension_count == 0

    # The depth moves in between: the limit is checked against the new depth.
    c = m.create_session().id
    m.increment_recursion_depth(c)
    clock.hook = lambda: m.increment_recursion_depth(c)
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(c)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (3, 2)
    assert m.get_session(c).recursion_depth == 2

    # A create in between: both creates count.
    clock.hook = lambda: m.create_session()
    m.create_session()
    stats = m.get_stats()
    assert stats.total_sessions_created == 6
    assert stats.active_sessions == len(m) == 5
