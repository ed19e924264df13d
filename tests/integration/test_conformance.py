"""
One conformance suite for a server's stream transport: each test runs on
Twisted's TCP transport (``listenTCP``) and on `capserv.native`'s
(``NativeSocketEndpoint``), with the same Twisted protocols, on the
reactor pytest was given; the clients are always Twisted's.

The cases are Twisted's own, ported from its transport tests
(``twisted/internet/test/test_tcp.py``, ``connectionmixins.py``,
``twisted/test/test_tcp.py``'s half-close tests, ``_newtls``'s
``startTLS``), so what is checked is Twisted's behaviour: a case native
cannot match is marked ``xfail(strict=True)`` with the reason, and the same
reason is in docs/embedding.rst.  On a reactor other than the asyncio one
the native parameter is skipped (it needs the reactor's event loop).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from capserv.native import NativeSocketEndpoint, native_supported

TRANSPORTS = ["twisted", "native"]
NOT_NATIVE = "the native transport needs Twisted's asyncio reactor (pytest --reactor=asyncio)"
TIMEOUT = 20


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    """Which server transport the test runs on."""
    if request.param == "native" and not native_supported(the_reactor()):
        pytest.skip(NOT_NATIVE)
    return str(request.param)


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(50)
    sock.setblocking(False)
    return sock


def listen(kind: str, factory: Any, reactor: Any = None) -> Any:
    """Listen on 127.0.0.1 with ``factory`` on the ``kind`` of transport."""
    reactor = reactor or the_reactor()
    if kind == "twisted":
        return reactor.listenTCP(0, factory, interface="127.0.0.1")
    ports: list[Any] = []
    NativeSocketEndpoint(reactor, listening_socket).listen(factory).addCallback(ports.append)
    return ports[0]


@pytest.fixture
def serve(kind: str) -> Iterator[Callable[[Any], Any]]:
    """``serve(factory)`` listens; every port is stopped after the test."""
    ports: list[Any] = []

    def start(factory: Any) -> Any:
        port = listen(kind, factory)
        ports.append(port)
        return port

    yield start
    for port in ports:
        port.stopListening()


def connect(port: Any, protocol: Protocol) -> Deferred[Any]:
    endpoint = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port)
    return connectProtocol(endpoint, protocol)


def within(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(TIMEOUT, the_reactor())


class Recorder(Protocol):
    """Records what happens to it; ``lost`` fires with the reason."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()
        self.made: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append("connectionLost")
        self.reason = reason
        self.lost.callback(None)


