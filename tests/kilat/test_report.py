"""Reports from a projection of the journal: a real pipeline writes a journal over two UTC days,
then each report is checked against figures worked out by hand."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import msgspec
import pytest

from engine.constants import Side
from engine.journal import JournalWriter
from engine.ledger import PositionLedger
from engine.messages import BustTrade, EndOfDay, OrderFilled, PriceTick, SubmitOrder
from engine.refbook import ReferenceBook
from kilat import report as rp
from kilat.config import check_config, load_config
from kilat.projection import project
from kilat.service import build_pipeline

CONFIG = load_config()
REF = check_config(CONFIG)
BUY, SELL = Side.BUY, Side.SELL
PNG = b"\x89PNG\r\n\x1a\n"


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1e9)


def order(account, cl, side, qty, price, ts, user, symbol="AAPL", **kw):
    return SubmitOrder(account, cl, symbol, side, qty, price=price, ts=ts, user=user, **kw)


# Day 1, 2024-01-10 (UTC); AAPL ticks are cents.
T0 = ns("2024-01-10T14:30:00")
T_SELL = ns("2024-01-10T14:31:00")  # MM1 offers 100 @ 190.10           -> order 1
T_BUY1 = ns("2024-01-10T14:32:00")  # FUND1 buys 60 @ ≤190.20, fills 60 @ 190.10 -> order 2
T_TICK = ns("2024-01-10T14:33:00")  # last 190.50
T_BUY2 = ns("2024-01-10T14:35:00")  # FUND1 bids 100 @ 190.00 (bob)     -> order 3
T_HIT = ns("2024-01-10T14:40:00")  # MM1 sells 40 @ 190.00: fills 40   -> order 4
T_DENY = ns("2024-01-10T14:41:00")  # FUND1 20 000 lots: denied (max_order_qty 10 000)
T_EOD = ns("2024-01-10T22:00:00")  # DAY orders expire: order 1 (40 left), order 3 (60 left)
# Day 2, 2024-01-11
T_BID = ns("2024-01-11T14:30:00")  # MM1 bids 50 @ 191.00                -> order 5
T_SELL2 = ns("2024-01-11T14:31:00")  # FUND1 sells 50 @ 191.00: fills      -> order 6
T_OFFER = ns("2024-01-11T15:00:00")  # MM1 offers 10 @ 192.00              -> order 7
T_LIFT = ns("2024-01-11T15:01:00")  # FUND2 buys 10 @ 192.00: fills, then busted -> order 8
T_BUST = ns("2024-01-11T15:02:00")
T_WORK = ns("2024-01-11T15:10:00")  # FUND1 bids 20 @ 190.00, left working -> order 9
T_TICK2 = ns("2024-01-11T16:00:00")  # last 191.50


def write_journal(path) -> list:
    journal = JournalWriter(path, fsync=False)
    pipe = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    out = []

    def run(cmd):
        events = pipe.process(cmd)
        out.append((cmd, events))
        return events

    run(PriceTick("AAPL", 18_990, 19_010, 0, T0, "admin"))  # mid 190.00, no last
    run(PriceTick("MSFT", 39_990, 40_010, 40_000, T0, "admin"))
    run(order("MM1", "s1", SELL, 100, 19_010, T_SELL, "bob"))
    run(order("FUND1", "b1", BUY, 60, 19_020, T_BUY1, "alice"))
    run(PriceTick("AAPL", 0, 0, 19_050, T_TICK, "admin"))
    run(order("FUND1", "b2", BUY, 100, 19_000, T_BUY2, "bob"))
    run(order("MM1", "s2", SELL, 40, 19_000, T_HIT, "bob"))
    run(order("FUND1", "big", BUY, 20_000, 19_000, T_DENY, "alice"))
    run(EndOfDay(T_EOD, "admin"))
    run(order("MM1", "b3", BUY, 50, 19_100, T_BID, "bob"))
    run(order("FUND1", "s3", SELL, 50, 19_100, T_SELL2, "alice"))
    run(order("MM1", "s4", SELL, 10, 19_200, T_OFFER, "bob"))
    fills = [e for e in run(order("FUND2", "b4", BUY, 10, 19_200, T_LIFT, "alice"))
             if type(e) is OrderFilled]
    run(BustTrade(fills[0].exec_id, "wrong account", T_BUST, "admin"))
    run(order("FUND1", "b5", BUY, 20, 19_000, T_WORK, "bob"))
    run(PriceTick("AAPL", 0, 0, 19_150, T_TICK2, "admin"))
    pipe.observe_pending()
    journal.commit()
    journal.close()
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kilat")
    write_journal(d / "journal.kjl")
    return d


@pytest.fixture(scope="module")
def proj(data_dir):
    return project(CONFIG, data_dir / "journal.kjl")


def by_id(rows):
    return {r["order_id"]: r for r in rows}


# -- PROJECTION -----------------------------------------------------------------------------------


def test_projection_when_replayed_then_orders_carry_user_arrival_price_and_final_status(proj):
    o = proj.orders
    assert [o[k].user for k in range(1, 10)] == ["bob", "alice", "bob", "bob", "bob", "alice", "bob", "alice", "bob"]
    assert o[2].arrival_px == 19_000  # mid of 189.90/190.10: no trade yet
    assert o[3].arrival_px == 19_050  # the tick's last
    assert o[4].arrival_px == 19_050
    assert o[5].arrival_px == 19_000  # the last trade (190.00) at the start of day 2
    assert o[7].arrival_px == 19_100 and o[8].arrival_px == 19_100
    assert (o[1].status, o[3].status) == ("Expired", "Expired")  # DAY orders at the end of day 1
    assert o[8].status == "Filled" and o[8].cum_qty == 0  # busted: finished, nothing left filled
    assert o[9].status == "New"
    assert len(proj.refusals) == 1 and proj.refusals[0].qty == 20_000
    assert sorted(proj.days) == [date(2024, 1, 10), date(2024, 1, 11)]


# -- BLOTTER --------------------------------------------------------------------------------------


def test_blotter_lists_orders_fills_busts_and_refusals_by_time(proj):
    rows = rp.blotter(proj)
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    events = [(r["event"], r["order_id"]) for r in rows]
    assert events[:4] == [("order", 1), ("order", 2), ("fill", 2), ("fill", 1)]
    assert ("denied", None) in events and ("bust", 8) in events and ("bust", 7) in events
    fill = next(r for r in rows if r["event"] == "fill" and r["order_id"] == 2)
    assert (fill["qty"], fill["price"], fill["venue"], fill["user"]) == (60, Decimal("190.10"), "INTERNAL", "alice")
    first = rows[0]
    assert first["time"] == "2024-01-10T14:31:00.000Z" and first["status"] == "Expired"
    assert first["arrival_price"] == Decimal("190.00") and first["cum_qty"] == 60 + 0


def test_blotter_filters_by_account_symbol_channel_and_status(proj):
    assert {r["account"] for r in rp.blotter(proj, account="FUND2")} == {"FUND2"}
    assert rp.blotter(proj, symbol="MSFT") == []
    alice = rp.blotter(proj, user="alice")
    assert {r["user"] for r in alice} == {"alice"} and {r["order_id"] for r in alice} == {2, 6, 8, None}
    expired = rp.blotter(proj, status="Expired")
    assert {r["order_id"] for r in expired} == {1, 3}
    denied = rp.blotter(proj, status="Denied")
    assert [(r["event"], r["qty"]) for r in denied] == [("denied", 20_000)]
    assert denied[0]["reason"] == "2001: qty 20000 exceeds max order qty 10000 for FUND1/AAPL"


# -- TCA ------------------------------------------------------------------------------------------


def test_tca_slippage_fill_rate_and_times_match_the_hand_figures(proj):
    rows = by_id(rp.tca(proj))
    # order 2: buy filled at 190.10 against an arrival (mid) of 190.00: 10/19000 × 10 000 bps worse
    assert rows[2]["slippage_bps"] == pytest.approx(10 / 19_000 * 10_000, abs=1e-4)  # 5.2632
    assert (rows[2]["fill_rate"], rows[2]["first_fill_ms"], rows[2]["completion_ms"]) == (1.0, 0.0, 0.0)
    # order 3: buy 100 at 190.00 vs arrival 190.50 (better: negative); 40 filled 5 minutes later
    assert rows[3]["slippage_bps"] == pytest.approx(-50 / 19_050 * 10_000, abs=1e-4)  # -26.2467
    assert rows[3]["fill_rate"] == 0.4
    assert rows[3]["first_fill_ms"] == 300_000.0 and rows[3]["completion_ms"] is None
    # order 4: a sell at 190.00 vs arrival 190.50: worse for the seller, positive
    assert rows[4]["slippage_bps"] == pytest.approx(50 / 19_050 * 10_000, abs=1e-4)
    # order 1: the resting sell of 100: 60 @ 190.10 then expired; arrival 190.00 (mid)
    assert rows[1]["slippage_bps"] == pytest.approx(-10 / 19_000 * 10_000, abs=1e-4)
    assert rows[1]["fill_rate"] == 0.6 and rows[1]["first_fill_ms"] == 60_000.0
    assert rows[1]["venue_mix"] == "INTERNAL=100%"
    # order 8: its only fill was busted
    assert rows[8]["cum_qty"] == 0 and rows[8]["slippage_bps"] is None and rows[8]["note"] == "no fills"
    assert rows[9]["note"] == "no fills" and rows[9]["fill_rate"] == 0.0


def test_tca_orders_without_an_arrival_price_are_reported_as_such(tmp_path):
    lax = msgspec.structs.replace(CONFIG, risk=msgspec.structs.replace(CONFIG.risk, allow_no_reference_price=True))
    path = small_journal(tmp_path / "journal.kjl", lax,
                         PriceTick("AAPL", 18_990, 0, 0, T0, "admin"),  # a bid only: no reference price
                         order("MM1", "s1", SELL, 10, 19_000, T0 + 1, "bob"),
                         order("FUND1", "b1", BUY, 10, 19_000, T0 + 2, "alice"))
    rows = rp.tca(project(lax, path))
    assert [(r["order_id"], r["arrival_price"], r["slippage_bps"], r["note"]) for r in rows] == [
        (1, None, None, "no arrival price"), (2, None, None, "no arrival price")]
    assert str(rows[1]["avg_price"]) == "190.00" and rows[1]["fill_rate"] == 1.0
    summary = rp.tca_summary(rows)
    assert summary[0]["orders_without_arrival"] == 2 and summary[0]["slippage_bps_mean"] is None


def test_tca_summary_aggregates_fill_rate_and_slippage_per_account(proj):
    rows = rp.tca(proj)
    summary = {r["key"]: r for r in rp.tca_summary(rows, by="account")}
    fund1 = summary["FUND1"]
    # FUND1 orders 2 (60/60), 3 (40/100), 6 (50/50), 9 (0/20)
    assert (fund1["orders"], fund1["qty"], fund1["cum_qty"]) == (4, 230, 150)
    assert fund1["fill_rate"] == round(150 / 230, 6)
    slips = [r["slippage_bps"] for r in rows if r["account"] == "FUND1" and r["slippage_bps"] is not None]
    assert fund1["slippage_bps_mean"] == pytest.approx(sum(slips) / len(slips), abs=1e-4)
    assert fund1["venue_mix"] == "INTERNAL=100%"


# -- P&L ------------------------------------------------------------------------------------------


def test_pnl_by_day_matches_the_hand_figures(proj):
    rows = {(r["day"], r["account"]): r for r in rp.pnl(proj, symbol="AAPL")}
    d1f, d2f = rows[("2024-01-10", "FUND1")], rows[("2024-01-11", "FUND1")]
    # day 1: FUND1 long 100 at (60 × 190.10 + 40 × 190.00) / 100 = 190.06, marked at 190.00
    assert (d1f["position"], d1f["realised"], d1f["mark"]) == (100, Decimal("0.00"), Decimal("190.00"))
    assert d1f["unrealised"] == Decimal("-6.00")  # 100 × (190.00 − 190.06)
    # day 2: sells 50 at 191.00: realised 50 × (191.00 − 190.06) = 47.00; 50 left, marked 191.50
    assert d2f["realised"] == Decimal("47.00") and d2f["position"] == 50
    assert d2f["unrealised"] == Decimal("72.00")  # 50 × (191.50 − 190.06)
    assert d2f["unrealised_change"] == Decimal("78.00") and d2f["total"] == Decimal("125.00")
    d2m = rows[("2024-01-11", "MM1")]
    # MM1: short 100 at 190.06, buys back 50 at 191.00: −47.00; the busted fill leaves nothing
    assert d2m["realised"] == Decimal("-47.00") and d2m["position"] == -50
    assert d2m["unrealised"] == Decimal("-72.00")
    assert ("2024-01-11", "FUND2") not in rows  # its only fill was busted


def test_pnl_from_the_ledger_api_when_the_pipeline_has_no_ledger(proj):
    ledger = proj.ledger
    assert isinstance(ledger, PositionLedger)
    a, i = REF.account_index["FUND1"], REF.instruments["AAPL"].index
    assert (ledger.qty(a, i), ledger.realised(a, i)) == (50, 4_700)  # tick·lots
    ledger.validate()


# -- POSITIONS ------------------------------------------------------------------------------------


def test_positions_value_in_the_account_base_currency(proj):
    rows = {(r["account"], r["symbol"]): r for r in rp.positions(proj)}
    f1 = rows[("FUND1", "AAPL")]
    assert (f1["qty"], f1["working_buy"], f1["mark"]) == (50, 20, Decimal("191.50"))
    assert f1["market_value"] == Decimal("9575.00") and f1["market_value_base"] == 9575.0
    assert f1["avg_cost"] == Decimal("190.06") and f1["unrealised"] == Decimal("72.00")
    mm = rows[("MM1", "AAPL")]
    assert mm["market_value"] == Decimal("-9575.00") and mm["sector"] == "Information Technology"
    assert ("FUND2", "AAPL") not in rows


def small_journal(path, config, *cmds):
    journal = JournalWriter(path, fsync=False)
    pipe = build_pipeline(config, check_config(config), ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    for cmd in cmds:
        pipe.process(cmd)
    pipe.observe_pending()
    journal.commit()
    journal.close()
    return path


def test_positions_with_a_missing_fx_rate_show_missing_never_zero(tmp_path):
    path = small_journal(tmp_path / "journal.kjl", CONFIG,
                         PriceTick("AAPL", 18_990, 19_010, 19_000, T0, "admin"),
                         order("MM1", "s1", SELL, 10, 19_000, T0 + 1, "bob"),
                         order("FUND2", "b1", BUY, 10, 19_000, T0 + 2, "alice"))
    no_fx = msgspec.structs.replace(CONFIG, fx_rates={})  # FUND2 (EUR) holds AAPL (USD): no rate
    rows = {r["account"]: r for r in rp.positions(project(no_fx, path))}
    assert rows["FUND2"]["market_value"] == Decimal("1900.00")
    assert rows["FUND2"]["fx_rate"] is None and rows["FUND2"]["market_value_base"] is None
    assert rows["MM1"]["market_value_base"] == -1900.0  # USD in USD needs no rate
    grouped = {r["account"]: r for r in rp.positions(project(no_fx, path), by="currency")}
    assert grouped["FUND2"]["net_base"] is None and grouped["FUND2"]["missing"] == "AAPL"
    with_fx = {r["account"]: r for r in rp.positions(project(CONFIG, path))}
    assert with_fx["FUND2"]["market_value_base"] == round(1900 / 1.08, 2)


def test_pnl_in_base_currency_uses_each_days_closing_fx_rate(tmp_path):
    day2 = ns("2024-01-11T15:00:00")
    path = small_journal(tmp_path / "journal.kjl", CONFIG,
                         PriceTick("EURUSD", 0, 0, 108_000, T0, "admin"),  # 1 EUR = 1.08000 USD
                         PriceTick("AAPL", 18_990, 19_010, 19_000, T0, "admin"),
                         order("MM1", "s1", SELL, 10, 19_000, T0 + 1, "bob"),
                         order("FUND2", "b1", BUY, 10, 19_000, T0 + 2, "alice"),
                         PriceTick("AAPL", 0, 0, 19_540, T0 + 3, "admin"),  # +5.40 a share
                         PriceTick("EURUSD", 0, 0, 120_000, day2, "admin"),  # 1 EUR = 1.20000 USD
                         PriceTick("AAPL", 0, 0, 19_660, day2 + 1, "admin"))  # +1.20 more
    rows = {(r["day"], r["account"]): r for r in rp.pnl(project(CONFIG, path), symbol="AAPL")}
    d1, d2 = rows[("2024-01-10", "FUND2")], rows[("2024-01-11", "FUND2")]
    assert (d1["base_currency"], d1["fx_to_base"]) == ("EUR", pytest.approx(1 / 1.08))
    assert d1["total"] == Decimal("54.00") and d1["total_base"] == 50.0  # 54 USD / 1.08
    assert d2["total"] == Decimal("12.00") and d2["total_base"] == 10.0  # 12 USD / 1.20
    assert d2["unrealised_base"] == 55.0  # 66 USD at the day's 1.20
    assert rows[("2024-01-10", "MM1")]["total_base"] == -54.0  # USD in USD: no conversion


def test_positions_aggregate_by_sector_country_and_currency(proj):
    by_sector = rp.positions(proj, by="sector")
    f1 = next(r for r in by_sector if r["account"] == "FUND1")
    assert (f1["key"], f1["net_base"], f1["gross_base"]) == ("Information Technology", 9575.0, 9575.0)
    assert {r["key"] for r in rp.positions(proj, by="country")} == {"US"}
    assert {r["key"] for r in rp.positions(proj, by="currency")} == {"USD"}


# -- FORECAST -------------------------------------------------------------------------------------


def test_forecast_adds_working_orders_at_their_limits_and_pending_settlements(proj):
    rows = {(r["account"], r["kind"], r["asset"]): r for r in rp.forecast(proj)}
    pos = rows[("FUND1", "position", "AAPL")]
    # day 1 fills (100) settled? T+1: due 2024-01-11, no end of day since: all still pending
    assert (pos["trade_date_balance"], pos["working_buys"], pos["projected"]) == (50, 20, 70)
    assert pos["settled"] + pos["pending_settlement"] == 50
    cash = rows[("FUND1", "cash", "USD")]
    spent = Decimal("-19006.00") + Decimal("9550.00")  # bought 100 for 19 006, sold 50 for 9 550
    assert cash["trade_date_balance"] == Decimal("50000000.00") + spent
    assert cash["settled"] + cash["pending_settlement"] == cash["trade_date_balance"]
    assert cash["working_buys"] == Decimal("-3800.00")  # 20 × 190.00
    assert cash["projected"] == cash["trade_date_balance"] - Decimal("3800.00")
    assert pos["settles_by"] == date(2024, 1, 12)


# -- WRITERS AND THE COMMAND ----------------------------------------------------------------------


def test_csv_and_json_round_trip(proj, tmp_path):
    rows = rp.tca(proj)
    rp.write_csv(rows, tmp_path / "t.csv", rp.TCA_COLUMNS)
    back = list(csv.DictReader(open(tmp_path / "t.csv", encoding="utf-8")))
    assert [int(r["order_id"]) for r in back] == [r["order_id"] for r in rows]
    assert [r["slippage_bps"] for r in back] == ["" if r["slippage_bps"] is None else str(r["slippage_bps"]) for r in rows]
    rp.write_json(rows, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text(), parse_float=Decimal)
    assert [d["order_id"] for d in data] == [r["order_id"] for r in rows]
    assert [d["avg_price"] for d in data] == [r["avg_price"] for r in rows]  # exact decimals
    assert all("_weight" not in d for d in data)


@pytest.mark.parametrize("kind", ["positions", "pnl", "tca", "forecast"])
def test_chart_is_a_png(proj, tmp_path, kind):
    rows, _ = rp.build_rows(kind, proj)
    rp.write_chart(kind, rows, tmp_path / "c.png")
    data = (tmp_path / "c.png").read_bytes()
    assert data[:8] == PNG and len(data) > 1_000


def test_run_report_writes_files_and_changes_nothing(data_dir, tmp_path, capsys):
    journal = data_dir / "journal.kjl"
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    listing = sorted(p.name for p in data_dir.iterdir())
    for kind in rp.KINDS:
        chart = tmp_path / f"{kind}.png" if kind in ("positions", "pnl", "tca", "forecast") else None
        code = rp.run_report(kind, data_dir, CONFIG, {"account": "FUND1"}, "json",
                             tmp_path / f"{kind}.json", chart)
        assert code == 0, capsys.readouterr().err
        json.loads((tmp_path / f"{kind}.json").read_text())
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in data_dir.iterdir()) == listing


def test_run_report_refuses_what_it_cannot_do(data_dir, tmp_path, capsys):
    assert rp.run_report("blotter", data_dir, CONFIG, {}, "csv", None, tmp_path / "b.png") == 2
    assert "has no chart" in capsys.readouterr().err
    assert rp.run_report("pnl", tmp_path / "nowhere", CONFIG, {}, "csv", None, None) == 2
    assert "no journal" in capsys.readouterr().err
    assert rp.run_report("blotter", data_dir, CONFIG, {"status": "Expired"}, "csv", None, None) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["status"] for r in rows} == {"Expired"} and list(rows[0]) == list(rp.BLOTTER_COLUMNS)


def test_chart_without_matplotlib_says_so(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *args, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(rp.ChartUnavailable, match="matplotlib"):
        rp.write_chart("tca", [], tmp_path / "x.png")


def test_allocations_are_empty_until_the_engine_records_them(proj):
    assert rp.allocations(proj) == []


def test_add_report_registers_the_command_for_the_cli(data_dir, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    sub = parser.add_subparsers()

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text)
        sp.set_defaults(func=func)
        return sp

    rp.add_report(add)
    out = tmp_path / "tca.csv"
    args = parser.parse_args(["report", "tca", "--data-dir", str(data_dir), "--channel", "alice",
                              "--by", "user", "--out", str(out), "--chart", str(tmp_path / "t.png")])
    assert args.func(args) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [(r["key"], r["orders"], r["fill_rate"]) for r in rows] == [("alice", "3", str(round(110 / 120, 6)))]
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG
