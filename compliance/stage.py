"""Compliance as a pipeline stage: pre-trade rules (stage 4), post-trade monitoring and
surveillance (stage 8), and the officers' commands (issuer lists, locates, alert actions).

    stage 4   ComplianceRules.check_order on the projected portfolio: HARD denies, SOFT holds the
              order for approval, WARN lets it pass; SOFT and WARN findings travel with the
              journaled command (``ScreenedOrder``) so replay raises the same alerts.
    stage 8   for each journaled batch: pre-trade findings become alerts; fills and price ticks
              re-check the rules on the live portfolio (breaches raise alerts, recoveries mark
              them); every order and execution event runs through the surveillance detectors.
    controls  restricted / watch list changes, locates, alert workflow actions: journaled.

Every alert is kept in the ``AlertBook``; what it raises or changes is returned to the pipeline
as notices for the officers' sessions.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np

from compliance.alerts import FINAL, RESOLVED, AlertBook
from compliance.rules import ComplianceRules, Severity
from compliance.surveillance import Surveillance
from engine.constants import LIMIT, MARKET, STOP, STOP_LIMIT, RejectCode
from engine.messages import (
    ALERT_COMMANDS,
    AlertsView,
    AllocationMade,
    ApproveOrder,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    OrderAccepted,
    OrderFilled,
    OrderHeld,
    PriceTick,
    QueryAlerts,
    RejectHeldOrder,
    RuleFinding,
    ScreenedOrder,
    SetKillSwitch,
    SetLocate,
    SubmitOrder,
    TradeBusted,
    TradeCorrected,
    UpdateIssuerList,
)
from engine.pipeline import Screening

_PASS, _HARD = int(Severity.PASS), int(Severity.HARD)
# Events that move a position: the post-trade rules re-check the instrument.
_POSITION_EVENTS = (OrderFilled, TradeBusted, TradeCorrected)

# Commands after which every aggregate is rebuilt (they touch many cells at once).
_REFRESH_ALL = (EndOfDay, MassCancel, SetKillSwitch)


class ComplianceStage:
    controls = (UpdateIssuerList, SetLocate, *ALERT_COMMANDS)

    def __init__(self, rules: ComplianceRules, surveillance: Surveillance | None, ref):
        self.rules = rules
        self.surveillance = surveillance
        self.ref = ref
        self.alerts = AlertBook()
        self.hold_alerts: dict[int, int] = {}  # held order id -> its alert id
        self._n_instruments = len(ref.by_index)

    # -- STAGE 4: pre-trade ---------------------------------------------------------------------

    def check(self, cmd, pipeline):
        """HARD -> (code, text); SOFT -> Screening holding the order; WARN -> Screening with
        the findings only; clean -> None. Read-only."""
        if type(cmd) is SubmitOrder:
            inst = self.ref.instruments[cmd.symbol]
            qty, side = cmd.qty, int(cmd.side)
            price = _order_price(cmd.order_type, cmd.price, cmd.stop_price, pipeline, inst.index)
        elif type(cmd) is ModifyOrder:
            order = pipeline.find_order(cmd)
            if order is None:
                return None  # stage 1 refuses it
            inst = self.ref.by_index[order.instrument]
            qty = (cmd.qty if cmd.qty is not None else order.qty) - order.qty
            price = cmd.price if cmd.price is not None else order.price
            price = _order_price(order.order_type, price, order.stop_price, pipeline, inst.index)
            side = int(order.side)
            if qty <= 0:
                return None  # a smaller (or same-size) order never adds to any exposure
        else:
            return None
        outcome = self.rules.check_order(self.ref.account_index[cmd.account], inst.index, side, qty, price)
        severity = outcome.severity
        if severity == _PASS:
            return None
        if severity == _HARD:  # the denial text is the worst rule's own; no evaluations built
            return outcome.code, outcome.text
        failed = outcome.failures
        worst = max(failed, key=lambda e: e.severity)
        findings = [RuleFinding(e.rule_id, e.version, Severity(e.severity).name, int(e.code), e.text,
                                float(e.value), float(e.limit)) for e in failed]
        if worst.severity == Severity.SOFT:
            if type(cmd) is ModifyOrder:
                return worst.code, (f"would need approval ({worst.text}); cancel and submit a "
                                    f"new order instead")
            return Screening(int(RejectCode.COMPLIANCE_HELD),
                             f"held for approval: {worst.text}",
                             findings)
        return Screening(0, "", findings) if type(cmd) is SubmitOrder else None

    # -- CONTROLS ------------------------------------------------------------------------------

    def check_control(self, cmd, pipeline):
        kind = type(cmd)
        if kind is UpdateIssuerList:
            if cmd.list_name not in ("restricted", "watch"):
                return RejectCode.INVALID_CONTROL, f"list must be restricted or watch, got {cmd.list_name!r}"
            if not cmd.issuer.strip():
                return RejectCode.INVALID_CONTROL, "issuer must not be empty"
            return None
        if kind is SetLocate:
            if cmd.account not in self.ref.account_index:
                return RejectCode.UNKNOWN_ACCOUNT, f"unknown account {cmd.account!r}"
            if cmd.symbol not in self.ref.instruments:
                return RejectCode.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.symbol!r}"
            if cmd.qty < 0:
                return RejectCode.INVALID_CONTROL, f"locate qty must be 0 or more lots, got {cmd.qty}"
            return None
        return self.alerts.check_action(cmd)

    def apply_control(self, cmd, pipeline) -> list:
        kind = type(cmd)
        if kind is UpdateIssuerList:
            change = self.rules.restrict if cmd.list_name == "restricted" else self.rules.watch
            _must_pass(change(cmd.issuer, cmd.add))
            return []
        if kind is SetLocate:
            _must_pass(self.rules.set_locate(cmd.account, cmd.symbol, cmd.qty))
            return []
        return [self.alerts.apply_action(cmd)]

    # -- STAGE 5: a new order's working lots count in the cached aggregates at once ----------

    def note(self, record) -> None:
        order = record.order if type(record) is ScreenedOrder else record
        if type(order) is SubmitOrder:
            self.rules.touch(self.ref.account_index[order.account], self.ref.instruments[order.symbol].index)

    # -- STAGE 8: post-trade, surveillance ------------------------------------------------------

    def observe(self, done: list, pipeline) -> list:
        raised: list = []
        alerts = self.alerts
        changed = None
        refresh = False
        cells: set[tuple[str, int]] = set()
        batch_events: list = []
        for record, events in done:
            kind = type(record)
            if kind is ScreenedOrder:
                raised.extend(self._pre_trade_alerts(record, events))
            elif kind is ApproveOrder or kind is RejectHeldOrder:
                decided = pipeline.orders.get(record.order_id)
                if decided is not None:  # a rejection's OrderDenied names no order id
                    cells.add((decided.account, decided.instrument))
                alert_id = self.hold_alerts.pop(record.order_id, 0)
                if alert_id and alerts.alerts[alert_id].state not in FINAL:
                    verb = "approved" if kind is ApproveOrder else "rejected"
                    raised.append(alerts.system_update(
                        alert_id, verb, f"order {record.order_id} {verb} by {record.user}: {record.reason}",
                        record.ts, RESOLVED))
            if kind is PriceTick:
                if changed is None:
                    changed = np.zeros(self._n_instruments, dtype=np.bool_)
                changed[self.ref.instruments[record.symbol].index] = True
            if kind in _REFRESH_ALL:
                refresh = True
            orders = pipeline.orders
            for event in events:
                order = orders.get(getattr(event, "order_id", 0))
                if order is not None:
                    cells.add((order.account, order.instrument))
                    if type(event) is AllocationMade:  # the allocated account's cell moved too
                        cells.add((event.account, order.instrument))
                if type(event) in _POSITION_EVENTS and order is not None:
                    if changed is None:
                        changed = np.zeros(self._n_instruments, dtype=np.bool_)
                    changed[order.instrument] = True
            batch_events.extend(events)
        if refresh:
            self.rules.refresh()
        else:
            index, touch = self.ref.account_index, self.rules.touch
            for account, instrument in cells:
                touch(index[account], instrument)
        if changed is not None:
            raised.extend(self._post_trade(changed, max(map(_record_ts, done), default=0)))
        if self.surveillance is not None and batch_events:
            rows = self.surveillance.encode(batch_events)
            if len(rows):
                for f in self.surveillance.process(rows):
                    raised.append(alerts.raise_alert(
                        "surveillance", f.detector, 1, f.severity.upper(), f.account, f.symbol, f.text,
                        list(f.order_ids), list(f.exec_ids), f.ts))
        return raised

    def _pre_trade_alerts(self, record: ScreenedOrder, events: list) -> list:
        order = record.order
        order_id = next((e.order_id for e in events if type(e) in (OrderHeld, OrderAccepted)), 0)
        out = []
        for f in record.findings:
            alert = self.alerts.raise_alert(
                "pre-trade", f.rule_id, f.version, f.severity, order.account, order.symbol,
                f.text, [order_id] if order_id else [], [], order.ts)
            out.append(alert)
            if record.hold_code and f.severity == "SOFT" and order_id not in self.hold_alerts:
                self.hold_alerts[order_id] = alert.alert_id
        return out

    def _post_trade(self, changed: np.ndarray, ts: int) -> list:
        out = []
        book = self.alerts
        for change in self.rules.recheck(changed):
            key = f"{change.rule_id}|{change.scope_key}"
            if change.breached:
                if key in book.open_breaches:
                    continue
                alert = book.raise_alert("post-trade", change.rule_id, change.version,
                                         Severity(change.severity).name, "", "", change.text, [], [], ts)
                book.open_breaches[key] = alert.alert_id
                out.append(alert)
            else:
                alert_id = book.open_breaches.pop(key, 0)
                if alert_id:
                    out.append(book.system_update(alert_id, "recovered", change.text, ts))
        return out

    # -- QUERIES, STATE -------------------------------------------------------------------------

    def query(self, query, pipeline):
        if type(query) is not QueryAlerts:
            return None
        book = self.alerts
        if query.alert_id:
            alert = book.alerts.get(query.alert_id)
            return AlertsView([book.view(alert, True)] if alert else [])
        found = book.find(query.state, query.severity, query.rule, query.account, max(1, query.limit))
        return AlertsView([book.view(a, False) for a in found])

    def dump(self) -> bytes:
        return msgspec.msgpack.encode([
            self.rules.dump(), self.surveillance.dump() if self.surveillance else b"",
            self.alerts.dump(), sorted(self.hold_alerts.items()),
        ])

    def load(self, data: bytes) -> None:
        rules, surveillance, alerts, holds = msgspec.msgpack.decode(data)
        self.rules.load(rules)
        if self.surveillance is not None and surveillance:
            self.surveillance.load(surveillance)
        self.alerts.load(alerts)
        self.hold_alerts = {int(k): int(v) for k, v in holds}

    def state_hash(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.rules.state_hash())
        if self.surveillance is not None:
            h.update(self.surveillance.state_hash())
        h.update(self.alerts.state_hash())
        h.update(msgspec.msgpack.encode(sorted(self.hold_alerts.items())))
        return h.digest()


def _record_ts(item: tuple) -> int:
    """The time of a journaled record (a screened order carries its order's)."""
    record = item[0]
    inner = getattr(record, "order", None) or getattr(record, "request", None) or record
    return getattr(inner, "ts", 0)


def _order_price(order_type, price: int, stop_price: int, pipeline, instrument: int) -> int:
    """The price an order is valued at: its limit, else its stop, else (market) the reference
    price; 0 when none is known (the rules then fail closed)."""
    if order_type == LIMIT or order_type == STOP_LIMIT:
        return price
    if order_type == STOP:
        return stop_price
    assert order_type == MARKET
    return pipeline.portfolio.reference_price(instrument)


def _must_pass(refusal) -> None:
    if refusal is not None:  # check_control validated it: a failure here is a bug
        raise RuntimeError(f"a checked compliance control failed to apply: {refusal}")
