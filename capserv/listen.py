"""
Listen descriptions: Twisted endpoint strings for streams, and capserv's own
``udp:PORT[:interface=ADDRESS]`` for datagrams (Twisted has no UDP endpoint
strings), each turned into a service that listens when started.

A listener that cannot bind raises `ListenError` from
``privilegedStartService`` with one line naming the description, so the
daemon exits with a clear message instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python.failure import Failure

from capserv._internals import systemd_descriptors
from capserv.addresses import describe
from capserv.udp import MAX_DATAGRAM

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_LISTEN",
    "DatagramListener",
    "ListenError",
    "PortListener",
    "StreamListener",
    "UDPDescription",
    "check_stream_description",
    "parse_udp",
    "with_default_backlog",
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

#: Endpoint kinds whose parsers take ``backlog=``.
_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "unix", "ssl"})


class ListenError(Exception):
    """
    A listen description is malformed, or its port cannot be bound.
    """


@dataclass(frozen=True)
class UDPDescription:
    """
    A parsed ``udp:`` listen description.
    """

    port: int
    interface: str = ""
    #: Adopt the socket systemd passed at this index (``LISTEN_FDS``)
    #: instead of binding one.
    systemd: int | None = None


def _split(description: str) -> list[str]:
    """
    Split on colons not escaped with a backslash, as Twisted's endpoint
    strings do (``interface=\\:\\:1``).
    """
    parts, current, chars = [], [], iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _arguments(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and ``key=value`` arguments after a description's kind.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in _split(description)[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return args, kwargs


def with_default_backlog(description: str) -> str:
    """
    Add ``backlog=DEFAULT_BACKLOG`` to a ``tcp:``, ``tcp6:``, ``unix:`` or
    ``ssl:`` description (also behind ``haproxy:``) that sets no backlog;
    return any other description unchanged.
    """
    kinds = [part.lower() for part in _split(description)[:2]]
    kind = kinds[1] if kinds[0] == "haproxy" and len(kinds) > 1 else kinds[0]
    if kind not in _BACKLOG_KINDS or "backlog" in _arguments(description)[1]:
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


def is_udp(description: str) -> bool:
    """
    Tell whether a listen description is capserv's ``udp:`` kind.
    """
    return description.split(":", 1)[0].strip().lower() == "udp"


def parse_udp(description: str) -> UDPDescription:
    """
    Parse ``udp:PORT[:interface=ADDRESS]`` (also ``port=PORT``).

    :raises ListenError: naming what is wrong.
    """
    args, kwargs = _arguments(description)
    if args:
        if "port" in kwargs or len(args) > 1:
            raise ListenError(f"{description!r}: expected udp:PORT[:interface=ADDRESS]")
        kwargs["port"] = args[0]
    unknown = set(kwargs) - {"port", "interface", "systemd"}
    if unknown:
        raise ListenError(
            f"{description!r}: unknown parameter {sorted(unknown)[0]!r} (udp takes port, interface or systemd)"
        )
    if "systemd" in kwargs:
        return _parse_udp_systemd(description, kwargs)
    if "port" not in kwargs:
        raise ListenError(f"{description!r}: no port given (udp:PORT[:interface=ADDRESS])")
    try:
        port = int(kwargs["port"])
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ListenError(f"{description!r}: port must be a number from 0 to 65535")
    interface = kwargs.get("interface", "")
    if interface:
        import ipaddress

        try:
            ipaddress.ip_address(interface.split("%", 1)[0])
        except ValueError:
            raise ListenError(f"{description!r}: interface must be an IP address, not {interface!r}") from None
    return UDPDescription(port, interface)


def _parse_udp_systemd(description: str, kwargs: dict[str, str]) -> UDPDescription:
    """
    ``udp:systemd=INDEX``: a datagram socket passed by systemd socket
    activation (``ListenDatagram=`` in the .socket unit).
    """
    if set(kwargs) != {"systemd"}:
        raise ListenError(f"{description!r}: udp:systemd=INDEX takes no port or interface")
    try:
        index = int(kwargs["systemd"])
    except ValueError:
        raise ListenError(f"{description!r}: systemd= takes the socket's index, a number") from None
    descriptors = systemd_descriptors()
    if not 0 <= index < len(descriptors):
        raise ListenError(f"{description!r}: systemd passed {len(descriptors)} sockets (LISTEN_FDS), no index {index}")
    return UDPDescription(0, "", index)


def check_stream_description(description: str) -> None:
    """
    Check that Twisted can build a stream server endpoint from a
    description, without listening or touching the real reactor.

    Parsers check what they can here: an unknown type, a malformed port, a
    TLS key file that cannot be read, a systemd socket that was not passed.

    :raises ListenError: with Twisted's reason.
    """
    try:
        endpoints.serverFromString(MemoryReactor(), description)
    except Exception as e:  # Twisted's parsers raise many kinds
        raise ListenError(f"{description!r}: {e}") from None


class PortListener(Service):
    """
    A service that holds one listening port and closes it when stopped.
    """

    port: Any = None

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


class StreamListener(PortListener):
    """
    Listen on one stream endpoint with a factory while running.
    """

    _log = Logger()

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, factory: Factory) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self._pending: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        # Listen here, before twistd sheds privileges, so low ports work.
        outcome: list[Any] = []
        d = self.endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if not outcome:
            self._pending = d
            d.addCallbacks(self._listening, self._failedLater)
            return
        result = outcome[0]
        if isinstance(result, Failure):
            raise ListenError(f"cannot listen on {self.description!r}: {result.getErrorMessage()}")
        self._listening(result)
        Service.privilegedStartService(self)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self._pending = None
        self.port = port
        self._log.info(
            "Listening for streams on {address} ({description})",
            address=describe(port.getHost()),
            description=self.description,
        )
        return port

    def _failedLater(self, failure: Failure) -> None:
        self._pending = None
        self._log.failure("Cannot listen on {description!r}", failure, description=self.description)

    def stopService(self) -> Deferred[None] | None:
        if self._pending is not None:
            self._pending.cancel()
        return PortListener.stopService(self)


class DatagramListener(PortListener):
    """
    Listen on one UDP port with a datagram protocol while running.
    """

    _log = Logger()

    def __init__(self, description: str, udp: UDPDescription, protocol: DatagramProtocol, reactor: Any) -> None:
        self.description = description
        self.udp = udp
        self.protocol = protocol
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        try:
            if self.udp.systemd is not None:
                self.port = self._adopt(self.udp.systemd)
            else:
                self.port = self.reactor.listenUDP(
                    self.udp.port, self.protocol, interface=self.udp.interface, maxPacketSize=MAX_DATAGRAM
                )
        except (CannotListenError, OSError) as e:
            raise ListenError(f"cannot listen on {self.description!r}: {e}") from None
        self._log.info(
            "Listening for datagrams on {address} ({description})",
            address=describe(self.port.getHost()),
            description=self.description,
        )
        Service.privilegedStartService(self)

    def _adopt(self, index: int) -> Any:
        import socket

        fd = systemd_descriptors()[index]
        with socket.socket(fileno=fd) as probe:
            family, kind = probe.family, probe.type
            probe.detach()
        if kind != socket.SOCK_DGRAM:
            raise OSError(f"systemd socket {index} is not a datagram socket")
        return self.reactor.adoptDatagramPort(fd, family, self.protocol, maxPacketSize=MAX_DATAGRAM)
