"""
``--listen`` parsed once into listeners: `parse_listen` checks what it can
without the network, `Listener.bind` takes the address before twistd
daemonizes (a taken port is told on the terminal), `Listener.service` serves it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
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

__all__ = ["DEFAULT_LISTEN", "ListenError", "Listener", "bind_all", "parse_listen"]

#: With no ``--listen``: loopback only (an open UDP service on a public address is an amplifier).
DEFAULT_LISTEN = ("tcp:50007:interface=127.0.0.1", "udp:50007:interface=127.0.0.1")

_log = Logger(namespace="capserv.listen")

KINDS_HINT, STREAM_KINDS_HINT = kinds_hint(), kinds_hint(stream=True)


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
    if isinstance(address, Proxy):
        return ProxyListener(description, address.inner)
    if isinstance(address, Unix):
        return UnixListener(description, address)
    if address.datagram:
        return DatagramListener(description, address)
    return (SystemdStreamListener if isinstance(address, Adopted) else StreamListener)(description, address)


def _bind_error(description: str, e: OSError, address: str, stream: bool) -> ListenError:
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
class _Endpoint:
    """Serve ``listener``'s bound socket (or Twisted's ``inner`` endpoint) and log where, in the operator's words."""

    def __init__(self, listener: Listener, reactor: Any, native: bool, inner: Any = None) -> None:
        self.listener, self.reactor, self.native, self.inner = listener, reactor, native, inner

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        listening = self.inner.listen(factory) if self.inner else maybeDeferred(self._adopt, factory)
        return listening.addCallback(self._listening)

    def _adopt(self, factory: Any) -> Any:
        take, reactor = self.listener.take_socket, self.reactor
        if self.native and not self.listener.datagram:
            from capserv.native import NativeSocketEndpoint

            # A UNIX socket's file is the listener's to remove (a systemd socket's, systemd's).
            backlog = getattr(self.listener.address, "backlog", DEFAULT_BACKLOG)
            return NativeSocketEndpoint(reactor, take, backlog=backlog, unlink=False).listen(factory)
        with take() as sock:  # Twisted holds its own duplicate
            if self.listener.datagram:
                return reactor.adoptDatagramPort(sock.fileno(), sock.family, factory, MAX_DATAGRAM)
            return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        what, description, address = self.listener.what, self.listener.description, describe(port.getHost())
        _log.info(
            "Listening for {what} on {address} ({description})", what=what, address=address, description=description
        )
        return port


class Listener:
    """
    One parsed ``--listen`` and the socket it binds (`capserv.endpoints.sockets`).
    ``datagram``: served by the datagram protocol; ``shareable``: ``--workers`` can inherit it.
    """

    _socket: socket.socket | None = None

    def __init__(self, description: str, address: Inet | Unix | Adopted) -> None:
        self.description, self.address = description, address
        self.datagram, self.shareable = address.datagram, isinstance(address, Inet)
        self.what = "datagrams" if self.datagram else "streams"

    def __getattr__(self, name: str) -> Any:
        if name == "address":
            raise AttributeError(name)
        return getattr(self.address, name)

    def bind(self) -> None:
        """Take the address now; raise `ListenError` if it cannot be taken."""
        if self._socket is None:
            try:
                self._socket = make_socket(self.address)
            except OSError as e:
                raise _bind_error(self.description, e, self.address.where(), not self.datagram) from None

    def close(self) -> None:
        """Let go of a bound address that will not be served."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        release(self.address)

    @property
    def bound(self) -> bool:
        return self._socket is not None

    def share(self) -> int:
        """A duplicate of the bound socket, for a worker."""
        return os.dup(self._socket.fileno())  # type: ignore[union-attr]

    def inherit(self, fd: int) -> None:
        """Serve ``fd``, a socket inherited from the supervisor, instead of binding."""
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(False)

    def take_socket(self) -> socket.socket:
        """Hand over the bound socket, binding now if not bound (`ListenError`)."""
        self.bind()
        sock, self._socket = self._socket, None
        return sock  # type: ignore[return-value]

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        """Serve the address with ``handler`` (a Factory, or a DatagramProtocol); ``native``: asyncio's transports."""
        served: IService = endpoint_service(_Endpoint(self, reactor, native), handler)
        if not isinstance(self.address, Unix):
            return served
        unix = MultiService()
        _RemoveOnStop(self.address).setServiceParent(unix)  # type: ignore[no-untyped-call]
        served.setServiceParent(unix)
        return unix


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


class StreamListener(Listener):
    """``tcp:PORT[:interface=ADDRESS][:backlog=N]`` and ``tcp6:...``."""


class SystemdStreamListener(Listener):
    """``systemd:DOMAIN:index=N`` (or ``name=NAME``): a stream socket systemd passed."""


class UnixListener(Listener):
    """``unix:PATH``: a stale socket file is replaced; its file and lock go when it stops."""


class DatagramListener(Listener):
    """``udp:PORT[:interface=ADDRESS]``, or ``udp:systemd=N``: a datagram socket systemd passed."""


class ProxyListener(Listener):
    """
    ``haproxy:INNER``: served with the client's real address, on whichever transport INNER has
    (on uvloop the native one also sees the reset that ends every HAProxy health check).
    """

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        return super().service(proxy_protocol_factory(handler), reactor, native)


class EndpointListener(Listener):
    """
    A description Twisted serves (``ssl:``, endpoint plugins); an ``ssl:`` port is
    held from `bind` until served, so a taken one is told before daemonizing.
    """

    def bind(self) -> None:
        if self.port:  # a plugin's has none to hold
            super().bind()

    @classmethod
    def parse(cls, description: str, address: Twisted) -> EndpointListener:
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
        listener = cls(description, Inet("tcp", address.interface, address.port, 1))
        listener.shareable = False
        return listener

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        self.close()  # Twisted binds the port itself
        endpoint = serverFromString(reactor, twisted_description(self.description))
        return endpoint_service(_Endpoint(self, reactor, native, endpoint), handler)  # type: ignore[no-any-return]


def bind_all(listeners: Sequence[Listener]) -> None:
    """Bind every listener, or none (`ListenError`); a port an earlier one took is told as that clash."""
    done: list[Listener] = []
    try:
        for listener in listeners:
            try:
                listener.bind()
            except ListenError as e:
                clash = _clash(listener, done) if e.errno == errno.EADDRINUSE else None
                raise ListenError(clash, e.errno) if clash else e from None
            done.append(listener)
    except ListenError:
        for listener in done:
            listener.close()
        raise


def _clash(listener: Listener, done: list[Listener]) -> str | None:
    port, host = getattr(listener.address, "port", 0), getattr(listener.address, "host", "")
    for earlier in done:
        if not port or (getattr(earlier.address, "port", 0), earlier.datagram) != (port, listener.datagram):
            continue
        default = " (a default)" if earlier.description in DEFAULT_LISTEN else ""
        both = {host, getattr(earlier.address, "host", "")}
        hint = " (on Linux, :: takes IPv4 too)" if "::" in both and any(":" not in h for h in both) else ""
        return (
            f"cannot listen on '{listener.description}': port {port} is already taken by "
            f"--listen '{earlier.description}'{default} of this same command{hint}; drop one of them"
        )
    return None
