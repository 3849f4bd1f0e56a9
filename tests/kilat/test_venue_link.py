"""The service's bridge to its feeds: what it journals each loop turn from real feed sockets."""

from __future__ import annotations

import time

import msgspec

from engine.messages import PriceTick, VenueQuote
from gateways.feed import FeedPublisher
from kilat.config import VenueSpec, check_config, load_config
from kilat.venue_link import VenueLink
from tests.conftest import TRANSPORT_CONFIG, free_port

AAPL_TICKS = 19_000


def setup():
    pubs = {mic: FeedPublisher(f"tcp://127.0.0.1:{free_port()}", mic) for mic in ("XSIM1", "XSIM2")}
    config = msgspec.structs.replace(load_config(TRANSPORT_CONFIG), venues=[
        VenueSpec(mic, feed_endpoint=pub.bound_endpoint, instruments=["AAPL"]) for mic, pub in pubs.items()])
    link = VenueLink(config, check_config(config), None, venue_endpoint="tcp://127.0.0.1:*")
    time.sleep(0.3)  # the SUB's subscriptions reach the publishers
    return config, link, pubs


def turn(link, now: int, want: int) -> list:
    """Loop turns at ``now`` until ``want`` inputs came (the quotes cross a real socket)."""
    out: list = []
    for _ in range(100):
        out += link.inputs(now)
        if len(out) >= want:
            break
        time.sleep(0.02)
    return out


def test_a_venue_quote_is_journaled_when_it_moves_even_if_the_marks_do_not_and_refreshed_while_live():
    config, link, pubs = setup()
    try:
        now = time.time_ns()
        pubs["XSIM1"].quote("AAPL", AAPL_TICKS, 300, AAPL_TICKS + 2, 300, now)
        pubs["XSIM2"].quote("AAPL", AAPL_TICKS - 1, 200, AAPL_TICKS + 3, 200, now)
        first = turn(link, now, 3)
        assert [type(x) for x in first] == [PriceTick, VenueQuote, VenueQuote]
        assert (first[0].bid, first[0].ask) == (AAPL_TICKS, AAPL_TICKS + 2)  # the consolidated best
        pubs["XSIM2"].quote("AAPL", AAPL_TICKS - 2, 100, AAPL_TICKS + 4, 100, now)  # behind XSIM1
        second = turn(link, now + 1, 1)
        assert second == [VenueQuote("XSIM2", "AAPL", AAPL_TICKS - 2, 100, AAPL_TICKS + 4, 100, now + 1, "kilat")]
        assert link.inputs(now + 2) == []  # nothing moved
        half = config.feeds.stale_after_ms * 1_000_000 // 2
        refreshed = link.inputs(now + half + 1)  # a quiet quote, still live: journaled again
        assert sorted(q.venue for q in refreshed if type(q) is VenueQuote) == ["XSIM1", "XSIM2"]
        stale = link.inputs(now + 4 * half)  # nothing heard for two stale windows: not refreshed
        assert not [q for q in stale if type(q) is VenueQuote]
    finally:
        link.close()
        for pub in pubs.values():
            pub.close()
