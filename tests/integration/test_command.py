"""
Tests for `capserv.client.command`, ``capserv-client``: its options (in
memory), ``connect_endpoint``, and the command run as a subprocess against
servers on loopback in the test's reactor (in a thread, so the reactor
keeps serving).
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.client.command import ClientOptions, connect_endpoint, usage_message
from capserv.client.console import EXIT_USAGE, ClientError

from ..support.client import (
    WHOLE,
    LossyServer,
    client_path,
    listen_lossy,
    listen_silent,
    one_line_error,
    run_client,
    sleep,
    tls_server,
)
from ..support.daemon import memory_kib, run_with_bad_stdout
from ..support.loopback import HOSTS, have_ipv6, in_thread, listen_tcp, listen_udp, stop_tcp

pytestmark = pytest.mark.timeout(180)


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
        self.assertEqual(
            usage_error("--host", ":::1"), "--host: ':::1' is not a host name or IP address (IPv6: ::1 or [::1])"
        )

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


class ConnectEndpointTests(SynchronousTestCase):
    """
    ``connect_endpoint`` reads each ``--connect`` kind through its shape:
    what it cannot use is the exact one line capserv-client prints, exit
    status 2, before anything connects.
    """

    def refused(self, description: str) -> str:
        """The message ``connect_endpoint`` refuses ``description`` with (after ``--connect 'DESCRIPTION': ``)."""
        with self.assertRaises(ClientError) as caught:
            connect_endpoint(MemoryReactorClock(), description)
        self.assertEqual(caught.exception.code, EXIT_USAGE)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"--connect '{description}': "), message)
        self.assertNotIn("\n", message)
        return message.removeprefix(f"--connect '{description}': ")

    def test_tls_shape(self) -> None:
        """tls: refuses port 0, a parameter it does not take, a timeout of 0 and a missing port."""
        takes = "host, port, timeout, bindAddress, certificate, privateKey, trustRoots"
        for description, message in [
            ("tls:h:0", "port must be a number from 1 to 65535, not '0'"),
            ("tls:h:1:bogus=1", f"unknown parameter 'bogus' (this kind takes {takes})"),
            ("tls:h:1:timeout=0", "timeout must be a number of seconds more than 0, not '0'"),
            ("tls:h", "no port; write tls:HOST:PORT"),
        ]:
            self.assertEqual(self.refused(description), message, description)

    def test_tcp_and_unix_shapes(self) -> None:
        """tcp:, tcp6: and unix: refuse port 0, unknown parameters and a timeout of 0 alike."""
        for description, message in [
            ("tcp:h:0", "port must be a number from 1 to 65535, not '0'"),
            ("tcp6:\\:\\:1:0", "port must be a number from 1 to 65535, not '0'"),
            ("tcp:h:1:bogus=1", "unknown parameter 'bogus' (this kind takes host, port, timeout, bindAddress)"),
            ("tcp:h:1:timeout=0", "timeout must be a number of seconds more than 0, not '0'"),
            ("unix:/s.sock:bogus=1", "unknown parameter 'bogus' (this kind takes path, timeout, checkPID)"),
            ("unix:/s.sock:timeout=0", "timeout must be a number of seconds more than 0, not '0'"),
            ("TLS:h:1", "unknown kind 'TLS': kinds are lowercase, as in Twisted; write tls:"),
            ("tcp:h:1\\", "a backslash at the end escapes nothing; remove it, or write \\\\ for a backslash"),
            ("unix:/s.sock\\", "a backslash at the end escapes nothing; remove it, or write \\\\ for a backslash"),
            (
                "tcp6:\\:\\:\\:1:1",
                "host must be a host name or IP address, not ':::1'; "
                "escape an IPv6 address's colons (tcp6:\\:\\:1:50007)",
            ),
        ]:
            self.assertEqual(self.refused(description), message, description)

    def test_client_certificate(self) -> None:
        """
        tls:'s certificate= and privateKey=: a key without a certificate, a
        file that cannot be read and one that holds no PEM certificate are
        each refused in one line saying what to write.
        """
        self.assertEqual(
            self.refused("tls:h:1:privateKey=k.pem"),
            "privateKey= goes with certificate=CERT.pem; write both, or neither",
        )
        self.assertEqual(
            self.refused("tls:h:1:certificate=/nonexistent/c.pem"),
            "certificate: cannot read /nonexistent/c.pem: No such file or directory; "
            "write the path of a file this user can read",
        )
        text = self.mktemp()
        with open(text, "w") as f:
            f.write("hello\n")
        self.assertEqual(
            self.refused(f"tls:h:1:certificate={text}"), "certificate/privateKey: not a PEM certificate and private key"
        )

    def test_endpoints_made(self) -> None:
        """Each kind makes an endpoint without connecting; a kind capserv has no shape for goes to Twisted."""
        reactor = MemoryReactorClock()
        for description in ("tcp:h:1", "tcp6:\\:\\:1:1", "unix:/s.sock:timeout=5", "tls:h:1:timeout=5"):
            self.assertTrue(hasattr(connect_endpoint(reactor, description), "connect"), description)
        self.assertEqual(reactor.tcpClients, [])
        self.assertIn("unknown endpoint type 'nonsense'; write tcp:HOST:PORT", self.refused("nonsense:1"))


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.inlineCallbacks
def test_words_over_tcp(host: str) -> Any:
    """
    capserv-client sends its words as one message over TCP, over IPv4 and IPv6, and
    prints the reply with a newline and nothing on stderr.
    """
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
    """
    capserv-client --udp sends its words as one datagram, over IPv4 and IPv6, and prints
    the reply.
    """
    _proto, port = listen_udp(host)
    try:
        number = str(port.getHost().port)
        result = yield in_thread(run_client, ["--udp", "--host", host, "--port", number, "over", "udp"])
        assert (result.returncode, result.stdout) == (0, b"OVER UDP\n")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_host_name_resolves() -> Any:
    """
    --host takes a host name (localhost), resolved for TCP and for UDP.
    """
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
    """
    --connect unix:PATH makes one request and streams a pipe over a UNIX socket.
    """
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


@pytest_twisted.inlineCallbacks
def test_connect_tls(tmp_path: Path) -> Any:
    """--connect tls: with trustRoots naming a folder of CA certificates
    makes one request and a piped stream over TLS; without the CA the
    failure is one line with the network exit status."""
    from twisted.internet import reactor

    from capserv import UppercaseFactory

    pem, roots = tls_server(tmp_path)
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


@pytest_twisted.inlineCallbacks
def test_connect_tls_trust_roots_pem_file_and_ip_address(tmp_path: Path) -> Any:
    """trustRoots= may name a PEM file as well as a folder, the host of a
    tls: string may be an IP address, in brackets or not (verified against
    the certificate's IP address), and timeout= is taken."""
    from twisted.internet import reactor

    from capserv import UppercaseFactory

    pem, roots = tls_server(tmp_path)
    factory = UppercaseFactory(clock=reactor)
    port = yield endpoints.serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}"
    ).listen(factory)
    number = port.getHost().port
    try:
        for connect in (
            f"tls:localhost:{number}:trustRoots={roots / 'ca.pem'}",
            f"tls:127.0.0.1:{number}:trustRoots={roots / 'ca.pem'}",
            f"tls:host=localhost:port={number}:trustRoots={roots}",
            f"tls:[127.0.0.1]:{number}:timeout=5:trustRoots={roots}",
        ):
            result = yield in_thread(run_client, ["--connect", connect, "pem", "file"])
            assert (result.returncode, result.stdout, result.stderr) == (0, b"PEM FILE\n", b""), connect
    finally:
        yield stop_tcp(factory, port)


