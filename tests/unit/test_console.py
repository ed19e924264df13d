"""
Tests for `capserv.client.console`: failures in capserv-client's words, and
the stdio protocols (a piped stream, line by line) on in-memory transports.
"""

from __future__ import annotations

import errno

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv.client.console import EXIT_LOCAL, EXIT_USAGE, ClientError, LineByLine, describe_failure, stdout_error


class DescribeFailureTests(SynchronousTestCase):
    """Connection failures read in capserv-client's words, not Twisted's."""

    def test_missing_unix_socket(self) -> None:
        """A UNIX socket path with nothing there says so, without Twisted's wording."""
        from twisted.internet import error

        message = describe_failure(Failure(error.ConnectError(osError=2)))
        self.assertEqual(message, "no such socket file (is capserv listening on that path?)")
        self.assertNotIn("An error occurred", describe_failure(Failure(error.ConnectError(osError=13))))

    def test_untrusted_certificate(self) -> None:
        """A certificate the client does not trust says how to trust it, not OpenSSL's tuple."""
        from OpenSSL.SSL import Error

        message = describe_failure(Failure(Error([("SSL routines", "", "certificate verify failed")])))
        self.assertIn("trustRoots=", message)
        self.assertNotIn("SSL routines", message)


class StdoutErrorTests(SynchronousTestCase):
    """A failed write to stdout is named as local, exit status 3."""

    def test_broken_pipe_and_full_disk(self) -> None:
        """A closed reader says broken pipe; another error says what the system said."""
        broken = stdout_error(BrokenPipeError(errno.EPIPE, "Broken pipe"))
        self.assertEqual(str(broken), "stdout was closed before the whole reply was written (broken pipe)")
        full = stdout_error(OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual((str(full), full.code), ("cannot write to stdout: No space left on device", EXIT_LOCAL))


class Lines:
    """A LineByLine on a StringTransport (stdio), with each request's Deferred kept to fire by hand."""

    def __init__(self, prompt: bytes | None = None) -> None:
        self.asked: list[bytes] = []
        self.replies: list[Deferred[bytes]] = []
        self.done: Deferred[None] = Deferred()
        self.outcome: list[object] = []
        self.done.addBoth(self.outcome.append)
        self.protocol = LineByLine(self.request, prompt, self.done)
        self.stdio = StringTransport()
        self.protocol.makeConnection(self.stdio)

    def request(self, line: bytes) -> Deferred[bytes]:
        self.asked.append(line)
        self.replies.append(Deferred())
        return self.replies[-1]

    def reply(self) -> None:
        self.replies[len(self.asked) - 1].callback(self.asked[-1].upper())


class LineByLineTests(SynchronousTestCase):
    """Each line of stdin is one request, in order, one at a time, with stdin paused meanwhile."""

    def test_one_request_at_a_time_in_order(self) -> None:
        """
        Lines given at once are asked one after the other, each after the
        last reply, with stdin paused while one is in flight; a CRLF ending
        is taken off, a last line without a newline is sent at the end of
        input, and then stdio closes and done fires.
        """
        lines = Lines()
        lines.protocol.dataReceived(b"one\ntwo\r\n\nthr")
        self.assertEqual((lines.asked, lines.stdio.producerState), ([b"one"], "paused"))
        lines.protocol.dataReceived(b"ee")
        lines.protocol.readConnectionLost()
        for expected in ([b"one", b"two"], [b"one", b"two", b""], [b"one", b"two", b"", b"three"]):
            lines.reply()
            self.assertEqual(lines.asked, expected)
            self.assertFalse(lines.stdio.disconnecting)
        lines.reply()
        self.assertEqual(lines.stdio.value(), b"ONE\nTWO\n\nTHREE\n")
        self.assertTrue(lines.stdio.disconnecting)
        lines.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lines.outcome, [None])

    def test_reading_resumes_when_idle(self) -> None:
        """After a reply with nothing waiting, stdin is read again, and the next line is asked."""
        lines = Lines()
        lines.protocol.dataReceived(b"a\n")
        lines.reply()
        self.assertEqual(lines.stdio.producerState, "producing")
        lines.protocol.dataReceived(b"b\n")
        self.assertEqual(lines.asked, [b"a", b"b"])

    def test_prompt_and_ctrl_d(self) -> None:
        """
        With a prompt: it is shown first and after each reply, and Ctrl-D
        at the prompt ends the prompt's line before stdio closes.
        """
        lines = Lines(prompt=b"Input lowercase sentence:")
        lines.protocol.dataReceived(b"hi\n")
        lines.reply()
        lines.protocol.readConnectionLost()
        self.assertEqual(lines.stdio.value(), b"Input lowercase sentence:HI\nInput lowercase sentence:\n")
        self.assertTrue(lines.stdio.disconnecting)

    def test_a_failed_request_ends_the_loop(self) -> None:
        """A request that fails closes stdio, no later line is asked, and done fails with that failure."""
        lines = Lines()
        lines.protocol.dataReceived(b"a\nb\n")
        lines.replies[0].errback(ConnectionLost())
        self.assertTrue(lines.stdio.disconnecting)
        lines.protocol.readConnectionLost()
        lines.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lines.asked, [b"a"])
        self.assertTrue(lines.outcome[0].check(ConnectionLost))  # type: ignore[attr-defined]

    def test_line_too_long(self) -> None:
        """A line longer than MAX_LENGTH is a usage error, not a request."""
        lines = Lines()
        lines.protocol.dataReceived(b"x" * (LineByLine.MAX_LENGTH + 2))
        lines.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lines.asked, [])
        failure = lines.outcome[0]
        self.assertTrue(failure.check(ClientError))  # type: ignore[attr-defined]
        self.assertEqual(failure.value.code, EXIT_USAGE)  # type: ignore[attr-defined]

    def test_stdout_closed_while_a_request_is_in_flight(self) -> None:
        """
        stdout closing fails done as a local failure at once, and the reply
        that comes after neither is written nor lets another line be asked.
        """
        lines = Lines()
        lines.protocol.dataReceived(b"a\nb\n")
        lines.protocol.writeConnectionLost()
        self.assertEqual(lines.outcome[0].value.code, EXIT_LOCAL)  # type: ignore[attr-defined]
        lines.reply()
        self.assertEqual((lines.asked, lines.stdio.value()), ([b"a"], b""))
