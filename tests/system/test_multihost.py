"""
Several hosts behind real load balancers, each host a Linux network
namespace (root only, as in CI): a client namespace, a load balancer
running HAProxy (TCP, PROXY protocol v2) and nftables (UDP, DNAT to the
ready hosts in turn), and two capserv hosts behind it.  The balancers run
the files docs/operations.rst shows (``docs/multihost/``).

What it proves: the clients' own addresses reach capserv's logs and limits
over both paths, and a rolling restart of the two hosts under load (drain
delay, readiness taking each host out of both balancers first) loses no
TCP session and no UDP exchange the client's retries do not cover.  The
restart's figures are printed (``pytest -s``; ``tox -e multihost`` shows
them).

Without root, ``ip``, ``nft`` or ``haproxy`` the tests fail with one line
saying what is missing: CI has them all (``.ci/run``), so a silent skip there
would hide the suite.  ``tox -e multihost`` runs this file; the other
environments leave it out.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ..support.attacks import connect
from ..support.daemon import Daemon
from ..support.loopback import read_all
from ..support.netns import CLIENT, HOSTS, OTHER_CLIENT, VIP, Netns, Topology, remove_stale
from ..support.netns_balancers import METRICS_PORT, HAProxy, UdpBackends, wait_until

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(150)]

#: The service port, on the balancer's VIP and on each host (haproxy.cfg, udp.nft).
PORT = 50007
#: How each host runs capserv (docs/operations.rst shows the same line).
CAPSERV = ["--listen", f"haproxy:tcp:{PORT}", "--listen", f"udp:{PORT}", "--metrics", f"tcp:{METRICS_PORT}"]
#: HAProxy's names for the hosts, in HOSTS' order.
NAMES = ("host1", "host2")


def missing() -> list[str]:
    """What this machine lacks to run the suite, in words for the person running it."""
    lacking = []
    if not sys.platform.startswith("linux"):
        lacking.append("Linux")
    elif os.geteuid() != 0:
        lacking.append("root (to make network namespaces)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("haproxy", "haproxy")):
        if shutil.which(tool) is None:
            lacking.append(f"{tool} (apt-get install {package})")
    return lacking


@dataclass
class Network:
    """The namespaces and the balancers in front of the hosts."""

    topology: Topology
    haproxy: HAProxy
    udp: UdpBackends

    @property
    def client(self) -> Netns:
        return self.topology.client


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The topology with HAProxy and the UDP rules running; everything removed at the end."""
    lacking = missing()
    if lacking:
        pytest.fail(f"tests/system/test_multihost.py needs {', '.join(lacking)}; .ci/run installs them", pytrace=False)
    remove_stale()
    folder = tmp_path_factory.mktemp("multihost")
    topology = Topology()
    with contextlib.ExitStack() as stack:
        stack.callback(topology.destroy)
        topology.build()
        haproxy = HAProxy(topology.lb, folder / "haproxy.log")
        stack.callback(haproxy.stop)
        udp = UdpBackends(topology.lb, HOSTS, folder)
        udp.start()
        stack.callback(udp.stop)
        yield Network(topology, haproxy, udp)


def start_host(network: Network, index: int, options: list[str]) -> Daemon:
    """Start capserv on host ``index`` (0 or 1); return it once it has started."""
    with network.topology.hosts[index].entered():
        daemon = Daemon([*CAPSERV, *options])
    try:
        return daemon.started()
    except AssertionError:
        daemon.__exit__(None, None, None)
        raise AssertionError(
            f"host{index + 1} did not start (status {daemon.process.returncode}):\n{daemon.output}"
        ) from None


def in_rotation(network: Network, hosts: list[str]) -> None:
    """Wait until both balancers send to exactly ``hosts``."""
    network.haproxy.wait_for(
        {name: ("UP" if address in hosts else "DOWN") for name, address in zip(NAMES, HOSTS, strict=True)}
    )
    network.udp.wait_for(hosts)


