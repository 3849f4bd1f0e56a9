"""A seeded trading day through a real Pipeline, with planted abuse: every episode is found (by
its evidence ids), the clean flow raises nothing, and a mid-day restart changes nothing."""

from __future__ import annotations

import random
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np

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
from engine.constants import Side, TimeInForce
from engine.messages import (
    CancelOrder,
    EndOfDay,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    SubmitOrder,
)
from engine.model import AccountSpec, InstrumentSpec, ReferenceData
from engine.pipeline import Pipeline
from engine.refbook import ReferenceBook

NY = ZoneInfo("America/New_York")
S = 10**9
OPEN = int(datetime(2024, 3, 5, 9, 30, tzinfo=NY).timestamp()) * S
CLOSE = int(datetime(2024, 3, 5, 16, 0, tzinfo=NY).timestamp()) * S
SYMBOLS = ("AAA", "BBB", "CCC")
FUNDS = [f"F{k}" for k in range(6)]
BUY, SELL = Side.BUY, Side.SELL


def make_ref() -> ReferenceData:
    instruments = [InstrumentSpec(sym, "USD", Decimal("0.01"), 1, (Decimal(1), Decimal(1000)))
                   for sym in SYMBOLS]
    owners = {"F4": "PENSION", "F5": "PENSION", "WA1": "W", "WA2": "W"}
    names = [*FUNDS, "WA1", "WA2", "SP1", "LY1", "MC1", "LP1", "FR1", "OT1"]
    return ReferenceData(instruments, [AccountSpec(n, owner=owners.get(n, "")) for n in names])


REF = make_ref()
CONFIG = SurveillanceConfig(
    wash_trades=WashTradesConfig(window_ms=60_000),
    spoofing=SpoofingConfig(min_qty=5_000, cancel_within_ms=2_000),
    layering=LayeringConfig(min_orders=4, min_levels=3, stack_window_ms=10_000,
                            cancel_within_ms=5_000, min_cancel_pct=75),
    marking_close=MarkingCloseConfig(close_time="16:00", timezone="America/New_York",
                                     window_minutes=10, min_share_pct=50, min_qty=1_000),
    order_to_trade=OrderToTradeConfig(window_s=60, min_orders=50, max_ratio=25),
    front_running=FrontRunningConfig(block_qty=10_000, client_accounts=FUNDS),
    max_owner_instruments=256, max_account_instruments=256,
)


def at(hh: int, mm: int) -> int:
    return int(datetime(2024, 3, 5, hh, mm, tzinfo=NY).timestamp()) * S


