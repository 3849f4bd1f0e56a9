"""Journal throughput: group-commit append rate and replay rate, against a raw-read baseline.

Run: ``.venv/bin/python benchmarks/bench_journal.py [--records N] [--repeats R]``; prints JSON.

- append+commit with one fsync per 1000-record batch (the engine's group commit) and with one
  fsync per record (the worst case), with commit latency percentiles;
- append cost alone (fsync off, one commit at the end);
- replay: ``read_journal`` over N records of ~60-byte msgpack payloads, median of R runs,
  beside the baseline of one ``f.read()`` of the same file in the same run (page cache warm in
  both), so ``parse_cost_ratio`` says what walking + CRC-checking costs over bare I/O.

Every timed result is checked afterwards (counts, last seq, a payload digest). Scratch files go
in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
from machine import machine  # noqa: E402 (run from benchmarks/: it is on sys.path)

from engine.journal import JournalWriter, read_journal, scan_journal


def _payloads(n: int) -> list[bytes]:
    """~60-byte msgpack commands, like the engine's SubmitOrder (array_like)."""
    enc = msgspec.msgpack.Encoder()
    return [
        enc.encode(
            [
                "SubmitOrder",
                1_700_000_000_000_000_000 + i,
                f"ACC-{i % 997:04d}",
                f"C-{i:010d}",
                "XNAS:ACME",
                i % 2,
                100 * (1 + i % 50),
                10_000 + i % 300,
                0,
            ]
        )
        for i in range(n)
    ]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50_us": round(pick(0.50) * 1e6, 1),
        "p99_us": round(pick(0.99) * 1e6, 1),
        "p99_9_us": round(pick(0.999) * 1e6, 1),
        "max_us": round(ordered[-1] * 1e6, 1),
    }


def bench_group_commit(
    directory: Path, payloads: list[bytes], batch: int, max_seconds: float
) -> dict:
    path = directory / f"commit-{batch}.journal"
    commit_times = []
    written = 0
    started = time.perf_counter()
    with JournalWriter(path, fsync=True) as writer:
        for start in range(0, len(payloads), batch):
            writer.append_many(payloads[start : start + batch])
            t0 = time.perf_counter()
            writer.commit()
            commit_times.append(time.perf_counter() - t0)
            written = writer.durable_seq
            if time.perf_counter() - started > max_seconds:
                break
    elapsed = time.perf_counter() - started
    info = scan_journal(path)
    assert info.last_seq == written and info.records == written and info.torn_bytes == 0
    path.unlink()
    return {
        "batch_records": batch,
        "records": written,
        "fsyncs": len(commit_times),
        "records_per_s": round(written / elapsed),
        "commits_per_s": round(len(commit_times) / elapsed),
        "commit_latency": _percentiles(commit_times),
    }


def bench_append_only(directory: Path, payloads: list[bytes]) -> dict:
    path = directory / "append.journal"
    with JournalWriter(path, fsync=False) as writer:
        append = writer.append
        t0 = time.perf_counter()
        for p in payloads:
            append(p)
        append_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.append_many(payloads)
        append_many_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.commit()
        write_s = time.perf_counter() - t0
    assert scan_journal(path).last_seq == 2 * len(payloads)
    path.unlink()
    return {
        "append_records_per_s": round(len(payloads) / append_s),
        "append_many_records_per_s": round(len(payloads) / append_many_s),
        "one_write_of_all_s": round(write_s, 4),
    }


def bench_replay(directory: Path, payloads: list[bytes], repeats: int) -> dict:
    path = directory / "replay.journal"
    with JournalWriter(path, fsync=False) as writer:
        writer.append_many(payloads)
    expected_digest = hashlib.blake2b(b"".join(payloads), digest_size=16).digest()
    size = path.stat().st_size

    raw_times, parse_times = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        raw_times.append(time.perf_counter() - t0)
        assert len(data) == size
        del data

        t0 = time.perf_counter()
        count = last = 0
        for seq, _payload in read_journal(path):
            count += 1
            last = seq
        parse_times.append(time.perf_counter() - t0)
        assert count == last == len(payloads)

    digest = hashlib.blake2b(digest_size=16)
    for _seq, payload in read_journal(path):
        digest.update(payload)
    assert digest.digest() == expected_digest, "replay returned different payloads"

    t0 = time.perf_counter()
    info = scan_journal(path)
    scan_s = time.perf_counter() - t0
    assert info.records == len(payloads)
    path.unlink()

    raw_median = statistics.median(raw_times)
    parse_median = statistics.median(parse_times)
    n = len(payloads)
    return {
        "records": n,
        "avg_payload_bytes": round(sum(map(len, payloads)) / n, 1),
        "file_bytes": size,
        "repeats": repeats,
        "read_journal_records_per_s": round(n / parse_median),
        "read_journal_s": {
            "median": round(parse_median, 4),
            "min": round(min(parse_times), 4),
            "max": round(max(parse_times), 4),
        },
        "scan_journal_records_per_s": round(n / scan_s),
        "baseline_raw_read_s": {
            "median": round(raw_median, 4),
            "min": round(min(raw_times), 4),
            "max": round(max(raw_times), 4),
        },
        "baseline_raw_read_mb_per_s": round(size / raw_median / 1e6),
        "parse_cost_ratio": round(parse_median / raw_median, 1),
    }


def _filesystem(path: Path) -> str:
    """The mount's filesystem type (fsync cost depends on it), from /proc/mounts on Linux."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mount, kind = line.split()[:3]
                if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                    best, fstype = mount, kind
    except OSError:
        pass
    return f"{fstype} on {best or '?'}"


def _machine() -> dict:
    return machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--commit-records", type=int, default=200_000)
    parser.add_argument("--fsync-per-record-seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=None, help="scratch parent (default: $TMPDIR)")
    args = parser.parse_args()

    payloads = _payloads(args.records)
    with tempfile.TemporaryDirectory(prefix="kilat-bench-journal-", dir=args.dir) as tmp:
        directory = Path(tmp)
        result = {
            "benchmark": "journal",
            "machine": _machine(),
            "scratch_dir": str(directory.parent),
            "scratch_filesystem": _filesystem(directory),
            "group_commit_1000": bench_group_commit(
                directory, payloads[: args.commit_records], 1000, max_seconds=60.0
            ),
            "fsync_per_record": bench_group_commit(
                directory, payloads[:100_000], 1, max_seconds=args.fsync_per_record_seconds
            ),
            "append_only_no_fsync": bench_append_only(directory, payloads),
            "replay": bench_replay(directory, payloads, args.repeats),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
