"""`python -m rlm_fast bench`: the same workload on both cores, one process.

Every operation runs against a manager holding 10,000 live sessions; each is
timed with `timeit` (best of several repeats) and printed as ns/op for the
twin and the compiled core, their ratio, and the compiled time over the
*floor*: an empty compiled method taking the same argument
(`_session_c._Floor.noop`), so "how close to a bare call" is a ratio from the
same run. A second table sets the tree and model-call rows beside their
baselines. The pytest-benchmark suite in benchmarks/ uses the same OPS and
PREPARED statements. `--logging`, `--stalls`, `--scaling`, `--memory`,
`--cleanup` and `--plot` add sections; `--redis URL` is served by
`_bench_redis` (one layer up), which `__main__` dispatches to.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib
import importlib.util
import io
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from array import array
from itertools import pairwise
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import IMPLEMENTATION, _session_py
from ._results import SessionState
from .config import RlmConfig

try:
    from . import _session_c

    COMPILED: ModuleType | None = _session_c
except ImportError:  # not built: the compiled column shows "-"
    COMPILED = None

LIVE_SESSIONS = 10_000

# name -> statement timed per call. Names: m (manager), sid (a SessionId),
# sid_s (its string), vm (its VM id), state, budget, floor, parent (a root
# with no other child), kid3 (a depth-3 child: root -> c1 -> c2 -> kid3).
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
    # call trees (SPEC 11)
    "create_child_session + destroy_session": (
        "m.destroy_session(m.create_child_session(parent).id)"
    ),
    "is_session_valid [depth-3 child]": "m.is_session_valid(kid3)",
    "charge_tokens [depth-3 child]": "m.charge_tokens(kid3, 1)",
    "check_budget [depth-3 child]": "m.check_budget(kid3)",
    # the model-call step (SPEC 13) against the two calls it replaces
    "is_session_valid + charge_tokens": "m.is_session_valid(sid); m.charge_tokens(sid, 1)",
    "begin_call + end_call": "m.begin_call(sid); m.end_call(sid, tokens=1)",
    "call() block": "with m.call(sid) as c: c.tokens = 1",
}
PER_SESSION = {"list_sessions (per session)"}

# Rows whose statement consumes something made beforehand, untimed:
# name -> (setup expression, statement on `root`). Each execution destroys
# one tree that `setup` built (timeit: a batch per repeat; pytest-benchmark:
# pedantic with one setup per round).
PREPARED: dict[str, tuple[str, str]] = {
    "destroy_session [root alone]": ("make_tree(m, 0)", "m.destroy_session(root)"),
    "destroy_session [root + 10 children]": ("make_tree(m, 10)", "m.destroy_session(root)"),
}

# row -> the row it is compared with in the second table.
BASELINE: dict[str, str] = {
    "create_child_session + destroy_session": "create_session + destroy_session",
    "is_session_valid [depth-3 child]": "is_session_valid",
    "charge_tokens [depth-3 child]": "charge_tokens",
    "check_budget [depth-3 child]": "check_budget",
    "destroy_session [root + 10 children]": "destroy_session [root alone]",
    "begin_call + end_call": "is_session_valid + charge_tokens",
    "call() block": "is_session_valid + charge_tokens",
}

HOT_PATH = {
    "is_session_valid", "increment_recursion_depth", "decrement_recursion_depth",
    "charge_tokens", "charge_time", "check_budget", "get_assigned_vm",
    "get_session_for_vm",
}
# --logging: the hot path, and the calls that log at INFO when it is on.
LOGGING_ROWS = [*sorted(HOT_PATH), "create_session + destroy_session",
                "create_child_session + destroy_session"]

Row = tuple[str, float | None, float | None]  # (name, twin ns, compiled ns)


def bench_config() -> RlmConfig:
    # Limits out of the way: the loop must not hit a budget or a maximum.
    big = 2**62
    return RlmConfig(
        session_duration_secs=3600,
        extension_increment_secs=1,
        max_extensions=2**32 - 1,  # the crate's u32
        token_budget=big,
        time_budget_ms=big,
        max_recursion_depth=2**32 - 1,
        max_snapshots_per_session=0,
    )


def make_tree(m: Any, children: int) -> Any:
    """A new root with `children` children; the root's id."""
    root = m.create_session().id
    for _ in range(children):
        m.create_child_session(root)
    return root


