"""The drop copy over real sockets and files: a log numbered without holes across restarts, topics
on an XPUB, clients that join late, die, lose messages, and still get every event once, in order;
a log that a crash left behind rebuilt from the journal."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from random import Random

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.constants import RejectCode, Side
from engine.journal import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    JournalCorruptError,
    JournalReader,
    JournalWriter,
)
from engine.messages import (
    COMMAND_DECODER,
    REPLY_DECODER,
    CancelOrder,
    CommandError,
    DropCopyEvent,
    DropCopyEvents,
    ModifyOrder,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderFilled,
    OrderHeld,
    PriceTick,
    QueryDropCopy,
    SetRiskLimit,
    SubmitOrder,
)
from engine.refbook import ReferenceBook
from engine.snapshot import write_snapshot
from gateways.client import KilatClient
from gateways.dropcopy import (
    ALL_TOPIC,
    EVENT_TYPES,
    HEARTBEAT_TOPIC,
    MAX_QUERY_LIMIT,
    DropCopy,
    DropCopyAheadError,
    DropCopyClient,
    DropCopyError,
    DropCopyLog,
    DropCopyPublisher,
    event_topics,
    topic_matches,
)
from gateways.server import OrderEntryServer, Outgoing
from kilat.config import check_config, load_config
from kilat.service import build_pipeline
from tests.conftest import ROOT, TRANSPORT_CONFIG

CONFIG = load_config(TRANSPORT_CONFIG)
REF = check_config(CONFIG)
ACCOUNTS = ("FUND1", "FUND2", "MM1")
PRICES = {"AAPL": 19_000, "MSFT": 40_000}
_PREFIX = struct.Struct("<QIQI")  # a drop copy record's prefix (docs/dropcopy.md)


# -- A REAL PIPELINE MAKES THE EVENTS --------------------------------------------------------------


def new_pipeline(journal=None):
    """Wired as the service wires it, over the reference book; stage 8 deferred as the service
    defers it."""
    p = build_pipeline(CONFIG, REF, ReferenceBook(len(REF.by_index), 10_000, 64, 100), journal)
    p.defer_observe = True
    return p


def workload(n: int, seed: int = 7) -> list:
    """Crossing orders on two instruments from three accounts, cancels and modifies (some of
    them late: rejected, not journaled) and, half-way, a lower size limit so that risk denies
    (journals a DeniedOrder for) larger submits and modifies."""
    rng = Random(seed)
    cmds: list = [PriceTick(s, px - 10, px + 10, px, 1, "tester") for s, px in PRICES.items()]
    sent: dict[str, list[str]] = {a: [] for a in ACCOUNTS}
    for i in range(n):
        ts, account, r = 1_000 + i, rng.choice(ACCOUNTS), rng.random()
        if i == n // 2:
            cmds.append(SetRiskLimit("*", "*", "max_order_qty", "300", ts=ts, user="tester"))
        elif r < 0.65 or not sent[account]:
            symbol = rng.choice(list(PRICES))
            sent[account].append(f"o{i}")
            cmds.append(SubmitOrder(account, f"o{i}", symbol, rng.choice([Side.BUY, Side.SELL]),
                                    rng.randint(1, 40) * 10, price=PRICES[symbol] + rng.randint(-3, 3),
                                    ts=ts, user="tester"))
        elif r < 0.85:
            cmds.append(CancelOrder(account, orig_cl_ord_id=rng.choice(sent[account]), ts=ts, user="tester"))
        else:
            cmds.append(ModifyOrder(account, orig_cl_ord_id=rng.choice(sent[account]), cl_ord_id=f"m{i}",
                                    qty=rng.randint(1, 50) * 10, ts=ts, user="tester"))
    return cmds


def run_live(cmds: list, journal=None, batch: int = 16, snapshots: Path | None = None,
             snapshot_every: int = 0):
    """Run ``cmds`` as the service does, batch by batch, and collect what the drop copy is given:
    ``(journal seq, events)`` per journaled record (a command journals at most one record; stage
    8's batch-end mark is a record whose events are the alerts it raised)."""
    p = new_pipeline(journal)
    records: list[tuple[int, list]] = []

    def end_batch(k: int) -> None:
        before = p.seq
        p.observe_pending()
        if p.seq > before:
            records.append((p.seq, list(p.notices)))
            p.notices.clear()
        if journal is not None:
            journal.commit()
        if snapshots is not None and snapshot_every and k % snapshot_every == 0:
            write_snapshot(snapshots, p.seq, p.snapshot())

    for i, cmd in enumerate(cmds):
        before = p.seq
        events = p.process(cmd)
        if p.seq > before:
            assert p.seq == before + 1
            records.append((p.seq, events))
        if i % batch == batch - 1:
            end_batch(i // batch + 1)
    end_batch(0)
    return p, records


def expected_stream(records) -> list[tuple[int, str, str, object]]:
    """The oracle: (record, account, symbol, event) of every event, the symbol of an event that
    names none taken from its order's acceptance."""
    symbols: dict[int, str] = {}
    out = []
    for seq, events in records:
        for e in events:
            if type(e) not in EVENT_TYPES:
                continue
            if type(e) in (OrderAccepted, OrderHeld):
                symbols[e.order_id] = e.symbol
            symbol = getattr(e, "symbol", None)
            if symbol is None:
                symbol = symbols.get(getattr(e, "order_id", 0), "")
            out.append((seq, e.account, symbol, e))
    return out


def envelope(e: DropCopyEvent) -> tuple:
    return (e.record, e.account, e.symbol, e.event)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A journal written by a real pipeline, the records the drop copy gets live, and the
    expected stream. About 4,000 events."""
    d = tmp_path_factory.mktemp("history")
    (d / "snapshots").mkdir()
    journal = JournalWriter(d / "journal.kjl", fsync=False)
    _, records = run_live(workload(2_500), journal, snapshots=d / "snapshots", snapshot_every=40)
    journal.close()
    return d, records, expected_stream(records)


def synthetic(n: int, account: str = "FUND1", start: int = 1) -> list:
    return [OrderCanceled(start + i, account, f"c{start + i}", 1, 4100, "test", i) for i in range(n)]


# -- A DROP COPY BEHIND A REAL ORDER-ENTRY SERVER -------------------------------------------------


class Rig:
    """The drop copy, an XPUB and an OrderEntryServer whose handler answers QueryDropCopy, all on
    one loop thread as in the service; ``feed`` appends and publishes on that thread, under the
    server's lock, and a timer sends heartbeats."""

    def __init__(self, directory: Path, *, hwm: int = 100_000, configure=None, heartbeat_s: float = 0.05,
                 **log_options):
        self.log = DropCopyLog(directory / "dropcopy.log", **log_options)
        self.publisher = DropCopyPublisher("tcp://127.0.0.1:*", hwm=hwm, configure=configure)
        self.dc = DropCopy(self.log, self.publisher)
        self.server = OrderEntryServer("tcp://127.0.0.1:*", self.handle)
        self.pub, self.router = self.publisher.bound_endpoint, self.server.bound_endpoint
        self.queries = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(heartbeat_s),),
                                       daemon=True)
        self.thread.start()

    def handle(self, requests):
        out = []
        for r in requests:
            if type(r.message) is QueryDropCopy:
                self.queries += 1
                out.append(Outgoing(r.identity, r.request_id, [self.dc.query(r.message)]))
            else:
                out.append(Outgoing(r.identity, r.request_id, [CommandError(9002, "drop copy only")]))
        return out

    async def _run(self, heartbeat_s: float) -> None:
        async def beat():
            while True:
                await asyncio.sleep(heartbeat_s)
                async with self.server.lock:
                    self.dc.heartbeat()

        timer = asyncio.ensure_future(beat())
        try:
            await self.server.serve()
        finally:
            timer.cancel()

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the loop thread, as the service's handler would."""
        async def run():
            async with self.server.lock:
                return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def feed(self, records, per_batch: int = 5, pause: float = 0.001):
        """Publish ``records`` in batches from the loop thread; returns a future."""
        async def produce():
            for i in range(0, len(records), per_batch):
                async with self.server.lock:
                    self.dc.on_batch(records[i:i + per_batch])
                await asyncio.sleep(pause)
        return asyncio.run_coroutine_threadsafe(produce(), self.loop)

    def wait_subscribed(self, topic: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while topic not in self.call(lambda: (self.dc.heartbeat(), set(self.publisher.subscriptions))[1]):
            assert time.monotonic() < deadline, f"nobody subscribed to {topic!r}"
            time.sleep(0.01)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.server.close()
        self.dc.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def collect(client: DropCopyClient, n: int, timeout: float = 20.0) -> list[DropCopyEvent]:
    got: list[DropCopyEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(client.events(timeout=0.1))
    got.extend(client.events(timeout=0.3))  # nothing more may come
    return got


# -- MESSAGES ---------------------------------------------------------------------------------------


def test_query_and_answer_decode_through_the_socket_decoders_with_the_event_inside():
    fill = OrderFilled(7, "FUND1", "o1", "AAPL", Side.BUY, 3, 10, 19_000, 10, 0, 190.0, False, 5)
    answer = DropCopyEvents([DropCopyEvent(1, 9, "FUND1", "AAPL", fill)], 1, False, 100)
    assert REPLY_DECODER.decode(msgspec.msgpack.encode(answer)) == answer
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(answer))
    assert wire[1][0][:5] == ["DropCopyEvent", 1, 9, "FUND1", "AAPL"] and wire[1][0][5][0] == "OrderFilled"
    assert COMMAND_DECODER.decode(msgspec.msgpack.encode(["QueryDropCopy", 42])) == QueryDropCopy(42, 10_000, "")
    with pytest.raises(msgspec.ValidationError):
        COMMAND_DECODER.decode(msgspec.msgpack.encode(["QueryDropCopy", 2**63]))


# -- THE LOG ----------------------------------------------------------------------------------------


def test_log_seqs_stay_consecutive_across_a_reopen_and_reads_cross_it(tmp_path):
    path = tmp_path / "dc.log"
    with DropCopyLog(path, index_every=8, chunk_events=5) as log:
        for record in range(1, 31):
            log.append(record, synthetic(record % 4, start=record * 10))
            log.commit()
        first_run, index = log.last_seq, log.index_size
        assert (log.last_record, log.resume) == (30, (31, 0))
    with DropCopyLog(path, index_every=8, chunk_events=5) as log:
        assert (log.last_seq, log.last_record, log.index_size) == (first_run, 30, index)
        added = log.append(31, synthetic(3, start=1_000))
        log.commit()
        assert [e.seq for e in added] == [first_run + 1, first_run + 2, first_run + 3]
        everything = log.read_after(0, 10_000)
        assert [e.seq for e in everything] == list(range(1, first_run + 4))
        for seq in range(log.last_seq + 1):  # every starting point, through the index
            assert [e.seq for e in log.read_after(seq, 7)] == list(range(seq + 1, min(seq + 7, log.last_seq) + 1))
        assert log.index_size <= log.last_seq // 8 + 1
        with pytest.raises(ValueError, match="already in the drop copy log"):
            log.append(31, synthetic(1))


def test_log_torn_tail_is_cut_on_open_and_numbering_continues_from_the_last_whole_record(tmp_path):
    path = tmp_path / "dc.log"
    with DropCopyLog(path) as log:
        log.append(1, synthetic(3))
        log.commit()
        log.append(2, synthetic(2, start=10))
        log.commit()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the last write got only part-way
        f.truncate(size - 7)
    with DropCopyLog(path) as log:
        assert (log.last_seq, log.last_record) == (3, 1)
        again = log.append(2, synthetic(2, start=10))
        log.commit()
        assert [e.seq for e in again] == [4, 5]
        assert [(e.seq, e.record) for e in log.read_after(0, 10)] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]


