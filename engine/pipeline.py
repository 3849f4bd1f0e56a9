"""The sequencer pipeline: one writer, numbered stages, wired here and nowhere else.

    1 validate   entitlements (who may send it), then the command against reference data
                 and order state; derive book fields
    2 dedupe     a ClOrdID is unique per account within the trading day (FIX 4.4)
    3 risk       a check filled in by ``kilat`` (passes everything by default)
    4 compliance likewise; it may also hold an order for approval or attach warnings
    5 journal    append the stamped command; the caller group-commits before replies leave
    6 match      one call into the book (numba or reference, behind one narrow interface)
    7 apply      book events -> order transitions, portfolio (positions, working lots, cash
                 holds) and msgspec events
    8 observe    post-trade stages (compliance monitors, surveillance) see every journaled
                 command with its events; what they raise (alerts) goes to ``notices``
    9 publish    return the events; the caller routes them

Risk and compliance plug in as ``Stage`` objects: a pre-trade ``check``, the control commands
they own (limits, kill switch, issuer lists, alert actions), an ``observe`` for stage 8, queries
and their own snapshot state. The engine imports none of them.

Stages 1-4 only read state (validate before mutate: nothing changes until a command has passed
them all); stages 6-7 are the only ones that write. Time is the ``ts`` stamped on the command.

Two paths share every stage: ``process`` (one command, latency) and ``process_batch`` (many
commands, one jitted book call: throughput). Recovery replays journaled commands through
``replay_batch``, which runs stages 1, 2, 6, 7 and 8 (stages 3-4 are not re-run: a hold or a
warning they produced was journaled with the command as a ``ScreenedOrder``) and must reach the
identical state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import NamedTuple, Protocol

import msgspec
import numpy as np

from engine import book_events as bk
from engine.allocation import BlockAllocator, quantize_weights
from engine.book_events import (
    CANCEL,
    CANCEL_REJECT,
    EV_LEAVES,
    EV_OID,
    EV_OTHER,
    EV_PRICE,
    EV_QTY,
    EV_REASON,
    EV_TYPE,
    EXPIRE,
    MODIFY_REJECT,
    PENDING_STOP,
    REJECT,
    REPLACE,
    REST,
    TRADE,
    TRIGGER,
)
from engine.constants import (
    BUY,
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    STOP,
    STOP_LIMIT,
    OrderType,
    RejectCode,
    TimeInForce,
)
from engine.entitlements import entitlement_refusal
from engine.ledger import PositionLedger
from engine.messages import (
    VENUE_INPUTS,
    AdvanceTime,
    AllocationMade,
    AmendAllocation,
    ApproveOrder,
    BatchEnd,
    BustTrade,
    CancelAllocation,
    CancelOrder,
    ChildCancelRequested,
    ChildOrderRouted,
    ChildOrderUpdated,
    CommandDone,
    CommandError,
    CorrectTrade,
    DeniedOrder,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderExpired,
    OrderFilled,
    OrderHeld,
    OrderRejected,
    OrderReleased,
    OrderReplaced,
    OrderTriggered,
    PriceTick,
    RejectHeldOrder,
    RuleFinding,
    ScreenedOrder,
    SubmitBlockOrder,
    SubmitOrder,
    TakeSnapshot,
    TradeBusted,
    TradeCorrected,
    VenueAccepted,
    VenueFilled,
    VenueQuote,
    VenueRejected,
    VenueSessionChanged,
    VenueTradeBust,
    VenueTradeCorrection,
)
from engine.model import ReferenceData
from engine.orders import Order, OrderStatus, Transition
from engine.portfolio import Portfolio
from engine.routing import CANCELED as _C_CANCELED
from engine.routing import FILLED as _C_FILLED
from engine.routing import NEW as _C_NEW
from engine.routing import REJECTED as _C_REJECTED
from engine.routing import Router
from engine.settlement import SettlementLedger

Refusal = tuple[int, str]

#: The largest order quantity (lots) any order may have: keeps price × qty inside int64 for every
#: price band (risk limits are far tighter; this is the arithmetic's guard, not a trading limit).
MAX_ORDER_QTY = 10**12


class Screening(NamedTuple):
    """A pre-trade outcome that is neither a clean pass nor a denial: hold the order for a
    compliance officer (``hold_code`` != 0) and/or record warnings. Submits only."""

    hold_code: int
    hold_reason: str
    findings: list[RuleFinding]


#: A pre-trade check: None to pass, (code, text) to deny, or a Screening. Must not mutate anything.
Check = Callable[[SubmitOrder | ModifyOrder, "Pipeline"], "Refusal | Screening | None"]


class Stage(Protocol):
    """A pluggable stage (risk, compliance). Every method but ``check`` may be a no-op."""

    #: The control commands this stage owns (journaled; checked then applied by it).
    controls: tuple[type, ...]

    def check(self, cmd: SubmitOrder | ModifyOrder, pipeline: Pipeline) -> Refusal | Screening | None: ...
    def check_control(self, cmd, pipeline: Pipeline) -> Refusal | None: ...
    # Optional: ``note(record)`` once a journaled command is applied or, for a submit, opened
    # (live and on replay), so the next command's check sees it even inside a batch run
    # (throttles, cached aggregates); ``observe`` for stage 8 (per batch).

    def apply_control(self, cmd, pipeline: Pipeline) -> list: ...
    def observe(self, done: list[tuple[object, list]], pipeline: Pipeline) -> list: ...
    def query(self, query, pipeline: Pipeline): ...
    def dump(self) -> bytes: ...
    def load(self, data: bytes) -> None: ...
    def state_hash(self) -> bytes: ...


class JournalSink(Protocol):
    def append(self, payload: bytes) -> int: ...


class Book(Protocol):
    """The narrow interface both books implement (see docs/book.md)."""

    def submit(self, oid, instr, account, side, otype, tif, price, qty, display=0,
               stop_price=0, expire_ts=0, post_only=False, stp=0) -> np.ndarray: ...
    def cancel(self, oid) -> np.ndarray: ...
    def modify(self, oid, new_price, new_leaves) -> np.ndarray: ...
    def mass_cancel(self, instr=-1, account=-1, side=-1) -> np.ndarray: ...
    def end_of_day(self) -> np.ndarray: ...
    def expire(self, now) -> np.ndarray: ...
    def next_expiry(self) -> int: ...
    def state_hash(self) -> str: ...


def pass_all(cmd, pipeline) -> Refusal | None:
    """The default risk and compliance hook: everything passes."""
    return None


# Enum member access costs ~140 ns on Python 3.11; the hot path uses these bindings.
_T_ACCEPT = Transition.ACCEPT
_T_CANCEL = Transition.CANCEL
_T_EXPIRE = Transition.EXPIRE
_T_REJECT = Transition.REJECT
_T_REPLACE = Transition.REPLACE
_T_TRIGGER = Transition.TRIGGER
_T_HOLD = Transition.HOLD
_T_RELEASE = Transition.RELEASE
_T_REQUEST_CANCEL = Transition.REQUEST_CANCEL
_T_DENY = Transition.DENY
_S_PENDING_NEW = OrderStatus.PENDING_NEW
_S_PENDING_APPROVAL = OrderStatus.PENDING_APPROVAL
_S_PENDING_CANCEL = OrderStatus.PENDING_CANCEL

# Operations the pipeline runs itself (the book's OP_* are below 100).
_OP_SCREENED, _OP_CANCEL_HELD, _OP_DECIDE, _OP_PRICE, _OP_CONTROL, _OP_AUDIT = 100, 101, 102, 103, 104, 105
_OP_TRADE_FIX, _OP_BLOCK, _OP_ALLOCATION = 106, 107, 108
_OP_ROUTE, _OP_VENUE, _OP_CANCEL_ROUTED = 109, 110, 111
#: Positions in ``Pipeline._book_fields``' tuple (the book's submit arguments).
_BF_TYPE, _BF_TIF, _BF_PRICE, _BF_QTY = 4, 5, 6, 7


_BATCH_END = BatchEnd()


def _booked(refusal) -> None:
    """The ledger refuses only when a capacity is exhausted or the pipeline is wrong: either
    way the engine cannot go on consistently, so it stops here (the journal is intact)."""
    if refusal is not None:
        raise RuntimeError(f"the position ledger refused a booking: {refusal[1]} (code {int(refusal[0])})")


def block_order(cmd: SubmitBlockOrder) -> SubmitOrder:
    """The order a block trades as, in its block account."""
    return SubmitOrder(cmd.account, cmd.cl_ord_id, cmd.symbol, cmd.side, cmd.qty, cmd.order_type,
                       cmd.price, cmd.tif, ts=cmd.ts, user=cmd.user)


def _utc_date(ts: int) -> date:
    return datetime.fromtimestamp(ts / 1e9, UTC).date()


def _screened(cmd: SubmitOrder, screening: Screening) -> ScreenedOrder:
    return ScreenedOrder(cmd, int(screening.hold_code), screening.hold_reason, list(screening.findings))


_REASONS = {code.value: code.name.replace("_", " ").lower() for code in RejectCode}


def reason_text(code: int) -> str:
    return _REASONS.get(int(code), f"code {code}")


class Pipeline:
    """One shard's single writer. Not thread-safe by design: only one thread may call it."""

    def __init__(
        self,
        ref: ReferenceData,
        book: Book,
        journal: JournalSink | None = None,
        risk_check: Check = pass_all,
        compliance_check: Check = pass_all,
        stages: Sequence[Stage] = (),
        portfolio: Portfolio | None = None,
        settlement: SettlementLedger | None = None,
        ledger: PositionLedger | None = None,
        router: Router | None = None,
    ):
        self.ref = ref
        self.book = book
        self.journal = journal
        self.portfolio = portfolio if portfolio is not None else Portfolio(ref)
        self.stages = tuple(stages)
        self.settlement = settlement  # pending and settled positions and cash (optional)
        self.ledger = ledger  # positions by location with cost and P&L (optional)
        self.router = router  # venues, their quotes and the child orders of routed orders (optional)
        # called live with (journal seq, the events of that record) for every record journaled, in
        # seq order (the drop copy); a BatchEnd's events are the alerts stage 8 raised
        self.on_record: Callable[[int, list], None] | None = None
        # An internal cross settles at the account's custodian: that is where its position is held.
        self._custody = ([ledger.custodian_index(a) for a in range(len(ref.account_index))]
                         if ledger is not None else [])
        self.orders: dict[int, Order] = {}
        self.held: dict[int, SubmitOrder] = {}  # orders waiting for approval -> their command
        # today's executions: exec id -> [order id, qty, price, the other side's exec id (0: none)];
        # what a bust or a correction works on. Cleared at the end of the day.
        self.executions: dict[int, list[int]] = {}
        self.blocks: dict[int, BlockAllocator] = {}  # block order id -> its allocator (for the day)
        # block order id -> {account: its ledger transfer}, for the day (the ledger forgets ids then)
        self.block_bookings: dict[int, dict[str, str]] = {}
        self.notices: list = []  # what stage 8 raised (alerts); the service drains and routes it
        self.replaying = False
        self._replay_pending: list = []  # replayed commands whose BatchEnd is not read yet
        self.defer_observe = False
        self._unobserved: list = []  # live (record, events) whose stage 8 is deferred
        self.cl_ord_ids: dict[tuple[str, str], int] = {}  # (account, ClOrdID) -> order id, 0 = request
        self.next_order_id = 1
        self.next_exec_id = 1
        self.seq = 0  # last applied journal sequence number
        self._emit = True  # off while replaying: state changes, no event objects
        self._encode = msgspec.msgpack.Encoder().encode
        self._account_index = ref.account_index
        self._stp_default = {a: int(ref.stp_mode(a)) for a in ref.accounts}
        self._hooks = tuple(h for h in (risk_check, compliance_check) if h is not pass_all) + tuple(
            stage.check for stage in self.stages
        )
        self._controls = {kind: stage for stage in self.stages for kind in stage.controls}
        self._observers = tuple(stage.observe for stage in self.stages if hasattr(stage, "observe"))
        self._notes = tuple(stage.note for stage in self.stages if hasattr(stage, "note"))
        self._check_users = bool(ref.users)
        self._pf_open, self._pf_fill = self.portfolio.open, self.portfolio.fill
        self._pf_close, self._pf_replace = self.portfolio.close, self.portfolio.replace

    # -- COMMANDS: the two paths ----------------------------------------------------------------

    def process(self, cmd) -> list:
        """Run one command through every stage; returns the events it caused. O(events)."""
        before = self.seq
        if type(cmd) is SubmitOrder and not cmd.route:  # the hot path, without the generic dispatch
            refused = self._refuse_submit(cmd, run_hooks=True)
            if refused is None:
                self._journal(cmd)
                order = self._open(cmd)
                for note in self._notes:
                    note(cmd)
                events = self._apply(self.book.submit(*self._book_fields(order, cmd)), cmd.ts, order, [])
                if self.on_record is not None:
                    self.on_record(self.seq, events)
                if self._observers:
                    self._observe_live([(cmd, events)])
                return events
            if type(refused) is list:
                if self.on_record is not None and self.seq != before:  # a DeniedOrder was journaled
                    self.on_record(self.seq, refused)
                return refused
            prepared = _Prepared(_OP_SCREENED, _screened(cmd, refused))
        else:  # a routed submit comes here too
            prepared = self._check(cmd, run_hooks=True)
            if not isinstance(prepared, _Prepared):
                if self.on_record is not None and self.seq != before:
                    self.on_record(self.seq, prepared)
                return prepared
        self._journal(prepared.cmd)
        seq = self.seq
        events = self._execute(prepared)
        for note in self._notes:
            note(prepared.cmd)
        if self.on_record is not None:
            self.on_record(seq, events)
        if self._observers:
            self._observe_live([(prepared.cmd, events)])
        return events

    def process_batch(self, cmds: Sequence) -> list[list]:
        """Throughput path: consecutive submits and cancels run through one jitted book call.

        Returns each command's events (a list per command, in order), identical to calling
        ``process`` on each. Orders are opened and ClOrdIDs noted as each command passes its
        checks, as ``process`` does; a refusal, a modify or any other command ends the run (a
        modify's checks must see the run's fills).
        """
        return self._batch(cmds, live=True)

    def replay_batch(self, first_seq: int, cmds: Sequence) -> None:
        """Recovery's fast path: re-apply journaled commands ``first_seq``, ``first_seq + 1``, …
        through the batch path. Raises if one is now refused. Events are built only when a
        stage observes them (stage 8 state is a fold of them too)."""
        if first_seq != self.seq + 1:
            raise RuntimeError(f"replay expected seq {self.seq + 1}, got {first_seq}")
        self._emit = bool(self._observers)
        self.replaying = True
        try:
            self._batch(cmds, live=False)
        finally:
            self._emit = True
            self.replaying = False
            self.notices.clear()

    def replay_events(self, first_seq: int, cmds: Sequence) -> list[list]:
        """``replay_batch`` that also builds and returns each record's events (a list per
        record, in order): what projections (reports, blotters) read. Slower; O(events)."""
        if first_seq != self.seq + 1:
            raise RuntimeError(f"replay expected seq {self.seq + 1}, got {first_seq}")
        self.replaying = True
        try:
            return self._batch(cmds, live=False)
        finally:
            self.replaying = False
            self.notices.clear()

    def end_replay(self) -> None:
        """Recovery reached the journal's end: commands after the last ``BatchEnd`` (their mark
        was lost with a torn tail) are observed now, as their live batch was."""
        if self._replay_pending:
            self.replaying = True
            try:
                pending, self._replay_pending = self._replay_pending, []
                self._observe(pending)
            finally:
                self.replaying = False
                self.notices.clear()

    def _batch(self, cmds: Sequence, live: bool) -> list[list]:
        results: list[list] = []
        records: list = []  # what was journaled for each command (None: refused), as results
        run: list[_Prepared] = []
        observed = 0  # records before this index were observed (replay: at a BatchEnd)
        seqs: list[int] = []  # the journal record each live command wrote (0: none), as results
        for cmd in cmds:
            kind = type(cmd)
            before = self.seq
            if kind is BatchEnd:
                if live:
                    raise TypeError("a BatchEnd comes from the journal only")
                if run:
                    results.extend(self._execute_run(run))
                    run = []
                self.seq += 1
                pending = self._replay_pending + [
                    (r, ev) for r, ev in zip(records[observed:], results[observed:], strict=True)
                    if r is not None]
                self._replay_pending = []
                records.append(None)
                observed = len(records)
                # a BatchEnd's events are what stage 8 raised at it (alerts), as when it was live
                results.append(self._observe(pending) if self._observers else [])
                continue
            if run and kind is not SubmitOrder and kind is not CancelOrder:
                results.extend(self._execute_run(run))
                run = []
            prepared = self._check(cmd, run_hooks=live)
            if not isinstance(prepared, _Prepared):
                if not live:
                    raise ReplayDiverged(
                        f"replay diverged at seq {self.seq + 1}: a journaled {kind.__name__} is now "
                        f"refused ({prepared[0]!r})"
                    )
                if run:
                    results.extend(self._execute_run(run))
                    run = []
                results.append(prepared)
                records.append(None)
                seqs.append(self.seq if self.seq != before else 0)  # a DeniedOrder, or nothing
                continue
            if live:
                self._journal(prepared.cmd)
            else:
                self.seq += 1
            records.append(prepared.cmd)
            seqs.append(self.seq)
            op = prepared.op
            if op == _OP_SCREENED and not prepared.cmd.hold_code:
                routed = bool(prepared.cmd.order.route)
                prepared = _Prepared(_OP_ROUTE if routed else bk.OP_SUBMIT, prepared.cmd.order)
                op = prepared.op
            if op == bk.OP_SUBMIT:
                prepared.order = self._open(prepared.cmd)
                run.append(prepared)
            elif op == bk.OP_CANCEL:
                self._note_request(cmd)
                run.append(prepared)
            else:
                if run:
                    results.extend(self._execute_run(run))
                    run = []
                results.append(self._execute(prepared))
            for note in self._notes:
                note(records[-1])
        if run:
            results.extend(self._execute_run(run))
        if live and self.on_record is not None:
            for seq, events in zip(seqs, results, strict=True):
                if seq:
                    self.on_record(seq, events)
        if self._observers:
            done = [(r, ev) for r, ev in zip(records[observed:], results[observed:], strict=True)
                    if r is not None]
            if live:
                if done:
                    self._observe_live(done)
            else:
                self._replay_pending.extend(done)
        return results

    def _observe_live(self, done: list[tuple[object, list]]) -> None:
        """Stage 8 for one live batch, then a journaled mark of where the batch ended; or, with
        ``defer_observe``, kept for ``observe_pending`` (the service runs it once the batch's
        replies have left, so acknowledgements do not wait for surveillance)."""
        if self.defer_observe:
            self._unobserved.extend(done)
            return
        self._observe_and_mark(done)

    def observe_pending(self) -> None:
        """Stage 8 for what ``defer_observe`` kept back: one batch, one ``BatchEnd``. It must
        run before the next command is checked (the service calls it right after sending)."""
        if self._unobserved:
            done, self._unobserved = self._unobserved, []
            self._observe_and_mark(done)

    def _observe_and_mark(self, done: list[tuple[object, list]]) -> None:
        """Stage 8, then the journaled ``BatchEnd``; what stage 8 raised is that record's events."""
        first = len(self.notices)
        self._observe(done)
        self._journal(_BATCH_END)
        if self.on_record is not None:
            self.on_record(self.seq, self.notices[first:])

    def _observe(self, done: list[tuple[object, list]]) -> list:
        """Stage 8: every observing stage sees the journaled commands with their events; returns
        what they raised (live, it also goes to ``notices``)."""
        out: list = []
        for observe in self._observers:
            raised = observe(done, self)
            if raised:
                out.extend(raised)
                if not self.replaying:
                    self.notices.extend(raised)
        return out

    def next_expiry(self) -> int:
        """When the earliest GTD order expires (ns), or 0 if none. O(1)."""
        return self.book.next_expiry()

    # -- STAGES 1-4: check (read-only) ------------------------------------------------------------

    def _check(self, cmd, run_hooks: bool):
        kind = type(cmd)
        if kind is SubmitOrder:
            return self._check_submit(cmd, run_hooks)
        if run_hooks and self._check_users:
            refusal = entitlement_refusal(self.ref, cmd)
            if refusal is not None:
                return self._refusal_reply(cmd, refusal)
        if kind is CancelOrder:
            return self._check_cancel(cmd)
        if kind is ModifyOrder:
            return self._check_modify(cmd, run_hooks)
        if kind is MassCancel:
            return self._check_mass_cancel(cmd)
        if kind in (EndOfDay, AdvanceTime, TakeSnapshot):
            return _Prepared(_OP_BY_KIND[kind], cmd)
        if kind is PriceTick:
            return self._check_price(cmd)
        if kind is ApproveOrder or kind is RejectHeldOrder:
            return self._check_decision(cmd)
        if kind is BustTrade or kind is CorrectTrade:
            return self._check_trade_fix(cmd)
        if kind is SubmitBlockOrder:
            return self._check_block(cmd, run_hooks)
        if kind is AmendAllocation or kind is CancelAllocation:
            return self._check_allocation_change(cmd, run_hooks)
        if kind in VENUE_INPUTS:
            return self._check_venue(cmd)
        if kind is DeniedOrder:
            if run_hooks:
                raise TypeError("a DeniedOrder comes from the journal only")
            return _Prepared(_OP_AUDIT, cmd)
        if kind is ScreenedOrder:
            if run_hooks:
                raise TypeError("a ScreenedOrder comes from the journal only")
            refused = self._refuse_submit(cmd.order, False)
            return _Prepared(_OP_SCREENED, cmd) if refused is None else refused
        stage = self._controls.get(kind)
        if stage is None:
            raise TypeError(f"not a state command: {kind.__name__}")
        refusal = stage.check_control(cmd, self)
        if refusal is not None:
            return [CommandError(int(refusal[0]), refusal[1])]
        return _Prepared(_OP_CONTROL, cmd, stage)

    def _refusal_reply(self, cmd, refusal: Refusal) -> list:
        code, text = int(refusal[0]), refusal[1]
        if type(cmd) in (CancelOrder, ModifyOrder):
            return [self._cancel_rejected(cmd, code, text, type(cmd) is ModifyOrder)]
        return [CommandError(code, text)]

    def _check_submit(self, cmd: SubmitOrder, run_hooks: bool):
        if cmd.route:
            refusal = self._check_route(cmd)
            if refusal is not None:
                return [OrderRejected(cmd.account, cmd.cl_ord_id, 0, int(refusal[0]), refusal[1], cmd.ts)]
        refused = self._refuse_submit(cmd, run_hooks)
        if refused is None:
            return _Prepared(_OP_ROUTE if cmd.route else bk.OP_SUBMIT, cmd)
        if type(refused) is list:
            return refused
        return _Prepared(_OP_SCREENED, _screened(cmd, refused))

    def _check_price(self, cmd: PriceTick):
        if cmd.symbol not in self.ref.instruments:
            return [CommandError(int(RejectCode.UNKNOWN_INSTRUMENT), f"unknown instrument {cmd.symbol!r}")]
        if cmd.bid < 0 or cmd.ask < 0 or cmd.last < 0 or not (cmd.bid or cmd.ask or cmd.last):
            return [CommandError(int(RejectCode.INVALID_PRICE), (
                f"a price tick needs bid, ask or last as positive ticks (0 = unchanged), got "
                f"bid={cmd.bid} ask={cmd.ask} last={cmd.last}"
            ))]
        return _Prepared(_OP_PRICE, cmd)

    def _check_block(self, cmd: SubmitBlockOrder, run_hooks: bool):
        """Stages 1-4 for a block: the block order itself, then each account's share as if it
        were its own order (compliance and risk per account before the block goes out)."""
        sub = block_order(cmd)
        if cmd.tif == GTC or cmd.tif == GTD:
            return [OrderRejected(cmd.account, cmd.cl_ord_id, 0, int(RejectCode.INVALID_TIME_IN_FORCE),
                                  f"a block order lives one trading day (DAY, IOC or FOK), got {TimeInForce(cmd.tif).name}: "
                                  f"its fills are allocated at the day's average and settle per trade date",
                                  cmd.ts)]
        split = self._block_split(cmd)
        if isinstance(split, tuple) and type(split[0]) is not list:
            return [OrderRejected(cmd.account, cmd.cl_ord_id, 0, int(split[0]), split[1], cmd.ts)]
        refused = self._refuse_submit(sub, run_hooks)
        if type(refused) is Screening:  # a block is not held: its accounts' orders may be
            if not refused.hold_code:
                refused = None
            else:
                return [OrderDenied(cmd.account, cmd.cl_ord_id, int(refused.hold_code),
                                    f"a block is not held for approval ({refused.hold_reason})", cmd.ts)]
        if refused is not None:
            return refused
        if run_hooks:
            accounts, weights, _ = split
            total = sum(weights)
            for account, weight in zip(accounts, weights, strict=True):
                share = cmd.qty * weight // total
                if share <= 0:
                    continue
                probe = msgspec.structs.replace(sub, account=account, qty=share,
                                                cl_ord_id=f"{cmd.cl_ord_id}@{account}")
                for hook in self._hooks:
                    outcome = hook(probe, self)
                    if outcome is None or (type(outcome) is Screening and not outcome.hold_code):
                        continue
                    code, text = ((outcome.hold_code, outcome.hold_reason) if type(outcome) is Screening
                                  else (int(outcome[0]), outcome[1]))
                    self._journal(DeniedOrder(sub, int(code), f"allocation to {account}: {text}"))
                    return [OrderDenied(cmd.account, cmd.cl_ord_id, int(code),
                                        f"allocation to {account} ({share} lots): {text}", cmd.ts)]
        return _Prepared(_OP_BLOCK, cmd, split)

    def _check_allocation_change(self, cmd: AmendAllocation | CancelAllocation, run_hooks: bool):
        allocator = self.blocks.get(cmd.order_id)
        if allocator is None:
            return [CommandError(int(RejectCode.INVALID_ALLOCATION),
                                 f"order {cmd.order_id} is not a block order of today")]
        order = self.orders[cmd.order_id]
        if not cmd.reason.strip():
            return [CommandError(int(RejectCode.INVALID_ALLOCATION), "an allocation change needs a reason")]
        accounts = [order.account] + ([t.account for t in cmd.targets] if type(cmd) is AmendAllocation else [])
        accounts += list(allocator.accounts)
        if run_hooks and self._check_users:
            user = self.ref.users.get(cmd.user)
            for account in accounts:
                if user is None or account not in user.accounts:
                    return [CommandError(int(RejectCode.NOT_ENTITLED),
                                         f"user {cmd.user!r} may not act on account {account!r}")]
        if type(cmd) is CancelAllocation:
            return _Prepared(_OP_ALLOCATION, cmd, None)
        split = self._block_split(SubmitBlockOrder(order.account, order.cl_ord_id, order.symbol, order.side,
                                                   order.qty, cmd.method, cmd.targets))
        if type(split[0]) is not list:
            return [CommandError(int(split[0]), split[1])]
        if split[2] != allocator.capped:
            return [CommandError(int(RejectCode.INVALID_ALLOCATION),
                                 "an amendment keeps the kind of instruction (explicit quantities or weights)")]
        return _Prepared(_OP_ALLOCATION, cmd, split)

    def _block_split(self, cmd: SubmitBlockOrder):
        """(accounts, integer weights, capped) for the allocator, or (code, text)."""
        bad = RejectCode.INVALID_ALLOCATION
        accounts = [t.account for t in cmd.targets]
        if not accounts:
            return bad, "a block order needs at least one allocation target"
        for account in accounts:
            if account not in self._account_index:
                return RejectCode.UNKNOWN_ACCOUNT, f"unknown allocation account {account!r}"
        if cmd.method == "explicit":
            weights = [t.qty for t in cmd.targets]
            if sum(weights) != cmd.qty:
                return bad, f"explicit quantities must add up to the block's {cmd.qty} lots, got {sum(weights)}"
        elif cmd.method == "percent":
            weights = [t.bps for t in cmd.targets]
            if sum(weights) != 10_000:
                return bad, f"percentages must add up to 10,000 basis points, got {sum(weights)}"
        elif cmd.method in ("target_weight", "pro_rata_nav"):
            inst = self.ref.instruments.get(cmd.symbol)
            if inst is None:
                return RejectCode.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.symbol!r}"
            navs = [self.portfolio.nav_minor(self._account_index[a], inst.spec.currency) for a in accounts]
            missing = [a for a, nav in zip(accounts, navs, strict=True) if nav is None]
            if missing:
                return bad, f"no NAV for {', '.join(missing)} in {inst.spec.currency} (a price or FX rate is missing)"
            weights = quantize_weights([t.bps * nav for t, nav in zip(cmd.targets, navs, strict=True)]
                                       if cmd.method == "target_weight" else navs)
        else:
            return bad, (f"method must be explicit, percent, target_weight or pro_rata_nav, "
                         f"got {cmd.method!r}")
        try:
            BlockAllocator(accounts, weights, 1, block_id="check", capped=cmd.method == "explicit")
        except ValueError as exc:
            return bad, str(exc)
        return accounts, weights, cmd.method == "explicit"

    def _check_trade_fix(self, cmd: BustTrade | CorrectTrade):
        execution = self.executions.get(cmd.exec_id)
        if execution is None:
            return [CommandError(int(RejectCode.UNKNOWN_EXECUTION),
                                 f"no execution {cmd.exec_id} today (busted already, or before the last end of day)")]
        sides = [execution[0]] + ([self.executions[execution[3]][0]] if execution[3] else [])
        for order_id in sides:
            allocator = self.blocks.get(order_id)
            if allocator is None:
                continue
            today = sum(v[1] for v in self.executions.values() if v[0] == order_id)
            if today != allocator.filled_qty:  # blocks are day orders: a broken invariant
                raise AssertionError(f"block order {order_id} filled {allocator.filled_qty} lots, "
                                     f"{today} of them today")
        if type(cmd) is CorrectTrade:
            order = self.orders[execution[0]]
            inst = self.ref.by_index[order.instrument]
            if not 0 < cmd.qty <= execution[1]:
                return [CommandError(int(RejectCode.INVALID_QUANTITY),
                                     f"a corrected qty must be 1 to {execution[1]} lots (the original), got {cmd.qty}")]
            if not inst.band_low <= cmd.price <= inst.band_high:
                return [CommandError(int(RejectCode.PRICE_OUTSIDE_BAND),
                                     f"a corrected price must lie in [{inst.band_low}, {inst.band_high}] ticks, got {cmd.price}")]
        return _Prepared(_OP_TRADE_FIX, cmd)

    def _check_decision(self, cmd: ApproveOrder | RejectHeldOrder):
        order = self.orders.get(cmd.order_id)
        if order is None or order.status is not _S_PENDING_APPROVAL:
            what = "no such order" if order is None else f"it is {order.status.value}"
            return [CommandError(int(RejectCode.ORDER_NOT_WORKING),
                                 f"order {cmd.order_id} is not held for approval ({what})")]
        if type(cmd) is ApproveOrder and order.user and order.user == cmd.user:
            return [CommandError(int(RejectCode.FOUR_EYES),
                                 f"user {cmd.user!r} submitted order {order.order_id}; another officer must approve it")]
        return _Prepared(_OP_DECIDE, cmd, order)

    def _refuse_submit(self, cmd: SubmitOrder, run_hooks: bool) -> list | None:
        """Stages 1-4 for a new order: None if it passes, else the refusal event.

        Replay (``run_hooks`` false) trusts the journal's static checks: a price band narrowed in
        the config since must not stop recovery. Only what the book fields need is checked.
        """
        if run_hooks:
            refusal = self._check_users and entitlement_refusal(self.ref, cmd) or self._validate_submit(cmd)
        else:
            refusal = self._check_known(cmd)
        if refusal is None and (cmd.account, cmd.cl_ord_id) in self.cl_ord_ids:  # 2 dedupe
            refusal = (
                RejectCode.DUPLICATE_CL_ORD_ID,
                f"ClOrdID {cmd.cl_ord_id!r} was already used by account {cmd.account}",
            )
        if refusal is not None:
            code, text = refusal
            return [OrderRejected(cmd.account, cmd.cl_ord_id, 0, int(code), text, cmd.ts)]
        if run_hooks:
            screening = None
            for hook in self._hooks:  # 3 risk, 4 compliance (pass_all is skipped)
                outcome = hook(cmd, self)
                if outcome is None:
                    continue
                if type(outcome) is Screening:
                    screening = outcome
                    continue
                code, text = int(outcome[0]), outcome[1]
                self._journal(DeniedOrder(cmd, code, text))  # the audit trail keeps every refusal
                return [OrderDenied(cmd.account, cmd.cl_ord_id, code, text, cmd.ts)]
            return screening
        return None

    def _check_known(self, cmd: SubmitOrder) -> Refusal | None:
        if cmd.symbol not in self.ref.instruments:
            return RejectCode.UNKNOWN_INSTRUMENT, f"instrument {cmd.symbol!r} is not in the config"
        if cmd.account not in self._account_index:
            return RejectCode.UNKNOWN_ACCOUNT, f"account {cmd.account!r} is not in the config"
        return None

    def _validate_submit(self, cmd: SubmitOrder) -> Refusal | None:
        """Stage 1 for a new order. Every message says what was expected."""
        inst = self.ref.instruments.get(cmd.symbol)
        if inst is None:
            return RejectCode.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.symbol!r}"
        if cmd.account not in self._account_index:
            return RejectCode.UNKNOWN_ACCOUNT, f"unknown account {cmd.account!r}"
        if not cmd.cl_ord_id or len(cmd.cl_ord_id) > 64:
            return RejectCode.INVALID_CL_ORD_ID, "cl_ord_id must be 1 to 64 characters"
        if not 0 < cmd.qty <= MAX_ORDER_QTY:
            return RejectCode.INVALID_QUANTITY, (
                f"qty must be a positive number of lots up to {MAX_ORDER_QTY}, got {cmd.qty}"
            )
        otype, tif = cmd.order_type, cmd.tif
        has_limit = otype in (LIMIT, STOP_LIMIT)
        if has_limit and not inst.band_low <= cmd.price <= inst.band_high:
            code = RejectCode.INVALID_PRICE if cmd.price <= 0 else RejectCode.PRICE_OUTSIDE_BAND
            return code, (
                f"price must lie in the band [{inst.band_low}, {inst.band_high}] ticks for "
                f"{cmd.symbol}, got {cmd.price}"
            )
        if not has_limit and cmd.price != 0:
            return RejectCode.INVALID_PRICE, f"a {otype.name} order takes no price, got {cmd.price}"
        if otype in (STOP, STOP_LIMIT):
            if not inst.band_low <= cmd.stop_price <= inst.band_high:
                return RejectCode.INVALID_STOP_PRICE, (
                    f"stop_price must lie in the band [{inst.band_low}, {inst.band_high}] ticks, "
                    f"got {cmd.stop_price}"
                )
        elif cmd.stop_price != 0:
            return RejectCode.INVALID_STOP_PRICE, f"a {otype.name} order takes no stop_price"
        if cmd.display_qty < 0 or cmd.display_qty > cmd.qty:
            return RejectCode.INVALID_DISPLAY_QUANTITY, (
                f"display_qty must be 0 (all shown) or 1..qty ({cmd.qty}), got {cmd.display_qty}"
            )
        if cmd.display_qty and (otype != LIMIT or tif in (IOC, FOK)):
            return RejectCode.INVALID_ORDER_COMBINATION, "display_qty needs a resting LIMIT order"
        if otype == MARKET and tif not in (IOC, FOK, DAY):
            return RejectCode.INVALID_TIME_IN_FORCE, f"a MARKET order takes DAY, IOC or FOK, got {tif.name}"
        if cmd.post_only and (otype != LIMIT or tif in (IOC, FOK)):
            return RejectCode.INVALID_ORDER_COMBINATION, "post_only needs a resting LIMIT order"
        if tif == GTD:
            if cmd.expire_ts <= 0:
                return RejectCode.MISSING_EXPIRE_TIME, "a GTD order needs expire_ts (ns since epoch)"
            if cmd.expire_ts <= cmd.ts:
                return RejectCode.EXPIRE_TIME_IN_PAST, (
                    f"expire_ts {cmd.expire_ts} is not after the order's time {cmd.ts}"
                )
        elif cmd.expire_ts:
            return RejectCode.INVALID_TIME_IN_FORCE, f"expire_ts needs tif GTD, got {tif.name}"
        return None

    def _find_order(self, cmd: CancelOrder | ModifyOrder) -> Order | Refusal:
        if cmd.order_id:
            order = self.orders.get(cmd.order_id)
        else:
            order = self.orders.get(self.cl_ord_ids.get((cmd.account, cmd.orig_cl_ord_id), 0))
        if order is None:
            target = cmd.order_id or repr(cmd.orig_cl_ord_id)
            return RejectCode.UNKNOWN_ORDER, f"no open order {target} for account {cmd.account}"
        if order.account != cmd.account:
            return RejectCode.ORDER_ACCOUNT_MISMATCH, (
                f"order {order.order_id} belongs to another account, not {cmd.account}"
            )
        return order

    def _check_request_id(self, cmd: CancelOrder | ModifyOrder) -> Refusal | None:
        if cmd.cl_ord_id and (cmd.account, cmd.cl_ord_id) in self.cl_ord_ids:
            return RejectCode.DUPLICATE_CL_ORD_ID, (
                f"ClOrdID {cmd.cl_ord_id!r} was already used by account {cmd.account}"
            )
        return None

    def _check_cancel(self, cmd: CancelOrder):
        found = self._find_order(cmd)
        refusal = found if isinstance(found, tuple) else self._check_request_id(cmd)
        if refusal is not None:
            return [self._cancel_rejected(cmd, int(refusal[0]), refusal[1], False)]
        if found.status is _S_PENDING_APPROVAL:
            return _Prepared(_OP_CANCEL_HELD, cmd, found)  # never reached the book
        if self.router is not None and self.router.is_routed(found.order_id):
            if not found.is_working or found.status is _S_PENDING_CANCEL:
                what = "a cancel is already pending" if found.is_working else f"it is {found.status.value}"
                return [self._cancel_rejected(cmd, int(RejectCode.ORDER_NOT_WORKING),
                                              f"order {found.order_id} cannot be canceled: {what}", False)]
            return _Prepared(_OP_CANCEL_ROUTED, cmd, found)  # its children are at venues
        # Whether it still works is the book's call: the batch path may not have applied fills yet.
        return _Prepared(bk.OP_CANCEL, cmd, found)

    def _check_modify(self, cmd: ModifyOrder, run_hooks: bool):
        found = self._find_order(cmd)
        refusal = found if isinstance(found, tuple) else self._check_request_id(cmd)
        if refusal is None and found.status is _S_PENDING_APPROVAL:
            refusal = RejectCode.ORDER_HELD, f"order {found.order_id} is held for approval; cancel it instead"
        if refusal is None and self.router is not None and self.router.is_routed(found.order_id):
            refusal = RejectCode.ROUTE_NOT_SUPPORTED, (f"order {found.order_id} was routed to venues; "
                                                       "cancel it and send a new one")
        if refusal is None:
            refusal = self._validate_modify(cmd, found, check_band=run_hooks)
        if refusal is None and run_hooks:
            for hook in self._hooks:
                refusal = hook(cmd, self)
                if type(refusal) is Screening:
                    refusal = (refusal.hold_code, refusal.hold_reason) if refusal.hold_code else None
                if refusal is not None:
                    self._journal(DeniedOrder(cmd, int(refusal[0]), refusal[1]))
                    break
        if refusal is not None:
            return [self._cancel_rejected(cmd, int(refusal[0]), refusal[1], True)]
        return _Prepared(bk.OP_MODIFY, cmd, found)

    def _validate_modify(self, cmd: ModifyOrder, order: Order, check_band: bool) -> Refusal | None:
        if not order.is_working:
            return RejectCode.ORDER_NOT_WORKING, f"order {order.order_id} is {order.status.value}"
        if cmd.price is None and cmd.qty is None:
            return RejectCode.NOTHING_TO_MODIFY, "give a new price, a new qty, or both"
        if cmd.price is not None:
            if order.order_type not in (LIMIT, STOP_LIMIT):
                return RejectCode.INVALID_PRICE, f"a {order.order_type.name} order has no price to modify"
            inst = self.ref.by_index[order.instrument]
            if check_band and not inst.band_low <= cmd.price <= inst.band_high:
                return RejectCode.PRICE_OUTSIDE_BAND, (
                    f"price must lie in the band [{inst.band_low}, {inst.band_high}] ticks, got {cmd.price}"
                )
        if cmd.qty is not None and cmd.qty > MAX_ORDER_QTY:
            return RejectCode.INVALID_QUANTITY, f"qty must be at most {MAX_ORDER_QTY} lots, got {cmd.qty}"
        if cmd.qty is not None and cmd.qty <= order.cum_qty:
            return RejectCode.QUANTITY_BELOW_FILLED, (
                f"new qty must exceed the filled {order.cum_qty} lots, got {cmd.qty}"
            )
        if cmd.qty is not None and order.display_qty > cmd.qty:
            return RejectCode.INVALID_DISPLAY_QUANTITY, (
                f"new qty {cmd.qty} is below the display qty {order.display_qty}"
            )
        return None

    def _check_mass_cancel(self, cmd: MassCancel):
        if cmd.account and cmd.account not in self._account_index:
            return [CommandError(int(RejectCode.UNKNOWN_ACCOUNT), f"unknown account {cmd.account!r}")]
        if cmd.symbol and cmd.symbol not in self.ref.instruments:
            return [CommandError(int(RejectCode.UNKNOWN_INSTRUMENT), f"unknown instrument {cmd.symbol!r}")]
        return _Prepared(bk.OP_MASS_CANCEL, cmd)

    # -- STAGE 5: journal ---------------------------------------------------------------------

    def _journal(self, cmd) -> None:
        if self.journal is not None:
            self.seq = self.journal.append(self._encode(cmd))
        else:
            self.seq += 1

    # -- STAGES 6-7: match and apply ------------------------------------------------------------

    def _execute(self, p: _Prepared) -> list:
        """Stages 6-7 for a checked command other than a submit (both paths open those)."""
        cmd, book, out = p.cmd, self.book, []
        op = p.op
        if op >= _OP_SCREENED:
            return self._execute_own(p)
        if op == bk.OP_CANCEL:
            self._note_request(cmd)
            return self._apply(book.cancel(p.order.order_id), cmd.ts, None, out, cmd)
        if op == bk.OP_MODIFY:
            self._note_request(cmd)
            order = p.order
            price = order.price if cmd.price is None else cmd.price
            qty = order.qty if cmd.qty is None else cmd.qty
            return self._apply(book.modify(order.order_id, price, qty - order.cum_qty), cmd.ts, None, out, cmd)
        if op == bk.OP_MASS_CANCEL:
            side = -1 if cmd.side is None else int(cmd.side)
            instr = self.ref.instruments[cmd.symbol].index if cmd.symbol else -1
            account = self._account_index[cmd.account] if cmd.account else -1
            self._apply(book.mass_cancel(instr, account, side), cmd.ts, None, out)
            def match(o: Order) -> bool:
                return ((instr < 0 or o.instrument == instr) and (not cmd.account or o.account == cmd.account)
                        and (side < 0 or o.side == side))

            self._cancel_held(match, int(RejectCode.MASS_CANCEL), cmd.ts, out)
            self._cancel_routed_matching(match, int(RejectCode.MASS_CANCEL), cmd.ts, out)
            return [*out, CommandDone("MassCancel", self.seq, len(out))]
        if op == bk.OP_END_OF_DAY:
            self._apply(book.end_of_day(), cmd.ts, None, out)
            self._cancel_held(lambda o: o.tif == DAY, int(RejectCode.END_OF_DAY), cmd.ts, out)
            # a routed DAY order ends when its venues confirm its children are done
            self._cancel_routed_matching(lambda o: o.tif == DAY, int(RejectCode.END_OF_DAY), cmd.ts, out)
            self._archive_done()
            if self.router is not None:
                self.router.end_of_day(self.orders)
            self.portfolio.end_of_day()
            if self.settlement is not None:  # what is due by the day's date (UTC) settles
                self.settlement.settle(_utc_date(cmd.ts))
            if self.ledger is not None:  # the day's bookings can no longer be busted
                _booked(self.ledger.end_of_day())
            return [*out, CommandDone("EndOfDay", self.seq, len(out))]
        if op == bk.OP_EXPIRE:
            return self._apply(book.expire(cmd.ts), cmd.ts, None, out)
        return [CommandDone("TakeSnapshot", self.seq, 0)]  # the service writes the file

    def _execute_own(self, p: _Prepared) -> list:
        """Stages 6-7 for what only the pipeline handles: holds, approvals, prices, controls."""
        cmd, op, out = p.cmd, p.op, []
        if op == _OP_AUDIT:
            return out  # a refusal kept for the audit trail: no state
        if op == _OP_TRADE_FIX:
            return self._fix_trade(cmd)
        if op == _OP_ROUTE:
            return self._route_new(cmd, self._open(cmd), cmd.ts, out)
        if op == _OP_VENUE:
            return self._venue_input(cmd, p.order, out)
        if op == _OP_CANCEL_ROUTED:
            self._note_request(cmd)
            self._cancel_routed(p.order, int(RejectCode.CANCEL_REQUESTED), "cancel requested", cmd.ts, out)
            return out
        if op == _OP_ALLOCATION:
            order = self.orders[cmd.order_id]
            allocator = self.blocks[cmd.order_id]
            deltas = allocator.cancel() if p.order is None else allocator.amend(p.order[1], p.order[0])
            self._book_allocations(order, allocator, deltas, 0, cmd.ts, out if self._emit else None)
            return out
        if op == _OP_BLOCK:
            accounts, weights, capped = p.order
            submit = block_order(cmd)
            order = self._open(submit)
            self.blocks[order.order_id] = BlockAllocator(accounts, weights, 1, block_id=str(order.order_id),
                                                         capped=capped)
            return self._apply(self.book.submit(*self._book_fields(order, submit)), cmd.ts, order, out)
        if op == _OP_PRICE:
            self.portfolio.tick(self.ref.instruments[cmd.symbol].index, cmd.bid, cmd.ask, cmd.last, cmd.ts)
            return out
        if op == _OP_CONTROL:
            out = p.order.apply_control(cmd, self)  # p.order carries the owning stage
            return [*out, CommandDone(type(cmd).__name__, self.seq, len(out))]
        if op == _OP_SCREENED:
            submit = cmd.order
            order = self._open(submit)
            if not cmd.hold_code:
                if submit.route:
                    return self._route_new(submit, order, submit.ts, out)
                return self._apply(self.book.submit(*self._book_fields(order, submit)), submit.ts, order, out)
            order.apply(_T_HOLD, submit.ts)
            self.held[order.order_id] = submit
            if self._emit:
                out.append(OrderHeld(order.order_id, order.account, order.cl_ord_id, order.symbol,
                                     cmd.hold_code, cmd.hold_reason, submit.ts))
            return out
        if op == _OP_CANCEL_HELD:
            self._note_request(cmd)
            self._cancel_held_ids([p.order.order_id], int(RejectCode.CANCEL_REQUESTED), cmd.ts, out)
            return out
        order = p.order  # _OP_DECIDE
        submit = self.held.pop(order.order_id)
        if type(cmd) is RejectHeldOrder:
            order.apply(_T_DENY, cmd.ts)
            self._pf_close(order, order.qty - order.cum_qty)
            if self._emit:
                reason = f"rejected by compliance officer {cmd.user}: {cmd.reason}".rstrip(": ")
                out.append(OrderDenied(order.account, order.cl_ord_id,
                                       int(RejectCode.COMPLIANCE_REJECTED_BY_OFFICER), reason, cmd.ts))
            return out
        order.apply(_T_RELEASE, cmd.ts)
        if self._emit:
            out.append(OrderReleased(order.order_id, order.account, order.cl_ord_id, cmd.user, cmd.reason, cmd.ts))
        if submit.route:
            return self._route_new(submit, order, cmd.ts, out)
        return self._apply(self.book.submit(*self._book_fields(order, submit)), cmd.ts, order, out)

    def _fix_trade(self, cmd: BustTrade | CorrectTrade) -> list:
        """Bust or correct both sides of a trade: the orders' fills, positions and cash (and,
        through stage 8, every stage that follows them). O(1)."""
        first = self.executions[cmd.exec_id]
        sides = [cmd.exec_id] + ([first[3]] if first[3] else [])
        bust = type(cmd) is BustTrade
        out = []
        for exec_id in sides:
            order_id, qty, price, _ = self.executions[exec_id]
            order = self.orders[order_id]
            new_qty, new_price = (0, price) if bust else (cmd.qty, cmd.price)
            if order_id in self.blocks:  # first re-split the block without (or with the new) fill
                self._reallocate(order, exec_id, new_qty, new_price, cmd.ts, out if self._emit else None)
            order.unfill(qty, price, new_qty, new_price, cmd.ts)
            self.portfolio.unfill(order, qty, price)
            if bust:
                del self.executions[exec_id]
            else:
                self.portfolio.rebook(order, new_qty, new_price)
                self.executions[exec_id][1:3] = [new_qty, new_price]
            if self.settlement is not None:
                if bust:
                    self.settlement.bust(exec_id)
                else:
                    self.settlement.correct(exec_id, new_qty, new_price)
            if self.ledger is not None:
                _booked(self.ledger.bust(exec_id) if bust else self.ledger.correct(exec_id, new_qty, new_price))
            if not self._emit:
                continue
            avg = order.notional / order.cum_qty if order.cum_qty else 0.0
            if bust:
                out.append(TradeBusted(exec_id, order_id, order.account, order.cl_ord_id, order.symbol,
                                       order.side, qty, price, order.cum_qty, avg, cmd.reason, cmd.ts))
            else:
                out.append(TradeCorrected(exec_id, order_id, order.account, order.cl_ord_id, order.symbol,
                                          order.side, qty, price, new_qty, new_price, order.cum_qty,
                                          avg, cmd.reason, cmd.ts))
        return out

    def _cancel_held(self, match, code: int, ts: int, out: list) -> None:
        """Cancel held orders that ``match``; they never reached the book. O(held)."""
        self._cancel_held_ids([oid for oid in self.held if match(self.orders[oid])], code, ts, out)

    def _cancel_held_ids(self, ids: list[int], code: int, ts: int, out: list) -> None:
        """Cancel these held orders. O(len(ids))."""
        for oid in ids:
            order = self.orders[oid]
            del self.held[oid]
            leaves = order.qty - order.cum_qty
            order.apply(_T_CANCEL, ts)
            self._pf_close(order, leaves)
            if self._emit:
                out.append(OrderCanceled(oid, order.account, order.cl_ord_id, leaves, code, reason_text(code), ts))

    def cancel_orders(self, match, code: int, ts: int) -> list:
        """Cancel every working order that ``match`` (in the book or held) with reason ``code``:
        for stages applying a control (the kill switch). Stage 7; O(orders)."""
        out: list = []
        self._cancel_held(match, code, ts, out)
        for oid in [oid for oid, o in self.orders.items() if o.is_working and match(o)]:
            if self.router is not None and self.router.is_routed(oid):
                if self.orders[oid].status is not _S_PENDING_CANCEL:
                    self._cancel_routed(self.orders[oid], code, reason_text(code), ts, out)
                continue
            events = self.book.cancel(oid).copy()  # the book's output buffer is read-only
            cancel_rows = events[:, EV_TYPE] == CANCEL
            events[cancel_rows, EV_REASON] = code
            self._apply(events, ts, None, out)
        return out

    def _execute_run(self, run: list[_Prepared]) -> list[list]:
        """A run of submits (orders already opened) and cancels in one jitted book call; each
        command's slice of the event stream is then applied exactly as ``process`` would."""
        cancel_pad = (0,) * (bk.C_NCOLS - 2)
        rows = np.array([
            (bk.OP_SUBMIT, *self._book_fields(p.order, p.cmd)) if p.op == bk.OP_SUBMIT
            else (bk.OP_CANCEL, p.order.order_id, *cancel_pad)
            for p in run
        ], dtype=np.int64)
        starts = np.empty(len(run) + 1, dtype=np.int64)
        events = self.book.process_batch(rows, starts)
        starts[len(run)] = len(events)
        results: list[list] = []
        bounds = starts.tolist()
        for i, p in enumerate(run):
            chunk = events[bounds[i]:bounds[i + 1]]
            if p.op == bk.OP_SUBMIT:
                results.append(self._apply(chunk, p.cmd.ts, p.order, []))
            else:
                results.append(self._apply(chunk, p.cmd.ts, None, [], p.cmd))
        return results

    def _open(self, cmd: SubmitOrder) -> Order:
        inst = self.ref.instruments[cmd.symbol]
        oid = self.next_order_id
        self.next_order_id = oid + 1
        order = Order(
            oid, cmd.account, cmd.cl_ord_id, cmd.symbol, inst.index, cmd.side, cmd.order_type,
            cmd.tif, cmd.price, cmd.stop_price, cmd.qty, cmd.display_qty, cmd.post_only,
            cmd.expire_ts, cmd.ts, updated_ts=cmd.ts, user=cmd.user,
        )
        self.orders[oid] = order
        self.cl_ord_ids[(cmd.account, cmd.cl_ord_id)] = oid
        self._pf_open(order)  # working lots and cash holds count from here: the next check sees them
        return order

    def _book_fields(self, order: Order, cmd: SubmitOrder) -> tuple:
        stp = self._stp_default[cmd.account] if cmd.stp is None else int(cmd.stp)
        return (
            order.order_id, order.instrument, self._account_index[cmd.account], int(cmd.side),
            int(cmd.order_type), int(cmd.tif), cmd.price, cmd.qty, cmd.display_qty,
            cmd.stop_price, cmd.expire_ts, int(cmd.post_only), stp,
        )

    def _note_request(self, cmd: CancelOrder | ModifyOrder) -> None:
        if cmd.cl_ord_id:
            self.cl_ord_ids[(cmd.account, cmd.cl_ord_id)] = 0

    def _apply(self, events: np.ndarray, ts: int, new: Order | None, out: list, request=None) -> list:
        """Stage 7 for one command: book events -> order transitions, portfolio, msgspec events.

        A new order counts in the portfolio from ``_open`` on; a book reject releases it.
        During replay (``_emit`` off) the transitions are applied and no event is built.
        """
        rows = events.tolist()
        sink = out if self._emit else None
        if new is not None:
            if rows and rows[0][EV_TYPE] == REJECT and rows[0][EV_OID] == new.order_id:
                code = rows[0][EV_REASON]
                self._pf_close(new, new.qty - new.cum_qty)
                new.apply(_T_REJECT, ts)
                if sink is not None:
                    out.append(OrderRejected(new.account, new.cl_ord_id, new.order_id, code, reason_text(code), ts))
                return out
            new.apply(_T_ACCEPT, ts)
            if sink is not None:
                out.append(OrderAccepted(
                    new.order_id, new.account, new.cl_ord_id, new.symbol, new.side,
                    new.order_type, new.price, new.qty, new.tif, new.stop_price, new.display_qty, ts,
                ))
        apply_event = self._apply_event
        for row in rows:
            apply_event(row, ts, sink, request)
        return out

    def _apply_event(self, row: list, ts: int, out: list | None, request) -> None:
        """Apply one book event to the orders; append its msgspec event unless ``out`` is None."""
        etype = row[EV_TYPE]
        orders = self.orders
        if etype == REST or etype == PENDING_STOP:
            return  # already acknowledged; the order simply works
        if etype == TRADE:
            price, qty = row[EV_PRICE], row[EV_QTY]
            taker = self.next_exec_id
            self._fill(orders[row[EV_OID]], qty, price, False, ts, out)
            self._fill(orders[row[EV_OTHER]], qty, price, True, ts, out)
            self.executions[taker][3] = taker + 1  # the two sides of one trade know each other
            self.executions[taker + 1][3] = taker
        elif etype == CANCEL:
            order = orders[row[EV_OID]]
            code = row[EV_REASON]
            self._pf_close(order, order.qty - order.cum_qty)
            order.apply(_T_CANCEL, ts)
            if out is not None:
                out.append(OrderCanceled(
                order.order_id, order.account, order.cl_ord_id, row[EV_QTY], code, reason_text(code), ts
            ))
        elif etype == EXPIRE:
            order = orders[row[EV_OID]]
            self._pf_close(order, order.qty - order.cum_qty)
            order.apply(_T_EXPIRE, ts)
            if out is not None:
                out.append(OrderExpired(order.order_id, order.account, order.cl_ord_id, row[EV_QTY], row[EV_REASON], ts))
        elif etype == TRIGGER:
            order = orders[row[EV_OID]]
            order.triggered = True
            order.apply(_T_TRIGGER, ts)
            if out is not None:
                out.append(OrderTriggered(order.order_id, order.account, order.cl_ord_id, order.symbol,
                                      row[EV_PRICE], ts))
        elif etype == REPLACE:
            order = orders[row[EV_OID]]
            old_price, old_leaves = order.price, order.qty - order.cum_qty
            order.price = row[EV_PRICE] if order.order_type in (LIMIT, STOP_LIMIT) else order.price
            order.qty = order.cum_qty + row[EV_LEAVES]
            order.apply(_T_REPLACE, ts)
            self._pf_replace(order, old_price, old_leaves)
            if out is not None:
                out.append(OrderReplaced(
                order.order_id, order.account, (request and request.cl_ord_id) or order.cl_ord_id,
                order.symbol, order.price, order.qty, row[EV_LEAVES], bool(row[EV_REASON]), ts,
            ))
        elif etype in (CANCEL_REJECT, MODIFY_REJECT):
            if out is None:
                return
            order = orders.get(row[EV_OID])
            code = row[EV_REASON]
            if code == RejectCode.UNKNOWN_BOOK_ORDER and order is not None:
                code = int(RejectCode.ORDER_NOT_WORKING)
            out.append(OrderCancelRejected(
                order.account if order else "", request.cl_ord_id if request else "",
                row[EV_OID], code,
                f"order {row[EV_OID]} is {order.status.value}" if order else reason_text(code),
                etype == MODIFY_REJECT, ts,
            ))
        elif etype == REJECT:
            order = orders[row[EV_OID]]  # a triggered stop the book could not place
            self._pf_close(order, order.qty - order.cum_qty)
            order.apply(_T_REJECT, ts)
            if out is not None:
                out.append(OrderRejected(order.account, order.cl_ord_id, order.order_id, row[EV_REASON],
                                     reason_text(row[EV_REASON]), ts))
        else:
            raise RuntimeError(f"unknown book event type {etype}")

    # -- STAGES 6-7: routed orders (engine/routing.py has the rule) ------------------------------

    def _check_route(self, cmd: SubmitOrder) -> Refusal | None:
        """Stage 1 for an order with a route: a venue that exists, lists it and is up, and an
        order type venues take. O(venues)."""
        router = self.router
        if router is None or not router.venues:
            return RejectCode.UNKNOWN_VENUE, f"route {cmd.route!r}: no venues are configured"
        if cmd.route != "SOR" and cmd.route not in router.venue_index:
            return RejectCode.UNKNOWN_VENUE, (f"route must be \"SOR\" or a venue, one of "
                                              f"{', '.join(router.venues)}; got {cmd.route!r}")
        if cmd.order_type not in (LIMIT, MARKET) or cmd.display_qty or cmd.post_only:
            return RejectCode.ROUTE_NOT_SUPPORTED, ("only plain limit and market orders are routed "
                                                    "(no stop, iceberg or post-only)")
        inst = self.ref.instruments.get(cmd.symbol)
        if cmd.route != "SOR" and inst is not None:
            v = router.venue_index[cmd.route]
            if not router.listed[v, inst.index]:
                return RejectCode.UNKNOWN_VENUE, f"venue {cmd.route} does not list {cmd.symbol}"
            if not router.up[v]:
                return RejectCode.VENUE_DOWN, f"venue {cmd.route} is down"
        return None

    def _check_venue(self, cmd):
        """Stage 1 for a venue input: it names a venue, and a child order or execution of
        Kilat's at that venue; a repeated execution id is refused here, before the journal. O(1)."""
        router, kind = self.router, type(cmd)
        if router is None or cmd.venue not in router.venue_index:
            return [CommandError(int(RejectCode.UNKNOWN_VENUE), f"unknown venue {cmd.venue!r}")]
        if kind is VenueQuote:
            inst = self.ref.instruments.get(cmd.symbol)
            if inst is None:
                return [CommandError(int(RejectCode.UNKNOWN_INSTRUMENT), f"unknown instrument {cmd.symbol!r}")]
            return _Prepared(_OP_VENUE, cmd, inst.index)
        if kind is VenueSessionChanged:
            return _Prepared(_OP_VENUE, cmd, None)
        if kind is VenueTradeBust or kind is VenueTradeCorrection:
            exec_id = router.fills.get((cmd.venue, cmd.exec_id))
            if exec_id is None or exec_id not in self.executions:
                return [CommandError(int(RejectCode.UNKNOWN_EXECUTION),
                                     f"{cmd.venue} execution {cmd.exec_id!r} is not one of today's")]
            if kind is VenueTradeCorrection and not 0 < cmd.qty <= self.executions[exec_id][1]:
                return [CommandError(int(RejectCode.INVALID_QUANTITY),
                                     f"a corrected qty must be 1 to {self.executions[exec_id][1]} lots, got {cmd.qty}")]
            return _Prepared(_OP_VENUE, cmd, exec_id)
        child = router.children.get(cmd.child_id)
        if child is None or child.venue != cmd.venue:
            return [CommandError(int(RejectCode.UNKNOWN_CHILD_ORDER),
                                 f"{cmd.venue} reports on child order {cmd.child_id}, which is not one of its")]
        if child.done:
            return [CommandError(int(RejectCode.ORDER_NOT_WORKING),
                                 f"child order {child.child_id} at {child.venue} is already {child.status}")]
        if kind is VenueFilled:
            if (cmd.venue, cmd.exec_id) in router.fills:
                return [CommandError(int(RejectCode.DUPLICATE_CL_ORD_ID),
                                     f"{cmd.venue} execution {cmd.exec_id!r} was already applied")]
            if not 0 < cmd.qty <= child.leaves_qty or cmd.price <= 0:
                return [CommandError(int(RejectCode.INVALID_QUANTITY),
                                     f"a fill of child {child.child_id} needs 1 to {child.leaves_qty} lots at a "
                                     f"positive price, got {cmd.qty} at {cmd.price}")]
        return _Prepared(_OP_VENUE, cmd, child)

    def _route_new(self, submit: SubmitOrder, order: Order, ts: int, out: list) -> list:
        """Stage 6 for a routed order: accepted by Kilat, crossed internally first (SOR), the
        rest split over the venues as child orders; with no venue to take it, an SOR order
        rests in Kilat's book. O(book events + venues)."""
        order.apply(_T_ACCEPT, ts)
        if self._emit:
            out.append(OrderAccepted(order.order_id, order.account, order.cl_ord_id, order.symbol, order.side,
                                     order.order_type, order.price, order.qty, order.tif, 0, 0, ts))
        fields = list(self._book_fields(order, submit))
        if submit.route == "SOR":
            limit = submit.price if submit.order_type == LIMIT else 0
            cross = self.router.cross_limit(order.instrument, int(order.side), limit, ts)
            fields[_BF_TYPE], fields[_BF_TIF], fields[_BF_PRICE] = (LIMIT if cross else MARKET), IOC, cross
            rows = self.book.submit(*fields)
            mine = (rows[:, EV_OID] == order.order_id) & ((rows[:, EV_TYPE] == CANCEL) | (rows[:, EV_TYPE] == REJECT))
            self._apply(rows[~mine], ts, None, out)  # the unfilled rest is routed, not canceled
        left = order.leaves_qty
        if not left or self._send_children(order, left, ts, out, frozenset(), submit.route):
            return out
        if submit.route == "SOR":  # no venue can take it: it works in Kilat's book
            fields = list(self._book_fields(order, submit))
            fields[_BF_QTY] = left
            return self._apply(self.book.submit(*fields), ts, None, out)
        self.router.ending[order.order_id] = (int(RejectCode.NO_VENUE), f"venue {submit.route} cannot take it")
        self._finish_routed(order, ts, out)
        return out

    def _send_children(self, order: Order, qty: int, ts: int, out: list, exclude, route: str) -> bool:
        """Plan ``qty`` lots over the venues and create the child orders (the service sends
        them on ``ChildOrderRouted``); False when no venue can take them. O(venues)."""
        limit = order.price if order.order_type == LIMIT else 0
        plan = self.router.plan(order.instrument, int(order.side), qty, limit, ts, exclude,
                                "" if route == "SOR" else route)
        if not plan:
            return False
        self.router.by_parent.setdefault(order.order_id, [])
        for venue, lots in plan:
            child = self.router.add_child(order.order_id, venue, lots, limit)
            if self._emit:
                out.append(ChildOrderRouted(order.order_id, child.child_id, order.account, venue, order.symbol,
                                            order.side, lots, limit, ts))
        return True

    def _venue_input(self, cmd, ctx, out: list) -> list:
        """Stages 6-7 for what a venue reported (checked by ``_check_venue``)."""
        router, kind, ts = self.router, type(cmd), cmd.ts
        if kind is VenueQuote:
            router.on_quote(cmd.venue, ctx, cmd.bid, cmd.bid_size, cmd.ask, cmd.ask_size, ts)
            return out
        if kind is VenueSessionChanged:
            router.on_session(cmd.venue, cmd.up)
            return [CommandDone("VenueSessionChanged", self.seq, 0)]
        if kind is VenueTradeBust or kind is VenueTradeCorrection:
            return self._venue_trade_fix(cmd, ctx)
        child = ctx
        order = self.orders[child.parent_id]
        if kind is VenueAccepted:
            child.status, child.venue_order_id = _C_NEW, cmd.venue_order_id
            self._child_updated(child, order, "", ts, out)
        elif kind is VenueFilled:
            router.fills[(cmd.venue, cmd.exec_id)] = self.next_exec_id
            child.cum_qty += cmd.qty
            child.notional += cmd.qty * cmd.price
            if child.cum_qty == child.qty:
                child.status = _C_FILLED
            self._fill(order, cmd.qty, cmd.price, False, ts, out if self._emit else None, cmd.venue)
            if child.done:
                self._child_updated(child, order, "", ts, out)
        else:  # rejected, or canceled (asked for, or on the venue's own account)
            rejected = kind is VenueRejected
            child.status = _C_REJECTED if rejected else _C_CANCELED
            reason = cmd.text if rejected else cmd.reason
            self._child_updated(child, order, reason, ts, out)
            if rejected or not child.cancel_requested:
                router.refused.setdefault(order.order_id, set()).add(child.venue)
                code = RejectCode.VENUE_REJECTED if rejected else RejectCode.VENUE_CANCELED
                self._reroute(order, child.qty - child.cum_qty, int(code), f"{child.venue}: {reason}", ts, out)
        self._finish_routed(order, ts, out)
        return out

    def _venue_trade_fix(self, cmd, exec_id: int) -> list:
        """A venue busted or corrected one of its executions: the parent is fixed as for an
        internal trade (one side only), and its child's counts follow."""
        order_id, qty, price, _ = self.executions[exec_id]
        new_qty, new_price = (0, price) if type(cmd) is VenueTradeBust else (cmd.qty, cmd.price)
        for child in (self.router.children[c] for c in self.router.by_parent.get(order_id, ())):
            if child.venue == cmd.venue and child.cum_qty >= qty:
                child.cum_qty -= qty - new_qty
                child.qty -= qty - new_qty
                child.notional += new_qty * new_price - qty * price
                break
        if type(cmd) is VenueTradeBust:
            return self._fix_trade(BustTrade(exec_id, cmd.reason, cmd.ts, cmd.user))
        return self._fix_trade(CorrectTrade(exec_id, cmd.qty, cmd.price, cmd.reason, cmd.ts, cmd.user))

    def _child_updated(self, child, order: Order, reason: str, ts: int, out: list) -> None:
        if self._emit:
            out.append(ChildOrderUpdated(order.order_id, child.child_id, order.account, child.venue, child.status,
                                         child.cum_qty, child.leaves_qty, reason, ts))

    def _reroute(self, order: Order, lots: int, code: int, reason: str, ts: int, out: list) -> None:
        """A child ended unfilled: its lots go to the venues that have not refused this parent;
        with none, the parent ends once its other children are done."""
        if lots <= 0 or order.status is _S_PENDING_CANCEL or not order.is_working:
            return
        refused = self.router.refused.get(order.order_id, set())
        if not self._send_children(order, lots, ts, out, refused, "SOR"):
            self.router.ending.setdefault(order.order_id, (code, f"{reason}; no other venue can take it"))

    def _finish_routed(self, order: Order, ts: int, out: list) -> None:
        """A routed order whose children are all done and that is canceling (or cannot place
        its rest) ends Canceled. O(children of the order)."""
        if not order.is_working or self.router.working(order.order_id):
            return
        ending = self.router.ending.get(order.order_id)
        if order.status is not _S_PENDING_CANCEL and ending is None:
            return
        code, reason = ending if ending is not None else (int(RejectCode.CANCEL_REQUESTED), "cancel requested")
        leaves = order.leaves_qty
        self._pf_close(order, leaves)
        order.apply(_T_CANCEL, ts)
        if self._emit:
            out.append(OrderCanceled(order.order_id, order.account, order.cl_ord_id, leaves, code, reason, ts))

    def _cancel_routed(self, order: Order, code: int, reason: str, ts: int, out: list) -> None:
        """Ask the venues to cancel the order's working children; it ends when they confirm
        (at once when none is working). O(children of the order)."""
        if order.status is not _S_PENDING_CANCEL:
            order.apply(_T_REQUEST_CANCEL, ts)
        self.router.ending[order.order_id] = (code, reason)
        for child in self.router.working(order.order_id):
            if child.cancel_requested:
                continue
            child.cancel_requested = True
            if self._emit:
                out.append(ChildCancelRequested(order.order_id, child.child_id, order.account, child.venue, ts))
        self._finish_routed(order, ts, out)

    def _cancel_routed_matching(self, match, code: int, ts: int, out: list) -> None:
        """Cancel every working routed order that ``match`` (mass cancel, end of day). O(orders)."""
        if self.router is None:
            return
        for oid in [oid for oid in self.router.by_parent if oid in self.orders]:
            order = self.orders[oid]
            if order.is_working and order.status is not _S_PENDING_CANCEL and match(order):
                self._cancel_routed(order, code, reason_text(code), ts, out)

    def _fill(self, order: Order, qty: int, price: int, maker: bool, ts: int, out: list | None,
              venue: str = "") -> None:
        order.fill(qty, price, ts)
        self._pf_fill(order, qty, price)
        exec_id = self.next_exec_id
        self.next_exec_id = exec_id + 1
        self.executions[exec_id] = [order.order_id, qty, price, 0]
        if self.ledger is not None:
            a = self._account_index[order.account]
            where = self.ledger.location_index(venue) if venue else self._custody[a]
            _booked(self.ledger.fill(exec_id, a, order.instrument, where, int(order.side), qty, price))
        if self.settlement is not None:
            self.settlement.on_fill(exec_id, order.account, order.instrument, order.side, qty, price, ts)
        if order.order_id in self.blocks:  # the block's own fill is booked first, then moved
            self._allocate(order, exec_id, qty, price, ts, out)
        if out is None:
            return
        out.append(OrderFilled(
            order.order_id, order.account, order.cl_ord_id, order.symbol, order.side, exec_id,
            qty, price, order.cum_qty, order.leaves_qty, order.notional / order.cum_qty, maker, ts, venue,
        ))

    def _allocate(self, order: Order, exec_id: int, qty: int, price: int, ts: int, out: list | None) -> None:
        """Book a block fill's allocations: position, cash and cost move from the block account
        to each account at the block's average price (exact notional), one event each."""
        allocator = self.blocks[order.order_id]
        increments = allocator.on_fill(qty, qty * price)
        self._book_allocations(order, allocator, increments, exec_id, ts, out)

    def _reallocate(self, order: Order, exec_id: int, new_qty: int, new_price: int, ts: int,
                    out: list | None) -> None:
        """A block fill is busted or corrected: split the day's fills again, as they would have
        been allocated without it (or with its new figures), and book the differences."""
        old = self.blocks[order.order_id]
        fresh = BlockAllocator(list(old.accounts), list(old.weights), old.lot, block_id=old.block_id,
                               capped=old.capped)
        for e in sorted(e for e, v in self.executions.items() if v[0] == order.order_id):
            qty, price = (new_qty, new_price) if e == exec_id else self.executions[e][1:3]
            if qty:
                fresh.on_fill(qty, qty * price)
        before = {a: (q, n) for a, q, n in old.allocations()}
        deltas = [(a, q - before.get(a, (0, 0))[0], n - before.get(a, (0, 0))[1])
                  for a, q, n in fresh.allocations()]
        if not old.active:  # the allocation is cancelled: every lot is in the block account
            fresh.cancel()
            self.blocks[order.order_id] = fresh
            return
        self.blocks[order.order_id] = fresh
        self._book_allocations(order, fresh, deltas, exec_id, ts, out)

    def _book_allocations(self, order: Order, allocator: BlockAllocator, deltas: list, exec_id: int,
                          ts: int, out: list | None) -> None:
        """Move each (account, lots, notional) delta between the block account and the account
        (a negative delta gives back) in positions, cash and settlement, one event each; then
        bring the ledger's transfer of each account changed to its whole allocation."""
        block, i, sign = self._account_index[order.account], order.instrument, 1 if order.side == BUY else -1
        totals = {account: (lots, notional) for account, lots, notional in allocator.allocations()}
        changed = []
        for account, lots, notional in deltas:
            if not lots and not notional:
                continue
            target = self._account_index[account]
            if target != block:  # a share allocated to the block account itself stays there
                paid = self.portfolio.transfer(block, target, i, sign * lots, sign * notional)
                if self.settlement is not None:
                    source = exec_id or self._last_execution(order.order_id)
                    self.settlement.allocate(source, order.account, account, sign * lots, paid)
                changed.append(account)
            if out is not None:
                out.append(AllocationMade(order.order_id, account, order.symbol, order.side, lots, notional,
                                          totals.get(account, (0, 0))[0], notional / lots if lots else 0.0,
                                          exec_id, ts))
        if self.ledger is not None and changed:
            self._ledger_sync(order, changed, totals)

    def _ledger_sync(self, order: Order, accounts: list[str], totals: dict) -> None:
        """One ledger transfer per (block, account) holds the account's whole allocation at the
        block's average: a new fill re-figures it in place (``Ledger.retransfer``), so the cost
        of lots allocated earlier follows the average as it moves; an allocation taken back to
        zero is busted. O(accounts changed + bookings of the cells touched)."""
        block, i, sign = self._account_index[order.account], order.instrument, 1 if order.side == BUY else -1
        bookings = self.block_bookings.setdefault(order.order_id, {})
        changes = []
        for account in accounts:
            lots, notional = totals.get(account, (0, 0))
            booking = bookings.get(account)
            if booking is not None and lots:
                changes.append((booking, sign * lots, notional))
            elif booking is not None:
                _booked(self.ledger.bust(booking))
                del bookings[account]
            elif lots:
                booking = f"{order.order_id}/{account}/{self.seq}"
                _booked(self.ledger.transfer(booking, block, self._account_index[account], i,
                                             self._custody[block], sign * lots, notional))
                bookings[account] = booking
        _booked(self.ledger.retransfer(changes))

    def _last_execution(self, order_id: int) -> int:
        """The latest live execution of an order today (an amend's allocations settle on its
        dates). O(executions today)."""
        return max(e for e, v in self.executions.items() if v[0] == order_id)

    def _cancel_rejected(self, cmd, code: int, text: str, for_modify: bool) -> OrderCancelRejected:
        return OrderCancelRejected(cmd.account, cmd.cl_ord_id, cmd.order_id, code, text, for_modify, cmd.ts)

    def _archive_done(self) -> None:
        """At end of day, finished orders leave the hot state (their history stays in the
        journal) and the day's ClOrdIDs are released, except those of orders still working
        (GTC, GTD): FIX 4.4 asks uniqueness within a trading day, and memory stays bounded."""
        orders = self.orders
        done = [oid for oid, o in orders.items() if not o.is_working and o.status is not _S_PENDING_NEW]
        for oid in done:
            del orders[oid]
        self.cl_ord_ids = {key: oid for key, oid in self.cl_ord_ids.items() if oid in orders}
        self.executions.clear()  # busts and corrections are for the trading day
        self.blocks = {oid: a for oid, a in self.blocks.items() if oid in orders}  # still working
        self.block_bookings.clear()  # the ledger forgets the day's bookings at its end of day too

    # -- QUERIES --------------------------------------------------------------------------------

    def find_order(self, cmd: CancelOrder | ModifyOrder) -> Order | None:
        """The order a cancel or modify names (by id or ClOrdID), if it is this account's. O(1)."""
        found = self._find_order(cmd)
        return None if isinstance(found, tuple) else found

    def validate(self) -> None:
        """Check the orders against the book and themselves; raises AssertionError naming the
        order. O(orders). (The book checks its own structure in ``book.validate()``.)"""
        book, working, routed = self.book, 0, 0
        for oid, order in self.orders.items():
            where = f"order {oid} ({order.account}/{order.cl_ord_id}, {order.status.value})"
            if not 0 <= order.cum_qty <= order.qty:
                raise AssertionError(f"{where}: cum_qty {order.cum_qty} outside 0..{order.qty}")
            if self.cl_ord_ids.get((order.account, order.cl_ord_id)) != oid and order.is_working:
                raise AssertionError(f"{where}: its ClOrdID does not map back to it")
            in_book = book.order(oid)
            if order.status is _S_PENDING_APPROVAL:
                if oid not in self.held or in_book is not None:
                    raise AssertionError(f"{where}: held orders are kept apart from the book")
                working += 1
                continue
            if order.is_working and self.router is not None and self.router.is_routed(oid):
                routed += 1
                working += 1
                if in_book is not None:
                    raise AssertionError(f"{where}: routed to venues but also in the book")
                continue
            if order.is_working:
                working += 1
                if in_book is None:
                    raise AssertionError(f"{where}: working but not in the book")
                if in_book.leaves != order.leaves_qty:
                    raise AssertionError(f"{where}: leaves {order.leaves_qty}, book has {in_book.leaves}")
                if in_book.is_pending_stop == order.triggered and order.order_type in (STOP, STOP_LIMIT):
                    raise AssertionError(f"{where}: triggered={order.triggered} but pending in book "
                                         f"={in_book.is_pending_stop}")
            elif in_book is not None:
                raise AssertionError(f"{where}: finished but still in the book")
        in_book_total = book.resting_orders() + book.pending_stops()
        if in_book_total != working - len(self.held) - routed:
            raise AssertionError(f"the book holds {in_book_total} orders, the pipeline {working} working "
                                 f"of which {len(self.held)} held")
        self.portfolio.validate(self.orders)
        if self.router is not None:
            self.router.validate()

    def state_hash(self) -> str:
        """A digest of the whole state: book, orders, ids in use, counters. O(n log n)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.book.state_hash().encode())
        h.update(self._encode([self.next_order_id, self.next_exec_id]))
        for oid in sorted(self.orders):
            h.update(self._encode(self.orders[oid]))
        h.update(self._encode(sorted(self.cl_ord_ids.items())))
        h.update(self.portfolio.state_hash())
        h.update(self._encode(sorted(self.held.items())))
        h.update(self._encode(sorted(self.executions.items())))
        for oid in sorted(self.blocks):
            h.update(self.blocks[oid].state_hash())
        h.update(self._encode(sorted((oid, sorted(b.items())) for oid, b in self.block_bookings.items())))
        if self.settlement is not None:
            h.update(self.settlement.state_hash())
        if self.ledger is not None:
            h.update(self.ledger.state_hash())
        if self.router is not None:
            h.update(self.router.state_hash())
        for stage in self.stages:
            h.update(stage.state_hash())
        return h.hexdigest()

    # -- SNAPSHOTS ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes, at ``self.seq``."""
        if self._unobserved:
            raise RuntimeError("stage 8 has not observed the last batch: call observe_pending() first")
        state = _Snapshot(
            seq=self.seq,
            next_order_id=self.next_order_id,
            next_exec_id=self.next_exec_id,
            orders=list(self.orders.values()),
            cl_ord_ids=[(a, c, o) for (a, c), o in self.cl_ord_ids.items()],
            book=self.book.dump(),
            symbols=[inst.symbol for inst in self.ref.by_index],
            accounts=list(self._account_index),
            portfolio=self.portfolio.dump(),
            held=sorted(self.held.items()),
            executions=sorted(self.executions.items()),
            settlement=self.settlement.dump() if self.settlement is not None else b"",
            ledger=self.ledger.dump() if self.ledger is not None else b"",
            blocks=[(oid, a.dump()) for oid, a in sorted(self.blocks.items())],
            block_bookings=sorted((oid, sorted(b.items())) for oid, b in self.block_bookings.items()),
            router=self.router.dump() if self.router is not None else b"",
            stages=[stage.dump() for stage in self.stages],
        )
        return msgspec.msgpack.encode(state)

    def restore(self, data: bytes) -> None:
        """Load a snapshot taken by ``snapshot`` into this (fresh) pipeline."""
        state = msgspec.msgpack.decode(data, type=_Snapshot)
        # The book keeps instruments and accounts as indices in config order: the config may
        # add new ones at the end, but must not drop or reorder those the snapshot knows.
        for what, then, now in (("instruments", state.symbols, [i.symbol for i in self.ref.by_index]),
                                ("accounts", state.accounts, list(self._account_index))):
            if now[:len(then)] != then:
                raise SnapshotMismatch(
                    f"the snapshot at seq {state.seq} was taken with {what} {then}; the config now "
                    f"lists {now}. Keep those in the same order (add new ones at the end)."
                )
        self.seq = state.seq
        self.next_order_id = state.next_order_id
        self.next_exec_id = state.next_exec_id
        self.orders = {o.order_id: o for o in state.orders}
        self.cl_ord_ids = {(a, c): o for a, c, o in state.cl_ord_ids}
        self.book.load(state.book)
        self.portfolio.load(state.portfolio)
        self.held = dict(state.held)
        self.executions = {e: list(v) for e, v in state.executions}
        if self.settlement is not None and state.settlement:
            self.settlement.load(state.settlement)
        if self.ledger is not None and state.ledger:
            self.ledger.load(state.ledger)
        self.blocks = {oid: BlockAllocator.load(data) for oid, data in state.blocks}
        self.block_bookings = {oid: dict(pairs) for oid, pairs in state.block_bookings}
        if self.router is not None and state.router:
            self.router.load(state.router)
        if len(state.stages) != len(self.stages):
            raise SnapshotMismatch(f"the snapshot at seq {state.seq} has {len(state.stages)} stage states, "
                                   f"this pipeline {len(self.stages)} stages")
        for stage, data in zip(self.stages, state.stages, strict=True):
            stage.load(data)


