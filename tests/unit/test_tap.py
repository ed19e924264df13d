"""
Tests for `capserv.tap`, `capserv.daemon.listen` and `capserv.daemon.service`: options
parsed once into listener objects, every listener checked before anything
listens, the service tree, and the graceful stop.  In memory
(``MemoryReactorClock``), with real sockets bound on 127.0.0.1 where a test
is about binding.
"""

from __future__ import annotations

import io
import signal
import socket
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.daemon.listen import (
    DEFAULT_LISTEN,
    DatagramListener,
    ListenError,
    ProxyListener,
    StreamListener,
    parse_listen,
)
from capserv.daemon.service import CapservService, plural
from capserv.protocols._twisted import clear_exit_signal
from capserv.tap import Options, makeService

LOCAL = "tcp:0:interface=127.0.0.1"
LOCAL_UDP = "udp:0:interface=127.0.0.1"


class AbortRecordingTransport(StringTransport):
    """A StringTransport that records an abort."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def parse(*args: str) -> Options:
    """Parse a capserv command line as ``twistd capserv`` would."""
    options = Options()
    options.parseOptions(list(args))
    return options


def started(options: Options, reactor: MemoryReactorClock) -> CapservService:
    """A service built from ``options`` on ``reactor``, started."""
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    return service


def stop_reading_lines(
    service: CapservService, reactor: MemoryReactorClock, wait: float, protocols: list[Any]
) -> list[str]:
    """
    Stop ``service``, let ``wait`` seconds pass, close ``protocols``' connections
    and let the stop finish; return every log line written meanwhile.
    """
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        service.stopService()
        reactor.advance(wait)
        for protocol in protocols:
            protocol.connectionLost(None)
        reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    return lines


class OptionsTests(SynchronousTestCase):
    """The command line becomes one config and a list of listener objects."""

    def test_no_uvloop_flag(self) -> None:
        """--no-uvloop is a flag, off by default."""
        self.assertTrue(parse("--no-uvloop")["no-uvloop"])
        self.assertFalse(parse()["no-uvloop"])

    def test_defaults(self) -> None:
        """With no --listen, TCP and UDP on 127.0.0.1:50007, and the default config."""
        options = parse()
        self.assertEqual([listener.description for listener in options["settings"].listen], list(DEFAULT_LISTEN))
        self.assertIsInstance(options["settings"].listen[0], StreamListener)
        self.assertIsInstance(options["settings"].listen[1], DatagramListener)
        self.assertEqual(options["settings"].config, CapservConfig())

    def test_every_knob_reaches_the_config(self) -> None:
        """Each limit option lands in its CapservConfig field."""
        options = parse(
            "--encoding=latin1",
            "--ascii",
            "--idle-timeout=7.5",
            "--abort-grace=2",
            "--max-connections=10",
            "--max-connections-per-ip=3",
            "--ipv4-prefix=24",
            "--ipv6-prefix=48",
            "--high-water=1024",
            "--udp-rate=5",
            "--udp-burst=9",
            "--udp-byte-rate=1000",
            "--udp-byte-burst=70000",
            "--udp-rate-loopback",
            "--udp-rate-table-size=50",
            "--udp-allow-low-ports",
            "--shutdown-timeout=4",
        )
        self.assertEqual(
            options["settings"].config,
            CapservConfig(
                encoding="iso8859-1",
                ascii_only=True,
                idle_timeout=7.5,
                abort_grace=2,
                max_connections=10,
                max_connections_per_ip=3,
                ipv4_prefix=24,
                ipv6_prefix=48,
                high_water=1024,
                udp_rate=5,
                udp_burst=9,
                udp_byte_rate=1000,
                udp_byte_burst=70000,
                udp_rate_loopback=True,
                udp_rate_table_size=50,
                udp_allow_low_ports=True,
                shutdown_timeout=4,
            ),
        )

    def test_listen_repeatable_and_replaces_default(self) -> None:
        """Each --listen becomes one typed listener, in order, parsed once."""
        options = parse("--listen", "tcp:1234", "--listen", "udp:1234:interface=\\:\\:1", "--listen", "haproxy:tcp:9")
        kinds = [type(listener) for listener in options["settings"].listen]
        self.assertEqual(kinds, [StreamListener, DatagramListener, ProxyListener])
        self.assertEqual(options["settings"].listen[1].host, "::1")

    def test_bad_values_name_the_option_in_capservs_words(self) -> None:
        """A bad value's error names the option and carries no Twisted wording."""
        for args, culprit in [
            (["--idle-timeout=-1"], "--idle-timeout"),
            (["--max-connections=1.5"], "--max-connections"),
            (["--max-connections=many"], "--max-connections"),
            (["--high-water=0"], "--high-water"),
            # Values a C int or a stop cannot live with: a typing slip.
            (["--high-water=2147483648"], "--high-water: must be at most 1073741824 (1 GiB)"),
            (["--shutdown-timeout=1e12"], "--shutdown-timeout: must be at most 86400 (a day)"),
            (["--abort-grace=1e6"], "--abort-grace: must be at most 86400 (a day)"),
            (["--idle-timeout=1e12"], "--idle-timeout: must be at most 2592000 (30 days)"),
            (["--drain-delay=1e12"], "--drain-delay: '1e12' must be from 0 to 86400"),
            (["--udp-rate=nan"], "--udp-rate"),
            (["--encoding=rot13"], "--encoding"),
            (["--udp-rate=5", "--udp-burst=0"], "--udp-burst"),
            (["--ipv6-prefix=129"], "--ipv6-prefix: '129' must be from 1 to 128"),
            (["--ipv6-prefix=0"], "--ipv6-prefix: '0' must be from 1 to 128"),
            (["--ipv4-prefix=33"], "--ipv4-prefix: '33' must be from 1 to 32"),
            (["--ipv4-prefix=/24"], "--ipv4-prefix: '/24' is not a whole number"),
            (["--udp-byte-rate=fast"], "--udp-byte-rate: 'fast' is not a number"),
            (["--udp-byte-burst=65506"], "--udp-byte-burst: must be at least 65527 (one largest reply)"),
            (["--listen", "nope:1"], "nope:1"),
            (["--listen", "udp:1:color=red"], "color"),
            (["--metrics", "udp:9150"], "--metrics"),
            (["--shutdown-timeout=inf"], "--shutdown-timeout"),
            (["--drain-delay=nan"], "--drain-delay: 'nan' is not a number"),
            (["--idle-timeout=nan"], "--idle-timeout: 'nan' is not a number"),
            (["--encoding=rot13"], "'rot13' is a Python codec but not a text encoding"),
            (["--encoding=utf-16"], "'utf-16' does not write ASCII letters as themselves"),
            (["--encoding=undefined"], "write an ASCII-compatible text encoding such as utf-8"),
            (["--encoding=punycode"], "--encoding: 'punycode' does not write ASCII letters"),
            (["--encoding=idna"], "--encoding: 'idna' cannot write capitals"),
            (["--encoding=no-such"], "--encoding: unknown text encoding 'no-such'; write"),
            (["extra-arg"], "capserv takes no arguments, only options, and 'extra-arg' is not an option"),
            (["--listen", "udp:50007:interface=[::1]"], "without brackets, its colons escaped: interface=\\:\\:1"),
            (["--workers=100000", "--listen", LOCAL], "--workers"),
        ]:
            with self.assertRaises(usage.UsageError, msg=args) as caught:
                parse(*args)
            message = str(caught.exception)
            self.assertIn(culprit, message)
            self.assertNotIn("Parameter type enforcement", message)
            self.assertNotIn("invalid literal", message)
            self.assertNotIn("\n", message)

    def test_metrics_errors_list_only_stream_kinds(self) -> None:
        """--metrics serves HTTP: a bad one lists the stream kinds, not udp:."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--metrics", "abc")
        message = str(caught.exception)
        self.assertIn("--metrics 'abc': unknown kind 'abc'; write tcp:PORT", message)
        self.assertNotIn("udp:", message)

    def test_descriptions_quoted_as_typed(self) -> None:
        """An escaped IPv6 address is shown as typed, not with doubled backslashes."""
        typed = "udp:50007:interface=\\:\\:1:color=red"
        with self.assertRaises(usage.UsageError) as caught:
            parse("--listen", typed)
        self.assertIn(f"--listen '{typed}':", str(caught.exception))
        self.assertNotIn("\\\\", str(caught.exception))

    def test_usage_error_under_twistd_is_one_line_and_a_pointer(self) -> None:
        """As twistd's subcommand, a bad option exits non-zero with one line
        naming it and one pointing at --help; no help text on stdout."""
        options = Options()
        options.parent = usage.Options()  # type: ignore[attr-defined]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--udp-burst=lots"])
        message = str(caught.exception.code)
        lines = message.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("--udp-burst", lines[0])
        self.assertIn("'lots' is not a whole number", lines[0])
        self.assertIn("--help", lines[1])
        self.assertEqual(out.getvalue(), "")


class ServiceTests(SynchronousTestCase):
    """makeService binds every listener, then wires it; the graceful stop."""

    def test_listens_on_each_description(self) -> None:
        """A stream and two datagram listeners are served; the datagram
        protocols differ but share one state; datagrams are read whole."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--listen", LOCAL_UDP, "--listen", LOCAL_UDP), reactor)
        stream = [p for p in reactor.adoptedPorts if len(p) == 3]
        datagram = [p for p in reactor.adoptedPorts if len(p) == 4]
        self.assertEqual(len(stream), 1)
        self.assertIs(stream[0][2], service.factory)
        self.assertEqual(len(datagram), 2)
        first, second = datagram[0][2], datagram[1][2]
        self.assertIsNot(first, second)
        self.assertIs(first.state, second.state)
        self.assertIs(first.state, service.datagrams)
        self.assertEqual({p[3] for p in datagram}, {65535})
        service.stopService()

    def test_listening_lines_say_what_each_serves(self) -> None:
        """Each listener's "Listening" line carries ``what`` as a field,
        datagrams as streams."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = started(parse("--listen", LOCAL, "--listen", LOCAL_UDP), MemoryReactorClock())
        listening = [e for e in events if e.get("log_namespace") == "capserv.listen"]
        self.assertEqual([e["what"] for e in listening], ["streams", "datagrams"])
        self.assertTrue(formatEvent(listening[1]).startswith("Listening for datagrams on "))
        service.stopService()

    def test_one_bad_listener_means_none_listens(self) -> None:
        """A taken port ends the start with one line, and the listener bound
        before it lets its address go."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            taken = holder.getsockname()[1]
            options = parse("--listen", LOCAL, "--listen", f"tcp:{taken}:interface=127.0.0.1")
            reactor = MemoryReactorClock()
            with self.assertRaises(SystemExit) as caught:
                makeService(options, reactor=reactor)
        message = str(caught.exception.code)
        self.assertIn(f"cannot listen on 'tcp:{taken}:interface=127.0.0.1'", message)
        self.assertIn("already in use", message)
        self.assertNotIn("\n", message)
        self.assertFalse(options["settings"].listen[0].bound)
        self.assertEqual(reactor.adoptedPorts, [])

    def test_clash_between_own_listeners_is_named(self) -> None:
        """A port two listeners of this command both ask for is reported as
        that clash (not as another program's), for streams, for datagrams
        on 0.0.0.0 then ::, and for --metrics; nothing stays bound."""
        cases = [
            (lambda port: ["--listen", f"tcp:{port}:interface=127.0.0.1"] * 2, ""),
            (
                lambda port: [
                    "--listen",
                    LOCAL,
                    "--metrics",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--listen",
                    f"tcp:{port}",
                ],
                "",
            ),
            (
                lambda port: ["--listen", f"udp:{port}:interface=0.0.0.0", "--listen", f"udp:{port}:interface=\\:\\:"],
                " (on Linux, :: takes IPv4 too)",
            ),
        ]
        for make_args, hint in cases:
            if socket.has_ipv6 is False and hint:
                continue
            # The port is chosen free, but tests in other processes may take
            # it before the first listener binds it (then that listener's
            # own bind fails, which is not what is tested): choose again.
            for _ in range(5):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("0.0.0.0", 0))
                    free = probe.getsockname()[1]
                options = parse(*make_args(free))
                second = options["settings"].metrics or options["settings"].listen[1]
                first = options["settings"].listen[-1] if options["settings"].metrics else options["settings"].listen[0]
                with self.assertRaises(SystemExit, msg=make_args(free)) as caught:
                    makeService(options, reactor=MemoryReactorClock())
                if "of this same command" not in str(caught.exception.code):
                    alone = parse("--listen", first.description)["settings"].listen[0]
                    try:
                        alone.bind()
                    except Exception:
                        continue  # taken by another process meanwhile
                    alone.close()
                break
            self.assertEqual(
                caught.exception.code,
                f"capserv: cannot listen on '{second.description}': port {free} is already taken by "
                f"--listen '{first.description}' of this same command{hint}; drop one of them",
            )
            self.assertFalse(first.bound)

    def test_graceful_stop_waits_then_closes(self) -> None:
        """A stop waits the shutdown timeout for open connections, then closes them."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=5", "--abort-grace=1"), reactor)
        factory = service.factory
        address = IPv4Address("TCP", "192.0.2.1", 5000)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertFalse(transport.disconnecting)
        reactor.advance(5)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        reactor.advance(0)
        self.assertEqual(len(done), 1)

    def test_clean_exit_after_signal(self) -> None:
        """After a graceful stop the recorded signal is forgotten: twistd exits 0."""
        reactor = MemoryReactorClock()
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = started(parse("--listen", LOCAL), reactor)
        service.stopService()
        reactor.advance(0)
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]

    def test_internals_fallback(self) -> None:
        """Without the private attribute, nothing happens and nothing breaks."""
        self.assertFalse(clear_exit_signal(object()))

    def test_second_signal_aborts_at_once(self) -> None:
        """A forced stop aborts open connections without waiting for the
        timeout, and keeps the signal so twistd exits by it."""
        reactor = MemoryReactorClock()
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=60"), reactor)
        protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        assert protocol is not None
        transport = AbortRecordingTransport()
        protocol.makeConnection(transport)
        done: list[object] = []
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            service.stopService().addCallback(done.append)
            self.assertIsNot(signal.getsignal(signal.SIGTERM), previous[signal.SIGTERM])
            service.force_stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        reactor.advance(0)
        self.assertEqual(len(done), 1)
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)  # type: ignore[attr-defined]

    def test_stop_lines_read_well_and_come_last(self) -> None:
        """'1 connection', not '1 connections'; 'capserv stopped' after the
        last connection's close line; no object reprs."""
        reactor = MemoryReactorClock()
        service = started(parse("--listen", LOCAL, "--shutdown-timeout=5"), reactor)
        protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        lines = stop_reading_lines(service, reactor, 5, [protocol])
        self.assertIn("Stopping: no longer listening; 1 connection open, waiting up to 5s for it to finish", lines)
        closes = [i for i, line in enumerate(lines) if "closed after" in line]
        stopped = [i for i, line in enumerate(lines) if line.startswith("capserv stopped")]
        self.assertEqual(len(stopped), 1)
        self.assertTrue(closes and closes[-1] < stopped[0], lines)
        self.assertIn("1 TCP connection served and 0 datagrams answered", lines[stopped[0]])
        self.assertFalse([line for line in lines if " object at 0x" in line])

    def test_stop_line_counts_what_was_turned_away(self) -> None:
        """Refusals and drops are logged throttled (one line per 10 s), so
        the stop line gives their totals: none is lost from the log when
        the process stops inside a throttle window; a worker says the
        figures are its own."""
        reactor = MemoryReactorClock()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        service = started(parse("--listen", LOCAL, "--max-connections-per-ip=1"), reactor)
        service.worker = True
        peer = IPv4Address("TCP", "192.0.2.1", 5000)
        protocols = []
        for port in (5000, 5001, 5002):
            protocol = service.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=peer))
            protocols.append(protocol)
        service.datagrams.stats.drops["rate_limit"] += 30
        lines = stop_reading_lines(
            service, reactor, service.config.shutdown_timeout + service.config.abort_grace + 1, protocols
        )
        stopped = [line for line in lines if line.startswith("capserv stopped")]
        self.assertEqual(len(stopped), 1, lines)
        self.assertIn("2 connections refused and 30 datagrams dropped (metrics say why) by this process", stopped[0])

    def test_plural(self) -> None:
        """Counts read as English."""
        self.assertEqual(plural(1, "datagram"), "1 datagram")
        self.assertEqual(plural(0, "datagram"), "0 datagrams")
        self.assertEqual(plural(2, "connection"), "2 connections")


