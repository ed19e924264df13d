"""The one configuration object every capserv factory takes, from the daemon's command line or from code."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from capserv.protocols.text import service_encoding

if TYPE_CHECKING:
    # typing has Unpack for **kwargs from 3.12 only; never imported at run time.
    from typing_extensions import Unpack

__all__ = ["MAX_WAIT", "MIN_UDP_BYTE_BURST", "CapservConfig", "Clock", "ConfigError"]

#: The smallest byte burst: one largest reply (`capserv.protocols.udp.MAX_REPLY_IPV6`).
MIN_UDP_BYTE_BURST = 65527


class Clock(Protocol):
    """What capserv needs of a clock, by shape (any reactor or ``task.Clock``), for checkers blind to zope."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], /, *args: Any, **kw: Any) -> object: ...


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


#: The most a waiting time may be: a day (more is a typing slip).
MAX_WAIT = 86400.0

#: The numbers checked: field -> (whole number?, least, most or None, the most in words).
_RANGES: dict[str, tuple[bool, int, float | None, str]] = {
    "idle_timeout": (False, 0, 30 * MAX_WAIT, "30 days"),
    "abort_grace": (False, 0, MAX_WAIT, "a day"),
    "shutdown_timeout": (False, 0, MAX_WAIT, "a day"),
    "udp_rate": (False, 0, None, ""),
    "udp_byte_rate": (False, 0, None, ""),
    "max_connections": (True, 0, None, ""),
    "max_connections_per_ip": (True, 0, None, ""),
    "udp_burst": (True, 0, None, ""),
    "udp_byte_burst": (True, 0, None, ""),
    "high_water": (True, 1, 1 << 30, "1 GiB"),  # the event loops take a C int
    "udp_rate_table_size": (True, 1, None, ""),
}


class _Changes(TypedDict, total=False):
    """The fields `CapservConfig.replace` takes, so a type checker rejects any other."""

    encoding: str
    ascii_only: bool
    idle_timeout: float
    abort_grace: float
    max_connections: int
    max_connections_per_ip: int
    ipv4_prefix: int
    ipv6_prefix: int
    high_water: int
    udp_rate: float
    udp_burst: int
    udp_byte_rate: float
    udp_byte_burst: int
    udp_rate_loopback: bool
    udp_rate_table_size: int
    udp_allow_low_ports: bool
    shutdown_timeout: float
    access_log: bool
    fast_paths: bool


@dataclass(frozen=True, kw_only=True)
class CapservConfig:
    """
    Every knob of capserv's behaviour, with the daemon's defaults.

    Zero turns a limit, a timeout or a rate off.  Every field is passed by
    name: ``CapservConfig(idle_timeout=60.0)``.
    """

    #: What clients send is text in this encoding (`capserv.protocols.text.service_encoding`).
    encoding: str = "utf-8"
    #: Map only a-z to A-Z and leave every other byte alone (fastest).
    ascii_only: bool = False
    #: Seconds without traffic before a TCP connection is closed.
    idle_timeout: float = 300.0
    #: Seconds a closing connection gets to take its last bytes before an abort.
    abort_grace: float = 5.0
    #: Most TCP connections open at once, across all listeners.
    max_connections: int = 20000
    #: Most TCP connections open at once from one source network.
    max_connections_per_ip: int = 0
    #: IPv4 prefix length that per-source limits count as one source.
    ipv4_prefix: int = 32
    #: IPv6 prefix length counted as one source (a host is given a /64).
    ipv6_prefix: int = 64
    #: Unsent reply bytes past which capserv stops reading until they drain.
    high_water: int = 65536
    #: Datagrams per second answered per source network (token bucket).
    udp_rate: float = 500.0
    #: Datagrams a source may send at once before the rate applies.
    udp_burst: int = 1000
    #: Reply bytes per second to one source network (one megabit): what a spoofed stream can aim at a victim.
    udp_byte_rate: float = 125000.0
    #: Reply bytes a source may be sent at once (>= `MIN_UDP_BYTE_BURST`).
    udp_byte_burst: int = 250000
    #: Rate-limit loopback sources too (their replies cannot be reflected).
    udp_rate_loopback: bool = False
    #: Most source networks the rate limiter remembers (LRU).
    udp_rate_table_size: int = 65536
    #: Answer source ports below 1024 (off: a spoofed datagram could bounce between two services for ever).
    udp_allow_low_ports: bool = False
    #: Seconds a graceful stop waits for open connections to finish.
    shutdown_timeout: float = 10.0
    #: Log one line per closed TCP connection (refusals and errors always are).
    access_log: bool = True
    #: Send through Twisted internals when nothing waits (`capserv.protocols._twisted`).
    fast_paths: bool = True

    def __post_init__(self) -> None:
        try:
            canonical = service_encoding(self.encoding)
        except LookupError as e:
            raise ConfigError("encoding", str(e)) from None
        object.__setattr__(self, "encoding", canonical)
        for name, (whole, least, most, what) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not value >= least:
                raise ConfigError(
                    name, f"must be {'a whole number' if whole else 'a number'} >= {least}, not {value!r}"
                )
            if most is not None and value > most:
                raise ConfigError(name, f"must be at most {int(most)} ({what}), not {value!r}")
        if self.udp_rate > 0 and self.udp_burst < 1:
            raise ConfigError("udp_burst", f"must be >= 1 while the UDP rate limit is on, not {self.udp_burst}")
        if self.udp_byte_rate > 0 and self.udp_byte_burst < MIN_UDP_BYTE_BURST:
            why = f"at least {MIN_UDP_BYTE_BURST} (one largest reply) while the UDP byte rate is on"
            raise ConfigError("udp_byte_burst", f"must be {why}, not {self.udp_byte_burst}")
        for name, most in (("ipv4_prefix", 32), ("ipv6_prefix", 128)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ConfigError(name, f"must be a prefix length from 1 to {most}, not {value!r}")

    def replace(self, **changes: Unpack[_Changes]) -> CapservConfig:
        """A validated copy with some fields changed; `ConfigError` names an unknown field."""
        fields = {field.name for field in dataclasses.fields(self)}
        for name in changes:
            if name not in fields:
                raise ConfigError(name, f"no such field; CapservConfig's fields are {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **changes)