class _Prepared:
    """A command that passed stages 1-4, with what they derived."""

    __slots__ = ("op", "cmd", "order")

    def __init__(self, op: int, cmd, order=None):  # order: the Order, or a control's Stage
        self.op = op
        self.cmd = cmd
        self.order = order


class SnapshotMismatch(ValueError):
    """A snapshot does not fit the configured instruments or accounts."""


class ReplayDiverged(RuntimeError):
    """A journaled command is refused on replay: the config or the code no longer fits it."""


class _Snapshot(msgspec.Struct):
    seq: int
    next_order_id: int
    next_exec_id: int
    orders: list[Order]
    cl_ord_ids: list[tuple[str, str, int]]
    book: bytes
    symbols: list[str]
    accounts: list[str]
    portfolio: bytes
    held: list[tuple[int, SubmitOrder]]
    stages: list[bytes]
    executions: list[tuple[int, list[int]]] = []
    settlement: bytes = b""
    ledger: bytes = b""
    blocks: list[tuple[int, bytes]] = []
    block_bookings: list[tuple[int, list[tuple[str, str]]]] = []
    router: bytes = b""


# ``_book_fields`` and ``_execute_run`` lay a command row out in this column order.
if (bk.C_OP, bk.C_OID, bk.C_INSTR, bk.C_ACCOUNT, bk.C_SIDE, bk.C_OTYPE, bk.C_TIF, bk.C_PRICE,
        bk.C_QTY, bk.C_DISPLAY, bk.C_STOP_PRICE, bk.C_EXPIRE_TS, bk.C_POST_ONLY, bk.C_STP,
        bk.C_NCOLS) != tuple(range(15)):
    raise ImportError("engine.book_events command columns changed; update engine.pipeline")

_OP_BY_KIND = {EndOfDay: bk.OP_END_OF_DAY, AdvanceTime: bk.OP_EXPIRE, TakeSnapshot: -1}

__all__ = ["Pipeline", "Check", "Screening", "Stage", "pass_all", "reason_text", "OrderType"]
