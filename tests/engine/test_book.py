"""Scenario tests of the book contract, run against both books (numba and reference)."""

from __future__ import annotations

import pytest

from engine.book import NumbaBook
from engine.book_events import (
    CANCEL,
    CANCEL_REJECT,
    EXPIRE,
    MODIFY_REJECT,
    PENDING_STOP,
    REJECT,
    REPLACE,
    REST,
    TRADE,
    TRIGGER,
)
from engine.constants import (
    BUY,
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
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
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
)
from engine.refbook import ReferenceBook

MAX_ORDERS = 16
MAX_LEVELS = 4
MAX_FILLS = 5


@pytest.fixture(params=["numba", "reference"])
def book(request):
    cls = NumbaBook if request.param == "numba" else ReferenceBook
    return cls(2, MAX_ORDERS, max_levels_per_side=MAX_LEVELS, max_fills_per_order=MAX_FILLS)


def rows(events) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in row) for row in events]


def limit(book, oid, side, price, qty, tif=GTC, account=1, instr=0, **kw):
    out = rows(book.submit(oid, instr, account, side, LIMIT, tif, price, qty, **kw))
    book.validate()
    return out


def rest(oid, price, qty):
    return (REST, oid, 0, price, qty, qty, 0, 0)


def trade(taker, maker, price, qty, leaves, maker_leaves):
    return (TRADE, taker, maker, price, qty, leaves, maker_leaves, 0)


def cancel(oid, price, qty, reason):
    return (CANCEL, oid, 0, price, qty, 0, 0, reason)


# -- resting and sweeping ------------------------------------------------------------------------


def test_limit_on_empty_book_then_rests_and_sets_best_prices(book):
    assert limit(book, 1, BUY, 100, 10) == [rest(1, 100, 10)]
    assert limit(book, 2, SELL, 105, 3) == [rest(2, 105, 3)]
    assert (book.best_bid(0), book.best_ask(0)) == (100, 105)
    assert book.depth(0, BUY, 5) == [(100, 10, 1)]
    assert book.resting_orders() == 2
    assert book.order(1).leaves == 10


def test_taker_crossing_several_levels_then_fills_in_price_time_order_and_rests_remainder(book):
    limit(book, 1, SELL, 101, 5)
    limit(book, 2, SELL, 100, 3)
    limit(book, 3, SELL, 100, 4)
    limit(book, 4, SELL, 103, 9)
    events = limit(book, 9, BUY, 102, 15)
    assert events == [
        trade(9, 2, 100, 3, 12, 0),
        trade(9, 3, 100, 4, 8, 0),
        trade(9, 1, 101, 5, 3, 0),
        rest(9, 102, 3),
    ]
    assert book.best_bid(0) == 102 and book.best_ask(0) == 103
    assert book.last_price(0) == 101


def test_cancel_when_order_partially_filled_then_leaves_qty_released(book):
    limit(book, 1, SELL, 100, 10)
    limit(book, 2, BUY, 100, 4)
    assert rows(book.cancel(1)) == [cancel(1, 100, 6, R_CANCEL_REQUESTED)]
    book.validate()
    assert book.best_ask(0) == 0 and book.resting_orders() == 0 and book.order(1) is None


def test_cancel_unknown_order_then_cancel_reject(book):
    assert rows(book.cancel(77)) == [(CANCEL_REJECT, 77, 0, 0, 0, 0, 0, R_UNKNOWN_BOOK_ORDER)]


def test_events_returned_are_read_only(book):
    events = book.submit(1, 0, 1, BUY, LIMIT, GTC, 100, 1)
    with pytest.raises(ValueError):
        events[0, 0] = 0


# -- time in force -------------------------------------------------------------------------------


def test_ioc_partially_filled_then_remainder_canceled(book):
    limit(book, 1, SELL, 100, 4)
    assert limit(book, 2, BUY, 100, 10, tif=IOC) == [
        trade(2, 1, 100, 4, 6, 0),
        cancel(2, 100, 6, R_IOC_REMAINDER),
    ]
    assert book.resting_orders() == 0