@contextlib.contextmanager
def serving(network: Network, *options: str) -> Iterator[list[Daemon]]:
    """Both hosts serving with ``options``, in both balancers' rotation; stopped at the end."""
    hosts: list[Daemon] = []
    try:
        for index in range(len(HOSTS)):
            hosts.append(start_host(network, index, list(options)))
        in_rotation(network, list(HOSTS))
        yield hosts
    finally:
        for daemon in hosts:
            daemon.signal(signal.SIGTERM)
        for daemon in hosts:
            daemon.__exit__(None, None, None)


def wait_for_line(daemons: list[Daemon], needle: str, timeout: float = 10.0) -> str:
    """A log line of any of ``daemons`` containing ``needle`` (connection lines come within a second)."""
    found: list[str] = []

    def seen() -> bool:
        found[:] = [line for daemon in daemons for line in daemon.output.splitlines() if needle in line]
        return bool(found)

    wait_until(seen, timeout, f"a log line with {needle!r}")
    return found[0]


def client_socket(client: Netns, kind: socket.SocketKind, source: str = CLIENT) -> socket.socket:
    """A socket of the client namespace, bound to ``source``."""
    with client.entered():
        s = socket.socket(socket.AF_INET, kind)
    s.bind((source, 0))
    s.settimeout(10)
    return s


# -- the clients' addresses ------------------------------------------------------------


def test_client_addresses_reach_logs_and_limits(network: Network) -> None:
    """
    Through HAProxy (PROXY v2) and through nftables' DNAT, capserv sees the
    client's own address: a TCP session is logged with the client's address
    and port; the per-IP connection limit and the UDP rate limit hold one
    client back (refusals and drops logged with its address) while another
    client is served.
    """
    limits = ["--max-connections-per-ip=1", "--udp-rate=0.01", "--udp-burst=1"]
    with serving(network, *limits) as hosts:
        client = network.client
        # TCP: one session, logged with the client's address and port.
        with client_socket(client, socket.SOCK_STREAM) as s:
            s.connect((VIP, PORT))
            port = s.getsockname()[1]
            s.sendall(b"through haproxy")
            s.shutdown(socket.SHUT_WR)
            assert read_all(s) == b"THROUGH HAPROXY"
        wait_for_line(hosts, f"{CLIENT}:{port} closed after")

        # One connection per client address and host: of three held
        # connections from one client, one at least is refused, wherever
        # HAProxy sends it, and the refusal names the client.
        held, refused = [], 0
        try:
            for i in range(3):
                with client.entered():
                    s = connect(VIP, PORT, CLIENT)
                s.sendall(b"held %d" % i)
                try:
                    reply = s.recv(100)
                except ConnectionResetError:
                    reply = b""
                if reply:
                    assert reply == b"HELD %d" % i
                    held.append(s)
                else:
                    refused += 1
                    s.close()
            # (Each host holds one of this client's connections at most.)
            assert held and refused >= 1, (len(held), refused)
            # ...while another client is served meanwhile.
            with client_socket(client, socket.SOCK_STREAM, OTHER_CLIENT) as other:
                other.connect((VIP, PORT))
                other.sendall(b"someone else")
                other.shutdown(socket.SHUT_WR)
                assert read_all(other) == b"SOMEONE ELSE"
        finally:
            for s in held:
                s.close()
        line = wait_for_line(hosts, "max_connections_per_ip reached")
        assert f"Refused connection from {CLIENT}:" in line

        # UDP: with a burst of one datagram per client address, each host
        # answers the client once; nftables sends each new flow (a new
        # socket) to the hosts in turn, so of four datagrams two are
        # answered, from the service address, and each host drops one,
        # logging the client's address and port.  The other client is
        # answered by both.
        def datagrams(source: str, count: int) -> tuple[list[socket.socket], list[bytes]]:
            sockets = [client_socket(client, socket.SOCK_DGRAM, source) for _ in range(count)]
            for i, u in enumerate(sockets):
                u.sendto(b"datagram %d" % i, (VIP, PORT))
            replies: list[bytes] = []
            deadline = time.monotonic() + 5
            waiting = list(sockets)
            while waiting and len(replies) < 2 and time.monotonic() < deadline:
                readable, _, _ = select.select(waiting, [], [], 0.1)
                for u in readable:
                    data, sender = u.recvfrom(65535)
                    assert sender == (VIP, PORT)
                    replies.append(data)
                    waiting.remove(u)
            return sockets, replies

        sockets, replies = datagrams(CLIENT, 4)
        try:
            assert sorted(replies) == [b"DATAGRAM 0", b"DATAGRAM 1"]
            ports = {u.getsockname()[1] for u in sockets}
            for daemon in hosts:
                line = wait_for_line([daemon], f"Dropped a datagram for {CLIENT}:")
                assert "rate_limit" in line
                assert int(line.split(f"{CLIENT}:")[1].split()[0]) in ports
            other_sockets, other_replies = datagrams(OTHER_CLIENT, 2)
            for u in other_sockets:
                u.close()
            assert sorted(other_replies) == [b"DATAGRAM 0", b"DATAGRAM 1"]
            # Nothing more was answered to the first client.
            assert select.select(sockets, [], [], 0)[0] == []
        finally:
            for u in sockets:
                u.close()


