"""
The ``twistd capserv`` command line: `Options` and `makeService`.

`Options` parses everything once: each ``--listen`` becomes a checked
listener object (`capserv.daemon.listen`) and the limits one `CapservConfig`.
`makeService` chooses the reactor first (`capserv.daemon.reactor`), binds every
listener (so a port that is taken is reported on the terminal before twistd
daemonizes, and nothing listens), then wires them, like Twisted's own
``web/tap.py`` and ``names/tap.py``: one loop of
``listener.service(...).setServiceParent(service)``.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from capserv._options import number
from capserv._version import __version__
from capserv.daemon.listen import (
    DEFAULT_LISTEN,
    KINDS_HINT,
    STREAM_KINDS_HINT,
    Listener,
    ListenError,
    ProxyListener,
    parse_listen,
)
from capserv.daemon.reactor import choose_reactor
from capserv.daemon.service import CapservService, StartError
from capserv.daemon.workers import (
    MAX_WORKERS_PER_CPU,
    OrphanWatch,
    WorkerPool,
    reuse_port_supported,
    worker_command,
    worker_slot,
)
from capserv.native import native_supported
from capserv.protocols.config import MAX_WAIT, CapservConfig, ConfigError
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

if TYPE_CHECKING:
    from capserv.site.metrics_multiprocess import SharedMetrics

__all__ = ["Options", "makeService"]

_DEFAULTS = CapservConfig()

#: twistd wraps a coercer's error in this; capserv's own text follows it.
_TWISTED_PREFIX = "Parameter type enforcement failed: "

#: What to write for --metrics when prometheus-client is missing.
METRICS_INSTALL_HINT = "--metrics needs prometheus-client: pip install 'capserv[metrics]'"


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
        [
            "no-native",
            None,
            "On the asyncio reactor, serve streams on Twisted's own transports instead of the event loop's "
            "(native transports are faster; see docs/operations).",
        ],
        ["udp-allow-low-ports", None, "Answer datagrams from source ports below 1024 (off by default: loop guard)."],
        [
            "udp-rate-loopback",
            None,
            "Apply --udp-rate and --udp-byte-rate to loopback sources too (exempt by default).",
        ],
    ]

    optParameters = [
        [
            "encoding",
            None,
            _DEFAULTS.encoding,
            "Text encoding of client bytes: one where ASCII letters are themselves (utf-8, latin-1, cp1252...).",
            str,
        ],
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
            "Most TCP connections open at once from one source network (see --ipv4-prefix, --ipv6-prefix).",
            number("max-connections-per-ip", int),
        ],
        [
            "ipv4-prefix",
            None,
            _DEFAULTS.ipv4_prefix,
            "Length of the IPv4 networks that per-source limits count as one source (32: each address).",
            number("ipv4-prefix", int, 1, 32),
        ],
        [
            "ipv6-prefix",
            None,
            _DEFAULTS.ipv6_prefix,
            "Length of the IPv6 networks that per-source limits count as one source (64: one host's share).",
            number("ipv6-prefix", int, 1, 128),
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
            "Datagrams per second answered per source network.",
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
            "udp-byte-rate",
            None,
            _DEFAULTS.udp_byte_rate,
            "Reply bytes per second sent to one source network.",
            number("udp-byte-rate", float),
        ],
        [
            "udp-byte-burst",
            None,
            _DEFAULTS.udp_byte_burst,
            "Reply bytes a source may be sent at once before --udp-byte-rate applies (at least 65527).",
            number("udp-byte-burst", int),
        ],
        [
            "udp-rate-table-size",
            None,
            _DEFAULTS.udp_rate_table_size,
            "Most source networks the UDP rate limiter remembers.",
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
        [
            "drain-delay",
            None,
            0.0,
            "Seconds a stop keeps accepting and serving while /readyz says not ready (503), "
            "before the graceful stop: let a load balancer take this instance out first.",
            number("drain-delay", float, 0, MAX_WAIT),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        try:
            self["listen"].append(parse_listen(description))
        except ListenError as e:
            raise usage.UsageError(str(e)) from None

    opt_listen.__doc__ = (
        "Listen on DESCRIPTION; repeat for several. A Twisted endpoint string for "
        "streams (tcp:50007:interface=0.0.0.0, tcp6:50007, unix:PATH, "
        "ssl:50443:privateKey=KEY:certKey=CERT, systemd:domain=INET:index=0, "
        "haproxy:tcp:50007...) or udp:PORT[:interface=ADDRESS] for datagrams. "
        "Default: tcp:50007:interface=127.0.0.1 and udp:50007:interface=127.0.0.1."
    )

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line; a bad option raises `usage.UsageError` with
        capserv's text.

        Run as twistd's subcommand, a usage error is instead one line on
        stderr naming the option, a line pointing at ``--help``, and exit
        status 1 (twistd itself would print the whole help on stdout, and
        before 26.10 exit 0, which a service manager takes for success).
        """
        self["argv"] = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            message = str(e).removeprefix(_TWISTED_PREFIX) or "bad option"
            if getattr(self, "parent", None) is None:
                raise usage.UsageError(message) from None
            raise SystemExit(f"capserv: {message}\nTry 'twistd capserv --help' for the options.") from None

    def parseArgs(self, *args: str) -> None:
        """
        Refuse words that are not options: capserv takes options only (a
        stray word is most often an option's value whose ``--name`` went
        missing, or a value with a space in it).
        """
        if args:
            raise usage.UsageError(
                f"capserv takes no arguments, only options, and '{args[0]}' is not an option; "
                "remove it, or write the option it is the value of (--listen '...')"
            )

    def opt_version(self) -> None:
        """
        Print capserv's version and exit.
        """
        print(f"capserv {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Apply the defaults and check what depends on more than one option.
        Nothing here imports the reactor (`makeService` chooses it).
        """
        if not self["listen"]:
            self["listen"] = [parse_listen(description) for description in DEFAULT_LISTEN]
        self["metrics_listener"] = None
        if self["metrics"]:
            if importlib.util.find_spec("prometheus_client") is None:
                raise usage.UsageError(METRICS_INSTALL_HINT)
            try:
                metrics = parse_listen(self["metrics"])
            except ListenError as e:
                # Metrics are HTTP: the kinds to write are the stream kinds.
                message = str(e).replace("--listen", "--metrics", 1).replace(KINDS_HINT, STREAM_KINDS_HINT)
                raise usage.UsageError(message) from None
            if metrics.datagram:
                raise usage.UsageError(
                    f"--metrics '{self['metrics']}': metrics are served over HTTP; "
                    "write a stream listen string such as tcp:9150:interface=127.0.0.1"
                )
            self["metrics_listener"] = metrics
        self["worker"] = worker_slot() is not None
        if self["workers"] > 1 or self["worker"]:
            if not reuse_port_supported():
                raise usage.UsageError("--workers needs Linux's SO_REUSEPORT; leave --workers out here")
            most = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
            if self["workers"] > most:
                raise usage.UsageError(
                    f"--workers: {self['workers']} is more than {most} ({MAX_WORKERS_PER_CPU} per CPU here); "
                    "one worker per CPU is the usual choice"
                )
            for listener in self["listen"]:
                if not listener.shareable:
                    raise usage.UsageError(
                        f"--listen '{listener.description}': --workers shares only tcp:, tcp6:, udp: "
                        "and haproxy:tcp listeners; serve this one from a process without --workers"
                    )
        try:
            self["config"] = CapservConfig(
                encoding=self["encoding"],
                ascii_only=bool(self["ascii"]),
                idle_timeout=float(self["idle-timeout"]),
                abort_grace=float(self["abort-grace"]),
                max_connections=int(self["max-connections"]),
                max_connections_per_ip=int(self["max-connections-per-ip"]),
                ipv4_prefix=int(self["ipv4-prefix"]),
                ipv6_prefix=int(self["ipv6-prefix"]),
                high_water=int(self["high-water"]),
                udp_rate=float(self["udp-rate"]),
                udp_burst=int(self["udp-burst"]),
                udp_byte_rate=float(self["udp-byte-rate"]),
                udp_byte_burst=int(self["udp-byte-burst"]),
                udp_rate_loopback=bool(self["udp-rate-loopback"]),
                udp_rate_table_size=int(self["udp-rate-table-size"]),
                udp_allow_low_ports=bool(self["udp-allow-low-ports"]),
                shutdown_timeout=float(self["shutdown-timeout"]),
            )
        except ConfigError as e:
            raise usage.UsageError(f"--{e.field.replace('_', '-')}: {str(e).split(': ', 1)[1]}") from None


def makeService(config: Options | dict[str, Any], reactor: Any = None) -> CapservService:
    """
    Build the capserv service from parsed `Options`, with every listener
    bound.

    :param reactor: the reactor to listen with and take time from; if
        `None`, the daemon's choice (`capserv.daemon.reactor.choose_reactor`),
        made now, before anything else can install another.
    :raises SystemExit: with one line, if a listener cannot be bound;
        nothing is left bound then.
    """
    if reactor is None:
        reactor = choose_reactor(uvloop=not config.get("no-uvloop"))
    try:
        return build_service(config, reactor)
    except StartError as e:
        raise SystemExit(f"capserv: {e}") from None


def build_service(config: Options | dict[str, Any], reactor: Any) -> CapservService:
    """
    `makeService` for programs: the same service, a `StartError` instead of
    an exit when a listener cannot be bound.
    """
    settings: CapservConfig = config["config"]
    workers: int = config.get("workers", 1)
    shared = workers > 1 or bool(config.get("worker"))
    factory = UppercaseFactory(settings, clock=reactor)
    datagrams = DatagramState(settings, clock=reactor)
    drain_delay = float(config.get("drain-delay", 0.0))
    service = CapservService(settings, factory, datagrams, reactor, drain_delay=drain_delay)
    service.twistd_options = getattr(config, "parent", None)
    listeners: list[Listener] = list(config["listen"])
    metrics: Listener | None = config.get("metrics_listener")
    _bind_all(listeners, shared, metrics)
    native = _native(reactor, config)
    for listener in listeners:
        handler = datagrams.protocol() if listener.datagram else factory
        listener.service(handler, reactor, native=native).setServiceParent(service)
    every_worker = _shared_metrics(factory, datagrams, reactor) if metrics is not None and workers > 1 else None
    if metrics is not None:
        from capserv.site.health import health_children
        from capserv.site.metrics import metrics_site

        collector = every_worker.collector() if every_worker is not None else None
        site = metrics_site(factory, datagrams, workers, collector=collector, children=health_children(service))
        metrics.what = "metrics (HTTP)"
        metrics.service(site, reactor).setServiceParent(service)
    if workers > 1:
        pool = WorkerPool(
            workers,
            _worker_command(config, listeners),
            reactor,
            # The workers drain too, then stop gracefully.
            drain_delay + settings.shutdown_timeout + settings.abort_grace + 5,
            env=every_worker.worker_env() if every_worker is not None else None,
        )
        if every_worker is not None:
            every_worker.setServiceParent(service)  # type: ignore[no-untyped-call]
            pool.on_exit.append(every_worker.process_dead)
        pool.setServiceParent(service)  # type: ignore[no-untyped-call]
        service.on_force.append(pool.force)
    if config.get("worker"):
        service.worker = True
        OrphanWatch(reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
        _mirror_worker_metrics(service, reactor)
    return service


def _shared_metrics(factory: UppercaseFactory, datagrams: DatagramState, reactor: Any) -> SharedMetrics:
    """
    The supervisor's side of metrics that add up every worker: made before
    anything imports prometheus-client's metrics (it chooses multiprocess
    mode then).
    """
    from capserv.site.metrics import CapservCollector
    from capserv.site.metrics_multiprocess import MetricsMirror, SharedMetrics

    return SharedMetrics(MetricsMirror(CapservCollector(factory, datagrams)), reactor)


def _mirror_worker_metrics(service: CapservService, reactor: Any) -> None:
    """In a worker whose supervisor serves metrics: copy this worker's figures to it."""
    from capserv.site.metrics_multiprocess import MetricsMirror, MirrorService, worker_folder

    if worker_folder() is None:
        return
    from capserv.site.metrics import CapservCollector

    mirror = MetricsMirror(CapservCollector(service.factory, service.datagrams))
    MirrorService(mirror, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]