@pytest.mark.parametrize(
    "trust, says",
    [
        ("missing.pem", "trustRoots=MISSING: no such file or folder"),
        ("empty-folder", "trustRoots=MISSING: no PEM certificate"),
        ("not-a-cert.pem", "trustRoots=MISSING: no PEM certificate"),
    ],
)
def test_connect_tls_bad_trust_roots_say_why(tmp_path: Path, trust: str, says: str) -> None:
    """A trustRoots= that names nothing, an empty folder or a file without a
    certificate is a one-line usage error saying so (Twisted's own message
    for these is empty)."""
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    path = tmp_path / trust
    message = one_line_error(run_client(["--connect", f"tls:localhost:1:trustRoots={path}", "x"]), 2)
    assert says.replace("MISSING", str(path)) in message


def test_tls_without_pyopenssl_names_the_install_command(tmp_path: Path) -> None:
    """Where pyOpenSSL is missing, --connect tls: and ssl: say in one line
    that TLS needs it and how to install it, and exit 2."""
    (tmp_path / "OpenSSL").mkdir()
    (tmp_path / "OpenSSL" / "__init__.py").write_text("raise ImportError(\"No module named 'OpenSSL'\")\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for connect in ("tls:localhost:50443", "ssl:localhost:50443"):
        message = one_line_error(run_client(["--connect", connect, "x"], env=env), 2)
        assert "pyOpenSSL is not installed" in message
        assert "pip install 'capserv[tls]'" in message


@pytest_twisted.inlineCallbacks
def test_options_after_the_words_are_honoured() -> Any:
    """``capserv-client hello --port N`` talks to port N (it used to send to
    50007 and ignore the option); ``--`` ends the options so a word may
    start with ``-``."""
    factory, port = yield listen_tcp("127.0.0.1")
    _proto, uport = listen_udp("127.0.0.1")
    try:
        number, unumber = str(port.getHost().port), str(uport.getHost().port)
        result = yield in_thread(run_client, ["hello", "--port", number, "there"])
        assert (result.returncode, result.stdout, result.stderr) == (0, b"HELLO THERE\n", b"")
        result = yield in_thread(run_client, ["hello", f"-p{unumber}", "-u"])
        assert (result.returncode, result.stdout) == (0, b"HELLO\n")
        result = yield in_thread(run_client, ["--port", number, "--", "-n", "--udp"])
        assert (result.returncode, result.stdout) == (0, b"-N --UDP\n")
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
@pytest_twisted.inlineCallbacks
def test_ipv6_host_in_brackets_and_tcp6_connect_strings() -> Any:
    """``--host '[::1]'`` works as ``--host ::1`` does, over TCP and UDP, and
    ``--connect tcp6:\\:\\:1:PORT`` (the daemon's --listen form) connects."""
    factory, port = yield listen_tcp("::1")
    _proto, uport = listen_udp("::1")
    try:
        number, unumber = str(port.getHost().port), str(uport.getHost().port)
        result = yield in_thread(run_client, ["--host", "[::1]", "--port", number, "brackets"])
        assert (result.returncode, result.stdout, result.stderr) == (0, b"BRACKETS\n", b"")
        result = yield in_thread(run_client, ["--udp", "--host", "[::1]", "--port", unumber, "brackets"])
        assert (result.returncode, result.stdout) == (0, b"BRACKETS\n")
        for connect in (f"tcp6:\\:\\:1:{number}", f"tcp6:host=\\:\\:1:port={number}", f"tcp:\\:\\:1:{number}"):
            result = yield in_thread(run_client, ["--connect", connect, "tcp6"])
            assert (result.returncode, result.stdout, result.stderr) == (0, b"TCP6\n", b""), connect
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()


def test_unusable_connect_string_names_the_forms() -> None:
    """A --connect string Twisted cannot use (an IPv6 address in brackets,
    unescaped) is one usage line that shows the forms that work, not
    Twisted's internal TypeError."""
    message = one_line_error(run_client(["--connect", "tcp:[::1]:50007", "x"]), 2)
    assert "tcp6:\\:\\:1:50007" in message and "TypeError" not in message and "__init__" not in message


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "0.0", "nan", "inf", "soon"])
def test_timeout_zero_negative_or_not_a_number_one_rule(value: str) -> None:
    """--timeout 0, negative, NaN, infinite or not a number: the same one-line
    message (more than 0 seconds), exit 2."""
    message = one_line_error(run_client(["--timeout", value, "x"]), 2)
    assert message == (
        f"capserv-client: --timeout: {value!r} is not a number of seconds greater than 0 (for example 1 or 0.5)"
        " (see capserv-client --help)\n"
    )


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
        (["hi", "--bogus"], b"unknown option --bogus"),
        (["hi", "--port"], b"--port needs a value"),
        (["--host", "[::1"], b"--host"),
        (["--host", ":::1", "hi"], b"--host: ':::1'"),
        (["--connect", "tcp:127.0.0.1:1\\", "hi"], b"--connect 'tcp:127.0.0.1:1\\': a backslash at the end"),
    ],
)
def test_usage_errors(args: list[str], culprit: bytes) -> None:
    """Each bad option or value is one line on stderr naming the culprit,
    exit 2, and no traceback."""
    one_line_error(run_client(args), 2)
    assert culprit in run_client(args).stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--connect", "tcp:127.0.0.1:50007", "--host", "::1"], "leave out --host"),
        (["--connect", "tcp:127.0.0.1:50007", "-p", "5"], "leave out --port"),
        (["--port=5", "--connect", "tcp:127.0.0.1:50007"], "leave out --port"),
        (["--connect", "tcp:127.0.0.1"], "'tcp:127.0.0.1': no port; write tcp:HOST:PORT"),
        (["--connect", "tcp6:"], "no host; write tcp6:HOST:PORT"),
        (["--connect", "unix:"], "no socket path; write unix:PATH"),
        (["--connect", "tls:h:0"], "--connect 'tls:h:0': port must be a number from 1 to 65535, not '0'"),
    ],
)
def test_command_refuses_what_it_would_ignore_or_cannot_use(args: list[str], says: str) -> None:
    """
    --connect with --host or --port is refused (not silently ignored), and
    a --connect string without its host, port or path says what is
    missing; one line, exit 2.
    """
    assert says in one_line_error(run_client([*args, "x"]), 2)


