"""The LLM bridge (SPEC 14, docs/bridge.md) with real clients: the openai SDK
(sync and async, streamed and not) and raw HTTP, against the fake upstream,
over every core the `core` fixture gives (those without the model-call step
yet are skipped)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")
pytest_asyncio = pytest.importorskip("pytest_asyncio")

from rlm_fast import (  # noqa: E402
    InvalidSessionState,
    InvalidSessionToken,
    LlmCallFailed,
    RlmConfig,
    SessionExpired,
    SessionId,
    SessionNotFound,
    SessionState,
    TokenBudgetExceeded,
)
from rlm_fast._fake_upstream import Behaviour, FakeUpstream, serve  # noqa: E402
from rlm_fast.aio import AsyncSessionManager  # noqa: E402
from rlm_fast.bridge import make_app, main  # noqa: E402

USAGE = Behaviour().total  # 12 tokens a call, unless a test says otherwise
KEY = "sk-upstream-secret"


class Bridge:
    def __init__(self, url: str, manager: Any, upstream: FakeUpstream) -> None:
        self.url = url
        self.manager = manager
        self.upstream = upstream

    async def post(self, path: str, body: Any = None, *, token: str | None = None,
                   headers: dict[str, str] | None = None, data: Any = None) -> tuple[int, Any, Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + path, json=body if data is None else None, data=data,
                                 headers=headers) as response:
                raw = await response.read()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = raw
                return response.status, parsed, response.headers

    def tokens_used(self, sid: Any) -> int:
        return int(self.manager.get_session(sid).budget_status.tokens_used)

    def assert_untouched(self, sid: Any) -> None:
        info = self.manager.get_session(sid)
        assert (info.budget_status.tokens_used, info.budget_status.time_used_ms, info.recursion_depth) == (0, 0, 0)


def _need_call_step(manager: Any) -> None:
    if not hasattr(manager, "begin_call"):
        pytest.skip(f"{type(manager).__name__} has no begin_call/end_call yet")


@pytest_asyncio.fixture
async def upstream():  # type: ignore[no-untyped-def]
    fake = FakeUpstream()
    async with serve(fake.app) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def manager(make_manager):  # type: ignore[no-untyped-def]
    m = make_manager(token_budget=10_000, session_duration_secs=60, max_recursion_depth=3)
    _need_call_step(m)
    return m


async def _bridge(manager: Any, upstream: FakeUpstream, **kwargs: Any):  # type: ignore[no-untyped-def]
    kwargs.setdefault("upstream_api_key", KEY)
    kwargs.setdefault("default_model", "fake-model")
    kwargs.setdefault("upstream_timeout_s", 5)
    app = make_app(manager, upstream=upstream.url, **kwargs)  # type: ignore[attr-defined]
    return serve(app)


@pytest_asyncio.fixture
async def bridge(manager, upstream):  # type: ignore[no-untyped-def]
    async with await _bridge(manager, upstream) as url:
        yield Bridge(url, manager, upstream)


def _sdk(bridge: Bridge, sid: Any, *, sync: bool = False) -> Any:
    cls = openai.OpenAI if sync else openai.AsyncOpenAI
    return cls(base_url=f"{bridge.url}/v1", api_key=str(sid), max_retries=0)


def _no_session_upstream(bridge: Bridge, *sids: Any) -> None:
    """The upstream saw the bridge's key and never a session id."""
    for headers in bridge.upstream.headers:
        assert headers.get("Authorization") == f"Bearer {KEY}"
        assert "X-Session-Token" not in headers
        for value in headers.values():
            for sid in sids:
                assert str(sid) not in value


# -- the OpenAI-compatible endpoint --------------------------------------------------------


@pytest.mark.asyncio
async def test_async_sdk_is_charged_what_upstream_reported(bridge) -> None:  # type: ignore[no-untyped-def]
    sid = bridge.manager.create_session().id
    client = _sdk(bridge, sid)
    try:
        answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert answer.choices[0].message.content == "ok"
    assert answer.usage.total_tokens == USAGE
    info = bridge.manager.get_session(sid)
    assert info.budget_status.tokens_used == USAGE and info.recursion_depth == 0
    assert bridge.upstream.requests == 1
    assert bridge.upstream.bodies[0] == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    _no_session_upstream(bridge, sid)


