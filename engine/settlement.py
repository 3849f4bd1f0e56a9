"""Trade and settlement dates on exchange calendars, and the ledger of what settles when.

Dates
-----
``Calendars`` answers two questions per exchange (ISO 10383 MIC), from ``exchange_calendars``:

- ``trade_date(mic, ts_ns)``: the session an instant belongs to, labelled by its date in the
  exchange's time zone. A session is ``[open, close)`` in UTC nanoseconds (a lunch break, as on
  XTKS, is inside its session). An instant outside every session (before the open, after the
  close, overnight, a weekend or a holiday) belongs to the **next** session: a fill on Friday
  after the close trades on Monday. ``close_grace_ns`` (default 0) extends every close by a grace
  period, never past the next open, for venues whose closing auction prints after the listed
  close (Xetra's runs to about 17:35, its calendar closes at 17:30).
- ``settlement_date(mic, trade_date, n)``: the n-th session after the trade date on the same
  calendar (T+0 = the trade date itself). A trade date that is not a session is first moved to
  the next session, by the same rule as instants.

MIC ``""`` (no exchange) is a plain Monday-Friday calendar in UTC: every instant of a weekday
belongs to that day, a weekend instant to the next Monday; there are no holidays. A MIC that
``exchange_calendars`` does not name is looked up in ``MIC_ALIASES`` (the CME Group exchanges and
Globex all trade on ``CMES``); ``exchange_calendars``' own aliases (``XNAS`` -> ``XNYS``, ``CME``
-> ``CMES``, ...) also work. Anything else raises ``ConfigError`` naming the MIC, so configuration
checks can call ``check(mic)`` at start-up without building anything.

Cost: importing ``exchange_calendars`` takes 0.35-0.7 s, so it is imported on first need (MIC
"" never imports it). A plain calendar build takes 40-500 ms, most of it evaluating every holiday
rule the exchange ever had over 1970-2200; ``_windowed`` evaluates only the rules valid in the
years asked for, which brings a build to 40-130 ms (XNYS the slowest) with the same sessions.
Each MIC is built on first use and only its session table is kept (int lists of dates and
closes); a table covers a few whole years around the dates asked about, and a date outside it
rebuilds that MIC's table over the wider range (answers do not depend on the range).
``warm(mic, year)`` builds ahead of time. After that every answer is a binary search:
O(log sessions), about 3 us.

No wall clock is read: ``exchange_calendars`` defaults its range to "today", so a range is always
passed explicitly.

Ledger
------
``SettlementLedger`` books each fill as a pending securities movement (+qty bought, -qty sold)
and a pending cash movement (-notional paid, +notional received, exact in minor units) due on the
settlement date; ``settle(as_of)`` moves everything due on or before ``as_of`` to settled
positions and cash (cash starts from each account's opening cash). Busting a fill still pending
removes it; busting a fill that already settled books a reversing movement due on the original
settlement date, so the next ``settle()`` books it (the settled figures then net the trade out).
A correction is a bust plus a new movement with the same exec id and dates.

A block order trades in its block account, so its fills settle there; each allocation (and each
amend, cancel or re-split of one) is a pair of ``allocation`` movements between the block account
and the client account, the lots one way and the exact cash the other, due on the block fill's
settlement date (``allocate``). Once a block is wholly allocated its account nets to zero on that
date and each client account settles its own shares, as a custodian's allocation instructions do.
"""

from __future__ import annotations

import hashlib
import warnings
from bisect import bisect_left, bisect_right
from datetime import date
from decimal import Decimal

import msgspec
import numpy as np

from engine.constants import BUY, SELL
from engine.model import ConfigError, ReferenceData

#: MICs ``exchange_calendars`` does not name, mapped to the calendar they trade on.
MIC_ALIASES = {
    "XCME": "CMES",  # Chicago Mercantile Exchange
    "XCBT": "CMES",  # Chicago Board of Trade
    "XNYM": "CMES",  # NYMEX
    "XCEC": "CMES",  # COMEX
    "GLBX": "CMES",  # CME Globex
}

