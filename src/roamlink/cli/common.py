"""Pieces every sub-command shares: addresses, config files, errors, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import tomllib
from pathlib import Path
from typing import Any

from ..api import Listener, Stream, connect, listen
from ..api.forward import describe_code
from ..config import Config
from ..core.events import Address
from ..errors import (
    ConfigError,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    HandshakeFailed,
    IdleTimeout,
    IncompleteRead,
    InvalidKey,
    KeyFileError,
    MigrationError,
    RoamlinkError,
    VersionMismatch,
)
from ..keys import KeyPair

# Exit codes (documented in the README): scripts can tell "could not reach it" from "the
# data did not check out".
EXIT_OK = 0
EXIT_ERROR = 1  # local problem: port in use, file not found, permission denied, ...
EXIT_USAGE = 2  # bad arguments or configuration (argparse also uses 2)
EXIT_CONNECTION = 3  # no connection, version mismatch, reset, timeout
EXIT_VERIFY = 4  # the peer refused the transfer, or size/hash did not match
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CliError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------- addresses
def parse_hostport(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, or (with ``default_host``) just ``PORT``."""
    host: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = None, text
    else:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: write IPv6 addresses as [ADDR]:PORT")
    if host is None or host == "":
        if default_host is None:
            raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid port {port_text!r} in {text!r}: expected a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port} in {text!r}: must be 0-65535")
    return host, port


def listen_address(text: str) -> tuple[str, int]:
    """argparse type for ``[HOST:]PORT`` (host defaults to 127.0.0.1: nothing is exposed
    to the network unless asked for)."""
    return parse_hostport(text, default_host="127.0.0.1")


def remote_address(text: str) -> tuple[str, int]:
    """argparse type for ``HOST:PORT`` of a peer."""
    host, port = parse_hostport(text)
    if port == 0:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: port 0 cannot be reached")
    return host, port


def show(addr: tuple[str, int] | Address) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------- config
def load_config(path: str | None) -> Config:
    """Read a TOML file whose top-level keys are :class:`roamlink.Config` fields."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config file {path}: invalid TOML: {exc}", EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"config file {path}: {_os_reason(exc)}", EXIT_USAGE) from exc
    try:
        return Config.from_mapping(data)
    except ConfigError as exc:
        if str(exc).endswith("unknown configuration key"):
            raise CliError(f"config file {path}: unknown key {exc.field!r}",
                           EXIT_USAGE) from exc
        raise CliError(f"config file {path}: {exc}", EXIT_USAGE) from exc


# ---------------------------------------------------------------------------- sessions
#: Defaults of commands that carry long-lived, mostly idle sessions (``connect``,
#: ``forward``, ``serve --forward``): an SSH shell may sit idle for hours. Keepalives every
#: 15 s keep the NAT mapping fresh (common UDP NAT timeouts are 30 s or more) and tell each
#: side the other is alive, so an idle session never times out; the idle timeout then only
#: says how long the *network* may be gone (a laptop lid closed, a tunnel, Wi-Fi to 4G)
#: before the session is given up, and how long a server keeps the TCP connection of a
#: client that vanished. Both ends should use the same values.
SESSION_IDLE_TIMEOUT = 600.0
SESSION_KEEPALIVE = 15.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: must be >= 0")
    return value


def add_session_options(p: argparse.ArgumentParser, *, when: str = "") -> None:
    """``--idle-timeout`` and ``--keepalive`` (``when``: in which mode the session defaults
    apply, for the help text)."""
    g = p.add_argument_group("session timeouts")
    g.add_argument("--idle-timeout", metavar="SECONDS", type=_seconds, default=None,
                   help="give a connection up when nothing was heard from the peer for this "
                        f"long; 0 never does (default{when}: {SESSION_IDLE_TIMEOUT:g}, "
                        "or idle_timeout from --config)")
    g.add_argument("--keepalive", metavar="SECONDS", type=_seconds, default=None,
                   help="send a keepalive after this long without sending; 0 disables "
                        f"(default{when}: {SESSION_KEEPALIVE:g}, or keepalive_interval from "
                        "--config)")


def session_config(args: argparse.Namespace, config: Config, *, long_lived: bool) -> Config:
    """``config`` with the session options applied. With ``long_lived``, the session defaults
    replace the library's defaults unless the --config file set the field itself."""
    explicit = _config_keys(getattr(args, "config", None))
    idle: float | None = getattr(args, "idle_timeout", None)
    keepalive: float | None = getattr(args, "keepalive", None)
    changes: dict[str, Any] = {}
    if idle is not None:
        changes["idle_timeout"] = idle
    elif long_lived and "idle_timeout" not in explicit:
        changes["idle_timeout"] = SESSION_IDLE_TIMEOUT
    if keepalive is not None:
        changes["keepalive_interval"] = keepalive or None
    elif long_lived and "keepalive_interval" not in explicit:
        changes["keepalive_interval"] = SESSION_KEEPALIVE
    try:
        return config.replace(**changes) if changes else config
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", EXIT_USAGE) from exc


def _config_keys(path: str | None) -> set[str]:
    if path is None:
        return set()
    try:
        with open(path, "rb") as fh:
            return set(tomllib.load(fh))
    except (OSError, tomllib.TOMLDecodeError):  # load_config has reported it already
        return set()


