"""Positions ledger benchmark: per-fill latency, revaluation of 10,000 positions, bust cost, end of
day (compaction of the history to the 10,000 open positions).
Prints one JSON object.

Universe: 1,000 accounts (half average cost, half FIFO) × 200 instruments; 10,000 open
(account, instrument) cells seeded by fills, every instrument marked.

(a) ``PositionLedger.fill`` per execution from Python, p50 / p99 / p99.9 in ns, on a stream over
    the open cells (adds, partial closes, closes through zero; busts none). Baseline in the same
    run: a bare dict update of the position (the floor of any Python booking).
(b) ``PositionLedger.revalue()`` of every open cell at the portfolio's marks, against a dense
    numpy revaluation (position × mark − cost over the whole [account, instrument] grid).
(c) ``bust`` of a random fill (rare; O(bookings of the cell)), p50 / p99.
(d) ``end_of_day()``: once after the stream (the day's history to compact), then repeated on the
    compacted history (the open state alone), p50 / p99. Baseline in the same run: numpy copies
    of the used cells, locations and history (the arrays it reads and writes).
After timing: ``validate()``; the revaluation equals the dense one on every open cell; for every
cell realised + unrealised = Σ sells − Σ buys + position × mark (tick·lots); the end of day
changes no cell, keeps at most open lots + open cells × locations history rows, forgets the
day's ids, and a fill booked after it then busted gives the cells back.

    python benchmarks/bench_ledger.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.constants import BUY, SELL  # noqa: E402
from engine.ledger import LedgerCode, PositionLedger  # noqa: E402
from engine.ledger_kernels import M_CELLS  # noqa: E402
from engine.model import AccountSpec, InstrumentSpec, ReferenceData  # noqa: E402
from engine.portfolio import Portfolio  # noqa: E402

N_ACCOUNTS, N_INSTRUMENTS, N_OPEN = 1_000, 200, 10_000


def pct(samples) -> dict:
    a = np.asarray(samples, dtype=np.int64)
    return {"p50_ns": int(np.percentile(a, 50)), "p99_ns": int(np.percentile(a, 99)),
            "p99_9_ns": int(np.percentile(a, 99.9)), "n": len(a)}


def universe(n_fills: int, seed: int):
    rng = random.Random(seed)
    instruments = [InstrumentSpec(f"S{i:03d}", "EUR" if i % 5 == 0 else "USD", Decimal("0.01"), 1,
                                  (Decimal("1.00"), Decimal("10000.00"))) for i in range(N_INSTRUMENTS)]
    accounts = [AccountSpec(f"A{a:04d}", fund=f"F{a}", pnl_method="fifo" if a % 2 else "average")
                for a in range(N_ACCOUNTS)]
    ref = ReferenceData(instruments, accounts)
    pf = Portfolio(ref, {"EURUSD": Decimal("1.08")})
    ledger = PositionLedger(ref, pf, cells=32_768, lots=262_144, history=n_fills + 4 * N_OPEN)
    venues = [ledger.location_index(v) for v in ("XNYS", "XNAS", "ARCX")]
    mids = [rng.randint(1_000, 50_000) for _ in range(N_INSTRUMENTS)]
    cells = [divmod(c, N_INSTRUMENTS) for c in rng.sample(range(N_ACCOUNTS * N_INSTRUMENTS), N_OPEN)]
    return rng, ref, pf, ledger, venues, mids, cells


def seed_positions(ledger, rng, venues, mids, cells, flows):
    for n, (a, i) in enumerate(cells):
        side, qty, px = rng.choice((BUY, SELL)), rng.randint(1, 500), mids[i] + rng.randint(-50, 50)
        assert ledger.fill(("seed", n), a, i, rng.choice(venues), side, qty, px) is None
        flows[(a, i)] = flows.get((a, i), 0) + (px * qty if side == SELL else -px * qty)


def stream(rng, venues, mids, cells, n):
    out = []
    for k in range(n):
        a, i = cells[rng.randrange(len(cells))]
        out.append((k, a, i, rng.choice(venues), rng.choice((BUY, SELL)), rng.choice((1, 5, 20, 100, 400)),
                    mids[i] + rng.randint(-100, 100)))
    return out


def per_fill(ledger, fills, flows) -> dict:
    clock, fill = time.perf_counter_ns, ledger.fill
    samples = []
    for k, a, i, loc, side, qty, px in fills:
        t0 = clock()
        r = fill(k, a, i, loc, side, qty, px)
        samples.append(clock() - t0)
        if r is not None:
            raise AssertionError(f"fill {k} refused: {r}")
        flows[(a, i)] = flows.get((a, i), 0) + (px * qty if side == SELL else -px * qty)
    return pct(samples)


def baseline_dict(fills) -> dict:
    clock, pos = time.perf_counter_ns, {}
    samples = []
    for _k, a, i, _loc, side, qty, _px in fills:
        t0 = clock()
        pos[(a, i)] = pos.get((a, i), 0) + (qty if side == BUY else -qty)
        samples.append(clock() - t0)
    return pct(samples)


def dense(ledger):
    pos = np.zeros((N_ACCOUNTS, N_INSTRUMENTS), dtype=np.int64)
    cost = np.zeros_like(pos)
    for (a, i), cell in ledger.cells().items():
        pos[a, i], cost[a, i] = cell.qty, cell.cost
    return pos, cost


def revaluation(ledger, pf, reps: int) -> tuple[dict, dict, object]:
    pos, cost = dense(ledger)
    marks = pf.marks()
    ledger.revalue()
    got, base = [], []
    clock = time.perf_counter_ns
    for _ in range(reps):
        t0 = clock()
        rv = ledger.revalue()
        got.append(clock() - t0)
        t0 = clock()
        grid = pos * marks[None, :] - cost
        base.append(clock() - t0)
    want = grid[rv.account, rv.instrument]
    assert rv.known.all() and np.array_equal(rv.unrealised, want), "revalue differs from dense numpy"
    assert len(rv.account) == int(np.count_nonzero(pos)), "open cells differ"
    return pct(got), pct(base), len(rv.account)


def busts(ledger, rng, fills, n) -> tuple[dict, set]:
    clock = time.perf_counter_ns
    picked = rng.sample(range(len(fills)), n)
    samples = []
    for j in picked:
        t0 = clock()
        r = ledger.bust(fills[j][0])
        samples.append(clock() - t0)
        assert r is None, r
    return pct(samples), set(picked)


def end_of_day(ledger, fills, busted, reps: int) -> dict:
    before, rows_before = ledger.cells(), ledger.history_rows()
    clock = time.perf_counter_ns
    t0 = clock()
    refused = ledger.end_of_day()
    first = clock() - t0
    assert refused is None, refused
    got, base = [], []
    arrays = ledger._a
    n_cells = int(arrays["meta"][M_CELLS])
    for _ in range(reps):
        t0 = clock()
        ledger.end_of_day()
        got.append(clock() - t0)
        n_rows = ledger.history_rows()
        t0 = clock()
        arrays["cells"][:n_cells].copy(), arrays["locpos"][:n_cells].copy(), arrays["hist"][:n_rows].copy()
        base.append(clock() - t0)
    ledger.validate()
    after = ledger.cells()
    assert after == before, "the end of day changed a cell"
    bound = (sum(len(c.lots) for c in after.values())
             + sum(1 for c in after.values() if c.by_location) * len(ledger.locations))
    assert ledger.history_rows() <= bound, (ledger.history_rows(), bound)
    kept = next(f for j, f in enumerate(fills) if j not in busted)
    assert ledger.bust(kept[0])[0] is LedgerCode.UNKNOWN_ID
    assert ledger.fill("next-day", *kept[1:]) is None
    assert ledger.bust("next-day") is None
    assert ledger.cells() == before, "a bust after the end of day did not give the cells back"
    ledger.validate()
    return {"open_cells": sum(1 for c in after.values() if c.qty), "rows_before": rows_before,
            "rows_after": ledger.history_rows(), "first_ns": first, **pct(got),
            "baseline_numpy_copy": pct(base)}


def check_pnl(ledger, pf, flows) -> None:
    marks = pf.marks()
    for (a, i), flow in flows.items():
        qty = ledger.qty(a, i)
        unreal = ledger.unrealised(a, i)
        assert ledger.realised(a, i) + unreal == flow + qty * int(marks[i]), (a, i)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    rng, ref, pf, ledger, venues, mids, cells = universe(n, seed=1)
    for i in range(N_INSTRUMENTS):
        pf.tick(i, 0, 0, mids[i], 1)
    flows: dict = {}
    seed_positions(ledger, rng, venues, mids, cells, flows)
    reval, reval_base, n_open = revaluation(ledger, pf, 200 if args.quick else 2_000)
    fills = stream(rng, venues, mids, cells, n)
    latency = per_fill(ledger, fills, flows)
    base = baseline_dict(fills)
    reval_after, reval_base_after, n_open_after = revaluation(ledger, pf, 200)
    ledger.validate()
    check_pnl(ledger, pf, flows)
    bust_lat, busted = busts(ledger, rng, fills, 200)
    ledger.validate()
    for j in busted:
        _k, a, i, _loc, side, qty, px = fills[j]
        flows[(a, i)] -= px * qty if side == SELL else -px * qty
    check_pnl(ledger, pf, flows)
    eod = end_of_day(ledger, fills, busted, 20 if args.quick else 200)
    check_pnl(ledger, pf, flows)
    result = {
        "benchmark": "ledger",
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "universe": {"accounts": N_ACCOUNTS, "instruments": N_INSTRUMENTS, "open_cells": n_open,
                     "fills": n, "methods": "half average, half fifo"},
        "per_fill": latency,
        "baseline_dict_update": base,
        "p99_ratio_to_baseline": round(latency["p99_ns"] / max(base["p99_ns"], 1), 1),
        "revalue_10k_open": reval,
        "baseline_dense_numpy_200k_grid": reval_base,
        "revalue_p50_speedup_vs_dense": round(reval_base["p50_ns"] / max(reval["p50_ns"], 1), 1),
        "revalue_after_stream": {"open_cells": n_open_after, **reval_after,
                                 "dense_p50_ns": reval_base_after["p50_ns"]},
        "bust_random_fill": bust_lat,
        "end_of_day": eod,
        "end_of_day_p50_ratio_to_copy": round(eod["p50_ns"] / max(eod["baseline_numpy_copy"]["p50_ns"], 1), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
