"""Risk and compliance wired into the pipeline as `kilat` wires them (the default config): holds,
four eyes, warnings, entitlements, kill switch, trading states, post-trade breaches and
surveillance alerts, each seen through the pipeline's events and notices."""

from __future__ import annotations

import pytest

from engine.constants import RejectCode, Side
from engine.messages import (
    AlertRaised,
    AlertUpdated,
    ApproveOrder,
    CancelOrder,
    CommandDone,
    CommandError,
    EndOfDay,
    ModifyOrder,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderFilled,
    OrderHeld,
    OrderRejected,
    OrderReleased,
    PriceTick,
    RejectHeldOrder,
    SetKillSwitch,
    SetTradingState,
    SubmitOrder,
)
from engine.orders import OrderStatus
from engine.refbook import ReferenceBook
from kilat.config import check_config, load_config
from kilat.service import build_pipeline

CONFIG = load_config()
REF = check_config(CONFIG)
BUY, SELL = Side.BUY, Side.SELL


@pytest.fixture
def pipe():
    p = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    p.process(PriceTick("AAPL", 18_990, 19_010, 19_000, 1, "admin"))
    p.process(PriceTick("7203", 2_499, 2_501, 2_500, 1, "admin"))
    return p


def buy(cl, qty, price=19_000, symbol="AAPL", account="FUND1", user="alice", ts=10, **kw):
    return SubmitOrder(account, cl, symbol, BUY, qty, price=price, ts=ts, user=user, **kw)


def hold(pipe) -> int:
    assert type(pipe.process(buy("a1", 10_000))[0]) is OrderAccepted  # 3.6% of GEF's NAV
    held = pipe.process(buy("a2", 10_000))
    assert type(held[0]) is OrderHeld and held[0].code == RejectCode.COMPLIANCE_HELD
    return held[0].order_id


def test_soft_breach_holds_the_order_out_of_the_book_and_raises_one_alert(pipe):
    oid = hold(pipe)
    assert pipe.orders[oid].status is OrderStatus.PENDING_APPROVAL
    assert pipe.book.order(oid) is None
    alerts = [n for n in pipe.notices if type(n) is AlertRaised and n.rule_id == "gef-issuer-5pct"]
    assert len(alerts) == 1 and alerts[0].order_ids == [oid] and alerts[0].severity == "SOFT"
    # the held lots count as working: the next buy sees them
    assert pipe.portfolio.working_buy[REF.account_index["FUND1"], 0] == 20_000
    pipe.validate()


def test_approval_by_an_officer_releases_it_to_the_book_and_resolves_the_alert(pipe):
    oid = hold(pipe)
    pipe.notices.clear()
    events = pipe.process(ApproveOrder(oid, "mandate allows 8%", 20, "carol"))
    assert [type(e) for e in events] == [OrderReleased, OrderAccepted]
    assert pipe.book.order(oid) is not None
    assert [(type(n), n.state, n.action) for n in pipe.notices] == [(AlertUpdated, "RESOLVED", "approved")]
    pipe.validate()


def test_approval_by_a_pm_is_refused_and_changes_nothing(pipe):
    oid = hold(pipe)
    before = pipe.state_hash()
    refused = pipe.process(ApproveOrder(oid, "", 20, "alice"))
    assert type(refused[0]) is CommandError and refused[0].code == RejectCode.NOT_ENTITLED
    assert pipe.state_hash() == before


def test_four_eyes_the_submitter_may_not_approve_even_with_the_compliance_role(pipe):
    from engine.model import ReferenceData, UserSpec

    users = [*CONFIG.users, UserSpec("dora", ["pm", "compliance"], ["FUND1"])]
    ref = ReferenceData(CONFIG.instruments, CONFIG.accounts, users)
    p = build_pipeline(CONFIG, ref, ReferenceBook(len(ref.by_index), 1_000, 64, 100))
    p.process(PriceTick("AAPL", 18_990, 19_010, 19_000, 1, "admin"))
    p.process(buy("d1", 10_000, user="dora"))
    oid = p.process(buy("d2", 10_000, user="dora"))[0].order_id
    refused = p.process(ApproveOrder(oid, "", 20, "dora"))
    assert refused[0].code == RejectCode.FOUR_EYES
    assert type(p.process(ApproveOrder(oid, "", 21, "carol"))[0]) is OrderReleased


def test_rejecting_a_held_order_denies_it_and_releases_its_cash_hold(pipe):
    oid = hold(pipe)
    a = REF.account_index["FUND1"]
    held_cash = int(pipe.portfolio.held[a, pipe.portfolio.currency_index["USD"]])
    denied = pipe.process(RejectHeldOrder(oid, "over the limit", 20, "carol"))
    assert type(denied[0]) is OrderDenied and denied[0].code == RejectCode.COMPLIANCE_REJECTED_BY_OFFICER
    assert pipe.orders[oid].status is OrderStatus.DENIED
    assert int(pipe.portfolio.held[a, pipe.portfolio.currency_index["USD"]]) == held_cash - 190_000_000
    pipe.validate()


