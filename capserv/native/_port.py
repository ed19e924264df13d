"""
Listening: `NativeSocketEndpoint` serves a listening socket with the event
loop's server, one `NativeTransport` a connection, and gives a `NativePort`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Callable, Coroutine
from dataclasses import KW_ONLY, dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

from capserv.native._common import DEFAULT_BACKLOG, address, asyncio_loop
from capserv.native._stream import NativeTransport

__all__ = ["NativeConnections", "NativePort", "NativeSocketEndpoint"]


class NativeConnections:
    """What the connections of one listening socket share, and the set of those open."""

    __slots__ = ("factory", "family", "loop", "open", "reactor", "sessions")

    def __init__(self, factory: IProtocolFactory, family: int, loop: Any, reactor: Any = None) -> None:
        self.factory = factory
        self.family = family
        self.loop = loop
        self.reactor = reactor
        self.open: set[NativeTransport] = set()  # those whose protocol is connected
        self.sessions = 0  # connections accepted so far (Twisted's sessionno)

    def disconnect_all(self) -> None:
        """Drop every open connection now, ``connectionLost`` with `ConnectionLost` (Twisted's ``disconnectAll``)."""
        for connection in list(self.open):
            connection._shut_down()


@implementer(IListeningPort)
class NativePort:
    """
    A listening socket served by the event loop; it stops and drops its connections at the reactor's
    shutdown, as Twisted's ports do.  ``path``: a UNIX socket's path and inode, its file removed at stop.
    """

    def __init__(
        self,
        server: asyncio.AbstractServer,
        connections: NativeConnections,
        host: IAddress,
        path: tuple[str, int] | None = None,
        cleanup: Callable[[], object] | None = None,
    ) -> None:
        self.connections = connections
        self._server: asyncio.AbstractServer | None = server
        self._host = host
        self._path = path
        self._cleanup = cleanup
        reactor = connections.reactor
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._shut_down)

    def _shut_down(self) -> None:
        self._trigger = None
        self.stopListening()
        self.connections.disconnect_all()

    def startListening(self) -> None:
        """Nothing to do: the port listens from the moment it is made."""

    def stopListening(self) -> Deferred[None]:
        """Close the listening socket now (open connections stay open); a fired `Deferred`."""
        if self._trigger is not None and not self.connections.open:
            self.connections.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        server, self._server = self._server, None
        if server is None:
            return succeed(None)
        server.close()
        if self._path is not None:
            path, inode = self._path
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        if self._cleanup is not None:
            self._cleanup()
        self.connections.factory.doStop()
        return succeed(None)

    loseConnection = stopListening

    def getHost(self) -> IAddress:
        """:return: the address listened on."""
        return self._host


def _run_now(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """
    Run ``loop.create_server``'s coroutine to its end now, through bare ``yield``s, so ``listen``
    fires at once: ``(True, result)``, or ``(False, task)`` if it awaits a real future.
    """
    for _ in range(100):
        try:
            waited = coroutine.send(None)
        except StopIteration as done:
            return True, done.value
        if waited is not None:
            # Something truly awaited: let the loop finish it.
            return False, loop.create_task(_resume(coroutine, waited))
    return False, loop.create_task(_resume(coroutine, None))


async def _resume(coroutine: Coroutine[Any, Any, Any], waited: Any) -> Any:
    """Finish, as a task, a coroutine `_run_now` started, from where it waits (``waited``, or a bare ``yield``)."""
    while True:
        if waited is None:
            await asyncio.sleep(0)
        else:
            # Wait without awaiting it here: the coroutine reads the outcome.
            await asyncio.wait([waited])
        try:
            waited = coroutine.send(None)
        except StopIteration as done:
            return done.value


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class NativeSocketEndpoint:
    """
    Serve a listening socket with the event loop's own server and transports.

    :param reactor: Twisted's asyncio reactor (see `native_supported`).
    :param make_socket: returns a bound, listening, non-blocking TCP or UNIX
        stream socket, or raises `OSError` (or `CannotListenError`).
    :param interface: the address, and ``port`` the port or path, for the error of a socket not made.
    :param cleanup: called once the port has stopped listening (a lock file's release).
    :param unlink: remove a UNIX socket's file when the port stops, as Twisted
        does (`False` for a socket someone else owns, such as systemd's).
    """

    reactor: Any
    make_socket: Callable[[], socket.socket]
    _: KW_ONLY
    backlog: int = DEFAULT_BACKLOG
    interface: str = ""
    port: int | str = 0
    cleanup: Callable[[], object] | None = None
    unlink: bool = True

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803 (the interface's name)
        """Listen: a `Deferred` already fired, with a `NativePort` or `CannotListenError` (reactor running or not)."""
        loop = asyncio_loop(self.reactor)
        if loop is None:
            return fail(CannotListenError(self.interface, self.port, OSError("not Twisted's asyncio reactor")))
        try:
            sock = self.make_socket()
        except CannotListenError:
            return fail()
        except OSError as e:
            return fail(CannotListenError(self.interface, self.port, e))
        try:
            sock = _as_tcp(sock)
            sock.setblocking(False)
            family = sock.family
            host = address(family, sock.getsockname())
            path = _filesystem_path(sock) if self.unlink else None
            connections = NativeConnections(protocolFactory, family, loop, self.reactor)
            coroutine = loop.create_server(partial(NativeTransport, connections), sock=sock, backlog=self.backlog)
            done, result = _run_now(loop, coroutine)
        except Exception as e:
            sock.close()
            if self.cleanup is not None:
                self.cleanup()
            return fail(CannotListenError(self.interface, self.port, e))

        def started(server: asyncio.AbstractServer) -> NativePort:
            protocolFactory.doStart()
            return NativePort(server, connections, host, path, self.cleanup)

        if done:
            return succeed(started(result))
        # An event loop whose create_server truly waits: fire when it is done.
        d: Deferred[Any] = Deferred.fromFuture(result)
        return d.addCallback(started)


def _as_tcp(sock: socket.socket) -> socket.socket:
    """The socket with ``proto`` ``IPPROTO_TCP`` (not 0): asyncio's loop then turns Nagle off, as uvloop's does."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def _filesystem_path(sock: socket.socket) -> tuple[str, int] | None:
    """A UNIX socket's path and inode, to remove its file when the port stops (as Twisted does), or `None`."""
    if sock.family != socket.AF_UNIX:
        return None
    name = sock.getsockname()
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not name or name.startswith("\0"):
        return None
    try:
        info = os.stat(name)
    except OSError:
        return None
    return (name, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None
