"""
The ``capserv-client`` command: the lesson's TCP and UDP clients as one
tool, built on `capserv.client`.

- Words are one message (joined with spaces, as ``echo`` does); the reply is
  printed with a newline.  Options may come before or after the words;
  ``--`` ends the options, so a word after it may start with ``-``.
- No words and a terminal on stdin: the lesson's interactive loop, with its
  prompt, until end of input.
- No words and a pipe on stdin: over TCP, stdin is streamed to the server and
  the reply to stdout byte for byte, in bounded memory (each side pauses the
  other); over UDP, one datagram per line and one reply line each.

Exit status: 0 on success, 2 for a usage error (or TLS asked for where it is
not installed), 1 for a network failure (refused, unreachable, unknown name,
TLS failure, no UDP reply, a UDP reply too long to read whole).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv._options import number
from capserv._version import __version__
from capserv.client import (
    MessageTooLongError,
    ReplyTooLongError,
    StreamSession,
    open_stream,
    tcp_request,
    udp_request,
)
from capserv.endpoints.grammar import CLIENT_KINDS, DescriptionError, TLSClient, parse, split_description
from capserv.endpoints.tls import tls_unavailable_message

__all__ = [
    "CONNECT_FORMS",
    "EXIT_NETWORK",
    "EXIT_USAGE",
    "ClientOptions",
    "connect_endpoint",
    "main",
    "split_description",
]

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


def _host(value: str) -> str:
    """
    A host name or IP address; an IPv6 address may be written in brackets,
    as in URLs (``[::1]``).
    """
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not host or "[" in host or "]" in host or any(c.isspace() for c in host):
        raise ValueError(f"--host: {value!r} is not a host name or IP address (IPv6: ::1 or [::1])")
    return host


_host.coerceDoc = ""  # type: ignore[attr-defined]


def _seconds(value: str) -> float:
    """
    A number of seconds greater than 0: the one rule for ``--timeout``.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"--timeout: {value!r} is not a number of seconds greater than 0 (for example 1 or 0.5)")
    return seconds


_seconds.coerceDoc = ""  # type: ignore[attr-defined]

#: The ``--connect`` forms, for error messages.
CONNECT_FORMS = (
    "tcp:HOST:PORT, tcp6:HOST:PORT, unix:PATH or tls:HOST:PORT[:trustRoots=PEM_FILE_OR_FOLDER], "
    "with an IPv6 address's colons escaped (tcp6:\\:\\:1:50007)"
)


