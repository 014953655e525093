/* rlm_fast compiled core: the debug switch. Built with RLM_FAST_DEBUG
 * (setup.py, RLM_FAST_DEBUG=1), RLM_CHECK(cond, what) aborts the process
 * with a message when a table invariant is broken; otherwise it compiles to
 * nothing, and so does every RLM_DEBUG_ONLY(...) statement. */
#ifndef RLM_FAST_DEBUG_H
#define RLM_FAST_DEBUG_H

#include <stdio.h>
#include <stdlib.h>

#if defined(RLM_FAST_DEBUG)
#  define RLM_DEBUG_BUILD 1
#  define RLM_DEBUG_ONLY(stmt) stmt
#  define RLM_CHECK(cond, what)                                                   \
      do {                                                                        \
          if (!(cond)) {                                                          \
              fprintf(stderr, "rlm_fast: table invariant broken: %s (%s:%d)\n",   \
                      (what), __FILE__, __LINE__);                                \
              fflush(stderr);                                                     \
              abort();                                                            \
          }                                                                       \
      } while (0)
#else
#  define RLM_DEBUG_BUILD 0
#  define RLM_DEBUG_ONLY(stmt)
#  define RLM_CHECK(cond, what) ((void)0)
#endif

#endif /* RLM_FAST_DEBUG_H */
