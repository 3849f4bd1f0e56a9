"""``kilat feed`` commands: replay a recorded feed as a live one, and watch a feed.

    kilat feed replay FILE [--endpoint tcp://127.0.0.1:7101] [--speed 1.0] [--symbol BTCUSDT]
                           [--source BINANCE] [--wait SECONDS] [--limit N] [--live-time]
    kilat feed watch ENDPOINT [--count N]

``replay`` publishes a Binance capture (``<receive ns> <combined-stream JSON>`` lines, plain or
gzip) on a PUB socket in the feed protocol, paced by the recorded receive times (``--speed 0``:
as fast as possible), and prints a JSON summary. ``watch`` prints every message of a feed as a
JSON line, prices as decimals of the config's tick sizes. See docs/feeds.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq

from engine.model import ConfigError
from kilat.cli import CliError, _config, _instrument

DEFAULT_REPLAY_ENDPOINT = "tcp://127.0.0.1:7101"


def add_commands(sub, add) -> None:
    """Register the ``kilat feed`` group with the CLI's ``add(name, func, help, parent)``."""
    feed = sub.add_parser("feed", help="price feeds: replay a capture, watch a feed").add_subparsers(
        title="feed")
    sp = add("replay", cmd_feed_replay,
             "publish a recorded Binance capture as a live feed (--endpoint: where to bind the "
             f"PUB socket, default {DEFAULT_REPLAY_ENDPOINT})", feed)
    sp.add_argument("file", help="capture: '<receive ns> <Binance combined-stream JSON>' lines, .gz or plain")
    sp.add_argument("--speed", type=float, default=1.0,
                    help="1 = as recorded, 10 = ten times faster, 0 = as fast as possible")
    sp.add_argument("--symbol", default="BTCUSDT", help="the config instrument the capture is of")
    sp.add_argument("--source", default="BINANCE", help="source name in the published messages")
    sp.add_argument("--wait", type=float, default=1.0,
                    help="seconds to wait for subscribers to connect before the first message")
    sp.add_argument("--limit", type=int, help="stop after this many quotes and trades")
    sp.add_argument("--heartbeat-ms", type=int, default=1000, help="heartbeat interval")
    sp.add_argument("--live-time", action="store_true",
                    help="stamp messages with the current time instead of the recorded receive time")
    sp = add("watch", cmd_feed_watch, "subscribe to a feed and print what it publishes", feed)
    sp.add_argument("feed_endpoint", metavar="ENDPOINT", help="the feed's PUB endpoint")
    sp.add_argument("--count", type=int, help="stop after this many messages")
    sp.add_argument("--publisher", default="feed",
                    help="whose CURVE key the feed proves: a venue's MIC, or feed (external feeds)")


# -- COMMANDS -------------------------------------------------------------------------------------


def _security(config, context):
    """With CurveZMQ on, an external feed publishes as a CURVE server with the ``feed`` key
    pair (Kilat writes it with its development keys) and admits Kilat's key only."""
    if not config.security.curve:
        return None
    from gateways.auth import ServerSecurity, client_keys, server_public_key

    keys_dir = config.security.keys_dir
    try:
        security = ServerSecurity(client_keys(keys_dir, "feed"), {server_public_key(keys_dir): "kilat"},
                                  domain="feed")
    except ConfigError as exc:
        raise CliError(f"{exc} (Kilat writes development keys on its first run: start it first)") from exc
    security.start_auth(context)
    return security


