"""Exceptions of rlm_fast: ``RlmError`` and one subclass per variant of the Rust
crate's ``terraphim_rlm::RlmError``, with the crate's Display texts, MCP codes
and classifications. Defined once here and raised by both cores.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any, ClassVar, TypedDict

# A session id as an error takes it: either core's SessionId, or its string
# (errors sit below the cores, so they name no core's class).
SessionIdLike = Any

__all__ = (
    "McpError",
    "RlmError",
    "SessionNotFound",
    "SessionExpired",
    "InvalidSessionState",
    "MaxExtensionsReached",
    "TokenBudgetExceeded",
    "TimeBudgetExceeded",
    "RecursionDepthExceeded",
    "ExecutionFailed",
    "CommandParseFailed",
    "ExecutionTimeout",
    "VmCrashed",
    "KgValidationFailed",
    "KgEscalationRequired",
    "SnapshotNotFound",
    "MaxSnapshotsReached",
    "SnapshotCreationFailed",
    "SnapshotRestoreFailed",
    "NoBackendAvailable",
    "BackendInitFailed",
    "PoolExhausted",
    "VmAllocationTimeout",
    "DnsBlocked",
    "NetworkBlocked",
    "LlmCallFailed",
    "LlmBridgeAuthFailed",
    "InvalidSessionToken",
    "BatchSizeTooLarge",
    "OutputTooLarge",
    "AutoRemediationFailed",
    "AlertWebhookFailed",
    "ConfigError",
    "NotSupported",
    "Internal",
    "Cancelled",
    "Io",
    "Serialization",
)


# ---------------------------------------------------------------------------
# Rust `{:?}` formatting of strings and Vec<String>
# ---------------------------------------------------------------------------

_RUST_SIMPLE_ESCAPES = {
    "\0": "\\0",
    "\t": "\\t",
    "\r": "\\r",
    "\n": "\\n",
    "\\": "\\\\",
    '"': '\\"',
}

# Unicode's Other_Grapheme_Extend code points. Together with categories Mn and
# Me they make up Grapheme_Extend, which Rust's `<str as Debug>` escapes even
# though the characters are printable (a combining mark must not attach to the
# opening quote). Python's unicodedata has no Grapheme_Extend property.
_OTHER_GRAPHEME_EXTEND = frozenset(
    [0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6]
    + [0x0D3E, 0x0D57, 0x0DCF, 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F]
    + [0xFF9E, 0xFF9F, 0x1133E, 0x11357, 0x114B0, 0x114BD, 0x115AF, 0x11930]
    + [0x1D165, *range(0x1D16E, 0x1D173), *range(0xE0020, 0xE0080)]
)


def _rust_debug_char(ch: str) -> str:
    simple = _RUST_SIMPLE_ESCAPES.get(ch)
    if simple is not None:
        return simple
    # Rust's notion of "printable" excludes exactly the Unicode categories
    # Cc Cf Cs Co Cn Zl Zp Zs (space excepted), which is also the definition
    # of str.isprintable(). Lone surrogates (Cs) cannot occur in a Rust
    # string; they get the same \u{...} form as any other unprintable char.
    if (
        not ch.isprintable()
        or unicodedata.category(ch) in ("Mn", "Me")
        or ord(ch) in _OTHER_GRAPHEME_EXTEND
    ):
        return f"\\u{{{ord(ch):x}}}"
    return ch


def _rust_debug_str(text: str) -> str:
    """Format *text* as Rust's ``format!("{:?}", text)`` does: ``"a\\"b"``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # fast path: nothing to escape
    return '"' + "".join(_rust_debug_char(ch) for ch in text) + '"'


def _rust_debug_list(items: Iterable[str]) -> str:
    """Format a list of strings as Rust's Debug of ``Vec<String>``:
    ``["foo", "bar"]``."""
    return "[" + ", ".join(_rust_debug_str(item) for item in items) + "]"


def _string_list(field: str, items: Iterable[str]) -> list[str]:
    # A bare str is iterable too; list("abc") would silently give letters.
    if isinstance(items, str):
        raise TypeError(f"{field} must be a list of str, not a str")
    return list(items)


# ---------------------------------------------------------------------------
# Echoing caller-supplied tokens
# ---------------------------------------------------------------------------

_TOKEN_ECHO_CHARS = 64


