"""
In-memory tests for `capserv.protocols.logthrottle`: time given as numbers.
"""

from __future__ import annotations

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.logthrottle import LogThrottle, literal


class LogThrottleTests(SynchronousTestCase):
    def test_one_line_per_interval_with_the_count_held(self) -> None:
        """
        The first event is let through, the next ones within the interval are held,
        and the first one after it is let through with how many were held.
        """
        throttle = LogThrottle(10.0)
        self.assertEqual(throttle.check(100.0), 0)
        self.assertEqual([throttle.check(100.0 + i) for i in range(1, 10)], [None] * 9)
        self.assertEqual(throttle.check(110.0), 9)
        self.assertIsNone(throttle.check(115.0))
        self.assertEqual(throttle.check(120.0), 1)


class LiteralTests(SynchronousTestCase):
    def test_renders_as_itself(self) -> None:
        """
        A text with braces, as a format, renders as itself, and joins a format
        whose fields are filled from the event.
        """
        text = "peer {x}:1 sent '}{' and {{}}"
        self.assertEqual(formatEvent({"log_format": literal(text)}), text)
        event = {"log_format": literal("{a} ") + "{held} held", "held": 3}
        self.assertEqual(formatEvent(event), "{a} 3 held")
