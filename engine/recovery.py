"""Recovery: the newest valid snapshot, then every journaled command after it.

State is a fold over the journal, so this reaches exactly the state the engine had when it last
made a batch durable (the same ``state_hash``). A torn journal tail (a batch whose fsync never
finished, so none of its replies ever left) is cut with a warning by the journal; a corrupt
record mid-file stops recovery with ``JournalCorruptError`` naming the offset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from engine.journal import read_journal
from engine.messages import JOURNAL_DECODER
from engine.pipeline import Pipeline
from engine.snapshot import load_latest_snapshot

log = logging.getLogger("kilat.recovery")

#: Journaled commands re-applied per batch-path call during replay.
REPLAY_CHUNK = 512


class RecoveryReport(msgspec.Struct, frozen=True):
    snapshot_seq: int
    replayed: int
    last_seq: int
    seconds: float


def recover(pipeline: Pipeline, journal_path: Path, snapshot_dir: Path) -> RecoveryReport:
    """Load the newest snapshot into ``pipeline`` and replay the journal after it."""
    started = time.perf_counter()
    snapshot_seq = 0
    found = load_latest_snapshot(snapshot_dir) if snapshot_dir.exists() else None
    if found is not None:
        snapshot_seq, payload = found
        pipeline.restore(payload)
        if pipeline.seq != snapshot_seq:
            raise RuntimeError(
                f"snapshot {snapshot_seq} in {snapshot_dir} holds state at seq {pipeline.seq}"
            )
    replayed = 0
    decode = JOURNAL_DECODER.decode
    if journal_path.exists():
        expected = snapshot_seq + 1
        chunk: list = []
        for seq, payload in read_journal(journal_path, after_seq=snapshot_seq):
            if seq != expected + len(chunk):
                raise RuntimeError(
                    f"{journal_path}: expected record seq {expected + len(chunk)} after the "
                    f"snapshot, got {seq}"
                )
            chunk.append(decode(payload))
            if len(chunk) == REPLAY_CHUNK:
                pipeline.replay_batch(expected, chunk)
                expected += len(chunk)
                replayed += len(chunk)
                chunk = []
        if chunk:
            pipeline.replay_batch(expected, chunk)
            replayed += len(chunk)
    pipeline.end_replay()
    report = RecoveryReport(snapshot_seq, replayed, pipeline.seq, time.perf_counter() - started)
    log.info("recovered: snapshot at seq %d, %d commands replayed, now at seq %d (%.3f s)",
             report.snapshot_seq, report.replayed, report.last_seq, report.seconds)
    return report