@pytest_twisted.inlineCallbacks
def test_piped_stream_is_byte_for_byte() -> Any:
    """
    Piped stdin is streamed byte for byte (no newline added, invalid bytes kept), and
    empty input gives empty output and exit 0.
    """
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
    """
    Piped over UDP, each line (CRLF or LF, empty, or last without a newline) is one
    datagram and each reply one line.
    """
    proto, port = listen_udp("127.0.0.1")
    try:
        result = yield in_thread(
            run_client, ["--udp", "--port", str(port.getHost().port)], "one\ntwo straße\r\n\nlast".encode()
        )
        assert (result.returncode, result.stdout) == (0, b"ONE\nTWO STRASSE\n\nLAST\n")
        assert proto.stats.datagrams_in == 4
    finally:
        yield port.stopListening()


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
    """
    On a terminal, with no words, the client shows the lesson's prompt, prints each
    reply, prompts again, and exits 0 on Ctrl-D, over TCP and UDP.
    """
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


@pytest_twisted.inlineCallbacks
def test_udp_retries_through_loss() -> Any:
    """
    When the first two datagrams are lost, the client retries and prints the reply to
    the third try.
    """
    server = LossyServer(drop=2)
    port = listen_lossy(server)
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
    """
    A reply that arrives late, after its request was retried, is not taken for the
    answer to the next line: every line gets its own reply.
    """
    server = LossyServer(delay_index=0, delay=0.6)
    port = listen_lossy(server)
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
    """
    With no reply after every try the client prints one line saying so, with the number
    of tries, exits 1 and prints nothing on stdout.
    """
    server = LossyServer(drop=10**6)
    port = listen_lossy(server)
    try:
        args = ["--udp", "--port", str(port.getHost().port), "--timeout", "0.2", "--retries", "2", "void"]
        result = yield in_thread(run_client, args)  # run_client's timeout: it never hangs
        assert result.returncode == 1
        assert result.stdout == b""
        assert b"no reply" in result.stderr and b"after 3 tries" in result.stderr
        assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
        assert len(server.seen) == 3
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_command_udp_no_reply_names_the_address_once() -> Any:
    """
    A UDP request that gets no reply (as when the server drops a reply too
    long for a datagram) names the server once.
    """
    server = LossyServer(drop=10**6)
    silent = listen_lossy(server)
    try:
        number = silent.getHost().port
        result = yield in_thread(run_client, ["--udp", "--port", str(number), "--timeout", "0.05", "x"])
        message = one_line_error(result, 1)
        assert message == f"capserv-client: 127.0.0.1:{number}: no reply after 4 tries (0.05s each)\n"
    finally:
        yield silent.stopListening()


