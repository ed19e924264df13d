"""
`capserv.daemon.workers` without processes: what a worker is told (settings
and sockets, never argv), each worker's figures reaching the supervisor as
lines on its log pipe and adding up there, a worker's figure reports, and a
worker noticing that its supervisor has gone.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.daemon import workers
from capserv.daemon.workers import (
    FIGURES_NAMESPACE,
    FIRST_SOCKET,
    SETTINGS_VARIABLE,
    WORKER_VARIABLE,
    FigureReport,
    WorkerPool,
)
from capserv.protocols.accesslog import event_as_json
from capserv.site.metrics import CapservCollector

from ..support.daemon_fakes import Process, samples


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


class _Transport:
    """A child process's transport: its pid, and the signals it was sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)


class SpawningReactor(MemoryReactorClock):
    """Records spawnProcess calls; each child gets the next pid from 1001."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str], **kw: Any) -> Any:
        self.spawned.append({"protocol": protocol, "executable": executable, "args": args, "env": env, **kw})
        return _Transport(1000 + len(self.spawned))


class WorkerFiguresTests(SynchronousTestCase):
    """Counters add up over every process, dead workers included; gauges over the living."""

    def test_every_process_adds_up_and_a_dead_one_keeps_its_counts(self) -> None:
        """The supervisor's figures plus each worker's latest figure line;
        a worker's exit keeps its counters in the totals and drops its
        gauges (open connections, workers); figure lines are not logged."""
        supervisor, one, two = Process(), Process(), Process()
        reactor = SpawningReactor()
        pool = WorkerPool(3, "{}", reactor, stop_timeout=5, sockets=[])
        pool.startService()
        first, second = (spawned["protocol"] for spawned in reactor.spawned)
        collector = CapservCollector(lambda: pool.total(supervisor.figures()), CapservConfig())
        one.serve(connections=3, datagrams=2)
        one.open()
        two.serve(connections=5, refused=1)
        two.open()
        logged: list[LogEvent] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        first.childDataReceived(1, one.report_line() + b"\n")
        second.childDataReceived(1, two.report_line() + b"\n")
        self.assertEqual([e for e in logged if str(e.get("log_system")).startswith("worker")], [])
        supervisor.serve(connections=7)
        figures = samples(collector)
        self.assertEqual(figures[("capserv_connections_total", ())], 3 + 5 + 7 + 2)
        self.assertEqual(figures[("capserv_connections_refused_total", (("limit", "max_connections"),))], 1)
        self.assertEqual(figures[("capserv_datagrams_received_total", ())], 2)
        self.assertEqual(figures[("capserv_datagrams_dropped_total", (("reason", "rate_limit"),))], 1)
        self.assertEqual(figures[("capserv_connections_active", ())], 2)
        self.assertEqual(figures[("capserv_workers", ())], 3)

        pool.ended(first, None, 9)
        figures = samples(collector)
        self.assertEqual(figures[("capserv_connections_total", ())], 17)
        self.assertEqual(figures[("capserv_datagrams_received_total", ())], 2)
        self.assertEqual(figures[("capserv_connections_active", ())], 1)
        self.assertEqual(figures[("capserv_workers", ())], 2)

        two.serve(connections=1)
        second.childDataReceived(1, two.report_line() + b"\n")
        self.assertEqual(samples(collector)[("capserv_connections_total", ())], 18)
        reactor.advance(1)  # the replacement starts and reports nothing yet
        self.assertEqual(samples(collector)[("capserv_connections_total", ())], 18)
        pool.stopService()


class FigureReportTests(SynchronousTestCase):
    """A worker reports on a timer, through its drain, and once after it."""

    def test_reports_every_interval_and_after_shutdown(self) -> None:
        """A report at the start and every interval, still while the service
        stops (connections drain), a last one after shutdown, then none."""
        process = Process()
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def reports() -> int:
            return len([e for e in events if e.get("log_namespace") == FIGURES_NAMESPACE])

        service = FigureReport(process.factory, process.datagrams, process.reactor, interval=1.0)
        service.startService()
        self.assertEqual(reports(), 1)
        process.reactor.advance(1)
        self.assertEqual(reports(), 2)
        service.stopService()
        process.reactor.advance(1)
        self.assertEqual(reports(), 3)
        [(hook, args, kwargs)] = process.reactor.triggers["after"]["shutdown"]
        hook(*args, **kwargs)
        self.assertEqual(reports(), 4)
        self.assertEqual(json.loads(event_as_json(events[-1]))["figures"], process.figures())
        process.reactor.advance(5)
        self.assertEqual(reports(), 4)
        self.assertEqual(process.reactor.getDelayedCalls(), [])


class WorkerPoolTests(SynchronousTestCase):
    """What a worker is told, and that every exit is heard."""

    def test_workers_are_told_settings_and_sockets_never_argv(self) -> None:
        """A worker runs capserv's worker program with no options: its number
        and the settings in the environment (beside this process's own), the
        bound sockets from descriptor 3 on; an exit is replaced, and a stop
        counts every worker out."""
        reactor = SpawningReactor()
        sockets = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
        pool = WorkerPool(3, '{"listen": ["tcp:0"]}', reactor, stop_timeout=5, sockets=sockets)
        pool.startService()
        for slot, spawned in enumerate(reactor.spawned, 1):
            self.assertEqual(spawned["args"][:2], [spawned["executable"], "-c"])
            self.assertEqual(len(spawned["args"]), 3, spawned["args"])
            self.assertNotIn("--", spawned["args"][2])
            env = spawned["env"]
            self.assertEqual((env[WORKER_VARIABLE], env[SETTINGS_VARIABLE]), (str(slot), '{"listen": ["tcp:0"]}'))
            self.assertEqual({key: env[key] for key in os.environ}, dict(os.environ))
            fds = spawned["childFDs"]
            self.assertEqual((fds[1], fds[2], fds[FIRST_SOCKET], fds[FIRST_SOCKET + 1]), ("r", "r", *sockets))
            self.assertEqual(len(fds), 5)
        pool.ended(reactor.spawned[0]["protocol"], None, 9)
        reactor.advance(1)
        self.assertEqual(len(reactor.spawned), 3, "the worker was not replaced")
        self.assertEqual(reactor.spawned[2]["env"][WORKER_VARIABLE], "1")
        stopped: list[object] = []
        pool.stopService().addCallback(stopped.append)
        self.assertEqual([t.signals for _, t in pool.workers.values()], [[15], [15]])
        for spawned in reactor.spawned[1:]:
            pool.ended(spawned["protocol"], 0, None)
        self.assertEqual(stopped, [None])
        self.assertEqual(pool.sockets, [], "the sockets kept for workers were not let go")
