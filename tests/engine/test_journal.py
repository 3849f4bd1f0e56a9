"""Scenario and property tests of the journal, on real files."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.journal import (
    FILE_HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD_SIZE,
    RECORD_HEADER_SIZE,
    JournalCorruptError,
    JournalError,
    JournalReader,
    JournalWriter,
    read_journal,
    scan_journal,
)

LOGGER = "kilat.journal"


def _payload(i: int) -> bytes:
    return msgspec.msgpack.encode({"cmd": "SubmitOrder", "id": i, "qty": 100 * i, "px": 10_000})


def _write(path: Path, payloads: list[bytes]) -> list[int]:
    with JournalWriter(path, fsync=False) as writer:
        return [writer.append(p) for p in payloads]


def _record_offsets(payloads: list[bytes]) -> list[int]:
    offsets, off = [], FILE_HEADER_SIZE
    for p in payloads:
        offsets.append(off)
        off += RECORD_HEADER_SIZE + len(p)
    return offsets


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- WRITE / READ --------------------------------------------------------------------------------


def test_round_trip_of_many_records_returns_every_payload_in_order(tmp_path):
    path = tmp_path / "shard.journal"
    payloads = [_payload(i) for i in range(10_000)] + [b"", b"\x00" * 5000]

    seqs = _write(path, payloads)

    assert seqs == list(range(1, len(payloads) + 1))
    assert list(read_journal(path)) == list(zip(seqs, payloads, strict=True))
    info = scan_journal(path)
    assert (info.first_seq, info.last_seq, info.records) == (1, len(payloads), len(payloads))
    assert info.good_end_offset == path.stat().st_size
    assert info.torn_bytes == 0 and info.torn_tail_offset is None


def test_new_journal_with_no_records_reads_as_empty(tmp_path):
    path = tmp_path / "empty.journal"

    with JournalWriter(path) as writer:
        assert writer.last_seq == writer.durable_seq == 0

    assert path.stat().st_size == FILE_HEADER_SIZE
    assert list(read_journal(path)) == []
    info = scan_journal(path)
    assert (info.first_seq, info.last_seq, info.records) == (0, 0, 0)


def test_reopen_continues_the_sequence_after_the_last_record(tmp_path):
    path = tmp_path / "shard.journal"
    _write(path, [b"a", b"b", b"c"])

    with JournalWriter(path, fsync=False) as writer:
        assert writer.last_seq == writer.durable_seq == 3
        assert writer.append(b"d") == 4
        assert writer.append_many([b"e", b"f"]) == 6

    assert list(read_journal(path)) == [
        (1, b"a"),
        (2, b"b"),
        (3, b"c"),
        (4, b"d"),
        (5, b"e"),
        (6, b"f"),
    ]


def test_read_after_seq_yields_only_later_records_but_scans_all(tmp_path):
    path = tmp_path / "shard.journal"
    payloads = [_payload(i) for i in range(100)]
    _write(path, payloads)

    reader = JournalReader(path, after_seq=60)
    got = list(reader)

    assert [seq for seq, _ in got] == list(range(61, 101))
    assert [p for _, p in got] == payloads[60:]
    assert (reader.first_seq, reader.last_seq, reader.records) == (1, 100, 100)
    assert list(read_journal(path, after_seq=100)) == []


def test_append_many_with_an_oversized_payload_appends_none_of_the_batch(tmp_path):
    with JournalWriter(tmp_path / "j", fsync=False) as writer:
        writer.append(b"first")
        with pytest.raises(ValueError, match="at most"):
            writer.append_many([b"ok", b"x" * (MAX_PAYLOAD_SIZE + 1)])

        assert writer.last_seq == 1
        assert writer.append(b"second") == 2

    assert list(read_journal(tmp_path / "j")) == [(1, b"first"), (2, b"second")]


# -- GROUP COMMIT --------------------------------------------------------------------------------


def test_group_commit_when_batch_appended_then_one_fsync_and_nothing_on_disk_before(
    tmp_path, monkeypatch
):
    path = tmp_path / "shard.journal"
    writer = JournalWriter(path)
    size_after_open = path.stat().st_size
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))

    last = writer.append_many(_payload(i) for i in range(999))
    last = writer.append(_payload(999))

    assert last == 1000
    assert path.stat().st_size == size_after_open  # buffered only
    assert writer.durable_seq == 0 and writer.pending == 1000
    assert fsyncs == []

    assert writer.commit() == 1000

    assert len(fsyncs) == 1
    assert writer.durable_seq == 1000 and writer.pending == 0
    assert scan_journal(path).last_seq == 1000

    writer.append(b"next")
    writer.commit()
    assert len(fsyncs) == 2  # one per batch

    assert writer.commit() == 1001  # nothing buffered: no write, no fsync
    assert len(fsyncs) == 2
    writer.close()


def test_commit_with_fsync_disabled_writes_but_never_fsyncs(tmp_path, monkeypatch):
    path = tmp_path / "j"
    fsyncs = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))

    with JournalWriter(path, fsync=False) as writer:
        writer.append(b"x")
        writer.commit()

    assert fsyncs == []
    assert list(read_journal(path)) == [(1, b"x")]


def test_close_commits_buffered_records(tmp_path):
    path = tmp_path / "j"
    writer = JournalWriter(path, fsync=False)
    writer.append(b"x")

    writer.close()
    writer.close()  # idempotent

    assert list(read_journal(path)) == [(1, b"x")]
    with pytest.raises(JournalError, match="closed"):
        writer.append(b"y")


def test_commit_when_write_fails_then_writer_refuses_further_use_and_reopen_recovers(
    tmp_path, monkeypatch
):
    path = tmp_path / "j"
    writer = JournalWriter(path, fsync=False)
    writer.append(b"ok")
    writer.commit()
    writer.append(b"lost")

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(JournalError, match="reopen"):
        writer.commit()
    monkeypatch.undo()

    with pytest.raises(JournalError, match="earlier commit failed"):
        writer.append(b"more")
    writer.close()  # closes without committing
    with JournalWriter(path, fsync=False) as reopened:
        assert reopened.last_seq == 1


def test_second_writer_on_the_same_journal_is_refused(tmp_path):
    path = tmp_path / "j"
    with JournalWriter(path, fsync=False):
        with pytest.raises(JournalError, match="already open"):
            JournalWriter(path, fsync=False)


# -- TORN TAIL -----------------------------------------------------------------------------------


def test_torn_tail_at_every_byte_of_the_last_record_is_cut_with_warning_and_appending_resumes(
    tmp_path, caplog
):
    payloads = [_payload(i) for i in range(5)]
    full = tmp_path / "full.journal"
    _write(full, payloads)
    data = full.read_bytes()
    last_start = _record_offsets(payloads)[-1]

    for cut in range(last_start + 1, len(data)):
        path = tmp_path / f"torn-{cut}.journal"
        path.write_bytes(data[:cut])
        caplog.clear()

        with caplog.at_level(logging.WARNING, logger=LOGGER):
            writer = JournalWriter(path, fsync=False)

        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, cut
        assert str(path) in warnings[0]
        assert f"offset {last_start}" in warnings[0]
        assert f"dropping {cut - last_start} bytes" in warnings[0]
        assert path.stat().st_size == last_start
        assert writer.last_seq == 4
        assert writer.append(b"after") == 5
        writer.close()
        assert list(read_journal(path)) == [
            *zip(range(1, 5), payloads[:4], strict=True),
            (5, b"after"),
        ]


def test_torn_tail_when_read_then_stops_with_warning_and_reports_offset(tmp_path, caplog):
    path = tmp_path / "j"
    _write(path, [b"one", b"two", b"three"])
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 2)
    last_start = size - (RECORD_HEADER_SIZE + len(b"three"))

    reader = JournalReader(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(reader)

    assert records == [(1, b"one"), (2, b"two")]
    assert reader.torn_tail_offset == last_start
    assert reader.torn_bytes == RECORD_HEADER_SIZE + len(b"three") - 2
    assert any(f"offset {last_start}" in r.getMessage() for r in caplog.records)
    assert path.stat().st_size == size - 2  # the reader never modifies the file
    info = scan_journal(path)
    assert (info.last_seq, info.good_end_offset) == (2, last_start)


def test_last_record_with_bad_crc_ending_at_eof_is_a_torn_tail(tmp_path):
    path = tmp_path / "j"
    _write(path, [b"one", b"two"])
    _flip_byte(path, path.stat().st_size - 1)

    info = scan_journal(path)

    assert info.last_seq == 1
    assert info.torn_bytes == RECORD_HEADER_SIZE + 3


def test_zero_filled_tail_after_a_crash_is_a_torn_tail(tmp_path):
    path = tmp_path / "j"
    _write(path, [b"one", b"two"])
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)

    with JournalWriter(path, fsync=False) as writer:
        assert writer.last_seq == 2
        writer.append(b"three")

    assert [seq for seq, _ in read_journal(path)] == [1, 2, 3]


def test_file_header_cut_short_by_a_crash_is_rewritten_by_the_writer(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(MAGIC[:5])

    with JournalWriter(path, fsync=False) as writer:
        writer.append(b"x")

    assert list(read_journal(path)) == [(1, b"x")]


# -- CORRUPTION ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field_offset", [0, 4, 8, 16, 20])  # length, crc, seq, payload bytes
def test_flipped_byte_in_a_middle_record_raises_naming_its_offset(tmp_path, field_offset):
    path = tmp_path / "j"
    payloads = [_payload(i) for i in range(10)]
    _write(path, payloads)
    bad = _record_offsets(payloads)[4]  # seq 5
    _flip_byte(path, bad + field_offset)
    before = path.read_bytes()

    with pytest.raises(JournalCorruptError) as excinfo:
        list(read_journal(path))
    with pytest.raises(JournalCorruptError):
        JournalWriter(path, fsync=False)

    err = excinfo.value
    assert err.offset == bad
    assert err.last_good_seq == 4
    assert str(path) in str(err) and f"offset {bad}" in str(err)
    assert path.read_bytes() == before  # never truncated


def test_middle_record_with_bad_crc_message_names_seq_and_what_was_wrong(tmp_path):
    path = tmp_path / "j"
    payloads = [b"aaaa", b"bbbb", b"cccc"]
    _write(path, payloads)
    _flip_byte(path, _record_offsets(payloads)[1] + RECORD_HEADER_SIZE)

    with pytest.raises(JournalCorruptError, match=r"seq 2.*CRC mismatch") as excinfo:
        scan_journal(path)

    assert excinfo.value.seq == 2


def test_sequence_number_not_increasing_raises_even_with_valid_crc(tmp_path):
    path = tmp_path / "j"
    record = struct.Struct("<IIQ")

    def rec(seq: int, payload: bytes) -> bytes:
        crc = zlib.crc32(struct.pack("<Q", seq) + payload)
        return record.pack(len(payload), crc, seq) + payload

    _write(path, [])
    with open(path, "ab") as f:
        f.write(rec(1, b"a") + rec(2, b"b") + rec(2, b"c"))

    with pytest.raises(JournalCorruptError, match="does not increase") as excinfo:
        scan_journal(path)
    assert excinfo.value.offset == FILE_HEADER_SIZE + 2 * (RECORD_HEADER_SIZE + 1)


def test_impossible_length_raises_even_in_the_last_record(tmp_path):
    path = tmp_path / "j"
    _write(path, [b"one", b"two"])
    last = path.stat().st_size - (RECORD_HEADER_SIZE + 3)
    _flip_byte(path, last + 3)  # high byte of the length

    with pytest.raises(JournalCorruptError, match="impossible payload length"):
        scan_journal(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "16-byte file header"),
        (b"NOTAJRNL" + bytes(8), "expected magic b'KILATJNL'"),
        (MAGIC + struct.pack("<HHI", 99, 0, 0), "version 99, expected 1"),
    ],
)
def test_bad_file_header_raises_saying_what_was_expected(tmp_path, content, expected):
    path = tmp_path / "j"
    path.write_bytes(content)

    with pytest.raises(JournalCorruptError, match=expected):
        list(read_journal(path))


def test_writer_on_a_file_with_a_foreign_header_raises_and_leaves_it_alone(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"hello, world\n")

    with pytest.raises(JournalCorruptError, match="KILATJNL"):
        JournalWriter(path, fsync=False)

    assert path.read_bytes() == b"hello, world\n"


# -- PROPERTIES ----------------------------------------------------------------------------------

payload_lists = st.lists(st.binary(max_size=80), min_size=1, max_size=30)
fast = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@fast
@given(payloads=payload_lists)
def test_property_random_payload_lists_round_trip(tmp_path, payloads):
    path = tmp_path / "prop.journal"
    path.unlink(missing_ok=True)

    _write(path, payloads)

    assert list(read_journal(path)) == list(enumerate(payloads, start=1))


@fast
@given(payloads=payload_lists, data=st.data())
def test_property_random_truncation_never_raises_and_yields_a_prefix(tmp_path, payloads, data):
    path = tmp_path / "prop.journal"
    path.unlink(missing_ok=True)
    _write(path, payloads)
    full = path.read_bytes()
    cut = data.draw(st.integers(FILE_HEADER_SIZE, len(full)), label="cut")
    path.write_bytes(full[:cut])

    got = list(read_journal(path))

    expected = list(enumerate(payloads, start=1))
    assert got == expected[: len(got)]
    ends = [
        off + RECORD_HEADER_SIZE + len(p)
        for off, p in zip(_record_offsets(payloads), payloads, strict=True)
    ]
    assert len(got) == sum(end <= cut for end in ends)  # every complete record survives


@fast
@given(payloads=payload_lists, data=st.data())
def test_property_random_corruption_raises_or_is_a_torn_tail_never_wrong_data(
    tmp_path, payloads, data
):
    path = tmp_path / "prop.journal"
    path.unlink(missing_ok=True)
    _write(path, payloads)
    full = bytearray(path.read_bytes())
    positions = data.draw(
        st.lists(st.integers(FILE_HEADER_SIZE, len(full) - 1), min_size=1, max_size=3, unique=True),
        label="positions",
    )
    for pos in positions:
        full[pos] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(full))

    reader = JournalReader(path)
    try:
        got = list(reader)
    except JournalCorruptError as err:
        assert err.offset <= min(positions)
        return

    expected = list(enumerate(payloads, start=1))
    assert got == expected[: len(got)]  # a verified prefix, never altered data
    assert reader.torn_tail_offset is not None  # something was flagged
    assert reader.torn_tail_offset <= min(positions)
