"""What only the Redis manager has: the server's clock, key layout and TTLs,
namespaces, scripts by SHA, exact 64-bit numbers in Lua, client options.

The shared semantics are the conformance suite's (the `core` fixture's
`redis` parameter); these tests use the session's `redis_server`.
"""

from __future__ import annotations

import importlib.util
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

HAVE_NUMPY = importlib.util.find_spec("numpy") is not None  # the bulk API needs it

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
    m.update_budget(s, BudgetStatus(U64_MAX, start, U64_MAX, start, 2**32 - 1, 0))
    assert m.charge_tokens(s, charge) == start + charge
    assert m.charge_time(s, charge) == start + charge
    status = m.get_session(s).budget_status
    assert status.tokens_used == status.time_used_ms == start + charge


def test_u64_depth_and_snapshot_edges(client, namespace) -> None:
    m = manager(client, namespace, max_snapshots_per_session=0)
    s = m.create_session().id
    m.update_budget(s, BudgetStatus(max_recursion_depth=2**32 - 1, current_recursion_depth=2**32 - 2))
    assert m.increment_recursion_depth(s) == 2**32 - 1
    with pytest.raises(rlm_fast.RecursionDepthExceeded) as excinfo:
        m.increment_recursion_depth(s)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (2**32, 2**32 - 1)
    assert m.decrement_recursion_depth(s) == 2**32 - 2
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
    # The shared keys (index, VM map, counters) outlive every session hash
    # by a margin (the grace, at least a minute), so that a cleanup still
    # reports a session Redis's TTL dropped (docs/redis.md).
    margin = {"s": 0, "expiry": grace * 1000, "stats": grace * 1000, "vms": grace * 1000}
    assert set(first) == {"expiry", "s", "stats", "vms"}
    for key, ttl in first.items():
        assert expected + margin[key] - 5_000 < ttl <= expected + margin[key], key
    m.extend_session(s)
    for key, ttl in ttls().items():
        assert expected + margin[key] + 300_000 - 5_000 < ttl <= expected + margin[key] + 300_000, key
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


# --------------------------------------------------------------------------
# call trees (SPEC 11, docs/trees.md): what only Redis has
# --------------------------------------------------------------------------


def test_tree_key_layout(client, namespace) -> None:
    m = manager(client, namespace)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    grand = m.create_child_session(kid).id
    tag = "{" + namespace + "}"
    assert keys_of(client, namespace) == sorted(
        [f"{tag}:expiry", f"{tag}:stats", f"{tag}:c:{root}", f"{tag}:c:{kid}"]
        + [f"{tag}:s:{s}" for s in (root, kid, grand)]
    )
    from redis.crc import key_slot

    assert len({key_slot(k.encode()) for k in keys_of(client, namespace)}) == 1
    # A child's hash carries its links; a root's has none.
    assert client.hmget(f"{tag}:s:{grand}", "parent", "root", "start_depth") == [
        str(kid).encode(),
        str(root).encode(),
        b"2",
    ]
    assert client.hmget(f"{tag}:s:{root}", "parent", "root", "start_depth") == [None, None, None]
    assert client.smembers(f"{tag}:c:{root}") == {str(kid).encode()}
    assert client.smembers(f"{tag}:c:{kid}") == {str(grand).encode()}
    # Destroying a leaf takes it out of its parent's set (the empty set goes).
    m.destroy_session(grand)
    assert f"{tag}:c:{kid}" not in keys_of(client, namespace)
    # Destroying the root leaves nothing but the counters.
    m.destroy_session(root)
    assert keys_of(client, namespace) == [f"{tag}:stats"]
    assert m.get_stats().total_sessions_destroyed == 3


