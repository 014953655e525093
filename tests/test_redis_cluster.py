"""Redis Cluster: every key of a namespace carries the hash tag `{namespace}`,
so each namespace lives in one slot and every script runs on one node.

A throwaway three-primary cluster on loopback (redis-server --cluster-enabled
plus `redis-cli --cluster create`), stopped by pid afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from redis_server import RedisServer, unavailable

REDIS_CLI = shutil.which("redis-cli")
pytestmark = [
    pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available"),
    pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed"),
]


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    nodes = []
    try:
        for _ in range(3):
            node = RedisServer(extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            nodes.append(node.start())
        subprocess.run(
            [str(REDIS_CLI), "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        from redis.cluster import RedisCluster

        deadline = time.monotonic() + 30
        for node in nodes:  # every node agrees the cluster is formed
            plain = node.client()
            while b"cluster_state:ok" not in plain.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the cluster did not form"
                time.sleep(0.05)
            plain.close()
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        yield client
        client.close()
    finally:
        for node in nodes:
            node.close()


def test_namespaces_spread_over_nodes_each_in_one_slot(cluster) -> None:  # type: ignore[no-untyped-def]
    from rlm_fast import BudgetStatus, RlmConfig
    from rlm_fast.redis import RedisSessionManager

    nodes_used = set()
    for namespace in ("rlm", "a", "b", "tenant-7", "zz"):
        m = RedisSessionManager(cluster, RlmConfig(session_duration_secs=60), namespace=namespace)
        s = m.create_session().id
        t = m.create_session().id
        m.assign_vm(s, "vm-1")
        m.assign_vm(t, "vm-1")  # moves: touches both sessions' keys in the script
        m.set_context_variable(t, "k", "v")
        m.update_budget(t, BudgetStatus(token_budget=10))
        assert m.charge_tokens(t, 4) == 4
        with m.recursion(t) as depth:
            assert depth == 1
        assert m.get_session_for_vm("vm-1") == t
        assert m.get_session(s).vm_instance_id is None
        assert [i.id for i in m.list_sessions()] == sorted([s, t])
        assert len(m) == 2 and s in m
        assert m.cleanup_expired_sessions() == []
        m.destroy_session(s)
        stats = m.get_stats()
        assert (stats.total_sessions_created, stats.active_sessions, stats.sessions_with_vm) == (2, 1, 1)
        slot = cluster.keyslot("{" + namespace + "}:stats")
        assert cluster.keyslot("{" + namespace + f"}}:s:{t}") == slot
        nodes_used.add(cluster.get_node_from_key("{" + namespace + "}:stats").name)
    assert len(nodes_used) > 1  # the namespaces really are on different nodes


def test_a_tree_lives_in_its_namespace_s_slot(cluster) -> None:  # type: ignore[no-untyped-def]
    # The scripts walk a session's ancestors and subtree through keys built
    # from its own: all in the namespace's slot, so they run on one node.
    from rlm_fast import RlmConfig, SessionState
    from rlm_fast.redis import RedisSessionManager

    for namespace in ("trees-a", "trees-b", "trees-c"):
        m = RedisSessionManager(cluster, RlmConfig(session_duration_secs=60, token_budget=100), namespace=namespace)
        root = m.create_session().id
        kid = m.create_child_session(root).id
        grand = m.create_child_session(kid, token_budget=40).id
        assert m.charge_tokens(grand, 30) == 30
        assert [m.get_session(s).budget_status.tokens_used for s in (root, kid, grand)] == [30, 30, 30]
        assert m.check_budget(grand).tokens_used == 30
        assert m.children(root) == [kid] and m.children(kid) == [grand]
        slot = cluster.keyslot("{" + namespace + "}:stats")
        assert cluster.keyslot("{" + namespace + f"}}:c:{kid}") == slot
        m.update_session_state(root, SessionState.TERMINATED)
        assert not m.is_session_valid(grand)
        m.destroy_session(root)
        stats = m.get_stats()
        assert (stats.total_sessions_created, stats.active_sessions, stats.total_sessions_destroyed) == (3, 0, 3)


def test_scripts_reload_on_every_node(cluster) -> None:  # type: ignore[no-untyped-def]
    from rlm_fast.redis import RedisSessionManager

    m = RedisSessionManager(cluster, namespace="reload")
    s = m.create_session().id
    cluster.script_flush()
    assert m.charge_tokens(s, 2) == 2


def test_the_async_manager_on_an_asyncio_cluster_client(cluster) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    pytest.importorskip("pytest_asyncio")
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from rlm_fast import RlmConfig
    from rlm_fast.redis import AsyncRedisSessionManager

    port = cluster.get_default_node().port

    async def run() -> None:
        client = AsyncRedisCluster(host="127.0.0.1", port=port)
        try:
            heard: list[str] = []
            m = AsyncRedisSessionManager(
                client, RlmConfig(session_duration_secs=60), namespace="async-tenant",
                on_remove=lambda info, reason: heard.append(reason),
            )
            root = (await m.create_session()).id
            kid = (await m.create_child_session(root, token_budget=50)).id
            await m.assign_vm(kid, "vm-a")
            async with m.call(kid) as step:
                step.tokens = 5
            assert (await m.get_session(root)).budget_status.tokens_used == 5
            assert [i.id for i in await m.list_sessions()] == sorted([root, kid])
            assert await m.cleanup_expired_sessions() == []
            assert (await m.destroy_session(root)).id == root
            assert heard == ["destroyed", "cascade"]
            stats = await m.get_stats()
            assert (stats.active_sessions, stats.total_sessions_destroyed) == (0, 2)
        finally:
            await client.aclose()

    asyncio.run(run())
