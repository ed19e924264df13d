"""
`capserv.daemon.service` in the real ``twistd -n capserv``: what an
orchestrator sees during a drain (a new connection served while ``/readyz``
says 503 and ``/healthz`` 200, a clean exit after) and ``READY=1`` and
``STOPPING=1`` on ``NOTIFY_SOCKET`` at the right moments.  The service's
logic itself is tested in memory in ``tests/unit/test_service.py``.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.daemon import TCP0, Daemon
from ..support.loopback import tcp_exchange


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket in systemd's place, named by NOTIFY_SOCKET for the daemons started."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.daemon
@pytest.mark.timeout(120)
def test_drain_serves_while_not_ready_then_exits_0(notify_socket: socket.socket) -> None:
    """The real daemon under a Type=notify unit's conditions: READY=1 comes
    once the port answers; on SIGTERM, STOPPING=1, /readyz 503 and /healthz
    200 while a new connection is still served; then a clean stop, status 0.

    The drain lasts a few seconds: what is checked during it takes a few
    milliseconds."""
    pytest.importorskip("prometheus_client")
    with Daemon(["--listen", TCP0, "--metrics", TCP0, "--drain-delay=4"]) as daemon:
        ready = notify_socket.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        daemon.started()
        host, port = daemon.address(0)
        _, metrics = daemon.address(1)
        assert tcp_exchange(host, port, b"before") == b"BEFORE"
        assert http_get(metrics, "readyz") == (200, "ready\n")
        assert http_get(metrics, "healthz") == (200, "ready\n")
        daemon.signal(signal.SIGTERM)
        stopping = notify_socket.recv(4096).decode()
        assert stopping.startswith("STOPPING=1\n"), stopping
        daemon.wait_for("Draining: not ready; still serving for 4s (--drain-delay), then stopping")
        assert http_get(metrics, "readyz") == (503, "draining\n")
        assert http_get(metrics, "healthz") == (200, "draining\n")
        assert tcp_exchange(host, port, b"during the drain") == b"DURING THE DRAIN"
        assert "capserv stopped" not in daemon.output, "the checks ran during the drain"
        assert daemon.wait() == 0
    assert "capserv stopped: 2 TCP connections served" in daemon.output
    assert "Traceback" not in daemon.output
