"""
Operations recipes, each exercised for real on loopback: Prometheus
metrics, two capserv instances behind HAProxy with the PROXY protocol,
systemd socket activation (inherited sockets, as systemd passes them), and
the Containerfile's commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.python import usage

from ..support.attacks import exchange
from ..support.daemon import TCP0, UDP0, Daemon, scrape, twistd_path
from ..support.loopback import tcp_exchange, udp_exchange
from .test_daemon import _all_started, lesson_port

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


# -- metrics -------------------------------------------------------------------


def test_metrics_move_with_traffic() -> None:
    """The Prometheus counters follow the traffic served."""
    pytest.importorskip("prometheus_client")
    args = ["--listen", TCP0, "--listen", UDP0, "--metrics", TCP0, "--max-connections=2"]
    args += ["--udp-rate-loopback", "--udp-rate=1", "--udp-burst=1"]
    with Daemon(args) as daemon:
        daemon.started()
        host, port = daemon.address(0)
        _, uport = daemon.address(1)
        _, mport = daemon.address(2)
        before = scrape(mport)
        assert before["capserv_connections_total"] == 0
        assert before["capserv_workers"] == 1
        for _i in range(3):
            assert tcp_exchange(host, port, b"abc") == b"ABC"
        assert udp_exchange(host, uport, b"udp") == b"UDP"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for _ in range(2):
                u.sendto(b"over the rate", (host, uport))
        held = [socket.create_connection((host, port)) for _ in range(2)]
        time.sleep(0.3)
        over = socket.create_connection((host, port))
        over.settimeout(5)
        try:
            assert over.recv(10) == b""
        except ConnectionResetError:
            pass
        over.close()
        time.sleep(0.3)
        after = scrape(mport)
        for s in held:
            s.close()
        daemon.signal()
        assert daemon.wait() == 0
    assert after["capserv_connections_total"] == 5
    assert after["capserv_connections_active"] == 2
    assert after['capserv_connections_refused_total{limit="max_connections"}'] == 1
    assert after['capserv_received_bytes_total{transport="tcp"}'] == 9
    assert after['capserv_sent_bytes_total{transport="tcp"}'] == 9
    assert after["capserv_datagrams_received_total"] == 3
    assert after["capserv_datagrams_sent_total"] == 1
    assert after['capserv_datagrams_dropped_total{reason="rate_limit"}'] == 2
    assert after['capserv_datagrams_dropped_total{reason="low_port"}'] == 0


def _still_served(s: socket.socket) -> bool:
    """Whether an open connection is still answered (its process alive)."""
    try:
        s.sendall(b"ping")
        return s.recv(10) == b"PING"
    except OSError:
        return False


def _scrape_until(port: int, check: Callable[[dict[str, float]], bool], timeout: float = 20.0) -> dict[str, float]:
    """Scrape until ``check`` holds (bounded); the metrics that passed."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if check(metrics):
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {metrics}")
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs Linux SO_REUSEPORT")
def test_metrics_add_up_every_worker() -> None:
    """With --workers 2, /metrics counts the sessions and datagrams of both
    processes, exactly; a worker killed outright keeps its counts in the
    totals while its open connections leave the gauges, and its replacement
    joins them; the folder of metric files is gone after the stop."""
    pytest.importorskip("prometheus_client")
    sessions, datagrams, held_count = 40, 20, 16
    with Daemon(["--workers", "2", "--listen", TCP0, "--listen", UDP0, "--metrics", TCP0]) as daemon:
        line = daemon.wait_for("Started 1 more worker:")
        worker = int(re.findall(r"worker: (\d+)", line)[0])
        _all_started(daemon, 2)
        host, port = daemon.address(0)
        _, uport = daemon.address(1)
        _, mport = daemon.address(2)
        payloads = [f"session {i}".encode() for i in range(sessions)]
        for payload in payloads:
            assert tcp_exchange(host, port, payload) == payload.upper()
        for i in range(datagrams):
            assert udp_exchange(host, uport, b"datagram %d" % i) == b"DATAGRAM %d" % i
        totals = _scrape_until(
            mport,
            lambda m: m["capserv_connections_total"] >= sessions and m["capserv_datagrams_sent_total"] >= datagrams,
        )
        assert totals["capserv_connections_total"] == sessions
        assert totals['capserv_received_bytes_total{transport="tcp"}'] == sum(map(len, payloads))
        assert totals["capserv_datagrams_received_total"] == datagrams
        assert totals["capserv_datagrams_sent_total"] == datagrams
        assert totals["capserv_workers"] == 2
        folder = daemon.wait_for("Metrics of every worker add up in ").split(" add up in ", 1)[1]
        assert os.path.isdir(folder)

        held = []
        try:
            for _ in range(held_count):
                s = socket.create_connection((host, port), timeout=10)
                held.append(s)
                s.sendall(b"held")
                assert s.recv(10) == b"HELD"
            _scrape_until(mport, lambda m: m["capserv_connections_active"] >= held_count)
            os.kill(worker, signal.SIGKILL)
            daemon.wait_for(f"Worker 1 (pid {worker}) exited with signal 9")
            alive = sum(_still_served(s) for s in held)
            assert 0 < alive < held_count, "the connections did not spread over both processes"
            after = scrape(mport)
            # The dead worker's open connections are not counted as open...
            assert after["capserv_connections_active"] == alive
            # ...and everything it served still counts.
            assert after["capserv_connections_total"] == sessions + held_count
            assert after["capserv_datagrams_received_total"] == datagrams
            # The replacement reports in; the totals never went down meanwhile.
            replaced = _scrape_until(
                mport,
                lambda m: m["capserv_workers"] == 2 or m["capserv_connections_total"] != sessions + held_count,
            )
            assert replaced["capserv_connections_total"] == sessions + held_count
            assert replaced["capserv_connections_active"] == alive
        finally:
            for s in held:
                s.close()
        daemon.signal()
        assert daemon.wait() == 0
    assert not os.path.exists(folder)


