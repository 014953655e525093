"""The rules that once drifted between the cores, and the defects a new user
found (issue "Layers without cycles"): each checked on every core."""

from __future__ import annotations

import pytest

from conftest import FakeClock
from rlm_fast import ConfigError, MaxSnapshotsReached, RlmConfig, Serialization
from rlm_fast._checks import show_int, show_value

U32_MAX = 2**32 - 1
HUGE = 10**5000  # str() of it raises ValueError (the int->str digit cap)


# --- immutable results, one rule for a second __init__ ---------------------


def _results(core):  # type: ignore[no-untyped-def]
    manager = core.SessionManager(clock=FakeClock())
    info = manager.create_session()
    return [
        (info, "extension_count"),
        (info.budget_status, "tokens_used"),
        (manager.get_stats(), "active_sessions"),
    ]


def test_results_refuse_set_and_delete(core) -> None:  # type: ignore[no-untyped-def]
    for value, field in _results(core):
        before = getattr(value, field)
        with pytest.raises(AttributeError):
            setattr(value, field, 7)
        with pytest.raises(AttributeError):
            delattr(value, field)
        assert getattr(value, field) == before


@pytest.mark.parametrize("kind", ["BudgetStatus", "SessionStats"])
def test_results_refuse_a_second_init(core, kind: str) -> None:  # type: ignore[no-untyped-def]
    value = getattr(core, kind)()
    with pytest.raises(AttributeError, match=f"{kind} is immutable"):
        value.__init__(5)
    assert value == getattr(core, kind)()


def test_session_info_refuses_a_second_init(core) -> None:  # type: ignore[no-untyped-def]
    info = core.SessionManager(clock=FakeClock()).create_session()
    with pytest.raises(AttributeError, match="SessionInfo is immutable"):
        info.__init__(info.id, "Ready", 0, 1)
    assert info.state.value == "Initializing"


def test_manager_refuses_a_second_init(core) -> None:  # type: ignore[no-untyped-def]
    manager = core.SessionManager(clock=FakeClock())
    sid = manager.create_session().id
    with pytest.raises(TypeError, match="already initialised"):
        manager.__init__()
    assert manager.is_session_valid(sid)  # the table was not emptied
    assert len(manager) == 1


def test_constructors_copy_and_validate_the_config(core) -> None:  # type: ignore[no-untyped-def]
    config = RlmConfig(token_budget=123)
    manager = core.SessionManager(config)
    config.token_budget = 5
    assert manager.config.token_budget == 123
    with pytest.raises(TypeError, match="config must be an RlmConfig"):
        core.SessionManager({"token_budget": 1})
    with pytest.raises(ConfigError):
        core.SessionManager(RlmConfig(max_extensions=2**32))
    with pytest.raises(ConfigError):
        core.BudgetTracker(RlmConfig(max_recursion_depth=2**32))


# --- the crate's u32 fields ------------------------------------------------


@pytest.mark.parametrize("field", ["max_extensions", "max_recursion_depth", "max_snapshots_per_session"])
def test_config_u32_fields(field: str) -> None:
    RlmConfig(**{field: U32_MAX}).validate()
    with pytest.raises(ConfigError, match=f"{field} must be between 0 and {U32_MAX}"):
        RlmConfig(**{field: U32_MAX + 1}).validate()
    with pytest.raises(ConfigError):
        RlmConfig.from_dict({**RlmConfig().to_dict(), field: U32_MAX + 1})


@pytest.mark.parametrize("field", ["max_recursion_depth", "current_recursion_depth"])
def test_budget_status_depths_are_u32(core, field: str) -> None:  # type: ignore[no-untyped-def]
    assert getattr(core.BudgetStatus(**{field: U32_MAX}), field) == U32_MAX
    with pytest.raises(ValueError, match=r"0\.\.2\*\*32-1"):
        core.BudgetStatus(**{field: U32_MAX + 1})
    # budgets above u32 stay u64
    assert core.BudgetStatus(token_budget=2**64 - 1).token_budget == 2**64 - 1


