"""Packaging guards: one version, the type information shipped and matching
the compiled classes, and (with RLM_FAST_EXPECT_INSTALLED) that the suite
runs against an installed wheel, not the source tree.

RLM_FAST_EXPECT_INSTALLED=cython (or 1): rlm_fast comes from site-packages,
the compiled core is in use and the wheel is platform-specific.
RLM_FAST_EXPECT_INSTALLED=python: the same for the pure py3-none-any wheel.
.ci/wheels.sh and cibuildwheel's test-command set it.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import os
import site
import sys
import sysconfig
import types
from pathlib import Path

import pytest

import rlm_fast

PACKAGE_DIR = Path(rlm_fast.__file__).resolve().parent
EXPECT = os.environ.get("RLM_FAST_EXPECT_INSTALLED", "")

try:
    from rlm_fast import _budget_c, _session_c
except ImportError:
    _session_c = _budget_c = None  # type: ignore[assignment]


def _own_distribution() -> importlib.metadata.Distribution | None:
    """The installed distribution that the imported rlm_fast belongs to."""
    try:
        dist = importlib.metadata.distribution("rlm_fast")
    except importlib.metadata.PackageNotFoundError:
        return None
    init = Path(str(dist.locate_file("rlm_fast/__init__.py")))
    if not init.is_file() or init.resolve() != Path(rlm_fast.__file__).resolve():
        return None  # metadata of another copy (e.g. an editable or older install)
    return dist


# --------------------------------------------------------------------------
# version and type information (always)
# --------------------------------------------------------------------------


def test_version_is_single_sourced() -> None:
    from rlm_fast import _version

    assert rlm_fast.__version__ == _version.__version__
    dist = _own_distribution()
    if dist is not None:
        assert dist.version == rlm_fast.__version__


def test_the_package_is_typed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()
    for stub in ("_session_c.pyi", "_budget_c.pyi"):
        assert (PACKAGE_DIR / stub).is_file(), stub


def _stub_classes(name: str) -> dict[str, set[str]]:
    """{class: names it declares} from a .pyi next to the package."""
    tree = ast.parse((PACKAGE_DIR / name).read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                item.name
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            } | {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return out


def _runtime_names(cls: type) -> set[str]:
    # What the class adds to object, less Cython's pickling helpers.
    cython = {"__pyx_vtable__", "__reduce_cython__", "__setstate_cython__", "__setstate__"}
    return {n for n in vars(cls) if not hasattr(object, n) and n not in cython}


@pytest.mark.skipif(_session_c is None, reason="compiled core not built")
@pytest.mark.parametrize("module_name", ["_session_c", "_budget_c"])
def test_stubs_declare_what_the_compiled_module_has(module_name: str) -> None:
    # A cheap, per-platform cousin of stubtest (which CI runs once): every
    # class and method of the compiled module is in its .pyi, and back.
    module: types.ModuleType = {"_session_c": _session_c, "_budget_c": _budget_c}[module_name]
    stub = _stub_classes(f"{module_name}.pyi")
    for cls_name, declared in stub.items():
        cls = getattr(module, cls_name, None)
        assert isinstance(cls, type), f"{module_name}.{cls_name} is in the stub only"
        assert _runtime_names(cls) - declared == set(), f"{cls_name}: missing from the stub"
        assert {n for n in declared if not hasattr(cls, n)} == set(), f"{cls_name}: stub only"
    public = {n for n, v in vars(module).items()
              if isinstance(v, type) and v.__module__ == module.__name__}
    assert public - set(stub) == set(), "compiled classes without a stub"


# --------------------------------------------------------------------------
# the installed wheel (RLM_FAST_EXPECT_INSTALLED)
# --------------------------------------------------------------------------

installed = pytest.mark.skipif(
    not EXPECT, reason="RLM_FAST_EXPECT_INSTALLED not set (not testing an installed wheel)"
)


def _install_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    if hasattr(site, "getsitepackages"):
        dirs.update(site.getsitepackages())
    return [Path(d).resolve() for d in dirs]


@installed
def test_rlm_fast_is_imported_from_site_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert EXPECT in ("1", "cython", "python"), f"RLM_FAST_EXPECT_INSTALLED={EXPECT!r}"
    with capsys.disabled():  # shown in the log, whatever the capture mode
        print(f"\nrlm_fast.__file__ = {rlm_fast.__file__} (IMPLEMENTATION={rlm_fast.IMPLEMENTATION})")
    where = Path(rlm_fast.__file__).resolve()
    assert {"site-packages", "dist-packages"} & set(where.parts), where
    assert any(where.is_relative_to(d) for d in _install_dirs()), (where, _install_dirs())
    source = Path(__file__).resolve().parent.parent / "src" / "rlm_fast" / "__init__.py"
    assert where != source, "the source tree shadows the installed wheel"


@installed
def test_the_expected_core_is_in_use() -> None:
    want = "python" if EXPECT == "python" else "cython"
    assert rlm_fast.IMPLEMENTATION == want
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = sorted(p.name for p in PACKAGE_DIR.iterdir() if p.name.endswith(suffixes))
    if want == "cython":
        assert _session_c is not None and _budget_c is not None
        for module in (_session_c, _budget_c):
            assert Path(module.__file__ or "").resolve().parent == PACKAGE_DIR
        assert len(compiled) == 2, compiled
    else:
        assert compiled == [], f"the pure wheel holds compiled files: {compiled}"


@installed
def test_the_wheel_tag_fits_the_core() -> None:
    dist = _own_distribution()
    assert dist is not None, "no metadata for the imported rlm_fast"
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    assert tags, wheel
    with_ext = EXPECT != "python"
    assert ("Root-Is-Purelib: false" in wheel) == with_ext, wheel
    if not with_ext:
        assert tags == ["py3-none-any"]
        return
    abi = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        abi += "t"  # a free-threaded interpreter needs the free-threaded wheel
    for tag in tags:
        _python, tag_abi, platform = tag.split("-")
        assert tag_abi == abi, tag
        assert platform != "any", tag
    files = {str(f) for f in dist.files or ()}
    for name in ("py.typed", "_session_c.pyi", "_budget_c.pyi", "_session_c.pxd", "_session_c.h"):
        assert f"rlm_fast/{name}" in files, name
