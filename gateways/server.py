"""The order-entry server: a ZeroMQ ROUTER on an asyncio (uvloop) loop.

Wire format (every frame after ZeroMQ's routing identity):

    client -> server:  [request_id, payload]     payload = one msgpack-encoded ClientMessage
    server -> client:  [request_id, payload]     payload = a msgpack array of Reply messages

``request_id`` is any bytes the client chose (at most 64); the server echoes it so the client
can match answers to requests. Execution reports that concern a client's order but were caused
by someone else's command (a maker fill, say) are pushed with an empty ``request_id``.

The server decodes frames with the one typed decoder, stamps the arrival time on commands,
and hands a whole loop batch to its handler, which must make the batch durable before it
returns; only then do replies leave. A frame it cannot understand gets a ``CommandError``
reply and is counted by kind; nothing a client sends can stop the loop.

With ``security`` (CurveZMQ, see ``gateways.auth``) only clients whose public key maps to a
config user complete the handshake, and every ``Request`` carries that user, read from the
message's ``User-Id`` metadata (set by the ZAP handler, so a client cannot choose it).

Overload: each connection has a token bucket (``rate_limit`` frames/s, ``rate_burst`` deep);
a frame beyond it is answered ``THROTTLED`` and never reaches the handler. Memory stays bounded:
ZeroMQ queues at most ``rcvhwm`` messages per connection before it stops reading that peer's
TCP stream (the peer is slowed, nothing is lost), a frame over ``hard_cap`` bytes cuts its
connection unread, and replies beyond ``hwm`` per connection (a peer that never reads) are
dropped and counted, never queued without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from engine.constants import RejectCode
from engine.messages import COMMAND_DECODER, STATE_COMMANDS, ClientMessage, CommandError
from gateways.auth import CurveAuth, ServerSecurity, watch_handshakes

log = logging.getLogger("kilat.gateway")

#: The tags a client may send, for error messages.
CLIENT_TAGS = tuple(t.__struct_config__.tag for t in typing.get_args(ClientMessage))

MAX_REQUEST_ID = 64


class Request(NamedTuple):
    identity: bytes
    request_id: bytes
    message: object  # a ClientMessage, with ``ts`` stamped on state commands
    user: str = ""  # the CURVE-authenticated config user ("" when security is off)


class Outgoing(NamedTuple):
    identity: bytes
    request_id: bytes
    replies: list


#: Takes one loop batch, returns what to send; must not return before the batch is durable.
Handler = Callable[[list[Request]], list[Outgoing]]


class ServerStats(msgspec.Struct):
    received: int = 0  # frames read, whatever became of them
    malformed: int = 0  # answered with a decoding error: the sum of the seven kinds below
    batches: int = 0
    sent: int = 0
    dropped: int = 0  # replies not queued: the peer is gone or over its high-water mark
    throttled: int = 0  # over the connection's rate: THROTTLED, not handled
    unauthenticated: int = 0  # security on but no User-Id on the frame: NOT_AUTHORIZED
    handshakes_failed: int = 0  # CURVE handshakes that failed (plaintext peer, refused key)
    # -- malformed, by kind --
    bad_frame_count: int = 0  # not [identity, request_id, payload]
    bad_request_id: int = 0  # request_id over MAX_REQUEST_ID bytes
    too_large: int = 0  # payload over max_message_bytes
    not_msgpack: int = 0
    unknown_type: int = 0  # not an array whose first element is a client message tag
    invalid_message: int = 0  # a known tag with missing or mistyped fields
    undecodable: int = 0  # the decoder itself failed (a bug; logged with its traceback)


class OrderEntryServer:
    """Binds a ROUTER and runs the receive → handle → reply loop until ``stop()``."""

    def __init__(self, endpoint: str, handler: Handler, *, max_batch: int = 512,
                 max_message_bytes: int = 65_536, hwm: int = 100_000, rcvhwm: int | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 after_send: Callable[[], list[Outgoing]] | None = None,
                 security: ServerSecurity | None = None,
                 rate_limit: float = 50_000.0, rate_burst: int = 10_000):
        """``hwm``: replies queued per connection (SNDHWM); ``rcvhwm`` (default min(hwm, 1000)):
        requests queued per connection before ZeroMQ stops reading it. ``rate_limit``: frames/s
        per connection (0 = no limit), ``rate_burst``: how many may come at once. ``security``:
        CurveZMQ keys and users; the server runs the ZAP handler of its own context."""
        if rate_limit < 0 or rate_burst < 1:
            raise ValueError(f"rate_limit must be >= 0 and rate_burst >= 1, got {rate_limit}, {rate_burst}")
        self.endpoint = endpoint
        self.handler = handler
        self.after_send = after_send  # work that may follow the replies (it may push more)
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.stats = ServerStats()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, min(hwm, 1_000) if rcvhwm is None else rcvhwm)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        # Frames up to the hard cap are read and, if over max_message_bytes, answered with an
        # error; a frame beyond it makes ZeroMQ drop that peer's connection before reading it.
        self.hard_cap = max(1 << 18, 4 * max_message_bytes)
        self._sock.setsockopt(zmq.MAXMSGSIZE, self.hard_cap)
        # Mandatory routing: a reply that cannot be queued raises (and is counted) instead of
        # vanishing silently inside ZeroMQ.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        #: The ZAP handler of this server's context (None without security).
        self.auth: CurveAuth | None = None
        self._monitor: zmq.Socket | None = None
        if security is not None:
            self.auth = security.start_auth(self._ctx)
            security(self._sock)
            self._monitor = watch_handshakes(self._sock)
        self._buckets: dict[bytes, list] = {}  # identity -> [tokens, last refill (monotonic ns)]
        self._pruned_ns = 0
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stopping = asyncio.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self.lock = asyncio.Lock()  # held while a batch is handled; timers take it too

    # -- COMMANDS --

    async def serve(self) -> None:
        """Run the loop until ``stop()``. Each turn drains up to ``max_batch`` frames.

        ZeroMQ's file descriptor is edge-triggered and any socket operation (a send included)
        may consume its edge, so the loop always asks ``ZMQ_EVENTS`` before it waits: it only
        sleeps on the descriptor when the socket itself says nothing is readable.
        """
        sock, monitor = self._sock, self._monitor
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        fds = [sock.getsockopt(zmq.FD)]
        if monitor is not None:
            fds.append(monitor.getsockopt(zmq.FD))
        for fd in fds:
            loop.add_reader(fd, wake.set)
        drain = self._drain_secure if monitor is not None else self._drain_plain
        try:
            while not self._stopping.is_set():
                if monitor is not None and monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._count_handshake_failures()
                frames, users = drain()
                if frames:
                    await self._handle_frames(frames, users)
                    await asyncio.sleep(0)  # let timers run between batches
                    continue
                wake.clear()
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN or (
                        monitor is not None and monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN):
                    continue
                waiter = asyncio.ensure_future(wake.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            for fd in fds:
                loop.remove_reader(fd)

    def send(self, outgoing: list[Outgoing]) -> None:
        """Send replies or pushes. Never blocks: a peer that is gone or over its high-water
        mark loses the message (counted), the loop goes on."""
        encode = self._encoder.encode
        send = self._sock.send_multipart
        stats = self.stats
        for identity, request_id, replies in outgoing:
            try:
                send([identity, request_id, encode(replies)], flags=zmq.NOBLOCK)
                stats.sent += 1
            except zmq.ZMQError as exc:
                stats.dropped += 1
                if stats.dropped & (stats.dropped - 1) == 0:  # 1, 2, 4, 8, ...: no log flood
                    log.warning("reply to %r dropped (%d dropped so far): %s", identity,
                                stats.dropped, exc)

    def stop(self) -> None:
        self._stopping.set()

    # -- QUERIES --

    @property
    def rate_buckets(self) -> int:
        """Connections whose rate bucket is remembered (those not full again). O(1)."""
        return len(self._buckets)

    # -- LIFECYCLE --

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(0)
        self._sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self._ctx.term()

    # -- INTERNALS --

    def _drain(self, with_users: bool) -> tuple[list[list[bytes]], list[str] | None]:
        """Up to max_batch frames as bytes, and with ``with_users`` the User-Id of each message
        (the first part's metadata; every part carries its connection's): ~0.5 µs more per
        message. O(frames). It reads until ``Again`` instead of asking ZMQ_EVENTS before each
        frame, and follows ``frame.more`` (set by pyzmq in C) instead of a Python-level
        ZMQ_RCVMORE after each part as ``recv_multipart`` does: 0.4× the cost of the drain it
        replaced (benchmarks/bench_curve.py)."""
        frames, limit = [], self.max_batch
        users: list[str] | None = [] if with_users else None
        recv = self._sock.recv
        try:
            while len(frames) < limit:
                frame = recv(zmq.NOBLOCK, copy=False)
                if users is not None:
                    try:
                        users.append(frame.get("User-Id"))
                    except zmq.ZMQError:  # no metadata: not an authenticated connection
                        users.append("")
                parts = [frame.bytes]
                while frame.more:  # the parts of one message arrive together
                    frame = recv(0, copy=False)
                    parts.append(frame.bytes)
                frames.append(parts)
        except zmq.Again:
            pass
        return frames, users

    def _drain_plain(self) -> tuple[list[list[bytes]], None]:
        return self._drain(False)

    def _drain_secure(self) -> tuple[list[list[bytes]], list[str]]:
        return self._drain(True)

    def _count_handshake_failures(self) -> None:
        monitor, stats = self._monitor, self.stats
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
            stats.handshakes_failed += 1
            if stats.handshakes_failed & (stats.handshakes_failed - 1) == 0:
                log.warning("CURVE handshake failed on %s: %s (value %s; %d failed so far)",
                            event["endpoint"].decode(errors="replace"),
                            zmq.Event(event["event"]).name, event["value"], stats.handshakes_failed)

    def _throttle(self, frames: list[list[bytes]], errors: list[Outgoing]) -> list[bool]:
        """One token per frame from its connection's bucket; a frame without one is answered
        THROTTLED. Returns which frames passed. O(frames); stale buckets pruned once a second."""
        now = time.monotonic_ns()
        rate_ns, burst, buckets, stats = self.rate_limit / 1e9, self.rate_burst, self._buckets, self.stats
        passed = []
        for parts in frames:
            bucket = buckets.get(parts[0])
            if bucket is None:
                bucket = buckets[parts[0]] = [float(burst), now]
            elif bucket[1] != now:
                tokens = bucket[0] + (now - bucket[1]) * rate_ns
                bucket[0] = tokens if tokens < burst else float(burst)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                passed.append(True)
                continue
            passed.append(False)
            stats.throttled += 1
            rid = parts[1] if len(parts) == 3 and len(parts[1]) <= MAX_REQUEST_ID else b""
            errors.append(Outgoing(parts[0], rid, [CommandError(
                int(RejectCode.THROTTLED),
                f"over this connection's limit of {self.rate_limit:g} messages/s (burst "
                f"{burst}); the message was not processed, send it again later")]))
        if now - self._pruned_ns > 1_000_000_000:
            self._pruned_ns = now
            self._buckets = {k: b for k, b in buckets.items() if b[0] + (now - b[1]) * rate_ns < burst}
        return passed

    async def _handle_frames(self, frames: list[list[bytes]], users: list[str] | None = None) -> None:
        requests: list[Request] = []
        errors: list[Outgoing] = []
        now = self.clock()
        stats = self.stats
        stats.received += len(frames)
        passed = self._throttle(frames, errors) if self.rate_limit else None
        for i, parts in enumerate(frames):
            if passed is not None and not passed[i]:
                continue
            user = ""
            if users is not None:
                user = users[i]
                if not user:
                    stats.unauthenticated += 1
                    errors.append(Outgoing(parts[0], b"", [CommandError(
                        int(RejectCode.NOT_AUTHORIZED), "this connection has no authenticated user")]))
                    continue
            try:
                request = self._decode(parts, now, user)
            except Exception:  # a decoding bug must cost one frame, never the loop
                log.exception("frame from %r could not be decoded", parts[0])
                stats.undecodable += 1
                rid = parts[1] if len(parts) == 3 and len(parts[1]) <= MAX_REQUEST_ID else b""
                request = Outgoing(parts[0], rid, [CommandError(
                    int(RejectCode.MALFORMED_MESSAGE), "the frame could not be decoded")])
            if isinstance(request, Request):
                requests.append(request)
            elif request is not None:
                stats.malformed += 1
                errors.append(request)
        async with self.lock:
            outgoing = self.handler(requests) if requests else []
        self.stats.batches += 1
        self.send(errors + outgoing)
        if requests and self.after_send is not None:
            async with self.lock:
                later = self.after_send()
            if later:
                self.send(later)

    def _decode(self, parts: list[bytes], now: int, user: str = "") -> Request | Outgoing:
        """A Request, or the error reply for a malformed frame (its kind counted)."""
        identity = parts[0]
        stats = self.stats
        if len(parts) != 3:
            stats.bad_frame_count += 1
            request_id = parts[1] if len(parts) > 1 and len(parts[1]) <= MAX_REQUEST_ID else b""
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MALFORMED_MESSAGE),
                f"expected 2 frames [request_id, payload] after the identity, got {len(parts) - 1}",
            )])
        _, request_id, payload = parts
        if len(request_id) > MAX_REQUEST_ID:
            stats.bad_request_id += 1
            return Outgoing(identity, b"", [CommandError(
                int(RejectCode.MALFORMED_MESSAGE),
                f"request_id must be at most {MAX_REQUEST_ID} bytes, got {len(request_id)}",
            )])
        if len(payload) > self.max_message_bytes:
            stats.too_large += 1
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MESSAGE_TOO_LARGE),
                f"payload must be at most {self.max_message_bytes} bytes, got {len(payload)}",
            )])
        try:
            message = COMMAND_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            kind, error = _invalid(payload, exc)
            setattr(stats, kind, getattr(stats, kind) + 1)
            return Outgoing(identity, request_id, [error])
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            stats.not_msgpack += 1
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MALFORMED_MESSAGE), f"payload is not valid msgpack: {exc}")])
        if isinstance(message, STATE_COMMANDS):
            message = msgspec.structs.replace(message, ts=now)
        return Request(identity, request_id, message, user)


def _invalid(payload: bytes, exc: msgspec.ValidationError) -> tuple[str, CommandError]:
    """Say whether the message type is unknown or its fields are wrong; with the stats kind.
    (The typed decoder may stop at a wrong type before it reaches bytes that are not msgpack.)"""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        return "not_msgpack", CommandError(int(RejectCode.MALFORMED_MESSAGE),
                                           f"payload is not valid msgpack: {err}")
    tag = raw[0] if isinstance(raw, list) and raw else None
    if not isinstance(tag, str) or tag not in CLIENT_TAGS:
        return "unknown_type", CommandError(
            int(RejectCode.UNKNOWN_MESSAGE_TYPE),
            f"expected an array whose first element names the message, one of "
            f"{', '.join(CLIENT_TAGS)}; got {tag!r}",
        )
    return "invalid_message", CommandError(int(RejectCode.MALFORMED_MESSAGE), f"invalid {tag}: {exc}")
