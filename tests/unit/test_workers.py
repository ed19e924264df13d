"""
The worker supervisor's pieces that need no processes: a worker noticing
that its supervisor has gone (`capserv.daemon.workers.OrphanWatch`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon import workers


class _Reactor(Clock):
    """A clock whose ``stop`` counts calls, and may say it is stopping already."""

    def __init__(self, stopping: bool = False) -> None:
        super().__init__()
        self.stopping = stopping
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1
        if self.stopping:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


class OrphanWatchTests(SynchronousTestCase):
    """A worker stops when its supervisor has gone, once, whatever it is doing."""

    def _watch(self, reactor: _Reactor) -> tuple[workers.OrphanWatch, list[int]]:
        parent = [1000]
        self.patch(workers.os, "getppid", lambda: parent[0])
        watch = workers.OrphanWatch(reactor, interval=1.0)
        watch.startService()
        return watch, parent

    def test_stops_the_reactor_when_the_supervisor_goes(self) -> None:
        """While the supervisor lives nothing happens; once it has gone
        (the worker is re-parented), the reactor is stopped once and the
        check ends."""
        reactor = _Reactor()
        watch, parent = self._watch(reactor)
        reactor.advance(5)
        self.assertEqual(reactor.stops, 0)
        parent[0] = 1
        reactor.advance(1)
        self.assertEqual(reactor.stops, 1)
        reactor.advance(5)
        self.assertEqual(reactor.stops, 1)
        self.assertEqual(reactor.getDelayedCalls(), [])
        watch.stopService()

    def test_supervisor_gone_while_the_worker_drains(self) -> None:
        """If the worker is stopping already (a drain, a graceful stop), the
        supervisor's end changes nothing and raises nothing: the stop goes
        on."""
        reactor = _Reactor(stopping=True)
        watch, parent = self._watch(reactor)
        parent[0] = 1
        logged: list[Any] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        reactor.advance(1)
        self.assertEqual(reactor.stops, 1)
        self.assertEqual([e for e in logged if e.get("isError") or e.get("log_failure")], [])
        self.assertEqual(reactor.getDelayedCalls(), [])
        watch.stopService()
