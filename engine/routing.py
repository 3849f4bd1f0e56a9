"""Smart order routing: where a parent order's lots go, and the child orders that carry them.

``Router`` is engine state, a fold over journaled inputs only — venue quotes (``VenueQuote``),
venue sessions (``VenueSessionChanged``) and the child orders it created — so replay routes
exactly as the live run did. The pipeline calls it at stage 6 for an order whose ``route`` is
``"SOR"`` (or a venue's MIC, for direct routing) and applies what it returns.

The rule, for a parent of ``q`` lots (``SOR``)
-----------------------------------------------
A venue is **up-and-listed** for an instrument when its session is up and it lists the
instrument; its quote is **live** when it is not older than ``stale_after_ns`` at the command's
time (``ts``) and shows a price and a size on the side in question.

1. **Internal cross first.** The parent trades against opposite client orders in Kilat's own book
   at a price no worse than the venues' best: ``cross_limit`` is the best live opposite quote over
   the up-and-listed venues (lowest ask for a buy), capped by the parent's limit; with no live
   quote it is the parent's limit (a market parent with no quote crosses at any price).
2. **Split by price and displayed size.** What is left goes to the up-and-listed venues with a
   live opposite quote within the limit, best price first (ties: larger displayed size, then the
   config's venue order), each taking up to its displayed size.
3. **The rest** (beyond every displayed size) joins the first venue of step 2; with none, the
   venue with the best live quote on the parent's own side (it joins that book's best), else the
   first up-and-listed venue in config order. With no up-and-listed venue at all nothing is
   routed: the pipeline rests the order in Kilat's own book.

Each child carries the parent's limit (a market parent sends market children), so a venue fills
it as deep as the limit allows. A child the venue rejects, or ends on its own, is re-planned with
the same rule over the venues that have not refused this parent; with none left, the parent is
canceled once its other children are done.

Costs: ``plan`` is O(venues log venues); quotes and sessions O(1); child lookups O(1).
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np

from engine.constants import BUY
from engine.model import ReferenceData

#: Child order states (the venue's view, as its reports told it).
PENDING_NEW, NEW, FILLED, CANCELED, REJECTED = "PendingNew", "New", "Filled", "Canceled", "Rejected"
_DONE = frozenset({FILLED, CANCELED, REJECTED})


class ChildOrder(msgspec.Struct, gc=False):
    """One child order at one venue."""

    child_id: int
    parent_id: int
    venue: str
    qty: int
    price: int  # 0: market
    cum_qty: int = 0
    notional: int = 0  # Σ fill price × qty, tick·lots
    status: str = PENDING_NEW
    venue_order_id: str = ""
    cancel_requested: bool = False

    @property
    def leaves_qty(self) -> int:
        return 0 if self.status in _DONE else self.qty - self.cum_qty

    @property
    def done(self) -> bool:
        return self.status in _DONE


class VenueRow(msgspec.Struct, frozen=True):
    """A venue's state for queries and ``kilat top``."""

    venue: str
    up: bool
    working_children: int
    working_lots: int
    fills_today: int


class _RouterState(msgspec.Struct):
    up: list[bool]
    quotes: list[tuple[int, int, list[int]]]  # (venue, instrument, [bid, bid_size, ask, ask_size, ts])
    children: list[ChildOrder]
    refused: list[tuple[int, list[str]]]
    ending: list[tuple[int, int, str]]  # parent -> (code, reason) once its rest cannot be placed
    fills: list[tuple[str, str, int]]  # (venue, venue exec id, Kilat exec id), today
    next_child_id: int


_Q_BID, _Q_BID_SIZE, _Q_ASK, _Q_ASK_SIZE, _Q_TS = range(5)