@implementer(interfaces.IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


@implementer(interfaces.IHalfCloseableProtocol)
class HalfClient(HalfRecorder):
    """A client that closes once the server has shut its sending side."""

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.loseConnection()


def single(protocol: Protocol) -> Factory:
    """A factory that builds ``protocol``, once."""
    factory = Factory()
    factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
    return factory


# -- interfaces, addresses, what tcp.Server has ----------------------------------


@pytest_twisted.inlineCallbacks
def test_interfaces_addresses_and_server_attributes(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    The server transport provides ITCPTransport, ITLSTransport, IConsumer,
    IPushProducer and ISystemHandle; getHost/getPeer are the client's
    getPeer/getHost (test_serverGetHostOnIPv4, test_serverGetPeerOnIPv4);
    logPrefix is "prefix,sessionno,host" as tcp.Server's, sessionno from 0;
    reactor is the reactor; socket is the connection's socket.
    """
    server = Recorder()
    server.logPrefix = lambda: "Custom Server"  # type: ignore[method-assign]
    port = serve(single(server))
    assert verifyObject(interfaces.IListeningPort, port)
    assert isinstance(port.getHost(), IPv4Address)
    client = Recorder()
    yield connect(port, client)
    yield within(server.made)
    transport = server.transport
    for interface in (
        interfaces.ITCPTransport,
        interfaces.ITLSTransport,
        interfaces.IConsumer,
        interfaces.IPushProducer,
        interfaces.ISystemHandle,
    ):
        assert verifyObject(interface, transport), interface
    assert transport.getHost() == client.transport.getPeer()
    assert transport.getPeer() == client.transport.getHost()
    assert transport.getHost() == port.getHost()
    assert transport.logPrefix() == "Custom Server,0,127.0.0.1"
    assert transport.reactor is the_reactor()
    assert transport.socket.getsockname() == (transport.getHost().host, transport.getHost().port)
    assert transport.connected and not transport.disconnecting
    client.transport.loseConnection()
    yield within(server.lost)
    reason = server.reason
    assert reason.check(ConnectionDone)


@pytest_twisted.inlineCallbacks
def test_log_context_names_the_protocol(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    While the protocol handles data, the log context's system is its
    transport's logPrefix (connectionmixins' test_logPrefix).
    """
    if kind == "native":
        pytest.xfail("native calls the protocol without Twisted's per-call log context (cost); see docs/embedding")

    class Custom(Recorder):
        system = ""

        def logPrefix(self) -> str:
            return "Custom Server"

        def dataReceived(self, data: bytes) -> None:
            self.system = context.get(log.ILogContext)["system"]
            super().dataReceived(data)

    server = Custom()
    port = serve(single(server))
    client = Recorder()
    yield connect(port, client)
    client.transport.write(b"a")
    client.transport.loseConnection()
    yield within(server.lost)
    assert "Custom Server" in server.system


# -- LineReceiver, Site, TLS -------------------------------------------------------


class Echo(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"quit":
            self.transport.loseConnection()
        else:
            self.sendLine(line.upper())


@pytest_twisted.inlineCallbacks
def test_line_receiver(kind: str, serve: Callable[[Any], Any]) -> Any:
    """A LineReceiver answers each line, a split line too, and closes."""
    port = serve(Factory.forProtocol(Echo))
    client = Recorder()
    yield connect(port, client)
    client.transport.write(b"one\r\ntw")
    client.transport.write(b"o\r\nquit\r\n")
    yield within(client.lost)
    reason = client.reason
    assert client.data == b"ONE\r\nTWO\r\n"
    assert reason.check(ConnectionDone)


def _hello() -> Any:
    """A leaf resource answering every path (Resource's default for a missing child is deprecated)."""
    from twisted.web.resource import Resource

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return b"hello"

    return Hello()


@pytest_twisted.inlineCallbacks
def test_web_site_keep_alive_and_pipelining(kind: str, serve: Callable[[Any], Any]) -> Any:
    """twisted.web's Site answers two pipelined requests on one connection."""
    from twisted.web.server import Site

    root = _hello()
    port = serve(Site(root))
    client = Recorder()
    yield connect(port, client)
    request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    client.transport.write(request + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    yield within(client.lost)
    assert client.data.count(b"HTTP/1.1 200 OK") == 2
    assert client.data.endswith(b"hello")


@pytest.fixture(scope="module")
def certificate() -> Any:
    import trustme
    from twisted.internet.ssl import PrivateCertificate

    # trustme: pyOpenSSL's own key generation is deprecated.
    pem = trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.bytes()
    return PrivateCertificate.loadPEM(pem)


def client_tls() -> Any:
    from twisted.internet.ssl import CertificateOptions

    return CertificateOptions()  # no verification: a self-signed certificate


@pytest_twisted.inlineCallbacks
def test_tls_memory_bio_factory(kind: str, serve: Callable[[Any], Any], certificate: Any) -> Any:
    """TLSMemoryBIOFactory over the transport: lines answered over TLS."""
    from twisted.internet.ssl import optionsForClientTLS  # noqa: F401 (needs the tls extra)

    port = serve(TLSMemoryBIOFactory(certificate.options(), False, Factory.forProtocol(Echo)))
    client = Recorder()
    wrapped = TLSMemoryBIOFactory(client_tls(), True, single(client))
    endpoint = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port)
    yield endpoint.connect(wrapped)
    client.transport.write(b"secret\r\nquit\r\n")
    yield within(client.lost)
    assert client.data == b"SECRET\r\n"


class StartTLSServer(LineReceiver):
    """Answers lines; STARTTLS turns TLS on (as SMTP, IMAP, XMPP do)."""

    context: Any = None
    secure: list[bool]

    def connectionMade(self) -> None:
        self.secure = []

    def lineReceived(self, line: bytes) -> None:
        if line == b"STARTTLS":
            self.sendLine(b"GO")
            self.transport.startTLS(self.context)
        elif line == b"quit":
            self.transport.loseConnection()
        else:
            self.secure.append(interfaces.ISSLTransport.providedBy(self.transport))
            self.sendLine(line.upper())


class StartTLSClient(Recorder):
    context: Any = None

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.data == b"PLAIN\r\nGO\r\n":
            self.transport.startTLS(self.context)
            self.transport.write(b"secret\r\nquit\r\n")


class SavedMethodsServer(StartTLSServer):
    """StartTLSServer writing and closing through methods it saved before STARTTLS."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.write, self.close = self.transport.write, self.transport.loseConnection

    def sendLine(self, line: bytes) -> None:
        self.write(line + self.delimiter)

    def lineReceived(self, line: bytes) -> None:
        if line == b"quit":
            self.close()
        else:
            super().lineReceived(line)


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("server_class", [StartTLSServer, SavedMethodsServer])
def test_start_tls(kind: str, serve: Callable[[Any], Any], certificate: Any, server_class: type[StartTLSServer]) -> Any:
    """
    startTLS (ITLSTransport) layers TLS under the protocol on the open
    connection: lines before it go in the clear, lines after it over TLS,
    and the transport then provides ISSLTransport (_newtls's startTLS); a
    transport method saved before it goes over TLS after it too (Twisted's
    transport decides at each call).
    """
    server = server_class()
    server.context = certificate.options()
    port = serve(single(server))
    client = StartTLSClient()
    client.context = client_tls()
    yield connect(port, client)
    client.transport.write(b"plain\r\nSTARTTLS\r\n")
    yield within(client.lost)
    reason = client.reason
    assert client.data == b"PLAIN\r\nGO\r\nSECRET\r\n"
    assert server.secure == [False, True]
    assert server.transport.getPeerCertificate() is None  # the client sent none
    assert reason.check(ConnectionDone)


# -- half-close --------------------------------------------------------------------


@implementer(interfaces.IHalfCloseableProtocol)
class ReplyAtEnd(Recorder):
    """Replies with what it read once the peer half-closes, then closes."""

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")
        self.transport.write(self.data[::-1])
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


@pytest_twisted.inlineCallbacks
def test_peer_half_close_then_reply(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    The peer shuts its sending side: an IHalfCloseableProtocol hears
    readConnectionLost and can still write (HalfCloseTests'
    testCloseWriteCloser, server side).
    """
    server = ReplyAtEnd()
    port = serve(single(server))
    client = HalfClient()
    yield connect(port, client)
    client.transport.write(b"x" * 100000 + b"abc")
    client.transport.loseWriteConnection()
    yield within(server.lost)
    yield within(client.lost)
    assert server.events == ["data", "readConnectionLost", "connectionLost"]
    assert client.data == b"cba" + b"x" * 100000


@pytest_twisted.inlineCallbacks
def test_peer_half_close_without_half_closeable_protocol(kind: str, serve: Callable[[Any], Any]) -> Any:
    """A protocol that is not half-closeable: the peer's half-close ends it."""
    server = Recorder()
    port = serve(single(server))
    client = HalfClient()
    yield connect(port, client)
    client.transport.loseWriteConnection()
    yield within(server.lost)
    reason = server.reason
    assert reason.check(ConnectionDone)
    yield within(client.lost)


@implementer(interfaces.IHalfCloseableProtocol)
class CloseOnRead(HalfRecorder):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.loseConnection()


@implementer(interfaces.IHalfCloseableProtocol)
class AnswerAtEnd(HalfRecorder):
    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.write(b"late")
        self.transport.loseWriteConnection()


@pytest_twisted.inlineCallbacks
def test_own_half_close_event_order(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    After the server's own loseWriteConnection: writeConnectionLost, then
    the peer's data, readConnectionLost, and connectionLost once the
    protocol loses the connection (HalfCloseTests' testWriteCloseNotification).
    """
    server = CloseOnRead()
    port = serve(single(server))
    client = AnswerAtEnd()
    yield connect(port, client)
    yield within(server.lost)
    assert server.events == ["writeConnectionLost", "data", "readConnectionLost", "connectionLost"]
    assert server.data == b"late"
    assert client.events[0] == "readConnectionLost"
    client.transport.loseConnection()
    yield within(client.lost)


# -- producers across loseConnection -----------------------------------------------


class PullProducer:
    """Writes one chunk per resumeProducing; unregisters after ``count``."""

    def __init__(self, consumer: Any, count: int) -> None:
        self.consumer = consumer
        self.left = count

    def resumeProducing(self) -> None:
        self.left -= 1
        self.consumer.write(b"%d," % self.left)
        if not self.left:
            self.consumer.unregisterProducer()

    def stopProducing(self) -> None:
        pass


class PullThenLose(Recorder):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(PullProducer(self.transport, 50), False)
        self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_pull_producer_then_lose_connection(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    loseConnection with a pull producer registered: the producer is asked
    until it unregisters, then the connection closes (test_disconnectWhileProducing).
    """
    port = serve(single(PullThenLose()))
    client = Recorder()
    yield connect(port, client)
    yield within(client.lost)
    reason = client.reason
    assert client.data == b"".join(b"%d," % i for i in reversed(range(50)))
    assert reason.check(ConnectionDone)


@implementer(interfaces.IPushProducer)
class StreamingProducer:
    """Paused by the transport; on resume, writes the end and unregisters."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.consumer.write(b"end")
        self.consumer.unregisterProducer()

    def stopProducing(self) -> None:
        pass


BIG = 16 * 1024 * 1024


class StreamThenLose(Recorder):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.producer = StreamingProducer(self.transport)
        self.transport.registerProducer(self.producer, True)
        self.transport.write(b"x" * BIG)  # more than the socket takes: pauses the producer
        self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_paused_streaming_producer_then_lose_connection(kind: str, serve: Callable[[Any], Any]) -> Any:
    """
    loseConnection while a streaming producer is paused: the producer is
    resumed when the buffer drains, its data is sent, and the connection
    closes once it unregisters.
    """
    server = StreamThenLose()
    port = serve(single(server))
    client = Recorder()
    yield connect(port, client)
    yield within(client.lost)
    reason = client.reason
    assert server.producer.paused >= 1
    assert len(client.data) == BIG + 3 and client.data.endswith(b"end")
    assert reason.check(ConnectionDone)


# -- abortConnection ---------------------------------------------------------------


class AbortTwice(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.abortConnection()
        self.transport.abortConnection()


class AbortThenLose(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.abortConnection()
        self.transport.loseConnection()


@pytest.mark.parametrize("server_class", [AbortTwice, AbortThenLose])
@pytest_twisted.inlineCallbacks
def test_server_aborts(kind: str, serve: Callable[[Any], Any], server_class: type[Recorder]) -> Any:
    """
    abortConnection (twice, or then loseConnection) in dataReceived drops
    the connection once, with ConnectionAborted; the client sees it lost
    (test_serverAbortsConnectionTwice, ...ThenLosesConnection).
    """
    server = server_class()
    port = serve(single(server))
    client = Recorder()
    yield connect(port, client)
    client.transport.write(b"x")
    yield within(server.lost)
    reason = server.reason
    yield within(client.lost)
    client_reason = client.reason
    assert reason.check(ConnectionAborted)
    assert server.events.count("connectionLost") == 1
    assert client_reason.check(ConnectionLost, ConnectionDone)


@pytest_twisted.inlineCallbacks
def test_write_after_disconnect_is_ignored(kind: str, serve: Callable[[Any], Any]) -> Any:
    """write and writeSequence after the connection is lost are no-ops."""
    server = Recorder()
    port = serve(single(server))
    client = Recorder()
    yield connect(port, client)
    client.transport.loseConnection()
    yield within(server.lost)
    server.transport.write(b"lost")
    server.transport.writeSequence([b"more"])
    assert not server.transport.connected


# -- reactor shutdown ---------------------------------------------------------------


def fresh_reactor(kind: str) -> Any:
    """A reactor of the kind the suite runs, not installed."""
    if isinstance(the_reactor(), AsyncioSelectorReactor):
        if os.environ.get("CAPSERV_TEST_LOOP") == "uvloop":
            import uvloop

            return AsyncioSelectorReactor(uvloop.new_event_loop())
        return AsyncioSelectorReactor(asyncio.new_event_loop())
    assert kind == "twisted"
    return type(the_reactor())()


def test_reactor_shutdown_disconnects_every_connection(kind: str) -> None:
    """
    reactor.stop() drops every open connection: a held keep-alive HTTP
    connection's channel hears connectionLost, and the client sees the end
    (Twisted's disconnectAll; native's ports track their connections).
    """
    from twisted.web.server import Site

    reactor = fresh_reactor(kind)
    root = _hello()
    site = Site(root)
    channels: list[Any] = []
    build = site.buildProtocol

    def recording(addr: Any) -> Any:
        channel = build(addr)
        lost = channel.connectionLost

        def connection_lost(reason: Failure) -> None:
            channels.append(reason)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel

    site.buildProtocol = recording  # type: ignore[method-assign]
    ports: list[Any] = []
    started = threading.Event()

    def start() -> None:
        ports.append(listen(kind, site, reactor))
        ports.append(listen(kind, site, reactor))
        started.set()

    reactor.callWhenRunning(start)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False})
    thread.start()
    clients = []
    try:
        assert started.wait(TIMEOUT)
        for port in ports:
            client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=TIMEOUT)
            clients.append(client)
            client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += client.recv(65536)
        reactor.callFromThread(reactor.stop)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert len(channels) == 2 and all(reason.check(ConnectionLost) for reason in channels)
        for client in clients:
            try:
                assert client.recv(65536) == b""
            except ConnectionResetError:
                pass
    finally:
        for client in clients:
            client.close()
        if thread.is_alive():
            reactor.callFromThread(reactor.stop)
            thread.join(TIMEOUT)
        loop = getattr(reactor, "_asyncioEventloop", None)
        if loop is not None:
            loop.close()
