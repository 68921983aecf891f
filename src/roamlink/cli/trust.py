"""Whom the command line trusts: the server's key, ``--server-key`` pins and known_hosts TOFU.

Client commands (``connect``, ``send``, ``perf client``, and any later one that calls
:func:`open_trusted_stream`) authenticate the server like ssh does:

1. ``--server-key KEY`` given: only a server proving KEY is accepted; ``known_hosts`` is
   neither read nor written. Any other key: exit status 3.
2. ``known_hosts`` has keys for ``host:port``: the connection pins them (tried in file order);
   a server proving none of them is refused with an alarming message and exit status 3 — a
   changed key is what a man in the middle looks like. Only the user can decide it is a
   legitimate change (remove the line, or pass ``--server-key``).
3. First contact: the connection is encrypted but the server is not authenticated yet; its key
   (``stream.peer_key``) is printed and stored, and pinned from then on.

Servers (``serve``, ``perf server``) use ``--key FILE``, or the user's default server key,
created on first use (mode 0600) so that the first run needs no setup, and print its public key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ..api import Listener, Stream
from ..config import Config
from ..errors import HandshakeFailed, InvalidKey, KeyFileError, RoamlinkError
from ..keys import KeyPair, encode_key, parse_public_key
from .common import EXIT_CONNECTION, EXIT_USAGE, CliError, open_listener, open_stream, show
from .known_hosts import (
    KnownHosts,
    KnownHostsError,
    default_server_key_path,
    ensure_config_dir,
    host_entry,
)
from .output import Output

_PROBE_TIMEOUT = 3.0


# ---------------------------------------------------------------------------- options
def add_client_key_options(p: argparse.ArgumentParser) -> None:
    """``--server-key`` and ``--key`` for a command that connects to a server."""
    g = p.add_argument_group("keys")
    g.add_argument("--server-key", metavar="KEY",
                   help="the server's public key (base64, as `roamlink keygen` prints): "
                        "accept only that server; known_hosts is then ignored")
    g.add_argument("--key", dest="client_key", metavar="FILE",
                   help="this client's private-key file (for servers that admit only some "
                        "clients); default: a fresh random key per connection")


def add_server_key_options(p: argparse.ArgumentParser) -> None:
    """``--key`` for a command that listens."""
    g = p.add_argument_group("keys")
    g.add_argument("--key", dest="server_key_file", metavar="FILE",
                   help="the server's private-key file (default: "
                        f"{default_server_key_path()}, created on first use)")
    g.add_argument("--authorized-keys", metavar="FILE",
                   help="admit only clients whose public key is listed in FILE (one base64 "
                        "key a line, '#' comments); others are refused at the handshake")


# ---------------------------------------------------------------------------- servers
def load_server_key(path: str | None) -> tuple[KeyPair, str]:
    """The server's key pair and a phrase saying where it came from.

    An explicit ``--key FILE`` must exist (a typo must not silently mint a new identity);
    the default key is created on first use, and the phrase says so.
    """
    if path is not None:
        return KeyPair.load(path), path
    default = default_server_key_path()
    try:
        return KeyPair.load(default), str(default)
    except KeyFileError as exc:
        if exc.insecure or default.exists():
            raise
    ensure_config_dir()
    key = KeyPair.generate()
    try:
        key.save(default)
    except KeyFileError:  # another process created it just now: use theirs
        return KeyPair.load(default), str(default)
    return key, f"created now in {default}, mode 0600"


def load_authorized_keys(path: str) -> list[bytes]:
    """The public keys of an ``--authorized-keys`` file: one a line, ``#`` comments, blank
    lines ignored; a malformed line is an error (never skipped: a typo must not admit or lock
    out someone silently), and so is a file without keys (it would refuse everyone)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"{path}: cannot read: {reason.lower()}") from None
    keys: list[bytes] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(parse_public_key(line.split()[0]))
        except InvalidKey:
            raise CliError(f"{path}, line {number}: not a public key (expected base64 of 32 "
                           "bytes, as `roamlink keygen` prints)", EXIT_USAGE) from None
    if not keys:
        raise CliError(f"{path}: no keys: every client would be refused", EXIT_USAGE)
    return keys


async def open_server(addr: tuple[str, int], config: Config, key_file: str | None,
                      authorized_keys: str | None = None,
                      ) -> tuple[Listener, str, str | None]:
    """A listener with the server's static key (none in plaintext mode), a phrase that says
    which key it is for the "listening" line, and the public key (None in plaintext mode).

    The key goes into the "listening" report rather than a report of its own, so that the
    first line a server prints is still the one that tells where it listens."""
    if config.insecure_plaintext:
        if authorized_keys is not None:
            raise CliError("--authorized-keys needs encryption: it cannot work with "
                           "insecure_plaintext", EXIT_USAGE)
        listener = await open_listener(addr, config)
        return listener, "INSECURE PLAINTEXT mode: no encryption, no authentication", None
    authorized = None if authorized_keys is None else load_authorized_keys(authorized_keys)
    key, source = load_server_key(key_file)
    listener = await open_listener(addr, config, key=key, authorized_clients=authorized)
    text = f"server key {key.public} ({source})"
    if authorized is not None:
        text += f"; admitting {len(authorized)} client key(s) only"
    return listener, text, key.public


