"""SessionId: a ULID (48-bit ms timestamp + 80 random bits), on both cores.

The expected strings come from a tiny reference Crockford base32 encoder
written here, independent of either core.
"""

from __future__ import annotations

import copy
import datetime as dt
import pickle
import threading
import time

import pytest

import rlm_fast
from rlm_fast import InvalidSessionToken

pytestmark = pytest.mark.in_process("SessionId is the in-process cores' type; the Redis manager uses rlm_fast.SessionId")

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I L O U
RANDOM_MASK = (1 << 80) - 1
U128_MAX = 2**128 - 1


def ref_encode(n: int) -> str:
    """Reference: 128-bit int -> 26 Crockford base32 characters (5 bits each)."""
    assert 0 <= n <= U128_MAX
    chars = []
    for _ in range(26):
        chars.append(ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(chars))


def test_reference_encoder_itself() -> None:
    assert ref_encode(0) == "0" * 26
    assert ref_encode(31) == "0" * 25 + "Z"
    assert ref_encode(32) == "0" * 24 + "10"
    assert ref_encode(U128_MAX) == "7" + "Z" * 25


# --------------------------------------------------------------------------
# new ids
# --------------------------------------------------------------------------


def test_new_id_shape(core) -> None:
    before_ms = time.time_ns() // 10**6
    sid = core.SessionId()
    after_ms = time.time_ns() // 10**6
    text = str(sid)
    assert type(text) is str
    assert len(text) == 26
    assert set(text) <= set(ALPHABET)
    assert text[0] <= "7"
    assert text == ref_encode(int(sid))
    assert repr(sid) == f"SessionId('{text}')"
    assert before_ms <= sid.timestamp_ms <= after_ms
    assert sid.timestamp_ms == int(sid) >> 80


def test_datetime_is_aware_utc(core) -> None:
    sid = core.SessionId.from_int((1_767_225_600_123 << 80) | 12345)
    value = sid.datetime
    assert value.tzinfo is not None
    assert value.utcoffset() == dt.timedelta(0)
    assert value == dt.datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=dt.timezone.utc)
    assert sid.timestamp_ms == 1_767_225_600_123


def test_random_bits_vary_in_every_position(core) -> None:
    ids = [int(core.SessionId()) for _ in range(2000)]
    ored = 0
    anded = RANDOM_MASK
    for value in ids:
        ored |= value & RANDOM_MASK
        anded &= value & RANDOM_MASK
    # Each of the 80 random bits is seen both set and clear.
    assert ored == RANDOM_MASK
    assert anded == 0


def test_ids_of_one_millisecond_differ_in_the_random_part(core) -> None:
    by_ms: dict[int, list[int]] = {}
    for _ in range(200_000):
        sid = core.SessionId()
        by_ms.setdefault(sid.timestamp_ms, []).append(int(sid) & RANDOM_MASK)
        if len(by_ms[sid.timestamp_ms]) >= 50:
            break
    crowded = [parts for parts in by_ms.values() if len(parts) > 1]
    assert crowded, "never two ids in one millisecond"
    for parts in crowded:
        assert len(set(parts)) == len(parts)


def test_a_managers_ids_in_one_millisecond_differ(core, clock, make_manager) -> None:
    m = make_manager()
    ids = [m.create_session().id for _ in range(300)]  # the fake clock stands still
    assert {sid.timestamp_ms for sid in ids} == {clock.now // 10**6}
    assert len({int(sid) & RANDOM_MASK for sid in ids}) == 300


def test_ids_from_8_threads_are_distinct(core) -> None:
    per_thread = 1250
    barrier = threading.Barrier(8)
    results: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            barrier.wait(timeout=30)
            out = results[slot]
            for _ in range(per_thread):
                out.append(int(core.SessionId()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is still running"
    assert errors == []
    everything = [v for chunk in results for v in chunk]
    assert len(everything) == 10_000
    assert len(set(everything)) == 10_000


# --------------------------------------------------------------------------
# from_string
# --------------------------------------------------------------------------


def test_from_string_round_trip_and_case(core) -> None:
    sid = core.SessionId()
    text = str(sid)
    assert core.SessionId.from_string(text) == sid
    assert core.SessionId.from_string(text.lower()) == sid
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(text))
    assert core.SessionId.from_string(mixed) == sid
    assert str(core.SessionId.from_string(text.lower())) == text


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0" * 25,
        "0" * 27,
        "8" + "0" * 25,
        "Z" * 26,
        "9ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "0" * 25 + "I",
        "0" * 25 + "i",
        "0" * 25 + "L",
        "0" * 25 + "l",
        "0" * 25 + "O",
        "0" * 25 + "o",
        "0" * 25 + "U",
        "0" * 25 + "u",
        "0" * 25 + "-",
        "0" * 25 + " ",
        " " + "0" * 26,
        "0" * 26 + "\n",
        "0" * 25 + "\u0660",  # ARABIC-INDIC DIGIT ZERO: a digit, but not ASCII
        "0" * 25 + "\ud800",
    ],
)
def test_from_string_rejects(bad, core) -> None:
    with pytest.raises(InvalidSessionToken):
        core.SessionId.from_string(bad)


def ref_decode(text: str) -> int | None:
    """Reference: 26 Crockford characters (either case) -> the int, or None."""
    if len(text) != 26 or any(ch.upper() not in ALPHABET for ch in text):
        return None
    n = 0
    for ch in text:
        n = n * 32 + ALPHABET.index(ch.upper())
    return n if n <= U128_MAX else None


