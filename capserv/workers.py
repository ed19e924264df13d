"""
Process supervision for ``--workers N``: N processes serving the same ports.

The process twistd runs binds every listener with ``SO_REUSEPORT`` (so
``port 0`` becomes a real port), then `WorkerPool` starts the other N-1 as
``twistd capserv --worker`` children listening on the same concrete ports;
the kernel spreads connections and datagrams across them.  A worker that
exits is replaced, after a delay that doubles while it keeps dying; a stop
passes SIGTERM on to every worker and waits for them, and a second stop
signal passes a second SIGTERM on (which makes each worker abort its
connections).  Children are started with ``reactor.spawnProcess`` and
watched by a `ProcessProtocol`; a worker whose parent has gone stops by
itself (`OrphanWatch`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["OrphanWatch", "WorkerPool", "reuse_port_supported"]

#: The longest wait before replacing a worker that keeps dying.
MAX_BACKOFF = 30.0
#: A worker that lived this long before exiting resets the backoff.
STABLE_AFTER = 10.0


def reuse_port_supported() -> bool:
    """
    Tell whether this system offers ``SO_REUSEPORT`` with load balancing.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


#: The descriptor a worker holds open for as long as it lives: its closing
#: tells the supervisor the worker has exited.
LIFELINE_FD = 3


class _Worker(ProcessProtocol):
    """
    One child worker: reports its end to the pool.

    Twisted learns that a child exited from SIGCHLD, which the asyncio
    reactor on uvloop does not always see (uvloop takes the signal wakeup
    descriptor for itself).  So every worker also holds a pipe, the
    lifeline, whose end-of-file when the worker exits makes this protocol
    reap it at once (retrying for the instant between the pipe closing and
    the process becoming reapable).
    """

    def __init__(self, pool: WorkerPool, slot: int, started: float) -> None:
        self.pool = pool
        self.slot = slot
        self.started = started
        self.ended = False

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N803 - Twisted's name
        if childFD == LIFELINE_FD:
            self._reap()

    def _reap(self, tries: int = 50) -> None:
        if self.ended or self.transport is None:
            return
        self.transport.reapProcess()  # type: ignore[attr-defined]
        if not self.ended and tries > 0:
            self.pool.reactor.callLater(0.1, self._reap, tries - 1)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        self.pool.ended(self, code, signum)


class WorkerPool(Service):
    """
    Keep ``count - 1`` worker processes running beside this one while the
    service runs.
    """

    _log = Logger()

    def __init__(self, count: int, command: list[str], reactor: Any, stop_timeout: float) -> None:
        """
        :param command: the worker's command line (``argv``, first the
            program).
        :param stop_timeout: seconds a stop waits for workers before killing
            them.
        """
        self.count = count
        self.command = command
        self.reactor = reactor
        self.stop_timeout = stop_timeout
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
        self._log.info("Started {n} more workers: {pids}", n=len(pids), pids=", ".join(map(str, pids)))

    def _spawn(self, slot: int) -> None:
        self._pending.pop(slot, None)
        worker = _Worker(self, slot, self.reactor.seconds())
        with open(os.devnull, "rb") as devnull:
            transport = self.reactor.spawnProcess(
                worker,
                self.command[0],
                self.command,
                env=None,
                childFDs={0: devnull.fileno(), 1: 1, 2: 2, LIFELINE_FD: "r"},
            )
        self.workers[slot] = (worker, transport)

    def ended(self, worker: _Worker, code: int | None, signum: int | None) -> None:
        """A worker exited: replace it, or count it out of a stop."""
        self.workers.pop(worker.slot, None)
        how = f"signal {signum}" if signum else f"status {code}"
        if self._stopped is not None:
            if not self.workers:
                self._finish_stop()
            return
        lived = self.reactor.seconds() - worker.started
        delay = 0.5 if lived >= STABLE_AFTER else min(MAX_BACKOFF, self._backoff.get(worker.slot, 0.25) * 2)
        self._backoff[worker.slot] = delay
        self.restarts += 1
        self._log.error(
            "Worker {slot} exited with {how} after {lived:.1f}s; starting another in {delay:g}s",
            slot=worker.slot,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._pending[worker.slot] = self.reactor.callLater(delay, self._spawn, worker.slot)

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
        self._log.warn("Killing {n} workers that did not stop in time", n=len(self.workers))
        self.signal_all(signal.SIGKILL)

    def _finish_stop(self) -> None:
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)


class OrphanWatch(Service):
    """
    In a worker: stop when the process that started it has gone, so no
    worker outlives its supervisor.
    """

    _log = Logger()

    def __init__(self, reactor: Any, interval: float = 1.0) -> None:
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
            self._log.warn("The supervising process {pid} has gone; stopping", pid=self._parent)
            assert self._loop is not None
            self._loop.stop()
            self._loop = None
            self.reactor.stop()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