def cmd_feed_replay(args) -> int:
    from gateways.binance import BinanceCapture, CaptureError, CaptureQuote
    from gateways.feed import FeedPublisher

    if args.speed < 0:
        raise CliError(f"--speed must be 0 (as fast as possible) or positive, got {args.speed}")
    if args.heartbeat_ms <= 0:
        raise CliError(f"--heartbeat-ms must be positive, got {args.heartbeat_ms}")
    config = _config(args)
    spec = _instrument(config, args.symbol)
    if not Path(args.file).is_file():
        raise CliError(f"{args.file}: no such capture file")
    capture = BinanceCapture(args.file, spec)
    endpoint = args.endpoint or DEFAULT_REPLAY_ENDPOINT
    context = zmq.Context()
    try:
        pub = FeedPublisher(endpoint, args.source, context=context, configure=_security(config, context))
    except zmq.ZMQError as exc:
        raise CliError(f"cannot bind {endpoint}: {exc}") from exc
    print(f"kilat feed: publishing {args.file} as {args.source} {spec.symbol} on "
          f"{pub.bound_endpoint}", file=sys.stderr, flush=True)
    interval = args.heartbeat_ms * 1_000_000
    try:
        _wait_for_subscribers(pub, args.wait)
        clock = time.perf_counter_ns
        started = clock()
        next_beat = started + interval
        first_recv = None
        sent = 0
        quote, trade = pub.quote, pub.trade
        symbol, speed = spec.symbol, args.speed
        try:
            for event in capture:
                if args.limit is not None and sent >= args.limit:
                    break
                now = clock()
                if speed:
                    first_recv = event.recv_ns if first_recv is None else first_recv
                    ahead = started + (event.recv_ns - first_recv) / speed - now
                    if ahead > 0:
                        time.sleep(ahead / 1e9)
                        now = clock()
                if now >= next_beat:
                    pub.heartbeat(time.time_ns())
                    next_beat = now + interval
                ts = time.time_ns() if args.live_time else event.recv_ns
                if type(event) is CaptureQuote:
                    quote(symbol, event.bid, event.bid_size, event.ask, event.ask_size, ts)
                else:
                    trade(symbol, event.price, event.qty, event.aggressor, ts)
                sent += 1
        except CaptureError as exc:
            raise CliError(str(exc)) from None
        seconds = (clock() - started) / 1e9
        pub.heartbeat(time.time_ns())  # the last seq: subscribers learn if they missed the tail
    finally:
        pub.close(linger_ms=2000)
        if config.security.curve:
            from gateways.auth import CurveAuth

            CurveAuth.on(context).stop()
        context.term()
    counts = capture.counts
    print(json.dumps({
        "file": str(args.file), "source": args.source, "symbol": spec.symbol,
        "endpoint": pub.bound_endpoint, "lines": counts.lines, "quotes": counts.quotes,
        "trades": counts.trades, "published": sent, "last_seq": pub.seq, "dropped": pub.dropped,
        "skipped": {"depth": counts.depth, "snapshot": counts.snapshot, "dust": counts.dust},
        "rounded_sizes": counts.rounded, "seconds": round(seconds, 3),
        "rate": round(sent / seconds) if seconds > 0 else 0,
    }))
    return 0


def cmd_feed_watch(args) -> int:
    from engine.model import ticks_to_price
    from gateways.feed_messages import FEED_DECODER, FeedHeartbeat, Quote

    config = _config(args)
    specs = {s.symbol: s for s in config.instruments}
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if config.security.curve:  # Kilat's own key: a feed admits Kilat (see _security)
        from gateways.auth import ClientSecurity, list_keys, server_keys

        keys_dir = config.security.keys_dir
        try:
            ClientSecurity(server_keys(keys_dir), list_keys(keys_dir)[args.publisher])(sock)
        except (ConfigError, KeyError) as exc:
            raise CliError(f"no CURVE keys for watching {args.publisher!r} in {keys_dir}: {exc}") from exc
    sock.connect(args.feed_endpoint)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            frames = sock.recv_multipart()
            seen += 1
            if len(frames) != 2:
                print(json.dumps({"type": "bad", "error": f"expected 2 frames, got {len(frames)}"}),
                      flush=True)
                continue
            try:
                msg = FEED_DECODER.decode(frames[1])
            except Exception as exc:  # noqa: BLE001 - whatever a feed sends is printed, not raised
                print(json.dumps({"type": "bad", "topic": frames[0].decode(errors="replace"),
                                  "error": str(exc)}), flush=True)
                continue
            row = {"type": type(msg).__name__}
            row.update({name: getattr(msg, name) for name in msg.__struct_fields__})
            spec = None if type(msg) is FeedHeartbeat else specs.get(msg.symbol)
            if spec is not None:
                for name in ("bid", "ask") if type(msg) is Quote else ("price",):
                    row[name] = str(ticks_to_price(spec, row[name]))
            print(json.dumps(row), flush=True)
    finally:
        sock.close()
    return 0


def _wait_for_subscribers(pub, seconds: float) -> None:
    """Give subscribers time to connect (a PUB drops what it sends before they do), sending
    heartbeats meanwhile so they see the source."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pub.heartbeat(time.time_ns())
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
