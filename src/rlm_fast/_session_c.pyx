# cython: language_level=3, freethreading_compatible=True, binding=False
# cython: boundscheck=False, wraparound=False, cdivision=False, embedsignature=True, embedsignature.format=clinic
# distutils: language = c++
"""Compiled session core: `SessionId`, `SessionManager` and C-backed result
classes, the same behaviour as `_session_py.py` (the specification), with the
table in C++ memory.

Each manager owns a `Table` (`_session_c.h`, `_c/table.h`): 16 shards, each
with its own lock, plus a lock for the VM map; `Table` methods take the locks
they need. A call tree (SPEC 11, docs/trees.md) lives in its root's shard, so
a call on a child takes one lock however deep the tree.
Every method here converts its arguments (ids parsed, strings encoded, the
clock read) before calling into the table, where only C++ work runs under a
lock (no Python object is created, freed or raised there), and builds its
result or exception afterwards from a plain C copy. `_session_c.pxd` declares
the table and a nogil C API for other Cython extensions.

Lifecycle and the model-call step (SPEC 12-13, docs/lifecycle.md), as the
twin: a removal moves the removed sessions' last states out of the table
(strings taken, not copied) and `on_remove` and the INFO records run after
every lock is released; refusals count in relaxed atomics on the table
(`SessionStats.rejected_*`), touched on the refusal path only;
`begin_call` and `end_call` each take one shard lock.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libcpp.algorithm cimport is_sorted, sort
from libcpp.vector cimport vector

from types import MappingProxyType


from ._bulk import budget_table_dtype, numpy, raw_ids
from ._checks import (
    MSG_CREATE_OVERFLOW,
    MSG_EXTEND_OVERFLOW,
    MSG_TIME_OVERFLOW,
    MSG_TOKENS_OVERFLOW,
    check_clock_value,
    check_str,
    check_u32,
    check_u64,
    ns_to_datetime,
    session_id_type_error,
)
from ._dump import check_restore, check_tree
from ._lifecycle import (
    ModelCall,
    ReaperSlot,
    check_on_remove,
    log_created,
    log_vm_moved,
    report_removed,
)
from ._lifecycle import log as _log
from . import _lifecycle
from ._registry import (
    foreign_session_id,
    reduce_result,
    register_results,
    register_session_id,
    restore_session_id,
    result_kind,
)
from ._results import (
    STATE_CODE,
    STATES,
    budget_replace,
    budget_repr,
    coerce_state,
    info_hash,
    info_repr,
    stats_repr,
)
from ._results import BudgetStatus as _PyBudgetStatus
from ._results import SessionInfo as _PySessionInfo
from ._results import SessionStats as _PySessionStats
from .config import (
    DEFAULT_MAX_RECURSION_DEPTH,
    DEFAULT_TIME_BUDGET_MS,
    DEFAULT_TOKEN_BUDGET,
)
from .config import RlmConfig, resolve_config
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
cdef int _INFO = 20  # logging.INFO: every record is guarded by _info_on()
cdef object _INFO_KEY = 20
cdef object _FALSE = False
# The logger's own memo of isEnabledFor (a private attribute of
# logging.Logger since 3.7, cleared in place by setLevel and friends); None
# if this Python has no such dict, and then every check asks isEnabledFor.
cdef object _LOG_CACHE = getattr(_log, "_cache", None)
if type(_LOG_CACHE) is not dict:
    _LOG_CACHE = None


cdef inline bint _info_on() except -1:
    """`_log.isEnabledFor(logging.INFO)`, without a Python call when the
    logger's memo already says no (the usual case: create and destroy ask
    on every call). The memo holds True or False; a False answer needs no
    look at `disabled` (it can only make the answer False), and the value
    is only compared, never used, so a concurrent clear cannot hurt."""
    cdef PyObject *v
    if _LOG_CACHE is not None:
        v = PyDict_GetItemWithError(_LOG_CACHE, _INFO_KEY)
        if v == <PyObject *>_FALSE:
            return False
    return _log.isEnabledFor(_INFO)


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
        return (restore_session_id, (self.bytes,))  # pickles as rlm_fast._restore_session_id

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


cdef inline int _mkey(Table *t, object session_id, SidKey *out) except -1:
    """`_key` for a manager's method: a malformed string id counts in
    rejected_invalid_token before InvalidSessionToken is raised."""
    if type(session_id) is SessionId:
        out.hi = (<SessionId>session_id).hi
        out.lo = (<SessionId>session_id).lo
        return 0
    if isinstance(session_id, str):
        if _try_parse(<str>session_id, out) != 0:
            t.count_rejected(RLM_REJ_INVALID_TOKEN)
            raise InvalidSessionToken(session_id)
        return 0
    return _key(session_id, out)  # the other core's SessionId, or TypeError


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
# argument conversion (the slow paths call the shared checks in _checks, so
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


cdef size_t _TURN = 256  # result objects built between two checkpoints


cdef object _take_turn(object pending):
    """Called every _TURN items by a loop that builds result objects with
    the GIL (SPEC 15): a call to a Python function, where the interpreter
    honours a pending request for the GIL (or a stop-the-world) as the eval
    loop does between bytecodes, so a waiting thread gets its turn within
    one switch interval. An exception raised there (a signal handler's
    KeyboardInterrupt) is returned, not raised, so the loop finishes and
    what was removed is still reported; the loop raises it at its end.
    After one, no more checkpoints."""
    if pending is not None:
        return pending
    try:
        _lifecycle.checkpoint()  # looked up each time: tests replace it
    except BaseException as exc:
        return exc
    return None


cdef list _infos_in_order(vector[SessionCopy] &rows, vector[size_t] &order):
    """SessionInfos taking over rows[order[0]], rows[order[1]], ...,
    taking turns with other threads for the GIL (_take_turn)."""
    cdef size_t i, n = order.size()
    cdef list out = PyList_New(n)  # sized once: no regrowth
    cdef object item, pending = None
    for i in range(n):
        if i % _TURN == _TURN - 1:
            pending = _take_turn(pending)
        item = _info(&rows[order[i]])
        Py_INCREF(item)
        PyList_SET_ITEM(out, i, item)
    if pending is not None:
        raise pending
    return out


def _restore_lines(SessionManager m, bytes data, Py_ssize_t start, Py_ssize_t end,
                   count, counters):
    """load's fast path (`_dump.load`'s restore_lines): the session lines
    data[start:end] of a file that passed the file-level checks, read and
    checked in C++ without the GIL and restored. False, with nothing
    changed, when a line is not in the canonical form dump writes or a
    check fails: the Python path then reads the file and names the fault."""
    cdef vector[SessionCopy] rows
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef size_t n = count
    cdef uint64_t created = counters[0], destroyed = counters[1], expired = counters[2]
    cdef int st
    if not 0 <= start <= end <= len(data):
        raise ValueError("the session lines lie outside the data")
    with nogil:
        st = rlm_read_dump(p + start, <size_t>(end - start), n, created, destroyed, expired,
                           &rows)
    if st == RLM_FALLBACK:
        return False
    if st != RLM_OK:
        raise MemoryError()
    with nogil:
        st = m._t.restore(rows, created, destroyed, expired)
        rlm_free_rows(rows)
    if st == RLM_NOT_EMPTY:
        raise ValueError("restore needs a new, empty manager")
    if st != RLM_OK:
        raise MemoryError()
    return True


def _dump_bytes(infos, starts):
    """Tests: the session lines dump writes for an export of these
    SessionInfos and start depths, in this (id) order, after rlm_settle:
    what `_dump.settle` and `_dump._dump_line` make of them in Python."""
    cdef vector[SessionCopy] rows
    cdef vector[size_t] order, kept
    cdef string text
    cdef SessionInfo info
    cdef size_t i
    for info, start in zip(reversed(infos), reversed(starts)):  # rows out of order,
        rows.push_back(info.c)
        rows.back().s.start_depth = start
    for i in range(rows.size()):  # as the table's are: `order` puts them in id order
        order.push_back(rows.size() - 1 - i)
    if rlm_settle(rows, order, &kept) != RLM_OK or \
            rlm_dump_lines(rows, kept, 0, kept.size(), &text) != RLM_OK:
        raise MemoryError()
    return PyBytes_FromStringAndSize(text.data(), text.size())


def _set_piece(n):
    """Tests: whole-table calls hold a lock for at most `n` sessions
    (default 2048); returns the previous value."""
    cdef size_t old = rlm_piece_size()
    if type(n) is not int or n < 1:
        raise ValueError("the piece size is a positive int")
    rlm_set_piece_size(<size_t>n)
    return old


def _debug_build():
    """Tests: whether this is the debug build (RLM_FAST_DEBUG), which checks
    a shard's invariants after every change to it."""
    return RLM_DEBUG_BUILD != 0


