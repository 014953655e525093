"""The bench's measuring tools (`python -m rlm_fast bench --stalls
--dump`) run and report what they say, on a small table."""

from __future__ import annotations

import pytest

from rlm_fast import _bench

pytestmark = pytest.mark.in_process("times in-process managers")

CORES = ["python"] + (["cython"] if _bench.COMPILED is not None else [])


@pytest.mark.parametrize("core", CORES)
def test_stall_table_times_every_whole_table_call(core: str) -> None:
    rows = dict(_bench.stall_table(core, 3000))
    assert "list_sessions" in rows and "dump" in rows
    for name, r in rows.items():
        if r is None:
            continue
        assert r["seconds"] > 0 and r["worst_us"] > 0, name
        assert r["drop_ms"] >= 0, name  # the result is dropped outside the window


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("python_path", [False, True])
def test_dump_load_at_scale_round_trips(core: str, python_path: bool) -> None:
    r = _bench.dump_load_at_scale(core, 500, python_path)
    assert r["dump"] > 0 and r["load"] > 0
    assert r["bytes"] > 500 * 300  # a session line is over 300 bytes
