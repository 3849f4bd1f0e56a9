"""The drop copy: every engine event, numbered, streamed on a PUB socket and replayable.

Three parts, wired by ``DropCopy`` (the service calls it after each durable batch):

- ``DropCopyLog``: Kilat's own append-only file of every published event, each with its global
  ``seq`` (1, 2, 3, ... with no holes, across restarts) and the journal record that caused it.
  It answers "the events after seq N" from an in-memory index of file offsets.
- ``DropCopyPublisher``: an XPUB socket. Each event goes out as two frames ``[topic, payload]``
  (payload: a msgpack ``DropCopyEvent``) once per topic family -- ``A:<account>|``,
  ``I:<symbol>|``, ``T:<EventType>|`` and ``*|`` (all) -- so a subscriber filters by prefix on
  any of them. A family nobody subscribes to is not sent (the XPUB sees the subscriptions).
  ``~|`` carries heartbeats: the last seq published, as a msgpack integer.
- ``DropCopyClient``: a SUB to the publisher plus a DEALER to the order-entry ROUTER. It asks
  ``QueryDropCopy`` for what it missed (at start, on a hole in seq, on a heartbeat ahead of it)
  and delivers every event once, in seq order.

Durability: the journal is the truth. The log is written (one ``write()`` per batch, no fsync)
before its events are published, after the journal's group commit; if the process dies between
the two, ``DropCopy.catch_up`` regenerates the missing events at start-up by replaying the
journal records after the log's last one, and they get the seqs they would have had. The file
format, the topics and the recovery protocol for a client in any language are in
``docs/dropcopy.md``.

Everything here runs on one thread (the service loop); nothing is thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import time
import typing
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec
import zmq

from engine.constants import RejectCode
from engine.journal import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    JournalCorruptError,
    JournalWriter,
    read_journal,
)
from engine.messages import (
    JOURNAL_DECODER,
    CommandError,
    DeniedOrder,
    DropCopyEvent,
    DropCopyEvents,
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderExpired,
    OrderFilled,
    OrderHeld,
    OrderRejected,
    QueryDropCopy,
    Reply,
    SubmitOrder,
)
from engine.snapshot import SnapshotCorruptError, list_snapshots, read_snapshot
from gateways.client import KilatTimeout

__all__ = [
    "ALL_TOPIC",
    "HEARTBEAT_TOPIC",
    "MAX_QUERY_LIMIT",
    "CatchUpReport",
    "ClientStats",
    "DropCopy",
    "DropCopyAheadError",
    "DropCopyClient",
    "DropCopyError",
    "DropCopyLog",
    "DropCopyPublisher",
    "PublisherStats",
    "event_topics",
    "topic_matches",
]

log = logging.getLogger("kilat.dropcopy")

#: The topic every event is published on (subscribe to it for the whole stream).
ALL_TOPIC = b"*|"
#: Heartbeats: payload = the last seq published (a msgpack integer). Its first byte sorts after
#: every family's, so ZeroMQ sends this subscription after the others (see docs/dropcopy.md).
HEARTBEAT_TOPIC = b"~|"
#: The most events one ``QueryDropCopy`` answer carries; a larger limit is cut to this.
MAX_QUERY_LIMIT = 10_000
#: The log keeps a file offset every this many seqs: a read scans at most this many events more.
INDEX_EVERY = 1_024
#: Events per log record at most (a batch with more is split over several records).
CHUNK_EVENTS = 4_096
#: Records without events advance the log's position on disk once this many have gone by.
WATERMARK_EVERY = 10_000

#: The engine events the drop copy carries (replies such as CommandDone are not events).
EVENT_TYPES = frozenset(typing.get_args(Event))
_TAGS = {kind: kind.__struct_config__.tag.encode() for kind in EVENT_TYPES}
_TERMINAL = (OrderCanceled, OrderExpired, OrderRejected)

# A log record's payload starts with: first seq | event count | resume record | resume skip,
# then a msgpack array of DropCopyEvent. "Resume" is where the log stands in the journal after
# this record: every event of records < resume record is in the log, and the first ``skip``
# events of the resume record itself.
_PREFIX = struct.Struct("<QIQI")
# The journal's record header (docs/journal.md): payload length | CRC-32 | seq. engine.journal
# writes the log; it has no reader that starts at an offset, so reads parse the header here.
_FRAME = struct.Struct("<IIQ")
_CRC_START = 8  # the CRC covers the seq bytes and the payload
_BLOCK = 1 << 18  # bytes read at once

if _FRAME.size != RECORD_HEADER_SIZE:  # pragma: no cover - a journal format change
    raise ImportError(f"the journal record header is {RECORD_HEADER_SIZE} bytes, this module "
                      f"reads {_FRAME.size}: update gateways/dropcopy.py with docs/journal.md")


# -- TOPICS ---------------------------------------------------------------------------------------


def event_topics(event: DropCopyEvent) -> list[bytes]:
    """The PUB topics of one event: account, instrument and type families (the first two only
    when it has one), then ``*|``. O(1)."""
    topics = []
    if event.account:
        topics.append(b"A:" + event.account.encode() + b"|")
    if event.symbol:
        topics.append(b"I:" + event.symbol.encode() + b"|")
    topics.append(b"T:" + _TAGS[type(event.event)] + b"|")
    topics.append(ALL_TOPIC)
    return topics


def topic_matches(topics: Iterable[bytes], subscriptions: Iterable[bytes]) -> bool:
    """Whether a ZeroMQ SUB with ``subscriptions`` (prefixes) receives any of ``topics``."""
    subscriptions = tuple(subscriptions)
    return any(t.startswith(s) for t in topics for s in subscriptions)


# -- THE LOG ----------------------------------------------------------------------------------------


class DropCopyLog:
    """The append-only file of every drop copy event, with its seq and journal record.

    Records are written through ``engine.journal.JournalWriter`` (length-prefixed, CRC-checked,
    a torn tail cut on open, one writer per file by lock) with ``fsync=False``: ``commit`` makes
    one ``write()`` and no fsync. The journal, fsynced before any event exists, is the durable
    record; ``DropCopy.catch_up`` rebuilds what a crash took from this file.

    Opening reads the whole file once (O(file)) to find the last seq, where the log stands in
    the journal, and a file offset every ``index_every`` seqs.
    """

    def __init__(self, path: Path | str, *, index_every: int = INDEX_EVERY,
                 chunk_events: int = CHUNK_EVENTS, watermark_every: int = WATERMARK_EVERY):
        if index_every < 1 or chunk_events < 1 or watermark_every < 1:
            raise ValueError("index_every, chunk_events and watermark_every must be >= 1, got "
                             f"{index_every}, {chunk_events}, {watermark_every}")
        self.path = Path(path)
        self.index_every = index_every
        self.chunk_events = chunk_events
        self.watermark_every = watermark_every
        self._writer = JournalWriter(self.path, fsync=False)  # verifies it, cuts a torn tail
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._firsts = array("q")  # first seq of an indexed record
        self._offsets = array("q")  # its byte offset
        self._end = FILE_HEADER_SIZE  # end of the last committed record
        self._last_seq = 0
        self._resume = (1, 0)  # on disk: (record, skip), see _PREFIX
        self._pending: list[DropCopyEvent] = []
        self._pending_resume = (1, 0)  # after the pending appends
        self._encoder = msgspec.msgpack.Encoder()
        self._decode_events = msgspec.msgpack.Decoder(list[DropCopyEvent]).decode
        try:
            self._scan()
        except BaseException:  # corrupt: leave the file as it is
            self._writer.close()
            os.close(self._fd)
            self._fd = -1
            raise
        self._pending_resume = self._resume

    # -- QUERIES --

    @property
    def last_seq(self) -> int:
        """The seq of the last committed event (0: none yet). O(1)."""
        return self._last_seq

    @property
    def last_record(self) -> int:
        """Every journal record up to this one has all its events in the file. O(1)."""
        return self._resume[0] - 1

    @property
    def resume(self) -> tuple[int, int]:
        """``(record, skip)``: the first journal record not wholly in the file, and how many of
        its events are (a batch bigger than ``chunk_events`` is cut mid-record). O(1)."""
        return self._resume

    @property
    def next_record(self) -> int:
        """The lowest journal record ``append`` accepts now (pending appends included). O(1)."""
        return self._pending_resume[0]

    @property
    def index_size(self) -> int:
        """Offsets kept in memory: about last_seq / index_every. O(1)."""
        return len(self._firsts)

    def read_after(self, seq: int, limit: int) -> list[DropCopyEvent]:
        """Committed events with seq > ``seq``, oldest first, at most ``limit``.

        O(log(index) + index_every + limit): a bisect of the offset index, then a scan that
        decodes only the records holding the events asked for.
        """
        if seq < 0 or limit < 1:
            raise ValueError(f"read_after needs seq >= 0 and limit >= 1, got {seq}, {limit}")
        target = seq + 1
        if target > self._last_seq:
            return []
        i = bisect_right(self._firsts, target) - 1
        out: list[DropCopyEvent] = []
        unpack = _PREFIX.unpack_from
        for _, payload in self._records(self._offsets[i], self._end):
            first, count, _, _ = unpack(payload)
            if not count or first + count <= target:
                continue
            events = self._decode_events(payload[_PREFIX.size:])
            start = max(0, target - first)
            out.extend(events[start:start + limit - len(out)])
            if len(out) >= limit:
                break
        return out

    # -- COMMANDS --

    def append(self, record_seq: int, events: Sequence, keys: Sequence[tuple[str, str]] | None = None,
               ) -> list[DropCopyEvent]:
        """Number ``events`` (all the remaining events of journal record ``record_seq``) and
        buffer them; returns them as ``DropCopyEvent``s. ``keys``: ``(account, symbol)`` per
        event (default: the event's own fields). Not written until ``commit``. O(events).

        Records come in increasing order; the one the log stands at (``resume``) may be
        continued (a catch-up completing a record cut mid-way).
        """
        record, skip = self._pending_resume
        if record_seq < record:
            raise ValueError(f"journal record {record_seq} is already in the drop copy log "
                             f"(it stands at record {record}, {skip} events in): records must "
                             "come once, in increasing order")
        if keys is not None and len(keys) != len(events):
            raise ValueError(f"{len(keys)} keys for {len(events)} events")
        seq = self._last_seq + len(self._pending)
        out = []
        for k, event in enumerate(events):
            seq += 1
            if keys is None:
                account, symbol = getattr(event, "account", ""), getattr(event, "symbol", "")
            else:
                account, symbol = keys[k]
            out.append(DropCopyEvent(seq, record_seq, account or "", symbol or "", event))
        self._pending.extend(out)
        self._pending_resume = (record_seq + 1, 0)
        return out

    def commit(self, through_record: int = 0, *, force: bool = False) -> int:
        """Write what was appended, in records of at most ``chunk_events`` events, with one
        ``write()`` (no fsync); returns ``last_seq``. ``through_record``: every journal record up
        to it has been appended (those without events too). With no events, the position is
        written only every ``watermark_every`` records, or with ``force``. O(events)."""
        resume = max(self._pending_resume, (through_record + 1, 0))
        self._pending_resume = resume
        pending = self._pending
        if not pending:
            if resume > self._resume and (force or resume[0] - self._resume[0] >= self.watermark_every):
                self._write([(self._last_seq + 1, [], resume)])
            return self._last_seq
        chunks = []
        n, step = len(pending), self.chunk_events
        for i in range(0, n, step):
            j = min(i + step, n)
            if j == n:
                after = resume
            else:
                r = pending[j - 1].record
                if pending[j].record != r:
                    after = (r + 1, 0)
                else:  # the chunk ends inside record r: say how many of r's events are in
                    k = j - 1
                    while k > i and pending[k - 1].record == r:
                        k -= 1
                    if k > i:  # r starts in this chunk
                        earlier = 0
                    elif chunks:  # r runs on from the previous chunk
                        earlier = chunks[-1][2][1]
                    else:  # r runs on from the file (a catch-up completing it)
                        earlier = self._resume[1] if self._resume[0] == r else 0
                    after = (r, earlier + j - k)
            chunks.append((pending[i].seq, pending[i:j], after))
        self._write(chunks)
        pending.clear()
        return self._last_seq

    def close(self) -> None:
        """Write what is pending and the log's position, then close the file. Idempotent."""
        if self._fd < 0:
            return
        try:
            if not self._writer.closed:
                self.commit(force=True)
        finally:
            self._writer.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DropCopyLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"DropCopyLog({str(self.path)!r}, last_seq={self._last_seq}, "
                f"last_record={self.last_record})")

    # -- INTERNALS --

    def _write(self, chunks: list[tuple[int, list[DropCopyEvent], tuple[int, int]]]) -> None:
        encode_into = self._encoder.encode_into
        payloads = []
        for first, events, (record, skip) in chunks:
            payload = bytearray(_PREFIX.size)
            _PREFIX.pack_into(payload, 0, first, len(events), record, skip)
            encode_into(events, payload, _PREFIX.size)
            payloads.append(payload)
        self._writer.append_many(payloads)
        self._writer.commit()
        for (first, events, resume), payload in zip(chunks, payloads, strict=True):
            self._note(self._end, first, len(events), resume)
            self._end += RECORD_HEADER_SIZE + len(payload)

    def _note(self, offset: int, first: int, count: int, resume: tuple[int, int]) -> None:
        if count and (not self._firsts or first - self._firsts[-1] >= self.index_every):
            self._firsts.append(first)
            self._offsets.append(offset)
        self._last_seq = first + count - 1
        self._resume = resume

    def _scan(self) -> None:
        size = os.fstat(self._fd).st_size
        for offset, payload in self._records(FILE_HEADER_SIZE, size):
            if len(payload) < _PREFIX.size:
                raise JournalCorruptError(self.path, offset, f"a drop copy record needs a "
                                          f"{_PREFIX.size}-byte prefix, this one has {len(payload)} bytes")
            first, count, record, skip = _PREFIX.unpack_from(payload)
            if first != self._last_seq + 1:
                raise JournalCorruptError(self.path, offset, f"drop copy seq {first} follows "
                                          f"{self._last_seq}: the seqs must be consecutive")
            if (record, skip) < self._resume:
                raise JournalCorruptError(self.path, offset, f"the journal position goes back "
                                          f"from {self._resume} to {(record, skip)}")
            self._note(offset, first, count, (record, skip))
            self._end = offset + RECORD_HEADER_SIZE + len(payload)

    def _records(self, offset: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """``(offset, payload)`` of each record from ``offset`` up to ``end``, CRC-checked,
        read in blocks of ``_BLOCK`` bytes."""
        fd, head = self._fd, _FRAME.size
        view = memoryview(b"")
        base = offset  # view holds the file's bytes from base
        while offset < end:
            rel = offset - base
            if rel + head > len(view):
                view, base, rel = memoryview(os.pread(fd, _BLOCK, offset)), offset, 0
            if rel + head > len(view):
                raise JournalCorruptError(self.path, offset, "record header cut short")
            length, crc, _ = _FRAME.unpack_from(view, rel)
            stop = rel + head + length
            if stop > len(view):
                view, base, rel = memoryview(os.pread(fd, max(_BLOCK, head + length), offset)), offset, 0
                stop = head + length
                if stop > len(view):
                    raise JournalCorruptError(self.path, offset, f"payload of {length} bytes cut short")
            if zlib.crc32(view[rel + _CRC_START:stop]) != crc:
                raise JournalCorruptError(self.path, offset, "CRC mismatch in a drop copy record")
            yield offset, view[rel + head:stop]
            offset += head + length


# -- THE PUBLISHER ----------------------------------------------------------------------------------


class PublisherStats(msgspec.Struct):
    events: int = 0  # events published
    messages: int = 0  # PUB messages sent: an event goes once per topic family someone wants
    skipped: int = 0  # copies not sent because no subscription can match their family
    dropped: int = 0  # sends ZeroMQ refused (EAGAIN); per-subscriber HWM drops are silent
    heartbeats: int = 0
    bytes: int = 0  # payload bytes sent


# Topic families: account, instrument, type, all, heartbeat.
_FAMILIES = (b"A:", b"I:", b"T:", ALL_TOPIC, HEARTBEAT_TOPIC)


class DropCopyPublisher:
    """Binds an XPUB (a PUB that also reads its subscribers' subscriptions) and sends events.

    ZeroMQ drops messages for a subscriber whose queue (``hwm`` messages) is full, silently and
    per subscriber; the subscriber sees the hole in seq and asks the ROUTER for it. Sends never
    block. ``configure(socket)`` runs before ``bind`` (CURVE keys, socket options).
    """

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None,
                 configure: Callable[[zmq.Socket], None] | None = None, hwm: int = 100_000):
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        try:
            if configure is not None:
                configure(self._sock)
            self._sock.bind(endpoint)
        except BaseException:
            self.close()
            raise
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats = PublisherStats()
        #: Topics at least one subscriber asked for (XPUB reports each once, and its removal
        #: once the last subscriber drops it).
        self.subscriptions: set[bytes] = set()
        self._wanted = [False] * len(_FAMILIES)
        self._encode = msgspec.msgpack.Encoder().encode
        self._topic_cache: dict[tuple[bytes, str], bytes] = {}

    # -- COMMANDS --

    def publish(self, events: Sequence[DropCopyEvent]) -> int:
        """Send each event once per wanted topic family, in order; returns messages sent.
        O(events × wanted families); see docs/dropcopy.md for the cost per message."""
        self._refresh()
        want_a, want_i, want_t, want_all, _ = self._wanted
        stats = self.stats
        stats.events += len(events)
        possible = sent = size = 0
        if want_a or want_i or want_t or want_all:
            send, encode, topic = self._sock.send, self._encode, self._topic
            more, last = zmq.SNDMORE | zmq.NOBLOCK, zmq.NOBLOCK
            for event in events:
                payload = encode(event)
                targets = []
                if event.account:
                    possible += 1
                    if want_a:
                        targets.append(topic(b"A:", event.account))
                if event.symbol:
                    possible += 1
                    if want_i:
                        targets.append(topic(b"I:", event.symbol))
                if want_t:
                    targets.append(b"T:" + _TAGS[type(event.event)] + b"|")
                if want_all:
                    targets.append(ALL_TOPIC)
                possible += 2
                for t in targets:
                    try:
                        send(t, more)
                    except zmq.Again:  # a multipart message is refused whole, at its first frame
                        stats.dropped += 1
                        possible -= 1
                        continue
                    send(payload, last)
                    sent += 1
                    size += len(payload)
        else:
            possible = sum(2 + bool(e.account) + bool(e.symbol) for e in events)
        stats.messages += sent
        stats.bytes += size
        stats.skipped += possible - sent
        return sent

    def heartbeat(self, last_seq: int) -> bool:
        """Send ``last_seq`` on ``~|`` if anyone listens; returns whether it was sent. O(1)."""
        self._refresh()
        if not self._wanted[4]:
            return False
        try:
            self._sock.send_multipart([HEARTBEAT_TOPIC, self._encode(last_seq)], zmq.NOBLOCK)
        except zmq.Again:
            self.stats.dropped += 1
            return False
        self.stats.heartbeats += 1
        return True

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> DropCopyPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- INTERNALS --

    def _topic(self, family: bytes, key: str) -> bytes:
        topic = self._topic_cache.get((family, key))
        if topic is None:
            if len(self._topic_cache) > 100_000:
                self._topic_cache.clear()
            topic = self._topic_cache[(family, key)] = family + key.encode() + b"|"
        return topic

    def _refresh(self) -> None:
        """Read the (un)subscriptions the XPUB queued; O(messages queued)."""
        recv, changed = self._sock.recv, False
        while True:
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message[:1] == b"\x01":
                self.subscriptions.add(message[1:])
                changed = True
            elif message[:1] == b"\x00":
                self.subscriptions.discard(message[1:])
                changed = True
        if changed:
            subs = self.subscriptions
            self._wanted = [any(s.startswith(f) or f.startswith(s) for s in subs) for f in _FAMILIES]


