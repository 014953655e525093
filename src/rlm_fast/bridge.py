"""The LLM bridge (SPEC 14; docs/bridge.md): an aiohttp app where every
sandbox's model call passes. It authenticates the call by its session id,
admits it with `begin_call`, forwards it to an OpenAI-compatible upstream
with the bridge's own key, and charges what the upstream reported with
`end_call`. Over any manager: in-process, AsyncSessionManager, Redis (its
calls in worker threads) or async Redis. Needs aiohttp (the `bridge` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import inspect
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import aiohttp
from aiohttp import web

from . import IMPLEMENTATION, RlmConfig, SessionManager, __version__, _session_py
from ._fake_upstream import Behaviour, FakeUpstream, serve
from .aio import AsyncSessionManager
from .errors import (
    BatchSizeTooLarge,
    InvalidSessionState,
    InvalidSessionToken,
    Io,
    LlmBridgeAuthFailed,
    LlmCallFailed,
    RecursionDepthExceeded,
    RlmError,
    Serialization,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

__all__ = [
    "make_app",
    "main",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_UPSTREAM_TIMEOUT_S",
    "HTTP_STATUS",
    "UPSTREAM_API_KEY_ENV",
]

log = logging.getLogger("rlm_fast.bridge")

#: Request bodies above this many bytes are refused with 413.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: A non-streamed upstream call must complete in this time; a stream may
#: stay silent this long between two reads.
DEFAULT_UPSTREAM_TIMEOUT_S = 300.0
#: Where `main` reads the upstream's key (never from the command line).
UPSTREAM_API_KEY_ENV = "RLM_FAST_UPSTREAM_API_KEY"

#: The HTTP status of each refusal; any other RlmError answers 500.
HTTP_STATUS: dict[type[RlmError], int] = {
    InvalidSessionToken: 401,
    SessionNotFound: 401,
    SessionExpired: 401,
    LlmBridgeAuthFailed: 401,
    InvalidSessionState: 403,
    TokenBudgetExceeded: 429,
    TimeBudgetExceeded: 429,
    RecursionDepthExceeded: 409,
    BatchSizeTooLarge: 413,
    Serialization: 400,
    LlmCallFailed: 502,
    Io: 503,  # the Redis server is unreachable
}


class _Refusal(Exception):
    """An RlmError answered with a status of its own (a too large body is
    a Serialization error, but 413)."""

    def __init__(self, err: RlmError, status: int) -> None:
        super().__init__(err)
        self.err = err
        self.status = status


def _error_response(err: RlmError, status: int | None = None) -> web.Response:
    # x-should-retry: OpenAI SDKs retry 409/429/5xx unless told; a refusal
    # of the table does not go away by retrying, a failed upstream may.
    return web.json_response(
        {"error": err.to_mcp_error()},
        status=HTTP_STATUS.get(type(err), 500) if status is None else status,
        headers={"x-should-retry": "true" if err.is_retryable() else "false"},
    )


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Refusal as refusal:
        return _error_response(refusal.err, refusal.status)
    except RlmError as err:
        return _error_response(err)


# -- one async interface over every manager -------------------------------------------


class _Threaded:
    """A sync manager whose calls wait on the network (RedisSessionManager):
    each call in a worker thread, so the loop keeps serving."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def begin_call(self, session_id: str) -> Any:
        return await asyncio.to_thread(self.manager.begin_call, session_id)

    async def end_call(self, session_id: str, *, tokens: int = 0, elapsed_ms: int = 0) -> Any:
        return await asyncio.to_thread(
            functools.partial(self.manager.end_call, session_id, tokens=tokens, elapsed_ms=elapsed_ms)
        )

    async def validate_session(self, session_id: str) -> Any:
        return await asyncio.to_thread(self.manager.validate_session, session_id)

    async def get_session(self, session_id: str) -> Any:
        return await asyncio.to_thread(self.manager.get_session, session_id)

    async def get_stats(self) -> Any:
        return await asyncio.to_thread(self.manager.get_stats)


