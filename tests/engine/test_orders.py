"""The order state machine: statuses change only through the transition table."""

import pytest

from engine.constants import OrderType, Side, TimeInForce
from engine.orders import TERMINAL, TRANSITIONS, InvalidTransition, Order, OrderStatus, Transition

S, T = OrderStatus, Transition


def new_order(qty: int = 100) -> Order:
    return Order(1, "FUND1", "c-1", "AAPL", 0, Side.BUY, OrderType.LIMIT, TimeInForce.DAY,
                 15_000, 0, qty, 0, False, 0, 1)


def test_fills_move_new_order_to_partially_filled_then_filled():
    order = new_order()
    order.apply(T.ACCEPT, 2)
    order.fill(40, 15_000, 3)
    assert (order.status, order.cum_qty, order.leaves_qty) == (S.PARTIALLY_FILLED, 40, 60)
    order.fill(60, 14_990, 4)
    assert (order.status, order.leaves_qty, order.notional) == (S.FILLED, 0, 40 * 15_000 + 60 * 14_990)
    assert order.avg_px == pytest.approx((40 * 15_000 + 60 * 14_990) / 100)


def test_fill_on_filled_order_is_an_invalid_transition():
    order = new_order(10)
    order.apply(T.ACCEPT, 2)
    order.fill(10, 15_000, 3)
    with pytest.raises(InvalidTransition):
        order.fill(1, 15_000, 4)


def test_cancel_of_rejected_order_raises_and_leaves_status():
    order = new_order()
    order.apply(T.REJECT, 2)
    with pytest.raises(InvalidTransition, match="cannot cancel from Rejected"):
        order.apply(T.CANCEL, 3)
    assert order.status is S.REJECTED


def test_replace_after_partial_fill_reports_partially_filled():
    order = new_order()
    order.apply(T.ACCEPT, 2)
    order.fill(10, 15_000, 3)
    order.apply(T.REQUEST_REPLACE, 4)
    assert order.status is S.PENDING_REPLACE
    order.apply(T.REPLACE, 5)
    assert order.status is S.PARTIALLY_FILLED


def test_pending_approval_can_be_released_or_denied():
    held = new_order()
    held.apply(T.HOLD, 2)
    held.apply(T.RELEASE, 3)
    assert held.status is S.PENDING_NEW
    denied = new_order()
    denied.apply(T.HOLD, 2)
    denied.apply(T.DENY, 3)
    assert denied.status is S.DENIED


def test_no_transition_leaves_a_terminal_status():
    for (status, transition), target in TRANSITIONS.items():
        if status in TERMINAL:  # only a trade bust applies to a finished order, and keeps it so
            assert transition is Transition.TRADE_BUST and target is status
