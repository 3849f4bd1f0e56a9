"""Alerts and their workflow: what compliance officers live in.

An alert is raised by a pre-trade rule (WARN, or SOFT with the order held), a post-trade breach
or a surveillance detector, with the evidence that made it. Officers move it through a
transition table kept as data::

    OPEN ──ack──▶ ACKNOWLEDGED ──escalate──▶ ESCALATED
      │              │                          │
      └──────────────┴──── resolve / dismiss ───┴──▶ RESOLVED | DISMISSED (final)

A comment or a reassignment is allowed in any state but the final ones. Every step is an event
with who, when and why, and the alert keeps that history. The book is state: it is rebuilt by
replaying the journal (officer actions are journaled commands) and saved in snapshots.
"""

from __future__ import annotations

import hashlib

import msgspec

from engine.constants import RejectCode
from engine.messages import (
    AcknowledgeAlert,
    AlertHistoryEntry,
    AlertRaised,
    AlertUpdated,
    AlertView,
    CommentAlert,
    DismissAlert,
    EscalateAlert,
    ResolveAlert,
)

OPEN, ACKNOWLEDGED, ESCALATED, RESOLVED, DISMISSED = (
    "OPEN", "ACKNOWLEDGED", "ESCALATED", "RESOLVED", "DISMISSED",
)
STATES = (OPEN, ACKNOWLEDGED, ESCALATED, RESOLVED, DISMISSED)
FINAL = frozenset({RESOLVED, DISMISSED})
SEVERITIES = ("HARD", "SOFT", "WARN", "HIGH", "MEDIUM", "LOW")

#: (state, action) -> next state. Comments and assignment keep the state (not final).
TRANSITIONS: dict[tuple[str, str], str] = {
    (OPEN, "acknowledge"): ACKNOWLEDGED,
    (OPEN, "escalate"): ESCALATED,
    (ACKNOWLEDGED, "escalate"): ESCALATED,
    **{(s, "resolve"): RESOLVED for s in (OPEN, ACKNOWLEDGED, ESCALATED)},
    **{(s, "dismiss"): DISMISSED for s in (OPEN, ACKNOWLEDGED, ESCALATED)},
    **{(s, "comment"): s for s in (OPEN, ACKNOWLEDGED, ESCALATED)},
}

ACTION_BY_COMMAND = {
    AcknowledgeAlert: "acknowledge",
    EscalateAlert: "escalate",
    ResolveAlert: "resolve",
    DismissAlert: "dismiss",
    CommentAlert: "comment",
}


class AlertBook:
    """Every alert since the start of the journal, by id. Lookups O(1); listing O(alerts)."""

    def __init__(self):
        self.alerts: dict[int, AlertView] = {}  # stored as their (immutable) views
        self.next_id = 1
        self.open_breaches: dict[str, int] = {}  # post-trade breach key -> its open alert id

    # -- COMMANDS --

    def raise_alert(self, source: str, rule_id: str, version: int, severity: str, account: str,
                    symbol: str, text: str, order_ids: list[int], exec_ids: list[int],
                    ts: int) -> AlertRaised:
        alert_id = self.next_id
        self.next_id += 1
        alert = AlertView(alert_id, source, rule_id, version, severity, OPEN, account, symbol, text,
                          "", False, list(order_ids), list(exec_ids), ts, ts,
                          [AlertHistoryEntry(ts, "kilat", "raise", OPEN, text)])
        self.alerts[alert_id] = alert
        return AlertRaised(alert_id, source, rule_id, version, severity, account, symbol, text,
                           alert.order_ids, alert.exec_ids, ts)

    def check_action(self, cmd) -> tuple[int, str] | None:
        """Refusal (code, text) if the officer's action cannot apply; None if it can. O(1)."""
        alert = self.alerts.get(cmd.alert_id)
        if alert is None:
            return RejectCode.INVALID_CONTROL, f"no alert {cmd.alert_id}"
        action = ACTION_BY_COMMAND[type(cmd)]
        if (alert.state, action) not in TRANSITIONS:
            return RejectCode.INVALID_CONTROL, (
                f"alert {alert.alert_id} is {alert.state}: it cannot be {action}d"
                if alert.state not in FINAL else f"alert {alert.alert_id} is {alert.state} (final)"
            )
        if action in ("dismiss", "comment") and not cmd.comment.strip():
            return RejectCode.INVALID_CONTROL, f"{action} needs a comment saying why"
        return None

    def apply_action(self, cmd) -> AlertUpdated:
        alert = self.alerts[cmd.alert_id]
        action = ACTION_BY_COMMAND[type(cmd)]
        return self._update(alert, action, TRANSITIONS[(alert.state, action)], cmd.user,
                            cmd.comment, cmd.assignee or alert.assignee, cmd.ts)

    def system_update(self, alert_id: int, action: str, comment: str, ts: int,
                      state: str | None = None) -> AlertUpdated:
        """Kilat's own step on an alert: a breach recovered, a held order decided."""
        alert = self.alerts[alert_id]
        return self._update(alert, action, state or alert.state, "kilat", comment, alert.assignee, ts,
                            recovered=alert.recovered or action == "recovered")

    def _update(self, alert: AlertView, action: str, state: str, user: str, comment: str,
                assignee: str, ts: int, recovered: bool | None = None) -> AlertUpdated:
        self.alerts[alert.alert_id] = msgspec.structs.replace(
            alert, state=state, assignee=assignee, updated_ts=ts,
            recovered=alert.recovered if recovered is None else recovered,
            history=[*alert.history, AlertHistoryEntry(ts, user, action, state, comment)])
        return AlertUpdated(alert.alert_id, state, action, user, comment, assignee, ts)

    # -- QUERIES --

    def view(self, alert: AlertView, with_history: bool) -> AlertView:
        return alert if with_history else msgspec.structs.replace(alert, history=[])

    def find(self, state: str = "", severity: str = "", rule: str = "", account: str = "",
             limit: int = 1000) -> list[AlertView]:
        """Newest first. O(alerts)."""
        found = []
        for alert in reversed(self.alerts.values()):
            if ((not state or alert.state == state) and (not severity or alert.severity == severity)
                    and (not rule or alert.rule_id == rule) and (not account or alert.account == account)):
                found.append(alert)
                if len(found) >= limit:
                    break
        return found

    def state_hash(self) -> bytes:
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    def dump(self) -> bytes:
        return msgspec.msgpack.encode(
            _AlertState(list(self.alerts.values()), self.next_id, sorted(self.open_breaches.items()))
        )

    def load(self, data: bytes) -> None:
        state = msgspec.msgpack.decode(data, type=_AlertState)
        self.alerts = {a.alert_id: a for a in state.alerts}
        self.next_id = state.next_id
        self.open_breaches = dict(state.open_breaches)


class _AlertState(msgspec.Struct):
    alerts: list[AlertView]
    next_id: int
    open_breaches: list[tuple[str, int]]
