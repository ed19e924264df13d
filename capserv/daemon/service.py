"""
The daemon's service: every listener of one capserv, its readiness, and its
graceful stop.

`CapservService` is a `MultiService` of listener services (and, with
``--workers``, the worker supervisor).  Stopping it first drains, if asked
to (``drain_delay``: readiness turns "not ready" while every listener goes
on accepting and serving, so that a load balancer takes the instance out
before it stops listening), then stops every listener at once (new
connections are refused), lets open connections finish for up to
``shutdown_timeout`` seconds, and closes the rest.  A second SIGINT or
SIGTERM during the drain or that wait aborts what is left at once.

Its `CapservService.state` is what ``/readyz`` reports
(`capserv.site.health`, loaded only with ``--metrics``), and under systemd it tells the service manager when it
is ready and when it stops (`capserv.daemon.sdnotify`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger

from capserv._version import __version__
from capserv.daemon.listen import ListenError
from capserv.daemon.reactor import describe_reactor
from capserv.daemon.rlimits import raise_file_limit
from capserv.daemon.sdnotify import Notifier, notify_address
from capserv.daemon.workers import FORCE_SIGNAL
from capserv.protocols._twisted import clear_exit_signal, record_exit_signal
from capserv.protocols.accesslog import flush_all
from capserv.protocols.config import CapservConfig
from capserv.protocols.logthrottle import literal
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = ["DRAINING", "READY", "STARTING", "STOPPING", "CapservService", "StartError", "fatal", "plural"]

#: Listeners are bound; the reactor has not run yet.
STARTING = "starting"
#: Every listener is listening and no stop has begun.
READY = "ready"
#: A stop has begun: serving on, for ``--drain-delay``, while not ready.
DRAINING = "draining"
#: The graceful stop: listeners closed, open connections finishing.
STOPPING = "stopping"

#: The signals that ask for a stop; a second one during the stop forces it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StartError(Exception):
    """
    A listener could not start; the message is one line for the operator.
    """


def plural(count: int, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


#: CapservService's logger, under the namespace operators filter on.
_log = Logger(namespace="capserv.service.CapservService")


class CapservService(MultiService):
    """
    Every listener of one capserv, sharing one stream factory and one
    datagram state, with a drain and a graceful stop.
    """

    def __init__(
        self,
        config: CapservConfig,
        factory: UppercaseFactory,
        datagrams: DatagramState,
        reactor: Any,
        drain_delay: float = 0.0,
        notifier: Notifier | None = None,
        worker: bool = False,
    ) -> None:
        """
        :param drain_delay: seconds a stop keeps accepting and serving,
            while `state` says `DRAINING`, before it stops
            listening (``--drain-delay``; 0: stop listening at once).
        :param notifier: where to tell systemd of readiness and the stop;
            by default the socket ``NOTIFY_SOCKET`` names, except in a
            worker of ``--workers`` (only the main process notifies).
        :param worker: a worker of ``--workers``: its supervisor forces a
            stop with `capserv.daemon.workers.FORCE_SIGNAL`; stop signals it
            gets directly as well as from the supervisor count once.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.config = config
        self.factory = factory
        self.datagrams = datagrams
        self.drain_delay = drain_delay
        self.notifier = notifier
        #: Called (no arguments) when a second signal forces the stop, after
        #: this process's own connections are aborted: the worker
        #: supervisor passes the signal on.
        self.on_force: list[Callable[[], None]] = []
        #: Set once a second signal has forced the stop.
        self.forced = False
        self.worker = worker
        #: Whether the running service takes SIGHUP (a graceful stop) and
        #: SIGUSR1 (rotation, ignored where there is no file to rotate):
        #: the daemon's, not an embedding program's.
        self.takes_signals = False
        self._stopping = False
        self._force_pending = False
        self._listening = False
        self._drain_call: IDelayedCall | None = None
        self._drain_over: Deferred[None] | None = None

    @property
    def state(self) -> str:
        """
        Where the service is: `STARTING` until the reactor runs with every
        listener listening, then `READY`; once a stop has begun `DRAINING`
        for the drain delay, then `STOPPING`.
        """
        if self._drain_call is not None:
            return DRAINING
        if self._stopping:
            return STOPPING
        if self._listening and all(child.running for child in self):
            return READY
        return STARTING

    @property
    def ready(self) -> bool:
        """Whether `state` is `READY`: what ``/readyz`` answers 200 for."""
        return self.state == READY

    def privilegedStartService(self) -> None:
        """
        Start every listener; if one fails, stop those started and exit
        with one line (`fatal`).
        """
        wanted = self.config.max_connections + 256
        limit = raise_file_limit(wanted)
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
        except (CannotListenError, ListenError, OSError, StartError) as e:
            for child in started:
                child.stopService()
            fatal(f"capserv: {_one_line(e)}")

    def startService(self) -> None:
        # Children are already listening; only mark them running.
        Service.startService(self)
        for child in self:
            if not child.running:
                child.startService()
        if self.worker:
            self._install(FORCE_SIGNAL, self._forced_by_supervisor)
        if self.notifier is None:
            self.notifier = Notifier(None if self.worker else notify_address())
        self.reactor.callWhenRunning(self._reactor_running)

    def _reactor_running(self) -> None:
        """
        The reactor runs, with every listener listening: log the start line
        (from this line on, SIGTERM means a graceful stop: the reactor's
        signal handlers are in place), and tell systemd.
        """
        _log.info(
            "capserv {version} started ({reactor}, pid {pid})",
            version=__version__,
            pid=os.getpid(),
            reactor=describe_reactor(self.reactor),
        )
        if self._stopping:
            return
        if self.takes_signals:
            self._take_signals()
        self._listening = True
        if self.notifier is not None:
            self.notifier.notify(READY="1", STATUS=f"Serving (capserv {__version__}, pid {os.getpid()})")

    def stopService(self) -> Deferred[None]:
        """
        Drain for the drain delay (not ready, still serving), then stop
        listening, wait for open connections (up to the shutdown timeout)
        and close the rest; a second stop signal meanwhile aborts them at
        once.

        :return: a `Deferred` that fires once all that is done: twistd
            calls this from a "before shutdown" trigger, so the reactor
            runs, and serves, until then.
        """
        Service.stopService(self)
        self._stopping = True
        self._catch_second_signal()
        children = list(self)
        parallel = [c for c in children if getattr(c, "stops_in_parallel", False)]
        # Those stop at once, alongside (the worker supervisor passes the
        # stop on to its workers, which drain as this process does).
        others = [maybeDeferred(child.stopService) for child in parallel]
        listeners = [child for child in reversed(children) if child not in parallel]
        if self.drain_delay > 0:
            own = self._drain_first().addCallback(lambda _: self._stop_listening(listeners))
        else:
            self._notify_stopping("Stopping: waiting for open connections to finish")
            own = self._stop_listening(listeners)
        if self._force_pending:
            self.force_stop()
        return DeferredList([own, *others], consumeErrors=True).addCallback(self._stopped)

    def _drain_first(self) -> Deferred[None]:
        """
        Report "not ready" and keep serving for the drain delay.

        :return: a `Deferred` that fires when the delay is over, or when a
            second signal cuts it short (`force_stop`).
        """
        _log.info(
            "Draining: not ready; still serving for {delay:g}s (--drain-delay), then stopping",
            delay=self.drain_delay,
        )
        self._notify_stopping(f"Draining: not ready, still serving for {self.drain_delay:g}s, then stopping")
        self._drain_over = Deferred()
        self._drain_call = self.reactor.callLater(self.drain_delay, self._end_drain)
        return self._drain_over

    def _end_drain(self) -> None:
        """End the drain (its delay is over, or a stop is forced)."""
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()
        over, self._drain_over = self._drain_over, None
        if over is not None:
            over.callback(None)

    def _notify_stopping(self, status: str) -> None:
        if self.notifier is not None:
            self.notifier.notify(STOPPING="1", STATUS=status)

    def _stop_listening(self, listeners: list[Any]) -> Deferred[None]:
        """Stop every listener, then wait for the open connections."""
        # Refuse at once anything accepted before the listeners are closed.
        self.factory.stop_accepting()
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
        def log() -> None:
            if not self.forced:
                clear_exit_signal(self.reactor)
            refused = sum(self.factory.stats.connections_refused.values())
            dropped = sum(self.datagrams.stats.drops.values())
            turned_away = []
            if refused:
                turned_away.append(f"{plural(refused, 'connection')} refused")
            if dropped:
                turned_away.append(f"{plural(dropped, 'datagram')} dropped")
            shared = self.worker or any(getattr(child, "stops_in_parallel", False) for child in self)
            away = f", {' and '.join(turned_away)} (metrics say why)" if turned_away else ""
            whose = " by this process" if shared else ""
            how = " (forced by a second signal)" if self.forced else ""
            served, answered = self.factory.stats.connections_total, self.datagrams.stats.datagrams_out
            text = (
                f"capserv stopped: {plural(served, 'TCP connection')} served and "
                f"{plural(answered, 'datagram')} answered{away}{whose}{how}"
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

        return deferLater(self.reactor, 0, log)

    def _take_signals(self) -> None:
        """
        SIGHUP (a closed terminal, or an operator) stops gracefully, as
        SIGTERM does; SIGUSR1 with no log file to rotate (standard output,
        a worker's pipe) is ignored rather than ending the process.
        """
        if not signal.getsignal(signal.SIGUSR1):
            self._install(signal.SIGUSR1, lambda: None)
        if self.worker:
            # The supervisor passes a stop on; a hang-up reaches it too.
            self._install(signal.SIGHUP, lambda: None)
        else:
            self._install(signal.SIGHUP, self._hang_up)

    def _hang_up(self) -> None:
        if self._stopping:
            return
        _log.info("Received SIGHUP, shutting down gracefully (as for SIGTERM)")
        record_exit_signal(self.reactor, signal.SIGHUP)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _catch_second_signal(self) -> None:
        """
        From now on a stop signal forces the stop instead of reaching the
        reactor, which is stopping already (and would log a
        ``ReactorNotRunning`` traceback).
        """

        if self.worker:
            # The supervisor's SIGTERM may follow one sent to every process
            # of the service: only FORCE_SIGNAL forces a worker's stop.
            for signum in STOP_SIGNALS:
                self._install(signum, lambda: None)
            return
        for signum in STOP_SIGNALS:
            self._install(signum, self.force_stop)

    def _install(self, signum: int, action: Callable[[], None]) -> None:
        """Run ``action`` in the reactor's thread when ``signum`` arrives."""

        def handler(number: int, frame: object) -> None:
            self.reactor.callFromThread(action)

        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread: embedding
            pass

    def _forced_by_supervisor(self) -> None:
        if self._stopping:
            self.force_stop()
        else:
            # Force as soon as the stop begins.  The supervisor's SIGTERM
            # came first and the reactor's own stop for it is normally
            # queued already; stop here only if, a moment later, none has
            # begun (stopping twice would log ReactorNotRunning).
            self._force_pending = True
            self.reactor.callLater(0.5, self._stop_if_not_stopping)

    def _stop_if_not_stopping(self) -> None:
        if not self._stopping:
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass

    def force_stop(self) -> None:
        """
        Abort every open connection now, ending a drain or a graceful stop
        at once.
        """
        if self.forced or not self._stopping:
            return
        self.forced = True
        open_now = len(self.factory.connections)
        _log.warn(literal(f"Second stop signal: aborting {plural(open_now, 'open connection')} now"), open=open_now)
        # Stop listening first, so nothing new arrives once all is aborted.
        self._end_drain()
        for callback in self.on_force:
            callback()
        self.factory.abort_all()


def fatal(message: str) -> NoReturn:
    """
    End the program with one line for the person who started it.

    Once twistd has started logging, ``sys.stderr`` goes to the log (with
    ``--logfile``, only there): the line is written to the terminal's own
    stderr as well, then `SystemExit` puts it in the log and exits with
    status 1.
    """
    real = sys.__stderr__
    if real is not None and sys.stderr is not real:
        real.write(message + "\n")
        real.flush()
    raise SystemExit(message)


def _one_line(e: BaseException) -> str:
    if isinstance(e, CannotListenError) and isinstance(e.socketError, ListenError):
        return str(e.socketError)
    text = str(e) or type(e).__name__
    return " ".join(text.split())