def test_ioc_not_crossing_then_canceled_whole(book):
    limit(book, 1, SELL, 101, 4)
    assert limit(book, 2, BUY, 100, 10, tif=IOC) == [cancel(2, 100, 10, R_IOC_REMAINDER)]


def test_fok_short_of_liquidity_then_canceled_and_book_untouched(book):
    limit(book, 1, SELL, 100, 4)
    limit(book, 2, SELL, 101, 4)
    limit(book, 3, SELL, 103, 50)
    before = book.state_hash()
    assert limit(book, 9, BUY, 102, 9, tif=FOK) == [cancel(9, 102, 9, R_FOK_NOT_FILLABLE)]
    assert book.state_hash() == before


def test_fok_fillable_then_fills_completely(book):
    limit(book, 1, SELL, 100, 4)
    limit(book, 2, SELL, 101, 4)
    assert limit(book, 9, BUY, 101, 8, tif=FOK) == [
        trade(9, 1, 100, 4, 4, 0),
        trade(9, 2, 101, 4, 0, 0),
    ]


def test_fok_counts_no_liquidity_from_own_account_under_cancel_resting(book):
    limit(book, 1, SELL, 100, 5, account=7)
    limit(book, 2, SELL, 100, 3, account=8)
    before = book.state_hash()
    events = limit(book, 9, BUY, 100, 5, tif=FOK, account=7, stp=STP_CANCEL_RESTING)
    assert events == [cancel(9, 100, 5, R_FOK_NOT_FILLABLE)]
    assert book.state_hash() == before


def test_market_order_on_empty_side_then_canceled_no_liquidity(book):
    events = rows(book.submit(1, 0, 1, BUY, MARKET, GTC, 0, 5))
    assert events == [cancel(1, 0, 5, R_NO_LIQUIDITY)]
    assert book.resting_orders() == 0


def test_market_order_larger_than_book_then_remainder_canceled_never_rests(book):
    limit(book, 1, SELL, 100, 2)
    limit(book, 2, SELL, 140, 2)
    events = rows(book.submit(3, 0, 1, BUY, MARKET, DAY, 0, 5))
    assert events == [
        trade(3, 1, 100, 2, 3, 0),
        trade(3, 2, 140, 2, 1, 0),
        cancel(3, 0, 1, R_NO_LIQUIDITY),
    ]
    book.validate()


# -- iceberg -------------------------------------------------------------------------------------


def test_iceberg_peak_filled_then_refreshed_at_back_of_queue(book):
    limit(book, 1, SELL, 100, 10, display=3)
    limit(book, 2, SELL, 100, 5)
    assert book.depth(0, SELL, 1) == [(100, 15, 2)]  # hidden quantity included
    assert book.order(1).visible == 3
    events = limit(book, 9, BUY, 100, 4, tif=IOC)
    # the peak (3) is taken, the iceberg refreshes behind order 2, which gets the next lot
    assert events == [trade(9, 1, 100, 3, 1, 7), trade(9, 2, 100, 1, 0, 4)]
    assert book.order(1).visible == 3 and book.order(1).leaves == 7
    events = limit(book, 10, BUY, 100, 12, tif=IOC)
    assert events == [
        trade(10, 2, 100, 4, 8, 0),
        trade(10, 1, 100, 3, 5, 4),
        trade(10, 1, 100, 3, 2, 1),
        trade(10, 1, 100, 1, 1, 0),
        cancel(10, 100, 1, R_IOC_REMAINDER),
    ]


# -- modify --------------------------------------------------------------------------------------


def test_modify_reducing_qty_at_same_price_then_keeps_time_priority(book):
    limit(book, 1, SELL, 100, 10)
    limit(book, 2, SELL, 100, 10)
    assert rows(book.modify(1, 100, 4)) == [(REPLACE, 1, 0, 100, 4, 4, 0, 1)]
    book.validate()
    assert book.depth(0, SELL, 1) == [(100, 14, 2)]
    assert limit(book, 9, BUY, 100, 1) == [trade(9, 1, 100, 1, 0, 3)]


