"""
Endpoint descriptions: one tokenizer (Twisted's escapes), and one shape per kind, a function whose
signature is its schema as in Twisted's ``_parseTCP``; a parameter's name decides its check (`_VALUES`).
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from capserv.native import DEFAULT_BACKLOG as DEFAULT_BACKLOG
from capserv.protocols._twisted import systemd_descriptors, systemd_names


class DescriptionError(ValueError):
    """A description that cannot be used; the text says what is wrong and what to write."""


def _tokens(description: str) -> Iterator[tuple[str | None, str]]:
    """Each part as ``(key, value)``, with ``key`` `None` for a positional one."""
    key: str | None = None
    text: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:  # Twisted refuses it too: what was meant to follow is missing
                raise DescriptionError(
                    "a backslash at the end escapes nothing; remove it, or write \\\\ for a backslash"
                )
            text.append(escaped)
        elif char == ":":
            yield key, "".join(text)
            key, text = None, []
        elif char == "=" and key is None:
            key, text = "".join(text), []
        else:
            text.append(char)
    yield key, "".join(text)


@dataclass(frozen=True)
class Inet:
    """``tcp:``, ``tcp6:`` or ``udp:``: an IP address and port capserv binds."""

    kind: str
    host: str
    port: int
    backlog: int = DEFAULT_BACKLOG

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.kind == "tcp6" or ":" in self.host else socket.AF_INET

    @property
    def datagram(self) -> bool:
        return self.kind == "udp"

    def where(self) -> str:
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class Unix:
    """``unix:``: a UNIX stream socket capserv binds (and its lock file)."""

    path: str
    mode: int = 0o666
    backlog: int = DEFAULT_BACKLOG
    lockfile: bool = True
    datagram = False

    def where(self) -> str:
        return self.path


@dataclass(frozen=True)
class Adopted:
    """``systemd:`` or ``udp:systemd=N``: a socket systemd passed."""

    index: int
    datagram: bool = False

    def where(self) -> str:
        return f"systemd socket {self.index}"


@dataclass(frozen=True)
class Proxy:
    """``haproxy:INNER``: a stream listener behind the PROXY protocol."""

    inner: Inet | Unix | Adopted


@dataclass(frozen=True)
class Twisted:
    """A description Twisted serves (``ssl:``, plugins), checked as far as its shape goes."""

    description: str
    port: int = 0
    interface: str = ""


def checked(convert: Callable[[str], Any], error: Callable[[str], Exception]) -> Callable[[str], Any]:
    """A check: ``convert``'s result, or ``error(text)`` raised where it gives `None` or fails."""

    def check(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None:
            raise error(text)
        return value

    return check


def _value(must: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A check whose error reads "``must``, not 'TEXT'"."""
    return checked(convert, lambda text: DescriptionError(f"{must}, not {text!r}"))


def whole(text: str, minimum: int = 0, maximum: float = float("inf")) -> int | None:
    """The whole number ``text`` writes, if it is one from ``minimum`` to ``maximum``."""
    value = int(text) if text.isascii() and text.isdigit() else None
    return value if value is not None and minimum <= value <= maximum else None


def seconds(text: str) -> float | None:
    """A finite number of seconds more than 0, or `None` (`ValueError` for no number)."""
    value = float(text)
    return value if 0 < value < float("inf") else None


def _interface(text: str) -> str:
    if not text:
        raise DescriptionError(
            "interface is empty; write an IP address such as 127.0.0.1 (0.0.0.0 for every IPv4 address)"
        )
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise DescriptionError(f"interface must be an IP address such as 127.0.0.1 or \\:\\:1, not {text!r}") from None
    return text


def _path(text: str, bound: bool = True) -> str:
    """A socket's path; for one capserv binds (``bound``), in a folder that exists."""
    if not text:
        raise DescriptionError("no socket path; write unix:PATH")
    folder = os.path.dirname(os.path.abspath(text))
    if bound and not text.startswith("\0") and not os.path.isdir(folder):
        raise DescriptionError(f"folder {folder} does not exist; create it (mkdir -p {folder}) or choose another path")
    return text


def _ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def host_name(text: str) -> str:
    """A host name or IP address, brackets around an IPv6 address taken off."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    bad = not host or "[" in host or "]" in host or any(c.isspace() for c in host)
    if bad or (":" in host and not _ipv6(host)):  # a name has no colon: ':::1' is a mistyped address
        raise DescriptionError(
            f"host must be a host name or IP address, not {text!r}; "
            "escape an IPv6 address's colons (tcp6:\\:\\:1:50007)"
        )
    return host


_FLAG = {"0": False, "1": True}.get
_OCTAL = re.compile("[0-7]{1,4}").fullmatch

#: Each parameter's check and what the forms call it; one not named here takes any text (a file name, say).
_VALUES: dict[str, tuple[Callable[[str], Any], str]] = {
    "port": (_value("port must be a number from 0 to 65535", lambda t: whole(t, 0, 65535)), "PORT"),
    "interface": (_interface, "ADDRESS"),
    "backlog": (_value("backlog must be a whole number >= 1", lambda t: whole(t, 1)), "N"),
    "address": (_path, "PATH"),
    "path": (lambda text: _path(text, bound=False), "PATH"),
    "mode": (_value("mode must be octal permissions such as 660", lambda t: int(t, 8) if _OCTAL(t) else None), "OCTAL"),
    "lockfile": (_value("lockfile must be 0 or 1", _FLAG), "0|1"),
    "checkPID": (_value("checkPID must be 0 or 1", _FLAG), "0|1"),
    "domain": (_value("domain must be INET, INET6 or UNIX", {d: d for d in ("INET", "INET6", "UNIX")}.get), "INET"),
    "privateKey": (str, "KEY.pem"),
    "certKey": (str, "CERT.pem"),
    "index": (_value("index must be a whole number >= 0", whole), "N"),
    "systemd": (_value("systemd must be a whole number >= 0", whole), "N"),
    "host": (host_name, "HOST"),
    "timeout": (_value("timeout must be a number of seconds more than 0", seconds), "SECONDS"),
}


def _tcp(port: int, interface: str = "", backlog: int = DEFAULT_BACKLOG) -> Inet:
    return Inet("tcp", interface, port, backlog)


def _tcp6(port: int, backlog: int = DEFAULT_BACKLOG, interface: str = "::") -> Inet:
    if ":" not in interface:
        raise DescriptionError(f"tcp6 takes an IPv6 interface such as \\:\\:1, not {interface!r}; use tcp: for IPv4")
    return Inet("tcp6", interface, port, backlog)


def _unix(address: str, mode: int = 0o666, backlog: int = DEFAULT_BACKLOG, lockfile: bool = True) -> Unix:
    return Unix(address, mode, backlog, lockfile)


def _udp(port: int | None = None, *, interface: str | None = None, systemd: int | None = None) -> Inet | Adopted:
    if systemd is not None:
        if port is not None or interface is not None:
            raise DescriptionError("udp:systemd=INDEX takes no port or interface")
        return _adopted(systemd, socket.SOCK_DGRAM)
    if port is None:
        raise DescriptionError("no port; write udp:PORT")
    return Inet("udp", interface or "", port)


def _systemd(domain: str, index: int | None = None, name: str | None = None) -> Adopted:
    if (index is None) == (name is None):
        raise DescriptionError("write index=N or name=NAME (the socket unit's FileDescriptorName), one of them")
    if name is not None:
        names = systemd_names()
        if name not in names:
            known = ", ".join(sorted(set(names))) or "none"
            raise DescriptionError(
                f"systemd passed no socket named {name!r} (names: {known}); check FileDescriptorName"
            )
        index = names.index(name)
    assert index is not None
    return _adopted(index, socket.SOCK_STREAM)


def _ssl(
    port: int,
    privateKey: str,  # noqa: N803 (Twisted's names)
    certKey: str | None = None,  # noqa: N803
    sslmethod: str | None = None,
    interface: str = "",
    backlog: int = DEFAULT_BACKLOG,
    extraCertChain: str | None = None,  # noqa: N803
    dhParameters: str | None = None,  # noqa: N803
) -> Twisted:
    from capserv.endpoints.tls import check_server_files

    check_server_files(privateKey, certKey, sslmethod, extraCertChain, dhParameters)
    return Twisted("", port, interface)


def _adopted(index: int, kind: int) -> Adopted:
    """A socket systemd passed, checked: it is there, and of the right type."""
    descriptors = systemd_descriptors()
    if not descriptors:
        raise DescriptionError(
            "systemd passed no sockets (LISTEN_FDS is not set); this form works only under "
            "systemd socket activation: see docs/operations"
        )
    if index >= len(descriptors):
        last = len(descriptors) - 1
        raise DescriptionError(f"systemd passed {last + 1} socket(s); write an index from 0 to {last}")
    with socket.socket(fileno=os.dup(descriptors[index])) as probe:  # a copy, closed after looking
        if probe.type != kind:
            wanted = "stream" if kind == socket.SOCK_STREAM else "datagram"
            raise DescriptionError(
                f"systemd socket {index} is not a {wanted} socket; check the .socket unit's Listen lines"
            )
    return Adopted(index, kind == socket.SOCK_DGRAM)


#: The server kinds capserv reads (``haproxy:`` wraps a stream one; Twisted serves ``ssl:``).
SERVER_KINDS: dict[str, Callable[..., Any]] = {
    "tcp": _tcp,
    "tcp6": _tcp6,
    "unix": _unix,
    "udp": _udp,
    "ssl": _ssl,
    "systemd": _systemd,
}


def parse(description: str, kinds: dict[str, Callable[..., Any]] = SERVER_KINDS) -> Any:
    """What a description's shape (in `SERVER_KINDS`, or a client's kinds) makes, or `Twisted` for another kind."""
    tokens = list(_tokens(description))
    kind = tokens[0][1].strip() if tokens[0][0] is None else ""
    if kind == "haproxy" and kinds is SERVER_KINDS:
        inner = parse(description.split(":", 1)[1]) if ":" in description else None
        if not isinstance(inner, (Inet, Unix, Adopted)) or inner.datagram:
            raise DescriptionError(
                "haproxy: wraps a stream listener; write haproxy:tcp:PORT, haproxy:tcp6:PORT, "
                "haproxy:unix:PATH or haproxy:systemd:domain=INET:index=N"
            )
        return Proxy(inner)
    shape = kinds.get(kind)
    if shape is None:
        if not kind:
            raise DescriptionError(f"no kind given; {kinds_hint(kinds)}")
        if kind.lower() in kinds or kind.lower() == "haproxy":
            raise DescriptionError(f"unknown kind {kind!r}: kinds are lowercase, as in Twisted; write {kind.lower()}:")
        return Twisted(description)
    try:
        made = shape(**_bind(kind, kinds, tokens[1:]))
    except DescriptionError as e:
        raise DescriptionError(_ipv6_hint(description) or str(e)) from None
    return Twisted(description, made.port, made.interface) if isinstance(made, Twisted) else made


def twisted_description(description: str) -> str:
    """The description for ``serverFromString``, with capserv's backlog where the kind takes one and none is given."""
    kind, *tokens = _tokens(description)
    names = list(inspect.signature(SERVER_KINDS[kind[1]]).parameters) if kind[1] in SERVER_KINDS else []
    given = {key for key, _ in tokens if key is not None} | set(names[: sum(key is None for key, _ in tokens)])
    return f"{description}:backlog={DEFAULT_BACKLOG}" if "backlog" in set(names) - given else description


def _bind(kind: str, kinds: dict[str, Callable[..., Any]], tokens: list[tuple[str | None, str]]) -> dict[str, Any]:
    """The shape's keyword arguments from a description's parts (an empty positional one is not given)."""
    parameters = inspect.signature(kinds[kind]).parameters
    positional = [p.name for p in parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    values = [value for key, value in tokens if key is None]
    if len(values) > len(positional):
        raise DescriptionError(f"too many values; write {positional[0]} once")
    texts = {name: value for name, value in zip(positional, values, strict=False) if value}
    for key, value in ((key, value) for key, value in tokens if key is not None):
        if key not in parameters:
            raise DescriptionError(f"unknown parameter {key!r} (this kind takes {', '.join(parameters)})")
        if key in texts:
            raise DescriptionError(f"too many values; write {key} once")
        texts[key] = value
    checked = {name: _VALUES.get(name, (str, ""))[0](text) for name, text in texts.items()}
    for name, parameter in parameters.items():
        if name not in texts and parameter.default is parameter.empty:
            what = "socket path" if _VALUES.get(name, (None, ""))[1] == "PATH" else name
            raise DescriptionError(f"no {what}; write {form(kind, kinds).split('[', 1)[0]}")
    return checked


_UNESCAPED_V6 = re.compile(r"interface=(\[?)((?:[0-9A-Fa-f]*:){2,}[0-9A-Fa-f.]*(?:%[\w.-]+)?)\]?")


def _ipv6_hint(description: str) -> str:
    """A hint to escape an IPv6 address's colons, if that is what went wrong (brackets do not)."""
    match = _UNESCAPED_V6.search(description)
    if match is None or "\\" in match.group(2):
        return ""
    escaped = match.group(2).replace(":", "\\:")
    if match.group(1):
        return f"write an IPv6 address without brackets, its colons escaped: interface={escaped}"
    return f"escape an IPv6 address's colons: write interface={escaped}"


def form(kind: str, kinds: dict[str, Callable[..., Any]] = SERVER_KINDS) -> str:
    """The full form of a kind, from its shape: ``tcp:PORT[:interface=ADDRESS][:backlog=N]``."""
    parts = [kind]
    bare = True  # the leading checked values are written bare: tcp:PORT, not a file name
    for index, p in enumerate(inspect.signature(kinds[kind]).parameters.values()):
        check, metavar = _VALUES.get(p.name, (str, p.name.upper()))
        required = p.default is p.empty
        bare = bare and check is not str and p.kind == p.POSITIONAL_OR_KEYWORD and (required or index == 0)
        part = f":{metavar}" if bare else f":{p.name}={metavar}"
        parts.append(part if bare or required else f"[{part}]")
    return "".join(parts)


def kinds_hint(kinds: dict[str, Callable[..., Any]] = SERVER_KINDS, stream: bool = False) -> str:
    """What to write: every kind's required part (the stream kinds only, with ``stream``)."""
    forms = [form(kind, kinds).split("[", 1)[0] for kind in kinds if not (stream and kind == "udp")]
    if kinds is SERVER_KINDS:
        forms.append("haproxy:tcp:PORT")
    return f"write {', '.join(forms[:-1])} or {forms[-1]}"
