"""
``--workers N``: this process binds every listener once; `WorkerPool` runs N-1
workers (`main`) handed the bound sockets and the parsed settings as JSON, never
argv. Workers log JSON lines (and their figures) to a pipe this process relays.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from capserv.daemon.service import FORCE_SIGNAL, plural
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = ["MAX_WORKERS_PER_CPU", "FigureReport", "OrphanWatch", "WorkerPool", "main", "process_figures"]

#: More workers than this many per CPU only add processes that wait.
MAX_WORKERS_PER_CPU = 8
WORKER_VARIABLE, SETTINGS_VARIABLE = "CAPSERV_WORKER", "CAPSERV_SETTINGS"
FIRST_SOCKET = 3
FIGURES_NAMESPACE = "capserv.workers.figures"
#: The figures that are gauges: a worker that exits stops counting in them.
GAUGES = frozenset({"connections_active", "rate_table_size", "workers"})
#: The longest wait before replacing a worker that keeps dying; a life this long resets it.
MAX_BACKOFF, STABLE_AFTER = 30.0, 10.0

_pool_log = Logger(namespace="capserv.workers.WorkerPool")
_orphan_log = Logger(namespace="capserv.workers.OrphanWatch")
_figures_log = Logger(namespace=FIGURES_NAMESPACE)

Figures = dict[str, Any]


def process_figures(factory: UppercaseFactory, datagrams: DatagramState) -> Figures:
    """One process's counters, as `add_figures` adds them and `capserv.site.metrics` reads them."""
    return {"tcp": factory.snapshot(), "udp": datagrams.snapshot(), "workers": 1}


def add_figures(total: Figures, more: Figures, gauges: bool = True) -> Figures:
    """Two processes' figures added; ``gauges`` false leaves ``more``'s gauges out (a worker gone)."""
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = add_figures(out.get(key, {}), value, gauges)
        elif gauges or key not in GAUGES:
            out[key] = out.get(key, 0) + value
    return out


class _Worker(ProcessProtocol):
    """One worker's lines, relayed; reaped when its stdout ends (under uvloop Twisted may miss SIGCHLD)."""

    def __init__(self, pool: WorkerPool, slot: int, started: float) -> None:
        self.pool, self.slot, self.started = pool, slot, started
        self.ended, self.pid = False, 0
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803 - Twisted's name
        *lines, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
        for line in lines:
            if line.strip():
                self.pool.relay(self, line, childFD == 2)

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N803 - Twisted's name
        if childFD == 1:
            self._reap()

    def _reap(self, tries: int = 50) -> None:
        if self.ended or self.transport is None or self.transport.pid is None:
            return  # reaped already
        self.transport.reapProcess()  # type: ignore[attr-defined]
        if not self.ended and tries > 0:  # the pipe may close an instant before the exit
            self.pool.reactor.callLater(0.1, self._reap, tries - 1)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.pool.ended(self, getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None))


