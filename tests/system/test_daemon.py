"""
End-to-end tests of the real ``twistd -n capserv`` in a subprocess, on
loopback: default ports, several listeners, IPv6, UNIX sockets, TLS, ports in
use, bad options, and the graceful stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.daemon import TCP0, UDP0, Daemon, run_daemon, run_twistd, scrape, twistd_path
from ..support.loopback import have_ipv6, read_all, tcp_exchange, udp_exchange

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(120)]

LESSON = Path(__file__).resolve().parents[1] / "lesson"


def port_free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_lesson_client(name: str, sentence: str) -> str:
    result = subprocess.run(
        [sys.executable, str(LESSON / name)], input=sentence + "\n", capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def lesson_port() -> Iterator[None]:
    """
    Hold port 50007 for one test: parallel test runs (tox run-parallel)
    take turns through a lock file; a port taken by anything else skips.
    """
    with open(os.path.join(tempfile.gettempdir(), "capserv-tests-50007.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (port_free(socket.SOCK_STREAM, 50007) and port_free(socket.SOCK_DGRAM, 50007)):
                pytest.skip("port 50007 is taken on this machine by something other than these tests")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_defaults_serve_the_lesson_clients_on_50007() -> None:
    """With no options the daemon serves TCP and UDP on 127.0.0.1:50007, and
    the lesson's clients, run unchanged, get right answers."""
    with lesson_port(), Daemon([]) as daemon:
        daemon.started()
        assert [(kind, addr) for kind, addr, _ in daemon.listening()] == [
            ("streams", "127.0.0.1:50007"),
            ("datagrams", "127.0.0.1:50007"),
        ]
        out = run_lesson_client("udp_client.py", "hello from the udp client")
        assert out == "Input lowercase sentence:HELLO FROM THE UDP CLIENT\n"
        out = run_lesson_client("tcp_client.py", "hello from the tcp client")
        assert out == "Input lowercase sentence:From Server:  HELLO FROM THE TCP CLIENT\n"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_several_listeners_at_once(tmp_path: Path) -> None:
    """Several --listen (IPv4, IPv6, UNIX, UDP) serve at once, each logged with its address."""
    sock = tmp_path / "capserv.sock"
    listen = [TCP0, UDP0, f"unix:{sock}"]
    if have_ipv6():
        listen += ["tcp6:0:interface=\\:\\:1", "udp:0:interface=\\:\\:1"]
    args = [a for d in listen for a in ("--listen", d)]
    with Daemon(args) as daemon:
        daemon.started()
        kinds = [kind for kind, _, _ in daemon.listening()]
        assert len(kinds) == len(listen)
        host, port = daemon.address(0)
        assert tcp_exchange(host, port, "tcp straße".encode()) == b"TCP STRASSE"
        host, port = daemon.address(1)
        assert udp_exchange(host, port, b"udp") == b"UDP"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(b"over unix")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"OVER UNIX"
        if have_ipv6():
            host, port = daemon.address(3)
            assert host == "::1"
            assert tcp_exchange(host, port, b"six") == b"SIX"
            host, port = daemon.address(4)
            assert udp_exchange(host, port, b"six") == b"SIX"
        daemon.signal(signal.SIGINT)
        assert daemon.wait() == 0
    assert "127.0.0.1:" in daemon.output and "closed after" in daemon.output
    assert not sock.exists(), "the UNIX socket's file is removed at stop"


