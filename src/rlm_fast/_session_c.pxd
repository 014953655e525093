# cython: language_level=3
"""C-level API of rlm_fast's compiled session core, for other Cython code.

    from rlm_fast._session_c cimport (
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

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from libcpp.vector cimport vector

cdef extern from "_session_c.h" nogil:
    const int RLM_DEBUG_BUILD  # 1: RLM_FAST_DEBUG (invariants checked after every change)

cdef extern from "_session_c.h" namespace "rlm_fast" nogil:
    ctypedef struct SidKey:
        uint64_t hi
        uint64_t lo

    ctypedef struct Session:  # the crate's u32 fields are u32 here
        int64_t created_ns
        int64_t expires_ns
        uint32_t extension_count
        uint32_t depth
        uint64_t token_budget
        uint64_t tokens_used
        uint64_t time_budget_ms
        uint64_t time_used_ms
        uint32_t max_depth
        uint32_t snapshot_count
        int state
        uint32_t start_depth  # 0 for a root

    cdef cppclass SessionCopy:
        SidKey key
        Session s
        cbool has_vm
        cbool has_snapshot
        string vm
        string snapshot
        vector[pair[string, string]] context
        cbool has_parent  # a child: parent and root are set
        SidKey parent
        SidKey root

    void rlm_move_copy(SessionCopy &, SessionCopy &)
    int rlm_order_by_id(const vector[SessionCopy] &, vector[size_t] *)
    void rlm_free_rows(vector[SessionCopy] &)  # elements and buffer
    void rlm_free_order(vector[size_t] &)
    void rlm_sort_keys(vector[SidKey] &)
    # dump (_c/dumpfile.h): _dump.settle, and the lines, in C++
    int rlm_settle(vector[SessionCopy] &, const vector[size_t] &, vector[size_t] *)
    int rlm_dump_lines(const vector[SessionCopy] &, const vector[size_t] &, size_t, size_t,
                       string *)
    # load: canonical lines read back and checked; RLM_FALLBACK: the Python path
    int RLM_FALLBACK
    int rlm_read_dump(const char *, size_t, size_t, uint64_t, uint64_t, uint64_t,
                      vector[SessionCopy] *)
    void rlm_free_keys(vector[SidKey] &)

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
    void rlm_free_budget_rows(vector[BudgetRow] &)

    ctypedef struct Stats:
        uint64_t created
        uint64_t active
        uint64_t with_vm
        uint64_t destroyed
        uint64_t expired
        uint64_t rejected[7]  # SessionStats.rejected_*, RlmRefusal order

    ctypedef struct CallEnd:
        Session own
        uint64_t used
        uint64_t limit
        cbool time_overflow

    cdef cppclass Table:
        # `who`: on TERMINATED/EXPIRED, the session on the path that failed
        # (the one nearest the root); may be NULL.
        Config cfg
        size_t size()
        unsigned int shard_index(SidKey)
        int create(SidKey, int64_t, int64_t, SessionCopy *)
        int create_child(SidKey, SidKey, int64_t, cbool, uint64_t, cbool, uint64_t,
                         SessionCopy *, SidKey *, uint64_t *, uint64_t *)
        int get(SidKey, SessionCopy *)
        int children(SidKey, vector[SidKey] *)
        int is_valid(SidKey, int64_t)
        int status_of(SidKey, int64_t, SidKey *)
        int copy_vm(SidKey, char *, size_t, size_t *)
        int validate(SidKey, int64_t, SessionCopy *, SidKey *)
        int update_state(SidKey, int64_t, int, SidKey *)
        int extend(SidKey, int64_t, SessionCopy *, SidKey *)
        # destroy/cleanup move the removed sessions' last states out
        # (destroy: the session first, then its descendants in id order;
        # cleanup: unordered, in pieces; the caller sorts by id; with the
        # rows NULL, only the removed ids, into the keys). Whole-table
        # calls (cleanup, list, budget_rows, stats, size) hold no lock for
        # more than rlm_piece_size() sessions: call them without the GIL.
        int destroy(SidKey, vector[SessionCopy] *)
        int cleanup(int64_t, vector[SessionCopy] *, vector[SidKey] *)
        int assign_vm(SidKey, int64_t, const string &, SidKey *, SidKey *, cbool *)
        int release_vm(SidKey, string *, cbool *)
        int get_vm(SidKey, string *, cbool *)
        cbool session_for_vm(const string &, SidKey *)
        int set_context(SidKey, int64_t, const string &, const string &, SidKey *)
        int get_context(SidKey, const string &, string *, cbool *)
        int all_context(SidKey, SessionCopy *)
        int delete_context(SidKey, int64_t, const string &, string *, cbool *, SidKey *)
        int update_budget(SidKey, int64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, SidKey *)
        uint64_t start_depth(SidKey)
        int increment(SidKey, int64_t, uint64_t *, uint64_t *, SidKey *)
        int decrement(SidKey, int64_t, uint64_t *, SidKey *)
        void leave_recursion(SidKey)
        int charge_tokens(SidKey, int64_t, uint64_t, uint64_t *, uint64_t *, SidKey *)
        int charge_time(SidKey, int64_t, uint64_t, uint64_t *, uint64_t *, SidKey *)
        int budget(SidKey, int64_t, Session *, Session *, SidKey *)
        int begin_call(SidKey, int64_t, Session *, cbool *, SidKey *)
        int end_call(SidKey, int64_t, uint64_t, uint64_t, CallEnd *, SidKey *)
        void count_refusal(int)  # a refusal status: its rejected_* counter + 1
        void count_rejected(int)  # an RlmRefusal: its counter + 1
        int snapshot_created(SidKey, int64_t, const string &, cbool, SidKey *)
        int snapshot_restored(SidKey, int64_t, const string &, SidKey *)
        int current_snapshot(SidKey, string *, cbool *)
        int clear_snapshots(SidKey, int64_t, SidKey *)
        Stats stats()
        int list(vector[SessionCopy] *, Stats *)
        void piece_stats(uint64_t *, uint64_t *, cbool)  # tests: holds, widest
        size_t expiry_entries()  # tests
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
        RLM_TOKENS_ABOVE_PARENT
        RLM_TIME_ABOVE_PARENT
        RLM_BELOW_START

    enum RlmRefusal:
        RLM_REJ_NOT_FOUND
        RLM_REJ_INVALID_TOKEN
        RLM_REJ_TERMINATED
        RLM_REJ_EXPIRED
        RLM_REJ_TOKENS
        RLM_REJ_TIME
        RLM_REJ_DEPTH
        RLM_NREFUSALS
    int rlm_refusal_of(int)

    const int64_t RLM_I64_MAX
    void rlm_format(SidKey, char *)
    int rlm_parse(const char *, SidKey *)
    int rlm_new_key(int64_t, SidKey *)
    int rlm_new_key_with(int64_t, uint64_t, uint64_t, SidKey *)
    const uint64_t RLM_SHARD_MASK
    size_t rlm_piece_size()  # whole-table calls: sessions per lock hold
    void rlm_set_piece_size(size_t)
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
    cdef object _on_remove  # None or on_remove(info, reason)
    cdef object _reapers  # _lifecycle.ReaperSlot
    cdef int64_t _now(self) except? -1
    cdef int64_t _stamp_now(self) except? -1
    cdef object _increment(self, SidKey k)
    cdef list _pop_expired(self, bint infos)
    cdef list _expired_ids(self, int64_t now)


# ---- the nogil C API (status codes: RlmStatus) ----------------------------
#
# A refusal returned here counts in the manager's SessionStats.rejected_*
# exactly as the Python method raising it would (docs/lifecycle.md):
# NOT_FOUND, TERMINATED, EXPIRED, TOKENS_OVER, TIME_OVER and DEPTH_EXCEEDED
# each count once (rlm_is_valid's non-OK results too); other codes, and
# rlm_vm_of (a lookup, like get_assigned_vm), count nowhere.

cdef Table *rlm_table(SessionManager manager) noexcept
cdef int64_t rlm_now_ns() noexcept nogil
# RLM_OK if the session and all its ancestors may be used now, else
# NOT_FOUND/TERMINATED/EXPIRED.
cdef int rlm_is_valid(Table *t, const unsigned char *sid, int64_t now_ns) noexcept nogil
# Like charge_tokens/charge_time: the charge rolls up to every ancestor (one
# lock: a tree lives in its root's shard); U64_OVERFLOW anywhere on the path
# records nothing; TOKENS_OVER/TIME_OVER keep the charge, with *total the
# total of the session nearest the root whose budget was passed.
cdef int rlm_charge_tokens(Table *t, const unsigned char *sid, int64_t now_ns,
                           uint64_t amount, uint64_t *total) noexcept nogil
cdef int rlm_charge_time(Table *t, const unsigned char *sid, int64_t now_ns,
                         uint64_t amount_ms, uint64_t *total) noexcept nogil
# Depth +1 (DEPTH_EXCEEDED at the maximum, nothing changed) and -1 (never
# below a child's start depth).
cdef int rlm_depth_up(Table *t, const unsigned char *sid, int64_t now_ns,
                      uint64_t *depth) noexcept nogil
cdef int rlm_depth_down(Table *t, const unsigned char *sid, int64_t now_ns,
                        uint64_t *depth) noexcept nogil
# The session's VM id as UTF-8 into buf (not terminated): NOT_FOUND, NO_VM,
# or BUFFER_TOO_SMALL (with *length set to the size needed).
cdef int rlm_vm_of(Table *t, const unsigned char *sid, char *buf, size_t size,
                   size_t *length) noexcept nogil
