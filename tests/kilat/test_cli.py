"""The `kilat` command line, run as real subprocesses against a real `kilat serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.refbook import ReferenceBook
from engine.workload import generate_workload, save_workload, to_arrays, to_commands
from tests.conftest import ROOT, TRANSPORT_CONFIG, ServeProcess, free_port


def kilat(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if "--config" not in args:  # the servers here run the transport config (no CURVE)
        args = (*args, "--config", str(TRANSPORT_CONFIG))
    return subprocess.run([sys.executable, "-m", "kilat", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = ServeProcess(tmp_path_factory.mktemp("cli") / "data", free_port())
    yield server
    server.stop()


def test_submit_orders_book_modify_cancel_from_the_command_line(served):
    ep = ("--endpoint", served.endpoint)
    sell = kilat("submit", "MM1", "AAPL", "sell", "40", "--price", "189.95", "--tif", "gtc",
                 "--cl-ord-id", "cli-s1", *ep)
    assert sell.returncode == 0, sell.stderr
    assert "OrderAccepted" in sell.stdout and "price=189.95" in sell.stdout
    buy = kilat("submit", "FUND1", "AAPL", "buy", "100", "--price", "189.95", "--cl-ord-id", "cli-b1",
                *ep, "--json")
    lines = [json.loads(line) for line in buy.stdout.splitlines()]
    assert [e["type"] for e in lines] == ["OrderAccepted", "OrderFilled"]
    assert lines[1]["last_qty"] == 40 and lines[1]["last_px"] == 18_995
    order_id = lines[0]["order_id"]
    book = kilat("book", "AAPL", *ep)
    assert "189.95" in book.stdout and "60" in book.stdout
    modify = kilat("modify", "FUND1", str(order_id), "--qty", "80", *ep)
    assert modify.returncode == 0 and "OrderReplaced" in modify.stdout and "leaves_qty=40" in modify.stdout
    orders = kilat("orders", "--account", "FUND1", "--open", *ep)
    assert "cli-b1" in orders.stdout and "PartiallyFilled" in orders.stdout
    as_json = json.loads(kilat("orders", "--account", "FUND1", "--open", "--json", *ep).stdout)
    assert [(o["order_id"], o["status"], o["cum_qty"]) for o in as_json] == [(order_id, "PartiallyFilled", 40)]
    book_json = json.loads(kilat("book", "AAPL", "--json", *ep).stdout)
    assert book_json["bids"] == [{"price": 18_995, "qty": 40, "orders": 1}]
    cancel = kilat("cancel", "FUND1", str(order_id), *ep)
    assert cancel.returncode == 0 and "OrderCanceled" in cancel.stdout
    again = kilat("cancel", "FUND1", str(order_id), *ep)
    assert again.returncode == 1 and "OrderCancelRejected" in again.stdout


def test_bad_input_on_the_command_line_says_what_was_expected(served):
    ep = ("--endpoint", served.endpoint)
    tick = kilat("submit", "FUND1", "AAPL", "buy", "1", "--price", "189.955", *ep)
    assert tick.returncode == 2 and "not a multiple of tick size 0.01" in tick.stderr
    unknown = kilat("submit", "FUND1", "NOPE", "buy", "1", "--price", "1", *ep)
    assert unknown.returncode == 2 and "unknown instrument 'NOPE'" in unknown.stderr
    band = kilat("submit", "FUND1", "AAPL", "buy", "1", "--price", "5000", *ep)
    assert band.returncode == 1 and "PRICE_OUTSIDE_BAND" not in band.stdout and "code=1005" in band.stdout


def test_journal_verify_reports_the_records_of_a_data_dir(served, tmp_path):
    ok = kilat("journal", "verify", "--data-dir", str(served.data_dir))
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["records"] >= 1 and info["torn_bytes"] == 0
    missing = kilat("journal", "verify", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "no journal at" in missing.stderr


def test_unreachable_server_is_a_clear_error():
    result = kilat("orders", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.returncode == 3 and "is `kilat serve` running?" in result.stderr


def test_bench_book_replays_a_recorded_stream_through_both_books(tmp_path):
    arrays = to_arrays(generate_workload(20_000, seed=5))
    path = tmp_path / "flow.npz"
    save_workload(path, arrays)
    result = kilat("bench", "book", "--workload", str(path), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    book = ReferenceBook(1, 100_000)
    book.process_batch(to_commands(arrays))
    assert out["trades"] == book.stats()["trades"] and out["traded_qty"] == book.stats()["traded_qty"]
    assert (out["best_bid"], out["best_ask"]) == (book.best_bid(0), book.best_ask(0))
    assert out["resting_orders"] == book.resting_orders()
    assert out["ops_per_s"] > 0 and out["reference_ops_per_s"] > 0


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda a: a.pop("qty"), "missing"),
        (lambda a: a.__setitem__("side", a["side"][:-1]), "length"),
        (lambda a: a.__setitem__("price", a["price"].astype(np.float64)), "integer"),
        (lambda a: a["op"].__setitem__(3, 9), "op"),
    ],
)
def test_bench_book_refuses_a_file_that_breaks_the_format(tmp_path, mutate, words):
    arrays = {k: v.copy() for k, v in to_arrays(generate_workload(100, seed=1)).items()}
    mutate(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = kilat("bench", "book", "--workload", str(path), "--json")
    assert result.returncode == 2 and words in result.stderr.lower()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_kilat_run_serves_shows_the_scripted_flow_and_stops_its_server(tmp_path, stop_signal):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilat", "run", "--endpoint", f"tcp://127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--keys-dir", str(tmp_path / "keys")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Kilat keeps serving" in line:
                break
        text = "".join(seen)
        assert "kilat: ready" in text
        assert "FUND1 buys 400 AAPL" in text and text.count("OrderFilled") >= 4
        assert "kilat venue: ready XSIM1" in text and "kilat venue: ready XSIM2" in text
        assert "ChildOrderRouted" in text and "venue=XSIM" in text  # routed to the simulated venues
        assert "maker=True" in text  # the maker's fills were pushed to its own session
        assert "DUPLICATE" in text.upper() or "code=1101" in text
        server_pid = int(text.split("(pid ")[1].split(";")[0])
        proc.send_signal(stop_signal)
        assert proc.wait(20) == 0
        with pytest.raises(ProcessLookupError):  # the server went with it
            for _ in range(50):
                os.kill(server_pid, 0)
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_convert_mbo_then_bench_book_on_real_cme_flow(tmp_path):
    sample = ROOT / "tests" / "data" / "esh4_mbo_20231225_first14000.csv.gz"
    out = tmp_path / "esh4.npz"
    converted = kilat("bench", "convert-mbo", str(sample), str(out))
    assert converted.returncode == 0, converted.stderr
    assert json.loads(converted.stdout)["commands"] > 12_000
    result = kilat("bench", "book", "--workload", str(out), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["trades"] > 0


def test_serve_with_a_bad_config_stops_naming_the_file_and_field(tmp_path):
    from kilat.config import DEFAULT_CONFIG

    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_CONFIG.read_text().replace("lot_size = 100", "lot_size = 0", 1))
    result = kilat("serve", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "instruments[4].lot_size: expected a positive integer, got 0" in result.stderr
