"""Differential stateful testing: the compiled core against the twin.

A Hypothesis `RuleBasedStateMachine` drives one manager of each core (and,
in a second machine, `BudgetTracker`s) side by side on one shared injected
clock, through every public operation, bad inputs included, plus rules that
move the clock (by small steps, to a session's exact expiry +-1 ns, to the
ends of the int64 range) and make the clock misbehave for one call. After
every step it asserts that both cores returned the same values and raised the
same exception types with the same messages, and that SPEC 4.6's invariants
(and 4.1, 4.8) hold on both, and that both tables are equal.

Call trees (SPEC 11, docs/trees.md), the lifecycle and the model-call step
(SPEC 12 and 13, docs/lifecycle.md) are in the same machine: children made
under any session (budgets omitted, given, too large, bad), children(),
destroys and cleanups that cascade, pop_expired_sessions, begin_call /
end_call / call(), each manager's on_remove (which may raise) recorded and
compared per step. After every step, on each manager: parent and root links
(every child's parent is live, its root_id its root's id), children() lists
exactly the sessions naming it as parent, every session's tokens_used and
time_used_ms equal the machine's roll-up model (what update_budget last set
plus every charge recorded on the session or a descendant since), validity
(validate_many) is False exactly where the session or an ancestor is
terminated or expired, every removed session was reported to on_remove
once, and the removal counters add up. A single call moves the rejected_*
counters by exactly the refusal it raised. `RedisMachine` runs the same
rules with RedisSessionManager in the compiled core's place, when a
redis-server is available (else it skips, as the conftest's Redis tests).

Each core draws its own random session ids, so the machine keeps a bijection
from the compiled core's ids to the twin's and maps ids (values, and the ids
inside messages, reprs and JSON) before comparing. Lists in id order
(`list_sessions`, `cleanup_expired_sessions`, `budget_table`) are checked to
be sorted in each core's own id order, then compared as mapped sets.

Profiles: "ci" (default, a few hundred examples) and "long"
(`--hypothesis-profile=long` or `RLM_FAST_HYPOTHESIS_PROFILE=long`), see
`conftest_hypothesis.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("hypothesis")

import conftest_hypothesis
from conftest import PY, C, FakeClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rlm_fast import RlmConfig, SessionState
from rlm_fast._registry import result_kind

if C is None:
    pytest.skip("compiled core not built: nothing to compare", allow_module_level=True)

try:
    import numpy as np
except ImportError:  # the bulk API needs numpy; the rest does not
    np = None

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
NS = 10**9
START_NS = 1_767_225_600 * NS  # 2026-01-01
ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# Figures for docs/reliability.md and the README (printed at the end).
FIGURES = {"manager_examples": 0, "manager_steps": 0, "tracker_examples": 0, "tracker_steps": 0}


def ulid(value: int) -> str:
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


class ClockFailed(Exception):
    """What a misbehaving clock raises."""


class IntSub(int):
    """An int subclass: accepted for its value."""


class StrSub(str):
    """A str subclass: accepted, stored as a plain str."""


class DiffClock(FakeClock):
    """The shared clock, which can be made to misbehave for one call."""

    def __init__(self, start_ns: int) -> None:
        super().__init__(start_ns)
        self.mode = ""

    def __call__(self) -> Any:
        mode = self.mode
        if not mode:
            return self.now
        if mode == "raise":
            raise ClockFailed("clock failed")
        if mode == "float":
            return float(self.now)
        if mode == "bool":
            return True
        if mode == "none":
            return None
        if mode == "above_i64":
            return I64_MAX + 1
        if mode == "below_i64":
            return I64_MIN - 1
        if mode == "int_subclass":
            return IntSub(self.now)
        raise AssertionError(mode)


CLOCK_MODES = ("raise", "float", "bool", "none", "above_i64", "below_i64", "int_subclass")


class Ref:
    """One session as each core knows it: (twin id, compiled id) as ints."""

    __slots__ = ("c", "py")

    def __init__(self, py: int, c: int) -> None:
        self.py = py
        self.c = c

    def __repr__(self) -> str:
        return f"Ref({ulid(self.py)}, {ulid(self.c)})"


class Side:
    """One core under test: its namespace, the other core's, its manager."""

    def __init__(self, name: str, core: Any, other: Any) -> None:
        self.name = name
        self.core = core
        self.other = other
        self.m: Any = None
        self.tracker: dict[int, Any] = {}
        self.removed: list[tuple[Any, str]] = []  # what on_remove heard
        self.seen = 0  # how much of `removed` the invariant has checked
        self.reported: set[int] = set()  # ids on_remove reported (own ids)
        self.raising = False  # on_remove raises after recording
        self.last_child: Any = None

    def on_remove(self, info: Any, reason: str) -> None:
        self.removed.append((info, reason))
        if self.raising:
            raise RuntimeError("on_remove failed")  # logged, changes nothing


# --------------------------------------------------------------------------
# strategies (values the same for both cores; ids are resolved per side)
# --------------------------------------------------------------------------

NOT_IDS = (123, None, 1.5, b"01ARZ3NDEKTSV4RRFFQ69G5FAV", ["x"], object(), 2**100, True)
MALFORMED_IDS = (
    "",
    "x",
    "01ARZ3NDEKTSV4RRFFQ69G5FA",
    "01ARZ3NDEKTSV4RRFFQ69G5FAVV",
    "81ARZ3NDEKTSV4RRFFQ69G5FAV",
    "01ARZ3NDEKTSV4RRFFQ69G5FAI",
    "01ARZ3NDEKTSV4RRFFQ69G5FAU",
    "01ARZ3NDEKTSV4RRFFQ69G5FA\u212a",
    "01ARZ3NDEKTSV4RRFFQ69G5FA\ud800",
    "\x00" * 26,
    "Z" * 200,
    "\n" * 70,
)
BAD_IDS = NOT_IDS + MALFORMED_IDS
ID_FORMS = st.sampled_from(["own", "str", "lower", "foreign", "str_subclass"])

VM_POOL = tuple(f"vm-{i}" for i in range(5))
BAD_STRS = (None, 1, 1.5, b"vm", ["vm"], object(), "\ud800", "ok\udfff")
KEY_POOL = ("k0", "k1", "k2", "", "é", "\U0001f600", "k\x00")

U64_EDGES = (0, 1, 2, 9, 10, 11, 999, 1000, 1001, 2**63, U64_MAX - 1, U64_MAX)
AMOUNT = st.one_of(
    st.integers(0, 600),
    st.sampled_from(U64_EDGES),
    st.sampled_from((-1, 2**64, 10**100, -(10**100), True, False, 1.0, None, "5", b"5")),
    st.integers(0, 50).map(IntSub),
)
# a child's budget argument: omitted, None (the default), small, an edge, bad
CHILD_BUDGET = st.integers(0, 9).flatmap(
    lambda n: st.sampled_from(["omit", None]) if n < 6
    else st.integers(0, 20) if n < 8
    else st.sampled_from(U64_EDGES) if n < 9
    else st.sampled_from((-1, 2**64, True, 1.5, "5"))
)
U64 = st.one_of(st.integers(0, 20), st.sampled_from(U64_EDGES), st.integers(0, U64_MAX))
STATES = st.one_of(
    st.sampled_from(list(SessionState)),
    st.sampled_from([s.value for s in SessionState]),
    st.sampled_from(["ready", "READY", "", "Nope", "Ready ", "\ud800", "x" * 100]),
    st.sampled_from([1, None, b"Ready", 1.5, ["Ready"]]),
    st.just(StrSub("Paused")),
)


