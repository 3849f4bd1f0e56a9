"""The scripted flow ``kilat run`` shows: two sessions trading through a live ``kilat serve``.

An admin posts a reference price (risk collars and values orders against it); a trader (bob,
account MM1) quotes AAPL; a PM (alice, FUND1) lifts the offer, rests a bid, modifies and cancels
it; the maker sees its fills pushed to its own session; a PM acting on an account that is not
hers is refused; a large order breaches a SOFT compliance rule and is held until a compliance
officer (carol) approves it. Every line printed is a real reply from the server.
"""

from __future__ import annotations

import os

from engine.constants import Side, TimeInForce
from engine.model import price_to_ticks
from kilat.config import KilatConfig


def run_demo(endpoint: str, config: KilatConfig, out=print) -> dict[str, list]:
    """Run the flow; returns every reply by step (tests check them)."""
    from kilat.cli import format_event

    spec = next(s for s in config.instruments if s.symbol == "AAPL")

    def px(text: str) -> int:
        return price_to_ticks(spec, text)

    tag = os.urandom(3).hex()  # ClOrdIDs are unique within a day; each demo run brings its own
    steps: dict[str, list] = {}
    from kilat.cli import client_for

    with (client_for(config, endpoint, "admin") as admin, client_for(config, endpoint, "bob") as maker,
          client_for(config, endpoint, "alice") as pm, client_for(config, endpoint, "carol") as officer):

        def step(title: str, replies: list) -> list:
            out(f"\n== {title}")
            for event in replies:
                out("  " + format_event(event, config))
            steps[title] = replies
            return replies

        step("admin posts an AAPL quote 189.90 / 190.10, last 190.00", admin.price(
            "AAPL", px("189.90"), px("190.10"), px("190.00")))
        step("MM1 offers 300 AAPL at 190.10", maker.submit(
            "MM1", "AAPL", Side.SELL, 300, px("190.10"), cl_ord_id=f"mm-{tag}-1", tif=TimeInForce.GTC))
        step("MM1 offers 200 AAPL at 190.20", maker.submit(
            "MM1", "AAPL", Side.SELL, 200, px("190.20"), cl_ord_id=f"mm-{tag}-2", tif=TimeInForce.GTC))
        step("MM1 bids 300 AAPL at 189.90", maker.submit(
            "MM1", "AAPL", Side.BUY, 300, px("189.90"), cl_ord_id=f"mm-{tag}-3", tif=TimeInForce.GTC))
        step("FUND1 buys 400 AAPL up to 190.20 (sweeps two levels)", pm.submit(
            "FUND1", "AAPL", Side.BUY, 400, px("190.20"), cl_ord_id=f"pm-{tag}-1"))
        step("MM1's session receives its maker fills, pushed", list(maker.events(timeout=1.0)))
        bid = step("FUND1 rests a bid: 500 AAPL at 189.50", pm.submit(
            "FUND1", "AAPL", Side.BUY, 500, px("189.50"), cl_ord_id=f"pm-{tag}-2"))
        order_id = bid[0].order_id
        step("FUND1 improves it to 189.95 for 250", pm.modify("FUND1", order_id, price=px("189.95"), qty=250))
        step("FUND1 sends the same ClOrdID again: refused, no second order", pm.submit(
            "FUND1", "AAPL", Side.BUY, 1, px("189.50"), cl_ord_id=f"pm-{tag}-2"))
        step("alice tries to buy for MM1, not her account: refused", pm.submit(
            "MM1", "AAPL", Side.BUY, 10, px("190.00"), cl_ord_id=f"pm-{tag}-3"))
        step("FUND1 bids 20% away from the market: the price collar denies it", pm.submit(
            "FUND1", "AAPL", Side.BUY, 10, px("152.00"), cl_ord_id=f"pm-{tag}-4"))
        book = pm.book("AAPL")
        out("\n== AAPL book now (ticks of 0.01)")
        out(f"  bids {[(lvl.price, lvl.qty) for lvl in book.bids]}  asks "
            f"{[(lvl.price, lvl.qty) for lvl in book.asks]}  last {book.last_px}")
        step("FUND1 cancels its bid", pm.cancel("FUND1", order_id))
        step("carol (compliance) puts issuer ACME on the watch list", officer.issuer_list(
            "watch", "ACME", True, "rumours"))
        step("FUND1 bids 10,000 AAPL at 189.00 (3.6% of the fund's NAV)", pm.submit(
            "FUND1", "AAPL", Side.BUY, 10_000, px("189.00"), cl_ord_id=f"pm-{tag}-5"))
        held = step("FUND1 bids 10,000 more: above 5% of NAV, held for approval", pm.submit(
            "FUND1", "AAPL", Side.BUY, 10_000, px("189.00"), cl_ord_id=f"pm-{tag}-6"))
        step("carol's session receives the alert, pushed", list(officer.events(timeout=1.0)))
        if held and type(held[0]).__name__ == "OrderHeld":
            step("carol approves it (four eyes: not the submitter)", officer.approve(
                held[0].order_id, "mandate allows 8%"))
            step("alice's session receives the release, pushed", list(pm.events(timeout=1.0)))
        step("FUND1 cancels its AAPL bids", pm.mass_cancel("FUND1", "AAPL"))
        if config.venues:
            _route_across_venues(pm, px, tag, step, out)
        mine = [o for o in pm.orders(account="FUND1") if o.cl_ord_id.startswith(f"pm-{tag}")]
        out("\n== FUND1's orders from this run")
        for o in mine:
            out(f"  #{o.order_id} {o.cl_ord_id} {o.side.name} {o.qty} {o.symbol} "
                f"{o.status} cum {o.cum_qty}")
        steps["orders"] = mine
    return steps


def _route_across_venues(pm, px, tag: str, step, out) -> None:
    """The smart order router: once the venues are up and quoting, a PM order crosses Kilat's own
    book first and goes out to both simulated venues as child orders; their fills come back."""
    import time

    from kilat.cli_top import _table

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the venues log on and publish within a few seconds
        venues = pm.venues()
        quoted = {row[1] for row in pm.prices("AAPL").rows if row[1] != "marks"}
        if all(row[1] == "up" for row in venues.rows) and len(quoted) == len(venues.rows):
            break
        time.sleep(0.25)
    out("\n== the venues, and AAPL's marks and quotes from their feeds")
    for line in _table(pm.venues(), 10) + _table(pm.prices("AAPL"), 10):
        out("  " + line)
    routed = step("FUND1 buys 1,500 AAPL up to 190.30 with route SOR: split over both venues", pm.submit(
        "FUND1", "AAPL", Side.BUY, 1_500, px("190.30"), cl_ord_id=f"pm-{tag}-sor", route="SOR"))
    order_id = routed[0].order_id if routed and hasattr(routed[0], "order_id") else 0
    fills: list = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fills += [e for e in pm.events(timeout=0.25) if getattr(e, "order_id", None) == order_id]
        if any(getattr(e, "leaves_qty", 1) == 0 for e in fills):
            break
    step("the venues' fills and child updates, pushed to alice's session", fills)
    out("\n== today's fills (kilat top shows this live)")
    for line in _table(pm.fills("FUND1", 10), 10):
        out("  " + line)