def test_tree_ttls(client, namespace) -> None:
    clock = Clock()
    grace = 3600
    m = RedisSessionManager(
        client,
        RlmConfig(session_duration_secs=600, extension_increment_secs=3000, max_extensions=5),
        namespace=namespace,
        clock=clock,
        ttl_grace_secs=grace,
    )
    tag = "{" + namespace + "}"
    root = m.create_session().id
    clock.now += 100 * NS
    kid = m.create_child_session(root)
    # Capped by the parent: expires with it, and its key's TTL says so.
    assert kid.expires_at_ns == clock.now + 500 * NS
    expected = (500 + grace) * 1000
    assert expected - 5_000 < client.pttl(f"{tag}:s:{kid.id}") <= expected
    # The children set lives at least as long as its parent's key.
    assert client.pttl(f"{tag}:c:{root}") >= client.pttl(f"{tag}:s:{root}") - 5
    # A child extended past its parent keeps its parent's children set (so a
    # cleanup can still find it) and the shared keys alive as long as itself.
    m.extend_session(kid.id)
    kid_ttl = client.pttl(f"{tag}:s:{kid.id}")
    assert kid_ttl > client.pttl(f"{tag}:s:{root}")
    for key in (f"{tag}:c:{root}", f"{tag}:expiry", f"{tag}:stats"):
        assert client.pttl(key) >= kid_ttl - 5, key


def test_trees_across_two_managers_on_one_namespace(client, namespace) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = manager(client, namespace, clock_a, token_budget=1000, session_duration_secs=60)
    b = manager(client, namespace, clock_b, token_budget=50, session_duration_secs=600)
    root = a.create_session().id
    # b makes the child: its own duration, capped by the root a made.
    kid = b.create_child_session(root)
    assert (kid.parent_id, kid.root_id) == (root, root)
    assert kid.expires_at_ns == a.get_session(root).expires_at_ns
    assert kid.budget_status.token_budget == 1000  # the parent's remainder, not b's config
    grand = a.create_child_session(kid.id).id
    assert b.children(root) == [kid.id] and b.children(kid.id) == [grand]
    assert a.get_session(grand) == b.get_session(grand)
    # Charges from either manager roll up, seen by both.
    assert a.charge_tokens(grand, 10) == 10
    assert b.charge_tokens(kid.id, 5) == 15
    assert [b.get_session(s).budget_status.tokens_used for s in (root, kid.id, grand)] == [15, 15, 10]
    # Validity flows down by each manager's own clock.
    clock_a.now += 61 * NS
    assert not a.is_session_valid(grand)
    assert b.is_session_valid(grand)
    with pytest.raises(SessionExpired) as excinfo:
        a.charge_tokens(grand, 1)
    assert excinfo.value.session_id == root
    # One manager terminates the root: the other's calls on the subtree name it.
    b.update_session_state(root, SessionState.TERMINATED)
    with pytest.raises(rlm_fast.InvalidSessionState) as state_info:
        b.assign_vm(grand, "vm-1")
    assert state_info.value.session_id == root
    assert b.get_session(grand).vm_instance_id is None
    # a's cleanup removes the whole tree (its clock is past the root's expiry).
    assert a.cleanup_expired_sessions() == sorted([root, kid.id, grand], key=int)
    assert len(b) == 0
    stats = b.get_stats()
    assert (stats.total_sessions_created, stats.total_sessions_expired) == (3, 3)
    # Only the counters stay (the refusals were counted on the way).
    assert keys_of(client, namespace) == ["{" + namespace + "}:refusals", "{" + namespace + "}:stats"]


def test_an_evicted_ancestor(client, namespace) -> None:
    # The parent lives 1 s with no grace; its child was extended past it.
    # Once Redis drops the parent's key, the child is invalid (the ancestor
    # counts as expired, by its id), and the next cleanup removes both.
    short = RedisSessionManager(
        client,
        RlmConfig(session_duration_secs=1, extension_increment_secs=600, max_extensions=1),
        namespace=namespace,
        ttl_grace_secs=0,
    )
    root = short.create_session().id
    kid = short.create_child_session(root).id
    short.extend_session(kid)
    short.assign_vm(kid, "vm-kid")
    time.sleep(1.2)
    assert root not in short and kid in short
    assert not short.is_session_valid(kid)
    with pytest.raises(SessionExpired) as excinfo:
        short.validate_session(kid)
    assert excinfo.value.session_id == root
    with pytest.raises(SessionNotFound):
        short.children(root)
    assert short.get_session(kid).parent_id == root  # read-only lookups work
    assert short.cleanup_expired_sessions() == sorted([root, kid], key=int)
    stats = short.get_stats()
    assert (stats.active_sessions, stats.sessions_with_vm, stats.total_sessions_expired) == (0, 0, 2)
    assert short.get_session_for_vm("vm-kid") is None
    # Only the counters stay (the refusals were counted on the way).
    assert keys_of(client, namespace) == ["{" + namespace + "}:refusals", "{" + namespace + "}:stats"]


