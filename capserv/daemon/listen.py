"""
What ``--listen`` says, parsed once into listener objects.

`parse_listen` turns each description into a typed `Listener`, checking
everything that can be checked without touching the network: the kind, the
port range, the interface address, the UNIX path's folder, the sockets
systemd passed, IPv6 escaping, TLS files.  `Listener.bind` then takes the
address (the daemon binds every listener before it daemonizes, so a port
that is taken is reported on the terminal at once and nothing listens), and
`Listener.service` wires the bound socket to a factory or datagram protocol
as a Twisted service.

Descriptions are Twisted's endpoint strings (``tcp:``, ``tcp6:``, ``unix:``,
``ssl:``, ``systemd:``, ``haproxy:``, and any endpoint plugin) plus
capserv's own ``udp:PORT[:interface=ADDRESS]`` (Twisted has none for UDP).
Every error is a `ListenError` whose text names the description and says
what to write instead.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from capserv.daemon.serving import ListenError, SocketEndpoint, _bind_error, _DatagramService, _Logged, _RemoveOnStop
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

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_LISTEN",
    "DatagramListener",
    "EndpointListener",
    "ListenError",
    "Listener",
    "ProxyListener",
    "SocketEndpoint",
    "StreamListener",
    "SystemdStreamListener",
    "UnixListener",
    "parse_listen",
]

#: What the daemon serves with no ``--listen``: the lesson's port, on
#: loopback only (an open UDP service on a public address is an amplifier
#: until the operator decides otherwise).
DEFAULT_LISTEN = ("tcp:50007:interface=127.0.0.1", "udp:50007:interface=127.0.0.1")

#: Listening lines, under the module's name (a ``Logger`` class attribute
#: would name the private class that logs).
_log = Logger(namespace="capserv.listen")

#: What to write for a listener's kind: every kind, then the stream kinds
#: only (``--metrics`` serves HTTP, so it takes no ``udp:``).
KINDS_HINT = kinds_hint()
STREAM_KINDS_HINT = kinds_hint(stream=True)


def parse_listen(description: str) -> Listener:
    """
    Parse one ``--listen`` description into a listener, checked as far as
    can be without binding (`capserv.endpoints.grammar` reads it).

    :raises ListenError: naming what is wrong and what to write instead.
    """
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


# -- listeners -------------------------------------------------------------------


# -- listeners -------------------------------------------------------------------


class Listener:
    """
    One parsed ``--listen``: what to bind, and the service that serves it.

    Subclasses set `datagram` (whether it takes the datagram protocol
    rather than the stream factory) and `shareable` (whether ``--workers``
    processes can bind it together with ``SO_REUSEPORT``).
    """

    datagram = False
    shareable = False
    #: What the listening log line says it serves.
    what = "streams"

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description!r}>"

    def bind(self, reuse_port: bool = False) -> None:
        """
        Take the address now (nothing is served until the service starts).

        :raises ListenError: if it cannot be taken.
        """

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        """
        The Twisted service that serves the bound address with ``handler``
        (a stream `Factory`, or a `DatagramProtocol` if `datagram`).

        :param native: serve streams on the event loop's own transports
            (`capserv.native`) instead of Twisted's.
        """
        raise NotImplementedError

    def close(self) -> None:
        """
        Let go of a bound address that will not be served (another listener
        failed to bind).
        """

    def share(self) -> int:
        """
        A duplicate of the bound socket's descriptor, for a ``--workers``
        worker to inherit.
        """
        raise ListenError(f"--listen '{self.description}': --workers cannot share this listener")

    def inherit(self, fd: int) -> None:
        """Serve a bound socket this process inherited (a worker's), instead of binding."""
        raise ListenError(f"--listen '{self.description}': --workers cannot share this listener")


class _SocketListener(Listener):
    """A listener that binds its own socket and hands it to the reactor."""

    _socket: socket.socket | None = None
    what = "streams"

    def __init__(self, description: str, address: Inet | Unix | Adopted) -> None:
        super().__init__(description)
        self.address = address

    def __getattr__(self, name: str) -> Any:
        # host, port, backlog, family, path, mode, index...: the parsed address's.
        if name == "address":
            raise AttributeError(name)
        return getattr(self.address, name)

    def _make(self, reuse_port: bool) -> socket.socket:
        return make_socket(self.address, reuse_port)

    def where(self) -> str:
        """The address as an operator would write it, for messages."""
        return self.address.where()

    def bind(self, reuse_port: bool = False) -> None:
        if self._socket is not None:
            return
        try:
            self._socket = self._make(reuse_port)
        except OSError as e:
            raise _bind_error(self.description, e, self.where(), self.what == "streams") from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def bound(self) -> bool:
        """Whether the address is held (bound, and not yet served or closed)."""
        return self._socket is not None

    def share(self) -> int:
        """A duplicate of the bound socket's descriptor, for a ``--workers`` worker to inherit."""
        assert self._socket is not None, "bind() first"
        return os.dup(self._socket.fileno())

    def inherit(self, fd: int) -> None:
        """Serve a bound socket this process inherited (a worker's), instead of binding."""
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(False)

    def take_socket(self) -> socket.socket:
        """
        Hand over the bound socket (binding now if `bind` was not called).

        :raises OSError: if it cannot be bound.
        """
        if self._socket is None:
            self._socket = self._make(False)
        sock, self._socket = self._socket, None
        return sock

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        if native:
            from capserv.native import NativeSocketEndpoint

            # A UNIX socket's file is removed by UnixListener itself (and a
            # systemd socket's file is systemd's).
            endpoint: IStreamServerEndpoint = NativeSocketEndpoint(
                reactor, self.take_socket, backlog=getattr(self.address, "backlog", DEFAULT_BACKLOG), unlink=False
            )
        else:
            endpoint = SocketEndpoint(reactor, self.take_socket)
        service: IService = endpoint_service(_Logged(endpoint, self.description, self.what), handler)
        return service


class StreamListener(_SocketListener):
    """``tcp:PORT[:interface=ADDRESS][:backlog=N]`` and ``tcp6:...``."""

    shareable = True


class UnixListener(_SocketListener):
    """
    ``unix:PATH[:mode=OCTAL][:backlog=N][:lockfile=0|1]``: a socket file left
    by a server that is gone is replaced; one that a running server still
    answers on, or whose lock file it holds, is "in use".
    """

    def close(self) -> None:
        super().close()
        release(self.address)

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        served = MultiService()
        _RemoveOnStop(self.address).setServiceParent(served)  # type: ignore[no-untyped-call, arg-type]
        super().service(handler, reactor, native).setServiceParent(served)
        return served


class SystemdStreamListener(_SocketListener):
    """``systemd:DOMAIN:index=N`` (or ``name=NAME``): a stream socket systemd passed."""


class DatagramListener(_SocketListener):
    """``udp:PORT[:interface=ADDRESS]``, or ``udp:systemd=N`` for a datagram socket systemd passed."""

    datagram = True
    what = "datagrams"

    def __init__(self, description: str, address: Inet | Adopted) -> None:
        super().__init__(description, address)
        self.shareable = isinstance(address, Inet)
        self.systemd = address.index if isinstance(address, Adopted) else None

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        return _DatagramService(self, handler, reactor)


class ProxyListener(Listener):
    """
    ``haproxy:INNER``: connections through a PROXY-protocol load balancer,
    served with the client's real address.

    Twisted's PROXY wrapper runs on whichever transport the inner listener
    has, the event loop's own included (`capserv.native`).  On uvloop that
    matters for more than speed: a Twisted transport there never learns
    of a reset that arrives while it waits to read (libuv reports it as a
    poll error, and uvloop drops it), and HAProxy ends every
    ``check-send-proxy`` health check with exactly that: a PROXY header,
    then a reset.
    """

    def __init__(self, description: str, inner: StreamListener | UnixListener | SystemdStreamListener) -> None:
        super().__init__(description)
        self.inner = inner
        self.shareable = inner.shareable
        inner.description = description

    def bind(self, reuse_port: bool = False) -> None:
        self.inner.bind(reuse_port)

    def close(self) -> None:
        self.inner.close()

    def share(self) -> int:
        return self.inner.share()

    def inherit(self, fd: int) -> None:
        self.inner.inherit(fd)

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        return self.inner.service(proxy_protocol_factory(handler), reactor, native=native)


class _ReactorSlot:
    """
    The reactor an endpoint parsed before any reactor is chosen will use:
    filled in when the service is built.
    """

    reactor: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.reactor is None:
            raise AttributeError(name)
        return getattr(self.reactor, name)


class EndpointListener(Listener):
    """
    A description Twisted serves (``ssl:``, endpoint plugins), through
    Twisted's own endpoint; it binds when the service starts.
    """

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, slot: _ReactorSlot) -> None:
        super().__init__(description)
        self.endpoint = endpoint
        self._slot = slot
        self._probe = Inet("tcp", "", 0)
        self._held: StreamListener | None = None

    @classmethod
    def parse(cls, description: str, address: Twisted) -> EndpointListener:
        from twisted.internet.endpoints import serverFromString

        kind = description.split(":", 1)[0]
        if kind == "ssl":
            _require_tls(description)
        slot = _ReactorSlot()
        try:
            endpoint = serverFromString(slot, twisted_description(description))
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            raise ListenError(f"--listen '{description}': cannot read{where}: {e.strerror or e}") from None
        except ValueError as e:
            if str(e).startswith("Unknown endpoint type"):
                raise ListenError(f"--listen '{description}': unknown kind {kind!r}; {KINDS_HINT}") from None
            raise ListenError(f"--listen '{description}': {e or type(e).__name__}") from None
        except Exception as e:  # endpoint parsers (plugins too) raise many kinds
            if type(e).__module__.startswith("OpenSSL"):
                raise ListenError(
                    f"--listen '{description}': the key or certificate is not usable PEM "
                    "(a PEM private key in privateKey=, its certificate there or in certKey=)"
                ) from None
            raise ListenError(f"--listen '{description}': {e or type(e).__name__}") from None
        listener = cls(description, endpoint, slot)
        listener._probe = Inet("tcp", address.interface, address.port, 1)
        return listener

    @property
    def port(self) -> int:
        """The ``ssl:`` port asked for (0 for a plugin's), for naming a clash."""
        return self._probe.port

    @property
    def host(self) -> str:
        return self._probe.host

    def bind(self, reuse_port: bool = False) -> None:
        """
        Hold an ``ssl:`` port until the service starts (Twisted binds it only
        then, after twistd has daemonized): taken, or taken twice by this
        command, it is reported now, like any other listener's.
        """
        if self._probe.port and self._held is None:
            self._held = StreamListener(self.description, self._probe)
            self._held.bind()

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        self._slot.reactor = reactor
        self.close()  # Twisted binds the port itself
        service: IService = endpoint_service(_Logged(self.endpoint, self.description, self.what), handler)
        return service


def _require_tls(description: str) -> None:
    from capserv.endpoints.tls import tls_unavailable_message

    message = tls_unavailable_message(f"--listen '{description}'")
    if message is not None:
        raise ListenError(message)
