"""The Python SDK: talk to ``kilat serve`` over ZeroMQ (a DEALER socket), sync or asyncio.

    with KilatClient("tcp://127.0.0.1:7001", user="alice") as kc:
        replies = kc.submit("FUND1", "AAPL", Side.BUY, 100, price=15_000, cl_ord_id="o-1")
        for event in kc.events(timeout=0.5):   # execution reports pushed later
            print(event)

Every request returns the list of replies the server sent for it (``OrderAccepted``,
``OrderFilled``, …). Events caused by other clients' commands (a fill of a resting order) are
pushed and wait in ``events()``. Prices are int ticks and quantities int lots, as on the wire.

``user`` names the config user the client acts as (default: the ``KILAT_USER`` environment
variable); it is stamped on every command that does not name one.

With CurveZMQ on the server, give the client its key pair and the server's public key (or let
``KilatClient.from_keys_dir`` read them); the server then knows the user from the key, whatever
the commands say::

    with KilatClient.from_keys_dir("tcp://127.0.0.1:7001", "var/keys", "alice") as kc: ...

A server that refuses the handshake (unknown key, wrong server key, CURVE on one side only)
sends nothing back; the client's timeout then says why (``KilatHandshakeError``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from collections.abc import Iterator

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from engine.constants import OrderType, SelfTradePrevention, Side, TimeInForce
from engine.messages import (
    AcknowledgeAlert,
    AllocationTarget,
    ApproveOrder,
    CancelOrder,
    CommentAlert,
    DismissAlert,
    EndOfDay,
    EscalateAlert,
    MassCancel,
    ModifyOrder,
    Ping,
    PriceTick,
    QueryAlerts,
    QueryBook,
    QueryFills,
    QueryOrders,
    QueryPositions,
    QueryPrices,
    QueryRisk,
    QueryVenues,
    RejectHeldOrder,
    Reply,
    ResolveAlert,
    SetKillSwitch,
    SetLocate,
    SetRiskLimit,
    SetTradingState,
    SubmitBlockOrder,
    SubmitOrder,
    TakeSnapshot,
    UpdateIssuerList,
)
from gateways.auth import ClientSecurity, KeyPair, watch_handshakes

_REPLIES = msgspec.msgpack.Decoder(list[Reply])
_ALERT_ACTIONS = {
    "acknowledge": AcknowledgeAlert, "escalate": EscalateAlert, "resolve": ResolveAlert,
    "dismiss": DismissAlert, "comment": CommentAlert,
}


class KilatTimeout(TimeoutError):
    """The server did not answer in time (it may be down or overloaded)."""


class KilatHandshakeError(KilatTimeout):
    """No answer because the server refused the connection's handshake (CURVE keys)."""


class _ClientBase:
    """What the sync and the asyncio client share: the DEALER socket and the command structs."""

    def __init__(self, endpoint: str, context: zmq.Context, user: str | None,
                 keys: KeyPair | tuple[bytes, bytes] | None = None,
                 server_public_key: bytes | None = None):
        if (keys is None) != (server_public_key is None):
            raise ValueError("CurveZMQ needs both the client's key pair (keys=) and the "
                             "server's public key (server_public_key=), or neither")
        self.endpoint = endpoint
        self.user = os.environ.get("KILAT_USER", "") if user is None else user
        self.security = None if keys is None else ClientSecurity(KeyPair(*keys), server_public_key)
        self._ctx = context
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.security is not None:
            self.security(self._sock)
        self._monitor = watch_handshakes(self._sock)  # why a request went unanswered
        self._handshake_error = (0, "")
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._pushed: deque = deque()
        self._encoder = msgspec.msgpack.Encoder()

    def _encode(self, message) -> bytes:
        if self.user and getattr(message, "user", None) == "":
            message = msgspec.structs.replace(message, user=self.user)
        return self._encoder.encode(message)

    def _timeout(self, waited: str) -> KilatTimeout:
        """The error for a request nobody answered: says so if the handshake was refused."""
        monitor = self._monitor
        while monitor.poll(0):  # keep the most telling failure (reconnects say less)
            rank, text = _describe_handshake_failure(recv_monitor_message(monitor), self)
            if rank >= self._handshake_error[0]:
                self._handshake_error = (rank, text)
        if self._handshake_error[1]:
            return KilatHandshakeError(f"no reply from {self.endpoint} within {waited}: "
                                       f"{self._handshake_error[1]}")
        return KilatTimeout(f"no reply from {self.endpoint} within {waited}")

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close(0)

    @staticmethod
    def cancel_order(account, order_id=0, *, orig_cl_ord_id="", cl_ord_id="") -> CancelOrder:
        return CancelOrder(account, order_id, orig_cl_ord_id, cl_ord_id)

    @staticmethod
    def modify_order(account, order_id=0, *, price=None, qty=None, orig_cl_ord_id="",
                     cl_ord_id="") -> ModifyOrder:
        return ModifyOrder(account, order_id, orig_cl_ord_id, cl_ord_id, price, qty)

    @staticmethod
    def submit_order(account, symbol, side, qty, price=0, *, cl_ord_id=None,
                     order_type=OrderType.LIMIT, tif=TimeInForce.DAY, stop_price=0,
                     display_qty=0, post_only=False, expire_ts=0, stp=None, route="") -> SubmitOrder:
        if order_type == OrderType.LIMIT and price == 0:
            raise ValueError("a LIMIT order needs a price in ticks")
        return SubmitOrder(
            account=account, cl_ord_id=cl_ord_id or _new_cl_ord_id(), symbol=symbol,
            side=Side(side), qty=qty, order_type=OrderType(order_type), price=price,
            tif=TimeInForce(tif), stop_price=stop_price, display_qty=display_qty,
            post_only=post_only, expire_ts=expire_ts,
            stp=None if stp is None else SelfTradePrevention(stp), route=route,
        )


