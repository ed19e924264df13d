"""
Twisted protocols served on the asyncio event loop's own transports (uvloop's,
or asyncio's): any ``IProtocolFactory`` on a socket the loop reads and writes
itself, with no Twisted transport in between.  See docs/development.rst
("capserv.native") for how Twisted's interfaces map onto asyncio's, and
docs/embedding.rst for what differs from Twisted's transports.

Modules: `_stream` (one connection), `_tls` (``startTLS``), `_port` (the
endpoint and its port), `_datagram` (UDP), `_common` (the loop, addresses).
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
