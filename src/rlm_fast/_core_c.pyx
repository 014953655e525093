# cython: language_level=3, freethreading_compatible=True, binding=False
# cython: boundscheck=False, wraparound=False, cdivision=False, embedsignature=True, embedsignature.format=clinic
# distutils: language = c++
"""Compiled session core: `SessionId`, `SessionManager` and C-backed result
classes, the same behaviour as `_core_py.py` (the specification), with the
table in C++ memory.

Each manager owns a `Table` (`_core_c.h`): 16 shards, each with its own
lock, plus a lock for the VM map; `Table` methods take the locks they need.
Every method here converts its arguments (ids parsed, strings encoded, the
clock read) before calling into the table, where only C++ work runs under a
lock (no Python object is created, freed or raised there), and builds its
result or exception afterwards from a plain C copy. `_core_c.pxd` declares
the table and a nogil C API for other Cython extensions.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libcpp.algorithm cimport is_sorted, sort
from libcpp.vector cimport vector

from types import MappingProxyType

from ._types import (
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    STATE_CODE,
    STATES,
    budget_replace,
    budget_repr,
    budget_table_dtype,
    check_clock_value,
    check_restore,
    check_str,
    check_u64,
    coerce_state,
    foreign_session_id,
    info_hash,
    info_repr,
    ns_to_datetime,
    numpy,
    raw_ids,
    reduce_result,
    result_kind,
    session_id_type_error,
    stats_repr,
)
from ._types import BudgetStatus as _PyBudgetStatus
from ._types import SessionInfo as _PySessionInfo
from ._types import SessionStats as _PySessionStats
from .config import (
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
)
from .config import RlmConfig
from .errors import (
    ConfigError,
    InvalidSessionState,
    InvalidSessionToken,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

from cpython.object cimport PyObject

cdef extern from "Python.h":
    object PyByteArray_FromStringAndSize(const char *, Py_ssize_t)
    char *PyByteArray_AS_STRING(object)
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *)  # NULL + error
    object PyUnicode_DecodeUTF8(const char *, Py_ssize_t, const char *)
    object PyUnicode_DecodeASCII(const char *, Py_ssize_t, const char *)
    bint PyUnicode_IS_ASCII(object)
    void *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    unsigned long long PyLong_AsUnsignedLongLong(object)  # -1 + error
    PyObject *PyErr_Occurred()  # borrowed: never an `object`
    void PyErr_Clear()
    ctypedef Py_ssize_t Py_hash_t

if rlm_random_init() != 0:
    raise ImportError("rlm_fast: could not register the fork handler")

cdef tuple _STATES = STATES
cdef object _TERMINATED_NAME = "Terminated"
cdef uint64_t _U64_MAX = 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------
# SessionId
# ---------------------------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class SessionId:
    """A session id: a ULID (48-bit Unix ms + 80 CSPRNG bits). Immutable,
    hashable (hash(sid) == hash(int(sid))), ordered like its int."""

    def __init__(self):
        if self._initialized:
            raise AttributeError("SessionId is immutable")
        cdef SidKey k
        if rlm_new_key(rlm_time_ns() // 1000000, &k) != 0:
            raise OSError("the operating system's random source failed")
        self.hi = k.hi
        self.lo = k.lo
        self._initialized = True

    @classmethod
    def from_string(cls, s):
        if not isinstance(s, str):
            raise TypeError(f"from_string needs a str, not {type(s).__name__}")
        cdef SidKey k
        _parse_str(<str>s, &k)  # a str subclass too (checked above)
        return _sid(k)

    @classmethod
    def from_bytes(cls, b):
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes needs 16 bytes, not {type(b).__name__}")
        raw = bytes(b)
        if len(raw) != 16:
            raise ValueError(f"a session id is exactly 16 bytes, got {len(raw)}")
        cdef SidKey k
        k.hi = int.from_bytes(raw[:8], "big")
        k.lo = int.from_bytes(raw[8:], "big")
        return _sid(k)

    @classmethod
    def from_int(cls, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"from_int needs an int, not {type(value).__name__}")
        if not 0 <= value <= (1 << 128) - 1:
            raise ValueError("a session id is an int in 0..2**128-1")
        cdef SidKey k
        k.hi = value >> 64
        k.lo = value & 0xFFFFFFFFFFFFFFFF
        return _sid(k)

    @property
    def bytes(self):
        return self.hi.to_bytes(8, "big") + self.lo.to_bytes(8, "big")

    @property
    def timestamp_ms(self):
        return self.hi >> 16

    @property
    def datetime(self):
        return ns_to_datetime(<object>(self.hi >> 16) * 1000000)  # Python int: no wrap

    def __int__(self):
        return (<object>self.hi << 64) | self.lo

    def __index__(self):
        return (<object>self.hi << 64) | self.lo

    def __str__(self):
        cdef char buf[26]
        rlm_format(_k(self), buf)
        return PyUnicode_DecodeASCII(buf, 26, NULL)

    def __repr__(self):
        return f"SessionId('{self}')"

    def __hash__(self):
        # The hash of the 128-bit int: Python reduces ints modulo 2**61-1
        # on 64-bit builds, and 2**64 = 8 (mod 2**61-1).
        cdef uint64_t m = 0x1FFFFFFFFFFFFFFF
        cdef uint64_t h
        if sizeof(Py_hash_t) < 8:
            return hash(int(self))
        h = ((self.hi % m) * 8) % m
        h = (h + self.lo % m) % m
        return <Py_hash_t>h

    def __richcmp__(self, other, int op):
        if not isinstance(other, SessionId):
            if op == 2 or op == 3:  # the other core's id: same value?
                value = foreign_session_id(other)
                if value is not None:
                    return (int(self) == value) == (op == 2)
            return NotImplemented
        cdef SessionId o = <SessionId>other
        cdef int c
        if self.hi != o.hi:
            c = -1 if self.hi < o.hi else 1
        elif self.lo != o.lo:
            c = -1 if self.lo < o.lo else 1
        else:
            c = 0
        if op == 0:
            return c < 0
        if op == 1:
            return c <= 0
        if op == 2:
            return c == 0
        if op == 3:
            return c != 0
        if op == 4:
            return c > 0
        return c >= 0

    def __reduce__(self):
        import rlm_fast

        return (rlm_fast._restore_session_id, (self.bytes,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


cdef inline SidKey _k(SessionId sid) noexcept:
    cdef SidKey k
    k.hi = sid.hi
    k.lo = sid.lo
    return k


cdef inline SessionId _sid(SidKey k):
    cdef SessionId sid = SessionId.__new__(SessionId)
    sid.hi = k.hi
    sid.lo = k.lo
    sid._initialized = True
    return sid


cdef inline int _try_parse(str s, SidKey *out) noexcept:
    """0 if `s` is a well-formed id, -1 if not (no exception set)."""
    if PyUnicode_GET_LENGTH(s) != 26 or not PyUnicode_IS_ASCII(s):
        return -1
    return rlm_parse(<const char *>PyUnicode_DATA(s), out)


cdef inline int _parse_str(str s, SidKey *out) except -1:
    if _try_parse(s, out) != 0:
        raise InvalidSessionToken(s)
    return 0


cdef inline int _key(object session_id, SidKey *out) except -1:
    """The table key of a SessionId or its string form (SPEC 7)."""
    if type(session_id) is SessionId:
        out.hi = (<SessionId>session_id).hi
        out.lo = (<SessionId>session_id).lo
        return 0
    if isinstance(session_id, str):
        return _parse_str(<str>session_id, out)
    value = foreign_session_id(session_id)
    if value is None:
        raise session_id_type_error(session_id)
    out.hi = value >> 64
    out.lo = value & 0xFFFFFFFFFFFFFFFF
    return 0


# ---------------------------------------------------------------------------
# argument conversion (the slow paths call the shared checks in _types, so
# both cores raise the same errors with the same messages)
# ---------------------------------------------------------------------------

cdef inline uint64_t _u64(object value, str name) except? 0xFFFFFFFFFFFFFFFF:
    cdef unsigned long long r
    if type(value) is int:
        r = PyLong_AsUnsignedLongLong(value)
        if r != <unsigned long long>-1 or PyErr_Occurred() == NULL:
            return r
        PyErr_Clear()
    return <uint64_t>check_u64(value, name)


cdef inline int _utf8(object value, str name, bint nonempty, string *out) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    if type(value) is not str or (nonempty and PyUnicode_GET_LENGTH(value) == 0):
        value = check_str(value, name, nonempty=nonempty)  # raises, or copies a subclass
    p = PyUnicode_AsUTF8AndSize(value, &n)
    if p == NULL:
        PyErr_Clear()
        check_str(value, name, nonempty=nonempty)  # raises the shared ValueError
        raise AssertionError("unreachable: check_str accepted a non-UTF-8 str")
    out.assign(p, n)
    return 0


cdef inline str _text(const string &s):
    return PyUnicode_DecodeUTF8(s.data(), s.size(), NULL)


cdef SessionInfo _info(SessionCopy *c):
    """A SessionInfo that takes over the C copy `c` (left empty)."""
    cdef SessionInfo info = SessionInfo.__new__(SessionInfo)
    rlm_move_copy(info.c, c[0])
    info._frozen = True
    return info


cdef inline int _state_code(object state) except -1:
    """The state code of a SessionState member (identity checks: an Enum's
    hash is a Python call) or of its value string."""
    cdef int i
    for i in range(6):
        if state is _STATES[i]:
            return i
    return STATE_CODE[coerce_state(state)]


cdef int _fail(int status, SidKey key, str operation) except -1:
    """Raise the error of a status every session call shares."""
    if status == RLM_NOT_FOUND:
        raise SessionNotFound(_sid(key))
    if status == RLM_TERMINATED:
        raise InvalidSessionState(_sid(key), _TERMINATED_NAME, operation)
    if status == RLM_EXPIRED:
        raise SessionExpired(_sid(key))
    if status == RLM_NOMEM:
        raise MemoryError()
    raise AssertionError(f"rlm_fast: unexpected status {status} in {operation}")


# ---------------------------------------------------------------------------
# result types: the compiled twins of _types.BudgetStatus / SessionInfo /
# SessionStats, C-backed so a result costs one allocation. Same behaviour:
# checks, repr, equality (with either core's objects) and pickles are shared
# with the Python classes through the helpers in _types.
# ---------------------------------------------------------------------------

@cython.final
@cython.freelist(16)
cdef class BudgetStatus:
    """Immutable record of a session's budgets (the crate's `BudgetStatus`)."""

    cdef readonly uint64_t token_budget
    cdef readonly uint64_t tokens_used
    cdef readonly uint64_t time_budget_ms
    cdef readonly uint64_t time_used_ms
    cdef readonly uint64_t max_recursion_depth
    cdef readonly uint64_t current_recursion_depth
    cdef bint _frozen

    def __init__(self, token_budget=DEFAULT_TOKEN_BUDGET, tokens_used=0,
                 time_budget_ms=DEFAULT_TIME_BUDGET_MS, time_used_ms=0,
                 max_recursion_depth=DEFAULT_MAX_RECURSION_DEPTH,
                 current_recursion_depth=0):
        if self._frozen:
            raise AttributeError("BudgetStatus is immutable")
        self.token_budget = check_u64(token_budget, "token_budget")
        self.tokens_used = check_u64(tokens_used, "tokens_used")
        self.time_budget_ms = check_u64(time_budget_ms, "time_budget_ms")
        self.time_used_ms = check_u64(time_used_ms, "time_used_ms")
        self.max_recursion_depth = check_u64(max_recursion_depth, "max_recursion_depth")
        self.current_recursion_depth = check_u64(current_recursion_depth, "current_recursion_depth")
        self._frozen = True

    @classmethod
    def _trusted(cls, token_budget, tokens_used, time_budget_ms, time_used_ms,
                 max_recursion_depth, current_recursion_depth):
        return _budget(token_budget, tokens_used, time_budget_ms, time_used_ms,
                       max_recursion_depth, current_recursion_depth)

    def _astuple(self):
        return (self.token_budget, self.tokens_used, self.time_budget_ms,
                self.time_used_ms, self.max_recursion_depth, self.current_recursion_depth)

    def __eq__(self, other):
        if result_kind(other) != "BudgetStatus":
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __repr__(self):
        return budget_repr(self)

    def __reduce__(self):
        return reduce_result(self, "BudgetStatus")

    def replace(self, **changes):
        """A copy with some fields changed (like `dataclasses.replace`)."""
        return budget_replace(self, **changes)

    def tokens_exhausted(self):
        return self.tokens_used >= self.token_budget

    def time_exhausted(self):
        return self.time_used_ms >= self.time_budget_ms

    def depth_exhausted(self):
        return self.current_recursion_depth > self.max_recursion_depth

    def is_exhausted(self):
        return (self.tokens_used >= self.token_budget
                or self.time_used_ms >= self.time_budget_ms
                or self.current_recursion_depth > self.max_recursion_depth)

    def tokens_remaining(self):
        return self.token_budget - self.tokens_used if self.token_budget > self.tokens_used else 0

    def time_remaining_ms(self):
        return self.time_budget_ms - self.time_used_ms if self.time_budget_ms > self.time_used_ms else 0

    def to_dict(self):
        return _PyBudgetStatus.to_dict(self)

    def to_json(self, indent=None):
        return _PyBudgetStatus.to_json(self, indent)

    @classmethod
    def from_dict(cls, data):
        return _budget_of(_PyBudgetStatus.from_dict(data))

    @classmethod
    def from_json(cls, text):
        return _budget_of(_PyBudgetStatus.from_json(text))


cdef inline BudgetStatus _budget(uint64_t token_budget, uint64_t tokens_used,
                                 uint64_t time_budget_ms, uint64_t time_used_ms,
                                 uint64_t max_depth, uint64_t depth):
    cdef BudgetStatus b = BudgetStatus.__new__(BudgetStatus)
    b.token_budget = token_budget
    b.tokens_used = tokens_used
    b.time_budget_ms = time_budget_ms
    b.time_used_ms = time_used_ms
    b.max_recursion_depth = max_depth
    b.current_recursion_depth = depth
    b._frozen = True
    return b


cdef BudgetStatus _budget_of(object other):
    """Either core's BudgetStatus as this core's."""
    if type(other) is BudgetStatus:
        return <BudgetStatus>other
    t = other._astuple()
    return _budget(t[0], t[1], t[2], t[3], t[4], t[5])


@cython.final
cdef class SessionInfo:
    """Immutable snapshot of one session (the crate's `SessionInfo`).

    Holds a plain C copy of the row; attributes become Python objects when
    read. `created_at`/`expires_at` are aware UTC datetimes (microseconds);
    the exact values are `created_at_ns`/`expires_at_ns`."""

    cdef SessionCopy c
    cdef bint _frozen

    def __init__(self, *args, **kwargs):
        if self._frozen:
            raise AttributeError("SessionInfo is immutable")
        # The twin's constructor is the one definition of the checks.
        _fill_info(self, _PySessionInfo(*args, **kwargs)._astuple())

    @classmethod
    def _trusted(cls, *fields):
        cdef SessionInfo info = SessionInfo.__new__(SessionInfo)
        _fill_info(info, fields)
        return info

    @property
    def id(self):
        return _sid(self.c.key)

    @property
    def state(self):
        return _STATES[self.c.s.state]

    @property
    def created_at_ns(self):
        return self.c.s.created_ns

    @property
    def expires_at_ns(self):
        return self.c.s.expires_ns

    @property
    def created_at(self):
        return ns_to_datetime(self.c.s.created_ns)

    @property
    def expires_at(self):
        return ns_to_datetime(self.c.s.expires_ns)

    @property
    def extension_count(self):
        return self.c.s.extension_count

    @property
    def recursion_depth(self):
        return self.c.s.depth

    @property
    def budget_status(self):
        return _budget(self.c.s.token_budget, self.c.s.tokens_used, self.c.s.time_budget_ms,
                       self.c.s.time_used_ms, self.c.s.max_depth, self.c.s.depth)

    @property
    def vm_instance_id(self):
        return _text(self.c.vm) if self.c.has_vm else None

    @property
    def context_variables(self):
        """Read-only view of the context variables, sorted by key."""
        return MappingProxyType(self._context)

    @property
    def _context(self):
        cdef dict out = {}
        cdef size_t i
        for i in range(self.c.context.size()):
            out[_text(self.c.context[i].first)] = _text(self.c.context[i].second)
        return out

    @property
    def current_snapshot_id(self):
        return _text(self.c.snapshot) if self.c.has_snapshot else None

    @property
    def snapshot_count(self):
        return self.c.s.snapshot_count

    def is_expired(self, now_ns=None):
        """Expired when now > expires_at (real clock unless `now_ns` given)."""
        return _PySessionInfo.is_expired(self, now_ns)

    def can_extend(self, max_extensions):
        return self.c.s.extension_count < <uint64_t>check_u64(max_extensions, "max_extensions")

    def _astuple(self):
        return (self.id, self.state, self.created_at_ns, self.expires_at_ns,
                self.extension_count, self.recursion_depth, self.budget_status,
                self.vm_instance_id, self._context, self.current_snapshot_id,
                self.snapshot_count)

    def __eq__(self, other):
        if result_kind(other) != "SessionInfo":
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self):
        return info_hash(self)

    def __repr__(self):
        return info_repr(self)

    def __reduce__(self):
        return reduce_result(self, "SessionInfo")

    def to_dict(self):
        return _PySessionInfo.to_dict(self)

    def to_json(self, indent=None):
        return _PySessionInfo.to_json(self, indent)

    @classmethod
    def from_dict(cls, data):
        return SessionInfo._trusted(*_PySessionInfo.from_dict(data)._astuple())

    @classmethod
    def from_json(cls, text):
        return SessionInfo._trusted(*_PySessionInfo.from_json(text)._astuple())


cdef int _fill_info(SessionInfo info, tuple f) except -1:
    """Fill from checked values (SessionInfo._astuple() order)."""
    cdef SessionCopy *c = &info.c
    _key(f[0], &c.key)
    c.s.state = STATE_CODE[f[1]]
    c.s.created_ns = f[2]
    c.s.expires_ns = f[3]
    c.s.extension_count = f[4]
    c.s.depth = f[5]
    budget = f[6]
    c.s.token_budget = budget.token_budget
    c.s.tokens_used = budget.tokens_used
    c.s.time_budget_ms = budget.time_budget_ms
    c.s.time_used_ms = budget.time_used_ms
    c.s.max_depth = budget.max_recursion_depth
    c.has_vm = f[7] is not None
    if c.has_vm:
        _utf8(f[7], "vm_instance_id", False, &c.vm)
    c.context.clear()
    for name, value in sorted(f[8].items()):
        c.context.push_back(pair[string, string](name.encode("utf-8"), value.encode("utf-8")))
    c.has_snapshot = f[9] is not None
    if c.has_snapshot:
        _utf8(f[9], "current_snapshot_id", False, &c.snapshot)
    c.s.snapshot_count = f[10]
    info._frozen = True
    return 0


@cython.final
cdef class SessionStats:
    """Counters of a manager (the crate's `SessionStats`, plus two).

    At rest: `total_sessions_created == total_sessions_destroyed +
    total_sessions_expired + active_sessions`."""

    cdef readonly uint64_t total_sessions_created
    cdef readonly uint64_t active_sessions
    cdef readonly uint64_t sessions_with_vm
    cdef readonly uint64_t total_sessions_destroyed
    cdef readonly uint64_t total_sessions_expired
    cdef bint _frozen

    def __init__(self, total_sessions_created=0, active_sessions=0, sessions_with_vm=0,
                 total_sessions_destroyed=0, total_sessions_expired=0):
        if self._frozen:
            raise AttributeError("SessionStats is immutable")
        self.total_sessions_created = check_u64(total_sessions_created, "total_sessions_created")
        self.active_sessions = check_u64(active_sessions, "active_sessions")
        self.sessions_with_vm = check_u64(sessions_with_vm, "sessions_with_vm")
        self.total_sessions_destroyed = check_u64(total_sessions_destroyed, "total_sessions_destroyed")
        self.total_sessions_expired = check_u64(total_sessions_expired, "total_sessions_expired")
        self._frozen = True

    def _astuple(self):
        return (self.total_sessions_created, self.active_sessions, self.sessions_with_vm,
                self.total_sessions_destroyed, self.total_sessions_expired)

    def __eq__(self, other):
        if result_kind(other) != "SessionStats":
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __repr__(self):
        return stats_repr(self)

    def __reduce__(self):
        return reduce_result(self, "SessionStats")

    def to_dict(self):
        return _PySessionStats.to_dict(self)

    def to_json(self, indent=None):
        return _PySessionStats.to_json(self, indent)

    @classmethod
    def from_dict(cls, data):
        return SessionStats(*_PySessionStats.from_dict(data)._astuple())

    @classmethod
    def from_json(cls, text):
        return SessionStats(*_PySessionStats.from_json(text)._astuple())


cdef SessionStats _stats(Stats s):
    cdef SessionStats out = SessionStats.__new__(SessionStats)
    out.total_sessions_created = s.created
    out.active_sessions = s.active
    out.sessions_with_vm = s.with_vm
    out.total_sessions_destroyed = s.destroyed
    out.total_sessions_expired = s.expired
    out._frozen = True
    return out


# ---------------------------------------------------------------------------
# SessionManager
# ---------------------------------------------------------------------------

@cython.final
cdef class _Floor:
    """Benchmark floor: a compiled method that takes an id and does nothing,
    so "how close to a bare call" is a ratio measured in the same run."""

    def noop(self, session_id):
        return None


@cython.final
cdef class _Recursion:
    """`manager.recursion(id)`: depth +1 on entry, -1 on exit, always."""

    cdef SessionManager _manager
    cdef SidKey _key

    def __enter__(self):
        return self._manager._increment(self._key)

    def __exit__(self, *exc):
        self._manager._t.leave_recursion(self._key)
        return None


@cython.final
cdef class SessionManager:
    """The session table (the crate's `SessionManager`, SPEC 3)."""

    def __cinit__(self):
        self._t = new Table()

    def __dealloc__(self):
        del self._t

    def __init__(self, config=None, *, clock=None):
        if self._config is not None:
            raise TypeError("SessionManager is already initialised")
        if config is None:
            config = RlmConfig()
        elif not isinstance(config, RlmConfig):
            raise TypeError(f"config must be an RlmConfig, not {type(config).__name__}")
        config.validate()
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        import copy

        config = copy.deepcopy(config)
        cdef Config cfg
        cfg.duration_ns = config.session_duration_secs * 1000000000
        cfg.increment_ns = config.extension_increment_secs * 1000000000
        cfg.max_extensions = config.max_extensions
        cfg.token_budget = config.token_budget
        cfg.time_budget_ms = config.time_budget_ms
        cfg.max_depth = config.max_recursion_depth
        cfg.max_snapshots = config.max_snapshots_per_session
        self._t.cfg = cfg
        self._clock = clock
        self._config = config

    @property
    def config(self):
        """A copy of the configuration the manager runs with."""
        import copy

        return copy.deepcopy(self._config)

    cdef int64_t _now(self) except? -1:
        """Now, for checks: the user clock, else the wall clock at tick
        resolution (rlm_check_time_ns: never ahead, at most a tick behind)."""
        if self._clock is None:
            return rlm_check_time_ns()
        return check_clock_value(self._clock())

    cdef int64_t _stamp_now(self) except? -1:
        """Now, for a timestamp the session records (created_at)."""
        if self._clock is None:
            return rlm_time_ns()
        return check_clock_value(self._clock())

    # -- lifecycle ----------------------------------------------------------

    def create_session(self):
        cdef int64_t now = self._stamp_now()
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        if now > RLM_I64_MAX - self._t.cfg.duration_ns:
            raise ConfigError(MSG_CREATE_OVERFLOW)
        while True:
            if rlm_new_key(now // 1000000, &k) != 0:
                raise OSError("the operating system's random source failed")
            st = self._t.create(k, now, now + self._t.cfg.duration_ns, &c)
            if st != RLM_DUPLICATE:
                break  # never reuse a live id, however unlikely
        if st != RLM_OK:
            _fail(st, k, "create_session")
        return _info(&c)

    def get_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _key(session_id, &k)
        st = self._t.get(k, &c)
        if st != RLM_OK:
            _fail(st, k, "get_session")
        return _info(&c)

    def update_session_state(self, session_id, state):
        cdef SidKey k
        cdef int st
        _key(session_id, &k)
        cdef int code = _state_code(state)
        cdef int64_t now = self._now()
        st = self._t.update_state(k, now, code)
        if st != RLM_OK:
            _fail(st, k, "update_session_state")

    def is_session_valid(self, session_id):
        cdef SidKey k
        cdef int valid
        if type(session_id) is SessionId:
            k = _k(<SessionId>session_id)
        elif isinstance(session_id, str):
            if _try_parse(<str>session_id, &k) != 0:
                return False
        else:
            _key(session_id, &k)  # the other core's SessionId, or TypeError
        cdef int64_t now = self._now()
        valid = self._t.is_valid(k, now)
        return valid != 0

    def validate_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _key(session_id, &k)
        cdef int64_t now = self._now()
        st = self._t.validate(k, now, &c)
        if st != RLM_OK:
            _fail(st, k, "validate")
        return _info(&c)

    def extend_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _key(session_id, &k)
        cdef int64_t now = self._now()
        st = self._t.extend(k, now, &c)
        if st == RLM_MAX_EXTENSIONS:
            raise MaxExtensionsReached(_sid(k), self._t.cfg.max_extensions)
        if st == RLM_TIME_OVERFLOW:
            raise ConfigError(MSG_EXTEND_OVERFLOW)
        if st != RLM_OK:
            _fail(st, k, "extend_session")
        return _info(&c)

    def destroy_session(self, session_id):
        cdef SidKey k
        cdef int st
        _key(session_id, &k)
        st = self._t.destroy(k)
        if st != RLM_OK:
            _fail(st, k, "destroy_session")

    def cleanup_expired_sessions(self):
        cdef int64_t now = self._now()
        cdef vector[SidKey] gone
        cdef int st
        cdef size_t i
        with nogil:  # the work runs without the GIL: other threads go on
            st = self._t.cleanup(now, &gone)
            if not is_sorted(gone.begin(), gone.end()):  # often already in order
                sort(gone.begin(), gone.end())
        if st != RLM_OK:
            raise MemoryError()
        cdef list out = PyList_New(gone.size())  # sized once: no regrowth
        cdef SessionId sid
        for i in range(gone.size()):
            sid = _sid(gone[i])
            Py_INCREF(sid)
            PyList_SET_ITEM(out, i, sid)
        return out

    # -- VM affinity ----------------------------------------------------------

    def assign_vm(self, session_id, vm_instance_id):
        cdef SidKey k
        cdef string vm
        cdef int st
        _key(session_id, &k)
        _utf8(vm_instance_id, "vm_instance_id", True, &vm)
        cdef int64_t now = self._now()
        st = self._t.assign_vm(k, now, vm)
        if st != RLM_OK:
            _fail(st, k, "assign_vm")

    def release_vm(self, session_id):
        cdef SidKey k
        cdef string vm
        cdef cbool had = False
        cdef int st
        _key(session_id, &k)
        st = self._t.release_vm(k, &vm, &had)
        if st != RLM_OK:
            _fail(st, k, "release_vm")
        return _text(vm) if had else None

    def get_assigned_vm(self, session_id):
        cdef SidKey k
        cdef string vm
        cdef cbool had = False
        cdef int st
        _key(session_id, &k)
        st = self._t.get_vm(k, &vm, &had)
        if st != RLM_OK:
            _fail(st, k, "get_assigned_vm")
        return _text(vm) if had else None

    def get_session_for_vm(self, vm_instance_id):
        cdef string vm
        cdef SidKey k
        cdef cbool found = False
        _utf8(vm_instance_id, "vm_instance_id", True, &vm)
        found = self._t.session_for_vm(vm, &k)
        return _sid(k) if found else None

    # -- context variables ------------------------------------------------------

    def set_context_variable(self, session_id, key, value):
        cdef SidKey k
        cdef string name, text
        cdef int st
        _key(session_id, &k)
        _utf8(key, "key", False, &name)
        _utf8(value, "value", False, &text)
        cdef int64_t now = self._now()
        st = self._t.set_context(k, now, name, text)
        if st != RLM_OK:
            _fail(st, k, "set_context_variable")

    def get_context_variable(self, session_id, key):
        cdef SidKey k
        cdef string name, text
        cdef cbool had = False
        cdef int st
        _key(session_id, &k)
        _utf8(key, "key", False, &name)
        st = self._t.get_context(k, name, &text, &had)
        if st != RLM_OK:
            _fail(st, k, "get_context_variable")
        return _text(text) if had else None

    def get_all_context_variables(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        cdef size_t i
        _key(session_id, &k)
        st = self._t.all_context(k, &c)
        if st != RLM_OK:
            _fail(st, k, "get_all_context_variables")
        cdef dict out = {}
        for i in range(c.context.size()):
            out[_text(c.context[i].first)] = _text(c.context[i].second)
        return out

    def delete_context_variable(self, session_id, key):
        cdef SidKey k
        cdef string name, text
        cdef cbool had = False
        cdef int st
        _key(session_id, &k)
        _utf8(key, "key", False, &name)
        cdef int64_t now = self._now()
        st = self._t.delete_context(k, now, name, &text, &had)
        if st != RLM_OK:
            _fail(st, k, "delete_context_variable")
        return _text(text) if had else None

    # -- budgets and depth --------------------------------------------------------

    def update_budget(self, session_id, budget):
        cdef SidKey k
        cdef int st
        _key(session_id, &k)
        if type(budget) is not BudgetStatus and result_kind(budget) != "BudgetStatus":
            raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
        cdef BudgetStatus b = _budget_of(budget)  # the twin's, converted
        cdef int64_t now = self._now()
        st = self._t.update_budget(k, now, b.token_budget, b.tokens_used, b.time_budget_ms,
                                   b.time_used_ms, b.max_recursion_depth,
                                   b.current_recursion_depth)
        if st != RLM_OK:
            _fail(st, k, "update_budget")

    def increment_recursion_depth(self, session_id):
        cdef SidKey k
        _key(session_id, &k)
        return self._increment(k)

    cdef object _increment(self, SidKey k):
        cdef uint64_t depth = 0, maximum = 0
        cdef int st
        cdef int64_t now = self._now()
        st = self._t.increment(k, now, &depth, &maximum)
        if st == RLM_DEPTH_EXCEEDED:
            raise RecursionDepthExceeded(<object>depth + 1, maximum)
        if st != RLM_OK:
            _fail(st, k, "increment_recursion_depth")
        return depth

    def decrement_recursion_depth(self, session_id):
        cdef SidKey k
        cdef uint64_t depth = 0
        cdef int st
        _key(session_id, &k)
        cdef int64_t now = self._now()
        st = self._t.decrement(k, now, &depth)
        if st != RLM_OK:
            _fail(st, k, "decrement_recursion_depth")
        return depth

    def recursion(self, session_id):
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        cdef _Recursion r = _Recursion.__new__(_Recursion)
        _key(session_id, &r._key)
        r._manager = self
        return r

    def charge_tokens(self, session_id, tokens):
        cdef SidKey k
        cdef uint64_t total = 0, budget = 0
        cdef int st
        _key(session_id, &k)
        cdef uint64_t amount = _u64(tokens, "tokens")
        cdef int64_t now = self._now()
        st = self._t.charge_tokens(k, now, amount, &total, &budget)
        if st == RLM_OK:
            return total
        if st == RLM_TOKENS_OVER:
            raise TokenBudgetExceeded(total, budget)  # spent: the charge stays
        if st == RLM_U64_OVERFLOW:
            raise ValueError(MSG_TOKENS_OVERFLOW)
        _fail(st, k, "charge_tokens")

    def charge_time(self, session_id, elapsed_ms):
        cdef SidKey k
        cdef uint64_t total = 0, budget = 0
        cdef int st
        _key(session_id, &k)
        cdef uint64_t amount = _u64(elapsed_ms, "elapsed_ms")
        cdef int64_t now = self._now()
        st = self._t.charge_time(k, now, amount, &total, &budget)
        if st == RLM_OK:
            return total
        if st == RLM_TIME_OVER:
            raise TimeBudgetExceeded(total, budget)
        if st == RLM_U64_OVERFLOW:
            raise ValueError(MSG_TIME_OVERFLOW)
        _fail(st, k, "charge_time")

    def check_budget(self, session_id):
        cdef SidKey k
        cdef Session s
        cdef int st
        _key(session_id, &k)
        cdef int64_t now = self._now()
        st = self._t.budget(k, now, &s)
        if st != RLM_OK:
            _fail(st, k, "check_budget")
        if s.tokens_used >= s.token_budget:
            raise TokenBudgetExceeded(s.tokens_used, s.token_budget)
        if s.time_used_ms >= s.time_budget_ms:
            raise TimeBudgetExceeded(s.time_used_ms, s.time_budget_ms)
        if s.depth > s.max_depth:
            raise RecursionDepthExceeded(s.depth, s.max_depth)
        return _budget(s.token_budget, s.tokens_used, s.time_budget_ms, s.time_used_ms,
                       s.max_depth, s.depth)

    # -- snapshots ------------------------------------------------------------------

    def record_snapshot_created(self, session_id, snapshot_id, set_as_current=False):
        cdef SidKey k
        cdef string snap
        cdef int st
        _key(session_id, &k)
        _utf8(snapshot_id, "snapshot_id", False, &snap)
        if type(set_as_current) is not bool:
            raise TypeError("set_as_current must be a bool")
        cdef cbool current = set_as_current
        cdef int64_t now = self._now()
        st = self._t.snapshot_created(k, now, snap, current)
        if st == RLM_MAX_SNAPSHOTS:
            raise MaxSnapshotsReached(self._t.cfg.max_snapshots)
        if st != RLM_OK:
            _fail(st, k, "record_snapshot_created")

    def record_snapshot_restored(self, session_id, snapshot_id):
        cdef SidKey k
        cdef string snap
        cdef int st
        _key(session_id, &k)
        _utf8(snapshot_id, "snapshot_id", False, &snap)
        cdef int64_t now = self._now()
        st = self._t.snapshot_restored(k, now, snap)
        if st != RLM_OK:
            _fail(st, k, "record_snapshot_restored")

    def get_current_snapshot(self, session_id):
        cdef SidKey k
        cdef string snap
        cdef cbool had = False
        cdef int st
        _key(session_id, &k)
        st = self._t.current_snapshot(k, &snap, &had)
        if st != RLM_OK:
            _fail(st, k, "get_current_snapshot")
        return _text(snap) if had else None

    def clear_snapshot_tracking(self, session_id):
        cdef SidKey k
        cdef int st
        _key(session_id, &k)
        cdef int64_t now = self._now()
        st = self._t.clear_snapshots(k, now)
        if st != RLM_OK:
            _fail(st, k, "clear_snapshot_tracking")

    # -- whole table ------------------------------------------------------------------

    def get_stats(self):
        cdef Stats s
        s = self._t.stats()
        return _stats(s)

    def list_sessions(self):
        cdef vector[SessionCopy] rows
        cdef int st
        cdef size_t i
        cdef vector[size_t] order
        st = self._t.list(&rows, NULL)
        if st == RLM_OK:
            with nogil:
                st = rlm_order_by_id(rows, &order)
        if st != RLM_OK:
            raise MemoryError()
        return [_info(&rows[order[i]]) for i in range(rows.size())]

    # -- bulk API (numpy) ---------------------------------------------------------

    def validate_many(self, ids):
        """`is_session_valid` for many ids at one instant: a numpy bool array.

        `ids` is an iterable of SessionId/str, or a numpy array of 16-byte
        ids such as `budget_table()["id"]`. The scan runs without the GIL."""
        np = numpy()
        cdef vector[SidKey] keys
        cdef vector[char] skip
        cdef SidKey k
        cdef const unsigned char *p
        cdef size_t i, n
        packed = raw_ids(ids)
        if packed is not None:
            n = len(packed) // 16
            keys.resize(n)
            skip.resize(n)
            p = <const unsigned char *><const char *>packed
            for i in range(n):
                keys[i] = rlm_key_from_bytes(p + 16 * i)
        else:
            for sid in ids:
                if isinstance(sid, str) and _try_parse(<str>sid, &k) != 0:
                    skip.push_back(1)  # malformed: not valid
                    keys.push_back(k)
                    continue
                _key(sid, &k)
                keys.push_back(k)
                skip.push_back(0)
        cdef int64_t now = self._now()
        out = PyByteArray_FromStringAndSize(NULL, keys.size())
        cdef char *dst = PyByteArray_AS_STRING(out)
        with nogil:
            self._t.validity(keys, skip, now, dst)
        return np.frombuffer(out, dtype=bool)

    def budget_table(self):
        """One numpy row per session, in id order (fields: BUDGET_TABLE_FIELDS).
        The copy and the sort run without the GIL."""
        dtype = budget_table_dtype()
        cdef vector[BudgetRow] rows
        cdef int st
        with nogil:
            st = self._t.budget_rows(&rows)
            if st == RLM_OK:
                rlm_sort_rows(rows)
        if st != RLM_OK:
            raise MemoryError()
        if dtype.itemsize != sizeof(BudgetRow):
            raise AssertionError("BudgetRow and BUDGET_TABLE_FIELDS disagree")
        data = PyByteArray_FromStringAndSize(<const char *>rows.data(), rows.size() * sizeof(BudgetRow))
        return numpy().frombuffer(data, dtype=dtype)

    def _export(self):
        """Every session and the counters, read in one atomic step (dump)."""
        cdef vector[SessionCopy] rows
        cdef Stats s
        cdef int st
        cdef size_t i
        cdef vector[size_t] order
        st = self._t.list(&rows, &s)
        if st == RLM_OK:
            st = rlm_order_by_id(rows, &order)
        if st != RLM_OK:
            raise MemoryError()
        infos = [_info(&rows[order[i]]) for i in range(rows.size())]
        return infos, _stats(s)

    def _restore(self, infos, counters):
        """Fill an empty manager from `_export`'s rows (load): all or nothing."""
        checked = check_restore(infos, counters)
        cdef vector[SessionCopy] rows
        cdef SessionInfo info
        cdef int st
        for row in checked:
            info = row if type(row) is SessionInfo else SessionInfo._trusted(*row._astuple())
            rows.push_back(info.c)
        cdef uint64_t created = counters[0], destroyed = counters[1], expired = counters[2]
        st = self._t.restore(rows, created, destroyed, expired)
        if st == RLM_NOT_EMPTY:
            raise ValueError("restore needs a new, empty manager")
        if st != RLM_OK:
            raise MemoryError()

    def dump(self, path):
        """Write every session and the counters to `path`, atomically
        (docs/dump-format.md)."""
        from ._serde import dump
        dump(self, path)

    @classmethod
    def load(cls, path, config=None, *, clock=None):
        """A new manager holding what `dump` wrote, with the dumped config
        unless `config` is given; a bad file raises Serialization."""
        from ._serde import load
        return load(cls, path, config, clock=clock)

    def __len__(self):
        cdef size_t n
        n = self._t.size()
        return n

    def __contains__(self, session_id):
        cdef SidKey k
        cdef cbool found = False
        if type(session_id) is SessionId:
            k = _k(<SessionId>session_id)
        elif isinstance(session_id, str):
            if _try_parse(<str>session_id, &k) != 0:
                return False
        elif foreign_session_id(session_id) is None:
            return False
        else:
            _key(session_id, &k)
        found = self._t.contains(k)
        return found

    def __repr__(self):
        return f"<SessionManager (cython) sessions={len(self)}>"

    def __reduce__(self):
        raise TypeError("a SessionManager cannot be pickled; use dump()/load()")


# ---------------------------------------------------------------------------
# the nogil C API declared in _core_c.pxd
# ---------------------------------------------------------------------------

cdef Table *rlm_table(SessionManager manager) noexcept:
    return manager._t


cdef int64_t rlm_now_ns() noexcept nogil:
    return rlm_check_time_ns()


cdef int rlm_is_valid(Table *t, const unsigned char *sid, int64_t now_ns) noexcept nogil:
    return t.status_of(rlm_key_from_bytes(sid), now_ns)


cdef int rlm_charge_tokens(Table *t, const unsigned char *sid, int64_t now_ns,
                           uint64_t amount, uint64_t *total) noexcept nogil:
    cdef uint64_t budget
    return t.charge_tokens(rlm_key_from_bytes(sid), now_ns, amount, total, &budget)


cdef int rlm_charge_time(Table *t, const unsigned char *sid, int64_t now_ns,
                         uint64_t amount_ms, uint64_t *total) noexcept nogil:
    cdef uint64_t budget
    return t.charge_time(rlm_key_from_bytes(sid), now_ns, amount_ms, total, &budget)


cdef int rlm_depth_up(Table *t, const unsigned char *sid, int64_t now_ns,
                      uint64_t *depth) noexcept nogil:
    cdef uint64_t maximum
    return t.increment(rlm_key_from_bytes(sid), now_ns, depth, &maximum)


cdef int rlm_depth_down(Table *t, const unsigned char *sid, int64_t now_ns,
                        uint64_t *depth) noexcept nogil:
    return t.decrement(rlm_key_from_bytes(sid), now_ns, depth)


cdef int rlm_vm_of(Table *t, const unsigned char *sid, char *buf, size_t size,
                   size_t *length) noexcept nogil:
    return t.copy_vm(rlm_key_from_bytes(sid), buf, size, length)
