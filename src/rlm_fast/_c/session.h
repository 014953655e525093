/* rlm_fast compiled core: what the table stores and hands out: a session's
 * fields, the plain copies results are built from, the configuration, the
 * counters and the packed rows of budget_table(). */
#ifndef RLM_FAST_SESSION_H
#define RLM_FAST_SESSION_H

#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <map>
#include <new>
#include <string>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "ids.h"
#include "status.h"

namespace rlm_fast {

struct Session;

/* What a session has only sometimes: allocated on first use. */
struct Extras {
    bool has_vm = false;
    bool has_snapshot = false;
    std::string vm;
    std::string snapshot;
    std::map<std::string, std::string> context; /* sorted by key bytes */
    /* The call tree (docs/trees.md): a child's parent (set when
     * Session::start_depth > 0, so every child has Extras), and the direct
     * children, unordered; a session without children keeps it empty.
     * `up` is the parent's node, so a walk up the path costs no hash
     * lookup: std::unordered_map never moves a node, and a parent outlives
     * its children (removal takes whole subtrees). */
    SidKey parent = SidKey();
    Session *up = NULL;
    std::vector<SidKey> children;
};

struct Session { /* zero-initialised: no field is ever read unset */
    int64_t created_ns = 0;
    int64_t expires_ns = 0;
    uint64_t token_budget = 0;
    uint64_t tokens_used = 0;
    uint64_t time_budget_ms = 0;
    uint64_t time_used_ms = 0;
    Extras *extras = NULL; /* owned; NULL until needed (always set for a child) */
    /* The crate's u32 fields, each kept within u32 by its checks: the
     * extension count (<= max_extensions, a u32), the depth (<= max_depth
     * except through update_budget, whose BudgetStatus is u32-checked),
     * the snapshot count (<= max_snapshots, a u32). */
    uint32_t extension_count = 0;
    uint32_t depth = 0; /* the one source of truth for recursion depth */
    uint32_t max_depth = 0;
    uint32_t snapshot_count = 0;
    /* 0 for a root; a child's depth at creation (>= 1), the floor of its
     * depth. */
    uint32_t start_depth = 0;
    int32_t state = RLM_INITIALIZING;
};

static_assert(sizeof(void *) != 8 || sizeof(Session) == 80,
              "Session grew: with its id, a row is 96 bytes (docs/design.md)");

/* A plain copy of one session, made under the lock, turned into a
 * SessionInfo after it is released. */
struct SessionCopy {
    SidKey key = SidKey();
    Session s;
    bool has_vm = false;
    bool has_snapshot = false;
    std::string vm;
    std::string snapshot;
    std::vector<std::pair<std::string, std::string>> context;
    bool has_parent = false; /* a child: parent and root are set */
    SidKey parent = SidKey();
    SidKey root = SidKey();  /* a root's own key */
};

/* The order that sorts `rows` by id (sorting indices, not the copies). */
static inline int rlm_order_by_id(const std::vector<SessionCopy> &rows,
                                  std::vector<size_t> *order) {
    try {
        order->resize(rows.size());
    } catch (const std::bad_alloc &) {
        return RLM_NOMEM;
    }
    for (size_t i = 0; i < rows.size(); ++i) (*order)[i] = i;
    std::sort(order->begin(), order->end(),
              [&rows](size_t a, size_t b) { return rows[a].key < rows[b].key; });
    return RLM_OK;
}

/* Free a vector's elements and its buffer. Whole-table calls call these
 * without the GIL: a buffer of a million rows is hundreds of MB. Handing
 * it back to the OS in one munmap holds the process's memory-map lock for
 * milliseconds, and every other thread that touches a new page meanwhile
 * waits for it; so on Linux a large buffer's pages are first released in
 * 8 MB steps (madvise(MADV_DONTNEED) shares that lock with page faults),
 * and the munmap then has nothing left to free. Such a buffer is always
 * its own mapping (glibc maps any block over 32 MB by itself), and the
 * steps stay inside the block, clear of its malloc header. */
template <class T>
static inline void rlm_free_vector(std::vector<T> &v) {
    v.clear();
#if defined(__linux__)
    const size_t bytes = v.capacity() * sizeof(T);
    if (bytes >= ((size_t)64 << 20)) {
        const uintptr_t page = 4096, step = (uintptr_t)8 << 20;
        uintptr_t from = ((uintptr_t)v.data() + page - 1) & ~(page - 1);
        uintptr_t to = ((uintptr_t)v.data() + bytes) & ~(page - 1);
        for (uintptr_t p = from; p < to; p += step)
            madvise((void *)p, (size_t)std::min(step, to - p), MADV_DONTNEED);
    }
#endif
    std::vector<T>().swap(v);
}

static inline void rlm_free_rows(std::vector<SessionCopy> &v) { rlm_free_vector(v); }
static inline void rlm_free_order(std::vector<size_t> &v) { rlm_free_vector(v); }
static inline void rlm_free_keys(std::vector<SidKey> &v) { rlm_free_vector(v); }
/* Sort ids: a stable LSD radix sort on `hi` a byte at a time (bytes that
 * are the same in every id, such as the top of the creation time, cost no
 * pass), then an insertion pass that orders ids with equal `hi` by `lo`
 * (rare: `hi` holds 16 random bits below the millisecond). Several times
 * faster than std::sort on a cleanup's ids; std::sort when short or when
 * the scratch buffer cannot be had. */
static inline void rlm_sort_keys(std::vector<SidKey> &v) {
    const size_t n = v.size();
    std::vector<SidKey> tmp;
    if (n >= 512) {
        try {
            tmp.resize(n);
        } catch (const std::bad_alloc &) {
        }
    }
    if (n < 512 || tmp.size() != n) {
        std::sort(v.begin(), v.end());
        return;
    }
    size_t count[8][256] = {};
    for (const SidKey &k : v)
        for (int b = 0; b < 8; ++b) count[b][(k.hi >> (8 * b)) & 0xFF] += 1;
    SidKey *src = v.data(), *dst = tmp.data();
    for (int b = 0; b < 8; ++b) {
        if (count[b][(src[0].hi >> (8 * b)) & 0xFF] == n) continue; /* one value: no pass */
        size_t at[256], sum = 0;
        for (int d = 0; d < 256; ++d) {
            at[d] = sum;
            sum += count[b][d];
        }
        for (size_t i = 0; i < n; ++i) dst[at[(src[i].hi >> (8 * b)) & 0xFF]++] = src[i];
        std::swap(src, dst);
    }
    if (src != v.data()) memcpy(v.data(), src, n * sizeof(SidKey));
    for (size_t i = 1; i < n; ++i) { /* equal hi: by lo */
        SidKey k = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1].hi == k.hi && k.lo < v[j - 1].lo) {
            v[j] = v[j - 1];
            --j;
        }
        v[j] = k;
    }
}

