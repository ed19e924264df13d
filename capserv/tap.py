"""
The ``twistd capserv`` command line: `Options` and `makeService`.

Options are turned into one `CapservConfig` here and handed to the
factories; nothing else reads the command line.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from capserv._internals import clear_exit_signal, proxy_protocol_endpoint
from capserv._version import __version__
from capserv.coerce import number
from capserv.config import CapservConfig, ConfigError
from capserv.listen import (
    DEFAULT_LISTEN,
    DatagramListener,
    ListenError,
    StreamListener,
    check_stream_description,
    is_udp,
    parse_udp,
    with_default_backlog,
)
from capserv.reactor import global_reactor
from capserv.tcp import UppercaseFactory
from capserv.udp import UppercaseDatagramProtocol
from capserv.workers import ReusePortListener, WorkerPool, parse_shared, reuse_port_supported

__all__ = ["CapservService", "Options", "makeService"]

_DEFAULTS = CapservConfig()


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
        [
            "no-uvloop",
            None,
            "Keep twistd's default reactor even when uvloop is installed "
            "(without --reactor, capserv runs Twisted's asyncio reactor on uvloop).",
        ],
        ["udp-allow-low-ports", None, "Answer datagrams from source ports below 1024 (off by default: loop guard)."],
        ["worker", None, "(internal) run as one of --workers: share ports, start no others."],
        ["udp-rate-loopback", None, "Apply --udp-rate to loopback sources too (exempt by default)."],
    ]

    optParameters = [
        ["encoding", None, _DEFAULTS.encoding, "Text encoding of client bytes (any Python codec).", str],
        [
            "idle-timeout",
            None,
            _DEFAULTS.idle_timeout,
            "Seconds without traffic before a TCP connection is closed.",
            number("idle-timeout", float),
        ],
        [
            "abort-grace",
            None,
            _DEFAULTS.abort_grace,
            "Seconds a closing connection gets to take its last bytes before it is aborted.",
            number("abort-grace", float),
        ],
        [
            "max-connections",
            None,
            _DEFAULTS.max_connections,
            "Most TCP connections open at once.",
            number("max-connections", int),
        ],
        [
            "max-connections-per-ip",
            None,
            _DEFAULTS.max_connections_per_ip,
            "Most TCP connections open at once from one IP address.",
            number("max-connections-per-ip", int),
        ],
        [
            "high-water",
            None,
            _DEFAULTS.high_water,
            "Unsent reply bytes per connection past which reading pauses.",
            number("high-water", int, 1),
        ],
        [
            "udp-rate",
            None,
            _DEFAULTS.udp_rate,
            "Datagrams per second answered per source address.",
            number("udp-rate", float),
        ],
        [
            "udp-burst",
            None,
            _DEFAULTS.udp_burst,
            "Datagrams a source may send at once before --udp-rate applies.",
            number("udp-burst", int),
        ],
        [
            "udp-rate-table-size",
            None,
            _DEFAULTS.udp_rate_table_size,
            "Most source addresses the UDP rate limiter remembers.",
            number("udp-rate-table-size", int, 1),
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint (e.g. tcp:9150:interface=127.0.0.1); "
            "needs pip install 'capserv[metrics]'. Off by default.",
            str,
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the same tcp:/tcp6:/udp: ports (Linux, SO_REUSEPORT).",
            number("workers", int, 1),
        ],
        [
            "shutdown-timeout",
            None,
            _DEFAULTS.shutdown_timeout,
            "Seconds a graceful stop waits for open connections before closing them.",
            number("shutdown-timeout", float),
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
        self["argv"] = list(sys.argv[1:] if options is None else options)
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
        if self["metrics"]:
            from capserv.metrics import INSTALL_HINT, prometheus_available

            if not prometheus_available():
                raise usage.UsageError(INSTALL_HINT)
            try:
                check_stream_description(self["metrics"])
            except ListenError as e:
                raise usage.UsageError(f"--metrics {e}") from None
        if self["workers"] > 1 or self["worker"]:
            if not reuse_port_supported():
                raise usage.UsageError("--workers needs Linux's SO_REUSEPORT")
            for description in self["listen"]:
                try:
                    parse_shared(description)
                except ListenError as e:
                    raise usage.UsageError(f"--listen {e}") from None
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
            reactor=_describe_reactor(self.reactor),
        )

    def stopService(self) -> Deferred[None]:
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


def _describe_reactor(reactor: Any) -> str:
    name = type(reactor).__name__
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        name += f" on {type(loop).__module__}.{type(loop).__name__}"
    return name


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


def install_uvloop_reactor() -> bool:
    """
    Install Twisted's asyncio reactor on a uvloop event loop, if uvloop is
    importable and no reactor has been installed yet.

    twistd installs a reactor before ``makeService`` only when given
    ``--reactor``; otherwise capserv picks this one, which the benchmark
    measured as the fastest (``docs/benchmarks``).  An explicit
    ``--reactor`` always wins.

    :return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    try:
        import uvloop
    except ImportError:
        return False
    import asyncio

    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    return True


