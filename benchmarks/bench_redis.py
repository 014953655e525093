"""Redis throughput beside the in-process table (rlm_fast._bench_redis).

    python benchmarks/bench_redis.py [--redis redis://127.0.0.1:PORT]
"""

import sys

from rlm_fast._bench_redis import main

sys.exit(main())
