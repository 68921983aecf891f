"""Static X25519 key pairs: generation, key files and public-key text.

A roamlink endpoint is identified by a static X25519 key pair, as a WireGuard peer is. The
client pins the server's public key (``connect(server_key=...)``, or ``known_hosts`` in the
CLI), and the server may admit only some client keys. This module is the one place that
touches private-key bytes on disk.

Text form (WireGuard's): a key is the standard base64 of its 32 raw bytes, 44 characters
ending in ``=``. A *key file* holds the private key in that form on one line (a trailing
newline is allowed and nothing else), so ``wg genkey > FILE`` makes a valid roamlink key
file and ``wg pubkey < FILE`` prints the same public key as :attr:`KeyPair.public`.

Key files are written with mode 0600, atomically (a reader sees the old state or the whole
new file, never a partial key), and never replace an existing file unless asked to. As ssh
does, :meth:`KeyPair.load` refuses a file that group or others may read.

Private keys never appear in ``repr``/``str``, log records or exception messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import InvalidKey, KeyFileError

KEY_SIZE = 32
"""Bytes in an X25519 key (private or public)."""

_MAX_KEY_FILE = 4096  # a key file is 45 bytes; anything much larger is not one

StrPath = str | os.PathLike[str]


def encode_key(raw: bytes) -> str:
    """The WireGuard-style text of a 32-byte key: standard base64, 44 characters."""
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"a key is {KEY_SIZE} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def _decode_base64_key(text: str, what: str) -> bytes:
    """Decode the base64 text of a 32-byte key; the error never echoes ``text``."""
    text = text.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"not a valid {what}: expected the base64 of {KEY_SIZE} bytes "
                         f"(44 characters ending in '=', as `roamlink keygen` prints)")
    return raw


def parse_public_key(key: str | bytes) -> bytes:
    """The raw 32 bytes of a public key given as base64 text or as raw bytes.

    ``bytes`` of length 32 are taken as raw; other ``bytes`` are read as ASCII base64 (a
    raw key can never be 44 bytes long, so the two cannot be confused). Raises
    :class:`~roamlink.errors.InvalidKey` otherwise.
    """
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        if len(raw) == KEY_SIZE:
            return raw
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidKey(f"not a valid public key: expected {KEY_SIZE} raw bytes or "
                             f"their base64 text, got {len(raw)} bytes") from None
        return _decode_base64_key(text, "public key")
    if isinstance(key, str):
        return _decode_base64_key(key, "public key")
    raise TypeError(f"a public key is str (base64) or bytes, not {type(key).__name__}")


def parse_private_key(text: str) -> bytes:
    """The raw 32 bytes of a private key written as base64 text (a key file's one line).

    The error never repeats the text.
    """
    return _decode_base64_key(text, "private key")


class KeyPair:
    """A static X25519 key pair.

    Make one with :meth:`generate`, :meth:`load` or :meth:`from_private_bytes`; store it with
    :meth:`save`. :attr:`public` is the text to give to peers. Two key pairs compare equal
    when they hold the same key.
    """

    __slots__ = ("_private", "_private_bytes", "_public_bytes")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key
        self._private_bytes = private_key.private_bytes_raw()
        self._public_bytes = private_key.public_key().public_bytes_raw()

    # ------------------------------------------------------------------ construction
    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's random source."""
        return cls.from_private_bytes(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> KeyPair:
        """The key pair of 32 raw private-key bytes (X25519 clamps them when it uses them,
        so any 32 bytes are a valid key, as in WireGuard)."""
        if not isinstance(private, bytes | bytearray | memoryview):
            raise TypeError(f"a private key is bytes, not {type(private).__name__}")
        if len(private) != KEY_SIZE:
            raise InvalidKey(f"a private key is {KEY_SIZE} bytes, got {len(private)}")
        return cls(X25519PrivateKey.from_private_bytes(bytes(private)))

    @classmethod
    def load(cls, path: StrPath) -> KeyPair:
        """Read a key file (the base64 private key on one line).

        Raises :class:`~roamlink.errors.KeyFileError` when the file is missing, unreadable,
        not a regular file, malformed, or readable by group or others (as ssh refuses an
        unprotected private key; fix it with ``chmod 600 FILE``).
        """
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyFileError(name, "no such key file (create one with "
                                     "`roamlink keygen FILE`)") from None
        except PermissionError:
            raise KeyFileError(name, "permission denied reading the key file") from None
        except OSError as exc:
            raise KeyFileError(name, f"cannot read the key file: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(name, "not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if os.name == "posix" and mode & 0o077:
                raise KeyFileError(
                    name, f"UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} are too open; "
                          "others may have read this key. It must be readable by its owner "
                          f"only (chmod 600 {name}); the key is refused.", insecure=True)
            data = os.read(fd, _MAX_KEY_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_KEY_FILE:
            raise KeyFileError(name, "too large to be a key file")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        lines = text.splitlines()
        if len(lines) != 1:
            raise KeyFileError(name, "not a roamlink key file: expected one line, the base64 "
                                     "of a 32-byte private key")
        try:
            raw = _decode_base64_key(lines[0], "private key")
        except InvalidKey:
            raise KeyFileError(name, "not a roamlink key file: expected one line, the base64 "
                                     "of a 32-byte private key") from None
        return cls.from_private_bytes(raw)

    # ------------------------------------------------------------------ storage
    def save(self, path: StrPath, *, overwrite: bool = False) -> None:
        """Write the private key to ``path`` with mode 0600, atomically.

        The key goes to a temporary file in the same directory (created 0600, synced) which
        then takes the name in one step. An existing file is not replaced unless
        ``overwrite`` is true (:class:`~roamlink.errors.KeyFileError` says so): losing a
        private key by accident is worse than an extra flag. The directory must exist.
        """
        target = Path(os.fspath(path))
        name = str(target)
        if not overwrite and os.path.lexists(target):
            raise KeyFileError(name, "already exists; not replacing a key file "
                                     "(remove it first, or ask to overwrite)")
        directory = target.parent
        tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise KeyFileError(name, f"cannot write the key file: {exc.strerror}") from None
        try:
            try:
                if os.name == "posix":
                    os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
                os.write(fd, (encode_key(self._private_bytes) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, target)
            else:
                _link_exclusive(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, FileExistsError):
                raise KeyFileError(name, "already exists; not replacing a key file "
                                         "(remove it first, or ask to overwrite)") from None
            raise KeyFileError(name, f"cannot write the key file: {exc.strerror}") from None
        _sync_directory(directory)

    # ------------------------------------------------------------------ views
    @property
    def public(self) -> str:
        """The public key as text (base64 of 32 bytes): what a peer pins."""
        return encode_key(self._public_bytes)

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public_bytes

    @property
    def private_bytes(self) -> bytes:
        """The raw 32-byte private key. Keep it out of logs and messages."""
        return self._private_bytes

    @property
    def private_key(self) -> X25519PrivateKey:
        """The ``cryptography`` object, for Diffie-Hellman without re-parsing the key."""
        return self._private

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 Diffie-Hellman with a peer's raw public key (Noise's ``DH``).

        ``cryptography`` raises ``ValueError`` for a low-order peer key (all-zero result).
        """
        return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return secrets.compare_digest(self._private_bytes, other._private_bytes)

    def __hash__(self) -> int:
        return hash(self._public_bytes)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the private key into wherever pickles go (caches, queues);
        # refuse rather than do it silently. Use private_bytes explicitly if really needed.
        raise TypeError("KeyPair cannot be pickled (it holds a private key)")


def _link_exclusive(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` only if ``target`` does not exist, atomically.

    A hard link fails with EEXIST instead of replacing, which ``os.replace`` cannot do. On
    file systems without hard links, fall back to an exclusive rename check (a small race
    with another writer, but never a partial file).
    """
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST,):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _sync_directory(directory: Path) -> None:
    """Make the new directory entry durable (POSIX); best effort elsewhere."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["KEY_SIZE", "KeyPair", "encode_key", "parse_private_key", "parse_public_key"]
