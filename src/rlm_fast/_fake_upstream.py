"""A scriptable stand-in for an OpenAI-compatible model server, for the
bridge's tests and demo: `POST /v1/chat/completions`, JSON or server-sent
events, answering from a queue of `Behaviour`s (or a reply function) and
recording what it received. `serve(app)` runs any aiohttp app on a free
loopback port. Needs aiohttp (the `bridge` extra).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Behaviour", "FakeUpstream", "serve"]


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one request.

    `reply` is the assistant's text; `prompt_tokens`/`completion_tokens`
    the usage it reports (`total_tokens` their sum unless given);
    `usage=False` leaves usage out. `delay_s` waits before answering,
    `hang=True` never answers (until the client gives up). `status` other
    than 200 answers that HTTP error with an OpenAI-style error body;
    `garbage` is sent as a 200 body instead of JSON. For streams,
    `hang_after_chunks` stops sending (without closing) after that many
    chunks.
    """

    reply: str = "ok"
    prompt_tokens: int = 7
    completion_tokens: int = 5
    total_tokens: int | None = None
    usage: bool = True
    delay_s: float = 0.0
    hang: bool = False
    status: int = 200
    garbage: bytes | None = None
    hang_after_chunks: int | None = None

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens if self.total_tokens is None else self.total_tokens

    def usage_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total,
        }


Reply = Callable[[dict[str, Any]], "Behaviour | str"]


class FakeUpstream:
    """The fake model server. Each request takes the next queued Behaviour
    (`push`), else asks `reply(body)` (a Behaviour or a reply text), else
    answers `default`. Counters: `requests` (every request that arrived),
    `headers` and `bodies` (what each carried, in order), `in_flight` and
    `max_in_flight`."""

    def __init__(self, reply: Reply | None = None, *, default: Behaviour | None = None) -> None:
        self.reply = reply
        self.default = default or Behaviour()
        self.queue: collections.deque[Behaviour] = collections.deque()
        self.requests = 0
        self.headers: list[dict[str, str]] = []
        self.bodies: list[Any] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.tokens_reported = 0  # total_tokens of every usage it sent
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self._chat)

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        self.queue.extend(behaviours)

    def reset(self) -> None:
        self.requests = 0
        self.headers.clear()
        self.bodies.clear()
        self.max_in_flight = 0
        self.tokens_reported = 0

    def _next(self, body: Any) -> Behaviour:
        if self.queue:
            return self.queue.popleft()
        if self.reply is not None:
            got = self.reply(body)
            return Behaviour(reply=got) if isinstance(got, str) else got
        return self.default

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.headers.append(dict(request.headers))
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "body is not a JSON object"}}, status=400)
        how = self._next(body)
        if how.hang:
            await asyncio.Event().wait()  # until the client goes away
        if how.delay_s:
            await asyncio.sleep(how.delay_s)
        if how.status != 200:
            return web.json_response(
                {"error": {"message": f"fake upstream error {how.status}", "type": "server_error"}},
                status=how.status,
            )
        if how.garbage is not None:
            return web.Response(body=how.garbage, content_type="application/json")
        model = body.get("model") or "fake-model"
        created = int(time.time())
        if body.get("stream") is True:
            return await self._stream(request, body, how, model, created)
        if how.usage:
            self.tokens_reported += how.total
        answer: dict[str, Any] = {
            "id": f"chatcmpl-fake{self.requests}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": how.reply},
                    "finish_reason": "stop",
                }
            ],
        }
        if how.usage:
            answer["usage"] = how.usage_dict()
        return web.json_response(answer)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], how: Behaviour, model: str, created: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-fake{self.requests}", "object": "chat.completion.chunk", "created": created, "model": model}
        words = how.reply.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = body.get("stream_options")
        if how.usage and isinstance(options, dict) and options.get("include_usage") is True:
            chunks.append({**base, "choices": [], "usage": how.usage_dict()})
            self.tokens_reported += how.total
        for sent, chunk in enumerate(chunks):
            if how.hang_after_chunks is not None and sent >= how.hang_after_chunks:
                await asyncio.Event().wait()
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if how.delay_s:
                await asyncio.sleep(0)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 1.0
) -> AsyncIterator[str]:
    """Run `app` on `host` (a free port unless given) until the block ends;
    yields its base URL, e.g. ``http://127.0.0.1:40123``. A handler still
    running at the end gets `shutdown_timeout` seconds, and one whose client
    went away is cancelled (a hanging fake must not outlive its test)."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
