"""The main job: a short simulated RLM orchestrator on the in-process table.

Worker threads play orchestrators: they open sessions, pin each to a VM,
and run "model calls" that validate the session token, recurse with
`recursion()`, charge tokens and time, snapshot, extend, and finish. A
janitor thread reaps expired sessions. At the end the table's counters must
balance: created == destroyed + expired + active.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from types import ModuleType
from typing import Any

from ._types import SessionState
from .config import RlmConfig
from .errors import (
    InvalidSessionState,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)


def pick_core(name: str) -> tuple[ModuleType, str]:
    """The session-core module for --core (auto: what `import rlm_fast` uses)."""
    if name == "auto":
        import rlm_fast

        name = rlm_fast.IMPLEMENTATION
    if name == "cython":
        from . import _core_c

        return _core_c, name
    from . import _core_py

    return _core_py, "python"


def demo_config() -> RlmConfig:
    # Short lives, so sessions expire, extend and get cleaned up in seconds.
    return RlmConfig(
        session_duration_secs=1,
        extension_increment_secs=1,
        max_extensions=1,
        token_budget=100_000,
        time_budget_ms=20_000,
        max_recursion_depth=3,
        max_snapshots_per_session=4,
    )


class Worker(threading.Thread):
    """One orchestrator thread: keeps `target` live sessions busy."""

    def __init__(self, manager: Any, index: int, target: int, stop: threading.Event):
        super().__init__(name=f"worker-{index}", daemon=True)
        self.manager = manager
        self.index = index
        self.target = target
        self.stop_event = stop
        self.ops: Counter[str] = Counter()
        self.rng = random.Random(index)
        self.vm_serial = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:  # reported by main(), never swallowed
            self.error = exc

    def loop(self) -> None:
        m, ops, rng = self.manager, self.ops, self.rng
        live: list[Any] = []
        while not self.stop_event.is_set():
            if len(live) < self.target:
                info = m.create_session()
                ops["create_session"] += 1
                self.vm_serial += 1
                m.assign_vm(info.id, f"vm-{self.index}-{self.vm_serial % (self.target * 2)}")
                ops["assign_vm"] += 1
                live.append(info.id)
                continue
            sid = live[rng.randrange(len(live))]
            try:
                self.model_call(sid)
                roll = rng.random()
                if roll < 0.02:
                    m.extend_session(sid)
                    ops["extend_session"] += 1
                elif roll < 0.05:
                    m.record_snapshot_created(sid, f"snap-{rng.randrange(1000)}", True)
                    ops["record_snapshot_created"] += 1
                elif roll < 0.06:
                    m.update_session_state(sid, SessionState.PAUSED)
                    ops["update_session_state"] += 1
                elif roll < 0.07:
                    m.destroy_session(sid)  # the task finished
                    ops["destroy_session"] += 1
                    live.remove(sid)
                elif roll < 0.08:
                    live.remove(sid)  # abandoned (a crashed client): it expires
            except (TokenBudgetExceeded, TimeBudgetExceeded):
                m.destroy_session(sid)  # out of budget: the task ends
                ops["destroy_session"] += 1
                live.remove(sid)
            except (SessionExpired, SessionNotFound, InvalidSessionState):
                live.remove(sid)  # the janitor reaps it
            except (MaxExtensionsReached, MaxSnapshotsReached, RecursionDepthExceeded):
                ops["refused"] += 1

    def model_call(self, sid: Any, depth: int = 0) -> None:
        """One LLM-bridge request: validate the bearer token, then spend."""
        m, ops, rng = self.manager, self.ops, self.rng
        ok = m.is_session_valid(sid)
        ops["is_session_valid"] += 1
        if not ok:
            raise SessionExpired(sid)
        with m.recursion(sid):
            ops["recursion"] += 1
            m.charge_tokens(sid, rng.randrange(10, 400))
            ops["charge_tokens"] += 1
            m.charge_time(sid, rng.randrange(1, 40))
            ops["charge_time"] += 1
            m.set_context_variable(sid, "last_call", str(depth))
            ops["set_context_variable"] += 1
            if depth < 2 and rng.random() < 0.3:
                self.model_call(sid, depth + 1)  # a sub-call recurses
        m.check_budget(sid)
        ops["check_budget"] += 1
        m.get_assigned_vm(sid)
        ops["get_assigned_vm"] += 1


def run(duration: float, threads: int, sessions: int, core: str) -> int:
    module, core_name = pick_core(core)
    manager = module.SessionManager(demo_config())
    stop = threading.Event()
    per_thread = max(1, sessions // threads)
    workers = [Worker(manager, i, per_thread, stop) for i in range(threads)]
    janitor_ops: Counter[str] = Counter()

    def janitor() -> None:
        while not stop.wait(0.05):
            manager.cleanup_expired_sessions()
            janitor_ops["cleanup_expired_sessions"] += 1

    reaper = threading.Thread(target=janitor, name="janitor", daemon=True)
    started = time.perf_counter()
    for w in workers:
        w.start()
    reaper.start()
    time.sleep(duration)
    stop.set()
    for t in [*workers, reaper]:
        t.join(timeout=30)
        if t.is_alive():
            print(f"error: thread {t.name} did not stop", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    for w in workers:
        if w.error is not None:
            raise w.error

    ops: Counter[str] = Counter(janitor_ops)
    for w in workers:
        ops.update(w.ops)
    stats = manager.get_stats()
    infos = manager.list_sessions()
    with_vm = sum(1 for i in infos if i.vm_instance_id is not None)

    print(f"rlm_fast main job: core={core_name}, threads={threads}, "
          f"sessions={per_thread * threads}, duration={elapsed:.2f}s")
    print(f"{'operation':<28}{'count':>10}{'ops/s':>14}")
    for name, count in sorted(ops.items()):
        if name == "refused":
            continue
        print(f"{name:<28}{count:>10}{count / elapsed:>14,.0f}")
    total = sum(c for n, c in ops.items() if n != "refused")
    print(f"{'all operations':<28}{total:>10}{total / elapsed:>14,.0f}")
    print(f"refused by a limit (extensions, snapshots, depth): {ops['refused']}")
    print(
        f"stats: created={stats.total_sessions_created} "
        f"destroyed={stats.total_sessions_destroyed} "
        f"expired={stats.total_sessions_expired} active={stats.active_sessions} "
        f"with_vm={stats.sessions_with_vm}"
    )
    balanced = (
        stats.total_sessions_created
        == stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
        and stats.active_sessions == len(manager) == len(infos)
        and stats.sessions_with_vm == with_vm
    )
    print("balanced: created == destroyed + expired + active" if balanced
          else "NOT BALANCED")
    return 0 if balanced else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_fast",
        description="Run a simulated RLM orchestrator on the session table.",
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument(
        "--sessions", type=int, default=400, help="live sessions kept busy (default 400)"
    )
    parser.add_argument(
        "--core", choices=["auto", "cython", "python"], default="auto",
        help="session core (default: the one `import rlm_fast` picked)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.threads < 1 or args.sessions < 1:
        parser.error("--duration, --threads and --sessions must be positive")
    return run(args.duration, args.threads, args.sessions, args.core)
