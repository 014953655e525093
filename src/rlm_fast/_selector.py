"""Picks the core at import: the compiled one, or the pure-Python twin.

`RLM_FAST_NO_EXTENSIONS=1` forces the twin; `RLM_FAST_REQUIRE_EXTENSIONS=1`
makes a compiled core that cannot load an ImportError instead of a fallback.
Any value other than unset, "0" or "1" is an error (SPEC 1).
"""

from __future__ import annotations

import os
from types import ModuleType


def env_flag(name: str) -> bool:
    """True for "1", False for unset or "0"; anything else is an error."""
    value = os.environ.get(name)
    if value is None or value == "0":
        return False
    if value == "1":
        return True
    raise ImportError(f"{name} must be unset, '0' or '1', not {value!r}")


def load() -> tuple[ModuleType, ModuleType, str]:
    """Return (session core module, budget core module, IMPLEMENTATION)."""
    no_ext = env_flag("RLM_FAST_NO_EXTENSIONS")
    require = env_flag("RLM_FAST_REQUIRE_EXTENSIONS")
    if no_ext and require:
        raise ImportError(
            "RLM_FAST_NO_EXTENSIONS=1 and RLM_FAST_REQUIRE_EXTENSIONS=1 contradict"
        )
    if not no_ext:
        try:
            from . import _budget_c, _session_c
        except ImportError:
            if require:
                raise
        else:
            return _session_c, _budget_c, "cython"
    from . import _budget_py, _session_py

    return _session_py, _budget_py, "python"