NS_PER_DAY = 86_400_000_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NO_CLOSE = np.iinfo(np.int64).max


def _day(d: date) -> int:
    """Days since 1970-01-01."""
    return d.toordinal() - _EPOCH_ORDINAL


def _date(days: int) -> date:
    return date.fromordinal(int(days) + _EPOCH_ORDINAL)


class _Sessions:
    """One calendar's sessions over whole years ``first_year..last_year``: session dates (days
    since the epoch) and the UTC nanosecond instant each session ends (close plus grace), as
    sorted Python lists (``bisect`` on a list is several times faster than numpy for one key)."""

    __slots__ = ("name", "tz", "first_year", "last_year", "first_day", "last_day", "days", "ends")

    def __init__(self, name: str, tz: str, first_year: int, last_year: int,
                 days: np.ndarray, ends: np.ndarray):
        self.name, self.tz = name, tz
        self.first_year, self.last_year = first_year, last_year
        self.first_day, self.last_day = _day(date(first_year, 1, 1)), _day(date(last_year, 12, 31))
        self.days: list[int] = days.tolist()
        self.ends: list[int] = ends.tolist()


# -- CALENDARS -----------------------------------------------------------------------------------


class Calendars:
    """Exchange calendars by MIC, built on first use and cached (see the module docstring)."""

    #: Years a MIC's first table covers before and after the year first asked about.
    YEARS_BEFORE, YEARS_AFTER = 1, 2

    def __init__(self, close_grace_ns: int = 0):
        if close_grace_ns < 0:
            raise ConfigError(f"close_grace_ns: expected 0 or more nanoseconds, got {close_grace_ns}")
        self.close_grace_ns = close_grace_ns
        self._tables: dict[str, _Sessions] = {}  # by calendar name (not alias)
        self._names: dict[str, str] = {}  # MIC -> calendar name, once checked

    # -- QUERIES --

    def check(self, mic: str) -> str:
        """The calendar name ``mic`` trades on; ``ConfigError`` if there is none. Builds nothing
        (imports ``exchange_calendars`` on the first real MIC). O(1)."""
        if not isinstance(mic, str):
            raise ConfigError(f"mic: expected a string ISO 10383 MIC, got {mic!r}")
        name = self._names.get(mic)
        if name is not None:
            return name
        if mic == "":
            name = ""
        else:
            xc = _xc()
            wanted = MIC_ALIASES.get(mic, mic)
            if not xc.calendar_utils.global_calendar_dispatcher.has_calendar(wanted):
                raise ConfigError(
                    f"mic: unknown exchange {mic!r}; expected an ISO 10383 MIC that exchange_calendars "
                    f"knows (e.g. XNYS, XETR, XTKS), one of {sorted(MIC_ALIASES)}, or \"\" for none"
                )
            name = xc.calendar_utils.global_calendar_dispatcher.resolve_alias(wanted)
        self._names[mic] = name
        return name

    def timezone(self, mic: str) -> str:
        """The IANA time zone session dates are in ("UTC" for MIC ""). Builds the calendar."""
        return "UTC" if self.check(mic) == "" else self._built(mic).tz

    def trade_date(self, mic: str, ts_ns: int) -> date:
        """The session (its date in the exchange's time zone) the instant ``ts_ns`` (UTC
        nanoseconds) belongs to; an instant outside a session belongs to the next one.
        O(log sessions)."""
        return self.trade_session(mic, ts_ns)[2]

    def trade_session(self, mic: str, ts_ns: int) -> tuple[int, int, date]:
        """``(start, end, trade date)``: every instant in ``[start, end)`` UTC nanoseconds has
        the trade date of ``ts_ns`` (the previous session's end to this one's), so a caller can
        keep the window and skip the calendar for the rest of the session. O(log sessions)."""
        ts_ns = int(ts_ns)
        # Sessions labelled before the UTC day minus 2 close before ts (time zones are < 1 day).
        first_day = ts_ns // NS_PER_DAY - 2
        t = self._tables.get(self._names.get(mic))  # None if not checked or built yet
        if t is None or first_day < t.first_day:
            t = self._table(mic, _date(first_day).year, _date(first_day).year)
        while True:
            k = bisect_right(t.ends, ts_ns)
            if 0 < k < len(t.ends):
                return t.ends[k - 1], t.ends[k], _date(t.days[k])
            if k == 0:  # before the table's first session: only this instant is known
                return ts_ns, ts_ns + 1, _date(t.days[0])
            t = self._table(mic, t.first_year, t.last_year + 1)

    def settlement_date(self, mic: str, trade_date: date, n: int) -> date:
        """The ``n``-th session after ``trade_date`` on ``mic``'s calendar (T+0 = the trade
        date); a trade date that is not a session counts from the next session. O(log sessions)."""
        if n < 0:
            raise ValueError(f"settlement days must be 0 or more, got {n}")
        day = _day(trade_date)
        t = self._tables.get(self._names.get(mic))  # None if not checked or built yet
        if t is None or day < t.first_day:
            t = self._table(mic, trade_date.year, trade_date.year)
        while True:
            k = bisect_left(t.days, day) + n
            if k < len(t.days):
                return _date(t.days[k])
            t = self._table(mic, t.first_year, t.last_year + 1)

    def is_session(self, mic: str, day: date) -> bool:
        """Whether ``day`` is a session on ``mic``'s calendar. O(log sessions)."""
        t = self._table(mic, day.year, day.year)
        k = bisect_left(t.days, _day(day))
        return k < len(t.days) and t.days[k] == _day(day)

    # -- BUILDING --

    def warm(self, mic: str, year: int) -> None:
        """Build ``mic``'s table around ``year`` now (start-up), rather than on the first fill."""
        self._table(mic, year, year)

    def _built(self, mic: str) -> _Sessions:
        name = self.check(mic)
        if name not in self._tables:
            raise ValueError(f"calendar {mic!r} is not built yet; call warm() or ask for a date first")
        return self._tables[name]

    def _table(self, mic: str, first_year: int, last_year: int) -> _Sessions:
        """A table of ``mic``'s calendar covering at least ``first_year..last_year``."""
        name = self.check(mic)
        t = self._tables.get(name)
        if t is not None and t.first_year <= first_year and last_year <= t.last_year:
            return t
        if t is None:
            lo, hi = first_year - self.YEARS_BEFORE, last_year + self.YEARS_AFTER
        else:
            lo, hi = min(t.first_year, first_year), max(t.last_year, last_year)
        t = _weekdays(lo, hi) if name == "" else _exchange(name, lo, hi, self.close_grace_ns)
        self._tables[name] = t
        if t.first_year > first_year:
            raise ValueError(f"the {name} calendar starts in {t.first_year}; no sessions in {first_year}")
        return t


