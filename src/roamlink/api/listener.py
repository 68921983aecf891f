"""Listener: accepts roamlink connections arriving on one UDP socket."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from types import TracebackType

from ..config import Config
from ..core.connection import Connection
from ..core.events import Address
from ..crypto.handshake import ServerCrypto
from ..crypto.noise import private_key
from ..io.endpoint import Endpoint
from .keyarg import encode_public, private_key_bytes, public_key_bytes
from .stream import Stream

logger = logging.getLogger("roamlink.listener")


class Listener:
    """Accepts connections on one UDP socket; every connection shares that socket.

    ``close()`` stops accepting and closes every connection in order; ``wait_closed()``
    waits for them to end (at most ``Config.close_timeout``) and then closes the socket.
    """

    def __init__(self, endpoint: Endpoint, extra: list[Endpoint] | None = None) -> None:
        self._endpoint = endpoint
        self._extra = extra or []  # more sockets (other addresses) of the same listener
        self._ready: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._pending: set[Stream] = set()
        self._closing = False
        for ep in (endpoint, *self._extra):
            ep.on_new_connection = self._on_new_connection

    def _on_new_connection(self, conn: Connection) -> None:
        stream = Stream(self._endpoint, conn)
        self._pending.add(stream)
        stream.on_handshake.add_done_callback(lambda fut: self._on_handshake(stream, fut))

    def _on_handshake(self, stream: Stream, fut: asyncio.Future[None]) -> None:
        self._pending.discard(stream)
        if fut.cancelled() or fut.exception() is not None or self._closing:
            return
        # only established connections wait in the backlog: half-open handshakes have
        # their own bounds (Config.max_half_open), so a SYN flood cannot fill it
        self._endpoint.dispatcher.held += 1
        self._ready.put_nowait(stream)

    async def accept(self) -> Stream:
        """Wait for the next established connection."""
        if self._closing and self._ready.empty():
            raise RuntimeError("listener is closed")
        stream = await self._ready.get()
        if stream is None:
            self._ready.put_nowait(None)  # wake other acceptors too
            raise RuntimeError("listener is closed")
        self._endpoint.dispatcher.held -= 1
        return stream

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Stream:
        try:
            return await self.accept()
        except RuntimeError:
            raise StopAsyncIteration from None

    @property
    def local_addr(self) -> Address:
        return self._endpoint.local_addr

    @property
    def public_key(self) -> str | None:
        """The server's public key, base64 (what clients pin); None with insecure_plaintext."""
        crypto = self._endpoint.dispatcher.server_crypto
        return encode_public(crypto.public_key) if crypto is not None else None

    @property
    def local_addrs(self) -> list[Address]:
        """Every address this listener accepts on."""
        return [ep.local_addr for ep in (self._endpoint, *self._extra)]

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def connections(self) -> int:
        """Live connections on this listener's socket."""
        return len(self._endpoint.live_connections)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._endpoint.dispatcher.accept_new = False
        now = self._endpoint.now()
        for conn in self._endpoint.live_connections:
            if conn.is_established:
                conn.close(now)
            else:  # half-open: nobody accepted it, nothing to deliver; do not wait for it
                conn.abort(now, 0, "listener closed")
            self._endpoint.mark(conn)
        while not self._ready.empty():
            stream = self._ready.get_nowait()
            if stream is not None:
                stream.close()
        self._ready.put_nowait(None)

    async def wait_closed(self) -> None:
        self.close()
        endpoint = self._endpoint
        deadline = endpoint.loop.time() + endpoint.config.close_timeout + 1.0
        while (any(not c.is_terminated for c in endpoint.live_connections)
               and endpoint.loop.time() < deadline):
            await asyncio.sleep(0.02)
        for ep in (endpoint, *self._extra):
            ep.close()
            await ep.wait_closed()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<roamlink.Listener {self.local_addr}>"


def make_server_crypto(config: Config, key: object = None,
                       authorized_clients: Iterable[object] | None = None
                       ) -> ServerCrypto | None:
    """A listener's secrets from ``listen``'s arguments (None with ``insecure_plaintext``).

    Without ``key`` an ephemeral key pair is made and its public key logged."""
    if config.insecure_plaintext:
        if key is not None or authorized_clients is not None:
            logger.warning("insecure_plaintext=True: the key and authorized_clients are "
                           "ignored; connections are NOT encrypted or authenticated")
        return None
    raw = os.urandom(32) if key is None else private_key_bytes(key)
    authorized = (frozenset(public_key_bytes(k, "authorized_clients")
                            for k in authorized_clients)
                  if authorized_clients is not None else None)
    crypto = ServerCrypto(private_key(raw), authorized=authorized, psk=config.psk,
                          replay_window=config.zero_rtt_window)
    if key is None:
        logger.info("no server key given: using the ephemeral public key %s",
                    encode_public(crypto.public_key))
    return crypto


async def listen(host: str | list[str] = "127.0.0.1", port: int = 0, *, key: object = None,
                 authorized_clients: Iterable[object] | None = None,
                 config: Config | None = None) -> Listener:
    """Listen for roamlink connections on ``host:port`` (port 0 picks a free port).

    ``key`` is the server's static key (a ``KeyPair`` or 32 private bytes); without one an
    ephemeral key pair is made and its public key logged (``listener.public_key`` gives it),
    so clients can only pin it for this process's life. ``authorized_clients`` (public keys:
    base64 text or 32 raw bytes) refuses every other client, which then fails with
    ``HandshakeFailed(reason="client_not_authorized")``.

    ``host`` may be a list: one socket per address, all serving the same connections, so a
    client can move between them with ``Stream.migrate(new_remote_addr)`` and the server
    answers from the address the client chose.
    """
    config = config or Config()
    hosts = [host] if isinstance(host, str) else list(host)
    if not hosts:
        raise ValueError("listen() needs at least one host")
    crypto = make_server_crypto(config, key, authorized_clients)
    endpoint = await Endpoint.create(config, (hosts[0], port), accept_new=True,
                                     server_crypto=crypto)
    extra = []
    try:
        for other in hosts[1:]:
            extra.append(await Endpoint.create(config, (other, endpoint.local_addr[1]),
                                               accept_new=True,
                                               dispatcher=endpoint.dispatcher,
                                               driver=endpoint.driver))
    except BaseException:
        for ep in (endpoint, *extra):
            ep.close()
        raise
    return Listener(endpoint, extra)
