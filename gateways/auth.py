"""CurveZMQ keys and the ZAP handler: who may connect to Kilat's sockets, and as whom.

Every Kilat socket can run CurveZMQ (encryption and authentication). The binding side is the
CURVE *server* (the order-entry ROUTER, the venue ROUTER, a PUB: its subscribers are clients);
the connecting side is the CURVE *client* (the SDK's DEALER, a venue adapter, a SUB).

Keys live in one directory (``[security] keys_dir``), written and read with pyzmq's own
certificate tools (``zmq.auth``), so any ZeroMQ binding can read them::

    server.key   server.key_secret      Kilat's own key pair (clients need server.key)
    alice.key    alice.key_secret       one pair per config user or venue (by name / MIC)

``*.key`` holds the public key only; ``*.key_secret`` both keys and is mode 0600. On a real
deployment a user keeps its ``.key_secret`` and gives Kilat only its ``.key``.

A ``CurveAuth`` runs the ZAP handler of one ZeroMQ context: it maps a client's public key to a
name, which libzmq attaches to every message of that connection as the ``User-Id`` metadata
(``frame.get("User-Id")``). A key it does not know is refused during the handshake, so nothing
from that peer ever reaches the application; the refusal is counted and logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from engine.model import ConfigError

log = logging.getLogger("kilat.auth")

#: The name of Kilat's own key pair in keys_dir.
SERVER_NAME = "server"
#: The ZAP domain of the order-entry socket; other sockets use their own (e.g. "venue").
ZAP_DOMAIN = "kilat"
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class KeyFileError(ConfigError):
    """A key name or key file is not usable; the message names the file and the fix. (A
    ConfigError: ``kilat`` prints it without a traceback and exits 2.)"""


class KeyPair(NamedTuple):
    """A CURVE key pair, both keys z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes


# -- KEY FILES ------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A key name must be a safe file name: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting with
    ``.``, ``_`` or ``-``. Returns it; raises KeyFileError saying what was expected."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeyFileError(
            f"key name must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or "
            f"digit (it becomes a file name), got {name!r}")
    return name


