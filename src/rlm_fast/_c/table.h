/* rlm_fast compiled core: the session table. A `Table` is striped into
 * shards, each with its own lock, plus a lock for the VM map; every method
 * takes the locks it needs (see the lock order above class Table), so each
 * single-session method is one atomic step, callable with or without the
 * GIL; whole-table methods work in pieces (SPEC 15, rlm_piece). Methods
 * return a status code and never throw (allocation failure becomes
 * RLM_NOMEM with the table unchanged, except a cleanup cut short: what it
 * removed before stays removed). No Python object is touched here. */
#ifndef RLM_FAST_TABLE_H
#define RLM_FAST_TABLE_H

#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "debug.h"
#include "ids.h"
#include "lock.h"
#include "session.h"
#include "sessionmap.h"
#include "status.h"

namespace rlm_fast {

/* The shard of a session is the low RLM_SHARD_BITS bits of its id's `lo`:
 * CSPRNG bits for a root, so roots spread evenly; a child's id copies them
 * from its parent (rlm_new_key_with), so a whole call tree lives in its
 * root's shard and a call on a child takes one lock however deep the tree.
 * A child id keeps 76 random bits. */
enum { RLM_SHARD_BITS = 4, RLM_NSHARDS = 1 << RLM_SHARD_BITS };
static const uint64_t RLM_SHARD_MASK = RLM_NSHARDS - 1;

/* Whole-table calls (cleanup, list, budget rows, stats, size) work in
 * pieces (SPEC 15, docs/design.md "No stalls"): one lock hold covers at most
 * this many sessions (a key scan: this many rows of the slab), then the
 * lock is released and taken again. Settable for tests
 * (_session_c._set_piece); read once per call. The one exception: a due
 * session is removed with its whole subtree under one hold, so a tree larger
 * than a piece is removed in one hold. */
inline std::atomic<size_t> rlm_piece{2048};

static inline size_t rlm_piece_size() {
    size_t n = rlm_piece.load(std::memory_order_relaxed);
    return n ? n : 1;
}

static inline void rlm_set_piece_size(size_t n) {
    rlm_piece.store(n, std::memory_order_relaxed);
}

/* How many due entries ahead cleanup fetches an index slot. */
enum { RLM_PREFETCH_AHEAD = 8 };

/* Room for `more` elements at the end of *v, growing geometrically (call
 * outside a lock, so a piece appends without reallocating). */
template <class T>
static inline void rlm_room(std::vector<T> *v, size_t more) {
    size_t want = v->size() + more;
    if (want > v->capacity()) v->reserve(std::max(want, 2 * v->capacity()));
}

/* An expiry index entry: an expiry and the row (SessionMap) of the
 * session it was made for; 12 bytes. It is live while that row holds a
 * session with that very expiry. If the row was freed and reused by a
 * session that happens to expire at the same nanosecond, the entry names
 * that session instead, which is as right: it is due exactly when that
 * session is. Two entries alike are one too many (purge_expiry drops the
 * copy), so a clock that stands still cannot pile them up. */
#pragma pack(push, 4)
struct ExpiryEntry {
    int64_t expires;
    uint32_t row;
};
#pragma pack(pop)
static_assert(sizeof(ExpiryEntry) == 12, "an expiry entry is 12 bytes");
struct ExpiryOrder { /* by expiry, then row: alike entries side by side */
    bool operator()(const ExpiryEntry &a, const ExpiryEntry &b) const {
        return a.expires < b.expires || (a.expires == b.expires && a.row < b.row);
    }
};
static inline bool operator==(const ExpiryEntry &a, const ExpiryEntry &b) {
    return a.expires == b.expires && a.row == b.row;
}
struct ExpiryLater { /* std heaps are max-heaps: invert for the earliest */
    bool operator()(const ExpiryEntry &a, const ExpiryEntry &b) const {
        return a.expires > b.expires;
    }
};

/* One stripe of the table: its sessions and their expiry index, under its
 * own lock, on its own cache lines. Its methods assume `mu` is held. */
struct alignas(64) Shard {
    RlmLock mu;
    SessionMap sessions; /* rows in a slab: a Session * stays valid while it lives */
    /* The expiry index: one (expires_at, row) entry per create and
     * extension. Entries arriving in expiry order (the usual case: each
     * create expires after the previous one) go to the FIFO, so the due
     * ones are its prefix; the others to a min-heap. An entry whose session
     * is gone or has a later expiry is stale and skipped; stale entries
     * (and copies of one entry) are purged when they outnumber live
     * sessions. */
    std::deque<ExpiryEntry> fifo;
    std::vector<ExpiryEntry> heap;
    /* What happened in this shard, under `mu` like the rest: at every
     * unlock created == destroyed + expired + sessions.size() (a restore
     * counts its rows here and the file's history in Table's base). */
    uint64_t created = 0;
    uint64_t destroyed = 0;
    uint64_t expired = 0;

    ~Shard() {
        sessions.for_each([](Row &r) { delete r.s.extras; });
    }

    Session *find(SidKey key) { return sessions.find(key); }

    /* A child's parent (in this shard: trees never span shards); NULL for
     * a root. */
    Session *parent_of(const Session &s) {
        return s.start_depth ? s.extras->up : NULL;
    }

    /* TERMINATED, then expiry (by clock or state), of one session. */
    static int own_status(const Session &s, int64_t now) {
        if (s.state == RLM_STATE_TERMINATED) return RLM_TERMINATED;
        if (s.state == RLM_STATE_EXPIRED || now > s.expires_ns) return RLM_EXPIRED;
        return RLM_OK;
    }

    /* Existence, then the write order of checks along the path from the
     * root down (validity flows down): the failure nearest the root wins,
     * and *who names the session that failed. A root costs one lookup. */
    int live(SidKey key, int64_t now, Session **out, SidKey *who) {
        Session *s = find(key);
        if (!s) return RLM_NOT_FOUND;
        int st = own_status(*s, now);
        SidKey culprit = key;
        for (Session *n = s; n->start_depth;) {
            const Extras *ex = n->extras;
            n = ex->up;
            int mine = own_status(*n, now);
            if (mine != RLM_OK) {
                st = mine;
                culprit = ex->parent;
            }
        }
        if (st != RLM_OK) {
            if (who) *who = culprit;
            return st;
        }
        *out = s;
        return RLM_OK;
    }

    /* The root of a session's tree. */
    SidKey root_of(SidKey key, const Session &s) {
        const Session *n = &s;
        while (n->start_depth) {
            key = n->extras->parent;
            n = n->extras->up;
        }
        return key;
    }

    /* Index one expiry (may throw bad_alloc, then nothing changed); true
     * if it went to the FIFO. */
    bool push_expiry(int64_t expires, uint32_t row) {
        if (fifo.size() + heap.size() >= 2 * sessions.size() + 64) purge_expiry();
        ExpiryEntry e = {expires, row};
        if (fifo.empty() || expires >= fifo.back().expires) {
            fifo.push_back(e);
            return true;
        }
        heap.reserve(heap.size() + 1);
        heap.push_back(e);
        std::push_heap(heap.begin(), heap.end(), ExpiryLater());
        return false;
    }

    /* The session an entry names, if the entry is live; else NULL. */
    Row *entry_row(const ExpiryEntry &e) const {
        if (e.row >= sessions.rows_end() || !sessions.live(e.row)) return NULL;
        Row *r = sessions.row(e.row);
        return r->s.expires_ns == e.expires ? r : NULL;
    }

    bool live_entry(const ExpiryEntry &e) const { return entry_row(e) != NULL; }

