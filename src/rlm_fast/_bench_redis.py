"""Throughput of `RedisSessionManager`: ops/s of the main operations with one
client thread and with several, beside the in-process manager on the same
workload (a plain script, and functions the compare table can call).

    python -m rlm_fast bench --redis redis://127.0.0.1:6379   # sync and asyncio tables
    python benchmarks/bench_redis.py                          # starts a local redis-server

Each thread works on sessions of its own in a namespace made for the run
(deleted afterwards), holding `--live` sessions. Every call is one round trip
to the server; numbers depend on the network, the server's CPU, and whether
redis-py has hiredis for parsing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rlm_fast import BudgetStatus, SessionState
from rlm_fast._bench import bench_config

# name -> statement; names in a statement: m (manager), sid (a SessionId of
# the thread's own), vm (a VM id of the thread's own), state, budget.
# "[n calls]": n round trips to Redis per execution.
MAIN_OPS: dict[str, str] = {
    "is_session_valid": "m.is_session_valid(sid)",
    "validate_session": "m.validate_session(sid)",
    "charge_tokens": "m.charge_tokens(sid, 1)",
    "check_budget": "m.check_budget(sid)",
    "recursion() block [2 calls]": "with m.recursion(sid): pass",
    "get_session": "m.get_session(sid)",
    "get_session_for_vm": "m.get_session_for_vm(vm)",
    "assign_vm + release_vm [2 calls]": "m.assign_vm(sid, vm); m.release_vm(sid)",
    "set_context_variable": "m.set_context_variable(sid, 'k', 'v')",
    "create_session + destroy_session [2 calls]": "m.destroy_session(m.create_session().id)",
    "model call [5 calls: validate, recursion, 2 charges]": (
        "m.validate_session(sid)\n"
        "with m.recursion(sid):\n"
        "    m.charge_tokens(sid, 100)\n"
        "    m.charge_time(sid, 5)"
    ),
    "model call [begin_call + end_call: 2 calls]": (
        "m.begin_call(sid); m.end_call(sid, tokens=100, elapsed_ms=5)"
    ),
}

# The asyncio table: name -> coroutine body on `m` (an AsyncRedisSessionManager)
# and `sid` (a session of the task's own), run by 1 task and by --tasks tasks
# on one client.
ASYNC_OPS: dict[str, str] = {
    "is_session_valid": "await m.is_session_valid(sid)",
    "charge_tokens": "await m.charge_tokens(sid, 1)",
    "get_session": "await m.get_session(sid)",
    "model call [begin_call + end_call]": (
        "await m.begin_call(sid); await m.end_call(sid, tokens=100, elapsed_ms=5)"
    ),
}

# The model-call forms whose round trips are counted from the server's
# INFO commandstats: name -> statement (sync manager, names as MAIN_OPS).
ROUND_TRIP_OPS: dict[str, str] = {
    "model call, five calls (validate, recursion, 2 charges)": MAIN_OPS[
        "model call [5 calls: validate, recursion, 2 charges]"
    ],
    "model call, begin_call + end_call": MAIN_OPS["model call [begin_call + end_call: 2 calls]"],
    "model call, with m.call(sid)": "with m.call(sid) as c:\n    c.tokens = 100",
}


def _names(m: Any, index: int) -> dict[str, Any]:
    sid = m.create_session().id
    m.assign_vm(sid, f"vm-bench-{index}")
    m.set_context_variable(sid, "k", "v")
    return {
        "m": m,
        "sid": sid,
        "vm": f"vm-bench-{index}",
        "state": SessionState.READY,
        "budget": BudgetStatus(token_budget=2**62, time_budget_ms=2**62, max_recursion_depth=2**32 - 1),
    }


def ops_per_second(m: Any, stmt: str, threads: int, seconds: float) -> float:
    """Executions of `stmt` per second, summed over `threads` threads that
    each loop on a session of their own for `seconds`."""
    code = compile(stmt, "<bench>", "exec")
    names = [_names(m, i) for i in range(threads)]
    for env in names:  # warm up: connections open, scripts loaded
        for _ in range(20):
            exec(code, env)
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(index: int) -> None:
        env = names[index]
        start_line.wait()
        n = 0
        while not stop.is_set():
            for _ in range(10):
                exec(code, env)
            n += 10
        counts[index] = n

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start_line.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    for env in names:
        m.destroy_session(env["sid"])
    return sum(counts) / elapsed


def run_table(
    make_manager: Callable[[], Any],
    *,
    threads: tuple[int, ...] = (1, 8),
    seconds: float = 1.0,
    live: int = 10_000,
    ops: dict[str, str] | None = None,
) -> list[tuple[str, dict[int, float]]]:
    """[(operation, {threads: ops/s})] for a manager from `make_manager`,
    holding `live` other sessions."""
    m = make_manager()
    for i in range(live):
        sid = m.create_session().id
        if i % 2 == 0:
            m.assign_vm(sid, f"vm-{i}")
    rows = []
    for name, stmt in (ops or MAIN_OPS).items():
        rows.append((name, {n: ops_per_second(m, stmt, n, seconds) for n in threads}))
    return rows


def bench_redis(
    url: str,
    *,
    threads: tuple[int, ...] = (1, 8),
    seconds: float = 1.0,
    live: int = 10_000,
    ops: dict[str, str] | None = None,
) -> list[tuple[str, dict[int, float]]]:
    """`run_table` for a RedisSessionManager at `url`, on a namespace of its
    own that is deleted afterwards (the compare table calls this)."""
    import redis

    from rlm_fast.redis import RedisSessionManager

    client = redis.Redis.from_url(url, max_connections=max(threads) + 4)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        return run_table(
            lambda: RedisSessionManager(client, bench_config(), namespace=namespace),
            threads=threads,
            seconds=seconds,
            live=live,
            ops=ops,
        )
    finally:
        _drop_namespace(client, namespace)
        client.close()


def _scripts_run(client: Any) -> int:
    """Scripts the server has run (EVALSHA and EVAL), from INFO commandstats.
    The commands a script runs inside count there too, under their own
    names, so they are not round trips and are not counted."""
    stats = client.info("commandstats")
    return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


def round_trips(url: str, executions: int = 200) -> dict[str, tuple[float, float]]:
    """name -> (scripts the server ran, requests the client sent) per
    execution of each ROUND_TRIP_OPS statement (connections open and
    scripts loaded beforehand)."""
    import redis

    from rlm_fast.redis import RedisSessionManager

    sent = [0]

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    client = redis.Redis.from_url(url, connection_class=Counting)
    probe = redis.Redis.from_url(url)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        m = RedisSessionManager(client, bench_config(), namespace=namespace)
        env = _names(m, 0)
        out = {}
        for name, stmt in ROUND_TRIP_OPS.items():
            code = compile(stmt, "<bench>", "exec")
            exec(code, env)  # warm: EVALSHA of a loaded script from here on
            before, sent[0] = _scripts_run(probe), 0
            for _ in range(executions):
                exec(code, env)
            out[name] = ((_scripts_run(probe) - before) / executions, sent[0] / executions)
        return out
    finally:
        _drop_namespace(probe, namespace)
        client.close()
        probe.close()


def bench_async(url: str, *, tasks: tuple[int, ...] = (1, 64), seconds: float = 1.0,
                live: int = 1_000) -> list[tuple[str, dict[int, float]]]:
    """[(operation, {tasks: ops/s})] for an AsyncRedisSessionManager on one
    `redis.asyncio` client shared by all tasks, each task on a session of
    its own."""
    import asyncio

    import redis.asyncio as aredis

    from rlm_fast.redis import AsyncRedisSessionManager

    async def measure(m: Any, body: str, n: int) -> float:
        source = f"async def op(m, sid):\n    {body}\n"
        env: dict[str, Any] = {}
        exec(compile(source, "<bench>", "exec"), env)
        op = env["op"]
        sids = [(await m.create_session()).id for _ in range(n)]
        stop = False
        counts = [0] * n

        async def loop(i: int) -> None:
            sid = sids[i]
            for _ in range(5):  # warm: connections open, scripts loaded
                await op(m, sid)
            await start.wait()
            k = 0
            while not stop:
                await op(m, sid)
                k += 1
            counts[i] = k

        start = asyncio.Event()
        workers = [asyncio.create_task(loop(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        start.set()
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - began
        for sid in sids:
            await m.destroy_session(sid)
        return sum(counts) / elapsed

    async def run() -> list[tuple[str, dict[int, float]]]:
        client = aredis.Redis.from_url(url, max_connections=max(tasks) + 4)
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        m = AsyncRedisSessionManager(client, bench_config(), namespace=namespace)
        try:
            for _ in range(live):
                await m.create_session()
            return [(name, {n: await measure(m, body, n) for n in tasks})
                    for name, body in ASYNC_OPS.items()]
        finally:
            sync = __import__("redis").Redis.from_url(url)
            _drop_namespace(sync, namespace)
            sync.close()
            await client.aclose()

    return asyncio.run(run())


def _drop_namespace(client: Any, namespace: str) -> None:
    keys = list(client.scan_iter(match="{" + namespace + "}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def print_table(
    columns: list[tuple[str, list[tuple[str, dict[int, float]]]]], out: Any = sys.stdout
) -> None:
    """One row per operation, one column per (manager, threads): ops/s."""
    heads = [f"{label} x{n}" for label, rows in columns for n in rows[0][1]]
    print(f"{'operation (ops/s)':<54}" + "".join(f"{h:>16}" for h in heads), file=out)
    for i, (name, _) in enumerate(columns[0][1]):
        cells = [rows[i][1][n] for _, rows in columns for n in rows[i][1]]
        print(f"{name:<54}" + "".join(f"{c:>16,.0f}" for c in cells), file=out)


# ---------------------------------------------------------------------------
# a throwaway local server when no URL is given
# ---------------------------------------------------------------------------


def _local_server() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no --redis URL and no redis-server on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="rlm-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", workdir, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    for _ in range(500):
        try:
            if redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping():
                break
        except redis.ConnectionError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}", workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", nargs="?", metavar="URL",
                        help="redis://host:port (none: start a local redis-server)")
    parser.add_argument("--threads", type=int, default=8, help="client threads of the second column")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--live", type=int, default=10_000, help="other sessions in the table")
    parser.add_argument("--tasks", type=int, default=64, help="asyncio tasks of the async table's second column")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process column")
    parser.add_argument("--quick", action="store_true", help="shorter timings, fewer live sessions")
    args = parser.parse_args(argv)
    threads = (1, args.threads)
    if args.quick:
        args.seconds, args.live = min(args.seconds, 0.3), min(args.live, 1_000)

    proc = workdir = None
    url = args.redis or None
    if url is None:
        proc, url, workdir = _local_server()
    try:
        import redis as redis_py

        hiredis = getattr(redis_py.utils, "HIREDIS_AVAILABLE", False)
        columns = [("redis", bench_redis(url, threads=threads, seconds=args.seconds, live=args.live))]
        if not args.no_in_process:
            import rlm_fast

            columns.append(
                (
                    rlm_fast.IMPLEMENTATION,
                    run_table(
                        lambda: rlm_fast.SessionManager(bench_config()),
                        threads=threads,
                        seconds=args.seconds,
                        live=args.live,
                    ),
                )
            )
        print(f"Redis at {url}; redis-py {redis_py.__version__}, hiredis {'yes' if hiredis else 'no'}; "
              f"{os.cpu_count()} CPUs; {args.live:,} live sessions")
        print_table(columns)
        print(f"\nasyncio: AsyncRedisSessionManager, one redis.asyncio client, 1 and {args.tasks} tasks")
        print_table([("async redis", bench_async(url, tasks=(1, args.tasks), seconds=args.seconds,
                                                 live=min(args.live, 1_000)))])
        print("\nround trips per model call: scripts the server ran (INFO commandstats), "
              "requests the client sent")
        for name, (scripts, requests) in round_trips(url).items():
            print(f"  {name:<58}{scripts:6.2f}{requests:6.2f}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
