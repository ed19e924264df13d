"""
Tests for `capserv.client`, the package's face: its errors share one base
class, and the client page's API example runs against servers on loopback.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.trial.unittest import SynchronousTestCase

from ..support.loopback import in_thread, listen_tcp, stop_tcp

pytestmark = pytest.mark.timeout(180)


class ErrorsTests(SynchronousTestCase):
    """The client's errors share one base class."""

    def test_one_base_class(self) -> None:
        """Every error class the client API and command define is a CapservClientError."""
        import capserv.client
        from capserv.client.command import ClientError

        errors = [v for v in vars(capserv.client).values() if isinstance(v, type) and issubclass(v, Exception)]
        self.assertGreaterEqual(len(errors), 6)
        for error in [*errors, ClientError]:
            self.assertTrue(issubclass(error, capserv.client.CapservClientError), error)
        self.assertIn("CapservClientError", capserv.client.__all__)


@pytest_twisted.inlineCallbacks
def test_documented_api_example_runs() -> Any:
    """docs/examples/client_api.py, the client page's example, works."""
    from twisted.internet import reactor

    from capserv import MAX_DATAGRAM, UppercaseDatagramProtocol

    factory, port = yield listen_tcp("127.0.0.1")
    number = port.getHost().port
    # The example talks TCP and UDP on one port number.
    uport = reactor.listenUDP(number, UppercaseDatagramProtocol(clock=reactor), "127.0.0.1", MAX_DATAGRAM)
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "client_api.py"
    try:
        result = yield in_thread(
            lambda: subprocess.run(
                [sys.executable, str(example), str(number)], capture_output=True, text=True, timeout=60
            )
        )
    finally:
        yield stop_tcp(factory, port)
        yield uport.stopListening()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == repr(b"STRASSE")
    assert lines[-1] == repr(b"DATAGRAM")
    # The stream's pieces may arrive split or together.
    streamed = b"".join(ast.literal_eval(line.removeprefix("got ")) for line in lines[1:-1])
    assert streamed == b"PART ONE, PART TWO"
