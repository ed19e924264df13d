"""
Tests for L{capserv.tap}: options, the service tree, the graceful stop, in
memory (MemoryReactorClock, no sockets).
"""

from __future__ import annotations

import signal

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv._internals import clear_exit_signal
from capserv.listen import DEFAULT_BACKLOG, DEFAULT_LISTEN, ListenError, StreamListener, parse_udp, with_default_backlog
from capserv.tap import Options, makeService


class _FakeUDPPort:
    """A listening UDP port that records what is sent."""

    maxPacketSize = 8192

    def __init__(self, address: IPv4Address) -> None:
        self.address = address
        self.sent: list[tuple[bytes, object]] = []

    def getHost(self) -> IPv4Address:
        return self.address

    def write(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))

    def stopListening(self) -> None:
        pass


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock, plus listenUDP recorded like listenTCP."""

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list[tuple[object, ...]] = []

    def listenUDP(self, port: int, protocol: object, interface: str = "", maxPacketSize: int = 8192) -> object:  # noqa: N803
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        listening = _FakeUDPPort(IPv4Address("UDP", interface or "0.0.0.0", port))
        protocol.makeConnection(listening)  # type: ignore[attr-defined]
        return listening


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_no_uvloop_flag(self) -> None:
        self.assertTrue(parse("--no-uvloop")["no-uvloop"])
        self.assertFalse(parse()["no-uvloop"])

    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["listen"], list(DEFAULT_LISTEN))
        self.assertEqual(options["config"], CapservConfig())

    def test_every_knob_reaches_the_config(self) -> None:
        options = parse(
            "--encoding=latin1",
            "--ascii",
            "--idle-timeout=7.5",
            "--abort-grace=2",
            "--max-connections=10",
            "--max-connections-per-ip=3",
            "--high-water=1024",
            "--udp-rate=5",
            "--udp-burst=9",
            "--udp-rate-loopback",
            "--udp-rate-table-size=50",
            "--udp-allow-low-ports",
            "--shutdown-timeout=4",
        )
        self.assertEqual(
            options["config"],
            CapservConfig(
                encoding="iso8859-1",
                ascii_only=True,
                idle_timeout=7.5,
                abort_grace=2,
                max_connections=10,
                max_connections_per_ip=3,
                high_water=1024,
                udp_rate=5,
                udp_burst=9,
                udp_rate_loopback=True,
                udp_rate_table_size=50,
                udp_allow_low_ports=True,
                shutdown_timeout=4,
            ),
        )

    def test_listen_repeatable_and_replaces_default(self) -> None:
        options = parse("--listen", "tcp:1234", "--listen", "udp:1234:interface=\\:\\:1")
        self.assertEqual(options["listen"], ["tcp:1234", "udp:1234:interface=\\:\\:1"])

    def test_bad_values_name_the_option(self) -> None:
        for args, culprit in [
            (["--idle-timeout=-1"], "--idle-timeout"),
            (["--max-connections=1.5"], "--max-connections"),
            (["--high-water=0"], "--high-water"),
            (["--udp-rate=nan"], "--udp-rate"),
            (["--encoding=rot13"], "--encoding"),
            (["--udp-rate=5", "--udp-burst=0"], "--udp-burst"),
            (["--listen", "nope:1"], "nope:1"),
            (["--listen", "udp:1:color=red"], "color"),
        ]:
            with self.assertRaises(usage.UsageError, msg=args) as caught:
                parse(*args)
            self.assertIn(culprit, str(caught.exception))


class UDPDescriptionTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_udp("udp:50007").port, 50007)
        self.assertEqual(parse_udp("udp:port=7:interface=127.0.0.1").interface, "127.0.0.1")
        self.assertEqual(parse_udp("udp:0:interface=\\:\\:1").interface, "::1")
        self.assertEqual(parse_udp("UDP:9").port, 9)

    def test_errors(self) -> None:
        for bad in ["udp:", "udp", "udp:70000", "udp:-1", "udp:1:2", "udp:1:port=2", "udp:1:interface=host.example"]:
            self.assertRaises(ListenError, parse_udp, bad)


class BacklogTests(SynchronousTestCase):
    def test_default_added_where_a_backlog_is_taken(self) -> None:
        kinds = ["tcp:1", "tcp6:1:interface=\\:\\:1", "unix:/run/c.sock", "ssl:1:privateKey=k", "haproxy:tcp:1"]
        for description in kinds:
            self.assertEqual(with_default_backlog(description), f"{description}:backlog={DEFAULT_BACKLOG}")

    def test_left_alone_otherwise(self) -> None:
        for description in ["tcp:1:backlog=5", "systemd:domain=INET:index=0", "udp:1", "haproxy:tcp:1:backlog=7"]:
            self.assertEqual(with_default_backlog(description), description)

    def test_operator_backlog_reaches_the_port(self) -> None:
        reactor = UDPMemoryReactor()
        service = makeService(parse("--listen", "tcp:1001:backlog=7"), reactor=reactor)
        service.privilegedStartService()
        self.assertEqual(reactor.tcpServers[0][2], 7)


class ServiceTests(SynchronousTestCase):
    def test_listens_on_each_description(self) -> None:
        reactor = UDPMemoryReactor()
        options = parse(
            "--listen",
            "tcp:1001:interface=127.0.0.1",
            "--listen",
            "udp:1002:interface=127.0.0.1",
            "--listen",
            "udp:1003",
        )
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(1001, "127.0.0.1")])
        self.assertEqual(reactor.tcpServers[0][2], DEFAULT_BACKLOG)
        self.assertEqual([(p[0], p[2]) for p in reactor.udpServers], [(1002, "127.0.0.1"), (1003, "")])
        udp_protocols = [p[1] for p in reactor.udpServers]
        self.assertIsNot(udp_protocols[0], udp_protocols[1])
        self.assertIs(udp_protocols[0].stats, udp_protocols[1].stats)
        self.assertTrue(all(p[3] == 65535 for p in reactor.udpServers))

    def test_graceful_stop_waits_then_closes(self) -> None:
        reactor = MemoryReactorClock()
        service = makeService(parse("--listen", "tcp:1001", "--shutdown-timeout=5", "--abort-grace=1"), reactor=reactor)
        service.privilegedStartService()
        service.startService()
        factory = reactor.tcpServers[0][1]
        # StreamListener wraps nothing: the factory is capserv's own.
        self.assertIs(factory, service.factory)
        address = IPv4Address("TCP", "192.0.2.1", 5000)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(done, [])
        reactor.advance(5)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(len(done), 1)

    def test_clean_exit_after_signal(self) -> None:
        reactor = MemoryReactorClock()
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = makeService(parse("--listen", "tcp:1001"), reactor=reactor)
        service.privilegedStartService()
        service.startService()
        service.stopService()
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]

    def test_internals_fallback(self) -> None:
        """Without the private attribute, nothing happens and nothing breaks."""
        self.assertFalse(clear_exit_signal(object()))

    def test_listen_failure_is_one_line_system_exit(self) -> None:
        from twisted.internet.error import CannotListenError

        class Busy(UDPMemoryReactor):
            def listenUDP(self, *a: object, **kw: object) -> None:
                raise CannotListenError("127.0.0.1", 1, OSError(98, "Address already in use"))

        reactor = Busy()
        service = makeService(parse("--listen", "tcp:1001", "--listen", "udp:1"), reactor=reactor)
        with self.assertRaises(SystemExit) as caught:
            service.privilegedStartService()
        message = str(caught.exception.code)
        self.assertIn("cannot listen on 'udp:1'", message)
        self.assertNotIn("\n", message)
        # The TCP listener that had started was stopped again.
        listener = next(iter(service))
        self.assertIsInstance(listener, StreamListener)
        self.assertIsNone(listener.port)  # type: ignore[attr-defined]


class TwistdUsageErrorTests(SynchronousTestCase):
    def test_usage_error_under_twistd_exits_non_zero(self) -> None:
        """As twistd's subcommand, a bad option exits with a message (twistd
        before 26.10 would print it and exit 0)."""
        import io
        from contextlib import redirect_stdout

        options = Options()
        options.parent = usage.Options()  # type: ignore[attr-defined]
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--udp-burst=lots"])
        self.assertIn("--udp-burst", str(caught.exception.code))
        self.assertNotEqual(caught.exception.code, 0)
