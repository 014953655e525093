"""Guard tests (STYLE habit 5): which core is in use, the selector's
environment switches, clean imports, and the public names of SPEC 1.

Anything that depends on the environment at import time runs in a
subprocess, so this process's `rlm_fast` is never disturbed.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import subprocess
import sys
import sysconfig

import pytest

import rlm_fast

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))

try:
    from rlm_fast import _budget_c, _session_c  # noqa: F401
except ImportError:
    COMPILED_BUILT = False
else:
    COMPILED_BUILT = True


def run_python(code: str, *flags: str, **env_changes: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("RLM_FAST_NO_EXTENSIONS", "RLM_FAST_REQUIRE_EXTENSIONS"):
        env.pop(name, None)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONPATH"] = PACKAGE_PARENT + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


WHICH = (
    "import rlm_fast, rlm_fast._session_py as p\n"
    "print(rlm_fast.IMPLEMENTATION)\n"
    "print(rlm_fast.SessionManager is p.SessionManager, rlm_fast.SessionId is p.SessionId)\n"
)


# --------------------------------------------------------------------------
# which core
# --------------------------------------------------------------------------


def test_the_compiled_core_is_in_use_when_built() -> None:
    if os.environ.get("RLM_FAST_NO_EXTENSIONS") == "1":
        assert rlm_fast.IMPLEMENTATION == "python"
    elif COMPILED_BUILT:
        assert rlm_fast.IMPLEMENTATION == "cython"
        assert rlm_fast.SessionManager is _session_c.SessionManager
        assert rlm_fast.SessionId is _session_c.SessionId
        assert rlm_fast.BudgetTracker is _budget_c.BudgetTracker
    else:
        assert rlm_fast.IMPLEMENTATION == "python"


def test_require_extensions_in_ci() -> None:
    # CI sets RLM_FAST_REQUIRE_EXTENSIONS=1: then the compiled core must be here.
    if os.environ.get("RLM_FAST_REQUIRE_EXTENSIONS") == "1":
        assert COMPILED_BUILT
        assert rlm_fast.IMPLEMENTATION == "cython"


def test_default_selection_in_a_subprocess() -> None:
    proc = run_python(WHICH)
    assert proc.returncode == 0, proc.stderr
    expected = "cython\nFalse False\n" if COMPILED_BUILT else "python\nTrue True\n"
    assert proc.stdout == expected


def test_no_extensions_selects_the_twin() -> None:
    proc = run_python(WHICH, RLM_FAST_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "python\nTrue True\n"


def test_no_extensions_0_is_the_default() -> None:
    proc = run_python(WHICH, RLM_FAST_NO_EXTENSIONS="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ("cython" if COMPILED_BUILT else "python")


def test_require_extensions() -> None:
    proc = run_python(WHICH, RLM_FAST_REQUIRE_EXTENSIONS="1")
    if COMPILED_BUILT:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "cython\nFalse False\n"
    else:
        assert proc.returncode != 0
        assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr


@pytest.mark.parametrize("name", ["RLM_FAST_NO_EXTENSIONS", "RLM_FAST_REQUIRE_EXTENSIONS"])
@pytest.mark.parametrize("value", ["yes", "true", "on", "2", "no"])
def test_a_bad_switch_value_makes_import_fail(name, value) -> None:
    proc = run_python("import rlm_fast", **{name: value})
    assert proc.returncode != 0
    assert name in proc.stderr
    assert "Traceback" in proc.stderr


# --------------------------------------------------------------------------
# every module imports cleanly, alone, under -I -W error
# --------------------------------------------------------------------------

MODULES = ["rlm_fast"] + sorted(
    f"rlm_fast.{info.name}"
    for info in pkgutil.iter_modules(rlm_fast.__path__)
    if info.name != "__main__"  # importing it runs the job (python -m rlm_fast)
)


def test_the_module_list_is_complete() -> None:
    for name in ("_selector", "_checks", "_registry", "_session_id_py", "_json", "_results", "_bulk", "_dump", "_session_py", "_budget_py", "errors", "config"):
        assert f"rlm_fast.{name}" in MODULES
    if COMPILED_BUILT:
        assert "rlm_fast._session_c" in MODULES
        assert "rlm_fast._budget_c" in MODULES


# Modules that need an optional extra (pip install 'rlm_fast[redis]').
OPTIONAL_DEPENDENCY = {
    "rlm_fast.redis": "redis",
    "rlm_fast._bench_redis": "redis",
    "rlm_fast.bridge": "aiohttp",
    "rlm_fast._fake_upstream": "aiohttp",
}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("no_ext", ["0", "1"])
def test_every_module_imports_isolated_with_warnings_as_errors(module, no_ext) -> None:
    if module in OPTIONAL_DEPENDENCY and importlib.util.find_spec(OPTIONAL_DEPENDENCY[module]) is None:
        pytest.skip(f"{module} needs {OPTIONAL_DEPENDENCY[module]}, which is not installed")
    code = (
        f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
        f"import importlib; importlib.import_module({module!r})"
    )
    proc = run_python(code, "-I", "-W", "error", RLM_FAST_NO_EXTENSIONS=no_ext)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="not a free-threaded build"
)
def test_import_does_not_reenable_the_gil() -> None:
    proc = run_python(
        "import sys, rlm_fast, rlm_fast._session_py, rlm_fast._budget_py\n"
        "print(rlm_fast.IMPLEMENTATION, sys._is_gil_enabled())",
        "-W",
        "error::RuntimeWarning",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "False"


# --------------------------------------------------------------------------
# public names (SPEC 1)
# --------------------------------------------------------------------------

PUBLIC = [
    "SessionManager",
    "BudgetTracker",
    "SessionId",
    "SessionState",
    "SessionInfo",
    "BudgetStatus",
    "SessionStats",
    "RlmConfig",
    "KgStrictness",
    "BackendType",
    "SessionModel",
    "BackendSessionConfig",
    "RlmError",
    "__version__",
    "IMPLEMENTATION",
    "DEFAULT_TOKEN_BUDGET",
    "DEFAULT_TIME_BUDGET_MS",
    "DEFAULT_MAX_RECURSION_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS_PER_SESSION",
]

ERRORS = [
    "SessionNotFound", "SessionExpired", "InvalidSessionState", "MaxExtensionsReached",
    "TokenBudgetExceeded", "TimeBudgetExceeded", "RecursionDepthExceeded",
    "ExecutionFailed", "CommandParseFailed", "ExecutionTimeout", "VmCrashed",
    "KgValidationFailed", "KgEscalationRequired", "SnapshotNotFound",
    "MaxSnapshotsReached", "SnapshotCreationFailed", "SnapshotRestoreFailed",
    "NoBackendAvailable", "BackendInitFailed", "PoolExhausted", "VmAllocationTimeout",
    "DnsBlocked", "NetworkBlocked", "LlmCallFailed", "LlmBridgeAuthFailed",
    "InvalidSessionToken", "BatchSizeTooLarge", "OutputTooLarge",
    "AutoRemediationFailed", "AlertWebhookFailed", "ConfigError", "NotSupported",
    "Internal", "Cancelled", "Io", "Serialization",
]  # fmt: skip


@pytest.mark.parametrize("name", PUBLIC + ERRORS)
def test_public_name_exists(name) -> None:
    assert hasattr(rlm_fast, name)
    assert name in rlm_fast.__all__


def test_crate_constants() -> None:
    assert rlm_fast.DEFAULT_TOKEN_BUDGET == 100_000
    assert rlm_fast.DEFAULT_TIME_BUDGET_MS == 300_000
    assert rlm_fast.DEFAULT_MAX_RECURSION_DEPTH == 10
    assert rlm_fast.DEFAULT_MAX_SNAPSHOTS_PER_SESSION == 10
    assert isinstance(rlm_fast.__version__, str) and rlm_fast.__version__
    assert rlm_fast.IMPLEMENTATION in ("cython", "python")


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_is_an_rlm_error(name) -> None:
    cls = getattr(rlm_fast, name)
    assert isinstance(cls, type)
    assert issubclass(cls, rlm_fast.RlmError)
    assert issubclass(rlm_fast.RlmError, Exception)


def test_everything_in_all_exists() -> None:
    for name in rlm_fast.__all__:
        assert hasattr(rlm_fast, name), name


def test_public_types_name_the_public_module() -> None:
    # The Python-defined classes say so; the compiled result classes are
    # rlm_fast._session_c's, but their pickles name rlm_fast (next test).
    assert rlm_fast.SessionState.__module__ == "rlm_fast"
    from rlm_fast import _results

    for name in ("SessionInfo", "BudgetStatus", "SessionStats"):
        assert getattr(_results, name).__module__ == "rlm_fast", name


def test_result_pickles_name_the_public_path(core) -> None:
    import pickle

    m = core.SessionManager()
    sid = m.create_session().id
    m.set_context_variable(sid, "k", "v")
    for value in (m.get_session(sid), m.check_budget(sid), m.get_stats()):
        assert type(value) is getattr(core, type(value).__name__)
        data = pickle.dumps(value)
        assert b"rlm_fast" in data
        for private in (b"_session_c", b"_session_py", b"_results", b"_registry"):
            assert private not in data, (type(value).__name__, private)
        again = pickle.loads(data)
        assert again == value
        assert type(again) is getattr(rlm_fast, type(value).__name__)