def _repr_char(ch: str) -> str:
    # repr() of a one-character string never escapes a quote (it wraps "'"
    # in double quotes and '"' in single ones), so escaping char by char
    # gives repr()'s escapes without depending on which quote repr() would
    # have picked for the whole string.
    return repr(ch)[1:-1]


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:  # an error constructor must not fail on a bad __repr__
        return object.__repr__(obj)


def _escape_token(token: object) -> str:
    """The text under which a caller's token is echoed in an error.

    For a ``str`` (a subclass is read as plain ``str``), its first 64
    characters; for anything else, the first 64 characters of its ``repr()``.
    Each character is escaped as ``repr()`` escapes it (backslash, control
    and other unprintable characters, lone surrogates), except that quotes are
    left as they are. ``"…"`` is appended when the text was cut.
    """
    text = str.__str__(token) if isinstance(token, str) else _safe_repr(token)
    head = text[:_TOKEN_ECHO_CHARS]
    if not (head.isascii() and head.isprintable() and "\\" not in head):
        head = "".join(_repr_char(ch) for ch in head)
    return head + "\u2026" if len(text) > _TOKEN_ECHO_CHARS else head


# ---------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------


class _McpErrorRequired(TypedDict):
    code: int
    message: str


class McpError(_McpErrorRequired, total=False):
    """What :meth:`RlmError.to_mcp_error` returns (the crate's ``McpError``);
    ``data`` is present only for the variants that carry extra data."""

    data: dict[str, object]


class RlmError(Exception):
    """Base class of every rlm_fast error (the crate's ``RlmError`` enum).

    Each subclass is one variant: it takes the variant's fields, positionally
    in the crate's order or by name, keeps them as attributes, and ``str()``
    gives the crate's Display text. ``RlmError`` itself behaves like a plain
    ``Exception`` and is not raised by rlm_fast.
    """

    #: The MCP (JSON-RPC) error code of the variant.
    code: ClassVar[int] = -32000

    # Field names in the crate's order; None on the base class, which keeps
    # Exception's own repr/pickling.
    _fields: ClassVar[tuple[str, ...] | None] = None
    _retryable: ClassVar[bool] = False
    _budget_exhausted: ClassVar[bool] = False
    _requires_user_action: ClassVar[bool] = False

    def is_retryable(self) -> bool:
        """True for transient failures (timeouts, LLM and webhook calls)."""
        return self._retryable

    def is_budget_exhausted(self) -> bool:
        """True for the token, time and recursion-depth budget errors."""
        return self._budget_exhausted

    def requires_user_action(self) -> bool:
        """True when only a user can resolve the error."""
        return self._requires_user_action

    def _mcp_data(self) -> dict[str, object] | None:
        return None

    def to_mcp_error(self) -> McpError:
        """The error as an MCP error object: ``{"code", "message"}`` plus
        ``"data"`` for the variants that have some."""
        error: McpError = {"code": self.code, "message": str(self)}
        data = self._mcp_data()
        if data is not None:
            error["data"] = data
        return error

    def __repr__(self) -> str:
        if self._fields is None:
            return super().__repr__()
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        if self._fields is None:
            return super().__reduce__()
        # Rebuild through the constructor from the field values (args of a
        # subclass need not match its signature, e.g. OSError's), then
        # restore any other attributes, such as __notes__.
        values = tuple(getattr(self, name) for name in self._fields)
        return (type(self), values, dict(self.__dict__))


# ---------------------------------------------------------------------------
# Session errors
# ---------------------------------------------------------------------------


class SessionNotFound(RlmError, LookupError):
    """Session not found."""

    code = -32001
    _fields = ("session_id",)

    def __init__(self, session_id: SessionIdLike) -> None:
        self.session_id = session_id
        super().__init__(session_id)

    def __str__(self) -> str:
        return f"Session not found: {self.session_id}"


class SessionExpired(RlmError):
    """Session has expired."""

    code = -32002
    _fields = ("session_id",)

    def __init__(self, session_id: SessionIdLike) -> None:
        self.session_id = session_id
        super().__init__(session_id)

    def __str__(self) -> str:
        return f"Session expired: {self.session_id}"


