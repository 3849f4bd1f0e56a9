"""Block orders through the wired pipeline: traded once in the block account, each fill allocated
to the accounts at the block's average price, compliance per account first, replay identical."""

from __future__ import annotations

import msgspec
import pytest

from engine.constants import RejectCode, Side
from engine.journal import JournalWriter
from engine.messages import (
    AllocationMade,
    AllocationTarget,
    BustTrade,
    OrderAccepted,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    PriceTick,
    SubmitBlockOrder,
    SubmitOrder,
)
from engine.recovery import recover
from engine.refbook import ReferenceBook
from kilat.config import check_config, load_config
from kilat.service import build_pipeline

CONFIG = load_config()
REF = check_config(CONFIG)
A = REF.account_index
AAPL = REF.instruments["AAPL"].index


def pipeline(journal=None):
    p = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100), journal)
    p.process(PriceTick("AAPL", 18_990, 19_010, 19_000, 1, "admin"))
    return p


def block(method, targets, qty=1_000, cl="blk-1", price=19_000):
    return SubmitBlockOrder("BLOCK", cl, "AAPL", Side.BUY, qty, method,
                            [AllocationTarget(*t) for t in targets], price=price, ts=10, user="alice")


def sell(p, qty, cl, price=19_000):
    return p.process(SubmitOrder("MM1", cl, "AAPL", Side.SELL, qty, price=price, ts=20, user="bob"))


def assert_replays(p, journal, tmp_path) -> None:
    """Recovery from the journal reaches the same state hash."""
    journal.commit()
    fresh = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 1_000, 64, 100))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.state_hash() == p.state_hash()


def allocations(events) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        if type(e) is AllocationMade:
            out[e.account] = out.get(e.account, 0) + e.qty
    return out


def test_percent_block_fills_in_two_parts_and_each_fill_is_allocated_exactly(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    cash0 = {a: int(p.portfolio.cash[A[a], p.portfolio.currency_index["USD"]]) for a in ("FUND1", "FUND2", "BLOCK")}
    sell(p, 300, "s1", 18_990)  # MM1 offers 300 at 189.90 and 700 at 190.00
    sell(p, 700, "s2", 19_000)
    events = p.process(block("percent", [("FUND1", 0, 6_000), ("FUND2", 0, 4_000)]))
    assert type(events[0]) is OrderAccepted
    fills = [e for e in events if type(e) is OrderFilled and e.account == "BLOCK"]
    assert [(f.last_qty, f.last_px) for f in fills] == [(300, 18_990), (700, 19_000)]
    made = [(e.account, e.qty) for e in events if type(e) is AllocationMade]
    assert made == [("FUND1", 180), ("FUND2", 120), ("FUND1", 420), ("FUND2", 280)]
    pf = p.portfolio
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL], pf.position[A["BLOCK"], AAPL]) == (600, 400, 0)
    usd = pf.currency_index["USD"]
    spent = {a: cash0[a] - int(pf.cash[A[a], usd]) for a in cash0}
    assert spent["FUND1"] + spent["FUND2"] + spent["BLOCK"] == 300 * 18_990 + 700 * 19_000  # cents
    assert abs(spent["BLOCK"]) <= 1  # only rounding stays in the block account
    # each account's average price is the block's average: 189.97
    assert p.ledger.cost(A["FUND1"], AAPL) == 600 * 18_997 and p.ledger.qty(A["BLOCK"], AAPL) == 0
    assert p.ledger.cost(A["FUND2"], AAPL) == 400 * 18_997
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_thirds_with_remainders_never_over_or_under_allocate():
    p = pipeline()
    # MM1 is the seller here, so the three-way split goes to FUND1, FUND2 and the block itself
    p.process(SubmitBlockOrder("BLOCK", "blk-3", "AAPL", Side.BUY, 100, "percent",
                               [AllocationTarget("FUND1", 0, 3_334), AllocationTarget("FUND2", 0, 3_333),
                                AllocationTarget("BLOCK", 0, 3_333)], price=19_000, ts=10, user="alice"))
    total = {}
    for k, qty in enumerate((1, 7, 13, 29, 50)):
        for acct, n in allocations(sell(p, qty, f"t{k}")).items():
            total[acct] = total.get(acct, 0) + n
        assert sum(total.values()) == sum((1, 7, 13, 29, 50)[:k + 1])
    assert total == {"FUND1": 34, "FUND2": 33, "BLOCK": 33}


