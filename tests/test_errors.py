"""rlm_fast.errors: the crate's RlmError variants, their Display texts, MCP codes
and data, classifications, builtin bases, pickling and token escaping."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

import rlm_fast.errors as errors
from rlm_fast.errors import (
    ConfigError,
    ExecutionFailed,
    InvalidSessionToken,
    Io,
    KgEscalationRequired,
    KgValidationFailed,
    NoBackendAvailable,
    RlmError,
    SessionNotFound,
    _rust_debug_list,
    _rust_debug_str,
)

SID = "01JABCDEFGHJKMNPQRSTVWXYZ0"

# name -> (positional field values, field names, Display text, MCP code)
VARIANTS: dict[str, tuple[tuple[Any, ...], tuple[str, ...], str, int]] = {
    "SessionNotFound": ((SID,), ("session_id",), f"Session not found: {SID}", -32001),
    "SessionExpired": ((SID,), ("session_id",), f"Session expired: {SID}", -32002),
    "InvalidSessionState": (
        (SID, "Terminated", "assign_vm"),
        ("session_id", "state", "operation"),
        f"Session {SID} is in invalid state Terminated for operation assign_vm",
        -32000,
    ),
    "MaxExtensionsReached": (
        (SID, 3),
        ("session_id", "max"),
        f"Session {SID} has reached maximum extensions (3)",
        -32000,
    ),
    "TokenBudgetExceeded": (
        (150, 100),
        ("used", "budget"),
        "Token budget exceeded: used 150 of 100 tokens",
        -32010,
    ),
    "TimeBudgetExceeded": (
        (301, 300),
        ("used_ms", "budget_ms"),
        "Time budget exceeded: used 301ms of 300ms",
        -32011,
    ),
    "RecursionDepthExceeded": (
        (11, 10),
        ("depth", "max_depth"),
        "Recursion depth limit exceeded: 11 >= 10",
        -32012,
    ),
    "ExecutionFailed": (
        ("boom", 2, "out", "err"),
        ("message", "exit_code", "stdout", "stderr"),
        "Code execution failed: boom",
        -32020,
    ),
    "CommandParseFailed": (
        ("no code block",),
        ("message",),
        "Failed to parse command from LLM output: no code block",
        -32700,
    ),
    "ExecutionTimeout": ((5000,), ("timeout_ms",), "Execution timed out after 5000ms", -32021),
    "VmCrashed": (("kernel panic",), ("message",), "VM crashed: kernel panic", -32022),
    "KgValidationFailed": (
        (["foo", "bar"],),
        ("unknown_terms",),
        'KG validation failed: unknown terms ["foo", "bar"]',
        -32030,
    ),
    "KgEscalationRequired": (
        (["foo", "bar"], "approve", "testing"),
        ("unknown_terms", "suggested_action", "context"),
        'KG validation requires user approval for terms: ["foo", "bar"]',
        -32031,
    ),
    "SnapshotNotFound": (("snap-1",), ("snapshot_id",), "Snapshot not found: snap-1", -32040),
    "MaxSnapshotsReached": (
        (10,),
        ("max",),
        "Maximum snapshots (10) reached for session",
        -32000,
    ),
    "SnapshotCreationFailed": (
        ("disk full",),
        ("message",),
        "Failed to create snapshot: disk full",
        -32000,
    ),
    "SnapshotRestoreFailed": (
        ("corrupt",),
        ("message",),
        "Failed to restore snapshot: corrupt",
        -32000,
    ),
    "NoBackendAvailable": (
        (["firecracker", "docker"],),
        ("tried",),
        'No execution backend available. Tried: ["firecracker", "docker"]',
        -32050,
    ),
    "BackendInitFailed": (
        ("docker", "no socket"),
        ("backend", "message"),
        "Failed to initialize docker backend: no socket",
        -32000,
    ),
    "PoolExhausted": (
        (4, 3, 3),
        ("pool_size", "overflow_count", "max_overflow"),
        "VM pool exhausted: all 4 VMs busy, overflow at capacity (3/3)",
        -32000,
    ),
    "VmAllocationTimeout": (
        (500,),
        ("timeout_ms",),
        "VM allocation timed out after 500ms",
        -32000,
    ),
    "DnsBlocked": (
        ("evil.example",),
        ("domain",),
        "DNS query blocked: evil.example not in allowlist",
        -32060,
    ),
    "NetworkBlocked": (
        ("http://x.example/",),
        ("url",),
        "Network request blocked: http://x.example/",
        -32000,
    ),
    "LlmCallFailed": (("rate limited",), ("message",), "LLM call failed: rate limited", -32000),
    "LlmBridgeAuthFailed": (
        (),
        (),
        "LLM bridge authentication failed: invalid session token",
        -32000,
    ),
    "InvalidSessionToken": (("bad-token",), ("token",), "Invalid session token: bad-token", -32000),
    "BatchSizeTooLarge": ((20, 10), ("size", "max"), "Batch size 20 exceeds maximum 10", -32000),
    "OutputTooLarge": (
        (70000, 65536, "/tmp/out.txt"),
        ("size", "limit", "file_path"),
        "Output exceeds inline limit (70000 > 65536 bytes), streamed to /tmp/out.txt",
        -32000,
    ),
    "AutoRemediationFailed": (
        (3, "gave up"),
        ("attempts", "message"),
        "Auto-remediation failed after 3 attempts: gave up",
        -32000,
    ),
    "AlertWebhookFailed": (
        ("503",),
        ("message",),
        "Failed to send alert to webhook: 503",
        -32000,
    ),
    "ConfigError": (("bad",), ("message",), "Configuration error: bad", -32602),
    "NotSupported": (
        ("local", "create_snapshot"),
        ("backend", "op"),
        "Backend 'local' does not support operation 'create_snapshot'",
        -32070,
    ),
    "Internal": (("oops",), ("message",), "Internal error: oops", -32000),
    "Cancelled": ((), (), "Operation cancelled", -32099),
    "Io": (("No such file",), ("message",), "IO error: No such file", -32000),
    "Serialization": (
        ("expected value",),
        ("message",),
        "Serialization error: expected value",
        -32000,
    ),
}

# The variant names of SPEC section 5, in its order.
SPEC_VARIANTS = [
    "SessionNotFound", "SessionExpired", "InvalidSessionState", "MaxExtensionsReached",
    "TokenBudgetExceeded", "TimeBudgetExceeded", "RecursionDepthExceeded",
    "ExecutionFailed", "CommandParseFailed", "ExecutionTimeout", "VmCrashed",
    "KgValidationFailed", "KgEscalationRequired", "SnapshotNotFound",
    "MaxSnapshotsReached", "SnapshotCreationFailed", "SnapshotRestoreFailed",
    "NoBackendAvailable", "BackendInitFailed", "PoolExhausted", "VmAllocationTimeout",
    "DnsBlocked", "NetworkBlocked", "LlmCallFailed", "LlmBridgeAuthFailed",
    "InvalidSessionToken", "BatchSizeTooLarge", "OutputTooLarge",
    "AutoRemediationFailed", "AlertWebhookFailed", "ConfigError", "NotSupported",
    "Internal", "Cancelled", "Io", "Serialization",
]  # fmt: skip

RETRYABLE = {"ExecutionTimeout", "VmAllocationTimeout", "LlmCallFailed", "AlertWebhookFailed"}
BUDGET = {"TokenBudgetExceeded", "TimeBudgetExceeded", "RecursionDepthExceeded"}
USER_ACTION = {"KgEscalationRequired", "MaxExtensionsReached", "NoBackendAvailable"}

BUILTIN_BASES: dict[str, tuple[type[BaseException], ...]] = {
    "SessionNotFound": (LookupError,),
    "InvalidSessionToken": (ValueError,),
    "ConfigError": (ValueError,),
    "ExecutionTimeout": (TimeoutError, OSError),
    "VmAllocationTimeout": (TimeoutError, OSError),
    "Io": (OSError,),
}
OTHER_BUILTINS = (LookupError, ValueError, TimeoutError, OSError)

names = pytest.mark.parametrize("name", list(VARIANTS))


def make(name: str) -> errors.RlmError:
    args = VARIANTS[name][0]
    cls = getattr(errors, name)
    err: errors.RlmError = cls(*args)
    return err


class FakeSessionId:
    """Stands in for SessionId: Display must use str(), repr must use repr()."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"SessionId({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeSessionId) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


# --- the set of names ------------------------------------------------------


def test_all_variants_exist_in_spec_order() -> None:
    assert list(VARIANTS) == SPEC_VARIANTS
    exported = [n for n in errors.__all__ if n not in ("RlmError", "McpError")]
    assert exported == SPEC_VARIANTS
    assert len(set(errors.__all__)) == len(errors.__all__)


@names
def test_variant_is_rlm_error(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, RlmError)
    assert issubclass(cls, Exception)
    assert cls.__name__ == name


@names
def test_module_is_public_path(name: str) -> None:
    assert getattr(errors, name).__module__ == "rlm_fast"
    assert RlmError.__module__ == "rlm_fast"


def test_package_reexports_every_error() -> None:
    import rlm_fast

    for name in ["RlmError", *SPEC_VARIANTS]:
        assert getattr(rlm_fast, name) is getattr(errors, name)
        assert name in rlm_fast.__all__


# --- construction and fields -----------------------------------------------


@names
def test_display_text(name: str) -> None:
    assert str(make(name)) == VARIANTS[name][2]


@names
def test_positional_and_keyword_construction(name: str) -> None:
    values, fields, _, _ = VARIANTS[name]
    cls = getattr(errors, name)
    by_position = cls(*values)
    by_name = cls(**dict(zip(fields, values)))
    for field, value in zip(fields, values):
        assert getattr(by_position, field) == value
        assert getattr(by_name, field) == value
    assert by_position.args == by_name.args == tuple(values)
    assert str(by_position) == str(by_name)


@names
def test_missing_and_extra_arguments_are_type_errors(name: str) -> None:
    values, fields, _, _ = VARIANTS[name]
    cls = getattr(errors, name)
    required = 1 if name == "ExecutionFailed" else len(values)
    if required:
        with pytest.raises(TypeError):
            cls(*values[: required - 1])
    with pytest.raises(TypeError):
        cls(*values, "one too many")
    with pytest.raises(TypeError):
        cls(*values, no_such_field=1)


def test_execution_failed_optional_fields_default_to_none() -> None:
    err = ExecutionFailed("boom")
    assert (err.message, err.exit_code, err.stdout, err.stderr) == ("boom", None, None, None)
    assert ExecutionFailed(message="m", stderr="e").stderr == "e"
    assert ExecutionFailed(message="m", stderr="e").stdout is None


def test_session_id_kept_as_given_and_displayed_with_str() -> None:
    sid: Any = FakeSessionId("01JXYZ")
    err = SessionNotFound(session_id=sid)
    assert err.session_id is sid
    assert str(err) == "Session not found: 01JXYZ"
    assert repr(err) == "SessionNotFound(session_id=SessionId('01JXYZ'))"
    state = errors.InvalidSessionState(sid, "Terminated", "extend_session")
    assert str(state) == (
        "Session 01JXYZ is in invalid state Terminated for operation extend_session"
    )


def test_session_id_object_of_the_package() -> None:
    from rlm_fast import SessionId

    sid = SessionId.from_string(SID)
    err = errors.SessionExpired(sid)
    assert err.session_id is sid
    assert str(err) == f"Session expired: {SID}"
    assert repr(err) == f"SessionExpired(session_id={sid!r})"
    back = pickle.loads(pickle.dumps(err))
    assert back.session_id == sid and str(back) == str(err)


def test_term_lists_are_copied_and_a_bare_str_is_refused() -> None:
    terms = ["a"]
    err = KgValidationFailed(terms)
    terms.append("b")
    assert err.unknown_terms == ["a"]
    assert KgValidationFailed(("x", "y")).unknown_terms == ["x", "y"]
    for cls in (KgValidationFailed, NoBackendAvailable):
        with pytest.raises(TypeError):
            cls("abc")
    with pytest.raises(TypeError):
        KgEscalationRequired("abc", "approve", "ctx")


# --- MCP codes and data ----------------------------------------------------


@names
def test_mcp_code(name: str) -> None:
    err = make(name)
    assert err.code == VARIANTS[name][3]
    assert getattr(errors, name).code == VARIANTS[name][3]


@names
def test_to_mcp_error(name: str) -> None:
    err = make(name)
    mcp = err.to_mcp_error()
    all_data: dict[str, dict[str, object]] = {
        "KgEscalationRequired": {
            "unknown_terms": ["foo", "bar"],
            "suggested_action": "approve",
            "context": "testing",
        },
        "ExecutionFailed": {"exit_code": 2, "stdout": "out", "stderr": "err"},
        "OutputTooLarge": {"size": 70000, "limit": 65536, "file_path": "/tmp/out.txt"},
    }
    expected_data = all_data.get(name)
    if expected_data is None:
        assert mcp == {"code": VARIANTS[name][3], "message": VARIANTS[name][2]}
        assert list(mcp) == ["code", "message"]
    else:
        assert mcp == {
            "code": VARIANTS[name][3],
            "message": VARIANTS[name][2],
            "data": expected_data,
        }
        assert list(mcp) == ["code", "message", "data"]
        assert list(mcp["data"]) == list(expected_data)  # the crate's key order


def test_execution_failed_data_keeps_nones() -> None:
    assert ExecutionFailed("boom").to_mcp_error()["data"] == {
        "exit_code": None,
        "stdout": None,
        "stderr": None,
    }


def test_mcp_data_list_is_a_copy() -> None:
    err = KgEscalationRequired(["a"], "approve", "ctx")
    data = err.to_mcp_error()["data"]
    terms = data["unknown_terms"]
    assert isinstance(terms, list)
    terms.append("b")
    assert err.unknown_terms == ["a"]


# --- classifications -------------------------------------------------------


@names
def test_classifications(name: str) -> None:
    err = make(name)
    assert err.is_retryable() is (name in RETRYABLE)
    assert err.is_budget_exhausted() is (name in BUDGET)
    assert err.requires_user_action() is (name in USER_ACTION)


# --- builtin bases ---------------------------------------------------------


@names
def test_builtin_bases(name: str) -> None:
    err = make(name)
    wanted = BUILTIN_BASES.get(name, ())
    for base in OTHER_BUILTINS:
        assert isinstance(err, base) is (base in wanted), base


def test_session_not_found_is_caught_as_lookup_error() -> None:
    with pytest.raises(LookupError):
        raise SessionNotFound(SID)
    assert not isinstance(SessionNotFound(SID), KeyError)


def test_io_is_an_oserror_with_the_crate_text() -> None:
    err = Io("disk gone")
    assert isinstance(err, OSError)
    assert str(err) == "IO error: disk gone"
    assert err.args == ("disk gone",)
    assert err.errno is None and err.strerror is None and err.filename is None
    kw = Io(message="disk gone")
    assert kw.message == "disk gone" and str(kw) == "IO error: disk gone"
    with pytest.raises(OSError) as info:
        raise err
    assert info.value is err


def test_timeouts_are_timeout_errors_with_the_crate_text() -> None:
    err = errors.ExecutionTimeout(timeout_ms=1000)
    assert str(err) == "Execution timed out after 1000ms"
    assert err.args == (1000,)
    assert err.errno is None
    assert err.is_retryable()


# --- repr and pickling -----------------------------------------------------


@names
def test_repr(name: str) -> None:
    values, fields, _, _ = VARIANTS[name]
    inner = ", ".join(f"{f}={v!r}" for f, v in zip(fields, values))
    assert repr(make(name)) == f"{name}({inner})"


def test_repr_examples() -> None:
    assert repr(errors.Cancelled()) == "Cancelled()"
    assert repr(ExecutionFailed("m")) == (
        "ExecutionFailed(message='m', exit_code=None, stdout=None, stderr=None)"
    )


@names
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(name: str, protocol: int) -> None:
    err = make(name)
    data = pickle.dumps(err, protocol=protocol)
    back = pickle.loads(data)
    assert type(back) is type(err)
    for field in VARIANTS[name][1]:
        assert getattr(back, field) == getattr(err, field)
    assert str(back) == str(err)
    assert back.args == err.args
    assert back.to_mcp_error() == err.to_mcp_error()


def test_pickle_names_the_public_module() -> None:
    data = pickle.dumps(SessionNotFound(SID), protocol=0)
    assert b"rlm_fast" in data
    assert b"rlm_fast.errors" not in data


def test_pickle_keeps_extra_attributes_and_notes() -> None:
    err = errors.VmCrashed("boom")
    err.extra = 42  # type: ignore[attr-defined]
    setattr(err, "__notes__", ["while restoring"])  # what add_note() (3.11+) does
    back = pickle.loads(pickle.dumps(err))
    assert back.extra == 42
    assert back.__notes__ == ["while restoring"]


def test_copy_and_deepcopy() -> None:
    err = KgEscalationRequired(["t"], "approve", "ctx")
    for clone in (copy.copy(err), copy.deepcopy(err)):
        assert type(clone) is KgEscalationRequired
        assert clone.unknown_terms == ["t"] and clone.context == "ctx"
        assert str(clone) == str(err)


def test_pickle_of_oserror_variants() -> None:
    for err in (Io("x"), errors.ExecutionTimeout(7), errors.VmAllocationTimeout(9)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert back.args == err.args


# --- the base class --------------------------------------------------------


def test_base_class_behaves_like_a_plain_exception() -> None:
    err = RlmError("something")
    assert str(err) == "something"
    assert repr(err) == "RlmError('something')"
    assert err.code == -32000
    assert err.to_mcp_error() == {"code": -32000, "message": "something"}
    assert not (err.is_retryable() or err.is_budget_exhausted() or err.requires_user_action())
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RlmError and back.args == ("something",)


def test_every_variant_is_caught_as_rlm_error() -> None:
    for name in VARIANTS:
        with pytest.raises(RlmError):
            raise make(name)


# --- token escaping --------------------------------------------------------


def test_token_plain_text_is_unchanged() -> None:
    err = InvalidSessionToken("not-a-ulid")
    assert err.token == "not-a-ulid"
    assert str(err) == "Invalid session token: not-a-ulid"
    assert err.args == ("not-a-ulid",)


def test_token_is_cut_at_64_characters_with_an_ellipsis() -> None:
    exactly = "A" * 64
    assert InvalidSessionToken(exactly).token == exactly
    long = "B" * 65
    assert InvalidSessionToken(long).token == "B" * 64 + "\u2026"
    huge = "C" * 10_000
    err = InvalidSessionToken(huge)
    assert err.token == "C" * 64 + "…"
    assert str(err) == "Invalid session token: " + "C" * 64 + "…"


def test_token_cut_counts_characters_before_escaping() -> None:
    # 64 newlines: every one is echoed (as \n), and nothing is cut.
    assert InvalidSessionToken("\n" * 64).token == "\\n" * 64
    assert InvalidSessionToken("\n" * 65).token == "\\n" * 64 + "…"


def test_token_control_characters_are_escaped_as_repr_does() -> None:
    raw = "a\nb\tc\rd\x00e\x1bf\x7fg"
    err = InvalidSessionToken(raw)
    assert err.token == "a\\nb\\tc\\rd\\x00e\\x1bf\\x7fg"
    assert "\n" not in str(err) and "\x1b" not in str(err)


def test_token_backslash_is_doubled_and_quotes_are_left_alone() -> None:
    assert InvalidSessionToken("a\\b").token == "a\\\\b"
    assert InvalidSessionToken("it's").token == "it's"
    assert InvalidSessionToken('say "hi"').token == 'say "hi"'
    assert InvalidSessionToken("both ' and \"").token == "both ' and \""


def test_token_non_ascii() -> None:
    assert InvalidSessionToken("café").token == "café"  # printable: kept
    assert InvalidSessionToken("a\u200bb").token == "a\\u200bb"  # format char
    assert InvalidSessionToken("\U0001f600").token == "\U0001f600"
    assert InvalidSessionToken("x\U000e0001").token == "x\\U000e0001"


def test_token_lone_surrogates_are_escaped() -> None:
    err = InvalidSessionToken("ab\ud800cd\udfff")
    assert err.token == "ab\\ud800cd\\udfff"
    str(err).encode("utf-8")  # the message itself is always valid UTF-8


def test_token_non_str_uses_repr() -> None:
    assert InvalidSessionToken(123).token == "123"
    assert InvalidSessionToken(None).token == "None"
    assert InvalidSessionToken(b"\x00ab").token == "b'\\\\x00ab'"
    long = InvalidSessionToken(list(range(100))).token
    assert long == repr(list(range(100)))[:64] + "…"


def test_token_with_a_failing_repr() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    token = InvalidSessionToken(Hostile()).token
    # Falls back to object.__repr__ (cut at 64 characters like any token).
    assert token.startswith("<test_errors.test_token_with_a_failing_repr.<locals>.Hostile")
    assert token.endswith("…")


def test_token_str_subclass_is_read_as_plain_str() -> None:
    class Sneaky(str):
        def __getitem__(self, key: Any) -> str:
            raise AssertionError("user code ran")

        def __str__(self) -> str:
            raise AssertionError("user code ran")

    err = InvalidSessionToken(Sneaky("abc"))
    assert err.token == "abc"
    assert type(err.token) is str


def test_token_attribute_never_holds_the_raw_input() -> None:
    raw = "line1\nline2" + "z" * 100
    err = InvalidSessionToken(token=raw)
    assert err.token != raw
    assert "\n" not in err.token
    assert raw not in str(err) and raw not in repr(err)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_token_pickle_does_not_escape_twice(protocol: int) -> None:
    err = InvalidSessionToken("a\\b\n\ud800" + "q" * 70)
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is InvalidSessionToken
    assert back.token == err.token
    assert str(back) == str(err)
    assert back.args == err.args
    assert copy.deepcopy(err).token == err.token


def test_token_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Invalid session token: x"):
        raise InvalidSessionToken("x")


def test_config_error_is_a_value_error() -> None:
    err = ConfigError(message="nope")
    assert isinstance(err, ValueError)
    assert err.message == "nope"
    assert str(err) == "Configuration error: nope"


# --- Rust {:?} of Vec<String> ----------------------------------------------


def test_rust_debug_list_basic() -> None:
    assert _rust_debug_list([]) == "[]"
    assert _rust_debug_list(["foo"]) == '["foo"]'
    assert _rust_debug_list(["foo", "bar"]) == '["foo", "bar"]'
    assert _rust_debug_list([""]) == '[""]'


@pytest.mark.parametrize(
    ("text", "debug"),
    [
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("it's", '"it\'s"'),  # Rust does not escape ' inside a str
        ("a\nb", '"a\\nb"'),
        ("a\tb", '"a\\tb"'),
        ("a\rb", '"a\\rb"'),
        ("a\0b", '"a\\0b"'),
        ("\x1b[0m", '"\\u{1b}[0m"'),
        ("\x7f", '"\\u{7f}"'),
        ("\x01", '"\\u{1}"'),
        ("nbsp\u00a0", '"nbsp\\u{a0}"'),  # Zs other than space is escaped
        ("zw\u200b", '"zw\\u{200b}"'),
        ("e\u0301", '"e\\u{301}"'),  # combining mark (Grapheme_Extend)
        ("\u200c", '"\\u{200c}"'),
        ("café", '"café"'),
        ("日本", '"日本"'),
        ("\U0001f600", '"\U0001f600"'),
        ("\ud800", '"\\u{d800}"'),  # lone surrogate: cannot occur in Rust
        ("\U000e0001", '"\\u{e0001}"'),
        ("plain text 123", '"plain text 123"'),
    ],
)
def test_rust_debug_str(text: str, debug: str) -> None:
    assert _rust_debug_str(text) == debug


def test_kg_display_escapes_like_rust() -> None:
    err = KgValidationFailed(['a"b', "c\\d", "e\nf"])
    assert str(err) == 'KG validation failed: unknown terms ["a\\"b", "c\\\\d", "e\\nf"]'
    none = NoBackendAvailable([])
    assert str(none) == "No execution backend available. Tried: []"
