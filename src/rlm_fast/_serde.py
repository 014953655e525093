"""JSON of the result types, byte for byte what the Rust crate's serde writes
(SPEC 8), and the dump/load file format of a whole manager
(docs/dump-format.md). Both cores and the result types delegate here.

The compact `SessionInfo` form is built by hand, one f-string per session,
because a dump writes 100,000 of them; the tests hold it equal to
`json.dumps(to_dict())` with serde_json's separators.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

from ._types import (
    _STATE_BY_VALUE,
    I64_MAX,
    I64_MIN,
    U64_MAX,
    BudgetStatus,
    SessionInfo,
    SessionStats,
)
from .config import RlmConfig
from .errors import ConfigError, InvalidSessionToken, Serialization

if TYPE_CHECKING:
    from ._core_py import SessionId

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "format_timestamp",
    "parse_timestamp",
    "budget_to_dict",
    "budget_from_dict",
    "info_to_dict",
    "info_to_json",
    "info_from_dict",
    "info_from_json",
    "stats_to_dict",
    "stats_from_dict",
    "to_json",
    "from_json",
    "dump",
    "load",
]

FORMAT_NAME = "rlm_fast.dump"
FORMAT_VERSION = 1

_NS = 1_000_000_000
_EPOCH = _dt.datetime(1970, 1, 1)  # naive, read as UTC
_EPOCH_ORDINAL = _EPOCH.toordinal()

BUDGET_FIELDS = (
    "token_budget",
    "tokens_used",
    "time_budget_ms",
    "time_used_ms",
    "max_recursion_depth",
    "current_recursion_depth",
)
INFO_FIELDS = (
    "id",
    "state",
    "created_at",
    "expires_at",
    "extension_count",
    "recursion_depth",
    "budget_status",
    "vm_instance_id",
    "context_variables",
    "current_snapshot_id",
    "snapshot_count",
)
STATS_FIELDS = (
    "total_sessions_created",
    "active_sessions",
    "sessions_with_vm",
    "total_sessions_destroyed",
    "total_sessions_expired",
)
_HEADER_FIELDS = ("format", "version", "config", "created", "destroyed", "expired", "sessions")
_TRAILER_FIELDS = ("end", "sessions", "sha256")

_COMPACT = (",", ":")  # serde_json::to_string


# ---------------------------------------------------------------------------
# error helpers
# ---------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A JSON value as serde names it in "invalid type" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{_int_text(value)}`"
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


def _int_text(value: int) -> str:
    # str() of an int over 4300 digits raises ValueError (CVE-2020-10735).
    if value.bit_length() <= 128:
        return str(value)
    return f"{'-' if value < 0 else ''}<{value.bit_length()}-bit number>"


def _invalid_type(field: str, value: object, expected: str) -> Serialization:
    return Serialization(f"{field}: invalid type: {_describe(value)}, expected {expected}")


def _u64(value: object, field: str) -> int:
    if type(value) is int:
        if 0 <= value <= U64_MAX:
            return value
        raise Serialization(f"{field}: {_int_text(value)} is out of range for u64 (0..{U64_MAX})")
    raise _invalid_type(field, value, "u64")


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
# timestamps (jiff::Timestamp's serde form)
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
# BudgetStatus
# ---------------------------------------------------------------------------


def budget_to_dict(budget: BudgetStatus) -> dict[str, Any]:
    return {name: getattr(budget, name) for name in BUDGET_FIELDS}


def _budget_values(data: object, where: str) -> list[int]:
    obj = _object(data, BUDGET_FIELDS, where)
    prefix = f"{where}." if where != "BudgetStatus" else ""
    return [_u64(obj[name], prefix + name) for name in BUDGET_FIELDS]


def budget_from_dict(data: object) -> BudgetStatus:
    return BudgetStatus._trusted(*_budget_values(data, "BudgetStatus"))


# ---------------------------------------------------------------------------
# SessionInfo
# ---------------------------------------------------------------------------


_SESSION_ID: list[type[SessionId]] = []


def _session_id_class() -> type[SessionId]:
    """The active core's SessionId (`rlm_fast.SessionId`), looked up once."""
    if not _SESSION_ID:
        import rlm_fast

        _SESSION_ID.append(rlm_fast.SessionId)
    return _SESSION_ID[0]


