"""
Tests for `capserv.native`: Twisted protocols served by the asyncio event
loop's own transports.

Two kinds, and every test runs whatever reactor pytest was given:

- in memory: the adapter between a fake event-loop transport and capserv's
  unchanged protocol, with a `Clock`;
- on real loopback sockets, each test on an event loop of its own (asyncio's
  and uvloop's, both every run) under a Twisted asyncio reactor that is
  built for the test and not installed, so the native path is tested even
  when pytest runs Twisted's epoll reactor.  The shared loopback suite
  (tests/support/loopback.py) runs over the native path too, on the asyncio
  reactor.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import pytest_twisted
import uvloop
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    InvalidAddressError,
)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    ISystemHandle,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from capserv import CapservConfig, UppercaseFactory
from capserv.endpoints.native import native_endpoint
from capserv.native import (
    NativeConnections,
    NativeSocketEndpoint,
    NativeTransport,
    listen_datagrams,
    native_datagrams_supported,
    native_supported,
)
from capserv.native._port import _run_now

from ..support.fake_loop import FakeLoop, FakeLoopTransport
from ..support.loopback import HOSTS, udp_exchange

# -- in memory -----------------------------------------------------------------


def connect(
    factory: Any, family: int = socket.AF_INET, transport: FakeLoopTransport | None = None
) -> tuple[NativeTransport, FakeLoopTransport, FakeLoop]:
    loop = FakeLoop()
    adapter = NativeTransport(NativeConnections(factory, family, loop))  # type: ignore[arg-type]
    transport = transport if transport is not None else FakeLoopTransport()
    adapter.connection_made(transport)  # type: ignore[arg-type]
    return adapter, transport, loop


def capserv_factory(**config: Any) -> UppercaseFactory:
    return UppercaseFactory(CapservConfig(**config), clock=Clock())


class Recorder(Protocol):
    """A Twisted protocol that records what happens to it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reasons: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reasons.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    """A `Recorder` that accepts half-close."""

    read_lost = 0
    write_lost = 0

    def readConnectionLost(self) -> None:
        self.read_lost += 1

    def writeConnectionLost(self) -> None:
        self.write_lost += 1


def test_memory_uppercase_round_trip_with_a_split_character() -> None:
    """capserv's protocol, unchanged, is served: a character split across reads comes back whole."""
    factory = capserv_factory()
    adapter, tr, _ = connect(factory)
    eszett = "ß".encode()
    adapter.data_received(b"stra" + eszett[:1])
    adapter.data_received(eszett[1:] + b"e")
    assert tr.value() == b"STRASSE"
    assert factory.connections and factory.stats.connections_total == 1


def test_memory_half_close_sends_the_rest_then_closes() -> None:
    """
    End of input is readConnectionLost; the loop is told to keep the write side; the reply tail is sent before
    the close.
    """
    factory = capserv_factory()
    adapter, tr, _ = connect(factory)
    adapter.data_received(b"hi " + "ß".encode()[:1])
    assert adapter.eof_received() is True
    assert tr.value() == b"HI " + "ß".encode()[:1]  # the partial character is flushed unchanged
    # After the peer's end nothing is left unread, so close() alone sends the end (no shutdown call first).
    assert tr.closed and not tr.eof
    adapter.connection_lost(None)
    assert not factory.connections


def test_memory_eof_closes_a_protocol_that_is_not_half_closeable() -> None:
    """
    A protocol without IHalfCloseableProtocol is closed at end of input (eof_received returns False) with
    ConnectionDone.
    """
    proto = Recorder()
    adapter, _, _ = connect(Factory.forProtocol(lambda: proto))
    assert adapter.eof_received() is False
    adapter.connection_lost(None)
    assert proto.reasons[0].check(ConnectionDone)


