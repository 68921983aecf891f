"""roamlink: a reliable UDP transport whose connections survive address changes.

>>> listener = await roamlink.listen("127.0.0.1", 4433)
>>> stream = await roamlink.connect("127.0.0.1", 4433)
>>> await roamlink.forward.bridge(stream, tcp_reader, tcp_writer)  # carry a TCP connection
"""

from . import errors, forward
from .api import Listener, Stream, connect, listen, run_server
from .config import PROTOCOL_VERSION, Config
from .core import connection as _core_connection
from .core.events import ConnectionStats, PathChanged
from .errors import (
    ConfigError,
    ConnectionAborted,
    ConnectionClosed,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    HandshakeFailed,
    IdleTimeout,
    IncompleteRead,
    InvalidKey,
    KeyFileError,
    MigrationError,
    MigrationTimeout,
    RoamlinkError,
    VersionMismatch,
)
from .keys import KeyPair

__version__ = "0.1.0"

#: True when the protocol core runs as mypyc-compiled C extensions (``pip install .`` with a C
#: compiler), False for the pure-Python fallback (``ROAMLINK_PURE=1``, editable installs).
compiled: bool = not str(_core_connection.__file__).endswith(".py")

__all__ = [
    "PROTOCOL_VERSION",
    "Config",
    "ConfigError",
    "ConnectTimeout",
    "ConnectionAborted",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionReset",
    "ConnectionStats",
    "HandshakeFailed",
    "IdleTimeout",
    "IncompleteRead",
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
    "compiled",
    "errors",
    "forward",
    "listen",
    "run_server",
]
