"""
Tests for ``capserv-client`` and the client API against real servers on
loopback.  Servers run in the test's reactor; the command runs as a
subprocess (in a thread, so the reactor keeps serving).
"""

from __future__ import annotations

import ast
import os
import pty
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import DatagramProtocol

from capserv import CapservConfig
from capserv.client import NoReplyError, open_stream, tcp_request, udp_request

from .daemon import memory_kib, script_path
from .loopback import HOSTS, in_thread, listen_tcp, listen_udp, stop_tcp

pytestmark = pytest.mark.timeout(180)


def client_path() -> str:
    return script_path("capserv-client")


def run_client(args: list[str], stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([client_path(), *args], input=stdin, capture_output=True, timeout=timeout)


def sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


# -- the command: one message --------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.inlineCallbacks
def test_words_over_tcp(host: str) -> Any:
    factory, port = yield listen_tcp(host)
    try:
        number = str(port.getHost().port)
        result = yield in_thread(run_client, ["--host", host, "--port", number, "hello,", "straße"])
        assert (result.returncode, result.stdout, result.stderr) == (0, b"HELLO, STRASSE\n", b"")
    finally:
        yield stop_tcp(factory, port)


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.inlineCallbacks
def test_words_over_udp(host: str) -> Any:
    _proto, port = listen_udp(host)
    try:
        number = str(port.getHost().port)
        result = yield in_thread(run_client, ["--udp", "--host", host, "--port", number, "over", "udp"])
        assert (result.returncode, result.stdout) == (0, b"OVER UDP\n")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_host_name_resolves() -> Any:
    factory, port = yield listen_tcp("127.0.0.1")
    _proto, uport = listen_udp("127.0.0.1")
    try:
        result = yield in_thread(run_client, ["--host", "localhost", "--port", str(port.getHost().port), "name"])
        assert result.stdout == b"NAME\n"
        result = yield in_thread(
            run_client, ["--udp", "--host", "localhost", "--port", str(uport.getHost().port), "name"]
        )
        assert result.stdout == b"NAME\n"
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()


@pytest_twisted.inlineCallbacks
def test_connect_unix(tmp_path: Path) -> Any:
    from twisted.internet import reactor

    from capserv import UppercaseFactory

    path = str(tmp_path / "s.sock")
    factory = UppercaseFactory(clock=reactor)
    port = yield endpoints.serverFromString(reactor, f"unix:{path}").listen(factory)
    try:
        result = yield in_thread(run_client, ["--connect", f"unix:{path}", "unix", "socket"])
        assert (result.returncode, result.stdout) == (0, b"UNIX SOCKET\n")
        result = yield in_thread(run_client, ["--connect", f"unix:{path}"], b"piped\nover unix")
        assert result.stdout == b"PIPED\nOVER UNIX"
    finally:
        yield stop_tcp(factory, port)


def _tls_server(tmp_path: Path) -> tuple[Any, Path]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    roots = tmp_path / "roots"
    roots.mkdir()
    ca.cert_pem.write_to_path(str(roots / "ca.pem"))
    return pem, roots


@pytest_twisted.inlineCallbacks
def test_connect_tls(tmp_path: Path) -> Any:
    from twisted.internet import reactor

    from capserv import UppercaseFactory

    pem, roots = _tls_server(tmp_path)
    factory = UppercaseFactory(clock=reactor)
    port = yield endpoints.serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}"
    ).listen(factory)
    number = port.getHost().port
    try:
        connect = f"tls:localhost:{number}:trustRoots={roots}"
        result = yield in_thread(run_client, ["--connect", connect, "secret", "straße"])
        assert (result.returncode, result.stdout, result.stderr) == (0, b"SECRET STRASSE\n", b"")
        # Piped over TLS: no half-close, the client knows the reply's length.
        data = "tls stream ΐ ß\n".encode() * 1000
        result = yield in_thread(run_client, ["--connect", connect], data)
        assert (result.returncode, result.stdout) == (0, data.decode().upper().encode())
        # Without the CA: a TLS failure, one line, network exit status.
        result = yield in_thread(run_client, ["--connect", f"tls:localhost:{number}", "x"])
        assert result.returncode == 1
        assert result.stderr.count(b"\n") == 1 and b"TLS" in result.stderr
    finally:
        yield stop_tcp(factory, port)


