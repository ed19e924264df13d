"""
Tests for the drain before a stop (``--drain-delay``), the ``/healthz`` and
``/readyz`` endpoints, and what the service tells systemd.

The service's drain logic and the resources run in memory
(``MemoryReactorClock``); a few daemon tests run the real ``twistd -n
capserv`` and check what an orchestrator sees: a new connection served during
the drain while ``/readyz`` says 503 and ``/healthz`` 200, a clean exit after,
and ``READY=1``/``STOPPING=1`` on ``NOTIFY_SOCKET`` at the right moments.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from capserv.daemon.service import DRAINING, READY, STARTING, STOPPING, CapservService
from capserv.daemon.system import Notifier
from capserv.protocols.tcp import UppercaseProtocol
from capserv.site.health import HealthResource, ReadinessResource
from capserv.tap import Options, makeService

from ..support.daemon import TCP0, Daemon
from ..support.loopback import tcp_exchange

LOCAL = "tcp:0:interface=127.0.0.1"
LOCAL_UDP = "udp:0:interface=127.0.0.1"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse(*args: str) -> Options:
    """Parse a capserv command line as ``twistd capserv`` would."""
    options = Options()
    options.parseOptions(list(args))
    return options


class AbortRecordingTransport(StringTransport):
    """A StringTransport that records an abort."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class RecordingNotifier(Notifier):
    """A notifier that keeps its messages instead of sending them."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/notify")

    def notify(self, **fields: str) -> bool:
        self.sent.append("".join(f"{name}={value}\n" for name, value in fields.items()))
        return True


class ServiceTestCase(SynchronousTestCase):
    """Builds services on a ``MemoryReactorClock`` and puts back the signal
    handlers a stop installs."""

    def setUp(self) -> None:
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        self.addCleanup(restore)
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


class _State:
    """A service that is in one state."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.ready = state == READY


class EndpointTests(SynchronousTestCase):
    """``/healthz`` and ``/readyz``: status codes and bodies, by state."""

    def get(self, resource: Any) -> tuple[int, bytes]:
        request = DummyRequest([b""])
        body = resource.render(request)
        return request.responseCode, body

    def test_readiness_by_state(self) -> None:
        """/readyz: 200 "ready" when ready, 503 with the reason otherwise."""
        for state, code in [(READY, 200), (STARTING, 503), (DRAINING, 503), (STOPPING, 503)]:
            self.assertEqual(self.get(ReadinessResource(_State(state))), (code, f"{state}\n".encode()))

    def test_health_while_serving(self) -> None:
        """/healthz: 200 in every state the process serves in, draining included."""
        for state in (STARTING, READY, DRAINING, STOPPING):
            self.assertEqual(self.get(HealthResource(_State(state))), (200, f"{state}\n".encode()))

    def test_plain_text_not_cached(self) -> None:
        """The answer is plain text that no cache keeps."""
        request = DummyRequest([b""])
        ReadinessResource(_State(READY)).render(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_mounted_beside_metrics(self) -> None:
        """The daemon's metrics site serves both beside /metrics, following the service's state."""
        reactor = MemoryReactorClock()
        options = parse("--listen", LOCAL, "--metrics", LOCAL, "--drain-delay=3")
        service = makeService(options, reactor=reactor)
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in previous.items()])
        service.privilegedStartService()
        service.startService()
        for f, args, kwargs in reactor.whenRunningHooks:
            f(*args, **kwargs)
        service.notifier = RecordingNotifier()
        site = _site_of(service)
        for path, expected in [(b"readyz", (200, b"ready\n")), (b"healthz", (200, b"ready\n"))]:
            request = DummyRequest([path])
            self.assertEqual(self.get(getChildForRequest(site.resource, request)), expected)
        self.assertIn(b"metrics", site.resource.children)
        service.stopService()
        readyz = getChildForRequest(site.resource, DummyRequest([b"readyz"]))
        healthz = getChildForRequest(site.resource, DummyRequest([b"healthz"]))
        self.assertEqual(self.get(readyz), (503, b"draining\n"))
        self.assertEqual(self.get(healthz), (200, b"draining\n"))
        reactor.advance(3)
        reactor.advance(0)


def _site_of(service: CapservService) -> Any:
    """The web site the metrics listener serves."""
    for child in service:
        factory = getattr(child, "factory", None)
        if factory is not None and hasattr(factory, "resource"):
            return factory
    raise AssertionError("no metrics site")


# -- the real daemon -----------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket in systemd's place, named by NOTIFY_SOCKET for the daemons started."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.daemon
@pytest.mark.timeout(120)
def test_drain_serves_while_not_ready_then_exits_0(notify_socket: socket.socket) -> None:
    """The real daemon under a Type=notify unit's conditions: READY=1 comes
    once the port answers; on SIGTERM, STOPPING=1, /readyz 503 and /healthz
    200 while a new connection is still served; then a clean stop, status 0.

    The drain lasts a few seconds: what is checked during it takes a few
    milliseconds."""
    pytest.importorskip("prometheus_client")
    with Daemon(["--listen", TCP0, "--metrics", TCP0, "--drain-delay=4"]) as daemon:
        ready = notify_socket.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        daemon.started()
        host, port = daemon.address(0)
        _, metrics = daemon.address(1)
        assert tcp_exchange(host, port, b"before") == b"BEFORE"
        assert http_get(metrics, "readyz") == (200, "ready\n")
        assert http_get(metrics, "healthz") == (200, "ready\n")
        daemon.signal(signal.SIGTERM)
        stopping = notify_socket.recv(4096).decode()
        assert stopping.startswith("STOPPING=1\n"), stopping
        daemon.wait_for("Draining: not ready; still serving for 4s (--drain-delay), then stopping")
        assert http_get(metrics, "readyz") == (503, "draining\n")
        assert http_get(metrics, "healthz") == (200, "draining\n")
        assert tcp_exchange(host, port, b"during the drain") == b"DURING THE DRAIN"
        assert "capserv stopped" not in daemon.output, "the checks ran during the drain"
        assert daemon.wait() == 0
    assert "capserv stopped: 2 TCP connections served" in daemon.output
    assert "Traceback" not in daemon.output
