"""What CurveZMQ costs: a DEALER/ROUTER echo plain vs CURVE, and reading User-Id per message.

Run: ``.venv/bin/python benchmarks/bench_curve.py [--round-trips N] [--pipelined N]``; prints JSON.

- round trip: one ~100-byte order-sized request at a time to a bare pyzmq ROUTER echo in its
  own process, once plaintext and once CURVE (the CURVE echo runs Kilat's ZAP handler,
  ``gateways.auth.CurveAuth``); the two are measured in alternating blocks of the same run,
  so the ratio compares like with like. p50 / p99 / p99.9 per mode.
- pipelined: N requests in flight, replies per second, plain vs CURVE.
- connect: a new connection's first round trip (the CURVE handshake and its ZAP request).
- User-Id: the order-entry server's own drains on a CURVE socket whose queue was filled first,
  in alternating batches: ``_drain_secure`` (``frame.get("User-Id")`` per message) against
  ``_drain_plain`` (the same loop without the ``get``: the difference is the metadata read),
  and ``recv_multipart(copy=True)`` asking ZMQ_EVENTS per message (the server's drain before
  CURVE) as the reference.

Every timed result is checked afterwards: each reply equals its request, every drained message
is complete and carries the sender's user. Keys are generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402 (benchmarks/ is on sys.path: the script's own folder)

from engine.constants import Side  # noqa: E402
from engine.messages import SubmitOrder  # noqa: E402
from gateways.auth import ClientSecurity, ServerSecurity, ensure_dev_keys  # noqa: E402
from gateways.server import OrderEntryServer  # noqa: E402

ECHO = """
import sys, zmq
sys.path.insert(0, sys.argv[3])
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.RCVHWM, 0)
s.setsockopt(zmq.SNDHWM, 0)
if sys.argv[2] != "-":
    from gateways.auth import ServerSecurity
    security = ServerSecurity.from_keys_dir(sys.argv[2], ["alice"])
    security.start_auth(ctx)
    security(s)
