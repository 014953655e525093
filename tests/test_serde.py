"""JSON of SessionInfo, BudgetStatus and SessionStats: byte for byte the Rust
crate's serde_json output (SPEC 8), checked against hand-written golden
documents in tests/golden/, plus the parser's refusals and MCP errors."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import pathlib
import types
from typing import Any

import pytest

import rlm_fast
from rlm_fast import (
    BudgetStatus,
    Serialization,
    SessionInfo,
    SessionState,
    SessionStats,
    errors,
)
from rlm_fast._json import format_timestamp, parse_timestamp
from rlm_fast._results import REFUSAL_FIELDS

pytestmark = pytest.mark.in_process("the result types and their JSON are the in-process cores'; the Redis manager returns the active core's")

GOLDEN = pathlib.Path(__file__).parent / "golden"
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
INFO_FIELDS = [
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
]
BUDGET_FIELDS = [
    "token_budget",
    "tokens_used",
    "time_budget_ms",
    "time_used_ms",
    "max_recursion_depth",
    "current_recursion_depth",
]


def golden(name: str) -> str:
    """A golden document: the file minus its one trailing newline."""
    text = (GOLDEN / name).read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    return text[:-1]


def utc_ns(text: str, frac_ns: int = 0) -> int:
    """Nanoseconds of a naive ISO date-time read as UTC (stdlib oracle)."""
    return calendar.timegm(dt.datetime.fromisoformat(text).timetuple()) * 10**9 + frac_ns


def fields(info: SessionInfo) -> tuple[Any, ...]:
    """Everything a SessionInfo holds, the id as text (ids of the two cores
    do not compare equal to each other)."""
    return (
        str(info.id),
        info.state,
        info.created_at_ns,
        info.expires_at_ns,
        info.extension_count,
        info.recursion_depth,
        info.budget_status,
        info.vm_instance_id,
        dict(info.context_variables),
        info.current_snapshot_id,
        info.snapshot_count,
    )


# --------------------------------------------------------------------------
# golden documents
# --------------------------------------------------------------------------

# file -> (indent, the SessionInfo's constructor arguments, id as text)
GOLDEN_INFOS: dict[str, tuple[int | None, dict[str, Any]]] = {
    "session_frac0.json": (
        None,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4Y5",
            state=SessionState.INITIALIZING,
            created_at_ns=utc_ns("2026-01-11T10:15:30"),
            expires_at_ns=utc_ns("2026-01-11T10:45:30"),
        ),
    ),
    "session_frac3.json": (
        None,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4Y6",
            state=SessionState.READY,
            created_at_ns=utc_ns("2026-01-11T10:15:30", 123_000_000),
            expires_at_ns=utc_ns("2026-01-11T11:15:30", 120_000_000),
            extension_count=1,
            recursion_depth=2,
            budget_status=BudgetStatus(50_000, 1500, 60_000, 2500, 5, 2),
            vm_instance_id="vm-abc123",
        ),
    ),
    "session_frac6.json": (
        None,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4Y7",
            state=SessionState.EXECUTING,
            created_at_ns=utc_ns("2026-01-11T10:15:30", 123_456_000),
            expires_at_ns=utc_ns("2026-01-11T10:45:30", 100_000_000),
            vm_instance_id="fc-vm-0001",
            current_snapshot_id="snap-7",
            snapshot_count=3,
        ),
    ),
    "session_frac9.json": (
        None,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4Y8",
            state=SessionState.PAUSED,
            created_at_ns=utc_ns("2026-01-11T10:15:30", 123_456_789),
            expires_at_ns=utc_ns("2026-01-11T10:45:30", 1),
            extension_count=3,
            budget_status=BudgetStatus(tokens_used=99_999, time_used_ms=299_999),
            # inserted out of order: serialized sorted by key
            context_variables={
                "ключ": "значение",
                "notes": 'line1\nline2\t"quoted" \\ back\x01 del\x7f / \b\f\r\x1f',
                "goal": "naïve café ☕",
                "a key": "plain",
            },
        ),
    ),
    "session_pre1970.json": (
        None,
        dict(
            id="00000000000000000000000000",
            state=SessionState.EXPIRED,
            created_at_ns=-1,
            expires_at_ns=0,
            budget_status=BudgetStatus(0, 0, 0, 0, 0, 0),
            vm_instance_id="",
            context_variables={"": ""},
            current_snapshot_id="",
        ),
    ),
    "session_extremes.json": (
        None,
        dict(
            id="7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            state=SessionState.TERMINATED,
            created_at_ns=I64_MIN,
            expires_at_ns=I64_MAX,
            extension_count=2**32 - 1,
            recursion_depth=2**32 - 1,  # the crate's u32 fields at their maximum
            budget_status=BudgetStatus(*[U64_MAX] * 4, 2**32 - 1, 2**32 - 1),
            vm_instance_id="vm-last",
            current_snapshot_id="snap-last",
            snapshot_count=2**32 - 1,
        ),
    ),
    "session_pretty.json": (
        2,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4Y9",
            state=SessionState.READY,
            created_at_ns=utc_ns("2026-01-11T10:15:30", 500_000_000),
            expires_at_ns=utc_ns("2026-01-11T10:45:30", 500_000_000),
            recursion_depth=1,
            budget_status=BudgetStatus(tokens_used=42, time_used_ms=7, current_recursion_depth=1),
            vm_instance_id="vm-1",
            context_variables={"user": 'ada\n"lovelace"', "model": "claude"},
            current_snapshot_id="snap-1",
            snapshot_count=1,
        ),
    ),
    "session_pretty_empty.json": (
        2,
        dict(
            id="01KEP8VGJB8Z5CH9PBQ1FCF4YA",
            state=SessionState.INITIALIZING,
            created_at_ns=utc_ns("2026-01-11T10:15:30"),
            expires_at_ns=utc_ns("2026-01-11T10:45:30"),
        ),
    ),
}


def golden_info(core: types.SimpleNamespace, name: str) -> SessionInfo:
    kwargs = dict(GOLDEN_INFOS[name][1])
    kwargs["id"] = core.SessionId.from_string(kwargs["id"])
    return SessionInfo(**kwargs)


@pytest.mark.parametrize("name", sorted(GOLDEN_INFOS))
def test_golden_session_serializes_exactly(core: types.SimpleNamespace, name: str) -> None:
    indent = GOLDEN_INFOS[name][0]
    assert golden_info(core, name).to_json(indent=indent) == golden(name)


@pytest.mark.parametrize("name", sorted(GOLDEN_INFOS))
def test_golden_session_parses_back(core: types.SimpleNamespace, name: str) -> None:
    text = golden(name)
    for doc in (text, text.encode("utf-8")):
        info = SessionInfo.from_json(doc)
        assert type(info.id) is rlm_fast.SessionId  # the active core's
        assert fields(info) == fields(golden_info(core, name))
        assert info.to_json(indent=GOLDEN_INFOS[name][0]) == text


@pytest.mark.parametrize("name", sorted(GOLDEN_INFOS))
def test_golden_session_dict_is_the_json_object(core: types.SimpleNamespace, name: str) -> None:
    data = golden_info(core, name).to_dict()
    assert list(data) == INFO_FIELDS
    assert list(data["budget_status"]) == BUDGET_FIELDS
    assert data == json.loads(golden(name))
    assert fields(SessionInfo.from_dict(data)) == fields(golden_info(core, name))


def test_compact_and_pretty_goldens_hold_the_same_document() -> None:
    # A golden pair written twice by hand must agree: each is the other's
    # serde form.
    assert json.loads(golden("budget.json")) == json.loads(golden("budget_pretty.json"))
    assert json.loads(golden("stats.json")) == json.loads(golden("stats_pretty.json"))


@pytest.mark.parametrize("name, indent", [("budget.json", None), ("budget_pretty.json", 2)])
def test_golden_budget(name: str, indent: int | None) -> None:
    budget = BudgetStatus(100_000, 1234, 300_000, 5678, 10, 3)
    assert budget.to_json(indent=indent) == golden(name)
    assert list(budget.to_dict()) == BUDGET_FIELDS
    assert BudgetStatus.from_json(golden(name)) == budget
    assert BudgetStatus.from_dict(json.loads(golden(name))) == budget


@pytest.mark.parametrize("name, indent", [("stats.json", None), ("stats_pretty.json", 2)])
def test_golden_stats(name: str, indent: int | None) -> None:
    """The crate's document reads (its refusal counters as 0); ours is the
    crate's five fields in its order, then the seven refusal counters."""
    stats = SessionStats(10, 6, 4, 3, 1)
    assert SessionStats.from_json(golden(name)) == stats
    crate = json.loads(golden(name))
    ours = {**crate, **dict.fromkeys(REFUSAL_FIELDS, 0)}
    assert stats.to_json(indent=indent) == (
        json.dumps(ours, indent=indent) if indent else json.dumps(ours, separators=(",", ":"))
    )
    assert SessionStats.from_dict(stats.to_dict()) == stats
    counted = SessionStats(10, 6, 4, 3, 1, *range(1, 8))
    assert SessionStats.from_json(counted.to_json()) == counted
    assert counted.to_dict()["rejected_depth"] == 7
    with pytest.raises(Serialization, match="missing field `rejected_time`"):
        SessionStats.from_dict({k: v for k, v in counted.to_dict().items() if k != "rejected_time"})


