"""The pipeline end to end in process: stages, events, dedupe, hooks, both paths, replay."""

from __future__ import annotations

import random

import msgspec
import pytest

from engine.book import NumbaBook
from engine.constants import OrderType, RejectCode, SelfTradePrevention, Side, TimeInForce
from engine.journal import JournalWriter
from engine.messages import (
    AdvanceTime,
    CancelOrder,
    CommandError,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    OrderCancelRejected,
    OrderDenied,
    OrderFilled,
    OrderTriggered,
    SubmitOrder,
)
from engine.model import ReferenceData
from engine.orders import OrderStatus
from engine.pipeline import Pipeline
from engine.recovery import recover
from engine.refbook import ReferenceBook
from kilat.config import load_config

_CONFIG = load_config()
# The engine alone: no users configured, so entitlements are not checked (tests/kilat checks them).
REF = ReferenceData(_CONFIG.instruments, _CONFIG.accounts)
BUY, SELL = Side.BUY, Side.SELL


def make_book(kind: str):
    cls = NumbaBook if kind == "numba" else ReferenceBook
    return cls(len(REF.by_index), 10_000, 256, 1_000)


@pytest.fixture(params=["numba", "reference"])
def pipe(request) -> Pipeline:
    return Pipeline(REF, make_book(request.param))


def order(cl, side=BUY, qty=100, price=15_000, account="FUND1", symbol="AAPL", ts=1_000, **kw):
    return SubmitOrder(account, cl, symbol, side, qty, price=price, ts=ts, **kw)


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# -- accept, match, fill ---------------------------------------------------------------------------


def test_submit_on_empty_book_then_accepted_and_working(pipe):
    events = pipe.process(order("a"))
    assert kinds(events) == ["OrderAccepted"]
    assert events[0].order_id == 1
    assert pipe.orders[1].status is OrderStatus.NEW


def test_crossing_order_then_both_sides_filled_with_distinct_exec_ids(pipe):
    pipe.process(order("s1", SELL, 60, 15_010, account="MM1"))
    pipe.process(order("s2", SELL, 60, 15_020, account="MM1"))
    events = pipe.process(order("b1", BUY, 100, 15_020, account="FUND1", ts=2_000))
    assert kinds(events) == ["OrderAccepted", "OrderFilled", "OrderFilled", "OrderFilled", "OrderFilled"]
    taker = [e for e in events if isinstance(e, OrderFilled) and not e.maker]
    assert [(f.last_qty, f.last_px, f.cum_qty, f.leaves_qty) for f in taker] == [
        (60, 15_010, 60, 40), (40, 15_020, 100, 0)]
    assert taker[-1].avg_px == pytest.approx((60 * 15_010 + 40 * 15_020) / 100)
    assert len({e.exec_id for e in events if isinstance(e, OrderFilled)}) == 4
    assert pipe.orders[3].status is OrderStatus.FILLED
    assert pipe.orders[2].status is OrderStatus.PARTIALLY_FILLED
    assert all(e.ts == 2_000 for e in events)


def test_duplicate_cl_ord_id_is_refused_and_never_creates_a_second_order(pipe):
    pipe.process(order("dup"))
    events = pipe.process(order("dup", qty=5))
    assert kinds(events) == ["OrderRejected"]
    assert events[0].code == RejectCode.DUPLICATE_CL_ORD_ID and events[0].order_id == 0
    assert len(pipe.orders) == 1
    # the same id under another account is another order
    assert kinds(pipe.process(order("dup", account="FUND2"))) == ["OrderAccepted"]


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"symbol": "NOPE"}, RejectCode.UNKNOWN_INSTRUMENT, "unknown instrument 'NOPE'"),
        ({"account": "X"}, RejectCode.UNKNOWN_ACCOUNT, "unknown account 'X'"),
        ({"qty": 0}, RejectCode.INVALID_QUANTITY, "qty must be a positive number of lots up to"),
        ({"qty": 10**12 + 1}, RejectCode.INVALID_QUANTITY, "got 1000000000001"),
        ({"price": 100_001}, RejectCode.PRICE_OUTSIDE_BAND, "band [100, 100000] ticks for AAPL, got 100001"),
        ({"price": 0}, RejectCode.INVALID_PRICE, "got 0"),
        ({"order_type": OrderType.MARKET}, RejectCode.INVALID_PRICE, "a MARKET order takes no price"),
        ({"tif": TimeInForce.GTD}, RejectCode.MISSING_EXPIRE_TIME, "needs expire_ts"),
        ({"tif": TimeInForce.GTD, "expire_ts": 999}, RejectCode.EXPIRE_TIME_IN_PAST, "not after"),
        ({"display_qty": 101}, RejectCode.INVALID_DISPLAY_QUANTITY, "1..qty (100), got 101"),
        ({"post_only": True, "tif": TimeInForce.IOC}, RejectCode.INVALID_ORDER_COMBINATION, "post_only"),
        ({"order_type": OrderType.STOP, "price": 0}, RejectCode.INVALID_STOP_PRICE, "stop_price"),
        ({"cl_ord_id": ""}, RejectCode.INVALID_CL_ORD_ID, "1 to 64"),
    ],
)
def test_invalid_order_is_rejected_with_code_and_reason_and_changes_nothing(pipe, fields, code, words):
    before = pipe.state_hash()
    base = {"cl": "bad"} | {k: v for k, v in fields.items() if k != "cl_ord_id"}
    if "cl_ord_id" in fields:
        base["cl"] = fields["cl_ord_id"]
    events = pipe.process(order(**base))
    assert kinds(events) == ["OrderRejected"]
    assert events[0].code == code and words in events[0].reason
    assert pipe.state_hash() == before and pipe.seq == 0


