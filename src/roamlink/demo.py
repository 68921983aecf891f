"""The demo: a server and a client on loopback move data and check it, with a timeline."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable

from .api import connect, listen
from .config import Config


async def run_demo(size: int = 8 * 1024 * 1024, *, out: Callable[[str], None] = print,
                   config: Config | None = None) -> bool:
    """Transfer ``size`` random bytes client -> server over loopback; True if hash-exact."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        out(f"[{time.perf_counter() - t0:7.3f}s] {msg}")

    payload = os.urandom(size)
    expected = hashlib.sha256(payload).hexdigest()
    async with await listen("127.0.0.1", 0, config=config) as listener:
        say(f"server listening on udp {listener.local_addr[0]}:{listener.local_addr[1]}")

        async def serve() -> str:
            stream = await listener.accept()
            say(f"server accepted connection {stream.connection_id} from {stream.remote_addr}")
            digest = hashlib.sha256()
            while chunk := await stream.read(1 << 20):
                digest.update(chunk)
            stream.write(digest.hexdigest().encode())
            stream.write_eof()
            await stream.wait_closed()
            return digest.hexdigest()

        server = asyncio.create_task(serve())
        stream = await connect("127.0.0.1", listener.local_addr[1], config=config)
        say(f"client connected from {stream.local_addr} (handshake done, "
            f"CID {stream.connection_id})")
        start = time.perf_counter()
        view = memoryview(payload)
        for offset in range(0, size, 1 << 20):
            stream.write(view[offset:offset + (1 << 20)])
            await stream.drain()
        stream.write_eof()
        reply = (await stream.read()).decode()
        elapsed = time.perf_counter() - start
        await stream.wait_closed()
        received_hash = await server
        st = stream.stats()
        ok = reply == expected == received_hash
        say(f"sent {size / 1e6:.1f} MB in {elapsed:.2f} s = {size / elapsed / 1e6:.1f} MB/s")
        say(f"stats: {st.packets_sent} packets sent, {st.retransmissions} retransmitted, "
            f"srtt {st.smoothed_rtt * 1e3:.2f} ms, cwnd {st.cwnd} B, "
            f"path changes {st.path_changes}")
        say(f"sha256 sent     {expected}")
        say(f"sha256 received {received_hash}")
        say("hash check: OK" if ok else "hash check: MISMATCH")
        return ok