def test_records_without_events_move_the_position_only_every_watermark_or_at_close(tmp_path):
    path = tmp_path / "dc.log"
    log = DropCopyLog(path, watermark_every=100)
    log.append(1, synthetic(1))
    log.commit()
    size = path.stat().st_size
    log.commit(through_record=50)  # 49 quiet records (price ticks, say): nothing written
    assert path.stat().st_size == size and log.last_record == 1
    log.commit(through_record=150)
    assert log.last_record == 150
    log.commit(through_record=160)
    log.close()
    with DropCopyLog(path) as reopened:
        assert (reopened.last_seq, reopened.last_record) == (1, 160)


def test_a_corrupt_record_in_the_middle_stops_the_open_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "dc.log"
    with DropCopyLog(path) as log:
        for record in (1, 2, 3):
            log.append(record, synthetic(2, start=record * 10))
            log.commit()
    data = bytearray(path.read_bytes())
    data[FILE_HEADER_SIZE + RECORD_HEADER_SIZE + 30] ^= 0xFF  # inside the first record's events
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match="CRC mismatch"):
        DropCopyLog(path)
    assert path.read_bytes() == bytes(data)


batches = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 9)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, chunk=st.integers(1, 6), group=st.integers(1, 4), cut=st.floats(0, 1))
def test_a_log_cut_at_any_byte_reopens_to_a_prefix_and_knows_where_it_stands(tmp_path_factory, batches,
                                                                              chunk, group, cut):
    d = tmp_path_factory.mktemp("cut")
    full = d / "full.log"
    record, written = 0, []
    with DropCopyLog(full, chunk_events=chunk) as log:
        for k, (gap, count) in enumerate(batches):
            record += gap
            written += log.append(record, synthetic(count, start=record * 100))
            if k % group == group - 1:  # several journal records per commit, cut into chunks
                log.commit()
    data = full.read_bytes()
    at = FILE_HEADER_SIZE + int(cut * (len(data) - FILE_HEADER_SIZE))
    (d / "cut.log").write_bytes(data[:at])
    with DropCopyLog(d / "cut.log", chunk_events=chunk) as log:
        got = log.read_after(0, 100_000)
        resume_record, skip = log.resume
    assert got == written[:len(got)]
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    before = [e for e in written if e.record < resume_record]
    assert got == before + [e for e in written if e.record == resume_record][:skip]


