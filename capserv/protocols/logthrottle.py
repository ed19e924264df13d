"""
Keep a flood of identical events from becoming a flood of log lines: one
line per interval, reporting how many were held back in between.
"""

from __future__ import annotations

__all__ = ["LogThrottle", "literal"]


def literal(text: str) -> str:
    """
    ``text`` as a ``twisted.logger`` format that renders as itself, so a
    line's wording can vary while its fields stay values.
    """
    return text.replace("{", "{{").replace("}", "}}")


class LogThrottle:
    """Whether an event should be logged now: at most one line per ``interval`` seconds."""

    __slots__ = ("_held", "_next", "interval")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def check(self, now: float) -> int | None:
        """
        Record one event at ``now`` (the caller's clock: the throttle holds
        none, so building one looks up no reactor).

        :return: `None` to log nothing, else how many events were held back since the last line.
        """
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