_counter = itertools.count(1)


def _new_cl_ord_id() -> str:
    return f"{os.getpid():x}-{next(_counter)}-{os.urandom(3).hex()}"


def _describe_handshake_failure(event: dict, client: _ClientBase) -> tuple[int, str]:
    """(how telling, text) for a failed-handshake monitor event. Which event a client sees
    for a mechanism mismatch is a race (the server may hang up first), so the text goes by
    whether this client uses CURVE rather than by the exact event."""
    kind, value = event["event"], event["value"]
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return 3, (f"the server refused this client's CURVE key (ZAP status {value}): is "
                   f"{client.user or 'this user'!r} a config user whose public key is in the "
                   f"server's keys_dir?")
    if client.security is None:
        return 2, ("the handshake failed: the server uses CurveZMQ and this client does not; "
                   "give the client its key pair and the server's public key")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return 2, "the handshake failed: this client uses CurveZMQ and the server does not"
    return 1, (f"the CURVE handshake failed ({zmq.Event(kind).name}, {value}): is the "
               f"server's public key right?")


class KilatClient(_ClientBase):
    """Blocking client. One socket; not thread-safe (use one client per thread)."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:7001", *, user: str | None = None,
                 timeout: float = 5.0, context: zmq.Context | None = None,
                 keys: KeyPair | tuple[bytes, bytes] | None = None,
                 server_public_key: bytes | None = None):
        super().__init__(endpoint, context or zmq.Context.instance(), user, keys, server_public_key)
        self.timeout_ms = int(timeout * 1000)

    @classmethod
    def from_keys_dir(cls, endpoint: str, keys_dir: str | os.PathLike, user: str,
                      **kwargs) -> KilatClient:
        """A CURVE client acting as ``user``, with <user>.key_secret and server.key of keys_dir."""
        security = ClientSecurity.from_keys_dir(keys_dir, user)
        return cls(endpoint, user=user, keys=security.keys,
                   server_public_key=security.server_public, **kwargs)

    # -- ORDER ENTRY --

    def submit(self, account: str, symbol: str, side: Side | int, qty: int, price: int = 0,
               **kwargs) -> list:
        """Send a new order; returns its immediate replies (accepted/denied/rejected, fills)."""
        return self.request(self.submit_order(account, symbol, side, qty, price, **kwargs))

    def cancel(self, account: str, order_id: int = 0, *, orig_cl_ord_id: str = "",
               cl_ord_id: str = "") -> list:
        return self.request(self.cancel_order(account, order_id, orig_cl_ord_id=orig_cl_ord_id,
                                              cl_ord_id=cl_ord_id))

    def modify(self, account: str, order_id: int = 0, *, price: int | None = None,
               qty: int | None = None, orig_cl_ord_id: str = "", cl_ord_id: str = "") -> list:
        return self.request(self.modify_order(account, order_id, price=price, qty=qty,
                                              orig_cl_ord_id=orig_cl_ord_id, cl_ord_id=cl_ord_id))

    def mass_cancel(self, account: str = "", symbol: str = "", side: Side | None = None) -> list:
        return self.request(MassCancel(account, symbol, side))

    def end_of_day(self) -> list:
        return self.request(EndOfDay())

    def snapshot(self) -> list:
        return self.request(TakeSnapshot())

    def submit_block(self, account: str, symbol: str, side: Side | int, qty: int, price: int,
                     method: str, targets: list, *, cl_ord_id: str | None = None,
                     order_type=OrderType.LIMIT, tif=TimeInForce.DAY) -> list:
        """A block order traded in ``account`` and allocated as it fills; ``targets`` are
        ``AllocationTarget``s or (account, qty, bps) tuples (see ``SubmitBlockOrder``)."""
        return self.request(SubmitBlockOrder(
            account, cl_ord_id or _new_cl_ord_id(), symbol, Side(side), qty, method,
            [t if isinstance(t, AllocationTarget) else AllocationTarget(*t) for t in targets],
            OrderType(order_type), price, TimeInForce(tif)))

    # -- PRICES, OFFICERS, CONTROLS --

    def price(self, symbol: str, bid: int = 0, ask: int = 0, last: int = 0) -> list:
        return self.request(PriceTick(symbol, bid, ask, last))

    def approve(self, order_id: int, reason: str = "") -> list:
        return self.request(ApproveOrder(order_id, reason))

    def reject(self, order_id: int, reason: str = "") -> list:
        return self.request(RejectHeldOrder(order_id, reason))

    def alert_action(self, action: str, alert_id: int, comment: str = "", assignee: str = "") -> list:
        """``action``: acknowledge, escalate, resolve, dismiss or comment."""
        kind = _ALERT_ACTIONS.get(action)
        if kind is None:
            raise ValueError(f"alert action must be one of {', '.join(_ALERT_ACTIONS)}, got {action!r}")
        return self.request(kind(alert_id, comment, assignee))

    def alerts(self, state: str = "", severity: str = "", rule: str = "", account: str = "",
               alert_id: int = 0, limit: int = 1000) -> list:
        (view,) = self.request(QueryAlerts(state, severity, rule, account, alert_id, limit))
        return view.alerts

    def issuer_list(self, list_name: str, issuer: str, add: bool = True, reason: str = "") -> list:
        return self.request(UpdateIssuerList(list_name, issuer, add, reason))

    def set_locate(self, account: str, symbol: str, qty: int) -> list:
        return self.request(SetLocate(account, symbol, qty))

    def set_limit(self, account: str, symbol: str, name: str, value) -> list:
        return self.request(SetRiskLimit(account, symbol, name, str(value)))

    def kill_switch(self, scope: str, target: str = "", on: bool = True, reason: str = "") -> list:
        return self.request(SetKillSwitch(scope, target, on, reason))

    def trading_state(self, account: str, symbol: str, state: str) -> list:
        return self.request(SetTradingState(account, symbol, state))

    def risk(self, account: str = ""):
        (view,) = self.request(QueryRisk(account))
        return view

    def positions(self, account: str = ""):
        (view,) = self.request(QueryPositions(account))
        return view

    def venues(self):
        """Each venue's session, working child orders and fills today (a ``TableView``)."""
        (view,) = self.request(QueryVenues())
        return view

    def prices(self, symbol: str = ""):
        """Marks and each venue's best bid and offer (a ``TableView``)."""
        (view,) = self.request(QueryPrices(symbol))
        return view

    def fills(self, account: str = "", limit: int = 50):
        """Today's executions, newest first (a ``TableView``)."""
        (view,) = self.request(QueryFills(account, limit))
        return view

    # -- QUERIES --

    def orders(self, account: str = "", symbol: str = "", open_only: bool = False):
        (view,) = self.request(QueryOrders(account, symbol, open_only))
        return view.orders

    def book(self, symbol: str, depth: int = 5):
        (view,) = self.request(QueryBook(symbol, depth))
        return view

    def ping(self) -> int:
        """Round trip to the server; returns the last journaled sequence number."""
        (pong,) = self.request(Ping(next(self._ids)))
        return pong.seq

    # -- TRANSPORT --

    def request(self, message, timeout: float | None = None) -> list:
        """Send one message and wait for the replies that carry its request id."""
        return self._wait_for(self.send(message), timeout)

    def send(self, message) -> bytes:
        """Send without waiting (pipelining); returns the request id its replies will carry."""
        rid = next(self._ids).to_bytes(8, "little")
        self._sock.send_multipart([rid, self._encode(message)])
        return rid

    def receive(self, timeout: float | None = None) -> tuple[bytes, list]:
        """The next reply frame: (request id, replies); the id is b"" for a push."""
        timeout_ms = self.timeout_ms if timeout is None else int(timeout * 1000)
        if not self._sock.poll(timeout_ms):
            raise self._timeout(f"{timeout_ms} ms")
        return self._read_one()

    def send_raw(self, frames: list[bytes], timeout: float | None = None) -> list:
        """Send arbitrary frames (for tests of bad input); returns the reply to frames[0]."""
        self._sock.send_multipart(frames)
        return self._wait_for(frames[0] if len(frames) == 2 else b"", timeout)

    def events(self, timeout: float = 0.0) -> Iterator:
        """Pushed events received so far, waiting up to ``timeout`` seconds for the first."""
        deadline_ms = int(timeout * 1000)
        while self._sock.poll(deadline_ms if not self._pushed else 0):
            rid, replies = self._read_one()
            self._pushed.extend(replies)
            deadline_ms = 0
        while self._pushed:
            yield self._pushed.popleft()

    def __enter__(self) -> KilatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_one(self) -> tuple[bytes, list]:
        rid, payload = self._sock.recv_multipart()
        return rid, _REPLIES.decode(payload)

    def _wait_for(self, rid: bytes, timeout: float | None) -> list:
        timeout_ms = self.timeout_ms if timeout is None else int(timeout * 1000)
        while True:
            if not self._sock.poll(timeout_ms):
                raise self._timeout(f"{timeout_ms} ms")
            got, replies = self._read_one()
            if got == rid:
                return replies
            self._pushed.extend(replies)


