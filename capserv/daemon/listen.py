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

import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from capserv.endpoints.grammar import split_description
from capserv.protocols._twisted import (
    endpoint_service,
    proxy_protocol_factory,
    systemd_descriptors,
)
from capserv.protocols.addresses import describe
from capserv.protocols.udp import MAX_DATAGRAM

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

#: The listen backlog capserv asks for when a description sets none.
#: Twisted's default of 50 overflows when hundreds of clients connect at
#: once: the kernel drops their SYNs and each waits a second to retry.
#: (Linux caps it at ``net.core.somaxconn``, 4096 by default.)
DEFAULT_BACKLOG = 1024

#: Listening lines, under the module's name (a ``Logger`` class attribute
#: would name the private class that logs).
_log = Logger(namespace="capserv.listen")

#: What to write for a listener's kind: every kind, then the stream kinds
#: only (``--metrics`` serves HTTP, so it takes no ``udp:``).
KINDS_HINT = (
    "write tcp:PORT, tcp6:PORT, unix:PATH, udp:PORT, ssl:PORT:privateKey=KEY:certKey=CERT, "
    "systemd:domain=INET:index=N or haproxy:tcp:PORT"
)
STREAM_KINDS_HINT = (
    "write tcp:PORT, tcp6:PORT, unix:PATH, ssl:PORT:privateKey=KEY:certKey=CERT, "
    "systemd:domain=INET:index=N or haproxy:tcp:PORT"
)


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


# -- parsing -------------------------------------------------------------------


def _escape(address: str) -> str:
    return address.replace(":", "\\:")


class _Arguments:
    """
    The positional and ``key=value`` arguments of one description, read off
    with checks whose errors name the description.
    """

    def __init__(self, description: str, parts: list[str], allowed: tuple[str, ...], positional: str) -> None:
        self.description = description
        self.kwargs: dict[str, str] = {}
        args = []
        for part in parts:
            key, sep, value = part.partition("=")
            if sep:
                self.kwargs[key] = value
            else:
                args.append(part)
        if args:
            if len(args) > 1 or positional in self.kwargs:
                hint = _ipv6_hint(description)
                if hint:
                    raise self.error(hint)
                raise self.error(f"too many values; write {allowed[0]} once")
            self.kwargs[positional] = args[0]
        unknown = sorted(set(self.kwargs) - set(allowed))
        if unknown:
            raise self.error(f"unknown parameter {unknown[0]!r} (this kind takes {', '.join(allowed)})")

    def error(self, message: str) -> ListenError:
        return ListenError(f"--listen '{self.description}': {message}")

    def port(self) -> int:
        if "port" not in self.kwargs:
            raise self.error("no port given; write a port number from 0 to 65535 after the kind")
        return _port(self.kwargs["port"], self.error)

    def whole(self, name: str, default: int, minimum: int = 1) -> int:
        text = self.kwargs.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise self.error(f"{name} must be a whole number >= {minimum}, not {text!r}")
        return value

    def interface(self, default: str) -> str:
        text = self.kwargs.get("interface", default)
        if "interface" in self.kwargs and not text:
            raise self.error(
                "interface is empty; write an IP address such as 127.0.0.1 (0.0.0.0 for every IPv4 address)"
            )
        if text:
            try:
                ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                raise self.error(
                    _ipv6_hint(self.description)
                    or f"interface must be an IP address such as 127.0.0.1 or \\:\\:1, not {text!r}"
                ) from None
        return text


def _port(text: str, error: Callable[[str], ListenError]) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise error(f"port must be a number from 0 to 65535, not {text!r}")
    return port


_UNESCAPED_V6 = re.compile(r"interface=(\[?)((?:[0-9A-Fa-f]*:){2,}[0-9A-Fa-f.]*(?:%[\w.-]+)?)\]?")


def _ipv6_hint(description: str) -> str:
    """
    A hint to escape an IPv6 address's colons, if that is what went wrong
    (brackets, as in a URL, do not escape them).
    """
    match = _UNESCAPED_V6.search(description)
    if match is None or "\\" in match.group(2):
        return ""
    if match.group(1):
        return f"write an IPv6 address without brackets, its colons escaped: interface={_escape(match.group(2))}"
    return f"escape an IPv6 address's colons: write interface={_escape(match.group(2))}"


def parse_listen(description: str) -> Listener:
    """
    Parse one ``--listen`` description into a listener, checked as far as
    can be without binding.

    :raises ListenError: naming what is wrong and what to write instead.
    """
    parts = split_description(description)
    kind = parts[0].strip().lower()
    if kind in ("tcp", "tcp6"):
        return StreamListener.parse(description, kind, parts[1:])
    if kind == "udp":
        return DatagramListener.parse(description, parts[1:])
    if kind == "unix":
        return UnixListener.parse(description, parts[1:])
    if kind == "systemd":
        return SystemdStreamListener.parse(description, parts[1:])
    if kind == "haproxy":
        inner_text = description.split(":", 1)[1] if ":" in description else ""
        inner = parse_listen(inner_text) if inner_text else None
        if not isinstance(inner, (StreamListener, UnixListener, SystemdStreamListener)):
            raise ListenError(
                f"--listen '{description}': haproxy: wraps a stream listener; write haproxy:tcp:PORT, "
                "haproxy:tcp6:PORT, haproxy:unix:PATH or haproxy:systemd:domain=INET:index=N"
            )
        return ProxyListener(description, inner)
    if not kind:
        raise ListenError(f"--listen '{description}': no kind given; {KINDS_HINT}")
    return EndpointListener.parse(description, kind)


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


