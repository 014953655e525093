"""AsyncRedisSessionManager: the async Redis manager over `redis.asyncio`,
built from the same request and reply code and Lua scripts as
RedisSessionManager. Same results, errors and messages; both serve one
namespace at once; a call cancelled at any await is applied whole or not at
all, and never leaves a reply for the next call on its client.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid

import pytest

pytest.importorskip("pytest_asyncio")
pytest.importorskip("redis")

from redis_server import unavailable  # noqa: E402

if unavailable():
    pytest.skip(unavailable(), allow_module_level=True)

import redis.asyncio  # noqa: E402

import rlm_fast  # noqa: E402
from rlm_fast import RlmConfig, SessionState  # noqa: E402
from rlm_fast.redis import AsyncRedisSessionManager, RedisSessionManager  # noqa: E402

NS = 10**9
_serial = itertools.count()


@pytest.fixture
def namespace() -> str:
    return f"async-{uuid.uuid4().hex[:8]}-{next(_serial)}"


def _aclient(server, **kwargs):  # type: ignore[no-untyped-def]
    return redis.asyncio.Redis(host="127.0.0.1", port=server.port, **kwargs)


async def _close(client) -> None:  # type: ignore[no-untyped-def]
    close = getattr(client, "aclose", None) or client.close
    await close()


def test_constructor_wants_an_asyncio_client(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    sync = redis_server.client()
    with pytest.raises(TypeError, match="redis.asyncio"):
        AsyncRedisSessionManager(sync, namespace=namespace)
    with pytest.raises(TypeError, match="AsyncRedisSessionManager"):
        RedisSessionManager(_aclient(redis_server), namespace=namespace)
    with pytest.raises(TypeError):
        AsyncRedisSessionManager(_aclient(redis_server), namespace=namespace, on_remove=1)  # type: ignore[arg-type]
    sync.close()


@pytest.mark.asyncio
async def test_same_results_errors_and_messages_as_the_sync_manager(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    aclient, client = _aclient(redis_server), redis_server.client()
    heard: list[tuple[str, str]] = []
    config = RlmConfig(token_budget=100, max_recursion_depth=3)
    am = AsyncRedisSessionManager(
        aclient, config, namespace=namespace,
        on_remove=lambda info, reason: heard.append((str(info.id), reason)),
    )
    sm = RedisSessionManager(client, config, namespace=namespace)  # one table
    try:
        root = (await am.create_session()).id
        assert sm.get_session(root) == await am.get_session(root)
        kid = (await am.create_child_session(root, token_budget=50)).id
        assert await am.children(root) == sm.children(root) == [kid]
        await am.assign_vm(kid, "vm-1")
        assert sm.get_session_for_vm("vm-1") == kid == await am.get_session_for_vm("vm-1")
        await am.set_context_variable(kid, "k", "v")
        assert await am.get_all_context_variables(kid) == {"k": "v"}
        status = await am.begin_call(kid)
        assert status.current_recursion_depth == 2
        with pytest.raises(rlm_fast.TokenBudgetExceeded) as a_err:
            await am.end_call(kid, tokens=60, elapsed_ms=1)
        with pytest.raises(rlm_fast.TokenBudgetExceeded) as s_err:
            sm.check_budget(kid)
        assert str(a_err.value) == str(s_err.value)
        for bad, error in (("nope", rlm_fast.InvalidSessionToken), (5, TypeError)):
            with pytest.raises(error) as a_info:
                await am.charge_tokens(bad, 1)  # type: ignore[arg-type]
            with pytest.raises(error) as s_info:
                sm.charge_tokens(bad, 1)  # type: ignore[arg-type]
            assert str(a_info.value) == str(s_info.value)
        with pytest.raises(ValueError) as a_val:
            await am.end_call(root, tokens=2**64 - 1)
        with pytest.raises(ValueError) as s_val:
            sm.end_call(root, tokens=2**64 - 1)
        assert str(a_val.value) == str(s_val.value)
        assert not await am.is_session_valid("zzz")
        async with am.recursion(root) as depth:
            assert depth == 1
        async with am.call(root) as step:
            step.tokens = 5
        assert (await am.get_session(root)).budget_status.tokens_used == 65
        await am.update_session_state(root, SessionState.TERMINATED)
        with pytest.raises(rlm_fast.InvalidSessionState) as a_state:
            await am.begin_call(kid)
        assert a_state.value.session_id == root
        assert await am.get_stats() == sm.get_stats()
        assert (await am.get_stats()).rejected_terminated == 1
        table = await am.list_sessions()
        assert [i.id for i in table] == [i.id for i in sm.list_sessions()]
        assert await am.length() == len(sm) == 2 and await am.contains(kid)
        info = await am.destroy_session(root)
        assert info.id == root
        assert heard == [(str(root), "destroyed"), (str(kid), "cascade")]
        assert await am.get_stats() == sm.get_stats()
    finally:
        await _close(aclient)
        client.close()


@pytest.mark.asyncio
async def test_pop_expired_and_dump(redis_server, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = type("C", (), {"now": 1_767_225_600 * NS, "__call__": lambda self: self.now})()
    aclient = _aclient(redis_server)
    am = AsyncRedisSessionManager(aclient, RlmConfig(session_duration_secs=10), namespace=namespace, clock=clock)
    try:
        a = (await am.create_session()).id
        await am.dump(tmp_path / "t.rlm")
        loaded = rlm_fast.SessionManager.load(tmp_path / "t.rlm", clock=clock)
        assert [i.id for i in loaded.list_sessions()] == [a]
        clock.now += 11 * NS
        assert [i.id for i in await am.pop_expired_sessions()] == [a]
        assert await am.cleanup_expired_sessions() == []
    finally:
        await _close(aclient)


@pytest.mark.asyncio
async def test_reap_task_runs_on_the_async_manager(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    from rlm_fast.aio import reap

    heard: list[str] = []
    aclient = _aclient(redis_server)
    am = AsyncRedisSessionManager(
        aclient, RlmConfig(session_duration_secs=1), namespace=namespace,
        on_remove=lambda info, reason: heard.append(reason),
    )
    try:
        await am.create_session()
        task = asyncio.create_task(reap(am, interval_s=0.2))
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert heard == ["expired"] and await am.length() == 0
    finally:
        await _close(aclient)


async def _slow_proxy(port: int, delay: float):  # type: ignore[no-untyped-def]
    """A loopback TCP proxy to the server that holds each reply `delay`
    seconds, so a cancellation often lands after a request left and before
    its reply came back (the window redis-py issues #2624/#2665 are about)."""

    async def pipe(reader, writer, wait: float) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := await reader.read(65536):
                if wait:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(client_reader, client_writer) -> None:  # type: ignore[no-untyped-def]
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(
            pipe(client_reader, server_writer, 0.0), pipe(server_reader, client_writer, delay)
        )

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.asyncio
async def test_cancelled_calls_apply_whole_or_not_and_leave_no_reply_behind(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    # Thousands of calls cancelled at random moments: before the request
    # left, while it was sent, while the reply was on its way (a proxy
    # holds replies 1 ms). Then the tree's invariants hold (a charge is on
    # the child and its root, or on neither; a model call's depth came
    # back) and the same client gives 1,000 correct replies (no call reads
    # another call's reply).
    import rlm_fast.redis as rlm_redis

    rng = random.Random(1234)
    proxy = await _slow_proxy(redis_server.port, 0.001)
    proxy_port = proxy.sockets[0].getsockname()[1]
    aclient = redis.asyncio.Redis(host="127.0.0.1", port=proxy_port, max_connections=4)
    discarded = 0
    discard = rlm_redis._discard

    def counting_discard(conn):  # type: ignore[no-untyped-def]
        nonlocal discarded
        discarded += 1
        discard(conn)

    rlm_redis._discard = counting_discard
    config = RlmConfig(token_budget=10**12, time_budget_ms=10**12, max_recursion_depth=10**6)
    am = AsyncRedisSessionManager(aclient, config, namespace=namespace)
    try:
        root = (await am.create_session()).id
        kid = (await am.create_child_session(root)).id
        for i in range(50):
            await am.set_context_variable(kid, f"k{i}", f"v{i}")
        applied = cancelled = 0
        attempts = 3000
        for n in range(attempts):
            # A connection ready first (a call that is not cancelled), so
            # that the cancel lands while the request or its reply is in
            # flight, not while a connection is being opened (after a
            # discard, the next call connects anew; cancels then mostly hit
            # the connect, where there is no reply to lose).
            assert await am.get_context_variable(kid, "k0") == "v0"
            kind = n % 3
            if kind == 0:
                coro = am.charge_tokens(kid, 1)
            elif kind == 1:
                coro = am.get_context_variable(kid, f"k{n % 50}")
            else:
                coro = am.charge_time(kid, 1)
            task = asyncio.create_task(coro)
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            if rng.random() < 0.7:
                await asyncio.sleep(rng.random() / 400)
            task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                cancelled += 1
            else:
                applied += 1
                if kind == 1:
                    assert result == f"v{n % 50}"
                else:
                    assert isinstance(result, int)
        assert cancelled > attempts // 10, (cancelled, applied)
        # Many were cancelled with their reply on the way: those connections
        # were closed, not returned to the pool holding a reply.
        assert discarded > attempts // 20, discarded
        r, k = await am.get_session(root), await am.get_session(kid)
        # Whole or nothing: each charge reached both sessions or neither.
        assert r.budget_status.tokens_used == k.budget_status.tokens_used <= attempts // 3 + 1
        assert r.budget_status.time_used_ms == k.budget_status.time_used_ms
        # Model calls cancelled at random: begin and end are separate steps,
        # each whole; end_call in AsyncModelCall's exit is awaited.
        for n in range(300):
            async def one() -> None:
                async with am.call(kid) as step:
                    step.tokens = 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(one())
            for _ in range(rng.randrange(0, 8)):
                await asyncio.sleep(0)
            await asyncio.sleep(rng.random() / 200)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        r, k = await am.get_session(root), await am.get_session(kid)
        assert r.budget_status.tokens_used == k.budget_status.tokens_used
        stats = await am.get_stats()
        assert stats.total_sessions_created == stats.active_sessions == 2
        # 1,000 correct replies on the same client, of varied shapes.
        for n in range(1000):
            if n % 2:
                assert await am.get_context_variable(kid, f"k{n % 50}") == f"v{n % 50}"
            else:
                before = (await am.get_session(kid)).budget_status.tokens_used
                assert await am.charge_tokens(kid, 1) == before + 1
    finally:
        rlm_redis._discard = discard
        await _close(aclient)
        proxy.close()


@pytest.mark.asyncio
async def test_sync_and_async_managers_share_a_namespace_under_load(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    aclient, client = _aclient(redis_server), redis_server.client()
    am = AsyncRedisSessionManager(aclient, namespace=namespace)
    sm = RedisSessionManager(client, namespace=namespace)
    try:
        root = sm.create_session().id
        kids = [(await am.create_child_session(root, token_budget=1000)).id for _ in range(8)]

        async def calls(sid) -> None:  # type: ignore[no-untyped-def]
            for _ in range(20):
                async with am.call(sid) as step:
                    step.tokens = 2

        await asyncio.gather(*(calls(k) for k in kids))
        for k in kids:
            with sm.call(k) as step:
                step.tokens = 1
        assert sm.get_session(root).budget_status.tokens_used == 8 * 41
        assert sm.get_session(root).recursion_depth == 0
    finally:
        await _close(aclient)
        client.close()
