"""
The ``capserv-client`` command: the lesson's TCP and UDP clients as one
tool, built on `capserv.client`.

- Words after the options are one message (joined with spaces, as ``echo``
  does); the reply is printed with a newline.
- No words and a terminal on stdin: the lesson's interactive loop, with its
  prompt, until end of input.
- No words and a pipe on stdin: over TCP, stdin is streamed to the server and
  the reply to stdout byte for byte, in bounded memory (each side pauses the
  other); over UDP, one datagram per line and one reply line each.

Exit status: 0 on success, 2 for a usage error, 1 for a network failure
(refused, unreachable, unknown name, TLS failure, no UDP reply).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv._version import __version__
from capserv.client import StreamSession, open_stream, tcp_request, udp_request
from capserv.coerce import number
from capserv.udp import MAX_REPLY_IPV4

__all__ = ["EXIT_NETWORK", "EXIT_USAGE", "ClientOptions", "main"]

PROMPT = b"Input lowercase sentence:"
EXIT_USAGE = 2
EXIT_NETWORK = 1


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"--port: {value!r} is not a port number (1-65535)")
    return port


_port.coerceDoc = ""  # type: ignore[attr-defined]


class ClientOptions(usage.Options):
    """
    Options of ``capserv-client``.
    """

    synopsis = "capserv-client [options] [WORD...]"
    longdesc = (
        "Send text to capserv and print it back in capitals. With words, send them as one "
        "message. With no words: an interactive prompt on a terminal; a stream from stdin "
        "to stdout when piped (TCP), or one datagram per line (UDP). "
        "Exit status: 0 ok, 2 usage error, 1 network failure."
    )
    optFlags = [
        ["udp", "u", "Use UDP (default: TCP)."],
        ["ascii", None, "The server runs with --ascii (used over TLS to know when a reply is complete)."],
    ]
    optParameters = [
        ["host", "H", "127.0.0.1", "Server host name or IP address (IPv6 literals welcome).", str],
        ["port", "p", 50007, "Server port.", _port],
        [
            "connect",
            "c",
            None,
            "A Twisted client endpoint string instead of --host/--port: "
            "tcp:HOST:PORT, unix:PATH, tls:HOST:PORT[:trustRoots=CA_DIR_OR_FILE] (TCP only).",
            str,
        ],
        [
            "timeout",
            "t",
            1.0,
            "UDP: seconds to wait for each reply; TCP: seconds to connect is 10x this.",
            number("timeout", float),
        ],
        ["retries", "r", 3, "UDP: tries after the first before giving up.", number("retries", int)],
    ]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"capserv-client {__version__}")
        raise SystemExit(0)

    def parseArgs(self, *words: str) -> None:
        self["words"] = list(words)

    def postOptions(self) -> None:
        if self["udp"] and self["connect"]:
            raise usage.UsageError("--connect takes stream endpoints; use --host and --port with --udp")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be more than 0")


class ClientError(Exception):
    """
    A failure to report in one line, with an exit status.
    """

    def __init__(self, message: str, code: int = EXIT_NETWORK) -> None:
        super().__init__(message)
        self.code = code


def describe_failure(failure: Failure) -> str:
    """
    One line saying what went wrong, for a person.
    """
    from twisted.internet import error

    value = failure.value
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host name ({failure.getErrorMessage().strip()})"
    if failure.check(error.TimeoutError):
        return "timed out connecting"
    if failure.check(error.NoRouteError, error.ConnectError):
        return f"cannot connect: {failure.getErrorMessage().strip()}"
    if failure.check(error.ConnectionLost):
        return "connection lost"
    try:
        from OpenSSL.SSL import Error as TLSError

        if failure.check(TLSError):
            return f"TLS failure: {value}"
    except ImportError:
        pass
    import socket

    if isinstance(value, socket.gaierror):
        return f"cannot resolve the host name ({value.strerror})"
    return failure.getErrorMessage() or type(value).__name__


def _endpoint(reactor: Any, options: ClientOptions) -> IStreamClientEndpoint:
    if options["connect"]:
        try:
            return endpoints.clientFromString(reactor, options["connect"])  # type: ignore[no-any-return]
        except Exception as e:  # Twisted's parsers raise many kinds
            raise ClientError(f"--connect {options['connect']!r}: {e}", EXIT_USAGE) from None
    return endpoints.HostnameEndpoint(reactor, options["host"], options["port"], timeout=options["timeout"] * 10)


def _target(options: ClientOptions) -> str:
    if options["connect"]:
        return str(options["connect"])
    host = options["host"]
    return f"[{host}]:{options['port']}" if ":" in host else f"{host}:{options['port']}"


@inlineCallbacks
def _one_message(reactor: Any, options: ClientOptions, message: bytes) -> Any:
    if options["udp"]:
        if len(message) > MAX_REPLY_IPV4:
            raise ClientError(f"message too long for one datagram ({len(message)} bytes)", EXIT_USAGE)
        reply = yield udp_request(
            reactor, options["host"], options["port"], message, options["timeout"], options["retries"]
        )
    else:
        reply = yield tcp_request(
            _endpoint(reactor, options), message, reactor, options["timeout"] * 5, bool(options["ascii"])
        )
    return reply


@implementer(IHalfCloseableProtocol)
class _StdinToStream(Protocol):
    """
    stdin/stdout side of a piped TCP session: bytes from stdin go to the
    server, the reply goes to stdout, each side pausing the other.
    """

    def __init__(self, session: StreamSession, done: Deferred[None]) -> None:
        self.session = session
        self.done = done

    def connectionMade(self) -> None:
        session = self.session
        session.on_data = self.transport.write  # type: ignore[union-attr]
        # stdout full -> stop reading the socket; socket full -> stop reading stdin.
        self.transport.registerProducer(session.transport, True)  # type: ignore[union-attr]
        session.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        session.done.addCallbacks(self._serverDone, self._serverFailed)

    def dataReceived(self, data: bytes) -> None:
        self.session.write(data)

    def readConnectionLost(self) -> None:
        self.session.transport.unregisterProducer()  # type: ignore[union-attr]
        self.session.finish()

    def writeConnectionLost(self) -> None:
        # stdout closed (the consumer went away): stop.
        self.session.transport.abortConnection()  # type: ignore[union-attr]

    def _serverDone(self, _: object) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _serverFailed(self, failure: Failure) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        if not self.done.called:
            self.done.errback(failure)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class _LineByLine(LineReceiver):
    """
    Read lines from stdin; send each as one request, in order, and print
    each reply on its own line.  With a prompt, the lesson's interactive
    loop.  stdin is paused while a request is in flight, so memory stays
    bounded however much is piped in.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, reactor: Any, options: ClientOptions, prompt: bytes | None, done: Deferred[None]) -> None:
        self.reactor = reactor
        self.options = options
        self.prompt = prompt
        self.done = done
        self.queue: list[bytes] = []
        self.busy = False
        self.ended = False
        self.failure: Failure | None = None

    def connectionMade(self) -> None:
        if self.prompt:
            self.transport.write(self.prompt)  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        self.queue.append(line)
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._next()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(Failure(ClientError(f"a line longer than {self.MAX_LENGTH} bytes", EXIT_USAGE)))

    def readConnectionLost(self) -> None:
        """
        End of input: answer what is left, then close stdout.
        """
        self.ended = True
        if self._buffer:  # a last line without a newline
            rest, self._buffer = self._buffer, b""
            self.queue.append(rest)
        if self.prompt and not self.busy and not self.queue:
            # Ctrl-D at the prompt: end the prompt's line.
            self.transport.write(b"\n")  # type: ignore[union-attr]
        self._next()

    def writeConnectionLost(self) -> None:
        self._fail(Failure(ClientError("stdout was closed")))

    def _next(self) -> None:
        if self.busy or self.failure is not None:
            return
        if not self.queue:
            if self.ended:
                self.transport.loseConnection()  # type: ignore[union-attr]
            else:
                self.transport.resumeProducing()  # type: ignore[union-attr]
            return
        self.busy = True
        line = self.queue.pop(0)
        _one_message(self.reactor, self.options, line).addCallbacks(self._replied, self._fail)

    def _replied(self, reply: bytes) -> None:
        self.busy = False
        self.transport.write(reply + b"\n")  # type: ignore[union-attr]
        if self.prompt and not self.ended:
            self.transport.write(self.prompt)  # type: ignore[union-attr]
        self._next()

    def _fail(self, failure: Failure) -> None:
        self.busy = False
        self.queue.clear()
        if self.failure is None:
            self.failure = failure
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if self.failure is not None:
            self.done.errback(self.failure)
        else:
            self.done.callback(None)