def test_tls(tmp_path: Path) -> None:
    """An ssl: listener serves TLS with the given key and certificate."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    with Daemon(["--listen", f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}"]) as daemon:
        daemon.started()
        host, port = daemon.address(0)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall("secret straße".encode())
                reply = b""
                while len(reply) < len("SECRET STRASSE"):
                    reply += s.recv(100)
        assert reply == b"SECRET STRASSE"
        daemon.signal()
        assert daemon.wait() == 0


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_port_in_use_is_one_clear_line(kind: int) -> None:
    """A taken TCP or UDP port is one clear line, a non-zero status, no traceback."""
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen(1)
        port = holder.getsockname()[1]
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        other = "udp" if proto == "tcp" else "tcp"
        status, output = run_daemon(
            ["--listen", f"{other}:0:interface=127.0.0.1", "--listen", f"{proto}:{port}:interface=127.0.0.1"]
        )
    assert status != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(errors) == 1, output
    assert f"{proto}:{port}" in errors[0] and "in use" in errors[0]


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--idle-timeout=-1"], "--idle-timeout"),
        (["--max-connections=many"], "--max-connections"),
        (["--udp-rate=fast"], "--udp-rate"),
        (["--ipv6-prefix=129"], "--ipv6-prefix: '129' must be from 1 to 128"),
        (["--ipv4-prefix=0"], "--ipv4-prefix: '0' must be from 1 to 32"),
        (["--udp-byte-burst=1000"], "--udp-byte-burst: must be at least 65527"),
        (["--encoding=klingon"], "--encoding"),
        (["--drain-delay=soon"], "--drain-delay: 'soon' is not a number"),
        (["--drain-delay=nan"], "--drain-delay: 'nan' is not a number"),
        (["stray-word"], "capserv takes no arguments, only options, and 'stray-word' is not an option"),
        (["--listen", "bogus:1"], "bogus:1"),
        (["--listen", "udp:99999"], "udp:99999"),
        (["--listen", "udp:50007:interface=nowhere"], "nowhere"),
        (["--listen", "tcp:notaport"], "tcp:notaport"),
        (["--listen", "tcp:70000"], "port must be a number from 0 to 65535"),
        (["--listen", "tcp6:5000:interface=::1"], "interface=\\:\\:1"),
        (["--listen", "systemd:domain=INET:index=0"], "LISTEN_FDS is not set"),
        (["--listen", "unix:/nonexistent-folder/x.sock"], "folder /nonexistent-folder does not exist"),
        (["--listen", "ssl:0:privateKey=/nonexistent.pem"], "ssl:0"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_options_name_the_culprit(args: list[str], culprit: str) -> None:
    """A bad option is one line on stderr naming it, then a pointer to
    --help; nothing on stdout (no help text), nothing listens."""
    status, out, err = run_twistd(["-n", "--pidfile="], args)
    assert status != 0
    assert "Traceback" not in out + err
    if args == ["--no-such-option"]:
        # twistd's own parser reports unknown options of its subcommand.
        assert culprit in err
        return
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert culprit in lines[0], err
    assert lines[1] == "Try 'twistd capserv --help' for the options."
    for internal in ("Parameter type enforcement", "invalid literal", "Errno"):
        assert internal not in err


@pytest.mark.parametrize(
    "twistd_args, culprit",
    [
        (["--logfile=/nonexistent-folder/capserv.log"], "--logfile=/nonexistent-folder/capserv.log: folder"),
        (["--logfile=/"], "--logfile=/: / is a folder"),
        (["--pidfile=/nonexistent-folder/capserv.pid"], "--pidfile=/nonexistent-folder/capserv.pid: folder"),
        (["--pidfile=/"], "--pidfile=/: / is a folder"),
        (["--logger=no.such.module.observer"], "--logger=no.such.module.observer: cannot import it"),
        (["--logger=capserv.logs"], "--logger=capserv.logs: is not callable"),
    ],
)
def test_bad_twistd_options_name_the_culprit(twistd_args: list[str], culprit: str) -> None:
    """twistd's own options that capserv can check are one line on stderr before anything starts, exit 1."""
    status, out, err = run_twistd(["-n", "--pidfile=", *twistd_args], ["--listen", TCP0])
    assert status == 1
    assert out == ""
    assert err.strip().splitlines() == [err.strip()], err
    assert err.startswith(f"capserv: {culprit}"), err
    assert "write" in err