@pytest.mark.parametrize("host, size", WHOLE)
@pytest_twisted.inlineCallbacks
def test_command_reads_the_largest_udp_reply_whole(host: str, size: int) -> Any:
    """capserv-client --udp prints a reply of the largest size one datagram
    carries, whole (it used to print 8,192 bytes and exit 0)."""
    proto, port = listen_udp(host)
    try:
        args = ["--udp", "--host", host, "--port", str(port.getHost().port)]
        result = yield in_thread(run_client, args, b"x" * size)
        assert (result.returncode, len(result.stdout), result.stderr) == (0, size + 1, b"")
        assert result.stdout == b"X" * size + b"\n"
        assert proto.stats.datagrams_in == 1
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connection_refused() -> Any:
    """
    A refused connection is one line naming the server, exit 1.
    """
    factory, port = yield listen_tcp("127.0.0.1")
    number = str(port.getHost().port)
    yield stop_tcp(factory, port)
    result = yield in_thread(run_client, ["--port", number, "anyone?"])
    assert result.returncode == 1
    assert result.stderr == f"capserv-client: 127.0.0.1:{number}: connection refused\n".encode()


def test_unknown_host_name() -> None:
    """
    A host name that does not resolve is one line saying so, exit 1.
    """
    result = run_client(["--host", "no-such-host.invalid", "hi"])
    assert result.returncode == 1
    assert b"cannot resolve" in result.stderr and result.stderr.count(b"\n") == 1


