"""Pipeline benchmarks: per-command latency, journal replay, cold start. Prints one JSON object.

(b) per-command pipeline latency, p50 / p99 / p99.9 in ns: SubmitOrder / CancelOrder through
    every stage, the journal append included (the fsync is not: it is once per loop batch and
    measured by bench_journal.py). Baseline in the same run: the same pipeline on the reference
    book, and a bare msgpack encode+decode of the command (the floor of any Python edge). Then
    the same flow with risk and compliance wired as `kilat serve` wires them (the default
    config's limits, rules and detectors; throttles opened up and locates given so that the
    flow is not refused), which is what an order really costs.
(c) journal replay: rebuilding the whole state from a journal of 200,000 commands (commands/s),
    next to the journal layer alone (read + CRC check + decode) on the same file.
(d) cold start of `kilat serve` to its ready line with a warm numba cache, median of 5, next to
    a bare `python -c "import numpy, numba, zmq, msgspec"` in the same run.

    python benchmarks/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.book import NumbaBook  # noqa: E402
from engine.constants import Side, TimeInForce  # noqa: E402
from engine.journal import JournalWriter, read_journal  # noqa: E402
from engine.messages import JOURNAL_DECODER, CancelOrder, PriceTick, SubmitOrder  # noqa: E402
from engine.model import ReferenceData  # noqa: E402
from engine.pipeline import Pipeline  # noqa: E402
from engine.recovery import recover  # noqa: E402
from engine.refbook import ReferenceBook  # noqa: E402
from kilat.config import load_config  # noqa: E402

_CONFIG = load_config()
# The engine alone: no users configured, so entitlements are not checked (tests/kilat checks them).
REF = ReferenceData(_CONFIG.instruments, _CONFIG.accounts)


def commands(n: int, seed: int) -> list:
    """Passive limits around a mid, some crossing, and cancels of live orders (~35%)."""
    rng = random.Random(seed)
    out, live, ts = [], [], 1_000_000
    for i in range(n):
        ts += 1_000
        if live and rng.random() < 0.35:
            cl = live.pop(rng.randrange(len(live)))
            out.append(CancelOrder("FUND1" if cl[0] == "a" else "MM1", orig_cl_ord_id=cl, ts=ts))
            continue
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        cross = rng.random() < 0.1
        offset = rng.randint(0, 20)
        price = 15_000 + (offset if side == Side.SELL else -offset) * (-1 if cross else 1)
        account = "FUND1" if rng.random() < 0.5 else "MM1"
        cl = f"{'a' if account == 'FUND1' else 'm'}{i}"
        out.append(SubmitOrder(account, cl, "AAPL", side, rng.randint(1, 20), price=price,
                               tif=TimeInForce.GTC, ts=ts))
        live.append(cl)
    return out


def pct(samples: list[int]) -> dict:
    a = np.asarray(samples, dtype=np.int64)
    return {"p50_ns": int(np.percentile(a, 50)), "p99_ns": int(np.percentile(a, 99)),
            "p99_9_ns": int(np.percentile(a, 99.9)), "n": len(samples)}


def latency(book_factory, cmds: list, scratch: Path) -> dict:
    path = scratch / f"lat-{time.perf_counter_ns()}.kjl"
    with JournalWriter(path, fsync=False) as journal:
        samples, _ = _timed(Pipeline(REF, book_factory(), journal), cmds, journal)
    path.unlink()
    return pct(samples)


def _timed(pipe, cmds: list, journal) -> tuple[list[int], int]:
    """Per-command times of ``pipe.process`` after a 2,000-command warm-up (JIT, caches; its
    ClOrdIDs are then used), committing every 512 commands outside the timed call as a loop
    batch would; also how many commands were refused."""
    for cmd in cmds[:2_000]:
        pipe.process(cmd)
    clock = time.perf_counter_ns
    samples, outcomes = [], {}
    process = pipe.process
    for i, cmd in enumerate(cmds[2_000:]):
        t0 = clock()
        events = process(cmd)
        samples.append(clock() - t0)
        first = type(events[0]).__name__ if events else "none"
        outcomes[first] = outcomes.get(first, 0) + 1
        if i % 512 == 511:
            journal.commit()
    return samples, outcomes


def latency_with_stages(cmds: list, scratch: Path) -> dict:
    from compliance.rules import LocateSpec
    from kilat.config import check_config
    from kilat.service import build_pipeline
    from risk.config import AccountLimits, UserLimits

    risk = _CONFIG.risk
    config = msgspec.structs.replace(
        _CONFIG,
        risk=msgspec.structs.replace(  # commands are 1 µs apart: a 1 ms window sees ~1,000
            risk, throttle_window_ms=1,
            accounts=[msgspec.structs.replace(risk.accounts[0], max_orders_per_window=5_000,
                                              max_modifies_per_window=5_000)],
            users=[UserLimits(max_orders_per_window=5_000, max_modifies_per_window=5_000)]),
        compliance=msgspec.structs.replace(
            _CONFIG.compliance, locates=[LocateSpec("FUND1", "AAPL", 10**6), LocateSpec("MM1", "AAPL", 10**6)]),
    )
    assert isinstance(config.risk.accounts[0], AccountLimits)
    ref = check_config(config)
    path = scratch / f"stages-{time.perf_counter_ns()}.kjl"
    cmds = [msgspec.structs.replace(c, user="bob") for c in cmds]
    with JournalWriter(path, fsync=False) as journal:
        pipe = build_pipeline(config, ref, NumbaBook(len(ref.by_index), 1_000_000, 1024, 10_000), journal)
        pipe.process(PriceTick("AAPL", 14_990, 15_010, 15_000, 1, "admin"))
        samples, outcomes = _timed(pipe, cmds, journal)
        pipe.validate()
    path.unlink()
    return {**pct(samples), "first_event_of_each_command": outcomes}


def edge_floor(cmds: list) -> dict:
    enc = msgspec.msgpack.Encoder().encode
    dec = JOURNAL_DECODER.decode
    clock = time.perf_counter_ns
    samples = []
    for cmd in cmds:
        t0 = clock()
        dec(enc(cmd))
        samples.append(clock() - t0)
    return pct(samples)


def replay(n: int, scratch: Path) -> dict:
    path = scratch / "replay.kjl"
    cmds = commands(n, seed=2)
    with JournalWriter(path, fsync=False) as journal:
        live = Pipeline(REF, NumbaBook(len(REF.by_index), 1_000_000, 1024, 10_000), journal)
        for start in range(0, n, 512):
            live.process_batch(cmds[start:start + 512])
            journal.commit()
    full, layer = [], []
    for _ in range(3):
        fresh = Pipeline(REF, NumbaBook(len(REF.by_index), 1_000_000, 1024, 10_000))
        t0 = time.perf_counter()
        recover(fresh, path, scratch / "no-snapshots")
        full.append(time.perf_counter() - t0)
        assert fresh.state_hash() == live.state_hash(), "replay diverged"
        t0 = time.perf_counter()
        decode = JOURNAL_DECODER.decode
        for _seq, payload in read_journal(path):
            decode(payload)
        layer.append(time.perf_counter() - t0)
    path.unlink()
    return {
        "commands": n,
        "full_state_rebuild_cmds_per_s": round(n / statistics.median(full)),
        "journal_read_decode_cmds_per_s": round(n / statistics.median(layer)),
    }


def cold_start(scratch: Path, runs: int) -> dict:
    def time_serve() -> float:
        data = scratch / f"cold-{time.perf_counter_ns()}"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kilat", "serve", "--endpoint", "tcp://127.0.0.1:*",
             "--data-dir", str(data)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)
        assert line.startswith("kilat: ready"), line
        return elapsed

    def time_imports() -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy, numba, zmq, msgspec"], check=True)
        return time.perf_counter() - t0

    time_serve()  # warms the numba cache if it is cold
    serve = [time_serve() for _ in range(runs)]
    imports = [time_imports() for _ in range(runs)]
    return {"serve_ready_s_median": round(statistics.median(serve), 3),
            "bare_imports_s_median": round(statistics.median(imports), 3),
            "ratio": round(statistics.median(serve) / statistics.median(imports), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    n_lat, n_replay, runs = (20_000, 20_000, 2) if args.quick else (200_000, 200_000, 5)
    scratch = Path(tempfile.mkdtemp(prefix="kilat-bench-"))
    try:
        cmds = commands(n_lat, seed=1)
        numba = latency(lambda: NumbaBook(len(REF.by_index), 1_000_000, 1024, 10_000), cmds, scratch)
        reference = latency(lambda: ReferenceBook(len(REF.by_index), 1_000_000, 1024, 10_000), cmds, scratch)
        result = {
            "benchmark": "pipeline",
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "per_command_latency_numba_book": numba,
            "per_command_latency_reference_book": reference,
            "per_command_latency_with_risk_and_compliance": latency_with_stages(cmds, scratch),
            "baseline_msgpack_encode_decode": edge_floor(cmds[:20_000]),
            "journal_replay": replay(n_replay, scratch),
            "cold_start": cold_start(scratch, runs),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
