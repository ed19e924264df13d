"""
The asyncio embedding example in docs/embedding runs as the page says: it
serves, and when it cannot listen it says so in one line and exits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..support.daemon import default_signals
from ..support.loopback import tcp_exchange

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "asyncio_server.py"


def test_example_serves() -> None:
    """Started on a free port, the example uppercases a TCP exchange."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert tcp_exchange("127.0.0.1", port, "straße".encode()) == b"STRASSE"
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_example_says_when_it_cannot_listen() -> None:
    """With the port taken, the example prints one line and exits 1, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("port", ["70000", "abc", "-1", ""])
def test_example_refuses_a_bad_port(port: str) -> None:
    """A PORT that is not a number from 0 to 65535: one line, exit 2, no traceback, no hang."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), port], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (2, f"PORT must be a number from 0 to 65535, not {port!r}\n")