def _xc():
    """``exchange_calendars``, imported on first need (it takes about 350 ms)."""
    import exchange_calendars

    return exchange_calendars


def _weekdays(first_year: int, last_year: int) -> _Sessions:
    """Monday-Friday in UTC; a session runs from its midnight to the next."""
    start, end = _day(date(first_year, 1, 1)), _day(date(last_year + 1, 1, 1))
    days = np.arange(start, end, dtype=np.int64)
    days = days[(days + 3) % 7 < 5]  # 1970-01-01 was a Thursday (weekday 3)
    return _Sessions("", "UTC", first_year, last_year, days, (days + 1) * NS_PER_DAY)


def _exchange(name: str, first_year: int, last_year: int, grace_ns: int) -> _Sessions:
    xc = _xc()
    # The calendar's class, for its bounds (XTKS starts 1997); the dispatcher keeps it privately.
    cls = xc.calendar_utils.global_calendar_dispatcher._calendar_factories[name]
    bound_min, bound_max = cls.bound_min(), cls.bound_max()
    start, end = date(first_year, 1, 1), date(last_year, 12, 31)
    if bound_min is not None and start < bound_min.date():
        if end < bound_min.date():
            raise ValueError(f"the {name} calendar starts {bound_min.date()}; no sessions in {first_year}")
        start, first_year = bound_min.date(), bound_min.year
    if bound_max is not None and end > bound_max.date():
        raise ValueError(f"the {name} calendar ends {bound_max.date()}; no sessions in {last_year}")
    with warnings.catch_warnings():  # pandas 3 deprecations inside exchange_calendars' build
        warnings.simplefilter("ignore", DeprecationWarning)
        cal = _windowed(cls, first_year - 1, last_year + 1)(start=start, end=end)
    days = cal.sessions.values.astype("datetime64[D]").astype(np.int64)
    ends = cal.closes_nanos.astype(np.int64)
    if grace_ns:
        next_opens = np.append(cal.opens_nanos[1:].astype(np.int64), _NO_CLOSE)
        ends = np.minimum(ends + grace_ns, next_opens)
    return _Sessions(name, str(cal.tz), first_year, last_year, days, ends)


