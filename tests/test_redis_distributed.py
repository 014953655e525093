"""Across processes (issue 7): 4 processes hammer one Redis table at once,
with charges, overlapping assign_vm, create/destroy, recursion and cleanups
racing each other; afterwards the totals are exact and every invariant holds.

Each worker is a fresh interpreter (`python -c`), so nothing is shared but
the server; it reports what it did as JSON on stdout. Workers start together
on a key in the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from redis_server import unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")

N_PROCS = 4
SECONDS = 3.0
U64_MAX = 2**64 - 1

WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    import redis
    from rlm_fast import (RecursionDepthExceeded, RlmConfig, SessionExpired,
                          SessionNotFound)
    from rlm_fast.redis import RedisSessionManager

    port, namespace, index, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    client = redis.Redis(host="127.0.0.1", port=int(port))
    m = RedisSessionManager(client, RlmConfig(session_duration_secs=3600, max_recursion_depth=3),
                            namespace=namespace)
    # Same table, sessions that live one second: the cleanups race over them.
    short = RedisSessionManager(client, RlmConfig(session_duration_secs=1), namespace=namespace)
    shared = json.loads(client.get("rlmtest:" + namespace + ":shared"))
    vms = ["vm-%d" % i for i in range(6)]
    rng = random.Random(index)
    out = {"charges": [0] * len(shared), "totals": [[] for _ in shared], "time": [0] * len(shared),
           "created": 0, "destroyed": 0, "expired": [], "missed": 0, "depths": [], "refused": 0,
           "ops": 0}
    mine = []
    client.incr("rlmtest:" + namespace + ":ready")
    while not client.exists("rlmtest:" + namespace + ":go"):
        time.sleep(0.001)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out["ops"] += 1
        k = rng.randrange(len(shared))
        sid = shared[k]
        op = rng.random()
        if op < 0.35:
            out["totals"][k].append(m.charge_tokens(sid, 1))
            out["charges"][k] += 1
            ms = rng.randint(0, 9)
            m.charge_time(sid, ms)
            out["time"][k] += ms
        elif op < 0.55:
            m.assign_vm(sid, rng.choice(vms))
        elif op < 0.60:
            m.release_vm(sid)
        elif op < 0.75:
            maker = short if rng.random() < 0.3 else m
            new = maker.create_session().id
            out["created"] += 1
            if rng.random() < 0.5:
                m.assign_vm(new, rng.choice(vms))  # steals a VM from a shared session
            mine.append(str(new))
        elif op < 0.85 and mine:
            victim = mine.pop(rng.randrange(len(mine)))
            try:
                m.destroy_session(victim)
                out["destroyed"] += 1
            except SessionNotFound:
                out["missed"] += 1  # a cleanup took it first
        elif op < 0.95:
            try:
                with m.recursion(sid) as depth:
                    out["depths"].append(depth)
            except RecursionDepthExceeded:
                out["refused"] += 1
        else:
            out["expired"].extend(str(s) for s in m.cleanup_expired_sessions())
    print(json.dumps(out))
    """
)


