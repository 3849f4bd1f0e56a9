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
    route: str = ""  # "": Kilat's own book; "SOR": cross internally, then route to venues; a MIC: that venue


class AllocationTarget(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One account of a block order's allocation: ``qty`` lots (method "explicit") or ``bps``
    (basis points: a share for "percent", a target weight of the account's NAV for
    "target_weight"); "pro_rata_nav" uses neither."""

    account: str
    qty: I64 = 0
    bps: I64 = 0


class SubmitBlockOrder(msgspec.Struct, **_HOT):
    """One order traded once in a block ``account`` and allocated to many accounts as it fills.

    ``method``: "explicit" (quantities, which must add up to ``qty``), "percent" (basis points
    adding up to 10,000), "target_weight" (each account's share ∝ its weight × its NAV) or
    "pro_rata_nav" (∝ NAV). Compliance checks each account's share before the block goes out.
    """

    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    qty: I64
    method: str
    targets: list[AllocationTarget]
    order_type: OrderType = OrderType.LIMIT
    price: I64 = 0
    tif: TimeInForce = TimeInForce.DAY
    ts: I64 = 0
    user: str = ""


class AmendAllocation(msgspec.Struct, **_HOT):
    """Re-split everything a block order has filled so far under a new instruction (same
    methods as ``SubmitBlockOrder``), before the end of the day; journaled with its reason."""

    order_id: I64
    method: str
    targets: list[AllocationTarget]
    reason: str
    ts: I64 = 0
    user: str = ""


class CancelAllocation(msgspec.Struct, **_HOT):
    """Hand every allocation of a block order back to its block account (later fills stay
    there until an ``AmendAllocation``), before the end of the day; journaled with its reason."""

    order_id: I64
    reason: str
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


# -- COMMANDS: prices (journaled: marks drive risk, compliance and P&L) ---------------------------


class PriceTick(msgspec.Struct, **_HOT):
    """A price update for one instrument, in ticks; a 0 field leaves that price unchanged."""

    symbol: str
    bid: I64 = 0
    ask: I64 = 0
    last: I64 = 0
    ts: I64 = 0
    user: str = ""


# -- COMMANDS: operations (busts and corrections; venues send theirs with the gateways issue) ----


class BustTrade(msgspec.Struct, **_HOT):
    """Cancel an execution (FIX ExecType TradeCancel): both sides of the trade are reversed in
    orders, positions, cash and P&L. Named by either side's ``exec_id``."""

    exec_id: I64
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class CorrectTrade(msgspec.Struct, **_HOT):
    """Correct an execution's quantity (not above the original) and/or price (FIX ExecType
    TradeCorrect); both sides are adjusted."""

    exec_id: I64
    qty: I64
    price: I64
    reason: str = ""
    ts: I64 = 0
    user: str = ""


# -- COMMANDS: compliance officers --------------------------------------------------------------


class ApproveOrder(msgspec.Struct, **_HOT):
    """Release an order held for approval (a SOFT breach); it continues to the book. The
    approver must hold the compliance role and must not be the order's submitter."""

    order_id: I64
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class RejectHeldOrder(msgspec.Struct, **_HOT):
    """Refuse an order held for approval: it ends Denied."""

    order_id: I64
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class _AlertCommand(msgspec.Struct, **_HOT):
    alert_id: I64
    comment: str = ""
    assignee: str = ""
    ts: I64 = 0
    user: str = ""


class AcknowledgeAlert(_AlertCommand):
    """OPEN -> ACKNOWLEDGED (optionally assigning it)."""


class EscalateAlert(_AlertCommand):
    """OPEN or ACKNOWLEDGED -> ESCALATED."""


class ResolveAlert(_AlertCommand):
    """-> RESOLVED (a finding acted upon)."""


class DismissAlert(_AlertCommand):
    """-> DISMISSED (a false positive); a comment saying why is required."""


class CommentAlert(_AlertCommand):
    """Add a comment (and optionally reassign) without changing the state."""


class UpdateIssuerList(msgspec.Struct, **_HOT):
    """Add an issuer to, or remove it from, the restricted or the watch list."""

    list_name: str  # "restricted" | "watch"
    issuer: str
    add: bool = True
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class SetLocate(msgspec.Struct, **_HOT):
    """Record the borrow located for short sales: ``qty`` lots of ``symbol`` for ``account``."""

    account: str
    symbol: str
    qty: I64
    ts: I64 = 0
    user: str = ""


# -- COMMANDS: risk controls (admin; the kill switch also compliance) ---------------------------


class SetRiskLimit(msgspec.Struct, **_HOT):
    """Change one limit at run time; ``account``/``symbol`` may be "*" (the default row)."""

    account: str
    symbol: str
    name: str
    value: str  # a decimal, as text: exact
    ts: I64 = 0
    user: str = ""


class SetKillSwitch(msgspec.Struct, **_HOT):
    """Stop (``on``) or resume new orders for the firm ("global"), an account or a user;
    switching on also cancels the working orders in its scope."""

    scope: str  # "global" | "account" | "user"
    target: str = ""
    on: bool = True
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class SetTradingState(msgspec.Struct, **_HOT):
    """ACTIVE, REDUCING (only orders that reduce a position) or HALTED (only cancels), per
    account and instrument ("*" for all)."""

    account: str
    symbol: str
    state: str
    ts: I64 = 0
    user: str = ""


# -- JOURNAL ONLY: a command with the pre-trade findings that changed its course -----------------


class RuleFinding(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One pre-trade evaluation that did not simply pass: kept with the rule version and the
    figures it used."""

    rule_id: str
    version: int
    severity: str  # HARD | SOFT | WARN
    code: int
    text: str
    value: float
    limit: float


class DeniedOrder(msgspec.Struct, **_HOT):
    """Journal only: pre-trade risk or compliance refused this submit or modify. It changes no
    state (replay skips it) but keeps every refusal, with the rule version and the figures in
    ``reason``, in the audit trail (`kilat audit`)."""

    request: SubmitOrder | ModifyOrder
    code: int
    reason: str


class BatchEnd(msgspec.Struct, **_HOT):
    """Journal only: stage 8 observed the commands since the previous mark as one batch. Replay
    observes at the same marks, so post-trade and surveillance state folds identically."""


class ScreenedOrder(msgspec.Struct, **_HOT):
    """A submit whose compliance screening held it (``hold_code`` != 0) or raised warnings.
    Journaled instead of the bare command so that replay repeats the decision without
    re-running the rules (whose config may have changed since)."""

    order: SubmitOrder
    hold_code: int
    hold_reason: str
    findings: list[RuleFinding]


# -- VENUE INPUTS: what the venue gateway and the feed handler journal (no client sends these) -----


class VenueQuote(msgspec.Struct, **_HOT):
    """A venue's best bid and offer for one instrument (a 0 price: that side is empty), as its
    feed last showed it; the smart order router reads these."""

    venue: str
    symbol: str
    bid: I64
    bid_size: I64
    ask: I64
    ask_size: I64
    ts: I64 = 0
    user: str = ""


class VenueSessionChanged(msgspec.Struct, **_HOT):
    """A venue's session came up (logged on) or went down (silent past its heartbeat, or
    disconnected): new child orders avoid a venue that is down."""

    venue: str
    up: bool
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class VenueAccepted(msgspec.Struct, **_HOT):
    venue: str
    child_id: I64
    venue_order_id: str
    ts: I64 = 0
    user: str = ""


class VenueRejected(msgspec.Struct, **_HOT):
    """The venue refused a new child order (or Kilat could not send it); the rest is re-routed."""

    venue: str
    child_id: I64
    code: I64
    text: str
    ts: I64 = 0
    user: str = ""


class VenueFilled(msgspec.Struct, **_HOT):
    """An execution of a child order; ``exec_id`` is the venue's, unique per venue (a repeat is
    applied once)."""

    venue: str
    child_id: I64
    exec_id: str
    qty: I64
    price: I64
    ts: I64 = 0
    user: str = ""


class VenueCanceled(msgspec.Struct, **_HOT):
    """A child order is done at the venue with ``leaves`` lots unfilled: on Kilat's request, or
    unsolicited (then the rest is re-routed), or unknown to the venue at reconciliation."""

    venue: str
    child_id: I64
    leaves: I64
    reason: str
    ts: I64 = 0
    user: str = ""


class VenueTradeBust(msgspec.Struct, **_HOT):
    venue: str
    exec_id: str
    reason: str = ""
    ts: I64 = 0
    user: str = ""


class VenueTradeCorrection(msgspec.Struct, **_HOT):
    venue: str
    exec_id: str
    qty: I64
    price: I64
    reason: str = ""
    ts: I64 = 0
    user: str = ""


VenueInput = (VenueQuote | VenueSessionChanged | VenueAccepted | VenueRejected | VenueFilled
              | VenueCanceled | VenueTradeBust | VenueTradeCorrection)
VENUE_INPUTS = (VenueQuote, VenueSessionChanged, VenueAccepted, VenueRejected, VenueFilled,
                VenueCanceled, VenueTradeBust, VenueTradeCorrection)


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


class QueryAlerts(msgspec.Struct, **_HOT):
    """Alerts matching every given filter (empty = any); ``alert_id`` > 0 gives one with its
    history."""

    state: str = ""
    severity: str = ""
    rule: str = ""
    account: str = ""
    alert_id: I64 = 0
    limit: I64 = 1000


class QueryRisk(msgspec.Struct, **_HOT):
    """Limits, controls and utilisation (one account, or all)."""

    account: str = ""


class QueryPositions(msgspec.Struct, **_HOT):
    """Positions, working lots and cash (one account, or all)."""

    account: str = ""


class QueryVenues(msgspec.Struct, **_HOT):
    """Each venue's session, working child orders and the day's fills (a table)."""


class QueryPrices(msgspec.Struct, **_HOT):
    """Marks per instrument and each venue's best bid and offer (a table; one symbol, or all)."""

    symbol: str = ""


class QueryFills(msgspec.Struct, **_HOT):
    """Today's executions, newest first (a table; one account, or all)."""

    account: str = ""
    limit: I64 = 50


# -- DROP COPY (gateways/dropcopy.py, docs/dropcopy.md) ---------------------------------------


class QueryDropCopy(msgspec.Struct, **_HOT):
    """The drop copy's events with ``seq > after_seq``, oldest first, at most ``limit`` of them
    (capped by the server; the reply says the limit it applied). Read-only, never journaled."""

    after_seq: I64
    limit: I64 = 10_000
    user: str = ""


class DropCopyEvent(msgspec.Struct, **_HOT):
    """One engine event as the drop copy streams it. ``seq``: the drop copy's own sequence
    (1, 2, 3, ... with no holes, across restarts); ``record``: the journal record that caused
    it; ``account`` and ``symbol``: what it is about ("" if nothing; ``symbol`` is filled from
    the order for events that do not carry it), the keys of its PUB topics."""

    seq: I64
    record: I64
    account: str
    symbol: str
    event: Event


class DropCopyEvents(msgspec.Struct, **_HOT):
    """The answer to ``QueryDropCopy``: consecutive events, the drop copy's last seq when it
    answered, whether events after the last one returned exist, and the limit applied."""

    events: list[DropCopyEvent]
    last_seq: I64
    more: bool
    limit: I64 = 0


Command = (
    SubmitOrder | SubmitBlockOrder | AmendAllocation | CancelAllocation | CancelOrder | ModifyOrder
    | MassCancel | EndOfDay | TakeSnapshot | PriceTick | BustTrade | CorrectTrade | ApproveOrder | RejectHeldOrder | AcknowledgeAlert | EscalateAlert | ResolveAlert
    | DismissAlert | CommentAlert | UpdateIssuerList | SetLocate | SetRiskLimit | SetKillSwitch
    | SetTradingState
)
Query = (QueryOrders | QueryBook | Ping | QueryAlerts | QueryRisk | QueryPositions | QueryDropCopy
         | QueryVenues | QueryPrices | QueryFills)
Journaled = Command | AdvanceTime | ScreenedOrder | DeniedOrder | BatchEnd | VenueInput
ClientMessage = Command | Query

ALERT_COMMANDS = (AcknowledgeAlert, EscalateAlert, ResolveAlert, DismissAlert, CommentAlert)

#: Commands that change state; only these reach the journal.
STATE_COMMANDS = (
    SubmitOrder, SubmitBlockOrder, AmendAllocation, CancelAllocation, CancelOrder, ModifyOrder, MassCancel, EndOfDay, AdvanceTime, TakeSnapshot,
    PriceTick, BustTrade, CorrectTrade, ApproveOrder, RejectHeldOrder, *ALERT_COMMANDS, UpdateIssuerList, SetLocate,
    SetRiskLimit, SetKillSwitch, SetTradingState, ScreenedOrder, DeniedOrder, BatchEnd,
    VenueQuote, VenueSessionChanged, VenueAccepted, VenueRejected, VenueFilled, VenueCanceled,
    VenueTradeBust, VenueTradeCorrection,
)


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
    venue: str = ""  # where it executed: "" = Kilat's own book, else the venue's MIC


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


class AllocationMade(msgspec.Struct, **_HOT):
    """Part of a block order's fill booked to ``account``: ``qty`` lots for ``notional`` (price
    ticks × lots, exact: the block's average price); ``cum_qty`` is the account's total so far."""

    order_id: int
    account: str
    symbol: str
    side: Side
    qty: int
    notional: int
    cum_qty: int
    avg_px: float
    exec_id: int
    ts: int


class TradeBusted(msgspec.Struct, **_HOT):
    """One side of a busted trade: ``qty`` at ``price`` no longer happened. The order keeps its
    leaves (the busted quantity is not offered again: its total qty is reduced by it)."""

    exec_id: int
    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    qty: int
    price: int
    cum_qty: int
    avg_px: float
    reason: str
    ts: int


class TradeCorrected(msgspec.Struct, **_HOT):
    """One side of a corrected trade: it now reads ``qty`` at ``price``."""

    exec_id: int
    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    old_qty: int
    old_price: int
    qty: int
    price: int
    cum_qty: int
    avg_px: float
    reason: str
    ts: int


class ChildOrderRouted(msgspec.Struct, **_HOT):
    """The smart order router sent part of a parent order to a venue as a child order."""

    parent_id: int
    child_id: int
    account: str
    venue: str
    symbol: str
    side: Side
    qty: int
    price: int  # 0: a market child
    ts: int


class ChildCancelRequested(msgspec.Struct, **_HOT):
    """Kilat asked the venue to cancel a child order (its parent is being canceled)."""

    parent_id: int
    child_id: int
    account: str
    venue: str
    ts: int


class ChildOrderUpdated(msgspec.Struct, **_HOT):
    """A child order's state at its venue changed: ``status`` is New (acknowledged), Rejected,
    Canceled or Filled; ``reason`` says why when it ended unfilled."""

    parent_id: int
    child_id: int
    account: str
    venue: str
    status: str
    cum_qty: int
    leaves_qty: int
    reason: str
    ts: int


class OrderHeld(msgspec.Struct, **_HOT):
    """A SOFT compliance breach: the order waits in PendingApproval for a compliance officer."""

    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    code: int
    reason: str
    ts: int


class OrderReleased(msgspec.Struct, **_HOT):
    """A compliance officer approved a held order; it goes on to the book."""

    order_id: int
    account: str
    cl_ord_id: str
    approver: str
    reason: str
    ts: int


class AlertRaised(msgspec.Struct, **_HOT):
    """A finding for compliance: a pre-trade rule (WARN or SOFT), a post-trade breach or a
    surveillance detector, with the evidence that made it."""

    alert_id: int
    source: str  # "pre-trade" | "post-trade" | "surveillance"
    rule_id: str
    rule_version: int
    severity: str
    account: str
    symbol: str
    text: str
    order_ids: list[int]
    exec_ids: list[int]
    ts: int


class AlertUpdated(msgspec.Struct, **_HOT):
    """An alert changed: an officer's action, or the breach it reports recovered."""

    alert_id: int
    state: str
    action: str
    user: str
    comment: str
    assignee: str
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
    | AllocationMade
    | ChildOrderRouted
    | ChildCancelRequested
    | ChildOrderUpdated
    | TradeBusted
    | TradeCorrected
    | OrderHeld
    | OrderReleased
    | AlertRaised
    | AlertUpdated
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


class AlertHistoryEntry(msgspec.Struct, **_HOT):
    ts: int
    user: str
    action: str
    state: str
    comment: str


class AlertView(msgspec.Struct, **_HOT):
    alert_id: int
    source: str
    rule_id: str
    rule_version: int
    severity: str
    state: str
    account: str
    symbol: str
    text: str
    assignee: str
    recovered: bool
    order_ids: list[int]
    exec_ids: list[int]
    raised_ts: int
    updated_ts: int
    history: list[AlertHistoryEntry]


class AlertsView(msgspec.Struct, **_HOT):
    alerts: list[AlertView]


class TableView(msgspec.Struct, **_HOT):
    """A query answered as a table (risk limits, positions): column names and rows."""

    title: str
    columns: list[str]
    rows: list[list[str | int | float | bool]]


Reply = Event | CommandError | CommandDone | OrdersView | BookView | Pong | AlertsView | TableView | DropCopyEvents

COMMAND_DECODER = msgspec.msgpack.Decoder(ClientMessage)
JOURNAL_DECODER = msgspec.msgpack.Decoder(Journaled)
REPLY_DECODER = msgspec.msgpack.Decoder(Reply)
