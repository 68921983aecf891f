"""The asyncio API: Listener, Stream, listen(), connect()."""

from .connect import connect
from .forward import BridgeResult, bridge
from .listener import Listener, listen
from .stream import Stream
from .workers import run_server

__all__ = ["BridgeResult", "Listener", "Stream", "bridge", "connect", "listen", "run_server"]
