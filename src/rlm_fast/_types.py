"""Result types and argument checks shared by both cores.

`SessionState`, `BudgetStatus`, `SessionInfo` and `SessionStats` are defined
once, here, and returned by the compiled core and the pure-Python twin alike.
The `check_*` helpers are the single definition of SPEC section 7 (bad input)
for values other than session ids; both cores call them before taking a lock.
"""

from __future__ import annotations

import datetime as _dt
import enum
from types import MappingProxyType
from typing import Any, Mapping, SupportsInt, cast

from .config import (
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
)
from .errors import show_int

__all__ = [
    "SessionState",
    "BudgetStatus",
    "SessionInfo",
    "SessionStats",
]

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

# Messages both cores raise with (one text, one place).
MSG_CREATE_OVERFLOW = "session expiry would pass the largest representable time"
MSG_EXTEND_OVERFLOW = "extension would pass the largest representable time"
MSG_TOKENS_OVERFLOW = "charge would take tokens_used past 2**64-1"
MSG_TIME_OVERFLOW = "charge would take time_used_ms past 2**64-1"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# --------------------------------------------------------------------------
# argument checks (SPEC 7 and 10)
# --------------------------------------------------------------------------


def foreign_session_id(value: object) -> int | None:
    """The value of the *other* core's SessionId (both cores can be loaded in
    one process, e.g. by the test suite or a pickle), else None."""
    cls = type(value)
    if cls.__name__ == "SessionId" and cls.__module__ in ("rlm_fast", "rlm_fast._core_c"):
        return int(cast(SupportsInt, value))
    return None


def result_kind(value: object) -> str | None:
    """"SessionInfo", "BudgetStatus" or "SessionStats" for either core's
    result class (the compiled core has its own, C-backed), else None."""
    cls = type(value)
    if cls.__module__ in ("rlm_fast", "rlm_fast._core_c") and cls.__name__ in (
        "SessionInfo",
        "BudgetStatus",
        "SessionStats",
    ):
        return cls.__name__
    return None


def reduce_result(value: Any, kind: str) -> tuple[Any, ...]:
    # Pickles name rlm_fast._restore_result, so one made with either core
    # loads with the other.
    import rlm_fast

    return (rlm_fast._restore_result, (kind, value._astuple()))


def session_id_type_error(value: object) -> TypeError:
    return TypeError(
        f"session id must be a SessionId or str, not {type(value).__name__}"
    )


def check_u64(value: object, name: str) -> int:
    """An int in 0 .. 2**64-1 (bool refused), else TypeError/ValueError."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        value = int(value)  # an int subclass: keep only its value
    if value < 0 or value > U64_MAX:
        raise ValueError(f"{name} must be in 0..2**64-1, got {show_int(value)}")
    return value


def check_str(value: object, name: str, *, nonempty: bool = False) -> str:
    """An exact `str` that encodes as UTF-8 (a subclass is copied)."""
    if type(value) is not str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        value = str.__str__(value)  # drop the subclass: no user code later
    if nonempty and not value:
        raise ValueError(f"{name} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 (lone surrogate)") from None
    return value


def check_clock_value(value: object) -> int:
    """What a user clock returned: int nanoseconds that fit in int64."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"clock must return int nanoseconds, not {type(value).__name__}"
            )
        value = int(value)
    if value < I64_MIN or value > I64_MAX:
        raise ValueError(f"clock returned {show_int(value)}, outside the int64 range")
    return value


def check_restore(infos: object, counters: object) -> list["SessionInfo"]:
    """The rows a core may restore (dump/load): SessionInfo objects with
    distinct ids and distinct VM ids, and three u64 counters."""
    if not isinstance(infos, (list, tuple)):
        raise TypeError("sessions must be a list of SessionInfo")
    rows: list[SessionInfo] = []
    ids: set[str] = set()
    vms: set[str] = set()
    for info in infos:
        if result_kind(info) != "SessionInfo":
            raise TypeError(f"a session row must be a SessionInfo, not {type(info).__name__}")
        sid = str(info.id)
        if sid in ids:
            raise ValueError(f"session {sid} appears twice")
        ids.add(sid)
        if info.vm_instance_id is not None:
            if not info.vm_instance_id:
                raise ValueError(f"session {sid} has an empty vm_instance_id")
            if info.vm_instance_id in vms:
                raise ValueError(f"VM {info.vm_instance_id!r} is held by two sessions")
            vms.add(info.vm_instance_id)
        rows.append(info)
    if not isinstance(counters, (list, tuple)) or len(counters) != 3:
        raise TypeError("counters must be (created, destroyed, expired)")
    created, destroyed, expired = (
        check_u64(c, n) for c, n in zip(counters, ("created", "destroyed", "expired"))
    )
    if created != destroyed + expired + len(rows):
        raise ValueError(
            "counters do not balance: created != destroyed + expired + sessions"
        )
    return rows


