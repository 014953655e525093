"""Where each core registers its types, so the shared code finds them by
identity, never by matching names (STYLE: registration over string
matching). Both cores can be loaded in one process (the test suite does, and
a pickle made with one core may be loaded under the other): a `SessionId` of
either is accepted wherever an id is, and results of either compare equal.

`activate` records the core that `import rlm_fast` selected: pickles of ids
and results name `rlm_fast._restore_session_id` / `rlm_fast._restore_result`
(the public path, STYLE habit 11) and load as that core's classes.
This module imports nothing of rlm_fast.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, SupportsInt, cast

_SESSION_ID_TYPES: dict[type, None] = {}  # an ordered set
_RESULT_KINDS: dict[type, str] = {}
_ACTIVE: list[ModuleType] = []  # the selected core module, once known


def register_session_id(cls: type) -> None:
    """A core's SessionId class: accepted as an id by every core."""
    _SESSION_ID_TYPES[cls] = None


def register_results(*, info: type, budget: type, stats: type) -> None:
    """A core's result classes, told apart by `result_kind`."""
    _RESULT_KINDS[info] = "SessionInfo"
    _RESULT_KINDS[budget] = "BudgetStatus"
    _RESULT_KINDS[stats] = "SessionStats"


def foreign_session_id(value: object) -> int | None:
    """The 128-bit value of a registered SessionId (either core's), else None."""
    if type(value) in _SESSION_ID_TYPES:
        return int(cast(SupportsInt, value))
    return None


def result_kind(value: object) -> str | None:
    """"SessionInfo", "BudgetStatus" or "SessionStats" for either core's
    result class, else None."""
    return _RESULT_KINDS.get(type(value))


def activate(core: ModuleType) -> None:
    """Record the session core that `import rlm_fast` selected."""
    _ACTIVE[:] = [core]


def restore_session_id(raw: bytes) -> Any:
    # Pickles of either core's SessionId name this function (as
    # rlm_fast._restore_session_id): they load as the active core's class.
    return _ACTIVE[0].SessionId.from_bytes(raw)


def restore_result(kind: str, fields: tuple[Any, ...]) -> Any:
    # Pickles of either core's SessionInfo/BudgetStatus/SessionStats name
    # this function (as rlm_fast._restore_result).
    if kind not in ("SessionInfo", "BudgetStatus", "SessionStats"):
        raise ValueError(f"not an rlm_fast result kind: {kind!r}")
    return getattr(_ACTIVE[0], kind)(*fields)


def reduce_result(value: Any, kind: str) -> tuple[Any, ...]:
    return (restore_result, (kind, value._astuple()))


restore_session_id.__module__ = restore_result.__module__ = "rlm_fast"
restore_session_id.__qualname__ = restore_session_id.__name__ = "_restore_session_id"
restore_result.__qualname__ = restore_result.__name__ = "_restore_result"