def test_update_budget_cannot_store_a_depth_past_u32(core) -> None:  # type: ignore[no-untyped-def]
    manager = core.SessionManager(clock=FakeClock())
    sid = manager.create_session().id
    with pytest.raises(ValueError):
        manager.update_budget(sid, core.BudgetStatus(max_recursion_depth=2**32))
    manager.update_budget(sid, core.BudgetStatus(max_recursion_depth=U32_MAX))
    assert manager.get_session(sid).budget_status.max_recursion_depth == U32_MAX


@pytest.mark.parametrize("field", ["extension_count", "recursion_depth", "snapshot_count"])
def test_session_info_counters_are_u32(core, field: str) -> None:  # type: ignore[no-untyped-def]
    info = core.SessionManager(clock=FakeClock()).create_session()
    args = dict(id=info.id, state="Ready", created_at_ns=0, expires_at_ns=1)
    assert getattr(core.SessionInfo(**args, **{field: U32_MAX}), field) == U32_MAX
    with pytest.raises(ValueError, match=r"0\.\.2\*\*32-1"):
        core.SessionInfo(**args, **{field: U32_MAX + 1})
    data = info.to_dict()
    data[field] = U32_MAX + 1
    if field == "recursion_depth":
        data["budget_status"]["current_recursion_depth"] = U32_MAX + 1
    with pytest.raises(Serialization, match=f"{field}: {U32_MAX + 1} is out of range for u32"):
        core.SessionInfo.from_dict(data)


def test_snapshot_count_stops_at_u32(core, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # max_snapshots_per_session=0 means no limit of the config's; the count
    # still stops at the crate's u32 maximum, with MaxSnapshotsReached.
    clock = FakeClock()
    source = core.SessionManager(RlmConfig(max_snapshots_per_session=0), clock=clock)
    info = source.create_session()
    full = core.SessionInfo(
        info.id, "Ready", info.created_at_ns, info.expires_at_ns, snapshot_count=U32_MAX - 1
    )
    manager = core.SessionManager(RlmConfig(max_snapshots_per_session=0), clock=clock)
    manager._restore([full], (1, 0, 0))
    manager.record_snapshot_created(info.id, "s1")
    assert manager.get_session(info.id).snapshot_count == U32_MAX
    with pytest.raises(MaxSnapshotsReached) as caught:
        manager.record_snapshot_created(info.id, "s2")
    assert caught.value.max == U32_MAX
    assert manager.get_session(info.id).snapshot_count == U32_MAX
    path = tmp_path / "full.jsonl"
    manager.dump(path)  # and the crate could read the dump back
    assert core.SessionManager.load(path, clock=clock).get_session(info.id).snapshot_count == U32_MAX


# --- one formatter for echoed values ---------------------------------------


def test_config_from_dict_with_a_huge_int_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="an int of 16610 bits"):
        RlmConfig.from_dict({"backend_preference": [HUGE]})
    with pytest.raises(ConfigError):
        RlmConfig.from_dict({"backend_session_models": [{"backend": HUGE, "session_model": [HUGE]}]})
    with pytest.raises(ConfigError):
        RlmConfig(dns_allowlist=[HUGE]).validate()


def test_show_value_never_fails() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert show_value(HUGE) == show_int(HUGE) == "an int of 16610 bits"
    assert show_value(-HUGE) == "-an int of 16610 bits"
    assert show_value([HUGE]) == "a list that cannot be shown"
    assert show_value(BadRepr()) == "a BadRepr that cannot be shown"
    assert show_value("x" * 500).endswith("\u2026") and len(show_value("x" * 500)) == 81
    assert show_value(True) == "True"


# --- Hypothesis: the default profile cannot fail at random -----------------


def test_default_hypothesis_profile_is_derandomized() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    import conftest_hypothesis

    assert "random" in conftest_hypothesis.PROFILES
    assert hypothesis.settings.get_profile("ci").derandomize is True
    assert hypothesis.settings.get_profile("random").derandomize is False
    assert hypothesis.settings.get_profile("long").derandomize is False
