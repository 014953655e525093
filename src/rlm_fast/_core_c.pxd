# cython: language_level=3
"""C-level API of rlm_fast's compiled session core, for other Cython code.

    from rlm_fast._core_c cimport (
        SessionManager, Table, rlm_table, rlm_now_ns, rlm_charge_tokens, RLM_OK)

    cdef Table *t = rlm_table(manager)   # with the GIL; keep `manager` alive
    cdef uint64_t total
    with nogil:
        status = rlm_charge_tokens(t, sid16, rlm_now_ns(), 120, &total)

A session id is its 16 big-endian bytes (`SessionId.bytes`). Each `rlm_*`
function takes the table's locks itself, does one atomic step, returns an
`RlmStatus` code and never raises; call them without the GIL. `now_ns` is
the time the call decides expiry by: `rlm_now_ns()` (the wall clock the
manager's checks use), or your own for a manager made with a `clock`. Build with
`include_dirs=[rlm_fast.get_include()]` and `language="c++"`.
"""

from libc.stdint cimport int64_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from libcpp.vector cimport vector

cdef extern from "_core_c.h" nogil:
    ctypedef struct SidKey:
        uint64_t hi
        uint64_t lo

    ctypedef struct Session:
        int64_t created_ns
        int64_t expires_ns
        uint64_t extension_count
        uint64_t depth
        uint64_t token_budget
        uint64_t tokens_used
        uint64_t time_budget_ms
        uint64_t time_used_ms
        uint64_t max_depth
        uint64_t snapshot_count
        int state

    cdef cppclass SessionCopy:
        SidKey key
        Session s
        cbool has_vm
        cbool has_snapshot
        string vm
        string snapshot
        vector[pair[string, string]] context

    void rlm_move_copy(SessionCopy &, SessionCopy &)
    int rlm_order_by_id(const vector[SessionCopy] &, vector[size_t] *)

    ctypedef struct Config:
        int64_t duration_ns
        int64_t increment_ns
        uint64_t max_extensions
        uint64_t token_budget
        uint64_t time_budget_ms
        uint64_t max_depth
        uint64_t max_snapshots

    ctypedef struct BudgetRow:
        pass

    SidKey rlm_key_from_bytes(const unsigned char *)  # 16 big-endian bytes
    void rlm_sort_rows(vector[BudgetRow] &)

    ctypedef struct Stats:
        uint64_t created
        uint64_t active
        uint64_t with_vm
        uint64_t destroyed
        uint64_t expired

    cdef cppclass Table:
        Config cfg
        size_t size()
        int create(SidKey, int64_t, int64_t, SessionCopy *)
        int get(SidKey, SessionCopy *)
        int is_valid(SidKey, int64_t)
        int status_of(SidKey, int64_t)
        int copy_vm(SidKey, char *, size_t, size_t *)
        int validate(SidKey, int64_t, SessionCopy *)
        int update_state(SidKey, int64_t, int)
        int extend(SidKey, int64_t, SessionCopy *)
        int destroy(SidKey)
        int cleanup(int64_t, vector[SidKey] *)
        int assign_vm(SidKey, int64_t, const string &)
        int release_vm(SidKey, string *, cbool *)
        int get_vm(SidKey, string *, cbool *)
        cbool session_for_vm(const string &, SidKey *)
        int set_context(SidKey, int64_t, const string &, const string &)
        int get_context(SidKey, const string &, string *, cbool *)
        int all_context(SidKey, SessionCopy *)
        int delete_context(SidKey, int64_t, const string &, string *, cbool *)
        int update_budget(SidKey, int64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t)
        int increment(SidKey, int64_t, uint64_t *, uint64_t *)
        int decrement(SidKey, int64_t, uint64_t *)
        void leave_recursion(SidKey)
        int charge_tokens(SidKey, int64_t, uint64_t, uint64_t *, uint64_t *)
        int charge_time(SidKey, int64_t, uint64_t, uint64_t *, uint64_t *)
        int budget(SidKey, int64_t, Session *)
        int snapshot_created(SidKey, int64_t, const string &, cbool)
        int snapshot_restored(SidKey, int64_t, const string &)
        int current_snapshot(SidKey, string *, cbool *)
        int clear_snapshots(SidKey, int64_t)
        Stats stats()
        int list(vector[SessionCopy] *, Stats *)
        cbool contains(SidKey)
        void validity(const vector[SidKey] &, const vector[char] &, int64_t, char *)
        int budget_rows(vector[BudgetRow] *)
        int restore(const vector[SessionCopy] &, uint64_t, uint64_t, uint64_t)

    enum RlmStatus:
        RLM_OK
        RLM_NOT_FOUND
        RLM_TERMINATED
        RLM_EXPIRED
        RLM_MAX_EXTENSIONS
        RLM_DEPTH_EXCEEDED
        RLM_MAX_SNAPSHOTS
        RLM_TIME_OVERFLOW
        RLM_U64_OVERFLOW
        RLM_TOKENS_OVER
        RLM_TIME_OVER
        RLM_DUPLICATE
        RLM_NOMEM
        RLM_NOT_EMPTY
        RLM_NO_VM
        RLM_BUFFER_TOO_SMALL

    const int64_t RLM_I64_MAX
    void rlm_format(SidKey, char *)
    int rlm_parse(const char *, SidKey *)
    int rlm_new_key(int64_t, SidKey *)
    int rlm_random_init()
    int64_t rlm_time_ns()
    int64_t rlm_check_time_ns()


cdef class SessionId:
    cdef uint64_t hi
    cdef uint64_t lo
    cdef bint _initialized


cdef class SessionManager:
    cdef Table *_t  # owned; it takes its own (striped) locks
    cdef object _clock
    cdef object _config
    cdef int64_t _now(self) except? -1
    cdef int64_t _stamp_now(self) except? -1
    cdef object _increment(self, SidKey k)


# ---- the nogil C API (status codes: RlmStatus) ----------------------------

cdef Table *rlm_table(SessionManager manager) noexcept
cdef int64_t rlm_now_ns() noexcept nogil
# RLM_OK if the session may be used now, else NOT_FOUND/TERMINATED/EXPIRED.
cdef int rlm_is_valid(Table *t, const unsigned char *sid, int64_t now_ns) noexcept nogil
# Like charge_tokens/charge_time: TOKENS_OVER/TIME_OVER keep the charge.
cdef int rlm_charge_tokens(Table *t, const unsigned char *sid, int64_t now_ns,
                           uint64_t amount, uint64_t *total) noexcept nogil
cdef int rlm_charge_time(Table *t, const unsigned char *sid, int64_t now_ns,
                         uint64_t amount_ms, uint64_t *total) noexcept nogil
# Depth +1 (DEPTH_EXCEEDED at the maximum, nothing changed) and -1.
cdef int rlm_depth_up(Table *t, const unsigned char *sid, int64_t now_ns,
                      uint64_t *depth) noexcept nogil
cdef int rlm_depth_down(Table *t, const unsigned char *sid, int64_t now_ns,
                        uint64_t *depth) noexcept nogil
# The session's VM id as UTF-8 into buf (not terminated): NOT_FOUND, NO_VM,
# or BUFFER_TOO_SMALL (with *length set to the size needed).
cdef int rlm_vm_of(Table *t, const unsigned char *sid, char *buf, size_t size,
                   size_t *length) noexcept nogil
