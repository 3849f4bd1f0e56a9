"""The exposure cache: touches, reprices and refreshes give the answers of a full recomputation,
and the risk stage keeps it current through the pipeline (live, batched, restored)."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.constants import OrderType, RejectCode, Side
from engine.messages import (
    CancelOrder,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    PriceTick,
    SetKillSwitch,
    SubmitOrder,
)
from engine.pipeline import Pipeline
from engine.portfolio import Portfolio
from engine.refbook import ReferenceBook
from kilat.config import load_config
from risk.config import AccountLimits, LimitRow, RiskConfig, UserLimits
from risk.engine import RiskEngine, _fixed
from risk.stage import RiskStage
from tests.risk.test_risk_checks import AAPL, FUND1, MSFT, REF, buy, code, make_engine, only

ACCOUNTS = list(REF.account_index)
N_I = len(REF.by_index)
MARKS = [10_000, 20_000, 16_000, 2_500, 2_000, 108_000, 150_000, 6_000_000]  # AAPL, MSFT, ESH4, SAP, 7203, EURUSD, USDJPY, BTCUSDT (ticks)
assert len(MARKS) == N_I, "a mark per instrument of the default config"
CONFIG = RiskConfig(
    allow_no_reference_price=True,  # limit orders on an unpriced instrument reach the exposure check
    limits=[LimitRow(max_order_qty=10**9, max_order_notional=Decimal("1e14"),
                     price_collar_pct=Decimal(50), max_position=10**12)],
    accounts=[AccountLimits(max_gross_exposure=Decimal("60000"), max_net_exposure=Decimal("30000"),
                            max_orders_per_window=100, max_modifies_per_window=100),
              AccountLimits(account="MM1", max_gross_exposure=Decimal("250000"),
                            max_net_exposure=Decimal("90000"), max_orders_per_window=100,
                            max_modifies_per_window=100)],
    users=[UserLimits(max_orders_per_window=100, max_modifies_per_window=100)],
)


def _portfolio() -> Portfolio:
    pf = Portfolio(REF, {"EURUSD": Decimal("1.08"), "USDJPY": Decimal(150)})
    for i, mark in enumerate(MARKS):
        pf.tick(i, 0, 0, mark, 1)
    return pf


def _probes(pf: Portfolio, rng: random.Random, n: int) -> list[SubmitOrder]:
    out = []
    for k in range(n):
        i = rng.randrange(N_I)
        ref = pf.reference_price(i) or MARKS[i]
        out.append(SubmitOrder(rng.choice(ACCOUNTS), f"p{k}", REF.by_index[i].symbol,
                               rng.choice([Side.BUY, Side.SELL]), rng.choice([1, 7, 40, 300, 5_000]),
                               order_type=OrderType.LIMIT, price=ref, ts=k, user="bob"))
    return out


def _reference_exposure(pf: Portfolio, a: int) -> tuple[float, float] | None:
    """Gross and net in base currency units by the docstring's formula, in plain Python floats."""
    base = int(pf.account_base[a])
    gross = long_ = short = 0.0
    for j, inst in enumerate(REF.by_index):
        p, b, s = (int(x[a, j]) for x in (pf.position, pf.working_buy, pf.working_sell))
        if p == b == s == 0:
            continue
        c = int(pf.inst_currency[j])
        mark, fx = pf.reference_price(j), float(pf.fx[c, base])
        if mark == 0 or np.isnan(fx):
            return None
        spec = inst.spec
        v = mark * float(Fraction(spec.tick_size * spec.lot_size * spec.multiplier)) * fx
        gross += max(abs(p + b), abs(p - s)) * v
        long_ += (p + b) * v
        short += (p - s) * v
    return gross, max(abs(long_), abs(short))


