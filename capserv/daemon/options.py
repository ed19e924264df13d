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

import dataclasses
import errno
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from capserv.daemon.logs import follow_twistd
from capserv.daemon.reactor import choose_reactor
from capserv.daemon.service import CapservService, StartError
from capserv.daemon.twistd_checks import TwistdOptionError, check_twistd
from capserv.daemon.workers import (
    MAX_WORKERS_PER_CPU,
    FigureReport,
    OrphanWatch,
    WorkerPool,
    process_figures,
)
from capserv.native import native_supported
from capserv.protocols.config import MAX_WAIT, CapservConfig, ConfigError
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = ["Options", "Settings", "build_service", "makeService"]


@dataclass(frozen=True)
class Settings:
    """
    Everything ``twistd capserv`` was told, parsed once (`Options.postOptions`):
    what `makeService` wires, and what a worker of ``--workers`` is handed.
    """

    config: CapservConfig
    #: Every ``--listen``, parsed (the defaults when none was given).
    listen: tuple[Listener, ...]
    #: ``--metrics``, parsed; `None` when not given.
    metrics: Listener | None = None
    workers: int = 1
    #: ``--drain-delay``, seconds.
    drain_delay: float = 0.0
    #: Serve streams on the event loop's own transports where it has them (not ``--no-native``).
    native: bool = True
    #: Run on uvloop when twistd was given no ``--reactor`` (not ``--no-uvloop``).
    uvloop: bool = True
    #: twistd's ``--reactor``, for the workers to run the same one.
    reactor: str | None = None
    #: This process's worker number; 0 for the supervisor or a single process.
    worker: int = 0
    #: A worker whose supervisor serves ``--metrics``: it reports its figures.
    report: bool = False

    def for_workers(self) -> str:
        """
        The settings a worker is handed, as one JSON value: the same limits
        and listeners, no ``--workers`` and no ``--metrics`` (only the
        supervisor supervises and serves metrics).
        """
        return json.dumps(
            {
                "config": dataclasses.asdict(self.config),
                "listen": [listener.description for listener in self.listen],
                "drain_delay": self.drain_delay,
                "native": self.native,
                "uvloop": self.uvloop,
                "reactor": self.reactor,
                "report": self.metrics is not None,
            }
        )

    @classmethod
    def of_worker(cls, text: str, worker: int) -> Settings:
        """The settings `for_workers` wrote, for worker number ``worker``."""
        data = json.loads(text)
        return cls(
            config=CapservConfig(**data["config"]),
            listen=tuple(parse_listen(description) for description in data["listen"]),
            drain_delay=data["drain_delay"],
            native=data["native"],
            uvloop=data["uvloop"],
            reactor=data["reactor"],
            worker=worker,
            report=data["report"],
        )


_DEFAULTS = CapservConfig()

#: twistd wraps a coercer's error in this; capserv's own text follows it.
_TWISTED_PREFIX = "Parameter type enforcement failed: "

#: What to write for --metrics when prometheus-client is missing.
METRICS_INSTALL_HINT = "--metrics needs prometheus-client: pip install 'capserv[metrics]'"


#: The options that are `CapservConfig` numbers, by field name (filled by `_limit`).
_NUMBERS: list[str] = []


