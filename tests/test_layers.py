"""The package's layers (docs/design.md): every import of every module of
`src/rlm_fast` (.py, .pyx, .pxd; those inside functions and under
TYPE_CHECKING included) goes to a module of a lower layer, so there is no
import cycle and the twin stands alone."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "rlm_fast"
if not (PACKAGE / "_session_c.pyx").is_file():  # e.g. .ci/wheels.sh: tests/ copied beside a wheel
    pytest.skip(
        "the layering is read from the source tree (src/rlm_fast), which this run does not have",
        allow_module_level=True,
    )

# Bottom to top. A module imports only modules of lower layers; the twins
# of one layer (e.g. _session_py and _session_c) never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("_version", "_registry", "_checks", "_lifecycle", "_redis_lua"),
    ("errors",),
    ("config",),
    ("_session_id_py", "_json"),
    ("_results",),
    ("_bulk",),
    ("_dump",),
    ("_session_py", "_session_c"),
    ("_budget_py", "_budget_c"),
    ("_selector",),
    ("__init__",),
    ("aio", "otel", "redis"),
    ("_fake_upstream",),
    ("bridge",),
    ("_bench", "_demo"),
    ("_bench_redis",),
    ("__main__",),
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, list[pathlib.Path]]:
    found: dict[str, list[pathlib.Path]] = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and "__pycache__" not in path.parts:
            rel = path.relative_to(PACKAGE).with_suffix("")
            name = ".".join(rel.parts)
            found.setdefault(name, []).append(path)
    return found


def _resolve(current: str, level: int, module: str | None) -> str:
    """The package-relative name `from <level dots><module>` refers to."""
    parts = current.split(".")[:-1] if current != "__init__" else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    target = ".".join([*parts, *(module.split(".") if module else [])])
    return target or "__init__"


def _imports(name: str, path: pathlib.Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    out: set[str] = set()
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(name, node.level, node.module)
                elif (node.module or "").split(".")[0] == "rlm_fast":
                    base = node.module[len("rlm_fast.") :] if node.module != "rlm_fast" else "__init__"  # type: ignore[index]
                else:
                    continue
                if base == "__init__" or (node.module is None and node.level):
                    # `from . import x`: x may be a module of the package.
                    for alias in node.names:
                        sub = alias.name if base == "__init__" else f"{base}.{alias.name}"
                        out.add(sub if sub in MODULES else base)
                else:
                    out.add(base)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "rlm_fast":
                        out.add(".".join(parts[1:]) or "__init__")
    else:  # Cython: read the import statements as text
        pattern = r"^\s*(?:from\s+(\.*)([\w.]*)\s+c?import\s+([\w, ()]+)|c?import\s+([\w.]+))"
        for m in re.finditer(pattern, text, re.M):
            dots, module, names, plain = m.groups()
            if plain:
                if plain.split(".")[0] == "rlm_fast":
                    out.add(".".join(plain.split(".")[1:]) or "__init__")
                continue
            if dots:
                base = _resolve(name, len(dots), module or None)
            elif module.split(".")[0] == "rlm_fast":
                base = ".".join(module.split(".")[1:]) or "__init__"
            else:
                continue
            if not module:
                for alias in re.split(r"[,\s()]+", names):
                    if alias:
                        out.add(alias if alias in MODULES else base)
            else:
                out.add(base)
    out.discard(name)
    return out


MODULES = _modules()
GRAPH = {name: set().union(*(_imports(name, p) for p in paths)) for name, paths in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read() -> None:
    # The parser sees what it must: without this the checks below prove nothing.
    assert "_session_py" in GRAPH and "_session_c" in GRAPH
    assert {"_checks", "_results", "_dump"} <= GRAPH["_session_py"]
    assert "_results" in GRAPH["_session_c"]
    assert "errors" in GRAPH["config"]


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycles(GRAPH) == []


def test_every_module_has_a_layer() -> None:
    missing = sorted(name for name in GRAPH if name not in RANK)
    assert not missing, f"add these modules to LAYERS (and docs/design.md): {missing}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_go_down(name: str) -> None:
    if name not in RANK:
        pytest.fail(f"{name} has no layer")
    upward = sorted(t for t in GRAPH[name] if t in RANK and RANK[t] >= RANK[name])
    assert not upward, f"{name} (layer {RANK[name]}) imports {upward} from its own layer or above"


def test_the_twin_stands_alone() -> None:
    # Everything the twin reaches is pure Python below it: no compiled
    # module, no selector, no package root.
    reached: set[str] = set()
    todo = ["_session_py", "_budget_py"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(GRAPH.get(name, ()))
    assert not reached & {"_session_c", "_budget_c", "_selector", "__init__"}
