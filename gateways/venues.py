"""Kilat's side of the venue protocol: one ROUTER socket that every venue adapter connects to.

``VenueGateway`` is driven by its caller, one loop turn at a time (it has no thread):

    messages = gateway.poll()            # [(mic, message)], venue -> Kilat, in seq order, once
    ... journal and apply them ...
    gateway.send(mic, NewChildOrder(...))  # numbered; False = venue down, queued for resend
    events = gateway.timers(now_ns)      # VenueUp / VenueDown / VenueReconciled; heartbeats

Per venue (per MIC) it keeps a session (``gateways.venue_session``): Kilat's outgoing numbering
and resend store, the venue's incoming numbering (holes are asked for again, early messages wait,
duplicates are dropped), the day's execution ids (a fill is delivered once even if it arrives
twice), liveness, and a small ledger of the child orders it holds open, for reconciliation.

Identity: the first message on a connection must be a ``VenueLogon`` naming a MIC the gateway
serves; anything else from an unknown connection is refused. ``user_of(identity_frame)``, when
given (CurveZMQ), returns the authenticated user of the connection and the MIC must equal it.
A frame the gateway cannot accept is answered with a ``ProtocolError`` and counted; nothing a
venue sends stops the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import msgspec
import zmq

from engine.constants import RejectCode
from gateways.venue_messages import (
    KILAT_ONLY_TAGS,
    KILAT_SEQUENCED,
    VENUE_DECODER,
    VENUE_SEQUENCED,
    VENUE_TAGS,
    ChildCanceled,
    ChildFilled,
    ChildRejected,
    ChildReplaced,
    ExecutionRecord,
    GatewayEvent,
    Heartbeat,
    LogonAccepted,
    LogonRejected,
    Mismatch,
    NewChildOrder,
    ProtocolError,
    ResendRequest,
    SequenceReset,
    SessionState,
    StatusReport,
    StatusRequest,
    TradeBust,
    TradeCorrection,
    VenueDown,
    VenueLogon,
    VenueReconciled,
    VenueUp,
)
from gateways.venue_session import ExecIds, Inbound, Liveness, Outbound

log = logging.getLogger("kilat.venues")

#: What a security hook looks like: it configures a socket before it binds or connects.
Configure = Callable[[zmq.Socket], None]
#: Returns the authenticated user of the connection a frame came from ("" or None: unknown).
UserOf = Callable[[zmq.Frame], str | None]


class VenueStatus(msgspec.Struct, frozen=True):
    """One venue's session as the gateway sees it (``VenueGateway.status()``)."""

    mic: str
    up: bool
    state: str  # the venue's last SessionState ("open" until it says otherwise)
    session_id: str
    in_expected: int  # the venue seq expected next
    out_seq: int  # Kilat's last seq to this venue
    last_heard_ns: int
    logons: int
    delivered: int
    duplicates: int  # sequenced messages dropped as already had
    duplicate_fills: int  # fills (or busts) dropped as already seen by exec_id
    gaps: int
    resend_requests: int  # ResendRequests sent to the venue
    resent: int  # Kilat messages sent again on the venue's request
    skipped: int  # venue seqs given up after a SequenceReset
    queued: int  # messages numbered while the venue was down
    open_children: int


class GatewayStats(msgspec.Struct):
    received: int = 0  # frames read
    malformed: int = 0  # frames refused (every cause below included)
    wrong_direction: int = 0  # a Kilat-only message (an order) sent by a venue
    not_logged_on: int = 0  # a message from a connection that has not logged on
    logons_refused: int = 0
    sent: int = 0
    send_failures: int = 0  # a frame that could not be queued (peer gone or full)


class _Child:
    """What the gateway knows of a child order it holds open. ``out_seq``: its NewChildOrder."""

    __slots__ = ("qty", "cum", "leaves", "out_seq")

    def __init__(self, qty: int, cum: int, leaves: int, out_seq: int) -> None:
        self.qty = qty
        self.cum = cum
        self.leaves = leaves
        self.out_seq = out_seq