s.bind(sys.argv[1])
print(s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    s.send_multipart(s.recv_multipart())
"""


def _payload() -> bytes:
    return msgspec.msgpack.encode(SubmitOrder("FUND1", "bench-0000000001", "AAPL", Side.BUY, 100,
                                              price=19_010, user="alice"))


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 1)

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "p99_9_us": pick(0.999),
            "max_us": round(ordered[-1] / 1000, 1), "n": len(ordered)}


def _start_echo(keys_dir: str | None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", ECHO, "tcp://127.0.0.1:*", keys_dir or "-",
                             str(ROOT)], stdout=subprocess.PIPE, text=True)
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("tcp://"):
        proc.kill()
        raise RuntimeError(f"the echo server did not start: {endpoint!r}")
    return proc, endpoint


def _client(ctx: zmq.Context, endpoint: str, security: ClientSecurity | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if security is not None:
        security(sock)
    sock.connect(endpoint)
    return sock


def bench_round_trip(socks: dict[str, zmq.Socket], payload: bytes, n: int, block: int) -> dict:
    samples: dict[str, list[int]] = {mode: [] for mode in socks}
    clock = time.perf_counter_ns
    for sock in socks.values():  # warm up: connection, handshake, allocator
        for i in range(200):
            sock.send_multipart([i.to_bytes(8, "little"), payload])
            sock.recv_multipart()
    for start in range(0, n, block):
        for mode, sock in socks.items():
            send, recv, out = sock.send_multipart, sock.recv_multipart, samples[mode]
            for i in range(start, min(n, start + block)):
                rid = i.to_bytes(8, "little")
                t0 = clock()
                send([rid, payload])
                got = recv()
                out.append(clock() - t0)
                if got[0] != rid or got[1] != payload:
                    raise AssertionError(f"{mode}: reply {i} is not its request")
    result = {mode: _percentiles(s) for mode, s in samples.items()}
    result["ratio_curve_over_plain"] = {
        k: round(result["curve"][k] / result["plain"][k], 2) for k in ("p50_us", "p99_us", "p99_9_us")}
    return result


def bench_pipelined(socks: dict[str, zmq.Socket], payload: bytes, n: int, repeats: int) -> dict:
    rates: dict[str, list[float]] = {mode: [] for mode in socks}
    for _ in range(repeats):
        for mode, sock in socks.items():
            t0 = time.perf_counter()
            for i in range(n):
                sock.send_multipart([i.to_bytes(8, "little"), payload])
            for i in range(n):
                rid, got = sock.recv_multipart()
                if int.from_bytes(rid, "little") != i or got != payload:
                    raise AssertionError(f"{mode}: pipelined reply {i} is out of order or wrong")
            rates[mode].append(n / (time.perf_counter() - t0))
    out = {mode: {"replies_per_s": round(statistics.median(r)), "repeats": repeats, "in_flight": n}
           for mode, r in rates.items()}
    out["ratio_curve_over_plain"] = round(out["curve"]["replies_per_s"] / out["plain"]["replies_per_s"], 2)
    return out


def bench_connect(ctx: zmq.Context, endpoints: dict[str, str], securities: dict, payload: bytes,
                  n: int) -> dict:
    samples: dict[str, list[int]] = {mode: [] for mode in endpoints}
    for i in range(n):
        for mode, endpoint in endpoints.items():
            t0 = time.perf_counter_ns()
            sock = _client(ctx, endpoint, securities[mode])
            sock.send_multipart([b"c", payload])
            if not sock.poll(5000) or sock.recv_multipart() != [b"c", payload]:
                raise AssertionError(f"{mode}: connection {i} got no echo")
            samples[mode].append(time.perf_counter_ns() - t0)
            sock.close(0)
    result = {mode: _percentiles(s) for mode, s in samples.items()}
    result["ratio_curve_over_plain_p50"] = round(result["curve"]["p50_us"] / result["plain"]["p50_us"], 2)
    return result


def bench_user_id(keys_dir: str, payload: bytes, n: int, batch: int) -> dict:
    """ns per message of the server's two drains on one pre-filled CURVE socket."""
    server = OrderEntryServer("tcp://127.0.0.1:*", lambda requests: [], max_batch=batch,
                              hwm=0, rcvhwm=0, security=ServerSecurity.from_keys_dir(keys_dir, ["alice"]))
    ctx = zmq.Context()
    sender = _client(ctx, server.bound_endpoint, ClientSecurity.from_keys_dir(keys_dir, "alice"))
    try:
        for i in range(n):
            sender.send_multipart([i.to_bytes(8, "little"), payload])
        deadline = time.monotonic() + 60
        while not server._sock.poll(100):
            if time.monotonic() > deadline:
                raise AssertionError("nothing arrived")
        time.sleep(1.0 + n * 10e-6)  # let the I/O thread decrypt everything first
        drains = {"secure_drain_user_id": server._drain_secure,
                  "plain_drain": server._drain_plain,
                  "recv_multipart_before": lambda: _drain_before(server._sock, batch)}
        per_msg: dict[str, list[float]] = {name: [] for name in drains}
        got = 0
        while got < n:
            for name, drain in drains.items():
                if got >= n:
                    break
                t0 = time.perf_counter_ns()
                frames, users = drain()
                elapsed = time.perf_counter_ns() - t0
                if not frames:
                    if not server._sock.poll(2000):
                        raise AssertionError(f"only {got} of {n} messages arrived")
                    continue
                got += len(frames)
                if len(frames) == batch:  # full batches only: the same work in both
                    per_msg[name].append(elapsed / len(frames))
                if any(len(p) != 3 or p[2] != payload for p in frames):
                    raise AssertionError(f"{name}: an incomplete or altered message")
                if users is not None and set(users) != {"alice"}:
                    raise AssertionError(f"{name}: User-Id {set(users)}, expected alice")
    finally:
        sender.close(0)
        ctx.term()
        server.close()
    out = {name: {"ns_per_message_median": round(statistics.median(v)),
                  "ns_per_message_p90": round(sorted(v)[int(0.9 * len(v))]), "batches": len(v)}
           for name, v in per_msg.items()}
    secure = out["secure_drain_user_id"]["ns_per_message_median"]
    plain = out["plain_drain"]["ns_per_message_median"]
    before = out["recv_multipart_before"]["ns_per_message_median"]
    out["user_id_get_ns_per_message"] = secure - plain
    out["ratio_secure_over_plain"] = round(secure / plain, 2)
    out["ratio_secure_over_before"] = round(secure / before, 2)
    out["messages"] = n
    return out


def _drain_before(sock: zmq.Socket, limit: int) -> tuple[list[list[bytes]], None]:
    """The order-entry server's drain before CURVE: ZMQ_EVENTS, then recv_multipart(copy=True)."""
    frames = []
    while len(frames) < limit and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        frames.append(sock.recv_multipart(flags=zmq.NOBLOCK, copy=True))
    return frames, None


def _machine() -> dict:
    return machine(pyzmq=zmq.__version__, libzmq=zmq.zmq_version())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--block", type=int, default=1_000, help="round trips per mode in turn")
    parser.add_argument("--pipelined", type=int, default=20_000, help="requests in flight")
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--user-id-messages", type=int, default=100_000)
    args = parser.parse_args()

    payload = _payload()
    with tempfile.TemporaryDirectory(prefix="kilat-bench-curve-") as keys_dir:
        ensure_dev_keys(keys_dir, ["alice"])
        procs = []
        ctx = zmq.Context()
        try:
            plain_proc, plain_ep = _start_echo(None)
            procs.append(plain_proc)
            curve_proc, curve_ep = _start_echo(keys_dir)
            procs.append(curve_proc)
            securities = {"plain": None, "curve": ClientSecurity.from_keys_dir(keys_dir, "alice")}
            endpoints = {"plain": plain_ep, "curve": curve_ep}
            socks = {mode: _client(ctx, endpoints[mode], securities[mode]) for mode in endpoints}
            result = {
                "benchmark": "curve",
                "machine": _machine(),
                "payload_bytes": len(payload),
                "round_trip": bench_round_trip(socks, payload, args.round_trips, args.block),
                "pipelined": bench_pipelined(socks, payload, args.pipelined, repeats=3),
                "connect_and_first_round_trip": bench_connect(ctx, endpoints, securities, payload,
                                                              args.connects),
            }
            for sock in socks.values():
                sock.close(0)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            ctx.term()
        result["user_id_read"] = bench_user_id(keys_dir, payload, args.user_id_messages, batch=512)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
