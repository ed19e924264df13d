"""
The one configuration object that every capserv factory takes.

The daemon builds a `CapservConfig` from its command line; a program that
embeds capserv builds one in code.  Either way the factories see the same
typed, validated values, so an embedding program gets exactly the daemon's
behaviour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from capserv.protocols.text import service_encoding

if TYPE_CHECKING:
    # Unpack is in typing from 3.11 (and for **kwargs from 3.12); type
    # checkers know typing_extensions, and nothing imports it at run time.
    from typing_extensions import Unpack

__all__ = [
    "MAX_HIGH_WATER",
    "MAX_IDLE_TIMEOUT",
    "MAX_WAIT",
    "MIN_UDP_BYTE_BURST",
    "CapservConfig",
    "Clock",
    "ConfigError",
]

#: The smallest byte burst: one largest reply capserv sends (65,535 - 8
#: bytes over IPv6, `capserv.protocols.udp.MAX_REPLY_IPV6`), so every reply it would
#: send can pass the byte budget.
MIN_UDP_BYTE_BURST = 65527


class Clock(Protocol):
    """
    What capserv needs of a clock, by shape: any reactor or ``task.Clock``
    passes, also for type checkers that do not understand zope interfaces.
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], /, *args: Any, **kw: Any) -> object: ...


class ConfigError(ValueError):
    """
    A configuration value is out of range; the message names the field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


#: The most a waiting time may be: a day.  More is a typing slip (a stop
#: that never ends), not a policy.
MAX_WAIT = 86400.0
#: The longest idle timeout: 30 days.
MAX_IDLE_TIMEOUT = 30 * MAX_WAIT
#: The largest high-water mark: 1 GiB of unsent reply per connection (the
#: event loops take it as a C int).
MAX_HIGH_WATER = 1 << 30

_UPPER_BOUNDS = (
    ("idle_timeout", MAX_IDLE_TIMEOUT, "30 days"),
    ("abort_grace", MAX_WAIT, "a day"),
    ("shutdown_timeout", MAX_WAIT, "a day"),
    ("high_water", MAX_HIGH_WATER, "1 GiB"),
)


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

    #: Text encoding of the bytes clients send: a Python text codec in which
    #: ASCII letters are themselves (utf-8, latin-1, cp1252...;
    #: `capserv.protocols.text.service_encoding`).
    encoding: str = "utf-8"
    #: Map only a-z to A-Z and leave every other byte alone (fastest).
    ascii_only: bool = False
    #: Seconds without traffic in either direction before a TCP connection
    #: is closed.
    idle_timeout: float = 300.0
    #: Seconds a closing connection gets to take its last bytes before it is
    #: aborted (idle timeout, shutdown).
    abort_grace: float = 5.0
    #: Most TCP connections open at once, across all listeners.
    max_connections: int = 20000
    #: Most TCP connections open at once from one source network (see
    #: `ipv4_prefix` and `ipv6_prefix`).
    max_connections_per_ip: int = 0
    #: The length of the IPv4 networks that per-source limits count as one
    #: source (``max_connections_per_ip``, the UDP budgets): 32, each address.
    ipv4_prefix: int = 32
    #: The length of the IPv6 networks counted as one source: 64, because a
    #: single host is given a whole /64.
    ipv6_prefix: int = 64
    #: Unsent reply bytes on one connection past which capserv stops reading
    #: from it until they drain.
    high_water: int = 65536
    #: Datagrams per second answered per source network (token bucket).
    udp_rate: float = 500.0
    #: Datagrams a source may send at once before the rate applies.
    udp_burst: int = 1000
    #: Reply bytes per second sent to one source network (a second token
    #: bucket): 125,000, one megabit a second, caps what a spoofed stream
    #: can aim at one victim (500 datagrams a second of 65,507 bytes would
    #: be 262 megabits).
    udp_byte_rate: float = 125000.0
    #: Reply bytes a source may be sent at once before the byte rate
    #: applies; at least `MIN_UDP_BYTE_BURST` while the byte rate is on.
    udp_byte_burst: int = 250000
    #: Apply the UDP rate limits to loopback sources too.  Off by default:
    #: a reply to loopback cannot be reflected at another host.
    udp_rate_loopback: bool = False
    #: Most source networks the rate limiter remembers (least recently seen
    #: are forgotten first), bounding its memory.
    udp_rate_table_size: int = 65536
    #: Answer datagrams from source ports below 1024.  Off by default: those
    #: ports belong to other services (echo, chargen...), and answering them
    #: lets a spoofed datagram bounce between two servers forever.
    udp_allow_low_ports: bool = False
    #: Seconds a graceful stop waits for open connections to finish.
    shutdown_timeout: float = 10.0
    #: Log one line per TCP connection when it closes (peer, duration,
    #: bytes, reason).  Off: no per-connection line (refusals, drops and
    #: errors are still logged).
    access_log: bool = True
    #: Send a reply at once when nothing is waiting and send UDP replies
    #: with ``sendto`` directly, through Twisted internals
    #: (`capserv.protocols._twisted`).  Off: Twisted's public path only, to
    #: measure what they are worth or should a Twisted release break them.
    fast_paths: bool = True

    def __post_init__(self) -> None:
        try:
            canonical = service_encoding(self.encoding)
        except LookupError as e:
            raise ConfigError("encoding", str(e)) from None
        object.__setattr__(self, "encoding", canonical)
        for name in ("idle_timeout", "abort_grace", "udp_rate", "udp_byte_rate", "shutdown_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0:
                raise ConfigError(name, f"must be a number >= 0, not {value!r}")
        for name in ("max_connections", "max_connections_per_ip", "udp_burst", "udp_byte_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(name, f"must be a whole number >= 0, not {value!r}")
        for name in ("high_water", "udp_rate_table_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a whole number >= 1, not {value!r}")
        for name, most, what in _UPPER_BOUNDS:
            value = getattr(self, name)
            if value > most:
                raise ConfigError(name, f"must be at most {int(most)} ({what}), not {value!r}")
        if self.udp_rate > 0 and self.udp_burst < 1:
            raise ConfigError("udp_burst", f"must be >= 1 while the UDP rate limit is on, not {self.udp_burst}")
        if self.udp_byte_rate > 0 and self.udp_byte_burst < MIN_UDP_BYTE_BURST:
            raise ConfigError(
                "udp_byte_burst",
                f"must be at least {MIN_UDP_BYTE_BURST} (one largest reply) while the UDP byte rate is on, "
                f"not {self.udp_byte_burst}",
            )
        for name, most in (("ipv4_prefix", 32), ("ipv6_prefix", 128)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ConfigError(name, f"must be a prefix length from 1 to {most}, not {value!r}")

    def replace(self, **changes: Unpack[_Changes]) -> CapservConfig:
        """
        Return a copy with some fields changed (and validated again).

        :param changes: new values by field name; a type checker rejects any
            other name.
        :raises ConfigError: for a name that is not a field, listing the
            fields, or for a value out of range.
        """
        fields = {field.name for field in dataclasses.fields(self)}
        for name in changes:
            if name not in fields:
                raise ConfigError(name, f"no such field; CapservConfig's fields are {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **changes)
