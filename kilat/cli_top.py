"""``kilat top``: a live terminal view of a running Kilat, redrawn in place.

    kilat top [--interval 1.0] [--account FUND1] [--once]

Four panels, each one query to the server per refresh: prices (marks and every venue's best bid
and offer), venues (session, working child orders, fills today, sequence numbers), working orders
(newest first) and today's fills (newest first, with the venue each happened at). ``--once``
prints one frame without clearing the screen (for scripts and tests). Ctrl-C quits.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from kilat.cli import _client, _config

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def cmd_top(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        try:
            while True:
                frame = render(kc, args.account or "", args.rows, config)
                sys.stdout.write(frame if args.once else CLEAR + frame)
                sys.stdout.flush()
                if args.once:
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def render(kc, account: str, rows: int, config) -> str:
    """One frame of the view, as text. Four queries."""
    ticks = {spec.symbol: float(spec.tick_size) for spec in config.instruments}
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    orders = list(kc.orders(account=account, open_only=True))
    orders.sort(key=lambda o: o.order_id, reverse=True)
    lines = [f"kilat top — {kc.endpoint} — {now}", ""]
    lines += _table(kc.prices(), rows * 3)
    lines += _table(kc.venues(), rows)
    lines.append(f"working orders ({len(orders)})")
    lines.append(f"{'id':>8} {'account':8} {'symbol':8} {'side':4} {'status':16} {'qty':>8} {'cum':>8} {'avg_px':>10}")
    for o in orders[:rows]:
        lines.append(f"{o.order_id:>8} {o.account:8} {o.symbol:8} {o.side.name:4} {o.status:16} "
                     f"{o.qty:>8} {o.cum_qty:>8} {o.avg_px * ticks.get(o.symbol, 1.0):>10.4f}")
    lines.append("")
    lines += _table(kc.fills(account, rows), rows)
    return "\n".join(lines) + "\n"


def _table(view, rows: int) -> list[str]:
    """A ``TableView`` as aligned text lines with its title, at most ``rows`` rows."""
    shown = [[_cell(v) for v in row] for row in view.rows[:rows]]
    widths = [max([len(c)] + [len(r[k]) for r in shown]) for k, c in enumerate(view.columns)]
    out = [f"{view.title} ({len(view.rows)})",
           " ".join(c.rjust(w) for c, w in zip(view.columns, widths, strict=True))]
    out += [" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in shown]
    return out + [""]


def _cell(value) -> str:
    if isinstance(value, int) and value > 10**17:  # a time in ns since the epoch
        return datetime.fromtimestamp(value / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]
    return str(value)


def add_commands(sub, add) -> None:
    sp = add("top", cmd_top, "live view of prices, venues, working orders and fills (Ctrl-C quits)")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sp.add_argument("--account", help="only this account's orders and fills")
    sp.add_argument("--rows", type=int, default=10, help="rows per panel")
    sp.add_argument("--once", action="store_true", help="print one frame and exit")
