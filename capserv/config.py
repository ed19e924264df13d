"""
The one configuration object that every capserv factory takes.

The daemon builds a `CapservConfig` from its command line; a program that
embeds capserv builds one in code.  Either way the factories see the same
typed, validated values, so an embedding program gets exactly the daemon's
behaviour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from capserv.text import lookup_encoding

__all__ = ["CapservConfig", "ConfigError"]


class ConfigError(ValueError):
    """
    A configuration value is out of range; the message names the field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class CapservConfig:
    """
    Every knob of capserv's behaviour, with the daemon's defaults.

    Zero turns a limit, a timeout or a rate off.
    """

    #: Text encoding of the bytes clients send (any Python text codec).
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
    #: Most TCP connections open at once from one IP address.
    max_connections_per_ip: int = 0
    #: Unsent reply bytes on one connection past which capserv stops reading
    #: from it until they drain.
    high_water: int = 65536
    #: Datagrams per second allowed from one source address (token bucket).
    udp_rate: float = 500.0
    #: Datagrams a source may send at once before the rate applies.
    udp_burst: int = 1000
    #: Apply the UDP rate limit to loopback sources too.  Off by default:
    #: a reply to loopback cannot be reflected at another host.
    udp_rate_loopback: bool = False
    #: Most source addresses the rate limiter remembers (least recently seen
    #: are forgotten first), bounding its memory.
    udp_rate_table_size: int = 65536
    #: Answer datagrams from source ports below 1024.  Off by default: those
    #: ports belong to other services (echo, chargen...), and answering them
    #: lets a spoofed datagram bounce between two servers forever.
    udp_allow_low_ports: bool = False
    #: Seconds a graceful stop waits for open connections to finish.
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        try:
            canonical = lookup_encoding(self.encoding)
        except LookupError:
            raise ConfigError("encoding", f"unknown text encoding {self.encoding!r}") from None
        object.__setattr__(self, "encoding", canonical)
        for name in ("idle_timeout", "abort_grace", "udp_rate", "shutdown_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0:
                raise ConfigError(name, f"must be a number >= 0, not {value!r}")
        for name in ("max_connections", "max_connections_per_ip", "udp_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(name, f"must be a whole number >= 0, not {value!r}")
        for name in ("high_water", "udp_rate_table_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a whole number >= 1, not {value!r}")
        if self.udp_rate > 0 and self.udp_burst < 1:
            raise ConfigError("udp_burst", f"must be >= 1 while the UDP rate limit is on, not {self.udp_burst}")

    def replace(self, **changes: object) -> CapservConfig:
        """
        Return a copy with some fields changed (and validated again).
        """
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
