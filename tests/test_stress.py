"""Stress: many threads, hundreds of thousands of random operations on one
manager, in each core; then every counter is accounted for.

Each run happens in a subprocess (this file is also the script it runs), so
that a deadlock or a crash fails the test instead of hanging or killing the
run. Inside it:

- N_THREADS (default 8) workers start together and draw random operations
  over a shared, growing pool of sessions and a pool of 64 VM ids, on a
  shared clock that the workers themselves move forward (sessions expire,
  get cleaned up, are extended, terminated, destroyed, recreated);
- each worker logs, in its own list, every call that changed something it
  can account for: creates, charges of tokens and time (an over-budget
  charge is kept, so it is logged too), snapshots, extensions,
  terminations, destroys, the ids each cleanup returned, and its own
  context variables (each worker writes only its own key, so it also checks
  every read of that key as it goes);
- a watchdog: the main thread joins the workers against a deadline and, if
  any is still running, dumps every thread's stack (faulthandler) and exits
  with a distinct status; `faulthandler.dump_traceback_later` is armed as a
  backstop that needs no GIL, in case the main thread itself is stuck;
- afterwards, at rest, the replay of the logs must give exactly: the
  created / destroyed / expired counters, the set of ids left in the table,
  and for each of them tokens_used, time_used_ms, snapshot_count,
  extension_count and expires_at, state TERMINATED iff a terminate was
  logged, recursion depth 0 (every recursion() scope was left), each
  worker's context variable; and SPEC 4.6's invariants hold (VM maps exact
  inverses, sessions_with_vm, active_sessions == len()).

Size: RLM_FAST_STRESS_OPS operations per core (default 1,000,000, split over
the threads); RLM_FAST_STRESS_SCALE multiplies it (e.g. 10 for a long run);
RLM_FAST_STRESS_THREADS sets the thread count (default 8).
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

NS = 10**9
MS = 10**6
START_NS = 1_767_225_600 * NS
DURATION_SECS = 2
INCREMENT_SECS = 2
MAX_EXTENSIONS = 10**9  # hot sessions are kept alive by extending them
N_HOT = 64
TOKEN_BUDGET = 20_000
TIME_BUDGET_MS = 5_000
MAX_DEPTH = 4
VMS = [f"vm-{i}" for i in range(64)]
DEADLINE_S = float(os.environ.get("RLM_FAST_STRESS_DEADLINE", "300"))

EXIT_DEADLOCK = 3
EXIT_MISMATCH = 4


class SharedClock:
    """The manager's clock: workers move it forward (never back), holding
    `lock`, which also guards `hot_expiry`."""

    def __init__(self) -> None:
        self.now = START_NS
        self.lock = threading.Lock()
        self.hot_expiry: dict[object, int] = {}

    def __call__(self) -> int:
        return self.now  # one attribute read: atomic on every build


def worker(index, m, core, clock, pool, hot, n_ops, seed, logs, errors, start):  # type: ignore[no-untyped-def]
    from rlm_fast import (
        InvalidSessionState,
        InvalidSessionToken,
        MaxExtensionsReached,
        RecursionDepthExceeded,
        SessionExpired,
        SessionNotFound,
        SessionState,
        TimeBudgetExceeded,
        TokenBudgetExceeded,
    )

    gone = (SessionNotFound, SessionExpired, InvalidSessionState)
    rng = random.Random(seed * 1000 + index)
    log = logs[index]
    ops = Counter()
    my_key = f"worker-{index}"
    mine: dict[object, str | None] = {}  # sid -> what my key should hold
    counter = 0

    hot_set = set(hot)

    def recent():  # type: ignore[no-untyped-def]
        n = len(pool)
        return pool[rng.randrange(max(0, n - 48), n)] if n else None

    def pick():  # type: ignore[no-untyped-def]
        # Half the calls go to the hot sessions, which live to the end (so
        # the replay checks everything done to them), half to recent ones.
        return rng.choice(hot) if rng.random() < 0.5 else recent()

    start.wait()
    try:
        for _ in range(n_ops):
            r = rng.random()
            sid = pick()
            if sid is None or r < 0.05:
                info = m.create_session()
                pool.append(info.id)
                log.append(("create", info.id))
                ops["create_session"] += 1
                continue
            if r < 0.25:
                amount = rng.randrange(0, 60)
                try:
                    total = m.charge_tokens(sid, amount)
                    assert total >= amount
                except TokenBudgetExceeded:
                    pass  # spent: the charge stays
                except gone:
                    amount = None
                if amount is not None:
                    log.append(("tokens", sid, amount))
                ops["charge_tokens"] += 1
            elif r < 0.35:
                amount = rng.randrange(0, 20)
                try:
                    m.charge_time(sid, amount)
                except TimeBudgetExceeded:
                    pass
                except gone:
                    amount = None
                if amount is not None:
                    log.append(("time", sid, amount))
                ops["charge_time"] += 1
            elif r < 0.43:
                counter += 1
                value = f"{index}:{counter}:" + "x" * rng.randrange(0, 200)
                try:
                    m.set_context_variable(sid, my_key, value)
                except gone:
                    pass
                else:
                    mine[sid] = value
                    log.append(("set", sid, value))
                ops["set_context_variable"] += 1
            elif r < 0.47:
                try:
                    old = m.delete_context_variable(sid, my_key)
                except gone:
                    pass
                else:
                    if old != mine.get(sid):
                        raise AssertionError(f"delete returned {old!r:.40}, expected {mine.get(sid)!r:.40}")
                    mine[sid] = None
                    log.append(("del", sid))
                ops["delete_context_variable"] += 1
            elif r < 0.50:
                try:
                    got = m.get_context_variable(sid, my_key)
                except SessionNotFound:
                    pass
                else:
                    if got != mine.get(sid):
                        raise AssertionError(f"read {got!r:.40}, expected {mine.get(sid)!r:.40}")
                ops["get_context_variable"] += 1
            elif r < 0.56:
                try:
                    m.assign_vm(sid, rng.choice(VMS))
                except gone:
                    pass
                ops["assign_vm"] += 1
            elif r < 0.59:
                try:
                    m.release_vm(sid)
                except SessionNotFound:
                    pass
                ops["release_vm"] += 1
            elif r < 0.62:
                owner = m.get_session_for_vm(rng.choice(VMS))
                assert owner is None or type(owner) is core.SessionId
                ops["get_session_for_vm"] += 1
            elif r < 0.67:
                try:
                    with m.recursion(sid) as depth:
                        assert 1 <= depth <= MAX_DEPTH
                        if rng.random() < 0.5:
                            try:
                                m.charge_tokens(sid, 1)
                                log.append(("tokens", sid, 1))
                            except TokenBudgetExceeded:
                                log.append(("tokens", sid, 1))
                            except gone:
                                pass
                except RecursionDepthExceeded:
                    pass
                except gone:
                    pass
                ops["recursion"] += 1
            elif r < 0.71:
                try:
                    m.record_snapshot_created(sid, f"snap-{index}", set_as_current=rng.random() < 0.5)
                except gone:
                    pass
                else:
                    log.append(("snapshot", sid))
                ops["record_snapshot_created"] += 1
            elif r < 0.73:
                try:
                    m.extend_session(sid)
                except MaxExtensionsReached:
                    pass
                except gone:
                    pass
                else:
                    log.append(("extend", sid))
                ops["extend_session"] += 1
            elif r < 0.76:
                try:
                    m.update_session_state(
                        sid, rng.choice([SessionState.READY, SessionState.EXECUTING, SessionState.PAUSED])
                    )
                except gone:
                    pass
                ops["update_session_state"] += 1
            elif r < 0.765:
                sid = recent()  # hot sessions are never terminated
                if sid is None or sid in hot_set:
                    ops["skipped"] += 1
                    continue
                try:
                    m.update_session_state(sid, SessionState.TERMINATED)
                except gone:
                    pass
                else:
                    log.append(("terminate", sid))
                ops["terminate"] += 1
            elif r < 0.785:
                sid = recent()  # nor destroyed
                if sid is None or sid in hot_set:
                    ops["skipped"] += 1
                    continue
                try:
                    m.destroy_session(sid)
                except SessionNotFound:
                    pass
                else:
                    log.append(("destroy", sid))
                ops["destroy_session"] += 1
            elif r < 0.795:
                log.append(("expired", m.cleanup_expired_sessions()))
                ops["cleanup_expired_sessions"] += 1
            elif r < 0.815:
                step = rng.randrange(1, 400) * MS
                with clock.lock:
                    # Keep the hot sessions alive: extend each one before
                    # the clock could pass its expiry (nothing else moves
                    # the clock while this lock is held).
                    for h in hot:
                        if clock.hot_expiry[h] <= clock.now + step + DURATION_SECS * NS:
                            clock.hot_expiry[h] = m.extend_session(h).expires_at_ns
                            log.append(("extend", h))
                    clock.now += step
                ops["advance_clock"] += 1
            elif r < 0.87:
                m.is_session_valid(sid)
                try:
                    m.validate_session(sid)
                except gone:
                    pass
                ops["validate"] += 1
            elif r < 0.90:
                try:
                    m.check_budget(sid)
                except (TokenBudgetExceeded, TimeBudgetExceeded, RecursionDepthExceeded):
                    pass
                except gone:
                    pass
                ops["check_budget"] += 1
            elif r < 0.93:
                try:
                    info = m.get_session(sid)
                    assert info.recursion_depth == info.budget_status.current_recursion_depth
                except SessionNotFound:
                    pass
                ops["get_session"] += 1
            elif r < 0.95:
                stats = m.get_stats()
                assert stats.active_sessions >= 0 and stats.sessions_with_vm <= len(VMS)
                ops["get_stats"] += 1
            elif r < 0.951:
                rows = m.list_sessions()
                assert all(a.id < b.id for a, b in itertools.pairwise(rows))
                ops["list_sessions"] += 1
            elif r < 0.97:
                try:
                    m.get_session(rng.choice(["nope", "0" * 25, "8" + "0" * 25]))
                except InvalidSessionToken:
                    pass
                try:
                    m.charge_tokens(sid, rng.choice([-1, 2**64, True, 1.5]))
                except (TypeError, ValueError):
                    pass
                try:
                    m.assign_vm(sid, rng.choice(["", None, "\ud800"]))
                except (TypeError, ValueError):
                    pass
                ops["bad_input"] += 1
            else:
                m.get_assigned_vm(sid)
                try:
                    m.get_all_context_variables(sid)
                    m.get_current_snapshot(sid)
                except SessionNotFound:
                    pass
                ops["read"] += 1
    except BaseException as exc:
        import traceback

        errors.append(f"worker {index}: {traceback.format_exc()}")
        raise SystemExit from exc
    finally:
        log.append(("ops", dict(ops)))


def run(module: str, total_ops: int, n_threads: int, seed: int) -> dict[str, object]:
    import importlib

    from rlm_fast import RlmConfig, SessionState

    core = importlib.import_module(module)
    config = RlmConfig(
        session_duration_secs=DURATION_SECS,
        extension_increment_secs=INCREMENT_SECS,
        max_extensions=MAX_EXTENSIONS,
        token_budget=TOKEN_BUDGET,
        time_budget_ms=TIME_BUDGET_MS,
        max_recursion_depth=MAX_DEPTH,
        max_snapshots_per_session=0,  # no limit: every logged snapshot counts
    )
    clock = SharedClock()
    m = core.SessionManager(config, clock=clock)
    pool: list[object] = []
    hot = []
    for _ in range(N_HOT):
        info = m.create_session()
        hot.append(info.id)
        clock.hot_expiry[info.id] = info.expires_at_ns
    logs: list[list[tuple]] = [[] for _ in range(n_threads)]
    errors: list[str] = []
    start = threading.Barrier(n_threads + 1)
    per_thread = -(-total_ops // n_threads)
    threads = [
        threading.Thread(
            target=worker,
            args=(i, m, core, clock, pool, hot, per_thread, seed, logs, errors, start),
            name=f"stress-{i}",
            daemon=True,
        )
        for i in range(n_threads)
    ]
    faulthandler.dump_traceback_later(DEADLINE_S + 60, exit=True)  # backstop: needs no GIL
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # GIL builds: switch threads often
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    start.wait()
    deadline = time.monotonic() + DEADLINE_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0
    sys.setswitchinterval(switch)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        sys.stderr.write(f"DEADLOCK? threads still running after {DEADLINE_S:.0f} s: {stuck}\n")
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_DEADLOCK)
    faulthandler.cancel_dump_traceback_later()
    if errors:
        sys.stderr.write("\n".join(errors))
        os._exit(EXIT_MISMATCH)

    # ---- replay the logs --------------------------------------------------
    created: list[object] = list(hot)
    destroyed: list[object] = []
    expired: list[object] = []
    tokens: Counter = Counter()
    time_ms: Counter = Counter()
    snapshots: Counter = Counter()
    extensions: Counter = Counter()
    terminated: set = set()
    context: dict[object, dict[str, str]] = defaultdict(dict)
    ops: Counter = Counter()
    for index, log in enumerate(logs):
        key = f"worker-{index}"
        for entry in log:
            kind = entry[0]
            if kind == "create":
                created.append(entry[1])
            elif kind == "tokens":
                tokens[entry[1]] += entry[2]
            elif kind == "time":
                time_ms[entry[1]] += entry[2]
            elif kind == "set":
                context[entry[1]][key] = entry[2]
            elif kind == "del":
                context[entry[1]].pop(key, None)
            elif kind == "snapshot":
                snapshots[entry[1]] += 1
            elif kind == "extend":
                extensions[entry[1]] += 1
            elif kind == "terminate":
                terminated.add(entry[1])
            elif kind == "destroy":
                destroyed.append(entry[1])
            elif kind == "expired":
                expired.extend(entry[1])
            elif kind == "ops":
                ops.update(entry[1])
    problems: list[str] = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: got {got!r:.200}, replay says {want!r:.200}")

    stats = m.get_stats()
    rows = m.list_sessions()
    expect("distinct created ids", len(set(created)), len(created))
    expect("total_sessions_created", stats.total_sessions_created, len(created))
    expect("total_sessions_destroyed", stats.total_sessions_destroyed, len(destroyed))
    expect("total_sessions_expired", stats.total_sessions_expired, len(expired))
    expect("each id destroyed at most once", len(set(destroyed)), len(destroyed))
    expect("each id expired at most once", len(set(expired)), len(expired))
    expect("destroyed and also expired", set(destroyed) & set(expired), set())
    left = set(created) - set(destroyed) - set(expired)
    expect("ids in the table", {r.id for r in rows}, left)
    expect("hot sessions all left", set(hot) - left, set())
    expect("active_sessions", stats.active_sessions, len(left))
    expect("len(manager)", len(m), len(left))
    expect("created == destroyed + expired + active", stats.total_sessions_created,
           stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions)
    held = {}
    for r in rows:
        sid = r.id
        b = r.budget_status
        expect(f"{sid} tokens_used", b.tokens_used, tokens[sid])
        expect(f"{sid} time_used_ms", b.time_used_ms, time_ms[sid])
        expect(f"{sid} snapshot_count", r.snapshot_count, snapshots[sid])
        expect(f"{sid} extension_count", r.extension_count, extensions[sid])
        expect(f"{sid} expires_at_ns", r.expires_at_ns,
               r.created_at_ns + DURATION_SECS * NS + extensions[sid] * INCREMENT_SECS * NS)
        expect(f"{sid} terminated", r.state is SessionState.TERMINATED, sid in terminated)
        expect(f"{sid} recursion_depth", r.recursion_depth, 0)
        expect(f"{sid} depth agrees", b.current_recursion_depth, r.recursion_depth)
        mine = {k: v for k, v in r.context_variables.items() if k.startswith("worker-")}
        expect(f"{sid} context", mine, context.get(sid, {}))
        if r.vm_instance_id is not None:
            expect(f"{r.vm_instance_id} held twice", r.vm_instance_id in held, False)
            held[r.vm_instance_id] = sid
    expect("sessions_with_vm", stats.sessions_with_vm, len(held))
    for vm in VMS:
        expect(f"get_session_for_vm({vm})", m.get_session_for_vm(vm), held.get(vm))
    for vm, sid in held.items():
        expect(f"get_assigned_vm({sid})", m.get_assigned_vm(sid), vm)
    total = sum(ops.values())
    if total < total_ops:
        problems.append(f"only {total} operations ran, {total_ops} asked")
    if problems:
        sys.stderr.write(f"{len(problems)} mismatch(es) after {total} operations:\n")
        sys.stderr.write("\n".join(problems[:50]) + "\n")
        os._exit(EXIT_MISMATCH)
    return {
        "module": module,
        "threads": n_threads,
        "operations": total,
        "seconds": round(elapsed, 2),
        "created": len(created),
        "destroyed": len(destroyed),
        "expired": len(expired),
        "left": len(left),
        "hot_sessions": N_HOT,
        "tokens_charged_to_hot": sum(tokens[h] for h in hot),
        "tokens_charged": sum(tokens.values()),
        "ops": dict(sorted(ops.items())),
        "gil_enabled": getattr(sys, "_is_gil_enabled", lambda: True)(),
    }


# --------------------------------------------------------------------------
# the tests (in the parent process)
# --------------------------------------------------------------------------


def _settings() -> tuple[int, int]:
    scale = float(os.environ.get("RLM_FAST_STRESS_SCALE", "1"))
    total = int(int(os.environ.get("RLM_FAST_STRESS_OPS", "1000000")) * scale)
    threads = int(os.environ.get("RLM_FAST_STRESS_THREADS", "8"))
    return total, threads


def _run_subprocess(module: str):  # type: ignore[no-untyped-def]
    import pytest

    import rlm_fast

    total, threads = _settings()
    parent = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), module, str(total), str(threads), "20260101"],
            check=False, env=env, capture_output=True, text=True, timeout=DEADLINE_S + 180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{module}: the stress run did not finish (deadlock?)\n{(exc.stderr or '')[-6000:]}")
    if proc.returncode == EXIT_DEADLOCK:
        pytest.fail(f"{module}: DEADLOCK, every thread's stack:\n{proc.stderr[-12000:]}")
    assert proc.returncode == 0, (
        f"{module}: exit {proc.returncode} (negative: killed by a signal, a crash)\n"
        f"{proc.stderr[-8000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(result: dict) -> None:  # type: ignore[type-arg]
    try:
        from conftest_hypothesis import figure
    except ImportError:  # pragma: no cover
        return
    figure(
        "stress_operations", result["operations"], core=result["module"],
        threads=result["threads"], seconds=result["seconds"], created=result["created"],
        destroyed=result["destroyed"], expired=result["expired"],
        tokens_charged=result["tokens_charged"],
    )


def test_stress_twin() -> None:
    result = _run_subprocess("rlm_fast._session_py")
    assert result["threads"] >= 8 or os.environ.get("RLM_FAST_STRESS_THREADS")
    _report(result)


def test_stress_compiled() -> None:
    import pytest

    try:
        import rlm_fast._session_c  # noqa: F401
    except ImportError as exc:
        if os.environ.get("RLM_FAST_REQUIRE_EXTENSIONS") == "1":
            raise
        pytest.skip(f"compiled core not built ({exc})")
    result = _run_subprocess("rlm_fast._session_c")
    _report(result)


if __name__ == "__main__":
    faulthandler.enable()
    module, total_ops, n_threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run(module, total_ops, n_threads, seed)))
