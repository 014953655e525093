"""Call trees under threads (SPEC 6 and 11, docs/trees.md), on every core.

Threads start together on a Barrier and are joined with a timeout; a thread
still alive afterwards fails the test (a deadlock), as does any exception a
thread did not expect. Only end states are asserted, never timings. Redis
runs the same tests with fewer operations (each one is a round trip).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from thread_tools import N_THREADS, NS, LockedClock, run_threads

from rlm_fast import (
    RecursionDepthExceeded,
    RlmConfig,
    SessionExpired,
    SessionNotFound,
    TokenBudgetExceeded,
)

BIG = 10**15  # a budget no test reaches


def scale(core: Any, python: int, cython: int, redis: int) -> int:
    """How many operations a test does on this core (Redis: a round trip each)."""
    return {"python": python, "cython": cython, "redis": redis, "redis-async": redis}[core.name]


def assert_tree_consistent(m: Any, vms: Any = ()) -> None:
    """At rest: no orphan, children() agrees with every parent_id, root_id is
    the root of the chain, the VM maps are exact inverses, counters agree."""
    infos = m.list_sessions()
    by_id = {str(i.id): i for i in infos}
    kids: dict[str, list[Any]] = {key: [] for key in by_id}
    holders: dict[str, str] = {}
    for info in infos:
        if info.parent_id is None:
            assert info.root_id == info.id
        else:
            parent = str(info.parent_id)
            assert parent in by_id, f"orphan {info.id}: parent {parent} is gone"
            kids[parent].append(info.id)
            assert by_id[parent].root_id == info.root_id
            assert info.recursion_depth >= 1
        if info.vm_instance_id is not None:
            assert info.vm_instance_id not in holders, "one VM held by two sessions"
            holders[info.vm_instance_id] = str(info.id)
    for key, info in by_id.items():
        assert m.children(info.id) == sorted(kids[key], key=int), key
        assert m.get_assigned_vm(info.id) == info.vm_instance_id
    for vm in set(vms) | set(holders):
        owner = m.get_session_for_vm(vm)
        if vm in holders:
            assert owner is not None and str(owner) == holders[vm], vm
        else:
            assert owner is None, f"dangling VM mapping {vm} -> {owner}"
    stats = m.get_stats()
    assert stats.active_sessions == len(m) == len(infos)
    assert stats.sessions_with_vm == len(holders)
    assert (
        stats.total_sessions_created
        == stats.active_sessions + stats.total_sessions_destroyed + stats.total_sessions_expired
    )


# --------------------------------------------------------------------------
# charges roll up atomically
# --------------------------------------------------------------------------


def test_charges_on_siblings_and_cousins_roll_up_exactly(core) -> None:
    m = core.SessionManager(RlmConfig(token_budget=BIG, time_budget_ms=BIG))
    root = m.create_session().id
    a = m.create_child_session(root).id
    b = m.create_child_session(root).id
    leaves = [m.create_child_session(p).id for p in (a, a, b, b)]  # siblings and cousins
    parent_of = {root: None, a: root, b: root, leaves[0]: a, leaves[1]: a, leaves[2]: b, leaves[3]: b}
    nodes = list(parent_of)
    per_thread = scale(core, 1500, 6000, 150)
    charged_tokens = [Counter() for _ in range(N_THREADS)]
    charged_time = [Counter() for _ in range(N_THREADS)]
    leaf_returns: list[list[tuple[Any, int]]] = [[] for _ in range(N_THREADS)]

    def work(index: int) -> None:
        rng = random.Random(index)
        for i in range(per_thread):
            if i % 3:
                # Leaves get 1 token each: their returned totals are 1..N.
                leaf = leaves[(index + i) % 4]
                leaf_returns[index].append((leaf, m.charge_tokens(leaf, 1)))
                charged_tokens[index][leaf] += 1
            else:
                node = nodes[rng.randrange(len(nodes))]
                n = rng.randint(0, 9)
                m.charge_tokens(node, n)
                charged_tokens[index][node] += n
            node = nodes[rng.randrange(len(nodes))]
            ms = rng.randint(0, 5)
            m.charge_time(node, ms)
            charged_time[index][node] += ms

    run_threads(work)

    direct_tokens = sum(charged_tokens, Counter())
    direct_time = sum(charged_time, Counter())

    def subtree(node: Any) -> list[Any]:
        return [x for x in nodes if x == node or ancestors(x).count(node)]

    def ancestors(node: Any) -> list[Any]:
        out = []
        while parent_of[node] is not None:
            node = parent_of[node]
            out.append(node)
        return out

    for node in nodes:
        status = m.get_session(node).budget_status
        assert status.tokens_used == sum(direct_tokens[x] for x in subtree(node)), node
        assert status.time_used_ms == sum(direct_time[x] for x in subtree(node)), node
    # Leaves were charged only by those 1-token calls and their own
    # n-token calls; the 1-token calls saw distinct totals.
    for leaf in leaves:
        seen = [v for chunk in leaf_returns for lf, v in chunk if lf == leaf]
        assert len(seen) == len(set(seen)), "two charges saw the same total"
        assert max(seen) <= direct_tokens[leaf]
    assert m.get_session(root).budget_status.tokens_used == sum(direct_tokens.values())
    assert_tree_consistent(m)


def test_over_budget_roll_ups_are_exact(core) -> None:
    # Four children share a root of 1000 tokens; 8 threads charge 1 token at
    # a time, 1600 in all, 400 per child. Exactly the charges that took the
    # root from 1000 to 1600 are refused, each naming the root's total.
    m = core.SessionManager(RlmConfig(token_budget=1000))
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(4)]
    per_thread = 200
    ok: list[list[tuple[int, int]]] = [[] for _ in range(N_THREADS)]
    over: list[list[tuple[int, int]]] = [[] for _ in range(N_THREADS)]

    def work(index: int) -> None:
        for i in range(per_thread):
            k = (index + i) % 4
            try:
                ok[index].append((k, m.charge_tokens(kids[k], 1)))
            except TokenBudgetExceeded as exc:
                over[index].append((exc.used, exc.budget))

    run_threads(work)

    overs = sorted(v for chunk in over for v in chunk)
    assert overs == [(used, 1000) for used in range(1001, 1601)]
    assert sum(len(c) for c in ok) == 1000
    assert m.get_session(root).budget_status.tokens_used == 1600
    for k, kid in enumerate(kids):
        assert m.get_session(kid).budget_status.tokens_used == 400
        returned = sorted(v for chunk in ok for kk, v in chunk if kk == k)
        assert len(returned) == len(set(returned))
        assert all(1 <= v <= 400 for v in returned)


# --------------------------------------------------------------------------
# depth: parallel children never trip each other
# --------------------------------------------------------------------------


def test_parallel_children_never_trip_each_others_depth(core) -> None:
    m = core.SessionManager(RlmConfig(max_recursion_depth=3))
    root = m.create_session().id
    rounds = scale(core, 2000, 5000, 60)
    mine: list[Any] = [None] * N_THREADS

    def work(index: int) -> None:
        # Each thread is one parallel sub-call: its own child of the root.
        kid = m.create_child_session(root).id
        mine[index] = kid
        for i in range(rounds):
            if i % 2:
                assert m.increment_recursion_depth(kid) == 2
                assert m.increment_recursion_depth(kid) == 3
                assert m.decrement_recursion_depth(kid) == 2
                assert m.decrement_recursion_depth(kid) == 1
                assert m.decrement_recursion_depth(kid) == 1  # saturates at the start
            else:
                with m.recursion(kid) as d1:
                    assert d1 == 2
                    with m.recursion(kid) as d2:
                        assert d2 == 3
                        try:
                            m.increment_recursion_depth(kid)
                        except RecursionDepthExceeded as exc:
                            assert (exc.depth, exc.max_depth) == (4, 3)
                        else:
                            raise AssertionError("depth 4 of 3 allowed")

    run_threads(work)

    assert m.get_session(root).recursion_depth == 0
    assert sorted(m.children(root), key=int) == m.children(root)
    assert set(map(str, m.children(root))) == set(map(str, mine))
    for kid in mine:
        info = m.get_session(kid)
        assert info.recursion_depth == info.budget_status.current_recursion_depth == 1
    assert_tree_consistent(m)


# --------------------------------------------------------------------------
# subtrees created and destroyed while others charge
# --------------------------------------------------------------------------


def test_subtree_churn_racing_with_charges_leaves_no_orphan(core) -> None:
    m = core.SessionManager(
        RlmConfig(token_budget=BIG, time_budget_ms=BIG, max_recursion_depth=100_000)
    )
    root = m.create_session().id
    rounds = scale(core, 500, 2000, 30)
    known: list[Any] = [root]  # ids any thread may pick (some destroyed)
    known_lock = threading.Lock()
    charged = [0] * N_THREADS
    vms = [f"vm-{i}" for i in range(12)]

    def pick(rng: random.Random) -> Any:
        with known_lock:
            return known[rng.randrange(len(known))]

    def remember(sid: Any) -> None:
        with known_lock:
            known.append(sid)

    def builder(index: int, rng: random.Random) -> None:
        for _ in range(rounds):
            try:
                top = m.create_child_session(pick(rng) if rng.random() < 0.3 else root).id
            except SessionNotFound:
                continue
            remember(top)
            made = [top]
            for _ in range(rng.randint(1, 4)):
                parent = made[rng.randrange(len(made))]
                try:
                    made.append(m.create_child_session(parent).id)
                except SessionNotFound:
                    break  # someone removed the subtree
                remember(made[-1])
                try:
                    m.assign_vm(made[-1], vms[rng.randrange(len(vms))])
                except SessionNotFound:
                    break
            victim = made[rng.randrange(len(made))] if rng.random() < 0.5 else top
            try:
                m.destroy_session(victim)
            except SessionNotFound:
                pass

    def charger(index: int, rng: random.Random) -> None:
        for _ in range(rounds * 4):
            sid = pick(rng)
            roll = rng.random()
            try:
                if roll < 0.6:
                    n = rng.randint(1, 5)
                    m.charge_tokens(sid, n)
                    charged[index] += n  # reached the root too
                elif roll < 0.8:
                    if sid != root:
                        m.assign_vm(sid, vms[rng.randrange(len(vms))])
                elif roll < 0.9:
                    m.release_vm(sid)
                else:
                    remember(m.create_child_session(sid).id)
            except SessionNotFound:
                pass

    def work(index: int) -> None:
        rng = random.Random(1000 + index)
        if index < 4:
            builder(index, rng)
        else:
            charger(index, rng)

    run_threads(work)

    assert_tree_consistent(m, vms)
    # Every charge that succeeded reached the root, and nothing else did.
    assert m.get_session(root).budget_status.tokens_used == sum(charged)
    # Removing the rest leaves an empty, balanced table.
    m.destroy_session(root)
    assert len(m) == 0
    for vm in vms:
        assert m.get_session_for_vm(vm) is None
    stats = m.get_stats()
    assert stats.active_sessions == 0 and stats.sessions_with_vm == 0
    assert stats.total_sessions_created == stats.total_sessions_destroyed


def test_destroying_a_parent_racing_with_creates_under_it(core) -> None:
    # A create_child_session either lands before the destroy (and the child
    # is removed with its parent) or fails with SessionNotFound: never a
    # child left without its parent.
    m = core.SessionManager(RlmConfig(max_recursion_depth=50))
    rounds = scale(core, 60, 200, 12)
    for _ in range(rounds):
        root = m.create_session().id
        mid = m.create_child_session(root).id
        made: list[list[Any]] = [[] for _ in range(N_THREADS)]

        def work(index: int, mid: Any = mid, made: list[list[Any]] = made) -> None:
            if index == 0:
                m.destroy_session(mid)
                return
            parent = mid
            for _ in range(6):
                try:
                    parent = m.create_child_session(parent).id
                except SessionNotFound as exc:
                    assert str(exc.session_id) == str(parent)
                    return
                made[index].append(parent)

        run_threads(work)
        for chunk in made:
            for sid in chunk:
                assert sid not in m, "a child outlived its destroyed ancestor"
        assert m.children(root) == []
        m.destroy_session(root)
        assert len(m) == 0
    assert_tree_consistent(m)


# --------------------------------------------------------------------------
# cleanup racing with creates under an expiring parent
# --------------------------------------------------------------------------


def test_cleanup_racing_with_creates_under_an_expiring_parent(core) -> None:
    clock = LockedClock()
    m = core.SessionManager(RlmConfig(session_duration_secs=60, max_recursion_depth=50), clock=clock)
    rounds = scale(core, 5, 8, 3)
    cap = scale(core, 1000, 2000, 200)  # children per creator and round
    for _ in range(rounds):
        parent = m.create_session().id
        expires = m.get_session(parent).expires_at_ns
        created: list[list[Any]] = [[] for _ in range(N_THREADS)]
        removed: list[list[Any]] = [[] for _ in range(N_THREADS)]
        stop = threading.Event()

        def work(
            index: int,
            parent: Any = parent,
            expires: int = expires,
            created: list[list[Any]] = created,
            removed: list[list[Any]] = removed,
            stop: threading.Event = stop,
        ) -> None:
            if index == 0:
                # Time runs past the parent's expiry in small steps.
                try:
                    for _ in range(40):
                        clock.advance(2 * NS)
                        time.sleep(0.003)
                finally:
                    stop.set()
                return
            if index == 1:
                while not stop.is_set():
                    removed[index].extend(m.cleanup_expired_sessions())
                removed[index].extend(m.cleanup_expired_sessions())
                return
            rng = random.Random(index)
            mine: list[Any] = []
            while not stop.is_set() and len(mine) < cap:
                target = parent if not mine or rng.random() < 0.5 else mine[rng.randrange(len(mine))]
                try:
                    info = m.create_child_session(target)
                except SessionExpired as exc:
                    # Root first: an expired tree names its root.
                    assert str(exc.session_id) == str(parent)
                    continue
                except SessionNotFound as exc:
                    assert str(exc.session_id) == str(target)
                    continue
                assert info.expires_at_ns <= expires
                assert info.root_id == parent
                mine.append(info.id)
                created[index].append(info.id)

        run_threads(work)
        # The parent is past its expiry: a last cleanup removes whatever of
        # the tree is left; every session ever made is removed exactly once.
        clock.advance(NS)
        removed[0].extend(m.cleanup_expired_sessions())
        all_removed = [str(s) for chunk in removed for s in chunk]
        assert len(all_removed) == len(set(all_removed)), "a session removed twice"
        everything = {str(parent)} | {str(s) for chunk in created for s in chunk}
        assert set(all_removed) == everything
        assert len(m) == 0
        assert_tree_consistent(m)
    stats = m.get_stats()
    assert stats.total_sessions_created == stats.total_sessions_expired
    assert stats.active_sessions == 0
