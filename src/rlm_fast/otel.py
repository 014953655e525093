"""OpenTelemetry metrics for a session manager (SPEC 12, docs/metrics.md).

`instrument(manager)` registers observable instruments on a meter of the
`rlm_fast` instrumentation scope; at each collection they read the
manager's `get_stats()` (once per collection for all of them) and report
what it holds: live sessions, sessions holding a VM, sessions created,
destroyed and expired, and refused calls by reason.

Only `opentelemetry-api` is needed (the `otel` extra), and it is imported
when `instrument` is called: importing `rlm_fast` or this module never
needs it. Any manager with a synchronous `get_stats()` works: the twin,
the compiled core, `RedisSessionManager`, and an `AsyncSessionManager`
(through the manager it wraps).
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["METRICS", "REJECTION_REASONS", "Instrumentation", "instrument"]

log = logging.getLogger("rlm_fast")

SCOPE = "rlm_fast"

# (suffix, kind, SessionStats field, unit, description); the names are
# `<prefix>.<suffix>`.
METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("sessions.active", "gauge", "active_sessions", "{session}", "Sessions in the table now"),
    (
        "sessions.with_vm",
        "gauge",
        "sessions_with_vm",
        "{session}",
        "Sessions holding a VM now",
    ),
    (
        "sessions.created",
        "counter",
        "total_sessions_created",
        "{session}",
        "Sessions created (children included)",
    ),
    (
        "sessions.destroyed",
        "counter",
        "total_sessions_destroyed",
        "{session}",
        "Sessions removed by destroy_session (cascades included)",
    ),
    (
        "sessions.expired",
        "counter",
        "total_sessions_expired",
        "{session}",
        "Sessions removed by a cleanup or the reaper (cascades included)",
    ),
    (
        "calls.rejected",
        "counter",
        "rejected_*",
        "{call}",
        "Refused calls and is_session_valid calls that returned False, by reason",
    ),
)

# The `reason` attribute of `<prefix>.calls.rejected` -> SessionStats field.
REJECTION_REASONS: tuple[tuple[str, str], ...] = (
    ("not_found", "rejected_not_found"),
    ("invalid_token", "rejected_invalid_token"),
    ("terminated", "rejected_terminated"),
    ("expired", "rejected_expired"),
    ("tokens", "rejected_tokens"),
    ("time", "rejected_time"),
    ("depth", "rejected_depth"),
)

_Attrs = tuple[tuple[str, Any], ...]


def _sync_manager(manager: Any) -> Any:
    """The manager whose `get_stats()` the callbacks call (synchronously)."""
    get_stats = getattr(manager, "get_stats", None)
    if not callable(get_stats):
        raise TypeError(f"instrument() needs a session manager, not {type(manager).__name__}")
    if inspect.iscoroutinefunction(get_stats):
        inner = getattr(manager, "manager", None)  # aio.AsyncSessionManager
        if inner is not None and not inspect.iscoroutinefunction(
            getattr(inner, "get_stats", None)
        ):
            return inner
        raise TypeError(
            f"{type(manager).__name__}.get_stats is a coroutine and metrics are read "
            "synchronously: instrument a RedisSessionManager on the same namespace instead"
        )
    return manager


def _check_attributes(attributes: Mapping[str, Any] | None) -> _Attrs:
    if attributes is None:
        return ()
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    out = []
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError("attribute names must be non-empty strings")
        if key == "reason":
            raise ValueError("'reason' is the attribute of calls.rejected; choose another name")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attribute {key!r} must be finite")
        if not isinstance(value, (str, bool, int, float)):
            raise TypeError(f"attribute {key!r} must be a str, bool, int or float")
        out.append((key, value))
    return tuple(sorted(out))


class _Member:
    """One instrumented manager of a group."""

    __slots__ = ("_ref", "attributes", "stats")

    def __init__(self, manager: Any, attributes: _Attrs) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(manager)
        except TypeError:  # a class without weak references: keep it
            ref = lambda: manager
        self._ref = ref
        self.attributes = attributes
        self.stats: Any = None

    def manager(self) -> Any:
        return self._ref()


class _Group:
    """The instruments of one (meter provider, prefix) and the managers
    they report. OpenTelemetry keeps the first instrument of a name, so
    every manager instrumented on one provider with one prefix shares
    these instruments, told apart by its attributes."""

    def __init__(self, meter: Any, prefix: str) -> None:
        self.lock = threading.Lock()
        self.members: list[_Member] = []
        # Callbacks that used the current stats; the first callback to run
        # again starts a new collection and reads get_stats() once per
        # manager for all the instruments.
        self._used: set[str] = set()
        self._fresh = False
        self.instruments: dict[str, Any] = {}
        for suffix, kind, field, unit, description in METRICS:
            name = f"{prefix}.{suffix}"
            create = (
                meter.create_observable_gauge
                if kind == "gauge"
                else meter.create_observable_counter
            )
            self.instruments[name] = create(
                name,
                callbacks=[self._callback(name, field)],
                unit=unit,
                description=description,
            )

    def _callback(
        self, name: str, field: str
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for attrs, stats in self._read(name):
                if field == "rejected_*":
                    for reason, stat in REJECTION_REASONS:
                        value = getattr(stats, stat, None)
                        if value is not None:
                            yield Observation(int(value), {**dict(attrs), "reason": reason})
                else:
                    yield Observation(int(getattr(stats, field)), dict(attrs))

        observe.__name__ = f"observe_{name}"
        return observe

    def _read(self, name: str) -> list[tuple[_Attrs, Any]]:
        """(attributes, stats) of every live member for this collection."""
        with self.lock:
            if not self._fresh or name in self._used:
                self._used.clear()
                self._fresh = True
                alive = []
                for member in self.members:
                    manager = member.manager()
                    if manager is None:
                        continue  # collected: it reports nothing more
                    alive.append(member)
                    try:
                        member.stats = manager.get_stats()
                    except Exception:  # a collection must not fail (Redis down, ...)
                        member.stats = None
                        log.warning("rlm_fast.otel: get_stats() raised", exc_info=True)
                self.members = alive
            self._used.add(name)
            return [(m.attributes, m.stats) for m in self.members if m.stats is not None]

    def add(self, member: _Member) -> None:
        with self.lock:
            for other in self.members:
                if other.manager() is not None and other.attributes == member.attributes:
                    raise ValueError(
                        "another manager is instrumented on this meter provider with the "
                        f"same prefix and attributes {dict(member.attributes)!r}: give each "
                        "manager distinct `attributes` (or another prefix)"
                    )
            self.members.append(member)
            self._fresh = False

    def remove(self, member: _Member) -> None:
        with self.lock:
            self.members = [m for m in self.members if m is not member]


# meter provider -> {prefix: _Group}; weak where the provider allows it.
_GROUPS: weakref.WeakKeyDictionary[Any, dict[str, _Group]] = weakref.WeakKeyDictionary()
_STRONG_GROUPS: dict[int, tuple[Any, dict[str, _Group]]] = {}
_GROUPS_LOCK = threading.Lock()


def _groups_of(provider: Any) -> dict[str, _Group]:
    try:
        return _GROUPS.setdefault(provider, {})
    except TypeError:  # not weakly referenceable: keep it
        return _STRONG_GROUPS.setdefault(id(provider), (provider, {}))[1]


class Instrumentation:
    """What `instrument()` returns: the instruments (by name) and `close()`,
    after which this manager is no longer reported. (OpenTelemetry cannot
    remove an instrument: the instruments stay and report the other
    managers of the same provider and prefix, or nothing.)"""

    __slots__ = ("_group", "_member", "attributes", "prefix")

    def __init__(self, group: _Group, member: _Member, prefix: str) -> None:
        self._group = group
        self._member = member
        self.prefix = prefix
        self.attributes: dict[str, Any] = dict(member.attributes)

    @property
    def instruments(self) -> dict[str, Any]:
        """The OpenTelemetry instruments, by metric name."""
        return dict(self._group.instruments)

    @property
    def names(self) -> list[str]:
        return list(self._group.instruments)

    def close(self) -> None:
        """Stop reporting this manager (idempotent)."""
        self._group.remove(self._member)

    def __enter__(self) -> Instrumentation:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Instrumentation {self.prefix}.* attributes={self.attributes!r}>"


def instrument(
    manager: Any,
    *,
    meter_provider: MeterProvider | None = None,
    prefix: str = "rlm_fast",
    attributes: Mapping[str, str | bool | int | float] | None = None,
) -> Instrumentation:
    """Report `manager`'s counters through OpenTelemetry observable
    instruments (docs/metrics.md), read from `manager.get_stats()` at each
    collection. `meter_provider` defaults to the global one; `prefix` starts
    every metric name; `attributes` are added to every observation (give
    each manager its own when several share a provider and a prefix)."""
    try:
        from opentelemetry import metrics
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError(
            "rlm_fast.otel needs opentelemetry-api: pip install 'rlm_fast[otel]'"
        ) from exc
    target = _sync_manager(manager)
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(f"prefix must be a non-empty dotted name, got {prefix!r}")
    attrs = _check_attributes(attributes)
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    member = _Member(target, attrs)
    with _GROUPS_LOCK:
        groups = _groups_of(provider)
        group = groups.get(prefix)
        if group is None:
            group = _Group(provider.get_meter(SCOPE, __version__), prefix)
            groups[prefix] = group
    group.add(member)
    return Instrumentation(group, member, prefix)