def _step(rng: random.Random, risk: RiskEngine, pf: Portfolio) -> None:
    """One random change to the portfolio, told to the cache as the risk stage would tell it."""
    a, i = rng.randrange(len(ACCOUNTS)), rng.randrange(N_I)
    what = rng.random()
    if what < 0.35:
        pf.position[a, i] = rng.choice([0, rng.randint(-300, 300)]) if i != 2 else rng.randint(-3, 3)
        risk.touch(a, i)
    elif what < 0.6:
        side = pf.working_buy if rng.random() < 0.5 else pf.working_sell
        side[a, i] = rng.choice([0, rng.randint(1, 200)])
        risk.touch(a, i)
    elif what < 0.8:
        if rng.random() < 0.15:
            pf.last[i] = pf.bid[i] = pf.ask[i] = 0  # no price at all
        else:
            pf.tick(i, 0, 0, max(1, MARKS[i] + rng.randint(-MARKS[i] // 5, MARKS[i] // 5)), 1)
        risk.reprice(only(i))
    elif what < 0.88:
        pf.set_fx("EURUSD", rng.uniform(0.9, 1.3))
        risk.reprice(np.zeros(N_I, dtype=np.bool_))  # an FX move: everything is revalued
    elif what < 0.93:
        jpy = pf.currency_index["JPY"]
        if np.isnan(pf.fx[jpy, 0]) or rng.random() < 0.5:
            pf.set_fx("USDJPY", 150.0)
        else:  # the JPY rates become unknown
            pf.fx[jpy, :] = np.nan
            pf.fx[:, jpy] = np.nan
            pf.fx[jpy, jpy] = 1.0
        risk.reprice(only(i))
    elif what < 0.96:
        pf.position[a, i] = rng.choice([1, -1]) * 10**12  # beyond the int64 sums: the float scan
        risk.touch(a, i)
    else:
        pf.position[a, :] = 0  # many cells at once: a rebuild
        risk.refresh()


def test_cache_when_random_changes_touched_and_repriced_then_answers_match_a_fresh_engine():
    rng = random.Random(20261126)
    pf = _portfolio()
    risk = RiskEngine(CONFIG, REF, pf)
    seen: set[int | None] = set()
    for _ in range(400):
        _step(rng, risk, pf)
        risk.validate()
        fresh = RiskEngine(CONFIG, REF, pf)  # a full recomputation from the portfolio
        probes = _probes(pf, rng, 12)
        answers = [risk.check_submit(p) for p in probes]
        assert answers == [fresh.check_submit(p) for p in probes]
        assert risk.check_batch(probes) == fresh.check_batch(probes)
        seen.update(code(r) for r in answers)
        for a, view in enumerate(risk.view().accounts):
            expected = _reference_exposure(pf, a)
            if expected is None or view.gross_exposure is None or expected[0] > 1e13:
                continue
            # each instrument's term is rounded to 1/256 of a minor unit: well inside 0.001
            assert view.gross_exposure == pytest.approx(expected[0], rel=1e-9, abs=1e-3)
            assert view.net_exposure == pytest.approx(expected[1], rel=1e-9, abs=1e-3)
    assert {None, RejectCode.RISK_GROSS_EXPOSURE, RejectCode.RISK_NET_EXPOSURE,
            RejectCode.RISK_NO_REFERENCE_PRICE, RejectCode.RISK_NO_FX_RATE} <= seen, seen


def test_marks_when_price_moves_then_exposure_uses_the_last_reprice_until_repriced_again():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10000.00")
    pf.position[FUND1, MSFT] = 25  # 25 × 200.00 = 5000
    risk.touch(FUND1, MSFT)
    assert risk.check_submit(buy(50)) is None  # + 50 × 100.00 = 10000.00
    pf.tick(MSFT, 0, 0, 20_100, 2)
    assert risk.check_submit(buy(50)) is None  # not repriced yet: MSFT still at 200.00
    risk.reprice(only(MSFT))
    assert code(risk.check_submit(buy(50))) == RejectCode.RISK_GROSS_EXPOSURE


def test_check_when_own_cell_changed_but_not_touched_then_reads_it_live():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10000.00")
    pf.working_buy[FUND1, AAPL] = 60  # not touched: the order's own cell is read live anyway
    assert code(risk.check_submit(buy(41))) == RejectCode.RISK_GROSS_EXPOSURE
    assert risk.check_submit(buy(40)) is None


def test_validate_when_a_change_was_not_touched_then_names_what_differs():
    risk, pf = make_engine()
    pf.position[FUND1, MSFT] = 3
    with pytest.raises(AssertionError, match=r"long lots at \(0, 1\) is 0"):
        risk.validate()
    risk.touch(FUND1, MSFT)
    risk.validate()
    pf.tick(MSFT, 0, 0, 20_500, 2)
    with pytest.raises(AssertionError, match="mark at"):
        risk.validate()


def test_huge_position_when_sums_would_overflow_then_float_scan_decides():
    risk, pf = make_engine()
    pf.position[FUND1, MSFT] = 10**12  # 2e14 USD: past the int64 sums, valued in float64
    risk.touch(FUND1, MSFT)
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_GROSS_EXPOSURE
    assert "projected gross exposure 200000000000100.00 USD exceeds max 1000000000000.00" in refusal[1]
    pf.position[FUND1, AAPL] = -2 * 10**12  # short as much value: net is 0, gross still huge
    risk.touch(FUND1, AAPL)
    risk.set_limit("FUND1", "*", "max_gross_exposure", "1e15")
    assert risk.check_submit(buy(1)) is None


def test_batch_when_cache_touched_inside_then_state_returns_exactly():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10000.00")
    before = risk._expo.copy(), risk._c_long.copy(), risk._c_short.copy()
    answers = risk.check_batch([buy(60), buy(40, ts=1), buy(1, ts=2)])
    assert answers[:2] == [None, None] and code(answers[2]) == RejectCode.RISK_GROSS_EXPOSURE
    after = risk._expo, risk._c_long, risk._c_short
    assert all(np.array_equal(x, y) for x, y in zip(before, after, strict=True))
    risk.validate()


@given(value=st.integers(min_value=-10**19, max_value=10**19), digits=st.integers(0, 6))
def test_fixed_when_any_integer_then_same_text_as_decimal(value, digits):
    assert _fixed(value, digits) == str(Decimal(value).scaleb(-digits))


# -- THROUGH THE PIPELINE --------------------------------------------------------------------------


def _commands(rng: random.Random, pipe, n: int) -> list:
    out = []
    for k in range(n):
        ts = 1_000 + k
        what = rng.random()
        i = rng.randrange(N_I)
        symbol, inst = REF.by_index[i].symbol, REF.by_index[i]
        ref = pipe.portfolio.reference_price(i) or MARKS[i]
        ref = min(max(ref, inst.band_low), inst.band_high)
        if what < 0.6:
            out.append(SubmitOrder(rng.choice(ACCOUNTS), f"s{ts}", symbol,
                                   rng.choice([Side.BUY, Side.SELL]), rng.randint(1, 20),
                                   price=ref + rng.randint(-2, 2), ts=ts, user="bob"))
        elif what < 0.72:
            live = [o for o in pipe.orders.values() if o.is_working]
            if live:
                o = rng.choice(live)
                out.append(CancelOrder(o.account, o.order_id, ts=ts, user="bob"))
        elif what < 0.8:
            live = [o for o in pipe.orders.values() if o.is_working and not o.order_type]
            if live:
                o = rng.choice(live)
                out.append(ModifyOrder(o.account, o.order_id, qty=o.qty + rng.randint(-1, 5),
                                       ts=ts, user="bob"))
        elif what < 0.95:
            out.append(PriceTick(symbol, 0, 0, ref + rng.randint(-ref // 50, ref // 50), ts, "admin"))
        elif what < 0.97:
            out.append(MassCancel(account=rng.choice(ACCOUNTS), ts=ts, user="admin"))
        elif what < 0.99:
            on = rng.random() < 0.5
            out.append(SetKillSwitch("account", rng.choice(ACCOUNTS), on, ts=ts, user="admin"))
        else:
            out.append(EndOfDay(ts=ts, user="admin"))
    return out


def _risk_pipeline(config) -> Pipeline:
    """The pipeline with the risk stage only (compliance has its own tests)."""
    portfolio = Portfolio(REF, config.fx_rates)
    stage = RiskStage(RiskEngine(config.risk, REF, portfolio))
    return Pipeline(REF, ReferenceBook(N_I, 10_000, 64, 100), stages=(stage,), portfolio=portfolio)


def test_risk_stage_when_random_commands_then_cache_matches_a_rebuild_after_every_batch():
    rng = random.Random(7)
    config = load_config()
    pipe = _risk_pipeline(config)
    risk_stage = pipe.stages[0]
    for i, symbol in enumerate(REF.by_index):
        pipe.process(PriceTick(symbol.symbol, 0, 0, MARKS[i], 1, "admin"))
    for round_ in range(60):
        cmds = _commands(rng, pipe, rng.randint(1, 12))
        if round_ % 2:
            pipe.process_batch(cmds)
        else:
            for cmd in cmds:
                pipe.process(cmd)
        risk_stage.engine.validate()
    assert risk_stage.observe([], pipe) == []
    assert np.count_nonzero(pipe.portfolio.position) > 0  # fills happened
    restored = _risk_pipeline(config)
    restored.restore(pipe.snapshot())
    restored.stages[0].engine.validate()
    assert restored.state_hash() == pipe.state_hash()
    probes = _probes(pipe.portfolio, rng, 40)
    assert ([restored.stages[0].engine.check_submit(p) for p in probes]
            == [risk_stage.engine.check_submit(p) for p in probes])
