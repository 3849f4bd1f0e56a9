"""Real order flow through both books: CME ESH4 market-by-order data. Prints one JSON object.

    python benchmarks/bench_real_flow.py [--csv MBO.csv.gz] [--tick-size 0.25] [--repeats 7]

By default the 14,000-record sample in tests/data; give the whole day's CSV (the project's shared
market data has it) for the full 74,653-command stream. The flow is converted with
engine.workload.workload_from_mbo_csv and replayed through the numba batch path and the
reference book in this process; both must agree (trades, quantity, final state hash).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from engine.workload import run_workload, warm_up, workload_from_mbo_csv

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "esh4_mbo_20231225_first14000.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=SAMPLE)
    parser.add_argument("--tick-size", default="0.25")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warm_up()
    arrays = workload_from_mbo_csv(args.csv, args.tick_size)
    result = run_workload(arrays, repeats=args.repeats)
    print(json.dumps({
        "benchmark": "real_flow",
        "source": args.csv.name,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        **{k: result[k] for k in ("commands", "trades", "traded_qty", "best_bid", "best_ask",
                                  "resting_orders", "ops_per_s", "reference_ops_per_s", "ratio")},
    }, indent=2))


if __name__ == "__main__":
    main()
