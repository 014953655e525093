"""The dump file of a whole manager (docs/dump-format.md): JSON Lines with
a header, one crate serde document per session (a child's place in its tree
after it), and a checksummed trailer, written atomically; and the checks a
core makes on the rows it restores."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, Protocol, TypeVar

from ._checks import check_u32, check_u64, show_value
from ._json import _object, _u32, _u64, parse_json, to_json
from ._results import (
    SessionInfo,
    SessionStats,
    _compact_info,
    _id_text,
    _session_id_from,
    info_from_dict,
)
from ._registry import result_kind
from .config import RlmConfig
from .errors import ConfigError, Serialization

FORMAT_NAME = "rlm_fast.dump"
FORMAT_VERSION = 2  # 2: a child's line carries parent_id and start_depth
_READABLE_VERSIONS = (1, 2)
_HEADER_FIELDS = ("format", "version", "config", "created", "destroyed", "expired", "sessions")


_TRAILER_FIELDS = ("end", "sessions", "sha256")


# ---------------------------------------------------------------------------
# what a core may restore
# ---------------------------------------------------------------------------


def check_restore(infos: object, counters: object) -> list["SessionInfo"]:
    """The rows a core may restore (dump/load): SessionInfo objects with
    distinct ids and distinct VM ids, and three u64 counters."""
    if not isinstance(infos, (list, tuple)):
        raise TypeError("sessions must be a list of SessionInfo")
    rows: list[SessionInfo] = []
    ids: set[str] = set()
    vms: set[str] = set()
    for info in infos:
        if result_kind(info) != "SessionInfo":
            raise TypeError(f"a session row must be a SessionInfo, not {type(info).__name__}")
        sid = str(info.id)
        if sid in ids:
            raise ValueError(f"session {sid} appears twice")
        ids.add(sid)
        if info.vm_instance_id is not None:
            if not info.vm_instance_id:
                raise ValueError(f"session {sid} has an empty vm_instance_id")
            if info.vm_instance_id in vms:
                raise ValueError(f"VM {info.vm_instance_id!r} is held by two sessions")
            vms.add(info.vm_instance_id)
        rows.append(info)
    if not isinstance(counters, (list, tuple)) or len(counters) != 3:
        raise TypeError("counters must be (created, destroyed, expired)")
    created, destroyed, expired = (
        check_u64(c, n) for c, n in zip(counters, ("created", "destroyed", "expired"))
    )
    if created != destroyed + expired + len(rows):
        raise ValueError(
            "counters do not balance: created != destroyed + expired + sessions"
        )
    return rows


def check_tree(rows: list["SessionInfo"], start_depths: object) -> list[int]:
    """The start depths a core may restore with `rows` (docs/trees.md): one
    u32 per row, 0 for a root; every parent is a row, each root_id is the
    root of its chain (so there is no cycle), and a child starts at depth 1
    or more, no deeper than it is."""
    if start_depths is None:
        start_depths = [0] * len(rows)
    if not isinstance(start_depths, (list, tuple)) or len(start_depths) != len(rows):
        raise TypeError("start_depths must be a list with one int per session")
    starts = [check_u32(d, "start_depth") for d in start_depths]
    by_id = {str(info.id): info for info in rows}
    for info, start in zip(rows, starts):
        sid = str(info.id)
        if info.parent_id is None:
            if start != 0:
                raise ValueError(f"root session {sid} has a start depth")
            continue
        if not 1 <= start <= info.recursion_depth:
            raise ValueError(
                f"session {sid}: start depth {start} is not in 1..recursion_depth"
            )
        node, seen = info, {sid}
        while node.parent_id is not None:
            parent = by_id.get(str(node.parent_id))
            if parent is None:
                raise ValueError(f"session {sid}: parent {node.parent_id} is not in the table")
            if str(parent.id) in seen:
                raise ValueError(f"session {sid}: its parents form a cycle")
            seen.add(str(parent.id))
            node = parent
        if str(node.id) != str(info.root_id):
            raise ValueError(f"session {sid}: root_id is not the root of its parents")
    return starts


# ---------------------------------------------------------------------------
# dump / load
# ---------------------------------------------------------------------------


class _Manager(Protocol):
    """What dump/load need of a SessionManager (either core)."""

    @property
    def config(self) -> RlmConfig: ...

    def _export(self) -> tuple[list[SessionInfo], SessionStats, list[int]]: ...

    def _restore(
        self,
        infos: list[SessionInfo],
        counters: tuple[int, int, int],
        start_depths: list[int] | None = None,
    ) -> None: ...


_M = TypeVar("_M", bound=_Manager)


def dump(manager: _Manager, path: str | os.PathLike[str]) -> None:
    """Write every session and the counters to `path`, atomically
    (write_file), from the manager's `_export` made into a table that loads
    (settle). The compiled core writes its lines in C++ instead and calls
    write_file itself."""
    infos, stats, starts = manager._export()
    infos, starts, counters = settle(infos, stats, starts)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(infos), _BATCH):
            lines = [
                _dump_line(info, depth)
                for info, depth in zip(
                    infos[start : start + _BATCH], starts[start : start + _BATCH]
                )
            ]
            lines.append("")
            yield "\n".join(lines).encode("utf-8")

    write_file(path, manager.config, counters, len(infos), chunks())


def write_file(
    path: str | os.PathLike[str],
    config: RlmConfig,
    counters: tuple[int, int, int],
    sessions: int,
    chunks: Iterable[bytes],
) -> None:
    """Write a dump file of `sessions` session lines, given as `chunks` of
    whole UTF-8 lines each ending in a newline, atomically: the lines stream
    into a temp file in the same directory, which is fsynced and renamed
    over `path`, then the directory is fsynced. A crash at any moment leaves
    the old file or the new one, never a mix."""
    created, destroyed, expired = counters
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "created": created,
        "destroyed": destroyed,
        "expired": expired,
        "sessions": sessions,
    }
    try:
        head = (to_json(header) + "\n").encode("utf-8")
    except UnicodeEncodeError as exc:  # a config string with a lone surrogate
        raise Serialization(f"the config is not valid UTF-8: {exc}") from None
    digest = hashlib.sha256(head)
    with _atomic_file(os.fsdecode(path)) as f:
        f.write(head)
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
        trailer = {"end": FORMAT_NAME, "sessions": sessions, "sha256": digest.hexdigest()}
        f.write((to_json(trailer) + "\n").encode("ascii"))


_BATCH = 1024  # sessions per write


def settle(
    infos: list[SessionInfo], stats: Any, starts: list[int]
) -> tuple[list[SessionInfo], list[int], tuple[int, int, int]]:
    """An export read in pieces while the table changed (SPEC 15), made into
    a table that loads: a child whose parent (or an ancestor) was removed
    before it was read goes too; a VM that moved to a session read later is
    kept by that one only (rows are read in id order); `created` is set to
    destroyed + expired + sessions so the counters balance. An export read
    in one step passes unchanged."""
    present = {str(info.id): info for info in infos}
    keep: dict[str, bool] = {}

    def rooted(sid: str) -> bool:
        chain = []
        while sid not in keep:
            info = present.get(sid)
            if info is None:
                keep[sid] = False
                break
            if info.parent_id is None:
                keep[sid] = True
                break
            chain.append(sid)
            sid = str(info.parent_id)
        for link in chain:
            keep[link] = keep[sid]
        return keep[sid]

    rows: list[SessionInfo] = []
    depths: list[int] = []
    holder: dict[str, int] = {}
    for info, depth in zip(infos, starts):
        if info.parent_id is not None and not rooted(str(info.id)):
            continue
        vm = info.vm_instance_id
        if vm is not None:
            earlier = holder.get(vm)
            if earlier is not None:  # the VM moved on while the export ran
                fields = rows[earlier]._astuple()
                remake: Any = type(rows[earlier])
                rows[earlier] = remake(*fields[:7], None, *fields[8:])  # no VM
            holder[vm] = len(rows)
        rows.append(info)
        depths.append(depth)
    destroyed, expired = stats.total_sessions_destroyed, stats.total_sessions_expired
    return rows, depths, (destroyed + expired + len(rows), destroyed, expired)


_TREE_FIELDS = ("parent_id", "start_depth")


def _dump_line(info: SessionInfo, start_depth: int) -> str:
    """A session's dump line: the crate's serde document, and for a child
    its place in the tree after it (docs/trees.md)."""
    line = _compact_info(info)
    if info.parent_id is None:
        return line
    return f'{line[:-1]},"parent_id":"{_id_text(info.parent_id)}","start_depth":{int(start_depth)}}}'


def _load_line(line: str) -> tuple[SessionInfo, Any, int]:
    """A dump line's session (as a root), its parent's id (None for a root)
    and its start depth."""
    data = parse_json(line)
    if not (isinstance(data, dict) and "parent_id" in data):
        return info_from_dict(data), None, 0
    tree = {name: data.pop(name, None) for name in _TREE_FIELDS}
    info = info_from_dict(data)
    parent = _session_id_from(tree["parent_id"], "parent_id")
    return info, parent, _u32(tree["start_depth"], "start_depth")


def _link_trees(rows: list[tuple[SessionInfo, Any, int]]) -> list[tuple[SessionInfo, int]]:
    """The sessions with their parent and root ids set: each child's root is
    found by following parents (a missing parent or a cycle is refused)."""
    parents = {str(info.id): parent for info, parent, _ in rows}
    roots: dict[str, Any] = {}
    linked = []
    for info, parent, depth in rows:
        if parent is None:
            linked.append((info, depth))
            continue
        node, chain = parent, []
        while str(node) not in roots and parents.get(str(node)) is not None:
            chain.append(str(node))
            if len(chain) > len(rows):
                raise Serialization(f"session {info.id}: its parents form a cycle")
            node = parents[str(node)]
        if str(node) not in parents:
            raise Serialization(f"session {info.id}: parent {node} is not in the file")
        root = roots.get(str(node), node)
        for sid in chain:
            roots[sid] = root
        try:
            remake: Any = type(info)  # either core's SessionInfo, its 11 crate fields + links
            linked.append((remake(*info._astuple()[:11], parent_id=parent, root_id=root), depth))
        except ValueError as exc:
            raise Serialization(f"session {info.id}: {exc}") from None
    return linked


@contextlib.contextmanager
def _atomic_file(path: str) -> Iterator[BinaryIO]:
    """A temp file next to `path` that replaces it, durably, only when the
    block completes; on any error the temp file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name != "nt":  # Windows cannot open a directory to fsync it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        except OSError as exc:  # some file systems cannot fsync a directory
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        finally:
            os.close(dir_fd)


