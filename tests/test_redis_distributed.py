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
    assert sorted(k.decode() for k in client.scan_iter(match="{" + namespace + "}*")) == [
        "{" + namespace + "}:stats"
    ]
    client.close()
