"""Scenario and property tests of snapshots, on real files."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.snapshot import (
    SNAPSHOT_HEADER_SIZE,
    SnapshotCorruptError,
    list_snapshots,
    load_latest_snapshot,
    prune_snapshots,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)

LOGGER = "kilat.journal"


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_write_snapshot_then_read_back_the_same_seq_and_payload(tmp_path):
    path = write_snapshot(tmp_path / "snaps", 42, b"state at 42")

    assert path == snapshot_path(tmp_path / "snaps", 42)
    assert path.name == "snapshot-00000000000000000042.snap"
    assert read_snapshot(path) == (42, b"state at 42")
    assert load_latest_snapshot(tmp_path / "snaps") == (42, b"state at 42")


def test_write_snapshot_is_atomic_temp_file_fsynced_then_renamed_then_directory_fsynced(
    tmp_path, monkeypatch
):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(
        os,
        "replace",
        lambda a, b: (calls.append(("replace", os.path.basename(a))), real_replace(a, b)),
    )

    path = write_snapshot(tmp_path, 7, b"x" * 1000)

    assert calls[0] == "fsync"  # the temp file's data is durable before it gets its name
    assert calls[1][0] == "replace" and calls[1][1].endswith(".tmp")
    assert calls[2] == "fsync"  # the directory, so the rename itself is durable
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind


def test_write_snapshot_when_writing_fails_then_no_snapshot_and_no_temp_file(tmp_path, monkeypatch):
    write_snapshot(tmp_path, 1, b"old")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_snapshot(tmp_path, 2, b"new")
    monkeypatch.undo()

    assert [seq for seq, _ in list_snapshots(tmp_path)] == [1]
    assert sorted(os.listdir(tmp_path)) == [snapshot_path(tmp_path, 1).name]
    assert load_latest_snapshot(tmp_path) == (1, b"old")


def test_load_latest_when_several_valid_then_newest_seq_is_chosen(tmp_path):
    for seq in (5, 300, 20):
        write_snapshot(tmp_path, seq, f"state {seq}".encode())

    assert [seq for seq, _ in list_snapshots(tmp_path)] == [5, 20, 300]
    assert load_latest_snapshot(tmp_path) == (300, b"state 300")


def test_load_latest_when_newest_damaged_then_skipped_with_warning_and_older_used(tmp_path, caplog):
    write_snapshot(tmp_path, 10, b"state 10")
    write_snapshot(tmp_path, 20, b"state 20")
    newest = write_snapshot(tmp_path, 30, b"state 30")
    _flip_byte(newest, SNAPSHOT_HEADER_SIZE + 2)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = load_latest_snapshot(tmp_path)

    assert found == (20, b"state 20")
    assert any(newest.name in r.getMessage() and "CRC" in r.getMessage() for r in caplog.records)


def test_load_latest_when_none_valid_or_no_directory_then_none(tmp_path):
    assert load_latest_snapshot(tmp_path / "missing") is None
    path = write_snapshot(tmp_path, 1, b"x")
    path.write_bytes(b"garbage")

    assert load_latest_snapshot(tmp_path) is None


def test_leftover_temp_file_from_a_crash_is_ignored_by_load(tmp_path):
    write_snapshot(tmp_path, 1, b"good")
    (tmp_path / "snapshot-00000000000000000002.snap.999.tmp").write_bytes(b"half written")

    assert load_latest_snapshot(tmp_path) == (1, b"good")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("payload", "CRC mismatch"),
        ("magic", "expected magic b'KILATSNP'"),
        ("version", "unsupported snapshot version"),
        ("truncate", "payload bytes, the file holds"),
        ("seq", "the file name says 9"),
        ("short", "32-byte header"),
    ],
)
def test_read_snapshot_detects_each_kind_of_damage(tmp_path, damage, expected):
    path = write_snapshot(tmp_path, 9, b"payload of the snapshot")
    data = bytearray(path.read_bytes())
    if damage == "payload":
        data[-1] ^= 0x40
    elif damage == "magic":
        data[0] ^= 0x01
    elif damage == "version":
        data[8] = 2
    elif damage == "truncate":
        data = data[:-3]
    elif damage == "seq":
        data[16] ^= 0x01
    elif damage == "short":
        data = data[:10]
    path.write_bytes(bytes(data))

    with pytest.raises(SnapshotCorruptError, match=expected):
        read_snapshot(path)


def test_prune_keeps_the_newest_and_removes_older_and_temp_files(tmp_path):
    for seq in range(1, 7):
        write_snapshot(tmp_path, seq, b"s")
    stray = tmp_path / "snapshot-00000000000000000007.snap.123.tmp"
    stray.write_bytes(b"")

    removed = prune_snapshots(tmp_path, keep=3)

    assert [seq for seq, _ in list_snapshots(tmp_path)] == [4, 5, 6]
    assert len(removed) == 4 and stray in removed
    assert not stray.exists()


def test_prune_when_kept_snapshots_are_damaged_then_newest_valid_is_kept_too(tmp_path):
    for seq in range(1, 5):
        write_snapshot(tmp_path, seq, b"s")
    for seq in (3, 4):
        snapshot_path(tmp_path, seq).write_bytes(b"damaged")

    prune_snapshots(tmp_path, keep=2)

    assert [seq for seq, _ in list_snapshots(tmp_path)] == [2, 3, 4]
    assert load_latest_snapshot(tmp_path) == (2, b"s")


def test_prune_with_keep_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        prune_snapshots(tmp_path, keep=0)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=200), data=st.data())
def test_property_any_single_byte_damage_is_detected(tmp_path, payload, data):
    path = write_snapshot(tmp_path, 3, payload)
    raw = bytearray(path.read_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    reserved = range(10, 12)  # written as zero, ignored on read
    raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(raw))

    if pos in reserved:
        assert read_snapshot(path) == (3, payload)
    else:
        with pytest.raises(SnapshotCorruptError):
            read_snapshot(path)
