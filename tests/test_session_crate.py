"""The unit tests of the crate's `session.rs`, ported, run against both cores.

Same configuration as the crate's `test_config()`: sessions last an hour,
extensions add half an hour, at most three extensions. Where the crate's test
only checked `is_ok()`, these assert the concrete values as well.
"""

from __future__ import annotations

import pytest

from rlm_fast import (
    MaxExtensionsReached,
    RecursionDepthExceeded,
    SessionNotFound,
    SessionState,
)

NS = 10**9


@pytest.fixture
def manager(make_manager):  # type: ignore[no-untyped-def]
    # The crate's test_config().
    return make_manager(
        session_duration_secs=3600, extension_increment_secs=1800, max_extensions=3
    )


def test_session_create_and_get(core, clock, manager) -> None:
    session = manager.create_session()
    assert session.state is SessionState.INITIALIZING
    assert isinstance(session.id, core.SessionId)
    assert session.created_at_ns == clock.now
    assert session.expires_at_ns == clock.now + 3600 * NS
    assert session.extension_count == 0
    assert session.recursion_depth == 0
    assert session.vm_instance_id is None
    assert dict(session.context_variables) == {}
    assert session.current_snapshot_id is None
    assert session.snapshot_count == 0

    retrieved = manager.get_session(session.id)
    assert retrieved.id == session.id
    assert retrieved == session


def test_session_validation(manager) -> None:
    session = manager.create_session()
    assert manager.is_session_valid(session.id) is True

    validated = manager.validate_session(session.id)
    assert validated.id == session.id
    assert validated == manager.get_session(session.id)


def test_session_extension(clock, manager) -> None:
    session = manager.create_session()
    original_expiry = session.expires_at_ns

    extended = manager.extend_session(session.id)
    assert extended.expires_at_ns == original_expiry + 1800 * NS
    assert extended.expires_at > session.expires_at
    assert extended.extension_count == 1

    # Test max extensions
    assert manager.extend_session(session.id).extension_count == 2
    third = manager.extend_session(session.id)
    assert third.extension_count == 3
    assert third.expires_at_ns == original_expiry + 3 * 1800 * NS

    with pytest.raises(MaxExtensionsReached) as excinfo:
        manager.extend_session(session.id)
    assert excinfo.value.max == 3
    assert str(excinfo.value.session_id) == str(session.id)
    # The refused extension changed nothing.
    after = manager.get_session(session.id)
    assert after.extension_count == 3
    assert after.expires_at_ns == original_expiry + 3 * 1800 * NS


def test_vm_affinity(manager) -> None:
    session = manager.create_session()
    assert manager.assign_vm(session.id, "vm-123") is None

    assert manager.get_assigned_vm(session.id) == "vm-123"
    assert manager.get_session_for_vm("vm-123") == session.id
    info = manager.get_session(session.id)
    assert info.vm_instance_id == "vm-123"
    assert info.state is SessionState.READY


def test_context_variables(manager) -> None:
    session = manager.create_session()
    assert manager.set_context_variable(session.id, "key1", "value1") is None

    assert manager.get_context_variable(session.id, "key1") == "value1"
    assert manager.get_context_variable(session.id, "missing") is None

    all_vars = manager.get_all_context_variables(session.id)
    assert len(all_vars) == 1
    assert all_vars == {"key1": "value1"}


def test_recursion_depth(make_manager) -> None:
    manager = make_manager(
        session_duration_secs=3600,
        extension_increment_secs=1800,
        max_extensions=3,
        max_recursion_depth=3,
    )
    session = manager.create_session()
    assert session.budget_status.max_recursion_depth == 3

    assert manager.increment_recursion_depth(session.id) == 1
    assert manager.increment_recursion_depth(session.id) == 2
    assert manager.increment_recursion_depth(session.id) == 3

    # Should fail on exceeding max depth
    with pytest.raises(RecursionDepthExceeded) as excinfo:
        manager.increment_recursion_depth(session.id)
    assert (excinfo.value.depth, excinfo.value.max_depth) == (4, 3)
    assert manager.get_session(session.id).recursion_depth == 3

    # Decrement should work
    assert manager.decrement_recursion_depth(session.id) == 2
    info = manager.get_session(session.id)
    assert info.recursion_depth == 2
    assert info.budget_status.current_recursion_depth == 2


def test_session_destroy(manager) -> None:
    session = manager.create_session()
    manager.assign_vm(session.id, "vm-456")

    stats_before = manager.get_stats()
    assert stats_before.active_sessions == 1
    assert stats_before.sessions_with_vm == 1

    # rlm_fast returns the removed session's last state (SPEC 12).
    removed = manager.destroy_session(session.id)
    assert removed.id == session.id and removed.vm_instance_id == "vm-456"

    stats_after = manager.get_stats()
    assert stats_after.active_sessions == 0
    assert stats_after.sessions_with_vm == 0
    assert stats_after.total_sessions_created == 1

    # VM mapping should be cleaned up
    assert manager.get_session_for_vm("vm-456") is None
    assert manager.get_assigned_vm(session.id) is None
    with pytest.raises(SessionNotFound):
        manager.get_session(session.id)
    with pytest.raises(SessionNotFound):
        manager.destroy_session(session.id)


def test_cleanup_expired_sessions(clock, manager) -> None:
    old = manager.create_session()
    manager.assign_vm(old.id, "vm-old")
    clock.advance(seconds=1800)
    young = manager.create_session()

    # Nothing has expired yet.
    assert manager.cleanup_expired_sessions() == []
    assert len(manager) == 2

    # `old` expires at +3600 s; one nanosecond later it is cleaned up.
    clock.advance(seconds=1800, ns=1)
    removed = manager.cleanup_expired_sessions()
    assert removed == [old.id]
    assert len(manager) == 1
    assert manager.get_session(young.id).id == young.id
    assert manager.get_session_for_vm("vm-old") is None
    stats = manager.get_stats()
    assert stats.active_sessions == 1
    assert stats.sessions_with_vm == 0
    assert stats.total_sessions_created == 2
    with pytest.raises(SessionNotFound):
        manager.get_session(old.id)

    # A second cleanup finds nothing new.
    assert manager.cleanup_expired_sessions() == []


def test_session_stats(manager) -> None:
    manager.create_session()
    manager.create_session()

    stats = manager.get_stats()
    assert stats.total_sessions_created == 2
    assert stats.active_sessions == 2
    assert stats.sessions_with_vm == 0


def test_snapshot_tracking(manager) -> None:
    # From the crate's later versions of session.rs.
    session = manager.create_session()

    assert manager.get_current_snapshot(session.id) is None
    assert manager.get_session(session.id).snapshot_count == 0

    manager.record_snapshot_created(session.id, "snap1", False)
    s = manager.get_session(session.id)
    assert s.snapshot_count == 1
    assert s.current_snapshot_id is None

    manager.record_snapshot_created(session.id, "snap2", True)
    s = manager.get_session(session.id)
    assert s.snapshot_count == 2
    assert s.current_snapshot_id == "snap2"

    manager.record_snapshot_restored(session.id, "snap1")
    assert manager.get_current_snapshot(session.id) == "snap1"
    assert manager.get_session(session.id).snapshot_count == 2

    manager.clear_snapshot_tracking(session.id)
    s = manager.get_session(session.id)
    assert s.snapshot_count == 0
    assert s.current_snapshot_id is None
