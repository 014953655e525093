/* rlm_fast compiled core: the status codes every Table method returns (the
 * C API's RlmStatus) and the session states, in _results.STATES order. */
#ifndef RLM_FAST_STATUS_H
#define RLM_FAST_STATUS_H

#include <stdint.h>

namespace rlm_fast {

enum RlmStatus {
    RLM_OK = 0,
    RLM_NOT_FOUND = 1,     /* SessionNotFound */
    RLM_TERMINATED = 2,    /* InvalidSessionState */
    RLM_EXPIRED = 3,       /* SessionExpired */
    RLM_MAX_EXTENSIONS = 4,
    RLM_DEPTH_EXCEEDED = 5,
    RLM_MAX_SNAPSHOTS = 6,
    RLM_TIME_OVERFLOW = 7, /* ConfigError: expiry past int64 */
    RLM_U64_OVERFLOW = 8,  /* ValueError: a total past 2**64-1 */
    RLM_TOKENS_OVER = 9,   /* charged, then TokenBudgetExceeded */
    RLM_TIME_OVER = 10,    /* charged, then TimeBudgetExceeded */
    RLM_DUPLICATE = 11,    /* id already in the table: draw another */
    RLM_NOMEM = 12,        /* MemoryError, nothing changed */
    RLM_NOT_EMPTY = 13,    /* restore into a manager that was used */
    RLM_NO_VM = 14,        /* C API: the session holds no VM */
    RLM_BUFFER_TOO_SMALL = 15, /* C API: *length says what is needed */
    RLM_TOKENS_ABOVE_PARENT = 16, /* ValueError: a child's token_budget */
    RLM_TIME_ABOVE_PARENT = 17,   /* ValueError: a child's time_budget_ms */
    RLM_BELOW_START = 18          /* ValueError: depth below a child's start */
};

/* Order of SessionState members in _results.STATES. */
enum RlmState {
    RLM_INITIALIZING = 0, RLM_READY = 1, RLM_EXECUTING = 2,
    RLM_PAUSED = 3, RLM_STATE_TERMINATED = 4, RLM_STATE_EXPIRED = 5
};

/* The refusal counters (docs/lifecycle.md), in SessionStats' rejected_*
 * order (_results.REFUSAL_INDEX). */
enum RlmRefusal {
    RLM_REJ_NOT_FOUND = 0, RLM_REJ_INVALID_TOKEN = 1, RLM_REJ_TERMINATED = 2,
    RLM_REJ_EXPIRED = 3, RLM_REJ_TOKENS = 4, RLM_REJ_TIME = 5, RLM_REJ_DEPTH = 6,
    RLM_NREFUSALS = 7
};

/* The refusal counter a status counts in, or -1 for a status that is not
 * a refusal (OK, MAX_EXTENSIONS, overflows, NOMEM, ValueError ones...). */
static inline int rlm_refusal_of(int status) {
    switch (status) {
    case RLM_NOT_FOUND: return RLM_REJ_NOT_FOUND;
    case RLM_TERMINATED: return RLM_REJ_TERMINATED;
    case RLM_EXPIRED: return RLM_REJ_EXPIRED;
    case RLM_TOKENS_OVER: return RLM_REJ_TOKENS;
    case RLM_TIME_OVER: return RLM_REJ_TIME;
    case RLM_DEPTH_EXCEEDED: return RLM_REJ_DEPTH;
    default: return -1;
    }
}

static const int64_t RLM_I64_MAX = INT64_MAX;
static const uint64_t RLM_U64_MAX = UINT64_MAX;

} /* namespace rlm_fast */

#endif /* RLM_FAST_STATUS_H */
