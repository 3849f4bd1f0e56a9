"""Binance market-data captures: read a recorded WebSocket stream as feed-protocol prices.

A capture line is ``<local receive time, ns since epoch> <Binance combined-stream JSON>``, as
hftbacktest's collector writes it (see tests/data/ORIGIN.md). What each stream becomes:

- ``<symbol>@bookTicker`` → a quote: ``b``/``B`` best bid price/qty, ``a``/``A`` best ask.
- ``<symbol>@trade`` → a trade: ``p`` price, ``q`` qty; ``m`` true means the buyer was the
  maker, so the seller was the aggressor (aggressor 2), else the buyer (1).
- ``<symbol>@depth...`` diffs, and the REST depth snapshot a collector may record, are skipped
  and counted: the feed protocol carries the top of the book, which ``bookTicker`` gives
  exactly, while a book rebuilt from 100 ms diffs lags it and is only as complete as the one
  snapshot it starts from (and the diffs it touches).

Decimal strings become integers exactly: a price must be a whole number of the instrument's
``tick_size`` (else the line is refused); a size is cut down to whole lots of
``lot_size × multiplier`` units (0.00001 BTC for Kilat's BTCUSDT) and ``rounded`` counts the
sizes that lost a remainder. A trade smaller than one lot is skipped (``dust``). Every refusal
names the file and line.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import msgspec

from engine.model import ConfigError, InstrumentSpec, price_to_ticks


class CaptureError(ValueError):
    """A capture line that cannot be read; the message names the file and line number."""


class CaptureQuote(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A ``bookTicker``: best bid and ask in ticks and lots (0 price = empty side)."""

    line: int
    recv_ns: int
    update_id: int
    bid: int
    bid_size: int
    ask: int
    ask_size: int


