"""The drop copy of a real `kilat serve`: a late-joining client gets every event from the first
by sequence, then the live ones; a client restarted with its last sequence misses nothing and
sees nothing twice; a restarted server continues the numbering."""

from __future__ import annotations

from engine.constants import Side
from gateways.dropcopy import DropCopyClient
from tests.conftest import ServeProcess, free_port


def trade(client, n: int, tag: str) -> None:
    for k in range(n):
        client.submit("MM1", "AAPL", Side.SELL, 10, 19_000, cl_ord_id=f"{tag}-s{k}")
        client.submit("FUND1", "AAPL", Side.BUY, 10, 19_000, cl_ord_id=f"{tag}-b{k}")


def collect(dc, until_seq: int) -> list:
    got = []
    for _ in range(100):
        got += dc.events(timeout=0.1)
        if got and got[-1].seq >= until_seq:
            break
    return got


def test_a_late_client_recovers_by_sequence_and_a_restarted_one_resumes_exactly(tmp_path):
    server = ServeProcess(tmp_path / "data", free_port())
    try:
        with server.client("tester") as kc:
            trade(kc, 20, "a")  # before any drop-copy client exists
            with DropCopyClient(server.drop_copy_endpoint, server.endpoint, user="tester") as dc:
                first = dc.events(timeout=0.5)
                assert [e.seq for e in first] == list(range(1, len(first) + 1))  # from seq 1, no hole
                assert sum(type(e.event).__name__ == "OrderFilled" for e in first) == 40
                trade(kc, 5, "b")  # live
                more = collect(dc, first[-1].seq + 1)
                more += dc.events(timeout=0.5)
                assert [e.seq for e in more] == list(range(first[-1].seq + 1, more[-1].seq + 1))
                assert sum(type(e.event).__name__ == "OrderFilled" for e in more) == 10
                last = more[-1].seq
            trade(kc, 3, "c")  # while no client listens
        server.stop()
        server = ServeProcess(tmp_path / "data", free_port(), config=server.config_path)
        with server.client("tester") as kc:
            trade(kc, 2, "d")
            with DropCopyClient(server.drop_copy_endpoint, server.endpoint, user="tester", after_seq=last) as dc:
                resumed = dc.events(timeout=1.0)
        assert [e.seq for e in resumed] == list(range(last + 1, last + 1 + len(resumed)))
        fills = [e.event for e in resumed if type(e.event).__name__ == "OrderFilled"]
        assert sorted({f.cl_ord_id.split("-")[0] for f in fills}) == ["c", "d"] and len(fills) == 10
    finally:
        server.stop()
