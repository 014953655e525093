"""Time `SessionManager.dump` and `SessionManager.load` of 100,000 sessions
for each core and print the figures (a plain script, not a pytest test).

    PYTHONPATH=src python benchmarks/bench_dump_load.py [--sessions N] [--repeat R]

Every session has a context variable; every other one a VM and a snapshot,
so the file holds what a busy orchestrator's table would. The best of R runs
is reported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from types import ModuleType
from typing import Any

from rlm_fast import RlmConfig, _session_py

try:
    _session_c: ModuleType | None = importlib.import_module("rlm_fast._session_c")
except ImportError:  # not built
    _session_c = None


def build(core: ModuleType, n: int) -> Any:
    manager = core.SessionManager(RlmConfig(session_duration_secs=86_400))
    for i in range(n):
        sid = manager.create_session().id
        manager.set_context_variable(sid, "task", f"summarise chunk {i}")
        if i % 2 == 0:
            manager.assign_vm(sid, f"vm-{i:06d}")
            manager.record_snapshot_created(sid, f"snap-{i}", True)
            manager.charge_tokens(sid, i % 5000)
    return manager


def measure(core: ModuleType, n: int, repeat: int, path: str) -> tuple[float, float]:
    """Best-of-`repeat` seconds to dump and to load `n` sessions."""
    manager = build(core, n)
    dump_s = load_s = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        manager.dump(path)
        dump_s = min(dump_s, time.perf_counter() - start)
        start = time.perf_counter()
        loaded = core.SessionManager.load(path)
        load_s = min(load_s, time.perf_counter() - start)
        assert loaded.get_stats() == manager.get_stats()
    return dump_s, load_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cores = [("python", _session_py)] + ([("cython", _session_c)] if _session_c is not None else [])
    print(f"{args.sessions:,} sessions, best of {args.repeat}")
    print(f"{'core':<8} {'dump s':>8} {'load s':>8} {'file MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sessions.jsonl")
        for name, core in cores:
            dump_s, load_s = measure(core, args.sessions, args.repeat, path)
            size_mb = os.path.getsize(path) / 1e6
            print(f"{name:<8} {dump_s:>8.3f} {load_s:>8.3f} {size_mb:>8.1f}")


if __name__ == "__main__":
    main()
