"""Risk, compliance holds, the alert workflow and issuer lists end to end: a real `kilat serve` on
the default configuration, the SDK as a PM and the `kilat` CLI as a compliance officer; then a
SIGKILL and a restart that must bring back the same alerts and holds."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec

from engine.constants import RejectCode, Side
from engine.journal import JournalWriter
from engine.messages import (
    AcknowledgeAlert,
    ApproveOrder,
    CancelOrder,
    DismissAlert,
    OrderAccepted,
    OrderDenied,
    OrderHeld,
    PriceTick,
    RejectHeldOrder,
    SubmitOrder,
    UpdateIssuerList,
)
from engine.recovery import recover
from engine.refbook import ReferenceBook
from kilat.config import check_config, load_config
from kilat.service import build_pipeline
from tests.conftest import ROOT, ServeProcess, free_port


def kilat(*args: str, user: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kilat", *args, "--user", user], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_soft_breach_held_then_officer_approves_and_alert_workflow_survives_a_crash(tmp_path):
    data = tmp_path / "data"
    server = ServeProcess(data, free_port(), config=None)  # the default configuration
    ep = tuple(server.cli_args())
    try:
        with server.client("admin") as admin, \
                server.client("alice") as pm:
            admin.price("AAPL", 18_990, 19_010, 19_000)
            # GEF's NAV is about 53.3 M USD; its SOFT rule caps an issuer at 5% (2.67 M)
            first = pm.submit("FUND1", "AAPL", Side.BUY, 10_000, 19_000, cl_ord_id="big-1")
            assert type(first[0]) is OrderAccepted, first  # 1.9 M: 3.6% of NAV
            second = pm.submit("FUND1", "AAPL", Side.BUY, 10_000, 19_000, cl_ord_id="big-2")
            assert type(second[0]) is OrderHeld and second[0].code == RejectCode.COMPLIANCE_HELD
            held_id = second[0].order_id
            assert "gef-issuer-5pct" in second[0].reason
            # a PM cannot approve (no compliance role): refused, nothing changes
            refused = pm.approve(held_id, "looks fine to me")
            assert refused[0].code == RejectCode.NOT_ENTITLED

        alerts = json.loads(kilat("alerts", "--state", "OPEN", "--json", *ep, user="carol").stdout)
        soft = [a for a in alerts if a["rule_id"] == "gef-issuer-5pct"]
        assert len(soft) == 1 and soft[0]["order_ids"] == [held_id] and soft[0]["severity"] == "SOFT"
        alert_id = soft[0]["alert_id"]
        ack = kilat("alert", "ack", str(alert_id), "--comment", "looking", "--assignee", "carol", *ep,
                    user="carol")
        assert ack.returncode == 0 and "ACKNOWLEDGED" in ack.stdout, ack.stdout + ack.stderr
        not_officer = kilat("alert", "resolve", str(alert_id), *ep, user="alice")
        assert not_officer.returncode == 1 and "compliance role" in not_officer.stdout

        approve = kilat("approve", str(held_id), "--reason", "PM mandate allows 8%", *ep, user="carol")
        assert approve.returncode == 0, approve.stdout + approve.stderr
        assert "OrderReleased" in approve.stdout and "OrderAccepted" in approve.stdout
        shown = json.loads(kilat("alert", "show", str(alert_id), "--json", *ep, user="carol").stdout)
        assert shown["state"] == "RESOLVED"
        assert [h["action"] for h in shown["history"]] == ["raise", "acknowledge", "approved"]
        assert shown["history"][1]["user"] == "carol"

        # the restricted list propagates to the issuer's instruments at once
        assert kilat("restricted", "add", "MSFT", "--reason", "MNPI", *ep, user="carol").returncode == 0
        with server.client("admin") as admin, \
                server.client("alice") as pm:
            admin.price("MSFT", 41_990, 42_010, 42_000)
            denied = pm.submit("FUND1", "MSFT", Side.BUY, 10, 42_000, cl_ord_id="msft-1")
            assert type(denied[0]) is OrderDenied and denied[0].code == RejectCode.COMPLIANCE_RESTRICTED
            third = pm.submit("FUND1", "AAPL", Side.BUY, 5_000, 19_000, cl_ord_id="big-3")
            assert type(third[0]) is OrderHeld
            held_again = third[0].order_id
            admin.price("7203", 2_499, 2_501, 2_500)
            watched = pm.submit("FUND1", "7203", Side.BUY, 10, 2_500, cl_ord_id="toyota-1")
            assert type(watched[0]) is OrderAccepted  # WARN: it passes, and an alert is raised

        warn = json.loads(kilat("alerts", "--rule", "watch-list", "--json", *ep, user="carol").stdout)
        assert len(warn) == 1 and warn[0]["severity"] == "WARN" and warn[0]["symbol"] == "7203"
        warn_id = str(warn[0]["alert_id"])
        assert kilat("alert", "escalate", warn_id, "--comment", "to the CCO", "--assignee", "cco", *ep,
                     user="carol").returncode == 0
        assert kilat("alert", "comment", warn_id, "--comment", "client confirmed", *ep,
                     user="carol").returncode == 0
        no_reason = kilat("alert", "dismiss", warn_id, *ep, user="carol")
        assert no_reason.returncode == 1 and "needs a comment" in no_reason.stdout
        assert kilat("alert", "dismiss", warn_id, "--comment", "benign", *ep, user="carol").returncode == 0
        shown = json.loads(kilat("alert", "show", warn_id, "--json", *ep, user="carol").stdout)
        assert shown["state"] == "DISMISSED" and shown["assignee"] == "cco"
        assert [(h["action"], h["state"]) for h in shown["history"]] == [
            ("raise", "OPEN"), ("escalate", "ESCALATED"), ("comment", "ESCALATED"), ("dismiss", "DISMISSED")]
        final = kilat("alert", "resolve", warn_id, "--comment", "again", *ep, user="carol")
        assert final.returncode == 1 and "final" in final.stdout

        before = json.loads(kilat("alerts", "--json", *ep, user="carol").stdout)
        orders_before = json.loads(kilat("orders", "--json", *ep, user="carol").stdout)
        server.kill()  # SIGKILL: recovery must rebuild alerts and holds from the journal
        server = ServeProcess(data, free_port(), config=None)
        ep = tuple(server.cli_args())
        after = json.loads(kilat("alerts", "--json", *ep, user="carol").stdout)
        assert after == before
        assert json.loads(kilat("orders", "--json", *ep, user="carol").stdout) == orders_before
        reject = kilat("reject", str(held_again), "--reason", "over the limit", *ep, user="carol")
        assert reject.returncode == 1 and "OrderDenied" in reject.stdout  # exit 1: a refusal shown
        held_status = [o for o in json.loads(kilat("orders", "--json", *ep, user="carol").stdout)
                       if o["order_id"] == held_again]
        assert held_status[0]["status"] == "Denied"
    finally:
        server.stop()
    # the audit trail, read from the journal file: refusals, holds and every officer action
    audit = json.loads(kilat("audit", "--data-dir", str(data), "--json", user="carol").stdout)
    kinds = [(e["kind"], e.get("cl_ord_id") or e.get("issuer") or e.get("order_id")) for e in audit]
    assert ("ScreenedOrder", "big-2") in kinds and ("ApproveOrder", held_id) in kinds
    assert ("UpdateIssuerList", "MSFT") in kinds and ("RejectHeldOrder", held_again) in kinds
    denied = [e for e in audit if e["kind"] == "DeniedOrder"]
    assert [(e["cl_ord_id"], e["code"]) for e in denied] == [("msft-1", RejectCode.COMPLIANCE_RESTRICTED)]
    assert "restricted-list v1" in denied[0]["reason"]
    approve_entry = next(e for e in audit if e["kind"] == "ApproveOrder")
    assert approve_entry["user"] == "carol" and approve_entry["reason"] == "PM mandate allows 8%"


def _scenario() -> list:
    ts = iter(range(1_000, 10**9, 1_000))
    return [
        PriceTick("AAPL", 18_990, 19_010, 19_000, next(ts), "admin"),
        SubmitOrder("FUND1", "a1", "AAPL", Side.BUY, 10_000, price=19_000, ts=next(ts), user="alice"),
        SubmitOrder("FUND1", "a2", "AAPL", Side.BUY, 10_000, price=19_000, ts=next(ts), user="alice"),
        SubmitOrder("FUND1", "a3", "AAPL", Side.BUY, 9_000, price=19_000, ts=next(ts), user="alice"),
        SubmitOrder("FUND1", "w1", "7203", Side.BUY, 10, price=2_500, ts=next(ts), user="alice"),
        PriceTick("7203", 2_499, 2_501, 2_500, next(ts), "admin"),
        SubmitOrder("FUND1", "w2", "7203", Side.BUY, 10, price=2_500, ts=next(ts), user="alice"),
        AcknowledgeAlert(1, "on it", "carol", next(ts), "carol"),
        ApproveOrder(2, "mandate allows it", next(ts), "carol"),
        RejectHeldOrder(3, "no", next(ts), "carol"),
        SubmitOrder("MM1", "m1", "AAPL", Side.SELL, 15_000, price=19_000, ts=next(ts), user="bob"),
        UpdateIssuerList("restricted", "MSFT", True, "MNPI", next(ts), "carol"),
        CancelOrder("FUND1", orig_cl_ord_id="w2", ts=next(ts), user="alice"),
        PriceTick("AAPL", 17_000, 17_010, 17_000, next(ts), "admin"),
        DismissAlert(2, "expected", "", next(ts), "carol"),
    ]


def test_recovery_replays_alerts_holds_risk_and_portfolio_to_the_same_state_hash(tmp_path):
    config = load_config()
    ref = check_config(config)
    live = build_pipeline(config, ref, ReferenceBook(len(ref.by_index), 1_000, 64, 100),
                          JournalWriter(tmp_path / "journal", fsync=False))
    for cmd in _scenario()[:9]:
        live.process(cmd)
    live.journal.commit()
    (tmp_path / "snapshots").mkdir()
    from engine.snapshot import write_snapshot

    write_snapshot(tmp_path / "snapshots", live.seq, live.snapshot())
    results = live.process_batch(_scenario()[9:])
    live.journal.commit()
    assert any(type(e).__name__ == "OrderDenied" for r in results for e in r)
    live.validate()
    assert live.stages[1].alerts.alerts, "the scenario raises alerts"

    for with_snapshot in (True, False):
        snapshots = tmp_path / ("snapshots" if with_snapshot else "none")
        fresh = build_pipeline(config, ref, ReferenceBook(len(ref.by_index), 1_000, 64, 100))
        recover(fresh, tmp_path / "journal", snapshots)
        fresh.validate()
        assert fresh.state_hash() == live.state_hash()
        assert msgspec.msgpack.encode(list(fresh.stages[1].alerts.alerts.values())) == \
            msgspec.msgpack.encode(list(live.stages[1].alerts.alerts.values()))
        assert fresh.held == live.held
