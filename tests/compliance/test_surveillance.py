"""Surveillance detectors, scenario by scenario: each firing, not firing, and at its edges."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance import surveillance_kernels as sk
from compliance.surveillance import (
    FrontRunningConfig,
    LayeringConfig,
    MarkingCloseConfig,
    OrderToTradeConfig,
    SpoofingConfig,
    Surveillance,
    SurveillanceConfig,
    WashTradesConfig,
)
from compliance.surveillance_kernels import K_CANCEL, K_FILL, K_NEW, K_REPLACE
from engine.constants import R_CANCEL_REQUESTED, R_IOC_REMAINDER
from engine.model import AccountSpec, ConfigError, InstrumentSpec, ReferenceData

BUY, SELL = 0, 1
MS = 1_000_000
T0 = int(datetime(2024, 3, 5, 10, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()) * 10**9
CLOSE = int(datetime(2024, 3, 5, 16, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()) * 10**9


def make_ref() -> ReferenceData:
    instruments = [InstrumentSpec(sym, "USD", Decimal("0.01"), 1, (Decimal(1), Decimal(1000)))
                   for sym in ("AAA", "BBB")]
    accounts = [AccountSpec("X1", owner="X"), AccountSpec("X2", owner="X"), AccountSpec("B1"),
                AccountSpec("CLIENT"), AccountSpec("HOUSE")]
    return ReferenceData(instruments, accounts)


REF = make_ref()
SMALL = {"max_owner_instruments": 64, "max_account_instruments": 64}


def surv(**tables) -> Surveillance:
    """A surveillance with only the given detectors enabled (others off), small capacities."""
    off = {name: type(getattr(SurveillanceConfig(), name))(enabled=False)
           for name in ("wash_trades", "spoofing", "layering", "marking_close", "order_to_trade",
                        "front_running")}
    return Surveillance(SurveillanceConfig(**(off | tables | SMALL)), REF)


class Rows:
    """Builds event rows for one Surveillance: ids and owners filled in, times in ms after T0."""

    def __init__(self, s: Surveillance):
        self.s = s
        self.rows: list[list[int]] = []
        self.exec_id = 0

    def add(self, kind, ms, account, side, oid, qty=100, price=1000, instr=0, maker=0,
            order_qty=None, leaves=0, order_ms=None, code=0, exec_id=0, base=T0):
        acc = REF.account_index[account]
        ts = base + int(ms * MS)
        order_ts = ts if order_ms is None else base + int(order_ms * MS)
        self.rows.append([kind, ts, acc, self.s._owner_of[acc], instr, side, oid, exec_id, qty,
                          price, maker, qty if order_qty is None else order_qty, leaves, order_ts,
                          code])
        return self

    def new(self, ms, account, side, oid, qty=100, price=1000, **kw):
        return self.add(K_NEW, ms, account, side, oid, qty, price, leaves=qty, **kw)

    def fill(self, ms, account, side, oid, qty=100, price=1000, **kw):
        self.exec_id += 1
        return self.add(K_FILL, ms, account, side, oid, qty, price, exec_id=self.exec_id, **kw)

    def cancel(self, ms, account, side, oid, qty=100, code=R_CANCEL_REQUESTED, **kw):
        return self.add(K_CANCEL, ms, account, side, oid, qty, code=code, **kw)

    def run(self):
        out = self.s.process(np.array(self.rows, dtype=np.int64))
        self.rows = []
        return out


# -- 1 WASH TRADES ---------------------------------------------------------------------------------


def test_wash_when_owner_trades_with_itself_across_two_accounts_then_one_finding():
    s = surv(wash_trades=WashTradesConfig(window_ms=1000))
    r = Rows(s).new(0, "X1", SELL, 1).new(1, "X2", BUY, 2)
    r.fill(1, "X2", BUY, 2).fill(1, "X1", SELL, 1, maker=1)
    [f] = r.run()
    assert (f.detector, f.account, f.symbol, f.severity) == ("wash_trades", "X1", "AAA", "high")
    assert set(f.order_ids) == {1, 2} and f.exec_ids == (1, 2)
    assert "owner X" in f.text and "X2" in f.text


@pytest.mark.parametrize(("gap_ms", "fires"), [(1000, True), (1001, False)])
def test_wash_at_the_window_edge_fires_and_one_ms_past_does_not(gap_ms, fires):
    s = surv(wash_trades=WashTradesConfig(window_ms=1000))
    r = Rows(s).fill(0, "X1", BUY, 1).fill(gap_ms, "X1", SELL, 2)
    assert len(r.run()) == (1 if fires else 0)


@pytest.mark.parametrize(("ticks", "fires"), [(2, True), (3, False)])
def test_wash_when_prices_differ_by_more_than_max_ticks_then_no_finding(ticks, fires):
    s = surv(wash_trades=WashTradesConfig(window_ms=1000, max_price_ticks=2))
    r = Rows(s).fill(0, "X1", BUY, 1, price=1000).fill(5, "X2", SELL, 2, price=1000 + ticks)
    assert len(r.run()) == (1 if fires else 0)


def test_wash_when_different_owners_or_same_side_then_no_finding():
    s = surv(wash_trades=WashTradesConfig(window_ms=1000))
    r = Rows(s).fill(0, "X1", BUY, 1).fill(1, "B1", SELL, 2).fill(2, "X2", BUY, 3)
    assert r.run() == []


def test_wash_repeated_matches_are_one_episode_until_a_quiet_window_passes():
    s = surv(wash_trades=WashTradesConfig(window_ms=1000))
    r = Rows(s)
    for k in range(10):  # a match every 500 ms: one episode
        r.fill(k * 500, "X1", BUY, 10 + 2 * k).fill(k * 500 + 1, "X2", SELL, 11 + 2 * k)
    assert len(r.run()) == 1
    r.fill(20_000, "X1", BUY, 100).fill(20_001, "X2", SELL, 101)  # after a quiet window: a new one
    assert len(r.run()) == 1


# -- 2 SPOOFING ------------------------------------------------------------------------------------


def spoof_rows(s, qty=5000, cancel_ms=1500, order_ms=0, code=R_CANCEL_REQUESTED):
    r = Rows(s).new(order_ms, "X1", BUY, 1, qty=qty, price=990)
    r.new(1000, "X1", SELL, 2, qty=100).fill(1000, "X1", SELL, 2, order_ms=1000)
    r.cancel(1000 + cancel_ms, "X1", BUY, 1, qty=qty, order_ms=order_ms, code=code, order_qty=qty)
    return r


def test_spoof_when_large_bid_canceled_right_after_own_sell_fill_then_finding():
    s = surv(spoofing=SpoofingConfig(min_qty=5000, cancel_within_ms=1500))
    [f] = spoof_rows(s).run()
    assert f.detector == "spoofing" and f.order_ids == (1, 2) and f.exec_ids == (1,)
    assert "canceled 5000 of 5000 lots to buy AAA" in f.text and "1500.000 ms" in f.text


@pytest.mark.parametrize(("qty", "cancel_ms", "fires"),
                         [(5000, 1500, True), (4999, 1500, False), (5000, 1501, False)])
def test_spoof_edges_min_qty_and_cancel_window(qty, cancel_ms, fires):
    s = surv(spoofing=SpoofingConfig(min_qty=5000, cancel_within_ms=1500))
    assert len(spoof_rows(s, qty=qty, cancel_ms=cancel_ms).run()) == (1 if fires else 0)


def test_spoof_when_order_entered_after_the_fill_or_canceled_by_the_book_then_no_finding():
    s = surv(spoofing=SpoofingConfig(min_qty=5000, cancel_within_ms=1500))
    assert spoof_rows(s, order_ms=1200).run() == []
    s = surv(spoofing=SpoofingConfig(min_qty=5000, cancel_within_ms=1500))
    assert spoof_rows(s, code=R_IOC_REMAINDER).run() == []


# -- 3 LAYERING ------------------------------------------------------------------------------------


def stacked(s, prices=(999, 998, 997, 997), own_side_orders=0):
    r = Rows(s)
    for k, px in enumerate(prices):
        r.new(k * 100, "X1", BUY, 10 + k, price=px)
    for k in range(own_side_orders):
        r.new(500 + k, "X1", SELL, 50 + k, price=1010 + k)
    r.new(1000, "X1", SELL, 2, price=1000).fill(1000, "X1", SELL, 2, price=1000)
    return r


def test_layering_when_stack_then_opposite_fill_then_most_canceled_then_one_finding():
    s = surv(layering=LayeringConfig(min_orders=4, min_levels=3, cancel_within_ms=2000,
                                     min_cancel_pct=75))
    r = stacked(s).cancel(1500, "X1", BUY, 10).cancel(1600, "X1", BUY, 11)
    assert r.run() == []  # 2 of 4: 50 %
    r.cancel(1700, "X1", BUY, 12)
    [f] = r.run()
    assert f.detector == "layering" and f.order_ids == (2, 10, 11, 12) and f.exec_ids == (1,)
    assert "stacked 4 buy orders" in f.text and "canceled 3" in f.text
    r.cancel(1800, "X1", BUY, 13)
    assert r.run() == []  # the episode was reported once


def test_layering_not_when_cancels_come_after_the_window_or_too_few_levels():
    cfg = LayeringConfig(min_orders=4, min_levels=3, cancel_within_ms=2000, min_cancel_pct=75)
    r = stacked(surv(layering=cfg))
    for k in range(3):
        r.cancel(3001 + k, "X1", BUY, 10 + k)
    assert r.run() == []
    r = stacked(surv(layering=cfg), prices=(999, 999, 998, 998))
    for k in range(4):
        r.cancel(1100 + k, "X1", BUY, 10 + k)
    assert r.run() == []


def test_layering_not_when_the_owner_quotes_both_sides():
    cfg = LayeringConfig(min_orders=4, min_levels=3, cancel_within_ms=2000, min_cancel_pct=75)
    r = stacked(surv(layering=cfg), own_side_orders=4)
    for k in range(4):
        r.cancel(1100 + k, "X1", BUY, 10 + k)
    assert r.run() == []


# -- 4 MARKING THE CLOSE ---------------------------------------------------------------------------


def close_rows(s, mine=400, others=600, at_min=-5.0):
    r = Rows(s)
    r.fill(at_min * 60_000, "X1", BUY, 1, qty=mine, base=CLOSE)
    r.fill(at_min * 60_000, "B1", SELL, 2, qty=mine, maker=1, base=CLOSE)
    for k, account in enumerate(["CLIENT", "HOUSE"]):  # two other takers, 30 % each
        r.fill(-60_000, account, SELL, 3 + k, qty=others // 2, base=CLOSE)
        r.fill(-60_000, "B1", BUY, 5 + k, qty=others // 2, maker=1, base=CLOSE)
    return r


@pytest.mark.parametrize(("mine", "fires"), [(400, True), (399, False)])
def test_marking_close_at_the_share_threshold_fires_when_the_window_ends(mine, fires):
    s = surv(marking_close=MarkingCloseConfig(window_minutes=10, min_share_pct=40, min_qty=1))
    r = close_rows(s, mine=mine, others=600)
    assert r.run() == []  # judged only when the window ends
    found = s.advance(CLOSE)
    assert [f.account for f in found] == (["X1"] if fires else [])
    if fires:
        assert found[0].ts == CLOSE and found[0].order_ids == (1,) and found[0].exec_ids == (1,)
        assert "took 400 of 1000 lots (40.00%)" in found[0].text


def test_marking_close_trade_before_the_window_or_passive_does_not_count():
    s = surv(marking_close=MarkingCloseConfig(window_minutes=10, min_share_pct=60, min_qty=1))
    close_rows(s, mine=5000, at_min=-10.001).run()
    # X1's big buy was 10 min + 60 ms before: outside; the two others have 50 % each; B1's 100 %
    # of the window's volume was passive.
    assert s.advance(CLOSE + 1) == []


def test_marking_close_by_count_and_on_the_next_event_after_the_close():
    s = surv(marking_close=MarkingCloseConfig(window_minutes=10, min_share_pct=0, min_count=3,
                                              min_qty=1))
    r = Rows(s)
    for k in range(3):
        r.fill(-30_000 + k, "HOUSE", BUY, 1 + k, qty=1, base=CLOSE)
    r.fill(-20_000, "CLIENT", BUY, 9, qty=10_000, base=CLOSE)
    r.new(1, "B1", BUY, 50, base=CLOSE)  # any event after the close judges the window
    [f] = r.run()
    assert f.account == "HOUSE" and f.order_ids == (1, 2, 3)


def test_marking_close_follows_the_time_zone_across_daylight_saving():
    summer = int(datetime(2024, 7, 2, 16, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()) * 10**9
    s = surv(marking_close=MarkingCloseConfig(window_minutes=10, min_share_pct=50, min_qty=1))
    Rows(s).fill(-60_000, "X1", BUY, 1, base=summer).run()
    [f] = s.advance(summer)
    hour_utc = (f.ts // 10**9) % 86_400 / 3600
    assert f.ts == summer and hour_utc == 20 and (CLOSE // 10**9) % 86_400 / 3600 == 21  # EDT, EST


# -- 5 ORDER-TO-TRADE ------------------------------------------------------------------------------


@pytest.mark.parametrize(("orders", "fires"), [(20, True), (19, False)])
def test_order_to_trade_fires_at_min_orders_with_no_trades(orders, fires):
    s = surv(order_to_trade=OrderToTradeConfig(window_s=10, min_orders=20, max_ratio=5))
    r = Rows(s)
    for k in range(orders):
        r.new(k * 10, "HOUSE", BUY, 1 + k)
    found = r.run()
    assert len(found) == (1 if fires else 0)
    if fires:
        assert found[0].order_ids == tuple(range(13, 21)) and "20 order messages for 0" in found[0].text


def test_order_to_trade_counts_replaces_and_cancels_and_trades_lower_the_ratio():
    s = surv(order_to_trade=OrderToTradeConfig(window_s=10, min_orders=20, max_ratio=5))
    r = Rows(s)
    for k in range(4):
        r.fill(k, "HOUSE", BUY, 100 + k)
    for k in range(10):
        r.new(10 + k, "HOUSE", BUY, 1 + k)
        r.add(K_REPLACE, 11 + k, "HOUSE", BUY, 1 + k, price=999)
    assert r.run() == []  # 20 messages, 4 trades: 20 <= 5 x 4
    r.cancel(50, "HOUSE", BUY, 1)
    [f] = r.run()  # 21 > 20
    assert "21 order messages for 4" in f.text


def test_order_to_trade_reports_once_per_window_and_old_buckets_expire():
    s = surv(order_to_trade=OrderToTradeConfig(window_s=10, min_orders=20, max_ratio=5))
    r = Rows(s)
    for k in range(60):
        r.new(k * 100, "HOUSE", BUY, 1 + k)  # 60 orders in 6 s
    assert len(r.run()) == 1
    r.new(30_000, "HOUSE", BUY, 500)  # 20 s of silence: the window is empty again
    assert r.run() == []


# -- 6 FRONT RUNNING -------------------------------------------------------------------------------


def front(**kw):
    return surv(front_running=FrontRunningConfig(block_qty=10_000, client_accounts=["CLIENT"], **kw))


def test_front_running_when_house_buys_after_client_block_arrives_then_once_per_account():
    s = front()
    r = Rows(s).new(0, "CLIENT", BUY, 1, qty=10_000)
    r.new(100, "HOUSE", BUY, 2, qty=300).fill(150, "HOUSE", BUY, 2, qty=300, order_ms=100)
    r.new(200, "HOUSE", BUY, 3).fill(250, "HOUSE", BUY, 3, order_ms=200)
    [f] = r.run()
    assert (f.detector, f.account, f.order_ids, f.exec_ids) == ("front_running", "HOUSE", (1, 2), (1,))
    assert "client block order 1 of 10000 lots from CLIENT" in f.text


@pytest.mark.parametrize("case", ["small block", "opposite side", "same owner", "entered before",
                                  "after last execution", "suspect is a client", "block canceled"])
def test_front_running_not_when(case):
    s = front()
    r = Rows(s)
    if case == "entered before":
        r.new(-10, "HOUSE", BUY, 2)
    r.new(0, "CLIENT", BUY, 1, qty=9_999 if case == "small block" else 10_000)
    if case == "after last execution":
        r.fill(50, "CLIENT", BUY, 1, qty=10_000, leaves=0, order_ms=0)
    if case == "block canceled":
        r.cancel(50, "CLIENT", BUY, 1, qty=10_000)
    account = {"same owner": "CLIENT", "suspect is a client": "CLIENT"}.get(case, "HOUSE")
    if case == "same owner":
        account = "CLIENT"
    side = SELL if case == "opposite side" else BUY
    order_ms = -10 if case == "entered before" else 100
    r.fill(150, account, side, 2, order_ms=order_ms)
    assert r.run() == []


# -- CONFIGURATION ---------------------------------------------------------------------------------


def test_config_from_toml_table_with_defaults_for_missing_detectors():
    raw = b"""