def test_an_evicted_child_leaves_its_parents_children(client, namespace) -> None:
    clock = Clock()
    m = manager(client, namespace, clock, session_duration_secs=600)
    root = m.create_session().id
    kids = sorted((m.create_child_session(root).id for _ in range(3)), key=int)
    tag = "{" + namespace + "}"
    client.delete(f"{tag}:s:{kids[1]}")  # as Redis does at a key's TTL
    assert m.children(root) == [kids[0], kids[2]]
    assert len(m) == 4  # the index still names it until a cleanup
    clock.now += 601 * NS
    assert m.cleanup_expired_sessions() == sorted([root, *kids], key=int)
    assert m.get_stats().total_sessions_expired == 4
    # Forgotten once: destroying a tree that still named it counts it once.
    m2 = manager(client, namespace + "-2", clock, session_duration_secs=600)
    r2 = m2.create_session().id
    k2 = m2.create_child_session(r2).id
    client.delete("{" + namespace + "-2}:s:" + str(k2))
    m2.destroy_session(r2)
    assert m2.get_stats().total_sessions_destroyed == 2
    assert m2.cleanup_expired_sessions() == []
    assert m2.get_stats().active_sessions == 0


def test_cleanup_of_trees_larger_than_a_batch(client, namespace) -> None:
    clock = Clock()
    m = manager(client, namespace, clock, session_duration_secs=60)
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(1200)]
    grand = [m.create_child_session(k).id for k in kids[:300]]
    other = m.create_session().id
    loose = [m.create_session().id for _ in range(900)]
    clock.now += 10 * NS
    keep = m.create_session().id
    clock.now += 51 * NS  # all but `keep` expired
    removed = m.cleanup_expired_sessions()
    assert removed == sorted([root, *kids, *grand, other, *loose], key=int)
    stats = m.get_stats()
    assert stats.total_sessions_expired == len(removed) == 2402
    assert [i.id for i in m.list_sessions()] == [keep]


def test_cleanup_in_now_s_millisecond_with_a_tree(client, namespace) -> None:
    clock = Clock(1_767_225_600 * NS + 500_000)  # mid-millisecond
    m = manager(client, namespace, clock, session_duration_secs=1)
    root = m.create_session().id
    clock.now += 10
    late = m.create_session().id
    kid = m.create_child_session(late).id  # same ms as root's expiry, 10 ns later
    clock.now = m.get_session(root).expires_at_ns + 1
    assert m.cleanup_expired_sessions() == [root]
    clock.now = m.get_session(late).expires_at_ns + 1
    assert m.cleanup_expired_sessions() == sorted([late, kid], key=int)


def test_a_cycle_in_the_parent_links_is_an_internal_error(client, namespace) -> None:
    m = manager(client, namespace)
    root = m.create_session().id
    kid = m.create_child_session(root).id
    tag = "{" + namespace + "}"
    client.hset(
        f"{tag}:s:{root}",
        mapping={"parent": str(kid), "root": str(kid), "start_depth": "1", "ancestors": str(kid)},
    )
    with pytest.raises(rlm_fast.Internal):
        m.charge_tokens(kid, 1)
    assert m.is_session_valid(kid) is False
    m.destroy_session(root)  # removal still works and ends
    assert len(m) == 0


