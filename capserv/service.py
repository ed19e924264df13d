"""
The daemon's service: every listener of one capserv, and its graceful stop.

`CapservService` is a `MultiService` of listener services (and, with
``--workers``, the worker supervisor).  Stopping it stops every listener at
once (new connections are refused), lets open connections finish for up to
``shutdown_timeout`` seconds, then closes the rest.  A second SIGINT or
SIGTERM during that wait aborts what is left at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from capserv._internals import clear_exit_signal
from capserv._version import __version__
from capserv.config import CapservConfig
from capserv.listen import ListenError
from capserv.reactor import describe_reactor
from capserv.rlimits import raise_file_limit
from capserv.tcp import UppercaseFactory
from capserv.udp import DatagramState

__all__ = ["CapservService", "StartError", "fatal", "plural"]

#: The signals that ask for a stop; a second one during the stop forces it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartError(Exception):
    """
    A listener could not start; the message is one line for the operator.
    """


def plural(count: int, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class CapservService(MultiService):
    """
    Every listener of one capserv, sharing one stream factory and one
    datagram state, with a graceful stop.
    """

    _log = Logger()

    def __init__(
        self, config: CapservConfig, factory: UppercaseFactory, datagrams: DatagramState, reactor: Any
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.config = config
        self.factory = factory
        self.datagrams = datagrams
        #: Called (no arguments) when a second signal forces the stop, after
        #: this process's own connections are aborted: the worker
        #: supervisor passes the signal on.
        self.on_force: list[Callable[[], None]] = []
        #: Set once a second signal has forced the stop.
        self.forced = False
        self._stopping = False

    def privilegedStartService(self) -> None:
        """
        Start every listener; if one fails, stop those started and exit
        with one line (`fatal`).
        """
        raise_file_limit(self.config.max_connections + 256)
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
        # Logged once the reactor runs, when its signal handlers are in
        # place: from this line on, SIGTERM means a graceful stop.
        self.reactor.callWhenRunning(
            self._log.info,
            "capserv {version} started ({reactor}, pid {pid})",
            version=__version__,
            pid=os.getpid(),
            reactor=describe_reactor(self.reactor),
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, wait for open connections (up to the shutdown
        timeout), then close the rest; a second stop signal meanwhile
        aborts them at once.
        """
        Service.stopService(self)
        self._stopping = True
        self._catch_second_signal()
        # Refuse at once anything accepted before the listeners are closed.
        self.factory.stop_accepting()
        listeners = DeferredList(
            [maybeDeferred(child.stopService) for child in reversed(list(self))], consumeErrors=True
        )
        return listeners.addCallback(self._drain).addCallback(self._stopped)

    def _drain(self, _: object) -> Deferred[None]:
        open_now = len(self.factory.connections)
        if open_now:
            self._log.info(
                "Stopping: no longer listening; {open} open, waiting up to {timeout:g}s for them to finish",
                open=plural(open_now, "connection"),
                count=open_now,
                timeout=self.config.shutdown_timeout,
            )
        return self.factory.drain(self.config.shutdown_timeout)

    def _stopped(self, _: object) -> Deferred[None]:
        # One turn later, so the last connection's close line comes first.
        def log() -> None:
            if not self.forced:
                clear_exit_signal(self.reactor)
            self._log.info(
                "capserv stopped: {tcp} and {udp} served{how}",
                tcp=plural(self.factory.stats.connections_total, "TCP connection"),
                udp=plural(self.datagrams.stats.datagrams_in, "datagram"),
                how=" (forced by a second signal)" if self.forced else "",
            )

        return deferLater(self.reactor, 0, log)

    def _catch_second_signal(self) -> None:
        """
        From now on a stop signal forces the stop instead of reaching the
        reactor, which is stopping already (and would log a
        ``ReactorNotRunning`` traceback).
        """

        def handler(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.force_stop, signum)

        for signum in STOP_SIGNALS:
            try:
                signal.signal(signum, handler)
            except (ValueError, OSError):  # not the main thread: embedding
                return

    def force_stop(self, signum: int | None = None) -> None:
        """
        Abort every open connection now, ending a graceful stop at once.
        """
        if self.forced or not self._stopping:
            return
        self.forced = True
        self._log.warn(
            "Second stop signal: aborting {open} now",
            open=plural(len(self.factory.connections), "open connection"),
        )
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
