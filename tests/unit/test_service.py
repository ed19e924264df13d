"""
`capserv.daemon.service`: the service tree built from the options, the
drain before a stop (``--drain-delay``), the graceful and the forced stop,
the stop line, and what the service tells systemd.  In memory
(``MemoryReactorClock``, listeners given `UnboundSocket`s): binding itself
is tested in ``tests/integration/test_listen.py``.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.service import DRAINING, READY, STARTING, STOPPING, CapservService, plural
from capserv.daemon.system import Notifier
from capserv.protocols._twisted import clear_exit_signal
from capserv.protocols.tcp import UppercaseProtocol
from capserv.tap import Options, makeService

from ..support.daemon_fakes import (
    LOCAL,
    LOCAL_UDP,
    STOP_SIGNALS,
    AbortRecordingTransport,
    RecordingNotifier,
    parse,
    without_sockets,
)


def started(options: Options, reactor: MemoryReactorClock) -> CapservService:
    """A service built from ``options`` on ``reactor``, started."""
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    return service


def stop_reading_lines(
    service: CapservService, reactor: MemoryReactorClock, wait: float, protocols: list[Any]
) -> list[str]:
    """
    Stop ``service``, let ``wait`` seconds pass, close ``protocols``' connections
    and let the stop finish; return every log line written meanwhile.
    """
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        service.stopService()
        reactor.advance(wait)
        for protocol in protocols:
            protocol.connectionLost(None)
        reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    return lines


class ServiceTests(SynchronousTestCase):
    """makeService binds every listener, then wires it; the graceful stop."""

    def setUp(self) -> None:
        without_sockets(self)

    def test_listens_on_each_description(self) -> None:
        """A stream and two datagram listeners are served; the datagram
        protocols differ but share one state; datagrams are read whole."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--listen", LOCAL_UDP, "--listen", LOCAL_UDP), reactor)
        stream = [p for p in reactor.adoptedPorts if len(p) == 3]
        datagram = [p for p in reactor.adoptedPorts if len(p) == 4]
        self.assertEqual(len(stream), 1)
        self.assertIs(stream[0][2], service.factory)
        self.assertEqual(len(datagram), 2)
        first, second = datagram[0][2], datagram[1][2]
        self.assertIsNot(first, second)
        self.assertIs(first.state, second.state)
        self.assertIs(first.state, service.datagrams)
        self.assertEqual({p[3] for p in datagram}, {65535})
        service.stopService()

    def test_listening_lines_say_what_each_serves(self) -> None:
        """Each listener's "Listening" line carries ``what`` as a field,
        datagrams as streams."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = started(parse("--listen", LOCAL, "--listen", LOCAL_UDP), MemoryReactorClock())
        listening = [e for e in events if e.get("log_namespace") == "capserv.listen"]
        self.assertEqual([e["what"] for e in listening], ["streams", "datagrams"])
        self.assertTrue(formatEvent(listening[1]).startswith("Listening for datagrams on "))
        service.stopService()

    def test_graceful_stop_waits_then_closes(self) -> None:
        """A stop waits the shutdown timeout for open connections, then closes them."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=5", "--abort-grace=1"), reactor)
        factory = service.factory
        address = IPv4Address("TCP", "192.0.2.1", 5000)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertFalse(transport.disconnecting)
        reactor.advance(5)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        reactor.advance(0)
        self.assertEqual(len(done), 1)

    def test_clean_exit_after_signal(self) -> None:
        """After a graceful stop the recorded signal is forgotten: twistd exits 0."""
        reactor = MemoryReactorClock()
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = started(parse("--listen", LOCAL), reactor)
        service.stopService()
        reactor.advance(0)
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]

    def test_internals_fallback(self) -> None:
        """Without the private attribute, nothing happens and nothing breaks."""
        self.assertFalse(clear_exit_signal(object()))

    def test_second_signal_aborts_at_once(self) -> None:
        """A forced stop aborts open connections without waiting for the
        timeout, and keeps the signal so twistd exits by it."""
        reactor = MemoryReactorClock()
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=60"), reactor)
        protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        assert protocol is not None
        transport = AbortRecordingTransport()
        protocol.makeConnection(transport)
        done: list[object] = []
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            service.stopService().addCallback(done.append)
            self.assertIsNot(signal.getsignal(signal.SIGTERM), previous[signal.SIGTERM])
            service.force_stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        reactor.advance(0)
        self.assertEqual(len(done), 1)
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)  # type: ignore[attr-defined]

    def test_stop_lines_read_well_and_come_last(self) -> None:
        """'1 connection', not '1 connections'; 'capserv stopped' after the
        last connection's close line; no object reprs."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=5"), reactor)
        protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        lines = stop_reading_lines(service, reactor, 5, [protocol])
        self.assertIn("Stopping: no longer listening; 1 connection open, waiting up to 5s for it to finish", lines)
        closes = [i for i, line in enumerate(lines) if "closed after" in line]
        stopped = [i for i, line in enumerate(lines) if line.startswith("capserv stopped")]
        self.assertEqual(len(stopped), 1)
        self.assertTrue(closes and closes[-1] < stopped[0], lines)
        self.assertIn("1 TCP connection served and 0 datagrams answered", lines[stopped[0]])
        self.assertFalse([line for line in lines if " object at 0x" in line])

    def test_stop_line_counts_what_was_turned_away(self) -> None:
        """Refusals and drops are logged throttled (one line per 10 s), so
        the stop line gives their totals: none is lost from the log when
        the process stops inside a throttle window; a worker says the
        figures are its own."""
        reactor = MemoryReactorClock()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        service = started(parse("--listen", LOCAL, "--max-connections-per-ip=1"), reactor)
        service.worker = True
        peer = IPv4Address("TCP", "192.0.2.1", 5000)
        protocols = []
        for port in (5000, 5001, 5002):
            protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=peer))
            protocols.append(protocol)
        service.datagrams.stats.drops["rate_limit"] += 30
        lines = stop_reading_lines(
            service, reactor, service.config.shutdown_timeout + service.config.abort_grace + 1, protocols
        )
        stopped = [line for line in lines if line.startswith("capserv stopped")]
        self.assertEqual(len(stopped), 1, lines)
        self.assertIn("2 connections refused and 30 datagrams dropped (metrics say why) by this process", stopped[0])

    def test_plural(self) -> None:
        """Counts read as English."""
        self.assertEqual(plural(1, "datagram"), "1 datagram")
        self.assertEqual(plural(0, "datagram"), "0 datagrams")
        self.assertEqual(plural(2, "connection"), "2 connections")


class ServiceTestCase(SynchronousTestCase):
    """Builds services on a ``MemoryReactorClock`` and puts back the signal
    handlers a stop installs."""

    def setUp(self) -> None:
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        self.addCleanup(restore)
        without_sockets(self)
        self.reactor = MemoryReactorClock()

    def start(self, *args: str, notifier: Notifier | None = None) -> CapservService:
        """A service for ``args``, started, with the reactor "running"."""
        service = makeService(parse(*args), reactor=self.reactor)
        service.notifier = notifier or RecordingNotifier()
        service.privilegedStartService()
        service.startService()
        self.assertEqual(service.state, STARTING)
        self.run_reactor()
        return service

    def run_reactor(self) -> None:
        """What ``reactor.run()`` does first: call the ``callWhenRunning`` hooks."""
        hooks, self.reactor.whenRunningHooks = self.reactor.whenRunningHooks, []
        for f, args, kwargs in hooks:
            f(*args, **kwargs)

    def connect(self, service: CapservService, transport: StringTransport | None = None) -> Any:
        """A connection accepted by the service's factory (``None`` if refused)."""
        address = IPv4Address("TCP", "192.0.2.1", 5000)
        protocol = service.factory.buildProtocol(address)
        if not isinstance(protocol, UppercaseProtocol):
            return None
        protocol.makeConnection(transport or StringTransport(peerAddress=address))
        return protocol


