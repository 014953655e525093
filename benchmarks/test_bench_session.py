"""Every SessionManager operation, on both cores, against 10,000 live
sessions, plus the floor (an empty compiled method taking the same id).

Run: python -m pytest benchmarks --benchmark-only --benchmark-group-by=param:op
The statements are rlm_fast._bench.OPS, the ones `python -m rlm_fast bench`
times, so the two report the same workload."""

from __future__ import annotations

import pytest

from rlm_fast import _bench, _session_py

try:
    from rlm_fast import _session_c
except ImportError:
    _session_c = None  # type: ignore[assignment]

CORES = {"python": _session_py, "cython": _session_c}


@pytest.fixture(scope="module", params=["python", "cython"])
def names(request: pytest.FixtureRequest) -> dict:  # type: ignore[type-arg]
    module = CORES[request.param]
    if module is None:
        pytest.skip("compiled core not built")
    # The floor is timed once, beside the compiled core.
    floor = _session_c._Floor() if request.param == "cython" else None
    return _bench.workload(module, floor)


@pytest.mark.parametrize("op", list(_bench.OPS))
def test_bench_session_op(benchmark, names, op: str) -> None:  # type: ignore[no-untyped-def]
    if op.startswith("floor") and names["floor"] is None:
        pytest.skip("the floor is timed with the compiled core")
    # The compare table's statement, as the body of a function whose
    # globals are the workload's names.
    scope = dict(names)
    exec(f"def run():\n    {_bench.OPS[op]}", scope)
    benchmark.extra_info["per"] = _bench.LIVE_SESSIONS if op in _bench.PER_SESSION else 1
    benchmark(scope["run"])
