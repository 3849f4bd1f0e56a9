"""Order entry over a real ZeroMQ socket: replies, pushed executions, queries, bad input."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.constants import RejectCode, Side, TimeInForce
from engine.messages import (
    CommandError,
    OrderAccepted,
    OrderFilled,
    OrderRejected,
    Ping,
    SubmitOrder,
)
from gateways.client import AsyncKilatClient, KilatClient


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_submit_then_accepted_with_engine_order_id_and_server_timestamp(live):
    with KilatClient(live.endpoint) as kc:
        replies = kc.submit("FUND1", "AAPL", Side.BUY, 100, 15_000, cl_ord_id="a1")
    assert kinds(replies) == ["OrderAccepted"]
    assert replies[0].order_id == 1 and replies[0].ts > 1_600_000_000 * 10**9


def test_maker_fill_is_pushed_to_the_makers_own_session(live):
    with KilatClient(live.endpoint) as maker, KilatClient(live.endpoint) as taker:
        maker.submit("MM1", "AAPL", Side.SELL, 50, 15_010, cl_ord_id="m1", tif=TimeInForce.GTC)
        replies = taker.submit("FUND1", "AAPL", Side.BUY, 20, 15_010, cl_ord_id="t1")
        assert kinds(replies) == ["OrderAccepted", "OrderFilled"]
        assert replies[1].maker is False and replies[1].last_qty == 20
        pushed = list(maker.events(timeout=2.0))
        assert kinds(pushed) == ["OrderFilled"]
        assert pushed[0].maker is True and pushed[0].leaves_qty == 30 and pushed[0].cl_ord_id == "m1"


def test_queries_return_orders_and_the_book(live):
    with KilatClient(live.endpoint) as kc:
        kc.submit("FUND1", "AAPL", Side.BUY, 10, 15_000, cl_ord_id="q1")
        kc.submit("FUND1", "AAPL", Side.BUY, 5, 15_000, cl_ord_id="q2")
        kc.submit("FUND2", "AAPL", Side.SELL, 7, 15_020, cl_ord_id="q3")
        book = kc.book("AAPL")
        assert [(lvl.price, lvl.qty, lvl.orders) for lvl in book.bids] == [(15_000, 15, 2)]
        assert [(lvl.price, lvl.qty) for lvl in book.asks] == [(15_020, 7)]
        mine = kc.orders(account="FUND1")
        assert [(o.cl_ord_id, o.status, o.leaves_qty) for o in mine] == [("q1", "New", 10), ("q2", "New", 5)]
        kc.cancel("FUND1", mine[0].order_id)
        assert [o.cl_ord_id for o in kc.orders(account="FUND1", open_only=True)] == ["q2"]
        assert kc.ping() == 8  # three submits and a cancel journaled, each with its batch-end mark


def test_validation_refusal_travels_back_with_its_code(live):
    with KilatClient(live.endpoint) as kc:
        replies = kc.submit("FUND1", "AAPL", Side.BUY, 10, 999_999, cl_ord_id="bad")
    assert isinstance(replies[0], OrderRejected)
    assert replies[0].code == RejectCode.PRICE_OUTSIDE_BAND and "band" in replies[0].reason


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        ([b"r1", b"\xc1"], RejectCode.MALFORMED_MESSAGE, "not valid msgpack"),
        ([b"r2", msgspec.msgpack.encode(["NoSuchMessage", 1])], RejectCode.UNKNOWN_MESSAGE_TYPE,
         "one of SubmitOrder, SubmitBlockOrder, AmendAllocation"),
        ([b"r3", msgspec.msgpack.encode(["SubmitOrder", "FUND1"])], RejectCode.MALFORMED_MESSAGE,
         "invalid SubmitOrder: Expected `array` of at least length 6"),
        ([b"r4", msgspec.msgpack.encode(["SubmitOrder", "FUND1", "c", "AAPL", 0, "many"])],
         RejectCode.MALFORMED_MESSAGE, "Expected `int`"),
        ([b"r5", b"x" * 70_000], RejectCode.MESSAGE_TOO_LARGE, "at most 65536 bytes"),
    ],
)
def test_malformed_frame_gets_an_error_reply_and_the_server_keeps_serving(live, frames, code, words):
    with KilatClient(live.endpoint) as kc:
        replies = kc.send_raw(frames)
        assert isinstance(replies[0], CommandError)
        assert replies[0].code == code and words in replies[0].reason
        assert kinds(kc.submit("FUND1", "AAPL", Side.BUY, 1, 15_000)) == ["OrderAccepted"]


def test_frame_beyond_the_hard_cap_drops_that_peer_only(live):
    hard_cap = live.service.server.hard_cap
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(live.endpoint)
    try:
        rogue.send_multipart([b"big", b"x" * (hard_cap + 1)])
        assert not rogue.poll(500)  # no answer: ZeroMQ cut the connection unread
    finally:
        rogue.close(0)
    with KilatClient(live.endpoint) as kc:
        assert kinds(kc.submit("FUND1", "AAPL", Side.BUY, 1, 15_000)) == ["OrderAccepted"]


def test_wrong_frame_count_gets_an_error_reply(live):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(live.endpoint)
    try:
        sock.send_multipart([b"a", b"b", b"c"])
        assert sock.poll(5000)
        rid, payload = sock.recv_multipart()
        (err,) = msgspec.msgpack.decode(payload, type=list[CommandError])
        assert err.code == RejectCode.MALFORMED_MESSAGE and "expected 2 frames" in err.reason
    finally:
        sock.close(0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda xs: msgspec.msgpack.encode(["SubmitOrder", *xs]),
              st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.none(),
                                st.booleans()), max_size=16)),
))
def test_random_frames_never_stop_the_server(live, payload):
    with KilatClient(live.endpoint, timeout=5) as kc:
        replies = kc.send_raw([b"fuzz", payload])
        assert replies  # every frame gets an answer
        for reply in replies:
            assert isinstance(reply, msgspec.Struct)
        assert kc.ping() >= 0


def test_async_client_submits_and_reads_pushes(live):
    async def flow():
        async with AsyncKilatClient(live.endpoint) as maker, AsyncKilatClient(live.endpoint) as taker:
            await maker.submit("MM1", "MSFT", Side.BUY, 10, 30_000, cl_ord_id="am1")
            replies = await taker.submit("FUND2", "MSFT", Side.SELL, 10, 30_000, cl_ord_id="at1")
            pushed = await maker.events(timeout=2.0)
            return replies, pushed

    replies, pushed = asyncio.run(flow())
    assert kinds(replies) == ["OrderAccepted", "OrderFilled"]
    assert kinds(pushed) == ["OrderFilled"] and pushed[0].maker


def test_replies_are_durable_before_they_leave(live):
    """Every acknowledged command is in the journal file when its reply arrives."""
    from engine.journal import scan_journal

    with KilatClient(live.endpoint) as kc:
        for i in range(20):
            replies = kc.submit("FUND1", "AAPL", Side.BUY, 1, 15_000 + i, cl_ord_id=f"d{i}")
            assert isinstance(replies[0], OrderAccepted)
            # the order is on disk: its record follows each earlier order and its batch's stage-8
            # mark (BatchEnd, journaled after the replies left and committed with the next batch)
            assert scan_journal(live.service.engine.journal_path).last_seq == 2 * i + 1


def test_filled_event_round_trips_through_the_wire_format():
    event = OrderFilled(1, "FUND1", "c", "AAPL", Side.BUY, 7, 10, 15_000, 10, 0, 15_000.0, True, 5)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(event), type=OrderFilled) == event
    cmd = SubmitOrder("FUND1", "c", "AAPL", Side.SELL, 3, price=15_000)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(cmd))[:4] == ["SubmitOrder", "FUND1", "c", "AAPL"]


def test_cancel_from_another_session_answers_it_and_pushes_to_the_entering_session(live):
    with KilatClient(live.endpoint) as entering, KilatClient(live.endpoint) as other:
        (accepted,) = entering.submit("FUND1", "AAPL", Side.BUY, 5, 15_000, cl_ord_id="x1")
        replies = other.cancel("FUND1", accepted.order_id)
        assert kinds(replies) == ["OrderCanceled"]
        assert kinds(list(entering.events(timeout=2.0))) == ["OrderCanceled"]


def test_counterparty_fills_never_reach_the_sender(live):
    with KilatClient(live.endpoint) as maker, KilatClient(live.endpoint) as taker:
        maker.submit("MM1", "AAPL", Side.SELL, 5, 15_000, cl_ord_id="cp1")
        replies = taker.submit("FUND2", "AAPL", Side.BUY, 5, 15_000, cl_ord_id="cp2")
        assert {e.account for e in replies} == {"FUND2"}


def test_gtd_order_expires_on_time_and_the_expiry_is_pushed(live):
    import time

    with KilatClient(live.endpoint) as kc:
        expire_at = time.time_ns() + 400_000_000  # 0.4 s from now
        (accepted,) = kc.submit("FUND1", "AAPL", Side.BUY, 5, 15_000, cl_ord_id="gtd1",
                                tif=TimeInForce.GTD, expire_ts=expire_at)
        pushed = list(kc.events(timeout=3.0))
        assert kinds(pushed) == ["OrderExpired"]
        assert pushed[0].order_id == accepted.order_id and pushed[0].code == RejectCode.GTD_EXPIRED
        assert pushed[0].ts >= expire_at
        assert kc.orders(account="FUND1")[0].status == "Expired"


def test_two_pipelining_sessions_crossing_in_shared_loop_batches_stay_consistent(live):
    """Many orders in flight from two sessions: loop batches mix both through the batch path."""
    n = 300
    with KilatClient(live.endpoint) as buyer, KilatClient(live.endpoint) as seller:
        sessions = {"FUND1": (buyer, Side.BUY), "MM1": (seller, Side.SELL)}
        sent: dict[str, set[bytes]] = {}
        for account, (kc, side) in sessions.items():
            sent[account] = {kc.send(SubmitOrder(
                account, f"{account}-{i}", "AAPL", side, 1 + i % 3,
                price=15_000 + (i % 5) * (1 if side == Side.SELL else -1))) for i in range(n)}
        seen: dict[str, list] = {account: [] for account in sessions}
        for account, (kc, _) in sessions.items():
            answered = 0
            while answered < n:
                rid, replies = kc.receive(timeout=5)
                if rid:
                    assert rid in sent[account]
                    answered += 1
                seen[account].extend(replies)
        for account, (kc, _) in sessions.items():
            # a ping is answered after every command sent before it, and frames to one session
            # arrive in order: once its pong is in, so are all pushes caused by those commands
            ping = kc.send(Ping(1))
            while True:
                rid, replies = kc.receive(timeout=5)
                if rid == ping:
                    break
                seen[account].extend(replies)
    for account, events in seen.items():
        assert {e.account for e in events} == {account}  # never another account's events
        assert sum(isinstance(e, OrderAccepted) for e in events) == n
    bought, sold = (sum(e.last_qty for e in seen[a] if isinstance(e, OrderFilled)) for a in ("FUND1", "MM1"))
    assert bought == sold > 0  # every lot bought was sold

    async def validate_inside_the_loop():
        async with live.service.server.lock:
            live.service.engine.pipeline.validate()

    asyncio.run_coroutine_threadsafe(validate_inside_the_loop(), live.loop).result(10)
    assert live.service.server.stats.batches < 2 * n  # commands really shared loop batches