@pytest.mark.parametrize(
    "reactor, extra, expect",
    [
        (None, [], "on uvloop"),
        ("epoll", [], "EPollReactor"),
        (None, ["--no-uvloop"], "EPollReactor"),
        ("asyncio", [], "AsyncioSelectorReactor on asyncio"),
    ],
    ids=["default-uvloop", "epoll", "no-uvloop", "asyncio"],
)
def test_sigterm_mid_transfer_completes_the_reply(reactor: str | None, extra: list[str], expect: str) -> None:
    """On SIGTERM, on each reactor, new connections are refused while an open one is served to its end; exit 0."""
    args = ["--listen", TCP0, "--shutdown-timeout=20", *extra]
    with Daemon(args, reactor=reactor or "default") as daemon:
        started = daemon.wait_for(" started")
        assert expect in started
        host, port = daemon.address(0)
        part = b"abcdefghij" * 50000
        with socket.create_connection((host, port), timeout=20) as s:
            s.sendall(part)
            # The server has accepted and is serving before the stop begins.
            first = s.recv(10)
            assert first and part.upper().startswith(first)
            daemon.signal(signal.SIGTERM)
            daemon.wait_for("Stopping: no longer listening; 1 connection open")
            # New connections are refused...
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, port), timeout=5).close()
            # ...while the open one goes on being served to the end.
            s.sendall(part)
            s.shutdown(socket.SHUT_WR)
            assert first + read_all(s) == (part + part).upper()
        assert daemon.wait() == 0
    assert "capserv stopped" in daemon.output


def test_shutdown_timeout_closes_the_rest() -> None:
    """A client that stays silent is closed once --shutdown-timeout is up; the daemon does not wait for it."""
    with Daemon(["--listen", TCP0, "--shutdown-timeout=1", "--abort-grace=1"]) as daemon:
        daemon.started()
        host, port = daemon.address(0)
        with socket.create_connection((host, port), timeout=20) as s:
            s.sendall(b"hello")
            assert s.recv(5) == b"HELLO"
            started = time.monotonic()
            daemon.signal(signal.SIGTERM)
            # The silent client is closed once the timeout is up.
            assert s.recv(100) == b""
            assert daemon.wait() == 0
            elapsed = time.monotonic() - started
        # Generous bound: only that the daemon did not wait for the client.
        assert elapsed < 15
    assert "server shutting down" in daemon.output


