"""The venue protocol: what Kilat and a venue adapter say to each other over the venue socket.

Kilat binds a ZeroMQ ROUTER (``server.venue_endpoint``); a venue adapter connects a DEALER and
every message is ONE frame: a msgpack array whose first element is the message's name (its tag),
then its fields in the order declared here. ``docs/venues.md`` explains the rules for someone
writing an adapter in another language.

Two kinds of message share one numbering per direction and per session:

- **sequenced** messages (child orders one way, execution reports and session state the other)
  take the next ``seq`` of their sender: 1, 2, 3, ... with no holes. The receiver delivers them
  in ``seq`` order exactly once, asks for a resend when it sees a hole and drops what it has
  already had.
- **session** messages (logon, heartbeats, resend requests, status requests and reports, errors)
  carry the sender's LAST sequenced ``seq`` without consuming one, exactly as a feed heartbeat
  does (``gateways.feed_messages``): hearing one tells the receiver whether it missed something.

Every message ends with ``ts``, the sender's clock in nanoseconds since the epoch. Prices are
int64 ticks and quantities int64 lots of the instrument (Kilat's reference data); ``child_id`` is
Kilat's id of the child order, unique per venue; ``exec_id`` is the venue's id of an execution,
unique per venue within the trading day.

One typed decoder per direction: ``VENUE_DECODER`` reads what a venue may send to Kilat,
``KILAT_DECODER`` what Kilat may send to a venue. A venue that sends a Kilat message (an order)
fails ``VENUE_DECODER`` by construction; ``KILAT_TAGS`` lets the gateway say so precisely.

The ``Venue*`` events at the end (``VenueUp``, ``VenueDown``, ``VenueReconciled``) never travel
on the socket: they are what ``gateways.venues.VenueGateway`` tells its caller (and what the
engine journals).
"""

from __future__ import annotations

import typing
from typing import Literal

import msgspec

from engine.constants import OrderType, Side, TimeInForce
from engine.messages import I64

_WIRE = {"frozen": True, "tag": True, "array_like": True, "gc": False}
_ROW = {"frozen": True, "array_like": True, "gc": False}

#: What ``SessionState.state`` may say.
SessionStateName = Literal["open", "halted", "closed"]


# -- KILAT -> VENUE: sequenced (child orders) ------------------------------------------------------


class NewChildOrder(msgspec.Struct, **_WIRE):
    """Work a new order. ``qty`` lots; ``price`` ticks (0 for MARKET)."""

    seq: I64
    child_id: I64
    symbol: str
    side: Side
    qty: I64
    price: I64
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY
    ts: I64 = 0


class CancelChildOrder(msgspec.Struct, **_WIRE):
    """Cancel what is left of a working child order."""

    seq: I64
    child_id: I64
    ts: I64 = 0


class ReplaceChildOrder(msgspec.Struct, **_WIRE):
    """Cancel/replace: ``qty`` is the new TOTAL quantity (fills included, as FIX OrderQty) and
    ``price`` the new limit price."""

    seq: I64
    child_id: I64
    qty: I64
    price: I64
    ts: I64 = 0


# -- KILAT -> VENUE: session --------------------------------------------------------------------


class LogonAccepted(msgspec.Struct, **_WIRE):
    """Kilat accepted the venue's logon. ``seq`` is Kilat's last sequenced seq to this venue
    (the venue asks for a resend if it has not had them all); ``next_expected`` the venue seq
    Kilat expects next; ``heartbeat_ms`` the interval both sides keep."""

    seq: I64
    mic: str
    session_id: str
    next_expected: I64
    heartbeat_ms: I64
    ts: I64 = 0


class LogonRejected(msgspec.Struct, **_WIRE):
    """Kilat refused the logon (unknown MIC, or a MIC this connection may not speak for)."""

    seq: I64
    mic: str
    code: I64
    text: str
    ts: I64 = 0


class StatusRequest(msgspec.Struct, **_WIRE):
    """Reconciliation: send a ``StatusReport`` with every open child order and the executions
    whose report had a seq above ``since_seq`` (0: every execution of the session)."""

    seq: I64
    request_id: I64
    since_seq: I64 = 0
    ts: I64 = 0


# -- VENUE -> KILAT: session ----------------------------------------------------------------------


