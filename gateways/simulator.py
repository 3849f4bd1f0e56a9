"""The exchange simulator: a venue in its own process, running the engine's numba book.

``kilat venue --mic XSIM1`` runs one (see ``kilat/cli_venue.py`` and ``docs/venues.md``). It:

- lists the instruments of its ``VenueSpec`` in an ``engine.book.NumbaBook``;
- keeps background liquidity in that book: a seeded random-walk mid (in ticks, reverting 10 % of
  its gap to the starting mid each step, so venues stay close), ``depth_levels``
  price levels per side ``spread_ticks`` apart around it with ``level_qty`` lots each,
  replenished every ``step_ms``, and now and then a background market order that crosses the
  spread so trades print;
- accepts Kilat's child orders through a ``VenueAdapter`` and matches them in the same book
  (against background liquidity and each other), answering with acks, fills, cancels and
  replace results;
- publishes a ``Quote`` on every top-of-book change and a ``Trade`` on every trade through a
  ``FeedPublisher`` on ``feed_endpoint``;
- injects faults from its spec: ``latency_ms`` (every child order waits that long before the
  venue handles it) and ``reject_rate_bps`` (a seeded share of new child orders is rejected);
- journals what it must not forget (its session id, every Kilat message it processed, every
  report it sent) in ``<data-dir>/<MIC>.kjl`` (``engine.journal`` format) before it sends, so a
  killed and restarted venue resumes its numbering, its resend store, its open child orders
  (put back in the book at their price, behind the background orders) and its executions;
- answers a small admin socket (``--control``): bust or correct one of its executions, change
  its session state, or show its state (``venue_admin`` below is the client).

Background liquidity is not journaled: after a restart it is rebuilt around the last child fill
price (or the configured mid).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import zmq

from engine.book import NumbaBook
from engine.book_events import CANCEL, CANCEL_REJECT, EXPIRE, MODIFY_REJECT, REJECT, REPLACE, TRADE
from engine.constants import BUY, GTC, IOC, LIMIT, MARKET, SELL, OrderType, RejectCode, TimeInForce
from engine.journal import JournalWriter, read_journal
from engine.messages import I64
from engine.model import InstrumentSpec, price_to_ticks
from gateways.feed import FeedPublisher
from gateways.venue_adapter import VenueAdapter, new_session_id
from gateways.venue_messages import (
    KILAT_DECODER,
    VENUE_DECODER,
    CancelChildOrder,
    ChildAccepted,
    ChildCanceled,
    ChildCancelRejected,
    ChildFilled,
    ChildRejected,
    ChildReplaced,
    ExecutionRecord,
    NewChildOrder,
    OpenChildOrder,
    ReplaceChildOrder,
    SessionState,
    SessionStateName,
    StatusRequest,
    TradeBust,
    TradeCorrection,
)

log = logging.getLogger("kilat.simulator")

ACCOUNT_BACKGROUND = 1
ACCOUNT_CHILD = 2
BACKGROUND_OID_BASE = 1 << 40  # child orders use Kilat's seq of their NewChildOrder as oid
BACKGROUND_TRADE_PROBABILITY = 0.3  # per instrument and step
VENUE_REJECTED = int(RejectCode.VENUE_REJECTED)

_REC = {"frozen": True, "tag": True, "array_like": True}


# -- JOURNAL RECORDS ------------------------------------------------------------------------------


class SimSession(msgspec.Struct, **_REC):
    """The first record: the venue's session."""

    mic: str
    session_id: str
    ts: I64 = 0


class SimIn(msgspec.Struct, **_REC):
    """A Kilat sequenced message the venue processed (its encoded frame)."""

    frame: bytes


class SimOut(msgspec.Struct, **_REC):
    """A sequenced message the venue sent (the exact frame, for resends)."""

    frame: bytes


_RECORD_DECODER = msgspec.msgpack.Decoder(SimSession | SimIn | SimOut)


# -- ADMIN (the --control socket: REQ/REP, one msgpack message each way) ----------------------------


class BustExecution(msgspec.Struct, **_REC):
    exec_id: str
    reason: str = ""


class CorrectExecution(msgspec.Struct, **_REC):
    exec_id: str
    qty: I64
    price: I64
    reason: str = ""


class SetVenueState(msgspec.Struct, **_REC):
    state: SessionStateName


