/* rlm_fast compiled core: fresh ids from the OS CSPRNG, through a per-thread
 * buffer that a fork invalidates. */
#ifndef RLM_FAST_ENTROPY_H
#define RLM_FAST_ENTROPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <atomic>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  ifndef NOMINMAX
#    define NOMINMAX /* windows.h would define min/max macros */
#  endif
#  include <windows.h>
#  include <bcrypt.h> /* setup.py links bcrypt */
#elif defined(__linux__)
#  include <errno.h>
#  include <pthread.h>
#  include <sys/random.h>
#else /* macOS, the BSDs */
#  include <pthread.h>
#  include <unistd.h>
#  if defined(__APPLE__)
#    include <sys/random.h>
#  endif
#endif

#include "ids.h"

namespace rlm_fast {

/* Fill buf from the OS CSPRNG; 0 on success. */
static int rlm_os_random(unsigned char *buf, size_t n) {
#if defined(_WIN32)
    return BCryptGenRandom(NULL, buf, (ULONG)n,
                           BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0 ? 0 : -1;
#elif defined(__linux__)
    while (n > 0) {
        ssize_t got = getrandom(buf, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += got;
        n -= (size_t)got;
    }
    return 0;
#else
    while (n > 0) {
        size_t chunk = n > 256 ? 256 : n; /* getentropy's limit */
        if (getentropy(buf, chunk) != 0) return -1;
        buf += chunk;
        n -= chunk;
    }
    return 0;
#endif
}

/* One 4 KiB buffer per thread, so an id costs no syscall. A fork bumps
 * the generation, so a child never replays its parent's bytes. */
#define RLM_RAND_BUF 4096
static std::atomic<uint64_t> rlm_fork_generation{0};
struct RlmRandBuf {
    unsigned char data[RLM_RAND_BUF];
    size_t pos = RLM_RAND_BUF;
    uint64_t generation = 0;
};
static thread_local RlmRandBuf rlm_rand;

#if !defined(_WIN32)
static void rlm_after_fork_child(void) { rlm_fork_generation.fetch_add(1); }
#endif
static int rlm_random_init(void) {
#if !defined(_WIN32)
    return pthread_atfork(NULL, NULL, rlm_after_fork_child) == 0 ? 0 : -1;
#else
    return 0;
#endif
}

/* 10 fresh random bytes (80 bits); 0 on success. */
static inline int rlm_random10(unsigned char *out) {
    RlmRandBuf &b = rlm_rand;
    uint64_t gen = rlm_fork_generation.load(std::memory_order_relaxed);
    if (b.pos + 10 > RLM_RAND_BUF || b.generation != gen) {
        if (rlm_os_random(b.data, RLM_RAND_BUF) != 0) return -1;
        b.pos = 0;
        b.generation = gen;
    }
    memcpy(out, b.data + b.pos, 10);
    memset(b.data + b.pos, 0, 10); /* a used token leaves no copy behind */
    b.pos += 10;
    return 0;
}

/* A new id at `ms` (clamped to 48 bits); 0 on success. */
static inline int rlm_new_key(int64_t ms, SidKey *out) {
    unsigned char r[10];
    if (rlm_random10(r) != 0) return -1;
    uint64_t t = ms < 0 ? 0 : (uint64_t)ms;
    if (t > 0xFFFFFFFFFFFFULL) t = 0xFFFFFFFFFFFFULL;
    uint64_t lo = 0;
    for (int i = 2; i < 10; ++i) lo = (lo << 8) | r[i];
    out->hi = (t << 16) | ((uint64_t)r[0] << 8) | r[1];
    out->lo = lo;
    return 0;
}

/* A new id at `ms` whose bits under `mask` in lo are those of `bits`: a
 * child's id takes its root's shard bits (table.h), keeping the other 76
 * of the 80 random bits; 0 on success. */
static inline int rlm_new_key_with(int64_t ms, uint64_t bits, uint64_t mask, SidKey *out) {
    if (rlm_new_key(ms, out) != 0) return -1;
    out->lo = (out->lo & ~mask) | (bits & mask);
    return 0;
}

} /* namespace rlm_fast */

#endif /* RLM_FAST_ENTROPY_H */