def _expiry_entries(SessionManager manager):
    """Tests: how many entries the manager's expiry index holds."""
    return manager._t.expiry_entries()


def _piece_stats(SessionManager manager, reset=False):
    """Tests: (lock holds, most sessions covered by one hold) of the
    manager's whole-table calls since the last reset."""
    cdef uint64_t holds = 0, widest = 0
    manager._t.piece_stats(&holds, &widest, bool(reset))
    return holds, widest


cdef inline int _state_code(object state) except -1:
    """The state code of a SessionState member (identity checks: an Enum's
    hash is a Python call) or of its value string."""
    cdef int i
    for i in range(6):
        if state is _STATES[i]:
            return i
    return STATE_CODE[coerce_state(state)]


cdef int _fail(Table *t, int status, SidKey key, str operation) except -1:
    """Raise the error of a status every session call shares; `key` is the
    session the table named (`who`: an ancestor when validity flowed down).
    A refusal counts in its rejected_* counter first."""
    t.count_refusal(status)
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
# result types: the compiled twins of _results.BudgetStatus / SessionInfo /
# SessionStats, C-backed so a result costs one allocation. Same behaviour:
# checks, repr, equality (with either core's objects) and pickles are shared
# with the Python classes through the helpers in _results and _registry.
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
        self.max_recursion_depth = check_u32(max_recursion_depth, "max_recursion_depth")
        self.current_recursion_depth = check_u32(current_recursion_depth, "current_recursion_depth")
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


cdef size_t _DUMP_BATCH = 16384  # lines per chunk of a dump (about 7 MB): few GIL hand-offs