# ---------------------------------------------------------------------------- clients
def _pinned_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return parse_public_key(text)
    except InvalidKey as exc:
        raise CliError(f"--server-key: {exc}", EXIT_USAGE) from None


def _client_key(path: str | None) -> KeyPair | None:
    return None if path is None else KeyPair.load(path)


def check_client_key_options(args: argparse.Namespace) -> None:
    """Fail at start, not at the first connection, on a bad ``--server-key`` or ``--key``
    (for commands that connect later, once per incoming connection: ``forward``)."""
    _pinned_key(getattr(args, "server_key", None))
    _client_key(getattr(args, "client_key", None))


async def open_trusted_stream(addr: tuple[str, int], config: Config, out: Output,
                              args: argparse.Namespace) -> Stream:
    """Connect to ``addr`` and authenticate the server as the module docstring says."""
    pinned = _pinned_key(getattr(args, "server_key", None))
    client_key = _client_key(getattr(args, "client_key", None))
    if config.insecure_plaintext:
        out.report("insecure", "WARNING: insecure_plaintext is set: this connection is neither "
                   "encrypted nor authenticated", urgent=True, insecure=True)
        return await open_stream(addr, config)
    host, port = addr
    if pinned is not None:
        try:
            return await open_stream(addr, config, server_key=pinned, client_key=client_key)
        except CliError as exc:
            if _mismatch(exc):
                raise CliError(
                    f"SERVER KEY MISMATCH: {show(addr)} did not prove the key given with "
                    f"--server-key ({encode_key(pinned)}). Someone may be intercepting the "
                    "connection, or the key is wrong. Connection refused.",
                    EXIT_CONNECTION) from exc
            raise
    store = KnownHosts()
    known = store.lookup(host, port)
    if not known:
        stream = await open_stream(addr, config, client_key=client_key)
        learned = _peer_key(stream)
        try:
            added = store.add(host, port, learned)
        except KnownHostsError as exc:  # as ssh: say so, and go on with this connection
            out.report("server_key_learned",
                       f"first contact with {host_entry(host, port)}: its key is "
                       f"{encode_key(learned)}; WARNING: it could not be stored ({exc}), so "
                       "it is not pinned", server=host_entry(host, port),
                       public_key=encode_key(learned), known_hosts=None, error=str(exc))
            return stream
        out.report("server_key_learned",
                   f"first contact with {host_entry(host, port)}: its key "
                   f"{encode_key(learned)} is now stored in {store.path} (line {added.line}); "
                   "compare it with `roamlink pubkey` on the server. From now on only this key "
                   "is accepted.", server=host_entry(host, port),
                   public_key=encode_key(learned),
                   known_hosts=str(store.path))
        return stream
    failure: CliError | None = None
    for entry in known:
        try:
            return await open_stream(addr, config, server_key=entry.key,
                                     client_key=client_key)
        except CliError as exc:
            if not _mismatch(exc):
                raise
            failure = exc
    assert failure is not None
    offered = await _probe_key(addr, config)
    lines = ", ".join(str(entry.line) for entry in known)
    raise CliError(
        f"WARNING: THE SERVER KEY OF {host_entry(host, port)} HAS CHANGED! Someone could be "
        "eavesdropping on you right now (a man-in-the-middle attack), or the server's key was "
        f"replaced. Pinned: {known[0].key_text} ({store.path}, line {lines}); "
        + (f"the server now offers {encode_key(offered)}. " if offered else "")
        + "Connection refused. If the change is expected, remove that line or pass "
          "--server-key KEY.", EXIT_CONNECTION) from failure


def _mismatch(exc: CliError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, HandshakeFailed) and cause.reason == "server_key_mismatch"


def _peer_key(stream: Stream) -> bytes:
    key = stream.peer_key
    if key is None:  # pragma: no cover - only in plaintext mode, handled before
        raise CliError("the server presented no key", EXIT_CONNECTION)
    return parse_public_key(key)


async def _probe_key(addr: tuple[str, int], config: Config) -> bytes | None:
    """The key the server offers now, learned over a second, unauthenticated connection that
    carries no data; only shown to the user next to the pinned one. None if it fails."""
    with contextlib.suppress(CliError, RoamlinkError, OSError, TimeoutError, ValueError):
        stream = await asyncio.wait_for(open_stream(addr, config), _PROBE_TIMEOUT)
        try:
            return _peer_key(stream)
        finally:
            stream.abort(0, "key probe")
    return None


__all__ = [
    "add_client_key_options",
    "add_server_key_options",
    "check_client_key_options",
    "load_server_key",
    "open_server",
    "open_trusted_stream",
]

