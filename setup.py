"""Build the compiled core (Cython -> C++) unless told not to.

Switches (environment, at build time):
  RLM_FAST_NO_EXTENSIONS=1  build no extension: a pure-Python package
  RLM_FAST_DEBUG=1          -O0 -g, asserts on, Cython's own checks on, and the
                            table's invariants checked after every change
                            (RLM_FAST_DEBUG macro: src/rlm_fast/_c/debug.h)
  RLM_FAST_TRACE=1          Cython line tracing (coverage of the .pyx)
"""

from __future__ import annotations

import glob
import importlib.util
import os

from setuptools import Extension, setup


def _load_selector():  # type: ignore[no-untyped-def]
    # One parser for the RLM_FAST_* flags, loaded by path: importing the
    # package itself would try to load the extension being built.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "rlm_fast", "_selector.py")
    spec = importlib.util.spec_from_file_location("_rlm_fast_selector", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env_flag = _load_selector().env_flag


def extensions() -> list[Extension]:
    if env_flag("RLM_FAST_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    debug = env_flag("RLM_FAST_DEBUG")
    trace = env_flag("RLM_FAST_TRACE")
    macros: list[tuple[str, str | None]] = []
    directives: dict[str, object] = {"language_level": 3}
    if debug:  # the table's invariant checks (src/rlm_fast/_c/debug.h)
        macros.append(("RLM_FAST_DEBUG", "1"))
    if os.name == "nt":
        compile_args = ["/std:c++17"]
        if debug:
            compile_args += ["/Od", "/Zi"]
    else:
        compile_args = ["-std=c++17", "-Wall", "-Wno-unused-function"]
        if debug:
            compile_args += ["-O0", "-g3", "-UNDEBUG"]
        if env_flag("RLM_FAST_WERROR"):
            compile_args.append("-Werror")
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    if trace:
        directives.update(linetrace=True)
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    # The C++ core's headers: a change to one rebuilds what includes them.
    headers = ["src/rlm_fast/_session_c.h", *sorted(glob.glob("src/rlm_fast/_c/*.h"))]
    exts = [
        Extension(
            f"rlm_fast.{name}",
            [f"src/rlm_fast/{name}.pyx"],
            include_dirs=["src/rlm_fast"],
            depends=headers,
            language="c++",
            extra_compile_args=compile_args,
            define_macros=macros,
            libraries=["bcrypt"] if os.name == "nt" else [],  # BCryptGenRandom
            undef_macros=["NDEBUG"] if debug else [],
        )
        for name in ("_session_c", "_budget_c")
    ]
    return cythonize(exts, compiler_directives=directives)


setup(ext_modules=extensions())