def test_metrics_option_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, --metrics is a usage error with the install line."""
    import importlib.util

    import capserv.tap
    from capserv.tap import Options

    real = importlib.util.find_spec
    monkeypatch.setattr(
        capserv.tap.importlib.util, "find_spec", lambda name: None if name == "prometheus_client" else real(name)
    )
    with pytest.raises(usage.UsageError, match=r"pip install 'capserv\[metrics\]'"):
        Options().parseOptions(["--metrics", TCP0])


# -- HAProxy in front ----------------------------------------------------------------


def session(port: int, source: str, payload: bytes) -> bytes:
    return exchange("127.0.0.1", port, payload, source)


HAPROXY_CONFIG = """
global
    maxconn 2000
    stats socket {admin} level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    retries 3
    option redispatch 1
frontend capserv
    bind 127.0.0.1:{frontend}
    default_backend capservs
backend capservs
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
    server b 127.0.0.1:{b} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
"""


def start_haproxy(binary: str, tmp_path: Path, a_port: int, b_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start HAProxy in front of two capservs; (process, frontend port).

    HAProxy needs a concrete port; one that another process takes between
    choosing and binding only makes HAProxy exit, and another is tried.
    """
    config = tmp_path / "haproxy.cfg"
    admin = tmp_path / "admin.sock"
    for _ in range(5):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            frontend = int(probe.getsockname()[1])
        config.write_text(HAPROXY_CONFIG.format(frontend=frontend, a=a_port, b=b_port, admin=admin))
        proxy = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while proxy.poll() is None:
            try:
                if session(frontend, "127.0.0.1", b"ready?") == b"READY?":
                    return proxy, frontend
            except OSError:
                pass
            if time.monotonic() > deadline:
                proxy.kill()
                proxy.wait(10)
                raise AssertionError("haproxy did not come up")
            time.sleep(0.1)
    raise AssertionError("haproxy could not bind a frontend port")


@pytest.fixture
def haproxy_pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two capservs on ports of their own choosing behind one HAProxy."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (.ci/run installs it)")
    common = ["--max-connections-per-ip=2", "--shutdown-timeout=5"]
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Daemon(["--listen", "haproxy:tcp:0:interface=127.0.0.1", *common]))
        b = stack.enter_context(Daemon(["--listen", "haproxy:tcp:0:interface=127.0.0.1", *common]))
        a.started()
        b.started()
        proxy, frontend = start_haproxy(binary, tmp_path, a.address(0)[1], b.address(0)[1])
        try:
            time.sleep(0.5)  # both servers seen healthy
            yield a, b, frontend, tmp_path / "admin.sock"
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(10)
            # Both stop at once (each waits its --shutdown-timeout for the
            # connections still open), not one after the other.
            for daemon in (a, b):
                daemon.signal(signal.SIGTERM)
            for daemon in (a, b):
                daemon.wait(20)


