/* rlm_fast compiled core: the table's lock (PyMutex on 3.13+, else a
 * std::mutex that lets go of the GIL before blocking) and a scope guard. */
#ifndef RLM_FAST_LOCK_H
#define RLM_FAST_LOCK_H

#include <Python.h> /* PyMutex (3.13+), PY_VERSION_HEX: no object is used */
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

} /* namespace rlm_fast */

#endif /* RLM_FAST_LOCK_H */