# ---------------------------------------------------------------------------- sockets
async def open_listener(addr: tuple[str, int], config: Config, *,
                        key: KeyPair | None = None,
                        authorized_clients: list[bytes] | None = None) -> Listener:
    host, port = addr
    try:
        return await listen(host, port, key=key, authorized_clients=authorized_clients,
                            config=config)
    except OSError as exc:
        raise listen_error(addr, exc) from exc


def listen_error(addr: tuple[str, int], exc: OSError) -> CliError:
    """The one-line error for a socket that cannot listen on ``addr``."""
    if exc.errno == errno.EADDRINUSE:
        return CliError(f"cannot listen on udp {show(addr)}: address already in use "
                        "(another server is running there?)")
    if exc.errno == errno.EACCES:
        return CliError(f"cannot listen on udp {show(addr)}: permission denied")
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return CliError(f"cannot listen on udp {show(addr)}: no such local address")
    return CliError(f"cannot listen on udp {show(addr)}: {_os_reason(exc)}")


async def open_stream(addr: tuple[str, int], config: Config, *,
                      server_key: bytes | None = None,
                      client_key: KeyPair | None = None) -> Stream:
    """Connect, with one-line errors. This does not decide whom to trust: client commands
    call :func:`roamlink.cli.trust.open_trusted_stream`, which pins keys and then calls this."""
    host, port = addr
    try:
        return await connect(host, port, server_key=server_key, client_key=client_key,
                             config=config)
    except ConnectTimeout as exc:
        raise CliError(f"cannot connect to {show(addr)}: no answer within "
                       f"{config.connect_timeout:g} s (is a roamlink server running there?)",
                       EXIT_CONNECTION) from exc
    except VersionMismatch as exc:
        raise CliError(f"cannot connect to {show(addr)}: protocol version mismatch: "
                       f"we speak {list(exc.offered)}, the server speaks "
                       f"{list(exc.supported)}", EXIT_CONNECTION) from exc
    except HandshakeFailed as exc:
        raise CliError(f"cannot connect to {show(addr)}: handshake failed: {exc}",
                       EXIT_CONNECTION) from exc
    except socket.gaierror as exc:
        raise CliError(f"cannot resolve {host!r}: {exc.strerror}", EXIT_CONNECTION) from exc
    except RoamlinkError as exc:
        raise CliError(f"cannot connect to {show(addr)}: {exc}", EXIT_CONNECTION) from exc
    except OSError as exc:
        raise CliError(f"cannot connect to {show(addr)}: {_os_reason(exc)}",
                       EXIT_CONNECTION) from exc


# ---------------------------------------------------------------------------- errors
def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for an exception that reached the top."""
    if isinstance(exc, CliError):
        return exc.message, exc.code
    if isinstance(exc, ConnectionReset):
        meaning = describe_code(exc.code)
        if meaning is not None:  # a forwarding server's code (0x101, 0x102)
            return f"{meaning} (code {exc.code:#x}: {exc.reason})", EXIT_CONNECTION
        return f"connection reset by the peer (code {exc.code}): {exc.reason}", EXIT_CONNECTION
    if isinstance(exc, IdleTimeout):
        return f"connection timed out: {exc}", EXIT_CONNECTION
    if isinstance(exc, IncompleteRead):
        return "the connection ended early (peer went away?)", EXIT_CONNECTION
    if isinstance(exc, ConnectionClosed):
        return f"connection closed: {exc}", EXIT_CONNECTION
    if isinstance(exc, MigrationError):
        return f"migration failed: {exc}", EXIT_CONNECTION
    if isinstance(exc, ConfigError):
        return f"invalid configuration: {exc}", EXIT_USAGE
    if isinstance(exc, KeyFileError):
        return f"key file {exc}", EXIT_ERROR
    if isinstance(exc, InvalidKey):
        return str(exc), EXIT_USAGE
    if isinstance(exc, RoamlinkError):
        return str(exc), EXIT_CONNECTION
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{_os_reason(exc)}", EXIT_ERROR
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)", EXIT_ERROR


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return exc.strerror or str(exc)


def file_error(path: str | Path, exc: OSError) -> CliError:
    return CliError(f"{path}: {_os_reason(exc)}", EXIT_ERROR)


async def close_quietly(stream: Stream, timeout: float = 5.0) -> None:
    """Orderly close, bounded: a vanished peer must not keep the command alive."""
    stream.close()
    try:
        await asyncio.wait_for(stream.wait_closed(), timeout)
    except (TimeoutError, RoamlinkError):
        stream.abort(0, "closing")


async def drain_unless(stream: Stream, stop: asyncio.Future[Any] | None = None,
                       timeout: float | None = None) -> None:
    """``drain()``, but give up when ``stop`` completes or ``timeout`` passes: a peer that
    stopped reading (or answered early) must not hang the command."""
    drain = asyncio.ensure_future(stream.drain())
    waiting: set[asyncio.Future[Any]] = {drain} if stop is None else {drain, stop}
    try:
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not drain.done():
            drain.cancel()
    if drain.done() and not drain.cancelled():
        drain.result()  # re-raise a connection error
