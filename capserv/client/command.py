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

Exit status: 0 on success, 1 for a network failure (refused, unreachable,
unknown name, TLS failure, no reply in time, a UDP reply too long to read
whole), 2 for a usage error (or TLS asked for where it is not installed), 3
for a local failure (stdout closed or full), 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import usage
from twisted.python.failure import Failure

from capserv._options import number
from capserv._version import __version__
from capserv.client._console import (
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_NETWORK,
    EXIT_USAGE,
    ClientError,
    LineByLine,
    StdinToStream,
    describe_failure,
    silence_stdout,
    stdout_error,
    usage_message,
)
from capserv.client._udp import MessageTooLongError, udp_request
from capserv.client.api import ClientReactor, open_stream, tcp_request
from capserv.endpoints.grammar import CLIENT_KINDS, DescriptionError, TLSClient, parse, split_description
from capserv.endpoints.tls import tls_unavailable_message

__all__ = [
    "CONNECT_FORMS",
    "EXIT_INTERRUPTED",
    "EXIT_LOCAL",
    "EXIT_NETWORK",
    "EXIT_USAGE",
    "ClientError",
    "ClientOptions",
    "connect_endpoint",
    "main",
    "split_description",
]

PROMPT = b"Input lowercase sentence:"


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
        "Exit status: 0 ok, 1 network failure or no reply in time, 2 usage error, "
        "3 local failure (stdout closed or full), 130 interrupted."
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
            "Seconds, more than 0. UDP: to wait for each reply; TCP, TLS, UNIX: 10x this to connect "
            "and 10x this for the reply (one message), or of silence after the input ends (a pipe).",
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
        #: The long names of the options given, to refuse clashing ones.
        self.given: set[str] = set()
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
                name = arg[2:].split("=", 1)[0]
                # getopt takes any unambiguous prefix of a long option.
                matches = [n for n in long_names if n == name] or [n for n in long_names if n.startswith(name)]
                self.given.update(self.synonyms.get(n, n) for n in matches[:1] if len(matches) == 1)
                if "=" not in arg and len(matches) == 1 and matches[0] in long_values:
                    if not _take(args, opts):
                        return opts  # the value is missing: getopt says so
            elif arg.startswith("-") and arg != "-":
                opts.append(arg)
                for index, letter in enumerate(arg[1:]):
                    self.given.add(self.synonyms.get(letter, letter))
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
        both = sorted(self.given & {"host", "port"})
        if self["connect"] and both:
            raise usage.UsageError(f"--connect names the server itself; leave out --{' and --'.join(both)}")


def _take(args: Any, into: list[str]) -> bool:
    """
    Move the next argument (an option's value) from ``args`` to ``into``.
    """
    value = next(args, None)
    if value is None:
        return False
    into.append(value)
    return True


def _endpoint(reactor: ClientReactor, options: ClientOptions) -> IStreamClientEndpoint:
    description = options["connect"]
    timeout = options["timeout"] * 10
    if not description:
        return endpoints.HostnameEndpoint(reactor, options["host"], options["port"], timeout=timeout)
    return connect_endpoint(reactor, description, timeout)


def connect_endpoint(reactor: ClientReactor, description: str, timeout: float = 30) -> IStreamClientEndpoint:
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
    missing = _missing(kind, split_description(description)[1:])
    if missing:
        raise ClientError(f"--connect {description!r}: {missing}", EXIT_USAGE)
    try:
        return endpoints.clientFromString(reactor, twisted_form)  # type: ignore[no-any-return]
    except Exception as e:  # Twisted's parsers raise many kinds, some without text
        why = f"unknown endpoint type {kind!r}" if "Unknown endpoint type" in str(e) else "cannot connect to that"
        raise ClientError(f"--connect {description!r}: {why}; write {CONNECT_FORMS}", EXIT_USAGE) from None


def _missing(kind: str, parts: list[str]) -> str | None:
    """
    What a tcp:, tcp6: or unix: string lacks, said with the form to write.
    """
    positional = [part for part in parts if "=" not in part]
    keys = {part.split("=", 1)[0] for part in parts if "=" in part}
    if kind == "unix" and not any(positional) and "path" not in keys:
        return "no socket path; write unix:PATH"
    if kind in ("tcp", "tcp6"):
        if not any(positional) and "host" not in keys:
            return f"no host; write {kind}:HOST:PORT"
        if len(positional) + len(keys & {"host", "port"}) < 2:
            return f"no port; write {kind}:HOST:PORT"
    return None


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


def _one_message(reactor: Any, options: ClientOptions, message: bytes) -> Deferred[bytes]:
    if options["udp"]:
        return udp_request(reactor, options["host"], options["port"], message, options["timeout"], options["retries"])
    seconds = options["timeout"] * 10
    endpoint = _endpoint(reactor, options)
    return tcp_request(endpoint, message, reactor, seconds, bool(options["ascii"]), timeout=seconds)


def _write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as e:
        raise stdout_error(e) from None


@inlineCallbacks
def _run(reactor: Any, options: ClientOptions) -> Any:
    from twisted.internet.stdio import StandardIO

    words = options["words"]
    if words:
        reply = yield _one_message(reactor, options, " ".join(words).encode("utf-8", "surrogateescape"))
        _write_stdout(reply + b"\n")
        return
    done: Deferred[None] = Deferred()
    interactive = os.isatty(0)
    if interactive or options["udp"]:
        prompt = PROMPT if interactive else None
        StandardIO(LineByLine(lambda line: _one_message(reactor, options, line), prompt, done), reactor=reactor)
        yield done
        return
    seconds = options["timeout"] * 10
    endpoint = _endpoint(reactor, options)
    session = yield open_stream(
        endpoint,
        lambda data: None,
        reactor,
        seconds,
        bool(options["ascii"]),
        reply_timeout=seconds,
    )
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
        if interrupted and failure.check(CancelledError):
            code, message = EXIT_INTERRUPTED, "interrupted"
        elif failure.check(ClientError):
            code = failure.value.code  # type: ignore[union-attr]
            message = str(failure.value)
        elif failure.check(MessageTooLongError):
            code = EXIT_USAGE
            message = f"{_target(options)}: {failure.value}"
        else:
            code = EXIT_NETWORK
            message = f"{_target(options)}: {describe_failure(failure)}"
        if code == EXIT_LOCAL:
            silence_stdout()
        sys.stderr.write(f"capserv-client: {message}\n")
        raise SystemExit(code)

    # After the reactor's own handler is installed: Ctrl-C cancels the work, which closes what it opened.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, interrupt)
    return running.addErrback(report)


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
