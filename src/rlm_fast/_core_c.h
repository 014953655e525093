/* rlm_fast compiled core: the session table in C++ memory.
 *
 * No Python object is touched here. A `Table` is striped into shards,
 * each with its own lock, plus a lock for the VM map; every method takes
 * the locks it needs (see the lock order above class Table), so each is one
 * atomic step, callable with or without the GIL (the Cython class and the
 * cimport-able C API in _core_c.pxd both call them). Methods return a status
 * code and never throw (allocation failure becomes RLM_NOMEM with the table
 * unchanged).
 */
#ifndef RLM_FAST_CORE_C_H
#define RLM_FAST_CORE_C_H

#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <Python.h> /* PyMutex (3.13+), PY_VERSION_HEX: no object is used */
#if PY_VERSION_HEX < 0x030D0000
#  include <mutex>
#endif

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
#  include <time.h>
#else /* macOS, the BSDs */
#  include <pthread.h>
#  include <time.h>
#  include <unistd.h>
#  if defined(__APPLE__)
#    include <sys/random.h>
#  endif
#endif

/* ---------------------------------------------------------------- status */

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
    RLM_BUFFER_TOO_SMALL = 15 /* C API: *length says what is needed */
};

/* Order of SessionState members in _types.STATES. */
enum RlmState {
    RLM_INITIALIZING = 0, RLM_READY = 1, RLM_EXECUTING = 2,
    RLM_PAUSED = 3, RLM_STATE_TERMINATED = 4, RLM_STATE_EXPIRED = 5
};

static const int64_t RLM_I64_MAX = INT64_MAX;
static const uint64_t RLM_U64_MAX = UINT64_MAX;

/* ---------------------------------------------------------------- ids */

struct SidKey {
    uint64_t hi; /* 48-bit ms timestamp << 16 | top 16 random bits */
    uint64_t lo; /* low 64 random bits */
};
static inline bool operator==(const SidKey &a, const SidKey &b) {
    return a.hi == b.hi && a.lo == b.lo;
}
static inline bool operator<(const SidKey &a, const SidKey &b) {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}
struct SidHash {
    size_t operator()(const SidKey &k) const noexcept {
        /* lo is 64 CSPRNG bits; mixing hi in keeps crafted ids spread. */
        uint64_t x = k.lo ^ (k.hi * 0x9E3779B97F4A7C15ULL);
        x ^= x >> 31;
        return (size_t)x;
    }
};

static const char RLM_ALPHABET[33] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* 26 uppercase Crockford characters into out (no terminator). */
static inline void rlm_format(SidKey k, char *out) {
    uint64_t hi = k.hi, lo = k.lo;
    for (int i = 25; i >= 0; --i) {
        out[i] = RLM_ALPHABET[lo & 31];
        lo = (lo >> 5) | (hi << 59);
        hi >>= 5;
    }
}

static inline int rlm_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'z') c = (unsigned char)(c - 32);
    switch (c) {
    case 'A': return 10; case 'B': return 11; case 'C': return 12;
    case 'D': return 13; case 'E': return 14; case 'F': return 15;
    case 'G': return 16; case 'H': return 17; case 'J': return 18;
    case 'K': return 19; case 'M': return 20; case 'N': return 21;
    case 'P': return 22; case 'Q': return 23; case 'R': return 24;
    case 'S': return 25; case 'T': return 26; case 'V': return 27;
    case 'W': return 28; case 'X': return 29; case 'Y': return 30;
    case 'Z': return 31;
    default: return -1;
    }
}

/* Parse 26 ASCII characters; 0 on success, -1 if malformed. */
static inline int rlm_parse(const char *s, SidKey *out) {
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 26; ++i) {
        int d = rlm_digit((unsigned char)s[i]);
        if (d < 0) return -1;
        if (i == 0 && d > 7) return -1; /* would overflow 128 bits */
        hi = (hi << 5) | (lo >> 59);
        lo = (lo << 5) | (uint64_t)d;
    }
    out->hi = hi;
    out->lo = lo;
    return 0;
}

/* ---------------------------------------------------------------- entropy */

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

/* ---------------------------------------------------------------- clock */

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

