"""Configuration of rlm_fast: ``RlmConfig`` (every field of the Rust crate's
``terraphim_rlm::RlmConfig``, with its defaults), its enums, and the crate's
``DEFAULT_*`` constants. Defined once here and used by both cores.

Durations: the crate's config has no ``std::time::Duration`` field; every
duration is already an integer in the unit its name says (``*_ms``
milliseconds, ``*_secs`` seconds), serialized by serde as a plain number, and
kept here as a Python ``int`` in that same unit.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ._checks import show_int, show_value
from .errors import ConfigError

__all__ = (
    "DEFAULT_TOKEN_BUDGET",
    "DEFAULT_TIME_BUDGET_MS",
    "DEFAULT_MAX_RECURSION_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS_PER_SESSION",
    "DEFAULT_MAX_INLINE_OUTPUT_BYTES",
    "DEFAULT_DNS_ALLOWLIST",
    "KgStrictness",
    "BackendType",
    "SessionModel",
    "BackendSessionConfig",
    "RlmConfig",
)

# The crate's constants (lib.rs).
DEFAULT_TOKEN_BUDGET = 100_000
DEFAULT_TIME_BUDGET_MS = 300_000  # 5 minutes
DEFAULT_MAX_RECURSION_DEPTH = 10
DEFAULT_MAX_SNAPSHOTS_PER_SESSION = 10
DEFAULT_MAX_INLINE_OUTPUT_BYTES = 65_536  # 64 KiB
DEFAULT_DNS_ALLOWLIST = ("pypi.org", "github.com", "raw.githubusercontent.com")

# Bounds that validate() enforces beyond the crate's own checks.
_U64_MAX = 2**64 - 1
# The largest whole number of seconds whose nanoseconds fit an int64 (the
# tables keep timestamps as int64 nanoseconds since the epoch).
_MAX_DURATION_SECS = (2**63 - 1) // 1_000_000_000  # 9_223_372_036
_DURATION_FIELDS = ("session_duration_secs", "extension_increment_secs")
# The crate keeps these as u32 (its serde refuses larger values).
_U32_MAX = 2**32 - 1
_U32_FIELDS = ("max_recursion_depth", "max_extensions", "max_snapshots_per_session")

_REDACTED = "***REDACTED***"  # the crate's Debug marker for secrets


class KgStrictness(enum.Enum):
    """Knowledge graph validation strictness (serde: lowercase names)."""

    PERMISSIVE = "permissive"
    NORMAL = "normal"
    STRICT = "strict"

    def __str__(self) -> str:  # the crate's Display: the serde name
        return self.value


class BackendType(enum.Enum):
    """Execution backend types (serde: lowercase names)."""

    FIRECRACKER = "firecracker"
    E2B = "e2b"
    DOCKER = "docker"
    LOCAL = "local"

    def __str__(self) -> str:  # the crate's Display: the serde name
        return self.value


class SessionModel(enum.Enum):
    """Session model for execution backends (serde: lowercase names)."""

    AFFINITY = "affinity"
    STATELESS = "stateless"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BackendSessionConfig:
    """Per-backend session configuration."""

    backend: BackendType
    session_model: SessionModel


def _default_backend_session_models() -> list[BackendSessionConfig]:
    return [
        BackendSessionConfig(BackendType.FIRECRACKER, SessionModel.AFFINITY),
        BackendSessionConfig(BackendType.E2B, SessionModel.STATELESS),
        BackendSessionConfig(BackendType.DOCKER, SessionModel.AFFINITY),
        BackendSessionConfig(BackendType.LOCAL, SessionModel.AFFINITY),
    ]


_E = TypeVar("_E", bound=enum.Enum)


def _enum_member(enum_type: type[_E], value: object, what: str) -> _E:
    """*value* as a member of *enum_type*: the member itself or its serde
    name; anything else is a ConfigError."""
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        for member in enum_type:
            if member.value == value:
                return member
    names = ", ".join(repr(m.value) for m in enum_type)
    raise ConfigError(f"{what} must be a {enum_type.__name__} ({names}), got {show_value(value)}")


def _type_name(value: object) -> str:
    return type(value).__name__


# slots=True: assigning a misspelt field name raises instead of silently
# creating an attribute nobody reads.
@dataclass(repr=False, slots=True)
class RlmConfig:
    """Configuration of the RLM system: the crate's ``RlmConfig``, field for
    field, in its order and with its defaults.

    Construction checks nothing (as in the crate); :meth:`validate` does, and
    a ``SessionManager`` validates the config it is given.
    """

    # --- VM pool -------------------------------------------------------------
    pool_min_size: int = 2
    pool_max_size: int = 10
    pool_target_size: int = 4
    vm_boot_timeout_ms: int = 2000
    allocation_timeout_ms: int = 500
    max_overflow_vms: int = 3
    scale_up_queue_depth: int = 5
    scale_down_idle_secs: int = 300

    # --- Budget --------------------------------------------------------------
    token_budget: int = DEFAULT_TOKEN_BUDGET
    time_budget_ms: int = DEFAULT_TIME_BUDGET_MS
    max_recursion_depth: int = DEFAULT_MAX_RECURSION_DEPTH
    max_iterations: int = 30

    # --- Session -------------------------------------------------------------
    session_duration_secs: int = 1800  # 30 minutes
    extension_increment_secs: int = 1800
    max_extensions: int = 3
    max_snapshots_per_session: int = DEFAULT_MAX_SNAPSHOTS_PER_SESSION

    # --- Output --------------------------------------------------------------
    max_inline_output_bytes: int = DEFAULT_MAX_INLINE_OUTPUT_BYTES
    enable_verbose_tracing: bool = False

    # --- Knowledge graph -----------------------------------------------------
    kg_strictness: KgStrictness = KgStrictness.NORMAL
    kg_max_retries: int = 3

    # --- Network security ----------------------------------------------------
    dns_allowlist: list[str] = field(default_factory=lambda: list(DEFAULT_DNS_ALLOWLIST))
    log_blocked_dns: bool = True

    # --- OverlayFS -----------------------------------------------------------
    initial_overlay_mb: int = 100
    max_overlay_mb: int = 2048

    # --- Operations ----------------------------------------------------------
    alert_webhook_url: str | None = None  # secret: redacted in repr()
    alert_failure_threshold: int = 3
    alert_failure_window_secs: int = 300
    enable_auto_remediation: bool = True

    # --- Backend -------------------------------------------------------------
    backend_preference: list[BackendType] = field(
        default_factory=lambda: [
            BackendType.FIRECRACKER,
            BackendType.E2B,
            BackendType.DOCKER,
            BackendType.LOCAL,
        ]
    )
    e2b_api_key: str | None = None  # secret: redacted in repr()
    e2b_template: str | None = None
    backend_session_models: list[BackendSessionConfig] = field(
        default_factory=_default_backend_session_models
    )

    # --- LLM -----------------------------------------------------------------
    llm_provider: str | None = None
    default_model: str | None = None

    # -------------------------------------------------------------------------

    @classmethod
    def minimal(cls) -> RlmConfig:
        """The crate's minimal settings for testing (a small VM pool)."""
        return cls(pool_min_size=1, pool_max_size=2, pool_target_size=1, max_overflow_vms=1)

    @classmethod
    def development(cls) -> RlmConfig:
        """The crate's development settings (shorter timeouts and budgets)."""
        return cls(
            session_duration_secs=600,  # 10 minutes
            time_budget_ms=60_000,  # 1 minute
            token_budget=10_000,
            enable_verbose_tracing=True,
            kg_strictness=KgStrictness.PERMISSIVE,
        )

    def validate(self) -> None:
        """Raise :class:`~rlm_fast.ConfigError` unless the config is usable.

        First each field on its own, in field order: numbers must be ``int``
        (``bool`` is refused) in ``0 .. 2**64-1``, and the two session
        durations at most 9_223_372_036 seconds, so that in nanoseconds they
        fit a signed 64-bit timestamp; flags must be ``bool``; enum fields
        members of their enum; lists of the declared item type; optional
        strings ``str`` or None. Then the crate's own checks, in its order and
        with its messages.
        """
        for f in fields(self):
            _check_field(f.name, f.type, getattr(self, f.name))

        # The crate's checks (config.rs, RlmConfig::validate).
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError("pool_min_size cannot be greater than pool_max_size")
        if self.pool_target_size > self.pool_max_size:
            raise ConfigError("pool_target_size cannot be greater than pool_max_size")
        if self.initial_overlay_mb > self.max_overlay_mb:
            raise ConfigError("initial_overlay_mb cannot be greater than max_overlay_mb")
        if not self.backend_preference:
            raise ConfigError("backend_preference cannot be empty")

    def session_model_for_backend(self, backend: BackendType | str) -> SessionModel:
        """The session model configured for *backend* (a member or its serde
        name): the first matching entry of ``backend_session_models``, or
        ``AFFINITY`` when there is none, as in the crate."""
        wanted = BackendType(backend)
        for entry in self.backend_session_models:
            if entry.backend == wanted:
                return entry.session_model
        return SessionModel.AFFINITY

    def to_dict(self) -> dict[str, Any]:
        """The config as the crate's serde JSON object: fields in order, enums
        as their serde names, ``backend_session_models`` as objects. Secrets
        are included (serde serializes them too)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif f.name == "backend_preference":
                value = [b.value if isinstance(b, BackendType) else b for b in value]
            elif f.name == "backend_session_models":
                value = [
                    {"backend": m.backend.value, "session_model": m.session_model.value}
                    for m in value
                ]
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RlmConfig:
        """The inverse of :meth:`to_dict`, validated. Missing keys take their
        defaults; an unknown key, or a bad value, raises ``ConfigError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping, not {_type_name(data)}")
        known = {f.name for f in fields(cls)}
        unknown = [key for key in data if key not in known]
        if unknown:
            raise ConfigError(f"unknown RlmConfig field(s): {', '.join(map(repr, unknown))}")
        kwargs = dict(data)
        if "kg_strictness" in kwargs:
            kwargs["kg_strictness"] = _enum_member(
                KgStrictness, kwargs["kg_strictness"], "kg_strictness"
            )
        if "backend_preference" in kwargs:
            kwargs["backend_preference"] = [
                _enum_member(BackendType, item, "backend_preference item")
                for item in _as_list(kwargs["backend_preference"], "backend_preference")
            ]
        if "backend_session_models" in kwargs:
            kwargs["backend_session_models"] = [
                _backend_session_config(item)
                for item in _as_list(kwargs["backend_session_models"], "backend_session_models")
            ]
        if "dns_allowlist" in kwargs:
            kwargs["dns_allowlist"] = _as_list(kwargs["dns_allowlist"], "dns_allowlist")
        config = cls(**kwargs)
        config.validate()
        return config

    # A slots class needs these for pickle protocols 0 and 1 (2+ and
    # copy.deepcopy would manage without them).
    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        # As the crate's Debug: secrets show as a marker when set, None when
        # not, so a logged config never leaks them.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("alert_webhook_url", "e2b_api_key") and value is not None:
                value = _REDACTED
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a list, got {_type_name(value)}")
    return list(value)