def test_held_order_can_be_cancelled_not_modified_and_ends_with_the_day(pipe):
    oid = hold(pipe)
    refused = pipe.process(ModifyOrder("FUND1", oid, price=18_990, ts=20, user="alice"))
    assert type(refused[0]) is OrderCancelRejected and refused[0].code == RejectCode.ORDER_HELD
    canceled = pipe.process(CancelOrder("FUND1", oid, ts=21, user="alice"))
    assert type(canceled[0]) is OrderCanceled and pipe.orders[oid].status is OrderStatus.CANCELED
    other = pipe.process(buy("a3", 10_000, ts=22))
    assert type(other[0]) is OrderHeld
    done = pipe.process(EndOfDay(30, "admin"))
    assert any(type(e) is OrderCanceled and e.order_id == other[0].order_id for e in done)
    assert not pipe.held
    pipe.validate()


def test_warn_rule_lets_the_order_pass_and_raises_an_alert(pipe):
    events = pipe.process(buy("t1", 10, price=2_500, symbol="7203"))  # TOYOTA is on the watch list
    assert type(events[0]) is OrderAccepted
    assert [n.rule_id for n in pipe.notices if type(n) is AlertRaised] == ["watch-list"]


def test_hard_rule_denies_changing_no_state_and_the_denial_is_journaled_for_audit(pipe):
    seq, state = pipe.seq, pipe.state_hash()
    denied = pipe.process(buy("x1", 100_000))  # ADV 10% rule: 5.5 M lots allowed; risk first: max qty
    assert type(denied[0]) is OrderDenied and denied[0].code == RejectCode.RISK_MAX_ORDER_QTY
    sell = pipe.process(SubmitOrder("FUND2", "s1", "AAPL", SELL, 10, price=19_000, ts=11, user="alice"))
    assert type(sell[0]) is OrderDenied and sell[0].code == RejectCode.COMPLIANCE_NO_LOCATE
    assert pipe.seq == seq + 2 and pipe.state_hash() == state  # two DeniedOrder audit records


def test_pm_on_an_account_that_is_not_theirs_is_refused(pipe):
    refused = pipe.process(buy("m1", 10, account="MM1"))
    assert type(refused[0]) is OrderRejected and refused[0].code == RejectCode.NOT_ENTITLED
    nobody = pipe.process(buy("m2", 10, user=""))
    assert nobody[0].code == RejectCode.UNKNOWN_USER


def test_kill_switch_on_an_account_cancels_its_working_orders_and_blocks_new_ones(pipe):
    resting = pipe.process(buy("k1", 100, price=18_950))[0].order_id
    done = pipe.process(SetKillSwitch("account", "FUND1", True, "incident", 20, "carol"))
    assert [(type(e), e.code) for e in done[:-1]] == [(OrderCanceled, RejectCode.RISK_KILL_SWITCH)]
    assert done[0].order_id == resting and type(done[-1]) is CommandDone
    blocked = pipe.process(buy("k2", 100, ts=21))
    assert blocked[0].code == RejectCode.RISK_KILL_SWITCH
    pipe.process(SetKillSwitch("account", "FUND1", False, "resolved", 22, "admin"))
    assert type(pipe.process(buy("k3", 100, price=18_950, ts=23))[0]) is OrderAccepted
    pipe.validate()


def test_reducing_state_lets_only_position_reducing_orders_through(pipe):
    pipe.process(SubmitOrder("MM1", "mm", "AAPL", SELL, 300, price=19_000, ts=11, user="bob"))
    pipe.process(buy("r1", 300))  # FUND1 now long 300
    pipe.process(SetTradingState("FUND1", "AAPL", "REDUCING", 20, "admin"))
    assert pipe.process(buy("r2", 10, ts=21))[0].code == RejectCode.RISK_REDUCE_ONLY
    sell = pipe.process(SubmitOrder("FUND1", "r3", "AAPL", SELL, 300, price=19_050, ts=22, user="alice"))
    assert type(sell[0]) is OrderAccepted


def test_a_price_move_raises_a_post_trade_breach_and_marks_its_recovery(pipe):
    pipe.process(SubmitOrder("MM1", "mm", "AAPL", SELL, 10_000, price=19_000, ts=11, user="bob"))
    fills = pipe.process(buy("p1", 10_000))  # 1.9 M of ~53.3 M NAV: 3.6%
    assert any(type(e) is OrderFilled for e in fills)
    pipe.notices.clear()
    pipe.process(PriceTick("AAPL", 0, 0, 25_000, 40, "admin"))  # 2.5 M of ~53.9 M NAV: 4.6%
    assert not [n for n in pipe.notices if type(n) is AlertRaised]
    pipe.process(PriceTick("AAPL", 0, 0, 30_000, 41, "admin"))  # 3.0 M of ~54.4 M: 5.5% > 5%
    raised = [n for n in pipe.notices if type(n) is AlertRaised and n.source == "post-trade"]
    assert [n.rule_id for n in raised] == ["gef-issuer-5pct"] and "5.51" in raised[0].text
    pipe.notices.clear()
    pipe.process(PriceTick("AAPL", 0, 0, 31_000, 41, "admin"))  # still in breach: no second alert
    assert not [n for n in pipe.notices if type(n) is AlertRaised]
    pipe.notices.clear()
    pipe.process(PriceTick("AAPL", 0, 0, 19_000, 42, "admin"))
    assert any(type(n) is AlertUpdated and n.action == "recovered" for n in pipe.notices)


