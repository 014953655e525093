"""The compiled modules and their pure-Python twins expose the same public
names and the same call signatures (parameter names, kinds and defaults).
Type checkers read the twin (STYLE habit 2), so this is what keeps the
types true for the compiled core; the `.pyi` stubs of the compiled modules
are checked against the compiled build by stubtest in CI."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from rlm_fast import _budget_py, _session_py

try:
    from rlm_fast import _budget_c, _session_c
except ImportError:  # pragma: no cover - not built
    _budget_c = _session_c = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_session_c is None, reason="compiled core not built")

CLASSES = [
    ("SessionManager", "_session"),
    ("SessionId", "_session"),
    ("SessionInfo", "_session"),
    ("BudgetStatus", "_session"),
    ("SessionStats", "_session"),
    ("BudgetTracker", "_budget"),
]


def _pair(name: str, module: str) -> tuple[type, type]:
    if module == "_session":
        return getattr(_session_c, name), getattr(_session_py, name)
    return getattr(_budget_c, name), getattr(_budget_py, name)


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def _shape(function: Any) -> list[tuple[str, str, object]] | None:
    """(name, kind, default) of each parameter but self; None if unknown."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    shape = []
    for p in signature.parameters.values():
        if p.name == "self":
            continue
        kind = "keyword" if p.kind is p.KEYWORD_ONLY else p.kind.name
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            kind = "positional"
        shape.append((p.name, kind, p.default))
    return shape


@pytest.mark.parametrize("name, module", CLASSES)
def test_same_public_names(name: str, module: str) -> None:
    compiled, twin = _pair(name, module)
    assert _public(compiled) == _public(twin)


@pytest.mark.parametrize("name, module", CLASSES)
def test_same_signatures(name: str, module: str) -> None:
    compiled, twin = _pair(name, module)
    checked = 0
    for attr in sorted(_public(compiled) & _public(twin)):
        a, b = getattr(compiled, attr), getattr(twin, attr)
        if not callable(b) or isinstance(b, type):
            continue
        ours, theirs = _shape(a), _shape(b)
        if ours is None or theirs is None:
            continue
        checked += 1
        assert ours == theirs, f"{name}.{attr}: compiled {ours} != twin {theirs}"
    assert checked > 0, f"no signature of {name} could be read"


def test_the_shape_reader_tells_signatures_apart() -> None:
    def f(self: object, a: int, *, b: int = 1) -> None: ...

    def g(self: object, a: int, b: int = 1) -> None: ...

    assert _shape(f) == [("a", "positional", inspect.Parameter.empty), ("b", "keyword", 1)]
    assert _shape(f) != _shape(g)