def _backend_session_config(item: object) -> BackendSessionConfig:
    if isinstance(item, BackendSessionConfig):
        return item
    if not isinstance(item, Mapping) or set(item) != {"backend", "session_model"}:
        raise ConfigError(
            "backend_session_models items must be objects with keys "
            f"'backend' and 'session_model', got {show_value(item)}"
        )
    return BackendSessionConfig(
        _enum_member(BackendType, item["backend"], "backend_session_models backend"),
        _enum_member(SessionModel, item["session_model"], "backend_session_models session_model"),
    )


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {_type_name(value)}")
    if name in _DURATION_FIELDS:
        limit = _MAX_DURATION_SECS
    elif name in _U32_FIELDS:
        limit = _U32_MAX
    else:
        limit = _U64_MAX
    if not 0 <= value <= limit:
        raise ConfigError(f"{name} must be between 0 and {limit}, got {show_int(value)}")


def _check_list(name: str, value: object, item_type: type, item_desc: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {_type_name(value)}")
    for item in value:
        if not isinstance(item, item_type):
            raise ConfigError(f"{name} items must be {item_desc}, got {show_value(item)}")
    return list(value)


def _check_field(name: str, annotation: object, value: object) -> None:
    """One field's own checks, chosen by its annotation (a string, because of
    ``from __future__ import annotations``)."""
    if annotation == "int":
        _check_int(name, value)
    elif annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a bool, got {_type_name(value)}")
    elif annotation == "str | None":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a str or None, got {_type_name(value)}")
    elif annotation == "KgStrictness":
        if not isinstance(value, KgStrictness):
            raise ConfigError(f"{name} must be a KgStrictness member, got {show_value(value)}")
    elif annotation == "list[str]":
        _check_list(name, value, str, "str")
    elif annotation == "list[BackendType]":
        _check_list(name, value, BackendType, "BackendType members")
    elif annotation == "list[BackendSessionConfig]":
        for entry in _check_list(name, value, BackendSessionConfig, "BackendSessionConfig"):
            if not isinstance(entry.backend, BackendType) or not isinstance(
                entry.session_model, SessionModel
            ):
                raise ConfigError(
                    f"{name} items must hold a BackendType and a SessionModel, got {show_value(entry)}"
                )
    else:  # pragma: no cover - a field added without a check
        raise AssertionError(f"no check for field {name}: {annotation}")


def resolve_config(config: object) -> RlmConfig:
    """What every constructor does with its `config` argument: the default
    when None, a TypeError for anything but an RlmConfig, `validate()`, and a
    private deep copy (a later change to the caller's object changes nothing)."""
    if config is None:
        return RlmConfig()
    if not isinstance(config, RlmConfig):
        raise TypeError(f"config must be an RlmConfig, not {type(config).__name__}")
    config.validate()
    return copy.deepcopy(config)


# Pickles and reprs name the public path (rlm_fast re-exports these).
for _cls in (KgStrictness, BackendType, SessionModel, BackendSessionConfig, RlmConfig):
    _cls.__module__ = "rlm_fast"
del _cls
