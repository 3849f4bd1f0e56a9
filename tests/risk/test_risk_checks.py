"""Scenario tests of each pre-trade risk check: firing, not firing, and the edge at the limit."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from engine.constants import OrderType, RejectCode, Side
from engine.messages import ModifyOrder, SubmitOrder
from engine.model import ConfigError
from engine.orders import Order, OrderStatus
from engine.portfolio import Portfolio
from kilat.config import check_config, load_config
from risk.config import AccountLimits, LimitRow, RiskConfig, UserLimits
from risk.engine import RiskEngine

REF = check_config(load_config())
AAPL, MSFT, SAP = 0, 1, 3
FUND1, FUND2 = 0, 1
MS = 1_000_000  # ns
GENEROUS = RiskConfig(
    limits=[LimitRow(max_order_qty=1_000_000, max_order_notional=Decimal("1e12"),
                     price_collar_pct=Decimal(10), max_position=10_000_000)],
    accounts=[AccountLimits(max_gross_exposure=Decimal("1e12"), max_net_exposure=Decimal("1e12"),
                            max_orders_per_window=1000, max_modifies_per_window=1000)],
    users=[UserLimits(max_orders_per_window=1000, max_modifies_per_window=1000)],
)


def make_engine(config: RiskConfig = GENEROUS, fx=None, cash: int = 10**12):
    """An engine on the default config: AAPL last 100.00, MSFT 200.00, SAP 50.00 EUR; each
    account holds ``cash`` minor units of USD and EUR."""
    pf = Portfolio(REF, {"EURUSD": Decimal("1.08"), "USDJPY": Decimal(150)} if fx is None else fx)
    pf.tick(AAPL, 0, 0, 10_000, 1)
    pf.tick(MSFT, 0, 0, 20_000, 1)
    pf.tick(SAP, 0, 0, 2_500, 1)
    for ccy in ("USD", "EUR"):
        if ccy in pf.currency_index:
            pf.cash[:, pf.currency_index[ccy]] = cash
    return RiskEngine(config, REF, pf), pf


def buy(qty, price=10_000, symbol="AAPL", account="FUND1", user="alice", ts=0, **kw):
    return SubmitOrder(account, f"c{ts}", symbol, Side.BUY, qty, price=price, ts=ts, user=user, **kw)


def sell(qty, price=10_000, symbol="AAPL", account="FUND1", user="alice", ts=0, **kw):
    return SubmitOrder(account, f"c{ts}", symbol, Side.SELL, qty, price=price, ts=ts, user=user, **kw)


def order_of(cmd: SubmitOrder, order_id: int = 1, cum_qty: int = 0) -> Order:
    return Order(order_id, cmd.account, cmd.cl_ord_id, cmd.symbol, REF.instruments[cmd.symbol].index,
                 cmd.side, cmd.order_type, cmd.tif, cmd.price, cmd.stop_price, cmd.qty,
                 cmd.display_qty, cmd.post_only, cmd.expire_ts, cmd.ts, OrderStatus.NEW, cum_qty)


def code(refusal):
    return None if refusal is None else refusal[0]


def only(*instruments: int) -> np.ndarray:
    """A ``reprice`` argument flagging ``instruments``."""
    changed = np.zeros(len(REF.by_index), dtype=np.bool_)
    changed[list(instruments)] = True
    return changed


# -- ORDER SIZE, NOTIONAL, COLLAR ------------------------------------------------------------------


def test_buy_when_qty_equals_max_order_qty_then_passes_and_one_more_is_denied():
    risk, _ = make_engine()
    risk.set_limit("FUND1", "AAPL", "max_order_qty", 100)
    assert risk.check_submit(buy(100)) is None
    refusal = risk.check_submit(buy(101))
    assert refusal == (RejectCode.RISK_MAX_ORDER_QTY, "qty 101 exceeds max order qty 100 for FUND1/AAPL")
    assert risk.check_submit(buy(101, account="FUND2")) is None  # the limit is FUND1's only


def test_buy_when_notional_equals_limit_then_passes():
    risk, _ = make_engine()
    risk.set_limit("*", "AAPL", "max_order_notional", "1000.00")
    assert risk.check_submit(buy(10, price=10_000)) is None  # 10 × 100.00 = 1000.00 USD
    refusal = risk.check_submit(buy(10, price=10_001))
    assert code(refusal) == RejectCode.RISK_MAX_ORDER_NOTIONAL
    assert "1000.10 USD exceeds max order notional 1000.0000 USD" in refusal[1]


def test_notional_limit_on_star_symbol_is_in_each_instruments_currency():
    risk, _ = make_engine()
    risk.set_limit("*", "*", "max_order_notional", "50000")
    assert risk.check_submit(buy(20, symbol="SAP", price=2_500)) is None  # 20 × 50 = 1000 EUR
    assert code(risk.check_submit(buy(1001, symbol="SAP", price=2_500))) == RejectCode.RISK_MAX_ORDER_NOTIONAL


def test_limit_price_when_on_collar_edge_then_passes_and_one_tick_beyond_is_denied():
    risk, _ = make_engine()
    risk.set_limit("*", "*", "price_collar_pct", "5")
    assert risk.check_submit(buy(1, price=10_500)) is None
    assert risk.check_submit(sell(1, price=9_500)) is None
    assert code(risk.check_submit(buy(1, price=10_501))) == RejectCode.RISK_PRICE_COLLAR
    assert code(risk.check_submit(sell(1, price=9_499))) == RejectCode.RISK_PRICE_COLLAR


def test_market_order_when_reference_exists_then_passes_collar_and_is_valued_at_reference():
    risk, _ = make_engine()
    risk.set_limit("*", "*", "price_collar_pct", "0")
    risk.set_limit("*", "AAPL", "max_order_notional", "1000")
    assert risk.check_submit(buy(10, price=0, order_type=OrderType.MARKET)) is None
    assert code(risk.check_submit(buy(11, price=0, order_type=OrderType.MARKET))) == RejectCode.RISK_MAX_ORDER_NOTIONAL


# -- REFERENCE PRICE: fail-closed ---------------------------------------------------------------


def test_limit_order_when_no_reference_price_then_denied():
    risk, pf = make_engine()
    pf.last[AAPL] = 0
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_NO_REFERENCE_PRICE and "AAPL" in refusal[1]


def test_limit_order_when_no_reference_but_config_allows_then_passes_and_market_still_denied():
    config = RiskConfig(allow_no_reference_price=True, limits=GENEROUS.limits,
                        accounts=GENEROUS.accounts, users=GENEROUS.users)
    risk, pf = make_engine(config)
    pf.last[AAPL] = 0
    assert risk.check_submit(buy(1)) is None
    assert code(risk.check_submit(buy(1, price=0, order_type=OrderType.MARKET))) == RejectCode.RISK_NO_REFERENCE_PRICE


def test_reference_price_when_only_two_sided_quote_then_mid_is_used():
    risk, pf = make_engine()
    pf.last[AAPL] = 0
    pf.tick(AAPL, 9_900, 10_100, 0, 2)
    risk.set_limit("*", "*", "price_collar_pct", "1")
    assert risk.check_submit(buy(1, price=10_100)) is None
    assert code(risk.check_submit(buy(1, price=10_101))) == RejectCode.RISK_PRICE_COLLAR


# -- POSITION -----------------------------------------------------------------------------------


def test_buy_when_position_plus_working_plus_order_equals_limit_then_passes():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_position", 100)
    pf.position[FUND1, AAPL] = 90
    pf.working_buy[FUND1, AAPL] = 5
    assert risk.check_submit(buy(5)) is None
    refusal = risk.check_submit(buy(6))
    assert refusal == (RejectCode.RISK_POSITION_LIMIT,
                       "projected position 101 lots exceeds position limit 100 for FUND1/AAPL")


def test_sell_when_short_position_reaches_limit_then_denied():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_position", 100)
    pf.position[FUND1, AAPL] = -90
    pf.working_sell[FUND1, AAPL] = 5
    assert risk.check_submit(sell(5)) is None
    assert code(risk.check_submit(sell(6))) == RejectCode.RISK_POSITION_LIMIT


def test_sell_when_it_reduces_a_position_over_the_limit_then_passes():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_position", 100)
    pf.position[FUND1, AAPL] = 500
    assert risk.check_submit(sell(500)) is None
    assert code(risk.check_submit(buy(1))) == RejectCode.RISK_POSITION_LIMIT


def test_sells_when_stacked_working_sells_would_flip_the_position_then_not_reducing():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_position", 100)
    pf.position[FUND1, AAPL] = 300
    pf.working_sell[FUND1, AAPL] = 300  # already enough working to flatten
    refusal = risk.check_submit(sell(150))  # would take it to -150 if everything fills
    assert code(refusal) == RejectCode.RISK_POSITION_LIMIT


# -- EXPOSURE -----------------------------------------------------------------------------------


def test_buy_when_gross_exposure_equals_limit_then_passes():
    risk, _ = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10000.00")
    assert risk.check_submit(buy(100)) is None  # 100 lots × 100.00 USD
    refusal = risk.check_submit(buy(101))
    assert code(refusal) == RejectCode.RISK_GROSS_EXPOSURE
    assert "projected gross exposure 10100.00 USD exceeds max 10000.00 USD for account FUND1" in refusal[1]


def test_gross_exposure_counts_working_orders_and_both_sides():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10000.00")
    pf.position[FUND1, MSFT] = -20  # 20 × 200.00 = 4000 short
    pf.working_buy[FUND1, AAPL] = 50  # 5000 long if filled
    risk.touch(FUND1, MSFT)  # as the pipeline's risk stage does after every change to a cell
    risk.touch(FUND1, AAPL)
    assert risk.check_submit(buy(10)) is None  # 4000 + 6000
    assert code(risk.check_submit(buy(11))) == RejectCode.RISK_GROSS_EXPOSURE


def test_buy_when_net_exposure_exceeds_limit_then_denied_while_hedging_sell_passes():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_net_exposure", "10000")
    pf.position[FUND1, AAPL] = 100  # 10000 USD long
    risk.touch(FUND1, AAPL)
    assert code(risk.check_submit(buy(1, symbol="MSFT", price=20_000))) == RejectCode.RISK_NET_EXPOSURE
    assert risk.check_submit(sell(40, symbol="MSFT", price=20_000)) is None  # net long 2000


def test_exposure_in_base_currency_converts_with_fx():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "*", "max_gross_exposure", "1080.00")  # USD base; SAP in EUR
    assert risk.check_submit(buy(20, symbol="SAP", price=2_500)) is None  # 1000 EUR = 1080 USD
    assert code(risk.check_submit(buy(21, symbol="SAP", price=2_500))) == RejectCode.RISK_GROSS_EXPOSURE


def test_exposure_when_held_instrument_has_no_price_then_denied():
    risk, pf = make_engine()
    pf.position[FUND1, MSFT] = 10
    pf.last[MSFT] = 0
    risk.touch(FUND1, MSFT)
    risk.reprice(only(MSFT))  # the price change reaches risk's marks
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_NO_REFERENCE_PRICE and "MSFT" in refusal[1]


def test_exposure_when_fx_rate_unknown_then_denied():
    risk, pf = make_engine(fx={"USDJPY": Decimal(150)})  # no EUR rate at all
    refusal = risk.check_submit(buy(1, symbol="SAP", price=2_500))
    assert code(refusal) == RejectCode.RISK_NO_FX_RATE and "EURUSD" in refusal[1]


def test_reduce_only_sell_when_exposure_over_limit_then_passes():
    risk, pf = make_engine()
    pf.position[FUND1, AAPL] = 1000  # 100,000 USD
    risk.set_limit("FUND1", "*", "max_gross_exposure", "10")
    risk.set_limit("FUND1", "*", "max_net_exposure", "10")
    assert risk.check_submit(sell(1000)) is None
    assert code(risk.check_submit(sell(1001))) == RejectCode.RISK_GROSS_EXPOSURE


# -- BUYING POWER -------------------------------------------------------------------------------


def test_buy_when_notional_equals_available_cash_then_passes():
    risk, pf = make_engine(cash=0)
    usd = pf.currency_index["USD"]
    pf.cash[FUND1, usd] = 150_000
    pf.held[FUND1, usd] = 50_000  # 1000.00 USD available
    assert risk.check_submit(buy(10)) is None
    refusal = risk.check_submit(buy(11))
    assert refusal == (RejectCode.RISK_BUYING_POWER,
                       "buy needs 1100.00 USD but FUND1 has 1000.00 USD available")


def test_sell_when_no_cash_then_passes_buying_power():
    risk, _ = make_engine(cash=0)
    assert risk.check_submit(sell(10)) is None


def test_buy_covering_a_short_when_no_cash_then_passes():
    risk, pf = make_engine(cash=0)
    pf.position[FUND1, AAPL] = -10
    assert risk.check_submit(buy(10)) is None
    assert code(risk.check_submit(buy(11))) == RejectCode.RISK_BUYING_POWER


# -- THROTTLES ----------------------------------------------------------------------------------


def test_orders_when_account_rate_reached_then_denied_until_oldest_leaves_the_window():
    risk, _ = make_engine()
    risk.set_limit("FUND1", "*", "max_orders_per_window", 3)
    for ts in (0, 10 * MS, 20 * MS):
        assert risk.check_submit(buy(1, ts=ts)) is None
        risk.note_submit(buy(1, ts=ts))
    refusal = risk.check_submit(buy(1, ts=999 * MS))
    assert refusal == (RejectCode.RISK_ORDER_RATE,
                       "account FUND1 reached 3 orders per 1000 ms; expected fewer in the window")
    assert risk.check_submit(buy(1, ts=1000 * MS)) is None  # the order at 0 has left (ts - 1 s]


def test_orders_when_user_rate_reached_then_denied_on_every_account():
    config = RiskConfig(limits=GENEROUS.limits, accounts=GENEROUS.accounts,
                        users=[UserLimits(max_orders_per_window=2, max_modifies_per_window=2)])
    risk, _ = make_engine(config)
    risk.note_submit(buy(1, account="FUND1", user="bob", ts=1))
    risk.note_submit(buy(1, account="FUND2", user="bob", ts=2))
    assert code(risk.check_submit(buy(1, account="MM1", user="bob", ts=3))) == RejectCode.RISK_ORDER_RATE
    assert risk.check_submit(buy(1, account="MM1", user="alice", ts=3)) is None


def test_modifies_when_rate_reached_then_denied_but_orders_still_pass():
    risk, _ = make_engine()
    risk.set_limit("FUND1", "*", "max_modifies_per_window", 1)
    first = buy(10, ts=1)
    risk.note_modify(ModifyOrder("FUND1", 1, qty=9, ts=2, user="alice"))
    refusal = risk.check_modify(ModifyOrder("FUND1", 1, qty=8, ts=3, user="alice"), order_of(first))
    assert code(refusal) == RejectCode.RISK_MODIFY_RATE
    assert risk.check_submit(buy(1, ts=3)) is None


# -- KILL SWITCHES AND TRADING STATES -------------------------------------------------------------


@pytest.mark.parametrize("scope,target", [("global", ""), ("account", "FUND1"), ("user", "alice")])
def test_order_when_kill_switch_on_then_denied_and_off_again_passes(scope, target):
    risk, _ = make_engine()
    assert risk.set_kill_switch(scope, target, True) is None
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_KILL_SWITCH and "only cancels" in refusal[1]
    assert code(risk.check_modify(ModifyOrder("FUND1", 1, qty=5, user="alice"), order_of(buy(10)))) == RejectCode.RISK_KILL_SWITCH
    assert risk.set_kill_switch(scope, target, False) is None
    assert risk.check_submit(buy(1)) is None


def test_order_when_instrument_halted_then_denied_even_if_reducing():
    risk, pf = make_engine()
    pf.position[FUND1, AAPL] = 10
    risk.set_trading_state("*", "AAPL", "HALTED")
    assert code(risk.check_submit(sell(1))) == RejectCode.RISK_HALTED
    assert code(risk.check_modify(ModifyOrder("FUND1", 1, qty=5), order_of(buy(10)))) == RejectCode.RISK_HALTED
    assert risk.check_submit(buy(1, symbol="MSFT", price=20_000)) is None


def test_order_when_account_reducing_then_only_reducing_orders_pass():
    risk, pf = make_engine()
    pf.position[FUND1, AAPL] = 10
    risk.set_trading_state("FUND1", "*", "REDUCING")
    assert risk.check_submit(sell(10)) is None
    assert code(risk.check_submit(sell(11))) == RejectCode.RISK_REDUCE_ONLY
    assert code(risk.check_submit(buy(1))) == RejectCode.RISK_REDUCE_ONLY
    assert risk.check_submit(buy(1, account="FUND2")) is None


def test_state_when_global_halt_and_account_active_then_most_restrictive_wins():
    risk, _ = make_engine()
    risk.set_trading_state("*", "*", "HALTED")
    risk.set_trading_state("FUND1", "AAPL", "ACTIVE")
    assert code(risk.check_submit(buy(1))) == RejectCode.RISK_HALTED
    risk.set_trading_state("*", "*", "ACTIVE")
    assert risk.check_submit(buy(1)) is None


# -- FAIL-CLOSED --------------------------------------------------------------------------------


def test_order_when_no_limit_configured_then_denied():
    risk, _ = make_engine(RiskConfig(accounts=GENEROUS.accounts, users=GENEROUS.users))
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_NO_LIMIT and "max_order_qty" in refusal[1]


def test_order_when_no_rate_limit_configured_then_denied():
    risk, _ = make_engine(RiskConfig(limits=GENEROUS.limits, accounts=GENEROUS.accounts))
    refusal = risk.check_submit(buy(1))
    assert code(refusal) == RejectCode.RISK_NO_LIMIT and "(user)" in refusal[1]


def test_order_when_account_unknown_then_denied():
    risk, _ = make_engine()
    assert code(risk.check_submit(buy(1, account="NOPE"))) == RejectCode.RISK_NO_LIMIT
    assert code(risk.check_submit(buy(1, symbol="NOPE"))) == RejectCode.RISK_NO_LIMIT


def test_unsetting_the_default_limit_then_orders_are_denied():
    risk, _ = make_engine()
    assert risk.set_limit("*", "*", "max_position", None) is None
    assert code(risk.check_submit(buy(1))) == RejectCode.RISK_NO_LIMIT
    assert risk.check_submit(sell(1)) is not None  # flat: a sell is not reducing either


# -- MODIFY -------------------------------------------------------------------------------------


def test_modify_when_qty_increase_exceeds_limit_then_denied_and_decrease_passes():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "AAPL", "max_order_qty", 100)
    risk.set_limit("FUND1", "*", "max_position", 150)
    original = buy(150)  # accepted before the limits were tightened
    pf.working_buy[FUND1, AAPL] = 150
    assert risk.check_modify(ModifyOrder("FUND1", 1, qty=120), order_of(original)) is None
    assert code(risk.check_modify(ModifyOrder("FUND1", 1, qty=151), order_of(original))) == RejectCode.RISK_MAX_ORDER_QTY


def test_modify_when_only_the_increase_breaks_buying_power_then_denied():
    risk, pf = make_engine(cash=0)
    usd = pf.currency_index["USD"]
    pf.cash[FUND1, usd] = 200_000  # 2000.00 USD
    pf.held[FUND1, usd] = 100_000  # the order's own hold: 10 × 100.00
    pf.working_buy[FUND1, AAPL] = 10
    assert risk.check_modify(ModifyOrder("FUND1", 1, qty=20), order_of(buy(10))) is None
    assert code(risk.check_modify(ModifyOrder("FUND1", 1, qty=21), order_of(buy(10)))) == RejectCode.RISK_BUYING_POWER


def test_modify_when_new_price_outside_collar_then_denied():
    risk, _ = make_engine()
    risk.set_limit("*", "*", "price_collar_pct", "5")
    assert code(risk.check_modify(ModifyOrder("FUND1", 1, price=11_000), order_of(buy(10)))) == RejectCode.RISK_PRICE_COLLAR
    assert risk.check_modify(ModifyOrder("FUND1", 1, price=10_400), order_of(buy(10))) is None


# -- CONFIGURATION ------------------------------------------------------------------------------


@pytest.mark.parametrize("config,field", [
    (RiskConfig(limits=[LimitRow(max_order_notional=Decimal("1.00001"))]), "max_order_notional"),
    (RiskConfig(limits=[LimitRow(account="NOPE")]), "risk.limits[0].account"),
    (RiskConfig(limits=[LimitRow(symbol="NOPE")]), "risk.limits[0].symbol"),
    (RiskConfig(limits=[LimitRow(price_collar_pct=Decimal("0.001"))]), "price_collar_pct"),
    (RiskConfig(limits=[LimitRow(max_order_qty=-1)]), "max_order_qty"),
    (RiskConfig(accounts=[AccountLimits(max_gross_exposure=Decimal("0.001"))]), "max_gross_exposure"),
    (RiskConfig(accounts=[AccountLimits(), AccountLimits()]), "duplicate"),
    (RiskConfig(throttle_window_ms=0), "throttle_window_ms"),
])
def test_config_when_value_does_not_convert_then_config_error_names_the_field(config, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        make_engine(config)


def test_config_decodes_from_toml():
    import msgspec

    text = b"""
allow_no_reference_price = false
throttle_window_ms = 500
[[limits]]
account = "*"
symbol = "*"
max_order_qty = 100
max_order_notional = "100000"
price_collar_pct = "5"
max_position = 1000
[[accounts]]
account = "*"
max_gross_exposure = "1000000"
max_net_exposure = "500000"
max_orders_per_window = 100
max_modifies_per_window = 100
[[users]]
user = "*"
max_orders_per_window = 50
max_modifies_per_window = 50
"""
    config = msgspec.toml.decode(text, type=RiskConfig)
    risk, _ = make_engine(config)
    assert risk.check_submit(buy(100)) is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.toml.decode(b"max_orders = 1", type=RiskConfig)
