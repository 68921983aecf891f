"""Queues of connection events for the application (interpreted: asyncio.Queue's subclass and
an async generator, neither of which mypyc compiles)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..core.events import ConnectionTerminated, Event, PathChanged, PathValidationFailed

#: Events one queue from :meth:`Stream.events` (or :meth:`Stream.path_events`) holds. A
#: connection can live for months and change paths thousands of times; an application that
#: asked for events and stopped reading them must not make it grow without end. When a queue
#: is full, its oldest event is dropped (and counted in ``EventQueue.dropped``): the newest
#: events (the current path, the end of the connection) are the ones worth keeping.
EVENT_QUEUE_LIMIT = 256


class EventQueue(asyncio.Queue[Event]):
    """A bounded queue of connection events: full, it drops its oldest event."""

    def __init__(self, limit: int = EVENT_QUEUE_LIMIT) -> None:
        if limit < 1:
            raise ValueError("an event queue holds at least one event")
        super().__init__(maxsize=limit)
        #: events dropped because the queue was full (the application read too slowly)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        """Queue ``event``; when full, drop the oldest queued one first (never blocks)."""
        if self.full():
            self.get_nowait()
            self.task_done()
            self.dropped += 1
        self.put_nowait(event)



async def path_events(queue: EventQueue, listeners: list[EventQueue]
                      ) -> AsyncIterator[PathChanged | PathValidationFailed]:
    """The path changes (and failed validations) ``queue`` receives, until the connection
    ends; ``queue`` leaves ``listeners`` when the iteration stops."""
    try:
        while True:
            event = await queue.get()
            if isinstance(event, (PathChanged, PathValidationFailed)):
                yield event
            elif isinstance(event, ConnectionTerminated):
                return
    finally:
        listeners.remove(queue)
