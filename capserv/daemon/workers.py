"""
Process supervision for ``--workers N``: N processes serving the same ports.

The process twistd runs binds every listener with ``SO_REUSEPORT`` (so
``port 0`` becomes a real port), then `WorkerPool` starts the other N-1 as
``twistd capserv --worker`` children listening on the same concrete ports;
the kernel spreads connections and datagrams across them.  A worker that
exits is replaced, after a delay that doubles while it keeps dying.

Signals: a stop passes SIGTERM on to every worker and drains this process's
own connections meanwhile; a second stop signal sends each worker SIGUSR2,
which makes it abort its connections.  Workers ignore SIGINT and a repeated
SIGTERM, so a Ctrl-C to the whole process group, or a service manager
signalling every process of the service, is still one graceful stop.

Logs: workers log JSON lines to a pipe that this process reads and logs
again through its own observers (``--logfile``, ``--logger``), marked with
the worker's number, so every line of every process reaches one place whole.

Children are started with ``reactor.spawnProcess`` and watched by a
`ProcessProtocol`; a worker whose supervisor has gone stops by itself
(`OrphanWatch`).  Whoever needs to know that a worker exited (the metrics
of every worker, `capserv.site.metrics_multiprocess`) hears of it through
`WorkerPool.on_exit`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = [
    "FORCE_SIGNAL",
    "MAX_WORKERS_PER_CPU",
    "OrphanWatch",
    "WorkerPool",
    "reuse_port_supported",
    "worker_command",
    "worker_slot",
]

#: More workers than this many per CPU only add processes that wait.
MAX_WORKERS_PER_CPU = 8
#: What the supervisor sends its workers when a second signal forces a stop.
FORCE_SIGNAL = signal.SIGUSR2
#: The environment variable that makes a ``twistd capserv`` a worker: its
#: number (the supervisor is 0).
WORKER_VARIABLE = "CAPSERV_WORKER"

#: A worker's program: twistd, with SIGINT ignored (twistd then leaves it
#: ignored) so that a Ctrl-C reaches only the supervisor.
_RUN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


def worker_slot() -> int | None:
    """This process's worker number, or `None` if it is not a worker."""
    value = os.environ.get(WORKER_VARIABLE, "")
    return int(value) if value.isdigit() else None


def worker_command(capserv_args: list[str], reactor: str | None = None) -> list[str]:
    """
    The command line of a worker: twistd in the foreground, no pid file,
    JSON-lines logs on stdout for the supervisor, the supervisor's
    ``--reactor`` if it was given one, then ``capserv CAPSERV_ARGS``.
    """
    twistd = ["--nodaemon", "--pidfile=", "--logger=capserv.daemon.logs.json_lines"]
    if reactor:
        twistd.append(f"--reactor={reactor}")
    return [sys.executable, "-c", _RUN, *twistd, "capserv", *capserv_args]


#: The longest wait before replacing a worker that keeps dying.
MAX_BACKOFF = 30.0
#: A worker that lived this long before exiting resets the backoff.
STABLE_AFTER = 10.0


def reuse_port_supported() -> bool:
    """
    Tell whether this system offers ``SO_REUSEPORT`` with load balancing.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


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
    service runs.
    """

    #: `capserv.daemon.service.CapservService` drains its own connections while
    #: this stops, instead of after.
    stops_in_parallel = True

    def __init__(
        self,
        count: int,
        command: list[str],
        reactor: Any,
        stop_timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """
        :param command: the worker's command line (``argv``, first the
            program).
        :param stop_timeout: seconds a stop waits for workers before killing
            them.
        :param env: environment variables for the workers, beside this
            process's own.
        """
        self.count = count
        self.command = command
        self.reactor = reactor
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})
        #: Called with the pid of each worker that exits, whatever the
        #: reason, before it is replaced or counted out of a stop.
        self.on_exit: list[Callable[[int], None]] = []
        self.workers: dict[int, tuple[_Worker, Any]] = {}
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
        _pool_log.info(
            "Started {workers}: {pids}",
            workers=f"{len(pids)} more worker" + ("" if len(pids) == 1 else "s"),
            pids=", ".join(map(str, pids)),
        )

    def _spawn(self, slot: int) -> int:
        self._pending.pop(slot, None)
        worker = _Worker(self, slot, self.reactor.seconds())
        env = dict(os.environ, **self.env, **{WORKER_VARIABLE: str(slot)})
        with open(os.devnull, "rb") as devnull:
            transport = self.reactor.spawnProcess(
                worker, self.command[0], self.command, env=env, childFDs={0: devnull.fileno(), 1: "r", 2: "r"}
            )
        self.workers[slot] = (worker, transport)
        worker.pid = transport.pid
        return worker.pid

    def relay(self, worker: _Worker, line: bytes, error: bool = False) -> None:
        """
        Log one line of a worker's output through this process's observers:
        a JSON event (the worker's log) with its text, level and fields, or
        any other line (a crash on stderr) as an error.
        """
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(line)
        except ValueError:
            record = {"text": line.decode("utf-8", "replace"), "level": "error" if error else "info"}
        try:
            level = LogLevel.levelWithName(str(record.pop("level", "info")))
        except Exception:
            level = LogLevel.info
        namespace = str(record.pop("namespace", "capserv.worker"))
        text = str(record.pop("text", ""))
        fields = {k: v for k, v in record.items() if not k.startswith("log_") and k not in ("time", "format", "level")}
        fields["worker"] = worker.slot
        Logger(namespace=namespace).emit(level, "{text}", text=text, log_system=f"worker {worker.slot}", **fields)

    def ended(self, worker: _Worker, code: int | None, signum: int | None) -> None:
        """A worker exited: replace it, or count it out of a stop."""
        self.workers.pop(worker.slot, None)
        for callback in self.on_exit:
            callback(worker.pid)
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
            return succeed(None)
        self._stopped = Deferred()
        self.signal_all(signal.SIGTERM)
        self._kill_call = self.reactor.callLater(self.stop_timeout, self._kill)
        return self._stopped

    def _kill(self) -> None:
        self._kill_call = None
        _pool_log.warn("Killing {n} workers that did not stop in time", n=len(self.workers))
        self.signal_all(signal.SIGKILL)

    def _finish_stop(self) -> None:
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