def test_every_ascii_character_in_every_position(core) -> None:
    """The parser reads its 26 characters in three parts (the compiled
    core: 2, 12 and 12 at a time): every ASCII character, in every
    position of ids near both ends of the range, parses exactly as the
    reference decoder says."""
    for base in ("7" + "Z" * 25, "0" * 26, "01KDVDQK7R2K1EBJVRFNFKEGG3"):
        for position in range(26):
            for code in range(128):
                text = base[:position] + chr(code) + base[position + 1 :]
                want = ref_decode(text)
                if want is None:
                    with pytest.raises(InvalidSessionToken):
                        core.SessionId.from_string(text)
                else:
                    assert int(core.SessionId.from_string(text)) == want, text


@pytest.mark.parametrize("bad", [None, 0, b"0" * 26, ["0" * 26], 1.5])
def test_from_string_rejects_non_str(bad, core) -> None:
    with pytest.raises(TypeError):
        core.SessionId.from_string(bad)


# --------------------------------------------------------------------------
# bytes and ints
# --------------------------------------------------------------------------


def test_from_bytes_round_trip(core) -> None:
    sid = core.SessionId()
    raw = sid.bytes
    assert type(raw) is bytes
    assert len(raw) == 16
    assert raw == int(sid).to_bytes(16, "big")
    assert core.SessionId.from_bytes(raw) == sid


def test_fixed_vector_from_bytes(core) -> None:
    raw = bytes(range(16))
    sid = core.SessionId.from_bytes(raw)
    expected = ref_encode(int.from_bytes(raw, "big"))
    assert expected == "00041061050R3GG28A1C60T3GF"
    assert str(sid) == expected
    assert int(sid) == int.from_bytes(raw, "big")
    assert sid.bytes == raw
    assert sid.timestamp_ms == int.from_bytes(raw[:6], "big")
    assert core.SessionId.from_string(expected) == sid
    assert core.SessionId.from_string(expected.lower()) == sid


@pytest.mark.parametrize("size", [0, 1, 15, 17, 32])
def test_from_bytes_wrong_length(size, core) -> None:
    with pytest.raises(ValueError):
        core.SessionId.from_bytes(bytes(size))


@pytest.mark.parametrize("bad", [None, "0" * 16, 5, [0] * 16])
def test_from_bytes_non_bytes(bad, core) -> None:
    with pytest.raises(TypeError):
        core.SessionId.from_bytes(bad)


def test_int_round_trip(core) -> None:
    for value in (0, 1, 31, 32, 2**80 - 1, 2**80, 2**127, U128_MAX - 1, U128_MAX):
        sid = core.SessionId.from_int(value)
        assert int(sid) == value
        assert str(sid) == ref_encode(value)
        assert core.SessionId.from_string(ref_encode(value)) == sid
    fresh = core.SessionId()
    assert core.SessionId.from_int(int(fresh)) == fresh


@pytest.mark.parametrize("bad", [-1, 2**128, 2**200, -(2**128)])
def test_from_int_out_of_range(bad, core) -> None:
    with pytest.raises(ValueError):
        core.SessionId.from_int(bad)


def test_known_vectors(core) -> None:
    assert str(core.SessionId.from_int(0)) == "00000000000000000000000000"
    assert str(core.SessionId.from_int(U128_MAX)) == "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
    assert int(core.SessionId.from_string("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")) == U128_MAX
    assert core.SessionId.from_int(0).bytes == bytes(16)
    assert core.SessionId.from_int(U128_MAX).bytes == b"\xff" * 16
    # The ULID spec's own example.
    assert int(core.SessionId.from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV")) == int(
        "01563E3AB5D3D6764C61EFB99302BD5B", 16
    )


# --------------------------------------------------------------------------
# value semantics
# --------------------------------------------------------------------------


def test_equality_and_hash(core) -> None:
    a = core.SessionId()
    b = core.SessionId.from_string(str(a))
    c = core.SessionId.from_bytes(a.bytes)
    assert a == b == c
    assert not (a != b)
    assert hash(a) == hash(b) == hash(c)
    assert len({a, b, c}) == 1
    other = core.SessionId()
    assert a != other
    assert {a: 1}[b] == 1


def test_ordered_like_the_integer(core) -> None:
    values = [0, 5, 2**80, 2**80 + 1, 2**100, 2**127 + 3, U128_MAX]
    ids = [core.SessionId.from_int(v) for v in reversed(values)]
    assert [int(s) for s in sorted(ids)] == values
    lo, hi = core.SessionId.from_int(1), core.SessionId.from_int(2)
    assert lo < hi and lo <= hi and hi > lo and hi >= lo
    assert not (hi < lo) and lo <= core.SessionId.from_int(1)
    # Order of the string form agrees too (Crockford keeps the order).
    assert sorted(str(s) for s in ids) == [str(s) for s in sorted(ids)]


def test_immutable(core) -> None:
    sid = core.SessionId()
    text = str(sid)
    for name in ("timestamp_ms", "bytes", "datetime", "anything"):
        with pytest.raises((AttributeError, TypeError)):
            setattr(sid, name, 1)
    assert str(sid) == text


def test_copy_is_equal(core) -> None:
    sid = core.SessionId()
    assert copy.copy(sid) == sid
    assert copy.deepcopy(sid) == sid


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_names_the_public_module(protocol, core) -> None:
    sid = core.SessionId()
    data = pickle.dumps(sid, protocol=protocol)
    assert b"rlm_fast" in data
    assert b"_session_py" not in data
    assert b"_session_c" not in data
    loaded = pickle.loads(data)
    assert isinstance(loaded, rlm_fast.SessionId)
    assert str(loaded) == str(sid)
    assert int(loaded) == int(sid)
    if core.SessionId is rlm_fast.SessionId:
        assert loaded == sid
