"""``roamlink keygen [FILE]`` and ``roamlink pubkey [FILE]``: make and show static keys.

Decisions (documented in docs/security.md):

- ``keygen`` without FILE writes the server key ``serve`` uses by default
  (``~/.config/roamlink/server.key``), as ``ssh-keygen`` writes ``~/.ssh/id_*``: the common
  case needs no path. It never replaces an existing key unless ``--force`` is given.
- stdout gets exactly one line, the *public* key, so ``PUB=$(roamlink keygen k)`` works; the
  status line goes to stderr. A private key is printed only when asked for by writing to
  ``-`` (``roamlink keygen -``, like ``wg genkey``, for secret stores); then the public key
  goes to stderr.
- ``pubkey`` prints the public key of a key file (default: the server key), or of a private
  key read from stdin with ``-`` (like ``wg pubkey``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import Config
from ..errors import InvalidKey
from ..keys import KeyPair, encode_key, parse_private_key
from .common import EXIT_OK, EXIT_USAGE, CliError
from .known_hosts import default_server_key_path, ensure_config_dir
from .output import Output


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen", parents=parents, help="make a static key pair; print its public key",
        description="Make a new X25519 key pair, write the private key to FILE (mode 0600) and "
                    "print the public key, the text clients pin with --server-key. Without "
                    f"FILE the key goes to the server's default key ({default_server_key_path()}"
                    "), which `roamlink serve` uses. FILE '-' prints the private key to stdout "
                    "instead (the public key then goes to stderr).")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="where to write the private key (default: the server's default key)")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=run_keygen, data_on_stdout=True)

    q = sub.add_parser(
        "pubkey", parents=parents, help="print the public key of a key file",
        description="Print the public key of the private key in FILE (default: the server's "
                    "default key). FILE '-' reads a private key from stdin.")
    q.add_argument("file", metavar="FILE", nargs="?", help="a private-key file")
    q.set_defaults(func=run_pubkey, data_on_stdout=True)


async def run_keygen(args: argparse.Namespace, config: Config, out: Output) -> int:
    key = KeyPair.generate()
    if args.file == "-":
        sys.stdout.write(encode_key(key.private_bytes) + "\n")
        sys.stdout.flush()
        out.report("keygen", f"public key: {key.public}", path="-", public_key=key.public)
        return EXIT_OK
    if args.file is None:
        ensure_config_dir()
        path = str(default_server_key_path())
    else:
        path = args.file
    if not args.force and os.path.lexists(path):
        raise CliError(f"{path} already exists; keeping it (--force replaces it, and the old "
                       "key is then lost: clients that pinned it will refuse this server)")
    key.save(path, overwrite=args.force)
    _print_public(out, "keygen", key, path,
                  f"wrote a new private key to {path} (mode 0600); public key:")
    return EXIT_OK


async def run_pubkey(args: argparse.Namespace, config: Config, out: Output) -> int:
    if args.file == "-":
        try:
            key = KeyPair.from_private_bytes(parse_private_key(sys.stdin.read(4096)))
        except InvalidKey as exc:
            raise CliError(f"stdin: {exc}", EXIT_USAGE) from None
        path = "-"
    else:
        path = args.file if args.file is not None else str(default_server_key_path())
        key = KeyPair.load(path)
    _print_public(out, "pubkey", key, path, f"public key of {path}:")
    return EXIT_OK


def _print_public(out: Output, event: str, key: KeyPair, path: str, text: str) -> None:
    """The public key alone on stdout (scripts capture it), the story on stderr; or one JSON
    object on stdout with ``--json``."""
    if out.json_mode:
        sys.stdout.write(json.dumps({"event": event, "path": path,
                                     "public_key": key.public}) + "\n")
    else:
        out.report(event, text)
        sys.stdout.write(key.public + "\n")
    sys.stdout.flush()
