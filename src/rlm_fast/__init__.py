"""rlm_fast: the session table of a Recursive Language Model orchestrator.

The API and error types of the Rust crate `terraphim_rlm` (SessionManager,
BudgetTracker), served by a compiled Cython core with a pure-Python twin of
the same behaviour; `IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _registry, _selector
from ._registry import restore_result as _restore_result
from ._registry import restore_session_id as _restore_session_id
from ._results import SessionState
from .config import (
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_MAX_SNAPSHOTS_PER_SESSION,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
    BackendSessionConfig,
    BackendType,
    KgStrictness,
    RlmConfig,
    SessionModel,
)
from .errors import *  # noqa: F403  (every RlmError variant is public)
from .errors import __all__ as _error_names

from ._version import __version__

if TYPE_CHECKING:
    # Type checkers see the twin: it is the specification (STYLE habit 2).
    from ._budget_py import BudgetTracker
    from ._session_py import SessionId, SessionManager
    from ._results import BudgetStatus, SessionInfo, SessionStats

    IMPLEMENTATION: str
else:
    _session_core, _budget_core, IMPLEMENTATION = _selector.load()
    _registry.activate(_session_core)
    SessionId = _session_core.SessionId
    SessionManager = _session_core.SessionManager
    # Each core has its own result classes (the compiled ones are C-backed);
    # they compare equal to each other and pickle through _restore_result.
    SessionInfo = _session_core.SessionInfo
    BudgetStatus = _session_core.BudgetStatus
    SessionStats = _session_core.SessionStats
    BudgetTracker = _budget_core.BudgetTracker
    del _session_core, _budget_core


def get_include() -> str:
    """The directory holding `_session_c.h` and `_session_c.pxd`, for Cython
    extensions that cimport the nogil C API (`include_dirs=[...]`)."""
    import os

    return os.path.dirname(os.path.abspath(__file__))


__all__ = [
    "IMPLEMENTATION",
    "get_include",
    "__version__",
    "SessionManager",
    "BudgetTracker",
    "SessionId",
    "SessionState",
    "SessionInfo",
    "BudgetStatus",
    "SessionStats",
    "RlmConfig",
    "KgStrictness",
    "BackendType",
    "SessionModel",
    "BackendSessionConfig",
    "DEFAULT_TOKEN_BUDGET",
    "DEFAULT_TIME_BUDGET_MS",
    "DEFAULT_MAX_RECURSION_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS_PER_SESSION",
    *_error_names,
]
