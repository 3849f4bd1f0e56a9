"""A real `kilat serve` killed with SIGKILL mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import threading
import time

import pytest

from engine.constants import Side, TimeInForce
from engine.messages import OrderAccepted, OrderFilled
from gateways.client import KilatClient, KilatTimeout
from tests.conftest import ServeProcess, free_port

pytestmark = pytest.mark.slow


def test_sigkill_mid_stream_then_restart_keeps_every_acknowledged_order_and_fill(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    server = ServeProcess(data, port)
    acked: dict[str, int] = {}  # cl_ord_id -> order id, for every OrderAccepted we saw
    seen_cum: dict[int, int] = {}  # order id -> highest cum_qty we saw reported
    sent: list[str] = []
    killer = threading.Timer(1.0, server.kill)
    try:
        with KilatClient(server.endpoint, timeout=1.0) as kc:
            killer.start()
            i = 0
            while True:
                cl = f"k{i}"
                side = Side.BUY if i % 2 else Side.SELL
                price = 15_000 + (i % 7) - 3
                sent.append(cl)
                try:
                    replies = kc.submit("FUND1" if i % 3 else "MM1", "AAPL", side, 1 + i % 9, price,
                                        cl_ord_id=cl, tif=TimeInForce.GTC)
                except KilatTimeout:
                    break
                for e in replies + list(kc.events()):
                    if isinstance(e, OrderAccepted):
                        acked[e.cl_ord_id] = e.order_id
                    elif isinstance(e, OrderFilled):
                        seen_cum[e.order_id] = max(seen_cum.get(e.order_id, 0), e.cum_qty)
                i += 1
    finally:
        killer.cancel()
        server.kill()
    assert len(acked) > 50, "the server was killed before the stream got going"

    restarted = ServeProcess(data, port)
    try:
        with KilatClient(restarted.endpoint, timeout=5.0) as kc:
            orders = {o.cl_ord_id: o for o in kc.orders(account="")}
            for cl, order_id in acked.items():
                assert cl in orders, f"acknowledged order {cl} lost"
                assert orders[cl].order_id == order_id
            for order_id, cum in seen_cum.items():
                recovered = next(o for o in orders.values() if o.order_id == order_id)
                assert recovered.cum_qty >= cum, f"order {order_id} lost fills"
            # resending every order: the durable ones are refused as duplicates, the rest are
            # accepted once; none appears twice
            for cl in sent:
                i = int(cl[1:])
                replies = kc.submit("FUND1" if i % 3 else "MM1", "AAPL", Side.BUY, 1, 14_000,
                                    cl_ord_id=cl)
                if cl in acked:
                    assert type(replies[0]).__name__ == "OrderRejected"
            after = kc.orders(account="")
            assert len({(o.account, o.cl_ord_id) for o in after}) == len(after)
    finally:
        restarted.stop()


def test_restart_replays_to_the_same_book(tmp_path):
    data, port = tmp_path / "data", free_port()
    server = ServeProcess(data, port)
    try:
        with KilatClient(server.endpoint) as kc:
            for i in range(30):
                kc.submit("FUND1", "MSFT", Side.BUY, 10 + i, 30_000 - i, cl_ord_id=f"b{i}",
                          tif=TimeInForce.GTC)
            kc.submit("FUND2", "MSFT", Side.SELL, 100, 29_990, cl_ord_id="s")
            before = kc.book("MSFT", depth=50)
    finally:
        server.kill()
    started = time.perf_counter()
    again = ServeProcess(data, port)
    ready_s = time.perf_counter() - started
    try:
        with KilatClient(again.endpoint) as kc:
            assert kc.book("MSFT", depth=50) == before
        assert "recovered 62 commands" in again.ready_line
        assert ready_s < 30  # generous: the cold-start figure is a benchmark, not a test
    finally:
        again.stop()


def _journal_with_orders(tmp_path, n: int):
    data, port = tmp_path / "data", free_port()
    server = ServeProcess(data, port)
    try:
        with KilatClient(server.endpoint) as kc:
            for i in range(n):
                kc.submit("FUND1", "AAPL", Side.BUY, 1, 15_000 - i, cl_ord_id=f"j{i}")
    finally:
        server.kill()
    return data, port


def test_corrupt_record_mid_journal_stops_start_up_naming_the_offset(tmp_path):
    import subprocess
    import sys

    from engine.journal import FILE_HEADER_SIZE
    from tests.conftest import ROOT

    data, port = _journal_with_orders(tmp_path, 10)
    path = data / "journal.kjl"
    raw = bytearray(path.read_bytes())
    offset = FILE_HEADER_SIZE + 16 + 5  # inside the first record's payload
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = subprocess.run(
        [sys.executable, "-m", "kilat", "serve", "--endpoint", f"tcp://127.0.0.1:{port}",
         "--data-dir", str(data)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert "cannot recover the engine state" in result.stderr
    assert f"offset {FILE_HEADER_SIZE}" in result.stderr
    assert path.read_bytes() == bytes(raw)  # nothing was cut or rewritten


def test_torn_journal_tail_is_cut_with_a_warning_and_the_rest_recovered(tmp_path):
    data, port = _journal_with_orders(tmp_path, 10)
    path = data / "journal.kjl"
    # the last record (j9's batch-end mark) and half of j9 itself never reached the disk
    path.write_bytes(path.read_bytes()[:-30])
    server = ServeProcess(data, port)
    try:
        assert "recovered 18 commands" in server.ready_line
        with KilatClient(server.endpoint) as kc:
            assert sorted(o.cl_ord_id for o in kc.orders()) == sorted(f"j{i}" for i in range(9))
    finally:
        server.stop()
    assert "torn" in server.proc.stderr.read().lower()


def test_snapshot_then_more_orders_then_sigkill_recovers_from_the_snapshot(tmp_path):
    data, port = tmp_path / "data", free_port()
    server = ServeProcess(data, port)
    try:
        with KilatClient(server.endpoint) as kc:
            for i in range(20):
                kc.submit("FUND1", "AAPL", Side.BUY, 5, 15_000 - i, cl_ord_id=f"pre{i}",
                          tif=TimeInForce.GTC)
            done = kc.snapshot()
            assert type(done[0]).__name__ == "CommandDone" and done[0].seq == 41
            for i in range(10):
                kc.submit("MM1", "AAPL", Side.SELL, 3, 15_000 - i, cl_ord_id=f"post{i}")
            before_orders = sorted((o.order_id, o.status, o.cum_qty) for o in kc.orders())
            before_book = kc.book("AAPL", depth=50)
    finally:
        server.kill()
    assert list((data / "snapshots").glob("snapshot-*.snap"))
    again = ServeProcess(data, port)
    try:
        assert "recovered 20 commands after snapshot 42" in again.ready_line
        with KilatClient(again.endpoint) as kc:
            assert sorted((o.order_id, o.status, o.cum_qty) for o in kc.orders()) == before_orders
            assert kc.book("AAPL", depth=50) == before_book
    finally:
        again.stop()
