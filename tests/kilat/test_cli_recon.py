"""`kilat recon FILE` against a real `kilat serve`: breaks listed, a malformed file refused with
its line and field, nothing changed by a reconciliation."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.constants import Side
from gateways.client import KilatClient
from tests.conftest import ROOT, TRANSPORT_CONFIG, ServeProcess, free_port


def kilat(*args: str) -> subprocess.CompletedProcess:
    if "--config" not in args:  # the servers here run the transport config (no CURVE)
        args = (*args, "--config", str(TRANSPORT_CONFIG))
    return subprocess.run([sys.executable, "-m", "kilat", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_recon_lists_breaks_refuses_a_bad_file_and_changes_nothing(tmp_path):
    server = ServeProcess(tmp_path / "data", free_port())
    try:
        ep = ("--endpoint", server.endpoint)
        with KilatClient(server.endpoint) as kc:
            kc.submit("MM1", "AAPL", Side.SELL, 300, 19_000, cl_ord_id="s1")
            kc.submit("FUND1", "AAPL", Side.BUY, 300, 19_000, cl_ord_id="b1")
            seq = kc.ping()
        good = tmp_path / "custodian.csv"
        good.write_text("account,instrument,location,quantity\n"
                        "FUND1,AAPL,CUSTODY,300\n"    # matches
                        "MM1,AAPL,CUSTODY,-250\n"     # Kilat has -300
                        "FUND2,SAP,CUSTODY,40\n")     # Kilat has none
        result = kilat("recon", str(good), "--json", *ep)
        assert result.returncode == 1, result.stderr
        breaks = json.loads(result.stdout)["breaks"]
        assert [(b["kind"], b["account"], b["instrument"]) for b in breaks] == [
            ("missing_in_kilat", "FUND2", "SAP"), ("quantity_mismatch", "MM1", "AAPL")]
        clean = tmp_path / "clean.csv"
        clean.write_text("account,instrument,location,quantity\nFUND1,AAPL,CUSTODY,300\nMM1,AAPL,CUSTODY,-300\n")
        assert kilat("recon", str(clean), *ep).returncode == 0
        bad = tmp_path / "bad.csv"
        bad.write_text("account,instrument,location,quantity\nFUND1,AAPL,CUSTODY,1.5\n")
        refused = kilat("recon", str(bad), *ep)
        assert refused.returncode == 2 and "line 2" in refused.stderr and "quantity" in refused.stderr
        with KilatClient(server.endpoint) as kc:
            assert kc.ping() == seq  # a reconciliation journals nothing
    finally:
        server.stop()
