#!/usr/bin/env bash
# The Redis part of CI. `.ci/redis.sh --install`: make sure redis-server
# (7.0+) is here, installing it with apt-get when missing. `.ci/redis.sh`:
# that, then the Redis tests (conformance suite against Redis, multi-process,
# faults, cluster) in the active venv, where rlm_fast[test,redis] is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "redis-server is missing and apt-get is not available" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq redis-server >/dev/null
fi
major=$(redis-server --version | sed -n 's/.* v=\([0-9][0-9]*\)\..*/\1/p')
if [ "${major:-0}" -lt 7 ]; then
    echo "need Redis 7.0 or newer, have: $(redis-server --version)" >&2
    exit 1
fi
echo "$(redis-server --version | cut -d' ' -f1-3)"
if [ "${1:-}" = "--install" ]; then
    exit 0
fi

python -c "import redis" 2>/dev/null || pip install -q "redis>=5"
# A missing piece is an error here, never a silent skip.
export RLM_FAST_REQUIRE_REDIS=1
python -m pytest -q -p no:cacheprovider -k redis tests/
