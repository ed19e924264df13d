"""
In-memory tests for the client: the UDP request state machine (Clock, a fake
datagram transport: retry timing, source matching, giving up, replies too
long to be whole) and ``capserv-client``'s option parsing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv.client import ReplyTimeoutError, StreamSession, tcp_request, udp_request
from capserv.client.command import ClientOptions, usage_message
from capserv.client.datagram import MAX_UDP_REPLY, NoReplyError, ReplyTooLongError, _UDPRequest, max_udp_message

SERVER = ("192.0.2.10", 50007)


class FakeTransport:
    """A datagram transport that records what is written."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def start(timeout: float = 1.0, tries: int = 4) -> tuple[_UDPRequest, FakeTransport, Clock, list[object]]:
    clock = Clock()
    request = _UDPRequest(clock, SERVER, b"hi", timeout, tries)
    transport = FakeTransport()
    outcome: list[object] = []
    request.result.addBoth(outcome.append)
    request.makeConnection(transport)  # type: ignore[arg-type]
    return request, transport, clock, outcome


class UDPRequestTests(SynchronousTestCase):
    """
    The UDP request state machine of `capserv.client`.
    """

    def test_retries_on_timeout_then_gives_up(self) -> None:
        """
        Each timeout sends the datagram again, and after the last try the
        request fails with NoReplyError and leaves no timer behind.
        """
        _request, transport, clock, outcome = start(timeout=1.0, tries=4)
        self.assertEqual(len(transport.sent), 1)
        for expected in (2, 3, 4):
            clock.advance(1.0)
            self.assertEqual(len(transport.sent), expected)
        self.assertEqual(outcome, [])
        clock.advance(1.0)
        self.assertEqual(len(outcome), 1)
        failure = outcome[0]
        self.assertTrue(failure.check(NoReplyError))  # type: ignore[attr-defined]
        self.assertIn("after 4 tries", str(failure.value))  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reply_stops_retries(self) -> None:
        """
        A reply fires the request and cancels the retry timer.
        """
        request, transport, clock, outcome = start()
        clock.advance(1.0)
        request.datagramReceived(b"HI", SERVER)
        self.assertEqual(outcome, [b"HI"])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(len(transport.sent), 2)

    def test_ignores_other_sources_and_extra_replies(self) -> None:
        """
        Datagrams from another address or port are ignored, the server's
        address seen as IPv4-mapped IPv6 counts as the server, and only the
        first reply is taken.
        """
        request, _transport, _clock, outcome = start()
        request.datagramReceived(b"SPOOF", ("192.0.2.99", 50007))
        request.datagramReceived(b"SPOOF", ("192.0.2.10", 50008))
        self.assertEqual(outcome, [])
        request.datagramReceived(b"HI", ("::ffff:192.0.2.10", 50007))
        request.datagramReceived(b"HI AGAIN", SERVER)
        self.assertEqual(outcome, [b"HI"])

    def test_largest_reply_is_taken_whole(self) -> None:
        """
        A reply of 65,535 bytes, the most a datagram carries, is the result,
        whole.
        """
        request, _transport, clock, outcome = start()
        request.datagramReceived(b"A" * MAX_UDP_REPLY, SERVER)
        self.assertEqual(outcome, [b"A" * MAX_UDP_REPLY])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reply_longer_than_a_datagram_is_an_error(self) -> None:
        """
        A reply longer than 65,535 bytes (what a too-small read buffer would
        have cut) fails the request with ReplyTooLongError instead of
        arriving cut short.
        """
        request, _transport, clock, outcome = start()
        request.datagramReceived(b"A" * (MAX_UDP_REPLY + 1), SERVER)
        self.assertEqual(len(outcome), 1)
        self.assertTrue(outcome[0].check(ReplyTooLongError))  # type: ignore[attr-defined]
        self.assertIn("longer than 65535 bytes", str(outcome[0].value))  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_message_limit_by_address_family(self) -> None:
        """
        One datagram carries 65,507 bytes to an IPv4 address (also written
        as IPv4-mapped IPv6) and 65,527 to an IPv6 address.
        """
        self.assertEqual(max_udp_message("127.0.0.1"), 65507)
        self.assertEqual(max_udp_message("::ffff:127.0.0.1"), 65507)
        self.assertEqual(max_udp_message("::1"), 65527)


def parse(*argv: str) -> ClientOptions:
    """capserv-client's options parsed from ``argv``."""
    options = ClientOptions()  # type: ignore[no-untyped-call]
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    """The one-line message capserv-client prints for ``argv``."""
    try:
        parse(*argv)
    except usage.UsageError as e:
        return usage_message(e)
    raise AssertionError(f"{argv} parsed")


