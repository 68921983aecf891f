"""``roamlink demo``: the README's first command (see cli/demo.py)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Config
from .common import EXIT_OK, EXIT_USAGE, EXIT_VERIFY, CliError
from .output import Output


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", parents=parents, help="a server and a client on loopback; the client "
                                      "changes port half-way",
        description="Start a server and a client on loopback, stream random data, move the "
                    "client to a new local port half-way (connection migration) and print a "
                    "timeline and the final SHA-256 check. Needs no arguments.")
    p.add_argument("--size-mib", type=int, default=8, help="MiB to transfer (default 8)")
    p.add_argument("--no-migrate", action="store_true",
                   help="stay on one path (compare with the default)")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    from .demo import run_demo

    if args.size_mib < 1:
        raise CliError("--size-mib must be >= 1", EXIT_USAGE)

    def emit(event: str, text: str, **fields: Any) -> None:
        style = None
        if event == "result":
            style = "bold green" if fields.get("ok") else "bold red"
        elif event in ("path_challenge", "path_validated", "server_path_changed"):
            style = "cyan"
        elif event in ("migration_failed", "migration_unavailable"):
            style = "yellow"
        out.report(event, text, style=style, **fields)

    ok = await run_demo(args.size_mib * 1024 * 1024, config=config, emit=emit,
                        migrate=not args.no_migrate)
    return EXIT_OK if ok else EXIT_VERIFY
