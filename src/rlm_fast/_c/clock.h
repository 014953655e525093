/* rlm_fast compiled core: the wall clock, precise (timestamps) and coarse
 * (checks). */
#ifndef RLM_FAST_CLOCK_H
#define RLM_FAST_CLOCK_H

#include <stdint.h>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  ifndef NOMINMAX
#    define NOMINMAX
#  endif
#  include <windows.h>
#else
#  include <time.h>
#endif

namespace rlm_fast {

static inline int64_t rlm_time_ns(void) {
#if defined(_WIN32)
    FILETIME ft;
    GetSystemTimePreciseAsFileTime(&ft);
    uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
    return (int64_t)(t - 116444736000000000ULL) * 100; /* 1601 -> 1970 */
#else
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

/* The wall clock at tick resolution (Linux: CLOCK_REALTIME_COARSE, ~4 ns
 * instead of ~16 ns). It reads at most one tick (1-4 ms) behind
 * rlm_time_ns(), never ahead, so a check made with it is only ever that
 * much more lenient. Used for checks; timestamps a session records come
 * from rlm_time_ns(). Elsewhere it is the precise clock. */
static inline int64_t rlm_check_time_ns(void) {
#if defined(CLOCK_REALTIME_COARSE)
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#else
    return rlm_time_ns();
#endif
}

} /* namespace rlm_fast */

#endif /* RLM_FAST_CLOCK_H */
