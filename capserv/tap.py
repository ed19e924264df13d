"""
The ``twistd capserv`` command line: `Options` and `makeService`.

Options are turned into one `CapservConfig` here and handed to the
factories; nothing else reads the command line.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from capserv._internals import clear_exit_signal
from capserv._version import __version__
from capserv.config import CapservConfig, ConfigError
from capserv.listen import (
    DEFAULT_LISTEN,
    DatagramListener,
    ListenError,
    StreamListener,
    check_stream_description,
    is_udp,
    parse_udp,
)
from capserv.reactor import global_reactor
from capserv.tcp import UppercaseFactory
from capserv.udp import UppercaseDatagramProtocol

__all__ = ["CapservService", "Options", "makeService"]

_DEFAULTS = CapservConfig()


def _number(option: str, kind: type, minimum: float = 0) -> Callable[[str], Any]:
    """
    A coercer for a numeric option whose errors name the option (Twisted's
    own message does not).
    """

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--{option}: {value!r} is not a {'whole ' if kind is int else ''}number") from None
        if number != number or number < minimum:
            raise ValueError(f"--{option}: {value!r} must be >= {minimum:g}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """
    Command-line options for ``twistd capserv``.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the uppercase service: whatever a client sends, over TCP or UDP, "
        "comes back in capitals. With no --listen, serves TCP and UDP on "
        "127.0.0.1 port 50007. Zero turns a limit, timeout or rate off."
    )

    optFlags = [
        ["ascii", None, "Uppercase only a-z and leave every other byte alone (fastest)."],
        ["udp-allow-low-ports", None, "Answer datagrams from source ports below 1024 (off by default: loop guard)."],
        ["udp-rate-loopback", None, "Apply --udp-rate to loopback sources too (exempt by default)."],
    ]

    optParameters = [
        ["encoding", None, _DEFAULTS.encoding, "Text encoding of client bytes (any Python codec).", str],
        [
            "idle-timeout",
            None,
            _DEFAULTS.idle_timeout,
            "Seconds without traffic before a TCP connection is closed.",
            _number("idle-timeout", float),
        ],
        [
            "abort-grace",
            None,
            _DEFAULTS.abort_grace,
            "Seconds a closing connection gets to take its last bytes before it is aborted.",
            _number("abort-grace", float),
        ],
        [
            "max-connections",
            None,
            _DEFAULTS.max_connections,
            "Most TCP connections open at once.",
            _number("max-connections", int),
        ],
        [
            "max-connections-per-ip",
            None,
            _DEFAULTS.max_connections_per_ip,
            "Most TCP connections open at once from one IP address.",
            _number("max-connections-per-ip", int),
        ],
        [
            "high-water",
            None,
            _DEFAULTS.high_water,
            "Unsent reply bytes per connection past which reading pauses.",
            _number("high-water", int, 1),
        ],
        [
            "udp-rate",
            None,
            _DEFAULTS.udp_rate,
            "Datagrams per second answered per source address.",
            _number("udp-rate", float),
        ],
        [
            "udp-burst",
            None,
            _DEFAULTS.udp_burst,
            "Datagrams a source may send at once before --udp-rate applies.",
            _number("udp-burst", int),
        ],
        [
            "udp-rate-table-size",
            None,
            _DEFAULTS.udp_rate_table_size,
            "Most source addresses the UDP rate limiter remembers.",
            _number("udp-rate-table-size", int, 1),
        ],
        [
            "shutdown-timeout",
            None,
            _DEFAULTS.shutdown_timeout,
            "Seconds a graceful stop waits for open connections before closing them.",
            _number("shutdown-timeout", float),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        if is_udp(description):
            try:
                parse_udp(description)
            except ListenError as e:
                raise usage.UsageError(f"--listen {e}") from None
        else:
            try:
                check_stream_description(description)
            except ListenError as e:
                raise usage.UsageError(f"--listen {e}") from None
        self["listen"].append(description)

    opt_listen.__doc__ = (
        "Listen on DESCRIPTION; repeat for several. A Twisted endpoint string for "
        "streams (tcp:50007:interface=0.0.0.0, tcp6:50007, unix:PATH, "
        "ssl:50443:privateKey=KEY:certKey=CERT, systemd:domain=INET:index=0, "
        "haproxy:tcp:50007...) or udp:PORT[:interface=ADDRESS] for datagrams. "
        "Default: tcp:50007:interface=127.0.0.1 and udp:50007:interface=127.0.0.1."
    )

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line; a bad option raises `usage.UsageError`.

        Run as twistd's subcommand, a usage error instead prints the usage
        and exits with status 1 and the error as the last line: twistd
        before 26.10 printed it and exited 0, which a service manager would
        take for success.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            parent = getattr(self, "parent", None)
            if parent is None:
                raise
            print(parent)
            command = " ".join(os.path.basename(a) for a in sys.argv[0:2])
            raise SystemExit(f"{command}: {e}") from None

    def opt_version(self) -> None:
        """
        Print capserv's version and exit.
        """
        print(f"capserv {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = list(DEFAULT_LISTEN)
        try:
            self["config"] = CapservConfig(
                encoding=self["encoding"],
                ascii_only=bool(self["ascii"]),
                idle_timeout=float(self["idle-timeout"]),
                abort_grace=float(self["abort-grace"]),
                max_connections=int(self["max-connections"]),
                max_connections_per_ip=int(self["max-connections-per-ip"]),
                high_water=int(self["high-water"]),
                udp_rate=float(self["udp-rate"]),
                udp_burst=int(self["udp-burst"]),
                udp_rate_loopback=bool(self["udp-rate-loopback"]),
                udp_rate_table_size=int(self["udp-rate-table-size"]),
                udp_allow_low_ports=bool(self["udp-allow-low-ports"]),
                shutdown_timeout=float(self["shutdown-timeout"]),
            )
        except ConfigError as e:
            raise usage.UsageError(f"--{e.field.replace('_', '-')}: {str(e).split(': ', 1)[1]}") from None


class CapservService(MultiService):
    """
    Every listener of one capserv, sharing one TCP factory and one UDP
    protocol, with a graceful stop.

    Stopping stops every listener at once (new connections are refused),
    then waits up to ``shutdown_timeout`` seconds for open connections to
    finish before closing them.
    """

    _log = Logger()

    def __init__(
        self, config: CapservConfig, factory: UppercaseFactory, datagram: UppercaseDatagramProtocol, reactor: Any
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.config = config
        self.factory = factory
        self.datagram = datagram

    def privilegedStartService(self) -> None:
        _raise_file_limit(self.config.max_connections + 256)
        started = []
        try:
            for child in self:
                child.privilegedStartService()
                started.append(child)
        except ListenError as e:
            for child in started:
                child.stopService()
            # SystemExit with a message: one line on stderr, exit status 1,
            # no traceback, nothing left listening.
            raise SystemExit(f"capserv: {e}") from None

    def startService(self) -> None:
        # Children are already listening; only mark them running.
        from twisted.application.service import Service

        Service.startService(self)
        for child in self:
            if not child.running:
                child.startService()
        # Logged once the reactor runs, when its signal handlers are in
        # place: from this line on, SIGTERM means a graceful stop.
        self.reactor.callWhenRunning(self._log.info, "capserv {version} started", version=__version__)

    def stopService(self) -> Deferred[None]:
        from twisted.application.service import Service

        Service.stopService(self)
        # Refuse at once anything accepted before the listeners are closed.
        self.factory.stop_accepting()
        listeners = DeferredList(
            [maybeDeferred(child.stopService) for child in reversed(list(self))], consumeErrors=True
        )

        def drain(_: object) -> Deferred[None]:
            open_now = len(self.factory.connections)
            if open_now:
                self._log.info(
                    "Stopping: no longer listening; {count} connections open, "
                    "waiting up to {timeout:g}s for them to finish",
                    count=open_now,
                    timeout=self.config.shutdown_timeout,
                )
            return self.factory.drain(self.config.shutdown_timeout)

        def stopped(_: object) -> None:
            clear_exit_signal(self.reactor)
            self._log.info(
                "capserv stopped: {tcp} TCP connections and {udp} datagrams served",
                tcp=self.factory.stats.connections_total,
                udp=self.datagram.stats.datagrams_in,
            )

        return listeners.addCallback(drain).addCallback(stopped)


def _raise_file_limit(wanted: int) -> None:
    """
    Raise the soft limit on open files towards ``wanted`` (at most the hard
    limit), so ``--max-connections`` is not cut short by the default 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            Logger().warn("Could not raise the open-file limit from {soft} to {target}", soft=soft, target=target)


def makeService(config: Options | dict[str, Any], reactor: Any = None) -> CapservService:
    """
    Build the capserv service from parsed `Options`.

    :param reactor: the reactor to listen with and take time from; the
        global one if `None`, looked up now.
    """
    if reactor is None:
        reactor = global_reactor()
    settings: CapservConfig = config["config"]
    factory = UppercaseFactory(settings, clock=reactor)
    datagram = UppercaseDatagramProtocol(settings, clock=reactor)
    service = CapservService(settings, factory, datagram, reactor)
    udp_listeners = 0
    for description in config["listen"]:
        if is_udp(description):
            # A datagram protocol serves one port; further ports get siblings
            # that share its counters and rate limiter.
            protocol = datagram if udp_listeners == 0 else datagram.sibling()
            udp_listeners += 1
            DatagramListener(description, parse_udp(description), protocol, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
        else:
            endpoint = endpoints.serverFromString(reactor, description)
            StreamListener(description, endpoint, factory).setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
