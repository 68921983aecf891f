"""Where the CLI keeps keys: the config directory, the server's key, and ``known_hosts``.

The command line trusts a server on first use, as ssh does: the first connection to a
``host:port`` learns the server's public key and stores it in ``known_hosts``; every later
connection pins that key, and a different key is refused loudly. ``--server-key`` overrides
the file (then it is neither read nor written).

``known_hosts`` format (one entry a line; ``#`` starts a comment line; blank lines ignored)::

    127.0.0.1:4433 mC3bXQ0yI6kCf1n0vn7xqZ6yqvS8o0xJ9Qx+0nM8Uj0=
    [2001:db8::1]:4433 Yq2mT1...=
    server.example:4433 Yq2mT1...=

The host is written as it was given on the command line (names are not resolved: pinning
``server.example`` keeps meaning that name, wherever it points), lower-cased; IPv6 addresses
in brackets. Several lines for one ``host:port`` are allowed (a key rotation in progress);
any of them is accepted. A malformed line is an error naming the file and line, never
skipped: skipping the line of the host being contacted would silently turn a pinned server
into a first contact.

Directory: ``$ROAMLINK_CONFIG_DIR`` if set (tests use it), else ``$XDG_CONFIG_HOME/roamlink``,
else ``~/.config/roamlink`` (``%APPDATA%\\roamlink`` on Windows). It is created with mode
0700; ``known_hosts`` with mode 0600 (not secret, but whoever can write it can plant a key).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidKey
from ..keys import encode_key, parse_public_key
from .common import EXIT_ERROR, CliError

KNOWN_HOSTS = "known_hosts"
SERVER_KEY = "server.key"


class KnownHostsError(CliError):
    """``known_hosts`` cannot be read or written, or holds a malformed line (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_ERROR)


def config_dir() -> Path:
    """The directory of roamlink's own files for this user (not created here)."""
    override = os.environ.get("ROAMLINK_CONFIG_DIR")
    if override:
        return Path(override)
    if os.name == "nt" and os.environ.get("APPDATA"):  # pragma: no cover - not on CI
        return Path(os.environ["APPDATA"]) / "roamlink"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "roamlink"
    return Path.home() / ".config" / "roamlink"


def ensure_config_dir() -> Path:
    """``config_dir()``, created with mode 0700 if it does not exist yet."""
    path = config_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def default_server_key_path() -> Path:
    """The key ``roamlink serve`` uses without ``--key`` (and ``keygen`` writes by default)."""
    return config_dir() / SERVER_KEY


def host_entry(host: str, port: int) -> str:
    """The ``host:port`` text of a ``known_hosts`` line: lower case, IPv6 in brackets."""
    host = host.lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class KnownHost:
    """One line of ``known_hosts``."""

    entry: str
    key: bytes
    line: int

    @property
    def key_text(self) -> str:
        return encode_key(self.key)


class KnownHosts:
    """The ``known_hosts`` file: read on each lookup (it is small), appended to on learning."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else config_dir() / KNOWN_HOSTS

    def entries(self) -> list[KnownHost]:
        """Every entry of the file (none when it does not exist)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise KnownHostsError(f"{self.path}: cannot read: {_reason(exc)}") from None
        found: list[KnownHost] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            try:
                if len(parts) != 2 or not _looks_like_entry(parts[0]):
                    raise InvalidKey("expected 'HOST:PORT KEY'")
                key = parse_public_key(parts[1])
            except InvalidKey:
                raise KnownHostsError(
                    f"{self.path}, line {number}: malformed entry (expected 'HOST:PORT KEY' "
                    "with a base64 public key); fix or remove that line") from None
            found.append(KnownHost(parts[0].lower(), key, number))
        return found

    def lookup(self, host: str, port: int) -> list[KnownHost]:
        """The entries pinned for ``host:port`` (empty: never seen)."""
        entry = host_entry(host, port)
        return [known for known in self.entries() if known.entry == entry]

    def add(self, host: str, port: int, key: bytes) -> KnownHost:
        """Append ``host:port KEY`` (creating the directory 0700 and the file 0600).

        One ``write`` of one line in append mode: two commands learning keys at the same
        time cannot interleave their lines.
        """
        entry = host_entry(host, port)
        line = f"{entry} {encode_key(key)}\n".encode("ascii")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _ends_with_newline(self.path):
                line = b"\n" + line
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            raise KnownHostsError(f"{self.path}: cannot write: {_reason(exc)}") from None
        lines = self.path.read_bytes().splitlines()
        number = max((i for i, text in enumerate(lines, start=1) if text == line.strip()),
                     default=len(lines))
        return KnownHost(entry, key, number)


def _looks_like_entry(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file too: a new line can start right there."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return True
    return data[-1:] in (b"", b"\n")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


__all__ = [
    "KnownHost",
    "KnownHosts",
    "KnownHostsError",
    "config_dir",
    "default_server_key_path",
    "ensure_config_dir",
    "host_entry",
]
