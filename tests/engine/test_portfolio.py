"""The portfolio: exact cash holds, marks, and FX from the price stream with derived crosses."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from engine.model import ConfigError
from engine.portfolio import Portfolio, minor_units
from kilat.config import check_config, load_config

CONFIG = load_config()
REF = check_config(CONFIG)
EURUSD, USDJPY = REF.instruments["EURUSD"].index, REF.instruments["USDJPY"].index


def test_minor_units_come_from_cldr_and_unknown_codes_are_refused():
    assert (minor_units("USD"), minor_units("JPY"), minor_units("BHD")) == (2, 0, 3)
    with pytest.raises(ConfigError, match="not an ISO 4217"):
        minor_units("ZZZ")


def test_fx_from_currency_pair_prices_derives_the_cross_and_reports_missing_as_nan():
    pf = Portfolio(REF)  # no configured rates
    eur, usd, jpy = (pf.currency_index[c] for c in ("EUR", "USD", "JPY"))
    assert math.isnan(pf.fx[eur, usd]) and pf.fx[usd, usd] == 1.0
    pf.tick(EURUSD, 0, 0, 108_000, 1)  # 1.08000
    assert pf.fx[eur, usd] == pytest.approx(1.08) and pf.fx[usd, eur] == pytest.approx(1 / 1.08)
    assert math.isnan(pf.fx[eur, jpy])  # no leg against JPY yet: missing, never 1
    pf.tick(USDJPY, 0, 0, 150_000, 2)  # 150.000
    assert pf.fx[eur, jpy] == pytest.approx(162.0)  # the cross through USD
    assert pf.fx[jpy, eur] == pytest.approx(1 / 162.0)
    pf.tick(USDJPY, 0, 0, 151_000, 3)  # a leg moves: the cross follows
    assert pf.fx[eur, jpy] == pytest.approx(1.08 * 151)


def test_a_direct_quote_wins_over_the_cross_and_state_survives_dump_and_load():
    pf = Portfolio(REF, {"EURUSD": Decimal("1.10"), "USDJPY": Decimal("150"), "EURJPY": Decimal("160")})
    eur, jpy = pf.currency_index["EUR"], pf.currency_index["JPY"]
    assert pf.fx[eur, jpy] == pytest.approx(160.0)
    again = Portfolio(REF)
    again.load(pf.dump())
    assert again.state_hash() == pf.state_hash() and again.fx[eur, jpy] == pytest.approx(160.0)


def test_a_buy_holds_exact_minor_units_and_partial_fills_release_them_to_zero():
    from engine.constants import Side
    from engine.orders import Order, Transition

    pf = Portfolio(REF)
    i = REF.instruments["7203"].index  # JPY, lot 100, tick 1: one lot at 2,500 is 250,000 yen
    order = Order(1, "FUND1", "c", "7203", i, Side.BUY, 0, 0, 2_500, 0, 3, 0, False, 0, 1)
    a, jpy = REF.account_index["FUND1"], pf.currency_index["JPY"]
    pf.open(order)
    order.apply(Transition.ACCEPT, 1)
    assert pf.held[a, jpy] == 750_000
    for qty in (1, 2):
        order.fill(qty, 2_499, 2)
        pf.fill(order, qty, 2_499)
    assert pf.held[a, jpy] == 0 and pf.position[a, i] == 3
    assert pf.cash[a, jpy] == 500_000_000 - 3 * 249_900