class DrainTests(ServiceTestCase):
    """``--drain-delay``: not ready at once, serving on, then the graceful stop."""

    def test_option(self) -> None:
        """--drain-delay takes seconds (0 by default) and reaches the service."""
        self.assertEqual(parse()["drain-delay"], 0)
        self.assertEqual(parse("--drain-delay=2.5")["drain-delay"], 2.5)
        options = parse("--listen", LOCAL, "--drain-delay", "7")
        service = makeService(options, reactor=self.reactor)
        self.addCleanup(lambda: [listener.close() for listener in options["settings"].listen])
        self.assertEqual(service.drain_delay, 7)

    def test_bad_values_name_the_option(self) -> None:
        """A negative, infinite or non-numeric delay is a usage error naming --drain-delay."""
        for value in ("-1", "inf", "nan", "soon"):
            with self.assertRaises(usage.UsageError, msg=value) as caught:
                parse(f"--drain-delay={value}")
            self.assertTrue(str(caught.exception).startswith("--drain-delay: "), str(caught.exception))

    def test_ready_once_the_reactor_runs(self) -> None:
        """Listeners bound and started is "starting"; the reactor running makes it "ready"."""
        service = self.start("--listen", LOCAL, "--listen", LOCAL_UDP)
        self.assertEqual(service.state, READY)
        service.stopService()
        self.reactor.advance(0)

    def test_drain_serves_then_stops(self) -> None:
        """During the drain the state is "draining" and new connections are
        served; once the delay is over the graceful stop begins: listeners
        close, new connections are refused, and the stop completes."""
        service = self.start("--listen", LOCAL, "--listen", LOCAL_UDP, "--drain-delay=5", "--shutdown-timeout=3")
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertEqual(service.state, DRAINING)
        self.assertIn("Draining: not ready; still serving for 5s (--drain-delay), then stopping", lines)
        self.reactor.advance(4.9)
        self.assertEqual(service.state, DRAINING)
        self.assertTrue(all(child.running for child in service), "every listener still listens")
        protocol = self.connect(service)
        self.assertIsNotNone(protocol, "a connection during the drain is served")
        protocol.dataReceived(b"late")
        self.assertEqual(protocol.transport.value(), b"LATE")
        self.reactor.advance(0.1)
        self.assertEqual(service.state, STOPPING)
        self.assertFalse(any(child.running for child in service), "no listener listens once the drain is over")
        self.assertIsNone(self.connect(service), "refused once the drain is over")
        self.assertEqual(done, [])
        protocol.connectionLost(None)
        self.reactor.advance(0)
        self.assertEqual(len(done), 1)

    def test_no_delay_stops_listening_at_once(self) -> None:
        """Without --drain-delay a stop refuses new connections at once, as before."""
        service = self.start("--listen", LOCAL)
        service.stopService()
        self.assertEqual(service.state, STOPPING)
        self.assertIsNone(self.connect(service))
        self.reactor.advance(0)

    def test_second_signal_during_the_drain_aborts_at_once(self) -> None:
        """A forced stop during the drain ends it: listeners close, open
        connections are aborted, the stop completes without waiting the
        delay, and the signal is kept so twistd exits by it."""
        self.reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = self.start("--listen", LOCAL, "--drain-delay=60", "--shutdown-timeout=60")
        transport = AbortRecordingTransport()
        protocol = self.connect(service, transport)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertIsNot(signal.getsignal(signal.SIGTERM), signal.SIG_DFL, "a second signal is caught")
        self.assertEqual(service.state, DRAINING)
        service.force_stop()
        self.assertTrue(transport.aborted)
        self.assertEqual(service.state, STOPPING)
        self.assertIsNone(self.connect(service))
        protocol.connectionLost(None)
        self.reactor.advance(0)
        self.assertEqual(len(done), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor._exitSignal, signal.SIGTERM)  # type: ignore[attr-defined]

    def test_clean_exit_after_a_drain(self) -> None:
        """A drain, then a graceful stop, forgets the signal: twistd exits 0."""
        self.reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = self.start("--listen", LOCAL, "--drain-delay=1")
        service.stopService()
        self.reactor.advance(1)
        self.reactor.advance(0)
        self.assertIsNone(self.reactor._exitSignal)  # type: ignore[attr-defined]

    def test_parallel_children_hear_of_the_stop_at_once(self) -> None:
        """The worker supervisor (a child that stops in parallel) is stopped
        when the drain begins, so the workers drain alongside."""
        service = self.start("--listen", LOCAL, "--drain-delay=5")

        class Supervisor(Service):
            stops_in_parallel = True
            stopped: Deferred[None] | None = None

            def stopService(self) -> Deferred[None]:
                Service.stopService(self)
                self.stopped = Deferred()
                return self.stopped

        supervisor = Supervisor()
        supervisor.setServiceParent(service)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertIsNotNone(supervisor.stopped)
        self.reactor.advance(5)
        self.reactor.advance(0)
        self.assertEqual(done, [], "the stop waits for the workers too")
        assert supervisor.stopped is not None
        supervisor.stopped.callback(None)
        self.reactor.advance(0)
        self.assertEqual(len(done), 1)

    def test_workers_drain_and_are_given_the_time(self) -> None:
        """With --workers the workers' settings carry --drain-delay, and the
        supervisor waits the drain delay on top of the stop before it kills
        them."""
        from capserv.daemon.workers import WorkerPool

        options = parse("--workers=2", "--listen", LOCAL, "--drain-delay=7", "--shutdown-timeout=3")
        service = makeService(options, reactor=self.reactor)
        self.addCleanup(lambda: [listener.close() for listener in options["settings"].listen])
        (pool,) = [child for child in service if isinstance(child, WorkerPool)]
        self.addCleanup(pool.close_sockets)
        self.assertEqual(pool.stop_timeout, 7 + 3 + options["settings"].config.abort_grace + 5)
        self.assertEqual(json.loads(pool.settings)["drain_delay"], 7)


