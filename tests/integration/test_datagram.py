"""
Tests for `capserv.client.datagram`: the UDP request state machine in
memory (a fake clock and datagram transport: retry timing, source
matching, giving up, replies too long to be whole), and `udp_request`
against servers on loopback.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from capserv.client import MessageTooLongError, NoReplyError, udp_request
from capserv.client.datagram import MAX_UDP_REPLY, ReplyTooLongError, _UDPRequest, max_udp_message

from ..support.client import WHOLE, LossyServer, listen_lossy, sleep, until
from ..support.loopback import listen_udp

pytestmark = pytest.mark.timeout(180)


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


class CancelTests(SynchronousTestCase):
    """Cancelling udp_request closes what it opened and leaves no timer, on a fake clock."""

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


class ArgumentTests(SynchronousTestCase):
    """A bad argument is a ValueError at the call, naming it, before anything is sent."""

    def test_bad_timeout_or_retries(self) -> None:
        reactor = FakeUDPReactor()
        for kwargs, says in [
            *(({"timeout": v}, "timeout must be a number of seconds more than 0; not") for v in (-1, 0, float("nan"))),
            ({"timeout": None}, "timeout must be a number of seconds more than 0; not None"),
            ({"retries": -1}, "retries must be a whole number >= 0"),
            ({"retries": 1.5}, "retries must be a whole number >= 0"),
        ]:
            with self.assertRaises(ValueError, msg=kwargs) as caught:
                udp_request(reactor, "192.0.2.10", 50007, b"hi", **kwargs)  # type: ignore[arg-type]
            self.assertIn(says, str(caught.exception))
        self.assertEqual(reactor.transport.sent, [])


@pytest_twisted.inlineCallbacks
def test_api_udp_request() -> Any:
    """
    udp_request returns the reply, and fails with NoReplyError after its tries against a
    silent server, having sent each try.
    """
    from twisted.internet import reactor

    _proto, port = listen_udp("127.0.0.1")
    server = LossyServer(drop=10**6)
    silent = listen_lossy(server)
    try:
        reply = yield udp_request(reactor, "127.0.0.1", port.getHost().port, b"api udp")
        assert reply == b"API UDP"
        with pytest.raises(NoReplyError):
            yield udp_request(reactor, "127.0.0.1", silent.getHost().port, b"x", timeout=0.1, retries=1)
        assert len(server.seen) == 2
    finally:
        yield port.stopListening()
        yield silent.stopListening()


@pytest_twisted.inlineCallbacks
def test_api_cancel_udp_request_stops_retrying() -> Any:
    """
    Cancelling udp_request stops its retries and closes its port: the
    silent server sees one datagram, however long one waits after, and no
    retry timer fires into the closed port (which logs an error).
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    errors: list[Any] = []

    def observe(event: Any) -> None:
        if "log_failure" in event:
            errors.append(event["log_failure"])

    server = LossyServer(drop=10**6)
    silent = listen_lossy(server)
    globalLogPublisher.addObserver(observe)
    try:
        d = udp_request(reactor, "127.0.0.1", silent.getHost().port, b"x", timeout=0.05, retries=5)
        assert (yield until(lambda: server.seen))
        d.cancel()
        with pytest.raises(defer.CancelledError):
            yield d
        yield sleep(0.3)
        assert len(server.seen) == 1
        assert errors == []
    finally:
        globalLogPublisher.removeObserver(observe)
        yield silent.stopListening()


@pytest.mark.parametrize("host, size", WHOLE)
@pytest_twisted.inlineCallbacks
def test_api_reads_the_largest_udp_reply_whole(host: str, size: int) -> Any:
    """udp_request fires with the whole reply at the largest datagram size
    (it used to fire with 8,192 bytes)."""
    from twisted.internet import reactor

    _proto, port = listen_udp(host)
    try:
        reply = yield udp_request(reactor, host, port.getHost().port, b"y" * size)
        assert reply == b"Y" * size
    finally:
        yield port.stopListening()


@pytest.mark.parametrize("host, size", WHOLE)
@pytest_twisted.inlineCallbacks
def test_message_too_long_for_a_datagram_is_refused(host: str, size: int) -> Any:
    """One byte more than a datagram carries to the address: udp_request
    fails with MessageTooLongError, and nothing is sent."""
    from twisted.internet import reactor

    proto, port = listen_udp(host)
    try:
        with pytest.raises(MessageTooLongError):
            yield udp_request(reactor, host, port.getHost().port, b"z" * (size + 1))
        assert proto.stats.datagrams_in == 0
    finally:
        yield port.stopListening()
