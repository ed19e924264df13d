"""
Tests for `capserv.protocols._twisted`: every private Twisted attribute capserv
relies on, exercised on the Twisted the tox env installs (the matrix runs the
oldest and the newest): each helper does its job when the internals are as
expected and falls back to public behaviour when they are not.  Also the one
exception, ``capserv.native``'s asyncio loop, and that importing capserv and
building its protocols looks up no reactor (`global_reactor` is lazy).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import DatagramProtocol, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import capserv
from capserv import UppercaseFactory
from capserv.native import asyncio_loop
from capserv.protocols._twisted import (
    clear_exit_signal,
    datagram_sender,
    endpoint_service,
    proxy_protocol_factory,
    reset_unnoticed,
    stream_writer,
    systemd_descriptors,
    tls_half_close,
    unsent_bytes,
)


class _FailingEndpoint:
    def listen(self, factory: object) -> object:
        return fail(CannotListenError("127.0.0.1", 1, OSError(98, "Address already in use")))


class InternalsTests(SynchronousTestCase):
    """Each helper works on this Twisted, or degrades to the public path."""

    def test_asyncio_loop(self) -> None:
        """Another reactor has no asyncio loop; the asyncio reactor's is found."""
        import asyncio

        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        self.assertIsNone(asyncio_loop(MemoryReactorClock()))
        loop = asyncio.new_event_loop()
        try:
            reactor = AsyncioSelectorReactor(loop)
            self.assertIs(asyncio_loop(reactor), loop)
        finally:
            loop.close()

    def test_clear_exit_signal(self) -> None:
        """The recorded signal is cleared where it exists, ignored where not."""
        reactor = MemoryReactorClock()
        reactor._exitSignal = 15  # type: ignore[attr-defined]
        self.assertTrue(clear_exit_signal(reactor))
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]
        self.assertFalse(clear_exit_signal(object()))

    def test_endpoint_service_fails_fast(self) -> None:
        """A listen failure is raised from privilegedStartService, not logged later."""
        service = endpoint_service(_FailingEndpoint(), UppercaseFactory(clock=MemoryReactorClock()))
        self.assertRaises(CannotListenError, service.privilegedStartService)

    def test_proxy_factory_keeps_half_close_and_is_quiet(self) -> None:
        """
        The PROXY-protocol wrapper (Twisted's public one) logs no reprs, and
        passes half-close on once capserv's protocol is connected behind it.
        """
        factory = proxy_protocol_factory(UppercaseFactory(clock=MemoryReactorClock()))
        self.assertFalse(factory.noisy)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertFalse(IHalfCloseableProtocol.providedBy(protocol))
        protocol.makeConnection(StringTransport())
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))

    def test_datagram_sender(self) -> None:
        """A UDP port gets the direct sendto; one without the expected
        attributes, or another transport, gets write."""
        from twisted.internet import udp

        reactor = MemoryReactorClock()
        port = udp.Port(0, DatagramProtocol(), interface="127.0.0.1", reactor=reactor)
        port.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.assertEqual(datagram_sender(port), port.socket.sendto)
            del port._connectedAddr
            self.assertEqual(datagram_sender(port), port.write)
        finally:
            port.socket.close()
        other = StringTransport()
        self.assertEqual(datagram_sender(other), other.write)

    def test_stream_writer_falls_back(self) -> None:
        """A transport that is not Twisted's TCP connection gets its own write."""
        transport = StringTransport()
        self.assertEqual(stream_writer(transport), transport.write)

    def test_sole_observer(self) -> None:
        """A LogPublisher's one observer; None for several, none, or a publisher without Twisted's list."""
        from twisted.logger import LogPublisher

        from capserv.protocols._twisted import sole_observer

        def first(event: object) -> None: ...

        def second(event: object) -> None: ...

        self.assertIs(sole_observer(LogPublisher(first)), first)
        self.assertIsNone(sole_observer(LogPublisher(first, second)))
        self.assertIsNone(sole_observer(LogPublisher()))
        self.assertIsNone(sole_observer(object()))

    def test_unsent_bytes(self) -> None:
        """
        A native transport's write_buffer_size is read; Twisted TCP's two buffers
        are added up; a transport without them, or another transport, cannot tell.
        """
        from twisted.internet import tcp

        class Native:
            write_buffer_size = 7

        self.assertEqual(unsent_bytes(Native()), 7)
        self.assertIsNone(unsent_bytes(StringTransport()))
        connection = tcp.Connection.__new__(tcp.Connection)
        self.assertIsNone(unsent_bytes(connection))  # no _tempDataLen: internals changed
        connection.dataBuffer, connection.offset, connection._tempDataLen = b"abcdef", 2, 5
        self.assertEqual(unsent_bytes(connection), 9)

    def test_systemd_descriptors_without_systemd(self) -> None:
        """Outside socket activation there are no inherited sockets."""
        self.assertEqual(systemd_descriptors(), [])


class _Replier(Protocol):
    """Records what arrives and whether input ended."""

    def connectionMade(self) -> None:
        self.received, self.ends, self.notified, self.lost = b"", 0, 0, False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    """A server's TLS connections with a trustme certificate (Twisted's own options warn on pyOpenSSL 26)."""

    def __init__(self) -> None:
        from OpenSSL import SSL

        self.context = SSL.Context(SSL.TLS_METHOD)
        __import__("trustme").CA().issue_cert("localhost").configure_cert(self.context)

    def serverConnectionForTLS(self, tls: object) -> object:
        from OpenSSL import SSL

        return SSL.Connection(self.context, None)