# --------------------------------------------------------------------------
# the bulk API's numpy side (numpy is optional: only these need it)
# --------------------------------------------------------------------------

# One row of `budget_table()`; the compiled core writes the same packed
# layout (BudgetRow in _core_c.h). `state` is the index in STATES.
BUDGET_TABLE_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "V16"),  # SessionId.bytes, big-endian (V: numpy strips trailing NULs of S)
    ("state", "u1"),
    ("expires_at_ns", "i8"),
    ("tokens_used", "u8"),
    ("token_budget", "u8"),
    ("time_used_ms", "u8"),
    ("time_budget_ms", "u8"),
    ("recursion_depth", "u8"),
    ("max_recursion_depth", "u8"),
    ("extension_count", "u8"),
    ("snapshot_count", "u8"),
    ("has_vm", "?"),
)


def numpy() -> Any:
    """numpy, or an ImportError that says only the bulk API needs it."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImportError(
            "the bulk API (validate_many, budget_table) needs numpy: "
            "pip install 'rlm_fast[numpy]'"
        ) from exc
    return np


def budget_table_dtype() -> Any:
    return numpy().dtype(list(BUDGET_TABLE_FIELDS))


def raw_ids(ids: object) -> bytes | None:
    """16-byte ids packed in a numpy array (e.g. budget_table()["id"]), as
    one bytes object; None for any other kind of sequence."""
    np = __import__("sys").modules.get("numpy")
    if np is None or not isinstance(ids, np.ndarray):
        return None
    if ids.dtype.kind not in "SV" or ids.dtype.itemsize != 16 or ids.ndim != 1:
        raise TypeError("an array of ids must be one-dimensional with 16-byte items")
    return bytes(np.ascontiguousarray(ids).tobytes())


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Aware UTC datetime, nanoseconds truncated (floored) to microseconds."""
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


# --------------------------------------------------------------------------
# SessionState
# --------------------------------------------------------------------------


class SessionState(enum.Enum):
    """Lifecycle state of a session; values are the crate's serde names."""

    INITIALIZING = "Initializing"
    READY = "Ready"
    EXECUTING = "Executing"
    PAUSED = "Paused"
    TERMINATED = "Terminated"
    EXPIRED = "Expired"


SessionState.__module__ = "rlm_fast"

# Index order is the compiled core's state code; keep in step with _core_c.
STATES: tuple[SessionState, ...] = tuple(SessionState)
STATE_CODE: dict[SessionState, int] = {s: i for i, s in enumerate(STATES)}
_STATE_BY_VALUE: dict[str, SessionState] = {s.value: s for s in STATES}


def coerce_state(value: object) -> SessionState:
    """A `SessionState` from a member or its (case-sensitive) value string."""
    if isinstance(value, SessionState):
        return value
    if isinstance(value, str):
        try:
            return _STATE_BY_VALUE[value]
        except KeyError:
            shown = repr(value[:64]) + ("…" if len(value) > 64 else "")
            raise ValueError(
                f"{shown} is not a SessionState value "
                f"(one of {', '.join(_STATE_BY_VALUE)})"
            ) from None
    raise TypeError(
        f"state must be a SessionState or its value, not {type(value).__name__}"
    )


# --------------------------------------------------------------------------
# BudgetStatus
# --------------------------------------------------------------------------

_BUDGET_FIELDS = (
    "token_budget",
    "tokens_used",
    "time_budget_ms",
    "time_used_ms",
    "max_recursion_depth",
    "current_recursion_depth",
)