def test_roll_up_at_u64_edges(client, namespace) -> None:
    m = manager(client, namespace)
    root = m.create_session().id
    mid = m.create_child_session(root).id
    leaf = m.create_child_session(mid).id
    for sid, used in ((root, U64_MAX - 2**53), (mid, 2**53 + 1), (leaf, 999_999_999)):
        m.update_budget(sid, m.get_session(sid).budget_status.replace(
            token_budget=U64_MAX, tokens_used=used))
    assert m.charge_tokens(leaf, 2**53) == 999_999_999 + 2**53
    assert [m.get_session(s).budget_status.tokens_used for s in (root, mid, leaf)] == [
        U64_MAX,
        2**54 + 1,
        999_999_999 + 2**53,
    ]
    with pytest.raises(ValueError):
        m.charge_tokens(leaf, 1)  # the root would pass 2**64 - 1
    assert m.get_session(leaf).budget_status.tokens_used == 999_999_999 + 2**53


def test_a_tree_dumped_from_redis_loads_in_process_and_back(client, namespace, tmp_path) -> None:
    clock = Clock()
    m = manager(client, namespace, clock, session_duration_secs=600, max_recursion_depth=6)
    root = m.create_session().id
    m.increment_recursion_depth(root)
    kid = m.create_child_session(root, token_budget=70).id
    m.increment_recursion_depth(kid)
    grand = m.create_child_session(kid).id
    m.assign_vm(grand, "vm-g")
    m.charge_tokens(grand, 7)
    path = tmp_path / "tree.jsonl"
    m.dump(path)
    loaded = rlm_fast.SessionManager.load(path, clock=clock)
    assert loaded.list_sessions() == m.list_sessions()
    assert loaded.children(root) == [kid] and loaded.children(kid) == [grand]
    assert loaded._export()[2] == m._export()[2]
    back_path = tmp_path / "back.jsonl"
    loaded.dump(back_path)
    assert back_path.read_bytes() == path.read_bytes()
    back = RedisSessionManager.load(back_path, client, namespace=namespace + "-back", clock=clock)
    assert back.list_sessions() == m.list_sessions()
    assert back.children(kid) == [grand]
    assert [back.decrement_recursion_depth(kid) for _ in range(2)] == [2, 2]
    tag = "{" + namespace + "-back}"
    assert client.smembers(f"{tag}:c:{root}") == {str(kid).encode()}
    assert client.pttl(f"{tag}:c:{root}") >= client.pttl(f"{tag}:s:{root}") - 5


# --------------------------------------------------------------------------
# lifecycle and the model-call step (docs/lifecycle.md), Redis's side
# --------------------------------------------------------------------------


def test_a_session_redis_dropped_is_reported_by_the_next_cleanup(client, namespace) -> None:
    # Redis's TTL drops the hash (expiry + grace); the expiry index and the
    # VM map outlive it, so the next cleanup reports it as "expired" with
    # its VM id (the rest of its last state is unknown: reported empty).
    heard: list[tuple[rlm_fast.SessionInfo, str]] = []
    m = RedisSessionManager(
        client, RlmConfig(session_duration_secs=1), namespace=namespace, ttl_grace_secs=0,
        on_remove=lambda info, reason: heard.append((info, reason)),
    )
    gone = m.create_session().id
    m.assign_vm(gone, "vm-gone")
    bare = m.create_session().id
    keep = RedisSessionManager(client, RlmConfig(session_duration_secs=600), namespace=namespace)
    stay = keep.create_session().id
    keep.assign_vm(stay, "vm-stay")
    tag = "{" + namespace + "}"
    # The shared keys outlive every session hash.
    assert client.pttl(f"{tag}:expiry") > client.pttl(f"{tag}:s:{stay}") + 50_000
    assert client.pttl(f"{tag}:vms") > client.pttl(f"{tag}:s:{stay}") + 50_000
    time.sleep(1.3)
    assert gone not in m and bare not in m
    popped = m.pop_expired_sessions()
    assert [info.id for info in popped] == sorted([gone, bare], key=int)
    assert [(info.id, reason) for info, reason in heard] == [(i.id, "expired") for i in popped]
    by_id = {info.id: info for info in popped}
    assert by_id[gone].vm_instance_id == "vm-gone"
    assert by_id[bare].vm_instance_id is None
    assert by_id[gone].context_variables == {} and by_id[gone].state == SessionState.EXPIRED
    stats = m.get_stats()
    assert (stats.active_sessions, stats.sessions_with_vm, stats.total_sessions_expired) == (1, 1, 2)
    assert m.get_session_for_vm("vm-gone") is None
    assert m.get_session_for_vm("vm-stay") == stay


