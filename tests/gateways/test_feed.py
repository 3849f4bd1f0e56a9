"""The feed publisher and handler over real ZeroMQ sockets on tcp loopback.

Times given to the handler (``now_ns``) are explicit, so staleness is tested without sleeping;
the only waits are for messages to cross the loopback.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateways.feed import (
    U_ASK,
    U_BID,
    U_INSTRUMENT,
    U_LAST,
    U_TS,
    FeedHandler,
    FeedPublisher,
)
from gateways.feed_messages import FEED_DECODER, FeedHeartbeat, FeedMessage, Quote, Trade, topic
from kilat.config import check_config, load_config
from tests.conftest import ROOT, free_port

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
ENC = msgspec.msgpack.Encoder()


@pytest.fixture(scope="module")
def ref():
    return check_config(load_config())


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class RawPub:
    """A plain PUB socket sending whatever frames a test gives it (for gaps and bad input)."""

    def __init__(self, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def msg(self, message) -> None:
        tp = b"|" if type(message) is FeedHeartbeat else topic(message.symbol)
        self.send(tp, ENC.encode(message))


def wait_for(handler: FeedHandler, done, now_ns: int = T0, timeout: float = 10.0) -> None:
    """Poll until ``done()``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out; stats {handler.stats()}"
        if not handler.poll(10_000, now_ns):
            time.sleep(0.002)


def join(handler: FeedHandler, beat, now_ns: int = T0) -> None:
    """Send heartbeats until the handler hears one (a SUB misses what precedes its connection)."""
    before = handler.stats().heartbeats
    deadline = time.monotonic() + 10
    while handler.stats().heartbeats == before:
        assert time.monotonic() < deadline, "the subscriber never connected"
        beat()
        time.sleep(0.01)
        handler.poll(1000, now_ns)


def raw_join(handler: FeedHandler, pub: RawPub, source: str, seq: int = 0) -> None:
    join(handler, lambda: pub.msg(FeedHeartbeat(source, seq, T0)))


def _delta(after, before) -> dict[str, int]:
    return {k: v - getattr(before, k) for k, v in msgspec.structs.asdict(after).items()}


def make_handler(ref, ctx, endpoints, stale_after_ns=SECOND, **kw) -> FeedHandler:
    return FeedHandler(ref, endpoints, stale_after_ns=stale_after_ns, context=ctx, **kw)


# -- PUBLISHER ------------------------------------------------------------------------------------


def test_publisher_numbers_quotes_and_trades_and_heartbeat_repeats_the_last_seq(ctx):
    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.bound_endpoint)
    while not sub.poll(20):
        pub.heartbeat(T0)
    while sub.poll(50):
        sub.recv_multipart()
    assert pub.quote("AAPL", 19010, 5, 19012, 7, T0 + 1) == 1
    assert pub.trade("AAPL", 19011, 3, 2, T0 + 2) == 2
    pub.heartbeat(T0 + 3)
    got = [sub.recv_multipart() for _ in range(3)]
    assert [frames[0] for frames in got] == [b"AAPL|", b"AAPL|", b"|"]
    assert [FEED_DECODER.decode(frames[1]) for frames in got] == [
        Quote("XSIM1", 1, "AAPL", 19010, 5, 19012, 7, T0 + 1),
        Trade("XSIM1", 2, "AAPL", 19011, 3, 2, T0 + 2),
        FeedHeartbeat("XSIM1", 2, T0 + 3),
    ]
    assert pub.seq == 2 and pub.sent >= 3 and pub.dropped == 0
    pub.close()


def test_configure_hook_sees_the_socket_before_it_binds_or_connects(ref, ctx):
    seen = []

    def configure(sock: zmq.Socket) -> None:
        seen.append((sock.type, sock.getsockopt_string(zmq.LAST_ENDPOINT)))

    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx, configure=configure)
    handler = make_handler(ref, ctx, [pub.bound_endpoint], configure=configure)
    assert seen == [(zmq.PUB, ""), (zmq.SUB, "")]
    handler.close()
    pub.close()


