"""The block-order flow end to end through `kilat serve`: a PM submits a block, a trader's
orders fill it, the PM's session sees the allocations, positions show them, and `kilat report
allocations` reads them back from the journal."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.constants import Side
from engine.messages import AllocationMade, OrderAccepted
from tests.conftest import ROOT, ServeProcess, free_port


def test_block_submit_fills_allocations_pushed_to_the_pm_positions_and_report(tmp_path):
    server = ServeProcess(tmp_path / "data", free_port(), config=None)  # the default configuration
    try:
        with (server.client("admin") as admin, server.client("alice") as pm,
              server.client("bob") as trader):
            admin.price("AAPL", 18_990, 19_010, 19_000)
            ack = pm.submit_block("BLOCK", "AAPL", Side.BUY, 500, 19_000, "percent",
                                  [("FUND1", 0, 7_000), ("FUND2", 0, 3_000)], cl_ord_id="blk-e2e")
            assert type(ack[0]) is OrderAccepted
            trader.submit("MM1", "AAPL", Side.SELL, 200, 19_000, cl_ord_id="m1")
            trader.submit("MM1", "AAPL", Side.SELL, 300, 19_000, cl_ord_id="m2")
            pushed = []
            for _ in range(20):  # pushes arrive with each fill; gather until all four are in
                pushed += [e for e in pm.events(timeout=0.25) if type(e) is AllocationMade]
                if len(pushed) >= 4:
                    break
            assert sorted((e.account, e.qty) for e in pushed) == [("FUND1", 140), ("FUND1", 210),
                                                                  ("FUND2", 60), ("FUND2", 90)]
            rows = {(r[0], r[1], r[2]): r[4] for r in pm.positions().rows}
            assert rows[("FUND1", "AAPL", "CUSTODY")] == 350 and rows[("FUND2", "AAPL", "CUSTODY")] == 150
            assert ("BLOCK", "AAPL", "CUSTODY") not in rows  # everything was allocated
    finally:
        server.stop()
    report = subprocess.run([sys.executable, "-m", "kilat", "report", "allocations", "--data-dir",
                             str(tmp_path / "data"), "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)
    assert sum(r["qty"] for r in rows if r["account"] == "FUND1") == 350
    assert sum(r["qty"] for r in rows if r["account"] == "FUND2") == 150
