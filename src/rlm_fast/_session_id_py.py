"""The twin's `SessionId`: a ULID (48-bit Unix ms + 80 CSPRNG bits) in
Crockford base32, and `key_of`, which turns any accepted id (either core's
SessionId, or its string form) into the 128-bit table key. The compiled core
has its own `SessionId` (`_session_c.pyx`); both register with `_registry`.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, final

from ._checks import ns_to_datetime, session_id_type_error
from ._registry import foreign_session_id, register_session_id, restore_session_id
from .errors import InvalidSessionToken

__all__ = ["SessionId", "key_of", "random_key"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# ASCII-only matching: re.IGNORECASE alone would let e.g. the Kelvin sign
# (U+212A) match "K".
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.ASCII | re.IGNORECASE)


# Crockford digit -> the digit int(..., 32) reads (0-9, a-v).
_TO_INT32 = str.maketrans(
    _ALPHABET + _ALPHABET.lower(), ("0123456789abcdefghijklmnopqrstuv") * 2
)


U128_MAX = 2**128 - 1


_MS_MAX = 2**48 - 1


def _format(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _parse(text: object) -> int:
    """The 128-bit value of a ULID string; the errors SPEC 10 names."""
    if not isinstance(text, str):
        raise TypeError(f"from_string needs a str, not {type(text).__name__}")
    if _ULID_RE.fullmatch(text) is None:
        raise InvalidSessionToken(text)
    return int(text.translate(_TO_INT32), 32)


def random_key(ms: int) -> int:
    """A fresh id value: `ms` (clamped to 48 bits) and 80 CSPRNG bits."""
    ms = min(max(ms, 0), _MS_MAX)
    return (ms << 80) | int.from_bytes(os.urandom(10), "big")


@final  # __init_subclass__ refuses subclasses at runtime
class SessionId:
    """A session id: a ULID, used as a bearer token (so its 80 random bits
    come from the OS CSPRNG). Immutable, hashable, ordered like its int."""

    __slots__ = ("_value",)
    _value: int

    def __init__(self) -> None:
        if hasattr(self, "_value"):
            raise AttributeError("SessionId is immutable")
        object.__setattr__(self, "_value", random_key(time.time_ns() // 1_000_000))

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Final, like the compiled class: the cores key on exact ids.
        raise TypeError("SessionId cannot be subclassed")

    @classmethod
    def _of(cls, value: int) -> "SessionId":
        self = object.__new__(cls)
        object.__setattr__(self, "_value", value)
        return self

    @classmethod
    def from_string(cls, s: str) -> "SessionId":
        return cls._of(_parse(s))

    @classmethod
    def from_bytes(cls, b: bytes) -> "SessionId":
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes needs 16 bytes, not {type(b).__name__}")
        raw = bytes(b)
        if len(raw) != 16:
            raise ValueError(f"a session id is exactly 16 bytes, got {len(raw)}")
        return cls._of(int.from_bytes(raw, "big"))

    @classmethod
    def from_int(cls, value: int) -> "SessionId":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"from_int needs an int, not {type(value).__name__}")
        if not 0 <= value <= U128_MAX:
            raise ValueError("a session id is an int in 0..2**128-1")
        return cls._of(int(value))

    @property
    def bytes(self) -> bytes:
        return self._value.to_bytes(16, "big")

    @property
    def timestamp_ms(self) -> int:
        return self._value >> 80

    @property
    def datetime(self) -> Any:
        return ns_to_datetime(self.timestamp_ms * 1_000_000)

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __str__(self) -> str:
        return _format(self._value)

    def __repr__(self) -> str:
        return f"SessionId('{_format(self._value)}')"

    def __hash__(self) -> int:
        return hash(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SessionId):
            return self._value == other._value
        value = foreign_session_id(other)  # the other core's id: same value?
        return NotImplemented if value is None else self._value == value

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __lt__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value < other._value
        return NotImplemented

    def __le__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value <= other._value
        return NotImplemented

    def __gt__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value > other._value
        return NotImplemented

    def __ge__(self, other: "SessionId") -> bool:
        if isinstance(other, SessionId):
            return self._value >= other._value
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SessionId is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SessionId is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_session_id, (self.bytes,))

    def __copy__(self) -> "SessionId":
        return self

    def __deepcopy__(self, memo: object) -> "SessionId":
        return self


def key_of(session_id: object) -> int:
    """The table key of a SessionId or its string form (SPEC 7)."""
    if type(session_id) is SessionId:
        return session_id._value
    if isinstance(session_id, str):
        return _parse(session_id)
    value = foreign_session_id(session_id)
    if value is None:
        raise session_id_type_error(session_id)
    return value


register_session_id(SessionId)
SessionId.__module__ = "rlm_fast"