def makeService(config: Options | dict[str, Any], reactor: Any = None) -> CapservService:
    """
    Build the capserv service from parsed `Options`.

    :param reactor: the reactor to listen with and take time from; the
        global one if `None`, looked up now.
    """
    if reactor is None:
        if not config.get("no-uvloop"):
            install_uvloop_reactor()
        reactor = global_reactor()
    settings: CapservConfig = config["config"]
    factory = UppercaseFactory(settings, clock=reactor)
    datagram = UppercaseDatagramProtocol(settings, clock=reactor)
    service = CapservService(settings, factory, datagram, reactor)
    shared = config.get("workers", 1) > 1 or bool(config.get("worker"))
    shared_listeners: list[ReusePortListener] = []
    udp_ports = 0

    def datagram_for_next_port() -> UppercaseDatagramProtocol:
        # A datagram protocol serves one port; further ports get siblings
        # that share its counters and rate limiter.
        nonlocal udp_ports
        udp_ports += 1
        return datagram if udp_ports == 1 else datagram.state.protocol()

    for description in config["listen"]:
        if shared:
            address = parse_shared(description)
            handler: Any = factory
            if address.kind == "udp":
                handler = datagram_for_next_port()
            listener = ReusePortListener(description, address, handler, reactor)
            listener.setServiceParent(service)  # type: ignore[no-untyped-call]
            shared_listeners.append(listener)
        elif is_udp(description):
            DatagramListener(description, parse_udp(description), datagram_for_next_port(), reactor).setServiceParent(
                service
            )  # type: ignore[no-untyped-call]
        else:
            full = with_default_backlog(description)
            endpoint = proxy_protocol_endpoint(reactor, full) or endpoints.serverFromString(reactor, full)
            StreamListener(description, endpoint, factory).setServiceParent(service)  # type: ignore[no-untyped-call]
    if config.get("metrics"):
        from capserv.metrics import metrics_site

        site = metrics_site(factory, datagram, config.get("workers", 1))
        endpoint = endpoints.serverFromString(reactor, config["metrics"])
        metrics = StreamListener(f"metrics {config['metrics']}", endpoint, site)  # type: ignore[arg-type]
        metrics.setServiceParent(service)  # type: ignore[no-untyped-call]
    if config.get("workers", 1) > 1:
        WorkerPool(
            config["workers"],
            _twistd_args(config),
            _child_args(config.get("argv", [])),
            shared_listeners,
            reactor,
            settings.shutdown_timeout + settings.abort_grace + 5,
        ).setServiceParent(service)  # type: ignore[no-untyped-call]
    return service


def _twistd_args(config: Options | dict[str, Any]) -> list[str]:
    """twistd's own options to give the other workers: foreground, no pid
    file, and the same logging and reactor as this process."""
    args = ["--nodaemon", "--pidfile="]
    parent = getattr(config, "parent", None)
    if parent is not None:
        for name in ("logfile", "logger", "reactor"):
            value = parent.get(name)
            if value:
                args.append(f"--{name}={value}")
    return args


def _child_args(argv: list[str]) -> list[str]:
    """capserv's own arguments for the other workers, less --workers and
    --listen (they get the concrete ports this process bound) and --metrics
    (only this process serves metrics)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--listen", "--metrics"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--listen=", "--metrics=")):
            continue
        out.append(arg)
    return out
