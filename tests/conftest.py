"""One suite, every implementation: the `core` fixture hands each test the
pure-Python twin, the compiled core and the Redis-backed manager in turn
(STYLE habit 4), then AsyncRedisSessionManager behind a sync adapter
("redis-async", tests/redis_server.py). Tests marked `in_process(reason)`
skip both Redis ones; `sync_redis(reason)` skips the async one only (what
the adapter cannot express, not a behaviour of the manager)."""

from __future__ import annotations

import os
import types

import pytest

import conftest_hypothesis  # noqa: F401  (registers --hypothesis-profile=ci/long)
from redis_server import RedisServer, async_redis_core, redis_core
from redis_server import unavailable as redis_unavailable
from rlm_fast import _budget_py, _session_py

try:
    from rlm_fast import _budget_c, _session_c
except ImportError as exc:  # not built
    if os.environ.get("RLM_FAST_REQUIRE_EXTENSIONS") == "1":
        raise
    _budget_c = _session_c = None  # type: ignore[assignment]
    _C_MISSING = f"compiled core not built ({exc})"
else:
    _C_MISSING = ""


def _namespace(name: str, core: types.ModuleType, budget: types.ModuleType) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name=name,
        SessionId=core.SessionId,
        SessionManager=core.SessionManager,
        SessionInfo=core.SessionInfo,
        BudgetStatus=core.BudgetStatus,
        SessionStats=core.SessionStats,
        BudgetTracker=budget.BudgetTracker,
    )


PY = _namespace("python", _session_py, _budget_py)
C = None if _session_c is None else _namespace("cython", _session_c, _budget_c)

_REDIS_MISSING = redis_unavailable()  # why the Redis core cannot run, or ""

CORE_PARAMS = [
    pytest.param(PY, id="python"),
    pytest.param(C, id="cython", marks=pytest.mark.skipif(C is None, reason=_C_MISSING or "built")),
    pytest.param(
        "redis",
        id="redis",
        marks=pytest.mark.skipif(bool(_REDIS_MISSING), reason=_REDIS_MISSING or "available"),
    ),
    pytest.param(
        "redis-async",
        id="redis-async",
        marks=pytest.mark.skipif(bool(_REDIS_MISSING), reason=_REDIS_MISSING or "available"),
    ),
]


@pytest.fixture(scope="session")
def redis_server():  # type: ignore[no-untyped-def]
    """One redis-server on 127.0.0.1 for the whole run, stopped by its pid."""
    if _REDIS_MISSING:
        pytest.skip(_REDIS_MISSING)
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_namespace(redis_server):  # type: ignore[no-untyped-def]
    return redis_core(redis_server)


@pytest.fixture(scope="session")
def redis_async_namespace(redis_server):  # type: ignore[no-untyped-def]
    """The adapter's namespace; its event loop and client close at the end
    of the run (before the server stops), or at exit."""
    namespace = async_redis_core(redis_server)
    yield namespace
    namespace.close()


@pytest.fixture(params=CORE_PARAMS)
def core(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    """The implementation under test: .name, .SessionId, .SessionManager,
    .SessionInfo, .BudgetStatus, .SessionStats, .BudgetTracker."""
    if request.param in ("redis", "redis-async"):
        marker = request.node.get_closest_marker("in_process")
        if marker is not None:
            pytest.skip(f"in-process cores only: {marker.args[0]}")
        if request.param == "redis":
            return request.getfixturevalue("redis_namespace")
        marker = request.node.get_closest_marker("sync_redis")
        if marker is not None:
            pytest.skip(f"not through the sync adapter over the async manager: {marker.args[0]}")
        return request.getfixturevalue("redis_async_namespace")
    return request.param


class FakeClock:
    """An injectable clock: int nanoseconds since the epoch, moved by hand."""

    def __init__(self, start_ns: int = 1_767_225_600 * 10**9) -> None:  # 2026-01-01
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, *, seconds: float = 0, ns: int = 0) -> None:
        self.now += int(seconds * 10**9) + ns


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_manager(core, clock):  # type: ignore[no-untyped-def]
    """make_manager(**config_fields) -> a manager of the core under test on `clock`."""
    from rlm_fast import RlmConfig

    def make(**fields):  # type: ignore[no-untyped-def]
        return core.SessionManager(RlmConfig(**fields), clock=clock)

    return make


def table_state(m):  # type: ignore[no-untyped-def]
    """What a refused call must leave as it was: every row and the table's
    counters (the rejected_* counters count refusals, so they move)."""
    return m.list_sessions(), m.get_stats()._astuple()[:5]
