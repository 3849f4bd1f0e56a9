"""Snapshots: the engine's state at a journal seq, written atomically, loaded with fallback.

A snapshot is taken as a sequenced command, so it lands at a consistent point: it covers every
journal record up to and including its ``seq``, and recovery is "load the newest valid snapshot,
then replay the journal after its seq". The payload is opaque bytes (the engine's encoding).

One file per snapshot, ``snapshot-{seq:020d}.snap`` (so names sort by seq)::

    32-byte header  magic b"KILATSNP" | u16 version | u16 reserved | u32 CRC-32 of payload
                    | u64 seq | u64 payload length            (little-endian)
    payload

A snapshot is written to a temporary file in the same directory, fsynced, renamed into place and
the directory fsynced, so a crash leaves either the whole snapshot or none of it (plus, at worst,
a stray ``.tmp`` file that loading ignores and pruning removes). See ``docs/journal.md``.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

__all__ = [
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "SnapshotCorruptError",
    "list_snapshots",
    "load_latest_snapshot",
    "prune_snapshots",
    "read_snapshot",
    "snapshot_path",
    "write_snapshot",
]

log = logging.getLogger("kilat.journal")

SNAPSHOT_MAGIC = b"KILATSNP"
SNAPSHOT_VERSION = 1

# magic | version | reserved (0) | CRC-32 of payload | seq | payload length
_HEADER = struct.Struct("<8sHHIQQ")
SNAPSHOT_HEADER_SIZE = _HEADER.size  # 32

_NAME = re.compile(r"snapshot-(\d{20})\.snap")
_TMP_SUFFIX = ".tmp"
_MAX_SEQ = 2**64 - 1


class SnapshotCorruptError(Exception):
    """A snapshot file is not what its name and header promise. ``path`` and ``reason`` kept."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"snapshot {self.path} is damaged: {reason}")


# -- WRITING -------------------------------------------------------------------------------------


def snapshot_path(directory: Path | str, seq: int) -> Path:
    """Where the snapshot at ``seq`` lives."""
    return Path(directory) / f"snapshot-{seq:020d}.snap"


def write_snapshot(directory: Path | str, seq: int, payload: bytes) -> Path:
    """Write the snapshot at journal ``seq`` atomically and durably; returns its path.

    O(len(payload)) plus two fsyncs. Creates ``directory`` if needed. An existing snapshot at the
    same seq is replaced atomically.
    """
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"snapshot seq must be in 0..2**64-1, got {seq}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = snapshot_path(directory, seq)
    tmp = final.with_name(f"{final.name}.{os.getpid()}{_TMP_SUFFIX}")
    header = _HEADER.pack(
        SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, zlib.crc32(payload), seq, len(payload)
    )
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)  # not concatenated: a snapshot may be large
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return final


# -- READING -------------------------------------------------------------------------------------


def list_snapshots(directory: Path | str) -> list[tuple[int, Path]]:
    """``(seq, path)`` of every snapshot file in ``directory``, oldest first. Not validated.

    O(files in the directory). A missing directory has no snapshots.
    """
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    found.sort()
    return found


def read_snapshot(path: Path | str) -> tuple[int, bytes]:
    """Read and verify one snapshot file; returns ``(seq, payload)``.

    Raises ``SnapshotCorruptError`` if the header, length, CRC or seq (against the file name) is
    wrong. O(file size).
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < SNAPSHOT_HEADER_SIZE:
        raise SnapshotCorruptError(
            path, f"expected a {SNAPSHOT_HEADER_SIZE}-byte header, the file has {len(data)} bytes"
        )
    magic, version, _reserved, crc, seq, length = _HEADER.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorruptError(path, f"expected magic {SNAPSHOT_MAGIC!r}, found {magic!r}")
    if version != SNAPSHOT_VERSION:
        raise SnapshotCorruptError(
            path, f"unsupported snapshot version {version}, expected {SNAPSHOT_VERSION}"
        )
    actual_length = len(data) - SNAPSHOT_HEADER_SIZE
    if length != actual_length:
        raise SnapshotCorruptError(
            path, f"header says {length} payload bytes, the file holds {actual_length}"
        )
    match = _NAME.fullmatch(path.name)
    if match and int(match.group(1)) != seq:
        raise SnapshotCorruptError(
            path, f"header says seq {seq}, the file name says {int(match.group(1))}"
        )
    payload = data[SNAPSHOT_HEADER_SIZE:]
    actual_crc = zlib.crc32(payload)
    if actual_crc != crc:
        raise SnapshotCorruptError(
            path, f"payload CRC mismatch: stored 0x{crc:08x}, computed 0x{actual_crc:08x}"
        )
    return seq, payload


def load_latest_snapshot(directory: Path | str) -> tuple[int, bytes] | None:
    """``(seq, payload)`` of the newest valid snapshot, or ``None`` if there is none.

    A damaged snapshot is skipped with a WARNING on ``kilat.journal`` and the next older one is
    tried; recovery then replays more of the journal. Cost: reads newest-first until one is valid.
    """
    for seq, path in reversed(list_snapshots(directory)):
        try:
            return read_snapshot(path)
        except (SnapshotCorruptError, OSError) as exc:
            log.warning("skipping snapshot at seq %d: %s; trying an older one", seq, exc)
    return None


# -- HOUSEKEEPING --------------------------------------------------------------------------------


def prune_snapshots(directory: Path | str, keep: int = 3) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots, and stray temporary files; returns the
    deleted paths.

    The newest *valid* snapshot is always kept, even if damaged newer ones fill the ``keep``
    slots (finding it reads the newest snapshots until one verifies, usually just the newest).
    Call it from the thread that writes snapshots (a temporary file of a concurrent
    ``write_snapshot`` would be removed). Journal records up to the oldest kept snapshot's seq
    are then no longer needed for recovery.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    directory = Path(directory)
    snapshots = list_snapshots(directory)
    kept = {path for _, path in snapshots[-keep:]}
    for _, path in reversed(snapshots):
        try:
            read_snapshot(path)
        except (SnapshotCorruptError, OSError):
            continue
        kept.add(path)  # the newest valid one
        break
    removed = [path for _, path in snapshots if path not in kept]
    if directory.is_dir():
        removed += [
            directory / name
            for name in os.listdir(directory)
            if name.startswith("snapshot-") and name.endswith(_TMP_SUFFIX)
        ]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        _fsync_directory(directory)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (AttributeError, OSError):  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