    void purge_expiry() { /* in place: no allocation */
        auto stale = [this](const ExpiryEntry &e) { return !live_entry(e); };
        fifo.erase(std::remove_if(fifo.begin(), fifo.end(), stale), fifo.end());
        /* Copies: the FIFO is in expiry order, so alike entries are in one
         * run of equal expiries; sorting each run by row (which keeps the
         * FIFO in expiry order) puts them side by side. */
        for (size_t i = 0, j; i < fifo.size(); i = j) {
            for (j = i + 1; j < fifo.size() && fifo[j].expires == fifo[i].expires; ++j) {
            }
            if (j - i > 1) std::sort(fifo.begin() + i, fifo.begin() + j, ExpiryOrder());
        }
        fifo.erase(std::unique(fifo.begin(), fifo.end()), fifo.end());
        heap.erase(std::remove_if(heap.begin(), heap.end(), stale), heap.end());
        std::sort(heap.begin(), heap.end(), ExpiryOrder());
        heap.erase(std::unique(heap.begin(), heap.end()), heap.end());
        std::make_heap(heap.begin(), heap.end(), ExpiryLater());
    }

    /* The next due entry (the earlier of the FIFO's front and the heap's
     * top), left in place; false when none is due. drop_due(from_heap)
     * takes it out. */
    bool peek_due(int64_t now, ExpiryEntry *e, bool *from_heap) const {
        bool f = !fifo.empty() && fifo.front().expires < now;
        bool h = !heap.empty() && heap.front().expires < now;
        if (f && h) h = heap.front().expires < fifo.front().expires;
        if (!f && !h) return false;
        *from_heap = h;
        *e = h ? heap.front() : fifo.front();
        return true;
    }

    void drop_due(bool from_heap) {
        if (from_heap) {
            std::pop_heap(heap.begin(), heap.end(), ExpiryLater());
            heap.pop_back();
        } else {
            fifo.pop_front();
        }
    }
};

/* The session table. Every public method takes the locks it needs and
 * returns a status code; each single-session one is one atomic step.
 *
 * Lock order (no cycle, so no deadlock): `vm_mu_` first, then shard locks
 * in increasing index. A session's fields, its tree links (Extras::parent,
 * Extras::children) and its shard's counters are guarded by its shard's
 * lock; a tree never spans shards (see RLM_SHARD_BITS). The VM map is
 * guarded by `vm_mu_` *and* the shard locks of the sessions it names, so a
 * VM change holds both and a reader of either side holds one. Operations on
 * one session or one tree path (the hot path) take one shard lock.
 * Whole-table ones (cleanup, stats, size, list, budget_rows) work in pieces
 * (SPEC 15): one shard lock at a time (cleanup: vm_mu_ too, once a due tree
 * of that shard holds a VM), held for at most rlm_piece_size() sessions,
 * released between pieces; so none is one instant of the table, but each
 * session is read, or checked and removed with its subtree, whole under one
 * hold. validity (validate_many, one instant for the ids it is given) and
 * restore (an empty table) still take every lock.
 *
 * Built with RLM_FAST_DEBUG, every change is followed, locks still held, by
 * a check of the invariants it could break (check_shard, check_vm,
 * check_all); a broken one aborts with a message. */
class Table {
  public:
    Config cfg; /* set once, before the table is shared */

    Table() { cfg = Config(); }
    ~Table() { delete placed_.load(); }
    Table(const Table &) = delete;
    Table &operator=(const Table &) = delete;

    /* Each shard's size under its own lock in turn (O(1) per hold): not
     * one instant of the whole table, never a wait behind a walk. */
    size_t size() {
        size_t n = 0;
        for (Shard &sh : shards_) {
            RlmGuard g(sh.mu);
            n += sh.sessions.size();
        }
        return n;
    }

    /* The shard index of a session: its id's low bits, except for children
     * restored from a file whose ids do not carry their root's bits. A
     * child's id is drawn with the index of its parent. */
    unsigned shard_index(SidKey key) const {
        const Placement *p = placed_.load(std::memory_order_acquire);
        if (p) {
            auto it = p->find(key);
            if (it != p->end()) return it->second;
        }
        return (unsigned)(key.lo & RLM_SHARD_MASK);
    }

    int create(SidKey key, int64_t now, int64_t expires, SessionCopy *out) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        try {
            if (sh.sessions.find(key)) return RLM_DUPLICATE;
            Session s;
            s.created_ns = now;
            s.expires_ns = expires;
            s.token_budget = cfg.token_budget;
            s.time_budget_ms = cfg.time_budget_ms;
            s.max_depth = (uint32_t)cfg.max_depth; /* a u32 (config checks) */
            uint32_t r = sh.sessions.insert(key, s); /* may throw: nothing changed */
            try {
                sh.push_expiry(expires, r);
            } catch (const std::bad_alloc &) {
                sh.sessions.erase_row(r);
                throw;
            }
            Session *stored = &sh.sessions.row(r)->s;
            sh.created += 1;
            copy_out(sh, key, *stored, out); /* a plain copy: no extras yet */
            RLM_DEBUG_ONLY(check_shard(sh));
            return RLM_OK;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
    }

    /* A child of `parent` (docs/trees.md) with id `key`, drawn by the
     * caller with the parent's shard index. On RLM_DEPTH_EXCEEDED *value is
     * the parent's depth and *limit its maximum; on RLM_*_ABOVE_PARENT
     * *value is what the parent has left. */
    int create_child(SidKey key, SidKey parent, int64_t now, bool has_tokens,
                     uint64_t tokens, bool has_time, uint64_t time_ms, SessionCopy *out,
                     SidKey *who, uint64_t *value, uint64_t *limit) {
        RLM_CHECK(shard_index(key) == shard_index(parent), "a child is drawn in its parent's shard");
        return on_live(parent, now, who, [&](Shard &sh, Session &p) -> int {
            if (p.depth >= p.max_depth) {
                *value = p.depth;
                *limit = p.max_depth;
                return RLM_DEPTH_EXCEEDED;
            }
            uint64_t tokens_left = p.token_budget > p.tokens_used ? p.token_budget - p.tokens_used : 0;
            uint64_t time_left = p.time_budget_ms > p.time_used_ms ? p.time_budget_ms - p.time_used_ms : 0;
            if (has_tokens && tokens > tokens_left) {
                *value = tokens_left;
                return RLM_TOKENS_ABOVE_PARENT;
            }
            if (has_time && time_ms > time_left) {
                *value = time_left;
                return RLM_TIME_ABOVE_PARENT;
            }
            if (sh.sessions.find(key)) return RLM_DUPLICATE;
            Session s;
            s.created_ns = now;
            s.expires_ns = now > RLM_I64_MAX - cfg.duration_ns
                               ? p.expires_ns
                               : std::min(now + cfg.duration_ns, p.expires_ns);
            s.depth = p.depth + 1;
            s.start_depth = (uint32_t)s.depth; /* <= max_depth, a u32 */
            s.max_depth = p.max_depth;
            s.token_budget = has_tokens ? tokens : tokens_left;
            s.time_budget_ms = has_time ? time_ms : time_left;
            try {
                /* Everything that can throw first: a failure changes nothing
                 * (an empty Extras left on the parent is a valid state). */
                std::unique_ptr<Extras> ex(new Extras());
                ex->parent = parent;
                ex->up = &p;
                Extras *pex = extras_of(&p);
                pex->children.reserve(pex->children.size() + 1);
                uint32_t r = sh.sessions.insert(key, s);
                try {
                    sh.push_expiry(s.expires_ns, r);
                } catch (const std::bad_alloc &) {
                    sh.sessions.erase_row(r);
                    throw;
                }
                Session *stored = &sh.sessions.row(r)->s;
                stored->extras = ex.release();
                pex->children.push_back(key); /* reserved: no throw */
                sh.created += 1;
                return guarded_copy(sh, key, *stored, out);
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
        });
    }

    /* A copy of any existing session (read-only lookups). */
    int get(SidKey key, SessionCopy *out) {
        return on_found(key, [&](Shard &sh, Session &s) { return guarded_copy(sh, key, s, out); });
    }

    /* The direct children of any existing session, unordered. */
    int children(SidKey key, std::vector<SidKey> *out) {
        return on_found(key, [&](Shard &, Session &s) -> int {
            if (!s.extras) return RLM_OK;
            try {
                *out = s.extras->children;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            return RLM_OK;
        });
    }

    int is_valid(SidKey key, int64_t now) { return status_of(key, now, NULL) == RLM_OK; }

    /* RLM_OK for a usable session (its whole path), else why not. */
    int status_of(SidKey key, int64_t now, SidKey *who) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        return sh.live(key, now, &s, who);
    }

    /* The VM id into a caller's buffer (the nogil C API). */
    int copy_vm(SidKey key, char *buf, size_t size, size_t *length) {
        return on_found(key, [&](Shard &, Session &s) -> int {
            if (!holds_vm(s)) return RLM_NO_VM;
            *length = s.extras->vm.size();
            if (*length > size) return RLM_BUFFER_TOO_SMALL;
            memcpy(buf, s.extras->vm.data(), *length);
            return RLM_OK;
        });
    }

    int validate(SidKey key, int64_t now, SessionCopy *out, SidKey *who) {
        return on_live(key, now, who,
                       [&](Shard &sh, Session &s) { return guarded_copy(sh, key, s, out); });
    }

    int update_state(SidKey key, int64_t now, int state, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) {
            s.state = state;
            return (int)RLM_OK;
        });
    }