def key_paths(keys_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """(public, secret) file paths of ``name`` in ``keys_dir``. O(1)."""
    base = Path(keys_dir) / check_name(name)
    return base.with_name(name + PUBLIC_SUFFIX), base.with_name(name + SECRET_SUFFIX)


def generate_keys(keys_dir: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new key pair for ``name``; returns (public_path, secret_path).

    Refuses (KeyFileError) when ``name`` already has a key unless ``overwrite``: replacing a
    key locks out whoever holds the old secret. The pair is written in a private temporary
    directory and moved into place, so the secret file is never readable by others, and a
    half-written pair is never visible. Creates ``keys_dir`` (mode 0700) if needed.
    """
    public_path, secret_path = key_paths(keys_dir, name)
    directory = _ensure_dir(keys_dir)
    with _locked(directory):
        if not overwrite and (public_path.exists() or secret_path.exists()):
            raise KeyFileError(
                f"{public_path if public_path.exists() else secret_path}: a key for {name!r} "
                f"already exists; replacing it locks out whoever holds the old secret key "
                f"(pass overwrite=True / --force to replace it)")
        _write_pair(directory, name, public_path, secret_path)
    log.info("wrote a CURVE key pair for %r in %s", name, directory)
    return public_path, secret_path


def ensure_dev_keys(keys_dir: str | os.PathLike, names: list[str] | tuple[str, ...]) -> list[str]:
    """First-run development keys: the server pair and a pair for every name that has none.

    Returns the names whose pairs were created (``"server"`` first if it was); an empty list
    when everything existed (idempotent). A name with only half a pair is an error, not
    silently replaced. For production, generate each user's pair on the user's machine and
    copy only its ``.key`` here.
    """
    for name in names:
        _check_peer_name(name)
    directory = _ensure_dir(keys_dir)
    created = []
    with _locked(directory):
        for name in (SERVER_NAME, *dict.fromkeys(names)):
            public_path, secret_path = key_paths(directory, name)
            if public_path.exists() and secret_path.exists():
                continue
            if public_path.exists() or secret_path.exists():
                present = public_path if public_path.exists() else secret_path
                if name != SERVER_NAME and public_path.exists():
                    continue  # a user's public key alone is the production layout
                raise KeyFileError(f"{present}: half a key pair for {name!r}; restore the other "
                                   f"file or run `kilat keys generate {name} --force`")
            _write_pair(directory, name, public_path, secret_path)
            created.append(name)
    if created:
        log.warning("generated development CURVE keys in %s for %s", directory, ", ".join(created))
    return created


def load_public_keys(keys_dir: str | os.PathLike, names: list[str] | tuple[str, ...]) -> dict[bytes, str]:
    """The ZAP mapping: z85 public key -> name, from ``<name>.key`` of every name. O(names).

    Raises KeyFileError naming the file when a key is missing or unreadable, and when two
    names share one public key (the User-Id would be ambiguous).
    """
    mapping: dict[bytes, str] = {}
    for name in dict.fromkeys(names):
        _check_peer_name(name)
        public_path, _ = key_paths(keys_dir, name)
        public = _load(public_path, want_secret=False).public
        other = mapping.setdefault(public, name)
        if other != name:
            raise KeyFileError(f"{public_path}: the same public key as {other!r}; each user "
                               f"and venue needs its own pair (`kilat keys generate {name} --force`)")
    return mapping


def server_keys(keys_dir: str | os.PathLike) -> KeyPair:
    """Kilat's own pair (server.key_secret). Raises KeyFileError if missing or not private."""
    return _load(key_paths(keys_dir, SERVER_NAME)[1], want_secret=True)


def client_keys(keys_dir: str | os.PathLike, name: str) -> KeyPair:
    """``name``'s pair (<name>.key_secret), for a client acting as that user or venue."""
    return _load(key_paths(keys_dir, name)[1], want_secret=True)


def server_public_key(keys_dir: str | os.PathLike) -> bytes:
    """Kilat's public key (server.key): what every client needs to connect."""
    return _load(key_paths(keys_dir, SERVER_NAME)[0], want_secret=False).public


def list_keys(keys_dir: str | os.PathLike) -> dict[str, bytes]:
    """Every ``<name>.key`` in keys_dir: name -> z85 public key, sorted by name."""
    directory = Path(keys_dir)
    if not directory.is_dir():
        return {}
    out = {}
    for path in sorted(directory.glob("*" + PUBLIC_SUFFIX)):
        name = path.name[: -len(PUBLIC_SUFFIX)]
        if _NAME.fullmatch(name):
            out[name] = _load(path, want_secret=False).public
    return out


def _check_peer_name(name: str) -> None:
    check_name(name)
    if name == SERVER_NAME:
        raise KeyFileError(f"{SERVER_NAME!r} names Kilat's own key pair; a user or venue needs "
                           f"another name")


def _ensure_dir(keys_dir: str | os.PathLike) -> Path:
    directory = Path(keys_dir)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot create the keys directory ({exc.strerror})") from exc
    return directory


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise key writers across processes (a server's first run and `kilat keys`)."""
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_pair(directory: Path, name: str, public_path: Path, secret_path: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=directory))  # mode 0700
    try:
        public_tmp, secret_tmp = zmq.auth.create_certificates(staging, name)
        os.chmod(secret_tmp, 0o600)
        os.chmod(public_tmp, 0o644)
        os.replace(secret_tmp, secret_path)  # secret first: a public key alone is usable
        os.replace(public_tmp, public_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load(path: Path, want_secret: bool) -> KeyPair:
    if want_secret:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise KeyFileError(f"{path}: no secret key file ({exc.strerror}); run "
                               f"`kilat keys generate {path.name[: -len(SECRET_SUFFIX)]}`") from exc
        if mode & 0o077:
            raise KeyFileError(f"{path}: a secret key must be readable by its owner only "
                               f"(mode 0600), got {oct(mode & 0o777)}; run chmod 600 on it")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable CURVE certificate ({exc})") from exc
    if not _Z85_KEY.fullmatch(public) or (want_secret and not (secret and _Z85_KEY.fullmatch(secret))):
        raise KeyFileError(f"{path}: expected z85 keys of 40 characters"
                           f"{' (public and secret)' if want_secret else ''}")
    return KeyPair(public, secret or b"")


# -- SOCKET SECURITY ------------------------------------------------------------------------------


def secure_server(sock: zmq.Socket, server_secret: bytes, server_public: bytes,
                  domain: str = ZAP_DOMAIN) -> None:
    """Make ``sock`` a CURVE server in ZAP ``domain``; call before bind. A connection is then
    accepted only when a ZAP handler (``CurveAuth``) on the socket's context approves the
    client's key: with no handler, every handshake fails (never open by default)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, server_public)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket, client_public: bytes, client_secret: bytes,
                  server_public: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_public``;
    call before connect."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, client_secret)


@dataclass(frozen=True)
class ServerSecurity:
    """What a binding socket needs for CURVE: its key pair, who may connect (z85 public key ->
    name) and its ZAP domain. Callable as a ``configure(sock)`` hook (before bind); the
    ``users`` are served by the context's ``CurveAuth`` (``CurveAuth.on(ctx).allow(...)``)."""

    keys: KeyPair
    users: Mapping[bytes, str] = field(default_factory=dict)
    domain: str = ZAP_DOMAIN

    @classmethod
    def from_keys_dir(cls, keys_dir: str | os.PathLike, names: list[str] | tuple[str, ...],
                      domain: str = ZAP_DOMAIN) -> ServerSecurity:
        return cls(server_keys(keys_dir), load_public_keys(keys_dir, names), domain)

    def __call__(self, sock: zmq.Socket) -> None:
        secure_server(sock, self.keys.secret, self.keys.public, self.domain)

    def start_auth(self, context: zmq.Context) -> CurveAuth:
        """The context's ZAP handler (started if it was not), now serving this domain."""
        auth = CurveAuth.on(context)
        auth.allow(self.domain, self.users)
        return auth


@dataclass(frozen=True)
class ClientSecurity:
    """What a connecting socket needs for CURVE: its own pair and the server's public key.
    Callable as a ``configure(sock)`` hook (before connect)."""

    keys: KeyPair
    server_public: bytes

    @classmethod
    def from_keys_dir(cls, keys_dir: str | os.PathLike, name: str) -> ClientSecurity:
        return cls(client_keys(keys_dir, name), server_public_key(keys_dir))

    def __call__(self, sock: zmq.Socket) -> None:
        secure_client(sock, self.keys.public, self.keys.secret, self.server_public)


#: Either hook; what a socket's ``configure`` parameter accepts.
SocketSecurity = ServerSecurity | ClientSecurity

#: Failed handshakes: a plaintext peer, a wrong server key, a key the ZAP handler refused.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_monitor_ids = itertools.count(1)


def watch_handshakes(sock: zmq.Socket, events: int = HANDSHAKE_FAILED) -> zmq.Socket:
    """A PAIR socket (blocking API, even for an asyncio ``sock``) receiving ``sock``'s monitor
    ``events``; read it with ``zmq.utils.monitor.recv_monitor_message``. Call before connect
    or bind; ``sock.disable_monitor()`` then close it before closing ``sock``.

    Its receive queue is unbounded on purpose: libzmq sends monitor events with a blocking
    send from the context's I/O thread, so a full monitor queue would stall every socket of
    the context (pyzmq's ``get_monitor_socket`` keeps the default limit of 1000).
    """
    address = f"inproc://kilat.monitor.{os.getpid()}.{next(_monitor_ids)}"
    sock.monitor(address, events)
    monitor = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
    monitor.setsockopt(zmq.RCVHWM, 0)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return monitor


# -- ZAP HANDLER ----------------------------------------------------------------------------------


class CurveAuth:
    """The ZAP handler of one ZeroMQ context (pyzmq's ThreadAuthenticator, in its own thread).

    For each ZAP domain it holds a mapping z85 public key -> name; an accepted connection's
    messages carry that name as ``User-Id``. Unknown keys (and unknown domains) are refused
    during the handshake: ``refused`` counts them, and a WARNING names the key's z85 prefix
    (the first time and then at powers of two per key, so a reconnecting rogue cannot flood
    the log). ``reload`` swaps a domain's mapping at run time; new connections see it,
    established ones keep the name they were given. Lookups are O(1).
    """

    _running: dict[int, CurveAuth] = {}
    _registry_lock = threading.Lock()

    def __init__(self, context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()
        self.refused = 0
        self.accepted = 0
        self._domains: dict[str, dict[bytes, str]] = {}
        self._seen: dict[bytes, int] = {}  # refusals per key, for log throttling (bounded)
        self._last: tuple[bytes, str] | None = None  # the key the callback just approved
        self._authenticator: ThreadAuthenticator | None = None

    @classmethod
    def on(cls, context: zmq.Context) -> CurveAuth:
        """The running handler of ``context``, started if there is none (one per context:
        libzmq has one ZAP endpoint per context)."""
        with cls._registry_lock:
            auth = cls._running.get(id(context))
            if auth is None or auth.context is not context:
                auth = cls(context).start()
            return auth

    # -- COMMANDS --

    def start(self) -> CurveAuth:
        """Bind the context's ZAP endpoint and start the handler thread. Returns self."""
        if self._authenticator is not None:
            return self
        authenticator = _Authenticator(self, self.context)
        try:
            authenticator.start()
        except zmq.ZMQError as exc:
            authenticator.stop()
            raise RuntimeError(f"cannot start the ZAP handler ({exc}): one already runs on this "
                               f"context; share it with CurveAuth.on(context)") from exc
        self._authenticator = authenticator
        CurveAuth._running[id(self.context)] = self
        for domain in self._domains:
            authenticator.configure_curve_callback(domain, self)
        return self

    def allow(self, domain: str, users: Mapping[bytes, str]) -> None:
        """Serve ``domain`` with ``users`` (z85 public key -> name), replacing its mapping."""
        self._domains[domain] = {bytes(k): str(v) for k, v in users.items()}
        if self._authenticator is not None:
            self._authenticator.configure_curve_callback(domain, self)

    def reload(self, users: Mapping[bytes, str], domain: str = ZAP_DOMAIN) -> None:
        """Replace the mapping of ``domain`` (a user added or removed at run time)."""
        before = set(self._domains.get(domain, {}).values())
        self.allow(domain, users)
        after = set(self._domains[domain].values())
        log.info("ZAP domain %r reloaded: %d keys (added %s, removed %s)", domain, len(users),
                 sorted(after - before) or "none", sorted(before - after) or "none")

    def stop(self) -> None:
        """Stop the handler thread and unbind the ZAP endpoint (call before the context ends)."""
        if self._authenticator is None:
            return
        self._authenticator.stop()
        self._authenticator = None
        with CurveAuth._registry_lock:
            if CurveAuth._running.get(id(self.context)) is self:
                del CurveAuth._running[id(self.context)]

    def __enter__(self) -> CurveAuth:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- QUERIES --

    def user_for(self, public_key: bytes, domain: str = ZAP_DOMAIN) -> str | None:
        """The name a z85 public key maps to in ``domain``, or None. O(1)."""
        return self._domains.get(domain, {}).get(public_key)

    @property
    def running(self) -> bool:
        return self._authenticator is not None and self._authenticator.is_alive()

    # -- ZAP CALLBACKS (the handler thread) --

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """pyzmq's credentials-provider hook: True admits the key into ``domain``."""
        name = self._domains.get(domain, {}).get(z85_key)
        if name is None:
            self.refused += 1
            count = self._seen.get(z85_key, 0) + 1
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[z85_key] = count
            if count & (count - 1) == 0:
                log.warning("refused a CURVE client on ZAP domain %r: key %s… is not a configured "
                            "user (refused %d time(s); %d refusals in all)", domain,
                            z85_key[:8].decode("ascii", "replace"), count, self.refused)
            return False
        self.accepted += 1
        self._last = (z85_key, name)
        return True

    def user_id(self, raw_key: bytes) -> str:
        """The User-Id of an accepted key: its name (the callback just approved it)."""
        z85_key = z85.encode(raw_key)
        last = self._last
        if last is not None and last[0] == z85_key:
            return last[1]
        for users in self._domains.values():  # not reached: the callback runs first
            if z85_key in users:
                return users[z85_key]
        return ""


class _Authenticator(ThreadAuthenticator):
    """ThreadAuthenticator whose User-Id is the config name, not the z85 key."""

    def __init__(self, owner: CurveAuth, context: zmq.Context):
        super().__init__(context, log=logging.getLogger("kilat.auth.zap"))
        self._owner = owner

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._owner.user_id(client_public_key)
