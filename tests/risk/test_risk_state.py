"""Controls, snapshots and the batch path of the risk engine."""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.constants import OrderType, RejectCode, Side
from engine.messages import SubmitOrder
from engine.orders import Order, OrderStatus
from risk.engine import RiskEngine
from tests.risk.test_risk_checks import GENEROUS, REF, buy, make_engine

MS = 1_000_000


def test_dump_load_when_controls_and_windows_changed_then_state_hash_and_answers_match():
    risk, pf = make_engine()
    risk.set_limit("FUND1", "AAPL", "max_order_qty", 7)
    risk.set_limit("*", "*", "max_orders_per_window", 3)
    risk.set_limit("FUND2", "*", "max_gross_exposure", "12.34")
    risk.set_kill_switch("user", "mallory", True)
    risk.set_kill_switch("account", "MM1", True)
    risk.set_trading_state("*", "MSFT", "REDUCING")
    for ts in range(5):
        risk.note_submit(buy(1, ts=ts * MS, user=f"u{ts % 2}"))
    restored, _ = make_engine()
    restored.portfolio = pf
    restored._make_state()
    restored.load(risk.dump())
    assert restored.state_hash() == risk.state_hash()
    probes = [buy(8), buy(1, ts=2 * MS), buy(1, ts=1500 * MS), buy(1, account="MM1"),
              buy(1, user="mallory"), buy(1, symbol="MSFT", price=20_000)]
    assert [restored.check_submit(c) for c in probes] == [risk.check_submit(c) for c in probes]


def test_state_hash_when_note_then_changes_and_when_check_then_does_not():
    risk, _ = make_engine()
    before = risk.state_hash()
    risk.check_submit(buy(1))
    risk.check_batch([buy(1, user="newcomer"), buy(2)])
    assert risk.state_hash() == before
    risk.note_submit(buy(1))
    assert risk.state_hash() != before


def test_rate_limit_lowered_at_run_time_then_keeps_the_latest_entries():
    risk, _ = make_engine()
    for ts in range(10):
        risk.note_submit(buy(1, ts=ts))
    risk.set_limit("FUND1", "*", "max_orders_per_window", 2)
    assert risk.check_submit(buy(1, ts=10))[0] == RejectCode.RISK_ORDER_RATE
    assert risk.check_submit(buy(1, ts=1000 * MS + 9)) is None  # both latest (8, 9) have left


@settings(max_examples=150, deadline=None)
@given(
    call=st.sampled_from(["limit", "kill", "state"]),
    account=st.one_of(st.sampled_from(["*", "FUND1", "", "fund1"]), st.text(max_size=5), st.integers()),
    symbol=st.one_of(st.sampled_from(["*", "AAPL", "aapl"]), st.text(max_size=5), st.none()),
    name=st.one_of(st.sampled_from(["max_order_qty", "max_order_notional", "price_collar_pct",
                                    "max_gross_exposure", "max_orders_per_window", "bogus"]),
                   st.text(max_size=5)),
    value=st.one_of(st.integers(), st.decimals(), st.text(max_size=8), st.floats(), st.none(),
                    st.booleans(), st.lists(st.integers(), max_size=2)),
)
def test_control_when_input_is_arbitrary_then_refusal_or_applied_never_an_exception(
        call, account, symbol, name, value):
    risk, _ = make_engine()
    before = risk.state_hash()
    if call == "limit":
        result = risk.set_limit(account, symbol, name, value)
    elif call == "kill":
        result = risk.set_kill_switch(name, account, value)
    else:
        result = risk.set_trading_state(account, symbol, value)
    if result is not None:
        code, text = result
        assert code == RejectCode.INVALID_CONTROL and isinstance(text, str) and text
        assert risk.state_hash() == before
    risk.check_submit(buy(1))  # the tables still check


def test_control_when_invalid_then_refused_with_reason():
    risk, _ = make_engine()
    bad = RejectCode.INVALID_CONTROL
    assert risk.set_limit("FUND1", "AAPL", "max_gross_exposure", "1")[0] == bad  # per account
    assert risk.set_limit("FUND1", "*", "max_order_notional", 1.5)[0] == bad  # no floats
    assert risk.set_limit("FUND1", "*", "max_order_qty", -5)[0] == bad
    assert risk.set_kill_switch("galaxy", "", True)[0] == bad
    assert risk.set_trading_state("FUND1", "*", "PAUSED")[0] == bad


