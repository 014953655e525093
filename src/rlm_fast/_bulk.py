"""The bulk API's numpy side (numpy is optional: only these need it)."""

from __future__ import annotations

from typing import Any

# One row of `budget_table()`; the compiled core writes the same packed
# layout (BudgetRow in _session_c.h). `state` is the index in STATES.
BUDGET_TABLE_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "V16"),  # SessionId.bytes, big-endian (V: numpy strips trailing NULs of S)
    ("state", "u1"),
    ("expires_at_ns", "i8"),
    ("tokens_used", "u8"),
    ("token_budget", "u8"),
    ("time_used_ms", "u8"),
    ("time_budget_ms", "u8"),
    ("recursion_depth", "u8"),
    ("max_recursion_depth", "u8"),
    ("extension_count", "u8"),
    ("snapshot_count", "u8"),
    ("has_vm", "?"),
)


def numpy() -> Any:
    """numpy, or an ImportError that says only the bulk API needs it."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImportError(
            "the bulk API (validate_many, budget_table) needs numpy: "
            "pip install 'rlm_fast[numpy]'"
        ) from exc
    return np


def budget_table_dtype() -> Any:
    return numpy().dtype(list(BUDGET_TABLE_FIELDS))


def raw_ids(ids: object) -> bytes | None:
    """16-byte ids packed in a numpy array (e.g. budget_table()["id"]), as
    one bytes object; None for any other kind of sequence."""
    np = __import__("sys").modules.get("numpy")
    if np is None or not isinstance(ids, np.ndarray):
        return None
    if ids.dtype.kind not in "SV" or ids.dtype.itemsize != 16 or ids.ndim != 1:
        raise TypeError("an array of ids must be one-dimensional with 16-byte items")
    return bytes(np.ascontiguousarray(ids).tobytes())