def workload(module: ModuleType, floor: Any) -> dict[str, Any]:
    """A manager of `module` with LIVE_SESSIONS sessions (half with a VM and
    a context variable), a chain root -> c1 -> c2 -> kid3, and the names the
    statements in OPS and PREPARED use."""
    m = module.SessionManager(bench_config())
    ids = [m.create_session().id for _ in range(LIVE_SESSIONS)]
    for n, sid in enumerate(ids[::2]):
        m.assign_vm(sid, f"vm-{n}")
        m.set_context_variable(sid, "k", "v")
    sid = ids[len(ids) // 2]
    m.set_context_variable(sid, "k", "v")
    kid3 = ids[1]
    for _ in range(3):
        kid3 = m.create_child_session(kid3).id
    return {
        "m": m,
        "sid": sid,
        "sid_s": str(sid),
        "vm": "vm-bench",
        "state": SessionState.READY,
        # The core's own class (the other core's is accepted, converted).
        "budget": module.BudgetStatus(
            token_budget=2**62, time_budget_ms=2**62, max_recursion_depth=2**32 - 1
        ),
        "floor": floor,
        "parent": ids[3],
        "kid3": kid3,
        "make_tree": make_tree,
    }


def runs_on(stmt: str, names: dict[str, Any]) -> bool:
    """False when the core lacks a method the statement calls (a feature
    another core has already): its cell shows "-"."""
    try:
        exec(stmt, dict(names))  # noqa: S102 (our own statements)
    except AttributeError:
        return False
    return True


def time_op(stmt: str, names: dict[str, Any], budget_s: float = 0.05, repeat: int = 5) -> float:
    """Best ns per execution of `stmt` over `repeat` runs of ~budget_s."""
    timer = timeit.Timer(stmt, globals=names)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def time_prepared(setup: str, stmt: str, names: dict[str, Any], number: int,
                  repeat: int = 5) -> float:
    """Best ns per execution of `stmt`, each on a `root` that `setup` made
    beforehand (untimed)."""
    timer = timeit.Timer(
        f"root = next(roots)\n{stmt}",
        setup=f"roots = iter([{setup} for _ in range({number})])",
        globals=names,
    )
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def compare(ops: dict[str, str] | None = None, *, quick: bool = False,
            prepared: bool = True) -> list[Row]:
    """(name, twin ns/op, compiled ns/op) for each operation; None where a
    core is not built or lacks the call."""
    floor = COMPILED._Floor() if COMPILED is not None else None
    ops = OPS if ops is None else ops
    budget = 0.01 if quick else 0.05
    cores = [workload(_session_py, floor), workload(COMPILED, floor) if COMPILED else None]
    results: list[Row] = []
    for name, stmt in ops.items():
        per = LIVE_SESSIONS if name in PER_SESSION else 1
        cells: list[float | None] = []
        for i, names in enumerate(cores):
            if names is None or (i == 0 and name.startswith("floor")) or not runs_on(stmt, names):
                cells.append(None)
            else:
                cells.append(time_op(stmt, names, budget) / per)
        results.append((name, cells[0], cells[1]))
    if prepared:
        number = 300 if quick else 2000
        for name, (setup, stmt) in PREPARED.items():
            cells = [None if names is None else time_prepared(setup, stmt, names, number)
                     for names in cores]
            results.append((name, cells[0], cells[1]))
    return results


def _ns(value: float | None, width: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.0f}"


def _x(a: float | None, b: float | None, width: int, digits: int = 1) -> str:
    return "".rjust(width) if a is None or b is None else f"{a / b:{width - 1}.{digits}f}x"


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    floor = next((c for n, _, c in rows if n.startswith("floor")), None)
    print(f"{'operation':<46}{'twin ns':>10}{'cython ns':>11}{'twin/cy':>9}{'cy/floor':>10}",
          file=out)
    for name, t_py, t_c in rows:
        print(f"{name:<46}{_ns(t_py, 10)}{_ns(t_c, 11)}{_x(t_py, t_c, 9)}"
              f"{_x(t_c, floor, 10, 2)}", file=out)


def print_baselines(rows: list[Row], out: Any = sys.stdout) -> None:
    """Each tree / model-call row over its baseline, per core (same run)."""
    got = {name: (t_py, t_c) for name, t_py, t_c in rows}
    print(f"{'operation':<40}{'vs':<34}{'twin':>8}{'cython':>8}", file=out)
    for name, base in BASELINE.items():
        if name in got and base in got:
            (p, c), (bp, bc) = got[name], got[base]
            print(f"{name:<40}{base:<34}{_x(p, bp, 8, 2)}{_x(c, bc, 8, 2)}", file=out)


# ---------------------------------------------------------------------------
# --logging: the hot path with the rlm_fast logger disabled, at WARNING, at INFO
# ---------------------------------------------------------------------------

LOG_STATES = ("disabled", "WARNING", "INFO")


def _set_logger(state: str, sink: logging.Handler) -> None:
    log = logging.getLogger("rlm_fast")
    log.disabled = state == "disabled"
    log.setLevel(logging.WARNING if state != "INFO" else logging.INFO)
    if state == "INFO":
        log.addHandler(sink)
    else:
        log.removeHandler(sink)


def logging_costs(quick: bool = False) -> dict[str, dict[str, list[float | None]]]:
    """core -> row -> ns per call in each LOG_STATES state."""
    log = logging.getLogger("rlm_fast")
    saved = (log.disabled, log.level)
    sink = logging.StreamHandler(io.StringIO())  # INFO records are formatted, then dropped
    out: dict[str, dict[str, list[float | None]]] = {}
    floor = COMPILED._Floor() if COMPILED is not None else None
    cores = [("python", _session_py)] + ([("cython", COMPILED)] if COMPILED else [])
    try:
        for core, module in cores:
            names = workload(module, floor)
            table: dict[str, list[float | None]] = {row: [] for row in LOGGING_ROWS}
            for state in LOG_STATES:
                _set_logger(state, sink)
                for row in LOGGING_ROWS:
                    table[row].append(time_op(OPS[row], names, 0.01 if quick else 0.05))
                sink.stream = io.StringIO()
            out[core] = table
    finally:
        log.removeHandler(sink)
        log.disabled, _ = saved
        log.setLevel(saved[1])
    return out


def print_logging(costs: dict[str, dict[str, list[float | None]]], out: Any = sys.stdout) -> None:
    print(f"{'core':<8}{'operation':<40}{'disabled':>10}{'WARNING':>10}{'W/dis':>8}"
          f"{'INFO':>10}{'I/dis':>8}", file=out)
    for core, table in costs.items():
        for row, (off, warn, info) in table.items():
            print(f"{core:<8}{row:<40}{_ns(off, 10)}{_ns(warn, 10)}{_x(warn, off, 8, 2)}"
                  f"{_ns(info, 10)}{_x(info, off, 8, 2)}", file=out)


# ---------------------------------------------------------------------------
# --stalls: what a whole-table call does to a hot-path thread (SPEC 15)
# ---------------------------------------------------------------------------


class HotPath:
    """A thread calling `is_session_valid(sid)` in a loop; while recording,
    it keeps each call's end time (perf_counter_ns), so the gaps between
    consecutive ends are the latencies it saw, waits for locks or for the
    GIL included."""

    def __init__(self, m: Any, sid: Any) -> None:
        self.m, self.sid = m, sid
        self.recording = False
        self.ends = array("q")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="hot-path", daemon=True)

    def loop(self) -> None:
        valid, sid, clock = self.m.is_session_valid, self.sid, time.perf_counter_ns
        while not self.stop.is_set():
            for _ in range(100):
                ok = valid(sid)
                if self.recording:
                    self.ends.append(clock())
            if not ok:
                raise RuntimeError("the hot-path session stopped being valid")

    def during(self, call: Callable[[], object]) -> dict[str, float]:
        """Run `call` in this thread; the hot path's latencies during it.
        The result is dropped after the window, and how long that took is
        `drop_ms`: freeing a list of a million objects is one step of
        CPython's that holds the GIL throughout (about 35 ms for a million
        SessionInfos here), whatever library made them."""
        self.ends = array("q")
        self.recording = True
        time.sleep(0.01)
        t0 = time.perf_counter_ns()
        result = call()
        t1 = time.perf_counter_ns()
        time.sleep(0.01)
        self.recording = False
        time.sleep(0.001)
        t2 = time.perf_counter_ns()
        del result
        drop_ms = (time.perf_counter_ns() - t2) / 1e6
        ends = self.ends.tolist()
        gaps = sorted(b - a for a, b in pairwise(ends) if b >= t0 and a <= t1)
        if not gaps:  # the hot path never completed a call during it
            return {"seconds": (t1 - t0) / 1e9, "calls": 0, "worst_us": (t1 - t0) / 1e3,
                    "p999_us": (t1 - t0) / 1e3, "drop_ms": drop_ms}
        return {
            "drop_ms": drop_ms,
            "seconds": (t1 - t0) / 1e9,
            "calls": sum(1 for e in ends if t0 <= e <= t1),
            "worst_us": gaps[-1] / 1e3,
            "p999_us": gaps[min(len(gaps) - 1, int(len(gaps) * 0.999))] / 1e3,
        }


