"""
Process supervision for ``--workers N``: N processes serving the same sockets.

The process twistd runs binds every listener once, then `WorkerPool` starts
N-1 workers (`main`) and hands each a duplicate of every bound socket
(``spawnProcess(childFDs=...)``) and the parsed settings as one JSON value;
a worker adopts the sockets it inherited, so it never parses a command line
and never binds.  A worker that exits is replaced, after a delay that
doubles while it keeps dying.

Signals: a stop passes SIGTERM on to every worker and drains this process's
own connections meanwhile; a second stop signal sends each worker SIGUSR2,
which makes it abort its connections.  Workers ignore SIGINT and a repeated
SIGTERM, so a Ctrl-C to the whole process group, or a service manager
signalling every process of the service, is still one graceful stop.

Logs and figures: workers log JSON lines to a pipe that this process reads
and logs again through its own observers, marked with the worker's number.
With ``--metrics``, a worker also sends its counters down that pipe once a
second and after its stop (`FigureReport`); the pool keeps the latest of
each and adds them up at scrape time (`WorkerPool.total`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = [
    "FORCE_SIGNAL",
    "MAX_WORKERS_PER_CPU",
    "FigureReport",
    "OrphanWatch",
    "WorkerPool",
    "add_figures",
    "main",
    "process_figures",
]

#: More workers than this many per CPU only add processes that wait.
MAX_WORKERS_PER_CPU = 8
#: What the supervisor sends its workers when a second signal forces a stop.
FORCE_SIGNAL = signal.SIGUSR2
#: The environment variables a worker is told its number and its settings in.
WORKER_VARIABLE = "CAPSERV_WORKER"
SETTINGS_VARIABLE = "CAPSERV_SETTINGS"
#: The first descriptor a worker inherits a listening socket on.
FIRST_SOCKET = 3
#: The namespace of a worker's figure lines, which the supervisor keeps instead of logging.
FIGURES_NAMESPACE = "capserv.workers.figures"
#: The figures that are gauges: a worker that exits stops counting in them.
GAUGES = frozenset({"connections_active", "rate_table_size", "workers"})

#: A worker's program.
_RUN = "from capserv.daemon.workers import main; main()"
#: The longest wait before replacing a worker that keeps dying.
MAX_BACKOFF = 30.0
#: A worker that lived this long before exiting resets the backoff.
STABLE_AFTER = 10.0

Figures = dict[str, Any]


def process_figures(factory: UppercaseFactory, datagrams: DatagramState) -> Figures:
    """One process's counters, as `add_figures` adds them and `capserv.site.metrics` reads them."""
    return {"tcp": factory.snapshot(), "udp": datagrams.snapshot(), "workers": 1}


def add_figures(total: Figures, more: Figures, gauges: bool = True) -> Figures:
    """
    The sum of two processes' figures, number by number; ``gauges`` false
    leaves ``more``'s gauges out (a worker that has exited).
    """
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = add_figures(out.get(key, {}), value, gauges)
        elif gauges or key not in GAUGES:
            out[key] = out.get(key, 0) + value
    return out


class _Worker(ProcessProtocol):
    """
    One child worker: relays its log lines and reports its end to the pool.

    Twisted learns that a child exited from SIGCHLD, which the asyncio
    reactor on uvloop does not always see (uvloop takes the signal wakeup
    descriptor for itself).  So the end of the worker's stdout, when it
    exits, also makes this protocol reap it (retrying for the instant
    between the pipe closing and the process becoming reapable).
    """

    def __init__(self, pool: WorkerPool, slot: int, started: float) -> None:
        self.pool = pool
        self.slot = slot
        self.started = started
        self.ended = False
        self.pid = 0
        self._partial = {1: b"", 2: b""}

    def outReceived(self, data: bytes) -> None:
        self._lines(1, data)

    def errReceived(self, data: bytes) -> None:
        self._lines(2, data)

    def _lines(self, fd: int, data: bytes) -> None:
        *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        for line in lines:
            if line.strip():
                self.pool.relay(self, line, fd == 2)

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N803 - Twisted's name
        if childFD == 1:
            self._reap()

    def _reap(self, tries: int = 50) -> None:
        if self.ended or self.transport is None or self.transport.pid is None:
            return  # ended, or reaped already (Twisted saw SIGCHLD)
        self.transport.reapProcess()  # type: ignore[attr-defined]
        if not self.ended and tries > 0:
            self.pool.reactor.callLater(0.1, self._reap, tries - 1)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        self.pool.ended(self, code, signum)