class Day:
    """Drives the pipeline: clean one-directional fund flow plus planted episodes."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.book = ReferenceBook(len(REF.by_index), 100_000, 1024, 1_000)
        self.pipe = Pipeline(REF, self.book)
        self.events: list = []
        self.batches: list[list] = []  # the events of each command
        self.planted: dict[str, tuple[str, set[int]]] = {}
        self.resting: dict[tuple[str, int], list[int]] = {}
        self.n = 0
        # one direction per fund and instrument for the day; the two PENSION accounts agree
        self.side = {(f, i): Side((k + i) % 2 if f != "F5" else (4 + i) % 2)
                     for k, f in enumerate(FUNDS) for i in range(len(SYMBOLS))}

    def send(self, cmd) -> list:
        events = self.pipe.process(cmd)
        self.batches.append(events)
        for e in events:
            if isinstance(e, OrderAccepted) and e.cl_ord_id.startswith("c"):
                self.resting.setdefault((e.account, REF.instruments[e.symbol].index), []).append(e.order_id)
            elif isinstance(e, (OrderCanceled, OrderExpired)) or (
                    isinstance(e, OrderFilled) and e.leaves_qty == 0):
                for ids in self.resting.values():
                    if e.order_id in ids:
                        ids.remove(e.order_id)
        return events

    def order(self, account, symbol, side, qty, price, ts, tif=TimeInForce.DAY, tag="c") -> int:
        self.n += 1
        events = self.send(SubmitOrder(account, f"{tag}{self.n}", symbol, side, qty, price=price,
                                       tif=tif, ts=ts))
        return events[0].order_id

    def best(self, i: int) -> tuple[int, int]:
        return self.book.best_bid(i), self.book.best_ask(i)

    # -- clean flow ----------------------------------------------------------------------------

    def clean_step(self, ts: int, mids: list[int]) -> None:
        rng = self.rng
        fund, i = rng.choice(FUNDS), rng.randrange(len(SYMBOLS))
        mids[i] += rng.choice((-1, 0, 0, 1))
        side, mine = self.side[(fund, i)], self.resting.get((fund, i), [])
        if mine and (rng.random() < 0.15 or len(mine) > 8):
            self.send(CancelOrder(fund, order_id=mine[0], ts=ts))
            return
        bid, ask = self.best(i)
        qty = rng.randint(1, 400)
        if rng.random() < 0.35 and (ask if side == BUY else bid):
            price = ask + 2 if side == BUY else bid - 2
            self.order(fund, SYMBOLS[i], side, qty, price, ts, TimeInForce.IOC)
        else:
            k = rng.randint(1, 5)
            self.order(fund, SYMBOLS[i], side, qty, mids[i] - k if side == BUY else mids[i] + k, ts)

    # -- planted episodes: each returns False when the book does not allow it yet ---------------

    def plant_wash(self, ts: int) -> bool:
        bid, ask = self.best(0)
        if not bid or not ask or ask - bid < 2:
            return False
        p = bid + 1
        a = self.order("WA1", "AAA", SELL, 200, p, ts, tag="w")
        b = self.order("WA2", "AAA", BUY, 200, p, ts + 1_000_000, TimeInForce.IOC, tag="w")
        self.planted["wash"] = ("wash_trades", {a, b})
        return True

    def plant_spoof(self, ts: int) -> bool:
        depth = self.book.depth(1, BUY, 1)
        if not depth or depth[0][1] < 100:
            return False
        bid = depth[0][0]
        spoof = self.order("SP1", "BBB", BUY, 20_000, bid - 1, ts, tag="s")
        sell = self.order("SP1", "BBB", SELL, 100, bid, ts + 200_000_000, TimeInForce.IOC, tag="s")
        self.send(CancelOrder("SP1", order_id=spoof, ts=ts + 900_000_000))
        self.planted["spoof"] = ("spoofing", {spoof, sell})
        return True

    def plant_layering(self, ts: int) -> bool:
        depth = self.book.depth(2, BUY, 1)
        if not depth or depth[0][1] < 50:
            return False
        bid = depth[0][0]
        layers = [self.order("LY1", "CCC", BUY, 300, bid - d, ts + k * 50_000_000, tag="l")
                  for k, d in enumerate((1, 2, 3, 3))]
        sell = self.order("LY1", "CCC", SELL, 50, bid, ts + 300_000_000, TimeInForce.IOC, tag="l")
        for k, oid in enumerate(layers):
            self.send(CancelOrder("LY1", order_id=oid, ts=ts + (500 + 100 * k) * 1_000_000))
        self.planted["layering"] = ("layering", {sell, *layers})
        return True

    def plant_front_running(self, ts: int) -> bool:
        bid, ask = self.best(0)
        if not bid or not ask:
            return False
        block = self.order("F0", "AAA", BUY, 20_000, bid, ts, tag="b")  # F0 buys AAA all day
        ahead = self.order("FR1", "AAA", BUY, 300, ask, ts + S, TimeInForce.IOC, tag="r")
        self.pending_cancel = (ts + 30 * S, CancelOrder("F0", order_id=block, ts=ts + 30 * S))
        self.planted["front"] = ("front_running", {block, ahead})
        return True

    def plant_order_to_trade(self, ts: int) -> bool:
        bid, _ = self.best(1)
        if not bid:
            return False
        ids = set()
        for k in range(60):
            t = ts + k * 200_000_000
            oid = self.order("OT1", "BBB", BUY, 100, bid - 30, t, tag="o")
            self.send(CancelOrder("OT1", order_id=oid, ts=t + 100_000_000))
            ids.add(oid)
        self.planted["otr"] = ("order_to_trade", ids)
        return True

    def plant_close_liquidity(self, ts: int) -> bool:
        _, ask = self.best(2)
        if not ask:
            return False
        self.close_ask = ask
        for k in range(20):
            self.order("LP1", "CCC", SELL, 1_500, ask + k % 5, ts + k * 1_000_000, tag="p")
        return True

    def plant_close(self, ts: int) -> bool:
        ids = {self.order("MC1", "CCC", BUY, 2_000, self.close_ask + 10, ts + k * 20 * S,
                          TimeInForce.IOC, tag="m") for k in range(15)}
        self.planted["close"] = ("marking_close", ids)
        return True

    def run(self, commands: int) -> None:
        plan = [(at(10, 0), self.plant_wash), (at(10, 30), self.plant_spoof),
                (at(11, 0), self.plant_layering), (at(11, 30), self.plant_front_running),
                (at(12, 0), self.plant_order_to_trade), (at(15, 48), self.plant_close_liquidity),
                (at(15, 53), self.plant_close)]
        self.pending_cancel = None
        mids = [10_000, 20_000, 5_000]
        step = (CLOSE - OPEN) // commands
        ts = OPEN
        while ts < CLOSE - step:
            ts += step
            if plan and ts >= plan[0][0] and plan[0][1](ts):
                ts += 60 * S if plan.pop(0)[1] is not self.plant_close else 5 * 60 * S + S
                continue
            if self.pending_cancel and ts >= self.pending_cancel[0]:
                self.send(self.pending_cancel[1])
                self.pending_cancel = None
            self.clean_step(ts, mids)
        assert not plan, f"episodes never planted: {[f.__name__ for _, f in plan]}"
        self.send(EndOfDay(ts=CLOSE + S))


def day_findings(day: Day, restart_at: int | None = None):
    """Feed the day's events in batches of ~25 commands; optionally dump/load at a batch."""
    surv = Surveillance(CONFIG, REF)
    found, hashes = [], []
    batches = day.batches
    for b in range(0, len(batches), 25):
        if restart_at is not None and b == restart_at:
            saved = surv.dump()
            surv = Surveillance(CONFIG, REF)
            surv.load(saved)
        events = [e for cmd_events in batches[b:b + 25] for e in cmd_events]
        found += surv.process(surv.encode(events))
        hashes.append(surv.state_hash())
    return found, hashes, surv