@pytest.mark.parametrize("method,targets", [
    ("pro_rata_nav", [("FUND1", 0, 0), ("FUND2", 0, 0)]),
    ("target_weight", [("FUND1", 0, 100), ("FUND2", 0, 100)]),
])
def test_nav_based_methods_split_by_each_accounts_nav(method, targets):
    p = pipeline()
    p.process(PriceTick("EURUSD", 0, 0, 108_000, 2, "admin"))
    p.process(PriceTick("USDJPY", 0, 0, 150_000, 3, "admin"))
    p.process(block(method, targets))
    got = allocations(sell(p, 1_000, "s1"))
    nav1 = p.portfolio.nav_minor(A["FUND1"], "USD")
    nav2 = p.portfolio.nav_minor(A["FUND2"], "USD")
    assert nav1 and nav2
    assert abs(got["FUND1"] - 1_000 * nav1 / (nav1 + nav2)) < 1


def test_an_allocation_that_does_not_add_up_or_breaks_compliance_is_refused():
    p = pipeline()
    wrong = p.process(block("explicit", [("FUND1", 600, 0), ("FUND2", 300, 0)]))
    assert type(wrong[0]) is OrderRejected and wrong[0].code == RejectCode.INVALID_ALLOCATION
    p.process(SubmitOrder("FUND1", "big", "AAPL", Side.BUY, 10_000, price=18_900, ts=5, user="alice"))
    denied = p.process(block("percent", [("FUND1", 0, 10_000)], qty=5_000, cl="blk-2"))
    assert type(denied[0]) is OrderDenied and "allocation to FUND1" in denied[0].reason  # GEF's 5% rule
    assert not p.blocks


def test_a_bust_after_allocation_takes_the_fill_back_from_the_accounts_exactly(tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    usd = p.portfolio.currency_index["USD"]
    cash0 = {a: int(p.portfolio.cash[A[a], usd]) for a in ("FUND1", "FUND2", "BLOCK", "MM1")}
    sell(p, 300, "s1", 18_990)
    sell(p, 700, "s2", 19_000)
    events = p.process(block("percent", [("FUND1", 0, 6_000), ("FUND2", 0, 4_000)]))
    first = next(e for e in events if type(e) is OrderFilled and e.account == "BLOCK")  # 300 at 189.90
    busted = p.process(BustTrade(first.exec_id, "erroneous print", 30, "admin"))
    back = sorted((e.account, e.qty) for e in busted if type(e) is AllocationMade)
    assert back == [("FUND1", -180), ("FUND2", -120)]  # 700 left: 420 / 280, as if 300 never traded
    pf = p.portfolio
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL], pf.position[A["BLOCK"], AAPL]) == (420, 280, 0)
    assert p.ledger.cost(A["FUND1"], AAPL) == 420 * 19_000 and p.ledger.qty(A["BLOCK"], AAPL) == 0
    spent = {a: cash0[a] - int(pf.cash[A[a], usd]) for a in cash0}
    assert spent["FUND1"] + spent["FUND2"] + spent["BLOCK"] == 700 * 19_000 and spent["MM1"] == -700 * 19_000
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_amend_then_cancel_an_allocation_moves_exact_deltas_and_replays(tmp_path):
    from engine.messages import AmendAllocation, CancelAllocation, CommandError

    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    sell(p, 1_000, "s1", 19_000)
    oid = p.process(block("percent", [("FUND1", 0, 6_000), ("FUND2", 0, 4_000)]))[0].order_id
    pf = p.portfolio
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL]) == (600, 400)
    no_reason = p.process(AmendAllocation(oid, "percent", [AllocationTarget("FUND1", 0, 5_000),
                                                          AllocationTarget("FUND2", 0, 5_000)], "", 30, "alice"))
    assert type(no_reason[0]) is CommandError
    amended = p.process(AmendAllocation(oid, "percent", [AllocationTarget("FUND1", 0, 5_000),
                                                        AllocationTarget("FUND2", 0, 5_000)],
                                        "PM re-weighted", 31, "alice"))
    assert sorted((e.account, e.qty) for e in amended if type(e) is AllocationMade) == [("FUND1", -100), ("FUND2", 100)]
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL]) == (500, 500)
    assert p.ledger.qty(A["FUND1"], AAPL) == 500 and p.ledger.cost(A["FUND2"], AAPL) == 500 * 19_000
    p.process(CancelAllocation(oid, "wrong block", 32, "alice"))
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL], pf.position[A["BLOCK"], AAPL]) == (0, 0, 1_000)
    assert p.ledger.qty(A["BLOCK"], AAPL) == 1_000
    p.validate()
    assert_replays(p, journal, tmp_path)


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_every_accounts_ledger_cost_follows_the_block_average_as_fills_at_new_prices_arrive(side, tmp_path):
    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    other, other_side = ("MM1", Side.SELL) if side == Side.BUY else ("MM1", Side.BUY)
    if side == Side.SELL:  # FUND1 and FUND2 sell short into the block: give them the borrow
        from engine.messages import SetLocate
        for account in ("FUND1", "FUND2", "BLOCK"):
            assert type(p.process(SetLocate(account, "AAPL", 10_000, 1, "carol"))[0]).__name__ == "CommandDone"
    events = p.process(SubmitBlockOrder("BLOCK", "blk-avg", "AAPL", side, 1_000, "percent",
                                        [AllocationTarget("FUND1", 0, 6_667), AllocationTarget("FUND2", 0, 3_333)],
                                        price=19_000, ts=10, user="alice"))
    oid = events[0].order_id
    # fills of 1 lot at moving prices: one account gets nothing on most of them, yet its cost moves
    for k, (qty, price) in enumerate(((300, 18_990), (1, 19_000), (1, 18_995), (2, 19_000), (1, 18_999))):
        p.process(SubmitOrder(other, f"c{k}", "AAPL", other_side, qty, price=price, ts=20 + k, user="bob"))
    sign = 1 if side == Side.BUY else -1
    for account, lots, notional in p.blocks[oid].allocations():
        assert p.ledger.qty(A[account], AAPL) == sign * lots
        assert p.ledger.cost(A[account], AAPL) == sign * notional  # tick·lots at the block's average
        assert p.ledger.realised(A[account], AAPL) == 0
    assert p.ledger.qty(A["BLOCK"], AAPL) == 0
    p.validate()
    assert_replays(p, journal, tmp_path)