class BudgetStatus:
    """Immutable record of a session's budgets (the crate's `BudgetStatus`)."""

    __slots__ = _BUDGET_FIELDS

    token_budget: int
    tokens_used: int
    time_budget_ms: int
    time_used_ms: int
    max_recursion_depth: int
    current_recursion_depth: int

    def __init__(
        self,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        tokens_used: int = 0,
        time_budget_ms: int = DEFAULT_TIME_BUDGET_MS,
        time_used_ms: int = 0,
        max_recursion_depth: int = DEFAULT_MAX_RECURSION_DEPTH,
        current_recursion_depth: int = 0,
    ) -> None:
        values = (
            token_budget,
            tokens_used,
            time_budget_ms,
            time_used_ms,
            max_recursion_depth,
            current_recursion_depth,
        )
        for name, value in zip(_BUDGET_FIELDS, values):
            object.__setattr__(self, name, check_u64(value, name))

    @classmethod
    def _trusted(
        cls,
        token_budget: int,
        tokens_used: int,
        time_budget_ms: int,
        time_used_ms: int,
        max_recursion_depth: int,
        current_recursion_depth: int,
    ) -> "BudgetStatus":
        # The cores build results from values they already checked.
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "token_budget", token_budget)
        setattr_(self, "tokens_used", tokens_used)
        setattr_(self, "time_budget_ms", time_budget_ms)
        setattr_(self, "time_used_ms", time_used_ms)
        setattr_(self, "max_recursion_depth", max_recursion_depth)
        setattr_(self, "current_recursion_depth", current_recursion_depth)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BudgetStatus is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BudgetStatus is immutable (cannot delete {name!r})")

    def _astuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in _BUDGET_FIELDS)

    def __eq__(self, other: object) -> bool:
        if result_kind(other) != "BudgetStatus":
            return NotImplemented
        return self._astuple() == cast(BudgetStatus, other)._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        return budget_repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_result(self, "BudgetStatus")

    def replace(self, **changes: int) -> "BudgetStatus":
        """A copy with some fields changed (like `dataclasses.replace`)."""
        return cast(BudgetStatus, budget_replace(self, **changes))

    def tokens_exhausted(self) -> bool:
        return self.tokens_used >= self.token_budget

    def time_exhausted(self) -> bool:
        return self.time_used_ms >= self.time_budget_ms

    def depth_exhausted(self) -> bool:
        return self.current_recursion_depth > self.max_recursion_depth

    def is_exhausted(self) -> bool:
        return self.tokens_exhausted() or self.time_exhausted() or self.depth_exhausted()

    def tokens_remaining(self) -> int:
        return max(0, self.token_budget - self.tokens_used)

    def time_remaining_ms(self) -> int:
        return max(0, self.time_budget_ms - self.time_used_ms)

    # JSON (SPEC 8): the crate's serde form; the code lives in _serde.
    def to_dict(self) -> dict[str, Any]:
        from ._serde import budget_to_dict

        return budget_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        from ._serde import budget_to_dict, to_json

        return to_json(budget_to_dict(self), indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BudgetStatus":
        from ._serde import budget_from_dict

        return budget_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "BudgetStatus":
        from ._serde import budget_from_dict, from_json

        return from_json(text, budget_from_dict)


BudgetStatus.__module__ = "rlm_fast"


def budget_repr(budget: Any) -> str:
    inner = ", ".join(f"{n}={getattr(budget, n)}" for n in _BUDGET_FIELDS)
    return f"BudgetStatus({inner})"


def budget_replace(budget: Any, **changes: int) -> Any:
    values = {n: getattr(budget, n) for n in _BUDGET_FIELDS}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"unknown BudgetStatus field(s): {sorted(unknown)}")
    values.update(changes)
    return type(budget)(**values)


# --------------------------------------------------------------------------
# SessionInfo
# --------------------------------------------------------------------------

_INFO_FIELDS = (
    "id",
    "state",
    "created_at_ns",
    "expires_at_ns",
    "extension_count",
    "recursion_depth",
    "budget_status",
    "vm_instance_id",
    "context_variables",
    "current_snapshot_id",
    "snapshot_count",
)