@inlineCallbacks
def _run(reactor: Any, options: ClientOptions) -> Any:
    from twisted.internet.stdio import StandardIO

    words = options["words"]
    if words:
        reply = yield _one_message(reactor, options, " ".join(words).encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.write(reply + b"\n")
        sys.stdout.buffer.flush()
        return
    done: Deferred[None] = Deferred()
    interactive = os.isatty(0)
    if interactive or options["udp"]:
        StandardIO(_LineByLine(reactor, options, PROMPT if interactive else None, done), reactor=reactor)
        yield done
        return
    session = yield open_stream(
        _endpoint(reactor, options), lambda data: None, reactor, options["timeout"] * 5, bool(options["ascii"])
    )
    StandardIO(_StdinToStream(session, done), reactor=reactor)
    yield done


def _main(reactor: Any, options: ClientOptions) -> Deferred[None]:
    def report(failure: Failure) -> None:
        if failure.check(ClientError):
            code = failure.value.code  # type: ignore[union-attr]
            message = str(failure.value)
        else:
            code = EXIT_NETWORK
            message = f"{_target(options)}: {describe_failure(failure)}"
        sys.stderr.write(f"capserv-client: {message}\n")
        raise SystemExit(code)

    return _run(reactor, options).addErrback(report)


def main(argv: list[str] | None = None) -> None:
    """
    Entry point of the ``capserv-client`` console script.
    """
    options = ClientOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        sys.stderr.write(f"capserv-client: {e}\nTry 'capserv-client --help'.\n")
        raise SystemExit(EXIT_USAGE) from None
    task.react(_main, (options,))
