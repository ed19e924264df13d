"""
The ``twistd capserv`` command line: `Options` parses it once into a frozen
`Settings`; `makeService` chooses the reactor, binds every listener and wires them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.python import usage

from capserv._options import number, print_and_exit
from capserv._version import __version__
from capserv.daemon.listen import (
    DEFAULT_LISTEN,
    KINDS_HINT,
    STREAM_KINDS_HINT,
    Listener,
    ListenError,
    bind_all,
    parse_listen,
)
from capserv.daemon.logs import follow_twistd
from capserv.daemon.service import CapservService
from capserv.daemon.system import TwistdOptionError, check_twistd, choose_reactor
from capserv.daemon.workers import MAX_WORKERS_PER_CPU, FigureReport, OrphanWatch, WorkerPool, process_figures
from capserv.native import native_supported
from capserv.protocols.config import MAX_WAIT, CapservConfig, ConfigError
from capserv.protocols.tcp import UppercaseFactory
from capserv.protocols.udp import DatagramState

__all__ = ["Options", "Settings", "build_service", "makeService"]


@dataclass(frozen=True)
class Settings:
    """
    Everything ``twistd capserv`` was told, parsed once. ``reactor``: twistd's, for the workers;
    ``worker``: this process's number (0: not a worker); ``report``: a worker that sends its figures.
    """

    config: CapservConfig
    listen: tuple[Listener, ...]
    metrics: Listener | None = None
    workers: int = 1
    drain_delay: float = 0.0
    native: bool = True
    uvloop: bool = True
    reactor: str | None = None
    worker: int = 0
    report: bool = False

    def for_workers(self) -> str:
        """What a worker is handed, as JSON: no ``--workers`` and no ``--metrics`` (the supervisor's)."""
        data = {name: getattr(self, name) for name in ("drain_delay", "native", "uvloop", "reactor")}
        data.update(config=dataclasses.asdict(self.config), report=self.metrics is not None)
        return json.dumps({**data, "listen": [listener.description for listener in self.listen]})

    @classmethod
    def of_worker(cls, text: str, worker: int) -> Settings:
        """The settings `for_workers` wrote, for worker number ``worker``."""
        data = json.loads(text)
        config = CapservConfig(**data.pop("config"))
        return cls(config, tuple(map(parse_listen, data.pop("listen"))), worker=worker, **data)


_DEFAULTS = CapservConfig()

METRICS_INSTALL_HINT = "--metrics needs prometheus-client: pip install 'capserv[metrics]'"

_HELP = {
    "ascii": "Uppercase only a-z and leave every other byte alone (fastest).",
    "no-uvloop": "Keep twistd's default reactor even when uvloop is installed "
    "(without --reactor, capserv runs Twisted's asyncio reactor on uvloop).",
    "no-native": "On the asyncio reactor, serve streams on Twisted's own transports instead of the event loop's "
    "(native transports are faster; see docs/operations).",
    "no-access-log": "Write no line per TCP connection (refusals and errors are still logged).",
    "udp-allow-low-ports": "Answer datagrams from source ports below 1024 (off by default: loop guard).",
    "udp-rate-loopback": "Apply --udp-rate and --udp-byte-rate to loopback sources too (exempt by default).",
    "encoding": "Text encoding of client bytes: one where ASCII letters are themselves (utf-8, latin-1, cp1252...).",
    "idle-timeout": "Seconds without traffic before a TCP connection is closed.",
    "abort-grace": "Seconds a closing connection gets to take its last bytes before it is aborted.",
    "max-connections": "Most TCP connections open at once.",
    "max-connections-per-ip": "Most TCP connections open at once from one source network "
    "(see --ipv4-prefix, --ipv6-prefix).",
    "ipv4-prefix": "Length of the IPv4 networks that per-source limits count as one source (32: each address).",
    "ipv6-prefix": "Length of the IPv6 networks that per-source limits count as one source (64: one host's share).",
    "high-water": "Unsent reply bytes per connection past which reading pauses.",
    "udp-rate": "Datagrams per second answered per source network.",
    "udp-burst": "Datagrams a source may send at once before --udp-rate applies.",
    "udp-byte-rate": "Reply bytes per second sent to one source network.",
    "udp-byte-burst": "Reply bytes a source may be sent at once before --udp-byte-rate applies (at least 65527).",
    "udp-rate-table-size": "Most source networks the UDP rate limiter remembers.",
    "metrics": "Serve Prometheus metrics at /metrics on this endpoint (e.g. tcp:9150:interface=127.0.0.1); "
    "needs pip install 'capserv[metrics]'. Off by default.",
    "workers": "Processes serving the same tcp:/tcp6:/udp: sockets, bound once by the first.",
    "shutdown-timeout": "Seconds a graceful stop waits for open connections before closing them.",
    "drain-delay": "Seconds a stop keeps accepting and serving while /readyz says not ready (503), "
    "before the graceful stop: let a load balancer take this instance out first.",
}
_FLAGS = ("ascii", "no-access-log", "no-uvloop", "no-native", "udp-allow-low-ports", "udp-rate-loopback")
#: The options that are `CapservConfig` numbers, and the bounds beyond ">= 0" of some.
_LIMITS = (
    *("idle-timeout", "abort-grace", "max-connections", "max-connections-per-ip", "ipv4-prefix", "ipv6-prefix"),
    *("high-water", "udp-rate", "udp-burst", "udp-byte-rate", "udp-byte-burst", "udp-rate-table-size"),
    "shutdown-timeout",
)
_BOUNDS = {"ipv4-prefix": (1, 32), "ipv6-prefix": (1, 128), "high-water": (1,), "udp-rate-table-size": (1,)}


def _parameter(name: str, default: Any, kind: Any = None, *bounds: float) -> list[Any]:
    """A ``usage.Options`` parameter; a number's error names the option (`capserv._options.number`)."""
    kind = kind or type(default)
    return [name, None, default, _HELP[name], kind if kind is str else number(name, kind, *bounds)]


class Options(usage.Options):
    """Command-line options for ``twistd capserv``."""

    synopsis = "[options]"
    longdesc = (
        "Serve the uppercase service: whatever a client sends, over TCP or UDP, "
        "comes back in capitals. With no --listen, serves TCP and UDP on "
        "127.0.0.1 port 50007. Zero turns a limit, timeout or rate off."
    )
    optFlags = [[name, None, _HELP[name]] for name in _FLAGS]
    optParameters = [
        _parameter("encoding", _DEFAULTS.encoding),
        *(
            _parameter(name, getattr(_DEFAULTS, name.replace("-", "_")), None, *_BOUNDS.get(name, ()))
            for name in _LIMITS
        ),
        _parameter("metrics", None, str),
        _parameter("workers", 1, int, 1),
        _parameter("drain-delay", 0.0, float, 0, MAX_WAIT),
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

    def opt_help(self) -> None:
        """Display this help and exit."""
        print_and_exit(str(self), "capserv", 1)

    def opt_version(self) -> None:
        """Print capserv's version and exit."""
        print_and_exit(f"capserv {__version__}", "capserv", 1)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd a bad option is one line and a pointer to ``--help``, exit 1 (not twistd's whole help)."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            message = str(e).removeprefix("Parameter type enforcement failed: ") or "bad option"
            if getattr(self, "parent", None) is None:
                raise usage.UsageError(message) from None
            raise SystemExit(f"capserv: {message}\nTry 'twistd capserv --help' for the options.") from None

    def parseArgs(self, *args: str) -> None:
        if args:  # most often an option's value whose --name went missing
            raise usage.UsageError(
                f"capserv takes no arguments, only options, and '{args[0]}' is not an option; "
                "remove it, or write the option it is the value of (--listen '...')"
            )

    def postOptions(self) -> None:
        """Check twistd's options and what spans several of capserv's, and make ``self["settings"]``."""
        parent = getattr(self, "parent", None)
        if parent is not None:
            try:
                check_twistd(parent)
            except TwistdOptionError as e:
                raise SystemExit(f"capserv: {e}") from None
        listen = self["listen"] or [parse_listen(description) for description in DEFAULT_LISTEN]
        if self["workers"] > 1:
            _check_workers(self["workers"], listen)
        try:
            config = CapservConfig(
                encoding=self["encoding"],
                ascii_only=bool(self["ascii"]),
                **{name.replace("-", "_"): self[name] for name in _LIMITS},
                udp_rate_loopback=bool(self["udp-rate-loopback"]),
                access_log=not self["no-access-log"],
                udp_allow_low_ports=bool(self["udp-allow-low-ports"]),
                # The daemon's switch for measuring the fast paths (bench -nofast).
                fast_paths=os.environ.get("CAPSERV_NO_FASTPATH", "") in ("", "0"),
            )
        except ConfigError as e:
            raise usage.UsageError(f"--{e.field.replace('_', '-')}: {str(e).split(': ', 1)[1]}") from None
        self["settings"] = Settings(
            config=config,
            listen=tuple(listen),
            metrics=_metrics_listener(self["metrics"]),
            workers=self["workers"],
            drain_delay=float(self["drain-delay"]),
            # CAPSERV_NATIVE=0: --no-native, for the bench and the tox envs.
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
        raise usage.UsageError(
            str(e).replace("--listen", "--metrics", 1).replace(KINDS_HINT, STREAM_KINDS_HINT)
        ) from None
    if metrics.datagram:
        raise usage.UsageError(
            f"--metrics '{description}': metrics are served over HTTP; "
            "write a stream listen string such as tcp:9150:interface=127.0.0.1"
        )
    metrics.what = "metrics (HTTP)"
    return metrics


def _check_workers(workers: int, listen: list[Listener]) -> None:
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
    """The service, every listener bound (or one line and an exit); the reactor is the daemon's unless given."""
    settings: Settings = config["settings"]
    follow_twistd(getattr(config, "parent", None))
    if reactor is None:
        reactor = choose_reactor(settings.uvloop, settings.reactor)
    try:
        service = build_service(settings, reactor)
    except ListenError as e:
        raise SystemExit(f"capserv: {e}") from None
    service.takes_signals = True
    return service


def build_service(settings: Settings, reactor: Any, inherited: Sequence[int] = ()) -> CapservService:
    """`makeService` for programs (a `ListenError`, not an exit); ``inherited``: a worker's sockets."""
    config = settings.config
    factory = UppercaseFactory(config, clock=reactor)
    datagrams = DatagramState(config, clock=reactor)
    service = CapservService(config, factory, datagrams, reactor, settings.drain_delay, worker=settings.worker > 0)
    for listener, fd in zip(settings.listen, inherited, strict=False):
        listener.inherit(fd)
    bind_all([*settings.listen, *filter(None, [settings.metrics])])
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