@cython.final
cdef class _DumpLines:
    """A table read for dump and settled (rlm_settle): `chunks(batch)`
    makes its lines, `batch` at a time, without the GIL, and frees the rows
    without the GIL once the last chunk is made."""

    cdef vector[SessionCopy] rows
    cdef vector[size_t] kept  # indices into rows, in id order

    def chunks(self, size_t batch):
        cdef string text
        cdef size_t i = 0, end, n = self.kept.size()
        cdef int st
        cdef bytes chunk
        cdef char *dst
        while i < n:
            end = min(n, i + batch)
            with nogil:
                st = rlm_dump_lines(self.rows, self.kept, i, end, &text)
            if st != RLM_OK:
                raise MemoryError()
            # A new bytes object is this thread's alone until it is
            # returned: its megabytes are copied in (and its pages first
            # touched) without the GIL.
            chunk = PyBytes_FromStringAndSize(NULL, text.size())
            dst = PyBytes_AS_STRING(chunk)
            with nogil:
                memcpy(dst, text.data(), text.size())
            yield chunk
            i = end
        with nogil:
            rlm_free_rows(self.rows)
            rlm_free_order(self.kept)


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

    @property
    def parent_id(self):
        """The parent's id; None for a root (docs/trees.md)."""
        return _sid(self.c.parent) if self.c.has_parent else None

    @property
    def root_id(self):
        """The id of the tree's root; a root's own id."""
        return _sid(self.c.root) if self.c.has_parent else _sid(self.c.key)

    def is_expired(self, now_ns=None):
        """Expired when now > expires_at (real clock unless `now_ns` given)."""
        return _PySessionInfo.is_expired(self, now_ns)

    def can_extend(self, max_extensions):
        return self.c.s.extension_count < <uint64_t>check_u64(max_extensions, "max_extensions")

    def _astuple(self):
        return (self.id, self.state, self.created_at_ns, self.expires_at_ns,
                self.extension_count, self.recursion_depth, self.budget_status,
                self.vm_instance_id, self._context, self.current_snapshot_id,
                self.snapshot_count, self.parent_id, self.root_id)

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
    c.has_parent = len(f) > 11 and f[11] is not None
    if c.has_parent:
        _key(f[11], &c.parent)
        _key(f[12], &c.root)
    else:
        c.root = c.key
    info._frozen = True
    return 0