class TLSBindTests(SynchronousTestCase):
    """An ssl: listener's port is checked when the others are bound."""

    def scratch_file(self) -> str:
        """A path in a temporary folder removed after the test (not in the checkout)."""
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="capserv-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        return f"{folder}/key.pem"

    def test_taken_ssl_port_stops_the_start(self) -> None:
        """A taken ssl: port ends makeService with one line, before daemonizing."""
        import trustme

        key = self.scratch_file()
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            options = parse("--listen", LOCAL, "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}")
            with self.assertRaises(SystemExit) as caught:
                makeService(options, reactor=MemoryReactorClock())
        self.assertIn(f"127.0.0.1:{port} is already in use", str(caught.exception.code))
        self.assertFalse(options["settings"].listen[0].bound)

    def test_key_file_that_is_not_pem(self) -> None:
        """A key file that is not PEM is named as such, not in OpenSSL's words."""
        key = self.scratch_file()
        with open(key, "w") as f:
            f.write("not a key\n")
        with self.assertRaises(ListenError) as caught:
            parse_listen(f"ssl:0:privateKey={key}")
        message = str(caught.exception)
        self.assertIn("holds no PEM private key; write privateKey=", message)
        self.assertNotIn("routines", message)

    def test_every_tls_file_is_read_at_parse(self) -> None:
        """
        Each file an ssl: listener names is read when the options are parsed
        (Twisted reads dhParameters, and pairs key and certificate, only at
        the first handshake); each problem is one line naming the parameter.
        """
        import trustme

        key = self.scratch_file()
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        other = key.replace("key.pem", "other.pem")
        trustme.CA().issue_cert("localhost").cert_chain_pems[0].write_to_path(other)
        missing = key.replace("key.pem", "missing.pem")
        cases = {
            f"dhParameters={missing}": "dhParameters: cannot read",
            f"dhParameters={key}": "dhParameters: " + key + " holds no PEM DH parameters; make them with",
            f"extraCertChain={missing}": "extraCertChain: cannot read",
            f"extraCertChain={missing.rsplit('/', 1)[0]}": "extraCertChain: cannot read",
            f"certKey={other}": "is not the key of the certificate in certKey",
            "sslmethod=TLSv1": "sslmethod must be one of SSLv23_METHOD, TLS_METHOD",
            "method=TLSv1": "unknown parameter 'method' (this kind takes port, privateKey, certKey, sslmethod",
        }
        for extra, expected in cases.items():
            with self.assertRaises(ListenError, msg=extra) as caught:
                parse_listen(f"ssl:0:privateKey={key}:{extra}")
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertNotIn("\n", message)
            self.assertNotIn("routines", message)
        parse_listen(f"ssl:0:privateKey={key}:certKey={key}:extraCertChain={key}")

    def test_two_identical_ssl_listeners_name_the_clash(self) -> None:
        """Two ssl: listeners of one port are named as this command's clash at makeService, not Twisted's."""
        import trustme

        key = self.scratch_file()
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        with socket.socket() as finder:
            finder.bind(("127.0.0.1", 0))
            port = finder.getsockname()[1]
        description = f"ssl:{port}:interface=127.0.0.1:privateKey={key}"
        options = parse("--listen", description, "--listen", description)
        with self.assertRaises(SystemExit) as caught:
            makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            caught.exception.code,
            f"capserv: cannot listen on '{description}': port {port} is already taken by "
            f"--listen '{description}' of this same command; drop one of them",
        )
        # Nothing is left holding the port.
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))