def test_risk_hook_denial_is_order_denied_changes_nothing_and_is_kept_for_audit(tmp_path):
    def deny_big(cmd, pipeline):
        return (2001, "qty above 1000 lots") if getattr(cmd, "qty", 0) > 1000 else None

    with JournalWriter(tmp_path / "j") as journal:
        pipe = Pipeline(REF, make_book("reference"), journal, risk_check=deny_big)
        before = pipe.state_hash()
        events = pipe.process(order("big", qty=5000))
        assert isinstance(events[0], OrderDenied) and events[0].code == 2001
        assert not pipe.orders and pipe.state_hash() == before
        assert kinds(pipe.process(order("ok", qty=10))) == ["OrderAccepted"]
        journal.commit()
    from engine.journal import read_journal
    from engine.messages import JOURNAL_DECODER, DeniedOrder

    records = [JOURNAL_DECODER.decode(payload) for _, payload in read_journal(tmp_path / "j")]
    assert [type(r).__name__ for r in records] == ["DeniedOrder", "SubmitOrder"]
    assert records[0] == DeniedOrder(order("big", qty=5000), 2001, "qty above 1000 lots")
    fresh = Pipeline(REF, make_book("reference"), risk_check=deny_big)
    recover(fresh, tmp_path / "j", tmp_path / "no-snapshots")
    assert fresh.state_hash() == pipe.state_hash()


# -- cancel, modify ---------------------------------------------------------------------------------


def test_cancel_when_partially_filled_then_leaves_released(pipe):
    pipe.process(order("b", BUY, 100, 15_000))
    pipe.process(order("s", SELL, 30, 15_000, account="MM1"))
    events = pipe.process(CancelOrder("FUND1", order_id=1, ts=3_000))
    assert kinds(events) == ["OrderCanceled"]
    assert events[0].canceled_qty == 70 and events[0].code == RejectCode.CANCEL_REQUESTED
    assert pipe.orders[1].status is OrderStatus.CANCELED and pipe.orders[1].cum_qty == 30


def test_cancel_by_cl_ord_id_and_cancel_of_filled_order_is_cancel_rejected(pipe):
    pipe.process(order("b", BUY, 10, 15_000))
    pipe.process(order("s", SELL, 10, 15_000, account="MM1"))
    events = pipe.process(CancelOrder("FUND1", orig_cl_ord_id="b", cl_ord_id="c1"))
    assert kinds(events) == ["OrderCancelRejected"]
    assert events[0].code == RejectCode.ORDER_NOT_WORKING and "Filled" in events[0].reason
    unknown = pipe.process(CancelOrder("FUND1", order_id=99))
    assert unknown[0].code == RejectCode.UNKNOWN_ORDER
    other = pipe.process(CancelOrder("FUND2", order_id=1))
    assert other[0].code == RejectCode.ORDER_ACCOUNT_MISMATCH