@pytest.mark.asyncio
async def test_async_sdk_stream_passes_through_and_charges_final_usage(bridge) -> None:  # type: ignore[no-untyped-def]
    bridge.upstream.push(Behaviour(reply="one two three", prompt_tokens=3, completion_tokens=4))
    sid = bridge.manager.create_session().id
    client = _sdk(bridge, sid)
    try:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, temperature=0.5
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage.total_tokens
    finally:
        await client.close()
    assert text == "one two three" and usage == 7
    assert bridge.tokens_used(sid) == 7
    sent = bridge.upstream.bodies[0]
    assert sent["stream_options"] == {"include_usage": True} and sent["temperature"] == 0.5
    assert bridge.manager.get_session(sid).recursion_depth == 0
    _no_session_upstream(bridge, sid)


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_sync_sdk_in_a_thread(bridge, stream) -> None:  # type: ignore[no-untyped-def]
    sid = bridge.manager.create_session().id

    def run() -> int:
        with _sdk(bridge, sid, sync=True) as client:
            if not stream:
                return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).usage.total_tokens
            total = 0
            for chunk in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.usage is not None:
                    total = chunk.usage.total_tokens
            return total

    seen = sum(await asyncio.gather(*(asyncio.to_thread(run) for _ in range(3))))
    assert seen == 3 * USAGE == bridge.tokens_used(sid) == bridge.upstream.tokens_reported


@pytest.mark.asyncio
async def test_stream_arrives_chunk_by_chunk(manager, upstream) -> None:  # type: ignore[no-untyped-def]
    """The first chunks reach the client while the upstream is still silent;
    the broken stream is charged its time and no tokens."""
    upstream.push(Behaviour(reply="a b c d", hang_after_chunks=2))
    async with await _bridge(manager, upstream, upstream_timeout_s=0.6) as url:
        bridge = Bridge(url, manager, upstream)
        sid = manager.create_session().id
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        started = time.monotonic()
        first_at = None
        got = b""
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={"X-Session-Token": str(sid)}) as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    first_at = first_at or time.monotonic() - started
                    got += chunk
        total = time.monotonic() - started
        assert got.count(b"data: ") == 2 and b"[DONE]" not in got
        assert first_at is not None and first_at < 0.4 < total
        info = manager.get_session(sid)
        assert info.budget_status.tokens_used == 0 and info.budget_status.time_used_ms >= 500
        assert info.recursion_depth == 0
        assert bridge.upstream.requests == 1


# -- /query, /query_batched, /health ---------------------------------------------------------


@pytest.mark.asyncio
async def test_query(bridge) -> None:  # type: ignore[no-untyped-def]
    sid = bridge.manager.create_session().id
    status, body, _ = await bridge.post(
        "/query", {"prompt": "2+2?", "temperature": 0, "max_tokens": 5},
        headers={"X-Session-Token": str(sid).lower()},
    )
    assert status == 200, body
    assert body["response"] == "ok" and body["tokens_used"] == USAGE
    assert body["tokens_remaining"] == 10_000 - USAGE
    assert body["time_ms"] >= 0 and body["time_remaining_ms"] > 0
    assert bridge.upstream.bodies[0] == {
        "model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}],
        "temperature": 0, "max_tokens": 5,
    }
    status, body, _ = await bridge.post("/query", {"prompt": "p", "model": "other"}, token=str(sid))
    assert status == 200 and bridge.upstream.bodies[1]["model"] == "other"
    assert bridge.tokens_used(sid) == 2 * USAGE
    _no_session_upstream(bridge, sid)


@pytest.mark.asyncio
async def test_query_batched_runs_concurrently(bridge) -> None:  # type: ignore[no-untyped-def]
    bridge.upstream.default = Behaviour(delay_s=0.3)
    sid = bridge.manager.create_session().id
    started = time.monotonic()
    status, body, _ = await bridge.post("/query_batched", {"queries": [{"prompt": str(i)} for i in range(3)]},
                                        token=str(sid))
    assert status == 200, body
    assert time.monotonic() - started < 0.85  # three 0.3 s calls at once
    assert bridge.upstream.max_in_flight == 3
    assert [list(r) for r in body["responses"]] == [["Ok"]] * 3
    assert body["total_tokens_used"] == 3 * USAGE == bridge.tokens_used(sid)
    assert body["total_time_ms"] == sum(r["Ok"]["time_ms"] for r in body["responses"])
    # max_recursion_depth=3: a fourth concurrent step would be too deep.
    status, body, _ = await bridge.post("/query_batched", {"queries": [{"prompt": "x"}] * 4}, token=str(sid))
    assert status == 200
    errs = [r["Err"] for r in body["responses"] if "Err" in r]
    assert len(errs) == 1 and errs[0].startswith("Recursion depth limit exceeded")