class _Venue:
    """The gateway's state for one MIC."""

    def __init__(self, mic: str, interval_ns: int, now_ns: int, resend_capacity: int,
                 exec_capacity: int) -> None:
        self.mic = mic
        self.session_id = ""
        self.identity: bytes | None = None
        self.up = False
        self.state = "open"
        self.out: Outbound[bytes] = Outbound(resend_capacity)
        self.inp: Inbound[object] = Inbound()
        self.alive = Liveness(interval_ns, now_ns)
        self.execs: ExecIds[list[int]] = ExecIds(exec_capacity)  # exec_id -> [child, qty, price]
        self.busted: set[str] = set()
        self.children: dict[int, _Child] = {}
        self.pending_up: bool | None = None  # VenueUp to report (its `resumed`)
        self.next_request = 1
        self.logons = 0
        self.delivered = 0
        self.duplicate_fills = 0
        self.resend_requests = 0
        self.resent = 0
        self.queued = 0

    def new_session(self, session_id: str) -> None:
        """A new trading session: both numberings restart at 1, the day's ids are forgotten.
        Child orders Kilat still holds open stay in the ledger, marked as sent before the
        session (so reconciliation reports them missing at the venue)."""
        self.session_id = session_id
        self.out.reset(0)
        self.inp.reset(1)
        self.execs.clear()
        self.busted.clear()
        for child in self.children.values():
            child.out_seq = 0


