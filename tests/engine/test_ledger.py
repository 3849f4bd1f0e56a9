"""The positions ledger: average cost and FIFO P&L, busts and corrections, transfers, revaluation,
snapshots and capacity. Money figures are tick·lots unless a name says minor units."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.constants import BUY, SELL
from engine.ledger import UNKNOWN, LedgerCode, PositionLedger
from engine.model import AccountSpec, InstrumentSpec, ReferenceData
from engine.portfolio import Portfolio

AVG, FIFO, BLOCK, C1, C2, EUR_ACC = 0, 1, 2, 3, 4, 5
X, Y = 0, 1  # X in USD (0.01 tick: 1 tick·lot = 1 cent), Y in EUR

REF = ReferenceData(
    [InstrumentSpec("X", "USD", Decimal("0.01"), 1, (Decimal("0.01"), Decimal("10000"))),
     InstrumentSpec("Y", "EUR", Decimal("0.01"), 1, (Decimal("0.01"), Decimal("10000")))],
    [AccountSpec("AVG"), AccountSpec("FIFO", pnl_method="fifo"), AccountSpec("BLOCK"),
     AccountSpec("C1"), AccountSpec("C2"), AccountSpec("EURACC", base_currency="EUR", fund="E")],
)


def new_ledger(fx=None, **capacity) -> PositionLedger:
    capacity = {"cells": 64, "lots": 256, "history": 512, **capacity}
    return PositionLedger(REF, Portfolio(REF, fx), **capacity)


def book(ledger, fills, prefix="e"):
    for n, (a, i, side, qty, px) in enumerate(fills):
        assert ledger.fill(f"{prefix}{n}", a, i, 0, side, qty, px) is None
    ledger.validate()


# -- AVERAGE COST ------------------------------------------------------------------------------


def test_average_cost_partial_sell_realises_fill_value_minus_cost_share():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 10, 100), (AVG, X, BUY, 10, 110), (AVG, X, SELL, 15, 120)])
    # cost 2100 over 20 lots; 15 sold remove floor(2100·15/20) = 1575; 15·120 − 1575 = 225
    assert (ledger.qty(AVG, X), ledger.cost(AVG, X), ledger.realised(AVG, X)) == (5, 525, 225)
    assert ledger.average_cost(AVG, X) == Fraction(105)


def test_average_cost_remainder_stays_in_basis_then_full_close_realises_sells_minus_buys():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 1, 100), (AVG, X, BUY, 2, 101), (AVG, X, SELL, 1, 110)])
    # cost 302 / 3 lots: one sold removes floor(302/3) = 100, the 2 of remainder stay
    assert (ledger.cost(AVG, X), ledger.realised(AVG, X)) == (202, 10)
    assert ledger.average_cost(AVG, X) == Fraction(101)
    book(ledger, [(AVG, X, SELL, 2, 90)], prefix="close")
    assert (ledger.qty(AVG, X), ledger.cost(AVG, X)) == (0, 0)
    assert ledger.realised(AVG, X) == (110 + 180) - (100 + 202)


def test_average_cost_short_cover_realises_proceeds_share_minus_price():
    ledger = new_ledger()
    book(ledger, [(AVG, X, SELL, 10, 120), (AVG, X, BUY, 4, 100)])
    # proceeds 1200 over −10 lots; covering 4 removes 480; 480 − 400 = 80
    assert (ledger.qty(AVG, X), ledger.cost(AVG, X), ledger.realised(AVG, X)) == (-6, -720, 80)
    assert ledger.average_cost(AVG, X) == Fraction(120)


@pytest.mark.parametrize("account", [AVG, FIFO])
def test_long_sell_through_zero_closes_then_opens_short_at_fill_price(account):
    ledger = new_ledger()
    book(ledger, [(account, X, BUY, 10, 100), (account, X, SELL, 15, 120)])
    assert (ledger.qty(account, X), ledger.cost(account, X), ledger.realised(account, X)) == (-5, -600, 200)
    assert ledger.average_cost(account, X) == Fraction(120)


@pytest.mark.parametrize("account", [AVG, FIFO])
def test_short_buy_through_zero_closes_then_opens_long_at_fill_price(account):
    ledger = new_ledger()
    book(ledger, [(account, X, SELL, 4, 50), (account, X, BUY, 6, 45)])
    assert (ledger.qty(account, X), ledger.cost(account, X), ledger.realised(account, X)) == (2, 90, 20)


# -- FIFO --------------------------------------------------------------------------------------


def test_fifo_partial_close_consumes_oldest_lot_first_and_leaves_the_rest_at_its_price():
    ledger = new_ledger()
    book(ledger, [(FIFO, X, BUY, 10, 100), (FIFO, X, BUY, 10, 110), (FIFO, X, SELL, 15, 120)])
    # 10 @100 and 5 of the 10 @110: (120−100)·10 + (120−110)·5 = 250
    assert ledger.realised(FIFO, X) == 250
    assert ledger.lots(FIFO, X) == [(5, 550)]
    assert (ledger.qty(FIFO, X), ledger.cost(FIFO, X)) == (5, 550)


def test_fifo_short_cover_realises_per_lot_with_cumulative_rounding():
    ledger = new_ledger()
    book(ledger, [(FIFO, X, SELL, 5, 120), (FIFO, X, SELL, 5, 110), (FIFO, X, BUY, 7, 100)])
    # 5 of the 120 lot: 600 − 500 = 100; 2 of the 110 lot: 220 − 200 = 20
    assert ledger.realised(FIFO, X) == 120
    assert ledger.lots(FIFO, X) == [(-3, -330)]


def test_fifo_same_price_fills_join_one_lot():
    ledger = new_ledger()
    book(ledger, [(FIFO, X, BUY, 3, 100), (FIFO, X, BUY, 4, 100), (FIFO, X, BUY, 1, 101)])
    assert ledger.lots(FIFO, X) == [(7, 700), (1, 101)]


def test_average_and_fifo_differ_on_the_same_fills():
    fills = [(BUY, 10, 100), (BUY, 10, 200), (SELL, 10, 150)]
    ledger = new_ledger()
    book(ledger, [(AVG, X, *f) for f in fills] + [(FIFO, X, *f) for f in fills])
    assert ledger.realised(AVG, X) == 0  # 1500 − 3000/2
    assert ledger.realised(FIFO, X) == 500  # 1500 − 1000


# -- LOCATIONS ---------------------------------------------------------------------------------


def test_position_by_location_sums_to_the_position():
    ledger = new_ledger()
    xnys, cust = ledger.location_index("XNYS"), ledger.custodian_index(AVG)
    assert ledger.fill("a", AVG, X, xnys, BUY, 10, 100) is None
    assert ledger.fill("b", AVG, X, cust, BUY, 5, 100) is None
    assert ledger.fill("c", AVG, X, 0, SELL, 3, 100) is None
    assert ledger.by_location(AVG, X) == {"INTERNAL": -3, "XNYS": 10, "CUSTODY": 5}
    assert ledger.position(AVG, X).qty == 12
    ledger.validate()


def test_location_capacity_grows_when_new_locations_register():
    ledger = new_ledger(locations=1)
    names = [f"V{j}" for j in range(5)]
    for n, name in enumerate(names):
        assert ledger.fill(n, AVG, X, ledger.location_index(name), BUY, 1, 100) is None
    assert ledger.by_location(AVG, X) == dict.fromkeys(names, 1)
    ledger.validate()


# -- BUST AND CORRECT --------------------------------------------------------------------------

SCRIPT = [(BUY, 10, 100), (BUY, 6, 104), (SELL, 12, 110), (BUY, 3, 98), (SELL, 9, 101), (BUY, 4, 97)]


@pytest.mark.parametrize("account", [AVG, FIFO])
def test_bust_of_a_middle_fill_equals_a_replay_without_it(account):
    busted, replay = new_ledger(), new_ledger()
    book(busted, [(account, X, *f) for f in SCRIPT])
    assert busted.bust("e2") is None
    book(replay, [(account, X, *f) for n, f in enumerate(SCRIPT) if n != 2])
    busted.validate()
    assert busted.cells() == replay.cells()


@pytest.mark.parametrize("account", [AVG, FIFO])
def test_correct_of_a_middle_fill_equals_a_replay_with_the_corrected_figures(account):
    corrected, replay = new_ledger(), new_ledger()
    book(corrected, [(account, X, *f) for f in SCRIPT])
    assert corrected.correct("e2", 20, 95) is None  # now crosses through zero
    book(replay, [(account, X, *(f if n != 2 else (SELL, 20, 95))) for n, f in enumerate(SCRIPT)])
    corrected.validate()
    assert corrected.cells() == replay.cells()


def test_bust_of_an_unknown_or_busted_id_is_refused():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 1, 100)])
    assert ledger.bust("nope")[0] is LedgerCode.UNKNOWN_ID
    assert ledger.correct("nope", 1, 1)[0] is LedgerCode.UNKNOWN_ID
    assert ledger.bust("e0") is None
    assert ledger.bust("e0")[0] is LedgerCode.ALREADY_BUSTED
    assert ledger.correct("e0", 1, 100)[0] is LedgerCode.ALREADY_BUSTED
    assert ledger.fill("e0", AVG, X, 0, BUY, 1, 100)[0] is LedgerCode.DUPLICATE_ID


def test_correct_with_invalid_figures_is_refused_and_changes_nothing():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 1, 100)])
    before = ledger.state_hash()
    assert ledger.correct("e0", 0, 100)[0] is LedgerCode.INVALID_QUANTITY
    assert ledger.correct("e0", 1, -5)[0] is LedgerCode.INVALID_PRICE
    assert ledger.state_hash() == before


# -- TRANSFERS ---------------------------------------------------------------------------------


def test_transfer_at_block_average_moves_position_and_cost_without_pnl():
    ledger = new_ledger()
    book(ledger, [(BLOCK, X, BUY, 10, 100), (BLOCK, X, BUY, 10, 101)])  # 20 lots cost 2010
    assert ledger.transfer("alloc-1", BLOCK, C1, X, 0, 12, 1206) is None
    assert ledger.transfer("alloc-2", BLOCK, C2, X, 0, 8, 804) is None
    assert (ledger.qty(BLOCK, X), ledger.cost(BLOCK, X), ledger.realised(BLOCK, X)) == (0, 0, 0)
    assert ledger.average_cost(C1, X) == Fraction(1005, 10)
    assert (ledger.qty(C2, X), ledger.cost(C2, X)) == (8, 804)
    ledger.validate()


def test_transfer_from_side_realises_the_difference_to_its_basis():
    ledger = new_ledger()
    book(ledger, [(BLOCK, X, BUY, 10, 100)])
    assert ledger.transfer("t", BLOCK, C1, X, 0, 10, 1003) is None
    assert ledger.realised(BLOCK, X) == 3
    assert ledger.cost(C1, X) == 1003


def test_transfer_bust_restores_both_accounts():
    ledger, fresh = new_ledger(), new_ledger()
    book(ledger, [(BLOCK, X, BUY, 10, 100), (C1, X, BUY, 2, 99)])
    book(fresh, [(BLOCK, X, BUY, 10, 100), (C1, X, BUY, 2, 99)])
    assert ledger.transfer("t", BLOCK, C1, X, 0, 7, 707) is None
    assert ledger.correct("t", 1, 1)[0] is LedgerCode.NOT_A_FILL
    assert ledger.bust("t") is None
    ledger.validate()
    assert ledger.cells() == fresh.cells()


def test_transfer_of_a_short_moves_it_to_the_client():
    ledger = new_ledger()
    book(ledger, [(BLOCK, X, SELL, 10, 100)])
    assert ledger.transfer("t", BLOCK, C1, X, 0, -10, 1000) is None
    assert (ledger.qty(BLOCK, X), ledger.qty(C1, X), ledger.cost(C1, X)) == (0, -10, -1000)
    assert ledger.realised(BLOCK, X) == 0


@pytest.mark.parametrize("client", [C1, FIFO])
def test_retransfer_equals_a_ledger_that_booked_the_new_figures_in_the_same_place(client):
    ledger, fresh = new_ledger(), new_ledger()
    for lg, (q1, v1), (q2, v2) in ((ledger, (6, 600), (4, 400)), (fresh, (9, 909), (1, 101))):
        book(lg, [(BLOCK, X, BUY, 10, 100)], prefix="a")
        assert lg.transfer("t1", BLOCK, client, X, 0, q1, v1) is None
        assert lg.transfer("t2", BLOCK, C2, X, 0, q2, v2) is None
        book(lg, [(client, X, SELL, 2, 105), (BLOCK, X, BUY, 2, 102)], prefix="b")
    # the block's next fill re-figures both allocations in place: 9 and 1 lots, at 101 a lot
    assert ledger.retransfer([("t1", 9, 909), ("t2", 1, 101)]) is None
    ledger.validate()
    assert ledger.cells() == fresh.cells()
    assert ledger.realised(client, X) == fresh.realised(client, X) and ledger.cost(C2, X) == 101


def test_retransfer_refused_changes_nothing():
    ledger = new_ledger()
    book(ledger, [(BLOCK, X, BUY, 10, 100)])
    assert ledger.transfer("t", BLOCK, C1, X, 0, 5, 500) is None
    before = ledger.cells()
    assert ledger.retransfer([("t", 6, 600), ("nope", 1, 1)])[0] is LedgerCode.UNKNOWN_ID
    assert ledger.retransfer([("t", 6, 600), ("e0", 1, 1)])[0] is LedgerCode.UNKNOWN_ID  # a fill
    assert ledger.retransfer([("t", 0, 600)])[0] is LedgerCode.INVALID_QUANTITY
    assert ledger.retransfer([("t", 6, 0)])[0] is LedgerCode.INVALID_NOTIONAL
    assert ledger.cells() == before
    assert ledger.bust("t") is None
    assert ledger.retransfer([("t", 6, 600)])[0] is LedgerCode.ALREADY_BUSTED
    ledger.validate()


def test_transfer_to_the_same_account_is_refused():
    ledger = new_ledger()
    assert ledger.transfer("t", C1, C1, X, 0, 1, 100)[0] is LedgerCode.SAME_ACCOUNT
    assert ledger.transfer("t", C1, C2, X, 0, 1, 0)[0] is LedgerCode.INVALID_NOTIONAL


# -- VALUATION ---------------------------------------------------------------------------------


def test_revalue_values_open_cells_and_flags_a_missing_mark_as_unknown():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 10, 100), (FIFO, Y, SELL, 5, 50), (C1, X, BUY, 1, 1),
                  (C1, X, SELL, 1, 2)])  # C1 is flat: not an open cell
    ledger.portfolio.tick(X, 0, 0, 103, 1)  # Y has no mark
    rv = ledger.revalue()
    got = {(int(a), int(i)): (int(u), bool(kn)) for a, i, u, kn in
           zip(rv.account, rv.instrument, rv.unrealised, rv.known, strict=True)}
    assert got == {(AVG, X): (30, True), (FIFO, Y): (UNKNOWN, False)}
    assert ledger.unrealised(FIFO, Y) is None
    assert ledger.position(AVG, X).unrealised == 30


def test_account_totals_convert_to_base_and_report_missing_fx_and_marks():
    ledger = new_ledger(fx={"EURUSD": Decimal("1.25")})
    book(ledger, [(EUR_ACC, X, BUY, 10, 100), (EUR_ACC, X, SELL, 5, 120), (EUR_ACC, Y, BUY, 1, 50)])
    ledger.portfolio.tick(X, 0, 0, 130, 1)
    ledger.portfolio.tick(Y, 0, 0, 60, 1)
    t = ledger.account_totals(EUR_ACC)
    assert t.realised_minor == {"USD": 100, "EUR": 0}  # 1 tick·lot = 1 cent
    assert t.unrealised_minor == {"USD": 150, "EUR": 10}
    assert t.realised_base == pytest.approx(0.80)
    assert t.unrealised_base == pytest.approx(1.5 / 1.25 + 0.10)
    assert t.missing_fx == [] and t.unpriced == []

    no_fx = new_ledger()
    book(no_fx, [(EUR_ACC, X, BUY, 1, 100)])
    t = no_fx.account_totals(EUR_ACC)
    assert t.missing_fx == ["USD"] and t.realised_base is None
    assert t.unpriced == ["X"] and t.unrealised_base is None


# -- SNAPSHOTS AND CAPACITY --------------------------------------------------------------------


def test_dump_then_load_keeps_the_state_hash_and_the_ledger_keeps_working():
    ledger = new_ledger()
    book(ledger, [(AVG, X, BUY, 10, 100), (FIFO, X, BUY, 3, 100), (FIFO, X, BUY, 3, 105)])
    ledger.transfer("t", AVG, C1, X, ledger.location_index("XLON"), 4, 400)
    ledger.bust("e1")
    restored = new_ledger()
    restored.load(ledger.dump())
    assert restored.state_hash() == ledger.state_hash()
    restored.validate()
    for led in (ledger, restored):
        assert led.fill("more", FIFO, X, 0, SELL, 2, 110) is None
    assert restored.state_hash() == ledger.state_hash()
    assert restored.cells() == ledger.cells()


def test_cells_capacity_exhausted_returns_a_code_and_changes_nothing():
    ledger = new_ledger(cells=1)
    book(ledger, [(AVG, X, BUY, 1, 100)])
    before = ledger.state_hash()
    code, text = ledger.fill("x", AVG, Y, 0, BUY, 1, 100)
    assert code is LedgerCode.CELLS_FULL and "cells capacity" in text
    assert ledger.transfer("t", AVG, C1, X, 0, 1, 100)[0] is LedgerCode.CELLS_FULL
    assert ledger.state_hash() == before
    assert ledger.fill("x", AVG, X, 0, BUY, 1, 100) is None  # the id was not consumed


def test_fifo_lots_capacity_exhausted_returns_a_code_but_same_price_and_closing_fills_book():
    ledger = new_ledger(lots=2)
    book(ledger, [(FIFO, X, BUY, 1, 100), (FIFO, X, BUY, 1, 101)])
    before = ledger.state_hash()
    assert ledger.fill("x", FIFO, X, 0, BUY, 1, 102)[0] is LedgerCode.LOTS_FULL
    assert ledger.state_hash() == before
    assert ledger.fill("same", FIFO, X, 0, BUY, 1, 101) is None  # joins the newest lot
    assert ledger.fill("cross", FIFO, X, 0, SELL, 5, 90) is None  # frees both, opens one
    assert ledger.lots(FIFO, X) == [(-2, -180)]
    ledger.validate()


def test_history_capacity_exhausted_returns_a_code():
    ledger = new_ledger(history=3)
    book(ledger, [(AVG, X, BUY, 1, 100), (AVG, X, BUY, 1, 100)])
    assert ledger.transfer("t", AVG, C1, X, 0, 1, 100)[0] is LedgerCode.HISTORY_FULL
    assert ledger.fill("x", AVG, X, 0, BUY, 1, 100) is None
    assert ledger.fill("y", AVG, X, 0, BUY, 1, 100)[0] is LedgerCode.HISTORY_FULL


@pytest.mark.parametrize(("args", "code"), [
    ((AVG, X, 0, BUY, 0, 100), LedgerCode.INVALID_QUANTITY),
    ((AVG, X, 0, BUY, -1, 100), LedgerCode.INVALID_QUANTITY),
    ((AVG, X, 0, BUY, 1, 0), LedgerCode.INVALID_PRICE),
    ((AVG, X, 0, 2, 1, 100), LedgerCode.INVALID_SIDE),
    ((99, X, 0, BUY, 1, 100), LedgerCode.UNKNOWN_ACCOUNT),
    ((AVG, -1, 0, BUY, 1, 100), LedgerCode.UNKNOWN_INSTRUMENT),
    ((AVG, X, 7, BUY, 1, 100), LedgerCode.UNKNOWN_LOCATION),
    ((AVG, X, 0, BUY, 1 << 40, 100), LedgerCode.TOO_LARGE),
])
def test_invalid_fill_is_refused_with_its_code(args, code):
    ledger = new_ledger()
    assert ledger.fill("x", *args)[0] is code
    assert ledger.cells() == {}


# -- PROPERTIES --------------------------------------------------------------------------------

fills_st = st.lists(
    st.tuples(st.sampled_from([AVG, FIFO]), st.sampled_from([X, Y]), st.sampled_from([0, 1]),
              st.sampled_from([BUY, SELL]), st.integers(1, 40), st.integers(1, 500)),
    min_size=1, max_size=30)


def _book_all(fills, skip=-1, corrected=None):
    ledger = new_ledger()
    ledger.location_index("XNYS")
    for n, (a, i, loc, side, qty, px) in enumerate(fills):
        if n == skip:
            continue
        if n == corrected:
            qty, px = CORRECTION
        assert ledger.fill(n, a, i, loc, side, qty, px) is None
    return ledger


CORRECTION = (7, 250)


@settings(max_examples=150, deadline=None)
@given(fills=fills_st, pick=st.integers(0, 10**6), marks=st.tuples(st.integers(1, 600), st.integers(1, 600)))
def test_bust_of_any_fill_equals_a_ledger_built_without_it_and_pnl_adds_up(fills, pick, marks):
    k = pick % len(fills)
    busted = _book_all(fills)
    assert busted.bust(k) is None
    busted.validate()
    assert busted.cells() == _book_all(fills, skip=k).cells()
    kept = [f for n, f in enumerate(fills) if n != k]
    for i, m in enumerate(marks):
        busted.portfolio.tick(i, 0, 0, m, 1)
    for a in (AVG, FIFO):
        for i in (X, Y):
            flows = sum((px * q if s == SELL else -px * q) for aa, ii, _, s, q, px in kept
                        if (aa, ii) == (a, i))
            pos = sum((q if s == BUY else -q) for aa, ii, _, s, q, _ in kept if (aa, ii) == (a, i))
            assert busted.qty(a, i) == pos
            assert busted.realised(a, i) + busted.unrealised(a, i) == flows + pos * marks[i]


@settings(max_examples=100, deadline=None)
@given(fills=fills_st, pick=st.integers(0, 10**6))
def test_correct_of_any_fill_equals_a_ledger_built_with_the_corrected_figures(fills, pick):
    k = pick % len(fills)
    ledger = _book_all(fills)
    assert ledger.correct(k, *CORRECTION) is None
    ledger.validate()
    assert ledger.cells() == _book_all(fills, corrected=k).cells()


def test_seeded_stress_of_fills_transfers_and_busts_keeps_invariants_and_replays_equal():
    rng = random.Random(7)
    ledger = new_ledger(cells=64, lots=4096, history=8192)
    log, live = [], []
    for n in range(3_000):
        r = rng.random()
        if r < 0.8:
            cmd = ("fill", n, rng.randrange(6), rng.randrange(2), 0, rng.randrange(2),
                   rng.randint(1, 30), rng.randint(90, 110))
            assert ledger.fill(*cmd[1:]) is None
        elif r < 0.9:
            fa, ta = rng.sample(range(6), 2)
            q = rng.randint(-20, 20) or 1
            cmd = ("transfer", n, fa, ta, rng.randrange(2), 0, q, abs(q) * rng.randint(90, 110))
            assert ledger.transfer(*cmd[1:]) is None
        else:
            if not live:
                continue
            cmd = ("bust", live.pop(rng.randrange(len(live))))
            assert ledger.bust(cmd[1]) is None
        if cmd[0] != "bust":
            live.append(n)
        log.append(cmd)
        if n % 500 == 0:
            ledger.validate()
    ledger.validate()
    busted = {c[1] for c in log if c[0] == "bust"}
    replay = new_ledger(cells=64, lots=4096, history=8192)
    for cmd in log:
        if cmd[0] != "bust" and cmd[1] not in busted:
            assert getattr(replay, cmd[0])(*cmd[1:]) is None
    assert replay.cells() == ledger.cells()


# -- END OF DAY --------------------------------------------------------------------------------


def _history_bound(ledger) -> int:
    """Open FIFO lots + open cells × locations: the most history rows an end of day may keep (a
    cell is open when it holds a position at some location, net flat or not)."""
    cells = ledger.cells().values()
    return (sum(len(c.lots) for c in cells)
            + sum(1 for c in cells if c.by_location) * len(ledger.locations))


def _same_state(got, want) -> None:
    assert got.cells() == want.cells()
    for a in range(len(REF.accounts)):
        for i in (X, Y):
            assert got.position(a, i) == want.position(a, i)
            assert got.lots(a, i) == want.lots(a, i)


def _day_one(ledger) -> None:
    """FIFO with two neighbouring lots of one price (never joined), a split of mixed signs over
    three locations, a flat cell with realised P&L, a transfer and a busted fill."""
    xnys, xlon = ledger.location_index("XNYS"), ledger.location_index("XLON")
    assert ledger.transfer("d1-t0", BLOCK, FIFO, X, 0, 3, 301) is None  # a lot of 3 for 301
    for n, (a, i, loc, side, qty, px) in enumerate([
        (FIFO, X, xnys, BUY, 2, 101), (FIFO, X, xlon, SELL, 2, 110), (FIFO, X, 0, BUY, 3, 100),
        (FIFO, X, 0, BUY, 1, 90), (AVG, X, xnys, BUY, 10, 100), (AVG, X, xlon, SELL, 3, 103),
        (AVG, X, 0, BUY, 1, 99), (AVG, Y, 0, BUY, 5, 40), (AVG, Y, xnys, SELL, 5, 47),
        (BLOCK, Y, 0, BUY, 9, 50), (FIFO, Y, xlon, SELL, 4, 20),
    ]):
        assert ledger.fill(f"d1-{n}", a, i, loc, side, qty, px) is None
    assert ledger.transfer("d1-t", BLOCK, C1, Y, xnys, 6, 305) is None
    assert ledger.bust("d1-3") is None


def test_end_of_day_keeps_every_position_and_forgets_the_days_ids():
    ledger, fresh = new_ledger(), new_ledger()
    _day_one(ledger)
    _day_one(fresh)
    assert ledger.end_of_day() is None
    ledger.validate()
    _same_state(ledger, fresh)
    assert ledger.lots(FIFO, X) == [(1, 101), (2, 202), (3, 300)]  # 301 − 2 × 100 left at 101
    assert ledger.by_location(FIFO, X) == {"INTERNAL": 6, "XNYS": 2, "XLON": -2}
    assert ledger.realised(AVG, Y) == 35 and ledger.qty(AVG, Y) == 0  # flat, P&L kept
    assert ledger.history_rows() <= _history_bound(ledger)
    for booking_id in ("d1-0", "d1-t", "d1-t0", "nope"):
        assert ledger.bust(booking_id)[0] is LedgerCode.UNKNOWN_ID
    assert ledger.correct("d1-2", 1, 100)[0] is LedgerCode.UNKNOWN_ID


@pytest.mark.parametrize("account", [AVG, FIFO, BLOCK, C1])
@pytest.mark.parametrize("instrument", [X, Y])
def test_after_end_of_day_a_fill_then_its_bust_gives_back_the_cell_exactly(account, instrument):
    ledger, fresh = new_ledger(), new_ledger()
    _day_one(ledger)
    _day_one(fresh)
    assert ledger.end_of_day() is None
    assert ledger.fill("d2-0", account, instrument, 0, SELL, 2, 120) is None
    assert ledger.bust("d2-0") is None  # replays the carried rows alone
    ledger.validate()
    _same_state(ledger, fresh)


def test_after_end_of_day_a_correction_replays_onto_the_carried_state():
    ledger, fresh = new_ledger(), new_ledger()
    _day_one(ledger)
    _day_one(fresh)
    assert ledger.end_of_day() is None
    for led in (ledger, fresh):
        assert led.fill("d2-0", FIFO, X, 0, SELL, 2, 120) is None
        assert led.fill("d2-1", FIFO, X, 0, BUY, 1, 101) is None  # joins the newest lot
    assert ledger.correct("d2-0", 9, 95) is None  # now crosses through zero
    assert fresh.correct("d2-0", 9, 95) is None
    ledger.validate()
    _same_state(ledger, fresh)


def test_dump_then_load_after_end_of_day_keeps_the_state_hash_and_busts_still_replay():
    ledger = new_ledger()
    _day_one(ledger)
    assert ledger.end_of_day() is None
    assert ledger.fill("d2-0", FIFO, X, 0, SELL, 2, 120) is None
    restored = new_ledger(history=8)
    restored.load(ledger.dump())
    assert restored.state_hash() == ledger.state_hash()
    restored.validate()
    for led in (ledger, restored):
        assert led.bust("d2-0") is None
        assert led.fill("d2-1", AVG, X, 0, SELL, 2, 120) is None
    assert restored.state_hash() == ledger.state_hash()
    assert len(restored._a["hist"]) == 512  # the capacity survives a dump of the rows in use


def test_end_of_day_that_cannot_carry_the_open_cells_is_refused_and_changes_nothing():
    ledger = new_ledger(history=3)
    xnys = ledger.location_index("XNYS")
    assert ledger.fill("a", FIFO, X, 0, BUY, 1, 100) is None
    assert ledger.fill("b", FIFO, X, xnys, BUY, 1, 101) is None
    before = ledger.state_hash()
    code, text = ledger.end_of_day()  # 2 lots at one location, then 2 moves: 4 rows > 3
    assert code is LedgerCode.HISTORY_FULL and "end of day" in text
    assert ledger.state_hash() == before
    assert ledger.bust("a") is None  # the day's ids are kept


booking_st = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from([AVG, FIFO, BLOCK]), st.sampled_from([X, Y]),
              st.integers(0, 2), st.sampled_from([BUY, SELL]), st.integers(1, 40), st.integers(1, 500)),
    st.tuples(st.just("transfer"), st.just(BLOCK), st.sampled_from([AVG, FIFO, C1]),
              st.sampled_from([X, Y]), st.integers(0, 2), st.integers(-30, 30).filter(bool),
              st.integers(1, 20_000)),
)


def _run_days(day1, day2, eod: bool, pre_bust: int | None, fix: tuple):
    ledger = new_ledger()
    ledger.location_index("XNYS")
    ledger.location_index("XLON")
    for n, (op, *args) in enumerate(day1):
        assert getattr(ledger, op)(n, *args) is None
    if pre_bust is not None:
        assert ledger.bust(pre_bust) is None
    if eod:
        assert ledger.end_of_day() is None
        ledger.validate()
        assert ledger.history_rows() <= _history_bound(ledger)
    for n, (op, *args) in enumerate(day2, start=len(day1)):
        assert getattr(ledger, op)(n, *args) is None
    booking_id, what = fix
    assert (ledger.bust(booking_id) if what == "bust" else ledger.correct(booking_id, *CORRECTION)) is None
    ledger.validate()
    return ledger


@settings(max_examples=150, deadline=None)
@given(day1=st.lists(booking_st, max_size=25), day2=st.lists(booking_st, min_size=1, max_size=15),
       picks=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()),
       marks=st.tuples(st.integers(1, 600), st.integers(1, 600)))
def test_end_of_day_then_more_bookings_and_a_bust_or_correction_equals_a_ledger_that_never_compacted(
        day1, day2, picks, marks):
    k = picks[0] % len(day2)
    fix = (len(day1) + k, "correct" if day2[k][0] == "fill" and picks[2] else "bust")
    pre_bust = picks[1] % len(day1) if day1 and picks[1] % 3 else None
    compacted = _run_days(day1, day2, True, pre_bust, fix)
    plain = _run_days(day1, day2, False, pre_bust, fix)
    for led in (compacted, plain):
        for i, m in enumerate(marks):
            led.portfolio.tick(i, 0, 0, m, 1)
    _same_state(compacted, plain)
    for a in range(len(REF.accounts)):
        assert compacted.account_totals(a) == plain.account_totals(a)
    if day1:
        assert compacted.bust(picks[1] % len(day1))[0] is LedgerCode.UNKNOWN_ID


def test_stress_of_five_history_capacities_with_end_of_day_between_days_never_fills_the_history():
    rng = random.Random(11)
    capacity = 512
    ledger = new_ledger(cells=64, lots=4096, history=capacity)
    oracle = new_ledger(cells=64, lots=4096, history=16_384)  # never compacts
    for led in (ledger, oracle):
        led.location_index("XNYS")
    rows, n = 0, 0
    while rows < 5 * capacity:
        day = []
        for _ in range(200):
            n += 1
            r = rng.random()
            if r < 0.75:
                cmd = ("fill", n, rng.randrange(6), rng.randrange(2), rng.randrange(2),
                       rng.randrange(2), rng.randint(1, 30), rng.randint(90, 110))
                rows += 1
            elif r < 0.9:
                fa, ta = rng.sample(range(6), 2)
                q = rng.randint(-20, 20) or 1
                cmd = ("transfer", n, fa, ta, rng.randrange(2), rng.randrange(2), q,
                       abs(q) * rng.randint(90, 110))
                rows += 2
            elif day:
                cmd = ("bust", day.pop(rng.randrange(len(day))))
            else:
                continue
            for led in (ledger, oracle):
                assert getattr(led, cmd[0])(*cmd[1:]) is None, (cmd, led.history_rows())
            if cmd[0] != "bust":
                day.append(n)
        assert ledger.end_of_day() is None
        ledger.validate()
        assert ledger.history_rows() <= _history_bound(ledger)
        assert ledger.cells() == oracle.cells()
    oracle.validate()
    assert rows >= 5 * capacity and oracle.history_rows() > capacity
