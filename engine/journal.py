"""The journal: an append-only file of sequenced, CRC-checked records, with group commit.

The journal is payload-agnostic: it stores opaque ``bytes`` (the engine's msgpack-encoded inputs),
each under a strictly increasing sequence number that the writer assigns. The on-disk format and
the recovery rules are documented byte by byte in ``docs/journal.md``; in short::

    file header  16 bytes  magic b"KILATJNL" | u16 version | u16 reserved | u32 reserved
    record       16 bytes  u32 payload length | u32 CRC-32 | u64 seq       (then the payload)

all little-endian, the CRC-32 (``zlib.crc32``) taken over the record's 8 seq bytes followed by
its payload (they are adjacent on disk, so one call covers both).

Writing is a group commit: ``append`` only buffers (no syscall), ``commit`` makes one ``write()``
of the whole batch and one ``fsync``. Replies for a batch go out after its ``commit`` returns.

Recovery rules (the reader applies them, the writer acts on them when it reopens a file):

- a record cut short by end of file, or a record whose CRC fails and which ends exactly at end of
  file, or a bad record followed only by zero bytes, is a *torn tail*: the last write did not
  finish. Reading stops before it with a warning; the writer truncates it away.
- anything else that is wrong -- a bad CRC, an impossible length, a sequence number that does not
  increase, with data after it -- is corruption of durable data: ``JournalCorruptError``, naming
  the file, the byte offset and what was wrong. Nothing is ever truncated in that case.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

try:  # POSIX advisory locks keep a second writer off the same journal.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms run without the lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "FILE_HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD_SIZE",
    "RECORD_HEADER_SIZE",
    "JournalCorruptError",
    "JournalError",
    "JournalInfo",
    "JournalReader",
    "JournalWriter",
    "read_journal",
    "scan_journal",
]

log = logging.getLogger("kilat.journal")

MAGIC = b"KILATJNL"
FORMAT_VERSION = 1

# magic | version | reserved (flags, 0) | reserved (0)
_FILE_HEADER = struct.Struct("<8sHHI")
# payload length | CRC-32 over seq bytes + payload | seq
_RECORD_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")

FILE_HEADER_SIZE = _FILE_HEADER.size  # 16
RECORD_HEADER_SIZE = _RECORD_HEADER.size  # 16
_CRC_START = 8  # the CRC covers the record from its seq field to the end of its payload

# A length above this is impossible (the writer refuses such payloads), so it is corruption even
# at the tail. It also bounds how much good data a corrupted length field can hide as a "torn
# tail": a flipped high bit points past this limit and is reported, not truncated.
MAX_PAYLOAD_SIZE = 64 * 1024 * 1024

_HEADER_BYTES = _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0)


# -- ERRORS --------------------------------------------------------------------------------------


class JournalError(Exception):
    """Misuse of a journal or a failure that leaves a writer unusable."""


class JournalCorruptError(JournalError):
    """The journal holds data that is not a valid record and is not a torn tail.

    Attributes: ``path``; ``offset``, the byte offset of the bad record (or header); ``seq``, the
    seq its header states (``None`` for a file-header problem; untrusted, since the record is
    bad); ``last_good_seq``, the seq of the last good record before it; ``reason``.
    """

    def __init__(
        self,
        path: Path | str,
        offset: int,
        reason: str,
        seq: int | None = None,
        last_good_seq: int | None = None,
    ):
        self.path = Path(path)
        self.offset = offset
        self.reason = reason
        self.seq = seq
        self.last_good_seq = last_good_seq
        where = f"{self.path} at byte offset {offset}"
        if seq is not None:
            where += f" (record header says seq {seq}; last good record is seq {last_good_seq})"
        super().__init__(
            f"journal corrupt: {where}: {reason}; refusing to recover past it "
            "(restore the file from a replica or backup, or cut it by hand at this offset)"
        )


# -- READING -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """What a full scan of a journal found. Seq fields are 0 when the journal has no records."""

    path: Path
    first_seq: int
    last_seq: int
    records: int
    good_end_offset: int  # end of the last good record (the header size if none)
    torn_bytes: int  # bytes after good_end_offset that belong to a torn tail (0 if none)

    @property
    def torn_tail_offset(self) -> int | None:
        return self.good_end_offset if self.torn_bytes else None


class JournalReader:
    """Iterate over ``(seq, payload)`` records of a journal file, verifying every record.

    The file is read in one go (memory = file size) when iteration starts. Records with
    ``seq <= after_seq`` are verified but not yielded. After iteration finishes, ``records``,
    ``first_seq``, ``last_seq``, ``good_end_offset``, ``torn_tail_offset`` and ``torn_bytes``
    describe the whole file (not only the yielded part). Cost: O(file size).

    A torn tail ends iteration with a WARNING on the ``kilat.journal`` logger; corruption raises
    ``JournalCorruptError``. The reader never modifies the file.
    """

    def __init__(self, path: Path | str, after_seq: int = 0, *, warn_torn_tail: bool = True):
        self.path = Path(path)
        self.after_seq = after_seq
        self.warn_torn_tail = warn_torn_tail
        self.records = 0
        self.first_seq = 0
        self.last_seq = 0
        self.good_end_offset = 0
        self.torn_tail_offset: int | None = None
        self.torn_bytes = 0
        self.torn_reason: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            buf = f.read()
        return self._walk(buf)

    def info(self) -> JournalInfo:
        """The scan result; valid once iteration has finished."""
        return JournalInfo(
            path=self.path,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            records=self.records,
            good_end_offset=self.good_end_offset,
            torn_bytes=self.torn_bytes,
        )

    def _walk(self, buf: bytes) -> Iterator[tuple[int, bytes]]:
        self.torn_tail_offset = None
        self.torn_bytes = 0
        self.torn_reason = None
        off = _check_file_header(self.path, buf)
        end = len(buf)
        after_seq = self.after_seq
        unpack_from = _RECORD_HEADER.unpack_from
        crc32 = zlib.crc32
        head = RECORD_HEADER_SIZE
        max_len = MAX_PAYLOAD_SIZE
        prev = 0
        count = 0
        try:
            while off < end:
                if off + head > end:
                    self._torn(buf, off, "record header cut short by end of file")
                    break
                length, crc, seq = unpack_from(buf, off)
                stop = off + head + length
                if (
                    length > max_len
                    or stop > end
                    or crc32(buf[off + _CRC_START : stop]) != crc
                    or seq <= prev
                ):
                    self._bad_record(buf, off, length, crc, seq, prev)
                    break
                # Count the record before yielding it, so the totals are right even when the
                # consumer stops right after it.
                prev = seq
                count += 1
                off = stop
                if seq > after_seq:
                    yield seq, buf[stop - length : stop]
        finally:
            self.records = count
            self.first_seq = _RECORD_HEADER.unpack_from(buf, FILE_HEADER_SIZE)[2] if count else 0
            self.last_seq = prev
            self.good_end_offset = off

    def _bad_record(self, buf: bytes, off: int, length: int, crc: int, seq: int, prev: int) -> None:
        """Classify the record at ``off`` that failed a check: torn tail (returns) or corrupt."""
        end = len(buf)
        stop = off + RECORD_HEADER_SIZE + length
        if length > MAX_PAYLOAD_SIZE:
            reason = f"impossible payload length {length} (the limit is {MAX_PAYLOAD_SIZE})"
        elif stop > end:
            self._torn(buf, off, f"payload of {length} bytes cut short by end of file")
            return
        elif zlib.crc32(buf[off + _CRC_START : stop]) != crc:
            if stop == end:
                self._torn(buf, off, "CRC mismatch in the last record")
                return
            actual = zlib.crc32(buf[off + _CRC_START : stop])
            reason = f"CRC mismatch: stored 0x{crc:08x}, computed 0x{actual:08x}"
        else:
            reason = f"sequence number {seq} does not increase (previous record has seq {prev})"
        if _all_zero(buf, off):
            # A crash after the file grew but before its pages were written leaves zeros.
            self._torn(buf, off, f"zero-filled tail ({reason})")
            return
        raise JournalCorruptError(self.path, off, reason, seq=seq, last_good_seq=prev)

    def _torn(self, buf: bytes, off: int, reason: str) -> None:
        self.torn_tail_offset = off
        self.torn_bytes = len(buf) - off
        self.torn_reason = reason
        if self.warn_torn_tail:
            log.warning(
                "journal %s: torn tail at byte offset %d (%d bytes, %s); reading stops there",
                self.path,
                off,
                self.torn_bytes,
                reason,
            )


def _check_file_header(path: Path, buf: bytes) -> int:
    if len(buf) < FILE_HEADER_SIZE:
        raise JournalCorruptError(
            path,
            0,
            f"expected a {FILE_HEADER_SIZE}-byte file header starting with {MAGIC!r}, "
            f"the file has only {len(buf)} bytes",
        )
    magic, version, _flags, _reserved = _FILE_HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise JournalCorruptError(
            path, 0, f"bad file header: expected magic {MAGIC!r}, found {magic!r}"
        )
    if version != FORMAT_VERSION:
        raise JournalCorruptError(
            path,
            8,
            f"unsupported journal format version {version}, expected {FORMAT_VERSION}",
        )
    return FILE_HEADER_SIZE


def _all_zero(buf: bytes, off: int) -> bool:
    return buf.count(0, off) == len(buf) - off


def read_journal(path: Path | str, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(seq, payload)`` for every record with ``seq > after_seq``. O(file size).

    Stops at a torn tail (with a warning); raises ``JournalCorruptError`` on corruption. Use
    ``JournalReader`` directly to learn where a torn tail was found.
    """
    return iter(JournalReader(path, after_seq))