class InvalidSessionState(RlmError):
    """Session is in an invalid state for the requested operation."""

    _fields = ("session_id", "state", "operation")

    def __init__(self, session_id: SessionIdLike, state: str, operation: str) -> None:
        self.session_id = session_id
        self.state = state
        self.operation = operation
        super().__init__(session_id, state, operation)

    def __str__(self) -> str:
        return (
            f"Session {self.session_id} is in invalid state {self.state} "
            f"for operation {self.operation}"
        )


class MaxExtensionsReached(RlmError):
    """Maximum session extensions reached."""

    _fields = ("session_id", "max")
    _requires_user_action = True

    # `max` shadows the builtin, but it is the crate's field name.
    def __init__(self, session_id: SessionIdLike, max: int) -> None:  # noqa: A002
        self.session_id = session_id
        self.max = max
        super().__init__(session_id, max)

    def __str__(self) -> str:
        return f"Session {self.session_id} has reached maximum extensions ({self.max})"


# ---------------------------------------------------------------------------
# Budget errors
# ---------------------------------------------------------------------------


class TokenBudgetExceeded(RlmError):
    """Token budget exceeded."""

    code = -32010
    _fields = ("used", "budget")
    _budget_exhausted = True

    def __init__(self, used: int, budget: int) -> None:
        self.used = used
        self.budget = budget
        super().__init__(used, budget)

    def __str__(self) -> str:
        return f"Token budget exceeded: used {self.used} of {self.budget} tokens"


class TimeBudgetExceeded(RlmError):
    """Time budget exceeded."""

    code = -32011
    _fields = ("used_ms", "budget_ms")
    _budget_exhausted = True

    def __init__(self, used_ms: int, budget_ms: int) -> None:
        self.used_ms = used_ms
        self.budget_ms = budget_ms
        super().__init__(used_ms, budget_ms)

    def __str__(self) -> str:
        return f"Time budget exceeded: used {self.used_ms}ms of {self.budget_ms}ms"


class RecursionDepthExceeded(RlmError):
    """Recursion depth limit exceeded."""

    code = -32012
    _fields = ("depth", "max_depth")
    _budget_exhausted = True

    def __init__(self, depth: int, max_depth: int) -> None:
        self.depth = depth
        self.max_depth = max_depth
        super().__init__(depth, max_depth)

    def __str__(self) -> str:
        return f"Recursion depth limit exceeded: {self.depth} >= {self.max_depth}"


# ---------------------------------------------------------------------------
# Execution errors
# ---------------------------------------------------------------------------


class ExecutionFailed(RlmError):
    """Code execution failed."""

    code = -32020
    _fields = ("message", "exit_code", "stdout", "stderr")

    def __init__(
        self,
        message: str,
        exit_code: int | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> None:
        self.message = message
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message, exit_code, stdout, stderr)

    def __str__(self) -> str:
        return f"Code execution failed: {self.message}"

    def _mcp_data(self) -> dict[str, object]:
        return {"exit_code": self.exit_code, "stdout": self.stdout, "stderr": self.stderr}


class CommandParseFailed(RlmError):
    """Command parsing failed."""

    code = -32700
    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Failed to parse command from LLM output: {self.message}"


class ExecutionTimeout(RlmError, TimeoutError):
    """Execution timed out."""

    code = -32021
    _fields = ("timeout_ms",)
    _retryable = True

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        super().__init__(timeout_ms)

    def __str__(self) -> str:
        return f"Execution timed out after {self.timeout_ms}ms"


class VmCrashed(RlmError):
    """VM crashed or became unresponsive."""

    code = -32022
    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"VM crashed: {self.message}"


# ---------------------------------------------------------------------------
# Validation errors
# ---------------------------------------------------------------------------


class KgValidationFailed(RlmError):
    """Knowledge graph validation failed."""

    code = -32030
    _fields = ("unknown_terms",)

    def __init__(self, unknown_terms: Iterable[str]) -> None:
        self.unknown_terms = _string_list("unknown_terms", unknown_terms)
        super().__init__(self.unknown_terms)

    def __str__(self) -> str:
        return f"KG validation failed: unknown terms {_rust_debug_list(self.unknown_terms)}"