# -- TOPICS -----------------------------------------------------------------------------------------


def test_each_event_goes_out_once_per_topic_family_and_each_filter_gets_exactly_its_events(rig, history):
    _, records, expected = history
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.RCVHWM, 0)
    raw.connect(rig.pub)
    raw.subscribe(b"")
    wanted = {
        "account": (b"A:FUND2|",),
        "instrument": (b"I:MSFT|",),
        "type": (b"T:OrderFilled|",),
        "two": (b"A:FUND1|", b"I:AAPL|"),  # an event on both arrives twice: deduped
    }
    clients = {name: DropCopyClient(rig.pub, rig.router, topics=topics) for name, topics in wanted.items()}
    try:
        rig.wait_subscribed(b"")
        for client in clients.values():
            assert client.events(timeout=0.5) == []  # joined: nothing yet, heartbeat confirmed
        rig.call(rig.dc.on_batch, records)
        stream = [DropCopyEvent(seq, *item) for seq, item in enumerate(expected, 1)]
        got = {}
        for name, client in clients.items():
            mine = [e for e in stream if topic_matches(event_topics(e), wanted[name])]
            got[name] = collect(client, len(mine))
            assert [(e.seq, envelope(e)) for e in got[name]] == [(e.seq, envelope(e)) for e in mine], name
        assert {e.account for e in got["account"]} == {"FUND2"}
        assert {type(e.event) for e in got["type"]} == {OrderFilled}
        assert {e.symbol for e in got["instrument"]} == {"MSFT"}
        # A cancel names no instrument: the drop copy fills it in from the order.
        assert any(type(e.event) is OrderCanceled for e in got["instrument"])
        assert clients["two"].stats.duplicates > 0
        topics_of = {e.seq: event_topics(e) for e in stream}
        frames, total = [], sum(map(len, topics_of.values()))
        until = time.monotonic() + 10
        while time.monotonic() < until:
            if not raw.poll(100):
                continue
            topic, payload = raw.recv_multipart()
            if topic != HEARTBEAT_TOPIC:
                frames.append((topic, payload))
                if len(frames) == total:
                    until = time.monotonic() + 0.3  # time for a copy too many to show up
        per_event = Counter(msgspec.msgpack.decode(payload)[1] for _, payload in frames)
        assert per_event == {seq: len(t) for seq, t in topics_of.items()}
        first = [t for t, p in frames if msgspec.msgpack.decode(p)[1] == 1]
        assert first == topics_of[1]
    finally:
        for client in clients.values():
            client.close()
        raw.close(0)


