"""Congestion control: how many bytes may be in flight, and how fast to pace them.

Every controller implements :class:`~.base.CongestionController`; ``Config.congestion_control``
names one of :data:`CONTROLLERS` (the one registry ``Config`` validates against):

* ``bbr`` (:mod:`.bbr`, the default): model-based (bottleneck bandwidth and propagation
  delay); neither random loss nor delay jitter shrinks it.
* ``vegas`` (:mod:`.vegas`): delay-based; random loss does not shrink it, jitter does.
* ``newreno`` (:mod:`.newreno`): loss-based, the RFC 9002 reference.
"""

from __future__ import annotations

from .base import CongestionController, Phase
from .bbr import Bbr
from .newreno import NewReno
from .vegas import Vegas

CONTROLLERS: dict[str, type[CongestionController]] = {
    "bbr": Bbr,
    "vegas": Vegas,
    "newreno": NewReno,
}


def create_controller(name: str, max_datagram_size: int,
                      initial_window_packets: int) -> CongestionController:
    return CONTROLLERS[name](max_datagram_size, initial_window_packets)


__all__ = ["CONTROLLERS", "Bbr", "CongestionController", "NewReno", "Phase", "Vegas",
           "create_controller"]
