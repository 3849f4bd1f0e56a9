"""Kilat's side of its venues and price feeds, for the service's loop.

``VenueLink`` owns the venue gateway (``gateways.venues.VenueGateway``, the ROUTER venue adapters
connect to) and the feed handler (``gateways.feed.FeedHandler``, SUB to every venue's feed and to
``feeds.endpoints``). Each loop turn the service asks it for ``inputs(now)``: engine records to
journal and apply, in this order —

- a consolidated ``PriceTick`` per instrument whose marks moved (conflated: one per turn however
  many quotes arrived), and a ``VenueQuote`` per venue whose own best bid or offer moved — or
  every half stale window while the venue keeps it live, since the smart order router judges
  staleness on journaled times;
- the venues' reports, translated (``ChildFilled`` -> ``VenueFilled`` …), in each venue's seq order;
- the gateway's session events: ``VenueSessionChanged`` for a logon or a silent venue, and the
  reconciliation after a logon (fills Kilat never heard become ``VenueFilled``; child orders the
  engine holds open that the venue does not become ``VenueCanceled``, which re-routes them;
  orders the venue works that Kilat does not know are canceled at the venue).

After the batch is durable, ``send(events)`` turns the pipeline's ``ChildOrderRouted`` and
``ChildCancelRequested`` into ``NewChildOrder`` and ``CancelChildOrder`` for the gateway, which
numbers them (a venue that is down gets them when it logs on again).

Every input is stamped with the loop's arrival time and Kilat's own user, so replay needs none of
this: the journal holds what the engine saw. After a restart the gateway starts afresh; the
venue's logon carries its numbering (the gateway continues from it), resent reports are
de-duplicated by the engine (a venue execution id is applied once) and the reconciliation closes
what remains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from engine.constants import LIMIT, MARKET, TimeInForce
from engine.messages import (
    ChildCancelRequested,
    ChildOrderRouted,
    PriceTick,
    VenueAccepted,
    VenueCanceled,
    VenueFilled,
    VenueQuote,
    VenueRejected,
    VenueSessionChanged,
    VenueTradeBust,
    VenueTradeCorrection,
)
from engine.model import SYSTEM_USER, ReferenceData
from engine.pipeline import reason_text
from engine.routing import Router
from gateways.feed import U_ASK, U_BID, U_INSTRUMENT, U_LAST, FeedHandler
from gateways.venue_messages import (
    CancelChildOrder,
    ChildAccepted,
    ChildCanceled,
    ChildFilled,
    ChildRejected,
    NewChildOrder,
    SessionState,
    StatusReport,
    TradeBust,
    TradeCorrection,
    VenueDown,
    VenueReconciled,
    VenueUp,
)
from gateways.venues import VenueGateway
from kilat.config import KilatConfig

log = logging.getLogger("kilat.venues")

Configure = Callable[[zmq.Socket], None]


class VenueLink:
    """The venue gateway and the feed handler, driven one loop turn at a time (no thread)."""

    def __init__(self, config: KilatConfig, ref: ReferenceData, router: Router | None, *,
                 venue_endpoint: str | None = None, context: zmq.Context | None = None,
                 venue_configure: Configure | None = None, user_of=None,
                 feed_configure: Configure | None = None,
                 feed_server_key: Callable[[str], bytes] | None = None):
        self.ref, self.router = ref, router
        mics = [v.mic for v in config.venues]
        self.gateway = (VenueGateway(venue_endpoint or config.server.venue_endpoint, mics,
                                     heartbeat_ms=min(v.heartbeat_ms for v in config.venues),
                                     context=context, configure=venue_configure, user_of=user_of)
                        if mics else None)
        # (publisher name, endpoint): a venue's feed proves the venue's key, an external one "feed"
        endpoints = [(v.mic, v.feed_endpoint) for v in config.venues if v.feed_endpoint]
        endpoints += [("feed", e) for e in config.feeds.endpoints]
        self.feeds = None
        if endpoints:
            self.feeds = FeedHandler(ref, [], stale_after_ns=config.feeds.stale_after_ms * 1_000_000,
                                     context=context, configure=feed_configure)
            for name, endpoint in endpoints:
                if feed_server_key is not None:  # CURVE: each publisher is its own server
                    self.feeds.socket.setsockopt(zmq.CURVE_SERVERKEY, feed_server_key(name))
                self.feeds.connect(endpoint)
        self.max_ticks = config.feeds.max_ticks_per_turn
        self._mics = set(mics)
        every = [inst.symbol for inst in ref.by_index]
        self._venue_symbols = sorted({s for v in config.venues for s in (v.instruments or every)})
        self._refresh_ns = config.feeds.stale_after_ms * 1_000_000 // 2
        # (venue, symbol) -> (the last VenueQuote journaled, when)
        self._quoted: dict[tuple[str, str], tuple[tuple[int, int, int, int], int]] = {}

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [s.socket for s in (self.gateway, self.feeds) if s is not None]

    def readable(self) -> bool:
        """Whether a socket has something to read (ZeroMQ's descriptors are edge-triggered)."""
        return any(s.getsockopt(zmq.EVENTS) & zmq.POLLIN for s in self.sockets)

    # -- INPUTS: what the engine journals this turn --

    def inputs(self, now: int) -> list:
        out: list = []
        if self.feeds is not None:
            self._prices(now, out)
        if self.gateway is not None:
            for mic, message in self.gateway.poll(1024):
                self._report(mic, message, now, out)
            for event in self.gateway.timers(now):
                self._session(event, now, out)
        return out

    def _prices(self, now: int, out: list) -> None:
        feeds, by_index = self.feeds, self.ref.by_index
        feeds.poll(self.max_ticks, now)
        for row in feeds.take_updates(now).tolist():
            symbol = by_index[int(row[U_INSTRUMENT])].symbol
            out.append(PriceTick(symbol, row[U_BID], row[U_ASK], row[U_LAST], now, SYSTEM_USER))
        for symbol in self._venue_symbols:  # a venue's own quote may move the marks or not
            for q in feeds.venue_quotes(symbol, now):
                if q.source not in self._mics or q.stale:
                    continue
                key, value = (q.source, symbol), (q.bid, q.bid_size, q.ask, q.ask_size)
                last = self._quoted.get(key)
                # journaled when it changes, and again while the venue keeps it live, so the
                # router (which judges staleness on journaled times) does not age a quiet quote
                if last is None or last[0] != value or now - last[1] >= self._refresh_ns:
                    self._quoted[key] = (value, now)
                    out.append(VenueQuote(q.source, symbol, *value, now, SYSTEM_USER))

    def _report(self, mic: str, m, now: int, out: list) -> None:
        kind, user = type(m), SYSTEM_USER
        if kind is ChildAccepted:
            out.append(VenueAccepted(mic, m.child_id, m.venue_order_id, now, user))
        elif kind is ChildFilled:
            out.append(VenueFilled(mic, m.child_id, m.exec_id, m.qty, m.price, now, user))
        elif kind is ChildRejected:
            out.append(VenueRejected(mic, m.child_id, m.code, m.text, now, user))
        elif kind is ChildCanceled:
            out.append(VenueCanceled(mic, m.child_id, m.leaves, reason_text(m.reason), now, user))
        elif kind is TradeBust:
            out.append(VenueTradeBust(mic, m.exec_id, m.reason, now, user))
        elif kind is TradeCorrection:
            out.append(VenueTradeCorrection(mic, m.exec_id, m.qty, m.price, m.reason, now, user))
        elif kind is SessionState:
            out.append(VenueSessionChanged(mic, m.state == "open", f"session {m.state}", now, user))
        elif kind is StatusReport:
            self._reconcile(mic, m, now, out)
        else:  # replace results and cancel rejects: Kilat sends no replaces; a late cancel is moot
            log.info("venue %s: %s", mic, m)

    def _session(self, event, now: int, out: list) -> None:
        if type(event) is VenueUp:
            out.append(VenueSessionChanged(event.mic, True, "logged on", now, SYSTEM_USER))
        elif type(event) is VenueDown:
            out.append(VenueSessionChanged(event.mic, False, event.reason, now, SYSTEM_USER))
        elif type(event) is VenueReconciled:
            for fill in event.missing_fills:
                out.append(VenueFilled(event.mic, fill.child_id, fill.exec_id, fill.qty, fill.price, now,
                                       SYSTEM_USER))
            for child_id in event.missing_at_venue:
                out.append(VenueCanceled(event.mic, child_id, 0, "not open at the venue (reconciliation)",
                                         now, SYSTEM_USER))

    def _reconcile(self, mic: str, report: StatusReport, now: int, out: list) -> None:
        """What the gateway cannot know after Kilat's restart, from the engine's own children:
        their fills the venue reports, and those it does not hold open (children the gateway
        sent in this run are compared by the gateway itself: ``VenueReconciled``)."""
        if self.router is None:
            return
        children = self.router.children
        for fill in report.fills:
            child = children.get(fill.child_id)
            if not fill.busted and child is not None and child.venue == mic \
                    and (mic, fill.exec_id) not in self.router.fills:
                out.append(VenueFilled(mic, fill.child_id, fill.exec_id, fill.qty, fill.price, now, SYSTEM_USER))
        open_at_venue = {o.child_id for o in report.orders}
        known = set(self.gateway.open_children(mic))
        for child in children.values():
            if child.venue == mic and not child.done and child.child_id not in known \
                    and child.child_id not in open_at_venue:
                out.append(VenueCanceled(mic, child.child_id, child.leaves_qty,
                                         "not open at the venue (reconciliation)", now, SYSTEM_USER))
        for child_id in open_at_venue:
            child = children.get(child_id)
            if child is None or child.done:  # the venue works an order Kilat does not: stop it
                self.gateway.send(mic, CancelChildOrder(0, child_id, now))

    # -- OUTPUTS: after the batch is durable --

    def send(self, events: list) -> None:
        """Send the venues what the pipeline decided, in journal order."""
        gateway = self.gateway
        if gateway is None:
            return
        for e in events:
            kind = type(e)
            if kind is ChildOrderRouted:
                gateway.send(e.venue, NewChildOrder(0, e.child_id, e.symbol, e.side, e.qty, e.price,
                                                    LIMIT if e.price else MARKET, TimeInForce.DAY, e.ts))
            elif kind is ChildCancelRequested:
                gateway.send(e.venue, CancelChildOrder(0, e.child_id, e.ts))

    def close(self) -> None:
        for part in (self.gateway, self.feeds):
            if part is not None:
                part.close()
