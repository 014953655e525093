"""`python -m rlm_fast`: the main job (a simulated orchestrator);
`python -m rlm_fast bench`: the per-operation compare table."""

import sys

if sys.argv[1:2] == ["bench"]:
    from ._bench import main

    sys.exit(main(sys.argv[2:]))

from ._demo import main

sys.exit(main())
