"""
`native_endpoint`: ``serverFromString`` with ``tcp:``, ``tcp6:`` and ``unix:``
served on the event loop's own transports (`capserv.native`).
"""

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
    An endpoint for a server endpoint description, served by the event
    loop's own transports where it can be.

    Use it in place of ``twisted.internet.endpoints.serverFromString``:
    ``tcp:``, ``tcp6:`` and ``unix:`` descriptions on Twisted's asyncio
    reactor (unless ``native=False``) give a
    `NativeSocketEndpoint`; anything else, or any other reactor, gives
    Twisted's endpoint for the description.  Every description is read as
    the daemon's ``--listen`` reads it (`capserv.endpoints.grammar`).

    :param reactor: the reactor to listen on.
    :param description: e.g. ``"tcp:50007:interface=127.0.0.1"``.
    :param native: ``False`` gives Twisted's endpoint whatever the reactor
        (for comparing the two, or as a way out).
    :return: the endpoint; the socket is made when it listens.
    :raises capserv.endpoints.grammar.DescriptionError: for a description
        that cannot be used, saying what to write instead.
    """
    address = parse(description)
    if isinstance(address, Inet) and address.datagram:
        raise DescriptionError("native_endpoint serves streams, and udp: is capserv's datagram kind")
    if native and native_supported(reactor) and isinstance(address, (Inet, Unix)):
        where = (address.host, address.port) if isinstance(address, Inet) else ("", address.path)
        return NativeSocketEndpoint(
            reactor,
            partial(make_socket, address),
            backlog=address.backlog,
            interface=where[0],
            port=where[1],
            cleanup=partial(release, address),
        )
    endpoint: IStreamServerEndpoint = serverFromString(reactor, twisted_description(description))
    return endpoint
