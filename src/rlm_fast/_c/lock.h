/* rlm_fast compiled core: the table's lock (PyMutex on 3.13+, else a
 * std::mutex that lets go of the GIL before blocking) and a scope guard. */
#ifndef RLM_FAST_LOCK_H
#define RLM_FAST_LOCK_H

#include <Python.h> /* PyMutex (3.13+), PY_VERSION_HEX: no object is used */
#include <atomic>
#include <chrono>
#include <thread>
#if PY_VERSION_HEX < 0x030D0000
#  include <mutex>
#endif

namespace rlm_fast {

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
    /* PyMutex hands itself to a thread that has waited over 1 ms, so a
     * holder that takes it again and again cannot starve a waiter: nothing
     * to do here. */
    bool contended() const { return false; }
};
#else
struct RlmLock {
    std::mutex m;
    std::atomic<int> waiting{0}; /* threads blocked in lock() */
    void lock() {
        if (m.try_lock()) return;
        waiting.fetch_add(1, std::memory_order_relaxed);
        if (PyGILState_Check()) {
            PyThreadState *ts = PyEval_SaveThread();
            m.lock();
            PyEval_RestoreThread(ts);
        } else {
            m.lock();
        }
        waiting.fetch_sub(1, std::memory_order_relaxed);
    }
    void unlock() { m.unlock(); }
    /* Whether a thread is blocked waiting for the lock. std::mutex is not
     * fair: a holder that unlocks and locks again at once nearly always
     * wins over a waiter the kernel has yet to wake. */
    bool contended() const { return waiting.load(std::memory_order_relaxed) != 0; }
};
#endif

/* Called between two pieces of a whole-table call, with `l` released: if
 * a thread is waiting for it, give it the chance to take it before the
 * next piece does (at most half a millisecond), so that a hot-path call
 * waits for one piece, not for a whole shard's pieces in a row. */
static inline void rlm_let_waiters_in(const RlmLock &l) {
    if (!l.contended()) return;
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(500);
    while (l.contended() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

/* Holds a lock for one scope. */
struct RlmGuard {
    RlmLock &l;
    explicit RlmGuard(RlmLock &lock) : l(lock) { l.lock(); }
    ~RlmGuard() { l.unlock(); }
    RlmGuard(const RlmGuard &) = delete;
    RlmGuard &operator=(const RlmGuard &) = delete;
};

} /* namespace rlm_fast */

#endif /* RLM_FAST_LOCK_H */
