"""Commands, events and replies: the engine's whole vocabulary, as msgspec Structs.

Commands are imperative (``SubmitOrder``), events past tense (``OrderFilled``). Every message is
a frozen, tagged Struct encoded as a msgpack array (``array_like=True``): the tag (the class name)
comes first, then the fields in the order declared here. ``docs/protocol.md`` lists them.

Prices are int ticks of the instrument, quantities int lots; ``ts`` is nanoseconds since the
epoch, stamped by the gateway when the command arrives (the engine never reads a clock while it
applies a command, so replay is deterministic).

One typed decoder per direction is built once here: ``COMMAND_DECODER`` (what a client may send)
and ``REPLY_DECODER`` (what the server sends back).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from engine.constants import OrderType, SelfTradePrevention, Side, TimeInForce

#: Every integer on the wire fits an int64 (the books' word); decoding refuses anything larger.
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

_HOT = {"frozen": True, "tag": True, "array_like": True, "gc": False}


# -- COMMANDS: order entry ----------------------------------------------------------------------


class SubmitOrder(msgspec.Struct, **_HOT):
    """A new order. ``cl_ord_id`` is the client's id, unique per account within the day."""

    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    qty: I64
    order_type: OrderType = OrderType.LIMIT
    price: I64 = 0
    tif: TimeInForce = TimeInForce.DAY
    stop_price: I64 = 0
    display_qty: I64 = 0
    post_only: bool = False
    expire_ts: I64 = 0
    stp: SelfTradePrevention | None = None  # None: the account's configured mode
    ts: I64 = 0
    user: str = ""


class CancelOrder(msgspec.Struct, **_HOT):
    """Cancel a working order, named by ``order_id`` or by its ``orig_cl_ord_id``.

    ``cl_ord_id`` is this request's own id (optional; when given it is unique per account).
    """

    account: str
    order_id: I64 = 0
    orig_cl_ord_id: str = ""
    cl_ord_id: str = ""
    ts: I64 = 0
    user: str = ""


class ModifyOrder(msgspec.Struct, **_HOT):
    """Cancel/replace the price and/or the total quantity (FIX OrderQty, fills included)."""

    account: str
    order_id: I64 = 0
    orig_cl_ord_id: str = ""
    cl_ord_id: str = ""
    price: I64 | None = None
    qty: I64 | None = None
    ts: I64 = 0
    user: str = ""


class MassCancel(msgspec.Struct, **_HOT):
    """Cancel every working order that matches all the given filters (empty = any)."""

    account: str = ""
    symbol: str = ""
    side: Side | None = None
    ts: I64 = 0
    user: str = ""


class EndOfDay(msgspec.Struct, **_HOT):
    """Close the trading day: every DAY order expires."""

    ts: I64 = 0
    user: str = ""


# -- COMMANDS: internal, sequenced like any other ----------------------------------------------


class AdvanceTime(msgspec.Struct, **_HOT):
    """Let time pass to ``ts``: GTD orders whose expiry has come expire. Sent by the service timer."""

    ts: I64 = 0


class TakeSnapshot(msgspec.Struct, **_HOT):
    """Write a snapshot of the whole state at this point of the sequence."""

    ts: I64 = 0
    user: str = ""


# -- QUERIES (read-only, never journaled) -------------------------------------------------------


class QueryOrders(msgspec.Struct, **_HOT):
    account: str = ""
    symbol: str = ""
    open_only: bool = False


class QueryBook(msgspec.Struct, **_HOT):
    symbol: str
    depth: I64 = 5


class Ping(msgspec.Struct, **_HOT):
    token: I64 = 0


Command = SubmitOrder | CancelOrder | ModifyOrder | MassCancel | EndOfDay | TakeSnapshot
Query = QueryOrders | QueryBook | Ping
Journaled = SubmitOrder | CancelOrder | ModifyOrder | MassCancel | EndOfDay | AdvanceTime | TakeSnapshot
ClientMessage = Command | Query

#: Commands that change state; only these reach the journal.
STATE_COMMANDS = (SubmitOrder, CancelOrder, ModifyOrder, MassCancel, EndOfDay, AdvanceTime, TakeSnapshot)


# -- EVENTS -------------------------------------------------------------------------------------


class OrderAccepted(msgspec.Struct, **_HOT):
    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    order_type: OrderType
    price: int
    qty: int
    tif: TimeInForce
    stop_price: int
    display_qty: int
    ts: int


class OrderDenied(msgspec.Struct, **_HOT):
    """Our own risk or compliance refused the order; it never existed."""

    account: str
    cl_ord_id: str
    code: int
    reason: str
    ts: int


class OrderRejected(msgspec.Struct, **_HOT):
    """Validation, the book or a venue refused it. ``order_id`` is 0 if no order was created."""

    account: str
    cl_ord_id: str
    order_id: int
    code: int
    reason: str
    ts: int


class OrderFilled(msgspec.Struct, **_HOT):
    """One execution. ``avg_px`` is for display only; the state keeps integer notional."""

    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    exec_id: int
    last_qty: int
    last_px: int
    cum_qty: int
    leaves_qty: int
    avg_px: float
    maker: bool
    ts: int


class OrderCanceled(msgspec.Struct, **_HOT):
    order_id: int
    account: str
    cl_ord_id: str
    canceled_qty: int
    code: int
    reason: str
    ts: int


class OrderReplaced(msgspec.Struct, **_HOT):
    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    price: int
    qty: int
    leaves_qty: int
    priority_kept: bool
    ts: int


class OrderCancelRejected(msgspec.Struct, **_HOT):
    """A cancel or modify request was refused; the order (if any) is unchanged."""

    account: str
    cl_ord_id: str
    order_id: int
    code: int
    reason: str
    for_modify: bool
    ts: int


class OrderExpired(msgspec.Struct, **_HOT):
    order_id: int
    account: str
    cl_ord_id: str
    expired_qty: int
    code: int
    ts: int


class OrderTriggered(msgspec.Struct, **_HOT):
    """A stop order's trigger price was reached; it now works as a market or limit order."""

    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    trigger_px: int
    ts: int


Event = (
    OrderAccepted
    | OrderDenied
    | OrderRejected
    | OrderFilled
    | OrderCanceled
    | OrderReplaced
    | OrderCancelRejected
    | OrderExpired
    | OrderTriggered
)


# -- REPLIES that are not events ---------------------------------------------------------------


class CommandError(msgspec.Struct, **_HOT):
    """The frame could not be understood; nothing was done."""

    code: int
    reason: str


class CommandDone(msgspec.Struct, **_HOT):
    """A command with no order events of its own (mass cancel, end of day, snapshot) completed."""

    command: str
    seq: int
    affected: int


class OrderView(msgspec.Struct, **_HOT):
    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    status: str
    price: int
    stop_price: int
    qty: int
    cum_qty: int
    leaves_qty: int
    avg_px: float
    created_ts: int
    updated_ts: int


class OrdersView(msgspec.Struct, **_HOT):
    orders: list[OrderView]


class BookLevel(msgspec.Struct, **_HOT):
    price: int
    qty: int
    orders: int


class BookView(msgspec.Struct, **_HOT):
    symbol: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    last_px: int


class Pong(msgspec.Struct, **_HOT):
    token: int
    seq: int


Reply = Event | CommandError | CommandDone | OrdersView | BookView | Pong

COMMAND_DECODER = msgspec.msgpack.Decoder(ClientMessage)
JOURNAL_DECODER = msgspec.msgpack.Decoder(Journaled)
REPLY_DECODER = msgspec.msgpack.Decoder(Reply)
