"""Entry point of the ``roamlink`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roamlink",
                                     description="roamlink: a UDP transport that survives "
                                                 "address changes")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a server and a client on loopback and show a transfer")
    demo.add_argument("--size-mib", type=int, default=8, help="bytes to transfer, in MiB")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ..demo import run_demo

        ok = asyncio.run(run_demo(args.size_mib * 1024 * 1024))
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
