"""
Serving what the listeners bound: an endpoint over a socket made elsewhere,
the "Listening" line, a UNIX socket file removed on stop, and the UDP
service.  `capserv.daemon.listen` builds these.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from capserv.endpoints.grammar import Unix
from capserv.endpoints.sockets import release
from capserv.protocols.addresses import describe
from capserv.protocols.udp import MAX_DATAGRAM

if TYPE_CHECKING:
    from capserv.daemon.listen import DatagramListener

__all__ = ["ListenError", "SocketEndpoint"]

#: The same namespace as the listeners' lines.
_log = Logger(namespace="capserv.listen")


class ListenError(Exception):
    """
    A listen description is wrong, or its address cannot be taken; the
    message names the description and what to write instead.

    :ivar errno: the bind's error number when the address could not be
        taken (``errno.EADDRINUSE``...), else `None`.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def _bind_error(description: str, e: OSError, address: str, stream: bool = True) -> ListenError:
    """
    Turn a failed bind into one line that says what to do.

    ``stream`` is false for UDP: TIME_WAIT is a TCP state, so a UDP port in
    use is never explained by it (a TCP connection closing on the same port
    number is another socket altogether).
    """
    if isinstance(e.filename, str) or address.startswith(("/", ".")) or "systemd" in address:
        reasons = {
            errno.EADDRINUSE: f"{address} is in use by a running server; stop it or choose another path",
            errno.EACCES: f"no permission to create {address}; choose a folder this user may write to",
            errno.EEXIST: f"{address} exists and is not a socket; remove it or choose another path",
        }
        return ListenError(
            f"cannot listen on '{description}': {reasons.get(e.errno or 0, f'{address}: {e.strerror or e}')}",
            e.errno,
        )
    in_use = f"{address} is already in use; stop what listens there or choose another port"
    if e.errno == errno.EADDRINUSE and stream and _only_time_wait(address):
        in_use = (
            f"{address} still has connections closing (TIME_WAIT) from a program that did not set "
            "SO_REUSEADDR; wait a minute or choose another port"
        )
    reasons = {
        errno.EADDRINUSE: in_use,
        errno.EADDRNOTAVAIL: f"{address} is not an address of this host; choose one it has (ip address shows them)",
        errno.EACCES: f"{address} needs privileges; choose a port >= 1024 or run with CAP_NET_BIND_SERVICE",
        errno.ENOENT: f"the folder of {address} does not exist; create it or choose another path",
    }
    reason = reasons.get(e.errno or 0, f"{address}: {e.strerror or e}")
    return ListenError(f"cannot listen on '{description}': {reason}", e.errno)


def _only_time_wait(address: str) -> bool:
    """
    Whether a TCP port that could not be bound has no listener on this host,
    only connections in TIME_WAIT (Linux's /proc/net/tcp and tcp6).
    """
    try:
        port = int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return False
    states = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) > 3 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        states.add(fields[3])
        except OSError:
            return False
    return states == {"06"}


@implementer(IStreamServerEndpoint)
class SocketEndpoint:
    """
    A stream server endpoint that serves a socket made elsewhere (bound and
    listening) on Twisted's own transports, through the public
    ``IReactorSocket.adoptStreamPort``.
    """

    def __init__(self, reactor: Any, make_socket: Callable[[], socket.socket]) -> None:
        """
        :param make_socket: returns the bound, listening socket; may raise
            `OSError`.
        """
        self.reactor = reactor
        self.make_socket = make_socket

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            sock = self.make_socket()
        except OSError as e:
            return fail(CannotListenError(None, None, e))
        try:
            port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()  # Twisted holds its own duplicate
        return succeed(port)


@implementer(IStreamServerEndpoint)
class _Logged:
    """An endpoint that logs where it listens, with the operator's description."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, what: str) -> None:
        self.endpoint = endpoint
        self.description = description
        self.what = what

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            _log.info(
                "Listening for {what} on {address} ({description})",
                what=self.what,
                address=describe(port.getHost()),
                description=self.description,
            )
            return port

        return self.endpoint.listen(factory).addCallback(listening)


class _RemoveOnStop(Service):
    """Remove a UNIX socket's file, and its lock, once its listener has stopped."""

    def __init__(self, address: Unix) -> None:
        self.address = address

    def stopService(self) -> None:
        Service.stopService(self)
        try:
            if stat.S_ISSOCK(os.stat(self.address.path).st_mode):
                os.unlink(self.address.path)
        except OSError:
            pass
        release(self.address)


class _DatagramService(Service):
    """
    Serve a bound datagram socket with a datagram protocol while running
    (Twisted's ``internet.UDPServer`` binds its own socket; this adopts the
    one the listener bound, through ``IReactorSocket.adoptDatagramPort``).
    """

    def __init__(self, listener: DatagramListener, protocol: DatagramProtocol, reactor: Any) -> None:
        self.listener = listener
        self.protocol = protocol
        self.reactor = reactor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        try:
            sock = self.listener.take_socket()
        except OSError as e:
            raise _bind_error(self.listener.description, e, self.listener.where(), stream=False) from None
        try:
            self.port = self.reactor.adoptDatagramPort(
                sock.fileno(), sock.family, self.protocol, maxPacketSize=MAX_DATAGRAM
            )
        finally:
            sock.close()
        _log.info(
            "Listening for datagrams on {address} ({description})",
            address=describe(self.port.getHost()),
            description=self.listener.description,
        )
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        Service.startService(self)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()  # type: ignore[no-any-return]
        return None
