"""Test helper: a throwaway `redis-server` on 127.0.0.1, and the `core`
namespaces that run the conformance suite against `RedisSessionManager`
(`redis_core`) and against `AsyncRedisSessionManager` through a blocking
adapter whose coroutines run on one event-loop thread (`async_redis_core`).

A server listens on a free loopback port, keeps nothing on disk unless asked
(`--save '' --appendonly no`), and is stopped by its pid. Nothing here talks
to anything but loopback.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Sequence

# RLM_FAST_REDIS_SERVER: another binary (or a missing path, to try the skips).
REDIS_SERVER = shutil.which(os.environ.get("RLM_FAST_REDIS_SERVER") or "redis-server")
START_TIMEOUT = 10.0


def unavailable() -> str:
    """Why the Redis tests cannot run here ('' when they can). With
    RLM_FAST_REQUIRE_REDIS=1 (CI) a missing piece is an error, not a skip."""
    reason = ""
    try:
        import redis  # noqa: F401
    except ImportError:
        reason = "redis-py is not installed (pip install 'rlm_fast[redis]')"
    else:
        if REDIS_SERVER is None:
            reason = "redis-server is not installed (apt-get install -y redis-server)"
    if reason and os.environ.get("RLM_FAST_REQUIRE_REDIS") == "1":
        raise RuntimeError(f"RLM_FAST_REQUIRE_REDIS=1 but {reason}")
    return reason


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1; start(), stop(), kill(),
    restart(), freeze()/thaw() (SIGSTOP/SIGCONT), by pid."""

    def __init__(self, *, persistent: bool = False, extra: Sequence[str] = ()) -> None:
        assert REDIS_SERVER is not None, unavailable()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rlm-redis-")
        self.persistent = persistent  # AOF with fsync always: survives kill -9
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        durable = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        return [
            str(REDIS_SERVER),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            *durable,
            "--dir", self.dir,
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.extra,
        ]

    def start(self) -> "RedisServer":
        for _ in range(5):
            log = open(os.path.join(self.dir, "redis.log"), "ab")
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log)
            log.close()
            if self._wait_ready():
                return self
            self.kill()
            self.port = free_port()  # lost the port race: take another
        raise RuntimeError(f"redis-server did not start; see {self.dir}/redis.log")

    def _wait_ready(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                # No retry: a refused connect must come back at once.
                client = redis.Redis(port=self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
                try:
                    if client.ping():
                        return True
                finally:
                    client.close()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.02)
        return False

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def stop(self) -> None:
        """SIGTERM by pid, then wait (SIGKILL if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case it was frozen
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL by pid: the server dies mid-run, as in a crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port and directory."""
        self.stop()
        for _ in range(50):  # the old socket may linger an instant
            self.proc = None
            log = open(os.path.join(self.dir, "redis.log"), "ab")
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log)
            log.close()
            if self._wait_ready():
                return
            self.kill()
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not restart on port {self.port}")

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_core(server: RedisServer) -> types.SimpleNamespace:
    """The `core` namespace of the conformance suite for Redis: each
    `SessionManager(config=None, *, clock=None)` is a RedisSessionManager on
    a fresh namespace of `server`, sharing one client."""
    import rlm_fast
    from rlm_fast.redis import RedisSessionManager

    client = server.client()
    run = uuid.uuid4().hex[:8]
    serial = itertools.count()

    class SessionManager(RedisSessionManager):
        """RedisSessionManager with the in-process constructor's signature,
        each on a fresh namespace of the test server."""

        def __init__(self, config: Any = None, *, clock: Any = None, on_remove: Any = None) -> None:
            super().__init__(
                client, config, namespace=f"t{run}-{next(serial)}", clock=clock, on_remove=on_remove
            )

        @classmethod
        def load(  # type: ignore[override]
            cls, path: Any, config: Any = None, *, clock: Any = None, on_remove: Any = None
        ) -> Any:
            from rlm_fast._dump import load

            def make(config: Any, *, clock: Any) -> Any:
                return cls(config, clock=clock, on_remove=on_remove)

            return load(make, path, config, clock=clock)

    # Ids and results are the active core's, as rlm_fast.SessionManager's.
    return types.SimpleNamespace(
        name="redis",
        SessionId=rlm_fast.SessionId,
        SessionManager=SessionManager,
        SessionInfo=rlm_fast.SessionInfo,
        BudgetStatus=rlm_fast.BudgetStatus,
        SessionStats=rlm_fast.SessionStats,
        BudgetTracker=rlm_fast.BudgetTracker,
        server=server,
        client=client,
    )


