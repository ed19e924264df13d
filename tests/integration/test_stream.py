"""
Tests for `capserv.client.stream`: `StreamSession`, `open_stream` and
`tcp_request`, in memory (a fake clock, ``twisted.test.iosim``) and against
servers on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, error
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError, ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv.client import CapservClientError, ReplyTimeoutError, StreamSession, open_stream, tcp_request

from ..support.client import closed_all, listen_silent, sleep, until
from ..support.loopback import in_thread, listen_tcp, stop_tcp

pytestmark = pytest.mark.timeout(180)


class CancelTests(SynchronousTestCase):
    """
    Cancelling what the client API returns closes what it opened and
    leaves no timer, on a fake clock.
    """

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


class ArgumentTests(SynchronousTestCase):
    """A bad argument is a ValueError at the call, naming it, before anything connects."""

    def test_bad_timeouts(self) -> None:
        """A timeout that is not a finite number of seconds above 0 names its parameter."""
        reactor = MemoryReactorClock()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", 1)
        calls = {
            "timeout": lambda value: tcp_request(endpoint, b"x", reactor, timeout=value),
            "idle_timeout": lambda value: tcp_request(endpoint, b"x", reactor, idle_timeout=value),
            "reply_timeout": lambda value: open_stream(endpoint, print, reactor, reply_timeout=value),
        }
        for name, call in calls.items():
            for value in (-1, 0, float("nan"), float("inf"), "1"):
                with self.assertRaises(ValueError, msg=(name, value)) as caught:
                    call(value)
                self.assertTrue(str(caught.exception).startswith(f"{name} must be a number of seconds more than 0"))
        self.assertEqual(reactor.tcpClients, [])


class HalfClosing(StringTransport):
    """A StringTransport that can half-close, as TCP can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


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
        import unittest

        path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "test_client_in_memory.py")
        spec = importlib.util.spec_from_file_location("test_client_in_memory_example", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(module.InMemoryTests).run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (1, [], []))


@pytest_twisted.inlineCallbacks
def test_api_tcp_request_and_stream() -> Any:
    """
    tcp_request returns the whole reply, and a streaming session delivers each piece as
    it arrives and fires done after finish.
    """
    from twisted.internet import reactor

    factory, port = yield listen_tcp("127.0.0.1")
    try:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        reply = yield tcp_request(endpoint, "api straße".encode())
        assert reply == b"API STRASSE"
        received: list[bytes] = []
        session = yield open_stream(endpoint, received.append)
        session.write(b"part one, ")
        while b"".join(received) != b"PART ONE, ":  # arrives before the input ends
            yield sleep(0.01)
        session.write(b"part two")
        session.finish()
        yield session.done
        assert b"".join(received) == b"PART ONE, PART TWO"
    finally:
        yield stop_tcp(factory, port)


@pytest.mark.parametrize("how", ["cancel", "addTimeout", "timeout"])
@pytest_twisted.inlineCallbacks
def test_api_cancel_or_timeout_closes_the_connection(how: str) -> Any:
    """
    tcp_request's Deferred cancelled, timed out with addTimeout, or given
    its own timeout fails and closes the connection: the server sees it
    close.
    """
    from twisted.internet import reactor

    factory, port = listen_silent()
    try:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        d = tcp_request(endpoint, b"hello", timeout=0.2 if how == "timeout" else None)
        if how == "addTimeout":
            d.addTimeout(0.2, reactor)
        assert (yield until(lambda: factory.opened))
        if how == "cancel":
            d.cancel()
        failures: list[Any] = []
        yield d.addErrback(failures.append)
        expected = {"cancel": defer.CancelledError, "addTimeout": defer.TimeoutError, "timeout": ReplyTimeoutError}[how]
        assert failures and failures[0].check(expected), failures
        assert (yield until(lambda: closed_all(factory))), "the server never saw the connection close"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_api_cancel_while_connecting_and_streams() -> Any:
    """
    Cancelling open_stream's session (its done Deferred) aborts the
    connection; cancelling before the connection is made leaves nothing
    open.
    """
    from twisted.internet import reactor

    factory, port = listen_silent()
    try:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        session = yield open_stream(endpoint, lambda data: None)
        session.write(b"part")
        assert (yield until(lambda: factory.opened))
        session.done.cancel()
        with pytest.raises(defer.CancelledError):
            yield session.done
        assert (yield until(lambda: closed_all(factory)))
        early = tcp_request(endpoint, b"x")
        early.cancel()
        with pytest.raises((defer.CancelledError, ConnectingCancelledError)):
            yield early
        yield sleep(0.1)
        assert len(factory.opened) == len(factory.closed)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_asyncio_cancellation_closes_the_connection() -> Any:
    """
    Under the asyncio reactor, asyncio.wait_for on ``d.asFuture(loop)``
    times out, and the cancellation it sends closes the connection.
    """
    import asyncio

    from twisted.internet import reactor

    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        pytest.skip("needs the asyncio reactor (pytest --reactor=asyncio)")
    factory, port = listen_silent()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

    async def ask() -> str:
        try:
            await asyncio.wait_for(tcp_request(endpoint, b"hello").asFuture(loop), 0.3)
        except asyncio.TimeoutError:
            return "timed out"
        return "answered"

    try:
        outcome = yield defer.Deferred.fromFuture(loop.create_task(ask()))
        assert outcome == "timed out"
        assert (yield until(lambda: closed_all(factory))), "the server never saw the connection close"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_documented_asyncio_example_runs() -> Any:
    """docs/examples/client_asyncio.py, the client page's asyncio example, works."""
    factory, port = yield listen_tcp("127.0.0.1")
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "client_asyncio.py"
    try:
        result = yield in_thread(
            lambda: subprocess.run(
                [sys.executable, str(example), str(port.getHost().port)], capture_output=True, text=True, timeout=60
            )
        )
    finally:
        yield stop_tcp(factory, port)
    assert (result.returncode, result.stdout) == (0, "b'FROM ASYNCIO'\nb'IN TIME'\n"), result.stderr


@pytest_twisted.inlineCallbacks
def test_connection_errors_are_twisteds() -> Any:
    """The endpoint's connection error passes through as Twisted's own, as
    docs/client.rst says: a refused connection is ConnectionRefusedError."""
    from twisted.internet import reactor

    factory, port = yield listen_tcp("127.0.0.1")
    number = port.getHost().port
    yield stop_tcp(factory, port)
    failures: list[Failure] = []
    yield tcp_request(endpoints.HostnameEndpoint(reactor, "127.0.0.1", number), b"x").addErrback(failures.append)
    assert failures[0].check(error.ConnectionRefusedError) and not failures[0].check(CapservClientError), failures