class ClientOptionsTests(SynchronousTestCase):
    """
    ``capserv-client``'s command line.
    """

    def test_options_after_the_words(self) -> None:
        """
        Options after the words are honoured, with their values, in every
        spelling getopt allows (``--port N``, ``--port=N``, ``-p N``,
        ``-pN``, flags grouped with a short option, a unique prefix).
        """
        for argv in (
            ("hello", "--port", "5000", "there", "--udp"),
            ("hello", "--port=5000", "there", "-u"),
            ("hello", "-p", "5000", "there", "--udp"),
            ("hello", "-up5000", "there"),
            ("hello", "-up", "5000", "there"),
            ("hello", "--po", "5000", "there", "--ud"),
        ):
            options = parse(*argv)
            self.assertEqual((options["port"], options["udp"], options["words"]), (5000, 1, ["hello", "there"]), argv)

    def test_double_dash_ends_the_options(self) -> None:
        """
        After ``--`` every argument is a word, even one that looks like an
        option; a lone ``-`` is a word too.
        """
        options = parse("--port", "5000", "-", "--", "-n", "--udp", "--")
        self.assertEqual(options["words"], ["-", "-n", "--udp", "--"])
        self.assertEqual((options["port"], options["udp"]), (5000, 0))

    def test_unknown_option_after_words_is_an_error(self) -> None:
        """
        An unknown option anywhere is a usage error naming it and saying how
        to send such a word, not a word sent to the server.
        """
        self.assertEqual(usage_error("hello", "-x"), "unknown option -x (a word that starts with '-' goes after '--')")

    def test_missing_value_at_the_end(self) -> None:
        """
        An option that needs a value, last on the line, is reported as
        such (not given the words or ``--`` as its value).
        """
        self.assertEqual(usage_error("hello", "--port"), "option --port needs a value")
        self.assertEqual(usage_error("hello", "-p"), "option -p needs a value")

    def test_host_in_brackets(self) -> None:
        """
        ``--host [::1]`` is ``::1``; a malformed bracket is a usage error.
        """
        self.assertEqual(parse("--host", "[::1]")["host"], "::1")
        self.assertEqual(parse("--host", "::1")["host"], "::1")
        self.assertEqual(parse("-H", "[localhost]")["host"], "localhost")
        self.assertIn("--host: '[::1' is not a host name", usage_error("--host", "[::1"))
        self.assertIn("--host: '[]' is not a host name", usage_error("--host", "[]"))

    def test_timeout_one_rule(self) -> None:
        """
        --timeout takes any number of seconds above 0; zero, negative,
        NaN, infinite and non-numbers all get the same message.
        """
        self.assertEqual(parse("--timeout", "0.25")["timeout"], 0.25)
        for value in ("0", "-1", "nan", "inf", "never"):
            self.assertEqual(
                usage_error("--timeout", value),
                f"--timeout: {value!r} is not a number of seconds greater than 0 (for example 1 or 0.5)",
            )

    def test_connect_with_host_or_port_is_refused(self) -> None:
        """
        --connect names the server; --host or --port beside it (long, short
        or abbreviated, before or after) is refused instead of ignored.
        """
        for argv in (
            ("--connect", "tcp:h:1", "--host", "::1"),
            ("-p", "5", "--connect", "tcp:h:1"),
            ("--ho=x", "-c", "u"),
        ):
            with self.subTest(argv=argv):
                self.assertIn("--connect names the server itself; leave out --", usage_error(*argv, "word"))
        self.assertEqual(parse("--connect", "tcp:h:1", "word")["words"], ["word"])

    def test_udp_with_connect_is_refused(self) -> None:
        """
        --connect takes stream endpoints only; with --udp it is a usage
        error.
        """
        self.assertIn("--connect takes stream endpoints", usage_error("--udp", "--connect", "tcp:localhost:1"))


class DescribeFailureTests(SynchronousTestCase):
    """Connection failures read in capserv-client's words, not Twisted's."""

    def test_missing_unix_socket(self) -> None:
        """A UNIX socket path with nothing there says so, without Twisted's wording."""
        from twisted.internet import error
        from twisted.python.failure import Failure

        from capserv.client.command import describe_failure

        message = describe_failure(Failure(error.ConnectError(osError=2)))
        self.assertEqual(message, "no such socket file (is capserv listening on that path?)")
        self.assertNotIn("An error occurred", describe_failure(Failure(error.ConnectError(osError=13))))

    def test_untrusted_certificate(self) -> None:
        """A certificate the client does not trust says how to trust it, not OpenSSL's tuple."""
        from OpenSSL.SSL import Error
        from twisted.python.failure import Failure

        from capserv.client.command import describe_failure

        message = describe_failure(Failure(Error([("SSL routines", "", "certificate verify failed")])))
        self.assertIn("trustRoots=", message)
        self.assertNotIn("SSL routines", message)


