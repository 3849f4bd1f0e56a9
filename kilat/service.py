"""The running service: config → reference data → book → journal → pipeline → ZeroMQ server.

This is the only place that knows every part. It plugs ``risk`` and ``compliance`` into the
pipeline's hooks, recovers state at start (snapshot + journal replay), and serves one loop:

    drain up to max_batch frames → pipeline.process each command → journal.commit() (one fsync)
    → replies to each sender, pushes to the owners of orders that others' commands touched

Nothing a client sees was not durable first. A timer lets GTD orders expire on time and takes
snapshots every ``snapshot_every`` commands, both as sequenced commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from compliance.rules import ComplianceRules
from compliance.stage import ComplianceStage
from compliance.surveillance import Surveillance
from engine import book_events as bk
from engine.book import NumbaBook
from engine.constants import RejectCode
from engine.journal import JournalWriter
from engine.ledger import PositionLedger
from engine.messages import (
    AdvanceTime,
    BookLevel,
    BookView,
    CommandError,
    EndOfDay,
    OrderAccepted,
    OrderDenied,
    OrderHeld,
    OrdersView,
    OrderView,
    Ping,
    Pong,
    QueryAlerts,
    QueryBook,
    QueryOrders,
    QueryPositions,
    QueryRisk,
    TableView,
    TakeSnapshot,
)
from engine.model import ticks_to_price
from engine.pipeline import Pipeline
from engine.portfolio import Portfolio
from engine.recovery import RecoveryReport, recover
from engine.settlement import Calendars, SettlementLedger
from engine.snapshot import prune_snapshots, write_snapshot
from gateways.server import OrderEntryServer, Outgoing, Request
from kilat.config import KilatConfig, check_config
from risk.engine import RiskEngine
from risk.stage import RiskStage

log = logging.getLogger("kilat.service")


class Engine:
    """The engine of one shard with its journal and snapshots; no sockets (tests use it bare)."""

    def __init__(self, config: KilatConfig, data_dir: Path | str, *, fsync: bool | None = None):
        self.config = config
        self.ref = check_config(config)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_dir = self.data_dir / "snapshots"
        self.journal_path = self.data_dir / "journal.kjl"
        book_cfg = config.book
        print("kilat: loading the book's compiled kernels (a first run compiles them: about "
              "two minutes, cached afterwards)", file=sys.stderr, flush=True)
        warm_up_book()
        self.book = NumbaBook(
            len(self.ref.by_index), book_cfg.max_orders, book_cfg.max_levels_per_side,
            book_cfg.max_fills_per_order,
        )
        self.journal = JournalWriter(
            self.journal_path, fsync=config.server.fsync if fsync is None else fsync
        )
        self.pipeline = build_pipeline(config, self.ref, self.book)
        this_year = datetime.now(UTC).year  # only which calendar years to build ahead of the first fill
        for mic in sorted({inst.spec.mic for inst in self.ref.by_index}):
            self.pipeline.settlement.calendars.warm(mic, this_year)
        self.recovery: RecoveryReport = recover(self.pipeline, self.journal_path, self.snapshot_dir)
        if self.pipeline.seq != self.journal.last_seq:
            raise RuntimeError(
                f"{self.journal_path}: recovered to seq {self.pipeline.seq} but the journal ends "
                f"at {self.journal.last_seq}"
            )
        self.pipeline.journal = self.journal
        self.pipeline.defer_observe = True  # stage 8 runs after the replies leave (Service.after_send)
        self.snapshot_seq = self.recovery.snapshot_seq

    def process(self, cmd) -> list:
        return self.pipeline.process(cmd)

    def commit(self) -> int:
        return self.journal.commit()

    def write_snapshot(self) -> Path:
        """Write the state at the current seq (after a commit, so it covers durable input only);
        stage 8 observes first, and its mark is committed with it."""
        self.pipeline.observe_pending()
        self.journal.commit()
        path = write_snapshot(self.snapshot_dir, self.pipeline.seq, self.pipeline.snapshot())
        prune_snapshots(self.snapshot_dir, keep=3)
        self.snapshot_seq = self.pipeline.seq
        return path

    def close(self) -> None:
        self.pipeline.observe_pending()
        self.journal.commit()
        self.journal.close()


def build_pipeline(config: KilatConfig, ref, book, journal=None) -> Pipeline:
    """The pipeline with its stages wired: risk at 3, compliance at 4 and 8, over one portfolio.
    Raises ConfigError naming the field when the risk or compliance tables do not fit the
    instruments and accounts."""
    portfolio = Portfolio(ref, config.fx_rates)
    risk = RiskStage(RiskEngine(config.risk, ref, portfolio))
    c = config.compliance
    rules = ComplianceRules(c.rules, ref, portfolio, c.restricted, c.watch, c.locates)
    c.surveillance.check(ref)
    compliance = ComplianceStage(rules, Surveillance(c.surveillance, ref), ref)
    settlement = SettlementLedger(ref, portfolio, Calendars())
    return Pipeline(ref, book, journal, stages=(risk, compliance), portfolio=portfolio,
                    settlement=settlement, ledger=PositionLedger(ref, portfolio))


def warm_up_book() -> None:
    """Load every book kernel from numba's cache (or compile it) on a scratch book, so the first
    real order does not pay for it. About a second with a warm cache."""
    book = NumbaBook(2, 64, 8, 8)
    book.submit(1, 0, 1, 0, 0, 1, 100, 5, 2, 0, 0, False, 1)
    book.submit(2, 0, 2, 1, 0, 4, 100, 3, 0, 0, 10, False, 0)
    book.submit(3, 1, 1, 0, 2, 0, 0, 1, 0, 105, 0, False, 0)
    book.modify(1, 99, 4)
    book.cancel(1)
    book.expire(10)
    book.next_expiry()
    book.mass_cancel(-1, -1, -1)
    book.end_of_day()
    rows = np.zeros((1, bk.C_NCOLS), dtype=np.int64)
    rows[0, bk.C_OP] = bk.OP_CANCEL
    book.process_batch(rows, np.empty(2, dtype=np.int64))
    NumbaBook(2, 64, 8, 8).load(book.dump())
    book.depth(0, 0, 1)
    book.state_hash()


class Service:
    """The engine behind the order-entry server, plus its timer."""

    def __init__(self, config: KilatConfig, data_dir: Path | str | None = None,
                 endpoint: str | None = None):
        self.config = config
        self.engine = Engine(config, data_dir or config.server.data_dir)
        server_cfg = config.server
        self.server = OrderEntryServer(
            endpoint or server_cfg.endpoint, self.handle, max_batch=server_cfg.max_batch,
            max_message_bytes=server_cfg.max_message_bytes, after_send=self.after_send,
        )
        self.owners: dict[int, bytes] = {}  # order id -> identity of the session that sent it
        self.officers: set[bytes] = set()  # sessions of compliance officers: alerts are pushed there
        self._officer_names = {u.name for u in config.users if "compliance" in u.roles}
        self._snapshot_every = server_cfg.snapshot_every
        self.internal_errors = 0

    # -- THE LOOP BATCH --

    def handle(self, requests: list[Request]) -> list[Outgoing]:
        """One loop batch: run every request in order, commit once, then say what to send.

        Consecutive state commands go through the pipeline's batch path together; a query
        first flushes them, so it sees everything sent before it.
        """
        engine = self.engine
        now = max((getattr(r.message, "ts", 0) for r in requests), default=0)
        pushes: dict[bytes, list] = {}
        engine.pipeline.observe_pending()  # if the last batch's after_send did not run
        self._expire_due(now or time.time_ns(), pushes)
        answers: list[tuple[Request, list]] = []
        pending: list[Request] = []
        for request in requests:
            if type(request.message) in _QUERIES:
                self._run(pending, answers, pushes)
                pending = []
                answers.append((request, [self._answer(request.message)]))
            else:
                pending.append(request)
        snapshot_asked = self._run(pending, answers, pushes)
        engine.commit()  # group commit: nothing below leaves before this returns
        if snapshot_asked or engine.pipeline.seq - engine.snapshot_seq >= self._snapshot_every:
            engine.write_snapshot()
        out = [Outgoing(r.identity, r.request_id, replies) for r, replies in answers]
        out.extend(Outgoing(identity, b"", events) for identity, events in pushes.items())
        return out

    def _run(self, pending: list[Request], answers: list, pushes: dict[bytes, list]) -> bool:
        """State commands through the batch path; returns whether one asked for a snapshot."""
        if not pending:
            return False
        try:
            results = self.engine.pipeline.process_batch([r.message for r in pending])
        except Exception:  # an engine bug: say so to the senders, keep the others served
            log.exception("internal error in a batch of %d commands", len(pending))
            self.internal_errors += 1
            error = CommandError(int(RejectCode.INTERNAL_ERROR), "internal error; logged")
            answers.extend((r, [error]) for r in pending)
            return False
        for request, events in zip(pending, results, strict=True):
            account = getattr(request.message, "account", "")
            if getattr(request.message, "user", "") in self._officer_names:
                self.officers.add(request.identity)
            answers.append((request, self._route(request.identity, account, events, pushes)))
        self._push_notices(pushes)
        if any(type(r.message) is EndOfDay for r in pending):  # forget finished orders' sessions
            orders = self.engine.pipeline.orders
            self.owners = {oid: who for oid, who in self.owners.items() if oid in orders}
        return any(type(r.message) is TakeSnapshot for r in pending)

    def _route(self, sender: bytes, account: str, events: list, pushes: dict[bytes, list]) -> list:
        """The sender gets what its command did to orders of the account it acted for (all of
        it for a command that names no account: an officer's approval, an admin's mass cancel);
        the session that entered an order, if another one, gets those events pushed as well.
        A counterparty's fills never reach the sender."""
        owners = self.owners
        mine = []
        for event in events:
            if type(event) is OrderAccepted or type(event) is OrderHeld:
                owners.setdefault(event.order_id, sender)
            event_account = getattr(event, "account", None)
            if event_account is None or not account or event_account == account:
                mine.append(event)
            oid = getattr(event, "order_id", 0)
            if type(event) is OrderDenied:  # an officer rejected a held order: tell its owner
                oid = self.engine.pipeline.cl_ord_ids.get((event.account, event.cl_ord_id), 0)
            owner = owners.get(oid)
            if owner is not None and owner != sender:
                pushes.setdefault(owner, []).append(event)
        return mine

    def _expire_due(self, now: int, pushes: dict[bytes, list]) -> None:
        """GTD orders whose time has come expire before anything else at ``now``."""
        due = self.engine.pipeline.next_expiry()
        if not due or due > now:
            return
        try:
            events = self.engine.process(AdvanceTime(ts=now))
        except Exception:  # an engine bug: logged; the loop keeps serving
            log.exception("internal error while expiring GTD orders at %d", now)
            self.internal_errors += 1
            return
        for event in events:
            owner = self.owners.get(event.order_id)
            if owner is not None:
                pushes.setdefault(owner, []).append(event)
        self._push_notices(pushes)

    def after_send(self) -> list[Outgoing]:
        """Stage 8 for the batch whose replies just left: post-trade checks and surveillance
        (their mark is journaled and committed with the next batch or the timer), then the
        alerts they raised, pushed to officers."""
        self.engine.pipeline.observe_pending()
        pushes: dict[bytes, list] = {}
        self._push_notices(pushes)
        return [Outgoing(identity, b"", events) for identity, events in pushes.items()]

    def _push_notices(self, pushes: dict[bytes, list]) -> None:
        """Alerts raised in stage 8 go to every officer session that has spoken."""
        notices = self.engine.pipeline.notices
        if notices:
            for identity in self.officers:
                pushes.setdefault(identity, []).extend(notices)
            notices.clear()

    def _answer(self, query):
        pipeline = self.engine.pipeline
        if type(query) is Ping:
            return Pong(query.token, pipeline.seq)
        if type(query) is QueryPositions:
            return positions_view(pipeline, query.account)
        for stage in pipeline.stages:
            answer = stage.query(query, pipeline)
            if answer is not None:
                return answer
        if type(query) is QueryOrders:
            return OrdersView([
                _order_view(o) for o in pipeline.orders.values()
                if (not query.account or o.account == query.account)
                and (not query.symbol or o.symbol == query.symbol)
                and (not query.open_only or o.is_working)
            ])
        inst = self.engine.ref.instruments.get(query.symbol)
        if inst is None:
            return CommandError(1001, f"unknown instrument {query.symbol!r}")
        book, depth = self.engine.book, max(1, min(query.depth, 100))
        return BookView(
            query.symbol,
            [BookLevel(*lvl) for lvl in book.depth(inst.index, 0, depth)],
            [BookLevel(*lvl) for lvl in book.depth(inst.index, 1, depth)],
            book.last_price(inst.index),
        )

    # -- RUNNING --

    async def _timer(self) -> None:
        interval = self.config.server.timer_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            async with self.server.lock:
                pushes: dict[bytes, list] = {}
                self._expire_due(time.time_ns(), pushes)
                self.engine.pipeline.observe_pending()
                self._push_notices(pushes)
                self.engine.commit()
            if pushes:
                self.server.send([Outgoing(i, b"", e) for i, e in pushes.items()])

    async def run(self, ready_message: bool = True, install_signals: bool = True) -> None:
        """Serve until SIGINT/SIGTERM or ``server.stop()``; prints one ready line first."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.server.stop)
        timer = asyncio.ensure_future(self._timer())
        rec = self.engine.recovery
        if ready_message:
            print(
                f"kilat: ready on {self.server.bound_endpoint} (pid {os.getpid()}; recovered "
                f"{rec.replayed} commands after snapshot {rec.snapshot_seq}, seq {rec.last_seq})",
                flush=True,
            )
        try:
            await self.server.serve()
        finally:
            timer.cancel()
            self.engine.close()
            self.server.close()
            log.info("stopped at seq %d", self.engine.pipeline.seq)


_QUERIES = (QueryOrders, QueryBook, Ping, QueryAlerts, QueryRisk, QueryPositions)


def positions_view(pipeline: Pipeline, account: str = "") -> TableView | CommandError:
    """Positions per account, instrument and location with cost and P&L (the ledger), and the
    working lots of the account × instrument. Non-zero rows only. O(cells)."""
    ref, pf, ledger = pipeline.ref, pipeline.portfolio, pipeline.ledger
    if account and account not in ref.account_index:
        return CommandError(int(RejectCode.UNKNOWN_ACCOUNT), f"unknown account {account!r}")
    rows = []
    for acc, a in ref.account_index.items():
        if account and acc != account:
            continue
        for inst in ref.by_index:
            i, spec = inst.index, inst.spec
            wb, ws = int(pf.working_buy[a, i]), int(pf.working_sell[a, i])
            where = ledger.by_location(a, i) if ledger is not None else {"": int(pf.position[a, i])}
            where = {loc: qty for loc, qty in where.items() if qty} or ({"": 0} if wb or ws else {})
            if not where:
                continue
            mark = pf.reference_price(i)
            avg = ledger.average_cost(a, i) if ledger is not None else None
            realised = ledger.realised(a, i) if ledger is not None else 0
            unrealised = ledger.unrealised(a, i) if ledger is not None else None
            for loc, qty in sorted(where.items()):
                rows.append([
                    acc, inst.symbol, loc, spec.currency, qty, wb, ws,
                    str(ticks_to_price(spec, mark)) if mark else "",
                    f"{float(avg) * float(spec.tick_size):.6f}" if avg is not None else "",
                    str(pf.ticks_to_money(i, realised)),
                    str(pf.ticks_to_money(i, unrealised)) if unrealised is not None else "",
                ])
    return TableView("positions (P&L in the instrument's currency)",
                     ["account", "symbol", "location", "currency", "position", "working_buy",
                      "working_sell", "mark", "avg_cost", "realised_pnl", "unrealised_pnl"], rows)


def _order_view(o) -> OrderView:
    return OrderView(
        o.order_id, o.account, o.cl_ord_id, o.symbol, o.side, o.order_type, o.tif,
        o.status.value, o.price, o.stop_price, o.qty, o.cum_qty, o.leaves_qty, o.avg_px,
        o.created_ts, o.updated_ts,
    )


def serve(config: KilatConfig, data_dir: str | None = None, endpoint: str | None = None) -> None:
    """Run ``kilat serve`` on uvloop until SIGINT/SIGTERM."""
    import uvloop

    service = Service(config, data_dir, endpoint)
    uvloop.run(service.run())