class TLSHalfCloseTests(SynchronousTestCase):
    """
    `tls_half_close`: a server ``TLSMemoryBIOProtocol`` in memory, a pyOpenSSL
    client on memory BIOs; Twisted's own answer to close_notify drops the reply.
    """

    def setUp(self) -> None:
        from OpenSSL import SSL
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(_ServerTLS(), False, ServerFactory.forProtocol(_Replier), MemoryReactorClock())
        self.tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.tcp = StringTransport()
        self.tls.makeConnection(self.tcp)
        self.app: _Replier = self.tls.wrappedProtocol
        self.client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.client.set_connect_state()
        self.pump()

    def pump(self) -> bytes:
        """Move bytes both ways until neither side has more; what the client read."""
        from OpenSSL import SSL

        read = b""
        while True:
            try:
                self.client.do_handshake()
                while True:
                    read += self.client.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
            to_server = b""
            try:
                while True:
                    to_server += self.client.bio_read(65536)
            except SSL.WantReadError:
                pass
            to_client = self.tcp.value()
            self.tcp.clear()
            if not to_server and not to_client:
                return read
            if to_server:
                self.tls.dataReceived(to_server)
            if to_client:
                self.client.bio_write(to_client)

    def lend(self) -> bool:
        app = self.app

        def ended() -> None:
            app.ends += 1

        def notified() -> None:
            app.notified += 1

        return tls_half_close(self.tls, ended, notified)

    def test_reply_after_close_notify(self) -> None:
        """
        The peer's close_notify ends the input once, keeps the connection
        open for the whole reply; closing then sends ours and closes TCP.
        """
        from OpenSSL import SSL

        self.assertTrue(self.lend())
        self.client.send(b"hello")
        self.client.shutdown()
        self.pump()
        self.assertEqual((self.app.received, self.app.ends, self.app.lost), (b"hello", 1, False))
        self.assertFalse(self.tcp.disconnecting)
        self.tls.dataReceived(b"\x00")  # more after close_notify: not a second end
        self.tls.write(b"HELLO" * 10_000)
        self.tls.loseConnection()
        self.assertEqual(self.pump(), b"HELLO" * 10_000)
        self.assertEqual((self.app.ends, self.app.notified), (1, 1))
        self.assertTrue(self.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        self.assertTrue(self.tcp.disconnecting)

    def test_twisted_alone_drops_the_reply(self) -> None:
        """Without it, Twisted answers close_notify at once: the reply is lost (why it exists)."""
        self.client.send(b"hello")
        self.client.shutdown()
        self.pump()
        self.tls.write(b"HELLO")
        self.tls.loseConnection()
        self.assertEqual(self.pump(), b"")
        self.assertTrue(self.tcp.disconnecting)

    def test_close_notify_answering_ours(self) -> None:
        """After this side's close_notify, the peer's closes as Twisted does, with no end of input."""
        self.assertTrue(self.lend())
        self.tls.loseConnection()
        self.pump()
        self.client.shutdown()
        self.pump()
        self.assertEqual((self.app.ends, self.app.notified), (0, 2))
        self.assertTrue(self.tcp.disconnecting)

    def test_other_internals_change_nothing(self) -> None:
        """A wrapper without TLS's internals is left as it is."""
        called: list[int] = []
        self.assertFalse(tls_half_close(StringTransport(), lambda: called.append(1), lambda: called.append(2)))
        del self.tls._tlsConnection
        self.assertFalse(self.lend())
        self.assertEqual(called, [])


def _reset_pair() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP connection whose client end has been reset (RST)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return client, server


class ResetUnnoticedTests(SynchronousTestCase):
    """`reset_unnoticed` finds a reset the reactor was not told of."""

    def test_reset_found_through_wrappers(self) -> None:
        """A reset socket under a transport, or under a wrapper's
        transport (TLS, PROXY), is found once; a live one and a transport
        without a socket (capserv.native's, memory ones) are not."""
        client, server = _reset_pair()
        self.addCleanup(server.close)

        class Plain:
            socket = server

        class Wrapper:
            transport = Plain()

        self.assertFalse(reset_unnoticed(Wrapper()))
        client.close()  # SO_LINGER 0: a reset
        deadline = time.monotonic() + 5
        while not reset_unnoticed(Wrapper()):
            self.assertLess(time.monotonic(), deadline, "the reset never showed")
            time.sleep(0.01)
        self.assertFalse(reset_unnoticed(Plain()))  # reading the error cleared it
        self.assertFalse(reset_unnoticed(StringTransport()))
        self.assertFalse(reset_unnoticed(None))


class NoSideEffectTests(SynchronousTestCase):
    """Importing capserv and building its protocols leave the process alone."""

    def test_reactor_chosen_after_building_and_no_atexit(self) -> None:
        """
        In a fresh interpreter, ``import capserv`` registers no atexit hook,
        and building ``UppercaseFactory()`` and ``UppercaseDatagramProtocol()``
        without a clock imports no reactor, so ``asyncioreactor.install()``
        still works after.
        """
        code = textwrap.dedent(
            """
            import asyncio, atexit, sys
            before = atexit._ncallbacks()
            import capserv
            assert atexit._ncallbacks() == before, "import capserv registered an atexit hook"
            capserv.UppercaseFactory()
            capserv.UppercaseDatagramProtocol()
            assert "twisted.internet.reactor" not in sys.modules, "a reactor was imported"
            from twisted.internet import asyncioreactor
            asyncioreactor.install(asyncio.new_event_loop())
            from twisted.internet import reactor
            print(type(reactor).__name__)
            """
        )
        root = Path(capserv.__file__).resolve().parent.parent
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False
        )
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "AsyncioSelectorReactor"), done.stderr)