/* Hand a copy over to a result object without copying its strings. */
static inline void rlm_move_copy(SessionCopy &dst, SessionCopy &src) {
    dst = std::move(src);
}

struct Config {
    int64_t duration_ns;
    int64_t increment_ns;
    uint64_t max_extensions;
    uint64_t token_budget;
    uint64_t time_budget_ms;
    uint64_t max_depth;
    uint64_t max_snapshots; /* 0: no limit */
};

/* One row of budget_table(): the packed layout of _bulk.BUDGET_TABLE_FIELDS
 * (native byte order; the id big-endian). */
#pragma pack(push, 1)
struct BudgetRow {
    unsigned char id[16];
    uint8_t state;
    int64_t expires_ns;
    uint64_t tokens_used, token_budget, time_used_ms, time_budget_ms;
    uint64_t depth, max_depth, extension_count, snapshot_count;
    uint8_t has_vm;
};
#pragma pack(pop)

static inline void rlm_free_budget_rows(std::vector<BudgetRow> &v) { rlm_free_vector(v); }

/* Sort rows by id: memcmp of big-endian ids is numeric order. */
static inline void rlm_sort_rows(std::vector<BudgetRow> &rows) {
    std::sort(rows.begin(), rows.end(), [](const BudgetRow &a, const BudgetRow &b) {
        return memcmp(a.id, b.id, 16) < 0;
    });
}

struct Stats {
    uint64_t created, active, with_vm, destroyed, expired;
    uint64_t rejected[RLM_NREFUSALS]; /* RlmRefusal order */
};

/* What model-call step end_call did (Table::end_call). */
struct CallEnd {
    Session own;       /* the session's fields after the step */
    uint64_t used;     /* TOKENS_OVER / TIME_OVER: the total and budget of */
    uint64_t limit;    /* the session nearest the root whose budget was passed */
    bool time_overflow; /* U64_OVERFLOW: the time amount (else the tokens) */
};

} /* namespace rlm_fast */

#endif /* RLM_FAST_SESSION_H */