def test_modify_price_and_qty_then_replaced_and_qty_below_filled_refused(pipe):
    pipe.process(order("b", BUY, 100, 15_000))
    pipe.process(order("s", SELL, 40, 15_000, account="MM1"))
    events = pipe.process(ModifyOrder("FUND1", order_id=1, price=14_990, qty=80, cl_ord_id="m1"))
    assert kinds(events) == ["OrderReplaced"]
    rep = events[0]
    assert (rep.price, rep.qty, rep.leaves_qty, rep.priority_kept, rep.cl_ord_id) == (14_990, 80, 40, False, "m1")
    refused = pipe.process(ModifyOrder("FUND1", order_id=1, qty=40))
    assert isinstance(refused[0], OrderCancelRejected)
    assert refused[0].code == RejectCode.QUANTITY_BELOW_FILLED and refused[0].for_modify
    again = pipe.process(ModifyOrder("FUND1", order_id=1, qty=60, cl_ord_id="m1"))
    assert again[0].code == RejectCode.DUPLICATE_CL_ORD_ID


def test_modify_that_crosses_trades_immediately(pipe):
    pipe.process(order("s", SELL, 50, 15_010, account="MM1"))
    pipe.process(order("b", BUY, 50, 15_000))
    events = pipe.process(ModifyOrder("FUND1", order_id=2, price=15_010))
    assert kinds(events) == ["OrderReplaced", "OrderFilled", "OrderFilled"]
    assert pipe.orders[2].status is OrderStatus.FILLED


def test_post_only_that_would_cross_is_rejected_by_the_book(pipe):
    pipe.process(order("s", SELL, 50, 15_010, account="MM1"))
    events = pipe.process(order("po", BUY, 10, 15_010, post_only=True))
    assert kinds(events) == ["OrderRejected"]
    assert events[0].code == RejectCode.POST_ONLY_WOULD_CROSS and events[0].order_id == 2
    assert pipe.orders[2].status is OrderStatus.REJECTED


def test_self_trade_prevention_uses_the_accounts_configured_mode(pipe):
    pipe.process(order("s", SELL, 50, 15_000, account="FUND1"))  # FUND1: cancel_resting
    events = pipe.process(order("b", BUY, 50, 15_000, account="FUND1"))
    assert kinds(events) == ["OrderAccepted", "OrderCanceled"]
    assert events[1].order_id == 1 and events[1].code == RejectCode.SELF_TRADE_PREVENTED
    override = pipe.process(order("b2", SELL, 10, 14_000, account="FUND1", stp=SelfTradePrevention.NONE))
    assert kinds(override) == ["OrderAccepted", "OrderFilled", "OrderFilled"]


# -- stops, expiry, mass cancel ---------------------------------------------------------------------


def test_stop_order_triggers_on_last_trade_and_fills(pipe):
    pipe.process(order("stop", BUY, 10, 0, order_type=OrderType.STOP, stop_price=15_050))
    pipe.process(order("ask", SELL, 20, 15_060, account="MM1"))
    pipe.process(order("ask2", SELL, 5, 15_050, account="MM1"))
    events = pipe.process(order("lift", BUY, 5, 15_050, account="FUND2"))
    names = kinds(events)
    assert "OrderTriggered" in names
    trig = next(e for e in events if isinstance(e, OrderTriggered))
    assert trig.order_id == 1 and trig.trigger_px == 15_050
    assert pipe.orders[1].status is OrderStatus.FILLED and pipe.orders[1].avg_px == 15_060


def test_end_of_day_expires_day_orders_keeps_gtc_and_releases_the_days_ids(pipe):
    pipe.process(order("day", BUY, 10, 15_000))
    pipe.process(order("gtc", BUY, 10, 14_900, tif=TimeInForce.GTC))
    pipe.process(order("gone", BUY, 10, 14_800))
    pipe.process(CancelOrder("FUND1", order_id=3, cl_ord_id="cxl"))
    events = pipe.process(EndOfDay(ts=9_000))
    assert kinds(events) == ["OrderExpired", "CommandDone"]
    assert events[0].order_id == 1 and events[0].code == RejectCode.END_OF_DAY
    assert set(pipe.orders) == {2}  # finished orders left the hot state
    assert set(pipe.cl_ord_ids) == {("FUND1", "gtc")}  # a working order keeps its id
    dup = pipe.process(order("gtc", ts=10_000))
    assert dup[0].code == RejectCode.DUPLICATE_CL_ORD_ID
    next_day = pipe.process(order("day", ts=10_000))  # a new trading day may reuse the id
    assert kinds(next_day) == ["OrderAccepted"] and next_day[0].order_id == 4


def test_gtd_order_expires_when_time_advances_past_it(pipe):
    pipe.process(order("gtd", tif=TimeInForce.GTD, expire_ts=5_000))
    assert pipe.next_expiry() == 5_000
    assert pipe.process(AdvanceTime(ts=4_999)) == []
    events = pipe.process(AdvanceTime(ts=5_000))
    assert kinds(events) == ["OrderExpired"] and events[0].code == RejectCode.GTD_EXPIRED
    assert pipe.next_expiry() == 0


