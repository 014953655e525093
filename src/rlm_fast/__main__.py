"""`python -m rlm_fast`: the main job (a simulated orchestrator)."""

import sys

from ._demo import main

sys.exit(main())