def test_modify_increasing_qty_then_loses_time_priority(book):
    limit(book, 1, SELL, 100, 10)
    limit(book, 2, SELL, 100, 10)
    assert rows(book.modify(1, 100, 12)) == [(REPLACE, 1, 0, 100, 12, 12, 0, 0)]
    book.validate()
    assert limit(book, 9, BUY, 100, 1) == [trade(9, 2, 100, 1, 0, 9)]


def test_modify_changing_price_then_moves_to_tail_of_new_level(book):
    limit(book, 1, SELL, 101, 10)
    limit(book, 2, SELL, 100, 10)
    assert rows(book.modify(1, 100, 10)) == [(REPLACE, 1, 0, 100, 10, 10, 0, 0)]
    book.validate()
    assert book.depth(0, SELL, 5) == [(100, 20, 2)]
    assert limit(book, 9, BUY, 100, 1) == [trade(9, 2, 100, 1, 0, 9)]


def test_modify_to_crossing_price_then_trades_as_taker_and_rests_remainder(book):
    limit(book, 1, SELL, 101, 3)
    limit(book, 2, BUY, 99, 10)
    events = rows(book.modify(2, 101, 10))
    assert events == [
        (REPLACE, 2, 0, 101, 10, 10, 0, 0),
        trade(2, 1, 101, 3, 7, 0),
        rest(2, 101, 7),
    ]
    book.validate()
    assert book.best_bid(0) == 101 and book.best_ask(0) == 0


def test_modify_unknown_order_then_modify_reject(book):
    assert rows(book.modify(5, 100, 1)) == [
        (MODIFY_REJECT, 5, 0, 100, 1, 0, 0, R_UNKNOWN_BOOK_ORDER)
    ]


# -- post-only -----------------------------------------------------------------------------------


def test_post_only_that_would_cross_then_rejected_and_book_untouched(book):
    limit(book, 1, SELL, 100, 5)
    before = book.state_hash()
    events = limit(book, 2, BUY, 100, 5, post_only=True)
    assert events == [(REJECT, 2, 0, 100, 5, 0, 0, R_POST_ONLY_WOULD_CROSS)]
    assert book.state_hash() == before
    assert limit(book, 3, BUY, 99, 5, post_only=True) == [rest(3, 99, 5)]


def test_post_only_modify_that_would_cross_then_rejected_and_order_untouched(book):
    limit(book, 1, SELL, 100, 5)
    limit(book, 2, BUY, 98, 5, post_only=True)
    before = book.state_hash()
    events = rows(book.modify(2, 100, 5))
    assert events == [(MODIFY_REJECT, 2, 0, 100, 5, 0, 0, R_POST_ONLY_WOULD_CROSS)]
    assert book.state_hash() == before


# -- self-trade prevention -----------------------------------------------------------------------


def test_stp_none_same_account_then_trades(book):
    limit(book, 1, SELL, 100, 5, account=7)
    assert limit(book, 2, BUY, 100, 5, account=7) == [trade(2, 1, 100, 5, 0, 0)]


def test_stp_cancel_resting_then_maker_canceled_and_matching_continues(book):
    limit(book, 1, SELL, 100, 5, account=7)
    limit(book, 2, SELL, 100, 5, account=8)
    events = limit(book, 3, BUY, 100, 5, account=7, stp=STP_CANCEL_RESTING)
    assert events == [cancel(1, 100, 5, R_SELF_TRADE_PREVENTED), trade(3, 2, 100, 5, 0, 0)]


def test_stp_cancel_incoming_then_taker_remainder_canceled_and_maker_kept(book):
    limit(book, 1, SELL, 100, 2, account=8)
    limit(book, 2, SELL, 100, 5, account=7)
    events = limit(book, 3, BUY, 100, 5, account=7, stp=STP_CANCEL_INCOMING)
    assert events == [trade(3, 1, 100, 2, 3, 0), cancel(3, 100, 3, R_SELF_TRADE_PREVENTED)]
    assert book.order(2).leaves == 5


def test_stp_cancel_both_then_maker_and_taker_canceled(book):
    limit(book, 1, SELL, 100, 5, account=7)
    limit(book, 2, SELL, 100, 5, account=8)
    events = limit(book, 3, BUY, 100, 5, account=7, stp=STP_CANCEL_BOTH)
    assert events == [
        cancel(1, 100, 5, R_SELF_TRADE_PREVENTED),
        cancel(3, 100, 5, R_SELF_TRADE_PREVENTED),
    ]
    assert book.order(2).leaves == 5 and book.order(3) is None


