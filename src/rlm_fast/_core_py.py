"""Pure-Python twin of the session core: `SessionId` and `SessionManager`.

This module is the readable specification; `_core_c.pyx` is the same
behaviour, fast. One `threading.Lock` per manager guards its table, its VM
map and its counters; the clock is read and every argument is checked before
the lock is taken, and only exact `str` objects are stored, so no user code
(clock, `__del__`, `__eq__` of a subclass) ever runs under it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from typing import Any, Callable, final

from ._types import (
    I64_MAX,
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    U64_MAX,
    BudgetStatus,
    SessionInfo,
    SessionState,
    SessionStats,
    STATE_CODE,
    budget_table_dtype,
    check_clock_value,
    numpy,
    raw_ids,
    check_restore,
    foreign_session_id,
    result_kind,
    check_str,
    check_u64,
    coerce_state,
    ns_to_datetime,
    session_id_type_error,
)
from .config import RlmConfig
from .errors import (
    ConfigError,
    InvalidSessionState,
    InvalidSessionToken,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

# The twin's result classes are the ones _types defines.
__all__ = ["SessionId", "SessionManager", "SessionInfo", "BudgetStatus", "SessionStats"]

# ---------------------------------------------------------------------------
# SessionId: a ULID (48-bit Unix ms + 80 random bits), Crockford base32
# ---------------------------------------------------------------------------

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# ASCII-only matching: re.IGNORECASE alone would let e.g. the Kelvin sign
# (U+212A) match "K".
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.ASCII | re.IGNORECASE)
# Crockford digit -> the digit int(..., 32) reads (0-9, a-v).
_TO_INT32 = str.maketrans(
    _ALPHABET + _ALPHABET.lower(), ("0123456789abcdefghijklmnopqrstuv") * 2
)
U128_MAX = 2**128 - 1
_MS_MAX = 2**48 - 1


def _format(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _parse(text: object) -> int:
    """The 128-bit value of a ULID string; the errors SPEC 10 names."""
    if not isinstance(text, str):
        raise TypeError(f"from_string needs a str, not {type(text).__name__}")
    if _ULID_RE.fullmatch(text) is None:
        raise InvalidSessionToken(text)
    return int(text.translate(_TO_INT32), 32)


def _random_value(ms: int) -> int:
    """A fresh id value: `ms` (clamped to 48 bits) and 80 CSPRNG bits."""
    ms = min(max(ms, 0), _MS_MAX)
    return (ms << 80) | int.from_bytes(os.urandom(10), "big")


@final  # __init_subclass__ refuses subclasses at runtime
class SessionId:
    """A session id: a ULID, used as a bearer token (so its 80 random bits
    come from the OS CSPRNG). Immutable, hashable, ordered like its int."""

    __slots__ = ("_value",)
    _value: int

    def __init__(self) -> None:
        if hasattr(self, "_value"):
            raise AttributeError("SessionId is immutable")
        object.__setattr__(self, "_value", _random_value(time.time_ns() // 1_000_000))

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Final, like the compiled class: the cores key on exact ids.
        raise TypeError("SessionId cannot be subclassed")

    @classmethod
    def _of(cls, value: int) -> "SessionId":
        self = object.__new__(cls)
        object.__setattr__(self, "_value", value)
        return self

    @classmethod
    def from_string(cls, s: str) -> "SessionId":
        return cls._of(_parse(s))

    @classmethod
    def from_bytes(cls, b: bytes) -> "SessionId":
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes needs 16 bytes, not {type(b).__name__}")
        raw = bytes(b)
        if len(raw) != 16:
            raise ValueError(f"a session id is exactly 16 bytes, got {len(raw)}")
        return cls._of(int.from_bytes(raw, "big"))

    @classmethod
    def from_int(cls, value: int) -> "SessionId":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"from_int needs an int, not {type(value).__name__}")
        if not 0 <= value <= U128_MAX:
            raise ValueError("a session id is an int in 0..2**128-1")
        return cls._of(int(value))

    @property
    def bytes(self) -> bytes:
        return self._value.to_bytes(16, "big")

    @property
    def timestamp_ms(self) -> int:
        return self._value >> 80

    @property
    def datetime(self) -> Any:
        return ns_to_datetime(self.timestamp_ms * 1_000_000)

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __str__(self) -> str:
        return _format(self._value)

    def __repr__(self) -> str:
        return f"SessionId('{_format(self._value)}')"

    def __hash__(self) -> int:
        return hash(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SessionId):
            return self._value == other._value
        value = foreign_session_id(other)  # the other core's id: same value?
        return NotImplemented if value is None else self._value == value

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __lt__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value < other._value
        return NotImplemented

    def __le__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value <= other._value
        return NotImplemented

    def __gt__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value > other._value
        return NotImplemented

    def __ge__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value >= other._value
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SessionId is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SessionId is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        import rlm_fast

        return (rlm_fast._restore_session_id, (self.bytes,))

    def __copy__(self) -> "SessionId":
        return self

    def __deepcopy__(self, memo: object) -> "SessionId":
        return self


def _key(session_id: object) -> int:
    """The table key of a SessionId or its string form (SPEC 7)."""
    if type(session_id) is SessionId:
        return session_id._value
    if isinstance(session_id, str):
        return _parse(session_id)
    value = foreign_session_id(session_id)
    if value is None:
        raise session_id_type_error(session_id)
    return value


# ---------------------------------------------------------------------------
# SessionManager
# ---------------------------------------------------------------------------

# The clock checks read, as the compiled core's rlm_check_time_ns(): the
# coarse wall clock where the OS has one (Linux), else the precise one.
_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)


def _check_time_ns() -> int:
    return time.time_ns()


if _COARSE is not None:
    try:
        time.clock_gettime_ns(_COARSE)
    except OSError:
        pass
    else:
        _check_time_ns = functools.partial(time.clock_gettime_ns, _COARSE)  # noqa: F811

_NS_PER_S = 1_000_000_000



class _Session:
    """One row of the table (mutable; only touched under the manager lock)."""

    __slots__ = (
        "key",
        "state",
        "created_ns",
        "expires_ns",
        "extension_count",
        "depth",
        "token_budget",
        "tokens_used",
        "time_budget_ms",
        "time_used_ms",
        "max_depth",
        "vm",
        "context",
        "snapshot",
        "snapshot_count",
    )

    def __init__(self, key: int, now: int, expires: int, config: RlmConfig) -> None:
        self.key = key
        self.state = SessionState.INITIALIZING
        self.created_ns = now
        self.expires_ns = expires
        self.extension_count = 0
        self.depth = 0
        self.token_budget = config.token_budget
        self.tokens_used = 0
        self.time_budget_ms = config.time_budget_ms
        self.time_used_ms = 0
        self.max_depth = config.max_recursion_depth
        self.vm: str | None = None
        self.context: dict[str, str] = {}
        self.snapshot: str | None = None
        self.snapshot_count = 0

    def info(self) -> SessionInfo:
        return SessionInfo._trusted(
            SessionId._of(self.key),
            self.state,
            self.created_ns,
            self.expires_ns,
            self.extension_count,
            self.depth,
            BudgetStatus._trusted(
                self.token_budget,
                self.tokens_used,
                self.time_budget_ms,
                self.time_used_ms,
                self.max_depth,
                self.depth,
            ),
            self.vm,
            dict(sorted(self.context.items())),
            self.snapshot,
            self.snapshot_count,
        )


class _Recursion:
    """`manager.recursion(id)`: depth +1 on entry, -1 on exit, always."""

    __slots__ = ("_manager", "_key")

    def __init__(self, manager: "SessionManager", key: int) -> None:
        self._manager = manager
        self._key = key

    def __enter__(self) -> int:
        return self._manager._increment(self._key)

    def __exit__(self, *exc: object) -> None:
        self._manager._leave_recursion(self._key)


class SessionManager:
    """The session table (the crate's `SessionManager`, SPEC 3)."""

    def __init__(
        self,
        config: RlmConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if config is None:
            config = RlmConfig()
        elif not isinstance(config, RlmConfig):
            raise TypeError(f"config must be an RlmConfig, not {type(config).__name__}")
        config.validate()
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        self._config = _copy_config(config)
        self._clock = clock
        self._duration_ns = config.session_duration_secs * _NS_PER_S
        self._increment_ns = config.extension_increment_secs * _NS_PER_S
        self._lock = threading.Lock()
        self._sessions: dict[int, _Session] = {}
        self._vm_to_session: dict[str, int] = {}
        self._created = 0
        self._destroyed = 0
        self._expired = 0

    @property
    def config(self) -> RlmConfig:
        """A copy of the configuration the manager runs with."""
        return _copy_config(self._config)

    # -- helpers ------------------------------------------------------------

    def _now(self) -> int:
        """Now, for checks: the user clock, else the wall clock at tick
        resolution (never ahead of time.time_ns(), at most a tick behind)."""
        if self._clock is None:
            return _check_time_ns()
        return check_clock_value(self._clock())

    def _stamp_now(self) -> int:
        """Now, for a timestamp the session records (created_at)."""
        if self._clock is None:
            return time.time_ns()
        return check_clock_value(self._clock())

    def _get(self, key: int) -> _Session:
        """The row, or SessionNotFound (caller holds the lock)."""
        session = self._sessions.get(key)
        if session is None:
            raise SessionNotFound(SessionId._of(key))
        return session

    def _live(self, key: int, now: int, operation: str) -> _Session:
        """The row of a session a write may touch (caller holds the lock):
        existence, then TERMINATED, then expiry by clock or state."""
        session = self._get(key)
        if session.state is SessionState.TERMINATED:
            raise InvalidSessionState(SessionId._of(key), "Terminated", operation)
        if session.state is SessionState.EXPIRED or now > session.expires_ns:
            raise SessionExpired(SessionId._of(key))
        return session

    def _usable(self, key: int, now: int) -> bool:
        """Whether a session may be used now (caller holds the lock)."""
        session = self._sessions.get(key)
        return (
            session is not None
            and session.state is not SessionState.TERMINATED
            and session.state is not SessionState.EXPIRED
            and now <= session.expires_ns
        )

    def _unmap_vm(self, session: _Session) -> None:
        """Drop the session's VM from both maps (caller holds the lock)."""
        if session.vm is not None:
            if self._vm_to_session.get(session.vm) == session.key:
                del self._vm_to_session[session.vm]
            session.vm = None

    def _remove(self, session: _Session) -> None:
        self._unmap_vm(session)
        del self._sessions[session.key]

    # -- lifecycle ----------------------------------------------------------

    def create_session(self) -> SessionInfo:
        now = self._stamp_now()
        expires = now + self._duration_ns
        if expires > I64_MAX:
            raise ConfigError(MSG_CREATE_OVERFLOW)
        while True:
            key = _random_value(now // 1_000_000)
            with self._lock:
                if key in self._sessions:
                    continue  # never reuse a live id, however unlikely
                session = _Session(key, now, expires, self._config)
                self._sessions[key] = session
                self._created += 1
                return session.info()

    def get_session(self, session_id: SessionId | str) -> SessionInfo:
        key = _key(session_id)
        with self._lock:
            return self._get(key).info()

    def update_session_state(
        self, session_id: SessionId | str, state: SessionState | str
    ) -> None:
        key = _key(session_id)
        new_state = coerce_state(state)
        now = self._now()
        with self._lock:
            self._live(key, now, "update_session_state").state = new_state

    def is_session_valid(self, session_id: SessionId | str) -> bool:
        try:
            key = _key(session_id)
        except InvalidSessionToken:
            return False
        now = self._now()
        with self._lock:
            return self._usable(key, now)

    def validate_session(self, session_id: SessionId | str) -> SessionInfo:
        key = _key(session_id)
        now = self._now()
        with self._lock:
            return self._live(key, now, "validate").info()

    def extend_session(self, session_id: SessionId | str) -> SessionInfo:
        key = _key(session_id)
        now = self._now()
        with self._lock:
            session = self._live(key, now, "extend_session")
            maximum = self._config.max_extensions
            if session.extension_count >= maximum:
                raise MaxExtensionsReached(SessionId._of(key), maximum)
            expires = session.expires_ns + self._increment_ns
            if expires > I64_MAX:
                raise ConfigError(MSG_EXTEND_OVERFLOW)
            session.expires_ns = expires
            session.extension_count += 1
            return session.info()

    def destroy_session(self, session_id: SessionId | str) -> None:
        key = _key(session_id)
        with self._lock:
            self._remove(self._get(key))
            self._destroyed += 1

    def cleanup_expired_sessions(self) -> list[SessionId]:
        now = self._now()
        with self._lock:
            expired = sorted(k for k, s in self._sessions.items() if s.expires_ns < now)
            for key in expired:
                self._remove(self._sessions[key])
            self._expired += len(expired)
        return [SessionId._of(key) for key in expired]

    # -- VM affinity ----------------------------------------------------------

    def assign_vm(self, session_id: SessionId | str, vm_instance_id: str) -> None:
        key = _key(session_id)
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        now = self._now()
        with self._lock:
            session = self._live(key, now, "assign_vm")
            if session.vm != vm:
                self._unmap_vm(session)  # a session holds at most one VM
                previous = self._vm_to_session.get(vm)
                if previous is not None:
                    # The VM moves: its old session no longer holds it.
                    self._sessions[previous].vm = None
                self._vm_to_session[vm] = key
                session.vm = vm
            session.state = SessionState.READY

    def release_vm(self, session_id: SessionId | str) -> str | None:
        key = _key(session_id)
        with self._lock:
            session = self._get(key)
            vm = session.vm
            self._unmap_vm(session)
            return vm

    def get_assigned_vm(self, session_id: SessionId | str) -> str | None:
        key = _key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            return None if session is None else session.vm

    def get_session_for_vm(self, vm_instance_id: str) -> SessionId | None:
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        with self._lock:
            key = self._vm_to_session.get(vm)
        return None if key is None else SessionId._of(key)

    # -- context variables ------------------------------------------------------

    def set_context_variable(self, session_id: SessionId | str, key: str, value: str) -> None:
        skey = _key(session_id)
        name = check_str(key, "key")
        text = check_str(value, "value")
        now = self._now()
        with self._lock:
            self._live(skey, now, "set_context_variable").context[name] = text

    def get_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        skey = _key(session_id)
        name = check_str(key, "key")
        with self._lock:
            return self._get(skey).context.get(name)

    def get_all_context_variables(self, session_id: SessionId | str) -> dict[str, str]:
        skey = _key(session_id)
        with self._lock:
            return dict(sorted(self._get(skey).context.items()))

    def delete_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        skey = _key(session_id)
        name = check_str(key, "key")
        now = self._now()
        with self._lock:
            return self._live(skey, now, "delete_context_variable").context.pop(name, None)

    # -- budgets and depth --------------------------------------------------------

    def update_budget(self, session_id: SessionId | str, budget: BudgetStatus) -> None:
        key = _key(session_id)
        if result_kind(budget) != "BudgetStatus":
            raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
        now = self._now()
        with self._lock:
            session = self._live(key, now, "update_budget")
            session.token_budget = budget.token_budget
            session.tokens_used = budget.tokens_used
            session.time_budget_ms = budget.time_budget_ms
            session.time_used_ms = budget.time_used_ms
            session.max_depth = budget.max_recursion_depth
            session.depth = budget.current_recursion_depth

    def increment_recursion_depth(self, session_id: SessionId | str) -> int:
        return self._increment(_key(session_id))

    def _increment(self, key: int) -> int:
        now = self._now()
        with self._lock:
            session = self._live(key, now, "increment_recursion_depth")
            if session.depth >= session.max_depth:
                raise RecursionDepthExceeded(session.depth + 1, session.max_depth)
            session.depth += 1
            return session.depth

    def decrement_recursion_depth(self, session_id: SessionId | str) -> int:
        key = _key(session_id)
        now = self._now()
        with self._lock:
            session = self._live(key, now, "decrement_recursion_depth")
            if session.depth > 0:
                session.depth -= 1
            return session.depth

    def _leave_recursion(self, key: int) -> None:
        # The exit of recursion(): undo the entry's +1 whatever the state,
        # and never raise (the session may be gone).
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.depth > 0:
                session.depth -= 1

    def recursion(self, session_id: SessionId | str) -> _Recursion:
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        return _Recursion(self, _key(session_id))

    def charge_tokens(self, session_id: SessionId | str, tokens: int) -> int:
        return self._charge(
            _key(session_id), check_u64(tokens, "tokens"), "charge_tokens",
            "tokens_used", "token_budget", TokenBudgetExceeded, MSG_TOKENS_OVERFLOW,
        )

    def charge_time(self, session_id: SessionId | str, elapsed_ms: int) -> int:
        return self._charge(
            _key(session_id), check_u64(elapsed_ms, "elapsed_ms"), "charge_time",
            "time_used_ms", "time_budget_ms", TimeBudgetExceeded, MSG_TIME_OVERFLOW,
        )

    def _charge(
        self,
        key: int,
        amount: int,
        operation: str,
        used: str,
        limit: str,
        over: type[TokenBudgetExceeded] | type[TimeBudgetExceeded],
        overflow: str,
    ) -> int:
        """Add `amount` to the session's `used` counter. A total past
        2**64-1 is refused whole; one past the budget is kept (it was
        spent), then raised."""
        now = self._now()
        with self._lock:
            session = self._live(key, now, operation)
            total = getattr(session, used) + amount
            if total > U64_MAX:
                raise ValueError(overflow)
            setattr(session, used, total)
            budget = getattr(session, limit)
        if total > budget:
            raise over(total, budget)
        return int(total)

    def check_budget(self, session_id: SessionId | str) -> BudgetStatus:
        key = _key(session_id)
        now = self._now()
        with self._lock:
            status = self._live(key, now, "check_budget").info().budget_status
        if status.tokens_exhausted():
            raise TokenBudgetExceeded(status.tokens_used, status.token_budget)
        if status.time_exhausted():
            raise TimeBudgetExceeded(status.time_used_ms, status.time_budget_ms)
        if status.depth_exhausted():
            raise RecursionDepthExceeded(
                status.current_recursion_depth, status.max_recursion_depth
            )
        return status

    # -- snapshots ------------------------------------------------------------------

    def record_snapshot_created(
        self,
        session_id: SessionId | str,
        snapshot_id: str,
        set_as_current: bool = False,
    ) -> None:
        key = _key(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        if not isinstance(set_as_current, bool):
            raise TypeError("set_as_current must be a bool")
        now = self._now()
        with self._lock:
            session = self._live(key, now, "record_snapshot_created")
            maximum = self._config.max_snapshots_per_session
            if maximum and session.snapshot_count >= maximum:
                raise MaxSnapshotsReached(maximum)
            session.snapshot_count += 1
            if set_as_current:
                session.snapshot = snapshot

    def record_snapshot_restored(self, session_id: SessionId | str, snapshot_id: str) -> None:
        key = _key(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        now = self._now()
        with self._lock:
            self._live(key, now, "record_snapshot_restored").snapshot = snapshot

    def get_current_snapshot(self, session_id: SessionId | str) -> str | None:
        key = _key(session_id)
        with self._lock:
            return self._get(key).snapshot

    def clear_snapshot_tracking(self, session_id: SessionId | str) -> None:
        key = _key(session_id)
        now = self._now()
        with self._lock:
            session = self._live(key, now, "clear_snapshot_tracking")
            session.snapshot = None
            session.snapshot_count = 0

    # -- whole table ------------------------------------------------------------------

    def get_stats(self) -> SessionStats:
        with self._lock:
            return SessionStats(
                self._created,
                len(self._sessions),
                len(self._vm_to_session),
                self._destroyed,
                self._expired,
            )

    def list_sessions(self) -> list[SessionInfo]:
        with self._lock:
            return [self._sessions[k].info() for k in sorted(self._sessions)]

    # -- bulk API (numpy) ---------------------------------------------------------

    def validate_many(self, ids: Any) -> Any:
        """`is_session_valid` for many ids at one instant: a numpy bool array.

        `ids` is an iterable of SessionId/str, or a numpy array of 16-byte
        ids such as `budget_table()["id"]`."""
        np = numpy()
        packed = raw_ids(ids)
        keys: list[int | None] = []
        if packed is not None:
            keys = [int.from_bytes(packed[i : i + 16], "big") for i in range(0, len(packed), 16)]
        else:
            for sid in ids:
                try:
                    keys.append(_key(sid))
                except InvalidSessionToken:
                    keys.append(None)  # malformed: not valid
        now = self._now()
        with self._lock:
            valid = [k is not None and self._usable(k, now) for k in keys]
        return np.array(valid, dtype=bool)

    def budget_table(self) -> Any:
        """One numpy row per session, in id order (fields: BUDGET_TABLE_FIELDS)."""
        dtype = budget_table_dtype()
        with self._lock:
            rows = [
                (
                    s.key.to_bytes(16, "big"),
                    STATE_CODE[s.state],
                    s.expires_ns,
                    s.tokens_used,
                    s.token_budget,
                    s.time_used_ms,
                    s.time_budget_ms,
                    s.depth,
                    s.max_depth,
                    s.extension_count,
                    s.snapshot_count,
                    s.vm is not None,
                )
                for s in (self._sessions[k] for k in sorted(self._sessions))
            ]
        return numpy().array(rows, dtype=dtype)

    def _export(self) -> tuple[list[SessionInfo], SessionStats]:
        """Every session and the counters, read in one atomic step (dump)."""
        with self._lock:
            rows = [self._sessions[k].info() for k in sorted(self._sessions)]
            stats = SessionStats(
                self._created,
                len(self._sessions),
                len(self._vm_to_session),
                self._destroyed,
                self._expired,
            )
        return rows, stats

    def _restore(self, infos: list[SessionInfo], counters: tuple[int, int, int]) -> None:
        """Fill an empty manager from `_export`'s rows (load): all or nothing."""
        rows = check_restore(infos, counters)
        restored = []
        for info in rows:
            session = _Session(_parse(str(info.id)), info.created_at_ns, info.expires_at_ns, self._config)
            budget = info.budget_status
            session.state = info.state
            session.extension_count = info.extension_count
            session.depth = info.recursion_depth
            session.token_budget = budget.token_budget
            session.tokens_used = budget.tokens_used
            session.time_budget_ms = budget.time_budget_ms
            session.time_used_ms = budget.time_used_ms
            session.max_depth = budget.max_recursion_depth
            session.vm = info.vm_instance_id
            session.context = dict(info.context_variables)
            session.snapshot = info.current_snapshot_id
            session.snapshot_count = info.snapshot_count
            restored.append(session)
        with self._lock:
            if self._sessions or self._created:
                raise ValueError("restore needs a new, empty manager")
            for session in restored:
                self._sessions[session.key] = session
                if session.vm is not None:
                    self._vm_to_session[session.vm] = session.key
            self._created, self._destroyed, self._expired = counters

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write every session and the counters to `path`, atomically
        (docs/dump-format.md)."""
        from ._serde import dump

        dump(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        config: RlmConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> "SessionManager":
        """A new manager holding what `dump` wrote, with the dumped config
        unless `config` is given; a bad file raises Serialization."""
        from ._serde import load

        return load(cls, path, config, clock=clock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        try:
            key = _key(session_id)
        except (TypeError, InvalidSessionToken):
            return False
        with self._lock:
            return key in self._sessions

    def __repr__(self) -> str:
        return f"<SessionManager (python) sessions={len(self)}>"

    def __reduce__(self) -> Any:
        raise TypeError("a SessionManager cannot be pickled; use dump()/load()")


def _copy_config(config: RlmConfig) -> RlmConfig:
    import copy

    return copy.deepcopy(config)


SessionId.__module__ = "rlm_fast"
SessionManager.__module__ = "rlm_fast"
