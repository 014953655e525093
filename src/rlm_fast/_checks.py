"""The bottom layer: bounds, every message both cores raise with, how an
echoed value is shown, and the argument checks of SPEC 7 and 10 for values
other than session ids. Everything above imports from here; this module
imports nothing of rlm_fast."""

from __future__ import annotations

import datetime as _dt

U64_MAX = 2**64 - 1


U32_MAX = 2**32 - 1  # the crate's u32 counters and depth limits


I64_MAX = 2**63 - 1


I64_MIN = -(2**63)

# Messages both cores raise with (one text, one place).
# Messages both cores raise with (one text, one place).
MSG_CREATE_OVERFLOW = "session expiry would pass the largest representable time"


MSG_EXTEND_OVERFLOW = "extension would pass the largest representable time"


MSG_TOKENS_OVERFLOW = "charge would take tokens_used past 2**64-1"


MSG_TIME_OVERFLOW = "charge would take time_used_ms past 2**64-1"


# The crate keeps depth as a u32: a child one deeper than 2**32-1 cannot exist.
MSG_DEPTH_OVERFLOW = "child recursion depth would pass 2**32-1"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# --------------------------------------------------------------------------
# showing a caller's value in a message: never fails, never huge
# --------------------------------------------------------------------------


def show_int(value: int) -> str:
    """An int for an error message: its digits, or its size when printing
    it would be long (or refused: Python caps int->str at 4300 digits)."""
    if value.bit_length() <= 128:
        return str(value)
    return f"{'-' if value < 0 else ''}an int of {value.bit_length()} bits"


def show_value(value: object, limit: int = 80) -> str:
    """Any caller's value for an error message, never failing: an int by
    `show_int`, anything else by its repr() cut to `limit` characters (a
    repr that raises, e.g. of a list holding a 5,000-digit int, is named by
    its type instead). Every message that echoes an argument uses it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return show_int(int(value))
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= limit else text[:limit] + "\u2026"


# --------------------------------------------------------------------------
# argument checks (SPEC 7 and 10)
# --------------------------------------------------------------------------


def session_id_type_error(value: object) -> TypeError:
    return TypeError(
        f"session id must be a SessionId or str, not {type(value).__name__}"
    )


def check_u64(value: object, name: str) -> int:
    """An int in 0 .. 2**64-1 (bool refused), else TypeError/ValueError."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        value = int(value)  # an int subclass: keep only its value
    if value < 0 or value > U64_MAX:
        raise ValueError(f"{name} must be in 0..2**64-1, got {show_int(value)}")
    return value


def check_u32(value: object, name: str) -> int:
    """An int in 0 .. 2**32-1: the fields the crate keeps as u32."""
    value = check_u64(value, name)
    if value > U32_MAX:
        raise ValueError(f"{name} must be in 0..2**32-1, got {show_int(value)}")
    return value


def check_str(value: object, name: str, *, nonempty: bool = False) -> str:
    """An exact `str` that encodes as UTF-8 (a subclass is copied)."""
    if type(value) is not str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        value = str.__str__(value)  # drop the subclass: no user code later
    if nonempty and not value:
        raise ValueError(f"{name} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 (lone surrogate)") from None
    return value


def check_clock_value(value: object) -> int:
    """What a user clock returned: int nanoseconds that fit in int64."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"clock must return int nanoseconds, not {type(value).__name__}"
            )
        value = int(value)
    if value < I64_MIN or value > I64_MAX:
        raise ValueError(f"clock returned {show_int(value)}, outside the int64 range")
    return value


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Aware UTC datetime, nanoseconds truncated (floored) to microseconds."""
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)