# -- the command: piped stdin ---------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_piped_stream_is_byte_for_byte() -> Any:
    factory, port = yield listen_tcp("127.0.0.1")
    try:
        data = b"no newline at the end \xff\xfe " + "straße".encode()
        result = yield in_thread(run_client, ["--port", str(port.getHost().port)], data)
        assert (result.returncode, result.stdout) == (0, b"NO NEWLINE AT THE END \xff\xfe " + b"STRASSE")
        result = yield in_thread(run_client, ["--port", str(port.getHost().port)], b"")
        assert (result.returncode, result.stdout) == (0, b"")
    finally:
        yield stop_tcp(factory, port)


PIPE_MB = 1024


@pytest_twisted.inlineCallbacks
def test_one_gigabyte_pipe_in_bounded_memory() -> Any:
    """1 GB through ``capserv-client``: exact, and the client's peak memory
    stays far below the data size."""
    factory, port = yield listen_tcp("127.0.0.1", CapservConfig(ascii_only=True))
    try:
        peak_kib, received, exact = yield in_thread(_pipe_through_client, port.getHost().port, PIPE_MB)
    finally:
        yield stop_tcp(factory, port)
    assert exact and received == PIPE_MB * 1048576
    assert 0 < peak_kib < 200 * 1024, f"client peak RSS {peak_kib} KiB"


