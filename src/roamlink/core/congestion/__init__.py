"""Congestion control: how many bytes may be in flight, and how fast to pace them.

Every controller implements :class:`~.base.CongestionController`; ``Config.congestion_control``
names one of :data:`CONTROLLERS` (the one registry ``Config`` validates against):

* ``vegas`` (:mod:`.vegas`, the default): delay-based; random loss does not shrink it.
* ``newreno`` (:mod:`.newreno`): loss-based, the RFC 9002 reference.
"""

from __future__ import annotations

from .base import CongestionController, Phase
from .newreno import NewReno
from .vegas import Vegas

CONTROLLERS: dict[str, type[CongestionController]] = {
    "vegas": Vegas,
    "newreno": NewReno,
}


def create_controller(name: str, max_datagram_size: int,
                      initial_window_packets: int) -> CongestionController:
    return CONTROLLERS[name](max_datagram_size, initial_window_packets)


__all__ = ["CONTROLLERS", "CongestionController", "NewReno", "Phase", "Vegas",
           "create_controller"]