/* ---------------------------------------------------------------- lock */

/* A table lock. On 3.13+ a PyMutex: one byte, and a thread that blocks on
 * it detaches from the interpreter, so neither the GIL nor a free-threaded
 * stop-the-world can deadlock against it. Before 3.13 a std::mutex, and a
 * caller that holds the GIL releases it before blocking (every waiter does,
 * so the holder can always get the GIL back). Usable without the GIL. */
#if PY_VERSION_HEX >= 0x030D0000
struct RlmLock {
    PyMutex m = {0};
    void lock() { PyMutex_Lock(&m); }
    void unlock() { PyMutex_Unlock(&m); }
};
#else
struct RlmLock {
    std::mutex m;
    void lock() {
        if (m.try_lock()) return;
        if (PyGILState_Check()) {
            PyThreadState *ts = PyEval_SaveThread();
            m.lock();
            PyEval_RestoreThread(ts);
        } else {
            m.lock();
        }
    }
    void unlock() { m.unlock(); }
};
#endif

/* Holds a lock for one scope. */
struct RlmGuard {
    RlmLock &l;
    explicit RlmGuard(RlmLock &lock) : l(lock) { l.lock(); }
    ~RlmGuard() { l.unlock(); }
    RlmGuard(const RlmGuard &) = delete;
    RlmGuard &operator=(const RlmGuard &) = delete;
};

/* ---------------------------------------------------------------- table */

/* What a session has only sometimes: allocated on first use. */
struct Extras {
    bool has_vm = false;
    bool has_snapshot = false;
    std::string vm;
    std::string snapshot;
    std::map<std::string, std::string> context; /* sorted by key bytes */
};

struct Session { /* zero-initialised: no field is ever read unset */
    int64_t created_ns = 0;
    int64_t expires_ns = 0;
    uint64_t extension_count = 0;
    uint64_t depth = 0; /* the one source of truth for recursion depth */
    uint64_t token_budget = 0;
    uint64_t tokens_used = 0;
    uint64_t time_budget_ms = 0;
    uint64_t time_used_ms = 0;
    uint64_t max_depth = 0;
    uint64_t snapshot_count = 0;
    Extras *extras = NULL; /* owned; NULL until needed */
    int state = RLM_INITIALIZING;
};

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

/* Hand a copy over to a result object without copying its strings. */
static inline void rlm_move_copy(SessionCopy &dst, SessionCopy &src) {
    dst = std::move(src);
}

struct ExpiryEntry {
    int64_t expires;
    SidKey key;
};
struct ExpiryLater { /* std heaps are max-heaps: invert for the earliest */
    bool operator()(const ExpiryEntry &a, const ExpiryEntry &b) const {
        return a.expires > b.expires;
    }
};

struct Config {
    int64_t duration_ns;
    int64_t increment_ns;
    uint64_t max_extensions;
    uint64_t token_budget;
    uint64_t time_budget_ms;
    uint64_t max_depth;
    uint64_t max_snapshots; /* 0: no limit */
};

/* One row of budget_table(): the packed layout of _types.BUDGET_TABLE_FIELDS
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

static inline void rlm_key_bytes(SidKey k, unsigned char *out) {
    for (int i = 7; i >= 0; --i) {
        out[i] = (unsigned char)(k.hi & 0xFF);
        out[8 + i] = (unsigned char)(k.lo & 0xFF);
        k.hi >>= 8;
        k.lo >>= 8;
    }
}

static inline SidKey rlm_key_from_bytes(const unsigned char *b) {
    SidKey k = {0, 0};
    for (int i = 0; i < 8; ++i) {
        k.hi = (k.hi << 8) | b[i];
        k.lo = (k.lo << 8) | b[8 + i];
    }
    return k;
}

/* Sort rows by id: memcmp of big-endian ids is numeric order. */
static inline void rlm_sort_rows(std::vector<BudgetRow> &rows) {
    std::sort(rows.begin(), rows.end(), [](const BudgetRow &a, const BudgetRow &b) {
        return memcmp(a.id, b.id, 16) < 0;
    });
}

struct Stats {
    uint64_t created, active, with_vm, destroyed, expired;
};

