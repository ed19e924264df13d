"""
What the stream and datagram halves of `capserv.native` share: finding the
asyncio event loop under Twisted's reactor, and Twisted's addresses for
socket addresses.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

_log = Logger(namespace="capserv.native")

#: The listen backlog when none is given (the event loop sets it again on the socket).
DEFAULT_BACKLOG = 1024


def asyncio_loop(reactor: Any) -> Any:
    """The asyncio loop under Twisted's asyncio reactor (no public accessor: ``_asyncioEventloop``), or `None`."""
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:
        return None
    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    return getattr(reactor, "_asyncioEventloop", None)


def native_supported(reactor: Any) -> bool:
    """Whether `NativeSocketEndpoint` can serve streams on ``reactor`` (Twisted's asyncio reactor)."""
    return asyncio_loop(reactor) is not None


def native_datagrams_supported(reactor: Any) -> bool:
    """
    Whether datagrams on ``reactor`` can be worth the loop's own transport:
    on uvloop's loop only (asyncio's reads one datagram a wake-up).
    """
    loop = asyncio_loop(reactor)
    return loop is not None and type(loop).__module__.split(".")[0] == "uvloop"


def address(kind: int, name: Any, transport: str = "TCP") -> IAddress:
    """A Twisted address for a socket address of family ``kind``."""
    if kind == socket.AF_INET:
        return IPv4Address(transport, name[0], name[1])  # type: ignore[arg-type]
    if kind == socket.AF_INET6:
        return IPv6Address(transport, *name)  # type: ignore[arg-type]
    # An unnamed peer: Twisted's UNIX port hands buildProtocol the empty
    # name (getPeer says None).
    return UNIXAddress(name or "")
