"""
The load balancers of the multi-host tests, run in the balancer's network
namespace with the files docs/operations.rst shows (``docs/multihost/``):

* `HAProxy` for TCP, with the PROXY protocol to each host and a health check
  on each host's ``/readyz``;
* nftables for UDP: DNAT of each new flow to one of the live hosts in turn
  (``numgen inc``), the client's address left as it is; `UdpBackends` is the
  controller that keeps the rule's list of live hosts, as kube-proxy does for
  a Kubernetes service, because nftables has no health checks of its own.
"""

from __future__ import annotations

import csv
import http.client
import io
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .netns import LB_INSIDE, Netns

DOCS = Path(__file__).resolve().parents[2] / "docs" / "multihost"
HAPROXY_CONFIG = DOCS / "haproxy.cfg"
UDP_RULES = DOCS / "udp.nft"

#: The port each host serves metrics, /healthz and /readyz on (haproxy.cfg's ``check port``).
METRICS_PORT = 9150
STATS = (LB_INSIDE, 8404, "/stats;csv")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 20 ms until it holds; the seconds that took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body) of one GET, in the calling thread's namespace."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class HAProxy:
    """HAProxy with ``docs/multihost/haproxy.cfg``, in the balancer's namespace."""

    def __init__(self, lb: Netns, log: Path) -> None:
        binary = shutil.which("haproxy")
        assert binary is not None
        self.lb = lb
        self.log = log
        self._log_file = open(log, "w")  # closed in stop()
        self.process = lb.popen(
            [binary, "-db", "-f", str(HAPROXY_CONFIG)], stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def servers(self) -> dict[str, str]:
        """
        Each capserv host's status as HAProxy sees it: ``UP`` once a check
        has passed (HAProxy starts its servers ``UP`` before checking them,
        which is not taken as in rotation here), ``DOWN``, or what HAProxy
        says in between (``DOWN 1/2``...).
        """
        with self.lb.entered():
            status, body = http_get(*STATS)
        assert status == 200, (status, body)
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        servers = {}
        for row in rows:
            if row["pxname"] == "capservs" and row["svname"].startswith("host"):
                checked = row["status"] != "UP" or row["check_status"] == "L7OK"
                servers[row["svname"]] = row["status"] if checked else f"UP ({row['check_status']})"
        return servers

    def wait_for(self, wanted: dict[str, str], timeout: float = 15.0) -> float:
        """Wait until the hosts named in ``wanted`` have those statuses; the seconds it took."""

        def reached() -> bool:
            assert self.process.poll() is None, "haproxy exited:\n" + self.log.read_text()
            try:
                servers = self.servers()
            except OSError:
                return False
            return all(servers.get(name) == status for name, status in wanted.items())

        return wait_until(reached, timeout, f"haproxy to see {wanted}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()


def udp_rules(live: Sequence[str], slots: int = 2) -> str:
    """
    ``docs/multihost/udp.nft`` for these live hosts: the file as written,
    with its ``define backends`` line giving each of the rule's ``slots``
    a live host, in turn.
    """
    backends = ", ".join(f"{slot} : {live[slot % len(live)]}" for slot in range(slots))
    lines = []
    for line in UDP_RULES.read_text().splitlines():
        if line.startswith("define backends ="):
            line = f"define backends = {{ {backends} }}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class UdpBackends:
    """
    The UDP balancer's controller, in the balancer's namespace: polls each
    host's ``/readyz`` every ``interval`` seconds and, when the set of ready
    hosts changes, loads ``udp.nft`` again with the ready ones (one ``nft -f``,
    which nftables applies as one transaction).  When no host is ready it
    keeps the last set: there is nothing better to send to.

    Conntrack pins a UDP flow (client address and port) to the host its
    first datagram went to; the clients of these tests use a new socket (a
    new source port) for every try, as the lesson's UDP client does, so a
    retry is a new flow and goes to a host that is ready now.  (A new socket
    that reuses the port of a recent flow to a host that has stopped since
    loses its datagram; its retry is answered.  docs/operations.rst says
    what clients that keep one port need instead.)
    """

    def __init__(self, lb: Netns, hosts: Sequence[str], folder: Path, interval: float = 0.1) -> None:
        self.lb = lb
        self.hosts = list(hosts)
        self.rules = folder / "udp.nft"
        self.interval = interval
        self.live: list[str] = []
        #: (monotonic time, live hosts) at each change.
        self.changes: list[tuple[float, list[str]]] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="udp-backends", daemon=True)

    def start(self) -> None:
        """Load the rules for every host, then keep them to the ready ones."""
        self.load(self.hosts)
        self._thread.start()

    def load(self, live: Sequence[str]) -> None:
        """Point the UDP service at ``live`` (``nft -f``)."""
        self.rules.write_text(udp_rules(live))
        self.lb.run(["nft", "-f", str(self.rules)])
        with self._changed:
            self.live = list(live)
            self.changes.append((time.monotonic(), list(live)))
            self._changed.notify_all()

    def ready(self, host: str) -> bool:
        try:
            status, _ = http_get(host, METRICS_PORT, "/readyz", timeout=0.5)
        except OSError:
            return False
        return status == 200

    def _run(self) -> None:
        try:
            self.lb.enter()
            while not self._stopping.wait(self.interval):
                ready = [host for host in self.hosts if self.ready(host)]
                if ready and ready != self.live:
                    self.load(ready)
        except BaseException as e:  # reported by wait_for and stop
            self._error = e
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, live: Sequence[str], timeout: float = 15.0) -> float:
        """Wait until the rules point at exactly ``live``; the seconds it took."""
        start = time.monotonic()
        with self._changed:
            while self.live != list(live):
                if self._error is not None:
                    raise AssertionError(f"the UDP controller failed: {self._error!r}")
                left = start + timeout - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"UDP backends are {self.live}, not {list(live)}, after {timeout}s")
                self._changed.wait(min(left, 0.2))
        return time.monotonic() - start

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._error is not None:
            raise AssertionError(f"the UDP controller failed: {self._error!r}")
