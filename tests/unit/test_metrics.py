"""
In-memory tests for `capserv.site.metrics_multiprocess` (metrics that add up
every worker of ``--workers``) and the worker bookkeeping it relies on.

Several processes are played in one: prometheus-client's multiprocess mode
keys its files by a process identifier, which a test may choose (as
prometheus-client's own tests do), so each "process" here writes files of
its own into one temporary folder, read back by ``MultiProcessCollector``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory
from capserv.daemon.workers import WORKER_VARIABLE, WorkerPool
from capserv.protocols.udp import DatagramState
from capserv.site.metrics import CapservCollector
from capserv.site.metrics_multiprocess import (
    FOLDER_VARIABLE,
    PROMETHEUS_VARIABLE,
    MetricsMirror,
    MirrorService,
    SharedMetrics,
    worker_folder,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Any) -> Samples:
    """
    Every sample of ``metrics`` (a registry or collector) by name and
    labels; less the creation times prometheus-client adds to counters kept
    in memory (its multiprocess files, what the daemon serves, have none).
    """
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
        self.collector = CapservCollector(self.factory, self.datagrams)

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


class MirrorTests(SynchronousTestCase):
    """A mirror's metrics read as the collector it copies."""

    def test_copies_read_as_the_collector(self) -> None:
        """Every family of capserv's collector is copied under its names,
        labels and values; a second copy moves counters by the difference
        (not by the whole figure again) and sets gauges."""
        from prometheus_client import CollectorRegistry

        process = Process()
        registry = CollectorRegistry()
        mirror = MetricsMirror(process.collector, registry)
        process.serve(connections=3, datagrams=4, refused=1)
        protocol = process.open()
        mirror.mirror()
        first = samples(registry)
        self.assertEqual(first, samples(process.collector))
        self.assertEqual(first[("capserv_connections_total", ())], 4)
        self.assertEqual(first[("capserv_connections_active", ())], 1)
        process.serve(connections=2, datagrams=2)
        protocol.connectionLost(None)
        mirror.mirror()
        second = samples(registry)
        self.assertEqual(second, samples(process.collector))
        self.assertEqual(second[("capserv_connections_total", ())], 6)
        self.assertEqual(second[("capserv_connections_active", ())], 0)
        self.assertEqual(second[("capserv_datagrams_dropped_total", (("reason", "rate_limit"),))], 3)

    def test_help_and_types_are_kept(self) -> None:
        """The copies keep each family's type and help text."""
        from prometheus_client import CollectorRegistry

        process = Process()
        registry = CollectorRegistry()
        MetricsMirror(process.collector, registry).mirror()
        copied = {family.name: (family.type, family.documentation) for family in registry.collect()}
        direct = {family.name: (family.type, family.documentation) for family in process.collector.collect()}
        self.assertEqual(copied, direct)


class MultiprocessTests(SynchronousTestCase):
    """Several processes' copies add up through prometheus-client's files."""

    def setUp(self) -> None:
        from prometheus_client import values

        saved = os.environ.get(PROMETHEUS_VARIABLE)
        self.addCleanup(self._restore, values.ValueClass, saved)

    def _restore(self, value_class: Any, saved: str | None) -> None:
        from prometheus_client import values

        values.ValueClass = value_class
        if saved is None:
            os.environ.pop(PROMETHEUS_VARIABLE, None)
        else:
            os.environ[PROMETHEUS_VARIABLE] = saved

    def as_process(self, pid: int) -> None:
        """Make the metrics created from now on write the files of ``pid``."""
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue(lambda: pid)

    def test_every_process_adds_up_and_a_dead_one_keeps_its_counts(self) -> None:
        """Counters add up over every process, dead ones included; gauges
        (open connections, workers) over the processes alive; the
        supervisor's own figures are copied at the scrape."""
        supervisor, one, two = Process(), Process(), Process()
        shared = SharedMetrics(MetricsMirror(supervisor.collector), supervisor.reactor)
        self.addCleanup(shared.remove)
        self.assertEqual(os.environ[PROMETHEUS_VARIABLE], shared.path)
        workers = {101: MetricsMirror(one.collector), 102: MetricsMirror(two.collector)}
        one.serve(connections=3, datagrams=2)
        one.open()
        two.serve(connections=5, refused=1)
        two.open()
        for pid, mirror in workers.items():
            self.as_process(pid)
            mirror.mirror()
        self.as_process(100)
        scrape = shared.collector()
        supervisor.serve(connections=7)
        figures = samples(scrape)
        self.assertEqual(figures[("capserv_connections_total", ())], 3 + 5 + 7 + 2)
        self.assertEqual(figures[("capserv_connections_refused_total", (("limit", "max_connections"),))], 1)
        self.assertEqual(figures[("capserv_datagrams_received_total", ())], 2)
        self.assertEqual(figures[("capserv_connections_active", ())], 2)
        self.assertEqual(figures[("capserv_workers", ())], 3)

        shared.process_dead(101)
        figures = samples(scrape)
        self.assertEqual(figures[("capserv_connections_total", ())], 17)
        self.assertEqual(figures[("capserv_datagrams_received_total", ())], 2)
        self.assertEqual(figures[("capserv_connections_active", ())], 1)
        self.assertEqual(figures[("capserv_workers", ())], 2)

        two.serve(connections=1)
        workers[102].mirror()
        self.assertEqual(samples(scrape)[("capserv_connections_total", ())], 18)

    def test_an_empty_file_does_not_break_the_scrape(self) -> None:
        """A metric file not yet sized (a worker killed as it created it)
        is left out instead of failing every scrape."""
        supervisor = Process()
        shared = SharedMetrics(MetricsMirror(supervisor.collector), supervisor.reactor)
        self.addCleanup(shared.remove)
        with open(os.path.join(shared.path, "counter_999.db"), "wb"):
            pass
        self.as_process(100)
        supervisor.serve(connections=2)
        self.assertEqual(samples(shared.collector())[("capserv_connections_total", ())], 2)

    def test_folder_for_workers_and_removed_after_shutdown(self) -> None:
        """The supervisor's folder is passed to workers (which then copy into
        it) and removed once the reactor has stopped everything."""
        process = Process()
        shared = SharedMetrics(MetricsMirror(process.collector), process.reactor)
        self.addCleanup(shared.remove)
        self.assertTrue(os.path.isdir(shared.path))
        env = shared.worker_env()
        self.assertEqual(env, {FOLDER_VARIABLE: shared.path, PROMETHEUS_VARIABLE: shared.path})
        saved = os.environ.get(FOLDER_VARIABLE)
        os.environ[FOLDER_VARIABLE] = shared.path
        try:
            self.assertEqual(worker_folder(), shared.path)
        finally:
            if saved is None:
                del os.environ[FOLDER_VARIABLE]
            else:
                os.environ[FOLDER_VARIABLE] = saved
        shared.startService()
        shared.stopService()
        self.assertTrue(os.path.isdir(shared.path), "removed while workers may still write")
        for hook, args, kwargs in process.reactor.triggers["after"]["shutdown"]:
            hook(*args, **kwargs)
        self.assertFalse(os.path.exists(shared.path))

    def test_no_folder_no_copies(self) -> None:
        """A worker whose supervisor serves no metrics copies nothing."""
        saved = os.environ.pop(FOLDER_VARIABLE, None)
        try:
            self.assertIsNone(worker_folder())
        finally:
            if saved is not None:
                os.environ[FOLDER_VARIABLE] = saved


