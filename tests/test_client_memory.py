"""
In-memory tests for the client's UDP request state machine (Clock, a fake
datagram transport): retry timing, source matching, giving up.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from capserv.client import NoReplyError, _UDPRequest

SERVER = ("192.0.2.10", 50007)


class FakeTransport:
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
    def test_retries_on_timeout_then_gives_up(self) -> None:
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
        request, transport, clock, outcome = start()
        clock.advance(1.0)
        request.datagramReceived(b"HI", SERVER)
        self.assertEqual(outcome, [b"HI"])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(len(transport.sent), 2)

    def test_ignores_other_sources_and_extra_replies(self) -> None:
        request, _transport, _clock, outcome = start()
        request.datagramReceived(b"SPOOF", ("192.0.2.99", 50007))
        request.datagramReceived(b"SPOOF", ("192.0.2.10", 50008))
        self.assertEqual(outcome, [])
        request.datagramReceived(b"HI", ("::ffff:192.0.2.10", 50007))
        request.datagramReceived(b"HI AGAIN", SERVER)
        self.assertEqual(outcome, [b"HI"])
