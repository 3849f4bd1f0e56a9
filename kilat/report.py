"""``kilat report KIND``: reports built from a projection of the journal (``kilat.projection``).

One function per report, each returning rows (a list of dicts, one column set per report):

    blotter      orders, fills, busts and refusals by time
    positions    positions and exposure per account (``by`` sector, country or currency: totals)
    pnl          realised and unrealised P&L per UTC day, account and instrument
    allocations  block allocations (none until the engine records ``AllocationMade``)
    tca          per order: arrival-price slippage, fill rate, time to fill, venue mix
                 (``by`` account, symbol, user or all: aggregated)
    forecast     positions and cash per account once working orders fill at their limits and
                 pending settlements settle

Writers: ``write_csv``, ``write_json`` and ``write_chart`` (a PNG with matplotlib, imported only
when a chart is asked for). ``run_report`` is what the CLI calls; ``add_report(add)`` registers
the command. See docs/reports.md for every column and its unit.

Units: quantities are lots; prices are decimals of the instrument's price (ticks × tick size);
money is exact ``Decimal`` major units of the currency named in the row, except ``*_base``
columns (float, converted with the portfolio's FX rates). A missing price or FX rate is ``None``
(empty in CSV, null in JSON), never 0. Times are UTC.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import msgspec
import numpy as np

from engine.constants import BUY
from engine.model import ticks_to_price
from kilat.projection import Projection, project, side_name

KINDS = ("blotter", "positions", "pnl", "allocations", "tca", "forecast")
POSITION_GROUPS = ("sector", "country", "currency")
TCA_GROUPS = ("all", "account", "symbol", "user")


# -- UNITS ----------------------------------------------------------------------------------------


def _time(ts: int) -> str:
    """ns since the epoch -> ISO 8601 UTC with milliseconds ("" for 0)."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _px(proj: Projection, symbol: str, ticks: int | None) -> Decimal | None:
    """Ticks -> the instrument's decimal price; None for no price (None or 0)."""
    if not ticks:
        return None
    return ticks_to_price(proj.ref.instruments[symbol].spec, ticks)


def _avg_px(proj: Projection, symbol: str, notional: int, qty: int) -> Decimal | None:
    """notional (tick·lots) / qty as a decimal price: the tick's decimals when it lies on the
    grid, else 4 more (rounded half even)."""
    if not qty:
        return None
    tick = proj.ref.instruments[symbol].spec.tick_size
    exact = Fraction(notional, qty) * Fraction(tick)
    at_tick = Decimal(exact.numerator) / Decimal(exact.denominator)
    shown = at_tick.quantize(tick)
    if shown == exact:
        return shown  # on the tick grid: the tick's decimals (190.10, not 190.1)
    return at_tick.quantize(tick.scaleb(-4))  # between ticks: 4 more decimals


def _money(proj: Projection, instrument: int, tick_lots: int | None) -> Decimal | None:
    """tick·lots of an instrument -> exact major units of its currency (rounded half up to the
    currency's minor unit, as ``Portfolio.notional_minor``)."""
    if tick_lots is None:
        return None
    pf = proj.portfolio
    minor = int(pf.minor[pf.inst_currency[instrument]])
    return Decimal(pf.notional_minor(instrument, tick_lots, 1)).scaleb(-minor)


def _minor(proj: Projection, currency: str, amount: int) -> Decimal:
    pf = proj.portfolio
    return Decimal(int(amount)).scaleb(-int(pf.minor[pf.currency_index[currency]]))


def _fx(proj: Projection, from_ccy: str, to_ccy: str) -> float | None:
    pf = proj.portfolio
    rate = float(pf.fx[pf.currency_index[from_ccy], pf.currency_index[to_ccy]])
    return None if np.isnan(rate) else rate


def _base(value: Decimal | None, rate: float | None, currency: str, proj: Projection) -> float | None:
    if value is None or rate is None:
        return None
    pf = proj.portfolio
    return round(float(value) * rate, int(pf.minor[pf.currency_index[currency]]))