def _blocking_redis(manager: object) -> bool:
    # A RedisSessionManager can only exist once rlm_fast.redis was imported;
    # looking it up there keeps the bridge free of a hard redis-py need.
    redis_module = sys.modules.get("rlm_fast.redis")
    cls = getattr(redis_module, "RedisSessionManager", None)
    return cls is not None and isinstance(manager, cls)


def as_async(manager: Any) -> tuple[Any, str]:
    """The manager as the bridge calls it (coroutine methods), and its kind:
    "in-process" (AsyncSessionManager, inline), "async" (awaited as is) or
    "threaded" (a sync Redis manager, in worker threads)."""
    if isinstance(manager, AsyncSessionManager):
        return manager, "in-process"
    if inspect.iscoroutinefunction(getattr(manager, "begin_call", None)):
        return manager, "async"
    if _blocking_redis(manager):
        return _Threaded(manager), "threaded"
    return AsyncSessionManager(manager), "in-process"


# -- reading requests and upstream answers -----------------------------------------------


def session_token(request: web.Request) -> str:
    """The session id a request presents: `X-Session-Token`, else the
    `Authorization: Bearer` value; "" when there is none (the manager then
    refuses it as a malformed token). Another scheme's credentials are never
    read, so they are never echoed back."""
    token = request.headers.get("X-Session-Token")
    if token is not None:
        return token.strip()
    auth = request.headers.get("Authorization")
    if auth is None:
        return ""
    scheme, _, value = auth.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _usage_tokens(answer: object) -> int | None:
    """`usage.total_tokens` of an upstream answer or chunk, when well formed."""
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    return None


class _UsageScanner:
    """Finds the usage in a server-sent-event stream as it passes, chunk by
    chunk, parsing only the `data:` lines that carry a token count."""

    __slots__ = ("_tail", "tokens")

    def __init__(self) -> None:
        self._tail = b""
        self.tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if b'"total_tokens"' in line and line.startswith(b"data:"):
                try:
                    tokens = _usage_tokens(json.loads(line[5:]))
                except (ValueError, RecursionError):
                    continue
                if tokens is not None:
                    self.tokens = tokens

    def close(self) -> None:
        self.feed(b"\n")


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace")
    return repr(text + ("…" if len(raw) > limit else ""))


def _elapsed_ms(started_ns: int) -> int:
    return max(0, time.monotonic_ns() - started_ns) // 1_000_000