class TimeWaitTests(SynchronousTestCase):
    """A port held only by closing connections is named as such."""

    def test_time_wait_left_by_a_program_without_reuseaddr(self) -> None:
        """After a server without SO_REUSEADDR closes first (as the lesson's
        does), the port cannot be bound for a while: the error says why,
        instead of telling the operator to stop a listener that is not there."""
        server = socket.socket()  # no SO_REUSEADDR, as the lesson's server
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end keeps TIME_WAIT
        client.recv(1)
        client.close()
        server.close()
        listener = parse_listen(f"tcp:{port}:interface=127.0.0.1")
        with self.assertRaises(ListenError) as caught:
            listener.bind()
        self.assertIn("TIME_WAIT", str(caught.exception))

    def test_udp_port_in_use_is_never_blamed_on_tcp_time_wait(self) -> None:
        """TIME_WAIT is a TCP state: a UDP port held by another program is
        "in use", even while a TCP connection on the same port number is
        closing (CI once saw the TIME_WAIT wording for a UDP port)."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.recv(1)
        client.close()
        server.close()
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", port))
        listener = parse_listen(f"udp:{port}:interface=127.0.0.1")
        with self.assertRaises(ListenError) as caught:
            listener.bind()
        self.assertIn("in use", str(caught.exception))
        self.assertNotIn("TIME_WAIT", str(caught.exception))


class ImportTests(SynchronousTestCase):
    """The plugin's module stays light."""

    def test_tap_does_not_import_twisted_web(self) -> None:
        """``import capserv.tap`` (what twistd loads for every capserv
        command) does not load twisted.web: the metrics site is imported
        only when --metrics is given."""
        import subprocess
        import sys

        code = "import capserv.tap, sys; print('twisted.web' in sys.modules, 'prometheus_client' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        self.assertEqual(out.stdout.split(), ["False", "False"])
