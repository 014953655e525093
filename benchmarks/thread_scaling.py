"""Thread scaling of the compiled core, for a free-threaded CPython on a
machine with many cores (issue 14; SPEC 11's tree targets).

    python benchmarks/thread_scaling.py [--threads 1,2,4,8,16] [--seconds 1]
                                        [--repeat 3]

For each layout (every thread on a root of its own, on a child of one
shared root, on a child of a root of its own) and each operation
(`is_session_valid`, `charge_tokens`), it runs 1, 2, 4, 8 and 16 threads,
each count in a fresh interpreter, `--repeat` times, and prints the median
calls per second summed over the threads and the ratio to one thread.
Roots are drawn into distinct lock stripes while there are free ones (16),
so the figures are the table's and not the luck of the draw
(`rlm_fast._bench.thread_scaling`). On a build with the GIL the ratios
stay near 1x: the script says so when it starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from rlm_fast._bench import SCALING_LAYOUTS, SCALING_OPS, gil_enabled, in_subprocess


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2,4,8,16",
                   help="thread counts, comma-separated (default 1,2,4,8,16)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--repeat", type=int, default=3, help="runs per point; the median is shown")
    args = p.parse_args(argv)
    counts = sorted({int(t) for t in args.threads.split(",")})
    if not counts or counts[0] < 1 or args.repeat < 1 or args.seconds <= 0:
        p.error("thread counts >= 1, --repeat >= 1 and --seconds > 0")
    if 1 not in counts:
        counts.insert(0, 1)  # the baseline of every ratio
    print(f"{sys.version.split()[0]} on {os.cpu_count()} CPUs; GIL "
          f"{'enabled: expect ratios near 1x' if gil_enabled() else 'disabled'}")
    for layout in SCALING_LAYOUTS:
        for op in SCALING_OPS:
            base = None
            cells = []
            for n in counts:
                runs = [
                    in_subprocess(f"thread_scaling({op!r}, {n}, {layout!r}, {args.seconds!r})")
                    for _ in range(args.repeat)
                ]
                rate = statistics.median(runs)
                base = rate if n == 1 else base
                assert base is not None
                cells.append(f"{n:>2}: {rate / 1e6:7.2f}M/s {rate / base:5.2f}x")
            print(f"{layout:<28} {op:<17} " + "  ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