def test_logfile_option_still_works(tmp_path: Path) -> None:
    """twistd's --logfile receives capserv's log lines."""
    logfile = tmp_path / "capserv.log"
    process = subprocess.Popen(
        [
            twistd_path(),
            "-n",
            "--pidfile=",
            f"--logfile={logfile}",
            "capserv",
            "--listen",
            TCP0,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if logfile.exists() and " started" in logfile.read_text():
                break
            time.sleep(0.1)
        text = logfile.read_text()
        assert "Listening for streams on 127.0.0.1:" in text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_json_lines_logger() -> None:
    """--logger=capserv.daemon.logs.json_lines writes one JSON object per line with
    the text and the plain fields, none unpersistable; fields are values
    (counts as ints, pids as a list), never pieces of the sentence; none of
    Twisted's port start/stop lines, from the supervisor or its worker."""
    import json

    process = subprocess.Popen(
        [
            twistd_path(),
            "-n",
            "--pidfile=",
            "--logger=capserv.daemon.logs.json_lines",
            "capserv",
            "--listen",
            TCP0,
            "--listen",
            UDP0,
            *(["--workers", "2"] if os.name == "posix" else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    processes = 2 if os.name == "posix" else 1
    try:
        events = []
        for line in process.stdout:
            assert not line.startswith("\x1e")
            assert "unpersistable" not in line
            events.append(json.loads(line))
            if sum(" started (" in e["text"] for e in events) == processes:
                break
        listening = next(e for e in events if e["text"].startswith("Listening for streams"))
        host, port = listening["address"].rsplit(":", 1)
        assert tcp_exchange(host, int(port), b"json") == b"JSON"
        for line in process.stdout:
            assert "unpersistable" not in line
            event = json.loads(line)
            if "closed after" in event["text"]:
                assert (event["bytes_in"], event["bytes_out"], event["reason"]) == (4, 4, "end of input")
                break
        else:
            raise AssertionError("no connection line")
        process.send_signal(signal.SIGTERM)
        events += [json.loads(line) for line in process.stdout]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        process.stdout.close()
    texts = [e["text"] for e in events]
    # Twisted's own legacy lines left are its signal lines (a log.msg on Twisted 23.10).
    legacy = [e["text"] for e in events if e["namespace"] == "log_legacy"]
    assert all(t.startswith("Received SIG") for t in legacy), legacy
    assert not [t for t in texts if " starting on " in t or " Closed)" in t], texts
    # twistd's banner comes once, from the supervisor: workers are not twistd.
    assert sum(t.startswith("twistd ") and t.endswith(" starting up.") for t in texts) == 1, texts
    assert sum(t.startswith("reactor class: ") for t in texts) == 1, texts
    stops = [e for e in events if e["text"].startswith("capserv stopped: ")]
    assert len(stops) == processes, texts
    for stop in stops:
        assert not {"tcp", "udp", "away", "whose", "how"} & set(stop), stop
        assert type(stop["tcp_connections"]) is int and type(stop["datagrams_answered"]) is int, stop
        assert stop["forced"] is False
    assert sum(stop["tcp_connections"] for stop in stops) == 1
    # Only the supervisor logs Twisted's line for the signal; a worker stops quietly.
    received = [e for e in events if e["text"].startswith("Received SIGTERM")]
    # (At most one: Twisted logs it from inside its signal handler, which may run mid-write.)
    assert len(received) <= 1 and not [e for e in received if "worker" in e], received
    listening = [e for e in events if e["text"].startswith("Listening for ")]
    assert {e["what"] for e in listening} == {"streams", "datagrams"}, listening
    if processes == 2:
        (started,) = [e for e in events if e["text"].startswith("Started 1 more worker: ")]
        assert started["workers"] == 1 and len(started["pids"]) == 1 and type(started["pids"][0]) is int
        assert started["text"] == f"Started 1 more worker: {started['pids'][0]}"


@pytest.mark.skipif(os.name != "posix", reason="--workers needs a POSIX system")
def test_workers_share_ports_and_stop_together() -> None:
    """--workers 2 spreads connections over both processes on the same ports, and a stop stops both."""
    import re

    with Daemon(["--workers", "2", "--listen", TCP0, "--listen", UDP0]) as daemon:
        daemon.wait_for("Started 1 more worker:")
        # Both processes are up once each has logged its start.
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.output.count(" started (") == 2
        host, port = daemon.address(0)
        _, uport = daemon.address(1)
        for i in range(40):
            assert tcp_exchange(host, port, f"conn {i}".encode()) == f"CONN {i}".encode()
            assert udp_exchange(host, uport, f"dgram {i}".encode()) == f"DGRAM {i}".encode()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    served = [int(n) for n in re.findall(r"capserv stopped: (\d+) TCP connections?", daemon.output)]
    assert len(served) == 2 and sum(served) == 40
    assert all(n > 0 for n in served), f"one worker got everything: {served}"


@pytest.mark.skipif(os.name != "posix", reason="--workers needs a POSIX system")
def test_abbreviated_options_reach_workers_as_the_full_ones() -> None:
    """--work 2 --lis --metr (twistd's option parser takes any unambiguous
    prefix) make one supervisor with one worker, both serving the one
    listener, and metrics served once: workers are told parsed settings,
    never a filtered command line (which made every worker a supervisor
    of its own, without end)."""
    with Daemon(["--work", "2", "--lis", TCP0, "--metr", TCP0]) as daemon:
        daemon.wait_for("Started 1 more worker:")
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        host, port = daemon.address(0)
        _, metrics_port = daemon.address(1)
        for i in range(20):
            assert tcp_exchange(host, port, f"conn {i}".encode()) == f"CONN {i}".encode()
        deadline = time.monotonic() + 20
        while scrape(metrics_port).get("capserv_connections_total") != 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        figures = scrape(metrics_port)
        time.sleep(1)  # a worker turned supervisor would have started its own by now
        assert daemon.output.count("more worker") == 1, daemon.output
        assert daemon.output.count(" started (") == 2, daemon.output
        assert (figures["capserv_connections_total"], figures["capserv_workers"]) == (20, 2), figures
        assert daemon.output.count("Listening for metrics") == 1, daemon.output
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_text_lines_logger_writes_twistds_lines() -> None:
    """--logger=capserv.logs.text_lines, the documented way to the cheaper
    text log, writes twistd's own line format (time, [namespace#level],
    message), without Twisted's start and stop line for each port."""
    with Daemon(["--listen", TCP0, "--listen", UDP0], twistd_args=["--logger=capserv.logs.text_lines"]) as daemon:
        line = daemon.wait_for("Listening for streams on 127.0.0.1:")
        assert re.match(r"^\d{4}-\d\d-\d\dT\S+ \[capserv\.listen#info\] Listening for streams on ", line), line
        daemon.started()  # SIGTERM is a graceful stop from the start line on
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    # Twisted's own lines for each port ("... starting on N", "(UDP Port N Closed)") are left out.
    assert " starting on " not in daemon.output and " Closed)" not in daemon.output, daemon.output
    assert "capserv stopped: 0 TCP connections served" in daemon.output


def test_workers_refuse_unshareable_listeners(tmp_path: Path) -> None:
    """A listener --workers cannot share is a usage error naming it."""
    status, output = run_daemon(["--workers", "2", "--listen", f"unix:{tmp_path / 's.sock'}"])
    assert status != 0
    assert "--workers shares only" in output.strip().splitlines()[0]


# -- start failures, the reactor, the forced stop (issue: the daemon rebuilt) ----------


def test_daemon_mode_start_failure_reaches_the_terminal(tmp_path: Path) -> None:
    """Without -n, a taken port ends the start at once with one line on
    stderr, a non-zero status and no pid file left behind."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        status, _out, err = run_twistd(
            ["--pidfile=d.pid", "--logfile=d.log"],
            ["--listen", TCP0, "--listen", f"tcp:{port}:interface=127.0.0.1"],
            timeout=20,
            cwd=str(tmp_path),
        )
    assert status != 0
    assert err.strip().splitlines() == [
        f"capserv: cannot listen on 'tcp:{port}:interface=127.0.0.1': 127.0.0.1:{port} is already in use; "
        "stop what listens there or choose another port"
    ]
    assert not (tmp_path / "d.pid").exists()


def test_logfile_start_failure_reaches_stderr(tmp_path: Path) -> None:
    """With -n and --logfile, a start failure is still a line on the terminal."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        status, _out, err = run_twistd(
            ["-n", "--pidfile=", f"--logfile={tmp_path / 'capserv.log'}"],
            ["--listen", f"udp:{port}:interface=127.0.0.1"],
        )
    assert status != 0
    assert f"cannot listen on 'udp:{port}:interface=127.0.0.1'" in err
    assert len(err.strip().splitlines()) == 1


CONTAINER_ARGS = ["--listen", TCP0, "--listen", UDP0, "--metrics", TCP0]


@pytest.mark.parametrize(
    "reactor, extra, expect, processes",
    [
        ("default", [], "AsyncioSelectorReactor on uvloop.Loop", 1),
        ("default", ["--metrics", TCP0], "AsyncioSelectorReactor on uvloop.Loop", 1),
        ("default", ["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--metrics", TCP0], "on uvloop.Loop", 1),
        ("default", ["--no-uvloop"], "EPollReactor", 1),
        ("default", ["--no-uvloop", "--metrics", TCP0], "EPollReactor", 1),
        ("epoll", ["--metrics", TCP0], "EPollReactor", 1),
        ("asyncio", ["--metrics", TCP0], "AsyncioSelectorReactor on asyncio.unix_events", 1),
        ("default", ["--workers", "2", "--metrics", TCP0], "AsyncioSelectorReactor on uvloop.Loop", 2),
        ("epoll", ["--workers", "2"], "EPollReactor", 2),
    ],
    ids=[
        "default",
        "metrics",
        "haproxy-metrics",
        "no-uvloop",
        "no-uvloop-metrics",
        "epoll-metrics",
        "asyncio-metrics",
        "workers-metrics",
        "epoll-workers",
    ],
)
def test_the_reactor_named_is_the_one_that_runs(reactor: str, extra: list[str], expect: str, processes: int) -> None:
    """Whatever else is on the command line (--metrics imports a module that
    installs the default reactor; --workers starts more processes), every
    process runs the reactor the start line names, and the one chosen."""
    with Daemon(["--listen", TCP0, *extra], reactor=reactor) as daemon:
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < processes and time.monotonic() < deadline:
            time.sleep(0.1)
        starts = [line for line in daemon.lines if " started (" in line and "capserv " in line]
        assert len(starts) == processes, daemon.output
        for line in starts:
            assert expect in line, line
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert " object at 0x" not in daemon.output
    assert "Traceback" not in daemon.output


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])
def test_second_signal_ends_the_stop_at_once(workers: int) -> None:
    """A second SIGTERM during a graceful stop aborts what is left at once:
    no traceback, no waiting out --shutdown-timeout, exit by the signal."""
    args = ["--listen", TCP0, "--shutdown-timeout=60", "--workers", str(workers)]
    with Daemon(args) as daemon:
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        host, port = daemon.address(0)
        clients = []
        try:
            for _ in range(4 * workers):
                s = socket.create_connection((host, port), timeout=20)
                s.sendall(b"hold on")
                assert s.recv(7) == b"HOLD ON"
                clients.append(s)
            daemon.signal(signal.SIGTERM)
            daemon.wait_for("Stopping: no longer listening")
            started = time.monotonic()
            daemon.signal(signal.SIGTERM)
            status = daemon.wait(20)
            elapsed = time.monotonic() - started
            for s in clients:
                try:
                    rest = s.recv(100)
                except ConnectionResetError:
                    rest = b""
                assert rest == b""
        finally:
            for s in clients:
                s.close()
    assert status == -signal.SIGTERM
    assert elapsed < 15  # far from the 60 s timeout; only that it did not wait
    assert "Traceback" not in daemon.output, daemon.output
    assert "ReactorNotRunning" not in daemon.output
    assert "Second stop signal: aborting" in daemon.output


@pytest.mark.skipif(os.name != "posix", reason="--workers needs a POSIX system")
def test_a_worker_that_dies_is_replaced() -> None:
    """Killing a worker makes the supervisor start another on the same
    ports; a stop still stops all of them."""
    import re

    with Daemon(["--workers", "2", "--listen", TCP0]) as daemon:
        line = daemon.wait_for("Started 1 more worker:")
        pid = int(re.findall(r"worker: (\d+)", line)[0])
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        daemon.wait_for(f"Worker 1 (pid {pid}) exited with signal 9")
        deadline = time.monotonic() + 20
        while daemon.output.count(" started (") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.output.count(" started (") == 3, daemon.output
        host, port = daemon.address(0)
        for i in range(10):
            assert tcp_exchange(host, port, f"again {i}".encode()) == f"AGAIN {i}".encode()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert daemon.output.count("capserv stopped") == 2


def _all_started(daemon: Daemon, processes: int) -> None:
    """Wait until ``processes`` start lines are in the daemon's output."""
    deadline = time.monotonic() + 20
    while daemon.output.count(" started (") < processes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.output.count(" started (") == processes, daemon.output


@pytest.mark.skipif(os.name != "posix", reason="--workers needs a POSIX system")
def test_ctrl_c_to_the_process_group_is_one_graceful_stop() -> None:
    """A terminal's Ctrl-C signals every process of --workers at once: that
    is one graceful stop (open connections finish), not a forced one; and
    the supervisor drains its own connections while the workers drain."""
    args = ["--workers", "2", "--listen", TCP0, "--shutdown-timeout=30"]
    with Daemon(args, new_session=True) as daemon:
        _all_started(daemon, 2)
        host, port = daemon.address(0)
        clients = []
        try:
            for i in range(8):
                s = socket.create_connection((host, port), timeout=20)
                s.sendall(f"part one {i} ".encode())
                clients.append(s)
            for i, s in enumerate(clients):
                expected = f"PART ONE {i} ".encode()
                got = b""
                while len(got) < len(expected):
                    got += s.recv(100)
                assert got == expected
            os.killpg(daemon.process.pid, signal.SIGINT)
            daemon.wait_for("Stopping: no longer listening")
            for i, s in enumerate(clients):
                s.sendall(f"part two {i}".encode())
                s.shutdown(socket.SHUT_WR)
                assert read_all(s) == f"PART TWO {i}".encode()
            assert daemon.wait() == 0
        finally:
            for s in clients:
                s.close()
    assert "Second stop signal" not in daemon.output
    assert daemon.output.count("capserv stopped") == 2


@pytest.mark.skipif(os.name != "posix", reason="--workers needs a POSIX system")
def test_workers_log_whole_lines_to_one_logfile(tmp_path: Path) -> None:
    """With --workers and --logfile, every process's lines reach the one
    file whole: one close line per connection, a start line per process,
    worker lines marked with the worker's number."""
    logfile = tmp_path / "capserv.log"
    with Daemon(["--workers", "3", "--listen", TCP0], twistd_args=[f"--logfile={logfile}"]) as daemon:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if logfile.exists() and logfile.read_text().count(" started (") == 3:
                break
            time.sleep(0.1)
        text = logfile.read_text()
        match = re.search(r"Listening for streams on (127\.0\.0\.1):(\d+)", text)
        assert match, text
        host, port = match.group(1), int(match.group(2))
        for i in range(60):
            assert tcp_exchange(host, port, f"line {i}".encode()) == f"LINE {i}".encode()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    lines = logfile.read_text().splitlines()
    closes = [line for line in lines if " closed after " in line]
    assert len(closes) == 60, "\n".join(lines)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\S+ \[", line) for line in lines), "\n".join(lines)
    assert sum(" started (" in line for line in lines) == 3
    assert any(line.split(" ", 1)[1].startswith("[worker 1]") for line in lines)


@pytest.mark.parametrize(
    "options, first_bytes",
    [
        # Half a UTF-8 character: capserv holds it and has nothing to send.
        (["--no-native", "--listen", "tcp:0:interface=127.0.0.1"], b"\xc3"),
        # HAProxy ends every check-send-proxy health check so: a PROXY v2
        # LOCAL header, then a reset.
        (["--listen", "haproxy:tcp:0:interface=127.0.0.1"], b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"),
    ],
    ids=["twisted-transport", "haproxy-health-check"],
)
def test_a_reset_connection_does_not_linger(options: list[str], first_bytes: bytes) -> None:
    """A connection its client resets right after sending something that
    needs no reply does not stay open until the idle timeout, nor hold up a
    graceful stop (on uvloop, Twisted's transports were never told of such
    a reset)."""
    with Daemon([*options, "--shutdown-timeout=20"]) as daemon:
        daemon.started()
        for _ in range(3):
            with socket.create_connection(daemon.address(0), timeout=10) as s:
                s.sendall(first_bytes)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.5)
        daemon.signal()
        assert daemon.wait(30) == 0
    assert "open, waiting" not in daemon.output, daemon.output
    assert "server shutting down" not in daemon.output, daemon.output
