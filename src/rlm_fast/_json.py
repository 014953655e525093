"""JSON primitives, byte for byte as the Rust crate's serde_json and jiff
write and read them (SPEC 8): timestamps, strict parsing, field checks that
name the field. The result classes (`_results`) and the dump file (`_dump`)
build on these."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from typing import Any, TypeVar

from ._checks import I64_MAX, I64_MIN, U32_MAX, U64_MAX, show_int
from .errors import Serialization

_NS = 1_000_000_000


_EPOCH = _dt.datetime(1970, 1, 1)  # naive, read as UTC


_EPOCH_ORDINAL = _EPOCH.toordinal()


_COMPACT = (",", ":")  # serde_json::to_string


# ---------------------------------------------------------------------------
# fields: each error names the field
# ---------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A JSON value as serde names it in "invalid type" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{show_int(value)}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, (list, tuple)):
        return "a sequence"
    if isinstance(value, Mapping):
        return "a map"
    return f"a {type(value).__name__}"


def _invalid_type(field: str, value: object, expected: str) -> Serialization:
    return Serialization(f"{field}: invalid type: {_describe(value)}, expected {expected}")


def _u64(value: object, field: str) -> int:
    if type(value) is int:
        if 0 <= value <= U64_MAX:
            return value
        raise Serialization(f"{field}: {show_int(value)} is out of range for u64 (0..{U64_MAX})")
    raise _invalid_type(field, value, "u64")


# The fields the crate keeps as u32 (its serde_json refuses larger values).
_U32_FIELDS = frozenset(
    ("extension_count", "recursion_depth", "snapshot_count", "max_recursion_depth",
     "current_recursion_depth")
)


def _u32(value: object, field: str) -> int:
    number = _u64(value, field)
    if number > U32_MAX:
        raise Serialization(f"{field}: {show_int(number)} is out of range for u32 (0..{U32_MAX})")
    return number


def _string(value: object, field: str) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise _invalid_type(field, value, "a string")
        value = str.__str__(value)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Serialization(f"{field}: not valid UTF-8 (lone surrogate)") from None
    return value


def _optional_string(value: object, field: str) -> str | None:
    return None if value is None else _string(value, field)


_KEYSETS: dict[tuple[str, ...], frozenset[str]] = {}


def _object(data: object, names: tuple[str, ...], where: str) -> Mapping[str, Any]:
    """`data` as a JSON object with exactly the fields `names`."""
    if type(data) is not dict and not isinstance(data, Mapping):
        raise _invalid_type(where, data, "a JSON object")
    keys = _KEYSETS.get(names)
    if keys is None:
        keys = _KEYSETS[names] = frozenset(names)
    if len(data) != len(names) or data.keys() != keys:
        expected = ", ".join(f"`{n}`" for n in names)
        for key in data:
            if key not in names:
                raise Serialization(
                    f"{where}: unknown field {json.dumps(str(key), ensure_ascii=False)}, "
                    f"expected one of {expected}"
                )
        missing = next(n for n in names if n not in data)
        raise Serialization(f"{where}: missing field `{missing}`")
    return data


# ---------------------------------------------------------------------------
# timestamps (jiff's RFC 3339)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _date_text(epoch_day: int) -> str:
    return _dt.date.fromordinal(epoch_day + _EPOCH_ORDINAL).isoformat()


_HOUR_MINUTE = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]


_SECOND = [f"{s:02d}" for s in range(60)]


def format_timestamp(ns: int) -> str:
    """RFC 3339 UTC with `Z`, fractional seconds with the fewest digits that
    keep the value (none when zero): `2026-01-11T10:15:30.123Z`."""
    secs, frac = divmod(ns, _NS)  # floor: frac is never negative
    days, second = divmod(secs, 86400)
    text = f"{_date_text(days)}T{_HOUR_MINUTE[second // 60]}{_SECOND[second % 60]}"
    if frac:
        return f"{text}.{frac:09d}".rstrip("0") + "Z"
    return text + "Z"


@functools.lru_cache(maxsize=4096)
def _epoch_day(year: str, month: str, day: str) -> int | None:
    try:
        return _dt.date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None


_TIMESTAMP_RE = re.compile(
    r"([0-9]{4}|[+-][0-9]{6})-([0-9]{2})-([0-9]{2})[Tt]"
    r"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_timestamp(value: object, field: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp: `Z` (or `z`), or
    a `±HH:MM` offset that is converted to UTC, as jiff does; 0 to 9
    fractional digits. It must fit in a signed 64-bit int of nanoseconds."""
    if type(value) is not str:
        raise _invalid_type(field, value, "an RFC 3339 timestamp string")
    m = _TIMESTAMP_RE.fullmatch(value)
    if m is None:
        raise _bad_timestamp(
            field, value, "is not an RFC 3339 timestamp (like 2026-01-11T10:15:30.123Z)"
        )
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    days = _epoch_day(year, month, day)
    if days is None:
        if not 1 <= int(year) <= 9999:
            raise _bad_timestamp(field, value, _OUT_OF_RANGE)
        raise _bad_timestamp(field, value, "has no such date")
    h, mi, s = int(hour), int(minute), int(second)
    if h > 23 or mi > 59 or s > 59:
        raise _bad_timestamp(field, value, "has no such time of day")
    seconds = days * 86400 + h * 3600 + mi * 60 + s
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise _bad_timestamp(field, value, "has an invalid UTC offset")
        seconds -= (oh * 3600 + om * 60) * (1 if sign == "+" else -1)
    ns = seconds * _NS if frac is None else seconds * _NS + int(frac.ljust(9, "0"))
    if not I64_MIN <= ns <= I64_MAX:
        raise _bad_timestamp(field, value, _OUT_OF_RANGE)
    return ns


