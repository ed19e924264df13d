"""In-memory tests for `capserv.protocols.state`: what a service's listeners share."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.protocols.state import SharedState


class SharedStateTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Without a configuration, the daemon's defaults; the networks follow its prefixes."""
        state = SharedState(CapservConfig(ipv4_prefix=24), Clock())
        self.assertEqual(SharedState(clock=Clock()).config, CapservConfig())
        self.assertEqual(state.networks.ipv4_prefix, 24)

    def test_clock_given_is_used(self) -> None:
        clock = Clock()
        clock.advance(5)
        self.assertIs(SharedState(clock=clock).clock, clock)

    def test_refusal_lines_throttled_on_the_clock(self) -> None:
        """One line per 10 s: the first passes, the next within 10 s is held, then the count held is given."""
        clock = Clock()
        state = SharedState(clock=clock)
        self.assertEqual(state.throttled(), 0)
        self.assertIsNone(state.throttled())
        clock.advance(10)
        self.assertEqual(state.throttled(), 1)
