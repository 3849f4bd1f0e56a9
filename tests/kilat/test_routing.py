"""Smart order routing through the wired pipeline: internal cross first, then children split over
the venues by price and displayed size; venue reports fill, reject, cancel, bust and correct the
parent; duplicates are refused before the journal; replay routes exactly as the live run did."""

from __future__ import annotations

import msgspec
import pytest

from engine.constants import OrderType, RejectCode, Side
from engine.journal import JournalWriter
from engine.messages import (
    ChildCancelRequested,
    ChildOrderRouted,
    ChildOrderUpdated,
    CommandError,
    EndOfDay,
    ModifyOrder,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderFilled,
    OrderRejected,
    SetKillSwitch,
    SubmitOrder,
    TradeBusted,
    VenueAccepted,
    VenueCanceled,
    VenueFilled,
    VenueQuote,
    VenueRejected,
    VenueSessionChanged,
    VenueTradeBust,
    VenueTradeCorrection,
)
from engine.recovery import recover
from engine.refbook import ReferenceBook
from kilat.config import VenueSpec, check_config, load_config
from kilat.service import build_pipeline
from tests.conftest import TRANSPORT_CONFIG

CONFIG = msgspec.structs.replace(load_config(TRANSPORT_CONFIG), venues=[
    VenueSpec("XSIM1", instruments=["AAPL", "MSFT"]), VenueSpec("XSIM2", instruments=["AAPL"])])
REF = check_config(CONFIG)
A = REF.account_index
AAPL = REF.instruments["AAPL"].index
T = 1_700_000_000_000_000_000  # a Tuesday; every command's time counts from it
U = "tester"


def pipeline(journal=None):
    p = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    for venue in ("XSIM1", "XSIM2"):
        p.process(VenueSessionChanged(venue, True, "logon", T, U))
    return p


def quotes(p, ts=T, x1=(18_990, 300, 19_010, 200), x2=(18_995, 100, 19_005, 100)):
    p.process(VenueQuote("XSIM1", "AAPL", *x1, ts, U))
    p.process(VenueQuote("XSIM2", "AAPL", *x2, ts, U))


def sor(qty=1_000, price=19_020, cl="p1", side=Side.BUY, ts=T + 1, **kw):
    return SubmitOrder("FUND1", cl, "AAPL", side, qty, price=price, ts=ts, user=U, route="SOR", **kw)


def routed(events) -> list[tuple[str, int, int]]:
    return [(e.venue, e.qty, e.price) for e in events if type(e) is ChildOrderRouted]


def child_ids(events) -> dict[str, int]:
    return {e.venue: e.child_id for e in events if type(e) is ChildOrderRouted}


def assert_replays(p, journal, tmp_path) -> None:
    journal.commit()
    fresh = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.state_hash() == p.state_hash()