@cython.final
cdef class SessionStats:
    """Counters of a manager: the crate's three, the removals, and the
    refusals (docs/lifecycle.md): how many calls raised each kind of refusal,
    plus `is_session_valid` calls that returned False for that reason.

    At rest: `total_sessions_created == total_sessions_destroyed +
    total_sessions_expired + active_sessions`."""

    cdef readonly uint64_t total_sessions_created
    cdef readonly uint64_t active_sessions
    cdef readonly uint64_t sessions_with_vm
    cdef readonly uint64_t total_sessions_destroyed
    cdef readonly uint64_t total_sessions_expired
    cdef readonly uint64_t rejected_not_found
    cdef readonly uint64_t rejected_invalid_token
    cdef readonly uint64_t rejected_terminated
    cdef readonly uint64_t rejected_expired
    cdef readonly uint64_t rejected_tokens
    cdef readonly uint64_t rejected_time
    cdef readonly uint64_t rejected_depth
    cdef bint _frozen

    def __init__(self, total_sessions_created=0, active_sessions=0, sessions_with_vm=0,
                 total_sessions_destroyed=0, total_sessions_expired=0,
                 rejected_not_found=0, rejected_invalid_token=0, rejected_terminated=0,
                 rejected_expired=0, rejected_tokens=0, rejected_time=0, rejected_depth=0):
        if self._frozen:
            raise AttributeError("SessionStats is immutable")
        self.total_sessions_created = check_u64(total_sessions_created, "total_sessions_created")
        self.active_sessions = check_u64(active_sessions, "active_sessions")
        self.sessions_with_vm = check_u64(sessions_with_vm, "sessions_with_vm")
        self.total_sessions_destroyed = check_u64(total_sessions_destroyed, "total_sessions_destroyed")
        self.total_sessions_expired = check_u64(total_sessions_expired, "total_sessions_expired")
        self.rejected_not_found = check_u64(rejected_not_found, "rejected_not_found")
        self.rejected_invalid_token = check_u64(rejected_invalid_token, "rejected_invalid_token")
        self.rejected_terminated = check_u64(rejected_terminated, "rejected_terminated")
        self.rejected_expired = check_u64(rejected_expired, "rejected_expired")
        self.rejected_tokens = check_u64(rejected_tokens, "rejected_tokens")
        self.rejected_time = check_u64(rejected_time, "rejected_time")
        self.rejected_depth = check_u64(rejected_depth, "rejected_depth")
        self._frozen = True

    def _astuple(self):
        return (self.total_sessions_created, self.active_sessions, self.sessions_with_vm,
                self.total_sessions_destroyed, self.total_sessions_expired,
                self.rejected_not_found, self.rejected_invalid_token, self.rejected_terminated,
                self.rejected_expired, self.rejected_tokens, self.rejected_time,
                self.rejected_depth)

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
    out.rejected_not_found = s.rejected[<int>RLM_REJ_NOT_FOUND]
    out.rejected_invalid_token = s.rejected[<int>RLM_REJ_INVALID_TOKEN]
    out.rejected_terminated = s.rejected[<int>RLM_REJ_TERMINATED]
    out.rejected_expired = s.rejected[<int>RLM_REJ_EXPIRED]
    out.rejected_tokens = s.rejected[<int>RLM_REJ_TOKENS]
    out.rejected_time = s.rejected[<int>RLM_REJ_TIME]
    out.rejected_depth = s.rejected[<int>RLM_REJ_DEPTH]
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

    def __init__(self, config=None, *, clock=None, on_remove=None):
        """A new, empty table. `config` is validated and copied; `clock`,
        when given, returns int nanoseconds since the epoch (tests use it);
        `on_remove(info, reason)` is told of every removed session
        (docs/lifecycle.md)."""
        if self._config is not None:
            raise TypeError("SessionManager is already initialised")
        config = resolve_config(config)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning int nanoseconds")
        self._on_remove = check_on_remove(on_remove)
        self._reapers = ReaperSlot()
        cdef Config cfg
        cfg.duration_ns = config.session_duration_secs * 1000000000
        cfg.increment_ns = config.extension_increment_secs * 1000000000
        cfg.max_extensions = config.max_extensions
        cfg.token_budget = config.token_budget
        cfg.time_budget_ms = config.time_budget_ms
        cfg.max_depth = config.max_recursion_depth
        # 0 (no limit): the count still stops at the crate's u32 maximum.
        cfg.max_snapshots = config.max_snapshots_per_session or 0xFFFFFFFF  # U32_MAX
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
            _fail(self._t, st, k, "create_session")
        info = _info(&c)
        if _info_on():
            log_created(info)
        return info

    def create_child_session(self, parent_id, *, token_budget=None, time_budget_ms=None):
        """A child session of `parent_id` in its tree (docs/trees.md): it
        starts one deeper than the parent is now, expires no later than the
        parent, and its budgets default to what the parent has left; its
        charges also count against every ancestor."""
        cdef SidKey parent, k, who
        cdef SessionCopy c
        cdef int st
        cdef uint64_t value = 0, limit = 0, tokens = 0, time_ms = 0
        _mkey(self._t, parent_id, &parent)
        cdef cbool has_tokens = token_budget is not None
        cdef cbool has_time = time_budget_ms is not None
        if has_tokens:
            tokens = _u64(token_budget, "token_budget")
        if has_time:
            time_ms = _u64(time_budget_ms, "time_budget_ms")
        cdef int64_t now = self._stamp_now()
        # The child's id carries its parent's shard bits: the whole tree
        # shares one shard (and one lock).
        cdef uint64_t bits = self._t.shard_index(parent)
        who = parent
        while True:
            if rlm_new_key_with(now // 1000000, bits, RLM_SHARD_MASK, &k) != 0:
                raise OSError("the operating system's random source failed")
            st = self._t.create_child(k, parent, now, has_tokens, tokens, has_time, time_ms,
                                      &c, &who, &value, &limit)
            if st != RLM_DUPLICATE:
                break  # never reuse a live id, however unlikely
        if st == RLM_OK:
            info = _info(&c)
            if _info_on():
                log_created(info)
            return info
        if st == RLM_DEPTH_EXCEEDED:
            self._t.count_refusal(st)
            raise RecursionDepthExceeded(<object>value + 1, limit)
        if st == RLM_TOKENS_ABOVE_PARENT:
            raise ValueError(f"token_budget {tokens} is above what the parent has left ({value})")
        if st == RLM_TIME_ABOVE_PARENT:
            raise ValueError(f"time_budget_ms {time_ms} is above what the parent has left ({value})")
        _fail(self._t, st, who, "create_child_session")

    def children(self, session_id):
        """The direct children of a session, in id order (a read-only
        lookup: it works on expired and terminated sessions)."""
        cdef SidKey k
        cdef vector[SidKey] kids
        cdef int st
        cdef size_t i
        _mkey(self._t, session_id, &k)
        st = self._t.children(k, &kids)
        if st != RLM_OK:
            _fail(self._t, st, k, "children")
        sort(kids.begin(), kids.end())
        return [_sid(kids[i]) for i in range(kids.size())]

    def get_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _mkey(self._t, session_id, &k)
        st = self._t.get(k, &c)
        if st != RLM_OK:
            _fail(self._t, st, k, "get_session")
        return _info(&c)

    def update_session_state(self, session_id, state):
        cdef SidKey k
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int code = _state_code(state)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.update_state(k, now, code, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "update_session_state")

    def is_session_valid(self, session_id):
        """Whether the session exists and it and every ancestor are neither
        terminated nor expired (False for a malformed string id). A False
        counts in the matching rejected_* counter."""
        cdef SidKey k
        if type(session_id) is SessionId:
            k = _k(<SessionId>session_id)
        elif isinstance(session_id, str):
            if _try_parse(<str>session_id, &k) != 0:
                self._t.count_rejected(RLM_REJ_INVALID_TOKEN)
                return False
        else:
            _key(session_id, &k)  # the other core's SessionId, or TypeError
        cdef int64_t now = self._now()
        cdef int st = self._t.status_of(k, now, NULL)
        if st == RLM_OK:
            return True
        self._t.count_refusal(st)  # False counts by its reason
        return False

    def validate_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.validate(k, now, &c, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "validate")
        return _info(&c)

    def extend_session(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.extend(k, now, &c, &who)
        if st == RLM_MAX_EXTENSIONS:
            raise MaxExtensionsReached(_sid(k), self._t.cfg.max_extensions)
        if st == RLM_TIME_OVERFLOW:
            raise ConfigError(MSG_EXTEND_OVERFLOW)
        if st != RLM_OK:
            _fail(self._t, st, who, "extend_session")
        return _info(&c)

    def destroy_session(self, session_id):
        """Remove the session and its whole subtree (any state); returns the
        removed session's last state. `on_remove` hears "destroyed" for it
        and "cascade" for each descendant."""
        cdef SidKey k
        cdef int st
        cdef size_t i
        cdef vector[SessionCopy] rows
        _mkey(self._t, session_id, &k)
        st = self._t.destroy(k, &rows)
        if st != RLM_OK:
            _fail(self._t, st, k, "destroy_session")
        cdef SessionInfo info = _info(&rows[0])
        if self._on_remove is not None or _info_on():
            removed = [(info, "destroyed")]
            for i in range(1, rows.size()):
                removed.append((_info(&rows[i]), "cascade"))
            report_removed(self._on_remove, removed)  # every lock released
        return info

    def cleanup_expired_sessions(self):
        """Remove every session with `expires_at < now`, each with its
        subtree; every removed id, in id order."""
        return self._pop_expired(False)

    def pop_expired_sessions(self):
        """Remove what `cleanup_expired_sessions` would and return the
        removed sessions' last states, in id order. `on_remove` hears
        "expired" for each session whose own expiry passed, "cascade" for
        one removed only with an expired ancestor."""
        return self._pop_expired(True)

    cdef list _pop_expired(self, bint infos):
        cdef int64_t now = self._now()
        cdef bint report = self._on_remove is not None or _info_on()
        if not (infos or report):
            return self._expired_ids(now)
        cdef vector[SessionCopy] rows
        cdef vector[size_t] order
        cdef int st, sorted_st
        cdef size_t i, n
        with nogil:  # the work runs without the GIL, in pieces: other threads go on
            st = self._t.cleanup(now, &rows, NULL)
            sorted_st = rlm_order_by_id(rows, &order)
        if sorted_st != RLM_OK:
            raise MemoryError()  # (the rows are out of the table; nothing to report them with)
        n = rows.size()
        cdef list out = PyList_New(n)  # sized once: no regrowth
        cdef object item, pending = None
        cdef list removed = [] if report else None
        cdef SessionInfo info
        for i in range(n):
            if i % _TURN == _TURN - 1:
                pending = _take_turn(pending)
            info = _info(&rows[order[i]])
            if report:
                removed.append((info, "expired" if info.c.s.expires_ns < now else "cascade"))
            item = info if infos else info.id
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
        with nogil:  # (SPEC 15) a large buffer goes back to the OS without the GIL
            rlm_free_rows(rows)
            rlm_free_order(order)
        if report and n != 0:
            report_removed(self._on_remove, removed)  # every lock released
        if st != RLM_OK:  # out of memory part way: what was removed is reported
            raise MemoryError()
        if pending is not None:
            raise pending
        return out

    cdef list _expired_ids(self, int64_t now):
        """cleanup_expired_sessions when nobody hears of removals: the
        table keeps only the removed ids, sorted without the GIL."""
        cdef vector[SidKey] keys
        cdef int st
        cdef size_t i, n
        with nogil:
            st = self._t.cleanup(now, NULL, &keys)
            rlm_sort_keys(keys)
        n = keys.size()
        cdef list out = PyList_New(n)  # sized once: no regrowth
        cdef object item, pending = None
        for i in range(n):
            if i % _TURN == _TURN - 1:
                pending = _take_turn(pending)
            item = _sid(keys[i])
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
        with nogil:
            rlm_free_keys(keys)
        if st != RLM_OK:  # out of memory part way (what was removed stays removed)
            raise MemoryError()
        if pending is not None:
            raise pending
        return out

    def start_reaper(self, interval_s=1.0):
        """Start a daemon thread that calls `pop_expired_sessions` every
        `interval_s` seconds; `stop()` (or leaving its `with` block) ends it.
        RuntimeError while this manager already has a running reaper."""
        return self._reapers.start(self.pop_expired_sessions, interval_s)

    # -- VM affinity ----------------------------------------------------------

    def assign_vm(self, session_id, vm_instance_id):
        cdef SidKey k
        cdef string vm
        cdef int st
        _mkey(self._t, session_id, &k)
        _utf8(vm_instance_id, "vm_instance_id", True, &vm)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        cdef SidKey previous
        cdef cbool moved = False
        st = self._t.assign_vm(k, now, vm, &who, &previous, &moved)
        if st != RLM_OK:
            _fail(self._t, st, who, "assign_vm")
        if moved and _info_on():
            log_vm_moved(_text(vm), _sid(previous), _sid(k))

    def release_vm(self, session_id):
        cdef SidKey k
        cdef string vm
        cdef cbool had = False
        cdef int st
        _mkey(self._t, session_id, &k)
        st = self._t.release_vm(k, &vm, &had)
        if st != RLM_OK:
            _fail(self._t, st, k, "release_vm")
        return _text(vm) if had else None

    def get_assigned_vm(self, session_id):
        cdef SidKey k
        cdef string vm
        cdef cbool had = False
        cdef int st
        _mkey(self._t, session_id, &k)
        st = self._t.get_vm(k, &vm, &had)
        if st != RLM_OK:
            _fail(self._t, st, k, "get_assigned_vm")
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
        _mkey(self._t, session_id, &k)
        _utf8(key, "key", False, &name)
        _utf8(value, "value", False, &text)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.set_context(k, now, name, text, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "set_context_variable")

    def get_context_variable(self, session_id, key):
        cdef SidKey k
        cdef string name, text
        cdef cbool had = False
        cdef int st
        _mkey(self._t, session_id, &k)
        _utf8(key, "key", False, &name)
        st = self._t.get_context(k, name, &text, &had)
        if st != RLM_OK:
            _fail(self._t, st, k, "get_context_variable")
        return _text(text) if had else None

    def get_all_context_variables(self, session_id):
        cdef SidKey k
        cdef SessionCopy c
        cdef int st
        cdef size_t i
        _mkey(self._t, session_id, &k)
        st = self._t.all_context(k, &c)
        if st != RLM_OK:
            _fail(self._t, st, k, "get_all_context_variables")
        cdef dict out = {}
        for i in range(c.context.size()):
            out[_text(c.context[i].first)] = _text(c.context[i].second)
        return out

    def delete_context_variable(self, session_id, key):
        cdef SidKey k
        cdef string name, text
        cdef cbool had = False
        cdef int st
        _mkey(self._t, session_id, &k)
        _utf8(key, "key", False, &name)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.delete_context(k, now, name, &text, &had, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "delete_context_variable")
        return _text(text) if had else None

    # -- budgets and depth --------------------------------------------------------

    def update_budget(self, session_id, budget):
        cdef SidKey k
        cdef int st
        _mkey(self._t, session_id, &k)
        if type(budget) is not BudgetStatus and result_kind(budget) != "BudgetStatus":
            raise TypeError(f"budget must be a BudgetStatus, not {type(budget).__name__}")
        cdef BudgetStatus b = _budget_of(budget)  # the twin's, converted
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.update_budget(k, now, b.token_budget, b.tokens_used, b.time_budget_ms,
                                   b.time_used_ms, b.max_recursion_depth,
                                   b.current_recursion_depth, &who)
        if st == RLM_BELOW_START:
            raise ValueError(
                f"current_recursion_depth {b.current_recursion_depth} is below "
                f"the child's start depth {self._t.start_depth(k)}"
            )
        if st != RLM_OK:
            _fail(self._t, st, who, "update_budget")

    def increment_recursion_depth(self, session_id):
        cdef SidKey k
        _mkey(self._t, session_id, &k)
        return self._increment(k)

    cdef object _increment(self, SidKey k):
        cdef uint64_t depth = 0, maximum = 0
        cdef int st
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.increment(k, now, &depth, &maximum, &who)
        if st == RLM_DEPTH_EXCEEDED:
            self._t.count_refusal(st)
            raise RecursionDepthExceeded(<object>depth + 1, maximum)
        if st != RLM_OK:
            _fail(self._t, st, who, "increment_recursion_depth")
        return depth

    def decrement_recursion_depth(self, session_id):
        cdef SidKey k
        cdef uint64_t depth = 0
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.decrement(k, now, &depth, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "decrement_recursion_depth")
        return depth

    def recursion(self, session_id):
        """Context manager: depth +1 on entry (yields it), -1 on exit."""
        cdef _Recursion r = _Recursion.__new__(_Recursion)
        _mkey(self._t, session_id, &r._key)
        r._manager = self
        return r

    def charge_tokens(self, session_id, tokens):
        cdef SidKey k
        cdef uint64_t total = 0, budget = 0
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef uint64_t amount = _u64(tokens, "tokens")
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.charge_tokens(k, now, amount, &total, &budget, &who)
        if st == RLM_OK:
            return total
        if st == RLM_TOKENS_OVER:
            self._t.count_refusal(st)
            raise TokenBudgetExceeded(total, budget)  # spent: the charge stays
        if st == RLM_U64_OVERFLOW:
            raise ValueError(MSG_TOKENS_OVERFLOW)
        _fail(self._t, st, who, "charge_tokens")

    def charge_time(self, session_id, elapsed_ms):
        cdef SidKey k
        cdef uint64_t total = 0, budget = 0
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef uint64_t amount = _u64(elapsed_ms, "elapsed_ms")
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.charge_time(k, now, amount, &total, &budget, &who)
        if st == RLM_OK:
            return total
        if st == RLM_TIME_OVER:
            self._t.count_refusal(st)
            raise TimeBudgetExceeded(total, budget)
        if st == RLM_U64_OVERFLOW:
            raise ValueError(MSG_TIME_OVERFLOW)
        _fail(self._t, st, who, "charge_time")

    def check_budget(self, session_id):
        cdef SidKey k
        cdef Session s, bad
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        # The path from the root down, tokens then time then depth for each:
        # the table names the first exhausted budget and its session's fields.
        st = self._t.budget(k, now, &s, &bad, &who)
        if st == RLM_TOKENS_OVER or st == RLM_TIME_OVER or st == RLM_DEPTH_EXCEEDED:
            self._t.count_refusal(st)  # the path's validity counts in _fail
        if st == RLM_TOKENS_OVER:
            raise TokenBudgetExceeded(bad.tokens_used, bad.token_budget)
        if st == RLM_TIME_OVER:
            raise TimeBudgetExceeded(bad.time_used_ms, bad.time_budget_ms)
        if st == RLM_DEPTH_EXCEEDED:
            raise RecursionDepthExceeded(bad.depth, bad.max_depth)
        if st != RLM_OK:
            _fail(self._t, st, who, "check_budget")
        return _budget(s.token_budget, s.tokens_used, s.time_budget_ms, s.time_used_ms,
                       s.max_depth, s.depth)

    # -- the model-call step (docs/lifecycle.md) ------------------------------------

    def begin_call(self, session_id):
        """Admit one model call, in one atomic step (one lock): the session's
        path is valid, no budget on it is exhausted (as `check_budget`), and
        the session's depth goes up by one (as `increment_recursion_depth`).
        Returns the session's BudgetStatus after."""
        cdef SidKey k
        cdef Session s
        cdef cbool at_limit = False
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.begin_call(k, now, &s, &at_limit, &who)
        if st == RLM_OK:
            return _budget(s.token_budget, s.tokens_used, s.time_budget_ms, s.time_used_ms,
                           s.max_depth, s.depth)
        if st == RLM_TOKENS_OVER:
            self._t.count_refusal(st)
            raise TokenBudgetExceeded(s.tokens_used, s.token_budget)
        if st == RLM_TIME_OVER:
            self._t.count_refusal(st)
            raise TimeBudgetExceeded(s.time_used_ms, s.time_budget_ms)
        if st == RLM_DEPTH_EXCEEDED:
            self._t.count_refusal(st)
            if at_limit:
                raise RecursionDepthExceeded(<object>s.depth + 1, s.max_depth)
            raise RecursionDepthExceeded(s.depth, s.max_depth)
        _fail(self._t, st, who, "begin_call")

    def end_call(self, session_id, *, tokens=0, elapsed_ms=0):
        """Close one model call, in one atomic step (one lock): charge
        `tokens` and `elapsed_ms` with roll-up (all or nothing against
        2**64-1) and take the depth back down; then raise as the charges
        would (tokens first), else return the session's BudgetStatus."""
        cdef SidKey k
        cdef CallEnd r
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef uint64_t amount = _u64(tokens, "tokens")
        cdef uint64_t elapsed = _u64(elapsed_ms, "elapsed_ms")
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.end_call(k, now, amount, elapsed, &r, &who)
        if st == RLM_OK:
            return _budget(r.own.token_budget, r.own.tokens_used, r.own.time_budget_ms,
                           r.own.time_used_ms, r.own.max_depth, r.own.depth)
        if st == RLM_TOKENS_OVER:
            self._t.count_refusal(st)
            raise TokenBudgetExceeded(r.used, r.limit)  # spent: the charge stays
        if st == RLM_TIME_OVER:
            self._t.count_refusal(st)
            raise TimeBudgetExceeded(r.used, r.limit)
        if st == RLM_U64_OVERFLOW:
            raise ValueError(MSG_TIME_OVERFLOW if r.time_overflow else MSG_TOKENS_OVERFLOW)
        _fail(self._t, st, who, "end_call")

    def call(self, session_id):
        """Context manager around one model call: `begin_call` on entry; on
        every exit `end_call` with the `tokens` set on the yielded object and
        the elapsed wall time (the manager's clock if it has one)."""
        cdef SidKey k
        _mkey(self._t, session_id, &k)
        sid = _sid(k)
        begin = self.begin_call
        end = self.end_call
        return ModelCall(
            lambda: begin(sid),
            lambda tokens, elapsed: end(sid, tokens=tokens, elapsed_ms=elapsed),
            self._clock,
        )

    # -- snapshots ------------------------------------------------------------------

    def record_snapshot_created(self, session_id, snapshot_id, set_as_current=False):
        cdef SidKey k
        cdef string snap
        cdef int st
        _mkey(self._t, session_id, &k)
        _utf8(snapshot_id, "snapshot_id", False, &snap)
        if type(set_as_current) is not bool:
            raise TypeError("set_as_current must be a bool")
        cdef cbool current = set_as_current
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.snapshot_created(k, now, snap, current, &who)
        if st == RLM_MAX_SNAPSHOTS:
            raise MaxSnapshotsReached(self._t.cfg.max_snapshots)
        if st != RLM_OK:
            _fail(self._t, st, who, "record_snapshot_created")

    def record_snapshot_restored(self, session_id, snapshot_id):
        cdef SidKey k
        cdef string snap
        cdef int st
        _mkey(self._t, session_id, &k)
        _utf8(snapshot_id, "snapshot_id", False, &snap)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.snapshot_restored(k, now, snap, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "record_snapshot_restored")

    def get_current_snapshot(self, session_id):
        cdef SidKey k
        cdef string snap
        cdef cbool had = False
        cdef int st
        _mkey(self._t, session_id, &k)
        st = self._t.current_snapshot(k, &snap, &had)
        if st != RLM_OK:
            _fail(self._t, st, k, "get_current_snapshot")
        return _text(snap) if had else None

    def clear_snapshot_tracking(self, session_id):
        cdef SidKey k
        cdef int st
        _mkey(self._t, session_id, &k)
        cdef int64_t now = self._now()
        cdef SidKey who = k
        st = self._t.clear_snapshots(k, now, &who)
        if st != RLM_OK:
            _fail(self._t, st, who, "clear_snapshot_tracking")

    # -- whole table ------------------------------------------------------------------

    def get_stats(self):
        """The counters: each shard's read under its own lock in turn (no
        walk of the table); they balance (created == destroyed + expired +
        active)."""
        cdef Stats s
        s = self._t.stats()
        return _stats(s)

    def list_sessions(self):
        """Every session, children included, in id order; read in pieces
        (SPEC 15), so a session created meanwhile may be missing and one
        removed meanwhile is not listed, but each is listed whole."""
        cdef vector[SessionCopy] rows
        cdef int st
        cdef vector[size_t] order
        with nogil:
            st = self._t.list(&rows, NULL)
            if st == RLM_OK:
                st = rlm_order_by_id(rows, &order)
        if st != RLM_OK:
            raise MemoryError()
        out = _infos_in_order(rows, order)
        with nogil:  # (SPEC 15) a large buffer goes back to the OS without the GIL
            rlm_free_rows(rows)
            rlm_free_order(order)
        return out

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
        cdef size_t size
        cdef char *dst
        with nogil:
            st = self._t.budget_rows(&rows)
            if st == RLM_OK:
                rlm_sort_rows(rows)
        if st != RLM_OK:
            raise MemoryError()
        if dtype.itemsize != sizeof(BudgetRow):
            raise AssertionError("BudgetRow and BUDGET_TABLE_FIELDS disagree")
        size = rows.size() * sizeof(BudgetRow)
        data = PyByteArray_FromStringAndSize(NULL, size)
        dst = PyByteArray_AS_STRING(data)
        if size != 0:  # an empty vector's data() may be NULL: memcpy's arguments never are
            with nogil:  # the copy of a large table without the GIL
                memcpy(dst, <const char *>rows.data(), size)
                rlm_free_budget_rows(rows)  # and the buffer's return to the OS
        return numpy().frombuffer(data, dtype=dtype)

    def _export(self):
        """Every session, the counters and each session's start depth (0
        for a root), for dump: read in pieces as list_sessions is, the
        counters last (`_dump.settle` makes a file of it that loads)."""
        cdef vector[SessionCopy] rows
        cdef Stats s
        cdef int st
        cdef size_t i, n
        cdef vector[size_t] order
        with nogil:
            st = self._t.list(&rows, &s)
            if st == RLM_OK:
                st = rlm_order_by_id(rows, &order)
        if st != RLM_OK:
            raise MemoryError()
        n = rows.size()
        cdef list starts = PyList_New(n)
        cdef object item, pending = None
        for i in range(n):
            if i % _TURN == _TURN - 1:
                pending = _take_turn(pending)
            item = rows[order[i]].s.start_depth
            Py_INCREF(item)
            PyList_SET_ITEM(starts, i, item)
        if pending is not None:
            raise pending
        infos = _infos_in_order(rows, order)
        with nogil:  # (SPEC 15) a large buffer goes back to the OS without the GIL
            rlm_free_rows(rows)
            rlm_free_order(order)
        return infos, _stats(s), starts

    def _restore(self, infos, counters, start_depths=None):
        """Fill an empty manager from `_export`'s rows (load): all or
        nothing. Every parent must be a row, with no cycle, and a child's
        start depth at most its depth (ValueError otherwise)."""
        checked = check_restore(infos, counters)
        starts = check_tree(checked, start_depths)
        cdef vector[SessionCopy] rows
        cdef SessionInfo info
        cdef int st
        cdef size_t i = 0
        for row in checked:
            info = row if type(row) is SessionInfo else SessionInfo._trusted(*row._astuple())
            rows.push_back(info.c)
            rows.back().s.start_depth = starts[i] if info.c.has_parent else 0
            i += 1
        cdef uint64_t created = counters[0], destroyed = counters[1], expired = counters[2]
        st = self._t.restore(rows, created, destroyed, expired)
        if st == RLM_NOT_EMPTY:
            raise ValueError("restore needs a new, empty manager")
        if st != RLM_OK:
            raise MemoryError()

    def dump(self, path):
        """Write every session and the counters to `path`, atomically
        (docs/dump-format.md). The table is read in pieces as `_export`
        reads it, settled and written as lines in C++ without the GIL, a
        chunk of lines at a time (`_DumpLines`)."""
        from ._dump import write_file
        cdef _DumpLines lines = _DumpLines.__new__(_DumpLines)
        cdef vector[size_t] order
        cdef Stats s
        cdef int st
        with nogil:
            st = self._t.list(&lines.rows, &s)
            if st == RLM_OK:
                st = rlm_order_by_id(lines.rows, &order)
            if st == RLM_OK:
                st = rlm_settle(lines.rows, order, &lines.kept)
            rlm_free_order(order)
        if st != RLM_OK:
            raise MemoryError()
        cdef size_t n = lines.kept.size()
        counters = (s.destroyed + s.expired + n, s.destroyed, s.expired)  # settle's rule
        write_file(path, self.config, counters, n, lines.chunks(_DUMP_BATCH))

    @classmethod
    def load(cls, path, config=None, *, clock=None, on_remove=None):
        """A new manager holding what `dump` wrote, with the dumped config
        unless `config` is given; a bad file raises Serialization. `clock`
        and `on_remove` as for the constructor."""
        from ._dump import load

        def make(config, *, clock):
            return cls(config, clock=clock, on_remove=on_remove)

        return load(make, path, config, clock=clock, restore_lines=_restore_lines)

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
# the nogil C API declared in _session_c.pxd
# ---------------------------------------------------------------------------

cdef Table *rlm_table(SessionManager manager) noexcept:
    return manager._t


cdef int64_t rlm_now_ns() noexcept nogil:
    return rlm_check_time_ns()


cdef int rlm_is_valid(Table *t, const unsigned char *sid, int64_t now_ns) noexcept nogil:
    cdef int st = t.status_of(rlm_key_from_bytes(sid), now_ns, NULL)
    if st != RLM_OK:
        t.count_refusal(st)
    return st


cdef int rlm_charge_tokens(Table *t, const unsigned char *sid, int64_t now_ns,
                           uint64_t amount, uint64_t *total) noexcept nogil:
    cdef uint64_t budget
    cdef int st = t.charge_tokens(rlm_key_from_bytes(sid), now_ns, amount, total, &budget, NULL)
    if st != RLM_OK:
        t.count_refusal(st)
    return st


cdef int rlm_charge_time(Table *t, const unsigned char *sid, int64_t now_ns,
                         uint64_t amount_ms, uint64_t *total) noexcept nogil:
    cdef uint64_t budget
    cdef int st = t.charge_time(rlm_key_from_bytes(sid), now_ns, amount_ms, total, &budget, NULL)
    if st != RLM_OK:
        t.count_refusal(st)
    return st


cdef int rlm_depth_up(Table *t, const unsigned char *sid, int64_t now_ns,
                      uint64_t *depth) noexcept nogil:
    cdef uint64_t maximum
    cdef int st = t.increment(rlm_key_from_bytes(sid), now_ns, depth, &maximum, NULL)
    if st != RLM_OK:
        t.count_refusal(st)
    return st


cdef int rlm_depth_down(Table *t, const unsigned char *sid, int64_t now_ns,
                        uint64_t *depth) noexcept nogil:
    cdef int st = t.decrement(rlm_key_from_bytes(sid), now_ns, depth, NULL)
    if st != RLM_OK:
        t.count_refusal(st)
    return st


cdef int rlm_vm_of(Table *t, const unsigned char *sid, char *buf, size_t size,
                   size_t *length) noexcept nogil:
    # A lookup, like get_assigned_vm: counts nowhere.
    return t.copy_vm(rlm_key_from_bytes(sid), buf, size, length)


# ---------------------------------------------------------------------------
# registration: the shared code finds this core's classes by identity
# ---------------------------------------------------------------------------

register_session_id(SessionId)
register_results(info=SessionInfo, budget=BudgetStatus, stats=SessionStats)
