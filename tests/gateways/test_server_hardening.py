"""Bad input and overload on a live order-entry socket: floods are throttled per connection,
a peer that never reads loses replies (counted) instead of growing memory, and no frame of any
shape stops the server or escapes its counters. Real sockets over tcp loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest
import uvloop
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.constants import RejectCode
from engine.messages import COMMAND_DECODER, CommandError, Ping, Pong, Reply
from gateways.client import KilatClient
from gateways.server import CLIENT_TAGS, MAX_REQUEST_ID, OrderEntryServer, Outgoing, Request

REPLIES = msgspec.msgpack.Decoder(list[Reply])
PING = msgspec.msgpack.encode(Ping(7))


class ServerThread:
    """An OrderEntryServer on its own uvloop thread, with a handler that records each request
    and answers it with a Pong (or a ``reply_bytes``-long CommandError, to fill buffers)."""

    def __init__(self, reply_bytes: int = 0, **kwargs):
        self.seen: list[Request] = []
        self.reply_bytes = reply_bytes
        self.server = OrderEntryServer("tcp://127.0.0.1:*", self.handle, **kwargs)
        self.endpoint = self.server.bound_endpoint
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        try:
            await self.server.serve()
        finally:
            self.server.close()

    def handle(self, requests: list[Request]) -> list[Outgoing]:
        self.seen.extend(requests)
        if self.reply_bytes:
            big = [CommandError(0, "x" * self.reply_bytes)]
            return [Outgoing(r.identity, r.request_id, big) for r in requests]
        return [Outgoing(r.identity, r.request_id, [Pong(getattr(r.message, "token", 0), len(self.seen))])
                for r in requests]

    def in_loop(self, fn):
        """Run ``fn()`` on the server's loop thread and return its result."""
        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def stats(self):
        return self.in_loop(lambda: msgspec.structs.replace(self.server.stats))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the server did not stop"


def dealer(endpoint: str, **options) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return sock


def read_replies(sock: zmq.Socket, n: int, timeout: float = 10.0) -> list[tuple[bytes, list]]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000)), f"{len(out)} of {n} replies arrived"
        rid, payload = sock.recv_multipart()
        out.append((rid, REPLIES.decode(payload)))
    return out


@pytest.fixture
def plain_server():
    servers = []

    def start(**kwargs) -> ServerThread:
        servers.append(ServerThread(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# -- FLOODS ---------------------------------------------------------------------------------------


def test_flood_from_one_connection_is_throttled_while_a_second_connection_is_served_promptly(plain_server):
    srv = plain_server(rate_limit=500, rate_burst=200)
    flood = dealer(srv.endpoint, SNDHWM=0)
    n = 5_000
    try:
        started = time.monotonic()
        for i in range(n):
            flood.send_multipart([i.to_bytes(4, "little"), PING])
        with KilatClient(srv.endpoint, timeout=2) as calm:
            round_trips = []
            for _ in range(20):
                t0 = time.monotonic()
                assert calm.ping() >= 1  # a Pong, never THROTTLED
                round_trips.append(time.monotonic() - t0)
        replies = read_replies(flood, n)
        elapsed = time.monotonic() - started
    finally:
        flood.close(0)
    codes = [r[0].code if isinstance(r[0], CommandError) else 0 for _, r in replies]
    throttled = codes.count(RejectCode.THROTTLED)
    served = codes.count(0)
    assert served + throttled == n  # every frame answered, one way or the other
    assert 200 <= served <= 200 + 500 * elapsed + 1  # the burst, then the rate
    assert throttled >= n - 200 - 500 * elapsed - 1 > 0
    assert max(round_trips) < 0.5, round_trips
    stats = srv.stats()
    assert stats.throttled == throttled
    assert len(srv.seen) == served + 20  # throttled frames never reach the handler
    assert "over this connection's limit of 500 messages/s" in next(
        r[0].reason for _, r in replies if isinstance(r[0], CommandError))


def test_throttled_connection_is_served_again_once_its_bucket_refills(plain_server):
    srv = plain_server(rate_limit=100, rate_burst=10)
    sock = dealer(srv.endpoint)
    try:
        for i in range(30):
            sock.send_multipart([bytes([i]), PING])
        codes = [type(r[0]).__name__ for _, r in read_replies(sock, 30)]
        assert codes.count("Pong") < 30 and "CommandError" in codes
        time.sleep(0.2)  # 100/s refills the 10-deep bucket in 0.1 s
        for i in range(10):
            sock.send_multipart([bytes([i]), PING])
        assert [type(r[0]).__name__ for _, r in read_replies(sock, 10)] == ["Pong"] * 10
    finally:
        sock.close(0)


def test_buckets_of_idle_connections_are_forgotten(plain_server):
    srv = plain_server(rate_limit=1_000, rate_burst=10)
    for _ in range(40):
        with KilatClient(srv.endpoint, timeout=2) as kc:
            kc.ping()
    assert srv.in_loop(lambda: srv.server.rate_buckets) == 40
    time.sleep(1.1)  # every bucket is full again: nothing to remember
    with KilatClient(srv.endpoint, timeout=2) as kc:
        kc.ping()
    assert srv.in_loop(lambda: srv.server.rate_buckets) <= 1


# -- PEERS THAT DO NOT READ -----------------------------------------------------------------------


def test_peer_that_never_reads_loses_replies_counted_and_others_are_still_served(plain_server):
    srv = plain_server(reply_bytes=20_000, hwm=20, rate_limit=0)
    deaf = dealer(srv.endpoint, RCVHWM=5, RCVBUF=16_384)
    n = 2_000  # 40 MB of replies: far beyond the queues and socket buffers
    try:
        for i in range(n):
            deaf.send_multipart([i.to_bytes(4, "little"), PING])
        deadline = time.monotonic() + 20
        while len(srv.seen) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(srv.seen) == n
        with KilatClient(srv.endpoint, timeout=2) as other:
            (reply,) = other.request(Ping(1))  # the server still answers others promptly
            assert len(reply.reason) == 20_000
        stats = srv.stats()
        assert stats.dropped > 0
        assert stats.sent + stats.dropped == n + 1
        got = 0
        while deaf.poll(500):  # what was queued for the deaf peer, and nothing more
            deaf.recv_multipart()
            got += 1
        assert got == stats.sent - 1
        assert got < n // 2
    finally:
        deaf.close(0)


def test_reply_to_a_departed_connection_is_dropped_and_counted(plain_server):
    srv = plain_server()
    srv.in_loop(lambda: srv.server.send([Outgoing(b"\x00gone", b"", [Pong(1, 1)])]))
    assert srv.stats().dropped == 1 and srv.stats().sent == 0


# -- MALFORMED INPUT (property) -------------------------------------------------------------------

MAX_MESSAGE = 1_024


def expected_kind(frames: list[bytes]) -> str:
    """What the server must count for these frames (after ZeroMQ's identity frame)."""
    if len(frames) != 2:
        return "bad_frame_count"
    rid, payload = frames
    if len(rid) > MAX_REQUEST_ID:
        return "bad_request_id"
    if len(payload) > MAX_MESSAGE:
        return "too_large"
    try:
        COMMAND_DECODER.decode(payload)
        return "valid"
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "not_msgpack"
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "not_msgpack"
    tag = raw[0] if isinstance(raw, list) and raw else None
    return "invalid_message" if isinstance(tag, str) and tag in CLIENT_TAGS else "unknown_type"


KINDS = ("bad_frame_count", "bad_request_id", "too_large", "not_msgpack", "unknown_type",
         "invalid_message")
scalars = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8),
                    st.none(), st.booleans(), st.floats(allow_nan=False), st.binary(max_size=8))
