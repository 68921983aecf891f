"""One-way bulk transfer over loopback between two processes: roamlink vs asyncio TCP.

Both run in the same invocation, so the ratio is measured in one run. Same engine and
goodput definition as compare.py (receiver verifies byte count and SHA-256; time from the
sender starting to connect to the last byte at the receiver).

Usage: python bench/bulk.py [--size-mib 64] [--repeat 1] [--only roamlink,tcp] [--uvloop]
       [--quick] [--timeout s]
Prints one JSON line per run and a final summary line.
"""

from __future__ import annotations

import asyncio
import sys

from _common import emit
from compare import child_main, compare, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, repeat=1, only="roamlink,tcp",
                      description=__doc__.splitlines()[0] if __doc__ else "")
    if args.role:
        return child_main(args)
    final = asyncio.run(compare(args, "bulk"))
    rates = final["mb_per_s"]
    final["ratio_roamlink_to_tcp"] = final["ratios"].get("roamlink/tcp")
    emit(final)
    return 0 if rates and all(rates.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
