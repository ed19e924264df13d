"""The ``capserv-client`` command (docs/client.rst): the lesson's TCP and UDP clients as one tool."""

from __future__ import annotations

import getopt
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import usage
from twisted.python.failure import Failure

from capserv._options import number, print_and_exit
from capserv._version import __version__
from capserv.client.console import (
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_NETWORK,
    EXIT_USAGE,
    ClientError,
    LineByLine,
    StdinToStream,
    describe_failure,
    silence_stdout,
    stdout_closed,
    stdout_error,
    usage_message,
)
from capserv.client.datagram import MessageTooLongError, show_address, udp_request
from capserv.client.stream import ClientReactor, open_stream, tcp_request
from capserv.endpoints.grammar import DescriptionError, Twisted, checked, host_name, parse, seconds, whole
from capserv.endpoints.tls import client_certificate, tls_unavailable_message, trust_roots

PROMPT = b"Input lowercase sentence:"

CONNECT_FORMS = (
    "tcp:HOST:PORT, tcp6:HOST:PORT, unix:PATH or tls:HOST:PORT[:trustRoots=PEM_FILE_OR_FOLDER], "
    "with an IPv6 address's colons escaped (tcp6:\\:\\:1:50007)"
)


def _option(name: str, must: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A coercer: ``convert``'s result, or "--NAME: 'TEXT' ``must``" where it gives `None` or fails."""
    coerce = checked(convert, lambda text: ValueError(f"--{name}: {text!r} {must}"))
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


_HOST = _option("host", "is not a host name or IP address (IPv6: ::1 or [::1])", host_name)
_PORT = _option("port", "is not a port number (1-65535)", lambda text: whole(text, 1, 65535))
_TIMEOUT = _option("timeout", "is not a number of seconds greater than 0 (for example 1 or 0.5)", seconds)


class ClientOptions(usage.Options):
    """Options of ``capserv-client``: options and words in any order, ``--`` ends the options."""

    synopsis = "capserv-client [options] [WORD...] [options] [-- WORD...]"
    longdesc = (
        "Send text to capserv and print it back in capitals. With words, send them as one "
        "message. With no words: an interactive prompt on a terminal; a stream from stdin "
        "to stdout when piped (TCP), or one datagram per line (UDP). Options may come "
        "before or after the words; '--' ends them. "
        "Exit status: 0 ok, 1 network failure or no reply in time, 2 usage error, "
        "3 local failure (stdout closed or full), 130 interrupted."
    )
    optFlags = [
        ["udp", "u", "Use UDP (default: TCP)."],
        ["ascii", None, "The server runs with --ascii (used over TLS to know when a reply is complete)."],
    ]
    optParameters = [
        ["host", "H", "127.0.0.1", "Server host name or IP address (IPv6: ::1 or [::1]).", _HOST],
        ["port", "p", 50007, "Server port.", _PORT],
        ["connect", "c", None, f"A client endpoint string instead of --host/--port (TCP only): {CONNECT_FORMS}.", str],
        [
            "timeout",
            "t",
            1.0,
            "Seconds, more than 0. UDP: to wait for each reply; TCP, TLS, UNIX: 10x this to connect "
            "and 10x this for the reply (one message), or of silence after the input ends (a pipe).",
            _TIMEOUT,
        ],
        ["retries", "r", 3, "UDP: tries after the first before giving up.", number("retries", int)],
    ]

    def opt_help(self) -> None:
        """Display this help and exit."""
        print_and_exit(str(self), "capserv-client", EXIT_LOCAL)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print_and_exit(f"capserv-client {__version__}", "capserv-client", EXIT_LOCAL)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # GNU getopt takes options among the words; Twisted then reads them with the words after "--".
        argv = list(sys.argv[1:] if options is None else options)
        try:
            opts, words = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        longs = [(self.synonyms.get(name.lstrip("-"), name.lstrip("-")), value) for name, value in opts]
        #: The long names of the options given, to refuse clashing ones.
        self.given = {name for name, _ in longs}
        ordered = [f"--{name}={value}" if name + "=" in self.longOpt else f"--{name}" for name, value in longs]
        super().parseOptions([*ordered, "--", *words])  # type: ignore[no-untyped-call]

    def parseArgs(self, *words: str) -> None:
        self["words"] = list(words)

    def postOptions(self) -> None:
        self["seconds"] = self["timeout"] * 10  # over a stream: to connect, and for each silence of the reply
        if self["udp"] and self["connect"]:
            raise usage.UsageError("--connect takes stream endpoints; use --host and --port with --udp")
        both = sorted(self.given & {"host", "port"})
        if self["connect"] and both:
            raise usage.UsageError(f"--connect names the server itself; leave out --{' and --'.join(both)}")


def connect_endpoint(reactor: ClientReactor, description: str, timeout: float = 30) -> IStreamClientEndpoint:
    """
    The endpoint for a ``--connect`` string (Twisted's, ``tcp6:`` as ``tcp:``, ``tls:`` taking a PEM file or
    folder as ``trustRoots``), connecting within ``timeout`` unless it says; `ClientError` if it cannot be used.
    """
    kind = description.split(":", 1)[0].lower()
    missing = tls_unavailable_message(f"--connect '{description}'") if kind in ("tls", "ssl") else None
    if missing is not None:
        raise ClientError(missing, EXIT_USAGE)

    def tcp(host: str, port: int, timeout: float = timeout, bindAddress: str | None = None) -> Any:  # noqa: N803
        if port == 0:
            raise DescriptionError("port must be a number from 1 to 65535, not '0'")
        bind = (bindAddress, 0) if bindAddress is not None else None
        return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)

    def unix(path: str, timeout: float = timeout, checkPID: bool = False) -> Any:  # noqa: N803
        return endpoints.UNIXClientEndpoint(reactor, path, timeout=timeout, checkPID=checkPID)

    def tls(
        host: str,
        port: int,
        timeout: float = timeout,
        bindAddress: str | None = None,  # noqa: N803
        certificate: str | None = None,
        privateKey: str | None = None,  # noqa: N803
        trustRoots: str | None = None,  # noqa: N803
    ) -> Any:
        from twisted.internet import ssl

        options = ssl.optionsForClientTLS(host, trust_roots(trustRoots), client_certificate(certificate, privateKey))
        return endpoints.wrapClientTLS(options, tcp(host, port, timeout, bindAddress))

    try:
        made = parse(description, {"tcp": tcp, "tcp6": tcp, "unix": unix, "tls": tls})
        if not isinstance(made, Twisted):
            return made  # type: ignore[no-any-return]
        return endpoints.clientFromString(reactor, description)  # type: ignore[no-any-return]
    except DescriptionError as e:
        raise ClientError(f"--connect '{description}': {e}", EXIT_USAGE) from None
    except Exception as e:  # Twisted's parsers raise many kinds, some without text
        why = f"unknown endpoint type {kind!r}" if "Unknown endpoint type" in str(e) else "cannot connect to that"
        raise ClientError(f"--connect '{description}': {why}; write {CONNECT_FORMS}", EXIT_USAGE) from None