class CountingMirror:
    """A mirror that counts its copies, and may fail."""

    def __init__(self, fail: bool = False) -> None:
        self.copies = 0
        self.fail = fail

    def mirror(self) -> None:
        self.copies += 1
        if self.fail:
            raise OSError("No such file or directory")


class MirrorServiceTests(SynchronousTestCase):
    """A worker copies on a timer, through its drain, and once after it."""

    def test_copies_every_interval_and_after_shutdown(self) -> None:
        """A copy at the start and every interval, still while the service
        stops (connections drain), a last one after shutdown, then none."""
        reactor = MemoryReactorClock()
        mirror = CountingMirror()
        service = MirrorService(mirror, reactor, interval=1.0)  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(mirror.copies, 1)
        reactor.advance(1)
        self.assertEqual(mirror.copies, 2)
        service.stopService()
        reactor.advance(1)
        self.assertEqual(mirror.copies, 3)
        [(hook, args, kwargs)] = reactor.triggers["after"]["shutdown"]
        hook(*args, **kwargs)
        self.assertEqual(mirror.copies, 4)
        reactor.advance(5)
        self.assertEqual(mirror.copies, 4)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_a_failing_copy_is_one_line(self) -> None:
        """A copy that fails is logged once, as one line, and copying stops."""
        reactor = MemoryReactorClock()
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = MirrorService(CountingMirror(fail=True), reactor)  # type: ignore[arg-type]
        service.startService()
        reactor.advance(5)
        errors = [event for event in events if "metrics stopped updating" in event.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"], "No such file or directory")
        self.assertNotIn("log_failure", errors[0])
        self.assertEqual(reactor.getDelayedCalls(), [])


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
        self.spawned: list[tuple[Any, dict[str, str]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str], **kw: Any) -> Any:
        self.spawned.append((protocol, env))
        return _Transport(1000 + len(self.spawned))


class WorkerPoolTests(SynchronousTestCase):
    """What the metrics need from the worker supervisor."""

    def test_env_reaches_workers_and_exits_are_heard(self) -> None:
        """Workers get the extra environment beside this process's own; every
        exit, whether the worker is replaced or counted out of a stop, is
        reported with the worker's pid."""
        reactor = SpawningReactor()
        pool = WorkerPool(3, ["python"], reactor, stop_timeout=5, env={FOLDER_VARIABLE: "/somewhere"})
        exited: list[int] = []
        pool.on_exit.append(exited.append)
        pool.startService()
        envs = [env for _, env in reactor.spawned]
        self.assertEqual([env[FOLDER_VARIABLE] for env in envs], ["/somewhere"] * 2)
        self.assertEqual([env[WORKER_VARIABLE] for env in envs], ["1", "2"])
        self.assertEqual({key: envs[0][key] for key in os.environ}, dict(os.environ))
        pool.ended(reactor.spawned[0][0], None, 9)
        self.assertEqual(exited, [1001])
        reactor.advance(1)
        self.assertEqual(len(reactor.spawned), 3, "the worker was not replaced")
        stopped: list[object] = []
        pool.stopService().addCallback(stopped.append)
        for protocol, _ in reactor.spawned[1:]:
            pool.ended(protocol, 0, None)
        self.assertEqual(exited, [1001, 1002, 1003])
        self.assertEqual(stopped, [None])


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
        site = metrics_site(process.factory, process.datagrams)
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