def test_view_reports_limits_states_and_utilisation():
    risk, pf = make_engine()
    pf.position[0, 0] = 10
    risk.touch(0, 0)
    risk.set_trading_state("FUND1", "AAPL", "REDUCING")
    risk.note_submit(buy(1, ts=5))
    view = risk.view("FUND1")
    (acc,) = view.accounts
    assert acc.orders_in_window == 1 and acc.gross_exposure == 1000.0
    (cell,) = acc.cells
    assert cell.symbol == "AAPL" and cell.state == "REDUCING" and cell.position == 10
    assert cell.max_order_notional == "1000000000000.0000"


# -- BATCH == PER ORDER ---------------------------------------------------------------------------


def _stream(n: int, seed: int) -> list[SubmitOrder]:
    rng = random.Random(seed)
    symbols = [("AAPL", 10_000), ("MSFT", 20_000), ("SAP", 2_500), ("7203", 2_000)]
    out, ts = [], 0
    for k in range(n):
        ts += rng.randint(0, 40) * MS
        sym, ref = rng.choice(symbols)
        kind = rng.random()
        otype = OrderType.MARKET if kind < 0.1 else OrderType.LIMIT
        price = 0 if otype == OrderType.MARKET else ref + rng.randint(-ref // 15, ref // 15)
        if sym == "7203" and rng.random() < 0.5:
            price = price if otype == OrderType.LIMIT else 0
        out.append(SubmitOrder(rng.choice(["FUND1", "FUND2", "MM1", "NOPE"]) if rng.random() < 0.05
                               else rng.choice(["FUND1", "FUND2", "MM1"]),
                               f"b{k}", sym, rng.choice([Side.BUY, Side.SELL]),
                               rng.choice([1, 5, 20, 80, 300]), order_type=otype, price=price,
                               ts=ts, user=rng.choice(["alice", "bob", "carol", f"x{k % 7}"])))
    return out


def _engine_for_batch():
    from risk.config import AccountLimits, LimitRow, RiskConfig, UserLimits

    config = RiskConfig(
        limits=[LimitRow(max_order_qty=250, max_order_notional=Decimal("40000"),
                         price_collar_pct=Decimal(5), max_position=600),
                LimitRow(account="MM1", symbol="AAPL", max_position=2000)],
        accounts=[AccountLimits(max_gross_exposure=Decimal("300000"), max_net_exposure=Decimal("150000"),
                                max_orders_per_window=12, max_modifies_per_window=5)],
        users=[UserLimits(max_orders_per_window=9, max_modifies_per_window=5)],
    )
    risk, pf = make_engine(config, cash=3_000_000)
    pf.tick(4, 1_990, 2_010, 0, 1)  # 7203 quoted only
    pf.position[0, 1] = 120
    pf.position[2, 0] = -300
    risk.refresh()  # the portfolio changed after the engine was built
    return risk, pf


def test_batch_when_seeded_random_stream_then_same_answers_as_per_order_path():
    stream = _stream(600, seed=7)
    batch_risk, _ = _engine_for_batch()
    before = batch_risk.state_hash()
    batched = []
    for start in range(0, len(stream), 50):
        chunk = stream[start:start + 50]
        batched += batch_risk.check_batch(chunk)
        for cmd, answer in zip(chunk, batched[-len(chunk):], strict=True):  # what the pipeline does
            if answer is None:
                batch_risk.note_submit(cmd)
                _open(batch_risk, cmd)
    risk, _ = _engine_for_batch()
    single = []
    for cmd in stream:
        answer = risk.check_submit(cmd)
        single.append(answer)
        if answer is None:
            risk.note_submit(cmd)
            _open(risk, cmd)
    assert batched == single
    codes = {a[0] for a in single if a is not None}
    assert len(codes) >= 6 and sum(a is None for a in single) > 100, codes  # a varied stream
    assert batch_risk.state_hash() == risk.state_hash() != before


def _open(risk: RiskEngine, cmd: SubmitOrder) -> None:
    """What the pipeline does for a passed order: open it, then (risk stage note) touch its cell."""
    oid = len(risk.portfolio._hold_px) + 10_000 + cmd.ts
    instrument = REF.instruments[cmd.symbol].index
    risk.portfolio.open(Order(oid, cmd.account, cmd.cl_ord_id, cmd.symbol, instrument, cmd.side,
                              cmd.order_type, cmd.tif, cmd.price, cmd.stop_price, cmd.qty, 0, False,
                              0, cmd.ts, OrderStatus.NEW))
    risk.touch(REF.account_index[cmd.account], instrument)


def test_generous_config_is_a_valid_starting_point():
    risk, _ = make_engine(GENEROUS)
    assert risk.check_batch([buy(1), buy(2)]) == [None, None]