@pytest_twisted.inlineCallbacks
def test_refused_by_a_connection_limit() -> Any:
    """
    A server that closes at once without replying (over its connection limit) is
    reported as such, exit 1.
    """
    factory, port = yield listen_tcp("127.0.0.1", CapservConfig(max_connections=0 + 1))

    holder = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        yield sleep(0.1)
        result = yield in_thread(run_client, ["--port", str(port.getHost().port), "over"])
        assert result.returncode == 1
        assert b"without replying" in result.stderr
    finally:
        holder.close()
        yield stop_tcp(factory, port)


@pytest_twisted.inlineCallbacks
def test_haproxy_port_without_a_header() -> Any:
    """
    A haproxy: port closes a client that sends no PROXY header without replying:
    one line that names that as a cause, exit 1.
    """
    from twisted.internet import reactor

    from capserv import UppercaseFactory

    factory = UppercaseFactory(clock=reactor)
    port = yield endpoints.serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1").listen(factory)
    try:
        result = yield in_thread(run_client, ["--port", str(port.getHost().port), "no header"])
        line = one_line_error(result, 1)
        assert "without replying" in line and "PROXY header" in line, line
    finally:
        yield stop_tcp(factory, port)


def _silent_socket() -> Any:
    """A plain listening socket that accepts (the kernel does) and never answers."""

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.mark.parametrize("piped", [False, True])
def test_command_gives_up_on_a_silent_tcp_server(piped: bool) -> None:
    """
    Against a server that accepts and never answers, capserv-client gives
    up after 10x --timeout, words or a pipe, with one line, exit 1.
    """
    with _silent_socket() as s:
        number = str(s.getsockname()[1])
        args = ["--port", number, "--timeout", "0.1"]
        result = run_client(args if piped else [*args, "hi"], stdin=b"hi\n", timeout=30)
    message = one_line_error(result, 1)
    assert f"127.0.0.1:{number}: no whole reply within 1s; giving up" in message


@pytest_twisted.inlineCallbacks
def test_command_gives_up_over_tls_and_unix(tmp_path: Path) -> Any:
    """
    Over TLS and a UNIX socket, a server that accepts and never answers is
    given up on after 10x --timeout with one line, exit 1 (not "closed
    without replying").
    """
    from twisted.internet import reactor, ssl

    pem, roots = tls_server(tmp_path)
    factory, _port = listen_silent()
    _port.stopListening()
    tls = yield endpoints.serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}").listen(
        factory
    )
    unix = reactor.listenUNIX(str(tmp_path / "s.sock"), factory)
    try:
        connects = [f"tls:localhost:{tls.getHost().port}:trustRoots={roots}", f"unix:{tmp_path / 's.sock'}"]
        for connect in connects:
            result = yield in_thread(run_client, ["--connect", connect, "--timeout", "0.1", "hi"])
            assert "no whole reply within 1s; giving up" in one_line_error(result, 1)
    finally:
        yield tls.stopListening()
        yield unix.stopListening()
    del ssl