@pytest.mark.asyncio
async def test_query_batched_too_large(manager, upstream) -> None:  # type: ignore[no-untyped-def]
    async with await _bridge(manager, upstream, max_batch_size=2) as url:
        bridge = Bridge(url, manager, upstream)
        sid = manager.create_session().id
        status, body, _ = await bridge.post("/query_batched", {"queries": [{"prompt": "x"}] * 3}, token=str(sid))
        assert status == 413
        assert body["error"]["message"] == "Batch size 3 exceeds maximum 2"
        assert upstream.requests == 0
        bridge.assert_untouched(sid)
        status, body, _ = await bridge.post("/query_batched", {"queries": []}, token=str(sid))
        assert status == 200 and body == {"responses": [], "total_tokens_used": 0, "total_time_ms": 0}


@pytest.mark.asyncio
async def test_health_needs_no_auth(bridge) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.url + "/health") as response:
            assert response.status == 200
            body = await response.json()
    assert body["status"] == "ok" and body["manager"] in ("in-process", "threaded", "async")


# -- auth --------------------------------------------------------------------------------------

ENDPOINTS = [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ("/query", {"prompt": "x"}),
    ("/query_batched", {"queries": [{"prompt": "x"}]}),
]


def _error_of(body: Any, cls: type) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == cls.code, (error, cls)
    return error  # type: ignore[no-any-return]


@pytest.mark.asyncio
@pytest.mark.parametrize("path,payload", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
async def test_auth_refusals_reach_no_upstream(bridge, clock, path, payload) -> None:  # type: ignore[no-untyped-def]
    m = bridge.manager
    cases: list[tuple[dict[str, str], int, type, str]] = [
        ({}, 401, InvalidSessionToken, "Invalid session token"),
        ({"Authorization": "Bearer not-a-ulid"}, 401, InvalidSessionToken, "Invalid session token: not-a-ulid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, InvalidSessionToken, "Invalid session token"),
        ({"X-Session-Token": "O" * 26}, 401, InvalidSessionToken, "Invalid session token"),
    ]
    unknown = SessionId()
    cases.append(({"Authorization": f"Bearer {unknown}"}, 401, SessionNotFound, f"Session not found: {unknown}"))
    root = m.create_session().id
    child = m.create_child_session(root).id
    m.update_session_state(root, SessionState.TERMINATED)
    cases.append(({"X-Session-Token": str(child)}, 403, InvalidSessionState, str(root)))
    cases.append(({"Authorization": f"bearer {root}"}, 403, InvalidSessionState, str(root)))
    for headers, status, cls, text in cases:
        got, body, response_headers = await bridge.post(path, payload, headers=headers)
        assert got == status, (headers, body)
        assert text in _error_of(body, cls)["message"]
        assert response_headers["x-should-retry"] == "false"
        assert "dXNlcjpwYXNz" not in json.dumps(body)  # another scheme's credentials are not echoed
    old = m.create_session().id
    clock.advance(seconds=61)
    got, body, _ = await bridge.post(path, payload, token=str(old))
    assert got == 401 and _error_of(body, SessionExpired)["message"] == f"Session expired: {old}"
    assert bridge.upstream.requests == 0


@pytest.mark.asyncio
async def test_sdk_sees_refusals_as_api_errors(bridge) -> None:  # type: ignore[no-untyped-def]
    client = _sdk(bridge, SessionId())
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    finally:
        await client.close()
    assert caught.value.status_code == 401
    assert bridge.upstream.requests == 0


# -- bodies --------------------------------------------------------------------------------------

BAD_BODIES = [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b"[1, 2]"),
    ("/v1/chat/completions", json.dumps({"model": "m", "messages": [], "stream": "yes"}).encode()),
    ("/v1/chat/completions", json.dumps({"stream": True, "stream_options": 3}).encode()),
    ("/v1/chat/completions", b"[" * 100_000),
    ("/query", b"\xff\xfe garbage"),
    ("/query", json.dumps({"prompt": 3}).encode()),
    ("/query", json.dumps({"prompt": "x", "max_tokens": True}).encode()),
    ("/query", json.dumps({"prompt": "x", "temperature": "hot"}).encode()),
    ("/query_batched", json.dumps({"queries": "x"}).encode()),
    ("/query_batched", json.dumps({"queries": [{"prompt": "x"}, 7]}).encode()),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("path,raw", BAD_BODIES)
async def test_malformed_body_is_400_and_charges_nothing(bridge, path, raw) -> None:  # type: ignore[no-untyped-def]
    sid = bridge.manager.create_session().id
    status, body, _ = await bridge.post(path, data=raw, token=str(sid),
                                        headers={"Content-Type": "application/json"})
    assert status == 400, body
    assert body["error"]["message"].startswith("Serialization error: ")
    bridge.assert_untouched(sid)
    assert bridge.upstream.requests == 0
    # Auth comes first: the same body with an unknown session is a 401.
    status, body, _ = await bridge.post(path, data=raw, token=str(SessionId()))
    assert status == 401 and body["error"]["code"] == SessionNotFound.code


@pytest.mark.asyncio
async def test_query_without_any_model_is_400(manager, upstream) -> None:  # type: ignore[no-untyped-def]
    async with await _bridge(manager, upstream, default_model=None) as url:
        sid = manager.create_session().id
        status, body, _ = await Bridge(url, manager, upstream).post("/query", {"prompt": "x"}, token=str(sid))
        assert status == 400 and "model" in body["error"]["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("chunked", [False, True])
async def test_five_megabyte_body_is_413(bridge, chunked) -> None:  # type: ignore[no-untyped-def]
    sid = bridge.manager.create_session().id
    blob = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (5 << 20)}]}).encode()

    async def pieces():  # type: ignore[no-untyped-def]
        for i in range(0, len(blob), 1 << 16):
            yield blob[i : i + 1 << 16]

    status, body, _ = await bridge.post("/v1/chat/completions", data=pieces() if chunked else blob, token=str(sid))
    assert status == 413, body
    assert "too large" in body["error"]["message"] and "1048576" in body["error"]["message"]
    bridge.assert_untouched(sid)
    assert bridge.upstream.requests == 0


