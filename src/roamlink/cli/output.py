"""How the CLI talks to people and scripts: plain lines, JSON objects, or rich progress.

Three renderings of the same reports, chosen once per run:

- ``--json``: one JSON object per report on one line (``{"event": ..., ...}``), nothing else;
- a terminal with ``rich`` installed: colour, a live progress bar and live tables;
- anything else (piped, ``--plain``, or ``rich`` absent): plain lines, a progress line per
  interval at most, no escape codes.

``rich`` is optional (the ``roamlink[cli]`` extra): every call site works without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any, Protocol

try:  # optional: only for terminals
    import rich.console
    import rich.progress

    HAVE_RICH = True
except ImportError:  # pragma: no cover - exercised by a subprocess test with rich hidden
    HAVE_RICH = False


# ---------------------------------------------------------------------------- formatting
def format_bytes(n: float) -> str:
    """Binary units, as people size files: ``8.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def format_bits(bytes_per_second: float) -> str:
    """Decimal bit rate, as network people read links: ``68.7 Mbit/s``."""
    value = bytes_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} Gbit/s"


def format_rate(bytes_per_second: float) -> str:
    """Decimal byte rate for file transfers: ``8.6 MB/s``."""
    value = bytes_per_second
    for unit in ("B/s", "kB/s", "MB/s"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB/s"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_addr(addr: tuple[Any, ...]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------- progress
class Progress(Protocol):
    """A transfer's progress display; ``update`` may be called often, it rate-limits itself."""

    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


class _PlainProgress:
    """A line per ``interval`` (or a JSON object): readable in logs and CI output."""

    def __init__(self, out: Output, label: str, total: int, interval: float) -> None:
        self._out = out
        self._label = label
        self._total = total
        self._interval = interval
        self._start = time.monotonic()
        self._last_time = self._start
        self._last_done = 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last_time < self._interval:
            return
        rate = (done - self._last_done) / (now - self._last_time)
        average = done / max(now - self._start, 1e-9)
        eta = (self._total - done) / average if average > 0 else None
        self._last_time, self._last_done = now, done
        percent = 100.0 * done / self._total if self._total else 100.0
        self._out.report(
            "progress",
            f"{self._label}: {format_bytes(done)} of {format_bytes(self._total)} "
            f"({percent:.0f}%), {format_rate(rate)}, ETA {format_duration(eta)}",
            name=self._label, bytes=done, total=self._total,
            rate_bytes_per_s=round(rate, 1), eta_s=None if eta is None else round(eta, 2))

    def close(self) -> None:
        pass


class _RichProgress:
    """A live bar with bytes, rate and ETA, redrawn in place on the terminal."""

    def __init__(self, console: rich.console.Console, label: str, total: int) -> None:
        self._progress = rich.progress.Progress(
            rich.progress.TextColumn("[bold]{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.DownloadColumn(binary_units=True),
            rich.progress.TransferSpeedColumn(),
            rich.progress.TextColumn("ETA"),
            rich.progress.TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total)
        self._progress.start()

    def update(self, done: int) -> None:
        self._progress.update(self._task, completed=done)

    def close(self) -> None:
        self._progress.stop()


# ---------------------------------------------------------------------------- output
class Output:
    """The one object commands print through.

    ``data_on_stdout``: the command writes payload to stdout (``connect``, ``serve`` without
    a mode), so every report goes to stderr instead. ``quiet``: no reports at all, only
    errors (``connect -q`` as an ssh ProxyCommand, whose stderr is the user's terminal).
    """

    def __init__(self, *, json_mode: bool = False, plain: bool = False,
                 data_on_stdout: bool = False, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        #: fields every report carries, and the text lines' prefix (a server worker sets
        #: both to name itself: ``"worker": i``)
        self.context: dict[str, Any] = {}
        self.prefix = ""
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self.stream = self._stderr if data_on_stdout else self._stdout
        tty = _isatty(self.stream)
        #: live displays (progress bars, tables redrawn in place) are wanted and possible
        self.interactive = tty and not plain and not json_mode and HAVE_RICH
        self.console: rich.console.Console | None = None
        self._err_console: rich.console.Console | None = None
        force = True if os.environ.get("ROAMLINK_FORCE_TTY") == "1" else None
        if self.interactive:
            self.console = rich.console.Console(file=self.stream, highlight=False,
                                                force_terminal=force)
        if HAVE_RICH and not plain and not json_mode and _isatty(self._stderr):
            self._err_console = rich.console.Console(file=self._stderr, highlight=False,
                                                     force_terminal=force)

    # reports ------------------------------------------------------------------------------
    def report(self, event: str, text: str, *, style: str | None = None, urgent: bool = False,
               **fields: Any) -> None:
        """One report: ``text`` for people, ``{"event": event, **fields}`` for ``--json``.

        ``urgent`` reports are shown even when ``quiet``: what the user must see (a server key
        learnt on first contact, a warning that nothing is encrypted)."""
        if self.quiet and not urgent:
            return
        if self.json_mode:
            obj = {"event": event, "time": round(time.time(), 3), **self.context, **fields}
            self.stream.write(json.dumps(obj, default=str) + "\n")
            self.stream.flush()
        elif self.console is not None:
            self.console.print(self.prefix + text, style=style, markup=False, soft_wrap=True)
        else:
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()

    def error(self, message: str) -> None:
        """An error line on stderr (also in ``--json`` mode, as an object, on stdout)."""
        if self.json_mode:
            self.report("error", message, message=message)
        if self._err_console is not None:
            self._err_console.print(f"roamlink: error: {message}", style="bold red",
                                    markup=False, soft_wrap=True)
        else:
            self._stderr.write(f"roamlink: error: {message}\n")
            self._stderr.flush()

    def progress(self, label: str, total: int, interval: float = 1.0) -> Progress:
        if self.console is not None:
            return _RichProgress(self.console, label, total)
        return _PlainProgress(self, label, total, interval)


def _isatty(stream: IO[str]) -> bool:
    if os.environ.get("ROAMLINK_FORCE_TTY") == "1":  # lets tests exercise the terminal path
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
