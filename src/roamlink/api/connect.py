"""connect(): open a roamlink connection, like asyncio.open_connection."""

from __future__ import annotations

import socket

from ..config import Config
from ..core.events import Address
from ..core.handshake import make_client_handshake
from ..io.endpoint import Endpoint
from .addresses import resolve
from .keyarg import private_key_bytes, public_key_bytes
from .stream import Stream


async def connect(host: str, port: int, *, server_key: object = None,
                  client_key: object = None, config: Config | None = None,
                  local_addr: Address | None = None, early_data: bytes = b"",
                  endpoint: Endpoint | None = None) -> Stream:
    """Connect to a roamlink listener and return the established :class:`Stream`.

    ``server_key`` (the server's public key: base64 text, 32 raw bytes or a ``KeyPair``)
    authenticates the server: a different key raises
    :class:`~roamlink.errors.HandshakeFailed` (``reason="server_key_mismatch"``) as soon as the
    server answers. Without it the connection is still encrypted, but the server is not
    authenticated (like ssh with host-key checking off): ``stream.peer_key`` gives the key to
    pin next time; learning it costs one more round trip. ``client_key`` (a ``KeyPair`` or 32
    private bytes) is the static key a server may authorise; without it a fresh one is made.

    ``early_data`` travels in the first packet (0-RTT). A server delivers it at most once
    (replay cache), but a *different* server process could see a replayed copy, so send only
    idempotent requests that way. Raises :class:`~roamlink.errors.ConnectTimeout`,
    :class:`~roamlink.errors.ConnectionRefused` (nothing listens there, or the listener is
    full), :class:`~roamlink.errors.VersionMismatch` or :class:`~roamlink.errors.HandshakeFailed`.
    """
    config = config or Config()
    client_handshake = None
    if not config.insecure_plaintext:
        client_handshake = make_client_handshake(
            config.psk,
            public_key_bytes(server_key) if server_key is not None else None,
            private_key_bytes(client_key, "client_key") if client_key is not None else None)
    family, remote = await resolve(host, port)
    owned = endpoint is None
    if endpoint is None:
        if local_addr is None:
            local_addr = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        endpoint = await Endpoint.create(config, local_addr, family=family)
        endpoint.owns_lifetime = True
        endpoint.report_unreachable()  # nothing listening there: fail fast, not after 10 s
    conn = endpoint.connect(remote, early_data=early_data, config=config,
                            client_handshake=client_handshake)
    stream = Stream(endpoint, conn)
    try:
        await stream.on_handshake
    except BaseException:
        if not conn.is_terminated:
            conn.abort(endpoint.now(), 0, "connect cancelled")
        if owned:
            endpoint.close()
        raise
    return stream
