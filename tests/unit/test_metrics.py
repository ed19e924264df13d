"""
In-memory tests for the metrics of ``--workers``: each worker's figures
reach the supervisor as lines on its log pipe (`capserv.daemon.workers`),
and ``/metrics`` adds them up at scrape time (`capserv.site.metrics`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory
from capserv.daemon.workers import (
    FIGURES_NAMESPACE,
    FIRST_SOCKET,
    SETTINGS_VARIABLE,
    WORKER_VARIABLE,
    FigureReport,
    WorkerPool,
    process_figures,
)
from capserv.protocols.accesslog import event_as_json
from capserv.protocols.udp import DatagramState
from capserv.site.metrics import CapservCollector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Any) -> Samples:
    """Every sample of ``metrics`` (a collector) by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


class Process:
    """One capserv process's counters (a factory and a datagram state), in memory."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = UppercaseFactory(CapservConfig(), clock=self.reactor)
        self.datagrams = DatagramState(CapservConfig(), clock=self.reactor)

    def figures(self) -> dict[str, Any]:
        return process_figures(self.factory, self.datagrams)

    def serve(self, connections: int = 0, datagrams: int = 0, refused: int = 0) -> None:
        """Count traffic as if it had been served."""
        self.factory.stats.connections_total += connections
        self.factory.stats.bytes_in += 10 * connections
        self.factory.stats.connections_refused["max_connections"] += refused
        self.datagrams.stats.datagrams_in += datagrams
        self.datagrams.stats.drops["rate_limit"] += datagrams // 2

    def open(self) -> Any:
        """Open one connection (a gauge figure); return its protocol."""
        address = IPv4Address("TCP", "192.0.2.1", 40000)
        protocol = self.factory.buildProtocol(address)
        assert protocol is not None
        protocol.makeConnection(StringTransport(peerAddress=address))
        return protocol

    def report_line(self) -> bytes:
        """The line this process's `FigureReport` writes on a worker's pipe (JSON-lines logger)."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        try:
            FigureReport(self.factory, self.datagrams, self.reactor).report()
        finally:
            globalLogPublisher.removeObserver(events.append)
        [event] = [e for e in events if e.get("log_namespace") == FIGURES_NAMESPACE]
        return event_as_json(event).encode()


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

    def test_one_process_reads_its_own_counters(self) -> None:
        """Without --workers a scrape reads the process's counters directly."""
        process = Process()
        process.serve(connections=4)
        process.open()
        figures = samples(CapservCollector(process.figures, CapservConfig()))
        self.assertEqual(figures[("capserv_connections_total", ())], 5)
        self.assertEqual(figures[("capserv_connections_active", ())], 1)
        self.assertEqual(figures[("capserv_workers", ())], 1)


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


class MetricsResourceTests(SynchronousTestCase):
    """``/metrics`` answers in the reactor's thread, at once."""

    def test_scrape_is_rendered_at_once_without_threads(self) -> None:
        """The answer comes back from ``render`` itself: no thread pool is
        involved (prometheus-client's WSGI resource answered later from a
        pool thread, and a stop with a scrape in flight hung), in the text
        format, or OpenMetrics when the scraper asks for it."""
        from twisted.web.test.requesthelper import DummyRequest

        from capserv.site.metrics import metrics_site

        process = Process()
        process.serve(connections=3)
        site = metrics_site(process.figures, CapservConfig())
        request = DummyRequest([b"metrics"])
        resource = site.getResourceFor(request)
        body = resource.render(request)
        self.assertIsInstance(body, bytes)
        self.assertIn(b"capserv_connections_total 3.0", body)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = site.getResourceFor(request).render(request)
        self.assertTrue(body.endswith(b"# EOF\n"), body[-40:])
        self.assertIn(b"openmetrics", request.responseHeaders.getRawHeaders(b"content-type")[0])


class ProxyHeaderMetricTests(SynchronousTestCase):
    """A haproxy: connection without a valid PROXY header is counted in the metrics by name."""

    def test_bad_header_counted_as_proxy_header(self) -> None:
        """
        capserv_connections_refused_total{limit="proxy_header"} counts a connection
        Twisted's PROXY wrapper closed for a bad header; it is not counted as served.
        """
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        process = Process()
        proxy = IPv4Address("TCP", "127.0.0.1", 40001)
        wrapper = HAProxyWrappingFactory(process.factory).buildProtocol(proxy)
        wrapper.makeConnection(StringTransport(peerAddress=proxy))
        wrapper.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        wrapper.connectionLost(Failure(ConnectionDone()))
        figures = samples(CapservCollector(process.figures, CapservConfig()))
        self.assertEqual(figures[("capserv_connections_refused_total", (("limit", "proxy_header"),))], 1)
        self.assertEqual(figures[("capserv_connections_total", ())], 0)
