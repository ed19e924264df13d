"""
In-memory tests for `capserv.protocols.connections`: the idle sweep and the drain.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.tcp import _Refused

from ..support.tcp_harness import Harness, peer


class IdleTimeoutTests(SynchronousTestCase):
    """Idle connections are closed by one sweep per factory, every tenth of
    the timeout: between the timeout and 1.1 times it after the last traffic."""

    def test_idle_connection_closed_then_aborted(self) -> None:
        """
        A connection idle for --idle-timeout is closed (and counted); if it does not
        finish closing within --abort-grace it is aborted, leaving no timer.
        """
        h = Harness(idle_timeout=10, abort_grace=2)
        proto, tr = h.connect()
        h.clock.advance(9.9)
        self.assertFalse(tr.disconnecting)
        h.clock.advance(1.1)
        self.assertTrue(tr.disconnecting)
        self.assertFalse(tr.aborted)
        self.assertEqual(h.factory.stats.idle_timeouts, 1)
        h.clock.advance(2)
        self.assertTrue(tr.aborted)
        h.lose(proto)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_traffic_postpones_timeout(self) -> None:
        """
        Data from the client postpones the idle timeout; the connection closes only
        after a full quiet period.
        """
        h = Harness(idle_timeout=10)
        proto, tr = h.connect()
        for _ in range(5):
            h.clock.advance(8)
            proto.dataReceived(b"x")
        self.assertFalse(tr.disconnecting)
        h.clock.advance(9.5)
        self.assertFalse(tr.disconnecting)
        h.clock.advance(1.5)
        self.assertTrue(tr.disconnecting)

    def test_drain_counts_as_traffic(self) -> None:
        """
        The reply draining to a paused connection counts as traffic for the idle
        timeout.
        """
        h = Harness(idle_timeout=10)
        _proto, tr = h.connect()
        tr.producer.pauseProducing()
        h.clock.advance(8)
        tr.producer.resumeProducing()
        h.clock.advance(8)
        self.assertFalse(tr.disconnecting)
        h.clock.advance(3)
        self.assertTrue(tr.disconnecting)

    def test_zero_disables(self) -> None:
        """
        --idle-timeout 0 sets no timer and never closes an idle connection.
        """
        h = Harness(idle_timeout=0)
        _proto, tr = h.connect()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.clock.advance(10**6)
        self.assertFalse(tr.disconnecting)

    def test_one_timer_for_all_connections(self) -> None:
        """Neither connections nor reads create or reset timers."""
        h = Harness(idle_timeout=10)
        protocols = [h.connect(port=i)[0] for i in range(50)]
        for proto in protocols:
            for _ in range(10):
                proto.dataReceived(b"x")
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)

    def test_each_connection_judged_on_its_own_traffic(self) -> None:
        """
        One sweep judges each connection on its own traffic: a quiet one is closed while
        a busy one stays open.
        """
        h = Harness(idle_timeout=10)
        _quiet, quiet_tr = h.connect(port=1)
        busy, busy_tr = h.connect(port=2)
        for _ in range(12):
            h.clock.advance(1)
            busy.dataReceived(b"x")
        self.assertTrue(quiet_tr.disconnecting)
        self.assertFalse(busy_tr.disconnecting)

    def test_no_timer_left_once_all_closed(self) -> None:
        """
        Once every connection has closed, no idle-sweep timer is left behind.
        """
        h = Harness()
        protocols = [h.connect(port=i)[0] for i in range(3)]
        for proto in protocols:
            h.lose(proto)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class DrainTests(SynchronousTestCase):
    def test_drain_refuses_new_and_waits(self) -> None:
        """
        drain() refuses new connections, keeps serving open ones, and fires once they
        have closed, leaving no timer.
        """
        h = Harness(shutdown_timeout=10)
        proto, tr = h.connect()
        fired: list[None] = []
        h.factory.drain().addCallback(fired.append)
        self.assertIsInstance(h.factory.buildProtocol(peer(port=2)), _Refused)
        proto.dataReceived(b"still served")
        self.assertEqual(tr.value(), b"STILL SERVED")
        self.assertEqual(fired, [])
        proto.readConnectionLost()
        h.lose(proto)
        self.assertEqual(fired, [None])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_drain_timeout_closes_the_rest(self) -> None:
        """
        drain() closes the connections still open after --shutdown-timeout, aborts the
        one that will not close within --abort-grace, then fires.
        """
        h = Harness(shutdown_timeout=10, abort_grace=1)
        proto, tr = h.connect()
        fired: list[None] = []
        h.factory.drain().addCallback(fired.append)
        h.clock.advance(10)
        self.assertTrue(tr.disconnecting)
        h.clock.advance(1)
        self.assertTrue(tr.aborted)
        h.lose(proto)
        self.assertEqual(fired, [None])

    def test_drain_with_nothing_open(self) -> None:
        """
        drain() with no connection open fires at once.
        """
        h = Harness()
        fired: list[None] = []
        h.factory.drain().addCallback(fired.append)
        self.assertEqual(fired, [None])