[server]
endpoint = "x"
[compliance.surveillance.spoofing]
min_qty = 2500
[compliance.surveillance.front_running]
client_accounts = ["CLIENT"]
"""
    cfg = SurveillanceConfig.from_toml(raw)
    assert cfg.spoofing.min_qty == 2500 and cfg.spoofing.cancel_within_ms == 2000
    assert cfg.wash_trades == WashTradesConfig()
    assert SurveillanceConfig.from_toml(b"") == SurveillanceConfig()


@pytest.mark.parametrize(("table", "words"), [
    ({"spoofing": {"min_qty": 0}}, "compliance.surveillance.spoofing.min_qty: expected a positive"),
    ({"spoofing": {"minqty": 1}}, "unknown field `minqty`"),
    ({"wash_trades": {"window_ms": "1s"}}, "wash_trades.window_ms"),
    ({"layering": {"min_cancel_pct": 101}}, "layering.min_cancel_pct: expected a percentage"),
    ({"layering": {"min_orders": 40}}, "min_orders <= 32"),
    ({"marking_close": {"timezone": "Mars/Olympus"}}, "marking_close.timezone: expected an IANA"),
    ({"marking_close": {"close_time": "4pm"}}, "marking_close.close_time: expected HH:MM"),
    ({"marking_close": {"min_share_pct": 0, "min_count": 0}}, "set min_share_pct or min_count"),
    ({"order_to_trade": {"window_s": -1}}, "order_to_trade.window_s"),
])
def test_config_error_names_the_field(table, words):
    with pytest.raises(ConfigError, match=None) as err:
        SurveillanceConfig.from_table(table)
    assert words in str(err.value)


def test_config_with_unknown_client_account_is_refused_naming_it():
    cfg = SurveillanceConfig(front_running=FrontRunningConfig(client_accounts=["CLIENT", "NOPE"]))
    with pytest.raises(ConfigError, match=r"front_running.client_accounts\[1\]: unknown account 'NOPE'"):
        Surveillance(cfg, REF)


# -- CAPACITY, SNAPSHOTS, BAD INPUT ----------------------------------------------------------------


def test_more_findings_than_one_kernel_call_holds_are_all_returned():
    s = surv(wash_trades=WashTradesConfig(window_ms=1))
    r = Rows(s)
    n = Surveillance.FOUND_CAPACITY * 2 + 7
    for k in range(n):  # one self-match every 10 ms: each its own episode
        r.fill(k * 10, "X1", BUY, 2 * k + 1).fill(k * 10, "X2", SELL, 2 * k + 2)
    found = r.run()
    assert len(found) == n and found[-1].order_ids == (2 * n - 1, 2 * n)


def test_full_owner_instrument_table_is_counted_not_a_crash():
    cfg = SurveillanceConfig(max_owner_instruments=2, max_account_instruments=2)
    s = Surveillance(cfg, REF)
    r = Rows(s)
    for k, account in enumerate(["X1", "B1", "CLIENT", "HOUSE"]):
        r.new(k, account, BUY, k + 1, instr=k % 2)
    r.run()
    stats = s.stats()
    assert stats["owner_instruments"] == 2 and stats["owner_instruments_full"] == 2
    assert stats["account_instruments_full"] == 2 and stats["rows"] == 4


def test_dump_then_load_restores_state_hash_and_later_findings():
    cfg = SurveillanceConfig(layering=LayeringConfig(min_orders=4, min_levels=3, cancel_within_ms=2000),
                             **SMALL)
    a = Surveillance(cfg, REF)
    first = stacked(a).rows
    a.process(np.array(first, dtype=np.int64))
    b = Surveillance(cfg, REF)
    b.load(a.dump())
    assert b.state_hash() == a.state_hash() and b.stats() == a.stats()
    rest = Rows(a).cancel(1500, "X1", BUY, 10).cancel(1600, "X1", BUY, 11).cancel(1700, "X1", BUY, 12)
    later = np.array(rest.rows, dtype=np.int64)
    assert a.process(later) == b.process(later) != []
    assert a.state_hash() == b.state_hash()


def test_load_refuses_state_of_other_capacities():
    a = Surveillance(SurveillanceConfig(**SMALL), REF)
    b = Surveillance(SurveillanceConfig(max_owner_instruments=128, max_account_instruments=64), REF)
    with pytest.raises(ValueError, match="does not fit"):
        b.load(a.dump())


ROW = st.tuples(
    st.integers(-1, sk.N_KINDS), st.integers(-5, 2**61 + 5), st.integers(-1, len(REF.accounts)),
    st.integers(-1, 5), st.integers(-1, len(REF.by_index)), st.integers(-1, 2),
    st.integers(0, 50), st.integers(0, 50), st.integers(-10, 20_000), st.integers(0, 2000),
    st.integers(0, 1), st.integers(-10, 20_000), st.integers(-1, 20_000),
    st.integers(0, 2**61), st.sampled_from([0, R_CANCEL_REQUESTED, R_IOC_REMAINDER, 4200]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROW, max_size=60), st.integers(0, 3))
def test_process_never_crashes_on_random_rows_within_the_column_domains(rows, spread):
    cfg = SurveillanceConfig(
        layering=LayeringConfig(min_orders=2, min_levels=1),
        order_to_trade=OrderToTradeConfig(min_orders=3, max_ratio=1),
        front_running=FrontRunningConfig(block_qty=100, client_accounts=["CLIENT"]),
        spoofing=SpoofingConfig(min_qty=1), max_owner_instruments=4, max_account_instruments=4)
    s = Surveillance(cfg, REF)
    arr = np.array(rows, dtype=np.int64).reshape(-1, sk.R_NCOLS)
    if spread and len(arr):  # also a time-ordered variant within one day
        arr[:, sk.R_TS] = CLOSE - 600 * 10**9 + np.sort(np.abs(arr[:, sk.R_TS]) % (10**9 * spread * 400))
    found = s.process(arr)
    found += s.advance(CLOSE + 1)
    stats = s.stats()
    assert stats["rows"] == len(arr) and 0 <= stats["bad_rows"] <= len(arr)
    for f in found:
        assert f.account in REF.accounts and f.symbol in REF.instruments and f.text


def test_rows_of_the_wrong_shape_are_a_programming_error():
    with pytest.raises(ValueError, match=r"\(n, 15\) int64"):
        surv().process(np.zeros((3, 4), dtype=np.int64))