def matches(finding, episode) -> bool:
    detector, ids = episode
    return finding.detector == detector and finding.order_ids and set(finding.order_ids) <= ids


def test_a_day_of_flow_with_planted_abuse_finds_every_episode_and_nothing_else():
    day = Day(seed=7)
    day.run(commands=12_000)
    found, _, surv = day_findings(day)
    n_fills = sum(isinstance(e, OrderFilled) for b in day.batches for e in b)
    assert n_fills > 3_000, "the clean flow should trade"
    assert set(day.planted) == {"wash", "spoof", "layering", "front", "otr", "close"}
    for name, episode in day.planted.items():
        hits = [f for f in found if matches(f, episode)]
        assert len(hits) == 1, f"planted {name}: {len(hits)} findings {hits}"
    unmatched = [f for f in found if not any(matches(f, ep) for ep in day.planted.values())]
    assert unmatched == []
    close = next(f for f in found if f.detector == "marking_close")
    assert close.ts == CLOSE and close.account == "MC1" and close.symbol == "CCC"
    stats = surv.stats()
    assert stats["bad_rows"] == 0 and stats["owner_instruments_full"] == 0


def test_a_mid_day_restart_from_dump_gives_the_same_findings_and_state_hashes():
    day = Day(seed=11)
    day.run(commands=4_000)
    straight, hashes, _ = day_findings(day)
    restart = (len(day.batches) // 2) // 25 * 25
    restarted, hashes2, _ = day_findings(day, restart_at=restart)
    assert restarted == straight and hashes2 == hashes
    assert len(straight) >= 5


def test_encode_maps_pipeline_events_to_rows_with_the_orders_instrument_side_and_owner():
    day = Day(seed=3)
    surv = Surveillance(CONFIG, REF)
    a = day.order("WA1", "BBB", SELL, 50, 20_000, OPEN)
    b = day.order("WA2", "BBB", BUY, 80, 20_000, OPEN + 5)
    day.send(CancelOrder("WA2", order_id=b, ts=OPEN + 9))
    rows = surv.encode([e for batch in day.batches for e in batch])
    from compliance import surveillance_kernels as sk
    kinds = rows[:, sk.R_KIND].tolist()
    assert kinds == [sk.K_NEW, sk.K_NEW, sk.K_FILL, sk.K_FILL, sk.K_CANCEL]
    cancel = rows[-1]
    assert (cancel[sk.R_OID], cancel[sk.R_INSTR], cancel[sk.R_SIDE], cancel[sk.R_QTY],
            cancel[sk.R_ORDER_QTY], cancel[sk.R_ORDER_TS]) == (b, 1, BUY, 30, 80, OPEN + 5)
    assert rows[2, sk.R_MAKER] == 0 and rows[3, sk.R_MAKER] == 1 and rows[3, sk.R_OID] == a
    assert rows[2, sk.R_OWNER] == rows[3, sk.R_OWNER]  # WA1 and WA2: one beneficial owner
    assert surv.stats()["working_orders"] == 0
    assert np.all(rows[:, sk.R_ACCOUNT] >= 0)
