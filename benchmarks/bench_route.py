"""A full route: PM order -> Kilat (risk, compliance, journal) -> smart order router -> simulated
venue fill -> the PM's session sees the fill. Prints one JSON object.

    python benchmarks/bench_route.py [--orders 2000]

Processes on tcp loopback, CurveZMQ on: `kilat serve` (fsync on, the default configuration with
its throttles opened up) and one `kilat venue` (XSIM1); this process is the PM. Each order is a
marketable buy routed to XSIM1 (``route="XSIM1"``, one child) so every one fills; the time is
from the PM's send to the pushed ``OrderFilled`` that completes it. Baseline in the same run: the
PM's order-entry round trip to its acknowledgement (same server, same kind of order resting in
Kilat's own book), so the ratio is what the venue hop costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_order_entry import bench_config, free_port, start  # noqa: E402

from engine.constants import Side  # noqa: E402
from engine.messages import OrderAccepted, OrderFilled  # noqa: E402
from gateways.client import KilatClient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pct(samples: list[int]) -> dict:
    a = np.asarray(samples[len(samples) // 10:], dtype=np.float64) / 1e3  # drop the warm-up tenth
    return {"p50_us": round(float(np.percentile(a, 50)), 1), "p99_us": round(float(np.percentile(a, 99)), 1),
            "p99_9_us": round(float(np.percentile(a, 99.9)), 1), "n": len(a)}


def routed_fill(pm: KilatClient, n: int) -> list[int]:
    """Send a marketable order to XSIM1, wait for the fill that completes it; one at a time."""
    clock, out = time.perf_counter_ns, []
    for i in range(n):
        t0 = clock()
        ack = pm.submit("FUND1", "AAPL", Side.BUY, 1, 19_500, cl_ord_id=f"route-{i}", route="XSIM1")
        if type(ack[0]) is not OrderAccepted:
            raise RuntimeError(f"order {i} was not accepted: {ack}")
        oid = ack[0].order_id
        deadline = time.monotonic() + 10
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise RuntimeError(f"order {oid} was not filled within 10 s")
            rid, replies = pm.receive(timeout=10)
            done = any(type(e) is OrderFilled and e.order_id == oid and e.leaves_qty == 0 for e in replies)
        out.append(clock() - t0)
    return out


def acknowledged(pm: KilatClient, n: int) -> list[int]:
    clock, out = time.perf_counter_ns, []
    for i in range(n):
        t0 = clock()
        ack = pm.submit("FUND1", "AAPL", Side.BUY, 1, 18_900, cl_ord_id=f"ack-{i}")
        out.append(clock() - t0)
        if type(ack[0]) is not OrderAccepted:
            raise RuntimeError(f"order {i} was not accepted: {ack}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kilat-bench-route-"))
    result: dict = {"benchmark": "full_route", "machine": {
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "processor": platform.processor() or platform.machine()}}
    procs: list[subprocess.Popen] = []
    try:
        config, keys = bench_config(scratch), scratch / "keys"
        kilat_ep, venue_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        procs.append(start([sys.executable, "-m", "kilat", "serve", "--endpoint", kilat_ep, "--config", str(config),
                            "--data-dir", str(scratch / "data"), "--keys-dir", str(keys),
                            "--venue-endpoint", venue_ep,
                            "--drop-copy-endpoint", f"tcp://127.0.0.1:{free_port()}"]))
        with open(scratch / "XSIM1.log", "w") as log:
            venue = subprocess.Popen([sys.executable, "-m", "kilat", "venue", "--mic", "XSIM1", "--config", str(config),
                                      "--keys-dir", str(keys), "--venue-endpoint", venue_ep,
                                      "--data-dir", str(scratch / "venues"),
                                      "--feed-endpoint", f"tcp://127.0.0.1:{free_port()}"],
                                     stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        procs.append(venue)
        if not venue.stdout.readline().startswith("kilat venue: ready"):
            raise RuntimeError(f"the venue did not start: {(scratch / 'XSIM1.log').read_text()}")
        with KilatClient.from_keys_dir(kilat_ep, keys, "admin") as admin:
            admin.price("AAPL", 18_990, 19_010, 19_000)
        with KilatClient.from_keys_dir(kilat_ep, keys, "alice", timeout=10) as pm:
            deadline = time.monotonic() + 30
            while {r[0]: r[1] for r in pm.venues().rows}.get("XSIM1") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("XSIM1 did not log on")
                time.sleep(0.2)
            result["baseline_order_entry_ack"] = pct(acknowledged(pm, args.orders))
            result["route_to_fill"] = pct(routed_fill(pm, args.orders))
            venues = {r[0]: r for r in pm.venues().rows}
            result["check"] = {"fills_at_xsim1": venues["XSIM1"][4]}
            if venues["XSIM1"][4] < args.orders:  # the check after timing: every order filled there
                raise RuntimeError(f"only {venues['XSIM1'][4]} fills at XSIM1 for {args.orders} orders")
        result["ratio_p50"] = round(result["route_to_fill"]["p50_us"] / result["baseline_order_entry_ack"]["p50_us"], 2)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
