"""The ``kilat`` command line.

    kilat serve                         run the engine on the order-entry socket
    kilat run                           serve, run a short scripted flow from a second process,
                                        then keep serving until Ctrl-C (what ``make run`` does)
    kilat submit FUND1 AAPL buy 100 --price 190.10
    kilat cancel FUND1 7     kilat modify FUND1 7 --price 190.05 --qty 80
    kilat orders [--account A] [--open]     kilat book AAPL
    kilat mass-cancel [--account A] [--symbol S]     kilat end-of-day     kilat snapshot
    kilat bench book --workload FILE.npz --json
    kilat journal verify [--data-dir DIR]
    kilat alerts | alert | approve | reject | restricted | watch | locate | price | risk |
          positions | limit | kill-switch | trading-state       (see kilat/cli_compliance.py)

Prices on the command line are decimals in the instrument's currency (converted to ticks with the
configured tick size); quantities are lots. Every command takes ``--config``, ``--endpoint`` and
``--user`` (default: $KILAT_USER; the engine checks the user's roles and accounts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from engine.constants import OrderType, SelfTradePrevention, Side, TimeInForce
from engine.model import ConfigError, price_to_ticks, ticks_to_price
from kilat.config import KilatConfig, load_config

PRICE_FIELDS = ("price", "last_px", "trigger_px", "stop_price")


class CliError(Exception):
    """A usage error: printed without a traceback, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (CliError, ConfigError) as exc:
        print(f"kilat: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"kilat: {exc} — is `kilat serve` running?", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


# -- COMMANDS -------------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    import logging

    from engine.journal import JournalError
    from engine.pipeline import ReplayDiverged, SnapshotMismatch
    from engine.snapshot import SnapshotCorruptError
    from kilat.service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _config(args)
    try:
        serve(config, args.data_dir, args.endpoint, args.venue_endpoint, args.drop_copy_endpoint)
    except (JournalError, SnapshotCorruptError, SnapshotMismatch, ReplayDiverged) as exc:
        print(f"kilat: cannot recover the engine state: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    """Start ``kilat serve`` as a child process, run the demo flow against it, keep serving."""
    config = _config(args)
    endpoint = args.endpoint or config.server.endpoint
    child_args = [sys.executable, "-m", "kilat", "serve", "--endpoint", endpoint]
    if args.config:
        child_args += ["--config", args.config]
    if args.data_dir:
        child_args += ["--data-dir", args.data_dir]
    if args.keys_dir:
        child_args += ["--keys-dir", args.keys_dir]
    child = subprocess.Popen(child_args, stdout=subprocess.PIPE, text=True)
    children = [child]
    signal.signal(signal.SIGTERM, _interrupt)  # stop the server on SIGTERM as on Ctrl-C
    try:
        line = child.stdout.readline()
        if not line.startswith("kilat: ready"):
            raise CliError(f"kilat serve did not start (exit {child.wait()}): {line.strip()}")
        print(line.strip(), flush=True)
        children += _start_venues(args, config)  # after Kilat: its first run writes the keys
        from kilat.demo import run_demo

        run_demo(endpoint, config)
        print(f"\nKilat keeps serving on {endpoint}. In another terminal try: "
              "`.venv/bin/kilat top --user alice`, `.venv/bin/kilat orders --open --user bob`, "
              "`.venv/bin/kilat book AAPL --user bob` or `.venv/bin/kilat alerts --user carol`. "
              "Ctrl-C stops it.", flush=True)
        for line in child.stdout:
            print(line, end="", flush=True)
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()  # each handles SIGTERM as Ctrl-C
        for proc in reversed(children):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start_venues(args, config: KilatConfig) -> list:
    """One ``kilat venue`` per configured venue (simulated exchanges), logging to
    <data dir>/../venues/<MIC>.log; returns their processes once each printed its ready line."""
    venues_dir = Path(args.data_dir or config.server.data_dir).parent / "venues"
    venues_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for venue in config.venues:
        cmd = [sys.executable, "-m", "kilat", "venue", "--mic", venue.mic, "--data-dir", str(venues_dir)]
        cmd += ["--config", args.config] if args.config else []
        cmd += ["--keys-dir", args.keys_dir] if args.keys_dir else []
        log = open(venues_dir / f"{venue.mic}.log", "a")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        procs.append(proc)
    for venue, proc in zip(config.venues, procs, strict=True):
        line = proc.stdout.readline()
        if not line.startswith("kilat venue: ready"):
            raise CliError(f"kilat venue --mic {venue.mic} did not start (exit {proc.wait()}); "
                           f"see {venues_dir / (venue.mic + '.log')}")
        print(line.strip(), flush=True)
    return procs


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_submit(args) -> int:
    config = _config(args)
    spec = _instrument(config, args.symbol)
    otype = OrderType[args.type.upper()]
    tif = TimeInForce[args.tif.upper()]
    price = _ticks(spec, args.price, "--price") if args.price is not None else 0
    stop = _ticks(spec, args.stop, "--stop") if args.stop is not None else 0
    if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) and not price:
        raise CliError(f"a {otype.name} order needs --price")
    with _client(args, config) as kc:
        replies = kc.submit(
            args.account, args.symbol, Side[args.side.upper()], args.qty, price,
            cl_ord_id=args.cl_ord_id, order_type=otype, tif=tif, stop_price=stop,
            display_qty=args.display, post_only=args.post_only,
            expire_ts=_expire_ns(args.expire) if args.expire else 0,
            stp=SelfTradePrevention[args.stp.upper()] if args.stp else None, route=args.route or "",
        )
    return _print_replies(replies, config, args.json)


def cmd_cancel(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        replies = kc.cancel(args.account, args.order_id or 0, orig_cl_ord_id=args.orig_cl_ord_id or "")
    return _print_replies(replies, config, args.json)


def cmd_modify(args) -> int:
    config = _config(args)
    if args.price is None and args.qty is None:
        raise CliError("give --price, --qty or both")
    with _client(args, config) as kc:
        price = None
        if args.price is not None:
            orders = {o.order_id: o for o in kc.orders(account=args.account)}
            if args.order_id not in orders:
                raise CliError(f"no order {args.order_id} for account {args.account}")
            price = _ticks(_instrument(config, orders[args.order_id].symbol), args.price, "--price")
        replies = kc.modify(args.account, args.order_id, price=price, qty=args.qty)
    return _print_replies(replies, config, args.json)


def cmd_orders(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        orders = kc.orders(args.account or "", args.symbol or "", args.open)
    if args.json:
        print(msgspec.json.encode([as_dict(o) for o in orders]).decode())
        return 0
    print(f"{'id':>6} {'account':8} {'cl_ord_id':18} {'symbol':6} {'side':4} {'type':10} "
          f"{'tif':3} {'status':16} {'price':>10} {'qty':>7} {'cum':>7} {'leaves':>7} {'avg_px':>10}")
    for o in orders:
        spec = _instrument(config, o.symbol)
        price = ticks_to_price(spec, o.price) if o.price else "MKT"
        avg = f"{float(spec.tick_size) * o.avg_px:.4f}" if o.cum_qty else "-"
        print(f"{o.order_id:>6} {o.account:8} {o.cl_ord_id[:18]:18} {o.symbol:6} "
              f"{o.side.name:4} {o.order_type.name:10} {o.tif.name:3} {o.status:16} "
              f"{price!s:>10} {o.qty:>7} {o.cum_qty:>7} {o.leaves_qty:>7} {avg:>10}")
    print(f"{len(orders)} order(s)")
    return 0


def cmd_book(args) -> int:
    config = _config(args)
    spec = _instrument(config, args.symbol)
    with _client(args, config) as kc:
        view = kc.book(args.symbol, args.depth)
    if args.json:
        print(msgspec.json.encode(as_dict(view)).decode())
        return 0
    last = ticks_to_price(spec, view.last_px) if view.last_px else "-"
    print(f"{args.symbol}  last {last}")
    print(f"{'bid qty':>10} {'bid':>10} | {'ask':<10} {'ask qty':<10}")
    for i in range(max(len(view.bids), len(view.asks))):
        bid = view.bids[i] if i < len(view.bids) else None
        ask = view.asks[i] if i < len(view.asks) else None
        left = f"{bid.qty:>10} {ticks_to_price(spec, bid.price)!s:>10}" if bid else " " * 21
        right = f"{ticks_to_price(spec, ask.price)!s:<10} {ask.qty:<10}" if ask else ""
        print(f"{left} | {right}")
    return 0


def cmd_mass_cancel(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        side = Side[args.side.upper()] if args.side else None
        replies = kc.mass_cancel(args.account or "", args.symbol or "", side)
    return _print_replies(replies, config, args.json)


def cmd_end_of_day(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_replies(kc.end_of_day(), config, args.json)


def cmd_snapshot(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_replies(kc.snapshot(), config, args.json)


def cmd_bench_book(args) -> int:
    from engine.workload import WorkloadError, load_workload, run_workload

    try:
        arrays = load_workload(args.workload)
    except WorkloadError as exc:
        raise CliError(str(exc)) from exc
    result = run_workload(arrays)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_convert_mbo(args) -> int:
    from engine.workload import WorkloadError, save_workload, workload_from_mbo_csv

    try:
        arrays = workload_from_mbo_csv(args.csv, args.tick_size, args.limit)
    except (WorkloadError, OSError) as exc:
        raise CliError(str(exc)) from exc
    save_workload(args.out, arrays)
    counts = {name: int((arrays["op"] == code).sum()) for name, code in
              (("limits", 0), ("ioc", 2), ("cancels", 4))}
    print(json.dumps({"commands": len(arrays["op"]), **counts, "out": str(args.out)}))
    return 0


def cmd_journal_verify(args) -> int:
    from engine.journal import JournalError, scan_journal

    config = _config(args)
    path = Path(args.data_dir or config.server.data_dir) / "journal.kjl"
    if not path.exists():
        raise CliError(f"no journal at {path}")
    try:
        info = scan_journal(path)
    except JournalError as exc:
        print(f"kilat: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(info), default=str))
    return 0


# -- HELPERS --------------------------------------------------------------------------------------


def _config(args) -> KilatConfig:
    config = load_config(args.config)
    keys_dir = getattr(args, "keys_dir", None)
    if keys_dir:
        config = msgspec.structs.replace(
            config, security=msgspec.structs.replace(config.security, keys_dir=keys_dir))
    return config


def _client(args, config: KilatConfig):
    return client_for(config, args.endpoint, args.user, args.timeout)


def client_for(config: KilatConfig, endpoint: str | None = None, user: str | None = None,
               timeout: float = 5.0):
    """A ``KilatClient`` acting as ``user`` (default: $KILAT_USER): over CurveZMQ with the user's
    keys from ``security.keys_dir`` when the config asks for it."""
    import os

    from gateways.client import KilatClient

    endpoint = endpoint or config.server.endpoint
    user = os.environ.get("KILAT_USER", "") if user is None else user
    if not config.security.curve:
        return KilatClient(endpoint, user=user, timeout=timeout)
    if not user:
        raise CliError("CurveZMQ is on: name the user whose keys to use (--user or $KILAT_USER)")
    return KilatClient.from_keys_dir(endpoint, config.security.keys_dir, user, timeout=timeout)


def _instrument(config: KilatConfig, symbol: str):
    for spec in config.instruments:
        if spec.symbol == symbol:
            return spec
    known = ", ".join(s.symbol for s in config.instruments)
    raise CliError(f"unknown instrument {symbol!r}; the config has {known}")


def _ticks(spec, text: str, flag: str) -> int:
    try:
        return price_to_ticks(spec, Decimal(text), flag)
    except (ArithmeticError, ValueError) as exc:
        raise CliError(f"{flag}: expected a decimal price in ticks of {spec.tick_size}, got {text!r} ({exc})") from exc


def _expire_ns(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--expire: expected ns since epoch or an ISO time, got {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e9)


def format_event(event, config: KilatConfig) -> str:
    """One readable line per reply, prices shown as decimals where the symbol is known."""
    fields = msgspec.structs.asdict(event)
    symbol = fields.get("symbol")
    spec = next((s for s in config.instruments if s.symbol == symbol), None)
    parts = []
    for key, value in fields.items():
        if key == "ts":
            value = datetime.fromtimestamp(value / 1e9, UTC).strftime("%H:%M:%S.%f") if value else 0
        elif spec is not None and key in PRICE_FIELDS and value:
            value = ticks_to_price(spec, value)
        elif key == "avg_px" and spec is not None:
            value = f"{float(spec.tick_size) * value:.4f}"
        elif hasattr(value, "name"):
            value = value.name
        parts.append(f"{key}={value}")
    return f"{type(event).__name__:20} " + " ".join(parts)


def as_dict(value):
    """A message as plain JSON-able data with field names (wire messages are positional)."""
    if isinstance(value, msgspec.Struct):
        return {name: as_dict(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    return value


def _print_replies(replies: list, config: KilatConfig, as_json: bool) -> int:
    for event in replies:
        if as_json:
            print(msgspec.json.encode({"type": type(event).__name__, **as_dict(event)}).decode())
        else:
            print(format_event(event, config))
    failed = any(type(e).__name__ in ("OrderRejected", "OrderDenied", "OrderCancelRejected", "CommandError")
                 for e in replies)
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: the embedded config/kilat.toml)")
    common.add_argument("--endpoint", help="order-entry endpoint (default: from the config)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--user", help="the config user to act as (default: $KILAT_USER)")
    common.add_argument("--keys-dir", help="CurveZMQ keys (default: the config's security.keys_dir)")
    p = argparse.ArgumentParser(prog="kilat", description="Kilat order management system")
    sub = p.add_subparsers(title="commands")

    def add(name, func, help_text, parent=sub):
        sp = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        sp.set_defaults(func=func)
        return sp

    sp = add("serve", cmd_serve, "run the engine and its order-entry socket")
    sp.add_argument("--data-dir", help="journal and snapshots (default: from the config)")
    sp.add_argument("--venue-endpoint", help="where venue adapters connect (default: from the config)")
    sp.add_argument("--drop-copy-endpoint", help="the drop copy's PUB (default: from the config)")
    sp = add("run", cmd_run, "serve, show a scripted flow, keep serving until Ctrl-C")
    sp.add_argument("--data-dir")

    sp = add("submit", cmd_submit, "submit a new order")
    sp.add_argument("account")
    sp.add_argument("symbol")
    sp.add_argument("side", choices=["buy", "sell", "BUY", "SELL"])
    sp.add_argument("qty", type=int, help="lots")
    sp.add_argument("--price", help="limit price (decimal)")
    sp.add_argument("--type", default="limit", choices=[t.name.lower() for t in OrderType])
    sp.add_argument("--tif", default="day", choices=[t.name.lower() for t in TimeInForce])
    sp.add_argument("--stop", help="stop trigger price (decimal) for stop and stop_limit")
    sp.add_argument("--display", type=int, default=0, help="iceberg peak size in lots")
    sp.add_argument("--post-only", action="store_true")
    sp.add_argument("--expire", help="GTD expiry: ns since epoch or ISO time (UTC if no zone)")
    sp.add_argument("--stp", choices=[s.name.lower() for s in SelfTradePrevention])
    sp.add_argument("--cl-ord-id", help="client order id (default: generated)")
    sp.add_argument("--route", help="SOR (cross internally, then split over the venues) or a venue MIC "
                                    "(default: Kilat's own book); see docs/routing.md")

    sp = add("cancel", cmd_cancel, "cancel an order by id or by ClOrdID")
    sp.add_argument("account")
    sp.add_argument("order_id", type=int, nargs="?")
    sp.add_argument("--orig-cl-ord-id")
    sp = add("modify", cmd_modify, "cancel/replace price and/or total quantity")
    sp.add_argument("account")
    sp.add_argument("order_id", type=int)
    sp.add_argument("--price")
    sp.add_argument("--qty", type=int, help="new total quantity (fills included)")
    sp = add("orders", cmd_orders, "list orders")
    sp.add_argument("--account")
    sp.add_argument("--symbol")
    sp.add_argument("--open", action="store_true", help="working orders only")
    sp = add("book", cmd_book, "show an instrument's book")
    sp.add_argument("symbol")
    sp.add_argument("--depth", type=int, default=5)
    sp = add("mass-cancel", cmd_mass_cancel, "cancel every working order matching the filters")
    sp.add_argument("--account")
    sp.add_argument("--symbol")
    sp.add_argument("--side", choices=["buy", "sell"])
    add("end-of-day", cmd_end_of_day, "expire every DAY order")
    add("snapshot", cmd_snapshot, "write a snapshot now")
    from kilat.cli_compliance import add_commands

    add_commands(add)

    from kilat.cli_keys import add_commands as add_key_commands

    add_key_commands(sub, add)
    from kilat.cli_feed import add_commands as add_feed_commands

    add_feed_commands(sub, add)
    from kilat.cli_venue import add_commands as add_venue_commands

    add_venue_commands(sub, add)
    from kilat.cli_top import add_commands as add_top_commands

    add_top_commands(sub, add)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(title="benchmarks")
    sp = add("book", cmd_bench_book, "replay a recorded .npz command stream through both books", bench)
    sp.add_argument("--workload", required=True, help=".npz with op, side, price, qty, oid")
    sp = add("convert-mbo", cmd_convert_mbo,
             "turn a market-by-order CSV (Databento MBO columns) into a workload .npz", bench)
    sp.add_argument("csv", help="MBO CSV, optionally .gz")
    sp.add_argument("out", help="the .npz to write")
    sp.add_argument("--tick-size", default="0.25", help="price increment of the instrument")
    sp.add_argument("--limit", type=int, help="stop after this many workload commands")
    journal = sub.add_parser("journal", help="journal tools").add_subparsers(title="journal")
    sp = add("verify", cmd_journal_verify, "check every record of the journal", journal)
    sp.add_argument("--data-dir")
    return p


if __name__ == "__main__":
    sys.exit(main())
