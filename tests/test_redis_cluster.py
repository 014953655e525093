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


def test_scripts_reload_on_every_node(cluster) -> None:  # type: ignore[no-untyped-def]
    from rlm_fast.redis import RedisSessionManager

    m = RedisSessionManager(cluster, namespace="reload")
    s = m.create_session().id
    cluster.script_flush()
    assert m.charge_tokens(s, 2) == 2