def _pipe_through_client(number: int, megabytes: int) -> tuple[int, int, bool]:
    chunk = b"abcdefghijklmnopqrstuvwxyz012345" * 32768  # 1 MiB
    expected = chunk.upper()
    process = subprocess.Popen([client_path(), "--port", str(number)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None

    def feed() -> None:
        assert process.stdin is not None
        for _ in range(megabytes):
            process.stdin.write(chunk)
        process.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    received, exact, peak = 0, True, 0
    reads = 0
    while True:
        data = process.stdout.read1(1 << 20)  # type: ignore[attr-defined]
        if not data:
            break
        offset = received % len(expected)
        exact = exact and data == (expected * 3)[offset : offset + len(data)]
        received += len(data)
        reads += 1
        if reads % 8 == 0:
            # VmHWM, not wait4's ru_maxrss: that counts the moment between
            # fork and exec, when the child still shares the test process's
            # pages, so it reports the test process's size.
            peak = max(peak, memory_kib(process.pid, "VmHWM"))
    writer.join(60)
    process.wait(60)
    process.stdout.close()
    assert process.returncode == 0
    return peak, received, exact


@pytest_twisted.inlineCallbacks
def test_piped_udp_one_datagram_per_line() -> Any:
    proto, port = listen_udp("127.0.0.1")
    try:
        result = yield in_thread(
            run_client, ["--udp", "--port", str(port.getHost().port)], "one\ntwo straße\r\n\nlast".encode()
        )
        assert (result.returncode, result.stdout) == (0, b"ONE\nTWO STRASSE\n\nLAST\n")
        assert proto.stats.datagrams_in == 4
    finally:
        yield port.stopListening()


# -- the command: interactive, through a pseudo-terminal ------------------------


class _Terminal:
    """The controlling side of a pseudo-terminal, read up to a marker."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def read_until(self, needle: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {needle!r}; saw {self.buffer!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the other side is gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {needle!r}; saw {self.buffer!r}")
                self.buffer += chunk
        end = self.buffer.index(needle) + len(needle)
        found, self.buffer = self.buffer[:end], self.buffer[end:]
        return found

    def rest(self) -> bytes:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                break
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.buffer += chunk
        rest, self.buffer = self.buffer, b""
        return rest


def _interactive(args: list[str], lines: list[str]) -> tuple[int, bytes]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen([client_path(), *args], stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    tty = _Terminal(controller)
    transcript = b""
    try:
        transcript += tty.read_until(b"Input lowercase sentence:")
        for line in lines:
            os.write(controller, line.encode() + b"\n")
            transcript += tty.read_until(line.upper().encode() + b"\r\n")
            transcript += tty.read_until(b"Input lowercase sentence:")
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        code = process.wait(20)
        transcript += tty.rest()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return code, transcript


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
@pytest_twisted.inlineCallbacks
def test_interactive_prompt_loop(udp: bool) -> Any:
    factory, port = yield listen_tcp("127.0.0.1")
    _proto, uport = listen_udp("127.0.0.1")
    try:
        args = ["--udp", "--port", str(uport.getHost().port)] if udp else ["--port", str(port.getHost().port)]
        code, transcript = yield in_thread(_interactive, args, ["hello there", "straße"])
        assert code == 0
        assert transcript.count(b"Input lowercase sentence:") == 3
        assert b"HELLO THERE\r\n" in transcript and b"STRASSE\r\n" in transcript
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()


# -- the command: UDP loss, retries, matching, giving up ---------------------------


class LossyServer(DatagramProtocol):
    """Drops the first ``drop`` datagrams; delays the reply to datagram
    number ``delay_index`` by ``delay`` seconds; answers the rest at once."""

    noisy = False

    def __init__(self, drop: int = 0, delay_index: int = -1, delay: float = 0.0) -> None:
        self.drop = drop
        self.delay_index = delay_index
        self.delay = delay
        self.seen: list[bytes] = []
        self.pending: list[Any] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        from twisted.internet import reactor

        index = len(self.seen)
        self.seen.append(data)
        if index < self.drop:
            return
        reply = data.upper()
        if index == self.delay_index:
            self.pending.append(reactor.callLater(self.delay, self.transport.write, reply, addr))
        else:
            self.transport.write(reply, addr)

    def cleanup(self) -> None:
        for call in self.pending:
            if call.active():
                call.cancel()


def _listen_lossy(server: LossyServer) -> Any:
    from twisted.internet import reactor

    return reactor.listenUDP(0, server, interface="127.0.0.1")


@pytest_twisted.inlineCallbacks
def test_udp_retries_through_loss() -> Any:
    server = LossyServer(drop=2)
    port = _listen_lossy(server)
    try:
        args = ["--udp", "--port", str(port.getHost().port), "--timeout", "0.3", "--retries", "3", "lossy"]
        result = yield in_thread(run_client, args)
        assert (result.returncode, result.stdout) == (0, b"LOSSY\n")
        assert server.seen == [b"lossy"] * 3
    finally:
        server.cleanup()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_udp_late_reply_is_not_taken_for_the_next_line() -> Any:
    # The reply to the first try of "first" comes late, while "second" is
    # already waiting for its own reply.
    server = LossyServer(delay_index=0, delay=0.6)
    port = _listen_lossy(server)
    try:
        args = ["--udp", "--port", str(port.getHost().port), "--timeout", "0.4", "--retries", "3"]
        result = yield in_thread(run_client, args, b"first\nsecond\nthird\n")
        assert (result.returncode, result.stdout) == (0, b"FIRST\nSECOND\nTHIRD\n")
        assert server.seen[:2] == [b"first", b"first"]
        yield sleep(0.3)  # let the late reply go out before cleaning up
    finally:
        server.cleanup()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_udp_gives_up_with_a_clear_error() -> Any:
    server = LossyServer(drop=10**6)
    port = _listen_lossy(server)
    try:
        args = ["--udp", "--port", str(port.getHost().port), "--timeout", "0.2", "--retries", "2", "void"]
        started = time.monotonic()
        result = yield in_thread(run_client, args)
        elapsed = time.monotonic() - started
        assert result.returncode == 1
        assert result.stdout == b""
        assert b"no reply" in result.stderr and b"after 3 tries" in result.stderr
        assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
        assert len(server.seen) == 3
        assert elapsed < 30  # never hangs
    finally:
        yield port.stopListening()


# -- the command: failures ---------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_connection_refused() -> Any:
    factory, port = yield listen_tcp("127.0.0.1")
    number = str(port.getHost().port)
    yield stop_tcp(factory, port)
    result = yield in_thread(run_client, ["--port", number, "anyone?"])
    assert result.returncode == 1
    assert result.stderr == f"capserv-client: 127.0.0.1:{number}: connection refused\n".encode()


def test_unknown_host_name() -> None:
    result = run_client(["--host", "no-such-host.invalid", "hi"])
    assert result.returncode == 1
    assert b"cannot resolve" in result.stderr and result.stderr.count(b"\n") == 1


@pytest_twisted.inlineCallbacks
def test_refused_by_a_connection_limit() -> Any:
    factory, port = yield listen_tcp("127.0.0.1", CapservConfig(max_connections=0 + 1))
    import socket

    holder = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        yield sleep(0.1)
        result = yield in_thread(run_client, ["--port", str(port.getHost().port), "over"])
        assert result.returncode == 1
        assert b"without replying" in result.stderr
    finally:
        holder.close()
        yield stop_tcp(factory, port)


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--bogus"], b"--bogus"),
        (["--port", "0"], b"--port"),
        (["--port", "http"], b"--port"),
        (["--timeout", "-1"], b"--timeout"),
        (["--retries", "x"], b"--retries"),
        (["--udp", "--connect", "tcp:localhost:1"], b"--connect"),
        (["--connect", "nonsense:1", "hi"], b"nonsense:1"),
    ],
)
def test_usage_errors(args: list[str], culprit: bytes) -> None:
    result = run_client(args)
    assert result.returncode == 2
    assert culprit in result.stderr and b"Traceback" not in result.stderr


# -- the API -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_api_tcp_request_and_stream() -> Any:
    from twisted.internet import reactor

    factory, port = yield listen_tcp("127.0.0.1")
    try:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        reply = yield tcp_request(endpoint, "api straße".encode())
        assert reply == b"API STRASSE"
        received: list[bytes] = []
        session = yield open_stream(endpoint, received.append)
        session.write(b"part one, ")
        yield sleep(0.05)
        assert b"".join(received) == b"PART ONE, "
        session.write(b"part two")
        session.finish()
        yield session.done
        assert b"".join(received) == b"PART ONE, PART TWO"
    finally:
        yield stop_tcp(factory, port)


@pytest_twisted.inlineCallbacks
def test_api_udp_request() -> Any:
    from twisted.internet import reactor

    _proto, port = listen_udp("127.0.0.1")
    server = LossyServer(drop=10**6)
    silent = _listen_lossy(server)
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
def test_documented_api_example_runs() -> Any:
    """docs/examples/client_api.py, the client page's example, works."""
    from twisted.internet import reactor

    from capserv import MAX_DATAGRAM, UppercaseDatagramProtocol

    factory, port = yield listen_tcp("127.0.0.1")
    number = port.getHost().port
    # The example talks TCP and UDP on one port number.
    uport = reactor.listenUDP(number, UppercaseDatagramProtocol(clock=reactor), "127.0.0.1", MAX_DATAGRAM)
    example = Path(__file__).parent.parent / "docs" / "examples" / "client_api.py"
    try:
        result = yield in_thread(
            lambda: subprocess.run(
                [sys.executable, str(example), str(number)], capture_output=True, text=True, timeout=60
            )
        )
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == repr(b"STRASSE")
    assert lines[-1] == repr(b"DATAGRAM")
    # The stream's pieces may arrive split or together.
    streamed = b"".join(ast.literal_eval(line.removeprefix("got ")) for line in lines[1:-1])
    assert streamed == b"PART ONE, PART TWO"