# -- stops ---------------------------------------------------------------------------------------


def test_buy_stop_when_last_price_reaches_stop_then_triggers_as_market(book):
    limit(book, 1, SELL, 100, 1)
    limit(book, 2, SELL, 101, 5)
    events = rows(book.submit(5, 0, 1, BUY, STOP, GTC, 0, 3, stop_price=100))
    assert events == [(PENDING_STOP, 5, 0, 100, 3, 3, 0, 0)]
    assert book.order(5).is_pending_stop
    events = limit(book, 6, BUY, 100, 1)
    assert events == [
        trade(6, 1, 100, 1, 0, 0),
        (TRIGGER, 5, 0, 100, 3, 3, 0, 0),
        trade(5, 2, 101, 3, 0, 2),
    ]
    assert book.order(5) is None


def test_sell_stop_limit_triggered_then_rests_at_its_limit(book):
    limit(book, 1, BUY, 100, 1)
    book.submit(5, 0, 1, SELL, STOP_LIMIT, GTC, 99, 4, stop_price=100)
    events = limit(book, 6, SELL, 100, 1)
    assert events == [
        trade(6, 1, 100, 1, 0, 0),
        (TRIGGER, 5, 0, 100, 4, 4, 0, 0),
        rest(5, 99, 4),
    ]
    assert book.best_ask(0) == 99 and not book.order(5).is_pending_stop


def test_stop_whose_condition_already_holds_then_triggers_on_entry(book):
    limit(book, 1, SELL, 100, 1)
    limit(book, 2, BUY, 100, 1)
    limit(book, 3, SELL, 102, 5)
    events = rows(book.submit(5, 0, 1, BUY, STOP_LIMIT, GTC, 102, 2, stop_price=99))
    assert events == [(TRIGGER, 5, 0, 100, 2, 2, 0, 0), trade(5, 3, 102, 2, 0, 3)]
    book.validate()


def test_stop_cascade_then_each_trigger_processed_before_next_command(book):
    limit(book, 1, SELL, 100, 1)
    limit(book, 2, SELL, 101, 1)
    limit(book, 3, SELL, 102, 1)
    book.submit(10, 0, 1, BUY, STOP, GTC, 0, 1, stop_price=101)  # waits for 101
    book.submit(11, 0, 1, BUY, STOP, GTC, 0, 1, stop_price=100)  # waits for 100
    events = limit(book, 6, BUY, 100, 1)
    assert events == [
        trade(6, 1, 100, 1, 0, 0),
        (TRIGGER, 11, 0, 100, 1, 1, 0, 0),
        trade(11, 2, 101, 1, 0, 0),
        (TRIGGER, 10, 0, 101, 1, 1, 0, 0),
        trade(10, 3, 102, 1, 0, 0),
    ]
    assert book.last_price(0) == 102 and book.pending_stops() == 0


def test_modify_pending_stop_then_limit_and_leaves_updated_in_place(book):
    book.submit(5, 0, 1, BUY, STOP_LIMIT, GTC, 105, 4, stop_price=104)
    assert rows(book.modify(5, 106, 7)) == [(REPLACE, 5, 0, 106, 7, 7, 0, 1)]
    view = book.order(5)
    assert (view.price, view.leaves, view.stop_price, view.is_pending_stop) == (106, 7, 104, True)


# -- expiry and mass cancel ----------------------------------------------------------------------


def test_end_of_day_then_day_orders_and_day_stops_expire_in_oid_order(book):
    limit(book, 4, BUY, 99, 1, tif=DAY)
    limit(book, 2, SELL, 105, 2, tif=DAY)
    limit(book, 3, SELL, 106, 3, tif=GTC)
    book.submit(1, 0, 1, BUY, STOP, DAY, 0, 5, stop_price=110)
    events = rows(book.end_of_day())
    assert events == [
        (EXPIRE, 1, 0, 0, 5, 0, 0, R_END_OF_DAY),
        (EXPIRE, 2, 0, 105, 2, 0, 0, R_END_OF_DAY),
        (EXPIRE, 4, 0, 99, 1, 0, 0, R_END_OF_DAY),
    ]
    book.validate()
    assert book.resting_orders() == 1 and book.pending_stops() == 0


