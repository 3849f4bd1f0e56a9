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

import msgspec
import numpy as np
import zmq

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
    ChildCancelRequested,
    ChildOrderRouted,
    CommandError,
    DropCopyEvents,
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
    QueryDropCopy,
    QueryFills,
    QueryOrders,
    QueryPositions,
    QueryPrices,
    QueryRisk,
    QueryVenues,
    TableView,
    TakeSnapshot,
)
from engine.model import SYSTEM_USER, ticks_to_price
from engine.pipeline import Pipeline
from engine.portfolio import Portfolio
from engine.recovery import RecoveryReport, recover
from engine.refbook import ReferenceBook
from engine.routing import Router
from engine.settlement import Calendars, SettlementLedger
from engine.snapshot import prune_snapshots, write_snapshot
from gateways.auth import (
    ClientSecurity,
    CurveAuth,
    KeyFileError,
    ServerSecurity,
    ensure_dev_keys,
    list_keys,
    load_public_keys,
    server_keys,
)
from gateways.dropcopy import DropCopy, DropCopyAheadError, DropCopyLog, DropCopyPublisher
from gateways.server import OrderEntryServer, Outgoing, Request
from kilat.config import KilatConfig, check_config
from kilat.venue_link import VenueLink
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
    router = (Router(ref, [(v.mic, v.instruments) for v in config.venues],
                     config.feeds.stale_after_ms * 1_000_000) if config.venues else None)
    return Pipeline(ref, book, journal, stages=(risk, compliance), portfolio=portfolio,
                    settlement=settlement, ledger=PositionLedger(ref, portfolio), router=router)


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
                 endpoint: str | None = None, venue_endpoint: str | None = None,
                 drop_copy_endpoint: str | None = None):
        self.config = config
        self.engine = Engine(config, data_dir or config.server.data_dir)
        server_cfg = config.server
        self.keys = Keys(config) if config.security.curve else None
        self.server = OrderEntryServer(
            endpoint or server_cfg.endpoint, self.handle, max_batch=server_cfg.max_batch,
            max_message_bytes=server_cfg.max_message_bytes, after_send=self.after_send,
            security=self.keys.order_entry() if self.keys else None,
        )
        keys = self.keys
        self._ctx = zmq.Context()  # the venue, feed and drop-copy sockets, and their ZAP handler
        self.drop_copy = self._start_drop_copy(drop_copy_endpoint or server_cfg.drop_copy_endpoint)
        self.link: VenueLink | None = None
        if config.venues or config.feeds.endpoints:
            self.link = VenueLink(
                config, self.engine.ref, self.engine.pipeline.router, venue_endpoint=venue_endpoint,
                context=self._ctx,
                venue_configure=keys.venues(self._ctx) if keys else None,
                user_of=_user_id if keys else None,
                feed_configure=keys.feed_client() if keys else None,
                feed_server_key=keys.feed_server_key if keys else None,
            )
        self._to_venues: list = []  # this batch's routing decisions, sent once it is durable
        self.owners: dict[int, bytes] = {}  # order id -> identity of the session that sent it
        self.officers: set[bytes] = set()  # sessions of compliance officers: alerts are pushed there
        self._officer_names = {u.name for u in config.users if "compliance" in u.roles}
        self._snapshot_every = server_cfg.snapshot_every
        self.internal_errors = 0

    def _start_drop_copy(self, endpoint: str) -> DropCopy:
        """The drop copy: its log (rebuilt from the journal for records it missed in a crash),
        its PUB, and the pipeline's hook that stages every journaled record's events."""
        engine, config = self.engine, self.config
        publisher = DropCopyPublisher(endpoint, context=self._ctx,
                                      configure=self.keys.drop_copy(self._ctx) if self.keys else None)
        path = engine.data_dir / "dropcopy.log"
        drop_copy = DropCopy(DropCopyLog(path), publisher)
        book = config.book

        def fresh_pipeline() -> Pipeline:
            ref = engine.ref
            return build_pipeline(config, ref, ReferenceBook(len(ref.by_index), book.max_orders,
                                                             book.max_levels_per_side, book.max_fills_per_order))

        try:
            drop_copy.catch_up(engine.journal_path, fresh_pipeline, engine.snapshot_dir,
                               journal_last_seq=engine.journal.last_seq)
        except DropCopyAheadError as exc:  # the journal lost its tail (cut as torn): it is the truth
            drop_copy.log.close()
            kept = path.with_name(f"dropcopy.ahead-{time.time_ns()}.log")
            path.rename(kept)
            log.warning("%s; kept it as %s and rebuilt the drop copy from the journal", exc, kept)
            drop_copy = DropCopy(DropCopyLog(path), publisher)
            drop_copy.catch_up(engine.journal_path, fresh_pipeline, engine.snapshot_dir,
                               journal_last_seq=engine.journal.last_seq)
        drop_copy.track_orders(engine.pipeline.orders)
        engine.pipeline.on_record = drop_copy.stage
        return drop_copy

    def _durable(self) -> None:
        """After a commit: the drop copy publishes what is now durable."""
        self.drop_copy.flush(self.engine.journal.durable_seq)

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
            if request.identity:  # from a client: it acts as the user its key belongs to
                request = _as_user(request, self.keys is not None)
                if type(request) is not Request:
                    answers.append(request)
                    continue
            if type(request.message) in _QUERIES:
                self._run(pending, answers, pushes)
                pending = []
                answers.append((request, [self._answer(request.message)]))
            else:
                pending.append(request)
        snapshot_asked = self._run(pending, answers, pushes)
        engine.commit()  # group commit: nothing below leaves before this returns
        self._durable()
        if self._to_venues:
            if self.link is not None:
                self.link.send(self._to_venues)
            self._to_venues = []
        if snapshot_asked or engine.pipeline.seq - engine.snapshot_seq >= self._snapshot_every:
            engine.write_snapshot()
            self._durable()
        out = [Outgoing(r.identity, r.request_id, replies) for r, replies in answers if r.identity]
        out.extend(Outgoing(identity, b"", events) for identity, events in pushes.items() if identity)
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
            if self.link is not None:
                self._to_venues.extend(e for e in events if type(e) in _TO_VENUES)
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
            oid = getattr(event, "order_id", 0) or getattr(event, "parent_id", 0)  # a child's: its parent's
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
        if type(query) is QueryVenues:
            return venues_view(pipeline, self.link)
        if type(query) is QueryPrices:
            return prices_view(pipeline, query.symbol)
        if type(query) is QueryFills:
            return fills_view(pipeline, query.account, query.limit)
        if type(query) is QueryDropCopy:
            return self._drop_copy_answer(query)
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

    def _drop_copy_answer(self, query: QueryDropCopy):
        """Admins and compliance officers read every account's events; a PM or trader only
        those of their accounts (the seq numbers stay global, so a gap means filtered out)."""
        answer = self.drop_copy.query(query)
        users = self.engine.ref.users
        if type(answer) is not DropCopyEvents or not users:
            return answer
        user = users.get(query.user)
        if user is None:
            return CommandError(int(RejectCode.NOT_AUTHORIZED), f"unknown user {query.user!r}")
        if {"admin", "compliance"} & set(user.roles):
            return answer
        mine = set(user.accounts)
        return msgspec.structs.replace(answer, events=[e for e in answer.events if e.account in mine])

    # -- VENUES AND FEEDS --

    async def _markets(self) -> None:
        """Each turn: the feeds' conflated prices, the venues' reports and session events, as
        one batch through ``handle`` (journaled, then applied); routing decisions leave for the
        venues once the batch is durable. Wakes on any of the sockets, and at least every 50 ms
        for heartbeats and silence detection."""
        link, loop = self.link, asyncio.get_running_loop()
        wake = asyncio.Event()
        fds = [sock.getsockopt(zmq.FD) for sock in link.sockets]
        for fd in fds:
            loop.add_reader(fd, wake.set)
        try:
            while True:
                wake.clear()
                if not link.readable():
                    try:
                        await asyncio.wait_for(wake.wait(), 0.05)
                    except TimeoutError:
                        pass
                async with self.server.lock:
                    now = time.time_ns()
                    inputs = link.inputs(now)
                    outgoing = self.handle([Request(b"", b"", cmd) for cmd in inputs]) if inputs else []
                if outgoing:
                    self.server.send(outgoing)
                if inputs:
                    async with self.server.lock:
                        later = self.after_send()
                    if later:
                        self.server.send(later)
                await asyncio.sleep(0)
        finally:
            for fd in fds:
                loop.remove_reader(fd)

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
                self._durable()
                self.drop_copy.heartbeat()
            if pushes:
                self.server.send([Outgoing(i, b"", e) for i, e in pushes.items()])

    async def run(self, ready_message: bool = True, install_signals: bool = True) -> None:
        """Serve until SIGINT/SIGTERM or ``server.stop()``; prints one ready line first."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.server.stop)
        timer = asyncio.ensure_future(self._timer())
        markets = asyncio.ensure_future(self._markets()) if self.link is not None else None
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
            if markets is not None:
                markets.cancel()
                try:
                    await markets
                except asyncio.CancelledError:
                    pass
            self.engine.close()
            self._durable()
            self.drop_copy.close()
            self.server.close()
            if self.link is not None:
                self.link.close()
            if self.keys:
                CurveAuth.on(self._ctx).stop()
            self._ctx.term()
            log.info("stopped at seq %d", self.engine.pipeline.seq)


_QUERIES = (QueryOrders, QueryBook, Ping, QueryAlerts, QueryRisk, QueryPositions, QueryVenues, QueryPrices,
            QueryFills, QueryDropCopy)
_TO_VENUES = (ChildOrderRouted, ChildCancelRequested)


def _user_id(frame) -> str | None:
    """The CURVE-authenticated user of the connection a frame came from (ZAP's User-Id)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


def _as_user(request: Request, authenticated: bool) -> Request | tuple[Request, list]:
    """A client's command acts as its connection's user: with CURVE, the user its key maps to
    (stamped when the command names none, refused when it names another); without it, the user
    it names. Nobody may claim Kilat's own user."""
    message = request.message
    claimed = getattr(message, "user", None)
    if claimed is None:
        return request
    if claimed == SYSTEM_USER:
        return request, [CommandError(int(RejectCode.NOT_AUTHORIZED),
                                      f"user {SYSTEM_USER!r} is Kilat's own; a client may not act as it")]
    if not authenticated:
        return request
    if not request.user:
        return request, [CommandError(int(RejectCode.NOT_AUTHORIZED), "the connection is not authenticated")]
    if not claimed:
        return request._replace(message=msgspec.structs.replace(message, user=request.user))
    if claimed != request.user:
        return request, [CommandError(int(RejectCode.NOT_AUTHORIZED),
                                      f"this connection is authenticated as {request.user!r}, not {claimed!r}")]
    return request


class Keys:
    """CurveZMQ keys of this Kilat (``security.keys_dir``): the server pair, one per config user
    and venue, and ``feed`` for external price feeds. Development keys are written on the first
    run (when the server pair is missing); after that a missing key stops start-up, naming it."""

    FEED = "feed"

    def __init__(self, config: KilatConfig):
        self.config = config
        self.dir = Path(config.security.keys_dir)
        self.users = [u.name for u in config.users]
        self.mics = [v.mic for v in config.venues]
        if not (self.dir / "server.key_secret").exists():
            created = ensure_dev_keys(self.dir, self.users + self.mics + [self.FEED])
            print(f"kilat: wrote development CURVE keys for {', '.join(created)} in {self.dir} "
                  f"(replace them for production: docs/security.md)", file=sys.stderr, flush=True)
        self.server = server_keys(self.dir)
        self._public = list_keys(self.dir)

    def order_entry(self) -> ServerSecurity:
        return ServerSecurity(self.server, load_public_keys(self.dir, self.users))

    def drop_copy(self, context: zmq.Context) -> ServerSecurity:
        """The drop copy streams every account: admins and compliance officers may subscribe."""
        readers = [u.name for u in self.config.users if {"admin", "compliance"} & set(u.roles)]
        security = ServerSecurity(self.server, load_public_keys(self.dir, readers), domain="dropcopy")
        security.start_auth(context)
        return security

    def venues(self, context: zmq.Context) -> ServerSecurity:
        security = ServerSecurity(self.server, load_public_keys(self.dir, self.mics), domain="venue")
        security.start_auth(context)
        return security

    def feed_client(self) -> ClientSecurity:
        return ClientSecurity(self.server, self.server.public)  # the server key is set per feed

    def feed_server_key(self, name: str) -> bytes:
        """The public key a feed publisher proves: a venue's own, else the external feeds'."""
        key = self._public.get(name if name in self.mics else self.FEED)
        if key is None:
            raise KeyFileError(f"{self.dir}: no public key for feed {name!r}; run `kilat keys generate {name}`")
        return key


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


def venues_view(pipeline: Pipeline, link: VenueLink | None) -> TableView:
    """Each venue: session up, the gateway's numbering, working children and today's fills."""
    router = pipeline.router
    status = link.gateway.status() if link is not None and link.gateway is not None else {}
    rows = []
    for row in router.venue_rows() if router is not None else []:
        st = status.get(row.venue)
        rows.append([row.venue, "up" if row.up else "down", row.working_children, row.working_lots,
                     row.fills_today, st.out_seq if st else 0, st.in_expected - 1 if st else 0])
    return TableView("venues", ["venue", "session", "working_children", "working_lots", "fills_today",
                                "sent_seq", "received_seq"], rows)


def prices_view(pipeline: Pipeline, symbol: str = "") -> TableView | CommandError:
    """Marks (bid, ask, last) per instrument, then each venue's best bid and offer."""
    ref, pf, router = pipeline.ref, pipeline.portfolio, pipeline.router
    if symbol and symbol not in ref.instruments:
        return CommandError(int(RejectCode.UNKNOWN_INSTRUMENT), f"unknown instrument {symbol!r}")
    rows = []
    for inst in ref.by_index:
        if symbol and inst.symbol != symbol:
            continue
        i, spec = inst.index, inst.spec

        def px(ticks: int, spec=spec) -> str:
            return str(ticks_to_price(spec, int(ticks))) if ticks else ""

        rows.append([inst.symbol, "marks", px(pf.bid[i]), "", px(pf.ask[i]), "", px(pf.last[i]), 0])
        for v, venue in enumerate(router.venues if router is not None else []):
            bid, bid_size, ask, ask_size, ts = router.quotes[v, i].tolist()
            if ts:
                rows.append([inst.symbol, venue, px(bid), bid_size, px(ask), ask_size, "", ts])
    return TableView("prices", ["symbol", "source", "bid", "bid_size", "ask", "ask_size", "last", "ts"], rows)


def fills_view(pipeline: Pipeline, account: str = "", limit: int = 50) -> TableView:
    """Today's executions, newest first: where each happened (a venue, or Kilat's own book)."""
    venue_of = {x: v for (v, _), x in pipeline.router.fills.items()} if pipeline.router is not None else {}
    rows = []
    for exec_id in sorted(pipeline.executions, reverse=True):
        order_id, qty, price, _ = pipeline.executions[exec_id]
        order = pipeline.orders.get(order_id)
        if order is None or (account and order.account != account):
            continue
        spec = pipeline.ref.by_index[order.instrument].spec
        rows.append([exec_id, order_id, order.account, order.symbol, order.side.name, qty,
                     str(ticks_to_price(spec, price)), venue_of.get(exec_id, "INTERNAL")])
        if len(rows) >= max(1, min(limit, 10_000)):
            break
    return TableView("fills (today)", ["exec_id", "order_id", "account", "symbol", "side", "qty", "price",
                                       "venue"], rows)


def _order_view(o) -> OrderView:
    return OrderView(
        o.order_id, o.account, o.cl_ord_id, o.symbol, o.side, o.order_type, o.tif,
        o.status.value, o.price, o.stop_price, o.qty, o.cum_qty, o.leaves_qty, o.avg_px,
        o.created_ts, o.updated_ts,
    )


def serve(config: KilatConfig, data_dir: str | None = None, endpoint: str | None = None,
          venue_endpoint: str | None = None, drop_copy_endpoint: str | None = None) -> None:
    """Run ``kilat serve`` on uvloop until SIGINT/SIGTERM."""
    import uvloop

    service = Service(config, data_dir, endpoint, venue_endpoint, drop_copy_endpoint)
    uvloop.run(service.run())