class Router:
    """Venue quotes and sessions, the child orders of routed parents, and the routing rule."""

    def __init__(self, ref: ReferenceData, venues: list[tuple[str, list[str]]], stale_after_ns: int):
        if stale_after_ns <= 0:
            raise ValueError(f"stale_after_ns: expected a positive number of ns, got {stale_after_ns}")
        self.ref = ref
        self.venues = [mic for mic, _ in venues]
        self.venue_index = {mic: v for v, mic in enumerate(self.venues)}
        if len(self.venue_index) != len(self.venues):
            raise ValueError(f"venues: each MIC once, got {self.venues}")
        n_v, n_i = len(self.venues), len(ref.by_index)
        self.listed = np.zeros((n_v, n_i), dtype=np.bool_)
        for v, (mic, symbols) in enumerate(venues):
            for symbol in symbols or [inst.symbol for inst in ref.by_index]:
                inst = ref.instruments.get(symbol)
                if inst is None:
                    raise ValueError(f"venue {mic} lists unknown instrument {symbol!r}")
                self.listed[v, inst.index] = True
        self.stale_after_ns = stale_after_ns
        self.quotes = np.zeros((n_v, n_i, 5), dtype=np.int64)
        self.up = [False] * n_v
        self.children: dict[int, ChildOrder] = {}
        self.by_parent: dict[int, list[int]] = {}
        self.refused: dict[int, set[str]] = {}  # parent -> venues that rejected one of its children
        self.ending: dict[int, tuple[int, str]] = {}  # parent -> why its unplaced rest is canceled
        self.fills: dict[tuple[str, str], int] = {}  # (venue, venue exec id) -> Kilat exec id
        self.next_child_id = 1

    # -- INPUTS --

    def on_quote(self, venue: str, instrument: int, bid: int, bid_size: int, ask: int,
                 ask_size: int, ts: int) -> None:
        """O(1)."""
        self.quotes[self.venue_index[venue], instrument] = (bid, bid_size, ask, ask_size, ts)

    def on_session(self, venue: str, up: bool) -> None:
        """O(1). A venue going down keeps its children (they are marked by ``is_up``)."""
        self.up[self.venue_index[venue]] = up

    # -- THE RULE --

    def cross_limit(self, instrument: int, side: int, limit: int, ts: int) -> int:
        """The price the parent may cross at internally (step 1); ``limit`` 0 is a market order,
        and 0 back means "any price". O(venues)."""
        best = self._best(instrument, side, ts, opposite=True, exclude=())
        if best is None:
            return limit
        price = int(self.quotes[best, instrument, _Q_ASK if side == BUY else _Q_BID])
        if not limit:
            return price
        return min(limit, price) if side == BUY else max(limit, price)

    def plan(self, instrument: int, side: int, qty: int, limit: int, ts: int,
             exclude: set[str] | frozenset = frozenset(), only: str = "") -> list[tuple[str, int]]:
        """(venue, lots) children for ``qty`` lots (steps 2-3), at most one per venue; [] when no
        venue is up and lists the instrument. ``only`` restricts to one venue (direct routing).
        O(venues log venues)."""
        eligible = [v for v in range(len(self.venues))
                    if self.up[v] and self.listed[v, instrument] and self.venues[v] not in exclude
                    and (not only or self.venues[v] == only)]
        if not eligible:
            return []
        px, size = (_Q_ASK, _Q_ASK_SIZE) if side == BUY else (_Q_BID, _Q_BID_SIZE)
        levels = []
        for v in eligible:
            q = self.quotes[v, instrument]
            price, shown = int(q[px]), int(q[size])
            if price and shown > 0 and ts - int(q[_Q_TS]) <= self.stale_after_ns and self._within(side, price, limit):
                levels.append((price if side == BUY else -price, -shown, v))
        levels.sort()
        out: dict[int, int] = {}
        left = qty
        for _, neg_size, v in levels:
            if not left:
                break
            take = min(left, -neg_size)
            out[v] = take
            left -= take
        if left:
            if levels:
                home = levels[0][2]
            else:
                home = self._best(instrument, side, ts, opposite=False, exclude=exclude, among=eligible)
                home = eligible[0] if home is None else home
            out[home] = out.get(home, 0) + left
        return [(self.venues[v], n) for v, n in out.items()]

    # -- CHILD ORDERS --

    def add_child(self, parent_id: int, venue: str, qty: int, price: int) -> ChildOrder:
        """A new child (PendingNew until the venue acknowledges it). O(1)."""
        child = ChildOrder(self.next_child_id, parent_id, venue, qty, price)
        self.next_child_id += 1
        self.children[child.child_id] = child
        self.by_parent.setdefault(parent_id, []).append(child.child_id)
        return child

    def working(self, parent_id: int) -> list[ChildOrder]:
        """The parent's children still working at their venues. O(children of the parent)."""
        return [self.children[c] for c in self.by_parent.get(parent_id, ()) if not self.children[c].done]

    def is_routed(self, parent_id: int) -> bool:
        """O(1)."""
        return parent_id in self.by_parent

    def is_up(self, venue: str) -> bool:
        return self.up[self.venue_index[venue]]

    def end_of_day(self, live_parents) -> None:
        """Forget finished parents' children and the day's execution ids. O(children)."""
        keep = {p for p in self.by_parent if p in live_parents}
        self.children = {c: ch for c, ch in self.children.items() if ch.parent_id in keep}
        self.by_parent = {p: ids for p, ids in self.by_parent.items() if p in keep}
        self.refused = {p: v for p, v in self.refused.items() if p in keep}
        self.ending = {p: v for p, v in self.ending.items() if p in keep}
        self.fills.clear()

    # -- QUERIES --

    def venue_rows(self) -> list[VenueRow]:
        """Each venue's session and working children. O(children)."""
        working = [0] * len(self.venues)
        lots = [0] * len(self.venues)
        for child in self.children.values():
            if not child.done:
                v = self.venue_index[child.venue]
                working[v] += 1
                lots[v] += child.leaves_qty
        fills = [0] * len(self.venues)
        for venue, _ in self.fills:
            fills[self.venue_index[venue]] += 1
        return [VenueRow(mic, self.up[v], working[v], lots[v], fills[v]) for v, mic in enumerate(self.venues)]

    def validate(self) -> None:
        """Children agree with their parents' lists and their own counts. O(children)."""
        for parent, ids in self.by_parent.items():
            for c in ids:
                child = self.children[c]
                assert child.parent_id == parent, f"child {c} listed under {parent}"
                assert 0 <= child.cum_qty <= child.qty, f"child {c}: {child.cum_qty} of {child.qty}"
        assert len(self.children) == sum(len(ids) for ids in self.by_parent.values())
        assert all(c < self.next_child_id for c in self.children)

    # -- SNAPSHOTS --

    def dump(self) -> bytes:
        """The router's state as msgpack, canonical. O(children + quotes)."""
        nz = np.argwhere(self.quotes.any(axis=2)).tolist()
        state = _RouterState(
            up=list(self.up),
            quotes=[(v, i, self.quotes[v, i].tolist()) for v, i in nz],
            children=[self.children[c] for c in sorted(self.children)],
            refused=sorted((p, sorted(v)) for p, v in self.refused.items()),
            ending=sorted((p, code, why) for p, (code, why) in self.ending.items()),
            fills=sorted((v, e, x) for (v, e), x in self.fills.items()),
            next_child_id=self.next_child_id,
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        s = msgspec.msgpack.decode(data, type=_RouterState)
        if len(s.up) > len(self.venues):
            raise ValueError(f"the snapshot has {len(s.up)} venues, the config {len(self.venues)}")
        self.up = list(s.up) + [False] * (len(self.venues) - len(s.up))
        self.quotes[:] = 0
        for v, i, q in s.quotes:
            self.quotes[v, i] = q
        self.children = {c.child_id: c for c in s.children}
        self.by_parent = {}
        for c in s.children:
            self.by_parent.setdefault(c.parent_id, []).append(c.child_id)
        self.refused = {p: set(v) for p, v in s.refused}
        self.ending = {p: (code, why) for p, code, why in s.ending}
        self.fills = {(v, e): x for v, e, x in s.fills}
        self.next_child_id = s.next_child_id

    def state_hash(self) -> bytes:
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    # -- INTERNALS --

    def _within(self, side: int, price: int, limit: int) -> bool:
        return not limit or (price <= limit if side == BUY else price >= limit)

    def _best(self, instrument: int, side: int, ts: int, opposite: bool, exclude, among=None) -> int | None:
        """The up-and-listed venue with the best live quote on one side, or None."""
        own = (_Q_BID, _Q_BID_SIZE) if side == BUY else (_Q_ASK, _Q_ASK_SIZE)  # the parent's side
        other = (_Q_ASK, _Q_ASK_SIZE) if side == BUY else (_Q_BID, _Q_BID_SIZE)
        px, size = other if opposite else own
        lowest = (side == BUY) == opposite  # asks: lowest is best; bids: highest
        best, best_px = None, 0
        for v in among if among is not None else range(len(self.venues)):
            if not (self.up[v] and self.listed[v, instrument]) or self.venues[v] in exclude:
                continue
            q = self.quotes[v, instrument]
            price = int(q[px])
            if not price or q[size] <= 0 or ts - int(q[_Q_TS]) > self.stale_after_ns:
                continue
            if best is None or (price < best_px if lowest else price > best_px):
                best, best_px = v, price
        return best
