# cython: language_level=3
# distutils: language = c++
"""A user of rlm_fast's nogil C API, built by tests/test_capi.py."""

from libc.stdint cimport int64_t, uint64_t

from rlm_fast._session_c cimport (
    RLM_BUFFER_TOO_SMALL,
    RLM_DEPTH_EXCEEDED,
    RLM_OK,
    RLM_TOKENS_OVER,
    SessionManager,
    Table,
    rlm_charge_time,
    rlm_charge_tokens,
    rlm_depth_down,
    rlm_depth_up,
    rlm_is_valid,
    rlm_now_ns,
    rlm_table,
    rlm_vm_of,
)


def hot_loop(SessionManager manager not None, bytes sid, int rounds, uint64_t tokens):
    """`rounds` model calls, all without the GIL: validate, depth up,
    charge tokens and time, depth down. Returns the status counts."""
    cdef Table *t = rlm_table(manager)
    cdef const unsigned char *p = sid
    cdef uint64_t total = 0, depth = 0
    cdef int i, valid = 0, charged = 0, over = 0, too_deep = 0, st
    if len(sid) != 16:
        raise ValueError("sid must be 16 bytes")
    with nogil:
        for i in range(rounds):
            if rlm_is_valid(t, p, rlm_now_ns()) != RLM_OK:
                continue
            valid += 1
            st = rlm_depth_up(t, p, rlm_now_ns(), &depth)
            if st == RLM_DEPTH_EXCEEDED:
                too_deep += 1
                continue
            st = rlm_charge_tokens(t, p, rlm_now_ns(), tokens, &total)
            if st == RLM_OK:
                charged += 1
            elif st == RLM_TOKENS_OVER:
                over += 1
            rlm_charge_time(t, p, rlm_now_ns(), 1, &total)
            rlm_depth_down(t, p, rlm_now_ns(), &depth)
    return {"valid": valid, "charged": charged, "over": over, "too_deep": too_deep}


def status(SessionManager manager not None, bytes sid, int64_t now_ns):
    cdef const unsigned char *p = sid
    cdef Table *t = rlm_table(manager)
    cdef int st
    with nogil:
        st = rlm_is_valid(t, p, now_ns)
    return st


def vm_of(SessionManager manager not None, bytes sid, size_t size):
    cdef char buf[256]
    cdef size_t length = 0
    cdef const unsigned char *p = sid
    cdef Table *t = rlm_table(manager)
    cdef int st
    if size > sizeof(buf):
        raise ValueError("size too large")
    with nogil:
        st = rlm_vm_of(t, p, buf, size, &length)
    if st == RLM_OK:
        return st, buf[:length].decode("utf-8")
    return st, length


def charge(SessionManager manager not None, bytes sid, int64_t now_ns, uint64_t tokens):
    """rlm_charge_tokens without the GIL: (status, total)."""
    cdef Table *t = rlm_table(manager)
    cdef const unsigned char *p = sid
    cdef uint64_t total = 0
    cdef int st
    with nogil:
        st = rlm_charge_tokens(t, p, now_ns, tokens, &total)
    return st, total


cdef extern from *:
    """
    /* The C API keeps its names in namespace rlm_fast, so a user may have
     * its own Table, Session and Config (a redefinition error otherwise). */
    struct Table { int mine; };
    struct Session { int mine; };
    struct Config { int mine; };
    static int capi_user_own_names(void) {
        Table t; Session s; Config c;
        t.mine = 1; s.mine = 2; c.mine = 4;
        return t.mine + s.mine + c.mine;
    }
    """
    int capi_user_own_names()


def own_names():
    return capi_user_own_names()
