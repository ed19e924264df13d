"""
The daemon's service: every listener, readiness, and the stop: drain (not ready,
still serving), stop listening, wait up to ``--shutdown-timeout``, close the rest.
A second stop signal meanwhile aborts what is left at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.logger import Logger

from capserv._version import __version__
from capserv.daemon.listen import ListenError
from capserv.daemon.system import Notifier, notify_address, raise_file_limit
from capserv.native import asyncio_loop
from capserv.protocols._twisted import clear_exit_signal, record_exit_signal
from capserv.protocols.accesslog import flush_all
from capserv.protocols.config import CapservConfig
from capserv.protocols.logthrottle import literal
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = ["DRAINING", "READY", "STARTING", "STOPPING", "CapservService", "fatal", "plural"]

STARTING, READY, DRAINING, STOPPING = "starting", "ready", "draining", "stopping"

#: The signals that ask for a stop; a second one during the stop forces it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORCE_SIGNAL = signal.SIGUSR2

_log = Logger(namespace="capserv.service.CapservService")


def plural(count: int, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class CapservService(MultiService):
    """
    Every listener of one capserv, sharing one stream factory and one datagram state.
    ``worker``: a worker of ``--workers`` (no systemd notifications; forced by `FORCE_SIGNAL`).
    """

    def __init__(
        self,
        config: CapservConfig,
        factory: UppercaseFactory,
        datagrams: DatagramState,
        reactor: Any,
        drain_delay: float = 0.0,
        worker: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config, self.factory, self.datagrams, self.reactor = config, factory, datagrams, reactor
        self.drain_delay, self.worker = drain_delay, worker
        self.notifier: Notifier | None = None
        self.forced = False
        #: Whether to take SIGHUP (a graceful stop) and SIGUSR1: the daemon's, not an embedding program's.
        self.takes_signals = False
        self._stopping = self._force_pending = self._listening = False
        self._drain: Deferred[None] | None = None

    @property
    def state(self) -> str:
        if self._stopping:
            return STOPPING if self._drain is None else DRAINING
        return READY if self._listening and all(child.running for child in self) else STARTING

    @property
    def ready(self) -> bool:
        return self.state == READY

    def privilegedStartService(self) -> None:
        """Start every listener, or exit with one line (`fatal`) having stopped those started."""
        limit = raise_file_limit(self.config.max_connections + 256)
        if limit < self.config.max_connections:
            _log.warn(
                "The open-file limit is {limit}: about {most} connections at once, below --max-connections "
                "{max_connections}; raise it (ulimit -n, LimitNOFILE= in the unit) or lower --max-connections",
                limit=limit,
                most=max(limit - 256, 0),
                max_connections=self.config.max_connections,
            )
        started = []
        try:
            for child in self:
                child.privilegedStartService()
                started.append(child)
        except (CannotListenError, ListenError, OSError) as e:
            for child in started:
                child.stopService()
            fatal("capserv: " + " ".join((str(e) or type(e).__name__).split()))

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.worker:
            self._install(FORCE_SIGNAL, self._forced_by_supervisor)
        if self.notifier is None:
            self.notifier = Notifier(None if self.worker else notify_address())
        self.reactor.callWhenRunning(self._reactor_running)

    def _reactor_running(self) -> None:
        loop = asyncio_loop(self.reactor)
        _log.info(
            "capserv {version} started ({reactor}, pid {pid})",
            version=__version__,
            pid=os.getpid(),
            reactor=type(self.reactor).__name__
            + (f" on {type(loop).__module__}.{type(loop).__name__}" if loop else ""),
        )
        if self._stopping:
            return
        if self.takes_signals:
            self._take_signals()
        self._listening = True
        self._notify(READY="1", STATUS=f"Serving (capserv {__version__}, pid {os.getpid()})")

    def _notify(self, **fields: str) -> None:
        if self.notifier is not None:
            self.notifier.notify(**fields)

    def stopService(self) -> Deferred[None]:
        """Drain, stop listening, wait for open connections, close the rest; fires once done."""
        Service.stopService(self)
        self._stopping = True
        self._catch_second_signal()
        parallel = [c for c in self if getattr(c, "stops_in_parallel", False)]
        others = [maybeDeferred(child.stopService) for child in parallel]
        listeners = [child for child in reversed(list(self)) if child not in parallel]
        if self.drain_delay > 0:
            _log.info(
                "Draining: not ready; still serving for {delay:g}s (--drain-delay), then stopping",
                delay=self.drain_delay,
            )
            status = f"Draining: not ready, still serving for {self.drain_delay:g}s, then stopping"
            self._notify(STOPPING="1", STATUS=status)
            self._drain = deferLater(self.reactor, self.drain_delay)
            own = self._drain.addErrback(lambda f: f.trap(CancelledError)).addCallback(self._stop_listening, listeners)
        else:
            self._notify(STOPPING="1", STATUS="Stopping: waiting for open connections to finish")
            own = self._stop_listening(None, listeners)
        if self._force_pending:
            self.force_stop()
        return DeferredList([own, *others], consumeErrors=True).addCallback(self._stopped)

    def _stop_listening(self, _: object, listeners: list[Any]) -> Deferred[None]:
        self._drain = None
        self.factory.stop_accepting()  # refuse anything accepted before the listeners close
        stopped = DeferredList([maybeDeferred(child.stopService) for child in listeners], consumeErrors=True)
        return stopped.addCallback(self._wait_for_connections)

    def _wait_for_connections(self, _: object) -> Deferred[None]:
        open_now = len(self.factory.connections) - self.factory.connections.abort_reset()
        if open_now:
            timeout, them = self.config.shutdown_timeout, "it" if open_now == 1 else "them"
            _log.info(
                literal(
                    f"Stopping: no longer listening; {plural(open_now, 'connection')} open, "
                    f"waiting up to {timeout:g}s for {them} to finish"
                ),
                open=open_now,
                timeout=timeout,
            )
        return self.factory.drain(self.config.shutdown_timeout)

    def _stopped(self, _: object) -> Deferred[None]:
        # One turn later, so the last connection's close line comes first.
        return deferLater(self.reactor, 0, self._log_stop)

    def _log_stop(self) -> None:
        if not self.forced:
            clear_exit_signal(self.reactor)
        refused = sum(self.factory.stats.connections_refused.values())
        dropped = sum(self.datagrams.stats.drops.values())
        served, answered = self.factory.stats.connections_total, self.datagrams.stats.datagrams_out
        away = [f"{plural(refused, 'connection')} refused"] if refused else []
        away += [f"{plural(dropped, 'datagram')} dropped"] if dropped else []
        shared = self.worker or any(getattr(child, "stops_in_parallel", False) for child in self)
        text = (
            f"capserv stopped: {plural(served, 'TCP connection')} served and {plural(answered, 'datagram')} answered"
            + (f", {' and '.join(away)} (metrics say why)" if away else "")
            + (" by this process" if shared else "")
            + (" (forced by a second signal)" if self.forced else "")
        )
        # The text goes in the format, the counts as fields: a field is a value, never a fragment.
        _log.info(
            literal(text),
            tcp_connections=served,
            datagrams_answered=answered,
            connections_refused=refused,
            datagrams_dropped=dropped,
            forced=self.forced,
        )
        flush_all()

    def _take_signals(self) -> None:
        """SIGHUP stops as SIGTERM does (a worker's: only via its supervisor); SIGUSR1 without a log file is ignored."""
        if not signal.getsignal(signal.SIGUSR1):
            self._install(signal.SIGUSR1, lambda: None)
        if self.worker:
            self._install(signal.SIGHUP, lambda: None)
            self._install(signal.SIGTERM, self._stop_reactor)
        else:
            self._install(signal.SIGHUP, self._hang_up)

    def _hang_up(self) -> None:
        if not self._stopping:
            _log.info("Received SIGHUP, shutting down gracefully (as for SIGTERM)")
            record_exit_signal(self.reactor, signal.SIGHUP)
            self._stop_reactor()

    def _stop_reactor(self, unless_stopping: bool = False) -> None:
        if unless_stopping and self._stopping:
            return
        with suppress(ReactorNotRunning):
            self.reactor.stop()

    def _catch_second_signal(self) -> None:
        """A stop signal now forces the stop; in a worker only `FORCE_SIGNAL` does (a group's signal may follow)."""
        for signum in STOP_SIGNALS:
            self._install(signum, (lambda: None) if self.worker else self.force_stop)

    def _install(self, signum: int, action: Callable[[], None]) -> None:
        with suppress(ValueError, OSError):  # not the main thread: embedding
            signal.signal(signum, lambda number, frame: self.reactor.callFromThread(action))

    def _forced_by_supervisor(self) -> None:
        if self._stopping:
            self.force_stop()
        else:
            # The supervisor's SIGTERM is normally queued: force once it begins, or stop here.
            self._force_pending = True
            self.reactor.callLater(0.5, self._stop_reactor, True)

    def force_stop(self) -> None:
        """Abort every open connection now, ending a drain or a graceful stop at once."""
        if self.forced or not self._stopping:
            return
        self.forced = True
        open_now = len(self.factory.connections)
        _log.warn(literal(f"Second stop signal: aborting {plural(open_now, 'open connection')} now"), open=open_now)
        if self._drain is not None:
            self._drain.cancel()
        for child in self:
            if getattr(child, "stops_in_parallel", False):
                child.force()  # a worker supervisor passes it on
        self.factory.abort_all()


def fatal(message: str) -> NoReturn:
    """Exit with one line, also on the terminal's own stderr once twistd sends ``sys.stderr`` to the log."""
    real = sys.__stderr__
    if real is not None and sys.stderr is not real:
        real.write(message + "\n")
        real.flush()
    raise SystemExit(message)
