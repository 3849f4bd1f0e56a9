"""Kilat's venue gateway and a venue adapter over real ZeroMQ sockets on tcp loopback.

Some venues here are ``VenueAdapter``s; others are ``RawVenue``s, which speak the wire protocol
frame by frame as an adapter written in another language would (and can misbehave on purpose).
"""

from __future__ import annotations

import re
import time
import typing
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateways.simulator as sim
import gateways.venue_messages as vm
from engine.constants import RejectCode, Side
from gateways.venue_adapter import VenueAdapter
from gateways.venue_messages import (
    KILAT_DECODER,
    VENUE_DECODER,
    ChildAccepted,
    ChildCanceled,
    ChildFilled,
    Heartbeat,
    LogonAccepted,
    LogonRejected,
    NewChildOrder,
    OpenChildOrder,
    ProtocolError,
    ResendRequest,
    SequenceReset,
    StatusRequest,
    TradeBust,
    TradeCorrection,
    VenueDown,
    VenueLogon,
    VenueReconciled,
    VenueUp,
)
from gateways.venues import VenueGateway

ENDPOINT = "tcp://127.0.0.1:*"
encode = msgspec.msgpack.encode


class Clock:
    """A clock the test moves by hand (the gateway and adapters read it for liveness)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms * 1_000_000
        return self.now


class RawVenue:
    """A venue that speaks the protocol frame by frame (a DEALER and msgpack arrays)."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.inbox: list = []

    def send(self, *messages) -> None:
        for m in messages:
            self.sock.send(m if isinstance(m, bytes) else encode(m))

    def logon(self, loop: Loop, mic: str = "XSIM1", last: int = 0, expected: int = 1) -> object:
        self.send(VenueLogon(last, mic, "S1", expected))
        loop.run(lambda: any(isinstance(m, LogonAccepted | LogonRejected) for m in self.inbox))
        return next(m for m in self.inbox if isinstance(m, LogonAccepted | LogonRejected))

    def drain(self) -> None:
        while self.sock.poll(0):
            self.inbox.append(KILAT_DECODER.decode(self.sock.recv()))

    def of(self, kind) -> list:
        return [m for m in self.inbox if isinstance(m, kind)]


