"""Leak check, run in a subprocess by test_leaks.py (STYLE habit 9).

    python leak_check.py MODULE SCENARIO N

MODULE is rlm_fast._session_c or rlm_fast._session_py; SCENARIO one of
"operations" (every public operation on its success path), "errors" (every
error path: exceptions are where C extensions leak), "churn" (create /
destroy / expire churn), "context" (context-variable and VM churn with
large values). Each operation runs N//10 times to warm up, then N times;
the growth of the resident set size over those N calls is measured after a
gc.collect(). Prints one JSON object: {"rss_growth": {operation: bytes}}.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import pickle
import sys
import time

NS = 10**9
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


def rss_bytes() -> int:
    """The resident set size now (Linux: /proc; elsewhere the peak RSS,
    which can only grow, so a leak still shows)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Clock:
    def __init__(self, now: int = 1_767_225_600 * NS) -> None:
        self.now = now
        self.mode = ""

    def __call__(self) -> object:
        if self.mode == "raise":
            raise KeyError("clock")
        if self.mode == "float":
            return 1.5
        return self.now


def expect(exc: type[BaseException], call, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        call(*args, **kwargs)
    except exc:
        return
    raise AssertionError(f"{call!r}{args!r} did not raise {exc.__name__}")


def operations(core, budget, rf):  # type: ignore[no-untyped-def]
    """(name, zero-argument callable) for every operation's success path."""
    clock = Clock()
    config = rf.RlmConfig(extension_increment_secs=0, max_extensions=2**32 - 1,
                          max_snapshots_per_session=0, max_recursion_depth=2**32 - 1)
    m = core.SessionManager(config, clock=clock)
    s = m.create_session().id
    text = str(s)
    other = core.SessionId.from_string(text)  # equal to s, another object
    for i in range(10):
        m.create_session()
    m.set_context_variable(s, "k", "v")
    status = core.BudgetStatus(token_budget=10**9, time_budget_ms=10**9)
    tracker = budget.BudgetTracker(config, clock=clock)
    info = m.get_session(s)
    info2 = m.get_session(s)

    def recursion() -> None:
        with m.recursion(s):
            pass

    def assign_twice() -> None:
        m.assign_vm(s, "vm-a")
        m.assign_vm(s, "vm-b")

    def depth_up_down() -> None:
        m.increment_recursion_depth(s)
        m.decrement_recursion_depth(s)

    def tracker_recursion() -> None:
        with tracker.recursion():
            pass

    ops = [
        ("create_destroy", lambda: m.destroy_session(m.create_session().id)),
        ("get_session", lambda: m.get_session(s)),
        ("get_session_by_str", lambda: m.get_session(text)),
        ("get_session_by_lower", lambda: m.get_session(text.lower())),
        ("update_session_state", lambda: m.update_session_state(s, "Executing")),
        ("is_session_valid", lambda: m.is_session_valid(s)),
        ("validate_session", lambda: m.validate_session(s)),
        ("extend_session", lambda: m.extend_session(s)),
        ("assign_vm", assign_twice),
        ("get_assigned_vm", lambda: m.get_assigned_vm(s)),
        ("get_session_for_vm", lambda: m.get_session_for_vm("vm-b")),
        ("release_vm", lambda: (m.assign_vm(s, "vm-c"), m.release_vm(s))),
        ("set_context_variable", lambda: m.set_context_variable(s, "k", "value")),
        ("get_context_variable", lambda: m.get_context_variable(s, "k")),
        ("get_all_context_variables", lambda: m.get_all_context_variables(s)),
        ("delete_context_variable", lambda: (m.set_context_variable(s, "d", "x"),
                                             m.delete_context_variable(s, "d"))),
        ("update_budget", lambda: m.update_budget(s, status)),
        ("increment_decrement_depth", depth_up_down),
        ("recursion", recursion),
        ("charge_tokens", lambda: m.charge_tokens(s, 0)),
        ("charge_time", lambda: m.charge_time(s, 0)),
        ("check_budget", lambda: m.check_budget(s)),
        ("record_snapshot_created", lambda: m.record_snapshot_created(s, "snap", True)),
        ("record_snapshot_restored", lambda: m.record_snapshot_restored(s, "snap-r")),
        ("get_current_snapshot", lambda: m.get_current_snapshot(s)),
        ("clear_snapshot_tracking", lambda: m.clear_snapshot_tracking(s)),
        ("cleanup_expired_sessions", lambda: m.cleanup_expired_sessions()),
        ("get_stats", lambda: m.get_stats()),
        ("list_sessions", lambda: m.list_sessions()),
        ("len_contains", lambda: (len(m), s in m, text in m, "nope" in m)),
        ("session_id_new", lambda: core.SessionId()),
        ("session_id_parse_format", lambda: str(core.SessionId.from_string(text))),
        ("session_id_bytes_int", lambda: core.SessionId.from_int(int(core.SessionId.from_bytes(s.bytes)))),
        ("session_id_misc", lambda: (repr(s), hash(s), s.timestamp_ms, s.datetime, s == other, s < other)),
        ("session_id_pickle", lambda: pickle.loads(pickle.dumps(s))),
        ("session_info_fields", lambda: (info.id, info.state, info.created_at, info.budget_status,
                                         info.vm_instance_id, dict(info.context_variables),
                                         info.current_snapshot_id, info == info2, repr(info))),
        ("session_info_json", lambda: core.SessionInfo.from_json(info.to_json())),
        ("session_info_pickle", lambda: pickle.loads(pickle.dumps(info))),
        ("budget_status", lambda: (core.BudgetStatus(1, 2, 3, 4, 5, 6).replace(tokens_used=1),
                                   status.is_exhausted(), repr(status))),
        ("tracker_add_tokens", lambda: tracker.add_tokens(0)),
        ("tracker_status", lambda: (tracker.status(), tracker.check_all(), tracker.is_near_exhaustion())),
        ("tracker_getters", lambda: (tracker.tokens_used(), tracker.tokens_remaining(),
                                     tracker.elapsed_ms(), tracker.time_remaining_ms(),
                                     tracker.current_depth(), tracker.depth_remaining(), repr(tracker))),
        ("tracker_push_pop", lambda: (tracker.push_recursion(), tracker.pop_recursion())),
        ("tracker_recursion", tracker_recursion),
        ("tracker_child", lambda: tracker.child()),
        ("tracker_from_status", lambda: budget.BudgetTracker.from_status(status, clock=clock)),
        ("manager_new", lambda: core.SessionManager(config, clock=clock)),
    ]
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    else:
        ops += [
            ("validate_many", lambda: m.validate_many([s, text, "nope"])),
            ("budget_table", lambda: m.budget_table()),
        ]
    return ops


def errors(core, budget, rf):  # type: ignore[no-untyped-def]
    """(name, zero-argument callable) for every error path; each callable
    checks that its call raised."""
    E = rf
    clock = Clock()
    config = rf.RlmConfig(token_budget=10, time_budget_ms=10, max_recursion_depth=1,
                          max_extensions=0, max_snapshots_per_session=1,
                          session_duration_secs=3600)
    m = core.SessionManager(config, clock=clock)
    s = m.create_session().id
    term = m.create_session().id
    m.update_session_state(term, "Terminated")
    unknown = core.SessionId.from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    # over budget (tokens and time), depth at max, snapshots at max
    over = m.create_session().id
    expect(E.TokenBudgetExceeded, m.charge_tokens, over, 11)
    expect(E.TimeBudgetExceeded, m.charge_time, over, 11)
    m.increment_recursion_depth(over)
    m.record_snapshot_created(over, "snap")
    full = m.create_session().id
    m.update_budget(full, core.BudgetStatus(tokens_used=U64_MAX, time_used_ms=U64_MAX,
                                            token_budget=U64_MAX, time_budget_ms=U64_MAX))
    # an expired session (own clock), and one whose extension would overflow
    old_clock = Clock()
    old = core.SessionManager(rf.RlmConfig(session_duration_secs=1), clock=old_clock)
    gone = old.create_session().id
    old_clock.now += 2 * NS
    edge_clock = Clock(I64_MAX - 3600 * NS)
    edge = core.SessionManager(rf.RlmConfig(session_duration_secs=3600), clock=edge_clock)
    near = edge.create_session().id  # expires at exactly I64_MAX
    edge_clock.now += 1  # now a create would pass I64_MAX; `near` is still live
    bad_clock = Clock()
    flaky = core.SessionManager(rf.RlmConfig(), clock=bad_clock)
    fs = flaky.create_session().id
    tracker = budget.BudgetTracker(rf.RlmConfig(token_budget=0, time_budget_ms=0,
                                                max_recursion_depth=0), clock=clock)
    tracker.add_tokens(0)

    def with_bad_clock(mode, exc, call, *args):  # type: ignore[no-untyped-def]
        bad_clock.mode = mode
        try:
            expect(exc, call, *args)
        finally:
            bad_clock.mode = ""

    def recursion_refused() -> None:
        try:
            with m.recursion(over):
                raise AssertionError("entered")
        except E.RecursionDepthExceeded:
            pass

    return [
        ("session_not_found", lambda: expect(E.SessionNotFound, m.get_session, unknown)),
        ("session_not_found_write", lambda: expect(E.SessionNotFound, m.charge_tokens, unknown, 1)),
        ("destroy_unknown", lambda: expect(E.SessionNotFound, m.destroy_session, unknown)),
        ("invalid_token_short", lambda: expect(E.InvalidSessionToken, m.get_session, "nope")),
        ("invalid_token_long", lambda: expect(E.InvalidSessionToken, m.get_session, "\ud800" * 500)),
        ("invalid_token_26", lambda: expect(E.InvalidSessionToken, m.charge_time, "8" * 26, 1)),
        ("id_type_error", lambda: expect(TypeError, m.get_session, 12345)),
        ("is_session_valid_malformed", lambda: m.is_session_valid("nope")),
        ("invalid_session_state", lambda: expect(E.InvalidSessionState, m.assign_vm, term, "vm-x")),
        ("state_terminated_again", lambda: expect(E.InvalidSessionState, m.update_session_state, term, "Ready")),
        ("session_expired", lambda: expect(E.SessionExpired, old.validate_session, gone)),
        ("session_expired_write", lambda: expect(E.SessionExpired, old.set_context_variable, gone, "k", "v")),
        ("max_extensions", lambda: expect(E.MaxExtensionsReached, m.extend_session, s)),
        ("extend_overflow", lambda: expect(E.ConfigError, edge.extend_session, near)),
        ("create_overflow", lambda: expect(E.ConfigError, edge.create_session)),
        ("recursion_depth", lambda: expect(E.RecursionDepthExceeded, m.increment_recursion_depth, over)),
        ("recursion_refused", recursion_refused),
        ("max_snapshots", lambda: expect(E.MaxSnapshotsReached, m.record_snapshot_created, over, "s2")),
        ("token_budget", lambda: expect(E.TokenBudgetExceeded, m.charge_tokens, over, 0)),
        ("time_budget", lambda: expect(E.TimeBudgetExceeded, m.charge_time, over, 0)),
        ("check_budget", lambda: expect(E.TokenBudgetExceeded, m.check_budget, over)),
        ("charge_overflow", lambda: expect(ValueError, m.charge_tokens, full, 1)),
        ("charge_time_overflow", lambda: expect(ValueError, m.charge_time, full, 1)),
        ("charge_negative", lambda: expect(ValueError, m.charge_tokens, s, -1)),
        ("charge_huge", lambda: expect(ValueError, m.charge_tokens, s, 10**100)),
        ("charge_float", lambda: expect(TypeError, m.charge_time, s, 1.5)),
        ("charge_bool", lambda: expect(TypeError, m.charge_tokens, s, True)),
        ("vm_empty", lambda: expect(ValueError, m.assign_vm, s, "")),
        ("vm_surrogate", lambda: expect(ValueError, m.assign_vm, s, "vm-\ud800")),
        ("vm_type", lambda: expect(TypeError, m.assign_vm, s, b"vm")),
        ("vm_lookup_type", lambda: expect(TypeError, m.get_session_for_vm, None)),
        ("context_key_type", lambda: expect(TypeError, m.set_context_variable, s, 1, "v")),
        ("context_value_surrogate", lambda: expect(ValueError, m.set_context_variable, s, "k", "\udc80" * 100)),
        ("snapshot_type", lambda: expect(TypeError, m.record_snapshot_restored, s, None)),
        ("set_as_current_type", lambda: expect(TypeError, m.record_snapshot_created, s, "x", 1)),
        ("state_value", lambda: expect(ValueError, m.update_session_state, s, "ready")),
        ("state_type", lambda: expect(TypeError, m.update_session_state, s, 1)),
        ("budget_type", lambda: expect(TypeError, m.update_budget, s, (1, 2))),
        ("clock_raises", lambda: with_bad_clock("raise", KeyError, flaky.charge_tokens, fs, 1)),
        ("clock_float", lambda: with_bad_clock("float", TypeError, flaky.create_session)),
        ("from_string", lambda: expect(E.InvalidSessionToken, core.SessionId.from_string, "x" * 30)),
        ("from_string_type", lambda: expect(TypeError, core.SessionId.from_string, b"x")),
        ("from_bytes", lambda: expect(ValueError, core.SessionId.from_bytes, b"x" * 15)),
        ("from_int", lambda: expect(ValueError, core.SessionId.from_int, -1)),
        ("manager_config_error", lambda: expect(E.ConfigError, core.SessionManager, rf.RlmConfig(token_budget=-1))),
        ("manager_type_error", lambda: expect(TypeError, core.SessionManager, {})),
        ("budget_status_value", lambda: expect(ValueError, core.BudgetStatus, 2**64)),
        ("tracker_add_tokens", lambda: expect(E.TokenBudgetExceeded, tracker.add_tokens, 1)),
        ("tracker_checks", lambda: (expect(E.TokenBudgetExceeded, tracker.check_token_budget),
                                    expect(E.TimeBudgetExceeded, tracker.check_time_budget),
                                    expect(E.TokenBudgetExceeded, tracker.check_all))),
        ("tracker_push", lambda: expect(E.RecursionDepthExceeded, tracker.push_recursion)),
        ("tracker_bad_input", lambda: expect(ValueError, tracker.add_tokens, -1)),
        ("tracker_child_bad", lambda: expect(TypeError, tracker.child, 1.5)),
        ("tracker_from_status_bad", lambda: expect(TypeError, budget.BudgetTracker.from_status, None)),
    ]


def churn(core, budget, rf):  # type: ignore[no-untyped-def]
    clock = Clock()
    m = core.SessionManager(rf.RlmConfig(session_duration_secs=1), clock=clock)
    vm_ids = [f"vm-{i}" for i in range(100)]
    counter = [0]

    def create_destroy_with_everything() -> None:
        s = m.create_session().id
        counter[0] += 1
        m.assign_vm(s, vm_ids[counter[0] % 100])
        m.set_context_variable(s, "k", "v" * 100)
        m.record_snapshot_created(s, "snap", True)
        m.destroy_session(s)

    def create_and_expire() -> None:
        for _ in range(10):
            s = m.create_session().id
            m.assign_vm(s, vm_ids[counter[0] % 100])
            counter[0] += 1
        clock.now += 2 * NS
        assert len(m.cleanup_expired_sessions()) == 10

    def vm_moves() -> None:
        a = m.create_session().id
        b = m.create_session().id
        m.assign_vm(a, "vm-move")
        m.assign_vm(b, "vm-move")  # the VM moves: a loses it
        m.assign_vm(b, "vm-other")  # the session moves
        m.destroy_session(a)
        m.destroy_session(b)

    def whole_managers() -> None:
        x = core.SessionManager(rf.RlmConfig(), clock=clock)
        for _ in range(5):
            s = x.create_session().id
            x.assign_vm(s, f"vm-{_}")
            x.set_context_variable(s, "k", "v")
        del x  # the table goes with its manager

    return [
        ("create_destroy_with_everything", create_destroy_with_everything),
        ("create_and_expire_x10", create_and_expire),
        ("vm_moves", vm_moves),
        ("whole_managers", whole_managers),
    ]


def context(core, budget, rf):  # type: ignore[no-untyped-def]
    clock = Clock()
    m = core.SessionManager(rf.RlmConfig(), clock=clock)
    s = m.create_session().id
    big = ["x" * (64 << 10) + str(i) for i in range(8)]  # 64 KiB values
    counter = [0]

    def set_big() -> None:
        counter[0] += 1
        i = counter[0]
        m.set_context_variable(s, f"key-{i % 20}", big[i % 8])

    def set_delete_big() -> None:
        counter[0] += 1
        key = f"tmp-{counter[0]}"
        m.set_context_variable(s, key, big[counter[0] % 8])
        assert m.delete_context_variable(s, key) is not None

    def read_all_big() -> None:
        m.get_all_context_variables(s)

    def info_big() -> None:
        assert len(m.get_session(s).context_variables) > 0

    def long_vm_ids() -> None:
        counter[0] += 1
        m.assign_vm(s, big[counter[0] % 8][:4096] + str(counter[0] % 50))

    def unicode_values() -> None:
        counter[0] += 1
        m.set_context_variable(s, "\U0001f600" * 100, "é" * (counter[0] % 5000))

    return [
        ("set_64k_values_20_keys", set_big),
        ("set_delete_64k_values", set_delete_big),
        ("get_all_context_variables_1300k", read_all_big),
        ("session_info_1300k", info_big),
        ("long_vm_ids", long_vm_ids),
        ("unicode_values", unicode_values),
    ]


SCENARIOS = {"operations": operations, "errors": errors, "churn": churn, "context": context}


def main() -> None:
    module, scenario, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    core = importlib.import_module(module)
    budget = importlib.import_module(module.replace("_session_", "_budget_"))
    import rlm_fast

    ops = SCENARIOS[scenario](core, budget, rlm_fast)
    # Each call of these does ten (churn) or ~50 (context: 64 KiB values)
    # operations' worth of work.
    n = max(1, n // {"churn": 10, "context": 50}.get(scenario, 1))
    growth = {}
    t0 = time.perf_counter()
    for name, call in ops:
        for _ in range(max(1, n // 10)):
            call()
        gc.collect()
        before = rss_bytes()
        for _ in range(n):
            call()
        gc.collect()
        growth[name] = rss_bytes() - before
    print(json.dumps({
        "module": module, "scenario": scenario, "n": n, "operations": len(ops),
        "seconds": round(time.perf_counter() - t0, 1), "rss_growth": growth,
    }))


if __name__ == "__main__":
    main()