class SessionInfo:
    """Immutable snapshot of one session (the crate's `SessionInfo`).

    A later change to the session does not change it. `created_at` and
    `expires_at` are aware UTC datetimes (microsecond precision); the exact
    values are `created_at_ns` and `expires_at_ns`.
    """

    __slots__ = (
        "id",
        "state",
        "created_at_ns",
        "expires_at_ns",
        "extension_count",
        "recursion_depth",
        "budget_status",
        "vm_instance_id",
        "_context",
        "current_snapshot_id",
        "snapshot_count",
    )

    id: Any  # the active core's SessionId
    state: SessionState
    created_at_ns: int
    expires_at_ns: int
    extension_count: int
    recursion_depth: int
    budget_status: BudgetStatus
    vm_instance_id: str | None
    _context: dict[str, str]
    current_snapshot_id: str | None
    snapshot_count: int

    def __init__(
        self,
        id: Any,
        state: SessionState | str,
        created_at_ns: int,
        expires_at_ns: int,
        extension_count: int = 0,
        recursion_depth: int = 0,
        budget_status: BudgetStatus | None = None,
        vm_instance_id: str | None = None,
        context_variables: Mapping[str, str] | None = None,
        current_snapshot_id: str | None = None,
        snapshot_count: int = 0,
    ) -> None:
        from ._core_py import _key
        from ._core_py import SessionId as _SessionId

        id = _SessionId._of(_key(id))  # a SessionId of either core, or its string
        state = coerce_state(state)
        for name, value in (("created_at_ns", created_at_ns), ("expires_at_ns", expires_at_ns)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if not I64_MIN <= value <= I64_MAX:
                raise ValueError(f"{name} must fit in a signed 64-bit int")
        if budget_status is None:
            budget_status = BudgetStatus()
        elif result_kind(budget_status) != "BudgetStatus":
            raise TypeError("budget_status must be a BudgetStatus")
        depth = check_u64(recursion_depth, "recursion_depth")
        if depth != budget_status.current_recursion_depth:
            # Depth has one source of truth (SPEC 4.8).
            budget_status = budget_status.replace(current_recursion_depth=depth)
        context: dict[str, str] = {}
        for key, value in sorted((context_variables or {}).items()):  # type: ignore[assignment]  # `value` was an int above
            context[check_str(key, "context key")] = check_str(value, "context value")
        setattr_ = object.__setattr__
        setattr_(self, "id", id)
        setattr_(self, "state", state)
        setattr_(self, "created_at_ns", int(created_at_ns))
        setattr_(self, "expires_at_ns", int(expires_at_ns))
        setattr_(self, "extension_count", check_u64(extension_count, "extension_count"))
        setattr_(self, "recursion_depth", depth)
        setattr_(self, "budget_status", budget_status)
        setattr_(
            self,
            "vm_instance_id",
            None if vm_instance_id is None else check_str(vm_instance_id, "vm_instance_id"),
        )
        setattr_(self, "_context", context)
        setattr_(
            self,
            "current_snapshot_id",
            None
            if current_snapshot_id is None
            else check_str(current_snapshot_id, "current_snapshot_id"),
        )
        setattr_(self, "snapshot_count", check_u64(snapshot_count, "snapshot_count"))

    @classmethod
    def _trusted(
        cls,
        id: Any,
        state: SessionState,
        created_at_ns: int,
        expires_at_ns: int,
        extension_count: int,
        recursion_depth: int,
        budget_status: BudgetStatus,
        vm_instance_id: str | None,
        context: dict[str, str],
        current_snapshot_id: str | None,
        snapshot_count: int,
    ) -> "SessionInfo":
        # Built by a core from its own data: `context` is a fresh dict,
        # already sorted by key, that nobody else holds.
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "id", id)
        setattr_(self, "state", state)
        setattr_(self, "created_at_ns", created_at_ns)
        setattr_(self, "expires_at_ns", expires_at_ns)
        setattr_(self, "extension_count", extension_count)
        setattr_(self, "recursion_depth", recursion_depth)
        setattr_(self, "budget_status", budget_status)
        setattr_(self, "vm_instance_id", vm_instance_id)
        setattr_(self, "_context", context)
        setattr_(self, "current_snapshot_id", current_snapshot_id)
        setattr_(self, "snapshot_count", snapshot_count)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SessionInfo is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SessionInfo is immutable (cannot delete {name!r})")

    @property
    def context_variables(self) -> Mapping[str, str]:
        """Read-only view of the context variables, sorted by key."""
        return MappingProxyType(self._context)

    @property
    def created_at(self) -> _dt.datetime:
        return ns_to_datetime(self.created_at_ns)

    @property
    def expires_at(self) -> _dt.datetime:
        return ns_to_datetime(self.expires_at_ns)

    def is_expired(self, now_ns: int | None = None) -> bool:
        """Expired when now > expires_at (real clock unless `now_ns` given)."""
        if now_ns is None:
            import time

            now_ns = time.time_ns()
        elif isinstance(now_ns, bool) or not isinstance(now_ns, int):
            raise TypeError("now_ns must be an int")
        return now_ns > self.expires_at_ns

    def can_extend(self, max_extensions: int) -> bool:
        return self.extension_count < check_u64(max_extensions, "max_extensions")

    # JSON (SPEC 8): the crate's serde form; the code lives in _serde.
    def to_dict(self) -> dict[str, Any]:
        from ._serde import info_to_dict

        return info_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        from ._serde import info_to_json

        return info_to_json(self, indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionInfo":
        from ._serde import info_from_dict

        return info_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "SessionInfo":
        from ._serde import from_json, info_from_dict

        return from_json(text, info_from_dict)

    def _astuple(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.state,
            self.created_at_ns,
            self.expires_at_ns,
            self.extension_count,
            self.recursion_depth,
            self.budget_status,
            self.vm_instance_id,
            self._context,
            self.current_snapshot_id,
            self.snapshot_count,
        )

    def __eq__(self, other: object) -> bool:
        if result_kind(other) != "SessionInfo":
            return NotImplemented
        return self._astuple() == cast(SessionInfo, other)._astuple()

    def __hash__(self) -> int:
        return info_hash(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_result(self, "SessionInfo")

    def __repr__(self) -> str:
        return info_repr(self)


SessionInfo.__module__ = "rlm_fast"


def info_hash(info: Any) -> int:
    t = info._astuple()
    return hash(t[:8] + (tuple(t[8].items()),) + t[9:])


def info_repr(info: Any) -> str:
    return (
        f"SessionInfo(id={info.id!r}, state={info.state}, "
        f"created_at={info.created_at.isoformat()}, "
        f"expires_at={info.expires_at.isoformat()}, "
        f"extension_count={info.extension_count}, "
        f"recursion_depth={info.recursion_depth}, "
        f"budget_status={info.budget_status!r}, "
        f"vm_instance_id={info.vm_instance_id!r}, "
        f"context_variables={dict(info.context_variables)!r}, "
        f"current_snapshot_id={info.current_snapshot_id!r}, "
        f"snapshot_count={info.snapshot_count})"
    )


# --------------------------------------------------------------------------
# SessionStats
# --------------------------------------------------------------------------


class SessionStats:
    """Counters of a manager (the crate's `SessionStats`, plus two).

    At rest: `total_sessions_created == total_sessions_destroyed +
    total_sessions_expired + active_sessions`.
    """

    __slots__ = (
        "total_sessions_created",
        "active_sessions",
        "sessions_with_vm",
        "total_sessions_destroyed",
        "total_sessions_expired",
    )

    total_sessions_created: int
    active_sessions: int
    sessions_with_vm: int
    total_sessions_destroyed: int
    total_sessions_expired: int

    def __init__(
        self,
        total_sessions_created: int = 0,
        active_sessions: int = 0,
        sessions_with_vm: int = 0,
        total_sessions_destroyed: int = 0,
        total_sessions_expired: int = 0,
    ) -> None:
        for name, value in (
            ("total_sessions_created", total_sessions_created),
            ("active_sessions", active_sessions),
            ("sessions_with_vm", sessions_with_vm),
            ("total_sessions_destroyed", total_sessions_destroyed),
            ("total_sessions_expired", total_sessions_expired),
        ):
            object.__setattr__(self, name, check_u64(value, name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SessionStats is immutable (cannot set {name!r})")

    def _astuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if result_kind(other) != "SessionStats":
            return NotImplemented
        return self._astuple() == cast(SessionStats, other)._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_result(self, "SessionStats")

    def __repr__(self) -> str:
        return stats_repr(self)

    # JSON: the crate's three fields, then rlm_fast's two; code in _serde.
    def to_dict(self) -> dict[str, Any]:
        from ._serde import stats_to_dict

        return stats_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        from ._serde import stats_to_dict, to_json

        return to_json(stats_to_dict(self), indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionStats":
        from ._serde import stats_from_dict

        return stats_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "SessionStats":
        from ._serde import from_json, stats_from_dict

        return from_json(text, stats_from_dict)


SessionStats.__module__ = "rlm_fast"

STATS_FIELDS = SessionStats.__slots__


def stats_repr(stats: Any) -> str:
    inner = ", ".join(f"{n}={getattr(stats, n)}" for n in STATS_FIELDS)
    return f"SessionStats({inner})"
