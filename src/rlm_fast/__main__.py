"""`python -m rlm_fast`: the main job (a simulated orchestrator);
`python -m rlm_fast bench`: the per-operation compare table (`--redis [URL]`:
the Redis managers, sync and asyncio, served by `_bench_redis`);
`python -m rlm_fast bridge`: the LLM bridge (`rlm_fast.bridge`)."""

import sys

command, args = sys.argv[1:2], sys.argv[2:]
if command == ["bench"]:
    if any(a == "--redis" or a.startswith("--redis=") for a in args):
        from ._bench_redis import main as bench_redis

        sys.exit(bench_redis(args))
    from ._bench import main as bench

    sys.exit(bench(args))
if command == ["bridge"]:
    from .bridge import main as bridge

    sys.exit(bridge(args))

from ._demo import main

sys.exit(main())
