"""
Addresses as per-source limits count them: an IPv4-mapped IPv6 peer as the
IPv4 address it is (or one client could double its share by connecting both
ways), and a source as its network (one IPv6 host is given a whole /64).
"""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address

__all__ = ["SourceNetworks", "describe", "family", "host_key", "is_loopback"]

_IPV6_LOOPBACK = socket.inet_pton(socket.AF_INET6, "::1")
#: How many hosts `SourceNetworks.key` remembers the network of.
HOSTS_REMEMBERED = 4096


def host_key(address: object) -> str | None:
    """
    The IP address limits count for an `IAddress` or a UDP ``(host, port)``
    tuple, or `None` for one without (UNIX sockets, pipes).
    """
    host = address[0] if isinstance(address, tuple) else getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    # A scope id (fe80::1%eth0) names the same host on every scope.
    return host.partition("%")[0]


def _packed(host: str) -> bytes | None:
    # inet_pton, not ipaddress: a flood from new (spoofed) sources parses each, 20x cheaper.
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as `host_key` returns it) is in 127.0.0.0/8 or is ``::1``."""
    packed = _packed(host)
    return packed == _IPV6_LOOPBACK or (packed is not None and len(packed) == 4 and packed[0] == 127)


class SourceNetworks:
    """
    The network per-source limits count an address in, keyed by its packed
    address with the host bits zeroed (4 bytes for IPv4, 16 for IPv6).
    """

    __slots__ = ("_hosts", "_masks", "ipv4_prefix", "ipv6_prefix")

    def __init__(self, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> None:
        """:param ipv4_prefix: IPv4 prefix length counted as one source (`CapservConfig` checks both)."""
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self._masks = {4: (1 << 32) - (1 << (32 - ipv4_prefix)), 16: (1 << 128) - (1 << (128 - ipv6_prefix))}
        # Most connections come from hosts seen a moment ago; emptied when full, so a many-source flood keeps it small.
        self._hosts: dict[str, bytes] = {}

    def network(self, host: str) -> bytes:
        """The network of ``host`` (as `host_key` returns it); a host that is no IP address counts alone."""
        packed = _packed(host)
        if packed is None:
            return host.encode()
        return (int.from_bytes(packed, "big") & self._masks[len(packed)]).to_bytes(len(packed), "big")

    def key(self, address: object) -> bytes | None:
        """The network of an address as `host_key` takes it, or `None` if it has no IP address."""
        if type(address) is IPv4Address:  # one a connection: this first
            host: object = address.host
        else:
            host = address[0] if isinstance(address, tuple) else getattr(address, "host", None)
        network = self._hosts.get(host) if type(host) is str else None
        if network is None and (key := host_key(address)) is not None:
            if len(self._hosts) >= HOSTS_REMEMBERED:
                self._hosts.clear()
            network = self._hosts[host] = self.network(key)  # type: ignore[index]
        return network

    def text(self, network: bytes) -> str:
        """A network this object returned, as CIDR text: ``2001:db8::/64``."""
        if len(network) == 4:
            return f"{socket.inet_ntop(socket.AF_INET, network)}/{self.ipv4_prefix}"
        if len(network) == 16:
            return f"{socket.inet_ntop(socket.AF_INET6, network)}/{self.ipv6_prefix}"
        return network.decode("utf-8", "replace")


def family(network: bytes) -> str:
    """``"ipv6"`` or ``"ipv4"``: the family of a network as `SourceNetworks` keys it."""
    return "ipv6" if len(network) == 16 else "ipv4"


def describe(address: object) -> str:
    """
    An address for log lines: ``1.2.3.4:5678``, ``[::1]:5678`` (from an
    `IAddress` or a UDP tuple), a UNIX path, or ``unix client`` (a client's
    socket has no path).
    """
    if type(address) is IPv4Address and type(address.port) is int:  # one line a connection: this first
        return f"{address.host}:{address.port}"
    if type(address) is str:  # described already
        return address
    if isinstance(address, tuple):
        host, port = address[0], address[1]
    else:
        host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not hasattr(address, "name"):
        return str(address)
    name = address.name
    if not name:
        return "unix client"
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
