"""
Fault injection in memory: transports that fail, clocks that jump, and
connections lost at every step of a TCP connection's life.

`ModelTransport` behaves like Twisted's TCP transport where it matters to
capserv: it buffers what is written, pauses its registered producer past
``bufferSize`` and resumes it once drained, closes only when its buffer is
empty and no producer is registered, and reports `connectionLost` the way the
reactor does (later, from the event loop).  A hypothesis state machine then
drives a factory's connections through any order of events -- data in any
pieces, the peer reading or not, half-close, resets, writes that raise, clock
jumps forwards and backwards, a graceful stop -- and checks after every step
that the factory's books balance, that every byte written is the right
uppercase, and at the end that every connection closes and no timer is left.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseDatagramProtocol, UppercaseFactory, UppercaseProtocol
from capserv.native import NativeConnections, NativeTransport

from ..support.contract import reference
from ..support.fake_loop import FakeLoop, FakeLoopTransport


class WriteFailedError(OSError):
    """What a failing transport raises from write()."""


class ModelTransport(StringTransport):
    """
    A StringTransport that acts like Twisted's TCP transport towards its
    protocol: flow control, close-after-flush, abort, and connection loss
    reported from the event loop (`ModelTransport.turn`).
    """

    def __init__(self, address: IPv4Address, clock: Clock) -> None:
        super().__init__(peerAddress=address)
        self.clock = clock
        self.bufferSize = 65536
        #: Written but not yet taken by the peer.
        self.owed = 0
        self.producerPaused = False
        self.lostWith: Failure | None = None
        self.pendingLoss: Failure | None = None
        self.writesAfterLoss = 0
        self.failWrites = False
        self.protocol: object = None

    def write(self, data: bytes) -> None:
        if self.lostWith is not None:
            self.writesAfterLoss += 1
            return
        if self.failWrites:
            raise WriteFailedError(errno.EPIPE, "write failed (injected)")
        super().write(data)
        self.owed += len(data)
        if self.producer is not None and self.streaming and self.owed > self.bufferSize and not self.producerPaused:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def peerReads(self, amount: int) -> None:
        """The peer takes ``amount`` bytes of what it is owed."""
        self.owed = max(0, self.owed - amount)
        if self.owed == 0:
            if self.producer is not None and self.producerPaused:
                self.producerPaused = False
                self.producer.resumeProducing()
            self._maybeClose()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.producerPaused = False
        self._maybeClose()

    def loseConnection(self) -> None:
        super().loseConnection()
        self._maybeClose()

    def _maybeClose(self) -> None:
        if self.disconnecting and self.owed == 0 and self.producer is None and self.pendingLoss is None:
            self.pendingLoss = Failure(ConnectionDone())

    def abortConnection(self) -> None:
        self.disconnecting = True
        if self.pendingLoss is None or self.pendingLoss.check(ConnectionDone):
            self.pendingLoss = Failure(ConnectionAborted())

    def reset(self) -> None:
        """The peer resets the connection (or the network drops it)."""
        if self.pendingLoss is None:
            self.pendingLoss = Failure(ConnectionLost("Connection reset by peer (injected)"))

    @property
    def reading(self) -> bool:
        return self.producerState != "paused"

    def turn(self) -> bool:
        """One event-loop turn: report a pending loss.  Whether it did."""
        if self.pendingLoss is None or self.lostWith is not None:
            return False
        self.lostWith = self.pendingLoss
        self.protocol.connectionLost(self.pendingLoss)  # type: ignore[attr-defined]
        return True


class Peer:
    """What the test knows of one connection: what went in and out."""

    def __init__(self, protocol: object, transport: ModelTransport, host: str, admitted: bool) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.admitted = admitted
        self.sent = b""
        self.halfClosed = False
        self.writeFailed = False

    @property
    def lost(self) -> bool:
        return self.transport.lostWith is not None


HOSTS = ["192.0.2.1", "192.0.2.2", "198.51.100.7"]
CHUNKS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        ["straße".encode(), "ǆ ΐ ☃".encode(), "ﬃ".encode()[:2], b"\xff\xfe", b"x" * 70000, bytes(range(256)) * 520]
    ),
)


class ConnectionLife(RuleBasedStateMachine):
    """Any order of events on a factory's connections; the books must balance."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.peers: list[Peer] = []
        self.drains: list[Deferred[None]] = []
        self.drainFired: list[list[bool]] = []
        self.jumpedBack = 0.0
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)

    @rule(
        idle=st.sampled_from([1.0, 30.0]),
        grace=st.sampled_from([0.0, 2.0]),
        high_water=st.sampled_from([16, 65536]),
        limit=st.sampled_from([0, 2]),
        per_ip=st.sampled_from([0, 1]),
    )
    @precondition(lambda self: not hasattr(self, "factory"))
    def configure(self, idle: float, grace: float, high_water: int, limit: int, per_ip: int) -> None:
        config = CapservConfig(
            idle_timeout=idle,
            abort_grace=grace,
            high_water=high_water,
            max_connections=limit,
            max_connections_per_ip=per_ip,
            shutdown_timeout=3.0,
        )
        self.factory = UppercaseFactory(config, clock=self.clock)

    def _ready(self) -> bool:
        return hasattr(self, "factory")

    def _open(self) -> list[Peer]:
        return [p for p in self.peers if not p.lost]

    @rule(host=st.sampled_from(HOSTS), port=st.integers(1024, 65535))
    @precondition(lambda self: hasattr(self, "factory") and len(self.peers) < 6)
    def connect(self, host: str, port: int) -> None:
        address = IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(address)
        transport = ModelTransport(address, self.clock)
        transport.protocol = protocol
        protocol.makeConnection(transport)  # type: ignore[union-attr]
        admitted = isinstance(protocol, UppercaseProtocol) and protocol in self.factory.connections
        self.peers.append(Peer(protocol, transport, host, admitted))

    def _pick(self, index: int) -> Peer | None:
        open_ = self._open()
        return open_[index % len(open_)] if open_ else None

    @rule(index=st.integers(0, 5), data=CHUNKS)
    @precondition(lambda self: hasattr(self, "factory"))
    def send(self, index: int, data: bytes) -> None:
        peer = self._pick(index)
        if peer is None or peer.halfClosed or not peer.transport.reading or peer.transport.disconnecting:
            return  # the reactor delivers nothing to a paused or closing transport
        peer.sent += data
        self._deliver(peer, lambda: peer.protocol.dataReceived(data))  # type: ignore[attr-defined]

    def _deliver(self, peer: Peer, event: object) -> None:
        """Run an event as the reactor does: an exception loses the connection."""
        try:
            event()  # type: ignore[operator]
        except WriteFailedError as e:
            peer.writeFailed = True
            peer.transport.lostWith = Failure(e)
            peer.protocol.connectionLost(Failure(e))  # type: ignore[attr-defined]

    @rule(index=st.integers(0, 5))
    @precondition(lambda self: hasattr(self, "factory"))
    def half_close(self, index: int) -> None:
        peer = self._pick(index)
        if peer is None or peer.halfClosed or peer.transport.disconnecting:
            return
        peer.halfClosed = True
        self._deliver(peer, peer.protocol.readConnectionLost)  # type: ignore[attr-defined]

    @rule(index=st.integers(0, 5), amount=st.sampled_from([1, 100, 10**9]))
    @precondition(lambda self: hasattr(self, "factory"))
    def peer_reads(self, index: int, amount: int) -> None:
        peer = self._pick(index)
        if peer is not None:
            peer.transport.peerReads(amount)

    @rule(index=st.integers(0, 5))
    @precondition(lambda self: hasattr(self, "factory"))
    def reset(self, index: int) -> None:
        peer = self._pick(index)
        if peer is not None:
            peer.transport.reset()

    @rule(index=st.integers(0, 5))
    @precondition(lambda self: hasattr(self, "factory"))
    def fail_writes(self, index: int) -> None:
        peer = self._pick(index)
        if peer is not None:
            peer.transport.failWrites = True

    @rule(index=st.integers(0, 5))
    @precondition(lambda self: hasattr(self, "factory"))
    def write_side_lost(self, index: int) -> None:
        peer = self._pick(index)
        if peer is not None and isinstance(peer.protocol, UppercaseProtocol):
            peer.protocol.writeConnectionLost()

    @rule()
    @precondition(lambda self: hasattr(self, "factory"))
    def event_loop_turn(self) -> None:
        for peer in list(self.peers):
            peer.transport.turn()

    @rule(amount=st.sampled_from([0.05, 0.5, 1.0, 3.0, 7.5, 45.0, 86400.0]))
    @precondition(lambda self: hasattr(self, "factory"))
    def clock_forward(self, amount: float) -> None:
        self.clock.advance(amount)

    @rule(amount=st.sampled_from([0.5, 60.0, 3600.0]))
    @precondition(lambda self: hasattr(self, "factory"))
    def clock_back(self, amount: float) -> None:
        # A wall clock stepped back (Twisted's default reactor times calls
        # by time.time()).
        self.clock.advance(-amount)
        self.jumpedBack += amount

    @rule(timeout=st.sampled_from([0.0, 3.0, None]))
    @precondition(lambda self: hasattr(self, "factory") and len(self.drains) < 2)
    def graceful_stop(self, timeout: float | None) -> None:
        d = self.factory.drain(timeout)
        fired = [False]
        self.drainFired.append(fired)
        d.addCallback(lambda _: fired.__setitem__(0, True))
        self.drains.append(d)

    # -- what must hold after every step -------------------------------------

    @invariant()
    def books_balance(self) -> None:
        if not self._ready():
            return
        live = [p for p in self.peers if p.admitted and not p.lost]
        assert self.factory.connections == {p.protocol for p in live}
        expected = Counter(self.factory.networks.network(p.host) for p in live)
        assert dict(self.factory.limits.held) == dict(expected)
        limit = self.factory.config.max_connections
        if limit:
            assert len(self.factory.connections) <= limit
        per_ip = self.factory.config.max_connections_per_ip
        if per_ip:
            assert max(expected.values(), default=0) <= per_ip

    @invariant()
    def replies_are_the_uppercase(self) -> None:
        for peer in self.peers:
            if not peer.admitted:
                assert peer.transport.value() == b""
                continue
            out = peer.transport.value()
            want = reference(peer.sent)
            assert want.startswith(out), (peer.sent[:80], out[:80])
            if peer.halfClosed and not peer.writeFailed and not peer.lost and peer.transport.lostWith is None:
                # After end of input everything owed has been written.
                assert out == want
            assert peer.transport.writesAfterLoss == 0

    @invariant()
    def drains_fire_when_all_gone(self) -> None:
        if not self._ready():
            return
        for fired in self.drainFired:
            assert fired[0] == (not self.factory.connections)

    @invariant()
    def durations_never_negative(self) -> None:
        for event in self.events:
            if "duration" in event:
                assert event["duration"] >= 0, event

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self.events.append)
        if not self._ready():
            return
        # The peers go away without reading; every connection must still end
        # (idle timeout, then abort after the grace) and no timer be left.
        config = self.factory.config
        deadline = self.clock.seconds() + self.jumpedBack + 3 * config.idle_timeout + config.abort_grace + 10
        for _ in range(10_000):
            for peer in self.peers:
                peer.transport.turn()
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            due = min(call.getTime() for call in calls)
            assert due <= deadline, "a timer is set past any timeout capserv has"
            self.clock.advance(max(0.0, due - self.clock.seconds()))
        for peer in self.peers:
            peer.transport.turn()
        assert not self.factory.connections
        assert not self.factory.limits.held
        assert [p for p in self.peers if not p.lost] == []
        assert self.clock.getDelayedCalls() == []
        for fired in self.drainFired:
            assert fired[0]