def _endpoint(reactor: Any, options: ClientOptions) -> IStreamClientEndpoint:
    if options["connect"]:
        return connect_endpoint(reactor, options["connect"], options["seconds"])
    return endpoints.HostnameEndpoint(reactor, options["host"], options["port"], timeout=options["seconds"])


def _one_message(reactor: Any, options: ClientOptions, message: bytes) -> Deferred[bytes]:
    if options["udp"]:
        return udp_request(reactor, options["host"], options["port"], message, options["timeout"], options["retries"])
    seconds = options["seconds"]
    return tcp_request(_endpoint(reactor, options), message, reactor, seconds, options["ascii"], timeout=seconds)


@inlineCallbacks
def _run(reactor: Any, options: ClientOptions) -> Any:
    from twisted.internet.stdio import StandardIO

    if options["words"]:
        reply = yield _one_message(reactor, options, " ".join(options["words"]).encode("utf-8", "surrogateescape"))
        try:
            sys.stdout.buffer.write(reply + b"\n")
            sys.stdout.buffer.flush()
        except OSError as e:
            raise stdout_error(e) from None
        return
    done: Deferred[None] = Deferred()
    if os.isatty(0) or options["udp"]:
        prompt = PROMPT if os.isatty(0) else None
        StandardIO(LineByLine(lambda line: _one_message(reactor, options, line), prompt, done), reactor=reactor)
        yield done
        return
    seconds = options["seconds"]
    endpoint = _endpoint(reactor, options)
    session = yield open_stream(endpoint, lambda data: None, reactor, seconds, options["ascii"], reply_timeout=seconds)
    done = Deferred(lambda _: session.abort())
    StandardIO(StdinToStream(session, done), reactor=reactor)
    yield done


def _main(reactor: Any, options: ClientOptions) -> Deferred[None]:
    interrupted: list[bool] = []
    running = _run(reactor, options)

    def interrupt(signum: int, frame: object) -> None:
        interrupted.append(True)
        reactor.callFromThread(running.cancel)

    def report(failure: Failure) -> None:
        target = options["connect"] or show_address((options["host"], options["port"]))
        if interrupted and failure.check(CancelledError):
            code, message = EXIT_INTERRUPTED, "interrupted"
        elif failure.check(ClientError):
            code, message = failure.value.code, str(failure.value)  # type: ignore[union-attr]
        elif failure.check(MessageTooLongError):
            code, message = EXIT_USAGE, f"{target}: {failure.value}"
        else:
            code, message = EXIT_NETWORK, f"{target}: {describe_failure(failure)}"
        if code == EXIT_LOCAL:
            silence_stdout()
        sys.stderr.write(f"capserv-client: {message}\n")
        raise SystemExit(code)

    # After the reactor's own handler is installed: Ctrl-C cancels the work, which closes what it opened.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, interrupt)
    return running.addErrback(report)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``capserv-client`` console script."""
    if stdout_closed():  # before anything opens a file, which would take stdout's place
        sys.stderr.write("capserv-client: stdout is closed; give the reply somewhere to go (> /dev/null drops it)\n")
        raise SystemExit(EXIT_LOCAL)
    options = ClientOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"capserv-client: {usage_message(e)} (see capserv-client --help)\n")
        raise SystemExit(EXIT_USAGE) from None
    task.react(_main, (options,))
