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
reply and is counted; nothing a client sends can stop the loop.
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

from engine.constants import RejectCode
from engine.messages import COMMAND_DECODER, STATE_COMMANDS, ClientMessage, CommandError

log = logging.getLogger("kilat.gateway")

#: The tags a client may send, for error messages.
CLIENT_TAGS = tuple(t.__struct_config__.tag for t in typing.get_args(ClientMessage))

MAX_REQUEST_ID = 64


class Request(NamedTuple):
    identity: bytes
    request_id: bytes
    message: object  # a ClientMessage, with ``ts`` stamped on state commands


class Outgoing(NamedTuple):
    identity: bytes
    request_id: bytes
    replies: list


#: Takes one loop batch, returns what to send; must not return before the batch is durable.
Handler = Callable[[list[Request]], list[Outgoing]]


class ServerStats(msgspec.Struct):
    received: int = 0
    malformed: int = 0
    batches: int = 0
    sent: int = 0
    dropped: int = 0


class OrderEntryServer:
    """Binds a ROUTER and runs the receive → handle → reply loop until ``stop()``."""

    def __init__(self, endpoint: str, handler: Handler, *, max_batch: int = 512,
                 max_message_bytes: int = 65_536, hwm: int = 100_000,
                 clock: Callable[[], int] = time.time_ns,
                 after_send: Callable[[], list[Outgoing]] | None = None):
        self.endpoint = endpoint
        self.handler = handler
        self.after_send = after_send  # work that may follow the replies (it may push more)
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.stats = ServerStats()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        # Frames up to the hard cap are read and, if over max_message_bytes, answered with an
        # error; a frame beyond it makes ZeroMQ drop that peer's connection before reading it.
        self.hard_cap = max(1 << 20, 16 * max_message_bytes)
        self._sock.setsockopt(zmq.MAXMSGSIZE, self.hard_cap)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._sock.bind(endpoint)
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
        sock = self._sock
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        fd = sock.getsockopt(zmq.FD)
        loop.add_reader(fd, wake.set)
        try:
            while not self._stopping.is_set():
                frames = []
                while len(frames) < self.max_batch and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    frames.append(sock.recv_multipart(flags=zmq.NOBLOCK, copy=True))
                if frames:
                    await self._handle_frames(frames)
                    await asyncio.sleep(0)  # let timers run between batches
                    continue
                wake.clear()
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    continue
                waiter = asyncio.ensure_future(wake.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            loop.remove_reader(fd)

    def send(self, outgoing: list[Outgoing]) -> None:
        """Send replies or pushes. Never blocks: a peer that is gone or over its high-water
        mark loses the message (counted), the loop goes on."""
        encode = self._encoder.encode
        send = self._sock.send_multipart
        for identity, request_id, replies in outgoing:
            try:
                send([identity, request_id, encode(replies)], flags=zmq.NOBLOCK)
                self.stats.sent += 1
            except zmq.ZMQError as exc:
                self.stats.dropped += 1
                log.warning("reply to %r dropped: %s", identity, exc)

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    # -- INTERNALS --

    async def _handle_frames(self, frames: list[list[bytes]]) -> None:
        requests: list[Request] = []
        errors: list[Outgoing] = []
        now = self.clock()
        for parts in frames:
            self.stats.received += 1
            try:
                request = self._decode(parts, now)
            except Exception:  # a decoding bug must cost one frame, never the loop
                log.exception("frame from %r could not be decoded", parts[0])
                rid = parts[1] if len(parts) == 3 and len(parts[1]) <= MAX_REQUEST_ID else b""
                request = Outgoing(parts[0], rid, [CommandError(
                    int(RejectCode.MALFORMED_MESSAGE), "the frame could not be decoded")])
            if isinstance(request, Request):
                requests.append(request)
            elif request is not None:
                self.stats.malformed += 1
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

    def _decode(self, parts: list[bytes], now: int) -> Request | Outgoing | None:
        identity = parts[0]
        if len(parts) != 3:
            request_id = parts[1] if len(parts) > 1 and len(parts[1]) <= MAX_REQUEST_ID else b""
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MALFORMED_MESSAGE),
                f"expected 2 frames [request_id, payload] after the identity, got {len(parts) - 1}",
            )])
        _, request_id, payload = parts
        if len(request_id) > MAX_REQUEST_ID:
            return Outgoing(identity, b"", [CommandError(
                int(RejectCode.MALFORMED_MESSAGE),
                f"request_id must be at most {MAX_REQUEST_ID} bytes, got {len(request_id)}",
            )])
        if len(payload) > self.max_message_bytes:
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MESSAGE_TOO_LARGE),
                f"payload must be at most {self.max_message_bytes} bytes, got {len(payload)}",
            )])
        try:
            message = COMMAND_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            return Outgoing(identity, request_id, [_invalid(payload, exc)])
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return Outgoing(identity, request_id, [CommandError(
                int(RejectCode.MALFORMED_MESSAGE), f"payload is not valid msgpack: {exc}")])
        if isinstance(message, STATE_COMMANDS):
            message = msgspec.structs.replace(message, ts=now)
        return Request(identity, request_id, message)


def _invalid(payload: bytes, exc: msgspec.ValidationError) -> CommandError:
    """Say whether the message type is unknown or its fields are wrong."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        return CommandError(int(RejectCode.MALFORMED_MESSAGE), f"payload is not valid msgpack: {err}")
    tag = raw[0] if isinstance(raw, list) and raw else None
    if not isinstance(tag, str) or tag not in CLIENT_TAGS:
        return CommandError(
            int(RejectCode.UNKNOWN_MESSAGE_TYPE),
            f"expected an array whose first element names the message, one of "
            f"{', '.join(CLIENT_TAGS)}; got {tag!r}",
        )
    return CommandError(int(RejectCode.MALFORMED_MESSAGE), f"invalid {tag}: {exc}")