def _pick(value: str | None, want: str | None) -> bool:
    return not want or value == want


# -- BLOTTER --------------------------------------------------------------------------------------

BLOTTER_COLUMNS = ("time", "seq", "event", "order_id", "account", "user", "cl_ord_id", "symbol",
                   "side", "order_type", "tif", "qty", "price", "cum_qty", "status", "exec_id",
                   "venue", "arrival_price", "reason")


def blotter(proj: Projection, account: str | None = None, symbol: str | None = None,
            user: str | None = None, status: str | None = None) -> list[dict]:
    """Orders (at their submit), fills, busts/corrections and refusals, oldest first. ``status``
    is the order's latest status (a fill row carries its order's). O(events log events)."""
    rows: list[tuple[int, int, int, dict]] = []
    for o in proj.orders.values():
        if not (_pick(o.account, account) and _pick(o.symbol, symbol) and _pick(o.user, user)
                and _pick(o.status, status)):
            continue
        common = {"order_id": o.order_id, "account": o.account, "user": o.user,
                  "cl_ord_id": o.cl_ord_id, "symbol": o.symbol, "side": side_name(o.side),
                  "order_type": o.order_type, "tif": o.tif, "status": o.status}
        rows.append((o.submitted_ts, o.seq, 0, common | {
            "event": "order", "qty": o.qty, "price": _px(proj, o.symbol, o.price),
            "cum_qty": o.cum_qty, "exec_id": None, "venue": None,
            "arrival_price": _px(proj, o.symbol, o.arrival_px), "reason": o.reason,
            "time": _time(o.submitted_ts), "seq": o.seq,
        }))
        for f in o.fills:
            rows.append((f.ts, f.seq, 1, common | {
                "event": "fill", "qty": f.qty, "price": _px(proj, f.symbol, f.price),
                "cum_qty": None, "exec_id": f.exec_id, "venue": f.venue, "arrival_price": None,
                "reason": "busted" if f.busted else "corrected" if f.corrected else "",
                "time": _time(f.ts), "seq": f.seq,
            }))
    by_id = proj.orders
    for b in proj.busts:
        o = by_id[b.order_id]
        if not (_pick(o.account, account) and _pick(o.symbol, symbol) and _pick(o.user, user)
                and _pick(o.status, status)):
            continue
        rows.append((b.ts, b.seq, 2, {
            "event": b.kind, "order_id": b.order_id, "account": b.account, "user": o.user,
            "cl_ord_id": o.cl_ord_id, "symbol": b.symbol, "side": side_name(o.side),
            "order_type": o.order_type, "tif": o.tif, "qty": b.qty,
            "price": _px(proj, b.symbol, b.price), "cum_qty": None, "status": o.status,
            "exec_id": b.exec_id, "venue": None, "arrival_price": None,
            "reason": f"was {b.old_qty} @ {_px(proj, b.symbol, b.old_price)}: {b.reason}".rstrip(": "),
            "time": _time(b.ts), "seq": b.seq,
        }))
    for r in proj.refusals:
        if not (_pick(r.account, account) and _pick(r.symbol, symbol) and _pick(r.user, user)
                and _pick("Denied", status)):
            continue
        rows.append((r.ts, r.seq, 0, {
            "event": "denied" if r.request == "SubmitOrder" else "modify denied", "order_id": None,
            "account": r.account, "user": r.user, "cl_ord_id": r.cl_ord_id, "symbol": r.symbol,
            "side": side_name(r.side) if r.side is not None else None, "order_type": None,
            "tif": None, "qty": r.qty,
            "price": _px(proj, r.symbol, r.price) if r.symbol else None, "cum_qty": None,
            "status": "Denied", "exec_id": None, "venue": None, "arrival_price": None,
            "reason": f"{r.code}: {r.reason}", "time": _time(r.ts), "seq": r.seq,
        }))
    rows.sort(key=lambda t: (t[0], t[1], t[2], t[3]["exec_id"] or 0))
    return [{c: row[c] for c in BLOTTER_COLUMNS} for *_, row in rows]


