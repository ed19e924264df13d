"""
In-memory stand-ins for the daemon's tests (`capserv.daemon`, `capserv.site`):
the command line parsed as twistd would, transports and notifiers that record,
sockets that bind nothing, and one process's counters to report and scrape.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory
from capserv.daemon import listen
from capserv.daemon.system import Notifier
from capserv.daemon.workers import FIGURES_NAMESPACE, FigureReport, process_figures
from capserv.protocols.accesslog import event_as_json
from capserv.protocols.udp import DatagramState
from capserv.tap import Options

LOCAL = "tcp:0:interface=127.0.0.1"
LOCAL_UDP = "udp:0:interface=127.0.0.1"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


class UnboundSocket:
    """
    What a listener binds, without the network: a descriptor of /dev/null,
    which a ``MemoryReactorClock`` adopts and a worker pool duplicates.
    """

    def __init__(self, address: Any, reuse_port: bool = False) -> None:
        self.family = getattr(address, "family", socket.AF_UNIX)
        self._fd = os.open(os.devnull, os.O_RDONLY)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> UnboundSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def without_sockets(case: SynchronousTestCase) -> None:
    """For the rest of ``case``, listeners take an `UnboundSocket` instead of binding."""
    case.patch(listen, "make_socket", UnboundSocket)


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


def scratch_file(case: SynchronousTestCase, name: str = "key.pem") -> str:
    """A path in a temporary folder removed after ``case`` (not in the checkout)."""
    folder = tempfile.mkdtemp(prefix="capserv-test-")
    case.addCleanup(shutil.rmtree, folder, True)
    return f"{folder}/{name}"
