"""Pure-Python twin of the session core: `SessionManager` (its `SessionId`
is `_session_id_py`'s, its result classes `_results`').

This module is the readable specification; `_session_c.pyx` is the same
behaviour, fast. One `threading.Lock` per manager guards its table, its VM
map and its counters; the clock is read and every argument is checked before
the lock is taken, and only exact `str` objects are stored, so no user code
(clock, `__del__`, `__eq__` of a subclass) ever runs under it.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

from ._bulk import budget_table_dtype, numpy, raw_ids
from ._checks import (
    I64_MAX,
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    U32_MAX,
    U64_MAX,
    check_clock_value,
    check_str,
    check_u64,
)
from ._dump import check_restore, check_tree, dump, load
from ._lifecycle import (
    ModelCall,
    Reaper,
    ReaperSlot,
    check_on_remove,
    log_created,
    log_vm_moved,
    report_removed,
)
from ._registry import result_kind
from ._results import (
    REFUSAL_INDEX,
    STATE_CODE,
    BudgetStatus,
    SessionInfo,
    SessionState,
    SessionStats,
    coerce_state,
)
from ._session_id_py import SessionId, key_of, random_key
from .config import RlmConfig, resolve_config
from .errors import (
    ConfigError,
    RlmError,
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

# The twin's id and result classes, re-exported: the core's whole surface.
__all__ = ["SessionId", "SessionManager", "SessionInfo", "BudgetStatus", "SessionStats"]

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

# Whole-table calls (list_sessions, budget_table, the export for dump,
# cleanup and pop_expired_sessions) take the lock once per PIECE sessions and
# release it between pieces, so a hot-path call on another session never waits
# for more than one piece (SPEC 15, docs/design.md "No stalls").
PIECE = 2048



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
        "parent",
        "root",
        "start_depth",
        "kids",
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
        # The tree (docs/trees.md): a root has no parent, is its own root
        # and starts at depth 0; `kids` holds the direct children's keys.
        self.parent: int | None = None
        self.root = key
        self.start_depth = 0
        self.kids: set[int] = set()

    def budget(self) -> BudgetStatus:
        return BudgetStatus._trusted(
            self.token_budget,
            self.tokens_used,
            self.time_budget_ms,
            self.time_used_ms,
            self.max_depth,
            self.depth,
        )

    def info(self) -> SessionInfo:
        return SessionInfo._trusted(
            SessionId._of(self.key),
            self.state,
            self.created_ns,
            self.expires_ns,
            self.extension_count,
            self.depth,
            self.budget(),
            self.vm,
            dict(sorted(self.context.items())),
            self.snapshot,
            self.snapshot_count,
            None if self.parent is None else SessionId._of(self.parent),
            SessionId._of(self.root),
        )


class _Recursion:
    """`manager.recursion(id)`: depth +1 on entry, -1 on exit, always."""

    __slots__ = ("_manager", "_key")

    def __init__(self, manager: "SessionManager", key: int) -> None:
        self._manager = manager
        self._key = key

    def __enter__(self) -> int:
        return self._manager.increment_recursion_depth(SessionId._of(self._key))

    def __exit__(self, *exc: object) -> None:
        self._manager._leave_recursion(self._key)


class SessionManager:
    """The session table (the crate's `SessionManager`, SPEC 3)."""

    def __init__(
        self,
        config: RlmConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
        on_remove: Callable[[SessionInfo, str], object] | None = None,
    ) -> None:
        """A new, empty table. `config` is validated and copied; `clock`,
        when given, returns int nanoseconds since the epoch (tests use it);
        `on_remove(info, reason)` is told of every removed session
        (docs/lifecycle.md)."""
        if hasattr(self, "_config"):
            raise TypeError("SessionManager is already initialised")
        config = resolve_config(config)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        self._on_remove = check_on_remove(on_remove)
        self._reapers = ReaperSlot()
        self._rejected = [0] * len(REFUSAL_INDEX)  # SessionStats.rejected_*
        self._config = config
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

    def _count_refusal(self, exc: RlmError) -> None:
        """Count a refusal a public method raised (docs/lifecycle.md): one of
        SessionStats' rejected_* counters, under the lock. Each public method
        that can refuse catches RlmError around its body and calls this (a
        try costs nothing until it raises; a wrapping decorator cost every
        call a Python frame)."""
        index = REFUSAL_INDEX.get(type(exc))
        if index is not None:
            with self._lock:
                self._rejected[index] += 1

    def _get(self, key: int) -> _Session:
        """The row, or SessionNotFound (caller holds the lock)."""
        session = self._sessions.get(key)
        if session is None:
            raise SessionNotFound(SessionId._of(key))
        return session

    def _path(self, session: _Session) -> list[_Session]:
        """The session's path from its root down to it (caller holds the
        lock; a parent is never removed before its children)."""
        path = [session]
        while path[-1].parent is not None:
            path.append(self._sessions[path[-1].parent])
        path.reverse()
        return path

    def _live(self, key: int, now: int, operation: str) -> _Session:
        """The row of a session a write may touch (caller holds the lock):
        existence, then for each session on its path, root first,
        TERMINATED, then expiry by clock or state (validity flows down)."""
        session = self._get(key)
        for node in self._path(session) if session.parent is not None else (session,):
            if node.state is SessionState.TERMINATED:
                raise InvalidSessionState(SessionId._of(node.key), "Terminated", operation)
            if node.state is SessionState.EXPIRED or now > node.expires_ns:
                raise SessionExpired(SessionId._of(node.key))
        return session

    def _refusal(self, key: int, now: int) -> int | None:
        """None if the session and all its ancestors may be used now, else
        the REFUSAL_INDEX of why not: the first refusal on its path, root
        first, as `_live` raises it (caller holds the lock)."""
        session = self._sessions.get(key)
        if session is None:
            return REFUSAL_INDEX[SessionNotFound]
        for node in self._path(session) if session.parent is not None else (session,):
            if node.state is SessionState.TERMINATED:
                return REFUSAL_INDEX[InvalidSessionState]
            if node.state is SessionState.EXPIRED or now > node.expires_ns:
                return REFUSAL_INDEX[SessionExpired]
        return None

    def _unmap_vm(self, session: _Session) -> None:
        """Drop the session's VM from both maps (caller holds the lock)."""
        if session.vm is not None:
            if self._vm_to_session.get(session.vm) == session.key:
                del self._vm_to_session[session.vm]
            session.vm = None

    def _remove_tree(self, session: _Session) -> list[_Session]:
        """Remove the session and its whole subtree, with their VM mappings,
        and detach it from its parent; the removed rows, the session first,
        then its descendants in id order (caller holds the lock)."""
        if session.parent is not None:
            self._sessions[session.parent].kids.discard(session.key)
        removed = []
        stack = [session]
        while stack:
            node = stack.pop()
            stack.extend(self._sessions[k] for k in node.kids)
            self._unmap_vm_of_removed(node)
            del self._sessions[node.key]
            removed.append(node)
        removed[1:] = sorted(removed[1:], key=lambda row: row.key)
        return removed

    def _unmap_vm_of_removed(self, session: _Session) -> None:
        """Drop a removed session's VM mapping if it is still its own; the
        row keeps its VM id for the last SessionInfo (caller holds the lock)."""
        if session.vm is not None and self._vm_to_session.get(session.vm) == session.key:
            del self._vm_to_session[session.vm]

    # -- lifecycle ----------------------------------------------------------

    def create_session(self) -> SessionInfo:
        """A new root session: INITIALIZING, the config's budgets, expiring
        `session_duration_secs` from now."""
        now = self._stamp_now()
        expires = now + self._duration_ns
        if expires > I64_MAX:
            raise ConfigError(MSG_CREATE_OVERFLOW)
        while True:
            key = random_key(now // 1_000_000)
            with self._lock:
                if key in self._sessions:
                    continue  # never reuse a live id, however unlikely
                session = _Session(key, now, expires, self._config)
                self._sessions[key] = session
                self._created += 1
                info = session.info()
            log_created(info)
            return info

    def get_session(self, session_id: SessionId | str) -> SessionInfo:
        """A snapshot of any existing session (read-only lookup: expired and terminated
        ones too)."""
        try:
            key = key_of(session_id)
            with self._lock:
                return self._get(key).info()
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def update_session_state(
        self, session_id: SessionId | str, state: SessionState | str
    ) -> None:
        """Move a live session to `state` (a SessionState or its value); TERMINATED is
        final."""
        try:
            key = key_of(session_id)
            new_state = coerce_state(state)
            now = self._now()
            with self._lock:
                self._live(key, now, "update_session_state").state = new_state
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def is_session_valid(self, session_id: SessionId | str) -> bool:
        """Whether the session exists and it and every ancestor are neither
        terminated nor expired (False for a malformed string id). A False
        counts in the matching rejected_* counter."""
        try:
            key = key_of(session_id)
        except InvalidSessionToken:
            with self._lock:
                self._rejected[REFUSAL_INDEX[InvalidSessionToken]] += 1
            return False
        now = self._now()
        with self._lock:
            why = self._refusal(key, now)
            if why is None:
                return True
            self._rejected[why] += 1
            return False

    def validate_session(self, session_id: SessionId | str) -> SessionInfo:
        """The session's snapshot if it and every ancestor may be used now, else the
        refusal."""
        try:
            key = key_of(session_id)
            now = self._now()
            with self._lock:
                return self._live(key, now, "validate").info()
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def extend_session(self, session_id: SessionId | str) -> SessionInfo:
        """Push the expiry back by `extension_increment_secs`, at most `max_extensions`
        times."""
        try:
            key = key_of(session_id)
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
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def create_child_session(
        self,
        parent_id: SessionId | str,
        *,
        token_budget: int | None = None,
        time_budget_ms: int | None = None,
    ) -> SessionInfo:
        """A child session of `parent_id` in its tree (docs/trees.md): it
        starts one deeper than the parent is now, expires no later than the
        parent, and its budgets default to what the parent has left; its
        charges also count against every ancestor."""
        try:
            key = key_of(parent_id)
            tokens = None if token_budget is None else check_u64(token_budget, "token_budget")
            time_ms = None if time_budget_ms is None else check_u64(time_budget_ms, "time_budget_ms")
            now = self._stamp_now()
            with self._lock:
                parent = self._live(key, now, "create_child_session")
                depth = parent.depth + 1
                if depth > parent.max_depth:
                    raise RecursionDepthExceeded(depth, parent.max_depth)
                tokens = _child_budget(tokens, parent.token_budget, parent.tokens_used, "token_budget")
                time_ms = _child_budget(
                    time_ms, parent.time_budget_ms, parent.time_used_ms, "time_budget_ms"
                )
                child_key = random_key(now // 1_000_000)
                while child_key in self._sessions:  # never reuse a live id
                    child_key = random_key(now // 1_000_000)
                child = _Session(
                    child_key, now, min(now + self._duration_ns, parent.expires_ns), self._config
                )
                child.depth = child.start_depth = depth
                child.max_depth = parent.max_depth
                child.token_budget = tokens
                child.time_budget_ms = time_ms
                child.parent = parent.key
                child.root = parent.root
                self._sessions[child_key] = child
                parent.kids.add(child_key)
                self._created += 1
                info = child.info()
            log_created(info)
            return info
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def children(self, session_id: SessionId | str) -> list[SessionId]:
        """The direct children of a session, in id order (a read-only
        lookup: it works on expired and terminated sessions)."""
        try:
            key = key_of(session_id)
            with self._lock:
                kids = sorted(self._get(key).kids)
            return [SessionId._of(k) for k in kids]
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def destroy_session(self, session_id: SessionId | str) -> SessionInfo:
        """Remove the session and its whole subtree (any state); returns the
        removed session's last state. `on_remove` hears "destroyed" for it
        and "cascade" for each descendant."""
        try:
            key = key_of(session_id)
            with self._lock:
                rows = self._remove_tree(self._get(key))
                self._destroyed += len(rows)
                removed = [(row.info(), "cascade") for row in rows]
            removed[0] = (removed[0][0], "destroyed")
            report_removed(self._on_remove, removed)
            return removed[0][0]
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def cleanup_expired_sessions(self) -> list[SessionId]:
        """Remove every session with `expires_at < now`, each with its
        subtree; every removed id, in id order."""
        return [info.id for info in self.pop_expired_sessions()]

    def pop_expired_sessions(self) -> list[SessionInfo]:
        """Remove what `cleanup_expired_sessions` would and return the
        removed sessions' last states, in id order. `on_remove` hears
        "expired" for each session whose own expiry passed, "cascade" for
        one removed only with an expired ancestor. Works in pieces (PIECE):
        each session is checked, and removed with its subtree, under the
        lock of its piece."""
        now = self._now()
        rows: list[_Session] = []
        for piece in self._key_pieces(ordered=False):
            with self._lock:
                get = self._sessions.get
                removed_here: list[_Session] = []
                for key in piece:
                    session = get(key)  # None: gone meanwhile, or with an ancestor
                    if session is not None and session.expires_ns < now:
                        removed_here.extend(self._remove_tree(session))
                self._expired += len(removed_here)
            rows.extend(removed_here)
        rows.sort(key=lambda row: row.key)
        # The rows are out of the table: nothing else touches them now.
        removed = [(row.info(), "expired" if row.expires_ns < now else "cascade") for row in rows]
        report_removed(self._on_remove, removed)
        return [info for info, _ in removed]

    def start_reaper(self, interval_s: float = 1.0) -> Reaper:
        """Start a daemon thread that calls `pop_expired_sessions` every
        `interval_s` seconds; `stop()` (or leaving its `with` block) ends it.
        RuntimeError while this manager already has a running reaper."""
        return self._reapers.start(self.pop_expired_sessions, interval_s)

    # -- VM affinity ----------------------------------------------------------

    def assign_vm(self, session_id: SessionId | str, vm_instance_id: str) -> None:
        """Pin the session to a VM, set it READY; the VM leaves any session that held
        it, and the session leaves any VM it held (the two maps stay exact
        inverses)."""
        try:
            key = key_of(session_id)
            vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
            now = self._now()
            with self._lock:
                session = self._live(key, now, "assign_vm")
                previous = None
                if session.vm != vm:
                    self._unmap_vm(session)  # a session holds at most one VM
                    previous = self._vm_to_session.get(vm)
                    if previous is not None:
                        # The VM moves: its old session no longer holds it.
                        self._sessions[previous].vm = None
                    self._vm_to_session[vm] = key
                    session.vm = vm
                session.state = SessionState.READY
            if previous is not None:
                log_vm_moved(vm, SessionId._of(previous), SessionId._of(key))
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def release_vm(self, session_id: SessionId | str) -> str | None:
        """Take the session's VM assignment away (any state); the VM id it had, or
        None."""
        try:
            key = key_of(session_id)
            with self._lock:
                session = self._get(key)
                vm = session.vm
                self._unmap_vm(session)
                return vm
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def get_assigned_vm(self, session_id: SessionId | str) -> str | None:
        """The session's VM id; None for no VM or an unknown session."""
        try:
            key = key_of(session_id)
            with self._lock:
                session = self._sessions.get(key)
                return None if session is None else session.vm
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def get_session_for_vm(self, vm_instance_id: str) -> SessionId | None:
        """The session holding the VM; None if none does."""
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        with self._lock:
            key = self._vm_to_session.get(vm)
        return None if key is None else SessionId._of(key)

    # -- context variables ------------------------------------------------------

    def set_context_variable(self, session_id: SessionId | str, key: str, value: str) -> None:
        """Set one context variable of a live session."""
        try:
            skey = key_of(session_id)
            name = check_str(key, "key")
            text = check_str(value, "value")
            now = self._now()
            with self._lock:
                self._live(skey, now, "set_context_variable").context[name] = text
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def get_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        """One context variable, or None (read-only lookup)."""
        try:
            skey = key_of(session_id)
            name = check_str(key, "key")
            with self._lock:
                return self._get(skey).context.get(name)
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def get_all_context_variables(self, session_id: SessionId | str) -> dict[str, str]:
        """A copy of the context variables, sorted by key (read-only lookup)."""
        try:
            skey = key_of(session_id)
            with self._lock:
                return dict(sorted(self._get(skey).context.items()))
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def delete_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        """Remove one context variable of a live session; the removed value or None."""
        try:
            skey = key_of(session_id)
            name = check_str(key, "key")
            now = self._now()
            with self._lock:
                return self._live(skey, now, "delete_context_variable").context.pop(name, None)
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    # -- budgets and depth --------------------------------------------------------

    def update_budget(self, session_id: SessionId | str, budget: BudgetStatus) -> None:
        """Replace the session's budget whole; its `current_recursion_depth` becomes
        the session's depth (not below a child's start depth). Only this session
        changes, not its ancestors."""
        try:
            key = key_of(session_id)
            if result_kind(budget) != "BudgetStatus":
                raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
            now = self._now()
            with self._lock:
                session = self._live(key, now, "update_budget")
                if budget.current_recursion_depth < session.start_depth:
                    raise ValueError(
                        f"current_recursion_depth {budget.current_recursion_depth} is below "
                        f"the child's start depth {session.start_depth}"
                    )
                session.token_budget = budget.token_budget
                session.tokens_used = budget.tokens_used
                session.time_budget_ms = budget.time_budget_ms
                session.time_used_ms = budget.time_used_ms
                session.max_depth = budget.max_recursion_depth
                session.depth = budget.current_recursion_depth
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def increment_recursion_depth(self, session_id: SessionId | str) -> int:
        """One level deeper inside this session; RecursionDepthExceeded past its
        maximum. The new depth."""
        try:
            return self._increment(key_of(session_id))
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def _increment(self, key: int) -> int:
        now = self._now()
        with self._lock:
            session = self._live(key, now, "increment_recursion_depth")
            _deeper(session)
            return session.depth

    def decrement_recursion_depth(self, session_id: SessionId | str) -> int:
        """One level back, saturating at 0 (a child: at its start depth). The new
        depth."""
        try:
            key = key_of(session_id)
            now = self._now()
            with self._lock:
                session = self._live(key, now, "decrement_recursion_depth")
                if session.depth > session.start_depth:  # a child's floor
                    session.depth -= 1
                return session.depth
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def _leave_recursion(self, key: int) -> None:
        # The exit of recursion(): undo the entry's +1 whatever the state,
        # and never raise (the session may be gone).
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.depth > session.start_depth:
                session.depth -= 1

    def recursion(self, session_id: SessionId | str) -> _Recursion:
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        try:
            return _Recursion(self, key_of(session_id))
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def charge_tokens(self, session_id: SessionId | str, tokens: int) -> int:
        """Add `tokens` to the session's tokens_used and every ancestor's, in
        one step, and return the session's new total. A total past 2**64-1
        anywhere on the path is refused whole (ValueError); a total past a
        budget is kept (it was spent), then TokenBudgetExceeded is raised for
        the session nearest the root whose budget was passed."""
        return self._charge(session_id, tokens, of_time=False)

    def charge_time(self, session_id: SessionId | str, elapsed_ms: int) -> int:
        """`charge_tokens` for time: time_used_ms and TimeBudgetExceeded."""
        return self._charge(session_id, elapsed_ms, of_time=True)

    def _charge(self, session_id: SessionId | str, amount: int, *, of_time: bool) -> int:
        try:
            key = key_of(session_id)
            amount = check_u64(amount, "elapsed_ms" if of_time else "tokens")
            now = self._now()
            with self._lock:
                session = self._live(key, now, "charge_time" if of_time else "charge_tokens")
                path = self._path(session)
                if of_time:
                    over = _roll_up(path, None, amount)
                    total = session.time_used_ms
                else:
                    over = _roll_up(path, amount, None)
                    total = session.tokens_used
            if over is not None:
                raise over
            return total
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def check_budget(self, session_id: SessionId | str) -> BudgetStatus:
        """The session's BudgetStatus, after checking every session on its
        path from the root down (tokens, then time, then depth, each): the
        first exhausted budget raises."""
        try:
            key = key_of(session_id)
            now = self._now()
            with self._lock:
                session = self._live(key, now, "check_budget")
                _check_path(self._path(session))
                return session.budget()
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    # -- the model-call step (docs/lifecycle.md) ------------------------------------

    def begin_call(self, session_id: SessionId | str) -> BudgetStatus:
        """Admit one model call, in one atomic step: the session's path is
        valid, no budget on it is exhausted (as `check_budget`), and the
        session's depth goes up by one (as `increment_recursion_depth`).
        Returns the session's BudgetStatus after."""
        try:
            key = key_of(session_id)
            now = self._now()
            with self._lock:
                session = self._live(key, now, "begin_call")
                _check_path(self._path(session))
                _deeper(session)
                return session.budget()
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def end_call(
        self, session_id: SessionId | str, *, tokens: int = 0, elapsed_ms: int = 0
    ) -> BudgetStatus:
        """Close one model call, in one atomic step: charge `tokens` and
        `elapsed_ms` with roll-up (all or nothing against 2**64-1) and take
        the depth back down; then raise as the charges would (tokens first),
        else return the session's BudgetStatus."""
        try:
            key = key_of(session_id)
            tokens = check_u64(tokens, "tokens")
            elapsed = check_u64(elapsed_ms, "elapsed_ms")
            now = self._now()
            with self._lock:
                session = self._live(key, now, "end_call")
                over = _roll_up(self._path(session), tokens, elapsed)
                if session.depth > session.start_depth:
                    session.depth -= 1
                status = session.budget()
            if over is not None:
                raise over
            return status
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def call(self, session_id: SessionId | str) -> ModelCall:
        """Context manager around one model call: `begin_call` on entry; on
        every exit `end_call` with the `tokens` set on the yielded object and
        the elapsed wall time (the manager's clock if it has one)."""
        try:
            key = key_of(session_id)
            return ModelCall(
                lambda: self.begin_call(SessionId._of(key)),
                lambda tokens, elapsed: self.end_call(
                    SessionId._of(key), tokens=tokens, elapsed_ms=elapsed
                ),
                self._clock,
            )
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    # -- snapshots ------------------------------------------------------------------

    def record_snapshot_created(
        self,
        session_id: SessionId | str,
        snapshot_id: str,
        set_as_current: bool = False,
    ) -> None:
        """Count a snapshot (MaxSnapshotsReached at `max_snapshots_per_session`, 0 = no
        limit of the config's) and, if `set_as_current`, make it current."""
        try:
            key = key_of(session_id)
            snapshot = check_str(snapshot_id, "snapshot_id")
            if not isinstance(set_as_current, bool):
                raise TypeError("set_as_current must be a bool")
            now = self._now()
            with self._lock:
                session = self._live(key, now, "record_snapshot_created")
                # 0 means no limit of the config's: the count still stops at
                # the crate's u32 maximum.
                maximum = self._config.max_snapshots_per_session or U32_MAX
                if session.snapshot_count >= maximum:
                    raise MaxSnapshotsReached(maximum)
                session.snapshot_count += 1
                if set_as_current:
                    session.snapshot = snapshot
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def record_snapshot_restored(self, session_id: SessionId | str, snapshot_id: str) -> None:
        """Make `snapshot_id` the session's current snapshot."""
        try:
            key = key_of(session_id)
            snapshot = check_str(snapshot_id, "snapshot_id")
            now = self._now()
            with self._lock:
                self._live(key, now, "record_snapshot_restored").snapshot = snapshot
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def get_current_snapshot(self, session_id: SessionId | str) -> str | None:
        """The current snapshot id, or None (read-only lookup)."""
        try:
            key = key_of(session_id)
            with self._lock:
                return self._get(key).snapshot
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    def clear_snapshot_tracking(self, session_id: SessionId | str) -> None:
        """Forget the current snapshot and reset the count."""
        try:
            key = key_of(session_id)
            now = self._now()
            with self._lock:
                session = self._live(key, now, "clear_snapshot_tracking")
                session.snapshot = None
                session.snapshot_count = 0
        except RlmError as exc:
            self._count_refusal(exc)
            raise

    # -- whole table ------------------------------------------------------------------

    def get_stats(self) -> SessionStats:
        """The counters: created, live, holding a VM, destroyed, expired,
        and each kind of refusal."""
        with self._lock:
            return self._stats()

    def _stats(self) -> SessionStats:
        return SessionStats._trusted(
            self._created,
            len(self._sessions),
            len(self._vm_to_session),
            self._destroyed,
            self._expired,
            *self._rejected,
        )

    def list_sessions(self) -> list[SessionInfo]:
        """Every session, children included, in id order; read in pieces
        (PIECE), so a session created meanwhile may be missing and one
        removed meanwhile is not listed, but each is listed whole."""
        return list(self._rows_in_pieces(_Session.info))

    def _key_pieces(self, *, ordered: bool = True) -> Iterator[list[int]]:
        """The table's keys at this instant (one C-level copy under the
        lock), in id order if `ordered`, in pieces of PIECE."""
        with self._lock:
            keys = list(self._sessions)
        if ordered:
            keys.sort()
        for start in range(0, len(keys), PIECE):
            yield keys[start : start + PIECE]

    def _rows_in_pieces(self, read: Callable[[_Session], Any]) -> Iterator[Any]:
        """read(session) for every session still in the table, in id
        order, each piece under the lock."""
        for piece in self._key_pieces():
            with self._lock:
                get = self._sessions.get
                done = [read(s) for s in map(get, piece) if s is not None]
            yield from done

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
                    keys.append(key_of(sid))
                except InvalidSessionToken:
                    keys.append(None)  # malformed: not valid
        now = self._now()
        with self._lock:
            valid = [k is not None and self._refusal(k, now) is None for k in keys]
        return np.array(valid, dtype=bool)

    def budget_table(self) -> Any:
        """One numpy row per session, in id order (fields:
        BUDGET_TABLE_FIELDS); read in pieces as list_sessions is."""
        dtype = budget_table_dtype()

        def row(s: _Session) -> tuple[Any, ...]:
            return (
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

        return numpy().array(list(self._rows_in_pieces(row)), dtype=dtype)

    def _export(self) -> tuple[list[SessionInfo], SessionStats, list[int]]:
        """Every session, the counters and each session's start depth (0
        for a root), for dump: read in pieces as list_sessions is, the
        counters last (`_dump.settle` makes a file of it that loads)."""
        pairs = list(self._rows_in_pieces(lambda s: (s.info(), s.start_depth)))
        with self._lock:
            stats = self._stats()
        return [info for info, _ in pairs], stats, [start for _, start in pairs]

    def _restore(
        self,
        infos: list[SessionInfo],
        counters: tuple[int, int, int],
        start_depths: list[int] | None = None,
    ) -> None:
        """Fill an empty manager from `_export`'s rows (load): all or nothing."""
        rows = check_restore(infos, counters)
        starts = check_tree(rows, start_depths)
        restored = []
        for info, start in zip(rows, starts):
            session = _Session(
                key_of(info.id), info.created_at_ns, info.expires_at_ns, self._config
            )
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
            if info.parent_id is not None:
                session.parent = key_of(info.parent_id)
                session.root = key_of(info.root_id)
                session.start_depth = start
            restored.append(session)
        with self._lock:
            if self._sessions or self._created:
                raise ValueError("restore needs a new, empty manager")
            for session in restored:
                self._sessions[session.key] = session
            for session in restored:
                if session.parent is not None:
                    self._sessions[session.parent].kids.add(session.key)
                if session.vm is not None:
                    self._vm_to_session[session.vm] = session.key
            self._created, self._destroyed, self._expired = counters

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write every session and the counters to `path`, atomically
        (docs/dump-format.md)."""
        dump(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        config: RlmConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
        on_remove: Callable[[SessionInfo, str], object] | None = None,
    ) -> "SessionManager":
        """A new manager holding what `dump` wrote, with the dumped config
        unless `config` is given; a bad file raises Serialization. `clock`
        and `on_remove` as for the constructor."""

        def make(config: RlmConfig, *, clock: Callable[[], int] | None) -> SessionManager:
            return cls(config, clock=clock, on_remove=on_remove)

        return load(make, path, config, clock=clock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        try:
            key = key_of(session_id)
        except (TypeError, InvalidSessionToken):
            return False
        with self._lock:
            return key in self._sessions

    def __repr__(self) -> str:
        return f"<SessionManager (python) sessions={len(self)}>"

    def __reduce__(self) -> Any:
        raise TypeError("a SessionManager cannot be pickled; use dump()/load()")


def _deeper(session: _Session) -> None:
    """One level deeper, unless that passes the session's maximum."""
    if session.depth >= session.max_depth:
        raise RecursionDepthExceeded(session.depth + 1, session.max_depth)
    session.depth += 1


def _check_path(path: list[_Session]) -> None:
    """Raise the first exhausted budget on the path, root first: tokens,
    then time, then depth, for each session (`BudgetStatus.*_exhausted`)."""
    for node in path:
        if node.tokens_used >= node.token_budget:
            raise TokenBudgetExceeded(node.tokens_used, node.token_budget)
        if node.time_used_ms >= node.time_budget_ms:
            raise TimeBudgetExceeded(node.time_used_ms, node.time_budget_ms)
        if node.depth > node.max_depth:
            raise RecursionDepthExceeded(node.depth, node.max_depth)


def _roll_up(
    path: list[_Session], tokens: int | None, time_ms: int | None
) -> TokenBudgetExceeded | TimeBudgetExceeded | None:
    """Add the amounts to every session on the path, all or nothing: a
    total past 2**64-1 anywhere raises ValueError with nothing changed. The
    budget error to raise afterwards (a charged amount that was spent stays
    recorded), for the session nearest the root whose budget was passed,
    tokens before time; None if none was passed."""
    if tokens is not None and any(n.tokens_used + tokens > U64_MAX for n in path):
        raise ValueError(MSG_TOKENS_OVERFLOW)
    if time_ms is not None and any(n.time_used_ms + time_ms > U64_MAX for n in path):
        raise ValueError(MSG_TIME_OVERFLOW)
    for node in path:
        if tokens is not None:
            node.tokens_used += tokens
        if time_ms is not None:
            node.time_used_ms += time_ms
    if tokens is not None:
        for node in path:
            if node.tokens_used > node.token_budget:
                return TokenBudgetExceeded(node.tokens_used, node.token_budget)
    if time_ms is not None:
        for node in path:
            if node.time_used_ms > node.time_budget_ms:
                return TimeBudgetExceeded(node.time_used_ms, node.time_budget_ms)
    return None


def _child_budget(asked: int | None, budget: int, used: int, name: str) -> int:
    """A child's budget: what its parent has left, or `asked` if no more."""
    left = budget - used if budget > used else 0
    if asked is None:
        return left
    if asked > left:
        raise ValueError(f"{name} {asked} is above what the parent has left ({left})")
    return asked


def _copy_config(config: RlmConfig) -> RlmConfig:
    return copy.deepcopy(config)


SessionManager.__module__ = "rlm_fast"