def test_mass_cancel_by_account_and_symbol(pipe):
    pipe.process(order("a", BUY, 10, 15_000))
    pipe.process(order("b", SELL, 10, 16_000))
    pipe.process(order("c", BUY, 10, 30_000, symbol="MSFT"))
    pipe.process(order("d", BUY, 10, 15_000, account="FUND2"))
    events = pipe.process(MassCancel(account="FUND1", symbol="AAPL"))
    assert kinds(events) == ["OrderCanceled", "OrderCanceled", "CommandDone"]
    assert [e.order_id for e in events[:2]] == [1, 2] and events[0].code == RejectCode.MASS_CANCEL
    bad = pipe.process(MassCancel(account="NOPE"))
    assert isinstance(bad[0], CommandError) and bad[0].code == RejectCode.UNKNOWN_ACCOUNT


# -- the batch path, replay and snapshots ----------------------------------------------------------


def random_commands(n: int, seed: int) -> list:
    """A mixed stream over two instruments and three accounts, with every command kind."""
    rng = random.Random(seed)
    cmds, live, ts = [], [], 1_000
    for i in range(n):
        ts += rng.randint(1, 50)
        r = rng.random()
        if r < 0.55 or not live:
            side = rng.choice((BUY, SELL))
            mid = 15_000
            price = mid + rng.randint(-10, 10) + (5 if side == BUY else -5)
            kw = {}
            roll = rng.random()
            if roll < 0.1:
                kw["tif"] = TimeInForce.IOC
            elif roll < 0.15:
                kw["order_type"], price = OrderType.MARKET, 0
                kw["tif"] = TimeInForce.IOC
            elif roll < 0.2:
                kw["display_qty"] = 5
            elif roll < 0.25:
                kw["tif"], kw["expire_ts"] = TimeInForce.GTD, ts + rng.randint(100, 3_000)
            elif roll < 0.28:
                kw["order_type"] = OrderType.STOP_LIMIT
                kw["stop_price"] = mid + (8 if side == BUY else -8)
            elif roll < 0.3:
                kw["tif"] = TimeInForce.FOK
            elif roll < 0.33:
                kw["post_only"] = True
            account = rng.choice(("FUND1", "FUND2", "MM1"))
            cmds.append(order(f"c{i}", side, rng.randint(1, 30), price, account=account,
                              symbol=rng.choice(("AAPL", "MSFT")), ts=ts, **kw))
            live.append((account, f"c{i}"))
        elif r < 0.85:
            account, cl = live.pop(rng.randrange(len(live)))
            cmds.append(CancelOrder(account, orig_cl_ord_id=cl, ts=ts))
        elif r < 0.95:
            account, cl = rng.choice(live)
            cmds.append(ModifyOrder(account, orig_cl_ord_id=cl, price=15_000 + rng.randint(-12, 12),
                                    ts=ts))
        elif r < 0.98:
            cmds.append(AdvanceTime(ts=ts))
        else:
            cmds.append(EndOfDay(ts=ts))
    return cmds


def test_batch_path_gives_the_same_events_and_state_as_the_per_command_path():
    cmds = random_commands(4_000, seed=7)
    single, batched = Pipeline(REF, make_book("numba")), Pipeline(REF, make_book("numba"))
    one_by_one = [single.process(c) for c in cmds]
    in_batches = []
    for start in range(0, len(cmds), 97):
        in_batches.extend(batched.process_batch(cmds[start:start + 97]))
    assert len(in_batches) == len(cmds)
    assert msgspec.msgpack.encode(in_batches) == msgspec.msgpack.encode(one_by_one)
    assert batched.state_hash() == single.state_hash()
    batched.validate()


def test_numba_and_reference_pipelines_agree_event_for_event():
    cmds = random_commands(3_000, seed=11)
    a, b = Pipeline(REF, make_book("numba")), Pipeline(REF, make_book("reference"))
    for i, cmd in enumerate(cmds):
        assert a.process(cmd) == b.process(cmd)
        if i % 250 == 0:
            a.validate()
            b.validate()
    assert a.state_hash() == b.state_hash()
    a.validate()
    b.validate()


