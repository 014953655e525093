"""The cimport-able C API (`rlm_fast/_session_c.pxd`): a small extension that
uses it from `with nogil:` blocks is built here and driven from threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rlm_fast

pytest.importorskip("Cython", reason="building the C API user needs Cython")
from conftest import C  # noqa: E402

pytestmark = pytest.mark.skipif(C is None, reason="compiled core not built")

# RlmStatus values (src/rlm_fast/_session_c.h)
OK, NOT_FOUND, TERMINATED, EXPIRED = 0, 1, 2, 3
U64_OVERFLOW, TOKENS_OVER = 8, 9
NO_VM, BUFFER_TOO_SMALL = 14, 15

SETUP = """
from setuptools import Extension, setup
from Cython.Build import cythonize
import rlm_fast
setup(
    name="capi_user",
    ext_modules=cythonize(
        [Extension("capi_user", ["capi_user.pyx"], language="c++",
                   include_dirs=[rlm_fast.get_include()],
                   extra_compile_args=["-std=c++17"] if __import__("os").name != "nt" else [])],
        quiet=True,
    ),
)
"""


@pytest.fixture(scope="module")
def capi(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    build = tmp_path_factory.mktemp("capi")
    shutil.copy(Path(__file__).parent / "capi" / "capi_user.pyx", build)
    (build / "setup.py").write_text(SETUP)
    env = dict(os.environ)
    # The .pxd is found through sys.path: make it the one being tested.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(rlm_fast.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=build, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(build))
    try:
        import capi_user  # type: ignore[import-not-found]

        yield capi_user
    finally:
        sys.path.remove(str(build))


def test_get_include_holds_the_header_and_pxd() -> None:
    inc = Path(rlm_fast.get_include())
    assert (inc / "_session_c.h").is_file()
    assert (inc / "_session_c.pxd").is_file()


def test_statuses_match_the_python_api(capi) -> None:  # type: ignore[no-untyped-def]
    from conftest import FakeClock

    clock = FakeClock()
    m = C.SessionManager(rlm_fast.RlmConfig(session_duration_secs=60), clock=clock)
    sid = m.create_session().id
    assert capi.status(m, sid.bytes, clock.now) == OK
    assert capi.status(m, C.SessionId().bytes, clock.now) == NOT_FOUND
    assert capi.status(m, sid.bytes, clock.now + 61 * 10**9) == EXPIRED
    m.update_session_state(sid, "Terminated")
    assert capi.status(m, sid.bytes, clock.now) == TERMINATED
    assert m.is_session_valid(sid) is False


def test_vm_lookup(capi) -> None:  # type: ignore[no-untyped-def]
    m = C.SessionManager()
    sid = m.create_session().id
    assert capi.vm_of(m, sid.bytes, 64) == (NO_VM, 0)
    m.assign_vm(sid, "vm-ünïcode-17")
    assert capi.vm_of(m, sid.bytes, 64) == (OK, "vm-ünïcode-17")
    assert capi.vm_of(m, sid.bytes, 4) == (BUFFER_TOO_SMALL, len("vm-ünïcode-17".encode()))
    assert capi.vm_of(m, C.SessionId().bytes, 64) == (NOT_FOUND, 0)


def test_threads_in_nogil_blocks_keep_totals_exact(capi) -> None:  # type: ignore[no-untyped-def]
    config = rlm_fast.RlmConfig(token_budget=10**12, time_budget_ms=10**12, max_recursion_depth=8)
    m = C.SessionManager(config)
    shared = m.create_session().id
    threads, rounds = 8, 20_000
    results: list[dict[str, int]] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        results.append(capi.hot_loop(m, shared.bytes, rounds, 3))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a C API caller deadlocked"
    assert sum(r["valid"] for r in results) == threads * rounds
    assert sum(r["too_deep"] for r in results) == 0  # 8 threads, max depth 8
    charged = sum(r["charged"] for r in results)
    assert charged == threads * rounds
    info = m.get_session(shared)
    assert info.budget_status.tokens_used == 3 * charged
    assert info.budget_status.time_used_ms == charged
    assert info.recursion_depth == 0


def test_depth_never_passes_the_maximum_under_threads(capi) -> None:  # type: ignore[no-untyped-def]
    m = C.SessionManager(rlm_fast.RlmConfig(max_recursion_depth=2))
    sid = m.create_session().id
    results: list[dict[str, int]] = []
    pool = [
        threading.Thread(target=lambda: results.append(capi.hot_loop(m, sid.bytes, 5_000, 0)))
        for _ in range(6)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    done = sum(r["charged"] + r["too_deep"] for r in results)
    assert done == 6 * 5_000
    assert m.get_session(sid).recursion_depth == 0


def test_the_c_api_leaves_the_global_namespace_alone(capi) -> None:  # type: ignore[no-untyped-def]
    # capi_user defines its own global Table, Session and Config: it only
    # compiled because the header keeps its own in namespace rlm_fast.
    assert capi.own_names() == 7


def test_charges_roll_up_through_the_c_api(capi) -> None:  # type: ignore[no-untyped-def]
    from conftest import FakeClock

    clock = FakeClock()
    m = C.SessionManager(rlm_fast.RlmConfig(token_budget=100, session_duration_secs=60), clock=clock)
    root = m.create_session().id
    kid = m.create_child_session(root, token_budget=50).id
    grand = m.create_child_session(kid, token_budget=40).id
    assert capi.charge(m, grand.bytes, clock.now, 30) == (OK, 30)
    assert [m.get_session(s).budget_status.tokens_used for s in (root, kid, grand)] == [30, 30, 30]
    # Past the kid's and the grandchild's budgets: the one nearest the root
    # is reported, and the charge stays on the whole path.
    assert capi.charge(m, grand.bytes, clock.now, 25) == (TOKENS_OVER, 55)
    assert [m.get_session(s).budget_status.tokens_used for s in (root, kid, grand)] == [55, 55, 55]
    # Past 2**64-1 anywhere on the path: nothing recorded.
    m.update_budget(root, m.get_session(root).budget_status.replace(tokens_used=2**64 - 10))
    assert capi.charge(m, grand.bytes, clock.now, 20)[0] == U64_OVERFLOW
    assert [m.get_session(s).budget_status.tokens_used for s in (kid, grand)] == [55, 55]
    # Validity flows down.
    m.update_session_state(root, "Terminated")
    assert capi.status(m, grand.bytes, clock.now) == TERMINATED
    assert capi.charge(m, grand.bytes, clock.now, 1)[0] == TERMINATED


def test_c_api_refusals_count_like_the_python_api(capi) -> None:  # type: ignore[no-untyped-def]
    # A refusal status returned by the C API counts in SessionStats'
    # rejected_* counter of the error the Python method would raise
    # (docs/lifecycle.md); other statuses, and the VM lookup, count nowhere.
    from conftest import FakeClock

    clock = FakeClock()
    m = C.SessionManager(rlm_fast.RlmConfig(token_budget=100, session_duration_secs=60), clock=clock)
    sid = m.create_session().id
    assert capi.status(m, sid.bytes, clock.now) == OK
    assert capi.charge(m, sid.bytes, clock.now, 10) == (OK, 10)
    assert capi.vm_of(m, C.SessionId().bytes, 16)[0] == NOT_FOUND
    zero = m.get_stats()
    assert (zero.rejected_not_found, zero.rejected_tokens, zero.rejected_expired) == (0, 0, 0)
    assert capi.status(m, C.SessionId().bytes, clock.now) == NOT_FOUND
    assert capi.charge(m, C.SessionId().bytes, clock.now, 1)[0] == NOT_FOUND
    assert capi.charge(m, sid.bytes, clock.now, 100) == (TOKENS_OVER, 110)
    m.update_budget(sid, m.get_session(sid).budget_status.replace(tokens_used=2**64 - 1))
    assert capi.charge(m, sid.bytes, clock.now, 1)[0] == U64_OVERFLOW  # a ValueError: not counted
    assert capi.status(m, sid.bytes, clock.now + 61 * 10**9) == EXPIRED
    stats = m.get_stats()
    assert (stats.rejected_not_found, stats.rejected_tokens, stats.rejected_expired) == (2, 1, 1)
    assert (stats.rejected_invalid_token, stats.rejected_terminated) == (0, 0)
    assert (stats.rejected_time, stats.rejected_depth) == (0, 0)