def test_haproxy_passes_the_real_client_address(haproxy_pair) -> None:  # type: ignore[no-untyped-def]
    """Behind HAProxy with the PROXY protocol, capserv logs the real client's address."""
    a, b, frontend, _ = haproxy_pair
    with socket.socket() as s:
        s.settimeout(10)
        s.bind(("127.0.0.2", 0))
        client_port = s.getsockname()[1]
        s.connect(("127.0.0.1", frontend))
        s.sendall(b"via haproxy")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"VIA HAPROXY"
    # Connection lines are written in batches, within a second.
    needle = f"127.0.0.2:{client_port} closed after"
    deadline = time.monotonic() + 10
    while needle not in a.output + b.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert needle in a.output + b.output


def test_haproxy_per_ip_limit_sees_real_clients(haproxy_pair) -> None:  # type: ignore[no-untyped-def]
    """Behind HAProxy, the per-IP limit counts real clients, not the proxy."""
    a, b, frontend, _ = haproxy_pair
    held = []
    try:
        for i in range(4):  # two on each backend, the per-IP limit
            s = socket.socket()
            s.settimeout(10)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", frontend))
            s.sendall(b"held %d" % i)
            assert s.recv(100) == b"HELD %d" % i
            held.append(s)
        # A fifth from the same client is over the limit wherever it lands...
        assert session(frontend, "127.0.0.2", b"one too many") == b""
        # ...while another client is served: the limit counts real clients,
        # not the proxy's address.
        assert session(frontend, "127.0.0.3", b"someone else") == b"SOMEONE ELSE"
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert "max_connections_per_ip reached" in a.output + b.output


def haproxy_command(admin: Path, command: str) -> str:
    """One command on HAProxy's runtime API (its admin socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(admin))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_stopping_one_instance_loses_no_new_sessions(haproxy_pair) -> None:  # type: ignore[no-untyped-def]
    """The documented upgrade: drain the instance in HAProxy, then SIGTERM it;
    its open sessions finish, new ones go to the other instance."""
    a, _b, frontend, admin = haproxy_pair
    results: list[bool] = []

    def sessions() -> None:
        for i in range(300):
            payload = b"session %d" % i
            try:
                results.append(session(frontend, "127.0.0.1", payload) == payload.upper())
            except OSError:
                results.append(False)

    worker = threading.Thread(target=sessions)
    worker.start()
    time.sleep(0.3)
    assert haproxy_command(admin, "set server capservs/a state drain").strip() == ""
    time.sleep(0.2)
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    worker.join(120)
    assert len(results) == 300
    assert all(results), f"{results.count(False)} sessions failed"


# -- systemd socket activation ---------------------------------------------------------

# systemd passes sockets from fd 3 on, with LISTEN_FDS, LISTEN_PID (the
# service's own pid) and LISTEN_FDNAMES; this wrapper does the same and then
# becomes twistd.
SYSTEMD_WRAPPER = """
import os, sys
fds = [int(f) for f in sys.argv[1].split(",")]
for target, fd in enumerate(fds, start=3):
    os.dup2(fd, target)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="capserv-tcp:capserv-udp")
