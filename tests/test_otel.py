"""rlm_fast.otel (SPEC 12 metrics, docs/metrics.md): observable instruments
fed by get_stats(), read through the OpenTelemetry SDK's
InMemoryMetricReader, on every manager through the `core` fixture."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("opentelemetry.metrics")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    InMemoryMetricReader,
    Sum,
)

from rlm_fast import (
    RecursionDepthExceeded,
    SessionNotFound,
    SessionState,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)
from rlm_fast.otel import REJECTION_REASONS, instrument

NAMES = [
    "rlm_fast.sessions.active",
    "rlm_fast.sessions.with_vm",
    "rlm_fast.sessions.created",
    "rlm_fast.sessions.destroyed",
    "rlm_fast.sessions.expired",
    "rlm_fast.calls.rejected",
]
REASONS = ["not_found", "invalid_token", "terminated", "expired", "tokens", "time", "depth"]
DURATION = 1800


def reader_and_provider() -> tuple[InMemoryMetricReader, MeterProvider]:
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader])


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """{metric name: metric} of one collection (the rlm_fast scope)."""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name != "rlm_fast":
                continue
            for metric in sm.metrics:
                out[metric.name] = metric
    return out


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], int]:
    return {tuple(sorted(dp.attributes.items())): dp.value for dp in metric.data.data_points}


def values(reader: InMemoryMetricReader, **attrs: Any) -> dict[str, Any]:
    """Each metric's value for the given attributes (calls.rejected: a dict
    by reason)."""
    out: dict[str, Any] = {}
    for name, metric in collect(reader).items():
        for key, value in points(metric).items():
            d = dict(key)
            reason = d.pop("reason", None)
            if d != attrs:
                continue
            if reason is None:
                out[name] = value
            else:
                out.setdefault(name, {})[reason] = value
    return out


def expected(
    active: int = 0,
    vm: int = 0,
    created: int = 0,
    destroyed: int = 0,
    expired: int = 0,
    rejected: dict[str, int] | None = None,
) -> dict[str, Any]:
    rejected = rejected or {}
    return {
        "rlm_fast.sessions.active": active,
        "rlm_fast.sessions.with_vm": vm,
        "rlm_fast.sessions.created": created,
        "rlm_fast.sessions.destroyed": destroyed,
        "rlm_fast.sessions.expired": expired,
        "rlm_fast.calls.rejected": {r: rejected.get(r, 0) for r in REASONS},
    }


def test_the_instruments_names_kinds_and_units(make_manager) -> None:
    reader, provider = reader_and_provider()
    m = make_manager()
    handle = instrument(m, meter_provider=provider)
    assert handle.names == NAMES
    assert set(handle.instruments) == set(NAMES)
    metrics = collect(reader)
    assert sorted(metrics) == sorted(NAMES)
    for name in NAMES[:2]:
        assert isinstance(metrics[name].data, Gauge)
        assert metrics[name].unit == "{session}"
    for name in NAMES[2:]:
        data = metrics[name].data
        assert isinstance(data, Sum)
        assert data.is_monotonic is True
        assert data.aggregation_temporality == AggregationTemporality.CUMULATIVE
    assert metrics["rlm_fast.calls.rejected"].unit == "{call}"
    assert all(metrics[n].description for n in NAMES)
    assert [r for r, _ in REJECTION_REASONS] == REASONS
    data = reader.get_metrics_data()
    scope = next(sm.scope for rm in data.resource_metrics for sm in rm.scope_metrics)
    import rlm_fast

    assert (scope.name, scope.version) == ("rlm_fast", rlm_fast.__version__)


def test_values_follow_get_stats_at_each_collection(core, clock, make_manager) -> None:
    reader, provider = reader_and_provider()
    m = make_manager(token_budget=10, max_recursion_depth=1)
    instrument(m, meter_provider=provider)
    assert values(reader) == expected()
    a = m.create_session().id
    b = m.create_session().id
    kid = m.create_child_session(a).id
    m.assign_vm(a, "vm-1")
    assert values(reader) == expected(active=3, vm=1, created=3)
    m.destroy_session(b)
    m.destroy_session(a)  # kid cascades
    assert kid not in m
    assert values(reader) == expected(active=0, vm=0, created=3, destroyed=3)
    c = m.create_session().id
    clock.advance(seconds=DURATION, ns=1)
    m.cleanup_expired_sessions()
    assert values(reader) == expected(created=4, destroyed=3, expired=1)
    # One refusal of each kind.
    live = m.create_session().id
    with pytest.raises(SessionNotFound):
        m.get_session(c)
    assert m.is_session_valid("bad-id") is False
    dead = m.create_session().id
    m.update_session_state(dead, SessionState.TERMINATED)
    assert m.is_session_valid(dead) is False
    old = m.create_session().id
    m.update_session_state(old, SessionState.EXPIRED)
    assert m.is_session_valid(old) is False
    with pytest.raises(TokenBudgetExceeded):
        m.charge_tokens(live, 11)
    fresh = m.create_session().id
    with pytest.raises(TimeBudgetExceeded):
        m.charge_time(fresh, 10**9)
    m.increment_recursion_depth(fresh)
    with pytest.raises(RecursionDepthExceeded):
        m.increment_recursion_depth(fresh)
    assert values(reader) == expected(
        active=4, created=8, destroyed=3, expired=1, rejected=dict.fromkeys(REASONS, 1)
    )
    stats = m.get_stats()
    assert values(reader)["rlm_fast.sessions.created"] == stats.total_sessions_created


def test_one_get_stats_per_collection(core, make_manager) -> None:
    reader, provider = reader_and_provider()
    m = make_manager()
    calls: list[int] = []

    class Counting:
        def get_stats(self) -> Any:
            calls.append(1)
            return m.get_stats()

    kept = Counting()
    instrument(kept, meter_provider=provider)
    calls.clear()
    collect(reader)
    assert len(calls) == 1
    collect(reader)
    collect(reader)
    assert len(calls) == 3


def test_several_managers_on_one_provider(core, make_manager) -> None:
    reader, provider = reader_and_provider()
    m1, m2 = make_manager(), make_manager()
    h1 = instrument(m1, meter_provider=provider, attributes={"manager": "one"})
    instrument(m2, meter_provider=provider, attributes={"manager": "two"})
    with pytest.raises(ValueError):
        instrument(make_manager(), meter_provider=provider, attributes={"manager": "two"})
    m1.create_session()
    for _ in range(3):
        m2.create_session()
    assert values(reader, manager="one")["rlm_fast.sessions.active"] == 1
    assert values(reader, manager="two")["rlm_fast.sessions.active"] == 3
    assert values(reader, manager="two")["rlm_fast.calls.rejected"] == dict.fromkeys(REASONS, 0)
    h1.close()
    h1.close()  # idempotent
    assert values(reader, manager="one") == {}
    assert values(reader, manager="two")["rlm_fast.sessions.created"] == 3
    # A freed slot may be taken again.
    instrument(m1, meter_provider=provider, attributes={"manager": "one"})
    assert values(reader, manager="one")["rlm_fast.sessions.created"] == 1


def test_prefix(core, make_manager) -> None:
    reader, provider = reader_and_provider()
    m = make_manager()
    handle = instrument(m, meter_provider=provider, prefix="svc.rlm")
    assert handle.names == [n.replace("rlm_fast.", "svc.rlm.", 1) for n in NAMES]
    m.create_session()
    assert collect(reader)["svc.rlm.sessions.active"].data.data_points[0].value == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prefix": ""}, ValueError),
        ({"prefix": "a."}, ValueError),
        ({"prefix": 5}, TypeError),
        ({"attributes": {"reason": "x"}}, ValueError),
        ({"attributes": {"k": [1]}}, TypeError),
        ({"attributes": {"": "x"}}, TypeError),
        ({"attributes": [("k", "v")]}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error, make_manager) -> None:
    _, provider = reader_and_provider()
    with pytest.raises(error):
        instrument(make_manager(), meter_provider=provider, **kwargs)


def test_not_a_manager() -> None:
    _, provider = reader_and_provider()
    with pytest.raises(TypeError):
        instrument(object(), meter_provider=provider)
    with pytest.raises(TypeError):
        instrument(None, meter_provider=provider)


@pytest.mark.in_process("AsyncSessionManager wraps in-process managers")
def test_the_async_wrapper_is_read_through_its_manager(core, make_manager) -> None:
    from rlm_fast.aio import AsyncSessionManager

    if core.name == "redis":
        pytest.skip("AsyncSessionManager wraps in-process managers")
    reader, provider = reader_and_provider()
    m = make_manager()
    instrument(AsyncSessionManager(m), meter_provider=provider)
    m.create_session()
    assert values(reader)["rlm_fast.sessions.active"] == 1


def test_a_failing_get_stats_reports_nothing_and_logs(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rlm_fast")
    reader, provider = reader_and_provider()

    class Broken:
        def get_stats(self) -> Any:
            raise ConnectionError("down")

    broken = Broken()
    instrument(broken, meter_provider=provider)
    assert values(reader) == {}
    assert any(
        r.name == "rlm_fast" and r.exc_info and isinstance(r.exc_info[1], ConnectionError)
        for r in caplog.records
    )


def test_a_collected_manager_stops_reporting(make_manager) -> None:
    reader, provider = reader_and_provider()

    class Weak:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def get_stats(self) -> Any:
            return self.inner.get_stats()

    m = make_manager()
    w = Weak(m)
    instrument(w, meter_provider=provider)
    m.create_session()
    assert values(reader)["rlm_fast.sessions.active"] == 1
    del w
    gc.collect()
    assert values(reader) == {}


def test_the_global_provider_is_the_default(core, make_manager) -> None:
    # Without an SDK configured the global provider is a proxy: instrument()
    # still works (nothing is exported).
    handle = instrument(make_manager(), attributes={"test": "global-default"})
    assert handle.names == NAMES
    handle.close()


def test_importing_rlm_fast_never_needs_opentelemetry() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import rlm_fast, rlm_fast.otel\n"
        "m = rlm_fast.SessionManager()\n"
        "try:\n"
        "    rlm_fast.otel.instrument(m)\n"
        "except ImportError as e:\n"
        "    print('ok', 'rlm_fast[otel]' in str(e))\n"
        "print(any(k.startswith('opentelemetry') for k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["ok", "True", "False"]