def test_four_processes_one_table(redis_server) -> None:  # type: ignore[no-untyped-def]
    from rlm_fast import BudgetStatus, RlmConfig
    from rlm_fast.redis import RedisSessionManager

    client = redis_server.client()
    namespace = f"dist-{uuid.uuid4().hex[:8]}"
    m = RedisSessionManager(client, RlmConfig(session_duration_secs=3600), namespace=namespace)
    shared = [m.create_session().id for _ in range(6)]
    for sid in shared:
        m.update_budget(sid, BudgetStatus(U64_MAX, 0, U64_MAX, 0, 3, 0))
    client.set(f"rlmtest:{namespace}:shared", json.dumps([str(s) for s in shared]))

    import rlm_fast

    src = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(redis_server.port), namespace, str(i), str(SECONDS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_PROCS)
    ]
    try:
        deadline = time.monotonic() + 60
        while int(client.get(f"rlmtest:{namespace}:ready") or 0) < N_PROCS:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        client.set(f"rlmtest:{namespace}:go", "1")
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert all(r["ops"] > 100 for r in results), [r["ops"] for r in results]
    # Charges: exact totals, and every charge saw its own total (1..N).
    for k, sid in enumerate(shared):
        status = m.get_session(sid).budget_status
        n = sum(r["charges"][k] for r in results)
        assert status.tokens_used == n
        assert status.time_used_ms == sum(r["time"][k] for r in results)
        assert sorted(v for r in results for v in r["totals"][k]) == list(range(1, n + 1))
    # Recursion: never above the maximum, and back to zero.
    depths = [d for r in results for d in r["depths"]]
    assert depths and set(depths) <= {1, 2, 3}
    for sid in shared:
        info = m.get_session(sid)
        assert info.recursion_depth == info.budget_status.current_recursion_depth == 0
    # Create/destroy/cleanup: every removal counted once, by whoever did it.
    expired = [s for r in results for s in r["expired"]]
    assert expired, "no cleanup raced the others"
    assert len(expired) == len(set(expired))
    stats = m.get_stats()
    assert stats.total_sessions_created == len(shared) + sum(r["created"] for r in results)
    assert stats.total_sessions_destroyed == sum(r["destroyed"] for r in results)
    assert stats.total_sessions_expired == len(expired)
    infos = m.list_sessions()
    assert stats.active_sessions == len(m) == len(infos)
    assert stats.total_sessions_created == (
        stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
    )
    # VM affinity: the two maps are exact inverses.
    holders: dict[str, Any] = {}
    for info in infos:
        if info.vm_instance_id is not None:
            assert info.vm_instance_id not in holders
            holders[info.vm_instance_id] = info.id
    for i in range(6):
        assert m.get_session_for_vm(f"vm-{i}") == holders.get(f"vm-{i}")
    assert stats.sessions_with_vm == len(holders)
    # And a last sweep far past every expiry leaves nothing behind.
    later = RedisSessionManager(
        client, namespace=namespace, clock=lambda: max(i.expires_at_ns for i in infos) + 1
    )
    assert Counter(map(str, later.cleanup_expired_sessions())) == Counter(str(i.id) for i in infos)
    assert len(m) == 0 and m.get_stats().sessions_with_vm == 0
    # Only the counters stay (the refusal counters when some call was refused).
    left = sorted(k.decode() for k in client.scan_iter(match="{" + namespace + "}*"))
    assert left in (
        ["{" + namespace + "}:stats"],
        ["{" + namespace + "}:refusals", "{" + namespace + "}:stats"],
    )
    client.close()


