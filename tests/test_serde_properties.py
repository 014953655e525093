"""Property tests of the JSON form (Hypothesis): timestamps against
datetime, and round trips that agree with json.dumps. Hypothesis may have no
build for a free-threaded interpreter: then this module skips."""

from __future__ import annotations

import datetime as dt
import json

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rlm_fast  # noqa: E402
from rlm_fast import BudgetStatus, SessionInfo, SessionState  # noqa: E402
from rlm_fast._json import format_timestamp, parse_timestamp  # noqa: E402

I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


@settings(max_examples=300, deadline=None)
@given(st.integers(I64_MIN, I64_MAX))
def test_timestamp_matches_datetime(ns: int) -> None:
    text = format_timestamp(ns)
    secs, frac = divmod(ns, 10**9)
    expected = (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=secs)).isoformat()
    assert text.startswith(expected) and text.endswith("Z")
    digits = text[len(expected) : -1]
    if frac == 0:
        assert digits == ""
    else:
        assert digits.startswith(".") and not digits.endswith("0") and len(digits) <= 10
        assert int(digits[1:].ljust(9, "0")) == frac
    assert parse_timestamp(text, "t") == ns


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
u64s = st.integers(0, U64_MAX)
u32s = st.integers(0, 2**32 - 1)  # the crate's u32 fields


@st.composite
def session_infos(draw: st.DrawFn) -> SessionInfo:
    return SessionInfo(
        rlm_fast.SessionId.from_int(draw(st.integers(0, 2**128 - 1))),
        draw(st.sampled_from(list(SessionState))),
        draw(st.integers(I64_MIN, I64_MAX)),
        draw(st.integers(I64_MIN, I64_MAX)),
        draw(u32s),
        draw(u32s),
        BudgetStatus(*(draw(u64s) for _ in range(4)), draw(u32s), draw(u32s)),
        draw(st.none() | texts),
        draw(st.dictionaries(texts, texts, max_size=4)),
        draw(st.none() | texts),
        draw(u32s),
    )


@settings(max_examples=200, deadline=None)
@given(session_infos())
def test_round_trip_and_agreement_with_json_dumps(info: SessionInfo) -> None:
    compact = info.to_json()
    # The hand-built compact form is json.dumps of to_dict with serde's
    # separators and escaping; the pretty form with indent=2.
    assert compact == json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))
    assert "\n" not in compact
    pretty = info.to_json(indent=2)
    assert pretty == json.dumps(info.to_dict(), ensure_ascii=False, indent=2)
    for text in (compact, pretty):
        back = SessionInfo.from_json(text)
        assert back == info
        assert back.to_json() == compact
    assert SessionInfo.from_dict(info.to_dict()) == info