class WorkerPool(Service):
    """
    Keep ``count - 1`` workers running, each given ``settings`` (`Settings.for_workers`)
    and ``sockets`` from `FIRST_SOCKET` on; a stop waits ``stop_timeout`` seconds, then kills.
    """

    #: `capserv.daemon.service.CapservService` drains its own connections meanwhile.
    stops_in_parallel = True

    def __init__(self, count: int, settings: str, reactor: Any, stop_timeout: float, sockets: Sequence[int]) -> None:
        self.count, self.settings, self.reactor, self.stop_timeout = count, settings, reactor, stop_timeout
        self.sockets = list(sockets)
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        #: Each running worker's latest figures, and the counters of workers gone.
        self.figures: dict[int, Figures] = {}
        self.retired: Figures = {}
        self._backoff: dict[int, float] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._stopped: Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        pids = [self._spawn(slot) for slot in range(1, self.count)]
        _pool_log.info(
            f"Started {plural(len(pids), 'more worker')}: {', '.join(map(str, pids))}", workers=len(pids), pids=pids
        )

    def _spawn(self, slot: int) -> int:
        self._pending.pop(slot, None)
        worker = _Worker(self, slot, self.reactor.seconds())
        env = dict(os.environ, **{WORKER_VARIABLE: str(slot), SETTINGS_VARIABLE: self.settings})
        fds: dict[int, Any] = {1: "r", 2: "r", **{FIRST_SOCKET + i: fd for i, fd in enumerate(self.sockets)}}
        with open(os.devnull, "rb") as devnull:
            fds[0] = devnull.fileno()
            program = "from capserv.daemon.workers import main; main()"
            transport = self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-c", program], env, childFDs=fds
            )
        self.workers[slot] = (worker, transport)
        worker.pid = transport.pid
        return worker.pid

    def relay(self, worker: _Worker, line: bytes, error: bool = False) -> None:
        """Log a worker's JSON event here (any other line, a crash, as is); keep its figures."""
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
        level = {one.name: one for one in LogLevel.iterconstants()}.get(str(record.pop("level", "")), LogLevel.info)
        text = str(record.pop("text", ""))
        fields = {k: v for k, v in record.items() if not k.startswith("log_") and k not in ("time", "format", "level")}
        fields["worker"] = worker.slot
        Logger(namespace=namespace).emit(level, "{text}", text=text, log_system=f"worker {worker.slot}", **fields)

    def total(self, own: Figures) -> Figures:
        """``own`` figures plus every worker's latest and those of workers gone (no counter goes down)."""
        total = add_figures(own, self.retired)
        for figures in self.figures.values():
            total = add_figures(total, figures)
        return total

    def ended(self, worker: _Worker, code: int | None, signum: int | None) -> None:
        """A worker exited: count it out of a stop, or replace it after a backoff."""
        self.workers.pop(worker.slot, None)
        last = self.figures.pop(worker.slot, None)
        if last is not None:
            self.retired = add_figures(self.retired, last, gauges=False)
        if self._stopped is not None:
            if not self.workers:
                self._finish_stop()
            return
        lived = self.reactor.seconds() - worker.started
        delay = 0.5 if lived >= STABLE_AFTER else min(MAX_BACKOFF, self._backoff.get(worker.slot, 0.25) * 2)
        self._backoff[worker.slot] = delay
        _pool_log.error(
            "Worker {slot} (pid {pid}) exited with {how} after {lived:.1f}s; starting another in {delay:g}s",
            slot=worker.slot,
            pid=worker.pid,
            how=f"signal {signum}" if signum else f"status {code}",
            lived=lived,
            delay=delay,
        )
        self._pending[worker.slot] = self.reactor.callLater(delay, self._replace, worker.slot)

    def _replace(self, slot: int) -> None:
        _pool_log.info("Started worker {slot} again: pid {pid}", slot=slot, pid=self._spawn(slot))

    def force(self, signum: int = FORCE_SIGNAL) -> None:
        """Signal every worker: by default to abort its connections (a second stop signal)."""
        for _, transport in list(self.workers.values()):
            with suppress(ProcessExitedAlready, OSError):
                transport.signalProcess(signum)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        for call in self._pending.values():
            call.cancel()  # each is popped as it runs
        self._pending.clear()
        if not self.workers:
            self.close_sockets()
            return succeed(None)
        self._stopped = Deferred()
        self.force(signal.SIGTERM)
        self._kill_call = self.reactor.callLater(self.stop_timeout, self._kill)
        return self._stopped

    def _kill(self) -> None:
        _pool_log.warn("Killing {n} workers that did not stop in time", n=len(self.workers))
        self.force(signal.SIGKILL)

    def close_sockets(self) -> None:
        sockets, self.sockets = self.sockets, []
        for fd in sockets:
            os.close(fd)

    def _finish_stop(self) -> None:
        self.close_sockets()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        stopped, self._stopped = self._stopped, None
        stopped.callback(None)  # type: ignore[union-attr]


class OrphanWatch(TimerService):
    """In a worker: stop once the supervisor has gone, so no worker outlives it."""

    def __init__(self, reactor: Any, interval: float = 0.5) -> None:
        super().__init__(interval, self._check)  # type: ignore[no-untyped-call]
        self.clock = self.reactor = reactor
        self._parent = os.getppid()

    def _check(self) -> None:
        if os.getppid() != self._parent:
            _orphan_log.warn("The supervising process {pid} has gone; stopping", pid=self._parent)
            self.stopService()  # type: ignore[no-untyped-call]
            with suppress(ReactorNotRunning):  # stopping already: that stop goes on
                self.reactor.stop()


class FigureReport(Service):
    """A worker's figures down the log pipe each ``interval`` and once after the stop, for ``--metrics``."""

    def __init__(
        self, factory: UppercaseFactory, datagrams: DatagramState, reactor: Any, interval: float = 1.0
    ) -> None:
        self.factory, self.datagrams, self.reactor, self.interval = factory, datagrams, reactor, interval
        self._loop = LoopingCall(self.report)
        self._loop.clock = reactor

    def report(self) -> None:
        _figures_log.info("figures", figures=process_figures(self.factory, self.datagrams))

    def startService(self) -> None:
        Service.startService(self)
        self._loop.start(self.interval, now=True)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.finish)

    def finish(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.report()


def main() -> None:
    """A worker: serve the settings and sockets its supervisor handed it, logging JSON lines on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor only
    from twisted.logger import globalLogBeginner

    from capserv.daemon.logs import json_lines
    from capserv.daemon.options import Settings, build_service
    from capserv.daemon.system import choose_reactor

    settings = Settings.of_worker(os.environ.pop(SETTINGS_VARIABLE), int(os.environ.pop(WORKER_VARIABLE)))
    reactor = choose_reactor(settings.uvloop, settings.reactor)
    globalLogBeginner.beginLoggingTo([json_lines()], redirectStandardIO=False)
    service = build_service(settings, reactor, range(FIRST_SOCKET, FIRST_SOCKET + len(settings.listen)))
    service.takes_signals = True
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
