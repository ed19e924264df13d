"""
Twisted protocols served on the asyncio event loop's own transports (uvloop's
or asyncio's), with no Twisted transport in between: docs/development.rst
says how Twisted's interfaces map onto asyncio's, docs/embedding.rst what differs.
"""

from capserv.native._common import DEFAULT_BACKLOG, asyncio_loop, native_datagrams_supported, native_supported
from capserv.native._datagram import NativeDatagramPort, listen_datagrams
from capserv.native._port import NativeConnections, NativePort, NativeSocketEndpoint
from capserv.native._stream import NativeTransport

__all__ = [
    "DEFAULT_BACKLOG",
    "NativeConnections",
    "NativeDatagramPort",
    "NativePort",
    "NativeSocketEndpoint",
    "NativeTransport",
    "asyncio_loop",
    "listen_datagrams",
    "native_datagrams_supported",
    "native_supported",
]