def test_sor_crosses_internally_at_the_venues_best_then_splits_by_price_and_displayed_size(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    quotes(p)  # best asks: XSIM2 190.05 × 100, XSIM1 190.10 × 200
    # client offers in Kilat's book: 50 at 190.00 (better than the venues), 50 at 190.08 (worse)
    p.process(SubmitOrder("MM1", "m1", "AAPL", Side.SELL, 50, price=19_000, ts=T, user=U))
    p.process(SubmitOrder("MM1", "m2", "AAPL", Side.SELL, 50, price=19_008, ts=T, user=U))
    events = p.process(sor())
    assert type(events[0]) is OrderAccepted
    internal = [(e.last_qty, e.last_px) for e in events if type(e) is OrderFilled and e.account == "FUND1"]
    assert internal == [(50, 19_000)]  # 190.08 is worse than XSIM2's 190.05: not crossed
    # 950 left: XSIM2 takes its 100 shown, XSIM1 its 200, the rest joins the best venue (XSIM2)
    assert sorted(routed(events)) == [("XSIM1", 200, 19_020), ("XSIM2", 750, 19_020)]
    order = p.orders[events[0].order_id]
    assert (order.cum_qty, order.leaves_qty, order.status.value) == (50, 950, "PartiallyFilled")
    assert p.book.order(order.order_id) is None  # the parent works through its children
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_venue_fills_make_the_parents_fills_and_average_and_book_at_the_venue(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    quotes(p)
    events = p.process(sor(qty=300))
    kids = child_ids(events)
    oid = events[0].order_id
    assert type(p.process(VenueAccepted("XSIM2", kids["XSIM2"], "X2-1", T + 2, U))[0]) is ChildOrderUpdated
    f1 = p.process(VenueFilled("XSIM2", kids["XSIM2"], "E1", 100, 19_005, T + 3, U))
    f2 = p.process(VenueFilled("XSIM1", kids["XSIM1"], "E1", 200, 19_010, T + 4, U))  # same id, other venue
    fills = [e for e in f1 + f2 if type(e) is OrderFilled]
    assert [(f.venue, f.last_qty, f.last_px) for f in fills] == [("XSIM2", 100, 19_005), ("XSIM1", 200, 19_010)]
    order = p.orders[oid]
    assert order.status.value == "Filled" and order.notional == 100 * 19_005 + 200 * 19_010
    assert fills[-1].avg_px == pytest.approx((100 * 19_005 + 200 * 19_010) / 300)
    a = A["FUND1"]
    by_location = dict(p.ledger.position(a, AAPL).by_location)
    assert by_location == {"XSIM1": 200, "XSIM2": 100}
    # a repeated execution is refused before the journal and changes nothing
    seq = p.seq
    again = p.process(VenueFilled("XSIM2", kids["XSIM2"], "E1", 100, 19_005, T + 5, U))
    assert type(again[0]) is CommandError and p.seq == seq
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_a_rejected_child_is_rerouted_and_when_no_venue_is_left_the_parent_ends_canceled(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    quotes(p)
    events = p.process(sor(qty=300))
    kids = child_ids(events)
    oid = events[0].order_id
    again = p.process(VenueRejected("XSIM1", kids["XSIM1"], 5000, "price band", T + 2, U))
    assert routed(again) == [("XSIM2", 200, 19_020)]  # XSIM1's 200 go to the venue left
    assert p.orders[oid].is_working
    p.process(VenueFilled("XSIM2", kids["XSIM2"], "F1", 100, 19_005, T + 3, U))
    second = child_ids(again)["XSIM2"]
    last = p.process(VenueRejected("XSIM2", second, 5000, "halted", T + 4, U))
    assert not routed(last)  # every venue refused this parent, and no child works: it ends
    late = p.process(VenueCanceled("XSIM2", kids["XSIM2"], 0, "closing", T + 5, U))
    assert type(late[0]) is CommandError  # that child was Filled: the venue cannot cancel it
    order = p.orders[oid]
    assert order.status.value == "Canceled" and order.cum_qty == 100
    cancel = next(e for e in last if type(e) is OrderCanceled)
    assert cancel.code == RejectCode.VENUE_REJECTED and cancel.canceled_qty == 200
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_cancel_asks_each_venue_and_the_parent_ends_when_they_confirm(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    quotes(p)
    events = p.process(sor(qty=300))
    kids, oid = child_ids(events), events[0].order_id
    p.process(VenueFilled("XSIM1", kids["XSIM1"], "F1", 50, 19_010, T + 2, U))
    from engine.messages import CancelOrder

    asked = p.process(CancelOrder("FUND1", oid, ts=T + 3, user=U))
    assert sorted(e.venue for e in asked if type(e) is ChildCancelRequested) == ["XSIM1", "XSIM2"]
    assert p.orders[oid].status.value == "PendingCancel"
    twice = p.process(CancelOrder("FUND1", oid, ts=T + 4, user=U))
    assert type(twice[0]) is OrderCancelRejected
    p.process(VenueCanceled("XSIM2", kids["XSIM2"], 100, "canceled", T + 5, U))
    assert p.orders[oid].status.value == "PendingCancel"  # XSIM1 has not confirmed yet
    end = p.process(VenueCanceled("XSIM1", kids["XSIM1"], 150, "canceled", T + 6, U))
    canceled = next(e for e in end if type(e) is OrderCanceled)
    assert (canceled.canceled_qty, canceled.code) == (250, RejectCode.CANCEL_REQUESTED)
    assert p.orders[oid].status.value == "Canceled"
    pf = p.portfolio
    assert pf.working_buy[A["FUND1"], AAPL] == 0 and pf.position[A["FUND1"], AAPL] == 50
    modify = p.process(ModifyOrder("FUND1", oid, price=19_000, ts=T + 7, user=U))
    assert type(modify[0]) is OrderCancelRejected
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_venues_down_are_avoided_direct_routes_to_them_are_refused_and_sor_then_rests_internally():
    p = pipeline()
    quotes(p)
    p.process(VenueSessionChanged("XSIM2", False, "silent 3 heartbeats", T + 1, U))
    events = p.process(sor(qty=300, ts=T + 2))
    assert sorted(routed(events)) == [("XSIM1", 300, 19_020)]
    direct = p.process(SubmitOrder("FUND1", "d1", "AAPL", Side.BUY, 10, price=19_000, ts=T + 3, user=U,
                                   route="XSIM2"))
    assert type(direct[0]) is OrderRejected and direct[0].code == RejectCode.VENUE_DOWN
    unlisted = p.process(SubmitOrder("FUND1", "d2", "MSFT", Side.BUY, 10, price=30_000, ts=T + 3, user=U,
                                     route="XSIM2"))
    assert unlisted[0].code == RejectCode.UNKNOWN_VENUE
    stop = p.process(sor(cl="s1", order_type=OrderType.STOP_LIMIT, stop_price=19_000))
    assert stop[0].code == RejectCode.ROUTE_NOT_SUPPORTED
    p.process(VenueSessionChanged("XSIM1", False, "disconnected", T + 4, U))
    rest = p.process(sor(cl="p2", qty=40, price=18_000, ts=T + 5))
    assert not routed(rest) and p.book.order(rest[0].order_id) is not None  # works in Kilat's book
    p.validate()


def test_stale_quotes_are_not_used_for_price_but_an_up_venue_still_takes_the_order():
    p = pipeline()
    quotes(p, ts=T)
    stale_after = CONFIG.feeds.stale_after_ms * 1_000_000
    events = p.process(sor(qty=100, ts=T + stale_after + 1))
    assert routed(events) == [("XSIM1", 100, 19_020)]  # no live quote: the first venue in config order


def test_a_venue_bust_and_correction_fix_the_parent_and_its_child(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    quotes(p)
    events = p.process(sor(qty=300))
    kids, oid = child_ids(events), events[0].order_id
    p.process(VenueFilled("XSIM1", kids["XSIM1"], "F1", 200, 19_010, T + 2, U))
    p.process(VenueFilled("XSIM2", kids["XSIM2"], "F2", 60, 19_005, T + 3, U))
    busted = p.process(VenueTradeBust("XSIM2", "F2", "venue error", T + 4, U))
    assert [type(e) for e in busted] == [TradeBusted]
    order = p.orders[oid]
    assert (order.cum_qty, order.qty) == (200, 240)  # the busted lots leave the order, as inside
    corrected = p.process(VenueTradeCorrection("XSIM1", "F1", 150, 19_000, "wrong size", T + 5, U))
    assert corrected[0].qty == 150 and order.notional == 150 * 19_000
    child = p.router.children[kids["XSIM1"]]
    assert (child.cum_qty, child.qty) == (150, 150)
    unknown = p.process(VenueTradeBust("XSIM1", "nope", "", T + 6, U))
    assert type(unknown[0]) is CommandError
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_kill_switch_and_end_of_day_cancel_routed_orders_through_their_venues():
    p = pipeline()
    quotes(p)
    first = p.process(sor(qty=100))
    second = p.process(sor(cl="p2", qty=100, ts=T + 2))
    out = p.process(SetKillSwitch("account", "FUND1", True, "runaway", T + 3, U))
    asked = [e for e in out if type(e) is ChildCancelRequested]
    assert {e.parent_id for e in asked} == {first[0].order_id, second[0].order_id}
    for e in asked:
        p.process(VenueCanceled(e.venue, e.child_id, 100, "canceled", T + 4, U))
    assert {p.orders[e.parent_id].status.value for e in asked} == {"Canceled"}
    p.process(SetKillSwitch("account", "FUND1", False, "", T + 5, U))
    third = p.process(sor(cl="p3", qty=100, ts=T + 6))
    eod = p.process(EndOfDay(T + 7, U))
    assert [e.child_id for e in eod if type(e) is ChildCancelRequested] == [child_ids(third)["XSIM2"]]
    assert p.orders[third[0].order_id].status.value == "PendingCancel"  # until the venue confirms
    p.validate()


def test_unknown_venue_and_unknown_child_reports_are_refused():
    p = pipeline()
    assert type(p.process(VenueQuote("XNOPE", "AAPL", 1, 1, 2, 1, T, U))[0]) is CommandError
    assert p.process(VenueFilled("XSIM1", 99, "E", 1, 1, T, U))[0].code == RejectCode.UNKNOWN_CHILD_ORDER
    events = p.process(sor(qty=10))
    kid = child_ids(events)
    venue, cid = next(iter(kid.items()))
    other = "XSIM1" if venue == "XSIM2" else "XSIM2"
    assert p.process(VenueFilled(other, cid, "E", 1, 19_000, T, U))[0].code == RejectCode.UNKNOWN_CHILD_ORDER
    assert p.process(VenueFilled(venue, cid, "E", 11, 19_000, T, U))[0].code == RejectCode.INVALID_QUANTITY
    no_venues = build_pipeline(load_config(TRANSPORT_CONFIG), check_config(load_config(TRANSPORT_CONFIG)),
                               ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    assert no_venues.process(sor())[0].code == RejectCode.UNKNOWN_VENUE
