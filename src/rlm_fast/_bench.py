"""`python -m rlm_fast bench`: the same workload on both cores, one process.

Every operation runs against a manager holding 10,000 live sessions; each is
timed with `timeit` (best of several repeats) and printed as ns/op for the
twin and the compiled core, their ratio, and the compiled time over the
*floor*: an empty compiled method taking the same argument
(`_core_c._Floor.noop`), so "how close to a bare call" is a ratio from the
same run. The pytest-benchmark suite in benchmarks/ uses the same OPS.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import threading
import time
import timeit
from types import ModuleType
from typing import Any

from ._types import SessionState
from .config import RlmConfig

LIVE_SESSIONS = 10_000

# name -> statement timed per call. Names: m (manager), sid (a SessionId),
# sid_s (its string), vm (its VM id), state, budget, floor.
OPS: dict[str, str] = {
    "floor (empty compiled method)": "floor.noop(sid)",
    "is_session_valid": "m.is_session_valid(sid)",
    "is_session_valid [str id]": "m.is_session_valid(sid_s)",
    "increment_recursion_depth": "m.increment_recursion_depth(sid)",
    "decrement_recursion_depth": "m.decrement_recursion_depth(sid)",
    "increment_recursion_depth [str id]": "m.increment_recursion_depth(sid_s)",
    "decrement_recursion_depth [str id]": "m.decrement_recursion_depth(sid_s)",
    "charge_tokens": "m.charge_tokens(sid, 1)",
    "charge_tokens [str id]": "m.charge_tokens(sid_s, 1)",
    "charge_time": "m.charge_time(sid, 1)",
    "charge_time [str id]": "m.charge_time(sid_s, 1)",
    "check_budget": "m.check_budget(sid)",
    "check_budget [str id]": "m.check_budget(sid_s)",
    "get_assigned_vm": "m.get_assigned_vm(sid)",
    "get_assigned_vm [str id]": "m.get_assigned_vm(sid_s)",
    "get_session_for_vm": "m.get_session_for_vm(vm)",
    "get_session": "m.get_session(sid)",
    "validate_session": "m.validate_session(sid)",
    "extend_session": "m.extend_session(sid)",
    "update_session_state": "m.update_session_state(sid, state)",
    "assign_vm + release_vm": "m.assign_vm(sid, vm); m.release_vm(sid)",
    "set_context_variable": "m.set_context_variable(sid, 'k', 'v')",
    "get_context_variable": "m.get_context_variable(sid, 'k')",
    "get_all_context_variables": "m.get_all_context_variables(sid)",
    "delete_context_variable": "m.delete_context_variable(sid, 'absent')",
    "recursion() block": "with m.recursion(sid): pass",
    "record_snapshot_created": "m.record_snapshot_created(sid, 'snap', True)",
    "record_snapshot_restored": "m.record_snapshot_restored(sid, 'snap')",
    "get_current_snapshot": "m.get_current_snapshot(sid)",
    "clear_snapshot_tracking": "m.clear_snapshot_tracking(sid)",
    "update_budget": "m.update_budget(sid, budget)",
    "get_stats": "m.get_stats()",
    "create_session + destroy_session": "m.destroy_session(m.create_session().id)",
    "list_sessions (per session)": "m.list_sessions()",
    "cleanup_expired_sessions (10k live, none due)": "m.cleanup_expired_sessions()",
}
PER_SESSION = {"list_sessions (per session)"}

HOT_PATH = {
    "is_session_valid", "increment_recursion_depth", "decrement_recursion_depth",
    "charge_tokens", "charge_time", "check_budget", "get_assigned_vm",
    "get_session_for_vm",
}


def bench_config() -> RlmConfig:
    # Limits out of the way: the loop must not hit a budget or a maximum.
    big = 2**62
    return RlmConfig(
        session_duration_secs=3600,
        extension_increment_secs=1,
        max_extensions=big,
        token_budget=big,
        time_budget_ms=big,
        max_recursion_depth=big,
        max_snapshots_per_session=0,
    )


def workload(module: ModuleType, floor: Any) -> dict[str, Any]:
    """A manager of `module` with LIVE_SESSIONS sessions (half with a VM and
    a context variable), and the names the statements in OPS use."""
    m = module.SessionManager(bench_config())
    ids = [m.create_session().id for _ in range(LIVE_SESSIONS)]
    for n, sid in enumerate(ids[::2]):
        m.assign_vm(sid, f"vm-{n}")
        m.set_context_variable(sid, "k", "v")
    sid = ids[len(ids) // 2]
    m.set_context_variable(sid, "k", "v")
    return {
        "m": m,
        "sid": sid,
        "sid_s": str(sid),
        "vm": "vm-bench",
        "state": SessionState.READY,
        # The core's own class (the other core's is accepted, converted).
        "budget": module.BudgetStatus(
            token_budget=2**62, time_budget_ms=2**62, max_recursion_depth=2**62
        ),
        "floor": floor,
    }


def time_op(stmt: str, names: dict[str, Any], budget_s: float = 0.05, repeat: int = 5) -> float:
    """Best ns per execution of `stmt` over `repeat` runs of ~budget_s."""
    timer = timeit.Timer(stmt, globals=names)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def compare(ops: dict[str, str] | None = None, *, quick: bool = False) -> list[tuple[str, float, float | None]]:
    """(name, twin ns/op, compiled ns/op or None) for each operation."""
    from . import _core_py

    try:
        from . import _core_c
    except ImportError:
        _core_c = None  # type: ignore[assignment]
    floor = _core_c._Floor() if _core_c is not None else None
    ops = OPS if ops is None else ops
    budget = 0.01 if quick else 0.05
    results: list[tuple[str, float, float | None]] = []
    py = workload(_core_py, floor)
    c = workload(_core_c, floor) if _core_c is not None else None
    for name, stmt in ops.items():
        per = LIVE_SESSIONS if name in PER_SESSION else 1
        if name.startswith("floor"):
            t_py = float("nan")
        else:
            t_py = time_op(stmt, py, budget) / per
        t_c = time_op(stmt, c, budget) / per if c is not None else None
        results.append((name, t_py, t_c))
    return results


def print_table(rows: list[tuple[str, float, float | None]], out: Any = sys.stdout) -> None:
    floor = next((c for n, _, c in rows if n.startswith("floor")), None)
    print(f"{'operation':<46}{'twin ns':>10}{'cython ns':>11}{'twin/cy':>9}{'cy/floor':>10}", file=out)
    for name, t_py, t_c in rows:
        ratio = "" if t_c is None or t_py != t_py else f"{t_py / t_c:8.1f}x"
        vs_floor = "" if t_c is None or floor is None else f"{t_c / floor:9.2f}x"
        cy = "-" if t_c is None else f"{t_c:10.0f}"
        py = "" if t_py != t_py else f"{t_py:10.0f}"
        print(f"{name:<46}{py:>10}{cy:>11}{ratio:>9}{vs_floor:>10}", file=out)


# ---------------------------------------------------------------------------
# memory, cleanup at scale, free-threaded scaling: each in a fresh process
# ---------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_session(core: str, n: int = 1_000_000) -> float:
    """RSS growth per session over `n` sessions (no VM, no context)."""
    module = _core_module(core)
    m = module.SessionManager(bench_config())
    m.create_session()
    gc.collect()
    before = _rss_bytes()
    create = m.create_session
    for _ in range(n):
        create()
    gc.collect()
    return (_rss_bytes() - before) / n


def cleanup_at_scale(core: str, n: int = 1_000_000, expired_share: float = 0.1) -> dict[str, float]:
    """cleanup_expired_sessions over `n` sessions, `expired_share` of them
    due; counts how far another Python thread got during the call."""
    module = _core_module(core)
    now = [1_767_225_600 * 10**9]
    m = module.SessionManager(
        RlmConfig(session_duration_secs=100, max_extensions=0), clock=lambda: now[0]
    )
    due = int(n * expired_share)
    for _ in range(due):
        m.create_session()
    now[0] += 50 * 10**9
    for _ in range(n - due):
        m.create_session()
    now[0] += 60 * 10**9  # the first batch is past expiry, the rest is not
    ticks = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks[0] += 1

    other = threading.Thread(target=spin, daemon=True)
    other.start()
    time.sleep(0.05)
    t0, before = time.perf_counter(), ticks[0]
    removed = m.cleanup_expired_sessions()
    elapsed, during = time.perf_counter() - t0, ticks[0] - before
    stop.set()
    other.join()
    assert len(removed) == due, (len(removed), due)
    return {"seconds": elapsed, "other_thread_iterations": during}


def thread_scaling(op: str, seconds: float = 1.0) -> dict[str, float]:
    """Throughput of `op` ("is_session_valid" or "charge_tokens") with 1 and
    2 threads on disjoint sessions of one compiled manager."""
    from . import _core_c

    m = _core_c.SessionManager(bench_config())
    ids = [m.create_session().id for _ in range(1000)]

    def run(threads: int) -> float:
        counts = [0] * threads
        barrier = threading.Barrier(threads + 1)
        stop = threading.Event()

        def work(i: int) -> None:
            sid = ids[i]
            call = getattr(m, op)
            args = (sid,) if op == "is_session_valid" else (sid, 1)
            n = 0
            barrier.wait()
            while not stop.is_set():
                for _ in range(1000):
                    call(*args)
                n += 1000
            counts[i] = n

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join()
        return sum(counts) / seconds

    one = run(1)
    two = run(2)
    return {"one_thread_ops_s": one, "two_threads_ops_s": two, "scaling": two / one}


def _core_module(core: str) -> ModuleType:
    if core == "cython":
        from . import _core_c

        return _core_c
    from . import _core_py

    return _core_py


def _in_subprocess(call: str) -> Any:
    """Run `_bench.<call>` in a fresh interpreter and return its value."""
    code = f"import rlm_fast._bench as b; print(repr(b.{call}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    import ast

    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_fast bench",
        description="Time every SessionManager operation on both cores.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--memory", action="store_true", help="also RSS per session (1M)")
    parser.add_argument("--cleanup", action="store_true", help="also cleanup over 1M sessions")
    parser.add_argument("--scaling", action="store_true", help="also 1 vs 2 threads")
    parser.add_argument("--redis", metavar="URL",
                        help="also time a RedisSessionManager at URL (redis://host:port)")
    parser.add_argument("--sessions", type=int, default=1_000_000,
                        help="sessions for --memory/--cleanup (default 1,000,000)")
    args = parser.parse_args(argv)

    import platform

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"rlm_fast bench: {platform.python_implementation()} {platform.python_version()}"
          f" (GIL {'on' if gil else 'off'}), {LIVE_SESSIONS:,} live sessions, "
          f"best of 5, ns per call")
    print_table(compare(quick=args.quick))
    if args.redis:
        from . import _bench_redis

        print(f"\nRedisSessionManager at {args.redis} beside the in-process table "
              "(ops/s, 1 and 8 client threads, each on its own session)")
        seconds = 0.3 if args.quick else 1.0
        import rlm_fast

        _bench_redis.print_table([
            ("redis", _bench_redis.bench_redis(args.redis, seconds=seconds)),
            (rlm_fast.IMPLEMENTATION, _bench_redis.run_table(
                lambda: rlm_fast.SessionManager(bench_config()), seconds=seconds)),
        ])
    n = args.sessions
    if args.memory:
        print(f"\nmemory: RSS growth per session over {n:,} sessions (no VM, no context)")
        for core in ("python", "cython"):
            print(f"  {core:<7} {_in_subprocess(f'memory_per_session({core!r}, {n})'):8.0f} bytes")
    if args.cleanup:
        print(f"\ncleanup_expired_sessions over {n:,} sessions, 10% due")
        got = {}
        for core in ("python", "cython"):
            got[core] = r = _in_subprocess(f"cleanup_at_scale({core!r}, {n})")
            print(f"  {core:<7} {r['seconds'] * 1e3:9.1f} ms   another Python thread ran "
                  f"{r['other_thread_iterations']:,} loop iterations during the call")
        print(f"  twin/cython: {got['python']['seconds'] / got['cython']['seconds']:.1f}x")
    if args.scaling:
        print("\nthreads on disjoint sessions of one compiled manager (ops/s)")
        for op in ("is_session_valid", "charge_tokens"):
            r = _in_subprocess(f"thread_scaling({op!r})")
            print(f"  {op:<18} 1 thread {r['one_thread_ops_s']:12,.0f}   2 threads "
                  f"{r['two_threads_ops_s']:12,.0f}   scaling {r['scaling']:.2f}x")
    return 0