#: WorkerPool's logger, under the namespace operators filter on.
_pool_log = Logger(namespace="capserv.workers.WorkerPool")


class WorkerPool(Service):
    """
    Keep ``count - 1`` worker processes running beside this one while the
    service runs, each serving the sockets this one bound.
    """

    #: `capserv.daemon.service.CapservService` drains its own connections while
    #: this stops, instead of after.
    stops_in_parallel = True

    def __init__(self, count: int, settings: str, reactor: Any, stop_timeout: float, sockets: Sequence[int]) -> None:
        """
        :param settings: what every worker is told
            (`capserv.daemon.options.Settings.for_workers`).
        :param stop_timeout: seconds a stop waits for workers before killing
            them.
        :param sockets: the listening sockets' descriptors, in the order of
            the settings' listeners; a worker inherits them from
            `FIRST_SOCKET` on.
        """
        self.count = count
        self.settings = settings
        self.reactor = reactor
        self.stop_timeout = stop_timeout
        self.sockets = list(sockets)
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        #: Each running worker's latest figures, and those of workers gone.
        self.figures: dict[int, Figures] = {}
        self.retired: Figures = {}
        self.restarts = 0
        self._backoff: dict[int, float] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._stopped: Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        for slot in range(1, self.count):
            self._spawn(slot)
        pids = [transport.pid for _, transport in self.workers.values()]
        more = f"{len(pids)} more worker" + ("" if len(pids) == 1 else "s")
        _pool_log.info(f"Started {more}: {', '.join(map(str, pids))}", workers=len(pids), pids=pids)

    def _spawn(self, slot: int) -> int:
        self._pending.pop(slot, None)
        worker = _Worker(self, slot, self.reactor.seconds())
        env = dict(os.environ, **{WORKER_VARIABLE: str(slot), SETTINGS_VARIABLE: self.settings})
        fds: dict[int, Any] = {1: "r", 2: "r"}
        fds.update((FIRST_SOCKET + i, fd) for i, fd in enumerate(self.sockets))
        with open(os.devnull, "rb") as devnull:
            fds[0] = devnull.fileno()
            transport = self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-c", _RUN], env, childFDs=fds
            )
        self.workers[slot] = (worker, transport)
        worker.pid = transport.pid
        return worker.pid

    def relay(self, worker: _Worker, line: bytes, error: bool = False) -> None:
        """
        Log one line of a worker's output through this process's observers:
        a JSON event (the worker's log) with its text, level and fields, or
        any other line (a crash on stderr) as an error; keep a figure line.
        """
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(line)
        except ValueError:
            record = {"text": line.decode("utf-8", "replace"), "level": "error" if error else "info"}
        namespace = str(record.pop("namespace", "capserv.worker"))
        if namespace == FIGURES_NAMESPACE and isinstance(record.get("figures"), dict):
            self.figures[worker.slot] = record["figures"]
            return
        try:
            level = LogLevel.levelWithName(str(record.pop("level", "info")))
        except Exception:
            level = LogLevel.info
        text = str(record.pop("text", ""))
        fields = {k: v for k, v in record.items() if not k.startswith("log_") and k not in ("time", "format", "level")}
        fields["worker"] = worker.slot
        Logger(namespace=namespace).emit(level, "{text}", text=text, log_system=f"worker {worker.slot}", **fields)

    def total(self, own: Figures) -> Figures:
        """
        ``own`` figures plus every worker's latest, and the counters of
        workers that have exited (so no total goes down when one is
        replaced).
        """
        total = add_figures(own, self.retired)
        for figures in self.figures.values():
            total = add_figures(total, figures)
        return total

    def ended(self, worker: _Worker, code: int | None, signum: int | None) -> None:
        """A worker exited: replace it, or count it out of a stop."""
        self.workers.pop(worker.slot, None)
        last = self.figures.pop(worker.slot, None)
        if last is not None:
            self.retired = add_figures(self.retired, last, gauges=False)
        how = f"signal {signum}" if signum else f"status {code}"
        if self._stopped is not None:
            if not self.workers:
                self._finish_stop()
            return
        lived = self.reactor.seconds() - worker.started
        delay = 0.5 if lived >= STABLE_AFTER else min(MAX_BACKOFF, self._backoff.get(worker.slot, 0.25) * 2)
        self._backoff[worker.slot] = delay
        self.restarts += 1
        _pool_log.error(
            "Worker {slot} (pid {pid}) exited with {how} after {lived:.1f}s; starting another in {delay:g}s",
            slot=worker.slot,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._pending[worker.slot] = self.reactor.callLater(delay, self._replace, worker.slot)

    def _replace(self, slot: int) -> None:
        pid = self._spawn(slot)
        _pool_log.info("Started worker {slot} again: pid {pid}", slot=slot, pid=pid)

    def force(self) -> None:
        """A second stop signal: make every worker abort its connections."""
        self.signal_all(FORCE_SIGNAL)

    def signal_all(self, signum: int = signal.SIGTERM) -> None:
        """Send every running worker a signal."""
        for _, transport in list(self.workers.values()):
            try:
                transport.signalProcess(signum)
            except (ProcessExitedAlready, OSError):
                pass

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if not self.workers:
            self.close_sockets()
            return succeed(None)
        self._stopped = Deferred()
        self.signal_all(signal.SIGTERM)
        self._kill_call = self.reactor.callLater(self.stop_timeout, self._kill)
        return self._stopped

    def _kill(self) -> None:
        self._kill_call = None
        _pool_log.warn("Killing {n} workers that did not stop in time", n=len(self.workers))
        self.signal_all(signal.SIGKILL)

    def close_sockets(self) -> None:
        """Let go of the sockets kept for workers (every worker has stopped)."""
        sockets, self.sockets = self.sockets, []
        for fd in sockets:
            os.close(fd)

    def _finish_stop(self) -> None:
        self.close_sockets()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)