# -- THE DROP COPY ----------------------------------------------------------------------------------


class CatchUpReport(msgspec.Struct, frozen=True):
    snapshot_seq: int  # the snapshot the replay started from (0: the journal's start)
    replayed: int  # journal records re-applied only to rebuild state (no events kept)
    regenerated: int  # journal records whose events were regenerated and appended
    events: int  # drop copy events appended
    journal_last_seq: int
    last_seq: int  # the drop copy's last seq afterwards
    seconds: float


class DropCopyAheadError(RuntimeError):
    """The drop copy log holds events of journal records the journal does not have."""


def _replayed_events(record, events: list) -> list:
    """A journal record's events as the live pipeline reported them. Replay returns nothing for
    a ``DeniedOrder`` (it changes no state); the live refusal is rebuilt from the record."""
    if events or type(record) is not DeniedOrder:
        return events
    req = record.request
    if type(req) is SubmitOrder:
        return [OrderDenied(req.account, req.cl_ord_id, record.code, record.reason, req.ts)]
    return [OrderCancelRejected(req.account, req.cl_ord_id, req.order_id, record.code,
                                record.reason, True, req.ts)]


class DropCopy:
    """The log and the publisher together: what the service calls.

    ``on_batch`` (or ``stage`` + ``flush``) after each durable batch; ``query`` for a client's
    ``QueryDropCopy``; ``heartbeat`` from a timer; ``catch_up`` once at start-up.
    """

    def __init__(self, log: DropCopyLog, publisher: DropCopyPublisher | None = None, *,
                 finished_memory: int = 65_536):
        self.log = log
        self.publisher = publisher
        self._symbols: dict[int, str] = {}  # order id -> symbol, orders not finished
        self._finished: OrderedDict[int, str] = OrderedDict()  # the latest finished ones
        self._finished_memory = finished_memory
        self._held: dict[tuple[str, str], int] = {}  # (account, ClOrdID) -> held order id
        self._staged: list[tuple[int, list]] = []

    # -- COMMANDS --

    def on_batch(self, records: Iterable[tuple[int, list]], through_record: int = 0,
                 ) -> list[DropCopyEvent]:
        """Append and publish the events of durable journal records: ``(record seq, events the
        pipeline produced for it)``, in journal order. Replies that are not events
        (``CommandDone``) are left out. ``through_record``: every record up to it was given
        (those without events need not be). Returns the numbered events. O(events)."""
        records = list(records)
        prev = self.log.next_record
        for record_seq, _events in records:
            if record_seq < prev:
                raise ValueError(f"journal record {record_seq} given after record {prev - 1} or "
                                 "already in the drop copy: records come once, in order")
            prev = record_seq + 1
        out: list[DropCopyEvent] = []
        append, keys_of = self.log.append, self._keys
        for record_seq, events in records:
            kept = [e for e in events if type(e) in EVENT_TYPES]
            out.extend(append(record_seq, kept, [keys_of(e) for e in kept]))
        self.log.commit(through_record)
        if out and self.publisher is not None:
            self.publisher.publish(out)
        return out

    def stage(self, record_seq: int, events: list) -> None:
        """Keep a journaled record's events until ``flush`` says the journal has them on disk.
        O(1)."""
        self._staged.append((record_seq, events))

    def flush(self, durable_seq: int) -> list[DropCopyEvent]:
        """``on_batch`` for the staged records up to ``durable_seq`` (the journal's
        ``durable_seq`` after a commit); later ones stay staged. O(events)."""
        staged = self._staged
        n = 0
        while n < len(staged) and staged[n][0] <= durable_seq:
            n += 1
        ready, self._staged = staged[:n], staged[n:]
        through = durable_seq if not self._staged else min(durable_seq, self._staged[0][0] - 1)
        return self.on_batch(ready, through)

    def heartbeat(self) -> bool:
        """Publish the last seq on ``~|`` (the service timer calls it every few hundred ms): a
        subscriber that lost the stream's tail learns it and asks for it. O(1)."""
        return self.publisher is not None and self.publisher.heartbeat(self.log.last_seq)

    def track_orders(self, orders: Mapping[int, object]) -> None:
        """Learn the instrument of orders entered before this drop copy started (the recovered
        pipeline's ``orders``), for the events that do not name it. O(orders)."""
        self._symbols.update((oid, order.symbol) for oid, order in orders.items())

    def close(self) -> None:
        self.log.close()
        if self.publisher is not None:
            self.publisher.close()

    # -- QUERIES --

    def query(self, q: QueryDropCopy) -> DropCopyEvents | CommandError:
        """The events after ``q.after_seq``, at most ``min(q.limit, MAX_QUERY_LIMIT)``; the
        reply's ``limit`` is the one applied. O(log n + INDEX_EVERY + limit)."""
        if q.after_seq < 0:
            return CommandError(int(RejectCode.MALFORMED_MESSAGE),
                                f"QueryDropCopy.after_seq must be >= 0 (0: from the first event), "
                                f"got {q.after_seq}")
        if q.limit < 1:
            return CommandError(int(RejectCode.MALFORMED_MESSAGE),
                                f"QueryDropCopy.limit must be between 1 and {MAX_QUERY_LIMIT}, "
                                f"got {q.limit}")
        limit = min(q.limit, MAX_QUERY_LIMIT)
        last = self.log.last_seq
        events = self.log.read_after(q.after_seq, limit) if q.after_seq < last else []
        return DropCopyEvents(events, last, bool(events) and events[-1].seq < last, limit)

    # -- START-UP --

    def catch_up(self, journal_path: Path | str, make_pipeline: Callable[[], object],
                 snapshot_dir: Path | str | None = None, *, journal_last_seq: int | None = None,
                 chunk: int = 512) -> CatchUpReport:
        """Append the events of every journal record after the log's last one, regenerated by
        replaying the journal into ``make_pipeline()`` (a fresh pipeline wired like the live one;
        with the same kind of book if snapshots are used). The newest snapshot in
        ``snapshot_dir`` at or before the log's position is loaded first, so the replay costs
        the records after that snapshot, not the whole journal. The regenerated events get the
        seqs they would have had live. Raises ``DropCopyAheadError`` if the log is ahead of the
        journal. ``journal_last_seq`` (the journal writer's ``last_seq``, if the caller has it
        open) skips everything when the log is already complete. O(journal size) to read it,
        plus the replay."""
        started = time.perf_counter()
        log_ = self.log
        resume_record, skip = log_.resume
        path = Path(journal_path)
        if journal_last_seq is not None and log_.last_record >= journal_last_seq and not skip:
            if log_.last_record > journal_last_seq:
                raise DropCopyAheadError(f"the drop copy log {log_.path} covers journal records up "
                                         f"to {log_.last_record}, but the journal {path} ends at "
                                         f"record {journal_last_seq}")
            return CatchUpReport(0, 0, 0, 0, journal_last_seq, log_.last_seq,
                                 time.perf_counter() - started)
        if not path.exists():
            if log_.last_record:
                raise DropCopyAheadError(f"the drop copy log {log_.path} covers journal records up "
                                         f"to {log_.last_record}, and there is no journal at {path}")
            return CatchUpReport(0, 0, 0, 0, 0, log_.last_seq, time.perf_counter() - started)
        pipeline = make_pipeline()
        snapshot_seq = 0
        if snapshot_dir is not None:
            snapshot_seq = _restore_snapshot(pipeline, Path(snapshot_dir), resume_record - 1)
        decode = JOURNAL_DECODER.decode
        fast: list = []  # records before the log's position: state only
        slow: list = []  # records after it: events regenerated
        expected = snapshot_seq + 1
        replayed = regenerated = events = 0
        tracked = False
        for seq, payload in read_journal(path, after_seq=snapshot_seq):
            if seq != expected:
                raise RuntimeError(f"{path}: expected journal record {expected}, got {seq}")
            expected += 1
            record = decode(payload)
            if seq < resume_record:
                fast.append(record)
                if len(fast) == chunk:
                    pipeline.replay_batch(seq - chunk + 1, fast)
                    replayed, fast = replayed + chunk, []
                continue
            if fast:
                pipeline.replay_batch(seq - len(fast), fast)
                replayed, fast = replayed + len(fast), []
            if not tracked:
                self.track_orders(pipeline.orders)
                tracked = True
            slow.append(record)
            if len(slow) == chunk:
                events += self._regenerate(pipeline, seq - chunk + 1, slow, resume_record, skip)
                regenerated, slow = regenerated + chunk, []
        journal_last = expected - 1
        if slow:
            events += self._regenerate(pipeline, journal_last - len(slow) + 1, slow, resume_record, skip)
            regenerated += len(slow)
        if journal_last < log_.last_record:
            raise DropCopyAheadError(
                f"the drop copy log {log_.path} covers journal records up to {log_.last_record}, "
                f"but the journal {path} ends at record {journal_last}: events were published "
                "that the journal lost (fsync off?); move the log aside to rebuild it")
        log_.commit(journal_last, force=True)
        report = CatchUpReport(snapshot_seq, replayed, regenerated, events, journal_last,
                               log_.last_seq, time.perf_counter() - started)
        log.info("drop copy caught up: %d journal records regenerated into %d events (after "
                 "snapshot %d and %d records replayed), last seq %d", regenerated, events,
                 snapshot_seq, replayed, log_.last_seq)
        return report

    # -- INTERNALS --

    def _regenerate(self, pipeline, first_seq: int, records: list, resume_record: int,
                    skip: int) -> int:
        results = pipeline.replay_events(first_seq, records)
        batch = []
        for k, (record, events) in enumerate(zip(records, results, strict=True)):
            seq = first_seq + k
            events = _replayed_events(record, events)
            if seq == resume_record and skip:
                kept = [e for e in events if type(e) in EVENT_TYPES]
                if len(kept) < skip:
                    raise RuntimeError(f"journal record {seq} replays into {len(kept)} events, but "
                                       f"the drop copy log already has {skip} of them")
                events = kept[skip:]
            batch.append((seq, events))
        return len(self.on_batch(batch, first_seq + len(records) - 1))

    def _keys(self, event) -> tuple[str, str]:
        """``(account, symbol)`` of an event; the symbol from its order when it has none."""
        kind = type(event)
        oid = getattr(event, "order_id", 0)
        symbol = getattr(event, "symbol", None)
        if symbol is None:
            symbol = (self._symbols.get(oid) or self._finished.get(oid, "")) if oid else ""
            if kind is OrderDenied:  # an officer refused a held order: it is finished
                held = self._held.pop((event.account, event.cl_ord_id), 0)
                symbol = self._symbols.get(held, "")
                self._finish(held)
        elif kind is OrderAccepted or kind is OrderHeld:
            self._symbols[oid] = symbol
            if kind is OrderHeld:
                self._held[(event.account, event.cl_ord_id)] = oid
        if oid and (kind in _TERMINAL or (kind is OrderFilled and not event.leaves_qty)):
            self._finish(oid)
        return getattr(event, "account", ""), symbol

    def _finish(self, oid: int) -> None:
        symbol = self._symbols.pop(oid, None)
        if symbol is not None:
            self._finished[oid] = symbol
            if len(self._finished) > self._finished_memory:
                self._finished.popitem(last=False)