TREE_WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    import redis
    from rlm_fast import RecursionDepthExceeded, RlmConfig, SessionNotFound
    from rlm_fast.redis import RedisSessionManager

    port, namespace, index, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    client = redis.Redis(host="127.0.0.1", port=int(port))
    m = RedisSessionManager(client, RlmConfig(session_duration_secs=3600, max_recursion_depth=8),
                            namespace=namespace)
    nodes = json.loads(client.get("rlmtest:" + namespace + ":tree"))
    names = sorted(nodes)
    rng = random.Random(index)
    out = {"tokens": {n: 0 for n in names}, "time": {n: 0 for n in names},
           "totals": {n: [] for n in names}, "temp": {n: [0, 0] for n in names},
           "made": 0, "destroyed": 0, "depths": [], "ops": 0}
    client.incr("rlmtest:" + namespace + ":ready")
    while not client.exists("rlmtest:" + namespace + ":go"):
        time.sleep(0.001)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out["ops"] += 1
        name = rng.choice(names)
        sid = nodes[name]
        op = rng.random()
        if op < 0.6:
            out["totals"][name].append(m.charge_tokens(sid, 1))
            out["tokens"][name] += 1
            ms = rng.randint(0, 9)
            m.charge_time(sid, ms)
            out["time"][name] += ms
        elif op < 0.8 and name.startswith("leaf"):
            # A short-lived sub-call under a leaf: charged, then destroyed;
            # what it spent stays on every ancestor.
            temp = m.create_child_session(sid).id
            out["made"] += 1
            n, t = rng.randint(1, 5), rng.randint(0, 5)
            assert m.charge_tokens(temp, n) == n
            assert m.charge_time(temp, t) == t
            out["temp"][name][0] += n
            out["temp"][name][1] += t
            m.destroy_session(temp)
            out["destroyed"] += 1
        else:
            try:
                with m.recursion(sid) as depth:
                    out["depths"].append([name, depth])
            except RecursionDepthExceeded:
                pass
    print(json.dumps(out))
    """
)


def test_four_processes_charge_one_tree(redis_server) -> None:  # type: ignore[no-untyped-def]
    # root -> (mid-a -> (leaf-a1, leaf-a2), mid-b -> leaf-b1): every charge
    # adds to its session and every ancestor in one script, so the totals
    # are exact at every level however the processes interleave.
    from rlm_fast import BudgetStatus, RlmConfig
    from rlm_fast.redis import RedisSessionManager

    client = redis_server.client()
    namespace = f"tree-{uuid.uuid4().hex[:8]}"
    m = RedisSessionManager(
        client, RlmConfig(session_duration_secs=3600, max_recursion_depth=8), namespace=namespace
    )
    root = m.create_session().id
    m.update_budget(root, BudgetStatus(U64_MAX, 0, U64_MAX, 0, 8, 0))
    nodes = {"root": root}
    nodes["mid-a"] = m.create_child_session(root).id
    nodes["mid-b"] = m.create_child_session(root).id
    nodes["leaf-a1"] = m.create_child_session(nodes["mid-a"]).id
    nodes["leaf-a2"] = m.create_child_session(nodes["mid-a"]).id
    nodes["leaf-b1"] = m.create_child_session(nodes["mid-b"]).id
    parent = {"mid-a": "root", "mid-b": "root", "leaf-a1": "mid-a", "leaf-a2": "mid-a", "leaf-b1": "mid-b"}
    start = {name: m.get_session(sid).recursion_depth for name, sid in nodes.items()}
    client.set(f"rlmtest:{namespace}:tree", json.dumps({k: str(v) for k, v in nodes.items()}))

    import rlm_fast

    src = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TREE_WORKER, str(redis_server.port), namespace, str(i), str(SECONDS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_PROCS)
    ]
    try:
        deadline = time.monotonic() + 60
        while int(client.get(f"rlmtest:{namespace}:ready") or 0) < N_PROCS:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        client.set(f"rlmtest:{namespace}:go", "1")
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert all(r["ops"] > 100 for r in results), [r["ops"] for r in results]
    assert sum(r["made"] for r in results) > 0

    def subtree(name: str) -> list[str]:
        return [name] + [n for n in nodes if parent.get(n) == name for n in subtree(n)]

    # What each session was charged directly, its temporary children included.
    own_tokens = {n: sum(r["tokens"][n] + r["temp"][n][0] for r in results) for n in nodes}
    own_time = {n: sum(r["time"][n] + r["temp"][n][1] for r in results) for n in nodes}
    for name, sid in nodes.items():
        status = m.get_session(sid).budget_status
        assert status.tokens_used == sum(own_tokens[n] for n in subtree(name)), name
        assert status.time_used_ms == sum(own_time[n] for n in subtree(name)), name
    # A leaf with no other charger than itself and its short-lived children
    # saw its own running total on each direct charge: distinct, increasing
    # within each process, never above the final total.
    for name in ("leaf-a1", "leaf-a2", "leaf-b1"):
        totals = [v for r in results for v in r["totals"][name]]
        assert len(totals) == len(set(totals))
        assert all(v <= m.get_session(nodes[name]).budget_status.tokens_used for v in totals)
        for r in results:
            assert r["totals"][name] == sorted(r["totals"][name])
    # Depth: each session on its own, between its start and the maximum,
    # and back at its start.
    for r in results:
        for name, depth in r["depths"]:
            assert start[name] < depth <= 8
    for name, sid in nodes.items():
        assert m.get_session(sid).recursion_depth == start[name]
    # Every temporary child counted once and gone; the tree is intact.
    stats = m.get_stats()
    made = sum(r["made"] for r in results)
    assert stats.total_sessions_created == len(nodes) + made
    assert stats.total_sessions_destroyed == sum(r["destroyed"] for r in results) == made
    assert stats.active_sessions == len(m) == len(nodes)
    assert m.children(root) == sorted([nodes["mid-a"], nodes["mid-b"]], key=int)
    assert m.children(nodes["leaf-a1"]) == []
    # Destroying the root takes the tree: only the counters stay.
    m.destroy_session(root)
    assert m.get_stats().total_sessions_destroyed == made + len(nodes)
    # Only the counters stay (the refusal counters when some call was refused).
    left = sorted(k.decode() for k in client.scan_iter(match="{" + namespace + "}*"))
    assert left in (
        ["{" + namespace + "}:stats"],
        ["{" + namespace + "}:refusals", "{" + namespace + "}:stats"],
    )
    client.close()