/* One stripe of the table: its sessions and their expiry index, under its
 * own lock, on its own cache lines. Its methods assume `mu` is held. */
struct alignas(64) Shard {
    typedef std::unordered_map<SidKey, Session, SidHash> Map;

    RlmLock mu;
    Map sessions;
    /* The expiry index: one (expires_at, id) entry per create and
     * extension. Entries arriving in expiry order (the usual case: each
     * create expires after the previous one) go to the FIFO, so the due
     * ones are its prefix; the others to a min-heap. An entry whose session
     * is gone or has a later expiry is stale and skipped; stale entries are
     * purged when they outnumber live sessions. */
    std::deque<ExpiryEntry> fifo;
    std::vector<ExpiryEntry> heap;

    ~Shard() {
        for (auto &kv : sessions) delete kv.second.extras;
    }

    Session *find(SidKey key) {
        auto it = sessions.find(key);
        return it == sessions.end() ? NULL : &it->second;
    }

    /* Existence, TERMINATED, then expiry (by clock or state). */
    int live(SidKey key, int64_t now, Session **out) {
        Session *s = find(key);
        if (!s) return RLM_NOT_FOUND;
        if (s->state == RLM_STATE_TERMINATED) return RLM_TERMINATED;
        if (s->state == RLM_STATE_EXPIRED || now > s->expires_ns) return RLM_EXPIRED;
        *out = s;
        return RLM_OK;
    }

    /* Index one expiry (may throw bad_alloc, then nothing changed); true
     * if it went to the FIFO. */
    bool push_expiry(int64_t expires, SidKey key) {
        if (fifo.size() + heap.size() >= 2 * sessions.size() + 64) purge_expiry();
        if (fifo.empty() || expires >= fifo.back().expires) {
            fifo.push_back({expires, key});
            return true;
        }
        heap.reserve(heap.size() + 1);
        heap.push_back({expires, key});
        std::push_heap(heap.begin(), heap.end(), ExpiryLater());
        return false;
    }

    /* Undo the push_expiry(expires, key) just made (cannot throw; only on
     * the allocation-failure path, so linear is fine). */
    void unpush_expiry(bool in_fifo, int64_t expires, SidKey key) {
        if (in_fifo) {
            fifo.pop_back();
            return;
        }
        for (size_t i = 0; i < heap.size(); ++i) {
            if (heap[i].expires == expires && heap[i].key == key) {
                heap[i] = heap.back();
                heap.pop_back();
                std::make_heap(heap.begin(), heap.end(), ExpiryLater());
                return;
            }
        }
    }

    bool live_entry(const ExpiryEntry &e) {
        Session *s = find(e.key);
        return s && s->expires_ns == e.expires;
    }

    void purge_expiry() { /* in place: no allocation */
        auto stale = [this](const ExpiryEntry &e) { return !live_entry(e); };
        fifo.erase(std::remove_if(fifo.begin(), fifo.end(), stale), fifo.end());
        heap.erase(std::remove_if(heap.begin(), heap.end(), stale), heap.end());
        std::make_heap(heap.begin(), heap.end(), ExpiryLater());
    }

    /* How many entries are due (for reserving before any change). */
    size_t due_count(int64_t now) const {
        size_t due = 0;
        for (const ExpiryEntry &e : fifo) {
            if (e.expires >= now) break;
            ++due;
        }
        for (const ExpiryEntry &e : heap) due += e.expires < now;
        return due;
    }

    /* The next due entry, popped; false when none is due. */
    bool pop_due(int64_t now, ExpiryEntry *e) {
        bool from_fifo = !fifo.empty() && fifo.front().expires < now;
        bool from_heap = !heap.empty() && heap.front().expires < now;
        if (from_fifo && from_heap) from_heap = heap.front().expires < fifo.front().expires;
        if (from_heap) {
            *e = heap.front();
            std::pop_heap(heap.begin(), heap.end(), ExpiryLater());
            heap.pop_back();
            return true;
        }
        if (from_fifo) {
            *e = fifo.front();
            fifo.pop_front();
            return true;
        }
        return false;
    }
};

