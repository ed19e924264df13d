"""`native_endpoint`: ``serverFromString`` with ``tcp:``, ``tcp6:`` and ``unix:`` on the event loop's transports."""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from capserv.endpoints.grammar import DescriptionError, Inet, Unix, parse, twisted_description
from capserv.endpoints.sockets import make_socket, release
from capserv.native import NativeSocketEndpoint, native_supported

__all__ = ["native_endpoint"]


def native_endpoint(reactor: Any, description: str, native: bool = True) -> IStreamServerEndpoint:
    """
    ``serverFromString`` for a description read as ``--listen`` reads it: on the asyncio reactor (unless
    ``native=False``) ``tcp:``, ``tcp6:`` and ``unix:`` give a `NativeSocketEndpoint`.
    Errors are `capserv.endpoints.grammar.DescriptionError`, saying what to write instead.
    """
    address = parse(description)
    if isinstance(address, Inet) and address.datagram:
        raise DescriptionError("native_endpoint serves streams, and udp: is capserv's datagram kind")
    if native and native_supported(reactor) and isinstance(address, (Inet, Unix)):
        host, port = (address.host, address.port) if isinstance(address, Inet) else ("", address.path)
        return NativeSocketEndpoint(
            reactor,
            partial(make_socket, address),
            backlog=address.backlog,
            interface=host,
            port=port,
            cleanup=partial(release, address),
        )
    return serverFromString(reactor, twisted_description(description))  # type: ignore[no-any-return]