def _windowed(cls, first_year: int, last_year: int):
    """``cls`` with its holiday rules evaluated over ``first_year..last_year`` only.

    An ``exchange_calendars`` calendar evaluates every holiday rule it ever had (XNYS has 53, back
    to 1885) into a business-day offset over pandas' default 1970-2200, whatever range it is built
    for: most of its build time. Here the regular holidays default to the window and rules valid
    only outside it (for regular holidays and special opens and closes) are left out. The sessions,
    opens and closes inside the window are the same (the tests compare them with the plain
    calendar's); the calendar object stays private to this module, so nothing uses it outside.
    """
    import pandas as pd

    base = _xc().exchange_calendar.HolidayCalendar
    lo, hi = pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)

    class WindowedHolidays(base):
        def holidays(self, start=None, end=None, return_name=False):
            return super().holidays(lo if start is None else start, hi if end is None else end,
                                    return_name)

    def narrow(holidays):
        if not isinstance(holidays, base):
            return holidays  # a weekday number (special times every Friday, say)
        return WindowedHolidays([r for r in holidays.rules
                                 if (r.start_date is None or r.start_date <= hi)
                                 and (r.end_date is None or r.end_date >= lo)])

    class Windowed(cls):
        @property
        def regular_holidays(self):
            rules = super().regular_holidays
            return None if rules is None else narrow(rules)

        @property
        def special_opens(self):
            return [(t, narrow(h)) for t, h in super().special_opens]

        @property
        def special_closes(self):
            return [(t, narrow(h)) for t, h in super().special_closes]

    return Windowed


# -- LEDGER --------------------------------------------------------------------------------------


class SettlementMovement(msgspec.Struct, frozen=True, array_like=True):
    """One pending or settled movement: securities (``qty`` lots, + received, - delivered) and
    cash (``cash`` minor units of ``currency``, + received, - paid) due on ``settle_date``."""

    seq: int  # booking order, unique per ledger
    exec_id: int
    account: str
    symbol: str
    currency: str
    qty: int
    cash: int
    trade_date: date
    settle_date: date
    reversal: bool = False  # books back a busted or corrected fill that had already settled
    allocation: bool = False  # moves a block fill's lots and cash to or from a client account


class Balances(msgspec.Struct, frozen=True):
    """Positions (lots by symbol) and cash (minor units by currency); zeros are left out."""

    positions: dict[str, int]
    cash: dict[str, int]


