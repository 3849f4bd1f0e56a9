"""Settlement through the wired pipeline: fills book pending positions and cash on each
exchange's calendar; the end of the day settles what is due; busts reverse; replay agrees."""

from __future__ import annotations

from datetime import UTC, date, datetime

from engine.constants import Side
from engine.journal import JournalWriter
from engine.messages import BustTrade, EndOfDay, OrderFilled, PriceTick, SetLocate, SubmitOrder
from engine.recovery import recover
from engine.refbook import ReferenceBook
from kilat.config import check_config, load_config
from kilat.service import build_pipeline

CONFIG = load_config()
REF = check_config(CONFIG)


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1e9)


def test_t_plus_1_across_the_christmas_holiday_settles_on_tuesday_and_replays(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    pipe = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    friday = ns("2023-12-22T15:00:00")  # 10:00 in New York: an XNYS session
    pipe.process(PriceTick("AAPL", 18_990, 19_010, 19_000, friday, "admin"))
    pipe.process(SubmitOrder("MM1", "s1", "AAPL", Side.SELL, 100, price=19_000, ts=friday, user="bob"))
    fills = [e for e in pipe.process(SubmitOrder("FUND1", "b1", "AAPL", Side.BUY, 100, price=19_000,
                                                 ts=friday + 1, user="alice")) if type(e) is OrderFilled]
    assert len(fills) == 2
    ledger = pipe.settlement
    due = {m.settle_date for m in ledger.pending("FUND1")}
    assert due == {date(2023, 12, 26)}  # T+1 skips the weekend and Christmas Day
    assert ledger.settled("FUND1").positions.get("AAPL", 0) == 0

    pipe.process(EndOfDay(ns("2023-12-25T22:00:00"), "admin"))  # Monday: nothing is due yet
    assert ledger.pending("FUND1") and ledger.settled("FUND1").positions.get("AAPL", 0) == 0
    pipe.process(EndOfDay(ns("2023-12-26T22:00:00"), "admin"))
    settled = ledger.settled("FUND1")
    assert settled.positions["AAPL"] == 100 and not ledger.pending("FUND1")
    assert settled.cash["USD"] == 50_000_000_00 - 100 * 19_000  # cents: opening cash less the cost
    # P&L: FUND1 bought 100 at 190.00, AAPL last 190.00: nothing realised, nothing unrealised yet
    fund1 = REF.account_index["FUND1"]
    assert pipe.ledger.position(fund1, 0).qty == 100 and pipe.ledger.realised(fund1, 0) == 0
    pipe.process(PriceTick("AAPL", 0, 0, 19_500, ns("2023-12-27T15:00:00"), "admin"))
    assert pipe.ledger.unrealised(fund1, 0) == 100 * 500  # tick·lots: $500.00
    journal.commit()
    fresh = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.state_hash() == pipe.state_hash()


def test_a_bust_before_settlement_removes_the_pending_movements_of_both_sides():
    pipe = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    t = ns("2023-12-20T15:00:00")
    pipe.process(PriceTick("SAP", 11_990, 12_010, 12_000, t, "admin"))  # XETR, T+2
    pipe.process(SetLocate("MM1", "SAP", 1_000, t, "carol"))  # MM1 sells short: it needs a locate
    pipe.process(SubmitOrder("MM1", "s1", "SAP", Side.SELL, 10, price=12_000, ts=t, user="bob"))
    fill = next(e for e in pipe.process(SubmitOrder("FUND2", "b1", "SAP", Side.BUY, 10, price=12_000,
                                                     ts=t + 1, user="alice")) if type(e) is OrderFilled)
    assert {m.settle_date for m in pipe.settlement.pending("FUND2")} == {date(2023, 12, 22)}
    pipe.process(BustTrade(fill.exec_id, "wrong account", t + 2, "admin"))
    assert not pipe.settlement.pending("FUND2") and not pipe.settlement.pending("MM1")
    pipe.settlement.validate()


def test_allocated_block_fills_settle_in_the_client_accounts_and_the_block_nets_to_zero(tmp_path):
    from engine.messages import AllocationTarget, AmendAllocation, SubmitBlockOrder

    journal = JournalWriter(tmp_path / "journal", fsync=False)
    pipe = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    friday = ns("2023-12-22T15:00:00")
    pipe.process(PriceTick("AAPL", 18_990, 19_010, 19_000, friday, "admin"))
    pipe.process(SubmitOrder("MM1", "s1", "AAPL", Side.SELL, 300, price=18_990, ts=friday, user="bob"))
    pipe.process(SubmitOrder("MM1", "s2", "AAPL", Side.SELL, 700, price=19_000, ts=friday, user="bob"))
    events = pipe.process(SubmitBlockOrder(
        "BLOCK", "blk", "AAPL", Side.BUY, 1_000, "percent",
        [AllocationTarget("FUND1", 0, 6_000), AllocationTarget("FUND2", 0, 4_000)],
        price=19_000, ts=friday + 1, user="alice"))
    oid = events[0].order_id
    first = next(e for e in events if type(e) is OrderFilled and e.account == "BLOCK")
    ledger = pipe.settlement
    assert {m.settle_date for m in ledger.pending()} == {date(2023, 12, 26)}
    # the bust re-splits without the first fill; the amend re-weights what is left
    pipe.process(BustTrade(first.exec_id, "erroneous print", friday + 2, "admin"))
    pipe.process(AmendAllocation(oid, "percent", [AllocationTarget("FUND1", 0, 5_000),
                                                  AllocationTarget("FUND2", 0, 5_000)],
                                 "PM re-weighted", friday + 3, "alice"))
    pf = pipe.portfolio
    usd = pf.currency_index["USD"]
    pipe.process(EndOfDay(ns("2023-12-26T22:00:00"), "admin"))
    assert not ledger.pending()
    for account in ("FUND1", "FUND2", "BLOCK", "MM1"):  # settled equals traded, account by account
        a = REF.account_index[account]
        settled = ledger.settled(account)
        assert settled.positions.get("AAPL", 0) == pf.position[a, 0], account
        assert settled.cash.get("USD", 0) == pf.cash[a, usd], account
    assert ledger.settled("FUND1").positions["AAPL"] == ledger.settled("FUND2").positions["AAPL"] == 350
    assert "AAPL" not in ledger.settled("BLOCK").positions
    ledger.validate()
    journal.commit()
    fresh = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.state_hash() == pipe.state_hash()
