"""The asyncio API: Listener, Stream, listen(), connect()."""

from .connect import connect
from .listener import Listener, listen
from .stream import Stream
from .workers import run_server

__all__ = ["Listener", "Stream", "connect", "listen", "run_server"]
