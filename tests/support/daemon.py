"""
Run the real ``twistd -n capserv`` in a subprocess for end-to-end tests.

Listeners use port 0; the actual addresses are read from the daemon's own
"Listening ..." log lines, so tests never guess at free ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

#: Listen descriptions on any free port of 127.0.0.1.
TCP0 = "tcp:0:interface=127.0.0.1"
UDP0 = "udp:0:interface=127.0.0.1"

_LISTENING = re.compile(r"Listening for (streams|datagrams|metrics \(HTTP\)) on (\S+) \((.*)\)$")


def run_with_bad_stdout(command: Sequence[str], stdout: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``command`` with stdout ``"closed"`` (``>&-``), a ``"pipe"`` whose reader has left, or a file (/dev/full)."""
    if stdout == "closed":
        return subprocess.run(command, input=stdin, stderr=subprocess.PIPE, timeout=60, preexec_fn=lambda: os.close(1))
    if stdout == "pipe":
        read, fd = os.pipe()
        os.close(read)
    else:
        fd = os.open(stdout, os.O_WRONLY)
    try:
        return subprocess.run(command, input=stdin, stdout=fd, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(fd)


def script_path(name: str) -> str:
    """An installed script (twistd, capserv-client) of the interpreter running the tests."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to the interpreter or on PATH")
    return found


def twistd_path() -> str:
    """The twistd script of the interpreter running the tests."""
    return script_path("twistd")


def default_signals() -> None:
    """
    Give the child SIGINT's default disposition.  A test run started as a
    background job (``nohup``, ``cmd &`` in a script) inherits SIGINT
    ignored, and Python, then twistd, leave an ignored SIGINT ignored, so a
    daemon under test would not stop on Ctrl-C as it does for an operator.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Daemon:
    """One running ``twistd -n capserv``; use as a context manager."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: str | None = None,
        reactor: str | None = None,
        twistd_args: Sequence[str] = (),
        new_session: bool = False,
    ) -> None:
        """
        :param twistd_args: more of twistd's own options (``--logfile=...``).
        :param new_session: run in a process group of its own, which a test
            may signal as a terminal's Ctrl-C does.
        """
        command = [twistd_path(), "-n", "--pidfile=", *twistd_args]
        if reactor is None:
            reactor = os.environ.get("CAPSERV_TEST_REACTOR")
        if reactor and reactor != "default":
            command.append(f"--reactor={reactor}")
        command += ["capserv", *args]
        self.command = command
        self.process = subprocess.Popen(
            command,
            preexec_fn=default_signals,
            start_new_session=new_session,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Wait for a log line containing ``needle``; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line with {needle!r}; output so far:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.2))

    def started(self, timeout: float = 20.0) -> Daemon:
        self.wait_for("capserv", timeout)
        self.wait_for(" started", timeout)
        return self

    def listening(self) -> list[tuple[str, str, str]]:
        """(kind, address, description) for each listener, in order."""
        found = []
        for line in self.lines:
            match = _LISTENING.search(line)
            if match:
                found.append((match.group(1), match.group(2), match.group(3)))
        return found

    def address(self, index: int) -> tuple[str, int]:
        """The host and port of the index-th listener."""
        address = self.listening()[index][1]
        host, port = address.rsplit(":", 1)
        return host.strip("[]"), int(port)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def run_daemon(args: Sequence[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run a daemon that is expected to exit by itself; (status, output)."""
    status, out, err = run_twistd(["-n", "--pidfile="], args, timeout)
    return status, out + err


def run_twistd(
    twistd_args: Sequence[str], args: Sequence[str], timeout: float = 30.0, cwd: str | None = None
) -> tuple[int, str, str]:
    """Run ``twistd TWISTD_ARGS capserv ARGS`` expected to exit by itself;
    (status, stdout, stderr)."""
    result = subprocess.run(
        [twistd_path(), *twistd_args, "capserv", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        preexec_fn=default_signals,
    )
    return result.returncode, result.stdout, result.stderr


def scrape(port: int) -> dict[str, float]:
    """The daemon's Prometheus metrics (``--metrics``) as name -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """
    A memory figure of a live process from /proc, in KiB: ``VmRSS`` (resident
    now) or ``VmHWM`` (peak resident since it started or exec'd); 0 once it
    has exited.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_usage(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open file descriptors) of a live process."""
    return memory_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))


class Running:
    """
    A started daemon serving TCP and UDP on free ports of 127.0.0.1, with
    metrics: what the adversarial tests and the long runs in bench/ attack.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.host, self.tcp = daemon.address(0)
        _, self.udp = daemon.address(1)
        _, self.metrics_port = daemon.address(2)
        # One answer from the running reactor: what the reactor sets up after
        # the start line (its signal wakers) is in place before a test counts
        # the daemon's descriptors.
        self.metrics()

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def usage(self) -> tuple[int, int]:
        """(resident memory in KiB, open file descriptors) of the daemon."""
        return process_usage(self.pid)

    def wait_until(self, check: Callable[[], bool], timeout: float = 20.0) -> float:
        """Poll ``check`` until it holds; the seconds that took."""
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                fds = {fd: os.readlink(f"/proc/{self.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{self.pid}/fd")}
                raise AssertionError(f"not reached within {timeout}s; fds {fds}; metrics: {self.metrics()}")
            time.sleep(0.1)
        return time.monotonic() - start


@contextlib.contextmanager
def serving(*options: str) -> Iterator[Running]:
    """Run ``twistd -n capserv`` with TCP, UDP and ``--metrics`` on free ports, plus ``options``."""
    with Daemon(["--listen", TCP0, "--listen", UDP0, "--metrics", TCP0, *options]) as daemon:
        yield Running(daemon.started())