class Loop:
    """Drives the gateway and its venues the way the engine's loop would, one turn at a time."""

    def __init__(self, gateway: VenueGateway, clock: Clock | None = None) -> None:
        self.gw = gateway
        self.clock = clock
        self.delivered: list[tuple[str, object]] = []
        self.events: list = []
        self.adapters: dict[VenueAdapter, list] = {}
        self.raws: list[RawVenue] = []
        self.paused: set[VenueAdapter] = set()

    def messages(self, kind=object) -> list:
        return [m for _, m in self.delivered if isinstance(m, kind)]

    def turn(self) -> None:
        if self.clock is not None:
            self.clock.advance(1)  # a turn takes about 1 ms (the polls below wait up to 1 ms)
        for adapter, inbox in self.adapters.items():
            if adapter not in self.paused:
                adapter.timers()
                inbox += adapter.poll(timeout_ms=1)
        for raw in self.raws:
            raw.drain()
        self.delivered += self.gw.poll(timeout_ms=1)
        self.events += self.gw.timers()

    def run(self, until, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.turn()
            if until():
                return
        raise AssertionError("timed out: the condition never held")

    def settle(self, seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.turn()


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def make(ctx):
    made = []

    def gateway(mics=("XSIM1",), **kw) -> tuple[VenueGateway, Loop]:
        kw.setdefault("heartbeat_ms", 100)
        gw = VenueGateway(ENDPOINT, list(mics), context=ctx, **kw)
        made.append(gw)
        return gw, Loop(gw, kw.get("clock"))

    yield gateway
    for gw in made:
        gw.close()


def adapter_for(loop: Loop, ctx, mic="XSIM1", **kw) -> tuple[VenueAdapter, list]:
    kw.setdefault("heartbeat_ms", 100)
    adapter = VenueAdapter(loop.gw.bound_endpoint, mic, context=ctx, **kw)
    loop.adapters[adapter] = []
    return adapter, loop.adapters[adapter]


def raw_for(loop: Loop, ctx) -> RawVenue:
    raw = RawVenue(loop.gw.bound_endpoint, ctx)
    loop.raws.append(raw)
    return raw


def rebind(make_gateway):
    """A closed socket's port is released by ZeroMQ's I/O thread a moment later: retry."""
    end = time.monotonic() + 5
    while True:
        try:
            return make_gateway()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > end:
                raise
            time.sleep(0.02)


def order(child_id: int, qty: int = 10, price: int = 19_000) -> NewChildOrder:
    return NewChildOrder(0, child_id, "AAPL", Side.BUY, qty, price)


# -- LOGON AND THE ROUND TRIP ---------------------------------------------------------------------


def test_logon_then_child_order_round_trip_delivers_reports_in_seq_order(make, ctx):
    gw, loop = make()
    adapter, inbox = adapter_for(loop, ctx, session_id="D1")
    loop.run(lambda: any(isinstance(e, VenueUp) for e in loop.events))
    assert loop.events[0] == VenueUp("XSIM1", "D1", False, loop.events[0].ts)
    assert gw.is_up("XSIM1") and gw.routable("XSIM1")
    loop.run(lambda: any(isinstance(m, StatusRequest) for m in inbox))  # reconcile on logon

    assert gw.send("XSIM1", order(7)) is True
    loop.run(lambda: any(isinstance(m, NewChildOrder) for m in inbox))
    child = next(m for m in inbox if isinstance(m, NewChildOrder))
    assert (child.seq, child.child_id, child.qty, child.price) == (1, 7, 10, 19_000)

    adapter.send(ChildAccepted(0, 7, "V-7"))
    adapter.send(ChildFilled(0, 7, "E1", 4, 19_000, 6, 4))
    adapter.send(ChildFilled(0, 7, "E2", 6, 18_999, 0, 10))
    loop.run(lambda: len(loop.delivered) == 3)
    assert [(type(m).__name__, m.seq) for _, m in loop.delivered] == [
        ("ChildAccepted", 1), ("ChildFilled", 2), ("ChildFilled", 3)]
    status = gw.status()["XSIM1"]
    assert (status.in_expected, status.out_seq, status.open_children) == (4, 1, 0)
    assert (gw.last_delivered("XSIM1"), gw.last_sent("XSIM1"), gw.session_id("XSIM1")) == (3, 1, "D1")


def test_a_status_report_is_compared_with_what_kilat_holds_open(make, ctx):
    gw, loop = make()
    adapter, inbox = adapter_for(loop, ctx)
    loop.run(lambda: any(isinstance(m, StatusRequest) for m in inbox))
    for child_id in (1, 2, 3):
        gw.send("XSIM1", order(child_id))
    loop.run(lambda: len([m for m in inbox if isinstance(m, NewChildOrder)]) == 3)
    adapter.send(ChildAccepted(0, 1, "V1"))
    adapter.send(ChildFilled(0, 1, "E1", 4, 19_000, 6, 4))
    loop.run(lambda: len(loop.delivered) == 2)

    request_id = gw.request_status("XSIM1")
    loop.run(lambda: any(isinstance(m, StatusRequest) and m.request_id == request_id for m in inbox))
    adapter.send_status(
        StatusRequest(0, request_id), next_expected=4,
        orders=[OpenChildOrder(1, "V1", "AAPL", Side.BUY, 10, 19_000, 5, 5),  # venue says cum 5
                OpenChildOrder(2, "V2", "AAPL", Side.BUY, 10, 19_000, 10, 0),
                OpenChildOrder(99, "V99", "AAPL", Side.BUY, 1, 19_000, 1, 0)],
        fills=[])
    loop.run(lambda: any(isinstance(e, VenueReconciled) for e in loop.events))
    rec = next(e for e in loop.events if isinstance(e, VenueReconciled))
    assert rec.request_id == request_id
    assert rec.missing_at_venue == [3]  # Kilat holds it open, the venue does not
    assert rec.unknown_at_kilat == [99]
    assert [(m.child_id, m.kilat_cum, m.venue_cum) for m in rec.mismatched] == [(1, 4, 5)]
    assert not rec.clean


# -- ORDER, DUPLICATES, HOLES ---------------------------------------------------------------------


def test_duplicate_and_out_of_order_reports_are_delivered_once_in_order(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    assert isinstance(raw.logon(loop), LogonAccepted)
    reports = {
        1: ChildAccepted(1, 5, "V5"),
        2: ChildFilled(2, 5, "E1", 3, 19_000, 7, 3),
        3: ChildFilled(3, 5, "E2", 3, 19_001, 4, 6),
        4: ChildCanceled(4, 5, 4, int(RejectCode.CANCEL_REQUESTED)),
    }
    raw.send(*(reports[s] for s in (3, 1, 3, 4, 2, 1, 4)))
    loop.run(lambda: len(loop.delivered) == 4)
    loop.settle(0.1)
    assert [m for _, m in loop.delivered] == [reports[s] for s in (1, 2, 3, 4)]
    status = gw.status()["XSIM1"]
    assert status.duplicates == 3 and status.in_expected == 5
    # seq 3 came first: the hole 1..3 was asked for at once
    assert raw.of(ResendRequest)[0].from_seq == 1 and raw.of(ResendRequest)[0].to_seq == 3


def test_a_fill_or_bust_seen_again_under_a_new_seq_is_applied_once(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    raw.send(ChildFilled(1, 5, "E1", 3, 19_000, 7, 3), ChildFilled(2, 5, "E1", 3, 19_000, 7, 3),
             TradeCorrection(3, "E1", 5, 2, 19_000), TradeBust(4, "E1", 5), TradeBust(5, "E1", 5),
             ChildFilled(6, 5, "E2", 1, 19_000, 6, 4))
    loop.run(lambda: gw.status()["XSIM1"].in_expected == 7)
    kinds = [(type(m).__name__, m.seq) for _, m in loop.delivered]
    assert kinds == [("ChildFilled", 1), ("TradeCorrection", 3), ("TradeBust", 4), ("ChildFilled", 6)]
    assert gw.status()["XSIM1"].duplicate_fills == 2


def test_a_hole_is_asked_for_and_filled_by_the_resend(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    one, two, three = (ChildAccepted(s, s, f"V{s}") for s in (1, 2, 3))
    raw.send(one, three)
    loop.run(lambda: raw.of(ResendRequest))
    assert [m for _, m in loop.delivered] == [one]
    request = raw.of(ResendRequest)[0]
    assert (request.from_seq, request.to_seq) == (2, 3)
    raw.send(two, three)  # what a venue does: everything from from_seq to to_seq again
    loop.run(lambda: len(loop.delivered) == 3)
    assert [m for _, m in loop.delivered] == [one, two, three]
    assert gw.status()["XSIM1"].gaps == 1


def test_a_sequence_reset_skips_what_the_venue_no_longer_has(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    raw.send(ChildAccepted(1, 1, "V1"), ChildAccepted(4, 4, "V4"))
    loop.run(lambda: raw.of(ResendRequest))
    raw.send(SequenceReset(4, 3), ChildAccepted(3, 3, "V3"))  # 2 is gone, 3 is resent
    loop.run(lambda: len(loop.delivered) == 3)
    assert [m.seq for _, m in loop.delivered] == [1, 3, 4]
    assert gw.status()["XSIM1"].skipped == 1


def test_kilat_resends_child_orders_the_venue_missed(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    for child_id in (1, 2, 3):
        gw.send("XSIM1", order(child_id))
    loop.run(lambda: len(raw.of(NewChildOrder)) == 3)
    raw.send(ResendRequest(0, 2, 0))  # "send 2 onwards again"
    loop.run(lambda: len(raw.of(NewChildOrder)) == 5)
    assert [m.seq for m in raw.of(NewChildOrder)] == [1, 2, 3, 2, 3]
    assert gw.status()["XSIM1"].resent == 2


# -- SILENCE, RECONNECT, RESTORE -----------------------------------------------------------------


def test_a_silent_venue_goes_down_new_orders_queue_and_on_reconnect_it_resumes(make, ctx):
    clock = Clock()
    gw, loop = make(clock=clock)
    adapter, inbox = adapter_for(loop, ctx, clock=clock, session_id="D1")
    loop.run(lambda: gw.is_up("XSIM1"))
    gw.send("XSIM1", order(1))
    loop.run(lambda: any(isinstance(m, NewChildOrder) for m in inbox))
    adapter.send(ChildAccepted(0, 1, "V1"))
    loop.run(lambda: loop.messages(ChildAccepted))

    loop.paused.add(adapter)  # the venue stops talking
    clock.advance(301)  # > 3 heartbeat intervals of 100 ms
    loop.turn()
    down = [e for e in loop.events if isinstance(e, VenueDown)]
    assert [(d.mic, d.working) for d in down] == [("XSIM1", [1])]
    assert down[0].reason.startswith("silent for 30") and "heartbeat every 100 ms" in down[0].reason
    assert not gw.is_up("XSIM1") and not gw.routable("XSIM1")
    assert gw.send("XSIM1", order(2)) is False  # queued: a router must avoid this venue
    assert gw.status()["XSIM1"].queued == 1

    loop.paused.clear()  # the venue is back: it finds Kilat silent too and logs on afresh
    loop.run(lambda: any(isinstance(m, NewChildOrder) and m.child_id == 2 for m in inbox))
    assert adapter.reconnects == 1
    ups = [e for e in loop.events if isinstance(e, VenueUp)]
    assert ups[-1].resumed is True
    assert [m.child_id for m in inbox if isinstance(m, NewChildOrder)] == [1, 2]
    adapter.send(ChildAccepted(0, 2, "V2"))
    request = next(m for m in reversed(inbox) if isinstance(m, StatusRequest))
    adapter.send_status(request, next_expected=adapter.next_expected, fills=[],
                        orders=[OpenChildOrder(1, "V1", "AAPL", Side.BUY, 10, 19_000, 10, 0),
                                OpenChildOrder(2, "V2", "AAPL", Side.BUY, 10, 19_000, 10, 0)])
    loop.run(lambda: any(isinstance(e, VenueReconciled) for e in loop.events))
    rec = [e for e in loop.events if isinstance(e, VenueReconciled)][-1]
    assert rec.clean, rec


def test_a_restarted_venue_resends_what_kilat_missed_and_a_fill_is_applied_once(make, ctx):
    gw, loop = make()
    first, inbox = adapter_for(loop, ctx, session_id="D1")
    loop.run(lambda: gw.is_up("XSIM1"))
    gw.send("XSIM1", order(1))
    loop.run(lambda: any(isinstance(m, NewChildOrder) for m in inbox))
    first.send(ChildAccepted(0, 1, "V1"))
    _, lost = first.prepare(ChildFilled(0, 1, "E1", 4, 19_000, 6, 4))  # journaled, never sent
    kept = list(first.out.frames_from(1))
    loop.run(lambda: loop.messages(ChildAccepted))
    first.close()  # killed
    del loop.adapters[first]

    second, inbox2 = adapter_for(loop, ctx, session_id="D1", last_sent=2, next_expected=2,
                                 sent_frames=kept)
    loop.run(lambda: loop.messages(ChildFilled))
    assert [m.seq for m in loop.messages()] == [1, 2]
    assert [e.resumed for e in loop.events if isinstance(e, VenueUp)] == [False, True]
    second.send(ChildFilled(0, 1, "E1", 4, 19_000, 6, 4))  # the same execution, sent again
    second.send(ChildFilled(0, 1, "E2", 6, 19_000, 0, 10))
    loop.run(lambda: gw.status()["XSIM1"].in_expected == 5)
    assert [m.exec_id for m in loop.messages(ChildFilled)] == ["E1", "E2"]
    assert gw.status()["XSIM1"].duplicate_fills == 1
    assert lost in second.out.frames_from(2)


def test_after_kilat_restarts_restore_continues_both_numberings(make, ctx):
    gw, loop = make()
    adapter, inbox = adapter_for(loop, ctx, session_id="D1")
    loop.run(lambda: gw.is_up("XSIM1"))
    gw.send("XSIM1", order(1))
    loop.run(lambda: any(isinstance(m, NewChildOrder) for m in inbox))
    adapter.send(ChildAccepted(0, 1, "V1"))
    adapter.send(ChildFilled(0, 1, "E1", 4, 19_000, 6, 4))
    loop.run(lambda: len(loop.messages()) == 2)
    journal_sent = [msgspec.structs.replace(order(1), seq=1)]
    journal_received = loop.messages()
    endpoint = gw.bound_endpoint
    gw.close()  # Kilat stops; the venue keeps running

    gw2 = rebind(lambda: VenueGateway(endpoint, ["XSIM1"], heartbeat_ms=100, context=ctx))
    try:
        gw2.restore("XSIM1", session_id="D1", in_seq=2, out_seq=1, sent=journal_sent,
                    received=journal_received)
        loop2 = Loop(gw2)
        loop2.adapters[adapter] = inbox
        loop2.run(lambda: gw2.is_up("XSIM1"))
        assert [e.resumed for e in loop2.events if isinstance(e, VenueUp)] == [True]
        assert gw2.open_children("XSIM1") == [1]
        gw2.send("XSIM1", order(2))
        loop2.run(lambda: any(isinstance(m, NewChildOrder) and m.child_id == 2 for m in inbox))
        assert [m.seq for m in inbox if isinstance(m, NewChildOrder)] == [1, 2]  # no resend of 1
        adapter.send(ChildFilled(0, 1, "E1", 4, 19_000, 6, 4))  # already journaled by Kilat
        adapter.send(ChildAccepted(0, 2, "V2"))
        loop2.run(lambda: loop2.messages(ChildAccepted))
        assert [(type(m).__name__, m.seq) for m in loop2.messages()] == [("ChildAccepted", 4)]
        assert gw2.status()["XSIM1"].duplicate_fills == 1
    finally:
        gw2.close()


def test_a_new_session_id_restarts_both_numberings(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    raw.send(ChildAccepted(1, 1, "V1"))
    gw.send("XSIM1", order(1))
    loop.run(lambda: loop.delivered and raw.of(NewChildOrder))
    raw.send(VenueLogon(0, "XSIM1", "NEXT-DAY", 1))
    loop.run(lambda: len(raw.of(LogonAccepted)) == 2)
    accepted = raw.of(LogonAccepted)[-1]
    assert (accepted.session_id, accepted.seq, accepted.next_expected) == ("NEXT-DAY", 0, 1)
    raw.send(ChildAccepted(1, 7, "V7"))  # seq 1 again, in the new session
    loop.run(lambda: len(loop.delivered) == 2)
    loop.run(lambda: [e for e in loop.events if isinstance(e, VenueUp)][-1:] and
             [e for e in loop.events if isinstance(e, VenueUp)][-1].session_id == "NEXT-DAY")
    assert [e.resumed for e in loop.events if isinstance(e, VenueUp)][-1] is False


# -- REFUSALS -------------------------------------------------------------------------------------


def test_an_unknown_mic_is_refused_and_cannot_talk_without_a_logon(make, ctx):
    gw, loop = make(mics=("XSIM1", "XSIM2"))
    raw = raw_for(loop, ctx)
    refused = raw.logon(loop, mic="XNOPE")
    assert isinstance(refused, LogonRejected) and refused.code == RejectCode.NOT_AUTHORIZED
    assert "unknown MIC 'XNOPE'" in refused.text and "XSIM1, XSIM2" in refused.text
    raw.send(Heartbeat(0))
    loop.run(lambda: raw.of(ProtocolError))
    assert "log on first" in raw.of(ProtocolError)[0].text
    assert (gw.stats.logons_refused, gw.stats.not_logged_on) == (1, 1)
    assert not gw.is_up("XSIM1") and not gw.is_up("XSIM2")


def test_a_connection_may_only_log_on_as_the_venue_it_authenticated_as(make, ctx):
    seen = []

    def user_of(frame):
        seen.append(frame)
        return "XSIM2"

    gw, loop = make(mics=("XSIM1", "XSIM2"), user_of=user_of)
    raw = raw_for(loop, ctx)
    refused = raw.logon(loop, mic="XSIM1")
    assert isinstance(refused, LogonRejected)
    assert "authenticated as 'XSIM2', not as venue 'XSIM1'" in refused.text
    raw.inbox.clear()
    assert isinstance(raw.logon(loop, mic="XSIM2"), LogonAccepted)
    assert isinstance(seen[0], zmq.Frame)  # the hook gets the frame (ZAP's User-Id lives there)


def test_a_venue_sending_an_order_is_refused_counted_and_the_gateway_keeps_serving(make, ctx):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    raw.send(NewChildOrder(1, 9, "AAPL", Side.SELL, 5, 19_000))
    loop.run(lambda: raw.of(ProtocolError))
    error = raw.of(ProtocolError)[0]
    assert error.code == RejectCode.NOT_AUTHORIZED
    assert error.text.startswith("NewChildOrder is sent by Kilat to venues, never by a venue")
    assert (gw.stats.wrong_direction, gw.stats.malformed) == (1, 1)
    assert loop.delivered == []
    raw.send(ChildAccepted(1, 9, "V9"))
    loop.run(lambda: loop.delivered)
    assert loop.delivered == [("XSIM1", ChildAccepted(1, 9, "V9"))]


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        ([b"\xc1"], RejectCode.MALFORMED_MESSAGE, "not valid msgpack"),
        ([b"a", b"b"], RejectCode.MALFORMED_MESSAGE, "expected one frame (the message) per send, got 2"),
        ([encode(["Ordre", 1])], RejectCode.UNKNOWN_MESSAGE_TYPE, "one of VenueLogon, ChildAccepted"),
        ([encode(["ChildFilled", 1, 2])], RejectCode.MALFORMED_MESSAGE,
         "invalid ChildFilled: Expected `array` of at least length 8"),
        ([encode(["ChildAccepted", 1, "seven", "V"])], RejectCode.MALFORMED_MESSAGE, "Expected `int`"),
        ([encode(["ChildAccepted", 2**63, 1, "V"])], RejectCode.MALFORMED_MESSAGE, "invalid ChildAccepted"),
        ([b"x" * 5_000], RejectCode.MESSAGE_TOO_LARGE, "at most 4096 bytes, got 5000"),
    ],
)
def test_malformed_frames_are_answered_counted_and_the_gateway_keeps_serving(make, ctx, frames, code, words):
    gw, loop = make(max_message_bytes=4096)
    raw = raw_for(loop, ctx)
    raw.logon(loop)
    raw.sock.send_multipart(frames)
    loop.run(lambda: raw.of(ProtocolError))
    error = raw.of(ProtocolError)[0]
    assert error.code == code and words in error.text, error.text
    assert gw.stats.malformed == 1
    raw.send(ChildAccepted(1, 1, "V1"))
    loop.run(lambda: loop.delivered)
    assert gw.status()["XSIM1"].delivered == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=64) | st.builds(encode, st.lists(st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5), max_size=4)),
                min_size=1, max_size=5))
def test_random_bytes_never_stop_the_gateway(make, ctx, payloads):
    gw, loop = make()
    raw = raw_for(loop, ctx)
    raw.logon(loop, last=0, expected=1)
    for payload in payloads:
        raw.sock.send(payload)
    raw.send(Heartbeat(0))
    loop.settle(0.02)
    before = gw.stats.received
    raw.send(ChildAccepted(gw.status()["XSIM1"].in_expected, 1, "V1"))
    loop.run(lambda: gw.stats.received > before and loop.messages(ChildAccepted))
    assert gw.stats.received >= len(payloads) + 2


def test_send_refuses_what_is_not_a_child_order_message_or_an_unknown_venue(make):
    gw, _ = make()
    with pytest.raises(TypeError, match="send\\(\\) takes NewChildOrder, CancelChildOrder, ReplaceChildOrder"):
        gw.send("XSIM1", Heartbeat(0))
    with pytest.raises(ValueError, match="unknown venue 'XNOPE'; this gateway serves XSIM1"):
        gw.send("XNOPE", order(1))


# -- THE DOCUMENT ---------------------------------------------------------------------------------


def test_docs_venues_md_lists_every_message_with_its_fields_in_wire_order():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "venues.md").read_text()
    documented = dict(re.findall(r"^- \*\*(\w+)\*\* `\[\"\w+\", …\]`: (.*?)(?: \(not tagged.*)?$", doc, re.M))
    wire = {*typing.get_args(vm.VenueToKilat), *typing.get_args(vm.KilatToVenue), vm.OpenChildOrder,
            vm.ExecutionRecord, *typing.get_args(sim.AdminCommand), sim.AdminReply, sim.VenueSnapshot}
    for cls in sorted(wire, key=lambda c: c.__name__):
        assert cls.__name__ in documented, f"{cls.__name__} missing from docs/venues.md"
        fields = [f.name for f in msgspec.inspect.type_info(cls).fields]
        assert re.findall(r"`(\w+)`", documented[cls.__name__]) == fields, cls.__name__


def test_the_documented_logon_example_decodes_as_written():
    logon = VENUE_DECODER.decode(encode(["VenueLogon", 0, "XSIM1", "20240115-a1b2c3d4", 1, 1705300000000000000]))
    assert logon == VenueLogon(0, "XSIM1", "20240115-a1b2c3d4", 1, 1705300000000000000)
