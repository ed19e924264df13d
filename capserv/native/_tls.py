"""
``startTLS`` on a `NativeTransport`: a ``TLSMemoryBIOProtocol`` under its
protocol, as in ``_newtls``; the connection becomes a `TLSNativeTransport`
(its class changed), so plain connections pay nothing for TLS.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IProducer, ISSLTransport
from zope.interface import alsoProvides

from capserv.native._stream import NativeTransport

__all__ = ["TLSNativeTransport", "start_tls"]


class TLSNativeTransport(NativeTransport):
    """A `NativeTransport` after ``startTLS``: what its protocol writes, closes and produces goes through TLS."""

    __slots__ = ()
    # The base's slot, named here so zope keeps declarations per instance (it would put a class one here).
    __provides__ = NativeTransport.__dict__["__provides__"]

    def write(self, data: bytes) -> None:
        if self.connected:
            self._tls.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        if self.connected:
            self._tls.writeSequence(data)

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self._tls.loseConnection()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._tls.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._tls.unregisterProducer()


class _Raw:
    """The transport under `NativeTransport.startTLS`'s TLS layer: the connection, bypassing TLS (``_BypassTLS``)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: NativeTransport) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def write(self, data: bytes) -> None:
        NativeTransport.write(self._connection, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        NativeTransport.writeSequence(self._connection, data)

    def loseConnection(self) -> None:
        NativeTransport.loseConnection(self._connection)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        NativeTransport.registerProducer(self._connection, producer, streaming)

    def unregisterProducer(self) -> None:
        NativeTransport.unregisterProducer(self._connection)


def start_tls(connection: NativeTransport, context_factory: Any, normal: bool) -> None:
    """
    Put a TLS layer between ``connection`` and its protocol, writing its
    records through a `_Raw` view of the connection; a registered producer
    moves to the layer.  ``normal``: `True` for TLS's server side.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    producer, streaming = connection._producer, connection._streaming
    connection._producer = None
    factory = TLSMemoryBIOFactory(context_factory, not normal, None)  # type: ignore[arg-type]  # only its protocol is used
    tls = factory.protocol(factory, connection._protocol, False)
    connection._protocol = connection._tls = tls
    connection.__class__ = TLSNativeTransport
    alsoProvides(connection, ISSLTransport)
    tls.makeConnection(_Raw(connection))
    if producer is not None:
        tls.registerProducer(producer, streaming)