def _bind_all(listeners: list[Listener], reuse_port: bool, metrics: Listener | None = None) -> None:
    """
    Bind every listener (and the metrics listener, last), or none: on a
    failure, let go of those bound.

    A port in use that a listener of this same command already holds is
    reported as that clash (two ``--listen`` of one port, or ``::`` after
    ``0.0.0.0``, which on Linux takes IPv4 too), not as another program's.
    """
    done: list[Listener] = []
    try:
        for listener in [*listeners, *([metrics] if metrics is not None else [])]:
            try:
                listener.bind(reuse_port)
            except ListenError as e:
                if e.errno == errno.EADDRINUSE:
                    clash = _clash(listener, done)
                    if clash:
                        raise ListenError(clash, e.errno) from None
                raise
            done.append(listener)
    except ListenError as e:
        for listener in done:
            listener.close()
        raise StartError(str(e)) from None


def _port_and_kind(listener: Listener) -> tuple[int, bool, str] | None:
    """
    The port a listener asks for, whether it takes datagrams, and its host
    (``""`` for every address); `None` for one without an IP port.
    """
    if isinstance(listener, ProxyListener):
        listener = listener.inner
    port = getattr(listener, "port", None)
    if not isinstance(port, int) or not port:
        return None
    return port, listener.datagram, str(getattr(listener, "host", ""))


