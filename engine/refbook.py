"""The reference book: plain, readable Python with the numba book's exact semantics.

It is the oracle of the differential tests: one ``SortedDict`` of price -> FIFO (an
``OrderedDict`` of oid -> order) per instrument and side, a dict of live orders by oid, an
``OrderedDict`` of pending stops per instrument, and a ``heapq`` of GTD expiries with lazy
deletion. It enforces the same capacity limits as ``NumbaBook`` and emits the same event rows
(``engine.book_events``). The rules are written out in ``docs/book.md``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sortedcontainers import SortedDict

from engine.book_events import (
    C_NCOLS,
    CANCEL,
    CANCEL_REJECT,
    EV_NCOLS,
    EXPIRE,
    MODIFY_REJECT,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_EXPIRE,
    OP_MASS_CANCEL,
    OP_MODIFY,
    OP_SUBMIT,
    PENDING_STOP,
    REJECT,
    REPLACE,
    REST,
    TRADE,
    TRIGGER,
    OrderView,
)
from engine.constants import (
    BUY,
    DAY,
    FOK,
    GTD,
    IOC,
    MARKET,
    R_BOOK_FULL,
    R_CANCEL_REQUESTED,
    R_DUPLICATE_BOOK_ORDER,
    R_END_OF_DAY,
    R_FOK_NOT_FILLABLE,
    R_GTD_EXPIRED,
    R_IOC_REMAINDER,
    R_MASS_CANCEL,
    R_MATCH_LIMIT_REACHED,
    R_NO_LIQUIDITY,
    R_POST_ONLY_WOULD_CROSS,
    R_PRICE_LEVELS_FULL,
    R_SELF_TRADE_PREVENTED,
    R_UNKNOWN_BOOK_INSTRUMENT,
    R_UNKNOWN_BOOK_ORDER,
    STOP,
    STOP_LIMIT,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_NONE,
)


@dataclass(slots=True)
class _Order:
    oid: int
    instr: int
    account: int
    side: int
    otype: int
    tif: int
    price: int
    leaves: int
    visible: int
    display: int
    stop_price: int
    expire_ts: int
    post_only: int
    stp: int
    pending: bool = False

    def refresh_visible(self) -> None:
        self.visible = min(self.display, self.leaves) if self.display > 0 else self.leaves

    def canonical(self) -> list[int]:
        return [
            self.oid,
            self.account,
            self.side,
            self.price,
            self.leaves,
            self.visible,
            self.display,
            self.otype,
            self.tif,
            self.stop_price,
            self.expire_ts,
            self.post_only,
            self.stp,
        ]


class _Instrument:
    __slots__ = ("sides", "stops", "last")

    def __init__(self) -> None:
        # sides[BUY] / sides[SELL]: price -> OrderedDict(oid -> _Order), in FIFO order
        self.sides: tuple[SortedDict, SortedDict] = (SortedDict(), SortedDict())
        self.stops: OrderedDict[int, _Order] = OrderedDict()  # arrival order
        self.last = 0

    def best(self, side: int) -> int:
        levels = self.sides[side]
        if not levels:
            return 0
        return levels.peekitem(-1 if side == BUY else 0)[0]

    def levels_best_first(self, side: int):
        levels = self.sides[side]
        return reversed(levels.items()) if side == BUY else iter(levels.items())


def _is_market(otype: int) -> bool:
    return otype == MARKET or otype == STOP


def _stop_holds(side: int, last: int, stop_price: int) -> bool:
    return last >= stop_price if side == BUY else last <= stop_price


class ReferenceBook:
    """The oracle: same constructor, methods, events and limits as ``NumbaBook``, in Python."""

    def __init__(
        self,
        n_instruments: int,
        max_orders: int,
        max_levels_per_side: int = 1024,
        max_fills_per_order: int = 10_000,
    ) -> None:
        self.n_instruments = n_instruments
        self.max_orders = max_orders
        self.max_levels = max_levels_per_side
        self.max_fills = max_fills_per_order
        self._instruments = [_Instrument() for _ in range(n_instruments)]
        self._orders: dict[int, _Order] = {}  # every order holding a slot
        self._expiries: list[tuple[int, int]] = []  # (expire_ts, oid), lazily deleted
        self._ev: list[tuple[int, ...]] = []
        self._resting = 0
        self._trades = 0
        self._traded_qty = 0
        self.peak_live = 0

    def _emit(self, etype, oid, other, price, qty, leaves, other_leaves, reason) -> None:
        self._ev.append((etype, oid, other, price, qty, leaves, other_leaves, reason))

    def _take_events(self) -> np.ndarray:
        ev, self._ev = self._ev, []
        out = np.array(ev, dtype=np.int64).reshape(len(ev), EV_NCOLS)
        out.flags.writeable = False
        return out

    # -- COMMANDS --------------------------------------------------------------------------------

    def submit(
        self,
        oid: int,
        instr: int,
        account: int,
        side: int,
        otype: int,
        tif: int,
        price: int,
        qty: int,
        display: int = 0,
        stop_price: int = 0,
        expire_ts: int = 0,
        post_only: bool = False,
        stp: int = STP_NONE,
    ) -> np.ndarray:
        """Submit a new order. O(log L) to rest + O(1) per fill (amortised)."""
        self._submit_then_cascade(
            oid,
            instr,
            account,
            side,
            otype,
            tif,
            price,
            qty,
            display,
            stop_price,
            expire_ts,
            1 if post_only else 0,
            stp,
        )
        return self._take_events()

    def cancel(self, oid: int) -> np.ndarray:
        """Cancel a resting order or pending stop. O(log L)."""
        self._cancel(oid)
        return self._take_events()

    def modify(self, oid: int, new_price: int, new_leaves: int) -> np.ndarray:
        """Cancel/replace; new_leaves is the new remaining quantity. O(log L) + fills."""
        self._modify_then_cascade(oid, new_price, new_leaves)
        return self._take_events()

    def mass_cancel(self, instr: int = -1, account: int = -1, side: int = -1) -> np.ndarray:
        """Cancel resting orders and pending stops matching the filters, ascending oid. O(N)."""
        self._mass_cancel(instr, account, side)
        return self._take_events()

    def end_of_day(self) -> np.ndarray:
        """Expire every DAY order (resting and pending stops), ascending oid. O(N log N)."""
        self._end_of_day()
        return self._take_events()

    def expire(self, now: int) -> np.ndarray:
        """Expire GTD orders with expire_ts <= now, in (expire_ts, oid) order. O(k log h)."""
        self._expire(now)
        return self._take_events()

    def process_batch(self, cmds: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """Run a (n, 14) command array through the per-command code; all events. O(sum).

        ``starts`` (optional, n ints) receives the row where each command's events begin.
        """
        cmds = np.asarray(cmds)
        if cmds.ndim != 2 or cmds.shape[1] != C_NCOLS:
            raise ValueError(f"cmds must have shape (n, {C_NCOLS}), got {cmds.shape}")
        submit, cancel = self._submit_then_cascade, self._cancel
        modify = self._modify_then_cascade
        for k, row in enumerate(cmds.tolist()):
            if starts is not None:
                starts[k] = len(self._ev)
            op = row[0]
            if op == OP_SUBMIT:
                submit(*row[1:])
            elif op == OP_CANCEL:
                cancel(row[1])
            elif op == OP_MODIFY:
                modify(row[1], row[7], row[8])
            elif op == OP_MASS_CANCEL:
                self._mass_cancel(row[2], row[3], row[4])
            elif op == OP_END_OF_DAY:
                self._end_of_day()
            elif op == OP_EXPIRE:
                self._expire(row[11])
        return self._take_events()

    # -- the rules -------------------------------------------------------------------------------

    def _submit_then_cascade(self, oid, instr, *fields) -> None:
        trades = self._trades
        self._submit(oid, instr, *fields)
        if self._trades != trades:
            self._after_trades(instr)

    def _modify_then_cascade(self, oid: int, new_price: int, new_leaves: int) -> None:
        order = self._orders.get(oid)
        trades = self._trades
        self._modify(oid, new_price, new_leaves)
        if self._trades != trades:
            self._after_trades(order.instr)

    def _submit(
        self,
        oid,
        instr,
        account,
        side,
        otype,
        tif,
        price,
        qty,
        display,
        stop_price,
        expire_ts,
        post_only,
        stp,
    ) -> None:
        if not 0 <= instr < self.n_instruments:
            return self._emit(REJECT, oid, 0, price, qty, 0, 0, R_UNKNOWN_BOOK_INSTRUMENT)
        if oid < 0:
            return self._emit(REJECT, oid, 0, price, qty, 0, 0, R_UNKNOWN_BOOK_ORDER)
        if oid in self._orders:
            return self._emit(REJECT, oid, 0, price, qty, 0, 0, R_DUPLICATE_BOOK_ORDER)
        order = _Order(
            oid,
            instr,
            account,
            side,
            otype,
            tif,
            price,
            qty,
            0,
            display,
            stop_price,
            expire_ts,
            post_only,
            stp,
        )
        order.refresh_visible()
        if otype in (STOP, STOP_LIMIT):
            last = self._instruments[instr].last
            if last > 0 and _stop_holds(side, last, stop_price):
                return self._take(order, fresh=True, trigger_now=True)
            if len(self._orders) >= self.max_orders:
                return self._emit(REJECT, oid, 0, price, qty, 0, 0, R_BOOK_FULL)
            order.pending = True
            self._add_live(order)
            self._instruments[instr].stops[oid] = order
            self._emit(PENDING_STOP, oid, 0, stop_price, qty, qty, 0, 0)
            return
        self._take(order, fresh=True, trigger_now=False)

    def _add_live(self, order: _Order) -> None:
        self._orders[order.oid] = order
        self.peak_live = max(self.peak_live, len(self._orders))
        if order.tif == GTD:
            heapq.heappush(self._expiries, (order.expire_ts, order.oid))

    def _crosses(self, book: _Instrument, side: int, price: int, is_market: bool) -> bool:
        best = book.best(1 - side)
        if best == 0:
            return False
        return is_market or (best <= price if side == BUY else best >= price)

    def _level_room(self, book: _Instrument, side: int, price: int) -> bool:
        levels = book.sides[side]
        return len(levels) < self.max_levels or price in levels

    def _take(self, o: _Order, fresh: bool, trigger_now: bool) -> None:
        """Process an order as a taker: checks, FOK dry run, matching, then rest or cancel."""
        book = self._instruments[o.instr]
        is_market = _is_market(o.otype)
        can_rest = not is_market and o.tif not in (IOC, FOK)
        crosses = self._crosses(book, o.side, o.price, is_market)
        reason = 0
        if can_rest and fresh and len(self._orders) >= self.max_orders:
            reason = R_BOOK_FULL
        elif o.post_only and crosses and not is_market:
            reason = R_POST_ONLY_WOULD_CROSS
        elif can_rest and not self._level_room(book, o.side, o.price):
            reason = R_PRICE_LEVELS_FULL
        if reason:
            if fresh:
                self._emit(REJECT, o.oid, 0, o.price, o.leaves, 0, 0, reason)
            else:
                self._emit(CANCEL, o.oid, 0, o.price, o.leaves, 0, 0, reason)
                del self._orders[o.oid]
            return
        if trigger_now:
            self._emit(TRIGGER, o.oid, 0, book.last, o.leaves, o.leaves, 0, 0)
        if o.tif == FOK and not self._fok_fillable(book, o, is_market):
            self._emit(CANCEL, o.oid, 0, o.price, o.leaves, 0, 0, R_FOK_NOT_FILLABLE)
            self._orders.pop(o.oid, None)
            return
        why = 0
        if crosses:
            why = self._match(book, o, is_market)
        if o.leaves == 0:
            self._orders.pop(o.oid, None)
            return
        if why == 0:
            if is_market:
                why = R_NO_LIQUIDITY
            elif o.tif == IOC:
                why = R_IOC_REMAINDER
            elif o.tif == FOK:
                why = R_FOK_NOT_FILLABLE
        if why:
            self._emit(CANCEL, o.oid, 0, o.price, o.leaves, 0, 0, why)
            self._orders.pop(o.oid, None)
            return
        o.refresh_visible()
        o.pending = False
        if fresh:
            self._add_live(o)
        self._rest(book, o)
        self._emit(REST, o.oid, 0, o.price, o.leaves, o.leaves, 0, 0)

    def _rest(self, book: _Instrument, o: _Order) -> None:
        levels = book.sides[o.side]
        if o.price not in levels:
            levels[o.price] = OrderedDict()
        levels[o.price][o.oid] = o
        self._resting += 1

    def _unrest(self, o: _Order) -> None:
        levels = self._instruments[o.instr].sides[o.side]
        queue = levels[o.price]
        del queue[o.oid]
        if not queue:
            del levels[o.price]
        self._resting -= 1

    def _fok_fillable(self, book: _Instrument, o: _Order, is_market: bool) -> bool:
        """Dry run in priority order, honouring STP and the match limit; touches nothing."""
        avail = 0
        counted = 0
        for price, queue in book.levels_best_first(1 - o.side):
            if not is_market and (price > o.price if o.side == BUY else price < o.price):
                return False
            for maker in queue.values():
                if counted >= self.max_fills:
                    return False
                counted += 1
                if o.stp != STP_NONE and maker.account == o.account:
                    if o.stp != STP_CANCEL_RESTING:
                        return False
                    continue
                avail += maker.leaves
                if avail >= o.leaves:
                    return True
        return False

    def _match(self, book: _Instrument, o: _Order, is_market: bool) -> int:
        """Walk the opposite side while it crosses; returns the stop reason or 0."""
        opp = book.sides[1 - o.side]
        touches = 0
        while o.leaves > 0 and opp:
            price, queue = opp.peekitem(0 if o.side == BUY else -1)
            if not is_market and (price > o.price if o.side == BUY else price < o.price):
                break
            while o.leaves > 0 and queue:
                if touches >= self.max_fills:
                    return R_MATCH_LIMIT_REACHED
                touches += 1
                maker = next(iter(queue.values()))
                if o.stp != STP_NONE and maker.account == o.account:
                    if o.stp == STP_CANCEL_INCOMING:
                        return R_SELF_TRADE_PREVENTED
                    self._emit(
                        CANCEL, maker.oid, 0, price, maker.leaves, 0, 0, R_SELF_TRADE_PREVENTED
                    )
                    self._unrest(maker)
                    del self._orders[maker.oid]
                    if o.stp == STP_CANCEL_BOTH:
                        return R_SELF_TRADE_PREVENTED
                    continue
                q = min(o.leaves, maker.visible)
                o.leaves -= q
                maker.leaves -= q
                maker.visible -= q
                book.last = price
                self._trades += 1
                self._traded_qty += q
                self._emit(TRADE, o.oid, maker.oid, price, q, o.leaves, maker.leaves, 0)
                if maker.leaves == 0:
                    self._unrest(maker)
                    del self._orders[maker.oid]
                elif maker.visible == 0:
                    maker.refresh_visible()  # a new peak, at the back of the queue
                    queue.move_to_end(maker.oid)
        return 0

    def _after_trades(self, instr: int) -> None:
        """The stop cascade: trigger the first qualifying pending stop until none qualifies."""
        book = self._instruments[instr]
        while book.stops:
            first = next(
                (s for s in book.stops.values() if _stop_holds(s.side, book.last, s.stop_price)),
                None,
            )
            if first is None:
                return
            del book.stops[first.oid]
            first.pending = False
            self._emit(TRIGGER, first.oid, 0, book.last, first.leaves, first.leaves, 0, 0)
            self._take(first, fresh=False, trigger_now=False)

    def _cancel(self, oid: int) -> None:
        order = self._orders.get(oid)
        if order is None:
            return self._emit(CANCEL_REJECT, oid, 0, 0, 0, 0, 0, R_UNKNOWN_BOOK_ORDER)
        self._remove(order, CANCEL, R_CANCEL_REQUESTED)

    def _remove(self, o: _Order, etype: int, reason: int) -> None:
        if o.pending:
            del self._instruments[o.instr].stops[o.oid]
        else:
            self._unrest(o)
        del self._orders[o.oid]
        self._emit(etype, o.oid, 0, o.price, o.leaves, 0, 0, reason)

    def _modify(self, oid: int, new_price: int, new_leaves: int) -> None:
        o = self._orders.get(oid)
        if o is None:
            return self._emit(
                MODIFY_REJECT, oid, 0, new_price, new_leaves, 0, 0, R_UNKNOWN_BOOK_ORDER
            )
        if o.pending:
            o.price, o.leaves = new_price, new_leaves
            o.refresh_visible()
            return self._emit(REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 1)
        book = self._instruments[o.instr]
        if new_price == o.price and new_leaves <= o.leaves:
            o.leaves = new_leaves
            o.visible = min(o.visible, new_leaves)
            return self._emit(REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 1)
        crosses = self._crosses(book, o.side, new_price, False)
        if crosses and o.post_only:
            return self._emit(
                MODIFY_REJECT, oid, 0, new_price, new_leaves, 0, 0, R_POST_ONLY_WOULD_CROSS
            )
        if (
            new_price != o.price
            and len(book.sides[o.side][o.price]) > 1
            and not self._level_room(book, o.side, new_price)
        ):
            return self._emit(
                MODIFY_REJECT, oid, 0, new_price, new_leaves, 0, 0, R_PRICE_LEVELS_FULL
            )
        self._unrest(o)
        o.price, o.leaves = new_price, new_leaves
        o.refresh_visible()
        self._emit(REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 0)
        if not crosses:
            return self._rest(book, o)
        why = self._match(book, o, False)
        if o.leaves == 0:
            del self._orders[oid]
        elif why:
            self._emit(CANCEL, oid, 0, new_price, o.leaves, 0, 0, why)
            del self._orders[oid]
        else:
            o.refresh_visible()
            self._rest(book, o)
            self._emit(REST, oid, 0, new_price, o.leaves, o.leaves, 0, 0)

    def _mass_cancel(self, instr: int, account: int, side: int) -> None:
        victims = sorted(
            o.oid
            for o in self._orders.values()
            if (instr < 0 or o.instr == instr)
            and (account < 0 or o.account == account)
            and (side < 0 or o.side == side)
        )
        for oid in victims:
            self._remove(self._orders[oid], CANCEL, R_MASS_CANCEL)

    def _end_of_day(self) -> None:
        for oid in sorted(o.oid for o in self._orders.values() if o.tif == DAY):
            self._remove(self._orders[oid], EXPIRE, R_END_OF_DAY)

    def _live_expiry(self, ts: int, oid: int) -> _Order | None:
        o = self._orders.get(oid)
        if o is not None and o.tif == GTD and o.expire_ts == ts:
            return o
        return None

    def _expire(self, now: int) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            ts, oid = heapq.heappop(heap)
            o = self._live_expiry(ts, oid)
            if o is not None:
                self._remove(o, EXPIRE, R_GTD_EXPIRED)

    # -- QUERIES ---------------------------------------------------------------------------------

    def best_bid(self, instr: int) -> int:
        """Best bid price, 0 if none. O(1)."""
        return self._instruments[instr].best(BUY)

    def best_ask(self, instr: int) -> int:
        """Best ask price, 0 if none. O(1)."""
        return self._instruments[instr].best(1 - BUY)

    def depth(self, instr: int, side: int, n: int) -> list[tuple[int, int, int]]:
        """Up to n levels, best first: (price, total leaves incl. hidden, order count). O(n·k)."""
        out = []
        for price, queue in self._instruments[instr].levels_best_first(side):
            if len(out) >= n:
                break
            out.append((price, sum(o.leaves for o in queue.values()), len(queue)))
        return out

    def order(self, oid: int) -> OrderView | None:
        """The live order (resting or pending stop) with this oid, or None. O(1)."""
        o = self._orders.get(oid)
        if o is None:
            return None
        return OrderView(
            o.instr,
            o.account,
            o.side,
            o.price,
            o.leaves,
            o.visible,
            o.display,
            o.otype,
            o.tif,
            o.pending,
            o.stop_price,
            o.expire_ts,
        )

    def resting_orders(self) -> int:
        """Orders working in price levels (pending stops excluded). O(1)."""
        return self._resting

    def pending_stops(self) -> int:
        """Un-triggered stop orders. O(1)."""
        return len(self._orders) - self._resting

    def last_price(self, instr: int) -> int:
        """Last trade price, 0 if none yet. O(1)."""
        return self._instruments[instr].last

    def next_expiry(self) -> int:
        """Earliest expire_ts of a live GTD order, 0 if none. O(1) amortised."""
        heap = self._expiries
        while heap:
            ts, oid = heap[0]
            if self._live_expiry(ts, oid) is not None:
                return ts
            heapq.heappop(heap)
        return 0

    def stats(self) -> dict[str, int]:
        """Cumulative trade count and traded quantity since construction. O(1)."""
        return {"trades": self._trades, "traded_qty": self._traded_qty}

    # -- SNAPSHOTS -------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The logical state in the format ``NumbaBook.dump`` writes. O(N)."""
        from engine.book import encode_dump

        return encode_dump(np.array(self._canonical(), dtype=np.int64), self._trades, self._traded_qty)

    def load(self, data: bytes) -> None:
        """Rebuild this (empty) book from either book's ``dump()``. O(N log L)."""
        from engine.book import decode_dump

        if self._orders:
            raise ValueError("load() needs an empty book")
        vec, self._trades, self._traded_qty = decode_dump(data)
        v = vec.tolist()
        w = 0
        while w < len(v):
            instr, last, n_buy, n_sell, n_stop = v[w:w + 5]
            w += 5
            book = self._instruments[instr]
            book.last = last
            for side, nlev in ((BUY, n_buy), (1 - BUY, n_sell)):
                for _ in range(nlev):
                    price, _qty, count = v[w:w + 3]
                    w += 3
                    queue = book.sides[side].setdefault(price, OrderedDict())
                    for _ in range(count):
                        o = self._order_from(v[w:w + 13], instr)
                        w += 13
                        queue[o.oid] = o
                        self._add_live(o)
                        self._resting += 1
            for _ in range(n_stop):
                o = self._order_from(v[w:w + 13], instr)
                o.pending = True
                w += 13
                book.stops[o.oid] = o
                self._add_live(o)

    @staticmethod
    def _order_from(f: list[int], instr: int) -> _Order:
        oid, account, side, price, leaves, visible, display, otype, tif, stop, expire, post, stp = f
        return _Order(oid, instr, account, side, otype, tif, price, leaves, visible, display,
                      stop, expire, post, stp)

    def _canonical(self) -> list[int]:
        out: list[int] = []
        for i, book in enumerate(self._instruments):
            out += [i, book.last, len(book.sides[BUY]), len(book.sides[1 - BUY]), len(book.stops)]
            for side in (BUY, 1 - BUY):
                for price, queue in book.levels_best_first(side):
                    out += [price, sum(o.leaves for o in queue.values()), len(queue)]
                    for o in queue.values():
                        out += o.canonical()
            for o in book.stops.values():
                out += o.canonical()
        return out

    def state_hash(self) -> str:
        """blake2b hex digest of the canonical live state (same as NumbaBook's). O(N)."""
        vec = np.array(self._canonical(), dtype="<i8")
        return hashlib.blake2b(vec.tobytes(), digest_size=16).hexdigest()

    def validate(self) -> None:
        """Check every invariant; raises AssertionError saying which and where. O(N)."""
        linked: set[int] = set()
        resting = 0
        for i, book in enumerate(self._instruments):
            for side in (BUY, 1 - BUY):
                levels = book.sides[side]
                assert len(levels) <= self.max_levels, f"instr {i} side {side}: too many levels"
                for price, queue in levels.items():
                    assert queue, f"instr {i} side {side}: empty level {price} kept"
                    for oid, o in queue.items():
                        where = f"oid {oid} at instr {i} side {side} px {price}"
                        assert o.oid == oid and oid not in linked, f"{where}: linked twice"
                        assert self._orders.get(oid) is o, f"{where}: not in the order map"
                        assert not o.pending, f"{where}: resting order marked pending"
                        assert o.instr == i and o.side == side and o.price == price, where
                        assert o.leaves > 0, f"{where}: leaves {o.leaves} <= 0"
                        cap = min(o.display, o.leaves) if o.display > 0 else o.leaves
                        assert 0 < o.visible <= cap, f"{where}: visible {o.visible} > {cap}"
                        linked.add(oid)
                        resting += 1
            bid, ask = book.best(BUY), book.best(1 - BUY)
            assert not (bid and ask and bid >= ask), f"instr {i}: crossed book {bid} >= {ask}"
            for oid, o in book.stops.items():
                assert o.pending and oid not in linked, f"stop oid {oid}: bad state"
                assert self._orders.get(oid) is o and o.instr == i, f"stop oid {oid}: bad map"
                linked.add(oid)
        assert resting == self._resting, f"resting count {self._resting} != {resting}"
        assert linked == set(self._orders), "order map holds orders not linked in the book"
        assert len(self._orders) <= self.max_orders, "more live orders than max_orders"
        entries = set(self._expiries)
        for o in self._orders.values():
            if o.tif == GTD:
                assert (o.expire_ts, o.oid) in entries, f"GTD oid {o.oid} has no expiry entry"
