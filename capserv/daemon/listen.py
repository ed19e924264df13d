"""
What ``--listen`` says, parsed once into listener objects: `parse_listen`
checks all it can without the network, `Listener.bind` takes the address
(before twistd daemonizes, so a taken port is told on the terminal), and
`Listener.service` serves it. Descriptions are Twisted's endpoint strings
plus capserv's ``udp:``; every error is a `ListenError` naming the
description and what to write instead.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from capserv.endpoints.grammar import (
    DEFAULT_BACKLOG,
    Adopted,
    DescriptionError,
    Inet,
    Proxy,
    Twisted,
    Unix,
    kinds_hint,
    parse,
    twisted_description,
)
from capserv.endpoints.sockets import make_socket, release
from capserv.protocols._twisted import endpoint_service, proxy_protocol_factory
from capserv.protocols.addresses import describe
from capserv.protocols.udp import MAX_DATAGRAM

__all__ = ["DEFAULT_LISTEN", "ListenError", "Listener", "parse_listen"]

#: With no ``--listen``: loopback only (an open UDP service on a public address is an amplifier).
DEFAULT_LISTEN = ("tcp:50007:interface=127.0.0.1", "udp:50007:interface=127.0.0.1")

_log = Logger(namespace="capserv.listen")

KINDS_HINT = kinds_hint()
STREAM_KINDS_HINT = kinds_hint(stream=True)


class ListenError(Exception):
    """A description is wrong or its address cannot be taken; ``errno`` is the bind's, if any."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def parse_listen(description: str) -> Listener:
    """Parse one ``--listen`` description, checked as far as can be without binding."""
    try:
        address = parse(description)
    except DescriptionError as e:
        raise ListenError(f"--listen '{description}': {e}") from None
    if isinstance(address, Twisted):
        return EndpointListener.parse(description, address)
    return _listener(description, address)


def _listener(description: str, address: Inet | Unix | Adopted | Proxy) -> Listener:
    if isinstance(address, Proxy):
        return ProxyListener(description, _listener(description, address.inner))  # type: ignore[arg-type]
    if isinstance(address, Unix):
        return UnixListener(description, address)
    if address.datagram:
        return DatagramListener(description, address)
    if isinstance(address, Adopted):
        return SystemdStreamListener(description, address)
    return StreamListener(description, address)


def _bind_error(description: str, e: OSError, address: str, stream: bool = True) -> ListenError:
    """A failed bind as one line that says what to do (TIME_WAIT is a TCP state only)."""
    if isinstance(e.filename, str) or address.startswith(("/", ".")) or "systemd" in address:
        reasons = {
            errno.EADDRINUSE: f"{address} is in use by a running server; stop it or choose another path",
            errno.EACCES: f"no permission to create {address}; choose a folder this user may write to",
            errno.EEXIST: f"{address} exists and is not a socket; remove it or choose another path",
        }
    else:
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
    """Whether a TCP port has only connections in TIME_WAIT on this host, no listener (Linux's /proc)."""
    try:
        port = int(address.rsplit(":", 1)[1])
        states = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows, None)
                for fields in map(str.split, rows):
                    if len(fields) > 3 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        states.add(fields[3])
    except (IndexError, ValueError, OSError):
        return False
    return states == {"06"}


@implementer(IStreamServerEndpoint)
class _Logged:
    """An endpoint that logs where it listens, with the operator's description."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, what: str) -> None:
        self.endpoint, self.description, self.what = endpoint, description, what

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(factory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        address = describe(port.getHost())
        _log.info(
            "Listening for {what} on {address} ({description})",
            what=self.what,
            address=address,
            description=self.description,
        )
        return port


@implementer(IStreamServerEndpoint)
class SocketEndpoint:
    """
    Serve the bound socket ``make_socket`` returns on Twisted's transports
    (``adoptStreamPort``, or ``adoptDatagramPort`` with a datagram protocol).
    """

    def __init__(self, reactor: Any, make_socket: Callable[[], socket.socket], datagram: bool = False) -> None:
        self.reactor, self.make_socket, self.datagram = reactor, make_socket, datagram

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        try:
            sock = self.make_socket()
        except (OSError, ListenError) as e:
            return fail(CannotListenError(None, None, e))
        with sock:  # Twisted holds its own duplicate
            if self.datagram:
                return succeed(self.reactor.adoptDatagramPort(sock.fileno(), sock.family, factory, MAX_DATAGRAM))
            return succeed(self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory))


class Listener:
    """
    One parsed ``--listen``. ``datagram``: served by the datagram protocol;
    ``shareable``: ``--workers`` can inherit it.
    """

    datagram = False
    shareable = False
    what = "streams"
    #: `shareable` ones only: a duplicate of the bound socket for a worker; serve one inherited instead of binding.
    share: Callable[[], int]
    inherit: Callable[[int], None]

    def __init__(self, description: str) -> None:
        self.description = description

    def bind(self) -> None:
        """Take the address now; raise `ListenError` if it cannot be taken."""

    def close(self) -> None:
        """Let go of a bound address that will not be served."""

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        """Serve the address with ``handler`` (a Factory, or a DatagramProtocol); ``native``: asyncio's transports."""
        raise NotImplementedError