fields = st.lists(st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=14)
payloads = st.one_of(
    st.binary(max_size=200),  # random bytes
    st.builds(lambda tag, xs: msgspec.msgpack.encode([tag, *xs]), st.sampled_from(CLIENT_TAGS), fields),
    st.builds(lambda tag, xs: msgspec.msgpack.encode([tag, *xs]), st.text(max_size=12), fields),
    st.builds(msgspec.msgpack.encode, scalars),  # not an array at all
    st.builds(lambda n: b"\x92\xa4Ping" + b"\xcf" + n.to_bytes(8, "big"), st.integers(0, 2**64 - 1)),
    st.binary(min_size=MAX_MESSAGE + 1, max_size=MAX_MESSAGE * 8),  # over-size
)
# One in four request ids and frame counts is wrong; the rest test the payload.
request_ids = st.integers(0, 3).flatmap(lambda i: st.binary(
    min_size=MAX_REQUEST_ID + 1, max_size=5_000) if i == 0 else st.binary(max_size=MAX_REQUEST_ID))
messages = st.integers(0, 3).flatmap(lambda i: st.lists(
    st.binary(max_size=100), min_size=1, max_size=7).filter(lambda f: len(f) != 2) if i == 0
    else st.tuples(request_ids, payloads).map(list))


@pytest.fixture(scope="module")
def fuzz_server():
    srv = ServerThread(max_message_bytes=MAX_MESSAGE, rate_limit=0)
    yield srv
    srv.stop()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages, min_size=1, max_size=8))
def test_any_frames_get_one_answer_each_are_counted_by_kind_and_never_stop_the_server(fuzz_server, batch):
    srv = fuzz_server
    before, seen_before = srv.stats(), len(srv.seen)
    sock = dealer(srv.endpoint)
    try:
        for frames in batch:
            sock.send_multipart(frames)
        replies = read_replies(sock, len(batch))
    finally:
        sock.close(0)
    with KilatClient(srv.endpoint, timeout=5) as kc:  # a well-formed client is still served
        assert kc.ping() > 0
    after = srv.stats()
    expected = [expected_kind(frames) for frames in batch]
    for kind in KINDS:
        assert getattr(after, kind) - getattr(before, kind) == expected.count(kind), kind
    assert after.malformed - before.malformed == len(batch) - expected.count("valid")
    assert after.received - before.received == len(batch) + 1
    assert after.undecodable == before.undecodable == 0
    assert len(srv.seen) - seen_before == expected.count("valid") + 1
    errors = [r for _, replies_ in replies for r in replies_ if isinstance(r, CommandError)]
    assert len(errors) == len(batch) - expected.count("valid")
    codes = {RejectCode.MALFORMED_MESSAGE, RejectCode.UNKNOWN_MESSAGE_TYPE, RejectCode.MESSAGE_TOO_LARGE}
    assert {e.code for e in errors} <= codes
