"""The price-feed protocol: what a feed publishes on its PUB socket and Kilat's feed handler reads.

Every message is two frames, ``[topic, payload]``:

- ``topic`` is the instrument symbol followed by ``|`` (``b"AAPL|"``), so a subscriber can filter
  by prefix without ``AAPL`` also matching ``AAPLX``; heartbeats use the topic ``b"|"``.
- ``payload`` is one msgpack-encoded ``FeedMessage``: a tagged array whose first element names
  the message (``["Quote", ...]``), then the fields in the order declared here.

Prices are int64 ticks of the instrument's ``tick_size`` and sizes int64 lots of its ``lot_size``,
as Kilat's reference data defines them (a feed and its subscribers share the instrument list, as
an exchange's instrument definitions are shared). ``seq`` counts a source's quotes and trades from
1 with no holes; a heartbeat carries the last ``seq`` sent without consuming one, so a subscriber
that hears nothing new still learns whether it missed something. ``ts`` is the source's time in
nanoseconds since the epoch.
"""

from __future__ import annotations

import msgspec

from engine.messages import I64

_FEED = {"frozen": True, "tag": True, "array_like": True, "gc": False}

#: Topic of heartbeats (a symbol's topic is ``symbol + "|"``).
HEARTBEAT_TOPIC = b"|"


class Quote(msgspec.Struct, **_FEED):
    """Best bid and offer of one instrument; a 0 price means that side is empty."""

    source: str
    seq: I64
    symbol: str
    bid: I64
    bid_size: I64
    ask: I64
    ask_size: I64
    ts: I64


class Trade(msgspec.Struct, **_FEED):
    """One trade printed by the source. ``aggressor`` is 1 (buyer), 2 (seller) or 0 (unknown)."""

    source: str
    seq: I64
    symbol: str
    price: I64
    qty: I64
    aggressor: I64
    ts: I64


class FeedHeartbeat(msgspec.Struct, **_FEED):
    """The source is alive; ``seq`` is the last quote or trade it sent (0: none yet)."""

    source: str
    seq: I64
    ts: I64


FeedMessage = Quote | Trade | FeedHeartbeat

FEED_DECODER = msgspec.msgpack.Decoder(FeedMessage)


def topic(symbol: str) -> bytes:
    """The topic frame of a symbol's messages."""
    return symbol.encode() + b"|"
