"""What only the Redis manager has: the server's clock, key layout and TTLs,
namespaces, scripts by SHA, exact 64-bit numbers in Lua, client options.

The shared semantics are the conformance suite's (the `core` fixture's
`redis` parameter); these tests use the session's `redis_server`.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

import rlm_fast
from rlm_fast import (
    BudgetStatus,
    ConfigError,
    RlmConfig,
    SessionExpired,
    SessionNotFound,
    SessionState,
)

from redis_server import unavailable  # noqa: E402

if unavailable():
    pytest.skip(unavailable(), allow_module_level=True)

import redis  # noqa: E402

from rlm_fast.redis import RedisSessionManager  # noqa: E402

NS = 10**9
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1
_serial = itertools.count()


class Clock:
    def __init__(self, now: int = 1_767_225_600 * NS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def client(redis_server):  # type: ignore[no-untyped-def]
    c = redis_server.client()
    yield c
    c.close()


@pytest.fixture
def namespace() -> str:
    return f"unit-{uuid.uuid4().hex[:8]}-{next(_serial)}"


def manager(client, namespace, clock=None, **fields):  # type: ignore[no-untyped-def]
    return RedisSessionManager(client, RlmConfig(**fields), namespace=namespace, clock=clock)


def keys_of(client, namespace):  # type: ignore[no-untyped-def]
    return sorted(k.decode() for k in client.scan_iter(match="{" + namespace + "}*"))


# --------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------


def test_constructor_checks(client) -> None:
    for bad in ("", "a{b", "a}b", "\ud800"):
        with pytest.raises(ValueError):
            RedisSessionManager(client, namespace=bad)
    for bad in (None, 5, b"rlm"):
        with pytest.raises(TypeError):
            RedisSessionManager(client, namespace=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RedisSessionManager("redis://127.0.0.1:6379")
    with pytest.raises(TypeError):
        RedisSessionManager(client.pipeline())
    with pytest.raises(TypeError):
        from redis.asyncio import Redis as AsyncRedis

        RedisSessionManager(AsyncRedis())
    with pytest.raises(TypeError):
        RedisSessionManager(client, {"token_budget": 5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RedisSessionManager(client, RlmConfig(token_budget=-1))
    with pytest.raises(TypeError):
        RedisSessionManager(client, clock=123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisSessionManager(client, ttl_grace_secs=-1)
    with pytest.raises(TypeError):
        RedisSessionManager(client, ttl_grace_secs=1.5)  # type: ignore[arg-type]


def test_constructor_does_no_io() -> None:
    # Nothing listens on this port: building a manager must still work.
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    m = RedisSessionManager(dead, namespace="nobody")
    assert "nobody" in repr(m)
    with pytest.raises(rlm_fast.Io):
        m.create_session()


def test_not_picklable(client, namespace) -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(manager(client, namespace))


# --------------------------------------------------------------------------
# time: the server's clock by default
# --------------------------------------------------------------------------


def test_server_time_decides_by_default(client, namespace) -> None:
    m = manager(client, namespace, session_duration_secs=1)
    sec, usec = client.time()
    server_ns = sec * NS + usec * 1000
    info = m.create_session()
    # Stamped by the server's TIME (not this host's clock), to the µs.
    assert abs(info.created_at_ns - server_ns) < 2 * NS
    assert info.created_at_ns % 1000 == 0
    assert info.expires_at_ns == info.created_at_ns + NS
    assert info.id.timestamp_ms == info.created_at_ns // 10**6
    assert m.is_session_valid(info.id)
    assert m.cleanup_expired_sessions() == []
    time.sleep(1.05)
    assert not m.is_session_valid(info.id)
    with pytest.raises(SessionExpired):
        m.charge_tokens(info.id, 1)
    assert m.cleanup_expired_sessions() == [info.id]
    assert len(m) == 0


def test_managers_with_and_without_clock_share_a_table(client, namespace) -> None:
    server = manager(client, namespace)
    sec, _ = client.time()
    clock = Clock((sec + 10_000) * NS)  # this manager lives in the future
    ahead = manager(client, namespace, clock, session_duration_secs=60)
    s = server.create_session().id
    t = ahead.create_session().id
    assert len(server) == len(ahead) == 2
    # Each call judges expiry with its own manager's clock.
    assert server.is_session_valid(s) and server.is_session_valid(t)
    assert not ahead.is_session_valid(s)  # 1800 s sessions, 10,000 s ahead
    assert ahead.cleanup_expired_sessions() == [s]
    assert server.get_stats().total_sessions_expired == 1


@pytest.mark.parametrize(
    "now",
    [0, 1, -1, -(10**9), -(10**9) - 1, -(2**63), -(2**63) + 12_345_678_901, 999_999_999, 10**9],
)
def test_exact_times_around_zero_and_the_int64_edges(client, namespace, now) -> None:
    clock = Clock(now)
    m = manager(client, namespace, clock, session_duration_secs=60, extension_increment_secs=7)
    info = m.create_session()
    assert (info.created_at_ns, info.expires_at_ns) == (now, now + 60 * NS)
    assert info.id.timestamp_ms == max(now // 10**6, 0)
    assert m.extend_session(info.id).expires_at_ns == now + 67 * NS
    clock.now = now + 67 * NS
    assert m.is_session_valid(info.id)
    assert m.cleanup_expired_sessions() == []
    clock.now += 1
    assert not m.is_session_valid(info.id)
    assert m.cleanup_expired_sessions() == [info.id]


def test_cleanup_within_the_same_millisecond(client, namespace) -> None:
    clock = Clock(1_767_225_600 * NS + 500_000)  # mid-millisecond
    m = manager(client, namespace, clock, session_duration_secs=1)
    a = m.create_session()
    clock.now += 10
    b = m.create_session()
    clock.now = a.expires_at_ns + 1  # a is past; b expires 9 ns later, same ms
    assert m.cleanup_expired_sessions() == [a.id]
    clock.now = b.expires_at_ns
    assert m.cleanup_expired_sessions() == []
    clock.now += 1
    assert m.cleanup_expired_sessions() == [b.id]


def test_cleanup_in_batches(client, namespace) -> None:
    clock = Clock()
    m = manager(client, namespace, clock, session_duration_secs=60)
    ids = [m.create_session().id for _ in range(2500)]  # > 2 batches of 1000
    keep = m.create_session().id
    clock.now += 60 * NS + 1
    removed = m.cleanup_expired_sessions()
    assert removed == sorted(ids + [keep], key=int)
    assert m.get_stats().total_sessions_expired == 2501
    assert len(m) == 0


# --------------------------------------------------------------------------
# numbers: exact u64 and i64 in Lua
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start,charge",
    [
        (0, U64_MAX),
        (999_999_999, 1),
        (1_000_000_000 - 1, 10**9),
        (U64_MAX - 10**9, 10**9),
        (2**53, 1),
        (2**53 + 1, 2**53 + 1),
        (10**18, 10**18),
    ],
)
def test_u64_charges_are_exact(client, namespace, start, charge) -> None:
    m = manager(client, namespace)
    s = m.create_session().id
    m.update_budget(s, BudgetStatus(U64_MAX, start, U64_MAX, start, U64_MAX, 0))
    assert m.charge_tokens(s, charge) == start + charge
    assert m.charge_time(s, charge) == start + charge
    status = m.get_session(s).budget_status
    assert status.tokens_used == status.time_used_ms == start + charge


def test_u64_depth_and_snapshot_edges(client, namespace) -> None:
    m = manager(client, namespace, max_snapshots_per_session=0)
    s = m.create_session().id
    m.update_budget(s, BudgetStatus(max_recursion_depth=U64_MAX, current_recursion_depth=U64_MAX - 1))
    assert m.increment_recursion_depth(s) == U64_MAX
    with pytest.raises(rlm_fast.RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(s)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (U64_MAX + 1, U64_MAX)
    assert m.decrement_recursion_depth(s) == U64_MAX - 1
    m.update_budget(s, BudgetStatus(max_recursion_depth=5, current_recursion_depth=10**9))
    assert m.decrement_recursion_depth(s) == 10**9 - 1
    assert m.get_session(s).recursion_depth == 10**9 - 1


# --------------------------------------------------------------------------
# layout and TTLs
# --------------------------------------------------------------------------


def test_key_layout_shares_one_hash_tag(client, namespace) -> None:
    m = manager(client, namespace)
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    tag = "{" + namespace + "}"
    assert keys_of(client, namespace) == sorted(
        [f"{tag}:expiry", f"{tag}:s:{s}", f"{tag}:stats", f"{tag}:vms"]
    )
    # One hash slot for the whole namespace (Redis Cluster).
    from redis.crc import key_slot

    assert len({key_slot(k.encode()) for k in keys_of(client, namespace)}) == 1
    m.destroy_session(s)
    assert keys_of(client, namespace) == [f"{tag}:stats"]


def test_every_key_gets_a_ttl_past_its_sessions_expiry(client, namespace) -> None:
    clock = Clock()
    grace = 3600
    m = RedisSessionManager(
        client,
        RlmConfig(session_duration_secs=600, extension_increment_secs=300, max_extensions=5),
        namespace=namespace,
        clock=clock,
        ttl_grace_secs=grace,
    )
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    m.set_context_variable(s, "k", "v")

    def ttls() -> dict[str, int]:
        return {
            k.split(":")[-1 if ":s:" not in k else -2]: client.pttl(k) for k in keys_of(client, namespace)
        }

    first = ttls()
    expected = (600 + grace) * 1000
    assert set(first) == {"expiry", "s", "stats", "vms"}
    for key, ttl in first.items():
        assert expected - 5_000 < ttl <= expected, key
    m.extend_session(s)
    for key, ttl in ttls().items():
        assert expected + 300_000 - 5_000 < ttl <= expected + 300_000, key
    # A later, shorter session never shortens the shared keys' deadline.
    clock.now += 10 * NS
    t = m.create_session().id
    assert client.pttl("{" + namespace + "}:expiry") > expected + 290_000
    assert client.pttl("{" + namespace + "}:s:" + str(t)) <= expected


def test_an_evicted_session_is_reconciled_by_cleanup(client, namespace) -> None:
    # A store nobody cleans: Redis drops the session's key at its TTL
    # (expiry + grace); the next cleanup forgets it everywhere and counts it.
    m = RedisSessionManager(
        client, RlmConfig(session_duration_secs=1), namespace=namespace, ttl_grace_secs=0
    )
    gone = m.create_session().id
    m.assign_vm(gone, "vm-gone")
    keep = RedisSessionManager(client, RlmConfig(session_duration_secs=600), namespace=namespace)
    stay = keep.create_session().id
    keep.assign_vm(stay, "vm-stay")
    time.sleep(1.2)
    assert gone not in m  # evicted by Redis
    assert len(m) == 2  # the index still counts it until a cleanup
    assert m.cleanup_expired_sessions() == [gone]
    stats = m.get_stats()
    assert (stats.active_sessions, stats.sessions_with_vm, stats.total_sessions_expired) == (1, 1, 1)
    assert m.get_session_for_vm("vm-gone") is None
    assert m.get_session_for_vm("vm-stay") == stay


# --------------------------------------------------------------------------
# namespaces, strings, scripts
# --------------------------------------------------------------------------


def test_namespaces_are_separate_tables(client) -> None:
    a = RedisSessionManager(client, namespace=f"a-{uuid.uuid4().hex}")
    b = RedisSessionManager(client, namespace=f"b-{uuid.uuid4().hex}")
    s = a.create_session().id
    a.assign_vm(s, "vm-1")
    assert s not in b
    assert len(b) == 0
    assert b.get_session_for_vm("vm-1") is None
    with pytest.raises(SessionNotFound):
        b.get_session(s)


def test_two_managers_on_one_namespace_share_everything(redis_server, namespace) -> None:
    c1, c2 = redis_server.client(), redis_server.client()
    m1 = RedisSessionManager(c1, namespace=namespace)
    m2 = RedisSessionManager(c2, namespace=namespace)
    s = m1.create_session().id
    m2.assign_vm(s, "vm-1")
    assert m1.get_session_for_vm("vm-1") == s
    assert m2.charge_tokens(s, 5) == 5
    assert m1.charge_tokens(s, 5) == 10
    m1.destroy_session(s)
    assert s not in m2
    assert m2.get_stats() == m1.get_stats()


HOSTILE = [
    "'); redis.call('FLUSHALL') --",
    "]] .. redis.call('FLUSHALL') .. [[",
    "\x00\r\n*1\r\n$8\r\nFLUSHALL\r\n",
    "ctx:ctx:",
    "state",
    "{rlm}:vms",
    "€ ✓ \U0001f600",
    "x" * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_strings_are_data(client, namespace, text) -> None:
    m = manager(client, namespace, max_snapshots_per_session=0)
    s = m.create_session().id
    m.assign_vm(s, text)
    m.set_context_variable(s, "state", "not the state")
    m.set_context_variable(s, text, text)
    m.record_snapshot_created(s, text, set_as_current=True)
    info = m.get_session(s)
    assert info.vm_instance_id == text
    assert dict(info.context_variables) == {"state": "not the state", text: text}
    assert info.state is SessionState.READY
    assert info.current_snapshot_id == text
    assert m.get_session_for_vm(text) == s
    assert m.get_context_variable(s, text) == text
    assert m.delete_context_variable(s, text) == text
    assert len(m) == 1


def test_scripts_reload_after_script_flush(client, namespace) -> None:
    m = manager(client, namespace)
    s = m.create_session().id
    client.script_flush()
    assert m.charge_tokens(s, 3) == 3  # NOSCRIPT: loaded again, run once
    assert m.get_session(s).budget_status.tokens_used == 3
    assert m.list_sessions()[0].id == s


@pytest.mark.parametrize("options", [{"decode_responses": True}, {"protocol": 2}, {"protocol": 3}])
def test_client_options(redis_server, namespace, options) -> None:
    c = redis_server.client(**options)
    m = RedisSessionManager(c, RlmConfig(session_duration_secs=60), namespace=namespace, clock=Clock())
    s = m.create_session().id
    m.assign_vm(s, "vm-é")
    m.set_context_variable(s, "ключ", "значение")
    m.record_snapshot_created(s, "snap", True)
    info = m.get_session(s)
    assert info == m.list_sessions()[0] == m.validate_session(s)
    assert info.vm_instance_id == "vm-é"
    assert m.get_all_context_variables(s) == {"ключ": "значение"}
    assert m.get_current_snapshot(s) == "snap"
    assert m.get_session_for_vm("vm-é") == s
    assert m.get_assigned_vm(s) == "vm-é"
    assert m.release_vm(s) == "vm-é"
    assert m.get_stats().total_sessions_created == 1
    c.close()


def test_a_single_connection_client_works(redis_server, namespace) -> None:
    c = redis_server.client(single_connection_client=True)
    m = RedisSessionManager(c, namespace=namespace)
    s = m.create_session().id
    assert m.charge_tokens(s, 2) == 2
    c.script_flush()
    assert m.charge_tokens(s, 2) == 4
    c.close()


def test_foreign_keys_in_the_namespace_are_an_internal_error(client, namespace) -> None:
    m = manager(client, namespace)
    s = m.create_session().id
    client.delete("{" + namespace + "}:vms")
    client.set("{" + namespace + "}:vms", "not a hash")
    with pytest.raises(rlm_fast.Internal):
        m.assign_vm(s, "vm-1")
    assert m.get_session(s).vm_instance_id is None  # refused before any write


def test_dump_of_a_redis_table_loads_in_process(client, namespace, tmp_path) -> None:
    clock = Clock()
    m = manager(client, namespace, clock, session_duration_secs=600)
    s = m.create_session().id
    m.assign_vm(s, "vm-1")
    m.set_context_variable(s, "k", "v")
    m.charge_tokens(s, 9)
    t = m.create_session().id
    m.destroy_session(t)
    path = tmp_path / "table.jsonl"
    m.dump(path)
    loaded = rlm_fast.SessionManager.load(path, clock=clock)
    assert loaded.list_sessions() == m.list_sessions()
    assert loaded.get_stats() == m.get_stats()