# -- POSITIONS ------------------------------------------------------------------------------------


def positions(proj: Projection, account: str | None = None, symbol: str | None = None,
              by: str | None = None) -> list[dict]:
    """Positions with market value at the last marks, per account × instrument; with ``by``
    (sector, country, currency) the totals of each account's group. O(accounts × instruments)."""
    pf, ledger = proj.portfolio, proj.ledger
    rows = []
    for a, acc in enumerate(proj.ref.accounts.values()):
        if not _pick(acc.id, account):
            continue
        for inst in proj.ref.by_index:
            i, spec = inst.index, inst.spec
            qty = int(pf.position[a, i])
            wb, ws = int(pf.working_buy[a, i]), int(pf.working_sell[a, i])
            if not (qty or wb or ws) or not _pick(spec.symbol, symbol):
                continue
            mark = int(pf.mark[i])
            value = _money(proj, i, qty * mark) if mark else None
            rate = _fx(proj, spec.currency, acc.base_currency)
            avg = ledger.average_cost(a, i)
            unreal = ledger.unrealised(a, i) if ledger.qty(a, i) else 0
            rows.append({
                "account": acc.id, "fund": acc.fund_id, "base_currency": acc.base_currency,
                "symbol": spec.symbol, "sector": spec.sector, "country": spec.country,
                "currency": spec.currency, "asset_class": spec.asset_class,
                "qty": qty, "units": qty * spec.lot_size, "working_buy": wb, "working_sell": ws,
                "avg_cost": None if avg is None else _avg_px(proj, spec.symbol, avg.numerator, avg.denominator),
                "mark": _px(proj, spec.symbol, mark), "market_value": value,
                "unrealised": _money(proj, i, unreal), "fx_rate": rate,
                "market_value_base": _base(value, rate, acc.base_currency, proj),
            })
    return _group_positions(rows, by) if by else rows


