"""A session table shared by many processes and hosts, kept in Redis.

`RedisSessionManager` has the API, errors and guarantees of
`rlm_fast.SessionManager` (SPEC 3, 4, 10 and the call trees of 11,
docs/trees.md); every operation is one Lua
script run atomically by the server, so the guarantees hold across every
process that talks to the same Redis and namespace. Layout, time, TTLs and
failure semantics are in docs/redis.md. Needs redis-py
(`pip install 'rlm_fast[redis]'`) and Redis 7.0 or newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

try:
    import redis as _redis
    from redis.exceptions import (
        BusyLoadingError as _BusyLoadingError,
        NoScriptError as _NoScriptError,
        RedisError as _RedisError,
        ResponseError as _ResponseError,
    )
    from redis.exceptions import ConnectionError as _ConnectionError
    from redis.exceptions import TimeoutError as _TimeoutError
except ImportError:  # pragma: no cover - depends on the environment
    # Raised inside the handler: the missing module stays its __context__.
    raise ImportError("rlm_fast.redis needs redis-py: pip install 'rlm_fast[redis]'")

import rlm_fast as _package  # fully imported before any of its submodules run

from ._redis_lua import COUNTING, SCRIPTS
from ._bulk import budget_table_dtype, numpy, raw_ids
from ._checks import (
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    U32_MAX,
    check_clock_value,
    check_str,
    check_u64,
    session_id_type_error,
)
from ._dump import check_restore, check_tree
from ._lifecycle import (
    AsyncModelCall,
    ModelCall,
    Reaper,
    ReaperSlot,
    check_on_remove,
    log_created,
    log_vm_moved,
    report_removed,
)
from ._dump import dump as _dump
from ._dump import load as _load
from ._registry import foreign_session_id, result_kind
from ._results import STATE_CODE, SessionState, coerce_state
from .config import RlmConfig, resolve_config
from .errors import (
    ConfigError,
    Internal,
    InvalidSessionState,
    InvalidSessionToken,
    Io,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    RlmError,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

__all__ = ["RedisSessionManager", "AsyncRedisSessionManager", "DEFAULT_TTL_GRACE_SECS"]

#: How long Redis keeps a session's key after the session expired, if no
#: cleanup_expired_sessions() or destroy_session() removed it first.
DEFAULT_TTL_GRACE_SECS = 86_400

_NS_PER_S = 1_000_000_000
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLEANUP_BATCH = 1000
_PATHS_KEPT = 100_000  # sessions whose ancestors a manager remembers
_CTX = "ctx:"  # prefix of context-variable fields in a session's hash
_STATE_BY_VALUE = {s.value: s for s in SessionState}

# Error replies meaning "refused, not run" (the server was loading, a
# replica, out of memory, busy, ...): they become Io, like a lost connection.
_REFUSALS = (
    "LOADING", "READONLY", "OOM", "BUSY", "MASTERDOWN", "CLUSTERDOWN",
    "TRYAGAIN", "NOREPLICAS", "MISCONF", "NOPERM", "NOAUTH",
)
_CONNECTION_ERRORS = (_ConnectionError, _TimeoutError)


def _text(value: bytes | str) -> str:
    """A reply value as str (clients may or may not decode responses)."""
    return value if type(value) is str else value.decode("utf-8")  # type: ignore[union-attr]


def _pairs(reply: Any) -> Any:
    """(field, value) pairs of an HGETALL reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=True)


_MS_MAX = 2**48 - 1  # the ULID time field


def _time_part(ms: int) -> str:
    """The 10 Crockford base32 characters of a ULID's time (clamped)."""
    ms = min(max(ms, 0), _MS_MAX)
    return "".join(_ALPHABET[(ms >> shift) & 31] for shift in range(45, -5, -5))


def _random_part() -> str:
    """The 80 random bits of a new id as 16 Crockford base32 characters."""
    value = int.from_bytes(os.urandom(10), "big")
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(75, -5, -5))


if TYPE_CHECKING:  # type checkers see the twin, as for rlm_fast itself
    from ._results import BudgetStatus, SessionInfo, SessionStats
    from ._session_id_py import SessionId
else:
    # The active core's id and result classes: the manager returns exactly
    # what rlm_fast.SessionManager returns.
    SessionId = _package.SessionId
    SessionInfo = _package.SessionInfo
    BudgetStatus = _package.BudgetStatus
    SessionStats = _package.SessionStats

_log = logging.getLogger("rlm_fast")


class _Script:
    """One Lua script: its name, source and SHA1."""

    __slots__ = ("name", "source", "sha", "registered")

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self.source = SCRIPTS[name]
        # redis-py computes the SHA with the client's encoder; its Script
        # object also serves clients we cannot send to directly (cluster).
        self.registered = client.register_script(self.source)
        self.sha: str = self.registered.sha


