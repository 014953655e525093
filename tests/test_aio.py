"""rlm_fast.aio (SPEC 13): AsyncSessionManager delegates every method inline
(no suspension, no thread), its recursion()/call() context managers, reap(),
and one orchestrator function that runs unchanged on AsyncRedisSessionManager."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

pytest.importorskip("pytest_asyncio")  # the free-threaded CI venv has only pytest

from rlm_fast import RlmConfig, SessionState, TokenBudgetExceeded
from rlm_fast.aio import NOT_WRAPPED, WRAPPED, AsyncSessionManager, reap

pytestmark = pytest.mark.in_process("AsyncSessionManager wraps in-process managers")


@pytest.fixture
def am(make_manager):  # type: ignore[no-untyped-def]
    return AsyncSessionManager(make_manager(token_budget=100))


def test_wraps_every_public_method(core) -> None:  # type: ignore[no-untyped-def]
    public = {n for n in dir(core.SessionManager) if not n.startswith("_")}
    covered = set(WRAPPED) | {"recursion", "call"} | set(NOT_WRAPPED)
    assert public <= covered, public - covered
    for name in WRAPPED:
        assert inspect.iscoroutinefunction(getattr(AsyncSessionManager, name)), name
        assert getattr(AsyncSessionManager, name).__name__ == name


def test_refuses_async_and_double_wrapping(make_manager) -> None:  # type: ignore[no-untyped-def]
    am = AsyncSessionManager(make_manager())
    with pytest.raises(TypeError):
        AsyncSessionManager(am)  # type: ignore[arg-type]

    class AlreadyAsync:
        async def begin_call(self, sid):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(TypeError):
        AsyncSessionManager(AlreadyAsync())  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_methods_delegate(am, clock) -> None:  # type: ignore[no-untyped-def]
    m = am.manager
    info = await am.create_session()
    sid = info.id
    assert sid in m and await am.get_session(sid) == m.get_session(sid)
    assert await am.is_session_valid(sid) and (await am.validate_session(str(sid))).id == sid
    await am.assign_vm(sid, "vm-1")
    assert await am.get_assigned_vm(sid) == "vm-1" == m.get_assigned_vm(sid)
    assert await am.get_session_for_vm("vm-1") == sid
    await am.set_context_variable(sid, "k", "v")
    assert await am.get_context_variable(sid, "k") == "v"
    assert await am.get_all_context_variables(sid) == {"k": "v"}
    assert await am.delete_context_variable(sid, "k") == "v"
    await am.record_snapshot_created(sid, "snap", set_as_current=True)
    assert await am.get_current_snapshot(sid) == "snap"
    await am.record_snapshot_restored(sid, "snap")
    await am.clear_snapshot_tracking(sid)
    assert await am.increment_recursion_depth(sid) == 1
    assert await am.decrement_recursion_depth(sid) == 0
    assert await am.charge_tokens(sid, 10) == 10
    assert await am.charge_time(sid, 5) == 5
    assert (await am.check_budget(sid)).tokens_used == 10
    child = await am.create_child_session(sid, token_budget=50)
    assert await am.children(sid) == [child.id]
    assert (await am.extend_session(sid)).extension_count == 1
    await am.update_session_state(child.id, SessionState.EXECUTING)
    assert await am.release_vm(sid) == "vm-1"
    assert len(await am.list_sessions()) == 2
    assert (await am.get_stats()).active_sessions == 2
    assert await am.cleanup_expired_sessions() == []
    assert await am.destroy_session(child.id) is not None or child.id not in m
    assert child.id not in m
    assert am.config == m.config
    with pytest.raises(TokenBudgetExceeded):
        await am.charge_tokens(sid, 1000)  # the same errors as the manager


@pytest.mark.asyncio
async def test_dump_goes_through_a_thread(am, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await am.create_session()
    await am.dump(tmp_path / "t.json")
    assert (tmp_path / "t.json").stat().st_size > 0


@pytest.mark.asyncio
async def test_calls_never_yield_to_the_loop(am) -> None:  # type: ignore[no-untyped-def]
    """Another task that is ready to run never runs during a wrapped call,
    and the call runs in the loop's own thread."""
    ran: list[int] = []
    other = asyncio.get_running_loop().call_soon(ran.append, 1)
    loop_thread = threading.get_ident()
    seen_threads = set()
    real = am.manager
    sid = (await am.create_session()).id
    for _ in range(50):
        await am.get_session(sid)
        await am.charge_tokens(sid, 0)
        await am.is_session_valid(sid)
        seen_threads.add(threading.get_ident())
        async with am.recursion(sid):
            pass
        async with am.call(sid):
            pass
    assert ran == []  # call_soon's callback never got a turn
    assert seen_threads == {loop_thread}
    await asyncio.sleep(0)
    assert ran == [1]
    other.cancel()


@pytest.mark.asyncio
async def test_a_wrapped_coroutine_completes_at_its_first_step(am) -> None:  # type: ignore[no-untyped-def]
    coro = am.create_session()
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    assert done.value.value.id in am.manager


@pytest.mark.asyncio
async def test_recursion(am) -> None:  # type: ignore[no-untyped-def]
    sid = (await am.create_session()).id
    async with am.recursion(sid) as depth:
        assert depth == 1
        async with am.recursion(sid) as inner:
            assert inner == 2
    assert (await am.get_session(sid)).recursion_depth == 0
    with pytest.raises(RuntimeError):
        async with am.recursion(sid):
            raise RuntimeError("boom")
    assert (await am.get_session(sid)).recursion_depth == 0
    # Destroyed inside the block: the exit does not raise.
    async with am.recursion(sid):
        await am.destroy_session(sid)