def _restore_snapshot(pipeline, directory: Path, at_most: int) -> int:
    """Load the newest valid snapshot with seq <= ``at_most``; returns its seq (0: none)."""
    for seq, path in reversed(list_snapshots(directory)):
        if seq > at_most:
            continue
        try:
            _, payload = read_snapshot(path)
        except (SnapshotCorruptError, OSError) as exc:
            log.warning("drop copy catch-up: skipping snapshot %d: %s", seq, exc)
            continue
        pipeline.restore(payload)
        return seq
    return 0


# -- THE CLIENT -------------------------------------------------------------------------------------


class ClientStats(msgspec.Struct):
    received: int = 0  # PUB messages read (events and heartbeats)
    delivered: int = 0  # events handed out by events()
    duplicates: int = 0  # events already delivered (several topics matched, or a query had them)
    gaps: int = 0  # holes in seq noticed (all-topics subscriptions only)
    queries: int = 0
    recovered: int = 0  # events delivered from query answers
    heartbeats: int = 0


class DropCopyError(Exception):
    """The server refused a drop copy query, or its answer contradicts what this client saw."""


_REPLIES = msgspec.msgpack.Decoder(list[Reply])
_EVENT = msgspec.msgpack.Decoder(DropCopyEvent)
_SEQ = msgspec.msgpack.Decoder(int)


