"""asyncio over the session table (SPEC 13): `AsyncSessionManager` gives an
in-process manager's methods as coroutines that run inline (an in-process
call never blocks, so it needs no thread and never yields to the loop), and
`reap()` removes expired sessions from a task. Code written against
AsyncSessionManager runs unchanged on `rlm_fast.redis.AsyncRedisSessionManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ._lifecycle import ModelCall, check_interval, log
from ._session_py import SessionManager as _Twin

if TYPE_CHECKING:
    from ._session_py import SessionId

__all__ = ["AsyncSessionManager", "reap", "WRAPPED", "NOT_WRAPPED"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _inline(
    method: Callable[Concatenate[_Twin, _P], _R],
) -> Callable[Concatenate["AsyncSessionManager", _P], Coroutine[Any, Any, _R]]:
    """The coroutine form of one manager method, typed as the twin's (the
    specification) and run on whichever manager is wrapped: it calls the
    method directly, so the coroutine completes at its first step."""
    name = method.__name__

    async def inline(self: AsyncSessionManager, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return getattr(self.manager, name)(*args, **kwargs)  # type: ignore[no-any-return]

    inline.__name__ = name
    inline.__qualname__ = f"AsyncSessionManager.{name}"
    inline.__doc__ = method.__doc__
    return inline


class AsyncSessionManager:
    """An in-process `SessionManager` (either core) as coroutines.

    Every method of the manager but the ones in `NOT_WRAPPED` is here, with
    the same arguments, results and errors, run inline: no thread hop, no
    suspension (the manager's own lock is never held across an await, so
    no other task can wait on it). `recursion(id)` and `call(id)` are async
    context managers. `manager` is the wrapped manager, for sync use.
    """

    __slots__ = ("manager",)

    def __init__(self, manager: _Twin) -> None:
        if isinstance(manager, AsyncSessionManager):  # type: ignore[unreachable]
            raise TypeError("AsyncSessionManager wraps an in-process SessionManager, not another wrapper")
        if any(inspect.iscoroutinefunction(getattr(manager, n, None)) for n in ("begin_call", "get_session")):
            raise TypeError(
                f"{type(manager).__name__} is already async: use it directly, not through AsyncSessionManager"
            )
        self.manager = manager

    def __repr__(self) -> str:
        return f"AsyncSessionManager({self.manager!r})"

    @property
    def config(self) -> Any:
        """A copy of the wrapped manager's configuration."""
        return self.manager.config

    # -- sessions ---------------------------------------------------------------
    create_session = _inline(_Twin.create_session)
    create_child_session = _inline(_Twin.create_child_session)
    children = _inline(_Twin.children)
    get_session = _inline(_Twin.get_session)
    update_session_state = _inline(_Twin.update_session_state)
    is_session_valid = _inline(_Twin.is_session_valid)
    validate_session = _inline(_Twin.validate_session)
    extend_session = _inline(_Twin.extend_session)
    destroy_session = _inline(_Twin.destroy_session)
    cleanup_expired_sessions = _inline(_Twin.cleanup_expired_sessions)
    pop_expired_sessions = _inline(_Twin.pop_expired_sessions)
    # -- VMs --------------------------------------------------------------------
    assign_vm = _inline(_Twin.assign_vm)
    release_vm = _inline(_Twin.release_vm)
    get_assigned_vm = _inline(_Twin.get_assigned_vm)
    get_session_for_vm = _inline(_Twin.get_session_for_vm)
    # -- context variables ------------------------------------------------------
    set_context_variable = _inline(_Twin.set_context_variable)
    get_context_variable = _inline(_Twin.get_context_variable)
    get_all_context_variables = _inline(_Twin.get_all_context_variables)
    delete_context_variable = _inline(_Twin.delete_context_variable)
    # -- budgets, depth and the model-call step ---------------------------------
    update_budget = _inline(_Twin.update_budget)
    increment_recursion_depth = _inline(_Twin.increment_recursion_depth)
    decrement_recursion_depth = _inline(_Twin.decrement_recursion_depth)
    charge_tokens = _inline(_Twin.charge_tokens)
    charge_time = _inline(_Twin.charge_time)
    check_budget = _inline(_Twin.check_budget)
    begin_call = _inline(_Twin.begin_call)
    end_call = _inline(_Twin.end_call)
    # -- snapshots --------------------------------------------------------------
    record_snapshot_created = _inline(_Twin.record_snapshot_created)
    record_snapshot_restored = _inline(_Twin.record_snapshot_restored)
    get_current_snapshot = _inline(_Twin.get_current_snapshot)
    clear_snapshot_tracking = _inline(_Twin.clear_snapshot_tracking)
    # -- the whole table --------------------------------------------------------
    get_stats = _inline(_Twin.get_stats)
    list_sessions = _inline(_Twin.list_sessions)
    validate_many = _inline(_Twin.validate_many)
    budget_table = _inline(_Twin.budget_table)

    async def dump(self, path: str | os.PathLike[str]) -> None:
        """`manager.dump(path)` in a worker thread: it writes and fsyncs a
        file, the one call of the table that waits on the disk."""
        await asyncio.to_thread(self.manager.dump, path)

    @contextlib.asynccontextmanager
    async def recursion(self, session_id: SessionId | str) -> AsyncIterator[int]:
        """`async with am.recursion(id) as depth:` the depth goes up on entry
        and down on every exit, exception or not (as `manager.recursion`)."""
        with self.manager.recursion(session_id) as depth:
            yield depth

    @contextlib.asynccontextmanager
    async def call(self, session_id: SessionId | str) -> AsyncIterator[ModelCall]:
        """`async with am.call(id) as c:` one model call: `begin_call` on
        entry; on every exit `end_call` with `c.tokens` and the elapsed time.
        It runs the manager's own `call()`, so the elapsed time is read from
        the manager's clock when it was given one (docs/lifecycle.md)."""
        with self.manager.call(session_id) as step:
            yield step


#: The manager methods AsyncSessionManager offers as coroutines.
WRAPPED: tuple[str, ...] = tuple(
    name for name, value in vars(AsyncSessionManager).items()
    if not name.startswith("_") and callable(value) and name not in ("recursion", "call")
)
#: Public manager names it leaves out, and why.
NOT_WRAPPED: dict[str, str] = {
    "config": "a property (AsyncSessionManager.config reads it)",
    "load": "a classmethod that makes a manager: wrap SessionManager.load(...)",
    "start_reaper": "a thread; on asyncio, run reap(am) as a task",
}


async def reap(manager: Any, interval_s: float = 1.0) -> None:
    """Remove expired sessions every `interval_s` seconds until cancelled.

    `manager` is an in-process manager or an AsyncSessionManager (the sweep
    runs inline) or an async Redis manager (any object whose
    `pop_expired_sessions` is a coroutine function: it is awaited). Removals
    go through the manager's `on_remove`. An exception in a sweep is logged
    and the next round tries again; cancellation ends it (a sweep under way
    on an async manager is cancelled with it, which Redis applies whole or
    not at all). A sync Redis manager would block the loop: give it its own
    thread with `start_reaper()`, or use the async one.
    """
    interval = check_interval(interval_s)
    sweep = manager.pop_expired_sessions
    awaited = inspect.iscoroutinefunction(sweep)
    while True:
        await asyncio.sleep(interval)
        try:
            if awaited:
                await sweep()
            else:
                sweep()
        except Exception:  # the next round tries again
            log.exception("reap(): the sweep raised")
