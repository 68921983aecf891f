"""``roamlink relay LISTEN TARGET``: a user-space UDP impairment relay with live counters.

It forwards any UDP traffic (roamlink or not), so it can sit between any client and server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..tools import relay
from .common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, listen_address, remote_address, show
from .output import HAVE_RICH, Output, format_bytes


def _parsed(parse: Callable[[str], float], what: str) -> Callable[[str], float]:
    """An argparse type that defers to the relay library's parser for human units."""
    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "relay", parents=parents, help="UDP impairment relay (delay, loss, NAT rebinding, ...)",
        description="Forward UDP datagrams from clients at LISTEN to TARGET and back, adding "
                    "delay, jitter, loss, reordering, duplication and a rate limit (each "
                    "direction gets the same settings, drawn independently). Like a NAT, each "
                    "client gets its own source port towards TARGET; --rebind-every gives all "
                    "clients new ports periodically. Works for any UDP protocol.",
        epilog="Example: roamlink relay 127.0.0.1:5000 127.0.0.1:4433 --delay 20ms "
               "--jitter 5ms --loss 1% --rate 50mbit --rebind-every 5s")
    p.add_argument("listen", metavar="LISTEN", type=listen_address,
                   help="[HOST:]PORT where clients send to")
    p.add_argument("target", metavar="TARGET", type=remote_address,
                   help="HOST:PORT of the server")
    p.add_argument("--delay", type=_parsed(relay.parse_duration, "duration"), default=0.0,
                   help="one-way delay, e.g. 20ms")
    p.add_argument("--jitter", type=_parsed(relay.parse_duration, "duration"), default=0.0,
                   help="delay varies uniformly by +- this, e.g. 5ms (see --jitter-mode)")
    p.add_argument("--jitter-mode", choices=relay.JITTER_MODES, default="reorder",
                   help="reorder (default): each datagram's jitter is independent, so "
                        "datagrams overtake one another, as netem; fifo: each direction "
                        "stays in order, as a cellular or Wi-Fi link (a queue of varying "
                        "depth)")
    p.add_argument("--loss", type=_parsed(relay.parse_percent, "percentage"), default=0.0,
                   help="drop probability, e.g. 1%%")
    p.add_argument("--reorder", type=_parsed(relay.parse_percent, "percentage"), default=0.0,
                   help="probability that a datagram is held back so later ones overtake it")
    p.add_argument("--duplicate", type=_parsed(relay.parse_percent, "percentage"), default=0.0,
                   help="probability that a datagram is sent twice, e.g. 0.1%%")
    p.add_argument("--rate", type=_parsed(relay.parse_rate, "rate"), default=None,
                   help="bottleneck rate, e.g. 50mbit (decimal units, bits per second)")
    p.add_argument("--rebind-every", type=_parsed(relay.parse_duration, "duration"), default=None,
                   metavar="DURATION", help="give every client a new source port this often")
    p.add_argument("--seed", type=int, default=None, help="seed the random choices")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between counter reports (default 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    try:
        impairment = relay.Impairment(
            delay=args.delay, jitter=args.jitter, loss=args.loss, reorder=args.reorder,
            duplicate=args.duplicate, rate=args.rate, seed=args.seed,
            jitter_mode=args.jitter_mode)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    listen = _numeric(args.listen)
    target = _numeric(args.target)
    try:
        running = await relay.start_relay(listen, target, impairment,
                                          rebind_every=args.rebind_every)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"cannot listen on udp {show(args.listen)}: address already in "
                           "use (another relay or server is running there?)") from exc
        raise CliError(f"cannot start the relay on {show(args.listen)}: "
                       f"{exc.strerror or exc}", EXIT_ERROR) from exc
    try:
        addr = running.local_addr
        out.report("listening", f"relaying udp {show(addr)} -> {show(target)} "
                   f"({_describe(args)})", host=str(addr[0]), port=addr[1],
                   target=show(target), impairment=_describe(args))
        await _report_loop(running, args, out)
    finally:
        running.close()
    return EXIT_OK


def _numeric(addr: tuple[str, int]) -> tuple[str, int]:
    """The relay takes numeric addresses; let people write ``localhost``."""
    host, port = addr
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise CliError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    return str(infos[0][4][0]), port


def _describe(args: argparse.Namespace) -> str:
    parts = []
    if args.delay:
        parts.append(f"delay {args.delay * 1e3:g} ms")
    if args.jitter:
        parts.append(f"jitter {args.jitter * 1e3:g} ms ({args.jitter_mode})")
    for name in ("loss", "reorder", "duplicate"):
        if getattr(args, name):
            parts.append(f"{name} {getattr(args, name) * 100:g}%")
    if args.rate:
        parts.append(f"rate {args.rate / 1e6:g} Mbit/s")
    if args.rebind_every:
        parts.append(f"rebind every {args.rebind_every:g} s")
    return ", ".join(parts) or "no impairment"


def _line(c: dict[str, Any]) -> str:
    return (f"c->s {c['up_forwarded']} pkts ({format_bytes(c['up_forwarded_bytes'])})  "
            f"s->c {c['down_forwarded']} pkts ({format_bytes(c['down_forwarded_bytes'])})  "
            f"lost {c['dropped_loss']}  queue-drop {c['dropped_queue']}  "
            f"dup {c['duplicated']}  reord {c['reordered']}  clients {c['mappings']}  "
            f"rebinds {c['rebinds']}")


async def _report_loop(running: relay.Relay, args: argparse.Namespace, out: Output) -> None:
    start = time.monotonic()
    end = None if args.duration is None else start + args.duration
    interval = max(args.interval, 0.05)
    live = _live_table(out) if out.interactive else None
    try:
        while True:
            wait = interval if end is None else min(interval, max(0.0, end - time.monotonic()))
            await asyncio.sleep(wait)
            counters = dataclasses.asdict(running.counters())
            elapsed = time.monotonic() - start
            if live is not None:
                live.update(_table(counters, elapsed))
            else:
                out.report("counters", f"{elapsed:7.1f} s  {_line(counters)}",
                           seconds=round(elapsed, 3), **counters)
            if end is not None and time.monotonic() >= end:
                break
    finally:  # also on Ctrl-C: the totals are what people stop the relay to see
        if live is not None:
            with contextlib.suppress(Exception):
                live.stop()
        counters = dataclasses.asdict(running.counters())
        out.report("summary", f"relay stopped after {time.monotonic() - start:.1f} s: "
                   f"{_line(counters)}", seconds=round(time.monotonic() - start, 3), **counters)


def _live_table(out: Output) -> Any:
    if not HAVE_RICH or out.console is None:  # pragma: no cover
        return None
    import rich.live

    live = rich.live.Live(console=out.console, refresh_per_second=4, transient=True)
    live.start()
    return live


def _table(c: dict[str, Any], elapsed: float) -> Any:
    import rich.table

    table = rich.table.Table(title=f"relay after {elapsed:.0f} s: clients {c['mappings']}, "
                                   f"rebinds {c['rebinds']}, lost {c['dropped_loss']}, "
                                   f"queue drops {c['dropped_queue']}, duplicated "
                                   f"{c['duplicated']}, reordered {c['reordered']}")
    table.add_column("direction")
    for column in ("received", "forwarded", "bytes forwarded"):
        table.add_column(column, justify="right")
    for label, prefix in (("client -> server", "up"), ("server -> client", "down")):
        table.add_row(label, str(c[f"{prefix}_received"]), str(c[f"{prefix}_forwarded"]),
                      format_bytes(c[f"{prefix}_forwarded_bytes"]))
    return table
