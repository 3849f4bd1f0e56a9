"""The routing rule on its own: cross limits, the split by price and displayed size, where the
rest goes, stale quotes and sessions, and a property test of the plan's sums."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.constants import BUY, SELL
from engine.model import AccountSpec, InstrumentSpec, ReferenceData
from engine.routing import Router

REF = ReferenceData([InstrumentSpec("X", "USD", Decimal("0.01"), 1, (Decimal("0.01"), Decimal("10000")))],
                    [AccountSpec("A")])
STALE = 1_000


def router(n=3) -> Router:
    r = Router(REF, [(f"V{k}", []) for k in range(n)], STALE)
    for k in range(n):
        r.on_session(f"V{k}", True)
    return r


def test_cross_limit_is_the_best_live_opposite_quote_capped_by_the_limit():
    r = router()
    r.on_quote("V0", 0, 99, 10, 102, 10, 0)
    r.on_quote("V1", 0, 100, 10, 101, 10, 0)
    assert r.cross_limit(0, BUY, 105, 10) == 101 and r.cross_limit(0, BUY, 100, 10) == 100
    assert r.cross_limit(0, SELL, 90, 10) == 100 and r.cross_limit(0, BUY, 0, 10) == 101  # market
    assert r.cross_limit(0, BUY, 105, 10 + STALE + 1) == 105  # stale quotes: the limit itself


def test_plan_takes_best_price_first_then_larger_size_then_config_order_and_the_rest_joins_the_best():
    r = router()
    r.on_quote("V0", 0, 0, 0, 101, 5, 0)
    r.on_quote("V1", 0, 0, 0, 100, 3, 0)
    r.on_quote("V2", 0, 0, 0, 101, 7, 0)
    assert r.plan(0, BUY, 12, 101, 0) == [("V1", 3), ("V2", 7), ("V0", 2)]
    assert r.plan(0, BUY, 20, 101, 0) == [("V1", 8), ("V2", 7), ("V0", 5)]  # 5 beyond shown: to V1
    assert r.plan(0, BUY, 20, 100, 0) == [("V1", 20)]  # only V1 within the limit
    assert r.plan(0, BUY, 4, 101, 0, exclude={"V1"}) == [("V2", 4)]


def test_with_no_opposite_quote_the_order_joins_the_best_bid_venue_else_the_first_up():
    r = router()
    r.on_quote("V1", 0, 98, 5, 0, 0, 0)
    r.on_quote("V2", 0, 99, 5, 0, 0, 0)
    assert r.plan(0, BUY, 10, 100, 0) == [("V2", 10)]
    r.on_session("V2", False)
    assert r.plan(0, BUY, 10, 100, 0) == [("V1", 10)]
    assert router().plan(0, BUY, 10, 100, 0) == [("V0", 10)]
    down = router()
    for k in range(3):
        down.on_session(f"V{k}", False)
    assert down.plan(0, BUY, 10, 100, 0) == []


def test_unlisted_and_duplicate_venues_are_refused_and_state_round_trips():
    with pytest.raises(ValueError, match="unknown instrument"):
        Router(REF, [("V0", ["NOPE"])], STALE)
    with pytest.raises(ValueError, match="each MIC once"):
        Router(REF, [("V0", []), ("V0", [])], STALE)
    r = router()
    r.on_quote("V2", 0, 1, 2, 3, 4, 5)
    r.add_child(7, "V2", 10, 100)
    r.fills[("V2", "E1")] = 3
    fresh = router(3)
    fresh.load(r.dump())
    assert fresh.state_hash() == r.state_hash() and fresh.working(7)[0].qty == 10
    fresh.validate()


@settings(max_examples=200, deadline=None)
@example([(0, 0, 0), (1, 1, 0), (2, 0, 0)], 2, 0, SELL, [False, True, True])  # a price showing no size
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 50), st.integers(0, 3000)), min_size=3, max_size=3),
       st.integers(1, 500), st.integers(0, 120), st.sampled_from([BUY, SELL]), st.lists(st.booleans(), min_size=3, max_size=3))
def test_a_plan_places_every_lot_once_per_venue_within_the_limit_or_nothing(quotes, qty, limit, side, up):
    r = router()
    for k, (price, size, age) in enumerate(quotes):
        r.on_quote(f"V{k}", 0, price, size, price, size, 0)
        r.on_session(f"V{k}", up[k])
        r.quotes[k, 0, 4] = -age  # quote times in the past
    plan = r.plan(0, side, qty, limit, 0)
    if not any(up):
        assert plan == []
        return
    venues = [v for v, _ in plan]
    assert sum(n for _, n in plan) == qty and len(venues) == len(set(venues)) and all(n > 0 for _, n in plan)
    assert all(up[int(v[1])] for v in venues)
    live = [k for k, (price, size, age) in enumerate(quotes)
            if up[k] and price and age <= STALE and (not limit or (price <= limit if side == BUY else price >= limit))]
    for v, n in plan:  # a venue shown within the limit never gets more than it shows, but the first
        k = int(v[1])
        if k in live and v != plan[0][0] and n > quotes[k][1]:
            pytest.fail(f"{v} got {n} lots but shows {quotes[k][1]}")
