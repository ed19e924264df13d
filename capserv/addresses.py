"""
Turn Twisted address objects into the key that limits count by.

An IPv6 listener on ``::`` sees IPv4 peers as ``::ffff:a.b.c.d``; limits must
treat them as the IPv4 address they are, or one client could double its
share by connecting both ways.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from twisted.internet.interfaces import IAddress

__all__ = ["host_key", "is_loopback"]


def host_key(address: object) -> str | None:
    """
    The IP address that per-address limits count, or `None` for addresses
    that have none (UNIX sockets, pipes).

    :param address: an `IAddress` (``IPv4Address``, ``IPv6Address``,
        ``UNIXAddress``...) or a ``(host, port)`` tuple as UDP delivers.
    """
    if isinstance(address, tuple):
        host = address[0]
    else:
        host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    if "%" in host:
        # A scope id (fe80::1%eth0) names the same host on every scope.
        host = host.split("%", 1)[0]
    return host


def is_loopback(host: str) -> bool:
    """
    Tell whether ``host`` (as `host_key` returns it) is a loopback address.

    Cheap enough for every datagram: an IPv4 address outside 127/8 is
    answered without parsing, and parses are cached.
    """
    if ":" not in host and not host.startswith("127."):
        return False  # IPv4 outside 127/8, or not an address at all
    return _parsed_is_loopback(host)


@lru_cache(maxsize=1024)
def _parsed_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(address: IAddress | object) -> str:
    """
    A short human form of an address for log lines: ``1.2.3.4:5678``,
    ``[::1]:5678``, the UNIX path, or ``unix client`` for the unnamed end
    of a UNIX connection (a client's socket has no path).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if hasattr(address, "name"):
        name = address.name
        if not name:
            return "unix client"
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)