def _id_text(sid: object) -> str:
    """The 26-char uppercase ULID of a session id: a SessionId of either
    core, or anything whose str() is a ULID in either case."""
    cls = _session_id_class()
    if type(sid) is cls:
        return str(sid)
    text = sid if isinstance(sid, str) else str(sid)
    try:
        return str(cls.from_string(text))
    except InvalidSessionToken:
        raise Serialization(f"id: {_describe(text)} is not a ULID") from None


def info_to_dict(info: SessionInfo) -> dict[str, Any]:
    """The crate's serde object: fields in declaration order, id and
    timestamps as strings, context variables sorted by key."""
    return {
        "id": _id_text(info.id),
        "state": info.state.value,
        "created_at": format_timestamp(info.created_at_ns),
        "expires_at": format_timestamp(info.expires_at_ns),
        "extension_count": info.extension_count,
        "recursion_depth": info.recursion_depth,
        "budget_status": budget_to_dict(info.budget_status),
        "vm_instance_id": info.vm_instance_id,
        "context_variables": dict(info.context_variables),  # sorted by key
        "current_snapshot_id": info.current_snapshot_id,
        "snapshot_count": info.snapshot_count,
    }


def _quoted(text: str | None) -> str:
    # json.dumps(ensure_ascii=False)'s string escaper, which escapes exactly
    # what serde_json does: `"`, `\`, and U+0000..U+001F (\b \t \n \f \r or
    # \u00xx, lowercase hex); everything else, non-ASCII included, is raw.
    return "null" if text is None else encode_basestring(text)


def _compact_info(info: SessionInfo) -> str:
    b = info.budget_status
    context = info._context
    if context:
        # Already sorted by key: a SessionInfo keeps its context that way.
        ctx = ",".join(f"{encode_basestring(k)}:{encode_basestring(v)}" for k, v in context.items())
        ctx = "{" + ctx + "}"
    else:
        ctx = "{}"
    return (
        f'{{"id":"{_id_text(info.id)}","state":"{info.state.value}",'
        f'"created_at":"{format_timestamp(info.created_at_ns)}",'
        f'"expires_at":"{format_timestamp(info.expires_at_ns)}",'
        f'"extension_count":{info.extension_count},'
        f'"recursion_depth":{info.recursion_depth},'
        f'"budget_status":{{"token_budget":{b.token_budget},"tokens_used":{b.tokens_used},'
        f'"time_budget_ms":{b.time_budget_ms},"time_used_ms":{b.time_used_ms},'
        f'"max_recursion_depth":{b.max_recursion_depth},'
        f'"current_recursion_depth":{b.current_recursion_depth}}},'
        f'"vm_instance_id":{_quoted(info.vm_instance_id)},'
        f'"context_variables":{ctx},'
        f'"current_snapshot_id":{_quoted(info.current_snapshot_id)},'
        f'"snapshot_count":{info.snapshot_count}}}'
    )


def _check_indent(indent: object) -> int | None:
    if indent is None:
        return None
    if isinstance(indent, bool) or not isinstance(indent, int):
        raise TypeError(f"indent must be None or an int, not {type(indent).__name__}")
    if indent < 0:
        raise ValueError("indent must be >= 0")
    return int(indent)


def info_to_json(info: SessionInfo, indent: int | None = None) -> str:
    """`serde_json::to_string` (indent None) or `to_string_pretty` (indent 2)."""
    width = _check_indent(indent)
    if width is None:
        return _compact_info(info)
    return json.dumps(info_to_dict(info), ensure_ascii=False, indent=width)


