"""Address parsing and resolution for the API ("host:port", "[v6]:port", tuples, ports)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from ..core.events import Address
from ..io.endpoint import numeric_sockaddr


def parse_address(value: Address | str | int, *, default_host: str = "0.0.0.0"
                  ) -> tuple[str, int]:
    """``"host:port"``, ``"[::1]:port"``, ``(host, port)`` or a bare port (with default host)."""
    if isinstance(value, int):
        return default_host, value
    if isinstance(value, tuple):
        return str(value[0]), int(value[1])
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.isdigit():
        return default_host, int(text)
    else:
        raise ValueError(f"not an address (want host:port): {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host or default_host, int(port)


async def resolve(host: str, port: int) -> tuple[int, Address]:
    """The first UDP address for ``host:port`` and its address family."""
    numeric = numeric_sockaddr(host, port)
    if numeric is not None:
        return numeric
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    addr = cast(tuple[Any, ...], sockaddr)
    if family == socket.AF_INET6:
        return family, (str(addr[0]), int(addr[1]), int(addr[2]), int(addr[3]))
    return family, (str(addr[0]), int(addr[1]))