# -- HANDLER: prices ------------------------------------------------------------------------------


def test_quote_and_trade_from_a_publisher_become_venue_quote_and_one_mark_update(ref, ctx):
    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx)
    handler = make_handler(ref, ctx, [pub.bound_endpoint])
    join(handler, lambda: pub.heartbeat(T0))
    pub.quote("AAPL", 19010, 5, 19012, 7, T0 + 1)
    pub.trade("AAPL", 19011, 3, 1, T0 + 2)
    wait_for(handler, lambda: handler.stats().trades == 1)

    [vq] = handler.venue_quotes("AAPL", T0)
    assert (vq.source, vq.bid, vq.bid_size, vq.ask, vq.ask_size, vq.ts) == ("XSIM1", 19010, 5, 19012, 7, T0 + 1)
    assert (vq.last, vq.last_qty, vq.last_ts, vq.stale, vq.gap) == (19011, 3, T0 + 2, False, False)
    [row] = handler.take_updates(T0)
    assert (row[U_INSTRUMENT], row[U_BID], row[U_ASK], row[U_LAST], row[U_TS]) == (
        ref.instruments["AAPL"].index, 19010, 19012, 19011, T0 + 2)
    assert handler.mark("AAPL") == (19010, 19012, 19011)
    assert len(handler.take_updates(T0)) == 0, "nothing changed since the last take"
    [status] = handler.status(T0)
    assert (status.source, status.last_seq, status.quotes, status.trades, status.gaps) == ("XSIM1", 2, 1, 1, 0)
    assert handler.venue_quotes("MSFT", T0) == []
    handler.close()
    pub.close()


def test_conflation_when_1000_quotes_arrive_between_takes_then_one_update_with_the_last(ref, ctx):
    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx)
    handler = make_handler(ref, ctx, [pub.bound_endpoint])
    join(handler, lambda: pub.heartbeat(T0))
    for k in range(1000):
        pub.quote("MSFT", 40_000 + k, 10, 40_002 + k, 10, T0 + k)
    pub.trade("MSFT", 40_500, 1, 1, T0 + 1000)
    pub.quote("AAPL", 19_000, 1, 19_001, 1, T0 + 1001)
    wait_for(handler, lambda: handler.stats().quotes == 1001)

    rows = handler.take_updates(T0).tolist()
    msft, aapl = ref.instruments["MSFT"].index, ref.instruments["AAPL"].index
    assert sorted(rows) == sorted([[msft, 40_999, 41_001, 40_500, T0 + 1000],
                                   [aapl, 19_000, 19_001, 0, T0 + 1001]])
    assert handler.take_updates(T0).size == 0
    pub.quote("MSFT", 40_999, 77, 41_001, 88, T0 + 2000)  # sizes only: the mark is unchanged
    wait_for(handler, lambda: handler.stats().quotes == 1002)
    assert handler.take_updates(T0).size == 0
    handler.close()
    pub.close()


def test_stale_after_the_configured_time_on_the_handler_clock(ref, ctx):
    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx)
    handler = make_handler(ref, ctx, [pub.bound_endpoint], stale_after_ns=5 * SECOND)
    join(handler, lambda: pub.heartbeat(1), now_ns=T0)
    pub.quote("AAPL", 19010, 5, 19012, 7, 1)  # the source's own clock does not matter
    wait_for(handler, lambda: handler.stats().quotes == 1, now_ns=T0)

    assert handler.stale(T0 + 5 * SECOND).sources == []
    assert handler.stale(T0 + 5 * SECOND).symbols == []
    late = handler.stale(T0 + 5 * SECOND + 1)
    assert (late.sources, late.symbols) == (["XSIM1"], ["AAPL"])
    assert handler.venue_quotes("AAPL", T0 + 5 * SECOND + 1)[0].stale
    assert handler.status(T0 + 5 * SECOND + 1)[0].stale
    assert handler.take_updates(T0).tolist()[0][1:3] == [19010, 19012]
    handler.take_updates(T0 + 6 * SECOND)  # the only quote expired: no live price left
    assert handler.mark("AAPL") == (0, 0, 0)
    handler.close()
    pub.close()