def _limit(name: str, kind: type, help: str, *bounds: float) -> list[Any]:
    """An option for the `CapservConfig` number of the same name, with its default."""
    field = name.replace("-", "_")
    _NUMBERS.append(field)
    return [name, None, getattr(_DEFAULTS, field), help, number(name, kind, *bounds)]


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
        _limit("idle-timeout", float, "Seconds without traffic before a TCP connection is closed."),
        _limit("abort-grace", float, "Seconds a closing connection gets to take its last bytes before it is aborted."),
        _limit("max-connections", int, "Most TCP connections open at once."),
        _limit(
            "max-connections-per-ip",
            int,
            "Most TCP connections open at once from one source network (see --ipv4-prefix, --ipv6-prefix).",
        ),
        _limit(
            "ipv4-prefix",
            int,
            "Length of the IPv4 networks that per-source limits count as one source (32: each address).",
            1,
            32,
        ),
        _limit(
            "ipv6-prefix",
            int,
            "Length of the IPv6 networks that per-source limits count as one source (64: one host's share).",
            1,
            128,
        ),
        _limit("high-water", int, "Unsent reply bytes per connection past which reading pauses.", 1),
        _limit("udp-rate", float, "Datagrams per second answered per source network."),
        _limit("udp-burst", int, "Datagrams a source may send at once before --udp-rate applies."),
        _limit("udp-byte-rate", float, "Reply bytes per second sent to one source network."),
        _limit(
            "udp-byte-burst",
            int,
            "Reply bytes a source may be sent at once before --udp-byte-rate applies (at least 65527).",
        ),
        _limit("udp-rate-table-size", int, "Most source networks the UDP rate limiter remembers.", 1),
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
            "Processes serving the same tcp:/tcp6:/udp: sockets, bound once by the first.",
            number("workers", int, 1),
        ],
        _limit("shutdown-timeout", float, "Seconds a graceful stop waits for open connections before closing them."),
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
        Check twistd's own options (`check_twistd`: one line and exit 1),
        apply the defaults, check what depends on more than one option, and
        make the one `Settings` object `makeService` wires (``self["settings"]``).
        Nothing here imports the reactor (`makeService` chooses it).
        """
        parent = getattr(self, "parent", None)
        if parent is not None:
            try:
                check_twistd(parent)
            except TwistdOptionError as e:
                raise SystemExit(f"capserv: {e}") from None
        listen = self["listen"] or [parse_listen(description) for description in DEFAULT_LISTEN]
        workers = int(self["workers"])
        if workers > 1:
            _check_workers(workers, listen)
        try:
            config = CapservConfig(
                encoding=self["encoding"],
                ascii_only=bool(self["ascii"]),
                **{field: self[field.replace("_", "-")] for field in _NUMBERS},
                udp_rate_loopback=bool(self["udp-rate-loopback"]),
                udp_allow_low_ports=bool(self["udp-allow-low-ports"]),
                # The daemon's own switch for measuring the fast paths (bench -nofast).
                fast_paths=os.environ.get("CAPSERV_NO_FASTPATH", "") in ("", "0"),
            )
        except ConfigError as e:
            raise usage.UsageError(f"--{e.field.replace('_', '-')}: {str(e).split(': ', 1)[1]}") from None
        self["settings"] = Settings(
            config=config,
            listen=tuple(listen),
            metrics=_metrics_listener(self["metrics"]),
            workers=workers,
            drain_delay=float(self["drain-delay"]),
            # CAPSERV_NATIVE=0: the same as --no-native, for the bench and the tox envs.
            native=not self["no-native"] and os.environ.get("CAPSERV_NATIVE", "") != "0",
            uvloop=not self["no-uvloop"],
            reactor=parent.get("reactor") if parent is not None else None,
        )


def _metrics_listener(description: str | None) -> Listener | None:
    """``--metrics``, parsed as a stream listener (it serves HTTP)."""
    if not description:
        return None
    if importlib.util.find_spec("prometheus_client") is None:
        raise usage.UsageError(METRICS_INSTALL_HINT)
    try:
        metrics = parse_listen(description)
    except ListenError as e:
        message = str(e).replace("--listen", "--metrics", 1).replace(KINDS_HINT, STREAM_KINDS_HINT)
        raise usage.UsageError(message) from None
    if metrics.datagram:
        raise usage.UsageError(
            f"--metrics '{description}': metrics are served over HTTP; "
            "write a stream listen string such as tcp:9150:interface=127.0.0.1"
        )
    metrics.what = "metrics (HTTP)"
    return metrics


def _check_workers(workers: int, listen: list[Listener]) -> None:
    """Refuse a ``--workers`` this system or these listeners cannot have."""
    if os.name != "posix":
        raise usage.UsageError("--workers needs a POSIX system (Linux, BSD, macOS); leave --workers out here")
    most = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
    if workers > most:
        raise usage.UsageError(
            f"--workers: {workers} is more than {most} ({MAX_WORKERS_PER_CPU} per CPU here); "
            "one worker per CPU is the usual choice"
        )
    for listener in listen:
        if not listener.shareable:
            raise usage.UsageError(
                f"--listen '{listener.description}': --workers shares only tcp:, tcp6:, udp: "
                "and haproxy:tcp listeners; serve this one from a process without --workers"
            )


def makeService(config: Options, reactor: Any = None) -> CapservService:
    """
    Build the capserv service from parsed `Options`, with every listener
    bound.

    :param reactor: the reactor to listen with and take time from; if
        `None`, the daemon's choice (`capserv.daemon.reactor.choose_reactor`),
        made now, before anything else can install another.
    :raises SystemExit: with one line, if a listener cannot be bound;
        nothing is left bound then.
    """
    settings: Settings = config["settings"]
    follow_twistd(getattr(config, "parent", None))
    if reactor is None:
        reactor = choose_reactor(settings.uvloop, settings.reactor)
    try:
        service = build_service(settings, reactor)
    except StartError as e:
        raise SystemExit(f"capserv: {e}") from None
    service.takes_signals = True
    return service


def build_service(settings: Settings, reactor: Any, inherited: Sequence[int] = ()) -> CapservService:
    """
    `makeService` for programs: the same service, a `StartError` instead of
    an exit when a listener cannot be bound.

    :param inherited: in a worker, the listening sockets its supervisor
        passed, one per listener, in order.
    """
    config = settings.config
    factory = UppercaseFactory(config, clock=reactor)
    datagrams = DatagramState(config, clock=reactor)
    service = CapservService(
        config, factory, datagrams, reactor, drain_delay=settings.drain_delay, worker=settings.worker > 0
    )
    for listener, fd in zip(settings.listen, inherited, strict=False):
        listener.inherit(fd)
    _bind_all(settings.listen, settings.metrics)
    native = settings.native and native_supported(reactor)
    for listener in settings.listen:
        handler = datagrams.protocol() if listener.datagram else factory
        listener.service(handler, reactor, native=native).setServiceParent(service)
    pool = None
    if settings.workers > 1:
        # Workers drain too, then stop gracefully, before they are killed.
        stop_timeout = settings.drain_delay + config.shutdown_timeout + config.abort_grace + 5
        sockets = [listener.share() for listener in settings.listen]
        pool = WorkerPool(settings.workers, settings.for_workers(), reactor, stop_timeout, sockets)
        pool.setServiceParent(service)  # type: ignore[no-untyped-call]
        service.on_force.append(pool.force)
    if settings.metrics is not None:
        from capserv.site.health import health_children
        from capserv.site.metrics import metrics_site

        def figures() -> dict[str, Any]:
            own = process_figures(factory, datagrams)
            return pool.total(own) if pool is not None else own

        site = metrics_site(figures, config, children=health_children(service))
        settings.metrics.service(site, reactor).setServiceParent(service)
    if settings.worker:
        OrphanWatch(reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
        if settings.report:
            FigureReport(factory, datagrams, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
    return service


def _bind_all(listeners: Sequence[Listener], metrics: Listener | None = None) -> None:
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
                listener.bind()
            except ListenError as e:
                clash = _clash(listener, done) if e.errno == errno.EADDRINUSE else None
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