def load(
    cls: Callable[..., _M],
    path: str | os.PathLike[str],
    config: RlmConfig | None = None,
    *,
    clock: Callable[[], int] | None = None,
    restore_lines: Callable[[_M, bytes, int, int, int, tuple[int, int, int]], bool] | None = None,
) -> _M:
    """A new manager of class `cls` holding what `dump` wrote to `path`,
    with the dumped config unless `config` is given. The file is checked
    whole (trailer, checksum, counts, every line) before anything is built,
    so a bad file raises Serialization and never half-loads.

    `restore_lines(manager, data, start, end, count, counters)` (the
    compiled core's) may restore the session lines `data[start:end]` itself
    once the file-level checks passed: it returns False, having changed
    nothing, for any file it does not take whole, and the lines are then
    read here."""
    name = os.fsdecode(path)
    manager = None if config is None else cls(config, clock=clock)  # fail fast
    with open(name, "rb") as f:
        data = f.read()
    try:
        header, start, end = _check_file(data)
    except Serialization as exc:
        raise Serialization(f"{name}: {exc.message}") from None
    if manager is None:
        try:
            dumped = RlmConfig.from_dict(header["config"])
        except (ConfigError, TypeError) as exc:
            raise Serialization(f"{name}: line 1: config: {exc}") from None
        manager = cls(dumped, clock=clock)
    counters = (header["created"], header["destroyed"], header["expired"])
    if restore_lines is not None and restore_lines(
        manager, data, start, end, header["sessions"], counters
    ):
        return manager
    try:
        infos = _parse_lines(data[start:end])
    except Serialization as exc:
        raise Serialization(f"{name}: {exc.message}") from None
    try:
        manager._restore([info for info, _ in infos], counters, [d for _, d in infos])
    except (TypeError, ValueError) as exc:
        raise Serialization(f"{name}: inconsistent dump: {exc}") from None
    return manager