def test_validate_catches_an_order_that_disagrees_with_the_book(pipe):
    pipe.process(order("v1", BUY, 10, 15_000))
    pipe.validate()
    pipe.orders[1].cum_qty = 3  # an engine bug would look like this
    with pytest.raises(AssertionError, match="order 1 .* leaves 7, book has 10"):
        pipe.validate()


@pytest.mark.parametrize("kind", ["numba", "reference"])
def test_replay_of_the_journal_reaches_the_identical_state_hash(tmp_path, kind):
    cmds = random_commands(2_000, seed=3)
    with JournalWriter(tmp_path / "journal") as journal:
        live = Pipeline(REF, make_book(kind), journal)
        for start in range(0, len(cmds), 50):
            live.process_batch(cmds[start:start + 50])
            journal.commit()
    fresh = Pipeline(REF, make_book(kind))
    report = recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert report.replayed == live.seq and fresh.seq == live.seq
    assert fresh.state_hash() == live.state_hash()
    fresh.validate()


@pytest.mark.parametrize("kind", ["numba", "reference"])
def test_snapshot_then_replay_of_the_rest_reaches_the_identical_state(tmp_path, kind):
    from engine.snapshot import write_snapshot

    cmds = random_commands(2_000, seed=5)
    with JournalWriter(tmp_path / "journal") as journal:
        live = Pipeline(REF, make_book(kind), journal)
        for cmd in cmds[:1_200]:
            live.process(cmd)
        journal.commit()
        write_snapshot(tmp_path / "snapshots", live.seq, live.snapshot())
        at_snapshot = live.seq
        for cmd in cmds[1_200:]:
            live.process(cmd)
    fresh = Pipeline(REF, make_book(kind))
    report = recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert report.snapshot_seq == at_snapshot and report.replayed == live.seq - at_snapshot
    assert fresh.state_hash() == live.state_hash()
    # and the restored engine keeps working identically
    live.journal = None
    more = random_commands(300, seed=6)
    renamed = [msgspec.structs.replace(c, cl_ord_id="z" + c.cl_ord_id) if isinstance(c, SubmitOrder) else c
               for c in more if not isinstance(c, (CancelOrder, ModifyOrder))]
    assert [fresh.process(c) for c in renamed] == [live.process(c) for c in renamed]



def _ref_with(instruments=None, accounts=None):
    from engine.model import ReferenceData

    config = load_config()
    return ReferenceData(instruments or config.instruments, accounts or config.accounts)


def test_replay_trusts_the_journal_when_a_price_band_was_narrowed_since(tmp_path):
    import msgspec as ms

    with JournalWriter(tmp_path / "journal") as journal:
        live = Pipeline(REF, make_book("numba"), journal)
        live.process(order("wide", BUY, 10, 90_000))  # inside today's band [1.00, 1000.00]
    config = load_config()
    narrow = [ms.structs.replace(i, price_band=(i.price_band[0], ms.convert("500.00", type=type(i.tick_size))))
              if i.symbol == "AAPL" else i for i in config.instruments]
    ref = _ref_with(instruments=narrow)
    fresh = Pipeline(ref, NumbaBook(len(ref.by_index), 10_000, 256, 1_000))
    recover(fresh, tmp_path / "journal", tmp_path / "snapshots")
    assert fresh.orders[1].price == 90_000 and fresh.orders[1].status is OrderStatus.NEW
    refused = fresh.process(order("new", BUY, 10, 90_000, ts=2_000))  # but new orders obey it
    assert refused[0].code == RejectCode.PRICE_OUTSIDE_BAND


def test_snapshot_refuses_a_config_that_reordered_instruments_but_takes_new_ones_at_the_end():
    from engine.model import InstrumentSpec
    from engine.pipeline import SnapshotMismatch

    live = Pipeline(REF, make_book("numba"))
    live.process(order("a", BUY, 10, 15_000))
    data = live.snapshot()
    config = load_config()
    reordered = _ref_with(instruments=list(reversed(config.instruments)))
    with pytest.raises(SnapshotMismatch, match="Keep those in the same order"):
        Pipeline(reordered, NumbaBook(len(reordered.by_index), 10_000, 256, 1_000)).restore(data)
    extra = InstrumentSpec("NEW1", "USD", config.instruments[0].tick_size, 1, config.instruments[0].price_band)
    grown = _ref_with(instruments=[*config.instruments, extra])
    restored = Pipeline(grown, NumbaBook(len(grown.by_index), 10_000, 256, 1_000))
    restored.restore(data)
    assert restored.orders[1].symbol == "AAPL" and restored.book.best_bid(0) == 15_000