class KgEscalationRequired(RlmError):
    """KG validation requires user escalation."""

    code = -32031
    _fields = ("unknown_terms", "suggested_action", "context")
    _requires_user_action = True

    def __init__(
        self, unknown_terms: Iterable[str], suggested_action: str, context: str
    ) -> None:
        self.unknown_terms = _string_list("unknown_terms", unknown_terms)
        self.suggested_action = suggested_action
        self.context = context
        super().__init__(self.unknown_terms, suggested_action, context)

    def __str__(self) -> str:
        return (
            "KG validation requires user approval for terms: "
            f"{_rust_debug_list(self.unknown_terms)}"
        )

    def _mcp_data(self) -> dict[str, object]:
        return {
            "unknown_terms": list(self.unknown_terms),
            "suggested_action": self.suggested_action,
            "context": self.context,
        }


# ---------------------------------------------------------------------------
# Snapshot errors
# ---------------------------------------------------------------------------


class SnapshotNotFound(RlmError):
    """Snapshot not found."""

    code = -32040
    _fields = ("snapshot_id",)

    def __init__(self, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id
        super().__init__(snapshot_id)

    def __str__(self) -> str:
        return f"Snapshot not found: {self.snapshot_id}"


class MaxSnapshotsReached(RlmError):
    """Maximum snapshots per session reached."""

    _fields = ("max",)

    def __init__(self, max: int) -> None:  # noqa: A002 (the crate's field name)
        self.max = max
        super().__init__(max)

    def __str__(self) -> str:
        return f"Maximum snapshots ({self.max}) reached for session"


class SnapshotCreationFailed(RlmError):
    """Snapshot creation failed."""

    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Failed to create snapshot: {self.message}"


class SnapshotRestoreFailed(RlmError):
    """Snapshot restoration failed."""

    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Failed to restore snapshot: {self.message}"


# ---------------------------------------------------------------------------
# Backend errors
# ---------------------------------------------------------------------------


class NoBackendAvailable(RlmError):
    """No execution backend available."""

    code = -32050
    _fields = ("tried",)
    _requires_user_action = True

    def __init__(self, tried: Iterable[str]) -> None:
        self.tried = _string_list("tried", tried)
        super().__init__(self.tried)

    def __str__(self) -> str:
        return f"No execution backend available. Tried: {_rust_debug_list(self.tried)}"


class BackendInitFailed(RlmError):
    """Backend initialization failed."""

    _fields = ("backend", "message")

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        self.message = message
        super().__init__(backend, message)

    def __str__(self) -> str:
        return f"Failed to initialize {self.backend} backend: {self.message}"


class PoolExhausted(RlmError):
    """VM pool exhausted (all VMs busy, no overflow capacity)."""

    _fields = ("pool_size", "overflow_count", "max_overflow")

    def __init__(self, pool_size: int, overflow_count: int, max_overflow: int) -> None:
        self.pool_size = pool_size
        self.overflow_count = overflow_count
        self.max_overflow = max_overflow
        super().__init__(pool_size, overflow_count, max_overflow)

    def __str__(self) -> str:
        return (
            f"VM pool exhausted: all {self.pool_size} VMs busy, overflow at capacity "
            f"({self.overflow_count}/{self.max_overflow})"
        )


class VmAllocationTimeout(RlmError, TimeoutError):
    """VM allocation timed out."""

    _fields = ("timeout_ms",)
    _retryable = True

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        super().__init__(timeout_ms)

    def __str__(self) -> str:
        return f"VM allocation timed out after {self.timeout_ms}ms"


# ---------------------------------------------------------------------------
# Network/DNS errors
# ---------------------------------------------------------------------------


class DnsBlocked(RlmError):
    """DNS query blocked by allowlist."""

    code = -32060
    _fields = ("domain",)

    def __init__(self, domain: str) -> None:
        self.domain = domain
        super().__init__(domain)

    def __str__(self) -> str:
        return f"DNS query blocked: {self.domain} not in allowlist"


class NetworkBlocked(RlmError):
    """Network request blocked."""

    _fields = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(url)

    def __str__(self) -> str:
        return f"Network request blocked: {self.url}"


# ---------------------------------------------------------------------------
# LLM errors
# ---------------------------------------------------------------------------


class LlmCallFailed(RlmError):
    """LLM call failed."""

    _fields = ("message",)
    _retryable = True

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"LLM call failed: {self.message}"


class LlmBridgeAuthFailed(RlmError):
    """LLM bridge authentication failed."""

    _fields = ()

    def __init__(self) -> None:
        super().__init__()

    def __str__(self) -> str:
        return "LLM bridge authentication failed: invalid session token"


class InvalidSessionToken(RlmError, ValueError):
    """Invalid session token format.

    The constructor takes the caller's raw token (any object) and keeps only
    an escaped echo of it in ``token``: for a ``str``, its first 64 characters,
    each escaped as ``repr()`` escapes it but with quotes left as they are;
    for any other object, the same applied to its ``repr()``. ``"…"`` is
    appended when the text was cut. The raw input is never stored.
    """

    _fields = ("token",)

    def __init__(self, token: object) -> None:
        self.token: str = _escape_token(token)
        super().__init__(self.token)

    @classmethod
    def _from_escaped(cls, token: str) -> InvalidSessionToken:
        # Unpickling path: *token* is already escaped; escaping it again
        # would double every backslash.
        err = cls.__new__(cls)
        err.token = token
        super(InvalidSessionToken, err).__init__(token)
        return err

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self)._from_escaped, (self.token,), dict(self.__dict__))

    def __str__(self) -> str:
        return f"Invalid session token: {self.token}"


