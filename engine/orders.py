"""Orders and their state machine (FIX 4.4 OrdStatus, plus Denied and PendingApproval).

An order's status changes only through ``Order.apply(kind)``, checked against ``TRANSITIONS``,
a table kept as data. An impossible transition is a bug in the engine and raises
``InvalidTransition``; expected refusals never get here (they are events, decided earlier).
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.constants import OrderType, Side, TimeInForce


class OrderStatus(StrEnum):
    PENDING_NEW = "PendingNew"
    NEW = "New"
    PARTIALLY_FILLED = "PartiallyFilled"
    FILLED = "Filled"
    PENDING_CANCEL = "PendingCancel"
    CANCELED = "Canceled"
    PENDING_REPLACE = "PendingReplace"
    REJECTED = "Rejected"
    EXPIRED = "Expired"
    DONE_FOR_DAY = "DoneForDay"
    DENIED = "Denied"
    PENDING_APPROVAL = "PendingApproval"


class Transition(StrEnum):
    """What happened to an order; the table maps (status, transition) to the next status."""

    ACCEPT = "accept"
    REJECT = "reject"
    DENY = "deny"
    HOLD = "hold"  # compliance holds it for approval
    RELEASE = "release"  # approved: back to PendingNew
    PARTIAL_FILL = "partial_fill"
    FILL = "fill"
    REQUEST_CANCEL = "request_cancel"  # venue-routed orders wait for the venue
    REQUEST_REPLACE = "request_replace"
    CANCEL = "cancel"
    REPLACE = "replace"
    REPLACE_REJECT = "replace_reject"  # back from PendingReplace/PendingCancel
    TRIGGER = "trigger"
    EXPIRE = "expire"
    DONE_FOR_DAY = "done_for_day"
    TRADE_BUST = "trade_bust"  # an execution was busted or corrected (FIX TradeCancel/Correct)


S, T = OrderStatus, Transition
_WORKING = (S.NEW, S.PARTIALLY_FILLED)
_PENDING = (S.PENDING_CANCEL, S.PENDING_REPLACE)


def _table() -> dict[tuple[OrderStatus, Transition], OrderStatus]:
    t: dict[tuple[OrderStatus, Transition], OrderStatus] = {
        (S.PENDING_NEW, T.ACCEPT): S.NEW,
        (S.PENDING_NEW, T.REJECT): S.REJECTED,
        (S.PENDING_NEW, T.DENY): S.DENIED,
        (S.PENDING_NEW, T.HOLD): S.PENDING_APPROVAL,
        (S.PENDING_APPROVAL, T.RELEASE): S.PENDING_NEW,
        (S.PENDING_APPROVAL, T.DENY): S.DENIED,
        (S.PENDING_APPROVAL, T.CANCEL): S.CANCELED,
    }
    for status in (*_WORKING, *_PENDING):
        t[(status, T.PARTIAL_FILL)] = (
            status if status in _PENDING else S.PARTIALLY_FILLED
        )
        t[(status, T.FILL)] = S.FILLED
        t[(status, T.CANCEL)] = S.CANCELED
        t[(status, T.EXPIRE)] = S.EXPIRED
        t[(status, T.DONE_FOR_DAY)] = S.DONE_FOR_DAY
    for status in _WORKING:
        t[(status, T.REQUEST_CANCEL)] = S.PENDING_CANCEL
        t[(status, T.REQUEST_REPLACE)] = S.PENDING_REPLACE
        t[(status, T.REPLACE)] = status
        t[(status, T.TRIGGER)] = status
    # A bust leaves an order where it was; a working order with no fills left reads New again
    # (``apply`` turns New into PartiallyFilled while fills remain).
    for status in (*_WORKING, *_PENDING, S.FILLED, S.CANCELED, S.EXPIRED, S.DONE_FOR_DAY):
        t[(status, T.TRADE_BUST)] = S.NEW if status in _WORKING else status
    t[(S.PENDING_REPLACE, T.REPLACE)] = S.NEW
    t[(S.PENDING_REPLACE, T.REPLACE_REJECT)] = S.NEW
    t[(S.PENDING_CANCEL, T.REPLACE_REJECT)] = S.NEW
    return t


#: (status, transition) -> next status. Anything missing is impossible. A target of New means
#: "working"; an order that already has fills lands in PartiallyFilled instead.
TRANSITIONS: dict[tuple[OrderStatus, Transition], OrderStatus] = _table()

# The hot path looks transitions up by position, not by hashing enum members (Enum.__hash__
# runs in Python: a dict lookup on a (status, transition) key cost ~670 ns).
_STATUSES = list(OrderStatus)
_TRANSITION_LIST = list(Transition)
for _i, _m in enumerate(_STATUSES):
    _m._idx = _i
for _i, _m in enumerate(_TRANSITION_LIST):
    _m._idx = _i
_NEXT: list[list[OrderStatus | None]] = [
    [TRANSITIONS.get((status, t)) for t in _TRANSITION_LIST] for status in _STATUSES
]

#: Statuses from which an order can never change again.
TERMINAL = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED, S.DONE_FOR_DAY, S.DENIED})
_IS_TERMINAL = [status in TERMINAL for status in _STATUSES]
_IS_WORKING = [status in _WORKING or status in _PENDING for status in _STATUSES]
# Enum member access costs ~140 ns on Python 3.11; the hot path uses these bindings.
_S_NEW, _S_PARTIALLY_FILLED = S.NEW, S.PARTIALLY_FILLED
_T_FILL, _T_PARTIAL_FILL = T.FILL, T.PARTIAL_FILL


class InvalidTransition(RuntimeError):
    """An event was applied to an order in a status that cannot take it: an engine bug."""


class Order(msgspec.Struct, gc=False):
    """One order's state, owned by the pipeline's single writer.

    Money is exact: ``notional`` is the integer sum of fill price (ticks) × fill quantity (lots);
    ``avg_px`` derives a float only for display.
    """

    order_id: int
    account: str
    cl_ord_id: str
    symbol: str
    instrument: int
    side: Side
    order_type: OrderType
    tif: TimeInForce
    price: int
    stop_price: int
    qty: int
    display_qty: int
    post_only: bool
    expire_ts: int
    created_ts: int
    status: OrderStatus = OrderStatus.PENDING_NEW
    cum_qty: int = 0
    notional: int = 0
    updated_ts: int = 0
    triggered: bool = False
    user: str = ""  # who entered it (kill switch per trader, four-eyes approval)
    busted_qty: int = 0  # lots of busted executions, taken off ``qty`` (they are not re-offered)

    # -- COMMANDS --

    def apply(self, transition: Transition, ts: int) -> OrderStatus:
        """Move to the status the table gives for ``transition``. O(1)."""
        nxt = _NEXT[self.status._idx][transition._idx]
        if nxt is None:
            raise InvalidTransition(
                f"order {self.order_id} ({self.account}/{self.cl_ord_id}): "
                f"cannot {transition.value} from {self.status.value}"
            )
        if nxt is _S_NEW and self.cum_qty:
            nxt = _S_PARTIALLY_FILLED  # "working again": an order with fills reports so
        self.status = nxt
        self.updated_ts = ts
        return nxt

    def fill(self, qty: int, price: int, ts: int) -> None:
        """Record an execution and move to PartiallyFilled or Filled. O(1)."""
        if qty <= 0 or qty > self.leaves_qty:
            raise InvalidTransition(
                f"order {self.order_id}: fill of {qty} with {self.leaves_qty} leaves"
            )
        self.cum_qty += qty
        self.notional += qty * price
        self.apply(_T_FILL if self.cum_qty == self.qty else _T_PARTIAL_FILL, ts)

    def unfill(self, qty: int, price: int, new_qty: int, new_price: int, ts: int) -> None:
        """An execution of ``qty`` at ``price`` is busted (``new_qty`` 0) or corrected to
        ``new_qty`` at ``new_price``. The lots taken away leave the order (``qty`` shrinks by
        them and ``busted_qty`` grows), so its leaves and its place in the book do not change.
        O(1)."""
        if not 0 <= new_qty <= qty <= self.cum_qty:
            raise InvalidTransition(f"order {self.order_id}: cannot correct a {qty}-lot fill to "
                                    f"{new_qty} with {self.cum_qty} filled")
        removed = qty - new_qty
        self.cum_qty -= removed
        self.qty -= removed
        self.busted_qty += removed
        self.notional += new_qty * new_price - qty * price
        self.apply(T.TRADE_BUST, ts)

    # -- QUERIES --

    @property
    def leaves_qty(self) -> int:
        """What is still working: 0 once the order is done."""
        if _IS_TERMINAL[self.status._idx]:
            return 0
        return self.qty - self.cum_qty

    @property
    def avg_px(self) -> float:
        return self.notional / self.cum_qty if self.cum_qty else 0.0

    @property
    def is_working(self) -> bool:
        return _IS_WORKING[self.status._idx]
