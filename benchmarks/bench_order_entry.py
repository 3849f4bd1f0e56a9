"""Order entry over real sockets: round trip and pipelined throughput. Prints one JSON object.

    python benchmarks/bench_order_entry.py [--orders 20000] [--window 256]

A `kilat serve` process (fsync on, CurveZMQ on, as configured by default) on tcp loopback, and
this process as the client (with user bob's CURVE keys). Baseline in the same run: a bare pyzmq
ROUTER echo process (no CURVE), same framing, same payload sizes.

- round trip: one order at a time, client send → server (decode, pipeline, journal commit with
  fsync, route) → client receives the acknowledgement; p50 / p99 / p99.9.
- pipelined: up to ``window`` orders in flight; acknowledged orders per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
import zmq

from engine.constants import Side, TimeInForce
from engine.messages import SubmitOrder
from gateways.auth import ClientSecurity
from gateways.client import KilatClient

ROOT = Path(__file__).resolve().parent.parent

ECHO = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    ident, rid, payload = s.recv_multipart()
    s.send_multipart([ident, rid, payload])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orders(n: int, tag: str) -> list[bytes]:
    enc = msgspec.msgpack.Encoder().encode
    out = []
    for i in range(n):
        side = Side.BUY if i % 2 else Side.SELL
        price = 15_000 + (i % 50) * (-1 if side == Side.BUY else 1) - (25 if side == Side.BUY else -25)
        out.append(enc(SubmitOrder("FUND1" if i % 2 else "MM1", f"{tag}{i}", "AAPL", side, 1 + i % 5,
                                   price=price, tif=TimeInForce.GTC, user="bob")))
    return out


def bench_config(scratch: Path) -> Path:
    """The default configuration, risk and compliance on, with throttles opened up to the rates
    this benchmark sends (the default 500 orders per second per account would refuse most)."""
    text = (ROOT / "config" / "kilat.toml").read_text()
    for name, value in (("max_orders_per_window = 500", "max_orders_per_window = 50000"),
                        ("max_modifies_per_window = 500", "max_modifies_per_window = 50000"),
                        ("max_orders_per_window = 1000", "max_orders_per_window = 50000"),
                        ("max_modifies_per_window = 1000", "max_modifies_per_window = 50000")):
        if name not in text:
            raise RuntimeError(f"config/kilat.toml no longer has {name!r}: update bench_config")
        text = text.replace(name, value)
    path = scratch / "bench.toml"
    path.write_text(text)
    return path


def seed_price(endpoint: str, keys: Path) -> None:
    """Risk denies orders with no reference price: an admin posts one first."""
    with KilatClient.from_keys_dir(endpoint, keys, "admin") as admin:
        admin.price("AAPL", 14_990, 15_010, 15_000)


def first_replies(endpoint: str, account: str, tag: str, keys: Path) -> dict[str, int]:
    """After timing: what the server answered (accepted, held for approval, denied...)."""
    with KilatClient.from_keys_dir(endpoint, keys, "bob") as kc:
        orders_seen = [o for o in kc.orders(account=account) if o.cl_ord_id.startswith(tag)]
    counts: dict[str, int] = {}
    for o in orders_seen:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts


def round_trip(endpoint: str, payloads: list[bytes], configure=None) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if configure is not None:
        configure(sock)
    sock.connect(endpoint)
    clock = time.perf_counter_ns
    samples = []
    try:
        for i, payload in enumerate(payloads):
            rid = i.to_bytes(8, "little")
            t0 = clock()
            sock.send_multipart([rid, payload])
            while True:
                got, _ = sock.recv_multipart()
                if got == rid:
                    break
            samples.append(clock() - t0)
    finally:
        sock.close(0)
    a = np.asarray(samples[len(samples) // 10:])  # drop the warm-up tenth
    return {"p50_us": round(float(np.percentile(a, 50)) / 1e3, 1),
            "p99_us": round(float(np.percentile(a, 99)) / 1e3, 1),
            "p99_9_us": round(float(np.percentile(a, 99.9)) / 1e3, 1), "n": len(a)}


def pipelined(endpoint: str, payloads: list[bytes], window: int, configure=None) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if configure is not None:
        configure(sock)
    sock.connect(endpoint)
    sent = received = 0
    n = len(payloads)
    t0 = time.perf_counter()
    try:
        while received < n:
            while sent < n and sent - received < window:
                sock.send_multipart([sent.to_bytes(8, "little"), payloads[sent]])
                sent += 1
            rid, _ = sock.recv_multipart()
            if rid:  # pushes (maker fills) carry an empty request id
                received += 1
    finally:
        sock.close(0)
    return {"orders_per_s": round(n / (time.perf_counter() - t0)), "n": n, "window": window}


def start(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith(("kilat: ready", "ready")):
        proc.kill()
        raise RuntimeError(f"did not start: {line!r}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kilat-bench-oe-"))
    result: dict = {"benchmark": "order_entry", "machine": {
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "processor": platform.processor() or platform.machine()}}
    try:
        echo_ep = f"tcp://127.0.0.1:{free_port()}"
        echo = start([sys.executable, "-c", ECHO, echo_ep])
        try:
            result["baseline_echo_round_trip"] = round_trip(echo_ep, orders(args.orders, "e"))
            result["baseline_echo_pipelined"] = pipelined(echo_ep, orders(args.orders, "f"), args.window)
        finally:
            echo.kill()
        kilat_ep = f"tcp://127.0.0.1:{free_port()}"
        keys = scratch / "keys"
        server = start([sys.executable, "-m", "kilat", "serve", "--endpoint", kilat_ep,
                        "--data-dir", str(scratch / "data"), "--config", str(bench_config(scratch)),
                        "--keys-dir", str(keys), "--venue-endpoint", f"tcp://127.0.0.1:{free_port()}",
                        "--drop-copy-endpoint", f"tcp://127.0.0.1:{free_port()}"])
        try:
            seed_price(kilat_ep, keys)
            curve = ClientSecurity.from_keys_dir(keys, "bob")
            result["kilat_round_trip"] = round_trip(kilat_ep, orders(args.orders, "r"), curve)
            result["kilat_pipelined"] = pipelined(kilat_ep, orders(args.orders, "p"), args.window, curve)
            statuses = {tag: {a: first_replies(kilat_ep, a, tag, keys) for a in ("FUND1", "MM1")}
                        for tag in ("r", "p")}
            result["order_statuses"] = statuses
            accepted = sum(n for per in statuses.values() for counts in per.values()
                           for status, n in counts.items() if status in ("New", "PendingApproval"))
            if accepted < args.orders:  # the check after timing: orders reached the book (or a hold)
                raise RuntimeError(f"only {accepted} of {2 * args.orders} orders were accepted or held: "
                                   f"{statuses}")
        finally:
            server.terminate()
            server.wait(10)
        base, ours = result["baseline_echo_round_trip"], result["kilat_round_trip"]
        result["round_trip_ratio"] = {"p50": round(ours["p50_us"] / base["p50_us"], 2),
                                      "p99": round(ours["p99_us"] / base["p99_us"], 2)}
        result["pipelined_ratio"] = round(result["kilat_pipelined"]["orders_per_s"]
                                          / result["baseline_echo_pipelined"]["orders_per_s"], 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
