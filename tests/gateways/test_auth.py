"""CurveZMQ on the order-entry socket: known keys connect as their config user, unknown and
plaintext peers are refused at the handshake, keys reload at run time; and the key files
(`kilat keys`, first-run dev keys). Real sockets over tcp loopback, real subprocesses."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time

import pytest
import zmq

from engine.constants import Side
from engine.messages import Ping, Pong, SubmitOrder
from gateways.auth import (
    ClientSecurity,
    CurveAuth,
    KeyFileError,
    ServerSecurity,
    client_keys,
    ensure_dev_keys,
    generate_keys,
    key_paths,
    list_keys,
    load_public_keys,
    secure_client,
    secure_server,
    server_keys,
    server_public_key,
    watch_handshakes,
)
from gateways.client import AsyncKilatClient, KilatClient, KilatHandshakeError
from tests.conftest import ROOT, free_port
from tests.gateways.test_server_hardening import ServerThread

USERS = ["alice", "bob"]


@pytest.fixture
def keys_dir(tmp_path):
    directory = tmp_path / "keys"
    ensure_dev_keys(directory, USERS)
    return directory


@pytest.fixture
def secure(keys_dir):
    srv = ServerThread(security=ServerSecurity.from_keys_dir(keys_dir, USERS))
    yield srv
    srv.stop()


# -- THE HANDSHAKE --------------------------------------------------------------------------------


def test_known_keys_connect_and_each_request_carries_its_connections_user(secure, keys_dir):
    with (KilatClient.from_keys_dir(secure.endpoint, keys_dir, "alice") as alice,
          KilatClient.from_keys_dir(secure.endpoint, keys_dir, "bob") as bob):
        assert alice.ping() == 1 and bob.ping() == 2
        # alice's connection claims to be bob: the gateway still says who really sent it
        alice.request(SubmitOrder("FUND1", "c1", "AAPL", Side.BUY, 1, price=15_000, user="bob"))
    assert [r.user for r in secure.seen] == ["alice", "bob", "alice"]
    assert secure.seen[2].message.user == "bob"  # what the command claims; the service refuses it
    assert secure.server.auth.accepted == 2 and secure.server.auth.refused == 0


def test_unknown_key_is_refused_at_the_handshake_counted_and_logged(secure, keys_dir, tmp_path, caplog):
    generate_keys(tmp_path / "elsewhere", "mallory")
    keys = client_keys(tmp_path / "elsewhere", "mallory")
    caplog.set_level(logging.WARNING, logger="kilat.auth")
    with KilatClient(secure.endpoint, user="alice", keys=keys, timeout=1,
                     server_public_key=server_public_key(keys_dir)) as mallory:
        with pytest.raises(KilatHandshakeError, match="refused this client's CURVE key"):
            mallory.ping()
    assert secure.seen == []
    assert secure.server.auth.refused == 1
    assert secure.stats().received == 0 and secure.stats().handshakes_failed >= 1
    assert any(keys.public[:8].decode() in r.getMessage() for r in caplog.records)


def test_plaintext_client_is_refused_and_nothing_reaches_the_handler(secure):
    with KilatClient(secure.endpoint, user="alice", timeout=1) as plain:
        with pytest.raises(KilatHandshakeError, match="uses CurveZMQ and this client does not"):
            plain.ping()
    assert secure.seen == [] and secure.stats().received == 0
    assert secure.stats().handshakes_failed >= 1
    assert secure.server.auth.refused == 0  # it never got as far as showing a key


def test_client_with_the_wrong_server_key_gets_nothing_through(secure, keys_dir, tmp_path):
    generate_keys(tmp_path / "other", "server")
    with KilatClient(secure.endpoint, user="alice", keys=client_keys(keys_dir, "alice"), timeout=1,
                     server_public_key=server_public_key(tmp_path / "other")) as confused:
        with pytest.raises(KilatHandshakeError):
            confused.ping()
    assert secure.seen == []


def test_reload_admits_a_new_user_and_drops_a_removed_one_at_run_time(secure, keys_dir):
    generate_keys(keys_dir, "dave")
    with KilatClient.from_keys_dir(secure.endpoint, keys_dir, "alice") as alice:
        alice.ping()
        with KilatClient.from_keys_dir(secure.endpoint, keys_dir, "dave", timeout=1) as early:
            with pytest.raises(KilatHandshakeError):
                early.ping()
        secure.server.auth.reload(load_public_keys(keys_dir, ["alice", "dave"]))  # bob leaves
        with KilatClient.from_keys_dir(secure.endpoint, keys_dir, "dave") as dave:
            dave.ping()
        with KilatClient.from_keys_dir(secure.endpoint, keys_dir, "bob", timeout=1) as bob:
            with pytest.raises(KilatHandshakeError):
                bob.ping()
        alice.ping()  # an established connection keeps its user
    assert [r.user for r in secure.seen] == ["alice", "dave", "alice"]
    assert secure.server.auth.user_for(client_keys(keys_dir, "dave").public) == "dave"


def test_async_client_connects_with_keys(secure, keys_dir):
    import asyncio

    async def flow():
        async with AsyncKilatClient.from_keys_dir(secure.endpoint, keys_dir, "bob") as bob:
            return await bob.request(Ping(9))

    (pong,) = asyncio.run(flow())
    assert pong == Pong(9, 1) and secure.seen[0].user == "bob"


def test_curve_server_without_a_zap_handler_refuses_every_key(keys_dir):
    """Fail closed: a CURVE socket whose context runs no ZAP handler admits nobody."""
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    client = ctx.socket(zmq.DEALER)
    try:
        skeys, ckeys = server_keys(keys_dir), client_keys(keys_dir, "alice")
        secure_server(server, skeys.secret, skeys.public)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        secure_client(client, ckeys.public, ckeys.secret, skeys.public)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send_multipart([b"r", b"hello"])
        assert not server.poll(700)
    finally:
        client.close(0)
        server.close(0)
        ctx.term()


def test_pub_sub_with_the_security_hooks_only_feeds_known_subscribers(keys_dir, tmp_path):
    """A PUB is the CURVE server, its subscribers clients; the same hooks fit any socket."""
    ctx = zmq.Context()
    publisher = ServerSecurity.from_keys_dir(keys_dir, ["bob"], domain="feed")
    auth = publisher.start_auth(ctx)
    generate_keys(tmp_path / "elsewhere", "eve")
    pub = ctx.socket(zmq.PUB)
    subs = {name: ctx.socket(zmq.SUB) for name in ("bob", "eve")}
    try:
        publisher(pub)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        for name, sub in subs.items():
            where = keys_dir if name == "bob" else tmp_path / "elsewhere"
            ClientSecurity(client_keys(where, name), publisher.keys.public)(sub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 5
        while not subs["bob"].poll(50):
            assert time.monotonic() < deadline, "bob never got a tick"
            pub.send(b"tick")
        assert subs["bob"].recv() == b"tick"
        pub.send(b"tick")
        assert not subs["eve"].poll(300)
        assert auth.refused >= 1 and CurveAuth.on(ctx) is auth
    finally:
        for sock in (pub, *subs.values()):
            sock.close(0)
        auth.stop()
        ctx.term()


def test_an_unread_monitor_never_stalls_the_sockets_of_its_context():
    """libzmq sends monitor events with a blocking send from the I/O thread: a monitor queue
    that fills up would freeze every socket of the context (a refused client left idle)."""
    ctx = zmq.Context()
    retrying = ctx.socket(zmq.DEALER)
    retrying.setsockopt(zmq.RECONNECT_IVL, 1)
    monitor = watch_handshakes(retrying, zmq.EVENT_ALL)
    retrying.connect(f"tcp://127.0.0.1:{free_port()}")  # nobody there: thousands of events
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    time.sleep(2.0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"still alive")
    # (on failure the context is left as it is: ending it would wait on the stuck thread)
    assert router.poll(3000), "the context's I/O thread is stuck"
    queued = 0
    while monitor.poll(0) and queued <= 5_000:
        monitor.recv_multipart()
        queued += 1
    retrying.disable_monitor()
    for sock in (monitor, retrying, router, dealer):
        sock.close(0)
    ctx.term()
    assert queued > 2_000  # more than libzmq's default limit would have held


# -- KEY FILES ------------------------------------------------------------------------------------


def test_ensure_dev_keys_creates_the_server_and_missing_users_once(tmp_path):
    directory = tmp_path / "keys"
    assert ensure_dev_keys(directory, ["alice", "bob"]) == ["server", "alice", "bob"]
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert ensure_dev_keys(directory, ["alice", "bob"]) == []
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert ensure_dev_keys(directory, ["alice", "bob", "carol"]) == ["carol"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("server", "alice", "bob", "carol"):
        public, secret = key_paths(directory, name)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert b"secret-key" not in public.read_bytes()
    assert len(set(load_public_keys(directory, ["alice", "bob", "carol"]))) == 3


def test_ensure_dev_keys_accepts_a_public_key_alone_and_refuses_half_a_server_pair(tmp_path):
    directory = tmp_path / "keys"
    ensure_dev_keys(directory, ["alice"])
    key_paths(directory, "alice")[1].unlink()  # production layout: alice keeps her secret
    assert ensure_dev_keys(directory, ["alice"]) == []
    key_paths(directory, "server")[0].unlink()
    with pytest.raises(KeyFileError, match="half a key pair for 'server'"):
        ensure_dev_keys(directory, ["alice"])


@pytest.mark.parametrize("name", ["", "../alice", "a/b", ".hidden", "-rf", "x" * 65, "al ice", "é"])
def test_unsafe_key_names_are_refused_with_what_was_expected(tmp_path, name):
    with pytest.raises(KeyFileError, match="key name must be 1-64 characters"):
        generate_keys(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_server_is_not_a_user_name_and_a_key_shared_by_two_names_is_refused(keys_dir):
    with pytest.raises(KeyFileError, match="'server' names Kilat's own key pair"):
        load_public_keys(keys_dir, ["alice", "server"])
    public, _ = key_paths(keys_dir, "alice")
    key_paths(keys_dir, "mallory")[0].write_bytes(public.read_bytes())
    with pytest.raises(KeyFileError, match="the same public key as 'alice'"):
        load_public_keys(keys_dir, ["alice", "mallory"])


def test_missing_or_world_readable_secret_key_is_a_clear_error(keys_dir):
    with pytest.raises(KeyFileError, match="no secret key file.*kilat keys generate nobody"):
        client_keys(keys_dir, "nobody")
    _, secret = key_paths(keys_dir, "bob")
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="owner only.*chmod 600"):
        client_keys(keys_dir, "bob")
    with pytest.raises(KeyFileError, match="nobody.key: not a readable CURVE certificate"):
        load_public_keys(keys_dir, ["nobody"])


def kilat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kilat", *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), timeout=60)


def test_kilat_keys_generate_writes_a_private_pair_and_refuses_to_overwrite_it(tmp_path):
    directory = tmp_path / "keys"
    first = kilat("keys", "generate", "alice", "--keys-dir", str(directory))
    assert first.returncode == 0, first.stderr
    public, secret = key_paths(directory, "alice")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key = client_keys(directory, "alice")
    assert key.public.decode() in first.stdout and str(secret) in first.stdout
    original = secret.read_bytes()

    again = kilat("keys", "generate", "alice", "--keys-dir", str(directory))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert secret.read_bytes() == original

    forced = kilat("keys", "generate", "alice", "--keys-dir", str(directory), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["public_key"] == client_keys(directory, "alice").public.decode()
    assert client_keys(directory, "alice") != key

    listed = kilat("keys", "list", "--keys-dir", str(directory), "--json")
    assert json.loads(listed.stdout) == {n: k.decode() for n, k in list_keys(directory).items()}
    assert list(json.loads(listed.stdout)) == ["alice"]

    bad = kilat("keys", "generate", "../evil", "--keys-dir", str(directory))
    assert bad.returncode == 2 and "key name must be" in bad.stderr