/* The session table. Every public method takes the locks it needs, so each
 * is one atomic step, and returns a status code.
 *
 * Lock order (no cycle, so no deadlock): `vm_mu_` first, then shard locks
 * in increasing index. A session's fields are guarded by its shard's lock;
 * the VM map by `vm_mu_` *and* the shard locks of the sessions it names, so
 * a VM change holds both and a reader of either side holds one. Operations
 * on one session (the hot path) take one shard lock; whole-table ones
 * (cleanup, stats, list) take all of them. */
class Table {
  public:
    Config cfg; /* set once, before the table is shared */

    Table() { cfg = Config(); }
    Table(const Table &) = delete;
    Table &operator=(const Table &) = delete;

    size_t size() {
        AllLocks all(*this, false);
        return count();
    }

    int create(SidKey key, int64_t now, int64_t expires, SessionCopy *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        try {
            if (sh.sessions.find(key) != sh.sessions.end()) return RLM_DUPLICATE;
            Session s;
            s.created_ns = now;
            s.expires_ns = expires;
            s.token_budget = cfg.token_budget;
            s.time_budget_ms = cfg.time_budget_ms;
            s.max_depth = cfg.max_depth;
            bool in_fifo = sh.push_expiry(expires, key); /* may throw: nothing changed */
            Session *stored;
            try {
                stored = &sh.sessions.emplace(key, s).first->second;
            } catch (const std::bad_alloc &) {
                sh.unpush_expiry(in_fifo, expires, key);
                throw;
            }
            created_.fetch_add(1, std::memory_order_relaxed);
            copy_out(key, *stored, out); /* a plain copy: no extras yet */
            return RLM_OK;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
    }

    /* A copy of any existing session (read-only lookups). */
    int get(SidKey key, SessionCopy *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        return guarded_copy(key, *s, out);
    }

    int is_valid(SidKey key, int64_t now) { return status_of(key, now) == RLM_OK; }

    /* RLM_OK for a usable session, else why not. */
    int status_of(SidKey key, int64_t now) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        return sh.live(key, now, &s);
    }

