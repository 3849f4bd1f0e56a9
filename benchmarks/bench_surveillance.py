"""Trade surveillance throughput: every detector over a large generated event stream. Prints JSON.

    .venv/bin/python benchmarks/bench_surveillance.py [--events 5000000] [--repeats 5]

- process: events/s of ``Surveillance.process`` (all six detectors) over a generated stream of
  rows (new orders, fills on both sides, cancels, replaces; 200 accounts, 150 owners, 500
  instruments), one call for the whole stream, median of ``repeats`` fresh runs; and the same
  stream in batches of 512 rows (the live loop's shape) with p50 / p99 / p99.9 ns per batch;
- baseline in the same run: one jitted pass that only reads every row (the memory floor);
- encode: events/s of ``Surveillance.encode`` on pipeline msgspec events, reported separately.

Checked after timing: the one-call and batched runs give identical findings and state hashes,
and every planted self-match wash trade (one every 20,000 events) is among the findings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from decimal import Decimal
from pathlib import Path
from statistics import median

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compliance import surveillance_kernels as sk  # noqa: E402
from compliance.surveillance import (  # noqa: E402
    FrontRunningConfig,
    Surveillance,
    SurveillanceConfig,
)
from engine.constants import R_CANCEL_REQUESTED, OrderType, Side, TimeInForce  # noqa: E402
from engine.messages import OrderAccepted, OrderCanceled, OrderFilled  # noqa: E402
from engine.model import AccountSpec, InstrumentSpec, ReferenceData  # noqa: E402

SEED = 20240305
N_ACCOUNTS, N_OWNERS, N_INSTR = 200, 150, 500
T0 = 1_709_650_800 * 10**9  # 2024-03-05 15:00 UTC (10:00 New York)
WASH_EVERY = 20_000


def make_ref() -> ReferenceData:
    instruments = [InstrumentSpec(f"S{i:03d}", "USD", Decimal("0.01"), 1, (Decimal(1), Decimal(1000)))
                   for i in range(N_INSTR)]
    accounts = [AccountSpec(f"A{a:03d}", owner=f"O{a % N_OWNERS:03d}") for a in range(N_ACCOUNTS)]
    return ReferenceData(instruments, accounts)


def generate(n: int, surv: Surveillance, seed: int = SEED) -> tuple[np.ndarray, list[int]]:
    """n rows: 45 % new, 25 % fills (taker then maker of one trade), 25 % cancels, 5 % replaces,
    ~2,000 events/s across the market; a self-match wash trade planted every WASH_EVERY rows."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, sk.R_NCOLS), dtype=np.int64)
    kind = rng.choice([sk.K_NEW, sk.K_FILL, sk.K_CANCEL, sk.K_REPLACE], size=n,
                      p=[0.45, 0.25, 0.25, 0.05])
    acc = rng.integers(0, N_ACCOUNTS, n)
    owner_of = np.array(surv._owner_of, dtype=np.int64)
    ts = T0 + np.cumsum(rng.integers(0, 1_000_000, n))  # 0.5 ms apart on average
    rows[:, sk.R_KIND] = kind
    rows[:, sk.R_TS] = ts
    rows[:, sk.R_ACCOUNT] = acc
    rows[:, sk.R_OWNER] = owner_of[acc]
    rows[:, sk.R_INSTR] = rng.integers(0, N_INSTR, n)
    rows[:, sk.R_SIDE] = rng.integers(0, 2, n)
    rows[:, sk.R_OID] = np.arange(1, n + 1)
    rows[:, sk.R_EXEC] = np.where(kind == sk.K_FILL, np.arange(1, n + 1), 0)
    rows[:, sk.R_QTY] = rng.integers(1, 2_000, n)
    rows[:, sk.R_PRICE] = 10_000 + rng.integers(-300, 300, n)
    rows[:, sk.R_MAKER] = rng.integers(0, 2, n)
    rows[:, sk.R_ORDER_QTY] = rows[:, sk.R_QTY]
    rows[:, sk.R_LEAVES] = rng.integers(0, 2, n) * rows[:, sk.R_QTY]
    rows[:, sk.R_ORDER_TS] = ts - rng.integers(0, 5 * 10**9, n)
    rows[:, sk.R_CODE] = np.where(kind == sk.K_CANCEL, R_CANCEL_REQUESTED, 0)
    planted = []
    for k in range(WASH_EVERY // 2, n - 1, WASH_EVERY):  # account a trades with a + 150 (same owner)
        a = int(rng.integers(0, N_ACCOUNTS - N_OWNERS))
        for j, (account, side, maker) in enumerate([(a, 0, 0), (a + N_OWNERS, 1, 1)]):
            r = rows[k + j]
            r[sk.R_KIND], r[sk.R_TS], r[sk.R_ACCOUNT] = sk.K_FILL, ts[k], account
            r[sk.R_OWNER], r[sk.R_SIDE], r[sk.R_MAKER] = owner_of[account], side, maker
            r[sk.R_PRICE], r[sk.R_EXEC] = 10_000, k + j + 1
            r[sk.R_INSTR] = rows[k, sk.R_INSTR]
        planted.append(k + 1)
    return rows, planted


@njit(cache=True)
def _read_every_row(rows):
    total = 0
    for i in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            total += rows[i, c]
    return total


def config(ref: ReferenceData) -> SurveillanceConfig:
    return SurveillanceConfig(front_running=FrontRunningConfig(
        client_accounts=[f"A{a:03d}" for a in range(0, N_ACCOUNTS, 4)]),
        max_owner_instruments=131_072, max_account_instruments=131_072)


def _percentiles(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64)
    return {f"p{p}": float(np.percentile(a, p)) for p in (50, 99, 99.9)} | {"n": len(ns)}


def bench_process(ref, rows, repeats):
    times, last = [], None
    for _ in range(repeats):
        surv = Surveillance(config(ref), ref)
        t0 = time.perf_counter()
        found = surv.process(rows)
        times.append(time.perf_counter() - t0)
        last = (surv, found)
    return median(times), last


def bench_batched(ref, rows, batch=512):
    surv = Surveillance(config(ref), ref)
    found, lat = [], []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for b in range(0, len(rows), batch):
        c0 = clock()
        found += surv.process(rows[b:b + batch])
        lat.append(clock() - c0)
    return time.perf_counter() - t0, surv, found, lat


def pipeline_events(ref: ReferenceData, n: int) -> list:
    """Accepted / filled / canceled events in the pipeline's shapes, for the encode figure."""
    events = []
    for k in range(n // 4):
        oid, acc, sym = k + 1, f"A{k % N_ACCOUNTS:03d}", f"S{k % N_INSTR:03d}"
        events.append(OrderAccepted(oid, acc, f"c{k}", sym, Side(k % 2), OrderType.LIMIT, 10_000,
                                    100, TimeInForce.DAY, 0, 0, T0 + k))
        events.append(OrderFilled(oid, acc, f"c{k}", sym, Side(k % 2), 2 * k + 1, 40, 10_000, 40,
                                  60, 10_000.0, k % 3 == 0, T0 + k))
        events.append(OrderFilled(oid, acc, f"c{k}", sym, Side(k % 2), 2 * k + 2, 10, 10_000, 50,
                                  50, 10_000.0, True, T0 + k))
        events.append(OrderCanceled(oid, acc, f"c{k}", 50, R_CANCEL_REQUESTED, "cancel requested",
                                    T0 + k + 1))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-events", type=int, default=400_000)
    args = parser.parse_args()

    ref = make_ref()
    warm = Surveillance(config(ref), ref)
    warm.warm_up()
    rows, planted = generate(args.events, warm)
    _read_every_row(rows[:10])

    base_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _read_every_row(rows)
        base_times.append(time.perf_counter() - t0)
    seconds, (surv, found) = bench_process(ref, rows, args.repeats)
    b_seconds, b_surv, b_found, lat = bench_batched(ref, rows)

    enc = Surveillance(config(ref), ref)
    events = pipeline_events(ref, args.encode_events)
    t0 = time.perf_counter()
    encoded = enc.encode(events)
    enc_seconds = time.perf_counter() - t0

    # -- checks, after timing --
    assert found == b_found, "one call and 512-row batches disagree"
    assert surv.state_hash() == b_surv.state_hash(), "one call and batches end in different states"
    washed = {f.exec_ids[-1] for f in found if f.detector == "wash_trades"}
    missing = [p for p in planted if p + 1 not in washed]
    assert not missing, f"planted wash trades not found at rows {missing[:5]}"
    assert len(encoded) == len(events) and surv.stats()["bad_rows"] == 0

    by_detector: dict[str, int] = {}
    for f in found:
        by_detector[f.detector] = by_detector.get(f.detector, 0) + 1
    n = len(rows)
    out = {
        "machine": {"platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "workload": {"events": n, "seed": SEED, "accounts": N_ACCOUNTS, "owners": N_OWNERS,
                     "instruments": N_INSTR, "planted_wash_trades": len(planted)},
        "process": {
            "events_per_s": n / seconds,
            "seconds_median": seconds,
            "batched_512_events_per_s": n / b_seconds,
            "batch_512_latency_ns": _percentiles(lat),
            "baseline_read_only_events_per_s": n / median(base_times),
            "ratio_to_read_only": (n / seconds) / (n / median(base_times)),
            "repeats": args.repeats,
        },
        "encode": {"events": len(events), "events_per_s": len(events) / enc_seconds},
        "findings": by_detector,
        "stats": surv.stats(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