def test_destroy_and_cleanup_report_from_the_script(client, namespace) -> None:
    clock = Clock()
    heard: list[tuple[str, str, str | None]] = []
    m = RedisSessionManager(
        client, RlmConfig(session_duration_secs=60), namespace=namespace, clock=clock,
        on_remove=lambda info, reason: heard.append((str(info.id), reason, info.vm_instance_id)),
    )
    root = m.create_session().id
    kids = [m.create_child_session(root).id for _ in range(3)]
    m.assign_vm(kids[1], "vm-k")
    m.set_context_variable(root, "a", "b")
    info = m.destroy_session(root)
    assert info.id == root and info.context_variables == {"a": "b"}
    assert heard == [(str(root), "destroyed", None)] + [
        (str(k), "cascade", "vm-k" if k == kids[1] else None) for k in sorted(kids, key=int)
    ]
    assert m.get_stats().total_sessions_destroyed == 4
    # A cleanup: roots expired by their own clock, children with them.
    heard.clear()
    a, b = m.create_session().id, m.create_session().id
    kid = m.create_child_session(a).id
    m.extend_session(kid)  # outlives its parent: still removed with it ("cascade")
    clock.now += 61 * NS
    assert m.cleanup_expired_sessions() == sorted([a, b, kid], key=int)
    expected = sorted([(str(a), "expired"), (str(b), "expired"), (str(kid), "cascade")])
    assert [(sid, reason) for sid, reason, _ in heard] == expected


