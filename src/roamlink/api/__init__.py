"""The asyncio API: Listener, Stream, listen(), connect()."""

from .connect import connect
from .listener import Listener, listen
from .stream import Stream

__all__ = ["Listener", "Stream", "connect", "listen"]
