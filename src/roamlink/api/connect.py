"""connect(): open a roamlink connection, like asyncio.open_connection."""

from __future__ import annotations

import socket

from ..config import Config
from ..core.events import Address
from ..io.endpoint import Endpoint
from .addresses import resolve
from .stream import Stream


async def connect(host: str, port: int, *, config: Config | None = None,
                  local_addr: Address | None = None, early_data: bytes = b"",
                  endpoint: Endpoint | None = None) -> Stream:
    """Connect to a roamlink listener and return the established :class:`Stream`.

    ``early_data`` travels in the first packet (0-RTT): the server may see it twice if the
    first packet is replayed, so send only idempotent requests that way. Raises
    :class:`~roamlink.errors.ConnectTimeout`, :class:`~roamlink.errors.ConnectionRefused`
    (nothing listens there, or the listener is full) or
    :class:`~roamlink.errors.VersionMismatch`.
    """
    config = config or Config()
    family, remote = await resolve(host, port)
    owned = endpoint is None
    if endpoint is None:
        if local_addr is None:
            local_addr = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        endpoint = await Endpoint.create(config, local_addr, family=family)
        endpoint.owns_lifetime = True
        endpoint.report_unreachable()  # nothing listening there: fail fast, not after 10 s
    conn = endpoint.connect(remote, early_data=early_data, config=config)
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