def test_a_block_lives_one_day_so_gtc_and_gtd_blocks_are_refused():
    from engine.constants import TimeInForce

    p = pipeline()
    for tif in (TimeInForce.GTC, TimeInForce.GTD):
        cmd = msgspec.structs.replace(block("percent", [("FUND1", 0, 10_000)], cl=f"blk-{tif.name}"), tif=tif)
        refused = p.process(cmd)
        assert type(refused[0]) is OrderRejected and refused[0].code == RejectCode.INVALID_TIME_IN_FORCE
        assert tif.name in refused[0].reason
    assert not p.blocks


def test_a_bust_after_the_allocation_is_cancelled_takes_the_fill_back_from_the_block_account(tmp_path):
    from engine.messages import CancelAllocation

    journal = JournalWriter(tmp_path / "journal", fsync=False)
    p = pipeline(journal)
    sell(p, 300, "s1", 18_990)
    sell(p, 700, "s2", 19_000)
    events = p.process(block("percent", [("FUND1", 0, 6_000), ("FUND2", 0, 4_000)]))
    oid = events[0].order_id
    first = next(e for e in events if type(e) is OrderFilled and e.account == "BLOCK")
    p.process(CancelAllocation(oid, "wrong accounts", 30, "alice"))
    busted = p.process(BustTrade(first.exec_id, "erroneous print", 31, "admin"))
    assert not [e for e in busted if type(e) is AllocationMade]
    pf = p.portfolio
    assert (pf.position[A["FUND1"], AAPL], pf.position[A["FUND2"], AAPL], pf.position[A["BLOCK"], AAPL]) == (0, 0, 700)
    assert p.blocks[oid].filled_qty == 700 and not p.blocks[oid].active
    assert p.ledger.qty(A["BLOCK"], AAPL) == 700 and p.ledger.cost(A["BLOCK"], AAPL) == 700 * 19_000
    p.validate()
    assert_replays(p, journal, tmp_path)
