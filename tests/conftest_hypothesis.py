"""Hypothesis settings profiles for the reliability tests, and `figure()`,
which records the figures those tests report (docs/reliability.md).

"ci" (the default): a few hundred examples per state machine, enough to run
on every CI job in well under a minute, derandomized (the same examples on
every run, so a new user's first run of the README's test command can never
fail on a randomly drawn case). "random": the same sizes with fresh random
examples (.ci/run runs it once, nightly-style). "long": many more, random,
for local runs.

Select one with ``pytest --hypothesis-profile=long`` (that option is read
when pytest configures itself, so these profiles must be registered first:
``tests/conftest.py`` imports this module) or with the environment variable
``RLM_FAST_HYPOTHESIS_PROFILE=long``, which works even without that import.

Hypothesis may not be installed (e.g. on a free-threaded CPython where it
has no build): then this module registers nothing and the tests that need
Hypothesis skip through ``pytest.importorskip``.
"""

from __future__ import annotations

import json
import os
import sys

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - the tests skip
    settings = None  # type: ignore[assignment]

PROFILES = ("ci", "random", "long")

if settings is not None:
    _common: dict[str, object] = {
        "deadline": None,  # a shared 2-core machine: timings are not the point
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
        "print_blob": True,  # a failure prints the blob that reproduces it
    }
    # Every profile names its own randomness and database: Hypothesis derives
    # a new profile from the one loaded at that moment, and it loads its own
    # derandomized "ci" profile by itself when the CI variable is set.
    settings.register_profile(
        "ci", max_examples=250, stateful_step_count=80, derandomize=True, database=None, **_common
    )
    settings.register_profile(
        "random", max_examples=250, stateful_step_count=80, derandomize=False, **_common
    )
    settings.register_profile(
        "long", max_examples=5000, stateful_step_count=150, derandomize=False, **_common
    )
    _wanted = os.environ.get("RLM_FAST_HYPOTHESIS_PROFILE", "")
    if _wanted:
        if _wanted not in PROFILES:
            raise ValueError(
                f"RLM_FAST_HYPOTHESIS_PROFILE={_wanted!r}: expected one of {PROFILES}"
            )
        settings.load_profile(_wanted)
    elif settings.get_current_profile_name() == "default":
        # Only when nobody chose: --hypothesis-profile (read after this
        # import when conftest.py imports us) wins over this default.
        settings.load_profile("ci")


def figure(name: str, value: object, **details: object) -> None:
    """Report one reliability figure: print it, and append it as a JSON line
    to the file named by RLM_FAST_FIGURES when that is set (CI collects the
    figures of one run there for the README)."""
    record = {
        "figure": name,
        "value": value,
        **details,
        "python": sys.version.split()[0],
        "gil": getattr(sys, "_is_gil_enabled", lambda: True)(),
    }
    print(f"\nFIGURE {json.dumps(record, sort_keys=True)}")
    path = os.environ.get("RLM_FAST_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
