"""``startTLS`` on a `NativeTransport`: a ``TLSMemoryBIOProtocol`` under its protocol, as in ``_newtls``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProducer, ISSLTransport
from zope.interface import alsoProvides

if TYPE_CHECKING:
    from capserv.native._stream import NativeTransport


class _Raw:
    """The transport under `NativeTransport.startTLS`'s TLS layer: the connection, bypassing TLS (``_BypassTLS``)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: NativeTransport) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def write(self, data: bytes) -> None:
        self._connection._raw_write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._connection._raw_write_sequence(data)

    def loseConnection(self) -> None:
        self._connection._lose()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._connection._raw_register(producer, streaming)

    def unregisterProducer(self) -> None:
        self._connection._raw_unregister()


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
    alsoProvides(connection, ISSLTransport)
    tls.makeConnection(_Raw(connection))
    if producer is not None:
        tls.registerProducer(producer, streaming)