def test_gtd_orders_then_expired_by_expire_now_in_expiry_order(book):
    limit(book, 1, BUY, 99, 1, tif=GTD, expire_ts=3_000)
    limit(book, 2, BUY, 98, 1, tif=GTD, expire_ts=2_000)
    limit(book, 3, BUY, 97, 1, tif=GTD, expire_ts=2_000)
    limit(book, 4, BUY, 96, 1, tif=GTD, expire_ts=9_000)
    book.cancel(3)
    assert book.next_expiry() == 2_000
    assert rows(book.expire(1_999)) == []
    events = rows(book.expire(3_000))
    assert events == [
        (EXPIRE, 2, 0, 98, 1, 0, 0, R_GTD_EXPIRED),
        (EXPIRE, 1, 0, 99, 1, 0, 0, R_GTD_EXPIRED),
    ]
    book.validate()
    assert book.next_expiry() == 9_000


def test_mass_cancel_with_filters_then_only_matching_orders_canceled_in_oid_order(book):
    limit(book, 5, BUY, 99, 1, account=1)
    limit(book, 3, SELL, 105, 1, account=1)
    limit(book, 4, BUY, 98, 1, account=2)
    limit(book, 1, BUY, 97, 1, account=1, instr=1)
    book.submit(2, 0, 1, BUY, STOP, GTC, 0, 1, stop_price=200)
    events = rows(book.mass_cancel(instr=0, account=1, side=BUY))
    assert events == [
        cancel(2, 0, 1, R_MASS_CANCEL),
        cancel(5, 99, 1, R_MASS_CANCEL),
    ]
    book.validate()
    events = rows(book.mass_cancel())
    assert [e[1] for e in events] == [1, 3, 4]
    assert book.resting_orders() == 0


# -- capacity and guards -------------------------------------------------------------------------


def test_book_full_then_new_resting_order_rejected_but_ioc_still_trades(book):
    for oid in range(MAX_ORDERS):
        limit(book, oid, SELL, 100 + oid % MAX_LEVELS, 1)
    assert limit(book, 99, BUY, 90, 1) == [(REJECT, 99, 0, 90, 1, 0, 0, R_BOOK_FULL)]
    assert limit(book, 98, BUY, 100, 1, tif=IOC) == [trade(98, 0, 100, 1, 0, 0)]


def test_price_levels_full_then_order_at_new_price_rejected(book):
    for i in range(MAX_LEVELS):
        limit(book, i, BUY, 90 + i, 1)
    assert limit(book, 50, BUY, 80, 1) == [(REJECT, 50, 0, 80, 1, 0, 0, R_PRICE_LEVELS_FULL)]
    assert limit(book, 51, BUY, 90, 1) == [rest(51, 90, 1)]


def test_duplicate_oid_then_rejected(book):
    limit(book, 1, BUY, 90, 1)
    assert limit(book, 1, SELL, 95, 1) == [(REJECT, 1, 0, 95, 1, 0, 0, R_DUPLICATE_BOOK_ORDER)]


def test_unknown_instrument_then_rejected(book):
    events = rows(book.submit(1, 9, 1, BUY, LIMIT, GTC, 90, 1))
    assert events == [(REJECT, 1, 0, 90, 1, 0, 0, R_UNKNOWN_BOOK_INSTRUMENT)]


def test_taker_touching_more_makers_than_limit_then_remainder_canceled(book):
    for oid in range(1, 8):
        limit(book, oid, SELL, 100, 1)
    events = limit(book, 20, BUY, 100, 10)
    assert events == [trade(20, oid, 100, 1, 10 - oid, 0) for oid in range(1, MAX_FILLS + 1)] + [
        cancel(20, 100, 5, R_MATCH_LIMIT_REACHED)
    ]
    assert book.best_bid(0) == 0 and book.depth(0, SELL, 1) == [(100, 2, 2)]