def _group_positions(rows: list[dict], by: str) -> list[dict]:
    if by not in POSITION_GROUPS:
        raise ValueError(f"positions by: expected one of {', '.join(POSITION_GROUPS)}, got {by!r}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["account"], row[by] or "(none)"), []).append(row)
    out = []
    for (acc, key), members in sorted(groups.items()):
        values = [r["market_value_base"] for r in members]
        missing = sorted(r["symbol"] for r in members if r["market_value_base"] is None)
        known = [v for v in values if v is not None]
        out.append({
            "account": acc, "base_currency": members[0]["base_currency"], "group": by, "key": key,
            "positions": len(members),
            "long_base": None if missing else round(sum(v for v in known if v > 0), 2),
            "short_base": None if missing else round(sum(v for v in known if v < 0), 2),
            "net_base": None if missing else round(sum(known), 2),
            "gross_base": None if missing else round(sum(abs(v) for v in known), 2),
            "missing": " ".join(missing),
        })
    return out


# -- P&L ------------------------------------------------------------------------------------------

PNL_COLUMNS = ("day", "account", "symbol", "currency", "position", "mark", "realised",
               "unrealised", "unrealised_change", "total", "realised_to_date", "base_currency",
               "fx_to_base", "realised_base", "unrealised_base", "total_base")


def pnl(proj: Projection, account: str | None = None, symbol: str | None = None) -> list[dict]:
    """Per UTC day × account × instrument: that day's realised P&L, the unrealised P&L at the
    day's last marks, its change over the day, and their sum, in the instrument's currency and
    (``*_base``) in the account's base currency at the FX rate of the day's end (None when that
    rate is missing). O(days × cells)."""
    accounts = list(proj.ref.accounts)
    rows = []
    prev: dict[tuple[int, int], object] = {}
    for day in sorted(proj.days):
        cells = proj.days[day]
        for cell in sorted(set(cells) | set(prev)):
            now = cells.get(cell)
            before = prev.get(cell)
            a, i = cell
            spec = proj.ref.by_index[i].spec
            if not (_pick(accounts[a], account) and _pick(spec.symbol, symbol)):
                continue
            qty = now.qty if now else 0
            realised_now = now.realised if now else 0
            realised_then = before.realised if before else 0
            unreal_now = now.unrealised if now else 0
            unreal_then = before.unrealised if before else 0
            if not qty and realised_now == realised_then and not unreal_then:
                continue  # a flat cell with nothing new that day
            change = None if unreal_now is None or unreal_then is None else unreal_now - unreal_then
            realised = realised_now - realised_then
            base = proj.ref.accounts[accounts[a]].base_currency
            rate = now.fx_base if now else before.fx_base
            total = None if change is None else _money(proj, i, realised + change)
            rows.append({
                "day": day.isoformat(), "account": accounts[a], "symbol": spec.symbol,
                "currency": spec.currency, "position": qty,
                "mark": _px(proj, spec.symbol, now.mark if now else 0),
                "realised": _money(proj, i, realised),
                "unrealised": _money(proj, i, unreal_now),
                "unrealised_change": _money(proj, i, change),
                "total": total,
                "realised_to_date": _money(proj, i, realised_now),
                "base_currency": base,
                "fx_to_base": rate,
                "realised_base": _base(_money(proj, i, realised), rate, base, proj),
                "unrealised_base": _base(_money(proj, i, unreal_now), rate, base, proj),
                "total_base": _base(total, rate, base, proj),
            })
        prev = cells
    return rows


# -- ALLOCATIONS ----------------------------------------------------------------------------------


def allocations(proj: Projection, account: str | None = None, symbol: str | None = None) -> list[dict]:
    """Block allocations as the engine recorded them (``AllocationMade`` events), every field.
    Empty until the engine has them."""
    rows = []
    for event in proj.allocations:
        row = {"time": _time(getattr(event, "ts", 0))}
        row |= {name: getattr(event, name) for name in event.__struct_fields__}
        accounts = {row.get(k) for k in ("account", "from_account", "to_account") if k in row}
        if account and account not in accounts:
            continue
        if not _pick(row.get("symbol"), symbol):
            continue
        rows.append(row)
    return rows


# -- TCA ------------------------------------------------------------------------------------------

TCA_COLUMNS = ("order_id", "account", "user", "symbol", "side", "order_type", "status", "qty",
               "cum_qty", "fill_rate", "arrival_time", "arrival_price", "avg_price",
               "slippage_bps", "first_fill_ms", "completion_ms", "fills", "venue_mix", "note")


def tca(proj: Projection, account: str | None = None, symbol: str | None = None,
        user: str | None = None, status: str | None = None) -> list[dict]:
    """Per accepted order, in arrival order. Slippage is signed so that positive is worse for
    the client: (avg − arrival) / arrival × 10 000 for a buy, the negative for a sell. O(fills)."""
    rows = []
    for o in sorted(proj.orders.values(), key=lambda o: (o.arrival_ts, o.order_id)):
        if not o.arrival_ts or not (_pick(o.account, account) and _pick(o.symbol, symbol)
                                    and _pick(o.user, user) and _pick(o.status, status)):
            continue
        fills = o.live_fills
        cum, notional = o.cum_qty, o.notional
        slip = None
        note = []
        if not o.arrival_px:
            note.append("no arrival price")
        if not fills:
            note.append("no fills")
        if fills and o.arrival_px:
            sign = 1 if o.side == BUY else -1
            slip = round(float(sign * (Fraction(notional, cum) - o.arrival_px) / o.arrival_px * 10_000), 4)
        complete = fills and cum == o.qty
        venues: dict[str, int] = {}
        for f in fills:
            venues[f.venue] = venues.get(f.venue, 0) + f.qty
        rows.append({
            "order_id": o.order_id, "account": o.account, "user": o.user, "symbol": o.symbol,
            "side": side_name(o.side), "order_type": o.order_type, "status": o.status,
            "qty": o.qty, "cum_qty": cum, "fill_rate": round(cum / o.qty, 6) if o.qty else None,
            "arrival_time": _time(o.arrival_ts), "arrival_price": _px(proj, o.symbol, o.arrival_px),
            "avg_price": _avg_px(proj, o.symbol, notional, cum), "slippage_bps": slip,
            "first_fill_ms": (fills[0].ts - o.arrival_ts) / 1e6 if fills else None,
            "completion_ms": (max(f.ts for f in fills) - o.arrival_ts) / 1e6 if complete else None,
            "fills": len(fills),
            "venue_mix": " ".join(f"{v}={q / cum:.0%}" for v, q in sorted(venues.items())),
            "note": "; ".join(note),
            "_weight": _arrival_value(proj, o.symbol, o.arrival_px, cum),
        })
    return rows


def _arrival_value(proj: Projection, symbol: str, arrival_px: int, cum: int) -> float | None:
    """What the filled lots were worth at arrival, in USD-equivalent when a rate exists (the
    weight of an order in aggregated slippage); None when unknown."""
    if not (arrival_px and cum):
        return None
    inst = proj.ref.instruments[symbol]
    rate = _fx(proj, inst.spec.currency, "USD") if "USD" in proj.portfolio.currency_index else 1.0
    if rate is None:
        return None
    return arrival_px * cum * float(proj.portfolio.unit_value[inst.index]) * rate


def tca_summary(rows: list[dict], by: str = "all") -> list[dict]:
    """Aggregate ``tca`` rows per ``by`` (all, account, symbol, user): order counts, the overall
    fill rate (Σ cum / Σ qty), mean and value-weighted slippage, median times, venue mix."""
    if by not in TCA_GROUPS:
        raise ValueError(f"tca by: expected one of {', '.join(TCA_GROUPS)}, got {by!r}")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault("ALL" if by == "all" else r[by], []).append(r)
    out = []
    for key, members in sorted(groups.items()):
        slipped = [r for r in members if r["slippage_bps"] is not None]
        weighted = [r for r in slipped if r["_weight"] is not None]
        total_w = sum(r["_weight"] for r in weighted)
        firsts = [r["first_fill_ms"] for r in members if r["first_fill_ms"] is not None]
        completes = [r["completion_ms"] for r in members if r["completion_ms"] is not None]
        qty, cum = sum(r["qty"] for r in members), sum(r["cum_qty"] for r in members)
        venues: dict[str, int] = {}
        for r in members:
            for part in r["venue_mix"].split():
                venue, share = part.split("=")
                venues[venue] = venues.get(venue, 0) + round(float(share.rstrip("%")) / 100 * r["cum_qty"])
        out.append({
            "group": by, "key": key, "orders": len(members),
            "orders_filled": sum(1 for r in members if r["cum_qty"]),
            "orders_without_arrival": sum(1 for r in members if r["arrival_price"] is None),
            "qty": qty, "cum_qty": cum, "fill_rate": round(cum / qty, 6) if qty else None,
            "slippage_bps_mean": round(statistics.fmean(r["slippage_bps"] for r in slipped), 4) if slipped else None,
            "slippage_bps_weighted": (round(sum(r["slippage_bps"] * r["_weight"] for r in weighted) / total_w, 4)
                                      if weighted and len(weighted) == len(slipped) and total_w else None),
            "first_fill_ms_median": statistics.median(firsts) if firsts else None,
            "completion_ms_median": statistics.median(completes) if completes else None,
            "venue_mix": " ".join(f"{v}={q / sum(venues.values()):.0%}" for v, q in sorted(venues.items()))
            if venues and sum(venues.values()) else "",
        })
    return out


# -- FORECAST -------------------------------------------------------------------------------------

FORECAST_COLUMNS = ("account", "kind", "asset", "unit", "settled", "pending_settlement",
                    "trade_date_balance", "working_buys", "working_sells", "projected",
                    "settles_by", "note")


def forecast(proj: Projection, account: str | None = None, symbol: str | None = None) -> list[dict]:
    """Per account: each instrument's position (lots) and each currency's cash (major units):
    settled, pending settlement, the trade-date balance (settled + pending), what working orders
    add if they fill at their limit prices, and the projection (trade-date balance + working).
    A working order without a limit price (market, stop) leaves the cash projection of its
    currency missing. O(accounts × (instruments + currencies) + pending + orders)."""
    pf, st = proj.portfolio, proj.settlement
    working = [o for o in proj.pipeline.orders.values()
               if o.is_working or o.status.value == "PendingApproval"]
    rows = []
    for a, acc in enumerate(proj.ref.accounts.values()):
        if not _pick(acc.id, account):
            continue
        settled = st.settled(acc.id) if st is not None else None
        pending = st.pending(acc.id) if st is not None else []
        cash_buy: dict[str, int] = {}
        cash_sell: dict[str, int] = {}
        unpriced: dict[str, list[int]] = {}
        for o in working:
            if o.account != acc.id:
                continue
            ccy = pf.currencies[int(pf.inst_currency[o.instrument])]
            leaves = o.qty - o.cum_qty
            if o.order_type.name not in ("LIMIT", "STOP_LIMIT"):
                unpriced.setdefault(ccy, []).append(o.order_id)
                continue
            value = pf.notional_minor(o.instrument, o.price, leaves)
            book = cash_buy if o.side == BUY else cash_sell
            book[ccy] = book.get(ccy, 0) + value
        for inst in proj.ref.by_index:
            i, sym = inst.index, inst.symbol
            pos, wb, ws = int(pf.position[a, i]), int(pf.working_buy[a, i]), int(pf.working_sell[a, i])
            done = settled.positions.get(sym, 0) if settled else None
            moving = [mv for mv in pending if mv.symbol == sym and mv.qty]
            if not (pos or wb or ws or done or moving) or not _pick(sym, symbol):
                continue
            rows.append({
                "account": acc.id, "kind": "position", "asset": sym, "unit": "lots",
                "settled": done, "pending_settlement": sum(mv.qty for mv in moving),
                "trade_date_balance": pos, "working_buys": wb, "working_sells": ws,
                "projected": pos + wb - ws,
                "settles_by": max((mv.settle_date for mv in moving), default=None),
                "note": "",
            })
        if symbol:
            continue
        for c, ccy in enumerate(pf.currencies):
            cash = int(pf.cash[a, c])
            done = settled.cash.get(ccy, 0) if settled else None
            moving = [mv for mv in pending if mv.currency == ccy and mv.cash]
            if not (cash or done or moving or ccy in cash_buy or ccy in cash_sell or ccy in unpriced):
                continue
            buys, sells = cash_buy.get(ccy, 0), cash_sell.get(ccy, 0)
            rows.append({
                "account": acc.id, "kind": "cash", "asset": ccy, "unit": ccy,
                "settled": None if done is None else _minor(proj, ccy, done),
                "pending_settlement": _minor(proj, ccy, sum(mv.cash for mv in moving)),
                "trade_date_balance": _minor(proj, ccy, cash),
                "working_buys": -_minor(proj, ccy, buys), "working_sells": _minor(proj, ccy, sells),
                "projected": None if ccy in unpriced else _minor(proj, ccy, cash - buys + sells),
                "settles_by": max((mv.settle_date for mv in moving), default=None),
                "note": ("working orders without a limit price: " + " ".join(map(str, unpriced[ccy])))
                if ccy in unpriced else "",
            })
    return rows


# -- WRITERS --------------------------------------------------------------------------------------


def _public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def write_csv(rows: list[dict], out, columns: Iterable[str] | None = None) -> None:
    """Rows as CSV with a header to a path or a text stream. None is an empty cell."""
    rows = _public(rows)
    columns = list(columns or (rows[0].keys() if rows else ()))
    own = isinstance(out, (str, Path))
    stream = open(out, "w", newline="", encoding="utf-8") if own else out
    try:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in columns])
    finally:
        if own:
            stream.close()