def test_manager_results_serialize(core: types.SimpleNamespace, clock: Any) -> None:
    clock.now = utc_ns("2026-01-11T10:15:30", 123_000_000)
    m = core.SessionManager(clock=clock)
    sid = m.create_session().id
    m.assign_vm(sid, "vm-9")
    m.set_context_variable(sid, "b", "2")
    m.set_context_variable(sid, "a", "1")
    expected = golden("session_frac3.json")
    for old, new in (
        ("01KEP8VGJB8Z5CH9PBQ1FCF4Y6", str(sid)),
        ('"expires_at":"2026-01-11T11:15:30.12Z"', '"expires_at":"2026-01-11T10:45:30.123Z"'),
        ('"extension_count":1,"recursion_depth":2', '"extension_count":0,"recursion_depth":0'),
        ("50000,", "100000,"),
        ("1500,", "0,"),
        ("60000,", "300000,"),
        ("2500,", "0,"),
        (
            '"max_recursion_depth":5,"current_recursion_depth":2',
            '"max_recursion_depth":10,"current_recursion_depth":0',
        ),
        ('"vm-abc123","context_variables":{}', '"vm-9","context_variables":{"a":"1","b":"2"}'),
    ):
        assert old in expected
        expected = expected.replace(old, new)
    assert m.get_session(sid).to_json() == expected
    assert m.get_stats().to_json() == (
        '{"total_sessions_created":1,"active_sessions":1,"sessions_with_vm":1,'
        '"total_sessions_destroyed":0,"total_sessions_expired":0,'
        '"rejected_not_found":0,"rejected_invalid_token":0,"rejected_terminated":0,'
        '"rejected_expired":0,"rejected_tokens":0,"rejected_time":0,"rejected_depth":0}'
    )