# -- a failing upstream ----------------------------------------------------------------------------

FAILURES = [
    pytest.param(Behaviour(hang=True), "timed out", id="hang"),
    pytest.param(Behaviour(status=500), "HTTP 500", id="http-500"),
    pytest.param(Behaviour(status=400), "HTTP 400", id="http-400"),
    pytest.param(Behaviour(garbage=b"<html>oops"), "garbage", id="garbage"),
    pytest.param(Behaviour(garbage=b'{"choices": []}'), "usage", id="no-usage"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("behaviour,text", FAILURES)
@pytest.mark.parametrize("path,payload", ENDPOINTS[:2], ids=["chat", "query"])
async def test_upstream_failure_is_502_without_token_charge(manager, upstream, behaviour, text, path, payload) -> None:  # type: ignore[no-untyped-def]
    upstream.push(behaviour)
    async with await _bridge(manager, upstream, upstream_timeout_s=0.3) as url:
        bridge = Bridge(url, manager, upstream)
        sid = manager.create_session().id
        status, body, headers = await bridge.post(path, payload, token=str(sid))
        assert status == 502, body
        assert text in _error_of(body, LlmCallFailed)["message"]
        assert headers["x-should-retry"] == "true"
        info = manager.get_session(sid)
        assert info.budget_status.tokens_used == 0 and info.recursion_depth == 0
        if behaviour.hang:
            assert info.budget_status.time_used_ms >= 250  # the time was spent
        assert upstream.requests == 1


@pytest.mark.asyncio
async def test_unreachable_upstream_is_502(manager) -> None:  # type: ignore[no-untyped-def]
    dead = FakeUpstream()
    async with serve(dead.app) as url:
        pass  # the port is closed now
    dead.url = url  # type: ignore[attr-defined]
    async with await _bridge(manager, dead) as bridge_url:
        sid = manager.create_session().id
        status, body, _ = await Bridge(bridge_url, manager, dead).post("/query", {"prompt": "x"}, token=str(sid))
        assert status == 502 and "unreachable" in body["error"]["message"]
        assert manager.get_session(sid).budget_status.tokens_used == 0


# -- budgets ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_over_budget_answer_goes_back_then_refused(bridge) -> None:  # type: ignore[no-untyped-def]
    m = bridge.manager
    root = m.create_session().id
    sid = m.create_child_session(root, token_budget=30).id
    for _ in range(2):
        status, body, _ = await bridge.post("/query", {"prompt": "x"}, token=str(sid))
        assert status == 200
    status, body, _ = await bridge.post("/query", {"prompt": "x"}, token=str(sid))
    assert status == 200 and body["response"] == "ok"  # 36 > 30: it was spent, it goes back
    assert body["tokens_remaining"] == 0
    for path, payload in ENDPOINTS[:2]:
        status, body, headers = await bridge.post(path, payload, token=str(sid))
        assert status == 429, (path, body)
        assert body["error"] == TokenBudgetExceeded(36, 30).to_mcp_error()
        assert headers["x-should-retry"] == "false"
    # A batch authenticates once; each query's refusal is its own Err.
    status, body, _ = await bridge.post("/query_batched", {"queries": [{"prompt": "x"}] * 2}, token=str(sid))
    assert status == 200 and body["responses"] == [{"Err": str(TokenBudgetExceeded(36, 30))}] * 2
    assert bridge.upstream.requests == 3
    assert m.get_session(root).budget_status.tokens_used == 36


@pytest.mark.asyncio
async def test_time_budget_and_depth_refusals(bridge) -> None:  # type: ignore[no-untyped-def]
    m = bridge.manager
    sid = m.create_session().id
    for _ in range(3):
        m.increment_recursion_depth(sid)
    status, body, _ = await bridge.post("/query", {"prompt": "x"}, token=str(sid))
    assert status == 409 and body["error"]["code"] == -32012
    late = m.create_session().id
    with pytest.raises(Exception):
        m.charge_time(late, m.config.time_budget_ms + 1)
    status, body, _ = await bridge.post("/v1/chat/completions", ENDPOINTS[0][1], token=str(late))
    assert status == 429 and body["error"]["code"] == -32011
    assert bridge.upstream.requests == 0


@pytest.mark.asyncio
async def test_many_concurrent_calls_on_one_tree(manager, upstream) -> None:  # type: ignore[no-untyped-def]
    """Hundreds of calls at once on a tree with a small budget: a call is
    admitted only while the tree is under its budget, so the tree is passed
    only by calls admitted before it was reached and still in flight; every
    admitted call reached the upstream and was charged, refused ones never
    reached it."""

    class Counting:
        """The manager, recording the root's tokens_used at each admission
        and the calls open at each moment (one event loop thread, calls run
        inline: no other call runs in between)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.open, self.most_open = inner, 0, 0
            self.used_at_admission: list[int] = []

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def begin_call(self, sid: Any) -> Any:
            status = self.inner.begin_call(sid)
            self.used_at_admission.append(self.inner.get_session(root).budget_status.tokens_used)
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            return status

        def end_call(self, sid: Any, **amounts: Any) -> Any:
            self.open -= 1
            return self.inner.end_call(sid, **amounts)

    rng = random.Random(7)
    upstream.reply = lambda body: Behaviour(delay_s=rng.random() * 0.02)
    m = manager
    counted = Counting(m)
    budget = 40 * USAGE
    root = m.create_session().id
    m.update_budget(root, m.get_session(root).budget_status.__class__(
        token_budget=budget, time_budget_ms=10**9, max_recursion_depth=50))
    kids = [m.create_child_session(root).id for _ in range(4)]
    grandkids = [m.create_child_session(k).id for k in kids]
    sids = [root, *kids, *grandkids]
    depths = [m.get_session(s).recursion_depth for s in sids]  # a child starts below its parent
    async with await _bridge(AsyncSessionManager(counted), upstream) as url:  # type: ignore[arg-type]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def one(i: int) -> int:
                sid = sids[i % len(sids)]
                path, payload = ENDPOINTS[i % 2]
                async with http.post(url + path, json=payload,
                                     headers={"Authorization": f"Bearer {sid}"}) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(300)))
    admitted = upstream.requests
    used = m.get_session(root).budget_status.tokens_used
    assert set(statuses) <= {200, 429, 409}
    assert statuses.count(200) == admitted  # every admitted call answered
    assert used == admitted * USAGE == upstream.tokens_reported
    assert counted.open == 0  # every admitted call was charged
    assert used >= budget  # the budget was reached...
    assert len(counted.used_at_admission) == admitted
    assert max(counted.used_at_admission) < budget  # ...no call admitted once it was...
    assert used - budget < counted.most_open * USAGE  # ...so passed only by calls in flight
    assert admitted < 300  # and calls were refused once it was
    assert [m.get_session(s).recursion_depth for s in sids] == depths
    stats = m.get_stats()
    assert stats.rejected_tokens + stats.rejected_depth >= 300 - admitted


# -- every kind of manager ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_over_an_async_session_manager(manager, upstream) -> None:  # type: ignore[no-untyped-def]
    async with await _bridge(AsyncSessionManager(manager), upstream) as url:
        sid = manager.create_session().id
        status, body, _ = await Bridge(url, manager, upstream).post("/query", {"prompt": "x"}, token=str(sid))
        assert status == 200 and manager.get_session(sid).budget_status.tokens_used == USAGE


async def _redis_smoke(manager: Any, reader: Any, upstream: FakeUpstream) -> None:
    async with await _bridge(manager, upstream) as url:
        bridge = Bridge(url, manager, upstream)
        sid = await reader(lambda: manager.create_session())
        sid = sid.id
        client = _sdk(bridge, sid)
        try:
            answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        finally:
            await client.close()
        assert answer.usage.total_tokens == USAGE
        status, body, _ = await bridge.post("/query", {"prompt": "x"}, token=str(SessionId()))
        assert status == 401
        info = await reader(lambda: manager.get_session(sid))
        assert info.budget_status.tokens_used == USAGE and info.recursion_depth == 0


@pytest.mark.asyncio
async def test_over_sync_redis(redis_server, upstream) -> None:  # type: ignore[no-untyped-def]
    rlm_redis = pytest.importorskip("rlm_fast.redis")
    manager = rlm_redis.RedisSessionManager(redis_server.client(), namespace="bridge-sync")
    _need_call_step(manager)

    async def reader(fn):  # type: ignore[no-untyped-def]
        return fn()

    await _redis_smoke(manager, reader, upstream)


@pytest.mark.asyncio
async def test_over_async_redis(redis_server, upstream) -> None:  # type: ignore[no-untyped-def]
    rlm_redis = pytest.importorskip("rlm_fast.redis")
    cls = getattr(rlm_redis, "AsyncRedisSessionManager", None)
    if cls is None:
        pytest.skip("rlm_fast.redis has no AsyncRedisSessionManager yet")
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        manager = cls(client, namespace="bridge-async")
        _need_call_step(manager)

        async def reader(fn):  # type: ignore[no-untyped-def]
            return await fn()

        await _redis_smoke(manager, reader, upstream)
    finally:
        await client.aclose()


# -- configuration and the command line --------------------------------------------------------------


def test_make_app_checks_its_arguments() -> None:
    from rlm_fast import SessionManager

    m = SessionManager()
    for bad in ("ftp://x", "", None):
        with pytest.raises(ValueError):
            make_app(m, upstream=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_app(m, upstream="http://x", max_batch_size=0)
    with pytest.raises(TypeError):
        make_app(m, upstream="http://x", max_batch_size=True)
    with pytest.raises(ValueError):
        make_app(m, upstream="http://x", upstream_timeout_s=0)


def test_main_needs_an_upstream(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main([])
    assert "--upstream" in capsys.readouterr().err


def test_demo_runs_and_balances(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--demo", "--clients", "4", "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "req/s" in out and "budgets balance" in out and ": yes" in out


# -- alexzhang13's rlms package, through the bridge ----------------------------------------------------


@pytest.mark.asyncio
async def test_rlms_completion_through_the_bridge(bridge) -> None:  # type: ignore[no-untyped-def]
    """`rlms` (PyPI; `import rlm`) with backend="vllm" pointed at the bridge:
    its root model call is admitted and charged on the session."""
    rlm = pytest.importorskip("rlm")
    bridge.upstream.default = Behaviour(reply="FINAL(42)")
    sid = bridge.manager.create_session().id

    def run() -> Any:
        model = rlm.RLM(
            backend="vllm",
            backend_kwargs={"base_url": f"{bridge.url}/v1", "api_key": str(sid), "model_name": "fake", "max_retries": 0},
            environment="local",
            max_iterations=2,
        )
        return model.completion("What is 6 * 7?")

    result = await asyncio.to_thread(run)
    assert "42" in str(result.response)
    assert bridge.upstream.requests >= 1
    assert bridge.tokens_used(sid) == bridge.upstream.requests * USAGE
    _no_session_upstream(bridge, sid)
