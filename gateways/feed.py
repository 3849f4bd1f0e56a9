"""Price feeds over ZeroMQ PUB/SUB: a publisher of the feed protocol and Kilat's feed handler.

The protocol itself (frames, messages, sequence and heartbeat rules) is defined in
``gateways.feed_messages``; docs/feeds.md explains it for someone writing a feed in another
language.

``FeedPublisher`` is what a venue simulator, a replayed capture or a test publishes with.
``FeedHandler`` subscribes to any number of such publishers and keeps, per source and instrument,
the latest quote and trade, detects gaps and stale sources, and conflates: the engine takes only
the instruments that changed since its last turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import numpy as np
import zmq
from numba import njit

from engine.jit import entry_point
from engine.model import ReferenceData
from gateways.feed_messages import FEED_DECODER, HEARTBEAT_TOPIC, FeedHeartbeat, Quote, Trade

#: What a security hook looks like: it configures a socket before it binds or connects.
Configure = Callable[[zmq.Socket], None]


# -- PUBLISHER ------------------------------------------------------------------------------------


class FeedPublisher:
    """A PUB socket speaking the feed protocol for one ``source``.

    Quotes and trades are numbered 1, 2, 3, ... (``seq``); a heartbeat repeats the last number.
    Sending never blocks: a message that cannot be queued (``zmq.Again``) is dropped, counted in
    ``dropped``, and still consumes its ``seq`` so subscribers see the hole as a gap. Note that
    libzmq's PUB drops silently, per subscriber, when that subscriber's queue is full (its
    ``hwm``): such losses are seen by the subscriber's gap detection, not here.

    ``configure`` is called on the socket before it binds (CurveZMQ keys, for instance).
    Every send is O(1).
    """

    def __init__(self, endpoint: str, source: str, *, context: zmq.Context | None = None,
                 hwm: int = 100_000, configure: Configure | None = None):
        if not source:
            raise ValueError("source must be a non-empty name")
        self.source = source
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._topics: dict[str, bytes] = {}
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if configure is not None:
            configure(self._socket)
        self._socket.bind(endpoint)
        self.bound_endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- COMMANDS ---------------------------------------------------------------------------------

    def quote(self, symbol: str, bid: int, bid_size: int, ask: int, ask_size: int, ts: int) -> int:
        """Publish a best bid/offer (0 price = empty side); returns its seq. O(1)."""
        self.seq += 1
        payload = self._encoder.encode(
            Quote(self.source, self.seq, symbol, bid, bid_size, ask, ask_size, ts))
        self._send(self._topic(symbol), payload)
        return self.seq

    def trade(self, symbol: str, price: int, qty: int, aggressor: int, ts: int) -> int:
        """Publish a trade (aggressor 1 buyer, 2 seller, 0 unknown); returns its seq. O(1)."""
        self.seq += 1
        payload = self._encoder.encode(Trade(self.source, self.seq, symbol, price, qty, aggressor, ts))
        self._send(self._topic(symbol), payload)
        return self.seq

    def heartbeat(self, ts: int) -> None:
        """Publish that the source is alive, with the last seq sent. O(1)."""
        self._send(HEARTBEAT_TOPIC, self._encoder.encode(FeedHeartbeat(self.source, self.seq, ts)))

    def send_raw(self, topic: bytes, payload: bytes) -> bool:
        """Send pre-encoded frames as they are (replays and benchmarks); False if dropped. O(1).
        The caller owns their sequence numbers; ``seq`` is not changed."""
        return self._send(topic, payload)

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; ``linger_ms`` lets queued messages leave first."""
        self._socket.close(linger=linger_ms)

    # -- INTERNALS --------------------------------------------------------------------------------

    def _topic(self, symbol: str) -> bytes:
        topic = self._topics.get(symbol)
        if topic is None:
            topic = self._topics[symbol] = symbol.encode() + b"|"
        return topic

    def _send(self, topic: bytes, payload: bytes) -> bool:
        try:
            self._socket.send_multipart((topic, payload), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True


# -- HANDLER: array layout ------------------------------------------------------------------------
# Module-level ints, so the jitted kernels below see them as constants.

#: Columns of ``FeedHandler.quotes[source, instrument]``: the source's latest quote.
Q_BID, Q_BID_SIZE, Q_ASK, Q_ASK_SIZE, Q_TS, Q_RECV, Q_NO, Q_HAS, Q_LIVE = range(9)
Q_FIELDS = 9
#: Columns of ``FeedHandler.trades[source, instrument]``: the source's last trade.
T_PRICE, T_QTY, T_AGGRESSOR, T_TS, T_RECV, T_HAS = range(6)
T_FIELDS = 6
#: Columns of ``FeedHandler.sources[source]``: sequence tracking and counters.
(S_LAST_SEQ, S_MSG_NO, S_GAP_MARK, S_GAPS, S_MISSING, S_HB_GAPS, S_RESETS, S_LAST_HEARD,
 S_LAST_TS, S_QUOTES, S_TRADES, S_HEARTBEATS, S_RANGES) = range(13)
S_FIELDS = 13
#: Columns of ``FeedHandler.marks[instrument]``: the consolidated mark and what was last taken.
(M_BID, M_ASK, M_LAST, M_TS, M_DIRTY, M_SENT_BID, M_SENT_ASK, M_SENT_LAST, M_RECV) = range(9)
M_FIELDS = 9
#: Columns of a ``take_updates()`` row.
U_INSTRUMENT, U_BID, U_ASK, U_LAST, U_TS = range(5)
U_FIELDS = 5
#: Slots of the handler's control array.
C_NDIRTY, C_NSOURCES, C_NEXT_EXPIRY, C_STOP, C_OFFSET, C_NNAMES = range(6)
C_FIELDS = 6
#: Why the apply kernel returned.
STOP_DONE, STOP_CARRY, STOP_SOURCE = 0, 1, 2
#: Slots of the stats array (what ``FeedStats`` reports).
(ST_RECEIVED, ST_QUOTES, ST_TRADES, ST_HEARTBEATS, ST_MALFORMED, ST_BAD_FRAMES, ST_UNKNOWN_TAG,
 ST_UNKNOWN_SYMBOL, ST_OUT_OF_RANGE, ST_TOPIC_MISMATCH, ST_INVALID, ST_SOURCES_REFUSED) = range(12)
ST_FIELDS = 12
#: Message kinds and parse errors of the kernel's msgpack reader.
K_QUOTE, K_TRADE, K_HEARTBEAT = 1, 2, 3
E_MALFORMED, E_UNKNOWN_TAG, E_OUT_OF_RANGE = -1, -2, -3

#: Gap ranges remembered per source (a ring: the most recent ones).
MAX_RANGES = 16
#: Longest source name, in UTF-8 bytes.
MAX_SOURCE_BYTES = 64
#: Names of refused sources remembered (beyond them, each such message costs a Python decode).
MAX_REFUSED = 64
#: A message larger than this disconnects its publisher (ZMQ_MAXMSGSIZE); feed messages are < 300.
MAX_MESSAGE_BYTES = 65_536
_NEVER = np.iinfo(np.int64).max
_PIPE = 0x7C  # "|", the end of a topic


# -- HANDLER: jitted kernels ----------------------------------------------------------------------


@njit(cache=True, inline="always")
def _payload_like(buf, off, n):
    """A frame whose first byte opens a msgpack array: a payload; anything else is a topic."""
    if n == 0:
        return False
    b = buf[off]
    return (0x90 <= b <= 0x9F) or b == 0xDC or b == 0xDD


@njit(cache=True, inline="always")
def _read_uint(buf, pos, width):
    v = np.int64(0)
    for k in range(width):
        v = (v << 8) | np.int64(buf[pos + k])
    return v


@njit(cache=True, inline="always")
def _read_int(buf, pos, end):
    """One msgpack integer: (value, next position, 0 ok | E_MALFORMED | E_OUT_OF_RANGE)."""
    if pos >= end:
        return 0, pos, E_MALFORMED
    b = np.int64(buf[pos])
    if b <= 0x7F:
        return b, pos + 1, 0
    if b >= 0xE0:
        return b - 256, pos + 1, 0
    if 0xCC <= b <= 0xCF:  # uint8/16/32/64
        width = 1 << (b - 0xCC)
        if pos + 1 + width > end:
            return 0, pos, E_MALFORMED
        if width == 8 and buf[pos + 1] >= 0x80:
            return 0, pos + 9, E_OUT_OF_RANGE
        return _read_uint(buf, pos + 1, width), pos + 1 + width, 0
    if 0xD0 <= b <= 0xD3:  # int8/16/32/64
        width = 1 << (b - 0xD0)
        if pos + 1 + width > end:
            return 0, pos, E_MALFORMED
        v = _read_uint(buf, pos + 1, width)
        if width < 8 and v >= (np.int64(1) << (8 * width - 1)):
            v -= np.int64(1) << (8 * width)
        return v, pos + 1 + width, 0
    return 0, pos, E_MALFORMED


@njit(cache=True, inline="always")
def _read_str(buf, pos, end):
    """One msgpack string: (offset, length, next position); next position -1 if not a string."""
    if pos >= end:
        return 0, 0, -1
    b = np.int64(buf[pos])
    if 0xA0 <= b <= 0xBF:
        n, start = b & 0x1F, pos + 1
    elif 0xD9 <= b <= 0xDB:
        width = 1 << (b - 0xD9)
        if pos + 1 + width > end:
            return 0, 0, -1
        n, start = _read_uint(buf, pos + 1, width), pos + 1 + width
    else:
        return 0, 0, -1
    if start + n > end:
        return 0, 0, -1
    return start, n, start + n


@njit(cache=True, inline="always")
def _is(buf, off, n, word):
    if n != len(word):
        return False
    for k in range(n):
        if buf[off + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _skip(buf, pos, end, count):
    """Step over ``count`` msgpack objects of any type; returns the next position, -1 if the
    bytes end first or hold an invalid type byte. O(bytes)."""
    while count > 0:
        if pos >= end:
            return -1
        b = np.int64(buf[pos])
        count -= 1
        size = 0  # bytes after the type byte (and its length field)
        width = 0  # bytes of the length field
        if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            pass
        elif b <= 0x8F:  # fixmap
            count += 2 * (b & 0x0F)
        elif b <= 0x9F:  # fixarray
            count += b & 0x0F
        elif b <= 0xBF:  # fixstr
            size = b & 0x1F
        elif 0xC4 <= b <= 0xC6 or 0xD9 <= b <= 0xDB:  # bin8/16/32, str8/16/32
            width = 1 << (b - (0xC4 if b <= 0xC6 else 0xD9))
        elif 0xC7 <= b <= 0xC9:  # ext8/16/32: length, then a type byte
            width = 1 << (b - 0xC7)
            size = 1
        elif b == 0xCA or b == 0xCB:
            size = 4 if b == 0xCA else 8
        elif 0xCC <= b <= 0xD3:
            size = 1 << ((b - 0xCC) % 4)
        elif 0xD4 <= b <= 0xD8:  # fixext: a type byte and 1, 2, 4, 8 or 16 bytes
            size = 1 + (1 << (b - 0xD4))
        elif b == 0xDC or b == 0xDD or b == 0xDE or b == 0xDF:  # array16/32, map16/32
            width = 2 if b == 0xDC or b == 0xDE else 4
        else:  # 0xC1: never used
            return -1
        pos += 1
        if width:
            if pos + width > end:
                return -1
            n = _read_uint(buf, pos, width)
            pos += width
            if b >= 0xDC:
                count += n if b <= 0xDD else 2 * n
            else:
                size += n
        pos += size
    return pos if pos <= end else -1


_QUOTE_TAG = np.frombuffer(b"Quote", np.uint8)
_TRADE_TAG = np.frombuffer(b"Trade", np.uint8)
_HEARTBEAT_TAG = np.frombuffer(b"FeedHeartbeat", np.uint8)


@njit(cache=True, inline="always")
def _parse(buf, pos, end, out):
    """Decode one payload into ``out``: [source off, source len, seq, symbol off, symbol len,
    then the message's int fields after the symbol (Quote: bid, bid_size, ask, ask_size, ts;
    Trade: price, qty, aggressor, ts; heartbeat: ts)]. Returns K_* or E_*. Accepts what
    ``FEED_DECODER`` accepts: every msgpack int and str width, extra trailing array elements
    (a newer protocol's fields) skipped, nothing after the array; the UTF-8 of names is checked
    by the lookups (only known names match, an unknown source is decoded by msgspec)."""
    if pos >= end:
        return E_MALFORMED
    b = np.int64(buf[pos])
    if 0x90 <= b <= 0x9F:
        count, pos = b & 0x0F, pos + 1
    elif b == 0xDC or b == 0xDD:
        width = 2 if b == 0xDC else 4
        if pos + 1 + width > end:
            return E_MALFORMED
        count, pos = _read_uint(buf, pos + 1, width), pos + 1 + width
    else:
        return E_MALFORMED
    toff, tlen, pos = _read_str(buf, pos, end)
    if pos < 0:
        return E_MALFORMED
    if _is(buf, toff, tlen, _QUOTE_TAG):
        kind, fields = K_QUOTE, 5
    elif _is(buf, toff, tlen, _TRADE_TAG):
        kind, fields = K_TRADE, 4
    elif _is(buf, toff, tlen, _HEARTBEAT_TAG):
        kind, fields = K_HEARTBEAT, 1
    else:
        return E_UNKNOWN_TAG
    extra = count - fields - (3 if kind == K_HEARTBEAT else 4)  # tag, source, seq (, symbol)
    if extra < 0:
        return E_MALFORMED
    out[0], out[1], pos = _read_str(buf, pos, end)
    if pos < 0:
        return E_MALFORMED
    status = 0
    out[2], pos, err = _read_int(buf, pos, end)
    if err == E_MALFORMED:
        return E_MALFORMED
    status = err
    if kind != K_HEARTBEAT:
        out[3], out[4], pos = _read_str(buf, pos, end)
        if pos < 0:
            return E_MALFORMED
    for k in range(fields):
        out[5 + k], pos, err = _read_int(buf, pos, end)
        if err == E_MALFORMED:
            return E_MALFORMED
        if err != 0:
            status = err
    pos = _skip(buf, pos, end, extra)  # later fields of a newer protocol version are ignored
    if pos != end:
        return E_MALFORMED
    return status if status != 0 else kind


@njit(cache=True, inline="always")
def name_hash(buf, off, n):
    """Hash of a name's bytes (for the symbol table)."""
    h = np.int64(1469598103)
    for k in range(n):
        h = h * 31 + np.int64(buf[off + k])
    return h & np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def _same(buf, off, n, names, lens, row):
    if lens[row] != n:
        return False
    for k in range(n):
        if buf[off + k] != names[row, k]:
            return False
    return True


@njit(cache=True, inline="always")
def _symbol(buf, off, n, sym_bytes, sym_len, sym_table):
    """Instrument index of a symbol, -1 if unknown. O(1) expected (open addressing)."""
    mask = len(sym_table) - 1
    slot = name_hash(buf, off, n) & mask
    while True:
        i = sym_table[slot]
        if i < 0:
            return -1
        if _same(buf, off, n, sym_bytes, sym_len, i):
            return i
        slot = (slot + 1) & mask


@njit(cache=True, inline="always")
def _topic_ok(buf, toff, tlen, soff, slen):
    """The topic is ``symbol|`` (``|`` alone for a heartbeat: slen = 0)."""
    if tlen != slen + 1 or buf[toff + slen] != _PIPE:
        return False
    for k in range(slen):
        if buf[toff + k] != buf[soff + k]:
            return False
    return True


@njit(cache=True, inline="always")
def _sequence(src, ranges, s, seq, heartbeat):
    """Track a source's seq; returns the message's local number. O(1).

    A quote or trade must be last + 1, a heartbeat repeats last: a larger seq is a gap (its
    range is recorded), a smaller one means the source restarted. Either sets the gap mark:
    the source's quotes received before it are flagged until refreshed."""
    n = src[s, S_MSG_NO] + 1
    src[s, S_MSG_NO] = n
    last = src[s, S_LAST_SEQ]
    src[s, S_LAST_SEQ] = seq
    if n == 1:
        return n  # first message heard from the source: its baseline, not a gap
    expected = last if heartbeat else last + 1
    if seq == expected:
        return n
    if seq > expected:
        src[s, S_GAPS] += 1
        src[s, S_MISSING] += seq - expected
        if heartbeat:
            src[s, S_HB_GAPS] += 1
        slot = src[s, S_RANGES] % MAX_RANGES
        ranges[s, slot, 0] = last + 1
        ranges[s, slot, 1] = seq if heartbeat else seq - 1
        src[s, S_RANGES] += 1
    else:
        src[s, S_RESETS] += 1
    src[s, S_GAP_MARK] = n
    return n


@njit(cache=True, inline="always")
def _touch(i, marks, dirty, ctl):
    if marks[i, M_DIRTY] == 0:
        marks[i, M_DIRTY] = 1
        dirty[ctl[C_NDIRTY]] = i
        ctl[C_NDIRTY] += 1


@njit(cache=True)
def apply_frames(buf, lens, start, start_off, nframes, now, stale_after, sym_bytes, sym_len,
                 sym_table, names, name_len, name_source, quotes, trades, src, ranges, marks, dirty,
                 ctl, stats):
    """Pair the frames into messages, decode and apply them from frame ``start`` (at byte
    ``start_off`` of ``buf``). O(1) per frame.

    Returns the frame it stopped at: ``nframes`` when done (ctl[C_STOP] = STOP_DONE), the last
    frame if it is a topic whose payload is still to come (STOP_CARRY), or the topic of a
    message from a source not yet known (STOP_SOURCE: the caller registers it and resumes at
    that frame and at byte ctl[C_OFFSET]). ``names`` lists the source names known, accepted
    (``name_source`` = their source index) or refused (-1)."""
    out = np.zeros(10, np.int64)
    off = start_off
    f = start
    last = -1
    nnames = ctl[C_NNAMES]
    while f < nframes:
        toff, tlen = off, lens[f]
        if _payload_like(buf, toff, tlen):  # a payload with no topic before it
            stats[ST_RECEIVED] += 1
            stats[ST_BAD_FRAMES] += 1
            off += tlen
            f += 1
            continue
        if f + 1 == nframes:  # a topic as the last frame: its payload may come with the next poll
            ctl[C_STOP] = STOP_CARRY
            ctl[C_OFFSET] = off
            return f
        poff, plen = toff + tlen, lens[f + 1]
        if not _payload_like(buf, poff, plen):  # a topic alone: a one-frame message
            stats[ST_RECEIVED] += 1
            stats[ST_BAD_FRAMES] += 1
            off += tlen
            f += 1
            continue
        kind = _parse(buf, poff, poff + plen, out)
        if kind < 0:
            stats[ST_RECEIVED] += 1
            if kind == E_UNKNOWN_TAG:
                stats[ST_UNKNOWN_TAG] += 1
            elif kind == E_OUT_OF_RANGE:
                stats[ST_OUT_OF_RANGE] += 1
            else:
                stats[ST_MALFORMED] += 1
            off = poff + plen
            f += 2
            continue
        seq = out[2]
        i = -1
        if kind == K_HEARTBEAT:
            ok = _topic_ok(buf, toff, tlen, 0, 0)
        else:
            ok = _topic_ok(buf, toff, tlen, out[3], out[4])
            if ok:
                i = _symbol(buf, out[3], out[4], sym_bytes, sym_len, sym_table)
        bad = -1
        if not ok:
            bad = ST_TOPIC_MISMATCH
        elif kind != K_HEARTBEAT and i < 0:
            bad = ST_UNKNOWN_SYMBOL
        if bad >= 0:
            stats[ST_RECEIVED] += 1
            stats[bad] += 1
            off = poff + plen
            f += 2
            continue
        if last < 0 or not _same(buf, out[0], out[1], names, name_len, last):
            last = -1
            for c in range(nnames):
                if _same(buf, out[0], out[1], names, name_len, c):
                    last = c
                    break
            if last < 0:
                ctl[C_STOP] = STOP_SOURCE
                ctl[C_OFFSET] = off
                return f
        s = name_source[last]
        if s < 0:
            stats[ST_RECEIVED] += 1
            stats[ST_SOURCES_REFUSED] += 1
            off = poff + plen
            f += 2
            continue
        if kind == K_QUOTE:
            ok = seq >= 1 and out[5] >= 0 and out[6] >= 0 and out[7] >= 0 and out[8] >= 0
        elif kind == K_TRADE:
            ok = seq >= 1 and out[5] > 0 and out[6] > 0 and 0 <= out[7] <= 2
        else:
            ok = seq >= 0
        if not ok:
            stats[ST_RECEIVED] += 1
            stats[ST_INVALID] += 1
            off = poff + plen
            f += 2
            continue
        stats[ST_RECEIVED] += 1
        n = _sequence(src, ranges, s, seq, kind == K_HEARTBEAT)
        src[s, S_LAST_HEARD] = now
        if kind == K_QUOTE:
            ts = out[9]
            q = quotes[s, i]
            q[Q_BID] = out[5]
            q[Q_BID_SIZE] = out[6]
            q[Q_ASK] = out[7]
            q[Q_ASK_SIZE] = out[8]
            q[Q_TS] = ts
            q[Q_RECV] = now
            q[Q_NO] = n
            q[Q_HAS] = 1
            q[Q_LIVE] = 1
            if now + stale_after < ctl[C_NEXT_EXPIRY]:
                ctl[C_NEXT_EXPIRY] = now + stale_after
            marks[i, M_TS] = ts
            marks[i, M_RECV] = now
            _touch(i, marks, dirty, ctl)
            src[s, S_QUOTES] += 1
            stats[ST_QUOTES] += 1
        elif kind == K_TRADE:
            ts = out[8]
            t = trades[s, i]
            t[T_PRICE] = out[5]
            t[T_QTY] = out[6]
            t[T_AGGRESSOR] = out[7]
            t[T_TS] = ts
            t[T_RECV] = now
            t[T_HAS] = 1
            marks[i, M_LAST] = out[5]
            marks[i, M_TS] = ts
            marks[i, M_RECV] = now
            _touch(i, marks, dirty, ctl)
            src[s, S_TRADES] += 1
            stats[ST_TRADES] += 1
        else:
            ts = out[5]
            src[s, S_HEARTBEATS] += 1
            stats[ST_HEARTBEATS] += 1
        src[s, S_LAST_TS] = ts
        off = poff + plen
        f += 2
    ctl[C_STOP] = STOP_DONE
    return f


@njit(cache=True)
def take_marks(now, stale_after, quotes, marks, dirty, ctl, out):
    """Recompute the consolidated mark of every instrument touched since the last take, and of
    those whose quotes went stale since; write the ones that changed to ``out``. Returns their
    count. O(sources) per touched instrument, plus O(sources × instruments) when a quote may
    have expired (at most once per ``stale_after`` of the oldest live quote)."""
    nsrc = ctl[C_NSOURCES]
    ninst = marks.shape[0]
    if now > ctl[C_NEXT_EXPIRY]:
        nxt = _NEVER
        for s in range(nsrc):
            for i in range(ninst):
                if quotes[s, i, Q_LIVE]:
                    expiry = quotes[s, i, Q_RECV] + stale_after
                    if now > expiry:
                        quotes[s, i, Q_LIVE] = 0
                        _touch(i, marks, dirty, ctl)
                    elif expiry < nxt:
                        nxt = expiry
        ctl[C_NEXT_EXPIRY] = nxt
    n = 0
    for k in range(ctl[C_NDIRTY]):
        i = dirty[k]
        marks[i, M_DIRTY] = 0
        bid = 0
        ask = 0
        for s in range(nsrc):
            q = quotes[s, i]
            if q[Q_HAS] == 0:
                continue
            if now - q[Q_RECV] > stale_after:
                q[Q_LIVE] = 0
                continue
            if q[Q_BID] > bid:
                bid = q[Q_BID]
            if q[Q_ASK] > 0 and (ask == 0 or q[Q_ASK] < ask):
                ask = q[Q_ASK]
        marks[i, M_BID] = bid
        marks[i, M_ASK] = ask
        last = marks[i, M_LAST]
        if bid == marks[i, M_SENT_BID] and ask == marks[i, M_SENT_ASK] and last == marks[i, M_SENT_LAST]:
            continue
        marks[i, M_SENT_BID] = bid
        marks[i, M_SENT_ASK] = ask
        marks[i, M_SENT_LAST] = last
        if bid == 0 and ask == 0 and last == 0:
            continue
        out[n, U_INSTRUMENT] = i
        out[n, U_BID] = bid
        out[n, U_ASK] = ask
        out[n, U_LAST] = last
        out[n, U_TS] = marks[i, M_TS]
        n += 1
    ctl[C_NDIRTY] = 0
    return n


# -- HANDLER --------------------------------------------------------------------------------------


class FeedStats(msgspec.Struct, frozen=True):
    """What the handler has read since it started. ``received`` counts messages (a stray frame
    counts as one); every one of them lands in exactly one of the other counters."""

    received: int
    quotes: int
    trades: int
    heartbeats: int
    malformed: int  # not a feed message: bad msgpack, wrong field count or type, trailing bytes
    bad_frames: int  # a message of one frame (or a stray third frame)
    unknown_tag: int
    unknown_symbol: int
    out_of_range: int  # an integer beyond int64
    topic_mismatch: int  # the topic frame is not the payload's ``symbol|`` (``|`` for heartbeats)
    invalid: int  # well-formed but impossible: seq < 1, negative price or size, bad aggressor
    sources_refused: int  # more sources than ``max_sources``, or a name over 64 bytes / not UTF-8


class SourceStatus(msgspec.Struct, frozen=True):
    """One source as the handler sees it (``FeedHandler.status``)."""

    source: str
    last_seq: int
    quotes: int
    trades: int
    heartbeats: int
    gaps: int  # holes in seq, however found
    missing: int  # seq numbers never received
    heartbeat_gaps: int  # holes found by a heartbeat (the source went quiet after them)
    resets: int  # seq went backwards: the source restarted
    missing_ranges: list[tuple[int, int]]  # the last 16 holes, oldest first, inclusive
    gap_symbols: list[str]  # instruments whose quote from this source predates its last hole
    last_heard_ns: int  # handler clock
    last_ts: int  # the source's clock, from its last message
    stale: bool  # not heard for more than stale_after


class VenueQuote(msgspec.Struct, frozen=True):
    """One source's latest quote and trade of one instrument (``FeedHandler.venue_quotes``)."""

    source: str
    bid: int
    bid_size: int
    ask: int
    ask_size: int
    ts: int  # the source's time of the quote
    received_ns: int  # handler clock
    stale: bool  # the quote is older than stale_after
    gap: bool  # the source had a hole since this quote: it may be out of date
    last: int  # the source's last trade: price, qty, its time (0 = none)
    last_qty: int
    last_ts: int


class Staleness(msgspec.Struct, frozen=True):
    """Sources not heard, and priced instruments not updated by any source, for > stale_after."""

    sources: list[str]
    symbols: list[str]


class FeedHandler:
    """Subscribes to price feeds (``gateways.feed_messages``) and keeps their latest prices.

    State, preallocated: per source × instrument the latest quote and last trade (``quotes``,
    ``trades``: int64 arrays, columns ``Q_*`` and ``T_*``), per source its sequence tracking
    (``sources``, ``S_*``; the last 16 gap ranges in ``ranges``), per instrument the consolidated
    mark (``marks``, ``M_*``). Memory is O(max_sources × instruments); every message costs O(1).

    - **Gaps.** A quote or trade must carry its source's last seq + 1, a heartbeat the last seq.
      More is a gap: counted, its range kept, and the source's quotes received before it are
      flagged ``gap`` until that source's next quote of the symbol (PUB/SUB cannot resend: a
      fresh quote is the recovery). Less means the source restarted (``resets``): same flags.
      The first message heard from a source sets its baseline (joining late is not a gap).
    - **Conflation.** ``poll`` only records; ``take_updates`` returns one row per instrument
      whose consolidated mark (best live bid, best live ask, last trade) changed since the
      previous take: a burst of 1,000 quotes of one symbol is one row.
    - **Staleness.** Ages are measured on the handler's clock (the ``now_ns`` of the ``poll``
      that read the message), so a source's clock skew does not matter. A quote older than
      ``stale_after_ns`` leaves the consolidated mark; a source silent that long (heartbeats
      count) is stale. The ``now_ns`` of ``poll`` and ``take_updates`` must not go backwards.

    ``poll`` never raises on what a feed sends: every kind of bad message is counted in
    ``stats()``. Frames are paired into messages by their first byte (a payload opens a msgpack
    array, a topic never does) rather than by ZeroMQ's "more" flag, which costs pyzmq as much
    as receiving the frame: reading stays cheap and resynchronises after a stray frame. The one
    thing this cannot see is a topic and its payload sent as two one-frame messages in a row:
    they are read as the message they spell (still checked: topic and symbol must agree). A
    third frame after a message is counted as a stray.
    """

    def __init__(self, ref: ReferenceData, endpoints: list[str], *, stale_after_ns: int,
                 context: zmq.Context | None = None, configure: Configure | None = None,
                 max_sources: int = 64, hwm: int = 100_000):
        if stale_after_ns <= 0:
            raise ValueError(f"stale_after_ns must be positive, got {stale_after_ns}")
        if max_sources <= 0:
            raise ValueError(f"max_sources must be positive, got {max_sources}")
        self.ref = ref
        self.stale_after_ns = stale_after_ns
        ninst = len(ref.by_index)
        self.symbols = [inst.symbol for inst in ref.by_index]
        self.source_names: list[str] = []
        self._tables(ninst, max_sources)
        self.quotes = np.zeros((max_sources, ninst, Q_FIELDS), np.int64)
        self.trades = np.zeros((max_sources, ninst, T_FIELDS), np.int64)
        self.sources = np.zeros((max_sources, S_FIELDS), np.int64)
        self.ranges = np.zeros((max_sources, MAX_RANGES, 2), np.int64)
        self.marks = np.zeros((ninst, M_FIELDS), np.int64)
        self._dirty = np.zeros(ninst, np.int64)
        self._ctl = np.zeros(C_FIELDS, np.int64)
        self._ctl[C_NEXT_EXPIRY] = _NEVER
        self._stats = np.zeros(ST_FIELDS, np.int64)
        self._out = np.zeros((ninst, U_FIELDS), np.int64)
        self._carry: list[bytes] = []
        self._warm()
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._socket.setsockopt(zmq.LINGER, 0)
        if configure is not None:
            configure(self._socket)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._recv = self._socket.recv
        for endpoint in endpoints:
            self.connect(endpoint)

    def _tables(self, ninst: int, max_sources: int) -> None:
        encoded = [symbol.encode() for symbol in self.symbols]
        width = max([len(e) for e in encoded] + [1])
        self._sym_bytes = np.zeros((max(ninst, 1), width), np.uint8)
        self._sym_len = np.zeros(max(ninst, 1), np.int64)
        size = 2
        while size < 2 * ninst:
            size *= 2
        self._sym_table = np.full(size, -1, np.int64)
        for i, e in enumerate(encoded):
            if not e or e[0] in _PAYLOAD_FIRST_BYTES:
                raise ValueError(f"symbol {self.symbols[i]!r} cannot be a feed topic: it must not be "
                                 "empty or start with a byte that opens a msgpack array")
            self._sym_bytes[i, : len(e)] = np.frombuffer(e, np.uint8)
            self._sym_len[i] = len(e)
            slot = name_hash(np.frombuffer(e, np.uint8), 0, len(e)) & (size - 1)
            while self._sym_table[slot] >= 0:
                slot = (slot + 1) & (size - 1)
            self._sym_table[slot] = i
        self._max_sources = max_sources
        self._names = np.zeros((max_sources + MAX_REFUSED, MAX_SOURCE_BYTES), np.uint8)
        self._name_len = np.zeros(max_sources + MAX_REFUSED, np.int64)
        self._name_source = np.full(max_sources + MAX_REFUSED, -1, np.int64)

    def _warm(self) -> None:
        """Compile or load the kernels now, not on the first message."""
        self._apply = apply_frames
        self._take = take_marks
        self._run_apply([b"|"], 0)
        self._take(0, self.stale_after_ns, self.quotes, self.marks, self._dirty, self._ctl, self._out)
        self._stats[:] = 0
        self._carry = []
        self._apply = entry_point(apply_frames)
        self._take = entry_point(take_marks)

    # -- COMMANDS ---------------------------------------------------------------------------------

    def connect(self, endpoint: str) -> None:
        """Subscribe to one more feed (everything it publishes)."""
        self._socket.connect(endpoint)

    def poll(self, max_messages: int, now_ns: int | None = None) -> int:
        """Read and apply up to ``max_messages`` waiting messages without blocking; returns how
        many were read (bad ones included). ``now_ns`` is the handler's clock for staleness
        (default: ``time.time_ns()``). O(messages)."""
        frames = self._carry
        self._carry = []
        append, recv = frames.append, self._recv
        n = 0
        try:
            while n < max_messages:
                append(recv(_NOBLOCK))
                append(recv(_NOBLOCK))
                n += 1
        except zmq.Again:
            pass
        if not frames:
            return 0
        return self._run_apply(frames, time.time_ns() if now_ns is None else now_ns)

    def take_updates(self, now_ns: int | None = None) -> np.ndarray:
        """The consolidated marks that changed since the previous take, one row per instrument:
        columns ``U_INSTRUMENT, U_BID, U_ASK, U_LAST, U_TS`` (int64; a 0 price means no live
        price on that side, as in ``PriceTick``). O(sources) per changed instrument."""
        now = time.time_ns() if now_ns is None else now_ns
        n = self._take(now, self.stale_after_ns, self.quotes, self.marks, self._dirty, self._ctl,
                       self._out)
        return self._out[:n].copy()

    def close(self) -> None:
        self._socket.close(linger=0)

    # -- QUERIES ----------------------------------------------------------------------------------

    @property
    def socket(self) -> zmq.Socket:
        """The SUB socket, for a poller or an event loop's reader. Read it only through ``poll``."""
        return self._socket

    def stats(self) -> FeedStats:
        """Counters of everything read. O(1)."""
        return FeedStats(*(int(v) for v in self._stats))

    def mark(self, symbol: str) -> tuple[int, int, int]:
        """(bid, ask, last) of the consolidated mark as of the last ``take_updates``. O(1)."""
        m = self.marks[self._instrument(symbol)]
        return int(m[M_BID]), int(m[M_ASK]), int(m[M_LAST])

    def venue_quotes(self, symbol: str, now_ns: int | None = None) -> list[VenueQuote]:
        """Each source's latest quote and trade of ``symbol`` (sources that sent one), with stale
        and gap flags: best price and displayed size per venue. O(sources)."""
        i = self._instrument(symbol)
        now = time.time_ns() if now_ns is None else now_ns
        rows = []
        for s, name in enumerate(self.source_names):
            q, t = self.quotes[s, i], self.trades[s, i]
            if not q[Q_HAS] and not t[T_HAS]:
                continue
            rows.append(VenueQuote(
                name, int(q[Q_BID]), int(q[Q_BID_SIZE]), int(q[Q_ASK]), int(q[Q_ASK_SIZE]),
                int(q[Q_TS]), int(q[Q_RECV]),
                bool(not q[Q_HAS] or now - q[Q_RECV] > self.stale_after_ns),
                bool(q[Q_HAS] and q[Q_NO] < self.sources[s, S_GAP_MARK]),
                int(t[T_PRICE]), int(t[T_QTY]), int(t[T_TS]),
            ))
        return rows

    def stale(self, now_ns: int | None = None) -> Staleness:
        """Sources silent, and priced instruments not updated by any source, for longer than
        ``stale_after_ns``. O(sources × instruments)."""
        now = time.time_ns() if now_ns is None else now_ns
        k = len(self.source_names)
        heard = self.sources[:k, S_LAST_HEARD]
        sources = [name for name, at in zip(self.source_names, heard, strict=True)
                   if now - at > self.stale_after_ns]
        q, t = self.quotes[:k], self.trades[:k]
        freshest = np.maximum(np.where(q[:, :, Q_HAS] > 0, q[:, :, Q_RECV], -1),
                              np.where(t[:, :, T_HAS] > 0, t[:, :, T_RECV], -1)).max(axis=0, initial=-1)
        symbols = [self.symbols[i] for i in range(len(self.symbols))
                   if freshest[i] >= 0 and now - freshest[i] > self.stale_after_ns]
        return Staleness(sources, symbols)

    def status(self, now_ns: int | None = None) -> list[SourceStatus]:
        """Every source heard: seq, counters, gaps and staleness. O(sources × instruments)."""
        now = time.time_ns() if now_ns is None else now_ns
        out = []
        for s, name in enumerate(self.source_names):
            row = self.sources[s]
            count = int(row[S_RANGES])
            held = range(max(0, count - MAX_RANGES), count)
            ranges = [(int(self.ranges[s, j % MAX_RANGES, 0]), int(self.ranges[s, j % MAX_RANGES, 1]))
                      for j in held]
            q = self.quotes[s]
            gapped = np.nonzero((q[:, Q_HAS] > 0) & (q[:, Q_NO] < row[S_GAP_MARK]))[0]
            out.append(SourceStatus(
                name, int(row[S_LAST_SEQ]), int(row[S_QUOTES]), int(row[S_TRADES]),
                int(row[S_HEARTBEATS]), int(row[S_GAPS]), int(row[S_MISSING]), int(row[S_HB_GAPS]),
                int(row[S_RESETS]), ranges, [self.symbols[i] for i in gapped],
                int(row[S_LAST_HEARD]), int(row[S_LAST_TS]),
                bool(now - row[S_LAST_HEARD] > self.stale_after_ns),
            ))
        return out

    # -- INTERNALS --------------------------------------------------------------------------------

    def _instrument(self, symbol: str) -> int:
        inst = self.ref.instruments.get(symbol)
        if inst is None:
            raise KeyError(f"unknown instrument {symbol!r}")
        return inst.index

    def _run_apply(self, frames: list[bytes], now: int) -> int:
        count = len(frames)
        buf = np.frombuffer(b"".join(frames), np.uint8)
        lens = np.fromiter(map(len, frames), np.int64, count)
        stats, ctl = self._stats, self._ctl
        before = int(stats[ST_RECEIVED])
        pos = offset = 0
        while True:
            pos = self._apply(buf, lens, pos, offset, count, now, self.stale_after_ns,
                              self._sym_bytes, self._sym_len, self._sym_table, self._names,
                              self._name_len, self._name_source, self.quotes, self.trades,
                              self.sources, self.ranges, self.marks, self._dirty, ctl, stats)
            stop = ctl[C_STOP]
            if stop == STOP_DONE:
                break
            offset = int(ctl[C_OFFSET])
            if stop == STOP_CARRY:
                self._carry = [frames[pos]]
                break
            if not self._learn_source(frames[pos + 1]):
                offset += len(frames[pos]) + len(frames[pos + 1])
                pos += 2
        return int(stats[ST_RECEIVED]) - before

    def _learn_source(self, payload: bytes) -> bool:
        """Add the source of a message the kernel parsed to the name table, accepted or (beyond
        ``max_sources``) refused, and return True to re-read it; False if the message was
        counted here instead (its name is not UTF-8, too long, or the table is full)."""
        stats = self._stats
        try:
            name = FEED_DECODER.decode(payload).source
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):  # name not UTF-8
            stats[ST_RECEIVED] += 1
            stats[ST_MALFORMED] += 1
            return False
        encoded = name.encode()
        row = int(self._ctl[C_NNAMES])
        if len(encoded) > MAX_SOURCE_BYTES or row == len(self._name_len):
            stats[ST_RECEIVED] += 1
            stats[ST_SOURCES_REFUSED] += 1
            return False
        self._names[row, : len(encoded)] = np.frombuffer(encoded, np.uint8)
        self._name_len[row] = len(encoded)
        k = len(self.source_names)
        if k < self._max_sources:
            self._name_source[row] = k
            self.source_names.append(name)
            self._ctl[C_NSOURCES] = k + 1
        self._ctl[C_NNAMES] = row + 1
        return True


_NOBLOCK = zmq.NOBLOCK
_PAYLOAD_FIRST_BYTES = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