def _clash(listener: Listener, done: list[Listener]) -> str | None:
    """
    The message for a port in use by an earlier listener of this command
    (same port, same kind), or `None` if none is.
    """
    mine = _port_and_kind(listener)
    if mine is None:
        return None
    port, datagram, host = mine
    for earlier in done:
        theirs = _port_and_kind(earlier)
        if theirs is None or theirs[:2] != (port, datagram):
            continue
        default = " (a default)" if earlier.description in DEFAULT_LISTEN else ""
        both = {host, theirs[2]}
        v6_wildcard = "::" in both and any(":" not in h for h in both)
        hint = " (on Linux, :: takes IPv4 too)" if v6_wildcard else ""
        return (
            f"cannot listen on '{listener.description}': port {port} is already taken by "
            f"--listen '{earlier.description}'{default} of this same command{hint}; drop one of them"
        )
    return None


def _native(reactor: Any, config: Options | dict[str, Any]) -> bool:
    """Whether streams are served on the event loop's own transports."""
    if config.get("no-native") or os.environ.get("CAPSERV_NATIVE", "") == "0":
        return False
    return native_supported(reactor)


def _worker_command(config: Options | dict[str, Any], listeners: list[Listener]) -> list[str]:
    """
    The command line of the other workers: this process's reactor, capserv's
    own options less ``--workers``, ``--listen`` (they get the concrete ports
    this process bound) and ``--metrics`` (only this process serves it).
    """
    parent = getattr(config, "parent", None)
    reactor = parent.get("reactor") if parent is not None else None
    own: list[str] = []
    skip = False
    for arg in config.get("argv", []):
        if skip:
            skip = False
        elif arg in ("--workers", "--listen", "--metrics"):
            skip = True
        elif not arg.startswith(("--workers=", "--listen=", "--metrics=")):
            own.append(arg)
    for listener in listeners:
        own += ["--listen", listener.with_port(listener.bound_port())]
    return worker_command(own, reactor)
