"""Parser fuzzing: `SessionId.from_string` / `from_bytes` / `from_int` and
`RlmConfig` validation get arbitrary input, on both cores.

Every call returns, or raises `RlmError` / `TypeError` / `ValueError` (the
documented errors); it never crashes the interpreter and never raises
anything else. The two cores must agree, with an independent oracle for the
parsers (written here from SPEC 2 and 10, not from either core).

Two layers:
- Hypothesis property tests (skipped where Hypothesis is not installed, e.g.
  a free-threaded CPython without a build of it), which shrink a failure;
- a seeded random corpus run in a subprocess for each core, so a crash in
  the compiled parser is a failed test, not the end of the run. Its size is
  RLM_FAST_FUZZ_N (default 20,000 inputs per kind).
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from dataclasses import fields

import pytest
from conftest import PY, C

import rlm_fast
from rlm_fast import (
    BackendSessionConfig,
    BackendType,
    ConfigError,
    InvalidSessionToken,
    KgStrictness,
    RlmConfig,
    RlmError,
    SessionModel,
)

try:
    import conftest_hypothesis  # noqa: F401  (registers the profiles)
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the property tests skip
    given = None  # type: ignore[assignment]

CORES = [pytest.param(PY, id="python")]
if C is not None:
    CORES.append(pytest.param(C, id="cython"))

ALLOWED = (RlmError, TypeError, ValueError)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
U128_MAX = 2**128 - 1
HUGE = 10**5000


class StrSub(str):
    pass


class IntSub(int):
    pass


# --------------------------------------------------------------------------
# the oracle (SPEC 2 and 10, independent of both cores)
# --------------------------------------------------------------------------


def oracle_from_string(s: object) -> int | type[BaseException]:
    if not isinstance(s, str):
        return TypeError
    if len(s) != 26:
        return InvalidSessionToken
    value = 0
    for i, ch in enumerate(s):
        digit = CROCKFORD.find(ch.upper()) if ch.isascii() else -1
        if digit < 0 or (i == 0 and digit > 7):
            return InvalidSessionToken
        value = value * 32 + digit
    return value


def oracle_from_bytes(b: object) -> int | type[BaseException]:
    if not isinstance(b, (bytes, bytearray, memoryview)):
        return TypeError
    raw = bytes(b)
    return int.from_bytes(raw, "big") if len(raw) == 16 else ValueError


def oracle_from_int(v: object) -> int | type[BaseException]:
    if isinstance(v, bool) or not isinstance(v, int):
        return TypeError
    return int(v) if 0 <= v <= U128_MAX else ValueError


def outcome(call, *args):  # type: ignore[no-untyped-def]
    """("ok", value) or ("raise", type, message); anything but the allowed
    exceptions fails the test."""
    try:
        return ("ok", call(*args))
    except ALLOWED as exc:
        return ("raise", type(exc), str(exc))


def check_parse(core, method: str, arg: object, oracle) -> None:  # type: ignore[no-untyped-def]
    expected = oracle(arg)
    got = outcome(getattr(core.SessionId, method), arg)
    if isinstance(expected, int):
        assert got[0] == "ok", f"{core.name}.{method}({arg!r:.80}) refused: {got}"
        sid = got[1]
        assert type(sid) is core.SessionId
        assert int(sid) == expected
        assert str(sid) == "".join(CROCKFORD[(expected >> (5 * i)) & 31] for i in range(25, -1, -1))
        assert sid.bytes == expected.to_bytes(16, "big")
        assert sid.timestamp_ms == expected >> 80
        assert core.SessionId.from_string(str(sid)) == sid
        assert core.SessionId.from_bytes(sid.bytes) == sid
        assert core.SessionId.from_int(int(sid)) == sid
        assert hash(sid) == hash(expected)
    else:
        assert got[0] == "raise", f"{core.name}.{method}({arg!r:.80}) accepted: {got}"
        assert issubclass(got[1], expected), f"{core.name}.{method}({arg!r:.80}): {got}"
        if expected is InvalidSessionToken:
            # 64 characters at most, each escaped to at most 10 ("\U0001f600").
            assert len(got[2]) <= len("Invalid session token: ") + 64 * 10 + 1, got[2][:200]


def check_datetime(sid) -> object:  # type: ignore[no-untyped-def]
    """`.datetime` of any id: the aware UTC datetime of its millisecond
    timestamp, or OverflowError beyond year 9999 (as datetime itself)."""
    import datetime as dt

    ms = sid.timestamp_ms
    try:
        expected = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)
    except OverflowError:
        with pytest.raises(OverflowError):
            _ = sid.datetime
        return None
    assert sid.datetime == expected, f"{sid!r}.datetime for {ms} ms"
    return expected


# --------------------------------------------------------------------------
# fixed cases every run sees (no Hypothesis needed)
# --------------------------------------------------------------------------

FIXED_STRINGS = [
    "",
    "0" * 26,
    "7" + "Z" * 25,
    "8" + "0" * 25,
    "7" + "z" * 25,
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "01arz3ndektsv4rrffq69g5fav",
    "01ARZ3NDEKTSV4RRFFQ69G5FA\x00",
    "01ARZ3NDEKTSV4RRFFQ69G5FA\ud800",
    "01ARZ3NDEKTSV4RRFFQ69G5FA\u212a",  # KELVIN SIGN folds to "k" in Unicode
    "01ARZ3NDEKTSV4RRFFQ69G5FA\u0131",
    "\uff10" * 26,  # fullwidth zeros: str.isdigit() but not ASCII
    "\u0660" * 26,  # Arabic-Indic zeros: int() would accept them
    "0" * 25 + "\U0001f600",
    "I" * 26,
    "L" * 26,
    "O" * 26,
    "U" * 26,
    " " + "0" * 25,
    "0" * 25 + "\n",
    "0" * 10**6,
    "\x00" * 10**6,
    "\ud800" * 10**5,
    StrSub("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
    StrSub("nope"),
    b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
    None,
    26,
    ["0" * 26],
]
FIXED_BYTES = [b"", b"\x00" * 15, b"\x00" * 16, b"\xff" * 16, b"\xff" * 17, bytearray(16),
               memoryview(b"\x01" * 32)[::2], memoryview(b"\x02" * 16).cast("I"), "0" * 16,
               [0] * 16, None, 16, b"\x00" * 10**6]
FIXED_INTS = [0, 1, U128_MAX, U128_MAX + 1, -1, -(2**200), 2**200, HUGE, -HUGE, True, False,
              1.0, float("nan"), "0", None, IntSub(5), IntSub(-5)]


@pytest.mark.parametrize("core", CORES)
def test_fixed_strings(core) -> None:
    for s in FIXED_STRINGS:
        check_parse(core, "from_string", s, oracle_from_string)


@pytest.mark.parametrize("core", CORES)
def test_fixed_bytes(core) -> None:
    for b in FIXED_BYTES:
        check_parse(core, "from_bytes", b, oracle_from_bytes)
    released = memoryview(b"\x00" * 16)
    released.release()
    assert outcome(core.SessionId.from_bytes, released)[0] == "raise"


@pytest.mark.parametrize("core", CORES)
def test_fixed_ints(core) -> None:
    for v in FIXED_INTS:
        check_parse(core, "from_int", v, oracle_from_int)


@pytest.mark.parametrize("core", CORES)
def test_str_subclass_is_a_string(core) -> None:
    # SPEC 10: from_string raises TypeError only for a non-string; a str
    # subclass is a string, read for its value.
    sid = core.SessionId.from_string(StrSub("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    assert str(sid) == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    with pytest.raises(InvalidSessionToken):
        core.SessionId.from_string(StrSub("nope"))


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize(
    "ms",
    [0, 1, 1_767_225_600_000, 253_402_300_799_999, 253_402_300_800_000,
     2**64 // 10**6, 2**64 // 10**6 + 1, 2**48 - 1],
)
def test_datetime_of_any_timestamp(core, ms) -> None:
    # Far-future ids are well formed (from_string accepts them): their
    # datetime is exact, or OverflowError past year 9999 - never wrapped.
    check_datetime(core.SessionId.from_int(ms << 80 | 12345))


# --------------------------------------------------------------------------
# Hypothesis properties
# --------------------------------------------------------------------------

if given is not None:
    ANY_CHAR_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
    NEAR_VALID = st.text(
        st.sampled_from(CROCKFORD + CROCKFORD.lower() + "89ILOUilou-_ \x00\u212a\ud800é"),
        min_size=24,
        max_size=28,
    )
    VALID = st.tuples(st.integers(0, U128_MAX), st.randoms()).map(
        lambda t: "".join(
            c.lower() if t[1].random() < 0.5 else c
            for c in "".join(CROCKFORD[(t[0] >> (5 * i)) & 31] for i in range(25, -1, -1))
        )
    )
    CODECS = ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "latin-1", "cp1252", "ascii",
              "mac_roman", "utf-7", "shift_jis", "big5"]
    ERRORS = ["surrogateescape", "surrogatepass", "replace", "ignore", "backslashreplace"]

    def decode_every_way(raw: bytes, codec: str, errors: str) -> str | None:
        try:
            return codecs.decode(raw, codec, errors)
        except (UnicodeError, LookupError):
            return None  # that handler cannot decode with that codec

    DECODED = st.builds(decode_every_way, st.binary(max_size=64), st.sampled_from(CODECS),
                        st.sampled_from(ERRORS)).filter(lambda s: s is not None)
    STRINGS = st.one_of(ANY_CHAR_TEXT, NEAR_VALID, VALID, DECODED, VALID.map(StrSub),
                        st.integers(0, 3).map(lambda n: "0" * (26 * 10**n)))

    @pytest.mark.parametrize("core", CORES)
    @given(s=STRINGS)
    def test_from_string_any_text(core, s) -> None:
        check_parse(core, "from_string", s, oracle_from_string)

    @given(s=STRINGS)
    def test_from_string_both_cores_agree(s) -> None:
        if C is None:
            pytest.skip("compiled core not built")
        py, c = outcome(PY.SessionId.from_string, s), outcome(C.SessionId.from_string, s)
        if py[0] == "ok":
            assert c[0] == "ok" and int(py[1]) == int(c[1]) and str(py[1]) == str(c[1])
            assert py[1] == c[1]  # ids of the two cores compare equal
        else:
            assert py == c

    BYTES_LIKE = st.one_of(
        st.binary(max_size=40),
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=40).map(bytearray),
        st.binary(min_size=16, max_size=16).map(memoryview),
        st.binary(min_size=32, max_size=32).map(lambda b: memoryview(b)[::2]),
        st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers(0, 255))),
    )

    @pytest.mark.parametrize("core", CORES)
    @given(b=BYTES_LIKE)
    def test_from_bytes_anything(core, b) -> None:
        check_parse(core, "from_bytes", b, oracle_from_bytes)

    INTS = st.one_of(
        st.integers(0, U128_MAX),
        st.integers(-(2**140), 2**140),
        st.sampled_from([U128_MAX, U128_MAX + 1, -1, 0, HUGE, -HUGE]),
        st.integers(0, U128_MAX).map(IntSub),
        st.one_of(st.booleans(), st.floats(), st.text(max_size=5), st.none()),
    )

    @pytest.mark.parametrize("core", CORES)
    @given(v=INTS)
    def test_from_int_anything(core, v) -> None:
        check_parse(core, "from_int", v, oracle_from_int)

    @pytest.mark.parametrize("core", CORES)
    @given(v=st.integers(0, U128_MAX))
    def test_datetime_of_any_id(core, v) -> None:
        check_datetime(core.SessionId.from_int(v))

    # -- RlmConfig ---------------------------------------------------------------

    ANYTHING = st.deferred(
        lambda: st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**70), 2**70),
            st.sampled_from([0, 1, 2**64 - 1, 2**64, 9_223_372_036, 9_223_372_037, -1, HUGE]),
            st.floats(),
            st.text(max_size=10),
            st.binary(max_size=5),
            st.sampled_from(list(BackendType) + list(KgStrictness) + list(SessionModel)),
            st.builds(BackendSessionConfig, st.sampled_from(list(BackendType)),
                      st.sampled_from(list(SessionModel))),
            st.builds(BackendSessionConfig, ANYTHING, ANYTHING),
            st.lists(ANYTHING, max_size=3),
            st.dictionaries(st.text(max_size=3), ANYTHING, max_size=2),
        )
    )
    FIELD_NAMES = [f.name for f in fields(RlmConfig)]

    @given(changes=st.dictionaries(st.sampled_from(FIELD_NAMES), ANYTHING, max_size=4))
    def test_config_validate_with_anything(changes) -> None:
        config = RlmConfig(**changes)
        try:
            config.validate()
        except ConfigError:
            for core in (PY, C) if C is not None else (PY,):
                with pytest.raises(ConfigError):
                    core.SessionManager(config)
            return
        # Valid: both cores run with it.
        for core in (PY, C) if C is not None else (PY,):
            m = core.SessionManager(config)
            try:
                m.create_session()
            except ConfigError:
                pass  # expiry would pass int64: refused, nothing created
            assert m.get_stats().active_sessions == len(m)
        assert RlmConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        repr(config)

    @given(data=st.dictionaries(
        st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=5)), ANYTHING, max_size=5))
    def test_config_from_dict_with_anything(data) -> None:
        try:
            config = RlmConfig.from_dict(data)
        except (ConfigError, TypeError):
            return
        config.validate()

    @given(backend=ANYTHING)
    def test_session_model_for_backend_with_anything(backend) -> None:
        try:
            RlmConfig().session_model_for_backend(backend)
        except ALLOWED:
            pass

else:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_property_tests_need_hypothesis() -> None:
        pass


# --------------------------------------------------------------------------
# a seeded corpus in a subprocess: a crash is a failed test
# --------------------------------------------------------------------------

_CORPUS = r'''
import codecs, importlib, random, sys
from dataclasses import fields
from rlm_fast import RlmConfig, RlmError, ConfigError
core = importlib.import_module(sys.argv[1])
n, seed = int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
ALLOWED = (RlmError, TypeError, ValueError)
CODECS = ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "latin-1", "cp1252", "utf-7"]
ERRORS = ["surrogateescape", "surrogatepass", "replace", "ignore", "backslashreplace"]
CROCK = "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz"
names = [f.name for f in fields(RlmConfig)]
counts = {"strings": 0, "bytes": 0, "ints": 0, "configs": 0, "accepted": 0}

def rand_text():
    k = rng.random()
    if k < 0.3:
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(80)))
        try:
            return codecs.decode(raw, rng.choice(CODECS), rng.choice(ERRORS))
        except UnicodeError:
            return ""
    if k < 0.6:
        return "".join(rng.choice(CROCK + "ILOU8\x00\u212a") for _ in range(rng.choice([25, 26, 26, 27])))
    if k < 0.9:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(40)))
    return rng.choice(["0", "\x00", "\ud800", "Z"]) * rng.choice([26, 10**3, 10**5])

def anything():
    return rng.choice([None, True, -1, 2**64, 10**30, 1.5, "x", b"x", [], [1], ["a"], {}, 3, 0])

for i in range(n):
    s = rand_text()
    try:
        core.SessionId.from_string(s)
        counts["accepted"] += 1
    except ALLOWED:
        pass
    counts["strings"] += 1
    b = bytes(rng.getrandbits(8) for _ in range(rng.choice([15, 16, 16, 17, rng.randrange(40)])))
    for arg in (b, bytearray(b), memoryview(b)):
        try:
            sid = core.SessionId.from_bytes(arg)
            str(sid); sid.bytes; int(sid); hash(sid)
            try:
                sid.datetime
            except OverflowError:
                pass
        except ALLOWED:
            pass
    counts["bytes"] += 1
    v = rng.choice([rng.getrandbits(rng.randrange(1, 200)), -rng.getrandbits(100), 2**128, 2**128 - 1])
    try:
        core.SessionId.from_int(v)
    except ALLOWED:
        pass
    counts["ints"] += 1
    if i % 10 == 0:
        config = RlmConfig(**{rng.choice(names): anything() for _ in range(rng.randrange(3))})
        try:
            config.validate()
        except ConfigError:
            pass
        counts["configs"] += 1
print(counts)
'''


@pytest.mark.parametrize("module", ["rlm_fast._session_py", "rlm_fast._session_c"])
def test_corpus_in_a_subprocess(module) -> None:
    if module.endswith("_c") and C is None:
        pytest.skip("compiled core not built")
    n = int(os.environ.get("RLM_FAST_FUZZ_N", "20000"))
    if module.endswith("_py"):
        n = max(1, n // 4)  # the twin is the slow one; the compiled parser is the crash risk
    parent = os.path.dirname(os.path.dirname(os.path.abspath(rlm_fast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints its stack
    proc = subprocess.run(
        [sys.executable, "-c", _CORPUS, module, str(n), "20260101"],
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (
        f"{module}: exit {proc.returncode} (a negative number is a signal: a crash)\n"
        f"{proc.stderr[-4000:]}"
    )
    assert "'strings': " + str(n) in proc.stdout, proc.stdout