#: OrphanWatch's logger, under the namespace operators filter on.
_orphan_log = Logger(namespace="capserv.workers.OrphanWatch")


class OrphanWatch(Service):
    """
    In a worker: stop when the process that started it has gone, so no
    worker outlives its supervisor.
    """

    def __init__(self, reactor: Any, interval: float = 0.5) -> None:
        self.reactor = reactor
        self.interval = interval
        self._parent = os.getppid()
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _check(self) -> None:
        if os.getppid() != self._parent:
            _orphan_log.warn("The supervising process {pid} has gone; stopping", pid=self._parent)
            assert self._loop is not None
            self._loop.stop()
            self._loop = None
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # stopping already (a drain or a graceful stop): it goes on

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


#: The worker's figure lines (`FigureReport`), which its supervisor keeps.
_figures_log = Logger(namespace=FIGURES_NAMESPACE)


class FigureReport(Service):
    """
    In a worker whose supervisor serves ``--metrics``: send this process's
    figures down the log pipe every ``interval`` seconds while it serves and
    drains, and once more after its stop, so its last counts reach the
    supervisor.
    """

    def __init__(
        self, factory: UppercaseFactory, datagrams: DatagramState, reactor: Any, interval: float = 1.0
    ) -> None:
        self.factory = factory
        self.datagrams = datagrams
        self.reactor = reactor
        self.interval = interval
        self._loop: LoopingCall | None = None

    def report(self) -> None:
        """Send the figures now."""
        _figures_log.info("figures", figures=process_figures(self.factory, self.datagrams))

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self.report)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.finish)

    def finish(self) -> None:
        """Stop reporting, after a last report (the reactor has stopped everything)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.report()


def main() -> None:
    """
    A worker's program: serve the settings and sockets the supervisor
    handed it, logging JSON lines on standard output, until SIGTERM.
    """
    # Ctrl-C reaches the supervisor only (the reactor leaves an ignored SIGINT ignored).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from twisted.logger import globalLogBeginner

    from capserv.daemon.logs import json_lines
    from capserv.daemon.options import Settings, build_service
    from capserv.daemon.reactor import choose_reactor

    settings = Settings.of_worker(os.environ.pop(SETTINGS_VARIABLE), int(os.environ.pop(WORKER_VARIABLE)))
    reactor = choose_reactor(settings.uvloop, settings.reactor)
    globalLogBeginner.beginLoggingTo([json_lines()], redirectStandardIO=False)
    inherited = range(FIRST_SOCKET, FIRST_SOCKET + len(settings.listen))
    service = build_service(settings, reactor, inherited)
    service.takes_signals = True
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