    int extend(SidKey key, int64_t now, SessionCopy *out, SidKey *who) {
        return on_live(key, now, who, [&](Shard &sh, Session &s) -> int {
            if (s.extension_count >= cfg.max_extensions) return RLM_MAX_EXTENSIONS;
            if (s.expires_ns > RLM_I64_MAX - cfg.increment_ns) return RLM_TIME_OVERFLOW;
            int st = guarded_copy(sh, key, s, out); /* copy first: NOMEM changes nothing */
            if (st != RLM_OK) return st;
            /* A new expiry needs a new index entry (the old one goes stale);
             * an increment of 0 keeps the expiry, and its entry stays the
             * live one (pushing an equal one would never go stale). */
            if (cfg.increment_ns != 0) {
                try {
                    sh.push_expiry(s.expires_ns + cfg.increment_ns, sh.sessions.find_row(key));
                } catch (const std::bad_alloc &) {
                    return RLM_NOMEM;
                }
            }
            s.expires_ns += cfg.increment_ns;
            s.extension_count += 1;
            out->s.expires_ns = s.expires_ns;
            out->s.extension_count = s.extension_count;
            return RLM_OK;
        });
    }

    /* Remove the session and its whole subtree (any state). Their last
     * states are moved into *removed (replaced): the session first, then its
     * descendants in id order; their strings are taken out of the table,
     * not copied. */
    int destroy(SidKey key, std::vector<SessionCopy> *removed) {
        removed->clear();
        Shard &sh = shard_of(key);
        std::vector<SidKey> doomed;
        bool vm = false;
        {
            RlmGuard g(sh.mu);
            Session *s = sh.find(key);
            if (!s) return RLM_NOT_FOUND;
            const Extras *ex = s->extras;
            if (!ex || (ex->children.empty() && !ex->has_vm)) {
                /* The common case, a session alone with no VM: one lock,
                 * no list of the subtree. */
                try {
                    removed->resize(1);
                    if (ex) removed->back().context.reserve(ex->context.size());
                } catch (const std::bad_alloc &) {
                    removed->clear();
                    return RLM_NOMEM;
                }
                SidKey root = sh.root_of(key, *s);
                detach(sh, key, *s);
                take_out(sh, key, root, &removed->back());
                sh.destroyed += 1;
                RLM_DEBUG_ONLY(check_shard(sh));
                return RLM_OK;
            }
            int st = subtree(sh, key, &doomed, &vm);
            if (st != RLM_OK) return st;
            if (!vm) { /* the common case: one lock */
                st = take_tree(sh, doomed, removed);
                if (st != RLM_OK) return st;
                sh.destroyed += doomed.size();
                RLM_DEBUG_ONLY(check_shard(sh));
                return RLM_OK;
            }
        }
        /* A VM is held in the subtree: the VM map changes too, so take its
         * lock first (lock order) and look again. */
        RlmGuard gv(vm_mu_);
        RlmGuard g(sh.mu);
        int st = subtree(sh, key, &doomed, &vm);
        if (st != RLM_OK) return st;
        st = take_tree(sh, doomed, removed);
        if (st != RLM_OK) return st;
        sh.destroyed += doomed.size();
        RLM_DEBUG_ONLY(check_shard(sh));
        RLM_DEBUG_ONLY(check_vm(&sh, &sh));
        return RLM_OK;
    }

    /* Remove exactly the sessions with expires_at < now, each with its
     * subtree. With `removed`, every removed session's last state is moved
     * into it (appended, unordered: the caller sorts by id after the locks
     * are released; strings taken out of the table, not copied); with
     * `removed` NULL only the removed ids are appended to *keys (what
     * cleanup_expired_sessions returns when nobody is told of removals).
     * The due entries are a prefix of each shard's FIFO plus the top of
     * its heap: the cost is that of the due sessions and their subtrees.
     *
     * In pieces (SPEC 15): shard by shard, one hold of the shard's lock
     * pops at most rlm_piece_size() index entries and removes their
     * sessions (a due session goes with its whole subtree, which lives in
     * the same shard, in the same hold), then lets go. A piece that meets a
     * tree holding a VM ends there; the shard's next pieces take vm_mu_
     * first (the lock order). Each shard's counters balance at every
     * unlock. On RLM_NOMEM what was removed before is in *removed / *keys. */
    int cleanup(int64_t now, std::vector<SessionCopy> *removed, std::vector<SidKey> *keys) {
        const size_t piece = rlm_piece_size();
        std::vector<SessionCopy> buf;
        std::vector<SidKey> kbuf, doomed;
        try {
            buf.reserve(removed ? 2 * piece : 0);
            kbuf.reserve(removed ? 0 : 2 * piece);
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        for (Shard &sh : shards_) {
            bool with_vm = false, more = true;
            while (more) {
                int st;
                {
                    MaybeLock gv(vm_mu_, with_vm);
                    RlmGuard g(sh.mu);
                    bool need_vm = false;
                    st = cleanup_piece(sh, now, with_vm, piece, &buf, removed ? NULL : &kbuf,
                                       &doomed, &more, &need_vm);
                    with_vm = with_vm || need_vm;
                    RLM_DEBUG_ONLY(check_shard(sh));
                }
                rlm_let_waiters_in(sh.mu);
                if (with_vm) rlm_let_waiters_in(vm_mu_);
                /* Outside the locks: the only allocation here. */
                if (removed) {
                    try {
                        rlm_room(removed, buf.size());
                    } catch (const std::bad_alloc &) {
                        st = RLM_NOMEM;
                    }
                    size_t keep = std::min(buf.size(), removed->capacity() - removed->size());
                    for (size_t i = 0; i < keep; ++i) removed->push_back(std::move(buf[i]));
                } else {
                    try {
                        rlm_room(keys, kbuf.size() + buf.size());
                    } catch (const std::bad_alloc &) {
                        st = RLM_NOMEM;
                    }
                    size_t room = keys->capacity() - keys->size();
                    for (size_t i = 0; i < kbuf.size() && room; ++i, --room) keys->push_back(kbuf[i]);
                    for (size_t i = 0; i < buf.size() && room; ++i, --room) keys->push_back(buf[i].key);
                    kbuf.clear();
                }
                buf.clear();
                if (st != RLM_OK) return st;
            }
        }
        return RLM_OK;
    }

    /* ---- VM affinity: vm_to_session_ and Extras::vm are exact inverses */

    /* *moved: the VM was taken from another session, *moved_from. */
    int assign_vm(SidKey key, int64_t now, const std::string &vm, SidKey *who,
                  SidKey *moved_from, bool *moved) {
        *moved = false;
        RlmGuard gv(vm_mu_);
        /* The VM's current holder, if another session: its shard too. */
        SidKey prev_key = key;
        auto slot = vm_to_session_.find(vm);
        if (slot != vm_to_session_.end()) prev_key = slot->second;
        PairLock shards(*this, key, prev_key);
        Shard &sh = shard_of(key);
        Session *s;
        int st = sh.live(key, now, &s, who);
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
                *moved_from = prev_key;
                *moved = true;
            }
            if (ex->has_vm) { /* a session holds one VM: drop its old one */
                auto old = vm_to_session_.find(ex->vm);
                if (old != vm_to_session_.end() && old->second == key)
                    vm_to_session_.erase(old);
            }
            ex->vm.swap(copy);
            ex->has_vm = true;
            s->state = RLM_READY;
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        RLM_DEBUG_ONLY(check_shard(sh));
        RLM_DEBUG_ONLY(check_vm(shards.a, shards.b));
        return RLM_OK;
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
        RLM_DEBUG_ONLY(check_vm(&sh, &sh));
        return RLM_OK;
    }