def test_consolidated_best_bid_and_ask_over_two_sources_and_a_stale_source_left_out(ref, ctx):
    a = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx)
    b = FeedPublisher("tcp://127.0.0.1:*", "XSIM2", context=ctx)
    handler = make_handler(ref, ctx, [a.bound_endpoint, b.bound_endpoint], stale_after_ns=SECOND)
    join(handler, lambda: a.heartbeat(1))
    join(handler, lambda: b.heartbeat(1))
    aapl = ref.instruments["AAPL"].index
    a.quote("AAPL", 100, 1, 105, 1, 1)
    wait_for(handler, lambda: handler.stats().quotes == 1, now_ns=T0)
    b.quote("AAPL", 101, 2, 106, 2, 2)
    wait_for(handler, lambda: handler.stats().quotes == 2, now_ns=T0 + SECOND // 2)

    assert handler.take_updates(T0 + SECOND // 2).tolist() == [[aapl, 101, 105, 0, 2]]
    # XSIM1's quote is now older than a second: its better ask leaves the mark.
    assert handler.take_updates(T0 + SECOND + 1).tolist() == [[aapl, 101, 106, 0, 2]]
    quotes = {q.source: q for q in handler.venue_quotes("AAPL", T0 + SECOND + 1)}
    assert (quotes["XSIM1"].stale, quotes["XSIM2"].stale) == (True, False)
    assert (quotes["XSIM2"].bid, quotes["XSIM2"].bid_size) == (101, 2)
    # Both stale: no live price; the engine keeps its last mark (a 0 is "unchanged").
    assert handler.take_updates(T0 + 2 * SECOND).size == 0
    assert handler.mark("AAPL") == (0, 0, 0)
    a.quote("AAPL", 99, 1, 104, 1, 3)
    wait_for(handler, lambda: handler.stats().quotes == 3, now_ns=T0 + 2 * SECOND)
    assert handler.take_updates(T0 + 2 * SECOND).tolist() == [[aapl, 99, 104, 0, 3]]
    handler.close()
    a.close()
    b.close()


# -- HANDLER: sequence ----------------------------------------------------------------------------


def test_gap_in_seq_is_detected_and_flagged_until_the_next_quote_of_each_symbol(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1")
    pub.msg(Quote("XSIM1", 1, "AAPL", 100, 1, 101, 1, 1))
    pub.msg(Quote("XSIM1", 2, "MSFT", 200, 1, 201, 1, 2))
    pub.msg(Trade("XSIM1", 5, "AAPL", 100, 1, 1, 5))  # 3 and 4 never sent
    wait_for(handler, lambda: handler.stats().trades == 1)

    [st1] = handler.status(T0)
    assert (st1.gaps, st1.missing, st1.missing_ranges, st1.last_seq) == (1, 2, [(3, 4)], 5)
    assert st1.gap_symbols == ["AAPL", "MSFT"]
    assert handler.venue_quotes("AAPL", T0)[0].gap
    pub.msg(Quote("XSIM1", 6, "AAPL", 102, 1, 103, 1, 6))
    wait_for(handler, lambda: handler.stats().quotes == 3)
    assert handler.status(T0)[0].gap_symbols == ["MSFT"]
    assert not handler.venue_quotes("AAPL", T0)[0].gap
    pub.msg(Quote("XSIM1", 7, "MSFT", 202, 1, 203, 1, 7))
    wait_for(handler, lambda: handler.stats().quotes == 4)
    st2 = handler.status(T0)[0]
    assert (st2.gap_symbols, st2.gaps, st2.heartbeat_gaps) == ([], 1, 0)
    handler.close()


def test_heartbeat_reveals_a_gap_when_the_source_goes_quiet_after_losing_messages(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1")
    pub.msg(Quote("XSIM1", 1, "AAPL", 100, 1, 101, 1, 1))
    pub.msg(FeedHeartbeat("XSIM1", 1, 2))  # in step: no gap
    pub.msg(FeedHeartbeat("XSIM1", 3, 3))  # 2 and 3 were sent and lost
    pub.msg(FeedHeartbeat("XSIM1", 3, 4))
    wait_for(handler, lambda: handler.stats().heartbeats == 4)

    [st1] = handler.status(T0)
    assert (st1.gaps, st1.heartbeat_gaps, st1.missing, st1.missing_ranges) == (1, 1, 2, [(2, 3)])
    assert st1.gap_symbols == ["AAPL"]
    pub.msg(Quote("XSIM1", 4, "AAPL", 100, 1, 101, 1, 5))
    wait_for(handler, lambda: handler.stats().quotes == 2)
    assert handler.status(T0)[0].gap_symbols == []
    assert handler.status(T0)[0].gaps == 1
    handler.close()


def test_source_restart_when_seq_goes_back_then_baseline_reset_and_quotes_flagged(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1")
    for seq in (1, 2, 3):
        pub.msg(Quote("XSIM1", seq, "AAPL", 100 + seq, 1, 110, 1, seq))
    pub.msg(Quote("XSIM1", 1, "MSFT", 200, 1, 201, 1, 9))  # restarted: counts from 1 again
    pub.msg(Quote("XSIM1", 2, "MSFT", 200, 1, 201, 1, 10))
    wait_for(handler, lambda: handler.stats().quotes == 5)

    [status] = handler.status(T0)
    assert (status.resets, status.gaps, status.last_seq) == (1, 0, 2)
    assert status.gap_symbols == ["AAPL"]  # quoted before the restart, not since
    handler.close()


def test_first_message_heard_sets_the_baseline_so_joining_late_is_not_a_gap(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1", seq=500)
    pub.msg(Quote("XSIM1", 501, "AAPL", 100, 1, 101, 1, 1))
    wait_for(handler, lambda: handler.stats().quotes == 1)
    [status] = handler.status(T0)
    assert (status.gaps, status.resets, status.last_seq) == (0, 0, 501)
    handler.close()


def test_slow_subscriber_overflowing_its_queue_sees_the_loss_as_gaps(ref, ctx):
    pub = FeedPublisher("tcp://127.0.0.1:*", "XSIM1", context=ctx, hwm=100)
    handler = make_handler(ref, ctx, [pub.bound_endpoint], hwm=100)
    join(handler, lambda: pub.heartbeat(T0))
    for k in range(20_000):  # nobody reads meanwhile: the queues overflow and PUB drops
        pub.quote("AAPL", 100 + k % 50, 1, 200, 1, k)
    time.sleep(0.3)
    pub.heartbeat(T0)
    wait_for(handler, lambda: handler.status(T0)[0].last_seq == 20_000)

    [status] = handler.status(T0)
    assert status.gaps >= 1
    assert status.missing == 20_000 - status.quotes
    assert handler.stats().quotes < 20_000
    handler.close()
    pub.close()


def test_sources_beyond_capacity_are_refused_and_counted(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint], max_sources=2)
    raw_join(handler, pub, "S1")
    pub.msg(FeedHeartbeat("S2", 0, 1))
    pub.msg(Quote("S3", 1, "AAPL", 100, 1, 101, 1, 1))
    pub.msg(FeedHeartbeat("S" * 65, 0, 1))
    pub.msg(Quote("S3", 2, "AAPL", 100, 1, 101, 1, 1))  # a refused name is remembered
    pub.msg(Quote("S2", 1, "AAPL", 100, 1, 101, 1, 1))
    wait_for(handler, lambda: handler.stats().quotes == 1)
    assert handler.stats().sources_refused == 3
    assert [s.source for s in handler.status(T0)] == ["S1", "S2"]
    handler.close()


class FeedModel:
    """A plain-Python model of the handler's rules (the oracle of the seeded stress test)."""

    def __init__(self, stale_after: int):
        self.stale_after = stale_after
        self.src: dict[str, dict] = {}
        self.quotes: dict[tuple[str, str], tuple] = {}  # -> (bid, bsz, ask, asz, ts, recv, no)
        self.trades: dict[tuple[str, str], tuple] = {}  # -> (price, qty, ts)
        self.last: dict[str, tuple[int, int]] = {}  # symbol -> (price, ts)
        self.ts: dict[str, int] = {}
        self.sent: dict[str, tuple[int, int, int]] = {}

    def apply(self, msg, now: int) -> None:
        st_ = self.src.setdefault(msg.source, {"last": 0, "no": 0, "mark": 0, "gaps": 0, "missing": 0,
                                               "hb_gaps": 0, "resets": 0, "ranges": []})
        heartbeat = type(msg) is FeedHeartbeat
        st_["no"] += 1
        last, st_["last"] = st_["last"], msg.seq
        if st_["no"] > 1:
            expected = last if heartbeat else last + 1
            if msg.seq > expected:
                st_["gaps"] += 1
                st_["missing"] += msg.seq - expected
                st_["hb_gaps"] += heartbeat
                st_["ranges"] = (st_["ranges"] + [(last + 1, msg.seq if heartbeat else msg.seq - 1)])[-16:]
                st_["mark"] = st_["no"]
            elif msg.seq < expected:
                st_["resets"] += 1
                st_["mark"] = st_["no"]
        if type(msg) is Quote:
            self.quotes[(msg.source, msg.symbol)] = (msg.bid, msg.bid_size, msg.ask, msg.ask_size, msg.ts,
                                                     now, st_["no"])
            self.ts[msg.symbol] = msg.ts
        elif type(msg) is Trade:
            self.trades[(msg.source, msg.symbol)] = (msg.price, msg.qty, msg.ts)
            self.last[msg.symbol] = msg.price
            self.ts[msg.symbol] = msg.ts

    def take(self, now: int, symbols: list[str]) -> dict[str, tuple]:
        rows = {}
        for symbol in symbols:
            live = [q for (_, sym), q in self.quotes.items() if sym == symbol and now - q[5] <= self.stale_after]
            bid = max([q[0] for q in live], default=0)
            ask = min([q[2] for q in live if q[2] > 0], default=0)
            mark = (bid, ask, self.last.get(symbol, 0))
            if mark != self.sent.get(symbol, (0, 0, 0)):
                self.sent[symbol] = mark
                if any(mark):
                    rows[symbol] = (*mark, self.ts[symbol])
        return rows


def test_seeded_random_feed_matches_a_plain_python_model(ref, ctx):
    rng = random.Random(20240808)
    sources, symbols = ["XSIM1", "XSIM2", "XSIM3"], ["AAPL", "MSFT", "ESH4"]
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint], stale_after_ns=SECOND)
    raw_join(handler, pub, "JOIN")
    model, seq, now, sent = FeedModel(SECOND), dict.fromkeys(sources, 0), T0, 0
    base = handler.stats().received
    for _step in range(150):
        now += rng.randrange(0, 600_000_000)
        batch = []
        for _ in range(rng.randrange(1, 20)):
            source, symbol, roll = rng.choice(sources), rng.choice(symbols), rng.random()
            if roll < 0.04:
                seq[source] += rng.randrange(1, 5)  # lost on the way: a gap
            elif roll < 0.06:
                seq[source] = 0  # the source restarts
            if rng.random() < 0.1:
                batch.append(FeedHeartbeat(source, seq[source] + (rng.random() < 0.2), now))
                continue
            seq[source] += 1
            price = rng.randrange(90, 110)
            if rng.random() < 0.75:
                batch.append(Quote(source, seq[source], symbol, price, rng.randrange(0, 9),
                                   price + rng.randrange(0, 3), rng.randrange(1, 9), now))
            else:
                batch.append(Trade(source, seq[source], symbol, price, rng.randrange(1, 9), rng.randrange(3), now))
        for msg in batch:
            pub.msg(msg)
            model.apply(msg, now)
        sent += len(batch)
        wait_for(handler, lambda n=sent: handler.stats().received - base == n, now_ns=now)

        taken_at = now = now + rng.choice([0, 0, SECOND // 2, SECOND + 1])  # the clock never goes back
        rows = {ref.by_index[i].symbol: (bid, ask, last, ts)
                for i, bid, ask, last, ts in handler.take_updates(taken_at).tolist()}
        assert rows == model.take(taken_at, symbols)
        for st_ in handler.status(now):
            if st_.source == "JOIN":
                continue
            m = model.src[st_.source]
            assert (st_.last_seq, st_.gaps, st_.missing, st_.heartbeat_gaps, st_.resets, st_.missing_ranges) == (
                m["last"], m["gaps"], m["missing"], m["hb_gaps"], m["resets"], m["ranges"]), st_.source
            assert st_.gap_symbols == [s for s in symbols if (st_.source, s) in model.quotes
                                       and model.quotes[(st_.source, s)][6] < m["mark"]]
        for symbol in symbols:
            got = {(v.source, v.bid, v.bid_size, v.ask, v.ask_size, v.ts, v.received_ns, v.stale)
                   for v in handler.venue_quotes(symbol, taken_at) if v.received_ns}
            want = {(src_, *q[:6], taken_at - q[5] > SECOND) for (src_, sym), q in model.quotes.items() if sym == symbol}
            assert got == want
    assert sum(m["gaps"] for m in model.src.values()) > 3 and sum(m["resets"] for m in model.src.values()) > 3


# -- HANDLER: bad input ---------------------------------------------------------------------------


def test_every_kind_of_bad_message_is_counted_and_the_handler_keeps_working(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1")
    before = handler.stats()
    good = ENC.encode(Quote("XSIM1", 1, "AAPL", 100, 1, 101, 1, 1))
    assert good[7:13] == b"\xa5XSIM1"  # array, "Quote", then the source
    enc = msgspec.msgpack.encode
    pub.send(b"AAPL|")  # one frame: a topic alone
    pub.send(b"AAPL|", b"\x93\xc1\xff")  # not msgpack
    pub.send(good)  # one frame: a payload alone
    pub.send(b"AAPL|", good + b"\x00")  # trailing byte
    pub.send(b"AAPL|", b"")  # empty payload: read as a second lone topic
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", 1, "AAPL", 100, 1, 101, 1]))  # a field short
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", 1, "AAPL", 100.5, 1, 101, 1, 1]))  # float price
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", True, "AAPL", 100, 1, 101, 1, 1]))  # bool seq
    pub.send(b"AAPL|", enc(["Order", "XSIM1", 1, "AAPL", 100, 1, 101, 1, 1]))  # unknown tag
    pub.send(b"NOPE|", enc(["Quote", "XSIM1", 1, "NOPE", 100, 1, 101, 1, 1]))  # unknown symbol
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", 1, "AAPL", 2**63, 1, 101, 1, 1]))  # beyond int64
    pub.send(b"MSFT|", good)  # topic of another symbol
    pub.send(b"AAPL|", enc(["FeedHeartbeat", "XSIM1", 0, 1]))  # heartbeat not on "|"
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", 1, "AAPL", -100, 1, 101, 1, 1]))  # negative price
    pub.send(b"AAPL|", enc(["Trade", "XSIM1", 1, "AAPL", 100, 1, 7, 1]))  # aggressor 7
    pub.send(b"AAPL|", enc(["Quote", "XSIM1", 0, "AAPL", 100, 1, 101, 1, 1]))  # seq 0
    pub.send(b"AAPL|", enc(["Quote", b"\xff\xfe", 1, "AAPL", 100, 1, 101, 1, 1]))  # source not str
    pub.send(b"AAPL|", b"\x99\xa5Quote\xa2\xff\xfe" + good[13:])  # source not UTF-8
    pub.send(b"AAPL|", good, b"AAPL|")  # three frames: the third is a stray
    pub.send(b"AAPL|", ENC.encode(Quote("XSIM1", 2, "AAPL", 102, 1, 103, 1, 2)))
    wait_for(handler, lambda: handler.stats().quotes == 2)

    assert _delta(handler.stats(), before) == {
        "received": 22, "quotes": 2, "trades": 0, "heartbeats": 0, "malformed": 7, "bad_frames": 5,
        "unknown_tag": 1, "unknown_symbol": 1, "out_of_range": 1, "topic_mismatch": 2, "invalid": 3,
        "sources_refused": 0,
    }
    assert handler.venue_quotes("AAPL", T0)[0].bid == 102
    handler.close()


def test_poll_reads_at_most_max_messages_and_keeps_the_rest_for_the_next_turn(ref, ctx):
    pub = RawPub(ctx)
    handler = make_handler(ref, ctx, [pub.endpoint])
    raw_join(handler, pub, "XSIM1")
    before = handler.stats()
    pub.send(b"AAPL|")  # a lone frame shifts the pairing by one: the split topic is carried over
    for seq in range(1, 11):
        pub.msg(Quote("XSIM1", seq, "AAPL", 100 + seq, 1, 200, 1, seq))
    time.sleep(0.2)
    assert handler.poll(3, T0) == 3
    wait_for(handler, lambda: handler.stats().quotes == 10)
    delta = _delta(handler.stats(), before)
    assert (delta["received"], delta["bad_frames"], delta["quotes"]) == (11, 1, 10)
    assert handler.venue_quotes("AAPL", T0)[0].bid == 110
    assert handler.status(T0)[0].gaps == 0
    handler.close()


_NAMES = st.sampled_from(["XSIM1", "XSIM2", "B"]) | st.text(max_size=70)
_SYMBOLS = st.sampled_from(["AAPL", "MSFT", "BTCUSDT", "ZZZ", ""])
_INTS = st.integers(-(2**63), 2**64 - 1) | st.integers(-3, 3)
_VALUES = _INTS | st.floats(allow_nan=False) | st.none() | st.booleans() | st.binary(max_size=3)


@st.composite
def _message(draw):
    """Two frames: a topic-like first frame and a payload that is often a valid feed message."""
    tag = draw(st.sampled_from(["Quote", "Trade", "FeedHeartbeat", "Order"]))
    symbol = draw(_SYMBOLS)
    if tag == "FeedHeartbeat":
        body = [tag, draw(_NAMES), draw(_INTS), draw(_INTS)]
    else:
        body = [tag, draw(_NAMES), draw(_INTS), symbol, *draw(st.lists(_INTS, min_size=4, max_size=5))]
    if draw(st.booleans()):
        body[draw(st.integers(0, len(body) - 1))] = draw(_VALUES)
    payload = msgspec.msgpack.encode(body)
    if draw(st.integers(0, 4)) == 0:  # corrupt a byte
        k = draw(st.integers(0, len(payload) - 1))
        payload = payload[:k] + bytes([draw(st.integers(0, 255))]) + payload[k + 1:]
    if draw(st.integers(0, 9)) == 0:
        payload = payload[: draw(st.integers(0, len(payload)))]
    tp = draw(st.sampled_from([symbol.encode() + b"|", b"|", b"AAPL|", b"x"]))
    return [tp, payload]


def _accepted_by_oracle(frames: list[bytes], ref) -> bool:
    """msgspec's decoder is the oracle of the wire format; then the topic and the symbol."""
    tp, payload = frames
    try:
        msg = FEED_DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return False
    if type(msg) is FeedHeartbeat:
        return tp == b"|"
    return tp == topic(msg.symbol) and msg.symbol in ref.instruments


def _accepted(stats) -> int:
    return stats.quotes + stats.trades + stats.heartbeats + stats.invalid + stats.sources_refused


@pytest.fixture(scope="module")
def fuzz_rig(ref):
    context = zmq.Context()
    pub = RawPub(context)
    handler = make_handler(ref, context, [pub.endpoint])
    raw_join(handler, pub, "SENTINEL")
    rig = {"pub": pub, "handler": handler, "seq": 0}
    yield rig
    handler.close()
    context.destroy(linger=0)


def _send_sentinel_and_drain(rig) -> None:
    pub, handler = rig["pub"], rig["handler"]
    rig["seq"] += 1
    pub.msg(Quote("SENTINEL", rig["seq"], "AAPL", rig["seq"], 1, rig["seq"] + 1, 1, 0))

    def arrived() -> bool:
        quotes = {q.source: q.bid for q in handler.venue_quotes("AAPL", T0)}
        return quotes.get("SENTINEL") == rig["seq"]

    wait_for(handler, arrived)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_message(), max_size=12))
def test_random_two_frame_messages_are_accepted_exactly_when_msgspec_decodes_them(fuzz_rig, ref, messages):
    handler = fuzz_rig["handler"]
    before = handler.stats()
    for frames in messages:
        fuzz_rig["pub"].send(*frames)
    _send_sentinel_and_drain(fuzz_rig)
    after = handler.stats()
    expected = sum(_accepted_by_oracle(frames, ref) for frames in messages)
    assert _accepted(after) - _accepted(before) == expected + 1  # + the sentinel
    assert after.received - before.received >= len(messages) + 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.lists(st.binary(max_size=40) | _message().map(lambda m: m[1]),
                                  min_size=1, max_size=4), max_size=12))
def test_random_frames_of_any_count_never_stop_the_handler(fuzz_rig, messages):
    handler = fuzz_rig["handler"]
    before = handler.stats().received
    for frames in messages:
        fuzz_rig["pub"].send(*frames)
    _send_sentinel_and_drain(fuzz_rig)  # fails unless the sentinel after the junk is applied
    assert handler.stats().received > before


# -- CLI ------------------------------------------------------------------------------------------


def test_kilat_feed_watch_prints_quotes_with_decimal_prices(ctx, tmp_path):
    from gateways.auth import (
        CurveAuth,
        ServerSecurity,
        client_keys,
        ensure_dev_keys,
        server_public_key,
    )

    ensure_dev_keys(tmp_path, ["XSIM1"])  # the default config has CurveZMQ on: a venue's feed
    security = ServerSecurity(client_keys(tmp_path, "XSIM1"), {server_public_key(tmp_path): "kilat"},
                              domain="feed")
    security.start_auth(ctx)
    pub = FeedPublisher(f"tcp://127.0.0.1:{free_port()}", "XSIM1", context=ctx, configure=security)
    proc = subprocess.Popen([sys.executable, "-m", "kilat", "feed", "watch", pub.bound_endpoint,
                             "--count", "3", "--publisher", "XSIM1", "--keys-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "kilat feed watch did not stop"
            pub.quote("AAPL", 19010, 5, 19012, 7, T0)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    CurveAuth.on(ctx).stop()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    assert rows[0]["type"] == "Quote" and rows[0]["bid"] == "190.10" and rows[0]["ask"] == "190.12"
    assert rows[0]["bid_size"] == 5 and rows[0]["source"] == "XSIM1"
    assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + 3))
    pub.close()



# -- DOCS -----------------------------------------------------------------------------------------

DOC = (ROOT / "docs" / "feeds.md").read_text()


def test_docs_list_every_feed_message_with_its_fields_in_wire_order():
    for cls in FeedMessage.__args__:
        [line] = re.findall(rf"^- \*\*{cls.__name__}\*\* `\[\"{cls.__name__}\", …\]`: (.*)$", DOC, re.M)
        documented = re.findall(r"`(\w+)`", line.split(" — ")[0])
        assert documented == [f.name for f in msgspec.inspect.type_info(cls).fields], cls.__name__


def test_docs_example_bytes_decode_to_the_quote_they_describe():
    block = DOC.split("frame 2:")[1].split("=")[0]
    payload = bytes.fromhex(" ".join(block.split()))
    assert FEED_DECODER.decode(payload) == Quote("XSIM1", 7, "AAPL", 19010, 5, 19012, 7, 1723161254087891268)
    assert bytes.fromhex("41 41 50 4c 7c") == topic("AAPL")