class ClientOptions(usage.Options):
    """
    Options of ``capserv-client``.
    """

    synopsis = "capserv-client [options] [WORD...] [options] [-- WORD...]"
    longdesc = (
        "Send text to capserv and print it back in capitals. With words, send them as one "
        "message. With no words: an interactive prompt on a terminal; a stream from stdin "
        "to stdout when piped (TCP), or one datagram per line (UDP). Options may come "
        "before or after the words; '--' ends them. "
        "Exit status: 0 ok, 2 usage error, 1 network failure."
    )
    optFlags = [
        ["udp", "u", "Use UDP (default: TCP)."],
        ["ascii", None, "The server runs with --ascii (used over TLS to know when a reply is complete)."],
    ]
    optParameters = [
        ["host", "H", "127.0.0.1", "Server host name or IP address (IPv6: ::1 or [::1]).", _host],
        ["port", "p", 50007, "Server port.", _port],
        [
            "connect",
            "c",
            None,
            "A Twisted client endpoint string instead of --host/--port: "
            "tcp:HOST:PORT, tcp6:HOST:PORT, unix:PATH, tls:HOST:PORT[:trustRoots=PEM_FILE_OR_FOLDER] "
            "(TCP only; IPv6 colons escaped: tcp6:\\:\\:1:50007).",
            str,
        ],
        [
            "timeout",
            "t",
            1.0,
            "Seconds, more than 0. UDP: to wait for each reply; TCP: 10x this to connect.",
            _seconds,
        ],
        ["retries", "r", 3, "UDP: tries after the first before giving up.", number("retries", int)],
    ]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"capserv-client {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse ``options`` (``sys.argv[1:]`` if `None`), options and words
        in any order: the options are moved before the words, and ``--``
        ends them.
        """
        argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(self.options_first(argv))  # type: ignore[no-untyped-call]

    def options_first(self, argv: list[str]) -> list[str]:
        """
        ``argv`` with every option (and its value) before the words,
        followed by ``--`` and the words, in their order.
        """
        long_values = {name[:-1] for name in self.longOpt if name.endswith("=")}
        long_names = [name.rstrip("=") for name in self.longOpt]
        short_values = {c for c, after in zip(self.shortOpt, self.shortOpt[1:] + " ", strict=True) if after == ":"}
        opts: list[str] = []
        words: list[str] = []
        args = iter(argv)
        for arg in args:
            if arg == "--":
                words.extend(args)
                break
            if arg.startswith("--"):
                opts.append(arg)
                name = arg[2:]
                # getopt takes any unambiguous prefix of a long option.
                matches = [n for n in long_names if n == name] or [n for n in long_names if n.startswith(name)]
                if "=" not in arg and len(matches) == 1 and matches[0] in long_values:
                    if not _take(args, opts):
                        return opts  # the value is missing: getopt says so
            elif arg.startswith("-") and arg != "-":
                opts.append(arg)
                for index, letter in enumerate(arg[1:]):
                    if letter in short_values:
                        if index == len(arg) - 2 and not _take(args, opts):  # the value is the next argument
                            return opts
                        break
            else:
                words.append(arg)
        return [*opts, "--", *words]

    def parseArgs(self, *words: str) -> None:
        self["words"] = list(words)

    def postOptions(self) -> None:
        if self["udp"] and self["connect"]:
            raise usage.UsageError("--connect takes stream endpoints; use --host and --port with --udp")


def _take(args: Any, into: list[str]) -> bool:
    """
    Move the next argument (an option's value) from ``args`` to ``into``.
    """
    value = next(args, None)
    if value is None:
        return False
    into.append(value)
    return True


def usage_message(error: usage.UsageError) -> str:
    """
    A usage error in capserv's words, one line.
    """
    message = str(error)
    message = message.removeprefix("Parameter type enforcement failed: ")
    unknown = re.fullmatch(r"option (-\S*) not recognized", message)
    if unknown:
        return f"unknown option {unknown.group(1)} (a word that starts with '-' goes after '--')"
    needs = re.fullmatch(r"option (-\S*) requires argument", message)
    if needs:
        return f"option {needs.group(1)} needs a value"
    return message


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
        os_error = getattr(value, "osError", None)
        code = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None)
        if code == errno.ENOENT:
            return "no such socket file (is capserv listening on that path?)"
        if code == errno.EACCES:
            return "permission denied"
        if isinstance(code, int):
            return f"cannot connect: {os.strerror(code)}"
        return f"cannot connect: {failure.getErrorMessage().strip()}"
    if failure.check(error.ConnectionLost):
        return "connection lost"
    if failure.check(ReplyTooLongError):
        return str(value)
    try:
        from OpenSSL.SSL import Error as TLSError

        if failure.check(TLSError):
            text = str(value)
            if "certificate verify failed" in text:
                return (
                    "the server's TLS certificate is not trusted here; give its CA with "
                    "trustRoots=PEM_FILE_OR_FOLDER in --connect (see capserv-client --help)"
                )
            if "wrong version number" in text or "unexpected eof" in text.lower():
                return "the server did not answer in TLS (is it a tls:/ssl: listener?)"
            return f"TLS failure: {text}"
    except ImportError:
        pass
    import socket

    if isinstance(value, socket.gaierror):
        return f"cannot resolve the host name ({value.strerror})"
    return failure.getErrorMessage() or type(value).__name__


def _endpoint(reactor: Any, options: ClientOptions) -> IStreamClientEndpoint:
    description = options["connect"]
    timeout = options["timeout"] * 10
    if not description:
        return endpoints.HostnameEndpoint(reactor, options["host"], options["port"], timeout=timeout)
    return connect_endpoint(reactor, description, timeout)


def connect_endpoint(reactor: Any, description: str, timeout: float = 30) -> IStreamClientEndpoint:
    """
    The endpoint for a ``--connect`` string.

    Twisted's client endpoint strings, with two additions: ``tcp6:`` is
    taken as ``tcp:`` (the form the daemon's ``--listen`` uses; Twisted's
    ``tcp:`` client connects to IPv6 addresses), and ``tls:`` is built by
    capserv so that ``trustRoots`` may name a PEM file as well as a folder
    and the host may be an IP address.

    :param timeout: seconds to connect, unless the string says.
    :raise ClientError: with a one-line message for a string that cannot be
        used, or for ``tls:``/``ssl:`` where TLS is not installed.
    """
    kind = description.split(":", 1)[0].lower()
    if kind in ("tls", "ssl"):
        missing = tls_unavailable_message(f"--connect {description!r}")
        if missing is not None:
            raise ClientError(missing, EXIT_USAGE)
    if kind == "tls":
        return _tls_endpoint(reactor, description, timeout)
    twisted_form = "tcp" + description[4:] if kind == "tcp6" else description
    try:
        return endpoints.clientFromString(reactor, twisted_form)  # type: ignore[no-any-return]
    except Exception as e:  # Twisted's parsers raise many kinds, some without text
        why = f"unknown endpoint type {kind!r}" if "Unknown endpoint type" in str(e) else "cannot connect to that"
        raise ClientError(f"--connect {description!r}: {why}; write {CONNECT_FORMS}", EXIT_USAGE) from None


def _tls_endpoint(reactor: Any, description: str, timeout: float) -> IStreamClientEndpoint:
    from twisted.internet import ssl

    def bad(why: str) -> ClientError:
        return ClientError(f"--connect {description!r}: {why}", EXIT_USAGE)

    try:
        tls: TLSClient = parse(description, CLIENT_KINDS)
    except DescriptionError as e:
        raise bad(f"{e}; write {CONNECT_FORMS}") from None
    trust = _trust_roots(tls.trustRoots, bad) if tls.trustRoots is not None else None
    client_certificate = None
    if tls.certificate is not None:
        pem = _read(tls.certificate, "certificate", bad)
        if tls.privateKey is not None:
            pem += b"\n" + _read(tls.privateKey, "privateKey", bad)
        try:
            client_certificate = ssl.PrivateCertificate.loadPEM(pem)
        except Exception:
            raise bad("certificate/privateKey: not a PEM certificate and private key") from None
    options = ssl.optionsForClientTLS(tls.host, trustRoot=trust, clientCertificate=client_certificate)
    bind = (tls.bindAddress, 0) if tls.bindAddress is not None else None
    seconds = tls.timeout or timeout
    inner = endpoints.HostnameEndpoint(reactor, tls.host, tls.port, timeout=seconds, bindAddress=bind)
    return endpoints.wrapClientTLS(options, inner)


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _read(path: str, what: str, bad: Any) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise bad(f"{what}={path}: cannot read it ({e.strerror})") from None


def _trust_roots(path: str, bad: Any) -> Any:
    """
    The certificate authorities in a PEM file, or in the PEM files of a
    folder, as a trust root.
    """
    from twisted.internet import ssl

    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path))
        files = [name for name in files if os.path.isfile(name)]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise bad(f"trustRoots={path}: no such file or folder")
    certificates = []
    for name in files:
        for block in _PEM_CERTIFICATE.findall(_read(name, "trustRoots", bad)):
            try:
                certificates.append(ssl.Certificate.loadPEM(block))
            except Exception:
                raise bad(f"trustRoots={path}: {name} holds a certificate that cannot be read") from None
    if not certificates:
        raise bad(f"trustRoots={path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    return ssl.trustRootFromCertificates(certificates)


def _target(options: ClientOptions) -> str:
    if options["connect"]:
        return str(options["connect"])
    host = options["host"]
    return f"[{host}]:{options['port']}" if ":" in host else f"{host}:{options['port']}"


@inlineCallbacks
def _one_message(reactor: Any, options: ClientOptions, message: bytes) -> Any:
    if options["udp"]:
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
        rest = self.clearLineBuffer()  # type: ignore[no-untyped-call,unused-ignore]  # a last line without a newline
        if rest:
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
        elif failure.check(MessageTooLongError):
            code = EXIT_USAGE
            message = f"{_target(options)}: {failure.value}"
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
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"capserv-client: {usage_message(e)} (see capserv-client --help)\n")
        raise SystemExit(EXIT_USAGE) from None
    task.react(_main, (options,))