# --------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ns, text",
    [
        (0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:00.000000001Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (-(10**9), "1969-12-31T23:59:59Z"),
        (-(10**9) - 1, "1969-12-31T23:59:58.999999999Z"),
        (100_000_000, "1970-01-01T00:00:00.1Z"),
        (120_000_000, "1970-01-01T00:00:00.12Z"),
        (123_000_000, "1970-01-01T00:00:00.123Z"),
        (123_400_000, "1970-01-01T00:00:00.1234Z"),
        (123_456_000, "1970-01-01T00:00:00.123456Z"),
        (123_456_780, "1970-01-01T00:00:00.12345678Z"),
        (utc_ns("2024-02-29T23:59:59"), "2024-02-29T23:59:59Z"),
        (utc_ns("2000-02-29T12:00:00"), "2000-02-29T12:00:00Z"),
        (utc_ns("1900-03-01T00:00:00"), "1900-03-01T00:00:00Z"),
        (utc_ns("1800-01-01T00:00:00", 5), "1800-01-01T00:00:00.000000005Z"),
        (I64_MIN, "1677-09-21T00:12:43.145224192Z"),
        (I64_MAX, "2262-04-11T23:47:16.854775807Z"),
    ],
)
def test_timestamp_format_and_parse(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text
    assert parse_timestamp(text, "t") == ns


@pytest.mark.parametrize(
    "text, ns",
    [
        ("2026-01-11T10:15:30.1Z", utc_ns("2026-01-11T10:15:30", 100_000_000)),
        ("2026-01-11T10:15:30.100Z", utc_ns("2026-01-11T10:15:30", 100_000_000)),
        ("2026-01-11T10:15:30.000000000Z", utc_ns("2026-01-11T10:15:30")),
        ("2026-01-11t10:15:30z", utc_ns("2026-01-11T10:15:30")),
        ("2026-01-11T10:15:30+00:00", utc_ns("2026-01-11T10:15:30")),
        ("2026-01-11T10:15:30-00:00", utc_ns("2026-01-11T10:15:30")),
        ("2026-01-11T12:15:30.5+02:00", utc_ns("2026-01-11T10:15:30", 500_000_000)),
        ("2026-01-11T04:45:30-05:30", utc_ns("2026-01-11T10:15:30")),
        ("2026-01-01T00:30:00+01:00", utc_ns("2025-12-31T23:30:00")),
    ],
)
def test_timestamp_parse_accepts(text: str, ns: int) -> None:
    # What the crate writes and what jiff reads (offsets converted to UTC).
    assert parse_timestamp(text, "t") == ns


@pytest.mark.parametrize(
    "value, why",
    [
        ("2026-01-11T10:15:30", "not an RFC 3339 timestamp"),
        ("2026-01-11 10:15:30Z", "not an RFC 3339 timestamp"),
        ("2026-01-11T10:15:30.Z", "not an RFC 3339 timestamp"),
        ("2026-01-11T10:15:30.1234567890Z", "not an RFC 3339 timestamp"),
        ("2026-1-11T10:15:30Z", "not an RFC 3339 timestamp"),
        ("２０２６-01-11T10:15:30Z", "not an RFC 3339 timestamp"),
        ("2026-01-11T10:15:30+0200", "not an RFC 3339 timestamp"),
        (" 2026-01-11T10:15:30Z", "not an RFC 3339 timestamp"),
        ("2026-01-11T10:15:30Z\n", "not an RFC 3339 timestamp"),
        ("", "not an RFC 3339 timestamp"),
        ("2026-02-29T00:00:00Z", "no such date"),
        ("2026-13-01T00:00:00Z", "no such date"),
        ("2026-00-10T00:00:00Z", "no such date"),
        ("2026-01-11T24:00:00Z", "no such time of day"),
        ("2026-01-11T10:60:00Z", "no such time of day"),
        ("2026-01-11T10:15:60Z", "no such time of day"),
        ("2026-01-11T10:15:30+24:00", "invalid UTC offset"),
        ("2262-04-11T23:47:16.854775808Z", "out of range"),
        ("1677-09-21T00:12:43.145224191Z", "out of range"),
        ("0000-01-01T00:00:00Z", "out of range"),
        ("+010000-01-01T00:00:00Z", "out of range"),
        ("-000001-01-01T00:00:00Z", "out of range"),
        (1_768_126_530, "invalid type: integer"),
        (None, "invalid type: null"),
    ],
)
def test_timestamp_parse_refuses(value: object, why: str) -> None:
    with pytest.raises(Serialization, match=r"^Serialization error: created_at: ") as info:
        parse_timestamp(value, "created_at")
    assert why in str(info.value)


# --------------------------------------------------------------------------
# strings: serde_json's escaping
# --------------------------------------------------------------------------


def serde_escape(text: str) -> str:
    """serde_json's string escaping, written out from its rules."""
    out = ['"']
    for ch in text:
        simple = {
            '"': '\\"',
            "\\": "\\\\",
            "\b": "\\b",
            "\f": "\\f",
            "\n": "\\n",
            "\r": "\\r",
            "\t": "\\t",
        }
        if ch in simple:
            out.append(simple[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


@pytest.mark.parametrize(
    "ch", [chr(c) for c in range(0x80)] + ["\x80", "\xa0", "é", "\u2028", "\u2029", "\ufeff", "😀"]
)
def test_strings_escape_as_serde_json(core: types.SimpleNamespace, ch: str) -> None:
    text = f"a{ch}b"
    info = SessionInfo(
        core.SessionId.from_string("01KEP8VGJB8Z5CH9PBQ1FCF4Y5"),
        "Ready",
        0,
        0,
        vm_instance_id=text,
        context_variables={text: text},
        current_snapshot_id=text,
    )
    quoted = serde_escape(text)
    compact = info.to_json()
    assert f'"vm_instance_id":{quoted},' in compact
    assert f'"context_variables":{{{quoted}:{quoted}}},' in compact
    assert f'"current_snapshot_id":{quoted},' in compact
    assert f'"vm_instance_id": {quoted},' in info.to_json(indent=2)
    assert SessionInfo.from_json(compact).vm_instance_id == text


# --------------------------------------------------------------------------
# round trips, generic JSON agreement
# --------------------------------------------------------------------------



def test_any_id_form_serializes_as_the_uppercase_ulid(core: types.SimpleNamespace) -> None:
    text = "01KEP8VGJB8Z5CH9PBQ1FCF4Y5"
    for sid in (core.SessionId.from_string(text), text.lower(), text):
        assert SessionInfo(sid, "Ready", 0, 0).to_dict()["id"] == text
        assert SessionInfo(sid, "Ready", 0, 0).to_json().startswith(f'{{"id":"{text}",')


def test_context_variables_are_sorted_by_key(core: types.SimpleNamespace) -> None:
    sid = core.SessionId.from_string("01KEP8VGJB8Z5CH9PBQ1FCF4Y5")
    info = SessionInfo(
        sid, "Ready", 0, 0, context_variables={"b": "1", "a": "2", "é": "3", "Z": "4"}
    )
    assert '"context_variables":{"Z":"4","a":"2","b":"1","é":"3"}' in info.to_json()
    back = SessionInfo.from_json(info.to_json().replace('{"Z":"4","a":"2"', '{"a":"2","Z":"4"'))
    assert list(back.context_variables) == ["Z", "a", "b", "é"]


def test_parse_accepts_what_the_crate_may_write(core: types.SimpleNamespace) -> None:
    doc = json.loads(golden("session_frac3.json"))
    # a lowercase ULID, fields in another order, whitespace anywhere
    doc["id"] = doc["id"].lower()
    reordered = dict(reversed(list(doc.items())))
    text = json.dumps(reordered, indent=7)
    info = SessionInfo.from_json(text)
    assert str(info.id) == "01KEP8VGJB8Z5CH9PBQ1FCF4Y6"
    assert info.to_json() == golden("session_frac3.json")


def test_recursion_depth_wins_over_the_budgets_copy() -> None:
    # The crate keeps the depth twice and update_budget can make them
    # differ; rlm_fast keeps one (SPEC 4.8): recursion_depth.
    doc = json.loads(golden("session_frac3.json"))
    doc["budget_status"]["current_recursion_depth"] = 7
    info = SessionInfo.from_json(json.dumps(doc))
    assert info.recursion_depth == 2
    assert info.budget_status.current_recursion_depth == 2


@pytest.mark.parametrize("indent", [0, 1, 4])
def test_other_indents(indent: int) -> None:
    info = SessionInfo.from_json(golden("session_pretty.json"))
    text = info.to_json(indent=indent)
    assert text == json.dumps(
        json.loads(golden("session_pretty.json")), ensure_ascii=False, indent=indent
    )
    assert '"context_variables": {\n' in text


@pytest.mark.parametrize(
    "indent, exc", [(-1, ValueError), ("2", TypeError), (True, TypeError), (2.0, TypeError)]
)
def test_bad_indent(indent: object, exc: type[Exception]) -> None:
    info = SessionInfo.from_json(golden("session_frac0.json"))
    with pytest.raises(exc):
        info.to_json(indent=indent)  # type: ignore[arg-type]
    with pytest.raises(exc):
        BudgetStatus().to_json(indent=indent)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# malformed documents
# --------------------------------------------------------------------------


def doc_with(path: str, value: object) -> str:
    """The frac3 golden with one field (a.b for nested) set, or removed
    when value is REMOVE."""
    doc = json.loads(golden("session_frac3.json"))
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is REMOVE:
        del target[last]
    else:
        target[last] = value
    return json.dumps(doc, ensure_ascii=False)


REMOVE = object()


@pytest.mark.parametrize("field", INFO_FIELDS)
def test_missing_field(field: str) -> None:
    with pytest.raises(Serialization, match=f"missing field `{field}`"):
        SessionInfo.from_json(doc_with(field, REMOVE))


@pytest.mark.parametrize("field", BUDGET_FIELDS)
def test_missing_budget_field(field: str) -> None:
    with pytest.raises(Serialization, match=f"budget_status: missing field `{field}`"):
        SessionInfo.from_json(doc_with(f"budget_status.{field}", REMOVE))
    with pytest.raises(Serialization, match=f"missing field `{field}`"):
        BudgetStatus.from_json(json.dumps({k: 1 for k in BUDGET_FIELDS if k != field}))


@pytest.mark.parametrize("path", ["extra", "budget_status.extra"])
def test_unknown_field(path: str) -> None:
    with pytest.raises(Serialization, match='unknown field "extra"'):
        SessionInfo.from_json(doc_with(path, 1))


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("id", 123, "id: invalid type: integer `123`"),
        ("id", "not-a-ulid", 'id: string "not-a-ulid" is not a ULID'),
        ("id", "01KEP8VGJB8Z5CH9PBQ1FCF4YI", "is not a ULID"),
        ("id", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "is not a ULID"),
        ("id", "01KEP8VGJB8Z5CH9PBQ1FCF4Y", "is not a ULID"),
        ("state", "ready", 'state: unknown variant string "ready"'),
        ("state", "Running", "state: unknown variant"),
        ("state", 1, "state: invalid type: integer"),
        ("state", None, "state: invalid type: null"),
        ("created_at", "yesterday", 'created_at: string "yesterday" is not an RFC 3339'),
        ("expires_at", 0, "expires_at: invalid type: integer"),
        ("extension_count", "1", 'extension_count: invalid type: string "1", expected u64'),
        ("extension_count", True, "extension_count: invalid type: boolean `true`, expected u64"),
        ("extension_count", False, "extension_count: invalid type: boolean `false`"),
        ("extension_count", -1, "extension_count: -1 is out of range for u64"),
        ("extension_count", 2**64, "extension_count: 18446744073709551616 is out of range"),
        ("extension_count", 10**40, "extension_count: an int of 133 bits is out of range"),
        ("extension_count", -(10**40), "extension_count: -an int of 133 bits is out of range"),
        ("extension_count", 1.0, "extension_count: invalid type: floating point `1.0`"),
        ("extension_count", None, "extension_count: invalid type: null"),
        ("recursion_depth", [], "recursion_depth: invalid type: a sequence"),
        ("budget_status", None, "budget_status: invalid type: null, expected a JSON object"),
        ("budget_status", [1, 2], "budget_status: invalid type: a sequence"),
        ("budget_status.tokens_used", True, "budget_status.tokens_used: invalid type: boolean"),
        ("budget_status.token_budget", -5, "budget_status.token_budget: -5 is out of range"),
        ("budget_status.current_recursion_depth", "0", "budget_status.current_recursion_depth"),
        ("vm_instance_id", 5, "vm_instance_id: invalid type: integer `5`, expected a string"),
        ("vm_instance_id", {}, "vm_instance_id: invalid type: a map"),
        ("context_variables", [], "context_variables: invalid type: a sequence"),
        ("context_variables", None, "context_variables: invalid type: null"),
        ("context_variables", {"k": 1}, 'context_variables\\[string "k"\\]: invalid type: integer'),
        ("context_variables", {"k": None}, "context_variables.* invalid type: null"),
        ("current_snapshot_id", False, "current_snapshot_id: invalid type: boolean"),
        ("snapshot_count", "3", "snapshot_count: invalid type: string"),
    ],
)
def test_wrong_value(path: str, value: object, message: str) -> None:
    with pytest.raises(Serialization, match=message):
        SessionInfo.from_json(doc_with(path, value))
    with pytest.raises(Serialization, match=message):
        SessionInfo.from_dict(json.loads(doc_with(path, value)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "invalid JSON"),
        ("{", "invalid JSON"),
        ("nul", "invalid JSON"),
        ("[1, 2]", "SessionInfo: invalid type: a sequence, expected a JSON object"),
        ("null", "SessionInfo: invalid type: null"),
        ('"text"', "SessionInfo: invalid type: string"),
        ("NaN", "NaN is not a JSON value"),
        ('{"a": Infinity}', "Infinity is not a JSON value"),
        ("\ufeff{}", "invalid JSON"),
        ("{}", "SessionInfo: missing field `id`"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
        ("[1" + "0" * 5000 + "]", "invalid JSON: Exceeds the limit"),
    ],
)
def test_not_a_session_document(text: str, message: str) -> None:
    with pytest.raises(Serialization, match=message):
        SessionInfo.from_json(text)


def test_numbers_past_pythons_digit_limit() -> None:
    doc = json.loads(golden("session_frac3.json"))
    with pytest.raises(Serialization, match="snapshot_count: an int of 16610 bits is out of range"):
        SessionInfo.from_dict({**doc, "snapshot_count": 10**5000})
    with pytest.raises(Serialization, match="invalid JSON: Exceeds the limit"):
        SessionInfo.from_json(
            golden("session_frac3.json").replace(":1500,", ":1" + "0" * 5000 + ",")
        )


def test_trailing_garbage_and_duplicate_keys() -> None:
    good = golden("session_frac3.json")
    with pytest.raises(Serialization, match="invalid JSON: Extra data"):
        SessionInfo.from_json(good + "x")
    with pytest.raises(Serialization, match='duplicate field "state"'):
        SessionInfo.from_json(good.replace('"state":"Ready"', '"state":"Ready","state":"Paused"'))
    with pytest.raises(Serialization, match='duplicate field "tokens_used"'):
        SessionInfo.from_json(good.replace('"tokens_used":1500', '"tokens_used":1,"tokens_used":2'))
    with pytest.raises(Serialization, match='duplicate field "k"'):
        SessionInfo.from_json(
            good.replace('"context_variables":{}', '"context_variables":{"k":"a","k":"b"}')
        )


def test_strings_that_are_not_utf8() -> None:
    good = golden("session_frac3.json")
    # a lone surrogate escape: serde_json refuses it, so do we
    with pytest.raises(Serialization, match="vm_instance_id: not valid UTF-8"):
        SessionInfo.from_json(good.replace('"vm-abc123"', '"vm-\\ud800"'))
    with pytest.raises(Serialization, match="context_variables key: not valid UTF-8"):
        SessionInfo.from_json(
            good.replace('"context_variables":{}', '"context_variables":{"\\udfff":"v"}')
        )
    # bytes must be UTF-8
    with pytest.raises(Serialization, match="invalid UTF-8"):
        SessionInfo.from_json(good.encode("utf-8").replace(b"vm-abc123", b"vm-\xff"))
    # a proper pair is one character
    info = SessionInfo.from_json(good.replace('"vm-abc123"', '"\\ud83d\\ude00"'))
    assert info.vm_instance_id == "😀"


def test_from_json_needs_text() -> None:
    with pytest.raises(TypeError):
        SessionInfo.from_json(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        BudgetStatus.from_json(None)  # type: ignore[arg-type]


def test_serialization_error_is_the_crate_variant() -> None:
    with pytest.raises(Serialization) as info:
        SessionInfo.from_json("{")
    err = info.value
    assert isinstance(err, rlm_fast.RlmError)
    assert str(err).startswith("Serialization error: invalid JSON: ")
    assert err.to_mcp_error()["code"] == -32000


def test_budget_and_stats_refusals() -> None:
    good = json.loads(golden("budget.json"))
    with pytest.raises(Serialization, match="tokens_used: invalid type: boolean"):
        BudgetStatus.from_dict({**good, "tokens_used": True})
    with pytest.raises(Serialization, match="token_budget: 18446744073709551616 is out of range"):
        BudgetStatus.from_dict({**good, "token_budget": 2**64})
    with pytest.raises(Serialization, match='unknown field "x"'):
        BudgetStatus.from_dict({**good, "x": 1})
    with pytest.raises(Serialization, match="BudgetStatus: invalid type: a sequence"):
        BudgetStatus.from_json("[]")
    stats = json.loads(golden("stats.json"))
    with pytest.raises(Serialization, match="missing field `total_sessions_expired`"):
        SessionStats.from_dict({k: v for k, v in stats.items() if k != "total_sessions_expired"})
    with pytest.raises(Serialization, match="active_sessions: invalid type: string"):
        SessionStats.from_json(json.dumps({**stats, "active_sessions": "6"}))


# --------------------------------------------------------------------------
# errors as MCP JSON
# --------------------------------------------------------------------------

SID = "01KEP8VGJB8Z5CH9PBQ1FCF4Y5"
MCP_CASES: list[tuple[errors.RlmError, str]] = [
    (
        errors.SessionNotFound(rlm_fast.SessionId.from_string(SID)),
        f'{{"code":-32001,"message":"Session not found: {SID}"}}',
    ),
    (
        errors.TokenBudgetExceeded(150, 100),
        '{"code":-32010,"message":"Token budget exceeded: used 150 of 100 tokens"}',
    ),
    (
        errors.Serialization('bad "doc"'),
        '{"code":-32000,"message":"Serialization error: bad \\"doc\\""}',
    ),
    (
        errors.ExecutionFailed("boom", None, "out ☕", "err\n"),
        '{"code":-32020,"message":"Code execution failed: boom",'
        '"data":{"exit_code":null,"stdout":"out ☕","stderr":"err\\n"}}',
    ),
    (
        errors.KgEscalationRequired(["foo", "bar"], "approve", "ctx"),
        '{"code":-32031,"message":"KG validation requires user approval for terms: '
        '[\\"foo\\", \\"bar\\"]",'
        '"data":{"unknown_terms":["foo","bar"],"suggested_action":"approve","context":"ctx"}}',
    ),
    (
        errors.OutputTooLarge(70000, 65536, "/tmp/out.txt"),
        '{"code":-32000,"message":"Output exceeds inline limit (70000 > 65536 bytes), '
        'streamed to /tmp/out.txt","data":{"size":70000,"limit":65536,"file_path":"/tmp/out.txt"}}',
    ),
]


@pytest.mark.parametrize("err, text", MCP_CASES, ids=[type(e).__name__ for e, _ in MCP_CASES])
def test_mcp_error_json(err: errors.RlmError, text: str) -> None:
    mcp = err.to_mcp_error()
    # serde_json's compact text of the crate's McpError, and back
    assert json.dumps(mcp, ensure_ascii=False, separators=(",", ":")) == text
    back = json.loads(json.dumps(mcp))
    assert back == mcp
    assert list(back) == (["code", "message", "data"] if "data" in mcp else ["code", "message"])


VARIANT_NAMES = [
    name
    for name in errors.__all__
    if isinstance(getattr(errors, name), type)
    and issubclass(getattr(errors, name), errors.RlmError)
    and name != "RlmError"
]


def test_every_variant_is_checked() -> None:
    assert len(VARIANT_NAMES) == 36  # SPEC 5's list


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_mcp_data_omitted_unless_the_variant_has_some(name: str) -> None:
    cls = getattr(errors, name)
    args = {
        "session_id": rlm_fast.SessionId.from_string(SID),
        "unknown_terms": ["t"],
        "tried": ["docker"],
    }
    err = cls(*(args.get(n, 1 if n in _INT_FIELDS else "x") for n in cls._fields))
    mcp = err.to_mcp_error()
    assert json.loads(json.dumps(mcp)) == mcp
    has_data = name in ("ExecutionFailed", "KgEscalationRequired", "OutputTooLarge")
    assert ("data" in mcp) is has_data
    assert set(mcp) == ({"code", "message", "data"} if has_data else {"code", "message"})
    assert mcp["code"] == err.code and mcp["message"] == str(err)


_INT_FIELDS = {
    "max",
    "used",
    "budget",
    "used_ms",
    "budget_ms",
    "depth",
    "max_depth",
    "exit_code",
    "timeout_ms",
    "pool_size",
    "overflow_count",
    "max_overflow",
    "size",
    "limit",
    "attempts",
}
