"""`make bench`: run every benchmark script, each printing JSON; collect them into one JSON list.

Benchmarks are not timed tests: they report medians and ratios against a baseline measured in
the same run. Copy the figures into docs/BENCHMARKS.md with the machine they ran on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_book.py", "bench_real_flow.py", "bench_pipeline.py", "bench_journal.py",
           "bench_order_entry.py", "bench_risk.py", "bench_compliance.py", "bench_surveillance.py",
           "bench_pretrade.py", "bench_ledger.py", "bench_allocation.py", "bench_feed.py", "bench_curve.py",
           "bench_route.py"]


def main() -> int:
    results = []
    for name in SCRIPTS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(HERE / name)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