class _SocketListener(Listener):
    """A listener that binds its own socket and hands it to the reactor."""

    _socket: socket.socket | None = None
    what = "streams"

    def _make(self, reuse_port: bool) -> socket.socket:
        raise NotImplementedError

    def where(self) -> str:
        """The address as an operator would write it, for messages."""
        raise NotImplementedError

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
            endpoint: IStreamServerEndpoint = NativeSocketEndpoint(reactor, self.take_socket, unlink=False)
        else:
            endpoint = SocketEndpoint(reactor, self.take_socket)
        service: IService = endpoint_service(_Logged(endpoint, self.description, self.what), handler)
        return service


def _stream_socket(family: int, address: Any, backlog: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _inet_address(family: int, host: str, port: int, kind: int) -> Any:
    """The socket address for a numeric host (with an IPv6 scope, if any)."""
    if not host:
        return ("", port)
    info = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    return info[0][4]


class StreamListener(_SocketListener):
    """
    ``tcp:PORT[:interface=ADDRESS][:backlog=N]`` and ``tcp6:...``.
    """

    shareable = True

    def __init__(self, description: str, kind: str, host: str, port: int, backlog: int) -> None:
        super().__init__(description)
        self.kind = kind
        self.host = host
        self.port = port
        self.backlog = backlog
        self.family = socket.AF_INET6 if kind == "tcp6" or ":" in host else socket.AF_INET

    @classmethod
    def parse(cls, description: str, kind: str, parts: list[str]) -> StreamListener:
        args = _Arguments(description, parts, ("port", "interface", "backlog"), "port")
        port = args.port()
        host = args.interface("::" if kind == "tcp6" else "")
        if kind == "tcp6" and ":" not in host:
            raise args.error(f"tcp6 takes an IPv6 interface such as \\:\\:1, not {host!r}; use tcp: for IPv4")
        return cls(description, kind, host, port, args.whole("backlog", DEFAULT_BACKLOG))

    def where(self) -> str:
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _make(self, reuse_port: bool) -> socket.socket:
        address = _inet_address(self.family, self.host, self.port, socket.SOCK_STREAM)
        return _stream_socket(self.family, address, self.backlog, reuse_port)


class UnixListener(_SocketListener):
    """
    ``unix:PATH[:mode=OCTAL][:backlog=N]``.

    A socket file left by a server that is gone is replaced; one that a
    running server still answers on is "in use".  (Twisted's ``lockfile=``
    is accepted and not needed: the check above replaces it.)
    """

    def __init__(self, description: str, path: str, mode: int, backlog: int) -> None:
        super().__init__(description)
        self.path = path
        self.mode = mode
        self.backlog = backlog

    @classmethod
    def parse(cls, description: str, parts: list[str]) -> UnixListener:
        args = _Arguments(description, parts, ("address", "mode", "backlog", "lockfile", "wantPID"), "address")
        path = args.kwargs.get("address", "")
        if not path:
            raise args.error("no path given; write unix:/run/capserv.sock")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise args.error(f"folder {folder} does not exist; create it (mkdir -p {folder}) or choose another path")
        try:
            mode = int(args.kwargs.get("mode", "666"), 8)
        except ValueError:
            raise args.error(f"mode must be octal permissions such as 660, not {args.kwargs['mode']!r}") from None
        return cls(description, path, mode, args.whole("backlog", DEFAULT_BACKLOG))

    def where(self) -> str:
        return self.path

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        served = MultiService()
        _RemoveOnStop(self.path).setServiceParent(served)  # type: ignore[no-untyped-call]
        super().service(handler, reactor, native).setServiceParent(served)
        return served

    def _make(self, reuse_port: bool) -> socket.socket:
        self._remove_stale()
        sock = _stream_socket(socket.AF_UNIX, self.path, self.backlog, False)
        os.chmod(self.path, self.mode)
        return sock

    def _remove_stale(self) -> None:
        try:
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise OSError(errno.EEXIST, "not a socket")
        except FileNotFoundError:
            return
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:
                os.unlink(self.path)  # left by a server that is gone
                return
            except OSError:
                return
        raise OSError(errno.EADDRINUSE, "in use")


class SystemdStreamListener(_SocketListener):
    """
    ``systemd:domain=INET:index=N``: a stream socket systemd passed
    (``ListenStream=`` in the .socket unit).
    """

    def __init__(self, description: str, index: int) -> None:
        super().__init__(description)
        self.index = index

    @classmethod
    def parse(cls, description: str, parts: list[str]) -> SystemdStreamListener:
        args = _Arguments(description, parts, ("domain", "index"), "index")
        domain = args.kwargs.get("domain", "INET").upper()
        if domain not in ("INET", "INET6", "UNIX"):
            raise args.error(f"domain must be INET, INET6 or UNIX, not {domain!r}")
        index = args.whole("index", 0, minimum=0)
        _check_systemd_index(args, index, socket.SOCK_STREAM)
        return cls(description, index)

    def where(self) -> str:
        return f"systemd socket {self.index}"

    def _make(self, reuse_port: bool) -> socket.socket:
        sock = socket.socket(fileno=os.dup(systemd_descriptors()[self.index]))
        sock.setblocking(False)
        return sock


def _check_systemd_index(args: _Arguments, index: int, kind: int) -> None:
    descriptors = systemd_descriptors()
    if not descriptors:
        raise args.error(
            "systemd passed no sockets (LISTEN_FDS is not set); this form works only under "
            "systemd socket activation: see docs/operations"
        )
    if index >= len(descriptors):
        if len(descriptors) == 1:
            raise args.error("systemd passed 1 socket; write index 0")
        raise args.error(f"systemd passed {len(descriptors)} sockets; write an index from 0 to {len(descriptors) - 1}")
    with socket.socket(fileno=descriptors[index]) as probe:
        actual = probe.type
        probe.detach()
    if actual != kind:
        wanted = "stream" if kind == socket.SOCK_STREAM else "datagram"
        raise args.error(f"systemd socket {index} is not a {wanted} socket; check the .socket unit's Listen lines")


class DatagramListener(_SocketListener):
    """
    ``udp:PORT[:interface=ADDRESS]``, or ``udp:systemd=N`` for a datagram
    socket systemd passed (``ListenDatagram=``).
    """

    datagram = True
    what = "datagrams"

    def __init__(self, description: str, host: str, port: int, systemd: int | None = None) -> None:
        super().__init__(description)
        self.host = host
        self.port = port
        self.systemd = systemd
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.shareable = systemd is None

    @classmethod
    def parse(cls, description: str, parts: list[str]) -> DatagramListener:
        args = _Arguments(description, parts, ("port", "interface", "systemd"), "port")
        if "systemd" in args.kwargs:
            if set(args.kwargs) != {"systemd"}:
                raise args.error("udp:systemd=INDEX takes no port or interface")
            index = args.whole("systemd", 0, minimum=0)
            _check_systemd_index(args, index, socket.SOCK_DGRAM)
            return cls(description, "", 0, index)
        return cls(description, args.interface(""), args.port())

    def where(self) -> str:
        if self.systemd is not None:
            return f"systemd socket {self.systemd}"
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _make(self, reuse_port: bool) -> socket.socket:
        if self.systemd is not None:
            sock = socket.socket(fileno=os.dup(systemd_descriptors()[self.systemd]))
        else:
            sock = socket.socket(self.family, socket.SOCK_DGRAM)
            try:
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(_inet_address(self.family, self.host, self.port, socket.SOCK_DGRAM))
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        return sock

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
    Any other Twisted endpoint string (``ssl:``, endpoint plugins), served
    through Twisted's own endpoint; it binds when the service starts.
    """

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, slot: _ReactorSlot) -> None:
        super().__init__(description)
        self.endpoint = endpoint
        self._slot = slot

    @classmethod
    def parse(cls, description: str, kind: str) -> EndpointListener:
        from twisted.internet.endpoints import serverFromString

        if kind == "ssl":
            _require_tls(description)
            named = {part.split("=", 1)[0] for part in split_description(description)[1:]}
            if "privateKey" not in named:
                raise ListenError(
                    f"--listen '{description}': ssl: needs privateKey=KEY.pem "
                    "(and certKey=CERT.pem when the key file holds no certificate)"
                )
        slot = _ReactorSlot()
        try:
            endpoint = serverFromString(slot, description)
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
        return cls(description, endpoint, slot)

    def bind(self, reuse_port: bool = False) -> None:
        """
        Check that an ``ssl:`` port can be taken (Twisted binds it only when
        the service starts, after twistd has daemonized): bind it and let it
        go at once.
        """
        parts = split_description(self.description)
        if parts[0].strip().lower() != "ssl":
            return
        args = [part for part in parts[1:] if "=" not in part]
        kwargs = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        try:
            port = int(kwargs.get("port", args[0] if args else "0"))
        except ValueError:
            return  # Twisted's parser accepted it; let Twisted report it
        if port:
            # A plain TCP listener on the same address (it derives the family).
            probe = StreamListener(self.description, "tcp", kwargs.get("interface", ""), port, 1)
            probe.bind()
            probe.close()

    def service(self, handler: Any, reactor: Any, native: bool = False) -> IService:
        self._slot.reactor = reactor
        service: IService = endpoint_service(_Logged(self.endpoint, self.description, self.what), handler)
        return service


def _require_tls(description: str) -> None:
    from capserv.endpoints.tls import tls_unavailable_message

    message = tls_unavailable_message(f"--listen '{description}'")
    if message is not None:
        raise ListenError(message)


# -- serving ---------------------------------------------------------------------


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
    """Remove a UNIX socket's file once its listener has stopped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        Service.stopService(self)
        try:
            if stat.S_ISSOCK(os.stat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass


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