_OUT_OF_RANGE = (
    "is out of range (1677-09-21T00:12:43.145224192Z ..= 2262-04-11T23:47:16.854775807Z)"
)


def _bad_timestamp(field: str, value: str, why: str) -> Serialization:
    return Serialization(f"{field}: {_describe(value)} {why}")


# ---------------------------------------------------------------------------
# JSON text
# ---------------------------------------------------------------------------


def _quoted(text: str | None) -> str:
    # json.dumps(ensure_ascii=False)'s string escaper, which escapes exactly
    # what serde_json does: `"`, `\`, and U+0000..U+001F (\b \t \n \f \r or
    # \u00xx, lowercase hex); everything else, non-ASCII included, is raw.
    return "null" if text is None else encode_basestring(text)


def _check_indent(indent: object) -> int | None:
    if indent is None:
        return None
    if isinstance(indent, bool) or not isinstance(indent, int):
        raise TypeError(f"indent must be None or an int, not {type(indent).__name__}")
    if indent < 0:
        raise ValueError("indent must be >= 0")
    return int(indent)


def to_json(data: Mapping[str, Any], indent: int | None = None) -> str:
    """serde_json's text of a plain JSON object (compact or pretty)."""
    width = _check_indent(indent)
    if width is None:
        return json.dumps(data, ensure_ascii=False, separators=_COMPACT)
    return json.dumps(data, ensure_ascii=False, indent=width)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Serialization(f"duplicate field {json.dumps(key, ensure_ascii=False)}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise Serialization(f"invalid JSON: {name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def parse_json(text: object) -> Any:
    """A JSON document as serde_json reads it: UTF-8, no NaN/Infinity, no
    repeated keys; anything else raises Serialization."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Serialization(f"invalid UTF-8: {exc}") from None
    elif not isinstance(text, str):
        raise TypeError(f"expected str or bytes, not {type(text).__name__}")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Serialization(f"invalid JSON: {exc}") from None
    except ValueError as exc:  # a number over Python's int digit limit
        raise Serialization(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise Serialization("invalid JSON: nested too deeply") from None


_T = TypeVar("_T")


def from_json(text: object, build: Callable[[object], _T]) -> _T:
    return build(parse_json(text))
