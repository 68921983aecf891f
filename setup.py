"""Build script: compile the hot modules with mypyc when a C compiler is present.

Everything is declared in ``pyproject.toml``; this file only decides whether the wheel gets
compiled extension modules. The pure-Python sources ship either way, so an install that cannot
compile (no compiler, no Python headers, ``ROAMLINK_PURE=1``, an editable install) still works,
only slower. ``roamlink.compiled`` tells at run time which variant is running.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SRC = HERE / "src" / "roamlink"

#: What is compiled: the sans-I/O core (wire codec, state machine, recovery, congestion, ...),
#: the packet protection, the socket layer and the Stream (whose ``on_activity``, ``read``,
#: ``write`` and ``drain`` run on every round trip: compiled, a small-message round trip takes
#: ~18k fewer instructions, docs/profile.md). The rest of ``api/`` runs once per connection.
COMPILED_DIRS = ("core", "crypto")
COMPILED_FILES = ("io/dispatcher.py", "io/driver.py", "io/timer_heap.py", "io/endpoint.py",
                  "io/udp_socket.py", "api/stream.py")
#: Modules inside COMPILED_DIRS that must stay interpreted, with the reason.
EXCLUDED: dict[str, str] = {}
# Not compiled, on purpose: ``io/steering.py`` hands the kernel the address of a ctypes buffer;
# compiled code frees a local right after its last use, so the buffer would be gone before
# ``setsockopt`` reads it (EINVAL). It runs once per socket, so nothing is lost.


def _say(message: str) -> None:
    print(f"roamlink: {message}", file=sys.stderr)


def _why_pure() -> str | None:
    """Return why this build must stay pure Python, or None when it can be compiled."""
    if os.environ.get("ROAMLINK_PURE", "") not in ("", "0"):
        return "ROAMLINK_PURE is set"
    if any(cmd in sys.argv for cmd in ("editable_wheel", "develop")):
        return "an editable install runs the sources as they are edited"
    if sys.implementation.name != "cpython":
        return f"mypyc needs CPython, not {sys.implementation.name}"
    include = sysconfig.get_paths().get("include", "")
    if not include or not Path(include, "Python.h").exists():
        return "the Python headers (Python.h) are missing"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if os.name != "nt" and shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc (part of mypy) is not installed"
    return None


def _modules() -> list[str]:
    paths: list[Path] = []
    for folder in COMPILED_DIRS:
        paths.extend(sorted((SRC / folder).rglob("*.py")))
    paths.extend(SRC / name for name in COMPILED_FILES)
    return [str(p.relative_to(HERE)) for p in paths
            if p.exists() and str(p.relative_to(SRC)) not in EXCLUDED]


def _ext_modules() -> list[object]:
    reason = _why_pure()
    if reason is not None:
        _say(f"installing pure Python ({reason}); a C compiler makes it about 2x faster")
        return []
    from mypyc.build import mypycify

    _say("compiling the protocol core with mypyc")
    return list(mypycify(_modules(), opt_level="3"))


setup(ext_modules=_ext_modules())