@pytest_twisted.inlineCallbacks
def test_command_names_local_failures_as_local() -> Any:
    """
    stdout closed early (| head -c 5) and stdout full (/dev/full) are named
    as local failures, exit 3, in words, line and pipe modes; nothing blames
    the server.
    """
    factory, port = yield listen_tcp("127.0.0.1")
    _proto, uport = listen_udp("127.0.0.1")
    number = str(port.getHost().port)
    client = client_path()
    try:
        closed = yield in_thread(
            lambda: subprocess.run(
                f"head -c 20000000 /dev/zero | {client} --port {number} | head -c 5; exit ${{PIPESTATUS[1]}}",
                shell=True,
                executable="/bin/bash",
                capture_output=True,
                timeout=60,
            )
        )
        assert closed.stdout == b"\0" * 5 or closed.stdout.upper() == closed.stdout
        assert closed.returncode == 3, closed
        assert closed.stderr == b"capserv-client: stdout was closed before the whole reply was written (broken pipe)\n"
        udp = ["--udp", "--port", str(uport.getHost().port)]
        for args, stdin in ((["--port", number, "hello"], b""), (["--port", number], b"x" * 100000), (udp, b"a\n")):
            with open("/dev/full", "wb") as full:
                result = yield in_thread(
                    lambda args=args, stdin=stdin, full=full: subprocess.run(
                        [client, *args], input=stdin, stdout=full, stderr=subprocess.PIPE, timeout=60
                    )
                )
            assert result.returncode == 3, result
            assert result.stderr.startswith(b"capserv-client: cannot write to stdout"), result.stderr
            assert result.stderr.count(b"\n") == 1 and b"127.0.0.1" not in result.stderr
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()


@pytest.mark.parametrize(("args", "stdin"), [(["hi"], b""), (["--udp", "hi"], b""), ([], b"abc"), (["--udp"], b"a\n")])
def test_command_with_stdout_closed_from_the_start(args: list[str], stdin: bytes) -> None:
    """
    stdout closed before the client starts (``>&-``), in words, pipe and
    line modes: one line saying so, exit 3, before anything is sent (no
    server is blamed, nothing hangs).
    """
    result = run_with_bad_stdout([client_path(), "--port", "1", *args], "closed", stdin)
    assert (result.returncode, result.stderr) == (
        3,
        b"capserv-client: stdout is closed; give the reply somewhere to go (> /dev/null drops it)\n",
    )


def test_help_or_version_into_a_closed_pipe_or_a_full_disk() -> None:
    """
    --help (and --version) whose stdout fails: exit 3 and no traceback;
    quiet for a pipe whose reader left (``| true``), one line for /dev/full.
    """
    for option in ("--help", "--version"):
        for stdout, says in [
            ("pipe", b""),
            ("/dev/full", b"capserv-client: cannot write to stdout: No space left on device\n"),
        ]:
            result = run_with_bad_stdout([client_path(), option], stdout)
            assert (result.returncode, result.stderr) == (3, says), (option, stdout)


def test_command_ctrl_c_says_interrupted() -> None:
    """
    Ctrl-C (SIGINT) while waiting for a reply says "interrupted", exit 130.
    """
    import signal

    with _silent_socket() as s:
        process = subprocess.Popen(
            [client_path(), "--port", str(s.getsockname()[1]), "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            s.settimeout(30)
            conn, _ = s.accept()  # the client is connected and waiting
            time.sleep(0.2)  # its reactor runs, with its own SIGINT handler
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
            conn.close()
        finally:
            process.kill()
            process.wait()
    assert (process.returncode, out, err) == (130, b"", b"capserv-client: interrupted\n")


@pytest.mark.parametrize("host, size", WHOLE)
@pytest_twisted.inlineCallbacks
def test_command_refuses_a_message_too_long_for_a_datagram(host: str, size: int) -> Any:
    """One byte more than a datagram carries to the address: capserv-client
    says so in one line, exit 2, and nothing is sent."""
    proto, port = listen_udp(host)
    try:
        args = ["--udp", "--host", host, "--port", str(port.getHost().port)]
        result = yield in_thread(run_client, args, b"z" * (size + 1))
        message = one_line_error(result, 2)
        assert f"message too long for one datagram ({size + 1} bytes; at most {size} bytes" in message
        assert proto.stats.datagrams_in == 0
    finally:
        yield port.stopListening()
