"""Block allocation latency: one fill split over 1,000 accounts; prints one JSON document.

    .venv/bin/python benchmarks/bench_allocation.py [--accounts 1000] [--fills 5000]

- ``kernel``: ``BlockAllocator.on_fill`` with weights whose products fit int64 (the numba path),
  per call, p50 / p99 / p99.9 in ns (the Python call and building the increments included);
- ``exact``: the same with NAV × target-weight weights (~1e17 each), which take the Python-int
  path;
- ``nav``: those weights as the pipeline hands them over, quantized to 30 bits
  (``quantize_weights``), on the kernel path;
- ``baseline``: a plain-Python Hamilton split of each fill alone (divmod per account, sort of the
  remainders) over the same weights, in the same process; ``ratio`` = kernel p50 / baseline p50.

After timing, each run is checked: every increment non-negative, Σ quantity and Σ notional of the
increments equal to the fills, ``validate()`` passes, and the kernel and exact runs on the same
weights give identical increments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import allocation_kernels as kernels  # noqa: E402
from engine.allocation import BlockAllocator, quantize_weights  # noqa: E402

SEED = 20240611


def pct(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64)
    return {"p50_ns": float(np.percentile(a, 50)), "p99_ns": float(np.percentile(a, 99)),
            "p99_9_ns": float(np.percentile(a, 99.9)), "n": len(a)}


def hamilton(weights: list[int], total: int, qty: int) -> list[int]:
    """Baseline: one fill alone split by largest remainder, ties by index."""
    shares = [divmod(qty * w, total) for w in weights]
    out = [q for q, _ in shares]
    left = qty - sum(out)
    for i in sorted(range(len(weights)), key=lambda i: -shares[i][1])[:left]:
        out[i] += 1
    return out


def run(accounts: list[str], weights: list[int], fills: list[tuple[int, int]]):
    alloc = BlockAllocator(accounts, weights, block_id="BENCH-1")
    on_fill, clock = alloc.on_fill, time.perf_counter_ns
    times, results = [], []
    for qty, notional in fills:
        t0 = clock()
        inc = on_fill(qty, notional)
        times.append(clock() - t0)
        results.append(inc)
    return alloc, times, results


def check(alloc: BlockAllocator, fills, results) -> None:
    for (qty, notional), inc in zip(fills, results, strict=True):
        assert all(q >= 0 for _, q, _ in inc)
        assert sum(q for _, q, _ in inc) == qty
        assert sum(x for _, _, x in inc) == notional
    alloc.validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--fills", type=int, default=5000)
    args = parser.parse_args()

    rng = random.Random(SEED)
    accounts = [f"ACC-{k:05d}" for k in range(args.accounts)]
    small = [rng.randint(1, 1_000_000) for _ in accounts]  # e.g. NAV in thousands
    big = [rng.randint(1, 10_000) * rng.randint(10**12, 10**13) for _ in accounts]  # bps × NAV
    fills = [(q, q * rng.randint(9_900, 10_100)) for q in
             (rng.choice([1, 7, 100, 250, 1000, 5000]) for _ in range(args.fills))]

    kernels.warm_up()
    run(accounts, small, fills[:50])  # warm the JIT and caches

    alloc, kernel_ns, kernel_res = run(accounts, small, fills)
    alloc_big, exact_ns, exact_res = run(accounts, big, fills)
    alloc_nav, nav_ns, nav_res = run(accounts, quantize_weights(big), fills)
    total = sum(small)
    base_ns, clock = [], time.perf_counter_ns
    for qty, _ in fills:
        t0 = clock()
        hamilton(small, total, qty)
        base_ns.append(clock() - t0)

    check(alloc, fills, kernel_res)
    check(alloc_big, fills, exact_res)
    check(alloc_nav, fills, nav_res)
    limit = kernels.KERNEL_LIMIT
    kernels.KERNEL_LIMIT = 0
    try:
        _, _, exact_small = run(accounts, small, fills)
    finally:
        kernels.KERNEL_LIMIT = limit
    assert exact_small == kernel_res, "kernel and exact paths differ"

    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workload": {"accounts": args.accounts, "fills": args.fills, "seed": SEED,
                     "filled_qty": alloc.filled_qty},
        "on_fill_kernel": pct(kernel_ns),
        "on_fill_exact": pct(exact_ns),
        "on_fill_nav_quantized": pct(nav_ns),
        "baseline_hamilton_python": pct(base_ns),
    }
    out["ratio_kernel_vs_baseline_p50"] = (out["on_fill_kernel"]["p50_ns"]
                                           / out["baseline_hamilton_python"]["p50_ns"])
    out["budget_1ms_met_p99"] = out["on_fill_kernel"]["p99_ns"] <= 1_000_000
    out["budget_1ms_met_p99_nav"] = out["on_fill_nav_quantized"]["p99_ns"] <= 1_000_000
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