# ---------------------------------------------------------------------------
# The conformance suite on AsyncRedisSessionManager, through a sync adapter
# ---------------------------------------------------------------------------


class LoopThread:
    """One asyncio event loop in a daemon thread, started at the first call
    of `run` and stopped by `close` (the session fixture's teardown, or
    atexit). `run(coro)` runs a coroutine on it and waits for its result
    from any thread; its exception is raised as it was (same object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finalizers: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("this test event loop was closed at the end of the run")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="rlm_fast-test-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.close)
            return self._loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            coro.close()
            # Blocking here would wait on the loop this thread is running.
            raise RuntimeError(
                "the sync adapter was called from its own event loop's thread "
                "(from on_remove, a clock or a log handler): it cannot block that loop"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop()).result()

    def on_close(self, finalizer: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """A coroutine to await on the loop before it stops (closing a client)."""
        self._finalizers.append(finalizer)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def finish() -> None:
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            for task in pending:  # reapers a test left running
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for finalizer in self._finalizers:
                await finalizer()

        try:
            asyncio.run_coroutine_threadsafe(finish(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()


class AsyncReaper:
    """What `start_reaper` returns on the adapter: `rlm_fast.aio.reap(manager,
    interval_s)` run as a task on the loop, with the sync Reaper's API
    (`running`, `stop(timeout=None)`, context manager)."""

    def __init__(self, runner: LoopThread, task: "asyncio.Task[None]", interval_s: Any) -> None:
        self._runner = runner
        self._task = task
        self._interval = interval_s
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped and not self._task.done()

    def stop(self, timeout: float | None = None) -> None:
        """Cancel the task and wait for it to end (a sweep under way is
        cancelled with it, which Redis applies whole or not at all)."""
        self._stopped = True
        task = self._task

        async def cancel() -> None:
            task.cancel()
            await asyncio.wait([task], timeout=timeout)

        self._runner.run(cancel())

    def __enter__(self) -> "AsyncReaper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<AsyncReaper every {self._interval}s {'running' if self.running else 'stopped'}>"


class SyncScope:
    """A sync context manager over an async one (`recursion(id)`, `call(id)`):
    `__aenter__` and `__aexit__` each run on the loop. `with m.call(id) as c`
    gives the AsyncModelCall itself, so `c.tokens = 3` and `c.status` are
    its own attributes."""

    __slots__ = ("_runner", "_scope")

    def __init__(self, runner: LoopThread, scope: Any) -> None:
        self._runner = runner
        self._scope = scope

    def __enter__(self) -> Any:
        return self._runner.run(self._scope.__aenter__())

    def __exit__(self, *exc: Any) -> Any:
        return self._runner.run(self._scope.__aexit__(*exc))


def _blocking(name: str, method: Any) -> Any:
    """The sync form of one coroutine method of the async manager."""

    def blocking(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self._runner.run(getattr(self._am, name)(*args, **kwargs))

    blocking.__name__ = name
    blocking.__qualname__ = f"SyncAsyncRedisSessionManager.{name}"
    blocking.__doc__ = method.__doc__
    blocking.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return blocking


def _passthrough(name: str) -> property:
    return property(lambda self: getattr(self._am, name), doc=f"The async manager's `{name}`.")


def async_adapter_class() -> type:
    """SyncAsyncRedisSessionManager: every coroutine method of
    AsyncRedisSessionManager as a blocking one (generated below), and the
    special cases by hand: `length`/`contains` as `__len__`/`__contains__`,
    `recursion`/`call` as sync context managers, `start_reaper` as a reap()
    task, properties read through. `async_redis_core` subclasses it with
    the constructor."""
    from rlm_fast.redis import AsyncRedisSessionManager

    renamed = {"length": "__len__", "contains": "__contains__"}
    namespace: dict[str, Any] = {
        "__doc__": "A blocking adapter over one AsyncRedisSessionManager (tests only).",
        "__slots__": ("_am", "_runner", "_reaper"),
    }
    for name, value in vars(AsyncRedisSessionManager).items():
        # Public coroutines, and the two private ones dump/load go through.
        if inspect.iscoroutinefunction(value) and (
            not name.startswith("_") or name in ("_export", "_restore")
        ):
            namespace[renamed.get(name, name)] = _blocking(name, value)
    for name in dir(AsyncRedisSessionManager):
        value = inspect.getattr_static(AsyncRedisSessionManager, name)
        if isinstance(value, property) and not name.startswith("_"):
            namespace[name] = _passthrough(name)  # config, namespace, client

    def recursion(self: Any, session_id: Any) -> SyncScope:
        """`with m.recursion(id) as depth:` the async one, entered on the loop
        (the id is checked at entry, as the async manager does)."""
        return SyncScope(self._runner, self._am.recursion(session_id))

    def call(self: Any, session_id: Any) -> SyncScope:
        """`with m.call(id) as c:` the AsyncModelCall, entered on the loop."""
        return SyncScope(self._runner, self._am.call(session_id))

    def start_reaper(self: Any, interval_s: Any = 1.0) -> AsyncReaper:
        """reap(manager, interval_s) as a task on the loop; RuntimeError while
        this manager's previous one still runs (the sync manager's rule)."""
        from rlm_fast.aio import reap

        if self._reaper is not None and self._reaper.running:
            raise RuntimeError("this manager already has a running reaper; stop() it first")

        async def start() -> "asyncio.Task[None]":
            task = asyncio.ensure_future(reap(self._am, interval_s))
            await asyncio.sleep(0)  # reap() checks interval_s in its first step
            if task.done():
                task.result()  # its TypeError or ValueError
            return task

        self._reaper = AsyncReaper(self._runner, self._runner.run(start()), interval_s)
        return self._reaper

    def __repr__(self: Any) -> str:
        return f"<sync adapter over {self._am!r}>"

    def __reduce__(self: Any) -> Any:
        return self._am.__reduce__()  # TypeError, as the managers

    namespace.update(
        recursion=recursion, call=call, start_reaper=start_reaper,
        __repr__=__repr__, __reduce__=__reduce__,
    )
    # Every public name of the async manager is covered: a new one fails here.
    public = {n for n in dir(AsyncRedisSessionManager) if not n.startswith("_")}
    missing = public - set(namespace) - set(renamed)
    assert not missing, f"the sync adapter does not cover {sorted(missing)}"
    return type("SyncAsyncRedisSessionManager", (), namespace)


def async_redis_core(server: RedisServer) -> types.SimpleNamespace:
    """The `core` namespace of the conformance suite for
    AsyncRedisSessionManager: each `SessionManager(config=None, *,
    clock=None, on_remove=None)` is a sync adapter over an async manager on
    a fresh namespace of `server`. All of them share one redis.asyncio
    client and one event loop thread (`runner`; `close()` stops both)."""
    import redis.asyncio

    import rlm_fast
    from rlm_fast.redis import AsyncRedisSessionManager

    runner = LoopThread()
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)  # connects on the loop
    runner.on_close(getattr(client, "aclose", client.close))  # aclose: redis-py >= 5.0.1
    run = uuid.uuid4().hex[:8]
    serial = itertools.count()

    class SessionManager(async_adapter_class()):  # type: ignore[misc]
        """The adapter with the in-process constructor's signature, each on
        a fresh namespace of the test server."""

        __slots__ = ()

        def __init__(self, config: Any = None, *, clock: Any = None, on_remove: Any = None) -> None:
            try:
                am = self._am
            except AttributeError:  # a new adapter
                self._am = AsyncRedisSessionManager(
                    client, config, namespace=f"a{run}-{next(serial)}", clock=clock, on_remove=on_remove
                )
                self._runner = runner
                self._reaper = None
            else:  # __init__ again: the async manager's own refusal
                am.__init__(client, config, namespace=am.namespace, clock=clock, on_remove=on_remove)

        @classmethod
        def load(cls, path: Any, config: Any = None, *, clock: Any = None, on_remove: Any = None) -> Any:
            from rlm_fast._dump import load

            def make(config: Any, *, clock: Any) -> Any:
                return cls(config, clock=clock, on_remove=on_remove)

            return load(make, path, config, clock=clock)

    return types.SimpleNamespace(
        name="redis-async",
        SessionId=rlm_fast.SessionId,
        SessionManager=SessionManager,
        SessionInfo=rlm_fast.SessionInfo,
        BudgetStatus=rlm_fast.BudgetStatus,
        SessionStats=rlm_fast.SessionStats,
        BudgetTracker=rlm_fast.BudgetTracker,
        server=server,
        client=client,
        runner=runner,
        close=runner.close,
    )
