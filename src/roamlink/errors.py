"""Typed exceptions: every failure the library reports is a :class:`RoamlinkError`."""

from __future__ import annotations

import asyncio


class RoamlinkError(Exception):
    """Base class of every roamlink exception."""


class ConfigError(RoamlinkError, ValueError):
    """A configuration value is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ProtocolViolation(RoamlinkError):
    """The peer broke the protocol; the connection is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConnectError(RoamlinkError, ConnectionError):
    """The connection could not be established."""


class ConnectTimeout(ConnectError, TimeoutError):
    """The handshake did not complete within ``Config.connect_timeout``."""


class ConnectionRefused(ConnectError, ConnectionRefusedError):
    """The server refused the connection: nothing listens at that port (its host answered
    with ICMP port unreachable), or the listener is full (``Config.max_connections``)."""


class VersionMismatch(ConnectError):
    """Client and server share no protocol version."""

    def __init__(self, offered: tuple[int, ...], supported: tuple[int, ...]) -> None:
        super().__init__(
            f"no common protocol version: we offered {list(offered)}, "
            f"the server supports {list(supported)}"
        )
        self.offered = offered
        self.supported = supported


class HandshakeFailed(ConnectError):
    """The secure handshake was refused or did not authenticate; nothing was delivered.

    Raised on the client as soon as the answer shows it, not after a timeout. ``reason`` says
    why, so that a caller (the CLI's ``known_hosts`` check, for one) can react to a changed
    server key differently from a refused client:

    - ``"server_key_mismatch"``: the server did not prove the key the client pinned
      (``connect(server_key=...)``) — a changed key or someone in the middle;
    - ``"client_not_authorized"``: the server does not accept this client's static key;
    - ``"plaintext_mismatch"``: one side runs ``Config(insecure_plaintext=True)``, the other
      does not; neither falls back to the other's mode;
    - ``"invalid"`` (the default): any other handshake that does not verify.

    The message never contains key material beyond public keys.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionClosed(RoamlinkError, ConnectionError):
    """The connection is closed; no more data can be written (or read)."""


class ConnectionReset(ConnectionClosed):
    """The peer aborted the connection with an error ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection reset by peer (code {code}): {reason}")
        self.code = code
        self.reason = reason


class ConnectionAborted(ConnectionClosed):
    """The local side aborted the connection (``code`` was sent to the peer)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection aborted locally (code {code}): {reason}")
        self.code = code
        self.reason = reason


class IdleTimeout(ConnectionClosed, TimeoutError):
    """Nothing was heard from the peer for ``Config.idle_timeout`` seconds."""


class IncompleteRead(RoamlinkError, asyncio.IncompleteReadError):
    """The stream ended before ``readexactly`` got its bytes (``partial`` holds them)."""

    def __init__(self, partial: bytes, expected: int) -> None:
        asyncio.IncompleteReadError.__init__(self, partial, expected)


class InvalidKey(RoamlinkError, ValueError):
    """A key is not a 32-byte X25519 key (raw, or base64 of it in WireGuard's style).

    The message says what was expected; it never repeats the rejected text, which might be a
    private key pasted in the wrong place.
    """


class KeyFileError(RoamlinkError):
    """A key file cannot be used: missing, unreadable, malformed, or readable by others.

    ``path`` names the file. Like ssh, roamlink refuses a private-key file that group or
    others may read (``insecure`` is then true): a key that others could have copied no longer
    authenticates its owner, and refusing is how the owner learns of it.
    """

    def __init__(self, path: str, message: str, *, insecure: bool = False) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.insecure = insecure


class MigrationError(RoamlinkError):
    """A path could not be validated; the connection stays on its old path."""


class MigrationTimeout(MigrationError, TimeoutError):
    """Path validation did not complete in time; the old path is still in use."""


__all__ = [
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionAborted",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionReset",
    "HandshakeFailed",
    "IdleTimeout",
    "IncompleteRead",
    "InvalidKey",
    "KeyFileError",
    "MigrationError",
    "MigrationTimeout",
    "ProtocolViolation",
    "RoamlinkError",
    "VersionMismatch",
]


class InvalidTransition(RuntimeError):
    """A bug: the connection tried a transition that the state table does not allow.

    It lives here, not in ``core/states.py``, because mypyc cannot compile a class that
    subclasses a builtin type such as ``RuntimeError``.
    """
