"""``capserv-client`` on stdin and stdout: exit statuses, one line per failure, a piped stream, a line loop."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import sys
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv.client.datagram import NoReplyError
from capserv.client.stream import CapservClientError, ReplyTimeoutError, StreamSession

EXIT_NETWORK = 1
EXIT_USAGE = 2
EXIT_LOCAL = 3
EXIT_INTERRUPTED = 130


class ClientError(CapservClientError):
    """A failure to report in one line, with an exit status."""

    def __init__(self, message: str, code: int = EXIT_NETWORK) -> None:
        super().__init__(message)
        self.code = code


def stdout_error(problem: OSError | None = None) -> ClientError:
    """Writing to stdout failed: why, from ``error`` or else from what stdout is (a pipe: its reader left)."""
    if problem is None:
        try:
            mode = os.fstat(1).st_mode
        except OSError:
            mode = 0
        broken = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    else:
        broken = problem.errno == errno.EPIPE
    if broken:
        return ClientError("stdout was closed before the whole reply was written (broken pipe)", EXIT_LOCAL)
    why = f": {problem.strerror}" if problem is not None else " (disk full or device error?)"
    return ClientError(f"cannot write to stdout{why}", EXIT_LOCAL)


def stdout_closed() -> bool:
    """Whether stdout was closed when the client started (``>&-``): a socket opened then would take its place."""
    try:
        os.fstat(1)
    except OSError:
        return True
    return sys.stdout is None


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def usage_message(problem: usage.UsageError) -> str:
    """A usage error in capserv's words, one line."""
    message = str(problem).removeprefix("Parameter type enforcement failed: ")
    unknown = re.fullmatch(r"option (-\S*) not recognized", message)
    if unknown:
        return f"unknown option {unknown.group(1)} (a word that starts with '-' goes after '--')"
    needs = re.fullmatch(r"option (-\S*) requires argument", message)
    if needs:
        return f"option {needs.group(1)} needs a value"
    return message


def describe_failure(failure: Failure) -> str:
    """One line saying what went wrong, for a person."""
    value = failure.value
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host name ({failure.getErrorMessage().strip()})"
    if isinstance(value, socket.gaierror):
        return f"cannot resolve the host name ({value.strerror})"
    if failure.check(error.TimeoutError):
        return "timed out connecting"
    if failure.check(error.ConnectError):  # NoRouteError among them
        os_error = getattr(value, "osError", None)
        code = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None)
        if isinstance(code, int):
            return _CONNECT_ERRNO.get(code) or f"cannot connect: {os.strerror(code)}"
        return f"cannot connect: {failure.getErrorMessage().strip()}"
    if failure.check(error.ConnectionLost):
        return "connection lost"
    if failure.check(NoReplyError):
        return value.reason  # type: ignore[union-attr,no-any-return]
    if failure.check(ReplyTimeoutError):
        return f"{value}; giving up (--timeout sets it: 10x over TCP)"
    if type(value).__module__.startswith("OpenSSL"):
        text = str(value)
        if "certificate verify failed" in text:
            return (
                "the server's TLS certificate is not trusted here; give its CA with "
                "trustRoots=PEM_FILE_OR_FOLDER in --connect (see capserv-client --help)"
            )
        if "wrong version number" in text or "unexpected eof" in text.lower():
            return "the server did not answer in TLS (is it a tls:/ssl: listener?)"
        return f"TLS failure: {text}"
    return failure.getErrorMessage() or type(value).__name__


_CONNECT_ERRNO = {
    errno.ENOENT: "no such socket file (is capserv listening on that path?)",
    errno.EACCES: "permission denied",
}


class _ToStdout(Protocol):
    """Fires ``done`` when stdio closes: with `failure`, or why stdout failed, if anything did."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.failure: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if self.failure is None and reason.check(ConnectionDone) is None:  # the last reply could not be written
            self.failure = Failure(stdout_error())
        if self.failure is not None:
            self.done.errback(self.failure)
        else:
            self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class StdinToStream(_ToStdout):
    """A piped TCP session: stdin to the server, the reply to stdout, each side pausing the other."""

    def __init__(self, session: StreamSession, done: Deferred[None]) -> None:
        super().__init__(done)
        self.session = session

    def connectionMade(self) -> None:
        session = self.session
        session.on_data = self.transport.write  # type: ignore[union-attr]
        # stdout full -> stop reading the socket (and counting silence); socket full -> stop reading stdin.
        self.transport.registerProducer(session, True)  # type: ignore[union-attr]
        session.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        session.done.addBoth(self._serverDone)

    def dataReceived(self, data: bytes) -> None:
        self.session.write(data)

    def readConnectionLost(self) -> None:
        self.session.transport.unregisterProducer()  # type: ignore[union-attr]
        self.session.finish()

    def writeConnectionLost(self) -> None:
        self.failure = Failure(stdout_error())  # stdout can take no more: stop, and say it was here
        self.session.abort()

    def _serverDone(self, result: Failure | None) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        if isinstance(result, Failure) and not self.done.called:
            self.done.errback(self.failure or result)


@implementer(IHalfCloseableProtocol)
class LineByLine(LineReceiver, _ToStdout):
    """
    Each line of stdin as one request, each reply on its own line (with a prompt, the lesson's loop);
    reading pauses while a request is in flight, so memory stays bounded.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, request: Callable[[bytes], Deferred[bytes]], prompt: bytes | None, done: Deferred[None]) -> None:
        super().__init__(done)
        self.request = request
        self.prompt = prompt
        self.ended = False

    def connectionMade(self) -> None:
        if self.prompt:
            self.transport.write(self.prompt)  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        self.pauseProducing()  # type: ignore[no-untyped-call,unused-ignore]
        self.request(line.removesuffix(b"\r")).addCallbacks(self._replied, self._fail)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(Failure(ClientError(f"a line longer than {self.MAX_LENGTH} bytes", EXIT_USAGE)))

    def readConnectionLost(self) -> None:
        self.ended = True
        rest = self.clearLineBuffer()  # type: ignore[no-untyped-call,unused-ignore]
        if rest:  # the lines not yet sent, the last perhaps without its newline
            self.dataReceived(rest.removesuffix(b"\n") + b"\n")  # type: ignore[no-untyped-call,unused-ignore]
        elif not self.paused:
            if self.prompt:
                self.transport.write(b"\n")  # type: ignore[union-attr]  # Ctrl-D at the prompt ends its line
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self._fail(Failure(stdout_error()))
        if not self.done.called:  # stdin may be over already: then no connectionLost follows
            self.done.errback(self.failure)

    def _replied(self, reply: bytes) -> None:
        if self.failure is not None:  # stdout failed while the request was in flight
            return
        self.transport.write(reply + b"\n")  # type: ignore[union-attr]
        if self.prompt and not self.ended:
            self.transport.write(self.prompt)  # type: ignore[union-attr]
        self.resumeProducing()  # type: ignore[no-untyped-call,unused-ignore]  # the next line stdin gave, if any
        if self.ended and not self.paused:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _fail(self, failure: Failure) -> None:
        self.pauseProducing()  # type: ignore[no-untyped-call,unused-ignore]
        if self.failure is None:
            self.failure = failure
            self.transport.loseConnection()  # type: ignore[union-attr]
