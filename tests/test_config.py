"""rlm_fast.config: RlmConfig equals the crate's RlmConfig (fields, order,
defaults, minimal/development, validate, session_model_for_backend, redacted
Debug), plus rlm_fast's extra validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from typing import Any

import pytest

import rlm_fast.config as config_module
from rlm_fast.config import (
    DEFAULT_DNS_ALLOWLIST,
    DEFAULT_MAX_INLINE_OUTPUT_BYTES,
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_MAX_SNAPSHOTS_PER_SESSION,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
    BackendSessionConfig,
    BackendType,
    KgStrictness,
    RlmConfig,
    SessionModel,
)
from rlm_fast.errors import ConfigError

# The crate's RlmConfig::default(), field by field, in declaration order.
CRATE_DEFAULTS: list[tuple[str, Any]] = [
    # VM pool
    ("pool_min_size", 2),
    ("pool_max_size", 10),
    ("pool_target_size", 4),
    ("vm_boot_timeout_ms", 2000),
    ("allocation_timeout_ms", 500),
    ("max_overflow_vms", 3),
    ("scale_up_queue_depth", 5),
    ("scale_down_idle_secs", 300),
    # Budget
    ("token_budget", 100_000),
    ("time_budget_ms", 300_000),
    ("max_recursion_depth", 10),
    ("max_iterations", 30),
    # Session
    ("session_duration_secs", 1800),
    ("extension_increment_secs", 1800),
    ("max_extensions", 3),
    ("max_snapshots_per_session", 10),
    # Output
    ("max_inline_output_bytes", 65_536),
    ("enable_verbose_tracing", False),
    # Knowledge graph
    ("kg_strictness", KgStrictness.NORMAL),
    ("kg_max_retries", 3),
    # Network security
    ("dns_allowlist", ["pypi.org", "github.com", "raw.githubusercontent.com"]),
    ("log_blocked_dns", True),
    # OverlayFS
    ("initial_overlay_mb", 100),
    ("max_overlay_mb", 2048),
    # Operations
    ("alert_webhook_url", None),
    ("alert_failure_threshold", 3),
    ("alert_failure_window_secs", 300),
    ("enable_auto_remediation", True),
    # Backend
    (
        "backend_preference",
        [BackendType.FIRECRACKER, BackendType.E2B, BackendType.DOCKER, BackendType.LOCAL],
    ),
    ("e2b_api_key", None),
    ("e2b_template", None),
    (
        "backend_session_models",
        [
            BackendSessionConfig(BackendType.FIRECRACKER, SessionModel.AFFINITY),
            BackendSessionConfig(BackendType.E2B, SessionModel.STATELESS),
            BackendSessionConfig(BackendType.DOCKER, SessionModel.AFFINITY),
            BackendSessionConfig(BackendType.LOCAL, SessionModel.AFFINITY),
        ],
    ),
    # LLM
    ("llm_provider", None),
    ("default_model", None),
]

INT_FIELDS = [name for name, value in CRATE_DEFAULTS if type(value) is int]
BOOL_FIELDS = [name for name, value in CRATE_DEFAULTS if type(value) is bool]
OPTIONAL_STR_FIELDS = [
    "alert_webhook_url",
    "e2b_api_key",
    "e2b_template",
    "llm_provider",
    "default_model",
]
DURATION_FIELDS = ["session_duration_secs", "extension_increment_secs"]
MAX_DURATION_SECS = 9_223_372_036
U64_MAX = 2**64 - 1
U32_FIELDS = ("max_recursion_depth", "max_extensions", "max_snapshots_per_session")

# serde_json::to_value(RlmConfig::default()) of the crate.
CRATE_DEFAULT_JSON = {
    "pool_min_size": 2,
    "pool_max_size": 10,
    "pool_target_size": 4,
    "vm_boot_timeout_ms": 2000,
    "allocation_timeout_ms": 500,
    "max_overflow_vms": 3,
    "scale_up_queue_depth": 5,
    "scale_down_idle_secs": 300,
    "token_budget": 100000,
    "time_budget_ms": 300000,
    "max_recursion_depth": 10,
    "max_iterations": 30,
    "session_duration_secs": 1800,
    "extension_increment_secs": 1800,
    "max_extensions": 3,
    "max_snapshots_per_session": 10,
    "max_inline_output_bytes": 65536,
    "enable_verbose_tracing": False,
    "kg_strictness": "normal",
    "kg_max_retries": 3,
    "dns_allowlist": ["pypi.org", "github.com", "raw.githubusercontent.com"],
    "log_blocked_dns": True,
    "initial_overlay_mb": 100,
    "max_overlay_mb": 2048,
    "alert_webhook_url": None,
    "alert_failure_threshold": 3,
    "alert_failure_window_secs": 300,
    "enable_auto_remediation": True,
    "backend_preference": ["firecracker", "e2b", "docker", "local"],
    "e2b_api_key": None,
    "e2b_template": None,
    "backend_session_models": [
        {"backend": "firecracker", "session_model": "affinity"},
        {"backend": "e2b", "session_model": "stateless"},
        {"backend": "docker", "session_model": "affinity"},
        {"backend": "local", "session_model": "affinity"},
    ],
    "llm_provider": None,
    "default_model": None,
}


def with_fields(**changes: Any) -> RlmConfig:
    """The default config with *changes* (of any type: validate() judges)."""
    return dataclasses.replace(RlmConfig(), **changes)


def config_error(config: RlmConfig) -> str:
    with pytest.raises(ConfigError) as info:
        config.validate()
    return info.value.message


# --- constants -------------------------------------------------------------


def test_crate_constants() -> None:
    assert DEFAULT_TOKEN_BUDGET == 100_000
    assert DEFAULT_TIME_BUDGET_MS == 300_000
    assert DEFAULT_MAX_RECURSION_DEPTH == 10
    assert DEFAULT_MAX_SNAPSHOTS_PER_SESSION == 10
    assert DEFAULT_MAX_INLINE_OUTPUT_BYTES == 65_536
    assert DEFAULT_DNS_ALLOWLIST == ("pypi.org", "github.com", "raw.githubusercontent.com")


def test_package_reexports() -> None:
    import rlm_fast

    for name in (
        "RlmConfig",
        "KgStrictness",
        "BackendType",
        "SessionModel",
        "BackendSessionConfig",
        "DEFAULT_TOKEN_BUDGET",
        "DEFAULT_TIME_BUDGET_MS",
        "DEFAULT_MAX_RECURSION_DEPTH",
        "DEFAULT_MAX_SNAPSHOTS_PER_SESSION",
    ):
        assert getattr(rlm_fast, name) is getattr(config_module, name)


# --- enums -----------------------------------------------------------------


def test_enum_members_and_serde_names() -> None:
    assert {m.name: m.value for m in KgStrictness} == {
        "PERMISSIVE": "permissive",
        "NORMAL": "normal",
        "STRICT": "strict",
    }
    assert {m.name: m.value for m in BackendType} == {
        "FIRECRACKER": "firecracker",
        "E2B": "e2b",
        "DOCKER": "docker",
        "LOCAL": "local",
    }
    assert {m.name: m.value for m in SessionModel} == {
        "AFFINITY": "affinity",
        "STATELESS": "stateless",
    }


def test_enum_str_is_the_crate_display() -> None:
    assert str(KgStrictness.PERMISSIVE) == "permissive"
    assert str(BackendType.E2B) == "e2b"
    assert str(SessionModel.STATELESS) == "stateless"
    assert f"{BackendType.FIRECRACKER}" == "firecracker"


def test_enums_look_up_by_value_and_pickle() -> None:
    assert BackendType("docker") is BackendType.DOCKER
    with pytest.raises(ValueError):
        BackendType("Docker")
    for member in [*KgStrictness, *BackendType, *SessionModel]:
        assert pickle.loads(pickle.dumps(member)) is member


def test_public_module_path() -> None:
    for cls in (KgStrictness, BackendType, SessionModel, BackendSessionConfig, RlmConfig):
        assert cls.__module__ == "rlm_fast"


def test_backend_session_config() -> None:
    entry = BackendSessionConfig(backend=BackendType.E2B, session_model=SessionModel.STATELESS)
    assert entry == BackendSessionConfig(BackendType.E2B, SessionModel.STATELESS)
    assert [f.name for f in dataclasses.fields(entry)] == ["backend", "session_model"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.backend = BackendType.LOCAL  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(entry)) == entry


# --- fields and defaults ---------------------------------------------------


def test_field_names_and_order_are_the_crates() -> None:
    assert [f.name for f in dataclasses.fields(RlmConfig)] == [n for n, _ in CRATE_DEFAULTS]


def test_defaults_are_the_crates() -> None:
    config = RlmConfig()
    for name, value in CRATE_DEFAULTS:
        assert getattr(config, name) == value, name
        assert type(getattr(config, name)) is type(value), name


def test_session_core_fields_exist() -> None:
    config = RlmConfig()
    assert config.session_duration_secs == 1800
    assert config.extension_increment_secs == 1800
    assert config.max_extensions == 3
    assert config.token_budget == DEFAULT_TOKEN_BUDGET
    assert config.time_budget_ms == DEFAULT_TIME_BUDGET_MS
    assert config.max_recursion_depth == DEFAULT_MAX_RECURSION_DEPTH
    assert config.max_snapshots_per_session == DEFAULT_MAX_SNAPSHOTS_PER_SESSION


def test_mutable_defaults_are_not_shared() -> None:
    a, b = RlmConfig(), RlmConfig()
    a.dns_allowlist.append("example.com")
    a.backend_preference.pop()
    a.backend_session_models.clear()
    assert b.dns_allowlist == ["pypi.org", "github.com", "raw.githubusercontent.com"]
    assert len(b.backend_preference) == 4
    assert len(b.backend_session_models) == 4


def test_misspelt_field_cannot_be_set() -> None:
    config = RlmConfig()
    with pytest.raises(AttributeError):
        config.token_budjet = 5  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        RlmConfig(token_budjet=5)  # type: ignore[call-arg]


def test_equality_and_replace() -> None:
    assert RlmConfig() == RlmConfig()
    assert RlmConfig(token_budget=1) != RlmConfig()
    changed = dataclasses.replace(RlmConfig(), max_extensions=7)
    assert changed.max_extensions == 7 and changed.token_budget == DEFAULT_TOKEN_BUDGET


def test_minimal_is_the_crates() -> None:
    config = RlmConfig.minimal()
    expected = dataclasses.replace(
        RlmConfig(), pool_min_size=1, pool_max_size=2, pool_target_size=1, max_overflow_vms=1
    )
    assert config == expected
    config.validate()


def test_development_is_the_crates() -> None:
    config = RlmConfig.development()
    expected = dataclasses.replace(
        RlmConfig(),
        session_duration_secs=600,
        time_budget_ms=60_000,
        token_budget=10_000,
        enable_verbose_tracing=True,
        kg_strictness=KgStrictness.PERMISSIVE,
    )
    assert config == expected
    assert config.extension_increment_secs == 1800  # unchanged in the crate
    config.validate()


# --- copying and pickling --------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    config = RlmConfig.development()
    config.e2b_api_key = "secret"
    config.dns_allowlist.append("example.org")
    back = pickle.loads(pickle.dumps(config, protocol=protocol))
    assert back == config
    assert back.e2b_api_key == "secret"


def test_deepcopy_is_independent() -> None:
    config = RlmConfig()
    clone = copy.deepcopy(config)
    assert clone == config
    clone.dns_allowlist.append("x.org")
    assert config.dns_allowlist == list(DEFAULT_DNS_ALLOWLIST)


# --- validate: the crate's checks ------------------------------------------


def test_defaults_validate() -> None:
    RlmConfig().validate()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pool_min_size": 11}, "pool_min_size cannot be greater than pool_max_size"),
        (
            {"pool_min_size": 10, "pool_max_size": 5},
            "pool_min_size cannot be greater than pool_max_size",
        ),
        ({"pool_target_size": 11}, "pool_target_size cannot be greater than pool_max_size"),
        (
            {"initial_overlay_mb": 4096},
            "initial_overlay_mb cannot be greater than max_overlay_mb",
        ),
        ({"backend_preference": []}, "backend_preference cannot be empty"),
    ],
)
def test_crate_checks(changes: dict[str, Any], message: str) -> None:
    assert config_error(RlmConfig(**changes)) == message


def test_crate_checks_run_in_the_crates_order() -> None:
    bad = RlmConfig(pool_min_size=20, pool_target_size=20, initial_overlay_mb=9999)
    assert config_error(bad) == "pool_min_size cannot be greater than pool_max_size"
    bad = RlmConfig(pool_target_size=20, initial_overlay_mb=9999, backend_preference=[])
    assert config_error(bad) == "pool_target_size cannot be greater than pool_max_size"


def test_crate_checks_allow_equal_values() -> None:
    RlmConfig(pool_min_size=10, pool_target_size=10, pool_max_size=10).validate()
    RlmConfig(initial_overlay_mb=2048, max_overlay_mb=2048).validate()
    RlmConfig(pool_min_size=0, pool_max_size=0, pool_target_size=0).validate()


def test_validate_error_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RlmConfig(backend_preference=[]).validate()
    err = info.value
    assert isinstance(err, ValueError)
    assert err.code == -32602
    assert str(err) == "Configuration error: backend_preference cannot be empty"


# --- validate: rlm_fast's extra checks --------------------------------------


@pytest.mark.parametrize("name", INT_FIELDS)
def test_negative_numbers_are_refused(name: str) -> None:
    message = config_error(with_fields(**{name: -1}))
    assert name in message and "-1" in message


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, 10**30])
def test_numbers_must_be_ints_in_u64_range(name: str, value: object) -> None:
    message = config_error(with_fields(**{name: value}))
    assert message.startswith(name)


@pytest.mark.parametrize("name", INT_FIELDS)
def test_u64_bounds(name: str) -> None:
    assert config_error(with_fields(**{name: 2**64})).startswith(name)
    if name in DURATION_FIELDS:
        limit = MAX_DURATION_SECS
    elif name in U32_FIELDS:  # the crate's u32 fields
        limit = 2**32 - 1
        assert config_error(with_fields(**{name: limit + 1})).startswith(name)
    else:
        limit = U64_MAX
    # Set the related fields too, so that only the bound is under test.
    related = {
        "pool_min_size": ("pool_max_size",),
        "pool_target_size": ("pool_max_size",),
        "initial_overlay_mb": ("max_overlay_mb",),
    }
    changes = {name: limit, **{other: U64_MAX for other in related.get(name, ())}}
    with_fields(**changes).validate()


@pytest.mark.parametrize("name", DURATION_FIELDS)
def test_durations_must_fit_an_int64_nanosecond_timestamp(name: str) -> None:
    assert MAX_DURATION_SECS * 1_000_000_000 <= 2**63 - 1
    assert (MAX_DURATION_SECS + 1) * 1_000_000_000 > 2**63 - 1
    with_fields(**{name: MAX_DURATION_SECS}).validate()
    message = config_error(with_fields(**{name: MAX_DURATION_SECS + 1}))
    assert name in message and str(MAX_DURATION_SECS) in message
    with_fields(**{name: 0}).validate()


def test_other_seconds_fields_are_only_u64_bounded() -> None:
    RlmConfig(alert_failure_window_secs=U64_MAX, scale_down_idle_secs=U64_MAX).validate()


def test_int_subclass_is_accepted_but_bool_is_not() -> None:
    class MyInt(int):
        pass

    RlmConfig(token_budget=MyInt(5)).validate()
    assert "token_budget" in config_error(RlmConfig(token_budget=True))


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_flags_must_be_bools(name: str, value: object) -> None:
    message = config_error(with_fields(**{name: value}))
    assert message.startswith(name)


@pytest.mark.parametrize("name", OPTIONAL_STR_FIELDS)
def test_optional_strings(name: str) -> None:
    with_fields(**{name: "text"}).validate()
    with_fields(**{name: None}).validate()
    assert config_error(with_fields(**{name: 5})).startswith(name)
    assert config_error(with_fields(**{name: b"x"})).startswith(name)


@pytest.mark.parametrize("value", ["normal", "NORMAL", 1, None, SessionModel.AFFINITY])
def test_kg_strictness_must_be_a_member(value: object) -> None:
    message = config_error(RlmConfig(kg_strictness=value))  # type: ignore[arg-type]
    assert message.startswith("kg_strictness")


@pytest.mark.parametrize(
    "value",
    [["firecracker"], [BackendType.E2B, "docker"], [None], "firecracker", None],
)
def test_backend_preference_must_hold_members(value: object) -> None:
    message = config_error(RlmConfig(backend_preference=value))  # type: ignore[arg-type]
    assert message.startswith("backend_preference")


@pytest.mark.parametrize(
    "value",
    [
        [("e2b", "stateless")],
        [BackendSessionConfig("e2b", SessionModel.STATELESS)],  # type: ignore[arg-type]
        [BackendSessionConfig(BackendType.E2B, "stateless")],  # type: ignore[arg-type]
        [{"backend": "e2b", "session_model": "stateless"}],
        None,
    ],
)
def test_backend_session_models_must_hold_configs_of_members(value: object) -> None:
    message = config_error(RlmConfig(backend_session_models=value))  # type: ignore[arg-type]
    assert message.startswith("backend_session_models")


def test_backend_session_models_may_be_empty() -> None:
    RlmConfig(backend_session_models=[]).validate()


@pytest.mark.parametrize("value", ["pypi.org", ["pypi.org", 5], None, {"pypi.org"}])
def test_dns_allowlist_must_be_a_list_of_str(value: object) -> None:
    message = config_error(RlmConfig(dns_allowlist=value))  # type: ignore[arg-type]
    assert message.startswith("dns_allowlist")


def test_lists_may_be_tuples() -> None:
    RlmConfig(
        dns_allowlist=("a.org",),  # type: ignore[arg-type]
        backend_preference=(BackendType.LOCAL,),  # type: ignore[arg-type]
    ).validate()


def test_field_checks_come_before_the_crates() -> None:
    bad = RlmConfig(pool_min_size=99, max_overlay_mb=-1)
    assert config_error(bad).startswith("max_overlay_mb")


# --- session_model_for_backend ---------------------------------------------


def test_session_model_for_backend_defaults() -> None:
    config = RlmConfig()
    assert config.session_model_for_backend(BackendType.FIRECRACKER) is SessionModel.AFFINITY
    assert config.session_model_for_backend(BackendType.E2B) is SessionModel.STATELESS
    assert config.session_model_for_backend(BackendType.DOCKER) is SessionModel.AFFINITY
    assert config.session_model_for_backend(BackendType.LOCAL) is SessionModel.AFFINITY
    assert config.session_model_for_backend("e2b") is SessionModel.STATELESS


def test_session_model_for_backend_first_match_and_fallback() -> None:
    config = RlmConfig(
        backend_session_models=[
            BackendSessionConfig(BackendType.DOCKER, SessionModel.STATELESS),
            BackendSessionConfig(BackendType.DOCKER, SessionModel.AFFINITY),
        ]
    )
    assert config.session_model_for_backend(BackendType.DOCKER) is SessionModel.STATELESS
    assert config.session_model_for_backend(BackendType.E2B) is SessionModel.AFFINITY
    assert RlmConfig(backend_session_models=[]).session_model_for_backend(
        BackendType.E2B
    ) is SessionModel.AFFINITY


def test_session_model_for_unknown_backend_raises() -> None:
    with pytest.raises(ValueError):
        RlmConfig().session_model_for_backend("kubernetes")


# --- repr redacts secrets ----------------------------------------------------


def test_repr_redacts_secrets() -> None:
    config = RlmConfig(
        alert_webhook_url="https://hooks.slack.com/services/T00/B00/XXXX",
        e2b_api_key="e2b_sk_secret_key",
        e2b_template="python-3.11",
    )
    text = repr(config)
    assert "hooks.slack.com" not in text
    assert "e2b_sk_secret_key" not in text
    assert "alert_webhook_url='***REDACTED***'" in text
    assert "e2b_api_key='***REDACTED***'" in text
    assert "e2b_template='python-3.11'" in text  # not a secret
    assert "pool_min_size=2" in text
    assert text.startswith("RlmConfig(pool_min_size=2, pool_max_size=10, ")
    assert text.endswith("llm_provider=None, default_model=None)")
    assert str(config) == text
    # The values themselves are untouched.
    assert config.e2b_api_key == "e2b_sk_secret_key"


def test_repr_shows_none_for_unset_secrets() -> None:
    text = repr(RlmConfig())
    assert "alert_webhook_url=None" in text
    assert "e2b_api_key=None" in text
    assert "REDACTED" not in text


def test_repr_lists_every_field_in_order() -> None:
    text = repr(RlmConfig())
    positions = [text.index(f" {name}=" if i else f"({name}=") for i, (name, _) in
                 enumerate(CRATE_DEFAULTS)]  # fmt: skip
    assert positions == sorted(positions)


def test_repr_redacts_empty_string_secret() -> None:
    # Some("") is still Some: the crate prints the marker.
    assert "e2b_api_key='***REDACTED***'" in repr(RlmConfig(e2b_api_key=""))


# --- serde shape ---------------------------------------------------------------


def test_to_dict_is_the_crates_serde_json() -> None:
    data = RlmConfig().to_dict()
    assert data == CRATE_DEFAULT_JSON
    assert list(data) == list(CRATE_DEFAULT_JSON)
    json.dumps(data)  # JSON-serializable as is


def test_to_dict_includes_secrets_and_copies_lists() -> None:
    config = RlmConfig(e2b_api_key="k")
    data = config.to_dict()
    assert data["e2b_api_key"] == "k"
    data["dns_allowlist"].append("x.org")
    assert config.dns_allowlist == list(DEFAULT_DNS_ALLOWLIST)


def test_from_dict_round_trip() -> None:
    config = RlmConfig.development()
    config.backend_preference = [BackendType.LOCAL, BackendType.DOCKER]
    config.llm_provider = "ollama"
    back = RlmConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config


def test_from_dict_missing_keys_take_defaults() -> None:
    assert RlmConfig.from_dict({}) == RlmConfig()
    assert RlmConfig.from_dict({"token_budget": 5}) == RlmConfig(token_budget=5)


@pytest.mark.parametrize(
    "data",
    [
        {"token_budjet": 5},
        {"kg_strictness": "Normal"},
        {"backend_preference": ["firecracker", "vmware"]},
        {"backend_session_models": [{"backend": "e2b"}]},
        {"backend_session_models": [{"backend": "e2b", "session_model": "sticky"}]},
        {"token_budget": -5},
        {"pool_min_size": 50},
        {"dns_allowlist": "pypi.org"},
    ],
)
def test_from_dict_rejects_bad_input(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RlmConfig.from_dict(data)


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(TypeError):
        RlmConfig.from_dict([("token_budget", 5)])  # type: ignore[arg-type]