class AsyncKilatClient(_ClientBase):
    """The asyncio twin of ``KilatClient``; the same methods, awaited."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:7001", *, user: str | None = None,
                 timeout: float = 5.0, keys: KeyPair | tuple[bytes, bytes] | None = None,
                 server_public_key: bytes | None = None):
        super().__init__(endpoint, zmq.asyncio.Context.instance(), user, keys, server_public_key)
        self.timeout = timeout

    @classmethod
    def from_keys_dir(cls, endpoint: str, keys_dir: str | os.PathLike, user: str,
                      **kwargs) -> AsyncKilatClient:
        security = ClientSecurity.from_keys_dir(keys_dir, user)
        return cls(endpoint, user=user, keys=security.keys,
                   server_public_key=security.server_public, **kwargs)

    async def submit(self, account, symbol, side, qty, price=0, **kwargs) -> list:
        return await self.request(self.submit_order(account, symbol, side, qty, price, **kwargs))

    async def cancel(self, account, order_id=0, **kwargs) -> list:
        return await self.request(self.cancel_order(account, order_id, **kwargs))

    async def modify(self, account, order_id=0, **kwargs) -> list:
        return await self.request(self.modify_order(account, order_id, **kwargs))

    async def mass_cancel(self, account="", symbol="", side=None) -> list:
        return await self.request(MassCancel(account, symbol, side))

    async def orders(self, account="", symbol="", open_only=False):
        (view,) = await self.request(QueryOrders(account, symbol, open_only))
        return view.orders

    async def book(self, symbol, depth=5):
        (view,) = await self.request(QueryBook(symbol, depth))
        return view

    async def request(self, message) -> list:
        rid = next(self._ids).to_bytes(8, "little")
        await self._sock.send_multipart([rid, self._encode(message)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._sock.poll(int(remaining * 1000)):
                raise self._timeout(f"{self.timeout} s")
            got, payload = await self._sock.recv_multipart()
            replies = _REPLIES.decode(payload)
            if got == rid:
                return replies
            self._pushed.extend(replies)

    async def events(self, timeout: float = 0.0) -> list:
        if not self._pushed and await self._sock.poll(int(timeout * 1000)):
            while await self._sock.poll(0):
                _, payload = await self._sock.recv_multipart()
                self._pushed.extend(_REPLIES.decode(payload))
        out = list(self._pushed)
        self._pushed.clear()
        return out

    async def __aenter__(self) -> AsyncKilatClient:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