_JSON = msgspec.json.Encoder(decimal_format="number")


def write_json(rows: list[dict], out) -> None:
    """Rows as a JSON array to a path or a text stream. Decimals are JSON numbers (exact
    digits), None is null, dates ISO 8601."""
    data = msgspec.json.format(_JSON.encode(_public(rows)), indent=2) + b"\n"
    if isinstance(out, (str, Path)):
        Path(out).write_bytes(data)
    else:
        out.write(data.decode())


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed, or this report has no chart."""


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ChartUnavailable("charts need matplotlib, which is not installed "
                               "(pip install matplotlib)") from exc
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_chart(kind: str, rows: list[dict], path: Path | str, title: str = "") -> None:
    """A PNG of the report: positions (market value in base currency), pnl (cumulative P&L per
    account and instrument), tca (slippage per order), forecast (lots now and projected).
    Raises ChartUnavailable for other reports or without matplotlib."""
    draw = _CHARTS.get(kind)
    if draw is None:
        raise ChartUnavailable(f"the {kind} report has no chart (charts: {', '.join(_CHARTS)})")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    try:
        draw(ax, rows)
        ax.set_title(title or f"kilat report {kind}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _chart_positions(ax, rows: list[dict]) -> None:
    shown = [r for r in rows if r.get("market_value_base") is not None]
    labels = [f"{r['account']} {r['symbol']}" for r in shown]
    ax.barh(labels, [r["market_value_base"] for r in shown],
            color=["tab:green" if r["market_value_base"] >= 0 else "tab:red" for r in shown])
    missing = len(rows) - len(shown)
    ax.set_xlabel("market value, account base currency" + (f" ({missing} unpriced, not shown)" if missing else ""))


def _chart_pnl(ax, rows: list[dict]) -> None:
    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r["unrealised"] is None:
            continue
        key = f"{r['account']} {r['symbol']} ({r['currency']})"
        days, values = series.setdefault(key, ([], []))
        days.append(r["day"])
        values.append(float(r["realised_to_date"] + r["unrealised"]))
    for key, (days, values) in series.items():
        ax.plot(days, values, marker="o", label=key)
    ax.set_ylabel("P&L to date (realised + unrealised), instrument currency")
    if series:
        ax.legend(fontsize=8)


def _chart_tca(ax, rows: list[dict]) -> None:
    shown = [r for r in rows if r.get("slippage_bps") is not None]
    labels = [f"{r['order_id']} {r['side']} {r['symbol']}" for r in shown]
    ax.bar(labels, [r["slippage_bps"] for r in shown],
           color=["tab:red" if r["slippage_bps"] > 0 else "tab:green" for r in shown])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("arrival slippage, bps (positive = worse for the client)")
    ax.tick_params(axis="x", labelrotation=45)


def _chart_forecast(ax, rows: list[dict]) -> None:
    shown = [r for r in rows if r["kind"] == "position"]
    labels = [f"{r['account']} {r['asset']}" for r in shown]
    x = np.arange(len(shown))
    ax.bar(x - 0.2, [r["trade_date_balance"] for r in shown], 0.4, label="now (trade date)")
    ax.bar(x + 0.2, [r["projected"] for r in shown], 0.4, label="projected")
    ax.set_xticks(x, labels, rotation=45)
    ax.set_ylabel("position, lots")
    ax.legend()


_CHARTS: dict[str, Callable] = {"positions": _chart_positions, "pnl": _chart_pnl,
                                "tca": _chart_tca, "forecast": _chart_forecast}


# -- THE COMMAND ----------------------------------------------------------------------------------


def build_rows(kind: str, proj: Projection, filters: dict | None = None) -> tuple[list[dict], tuple | None]:
    """The rows of report ``kind`` with ``filters`` (account, symbol, user, status, by) and
    the column order to write (None: the rows' own)."""
    f = {k: v for k, v in (filters or {}).items() if v}
    account, symbol, user, status, by = (f.get(k) for k in ("account", "symbol", "user", "status", "by"))
    if kind == "blotter":
        return blotter(proj, account, symbol, user, status), BLOTTER_COLUMNS
    if kind == "positions":
        return positions(proj, account, symbol, by), None
    if kind == "pnl":
        return pnl(proj, account, symbol), PNL_COLUMNS
    if kind == "allocations":
        return allocations(proj, account, symbol), None
    if kind == "tca":
        rows = tca(proj, account, symbol, user, status)
        return (tca_summary(rows, by), None) if by else (rows, TCA_COLUMNS)
    if kind == "forecast":
        return forecast(proj, account, symbol), FORECAST_COLUMNS
    raise ValueError(f"report: expected one of {', '.join(KINDS)}, got {kind!r}")


def run_report(kind: str, data_dir, config, filters: dict | None = None, out_format: str = "csv",
               out_path=None, chart_path=None) -> int:
    """Replay ``<data_dir>/journal.kjl`` (read only), build report ``kind`` and write it as CSV
    or JSON to ``out_path`` (stdout if None), and a PNG to ``chart_path`` if given. ``config``
    is a KilatConfig, a path or None (the default config). Returns 0, or 2 with a message on
    stderr (no journal, bad filter, no chart for this report, matplotlib missing)."""
    from engine.journal import JournalError
    from kilat.config import KilatConfig, load_config

    try:
        if not isinstance(config, KilatConfig):
            config = load_config(config)
        if kind not in KINDS:
            raise ValueError(f"report: expected one of {', '.join(KINDS)}, got {kind!r}")
        if out_format not in ("csv", "json"):
            raise ValueError(f"--format: expected csv or json, got {out_format!r}")
        if chart_path and kind not in _CHARTS:
            raise ChartUnavailable(f"the {kind} report has no chart (charts: {', '.join(_CHARTS)})")
        if chart_path:
            _pyplot()  # say so before a long replay
        journal = Path(data_dir or config.server.data_dir) / "journal.kjl"
        proj = project(config, journal)
        rows, columns = build_rows(kind, proj, filters)
        if out_format == "json":
            write_json(rows, out_path or sys.stdout)
        else:
            write_csv(rows, out_path or sys.stdout, columns)
        if chart_path:
            write_chart(kind, rows, chart_path)
    except (ValueError, FileNotFoundError, ChartUnavailable, JournalError) as exc:
        print(f"kilat report: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args) -> int:
    filters = {"account": args.account, "symbol": args.symbol, "user": args.channel,
               "status": args.status, "by": args.by}
    fmt = "json" if getattr(args, "json", False) else args.format
    return run_report(args.kind, args.data_dir, args.config, filters, fmt, args.out, args.chart)


def add_report(add) -> None:
    """Register ``kilat report KIND`` with the main parser's ``add(name, func, help)``."""
    sp = add("report", cmd_report, "reports from the journal (read only): blotter, positions, "
                                   "pnl, allocations, tca, forecast")
    sp.add_argument("kind", choices=KINDS)
    sp.add_argument("--data-dir", help="where the journal is (default: from the config)")
    sp.add_argument("--account")
    sp.add_argument("--symbol")
    sp.add_argument("--channel", help="only orders this user/channel sent (blotter, tca)")
    sp.add_argument("--status", help="only orders whose latest status is this (blotter, tca), "
                                     "e.g. Filled, Canceled, Denied")
    sp.add_argument("--by", help="positions: sector|country|currency totals; "
                                 "tca: all|account|symbol|user summary")
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.add_argument("--out", help="write the table here (default: stdout)")
    sp.add_argument("--chart", help="also draw a PNG here (positions, pnl, tca, forecast)")


def report_text(kind: str, proj: Projection, filters: dict | None = None, fmt: str = "csv") -> str:
    """The report as text (CSV or JSON): for tests and notebooks."""
    rows, columns = build_rows(kind, proj, filters)
    buf = io.StringIO()
    (write_json(rows, buf) if fmt == "json" else write_csv(rows, buf, columns))
    return buf.getvalue()