def test_on_remove_errors_are_logged_and_ignored(client, namespace, caplog) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def boom(info, reason):  # type: ignore[no-untyped-def]
        calls.append(reason)
        raise RuntimeError("callback failed")

    m = RedisSessionManager(client, namespace=namespace, on_remove=boom)
    root = m.create_session().id
    m.create_child_session(root)
    with caplog.at_level("ERROR", logger="rlm_fast"):
        assert m.destroy_session(root).id == root
    assert calls == ["destroyed", "cascade"]
    assert len(m) == 0
    assert sum("on_remove" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(TypeError):
        RedisSessionManager(client, namespace=namespace, on_remove=42)  # type: ignore[arg-type]


class _Counting:
    """Counts the requests a manager's sender sends (round trips)."""

    def __init__(self, m: RedisSessionManager) -> None:
        self.sent = 0
        execute = m._sender.execute

        def counted(request):  # type: ignore[no-untyped-def]
            self.sent += 1
            return execute(request)

        m._sender.execute = counted  # type: ignore[method-assign]


def _evalsha_calls(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_each_step_of_a_model_call_is_one_round_trip(client, namespace) -> None:
    m = RedisSessionManager(client, namespace=namespace)
    counter = _Counting(m)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=1_000).id
    # Client side: one request each.
    before = counter.sent
    status = m.begin_call(kid)
    assert counter.sent - before == 1 and status.current_recursion_depth == 2
    before = counter.sent
    status = m.end_call(kid, tokens=10, elapsed_ms=5)
    assert counter.sent - before == 1 and status.tokens_used == 10
    before = counter.sent
    with m.call(kid) as step:
        step.tokens = 7
    assert counter.sent - before == 2  # begin_call + end_call
    assert m.get_session(root).budget_status.tokens_used == 17
    # Server side: one EVALSHA per step (the commands a script runs inside
    # count in commandstats too, but not as EVALSHA).
    for step_call in (lambda: m.begin_call(kid), lambda: m.end_call(kid, tokens=1)):
        start = _evalsha_calls(client)
        step_call()
        assert _evalsha_calls(client) - start == 1


def test_refusal_counters_are_exact_across_clients(redis_server, namespace) -> None:
    import threading

    clients = [redis_server.client() for _ in range(4)]
    managers = [
        RedisSessionManager(c, RlmConfig(token_budget=5, max_recursion_depth=1), namespace=namespace)
        for c in clients
    ]
    m = managers[0]
    over = m.create_session().id
    with pytest.raises(rlm_fast.TokenBudgetExceeded):
        m.charge_tokens(over, 6)  # counts once: rejected_tokens
    done = m.create_session().id
    m.update_session_state(done, SessionState.TERMINATED)
    missing = rlm_fast.SessionId.from_string(str(m.create_session().id))
    m.destroy_session(missing)
    rounds = 50

    def work(mgr: RedisSessionManager) -> None:
        for _ in range(rounds):
            with pytest.raises(SessionNotFound):
                mgr.get_session(missing)
            with pytest.raises(rlm_fast.InvalidSessionToken):
                mgr.charge_tokens("not-an-id", 1)
            with pytest.raises(rlm_fast.InvalidSessionState):
                mgr.begin_call(done)
            with pytest.raises(rlm_fast.TokenBudgetExceeded):
                mgr.begin_call(over)
            assert not mgr.is_session_valid(missing)
            assert mgr.get_assigned_vm(missing) is None  # None by design: not counted
            assert missing not in mgr

    threads = [threading.Thread(target=work, args=(mgr,)) for mgr in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = m.get_stats()
    n = rounds * len(managers)
    assert stats.rejected_not_found == 2 * n
    assert stats.rejected_invalid_token == n
    assert stats.rejected_terminated == n
    assert stats.rejected_tokens == n + 1
    assert (stats.rejected_expired, stats.rejected_time, stats.rejected_depth) == (0, 0, 0)
    assert managers[3].get_stats() == stats  # one table, one set of counters
    for c in clients:
        c.close()


def test_the_reaper_pops_expired_sessions(client, namespace) -> None:
    heard: list[str] = []
    m = RedisSessionManager(
        client, RlmConfig(session_duration_secs=1), namespace=namespace,
        on_remove=lambda info, reason: heard.append(reason),
    )
    m.create_session()
    with m.start_reaper(0.2) as reaper:
        with pytest.raises(RuntimeError):
            m.start_reaper(0.2)
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reaper.running
    assert not reaper.running
    assert heard == ["expired"] and len(m) == 0


def test_a_childs_ancestors_are_named_in_keys_and_learnt_once(client, namespace) -> None:
    # Scripts touch only keys they are given: a call on a child names its
    # ancestors' keys. A manager that did not create the child learns them
    # from the script's answer once (one more round trip), then each call
    # is one round trip again.
    a = RedisSessionManager(client, namespace=namespace)
    root = a.create_session().id
    mid = a.create_child_session(root).id
    leaf = a.create_child_session(mid).id
    b = RedisSessionManager(client, namespace=namespace)
    counter = _Counting(b)
    before = counter.sent
    b.begin_call(leaf)
    assert counter.sent - before == 2  # told the ancestors, then run
    before = counter.sent
    b.end_call(leaf, tokens=3)
    assert counter.sent - before == 1
    assert b._ancestors(str(leaf)) == (str(root), str(mid))
    assert a.get_session(root).budget_status.tokens_used == 3
    counter_a = _Counting(a)
    a.begin_call(leaf)  # its creator knew them from the start
    assert counter_a.sent == 1
    if HAVE_NUMPY:
        assert list(b.validate_many([leaf, mid, root, "bad"])) == [True, True, True, False]


# Commands scripts run, and which of their arguments are keys.
_KEY_ARGS = {
    "HMGET": 1, "HGET": 1, "HSET": 1, "HDEL": 1, "HGETALL": 1, "HINCRBY": 1, "HLEN": 1,
    "DEL": 1, "ZADD": 1, "ZREM": 1, "ZSCORE": 1, "ZRANGE": 1, "ZRANGEBYSCORE": 1,
    "ZCARD": 1, "SMEMBERS": 1, "SADD": 1, "SREM": 1, "PEXPIRETIME": 1, "PEXPIREAT": 1,
    "PEXPIRE": 1,
}


def test_scripts_touch_only_the_keys_they_are_given(redis_server, namespace) -> None:
    # docs/redis.md, "Keys": every key a script touches is in its KEYS, so
    # a script can be routed and checked by its keys alone. MONITOR shows
    # each command a script runs; each one's keys must be among the KEYS
    # of the EVALSHA that ran it (a new session's key too: the caller names
    # candidate keys, see the next test).
    clock = Clock()
    client = redis_server.client()
    m = RedisSessionManager(client, RlmConfig(session_duration_secs=60), namespace=namespace, clock=clock)
    other = RedisSessionManager(redis_server.client(), namespace=namespace, clock=clock)
    creations: set[str] = set()  # no exception
    sha_names = {s.sha: name for name, s in m._scripts.items()}
    violations: list[str] = []
    with client.monitor() as monitor:
        root = m.create_session().id
        kid = m.create_child_session(root, token_budget=100).id
        grand = other.create_child_session(kid).id  # other learns kid's ancestors
        m.assign_vm(grand, "vm-1")
        other.assign_vm(kid, "vm-1")  # the VM moves between sessions
        with m.call(grand) as step:
            step.tokens = 3
        other.begin_call(grand)
        other.end_call(grand, tokens=1)
        m.check_budget(grand)
        m.extend_session(kid)
        m.is_session_valid(grand)
        if HAVE_NUMPY:
            list(m.validate_many([root, kid, grand]))
        m.children(root)
        m.list_sessions()
        m.get_session(grand)
        m.set_context_variable(grand, "a", "b")
        m._export()
        m.destroy_session(kid)
        m.create_child_session(root)
        clock.now += 61 * NS
        m.pop_expired_sessions()
        m.get_stats()
        client.execute_command("ECHO", "done")
        current_keys: set[str] = set()
        current = ""
        seen = 0
        while True:
            entry = monitor.next_command()
            words = entry["command"].split(" ")
            name = words[0].upper()
            if entry["client_type"] != "lua":
                if name == "ECHO" and words[1:] == ["done"]:
                    break
                if name == "EVALSHA":
                    current = sha_names.get(words[1], "?")
                    count = int(words[2])
                    current_keys = set(words[3 : 3 + count])
                continue
            first = _KEY_ARGS.get(name)
            if first is None:
                if name == "EXISTS":
                    touched = words[1:]
                else:
                    continue  # TIME and the like: no key
            else:
                touched = [words[first]]
            seen += 1
            for key in touched:
                if key not in current_keys and current not in creations:
                    violations.append(f"{current}: {entry['command']}")
    assert seen > 100  # the scripts' commands were all seen
    assert violations == []
    client.close()


def test_a_new_sessions_key_is_named_whatever_the_hosts_clock(client, namespace) -> None:
    # Without a clock the server's TIME stamps a new id, so the manager names
    # a few candidate keys around its estimate of the server's millisecond;
    # when none matches (a skewed host) the script says so with the server's
    # ms, the manager learns the skew and tries again.
    m = RedisSessionManager(client, namespace=namespace)
    counter = _Counting(m)
    m._skew_ms = -3_600_000  # an hour behind
    info = m.create_session()
    assert counter.sent == 2 and info.id.timestamp_ms == info.created_at_ns // 10**6
    assert abs(m._skew_ms) < 60_000
    before = counter.sent
    kid = m.create_child_session(info.id)
    assert counter.sent - before == 1
    assert kid.id.timestamp_ms == kid.created_at_ns // 10**6
    m._skew_ms = 10**9
    assert m.create_child_session(info.id).parent_id == info.id
