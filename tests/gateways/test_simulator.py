"""The exchange simulator as a real `kilat venue` subprocess, talking to a VenueGateway in the test
process over tcp loopback, its prices read from its feed with a plain SUB socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq

from engine.constants import RejectCode, Side, TimeInForce
from gateways.feed_messages import FEED_DECODER, Quote, Trade
from gateways.simulator import (
    BustExecution,
    CorrectExecution,
    ExchangeSimulator,
    QueryVenue,
    venue_admin,
)
from gateways.venue_messages import (
    CancelChildOrder,
    ChildAccepted,
    ChildCanceled,
    ChildCancelRejected,
    ChildFilled,
    ChildRejected,
    NewChildOrder,
    ReplaceChildOrder,
    StatusReport,
    TradeBust,
    TradeCorrection,
    VenueDown,
    VenueReconciled,
    VenueUp,
)
from gateways.venues import VenueGateway
from kilat.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "data" / "venues.toml"
MID = 19_000  # AAPL at 190.00, in ticks of 0.01


class Venue:
    """`kilat venue` as a subprocess; waits for its ready line and parses it."""

    def __init__(self, mic: str, venue_endpoint: str, data_dir: Path, log: Path, *extra: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kilat", "venue", "--mic", mic, "--config", str(CONFIG),
             "--venue-endpoint", venue_endpoint, "--feed-endpoint", "tcp://127.0.0.1:*",
             "--control", "tcp://127.0.0.1:*", "--data-dir", str(data_dir),
             "--mid", "AAPL=190.00", *extra],
            stdout=subprocess.PIPE, stderr=log.open("a"), text=True, cwd=ROOT, env=env)
        self.ready = self.proc.stdout.readline()
        if not self.ready.startswith(f"kilat venue: ready {mic} "):
            self.proc.kill()
            raise RuntimeError(f"kilat venue failed: {self.ready!r}\n{log.read_text()}")
        self.fields = dict(part.split("=", 1) for part in self.ready.split() if "=" in part)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: nothing is flushed, no handler runs
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)


class Kilat:
    """The Kilat side: a VenueGateway driven one loop turn at a time, as the engine would."""

    def __init__(self, mics, ctx: zmq.Context):
        self.gw = VenueGateway("tcp://127.0.0.1:*", list(mics), heartbeat_ms=200, context=ctx)
        self.delivered: list[tuple[str, object]] = []
        self.events: list = []

    def turn(self) -> None:
        self.delivered += self.gw.poll(timeout_ms=2)
        self.events += self.gw.timers()

    def until(self, cond, timeout: float = 10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.turn()
            value = cond()
            if value:
                return value
        raise AssertionError(f"timed out after {timeout} s; delivered {self.delivered[-5:]}, "
                             f"events {self.events[-5:]}")

    def of(self, kind, mic: str | None = None) -> list:
        return [m for v, m in self.delivered if isinstance(m, kind) and mic in (None, v)]

    def reports(self, child_id: int) -> list:
        return [m for _, m in self.delivered if getattr(m, "child_id", None) == child_id]


class Feed:
    """A plain SUB socket on a venue's feed."""

    def __init__(self, endpoint: str, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.messages: list = []

    def drain(self) -> list:
        while self.sock.poll(0):
            self.messages.append(FEED_DECODER.decode(self.sock.recv_multipart()[1]))
        return self.messages

    def last_quote(self, symbol: str, timeout: float = 10.0) -> Quote:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.poll(20)
            quotes = [m for m in self.drain() if isinstance(m, Quote) and m.symbol == symbol]
            if quotes:
                return quotes[-1]
        raise AssertionError(f"no {symbol} quote on the feed in {timeout} s")


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def venues(tmp_path):
    started: list[Venue] = []

    def start(mic: str, endpoint: str, data_dir: Path | None = None) -> Venue:
        venue = Venue(mic, endpoint, data_dir or tmp_path / mic, tmp_path / f"{mic}.log")
        started.append(venue)
        return venue

    yield start
    for venue in started:
        if venue.proc.poll() is None:
            venue.proc.kill()
            venue.proc.wait(10)


def buy(child_id: int, qty: int, price: int, tif=TimeInForce.DAY) -> NewChildOrder:
    return NewChildOrder(0, child_id, "AAPL", Side.BUY, qty, price, tif=tif)


def test_two_venues_fill_marketable_child_orders_and_publish_their_quotes_and_trades(venues, ctx):
    kilat = Kilat(["XSIM1", "XSIM2"], ctx)
    xsim1 = venues("XSIM1", kilat.gw.bound_endpoint)
    xsim2 = venues("XSIM2", kilat.gw.bound_endpoint)
    feeds = {"XSIM1": Feed(xsim1.fields["feed"], ctx), "XSIM2": Feed(xsim2.fields["feed"], ctx)}
    kilat.until(lambda: kilat.gw.routable("XSIM1") and kilat.gw.routable("XSIM2"))
    assert {e.mic for e in kilat.events if isinstance(e, VenueUp)} == {"XSIM1", "XSIM2"}

    for child_id, (mic, feed) in enumerate(feeds.items(), start=1):
        quote = feed.last_quote("AAPL")
        assert quote.source == mic and 0 < quote.bid < quote.ask and quote.bid_size > 0 < quote.ask_size
        assert abs((quote.bid + quote.ask) // 2 - MID) < 1_000  # near the --mid given
        limit = quote.ask + 200  # marketable whatever the mid did meanwhile
        assert kilat.gw.send(mic, buy(child_id, 10, limit, TimeInForce.IOC))
        kilat.until(lambda c=child_id: sum(f.qty for f in kilat.reports(c) if isinstance(f, ChildFilled)) == 10)
        reports = kilat.reports(child_id)
        assert isinstance(reports[0], ChildAccepted) and reports[0].venue_order_id.startswith(mic)
        fills = [r for r in reports if isinstance(r, ChildFilled)]
        assert fills[-1].cum == 10 and fills[-1].leaves == 0
        assert all(f.price <= limit for f in fills)
        assert len({f.exec_id for f in fills}) == len(fills)
        # every fill printed as a trade on that venue's feed, buyer the aggressor
        end = time.monotonic() + 5
        while time.monotonic() < end:
            feed.sock.poll(20)
            trades = [(t.price, t.qty, t.aggressor) for t in feed.drain() if isinstance(t, Trade)]
            if all((f.price, f.qty, 1) in trades for f in fills):
                break
        else:
            raise AssertionError(f"fills {fills} not all on the feed: {trades}")
    assert all(m.source == "XSIM2" for m in feeds["XSIM2"].messages)
    assert xsim1.stop() == 0 and xsim2.stop() == 0


def test_a_venue_injecting_rejects_at_full_rate_rejects_every_child_order(venues, ctx):
    kilat = Kilat(["XREJ1"], ctx)
    venues("XREJ1", kilat.gw.bound_endpoint)
    kilat.until(lambda: kilat.gw.routable("XREJ1"))
    for child_id in (1, 2, 3):
        kilat.gw.send("XREJ1", buy(child_id, 5, MID))
    kilat.until(lambda: len(kilat.of(ChildRejected)) == 3)
    rejects = kilat.of(ChildRejected)
    assert [r.child_id for r in rejects] == [1, 2, 3]
    assert all(r.code == RejectCode.VENUE_REJECTED for r in rejects)
    assert all("injected reject (reject_rate_bps=10000)" in r.text for r in rejects)
    assert kilat.of(ChildAccepted) == [] and kilat.gw.open_children("XREJ1") == []


def test_a_venue_injecting_latency_answers_no_sooner_than_its_latency(venues, ctx):
    kilat = Kilat(["XLAT1"], ctx)
    venues("XLAT1", kilat.gw.bound_endpoint)
    kilat.until(lambda: kilat.gw.routable("XLAT1"))
    sent = time.monotonic()
    kilat.gw.send("XLAT1", buy(1, 5, MID - 1_000))
    kilat.until(lambda: kilat.of(ChildAccepted))
    assert time.monotonic() - sent >= 0.2  # latency_ms = 200


def test_a_venue_killed_mid_order_restarts_where_it_was_and_reconciles(venues, ctx, tmp_path):
    kilat = Kilat(["XSIM1"], ctx)
    data = tmp_path / "xsim1-data"
    venue = venues("XSIM1", kilat.gw.bound_endpoint, data)
    kilat.until(lambda: kilat.gw.routable("XSIM1"))
    quote = Feed(venue.fields["feed"], ctx).last_quote("AAPL")
    kilat.gw.send("XSIM1", buy(1, 10, quote.ask + 200, TimeInForce.IOC))  # fills
    kilat.gw.send("XSIM1", buy(2, 10, quote.bid - 1_000))  # rests far below the market
    kilat.until(lambda: kilat.reports(2) and sum(
        f.qty for f in kilat.reports(1) if isinstance(f, ChildFilled)) == 10)
    fills = [f.exec_id for f in kilat.reports(1) if isinstance(f, ChildFilled)]
    last_seq = kilat.gw.status()["XSIM1"].in_expected - 1

    venue.kill()  # mid-order: child 2 is working
    down = kilat.until(lambda: [e for e in kilat.events if isinstance(e, VenueDown)])
    assert down[0].working == [2]
    assert kilat.gw.send("XSIM1", buy(3, 5, quote.bid - 1_000)) is False  # queued meanwhile

    again = venues("XSIM1", kilat.gw.bound_endpoint, data)
    assert (again.fields["session"], again.fields["out_seq"], again.fields["in_seq"],
            again.fields["open"]) == (venue.fields["session"], str(last_seq), "2", "1")
    kilat.until(lambda: kilat.reports(3))
    ups = [e for e in kilat.events if isinstance(e, VenueUp)]
    assert [u.resumed for u in ups] == [False, True]
    accepted3 = kilat.reports(3)[0]
    assert isinstance(accepted3, ChildAccepted) and accepted3.seq > last_seq  # numbering goes on
    report = kilat.until(lambda: [r for r in kilat.of(StatusReport) if r.request_id == 2])[0]
    assert [(o.child_id, o.leaves, o.cum) for o in report.orders if o.child_id == 2] == [(2, 10, 0)]
    assert [f.exec_id for f in report.fills] == fills
    rec = kilat.until(lambda: [e for e in kilat.events if isinstance(e, VenueReconciled)
                               and e.request_id == 2])[0]
    assert rec.clean, rec
    kilat.gw.send("XSIM1", CancelChildOrder(0, 2))
    kilat.until(lambda: any(isinstance(r, ChildCanceled) for r in kilat.reports(2)))
    assert kilat.gw.open_children("XSIM1") == [3]
    assert kilat.gw.status()["XSIM1"].duplicates == 0


def test_a_bust_and_a_correction_made_at_the_venue_reach_kilat(venues, ctx):
    kilat = Kilat(["XSIM1"], ctx)
    venue = venues("XSIM1", kilat.gw.bound_endpoint)
    kilat.until(lambda: kilat.gw.routable("XSIM1"))
    quote = Feed(venue.fields["feed"], ctx).last_quote("AAPL")
    kilat.gw.send("XSIM1", buy(1, 10, quote.ask + 200, TimeInForce.IOC))
    kilat.until(lambda: sum(f.qty for f in kilat.reports(1) if isinstance(f, ChildFilled)) == 10)
    fill = next(f for f in kilat.reports(1) if isinstance(f, ChildFilled))
    control = venue.fields["control"]

    reply = venue_admin(control, CorrectExecution(fill.exec_id, 1, fill.price - 1, "wrong price"))
    assert reply.ok, reply.text
    kilat.until(lambda: kilat.of(TradeCorrection))
    correction = kilat.of(TradeCorrection)[0]
    assert (correction.exec_id, correction.child_id, correction.qty, correction.price,
            correction.reason) == (fill.exec_id, 1, 1, fill.price - 1, "wrong price")

    cli = subprocess.run(
        [sys.executable, "-m", "kilat", "venue-admin", "--control", control, "bust", fill.exec_id,
         "--reason", "clearly erroneous"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith(f"ok: busted {fill.exec_id}"), cli
    kilat.until(lambda: kilat.of(TradeBust))
    assert [(b.exec_id, b.child_id, b.reason) for b in kilat.of(TradeBust)] == [
        (fill.exec_id, 1, "clearly erroneous")]
    again = venue_admin(control, BustExecution(fill.exec_id))
    assert not again.ok and "already busted" in again.text
    snapshot = venue_admin(control, QueryVenue())
    assert [(e.exec_id, e.busted) for e in snapshot.fills if e.exec_id == fill.exec_id] == [
        (fill.exec_id, True)]


def test_a_bare_kilat_venue_prints_one_ready_line_and_exits_0_on_sigterm_or_ctrl_c(tmp_path):
    port = _free_port()
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kilat", "venue", "--mic", "XSIM2", "--config", str(CONFIG),
             "--venue-endpoint", f"tcp://127.0.0.1:{port}", "--feed-endpoint", "",
             "--data-dir", str(tmp_path / sig.name)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        ready = proc.stdout.readline()
        assert ready.startswith("kilat venue: ready XSIM2 ") and "feed=- control=-" in ready
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        assert proc.stdout.read() == ""  # one line, nothing more


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mic", "XNOPE"], "no venue 'XNOPE' in"),
        (["--mic", "XSIM1", "--mid", "AAPL=190.001"], "not a multiple of tick size 0.01"),
        (["--mic", "XSIM1", "--mid", "NOPE=1"], "expected SYMBOL=PRICE with a config symbol"),
    ],
)
def test_kilat_venue_refuses_a_bad_command_line_with_a_clear_error(tmp_path, args, words):
    result = subprocess.run(
        [sys.executable, "-m", "kilat", "venue", "--config", str(CONFIG),
         "--data-dir", str(tmp_path), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and words in result.stderr, result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- IN PROCESS: the matching rules of child orders ---------------------------------------------


@pytest.fixture
def simulator(tmp_path, ctx):
    """An ExchangeSimulator in this process whose background moves only once (at start), so the
    test knows the book; with a VenueGateway to talk to."""
    config = load_config(CONFIG)
    spec = msgspec.structs.replace(next(v for v in config.venues if v.mic == "XSIM1"),
                                   step_ms=10**9)
    kilat = Kilat(["XSIM1"], ctx)
    sim = ExchangeSimulator(spec, config.instruments, kilat.gw.bound_endpoint, data_dir=tmp_path,
                            mids={"AAPL": MID}, feed_endpoint="", context=ctx)
    kilat.turn = lambda: (sim.turn(max_wait_ms=1), Kilat.turn(kilat))  # one loop drives both
    kilat.until(lambda: kilat.gw.routable("XSIM1"))
    yield sim, kilat
    sim.close()
    kilat.gw.close()


def test_a_replace_that_crosses_fills_and_a_replace_below_the_filled_qty_is_refused(simulator):
    sim, kilat = simulator
    bid, ask = sim.book.best_bid(0), sim.book.best_ask(0)
    assert ask - bid == 2  # spread_ticks
    kilat.gw.send("XSIM1", buy(1, 10, bid - 50))
    kilat.until(lambda: kilat.reports(1))
    kilat.gw.send("XSIM1", ReplaceChildOrder(0, 1, 20, ask))  # now marketable: 20 lots at the ask
    kilat.until(lambda: any(isinstance(r, ChildFilled) and r.leaves == 0 for r in kilat.reports(1)))
    replaced, *fills = kilat.reports(1)[1:]
    assert (replaced.qty, replaced.price, replaced.leaves) == (20, ask, 20)
    assert [(f.qty, f.price, f.cum) for f in fills] == [(20, ask, 20)]
    kilat.gw.send("XSIM1", ReplaceChildOrder(0, 1, 30, ask))
    kilat.until(lambda: kilat.of(ChildCancelRejected))
    refused = kilat.of(ChildCancelRejected)[0]
    assert refused.for_replace and "no longer working (filled 20 of 20)" in refused.text


def test_two_child_orders_can_trade_with_each_other_inside_the_spread(simulator):
    sim, kilat = simulator
    bid, ask = sim.book.best_bid(0), sim.book.best_ask(0)
    inside = bid + 1
    assert inside < ask
    kilat.gw.send("XSIM1", NewChildOrder(0, 1, "AAPL", Side.SELL, 7, inside))
    kilat.gw.send("XSIM1", buy(2, 10, inside))
    kilat.until(lambda: any(isinstance(r, ChildFilled) for r in kilat.reports(2)))
    (sold,) = [r for r in kilat.reports(1) if isinstance(r, ChildFilled)]
    (bought,) = [r for r in kilat.reports(2) if isinstance(r, ChildFilled)]
    assert (sold.qty, sold.price, sold.leaves, bought.qty, bought.price, bought.leaves) == (
        7, inside, 0, 7, inside, 3)
    assert sold.exec_id != bought.exec_id
    assert [(o.child_id, o.leaves) for o in sim.open_orders()] == [(2, 3)]
    sim.book.validate()
