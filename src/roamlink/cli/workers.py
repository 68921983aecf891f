"""``--workers N`` for ``serve`` and ``perf server``: the same handlers in N processes.

The command's per-connection handler runs in every worker (``roamlink.run_server``); each
worker's reports carry ``"worker": i`` in ``--json`` mode and a ``[worker i]`` prefix in text.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from ..api import Stream
from ..api.workers import ServerInfo, run_server, worker_index
from ..config import Config
from ..keys import KeyPair
from .common import EXIT_OK, EXIT_USAGE, CliError, listen_error, show
from .output import Output
from .trust import load_server_key

MAX_WORKERS = 256


def worker_count(text: str) -> int:
    """argparse type: a number of workers, or ``auto`` (one per CPU on Linux) as 0."""
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"workers must be 1-{MAX_WORKERS} or auto")
    return value


def add_workers_option(parser: argparse.ArgumentParser,
                       run_workers: Callable[[argparse.Namespace, Config, Output], int]) -> None:
    parser.add_argument(
        "--workers", type=worker_count, metavar="N",
        help="serve with N processes on the one port (auto: one per CPU); each connection "
             "stays on its worker, also when the client's address changes")
    parser.set_defaults(run_workers=run_workers)


def serve_with_workers(args: argparse.Namespace, config: Config, out: Output,
                       handler: Callable[[Stream], Awaitable[Any]], mode: str,
                       label: str) -> int:
    """Run ``handler`` for every connection in ``args.workers`` processes until Ctrl-C."""
    if getattr(args, "once", False):
        raise CliError("--once does not combine with --workers", EXIT_USAGE)
    if getattr(args, "authorized_keys", None) is not None:
        raise CliError("--authorized-keys does not combine with --workers yet", EXIT_USAGE)
    host, port = args.listen
    key: KeyPair | None = None
    key_text = "INSECURE PLAINTEXT mode: no encryption, no authentication"
    if not config.insecure_plaintext:
        key, source = load_server_key(getattr(args, "server_key_file", None))
        key_text = f"server key {key.public} ({source})"

    def ready(info: ServerInfo) -> None:
        steering = "kernel filter" if info.kernel_steering else "hand-over between workers"
        out.report("listening", f"{label} listening on udp {show(info.address)} "
                   f"({mode}; {info.workers} workers, steering by {steering}); {key_text}",
                   host=str(info.address[0]), port=info.address[1], mode=mode.split(" ")[0],
                   workers=info.workers, kernel_steering=info.kernel_steering,
                   public_key=None if key is None else key.public)

    async def handle(stream: Stream) -> None:
        index = worker_index()
        out.context["worker"] = index
        out.prefix = f"[worker {index}] "
        await handler(stream)

    try:
        run_server(handle, host, port, workers=args.workers or None, key=key, config=config,
                   on_ready=ready)
    except OSError as exc:
        raise listen_error(args.listen, exc) from exc
    return EXIT_OK
