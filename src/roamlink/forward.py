"""``roamlink.forward``: carry a TCP connection over roamlink (see :mod:`roamlink.api.forward`).

>>> result = await roamlink.forward.bridge(stream, reader, writer)
"""

from .api.forward import (
    DEFAULT_CHUNK,
    TARGET_UNREACHABLE,
    TCP_RESET,
    BridgeResult,
    bridge,
    describe_code,
    forward_stream,
    reset_tcp,
    target_error_reason,
)

__all__ = [
    "DEFAULT_CHUNK",
    "TARGET_UNREACHABLE",
    "TCP_RESET",
    "BridgeResult",
    "bridge",
    "describe_code",
    "forward_stream",
    "reset_tcp",
    "target_error_reason",
]