def stall_table(core: str, n: int) -> list[tuple[str, dict[str, float] | None]]:
    """Each whole-table call on a manager of `core` holding `n` sessions,
    with the hot-path thread's latencies during it (None: the core lacks the
    call, or numpy is missing for budget_table)."""
    module = _core_module(core)
    base = 1_767_225_600 * 10**9
    now = [base]
    m = module.SessionManager(
        RlmConfig(session_duration_secs=100, max_extensions=0), clock=lambda: now[0]
    )
    tenth = n // 10
    for _ in range(tenth):  # expire at +100 s: cleanup's 10%
        m.create_session()
    now[0] = base + 30 * 10**9
    for _ in range(tenth):  # +130 s: pop_expired_sessions' 10%
        m.create_session()
    now[0] = base + 60 * 10**9
    hot = m.create_session().id
    for _ in range(n - 2 * tenth - 1):  # +160 s
        m.create_session()
    gc.collect()
    path = os.path.join(tempfile.mkdtemp(prefix="rlm-stalls-"), "sessions.jsonl")

    def at(seconds: int, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            now[0] = base + seconds * 10**9
            return call()
        return run

    calls: list[tuple[str, Callable[[], object] | None]] = [
        ("(nothing: the hot path alone, 0.2 s)", lambda: time.sleep(0.2)),
        ("get_stats", m.get_stats),
        ("len", lambda: len(m)),
        ("list_sessions", m.list_sessions),
        ("budget_table", m.budget_table if _has_numpy() else None),
        ("dump", lambda: m.dump(path)),
        ("cleanup_expired_sessions (10% due)", at(110, m.cleanup_expired_sessions)),
        ("pop_expired_sessions (10% due)",
         at(140, m.pop_expired_sessions) if hasattr(m, "pop_expired_sessions") else None),
    ]
    if _has_numpy():  # its first import holds the GIL for tens of ms: not budget_table's
        from ._bulk import budget_table_dtype

        budget_table_dtype()
    hot_path = HotPath(m, hot)
    hot_path.thread.start()
    rows: list[tuple[str, dict[str, float] | None]] = []
    try:
        for name, call in calls:
            rows.append((name, None if call is None else hot_path.during(call)))
            gc.collect()  # a result's garbage is freed outside the next window
    finally:
        hot_path.stop.set()
        hot_path.thread.join()
        if os.path.exists(path):
            os.remove(path)
        os.rmdir(os.path.dirname(path))
    return rows


def print_stalls(core: str, n: int, rows: list[tuple[str, dict[str, float] | None]],
                 out: Any = sys.stdout) -> None:
    print(f"{core}: {n:,} sessions; hot path = is_session_valid on one session, "
          "another thread", file=out)
    print(f"  {'call':<38}{'duration ms':>12}{'hot calls':>11}{'worst us':>11}{'p99.9 us':>11}"
          f"{'drop ms':>9}", file=out)
    for name, r in rows:
        if r is None:
            print(f"  {name:<38}{'-':>12}", file=out)
        else:
            print(f"  {name:<38}{r['seconds'] * 1e3:12.1f}{r['calls']:>11,}"
                  f"{r['worst_us']:11.0f}{r['p999_us']:11.1f}{r['drop_ms']:9.1f}", file=out)
    print("  (drop ms: freeing the call's result afterwards, outside the window; "
          "CPython frees a list in one step under the GIL)", file=out)


def _has_numpy() -> bool:
    return importlib.util.find_spec("numpy") is not None


# ---------------------------------------------------------------------------
# --plot: the per-operation table as a horizontal bar chart
# ---------------------------------------------------------------------------


def plot(rows: list[Row], path: str, extra: dict[str, dict[str, float]] | None = None) -> None:
    """A horizontal bar chart of ns per call: twin, compiled core, and each
    column of `extra` (label -> {row name -> ns}, e.g. Redis), log scale."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    columns: list[tuple[str, dict[str, float]]] = [
        ("twin (pure Python)", {n: p for n, p, _ in rows if p is not None}),
        ("compiled core", {n: c for n, _, c in rows if c is not None}),
        *(extra or {}).items(),
    ]
    names = [n for n, _, _ in rows if not n.startswith("floor")][::-1]
    height = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) * max(1.0, len(columns) / 2) + 1.5))
    for i, (label, values) in enumerate(columns):
        ys = [k + i * height for k, n in enumerate(names) if n in values]
        xs = [values[n] for n in names if n in values]
        ax.barh(ys, xs, height=height, label=label)
    ax.set_yticks([k + height * (len(columns) - 1) / 2 for k in range(len(names))])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ns per call (log scale; shorter is faster)")
    ax.set_title(f"rlm_fast: {LIVE_SESSIONS:,} live sessions, best of 5")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# memory, cleanup at scale, thread scaling: each in a fresh process
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


def cleanup_at_scale(core: str, n: int = 1_000_000, expired_share: float = 0.1,
                     spin: bool = True) -> dict[str, float]:
    """cleanup_expired_sessions over `n` sessions, `expired_share` of them
    due; counts how far another Python thread got during the call (with
    `spin`; without, the call has the machine to itself, as the Rust
    anchor's row does)."""
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

    def spinner() -> None:
        while not stop.is_set():
            ticks[0] += 1

    other = threading.Thread(target=spinner, daemon=True)
    if spin:
        other.start()
        time.sleep(0.05)
    gc.collect()
    t0, before = time.perf_counter(), ticks[0]
    removed = m.cleanup_expired_sessions()
    elapsed, during = time.perf_counter() - t0, ticks[0] - before
    stop.set()
    if spin:
        other.join()
    assert len(removed) == due, (len(removed), due)
    return {"seconds": elapsed, "other_thread_iterations": during}


def dump_load_at_scale(core: str, n: int, python_path: bool = False) -> dict[str, float]:
    """Seconds to dump a manager of `n` sessions (no VM, no context) and to
    load the file back. `python_path`: the compiled core through the Python
    writer and reader (`_dump.dump`, `_dump.load` without the C++ lines),
    for a ratio in one run."""
    from . import _dump

    module = _core_module(core)
    m = module.SessionManager(bench_config())
    create = m.create_session
    for _ in range(n):
        create()
    path = os.path.join(tempfile.mkdtemp(prefix="rlm-dump-"), "sessions.jsonl")
    try:
        t0 = time.perf_counter()
        if python_path:
            _dump.dump(m, path)
        else:
            m.dump(path)
        t1 = time.perf_counter()
        if python_path:
            back = _dump.load(module.SessionManager, path)
        else:
            back = module.SessionManager.load(path)
        t2 = time.perf_counter()
        assert len(back) == n, (len(back), n)
        return {"dump": t1 - t0, "load": t2 - t1, "bytes": float(os.path.getsize(path))}
    finally:
        os.remove(path)
        os.rmdir(os.path.dirname(path))


def create_fresh(core: str, n: int = 100_000) -> float:
    """ns per create_session, `n` of them into a fresh manager (median of
    5 managers)."""
    module = _core_module(core)
    times = []
    for _ in range(5):
        m = module.SessionManager(bench_config())
        create = m.create_session
        t0 = time.perf_counter()
        for _ in range(n):
            create()
        times.append((time.perf_counter() - t0) / n * 1e9)
    return statistics.median(times)


SCALING_LAYOUTS = ("disjoint roots", "children of one root", "children of different roots")
SCALING_OPS = ("is_session_valid", "charge_tokens")


def thread_scaling(op: str, threads: int, layout: str = "disjoint roots",
                   seconds: float = 1.0, core: str = "cython") -> float:
    """Calls of `op` ("is_session_valid" or "charge_tokens") per second,
    summed over `threads` threads, each on a session of its own: a root of
    its own, a child of one shared root, or a child of a root of its own."""
    if op not in SCALING_OPS or layout not in SCALING_LAYOUTS:
        raise ValueError(f"op in {SCALING_OPS}, layout in {SCALING_LAYOUTS}")
    m = _core_module(core).SessionManager(bench_config())
    shared = m.create_session().id
    used: set[int] = set()

    def root() -> Any:
        # A root in a shard no other thread's root is in (while there are
        # free shards), so the figure is the table's, not the luck of the
        # draw: with random roots two threads share a lock 1 time in 16.
        while True:
            sid = m.create_session().id
            shard = shard_of(sid)
            if shard not in used or len(used) >= SHARDS:
                used.add(shard)
                return sid
            m.destroy_session(sid)

    ids = []
    for _ in range(threads):
        if layout == "disjoint roots":
            ids.append(root())
        elif layout == "children of one root":
            ids.append(m.create_child_session(shared).id)
        else:
            ids.append(m.create_child_session(root()).id)
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        call = getattr(m, op)
        args = (ids[i],) if op == "is_session_valid" else (ids[i], 1)
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
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


SHARDS = 16  # the compiled table's lock stripes (RLM_NSHARDS in _c/table.h)


def shard_of(session_id: Any) -> int:
    """The compiled table's shard of a session: the low 4 bits of its id
    (a child's are its root's: docs/design.md)."""
    return int(session_id.bytes[-1]) & (SHARDS - 1)


def gil_enabled() -> bool:
    is_enabled: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)
    return is_enabled()


def _core_module(core: str) -> ModuleType:
    if core == "cython":
        if COMPILED is None:
            raise SystemExit("the compiled core is not built")
        return COMPILED
    return _session_py


def in_subprocess(call: str) -> Any:
    """Run `_bench.<call>` in a fresh interpreter and return its value."""
    code = f"import rlm_fast._bench as b; print(repr(b.{call}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The options of `python -m rlm_fast bench` (shared with _bench_redis)."""
    p = argparse.ArgumentParser(
        prog="python -m rlm_fast bench",
        description="Time every SessionManager operation on both cores.",
    )
    p.add_argument("--quick", action="store_true", help="shorter timings")
    p.add_argument("--logging", action="store_true",
                   help="also the hot path with the rlm_fast logger disabled / at WARNING / INFO")
    p.add_argument("--stalls", action="store_true",
                   help="also each whole-table call's effect on a hot-path thread "
                        "(--sessions sessions; the per-operation table is skipped)")
    p.add_argument("--memory", action="store_true", help="also RSS per session (--sessions)")
    p.add_argument("--cleanup", action="store_true", help="also cleanup over --sessions sessions")
    p.add_argument("--dump", action="store_true",
                   help="also dump and load of --sessions sessions, each core")
    p.add_argument("--scaling", action="store_true",
                   help="also 1 vs 2 threads (benchmarks/thread_scaling.py for more)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the per-operation table (needs matplotlib)")
    p.add_argument("--redis", metavar="URL",
                   help="also time RedisSessionManager at URL (redis://host:port)")
    p.add_argument("--sessions", type=int, default=1_000_000,
                   help="sessions for --memory/--cleanup/--stalls/--dump (default 1,000,000)")
    p.add_argument("--core", choices=["both", "python", "cython"], default="both",
                   help="cores for --stalls (default both)")
    return p


def header() -> str:
    return (f"rlm_fast bench: {platform.python_implementation()} {platform.python_version()}"
            f" (GIL {'on' if gil_enabled() else 'off'}), import rlm_fast uses "
            f"{IMPLEMENTATION}, {os.cpu_count()} CPUs")


def run(args: argparse.Namespace) -> list[Row]:
    """Every in-process section the options ask for; the per-operation rows
    (with --stalls, only when --plot, --redis or --logging needs them)."""
    print(header())
    n = args.sessions
    rows: list[Row] = []
    if args.stalls:
        print(f"\nstalls (SPEC 15): each whole-table call on a manager of {n:,} sessions, "
              f"and the latency a thread calling is_session_valid saw during it "
              f"(gaps between its calls; switch interval {sys.getswitchinterval() * 1e3:.0f} ms)")
        cores = ("python", "cython") if args.core == "both" else (args.core,)
        for core in cores:
            if core == "cython" and COMPILED is None:
                print("cython: not built")
                continue
            print_stalls(core, n, in_subprocess(f"stall_table({core!r}, {n})"))
    if not args.stalls or args.plot or args.redis or args.logging:  # they need the rows
        print(f"\n{LIVE_SESSIONS:,} live sessions, best of 5, ns per call")
        rows = compare(quick=args.quick)
        print_table(rows)
        print("\ntrees and the model-call step beside their baselines (time ratio, same run)")
        print_baselines(rows)
    if args.logging:
        print("\nthe rlm_fast logger: disabled, enabled at WARNING, at INFO "
              "(a StringIO handler); ns per call")
        print_logging(logging_costs(args.quick))
    if args.memory:
        print(f"\nmemory: RSS growth per session over {n:,} sessions (no VM, no context)")
        for core in ("python", "cython"):
            print(f"  {core:<7} {in_subprocess(f'memory_per_session({core!r}, {n})'):8.0f} bytes")
    if args.cleanup:
        print(f"\ncleanup_expired_sessions over {n:,} sessions, 10% due")
        got = {}
        for core in ("python", "cython"):
            got[core] = r = in_subprocess(f"cleanup_at_scale({core!r}, {n})")
            print(f"  {core:<7} {r['seconds'] * 1e3:9.1f} ms   another Python thread ran "
                  f"{r['other_thread_iterations']:,} loop iterations during the call")
        print(f"  twin/cython: {got['python']['seconds'] / got['cython']['seconds']:.1f}x")
    if args.dump:
        print(f"\ndump and load of {n:,} sessions (no VM, no context), seconds")
        runs = [("python", "python", False), ("cython, Python lines", "cython", True),
                ("cython", "cython", False)]
        for label, core, slow in runs:
            r = in_subprocess(f"dump_load_at_scale({core!r}, {n}, {slow!r})")
            print(f"  {label:<22} dump {r['dump']:7.2f}   load {r['load']:7.2f}"
                  f"   ({r['bytes'] / n:.0f} bytes a session)")
    if args.scaling:
        print("\nthreads on sessions of one compiled manager (ops/s; "
              "benchmarks/thread_scaling.py goes to 16)")
        for layout in SCALING_LAYOUTS:
            for op in SCALING_OPS:
                one = in_subprocess(f"thread_scaling({op!r}, 1, {layout!r})")
                two = in_subprocess(f"thread_scaling({op!r}, 2, {layout!r})")
                print(f"  {layout:<28} {op:<18} 1 thread {one:12,.0f}   2 threads "
                      f"{two:12,.0f}   {two / one:.2f}x")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.redis:
        p.error("--redis: run it as `python -m rlm_fast bench --redis URL` "
                "(rlm_fast._bench_redis serves it)")
    rows = run(args)
    if args.plot:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")
    return 0