def text_arg(pool: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Mostly the first two values of `pool` (so that later calls find what
    earlier ones stored), sometimes anything else, a bad value, a subclass."""
    usual = st.sampled_from(pool[:2])
    return st.integers(0, 9).flatmap(
        lambda n: usual if n < 6 else [
            st.sampled_from(pool),
            st.text(max_size=6),
            st.sampled_from(BAD_STRS),
            st.sampled_from(pool).map(StrSub),
        ][n - 6] if n < 9 else st.just("x" * 5000)
    )


VM_ARG = text_arg(VM_POOL)
KEY_ARG = text_arg(KEY_POOL)
VALUE_ARG = text_arg(("v", "", "x" * 300, "\U0001f600", "a\x00b"))
SNAP_ARG = text_arg(("snap-1", "snap-2", ""))


def config_strategy() -> st.SearchStrategy[RlmConfig]:
    return st.builds(
        RlmConfig,
        # (9_223_372_036 s, the largest valid duration, makes every create
        # overflow from 2026 on: at_extreme_time covers that path)
        session_duration_secs=st.sampled_from([3600, 3600, 3600, 60, 60, 1, 0]),
        extension_increment_secs=st.sampled_from([0, 1, 30, 9_223_372_036]),
        max_extensions=st.sampled_from([0, 1, 2, 2**32 - 1]),
        token_budget=st.sampled_from([0, 10, 1000, U64_MAX]),
        time_budget_ms=st.sampled_from([0, 10, 1000, U64_MAX]),
        max_recursion_depth=st.sampled_from([0, 1, 3, 2**32 - 1]),
        max_snapshots_per_session=st.sampled_from([0, 1, 2]),
    )


# --------------------------------------------------------------------------
# normalising results so the two cores can be compared
# --------------------------------------------------------------------------


class EventsResult:
    """What a compound step saw (already comparable), compared as a whole."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def __repr__(self) -> str:
        return f"EventsResult({self.events!r})"


class TrackerResult:
    """A tracker returned by a call: compared through its status and repr."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker


class Differ:
    """Shared machinery: run a call on both sides, map ids, compare."""

    clock: DiffClock
    py: Side
    c: Side
    c2p: dict[int, int]

    light = False  # norm: SessionInfo by its fields only

    def setup_sides(self) -> None:
        self.py = Side("python", PY, C)
        self.c = Side("cython", C, PY)
        self.c2p = {}

    def to_py(self, side: Side, value: int) -> int:
        return value if side is self.py else self.c2p.get(value, value)

    def map_text(self, side: Side, text: str) -> str:
        if side is self.py:
            return text

        def repl(match: re.Match[str]) -> str:
            value = int(match.group(0).translate(_TO_INT32), 32)
            return ulid(self.c2p[value]) if value in self.c2p else match.group(0)

        return ULID_RE.sub(repl, text)

    def norm(self, side: Side, value: Any) -> Any:
        """A comparable, id-mapped form of a result (checks its class too)."""
        if value is None or type(value) in (bool, int, str, float):
            return (type(value).__name__, value)
        cls = type(value)
        if cls.__name__ == "SessionId":
            assert cls is side.core.SessionId, f"{side.name} returned a foreign SessionId"
            return ("id", self.to_py(side, int(value)), value.timestamp_ms)
        kind = result_kind(value)
        if kind == "SessionInfo" and self.light:
            # (the invariant's whole-table comparison: every field, not the
            # derived forms, which every call's own result compares)
            assert cls is side.core.SessionInfo, f"{side.name} returned {cls}"
            return (
                "info",
                self.norm(side, value.id),
                self.norm(side, value.parent_id),
                self.norm(side, value.root_id),
                value.state,
                value.created_at_ns,
                value.expires_at_ns,
                value.extension_count,
                value.recursion_depth,
                value.budget_status._astuple(),
                value.vm_instance_id,
                tuple(value.context_variables.items()),
                value.current_snapshot_id,
                value.snapshot_count,
            )
        if kind == "SessionInfo":
            assert cls is side.core.SessionInfo, f"{side.name} returned {cls}"
            return (
                "info",
                self.norm(side, value.id),
                self.norm(side, value.parent_id),
                self.norm(side, value.root_id),
                value.state,
                value.created_at_ns,
                value.expires_at_ns,
                value.created_at,
                value.expires_at,
                value.extension_count,
                value.recursion_depth,
                self.norm(side, value.budget_status),
                value.vm_instance_id,
                tuple(value.context_variables.items()),
                value.current_snapshot_id,
                value.snapshot_count,
                value.is_expired(self.clock.now),
                value.can_extend(2),
                self.map_text(side, repr(value)),
                self.map_text(side, value.to_json()),
            )
        if kind == "BudgetStatus":
            assert cls is side.core.BudgetStatus, f"{side.name} returned {cls}"
            return (
                "budget",
                value._astuple(),
                repr(value),
                value.is_exhausted(),
                value.tokens_remaining(),
                value.time_remaining_ms(),
            )
        if kind == "SessionStats":
            assert cls is side.core.SessionStats, f"{side.name} returned {cls}"
            return ("stats", value._astuple(), repr(value))
        if isinstance(value, dict):
            assert cls is dict
            return ("dict", tuple(value.items()))
        if isinstance(value, list):
            assert cls is list
            return ("list", tuple(self.norm(side, v) for v in value))
        if np is not None and isinstance(value, np.ndarray):
            return ("array", value.dtype.str, tuple(value.tolist()))
        if isinstance(value, EventsResult):
            return ("events", tuple(value.events))
        if isinstance(value, TrackerResult):
            t = value.tracker
            assert type(t) is side.core.BudgetTracker, f"{side.name} returned {type(t)}"
            return ("tracker", self.norm(side, t.status()), repr(t), t.is_near_exhaustion())
        raise AssertionError(f"{side.name} returned an unexpected {cls!r}: {value!r}")

    def compare_removals(self, label: str, py_events: list[Any], c_events: list[Any]) -> None:
        """What on_remove heard during one step, on each core: in the order
        docs/lifecycle.md gives (a destroyed session first, then its
        descendants in id order; a cleanup in id order), the same sessions
        with the same reasons and last states on both."""
        outs = []
        for side, events in ((self.py, py_events), (self.c, c_events)):
            runs: list[list[Any]] = []
            for info, reason in events:
                assert reason in ("destroyed", "expired", "cascade"), f"{label}: {reason!r}"
                if reason == "destroyed" or not runs:
                    runs.append([])
                runs[-1].append((info, reason))
            for run in runs:
                ids = [int(info.id) for info, _ in run]
                if run[0][1] == "destroyed":
                    assert all(r == "cascade" for _, r in run[1:]), f"{label}: {run!r}"
                    ids = ids[1:]
                assert ids == sorted(ids), f"{label}: {side.name}'s on_remove not in id order"
            outs.append(sorted(
                (self.norm(side, info), reason) for info, reason in events
            ))
        assert outs[0] == outs[1], (
            f"{label}: on_remove heard different removals\n  twin:     {outs[0]!r}\n"
            f"  {self.c.name}: {outs[1]!r}"
        )
        self.removals_heard(py_events)

    def removals_heard(self, py_events: list[Any]) -> None:
        """Hook: the twin's on_remove events of one step."""

    def norm_exc(self, side: Side, exc: BaseException) -> Any:
        return ("raise", type(exc), self.map_text(side, str(exc)))

    def both(
        self,
        label: str,
        call: Callable[[Side], Any],
        *,
        id_ordered: bool = False,
        after: Callable[[Any, Any], None] | None = None,
    ) -> tuple[Any, Any]:
        """Run call(side) on each core from the same clock; compare outcomes.

        Returns the raw outcomes (value or exception) of the twin and the
        compiled core. `after(py_raw, c_raw)` runs before normalising (to
        register new ids). `id_ordered`: the result is a list in id order."""
        start, mode = self.clock.now, self.clock.mode
        raw: list[Any] = []
        ends = []
        heard = [len(self.py.removed), len(self.c.removed)]
        for side in (self.py, self.c):
            self.clock.now, self.clock.mode = start, mode
            try:
                raw.append(call(side))
            except Exception as exc:  # noqa: BLE001 - compared below
                raw.append(exc)
            ends.append((self.clock.now, self.clock.mode))
        assert ends[0] == ends[1], f"{label}: the clock moved differently: {ends}"
        self.clock.now, self.clock.mode = ends[0]
        if after is not None:
            after(raw[0], raw[1])
        self.compare_removals(label, self.py.removed[heard[0]:], self.c.removed[heard[1]:])
        outs = []
        for side, value in zip((self.py, self.c), raw):
            if isinstance(value, BaseException):
                outs.append(self.norm_exc(side, value))
            elif id_ordered:
                ids = [int(v.id if result_kind(v) else v) for v in value]
                assert ids == sorted(ids), f"{label}: {side.name} not in id order"
                outs.append(("sorted", tuple(sorted(self.norm(side, v) for v in value))))
            else:
                outs.append(self.norm(side, value))
        assert outs[0] == outs[1], (
            f"{label}: the cores disagree\n  twin:     {outs[0]!r}\n  {self.c.name}: {outs[1]!r}"
        )
        return raw[0], raw[1]


_TO_INT32 = str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")


# --------------------------------------------------------------------------
# SessionManager
# --------------------------------------------------------------------------


class ManagerMachine(Differ, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.setup_sides()
        self.refs: list[Ref] = []
        self.vms_seen: set[str] = set(VM_POOL)
        self.created = self.destroyed = self.expired = 0
        # The tree as the machine saw it made (twin ids; kept after removal)
        # and the model of roll-up: every session's (tokens_used,
        # time_used_ms) is what update_budget last set, plus every charge
        # recorded on it or on any of its descendants since (docs/trees.md).
        self.parent: dict[int, int | None] = {}
        self.used: dict[int, list[int]] = {}
        self.live: set[int] = set()  # twin ids in the table at the last check
        self.removed_total = 0  # sessions that left the table, by table diff
        self.reporting = True  # on_remove is attached (a loaded manager has none)
        self.dumped = False
        self.tmp = ""
        FIGURES["manager_examples"] += 1

    def teardown(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(config=config_strategy(), start=st.sampled_from(
        [START_NS, START_NS, START_NS, 0, -(10**18)]),
        seed=st.integers(1, 3), raising=st.sampled_from([False, False, False, True]))
    def start(self, config: RlmConfig, start: int, seed: int, raising: bool) -> None:
        self.open(config, start, seed, raising)

    def open(self, config: RlmConfig, start: int, seed: int, raising: bool) -> None:
        self.config = config
        self.clock = DiffClock(start)
        for side in (self.py, self.c):
            side.raising = raising
            side.m = side.core.SessionManager(config, clock=self.clock, on_remove=side.on_remove)
        for _ in range(seed):  # so that most ids drawn are known ones
            self.create_session()

    # -- argument helpers ------------------------------------------------------

    def draw_id(self, data: st.DataObject) -> tuple[Any, ...]:
        """An id argument: a known session, an unknown id, or a bad value."""
        kind = data.draw(st.integers(0, 11), label="id kind")
        live = [r for r in self.refs[-4:] if PY.SessionId.from_int(r.py) in self.py.m]
        if kind < 8 and not live:
            self.create_session()  # (compared like any other call)
            live = [r for r in self.refs[-1:] if PY.SessionId.from_int(r.py) in self.py.m]
        if kind < 8 and live:
            # One of the newest sessions still in the table, so that calls
            # build on each other (set, then get; assign, then release).
            ref = data.draw(st.sampled_from(live), label="live session")
        elif kind < 9 and self.refs:  # maybe destroyed or cleaned up
            ref = data.draw(st.sampled_from(self.refs), label="session")
        elif kind < 11:
            value = data.draw(st.integers(0, 2**128 - 1), label="unknown id")
            ref = Ref(value, value)
        else:
            return ("raw", data.draw(st.sampled_from(BAD_IDS), label="bad id"))
        return ("ref", ref, data.draw(ID_FORMS, label="id form"))

    def resolve(self, side: Side, spec: tuple[Any, ...]) -> Any:
        if spec[0] == "raw":
            return spec[1]
        _, ref, form = spec
        value = ref.py if side is self.py else ref.c
        if form == "own":
            return side.core.SessionId.from_int(value)
        if form == "foreign":  # the other core's SessionId is accepted too
            return side.other.SessionId.from_int(value)
        text = ulid(value)
        if form == "lower":
            return text.lower()
        if form == "str_subclass":
            return StrSub(text)
        return text

    def on_ids(self, data: st.DataObject, name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return self.on_spec(self.draw_id(data), name, *args, **kwargs)

    def on_spec(self, spec: Any, name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """`name(id, *args)` on both managers; spec None: no id argument."""
        if spec is None:
            return self.both(f"{name}{args!r}", lambda side: getattr(side.m, name)(*args))
        before = [side.m.get_stats() for side in (self.py, self.c)]
        raws = self.both(
            f"{name}({spec!r}, {args!r})",
            lambda side: getattr(side.m, name)(self.resolve(side, spec), *args, **kwargs),
        )
        for side, stats, raw in zip((self.py, self.c), before, raws):
            check_refusal_counted(f"{name}({spec!r})", side, stats, side.m.get_stats(), raw, name)
        return raws

    def register(self, py_raw: Any, c_raw: Any) -> None:
        """After a create on both cores: remember the pair of new ids."""
        py_ok = not isinstance(py_raw, BaseException)
        c_ok = not isinstance(c_raw, BaseException)
        assert py_ok == c_ok, f"create_session: twin {py_raw!r} vs compiled {c_raw!r}"
        if py_ok:
            py_id, c_id = int(py_raw.id), int(c_raw.id)
            self.c2p[c_id] = py_id
            self.refs.append(Ref(py_id, c_id))
            self.created += 1
            parent = py_raw.parent_id
            self.parent[py_id] = None if parent is None else int(parent)
            self.used[py_id] = [0, 0]
            self.live.add(py_id)  # (so that a removal in the same step is seen)

    def removals_heard(self, py_events: list[Any]) -> None:
        """Count one step's removals: a step that destroyed counts its
        cascade as destroyed, a cleanup its cascade as expired."""
        if any(reason == "destroyed" for _, reason in py_events):
            self.destroyed += len(py_events)
        elif any(reason == "expired" for _, reason in py_events):
            self.expired += len(py_events)
        else:
            assert not py_events, f"only cascades reported: {py_events!r}"

    def model_charge(self, spec: Any, tokens: Any, time_ms: Any, py_raw: Any) -> None:
        """After a charge on both cores (compared): if the twin recorded it
        (it returned, or raised an over-budget error, which keeps the charge),
        add it to the model on the session's whole path."""
        error = type(py_raw).__name__ if isinstance(py_raw, BaseException) else None
        if error is not None and error not in ("TokenBudgetExceeded", "TimeBudgetExceeded"):
            return
        assert spec is not None and spec[0] == "ref", spec
        key: int | None = spec[1].py
        while key is not None:
            self.used[key][0] += int(tokens)
            self.used[key][1] += int(time_ms)
            key = self.parent[key]

    def model_set(self, spec: Any, tokens_used: int, time_used_ms: int, py_raw: Any) -> None:
        """After update_budget: a success sets only that session's totals."""
        if not isinstance(py_raw, BaseException):
            self.used[spec[1].py] = [int(tokens_used), int(time_used_ms)]

    # -- lifecycle -------------------------------------------------------------

    @rule()
    def create_session(self) -> None:
        self.both("create_session()", lambda side: side.m.create_session(), after=self.register)

    @rule(data=st.data())
    def get_session(self, data: st.DataObject) -> None:
        self.on_ids(data, "get_session")

    @rule(data=st.data(), state=STATES)
    def update_session_state(self, data: st.DataObject, state: Any) -> None:
        self.on_ids(data, "update_session_state", state)

    @rule(data=st.data(), state=st.sampled_from([SessionState.TERMINATED, "Terminated", "Expired"]))
    def end_session(self, data: st.DataObject, state: Any) -> None:
        """TERMINATED (final) and EXPIRED, more often than STATES draws them."""
        self.on_ids(data, "update_session_state", state)

    @rule(data=st.data())
    def is_session_valid(self, data: st.DataObject) -> None:
        self.on_ids(data, "is_session_valid")

    @rule(data=st.data())
    def validate_session(self, data: st.DataObject) -> None:
        self.on_ids(data, "validate_session")

    @rule(data=st.data())
    def extend_session(self, data: st.DataObject) -> None:
        self.on_ids(data, "extend_session")

    @rule(data=st.data())
    def destroy_session(self, data: st.DataObject) -> None:
        spec = self.draw_id(data)
        py_raw, c_raw = self.on_spec(spec, "destroy_session")
        if not isinstance(py_raw, BaseException) and self.reporting:
            # It returns the removed session's last state, which on_remove
            # heard first, as "destroyed".
            for side, info in ((self.py, py_raw), (self.c, c_raw)):
                heard = [e for e in side.removed if e[1] == "destroyed"][-1]
                assert heard[0] == info, f"{side.name}: destroy_session returned {info!r}"

    @rule()
    def cleanup_expired_sessions(self) -> None:
        self.both(
            "cleanup_expired_sessions()",
            lambda side: side.m.cleanup_expired_sessions(),
            id_ordered=True,
        )

    @rule()
    def pop_expired_sessions(self) -> None:
        self.both(
            "pop_expired_sessions()", lambda side: side.m.pop_expired_sessions(), id_ordered=True
        )

    # -- call trees (docs/trees.md) ----------------------------------------------

    @rule(data=st.data(), tokens=CHILD_BUDGET, time_ms=CHILD_BUDGET)
    def create_child_session(self, data: st.DataObject, tokens: Any, time_ms: Any) -> None:
        spec = self.draw_id(data)
        kwargs = {}
        if tokens != "omit":
            kwargs["token_budget"] = tokens
        if time_ms != "omit":
            kwargs["time_budget_ms"] = time_ms
        self.make_child(spec, kwargs)

    def make_child(self, spec: Any, kwargs: dict[str, Any]) -> None:
        before = [side.m.get_stats() for side in (self.py, self.c)]
        raws = self.both(
            f"create_child_session({spec!r}, {kwargs!r})",
            lambda side: side.m.create_child_session(self.resolve(side, spec), **kwargs),
            after=self.register,
        )
        for side, stats, raw in zip((self.py, self.c), before, raws):
            check_refusal_counted("create_child_session", side, stats, side.m.get_stats(), raw, "")

    def live_refs(self, *, with_children: bool = False) -> list[Ref]:
        parents = {p for k, p in self.parent.items() if k in self.live}
        return [
            r for r in self.refs
            if r.py in self.live and (not with_children or r.py in parents)
        ]

    @precondition(lambda self: bool(self.refs))
    @rule(data=st.data(), deepest=st.booleans())
    def grow_tree(self, data: st.DataObject, deepest: bool) -> None:
        """A child (default budgets) of a session in the table, often the
        newest: so that trees grow deep."""
        live = self.live_refs()
        if not live:
            return
        ref = live[-1] if deepest else data.draw(st.sampled_from(live), label="parent")
        self.make_child(("ref", ref, "own"), {})

    @precondition(lambda self: bool(self.refs))
    @rule(data=st.data(), how=st.sampled_from(["destroy", "expire_root", "expire_child"]))
    def remove_subtree(self, data: st.DataObject, how: str) -> None:
        """Remove a session that has children: destroy it (a cascade), or
        jump past its expiry and sweep (children that a child's extension
        made outlive it go as a cascade)."""
        live = self.live_refs(with_children=True)
        if not live:
            return
        ref = data.draw(st.sampled_from(live), label="parent")
        if how == "destroy":
            self.on_spec(("ref", ref, data.draw(ID_FORMS, label="id form")), "destroy_session")
            return
        if how == "expire_child":
            # Its first child in creation order (not id order: ids are
            # random, and a choice that depends on them would make the
            # machine's steps differ between a run and its replay).
            kids = [r for r in self.refs if r.py in self.live and self.parent.get(r.py) == ref.py]
            ref = kids[0] if kids else ref
        rows = [r for r in self.py.m.list_sessions() if int(r.id) == ref.py]
        if not rows:
            return
        self.clock.now = min(rows[0].expires_at_ns + 1, I64_MAX)
        self.both(
            "pop_expired_sessions()", lambda side: side.m.pop_expired_sessions(), id_ordered=True
        )

    @rule(data=st.data())
    def children(self, data: st.DataObject) -> None:
        spec = self.draw_id(data)
        self.both(
            f"children({spec!r})",
            lambda side: side.m.children(self.resolve(side, spec)),
            id_ordered=True,
        )
    # -- VM affinity -----------------------------------------------------------

    @rule(data=st.data(), vm=VM_ARG)
    def assign_vm(self, data: st.DataObject, vm: Any) -> None:
        py_raw, _ = self.on_ids(data, "assign_vm", vm)
        if not isinstance(py_raw, BaseException):
            self.vms_seen.add(str(vm))

    @rule(data=st.data())
    def release_vm(self, data: st.DataObject) -> None:
        self.on_ids(data, "release_vm")

    @rule(data=st.data())
    def get_assigned_vm(self, data: st.DataObject) -> None:
        self.on_ids(data, "get_assigned_vm")

    @rule(vm=VM_ARG)
    def get_session_for_vm(self, vm: Any) -> None:
        self.both(f"get_session_for_vm({vm!r})", lambda side: side.m.get_session_for_vm(vm))

    # -- context variables -------------------------------------------------------

    @rule(data=st.data(), key=KEY_ARG, value=VALUE_ARG)
    def set_context_variable(self, data: st.DataObject, key: Any, value: Any) -> None:
        self.on_ids(data, "set_context_variable", key, value)

    @rule(data=st.data(), key=KEY_ARG)
    def get_context_variable(self, data: st.DataObject, key: Any) -> None:
        self.on_ids(data, "get_context_variable", key)

    @rule(data=st.data())
    def get_all_context_variables(self, data: st.DataObject) -> None:
        self.on_ids(data, "get_all_context_variables")

    @rule(data=st.data(), key=KEY_ARG)
    def delete_context_variable(self, data: st.DataObject, key: Any) -> None:
        self.on_ids(data, "delete_context_variable", key)

    @rule(data=st.data(), key=KEY_ARG, value=VALUE_ARG)
    def context_round_trip(self, data: st.DataObject, key: Any, value: Any) -> None:
        """set, get, get_all, delete, get on one session (each compared)."""
        spec = self.draw_id(data)
        for name, args in (
            ("set_context_variable", (key, value)),
            ("get_context_variable", (key,)),
            ("get_all_context_variables", ()),
            ("delete_context_variable", (key,)),
            ("delete_context_variable", (key,)),
            ("get_context_variable", (key,)),
        ):
            self.on_spec(spec, name, *args)

    @rule(data=st.data(), vm=VM_ARG, move=st.sampled_from(["vm", "session", "none"]))
    def vm_round_trip(self, data: st.DataObject, vm: Any, move: str) -> None:
        """assign, look up both ways, move the VM or the session, release."""
        spec = self.draw_id(data)
        other = self.draw_id(data)
        steps: list[tuple[str, Any, tuple[Any, ...]]] = [("assign_vm", spec, (vm,))]
        if move == "vm":
            steps.append(("assign_vm", other, (vm,)))  # the VM moves to another session
        elif move == "session":
            steps.append(("assign_vm", spec, ("vm-2",)))  # the session moves to another VM
        steps += [
            ("get_assigned_vm", spec, ()),
            ("get_assigned_vm", other, ()),
            ("get_session_for_vm", None, (vm,)),
            ("release_vm", spec, ()),
            ("release_vm", spec, ()),
            ("get_session_for_vm", None, (vm,)),
        ]
        for name, target, args in steps:
            if name == "assign_vm":
                self.vms_seen.add(str(args[0]) if isinstance(args[0], str) else "")
            self.on_spec(target, name, *args)

    @rule(data=st.data(), snap=SNAP_ARG, current=st.booleans())
    def snapshot_round_trip(self, data: st.DataObject, snap: Any, current: bool) -> None:
        spec = self.draw_id(data)
        for name, args in (
            ("record_snapshot_created", (snap, current)),
            ("record_snapshot_created", ("snap-2",)),
            ("get_current_snapshot", ()),
            ("record_snapshot_restored", (snap,)),
            ("get_current_snapshot", ()),
            ("get_session", ()),
            ("clear_snapshot_tracking", ()),
            ("get_current_snapshot", ()),
        ):
            self.on_spec(spec, name, *args)

    # -- budgets and depth -------------------------------------------------------

    @rule(
        data=st.data(),
        fields=st.tuples(U64, U64, U64, U64, U64, U64),
        form=st.sampled_from(["own", "other", "none", "tuple", "dict", "str"]),
    )
    def update_budget(self, data: st.DataObject, fields: tuple[int, ...], form: str) -> None:
        spec = self.draw_id(data)

        def call(side: Side) -> Any:
            if form == "own":
                budget = side.core.BudgetStatus(*fields)
            elif form == "other":
                budget = side.other.BudgetStatus(*fields)
            else:
                budget = {"none": None, "tuple": fields, "dict": {}, "str": "budget"}[form]
            return side.m.update_budget(self.resolve(side, spec), budget)

        py_raw, _ = self.both(f"update_budget({spec!r}, {fields!r}, {form})", call)
        self.model_set(spec, fields[1], fields[3], py_raw)

    @rule(data=st.data())
    def increment_recursion_depth(self, data: st.DataObject) -> None:
        self.on_ids(data, "increment_recursion_depth")

    @rule(data=st.data())
    def decrement_recursion_depth(self, data: st.DataObject) -> None:
        self.on_ids(data, "decrement_recursion_depth")

    @rule(data=st.data(), amount=AMOUNT)
    def charge_tokens(self, data: st.DataObject, amount: Any) -> None:
        spec = self.draw_id(data)
        py_raw, _ = self.on_spec(spec, "charge_tokens", amount)
        self.model_charge(spec, amount, 0, py_raw)

    @rule(data=st.data(), amount=AMOUNT)
    def charge_time(self, data: st.DataObject, amount: Any) -> None:
        spec = self.draw_id(data)
        py_raw, _ = self.on_spec(spec, "charge_time", amount)
        self.model_charge(spec, 0, amount, py_raw)

    # -- the model-call step (docs/lifecycle.md) ------------------------------------

    @rule(data=st.data())
    def begin_call(self, data: st.DataObject) -> None:
        self.on_ids(data, "begin_call")

    @rule(
        data=st.data(),
        tokens=st.one_of(st.just("omit"), AMOUNT),
        elapsed=st.one_of(st.just("omit"), AMOUNT),
    )
    def end_call(self, data: st.DataObject, tokens: Any, elapsed: Any) -> None:
        spec = self.draw_id(data)
        kwargs = {}
        if tokens != "omit":
            kwargs["tokens"] = tokens
        if elapsed != "omit":
            kwargs["elapsed_ms"] = elapsed
        py_raw, _ = self.on_spec(spec, "end_call", **kwargs)
        self.model_charge(spec, kwargs.get("tokens", 0), kwargs.get("elapsed_ms", 0), py_raw)

    @rule(
        data=st.data(),
        tokens=st.one_of(st.integers(0, 600), st.sampled_from(U64_EDGES)),
        took_ns=st.one_of(st.integers(0, 3 * NS), st.sampled_from([0, 999_999, 10**6, 3601 * NS])),
        inner=st.sampled_from(["none", "child", "nested", "destroy", "terminate"]),
    )
    def model_call(self, data: st.DataObject, tokens: int, took_ns: int, inner: str) -> None:
        """`with call(id) as c`: the clock moves by `took_ns`, c.tokens is
        set, maybe something happens to the session inside; on exit
        end_call charges the tokens and the whole milliseconds."""
        spec = self.draw_id(data)

        def call(side: Side) -> Any:
            events: list[Any] = []
            sid = self.resolve(side, spec)
            m = side.m
            try:
                with m.call(sid) as c:
                    events.append(("entered", self.norm(side, c.status)))
                    if inner == "child":
                        side.last_child = m.create_child_session(sid)
                        events.append(("child",))
                    elif inner == "nested":
                        with m.call(sid) as again:
                            events.append(("nested", self.norm(side, again.status)))
                    elif inner == "destroy":
                        m.destroy_session(sid)
                    elif inner == "terminate":
                        m.update_session_state(sid, SessionState.TERMINATED)
                    self.clock.now += took_ns
                    c.tokens = tokens
            except Exception as exc:  # noqa: BLE001
                events.append(("failed", type(exc).__name__, self.map_text(side, str(exc))))
            try:
                events.append(("after", self.norm(side, m.get_session(sid))))
            except Exception as exc:  # noqa: BLE001
                events.append(self.norm_exc(side, exc))
            return EventsResult(events)

        def after(py_raw: Any, c_raw: Any) -> None:
            if not isinstance(py_raw, EventsResult):
                return
            kinds = [event[0] for event in py_raw.events]
            if "child" in kinds:
                self.register(self.py.last_child, self.c.last_child)
            if "entered" not in kinds:
                return
            # the exit's end_call: recorded unless it raised something other
            # than an over-budget error (the body itself never raises)
            failed = [e for e in py_raw.events if e[0] == "failed"]
            outcome = KeyError() if failed and failed[0][1] not in (
                "TokenBudgetExceeded", "TimeBudgetExceeded") else None
            if inner not in ("destroy", "terminate"):
                self.model_charge(spec, tokens, took_ns // 10**6, outcome)

        self.both(f"call({spec!r}, {tokens}, {took_ns}, {inner})", call, after=after)

    @rule(data=st.data())
    def check_budget(self, data: st.DataObject) -> None:
        self.on_ids(data, "check_budget")

    @rule(
        data=st.data(),
        inner=st.sampled_from(
            ["none", "raise", "destroy", "expire", "terminate", "zero_budget", "nested", "cleanup"]
        ),
    )
    def recursion(self, data: st.DataObject, inner: str) -> None:
        """`with recursion(id)`, doing something to the session inside."""
        spec = self.draw_id(data)

        def call(side: Side) -> Any:
            events: list[Any] = []
            sid = self.resolve(side, spec)
            m = side.m
            try:
                with m.recursion(sid) as depth:
                    events.append(("entered", depth))
                    if inner == "raise":
                        raise KeyError("inside")
                    if inner == "destroy":
                        m.destroy_session(sid)
                    elif inner == "expire":
                        self.clock.now += 3601 * NS  # past this session's expiry
                    elif inner == "terminate":
                        m.update_session_state(sid, SessionState.TERMINATED)
                    elif inner == "zero_budget":
                        m.update_budget(sid, side.core.BudgetStatus(current_recursion_depth=0))
                        events.append(("zeroed",))
                    elif inner == "nested":
                        with m.recursion(sid) as again:
                            events.append(("nested", again))
                    elif inner == "cleanup":
                        self.clock.now += 3601 * NS
                        events.append(("cleaned", len(m.cleanup_expired_sessions())))
            except Exception as exc:  # noqa: BLE001
                events.append(self.norm_exc(side, exc))
            try:
                events.append(("depth", m.get_session(sid).recursion_depth))
            except Exception as exc:  # noqa: BLE001
                events.append(self.norm_exc(side, exc))
            return EventsResult(events)

        def after(py_raw: Any, c_raw: Any) -> None:
            if not isinstance(py_raw, EventsResult):
                return
            kinds = [event[0] for event in py_raw.events]
            if "zeroed" in kinds:
                self.model_set(spec, 0, 0, None)

        self.both(f"recursion({spec!r}, {inner})", call, after=after)

    # -- snapshots -------------------------------------------------------------------

    @rule(
        data=st.data(),
        snap=SNAP_ARG,
        current=st.sampled_from(["omit", True, False, 1, None, "yes"]),
    )
    def record_snapshot_created(self, data: st.DataObject, snap: Any, current: Any) -> None:
        if current == "omit":
            self.on_ids(data, "record_snapshot_created", snap)
        else:
            self.on_ids(data, "record_snapshot_created", snap, current)

    @rule(data=st.data(), snap=SNAP_ARG, keyword=st.booleans())
    def record_snapshot_created_keyword(self, data: st.DataObject, snap: Any, keyword: bool) -> None:
        self.on_ids(data, "record_snapshot_created", snap, set_as_current=keyword)

    @rule(data=st.data(), snap=SNAP_ARG)
    def record_snapshot_restored(self, data: st.DataObject, snap: Any) -> None:
        self.on_ids(data, "record_snapshot_restored", snap)

    @rule(data=st.data())
    def get_current_snapshot(self, data: st.DataObject) -> None:
        self.on_ids(data, "get_current_snapshot")

    @rule(data=st.data())
    def clear_snapshot_tracking(self, data: st.DataObject) -> None:
        self.on_ids(data, "clear_snapshot_tracking")

    # -- whole table -------------------------------------------------------------------

    @rule()
    def get_stats(self) -> None:
        self.both("get_stats()", lambda side: side.m.get_stats())

    @rule()
    def list_sessions(self) -> None:
        self.both("list_sessions()", lambda side: side.m.list_sessions(), id_ordered=True)

    @rule()
    def length(self) -> None:
        self.both("len()", lambda side: len(side.m))

    @rule(data=st.data(), other=st.sampled_from([5, None, b"x", 1.5, (), object()]))
    def contains(self, data: st.DataObject, other: Any) -> None:
        spec = self.draw_id(data)
        self.both(f"{spec!r} in m", lambda side: self.resolve(side, spec) in side.m)
        self.both(f"{other!r} in m", lambda side: other in side.m)

    @precondition(lambda self: np is not None)
    @rule(data=st.data(), as_array=st.booleans())
    def validate_many(self, data: st.DataObject, as_array: bool) -> None:
        specs = [self.draw_id(data) for _ in range(data.draw(st.integers(0, 5)))]

        def call(side: Side) -> Any:
            ids = [self.resolve(side, s) for s in specs]
            if as_array:
                raw = []
                for sid in ids:
                    if type(sid).__name__ == "SessionId":
                        raw.append(sid.bytes)
                ids = np.array(raw, dtype="V16")
            return side.m.validate_many(ids)

        self.both(f"validate_many({specs!r}, array={as_array})", call)

    @precondition(lambda self: np is not None)
    @rule()
    def budget_table(self) -> None:
        def call(side: Side) -> Any:
            table = side.m.budget_table()
            ids = [int.from_bytes(bytes(row["id"]), "big") for row in table]
            assert ids == sorted(ids), f"{side.name}: budget_table not in id order"
            rows = []
            for row in table.tolist():
                rows.append((self.to_py(side, int.from_bytes(bytes(row[0]), "big")),) + tuple(row[1:]))
            return EventsResult(sorted(rows))

        self.both("budget_table()", call)

    @precondition(lambda self: not self.dumped)
    @rule(with_config=st.booleans())
    def dump_and_load(self, with_config: bool) -> None:
        """Dump each table and load it back: nothing may change."""
        self.dumped = True  # once per example: dump fsyncs
        if not self.tmp:
            self.tmp = tempfile.mkdtemp(prefix="rlm-diff-")

        def call(side: Side) -> Any:
            path = os.path.join(self.tmp, f"{side.name}.dump")
            side.m.dump(path)
            config = self.config if with_config else None
            loaded = side.core.SessionManager.load(path, config, clock=self.clock)
            # The dump keeps the table's counters, not the refusal counts.
            before = (side.m.list_sessions(), side.m.get_stats()._astuple()[:5])
            after = (loaded.list_sessions(), loaded.get_stats()._astuple()[:5])
            assert before == after, f"{side.name}: dump/load changed the table"
            side.m = loaded
            return None

        # SessionManager.load takes no on_remove: from here on removals are
        # only counted by the table's difference.
        self.reporting = False
        self.both(f"dump_and_load(config={with_config})", call)

    # -- the clock ---------------------------------------------------------------------

    @rule(delta=st.integers(0, 9).flatmap(lambda n: (
        st.integers(-NS, 2 * NS) if n < 7
        else st.sampled_from([1, -1, 30 * NS, 60 * NS, 3600 * NS]) if n < 9
        else st.integers(0, 4000 * NS)
    )))
    def advance_time(self, delta: int) -> None:
        self.clock.now = min(max(self.clock.now + delta, I64_MIN), I64_MAX)

    @precondition(lambda self: bool(self.refs))
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def jump_to_expiry(self, data: st.DataObject, offset: int) -> None:
        """Move the clock to exactly a session's expiry, or 1 ns either side."""
        ref = data.draw(st.sampled_from(self.refs))
        # (list_sessions, not get_session: a refused lookup on the twin alone
        # would count in its rejected_not_found and not in the compiled core's)
        rows = [r for r in self.py.m.list_sessions() if int(r.id) == ref.py]
        if not rows:  # gone: nothing to aim at
            return
        expires = rows[0].expires_at_ns
        self.clock.now = min(max(expires + offset, I64_MIN), I64_MAX)

    @rule(
        data=st.data(),
        to=st.sampled_from([I64_MAX, I64_MAX - 1, I64_MAX - 3600 * NS, I64_MIN, 0, -1]),
        op=st.sampled_from(["create_session", "extend_session", "validate_session",
                            "cleanup_expired_sessions", "charge_time", "create_child_session",
                            "pop_expired_sessions", "begin_call"]),
    )
    def at_extreme_time(self, data: st.DataObject, to: int, op: str) -> None:
        """One call at the ends of the clock's range (creates and extensions
        that would overflow int64 raise ConfigError), then back to now."""
        spec = self.draw_id(data)
        now = self.clock.now

        def call(side: Side) -> Any:
            self.clock.now = to
            try:
                if op == "create_session":
                    return side.m.create_session()
                if op == "cleanup_expired_sessions":
                    return side.m.cleanup_expired_sessions()
                if op == "pop_expired_sessions":
                    return side.m.pop_expired_sessions()
                if op == "charge_time":
                    return side.m.charge_time(self.resolve(side, spec), 1)
                return getattr(side.m, op)(self.resolve(side, spec))
            finally:
                self.clock.now = now

        def after(py_raw: Any, c_raw: Any) -> None:
            if op in ("create_session", "create_child_session"):
                self.register(py_raw, c_raw)
            elif op == "charge_time":
                self.model_charge(spec, 0, 1, py_raw)

        self.both(f"{op}({spec!r}) at {to}", call, after=after,
                  id_ordered=op in ("cleanup_expired_sessions", "pop_expired_sessions"))

    @rule(
        data=st.data(),
        mode=st.sampled_from(CLOCK_MODES),
        op=st.sampled_from([
            "create_session", "update_session_state", "is_session_valid",
            "validate_session", "extend_session", "assign_vm", "set_context_variable",
            "delete_context_variable", "update_budget", "increment_recursion_depth",
            "decrement_recursion_depth", "charge_tokens", "charge_time", "check_budget",
            "record_snapshot_created", "record_snapshot_restored", "clear_snapshot_tracking",
            "cleanup_expired_sessions", "get_session", "destroy_session", "release_vm",
            "recursion", "create_child_session", "children", "pop_expired_sessions",
            "begin_call", "end_call",
        ]),
    )
    def misbehaving_clock(self, data: st.DataObject, mode: str, op: str) -> None:
        """One call with a clock that raises or returns a bad value: its
        error passes through (or TypeError/ValueError), nothing changes."""
        args = {
            "update_session_state": (SessionState.PAUSED,),
            "assign_vm": ("vm-0",),
            "set_context_variable": ("k0", "v"),
            "delete_context_variable": ("k0",),
            "charge_tokens": (1,),
            "charge_time": (1,),
            "record_snapshot_created": ("snap-1",),
            "record_snapshot_restored": ("snap-1",),
        }.get(op, ())
        spec = self.draw_id(data)

        def call(side: Side) -> Any:
            self.clock.mode = mode
            try:
                if op == "create_session":
                    return side.m.create_session()
                if op == "cleanup_expired_sessions":
                    return side.m.cleanup_expired_sessions()
                if op == "pop_expired_sessions":
                    return side.m.pop_expired_sessions()
                sid = self.resolve(side, spec)
                if op == "end_call":
                    return side.m.end_call(sid, tokens=1, elapsed_ms=1)
                if op == "update_budget":
                    return side.m.update_budget(sid, side.core.BudgetStatus())
                if op == "recursion":
                    with side.m.recursion(sid) as depth:
                        return depth
                return getattr(side.m, op)(sid, *args)
            finally:
                self.clock.mode = ""

        def after(py_raw: Any, c_raw: Any) -> None:
            if op in ("create_session", "create_child_session"):
                self.register(py_raw, c_raw)
            elif op in ("charge_tokens", "charge_time", "end_call"):
                self.model_charge(spec, op != "charge_time", op != "charge_tokens", py_raw)
            elif op == "update_budget":
                self.model_set(spec, 0, 0, py_raw)

        self.both(
            f"{op}({spec!r}) with clock mode {mode}",
            call,
            after=after,
            id_ordered=op in ("cleanup_expired_sessions", "pop_expired_sessions", "children"),
        )

    @rule(
        config=st.one_of(
            st.sampled_from([None, 5, "config", {}]),
            st.builds(RlmConfig, token_budget=st.sampled_from([-1, 2**64, True, 1.5])),
            st.builds(RlmConfig, pool_min_size=st.just(11)),
            st.builds(RlmConfig, session_duration_secs=st.sampled_from([9_223_372_037, -5])),
        ),
        clock=st.sampled_from(["ok", 5, "clock"]),
    )
    def bad_constructor(self, config: Any, clock: Any) -> None:
        the_clock = self.clock if clock == "ok" else clock
        self.both(
            f"SessionManager({config!r}, clock={clock!r})",
            lambda side: type(side.core.SessionManager(config, clock=the_clock)).__name__,
        )

    # -- invariants (SPEC 4.1, 4.6, 4.8) and equality of the two tables ------------------

    @invariant()
    def tables_agree_and_hold_the_invariants(self) -> None:
        if self.py.m is None:
            return
        FIGURES["manager_steps"] += 1
        live = {int(r.id) for r in self.py.m.list_sessions()}
        gone = self.live - live
        self.removed_total += len(gone)
        for side in (self.py, self.c):
            split = (self.destroyed, self.expired) if self.reporting else None
            check_invariants(side.m, self.vms_seen, (self.created, self.removed_total, split))
            self.check_trees(side)
            self.check_removals(side, gone)
        self.live = live
        self.light = True
        try:
            self.both(
                "list_sessions() [invariant]", lambda side: side.m.list_sessions(), id_ordered=True
            )
        finally:
            self.light = False
        self.both("get_stats() [invariant]", lambda side: side.m.get_stats())

    def check_trees(self, side: Side) -> None:
        """SPEC 11 at rest on one manager: parent and root links, children(),
        the roll-up of charges (the model), validity flowing down."""
        m = side.m
        rows = {int(r.id): r for r in m.list_sessions()}
        kids: dict[int, list[int]] = {key: [] for key in rows}
        for key, r in rows.items():
            py_key = self.to_py(side, key)
            if r.parent_id is None:
                assert r.root_id == r.id, f"{side.name}: root {r!r} has root_id {r.root_id}"
                assert self.parent[py_key] is None
            else:
                parent = int(r.parent_id)
                assert parent in rows, f"{side.name}: {r.id}'s parent {r.parent_id} is gone"
                assert self.to_py(side, parent) == self.parent[py_key], f"{side.name}: {r!r}"
                root = rows[int(r.root_id)]  # (KeyError: the root is gone)
                assert root.parent_id is None and root.root_id == root.id
                assert r.root_id == rows[parent].root_id, f"{side.name}: {r!r}"
                kids[parent].append(key)
            used = r.budget_status
            assert [used.tokens_used, used.time_used_ms] == self.used[py_key], (
                f"{side.name}: {r.id} has used {used.tokens_used} tokens and "
                f"{used.time_used_ms} ms, its own charges and its descendants' "
                f"(as rolled up) are {self.used[py_key]}"
            )
        for key, expected in kids.items():
            got = [int(k) for k in m.children(side.core.SessionId.from_int(key))]
            assert got == sorted(expected), f"{side.name}: children({key}) = {got}, not {expected}"
        if np is not None and rows:
            # Valid: neither it nor any ancestor is terminated or expired (by
            # state or clock); validate_many counts no refusal.
            now = self.clock.now

            def valid(r: Any) -> bool:
                while True:
                    if r.state in (SessionState.TERMINATED, SessionState.EXPIRED):
                        return False
                    if now > r.expires_at_ns:
                        return False
                    if r.parent_id is None:
                        return True
                    r = rows[int(r.parent_id)]

            ids = list(rows)
            got = [bool(v) for v in m.validate_many([side.core.SessionId.from_int(k) for k in ids])]
            assert got == [valid(rows[k]) for k in ids], f"{side.name}: validity of {ids}: {got}"

    def check_removals(self, side: Side, gone: set[int]) -> None:
        """Every session that left the table since the last check was
        reported to on_remove, once (when it is attached)."""
        new = side.removed[side.seen:]
        side.seen = len(side.removed)
        ids = [self.to_py(side, int(info.id)) for info, _ in new]
        assert len(ids) == len(set(ids)) and not side.reported & set(ids), (
            f"{side.name}: on_remove reported a session twice: {ids}"
        )
        side.reported.update(ids)
        if self.reporting:
            assert set(ids) == gone, f"{side.name}: removed {sorted(gone)}, reported {sorted(ids)}"


REFUSALS = {
    "SessionNotFound": "rejected_not_found",
    "InvalidSessionToken": "rejected_invalid_token",
    "InvalidSessionState": "rejected_terminated",
    "SessionExpired": "rejected_expired",
    "TokenBudgetExceeded": "rejected_tokens",
    "TimeBudgetExceeded": "rejected_time",
    "RecursionDepthExceeded": "rejected_depth",
}


def check_refusal_counted(label: str, side: Side, before: Any, after: Any, raw: Any, name: str) -> None:
    """One call counts once in the rejected_* counter of the refusal it
    raised (is_session_valid: once when False), and nowhere else
    (docs/lifecycle.md)."""
    moved = {f: getattr(after, f) - getattr(before, f) for f in REFUSALS.values()}
    moved = {f: n for f, n in moved.items() if n}
    if isinstance(raw, BaseException):
        field = REFUSALS.get(type(raw).__name__)
        expected = {} if field is None else {field: 1}
    elif name == "is_session_valid" and raw is False:
        assert list(moved.values()) == [1], f"{label}: {side.name} counted {moved}"
        return
    else:
        expected = {}
    assert moved == expected, f"{label} -> {raw!r}: {side.name} counted {moved}, not {expected}"


def check_invariants(m: Any, vms_seen: set[str], counts: tuple[int, int, Any]) -> None:
    """SPEC 4.1, 4.6 and 4.8 on one manager, at rest; `counts`: sessions
    created, removed, and (destroyed, expired) where on_remove told which."""
    stats = m.get_stats()
    rows = m.list_sessions()
    created, removed, split = counts
    assert stats.active_sessions == len(m) == len(rows)
    assert stats.total_sessions_created == created
    assert stats.total_sessions_destroyed + stats.total_sessions_expired == removed
    if split is not None:
        assert (stats.total_sessions_destroyed, stats.total_sessions_expired) == split
    assert created == removed + len(rows)
    held = {r.vm_instance_id: r.id for r in rows if r.vm_instance_id is not None}
    assert stats.sessions_with_vm == len(held) == sum(r.vm_instance_id is not None for r in rows)
    for vm, sid in held.items():
        assert m.get_session_for_vm(vm) == sid
        assert m.get_assigned_vm(sid) == vm
    for vm in vms_seen:
        if vm and vm not in held:
            try:
                owner = m.get_session_for_vm(vm)
            except (TypeError, ValueError):
                continue
            assert owner is None, f"{vm!r} maps to {owner} which does not hold it"
    for r in rows:
        assert r.recursion_depth == r.budget_status.current_recursion_depth
        assert r.id in m
    ids = [int(r.id) for r in rows]
    assert ids == sorted(ids)


# --------------------------------------------------------------------------
# RedisSessionManager against the twin
# --------------------------------------------------------------------------


class RedisMachine(ManagerMachine):
    """The same machine, every rule, with the Redis-backed manager (a fresh
    namespace of the test's redis-server per manager) in the compiled
    core's place."""

    REDIS: Any = None  # the conftest's redis namespace, set by the test

    def setup_sides(self) -> None:
        self.py = Side("python", PY, C)
        self.c = Side("redis", self.REDIS, PY)
        self.c2p = {}


# --------------------------------------------------------------------------
# BudgetTracker
# --------------------------------------------------------------------------


class TrackerMachine(Differ, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.setup_sides()
        self.pairs: list[int] = []  # tracker numbers; side.tracker[n]
        self.scopes: list[tuple[Any, Any]] = []  # open recursion() scopes
        FIGURES["tracker_examples"] += 1

    @initialize(
        config=st.builds(
            RlmConfig,
            token_budget=st.sampled_from([0, 1, 10, 1000, U64_MAX]),
            time_budget_ms=st.sampled_from([0, 1, 10, 1000, U64_MAX]),
            max_recursion_depth=st.sampled_from([0, 1, 3, 2**32 - 1]),
        ),
        start=st.sampled_from([START_NS, 0, I64_MAX - 10**12, I64_MIN]),
    )
    def start(self, config: RlmConfig, start: int) -> None:
        self.clock = DiffClock(start)
        self.add_pair(lambda side: side.core.BudgetTracker(config, clock=self.clock))

    def add_pair(self, make: Callable[[Side], Any]) -> None:
        def after(py_raw: Any, c_raw: Any) -> None:
            if not isinstance(py_raw, BaseException) and not isinstance(c_raw, BaseException):
                n = len(self.pairs)
                self.pairs.append(n)
                self.py.tracker[n], self.c.tracker[n] = py_raw, c_raw

        def norm_tracker(side: Side) -> Any:
            tracker = make(side)
            assert type(tracker) is side.core.BudgetTracker
            return tracker

        raw = self.both_raw(norm_tracker)
        after(*raw)

    def both_raw(self, call: Callable[[Side], Any]) -> tuple[Any, Any]:
        """Like both(), for results that are trackers (compared by status)."""

        def wrapped(side: Side) -> Any:
            tracker = call(side)
            return TrackerResult(tracker)

        py_raw, c_raw = self.both("tracker", wrapped)
        unwrap = lambda r: r if isinstance(r, BaseException) else r.tracker
        return unwrap(py_raw), unwrap(c_raw)

    def call(self, data: st.DataObject, name: str, *args: Any) -> tuple[Any, Any]:
        n = data.draw(st.sampled_from(self.pairs), label="tracker")
        return self.both(
            f"tracker[{n}].{name}{args!r}", lambda side: getattr(side.tracker[n], name)(*args)
        )

    has_trackers = precondition(lambda self: bool(self.pairs))
    room = precondition(lambda self: len(self.pairs) < 6)  # keeps steps cheap

    @has_trackers
    @rule(data=st.data(), amount=AMOUNT)
    def add_tokens(self, data: st.DataObject, amount: Any) -> None:
        self.call(data, "add_tokens", amount)

    @has_trackers
    @rule(
        data=st.data(),
        name=st.sampled_from([
            "check_token_budget", "check_time_budget", "check_recursion_depth", "check_all",
            "push_recursion", "pop_recursion", "tokens_used", "tokens_remaining", "elapsed_ms",
            "time_remaining_ms", "current_depth", "depth_remaining", "status",
            "is_near_exhaustion", "__repr__",
        ]),
    )
    def no_argument_method(self, data: st.DataObject, name: str) -> None:
        self.call(data, name)

    @has_trackers
    @room
    @rule(
        data=st.data(),
        tokens=st.one_of(st.none(), AMOUNT),
        time_ms=st.one_of(st.none(), AMOUNT),
    )
    def child(self, data: st.DataObject, tokens: Any, time_ms: Any) -> None:
        n = data.draw(st.sampled_from(self.pairs), label="parent")
        kwargs = {}
        if tokens is not None:
            kwargs["remaining_tokens"] = tokens
        if time_ms is not None:
            kwargs["remaining_time_ms"] = time_ms
        self.add_pair(lambda side: side.tracker[n].child(**kwargs))

    @room
    @rule(fields=st.tuples(U64, U64, U64, U64, U64, U64), form=st.sampled_from(["own", "other", "bad"]))
    def from_status(self, fields: tuple[int, ...], form: str) -> None:
        def make(side: Side) -> Any:
            if form == "bad":
                status: Any = fields
            else:
                status = (side.core if form == "own" else side.other).BudgetStatus(*fields)
            return side.core.BudgetTracker.from_status(status, clock=self.clock)

        self.add_pair(make)

    @has_trackers
    @rule(data=st.data(), body=st.sampled_from(["none", "raise", "pop_inside", "nested"]))
    def recursion(self, data: st.DataObject, body: str) -> None:
        n = data.draw(st.sampled_from(self.pairs), label="tracker")

        def call(side: Side) -> Any:
            tracker = side.tracker[n]
            events: list[Any] = []
            try:
                with tracker.recursion() as depth:
                    events.append(("entered", depth))
                    if body == "raise":
                        raise KeyError("inside")
                    if body == "pop_inside":
                        events.append(("popped", tracker.pop_recursion()))
                    if body == "nested":
                        with tracker.recursion() as again:
                            events.append(("nested", again))
            except Exception as exc:  # noqa: BLE001
                events.append(self.norm_exc(side, exc))
            events.append(("depth", tracker.current_depth()))
            return EventsResult(events)

        self.both(f"tracker[{n}].recursion() {body}", call)

    @rule(delta=st.one_of(st.integers(-10**9, 10**9), st.sampled_from([10**6, 10**15, 2**62])))
    def advance_time(self, delta: int) -> None:
        self.clock.now = min(max(self.clock.now + delta, I64_MIN), I64_MAX)

    @has_trackers
    @rule(
        data=st.data(),
        mode=st.sampled_from(CLOCK_MODES),
        name=st.sampled_from(["check_time_budget", "elapsed_ms", "time_remaining_ms", "status",
                              "check_all", "is_near_exhaustion", "child", "add_tokens"]),
    )
    def misbehaving_clock(self, data: st.DataObject, mode: str, name: str) -> None:
        n = data.draw(st.sampled_from(self.pairs), label="tracker")

        def call(side: Side) -> Any:
            self.clock.mode = mode
            try:
                tracker = side.tracker[n]
                if name == "child":
                    return TrackerResult(tracker.child())
                if name == "add_tokens":
                    return tracker.add_tokens(0)
                return getattr(tracker, name)()
            finally:
                self.clock.mode = ""

        self.both(f"tracker[{n}].{name}() with clock mode {mode}", call)

    @invariant()
    def trackers_agree(self) -> None:
        FIGURES["tracker_steps"] += 1
        for n in self.pairs:
            self.both(f"tracker[{n}].status() [invariant]", lambda side, n=n: side.tracker[n].status())
            for side in (self.py, self.c):
                t = side.tracker[n]
                status = t.status()
                assert status.current_recursion_depth == t.current_depth()
                assert status.tokens_used == t.tokens_used()


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------


def run_in_chunks(machine: type[RuleBasedStateMachine], share: float = 1.0) -> None:
    """Run `share` of the profile's max_examples in runs of at most 500:
    Hypothesis keeps every example's choices for the length of one run,
    which for a "long" profile in one piece grows to gigabytes. (A share
    below 1 keeps the file's default run near a minute on 2 cores: a step of
    the manager machines checks every tree invariant on both sides.)"""
    current = settings()
    left = max(1, int(current.max_examples * share))
    while left > 0:
        chunk = min(left, 500)
        run_state_machine_as_test(machine, settings=settings(current, max_examples=chunk))
        left -= chunk


def test_managers_agree_step_by_step() -> None:
    run_in_chunks(ManagerMachine, 0.7)
    conftest_hypothesis.figure(
        "differential_manager_examples", FIGURES["manager_examples"],
        steps=FIGURES["manager_steps"], profile=settings.get_current_profile_name(),
    )


def test_redis_agrees_step_by_step(redis_namespace: Any) -> None:
    """The twin against RedisSessionManager (skips without a redis-server):
    a tenth of the profile's examples (each step is round trips)."""
    RedisMachine.REDIS = redis_namespace
    run_in_chunks(RedisMachine, 0.1)


def test_budget_trackers_agree_step_by_step() -> None:
    run_in_chunks(TrackerMachine)
    conftest_hypothesis.figure(
        "differential_tracker_examples", FIGURES["tracker_examples"],
        steps=FIGURES["tracker_steps"], profile=settings.get_current_profile_name(),
    )
