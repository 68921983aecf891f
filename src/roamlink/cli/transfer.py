"""The tiny protocol of ``roamlink send`` / ``roamlink serve --save`` (see docs/cli.md).

Client to server, on one roamlink connection::

    magic   4 bytes   b"RLF1"
    length  u16 BE    length of the name in bytes (1..255)
    name    UTF-8     the file's name, no directories
    size    u64 BE    number of content bytes that follow
    content size bytes
    (end of stream)

Server to client, one line of UTF-8 text, then end of stream::

    OK <size> <sha256 hex> <stored name>\\n     the file was stored (hash of what arrived)
    ERR <message>\\n                           the file was refused or not stored

The server may answer ``ERR`` before the content has arrived (bad name, file exists): the
client stops sending then.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass

from ..api import Stream

MAGIC = b"RLF1"
_HEAD = struct.Struct("!4sH")
_SIZE = struct.Struct("!Q")
MAX_NAME = 255
MAX_REPLY = 4096


class ProtocolError(Exception):
    """The peer does not speak this protocol (or broke it)."""


def encode_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME:
        raise ValueError(f"file name must be 1..{MAX_NAME} bytes of UTF-8")
    return _HEAD.pack(MAGIC, len(raw)) + raw + _SIZE.pack(size)


async def read_header(stream: Stream) -> tuple[str, int]:
    """Read the client's header; :class:`ProtocolError` if it is not one."""
    head = await stream.readexactly(_HEAD.size)
    magic, length = _HEAD.unpack(head)
    if magic != MAGIC:
        raise ProtocolError("not a roamlink file transfer (bad magic)")
    if not 1 <= length <= MAX_NAME:
        raise ProtocolError(f"bad name length {length}")
    raw = await stream.readexactly(length)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("file name is not valid UTF-8") from None
    (size,) = _SIZE.unpack(await stream.readexactly(_SIZE.size))
    return name, size


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` may not be used as a file name in the save directory (None: it may).

    Refusing rather than rewriting keeps the sender informed: only a plain name, no
    directories, no parent references, no hidden files, no control characters.
    """
    if not name or name in (".", ".."):
        return "empty or special name"
    if "/" in name or "\\" in name:
        return "name contains a path separator"
    if name.startswith("."):
        return "hidden file names (starting with '.') are not accepted"
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return "name contains control characters"
    if len(name.encode("utf-8")) > MAX_NAME:
        return "name too long"
    return None


@dataclass(frozen=True)
class Reply:
    ok: bool
    size: int = 0
    sha256: str = ""
    name: str = ""
    message: str = ""

    def encode(self) -> bytes:
        if self.ok:
            return f"OK {self.size} {self.sha256} {self.name}\n".encode()
        return f"ERR {self.message}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        try:
            text = data.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError:
            raise ProtocolError("the server's reply is not text") from None
        if text.startswith("ERR "):
            return cls(ok=False, message=text[4:])
        parts = text.split(" ", 3)
        if len(parts) == 4 and parts[0] == "OK" and parts[1].isdigit() and len(parts[2]) == 64:
            return cls(ok=True, size=int(parts[1]), sha256=parts[2], name=parts[3])
        raise ProtocolError("unexpected reply (is it a `roamlink serve --save` server?)")


def verify(local_size: int, local_hash: str, reply: Reply) -> str | None:
    """None if the server stored exactly what we sent, else what differs."""
    problems = []
    if reply.size != local_size:
        problems.append(f"size differs: sent {local_size} bytes, server stored {reply.size}")
    if reply.sha256 != local_hash:
        problems.append(f"SHA-256 differs: sent {local_hash}, server computed {reply.sha256}")
    return "; ".join(problems) or None