class _Unsent(Exception):
    """A connection error before the request was sent whole: it did not run."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


# One request of an operation (see _Table): (operation, script name or ""
# for a plain command, keys, args, quiet). A quiet request's own failure is
# ignored (the count of a refusal that is raised anyway).
_Request = tuple[str, str, Sequence[str], Sequence[Any], bool]
_READS = "|"  # a request of read-only commands (args), pipelined
_T = TypeVar("_T")
_P = ParamSpec("_P")
_Op = Generator[_Request, Any, _T]


def _direct_pool(client: Any) -> Any:
    """The client's connection pool when the sender may take connections
    from it itself (a plain client, not single-connection, not a cluster)."""
    pool = getattr(client, "connection_pool", None)
    direct = (
        pool is not None
        and getattr(client, "connection", None) is None
        and callable(getattr(pool, "get_connection", None))
        and callable(getattr(pool, "release", None))
    )
    return pool if direct else None


def _get_args(pool: Any) -> tuple[str, ...]:
    if pool is None:
        return ()
    # redis-py before 5.3 wants a command name; later ones warn on it.
    param = inspect.signature(pool.get_connection).parameters.get("command_name")
    if param is not None and param.default is inspect.Parameter.empty:
        return ("EVALSHA",)
    return ()


class _Sender:
    """Sends commands and never resends one the server may have run.

    redis-py retries a command whose connection failed (3 times by default
    since 6.0); a retried write whose first try ran but whose reply was lost
    would run twice (a charge counted twice). So for plain `redis.Redis`
    clients the sender takes a connection from the client's pool itself: a
    request that was not sent whole never runs on the server and is sent
    once more on a fresh connection; a request lost after it was sent is
    reported as `Io`, its outcome unknown but whole or nothing. Other
    clients (`RedisCluster`, single-connection clients) go through their own
    `execute_command`, with their own retry policy (docs/redis.md).
    """

    def __init__(self, client: Any, scripts: dict[str, "_Script"]) -> None:
        self.client = client
        self.scripts = scripts
        self.pool = _direct_pool(client)
        self.get_args = _get_args(self.pool)

    def execute(self, request: _Request) -> Any:
        operation, name, keys, args, _ = request
        if name == _READS:
            return self.reads(operation, args)
        if name:
            return self.script(operation, self.scripts[name], keys, args)
        return self.command(operation, *args)

    def command(self, operation: str, *args: Any) -> Any:
        """Run one command; return its raw reply."""
        if self.pool is None:
            return _guard(operation, self.client.execute_command, *args)
        return _guard(operation, self._direct, args)

    def reads(self, operation: str, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run read-only commands, pipelined on one connection (one round
        trip); their raw replies."""
        if self.pool is None:
            return [_guard(operation, self.client.execute_command, *c) for c in commands]
        return _guard(operation, self._direct_reads, commands)  # type: ignore[no-any-return]

    def _direct_reads(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pool = self.pool
        assert pool is not None
        try:
            conn = pool.get_connection(*self.get_args)
        except _CONNECTION_ERRORS as exc:
            raise _Unsent(exc) from exc
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except _ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            pool.release(conn)
        for reply in replies:
            if isinstance(reply, _ResponseError):
                raise reply
        return replies

    def _direct(self, args: tuple[Any, ...]) -> Any:
        pool = self.pool
        assert pool is not None
        try:
            conn = pool.get_connection(*self.get_args)
        except _CONNECTION_ERRORS as exc:
            raise _Unsent(exc) from exc
        try:
            try:
                conn.send_command(*args)
            except _CONNECTION_ERRORS:
                # Not sent whole, so never run: once more, on a fresh socket.
                conn.disconnect()
                try:
                    conn.send_command(*args)
                except _CONNECTION_ERRORS as exc:
                    conn.disconnect()
                    raise _Unsent(exc) from exc
            try:
                return conn.read_response()
            except _ResponseError:
                raise  # an error reply, read whole: the connection is fine
            except BaseException:
                # The reply is lost (the outcome is unknown), or a signal
                # interrupted the read: never let the next call read it.
                conn.disconnect()
                raise
        finally:
            pool.release(conn)

    def script(self, operation: str, script: "_Script", keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script by SHA; load it and run it again on NOSCRIPT (a
        NOSCRIPT reply means it did not run, e.g. after a restart)."""
        if self.pool is None:  # redis-py's Script does the same
            return _guard(operation, script.registered, keys, args)
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.command(operation, *evalsha)
        except _NoScriptError:
            _log.debug("rlm_fast.redis: loading script %s (%s) into Redis", script.name, script.sha)
            self.command(operation, "SCRIPT", "LOAD", script.source)
            try:
                return self.command(operation, *evalsha)
            except _NoScriptError as exc:
                raise Internal(f"Redis did not keep script {script.name}: {exc}") from exc


def _discard(conn: Any) -> None:
    """Close a connection at once, without awaiting: a call cancelled (or
    failed) between sending its request and reading the reply must never
    leave that reply to be read by the next call on the connection."""
    force = getattr(conn, "_force_disconnect", None)  # redis-py 5.3+
    if callable(force):
        force()
        return
    writer = getattr(conn, "_writer", None)
    if writer is not None:
        writer.close()
    for name in ("_reader", "_writer"):
        if hasattr(conn, name):
            setattr(conn, name, None)
    parser = getattr(conn, "_parser", None)
    if parser is not None and callable(getattr(parser, "on_disconnect", None)):
        parser.on_disconnect()


class _AsyncSender:
    """`_Sender` over `redis.asyncio`: the same rule against resending, and
    cancellation-safe. A script runs atomically on the server, so a call
    cancelled at any await is applied whole or not at all; the connection is
    the danger: a call cancelled after its request left and before its reply
    was read is disconnected there and then (never returned to the pool with
    a reply pending), so the next call never reads another call's reply."""

    def __init__(self, client: Any, scripts: dict[str, "_Script"]) -> None:
        self.client = client
        self.scripts = scripts
        self.pool = _direct_pool(client)
        self.get_args = _get_args(self.pool)

    async def execute(self, request: _Request) -> Any:
        operation, name, keys, args, _ = request
        if name == _READS:
            return await self.reads(operation, args)
        if name:
            return await self.script(operation, self.scripts[name], keys, args)
        return await self.command(operation, *args)

    async def command(self, operation: str, *args: Any) -> Any:
        if self.pool is None:
            return await _aguard(operation, self.client.execute_command, *args)
        return await _aguard(operation, self._direct, args)

    async def reads(self, operation: str, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self.pool is None:
            return [await _aguard(operation, self.client.execute_command, *c) for c in commands]
        return await _aguard(operation, self._direct_reads, commands)  # type: ignore[no-any-return]

    async def _direct_reads(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pool = self.pool
        assert pool is not None
        try:
            conn = await pool.get_connection(*self.get_args)
        except _CONNECTION_ERRORS as exc:
            raise _Unsent(exc) from exc
        try:
            try:
                await conn.send_packed_command(conn.pack_commands(commands))
                replies = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except _ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                _discard(conn)  # replies may be left unread: never reuse it
                raise
        finally:
            await pool.release(conn)
        for reply in replies:
            if isinstance(reply, _ResponseError):
                raise reply
        return replies

    async def _direct(self, args: tuple[Any, ...]) -> Any:
        pool = self.pool
        assert pool is not None
        try:
            conn = await pool.get_connection(*self.get_args)
        except _CONNECTION_ERRORS as exc:
            raise _Unsent(exc) from exc
        try:
            try:
                try:
                    await conn.send_command(*args)
                except _CONNECTION_ERRORS:
                    # Not sent whole, so never run: once more, fresh socket.
                    _discard(conn)
                    try:
                        await conn.send_command(*args)
                    except _CONNECTION_ERRORS as exc:
                        _discard(conn)
                        raise _Unsent(exc) from exc
                return await conn.read_response()
            except _ResponseError:
                raise  # an error reply, read whole: the connection is fine
            except BaseException:
                # Cancelled or failed with the request (maybe partly) sent
                # and its reply unread: the connection goes, now, before
                # the pool can hand it to another call.
                _discard(conn)
                raise
        finally:
            await pool.release(conn)

    async def script(
        self, operation: str, script: "_Script", keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        if self.pool is None:  # redis-py's AsyncScript: EVALSHA, NOSCRIPT -> load
            return await _aguard(operation, script.registered, keys, args)
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.command(operation, *evalsha)
        except _NoScriptError:
            _log.debug("rlm_fast.redis: loading script %s (%s) into Redis", script.name, script.sha)
            await self.command(operation, "SCRIPT", "LOAD", script.source)
            try:
                return await self.command(operation, *evalsha)
            except _NoScriptError as exc:
                raise Internal(f"Redis did not keep script {script.name}: {exc}") from exc


def _failure(operation: str, exc: BaseException) -> tuple[BaseException, BaseException] | None:
    """The rlm_fast error (and its cause) for a failure of Redis: connection
    trouble and refusals become Io, other error replies Internal. None for
    what passes through (NOSCRIPT: the caller reloads the script; anything
    that is not the store's)."""
    if isinstance(exc, _Unsent):
        note = "the request was not sent; the call was not applied"
        return _io(operation, exc.error, note), exc.error
    if isinstance(exc, _BusyLoadingError):
        return _io(operation, exc, "the server is loading its data; the call was not applied"), exc
    if isinstance(exc, _CONNECTION_ERRORS):
        note = "the request may have run: the call was applied whole or not at all"
        return _io(operation, exc, note), exc
    if isinstance(exc, _NoScriptError):
        return None
    if isinstance(exc, _ResponseError):
        message = str(exc)
        if message.startswith(_REFUSALS):
            return _io(operation, exc, "the server refused it; the call was not applied"), exc
        return Internal(f"Redis answered {operation} with an error: {message}"), exc
    if isinstance(exc, _RedisError):  # e.g. a cluster routing failure
        return _io(operation, exc, "the call was applied whole or not at all"), exc
    return None


def _guard(operation: str, call: Callable[..., Any], *args: Any) -> Any:
    """call(*args), with Redis's failures turned into rlm_fast errors."""
    try:
        return call(*args)
    except Exception as exc:
        failure = _failure(operation, exc)
        if failure is None:
            raise
        raise failure[0] from failure[1]


async def _aguard(operation: str, call: Callable[..., Any], *args: Any) -> Any:
    """`_guard` for a coroutine function."""
    try:
        return await call(*args)
    except Exception as exc:
        failure = _failure(operation, exc)
        if failure is None:
            raise
        raise failure[0] from failure[1]


def _io(operation: str, exc: BaseException, note: str) -> Io:
    return Io(f"Redis {operation} failed ({type(exc).__name__}: {exc}); {note}")


def _ids_sorted(rows: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    return sorted(rows, key=lambda row: row[0])  # ULID text order is id order


class _Table:
    """What both Redis managers share: the arguments' checks, the requests
    of each operation and the parsing of their replies, written once.

    Each operation is a generator (`_op_*`): it checks its arguments, then
    yields each request (one script, or one plain command: one round trip)
    and receives its raw reply, and returns the result or raises the
    operation's error. `RedisSessionManager` drives it with a blocking
    client, `AsyncRedisSessionManager` with `redis.asyncio`; neither adds
    logic of its own."""

    _blocking = True

    def __init__(
        self,
        client: Any,
        config: RlmConfig | None = None,
        *,
        namespace: str = "rlm",
        clock: Callable[[], int] | None = None,
        on_remove: Callable[[SessionInfo, str], object] | None = None,
        ttl_grace_secs: int = DEFAULT_TTL_GRACE_SECS,
    ) -> None:
        if hasattr(self, "_config"):
            raise TypeError(f"{type(self).__name__} is already initialised")
        config = resolve_config(config)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        self._on_remove = check_on_remove(on_remove)
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(
                f"client must be a redis-py client (redis.Redis or redis.RedisCluster), "
                f"not {type(client).__name__}"
            )
        if isinstance(client, _redis.client.Pipeline) or type(client).__name__ == "Pipeline":
            raise TypeError("client must be a redis-py client, not a pipeline")
        is_async = inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        if self._blocking and is_async:
            raise TypeError(
                "client must be a synchronous redis-py client, not redis.asyncio "
                "(use AsyncRedisSessionManager)"
            )
        if not self._blocking and not is_async:
            raise TypeError(
                "client must be a redis.asyncio client (redis.asyncio.Redis or "
                "RedisCluster); use RedisSessionManager for a synchronous one"
            )
        namespace = check_str(namespace, "namespace", nonempty=True)
        if "{" in namespace or "}" in namespace:
            raise ValueError("namespace must not contain '{' or '}' (it becomes the hash tag)")
        grace = check_u64(ttl_grace_secs, "ttl_grace_secs")
        if grace > 10 * 365 * 86_400:
            raise ValueError("ttl_grace_secs must be at most ten years")
        encoding = _client_encoding(client)
        if encoding is not None and encoding.replace("-", "").replace("_", "").lower() != "utf8":
            raise ValueError(f"the client must use the UTF-8 encoding, not {encoding!r}")

        self._config = config
        self._clock = clock
        self._namespace = namespace
        self._client = client
        self._scripts = {name: _Script(client, name) for name in SCRIPTS}

        tag = "{" + namespace + "}"
        self._session_prefix = tag + ":s:"
        self._children_prefix = tag + ":c:"  # the Lua side builds it too (kids_key)
        self._stats_key = tag + ":stats"
        self._expiry_key = tag + ":expiry"
        self._vms_key = tag + ":vms"
        self._refusals_key = tag + ":refusals"  # SessionStats.rejected_*
        self._paths: dict[str, tuple[str, ...]] = {}  # sid -> ancestors, root first
        self._skew_ms = 0  # the server's clock minus this host's, as last seen

        # Config values as the scripts take them (decimal strings).
        own = self._config
        self._duration = str(own.session_duration_secs * _NS_PER_S)
        self._increment_ns = str(own.extension_increment_secs * _NS_PER_S)
        self._max_extensions = own.max_extensions
        # 0 (no limit): the count still stops at the crate's u32 maximum.
        self._max_snapshots = own.max_snapshots_per_session or U32_MAX
        self._grace_secs = grace
        self._grace_ms = str(grace * 1000)
        self._budgets = (
            str(own.token_budget),
            str(own.time_budget_ms),
            str(own.max_recursion_depth),
        )
        # How requests go out: blocking calls, or awaited ones.
        self._sender: Any = (_Sender if self._blocking else _AsyncSender)(client, self._scripts)
        self._reapers = ReaperSlot()  # the sync manager's start_reaper

    # -- properties -----------------------------------------------------------

    @property
    def config(self) -> RlmConfig:
        """A copy of the configuration the manager runs with."""
        return copy.deepcopy(self._config)

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def client(self) -> Any:
        return self._client

    # -- requests -------------------------------------------------------------

    def _script(
        self, operation: str, name: str, keys: Sequence[str], args: Sequence[Any], quiet: bool = False
    ) -> _Request:
        """A request running script `name`; a counting script gets the
        namespace's refusal counters and expiry index after its own keys."""
        if name in COUNTING:
            keys = (*keys, self._refusals_key, self._expiry_key)
        return (operation, name, keys, args, quiet)

    def _command(self, operation: str, *args: Any) -> _Request:
        return (operation, "", (), args, False)

    def _reads(self, operation: str, commands: Sequence[tuple[Any, ...]]) -> _Request:
        return (operation, _READS, (), tuple(commands), False)

    def _tree_keys(self, operation: str, roots: Sequence[str]) -> _Op[list[str]]:
        """Read, before a removal, the ids it may touch: `roots`, their
        parents and every descendant (children sets level by level, one
        round trip each); the KEYS pairs (session key, children set key) of
        all of them. The removing script checks they still cover the trees
        and answers 'retry' otherwise."""
        if not roots:
            return []
        replies = yield self._reads(
            operation,
            [("HGET", self._key(sid), "parent") for sid in roots]
            + [("SMEMBERS", self._children_key(sid)) for sid in roots],
        )
        names = set(roots)
        names.update(_text(p) for p in replies[: len(roots)] if p is not None)
        seen = set(roots)
        level = {_text(k) for kids in replies[len(roots):] for k in kids} - seen
        while level:
            seen |= level
            found = yield self._reads(
                operation, [("SMEMBERS", self._children_key(sid)) for sid in sorted(level)]
            )
            level = {_text(k) for kids in found for k in kids} - seen
        names |= seen
        keys = []
        for sid in sorted(names):
            keys += [self._key(sid), self._children_key(sid)]
        return keys

    # Every key a script touches is in its KEYS (docs/redis.md, "Keys"): a
    # session's ancestors are named by the caller. They never change, so
    # the manager remembers each session's ancestors (root first) once
    # learnt; an unknown session is taken for a root, and a script told the
    # wrong ancestors answers {'path', the right ones} without doing
    # anything: the manager learns them and runs it again.

    def _ancestors(self, sid: str) -> tuple[str, ...]:
        return self._paths.get(sid, ())

    def _learn(self, sid: str, ancestors: tuple[str, ...]) -> None:
        paths = self._paths
        if len(paths) >= _PATHS_KEPT and sid not in paths:
            paths.clear()  # a bound, not an LRU: relearning costs one round trip
        paths[sid] = ancestors

    def _on_path(
        self,
        operation: str,
        name: str,
        sid: str,
        keys: Sequence[str] | Callable[[tuple[str, ...]], Sequence[str]],
        args: Sequence[Any],
        tail: Sequence[str] = (),
    ) -> _Op[Any]:
        """Run script `name` on the path of session `sid`: the ancestors'
        keys follow `keys` (or what `keys(ancestors)` returns) in KEYS, and
        their number ends ARGV. One round trip when the ancestors are known."""
        while True:
            ancestors = self._ancestors(sid)
            fixed = keys(ancestors) if callable(keys) else keys
            reply = yield self._script(
                operation,
                name,
                (*fixed, *(self._key(a) for a in ancestors), *tail),
                (*args, len(ancestors)),
            )
            if _text(reply[0]) != "path":
                return reply
            learnt = tuple(_text(reply[1]).split())
            if learnt == ancestors:  # pragma: no cover - a script bug, never a loop
                raise Internal(f"Redis kept refusing the ancestors of {sid} in {operation}")
            self._learn(sid, learnt)

    # -- helpers --------------------------------------------------------------

    def _sid(self, session_id: object) -> tuple[str, SessionId]:
        """(canonical id string, rlm_fast.SessionId) of an id argument."""
        if type(session_id) is SessionId:
            return str(session_id), session_id
        if isinstance(session_id, str):
            sid = SessionId.from_string(session_id)
            return str(sid), sid
        value = foreign_session_id(session_id)  # the other core's SessionId
        if value is not None:
            sid = SessionId.from_int(value)
            return str(sid), sid
        raise session_id_type_error(session_id)

    def _id(self, session_id: object) -> _Op[tuple[str, SessionId]]:
        """`_sid` for a method whose refusals count: a malformed string id
        counts in rejected_invalid_token (one script), then raises."""
        try:
            return self._sid(session_id)
        except InvalidSessionToken:
            yield self._script("refuse", "refuse", (), (), quiet=True)
            raise

    def _new_keys(self, now: str, random: str, attempt: int) -> list[str]:
        """The candidate keys of a new session whose id ends in `random`: its
        id's time is the script's now in ms. With a clock that is `now`;
        with the server's clock, the server's ms as this host estimates it
        (its skew learnt from the scripts), give or take a few ms, more on
        each new attempt."""
        if now:
            return [self._key(_time_part(int(now) // 1_000_000) + random)]
        guess = time.time_ns() // 1_000_000 + self._skew_ms
        return [
            self._key(_time_part(guess + d) + random) for d in range(-1 - attempt, 3 + attempt)
        ]

    def _skewed(self, reply: Any) -> None:
        """A create's 'skew' answer: the server's ms, to estimate from."""
        self._skew_ms = int(reply[1]) - time.time_ns() // 1_000_000

    def _now(self) -> str:
        """The manager clock's reading for a script ('' = the server's TIME)."""
        if self._clock is None:
            return ""
        return str(check_clock_value(self._clock()))

    def _key(self, sid: str) -> str:
        return self._session_prefix + sid

    def _children_key(self, sid: str) -> str:
        return self._children_prefix + sid

    def _status(self, reply: Any, sid_obj: SessionId, operation: str) -> Any:
        """The reply of a session script whose status must be 'ok', else the
        refusal it names: a failed path check names the session that failed
        (it or an ancestor: validity flows down, docs/trees.md) after its
        status; a budget refusal carries the exception's two numbers."""
        status = _text(reply[0])
        if status == "ok":
            return reply
        if status == "notfound":
            raise SessionNotFound(sid_obj)
        if status in ("terminated", "expired", "cycle"):
            if len(reply) > 1:
                who = _text(reply[1])
                if who != str(sid_obj):
                    sid_obj = SessionId.from_string(who)
            if status == "terminated":
                raise InvalidSessionState(sid_obj, "Terminated", operation)
            if status == "expired":
                raise SessionExpired(sid_obj)
        elif status == "tokens":
            raise TokenBudgetExceeded(int(reply[1]), int(reply[2]))
        elif status == "time":
            raise TimeBudgetExceeded(int(reply[1]), int(reply[2]))
        elif status == "depth":
            raise RecursionDepthExceeded(int(reply[1]), int(reply[2]))
        raise Internal(f"unexpected reply {status!r} to {operation}")

    def _info(self, sid_obj: SessionId, fields: Any) -> SessionInfo:
        """A SessionInfo from a session hash (HGETALL reply)."""
        row: dict[str, Any] = {}
        context: dict[str, str] = {}
        for name, value in _pairs(fields):
            name = _text(name)
            if name.startswith(_CTX):
                context[name[len(_CTX):]] = _text(value)
            else:
                row[name] = value
        if "state" not in row:
            # A session whose hash Redis's TTL dropped: only its VM id
            # outlived it (docs/lifecycle.md); the rest is reported empty.
            vm = row.get("vm")
            return SessionInfo._trusted(
                sid_obj, SessionState.EXPIRED, 0, 0, 0, 0,
                BudgetStatus._trusted(0, 0, 0, 0, 0, 0),
                None if vm is None else _text(vm), {}, None, 0,
            )
        depth = int(row["depth"])
        vm = row.get("vm")
        snapshot = row.get("snapshot")
        parent = row.get("parent")
        tree: tuple[SessionId, ...] = ()
        if parent is not None:  # a child: its parent and root ids
            from_string = SessionId.from_string
            tree = (from_string(_text(parent)), from_string(_text(row["root"])))
        return SessionInfo._trusted(
            sid_obj,
            _STATE_BY_VALUE[_text(row["state"])],
            int(row["created_ns"]),
            int(row["expires_ns"]),
            int(row["extension_count"]),
            depth,
            BudgetStatus._trusted(
                int(row["token_budget"]),
                int(row["tokens_used"]),
                int(row["time_budget_ms"]),
                int(row["time_used_ms"]),
                int(row["max_depth"]),
                depth,
            ),
            None if vm is None else _text(vm),
            dict(sorted(context.items())),
            None if snapshot is None else _text(snapshot),
            int(row["snapshot_count"]),
            *tree,
        )

    def _removed(self, flat: Sequence[Any]) -> list[SessionInfo]:
        """The last states of the removed sessions of a destroy or cleanup
        reply ({sid, fields, ...}), in the reply's order."""
        from_string = SessionId.from_string
        return [
            self._info(from_string(_text(flat[i])), flat[i + 1]) for i in range(0, len(flat), 2)
        ]

    @staticmethod
    def _budget(values: Sequence[Any]) -> BudgetStatus:
        return BudgetStatus._trusted(*(int(v) for v in values))

    # -- lifecycle ------------------------------------------------------------

    def _op_create_session(self) -> _Op[SessionInfo]:
        """A new root session: INITIALIZING, the config's budgets, expiring
        `session_duration_secs` from now."""
        now = self._now()
        token_budget, time_budget, max_depth = self._budgets
        for attempt in range(1_000_000):
            random = _random_part()
            reply = yield self._script(
                "create_session",
                "create",
                (self._stats_key, self._expiry_key, self._vms_key,
                 *self._new_keys(now, random, attempt)),
                (now, "", random, self._duration,
                 self._grace_ms, token_budget, time_budget, max_depth),
            )
            status = _text(reply[0])
            if status == "exists":
                continue  # never reuse a live id, however unlikely
            if status == "skew":  # none of the ids was of the server's ms
                self._skewed(reply)
                continue
            if status == "overflow":
                raise ConfigError(MSG_CREATE_OVERFLOW)
            info = SessionInfo._trusted(
                SessionId.from_string(_text(reply[1])),
                SessionState.INITIALIZING,
                int(reply[2]),
                int(reply[3]),
                0,
                0,
                BudgetStatus._trusted(
                    int(token_budget), 0, int(time_budget), 0, int(max_depth), 0
                ),
                None,
                {},
                None,
                0,
            )
            log_created(info)
            return info
        raise Internal("create_session: the server's clock could not be matched")

    def _op_create_child_session(
        self,
        parent_id: SessionId | str,
        *,
        token_budget: int | None = None,
        time_budget_ms: int | None = None,
    ) -> _Op[SessionInfo]:
        """A child session of `parent_id` in its tree (docs/trees.md): it
        starts one deeper than the parent is now, expires no later than the
        parent, and its budgets default to what the parent has left; its
        charges also count against every ancestor. One script checks the
        parent's path and creates it."""
        sid, sid_obj = yield from self._id(parent_id)
        tokens = "" if token_budget is None else str(check_u64(token_budget, "token_budget"))
        time_ms = "" if time_budget_ms is None else str(check_u64(time_budget_ms, "time_budget_ms"))
        now = self._now()
        attempt = 0
        while True:
            random = _random_part()
            reply = yield from self._on_path(
                "create_child_session",
                "create_child",
                sid,
                (self._key(sid), self._stats_key, self._expiry_key, self._vms_key,
                 self._children_key(sid)),
                (now, random, self._duration, self._grace_ms, tokens, time_ms),
                self._new_keys(now, random, attempt),
            )
            attempt += 1
            status = _text(reply[0])
            if status == "exists":
                continue  # never reuse a live id, however unlikely
            if status == "skew":  # none of the ids was of the server's ms
                self._skewed(reply)
                continue
            if status == "budget":
                name, asked, left = (_text(v) for v in reply[1:4])
                raise ValueError(f"{name} {asked} is above what the parent has left ({left})")
            self._status(reply, sid_obj, "create_child_session")
            break
        from_string = SessionId.from_string
        depth, max_depth = int(reply[4]), int(reply[5])
        child = _text(reply[1])
        self._learn(child, (*self._ancestors(sid), sid))  # checked by the script
        info = SessionInfo._trusted(
            from_string(child),
            SessionState.INITIALIZING,
            int(reply[2]),
            int(reply[3]),
            0,
            depth,
            BudgetStatus._trusted(int(reply[6]), 0, int(reply[7]), 0, max_depth, depth),
            None,
            {},
            None,
            0,
            sid_obj,
            from_string(_text(reply[8])),
        )
        log_created(info)
        return info

    def _op_children(self, session_id: SessionId | str) -> _Op[list[SessionId]]:
        """The direct children of a session, in id order (a read-only
        lookup: it works on expired and terminated sessions)."""
        sid, sid_obj = yield from self._id(session_id)
        while True:
            kids = yield self._command("children", "SMEMBERS", self._children_key(sid))
            keys = [self._key(_text(kid)) for kid in kids]
            reply = yield self._script(
                "children", "children", (self._key(sid), self._children_key(sid), *keys), ()
            )
            if _text(reply[0]) != "retry":
                break
        self._status(reply, sid_obj, "children")
        from_string = SessionId.from_string
        return [from_string(kid) for kid in sorted(_text(v) for v in reply[1])]

    def _op_get_session(self, session_id: SessionId | str) -> _Op[SessionInfo]:
        """A snapshot of any existing session (read-only lookup: expired and
        terminated ones too)."""
        sid, sid_obj = yield from self._id(session_id)
        reply = yield self._script("get_session", "get", (self._key(sid),), ())
        return self._info(sid_obj, self._status(reply, sid_obj, "get_session")[1])

    def _op_update_session_state(
        self, session_id: SessionId | str, state: SessionState | str
    ) -> _Op[None]:
        """Move a live session to `state` (a SessionState or its value);
        TERMINATED is final."""
        sid, sid_obj = yield from self._id(session_id)
        new_state = coerce_state(state)
        now = self._now()
        reply = yield from self._on_path(
            "update_session_state", "update_state", sid, (self._key(sid),), (now, new_state.value)
        )
        self._status(reply, sid_obj, "update_session_state")

    def _op_is_session_valid(self, session_id: SessionId | str) -> _Op[bool]:
        """Whether the session exists and it and every ancestor are neither
        terminated nor expired (False for a malformed string id). A False
        counts in the matching rejected_* counter, in the same script."""
        try:
            sid, _ = self._sid(session_id)
        except InvalidSessionToken:
            yield self._script("is_session_valid", "refuse", (), (), quiet=True)
            return False
        now = self._now()
        reply = yield from self._on_path(
            "is_session_valid", "is_valid", sid, (self._key(sid),), (now,))
        return _text(reply[0]) == "ok"

    def _op_validate_session(self, session_id: SessionId | str) -> _Op[SessionInfo]:
        """The session's snapshot if it and every ancestor may be used now,
        else the refusal."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "validate_session", "validate", sid, (self._key(sid),), (now,))
        return self._info(sid_obj, self._status(reply, sid_obj, "validate")[1])

    def _op_extend_session(self, session_id: SessionId | str) -> _Op[SessionInfo]:
        """Push the expiry back by `extension_increment_secs`, at most
        `max_extensions` times."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        kids = self._children_key(sid)

        def keys(ancestors: tuple[str, ...]) -> tuple[str, ...]:
            parent_kids = self._children_key(ancestors[-1]) if ancestors else kids
            return (self._key(sid), self._expiry_key, self._stats_key, self._vms_key, kids, parent_kids)

        reply = yield from self._on_path(
            "extend_session",
            "extend",
            sid,
            keys,
            (now, sid, self._increment_ns, str(self._max_extensions), self._grace_ms),
        )
        status = _text(reply[0])
        if status == "maxext":
            raise MaxExtensionsReached(sid_obj, self._max_extensions)
        if status == "overflow":
            raise ConfigError(MSG_EXTEND_OVERFLOW)
        return self._info(sid_obj, self._status(reply, sid_obj, "extend_session")[1])

    def _op_destroy_session(self, session_id: SessionId | str) -> _Op[SessionInfo]:
        """Remove the session and its whole subtree (any state), with their
        VM mappings, in one script; returns the removed session's last
        state. `on_remove` hears "destroyed" for it, then "cascade" for each
        descendant in id order, after the script returned."""
        sid, sid_obj = yield from self._id(session_id)
        while True:
            parent = yield self._command("destroy_session", "HGET", self._key(sid), "parent")
            tree = yield from self._tree_keys("destroy_session", [sid])
            # The session's own pair first (the script finds it by its id).
            reply = yield self._script(
                "destroy_session",
                "destroy",
                (self._expiry_key, self._vms_key, self._stats_key, *tree),
                (sid, "" if parent is None else _text(parent)),
            )
            if _text(reply[0]) != "retry":
                break
        self._status(reply, sid_obj, "destroy_session")
        infos = self._removed(reply[1])
        first = infos[0]
        rest = sorted(infos[1:], key=lambda info: str(info.id))
        report_removed(
            self._on_remove, [(first, "destroyed"), *((info, "cascade") for info in rest)]
        )
        return first

    def _op_cleanup_expired_sessions(self) -> _Op[list[SessionId]]:
        """Remove every session with `expires_at < now`, each with its
        subtree; every removed id, in id order.

        Runs in batches of 1000 expired sessions (and their subtrees), each
        one atomic step, all judged against the same `now`."""
        removed = yield from self._op_pop_expired_sessions()
        return [info.id for info in removed]

    def _op_pop_expired_sessions(self) -> _Op[list[SessionInfo]]:
        """Remove what `cleanup_expired_sessions` would and return the
        removed sessions' last states, in id order. `on_remove` hears
        "expired" for each session whose own expiry passed (or whose hash
        Redis's TTL dropped), "cascade" for one removed only with an expired
        ancestor."""
        operation = "cleanup_expired_sessions"
        now = self._now()
        if not now:  # the server's clock decides: read it once, for every batch
            seconds, micros = yield self._script(operation, "time", (self._expiry_key,), ())
            now = str(int(seconds) * _NS_PER_S + int(micros) * 1000)
        now_ms = int(now) // 1_000_000
        removed: list[tuple[SessionInfo, str]] = []
        try:
            while True:
                # The candidates as the script will pick them, then their
                # trees: the script runs on exactly those keys.
                earlier, same = yield self._reads(
                    operation,
                    [
                        ("ZRANGEBYSCORE", self._expiry_key, "-inf", f"({now_ms}",
                         "LIMIT", 0, _CLEANUP_BATCH),
                        ("ZRANGEBYSCORE", self._expiry_key, now_ms, now_ms),
                    ],
                )
                candidates = [_text(c) for c in earlier]
                if len(candidates) < _CLEANUP_BATCH:
                    candidates += [_text(c) for c in same]
                tree = yield from self._tree_keys(operation, candidates)
                reply = yield self._script(
                    operation,
                    "cleanup",
                    (self._expiry_key, self._vms_key, self._stats_key, *tree),
                    (now, _CLEANUP_BATCH, *candidates),
                )
                if _text(reply[0]) == "retry":  # the index or a tree changed
                    continue
                limit = int(now)
                for info in self._removed(reply[2]):
                    own = info.created_at_ns == 0 or info.expires_at_ns < limit
                    removed.append((info, "expired" if own else "cascade"))
                if int(reply[1]) == 0:
                    break
        finally:
            # What was removed is reported, even when a later batch failed.
            removed.sort(key=lambda row: str(row[0].id))
            report_removed(self._on_remove, removed)
        return [info for info, _ in removed]

    # -- VM affinity ----------------------------------------------------------

    def _op_assign_vm(self, session_id: SessionId | str, vm_instance_id: str) -> _Op[None]:
        """Pin the session to a VM, set it READY; the VM leaves any session
        that held it, and the session leaves any VM it held."""
        sid, sid_obj = yield from self._id(session_id)
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        now = self._now()
        while True:
            holder = yield self._command("assign_vm", "HGET", self._vms_key, vm)
            previous = "" if holder is None else _text(holder)
            reply = yield from self._on_path(
                "assign_vm",
                "assign_vm",
                sid,
                (self._key(sid), self._vms_key, self._expiry_key, self._key(previous or sid)),
                (now, sid, vm, previous),
            )
            if _text(reply[0]) != "retry":  # the VM changed hands since the read
                break
        self._status(reply, sid_obj, "assign_vm")
        if len(reply) > 1:
            log_vm_moved(vm, _text(reply[1]), sid_obj)

    def _op_release_vm(self, session_id: SessionId | str) -> _Op[str | None]:
        """Take the session's VM assignment away (any state); the VM id it
        had, or None."""
        sid, sid_obj = yield from self._id(session_id)
        reply = yield self._script("release_vm", "release_vm", (self._key(sid), self._vms_key), (sid,))
        self._status(reply, sid_obj, "release_vm")
        return _text(reply[1]) if len(reply) > 1 else None

    def _op_get_assigned_vm(self, session_id: SessionId | str) -> _Op[str | None]:
        """The session's VM id; None for no VM or an unknown session."""
        sid, _ = yield from self._id(session_id)
        vm = yield self._command("get_assigned_vm", "HGET", self._key(sid), "vm")
        return None if vm is None else _text(vm)

    def _op_get_session_for_vm(self, vm_instance_id: str) -> _Op[SessionId | None]:
        """The session holding the VM; None if none does."""
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        sid = yield self._command("get_session_for_vm", "HGET", self._vms_key, vm)
        return None if sid is None else SessionId.from_string(_text(sid))

    # -- context variables ----------------------------------------------------

    def _op_set_context_variable(
        self, session_id: SessionId | str, key: str, value: str
    ) -> _Op[None]:
        """Set one context variable of a live session."""
        sid, sid_obj = yield from self._id(session_id)
        name = check_str(key, "key")
        text = check_str(value, "value")
        now = self._now()
        reply = yield from self._on_path(
            "set_context_variable", "set_context", sid, (self._key(sid),), (now, _CTX + name, text)
        )
        self._status(reply, sid_obj, "set_context_variable")

    def _op_get_context_variable(self, session_id: SessionId | str, key: str) -> _Op[str | None]:
        """One context variable, or None (read-only lookup)."""
        sid, sid_obj = yield from self._id(session_id)
        name = check_str(key, "key")
        reply = yield self._script(
            "get_context_variable", "get_context", (self._key(sid),), (_CTX + name,)
        )
        self._status(reply, sid_obj, "get_context_variable")
        return _text(reply[1]) if len(reply) > 1 else None

    def _op_get_all_context_variables(self, session_id: SessionId | str) -> _Op[dict[str, str]]:
        """A copy of the context variables, sorted by key (read-only lookup)."""
        sid, sid_obj = yield from self._id(session_id)
        reply = yield self._script("get_all_context_variables", "get", (self._key(sid),), ())
        fields = self._status(reply, sid_obj, "get_all_context_variables")[1]
        context = {}
        for name, value in _pairs(fields):
            name = _text(name)
            if name.startswith(_CTX):
                context[name[len(_CTX):]] = _text(value)
        return dict(sorted(context.items()))

    def _op_delete_context_variable(
        self, session_id: SessionId | str, key: str
    ) -> _Op[str | None]:
        """Remove one context variable of a live session; the removed value
        or None."""
        sid, sid_obj = yield from self._id(session_id)
        name = check_str(key, "key")
        now = self._now()
        reply = yield from self._on_path(
            "delete_context_variable", "delete_context", sid, (self._key(sid),), (now, _CTX + name)
        )
        self._status(reply, sid_obj, "delete_context_variable")
        return _text(reply[1]) if len(reply) > 1 else None

    # -- budgets and depth ----------------------------------------------------

    def _op_update_budget(self, session_id: SessionId | str, budget: BudgetStatus) -> _Op[None]:
        """Replace the session's budget whole; its `current_recursion_depth`
        becomes the session's depth (not below a child's start depth)."""
        sid, sid_obj = yield from self._id(session_id)
        if result_kind(budget) != "BudgetStatus":  # either core's
            raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
        now = self._now()
        reply = yield from self._on_path(
            "update_budget", "update_budget", sid, (self._key(sid),),
            (
                now,
                str(budget.token_budget),
                str(budget.tokens_used),
                str(budget.time_budget_ms),
                str(budget.time_used_ms),
                str(budget.max_recursion_depth),
                str(budget.current_recursion_depth),
            ),
        )
        if _text(reply[0]) == "start":
            raise ValueError(
                f"current_recursion_depth {budget.current_recursion_depth} is below "
                f"the child's start depth {int(reply[1])}"
            )
        self._status(reply, sid_obj, "update_budget")

    def _op_increment_recursion_depth(self, session_id: SessionId | str) -> _Op[int]:
        """One level deeper inside this session; RecursionDepthExceeded past
        its maximum. The new depth."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "increment_recursion_depth", "increment", sid, (self._key(sid),), (now,))
        return int(self._status(reply, sid_obj, "increment_recursion_depth")[1])

    def _op_decrement_recursion_depth(self, session_id: SessionId | str) -> _Op[int]:
        """One level back, saturating at 0 (a child: at its start depth).
        The new depth."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "decrement_recursion_depth", "decrement", sid, (self._key(sid),), (now,))
        return int(self._status(reply, sid_obj, "decrement_recursion_depth")[1])

    def _op_leave_recursion(self, sid: str) -> _Op[None]:
        # The exit of recursion(): undo the entry's +1 whatever the state,
        # and never raise for a session that is gone (Io still raises).
        yield self._script("recursion", "leave_recursion", (self._key(sid),), ())

    def _charge(self, session_id: SessionId | str, amount: int, tokens: bool) -> _Op[int]:
        sid, sid_obj = yield from self._id(session_id)
        operation = "charge_tokens" if tokens else "charge_time"
        value = check_u64(amount, "tokens" if tokens else "elapsed_ms")
        now = self._now()
        fields = ("tokens_used", "token_budget") if tokens else ("time_used_ms", "time_budget_ms")
        reply = yield from self._on_path(
            operation, "charge", sid, (self._key(sid),), (now, *fields, str(value)))
        if _text(reply[0]) == "u64":
            raise ValueError(MSG_TOKENS_OVERFLOW if tokens else MSG_TIME_OVERFLOW)
        # An over-budget charge stays on the whole path, then raises.
        return int(self._status(reply, sid_obj, operation)[1])

    def _op_charge_tokens(self, session_id: SessionId | str, tokens: int) -> _Op[int]:
        """Add `tokens` to the session's tokens_used and every ancestor's, in
        one step, and return the session's new total (SPEC 4.3, docs/trees.md)."""
        return (yield from self._charge(session_id, tokens, True))

    def _op_charge_time(self, session_id: SessionId | str, elapsed_ms: int) -> _Op[int]:
        """`charge_tokens` for time: time_used_ms and TimeBudgetExceeded."""
        return (yield from self._charge(session_id, elapsed_ms, False))

    def _op_check_budget(self, session_id: SessionId | str) -> _Op[BudgetStatus]:
        """The session's BudgetStatus, after checking every session on its
        path from the root down (tokens, then time, then depth, each): the
        first exhausted budget raises."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "check_budget", "check_budget", sid, (self._key(sid),), (now,))
        return self._budget(self._status(reply, sid_obj, "check_budget")[1:7])

    def _op_begin_call(self, session_id: SessionId | str) -> _Op[BudgetStatus]:
        """Admit one model call, in one script (one round trip): the
        session's path is valid, no budget on it is exhausted (as
        `check_budget`), and the session's depth goes up by one (as
        `increment_recursion_depth`). Returns the session's BudgetStatus
        after."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "begin_call", "begin_call", sid, (self._key(sid),), (now,))
        return self._budget(self._status(reply, sid_obj, "begin_call")[1:7])

    def _op_end_call(
        self, session_id: SessionId | str, *, tokens: int = 0, elapsed_ms: int = 0
    ) -> _Op[BudgetStatus]:
        """Close one model call, in one script (one round trip): charge
        `tokens` and `elapsed_ms` with roll-up (all or nothing against
        2**64-1) and take the depth back down; then raise as the charges
        would (tokens first), else return the session's BudgetStatus."""
        sid, sid_obj = yield from self._id(session_id)
        amount = check_u64(tokens, "tokens")
        elapsed = check_u64(elapsed_ms, "elapsed_ms")
        now = self._now()
        reply = yield from self._on_path(
            "end_call", "end_call", sid, (self._key(sid),), (now, str(amount), str(elapsed))
        )
        status = _text(reply[0])
        if status == "u64tokens":
            raise ValueError(MSG_TOKENS_OVERFLOW)
        if status == "u64time":
            raise ValueError(MSG_TIME_OVERFLOW)
        return self._budget(self._status(reply, sid_obj, "end_call")[1:7])

    # -- snapshots ------------------------------------------------------------

    def _op_record_snapshot_created(
        self, session_id: SessionId | str, snapshot_id: str, set_as_current: bool = False
    ) -> _Op[None]:
        """Count a snapshot (MaxSnapshotsReached at
        `max_snapshots_per_session`, 0 = no limit of the config's) and, if
        `set_as_current`, make it current."""
        sid, sid_obj = yield from self._id(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        if not isinstance(set_as_current, bool):
            raise TypeError("set_as_current must be a bool")
        now = self._now()
        reply = yield from self._on_path(
            "record_snapshot_created", "snapshot_created", sid, (self._key(sid),),
            (now, str(self._max_snapshots), "1" if set_as_current else "0", snapshot),
        )
        if _text(reply[0]) == "maxsnap":
            raise MaxSnapshotsReached(self._max_snapshots)
        self._status(reply, sid_obj, "record_snapshot_created")

    def _op_record_snapshot_restored(
        self, session_id: SessionId | str, snapshot_id: str
    ) -> _Op[None]:
        """Make `snapshot_id` the session's current snapshot."""
        sid, sid_obj = yield from self._id(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        now = self._now()
        reply = yield from self._on_path(
            "record_snapshot_restored", "snapshot_restored", sid, (self._key(sid),), (now, snapshot)
        )
        self._status(reply, sid_obj, "record_snapshot_restored")

    def _op_get_current_snapshot(self, session_id: SessionId | str) -> _Op[str | None]:
        """The current snapshot id, or None (read-only lookup)."""
        sid, sid_obj = yield from self._id(session_id)
        reply = yield self._script("get_current_snapshot", "get", (self._key(sid),), ())
        for name, value in _pairs(self._status(reply, sid_obj, "get_current_snapshot")[1]):
            if _text(name) == "snapshot":
                return _text(value)
        return None

    def _op_clear_snapshot_tracking(self, session_id: SessionId | str) -> _Op[None]:
        """Forget the current snapshot and reset the count."""
        sid, sid_obj = yield from self._id(session_id)
        now = self._now()
        reply = yield from self._on_path(
            "clear_snapshot_tracking", "clear_snapshots", sid, (self._key(sid),), (now,))
        self._status(reply, sid_obj, "clear_snapshot_tracking")

    # -- whole table ----------------------------------------------------------

    def _op_get_stats(self) -> _Op[SessionStats]:
        """The counters: created, live, holding a VM, destroyed, expired,
        and each kind of refusal (shared by every manager of the namespace)."""
        reply = yield self._script(
            "get_stats", "stats", (self._stats_key, self._expiry_key, self._vms_key, self._refusals_key), ()
        )
        created, destroyed, expired, active, with_vm, *refused = (int(v) for v in reply)
        return SessionStats(created, active, with_vm, destroyed, expired, *refused)

    def _rows(self, reply: Sequence[Any]) -> list[SessionInfo]:
        from_string = SessionId.from_string
        rows = [(_text(reply[i]), reply[i + 1]) for i in range(0, len(reply), 2)]
        rows.sort(key=lambda row: row[0])  # ULID text order is id order
        return [self._info(from_string(sid), fields) for sid, fields in rows]

    def _listing(self, operation: str, name: str, keys: Sequence[str]) -> _Op[Any]:
        """Run a listing script on every session of the index: read the
        index, then run the script on exactly those keys; it checks the
        index is unchanged, else the read and the script run again."""
        while True:
            ids = yield self._command(operation, "ZRANGE", self._expiry_key, 0, -1)
            reply = yield self._script(
                operation, name, (*keys, *(self._key(_text(sid)) for sid in ids)), ()
            )
            if _text(reply[0]) != "retry":
                return reply

    def _op_list_sessions(self) -> _Op[list[SessionInfo]]:
        """A snapshot of every session, children included, in id order."""
        reply = yield from self._listing("list_sessions", "list", (self._expiry_key,))
        return self._rows(reply[1])

    def _op_validate_many(self, ids: Any) -> _Op[Any]:
        """`is_session_valid` for many ids at one instant, in one round trip:
        a numpy bool array. `ids` is an iterable of SessionId/str, or a numpy
        array of 16-byte ids such as `budget_table()["id"]`."""
        np = numpy()
        packed = raw_ids(ids)
        sids: list[str | None] = []
        if packed is not None:
            sids = [
                str(SessionId.from_bytes(packed[i : i + 16])) for i in range(0, len(packed), 16)
            ]
        else:
            for session_id in ids:
                try:
                    sids.append(self._sid(session_id)[0])
                except InvalidSessionToken:
                    sids.append(None)  # malformed: not valid
        now = self._now()
        known = [sid for sid in sids if sid is not None]
        answers: Iterator[Any] = iter(())
        while known:
            paths = [self._ancestors(sid) for sid in known]
            keys = [self._key(sid) for sid in known]
            keys += [self._key(a) for ancestors in paths for a in ancestors]
            reply = yield self._script(
                "validate_many", "validate_many", keys, (now, *(len(p) for p in paths))
            )
            if _text(reply[0]) == "ok":
                answers = iter(reply[1])
                break
            wrong = reply[1]
            for i in range(0, len(wrong), 2):
                self._learn(known[int(wrong[i]) - 1], tuple(_text(wrong[i + 1]).split()))
        return np.array([sid is not None and int(next(answers)) == 1 for sid in sids], dtype=bool)

    def _op_budget_table(self) -> _Op[Any]:
        """One numpy row per session, in id order (fields:
        rlm_fast._bulk.BUDGET_TABLE_FIELDS), read in one atomic step."""
        dtype = budget_table_dtype()
        reply = yield from self._listing("budget_table", "list", (self._expiry_key,))
        rows = []
        for info in self._rows(reply[1]):
            budget = info.budget_status
            rows.append(
                (
                    info.id.bytes,
                    STATE_CODE[info.state],
                    info.expires_at_ns,
                    budget.tokens_used,
                    budget.token_budget,
                    budget.time_used_ms,
                    budget.time_budget_ms,
                    info.recursion_depth,
                    budget.max_recursion_depth,
                    info.extension_count,
                    info.snapshot_count,
                    info.vm_instance_id is not None,
                )
            )
        return numpy().array(rows, dtype=dtype)

    def _op_export(self) -> _Op[tuple[list[SessionInfo], SessionStats, list[int]]]:
        """Every session, the counters and each session's start depth (0
        for a root), read in one atomic step (dump)."""
        reply = yield from self._listing(
            "dump", "export", (self._expiry_key, self._stats_key, self._vms_key)
        )
        created, destroyed, expired, active, with_vm, rows = reply[1:]
        stats = SessionStats(int(created), int(active), int(with_vm), int(destroyed), int(expired))
        starts: dict[str, int] = {}
        for i in range(0, len(rows), 2):
            for name, value in _pairs(rows[i + 1]):
                if _text(name) == "start_depth":
                    starts[_text(rows[i])] = int(value)
        infos = self._rows(rows)
        return infos, stats, [starts.get(str(info.id), 0) for info in infos]

    def _op_restore(
        self,
        infos: list[SessionInfo],
        counters: tuple[int, int, int],
        start_depths: list[int] | None = None,
    ) -> _Op[None]:
        """Fill an empty namespace from `_export`'s rows (load): all or
        nothing, in one script. Every parent must be among the rows, with no
        cycle, and a child's start depth at most its depth (ValueError)."""
        rows = check_restore(infos, counters)
        starts = check_tree(rows, start_depths)
        parents = {str(info.id): str(info.parent_id) for info in rows if info.parent_id is not None}

        def ancestors(sid: str) -> list[str]:
            up = []
            while sid in parents:
                sid = parents[sid]
                up.append(sid)
            return up[::-1]

        now = self._now()
        args: list[Any] = [now, self._session_prefix, self._grace_ms, *map(str, counters)]
        for info, start in zip(rows, starts):
            budget = info.budget_status
            fields = [
                "state", info.state.value,
                "created_ns", str(info.created_at_ns),
                "expires_ns", str(info.expires_at_ns),
                "extension_count", str(info.extension_count),
                "depth", str(info.recursion_depth),
                "token_budget", str(budget.token_budget),
                "tokens_used", str(budget.tokens_used),
                "time_budget_ms", str(budget.time_budget_ms),
                "time_used_ms", str(budget.time_used_ms),
                "max_depth", str(budget.max_recursion_depth),
                "snapshot_count", str(info.snapshot_count),
            ]
            if info.vm_instance_id is not None:
                fields += ["vm", info.vm_instance_id]
            if info.current_snapshot_id is not None:
                fields += ["snapshot", info.current_snapshot_id]
            parent = info.parent_id
            if parent is not None:
                fields += [
                    "parent", str(parent), "root", str(info.root_id), "start_depth", str(start),
                    "ancestors", " ".join(ancestors(str(info.id))),
                ]
            for name, value in info.context_variables.items():
                fields += [_CTX + name, value]
            args += [
                str(info.id),
                str(info.expires_at_ns),
                info.vm_instance_id or "",
                "" if parent is None else str(parent),
                len(fields),
                *fields,
            ]
        pairs = []
        for info in rows:
            pairs += [self._key(str(info.id)), self._children_key(str(info.id))]
        reply = yield self._script(
            "load",
            "restore",
            (self._stats_key, self._expiry_key, self._vms_key, self._refusals_key, *pairs),
            args,
        )
        if _text(reply[0]) != "ok":
            raise ValueError(f"restore needs a new, empty namespace ({self._namespace!r} is in use)")

    def _op_len(self) -> _Op[int]:
        return int((yield self._command("len", "ZCARD", self._expiry_key)))

    def _op_contains(self, session_id: object) -> _Op[bool]:
        try:
            sid, _ = self._sid(session_id)
        except (TypeError, InvalidSessionToken):
            return False
        return int((yield self._command("contains", "EXISTS", self._key(sid)))) == 1


def _describe(method: Any, op: Callable[..., Any], owner: str) -> None:
    """Name, doc and signature of a public method made from an `_op_*`
    (its result is what the operation returns, not the generator)."""
    name = op.__name__.removeprefix("_op_")
    method.__name__ = name
    method.__qualname__ = f"{owner}.{name}"
    method.__doc__ = op.__doc__
    signature = inspect.signature(op)
    result = signature.return_annotation
    if isinstance(result, str) and result.startswith("_Op[") and result.endswith("]"):
        signature = signature.replace(return_annotation=result[4:-1])
    method.__signature__ = signature


def _sync(
    op: Callable[Concatenate[Any, _P], _Op[_T]],
) -> Callable[Concatenate["RedisSessionManager", _P], _T]:
    """The blocking method of an `_op_*`: each request sent in turn."""

    def method(self: RedisSessionManager, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._drive(op(self, *args, **kwargs))

    _describe(method, op, "RedisSessionManager")
    return method


def _async(
    op: Callable[Concatenate[Any, _P], _Op[_T]],
) -> Callable[Concatenate["AsyncRedisSessionManager", _P], Any]:
    """The coroutine method of an `_op_*`: each request awaited in turn."""

    async def method(self: AsyncRedisSessionManager, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._drive(op(self, *args, **kwargs))

    _describe(method, op, "AsyncRedisSessionManager")
    return method


class _Recursion:
    """`manager.recursion(id)`: depth +1 on entry, -1 on exit, always."""

    __slots__ = ("_manager", "_sid", "_id")

    def __init__(self, manager: "RedisSessionManager", sid: str, sid_obj: SessionId) -> None:
        self._manager = manager
        self._sid = sid
        self._id = sid_obj

    def __enter__(self) -> int:
        return self._manager.increment_recursion_depth(self._id)

    def __exit__(self, *exc: object) -> None:
        self._manager._drive(self._manager._op_leave_recursion(self._sid))


class RedisSessionManager(_Table):
    """The session table of `rlm_fast.SessionManager`, kept in Redis.

    `client` is a redis-py client (`redis.Redis`, or `redis.RedisCluster`),
    using the default UTF-8 encoding. `namespace` names the table: managers
    with the same client target and namespace share one table (its keys all
    carry the hash tag `{namespace}`). `clock`, when given, returns int
    nanoseconds and decides expiry for this manager's calls; by default the
    Redis server's `TIME` does, one clock for every host. `on_remove(info,
    reason)` is told of every session this manager removes
    (docs/lifecycle.md). The config is copied and applies to this manager's
    calls (give every process of one namespace the same config).
    `ttl_grace_secs`: how long Redis keeps a session that expired and was
    never cleaned up.
    """

    _blocking = True

    def _drive(self, op: _Op[_T]) -> _T:
        """Run an operation: send each request it yields, in turn."""
        execute = self._sender.execute
        try:
            request = next(op)
            while True:
                try:
                    reply = execute(request)
                except RlmError:
                    if not request[4]:
                        raise
                    reply = None  # a refusal's count failed: the refusal stands
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()  # interrupted mid-way: its cleanup (reports) runs now

    create_session = _sync(_Table._op_create_session)
    create_child_session = _sync(_Table._op_create_child_session)
    children = _sync(_Table._op_children)
    get_session = _sync(_Table._op_get_session)
    update_session_state = _sync(_Table._op_update_session_state)
    is_session_valid = _sync(_Table._op_is_session_valid)
    validate_session = _sync(_Table._op_validate_session)
    extend_session = _sync(_Table._op_extend_session)
    destroy_session = _sync(_Table._op_destroy_session)
    cleanup_expired_sessions = _sync(_Table._op_cleanup_expired_sessions)
    pop_expired_sessions = _sync(_Table._op_pop_expired_sessions)
    assign_vm = _sync(_Table._op_assign_vm)
    release_vm = _sync(_Table._op_release_vm)
    get_assigned_vm = _sync(_Table._op_get_assigned_vm)
    get_session_for_vm = _sync(_Table._op_get_session_for_vm)
    set_context_variable = _sync(_Table._op_set_context_variable)
    get_context_variable = _sync(_Table._op_get_context_variable)
    get_all_context_variables = _sync(_Table._op_get_all_context_variables)
    delete_context_variable = _sync(_Table._op_delete_context_variable)
    update_budget = _sync(_Table._op_update_budget)
    increment_recursion_depth = _sync(_Table._op_increment_recursion_depth)
    decrement_recursion_depth = _sync(_Table._op_decrement_recursion_depth)
    charge_tokens = _sync(_Table._op_charge_tokens)
    charge_time = _sync(_Table._op_charge_time)
    check_budget = _sync(_Table._op_check_budget)
    begin_call = _sync(_Table._op_begin_call)
    end_call = _sync(_Table._op_end_call)
    record_snapshot_created = _sync(_Table._op_record_snapshot_created)
    record_snapshot_restored = _sync(_Table._op_record_snapshot_restored)
    get_current_snapshot = _sync(_Table._op_get_current_snapshot)
    clear_snapshot_tracking = _sync(_Table._op_clear_snapshot_tracking)
    get_stats = _sync(_Table._op_get_stats)
    list_sessions = _sync(_Table._op_list_sessions)
    validate_many = _sync(_Table._op_validate_many)
    budget_table = _sync(_Table._op_budget_table)
    _export = _sync(_Table._op_export)
    _restore = _sync(_Table._op_restore)
    __len__ = _sync(_Table._op_len)
    __contains__ = _sync(_Table._op_contains)

    def recursion(self, session_id: SessionId | str) -> _Recursion:
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        sid, sid_obj = self._drive(self._id(session_id))
        return _Recursion(self, sid, sid_obj)

    def call(self, session_id: SessionId | str) -> ModelCall:
        """Context manager around one model call: `begin_call` on entry (one
        script); on every exit `end_call` (one script) with the `tokens` set
        on the yielded object and the elapsed wall time (the manager's clock
        if it has one)."""
        _, sid_obj = self._drive(self._id(session_id))
        return ModelCall(
            lambda: self.begin_call(sid_obj),
            lambda tokens, elapsed: self.end_call(sid_obj, tokens=tokens, elapsed_ms=elapsed),
            self._clock,
        )

    def start_reaper(self, interval_s: float = 1.0) -> Reaper:
        """Start a daemon thread that calls `pop_expired_sessions` every
        `interval_s` seconds; `stop()` (or leaving its `with` block) ends it.
        RuntimeError while this manager already has a running reaper."""
        return self._reapers.start(self.pop_expired_sessions, interval_s)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        client: Any,
        config: RlmConfig | None = None,
        *,
        namespace: str = "rlm",
        clock: Callable[[], int] | None = None,
        on_remove: Callable[[SessionInfo, str], object] | None = None,
        ttl_grace_secs: int = DEFAULT_TTL_GRACE_SECS,
    ) -> "RedisSessionManager":
        """A manager on `namespace` (which must be empty) holding what a
        `dump` of any manager wrote to `path`, with the dumped config unless
        `config` is given; a bad file raises Serialization, nothing written."""

        def make(config: RlmConfig, *, clock: Callable[[], int] | None) -> RedisSessionManager:
            return cls(
                client, config, namespace=namespace, clock=clock, on_remove=on_remove,
                ttl_grace_secs=ttl_grace_secs,
            )

        return _load(make, path, config, clock=clock)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write every session and the counters to `path`, atomically, in
        the format of `SessionManager.dump` (loadable by either core)."""
        _dump(self, path)

    def __repr__(self) -> str:
        return f"<RedisSessionManager namespace={self._namespace!r} client={self._client!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RedisSessionManager cannot be pickled; make one per process")


class _Exported:
    """What `dump` reads from a manager, read beforehand (async dump)."""

    def __init__(self, config: RlmConfig, export: tuple[list[SessionInfo], SessionStats, list[int]]) -> None:
        self.config = config
        self._rows = export

    def _export(self) -> tuple[list[SessionInfo], SessionStats, list[int]]:
        return self._rows


class AsyncRedisSessionManager(_Table):
    """`RedisSessionManager` for asyncio, over `redis.asyncio.Redis` (or
    `redis.asyncio.RedisCluster`): every method is a coroutine with the
    same arguments, results, errors and messages, built from the same
    request and reply code and the same Lua scripts, so a sync and an async
    manager can serve one namespace at once. `async with m.recursion(id)`
    and `async with m.call(id)` are the context managers. A call cancelled
    at any await is applied whole or not at all, and leaves its connection
    closed rather than holding a reply another call could read
    (docs/redis.md). On asyncio, expire sessions with
    `rlm_fast.aio.reap(manager)` (a task) instead of a reaper thread.
    """

    _blocking = False

    async def _drive(self, op: _Op[_T]) -> _T:
        """Run an operation: await each request it yields, in turn."""
        execute = self._sender.execute
        try:
            request = next(op)
            while True:
                try:
                    reply = await execute(request)
                except RlmError:
                    if not request[4]:
                        raise
                    reply = None  # a refusal's count failed: the refusal stands
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()

    create_session = _async(_Table._op_create_session)
    create_child_session = _async(_Table._op_create_child_session)
    children = _async(_Table._op_children)
    get_session = _async(_Table._op_get_session)
    update_session_state = _async(_Table._op_update_session_state)
    is_session_valid = _async(_Table._op_is_session_valid)
    validate_session = _async(_Table._op_validate_session)
    extend_session = _async(_Table._op_extend_session)
    destroy_session = _async(_Table._op_destroy_session)
    cleanup_expired_sessions = _async(_Table._op_cleanup_expired_sessions)
    pop_expired_sessions = _async(_Table._op_pop_expired_sessions)
    assign_vm = _async(_Table._op_assign_vm)
    release_vm = _async(_Table._op_release_vm)
    get_assigned_vm = _async(_Table._op_get_assigned_vm)
    get_session_for_vm = _async(_Table._op_get_session_for_vm)
    set_context_variable = _async(_Table._op_set_context_variable)
    get_context_variable = _async(_Table._op_get_context_variable)
    get_all_context_variables = _async(_Table._op_get_all_context_variables)
    delete_context_variable = _async(_Table._op_delete_context_variable)
    update_budget = _async(_Table._op_update_budget)
    increment_recursion_depth = _async(_Table._op_increment_recursion_depth)
    decrement_recursion_depth = _async(_Table._op_decrement_recursion_depth)
    charge_tokens = _async(_Table._op_charge_tokens)
    charge_time = _async(_Table._op_charge_time)
    check_budget = _async(_Table._op_check_budget)
    begin_call = _async(_Table._op_begin_call)
    end_call = _async(_Table._op_end_call)
    record_snapshot_created = _async(_Table._op_record_snapshot_created)
    record_snapshot_restored = _async(_Table._op_record_snapshot_restored)
    get_current_snapshot = _async(_Table._op_get_current_snapshot)
    clear_snapshot_tracking = _async(_Table._op_clear_snapshot_tracking)
    get_stats = _async(_Table._op_get_stats)
    list_sessions = _async(_Table._op_list_sessions)
    validate_many = _async(_Table._op_validate_many)
    budget_table = _async(_Table._op_budget_table)
    _export = _async(_Table._op_export)
    _restore = _async(_Table._op_restore)
    length = _async(_Table._op_len)
    contains = _async(_Table._op_contains)

    @contextlib.asynccontextmanager
    async def recursion(self, session_id: SessionId | str) -> AsyncIterator[int]:
        """`async with m.recursion(id) as depth:` depth +1 on entry, -1 on
        every exit, exception or not (the id is checked at entry)."""
        sid, sid_obj = await self._drive(self._id(session_id))
        depth = await self.increment_recursion_depth(sid_obj)
        try:
            yield depth
        finally:
            await self._drive(self._op_leave_recursion(sid))

    def call(self, session_id: SessionId | str) -> AsyncModelCall:
        """`async with m.call(id) as c:` one model call: `begin_call` on
        entry, `end_call` on every exit with `c.tokens` and the elapsed time
        (one script each; the id is checked at entry)."""
        return AsyncModelCall(
            lambda: self.begin_call(session_id),
            lambda tokens, elapsed: self.end_call(session_id, tokens=tokens, elapsed_ms=elapsed),
            self._clock,
        )

    async def dump(self, path: str | os.PathLike[str]) -> None:
        """`RedisSessionManager.dump`: the table is read in one script, then
        the file is written in a worker thread."""
        export = await self._export()
        await asyncio.to_thread(_dump, _Exported(self.config, export), path)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<AsyncRedisSessionManager namespace={self._namespace!r} client={self._client!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("an AsyncRedisSessionManager cannot be pickled; make one per process")


def _client_encoding(client: Any) -> str | None:
    """The encoding a redis-py client uses for str arguments, if it says."""
    try:
        return str(client.get_encoder().encoding)
    except Exception:  # noqa: BLE001 - a client that cannot tell: trust it
        return None

