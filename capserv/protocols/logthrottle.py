"""
Keep a flood of identical events from becoming a flood of log lines.

A send error per packet or a refused connection per attempt is useful once,
noise a thousand times a second.  `LogThrottle` lets one line through per
interval and reports how many it held back in between.
"""

from __future__ import annotations

__all__ = ["LogThrottle", "literal"]


def literal(text: str) -> str:
    """
    ``text`` as a ``twisted.logger`` format that renders as itself: for a
    line whose wording depends on its values, so its fields stay values
    (counts, addresses), never fragments of the sentence.
    """
    return text.replace("{", "{{").replace("}", "}}")


class LogThrottle:
    """
    Decide whether an event should be logged now.
    """

    __slots__ = ("_held", "_next", "interval")

    def __init__(self, interval: float = 10.0) -> None:
        """
        :param interval: the fewest seconds between two lines.
        """
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def check(self, now: float) -> int | None:
        """
        Record one event, happening at ``now`` (seconds, from the caller's
        clock: the throttle holds none, so building one looks up no reactor).

        :return: `None` if this event should not be logged, else the number
            of events held back since the last line that was let through.
        """
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