def scan_journal(path: Path | str) -> JournalInfo:
    """Verify every record and report the journal's extent. O(file size)."""
    reader = JournalReader(path)
    for _ in reader:
        pass
    return reader.info()


# -- WRITING -------------------------------------------------------------------------------------


class JournalWriter:
    """The single writer of a journal file: sequence, buffer, group-commit.

    Opening a new (or empty) path writes the file header. Opening an existing journal verifies
    it, truncates a torn tail (with a WARNING naming the path, offset and bytes dropped) and
    continues after its last seq; corruption raises ``JournalCorruptError`` and the file is left
    untouched. An exclusive advisory lock keeps a second writer off the file.

    ``append`` buffers in memory; ``commit`` writes the batch with one ``write()`` and one
    ``fsync`` (unless ``fsync=False``). If writing or syncing fails the writer is poisoned --
    every later call raises -- since what reached the disk is unknown; reopen the file to
    recover (the reopen cuts any partial record).
    """

    def __init__(self, path: Path | str, *, fsync: bool = True):
        self.path = Path(path)
        self._fsync = fsync
        self._buf = bytearray()
        self._fd = -1
        self._failed: BaseException | None = None
        self._fd = self._open()
        try:
            self._last_seq = self._recover()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        self._durable_seq = self._last_seq

    # -- PROPERTIES --

    @property
    def last_seq(self) -> int:
        """The seq of the last appended record (durable or not); 0 if none yet."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on disk (fsynced unless ``fsync=False``)."""
        return self._durable_seq

    @property
    def pending(self) -> int:
        """Number of appended records not yet committed."""
        return self._last_seq - self._durable_seq

    @property
    def closed(self) -> bool:
        return self._fd < 0

    # -- COMMANDS --

    def append(self, payload: bytes) -> int:
        """Assign the next seq to ``payload`` and buffer the record. Returns the seq.

        Amortised O(len(payload)); no syscall. Not durable until ``commit``.
        """
        if self._fd < 0 or self._failed is not None:
            self._check_usable()
        length = len(payload)
        if length > MAX_PAYLOAD_SIZE:
            raise ValueError(
                f"journal payload must be at most {MAX_PAYLOAD_SIZE} bytes, got {length}"
            )
        seq = self._last_seq + 1
        seq_bytes = _SEQ.pack(seq)
        crc = zlib.crc32(payload, zlib.crc32(seq_bytes))
        buf = self._buf
        buf += _RECORD_HEADER.pack(length, crc, seq)
        buf += payload
        self._last_seq = seq
        return seq

    def append_many(self, payloads: Iterable[bytes]) -> int:
        """``append`` each payload in order; returns the last seq (``last_seq`` if empty)."""
        if self._fd < 0 or self._failed is not None:
            self._check_usable()
        buf = self._buf
        pack = _RECORD_HEADER.pack
        seq_pack = _SEQ.pack
        crc32 = zlib.crc32
        max_len = MAX_PAYLOAD_SIZE
        seq = self._last_seq
        mark = len(buf)
        try:
            for payload in payloads:
                length = len(payload)
                if length > max_len:
                    raise ValueError(
                        f"journal payload must be at most {max_len} bytes, got {length} "
                        f"(payload {seq - self._last_seq} of the batch; none of it was appended)"
                    )
                seq += 1
                buf += pack(length, crc32(payload, crc32(seq_pack(seq))), seq)
                buf += payload
        except BaseException:
            del buf[mark:]  # all or nothing: the batch is not half-sequenced
            raise
        self._last_seq = seq
        return seq

    def commit(self) -> int:
        """Write everything buffered with one ``write()``, then ``fsync``. Returns ``durable_seq``.

        O(bytes buffered) plus one fsync; a no-op (no syscall) when nothing is buffered.
        """
        self._check_usable()
        buf = self._buf
        if not buf:
            return self._durable_seq
        try:
            _write_all(self._fd, buf)
            if self._fsync:
                os.fsync(self._fd)
        except BaseException as exc:
            self._failed = exc
            raise JournalError(
                f"journal {self.path}: commit of seq {self._durable_seq + 1}..{self._last_seq} "
                f"failed ({exc!r}); the writer is unusable, reopen the journal to recover"
            ) from exc
        buf.clear()
        self._durable_seq = self._last_seq
        return self._durable_seq

    def close(self) -> None:
        """Commit what is buffered (unless the writer failed) and close the file. Idempotent."""
        if self._fd < 0:
            return
        try:
            if self._failed is None:
                self.commit()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "failed" if self._failed else "open"
        return (
            f"JournalWriter({str(self.path)!r}, {state}, last_seq={self._last_seq}, "
            f"durable_seq={self._durable_seq})"
        )

    # -- INTERNALS --

    def _check_usable(self) -> None:
        if self._fd < 0:
            raise JournalError(f"journal {self.path} is closed")
        if self._failed is not None:
            raise JournalError(
                f"journal {self.path}: an earlier commit failed ({self._failed!r}); "
                "reopen the journal to recover"
            )

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise JournalError(
                    f"journal {self.path} is already open for writing (locked by another writer)"
                ) from None
        return fd

    def _recover(self) -> int:
        """Prepare the file for appending; returns the last seq on disk."""
        size = os.fstat(self._fd).st_size
        if size < FILE_HEADER_SIZE:
            self._init_header(size)
            return 0
        reader = JournalReader(self.path, warn_torn_tail=False)
        for _ in reader:
            pass
        if reader.torn_tail_offset is not None:
            self._cut_torn_tail(reader)
        return reader.last_seq

    def _init_header(self, size: int) -> None:
        if size:
            existing = os.pread(self._fd, size, 0)
            if existing != _HEADER_BYTES[:size]:
                raise JournalCorruptError(
                    self.path,
                    0,
                    f"expected a {FILE_HEADER_SIZE}-byte file header starting with {MAGIC!r}, "
                    f"found {size} bytes {existing!r}",
                )
            log.warning(
                "journal %s: file header cut short at %d bytes (crash while creating it); "
                "rewriting it",
                self.path,
                size,
            )
            os.ftruncate(self._fd, 0)
        _write_all(self._fd, _HEADER_BYTES)
        if self._fsync:
            os.fsync(self._fd)
            _fsync_directory(self.path.parent)

    def _cut_torn_tail(self, reader: JournalReader) -> None:
        log.warning(
            "journal %s: cutting torn tail at byte offset %d, dropping %d bytes (%s); "
            "appending continues after seq %d",
            self.path,
            reader.good_end_offset,
            reader.torn_bytes,
            reader.torn_reason,
            reader.last_seq,
        )
        os.ftruncate(self._fd, reader.good_end_offset)
        if self._fsync:
            os.fsync(self._fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    """One ``write()`` in practice; loops only if the kernel takes less (e.g. a signal)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    with memoryview(data) as view:
        while written < len(view):
            written += os.write(fd, view[written:])


def _fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable (POSIX: a file's creation lives in its directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (AttributeError, OSError):  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