@pytest.mark.asyncio
async def test_call_charges_on_every_exit(make_manager, clock) -> None:  # type: ignore[no-untyped-def]
    am = AsyncSessionManager(make_manager(token_budget=100))
    sid = (await am.create_session()).id
    async with am.call(sid) as step:
        assert (await am.get_session(sid)).recursion_depth == 1
        assert step.status.current_recursion_depth == 1
        step.tokens = 30
        clock.advance(seconds=0.25)
    info = await am.get_session(sid)
    assert (info.recursion_depth, info.budget_status.tokens_used, info.budget_status.time_used_ms) == (0, 30, 250)
    with pytest.raises(ValueError, match="body"):
        async with am.call(sid) as step:
            step.tokens = 20
            raise ValueError("body")
    assert (await am.get_session(sid)).budget_status.tokens_used == 50  # still charged
    with pytest.raises(TokenBudgetExceeded):  # over budget on the charge: kept, raised
        async with am.call(sid) as step:
            step.tokens = 60
    assert (await am.get_session(sid)).budget_status.tokens_used == 110
    with pytest.raises(TokenBudgetExceeded):  # the next call is refused
        async with am.call(sid):
            pytest.fail("admitted past the budget")
    assert (await am.get_session(sid)).recursion_depth == 0


@pytest.mark.asyncio
async def test_reap_removes_and_stops_on_cancel(make_manager, clock) -> None:  # type: ignore[no-untyped-def]
    removed: list[tuple[object, str]] = []
    try:
        m = type(make_manager())(RlmConfig(session_duration_secs=10), clock=clock,
                                 on_remove=lambda info, why: removed.append((info.id, why)))
    except TypeError:
        pytest.skip("this core has no on_remove yet")
    if not hasattr(m, "pop_expired_sessions"):
        pytest.skip("this core has no pop_expired_sessions yet")
    for target in (m, AsyncSessionManager(m)):
        removed.clear()
        old = m.create_session().id
        clock.advance(seconds=11)
        young = m.create_session().id
        task = asyncio.create_task(reap(target, interval_s=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if removed:
                break
        assert removed == [(old, "expired")]
        assert young in m and old not in m
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        m.destroy_session(young)


@pytest.mark.asyncio
async def test_reap_awaits_an_async_manager_and_survives_a_failing_sweep() -> None:
    sweeps: list[str] = []

    class Async:
        async def pop_expired_sessions(self):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0)
            sweeps.append("async")
            if len(sweeps) == 1:
                raise RuntimeError("one bad round")
            return []

    task = asyncio.create_task(reap(Async(), interval_s=0.005))
    while len(sweeps) < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_a_call_cancelled_during_end_call_is_still_charged() -> None:
    """AsyncModelCall shields end_call: a task cancelled while its end_call
    is in flight (an await on Redis) still records the charge and the depth
    decrease, then sees its cancellation."""
    from rlm_fast._lifecycle import AsyncModelCall

    recorded: list[tuple[int, int]] = []
    in_end = asyncio.Event()

    async def begin() -> str:
        return "status"

    async def end(tokens: int, elapsed: int) -> None:
        in_end.set()
        await asyncio.sleep(0.02)  # the round trip
        recorded.append((tokens, elapsed))

    async def one_call() -> None:
        async with AsyncModelCall(begin, end, lambda: 5_000_000) as step:
            step.tokens = 7

    task = asyncio.create_task(one_call())
    await in_end.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert recorded == [(7, 0)]


@pytest.mark.asyncio
async def test_reap_checks_interval() -> None:
    with pytest.raises(ValueError):
        await reap(object(), interval_s=0)
    with pytest.raises(TypeError):
        await reap(object(), interval_s="1")  # type: ignore[arg-type]


# -- the same code over Redis ---------------------------------------------------------------


async def orchestrate(manager) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """An orchestrator written once against the async API: a root, two
    parallel sub-calls as children, each one model call, and recursion."""
    root = (await manager.create_session()).id
    kids = [(await manager.create_child_session(root, token_budget=100)).id for _ in range(2)]

    async def sub_call(sid, tokens):  # type: ignore[no-untyped-def]
        async with manager.call(sid) as step:
            step.tokens = tokens

    await asyncio.gather(*(sub_call(k, 10 * (i + 1)) for i, k in enumerate(kids)))
    async with manager.recursion(root) as depth:
        assert depth == 1
    info = await manager.get_session(root)
    await manager.destroy_session(root)
    return info.budget_status.tokens_used, info.recursion_depth


@pytest.mark.asyncio
async def test_orchestrator_in_process(make_manager) -> None:  # type: ignore[no-untyped-def]
    am = AsyncSessionManager(make_manager())
    assert await orchestrate(am) == (30, 0)


@pytest.mark.asyncio
async def test_orchestrator_runs_unchanged_on_async_redis(redis_server) -> None:  # type: ignore[no-untyped-def]
    rlm_redis = pytest.importorskip("rlm_fast.redis")
    cls = getattr(rlm_redis, "AsyncRedisSessionManager", None)
    if cls is None:
        pytest.skip("rlm_fast.redis has no AsyncRedisSessionManager yet")
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        manager = cls(client, namespace="aio-test")
        if not hasattr(manager, "begin_call"):
            pytest.skip("AsyncRedisSessionManager has no model-call step yet")
        assert await orchestrate(manager) == (30, 0)
    finally:
        await client.aclose()
