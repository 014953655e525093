"""Test helper: a throwaway `redis-server` on 127.0.0.1, and the `core`
namespace that runs the conformance suite against `RedisSessionManager`.

A server listens on a free loopback port, keeps nothing on disk unless asked
(`--save '' --appendonly no`), and is stopped by its pid. Nothing here talks
to anything but loopback.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import types
import uuid
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