def test_memory_refused_by_build_protocol() -> None:
    """buildProtocol returning None closes the connection at once, and its loss reaches no protocol."""

    class Refuse(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    adapter, tr, _ = connect(Refuse())
    assert tr.closed and not adapter.connected
    adapter.data_received(b"ignored")
    adapter.connection_lost(None)
    assert tr.written == []


def test_memory_peer_gone_before_the_handover_is_closed() -> None:
    """
    A connection reset before the loop hands it over (uvloop then gives no
    peer address) is aborted at once, building no protocol: otherwise the
    loop would keep its socket open for good.
    """
    factory = capserv_factory()
    adapter, tr, _ = connect(factory, socket.AF_INET, FakeLoopTransport(peername=None))
    assert tr.aborted and not adapter.connected
    assert factory.stats.connections_total == 0
    adapter.connection_lost(ConnectionResetError())


def test_memory_max_connections_refuses_the_one_over() -> None:
    """capserv's max_connections limit works through the adapter: the second connection is closed and counted."""
    factory = capserv_factory(max_connections=1)
    connect(factory)
    _, tr, _ = connect(factory)
    assert tr.closed
    assert factory.stats.connections_refused["max_connections"] == 1


def test_memory_backpressure_drives_the_producer_and_reading() -> None:
    """The loop's pause_writing pauses capserv's read throttle, which stops reading; resume_writing starts it again."""
    factory = capserv_factory(high_water=1000)
    adapter, tr, _ = connect(factory)
    assert adapter.bufferSize == 1000 and tr.limits == (250, 1000)  # capserv's high-water mark reaches the loop
    adapter.pause_writing()
    assert not tr.reading and factory.stats.pauses == 1
    adapter.resume_writing()
    assert tr.reading


def test_memory_a_large_read_is_handed_on_a_slice_a_turn() -> None:
    """
    A read larger than 64 KiB is handed to the protocol 64 KiB per turn of the loop, in order, with reading paused
    until the last slice; a read of 64 KiB or less is handed on at once.
    """
    recorder = Recorder()
    adapter, tr, loop = connect(Factory.forProtocol(lambda: recorder))
    adapter.data_received(b"s" * 65536)
    assert recorder.data == [b"s" * 65536] and tr.reading and not loop.calls
    data = bytes(range(256)) * 800  # 204,800 bytes: four slices
    adapter.data_received(data)
    assert [len(d) for d in recorder.data[1:]] == [65536] and not tr.reading
    for handed in (2, 3):
        loop.run()
        assert len(recorder.data) == 1 + handed and not tr.reading
    loop.run()
    assert b"".join(recorder.data[1:]) == data and not tr.reading
    loop.run()  # reading again on the turn after the last slice
    assert tr.reading and not loop.calls


def test_memory_slices_wait_while_the_protocol_has_paused_reading() -> None:
    """
    Bytes held from a large read are not handed on while the protocol has paused reading, and reading resumes only
    once the protocol has resumed and every held byte is handed on; a close drops what is held.
    """
    recorder = Recorder()
    adapter, tr, loop = connect(Factory.forProtocol(lambda: recorder))
    data = b"x" * 65536 + b"y" * 65536 + b"z" * 100
    adapter.data_received(data)
    adapter.pauseProducing()
    loop.run()
    assert recorder.data == [b"x" * 65536] and not tr.reading and not loop.calls
    adapter.resumeProducing()
    assert not tr.reading  # still held
    loop.run()
    assert recorder.data[-1] == b"y" * 65536 and not tr.reading
    adapter.pauseProducing()
    loop.run()
    adapter.resumeProducing()
    loop.run()
    assert b"".join(recorder.data) == data and not tr.reading
    loop.run()
    assert tr.reading
    # Closing while bytes are held: the rest is not handed on, reading stays off.
    adapter.data_received(data)
    adapter.loseConnection()
    loop.run()
    assert b"".join(recorder.data) == data + b"x" * 65536 and not tr.reading


def test_memory_clean_close_abort_and_error_reasons() -> None:
    """
    connectionLost gets ConnectionDone on a clean close, ConnectionAborted after abortConnection, ConnectionLost
    on an error.
    """
    reasons = []
    for how in ("clean", "abort", "error"):
        proto = Recorder()
        adapter, tr, _ = connect(Factory.forProtocol(lambda proto=proto: proto))  # type: ignore[misc]
        if how == "abort":
            adapter.abortConnection()
            assert tr.aborted and adapter.disconnecting
        adapter.connection_lost(ConnectionResetError(errno.ECONNRESET, "reset") if how == "error" else None)
        assert not adapter.connected
        reasons.append(proto.reasons[0])
    assert reasons[0].check(ConnectionDone)
    assert reasons[1].check(ConnectionAborted)
    assert reasons[2].check(ConnectionLost) and not reasons[2].check(ConnectionAborted)


def test_memory_protocol_error_is_logged_and_drops_the_connection() -> None:
    """
    A protocol that raises in dataReceived is aborted and gets the error as connectionLost's reason, as on
    Twisted's transports.
    """

    class Broken(Recorder):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("broken")

    proto = Broken()
    adapter, tr, _ = connect(Factory.forProtocol(lambda: proto))
    adapter.data_received(b"x")
    assert tr.aborted
    adapter.connection_lost(None)
    assert proto.reasons[0].check(ValueError)
    assert len(flush_logged_errors(ValueError)) == 1


def flush_logged_errors(kind: type[BaseException]) -> list[Failure]:
    """The failures of ``kind`` logged during this test."""
    return _logged.pop(kind, [])


_logged: dict[type[BaseException], list[Failure]] = {}


@pytest.fixture(autouse=True)
def _collect_failures() -> Iterator[None]:
    """Collect failures logged through twisted.logger during a test."""
    from twisted.logger import globalLogPublisher

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            _logged.setdefault(failure.type, []).append(failure)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
        _logged.clear()


def test_memory_writes_after_close_are_ignored() -> None:
    """
    Writes after loseConnection (or abortConnection) are dropped, never an asyncio error; loseConnection is
    idempotent.
    """
    proto = Recorder()
    adapter, tr, _ = connect(Factory.forProtocol(lambda: proto))
    adapter.write(b"a")
    adapter.writeSequence([b"b", b"c"])
    adapter.loseConnection()
    adapter.loseConnection()
    adapter.write(b"late")
    adapter.writeSequence([b"late"])
    assert tr.value() == b"abc" and tr.eof and tr.closed


def test_memory_lose_write_connection() -> None:
    """loseWriteConnection shuts the sending side (write_eof) and calls writeConnectionLost on the next loop turn."""
    proto = HalfRecorder()
    adapter, tr, loop = connect(Factory.forProtocol(lambda: proto))
    adapter.loseWriteConnection()
    assert tr.eof and not tr.closed
    assert proto.write_lost == 0
    loop.run()
    assert proto.write_lost == 1
    adapter.write(b"ignored")
    assert tr.written == []


def test_memory_producer_registration() -> None:
    """
    A second producer is refused; a producer registered after the connection is lost is stopped; loss stops the
    producer.
    """

    @implementer(IPushProducer)
    class Producer:
        stopped = paused = resumed = 0

        def pauseProducing(self) -> None:
            self.paused += 1

        def resumeProducing(self) -> None:
            self.resumed += 1

        def stopProducing(self) -> None:
            self.stopped += 1

    adapter, _, _ = connect(Factory.forProtocol(Recorder))
    first = Producer()
    adapter.registerProducer(first, True)
    with pytest.raises(RuntimeError):
        adapter.registerProducer(Producer(), True)
    adapter.pause_writing()
    adapter.resume_writing()
    assert (first.paused, first.resumed) == (1, 1)
    adapter.connection_lost(None)
    assert first.stopped == 1
    late = Producer()
    adapter.registerProducer(late, True)
    assert late.stopped == 1


def test_memory_pull_producer_is_asked_while_there_is_room() -> None:
    """
    A pull producer is asked for more on each loop turn while the buffer is under the mark, and again when it
    drains.
    """

    class Pull:
        asked = 0

        def resumeProducing(self) -> None:
            self.asked += 1

        def stopProducing(self) -> None:
            pass

    adapter, tr, loop = connect(Factory.forProtocol(Recorder))
    producer = Pull()
    adapter.registerProducer(producer, False)
    assert producer.asked == 1
    loop.run()
    assert producer.asked == 2
    tr.buffered = tr.limits[1]  # full: wait for resume_writing
    loop.run()
    assert producer.asked == 3 and not loop.calls
    tr.buffered = 0
    adapter.resume_writing()
    assert producer.asked == 4
    adapter.unregisterProducer()
    loop.run()
    assert producer.asked == 4


@pytest.mark.parametrize(
    "family, peername, sockname, peer, host",
    [
        (
            socket.AF_INET,
            ("192.0.2.1", 4000),
            ("127.0.0.1", 50007),
            IPv4Address("TCP", "192.0.2.1", 4000),
            IPv4Address("TCP", "127.0.0.1", 50007),
        ),
        (
            socket.AF_INET6,
            ("2001:db8::1", 4000, 0, 0),
            ("::1", 50007, 0, 0),
            IPv6Address("TCP", "2001:db8::1", 4000),
            IPv6Address("TCP", "::1", 50007),
        ),
        (socket.AF_UNIX, "", "/run/capserv.sock", UNIXAddress(None), UNIXAddress("/run/capserv.sock")),
    ],
)
def test_memory_addresses(family: int, peername: Any, sockname: Any, peer: Any, host: Any) -> None:
    """getPeer/getHost give Twisted's address types, and buildProtocol gets the peer's."""
    seen = []

    class Spy(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            seen.append(addr)
            return Recorder()

    adapter, _, _ = connect(Spy(), family, FakeLoopTransport(peername, sockname))
    assert adapter.getPeer() == peer
    assert adapter.getHost() == host
    # buildProtocol gets what Twisted's ports give it: for an unnamed UNIX
    # peer the empty name (its getPeer says None).
    assert seen[0] == (UNIXAddress("") if family == socket.AF_UNIX else peer)


def test_native_supported_only_on_the_asyncio_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    native_supported is True for an asyncio reactor, False for others, and
    reads no environment variable; native_endpoint's native=False gives Twisted's endpoint.
    """
    assert not native_supported(MemoryReactor())
    loop = asyncio.SelectorEventLoop()
    reactor = AsyncioSelectorReactor(loop)
    try:
        monkeypatch.setenv("CAPSERV_NATIVE", "0")
        assert native_supported(reactor)
        assert isinstance(native_endpoint(reactor, "tcp:0", native=False), TCP4ServerEndpoint)
        assert isinstance(native_endpoint(reactor, "tcp:0:interface=127.0.0.1"), NativeSocketEndpoint)
        assert isinstance(native_endpoint(reactor, "unix:/tmp/x.sock:mode=600"), NativeSocketEndpoint)
        # Descriptions it does not handle go to Twisted.
        assert isinstance(native_endpoint(reactor, "unix:/tmp/x.sock:lockfile=0"), NativeSocketEndpoint)
        assert not isinstance(native_endpoint(reactor, "haproxy:tcp:0"), NativeSocketEndpoint)
        assert isinstance(native_endpoint(MemoryReactor(), "tcp:0"), TCP4ServerEndpoint)
    finally:
        close_reactor(reactor)


def test_run_now_finishes_bare_yields_and_hands_real_waits_to_the_loop() -> None:
    """
    _run_now finishes at once a coroutine that only yields bare (create_server's sleep(0)); one that waits for a
    future goes on as a task.
    """

    async def bare() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "served"

    loop = asyncio.SelectorEventLoop()
    try:
        assert _run_now(loop, bare()) == (True, "served")
        future = loop.create_future()

        async def waits() -> str:
            return f"got {await future}"

        done, task = _run_now(loop, waits())
        assert not done
        loop.call_soon(future.set_result, "it")
        assert run_loop(loop, task) == "got it"
    finally:
        loop.close()


def test_listen_reports_a_socket_that_cannot_be_made_at_once() -> None:
    """An OSError from make_socket fails listen's Deferred, already fired, with CannotListenError naming the address."""
    loop = asyncio.SelectorEventLoop()
    reactor = AsyncioSelectorReactor(loop)
    try:

        def taken() -> socket.socket:
            raise OSError(errno.EADDRINUSE, "Address already in use")

        d = NativeSocketEndpoint(reactor, taken, interface="127.0.0.1", port=50007).listen(
            Factory.forProtocol(Recorder)
        )
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(CannotListenError)
        assert "127.0.0.1:50007" in failures[0].getErrorMessage()
        assert "Address already in use" in failures[0].getErrorMessage()
    finally:
        close_reactor(reactor)
    d = NativeSocketEndpoint(MemoryReactor(), taken).listen(Factory.forProtocol(Recorder))
    d.addErrback(failures.append)
    assert failures[-1].check(CannotListenError)


# -- on loopback, on asyncio's and uvloop's loops ----------------------------------


def close_reactor(reactor: AsyncioSelectorReactor) -> None:
    """Release a reactor that was built for a test and never installed, and its loop."""
    waker = reactor.waker
    if waker is not None:
        reactor.removeReader(waker)
        waker.connectionLost(None)
    reactor._asyncioEventloop.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def reactor(request: pytest.FixtureRequest) -> Iterator[AsyncioSelectorReactor]:
    """An asyncio reactor on a new asyncio or uvloop event loop, for this test only."""
    loop = asyncio.SelectorEventLoop() if request.param == "asyncio" else uvloop.new_event_loop()
    reactor = AsyncioSelectorReactor(loop)
    try:
        yield reactor
    finally:
        close_reactor(reactor)


def run(reactor: AsyncioSelectorReactor, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run the test's coroutine on the reactor's loop, bounded in time."""
    return run_loop(reactor._asyncioEventloop, asyncio.wait_for(coroutine, 30))


def run_loop(loop: asyncio.AbstractEventLoop, awaitable: Any) -> Any:
    """
    Run ``loop`` until ``awaitable`` is done, in a thread of its own: under
    pytest's asyncio reactor, this thread already runs an event loop.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = loop.run_until_complete(awaitable)
        except BaseException as e:  # raised in the test's thread below
            outcome["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the test's event loop did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def wait(d: Deferred[Any], reactor: AsyncioSelectorReactor) -> asyncio.Future[Any]:
    return d.asFuture(reactor._asyncioEventloop)


def tcp_socket(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def listen(reactor: AsyncioSelectorReactor, factory: Any, make: Callable[[], socket.socket] = tcp_socket) -> Any:
    """Listen through NativeSocketEndpoint; the Deferred has fired when listen returns, before the loop runs."""
    d = NativeSocketEndpoint(reactor, make).listen(factory)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and IListeningPort.providedBy(results[0]), results
    return results[0]


async def exchange(address: tuple[str, int] | str, data: bytes | None = None) -> bytes:
    """Connect (a TCP address or a UNIX path), send ``data`` and end the input if given, read to the end, close."""
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address)
    try:
        if data is not None:
            writer.write(data)
            writer.write_eof()
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("host", HOSTS)
def test_loopback_round_trip_split_character_and_half_close(reactor: AsyncioSelectorReactor, host: str) -> None:
    """
    A real client's bytes, a character split across two sends, come back uppercased; after shutdown(SHUT_WR) the
    whole reply arrives, then the close.
    """
    factory = UppercaseFactory(clock=reactor)
    port = listen(reactor, factory, lambda: tcp_socket(host))
    number = port.getHost().port

    async def client() -> bytes:
        reader, writer = await asyncio.open_connection(host, number)
        eszett = "ß".encode()
        writer.write(b"hello stra" + eszett[:1])
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(eszett[1:] + b"e " + "ǆ".encode() * 10000)
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        return reply

    try:
        assert run(reactor, client()) == b"HELLO STRASSE " + "Ǆ".encode() * 10000
        (host_address,) = [port.getHost()]
        assert host_address.host == host and isinstance(host_address, IPv6Address if ":" in host else IPv4Address)
    finally:
        run(reactor, wait(port.stopListening(), reactor))
        run(reactor, wait(factory.drain(timeout=0), reactor))
    assert factory.stats.connections_total == 1 and factory.stats.bytes_out == len(b"HELLO STRASSE ") + 20000


@pytest.mark.parametrize("host", HOSTS)
def test_loopback_addresses_of_the_connection(reactor: AsyncioSelectorReactor, host: str) -> None:
    """
    getPeer is the client's address and getHost the server's, as Twisted
    addresses of the right family, on a real TCP connection.
    """
    seen: list[Any] = []

    class Spy(Protocol):
        def connectionMade(self) -> None:
            seen.append((self.transport.getPeer(), self.transport.getHost()))  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    port = listen(reactor, Factory.forProtocol(Spy), lambda: tcp_socket(host))

    async def client() -> tuple[Any, bytes]:
        reader, writer = await asyncio.open_connection(host, port.getHost().port)
        local = writer.get_extra_info("sockname")
        data = await reader.read()
        writer.close()
        return local, data

    try:
        local, data = run(reactor, client())
    finally:
        port.stopListening()
    assert data == b""
    kind = IPv6Address if ":" in host else IPv4Address
    (peer, here) = seen[0]
    assert (type(peer), peer.host, peer.port) == (kind, local[0], local[1])
    assert here == kind("TCP", host, port.getHost().port)


def test_loopback_unix_socket_addresses_and_cleanup(reactor: AsyncioSelectorReactor) -> None:
    """
    A UNIX socket is served; getHost is its path; stopListening removes the socket file and refuses new
    connections.
    """
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "capserv.sock")

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        return sock

    factory = UppercaseFactory(clock=reactor)
    port = listen(reactor, factory, make)
    assert port.getHost() == UNIXAddress(path)

    try:
        assert run(reactor, exchange(path, b"unix")) == b"UNIX"
    finally:
        run(reactor, wait(port.stopListening(), reactor))
        run(reactor, wait(factory.drain(timeout=0), reactor))
    assert not os.path.exists(path)
    os.rmdir(folder)


def test_loopback_backpressure_pauses_reading_and_loses_nothing(reactor: AsyncioSelectorReactor) -> None:
    """
    A client that sends without reading makes the server stop reading (a pause is counted, its buffer stays near
    the mark); then every byte comes back exact.
    """
    high = 65536
    factory = UppercaseFactory(CapservConfig(idle_timeout=0, high_water=high), clock=reactor)
    port = listen(reactor, factory)
    unit = b"the quick brown fox jumps over the lazy dog\n"
    chunk = unit * 2000
    total = 400 * len(chunk)  # about 35 MB: far more than the socket buffers hold
    loop = reactor._asyncioEventloop

    async def scenario() -> tuple[int, int]:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        try:

            async def send_all() -> None:
                for _ in range(400):
                    await loop.sock_sendall(client, chunk)
                client.shutdown(socket.SHUT_WR)

            sender = loop.create_task(send_all())
            # Wait until the server has paused and the client's sends block.
            last, still = -1, 0
            while still < 5:
                await asyncio.sleep(0.05)
                (proto,) = factory.connections
                still = still + 1 if proto.bytes_in == last else 0
                last = proto.bytes_in
            (proto,) = factory.connections
            buffered = proto.transport._transport.get_write_buffer_size()
            assert factory.stats.pauses >= 1
            assert not sender.done()
            assert proto.bytes_in < total
            # Read everything back.
            expected = unit.upper()
            received = 0
            while True:
                data = await loop.sock_recv(client, 1 << 20)
                if not data:
                    break
                offset = received % len(expected)
                reps = (offset + len(data)) // len(expected) + 2
                assert data == (expected * reps)[offset : offset + len(data)]
                received += len(data)
            await sender
            return buffered, received
        finally:
            client.close()

    try:
        buffered, received = run(reactor, scenario())
    finally:
        run(reactor, wait(port.stopListening(), reactor))
        run(reactor, wait(factory.drain(timeout=0), reactor))
    # The server stopped reading once its unsent reply passed the mark: it
    # holds at most the mark plus one read.
    assert buffered <= high + 262144
    assert received == total


def test_loopback_one_connection_gets_at_most_64_kib_a_turn(reactor: AsyncioSelectorReactor) -> None:
    """
    A client streaming 20 MB is handed on at most 64 KiB per turn of the event loop (uvloop reads up to 32 times
    250 KB in one turn), and every byte arrives in order.
    """
    loop = reactor._asyncioEventloop
    per_turn: dict[int, int] = {}
    received: list[bytes] = []
    turn = [0]

    def tick() -> None:
        turn[0] += 1
        loop.call_soon(tick)

    class Counting(Protocol):
        def dataReceived(self, data: bytes) -> None:
            per_turn[turn[0]] = per_turn.get(turn[0], 0) + len(data)
            received.append(data)

    done: asyncio.Future[None] = loop.create_future()

    @implementer(IHalfCloseableProtocol)
    class CountingToTheEnd(Counting):
        def readConnectionLost(self) -> None:
            done.set_result(None)
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:
            pass

    port = listen(reactor, Factory.forProtocol(CountingToTheEnd))
    data = os.urandom(20_000_000)

    async def scenario() -> None:
        tick()
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        try:
            await loop.sock_sendall(client, data)
            client.shutdown(socket.SHUT_WR)
            await done
        finally:
            client.close()

    try:
        run(reactor, scenario())
    finally:
        run(reactor, wait(port.stopListening(), reactor))
    assert b"".join(received) == data
    assert max(per_turn.values()) <= 65536


def test_loopback_abort_resets_the_client(reactor: AsyncioSelectorReactor) -> None:
    """
    abortConnection drops the connection at once: the client sees the connection end, the protocol gets
    ConnectionAborted.
    """
    proto = Recorder()
    port = listen(reactor, Factory.forProtocol(lambda: proto))

    async def client() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
        writer.write(b"x")
        while not proto.data:
            await asyncio.sleep(0.01)
        proto.transport.write(b"never mind")  # type: ignore[union-attr]
        proto.transport.abortConnection()  # type: ignore[union-attr]
        try:
            data = await reader.read()
        except ConnectionResetError:
            data = b"reset"
        while not proto.reasons:
            await asyncio.sleep(0.01)
        writer.close()
        return data

    try:
        data = run(reactor, client())
    finally:
        port.stopListening()
    assert data in (b"", b"reset", b"never mind")
    assert proto.reasons[0].check(ConnectionAborted)


def test_loopback_limits_drain_and_stop_listening(reactor: AsyncioSelectorReactor) -> None:
    """
    max_connections refuses the connection over it; stopListening refuses new ones but keeps the open one; drain
    waits for it, then closes it.
    """
    factory = UppercaseFactory(CapservConfig(max_connections=1), clock=reactor)
    port = listen(reactor, factory)
    number = port.getHost().port

    async def scenario() -> tuple[bytes, bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(b"first")
        first = await reader.readexactly(5)
        r2, w2 = await asyncio.open_connection("127.0.0.1", number)
        over = await r2.read()  # closed at once, nothing served
        w2.close()
        await wait(port.stopListening(), reactor)
        try:
            await asyncio.open_connection("127.0.0.1", number)
            refused = False
        except ConnectionRefusedError:
            refused = True
        # The open connection still works, then drain closes it.
        writer.write(b"still")
        assert await reader.readexactly(5) == b"STILL"
        drained = wait(factory.drain(timeout=0.05), reactor)
        rest = await reader.read()
        await drained
        writer.close()
        return first + rest, over, refused

    served, over, refused = run(reactor, scenario())
    assert served == b"FIRST"
    assert over == b""
    assert refused
    assert factory.stats.connections_refused["max_connections"] == 1
    assert not factory.connections


def test_loopback_idle_timeout(reactor: AsyncioSelectorReactor) -> None:
    """A connection with no traffic for the idle timeout is closed by the server and counted."""
    factory = UppercaseFactory(CapservConfig(idle_timeout=0.2), clock=reactor)
    port = listen(reactor, factory)

    try:
        assert run(reactor, exchange(("127.0.0.1", port.getHost().port))) == b""
    finally:
        port.stopListening()
    assert factory.stats.idle_timeouts == 1
    assert not factory.connections


def test_listen_while_the_loop_runs_has_fired_too(reactor: AsyncioSelectorReactor) -> None:
    """listen called while the event loop runs also returns a Deferred that has already fired."""

    async def inside() -> bool:
        port = listen(reactor, Factory.forProtocol(Recorder))
        await wait(port.stopListening(), reactor)
        return True

    assert run(reactor, inside())


# -- datagrams ---------------------------------------------------------------------


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@pytest.mark.parametrize("host", HOSTS)
def test_datagrams_round_trip_whole_and_stop(reactor: AsyncioSelectorReactor, host: str) -> None:
    """
    capserv's datagram protocol, unchanged, answers through the loop's
    datagram transport: uppercase replies, 60,000-byte datagrams whole, an
    empty datagram answered; the protocol is stopped with the port.
    """
    from capserv import UppercaseDatagramProtocol

    proto = UppercaseDatagramProtocol(clock=reactor)
    port = listen_datagrams(reactor, proto, lambda: udp_socket(host))
    address = port.getHost()
    assert isinstance(address, IPv6Address if ":" in host else IPv4Address) and address.type == "UDP"
    loop = reactor._asyncioEventloop

    async def client() -> list[bytes]:
        # A blocking client in a thread (uvloop has no sock_recvfrom).
        return [
            await loop.run_in_executor(None, udp_exchange, host, address.port, payload)
            for payload in ("straße".encode(), b"x" * 60000, b"")
        ]

    try:
        assert run(reactor, client()) == [b"STRASSE", b"X" * 60000, b""]
        assert proto.stats.datagrams_out == 3 and proto.transport is port
    finally:
        run(reactor, wait(port.stopListening(), reactor))
    assert proto.transport is None  # doStop ran


class ConnectedRecorder(DatagramProtocol):
    """Records datagrams and refusals."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []
        self.refused = 0
        self.started: Deferred[None] = Deferred()

    def startProtocol(self) -> None:
        self.started.callback(None)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))

    def connectionRefused(self) -> None:
        self.refused += 1


def test_datagram_port_is_an_udp_transport(reactor: AsyncioSelectorReactor) -> None:
    """
    The datagram port provides IUDPTransport, IListeningPort and
    ISystemHandle; broadcast can be turned on; connect() sends to the one
    peer without an address, takes datagrams only from it, refuses a second
    connect and a host name, and a refused send reaches connectionRefused,
    as on Twisted's UDP port.
    """
    proto = ConnectedRecorder()
    port = listen_datagrams(reactor, proto, udp_socket)
    peer = udp_socket()
    stranger = udp_socket()
    try:
        run(reactor, wait(proto.started, reactor))
        for interface in (IUDPTransport, IListeningPort, ISystemHandle):
            assert verifyObject(interface, port), interface
        assert not port.getBroadcastAllowed()
        port.setBroadcastAllowed(True)
        assert port.getBroadcastAllowed()
        with pytest.raises(InvalidAddressError):
            port.connect("localhost", 1)
        port.connect(*peer.getsockname())
        with pytest.raises(RuntimeError):
            port.connect(*peer.getsockname())
        port.write(b"to the peer")
        peer.setblocking(True)
        peer.settimeout(10)
        assert peer.recvfrom(100) == (b"to the peer", ("127.0.0.1", port.getHost().port))
        stranger.sendto(b"ignored", ("127.0.0.1", port.getHost().port))
        peer.sendto(b"heard", ("127.0.0.1", port.getHost().port))

        async def heard() -> None:
            while not proto.received:
                await asyncio.sleep(0.01)

        run(reactor, asyncio.wait_for(heard(), 10))
        assert proto.received == [(b"heard", peer.getsockname())]
        peer.close()  # nothing listens there now: the next send is refused

        async def refused() -> None:
            while not proto.refused:
                port.write(b"anyone?")
                await asyncio.sleep(0.01)

        run(reactor, asyncio.wait_for(refused(), 10))
    finally:
        peer.close()
        stranger.close()
        run(reactor, wait(port.stopListening(), reactor))


def test_datagram_write_refuses_past_the_limit_and_reports_late_errors() -> None:
    """
    write raises ENOBUFS while too many bytes wait to be sent (capserv counts
    it as a send error); an error the loop reports later reaches the
    protocol's send_error.
    """
    from capserv import UppercaseDatagramProtocol
    from capserv.native import NativeDatagramPort

    class Queued(FakeLoopTransport):
        sent: list[tuple[bytes, Any]] = []

        def sendto(self, data: bytes, addr: Any) -> None:
            self.sent.append((data, addr))

    proto = UppercaseDatagramProtocol(clock=Clock())
    port = NativeDatagramPort.__new__(NativeDatagramPort)
    port._protocol, port._transport, port._stopped, port._connected = proto, None, False, None
    port._send_error = proto.send_error
    transport = Queued()
    port.connection_made(transport)  # type: ignore[arg-type]
    port.datagram_received(b"hi", ("192.0.2.1", 4000))
    assert transport.sent == [(b"HI", ("192.0.2.1", 4000))]
    transport.buffered = port.write_limit + 1
    port.datagram_received(b"hi", ("192.0.2.1", 4000))
    assert proto.stats.drops["send_error"] == 1 and len(transport.sent) == 1
    port.error_received(OSError(errno.ENETUNREACH, "unreachable"))
    assert proto.stats.drops["send_error"] == 2


def test_datagrams_native_only_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    native_datagrams_supported is True only on uvloop's loop (asyncio's
    datagram transport is slower), whatever the environment says
    (CAPSERV_NATIVE_UDP is the caller's to read).
    """
    monkeypatch.setenv("CAPSERV_NATIVE", "0")
    monkeypatch.delenv("CAPSERV_NATIVE_UDP", raising=False)
    for make, expected in ((asyncio.SelectorEventLoop, False), (uvloop.new_event_loop, True)):
        reactor = AsyncioSelectorReactor(make())
        try:
            assert native_datagrams_supported(reactor) is expected
        finally:
            close_reactor(reactor)
    assert not native_datagrams_supported(MemoryReactor())


def test_listen_datagrams_reports_a_socket_that_cannot_be_made() -> None:
    """An OSError from make_socket is raised as CannotListenError, at once."""

    def taken() -> socket.socket:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    with pytest.raises(CannotListenError):
        listen_datagrams(MemoryReactor(), object(), taken)
    loop = asyncio.SelectorEventLoop()
    reactor = AsyncioSelectorReactor(loop)
    try:
        with pytest.raises(CannotListenError, match="Address already in use"):
            listen_datagrams(reactor, object(), taken)
    finally:
        close_reactor(reactor)


# -- unsent_bytes: what a closing connection still owes ----------------------------


def test_unsent_bytes_of_transports_that_cannot_tell_and_of_the_adapter() -> None:
    """
    unsent_bytes is None for transports it does not know (an abort timer is
    kept), the event loop's count for the adapter.
    """
    from twisted.internet.testing import StringTransport

    from capserv.protocols._twisted import unsent_bytes

    assert unsent_bytes(StringTransport()) is None
    adapter, tr, _ = connect(Factory.forProtocol(Recorder))
    tr.buffered = 1234
    assert unsent_bytes(adapter) == 1234 == adapter.write_buffer_size


@pytest_twisted.inlineCallbacks
def test_unsent_bytes_of_twisteds_tcp_transport() -> Any:
    """
    On Twisted's own TCP transport unsent_bytes reads Twisted's buffer (its
    private fields, checked on the oldest and newest Twisted): 0 when all
    is sent, more once a client that does not read lets replies pile up.
    """
    from twisted.internet import reactor

    from capserv.protocols._twisted import unsent_bytes

    seen: list[int | None] = []
    done: Deferred[None] = Deferred()

    class Flood(Protocol):
        def connectionMade(self) -> None:
            seen.append(unsent_bytes(self.transport))
            for _ in range(64):
                self.transport.write(b"x" * 1048576)  # type: ignore[union-attr]
            seen.append(unsent_bytes(self.transport))
            self.transport.abortConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            done.callback(None)

    port = reactor.listenTCP(0, Factory.forProtocol(Flood), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        yield done
    finally:
        client.close()
        yield port.stopListening()
    assert seen[0] == 0
    assert isinstance(seen[1], int) and seen[1] > 0


def test_factory_started_and_stopped_with_the_port(reactor: AsyncioSelectorReactor) -> None:
    """The factory's doStart runs when the port listens and doStop when it stops, as with Twisted's ports."""
    factory = Factory.forProtocol(Recorder)
    port = listen(reactor, factory)
    assert factory.numPorts == 1
    run(reactor, wait(port.stopListening(), reactor))
    assert factory.numPorts == 0
    port.stopListening()  # a second time does nothing
    assert factory.numPorts == 0


def test_a_socket_the_loop_refuses_fails_listen(reactor: AsyncioSelectorReactor) -> None:
    """A socket that is not a stream socket fails listen with CannotListenError, and the factory is not started."""
    factory = Factory.forProtocol(Recorder)
    failures: list[Failure] = []
    NativeSocketEndpoint(reactor, lambda: udp_socket()).listen(factory).addErrback(failures.append)
    assert failures and failures[0].check(CannotListenError)
    assert factory.numPorts == 0


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT on this platform")
def test_reuse_port_sockets_and_an_inherited_descriptor(reactor: AsyncioSelectorReactor) -> None:
    """
    Sockets made elsewhere serve as well: two SO_REUSEPORT sockets on one
    port (as --workers makes them) and a socket rebuilt from a descriptor
    (as systemd passes them) all answer.
    """
    factory = UppercaseFactory(clock=reactor)

    def reuse_port(number: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", number))
        sock.listen(16)
        return sock

    first = listen(reactor, factory, lambda: reuse_port(0))
    number = first.getHost().port
    second = listen(reactor, factory, lambda: reuse_port(number))
    inherited = tcp_socket()
    descriptor = os.dup(inherited.fileno())
    inherited.close()
    third = listen(reactor, factory, lambda: socket.socket(fileno=descriptor))

    async def clients() -> list[bytes]:
        replies = []
        for port_number in [number] * 20 + [third.getHost().port]:
            replies.append(await exchange(("127.0.0.1", port_number), b"shared"))
        return replies

    try:
        assert run(reactor, clients()) == [b"SHARED"] * 21
    finally:
        for port in (first, second, third):
            run(reactor, wait(port.stopListening(), reactor))
        run(reactor, wait(factory.drain(timeout=0), reactor))
    assert factory.stats.connections_total == 21


def test_native_endpoint_unix_lock_file_as_twisted(
    reactor: AsyncioSelectorReactor, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    native_endpoint's unix: keeps Twisted's lock file: a second listener on
    the path is refused while the first holds it; stopping removes the
    socket and the lock; a socket left by a dead process is replaced.
    """
    monkeypatch.delenv("CAPSERV_NATIVE", raising=False)
    path = str(tmp_path / "capserv.sock")
    factory = Factory.forProtocol(Recorder)
    endpoint = native_endpoint(reactor, f"unix:{path}:mode=600")
    assert isinstance(endpoint, NativeSocketEndpoint)
    ports: list[Any] = []
    endpoint.listen(factory).addCallback(ports.append)
    (port,) = ports
    assert os.path.islink(path + ".lock") and oct(os.stat(path).st_mode & 0o777) == "0o600"
    refused: list[Failure] = []
    native_endpoint(reactor, f"unix:{path}").listen(factory).addErrback(refused.append)
    assert refused and refused[0].check(CannotListenError) and "lock" in refused[0].getErrorMessage()
    port.stopListening()
    assert not os.path.exists(path) and not os.path.lexists(path + ".lock")
    # A socket file and a lock left behind by a process that is gone.
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)
    leftover.close()
    os.symlink("999999999", path + ".lock")
    ports.clear()
    native_endpoint(reactor, f"unix:{path}").listen(factory).addCallback(ports.append)
    assert ports and ports[0].getHost() == UNIXAddress(path)
    ports[0].stopListening()


def test_unix_lock_file_same_in_daemon_and_native_endpoint(
    reactor: AsyncioSelectorReactor, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    ``unix:PATH`` means one thing to the daemon and to native_endpoint: both
    take Twisted's lock file (the daemon accepted ``lockfile=`` and ignored
    it), each refuses the path while the other holds it, and ``lockfile=0``
    takes none.
    """
    from capserv.daemon.listen import ListenError, parse_listen

    monkeypatch.delenv("CAPSERV_NATIVE", raising=False)
    path = str(tmp_path / "capserv.sock")
    daemon = parse_listen(f"unix:{path}:lockfile=1")
    daemon.bind()
    assert os.path.islink(path + ".lock")
    refused: list[Failure] = []
    native_endpoint(reactor, f"unix:{path}").listen(Factory.forProtocol(Recorder)).addErrback(refused.append)
    assert refused and refused[0].check(CannotListenError)
    daemon.close()
    assert not os.path.lexists(path + ".lock")
    ports: list[Any] = []
    native_endpoint(reactor, f"unix:{path}").listen(Factory.forProtocol(Recorder)).addCallback(ports.append)
    with pytest.raises(ListenError, match="in use by a running server"):
        parse_listen(f"unix:{path}").bind()
    ports[0].stopListening()
    unlocked = parse_listen(f"unix:{path}:lockfile=0")
    unlocked.bind()
    assert os.path.exists(path) and not os.path.lexists(path + ".lock")
    unlocked.close()


def test_native_endpoint_reads_descriptions_as_the_daemon(reactor: AsyncioSelectorReactor) -> None:
    """native_endpoint refuses what --listen refuses, in the same words, on any reactor."""
    from capserv.daemon.listen import ListenError, parse_listen
    from capserv.endpoints.grammar import DescriptionError

    for bad in ("TCP:0", "tcp:70000", "unix:/tmp/x.sock:wantPID=1", "tcp:0:interface=::1"):
        for where in (reactor, MemoryReactor()):
            with pytest.raises(DescriptionError) as caught:
                native_endpoint(where, bad)
            with pytest.raises(ListenError) as daemon:
                parse_listen(bad)
            assert str(daemon.value) == f"--listen '{bad}': {caught.value}"


def test_tcp_options_nagle_off_on_both_loops(reactor: AsyncioSelectorReactor) -> None:
    """
    Accepted TCP connections have Nagle's algorithm off on asyncio's loop as
    on uvloop's (a socket made with proto 0 included); the ITCPTransport
    option methods read and set the real socket.
    """
    seen: list[tuple[bool, bool, bool, bool]] = []

    class Options(Protocol):
        def connectionMade(self) -> None:
            transport: Any = self.transport
            first = transport.getTcpNoDelay()
            transport.setTcpNoDelay(False)
            transport.setTcpKeepAlive(True)
            handle = transport.getHandle()
            seen.append((first, transport.getTcpNoDelay(), transport.getTcpKeepAlive(), handle is not None))
            transport.loseConnection()

    port = listen(reactor, Factory.forProtocol(Options))

    try:
        assert run(reactor, exchange(("127.0.0.1", port.getHost().port))) == b""
    finally:
        port.stopListening()
    assert seen == [(True, False, True, True)]


def test_unlink_false_leaves_a_unix_socket_file(reactor: AsyncioSelectorReactor, tmp_path: Any) -> None:
    """With unlink=False (a socket systemd owns) stopping leaves the socket file; by default it is removed."""
    for unlink in (False, True):
        path = str(tmp_path / f"{unlink}.sock")

        def make(path: str = path) -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(4)
            return sock

        ports: list[Any] = []
        endpoint = NativeSocketEndpoint(reactor, make, unlink=unlink)
        endpoint.listen(Factory.forProtocol(Recorder)).addCallback(ports.append)
        ports[0].stopListening()
        assert os.path.exists(path) is not unlink


def test_socket_endpoint_is_a_stream_server_endpoint() -> None:
    """
    NativeSocketEndpoint provides IStreamServerEndpoint, so it goes wherever
    Twisted takes an endpoint (and native_endpoint's callers type-check).
    """
    from twisted.internet.interfaces import IStreamServerEndpoint

    endpoint = NativeSocketEndpoint(MemoryReactor(), socket.socket)
    assert verifyObject(IStreamServerEndpoint, endpoint)