def machine_settings(examples: int) -> settings:
    """Hypothesis settings for a connection-life state machine: ``examples`` runs of up to 40 steps."""
    return settings(
        max_examples=examples,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class ConnectionLifeTests(SynchronousTestCase):
    """
    The state machine, as a trial test case so that either runner runs it.
    """

    def test_connection_life(self) -> None:
        """
        Any order of data, half-close, resets, raising writes, clock jumps and
        a graceful stop keeps the factory's books balanced and every byte
        written the right uppercase, and ends with every connection closed
        and no timer left.
        """
        run_state_machine_as_test(
            ConnectionLife,
            settings=machine_settings(300),
        )


# -- the same life through capserv.native's adapter ---------------------------


class LoopTransportModel(FakeLoopTransport):
    """
    An asyncio transport as the event loops behave towards their protocol
    (here `capserv.native.NativeTransport`): writes buffer until the peer
    reads, ``pause_writing`` past the high-water mark and ``resume_writing``
    at the low one, ``close`` once the buffer is sent, ``abort`` at once, a
    send error reported as a loss (not raised), and ``connection_lost`` on a
    later turn of the loop (`turn`).
    """

    def __init__(self, address: IPv4Address) -> None:
        super().__init__(peername=(address.host, address.port), sockname=None)
        self.protocol: Any = None
        self.owed = 0
        self.writing_paused = False
        self.closing = False
        self.failWrites = False
        self.pendingLoss: list[Exception | None] | None = None
        self.lostWith: object = None
        self.writesAfterLoss = 0
        self.writesAfterEOF = 0
        self.peer: Peer | None = None
        self.loop: FakeLoop | None = None

    def write(self, data: bytes) -> None:
        if self.lostWith is not None:
            self.writesAfterLoss += 1
            return
        if self.eof:
            self.writesAfterEOF += 1
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.failWrites:
            # The loop reports a failed send as a loss, later; the bytes are gone.
            if self.peer is not None:
                self.peer.writeFailed = True  # not raised: the test must know
            self._lose(BrokenPipeError(errno.EPIPE, "write failed (injected)"))
            return
        self.written.append(data)
        self.owed += len(data)
        if self.owed > self.limits[1] and not self.writing_paused:
            self.writing_paused = True
            self.protocol.pause_writing()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.reading = False
            self._maybe_lost()

    def abort(self) -> None:
        self.closing = True
        self.reading = False
        self.owed = 0
        self._lose(None)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.owed

    # what the test does
    @property
    def disconnecting(self) -> bool:
        return self.closing or self.pendingLoss is not None

    def peerReads(self, amount: int) -> None:
        self.owed = max(0, self.owed - amount)
        if self.writing_paused and self.owed <= self.limits[0] and self.lostWith is None:
            self.writing_paused = False
            self.protocol.resume_writing()
        self._maybe_lost()

    def reset(self) -> None:
        self._lose(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)"))

    def _maybe_lost(self) -> None:
        if self.closing and self.owed == 0:
            self._lose(None)

    def _lose(self, error: Exception | None) -> None:
        if self.pendingLoss is None:
            self.pendingLoss = [error]

    def turn(self) -> bool:
        """
        One turn of the event loop: run what was scheduled for it (the rest
        of a large read), then report a pending loss.  Whether it did.
        """
        if self.loop is not None:
            self.loop.run()
        if self.pendingLoss is None or self.lostWith is not None:
            return False
        (error,) = self.pendingLoss
        self.lostWith = error if error is not None else "clean"
        self.protocol.connection_lost(error)
        return True


class NativeConnectionLife(ConnectionLife):
    """
    The same events and the same books, with every connection served
    through `capserv.native`'s adapter over an event-loop transport model:
    the adapter must keep capserv's protocol whole (and close every
    connection, with or without an abort timer), handing on a read larger
    than 64 KiB a slice a turn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = FakeLoop()

    @rule(host=st.sampled_from(HOSTS), port=st.integers(1024, 65535))
    @precondition(lambda self: hasattr(self, "factory") and len(self.peers) < 6)
    def connect(self, host: str, port: int) -> None:
        address = IPv4Address("TCP", host, port)
        adapter = NativeTransport(NativeConnections(self.factory, socket.AF_INET, self.loop))  # type: ignore[arg-type]
        transport = LoopTransportModel(address)
        transport.loop = self.loop
        transport.protocol = adapter
        adapter.connection_made(transport)  # type: ignore[arg-type]
        protocol = adapter._protocol
        admitted = isinstance(protocol, UppercaseProtocol) and protocol in self.factory.connections
        peer = Peer(protocol, transport, host, admitted)  # type: ignore[arg-type]
        peer.adapter = adapter  # type: ignore[attr-defined]
        transport.peer = peer
        self.peers.append(peer)

    @rule(index=st.integers(0, 5), data=CHUNKS)
    @precondition(lambda self: hasattr(self, "factory"))
    def send(self, index: int, data: bytes) -> None:
        peer = self._pick(index)
        if peer is None or peer.halfClosed or not peer.transport.reading or peer.transport.disconnecting:
            return  # the loop delivers nothing to a paused or closing transport
        peer.sent += data
        peer.adapter.data_received(data)  # type: ignore[attr-defined]

    @rule(index=st.integers(0, 5))
    @precondition(lambda self: hasattr(self, "factory"))
    def half_close(self, index: int) -> None:
        peer = self._pick(index)
        if peer is None or peer.halfClosed or peer.transport.disconnecting or not peer.transport.reading:
            return  # a paused transport does not see the end of input yet
        peer.halfClosed = True
        if not peer.adapter.eof_received():  # type: ignore[attr-defined]
            peer.transport.close()  # what the loop does when told not to keep it open

    @invariant()
    def no_write_after_eof(self) -> None:
        for peer in self.peers:
            assert peer.transport.writesAfterEOF == 0  # type: ignore[attr-defined]


class NativeConnectionLifeTests(SynchronousTestCase):
    """
    The native state machine, as a trial test case so that either runner
    runs it.
    """

    def test_native_connection_life(self) -> None:
        """
        Connections living through capserv.native's adapter over a model of
        the event loop's transport keep the same books: every byte
        right, nothing written after end of file, every connection closed
        and no timer left.
        """
        run_state_machine_as_test(
            NativeConnectionLife,
            settings=machine_settings(100),
        )


# -- the named steps, one test each, so a failure says where -----------------


class Connection:
    def __init__(self, **config: object) -> None:
        self.clock = Clock()
        self.factory = UppercaseFactory(CapservConfig(**config), clock=self.clock)  # type: ignore[arg-type]
        address = IPv4Address("TCP", "192.0.2.9", 40000)
        self.protocol = self.factory.buildProtocol(address)
        self.transport = ModelTransport(address, self.clock)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)  # type: ignore[union-attr]

    def settle(self) -> None:
        self.transport.turn()
        assert not self.factory.connections
        assert self.clock.getDelayedCalls() == []


class NamedFaultTests(SynchronousTestCase):
    def test_lost_between_half_close_and_flush(self) -> None:
        """
        A connection reset after the client's half-close, while the reply backlog is
        still draining, is cleaned up: no connection and no timer left.
        """
        c = Connection(high_water=16)
        c.protocol.dataReceived(b"a" * 100)  # type: ignore[union-attr]
        self.assertTrue(c.transport.producerPaused)
        c.protocol.readConnectionLost()  # type: ignore[union-attr]
        self.assertFalse(c.transport.disconnecting)  # waiting for the backlog to drain
        c.transport.reset()
        c.settle()

    def test_lost_while_paused(self) -> None:
        """
        A connection reset while reading is paused by backpressure is cleaned up, and
        the pause was counted.
        """
        c = Connection(high_water=16)
        c.protocol.dataReceived(b"b" * 100)  # type: ignore[union-attr]
        self.assertFalse(c.transport.reading)
        c.transport.reset()
        c.settle()
        self.assertEqual(c.factory.stats.pauses, 1)

    def test_lost_during_shutdown_grace(self) -> None:
        """
        A connection reset while a graceful stop is closing it is cleaned up, and the
        drain completes.
        """
        c = Connection(abort_grace=5.0, shutdown_timeout=1.0)
        c.protocol.dataReceived(b"c" * 10)  # type: ignore[union-attr]
        done = c.factory.drain()
        c.clock.advance(1.0)  # time is up: closing, waiting for the peer
        self.assertTrue(c.transport.disconnecting)
        c.transport.reset()
        c.settle()
        self.assertTrue(done.called)

    def test_lost_after_abort_requested(self) -> None:
        """
        A connection aborted after its idle close went unanswered is cleaned up and
        counted as an abort.
        """
        c = Connection(idle_timeout=10.0, abort_grace=1.0)
        c.protocol.dataReceived(b"d" * 10)  # type: ignore[union-attr]
        c.clock.advance(12.0)  # idle: closing
        c.clock.advance(1.0)  # grace over: aborted
        self.assertTrue(c.transport.pendingLoss.check(ConnectionAborted))  # type: ignore[union-attr]
        c.settle()
        self.assertEqual(c.factory.stats.aborts, 1)

    def test_write_raising_loses_only_that_connection(self) -> None:
        """
        A transport whose write raises loses only its own connection; another connection
        keeps being served.
        """
        c = Connection()
        other = Connection()
        c.transport.failWrites = True
        with self.assertRaises(WriteFailedError):
            c.protocol.dataReceived(b"e")  # type: ignore[union-attr]
        c.transport.lostWith = Failure(WriteFailedError())
        c.protocol.connectionLost(c.transport.lostWith)  # type: ignore[union-attr]
        self.assertEqual(c.factory.connections, set())
        other.protocol.dataReceived(b"f")  # type: ignore[union-attr]
        self.assertEqual(other.transport.value(), b"F")

    def test_clock_jump_forward_closes_each_once(self) -> None:
        """
        A clock that jumps ten days forward closes an idle connection once, counted
        once, leaving no timer.
        """
        c = Connection(idle_timeout=5.0, abort_grace=1.0)
        c.clock.advance(10 * 86400)
        self.assertEqual(c.factory.stats.idle_timeouts, 1)
        c.transport.turn()
        self.assertEqual(c.factory.connections, set())
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_clock_jump_back_logs_no_negative_duration(self) -> None:
        """
        A clock that jumps an hour back makes the close log a duration of 0, never a
        negative one.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = Connection()
        c.clock.advance(-3600)
        c.protocol.readConnectionLost()  # type: ignore[union-attr]
        c.transport.turn()
        durations = [e["duration"] for e in events if "duration" in e]
        self.assertEqual(durations, [0.0])


#: Send errors a UDP socket can raise, from the kernel or from Twisted.
SEND_ERRORS = [
    OSError(errno.EAGAIN, "Resource temporarily unavailable"),
    OSError(errno.ENOBUFS, "No buffer space available"),
    OSError(errno.ECONNREFUSED, "Connection refused"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    OSError(errno.EPERM, "Operation not permitted"),
    MessageLengthError("message too long"),
]


class UDPSendFaultTests(SynchronousTestCase):
    """
    A datagram transport whose every send raises.
    """

    def test_udp_send_failures_are_counted_not_raised(self) -> None:
        """
        Each kind of send error (EAGAIN, ENOBUFS, ECONNREFUSED, EHOSTUNREACH,
        EPERM, a too-long message) on 1,000 datagrams is counted as a
        send_error drop each time and never raised to the reactor.
        """
        for error in SEND_ERRORS:
            self.assertSendErrorsCounted(error)

    def assertSendErrorsCounted(self, error: Exception) -> None:
        """Every send raising ``error``: each datagram is counted as a
        send_error drop, none as sent, and nothing is raised."""
        clock = Clock()
        protocol = UppercaseDatagramProtocol(CapservConfig(), clock=clock)

        class Failing:
            maxPacketSize = 65535

            def write(self, data: bytes, addr: object) -> None:
                raise error

        protocol.transport = Failing()  # type: ignore[assignment]
        protocol.startProtocol()
        for i in range(1000):
            protocol.datagramReceived(b"x", ("192.0.2.1", 40000 + i))
            clock.advance(0.01)
        self.assertEqual(protocol.stats.drops["send_error"], 1000, repr(error))
        self.assertEqual(protocol.stats.datagrams_out, 0, repr(error))
