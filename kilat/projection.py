"""A projection of the journal: what reports read (DESIGN.md: history is read from a projection,
never from the engine's hot state).

``project(config, journal_path)`` builds a fresh pipeline, replays every journaled record through
it in sequence order (``Pipeline.replay_events``) and, while doing so, collects what the engine
itself forgets:

- every order's life: who sent it (the channel/user), when it arrived, its **arrival price** (the
  instrument's reference price — last trade, else the mid of a two-sided quote — at the moment the
  order was accepted, tracked here from ``PriceTick`` records and fills in stream order), its
  fills, busts and corrections, its final status (finished orders leave ``pipeline.orders`` at the
  end of each day; they stay here);
- refusals (``DeniedOrder``), which change no state but belong on a blotter;
- daily P&L marks: at each UTC day boundary of the record stream, every ledger cell's position,
  realised and unrealised P&L (tick·lots) at that moment's marks, and the FX rate from its
  currency to its account's base currency at that moment (the journal's FX prices are its FX
  history).

The journal is only read (``read_journal`` opens it ``rb``); nothing is written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from engine import messages as m
from engine.constants import BUY
from engine.journal import read_journal
from engine.ledger import INTERNAL, PositionLedger
from engine.messages import JOURNAL_DECODER
from engine.model import ReferenceData
from engine.pipeline import Pipeline, block_order
from engine.refbook import ReferenceBook
from kilat.config import KilatConfig, check_config

#: Records replayed per ``replay_events`` call (a chunk also ends at each UTC day boundary).
CHUNK = 512

#: Where an execution happened when it was Kilat's own cross (a venue's fill names its MIC).
VENUE_INTERNAL = "INTERNAL"


# -- WHAT IS COLLECTED ----------------------------------------------------------------------------


@dataclass
class FillRecord:
    """One execution of one order (one side of a trade). ``qty``/``price`` are the live figures
    (a correction rewrites them); ``busted`` once the trade was busted."""

    exec_id: int
    order_id: int
    account: str
    symbol: str
    side: int
    qty: int  # lots
    price: int  # ticks
    maker: bool
    ts: int  # ns since the epoch, UTC
    seq: int  # journal record that caused it
    venue: str = VENUE_INTERNAL
    busted: bool = False
    corrected: bool = False
    orig_qty: int = 0
    orig_price: int = 0


@dataclass
class BustRecord:
    """A bust or a correction of one execution, as the journal recorded it."""

    exec_id: int
    order_id: int
    account: str
    symbol: str
    kind: str  # "bust" | "correct"
    old_qty: int
    old_price: int
    qty: int  # 0 for a bust
    price: int
    reason: str
    ts: int
    seq: int


@dataclass
class OrderRecord:
    """One order's life as the journal tells it. Times are ns since the epoch (UTC); prices ticks;
    quantities lots. ``arrival_px`` is 0 when the instrument had no reference price yet."""

    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: int
    order_type: str
    tif: str
    price: int  # limit (0: none); the latest after a replace
    stop_price: int
    qty: int  # ordered lots (after replaces; busted lots are not taken off here)
    user: str  # the channel/user who sent it
    submitted_ts: int  # the submit (or its hold) reached the engine
    seq: int = 0  # the journal record that created it
    arrival_ts: int = 0  # accepted (a held order: when released); 0 never accepted
    arrival_px: int = 0
    status: str = "PendingNew"
    reason: str = ""  # why it was rejected, canceled, held or denied
    updated_ts: int = 0
    fills: list[FillRecord] = field(default_factory=list)

    @property
    def live_fills(self) -> list[FillRecord]:
        return [f for f in self.fills if not f.busted]

    @property
    def cum_qty(self) -> int:
        return sum(f.qty for f in self.fills if not f.busted)

    @property
    def removed_qty(self) -> int:
        """Lots that busts and corrections took off the order (the engine's qty excludes them)."""
        return sum(f.orig_qty if f.busted else f.orig_qty - f.qty for f in self.fills)

    @property
    def notional(self) -> int:
        """Σ qty × price over the live fills, tick·lots (exact)."""
        return sum(f.qty * f.price for f in self.fills if not f.busted)


@dataclass
class Refusal:
    """A submit or modify that risk or compliance refused (a journaled ``DeniedOrder``): no
    order came of it (a modify leaves its order as it was). Validation refusals are not
    journaled, so no report sees them."""

    account: str
    cl_ord_id: str
    symbol: str
    side: int | None
    qty: int | None
    price: int | None
    user: str
    code: int
    reason: str
    ts: int
    seq: int
    request: str  # "SubmitOrder" | "ModifyOrder"


@dataclass
class DayMark:
    """One ledger cell at the end of one UTC day of the record stream (tick·lots)."""

    qty: int
    realised: int
    unrealised: int | None  # None: a position and no mark
    mark: int
    fx_base: float | None = None  # the instrument's currency in the account's base currency, then


@dataclass
class Projection:
    """The pipeline after the replay, plus what was collected on the way."""

    config: KilatConfig
    ref: ReferenceData
    pipeline: Pipeline
    ledger: PositionLedger  # the pipeline's, or one this projection fed from the fills
    orders: dict[int, OrderRecord]
    fills: list[FillRecord]  # in stream order (busted ones included, flagged)
    busts: list[BustRecord]
    refusals: list[Refusal]
    allocations: list  # AllocationMade events, once the engine has them
    days: dict[date, dict[tuple[int, int], DayMark]]  # UTC day -> (account, instrument) -> mark
    last_seq: int
    last_ts: int

    @property
    def portfolio(self):
        return self.pipeline.portfolio

    @property
    def settlement(self):
        return self.pipeline.settlement


# -- BUILDING IT ----------------------------------------------------------------------------------


def record_ts(record) -> int:
    """The time stamped on a journal record (ns; 0 for a BatchEnd)."""
    inner = getattr(record, "order", None) or getattr(record, "request", None) or record
    return getattr(inner, "ts", 0) or 0


def utc_day(ts: int) -> date:
    return datetime.fromtimestamp(ts / 1e9, UTC).date()


class _Collector:
    """Folds each record's events into order, fill and bust records, and tracks reference prices
    in stream order (bid, ask, last per instrument: a tick's 0 field keeps the old value; a fill
    sets last)."""

    def __init__(self, ref: ReferenceData, ledger: PositionLedger | None):
        self.ref = ref
        self.ledger = ledger  # fed here only when the pipeline has none of its own
        n = len(ref.by_index)
        self.bid, self.ask, self.last = [0] * n, [0] * n, [0] * n
        self.orders: dict[int, OrderRecord] = {}
        self.by_cl: dict[tuple[str, str], int] = {}
        self.fills: list[FillRecord] = []
        self.fill_by_exec: dict[int, FillRecord] = {}
        self.busts: list[BustRecord] = []
        self.refusals: list[Refusal] = []
        self.allocations: list = []
        self._alloc_type = getattr(m, "AllocationMade", None)
        self._location = ledger.location_index(INTERNAL) if ledger is not None else 0

    def reference_price(self, i: int) -> int:
        """Last trade, else the mid of a two-sided quote, else 0. O(1)."""
        if self.last[i]:
            return self.last[i]
        bid, ask = self.bid[i], self.ask[i]
        return (bid + ask) // 2 if bid and ask else 0

    def record(self, seq: int, record, events: list) -> None:
        kind = type(record)
        if kind is m.PriceTick:
            i = self.ref.instruments[record.symbol].index
            self.bid[i] = record.bid or self.bid[i]
            self.ask[i] = record.ask or self.ask[i]
            self.last[i] = record.last or self.last[i]
        elif kind is m.DeniedOrder:
            self._denied(seq, record)
        submit = (record if kind is m.SubmitOrder else record.order if kind is m.ScreenedOrder
                  else block_order(record) if kind is m.SubmitBlockOrder else None)
        for event in events:
            self._event(seq, event, submit)

    def _denied(self, seq: int, record: m.DeniedOrder) -> None:
        req = record.request
        is_submit = type(req) is m.SubmitOrder
        symbol = req.symbol if is_submit else ""
        if not is_submit:
            oid = self.by_cl.get((req.account, req.orig_cl_ord_id)) or req.order_id
            symbol = self.orders[oid].symbol if oid in self.orders else ""
        self.refusals.append(Refusal(
            req.account, req.cl_ord_id, symbol, int(req.side) if is_submit else None,
            req.qty, req.price, req.user, record.code, record.reason, req.ts, seq,
            type(req).__name__,
        ))

    def _event(self, seq: int, e, submit: m.SubmitOrder | None) -> None:
        kind = type(e)
        if kind is m.OrderAccepted:
            o = self.orders.get(e.order_id)
            if o is None:
                o = self._new(seq, e.order_id, submit, e.ts)
            o.status, o.arrival_ts, o.updated_ts = "New", e.ts, e.ts
            o.arrival_px = self.reference_price(self.ref.instruments[o.symbol].index)
        elif kind is m.OrderHeld:
            o = self._new(seq, e.order_id, submit, e.ts)
            o.status, o.reason, o.updated_ts = "PendingApproval", e.reason, e.ts
        elif kind is m.OrderRejected:
            if e.order_id:
                o = self.orders.get(e.order_id) or self._new(seq, e.order_id, submit, e.ts)
                o.status, o.reason, o.updated_ts = "Rejected", e.reason, e.ts
        elif kind is m.OrderDenied:  # an officer refused a held order
            o = self.orders.get(self.by_cl.get((e.account, e.cl_ord_id), 0))
            if o is not None:
                o.status, o.reason, o.updated_ts = "Denied", e.reason, e.ts
        elif kind is m.OrderFilled:
            self._fill(seq, e)
        elif kind is m.OrderCanceled:
            self._finish(e.order_id, "Canceled", e.reason, e.ts)
        elif kind is m.OrderExpired:
            self._finish(e.order_id, "Expired", "", e.ts)
        elif kind is m.OrderReplaced:
            o = self.orders[e.order_id]
            o.price, o.qty, o.updated_ts = e.price, e.qty + o.removed_qty, e.ts
        elif kind is m.TradeBusted or kind is m.TradeCorrected:
            self._fix(seq, e)
        elif self._alloc_type is not None and kind is self._alloc_type:
            self.allocations.append(e)

    def _new(self, seq: int, oid: int, submit: m.SubmitOrder | None, ts: int) -> OrderRecord:
        if submit is None:
            raise RuntimeError(f"order {oid} appeared without the submit that created it")
        o = OrderRecord(oid, submit.account, submit.cl_ord_id, submit.symbol, int(submit.side),
                        submit.order_type.name, submit.tif.name, submit.price, submit.stop_price,
                        submit.qty, submit.user, submit.ts or ts, seq)
        self.orders[oid] = o
        self.by_cl[(o.account, o.cl_ord_id)] = oid
        return o

    def _finish(self, oid: int, status: str, reason: str, ts: int) -> None:
        o = self.orders[oid]
        o.status, o.reason, o.updated_ts = status, reason, ts

    def _fill(self, seq: int, e: m.OrderFilled) -> None:
        i = self.ref.instruments[e.symbol].index
        f = FillRecord(e.exec_id, e.order_id, e.account, e.symbol, int(e.side), e.last_qty,
                       e.last_px, e.maker, e.ts, seq, venue=e.venue or VENUE_INTERNAL,
                       orig_qty=e.last_qty, orig_price=e.last_px)
        self.last[i] = e.last_px  # a trade, internal or at a venue, moves the last price
        self.fills.append(f)
        self.fill_by_exec[e.exec_id] = f
        o = self.orders[e.order_id]
        o.fills.append(f)
        o.status = "Filled" if e.leaves_qty == 0 else "PartiallyFilled"
        o.updated_ts = e.ts
        if self.ledger is not None:
            refused = self.ledger.fill(e.exec_id, self.ref.account_index[e.account], i,
                                       self.ledger.location_index(e.venue) if e.venue else self._location,
                                       int(e.side), e.last_qty, e.last_px)
            if refused is not None:
                raise RuntimeError(f"the projection's ledger refused exec {e.exec_id}: {refused[1]}")

    def _fix(self, seq: int, e) -> None:
        f = self.fill_by_exec[e.exec_id]
        bust = type(e) is m.TradeBusted
        self.busts.append(BustRecord(
            e.exec_id, e.order_id, e.account, e.symbol, "bust" if bust else "correct",
            f.qty, f.price, 0 if bust else e.qty, e.price if not bust else f.price, e.reason,
            e.ts, seq,
        ))
        if bust:
            f.busted = True
        else:
            f.qty, f.price, f.corrected = e.qty, e.price, True
        o = self.orders[e.order_id]
        o.updated_ts = e.ts
        if o.status in ("New", "PartiallyFilled"):  # as the engine: a finished order stays finished
            o.status = "PartiallyFilled" if o.cum_qty else "New"
        if self.ledger is not None:
            refused = (self.ledger.bust(e.exec_id) if bust
                       else self.ledger.correct(e.exec_id, e.qty, e.price))
            if refused is not None:
                raise RuntimeError(f"the projection's ledger refused the fix of exec {e.exec_id}: "
                                   f"{refused[1]}")


def fresh_pipeline(config: KilatConfig, ref: ReferenceData | None = None) -> Pipeline:
    """A pipeline wired as the service wires it, over the (pure Python) reference book: no JIT
    to warm, and reports are not on the hot path."""
    from kilat.service import build_pipeline

    ref = ref if ref is not None else check_config(config)
    b = config.book
    book = ReferenceBook(len(ref.by_index), b.max_orders, b.max_levels_per_side, b.max_fills_per_order)
    return build_pipeline(config, ref, book)


def project(config: KilatConfig, journal_path: Path | str) -> Projection:
    """Replay ``journal_path`` from its first record into a fresh pipeline and collect the
    history. Raises ``FileNotFoundError`` if there is no journal, ``JournalCorruptError`` on a
    corrupt record, ``RuntimeError`` if the journal does not start at seq 1. O(records)."""
    path = Path(journal_path)
    if not path.exists():
        raise FileNotFoundError(f"no journal at {path}")
    ref = check_config(config)
    pipeline = fresh_pipeline(config, ref)
    ledger = getattr(pipeline, "ledger", None)
    own = ledger is None
    if own:
        ledger = PositionLedger(ref, pipeline.portfolio)
    collector = _Collector(ref, ledger if own else None)
    days: dict[date, dict[tuple[int, int], DayMark]] = {}
    decode = JOURNAL_DECODER.decode
    chunk: list = []
    first_seq = expected = 1
    day: date | None = None
    last_ts = 0

    def flush() -> None:
        nonlocal chunk, first_seq
        if not chunk:
            return
        results = pipeline.replay_events(first_seq, chunk)
        for k, (record, events) in enumerate(zip(chunk, results, strict=True)):
            collector.record(first_seq + k, record, events)
        first_seq += len(chunk)
        chunk = []

    for seq, payload in read_journal(path):
        if seq != expected:
            raise RuntimeError(f"{path}: expected record seq {expected}, got {seq} (a report "
                               "replays the whole journal from seq 1)")
        expected += 1
        record = decode(payload)
        ts = record_ts(record)
        if ts:
            today = utc_day(ts)
            if day is not None and today != day:
                flush()
                days[day] = _day_marks(ledger, pipeline)
            day = today
            last_ts = max(last_ts, ts)
        chunk.append(record)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    pipeline.end_replay()
    if day is not None:
        days[day] = _day_marks(ledger, pipeline)
    return Projection(config, ref, pipeline, ledger, collector.orders, collector.fills,
                      collector.busts, collector.refusals, collector.allocations, days,
                      expected - 1, last_ts)


def _day_marks(ledger: PositionLedger, pipeline: Pipeline) -> dict[tuple[int, int], DayMark]:
    """Every booked cell at the current marks and FX rates (the journal's FX history is its
    stream of FX prices: the replay has the table of that moment). O(cells)."""
    pf = pipeline.portfolio
    marks = pf.marks()
    out = {}
    for (a, i), state in ledger.cells().items():
        rate = float(pf.fx[pf.inst_currency[i], pf.account_base[a]])
        out[(a, i)] = DayMark(state.qty, state.realised, ledger.unrealised(a, i), int(marks[i]),
                              None if rate != rate else rate)
    return out


def side_name(side: int) -> str:
    return "BUY" if side == BUY else "SELL"
