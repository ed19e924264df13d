"""
The tutorial's programs (docs/examples/tutorial/) do what docs/tutorial.rst
says they do, failures included.

Each server runs in a subprocess on a free loopback port: the lesson's and
the two Twisted programs are copies with ``serverPort = 50007`` rewritten
(the files the reader sees keep the lesson's port), capserv is the installed
``twistd capserv`` with ``--listen`` on the free port.  They are driven with
the page's own commands (``probe.py`` and the lesson's clients) or, where the
page has the reader type into ``nc``, the same with a Python socket.  Every
process is bounded by a timeout and stopped before its test ends.
"""

from __future__ import annotations

import contextlib
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tutorial"
PROBE = EXAMPLES / "probe.py"
#: What the lesson's TCP client prints when the user types "hello".
TCP_CLIENT_HELLO = "Input lowercase sentence:From Server:  HELLO\n"
LESSON_PORT_LINE = re.compile(r"^serverPort = 50007$", re.MULTILINE)


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (the servers take both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def copy_on_port(name: str, port: int, folder: Path) -> Path:
    """A copy of an example with the lesson's fixed port 50007 replaced by ``port``."""
    text = (EXAMPLES / name).read_text()
    changed, count = LESSON_PORT_LINE.subn(f"serverPort = {port}", text)
    assert count == 1, f"{name} should set serverPort = 50007 exactly once"
    copy = folder / Path(name).name
    copy.write_text(changed)
    return copy


class Program:
    """One example server in a subprocess, stopped (and reaped) on exit."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        if not ready:
            self.stop()
            raise AssertionError(f"{path.name} printed nothing in 30 s")
        first = self.process.stdout.readline()  # the programs print whole lines
        if "ready to receive" not in first:
            self.stop()
            raise AssertionError(f"{path.name} did not start: {first}")
        self.output = first

    def finish(self, timeout: float = 10.0) -> str:
        """Everything the program printed, after it has stopped by itself."""
        out, _ = self.process.communicate(timeout=timeout)
        self.output += out
        return self.output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def running(name: str, port: int, folder: Path) -> Iterator[Program]:
    program = Program(copy_on_port(name, port, folder))
    try:
        yield program
    finally:
        program.stop()


@contextlib.contextmanager
def capserv(port: int, *options: str) -> Iterator[Daemon]:
    """The installed daemon on ``port`` (TCP and UDP) of 127.0.0.1."""
    with Daemon(
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", f"udp:{port}:interface=127.0.0.1", *options]
    ) as daemon:
        daemon.started()
        yield daemon


def probe(port: int, *args: str, timeout: float = 1.0) -> str:
    """
    Run probe.py as the page does, with a shorter wait for replies; its one
    line.  The tests give two-writes and split-char a longer pause between
    the writes than the page's 0.5 s, so that a server slowed by a busy CI
    machine still reads the first write alone.
    """
    result = subprocess.run(
        [sys.executable, str(PROBE), "--port", str(port), "--timeout", str(timeout), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout.strip()


def lesson_client(name: str, port: int, folder: Path, sentence: str) -> str:
    """Run a copy of the lesson's client with ``sentence`` as what the user types."""
    result = subprocess.run(
        [sys.executable, str(copy_on_port(f"lesson/{name}", port, folder))],
        input=sentence + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def port() -> int:
    return free_port()


def test_the_files_the_reader_sees_use_the_lessons_port() -> None:
    """The lesson's programs and the Twisted ones are shown on port 50007, as the lesson has them."""
    lesson = [f"lesson/{n}" for n in ("udp_server.py", "udp_client.py", "tcp_server.py", "tcp_client.py")]
    for name in [*lesson, "twisted_udp.py", "twisted_tcp.py"]:
        assert len(LESSON_PORT_LINE.findall((EXAMPLES / name).read_text())) == 1, name


def test_lesson_udp_server_answers_and_cuts_datagrams_at_1024_bytes(port: int, tmp_path: Path) -> None:
    """
    The lesson's UDP server answers its own client, but reads 1,024 bytes of
    a 2,000-byte datagram and replies with those only.
    """
    with running("lesson/udp_server.py", port, tmp_path):
        assert lesson_client("udp_client.py", port, tmp_path, "hello").endswith("HELLO\n")
        assert lesson_client("udp_client.py", port, tmp_path, "a" * 2000).count("A") == 1024
        assert probe(port, "big-datagram", "2000") == (
            "sent 2000 bytes by UDP, got 1024 back: the server read only the start of the datagram"
        )


def test_lesson_udp_server_dies_on_invalid_utf8(port: int, tmp_path: Path) -> None:
    """One datagram that is not UTF-8 stops the lesson's UDP server with a UnicodeDecodeError traceback."""
    with running("lesson/udp_server.py", port, tmp_path) as server:
        assert probe(port, "bad-utf8").startswith("no reply within 1 s")
        output = server.finish()
        assert server.process.returncode == 1
        assert "Traceback" in output and "UnicodeDecodeError" in output
        assert probe(port, "big-datagram", "10").startswith("no reply within 1 s")


def test_lesson_tcp_one_recv_is_not_one_message(port: int, tmp_path: Path) -> None:
    """
    The lesson's TCP server answers only what its one recv got; the lesson's
    TCP client prints only what its one recv(1024) got.
    """
    with running("lesson/tcp_server.py", port, tmp_path):
        assert lesson_client("tcp_client.py", port, tmp_path, "hello") == TCP_CLIENT_HELLO
        reply = probe(port, "--pause", "1", "two-writes")
        assert reply.startswith("sent 'hello ' and 'world' in two writes, got back 'HELLO ', and the server ")
        assert lesson_client("tcp_client.py", port, tmp_path, "a" * 2000).count("A") == 1024
        assert lesson_client("tcp_client.py", port, tmp_path, "straße").endswith("From Server:  STRAßE\n")
        assert probe(port, "--pause", "1", "split-char") == (
            "sent 'café' in two writes, split inside the 'é', got back 'CAF\\xc3', and the server closed the connection"
        )


def test_lesson_tcp_server_waits_on_a_silent_client(port: int, tmp_path: Path) -> None:
    """While one client is connected and silent, the iterative server answers no one; once it goes, it does."""
    with running("lesson/tcp_server.py", port, tmp_path):
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # the page's silent `nc`
            assert probe(port, "tcp", "hello") == "no reply within 1 s"
        assert probe(port, "tcp", "hello").startswith("got back 'HELLO' after ")


def test_twisted_udp_reads_8192_bytes_and_survives_invalid_utf8(port: int, tmp_path: Path) -> None:
    """
    The smallest Twisted UDP server answers the lesson's client, reads a
    2,000-byte datagram whole but cuts a 10,000-byte one at Twisted's default
    8,192, and passes bytes that are not UTF-8 through.
    """
    with running("twisted_udp.py", port, tmp_path):
        assert lesson_client("udp_client.py", port, tmp_path, "straße").endswith("STRASSE\n")
        assert probe(port, "big-datagram", "2000") == "sent 2000 bytes by UDP, got 2000 back: all of it"
        assert probe(port, "big-datagram", "10000").startswith("sent 10000 bytes by UDP, got 8192 back")
        assert probe(port, "bad-utf8") == "sent 'caf\\xe9' (not UTF-8) by UDP, got back 'CAF\\xe9'"


def test_twisted_tcp_serves_everyone_but_drops_replies_at_half_close(port: int, tmp_path: Path) -> None:
    """
    The smallest Twisted TCP server answers the lesson's client and every
    write, while another client is silent; but it leaves a character split
    across writes in lower case, closes at the client's half-close without
    sending what it owes, and reads without bound when its replies are not
    taken.
    """
    with running("twisted_tcp.py", port, tmp_path):
        assert lesson_client("tcp_client.py", port, tmp_path, "hello") == TCP_CLIENT_HELLO
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            assert (
                probe(port, "--pause", "1", "two-writes")
                == "sent 'hello ' and 'world' in two writes, got back 'HELLO WORLD'"
            )
        assert (
            probe(port, "--pause", "1", "split-char")
            == "sent 'café' in two writes, split inside the 'é', got back 'CAFé'"
        )
        assert probe(port, "tcp", "hello") == "got back nothing: the server closed the connection without replying"
        piped = probe(port, "pipe", "32", timeout=5)
        first, got = piped.split("; ")
        assert first == "sent all 32 MB before reading a byte: the server read it all and held the replies"
        cut = re.fullmatch(r"got back ([\d.]+) MB of 32 MB \(the server closed without sending the rest\)", got)
        assert cut is not None, got
        assert float(cut[1]) < 32


def test_twisted_programs_say_in_one_line_that_the_port_is_taken(port: int, tmp_path: Path) -> None:
    """A second copy on a port already taken exits non-zero with one line, not a traceback."""
    for name, kind in (("twisted_tcp.py", "TCP"), ("twisted_udp.py", "UDP")):
        with running(name, port, tmp_path):
            result = subprocess.run([sys.executable, str(tmp_path / name)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == f"cannot listen on {kind} 127.0.0.1:{port}: Address already in use\n"


def test_capserv_passes_every_probe(port: int) -> None:
    """
    capserv, pushed the same ways: whole datagrams, bytes passed through,
    every write answered, split characters uppercased, the whole reply
    after a half-close, backpressure, and a silent client that delays no one.
    """
    with capserv(port):
        assert probe(port, "big-datagram", "10000") == "sent 10000 bytes by UDP, got 10000 back: all of it"
        assert probe(port, "bad-utf8") == "sent 'caf\\xe9' (not UTF-8) by UDP, got back 'CAF\\xe9'"
        assert (
            probe(port, "--pause", "1", "two-writes")
            == "sent 'hello ' and 'world' in two writes, got back 'HELLO WORLD'"
        )
        assert (
            probe(port, "--pause", "1", "split-char")
            == "sent 'café' in two writes, split inside the 'é', got back 'CAFÉ'"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            assert probe(port, "tcp", "hello, straße").startswith("got back 'HELLO, STRASSE' after ")
        first, got = probe(port, "pipe", "32", timeout=5).split("; ")
        stopped = re.fullmatch(r"the server stopped reading after ([\d.]+) MB until we read \(backpressure\)", first)
        assert stopped is not None, first
        assert float(stopped[1]) < 32
        assert got == "got back 32.0 MB of 32 MB"


def test_capserv_idle_timeout_closes_a_silent_client(port: int) -> None:
    """With --idle-timeout 1 the page's silent client is closed after about a second, not held forever."""
    with capserv(port, "--idle-timeout", "1"):
        said = probe(port, "silent", "--seconds", "20")
    lines = said.splitlines()
    assert lines[0] == f"connected to localhost:{port}, sending nothing (Ctrl-C ends)"
    assert re.fullmatch(r"the server closed the connection after \d+\.\d s", lines[1])


def server_in_time_wait(port: int) -> bool:
    """Whether a connection whose local port is ``port`` is in TIME_WAIT (Linux's /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                return True
    return False


def test_lesson_tcp_server_leaves_its_port_in_time_wait(port: int, tmp_path: Path) -> None:
    """
    After the lesson's TCP server has served a client and stopped, the next
    server cannot listen on its port (TIME_WAIT without SO_REUSEADDR), and
    twisted_tcp.py says so in one line, as the page warns.
    """
    for _ in range(5):
        with running("lesson/tcp_server.py", port, tmp_path):
            assert lesson_client("tcp_client.py", port, tmp_path, "hello") == TCP_CLIENT_HELLO
        # The side that closes first keeps TIME_WAIT; the lesson's server
        # nearly always does, but a loaded machine can let the client close
        # first: then serve it again until the server's side holds it.
        if server_in_time_wait(port):
            break
    assert server_in_time_wait(port)
    result = subprocess.run(
        [sys.executable, str(copy_on_port("twisted_tcp.py", port, tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr == f"cannot listen on TCP 127.0.0.1:{port}: Address already in use\n"
