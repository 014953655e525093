"""The native Rust crate beside rlm_fast, in one run: Rust ns / rlm_fast ns.

    ../shared/rust-anchor/setup.sh /tmp/anchor          # builds the crate's bench (~30 s)
    python benchmarks/rust_anchor.py /tmp/anchor/crate/target/release/bench

Runs the anchor's bench (10,000 live sessions, every other one with a VM and
a context variable; median of 5 x 1M calls), then the same rows on the
compiled core with the same workload (rlm_fast._bench.workload; median of 5
runs of --calls calls), and prints both with their ratio (above 1: rlm_fast
is faster), and the best ratio a Python call could reach on each row (the
Rust time over as many calls of an empty compiled method). Then the rows at
scale: create_session into a fresh manager, cleanup of 1M sessions with 10%
due (median of 3 fresh interpreters), and with --memory the RSS per session
over 1M sessions. Rows the anchor does not print (it may stop early on a
slow machine) are left out.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import timeit

from rlm_fast import _session_c
from rlm_fast._bench import in_subprocess, workload

# (the anchor's row, our row, our statement on the workload's names, as
# _bench.OPS). The anchor has no string-id path: its is_session_valid row is
# the base for both of ours, as in the table.
ROWS: list[tuple[str, str, str]] = [
    ("is_session_valid [full]", "is_session_valid (SessionId)", "m.is_session_valid(sid)"),
    ("is_session_valid [full]", "is_session_valid (str id)", "m.is_session_valid(sid_s)"),
    ("validate_session [full]", "validate_session", "m.validate_session(sid)"),
    ("get_session [full]", "get_session", "m.get_session(sid)"),
    (
        "increment+decrement_recursion_depth pair [full]",
        "increment + decrement depth",
        "m.increment_recursion_depth(sid); m.decrement_recursion_depth(sid)",
    ),
    ("get_assigned_vm [full]", "get_assigned_vm", "m.get_assigned_vm(sid)"),
    (
        'set_context_variable("k","v") overwrite [full]',
        "set_context_variable (overwrite)",
        "m.set_context_variable(sid, 'k', 'v')",
    ),
    (
        "create_session + destroy_session pair (10k live)",
        "create + destroy (10k live)",
        "m.destroy_session(m.create_session().id)",
    ),
    (
        "cleanup_expired_sessions (10k live, none due) per call",
        "cleanup, 10k live, none due",
        "m.cleanup_expired_sessions()",
    ),
]

LINE = re.compile(r"^(?P<name>.+?)\s+median\s+(?P<value>[\d.]+) (?P<unit>ns|ms)")


def rust_rows(binary: str) -> dict[str, float]:
    """Row name -> median ns, from the anchor bench's output."""
    done = subprocess.run([binary], capture_output=True, text=True, check=False)
    rows = {}
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        if match:
            scale = 1e6 if match["unit"] == "ms" else 1.0
            rows[match["name"].strip()] = float(match["value"]) * scale
    return rows


def ours(stmt: str, names: dict[str, object], calls: int) -> float:
    timer = timeit.Timer(stmt, globals=names)
    timer.timeit(number=max(1, calls // 10))  # warm up
    return statistics.median(timer.repeat(repeat=5, number=calls)) / calls * 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary", help="the anchor's bench binary (DIR/crate/target/release/bench)")
    p.add_argument("--calls", type=int, default=200_000, help="calls per run on our side")
    p.add_argument("--memory", action="store_true",
                   help="also RSS per session over 1M sessions (both sides)")
    args = p.parse_args()
    rust = rust_rows(args.binary)
    names = workload(_session_c, _session_c._Floor())
    # The floor: an empty compiled method taking the id, timed the same way.
    # A row of k calls cannot cost less than k floors from Python, so
    # "best" (Rust ns / k floors) is the highest ratio any Python binding
    # could reach on that row.
    floor = ours("floor.noop(sid)", names, args.calls)
    print(f"floor (empty compiled method, one call): {floor:.1f} ns")
    print(f"{'row':<36}{'Rust ns':>10}{'rlm_fast ns':>13}{'ratio':>8}{'best':>8}")
    for rust_name, label, stmt in ROWS:
        base = rust.get(rust_name)
        if base is None:
            continue
        calls = args.calls // 20 if "cleanup" in stmt else args.calls
        mine = ours(stmt, names, calls)
        best = base / (floor * stmt.count("m."))
        print(f"{label:<36}{base:10.1f}{mine:13.1f}{base / mine:7.2f}x{best:7.2f}x")
    # At scale, each in a fresh interpreter (as the anchor runs them).
    base = rust.get("create_session, 100k into fresh manager")
    if base is not None:
        mine = in_subprocess("create_fresh('cython', 100_000)")
        print(f"{'create, 100k into a fresh manager':<36}{base:10.1f}{mine:13.1f}"
              f"{base / mine:7.2f}x")
    base = rust.get("cleanup_expired_sessions, 1M live, 10% (100k) expired")
    if base is not None:
        got = [in_subprocess("cleanup_at_scale('cython', 1_000_000, 0.1, False)")["seconds"]
               for _ in range(3)]
        mine = statistics.median(got) * 1e9
        print(f"{'cleanup, 1M live, 10% due (ms)':<36}{base / 1e6:10.1f}{mine / 1e6:13.1f}"
              f"{base / mine:7.2f}x")
    if args.memory:
        done = subprocess.run([args.binary, "mem"], capture_output=True, text=True, check=False)
        match = re.search(r"= ([\d.]+) B/session", done.stdout)
        if match:
            rust_bytes = float(match[1])
            mine = in_subprocess("memory_per_session('cython', 1_000_000)")
            print(f"{'RSS per session at 1M (bytes)':<36}{rust_bytes:10.1f}{mine:13.1f}"
                  f"{rust_bytes / mine:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