class VenueLogon(msgspec.Struct, **_WIRE):
    """The first message on a connection: the venue names itself. ``seq`` is its last sequenced
    seq of the session (0: none yet); ``next_expected`` the Kilat seq it expects next;
    ``session_id`` names the trading session (a new id starts both numberings again at 1)."""

    seq: I64
    mic: str
    session_id: str
    next_expected: I64
    ts: I64 = 0


class OpenChildOrder(msgspec.Struct, **_ROW):
    """One working order in a ``StatusReport`` (an untagged array)."""

    child_id: I64
    venue_order_id: str
    symbol: str
    side: Side
    qty: I64
    price: I64
    leaves: I64
    cum: I64


class ExecutionRecord(msgspec.Struct, **_ROW):
    """One execution in a ``StatusReport`` (an untagged array): as it stands now, after any
    correction; ``busted`` if it was cancelled. ``seq`` is the seq of its ``ChildFilled``."""

    seq: I64
    exec_id: str
    child_id: I64
    qty: I64
    price: I64
    busted: bool = False


class StatusReport(msgspec.Struct, **_WIRE):
    """The answer to a ``StatusRequest``. ``next_expected`` is the Kilat seq the venue expects
    next when it wrote the report: Kilat messages below it are reflected here, the others were
    not yet processed."""

    seq: I64
    request_id: I64
    next_expected: I64
    orders: list[OpenChildOrder]
    fills: list[ExecutionRecord]
    ts: I64 = 0


# -- VENUE -> KILAT: sequenced (execution reports, session state) ----------------------------------


class ChildAccepted(msgspec.Struct, **_WIRE):
    """The venue took the order; ``venue_order_id`` is its own id for it."""

    seq: I64
    child_id: I64
    venue_order_id: str
    ts: I64 = 0


class ChildRejected(msgspec.Struct, **_WIRE):
    """The venue refused a new order. ``code`` is a ``RejectCode`` (5xxx venue, or the 4xxx
    matching code of the venue's book)."""

    seq: I64
    child_id: I64
    code: I64
    text: str
    ts: I64 = 0


class ChildFilled(msgspec.Struct, **_WIRE):
    """One execution: ``qty`` lots at ``price`` ticks; ``leaves`` and ``cum`` after it."""

    seq: I64
    child_id: I64
    exec_id: str
    qty: I64
    price: I64
    leaves: I64
    cum: I64
    ts: I64 = 0


class ChildCanceled(msgspec.Struct, **_WIRE):
    """The order stopped working with ``leaves`` lots unfilled; ``reason`` is a ``RejectCode``
    (4100 on request, 4102 IOC remainder, 4200 end of day, ...)."""

    seq: I64
    child_id: I64
    leaves: I64
    reason: I64
    ts: I64 = 0


class ChildReplaced(msgspec.Struct, **_WIRE):
    """A ``ReplaceChildOrder`` took effect: new total ``qty``, ``price`` and ``leaves``."""

    seq: I64
    child_id: I64
    qty: I64
    price: I64
    leaves: I64
    ts: I64 = 0


class ChildCancelRejected(msgspec.Struct, **_WIRE):
    """A cancel (or, if ``for_replace``, a replace) could not be done."""

    seq: I64
    child_id: I64
    text: str
    code: I64 = 0
    for_replace: bool = False
    ts: I64 = 0


class TradeBust(msgspec.Struct, **_WIRE):
    """The venue cancelled execution ``exec_id`` of ``child_id``: reverse it."""

    seq: I64
    exec_id: str
    child_id: I64
    reason: str = ""
    ts: I64 = 0


class TradeCorrection(msgspec.Struct, **_WIRE):
    """Execution ``exec_id`` now stands at ``qty`` lots and ``price`` ticks (absolute values,
    not deltas: applying it twice changes nothing)."""

    seq: I64
    exec_id: str
    child_id: I64
    qty: I64
    price: I64
    reason: str = ""
    ts: I64 = 0


class SessionState(msgspec.Struct, **_WIRE):
    """The venue's trading state: "open", "halted" (orders are rejected) or "closed"."""

    seq: I64
    state: SessionStateName
    ts: I64 = 0


# -- BOTH DIRECTIONS: session -------------------------------------------------------------------


class Heartbeat(msgspec.Struct, **_WIRE):
    """Alive; ``seq`` is the sender's last sequenced seq (0: none yet)."""

    seq: I64
    ts: I64 = 0


