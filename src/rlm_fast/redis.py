"""A session table shared by many processes and hosts, kept in Redis.

`RedisSessionManager` has the API, errors and guarantees of
`rlm_fast.SessionManager` (SPEC 3, 4 and 10); every operation is one Lua
script run atomically by the server, so the guarantees hold across every
process that talks to the same Redis and namespace. Layout, time, TTLs and
failure semantics are in docs/redis.md. Needs redis-py
(`pip install 'rlm_fast[redis]'`) and Redis 7.0 or newer.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

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

from ._redis_lua import SCRIPTS
from ._types import (
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    STATE_CODE,
    SessionState,
    budget_table_dtype,
    check_clock_value,
    check_restore,
    check_str,
    check_u64,
    coerce_state,
    foreign_session_id,
    numpy,
    raw_ids,
    result_kind,
    session_id_type_error,
)
from .config import RlmConfig
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

__all__ = ["RedisSessionManager", "DEFAULT_TTL_GRACE_SECS"]

#: How long Redis keeps a session's key after the session expired, if no
#: cleanup_expired_sessions() or destroy_session() removed it first.
DEFAULT_TTL_GRACE_SECS = 86_400

_NS_PER_S = 1_000_000_000
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLEANUP_BATCH = 1000
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


def _random_part() -> str:
    """The 80 random bits of a new id as 16 Crockford base32 characters."""
    value = int.from_bytes(os.urandom(10), "big")
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(75, -5, -5))


if TYPE_CHECKING:  # type checkers see the twin, as for rlm_fast itself
    from ._core_py import SessionId
    from ._types import BudgetStatus, SessionInfo, SessionStats
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

    def __init__(self, client: Any) -> None:
        self.client = client
        pool = getattr(client, "connection_pool", None)
        direct = (
            pool is not None
            and getattr(client, "connection", None) is None
            and callable(getattr(pool, "get_connection", None))
            and callable(getattr(pool, "release", None))
        )
        self.pool = pool if direct else None
        self.get_args: tuple[str, ...] = ()
        if self.pool is not None:
            # redis-py before 5.3 wants a command name; later ones warn on it.
            param = inspect.signature(self.pool.get_connection).parameters.get("command_name")
            if param is not None and param.default is inspect.Parameter.empty:
                self.get_args = ("EVALSHA",)

    def command(self, operation: str, *args: Any) -> Any:
        """Run one command; return its raw reply."""
        if self.pool is None:
            return _guard(operation, self.client.execute_command, *args)
        return _guard(operation, self._direct, args)

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
            except _CONNECTION_ERRORS:
                conn.disconnect()  # the reply is lost: the outcome is unknown
                raise
        finally:
            pool.release(conn)

    def script(self, operation: str, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
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


def _guard(operation: str, call: Callable[..., Any], *args: Any) -> Any:
    """call(*args), with Redis's failures turned into rlm_fast errors:
    connection trouble and refusals become Io, other error replies Internal.
    NOSCRIPT passes through (the caller reloads the script)."""
    try:
        return call(*args)
    except _Unsent as unsent:
        exc = unsent.error
        raise _io(operation, exc, "the request was not sent; the call was not applied") from exc
    except _BusyLoadingError as exc:
        raise _io(operation, exc, "the server is loading its data; the call was not applied") from exc
    except _CONNECTION_ERRORS as exc:
        note = "the request may have run: the call was applied whole or not at all"
        raise _io(operation, exc, note) from exc
    except _NoScriptError:
        raise
    except _ResponseError as exc:
        message = str(exc)
        if message.startswith(_REFUSALS):
            raise _io(operation, exc, "the server refused it; the call was not applied") from exc
        raise Internal(f"Redis answered {operation} with an error: {message}") from exc
    except _RedisError as exc:  # e.g. a cluster routing failure
        raise _io(operation, exc, "the call was applied whole or not at all") from exc


def _io(operation: str, exc: BaseException, note: str) -> Io:
    return Io(f"Redis {operation} failed ({type(exc).__name__}: {exc}); {note}")


class _Recursion:
    """`manager.recursion(id)`: depth +1 on entry, -1 on exit, always."""

    __slots__ = ("_manager", "_sid", "_id")

    def __init__(self, manager: "RedisSessionManager", sid: str, sid_obj: SessionId) -> None:
        self._manager = manager
        self._sid = sid
        self._id = sid_obj

    def __enter__(self) -> int:
        return self._manager._increment(self._sid, self._id)

    def __exit__(self, *exc: object) -> None:
        self._manager._leave_recursion(self._sid)


class RedisSessionManager:
    """The session table of `rlm_fast.SessionManager`, kept in Redis.

    `client` is a redis-py client (`redis.Redis`, or `redis.RedisCluster`),
    using the default UTF-8 encoding. `namespace` names the table: managers
    with the same client target and namespace share one table (its keys all
    carry the hash tag `{namespace}`). `clock`, when given, returns int
    nanoseconds and decides expiry for this manager's calls; by default the
    Redis server's `TIME` does, one clock for every host. The config is
    copied and applies to this manager's calls (give every process of one
    namespace the same config). `ttl_grace_secs`: how long Redis keeps a
    session that expired and was never cleaned up.
    """

    def __init__(
        self,
        client: Any,
        config: RlmConfig | None = None,
        *,
        namespace: str = "rlm",
        clock: Callable[[], int] | None = None,
        ttl_grace_secs: int = DEFAULT_TTL_GRACE_SECS,
    ) -> None:
        if config is None:
            config = RlmConfig()
        elif not isinstance(config, RlmConfig):
            raise TypeError(f"config must be an RlmConfig, not {type(config).__name__}")
        config.validate()
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(
                f"client must be a redis-py client (redis.Redis or redis.RedisCluster), "
                f"not {type(client).__name__}"
            )
        if isinstance(client, _redis.client.Pipeline):
            raise TypeError("client must be a redis-py client, not a pipeline")
        if inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
            raise TypeError("client must be a synchronous redis-py client, not redis.asyncio")
        namespace = check_str(namespace, "namespace", nonempty=True)
        if "{" in namespace or "}" in namespace:
            raise ValueError("namespace must not contain '{' or '}' (it becomes the hash tag)")
        grace = check_u64(ttl_grace_secs, "ttl_grace_secs")
        if grace > 10 * 365 * 86_400:
            raise ValueError("ttl_grace_secs must be at most ten years")
        encoding = _client_encoding(client)
        if encoding is not None and encoding.replace("-", "").replace("_", "").lower() != "utf8":
            raise ValueError(f"the client must use the UTF-8 encoding, not {encoding!r}")

        self._config = copy.deepcopy(config)
        self._clock = clock
        self._namespace = namespace
        self._client = client
        self._sender = _Sender(client)
        self._scripts = {name: _Script(client, name) for name in SCRIPTS}

        tag = "{" + namespace + "}"
        self._session_prefix = tag + ":s:"
        self._stats_key = tag + ":stats"
        self._expiry_key = tag + ":expiry"
        self._vms_key = tag + ":vms"

        # Config values as the scripts take them (decimal strings).
        own = self._config
        self._duration = str(own.session_duration_secs * _NS_PER_S)
        self._increment_ns = str(own.extension_increment_secs * _NS_PER_S)
        self._max_extensions = own.max_extensions
        self._max_snapshots = own.max_snapshots_per_session
        self._grace_ms = str(grace * 1000)
        self._budgets = (
            str(own.token_budget),
            str(own.time_budget_ms),
            str(own.max_recursion_depth),
        )

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

    def _now(self) -> str:
        """The manager clock's reading for a script ('' = the server's TIME)."""
        if self._clock is None:
            return ""
        return str(check_clock_value(self._clock()))

    def _key(self, sid: str) -> str:
        return self._session_prefix + sid

    def _run(self, operation: str, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._sender.script(operation, self._scripts[name], keys, args)

    def _cmd(self, operation: str, *args: Any) -> Any:
        return self._sender.command(operation, *args)

    def _fail(self, status: str, sid_obj: SessionId, operation: str) -> RlmError:
        """The exception of a status every session script shares."""
        if status == "notfound":
            return SessionNotFound(sid_obj)
        if status == "terminated":
            return InvalidSessionState(sid_obj, "Terminated", operation)
        if status == "expired":
            return SessionExpired(sid_obj)
        return Internal(f"unexpected reply {status!r} to {operation}")

    def _status(self, reply: Any, sid_obj: SessionId, operation: str) -> Any:
        """The reply of a session script whose status must be 'ok'."""
        status = _text(reply[0])
        if status != "ok":
            raise self._fail(status, sid_obj, operation)
        return reply

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
        depth = int(row["depth"])
        vm = row.get("vm")
        snapshot = row.get("snapshot")
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
        )

    # -- lifecycle ------------------------------------------------------------

    def create_session(self) -> SessionInfo:
        now = self._now()
        token_budget, time_budget, max_depth = self._budgets
        while True:
            reply = self._run(
                "create_session",
                "create",
                (self._stats_key, self._expiry_key, self._vms_key),
                (now, self._session_prefix, _random_part(), self._duration,
                 self._grace_ms, token_budget, time_budget, max_depth),
            )
            status = _text(reply[0])
            if status == "exists":
                continue  # never reuse a live id, however unlikely
            if status == "overflow":
                raise ConfigError(MSG_CREATE_OVERFLOW)
            sid_obj = SessionId.from_string(_text(reply[1]))
            return SessionInfo._trusted(
                sid_obj,
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

    def get_session(self, session_id: SessionId | str) -> SessionInfo:
        sid, sid_obj = self._sid(session_id)
        fields = self._cmd("get_session", "HGETALL", self._key(sid))
        if not fields:
            raise SessionNotFound(sid_obj)
        return self._info(sid_obj, fields)

    def update_session_state(self, session_id: SessionId | str, state: SessionState | str) -> None:
        sid, sid_obj = self._sid(session_id)
        new_state = coerce_state(state)
        now = self._now()
        reply = self._run("update_session_state", "update_state", (self._key(sid),), (now, new_state.value))
        self._status(reply, sid_obj, "update_session_state")

    def is_session_valid(self, session_id: SessionId | str) -> bool:
        try:
            sid, _ = self._sid(session_id)
        except InvalidSessionToken:
            return False
        now = self._now()
        return int(self._run("is_session_valid", "is_valid", (self._key(sid),), (now,))) == 1

    def validate_session(self, session_id: SessionId | str) -> SessionInfo:
        sid, sid_obj = self._sid(session_id)
        now = self._now()
        reply = self._run("validate_session", "validate", (self._key(sid),), (now,))
        return self._info(sid_obj, self._status(reply, sid_obj, "validate")[1])

    def extend_session(self, session_id: SessionId | str) -> SessionInfo:
        sid, sid_obj = self._sid(session_id)
        now = self._now()
        reply = self._run(
            "extend_session",
            "extend",
            (self._key(sid), self._expiry_key, self._stats_key, self._vms_key),
            (now, sid, self._increment_ns, str(self._max_extensions), self._grace_ms),
        )
        status = _text(reply[0])
        if status == "maxext":
            raise MaxExtensionsReached(sid_obj, self._max_extensions)
        if status == "overflow":
            raise ConfigError(MSG_EXTEND_OVERFLOW)
        return self._info(sid_obj, self._status(reply, sid_obj, "extend_session")[1])

    def destroy_session(self, session_id: SessionId | str) -> None:
        sid, sid_obj = self._sid(session_id)
        reply = self._run(
            "destroy_session",
            "destroy",
            (self._key(sid), self._expiry_key, self._vms_key, self._stats_key),
            (sid,),
        )
        self._status(reply, sid_obj, "destroy_session")

    def cleanup_expired_sessions(self) -> list[SessionId]:
        """Remove and return (in id order) the sessions with expires_at < now.

        Runs in batches of 1000 sessions, each one atomic step, all judged
        against the same `now`."""
        now = self._now()
        removed: list[str] = []
        skipped = 0
        while True:
            reply = self._run(
                "cleanup_expired_sessions",
                "cleanup",
                (self._expiry_key, self._vms_key, self._stats_key),
                (now, self._session_prefix, _CLEANUP_BATCH, skipped),
            )
            now = _text(reply[0])  # later batches use the first one's time
            removed.extend(_text(sid) for sid in reply[3])
            skipped = int(reply[2])
            if int(reply[1]) == 0:
                break
        from_string = SessionId.from_string
        return [from_string(sid) for sid in sorted(removed)]

    # -- VM affinity ----------------------------------------------------------

    def assign_vm(self, session_id: SessionId | str, vm_instance_id: str) -> None:
        sid, sid_obj = self._sid(session_id)
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        now = self._now()
        reply = self._run(
            "assign_vm",
            "assign_vm",
            (self._key(sid), self._vms_key, self._expiry_key),
            (now, sid, vm, self._session_prefix),
        )
        self._status(reply, sid_obj, "assign_vm")

    def release_vm(self, session_id: SessionId | str) -> str | None:
        sid, sid_obj = self._sid(session_id)
        reply = self._run("release_vm", "release_vm", (self._key(sid), self._vms_key), (sid,))
        self._status(reply, sid_obj, "release_vm")
        return _text(reply[1]) if len(reply) > 1 else None

    def get_assigned_vm(self, session_id: SessionId | str) -> str | None:
        sid, _ = self._sid(session_id)
        vm = self._cmd("get_assigned_vm", "HGET", self._key(sid), "vm")
        return None if vm is None else _text(vm)

    def get_session_for_vm(self, vm_instance_id: str) -> SessionId | None:
        vm = check_str(vm_instance_id, "vm_instance_id", nonempty=True)
        sid = self._cmd("get_session_for_vm", "HGET", self._vms_key, vm)
        return None if sid is None else SessionId.from_string(_text(sid))

    # -- context variables ----------------------------------------------------

    def set_context_variable(self, session_id: SessionId | str, key: str, value: str) -> None:
        sid, sid_obj = self._sid(session_id)
        name = check_str(key, "key")
        text = check_str(value, "value")
        now = self._now()
        reply = self._run("set_context_variable", "set_context", (self._key(sid),), (now, _CTX + name, text))
        self._status(reply, sid_obj, "set_context_variable")

    def get_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        sid, sid_obj = self._sid(session_id)
        name = check_str(key, "key")
        reply = self._run("get_context_variable", "get_context", (self._key(sid),), (_CTX + name,))
        self._status(reply, sid_obj, "get_context_variable")
        return _text(reply[1]) if len(reply) > 1 else None

    def get_all_context_variables(self, session_id: SessionId | str) -> dict[str, str]:
        sid, sid_obj = self._sid(session_id)
        fields = self._cmd("get_all_context_variables", "HGETALL", self._key(sid))
        if not fields:
            raise SessionNotFound(sid_obj)
        context = {}
        for name, value in _pairs(fields):
            name = _text(name)
            if name.startswith(_CTX):
                context[name[len(_CTX):]] = _text(value)
        return dict(sorted(context.items()))

    def delete_context_variable(self, session_id: SessionId | str, key: str) -> str | None:
        sid, sid_obj = self._sid(session_id)
        name = check_str(key, "key")
        now = self._now()
        reply = self._run("delete_context_variable", "delete_context", (self._key(sid),), (now, _CTX + name))
        self._status(reply, sid_obj, "delete_context_variable")
        return _text(reply[1]) if len(reply) > 1 else None

    # -- budgets and depth ----------------------------------------------------

    def update_budget(self, session_id: SessionId | str, budget: BudgetStatus) -> None:
        sid, sid_obj = self._sid(session_id)
        if result_kind(budget) != "BudgetStatus":  # either core's
            raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
        now = self._now()
        reply = self._run(
            "update_budget",
            "update_budget",
            (self._key(sid),),
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
        self._status(reply, sid_obj, "update_budget")

    def increment_recursion_depth(self, session_id: SessionId | str) -> int:
        return self._increment(*self._sid(session_id))

    def _increment(self, sid: str, sid_obj: SessionId) -> int:
        now = self._now()
        reply = self._run("increment_recursion_depth", "increment", (self._key(sid),), (now,))
        if _text(reply[0]) == "depth":
            raise RecursionDepthExceeded(int(reply[1]) + 1, int(reply[2]))
        return int(self._status(reply, sid_obj, "increment_recursion_depth")[1])

    def decrement_recursion_depth(self, session_id: SessionId | str) -> int:
        sid, sid_obj = self._sid(session_id)
        now = self._now()
        reply = self._run("decrement_recursion_depth", "decrement", (self._key(sid),), (now,))
        return int(self._status(reply, sid_obj, "decrement_recursion_depth")[1])

    def _leave_recursion(self, sid: str) -> None:
        # The exit of recursion(): undo the entry's +1 whatever the state,
        # and never raise for a session that is gone (Io still raises).
        self._run("recursion", "leave_recursion", (self._key(sid),), ())

    def recursion(self, session_id: SessionId | str) -> _Recursion:
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        sid, sid_obj = self._sid(session_id)
        return _Recursion(self, sid, sid_obj)

    def charge_tokens(self, session_id: SessionId | str, tokens: int) -> int:
        sid, sid_obj = self._sid(session_id)
        amount = check_u64(tokens, "tokens")
        now = self._now()
        reply = self._run(
            "charge_tokens", "charge", (self._key(sid),), (now, "tokens_used", "token_budget", str(amount))
        )
        if _text(reply[0]) == "u64":
            raise ValueError(MSG_TOKENS_OVERFLOW)
        self._status(reply, sid_obj, "charge_tokens")
        total, budget = int(reply[1]), int(reply[2])
        if total > budget:
            raise TokenBudgetExceeded(total, budget)  # spent: the charge stays
        return total

    def charge_time(self, session_id: SessionId | str, elapsed_ms: int) -> int:
        sid, sid_obj = self._sid(session_id)
        amount = check_u64(elapsed_ms, "elapsed_ms")
        now = self._now()
        reply = self._run(
            "charge_time", "charge", (self._key(sid),), (now, "time_used_ms", "time_budget_ms", str(amount))
        )
        if _text(reply[0]) == "u64":
            raise ValueError(MSG_TIME_OVERFLOW)
        self._status(reply, sid_obj, "charge_time")
        total, budget = int(reply[1]), int(reply[2])
        if total > budget:
            raise TimeBudgetExceeded(total, budget)
        return total

    def check_budget(self, session_id: SessionId | str) -> BudgetStatus:
        sid, sid_obj = self._sid(session_id)
        now = self._now()
        reply = self._run("check_budget", "check_budget", (self._key(sid),), (now,))
        values = [int(v) for v in self._status(reply, sid_obj, "check_budget")[1:]]
        status = BudgetStatus._trusted(*values)
        if status.tokens_exhausted():
            raise TokenBudgetExceeded(status.tokens_used, status.token_budget)
        if status.time_exhausted():
            raise TimeBudgetExceeded(status.time_used_ms, status.time_budget_ms)
        if status.depth_exhausted():
            raise RecursionDepthExceeded(status.current_recursion_depth, status.max_recursion_depth)
        return status

    # -- snapshots ------------------------------------------------------------

    def record_snapshot_created(
        self, session_id: SessionId | str, snapshot_id: str, set_as_current: bool = False
    ) -> None:
        sid, sid_obj = self._sid(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        if not isinstance(set_as_current, bool):
            raise TypeError("set_as_current must be a bool")
        now = self._now()
        reply = self._run(
            "record_snapshot_created",
            "snapshot_created",
            (self._key(sid),),
            (now, str(self._max_snapshots), "1" if set_as_current else "0", snapshot),
        )
        if _text(reply[0]) == "maxsnap":
            raise MaxSnapshotsReached(self._max_snapshots)
        self._status(reply, sid_obj, "record_snapshot_created")

    def record_snapshot_restored(self, session_id: SessionId | str, snapshot_id: str) -> None:
        sid, sid_obj = self._sid(session_id)
        snapshot = check_str(snapshot_id, "snapshot_id")
        now = self._now()
        reply = self._run("record_snapshot_restored", "snapshot_restored", (self._key(sid),), (now, snapshot))
        self._status(reply, sid_obj, "record_snapshot_restored")

    def get_current_snapshot(self, session_id: SessionId | str) -> str | None:
        sid, sid_obj = self._sid(session_id)
        state, snapshot = self._cmd("get_current_snapshot", "HMGET", self._key(sid), "state", "snapshot")
        if state is None:
            raise SessionNotFound(sid_obj)
        return None if snapshot is None else _text(snapshot)

    def clear_snapshot_tracking(self, session_id: SessionId | str) -> None:
        sid, sid_obj = self._sid(session_id)
        now = self._now()
        reply = self._run("clear_snapshot_tracking", "clear_snapshots", (self._key(sid),), (now,))
        self._status(reply, sid_obj, "clear_snapshot_tracking")

    # -- whole table ----------------------------------------------------------

    def get_stats(self) -> SessionStats:
        created, destroyed, expired, active, with_vm = self._run(
            "get_stats", "stats", (self._stats_key, self._expiry_key, self._vms_key), ()
        )
        return SessionStats(int(created), int(active), int(with_vm), int(destroyed), int(expired))

    def _rows(self, reply: Sequence[Any]) -> list[SessionInfo]:
        from_string = SessionId.from_string
        rows = [
            (_text(reply[i]), reply[i + 1]) for i in range(0, len(reply), 2)
        ]
        rows.sort(key=lambda row: row[0])  # ULID text order is id order
        return [self._info(from_string(sid), fields) for sid, fields in rows]

    def list_sessions(self) -> list[SessionInfo]:
        reply = self._run("list_sessions", "list", (self._expiry_key,), (self._session_prefix,))
        return self._rows(reply)

    # -- bulk API (numpy) -----------------------------------------------------

    def validate_many(self, ids: Any) -> Any:
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
        keys = [self._key(sid) for sid in sids if sid is not None]
        answers = iter(self._run("validate_many", "validate_many", keys, (now,)) if keys else ())
        return np.array([sid is not None and int(next(answers)) == 1 for sid in sids], dtype=bool)

    def budget_table(self) -> Any:
        """One numpy row per session, in id order (fields:
        rlm_fast._types.BUDGET_TABLE_FIELDS), read in one atomic step."""
        dtype = budget_table_dtype()
        reply = self._run("budget_table", "list", (self._expiry_key,), (self._session_prefix,))
        rows = []
        for info in self._rows(reply):
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

    def _export(self) -> tuple[list[SessionInfo], SessionStats]:
        """Every session and the counters, read in one atomic step (dump)."""
        created, destroyed, expired, active, with_vm, rows = self._run(
            "dump", "export", (self._expiry_key, self._stats_key, self._vms_key), (self._session_prefix,)
        )
        stats = SessionStats(int(created), int(active), int(with_vm), int(destroyed), int(expired))
        return self._rows(rows), stats

    def _restore(self, infos: list[SessionInfo], counters: tuple[int, int, int]) -> None:
        """Fill an empty namespace from `_export`'s rows (load): all or
        nothing, in one script."""
        rows = check_restore(infos, counters)
        now = self._now()
        args: list[Any] = [now, self._session_prefix, self._grace_ms, *map(str, counters)]
        for info in rows:
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
            for name, value in info.context_variables.items():
                fields += [_CTX + name, value]
            args += [str(info.id), str(info.expires_at_ns), info.vm_instance_id or "", len(fields), *fields]
        reply = self._run("load", "restore", (self._stats_key, self._expiry_key, self._vms_key), args)
        if _text(reply[0]) != "ok":
            raise ValueError(f"restore needs a new, empty namespace ({self._namespace!r} is in use)")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        client: Any,
        config: RlmConfig | None = None,
        *,
        namespace: str = "rlm",
        clock: Callable[[], int] | None = None,
        ttl_grace_secs: int = DEFAULT_TTL_GRACE_SECS,
    ) -> "RedisSessionManager":
        """A manager on `namespace` (which must be empty) holding what a
        `dump` of any manager wrote to `path`, with the dumped config unless
        `config` is given; a bad file raises Serialization, nothing written."""
        from ._serde import load

        def make(config: RlmConfig, *, clock: Callable[[], int] | None) -> RedisSessionManager:
            return cls(client, config, namespace=namespace, clock=clock, ttl_grace_secs=ttl_grace_secs)

        return load(make, path, config, clock=clock)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write every session and the counters to `path`, atomically, in
        the format of `SessionManager.dump` (loadable by either core)."""
        from ._serde import dump

        dump(self, path)

    def __len__(self) -> int:
        return int(self._cmd("len", "ZCARD", self._expiry_key))

    def __contains__(self, session_id: object) -> bool:
        try:
            sid, _ = self._sid(session_id)
        except (TypeError, InvalidSessionToken):
            return False
        return int(self._cmd("contains", "EXISTS", self._key(sid))) == 1

    def __repr__(self) -> str:
        return f"<RedisSessionManager namespace={self._namespace!r} client={self._client!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RedisSessionManager cannot be pickled; make one per process")


def _client_encoding(client: Any) -> str | None:
    """The encoding a redis-py client uses for str arguments, if it says."""
    try:
        return str(client.get_encoder().encoding)
    except Exception:  # noqa: BLE001 - a client that cannot tell: trust it
        return None

