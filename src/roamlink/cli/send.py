"""``roamlink send FILE HOST:PORT``: a file transfer with progress and an end-to-end check."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

from ..api import Stream
from ..config import Config
from ..errors import ConnectionClosed
from .common import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFY,
    CliError,
    close_quietly,
    drain_unless,
    file_error,
    show,
)
from .output import Output, format_bytes, format_rate
from .transfer import MAX_REPLY, ProtocolError, Reply, encode_header, unsafe_name_reason, verify
from .trust import add_client_key_options, open_trusted_stream

CHUNK = 256 * 1024


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    from .common import remote_address

    p = sub.add_parser(
        "send", parents=parents, help="send a file to `roamlink serve --save DIR`",
        description="Send FILE to a `roamlink serve --save DIR` server, with a live progress "
                    "bar; the server replies with the size and SHA-256 of what it stored, and "
                    "both are checked against the file.")
    p.add_argument("file", metavar="FILE", help="the file to send")
    p.add_argument("target", metavar="HOST:PORT", type=remote_address, help="the server")
    p.add_argument("--name", help="store the file under this name (default: FILE's name)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between progress lines when not on a terminal (default 1)")
    add_client_key_options(p)
    p.set_defaults(func=run)


async def read_reply(stream: Stream) -> Reply:
    """The server's one-line answer, read up to the end of the stream (bounded)."""
    data = b""
    while chunk := await stream.read(MAX_REPLY):
        data += chunk
        if len(data) > MAX_REPLY:
            raise ProtocolError("unexpected reply: too long "
                                "(is it a `roamlink serve --save` server?)")
    if not data:
        raise ProtocolError("the server closed without answering "
                            "(is it a `roamlink serve --save` server?)")
    return Reply.decode(data)


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    path = Path(args.file)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise file_error(path, exc) from exc
    try:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path}: not a regular file")
        size = info.st_size
        name = args.name if args.name is not None else path.name
        reason = unsafe_name_reason(name)
        # an unsafe explicit --name goes to the server as is: the server has the last word
        if reason is not None and args.name is None:
            raise CliError(f"cannot send {path} as {name!r}: {reason} (pick another "
                           "name with --name)", EXIT_USAGE)
        stream = await open_trusted_stream(args.target, config, out, args)
        try:
            return await _transfer(stream, fh, name, size, args, out)
        finally:
            await close_quietly(stream)
    finally:
        fh.close()


async def _transfer(stream: Stream, fh: BinaryIO, name: str, size: int,
                    args: argparse.Namespace, out: Output) -> int:
    out.report("connected", f"connected to {show(stream.remote_addr)}, sending {name} "
               f"({format_bytes(size)})", remote=show(stream.remote_addr), name=name, size=size,
               connection_id=stream.connection_id)
    header = encode_header(name, size)
    reply_task = asyncio.create_task(read_reply(stream))
    digest = hashlib.sha256()
    start = time.monotonic()
    written = len(header)
    progress = out.progress(name, size, interval=args.interval)

    def acked() -> int:
        return max(0, min(size, written - stream.stats().send_buffered - len(header)))

    async def tick() -> None:
        while True:
            progress.update(acked())
            await asyncio.sleep(0.1)

    ticker = asyncio.create_task(tick())
    try:
        stream.write(header)
        sent = 0
        try:
            while sent < size and not reply_task.done():
                chunk = fh.read(min(CHUNK, size - sent))
                if not chunk:
                    raise CliError(f"{args.file}: the file shrank while it was being sent")
                digest.update(chunk)
                stream.write(chunk)
                sent += len(chunk)
                written += len(chunk)
                await drain_unless(stream, reply_task)
            if not reply_task.done():
                stream.write_eof()
        except ConnectionClosed:
            if not reply_task.done():
                raise
        try:
            reply = await reply_task
        except ProtocolError as exc:
            raise CliError(f"{show(stream.remote_addr)}: {exc}", EXIT_CONNECTION) from None
        elapsed = time.monotonic() - start
        if reply.ok:
            progress.update(size)
    finally:
        ticker.cancel()
        if not reply_task.done():
            reply_task.cancel()
        progress.close()
    if not reply.ok:
        stream.abort(0, "transfer refused")  # nothing left worth delivering
        raise CliError(f"the server refused {name!r}: {reply.message}", EXIT_VERIFY)
    local_hash = digest.hexdigest()
    problem = verify(size, local_hash, reply) if sent == size else "transfer incomplete"
    if problem is not None:
        raise CliError(f"verification FAILED for {name}: {problem}", EXIT_VERIFY)
    rate = size / elapsed if elapsed > 0 else 0.0
    st = stream.stats()
    out.report(
        "verified",
        f"sent {name}: {format_bytes(size)} in {elapsed:.2f} s ({format_rate(rate)}); "
        f"stored as {reply.name!r}; size and SHA-256 match ({local_hash})",
        style="green", name=name, stored_as=reply.name, size=size, sha256=local_hash,
        seconds=round(elapsed, 3), rate_bytes_per_s=round(rate, 1),
        retransmissions=st.retransmissions, smoothed_rtt_ms=round(st.smoothed_rtt * 1e3, 3))
    return EXIT_OK