def _check_file(data: bytes) -> tuple[Mapping[str, Any], int, int]:
    """The checks on a dump file as a whole: trailer, checksum, UTF-8, the
    header and the counts. Returns the header and where the session lines
    are: `data[start:end]`, each line ending in a newline."""
    if not data:
        raise Serialization("empty file, not an rlm_fast dump")
    if not data.endswith(b"\n"):
        raise Serialization("truncated: the file does not end with its trailer line")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    if cut == 0:
        raise Serialization("truncated: the file has no trailer line")
    body = memoryview(data)[:cut]
    try:
        trailer = _object(parse_json(data[cut:-1]), _TRAILER_FIELDS, "trailer")
        if trailer["end"] != FORMAT_NAME:
            raise Serialization(f"`end` is not {FORMAT_NAME!r}")
        count = _u64(trailer["sessions"], "sessions")
    except Serialization as exc:
        raise Serialization(
            f"truncated or corrupted: the last line is not a valid trailer ({exc.message})"
        ) from None
    if trailer["sha256"] != hashlib.sha256(body).hexdigest():
        raise Serialization("corrupted: the sha256 in the trailer does not match the file")
    try:
        str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise Serialization(f"invalid UTF-8: {exc}") from None
    start = data.find(b"\n") + 1  # (cut > 0: the body has a newline)
    try:
        header = _object(parse_json(data[: start - 1].decode("utf-8")), _HEADER_FIELDS, "header")
        if header["format"] != FORMAT_NAME:
            raise Serialization(f"not an rlm_fast dump (format {show_value(header['format'])})")
        if type(header["version"]) is not int or header["version"] not in _READABLE_VERSIONS:
            raise Serialization(
                f"unsupported dump version {show_value(header['version'])} "
                f"(this rlm_fast reads version {FORMAT_VERSION})"
            )
        for field in ("created", "destroyed", "expired", "sessions"):
            _u64(header[field], field)
    except Serialization as exc:
        raise Serialization(f"line 1: {exc.message}") from None
    lines = data.count(b"\n", 0, cut) - 1  # the body ends with a newline
    if header["sessions"] != count or lines != count:
        raise Serialization(
            f"corrupted: session count mismatch: header {header['sessions']}, "
            f"trailer {count}, lines {lines}"
        )
    return header, start, cut


def _parse_lines(lines: bytes) -> list[tuple[SessionInfo, int]]:
    """The sessions of a dump's session lines (line numbers count the
    header as line 1), linked into their trees."""
    infos = []
    texts = lines.decode("utf-8").split("\n")
    texts.pop()  # the empty string after the last newline
    for number, line in enumerate(texts, start=2):
        try:
            infos.append(_load_line(line))
        except Serialization as exc:
            raise Serialization(f"line {number}: {exc.message}") from None
    return _link_trees(infos)
