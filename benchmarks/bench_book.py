"""Book throughput, latency and memory benchmark; prints one JSON document.

    .venv/bin/python benchmarks/bench_book.py [--commands 1000000] [--repeats 5]

- throughput: the seeded 1M-command exchange-core-style workload through the numba batch path
  and the reference book, in this process, ``repeats`` times; medians and their ratio (each run
  is verified: identical event streams and final state hashes);
- latency: per-command ``submit`` / ``cancel`` calls of the numba book (Python call included),
  p50 / p99 / p99.9 in ns;
- memory: bytes of state of a NumbaBook sized for 10,000 instruments and 1,000,000 orders.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from statistics import median

import numpy as np

from engine.book import NumbaBook
from engine.book_events import C_OP, OP_CANCEL, OP_SUBMIT
from engine.workload import generate_workload, run_workload, to_arrays, warm_up

SEED = 20240601


def _percentiles(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64)
    return {f"p{p}": float(np.percentile(a, p)) for p in (50, 99, 99.9)} | {"n": len(ns)}


def latency(cmds: np.ndarray, n: int) -> dict:
    """Time each per-command call of the numba book (one jitted call each)."""
    book = NumbaBook(1, 1 << 17, max_levels_per_side=4096)
    submit, cancel, clock = book.submit, book.cancel, time.perf_counter_ns
    times: dict[str, list[int]] = {"submit": [], "cancel": []}
    for row in cmds[:n].tolist():
        if row[C_OP] == OP_SUBMIT:
            t0 = clock()
            submit(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])
            times["submit"].append(clock() - t0)
        elif row[C_OP] == OP_CANCEL:
            t0 = clock()
            cancel(row[1])
            times["cancel"].append(clock() - t0)
    return {name: _percentiles(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-commands", type=int, default=200_000)
    args = parser.parse_args()

    warm_up()
    cmds = generate_workload(args.commands, seed=SEED)
    arrays = to_arrays(cmds)
    runs = [run_workload(arrays, repeats=1) for _ in range(args.repeats)]
    numba_ops = median(r["ops_per_s"] for r in runs)
    ref_ops = median(r["reference_ops_per_s"] for r in runs)
    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workload": {"commands": args.commands, "seed": SEED, "events": runs[0]["events"]},
        "throughput": {
            "numba_ops_per_s": numba_ops,
            "reference_ops_per_s": ref_ops,
            "ratio": numba_ops / ref_ops,
            "numba_seconds_median": median(r["seconds"] for r in runs),
            "reference_seconds_median": median(r["reference_seconds"] for r in runs),
            "repeats": args.repeats,
            "trades": runs[0]["trades"],
            "traded_qty": runs[0]["traded_qty"],
        },
        "latency_ns": latency(cmds, args.latency_commands),
        "memory": {
            "n_instruments": 10_000,
            "max_orders": 1_000_000,
            "max_levels_per_side": 1024,
            "bytes": NumbaBook.footprint(10_000, 1_000_000),
        },
    }
    out["memory"]["mib"] = out["memory"]["bytes"] / 2**20
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