def info_from_dict(data: object) -> SessionInfo:
    """A SessionInfo from the crate's serde object (see `info_to_dict`)."""
    obj = _object(data, INFO_FIELDS, "SessionInfo")
    raw_id = obj["id"]
    if type(raw_id) is not str:
        raise _invalid_type("id", raw_id, "a ULID string")
    try:
        sid = _session_id_class().from_string(raw_id)
    except InvalidSessionToken:
        raise Serialization(f"id: {_describe(raw_id)} is not a ULID") from None
    state_name = obj["state"]
    state = _STATE_BY_VALUE.get(state_name) if type(state_name) is str else None
    if state is None:
        if type(state_name) is not str:
            raise _invalid_type("state", state_name, "a state name")
        names = ", ".join(f"`{n}`" for n in _STATE_BY_VALUE)
        raise Serialization(
            f"state: unknown variant {_describe(state_name)}, expected one of {names}"
        )
    created = parse_timestamp(obj["created_at"], "created_at")
    expires = parse_timestamp(obj["expires_at"], "expires_at")
    extensions = _u64(obj["extension_count"], "extension_count")
    depth = _u64(obj["recursion_depth"], "recursion_depth")
    budget = _budget_values(obj["budget_status"], "budget_status")
    vm = _optional_string(obj["vm_instance_id"], "vm_instance_id")
    raw_context = obj["context_variables"]
    if not isinstance(raw_context, Mapping):
        raise _invalid_type("context_variables", raw_context, "a JSON object")
    context: dict[str, str] = {}
    if raw_context:
        pairs = []
        for key, value in raw_context.items():
            if not (type(key) is str and type(value) is str and key.isascii() and value.isascii()):
                key = _string(key, "context_variables key")
                value = _string(value, f"context_variables[{_describe(key)}]")
            pairs.append((key, value))
        pairs.sort()
        context = dict(pairs)
    snapshot = _optional_string(obj["current_snapshot_id"], "current_snapshot_id")
    snapshots = _u64(obj["snapshot_count"], "snapshot_count")
    # Depth has one source of truth (SPEC 4.8): recursion_depth wins over
    # budget_status.current_recursion_depth when a crate document differs.
    budget[5] = depth
    return SessionInfo._trusted(
        sid,
        state,
        created,
        expires,
        extensions,
        depth,
        BudgetStatus._trusted(*budget),
        vm,
        context,
        snapshot,
        snapshots,
    )


# ---------------------------------------------------------------------------
# SessionStats
# ---------------------------------------------------------------------------


def stats_to_dict(stats: SessionStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in STATS_FIELDS}


def stats_from_dict(data: object) -> SessionStats:
    obj = _object(data, STATS_FIELDS, "SessionStats")
    return SessionStats(*(_u64(obj[name], name) for name in STATS_FIELDS))


# ---------------------------------------------------------------------------
# JSON text
# ---------------------------------------------------------------------------


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


def info_from_json(text: object) -> SessionInfo:
    return info_from_dict(parse_json(text))


# ---------------------------------------------------------------------------
# dump / load (docs/dump-format.md)
# ---------------------------------------------------------------------------


class _Manager(Protocol):
    """What dump/load need of a SessionManager (either core)."""

    @property
    def config(self) -> RlmConfig: ...

    def _export(self) -> tuple[list[SessionInfo], SessionStats]: ...

    def _restore(self, infos: list[SessionInfo], counters: tuple[int, int, int]) -> None: ...


_M = TypeVar("_M", bound=_Manager)


def dump(manager: _Manager, path: str | os.PathLike[str]) -> None:
    """Write every session and the counters to `path`, atomically: the lines
    stream into a temp file in the same directory, which is fsynced and
    renamed over `path`, then the directory is fsynced. A crash at any
    moment leaves the old file or the new one, never a mix."""
    infos, stats = manager._export()
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": manager.config.to_dict(),
        "created": stats.total_sessions_created,
        "destroyed": stats.total_sessions_destroyed,
        "expired": stats.total_sessions_expired,
        "sessions": len(infos),
    }
    try:
        head = (to_json(header) + "\n").encode("utf-8")
    except UnicodeEncodeError as exc:  # a config string with a lone surrogate
        raise Serialization(f"the config is not valid UTF-8: {exc}") from None
    digest = hashlib.sha256(head)
    with _atomic_file(os.fsdecode(path)) as f:
        f.write(head)
        for start in range(0, len(infos), _BATCH):
            lines = [_compact_info(info) for info in infos[start : start + _BATCH]]
            lines.append("")
            chunk = "\n".join(lines).encode("utf-8")
            digest.update(chunk)
            f.write(chunk)
        trailer = {"end": FORMAT_NAME, "sessions": len(infos), "sha256": digest.hexdigest()}
        f.write((to_json(trailer) + "\n").encode("ascii"))


