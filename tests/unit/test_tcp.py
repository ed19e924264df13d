"""
In-memory tests for `capserv.protocols.tcp`: StringTransport, Clock, no sockets.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory, UppercaseProtocol

from ..support.tcp_harness import AbortableTransport, Harness, peer


class StreamTests(SynchronousTestCase):
    def test_echoes_uppercase_as_it_arrives(self) -> None:
        """
        Each piece of data is written back in capitals as soon as it arrives, with no
        framing, and the connection stays open.
        """
        h = Harness()
        proto, tr = h.connect()
        proto.dataReceived(b"hello ")
        self.assertEqual(tr.value(), b"HELLO ")
        proto.dataReceived("straße\n".encode())
        self.assertEqual(tr.value(), b"HELLO STRASSE\n")
        self.assertFalse(tr.disconnecting)

    def test_split_character_across_reads(self) -> None:
        """
        A character split across two reads is held until it is complete, then written
        whole.
        """
        h = Harness()
        proto, tr = h.connect()
        snow = "☃".encode()
        proto.dataReceived(b"a" + snow[:2])
        self.assertEqual(tr.value(), b"A")
        proto.dataReceived(snow[2:])
        self.assertEqual(tr.value(), b"A" + snow)

    def test_invalid_bytes_unchanged(self) -> None:
        """
        Bytes that are not valid UTF-8 come back unchanged among the uppercased ones.
        """
        h = Harness()
        proto, tr = h.connect()
        proto.dataReceived(b"x\xff\xfey")
        self.assertEqual(tr.value(), b"X\xff\xfeY")

    def test_ascii_mode(self) -> None:
        """
        With --ascii only a-z are uppercased; é and ß stay as they are.
        """
        h = Harness(ascii_only=True)
        proto, tr = h.connect()
        proto.dataReceived("é straße".encode())
        self.assertEqual(tr.value(), "é STRAßE".encode())

    def test_other_encoding(self) -> None:
        """
        With --encoding latin-1, Latin-1 bytes are decoded and uppercased in that
        encoding.
        """
        h = Harness(encoding="latin-1")
        proto, tr = h.connect()
        proto.dataReceived("é".encode("latin-1"))
        self.assertEqual(tr.value(), "É".encode("latin-1"))


class HalfCloseTests(SynchronousTestCase):
    def test_flushes_partial_then_closes(self) -> None:
        """On end of input, the held partial character is sent, then the
        connection closes after everything owed."""
        h = Harness()
        proto, tr = h.connect()
        proto.dataReceived(b"hi\xe2\x82")
        self.assertEqual(tr.value(), b"HI")
        self.assertFalse(tr.disconnecting)
        proto.readConnectionLost()
        self.assertEqual(tr.value(), b"HI\xe2\x82")
        self.assertTrue(tr.disconnecting)
        self.assertIsNone(tr.producer, "producer must be unregistered or the transport never closes")

    def test_waits_for_backlog_to_drain_before_closing(self) -> None:
        """
        After the client's half-close the connection closes only once the unsent reply
        has drained, and reading is not resumed after end of input.
        """
        h = Harness()
        proto, tr = h.connect()
        proto.dataReceived(b"x" * 10)
        tr.producer.pauseProducing()  # the transport's buffer is over the mark
        proto.readConnectionLost()
        self.assertFalse(tr.disconnecting)
        self.assertIsNotNone(tr.producer)
        tr.producer.resumeProducing()  # drained
        self.assertTrue(tr.disconnecting)
        self.assertEqual(tr.producerState, "paused", "must not resume reading after end of input")

    def test_abort_if_last_bytes_never_taken(self) -> None:
        """
        A half-closed connection whose peer never takes its last bytes is aborted after
        the idle timeout, counted, and leaves no timer.
        """
        h = Harness(idle_timeout=30)
        proto, tr = h.connect()
        proto.readConnectionLost()
        h.clock.advance(29)
        self.assertFalse(tr.aborted)
        h.clock.advance(2)
        self.assertTrue(tr.aborted)
        h.lose(proto)
        self.assertEqual(h.factory.stats.aborts, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class BackpressureTests(SynchronousTestCase):
    def test_transport_registered_as_streaming_producer(self) -> None:
        """
        The protocol registers with its transport as a streaming producer, so a full
        send buffer pauses reading.
        """
        h = Harness()
        _proto, tr = h.connect()
        self.assertTrue(tr.streaming)
        self.assertIsNotNone(tr.producer)

    def test_pause_stops_reading_and_resume_restarts(self) -> None:
        """
        Pausing the producer stops reading from the client (counted as a pause) and
        resuming restarts it.
        """
        h = Harness()
        _proto, tr = h.connect()
        tr.producer.pauseProducing()
        self.assertEqual(tr.producerState, "paused")
        self.assertEqual(h.factory.stats.pauses, 1)
        tr.producer.resumeProducing()
        self.assertEqual(tr.producerState, "producing")

    def test_high_water_sets_transport_buffer_size(self) -> None:
        """
        --high-water sets the transport's buffer size, the mark past which reading
        pauses.
        """
        h = Harness(high_water=4096)
        address = peer()
        proto = h.factory.buildProtocol(address)
        tr = AbortableTransport(peerAddress=address)
        tr.bufferSize = 65536  # type: ignore[attr-defined]
        proto.makeConnection(tr)
        self.assertEqual(tr.bufferSize, 4096)  # type: ignore[attr-defined]

        self.assertNotIn(AbortableTransport, h.factory._plain_kinds)  # it had to be set: checked every time
        again = AbortableTransport(peerAddress=address)
        again.bufferSize = 65536  # type: ignore[attr-defined]
        h.factory.buildProtocol(address).makeConnection(again)
        self.assertEqual(again.bufferSize, 4096)  # type: ignore[attr-defined]

    def test_a_kind_of_transport_already_set_up_is_checked_once(self) -> None:
        """A transport whose buffer is already at the mark and whose own write is used: its kind is remembered."""
        h = Harness(high_water=4096)
        address = peer()
        tr = AbortableTransport(peerAddress=address)
        tr.bufferSize = 4096  # type: ignore[attr-defined]
        h.factory.buildProtocol(address).makeConnection(tr)
        self.assertIn(AbortableTransport, h.factory._plain_kinds)
        proto = h.factory.buildProtocol(address)
        second = AbortableTransport(peerAddress=address)
        proto.makeConnection(second)
        proto.dataReceived(b"abc")
        self.assertEqual(second.value(), b"ABC")


class FastPathTests(SynchronousTestCase):
    def test_fast_paths_fall_back_for_other_transports(self) -> None:
        """StringTransport is not a tcp.Connection: plain write is used."""
        from capserv.protocols._twisted import datagram_sender, stream_writer

        transport = StringTransport()
        self.assertEqual(stream_writer(transport), transport.write)

        class NotAPort:
            def write(self, data: bytes, addr: object) -> None:
                pass

        port = NotAPort()
        self.assertEqual(datagram_sender(port), port.write)

    def test_switch_turns_them_off(self) -> None:
        """
        fast=False (the config's fast_paths) turns the direct-send fast path off:
        the transport's own write is used.
        """
        import socket

        from twisted.internet import tcp

        from capserv.protocols._twisted import stream_writer

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        connection = tcp.Connection(a, None)
        self.assertNotEqual(stream_writer(connection), connection.write)
        self.assertEqual(stream_writer(connection, fast=False), connection.write)

    def test_config_turns_them_off_per_factory(self) -> None:
        """
        CapservConfig(fast_paths=False) gives a factory's connections the
        transport's own write, whatever the environment says.
        """
        import os
        import socket

        from twisted.internet import tcp

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.addCleanup(os.environ.pop, "CAPSERV_NO_FASTPATH", None)
        os.environ["CAPSERV_NO_FASTPATH"] = "0"
        for fast in (True, False):
            factory = UppercaseFactory(CapservConfig(fast_paths=fast), clock=Clock())
            protocol = factory.buildProtocol(peer())
            assert isinstance(protocol, UppercaseProtocol)
            connection = tcp.Connection(a, protocol)
            protocol.makeConnection(connection)
            self.assertEqual(protocol._write == connection.write, not fast)
            factory._unregister(protocol)
        os.environ["CAPSERV_NO_FASTPATH"] = "1"
        protocol = UppercaseFactory(clock=Clock()).buildProtocol(peer())
        assert isinstance(protocol, UppercaseProtocol)
        connection = tcp.Connection(a, protocol)
        protocol.makeConnection(connection)
        self.assertNotEqual(protocol._write, connection.write, "the library reads no environment")


class LoggingTests(SynchronousTestCase):
    def test_one_line_at_close(self) -> None:
        """
        A closing connection logs one line with its peer, bytes in and out, duration and
        why it ended.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness()
        proto, _tr = h.connect("192.0.2.5", 4242)
        proto.dataReceived(b"abc")
        h.clock.advance(1.5)
        proto.readConnectionLost()
        h.lose(proto)
        lines = [e for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"]
        self.assertEqual(len(lines), 1)
        event = lines[0]
        self.assertEqual(event["peer"], "192.0.2.5:4242")
        self.assertEqual((event["bytes_in"], event["bytes_out"]), (3, 3))
        self.assertEqual(event["duration"], 1.5)
        self.assertEqual(event["reason"], "end of input")


class ProxyProtocolTests(SynchronousTestCase):
    """Behind HAProxy, capserv counts and logs the address in the PROXY header."""

    def connect_via_proxy(self, h: Harness, client: str, port: int) -> tuple[object, StringTransport]:
        # The factory that haproxy: endpoint strings wrap around capserv.
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        proxy = IPv4Address("TCP", "127.0.0.1", 40000 + port)
        wrapper = HAProxyWrappingFactory(h.factory).buildProtocol(proxy)
        transport = AbortableTransport(peerAddress=proxy)
        wrapper.makeConnection(transport)
        header = f"PROXY TCP4 {client} 127.0.0.1 {port} 50007\r\n".encode()
        wrapper.dataReceived(header + b"hello")
        return wrapper, transport

    def test_real_address_counted_and_served(self) -> None:
        """
        Behind the PROXY protocol the real client's address is counted and recorded as
        the peer, not the proxy's, and the client is served.
        """
        h = Harness(max_connections_per_ip=1)
        _wrapper, transport = self.connect_via_proxy(h, "192.0.2.9", 5555)
        self.assertEqual(transport.value(), b"HELLO")
        self.assertEqual(h.factory.limits.count("192.0.2.9"), 1)
        self.assertEqual(h.factory.limits.count("127.0.0.1"), 0)
        (protocol,) = h.factory.connections
        self.assertEqual(protocol.peer, IPv4Address("TCP", "192.0.2.9", 5555))

    def test_per_ip_limit_applies_to_the_real_client(self) -> None:
        """
        Behind the PROXY protocol the per-IP limit applies to the real client: its
        second connection is refused unserved, another client is served.
        """
        h = Harness(max_connections_per_ip=1)
        self.connect_via_proxy(h, "192.0.2.9", 1)
        _, second = self.connect_via_proxy(h, "192.0.2.9", 2)
        self.assertEqual(second.value(), b"", "over the limit: nothing served")
        self.assertTrue(second.disconnecting)
        self.assertEqual(h.factory.stats.connections_refused["max_connections_per_ip"], 1)
        _, other = self.connect_via_proxy(h, "192.0.2.10", 3)
        self.assertEqual(other.value(), b"HELLO")

    def test_refused_connection_releases_nothing_it_did_not_hold(self) -> None:
        """
        A connection refused behind the PROXY protocol releases no per-IP slot when it
        is lost, so the held count stays right.
        """
        h = Harness(max_connections_per_ip=1)
        self.connect_via_proxy(h, "192.0.2.9", 1)
        wrapper, _ = self.connect_via_proxy(h, "192.0.2.9", 2)
        wrapper.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(h.factory.limits.count("192.0.2.9"), 1)

    def test_proxy_address_never_counted(self) -> None:
        """Health checks and slow PROXY headers do not use up the proxy's share."""
        h = Harness(max_connections_per_ip=1)
        for port in range(1, 4):
            self.connect_via_proxy(h, f"192.0.2.{port}", port)
        self.assertEqual(h.factory.limits.count("127.0.0.1"), 0)
        self.assertEqual(h.factory.stats.connections_refused["max_connections_per_ip"], 0)


class CloseReasonTests(SynchronousTestCase):
    """Every access line says why the connection ended, in capserv's words (docs/operations.rst)."""

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"]

    def refusals(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "capserv.tcp.UppercaseFactory"]

    def test_end_of_input_idle_shutdown(self) -> None:
        """The three closes capserv makes: after end of input, when idle, at a graceful stop's end."""
        h = Harness(idle_timeout=10)
        ended, _ = h.connect(port=1)
        ended.readConnectionLost()
        h.lose(ended)
        idle, _ = h.connect(port=2)
        h.clock.advance(11)
        h.lose(idle)
        stopped, _ = h.connect(port=3)
        h.factory.drain(timeout=0)
        h.lose(stopped)
        self.assertEqual(self.reasons(), ["end of input", "idle for 10s", "server shutting down"])

    def test_aborted(self) -> None:
        """
        A close whose last bytes the peer never takes says it was aborted, and why;
        so does a stop forced by a second signal.
        """
        h = Harness(idle_timeout=30)
        proto, _ = h.connect(port=1)
        proto.readConnectionLost()
        h.clock.advance(31)
        h.lose(proto)
        forced, _ = h.connect(port=2)
        forced._abort_now()
        h.lose(forced)
        self.assertEqual(
            self.reasons(),
            [
                "end of input, aborted: peer did not take its last bytes",
                "server stopping at once (second signal), aborted",
            ],
        )

    def test_closed_or_reset_by_peer(self) -> None:
        """
        A connection the peer ends before finishing its input says "closed by peer" or
        "reset by peer", not Twisted's exception text.
        """
        h = Harness()
        closed, _ = h.connect(port=1)
        closed.connectionLost(Failure(ConnectionDone("Connection was closed cleanly.")))
        reset, _ = h.connect(port=2)
        reset.connectionLost(Failure(ConnectionLost("[Errno 104] Connection reset by peer")))
        self.assertEqual(self.reasons(), ["closed by peer", "reset by peer"])

    def test_tls_error_and_other_losses(self) -> None:
        """A TLS failure says so with OpenSSL's reason; anything else names the error."""
        from OpenSSL import SSL

        h = Harness()
        tls, _ = h.connect(port=1)
        tls.connectionLost(Failure(SSL.Error([("SSL routines", "", "wrong version number")])))
        other, _ = h.connect(port=2)
        other.connectionLost(Failure(OSError(28, "No space left on device")))
        self.assertEqual(
            self.reasons(), ["TLS error: wrong version number", "lost: OSError: [Errno 28] No space left on device"]
        )

    def via_proxy(self, h: Harness) -> tuple[object, AbortableTransport]:
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        proxy = IPv4Address("TCP", "127.0.0.1", 40001)
        wrapper = HAProxyWrappingFactory(h.factory).buildProtocol(proxy)
        transport = AbortableTransport(peerAddress=proxy)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_bad_proxy_header_is_refused(self) -> None:
        """
        Behind HAProxy, a connection whose first bytes are not a PROXY header is
        refused: counted as proxy_header, one refusal line naming it, no access line,
        not counted as served.
        """
        h = Harness()
        wrapper, transport = self.via_proxy(h)
        wrapper.dataReceived(b"hello, no header here\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.reasons(), [])
        self.assertEqual(h.factory.snapshot()["connections_refused"], {"proxy_header": 1})
        self.assertEqual(h.factory.stats.connections_total, 0)
        self.assertEqual(len(h.factory.connections), 0)
        (line,) = self.refusals()
        self.assertIn("Refused connection from 127.0.0.1:40001: bad PROXY header", line)

    def test_no_proxy_header_before_end_of_input(self) -> None:
        """Behind HAProxy, a client that ends its input before any header is refused too."""
        h = Harness()
        wrapper, transport = self.via_proxy(h)
        wrapper.readConnectionLost()  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.reasons(), [])
        self.assertEqual(h.factory.snapshot()["connections_refused"], {"proxy_header": 1})
        (line,) = self.refusals()
        self.assertIn("no PROXY header before end of input", line)

    def test_header_then_end_of_input_is_served(self) -> None:
        """
        A header and then end of input (a health check) is served: counted once, by
        the real client's address, logged as end of input.
        """
        h = Harness()
        wrapper, _transport = self.via_proxy(h)
        wrapper.dataReceived(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 50007\r\n")  # type: ignore[attr-defined]
        wrapper.readConnectionLost()  # type: ignore[attr-defined]
        wrapper.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.reasons(), ["end of input"])
        self.assertEqual(self.events[-1]["peer"], "192.0.2.9:5555")
        self.assertEqual(h.factory.stats.connections_total, 1)
        self.assertEqual(h.factory.snapshot()["connections_refused"], {})


class TwistedConventionTests(SynchronousTestCase):
    """The factory and protocol behave as Twisted's own do."""

    def test_subclass_set_as_protocol_is_used(self) -> None:
        """
        buildProtocol builds factory.protocol: a subclass set there serves the
        connection, with the factory and the peer set, and keeps the service's
        behaviour.
        """

        class Greeting(UppercaseProtocol):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.transport.write(b"HELLO\n")

        h = Harness()
        h.factory.protocol = Greeting  # type: ignore[assignment]
        proto, tr = h.connect("192.0.2.3", 4000)
        self.assertIsInstance(proto, Greeting)
        self.assertIs(proto.factory, h.factory)
        self.assertEqual(proto.peer, peer("192.0.2.3", 4000))
        proto.dataReceived(b"abc")
        self.assertEqual(tr.value(), b"HELLO\nABC")
        self.assertIn(proto, h.factory.connections)

    def test_access_line_off_per_factory(self) -> None:
        """
        CapservConfig(access_log=False) turns the per-connection line off for
        that factory only; another factory still logs its connections.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        quiet, loud = Harness(access_log=False), Harness()
        for h in (quiet, loud):
            proto, _tr = h.connect()
            proto.dataReceived(b"abc")
            h.lose(proto)
        lines = [e for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(loud.factory.stats.connections_total, quiet.factory.stats.connections_total)

    def test_no_timer_after_connection_lost(self) -> None:
        """
        A transport that closes at once (connectionLost called from
        loseConnection, as StringTransportWithDisconnection does) leaves no
        abort timer behind and counts no abort: after an idle timeout, after
        end of input and after a shutdown.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for close in ("idle", "end of input", "shutdown"):
            h = Harness(idle_timeout=10, abort_grace=2)
            address = peer()
            proto = h.factory.buildProtocol(address)
            tr = StringTransportWithDisconnection(peerAddress=address)
            tr.protocol = proto
            proto.makeConnection(tr)  # type: ignore[union-attr]
            if close == "idle":
                h.clock.advance(11)
            elif close == "end of input":
                proto.readConnectionLost()  # type: ignore[union-attr]
            else:
                h.factory.drain(timeout=0)
            self.assertFalse(tr.connected, close)
            self.assertEqual(h.clock.getDelayedCalls(), [], close)
            self.assertEqual(h.factory.stats.aborts, 0, close)
        reasons = [e["reason"] for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"]
        self.assertEqual(reasons, ["idle for 10s", "end of input", "server shutting down"])

    def test_refusal_behind_a_wrapping_factory(self) -> None:
        """
        A connection over a limit behind one of Twisted's wrapping factories
        (which cannot wrap None) is closed at once, with no error.
        """
        h = Harness(max_connections=1)
        h.connect()
        wrapper = WrappingFactory(h.factory).buildProtocol(peer(port=2))
        tr = StringTransport()
        wrapper.makeConnection(tr)
        self.assertTrue(tr.disconnecting)
        self.assertEqual(h.factory.stats.connections_refused["max_connections"], 1)