class QueryVenue(msgspec.Struct, **_REC):
    pass


class AdminReply(msgspec.Struct, **_REC):
    ok: bool
    text: str


class VenueSnapshot(msgspec.Struct, **_REC):
    mic: str
    session_id: str
    state: str
    logged_on: bool
    last_sent: I64
    next_expected: I64
    orders: list[OpenChildOrder]
    fills: list[ExecutionRecord]
    mids: dict[str, I64]


AdminCommand = BustExecution | CorrectExecution | SetVenueState | QueryVenue
ADMIN_DECODER = msgspec.msgpack.Decoder(AdminCommand)
ADMIN_REPLY_DECODER = msgspec.msgpack.Decoder(AdminReply | VenueSnapshot)


def venue_admin(endpoint: str, command: AdminCommand, *, timeout: float = 5.0,
                context: zmq.Context | None = None) -> AdminReply | VenueSnapshot:
    """Send one admin command to a simulator's control socket and return its answer."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgspec.msgpack.encode(command))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from the venue's control socket {endpoint} in {timeout} s")
        return ADMIN_REPLY_DECODER.decode(sock.recv())
    finally:
        sock.close(0)


# -- STATE ----------------------------------------------------------------------------------------


class _Child:
    __slots__ = ("child_id", "oid", "symbol", "side", "qty", "price", "otype", "tif", "cum",
                 "leaves", "accepted", "open", "venue_order_id")

    def __init__(self, msg: NewChildOrder) -> None:
        self.child_id = msg.child_id
        self.oid = msg.seq
        self.symbol = msg.symbol
        self.side = int(msg.side)
        self.qty = msg.qty
        self.price = msg.price
        self.otype = int(msg.order_type)
        self.tif = int(msg.tif)
        self.cum = 0
        self.leaves = msg.qty
        self.accepted = False
        self.open = False
        self.venue_order_id = ""


class _Exec:
    __slots__ = ("seq", "exec_id", "child_id", "qty", "price", "busted")

    def __init__(self, seq: int, exec_id: str, child_id: int, qty: int, price: int) -> None:
        self.seq = seq
        self.exec_id = exec_id
        self.child_id = child_id
        self.qty = qty
        self.price = price
        self.busted = False


#: Share of the gap to its anchor that a market's mid closes each step (see ``_step_market``).
MEAN_REVERSION = 0.1


class _Market:
    """One listed instrument: its book index, band, mid and background orders."""

    __slots__ = ("symbol", "instr", "low", "high", "mid", "anchor", "background", "quote", "spec")

    def __init__(self, spec: InstrumentSpec, instr: int, mid: int) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.instr = instr
        self.low = price_to_ticks(spec, spec.price_band[0], f"{spec.symbol} price_band")
        self.high = price_to_ticks(spec, spec.price_band[1], f"{spec.symbol} price_band")
        self.mid = mid
        self.anchor = mid  # the level the random walk reverts to
        self.background: dict[tuple[int, int], list[int]] = {}  # (side, price) -> oids
        self.quote: tuple[int, int, int, int] | None = None


# -- THE SIMULATOR --------------------------------------------------------------------------------


class ExchangeSimulator:
    """One simulated venue. ``turn()`` runs one loop iteration; ``run(should_stop)`` loops."""

    def __init__(self, spec, instruments: list[InstrumentSpec], venue_endpoint: str, *,
                 data_dir: Path | str, mids: dict[str, int] | None = None,
                 feed_endpoint: str | None = None, control_endpoint: str = "",
                 context: zmq.Context | None = None,
                 configure: Callable[[zmq.Socket], None] | None = None, fsync: bool = False,
                 max_orders: int = 100_000, max_levels: int = 1024,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.spec = spec
        self.mic = spec.mic
        self.clock = clock
        self.state: str = "open"
        self.step_ns = max(spec.step_ms, 1) * 1_000_000
        self.latency_ns = max(spec.latency_ms, 0) * 1_000_000
        self._rng = np.random.default_rng(spec.seed)
        self._reject_rng = np.random.default_rng([spec.seed, 1])
        listed = _listed(spec, instruments)
        mids = mids or {}
        self.markets: dict[str, _Market] = {}
        for i, ins in enumerate(listed):
            low = price_to_ticks(ins, ins.price_band[0], f"{ins.symbol} price_band")
            high = price_to_ticks(ins, ins.price_band[1], f"{ins.symbol} price_band")
            self.markets[ins.symbol] = _Market(ins, i, mids.get(ins.symbol, (low + high) // 2))
        self._by_instr = list(self.markets.values())
        self.book = NumbaBook(len(listed), max_orders, max_levels, 10_000)
        self.children: dict[int, _Child] = {}
        self._by_oid: dict[int, _Child] = {}
        self.execs: dict[str, _Exec] = {}
        self.processed = 0  # the last Kilat seq processed (journaled)
        self._bg_next = BACKGROUND_OID_BASE
        self._pending: list[tuple[int, object]] = []  # (due ns, Kilat message): latency
        self._touched: set[int] = set()
        self._encode = msgspec.msgpack.Encoder().encode
        self._last_fill_price: dict[str, int] = {}

        # recover, then open the journal for writing
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.data_dir / f"{self.mic}.kjl"
        session_id, out_frames = self._recover()
        self._journal = JournalWriter(self.journal_path, fsync=fsync)
        fresh = session_id is None
        if fresh:
            session_id = new_session_id(clock())
            self._journal.append(self._encode(SimSession(self.mic, session_id, clock())))
            self._journal.commit()
        self.session_id = session_id
        for symbol, price in self._last_fill_price.items():
            self.markets[symbol].mid = self.markets[symbol].anchor = price
        self._rebuild_book()

        self._ctx = context or zmq.Context()
        self._own_context = context is None
        self.adapter = VenueAdapter(
            venue_endpoint, self.mic, heartbeat_ms=spec.heartbeat_ms, session_id=session_id,
            last_sent=len(out_frames), next_expected=self.processed + 1,
            sent_frames=out_frames[-100_000:], context=self._ctx, configure=configure,
            clock=clock)
        feed_endpoint = spec.feed_endpoint if feed_endpoint is None else feed_endpoint
        self.feed = (FeedPublisher(feed_endpoint, self.mic, context=self._ctx, configure=configure)
                     if feed_endpoint else None)
        self._control = None
        self.control_endpoint = ""
        if control_endpoint:
            self._control = self._ctx.socket(zmq.REP)
            self._control.setsockopt(zmq.LINGER, 0)
            if configure is not None:
                configure(self._control)
            self._control.bind(control_endpoint)
            self.control_endpoint = self._control.getsockopt_string(zmq.LAST_ENDPOINT)
        if fresh:
            self._emit(SessionState(0, "open"))
            self._commit()
        now = clock()
        self._next_step = now
        self._next_feed_heartbeat = now

    # -- LOOP -------------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.turn()

    def turn(self, max_wait_ms: int = 10) -> None:
        """One iteration: wait for input (at most until the next step or delayed order), handle
        Kilat's messages and admin requests, run due work, heartbeats."""
        now = self.clock()
        due = self._next_step
        if self._pending:
            due = min(due, self._pending[0][0])
        wait = max(0, min(max_wait_ms, math.ceil((due - now) / 1_000_000)))
        poller = zmq.Poller()
        poller.register(self.adapter.socket, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        ready = dict(poller.poll(wait))
        for message in self.adapter.poll():
            self._on_kilat(message)
        if self._control is not None and self._control in ready:
            self._serve_admin()
        now = self.clock()
        while self._pending and self._pending[0][0] <= now:
            self._process(self._pending.pop(0)[1], now)
        if now >= self._next_step:
            self.step(now)
            self._next_step = max(self._next_step + self.step_ns, now)
        self._commit()
        self.adapter.timers(now)
        if self.feed is not None and now >= self._next_feed_heartbeat:
            self.feed.heartbeat(now)
            self._next_feed_heartbeat = now + self.spec.heartbeat_ms * 1_000_000

    def close(self) -> None:
        self._commit()
        self._journal.close()
        self.adapter.close()
        if self.feed is not None:
            self.feed.close()
        if self._control is not None:
            self._control.close(0)
        if self._own_context:
            self._ctx.term()

    # -- BACKGROUND LIQUIDITY ---------------------------------------------------------------------

    def step(self, now: int) -> None:
        """Move every mid one random-walk step, replenish the background ladder, and maybe
        send a background market order through the spread. O(instruments × depth)."""
        spec = self.spec
        for m in self._by_instr:
            self._step_market(m, spec, now)
        self._commit()

    def _step_market(self, m: _Market, spec, now: int) -> None:
        rng, book = self._rng, self.book
        depth = max(spec.depth_levels, 1)
        spread = max(spec.spread_ticks, 1)
        sigma = max(m.mid * spec.volatility_bps / 10_000, 0.3)
        # a random walk pulled back toward its anchor (10 % of the gap a step): independent
        # venues stay within a few ticks of each other, as arbitrage keeps real ones
        m.mid += int(round(rng.normal(0.0, sigma) + (m.anchor - m.mid) * MEAN_REVERSION))
        m.mid = min(max(m.mid, m.low + spread + depth), m.high - spread - depth)
        bid0 = m.mid - spread // 2
        ask0 = bid0 + spread
        wanted = {(BUY, bid0 - k) for k in range(depth)} | {(SELL, ask0 + k) for k in range(depth)}
        for key in [k for k in m.background if k not in wanted]:
            for oid in m.background.pop(key):
                book.cancel(oid)
        for k in range(depth):  # from the touch outwards
            for key in ((BUY, bid0 - k), (SELL, ask0 + k)):
                live, have = [], 0
                for oid in m.background.get(key, ()):
                    view = book.order(oid)
                    if view is not None:
                        live.append(oid)
                        have += view.leaves
                need = spec.level_qty - have
                if need > 0:
                    oid = self._bg_next = self._bg_next + 1
                    rows = book.submit(oid, m.instr, ACCOUNT_BACKGROUND, key[0], LIMIT, GTC,
                                       key[1], need).tolist()
                    self._on_book(rows, m, key[0], now)
                    if book.order(oid) is not None:
                        live.append(oid)
                if live:
                    m.background[key] = live
                else:
                    m.background.pop(key, None)
        if rng.random() < BACKGROUND_TRADE_PROBABILITY:
            side = BUY if rng.random() < 0.5 else SELL
            qty = int(rng.integers(1, max(2, spec.level_qty // 5) + 1))
            oid = self._bg_next = self._bg_next + 1
            rows = book.submit(oid, m.instr, ACCOUNT_BACKGROUND, side, MARKET, IOC, 0, qty).tolist()
            self._on_book(rows, m, side, now)
        self._touched.add(m.instr)

    # -- CHILD ORDERS -----------------------------------------------------------------------------

    def _on_kilat(self, message) -> None:
        if isinstance(message, StatusRequest):
            self._commit()
            self.adapter.send_status(message, next_expected=self.processed + 1,
                                     orders=self.open_orders(),
                                     fills=self.executions(message.since_seq))
            return
        if self.latency_ns:
            self._pending.append((self.clock() + self.latency_ns, message))
            return
        self._process(message, self.clock())
        self._commit()

    def _process(self, message, now: int) -> None:
        """Handle one Kilat sequenced message: journal it as processed, then act."""
        self._fold_in(message)
        self._journal.append(self._encode(SimIn(self._encode(message))))
        if isinstance(message, NewChildOrder):
            self._new(message, now)
        elif isinstance(message, CancelChildOrder):
            self._cancel(message, now)
        elif isinstance(message, ReplaceChildOrder):
            self._replace(message, now)

    def _new(self, msg: NewChildOrder, now: int) -> None:
        child = self.children.get(msg.child_id)
        refusal = self._refusal(msg, child)
        if refusal is not None:
            self._emit(ChildRejected(0, msg.child_id, refusal[0], refusal[1]))
            return
        m = self.markets[msg.symbol]
        rows = self.book.submit(child.oid, m.instr, ACCOUNT_CHILD, child.side, child.otype,
                                child.tif, child.price, child.qty).tolist()
        if rows and rows[0][0] == REJECT:
            code = rows[0][7]
            self._emit(ChildRejected(0, msg.child_id, code, f"the venue's book refused it "
                                                            f"({_code_name(code)})"))
            return
        self._emit(ChildAccepted(0, msg.child_id, f"{self.mic}-{child.oid}"))
        self._on_book(rows, m, child.side, now)
        self._touched.add(m.instr)

    def _refusal(self, msg: NewChildOrder, child: _Child | None) -> tuple[int, str] | None:
        if child is None or child.oid != msg.seq:
            return VENUE_REJECTED, f"child order {msg.child_id} already exists at {self.mic}"
        if self.state != "open":
            return VENUE_REJECTED, f"{self.mic} is {self.state}"
        m = self.markets.get(msg.symbol)
        if m is None:
            return VENUE_REJECTED, (f"{msg.symbol!r} is not listed at {self.mic} "
                                    f"(it lists {', '.join(self.markets)})")
        if msg.order_type not in (OrderType.LIMIT, OrderType.MARKET):
            return VENUE_REJECTED, f"{self.mic} takes LIMIT and MARKET child orders, got {msg.order_type.name}"
        if msg.tif == TimeInForce.GTD:
            return VENUE_REJECTED, "GTD needs an expiry time, which child orders do not carry"
        if msg.qty <= 0:
            return VENUE_REJECTED, f"qty must be a positive number of lots, got {msg.qty}"
        if msg.order_type == OrderType.LIMIT and not m.low <= msg.price <= m.high:
            return VENUE_REJECTED, (f"price {msg.price} is outside {msg.symbol}'s band "
                                    f"[{m.low}, {m.high}] ticks")
        bps = self.spec.reject_rate_bps
        if bps > 0 and self._reject_rng.random() * 10_000 < bps:
            return VENUE_REJECTED, f"injected reject (reject_rate_bps={bps})"
        return None

    def _cancel(self, msg: CancelChildOrder, now: int) -> None:
        child = self.children.get(msg.child_id)
        why = self._not_working(msg.child_id, child)
        if why is not None:
            self._emit(ChildCancelRejected(0, msg.child_id, why, VENUE_REJECTED))
            return
        m = self.markets[child.symbol]
        self._on_book(self.book.cancel(child.oid).tolist(), m, child.side, now)
        self._touched.add(m.instr)

    def _replace(self, msg: ReplaceChildOrder, now: int) -> None:
        child = self.children.get(msg.child_id)
        why = self._not_working(msg.child_id, child)
        if why is None and msg.qty <= child.cum:
            why = f"qty {msg.qty} is not above the {child.cum} lots already filled"
        if why is None and child.otype == LIMIT:
            m = self.markets[child.symbol]
            if not m.low <= msg.price <= m.high:
                why = f"price {msg.price} is outside {child.symbol}'s band [{m.low}, {m.high}] ticks"
        if why is not None:
            self._emit(ChildCancelRejected(0, msg.child_id, why, VENUE_REJECTED, True))
            return
        m = self.markets[child.symbol]
        rows = self.book.modify(child.oid, msg.price, msg.qty - child.cum).tolist()
        self._on_book(rows, m, child.side, now, replace_qty=msg.qty)
        self._touched.add(m.instr)

    def _not_working(self, child_id: int, child: _Child | None) -> str | None:
        if child is None or not child.accepted:
            return f"unknown child order {child_id} at {self.mic}"
        if not child.open:
            return f"child order {child_id} is no longer working (filled {child.cum} of {child.qty})"
        return None

    def _on_book(self, rows: list, m: _Market, taker_side: int, now: int,
                 replace_qty: int = 0) -> None:
        """Turn book event rows into reports for the child orders involved and feed trades."""
        by_oid = self._by_oid
        for etype, oid, other, price, qty, leaves, other_leaves, reason in rows:
            if etype == TRADE:
                if self.feed is not None:
                    self.feed.trade(m.symbol, price, qty, 1 if taker_side == BUY else 2, now)
                child = by_oid.get(oid)
                if child is not None:
                    self._fill(child, qty, price, leaves)
                child = by_oid.get(other)
                if child is not None:
                    self._fill(child, qty, price, other_leaves)
                continue
            child = by_oid.get(oid)
            if child is None:
                continue
            if etype in (CANCEL, EXPIRE):
                self._emit(ChildCanceled(0, child.child_id, qty, reason))
            elif etype == REPLACE:
                self._emit(ChildReplaced(0, child.child_id, replace_qty, price, leaves))
            elif etype in (MODIFY_REJECT, CANCEL_REJECT):
                self._emit(ChildCancelRejected(0, child.child_id,
                                               f"the venue's book refused it ({_code_name(reason)})",
                                               reason, etype == MODIFY_REJECT))

    def _fill(self, child: _Child, qty: int, price: int, leaves: int) -> None:
        exec_id = f"{self.mic}-{self.session_id}-{len(self.execs) + 1}"
        self._emit(ChildFilled(0, child.child_id, exec_id, qty, price, leaves, child.cum + qty))

    # -- ADMIN ------------------------------------------------------------------------------------

    def bust(self, exec_id: str, reason: str = "") -> AdminReply:
        """Cancel one of the venue's executions: a TradeBust goes to Kilat."""
        e = self.execs.get(exec_id)
        if e is None:
            return AdminReply(False, f"no execution {exec_id!r} at {self.mic}")
        if e.busted:
            return AdminReply(False, f"execution {exec_id} is already busted")
        self._emit(TradeBust(0, exec_id, e.child_id, reason))
        self._commit()
        return AdminReply(True, f"busted {exec_id}: child {e.child_id}, {e.qty} lots at {e.price}")

    def correct(self, exec_id: str, qty: int, price: int, reason: str = "") -> AdminReply:
        """Correct one of the venue's executions (qty not above the original's, price > 0)."""
        e = self.execs.get(exec_id)
        if e is None:
            return AdminReply(False, f"no execution {exec_id!r} at {self.mic}")
        if e.busted:
            return AdminReply(False, f"execution {exec_id} is busted")
        if not 0 < qty <= e.qty or price <= 0:
            return AdminReply(False, f"a correction needs 0 < qty <= {e.qty} and price > 0, "
                                     f"got qty {qty}, price {price}")
        old = (e.qty, e.price)
        self._emit(TradeCorrection(0, exec_id, e.child_id, qty, price, reason))
        self._commit()
        return AdminReply(True, f"corrected {exec_id}: {old[0]} @ {old[1]} -> {qty} @ {price}")

    def set_state(self, state: str) -> AdminReply:
        self._emit(SessionState(0, state))
        self._commit()
        return AdminReply(True, f"{self.mic} is {state}")

    def snapshot(self) -> VenueSnapshot:
        return VenueSnapshot(self.mic, self.session_id, self.state, self.adapter.logged_on,
                             self.adapter.last_sent, self.processed + 1, self.open_orders(),
                             self.executions(0), {m.symbol: m.mid for m in self._by_instr})

    def _serve_admin(self) -> None:
        sock = self._control
        while True:
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                command = ADMIN_DECODER.decode(raw)
            except msgspec.DecodeError as exc:
                reply = AdminReply(False, f"expected BustExecution, CorrectExecution, "
                                          f"SetVenueState or QueryVenue: {exc}")
            else:
                if isinstance(command, BustExecution):
                    reply = self.bust(command.exec_id, command.reason)
                elif isinstance(command, CorrectExecution):
                    reply = self.correct(command.exec_id, command.qty, command.price, command.reason)
                elif isinstance(command, SetVenueState):
                    reply = self.set_state(command.state)
                else:
                    reply = self.snapshot()
            sock.send(self._encode(reply))

    # -- QUERIES ----------------------------------------------------------------------------------

    def open_orders(self) -> list[OpenChildOrder]:
        return [OpenChildOrder(c.child_id, c.venue_order_id, c.symbol, c.side, c.qty, c.price,
                               c.leaves, c.cum)
                for c in self.children.values() if c.open]

    def executions(self, since_seq: int = 0) -> list[ExecutionRecord]:
        return [ExecutionRecord(e.seq, e.exec_id, e.child_id, e.qty, e.price, e.busted)
                for e in self.execs.values() if e.seq > since_seq]

    # -- STATE: emit, fold, commit, recover -------------------------------------------------------

    def _emit(self, message) -> None:
        """Number a report, journal its frame, fold it into the state; sent on ``_commit``."""
        seq, frame = self.adapter.prepare(message)
        self._journal.append(self._encode(SimOut(frame)))
        self._fold_out(msgspec.structs.replace(message, seq=seq))

    def _commit(self) -> None:
        """Journal first, then send: a report never leaves before it is written."""
        self._journal.commit()
        self.adapter.flush()
        if self.feed is not None and self._touched:
            now = self.clock()
            for instr in sorted(self._touched):
                self._publish_quote(self._by_instr[instr], now)
            self._touched.clear()

    def _publish_quote(self, m: _Market, now: int) -> None:
        bids = self.book.depth(m.instr, BUY, 1)
        asks = self.book.depth(m.instr, SELL, 1)
        top = (bids[0][0] if bids else 0, bids[0][1] if bids else 0,
               asks[0][0] if asks else 0, asks[0][1] if asks else 0)
        if top != m.quote:
            m.quote = top
            self.feed.quote(m.symbol, top[0], top[1], top[2], top[3], now)

    def _fold_in(self, message) -> None:
        self.processed = message.seq
        if isinstance(message, NewChildOrder) and message.child_id not in self.children:
            child = _Child(message)
            self.children[child.child_id] = child
            self._by_oid[child.oid] = child

    def _fold_out(self, message) -> None:
        if isinstance(message, SessionState):
            self.state = message.state
            return
        if isinstance(message, TradeBust | TradeCorrection):
            e = self.execs[message.exec_id]
            child = self.children.get(e.child_id)
            if isinstance(message, TradeBust):
                e.busted = True
                if child is not None:
                    child.cum -= e.qty
            else:
                if child is not None:
                    child.cum += message.qty - e.qty
                e.qty, e.price = message.qty, message.price
            return
        child = self.children.get(message.child_id)
        if child is None:
            return
        if isinstance(message, ChildAccepted):
            child.accepted = child.open = True
            child.venue_order_id = message.venue_order_id
        elif isinstance(message, ChildRejected):
            if not child.accepted:
                child.open = False
        elif isinstance(message, ChildFilled):
            child.cum, child.leaves = message.cum, message.leaves
            child.open = message.leaves > 0
            self.execs[message.exec_id] = _Exec(message.seq, message.exec_id, child.child_id,
                                                message.qty, message.price)
            self._last_fill_price[child.symbol] = message.price
        elif isinstance(message, ChildCanceled):
            child.open = False
            child.leaves = 0
        elif isinstance(message, ChildReplaced):
            child.qty, child.price, child.leaves = message.qty, message.price, message.leaves
            child.open = message.leaves > 0

    def _recover(self) -> tuple[str | None, list[bytes]]:
        """Fold the journal, if any: returns (session id or None, the frames sent in order)."""
        session_id = None
        out_frames: list[bytes] = []
        if not self.journal_path.exists():
            return None, out_frames
        for _, payload in read_journal(self.journal_path):
            record = _RECORD_DECODER.decode(payload)
            if isinstance(record, SimSession):
                if record.mic != self.mic:
                    raise ValueError(f"{self.journal_path} is the journal of {record.mic}, "
                                     f"not of {self.mic}")
                session_id = record.session_id
            elif isinstance(record, SimIn):
                self._fold_in(KILAT_DECODER.decode(record.frame))
            else:
                message = VENUE_DECODER.decode(record.frame)
                if message.seq != len(out_frames) + 1:
                    raise ValueError(f"{self.journal_path}: sent seq {message.seq} follows "
                                     f"{len(out_frames)}; the journal is not this venue's")
                out_frames.append(record.frame)
                self._fold_out(message)
        return session_id, out_frames

    def _rebuild_book(self) -> None:
        """Put the open child orders back in the book (before any background liquidity)."""
        for child in self.children.values():
            if not child.open or child.leaves <= 0:
                continue
            m = self.markets.get(child.symbol)
            if m is None:
                raise ValueError(f"open child order {child.child_id} is in {child.symbol}, which "
                                 f"{self.mic} no longer lists")
            rows = self.book.submit(child.oid, m.instr, ACCOUNT_CHILD, child.side, child.otype,
                                    child.tif, child.price, child.leaves).tolist()
            if [r[0] for r in rows] != [2]:  # REST
                log.warning("child order %d did not rest again cleanly: %s", child.child_id, rows)


def _listed(spec, instruments: list[InstrumentSpec]) -> list[InstrumentSpec]:
    by_symbol = {i.symbol: i for i in instruments}
    if not spec.instruments:
        return list(instruments)
    unknown = [s for s in spec.instruments if s not in by_symbol]
    if unknown:
        raise ValueError(f"venue {spec.mic} lists {', '.join(unknown)}, which the config's "
                         f"instruments do not define")
    return [by_symbol[s] for s in spec.instruments]


def _code_name(code: int) -> str:
    try:
        return f"{code} {RejectCode(code).name}"
    except ValueError:
        return str(code)


__all__ = [
    "ADMIN_DECODER",
    "AdminReply",
    "BustExecution",
    "CorrectExecution",
    "ExchangeSimulator",
    "QueryVenue",
    "SetVenueState",
    "VenueSnapshot",
    "venue_admin",
]
