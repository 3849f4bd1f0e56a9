"""Alerts reach compliance officers' sessions as they are raised, and an officer's decision on a
held order reaches the PM session that entered it: a live service on the default config."""

from __future__ import annotations

import pytest

from engine.constants import RejectCode, Side
from engine.messages import AlertRaised, OrderAccepted, OrderDenied, OrderHeld, OrderReleased
from kilat.config import load_config
from tests.conftest import LiveService


@pytest.fixture
def live_default(tmp_path):
    svc = LiveService(tmp_path / "data", load_config())
    yield svc
    svc.stop()


def test_hold_alert_is_pushed_to_the_officer_and_the_decision_to_the_pm(live_default):
    with (live_default.client("admin") as admin, live_default.client("alice") as pm,
          live_default.client("carol") as officer):
        admin.price("AAPL", 18_990, 19_010, 19_000)
        officer.issuer_list("watch", "NOBODY", True, "registers this session as an officer's")
        assert type(pm.submit("FUND1", "AAPL", Side.BUY, 10_000, 18_900, cl_ord_id="h1")[0]) is OrderAccepted
        held = pm.submit("FUND1", "AAPL", Side.BUY, 10_000, 18_900, cl_ord_id="h2")[0]
        assert type(held) is OrderHeld

        pushed = list(officer.events(timeout=2.0))
        alerts = [e for e in pushed if type(e) is AlertRaised]
        assert [(a.rule_id, a.order_ids) for a in alerts] == [("gef-issuer-5pct", [held.order_id])]
        assert not [e for e in pm.events(timeout=0.2) if type(e) is AlertRaised]  # PMs get none

        officer.approve(held.order_id, "within mandate")
        got = list(pm.events(timeout=2.0))
        assert [type(e) for e in got][:2] == [OrderReleased, OrderAccepted]
        assert got[0].approver == "carol"

        again = pm.submit("FUND1", "AAPL", Side.BUY, 5_000, 18_900, cl_ord_id="h3")[0]
        assert type(again) is OrderHeld
        officer.reject(again.order_id, "no more AAPL today")
        denied = [e for e in pm.events(timeout=2.0) if type(e) is OrderDenied]
        assert [(d.cl_ord_id, d.code) for d in denied] == [("h3", RejectCode.COMPLIANCE_REJECTED_BY_OFFICER)]
