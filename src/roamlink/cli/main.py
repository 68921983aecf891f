"""Entry point of the ``roamlink`` command: argument parsing, common flags, error handling."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback

from .. import __version__, compiled
from .common import EXIT_ERROR, EXIT_INTERRUPTED, CliError, describe_error, load_config
from .output import Output

LOG_LEVELS = ("debug", "info", "warning", "error")


def _common_flags(suppress: bool) -> argparse.ArgumentParser:
    """The flags every command takes, accepted before or after the sub-command name.

    The copy attached to sub-commands uses SUPPRESS defaults so that a flag given before the
    sub-command is not reset by the sub-command's own default.
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--json", action="store_true", default=default(False),
                   help="machine-readable output: one JSON object per line per report")
    g.add_argument("--plain", action="store_true", default=default(False),
                   help="plain lines even on a terminal (no progress bar, no colour)")
    g.add_argument("--log-level", choices=LOG_LEVELS, default=default("warning"),
                   help="library log level, logged to stderr (default: warning)")
    g.add_argument("--config", metavar="FILE", default=default(None),
                   help="TOML file of roamlink.Config settings (e.g. idle_timeout = 60)")
    g.add_argument("--debug", action="store_true", default=default(False),
                   help="show the traceback of errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import connect_cmd, demo_cmd, forward_cmd, keygen, perf, relay_cmd, send, serve

    parser = argparse.ArgumentParser(
        prog="roamlink", parents=[_common_flags(False)],
        description="roamlink: a reliable transport over UDP whose connections survive "
                    "address changes. Start with `roamlink demo`.",
        epilog="Exit status: 0 ok, 1 local error (port in use, file not found, permission "
               "denied), 2 usage or configuration error, 3 connection error (timeout, "
               "version mismatch, reset), 4 transfer refused or not verified, 130 interrupted.")
    variant = "compiled core (mypyc)" if compiled else "pure Python"
    parser.add_argument("--version", action="version",
                        version=f"roamlink {__version__} ({variant})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [_common_flags(True)]
    demo_cmd.add_parser(sub, parents)
    serve.add_parser(sub, parents)
    connect_cmd.add_parser(sub, parents)
    forward_cmd.add_parser(sub, parents)
    send.add_parser(sub, parents)
    perf.add_parser(sub, parents)
    relay_cmd.add_parser(sub, parents)
    keygen.add_parser(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_on_stdout = getattr(args, "data_on_stdout", False) or (
        args.command == "serve" and not (args.echo or args.sink or args.save or args.forward))
    out = Output(json_mode=args.json, plain=args.plain, data_on_stdout=data_on_stdout,
                 quiet=getattr(args, "quiet", False))
    try:
        config = load_config(args.config)
        code: int
        if getattr(args, "workers", None) is not None:  # a supervisor of worker processes
            code = args.run_workers(args, config, out)
        else:
            code = asyncio.run(args.func(args, config, out))
        return code
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`| head`): not worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            traceback.print_exception(exc)
        message, code = describe_error(exc)
        out.error(message)
        return code


__all__ = ["CliError", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