_BATCH = 1024  # sessions per write


@contextlib.contextmanager
def _atomic_file(path: str) -> Iterator[BinaryIO]:
    """A temp file next to `path` that replaces it, durably, only when the
    block completes; on any error the temp file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name != "nt":  # Windows cannot open a directory to fsync it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        except OSError as exc:  # some file systems cannot fsync a directory
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        finally:
            os.close(dir_fd)


def load(
    cls: Callable[..., _M],
    path: str | os.PathLike[str],
    config: RlmConfig | None = None,
    *,
    clock: Callable[[], int] | None = None,
) -> _M:
    """A new manager of class `cls` holding what `dump` wrote to `path`,
    with the dumped config unless `config` is given. The file is checked
    whole (trailer, checksum, counts, every line) before anything is built,
    so a bad file raises Serialization and never half-loads."""
    name = os.fsdecode(path)
    manager = None if config is None else cls(config, clock=clock)  # fail fast
    with open(name, "rb") as f:
        data = f.read()
    try:
        header, infos = _parse_dump(data)
    except Serialization as exc:
        raise Serialization(f"{name}: {exc.message}") from None
    if manager is None:
        try:
            dumped = RlmConfig.from_dict(header["config"])
        except (ConfigError, TypeError) as exc:
            raise Serialization(f"{name}: line 1: config: {exc}") from None
        manager = cls(dumped, clock=clock)
    counters = (header["created"], header["destroyed"], header["expired"])
    try:
        manager._restore(infos, counters)
    except (TypeError, ValueError) as exc:
        raise Serialization(f"{name}: inconsistent dump: {exc}") from None
    return manager


def _parse_dump(data: bytes) -> tuple[Mapping[str, Any], list[SessionInfo]]:
    if not data:
        raise Serialization("empty file, not an rlm_fast dump")
    if not data.endswith(b"\n"):
        raise Serialization("truncated: the file does not end with its trailer line")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    if cut == 0:
        raise Serialization("truncated: the file has no trailer line")
    body = data[:cut]
    try:
        trailer = _object(parse_json(data[cut:-1]), _TRAILER_FIELDS, "trailer")
        if trailer["end"] != FORMAT_NAME:
            raise Serialization(f"`end` is not {FORMAT_NAME!r}")
        count = _u64(trailer["sessions"], "sessions")
    except Serialization as exc:
        raise Serialization(
            f"truncated or corrupted: the last line is not a valid trailer ({exc.message})"
        ) from None
    if trailer["sha256"] != hashlib.sha256(body).hexdigest():
        raise Serialization("corrupted: the sha256 in the trailer does not match the file")
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise Serialization(f"invalid UTF-8: {exc}") from None
    lines.pop()  # the empty string after the last newline
    try:
        header = _object(parse_json(lines[0]), _HEADER_FIELDS, "header")
        if header["format"] != FORMAT_NAME:
            raise Serialization(f"not an rlm_fast dump (format {header['format']!r})")
        if type(header["version"]) is not int or header["version"] != FORMAT_VERSION:
            raise Serialization(
                f"unsupported dump version {header['version']!r} "
                f"(this rlm_fast reads version {FORMAT_VERSION})"
            )
        for field in ("created", "destroyed", "expired", "sessions"):
            _u64(header[field], field)
    except Serialization as exc:
        raise Serialization(f"line 1: {exc.message}") from None
    if header["sessions"] != count or len(lines) - 1 != count:
        raise Serialization(
            f"corrupted: session count mismatch: header {header['sessions']}, "
            f"trailer {count}, lines {len(lines) - 1}"
        )
    infos = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            infos.append(info_from_dict(parse_json(line)))
        except Serialization as exc:
            raise Serialization(f"line {number}: {exc.message}") from None
    return header, infos