class CaptureTrade(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A ``trade``: price in ticks, qty in lots, aggressor 1 buyer / 2 seller."""

    line: int
    recv_ns: int
    trade_id: int
    price: int
    qty: int
    aggressor: int
    trade_ns: int  # Binance's trade time (ms resolution), for reference


class CaptureCounts(msgspec.Struct):
    """What a capture held: ``lines`` read, how many became quotes and trades, and why the rest
    were skipped."""

    lines: int = 0
    quotes: int = 0
    trades: int = 0
    depth: int = 0  # depth diffs skipped
    snapshot: int = 0  # REST depth snapshots skipped
    dust: int = 0  # trades under one lot, skipped
    rounded: int = 0  # sizes cut down to whole lots

    @property
    def skipped(self) -> int:
        return self.depth + self.snapshot + self.dust


class _Envelope(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Snapshot(msgspec.Struct):
    lastUpdateId: int  # noqa: N815 - Binance's field name


class _BookTicker(msgspec.Struct):
    u: int
    s: str
    b: str
    B: str  # noqa: N815
    a: str
    A: str  # noqa: N815


class _Trade(msgspec.Struct):
    t: int
    s: str
    p: str
    q: str
    T: int  # noqa: N815
    m: bool


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_SNAPSHOT = msgspec.json.Decoder(_Snapshot)
_BOOK_TICKER = msgspec.json.Decoder(_BookTicker)
_TRADE = msgspec.json.Decoder(_Trade)


class BinanceCapture:
    """Iterate a capture file (plain or gzip) as ``CaptureQuote`` and ``CaptureTrade`` of one
    instrument; ``counts`` fills in as it goes. Raises ``CaptureError`` naming the line.
    O(1) memory; one pass."""

    def __init__(self, path: str | Path, spec: InstrumentSpec):
        self.path = Path(path)
        self.spec = spec
        self.counts = CaptureCounts()
        self._unit = Decimal(spec.lot_size) * spec.multiplier
        self._prices: dict[str, int] = {}

    def __iter__(self) -> Iterator[CaptureQuote | CaptureTrade]:
        number = 0
        with _open(self.path) as f:
            lines = iter(f)
            while True:
                try:
                    raw = next(lines)
                except StopIteration:
                    return
                except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
                    raise CaptureError(f"{self._where(number + 1)}: cannot read the capture "
                                       f"({exc})") from exc
                number += 1
                self.counts.lines = number
                event = self._line(number, raw)
                if event is not None:
                    yield event

    # -- INTERNALS --------------------------------------------------------------------------------

    def _where(self, number: int) -> str:
        return f"{self.path.name}:{number}"

    def _line(self, number: int, raw: bytes) -> CaptureQuote | CaptureTrade | None:
        stamp, _, body = raw.strip().partition(b" ")
        if not stamp.isdigit() or not body:
            raise CaptureError(f"{self._where(number)}: expected '<receive ns> <JSON>', got "
                               f"{raw[:60]!r}")
        recv_ns = int(stamp)
        try:
            if body.startswith(b'{"stream"'):
                envelope = _ENVELOPE.decode(body)
            else:
                _SNAPSHOT.decode(body)
                self.counts.snapshot += 1
                return None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CaptureError(f"{self._where(number)}: not a Binance combined-stream message "
                               f"or depth snapshot ({exc})") from exc
        stream = envelope.stream
        kind = stream.partition("@")[2]
        try:
            if kind == "bookTicker":
                return self._quote(number, recv_ns, _BOOK_TICKER.decode(envelope.data))
            if kind == "trade":
                return self._trade(number, recv_ns, _TRADE.decode(envelope.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CaptureError(f"{self._where(number)}: bad {stream} message ({exc})") from exc
        if kind.startswith("depth"):
            self.counts.depth += 1
            return None
        raise CaptureError(f"{self._where(number)}: unexpected stream {stream!r} (expected "
                           "<symbol>@bookTicker, @trade or @depth...)")

    def _quote(self, number: int, recv_ns: int, m: _BookTicker) -> CaptureQuote:
        self._check_symbol(number, m.s)
        self.counts.quotes += 1
        return CaptureQuote(number, recv_ns, m.u,
                            self._ticks(number, m.b, "b"), self._lots(number, m.B, "B"),
                            self._ticks(number, m.a, "a"), self._lots(number, m.A, "A"))

    def _trade(self, number: int, recv_ns: int, m: _Trade) -> CaptureTrade | None:
        self._check_symbol(number, m.s)
        qty = self._lots(number, m.q, "q")
        if qty == 0:
            self.counts.dust += 1
            return None
        self.counts.trades += 1
        return CaptureTrade(number, recv_ns, m.t, self._ticks(number, m.p, "p"), qty,
                            2 if m.m else 1, m.T * 1_000_000)

    def _check_symbol(self, number: int, symbol: str) -> None:
        if symbol.upper() != self.spec.symbol.upper():
            raise CaptureError(f"{self._where(number)}: the capture's symbol is {symbol!r}, "
                               f"replaying it as {self.spec.symbol} (pick that instrument)")

    def _ticks(self, number: int, text: str, field: str) -> int:
        ticks = self._prices.get(text)
        if ticks is None:
            try:
                ticks = price_to_ticks(self.spec, text, f"{self._where(number)}: field {field!r}")
            except ConfigError as exc:
                raise CaptureError(str(exc)) from None
            if ticks < 0:
                raise CaptureError(f"{self._where(number)}: field {field!r}: negative price {text}")
            if len(self._prices) < 100_000:
                self._prices[text] = ticks
        return ticks

    def _lots(self, number: int, text: str, field: str) -> int:
        try:
            value = Decimal(text)
            if not value.is_finite() or value < 0:
                raise InvalidOperation
            lots, rest = divmod(value, self._unit)
        except InvalidOperation:
            raise CaptureError(f"{self._where(number)}: field {field!r}: expected a non-negative "
                               f"decimal size, got {text!r}") from None
        if rest:
            self.counts.rounded += 1
        return int(lots)


def _open(path: Path):
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        return gzip.open(path, "rb") if gzipped else open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read the capture ({exc.strerror or exc})") from exc
