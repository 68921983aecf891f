"""Many concurrent connections to one listener, and the server's memory per idle connection.

Two processes: the server (one listener) and a client that opens N connections. Steps:
1. the server reports its RSS (VmRSS from /proc/self/status) once listening;
2. the client opens N connections (at most --parallel handshakes in flight) and leaves them
   idle; the server, once it has accepted all of them, reports its RSS again:
   (after - before) / N is the memory per idle connection;
3. every connection sends 64 KiB and reads the echo back, all at the same time; the client
   reports the time for that and for opening the connections.
asyncio TCP runs the same steps as a reference unless --only says otherwise.

Usage: python bench/many.py [--connections 1000] [--bytes 65536] [--only roamlink,tcp]
       [--parallel 100] [--uvloop] [--quick] [--timeout s]
Prints one JSON line per transport and a final summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
from typing import Any

from _common import (
    Child,
    add_common_args,
    child_setup,
    emit,
    machine_info,
    now,
    rnd,
    rss_kib,
    run_loop,
    say_port,
    say_result,
    stdin_lines,
    stream_connect,
    stream_server,
)

SCRIPT = os.path.abspath(__file__)


# ------------------------------------------------------------------ server child
async def server(kind: str) -> None:
    accepted = 0
    echoed = 0
    changed = asyncio.Event()

    async def echo(stream: Any) -> None:
        nonlocal accepted, echoed
        accepted += 1
        changed.set()
        try:
            while chunk := await stream.read(1 << 16):
                stream.write(chunk)
                await stream.drain()
                echoed += len(chunk)
            stream.write_eof()
            await stream.drain()
        except Exception:  # a reset peer just ends this connection
            pass
        finally:
            stream.close()

    port, close = await stream_server(kind, echo)
    gc.collect()
    await asyncio.sleep(0.1)
    rss_before = rss_kib()
    say_port(port)
    commands = await stdin_lines()
    result: dict[str, Any] = {"rss_before_kib": rss_before}
    while line := (await commands.readline()).decode().strip():
        if line.startswith("MEASURE"):
            want = int(line.split()[1])
            while accepted < want:
                changed.clear()
                await changed.wait()
            gc.collect()
            await asyncio.sleep(0.2)
            result.update(rss_idle_kib=rss_kib(), accepted=accepted)
            print("MEASURED " + json.dumps(result), flush=True)
        elif line == "QUIT":
            break
    result.update(rss_after_echo_kib=rss_kib(), echoed_bytes=echoed, accepted=accepted)
    await close()
    say_result(result)


# ------------------------------------------------------------------ client child
async def client(kind: str, port: int, n: int, nbytes: int, parallel: int) -> None:
    gate = asyncio.Semaphore(parallel)

    async def open_one() -> Any:
        async with gate:
            return await stream_connect(kind, port)

    t0 = now()
    opened = await asyncio.gather(*(open_one() for _ in range(n)), return_exceptions=True)
    t_open = now() - t0
    streams = [s for s in opened if not isinstance(s, BaseException)]
    errors = [repr(e) for e in opened if isinstance(e, BaseException)]
    print("OPEN " + json.dumps({"opened": len(streams), "connect_errors": len(errors),
                                "first_error": errors[0] if errors else None,
                                "open_seconds": t_open}), flush=True)
    commands = await stdin_lines()
    if (await commands.readline()).decode().strip() != "GO":
        raise SystemExit("no GO from the orchestrator")
    data = os.urandom(nbytes)

    async def exchange(stream: Any) -> bool | str:
        t = now()
        stream.write(data)
        await stream.drain()
        stream.write_eof()
        got = bytearray()
        while chunk := await stream.read(1 << 16):
            got += chunk
        if bytes(got) == data:
            return True
        why = "mismatch" if len(got) == len(data) else f"short: {len(got)} of {len(data)} bytes"
        err = getattr(stream, "error", None)
        return f"{why} after {now() - t:.3f} s (error={err!r})"

    t1 = now()
    results = await asyncio.gather(*(exchange(s) for s in streams), return_exceptions=True)
    t_echo = now() - t1
    good = sum(1 for r in results if r is True)
    failures = [r if isinstance(r, str) else repr(r) for r in results if r is not True]
    for s in streams:
        s.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in streams),
                                              return_exceptions=True), 10)
    say_result({"echo_ok": good, "echo_failures": len(failures),
                "first_failure": failures[0] if failures else None,
                "echo_seconds": t_echo, "open_seconds": t_open})


# ------------------------------------------------------------------ orchestrator
async def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    common = ["--transport", kind, "--timeout", str(args.timeout)]
    if args.uvloop:
        common.append("--uvloop")
    srv = await Child.start(SCRIPT, ["--role", "server", *common], "server")
    cli: Child | None = None
    try:
        port = await srv.port()
        cli = await Child.start(SCRIPT, ["--role", "client", *common, "--port", str(port),
                                         "--connections", str(args.connections),
                                         "--bytes", str(args.bytes),
                                         "--parallel", str(args.parallel)], "client")
        opened = json.loads(await cli.expect("OPEN ", args.timeout))
        srv.send(f"MEASURE {opened['opened']}")
        measured = json.loads(await srv.expect("MEASURED ", args.timeout))
        cli.send("GO")
        echo = await cli.result(args.timeout)
        srv.send("QUIT")
        final = await srv.result(30)
    finally:
        if cli is not None:
            await cli.stop(grace=2)
        await srv.stop(grace=2)
    n = opened["opened"]
    delta = measured["rss_idle_kib"] - measured["rss_before_kib"]
    return {"connections": args.connections, "opened": n,
            "connect_errors": opened["connect_errors"], "first_error": opened["first_error"],
            "echo_bytes_each": args.bytes, "echo_ok": echo["echo_ok"],
            "echo_failures": echo["echo_failures"], "first_failure": echo["first_failure"],
            "open_seconds": rnd(echo["open_seconds"], 3),
            "echo_seconds": rnd(echo["echo_seconds"], 3),
            "total_seconds": rnd(echo["open_seconds"] + echo["echo_seconds"], 3),
            "server_rss_before_kib": measured["rss_before_kib"],
            "server_rss_idle_kib": measured["rss_idle_kib"],
            "server_rss_after_echo_kib": final["rss_after_echo_kib"],
            "kib_per_idle_connection": rnd(delta / n, 2) if n else None,
            "server_echoed_bytes": final["echoed_bytes"],
            "ok": n == args.connections and echo["echo_ok"] == args.connections}


async def orchestrate(args: argparse.Namespace) -> None:
    loop_name = "uvloop" if args.uvloop else "asyncio"
    summary: dict[str, Any] = {"bench": "many", "summary": "many", "loop": loop_name,
                               "connections": args.connections, "total_seconds": {},
                               "kib_per_idle_connection": {}}
    for kind in [k.strip() for k in args.only.split(",") if k.strip()]:
        line: dict[str, Any] = {"bench": "many", "transport": kind, "loop": loop_name}
        try:
            line.update(await asyncio.wait_for(run_one(kind, args), args.timeout + 30))
        except Exception as exc:  # report and go on with the next transport
            line["error"] = f"{type(exc).__name__}: {exc}"
        emit(line)
        summary["total_seconds"][kind] = line.get("total_seconds")
        summary["kib_per_idle_connection"][kind] = line.get("kib_per_idle_connection")
    summary.update(machine_info())
    emit(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--connections", type=int, default=None, help="connections (1000)")
    parser.add_argument("--bytes", type=int, default=64 * 1024, help="echo bytes each")
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--only", default="roamlink,tcp")
    add_common_args(parser, timeout=180)
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = 50 if args.quick else 1000
    if args.role:
        child_setup(args.timeout)
        if args.role == "server":
            run_loop(server(args.transport), args.uvloop)
        else:
            run_loop(client(args.transport, args.port, args.connections, args.bytes,
                            args.parallel), args.uvloop)
        return 0
    asyncio.run(orchestrate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