class _SocketListener(Listener):
    """A listener that binds its own socket (`capserv.endpoints.sockets`) and hands it to the reactor."""

    _socket: socket.socket | None = None

    def __init__(self, description: str, address: Inet | Unix | Adopted) -> None:
        super().__init__(description)
        self.address = address

    def __getattr__(self, name: str) -> Any:
        # host, port, backlog, family, path, mode, index...: the parsed address's.
        if name == "address":
            raise AttributeError(name)
        return getattr(self.address, name)

    def bind(self) -> None:
        if self._socket is None:
            try:
                self._socket = make_socket(self.address)
            except OSError as e:
                raise _bind_error(self.description, e, self.address.where(), not self.datagram) from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def bound(self) -> bool:
        """Whether the address is held (bound, and not yet served or closed)."""
        return self._socket is not None

    def share(self) -> int:
        assert self._socket is not None, "bind() first"
        return os.dup(self._socket.fileno())

    def inherit(self, fd: int) -> None:
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(False)

    def take_socket(self) -> socket.socket:
        """Hand over the bound socket, binding now if not bound (`ListenError`)."""
        self.bind()
        sock, self._socket = self._socket, None
        return sock  # type: ignore[return-value]

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        endpoint: IStreamServerEndpoint = SocketEndpoint(reactor, self.take_socket, self.datagram)
        if native and not self.datagram:
            from capserv.native import NativeSocketEndpoint

            # A UNIX socket's file is UnixListener's to remove (a systemd socket's, systemd's).
            backlog = getattr(self.address, "backlog", DEFAULT_BACKLOG)
            endpoint = NativeSocketEndpoint(reactor, self.take_socket, backlog=backlog, unlink=False)
        return endpoint_service(_Logged(endpoint, self.description, self.what), handler)  # type: ignore[no-any-return]


class StreamListener(_SocketListener):
    """``tcp:PORT[:interface=ADDRESS][:backlog=N]`` and ``tcp6:...``."""

    shareable = True


class SystemdStreamListener(_SocketListener):
    """``systemd:DOMAIN:index=N`` (or ``name=NAME``): a stream socket systemd passed."""


class UnixListener(_SocketListener):
    """``unix:PATH``: a stale socket file is replaced; its file and lock go when it stops."""

    def close(self) -> None:
        super().close()
        release(self.address)

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        served = MultiService()
        _RemoveOnStop(self.address).setServiceParent(served)  # type: ignore[no-untyped-call, arg-type]
        super().service(handler, reactor, native).setServiceParent(served)
        return served


class _RemoveOnStop(Service):
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


class DatagramListener(_SocketListener):
    """``udp:PORT[:interface=ADDRESS]``, or ``udp:systemd=N``: a datagram socket systemd passed."""

    datagram = True
    what = "datagrams"

    def __init__(self, description: str, address: Inet | Adopted) -> None:
        super().__init__(description, address)
        self.shareable = isinstance(address, Inet)


class ProxyListener(Listener):
    """
    ``haproxy:INNER``: served with the client's real address, on whichever
    transport the inner listener has (on uvloop the native one also sees the
    reset that ends every HAProxy ``check-send-proxy`` health check).
    """

    def __init__(self, description: str, inner: StreamListener | UnixListener | SystemdStreamListener) -> None:
        super().__init__(description)
        self.inner = inner
        self.shareable = inner.shareable
        inner.description = description
        self.bind, self.close = inner.bind, inner.close  # type: ignore[method-assign]
        self.share, self.inherit = inner.share, inner.inherit

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        return self.inner.service(proxy_protocol_factory(handler), reactor, native=native)


class EndpointListener(_SocketListener):
    """
    A description Twisted serves (``ssl:``, endpoint plugins) through its own
    endpoint; an ``ssl:`` port is held from `bind` until then, so a taken one
    is told before daemonizing like any other.
    """

    def bind(self) -> None:
        if self.port:  # a plugin's has none to hold
            super().bind()

    @classmethod
    def parse(cls, description: str, address: Twisted) -> EndpointListener:
        from twisted.internet.endpoints import serverFromString

        kind = description.split(":", 1)[0]
        if kind == "ssl":
            from capserv.endpoints.tls import tls_unavailable_message

            message = tls_unavailable_message(f"--listen '{description}'")
            if message is not None:
                raise ListenError(message)
        try:
            serverFromString(None, twisted_description(description))  # read now: the reactor is not chosen yet
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            raise ListenError(f"--listen '{description}': cannot read{where}: {e.strerror or e}") from None
        except Exception as e:  # endpoint parsers (plugins too) raise many kinds
            if isinstance(e, ValueError) and str(e).startswith("Unknown endpoint type"):
                raise ListenError(f"--listen '{description}': unknown kind {kind!r}; {KINDS_HINT}") from None
            if type(e).__module__.startswith("OpenSSL"):
                raise ListenError(
                    f"--listen '{description}': the key or certificate is not usable PEM "
                    "(a PEM private key in privateKey=, its certificate there or in certKey=)"
                ) from None
            raise ListenError(f"--listen '{description}': {e or type(e).__name__}") from None
        return cls(description, Inet("tcp", address.interface, address.port, 1))

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        from twisted.internet.endpoints import serverFromString

        self.close()  # Twisted binds the port itself
        endpoint = serverFromString(reactor, twisted_description(self.description))
        return endpoint_service(_Logged(endpoint, self.description, self.what), handler)  # type: ignore[no-any-return]