class NotifyTests(ServiceTestCase):
    """What the service tells systemd, and when."""

    def test_ready_then_stopping(self) -> None:
        """READY=1 once the reactor runs; STOPPING=1 when the drain begins."""
        notifier = RecordingNotifier()
        service = makeService(parse("--listen", LOCAL, "--drain-delay=2"), reactor=self.reactor)
        service.notifier = notifier
        service.privilegedStartService()
        service.startService()
        self.assertEqual(notifier.sent, [], "nothing before the reactor runs")
        self.run_reactor()
        self.assertEqual(len(notifier.sent), 1)
        self.assertTrue(notifier.sent[0].startswith("READY=1\nSTATUS=Serving"), notifier.sent)
        service.stopService()
        self.assertEqual(len(notifier.sent), 2)
        self.assertTrue(notifier.sent[1].startswith("STOPPING=1\nSTATUS=Draining"), notifier.sent)
        self.reactor.advance(2)
        self.reactor.advance(0)
        self.assertEqual(len(notifier.sent), 2)

    def test_stopping_without_a_drain(self) -> None:
        """Without a drain, STOPPING=1 when the stop begins."""
        notifier = RecordingNotifier()
        service = self.start("--listen", LOCAL, notifier=notifier)
        service.stopService()
        self.assertTrue(notifier.sent[-1].startswith("STOPPING=1\n"), notifier.sent)
        self.reactor.advance(0)

    def test_workers_do_not_notify(self) -> None:
        """A worker of --workers leaves notifying to its supervisor (the main PID)."""
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET="/run/systemd/notify"))
        service = makeService(parse("--listen", LOCAL), reactor=self.reactor)
        service.worker = True
        service.privilegedStartService()
        service.startService()
        assert service.notifier is not None
        self.assertFalse(service.notifier.enabled)
        service.stopService()
        self.reactor.advance(0)
        main = makeService(parse("--listen", LOCAL), reactor=self.reactor)
        main.privilegedStartService()
        main.startService()
        assert main.notifier is not None
        self.assertEqual(main.notifier.address, "/run/systemd/notify")
        main.notifier = RecordingNotifier()
        main.stopService()
        self.reactor.advance(0)