class DropCopyClient:
    """Every drop copy event exactly once, in seq order: live from the PUB, holes filled by
    ``QueryDropCopy`` on the order-entry ROUTER.

    ``topics``: subscription prefixes (default ``*|``, everything). With ``*|`` a hole in seq is
    a lost message and is fetched; with narrower topics holes are normal (other topics' events),
    so only the start and the first heartbeat are checked, and query answers are filtered by the
    same prefixes here. ``after_seq``: the last seq this client already has (0: from the start).
    The constructor catches up (queries until ``more`` is false) before returning.
    ``configure(socket)`` runs on both sockets before they connect (CURVE keys).

        with DropCopyClient("tcp://127.0.0.1:7002", "tcp://127.0.0.1:7001") as dc:
            for event in dc.events(timeout=1.0): ...
    """

    def __init__(self, pub_endpoint: str, router_endpoint: str, *,
                 topics: Sequence[bytes] = (ALL_TOPIC,), after_seq: int = 0,
                 user: str | None = None,
                 configure: Callable[[zmq.Socket], None] | None = None,
                 context: zmq.Context | None = None, timeout: float = 5.0,
                 page: int = MAX_QUERY_LIMIT, rcvhwm: int = 100_000):
        if not topics or not all(isinstance(t, bytes) for t in topics):
            raise ValueError(f"topics must be a non-empty sequence of bytes prefixes, got {topics!r}")
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        self.topics = tuple(topics)
        self.all_topics = any(ALL_TOPIC.startswith(t) for t in self.topics)
        self.user = os.environ.get("KILAT_USER", "") if user is None else user
        self.timeout = timeout
        self.page = page
        #: Every event up to this seq (that matches the topics) has been delivered or is ready.
        self.last_seq = after_seq
        self.stats = ClientStats()
        self._ctx = context if context is not None else zmq.Context.instance()
        self._sub = self._ctx.socket(zmq.SUB)
        self._dealer = self._ctx.socket(zmq.DEALER)
        self._ready: deque[DropCopyEvent] = deque()
        self._live: deque[list[bytes]] = deque()  # PUB frames read while a query was waited for
        self._confirmed = False
        self._ids = itertools.count(1)
        self._encode = msgspec.msgpack.Encoder().encode
        try:
            for sock in (self._sub, self._dealer):
                sock.setsockopt(zmq.LINGER, 0)
                if configure is not None:
                    configure(sock)
            self._sub.setsockopt(zmq.RCVHWM, rcvhwm)
            self._sub.connect(pub_endpoint)
            for topic in self.topics:
                self._sub.subscribe(topic)
            self._sub.subscribe(HEARTBEAT_TOPIC)  # last: it confirms the others are active
            self._dealer.connect(router_endpoint)
            self.resync()
        except BaseException:
            self.close()
            raise

    # -- QUERIES --

    def events(self, timeout: float = 0.0, max_events: int = 100_000) -> list[DropCopyEvent]:
        """The next events in seq order (each once), waiting up to ``timeout`` seconds for the
        first; holes are fetched from the ROUTER before later events are handed out."""
        if not self._ready and not self._live:
            self._sub.poll(int(timeout * 1000))
        self._read_sub(max_events)
        self._process()
        out = list(self._ready)
        self._ready.clear()
        self.stats.delivered += len(out)
        return out

    # -- COMMANDS --

    def resync(self) -> None:
        """Ask for every event after ``last_seq`` until the server has no more. O(events)."""
        while True:
            reply = self._query(self.last_seq)
            if reply.last_seq < self.last_seq:
                raise DropCopyError(f"the server's drop copy ends at seq {reply.last_seq}, before "
                                    f"this client's seq {self.last_seq}: another server, or its log "
                                    "was lost")
            expect = self.last_seq + 1
            for event in reply.events:
                if event.seq != expect:
                    raise DropCopyError(f"query answer not consecutive: expected seq {expect}, "
                                        f"got {event.seq}")
                expect += 1
                if self.all_topics or topic_matches(event_topics(event), self.topics):
                    self._ready.append(event)
                    self.stats.recovered += 1
            if reply.events:
                self.last_seq = reply.events[-1].seq
            if not reply.more:
                return
            if not reply.events:
                raise DropCopyError("the server says more events exist but sent none")

    def close(self) -> None:
        self._sub.close(0)
        self._dealer.close(0)

    def __enter__(self) -> DropCopyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- INTERNALS --

    def _process(self) -> None:
        live, stats = self._live, self.stats
        while live:
            frames = live.popleft()
            if len(frames) != 2:
                continue  # not from a drop copy publisher
            topic, payload = frames
            if topic == HEARTBEAT_TOPIC:
                stats.heartbeats += 1
                seq = _SEQ.decode(payload)
                if not self._confirmed:  # every subscription is active now: close the join race
                    self._confirmed = True
                    self.resync()
                elif self.all_topics and seq > self.last_seq:
                    stats.gaps += 1
                    self.resync()
                continue
            event = _EVENT.decode(payload)
            if event.seq <= self.last_seq:
                stats.duplicates += 1
                continue
            if self.all_topics and event.seq != self.last_seq + 1:
                stats.gaps += 1
                self.resync()
                if event.seq <= self.last_seq:
                    stats.duplicates += 1
                    continue
                if event.seq != self.last_seq + 1:
                    raise DropCopyError(f"seq {event.seq} was published but the server's answer "
                                        f"ends at {self.last_seq}")
            self._ready.append(event)
            self.last_seq = event.seq

    def _read_sub(self, limit: int = 100_000) -> None:
        recv, live, stats = self._sub.recv_multipart, self._live, self.stats
        for _ in range(limit):
            try:
                live.append(recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            stats.received += 1

    def _query(self, after_seq: int) -> DropCopyEvents:
        rid = next(self._ids).to_bytes(8, "little")
        self._dealer.send_multipart([rid, self._encode(QueryDropCopy(after_seq, self.page, self.user))])
        self.stats.queries += 1
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._sub, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KilatTimeout(f"no drop copy answer within {self.timeout} s")
            ready = dict(poller.poll(remaining * 1000))
            if self._sub in ready:
                self._read_sub()  # keep live events while waiting: ZeroMQ's queue is bounded
            if self._dealer not in ready:
                continue
            got, payload = self._dealer.recv_multipart()
            if got != rid:
                continue  # an answer to a request that timed out earlier
            replies = _REPLIES.decode(payload)
            if len(replies) != 1 or type(replies[0]) is not DropCopyEvents:
                raise DropCopyError(f"QueryDropCopy(after_seq={after_seq}) was answered {replies!r}")
            return replies[0]
