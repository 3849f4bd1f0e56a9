"""A venue's side of the venue protocol: the DEALER a venue adapter (or the simulator) speaks with.

``VenueAdapter`` is driven by its caller, like ``VenueGateway``:

    for message in adapter.poll():       # Kilat -> venue, in seq order, exactly once
        ...                              # NewChildOrder / CancelChildOrder / ReplaceChildOrder,
                                         # StatusRequest (answer with send_status)
    adapter.send(ChildAccepted(0, child_id, "V-1"))   # numbered here, kept for resends
    adapter.timers()                     # logon retries, heartbeats, silence -> reconnect

It logs on (``VenueLogon``) and keeps logging on until Kilat accepts; until then reports are
numbered and kept, not sent (Kilat asks for them once it sees the logon's last seq). It answers
``ResendRequest``s from its store, asks for Kilat's missing seqs, and when Kilat is silent for
3 heartbeat intervals it drops the connection and logs on again on a fresh one.

A venue that must survive its own restart journals what it sends (``prepare`` returns the frame
to journal before ``flush`` sends it) and the last Kilat seq it processed, and passes them back
to the constructor (``session_id``, ``last_sent``, ``next_expected``, ``sent_frames``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import msgspec
import zmq

from engine.constants import RejectCode
from gateways.venue_messages import (
    KILAT_DECODER,
    KILAT_SEQUENCED,
    KILAT_TAGS,
    VENUE_SEQUENCED,
    ExecutionRecord,
    Heartbeat,
    LogonAccepted,
    LogonRejected,
    OpenChildOrder,
    ProtocolError,
    ResendRequest,
    SequenceReset,
    StatusReport,
    StatusRequest,
    VenueLogon,
)
from gateways.venue_session import Inbound, Liveness, Outbound

log = logging.getLogger("kilat.venue_adapter")

Configure = Callable[[zmq.Socket], None]


def new_session_id(now_ns: int | None = None) -> str:
    """A session id for a new trading session: the UTC date and a random suffix."""
    when = datetime.fromtimestamp((now_ns or time.time_ns()) / 1e9, UTC)
    return f"{when:%Y%m%d}-{secrets.token_hex(4)}"


class VenueAdapter:
    """The venue's end of one session with Kilat over a DEALER socket. Not thread-safe."""

    def __init__(self, endpoint: str, mic: str, *, heartbeat_ms: int = 1000,
                 session_id: str | None = None, last_sent: int = 0, next_expected: int = 1,
                 sent_frames: Iterable[bytes] = (), context: zmq.Context | None = None,
                 configure: Configure | None = None, resend_capacity: int = 100_000,
                 hwm: int = 100_000, clock: Callable[[], int] = time.time_ns) -> None:
        if not mic:
            raise ValueError("mic must be a non-empty venue code")
        self.endpoint = endpoint
        self.mic = mic
        self.clock = clock
        self.configure = configure
        self.hwm = hwm
        now = clock()
        self.session_id = session_id or new_session_id(now)
        frames = list(sent_frames)
        if len(frames) > last_sent:
            raise ValueError(f"{len(frames)} sent frames cannot end at seq {last_sent}")
        self.out: Outbound[bytes] = Outbound(resend_capacity, last_sent - len(frames))
        for frame in frames:
            self.out.keep(self.out.next_seq(), frame)
        self.inp: Inbound[object] = Inbound(next_expected)
        self.alive = Liveness(heartbeat_ms * 1_000_000, now)
        self.logged_on = False
        self.refused: tuple[int, str] | None = None  # the last LogonRejected (code, text)
        self._unsent_from = self.out.last_seq + 1
        self._logon_due = now
        self._encode = msgspec.msgpack.Encoder().encode
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None
        # counters
        self.logons = 0
        self.reconnects = 0
        self.malformed = 0
        self.errors_from_kilat = 0
        self.resent = 0
        self.resend_requests = 0
        self.send_failures = 0
        self._open()

    # -- COMMANDS ---------------------------------------------------------------------------------

    def poll(self, max_messages: int = 512, timeout_ms: int = 0) -> list:
        """Read up to ``max_messages`` frames (waiting up to ``timeout_ms`` for the first) and
        return what they make deliverable: child orders in seq order exactly once, and each
        ``StatusRequest`` after the orders sent before it. O(frames + delivered)."""
        sock = self._sock
        if timeout_ms > 0 and not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            sock.poll(timeout_ms, zmq.POLLIN)
        out: list = []
        now = self.clock()
        for _ in range(max_messages):
            try:
                payload = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_frame(payload, now, out)
        return out

    def prepare(self, message) -> tuple[int, bytes]:
        """Number a report (its ``seq`` is set here, ``ts`` kept unless 0), keep it for resends
        and return (seq, frame); ``flush`` sends it. Journal the frame in between to survive a
        restart. O(1)."""
        if not isinstance(message, VENUE_SEQUENCED):
            raise TypeError(f"prepare() takes a sequenced venue message, got {type(message).__name__}")
        ts = message.ts or self.clock()
        encode, replace = self._encode, msgspec.structs.replace
        return self.out.add(lambda s: encode(replace(message, seq=s, ts=ts)))

    def flush(self) -> int:
        """Send every prepared frame not yet sent (only once logged on); returns how many. O(k)."""
        if not self.logged_on:
            return 0
        now = self.clock()
        frames = self.out.frames_from(self._unsent_from)
        self._unsent_from = self.out.last_seq + 1
        for frame in frames:
            self._transmit(frame, now)
        return len(frames)

    def send(self, message) -> int:
        """``prepare`` then ``flush``; returns the message's seq."""
        seq, _ = self.prepare(message)
        self.flush()
        return seq

    def send_status(self, request: StatusRequest, *, next_expected: int,
                    orders: list[OpenChildOrder], fills: list[ExecutionRecord]) -> bool:
        """Answer a StatusRequest. ``next_expected``: the Kilat seq the venue will process next
        (orders below it are reflected in the report). Pending reports are flushed first."""
        self.flush()
        if not self.logged_on:
            return False
        now = self.clock()
        return self._transmit(self._encode(StatusReport(
            self.out.last_seq, request.request_id, next_expected, orders, fills, now)), now)

    def timers(self, now_ns: int | None = None) -> None:
        """Logon retries, heartbeats, resend requests; a silent Kilat -> reconnect. O(1)."""
        now = self.clock() if now_ns is None else now_ns
        if not self.logged_on:
            if now >= self._logon_due:
                self._send_logon(now)
            return
        if self.alive.silent(now):
            log.warning("venue %s: Kilat silent for %d ms; reconnecting", self.mic,
                        (now - self.alive.last_heard) // 1_000_000)
            self.reconnect(now)
            return
        if self.alive.heartbeat_due(now):
            self._transmit(self._encode(Heartbeat(self.out.last_seq, now)), now)
        wanted = self.inp.resend_due(now, self.alive.interval_ns)
        if wanted is not None:
            self.resend_requests += 1
            self._transmit(self._encode(ResendRequest(self.out.last_seq, wanted[0], wanted[1], now)), now)

    def reconnect(self, now_ns: int | None = None) -> None:
        """Drop the connection and log on again on a fresh socket (a new routing identity)."""
        now = self.clock() if now_ns is None else now_ns
        self.reconnects += 1
        self._sock.close(0)
        self._open()
        self._send_logon(now)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._own_context:
            self._ctx.term()

    # -- QUERIES ----------------------------------------------------------------------------------

    @property
    def socket(self) -> zmq.Socket:
        """The DEALER, for the caller's poller (it changes on ``reconnect``)."""
        return self._sock

    @property
    def last_sent(self) -> int:
        return self.out.last_seq

    @property
    def next_expected(self) -> int:
        return self.inp.expected

    def status(self) -> dict[str, object]:
        return {
            "mic": self.mic, "session_id": self.session_id, "logged_on": self.logged_on,
            "last_sent": self.out.last_seq, "next_expected": self.inp.expected,
            "logons": self.logons, "reconnects": self.reconnects, "duplicates": self.inp.duplicates,
            "gaps": self.inp.gaps, "resent": self.resent, "resend_requests": self.resend_requests,
            "malformed": self.malformed, "errors_from_kilat": self.errors_from_kilat,
            "refused": self.refused,
        }

    # -- INTERNALS --------------------------------------------------------------------------------

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue onto a connection not yet made
        if self.configure is not None:
            self.configure(sock)
        sock.connect(self.endpoint)
        self._sock = sock
        self.logged_on = False
        self._logon_due = 0

    def _send_logon(self, now: int) -> None:
        self.logged_on = False
        self._unsent_from = self.out.last_seq + 1  # the logon announces everything before
        sent = self._transmit(self._encode(VenueLogon(
            self.out.last_seq, self.mic, self.session_id, self.inp.expected, now)), now)
        # not queued (no connection yet): try again on the next timers(); else wait an interval
        self._logon_due = now + self.alive.interval_ns if sent else now

    def _transmit(self, frame: bytes, now: int) -> bool:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1
            return False
        self.alive.sent(now)
        return True

    def _on_frame(self, payload: bytes, now: int, out: list) -> None:
        try:
            message = KILAT_DECODER.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self.malformed += 1
            log.warning("venue %s: refused a frame from Kilat: %s", self.mic, exc)
            self._transmit(self._encode(ProtocolError(
                self.out.last_seq, int(RejectCode.MALFORMED_MESSAGE),
                f"expected one of {', '.join(KILAT_TAGS)}: {exc}", now)), now)
            return
        self.alive.heard(now)
        inp = self.inp
        if isinstance(message, LogonAccepted):
            self._accepted(message, now)
            return
        if isinstance(message, LogonRejected):
            self.logged_on = False
            self.refused = (message.code, message.text)
            self._logon_due = now + 3 * self.alive.interval_ns
            log.error("venue %s: Kilat refused the logon: %s", self.mic, message.text)
            return
        if isinstance(message, ProtocolError):
            self.errors_from_kilat += 1
            log.warning("venue %s: Kilat refused a frame: %s %s", self.mic, message.code, message.text)
            if message.code == RejectCode.NOT_AUTHORIZED and self.logged_on:
                self._send_logon(now)  # Kilat does not know this connection (it restarted)
            return
        if not self.logged_on:
            return  # stale: anything Kilat sent before the logon is asked for again
        if isinstance(message, KILAT_SEQUENCED):
            out.extend(inp.receive(message.seq, message))
        elif isinstance(message, Heartbeat):
            inp.peer_last(message.seq)
        elif isinstance(message, StatusRequest):
            out.extend(inp.after(message.seq, message))
        elif isinstance(message, ResendRequest):
            inp.peer_last(message.seq)
            reset_to, frames = self.out.replay(message.from_seq, message.to_seq)
            if reset_to:
                self._transmit(self._encode(SequenceReset(self.out.last_seq, reset_to, now)), now)
            for frame in frames:
                self.resent += self._transmit(frame, now)
        elif isinstance(message, SequenceReset):
            out.extend(inp.skip_to(message.new_seq))
            inp.peer_last(message.seq)
        wanted = inp.resend_due(now, self.alive.interval_ns)
        if wanted is not None:
            self.resend_requests += 1
            self._transmit(self._encode(ResendRequest(self.out.last_seq, wanted[0], wanted[1], now)), now)

    def _accepted(self, accepted: LogonAccepted, now: int) -> None:
        inp, out = self.inp, self.out
        if accepted.session_id != self.session_id:
            log.warning("venue %s: Kilat accepted session %r, ours is %r", self.mic,
                        accepted.session_id, self.session_id)
        if accepted.seq < inp.expected - 1:
            log.warning("venue %s: Kilat's last seq is %d but we had %d: Kilat lost messages; "
                        "continuing from its numbering", self.mic, accepted.seq, inp.expected - 1)
            inp.reset(accepted.seq + 1)
        if accepted.next_expected > out.last_seq + 1:
            log.warning("venue %s: Kilat expects seq %d but we sent only %d: continuing from "
                        "Kilat's numbering", self.mic, accepted.next_expected, out.last_seq)
            out.reset(accepted.next_expected - 1)
            self._unsent_from = out.last_seq + 1
        if accepted.heartbeat_ms > 0:
            self.alive.interval_ns = accepted.heartbeat_ms * 1_000_000
        inp.peer_last(accepted.seq)
        self.logged_on = True
        self.refused = None
        self.logons += 1
        self.flush()  # reports prepared after the logon announced its last seq
        wanted = inp.resend_due(now, self.alive.interval_ns)
        if wanted is not None:
            self.resend_requests += 1
            self._transmit(self._encode(ResendRequest(out.last_seq, wanted[0], wanted[1], now)), now)