def test_only_families_someone_subscribed_to_are_sent(rig):
    with DropCopyClient(rig.pub, rig.router) as client:  # everything: "*|" only
        rig.wait_subscribed(ALL_TOPIC)
        rig.call(rig.dc.on_batch, [(1, synthetic(100))])
        assert [e.seq for e in collect(client, 100)] == list(range(1, 101))
        stats = rig.publisher.stats
        assert (stats.events, stats.messages) == (100, 100)
        assert stats.skipped == 200  # the account and type copies (no symbol: no instrument copy)
        raw = zmq.Context.instance().socket(zmq.SUB)
        raw.connect(rig.pub)
        raw.subscribe(b"A:FUND2|")  # someone wants one account: that family is sent too
        rig.wait_subscribed(b"A:FUND2|")
        rig.call(rig.dc.on_batch, [(2, synthetic(10, "FUND2", start=200))])
        assert stats.messages == 100 + 20 and len(collect(client, 10)) == 10
        assert [raw.recv_multipart()[0] for _ in range(10)] == [b"A:FUND2|"] * 10
        raw.close(0)
        deadline = time.monotonic() + 5
        while b"A:FUND2|" in rig.call(lambda: (rig.dc.heartbeat(), rig.publisher.subscriptions)[1]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rig.call(rig.dc.on_batch, [(3, synthetic(10, "FUND2", start=300))])
        assert stats.messages == 100 + 20 + 10  # it left: account copies stop


# -- CLIENTS ----------------------------------------------------------------------------------------


def test_late_joining_client_gets_everything_from_seq_1_then_live_none_twice_none_missing(rig, history):
    _, records, expected = history
    third = len(records) // 3
    rig.call(rig.dc.on_batch, records[:third])
    feeding = rig.feed(records[third:], pause=0.002)  # thousands more while the client joins
    with DropCopyClient(rig.pub, rig.router, page=500) as client:
        got = collect(client, len(expected))
        feeding.result(30)
        got += client.events(timeout=0.3)
    assert [e.seq for e in got] == list(range(1, len(expected) + 1))
    assert [envelope(e) for e in got] == expected
    assert 0 < client.stats.recovered < len(expected)  # some answered by queries, some live
    assert client.stats.queries >= 2


def test_client_killed_and_restarted_with_its_last_seq_resumes_exactly(rig, history):
    _, records, expected = history
    half = len(records) // 2
    rig.call(rig.dc.on_batch, records[:half])
    script = ("import sys\n"
              "from gateways.dropcopy import DropCopyClient\n"
              "with DropCopyClient(sys.argv[1], sys.argv[2], after_seq=int(sys.argv[3])) as dc:\n"
              "    while True:\n"
              "        for e in dc.events(timeout=0.2):\n"
              "            print(e.seq, e.record, flush=True)\n")

    def start(after: int):
        proc = subprocess.Popen([sys.executable, "-c", script, rig.pub, rig.router, str(after)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        lines: queue.Queue = queue.Queue()
        # A line cut by the kill (no newline) was not finished: the client never had that event.
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout if x.endswith("\n")],
                         daemon=True).start()
        return proc, lines

    def read(lines, until: int, timeout: float = 30.0) -> list[tuple[int, int]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < until and time.monotonic() < deadline:
            try:
                out.append(tuple(map(int, lines.get(timeout=0.2).split())))
            except queue.Empty:
                pass
        return out

    proc, lines = start(0)
    seen = read(lines, 500)
    feeding = rig.feed(records[half:], per_batch=3)
    seen += read(lines, 300)
    proc.send_signal(signal.SIGKILL)  # mid-stream, no goodbye
    proc.wait(10)
    time.sleep(0.2)
    while not lines.empty():  # what it printed before dying
        seen.append(tuple(map(int, lines.get().split())))
    assert 800 <= len(seen) < len(expected)
    proc, lines = start(seen[-1][0])
    try:
        feeding.result(60)
        seen += read(lines, len(expected) - len(seen))
    finally:
        proc.kill()
        proc.wait(10)
    assert [s for s, _ in seen] == list(range(1, len(expected) + 1))
    assert [r for _, r in seen] == [record for record, *_ in expected]


def test_messages_dropped_at_a_tiny_high_water_mark_are_recovered_by_query(tmp_path, history):
    _, records, expected = history
    small = lambda sock: sock.setsockopt(zmq.SNDBUF, 4_096)  # noqa: E731 - TCP buffers too
    rig = Rig(tmp_path, hwm=5, configure=small)
    try:
        tiny = lambda sock: sock.setsockopt(zmq.RCVBUF, 4_096)  # noqa: E731
        with DropCopyClient(rig.pub, rig.router, rcvhwm=5, configure=tiny) as client:
            rig.wait_subscribed(ALL_TOPIC)
            assert client.events(timeout=0.3) == []
            rig.call(rig.dc.on_batch, records)  # everything at once; the client is not reading
            got = collect(client, len(expected))
    finally:
        rig.close()
    assert [e.seq for e in got] == list(range(1, len(expected) + 1))
    assert [envelope(e) for e in got] == expected
    assert client.stats.received < len(expected)  # ZeroMQ dropped messages on the way ...
    assert client.stats.gaps >= 1 and client.stats.recovered > 0  # ... and queries filled the holes


def test_filtered_late_joiner_gets_its_topic_from_the_query_filtered_here_then_live(rig, history):
    _, records, expected = history
    half = len(records) // 2
    rig.call(rig.dc.on_batch, records[:half])
    topics = (b"A:MM1|",)
    stream = [DropCopyEvent(seq, *item) for seq, item in enumerate(expected, 1)]
    mine = [e for e in stream if e.account == "MM1"]
    with DropCopyClient(rig.pub, rig.router, topics=topics) as client:
        first = client.events(timeout=0.5)
        assert first and all(e.account == "MM1" for e in first)
        rig.feed(records[half:]).result(30)
        got = first + collect(client, len(mine) - len(first))
    assert [(e.seq, envelope(e)) for e in got] == [(e.seq, envelope(e)) for e in mine]


def test_a_client_ahead_of_the_server_is_told(rig):
    rig.call(rig.dc.on_batch, [(1, synthetic(3))])
    with pytest.raises(DropCopyError, match="ends at seq 3, before this client's seq 10"):
        DropCopyClient(rig.pub, rig.router, after_seq=10)


# -- QUERIES: bad input ------------------------------------------------------------------------------


def test_malformed_queries_are_refused_or_clamped_and_say_so(rig):
    rig.call(rig.dc.on_batch, [(1, synthetic(MAX_QUERY_LIMIT + 500))])
    with KilatClient(rig.router, timeout=10) as kc:
        (error,) = kc.request(QueryDropCopy(-1))
        assert type(error) is CommandError and error.code == RejectCode.MALFORMED_MESSAGE
        assert "after_seq must be >= 0" in error.reason and "got -1" in error.reason
        (error,) = kc.request(QueryDropCopy(0, 0))
        assert type(error) is CommandError and f"between 1 and {MAX_QUERY_LIMIT}, got 0" in error.reason
        (answer,) = kc.request(QueryDropCopy(0, 10**12))
        assert (answer.limit, len(answer.events), answer.more) == (MAX_QUERY_LIMIT, MAX_QUERY_LIMIT, True)
        (answer,) = kc.request(QueryDropCopy(MAX_QUERY_LIMIT, 10**12))
        assert (len(answer.events), answer.events[0].seq, answer.more) == (500, MAX_QUERY_LIMIT + 1, False)
        (answer,) = kc.request(QueryDropCopy(10**9))
        assert (answer.events, answer.last_seq, answer.more) == ([], MAX_QUERY_LIMIT + 500, False)
        (error,) = kc.send_raw([b"r1", msgspec.msgpack.encode(["QueryDropCopy", 2**63])])
        assert error.code == RejectCode.MALFORMED_MESSAGE and "QueryDropCopy" in error.reason
    assert rig.queries == 5  # the out-of-range one never reached the handler


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after=st.integers(-(2**63), 2**63 - 1), limit=st.integers(-(2**63), 2**63 - 1))
def test_any_query_is_answered_with_an_error_or_consecutive_events_within_the_cap(query_dc, after, limit):
    answer = query_dc.query(QueryDropCopy(after, limit))
    last = query_dc.log.last_seq
    if after < 0 or limit < 1:
        assert type(answer) is CommandError and answer.code == RejectCode.MALFORMED_MESSAGE
        return
    n = max(0, min(limit, MAX_QUERY_LIMIT, last - after))
    assert [e.seq for e in answer.events] == list(range(after + 1, after + 1 + n))
    assert answer.last_seq == last and answer.more == (after + n < last)
    assert answer.limit == min(limit, MAX_QUERY_LIMIT)


@pytest.fixture(scope="module")
def query_dc(tmp_path_factory):
    dc = DropCopy(DropCopyLog(tmp_path_factory.mktemp("q") / "dc.log", index_every=64, chunk_events=50))
    for record in range(1, 40):
        dc.on_batch([(record, synthetic(record * 3, start=record * 1000))])
    yield dc
    dc.close()


# -- START-UP: the journal is the truth -----------------------------------------------------------


def test_catch_up_regenerates_the_events_of_journal_records_the_log_missed(tmp_path, history):
    d, records, expected = history
    full = DropCopy(DropCopyLog(tmp_path / "full.log"))
    full.on_batch(records)
    want = full.log.read_after(0, 100_000)
    full.close()
    assert [envelope(e) for e in want] == expected
    assert {type(e.event) for e in want} >= {OrderDenied, OrderCancelRejected}  # DeniedOrder records
    # A crash after the journal's commit: the log got only part of it.
    part = DropCopy(DropCopyLog(tmp_path / "part.log"))
    part.on_batch(records[:len(records) // 3])
    part.close()
    rebuilt = DropCopy(DropCopyLog(tmp_path / "part.log"))
    report = rebuilt.catch_up(d / "journal.kjl", new_pipeline)
    assert report.regenerated == records[-1][0] - records[len(records) // 3 - 1][0]
    assert rebuilt.log.read_after(0, 100_000) == want
    assert report.journal_last_seq == records[-1][0] and rebuilt.log.last_record == records[-1][0]
    assert rebuilt.catch_up(d / "journal.kjl", new_pipeline).regenerated == 0  # idempotent
    quick = rebuilt.catch_up(d / "journal.kjl", _no_pipeline, journal_last_seq=records[-1][0])
    assert (quick.regenerated, quick.last_seq) == (0, len(want))  # complete: no replay at all
    rebuilt.close()
    scratch = DropCopy(DropCopyLog(tmp_path / "scratch.log"))  # no log at all: all of it
    scratch.catch_up(d / "journal.kjl", new_pipeline)
    assert scratch.log.read_after(0, 100_000) == want
    scratch.close()


def _no_pipeline():
    raise AssertionError("a complete log needs no replay")


def test_catch_up_starts_from_the_newest_snapshot_at_or_before_the_log(tmp_path, history):
    d, records, _ = history
    full = DropCopy(DropCopyLog(tmp_path / "full.log"))
    full.on_batch(records)
    want = full.log.read_after(0, 100_000)
    full.close()
    part = DropCopy(DropCopyLog(tmp_path / "part.log"))
    part.on_batch(records[:int(len(records) * 0.8)])
    stands_at = part.log.last_record
    part.close()
    rebuilt = DropCopy(DropCopyLog(tmp_path / "part.log"))
    report = rebuilt.catch_up(d / "journal.kjl", new_pipeline, d / "snapshots")
    snapshots = sorted(int(p.stem.split("-")[1]) for p in (d / "snapshots").glob("*.snap"))
    assert report.snapshot_seq == max(s for s in snapshots if s <= stands_at) > 0
    assert report.replayed == stands_at - report.snapshot_seq  # not the whole journal
    assert rebuilt.log.read_after(0, 100_000) == want
    rebuilt.close()


def test_catch_up_completes_a_record_the_crash_cut_in_the_middle(tmp_path, history):
    d, records, _ = history
    path = tmp_path / "dc.log"
    full = DropCopy(DropCopyLog(path, chunk_events=2))
    full.on_batch(records)
    want = full.log.read_after(0, 100_000)
    full.close()
    cuts = []  # end offsets of records written mid-way through a journal record
    reader = JournalReader(path)
    offset = FILE_HEADER_SIZE
    for _, payload in reader:
        offset += RECORD_HEADER_SIZE + len(payload)
        if _PREFIX.unpack_from(payload)[3]:
            cuts.append(offset)
    assert cuts, "a record with more than 2 events spans several log records"
    shutil.copy(path, tmp_path / "cut.log")
    os.truncate(tmp_path / "cut.log", cuts[len(cuts) // 2])
    rebuilt = DropCopy(DropCopyLog(tmp_path / "cut.log", chunk_events=2))
    assert rebuilt.log.resume[1] > 0
    rebuilt.catch_up(d / "journal.kjl", new_pipeline)
    assert rebuilt.log.read_after(0, 100_000) == want
    rebuilt.close()


def test_catch_up_refuses_a_log_ahead_of_its_journal(tmp_path, history):
    d, records, _ = history
    dc = DropCopy(DropCopyLog(tmp_path / "dc.log"))
    dc.on_batch([(records[-1][0] + 5, synthetic(1))])
    with pytest.raises(DropCopyAheadError, match="journal .* ends at record"):
        dc.catch_up(d / "journal.kjl", new_pipeline)
    with pytest.raises(DropCopyAheadError, match="no journal"):
        dc.catch_up(tmp_path / "missing.kjl", new_pipeline)
    with pytest.raises(DropCopyAheadError, match="ends at record"):
        dc.catch_up(d / "journal.kjl", _no_pipeline, journal_last_seq=records[-1][0])
    dc.close()


def test_stage_and_flush_publish_only_what_the_journal_made_durable(rig):
    rig.call(rig.dc.stage, 1, synthetic(2))
    rig.call(rig.dc.stage, 3, synthetic(1, start=5))
    assert [e.record for e in rig.call(rig.dc.flush, 2)] == [1, 1]
    assert rig.log.last_record == 2
    assert [e.seq for e in rig.call(rig.dc.flush, 3)] == [3]
    with pytest.raises(ValueError, match="records come once, in order"):
        rig.call(rig.dc.on_batch, [(3, synthetic(1))])