os.execv(sys.argv[2], sys.argv[2:])
"""
# (for python itself, argv[2:] is [python, "-c", code, ...])


def test_systemd_socket_activation_tcp_and_udp() -> None:
    """Sockets passed as systemd passes them (LISTEN_FDS) are served, TCP and UDP."""
    stream = socket.socket()
    stream.bind(("127.0.0.1", 0))
    stream.listen(16)
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.bind(("127.0.0.1", 0))
    tcp_port, udp_port = stream.getsockname()[1], datagram.getsockname()[1]
    fds = f"{stream.fileno()},{datagram.fileno()}"
    command = [sys.executable, "-c", SYSTEMD_WRAPPER, fds, twistd_path(), "-n", "--pidfile=", "capserv"]
    command += ["--listen", "systemd:domain=INET:index=0", "--listen", "udp:systemd=1"]
    process = subprocess.Popen(
        command,
        pass_fds=(stream.fileno(), datagram.fileno()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # systemd keeps its copies; the test's are no longer needed.
    stream.close()
    datagram.close()
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if " started" in line:
                break
        assert " started" in "".join(lines), "".join(lines)
        assert tcp_exchange("127.0.0.1", tcp_port, b"activated") == b"ACTIVATED"
        assert udp_exchange("127.0.0.1", udp_port, b"activated udp") == b"ACTIVATED UDP"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
        process.stdout.close()
    assert code == 0, "".join(lines)
    text = "".join(lines)
    assert f"127.0.0.1:{tcp_port} (systemd:domain=INET:index=0)" in text
    assert f"127.0.0.1:{udp_port} (udp:systemd=1)" in text


def test_udp_systemd_without_sockets_is_a_usage_error() -> None:
    """udp:systemd=N outside socket activation is a usage error that says so."""
    from capserv.tap import Options

    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with pytest.raises(usage.UsageError, match="LISTEN_FDS is not set"):
            Options().parseOptions(["--listen", "udp:systemd=0"])
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_systemd_units_in_docs_use_real_options() -> None:
    """The documented unit's capserv arguments parse, with sockets passed as
    its .socket unit would pass them; it is a Type=notify unit running
    twistd in the foreground, and its stop timeout covers the drain delay,
    the shutdown timeout and the abort grace."""
    service = (ROOT / "docs" / "systemd" / "capserv.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", service, re.M))
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    exec_start = re.search(r"ExecStart=(.*?)(?<!\\)\n", service, re.S)
    assert exec_start is not None
    words = exec_start.group(1).replace("\\\n", " ").split()
    args = words[words.index("capserv") + 1 :]
    twistd_args = words[1 : words.index("capserv")]
    assert "--nodaemon" in twistd_args or "-n" in twistd_args, "Type=notify needs twistd in the foreground"
    socket_unit = (ROOT / "docs" / "systemd" / "capserv.socket").read_text()
    assert "ListenStream=" in socket_unit and "ListenDatagram=" in socket_unit
    stream = socket.socket()
    stream.bind(("127.0.0.1", 0))
    stream.listen(1)
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.bind(("127.0.0.1", 0))
    check = (
        "from capserv.tap import Options; o = Options(); o.parseOptions(__import__('sys').argv[1:]); "
        "print([listener.description for listener in o['listen']]); "
        "print(o['drain-delay'] + o['config'].shutdown_timeout + o['config'].abort_grace)"
    )
    fds = f"{stream.fileno()},{datagram.fileno()}"
    try:
        result = subprocess.run(
            [sys.executable, "-c", SYSTEMD_WRAPPER, fds, sys.executable, "-c", check, *args],
            pass_fds=(stream.fileno(), datagram.fileno()),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stream.close()
        datagram.close()
    assert result.returncode == 0, result.stderr
    listeners, stop_time = result.stdout.strip().splitlines()
    assert listeners == "['systemd:domain=INET:index=0', 'udp:systemd=1']"
    assert float(settings["TimeoutStopSec"]) > float(stop_time)


# -- the container recipe -----------------------------------------------------------------


def containerfile_command(instruction: str) -> list[str]:
    text = (ROOT / "Containerfile").read_text()
    match = re.search(rf"^{instruction}\b.*?(\[.*\])\s*$", text, re.M)
    assert match is not None, f"no {instruction} in the Containerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def test_container_command_starts_the_daemon_and_health_check_passes() -> None:
    """The Containerfile's CMD starts capserv on uvloop and its HEALTHCHECK passes."""
    command = containerfile_command("CMD")
    health = containerfile_command("HEALTHCHECK")
    assert command[0] == "twistd" and health[0] == "capserv-client"
    bindir = Path(twistd_path()).parent
    command[0] = str(bindir / "twistd")
    health[0] = str(bindir / "capserv-client")
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^USER capserv$", text, re.M), "the container runs as a non-root user"
    with lesson_port():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if "started" in line:
                    break
            # The reactor capserv chooses, although --metrics and --logger are given.
            assert "on uvloop.Loop" in line, line
            assert subprocess.run(health, capture_output=True, timeout=30).returncode == 0
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            process.stdout.close()
