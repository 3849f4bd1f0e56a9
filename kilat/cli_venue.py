"""``kilat`` commands for simulated venues.

    kilat venue --mic XSIM1 [--config FILE] [--data-dir DIR] [--venue-endpoint EP]
                [--feed-endpoint EP] [--control EP] [--mid SYMBOL=PRICE ...] [--fsync]
    kilat venue-admin --control EP bust EXEC_ID [--reason TEXT]
    kilat venue-admin --control EP correct EXEC_ID QTY PRICE_TICKS [--reason TEXT]
    kilat venue-admin --control EP state open|halted|closed
    kilat venue-admin --control EP status

``kilat venue`` runs the exchange simulator of the config's ``[[venues]]`` entry for that MIC
(``gateways.simulator``): it connects to Kilat's venue endpoint (``server.venue_endpoint``),
publishes its prices on the entry's ``feed_endpoint``, prints one ready line and runs until
SIGTERM or Ctrl-C. The starting mid of each instrument is the middle of its price band unless
``--mid SYMBOL=PRICE`` (repeatable, a decimal price) or ``KILAT_VENUE_MIDS="AAPL=190.10,..."``
gives one. See docs/venues.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import msgspec

from engine.model import ConfigError, price_to_ticks
from kilat.cli import CliError, _config, as_dict

DEFAULT_DATA_DIR = "var/venues"
MIDS_ENV = "KILAT_VENUE_MIDS"


def cmd_venue(args) -> int:
    from gateways.simulator import ExchangeSimulator

    config = _config(args)
    spec = next((v for v in config.venues if v.mic == args.mic), None)
    if spec is None:
        known = ", ".join(v.mic for v in config.venues) or "none"
        where = args.config or "the default config"
        raise CliError(f"no venue {args.mic!r} in {where}: its [[venues]] are {known}")
    configured = [f"{symbol}={price}" for symbol, price in spec.mids.items()]
    mids = _mids(config, [*configured, *_env_mids(), *args.mid])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        stopping.append(signum)

    import zmq

    context = zmq.Context()
    try:
        sim = ExchangeSimulator(
            spec, config.instruments, args.venue_endpoint or config.server.venue_endpoint,
            data_dir=Path(args.data_dir or DEFAULT_DATA_DIR), mids=mids,
            feed_endpoint=args.feed_endpoint, control_endpoint=args.control or "",
            fsync=args.fsync, max_levels=config.book.max_levels_per_side, context=context,
            configure=_security(config, spec.mic, context))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        feed = sim.feed.bound_endpoint if sim.feed is not None else "-"
        print(f"kilat venue: ready {sim.mic} venue={sim.adapter.endpoint} feed={feed} "
              f"control={sim.control_endpoint or '-'} session={sim.session_id} "
              f"out_seq={sim.adapter.last_sent} in_seq={sim.processed} "
              f"open={len(sim.open_orders())} pid={os.getpid()}", flush=True)
        sim.run(lambda: bool(stopping))
    finally:
        sim.close()
        if config.security.curve:
            from gateways.auth import CurveAuth

            CurveAuth.on(context).stop()
        context.term()
    return 0


def cmd_venue_admin(args) -> int:
    from gateways.simulator import (
        BustExecution,
        CorrectExecution,
        QueryVenue,
        SetVenueState,
        VenueSnapshot,
        venue_admin,
    )

    want = {"bust": 1, "correct": 3, "state": 1, "status": 0}[args.action]
    if len(args.args) != want:
        raise CliError(f"venue-admin {args.action} takes {want} argument(s), got {len(args.args)}")
    if args.action == "bust":
        command = BustExecution(args.args[0], args.reason)
    elif args.action == "correct":
        try:
            qty, price = int(args.args[1]), int(args.args[2])
        except ValueError as exc:
            raise CliError("correct EXEC_ID QTY PRICE: QTY in lots and PRICE in ticks, both "
                           f"integers; got {args.args[1]!r} {args.args[2]!r}") from exc
        command = CorrectExecution(args.args[0], qty, price, args.reason)
    elif args.action == "state":
        if args.args[0] not in ("open", "halted", "closed"):
            raise CliError(f"state must be open, halted or closed, got {args.args[0]!r}")
        command = SetVenueState(args.args[0])
    else:
        command = QueryVenue()
    reply = venue_admin(args.control, command, timeout=args.timeout)
    if isinstance(reply, VenueSnapshot):
        print(msgspec.json.encode(as_dict(reply)).decode())
        return 0
    print(("ok: " if reply.ok else "refused: ") + reply.text)
    return 0 if reply.ok else 1


def add_commands(sub, add) -> None:
    """Register ``kilat venue`` and ``kilat venue-admin`` (``add`` is kilat.cli's helper)."""
    sp = add("venue", cmd_venue, "run a simulated exchange from the config's [[venues]] entry")
    sp.add_argument("--mic", required=True, help="the venue's MIC in the config, e.g. XSIM1")
    sp.add_argument("--data-dir", help=f"where the venue journals its session (default: {DEFAULT_DATA_DIR})")
    sp.add_argument("--venue-endpoint", help="Kilat's venue endpoint (default: server.venue_endpoint)")
    sp.add_argument("--feed-endpoint", help="where to publish prices (default: the venue's "
                                            "feed_endpoint; an empty string publishes none)")
    sp.add_argument("--control", default="", help="bind an admin socket here (REQ/REP), e.g. "
                                                  "tcp://127.0.0.1:7020; see venue-admin")
    sp.add_argument("--mid", action="append", default=[], metavar="SYMBOL=PRICE",
                    help=f"starting mid of an instrument (repeatable; also ${MIDS_ENV})")
    sp.add_argument("--fsync", action="store_true", help="fsync the venue's journal on every write")
    sp = add("venue-admin", cmd_venue_admin,
             "bust or correct a simulated venue's execution, set its state, or show it")
    sp.add_argument("--control", required=True, help="the venue's admin endpoint (its --control)")
    sp.add_argument("action", choices=["bust", "correct", "state", "status"])
    sp.add_argument("args", nargs="*", help="bust EXEC_ID | correct EXEC_ID QTY PRICE_TICKS | "
                                            "state open|halted|closed | status")
    sp.add_argument("--reason", default="", help="why (busts and corrections)")


def _env_mids() -> list[str]:
    text = os.environ.get(MIDS_ENV, "")
    return [part.strip() for part in text.split(",") if part.strip()]


def _security(config, mic: str, context):
    """With CurveZMQ on: the venue's DEALER to Kilat proves the venue's key; its feed PUB is a
    CURVE server with the venue's key that admits Kilat only. (The admin control socket is the
    simulator's own test tool and stays plain.)"""
    if not config.security.curve:
        return None
    import zmq

    from gateways.auth import ClientSecurity, ServerSecurity, client_keys, server_public_key

    keys_dir = config.security.keys_dir
    try:
        to_kilat = ClientSecurity.from_keys_dir(keys_dir, mic)
        feed = ServerSecurity(client_keys(keys_dir, mic), {server_public_key(keys_dir): "kilat"}, domain="feed")
    except ConfigError as exc:
        raise CliError(f"{exc} (Kilat writes development keys on its first run: start it first)") from exc
    feed.start_auth(context)

    def configure(sock) -> None:
        if sock.socket_type == zmq.DEALER:
            to_kilat(sock)
        elif sock.socket_type == zmq.PUB:
            feed(sock)

    return configure


def _mids(config, items: list[str]) -> dict[str, int]:
    specs = {s.symbol: s for s in config.instruments}
    mids: dict[str, int] = {}
    for item in items:
        symbol, sep, price = item.partition("=")
        if not sep or symbol not in specs:
            known = ", ".join(specs)
            raise CliError(f"--mid: expected SYMBOL=PRICE with a config symbol ({known}), got {item!r}")
        try:
            mids[symbol] = price_to_ticks(specs[symbol], price, f"--mid {symbol}")
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
    return mids