class CancelTests(SynchronousTestCase):
    """
    Cancelling what the client API returns closes what it opened and
    leaves no timer, on a fake clock.
    """

    def test_cancel_udp_request_stops_the_retries_and_closes_the_port(self) -> None:
        """
        Cancelling udp_request cancels its retry timer and stops its port;
        nothing is sent after.
        """
        reactor = FakeUDPReactor()
        d = udp_request(reactor, "192.0.2.10", 50007, b"hi", timeout=1.0, retries=3)  # type: ignore[arg-type]
        self.assertEqual(len(reactor.transport.sent), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertTrue(reactor.stopped)
        reactor.advance(10)
        self.assertEqual(len(reactor.transport.sent), 1)

    def test_cancel_stream_aborts_and_stops_the_timer(self) -> None:
        """
        Cancelling a session's done aborts its transport and cancels its
        reply timer.
        """
        clock = Clock()
        session = StreamSession(lambda data: None, clock, reply_timeout=5)
        transport = StringTransport()
        session.makeConnection(transport)
        session.write(b"hi")
        session.finish()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        session.done.cancel()
        self.failureResultOf(session.done, CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reply_timeout_counts_only_unpaused_silence(self) -> None:
        """
        After the input ends, the reply timeout runs while the session
        reads, restarts with each piece of reply, stops while paused, and
        then fails done with ReplyTimeoutError and aborts.
        """
        clock = Clock()
        session = StreamSession(lambda data: None, clock, reply_timeout=5)
        transport = HalfClosing()
        session.makeConnection(transport)
        session.write(b"hi")
        session.finish()
        self.assertTrue(transport.write_closed)
        clock.advance(4)
        session.dataReceived(b"H")
        clock.advance(4)
        session.pauseProducing()
        clock.advance(100)
        self.assertNoResult(session.done)
        session.resumeProducing()
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
        session.connectionLost(Failure(ConnectionAborted()))
        self.failureResultOf(session.done, ReplyTimeoutError)


class HalfClosing(StringTransport):
    """A StringTransport that can half-close, as TCP can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class FakeUDPReactor(Clock):
    """A clock whose listenUDP connects the protocol to a FakeTransport."""

    def __init__(self) -> None:
        super().__init__()
        self.transport = FakeTransport()
        self.stopped = False

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:  # noqa: N803
        protocol.makeConnection(self.transport)
        return self

    def stopListening(self) -> None:
        self.stopped = True


class InMemoryTests(SynchronousTestCase):
    """
    The client and capserv's server together in memory (twisted.test.iosim).
    """

    def test_tcp_request_fires_under_iosim(self) -> None:
        """
        With half_close=False, tcp_request's Deferred fires with the whole
        reply over iosim's transports, which cannot half-close.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
        from twisted.internet.testing import MemoryReactorClock
        from twisted.test.iosim import ConnectionCompleter

        from capserv import UppercaseFactory

        reactor = MemoryReactorClock()
        TCP4ServerEndpoint(reactor, 50007).listen(UppercaseFactory(clock=reactor))
        reply = tcp_request(TCP4ClientEndpoint(reactor, "h", 50007), "ß x".encode(), clock=reactor, half_close=False)
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        self.assertEqual(self.successResultOf(reply), b"SS X")

    def test_documented_example_passes(self) -> None:
        """
        docs/examples/test_client_in_memory.py, the client page's in-memory
        testing example, runs and passes.
        """
        import importlib.util
        import os
        import unittest

        path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "test_client_in_memory.py")
        spec = importlib.util.spec_from_file_location("test_client_in_memory_example", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(module.InMemoryTests).run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (1, [], []))


class ErrorsTests(SynchronousTestCase):
    """The client's errors share one base class."""

    def test_one_base_class(self) -> None:
        """Every error the client API and command raise is a CapservClientError."""
        import capserv.client
        from capserv.client.command import ClientError

        errors = [v for v in vars(capserv.client).values() if isinstance(v, type) and issubclass(v, Exception)]
        self.assertGreaterEqual(len(errors), 6)
        for error in [*errors, ClientError]:
            self.assertTrue(issubclass(error, capserv.client.CapservClientError), error)
        self.assertIn("CapservClientError", capserv.client.__all__)
