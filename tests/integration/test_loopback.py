"""
End-to-end tests on real loopback sockets, IPv4 and IPv6, TCP and UDP.

The server runs in the test's reactor; clients are plain blocking sockets in
threads, as the lesson's are.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from capserv import CapservConfig

from ..support.loopback import HOSTS, in_thread, listen_tcp, listen_udp, stop_tcp, tcp_exchange, udp_exchange


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.inlineCallbacks
def test_tcp_round_trip(host: str) -> Any:
    """
    A long text with multi-byte characters and an invalid byte makes a round trip over
    real TCP sockets, uppercased exactly, on one connection.
    """
    factory, port = yield listen_tcp(host)
    try:
        text = "Hello, straße! ǆ ΐ \u20ac" * 1000
        reply = yield in_thread(tcp_exchange, host, port.getHost().port, text.encode() + b"\xff")
        assert reply == text.upper().encode() + b"\xff"
    finally:
        yield stop_tcp(factory, port)
    assert factory.stats.connections_total == 1


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.inlineCallbacks
def test_udp_round_trip_and_whole_datagrams(host: str) -> Any:
    """
    Over real UDP sockets a datagram is answered, and one of 60,000 bytes (past 1,024
    and Twisted's default 8,192) comes back whole.
    """
    proto, port = listen_udp(host)
    try:
        number = port.getHost().port
        reply = yield in_thread(udp_exchange, host, number, "straße".encode())
        assert reply == b"STRASSE"
        big = b"x" * 60000  # far past 1,024 and Twisted's default 8,192
        reply = yield in_thread(udp_exchange, host, number, big)
        assert reply == b"X" * 60000
    finally:
        yield port.stopListening()
    assert proto.stats.datagrams_out == 2


@pytest_twisted.inlineCallbacks
def test_lesson_style_one_shot_client() -> Any:
    """connect, send one sentence, recv, close: the lesson's TCP client."""
    factory, port = yield listen_tcp("127.0.0.1")

    def lesson_client(number: int) -> bytes:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(("localhost", number))
        s.send(b"hello from the lesson")
        reply = s.recv(1024)
        s.close()
        return reply

    try:
        reply = yield in_thread(lesson_client, port.getHost().port)
        assert reply == b"HELLO FROM THE LESSON"
    finally:
        yield stop_tcp(factory, port)


@pytest_twisted.inlineCallbacks
def test_many_clients_concurrently_and_a_silent_one_delays_nobody() -> Any:
    """
    Fifty clients at once are each answered while a silent client holds a connection
    open; only the silent one is left afterwards.
    """
    from twisted.internet import reactor

    factory, port = yield listen_tcp("127.0.0.1")
    number = port.getHost().port
    silent = socket.create_connection(("127.0.0.1", number))
    try:
        results = yield defer.gatherResults(
            [in_thread(tcp_exchange, "127.0.0.1", number, f"client {i}".encode()) for i in range(50)]
        )
        assert results == [f"CLIENT {i}".encode() for i in range(50)]
        yield task.deferLater(reactor, 0.05, lambda: None)
        assert len(factory.connections) == 1  # only the silent one is left
    finally:
        silent.close()
        yield stop_tcp(factory, port)


@pytest_twisted.inlineCallbacks
def test_connection_limit_on_real_sockets() -> Any:
    """
    On real sockets a connection over the per-IP limit is closed at once without being
    served and counted, and the held connections still work.
    """
    factory, port = yield listen_tcp("127.0.0.1", CapservConfig(max_connections_per_ip=2))
    number = port.getHost().port
    held = [socket.create_connection(("127.0.0.1", number)) for _ in range(2)]
    try:
        from twisted.internet import reactor

        yield task.deferLater(reactor, 0.1, lambda: None)

        def over_the_limit() -> bytes:
            with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
                try:
                    return s.recv(100)
                except ConnectionResetError:
                    return b""

        refused = yield in_thread(over_the_limit)
        assert refused == b""  # closed at once, nothing served
        assert factory.stats.connections_refused["max_connections_per_ip"] == 1
        # The held connections still work.
        held[0].sendall(b"still here")
        held[0].settimeout(5)
        reply = yield in_thread(held[0].recv, 100)
        assert reply == b"STILL HERE"
    finally:
        for s in held:
            s.close()
        yield stop_tcp(factory, port)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


UNIT = b"the quick brown fox jumps over the lazy dog 0123456789\n"
CHUNK = UNIT * (1048576 // len(UNIT))
TOTAL_CHUNKS = 100  # about 100 MB


@pytest.mark.timeout(120)
@pytest_twisted.inlineCallbacks
def test_unread_100mb_keeps_server_memory_bounded() -> Any:
    """
    A client sends 100 MB without reading.  The server must stop reading
    from it (the client's send blocks) instead of buffering the reply, then
    deliver every byte once the client reads.
    """
    from twisted.internet import reactor

    factory, port = yield listen_tcp("127.0.0.1", CapservConfig(idle_timeout=0))
    number = port.getHost().port
    client = socket.create_connection(("127.0.0.1", number))
    client.settimeout(60)
    sent = [0]
    send_error: list[BaseException] = []

    def sender() -> None:
        try:
            for _ in range(TOTAL_CHUNKS):
                client.sendall(CHUNK)
                sent[0] += len(CHUNK)
            client.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the test below
            send_error.append(e)

    rss_before = _rss_bytes()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        # Wait until the server has stopped reading: bytes_in stops moving.
        last, still = -1, 0
        deadline = time.monotonic() + 30
        while still < 5 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.1, lambda: None)
            (proto,) = factory.connections
            still = still + 1 if proto.bytes_in == last else 0
            last = proto.bytes_in
        (proto,) = factory.connections
        assert proto.reading_paused, "the server should have paused reading"
        assert factory.stats.pauses >= 1
        assert proto.bytes_in < 40 * 1048576, f"server read {proto.bytes_in} bytes from a non-reading client"
        growth = _rss_bytes() - rss_before
        print(f"paused after reading {proto.bytes_in} bytes; sender has sent {sent[0]}; rss growth {growth}")
        assert growth < 64 * 1048576, f"server memory grew {growth} bytes"

        # Now read everything; every byte must arrive, uppercased, in order.
        expected_unit = UNIT.upper()

        def reader() -> int:
            total = 0
            while True:
                data = client.recv(1048576)
                if not data:
                    return total
                offset = total % len(expected_unit)
                reps = (offset + len(data)) // len(expected_unit) + 2
                assert data == (expected_unit * reps)[offset : offset + len(data)]
                total += len(data)

        received = yield in_thread(reader)
        thread.join(10)
        assert not send_error
        assert received == sent[0] == TOTAL_CHUNKS * len(CHUNK)
    finally:
        client.close()
        yield stop_tcp(factory, port)
