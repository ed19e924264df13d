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

#: The listen backlog used when none is given.  The event loop calls
#: ``listen()`` again on the socket it is handed, so the backlog the socket
#: was made with is replaced by this one.
DEFAULT_BACKLOG = 1024


def asyncio_loop(reactor: Any) -> Any:
    """
    The asyncio event loop under Twisted's asyncio reactor, or `None` for
    any other reactor.

    ``AsyncioSelectorReactor`` keeps its loop in ``_asyncioEventloop`` and
    offers no public accessor (twisted#9967 asks for asyncio's transports to
    be used; nothing public exposes the loop yet).
    """
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:
        return None
    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    return getattr(reactor, "_asyncioEventloop", None)


def native_supported(reactor: Any) -> bool:
    """
    Whether streams on ``reactor`` can be served by its event loop's own
    transports: it is Twisted's asyncio reactor.  Whether they should be is
    the caller's choice (capserv's daemon reads ``CAPSERV_NATIVE`` and
    ``--no-native``).

    :param reactor: the reactor connections would be served on.
    :return: `True` if `NativeSocketEndpoint` can be used.
    """
    return asyncio_loop(reactor) is not None


def native_datagrams_supported(reactor: Any) -> bool:
    """
    Whether datagrams on ``reactor`` are worth serving on its event loop's
    own datagram transport: Twisted's asyncio reactor on uvloop's loop.
    uvloop's transport reads every datagram waiting; asyncio's reads one a
    wake-up, and is several times slower than Twisted's UDP port.  Even on
    uvloop it measured no faster than Twisted's port (docs/benchmarks), so
    capserv uses it only when asked (``CAPSERV_NATIVE_UDP=1``, read by the
    caller).

    :param reactor: the reactor datagrams would be served on.
    """
    loop = asyncio_loop(reactor)
    return loop is not None and type(loop).__module__.split(".")[0] == "uvloop"


def address(kind: int, name: Any, transport: str = "TCP") -> IAddress:
    """
    A Twisted address for a socket address of family ``kind``.
    """
    if kind == socket.AF_INET:
        return IPv4Address(transport, name[0], name[1])  # type: ignore[arg-type]
    if kind == socket.AF_INET6:
        return IPv6Address(transport, *name)  # type: ignore[arg-type]
    # An unnamed peer: Twisted's UNIX port hands buildProtocol the empty
    # name (getPeer says None).
    return UNIXAddress(name or "")
