"""The main job: a short simulated RLM orchestrator on the in-process table.

Worker threads play orchestrators: each keeps root sessions busy, pinned to
a VM, running "model calls" (the model-call step: `call()` or
`begin_call`/`end_call`) that read and write context, recurse inside one
sandbox, and fan out: a call may start several sub-calls at once, each a
child session in its own thread with its own VM, all charging the root's
budget. A janitor thread removes expired sessions. At the end every ledger
must balance: the table's counters, every tree's token totals against what
was charged in it, each removal reported once (`on_remove`), every VM given
back or still assigned, and the refusal counters against what was refused.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from . import IMPLEMENTATION, _session_py
from ._results import SessionState
from .config import RlmConfig
from .errors import (
    InvalidSessionState,
    MaxExtensionsReached,
    MaxSnapshotsReached,
    RecursionDepthExceeded,
    SessionExpired,
    SessionNotFound,
    TimeBudgetExceeded,
    TokenBudgetExceeded,
)

try:
    from . import _session_c

    COMPILED: ModuleType | None = _session_c
except ImportError:  # not built
    COMPILED = None

# A session (or an ancestor) that is gone, expired or terminated: the task ends.
GONE = (SessionExpired, SessionNotFound, InvalidSessionState)
OVER = (TokenBudgetExceeded, TimeBudgetExceeded)
# What each counted refusal is called in SessionStats (docs/lifecycle.md).
REFUSAL_FIELD: dict[type, str] = {
    SessionNotFound: "rejected_not_found",
    InvalidSessionState: "rejected_terminated",
    SessionExpired: "rejected_expired",
    TokenBudgetExceeded: "rejected_tokens",
    TimeBudgetExceeded: "rejected_time",
    RecursionDepthExceeded: "rejected_depth",
}
REFUSAL_FIELDS = (
    "rejected_not_found", "rejected_invalid_token", "rejected_terminated", "rejected_expired",
    "rejected_tokens", "rejected_time", "rejected_depth",
)
# Refusals only the exceptions the workers caught can explain (validity
# refusals also come from is_session_valid returning False).
EXACT_REFUSALS = ("rejected_tokens", "rejected_time", "rejected_depth")


def pick_core(name: str) -> tuple[ModuleType, str]:
    """The session-core module for --core (auto: what `import rlm_fast` uses)."""
    if name == "auto":
        name = IMPLEMENTATION
    if name == "cython":
        if COMPILED is None:
            raise SystemExit("--core cython: the compiled core is not built")
        return COMPILED, name
    return _session_py, "python"


def demo_config() -> RlmConfig:
    # Short lives, so sessions expire, extend and get cleaned up in seconds;
    # depth room for trees three generations deep (each call takes a level).
    return RlmConfig(
        session_duration_secs=1,
        extension_increment_secs=1,
        max_extensions=1,
        token_budget=10_000,
        time_budget_ms=2_000,
        max_recursion_depth=7,
        max_snapshots_per_session=4,
    )


class Ledger:
    """What the orchestrator itself knows, written from every thread: each
    session it created (and its parent), the tokens each charge recorded,
    the VMs it assigned, and what `on_remove` reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards every field below
        self.parent: dict[Any, Any] = {}  # session id -> parent id (None: root)
        self.generation: dict[Any, int] = {}  # 0 for a root
        self.charged: Counter[Any] = Counter()  # tokens recorded on each session
        self.vms: dict[str, Any] = {}  # VM id -> session it was assigned to
        self.removed: dict[Any, Any] = {}  # id -> last SessionInfo (on_remove)
        self.removed_twice: list[Any] = []
        self.reasons: Counter[str] = Counter()
        self.vms_back: Counter[str] = Counter()  # VMs on_remove reported

    def created(self, sid: Any, parent: Any) -> int:
        with self.lock:
            self.parent[sid] = parent
            gen = 0 if parent is None else self.generation[parent] + 1
            self.generation[sid] = gen
            return gen

    def charge(self, sid: Any, tokens: int) -> None:
        with self.lock:
            self.charged[sid] += tokens

    def assigned(self, vm: str, sid: Any) -> None:
        with self.lock:
            self.vms[vm] = sid

    def on_remove(self, info: Any, reason: str) -> None:
        """The manager's on_remove: any thread, after the table's locks."""
        with self.lock:
            if info.id in self.removed:
                self.removed_twice.append(info.id)
            self.removed[info.id] = info
            self.reasons[reason] += 1
            if info.vm_instance_id is not None:
                self.vms_back[info.vm_instance_id] += 1

    def subtree_tokens(self) -> dict[Any, int]:
        """Tokens charged anywhere in each session's subtree (a charge
        counts on the session and every ancestor)."""
        total: Counter[Any] = Counter()
        for sid, tokens in self.charged.items():
            node = sid
            while node is not None:
                total[node] += tokens
                node = self.parent[node]
        return total


