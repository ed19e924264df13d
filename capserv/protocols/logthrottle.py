"""
Keep a flood of identical events from becoming a flood of log lines.

A send error per packet or a refused connection per attempt is useful once,
noise a thousand times a second.  `LogThrottle` lets one line through per
interval and reports how many it held back in between.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

__all__ = ["LogThrottle"]


class LogThrottle:
    """
    Decide whether an event should be logged now.
    """

    __slots__ = ("_clock", "_held", "_next", "interval")

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        """
        :param clock: where the time comes from.
        :param interval: the fewest seconds between two lines.
        """
        self._clock = clock
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def check(self) -> int | None:
        """
        Record one event.

        :return: `None` if this event should not be logged, else the number
            of events held back since the last line that was let through.
        """
        now = self._clock.seconds()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
