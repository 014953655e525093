"""Result classes and `SessionState`: the twin's `BudgetStatus`,
`SessionInfo` and `SessionStats` (immutable snapshots) and their JSON forms,
byte for byte the crate's serde output (SPEC 8). The compiled core has its
own C-backed classes (`_session_c.pyx`), which share the helpers here
(repr, hash, replace, dict/JSON forms) and register with `_registry`."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import time
from collections.abc import Mapping
from json.encoder import encode_basestring
from types import MappingProxyType
from typing import Any, cast

from ._checks import I64_MAX, I64_MIN, check_str, check_u32, check_u64, ns_to_datetime
from ._json import (
    _check_indent,
    _describe,
    _invalid_type,
    _object,
    _optional_string,
    _quoted,
    _string,
    _u32,
    _u64,
    _U32_FIELDS,
    format_timestamp,
    from_json,
    parse_json,
    parse_timestamp,
    to_json,
)
from ._session_id_py import SessionId, key_of
from .config import DEFAULT_MAX_RECURSION_DEPTH, DEFAULT_TIME_BUDGET_MS, DEFAULT_TOKEN_BUDGET
from ._registry import foreign_session_id, reduce_result, register_results, result_kind
from .errors import (
    InvalidSessionState,
    InvalidSessionToken,
    RecursionDepthExceeded,
    Serialization,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

__all__ = ["SessionState", "BudgetStatus", "SessionInfo", "SessionStats"]


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


# Index order is the compiled core's state code; keep in step with _session_c.
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
# the twin's immutable result classes share one base
# --------------------------------------------------------------------------


class _Immutable:
    """Refuses every attribute write and delete, and a second `__init__`
    (the compiled classes do the same): a result is a snapshot."""

    __slots__ = ()

    def _refuse_reinit(self, first_field: str) -> None:
        if hasattr(self, first_field):
            raise AttributeError(f"{type(self).__name__} is immutable")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot delete {name!r})")


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


_U32_BUDGET_FIELDS = ("max_recursion_depth", "current_recursion_depth")


class BudgetStatus(_Immutable):
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
        self._refuse_reinit("token_budget")
        for name, value in zip(_BUDGET_FIELDS, values):
            check = check_u32 if name in _U32_BUDGET_FIELDS else check_u64
            object.__setattr__(self, name, check(value, name))

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

    # JSON (SPEC 8): the crate's serde form; the code is below.
    def to_dict(self) -> dict[str, Any]:
        return budget_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return to_json(budget_to_dict(self), indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BudgetStatus":
        return budget_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "BudgetStatus":
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


class SessionInfo(_Immutable):
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
        "parent_id",
        "root_id",
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
    parent_id: Any  # None for a root (docs/trees.md)
    root_id: Any  # the root's id; a root's own id

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
        parent_id: Any = None,
        root_id: Any = None,
    ) -> None:
        self._refuse_reinit("id")
        id = SessionId._of(key_of(id))  # a SessionId of either core, or its string
        parent = None if parent_id is None else SessionId._of(key_of(parent_id))
        root = id if root_id is None else SessionId._of(key_of(root_id))
        if parent is None and root != id:
            raise ValueError("a root session (parent_id None) is its own root_id")
        if parent is not None and (parent == id or root == id):
            raise ValueError("a child session is neither its own parent nor its own root")
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
        depth = check_u32(recursion_depth, "recursion_depth")
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
        setattr_(self, "extension_count", check_u32(extension_count, "extension_count"))
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
        setattr_(self, "snapshot_count", check_u32(snapshot_count, "snapshot_count"))
        setattr_(self, "parent_id", parent)
        setattr_(self, "root_id", root)

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
        parent_id: Any = None,
        root_id: Any = None,
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
        setattr_(self, "parent_id", parent_id)
        setattr_(self, "root_id", id if root_id is None else root_id)
        return self

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
            now_ns = time.time_ns()
        elif isinstance(now_ns, bool) or not isinstance(now_ns, int):
            raise TypeError("now_ns must be an int")
        return now_ns > self.expires_at_ns

    def can_extend(self, max_extensions: int) -> bool:
        return self.extension_count < check_u64(max_extensions, "max_extensions")

    # JSON (SPEC 8): the crate's serde form; the code is below.
    def to_dict(self) -> dict[str, Any]:
        return info_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return info_to_json(self, indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionInfo":
        return info_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "SessionInfo":
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
            self.parent_id,
            self.root_id,
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
        f"snapshot_count={info.snapshot_count}"
        + (
            ""
            if info.parent_id is None
            else f", parent_id={info.parent_id!r}, root_id={info.root_id!r}"
        )
        + ")"
    )


# --------------------------------------------------------------------------
# SessionStats
# --------------------------------------------------------------------------


class SessionStats(_Immutable):
    """Counters of a manager: the crate's three, the removals, and the
    refusals (docs/lifecycle.md): how many calls raised each kind of refusal,
    plus `is_session_valid` calls that returned False for that reason.

    At rest: `total_sessions_created == total_sessions_destroyed +
    total_sessions_expired + active_sessions`.
    """

    __slots__ = (
        "total_sessions_created",
        "active_sessions",
        "sessions_with_vm",
        "total_sessions_destroyed",
        "total_sessions_expired",
        "rejected_not_found",
        "rejected_invalid_token",
        "rejected_terminated",
        "rejected_expired",
        "rejected_tokens",
        "rejected_time",
        "rejected_depth",
    )

    total_sessions_created: int
    active_sessions: int
    sessions_with_vm: int
    total_sessions_destroyed: int
    total_sessions_expired: int
    rejected_not_found: int
    rejected_invalid_token: int
    rejected_terminated: int
    rejected_expired: int
    rejected_tokens: int
    rejected_time: int
    rejected_depth: int

    def __init__(
        self,
        total_sessions_created: int = 0,
        active_sessions: int = 0,
        sessions_with_vm: int = 0,
        total_sessions_destroyed: int = 0,
        total_sessions_expired: int = 0,
        rejected_not_found: int = 0,
        rejected_invalid_token: int = 0,
        rejected_terminated: int = 0,
        rejected_expired: int = 0,
        rejected_tokens: int = 0,
        rejected_time: int = 0,
        rejected_depth: int = 0,
    ) -> None:
        self._refuse_reinit("total_sessions_created")
        values = locals()
        for name in self.__slots__:
            object.__setattr__(self, name, check_u64(values[name], name))

    @classmethod
    def _trusted(cls, *values: int) -> "SessionStats":
        # The twin builds its counters from ints it kept itself.
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        for name, value in zip(cls.__slots__, values, strict=True):
            setattr_(self, name, value)
        return self

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

    # JSON: the crate's three fields, then rlm_fast's; code below.
    def to_dict(self) -> dict[str, Any]:
        return stats_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return to_json(stats_to_dict(self), indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionStats":
        return stats_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "SessionStats":
        return from_json(text, stats_from_dict)


SessionStats.__module__ = "rlm_fast"


STATS_FIELDS = SessionStats.__slots__
# The refusal counters, in SessionStats' order, and the error each counts.
REFUSAL_FIELDS = STATS_FIELDS[5:]
REFUSAL_INDEX: dict[type, int] = {
    SessionNotFound: 0,
    InvalidSessionToken: 1,
    InvalidSessionState: 2,  # raised only for TERMINATED
    SessionExpired: 3,
    TokenBudgetExceeded: 4,
    TimeBudgetExceeded: 5,
    RecursionDepthExceeded: 6,
}


def stats_repr(stats: Any) -> str:
    inner = ", ".join(f"{n}={getattr(stats, n)}" for n in STATS_FIELDS)
    return f"SessionStats({inner})"


# ---------------------------------------------------------------------------
# JSON forms (the crate's serde field order)
# ---------------------------------------------------------------------------


BUDGET_FIELDS = (
    "token_budget",
    "tokens_used",
    "time_budget_ms",
    "time_used_ms",
    "max_recursion_depth",
    "current_recursion_depth",
)


INFO_FIELDS = (
    "id",
    "state",
    "created_at",
    "expires_at",
    "extension_count",
    "recursion_depth",
    "budget_status",
    "vm_instance_id",
    "context_variables",
    "current_snapshot_id",
    "snapshot_count",
)


def budget_to_dict(budget: BudgetStatus) -> dict[str, Any]:
    return {name: getattr(budget, name) for name in BUDGET_FIELDS}


def _budget_values(data: object, where: str) -> list[int]:
    obj = _object(data, BUDGET_FIELDS, where)
    prefix = f"{where}." if where != "BudgetStatus" else ""
    return [
        (_u32 if name in _U32_FIELDS else _u64)(obj[name], prefix + name) for name in BUDGET_FIELDS
    ]


def budget_from_dict(data: object) -> BudgetStatus:
    return BudgetStatus._trusted(*_budget_values(data, "BudgetStatus"))


def _id_text(sid: object) -> str:
    """The 26-char uppercase ULID of a session id: a SessionId of either
    core, or anything whose str() is a ULID in either case."""
    if foreign_session_id(sid) is not None:  # either core's SessionId
        return str(sid)
    text = sid if isinstance(sid, str) else str(sid)
    try:
        return str(SessionId.from_string(text))
    except InvalidSessionToken:
        raise Serialization(f"id: {_describe(text)} is not a ULID") from None


def _session_id_from(value: object, field: str) -> SessionId:
    if type(value) is not str:
        raise _invalid_type(field, value, "a ULID string")
    try:
        return SessionId.from_string(value)
    except InvalidSessionToken:
        raise Serialization(f"{field}: {_describe(value)} is not a ULID") from None


def info_to_dict(info: SessionInfo) -> dict[str, Any]:
    """The crate's serde object: fields in declaration order, id and
    timestamps as strings, context variables sorted by key."""
    return {
        "id": _id_text(info.id),
        "state": info.state.value,
        "created_at": format_timestamp(info.created_at_ns),
        "expires_at": format_timestamp(info.expires_at_ns),
        "extension_count": info.extension_count,
        "recursion_depth": info.recursion_depth,
        "budget_status": budget_to_dict(info.budget_status),
        "vm_instance_id": info.vm_instance_id,
        "context_variables": dict(info.context_variables),  # sorted by key
        "current_snapshot_id": info.current_snapshot_id,
        "snapshot_count": info.snapshot_count,
    }


def _compact_info(info: SessionInfo) -> str:
    b = info.budget_status
    context = info._context
    if context:
        # Already sorted by key: a SessionInfo keeps its context that way.
        ctx = ",".join(f"{encode_basestring(k)}:{encode_basestring(v)}" for k, v in context.items())
        ctx = "{" + ctx + "}"
    else:
        ctx = "{}"
    return (
        f'{{"id":"{_id_text(info.id)}","state":"{info.state.value}",'
        f'"created_at":"{format_timestamp(info.created_at_ns)}",'
        f'"expires_at":"{format_timestamp(info.expires_at_ns)}",'
        f'"extension_count":{info.extension_count},'
        f'"recursion_depth":{info.recursion_depth},'
        f'"budget_status":{{"token_budget":{b.token_budget},"tokens_used":{b.tokens_used},'
        f'"time_budget_ms":{b.time_budget_ms},"time_used_ms":{b.time_used_ms},'
        f'"max_recursion_depth":{b.max_recursion_depth},'
        f'"current_recursion_depth":{b.current_recursion_depth}}},'
        f'"vm_instance_id":{_quoted(info.vm_instance_id)},'
        f'"context_variables":{ctx},'
        f'"current_snapshot_id":{_quoted(info.current_snapshot_id)},'
        f'"snapshot_count":{info.snapshot_count}}}'
    )


def info_to_json(info: SessionInfo, indent: int | None = None) -> str:
    """`serde_json::to_string` (indent None) or `to_string_pretty` (indent 2)."""
    width = _check_indent(indent)
    if width is None:
        return _compact_info(info)
    return json.dumps(info_to_dict(info), ensure_ascii=False, indent=width)


def info_from_dict(data: object) -> SessionInfo:
    """A SessionInfo from the crate's serde object (see `info_to_dict`)."""
    obj = _object(data, INFO_FIELDS, "SessionInfo")
    raw_id = obj["id"]
    if type(raw_id) is not str:
        raise _invalid_type("id", raw_id, "a ULID string")
    try:
        sid = SessionId.from_string(raw_id)
    except InvalidSessionToken:
        raise Serialization(f"id: {_describe(raw_id)} is not a ULID") from None
    state_name = obj["state"]
    state = _STATE_BY_VALUE.get(state_name) if type(state_name) is str else None
    if state is None:
        if type(state_name) is not str:
            raise _invalid_type("state", state_name, "a state name")
        names = ", ".join(f"`{n}`" for n in _STATE_BY_VALUE)
        raise Serialization(
            f"state: unknown variant {_describe(state_name)}, expected one of {names}"
        )
    created = parse_timestamp(obj["created_at"], "created_at")
    expires = parse_timestamp(obj["expires_at"], "expires_at")
    extensions = _u32(obj["extension_count"], "extension_count")
    depth = _u32(obj["recursion_depth"], "recursion_depth")
    budget = _budget_values(obj["budget_status"], "budget_status")
    vm = _optional_string(obj["vm_instance_id"], "vm_instance_id")
    raw_context = obj["context_variables"]
    if not isinstance(raw_context, Mapping):
        raise _invalid_type("context_variables", raw_context, "a JSON object")
    context: dict[str, str] = {}
    if raw_context:
        pairs = []
        for key, value in raw_context.items():
            if not (type(key) is str and type(value) is str and key.isascii() and value.isascii()):
                key = _string(key, "context_variables key")
                value = _string(value, f"context_variables[{_describe(key)}]")
            pairs.append((key, value))
        pairs.sort()
        context = dict(pairs)
    snapshot = _optional_string(obj["current_snapshot_id"], "current_snapshot_id")
    snapshots = _u32(obj["snapshot_count"], "snapshot_count")
    # Depth has one source of truth (SPEC 4.8): recursion_depth wins over
    # budget_status.current_recursion_depth when a crate document differs.
    budget[5] = depth
    return SessionInfo._trusted(
        sid,
        state,
        created,
        expires,
        extensions,
        depth,
        BudgetStatus._trusted(*budget),
        vm,
        context,
        snapshot,
        snapshots,
    )


def stats_to_dict(stats: SessionStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in STATS_FIELDS}


CRATE_STATS_FIELDS = STATS_FIELDS[:5]


def stats_from_dict(data: object) -> SessionStats:
    """rlm_fast's 12 fields, or the crate's 5 (its document has no refusal
    counters: they read as 0, like serde's `#[serde(default)]`)."""
    names: tuple[str, ...] = STATS_FIELDS
    if isinstance(data, Mapping) and not any(n in data for n in REFUSAL_FIELDS):
        names = CRATE_STATS_FIELDS
    obj = _object(data, names, "SessionStats")
    return SessionStats(*(_u64(obj[name], name) for name in names))


def info_from_json(text: object) -> SessionInfo:
    return info_from_dict(parse_json(text))


register_results(info=SessionInfo, budget=BudgetStatus, stats=SessionStats)
