/* rlm_fast compiled core: one shard's sessions (docs/design.md "The
 * table"). Rows (id + Session) live in a slab of fixed chunks, so a row
 * never moves while its session lives and a Session * stays valid (a
 * child's Extras::up relies on it); a freed row goes on a free list and is
 * reused. Sessions are found through an open-addressing index of 8-byte
 * slots (linear probing, backward-shift deletion, so no tombstones): each
 * slot holds the row number and 32 bits of the id's hash, so a probe
 * compares hashes before it reads a row, and growing or deleting never
 * reads a row at all. Not thread-safe: the shard's lock guards it. */
#ifndef RLM_FAST_SESSIONMAP_H
#define RLM_FAST_SESSIONMAP_H

#include <stdint.h>
#include <string.h>
#include <new>
#include <vector>

#include "ids.h"
#include "session.h"

namespace rlm_fast {

struct Row {
    SidKey key;
    Session s;
};

class SessionMap {
  public:
    static const uint32_t NONE = 0xFFFFFFFFu;
    enum { CHUNK_BITS = 10, CHUNK = 1 << CHUNK_BITS };
    /* Session::state of a row on the free list (never a session's). */
    enum { FREE_ROW = -1 };

    SessionMap() {}
    ~SessionMap() { release(); }
    SessionMap(const SessionMap &) = delete;
    SessionMap &operator=(const SessionMap &) = delete;

    size_t size() const { return size_; }
    /* Every live row's number is below rows_end(). */
    uint32_t rows_end() const { return used_; }
    Row *row(uint32_t r) const { return &chunks_[r >> CHUNK_BITS][r & (CHUNK - 1)]; }
    bool live(uint32_t r) const { return row(r)->s.state != FREE_ROW; }

    /* The row of `key`, or NONE. */
    uint32_t find_row(SidKey key) const {
        if (!slots_) return NONE;
        uint64_t h = hash(key);
        uint32_t tag = (uint32_t)h;
        for (size_t i = h & mask_;; i = (i + 1) & mask_) {
            uint64_t e = slots_[i];
            if (!e) return NONE;
            if ((uint32_t)(e >> 32) == tag) {
                uint32_t r = (uint32_t)e - 1;
                if (row(r)->key == key) return r;
            }
        }
    }

    /* A hint that `key` is about to be looked up: fetch its home slot into
     * the cache meanwhile (a lookup in a large shard is one cache miss). */
    void prefetch(SidKey key) const {
#if defined(__GNUC__) || defined(__clang__)
        if (slots_) __builtin_prefetch(&slots_[hash(key) & mask_]);
#else
        (void)key;
#endif
    }

    Session *find(SidKey key) const {
        uint32_t r = find_row(key);
        return r == NONE ? NULL : &row(r)->s;
    }

    /* Add a session whose id is not in the map; its row number. May throw
     * bad_alloc, and then nothing changed. */
    uint32_t insert(SidKey key, const Session &s) {
        if (!slots_ || (size_ + 1) * 4 > (mask_ + 1) * 3) grow(); /* load <= 3/4 */
        uint32_t r = take_row();
        Row *w = row(r);
        w->key = key;
        w->s = s;
        place(slots_, mask_, ((uint64_t)(uint32_t)hash(key) << 32) | ((uint64_t)r + 1));
        size_ += 1;
        return r;
    }

    /* Remove row r (live; the caller has freed its Extras). No
     * allocation, no throw. */
    void erase_row(uint32_t r) {
        Row *w = row(r);
        size_t i = hash(w->key) & mask_;
        while ((uint32_t)slots_[i] != r + 1) i = (i + 1) & mask_;
        /* Backward shift: move up each later entry of the run that may
         * sit at the hole (its home is not in (hole, j]). */
        for (size_t j = (i + 1) & mask_; slots_[j]; j = (j + 1) & mask_) {
            size_t home = (size_t)(slots_[j] >> 32) & mask_;
            if (((j - home) & mask_) >= ((j - i) & mask_)) {
                slots_[i] = slots_[j];
                i = j;
            }
        }
        slots_[i] = 0;
        w->s = Session();
        w->s.state = FREE_ROW;
        w->key.lo = free_; /* the free list runs through the rows */
        free_ = r;
        size_ -= 1;
    }

    /* f(row) for every live row, in row order. */
    template <class F>
    void for_each(F f) const {
        for (uint32_t r = 0; r < used_; ++r)
            if (live(r)) f(*row(r));
    }

    /* Drop every row (their Extras are the caller's). */
    void clear() {
        release();
        chunks_.clear();
        slots_ = NULL;
        mask_ = 0;
        size_ = 0;
        used_ = 0;
        free_ = NONE;
    }

  private:
    std::vector<Row *> chunks_; /* CHUNK rows each */
    uint64_t *slots_ = NULL;    /* (hash low 32 bits << 32) | (row + 1); 0: empty */
    size_t mask_ = 0;           /* slots - 1 (a power of two) */
    size_t size_ = 0;
    uint32_t used_ = 0;  /* rows handed out so far (live or free) */
    uint32_t free_ = NONE; /* the first free row; key.lo of a free row: the next */

    static uint64_t hash(SidKey k) { return (uint64_t)SidHash()(k); }

    static void place(uint64_t *slots, size_t mask, uint64_t e) {
        size_t i = (size_t)(e >> 32) & mask;
        while (slots[i]) i = (i + 1) & mask;
        slots[i] = e;
    }

    void grow() { /* may throw bad_alloc: then unchanged */
        size_t cap = slots_ ? 2 * (mask_ + 1) : 16;
        uint64_t *fresh = new uint64_t[cap]();
        if (slots_) {
            for (size_t i = 0; i <= mask_; ++i)
                if (slots_[i]) place(fresh, cap - 1, slots_[i]);
            delete[] slots_;
        }
        slots_ = fresh;
        mask_ = cap - 1;
    }

    uint32_t take_row() { /* may throw bad_alloc: then unchanged */
        if (free_ != NONE) {
            uint32_t r = free_;
            free_ = (uint32_t)row(r)->key.lo;
            return r;
        }
        if (used_ == NONE - 1) throw std::bad_alloc(); /* row numbers are 32-bit */
        if ((used_ & (CHUNK - 1)) == 0) {
            chunks_.reserve(chunks_.size() + 1);
            chunks_.push_back(new Row[CHUNK]);
        }
        return used_++;
    }

    void release() {
        for (Row *c : chunks_) delete[] c;
        delete[] slots_;
    }
};

} /* namespace rlm_fast */

#endif /* RLM_FAST_SESSIONMAP_H */
