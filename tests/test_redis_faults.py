"""Faults (issue 7): the server stopped mid-run, a connection reset, a
restart, a frozen server. Calls then raise `rlm_fast.Io`; no call leaves
partial state; the same manager works again once the server is back.

Each test runs its own redis-server (they kill it), started on a free
loopback port and stopped by pid.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any, Callable

import pytest

from redis_server import RedisServer, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")

if not unavailable():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from rlm_fast import BudgetStatus, Io, RlmConfig, RlmError, SessionNotFound
    from rlm_fast.redis import RedisSessionManager

    # redis-py retries a refused *connect* with backoff (about 4 s in all by
    # default since 6.0): safe, but slow for these tests.
    FAST = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 0.5}

U64_MAX = 2**64 - 1


def check_invariants(m: Any, vms: list[str]) -> None:
    """SPEC 4.1 and 4.6 at rest: the VM maps are exact inverses, the
    counters agree with the table, depth has one source of truth."""
    infos = m.list_sessions()
    stats = m.get_stats()
    holders: dict[str, Any] = {}
    for info in infos:
        assert info.recursion_depth == info.budget_status.current_recursion_depth
        if info.vm_instance_id is not None:
            assert info.vm_instance_id not in holders
            holders[info.vm_instance_id] = info.id
    for vm in vms:
        assert m.get_session_for_vm(vm) == holders.get(vm)
    assert stats.sessions_with_vm == len(holders)
    assert stats.active_sessions == len(m) == len(infos)
    assert stats.total_sessions_created == (
        stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
    )


def every_call(m: Any, sid: Any) -> list[tuple[str, Callable[[], Any]]]:
    """One call of every public method (a session id where one is needed)."""
    return [
        ("create_session", m.create_session),
        ("get_session", lambda: m.get_session(sid)),
        ("update_session_state", lambda: m.update_session_state(sid, "Executing")),
        ("is_session_valid", lambda: m.is_session_valid(sid)),
        ("validate_session", lambda: m.validate_session(sid)),
        ("extend_session", lambda: m.extend_session(sid)),
        ("destroy_session", lambda: m.destroy_session(sid)),
        ("cleanup_expired_sessions", m.cleanup_expired_sessions),
        ("assign_vm", lambda: m.assign_vm(sid, "vm-x")),
        ("release_vm", lambda: m.release_vm(sid)),
        ("get_assigned_vm", lambda: m.get_assigned_vm(sid)),
        ("get_session_for_vm", lambda: m.get_session_for_vm("vm-x")),
        ("set_context_variable", lambda: m.set_context_variable(sid, "k", "v")),
        ("get_context_variable", lambda: m.get_context_variable(sid, "k")),
        ("get_all_context_variables", lambda: m.get_all_context_variables(sid)),
        ("delete_context_variable", lambda: m.delete_context_variable(sid, "k")),
        ("update_budget", lambda: m.update_budget(sid, BudgetStatus())),
        ("increment_recursion_depth", lambda: m.increment_recursion_depth(sid)),
        ("decrement_recursion_depth", lambda: m.decrement_recursion_depth(sid)),
        ("charge_tokens", lambda: m.charge_tokens(sid, 1)),
        ("charge_time", lambda: m.charge_time(sid, 1)),
        ("check_budget", lambda: m.check_budget(sid)),
        ("record_snapshot_created", lambda: m.record_snapshot_created(sid, "s", True)),
        ("record_snapshot_restored", lambda: m.record_snapshot_restored(sid, "s")),
        ("get_current_snapshot", lambda: m.get_current_snapshot(sid)),
        ("clear_snapshot_tracking", lambda: m.clear_snapshot_tracking(sid)),
        ("create_child_session", lambda: m.create_child_session(sid)),
        ("children", lambda: m.children(sid)),
        ("get_stats", m.get_stats),
        ("list_sessions", m.list_sessions),
        ("len", lambda: len(m)),
        ("contains", lambda: sid in m),
    ]


# --------------------------------------------------------------------------
# the server dies mid-run (kill -9), then comes back with its data
# --------------------------------------------------------------------------


def test_server_killed_mid_run_leaves_no_partial_state() -> None:
    # AOF with fsync always: whatever the server acknowledged survives the
    # kill, so the state after the restart can be checked against the calls.
    with RedisServer(persistent=True) as server:
        client = server.client(socket_timeout=2, **FAST)
        m = RedisSessionManager(
            client, RlmConfig(session_duration_secs=3600, max_recursion_depth=4), namespace="crash"
        )
        shared = [m.create_session().id for _ in range(4)]
        for sid in shared:
            m.update_budget(sid, BudgetStatus(U64_MAX, 0, U64_MAX, 0, 4, 0))
        vms = [f"vm-{i}" for i in range(5)]
        killed = threading.Event()
        stop = threading.Event()
        ok: list[Counter[Any]] = [Counter() for _ in range(4)]
        unknown: list[Counter[Any]] = [Counter() for _ in range(4)]
        creates = Counter()
        other: list[BaseException] = []

        def work(index: int) -> None:
            rng = random.Random(index)
            mine: list[Any] = []
            while not stop.is_set():
                k = rng.randrange(4)
                op = rng.random()
                try:
                    if op < 0.6:
                        m.charge_tokens(shared[k], 1)
                        ok[index][k] += 1
                    elif op < 0.8:
                        m.assign_vm(shared[k], rng.choice(vms))
                    elif op < 0.9:
                        mine.append(m.create_session().id)
                        creates["ok"] += 1
                    elif mine:
                        m.destroy_session(mine.pop())
                except Io as exc:
                    assert "Redis" in str(exc) and str(exc).startswith("IO error: ")
                    if op < 0.6:
                        unknown[index][k] += 1
                    elif 0.8 <= op < 0.9:
                        creates["unknown"] += 1
                    if not killed.is_set():
                        other.append(exc)  # Io before the kill: a bug
                    time.sleep(0.005)
                except SessionNotFound:
                    pass  # a destroy whose first try ran but lost its reply
                except BaseException as exc:  # noqa: BLE001
                    other.append(exc)
                    return

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        killed.set()
        server.kill()
        time.sleep(0.4)  # the workers keep calling a dead server
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not other, other[:3]
        assert sum(sum(c.values()) for c in unknown) > 0, "no call saw the dead server"

        # Down: every public method raises Io, and says it was not applied.
        for name, call in every_call(m, shared[0]):
            with pytest.raises(Io) as excinfo:
                call()
            assert "not applied" in str(excinfo.value), name

        server.restart()
        # The same manager works again (its scripts are loaded anew).
        check_invariants(m, vms)
        for k, sid in enumerate(shared):
            used = m.get_session(sid).budget_status.tokens_used
            done = sum(c[k] for c in ok)
            maybe = sum(c[k] for c in unknown)
            # Every acknowledged charge is there; an unacknowledged one is
            # there whole or not at all.
            assert done <= used <= done + maybe
        stats = m.get_stats()
        assert 4 + creates["ok"] <= stats.total_sessions_created <= 4 + creates["ok"] + creates["unknown"]
        assert m.charge_tokens(shared[0], 1) >= 1
        fresh = m.create_session().id
        m.assign_vm(fresh, "vm-after")
        check_invariants(m, vms + ["vm-after"])
        client.close()


def test_server_killed_while_charging_a_tree_keeps_every_roll_up_whole() -> None:
    # A charge on a child writes every session of its path in one script:
    # after a kill -9 and a restart from the AOF, each session holds its own
    # direct charges plus exactly what its children hold, never a part of a
    # roll-up.
    with RedisServer(persistent=True) as server:
        client = server.client(socket_timeout=2, **FAST)
        m = RedisSessionManager(client, RlmConfig(session_duration_secs=3600), namespace="tree-crash")
        root = m.create_session().id
        m.update_budget(root, BudgetStatus(U64_MAX, 0, U64_MAX, 0, 10, 0))
        a = m.create_child_session(root).id
        b = m.create_child_session(root).id
        a1 = m.create_child_session(a).id
        nodes = [root, a, b, a1]
        kids = {root: [a, b], a: [a1], b: [], a1: []}
        killed = threading.Event()
        stop = threading.Event()
        ok: list[Counter[Any]] = [Counter() for _ in range(4)]
        unknown: list[Counter[Any]] = [Counter() for _ in range(4)]
        other: list[BaseException] = []

        def work(index: int) -> None:
            rng = random.Random(index)
            while not stop.is_set():
                k = rng.randrange(len(nodes))
                try:
                    m.charge_tokens(nodes[k], 1)
                    ok[index][k] += 1
                except Io:
                    unknown[index][k] += 1
                    if not killed.is_set():
                        other.append(RuntimeError("Io before the kill"))
                    time.sleep(0.005)
                except BaseException as exc:  # noqa: BLE001
                    other.append(exc)
                    return

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        killed.set()
        server.kill()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not other, other[:3]
        server.restart()
        used = {sid: m.get_session(sid).budget_status.tokens_used for sid in nodes}
        for k, sid in enumerate(nodes):
            direct = used[sid] - sum(used[kid] for kid in kids[sid])
            done = sum(c[k] for c in ok)
            maybe = sum(c[k] for c in unknown)
            assert done <= direct <= done + maybe, (k, direct, done, maybe)
        assert m.children(root) == sorted([a, b], key=int)
        client.close()


# --------------------------------------------------------------------------
# a connection reset while a call is in flight, and while idle
# --------------------------------------------------------------------------


def test_connection_reset_in_flight_raises_io_and_changes_nothing() -> None:
    with RedisServer() as server:
        admin = server.client()
        client = server.client(**FAST)
        m = RedisSessionManager(client, RlmConfig(token_budget=100), namespace="reset")
        s = m.create_session().id
        m.assign_vm(s, "vm-1")
        before = (m.list_sessions(), m.get_stats())

        # Hold writes on the server, so the script waits there unrun; then
        # kill the connection it came on.
        admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["value"] = m.charge_tokens(s, 5)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        t = threading.Thread(target=call, daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            waiting = [c for c in admin.client_list() if "b" in c["flags"] and c["cmd"] == "evalsha"]
            if waiting:
                break
            time.sleep(0.01)
        assert waiting, "the call never reached the server"
        admin.execute_command("CLIENT", "KILL", "ID", waiting[0]["id"])
        t.join(5)
        admin.execute_command("CLIENT", "UNPAUSE")
        err = outcome.get("error")
        assert isinstance(err, Io), outcome
        assert isinstance(err, OSError) and isinstance(err, RlmError)
        assert "charge_tokens" in str(err) and "whole or not at all" in str(err)
        # Killed before it ran: nothing changed, and no hidden resend ran it.
        time.sleep(0.1)
        assert (m.list_sessions(), m.get_stats()) == before
        # The manager works again.
        assert m.charge_tokens(s, 5) == 5

        # An idle connection killed between calls is replaced unseen.
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert m.charge_tokens(s, 5) == 10
        assert m.get_session(s).vm_instance_id == "vm-1"
        check_invariants(m, ["vm-1"])
        admin.close()
        client.close()


# --------------------------------------------------------------------------
# stopped, then restarted empty
# --------------------------------------------------------------------------


def test_stop_and_restart_empty() -> None:
    with RedisServer() as server:
        client = server.client(**FAST)
        m = RedisSessionManager(client, namespace="restart")
        s = m.create_session().id
        server.stop()
        started = time.monotonic()
        for name, call in every_call(m, s):
            with pytest.raises(Io) as excinfo:
                call()
            message = str(excinfo.value)
            assert "not applied" in message and "Redis" in message, (name, message)
        assert time.monotonic() - started < 5  # no hidden retries
        with pytest.raises(Io):
            with m.recursion(s):
                pytest.fail("body must not run")
        server.restart()  # without persistence: an empty table
        assert s not in m
        assert len(m) == 0
        t = m.create_session().id  # scripts loaded again (NOSCRIPT)
        assert m.charge_tokens(t, 3) == 3
        assert m.get_stats().total_sessions_created == 1
        client.close()


# --------------------------------------------------------------------------
# a frozen server: the call times out; its outcome is whole or nothing
# --------------------------------------------------------------------------


def test_frozen_server_times_out_with_io() -> None:
    with RedisServer() as server:
        client = server.client(socket_timeout=0.3, **FAST)
        m = RedisSessionManager(client, RlmConfig(token_budget=1000), namespace="frozen")
        s = m.create_session().id
        server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(Io) as excinfo:
                m.charge_tokens(s, 7)
            assert time.monotonic() - started < 2
            assert "Timeout" in str(excinfo.value)
        finally:
            server.thaw()
        time.sleep(0.2)
        used = m.get_session(s).budget_status.tokens_used
        assert used in (0, 7)  # ran whole after the thaw, or not at all
        assert m.charge_tokens(s, 1) == used + 1
        client.close()
