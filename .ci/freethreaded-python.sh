#!/usr/bin/env bash
# Build a free-threaded CPython 3.13 (--disable-gil) from Debian's source
# package, once, cached outside the clone. Prints the interpreter's path.
# Only the source package comes from trixie: no trixie binary is installed
# (it would upgrade libc), and the extra apt source is removed afterwards.
set -euo pipefail
cache="${RLM_FAST_CACHE:-$HOME/.cache/rlm_fast}"
mkdir -p "$cache"
exec 9>"$cache/freethreaded.lock"
flock 9  # one build at a time

existing=$(ls -d "$cache"/cpython-3.13*t/bin/python3.13t 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ] && "$existing" -c 'import sys; sys.exit(sys._is_gil_enabled())' 2>/dev/null; then
    echo "$existing"
    exit 0
fi

log="$cache/freethreaded-build.log"
src_list=/etc/apt/sources.list.d/rlm-fast-trixie-src.list
work=$(mktemp -d)
cleanup() { rm -f "$src_list"; rm -rf "$work"; apt-get update -qq >/dev/null 2>&1 || true; }
trap cleanup EXIT
{
    echo "deb-src http://deb.debian.org/debian trixie main" > "$src_list"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq build-essential libssl-dev zlib1g-dev libffi-dev \
        libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev \
        uuid-dev libgdbm-dev libexpat1-dev dpkg-dev
    cd "$work"
    apt-get source --download-only python3.13/trixie
    tarball=$(ls python3.13_*.orig.tar.* | head -n 1)
    version=${tarball#python3.13_}
    version=${version%%.orig.tar.*}
    tar xf "$tarball"
    srcdir=$(find . -maxdepth 1 -type d -name 'Python-3.13*' | head -n 1)
    prefix="$cache/cpython-${version}t"
    cd "$srcdir"
    ./configure --disable-gil --prefix="$prefix" --without-ensurepip >/dev/null
    make -j"$(nproc)" >/dev/null
    make install >/dev/null
    "$prefix/bin/python3.13t" -m ensurepip >/dev/null
} >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
ls -d "$cache"/cpython-3.13*t/bin/python3.13t | head -n 1
