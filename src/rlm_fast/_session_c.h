/* rlm_fast compiled core: the umbrella header of the C API.
 *
 * Everything lives in `namespace rlm_fast`, split by concern under _c/:
 *
 *   _c/status.h    status codes (RlmStatus) and session states
 *   _c/ids.h       SidKey, its hash, text and byte forms
 *   _c/entropy.h   fresh ids from the OS CSPRNG
 *   _c/clock.h     the wall clock (precise and coarse)
 *   _c/lock.h      the table lock and its guard
 *   _c/debug.h     the RLM_FAST_DEBUG switch (RLM_CHECK)
 *   _c/session.h   Session, SessionCopy, Config, Stats, BudgetRow
 *   _c/table.h     Shard and Table: the striped session table
 *
 * Cython code reaches it through _session_c.pxd
 * (`cdef extern from "_session_c.h" namespace "rlm_fast"`); nothing here
 * is declared in the global namespace of an extension that cimports it.
 */
#ifndef RLM_FAST_SESSION_C_H
#define RLM_FAST_SESSION_C_H

#include "_c/status.h"
#include "_c/ids.h"
#include "_c/entropy.h"
#include "_c/clock.h"
#include "_c/lock.h"
#include "_c/debug.h"
#include "_c/session.h"
#include "_c/table.h"
#include "_c/dumpfile.h"

#endif /* RLM_FAST_SESSION_C_H */
