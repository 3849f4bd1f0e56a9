"""The Binance capture reader and ``kilat feed replay``, run as a real subprocess into a handler.

The expected figures are worked out here from the raw JSON with ``json`` and ``Decimal``, not
with the reader under test.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import zmq

from gateways.auth import ClientSecurity, ensure_dev_keys, list_keys, server_keys
from gateways.binance import BinanceCapture, CaptureError, CaptureQuote, CaptureTrade
from gateways.feed import FeedHandler
from kilat.config import check_config, load_config
from tests.conftest import ROOT, free_port

SAMPLE = ROOT / "tests" / "data" / "binance_btcusdt_spot_sample.jsonl.gz"
TICK, LOT = Decimal("0.01"), Decimal("0.00001")


def _sample_lines() -> list[tuple[int, dict]]:
    with gzip.open(SAMPLE, "rt") as f:
        return [(int(stamp), json.loads(body)) for stamp, body in (line.split(" ", 1) for line in f)]


@pytest.fixture(scope="module")
def expected():
    lines = _sample_lines()
    tickers = [d["data"] for _, d in lines if d.get("stream", "").endswith("@bookTicker")]
    trades = [d["data"] for _, d in lines if d.get("stream", "").endswith("@trade")]
    last = tickers[-1]
    return {
        "lines": len(lines),
        "quotes": len(tickers),
        "trades": len(trades),
        "depth": sum("@depth" in d.get("stream", "") for _, d in lines),
        "snapshot": sum("lastUpdateId" in d for _, d in lines),
        "mark": (int(Decimal(last["b"]) / TICK), int(Decimal(last["a"]) / TICK),
                 int(Decimal(trades[-1]["p"]) / TICK)),
        "recv_ns": [stamp for stamp, d in lines if d.get("stream", "").endswith(("@bookTicker", "@trade"))],
    }


@pytest.fixture(scope="module")
def ref():
    return check_config(load_config())


@pytest.fixture(scope="module")
def btc(ref):
    return ref.instruments["BTCUSDT"].spec


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """CurveZMQ keys for these runs (the default config has CURVE on): Kilat's pair and the
    external feeds' ``feed`` pair, as Kilat's first run writes them."""
    path = tmp_path_factory.mktemp("keys")
    ensure_dev_keys(path, ["feed"])
    return path


def kilat(keys, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kilat", *args, "--keys-dir", str(keys)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


# -- REPLAY ---------------------------------------------------------------------------------------


def test_kilat_feed_replay_of_the_sample_reaches_a_handler_with_every_message_and_the_last_mark(
        ref, expected, keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    # over CurveZMQ, as Kilat subscribes: its own key pair, the feed's public key as the server's
    curve = ClientSecurity(server_keys(keys), list_keys(keys)["feed"])
    handler = FeedHandler(ref, [endpoint], stale_after_ns=10**18, context=ctx, configure=curve)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilat", "feed", "replay", "tests/data/binance_btcusdt_spot_sample.jsonl.gz",
         "--endpoint", endpoint, "--speed", "0", "--wait", "2", "--keys-dir", str(keys)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    published = expected["quotes"] + expected["trades"]
    try:
        deadline = time.monotonic() + 60
        while not (proc.poll() is not None and handler.status() and handler.status()[0].last_seq == published):
            assert time.monotonic() < deadline, f"replay incomplete: {handler.stats()} {handler.status()}"
            if proc.poll() is not None and proc.returncode != 0:
                break
            if not handler.poll(10_000):
                time.sleep(0.005)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        handler.close()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert (summary["lines"], summary["quotes"], summary["trades"]) == (
        expected["lines"], expected["quotes"], expected["trades"])
    assert summary["skipped"] == {"depth": expected["depth"], "snapshot": expected["snapshot"], "dust": 0}
    assert summary["published"] == summary["last_seq"] == published and summary["dropped"] == 0
    assert summary["rate"] > 0 and summary["seconds"] >= 0

    stats = handler.stats()
    assert (stats.quotes, stats.trades) == (expected["quotes"], expected["trades"])
    assert stats.received == stats.quotes + stats.trades + stats.heartbeats
    [status] = handler.status()
    assert (status.source, status.gaps, status.resets) == ("BINANCE", 0, 0)
    [row] = handler.take_updates().tolist()
    assert row[0] == ref.instruments["BTCUSDT"].index
    assert tuple(row[1:4]) == expected["mark"]
    assert row[4] == expected["recv_ns"][-1]  # stamped with the recorded receive time


def test_replay_is_paced_by_the_recorded_receive_times(expected, keys):
    limit, speed = 400, 5.0
    span = (expected["recv_ns"][limit - 1] - expected["recv_ns"][0]) / 1e9
    result = kilat(keys, "feed", "replay", str(SAMPLE), "--endpoint", f"tcp://127.0.0.1:{free_port()}",
                   "--speed", str(speed), "--limit", str(limit), "--wait", "0")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["published"] == limit
    assert span / speed > 0.1, "the sample's first events should span a measurable time"
    assert span / speed * 0.95 <= summary["seconds"] <= span / speed + 5


def test_replay_refuses_a_bad_capture_naming_the_line(tmp_path, keys):
    bad = tmp_path / "bad.jsonl"
    with gzip.open(SAMPLE, "rt") as f:
        head = [next(f) for _ in range(3)]
    bad.write_text(head[0] + head[1] + "1723161254087891268 {not json\n")
    result = kilat(keys, "feed", "replay", str(bad), "--endpoint", f"tcp://127.0.0.1:{free_port()}",
                   "--speed", "0", "--wait", "0")
    assert result.returncode == 2
    assert "bad.jsonl:3:" in result.stderr


def test_replay_of_a_missing_file_says_so_before_waiting_for_subscribers(tmp_path, keys):
    result = kilat(keys, "feed", "replay", str(tmp_path / "none.jsonl.gz"), "--wait", "30", timeout=20)
    assert result.returncode == 2 and "none.jsonl.gz: no such capture file" in result.stderr


def test_replay_of_an_instrument_missing_from_the_config_says_which_exist(keys):
    result = kilat(keys, "feed", "replay", str(SAMPLE), "--symbol", "ETHUSDT", "--wait", "0")
    assert result.returncode == 2
    assert "unknown instrument 'ETHUSDT'" in result.stderr and "BTCUSDT" in result.stderr


# -- READER ---------------------------------------------------------------------------------------


def test_reader_converts_book_ticker_and_trade_exactly(btc, expected):
    events = list(BinanceCapture(SAMPLE, btc))
    quotes = [e for e in events if type(e) is CaptureQuote]
    trades = [e for e in events if type(e) is CaptureTrade]
    assert (len(quotes), len(trades)) == (expected["quotes"], expected["trades"])
    first_ticker = next(d["data"] for _, d in _sample_lines() if d.get("stream", "").endswith("@bookTicker"))
    q = quotes[0]
    assert (q.bid, q.bid_size, q.ask, q.ask_size) == (
        int(Decimal(first_ticker["b"]) / TICK), int(Decimal(first_ticker["B"]) / LOT),
        int(Decimal(first_ticker["a"]) / TICK), int(Decimal(first_ticker["A"]) / LOT))
    assert q.line == 3 and q.update_id == first_ticker["u"]
    raw_trades = [d["data"] for _, d in _sample_lines() if d.get("stream", "").endswith("@trade")]
    assert [t.aggressor for t in trades] == [2 if d["m"] else 1 for d in raw_trades]
    assert {t.aggressor for t in trades} == {1, 2}
    assert [t.qty for t in trades] == [int(Decimal(d["q"]) / LOT) for d in raw_trades]
    assert trades[0].trade_ns == raw_trades[0]["T"] * 1_000_000


def _capture(tmp_path, *bodies: str, name: str = "c.jsonl"):
    path = tmp_path / name
    path.write_text("".join(f"{1_723_161_254_000_000_000 + k} {b}\n" for k, b in enumerate(bodies)))
    return path


def _ticker(b="61837.63", bid_size="1.0", a="61837.64", ask_size="2.0", s="BTCUSDT") -> str:
    return json.dumps({"stream": "btcusdt@bookTicker",
                       "data": {"u": 1, "s": s, "b": b, "B": bid_size, "a": a, "A": ask_size}})


def _trade(p="61837.63", q="0.001", m=True) -> str:
    return json.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 9,
                                                          "p": p, "q": q, "T": 1, "m": m, "M": True}})


def test_sizes_round_down_to_whole_lots_and_trades_under_one_lot_are_skipped(tmp_path, btc):
    path = _capture(tmp_path, _ticker(bid_size="0.000019", ask_size="3"), _trade(q="0.000009"),
                    _trade(q="0.000021", m=False))
    capture = BinanceCapture(path, btc)
    events = list(capture)
    assert [(e.bid_size, e.ask_size) for e in events if type(e) is CaptureQuote] == [(1, 300_000)]
    assert [(e.qty, e.aggressor) for e in events if type(e) is CaptureTrade] == [(2, 1)]
    assert (capture.counts.rounded, capture.counts.dust, capture.counts.trades) == (3, 1, 1)


@pytest.mark.parametrize(("bodies", "line", "says"), [
    ((_ticker(), _ticker(b="61837.635")), 2, "not a multiple of tick size 0.01"),
    ((_ticker(), _trade(), "{not json"), 3, "not a Binance combined-stream message"),
    ((_ticker(bid_size="-1"),), 1, "expected a non-negative decimal size"),
    ((_ticker(), _ticker(s="ETHUSDT")), 2, "the capture's symbol is 'ETHUSDT'"),
    ((json.dumps({"stream": "btcusdt@kline_1m", "data": {}}),), 1, "unexpected stream"),
    ((json.dumps({"stream": "btcusdt@trade", "data": {"p": "1"}}),), 1, "bad btcusdt@trade message"),
    ((_ticker(b="abc"),), 1, "expected a finite decimal price"),
])
def test_a_bad_line_is_refused_with_its_number(tmp_path, btc, bodies, line, says):
    path = _capture(tmp_path, *bodies)
    with pytest.raises(CaptureError) as err:
        list(BinanceCapture(path, btc))
    assert f"c.jsonl:{line}:" in str(err.value) and says in str(err.value)


def test_a_line_without_its_receive_time_is_refused_with_its_number(tmp_path, btc):
    path = tmp_path / "c.jsonl"
    path.write_text(f"1723161254000000000 {_ticker()}\n{_ticker()}\n")
    with pytest.raises(CaptureError, match=r"c.jsonl:2: expected '<receive ns> <JSON>'"):
        list(BinanceCapture(path, btc))


def test_a_truncated_gzip_capture_is_refused_naming_where_it_stopped(tmp_path, btc):
    data = SAMPLE.read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    capture = BinanceCapture(path, btc)
    with pytest.raises(CaptureError, match=r"cut.jsonl.gz:\d+: cannot read the capture"):
        list(capture)
    assert 0 < capture.counts.lines < 3000
