"""
Twisted protocols served on the asyncio event loop's own transports (uvloop's,
or asyncio's): any ``IProtocolFactory`` on a socket the loop reads and writes
itself, with no Twisted transport in between.
"""

from capserv.native._adapter import (
    DEFAULT_BACKLOG,
    NativeDatagramPort,
    NativePort,
    NativeSocketEndpoint,
    NativeTransport,
    asyncio_loop,
    listen_datagrams,
    native_datagrams_supported,
    native_supported,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "NativeDatagramPort",
    "NativePort",
    "NativeSocketEndpoint",
    "NativeTransport",
    "asyncio_loop",
    "listen_datagrams",
    "native_datagrams_supported",
    "native_supported",
]