class Actor:
    """One orchestrator thread's work, or one sub-call's: its own counters
    and random stream; sub-calls run in threads of their own."""

    def __init__(self, run: Run, seed: int, name: str) -> None:
        self.run = run
        self.m = run.manager
        self.rng = random.Random(seed)
        self.name = name
        self.ops: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # REFUSAL_FIELD of each caught refusal
        self.vm_serial = 0
        self.children = 0
        self.deepest = 0

    def refusal(self, exc: BaseException) -> None:
        field = REFUSAL_FIELD.get(type(exc))
        if field is not None:
            self.refused[field] += 1
        else:
            self.ops["refused (extensions, snapshots)"] += 1

    def new_vm(self, sid: Any) -> None:
        """Pin the session to a VM of its own (unique name: none is shared)."""
        self.vm_serial += 1
        vm = f"vm-{self.name}-{self.vm_serial}"
        try:
            self.m.assign_vm(sid, vm)
        except GONE as exc:
            self.refusal(exc)
            return
        self.ops["assign_vm"] += 1
        self.run.ledger.assigned(vm, sid)

    def merge(self, other: Actor) -> None:
        self.ops.update(other.ops)
        self.refused.update(other.refused)
        self.children += other.children
        self.deepest = max(self.deepest, other.deepest)

    # -- one model call --------------------------------------------------------

    def model_call(self, sid: Any, generation: int, nested: int = 0) -> str:
        """One LLM request on `sid`: admitted, worked, charged. Returns "ok",
        "over" (a budget passed), "gone" (the session or an ancestor is no
        longer usable) or "refused" (depth). Never raises a refusal: every
        one is counted where it is caught, and every recorded charge goes
        in the ledger."""
        tokens = self.rng.randrange(10, 400)
        elapsed = self.rng.randrange(1, 40)
        if not self.run.step:
            return self.model_call_without_step(sid, generation, nested, tokens, elapsed)
        if self.rng.random() < 0.5:
            entered = False
            try:
                with self.m.call(sid) as c:
                    entered = True
                    self.ops["call() block"] += 1
                    self.body(sid, generation, nested)  # never raises a refusal
                    c.tokens = tokens
            except OVER as exc:
                self.refusal(exc)
                if entered:  # end_call raised: the charge stays recorded
                    self.run.ledger.charge(sid, tokens)
                return "over"
            except GONE as exc:  # begin_call or end_call: nothing recorded
                self.refusal(exc)
                return "gone"
            except RecursionDepthExceeded as exc:
                self.refusal(exc)
                return "refused"
            self.run.ledger.charge(sid, tokens)
            return "ok"
        try:
            self.m.begin_call(sid)
            self.ops["begin_call"] += 1
        except OVER as exc:
            self.refusal(exc)
            return "over"
        except GONE as exc:
            self.refusal(exc)
            return "gone"
        except RecursionDepthExceeded as exc:
            self.refusal(exc)
            return "refused"
        self.body(sid, generation, nested)
        try:
            self.m.end_call(sid, tokens=tokens, elapsed_ms=elapsed)
            self.ops["end_call"] += 1
        except OVER as exc:
            self.refusal(exc)
            self.run.ledger.charge(sid, tokens)
            return "over"
        except GONE as exc:
            self.refusal(exc)
            return "gone"
        self.run.ledger.charge(sid, tokens)
        return "ok"

    def model_call_without_step(
        self, sid: Any, generation: int, nested: int, tokens: int, elapsed: int
    ) -> str:
        """The same call on a core without begin_call/end_call: validate,
        recursion(), two charges."""
        m = self.m
        ok = m.is_session_valid(sid)
        self.ops["is_session_valid"] += 1
        if not ok:
            return "gone"
        try:
            with m.recursion(sid):
                self.ops["recursion() block"] += 1
                self.body(sid, generation, nested)
                try:
                    m.charge_tokens(sid, tokens)
                    self.ops["charge_tokens"] += 1
                except OVER:
                    self.run.ledger.charge(sid, tokens)  # recorded, then raised
                    raise
                self.run.ledger.charge(sid, tokens)
                m.charge_time(sid, elapsed)
                self.ops["charge_time"] += 1
        except OVER as exc:
            self.refusal(exc)
            return "over"
        except GONE as exc:
            self.refusal(exc)
            return "gone"
        except RecursionDepthExceeded as exc:
            self.refusal(exc)
            return "refused"
        return "ok"

    def body(self, sid: Any, generation: int, nested: int) -> None:
        """What a call does between admission and charge. Catches every
        refusal itself (so the charge that follows is always attempted and
        its outcome known)."""
        m, rng = self.m, self.rng
        try:
            m.set_context_variable(sid, "last_call", str(nested))
            self.ops["set_context_variable"] += 1
            m.check_budget(sid)
            self.ops["check_budget"] += 1
            m.get_assigned_vm(sid)
            self.ops["get_assigned_vm"] += 1
        except (*GONE, *OVER, RecursionDepthExceeded) as exc:
            self.refusal(exc)
            return
        if nested < 1 and rng.random() < 0.2:
            self.model_call(sid, generation, nested + 1)  # a nested call in the same sandbox
        if generation < self.run.max_generation and rng.random() < self.run.fanout_p:
            self.fan_out(sid, generation, rng.randint(2, self.run.fanout))

    # -- fan-out: sub-calls as child sessions, in parallel threads --------------

    def fan_out(self, parent: Any, generation: int, n: int) -> None:
        subs = [Actor(self.run, self.rng.randrange(2**32), f"{self.name}.{self.vm_serial}.{i}")
                for i in range(n)]
        self.vm_serial += 1
        threads = [threading.Thread(target=sub.sub_call_guarded, args=(parent, generation + 1),
                                    name=f"sub-{sub.name}", daemon=True) for sub in subs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.ops["fan-out"] += 1
        for sub in subs:
            self.merge(sub)

    def sub_call_guarded(self, parent: Any, generation: int) -> None:
        try:
            self.sub_call(parent, generation)
        except BaseException as exc:  # noqa: BLE001 (reported by main(), never swallowed)
            self.run.errors.append(exc)

    def sub_call(self, parent: Any, generation: int) -> None:
        """A sub-call in its own sandbox: a child session with its own VM,
        a few model calls charging up the tree, then (usually) done."""
        m = self.m
        try:
            child = m.create_child_session(parent)
        except (*GONE, *OVER, RecursionDepthExceeded) as exc:
            self.refusal(exc)
            return
        self.ops["create_child_session"] += 1
        self.run.ledger.created(child.id, parent)
        self.children += 1
        self.deepest = max(self.deepest, generation)
        self.new_vm(child.id)
        for _ in range(self.rng.randint(1, 3)):
            if self.model_call(child.id, generation) != "ok":
                break
        if self.rng.random() < 0.7:  # finished; else it goes with its root
            try:
                m.destroy_session(child.id)
                self.ops["destroy_session"] += 1
            except SessionNotFound as exc:  # removed with an expired ancestor
                self.refusal(exc)


class Worker(Actor):
    """One orchestrator thread: keeps `target` live root sessions busy."""

    def __init__(self, run: Run, index: int, target: int) -> None:
        super().__init__(run, index, f"w{index}")
        self.target = target
        self.thread = threading.Thread(target=self.guarded, name=f"worker-{index}", daemon=True)

    def guarded(self) -> None:
        try:
            self.loop()
        except BaseException as exc:  # noqa: BLE001 (reported by main(), never swallowed)
            self.run.errors.append(exc)

    def loop(self) -> None:
        m, ops, rng = self.m, self.ops, self.rng
        live: list[Any] = []
        while not self.run.stop.is_set():
            if len(live) < self.target:
                info = m.create_session()
                ops["create_session"] += 1
                self.run.ledger.created(info.id, None)
                self.new_vm(info.id)
                live.append(info.id)
                continue
            sid = live[rng.randrange(len(live))]
            outcome = self.model_call(sid, 0)
            if outcome == "gone":
                live.remove(sid)  # the janitor reaps it
                continue
            if outcome == "over":
                self.finish(sid)  # out of budget: the task ends
                live.remove(sid)
                continue
            roll = rng.random()
            try:
                if roll < 0.02:
                    m.extend_session(sid)
                    ops["extend_session"] += 1
                elif roll < 0.05:
                    m.record_snapshot_created(sid, f"snap-{rng.randrange(1000)}", True)
                    ops["record_snapshot_created"] += 1
                elif roll < 0.06:
                    m.update_session_state(sid, SessionState.PAUSED)
                    ops["update_session_state"] += 1
                elif roll < 0.07:
                    self.finish(sid)  # the task finished
                    live.remove(sid)
                elif roll < 0.08:
                    live.remove(sid)  # abandoned (a crashed client): it expires
            except GONE as exc:
                self.refusal(exc)
                live.remove(sid)
            except (MaxExtensionsReached, MaxSnapshotsReached) as exc:
                self.refusal(exc)

    def finish(self, sid: Any) -> None:
        try:
            self.m.destroy_session(sid)
            self.ops["destroy_session"] += 1
        except SessionNotFound as exc:  # the janitor got there first
            self.refusal(exc)


class Run:
    """One run of the job: the manager, the ledger, the threads."""

    def __init__(self, module: ModuleType, *, fanout: int, max_generation: int) -> None:
        self.ledger = Ledger()
        self.has_on_remove = True
        try:
            self.manager = module.SessionManager(demo_config(), on_remove=self.ledger.on_remove)
        except TypeError:  # a core without on_remove yet: those checks are skipped
            self.has_on_remove = False
            self.manager = module.SessionManager(demo_config())
        self.step = hasattr(self.manager, "begin_call") and hasattr(self.manager, "call")
        self.fanout = fanout
        self.fanout_p = 0.0 if fanout < 2 else 0.05
        self.max_generation = max_generation
        self.stop = threading.Event()
        self.errors: list[BaseException] = []


def _janitor(run: Run, ops: Counter[str]) -> Callable[[], None]:
    m = run.manager
    pop = getattr(m, "pop_expired_sessions", None)

    def sweep() -> None:
        turn = 0
        while not run.stop.wait(0.05):
            turn += 1
            if pop is not None and turn % 2:
                pop()
                ops["pop_expired_sessions"] += 1
            else:
                m.cleanup_expired_sessions()
                ops["cleanup_expired_sessions"] += 1

    return sweep


def _check(name: str, ok: bool, detail: str, failed: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
    if not ok:
        failed.append(name)


def _show(ids: Iterator[Any], n: int = 3) -> str:
    return ", ".join(str(i) for _, i in zip(range(n), ids))


def run(duration: float, threads: int, sessions: int, core: str, fanout: int = 4,
        max_generation: int = 3) -> int:
    module, core_name = pick_core(core)
    r = Run(module, fanout=fanout, max_generation=max_generation)
    manager, ledger = r.manager, r.ledger
    per_thread = max(1, sessions // threads)
    workers = [Worker(r, i, per_thread) for i in range(threads)]
    janitor_ops: Counter[str] = Counter()
    reaper = threading.Thread(target=_janitor(r, janitor_ops), name="janitor", daemon=True)
    started = time.perf_counter()
    for w in workers:
        w.thread.start()
    reaper.start()
    time.sleep(duration)
    r.stop.set()
    for t in [*(w.thread for w in workers), reaper]:
        t.join(timeout=60)
        if t.is_alive():
            print(f"error: thread {t.name} did not stop", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    if r.errors:
        raise r.errors[0]

    ops: Counter[str] = Counter(janitor_ops)
    refused: Counter[str] = Counter()
    children = deepest = 0
    for w in workers:
        ops.update(w.ops)
        refused.update(w.refused)
        children += w.children
        deepest = max(deepest, w.deepest)
    stats = manager.get_stats()
    infos = manager.list_sessions()
    live = {i.id: i for i in infos}
    with_vm = sum(1 for i in infos if i.vm_instance_id is not None)

    print(f"rlm_fast main job: core={core_name}, threads={threads}, "
          f"sessions={per_thread * threads}, fan-out up to {fanout} sub-calls, "
          f"duration={elapsed:.2f}s")
    if not r.step:
        print("  (this core has no begin_call/end_call yet: model calls use "
              "is_session_valid + recursion() + charges)")
    print(f"{'operation':<32}{'count':>10}{'ops/s':>14}")
    counted = {n: c for n, c in ops.items() if not n.startswith("refused")}
    for name, count in sorted(counted.items()):
        print(f"{name:<32}{count:>10}{count / elapsed:>14,.0f}")
    total = sum(counted.values())
    print(f"{'all operations':<32}{total:>10}{total / elapsed:>14,.0f}")
    roots = sum(1 for p in ledger.parent.values() if p is None)
    print(f"trees: {roots} roots, {children} child sessions created, "
          f"deepest tree {deepest} generation{'s' if deepest != 1 else ''} below its root")
    print(f"refused by a limit (extensions, snapshots): {ops['refused (extensions, snapshots)']}")

    failed: list[str] = []
    print("checks:")
    _check(
        "counters",
        stats.total_sessions_created
        == stats.total_sessions_destroyed + stats.total_sessions_expired + stats.active_sessions
        and stats.active_sessions == len(manager) == len(infos)
        and stats.sessions_with_vm == with_vm
        and stats.total_sessions_created == len(ledger.parent),
        f"created={stats.total_sessions_created} (the workers made {len(ledger.parent)}) "
        f"== destroyed={stats.total_sessions_destroyed} + expired={stats.total_sessions_expired}"
        f" + active={stats.active_sessions}; with_vm={stats.sessions_with_vm}",
        failed,
    )

    # Every tree's totals: each session's final tokens_used (its last state
    # as on_remove reported it, or its live state) == what was charged in
    # its subtree. Without on_remove only live sessions can be read.
    final = dict(ledger.removed)
    final.update(live)
    sums = ledger.subtree_tokens()
    wrong = [sid for sid, info in final.items()
             if info.budget_status.tokens_used != sums.get(sid, 0)]
    checked_roots = sum(1 for sid in final if ledger.parent.get(sid, 0) is None)
    _check(
        "trees balance",
        not wrong,
        f"{len(final)} sessions checked ({checked_roots} roots): tokens_used == the sum "
        f"charged in its subtree" + (f"; wrong: {_show(iter(wrong))}" if wrong else ""),
        failed,
    )

    if r.has_on_remove:
        reported = sum(ledger.reasons.values())
        gone = set(ledger.parent) - set(live)
        _check(
            "removals",
            reported == stats.total_sessions_destroyed + stats.total_sessions_expired
            and not ledger.removed_twice
            and set(ledger.removed) == gone
            and not set(ledger.removed) & set(live),
            "by reason " + ", ".join(f"{k}={v}" for k, v in sorted(ledger.reasons.items()))
            + f"; {reported} reported once each == destroyed + expired; every session "
            "created is removed or live",
            failed,
        )
        assigned = set(ledger.vms)
        held = {i.vm_instance_id for i in infos if i.vm_instance_id is not None}
        back = set(ledger.vms_back)
        twice = [v for v, n in ledger.vms_back.items() if n > 1]
        _check(
            "VMs",
            assigned == back | held and not back & held and not twice,
            f"{len(assigned)} assigned: {len(back)} given back (on_remove), "
            f"{len(held)} still assigned" + (f"; twice: {twice[:3]}" if twice else ""),
            failed,
        )
    else:
        print("  [skipped] removals and VMs: this core has no on_remove yet")

    if hasattr(stats, "rejected_tokens"):
        kinds = ", ".join(f"{f[len('rejected_'):]}={getattr(stats, f)}" for f in REFUSAL_FIELDS)
        mismatch = [f for f in EXACT_REFUSALS if getattr(stats, f) != refused[f]]
        _check(
            "refusals",
            not mismatch,
            f"{kinds}; tokens/time/depth == what the workers caught "
            f"({', '.join(f'{refused[f]}' for f in EXACT_REFUSALS)})"
            + (f"; differ: {mismatch}" if mismatch else ""),
            failed,
        )
    else:
        print("  [skipped] refusals: this core's SessionStats has no rejected_* counters yet")

    if failed:
        print(f"NOT BALANCED: {', '.join(failed)}")
        return 1
    print("BALANCED: counters, trees" + (", removals, VMs" if r.has_on_remove else "")
          + (", refusals" if hasattr(stats, "rejected_tokens") else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_fast",
        description="Run a simulated RLM orchestrator on the session table.",
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument(
        "--sessions", type=int, default=400, help="live root sessions kept busy (default 400)"
    )
    parser.add_argument(
        "--core", choices=["auto", "cython", "python"], default="auto",
        help="session core (default: the one `import rlm_fast` picked)",
    )
    parser.add_argument(
        "--fanout", type=int, default=4,
        help="most sub-calls (child sessions, one thread each) a model call starts; "
             "below 2: no fan-out (default 4)",
    )
    parser.add_argument(
        "--generations", type=int, default=3,
        help="deepest tree, in generations below the root (default 3)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.threads < 1 or args.sessions < 1:
        parser.error("--duration, --threads and --sessions must be positive")
    if args.generations < 0:
        parser.error("--generations must be 0 or more")
    return run(args.duration, args.threads, args.sessions, args.core, args.fanout,
               args.generations)