class _Bridge:
    """What one app holds: the manager, the upstream, the HTTP session."""

    def __init__(
        self,
        manager: Any,
        *,
        upstream: str,
        upstream_api_key: str | None,
        max_batch_size: int,
        default_model: str | None,
        upstream_timeout_s: float,
        max_body_bytes: int,
        upstream_connections: int,
    ) -> None:
        self.table, self.kind = as_async(manager)
        self.url = upstream + "/v1/chat/completions"
        self.upstream_headers = {"Content-Type": "application/json"}
        if upstream_api_key:
            self.upstream_headers["Authorization"] = f"Bearer {upstream_api_key}"
        self.max_batch_size = max_batch_size
        self.default_model = default_model
        self.max_body_bytes = max_body_bytes
        self.timeout = aiohttp.ClientTimeout(total=upstream_timeout_s)
        # A stream may last as long as it keeps talking: the timeout is per read.
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=upstream_timeout_s, sock_read=upstream_timeout_s
        )
        self.timeout_s = upstream_timeout_s
        self.connections = upstream_connections
        self.http: aiohttp.ClientSession | None = None

    async def session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """app.cleanup_ctx: one upstream ClientSession for the app's life."""
        connector = aiohttp.TCPConnector(limit=self.connections)
        async with aiohttp.ClientSession(connector=connector) as http:
            self.http = http
            yield
            self.http = None

    # -- request bodies ---------------------------------------------------------------

    async def _refuse_body(self, token: str, err: RlmError, status: int) -> NoReturn:
        # Authenticate first: a caller without a valid session learns nothing
        # about bodies. Only this (rare) path pays the extra table call.
        await self.table.validate_session(token)
        raise _Refusal(err, status)

    async def read_body(self, request: web.Request, token: str) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            await self._refuse_body(token, self._too_large(length), 413)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            await self._refuse_body(token, self._too_large(None), 413)

    def _too_large(self, length: int | None) -> Serialization:
        size = "" if length is None else f" ({length} bytes)"
        return Serialization(f"request body too large{size}: the limit is {self.max_body_bytes} bytes")

    async def read_json(self, request: web.Request, token: str) -> tuple[dict[str, Any], bytes]:
        raw = await self.read_body(request, token)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            await self._refuse_body(token, Serialization(f"request body is not JSON: {exc}"), 400)
        if not isinstance(body, dict):
            await self._refuse_body(token, Serialization("request body must be a JSON object"), 400)
        return body, raw

    async def bad_field(self, token: str, message: str) -> NoReturn:
        await self._refuse_body(token, Serialization(message), 400)

    # -- charging -----------------------------------------------------------------------

    async def charge(self, token: str, tokens: int, elapsed_ms: int) -> tuple[Any, RlmError | None]:
        """`end_call`; returns (the session's BudgetStatus or None, the budget
        error when this charge passed a budget: recorded, the answer still
        goes back, the next call is refused)."""
        try:
            return await self.table.end_call(token, tokens=tokens, elapsed_ms=elapsed_ms), None
        except (TokenBudgetExceeded, TimeBudgetExceeded) as over:
            return None, over
        except Exception:
            # Terminated, expired or destroyed during the call (nothing is
            # recorded then), or Redis unreachable: the answer was spent and
            # still goes back; the log says the charge is missing.
            log.warning(
                "end_call(%s, tokens=%d, elapsed_ms=%d) failed; the call is not charged",
                token, tokens, elapsed_ms, exc_info=True,
            )
            return None, None

    async def remaining(self, token: str, status: Any, over: RlmError | None) -> tuple[int, int]:
        if status is None:
            try:
                status = (await self.table.get_session(token)).budget_status
            except Exception:
                return 0, 0
        tokens, time_ms = status.tokens_remaining(), status.time_remaining_ms()
        if isinstance(over, TokenBudgetExceeded):
            tokens = 0  # the path is over budget, whichever session on it
        elif isinstance(over, TimeBudgetExceeded):
            time_ms = 0
        return tokens, time_ms

    # -- the upstream -------------------------------------------------------------------

    async def post_json(self, payload: bytes) -> tuple[bytes, dict[str, Any], int]:
        """One non-streamed upstream call: (raw answer, parsed, total tokens);
        LlmCallFailed when it fails, times out or answers garbage."""
        assert self.http is not None, "the app is not running"
        try:
            async with self.http.post(
                self.url, data=payload, headers=self.upstream_headers, timeout=self.timeout
            ) as response:
                raw = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise LlmCallFailed(f"upstream timed out after {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise LlmCallFailed(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
        return self.parse_answer(status, raw)

    def parse_answer(self, status: int, raw: bytes) -> tuple[bytes, dict[str, Any], int]:
        if status != 200:
            raise LlmCallFailed(f"upstream answered HTTP {status}: {_snippet(raw)}")
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            raise LlmCallFailed(f"upstream answered garbage: {_snippet(raw)}") from None
        tokens = _usage_tokens(answer)
        if tokens is None:
            raise LlmCallFailed("upstream answer has no usage.total_tokens to charge")
        return raw, answer, tokens

    # -- one model-call step ---------------------------------------------------------------

    async def query(self, token: str, payload: bytes) -> dict[str, Any]:
        """POST /query's step: admit, call, charge; the Ok answer."""
        await self.table.begin_call(token)
        started = time.monotonic_ns()
        try:
            _, answer, tokens = await self.post_json(payload)
            try:
                content = answer["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise LlmCallFailed("upstream answer has no choices[0].message.content") from None
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise LlmCallFailed("upstream answer's content is not a string")
        except BaseException:
            await self.charge(token, 0, _elapsed_ms(started))
            raise
        elapsed = _elapsed_ms(started)
        status, over = await self.charge(token, tokens, elapsed)
        tokens_remaining, time_remaining = await self.remaining(token, status, over)
        return {
            "response": content,
            "tokens_used": tokens,
            "time_ms": elapsed,
            "tokens_remaining": tokens_remaining,
            "time_remaining_ms": time_remaining,
        }

    async def query_payload(self, token: str, query: object) -> bytes:
        """The chat-completions request for one `/query` body."""
        if not isinstance(query, dict):
            await self.bad_field(token, "a query must be a JSON object")
        prompt = query.get("prompt")
        if not isinstance(prompt, str):
            await self.bad_field(token, "prompt must be a string")
        model = query.get("model")
        if model is None:
            model = self.default_model
        if not isinstance(model, str) or not model:
            await self.bad_field(token, "model must be a non-empty string (the bridge has no default_model)")
        request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        temperature = query.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
                await self.bad_field(token, "temperature must be a number")
            request["temperature"] = temperature
        max_tokens = query.get("max_tokens")
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                await self.bad_field(token, "max_tokens must be a positive integer")
            request["max_tokens"] = max_tokens
        return json.dumps(request).encode()

    # -- handlers ------------------------------------------------------------------------

    async def handle_query(self, request: web.Request) -> web.StreamResponse:
        token = session_token(request)
        body, _ = await self.read_json(request, token)
        payload = await self.query_payload(token, body)
        return web.json_response(await self.query(token, payload))

    async def handle_query_batched(self, request: web.Request) -> web.StreamResponse:
        token = session_token(request)
        body, _ = await self.read_json(request, token)
        queries = body.get("queries")
        if not isinstance(queries, list):
            await self.bad_field(token, "queries must be a list")
        if len(queries) > self.max_batch_size:
            await self._refuse_body(token, BatchSizeTooLarge(len(queries), self.max_batch_size), 413)
        payloads = [await self.query_payload(token, q) for q in queries]
        # One authentication for the batch: an invalid session is a 401/403
        # for the request, not N copies of the error.
        await self.table.validate_session(token)
        results = await asyncio.gather(
            *(self.query(token, p) for p in payloads), return_exceptions=True
        )
        responses: list[dict[str, Any]] = []
        total_tokens = total_time = 0
        for result in results:
            if isinstance(result, dict):
                responses.append({"Ok": result})
                total_tokens += result["tokens_used"]
                total_time += result["time_ms"]
            elif isinstance(result, RlmError):
                responses.append({"Err": str(result)})
            else:
                raise result  # not ours to swallow (cancellation, a bug)
        return web.json_response(
            {"responses": responses, "total_tokens_used": total_tokens, "total_time_ms": total_time}
        )

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"status": "ok", "version": __version__, "implementation": IMPLEMENTATION, "manager": self.kind}
        )

    async def handle_chat_completions(self, request: web.Request) -> web.StreamResponse:
        token = session_token(request)
        body, raw = await self.read_json(request, token)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            await self.bad_field(token, "stream must be a boolean")
        if stream:
            options = body.get("stream_options")
            if options is None:
                options = {}
            if not isinstance(options, dict):
                await self.bad_field(token, "stream_options must be an object")
            # The bridge charges what the last chunk reports.
            body["stream_options"] = {**options, "include_usage": True}
            raw = json.dumps(body).encode()
        await self.table.begin_call(token)
        started = time.monotonic_ns()
        if not stream:
            try:
                answer, _, tokens = await self.post_json(raw)
            except BaseException:
                await self.charge(token, 0, _elapsed_ms(started))
                raise
            await self.charge(token, tokens, _elapsed_ms(started))
            return web.Response(body=answer, content_type="application/json")
        return await self.stream(request, token, raw, started)

    async def stream(self, request: web.Request, token: str, payload: bytes, started: int) -> web.StreamResponse:
        """A streamed call, passed through chunk by chunk; charged when it ends
        with the usage of its last chunk (0 if the stream broke before it):
        before the chunk holding `data: [DONE]` is passed on (or the stream's
        end, without one), so a client that has read the whole stream finds
        the call charged."""
        assert self.http is not None, "the app is not running"
        tokens = 0
        charged = False

        async def charge_now() -> None:
            nonlocal charged
            charged = True
            await self.charge(token, scanner.tokens or 0, _elapsed_ms(started))

        try:
            try:
                upstream = await self.http.post(
                    self.url, data=payload, headers=self.upstream_headers, timeout=self.stream_timeout
                )
            except asyncio.TimeoutError:
                raise LlmCallFailed(f"upstream timed out after {self.timeout_s:g} s") from None
            except aiohttp.ClientError as exc:
                raise LlmCallFailed(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
            try:
                if upstream.status != 200 or not upstream.content_type.startswith("text/event-stream"):
                    try:
                        raw = await upstream.read()
                    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                        raise LlmCallFailed(f"upstream failed: {type(exc).__name__}") from None
                    answer, _, tokens = self.parse_answer(upstream.status, raw)
                    return web.Response(body=answer, content_type="application/json")
                out = web.StreamResponse(
                    headers={"Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
                             "Cache-Control": "no-cache"}
                )
                await out.prepare(request)
                scanner = _UsageScanner()
                tail = b""
                try:
                    async for chunk in upstream.content.iter_any():
                        scanner.feed(chunk)
                        if not charged and b"[DONE]" in tail + chunk:
                            await charge_now()
                        tail = chunk[-8:]
                        await out.write(chunk)
                    scanner.close()
                    if not charged:
                        await charge_now()
                    await out.write_eof()
                except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    log.warning("upstream stream broke after %d ms: %r", _elapsed_ms(started), exc)
                except ConnectionError:
                    log.info("client went away during a stream")
                tokens = scanner.tokens or 0
                return out
            finally:
                upstream.release()
        finally:
            if not charged:
                await self.charge(token, tokens, _elapsed_ms(started))


_BRIDGE = web.AppKey("rlm_fast.bridge", _Bridge)


def make_app(
    manager: Any,
    *,
    upstream: str,
    upstream_api_key: str | None = None,
    max_batch_size: int = 10,
    default_model: str | None = None,
    upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    upstream_connections: int = 100,
) -> web.Application:
    """The bridge as an aiohttp app (docs/bridge.md), over `manager`: an
    in-process SessionManager, an AsyncSessionManager, a RedisSessionManager
    or an AsyncRedisSessionManager. `upstream` is the model server's base
    URL (`{upstream}/v1/chat/completions` is called; a trailing `/v1` is
    accepted); `upstream_api_key` its key (sent as `Authorization: Bearer`)."""
    if not isinstance(upstream, str) or not upstream.startswith(("http://", "https://")):
        raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}")
    base = upstream.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    for name, value in (("max_batch_size", max_batch_size), ("max_body_bytes", max_body_bytes),
                        ("upstream_connections", upstream_connections)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if isinstance(upstream_timeout_s, bool) or not isinstance(upstream_timeout_s, (int, float)):
        raise TypeError("upstream_timeout_s must be a number of seconds")
    if not 0 < upstream_timeout_s < float("inf"):
        raise ValueError(f"upstream_timeout_s must be positive, got {upstream_timeout_s!r}")
    bridge = _Bridge(
        manager,
        upstream=base,
        upstream_api_key=upstream_api_key,
        max_batch_size=max_batch_size,
        default_model=default_model,
        upstream_timeout_s=float(upstream_timeout_s),
        max_body_bytes=max_body_bytes,
        upstream_connections=upstream_connections,
    )
    app = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
    app[_BRIDGE] = bridge
    app.cleanup_ctx.append(bridge.session_ctx)
    app.router.add_post("/query", bridge.handle_query)
    app.router.add_post("/query_batched", bridge.handle_query_batched)
    app.router.add_get("/health", bridge.handle_health)
    app.router.add_post("/v1/chat/completions", bridge.handle_chat_completions)
    return app


# -- python -m rlm_fast bridge ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_fast bridge",
        description="The LLM bridge: OpenAI-compatible, every call checked and charged against "
        f"its session. The upstream's key is read from ${UPSTREAM_API_KEY_ENV}.",
    )
    parser.add_argument("--upstream", help="the model server's base URL (required unless --demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700, help="port (default 8700)")
    parser.add_argument("--redis", metavar="URL", help="serve the sessions of this Redis (else a table in this process)")
    parser.add_argument("--namespace", default="rlm", help="the Redis namespace (default rlm)")
    parser.add_argument("--default-model", help="model for /query requests that name none")
    parser.add_argument("--max-batch-size", type=int, default=10)
    parser.add_argument("--upstream-timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT_S, metavar="S")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--demo", action="store_true", help="run a fake upstream and OpenAI clients against the bridge and report")
    parser.add_argument("--clients", type=int, default=16, help="--demo: concurrent clients (default 16)")
    parser.add_argument("--seconds", type=float, default=3.0, help="--demo: seconds per measurement (default 3)")
    return parser


def _redis_manager(url: str, namespace: str) -> Any:
    from . import redis as rlm_redis  # needs redis-py: only with --redis

    async_cls = getattr(rlm_redis, "AsyncRedisSessionManager", None)
    if async_cls is not None:
        import redis.asyncio

        return async_cls(redis.asyncio.Redis.from_url(url), namespace=namespace)
    import redis

    return rlm_redis.RedisSessionManager(redis.Redis.from_url(url), namespace=namespace)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.demo:
        if importlib.util.find_spec("openai") is None:
            _parser().error("--demo drives real OpenAI clients: pip install openai")
        return asyncio.run(_demo(args))
    if not args.upstream:
        _parser().error("--upstream URL is required (or --demo)")
    manager = _redis_manager(args.redis, args.namespace) if args.redis else SessionManager()
    app = make_app(
        manager,
        upstream=args.upstream,
        upstream_api_key=os.environ.get(UPSTREAM_API_KEY_ENV) or None,
        max_batch_size=args.max_batch_size,
        default_model=args.default_model,
        upstream_timeout_s=args.upstream_timeout,
        max_body_bytes=args.max_body_bytes,
    )
    if not args.redis:
        # A table in this process has no other way in: hand out a root session.
        root = manager.create_session()
        print(f"root session (use it as the API key): {root.id}", flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=None)
    return 0


# -- the demo ---------------------------------------------------------------------------------


class _Timed:
    """A manager whose every call adds its wall time to `ns` (the demo's
    measure of the table's share; in-process calls never block, so wall
    time inside them is CPU time)."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self.ns = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._manager, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return method(*args, **kwargs)
            finally:
                self.ns += time.perf_counter_ns() - started
                self.calls += 1

        return timed


class _LoopThread:
    """An event loop in its own thread (the demo runs the fake upstream and
    the bridge each in one, so its clients' work is not counted as theirs)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()

    async def run(self, coro: Awaitable[Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))  # type: ignore[arg-type]

    async def serve(self, app: web.Application) -> str:
        async def start() -> str:
            return await self.stack.enter_async_context(serve(app))

        return str(await self.run(start()))

    async def cpu_ns(self) -> int:
        async def read() -> int:
            return time.thread_time_ns()

        return int(await self.run(read()))

    async def close(self) -> None:
        await self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _clients(
    base_url: str, keys: list[str], seconds: float, new_key: Callable[[int], str] | None
) -> dict[str, Any]:
    """N AsyncOpenAI clients calling for `seconds`; every fourth call streams.
    A client refused for its budget (429) or state (401/403) asks `new_key`
    for a fresh session and goes on."""
    import openai

    latencies: list[float] = []
    refused: dict[int, int] = {}
    seen_tokens = 0
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        nonlocal seen_tokens
        key = keys[index]
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
        calls = 0
        try:
            while time.monotonic() < deadline:
                calls += 1
                started = time.perf_counter()
                try:
                    if calls % 4 == 0:
                        stream = await client.chat.completions.create(
                            model="fake", messages=[{"role": "user", "content": "hi"}], stream=True,
                            stream_options={"include_usage": True},
                        )
                        usage = None
                        async for chunk in stream:
                            if chunk.usage is not None:
                                usage = chunk.usage.total_tokens
                    else:
                        answer = await client.chat.completions.create(
                            model="fake", messages=[{"role": "user", "content": "hi"}]
                        )
                        usage = answer.usage.total_tokens if answer.usage else None
                except openai.APIStatusError as exc:
                    refused[exc.status_code] = refused.get(exc.status_code, 0) + 1
                    if new_key is None:
                        raise
                    key = new_key(index)
                    await client.close()
                    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
                    continue
                latencies.append(time.perf_counter() - started)
                seen_tokens += usage or 0
        finally:
            await client.close()

    await asyncio.gather(*(one(i) for i in range(len(keys))))
    return {"latencies": latencies, "refused": refused, "tokens": seen_tokens}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _demo(args: argparse.Namespace) -> int:
    n, seconds = max(1, args.clients), max(0.5, args.seconds)
    fake = FakeUpstream(default=Behaviour(reply="hello from the fake upstream"))
    config = RlmConfig(token_budget=10**12, time_budget_ms=10**12, max_recursion_depth=10)
    core = SessionManager
    if not hasattr(core, "begin_call"):  # until the compiled core has the model-call step
        core = _session_py.SessionManager
    table = _Timed(core(config))
    root = table.create_session().id
    # Half the clients get children with a small budget, so the demo shows
    # refusals; one starts on a terminated child.
    small = 20 * fake.default.total

    def child(index: int) -> str:
        budget = small if index % 2 else None
        return str(table.create_child_session(root, token_budget=budget).id)

    keys = [child(i) for i in range(n)]
    table.update_session_state(keys[0], "Terminated")

    upstream_thread, bridge_thread = _LoopThread("fake-upstream"), _LoopThread("bridge")
    try:
        upstream_url = await upstream_thread.serve(fake.app)
        bridge_url = await bridge_thread.serve(make_app(table, upstream=upstream_url))
        print(f"rlm_fast {__version__} ({'python twin' if core is _session_py.SessionManager else IMPLEMENTATION + ' core'}); fake upstream {upstream_url}; bridge {bridge_url}")
        print(f"{n} AsyncOpenAI clients, {seconds:g} s each way, every 4th call streamed")

        direct = await _clients(upstream_url, ["direct"] * n, seconds, None)
        fake.reset()
        table.ns = table.calls = 0
        cpu0 = await bridge_thread.cpu_ns()
        bridged = await _clients(bridge_url, keys, seconds, child)
        cpu = await bridge_thread.cpu_ns() - cpu0
        stats = table.get_stats()
        used = table.get_session(root).budget_status.tokens_used
    finally:
        await bridge_thread.close()
        await upstream_thread.close()

    ok = len(bridged["latencies"])
    p50d, p99d = _pct(direct["latencies"], 0.5), _pct(direct["latencies"], 0.99)
    p50b, p99b = _pct(bridged["latencies"], 0.5), _pct(bridged["latencies"], 0.99)
    print(f"direct : {len(direct['latencies']) / seconds:8.0f} req/s  p50 {p50d * 1e3:6.2f} ms  p99 {p99d * 1e3:6.2f} ms")
    print(f"bridged: {ok / seconds:8.0f} req/s  p50 {p50b * 1e3:6.2f} ms  p99 {p99b * 1e3:6.2f} ms")
    print(f"added by the bridge: p50 {(p50b - p50d) * 1e3:+.2f} ms, p99 {(p99b - p99d) * 1e3:+.2f} ms")
    if ok:
        per_call = cpu / max(1, fake.requests)
        print(
            f"bridge thread CPU {per_call / 1e3:.0f} us per forwarded call; inside the table "
            f"{table.ns / max(1, fake.requests) / 1e3:.1f} us ({table.calls} calls): "
            f"{100 * table.ns / max(1, cpu):.1f}% of the bridge's CPU"
        )
    refusals = {name: getattr(stats, name) for name in (
        "rejected_not_found", "rejected_invalid_token", "rejected_terminated", "rejected_expired",
        "rejected_tokens", "rejected_time", "rejected_depth")}
    print("refusals (get_stats):", ", ".join(f"{k[len('rejected_'):]}={v}" for k, v in refusals.items()))
    print("HTTP refusals the clients saw:", dict(sorted(bridged["refused"].items())))
    balanced = used == bridged["tokens"] == fake.tokens_reported
    print(
        f"budgets balance: root tokens_used {used} == clients' usage {bridged['tokens']} "
        f"== upstream's usage {fake.tokens_reported}: {'yes' if balanced else 'NO'}"
    )
    return 0 if balanced else 1
