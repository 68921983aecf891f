"""The demo: a server and a client on loopback move data; half-way the client moves to a new
local port (``Stream.migrate``), and a timeline shows the handshake (encrypted, the server's
key pinned), the path validation and the bytes carried before and after, then the end-to-end
hash check."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from .. import __version__, compiled
from ..api import Stream, connect, listen
from ..config import Config
from ..core.events import Address, PathChanged
from ..keys import KeyPair, encode_key

#: emit(event, text, **fields): ``text`` is the timeline line, ``fields`` the same as data.
Emit = Callable[..., None]

_CHUNK = 256 * 1024
# Keep little data queued so "half-way" is half-way on the wire too, not only in our buffer.
_MAX_QUEUED = 1024 * 1024


def _addr(addr: Address) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _short_key(key: str | bytes | None) -> str:
    """The first characters of a public key, enough to recognise it in a timeline."""
    if not key:
        return ""
    text = key if isinstance(key, str) else encode_key(bytes(key))
    return text[:12] + "..."


def _mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


async def run_demo(size: int = 8 * 1024 * 1024, *, out: Callable[[str], None] = print,
                   config: Config | None = None, emit: Emit | None = None,
                   migrate: bool = True) -> bool:
    """Transfer ``size`` random bytes client -> server over loopback, migrating half-way.

    True if the server's SHA-256 matches and, when migration was attempted, the path change
    was validated.
    """
    t0 = time.perf_counter()

    def say(event: str, text: str, **fields: Any) -> None:
        t = time.perf_counter() - t0
        line = f"[{t:7.3f}s] {text}"
        if emit is not None:
            emit(event, line, t=round(t, 4), **fields)
        else:
            out(line)

    payload = os.urandom(size)
    expected = hashlib.sha256(payload).hexdigest()
    can_migrate = migrate and hasattr(Stream, "migrate")
    server_moves: list[tuple[PathChanged, int]] = []

    say("build", f"roamlink {__version__}: "
        + ("compiled core (mypyc)" if compiled else "pure Python"),
        compiled=compiled)
    plaintext = config is not None and config.insecure_plaintext
    server_key = None if plaintext else KeyPair.generate()
    async with await listen("127.0.0.1", 0, key=server_key, config=config) as listener:
        say("listening", f"server: listening on udp {_addr(listener.local_addr)}"
            + ("" if server_key is None else f"; server key {server_key.public}"),
            address=_addr(listener.local_addr),
            public_key=None if server_key is None else server_key.public)

        async def serve() -> str:
            stream = await listener.accept()
            client_key = _short_key(stream.peer_key)
            say("accepted", f"server: accepted connection {stream.connection_id} from "
                f"{_addr(stream.remote_addr)}"
                + (f" (client key {client_key})" if client_key else ""),
                connection_id=stream.connection_id, remote=_addr(stream.remote_addr))
            events = stream.events()
            digest = hashlib.sha256()
            received = 0

            def drain_events() -> None:
                while not events.empty():
                    event = events.get_nowait()
                    if isinstance(event, PathChanged):
                        server_moves.append((event, received))
                        say("server_path_changed",
                            f"server: client moved {_addr(event.old_addr)} -> "
                            f"{_addr(event.new_addr)} ({event.reason}); path validated in "
                            f"{event.validation_time * 1e3:.1f} ms, after "
                            f"{_mib(received)} received", old=_addr(event.old_addr),
                            new=_addr(event.new_addr), reason=event.reason,
                            validation_ms=round(event.validation_time * 1e3, 3),
                            bytes_before=received)

            while chunk := await stream.read(1 << 20):
                drain_events()
                digest.update(chunk)
                received += len(chunk)
            drain_events()
            stream.write(digest.hexdigest().encode())
            stream.write_eof()
            await stream.wait_closed()
            return digest.hexdigest()

        server = asyncio.create_task(serve())
        try:
            return await _client(size, payload, expected, listener.local_addr[1], config, say,
                                 can_migrate, migrate, server, server_moves, server_key)
        finally:
            server.cancel()


async def _client(size: int, payload: bytes, expected: str, port: int, config: Config | None,
                  say: Callable[..., None], can_migrate: bool, migrate: bool,
                  server: asyncio.Task[str], server_moves: list[tuple[PathChanged, int]],
                  server_key: KeyPair | None) -> bool:
    t_connect = time.perf_counter()
    stream = await connect("127.0.0.1", port, config=config, local_addr=("127.0.0.1", 0),
                           server_key=None if server_key is None else server_key.public)
    took = (time.perf_counter() - t_connect) * 1e3
    if server_key is None:
        security = "INSECURE PLAINTEXT (insecure_plaintext=True): not encrypted"
    else:
        security = (f"Noise IK (X25519, ChaCha20-Poly1305, BLAKE2s), server key "
                    f"{_short_key(server_key.public)} pinned and proven")
    say("handshake", f"client: handshake complete in {took:.1f} ms, {security}; from "
        f"{_addr(stream.local_addr)} (connection {stream.connection_id})",
        local=_addr(stream.local_addr), connection_id=stream.connection_id,
        encrypted=server_key is not None, handshake="plaintext" if server_key is None
        else "Noise_IK_25519_ChaChaPoly_BLAKE2s")
    client_events = stream.events()
    say("sending", f"client: sending {_mib(size)} of random data; moving to a new "
        f"local port half-way", size=size)
    start = time.perf_counter()
    view = memoryview(payload)
    written = 0
    acked_before: int | None = None
    migrated_ok = not can_migrate
    for offset in range(0, size, _CHUNK):
        acked = written - stream.stats().send_buffered
        if acked_before is None and acked >= size // 2:
            acked_before = acked
            migrated_ok = await _migrate(stream, client_events, say, can_migrate,
                                         acked_before, migrate)
        stream.write(view[offset:offset + _CHUNK])
        written += len(view[offset:offset + _CHUNK])
        while stream.stats().send_buffered > _MAX_QUEUED:
            await asyncio.sleep(0.002)
        await stream.drain()
    if acked_before is None:  # small transfers: everything was queued before half arrived
        while (acked := written - stream.stats().send_buffered) < size // 2:
            if stream.is_closing():
                break
            await asyncio.sleep(0.002)
        acked_before = acked
        migrated_ok = await _migrate(stream, client_events, say, can_migrate, acked_before,
                                     migrate)
    stream.write_eof()
    reply = (await stream.read()).decode()
    elapsed = time.perf_counter() - start
    await stream.wait_closed()
    received_hash = await server
    st = stream.stats()
    before = acked_before or 0
    if can_migrate:
        moved_at = server_moves[0][1] if server_moves else None
        say("bytes", f"bytes: {_mib(before)} acknowledged before the move, "
            f"{_mib(size - before)} after"
            + (f"; the server saw the new path after {_mib(moved_at)}"
               if moved_at is not None else ""),
            bytes_before=before, bytes_after=size - before, server_bytes_before=moved_at)
    say("done", f"client: sent {_mib(size)} in {elapsed:.2f} s = "
        f"{size / elapsed / 1e6:.1f} MB/s; {st.packets_sent} packets, "
        f"{st.retransmissions} retransmitted, srtt {st.smoothed_rtt * 1e3:.2f} ms, "
        f"path changes {st.path_changes}", seconds=round(elapsed, 3),
        packets_sent=st.packets_sent, retransmissions=st.retransmissions,
        smoothed_rtt_ms=round(st.smoothed_rtt * 1e3, 3), path_changes=st.path_changes)
    if server_key is not None:
        say("sealed", f"crypto: every packet after the handshake sealed with "
            f"ChaCha20-Poly1305 (header authenticated, frames encrypted, PATH_CHALLENGE "
            f"included); {st.auth_failures} failed authentication",
            auth_failures=st.auth_failures)
    hash_ok = reply == expected == received_hash
    say("hash", f"sha256 sent     {expected}", sha256=expected)
    say("hash", f"sha256 received {received_hash}", sha256=received_hash)
    ok = hash_ok and migrated_ok
    verdict = "hash check: OK" if hash_ok else "hash check: MISMATCH"
    if can_migrate:
        verdict += (", connection survived the move to a new port" if migrated_ok
                    else ", but the migration FAILED")
    say("result", verdict, ok=ok, hash_ok=hash_ok, migrated=can_migrate and migrated_ok)
    return ok


async def _migrate(stream: Stream, events: asyncio.Queue[Any], say: Callable[..., None],
                   can_migrate: bool, acked: int, requested: bool) -> bool:
    """Move the client to a new local port and narrate it; True if the new path validated."""
    if not can_migrate:
        if requested:
            say("migration_unavailable", "client: migration is not available in this build "
                "(Stream.migrate is missing); staying on the same path")
        return True
    old = stream.local_addr
    say("path_challenge", f"client: {_mib(acked)} delivered; moving from {_addr(old)} to a "
        "new local port, PATH_CHALLENGE sent on the new path", old=_addr(old),
        bytes_before=acked)
    t = time.perf_counter()
    try:
        local, _ = await stream.migrate(local_addr=("127.0.0.1", 0))
    except Exception as exc:  # the narration must say what happened, whatever it was
        say("migration_failed", f"client: migration failed: {exc}", error=str(exc))
        return False
    took = (time.perf_counter() - t) * 1e3
    while not events.empty():  # the client's own PathChanged carries the validation time
        event = events.get_nowait()
        if isinstance(event, PathChanged):
            took = event.validation_time * 1e3
    say("path_validated", f"client: PATH_RESPONSE received, path validated in {took:.1f} ms; "
        f"now sending from {_addr(local)} (was {_addr(old)}), old socket closed",
        old=_addr(old), new=_addr(local), validation_ms=round(took, 3))
    return True