class SettlementLedger:
    """Pending and settled securities and cash per account (see the module docstring).

    Movements are kept by settlement day, each day's in booking order, so a fill costs O(1) and
    ``settle`` O(k) for k movements settled (plus sorting the few days pending)."""

    def __init__(self, ref: ReferenceData, portfolio, calendars: Calendars):
        self.ref, self.portfolio, self.calendars = ref, portfolio, calendars
        for inst in ref.by_index:
            calendars.check(inst.spec.mic)  # unknown MICs fail at start-up, not on a fill
        n_a, n_i = len(ref.account_index), len(ref.by_index)
        self._opening = np.zeros((n_a, len(portfolio.currencies)), dtype=np.int64)
        for a, acc in enumerate(ref.accounts.values()):
            for ccy, amount in acc.cash.items():
                c = portfolio.currency_index[ccy]
                self._opening[a, c] = int(Decimal(amount).scaleb(int(portfolio.minor[c])))
        self.position = np.zeros((n_a, n_i), dtype=np.int64)  # settled lots
        self.cash = self._opening.copy()  # settled cash, minor units
        self.settled_through: date | None = None  # the latest as_of settle() ran for
        self._pending = _Pending()  # by settlement day, then booking order
        self._fills: dict[int, SettlementMovement] = {}  # live fills (pending or settled) by exec id
        self._seq = 0
        # per instrument: (session start, end, trade date, settlement date, its day number) of the
        # latest fill; a fill inside that window needs no calendar lookup (a cache, not state)
        self._dates: dict[int, tuple[int, int, date, date, int]] = {}

    # -- COMMANDS --

    def on_fill(self, exec_id: int, account: str, instrument: int, side: int, qty: int,
                price: int, ts: int) -> SettlementMovement:
        """Book a fill of ``qty`` lots at ``price`` ticks, executed at ``ts`` (UTC ns), as
        pending until its settlement date. O(1)."""
        if exec_id in self._fills:
            raise ValueError(f"execution {exec_id} is already booked for settlement")
        if account not in self.ref.account_index:
            raise ValueError(f"unknown account {account!r} — execution {exec_id}")
        if not 0 <= instrument < len(self.ref.by_index):
            raise ValueError(f"unknown instrument index {instrument} — execution {exec_id}")
        if side not in (BUY, SELL) or qty <= 0 or price <= 0:
            raise ValueError(f"expected side BUY/SELL and positive qty and price, got side={side} "
                             f"qty={qty} price={price} — execution {exec_id}")
        dates = self._dates.get(instrument)
        if dates is None or not dates[0] <= ts < dates[1]:
            spec = self.ref.by_index[instrument].spec
            start, end, trade_date = self.calendars.trade_session(spec.mic, ts)
            settle_date = self.calendars.settlement_date(spec.mic, trade_date, spec.settlement_days)
            dates = (start, end, trade_date, settle_date, _day(settle_date))
            self._dates[instrument] = dates
        sign = 1 if side == BUY else -1
        return self._book(exec_id, account, instrument, sign * qty, price, dates[2], dates[3], dates[4])

    def bust(self, exec_id: int) -> SettlementMovement:
        """Undo a fill: a pending one is removed (and returned); a settled one gets a reversing
        movement due on its original settlement date (returned), booked by the next ``settle``.
        O(1)."""
        fill = self._fills.pop(exec_id, None)
        if fill is None:
            raise ValueError(f"no live execution {exec_id} to bust (unknown, or busted already)")
        if self._pending.remove(_day(fill.settle_date), fill.seq):
            return fill
        self._seq += 1
        reversal = msgspec.structs.replace(fill, seq=self._seq, qty=-fill.qty, cash=-fill.cash,
                                           reversal=True)
        self._pending.add(_day(reversal.settle_date), reversal)
        return reversal

    def correct(self, exec_id: int, qty: int, price: int) -> SettlementMovement:
        """Replace a fill's qty and price (same side, exec id, trade and settlement dates):
        ``bust`` then a new pending movement, returned. O(1)."""
        if qty <= 0 or price <= 0:
            raise ValueError(f"a correction needs positive qty and price, got qty={qty} price={price} "
                             f"— execution {exec_id}")
        old = self._fills.get(exec_id)
        if old is None:
            raise ValueError(f"no live execution {exec_id} to correct (unknown, or busted)")
        self.bust(exec_id)
        sign = 1 if old.qty > 0 else -1
        instrument = self.ref.instruments[old.symbol].index
        return self._book(exec_id, old.account, instrument, sign * qty, price,
                          old.trade_date, old.settle_date)

    def allocate(self, exec_id: int, block: str, account: str, qty: int, cash: int
                 ) -> tuple[SettlementMovement, SettlementMovement]:
        """Move ``qty`` lots (signed: what ``account`` receives) and ``cash`` minor units (what
        it pays, signed) of block fill ``exec_id``'s instrument from the ``block`` account to
        ``account``, due on that fill's trade and settlement dates: two pending movements,
        returned (block side, account side). O(1)."""
        fill = self._fills.get(exec_id)
        if fill is None:
            raise ValueError(f"no live execution {exec_id} to allocate from (unknown, or busted)")
        if fill.account != block:
            raise ValueError(f"execution {exec_id} was booked in {fill.account!r}, not in block "
                             f"account {block!r}")
        if account not in self.ref.account_index or account == block:
            raise ValueError(f"expected a client account other than the block {block!r}, got {account!r}")
        moves = []
        for who, sign in ((block, -1), (account, 1)):
            self._seq += 1
            m = SettlementMovement(self._seq, exec_id, who, fill.symbol, fill.currency, sign * qty,
                                   -sign * cash, fill.trade_date, fill.settle_date, allocation=True)
            self._pending.add(_day(m.settle_date), m)
            moves.append(m)
        return moves[0], moves[1]

    def settle(self, as_of: date) -> list[SettlementMovement]:
        """Settle every pending movement due on or before ``as_of``; returns them in (date,
        booking) order. Running it again for the same date settles nothing. O(k + days pending)."""
        done = []
        index, cur = self.ref.account_index, self.portfolio.currency_index
        for m in self._pending.pop_through(_day(as_of)):
            a = index[m.account]
            self.position[a, self.ref.instruments[m.symbol].index] += m.qty
            self.cash[a, cur[m.currency]] += m.cash
            done.append(m)
        if self.settled_through is None or as_of > self.settled_through:
            self.settled_through = as_of
        return done

    def _book(self, exec_id, account, instrument, qty, price, trade_date, settle_date, settle_day=None):
        spec = self.ref.by_index[instrument].spec
        notional = self.portfolio.notional_minor(instrument, price, abs(qty))
        self._seq += 1
        m = SettlementMovement(self._seq, exec_id, account, spec.symbol, spec.currency, qty,
                               -notional if qty > 0 else notional, trade_date, settle_date)
        self._pending.add(_day(settle_date) if settle_day is None else settle_day, m)
        self._fills[exec_id] = m
        return m

    # -- QUERIES --

    def settled(self, account: str) -> Balances:
        """Settled positions and cash of ``account``. O(instruments + currencies)."""
        a = self.ref.account_index[account]
        pos = {inst.symbol: int(q) for inst, q in zip(self.ref.by_index, self.position[a], strict=True) if q}
        cash = {c: int(v) for c, v in zip(self.portfolio.currencies, self.cash[a], strict=True) if v}
        return Balances(pos, cash)

    def pending(self, account: str | None = None) -> list[SettlementMovement]:
        """Pending movements (of one account, or all) in (settlement date, booking) order.
        O(pending)."""
        return [m for m in self._pending.values() if account is None or m.account == account]

    def pending_by_date(self, account: str) -> dict[date, Balances]:
        """What is still to settle for ``account``, netted per settlement date (ascending).
        O(pending)."""
        out: dict[date, tuple[dict, dict]] = {}
        for m in self.pending(account):
            pos, cash = out.setdefault(m.settle_date, ({}, {}))
            pos[m.symbol] = pos.get(m.symbol, 0) + m.qty
            cash[m.currency] = cash.get(m.currency, 0) + m.cash
        return {day: _balances(pos, cash) for day, (pos, cash) in out.items()}

    def projected(self, account: str, on: date) -> Balances:
        """Settled positions and cash of ``account`` as they will be once everything due on or
        before ``on`` has settled (overdue movements included). O(pending)."""
        now = self.settled(account)
        pos, cash = dict(now.positions), dict(now.cash)
        for m in self.pending(account):
            if m.settle_date > on:
                break
            pos[m.symbol] = pos.get(m.symbol, 0) + m.qty
            cash[m.currency] = cash.get(m.currency, 0) + m.cash
        return _balances(pos, cash)

    def validate(self) -> None:
        """Check the ledger's own invariants; raises AssertionError. O(pending + fills)."""
        for (day, seq), m in self._pending.items():
            if (day, seq) != (_day(m.settle_date), m.seq):
                raise AssertionError(f"pending movement {m.seq} filed under {(day, seq)}")
            if not (m.reversal or m.allocation) and self._fills.get(m.exec_id) != m:
                raise AssertionError(f"pending fill {m.exec_id} is not the live fill of that exec id")
        for exec_id, m in self._fills.items():
            if m.exec_id != exec_id or m.reversal or m.seq > self._seq:
                raise AssertionError(f"live fill under exec id {exec_id} is {m}")
            if m.qty and m.cash and (m.qty > 0) != (m.cash < 0):
                raise AssertionError(f"fill {exec_id} moves securities and cash the same way: {m}")

    def state_hash(self) -> bytes:
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    # -- SNAPSHOTS --

    def dump(self) -> bytes:
        """The ledger as msgpack, canonical (equal ledgers give equal bytes)."""
        accounts, currencies = list(self.ref.account_index), self.portfolio.currencies
        state = _LedgerState(
            positions=[(accounts[a], self.ref.by_index[i].symbol, int(self.position[a, i]))
                       for a, i in np.argwhere(self.position != 0).tolist()],
            cash=[(accounts[a], currencies[c], int(self.cash[a, c]))
                  for a in range(len(accounts)) for c in range(len(currencies))],
            pending=list(self._pending.values()),
            fills=[self._fills[e] for e in sorted(self._fills)],
            seq=self._seq,
            settled_through=self.settled_through,
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        """Load a dump. Accounts, instruments or currencies not in it start at zero positions
        and opening cash."""
        state = msgspec.msgpack.decode(data, type=_LedgerState)
        index, cur = self.ref.account_index, self.portfolio.currency_index
        self.position[:] = 0
        for account, symbol, qty in state.positions:
            self.position[index[account], self.ref.instruments[symbol].index] = qty
        self.cash[:] = self._opening
        for account, ccy, amount in state.cash:
            self.cash[index[account], cur[ccy]] = amount
        self._pending = _Pending()
        for m in sorted(state.pending, key=lambda m: (_day(m.settle_date), m.seq)):
            self._pending.add(_day(m.settle_date), m)
        self._fills = {m.exec_id: m for m in state.fills}
        self._seq = state.seq
        self.settled_through = state.settled_through


class _Pending:
    """Pending movements by settlement day, each day's in booking order. Bookings arrive in
    ``seq`` order, so appending keeps a day sorted: adding and removing are O(1), and the days
    pending at once are few (a settlement cycle's worth), so walking them in order is cheap."""

    __slots__ = ("_days",)

    def __init__(self):
        self._days: dict[int, dict[int, SettlementMovement]] = {}

    def add(self, day: int, m: SettlementMovement) -> None:
        """O(1)."""
        movements = self._days.get(day)
        if movements is None:
            movements = self._days[day] = {}
        movements[m.seq] = m

    def remove(self, day: int, seq: int) -> bool:
        """Remove movement ``seq`` due on ``day``; False if it is not pending. O(1)."""
        movements = self._days.get(day)
        if movements is None or movements.pop(seq, None) is None:
            return False
        if not movements:
            del self._days[day]
        return True

    def pop_through(self, day: int) -> list[SettlementMovement]:
        """Remove and return every movement due on or before ``day``, in (day, booking) order.
        O(k + days log days)."""
        out = []
        for d in sorted(k for k in self._days if k <= day):
            out.extend(self._days.pop(d).values())
        return out

    def items(self):
        """((day, seq), movement) in (day, booking) order. O(n + days log days)."""
        for day in sorted(self._days):
            for seq, m in self._days[day].items():
                yield (day, seq), m

    def values(self):
        return (m for _, m in self.items())


def _balances(pos: dict[str, int], cash: dict[str, int]) -> Balances:
    return Balances({s: q for s, q in pos.items() if q}, {c: v for c, v in cash.items() if v})


class _LedgerState(msgspec.Struct):
    positions: list[tuple[str, str, int]]
    cash: list[tuple[str, str, int]]
    pending: list[SettlementMovement]
    fills: list[SettlementMovement]
    seq: int
    settled_through: date | None