    /* The VM id into a caller's buffer (the nogil C API). */
    int copy_vm(SidKey key, char *buf, size_t size, size_t *length) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        if (!s->extras || !s->extras->has_vm) return RLM_NO_VM;
        *length = s->extras->vm.size();
        if (*length > size) return RLM_BUFFER_TOO_SMALL;
        memcpy(buf, s->extras->vm.data(), *length);
        return RLM_OK;
    }

    int validate(SidKey key, int64_t now, SessionCopy *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        return guarded_copy(key, *s, out);
    }

    int update_state(SidKey key, int64_t now, int state) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st == RLM_OK) s->state = state;
        return st;
    }

    int extend(SidKey key, int64_t now, SessionCopy *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        if (s->extension_count >= cfg.max_extensions) return RLM_MAX_EXTENSIONS;
        if (s->expires_ns > RLM_I64_MAX - cfg.increment_ns) return RLM_TIME_OVERFLOW;
        st = guarded_copy(key, *s, out); /* copy first: NOMEM changes nothing */
        if (st != RLM_OK) return st;
        /* A new expiry needs a new index entry (the old one goes stale); an
         * increment of 0 keeps the expiry, and its entry stays the live one
         * (pushing an equal one would never go stale: unbounded growth). */
        if (cfg.increment_ns != 0) {
            try {
                sh.push_expiry(s->expires_ns + cfg.increment_ns, key);
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
        }
        s->expires_ns += cfg.increment_ns;
        s->extension_count += 1;
        out->s.expires_ns = s->expires_ns;
        out->s.extension_count = s->extension_count;
        return RLM_OK;
    }

    int destroy(SidKey key) {
        Shard &sh = shard_of(key);
        {
            RlmGuard g(sh.mu);
            auto it = sh.sessions.find(key);
            if (it == sh.sessions.end()) return RLM_NOT_FOUND;
            if (!holds_vm(it->second)) { /* the common case: one lock */
                remove(sh, it);
                destroyed_.fetch_add(1, std::memory_order_relaxed);
                return RLM_OK;
            }
        }
        /* It holds a VM: the VM map changes too, so take its lock first
         * (lock order) and look again. */
        RlmGuard gv(vm_mu_);
        RlmGuard g(sh.mu);
        auto it = sh.sessions.find(key);
        if (it == sh.sessions.end()) return RLM_NOT_FOUND;
        remove(sh, it);
        destroyed_.fetch_add(1, std::memory_order_relaxed);
        return RLM_OK;
    }

    /* Remove exactly the sessions with expires_at < now, returning their
     * ids (unsorted). The due entries are a prefix of each shard's FIFO
     * plus the top of its heap: the cost is that of the due sessions. */
    int cleanup(int64_t now, std::vector<SidKey> *out) {
        AllLocks all(*this, true);
        size_t due = 0;
        for (Shard &sh : shards_) due += sh.due_count(now);
        try {
            out->reserve(due); /* the only allocation: before any change */
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        for (Shard &sh : shards_) {
            ExpiryEntry e;
            while (sh.pop_due(now, &e)) {
                auto it = sh.sessions.find(e.key);
                /* Stale entries (destroyed, or extended since) are dropped. */
                if (it == sh.sessions.end() || it->second.expires_ns != e.expires) continue;
                out->push_back(e.key);
                remove(sh, it);
            }
        }
        expired_.fetch_add(out->size(), std::memory_order_relaxed);
        return RLM_OK;
    }

    /* ---- VM affinity: vm_to_session_ and Extras::vm are exact inverses */

    int assign_vm(SidKey key, int64_t now, const std::string &vm) {
        RlmGuard gv(vm_mu_);
        /* The VM's current holder, if another session: its shard too. */
        SidKey prev_key = key;
        auto slot = vm_to_session_.find(vm);
        if (slot != vm_to_session_.end()) prev_key = slot->second;
        PairLock shards(*this, key, prev_key);
        Shard &sh = shard_of(key);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        try {
            if (s->extras && s->extras->has_vm && s->extras->vm == vm) {
                s->state = RLM_READY;
                return RLM_OK;
            }
            /* Everything that can throw comes first, so a failure changes
             * nothing; the steps after it cannot throw. */
            Extras *ex = extras_of(s);
            std::string copy(vm);
            if (slot == vm_to_session_.end()) {
                slot = vm_to_session_.emplace(vm, key).first;
            } else {
                /* The VM moves: its old session no longer holds it. */
                Session *prev = shard_of(prev_key).find(prev_key);
                if (prev && prev->extras) {
                    prev->extras->has_vm = false;
                    prev->extras->vm.clear();
                }
                slot->second = key;
            }
            if (ex->has_vm) { /* a session holds one VM: drop its old one */
                auto old = vm_to_session_.find(ex->vm);
                if (old != vm_to_session_.end() && old->second == key)
                    vm_to_session_.erase(old);
            }
            ex->vm.swap(copy);
            ex->has_vm = true;
            s->state = RLM_READY;
            return RLM_OK;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
    }

    /* Any existing session, whatever its state. */
    int release_vm(SidKey key, std::string *vm_out, bool *had) {
        RlmGuard gv(vm_mu_);
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        *had = false;
        if (holds_vm(*s)) {
            try {
                *vm_out = s->extras->vm;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            *had = true;
            unmap_vm(key, s);
        }
        return RLM_OK;
    }

    /* The session's VM, if it exists and holds one (copied to vm_out). */
    int get_vm(SidKey key, std::string *vm_out, bool *had) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        *had = false;
        if (!s || !holds_vm(*s)) return RLM_OK;
        try {
            *vm_out = s->extras->vm;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        *had = true;
        return RLM_OK;
    }

    bool session_for_vm(const std::string &vm, SidKey *out) {
        RlmGuard gv(vm_mu_);
        auto it = vm_to_session_.find(vm);
        if (it == vm_to_session_.end()) return false;
        *out = it->second;
        return true;
    }

    /* ---- context variables */

    int set_context(SidKey key, int64_t now, const std::string &name,
                    const std::string &value) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        try {
            extras_of(s)->context[name] = value;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        return RLM_OK;
    }

    int get_context(SidKey key, const std::string &name, std::string *out, bool *had) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        *had = false;
        if (!s->extras) return RLM_OK;
        auto it = s->extras->context.find(name);
        if (it == s->extras->context.end()) return RLM_OK;
        try {
            *out = it->second;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        *had = true;
        return RLM_OK;
    }

    int all_context(SidKey key, SessionCopy *out) { return get(key, out); }

    int delete_context(SidKey key, int64_t now, const std::string &name,
                       std::string *out, bool *had) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        *had = false;
        if (!s->extras) return RLM_OK;
        auto it = s->extras->context.find(name);
        if (it == s->extras->context.end()) return RLM_OK;
        out->swap(it->second); /* no allocation */
        s->extras->context.erase(it);
        *had = true;
        return RLM_OK;
    }

    /* ---- budgets and depth */

    int update_budget(SidKey key, int64_t now, uint64_t token_budget,
                      uint64_t tokens_used, uint64_t time_budget_ms,
                      uint64_t time_used_ms, uint64_t max_depth, uint64_t depth) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        s->token_budget = token_budget;
        s->tokens_used = tokens_used;
        s->time_budget_ms = time_budget_ms;
        s->time_used_ms = time_used_ms;
        s->max_depth = max_depth;
        s->depth = depth;
        return RLM_OK;
    }

    /* On RLM_DEPTH_EXCEEDED, *depth is the current depth (the refused one
     * is depth + 1, computed by the caller without wrapping). */
    int increment(SidKey key, int64_t now, uint64_t *depth, uint64_t *max_depth) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        *max_depth = s->max_depth;
        if (s->depth >= s->max_depth) {
            *depth = s->depth;
            return RLM_DEPTH_EXCEEDED;
        }
        *depth = ++s->depth;
        return RLM_OK;
    }

    int decrement(SidKey key, int64_t now, uint64_t *depth) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        if (s->depth > 0) s->depth -= 1;
        *depth = s->depth;
        return RLM_OK;
    }

    /* The exit of recursion(): -1 whatever the state, never an error. */
    void leave_recursion(SidKey key) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (s && s->depth > 0) s->depth -= 1;
    }

    int charge_tokens(SidKey key, int64_t now, uint64_t amount, uint64_t *total,
                      uint64_t *budget) {
        return charge(key, now, amount, &Session::tokens_used, &Session::token_budget,
                      RLM_TOKENS_OVER, total, budget);
    }

    int charge_time(SidKey key, int64_t now, uint64_t amount, uint64_t *total,
                    uint64_t *budget) {
        return charge(key, now, amount, &Session::time_used_ms, &Session::time_budget_ms,
                      RLM_TIME_OVER, total, budget);
    }

    /* A copy of the budget fields of a live session. */
    int budget(SidKey key, int64_t now, Session *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        *out = *s;
        out->extras = NULL;
        return RLM_OK;
    }

    /* ---- snapshots */

    int snapshot_created(SidKey key, int64_t now, const std::string &snap,
                         bool set_current) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        if (cfg.max_snapshots && s->snapshot_count >= cfg.max_snapshots)
            return RLM_MAX_SNAPSHOTS;
        if (set_current) {
            try {
                Extras *ex = extras_of(s);
                ex->snapshot = snap;
                ex->has_snapshot = true;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
        }
        s->snapshot_count += 1;
        return RLM_OK;
    }

    int snapshot_restored(SidKey key, int64_t now, const std::string &snap) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        try {
            Extras *ex = extras_of(s);
            ex->snapshot = snap;
            ex->has_snapshot = true;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        return RLM_OK;
    }

    int current_snapshot(SidKey key, std::string *out, bool *had) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        *had = false;
        if (s->extras && s->extras->has_snapshot) {
            try {
                *out = s->extras->snapshot;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            *had = true;
        }
        return RLM_OK;
    }

    int clear_snapshots(SidKey key, int64_t now) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        s->snapshot_count = 0;
        if (s->extras) {
            s->extras->has_snapshot = false;
            s->extras->snapshot.clear();
        }
        return RLM_OK;
    }

    /* ---- whole table: every lock, so each is one consistent snapshot */

    Stats stats() {
        AllLocks all(*this, true);
        return stats_locked();
    }

    /* Copies of every session, unsorted (rlm_order_by_id sorts them after
     * the locks are released), and the counters of the same instant. */
    int list(std::vector<SessionCopy> *out, Stats *stats) {
        AllLocks all(*this, true);
        try {
            out->reserve(count());
            for (Shard &sh : shards_)
                for (auto &kv : sh.sessions) {
                    out->emplace_back();
                    copy_out(kv.first, kv.second, &out->back());
                }
        } catch (const std::bad_alloc &) {
            out->clear();
            return RLM_NOMEM;
        }
        if (stats) *stats = stats_locked();
        return RLM_OK;
    }

    bool contains(SidKey key) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        return sh.find(key) != NULL;
    }

    /* validate_many: out[i] = 1 if keys[i] is usable now (skip[i]: malformed),
     * all at one instant. */
    void validity(const std::vector<SidKey> &keys, const std::vector<char> &skip,
                  int64_t now, char *out) {
        AllLocks all(*this, false);
        for (size_t i = 0; i < keys.size(); ++i) {
            Session *s;
            out[i] = !skip[i] && shard_of(keys[i]).live(keys[i], now, &s) == RLM_OK;
        }
    }

    /* budget_table: one row per session, unsorted (the caller sorts after
     * unlocking). */
    int budget_rows(std::vector<BudgetRow> *out) {
        AllLocks all(*this, false);
        try {
            out->resize(count());
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        size_t i = 0;
        for (Shard &sh : shards_)
            for (auto &kv : sh.sessions) {
                BudgetRow &r = (*out)[i++];
                const Session &s = kv.second;
                rlm_key_bytes(kv.first, r.id);
                r.state = (uint8_t)s.state;
                r.expires_ns = s.expires_ns;
                r.tokens_used = s.tokens_used;
                r.token_budget = s.token_budget;
                r.time_used_ms = s.time_used_ms;
                r.time_budget_ms = s.time_budget_ms;
                r.depth = s.depth;
                r.max_depth = s.max_depth;
                r.extension_count = s.extension_count;
                r.snapshot_count = s.snapshot_count;
                r.has_vm = holds_vm(s);
            }
        return RLM_OK;
    }

    /* Fill an unused table from checked rows (distinct ids and VMs): all
     * or nothing. */
    int restore(const std::vector<SessionCopy> &rows, uint64_t created,
                uint64_t destroyed, uint64_t expired) {
        AllLocks all(*this, true);
        if (count() != 0 || created_.load() != 0) return RLM_NOT_EMPTY;
        try {
            for (const SessionCopy &row : rows) {
                Shard &sh = shard_of(row.key);
                Session &s = sh.sessions.emplace(row.key, row.s).first->second;
                s.extras = NULL;
                sh.heap.push_back({row.s.expires_ns, row.key});
                if (row.has_vm || row.has_snapshot || !row.context.empty()) {
                    Extras *ex = extras_of(&s);
                    ex->context.insert(row.context.begin(), row.context.end());
                    if (row.has_snapshot) {
                        ex->snapshot = row.snapshot;
                        ex->has_snapshot = true;
                    }
                    if (row.has_vm) {
                        vm_to_session_.emplace(row.vm, row.key);
                        ex->vm = row.vm;
                        ex->has_vm = true;
                    }
                }
            }
        } catch (const std::bad_alloc &) {
            for (Shard &sh : shards_) {
                for (auto &kv : sh.sessions) delete kv.second.extras;
                sh.sessions.clear();
                sh.heap.clear();
            }
            vm_to_session_.clear();
            return RLM_NOMEM;
        }
        for (Shard &sh : shards_) std::make_heap(sh.heap.begin(), sh.heap.end(), ExpiryLater());
        created_.store(created);
        destroyed_.store(destroyed);
        expired_.store(expired);
        return RLM_OK;
    }

  private:
    enum { NSHARDS = 16 }; /* a power of two */

    Shard shards_[NSHARDS];
    alignas(64) RlmLock vm_mu_;
    std::unordered_map<std::string, SidKey> vm_to_session_;
    /* Counters: written under a shard lock, atomic since shards differ. */
    std::atomic<uint64_t> created_{0};
    std::atomic<uint64_t> destroyed_{0};
    std::atomic<uint64_t> expired_{0};

    Shard &shard_of(SidKey key) {
        /* The top bits of the mixed hash: the maps use it modulo a prime. */
        return shards_[SidHash()(key) >> (sizeof(size_t) * 8 - 4) & (NSHARDS - 1)];
    }

    /* vm_mu_ (if asked) and every shard lock, in the lock order. */
    struct AllLocks {
        Table &t;
        bool vm;
        AllLocks(Table &table, bool with_vm) : t(table), vm(with_vm) {
            if (vm) t.vm_mu_.lock();
            for (Shard &sh : t.shards_) sh.mu.lock();
        }
        ~AllLocks() {
            for (int i = NSHARDS - 1; i >= 0; --i) t.shards_[i].mu.unlock();
            if (vm) t.vm_mu_.unlock();
        }
    };

    /* The shard locks of two sessions (once if they share a shard), in
     * index order. */
    struct PairLock {
        Shard *a, *b;
        PairLock(Table &t, SidKey x, SidKey y) {
            a = &t.shard_of(x);
            b = &t.shard_of(y);
            if (b < a) std::swap(a, b);
            a->mu.lock();
            if (b != a) b->mu.lock();
        }
        ~PairLock() {
            if (b != a) b->mu.unlock();
            a->mu.unlock();
        }
    };

    size_t count() const {
        size_t n = 0;
        for (const Shard &sh : shards_) n += sh.sessions.size();
        return n;
    }

    Stats stats_locked() const {
        Stats st;
        st.created = created_.load(std::memory_order_relaxed);
        st.active = count();
        st.with_vm = vm_to_session_.size();
        st.destroyed = destroyed_.load(std::memory_order_relaxed);
        st.expired = expired_.load(std::memory_order_relaxed);
        return st;
    }

    static bool holds_vm(const Session &s) { return s.extras && s.extras->has_vm; }

    /* Add `amount` to the session's `used` counter; a total past 2**64-1
     * is refused whole, one past `budget` is kept (it was spent) and
     * reported as `over`. */
    int charge(SidKey key, int64_t now, uint64_t amount, uint64_t Session::*used,
               uint64_t Session::*limit, int over, uint64_t *total, uint64_t *budget) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s);
        if (st != RLM_OK) return st;
        if (amount > RLM_U64_MAX - s->*used) return RLM_U64_OVERFLOW;
        s->*used += amount;
        *total = s->*used;
        *budget = s->*limit;
        return *total > *budget ? over : RLM_OK;
    }

    static Extras *extras_of(Session *s) { /* may throw bad_alloc */
        if (!s->extras) s->extras = new Extras();
        return s->extras;
    }

    /* Drop the session's VM from both maps, if the map entry is its own
     * (caller holds vm_mu_ and the session's shard lock). */
    void unmap_vm(SidKey key, Session *s) {
        if (!holds_vm(*s)) return;
        auto it = vm_to_session_.find(s->extras->vm);
        if (it != vm_to_session_.end() && it->second == key) vm_to_session_.erase(it);
        s->extras->has_vm = false;
        s->extras->vm.clear();
    }

    /* Caller holds the shard's lock, and vm_mu_ if the session holds a VM. */
    void remove(Shard &sh, Shard::Map::iterator it) {
        unmap_vm(it->first, &it->second);
        delete it->second.extras;
        sh.sessions.erase(it);
    }

    static void copy_out(SidKey key, const Session &s, SessionCopy *out) {
        out->key = key;
        out->s = s;
        out->s.extras = NULL;
        out->has_vm = out->has_snapshot = false;
        if (s.extras) {
            out->has_vm = s.extras->has_vm;
            out->has_snapshot = s.extras->has_snapshot;
            if (out->has_vm) out->vm = s.extras->vm;
            if (out->has_snapshot) out->snapshot = s.extras->snapshot;
            out->context.assign(s.extras->context.begin(), s.extras->context.end());
        }
    }

    static int guarded_copy(SidKey key, const Session &s, SessionCopy *out) {
        try {
            copy_out(key, s, out);
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        return RLM_OK;
    }
};

#endif /* RLM_FAST_CORE_C_H */