def test_wash_trade_between_two_accounts_of_one_owner_raises_a_surveillance_alert():
    from engine.model import AccountSpec

    accounts = [*CONFIG.accounts[:2], AccountSpec("MM1", owner="GEF", cash={"USD": 10**7}), *CONFIG.accounts[3:]]
    config = type(CONFIG)(CONFIG.instruments, accounts, CONFIG.users, fx_rates=CONFIG.fx_rates,
                          risk=CONFIG.risk, compliance=CONFIG.compliance)
    ref = check_config(config)
    p = build_pipeline(config, ref, ReferenceBook(len(ref.by_index), 1_000, 64, 100))
    p.process(PriceTick("AAPL", 18_990, 19_010, 19_000, 1, "admin"))
    p.process(SubmitOrder("MM1", "w1", "AAPL", SELL, 100, price=19_000, ts=10**9, user="bob"))
    p.process(SubmitOrder("FUND1", "w2", "AAPL", BUY, 100, price=19_000, ts=2 * 10**9, user="bob"))
    wash = [n for n in p.notices if type(n) is AlertRaised and n.rule_id == "wash_trades"]
    assert len(wash) == 1 and wash[0].source == "surveillance" and len(wash[0].exec_ids) == 2


def test_bust_reverses_both_sides_in_orders_positions_and_cash_and_recovers_identically(tmp_path):
    from engine.journal import JournalWriter
    from engine.messages import BustTrade, CorrectTrade, TradeBusted, TradeCorrected
    from engine.recovery import recover

    journal = JournalWriter(tmp_path / "journal", fsync=False)
    pipe = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    pipe.process(PriceTick("AAPL", 18_990, 19_010, 19_000, 1, "admin"))
    pf, usd = pipe.portfolio, pipe.portfolio.currency_index["USD"]
    fund1, mm1 = REF.account_index["FUND1"], REF.account_index["MM1"]
    cash_before = (int(pf.cash[fund1, usd]), int(pf.cash[mm1, usd]))
    pipe.process(SubmitOrder("MM1", "s1", "AAPL", SELL, 300, price=19_000, ts=10, user="bob"))
    fills = [e for e in pipe.process(buy("b1", 500)) if type(e) is OrderFilled]
    taker = next(f for f in fills if f.account == "FUND1")
    assert pf.position[fund1, 0] == 300 and pf.position[mm1, 0] == -300

    corrected = pipe.process(CorrectTrade(taker.exec_id, 200, 18_995, "wrong price", 20, "admin"))
    assert [type(e) for e in corrected[:2]] == [TradeCorrected, TradeCorrected]
    assert pf.position[fund1, 0] == 200 and pf.position[mm1, 0] == -200
    assert int(pf.cash[fund1, usd]) == cash_before[0] - 200 * 18_995  # ticks of 0.01 = cents
    buyer = pipe.orders[taker.order_id]
    assert (buyer.cum_qty, buyer.qty, buyer.leaves_qty, buyer.busted_qty) == (200, 400, 200, 100)
    ledger = pipe.ledger  # the position ledger follows: position, location and cost at 189.95
    assert ledger.qty(fund1, 0) == 200 and ledger.by_location(fund1, 0) == {"CUSTODY": 200}
    assert ledger.cost(fund1, 0) == 200 * 18_995 and ledger.cost(mm1, 0) == -200 * 18_995

    busted = pipe.process(BustTrade(taker.exec_id, "erroneous", 21, "admin"))
    assert [(type(e), e.cum_qty) for e in busted[:2]] == [(TradeBusted, 0), (TradeBusted, 0)]
    assert pf.position[fund1, 0] == 0 and pf.position[mm1, 0] == 0
    assert (int(pf.cash[fund1, usd]), int(pf.cash[mm1, usd])) == cash_before
    assert buyer.status is OrderStatus.NEW and buyer.leaves_qty == 200  # still working, same leaves
    assert ledger.qty(fund1, 0) == 0 and ledger.cost(fund1, 0) == 0 and ledger.realised(fund1, 0) == 0
    again = pipe.process(BustTrade(taker.exec_id, "twice", 22, "admin"))
    assert type(again[0]) is CommandError and again[0].code == RejectCode.UNKNOWN_EXECUTION
    assert pipe.process(BustTrade(fills[0].exec_id, "", 23, "alice"))[0].code == RejectCode.NOT_ENTITLED
    pipe.validate()
    journal.commit()
    fresh = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.state_hash() == pipe.state_hash()
