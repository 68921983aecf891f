"""roamlink: a reliable UDP transport whose connections survive address changes.

>>> listener = await roamlink.listen("127.0.0.1", 4433)
>>> stream = await roamlink.connect("127.0.0.1", 4433)
>>> await roamlink.forward.bridge(stream, tcp_reader, tcp_writer)  # carry a TCP connection
"""

from . import errors, forward
from .api import Listener, Stream, connect, listen, run_server
from .config import PROTOCOL_VERSION, Config
from .core.events import ConnectionStats, PathChanged
from .errors import (
    ConfigError,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    HandshakeFailed,
    InvalidKey,
    KeyFileError,
    MigrationError,
    MigrationTimeout,
    RoamlinkError,
    VersionMismatch,
)
from .keys import KeyPair

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Config",
    "ConfigError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionReset",
    "ConnectionStats",
    "HandshakeFailed",
    "InvalidKey",
    "KeyFileError",
    "KeyPair",
    "Listener",
    "MigrationError",
    "MigrationTimeout",
    "PathChanged",
    "RoamlinkError",
    "Stream",
    "VersionMismatch",
    "connect",
    "errors",
    "forward",
    "listen",
    "run_server",
]
