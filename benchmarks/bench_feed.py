"""Price-feed throughput: ticks/s from a real PUB through ``FeedHandler.poll`` + ``take_updates``.

Run: ``.venv/bin/python benchmarks/bench_feed.py [--messages N] [--repeats R] [--batch B]``;
prints JSON.

Each run, a publisher thread sends N pre-encoded feed messages (quotes and trades of every
configured instrument from two sources, 4 quotes to 1 trade) over tcp loopback into the SUB's
queue, then the consumer drains them (both HWMs unlimited, so nothing is dropped):

- ``handler``: ``poll(B)`` then ``take_updates()`` per loop turn, as the service does;
- ``baseline``: a bare SUB loop receiving the same frames (two ``recv`` per message, nothing
  decoded) in the same process, interleaved run by run.

Reported: the median rate over R runs of each, the ratio handler / baseline, and the latency of
one loop turn (p50 / p99 / p99.9). Each handler run is checked afterwards: every message counted
as a quote or trade, no gap, and each instrument's mark equal to the last quote and trade sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import msgspec
import zmq
from machine import machine  # noqa: E402 (run from benchmarks/: it is on sys.path)

from gateways.feed import FeedHandler
from gateways.feed_messages import FeedHeartbeat, Quote, Trade, topic
from kilat.config import check_config, load_config

SOURCES = ("XSIM1", "XSIM2")


def _frames(symbols: list[str], n: int) -> tuple[list[tuple[bytes, bytes]], dict]:
    """n messages, round robin over symbols and sources; returns them and the expected marks."""
    enc = msgspec.msgpack.Encoder()
    seq = dict.fromkeys(SOURCES, 0)
    quotes: dict[tuple[str, str], tuple[int, int]] = {}
    last: dict[str, int] = {}
    frames = []
    ts = 1_723_161_254_000_000_000
    for k in range(n):
        symbol = symbols[k % len(symbols)]
        source = SOURCES[(k // len(symbols)) % 2]
        seq[source] += 1
        ts += 1000
        base = 10_000 + (k * 7919) % 500
        if k % 5 == 4:
            msg = Trade(source, seq[source], symbol, base, 1 + k % 50, 1 + k % 2, ts)
            last[symbol] = base
        else:
            msg = Quote(source, seq[source], symbol, base, 100, base + 2, 200, ts)
            quotes[(source, symbol)] = (base, base + 2)
        frames.append((topic(symbol), enc.encode(msg)))
    for source in SOURCES:
        frames.append((b"|", enc.encode(FeedHeartbeat(source, seq[source], ts))))
    marks = {}
    for symbol in symbols:
        sides = [quotes[(s, symbol)] for s in SOURCES if (s, symbol) in quotes]
        marks[symbol] = (max(b for b, _ in sides), min(a for _, a in sides), last.get(symbol, 0))
    return frames, marks


def _publish(pub: zmq.Socket, frames: list[tuple[bytes, bytes]]) -> None:
    send = pub.send_multipart
    for pair in frames:
        send(pair)


def _fill(pub: zmq.Socket, frames: list[tuple[bytes, bytes]]) -> None:
    """Queue every frame in the subscriber (publisher in a thread), then let the I/O thread
    finish moving them over loopback."""
    thread = threading.Thread(target=_publish, args=(pub, frames))
    thread.start()
    thread.join()
    time.sleep(0.5 + len(frames) / 1_000_000)


def _handshake(pub: zmq.Socket, heard) -> None:
    """Send heartbeats of a third source until the subscriber hears one (it is connected),
    then let the rest arrive and drain them."""
    hb = (b"|", msgspec.msgpack.encode(FeedHeartbeat("HANDSHAKE", 0, 0)))
    deadline = time.monotonic() + 10
    while not heard():
        if time.monotonic() > deadline:
            raise RuntimeError("the subscriber did not connect")
        pub.send_multipart(hb)
        time.sleep(0.01)
    time.sleep(0.1)
    while heard():
        pass


def run_baseline(sub: zmq.Socket, pub: zmq.Socket, frames) -> dict:
    _fill(pub, frames)
    recv, total, n, empty = sub.recv, len(frames), 0, 0
    t0 = time.perf_counter()
    while n < total:
        try:
            recv(zmq.NOBLOCK)
            recv(zmq.NOBLOCK)
            n += 1
        except zmq.Again:
            empty += 1
    elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "empty_polls": empty}


def run_handler(handler: FeedHandler, pub: zmq.Socket, frames, marks, batch: int) -> dict:
    _fill(pub, frames)
    total, turns, empty, rows = len(frames), [], 0, 0
    before = handler.stats()
    resets_before = sum(st.resets for st in handler.status(1))
    clock = time.perf_counter
    t0 = clock()
    n = 0
    while n < total:
        start = clock()
        got = handler.poll(batch, 1)
        rows += len(handler.take_updates(1))
        turns.append(clock() - start)
        if got == 0:
            empty += 1
        n += got
    elapsed = clock() - t0
    stats = handler.stats()
    ticks = (stats.quotes - before.quotes) + (stats.trades - before.trades)
    assert ticks == total - len(SOURCES), f"expected {total - len(SOURCES)} ticks, counted {ticks}"
    assert stats.received - before.received == total
    status = handler.status(1)
    assert all(st.gaps == 0 for st in status), status
    # Each run replays seq 1..N again: at most one restart per source, never a gap.
    assert sum(st.resets for st in status) - resets_before <= len(SOURCES), status
    for symbol, expected in marks.items():
        assert handler.mark(symbol) == expected, (symbol, handler.mark(symbol), expected)
    return {"rate": ticks / elapsed, "empty_polls": empty, "turns": turns, "rows": rows}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_us": round(pick(0.50) * 1e6, 1), "p99_us": round(pick(0.99) * 1e6, 1),
            "p99_9_us": round(pick(0.999) * 1e6, 1), "max_us": round(ordered[-1] * 1e6, 1)}


def _machine() -> dict:
    return machine(pyzmq=zmq.__version__, libzmq=zmq.zmq_version())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096, help="messages per poll (loop turn)")
    args = parser.parse_args()

    ref = check_config(load_config())
    symbols = [inst.symbol for inst in ref.by_index]
    frames, marks = _frames(symbols, args.messages)
    ctx = zmq.Context()
    pubs = []
    for _ in range(2):  # one publisher per consumer: each stays connected (no disconnects)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind("tcp://127.0.0.1:*")
        pubs.append(pub)
    bare_pub, handler_pub = pubs
    handler = FeedHandler(ref, [handler_pub.getsockopt_string(zmq.LAST_ENDPOINT)],
                          stale_after_ns=10**12, context=ctx, hwm=0)
    bare = ctx.socket(zmq.SUB)
    bare.setsockopt(zmq.RCVHWM, 0)
    bare.setsockopt(zmq.SUBSCRIBE, b"")
    bare.connect(bare_pub.getsockopt_string(zmq.LAST_ENDPOINT))
    _handshake(bare_pub, lambda: bare.poll(10) and bare.recv_multipart())
    _handshake(handler_pub, lambda: handler.poll(10, 1))

    handler_runs, baseline_runs, turns = [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        baseline_runs.append(run_baseline(bare, bare_pub, frames))
        run = run_handler(handler, handler_pub, frames, marks, args.batch)
        turns += run.pop("turns")
        handler_runs.append(run)

    handler_rate = statistics.median(r["rate"] for r in handler_runs)
    baseline_rate = statistics.median(r["rate"] for r in baseline_runs)
    result = {
        "benchmark": "feed",
        "machine": _machine(),
        "messages": args.messages,
        "instruments": len(symbols),
        "sources": len(SOURCES),
        "batch": args.batch,
        "repeats": args.repeats,
        "handler_ticks_per_s": round(handler_rate),
        "handler_runs_ticks_per_s": [round(r["rate"]) for r in handler_runs],
        "handler_empty_polls": [r["empty_polls"] for r in handler_runs],
        "updates_taken_per_run": handler_runs[-1]["rows"],
        "baseline_bare_sub_msgs_per_s": round(baseline_rate),
        "baseline_runs_msgs_per_s": [round(r["rate"]) for r in baseline_runs],
        "baseline_empty_polls": [r["empty_polls"] for r in baseline_runs],
        "ratio_handler_to_bare_sub": round(handler_rate / baseline_rate, 2),
        "loop_turn_latency": _percentiles(turns),
    }
    handler.close()
    bare.close(linger=0)
    for pub in pubs:
        pub.close(linger=0)
    ctx.term()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