    /* The session's VM, if it exists and holds one (copied to vm_out). */
    int get_vm(SidKey key, std::string *vm_out, bool *had) {
        *had = false;
        int st = on_found(key, [&](Shard &, Session &s) -> int {
            if (!holds_vm(s)) return RLM_OK;
            try {
                *vm_out = s.extras->vm;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            *had = true;
            return RLM_OK;
        });
        return st == RLM_NOT_FOUND ? RLM_OK : st;
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
                    const std::string &value, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            try {
                extras_of(&s)->context[name] = value;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            return RLM_OK;
        });
    }

    int get_context(SidKey key, const std::string &name, std::string *out, bool *had) {
        *had = false;
        return on_found(key, [&](Shard &, Session &s) -> int {
            if (!s.extras) return RLM_OK;
            auto it = s.extras->context.find(name);
            if (it == s.extras->context.end()) return RLM_OK;
            try {
                *out = it->second;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            *had = true;
            return RLM_OK;
        });
    }

    int all_context(SidKey key, SessionCopy *out) { return get(key, out); }

    int delete_context(SidKey key, int64_t now, const std::string &name,
                       std::string *out, bool *had, SidKey *who) {
        *had = false;
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            if (!s.extras) return RLM_OK;
            auto it = s.extras->context.find(name);
            if (it == s.extras->context.end()) return RLM_OK;
            out->swap(it->second); /* no allocation */
            s.extras->context.erase(it);
            *had = true;
            return RLM_OK;
        });
    }

    /* ---- budgets and depth */

    int update_budget(SidKey key, int64_t now, uint64_t token_budget,
                      uint64_t tokens_used, uint64_t time_budget_ms,
                      uint64_t time_used_ms, uint64_t max_depth, uint64_t depth,
                      SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            if (depth < s.start_depth) return RLM_BELOW_START;
            s.token_budget = token_budget;
            s.tokens_used = tokens_used;
            s.time_budget_ms = time_budget_ms;
            s.time_used_ms = time_used_ms;
            s.max_depth = (uint32_t)max_depth; /* u32s (BudgetStatus checks) */
            s.depth = (uint32_t)depth;
            return RLM_OK;
        });
    }

    /* The start depth of a session (0 for a root or an unknown id). */
    uint64_t start_depth(SidKey key) {
        uint64_t start = 0;
        on_found(key, [&](Shard &, Session &s) {
            start = s.start_depth;
            return (int)RLM_OK;
        });
        return start;
    }

    /* On RLM_DEPTH_EXCEEDED, *depth is the current depth (the refused one
     * is depth + 1, computed by the caller without wrapping). */
    int increment(SidKey key, int64_t now, uint64_t *depth, uint64_t *max_depth, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            *max_depth = s.max_depth;
            if (s.depth >= s.max_depth) {
                *depth = s.depth;
                return RLM_DEPTH_EXCEEDED;
            }
            *depth = ++s.depth;
            return RLM_OK;
        });
    }

    /* -1, saturating at the session's start depth (0 for a root). */
    int decrement(SidKey key, int64_t now, uint64_t *depth, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) {
            if (s.depth > s.start_depth) s.depth -= 1;
            *depth = s.depth;
            return (int)RLM_OK;
        });
    }

    /* The exit of recursion(): -1 whatever the state, never an error. */
    void leave_recursion(SidKey key) {
        on_found(key, [&](Shard &sh, Session &s) {
            if (s.depth > s.start_depth) s.depth -= 1;
            RLM_DEBUG_ONLY(check_shard(sh));
            (void)sh;
            return (int)RLM_OK;
        });
    }

    /* Charges roll up the path; see charge(). */
    int charge_tokens(SidKey key, int64_t now, uint64_t amount, uint64_t *total,
                      uint64_t *budget, SidKey *who) {
        return charge(key, now, amount, &Session::tokens_used, &Session::token_budget,
                      RLM_TOKENS_OVER, total, budget, who);
    }

    int charge_time(SidKey key, int64_t now, uint64_t amount, uint64_t *total,
                    uint64_t *budget, SidKey *who) {
        return charge(key, now, amount, &Session::time_used_ms, &Session::time_budget_ms,
                      RLM_TIME_OVER, total, budget, who);
    }

    /* check_budget: the budget fields of a live session in *own; then the
     * path from the root down, tokens then time then depth for each: the
     * first exhausted one is RLM_TOKENS_OVER / RLM_TIME_OVER /
     * RLM_DEPTH_EXCEEDED with that session's fields in *bad. */
    int budget(SidKey key, int64_t now, Session *own, Session *bad, SidKey *who) {
        return on_live(key, now, who, [&](Shard &sh, Session &s) -> int {
            *own = s;
            own->extras = NULL;
            int found = RLM_OK;
            for (Session *n = &s; n; n = sh.parent_of(*n)) {
                int mine = exhausted(*n);
                if (mine != RLM_OK) { /* the last one is the nearest the root */
                    found = mine;
                    *bad = *n;
                    bad->extras = NULL;
                }
            }
            return found;
        });
    }

    /* begin_call (docs/lifecycle.md), one step under one lock: the path's
     * validity, then every budget on the path as budget() checks it (the
     * first exhausted one, root first: its status, with that session's
     * fields in *out), then depth +1 (RLM_DEPTH_EXCEEDED with *at_limit set
     * and the session's fields in *out at its maximum). On RLM_OK *out holds
     * the session's fields after the increment. */
    int begin_call(SidKey key, int64_t now, Session *out, bool *at_limit, SidKey *who) {
        *at_limit = false;
        return on_live(key, now, who, [&](Shard &sh, Session &s) -> int {
            int found = RLM_OK;
            for (Session *n = &s; n; n = sh.parent_of(*n)) {
                int mine = exhausted(*n);
                if (mine != RLM_OK) { /* the last one is the nearest the root */
                    found = mine;
                    *out = *n;
                }
            }
            if (found == RLM_OK) {
                if (s.depth >= s.max_depth) {
                    *at_limit = true;
                    found = RLM_DEPTH_EXCEEDED;
                } else {
                    s.depth += 1;
                }
                *out = s;
            }
            out->extras = NULL;
            return found;
        });
    }

    /* end_call, one step under one lock: the path's validity; a total past
     * 2**64-1 for either amount anywhere on the path refuses the whole step
     * (RLM_U64_OVERFLOW, r->time_overflow telling which; tokens first);
     * else both amounts are added to every session on the path and the
     * session's depth goes down by one (not below its start depth). Then
     * RLM_TOKENS_OVER / RLM_TIME_OVER (tokens first) with r->used and
     * r->limit of the session nearest the root whose budget was passed, or
     * RLM_OK; r->own holds the session's fields after. */
    int end_call(SidKey key, int64_t now, uint64_t tokens, uint64_t time_ms, CallEnd *r,
                 SidKey *who) {
        return on_live(key, now, who, [&](Shard &sh, Session &s) -> int {
            for (Session *n = &s; n; n = sh.parent_of(*n))
                if (tokens > RLM_U64_MAX - n->tokens_used) {
                    r->time_overflow = false;
                    return RLM_U64_OVERFLOW;
                }
            for (Session *n = &s; n; n = sh.parent_of(*n))
                if (time_ms > RLM_U64_MAX - n->time_used_ms) {
                    r->time_overflow = true;
                    return RLM_U64_OVERFLOW;
                }
            Session *tokens_passed = NULL, *time_passed = NULL;
            for (Session *n = &s; n; n = sh.parent_of(*n)) {
                n->tokens_used += tokens;
                n->time_used_ms += time_ms;
                /* the last ones are the nearest the root */
                if (n->tokens_used > n->token_budget) tokens_passed = n;
                if (n->time_used_ms > n->time_budget_ms) time_passed = n;
            }
            if (s.depth > s.start_depth) s.depth -= 1;
            r->own = s;
            r->own.extras = NULL;
            if (tokens_passed) {
                r->used = tokens_passed->tokens_used;
                r->limit = tokens_passed->token_budget;
                return RLM_TOKENS_OVER;
            }
            if (time_passed) {
                r->used = time_passed->time_used_ms;
                r->limit = time_passed->time_budget_ms;
                return RLM_TIME_OVER;
            }
            return RLM_OK;
        });
    }

    /* ---- snapshots */

    int snapshot_created(SidKey key, int64_t now, const std::string &snap,
                         bool set_current, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            if (cfg.max_snapshots && s.snapshot_count >= cfg.max_snapshots)
                return RLM_MAX_SNAPSHOTS;
            if (set_current) {
                try {
                    Extras *ex = extras_of(&s);
                    ex->snapshot = snap;
                    ex->has_snapshot = true;
                } catch (const std::bad_alloc &) {
                    return RLM_NOMEM;
                }
            }
            s.snapshot_count += 1;
            return RLM_OK;
        });
    }

    int snapshot_restored(SidKey key, int64_t now, const std::string &snap, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) -> int {
            try {
                Extras *ex = extras_of(&s);
                ex->snapshot = snap;
                ex->has_snapshot = true;
            } catch (const std::bad_alloc &) {
                return RLM_NOMEM;
            }
            return RLM_OK;
        });
    }

    int current_snapshot(SidKey key, std::string *out, bool *had) {
        *had = false;
        return on_found(key, [&](Shard &, Session &s) -> int {
            if (s.extras && s.extras->has_snapshot) {
                try {
                    *out = s.extras->snapshot;
                } catch (const std::bad_alloc &) {
                    return RLM_NOMEM;
                }
                *had = true;
            }
            return RLM_OK;
        });
    }

    int clear_snapshots(SidKey key, int64_t now, SidKey *who) {
        return on_live(key, now, who, [&](Shard &, Session &s) {
            s.snapshot_count = 0;
            if (s.extras) {
                s.extras->has_snapshot = false;
                s.extras->snapshot.clear();
            }
            return (int)RLM_OK;
        });
    }

    /* ---- refusal counters (docs/lifecycle.md): relaxed atomics, touched
     * only on a refusal path, outside every lock; exact under any number
     * of threads. */

    /* Count a refusal status (rlm_refusal_of); others count nowhere. */
    void count_refusal(int status) {
        int which = rlm_refusal_of(status);
        if (which >= 0) rejected_[which].fetch_add(1, std::memory_order_relaxed);
    }

    /* Count one refusal of kind `which` (an RlmRefusal). */
    void count_rejected(int which) {
        rejected_[which].fetch_add(1, std::memory_order_relaxed);
    }

    /* ---- whole table, in pieces (SPEC 15): no lock is held for more
     * than rlm_piece_size() sessions, so none is one instant of the table */

    /* The counters: the VM map's size under vm_mu_, then each shard's
     * counters and size under its own lock in turn (O(1) per hold). Each
     * shard balances at every unlock, so the sums do too:
     * created == destroyed + expired + active. */
    Stats stats() {
        Stats st;
        memset(&st, 0, sizeof st);
        {
            RlmGuard gv(vm_mu_);
            st.with_vm = vm_to_session_.size();
        }
        for (int i = 0; i < RLM_NSHARDS; ++i) {
            Shard &sh = shards_[i];
            RlmGuard g(sh.mu);
            if (i == 0) { /* written by restore under every lock */
                st.created += base_created_;
                st.destroyed += base_destroyed_;
                st.expired += base_expired_;
            }
            st.created += sh.created;
            st.destroyed += sh.destroyed;
            st.expired += sh.expired;
            st.active += sh.sessions.size();
        }
        for (int i = 0; i < RLM_NREFUSALS; ++i)
            st.rejected[i] = rejected_[i].load(std::memory_order_relaxed);
        return st;
    }

    /* Copies of every session, unsorted (rlm_order_by_id sorts them after
     * the locks are released), read in pieces (read_in_pieces): a session
     * created meanwhile may be missing, one removed meanwhile is not
     * there, each is copied whole. Then, if asked, the counters (stats()),
     * read last. Call without the GIL. */
    int list(std::vector<SessionCopy> *out, Stats *stats) {
        out->clear();
        if (!reserve_for_all(out)) return RLM_NOMEM;
        int st = read_in_pieces([&](size_t n) { rlm_room(out, n); },
                                [&](Shard &sh, SidKey key, const Session &s) {
                                    out->emplace_back(); /* room made: no realloc */
                                    copy_out(sh, key, s, &out->back());
                                });
        if (st != RLM_OK) {
            out->clear();
            return st;
        }
        if (stats) *stats = this->stats();
        return RLM_OK;
    }

    /* Room for a row per session and an eighth more, made once: growing
     * a buffer of hundreds of MB by doubling copies it and unmaps the old
     * one each time (see rlm_free_vector). */
    template <class T>
    bool reserve_for_all(std::vector<T> *out) {
        size_t n = size();
        try {
            out->reserve(n + n / 8 + 2 * rlm_piece_size());
        } catch (const std::bad_alloc &) {
            return false;
        }
        return true;
    }

    /* Tests: expiry index entries held, all shards. */
    size_t expiry_entries() {
        size_t n = 0;
        for (Shard &sh : shards_) {
            RlmGuard g(sh.mu);
            n += sh.fifo.size() + sh.heap.size();
        }
        return n;
    }

    /* Piece-hold statistics for tests; reset with reset = true. */
    void piece_stats(uint64_t *holds, uint64_t *widest, bool reset) {
        *holds = holds_.load(std::memory_order_relaxed);
        *widest = widest_.load(std::memory_order_relaxed);
        if (reset) {
            holds_.store(0, std::memory_order_relaxed);
            widest_.store(0, std::memory_order_relaxed);
        }
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
            out[i] = !skip[i] && shard_of(keys[i]).live(keys[i], now, &s, NULL) == RLM_OK;
        }
    }

    /* budget_table: one row per session, unsorted (the caller sorts after
     * unlocking), read in pieces as list() is. */
    int budget_rows(std::vector<BudgetRow> *out) {
        out->clear();
        if (!reserve_for_all(out)) return RLM_NOMEM;
        int st = read_in_pieces([&](size_t n) { rlm_room(out, n); },
                                [&](Shard &, SidKey key, const Session &s) {
                                    out->emplace_back();
                                    BudgetRow &r = out->back();
                                    rlm_key_bytes(key, r.id);
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
                                });
        if (st != RLM_OK) out->clear();
        return st;
    }

    /* Fill an unused table from checked rows (distinct ids and VMs; every
     * parent a row, no cycle, each root the root of its chain; a child's
     * s.start_depth set): all or nothing. */
    int restore(const std::vector<SessionCopy> &rows, uint64_t created,
                uint64_t destroyed, uint64_t expired) {
        AllLocks all(*this, true);
        if (count() != 0 || created_locked() != 0) return RLM_NOT_EMPTY;
        /* A child whose id lacks its root's shard bits (a file written by
         * another core) is placed in its root's shard anyway: the
         * placement, published below, is read without a lock and never
         * changes again (a second restore finds the table used). */
        std::unique_ptr<Placement> placed;
        auto index = [&](SidKey k) -> unsigned {
            if (placed) {
                auto it = placed->find(k);
                if (it != placed->end()) return it->second;
            }
            return (unsigned)(k.lo & RLM_SHARD_MASK);
        };
        try {
            for (const SessionCopy &row : rows) {
                unsigned home = (unsigned)(row.root.lo & RLM_SHARD_MASK);
                if (row.has_parent && (row.key.lo & RLM_SHARD_MASK) != home) {
                    if (!placed) placed.reset(new Placement());
                    placed->emplace(row.key, home);
                }
            }
            for (const SessionCopy &row : rows) {
                Shard &sh = shards_[index(row.key)];
                uint32_t r = sh.sessions.insert(row.key, row.s); /* ids checked distinct */
                Session &s = sh.sessions.row(r)->s;
                s.extras = NULL;
                s.start_depth = row.has_parent ? row.s.start_depth : 0;
                sh.heap.push_back({row.s.expires_ns, r});
                sh.created += 1;
                if (row.has_vm || row.has_snapshot || !row.context.empty() || row.has_parent) {
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
                    if (row.has_parent) ex->parent = row.parent;
                }
            }
            for (const SessionCopy &row : rows) {
                if (!row.has_parent) continue;
                Session *p = shards_[index(row.parent)].find(row.parent);
                extras_of(p)->children.push_back(row.key);
                shards_[index(row.key)].find(row.key)->extras->up = p;
            }
        } catch (const std::bad_alloc &) {
            for (Shard &sh : shards_) {
                sh.sessions.for_each([](Row &r) { delete r.s.extras; });
                sh.sessions.clear();
                sh.heap.clear();
                sh.created = 0;
            }
            vm_to_session_.clear();
            return RLM_NOMEM;
        }
        for (Shard &sh : shards_) std::make_heap(sh.heap.begin(), sh.heap.end(), ExpiryLater());
        base_created_ = created - rows.size(); /* the caller checked the balance */
        base_destroyed_ = destroyed;
        base_expired_ = expired;
        if (placed) placed_.store(placed.release(), std::memory_order_release);
        RLM_DEBUG_ONLY(check_all());
        return RLM_OK;
    }

  private:
    typedef std::unordered_map<SidKey, unsigned, SidHash> Placement;

    Shard shards_[RLM_NSHARDS];
    alignas(64) RlmLock vm_mu_;
    std::unordered_map<std::string, SidKey> vm_to_session_;
    std::atomic<const Placement *> placed_{nullptr}; /* set once, by restore */
    /* SessionStats.rejected_*, on their own cache lines (RlmRefusal order). */
    alignas(64) std::atomic<uint64_t> rejected_[RLM_NREFUSALS] = {};
    /* Whole-table lock holds and the widest one (note_hold; tests). */
    alignas(64) std::atomic<uint64_t> holds_{0};
    std::atomic<uint64_t> widest_{0};
    /* The counters a restore brings beyond its rows: under every shard lock. */
    uint64_t base_created_ = 0;
    uint64_t base_destroyed_ = 0;
    uint64_t base_expired_ = 0;

    Shard &shard_of(SidKey key) { return shards_[shard_index(key)]; }

    /* The prologue of every call that follows the write order (SPEC 10):
     * the session's shard lock, then existence and the validity of its
     * whole path (Shard::live); `body(shard, session)` runs with the lock
     * held on the live session and returns the status. */
    template <class Body>
    int on_live(SidKey key, int64_t now, SidKey *who, Body body) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s;
        int st = sh.live(key, now, &s, who);
        if (st != RLM_OK) return st;
        st = body(sh, *s);
        RLM_DEBUG_ONLY(check_shard(sh));
        return st;
    }

    /* The prologue of read-only lookups: the shard lock and existence. */
    template <class Body>
    int on_found(SidKey key, Body body) {
        Shard &sh = shard_of(key);
        RlmGuard g(sh.mu);
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        return body(sh, *s);
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
            for (int i = RLM_NSHARDS - 1; i >= 0; --i) t.shards_[i].mu.unlock();
            if (vm) t.vm_mu_.unlock();
        }
    };

    /* A lock taken only if asked. */
    struct MaybeLock {
        RlmLock &l;
        bool on;
        MaybeLock(RlmLock &lock, bool take) : l(lock), on(take) {
            if (on) l.lock();
        }
        ~MaybeLock() {
            if (on) l.unlock();
        }
        MaybeLock(const MaybeLock &) = delete;
        MaybeLock &operator=(const MaybeLock &) = delete;
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

    uint64_t created_locked() const {
        uint64_t n = base_created_;
        for (const Shard &sh : shards_) n += sh.created;
        return n;
    }

    Stats stats_locked() const {
        Stats st;
        st.created = created_locked();
        st.active = count();
        st.with_vm = vm_to_session_.size();
        st.destroyed = base_destroyed_;
        st.expired = base_expired_;
        for (const Shard &sh : shards_) {
            st.destroyed += sh.destroyed;
            st.expired += sh.expired;
        }
        for (int i = 0; i < RLM_NREFUSALS; ++i)
            st.rejected[i] = rejected_[i].load(std::memory_order_relaxed);
        return st;
    }

    static bool holds_vm(const Session &s) { return s.extras && s.extras->has_vm; }

    /* tokens, then time, then depth: the first exhausted budget, or OK. */
    static int exhausted(const Session &s) {
        if (s.tokens_used >= s.token_budget) return RLM_TOKENS_OVER;
        if (s.time_used_ms >= s.time_budget_ms) return RLM_TIME_OVER;
        if (s.depth > s.max_depth) return RLM_DEPTH_EXCEEDED;
        return RLM_OK;
    }

    /* Add `amount` to the `used` counter of the session and every ancestor
     * (docs/trees.md): a total past 2**64-1 anywhere on the path is refused
     * whole; one past a budget is kept (it was spent) and reported as
     * `over`, with *total / *budget those of the session nearest the root
     * whose budget was passed; else the session's own. */
    int charge(SidKey key, int64_t now, uint64_t amount, uint64_t Session::*used,
               uint64_t Session::*limit, int over, uint64_t *total, uint64_t *budget,
               SidKey *who) {
        return on_live(key, now, who, [&](Shard &sh, Session &s) -> int {
            for (Session *n = &s; n; n = sh.parent_of(*n))
                if (amount > RLM_U64_MAX - n->*used) return RLM_U64_OVERFLOW;
            Session *passed = NULL;
            for (Session *n = &s; n; n = sh.parent_of(*n)) {
                n->*used += amount;
                if (n->*used > n->*limit) passed = n; /* the last: nearest the root */
            }
            Session *report = passed ? passed : &s;
            *total = report->*used;
            *budget = report->*limit;
            return passed ? over : RLM_OK;
        });
    }

    static Extras *extras_of(Session *s) { /* may throw bad_alloc */
        if (!s->extras) s->extras = new Extras();
        return s->extras;
    }

    /* The ids of a session's subtree, itself first, into *out (replaced);
     * *vm: whether one of them holds a VM. */
    int subtree(Shard &sh, SidKey key, std::vector<SidKey> *out, bool *vm) {
        out->clear();
        Session *s = sh.find(key);
        if (!s) return RLM_NOT_FOUND;
        try {
            append_subtree(sh, key, out);
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        *vm = false;
        for (const SidKey &k : *out) *vm = *vm || holds_vm(*sh.find(k));
        return RLM_OK;
    }

    /* Append a session and its descendants, breadth first (may throw; what
     * was appended stays). */
    void append_subtree(Shard &sh, SidKey key, std::vector<SidKey> *out) {
        size_t i = out->size();
        out->push_back(key);
        for (; i < out->size(); ++i) {
            const Session *n = sh.find((*out)[i]);
            if (n->extras)
                for (const SidKey &c : n->extras->children) out->push_back(c);
        }
    }

    /* Take a session out of its parent's children (no allocation). */
    void detach(Shard &sh, SidKey key, const Session &s) {
        Session *p = sh.parent_of(s);
        if (!p) return;
        std::vector<SidKey> &kids = p->extras->children;
        auto it = std::find(kids.begin(), kids.end(), key);
        if (it == kids.end()) return;
        *it = kids.back();
        kids.pop_back();
    }

    /* Room at the end of *removed for the last states of `ids` (may
     * throw; then *removed is as it was). */
    void make_room(const std::vector<SidKey> &ids, std::vector<SessionCopy> *removed) {
        size_t base = removed->size();
        try {
            removed->resize(base + ids.size());
            for (size_t i = 0; i < ids.size(); ++i) {
                const Session *s = shard_of(ids[i]).find(ids[i]);
                if (s->extras) (*removed)[base + i].context.reserve(s->extras->context.size());
            }
        } catch (const std::bad_alloc &) {
            removed->resize(base);
            throw;
        }
    }

    /* Remove the subtree `doomed` (from subtree(): its root first; the
     * rest is put in id order here) and detach its root, appending each
     * session's last state to *removed in that order. Caller holds the
     * shard's lock, and vm_mu_ if one holds a VM. NOMEM changes nothing. */
    int take_tree(Shard &sh, std::vector<SidKey> &doomed, std::vector<SessionCopy> *removed) {
        std::sort(doomed.begin() + 1, doomed.end());
        size_t base = removed->size();
        try {
            make_room(doomed, removed);
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        SidKey root = sh.root_of(doomed[0], *sh.find(doomed[0]));
        detach(sh, doomed[0], *sh.find(doomed[0]));
        for (size_t i = 0; i < doomed.size(); ++i)
            take_out(sh, doomed[i], root, &(*removed)[base + i]);
        return RLM_OK;
    }

    /* One piece of cleanup (caller holds sh.mu, and vm_mu_ if have_vm):
     * pop due index entries, removing each live one's session with its
     * subtree, until `piece` sessions removed or stale entries dropped (*more: the
     * shard may have more due) or none is due. A due tree holding a VM
     * without vm_mu_ held ends the piece with *need_vm set, its entry left
     * in place. The last states go to *buf; with `keys`, a session alone
     * (no children, no VM or vm_mu_ held) leaves only its id there, taken
     * out with one lookup. */
    int cleanup_piece(Shard &sh, int64_t now, bool have_vm, size_t piece,
                      std::vector<SessionCopy> *buf, std::vector<SidKey> *keys,
                      std::vector<SidKey> *doomed, bool *more, bool *need_vm) {
        size_t work = 0; /* sessions removed and stale entries dropped */
        int st = RLM_OK;
        *more = true;
        while (work < piece) {
            ExpiryEntry e;
            bool from_heap;
            if (!sh.peek_due(now, &e, &from_heap)) {
                *more = false;
                break;
            }
            if (!from_heap && sh.fifo.size() > RLM_PREFETCH_AHEAD) {
                /* The FIFO is in creation order, as the rows are: reading
                 * a row ahead is cheap, its index slot is not. */
                const ExpiryEntry &ahead = sh.fifo[RLM_PREFETCH_AHEAD];
                if (ahead.row < sh.sessions.rows_end())
                    sh.sessions.prefetch(sh.sessions.row(ahead.row)->key);
            }
            Row *due = sh.entry_row(e);
            if (!due) {
                sh.drop_due(from_heap); /* stale: its session is gone or moved on */
                work += 1;
                continue;
            }
            const SidKey key = due->key;
            const Extras *ex = due->s.extras;
            if (keys && (!ex || (ex->children.empty() && (have_vm || !ex->has_vm)))) {
                /* The common case: one session alone, only its id wanted
                 * (keys has room: the caller reserved two pieces). */
                keys->push_back(key);
                drop_alone(sh, e.row);
                sh.drop_due(from_heap);
                sh.expired += 1;
                work += 1;
                continue;
            }
            bool vm = false;
            st = subtree(sh, key, doomed, &vm);
            if (st != RLM_OK) break;
            if (vm && !have_vm) {
                *need_vm = true;
                break;
            }
            st = take_tree(sh, *doomed, buf);
            if (st != RLM_OK) break;
            sh.drop_due(from_heap); /* the entry of a session just removed */
            sh.expired += doomed->size();
            work += doomed->size(); /* the sessions removed */
        }
        note_hold(work);
        return st;
    }

    /* Remove a session that has no children (its VM mapping too, if its
     * own: the caller then holds vm_mu_), keeping nothing of it: no
     * allocation, no throw. Caller holds the shard's lock. */
    void drop_alone(Shard &sh, uint32_t r) {
        Row &row = *sh.sessions.row(r);
        if (Extras *ex = row.s.extras) {
            detach(sh, row.key, row.s);
            if (ex->has_vm) {
                auto m = vm_to_session_.find(ex->vm);
                if (m != vm_to_session_.end() && m->second == row.key) vm_to_session_.erase(m);
            }
            delete ex;
            row.s.extras = NULL;
        }
        sh.sessions.erase_row(r);
    }

    /* The keys of one shard, appended to *keys, read row by row in pieces
     * (at most rlm_piece_size() rows per hold of the shard's lock). A row
     * never moves, so every session present throughout is read exactly
     * once; a session added or removed meanwhile may or may not be read:
     * the caller looks each key up. */
    int shard_keys(Shard &sh, std::vector<SidKey> *keys) {
        const size_t piece = rlm_piece_size();
        const size_t start = keys->size();
        try {
            for (uint32_t r = 0;;) {
                rlm_room(keys, piece); /* outside the lock */
                uint32_t end;
                {
                    RlmGuard g(sh.mu);
                    end = sh.sessions.rows_end();
                    uint32_t stop = (uint32_t)std::min<uint64_t>(end, (uint64_t)r + piece);
                    size_t seen = 0;
                    for (; r < stop; ++r)
                        if (sh.sessions.live(r)) {
                            keys->push_back(sh.sessions.row(r)->key);
                            ++seen;
                        }
                    note_hold(seen);
                }
                if (r >= end) return RLM_OK;
                rlm_let_waiters_in(sh.mu);
            }
        } catch (const std::bad_alloc &) {
            keys->resize(start);
            return RLM_NOMEM;
        }
    }

    /* For every session of the table: its shard's keys (shard_keys), then
     * those keys looked up in pieces of rlm_piece_size() under the shard's
     * lock: room(n) runs before each piece, outside the lock (it may
     * allocate), read(shard, key, session) under it for each key still
     * there (a key gone meanwhile is skipped). */
    template <class Room, class Read>
    int read_in_pieces(Room room, Read read) {
        const size_t piece = rlm_piece_size();
        std::vector<SidKey> keys;
        try {
            for (Shard &sh : shards_) {
                keys.clear();
                int st = shard_keys(sh, &keys);
                if (st != RLM_OK) return st;
                for (size_t i = 0; i < keys.size(); i += piece) {
                    size_t end = std::min(keys.size(), i + piece);
                    room(end - i);
                    {
                        RlmGuard g(sh.mu);
                        for (size_t j = i; j < end; ++j)
                            if (Session *s = sh.find(keys[j])) read(sh, keys[j], *s);
                        note_hold(end - i);
                    }
                    rlm_let_waiters_in(sh.mu);
                }
            }
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        return RLM_OK;
    }

    /* Tests (_session_c._piece_stats): lock holds of whole-table calls and
     * the most sessions one of them covered. */
    void note_hold(size_t n) {
        holds_.fetch_add(1, std::memory_order_relaxed);
        uint64_t w = widest_.load(std::memory_order_relaxed);
        while (n > w && !widest_.compare_exchange_weak(w, n, std::memory_order_relaxed)) {
        }
    }

    /* Remove one session (its VM mapping too, if its own) and move its
     * last state into *out, whose context has room for it: no allocation,
     * no throw. Caller holds the shard's lock, and vm_mu_ if it holds a VM. */
    void take_out(Shard &sh, SidKey key, SidKey root, SessionCopy *out) {
        uint32_t r = sh.sessions.find_row(key);
        Session &s = sh.sessions.row(r)->s;
        out->key = key;
        out->s = s;
        out->s.extras = NULL;
        out->has_parent = s.start_depth != 0;
        out->root = out->has_parent ? root : key;
        out->has_vm = out->has_snapshot = false;
        if (Extras *ex = s.extras) {
            if (ex->has_vm) {
                auto m = vm_to_session_.find(ex->vm);
                if (m != vm_to_session_.end() && m->second == key) vm_to_session_.erase(m);
                out->has_vm = true;
                out->vm.swap(ex->vm);
            }
            if (ex->has_snapshot) {
                out->has_snapshot = true;
                out->snapshot.swap(ex->snapshot);
            }
            while (!ex->context.empty()) { /* sorted by key: kept in order */
                auto node = ex->context.extract(ex->context.begin());
                out->context.emplace_back(std::move(node.key()), std::move(node.mapped()));
            }
            if (out->has_parent) out->parent = ex->parent;
            delete ex;
            s.extras = NULL;
        }
        sh.sessions.erase_row(r);
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

    static void copy_out(Shard &sh, SidKey key, const Session &s, SessionCopy *out) {
        out->key = key;
        out->s = s;
        out->s.extras = NULL;
        out->has_vm = out->has_snapshot = false;
        out->has_parent = s.start_depth != 0;
        out->root = key;
        if (s.extras) {
            out->has_vm = s.extras->has_vm;
            out->has_snapshot = s.extras->has_snapshot;
            if (out->has_vm) out->vm = s.extras->vm;
            if (out->has_snapshot) out->snapshot = s.extras->snapshot;
            out->context.assign(s.extras->context.begin(), s.extras->context.end());
            if (out->has_parent) {
                out->parent = s.extras->parent;
                out->root = sh.root_of(key, s);
            }
        }
    }

    static int guarded_copy(Shard &sh, SidKey key, const Session &s, SessionCopy *out) {
        try {
            copy_out(sh, key, s, out);
        } catch (const std::bad_alloc &) {
            return RLM_NOMEM;
        }
        return RLM_OK;
    }

#if defined(RLM_FAST_DEBUG)
    /* ---- the debug switch: invariants, checked with the locks held */

    /* Caller holds sh.mu: counters balanced, every session in its shard
     * and in the expiry index, tree links both ways and acyclic. */
    void check_shard(Shard &sh) {
        RLM_CHECK(sh.created == sh.destroyed + sh.expired + sh.sessions.size(),
                  "shard counters balanced: created == destroyed + expired + sessions");
        std::vector<SidKey> indexed;
        for (const ExpiryEntry &e : sh.fifo)
            if (sh.live_entry(e)) indexed.push_back(sh.sessions.row(e.row)->key);
        for (const ExpiryEntry &e : sh.heap)
            if (sh.live_entry(e)) indexed.push_back(sh.sessions.row(e.row)->key);
        std::sort(indexed.begin(), indexed.end());
        indexed.erase(std::unique(indexed.begin(), indexed.end()), indexed.end());
        RLM_CHECK(indexed.size() == sh.sessions.size(), "every session is in its expiry index");
        RLM_CHECK(sh.sessions.size() <= sh.sessions.rows_end(), "rows hold the sessions");
        size_t live_rows = 0;
        for (uint32_t r = 0; r < sh.sessions.rows_end(); ++r) {
            if (!sh.sessions.live(r)) continue;
            ++live_rows;
            const SidKey key = sh.sessions.row(r)->key;
            const Session &s = sh.sessions.row(r)->s;
            RLM_CHECK(sh.sessions.find_row(key) == r, "the index finds every row");
            RLM_CHECK(&shard_of(key) == &sh, "a session lives in its shard");
            if (s.start_depth) {
                RLM_CHECK(s.extras != NULL, "a child has its tree links");
                RLM_CHECK(s.depth >= s.start_depth, "a child's depth is at least its start");
                const Session *p = sh.find(s.extras->parent);
                RLM_CHECK(p != NULL, "a child's parent is in its shard");
                RLM_CHECK(s.extras->up == p, "a child points at its parent's node");
                RLM_CHECK(p->extras && std::count(p->extras->children.begin(),
                                                  p->extras->children.end(), key) == 1,
                          "a parent lists each child once");
                size_t steps = 0;
                for (const Session *n = &s; n->start_depth; n = n->extras->up)
                    RLM_CHECK(++steps <= sh.sessions.size(), "a tree has no cycle");
            }
            if (s.extras)
                for (const SidKey &c : s.extras->children) {
                    const Session *cs = sh.find(c);
                    RLM_CHECK(cs && cs->start_depth && cs->extras->parent == key,
                              "a listed child names its parent");
                }
        }
        RLM_CHECK(live_rows == sh.sessions.size(), "the map counts its live rows");
    }

    /* Caller holds vm_mu_ and the locks of shards a and b: the VM map and
     * Extras::vm are exact inverses for their sessions. */
    void check_vm(Shard *a, Shard *b) {
        for (auto &kv : vm_to_session_) {
            Shard *home = &shard_of(kv.second);
            if (home != a && home != b) continue;
            const Session *s = home->find(kv.second);
            RLM_CHECK(s && holds_vm(*s) && s->extras->vm == kv.first,
                      "the VM map names a session holding that VM");
        }
        Shard *held[2] = {a, b};
        for (int i = 0; i < (a == b ? 1 : 2); ++i)
            held[i]->sessions.for_each([&](const Row &row) {
                if (!holds_vm(row.s)) return;
                auto it = vm_to_session_.find(row.s.extras->vm);
                RLM_CHECK(it != vm_to_session_.end() && it->second == row.key,
                          "a session's VM maps back to it");
            });
    }

    /* Caller holds every lock: all of the above, everywhere. */
    void check_all() {
        size_t with_vm = 0;
        for (Shard &sh : shards_) {
            check_shard(sh);
            check_vm(&sh, &sh);
            sh.sessions.for_each([&](const Row &row) { with_vm += holds_vm(row.s); });
        }
        RLM_CHECK(with_vm == vm_to_session_.size(), "the VM map and Extras::vm are inverses");
        Stats st = stats_locked();
        RLM_CHECK(st.created == st.destroyed + st.expired + st.active,
                  "counters balanced: created == destroyed + expired + active");
    }
#endif
};

} /* namespace rlm_fast */

#endif /* RLM_FAST_TABLE_H */
