"""Kilat with real venues, end to end: `kilat serve` and two `kilat venue` simulator processes
over real sockets. Routing across both venues with CurveZMQ on (and strangers refused), a venue
killed mid-order and restarted (reconciliation), a venue's bust and correction reversing a fill,
duplicate and out-of-order executions from a venue applied once, and random frames thrown at the
venue socket while Kilat keeps serving."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.constants import RejectCode, Side
from engine.messages import (
    ChildOrderRouted,
    ChildOrderUpdated,
    OrderCanceled,
    OrderFilled,
    TradeBusted,
    TradeCorrected,
)
from gateways.client import KilatClient, KilatTimeout
from tests.conftest import ROOT, TRANSPORT_CONFIG, ServeProcess, free_port

pytestmark = pytest.mark.slow


def venue_config(tmp_path: Path, curve: bool, heartbeat_ms: int = 200) -> Path:
    """The transport config plus two simulated venues on free feed ports and a PM limited to
    FUND1; CurveZMQ on or off."""
    text = TRANSPORT_CONFIG.read_text().replace("curve = false", f"curve = {str(curve).lower()}")
    text += f"""
[[users]]
name = "pm1"
roles = ["pm"]
accounts = ["FUND1"]

[[venues]]
mic = "XSIM1"
feed_endpoint = "tcp://127.0.0.1:{free_port()}"
instruments = ["AAPL"]
heartbeat_ms = {heartbeat_ms}
mids = {{ AAPL = "190.00" }}
seed = 1
level_qty = 300
step_ms = 100
volatility_bps = 1

[[venues]]
mic = "XSIM2"
feed_endpoint = "tcp://127.0.0.1:{free_port()}"
instruments = ["AAPL"]
heartbeat_ms = {heartbeat_ms}
mids = {{ AAPL = "190.02" }}
seed = 2
level_qty = 200
step_ms = 100
volatility_bps = 1
"""
    path = tmp_path / "venues.toml"
    path.write_text(text)
    return path


class Venue:
    """`kilat venue --mic M` as a real subprocess; waits for its ready line."""

    def __init__(self, config: Path, mic: str, server: ServeProcess, data_dir: Path, control: str = ""):
        self.args = [sys.executable, "-m", "kilat", "venue", "--mic", mic, "--config", str(config),
                     "--venue-endpoint", server.venue_endpoint, "--data-dir", str(data_dir),
                     "--keys-dir", str(server.keys_dir), *(["--control", control] if control else [])]
        self.log = data_dir / f"{mic}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line.startswith("kilat venue: ready"):
            self.proc.kill()
            raise RuntimeError(f"kilat venue did not start: {line}{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def market(request, tmp_path):
    """Kilat and both venues; CurveZMQ as the test's ``curve`` parameter says (default on)."""
    curve = getattr(request, "param", True)
    config = venue_config(tmp_path, curve)
    server = ServeProcess(tmp_path / "data", free_port(), config=config)
    venues = []
    try:
        venues = [Venue(config, mic, server, tmp_path / "venues",
                        control=f"tcp://127.0.0.1:{free_port()}" if mic == "XSIM1" else "")
                  for mic in ("XSIM1", "XSIM2")]
        yield server, venues, config
    finally:
        for venue in venues:
            venue.stop()
        server.stop()


