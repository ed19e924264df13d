"""
Every log line reaches its destination under each combination of ``-n``,
``--logfile``, ``--logger`` and daemon mode, SIGUSR1 rotates (or is
ignored where there is no file), and SIGHUP is a graceful stop: real twistd
processes, on loopback, each bounded and cleaned up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ..support.daemon import TCP0, Daemon, twistd_path
from ..support.loopback import tcp_exchange

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(120)]

LOGGERS = [None, "capserv.logs.json_lines", "capserv.logs.text_lines"]


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def _logs(folder: Path, name: str) -> str:
    """The log file and its rotated copies, oldest first."""
    files = [*sorted(folder.glob(name + ".*"), reverse=True), folder / name]
    return "".join(f.read_text() for f in files if f.exists())


def _port(text: str) -> int:
    line = next(line for line in text.splitlines() if "Listening for streams on 127.0.0.1:" in line)
    return int(line.split("127.0.0.1:", 1)[1].split(" ", 1)[0])


def _check_every_line(text: str) -> None:
    assert text.count("closed after") == 2, text
    assert "capserv stopped: 2 TCP connections served" in text, text


@pytest.mark.parametrize("logger", LOGGERS, ids=["twistd", "json", "text"])
@pytest.mark.parametrize("logfile", ["c.log", None], ids=["logfile", "default"])
def test_daemon_mode_logs_every_line_and_rotates(tmp_path: Path, logger: str | None, logfile: str | None) -> None:
    """Without -n, every line lands in --logfile (twistd.log without one),
    SIGUSR1 rotates it and the daemon goes on serving; SIGTERM stops it."""
    name = logfile or "twistd.log"
    command = [twistd_path(), "--pidfile=d.pid", *([f"--logfile={logfile}"] if logfile else [])]
    command += [f"--logger={logger}"] if logger else []
    reactor = os.environ.get("CAPSERV_TEST_REACTOR")
    command += [f"--reactor={reactor}"] if reactor and reactor != "default" else []
    command += ["capserv", "--listen", TCP0]
    status = subprocess.run(command, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert status.returncode == 0, status.stderr
    pidfile = tmp_path / "d.pid"
    _until(pidfile.exists, "the pid file")
    pid = int(pidfile.read_text())
    try:
        _until(lambda: " started (" in _logs(tmp_path, name), "the start line")
        port = _port(_logs(tmp_path, name))
        assert tcp_exchange("127.0.0.1", port, b"one") == b"ONE"
        os.kill(pid, signal.SIGUSR1)
        _until(lambda: (tmp_path / f"{name}.1").exists(), "the rotated log")
        assert tcp_exchange("127.0.0.1", port, b"two") == b"TWO"
    finally:
        os.kill(pid, signal.SIGTERM)
        _until(lambda: not pidfile.exists(), "the daemon to stop")
    _check_every_line(_logs(tmp_path, name))


@pytest.mark.parametrize("logger", LOGGERS, ids=["twistd", "json", "text"])
@pytest.mark.parametrize("logfile", [True, False], ids=["logfile", "stdout"])
def test_foreground_logs_every_line_and_survives_usr1(tmp_path: Path, logger: str | None, logfile: bool) -> None:
    """With -n, lines go to --logfile when given (rotated on SIGUSR1),
    else to standard output (SIGUSR1 ignored); exit status 0."""
    log = tmp_path / "c.log"
    twistd_args = ([f"--logfile={log}"] if logfile else []) + ([f"--logger={logger}"] if logger else [])
    with Daemon(["--listen", TCP0], twistd_args=twistd_args) as daemon:
        if logfile:
            _until(lambda: " started (" in _logs(tmp_path, "c.log"), "the start line")
            port = _port(_logs(tmp_path, "c.log"))
        else:
            port = _port(daemon.started().output)
        assert tcp_exchange("127.0.0.1", port, b"one") == b"ONE"
        daemon.signal(signal.SIGUSR1)
        if logfile:
            _until(lambda: (tmp_path / "c.log.1").exists(), "the rotated log")
        assert tcp_exchange("127.0.0.1", port, b"two") == b"TWO"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    _check_every_line(_logs(tmp_path, "c.log") if logfile else daemon.output)


@pytest.mark.parametrize("extra", [[], ["--workers", "2", "--metrics", TCP0]], ids=["one", "workers"])
def test_sighup_is_a_graceful_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    """SIGHUP stops as SIGTERM does: an open connection is let finish, the
    access lines and the stop line are written, status 0, no folder left."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with Daemon(["--listen", TCP0, *extra], twistd_args=["--logger=capserv.logs.json_lines"]) as daemon:
        daemon.started()
        if extra:
            _until(lambda: daemon.output.count(" started (") >= 2, "the workers")
        port = _port(daemon.output)
        assert tcp_exchange("127.0.0.1", port, b"done") == b"DONE"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            held.sendall(b"first")
            assert held.recv(100) == b"FIRST"
            daemon.signal(signal.SIGHUP)
            daemon.wait_for("Received SIGHUP")
            held.sendall(b"second")
            assert held.recv(100) == b"SECOND"
            held.shutdown(socket.SHUT_WR)
            assert held.recv(100) == b""
        assert daemon.wait() == 0
    assert daemon.output.count("closed after") == 2, daemon.output
    assert "capserv stopped: " in daemon.output
    assert list(temp.iterdir()) == []