class VenueGateway:
    """Binds a ROUTER for venue adapters; see the module docstring. Not thread-safe: one thread
    (the engine's loop) drives it."""

    def __init__(self, endpoint: str, mics: Iterable[str], *, heartbeat_ms: int = 1000,
                 context: zmq.Context | None = None, configure: Configure | None = None,
                 user_of: UserOf | None = None, resend_capacity: int = 100_000,
                 exec_capacity: int = 2_000_000, max_message_bytes: int = 16 << 20,
                 hwm: int = 100_000, clock: Callable[[], int] = time.time_ns) -> None:
        mics = list(mics)
        if not mics:
            raise ValueError("a venue gateway needs at least one MIC to serve")
        if len(set(mics)) != len(mics):
            raise ValueError(f"MICs must be unique, got {mics}")
        if heartbeat_ms <= 0:
            raise ValueError(f"heartbeat_ms must be > 0, got {heartbeat_ms}")
        self.heartbeat_ms = heartbeat_ms
        self.user_of = user_of
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.stats = GatewayStats()
        now = clock()
        interval = heartbeat_ms * 1_000_000
        self._venues = {m: _Venue(m, interval, now, resend_capacity, exec_capacity) for m in mics}
        self._by_identity: dict[bytes, str] = {}
        self._events: list[GatewayEvent] = []
        self._encode = msgspec.msgpack.Encoder().encode
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone venue raises, not drops
        sock.setsockopt(zmq.MAXMSGSIZE, max(1 << 20, 2 * max_message_bytes))
        if configure is not None:
            configure(sock)
        sock.bind(endpoint)
        self._sock = sock
        self.bound_endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- COMMANDS ---------------------------------------------------------------------------------

    def poll(self, max_messages: int = 512, timeout_ms: int = 0) -> list[tuple[str, object]]:
        """Read up to ``max_messages`` frames (waiting up to ``timeout_ms`` for the first) and
        return the venue messages they make deliverable: sequenced ones in seq order exactly
        once (fills and busts de-duplicated by exec_id), and each ``StatusReport`` after the
        reports it describes. O(frames + delivered)."""
        sock = self._sock
        if timeout_ms > 0 and not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            sock.poll(timeout_ms, zmq.POLLIN)
        copy = self.user_of is None
        out: list[tuple[str, object]] = []
        now = self.clock()
        for _ in range(max_messages):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                break
            self.stats.received += 1
            try:
                self._on_frames(parts, now, out)
            except Exception:  # a bug must cost one frame, never the loop
                log.exception("venue frame could not be handled")
                self.stats.malformed += 1
        return out

    def send(self, mic: str, message, now_ns: int | None = None) -> bool:
        """Number ``message`` (a NewChildOrder, CancelChildOrder or ReplaceChildOrder; its
        ``seq`` is set here, its ``ts`` kept unless 0) and send it. Returns False if the venue
        is down: the message is kept and reaches the venue when it is back (it asks for it), so
        a router should not pick that venue for new orders. O(1)."""
        venue = self._venue(mic)
        if not isinstance(message, KILAT_SEQUENCED):
            raise TypeError(f"send() takes {', '.join(t.__name__ for t in KILAT_SEQUENCED)}; "
                            f"got {type(message).__name__}")
        if isinstance(message, NewChildOrder) and message.child_id in venue.children:
            raise ValueError(f"child order {message.child_id} is already open at {mic}")
        now = self.clock() if now_ns is None else now_ns
        ts = message.ts or now
        encode, replace = self._encode, msgspec.structs.replace
        seq, frame = venue.out.add(lambda s: encode(replace(message, seq=s, ts=ts)))
        if isinstance(message, NewChildOrder):
            venue.children[message.child_id] = _Child(message.qty, 0, message.qty, seq)
        if not venue.up:
            venue.queued += 1
            return False
        return self._transmit(venue, frame, now)

    def request_status(self, mic: str, since_seq: int = 0, now_ns: int | None = None) -> int:
        """Ask the venue for a StatusReport (open orders, executions since ``since_seq``);
        returns the request id. The answer arrives through ``poll`` and, compared with the
        gateway's ledger, as a ``VenueReconciled`` event from ``timers``."""
        venue = self._venue(mic)
        now = self.clock() if now_ns is None else now_ns
        request_id = venue.next_request
        venue.next_request += 1
        self._transmit(venue, self._encode(
            StatusRequest(venue.out.last_seq, request_id, since_seq, now)), now)
        return request_id

    def timers(self, now_ns: int | None = None) -> list[GatewayEvent]:
        """Housekeeping for one loop turn: reports VenueUp (then asks the venue for a status
        report to reconcile), VenueDown for venues silent for 3 heartbeat intervals (or gone),
        VenueReconciled for status reports received; sends heartbeats and resend requests.
        O(venues)."""
        now = self.clock() if now_ns is None else now_ns
        events, self._events = self._events, []
        for venue in self._venues.values():
            if venue.pending_up is not None:
                events.append(VenueUp(venue.mic, venue.session_id, venue.pending_up, now))
                venue.pending_up = None
                if venue.up:
                    self.request_status(venue.mic, 0, now)
            if not venue.up:
                continue
            if venue.alive.silent(now):
                silent_ms = (now - venue.alive.last_heard) // 1_000_000
                self._down(venue, f"silent for {silent_ms} ms (heartbeat every "
                                  f"{self.heartbeat_ms} ms)", now, events)
                continue
            if venue.alive.heartbeat_due(now):
                self._transmit(venue, self._encode(Heartbeat(venue.out.last_seq, now)), now)
            self._ask_resend(venue, now)
        return events

    def restore(self, mic: str, *, session_id: str, in_seq: int, out_seq: int,
                sent: Iterable = (), received: Iterable = ()) -> None:
        """Put back a venue's session after Kilat's own restart, from the journal, before the
        venue logs on: ``in_seq`` the last venue seq delivered (and journaled), ``out_seq`` the
        last seq sent to it. ``sent`` are the Kilat sequenced messages of the session (with
        their seq, ending at ``out_seq``; the newest ``resend_capacity`` are kept for resends),
        ``received`` the venue sequenced messages delivered in the session, in order: they
        rebuild the exec-id set and the open child orders. O(messages)."""
        venue = self._venue(mic)
        if venue.up:
            raise RuntimeError(f"restore({mic!r}) must come before the venue logs on")
        sent = sorted(sent, key=lambda m: m.seq)
        if sent and (sent[-1].seq != out_seq
                     or any(b.seq != a.seq + 1 for a, b in zip(sent, sent[1:], strict=False))):
            raise ValueError(f"sent must be consecutive seqs ending at out_seq {out_seq}")
        venue.session_id = session_id
        venue.inp.reset(in_seq + 1)
        venue.out.reset(sent[0].seq - 1 if sent else out_seq)
        venue.execs.clear()
        venue.busted.clear()
        venue.children.clear()
        for message in sent:
            venue.out.keep(message.seq, self._encode(message))
            if isinstance(message, NewChildOrder):
                venue.children[message.child_id] = _Child(message.qty, 0, message.qty, message.seq)
        for message in received:
            self._apply(venue, message)

    def close(self) -> None:
        self._sock.close(0)
        if self._own_context:
            self._ctx.term()

    # -- QUERIES ----------------------------------------------------------------------------------

    @property
    def socket(self) -> zmq.Socket:
        """The ROUTER, for the caller's poller (read it only through ``poll``)."""
        return self._sock

    @property
    def mics(self) -> list[str]:
        return list(self._venues)

    def is_up(self, mic: str) -> bool:
        return self._venue(mic).up

    def routable(self, mic: str) -> bool:
        """Up and open: a router may send new child orders there. O(1)."""
        venue = self._venue(mic)
        return venue.up and venue.state == "open"

    def last_sent(self, mic: str) -> int:
        """Kilat's last seq to the venue (the next ``send`` numbers ``last_sent + 1``). O(1)."""
        return self._venue(mic).out.last_seq

    def last_delivered(self, mic: str) -> int:
        """The venue's last seq ``poll`` delivered (what ``restore`` takes as ``in_seq``). O(1)."""
        return self._venue(mic).inp.last_delivered

    def session_id(self, mic: str) -> str:
        return self._venue(mic).session_id

    def open_children(self, mic: str) -> list[int]:
        """Child orders Kilat holds open at the venue, ascending. O(n log n)."""
        return sorted(self._venue(mic).children)

    def status(self) -> dict[str, VenueStatus]:
        """Every venue's session state and counters. O(venues)."""
        return {
            mic: VenueStatus(
                mic=mic, up=v.up, state=v.state, session_id=v.session_id,
                in_expected=v.inp.expected, out_seq=v.out.last_seq,
                last_heard_ns=v.alive.last_heard, logons=v.logons, delivered=v.delivered,
                duplicates=v.inp.duplicates, duplicate_fills=v.duplicate_fills, gaps=v.inp.gaps,
                resend_requests=v.resend_requests, resent=v.resent, skipped=v.inp.skipped,
                queued=v.queued, open_children=len(v.children),
            )
            for mic, v in self._venues.items()
        }

    # -- INTERNALS: receiving ---------------------------------------------------------------------

    def _venue(self, mic: str) -> _Venue:
        venue = self._venues.get(mic)
        if venue is None:
            raise ValueError(f"unknown venue {mic!r}; this gateway serves {', '.join(self._venues)}")
        return venue

    def _on_frames(self, parts: list, now: int, out: list) -> None:
        frame0 = parts[0]
        identity = frame0 if isinstance(frame0, bytes) else frame0.bytes
        if len(parts) != 2:
            self._refuse(identity, RejectCode.MALFORMED_MESSAGE,
                         f"expected one frame (the message) per send, got {len(parts) - 1}")
            return
        payload = parts[1] if isinstance(parts[1], bytes) else parts[1].bytes
        if len(payload) > self.max_message_bytes:
            self._refuse(identity, RejectCode.MESSAGE_TOO_LARGE,
                         f"a message must be at most {self.max_message_bytes} bytes, got {len(payload)}")
            return
        try:
            message = VENUE_DECODER.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
            code, text, wrong_direction = _why(payload, exc)
            self.stats.wrong_direction += wrong_direction
            self._refuse(identity, code, text)
            return
        if isinstance(message, VenueLogon):
            self._logon(identity, frame0, message, now)
            return
        mic = self._by_identity.get(identity)
        if mic is None:
            self.stats.not_logged_on += 1
            self._refuse(identity, RejectCode.NOT_AUTHORIZED,
                         f"log on first: send VenueLogon before {type(message).__name__}")
            return
        venue = self._venues[mic]
        venue.alive.heard(now)
        if not venue.up:  # heard again without a new logon: the session goes on
            venue.up = True
            venue.pending_up = True
        self._dispatch(venue, message, now, out)
        self._ask_resend(venue, now)

    def _dispatch(self, venue: _Venue, message, now: int, out: list) -> None:
        inp = venue.inp
        if isinstance(message, VENUE_SEQUENCED):
            ready = inp.receive(message.seq, message)
        elif isinstance(message, Heartbeat):
            inp.peer_last(message.seq)
            return
        elif isinstance(message, StatusReport):
            ready = inp.after(message.seq, message)
        elif isinstance(message, ResendRequest):
            inp.peer_last(message.seq)
            self._resend(venue, message, now)
            return
        elif isinstance(message, SequenceReset):
            ready = inp.skip_to(message.new_seq)
            inp.peer_last(message.seq)
        elif isinstance(message, ProtocolError):
            inp.peer_last(message.seq)
            log.warning("venue %s refused a frame from Kilat: %s %s", venue.mic, message.code,
                        message.text)
            return
        else:  # pragma: no cover - the decoder admits nothing else
            raise AssertionError(f"unhandled venue message {type(message).__name__}")
        for item in ready:
            if self._apply(venue, item, now):
                venue.delivered += 1
                out.append((venue.mic, item))

    def _apply(self, venue: _Venue, message, now: int = 0) -> bool:
        """Fold one in-order venue message into the ledger; False if it must not be delivered
        (a fill or bust already seen)."""
        children = venue.children
        if isinstance(message, ChildFilled):
            if not venue.execs.add(message.exec_id, [message.child_id, message.qty, message.price]):
                venue.duplicate_fills += 1
                return False
            child = children.get(message.child_id)
            if child is not None:
                child.cum, child.leaves = message.cum, message.leaves
                if message.leaves <= 0:
                    del children[message.child_id]
        elif isinstance(message, TradeBust):
            if message.exec_id in venue.busted:
                venue.duplicate_fills += 1
                return False
            venue.busted.add(message.exec_id)
            fill = venue.execs.get(message.exec_id)
            child = children.get(message.child_id)
            if fill is not None and child is not None:
                child.cum -= fill[1]
        elif isinstance(message, TradeCorrection):
            fill = venue.execs.get(message.exec_id)
            if fill is not None:
                child = children.get(message.child_id)
                if child is not None:
                    child.cum += message.qty - fill[1]
                fill[1], fill[2] = message.qty, message.price
        elif isinstance(message, ChildCanceled | ChildRejected):
            children.pop(message.child_id, None)
        elif isinstance(message, ChildReplaced):
            child = children.get(message.child_id)
            if child is not None:
                child.qty, child.leaves = message.qty, message.leaves
                if message.leaves <= 0:
                    del children[message.child_id]
        elif isinstance(message, SessionState):
            venue.state = message.state
        elif isinstance(message, StatusReport):
            self._events.append(self._reconcile(venue, message, now))
        return True

    def _reconcile(self, venue: _Venue, report: StatusReport, now: int) -> VenueReconciled:
        """Compare a status report (all venue messages before it already applied) with the
        ledger. Fills the gateway never delivered are recorded as seen now: the caller applies
        them from ``missing_fills``. O(open orders + report)."""
        missing_fills: list[ExecutionRecord] = []
        for fill in report.fills:
            if fill.busted or fill.exec_id in venue.execs:
                continue
            venue.execs.add(fill.exec_id, [fill.child_id, fill.qty, fill.price])
            missing_fills.append(fill)
            child = venue.children.get(fill.child_id)
            if child is not None:
                child.cum += fill.qty
                child.leaves = max(child.leaves - fill.qty, 0)
        at_venue = {o.child_id: o for o in report.orders}
        missing, mismatched = [], []
        for child_id, child in sorted(venue.children.items()):
            if child.out_seq >= report.next_expected:
                continue  # not yet processed by the venue when it wrote the report
            order = at_venue.get(child_id)
            if order is None:
                missing.append(child_id)
            elif (order.cum, order.leaves) != (child.cum, child.leaves):
                mismatched.append(Mismatch(child_id, child.cum, order.cum, child.leaves, order.leaves))
        unknown = sorted(c for c in at_venue if c not in venue.children)
        result = VenueReconciled(venue.mic, report.request_id, missing, unknown, mismatched,
                                 missing_fills, now or report.ts)
        if not result.clean:
            log.warning("venue %s reconciliation: %s", venue.mic, result)
        return result

    def _logon(self, identity: bytes, frame0, logon: VenueLogon, now: int) -> None:
        venue = self._venues.get(logon.mic)
        if venue is None:
            self._refuse_logon(identity, logon.mic, f"unknown MIC {logon.mic!r}; this gateway "
                                                    f"serves {', '.join(self._venues)}")
            return
        if self.user_of is not None:
            user = self.user_of(frame0)
            if user != logon.mic:
                self._refuse_logon(identity, logon.mic, f"this connection is authenticated as "
                                                        f"{user!r}, not as venue {logon.mic!r}")
                return
        if venue.identity is not None and venue.identity != identity:
            self._by_identity.pop(venue.identity, None)  # the new connection takes over
        other = self._by_identity.get(identity)
        if other is not None and other != venue.mic:
            self._venues[other].identity = None  # this connection now speaks for another MIC
        venue.identity = identity
        self._by_identity[identity] = venue.mic
        resumed = True
        if logon.session_id != venue.session_id:
            if venue.session_id:
                log.info("venue %s starts session %r (was %r)", venue.mic, logon.session_id,
                         venue.session_id)
                venue.new_session(logon.session_id)
                resumed = False
            else:
                venue.session_id = logon.session_id
                resumed = venue.inp.expected > 1
        inp, out = venue.inp, venue.out
        if logon.seq < inp.expected - 1:
            log.warning("venue %s says its last seq is %d but Kilat has had %d: the venue lost "
                        "messages; continuing from its numbering", venue.mic, logon.seq,
                        inp.expected - 1)
            inp.reset(logon.seq + 1)
        if logon.next_expected > out.last_seq + 1:
            log.warning("venue %s expects Kilat seq %d but Kilat sent only %d: continuing from "
                        "the venue's numbering", venue.mic, logon.next_expected, out.last_seq)
            out.reset(logon.next_expected - 1)
        inp.peer_last(logon.seq)
        venue.up = True
        venue.logons += 1
        venue.alive.heard(now)
        venue.pending_up = resumed
        self._transmit(venue, self._encode(LogonAccepted(
            out.last_seq, venue.mic, venue.session_id, inp.expected, self.heartbeat_ms, now)), now)
        self._ask_resend(venue, now)

    # -- INTERNALS: sending -----------------------------------------------------------------------

    def _transmit(self, venue: _Venue, frame: bytes, now: int) -> bool:
        if venue.identity is None:
            return False
        try:
            self._sock.send_multipart((venue.identity, frame), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.stats.send_failures += 1
            if exc.errno == zmq.EHOSTUNREACH:  # the connection is gone
                self._by_identity.pop(venue.identity, None)
                venue.identity = None
                if venue.up:
                    self._down(venue, "disconnected", now, self._events)
            return False
        self.stats.sent += 1
        venue.alive.sent(now)
        return True

    def _resend(self, venue: _Venue, request: ResendRequest, now: int) -> None:
        reset_to, frames = venue.out.replay(request.from_seq, request.to_seq)
        if reset_to:
            self._transmit(venue, self._encode(SequenceReset(venue.out.last_seq, reset_to, now)), now)
        for frame in frames:
            if self._transmit(venue, frame, now):
                venue.resent += 1

    def _ask_resend(self, venue: _Venue, now: int) -> None:
        wanted = venue.inp.resend_due(now, venue.alive.interval_ns)
        if wanted is not None:
            venue.resend_requests += 1
            self._transmit(venue, self._encode(
                ResendRequest(venue.out.last_seq, wanted[0], wanted[1], now)), now)

    def _down(self, venue: _Venue, reason: str, now: int, events: list) -> None:
        venue.up = False
        venue.pending_up = None
        log.warning("venue %s is down: %s", venue.mic, reason)
        events.append(VenueDown(venue.mic, reason, sorted(venue.children), now))

    def _refuse(self, identity: bytes, code: int, text: str) -> None:
        self.stats.malformed += 1
        mic = self._by_identity.get(identity)
        last = self._venues[mic].out.last_seq if mic else 0
        frame = self._encode(ProtocolError(last, int(code), text, self.clock()))
        try:
            self._sock.send_multipart((identity, frame), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.stats.send_failures += 1

    def _refuse_logon(self, identity: bytes, mic: str, text: str) -> None:
        self.stats.logons_refused += 1
        log.warning("venue logon refused: %s", text)
        frame = self._encode(LogonRejected(0, mic, int(RejectCode.NOT_AUTHORIZED), text, self.clock()))
        try:
            self._sock.send_multipart((identity, frame), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.stats.send_failures += 1


def _why(payload: bytes, exc: Exception) -> tuple[int, str, bool]:
    """The code and text of a refused venue frame, and whether it was a Kilat-only message (an
    order sent by a venue). Other causes: not msgpack, an unknown message, wrong fields."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        return RejectCode.MALFORMED_MESSAGE, f"not valid msgpack: {err}", False
    tag = raw[0] if isinstance(raw, list) and raw else None
    if isinstance(tag, str) and tag in KILAT_ONLY_TAGS:
        return RejectCode.NOT_AUTHORIZED, (f"{tag} is sent by Kilat to venues, never by a venue; "
                                           f"a venue sends {', '.join(VENUE_TAGS)}"), True
    if not isinstance(tag, str) or tag not in VENUE_TAGS:
        return RejectCode.UNKNOWN_MESSAGE_TYPE, (f"expected an array whose first element names "
                                                 f"the message, one of {', '.join(VENUE_TAGS)}; "
                                                 f"got {tag!r}"), False
    return RejectCode.MALFORMED_MESSAGE, f"invalid {tag}: {exc}", False