def wait_until(check, timeout: float = 20.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def venues_up(client, want: set[str]):
    rows = {row[0]: row[1] for row in client.venues().rows}
    quoted = {row[1] for row in client.prices("AAPL").rows if row[1] != "marks"}
    return all(rows.get(m) == "up" for m in want) and want <= quoted


def gather(client, until, timeout: float = 20.0) -> list:
    events: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(events):
        events += client.events(timeout=0.2)
    assert until(events), f"timed out; got {events}"
    return events


def filled(order_id):
    return lambda events: any(type(e) is OrderFilled and e.order_id == order_id and e.leaves_qty == 0
                              for e in events)


def test_with_curve_an_sor_order_splits_over_both_venues_and_strangers_are_refused(market, tmp_path):
    server, _, _ = market
    with server.client("tester") as pm:
        wait_until(lambda: venues_up(pm, {"XSIM1", "XSIM2"}), what="both venues up and quoting")
        ack = pm.submit("FUND1", "AAPL", Side.BUY, 800, 19_100, route="SOR", cl_ord_id="sor-1")
        oid = ack[0].order_id
        assert {e.venue for e in ack if type(e) is ChildOrderRouted} == {"XSIM1", "XSIM2"}
        events = gather(pm, filled(oid))
        fills = [e for e in events if type(e) is OrderFilled and e.order_id == oid]
        assert {f.venue for f in fills} == {"XSIM1", "XSIM2"} and sum(f.last_qty for f in fills) == 800
        assert fills[-1].avg_px == pytest.approx(sum(f.last_qty * f.last_px for f in fills) / 800)
        venues = {row[0]: row for row in pm.fills("FUND1").rows}
        assert {row[7] for row in venues.values()} == {"XSIM1", "XSIM2"}
    with server.client("pm1") as pm1:  # a PM, on another's account; claiming another's name
        other = pm1.submit("MM1", "AAPL", Side.BUY, 10, 19_000, cl_ord_id="x1")
        assert other[0].code == RejectCode.NOT_ENTITLED
        posing = pm1.request(msgspec.structs.replace(
            KilatClient.submit_order("FUND1", "AAPL", Side.BUY, 10, 19_000, cl_ord_id="x2"), user="tester"))
        assert posing[0].code == RejectCode.NOT_AUTHORIZED
    with KilatClient(server.endpoint, user="tester", timeout=1.0) as plain, pytest.raises(KilatTimeout):
        plain.ping()  # no CURVE: refused at the handshake
    from gateways.auth import client_keys, ensure_dev_keys, server_public_key

    ensure_dev_keys(tmp_path / "strangers", ["tester"])  # a key pair Kilat was never told of
    stranger = KilatClient(server.endpoint, user="tester", timeout=1.0,
                           keys=client_keys(tmp_path / "strangers", "tester"),
                           server_public_key=server_public_key(server.keys_dir))
    with stranger, pytest.raises(KilatTimeout):
        stranger.ping()  # a key Kilat does not know
    with KilatClient.from_keys_dir(server.endpoint, server.keys_dir, "XSIM1", timeout=1.0) as venue_key, \
            pytest.raises(KilatTimeout):
        venue_key.ping()  # a venue's key is not an order-entry user


def test_a_venue_that_sends_an_order_is_refused_and_counted(market):
    server, _, _ = market
    from gateways.auth import ClientSecurity
    from gateways.venue_messages import NewChildOrder

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    ClientSecurity.from_keys_dir(server.keys_dir, "XSIM1")(sock)
    sock.connect(server.venue_endpoint)
    try:
        sock.send(msgspec.msgpack.encode(NewChildOrder(1, 7, "AAPL", Side.BUY, 10, 19_000)))
        assert sock.poll(5000), "no answer from the venue gateway"
        assert b"ProtocolError" in sock.recv()
    finally:
        sock.close(0)
        ctx.term()
    with server.client("tester") as client:  # Kilat keeps serving, its venues still up
        assert venues_up(client, {"XSIM1", "XSIM2"}) or wait_until(lambda: venues_up(client, {"XSIM1", "XSIM2"}))


@pytest.mark.parametrize("market", [False], indirect=True)
def test_a_venue_killed_mid_order_is_avoided_then_reconciled_when_it_comes_back(market):
    server, venues, _ = market
    with server.client("tester") as pm:
        wait_until(lambda: venues_up(pm, {"XSIM1", "XSIM2"}), what="both venues up")
        resting = pm.submit("FUND1", "AAPL", Side.BUY, 100, 18_000, route="XSIM1", cl_ord_id="rest-1")
        oid = resting[0].order_id
        gather(pm, lambda ev: any(type(e) is ChildOrderUpdated and e.status == "New" for e in ev))
        venues[0].kill()
        wait_until(lambda: {r[0]: r[1] for r in pm.venues().rows}["XSIM1"] == "down", what="XSIM1 down")
        avoid = pm.submit("FUND1", "AAPL", Side.BUY, 50, 19_100, route="SOR", cl_ord_id="sor-2")
        assert {e.venue for e in avoid if type(e) is ChildOrderRouted} == {"XSIM2"}
        venues[0].start()  # same data dir: it resumes its session and its open child order
        wait_until(lambda: venues_up(pm, {"XSIM1"}), what="XSIM1 up again")
        time.sleep(1.0)  # the reconciliation after the logon
        order = next(o for o in pm.orders(account="FUND1") if o.order_id == oid)
        assert order.status == "New"  # the venue still works it: nothing to reconcile away
        pm.cancel("FUND1", oid)
        events = gather(pm, lambda ev: any(type(e) is OrderCanceled and e.order_id == oid for e in ev))
        assert next(e for e in events if type(e) is OrderCanceled).canceled_qty == 100


@pytest.mark.parametrize("market", [False], indirect=True)
def test_a_venue_bust_and_correction_reverse_and_adjust_the_fill(market):
    server, venues, _ = market
    from gateways.simulator import BustExecution, CorrectExecution, QueryVenue, venue_admin

    control = venues[0].args[venues[0].args.index("--control") + 1]
    with server.client("tester") as pm:
        wait_until(lambda: venues_up(pm, {"XSIM1"}), what="XSIM1 up")
        first = pm.submit("FUND1", "AAPL", Side.BUY, 40, 19_100, route="XSIM1", cl_ord_id="bc-1")
        gather(pm, filled(first[0].order_id))
        second = pm.submit("FUND1", "AAPL", Side.BUY, 30, 19_100, route="XSIM1", cl_ord_id="bc-2")
        gather(pm, filled(second[0].order_id))
        fills = venue_admin(control, QueryVenue()).fills
        assert len(fills) >= 2
        assert venue_admin(control, BustExecution(fills[0].exec_id, "erroneous")).ok
        busted = gather(pm, lambda ev: any(type(e) is TradeBusted for e in ev))
        assert next(e for e in busted if type(e) is TradeBusted).qty == fills[0].qty
        assert venue_admin(control, CorrectExecution(fills[-1].exec_id, 10, fills[-1].price, "size")).ok
        corrected = gather(pm, lambda ev: any(type(e) is TradeCorrected for e in ev))
        assert next(e for e in corrected if type(e) is TradeCorrected).qty == 10
        position = {(r[0], r[1], r[2]): r[4] for r in pm.positions("FUND1").rows}
        assert position[("FUND1", "AAPL", "XSIM1")] == 70 - fills[0].qty - (fills[-1].qty - 10)
    top = subprocess.run([sys.executable, "-m", "kilat", "top", "--once", "--user", "tester", *server.cli_args()],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert top.returncode == 0, top.stderr
    for panel in ("prices (", "venues (2)", "working orders (", "fills (today) ("):
        assert panel in top.stdout, top.stdout
    assert any(line.split()[:2] == ["XSIM1", "up"] for line in top.stdout.splitlines())


def test_duplicate_and_out_of_order_executions_are_applied_once(tmp_path):
    """A venue adapter of our own (a real DEALER) speaks for XSIM1 and sends its fills twice and
    out of order; the PM sees each once, in seq order."""
    from gateways.venue_adapter import VenueAdapter
    from gateways.venue_messages import ChildAccepted, ChildFilled, NewChildOrder

    config = venue_config(tmp_path, curve=False, heartbeat_ms=10_000)  # the test is the venue
    server = ServeProcess(tmp_path / "data", free_port(), config=config)
    adapter = VenueAdapter(server.venue_endpoint, "XSIM1", heartbeat_ms=10_000)

    def pump() -> list:  # the adapter's loop turn: logon, heartbeats, then what Kilat sent
        adapter.timers()
        return adapter.poll()

    def logged_on() -> bool:
        pump()
        return {r[0]: r[1] for r in pm.venues().rows}["XSIM1"] == "up"

    try:
        with server.client("tester") as pm:
            wait_until(logged_on, what="the adapter logged on")
            ack = pm.submit("FUND1", "AAPL", Side.BUY, 30, 19_000, route="XSIM1", cl_ord_id="dup-1")
            oid = ack[0].order_id
            new = wait_until(lambda: [m for m in pump() if type(m) is NewChildOrder], what="the child")[0]
            adapter.send(ChildAccepted(0, new.child_id, "V-1"))
            _, f1 = adapter.prepare(ChildFilled(0, new.child_id, "E1", 10, 19_000, 20, 10))
            _, f2 = adapter.prepare(ChildFilled(0, new.child_id, "E2", 20, 18_990, 0, 30))
            for frame in (f2, f1, f2, f1):  # out of order, and each twice
                adapter.socket.send(frame)
            events = gather(pm, filled(oid))
            fills = [(e.last_qty, e.last_px) for e in events if type(e) is OrderFilled and e.order_id == oid]
            assert fills == [(10, 19_000), (20, 18_990)]
            time.sleep(0.5)
            assert not [e for e in pm.events(timeout=0.3) if type(e) is OrderFilled]  # no repeat
            order = next(o for o in pm.orders(account="FUND1") if o.order_id == oid)
            assert (order.cum_qty, order.status) == (30, "Filled")
    finally:
        adapter.close()
        server.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.lists(st.binary(max_size=64), min_size=1, max_size=4), min_size=1, max_size=20))
def test_random_frames_at_the_venue_socket_never_stop_kilat(frames, venue_server):
    server, ctx = venue_server
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.venue_endpoint)
    for parts in frames:
        sock.send_multipart(parts)
    sock.close(0)
    with server.client("tester", timeout=5.0) as client:
        assert client.ping() >= 0


@pytest.fixture(scope="module")
def venue_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    server = ServeProcess(tmp / "data", free_port(), config=venue_config(tmp, curve=False))
    ctx = zmq.Context()
    yield server, ctx
    ctx.term()
    server.stop()