class ResendRequest(msgspec.Struct, **_WIRE):
    """Send again the sequenced messages ``from_seq`` .. ``to_seq`` (0: up to the last)."""

    seq: I64
    from_seq: I64
    to_seq: I64 = 0
    ts: I64 = 0


class SequenceReset(msgspec.Struct, **_WIRE):
    """The messages below ``new_seq`` that were asked for are no longer kept: skip to
    ``new_seq`` (reconciliation recovers their effects)."""

    seq: I64
    new_seq: I64
    ts: I64 = 0


class ProtocolError(msgspec.Struct, **_WIRE):
    """A frame was refused: ``code`` is a 6xxx ``RejectCode``; nothing else happened."""

    seq: I64
    code: I64
    text: str
    ts: I64 = 0


# -- UNIONS AND DECODERS ---------------------------------------------------------------------------

KilatToVenue = (
    NewChildOrder
    | CancelChildOrder
    | ReplaceChildOrder
    | LogonAccepted
    | LogonRejected
    | StatusRequest
    | Heartbeat
    | ResendRequest
    | SequenceReset
    | ProtocolError
)

VenueToKilat = (
    VenueLogon
    | ChildAccepted
    | ChildRejected
    | ChildFilled
    | ChildCanceled
    | ChildReplaced
    | ChildCancelRejected
    | TradeBust
    | TradeCorrection
    | SessionState
    | StatusReport
    | Heartbeat
    | ResendRequest
    | SequenceReset
    | ProtocolError
)

#: Messages that consume a seq, per direction (the rest carry the last one).
KILAT_SEQUENCED = (NewChildOrder, CancelChildOrder, ReplaceChildOrder)
VENUE_SEQUENCED = (
    ChildAccepted,
    ChildRejected,
    ChildFilled,
    ChildCanceled,
    ChildReplaced,
    ChildCancelRejected,
    TradeBust,
    TradeCorrection,
    SessionState,
)

VENUE_DECODER = msgspec.msgpack.Decoder(VenueToKilat)
KILAT_DECODER = msgspec.msgpack.Decoder(KilatToVenue)


def _tags(union) -> tuple[str, ...]:
    return tuple(t.__struct_config__.tag for t in typing.get_args(union))


#: The tags each side may send, for error messages.
VENUE_TAGS = _tags(VenueToKilat)
KILAT_TAGS = _tags(KilatToVenue)
#: Tags only Kilat may send (a venue sending one is refused and counted).
KILAT_ONLY_TAGS = tuple(t for t in KILAT_TAGS if t not in VENUE_TAGS)


# -- GATEWAY EVENTS (never on the wire; what VenueGateway.timers() reports) ------------------------


class VenueUp(msgspec.Struct, **_WIRE):
    """The venue logged on (or was heard again after ``VenueDown``). ``resumed`` is False when
    the session is new (both numberings restarted at 1)."""

    mic: str
    session_id: str
    resumed: bool
    ts: I64 = 0


class VenueDown(msgspec.Struct, **_WIRE):
    """The venue went silent (``reason``); ``working`` lists the child orders it held open.
    Until ``VenueUp``, ``VenueGateway.send`` queues and returns False."""

    mic: str
    reason: str
    working: list[I64]
    ts: I64 = 0


class Mismatch(msgspec.Struct, **_ROW):
    """One child order that both sides hold open with different fills (``VenueReconciled``)."""

    child_id: I64
    kilat_cum: I64
    venue_cum: I64
    kilat_leaves: I64
    venue_leaves: I64


class VenueReconciled(msgspec.Struct, **_WIRE):
    """A ``StatusReport`` compared with what Kilat heard: child orders Kilat holds open that the
    venue does not (``missing_at_venue``: treat as done), orders the venue works that Kilat
    does not hold open (``unknown_at_kilat``: cancel them), orders with different fills, and
    executions Kilat never received (``missing_fills``: skipped by a ``SequenceReset``)."""

    mic: str
    request_id: I64
    missing_at_venue: list[I64]
    unknown_at_kilat: list[I64]
    mismatched: list[Mismatch]
    missing_fills: list[ExecutionRecord]
    ts: I64 = 0

    @property
    def clean(self) -> bool:
        return not (self.missing_at_venue or self.unknown_at_kilat or self.mismatched
                    or self.missing_fills)


GatewayEvent = VenueUp | VenueDown | VenueReconciled