class BatchSizeTooLarge(RlmError):
    """Batch query size too large."""

    _fields = ("size", "max")

    def __init__(self, size: int, max: int) -> None:  # noqa: A002 (the crate's field name)
        self.size = size
        self.max = max
        super().__init__(size, max)

    def __str__(self) -> str:
        return f"Batch size {self.size} exceeds maximum {self.max}"


# ---------------------------------------------------------------------------
# Output errors
# ---------------------------------------------------------------------------


class OutputTooLarge(RlmError):
    """Output too large for inline return."""

    _fields = ("size", "limit", "file_path")

    def __init__(self, size: int, limit: int, file_path: str) -> None:
        self.size = size
        self.limit = limit
        self.file_path = file_path
        super().__init__(size, limit, file_path)

    def __str__(self) -> str:
        return (
            f"Output exceeds inline limit ({self.size} > {self.limit} bytes), "
            f"streamed to {self.file_path}"
        )

    def _mcp_data(self) -> dict[str, object]:
        return {"size": self.size, "limit": self.limit, "file_path": self.file_path}


# ---------------------------------------------------------------------------
# Operations errors
# ---------------------------------------------------------------------------


class AutoRemediationFailed(RlmError):
    """Auto-remediation failed."""

    _fields = ("attempts", "message")

    def __init__(self, attempts: int, message: str) -> None:
        self.attempts = attempts
        self.message = message
        super().__init__(attempts, message)

    def __str__(self) -> str:
        return f"Auto-remediation failed after {self.attempts} attempts: {self.message}"


class AlertWebhookFailed(RlmError):
    """Alert webhook failed."""

    _fields = ("message",)
    _retryable = True

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Failed to send alert to webhook: {self.message}"


# ---------------------------------------------------------------------------
# Generic errors
# ---------------------------------------------------------------------------


class ConfigError(RlmError, ValueError):
    """Configuration error."""

    code = -32602
    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Configuration error: {self.message}"


class NotSupported(RlmError):
    """Operation is not supported by the selected backend."""

    code = -32070
    _fields = ("backend", "op")

    def __init__(self, backend: str, op: str) -> None:
        self.backend = backend
        self.op = op
        super().__init__(backend, op)

    def __str__(self) -> str:
        return f"Backend '{self.backend}' does not support operation '{self.op}'"


class Internal(RlmError):
    """Internal error."""

    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Internal error: {self.message}"


class Cancelled(RlmError):
    """Cancelled by user or parent."""

    code = -32099
    _fields = ()

    def __init__(self) -> None:
        super().__init__()

    def __str__(self) -> str:
        return "Operation cancelled"


class Io(RlmError, OSError):
    """IO error (the crate wraps ``std::io::Error``; here its message).

    An ``OSError`` built from one argument, so ``errno``, ``strerror`` and
    ``filename`` are None; ``str()`` is the crate's Display text.
    """

    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"IO error: {self.message}"


class Serialization(RlmError):
    """Serialization error (the crate wraps ``serde_json::Error``; here its
    message)."""

    _fields = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"Serialization error: {self.message}"


# Pickles and tracebacks name the public path (rlm_fast re-exports these).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = "rlm_fast"
del _name, _obj