# -- the rolling restart ------------------------------------------------------------------


@dataclass
class Figures:
    """What the client load sent and what came back."""

    sessions: int = 0
    sessions_answered: int = 0
    sessions_lost: int = 0
    exchanges: int = 0
    datagrams_sent: int = 0
    datagrams_answered: int = 0
    exchanges_retried: int = 0
    exchanges_lost: int = 0
    errors: list[str] = field(default_factory=list)


class Load:
    """
    Continuous client load from the client namespace: ``tcp`` threads of
    sessions (connect, send, half-close, read the whole reply, close) and
    ``udp`` threads of exchanges (a datagram, up to ``tries`` tries of
    ``timeout`` seconds each, each try from a new socket).
    """

    def __init__(self, client: Netns, tcp: int = 3, udp: int = 2, tries: int = 5, timeout: float = 0.5) -> None:
        self.client = client
        self.tries = tries
        self.timeout = timeout
        self.figures = Figures()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._sessions, args=(i,), daemon=True) for i in range(tcp)]
        self._threads += [threading.Thread(target=self._exchanges, args=(i,), daemon=True) for i in range(udp)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> Figures:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a load thread did not end"
        return self.figures

    def snapshot(self) -> Figures:
        with self._lock:
            return Figures(**{k: v for k, v in vars(self.figures).items() if k != "errors"})

    def _error(self, what: str) -> None:
        with self._lock:
            if len(self.figures.errors) < 10:
                self.figures.errors.append(what)

    def _sessions(self, thread: int) -> None:
        self.client.enter()
        figures = self.figures
        n = 0
        while not self._stopping.is_set():
            n += 1
            payload = b"session %d of thread %d\n" % (n, thread)
            with self._lock:
                figures.sessions += 1
            try:
                with socket.create_connection((VIP, PORT), timeout=10) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    reply = read_all(s)
            except OSError as e:
                reply = repr(e).encode()
            with self._lock:
                if reply == payload.upper():
                    figures.sessions_answered += 1
                else:
                    figures.sessions_lost += 1
            if reply != payload.upper():
                self._error(f"TCP {payload!r}: {reply!r}")
            time.sleep(0.005)

    def _exchanges(self, thread: int) -> None:
        self.client.enter()
        figures = self.figures
        n = 0
        while not self._stopping.is_set():
            n += 1
            payload = b"exchange %d of thread %d" % (n, thread)
            answered = False
            for attempt in range(self.tries):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.settimeout(self.timeout)
                    u.sendto(payload, (VIP, PORT))
                    with self._lock:
                        figures.datagrams_sent += 1
                    try:
                        reply, sender = u.recvfrom(65535)
                    except OSError:  # no reply in time
                        continue
                if reply == payload.upper() and sender == (VIP, PORT):
                    answered = True
                    with self._lock:
                        figures.datagrams_answered += 1
                        figures.exchanges_retried += attempt > 0
                    break
                self._error(f"UDP {payload!r}: {reply!r} from {sender}")
            with self._lock:
                figures.exchanges += 1
                figures.exchanges_lost += not answered
            time.sleep(0.005)


_STOPPED = re.compile(r"capserv stopped: ([\d,]+) TCP connections? served and ([\d,]+) datagrams? answered")


def exit_status(daemon: Daemon, name: str, timeout: float = 30.0) -> int:
    """Wait for a stopping host to exit; its status, or its last lines if it does not."""
    try:
        return daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        tail = "\n".join(daemon.lines[-30:])
        raise AssertionError(f"{name} still running {timeout}s after SIGTERM; its last lines:\n{tail}") from None


def served(daemon: Daemon) -> tuple[int, int]:
    """(TCP connections, datagrams answered) from a stopped host's last line."""
    match = _STOPPED.search(daemon.wait_for("capserv stopped"))
    assert match is not None
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


def progress(load: Load, sessions: int, exchanges: int, timeout: float = 15.0) -> None:
    """Wait until the load has had ``sessions`` and ``exchanges`` more answered."""
    start = load.snapshot()

    def enough() -> bool:
        now = load.snapshot()
        return (
            now.sessions_answered - start.sessions_answered >= sessions
            and now.datagrams_answered - start.datagrams_answered >= exchanges
        )

    wait_until(enough, timeout, f"{sessions} sessions and {exchanges} exchanges answered")


#: Each host's drain: readiness says "not ready" for this long after SIGTERM
#: while the host serves on; both balancers must take it out meanwhile.
DRAIN = 2.0


def test_rolling_restart_loses_nothing(network: Network) -> None:
    """
    Under continuous TCP and UDP load, each host in turn is stopped with
    SIGTERM (``--drain-delay``: /readyz answers 503, so HAProxy's health check
    and the UDP controller take it out while it still serves), exits 0, is
    started again and comes back into both rotations; then the other.  No
    TCP session is lost, and no UDP exchange beyond the client's retries.
    """
    options = [f"--drain-delay={DRAIN:g}", "--shutdown-timeout=5"]
    steps = []
    per_host = []
    with serving(network, *options) as hosts:
        load = Load(network.client)
        load.start()
        try:
            progress(load, 300, 100)
            for index, (name, address) in enumerate(zip(NAMES, HOSTS, strict=True)):
                old = hosts[index]
                others = [host for host in HOSTS if host != address]
                start = time.monotonic()
                old.signal(signal.SIGTERM)
                network.haproxy.wait_for({name: "DOWN"})
                network.udp.wait_for(others)
                out = time.monotonic() - start
                # Both balancers took it out while it was still draining.
                assert old.process.poll() is None, f"{name} stopped before the balancers took it out"
                assert exit_status(old, name) == 0
                stopped = time.monotonic() - start
                per_host.append((f"{name} (first run)", *served(old)))
                old.__exit__(None, None, None)
                hosts[index] = start_host(network, index, options)
                in_rotation(network, list(HOSTS))
                back = time.monotonic() - start
                steps.append(
                    f"{name}: out of rotation {out:.2f}s after SIGTERM, exit 0 at {stopped:.2f}s, back at {back:.2f}s"
                )
                # The restarted host takes its share again before the next one goes.
                progress(load, 300, 100)
        finally:
            figures = load.stop()
    for index, name in enumerate(NAMES):
        per_host.append((f"{name} (second run)", *served(hosts[index])))
    report = (
        f"rolling restart: TCP sessions sent {figures.sessions}, answered {figures.sessions_answered}, "
        f"lost {figures.sessions_lost}; UDP exchanges {figures.exchanges} "
        f"(datagrams sent {figures.datagrams_sent}, answered {figures.datagrams_answered}), "
        f"retried {figures.exchanges_retried}, lost after retries {figures.exchanges_lost}"
    )
    print()
    print(report)
    for step in steps:
        print("  " + step)
    for name, tcp, udp in per_host:
        print(f"  {name}: {tcp} TCP connections served, {udp} datagrams answered")
    assert figures.sessions_lost == 0, (report, figures.errors)
    assert figures.exchanges_lost == 0, (report, figures.errors)
    assert figures.sessions == figures.sessions_answered
    # Every session went through one of the hosts.
    assert sum(tcp for _, tcp, _ in per_host) == figures.sessions, per_host
    # Every host, restarted, served both kinds again.
    for name, tcp, udp in per_host[2:]:
        assert tcp > 0 and udp > 0, name
