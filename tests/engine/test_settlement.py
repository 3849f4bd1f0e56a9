"""Trade and settlement dates on exchange calendars, and the settlement ledger."""

from __future__ import annotations

import random
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from engine.constants import BUY, SELL
from engine.model import AccountSpec, ConfigError, InstrumentSpec, ReferenceData
from engine.portfolio import Portfolio
from engine.settlement import Calendars, SettlementLedger, _exchange

NY, BERLIN, TOKYO, UTC = (ZoneInfo(z) for z in ("America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC"))


def ns(text: str, tz: ZoneInfo) -> int:
    """UTC nanoseconds of a local wall time "YYYY-MM-DD HH:MM"."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()) * 1_000_000_000


def inst(symbol, currency, tick, mic, days, lot=1):
    return InstrumentSpec(symbol=symbol, currency=currency, tick_size=Decimal(tick), lot_size=lot,
                          price_band=(Decimal(tick), Decimal(100000)), mic=mic, settlement_days=days)


AAPL, SAP, TOYOTA, OTC, SAP2 = 0, 1, 2, 3, 4
OPENING = {"USD": Decimal("1000000.00"), "EUR": Decimal("500000.00"), "JPY": Decimal("90000000")}


@pytest.fixture(scope="module")
def calendars():
    return Calendars()  # one per module: the tests share the built tables, as the engine would


@pytest.fixture
def ledger(calendars):
    ref = ReferenceData(
        [inst("AAPL", "USD", "0.01", "XNYS", 1),
         inst("SAP", "EUR", "0.005", "XETR", 2),
         inst("7203", "JPY", "1", "XTKS", 2, lot=100),
         inst("OTC", "USD", "0.01", "", 0),
         inst("SAP2", "EUR", "0.01", "XETR", 1)],
        [AccountSpec(id="A1", cash=OPENING), AccountSpec(id="A2")],
    )
    return SettlementLedger(ref, Portfolio(ref), calendars)


# -- CALENDARS ---------------------------------------------------------------------------------


def test_trade_date_when_instant_is_inside_the_session_then_that_session(calendars):
    assert calendars.trade_date("XNYS", ns("2023-12-22 10:00", NY)) == date(2023, 12, 22)
    assert calendars.trade_date("XTKS", ns("2023-12-28 11:45", TOKYO)) == date(2023, 12, 28)  # lunch break


def test_trade_date_when_after_the_close_or_at_the_weekend_then_next_session(calendars):
    # Friday after the close, the weekend and Christmas Monday all trade on Tuesday the 26th.
    for when in ("2023-12-22 16:00", "2023-12-22 19:30", "2023-12-23 12:00", "2023-12-25 11:00",
                 "2023-12-26 04:00"):
        assert calendars.trade_date("XNYS", ns(when, NY)) == date(2023, 12, 26), when
    # Tokyo 00:30 local on a weekday is before that day's open: the same local date.
    assert calendars.trade_date("XTKS", ns("2023-12-27 00:30", TOKYO)) == date(2023, 12, 27)
    # Tokyo's year-end holidays: after the close on the 29th trades on 4 January.
    assert calendars.trade_date("XTKS", ns("2023-12-29 15:30", TOKYO)) == date(2024, 1, 4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pandas 3 inside exchange_calendars
def test_trade_date_matches_exchange_calendars_minute_to_session_on_random_minutes(calendars):
    import exchange_calendars as xc
    import pandas as pd

    rng = random.Random(7)
    lo, hi = ns("2023-01-01 00:00", UTC), ns("2024-12-31 00:00", UTC)
    for mic in ("XNYS", "XETR", "XTKS", "CMES"):
        oracle = xc.get_calendar(mic, start="2022-12-01", end="2025-01-31")
        for _ in range(300):
            ts = rng.randrange(lo, hi) // 60_000_000_000 * 60_000_000_000
            want = oracle.minute_to_session(pd.Timestamp(ts, tz="UTC"), direction="next").date()
            assert calendars.trade_date(mic, ts) == want, (mic, pd.Timestamp(ts, tz="UTC"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pandas 3 inside exchange_calendars
@pytest.mark.parametrize("mic", ["XNYS", "XETR", "XTKS", "CMES", "XLON"])
def test_windowed_build_gives_the_plain_calendars_sessions_and_closes(mic):
    import exchange_calendars as xc

    for first, last in ((2000, 2002), (2023, 2026)):  # 2001: NYSE closed after 9/11 (ad hoc)
        plain = xc.get_calendar(mic, start=date(first, 1, 1), end=date(last, 12, 31))
        table = _exchange(mic, first, last, 0)
        assert table.days == plain.sessions.values.astype("datetime64[D]").astype("int64").tolist()
        assert table.ends == plain.closes_nanos.tolist()


def test_settlement_date_counts_sessions_and_skips_holidays(calendars):
    assert calendars.settlement_date("XNYS", date(2023, 12, 22), 1) == date(2023, 12, 26)
    assert calendars.settlement_date("XNYS", date(2023, 12, 22), 0) == date(2023, 12, 22)
    assert calendars.settlement_date("XETR", date(2023, 12, 21), 2) == date(2023, 12, 27)
    assert calendars.settlement_date("XTKS", date(2023, 12, 28), 2) == date(2024, 1, 4)


def test_settlement_date_when_trade_date_is_not_a_session_then_counts_from_the_next(calendars):
    assert not calendars.is_session("XNYS", date(2023, 12, 25))
    assert calendars.settlement_date("XNYS", date(2023, 12, 25), 0) == date(2023, 12, 26)
    assert calendars.settlement_date("XNYS", date(2023, 12, 23), 1) == date(2023, 12, 27)


def test_no_mic_is_monday_to_friday_in_utc(calendars):
    assert calendars.timezone("") == "UTC"
    assert calendars.trade_date("", ns("2023-12-22 23:59", UTC)) == date(2023, 12, 22)  # Friday
    assert calendars.trade_date("", ns("2023-12-23 00:00", UTC)) == date(2023, 12, 25)  # Sat -> Mon
    assert calendars.trade_date("", ns("2023-12-25 00:00", UTC)) == date(2023, 12, 25)  # no holidays
    assert calendars.settlement_date("", date(2023, 12, 22), 1) == date(2023, 12, 25)


def test_unknown_mic_when_checked_then_config_error_names_it(calendars):
    with pytest.raises(ConfigError, match="unknown exchange 'XXXX'"):
        calendars.check("XXXX")
    with pytest.raises(ConfigError, match="'XXXX'"):
        calendars.trade_date("XXXX", 0)


def test_unknown_mic_when_ledger_built_then_config_error(calendars):
    ref = ReferenceData([inst("Z", "USD", "0.01", "XBAD", 1)], [AccountSpec(id="A1")])
    with pytest.raises(ConfigError, match="'XBAD'"):
        SettlementLedger(ref, Portfolio(ref), calendars)


def test_cme_mics_resolve_to_the_cme_calendar(calendars):
    assert calendars.check("XCME") == calendars.check("CME") == calendars.check("CMES") == "CMES"
    assert calendars.check("XNAS") == "XNYS"  # exchange_calendars' own alias
    # CME Globex: Sunday 18:00 Chicago opens Monday's session.
    chicago = ZoneInfo("America/Chicago")
    assert calendars.trade_date("XCME", ns("2024-03-10 18:00", chicago)) == date(2024, 3, 11)


def test_close_grace_keeps_a_closing_auction_print_on_its_day():
    late = ns("2023-12-21 17:32", BERLIN)  # Xetra's closing auction ends after the 17:30 close
    assert Calendars().trade_date("XETR", late) == date(2023, 12, 22)
    assert Calendars(close_grace_ns=10 * 60 * 10**9).trade_date("XETR", late) == date(2023, 12, 21)


def test_dates_far_from_the_first_table_extend_it_and_agree_with_a_fresh_calendar():
    grown = Calendars()
    grown.warm("XNYS", 2023)
    for day in (date(2005, 12, 23), date(2030, 12, 24), date(2023, 12, 29)):
        assert grown.settlement_date("XNYS", day, 3) == Calendars().settlement_date("XNYS", day, 3)
    # The last session of a table's last year settles in the next year.
    assert grown.settlement_date("XNYS", date(2030, 12, 31), 2) == date(2031, 1, 3)


# -- LEDGER --------------------------------------------------------------------------------------


def test_t1_xnys_fill_on_friday_before_christmas_settles_tuesday(ledger):
    m = ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    assert (m.trade_date, m.settle_date, m.qty, m.cash) == (date(2023, 12, 22), date(2023, 12, 26), 100, -1893700)
    assert ledger.settle(date(2023, 12, 25)) == []
    assert ledger.settled("A1").positions == {}
    assert ledger.settle(date(2023, 12, 26)) == [m]
    assert ledger.settled("A1") .positions == {"AAPL": 100}
    assert ledger.settled("A1").cash["USD"] == 100_000_000 - 1_893_700
    ledger.validate()


def test_fill_after_friday_close_trades_next_session_and_settles_after_it(ledger):
    m = ledger.on_fill(1, "A1", AAPL, SELL, 5, 19000, ns("2023-12-22 17:15", NY))
    assert (m.trade_date, m.settle_date) == (date(2023, 12, 26), date(2023, 12, 27))
    m = ledger.on_fill(2, "A1", SAP, BUY, 1, 20000, ns("2023-12-23 11:00", BERLIN))  # Saturday
    assert (m.trade_date, m.settle_date) == (date(2023, 12, 27), date(2023, 12, 29))


def test_t2_on_xetr_and_xtks(ledger):
    sap = ledger.on_fill(1, "A1", SAP, BUY, 10, 32000, ns("2023-12-21 10:00", BERLIN))
    toyota = ledger.on_fill(2, "A1", TOYOTA, BUY, 3, 2500, ns("2023-12-28 10:00", TOKYO))
    assert (sap.trade_date, sap.settle_date) == (date(2023, 12, 21), date(2023, 12, 27))
    assert (toyota.trade_date, toyota.settle_date) == (date(2023, 12, 28), date(2024, 1, 4))


def test_t0_settles_on_the_trade_date(ledger):
    m = ledger.on_fill(1, "A2", OTC, BUY, 7, 1001, ns("2023-12-20 22:00", UTC))
    assert m.trade_date == m.settle_date == date(2023, 12, 20)
    assert ledger.settle(date(2023, 12, 20)) == [m]
    assert ledger.settled("A2") == ledger.projected("A2", date(2023, 12, 20))
    assert ledger.settled("A2").cash == {"USD": -7007}


def test_cash_is_exact_minor_units_for_usd_eur_and_jpy(ledger):
    usd = ledger.on_fill(1, "A1", AAPL, SELL, 3, 12345, ns("2023-12-20 10:00", NY))  # 3 × 123.45
    eur = ledger.on_fill(2, "A1", SAP, BUY, 3, 20001, ns("2023-12-20 10:00", BERLIN))  # 3 × 100.005
    jpy = ledger.on_fill(3, "A1", TOYOTA, SELL, 3, 2501, ns("2023-12-20 10:00", TOKYO))  # 300 × 2501
    assert (usd.currency, usd.cash, usd.qty) == ("USD", 37035, -3)
    assert (eur.currency, eur.cash, eur.qty) == ("EUR", -30002, 3)  # 300.015 EUR, half up
    assert (jpy.currency, jpy.cash, jpy.qty) == ("JPY", 750300, -3)
    ledger.settle(date(2024, 1, 31))
    assert ledger.settled("A1").cash == {"USD": 100_000_000 + 37035, "EUR": 50_000_000 - 30002,
                                         "JPY": 90_000_000 + 750300}


def test_bust_when_pending_then_removed_and_nothing_settles(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    removed = ledger.bust(1)
    assert removed.exec_id == 1 and not removed.reversal
    assert ledger.pending() == []
    assert ledger.settle(date(2023, 12, 29)) == []
    assert ledger.settled("A1").positions == {}
    with pytest.raises(ValueError, match="execution 1"):
        ledger.bust(1)
    ledger.validate()


def test_bust_when_settled_then_reversal_books_back_at_next_settle(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    ledger.settle(date(2023, 12, 26))
    before = ledger.settled("A1")
    reversal = ledger.bust(1)
    assert reversal.reversal and (reversal.qty, reversal.cash) == (-100, 1893700)
    assert reversal.settle_date == date(2023, 12, 26)  # overdue: the next settle books it
    assert ledger.settled("A1") == before
    assert ledger.projected("A1", date(2023, 12, 27)).positions == {}
    assert ledger.settle(date(2023, 12, 27)) == [reversal]
    assert ledger.settled("A1").positions == {}
    assert ledger.settled("A1").cash["USD"] == 100_000_000
    ledger.validate()


def test_correct_when_pending_then_replaced_and_when_settled_then_difference_settles(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    fixed = ledger.correct(1, 60, 18900)
    assert [m.qty for m in ledger.pending()] == [60] and fixed.cash == -1134000
    assert fixed.settle_date == date(2023, 12, 26)
    ledger.settle(date(2023, 12, 26))
    ledger.correct(1, 50, 18900)
    assert [(m.qty, m.reversal) for m in ledger.pending()] == [(-60, True), (50, False)]
    ledger.settle(date(2023, 12, 27))
    assert ledger.settled("A1").positions == {"AAPL": 50}
    assert ledger.settled("A1").cash["USD"] == 100_000_000 - 945000
    ledger.validate()


def test_settle_twice_for_the_same_date_settles_nothing_more(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    ledger.on_fill(2, "A1", SAP, SELL, 4, 30000, ns("2023-12-22 10:00", BERLIN))
    assert len(ledger.settle(date(2023, 12, 28))) == 2  # SAP is T+2: 22nd -> 27th, 28th
    h = ledger.state_hash()
    assert ledger.settle(date(2023, 12, 28)) == []
    assert ledger.state_hash() == h
    assert ledger.settled_through == date(2023, 12, 28)


def test_pending_by_date_and_projection(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 10000, ns("2023-12-21 10:00", NY))  # settles 22nd
    ledger.on_fill(2, "A1", AAPL, BUY, 50, 10000, ns("2023-12-22 10:00", NY))  # settles 26th
    ledger.on_fill(3, "A1", SAP2, SELL, 10, 5000, ns("2023-12-22 10:00", BERLIN))  # settles 27th
    by_date = ledger.pending_by_date("A1")
    assert list(by_date) == [date(2023, 12, 22), date(2023, 12, 26), date(2023, 12, 27)]
    assert by_date[date(2023, 12, 26)].positions == {"AAPL": 50}
    assert by_date[date(2023, 12, 26)].cash == {"USD": -500000}
    on_26th = ledger.projected("A1", date(2023, 12, 26))
    assert on_26th.positions == {"AAPL": 150}
    assert on_26th.cash == {"USD": 100_000_000 - 1_500_000, "EUR": 50_000_000, "JPY": 90_000_000}
    assert ledger.pending_by_date("A2") == {}


def test_dump_and_load_keep_the_state_hash(ledger, calendars):
    ledger.on_fill(1, "A1", AAPL, BUY, 100, 18937, ns("2023-12-22 10:00", NY))
    ledger.on_fill(2, "A2", TOYOTA, SELL, 2, 2500, ns("2023-12-28 10:00", TOKYO))
    ledger.on_fill(3, "A1", SAP, BUY, 1, 20001, ns("2023-12-28 10:00", BERLIN))
    ledger.settle(date(2023, 12, 26))
    ledger.bust(1)
    data = ledger.dump()
    fresh = SettlementLedger(ledger.ref, Portfolio(ledger.ref), calendars)
    assert fresh.state_hash() != ledger.state_hash()
    fresh.load(data)
    fresh.validate()
    assert fresh.state_hash() == ledger.state_hash()
    assert fresh.dump() == data
    assert fresh.settle(date(2024, 1, 10)) == ledger.settle(date(2024, 1, 10))
    assert fresh.state_hash() == ledger.state_hash()


def test_fill_with_bad_input_is_refused(ledger):
    ledger.on_fill(1, "A1", AAPL, BUY, 1, 100, 0)
    for args, text in [((1, "A1", AAPL, BUY, 1, 100, 0), "already booked"),
                       ((2, "ZZ", AAPL, BUY, 1, 100, 0), "unknown account"),
                       ((2, "A1", 99, BUY, 1, 100, 0), "unknown instrument"),
                       ((2, "A1", AAPL, 7, 1, 100, 0), "side"),
                       ((2, "A1", AAPL, BUY, 0, 100, 0), "qty")]:
        with pytest.raises(ValueError, match=text):
            ledger.on_fill(*args)


def test_dates_cached_per_session_agree_with_the_calendar_for_random_instants(ledger, calendars):
    rng = random.Random(7)
    start = ns("2023-12-20 00:00", UTC)
    instants = sorted(start + rng.randrange(12 * 86_400) * 1_000_000_000 for _ in range(300))
    instants += [start + rng.randrange(12 * 86_400) * 1_000_000_000 for _ in range(100)]  # out of order
    for n, ts in enumerate(instants):
        for i, (mic, days) in enumerate((("XNYS", 1), ("XETR", 2), ("XTKS", 2), ("", 0))):
            m = ledger.on_fill(4 * n + i, "A1", i, BUY, 1, 100, ts)
            want = calendars.trade_date(mic, ts)
            assert (m.trade_date, m.settle_date) == (want, calendars.settlement_date(mic, want, days)), (mic, ts)
