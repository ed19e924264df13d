"""
Many cores: ``--workers N`` runs N processes serving the same TCP and UDP
ports.

Every process binds its own sockets with ``SO_REUSEPORT`` and hands them to
Twisted with ``adoptStreamPort`` / ``adoptDatagramPort`` (public API on every
Twisted version); the kernel spreads new connections and datagrams across
them.  The first process (the one twistd runs) binds first, so ``port 0``
becomes a real port, then starts the other N-1 as ``twistd`` children on
the same concrete ports.  A graceful stop passes SIGTERM on to the children
and waits for them all.  Linux only; ``tcp:``, ``tcp6:`` and ``udp:`` listen
strings only (a UNIX socket or an adopted systemd socket cannot be shared
this way).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from capserv.addresses import describe
from capserv.listen import ListenError, PortListener, _arguments, parse_udp
from capserv.udp import MAX_DATAGRAM

__all__ = ["ReusePortListener", "SharedAddress", "WorkerPool", "parse_shared", "reuse_port_supported"]


def reuse_port_supported() -> bool:
    """
    Tell whether this system offers ``SO_REUSEPORT`` with load balancing.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


@dataclass(frozen=True)
class SharedAddress:
    """
    A listen description that several processes can bind together.
    """

    kind: str  # "tcp" or "udp"
    family: int
    interface: str
    port: int
    backlog: int = 1024

    def description(self, port: int | None = None) -> str:
        """
        The listen string for this address (with a concrete port).
        """
        interface = self.interface.replace(":", "\\:")
        prefix = "tcp6" if self.kind == "tcp" and self.family == socket.AF_INET6 else self.kind
        return f"{prefix}:{self.port if port is None else port}:interface={interface}"


def parse_shared(description: str) -> SharedAddress:
    """
    Parse a ``tcp:``, ``tcp6:`` or ``udp:`` description for sharing.

    :raises ListenError: for any other kind, naming it.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind == "udp":
        udp = parse_udp(description)
        if udp.systemd is not None:
            raise ListenError(f"{description!r}: --workers cannot share a socket passed by systemd")
        interface = udp.interface or "0.0.0.0"
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        return SharedAddress("udp", family, interface, udp.port)
    if kind not in ("tcp", "tcp6"):
        raise ListenError(f"{description!r}: --workers shares only tcp:, tcp6: and udp: listen strings")
    args, kwargs = _arguments(description)
    if args:
        kwargs.setdefault("port", args[0])
    unknown = set(kwargs) - {"port", "interface", "backlog"}
    if unknown or "port" not in kwargs:
        raise ListenError(f"{description!r}: expected {kind}:PORT[:interface=ADDRESS][:backlog=N]")
    try:
        port = int(kwargs["port"])
        backlog = int(kwargs.get("backlog", "1024"))
    except ValueError:
        raise ListenError(f"{description!r}: port and backlog must be numbers") from None
    interface = kwargs.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return SharedAddress("tcp", family, interface, port, backlog)


class ReusePortListener(PortListener):
    """
    Bind one address with ``SO_REUSEPORT`` and serve it with a factory (TCP)
    or a datagram protocol (UDP).
    """

    _log = Logger()

    def __init__(
        self, description: str, address: SharedAddress, handler: Factory | DatagramProtocol, reactor: Any
    ) -> None:
        self.description = description
        self.address = address
        self.handler = handler
        self.reactor = reactor

    @property
    def bound_port(self) -> int:
        return int(self.port.getHost().port)

    def privilegedStartService(self) -> None:
        address = self.address
        kind = socket.SOCK_STREAM if address.kind == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(address.family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.interface, address.port))
            sock.setblocking(False)
            if address.kind == "tcp":
                sock.listen(address.backlog)
                self.port = self.reactor.adoptStreamPort(sock.fileno(), address.family, self.handler)
            else:
                self.port = self.reactor.adoptDatagramPort(
                    sock.fileno(), address.family, self.handler, maxPacketSize=MAX_DATAGRAM
                )
        except OSError as e:
            raise ListenError(f"cannot listen on {self.description!r}: {e.strerror or e}") from None
        finally:
            sock.close()  # Twisted holds its own duplicate
        what = "streams" if address.kind == "tcp" else "datagrams"
        self._log.info(
            "Listening for {what} on {address} ({description}, shared with SO_REUSEPORT)",
            what=what,
            address=describe(self.port.getHost()),
            description=self.description,
        )
        Service.privilegedStartService(self)


def _die_with_parent() -> None:
    """In a child: get SIGTERM if the parent dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class WorkerPool(Service):
    """
    Start the N-1 other workers once this process is listening, and stop
    them with it.
    """

    _log = Logger()

    def __init__(
        self,
        count: int,
        twistd_args: list[str],
        capserv_args: list[str],
        listeners: list[ReusePortListener],
        reactor: Any,
        stop_timeout: float,
    ) -> None:
        self.count = count
        self.twistd_args = twistd_args
        self.capserv_args = capserv_args
        self.listeners = listeners
        self.reactor = reactor
        self.stop_timeout = stop_timeout
        self.children: list[subprocess.Popen[bytes]] = []
        self._watch: LoopingCall | None = None

    def child_command(self) -> list[str]:
        listen = []
        for listener in self.listeners:
            listen += ["--listen", listener.address.description(listener.bound_port)]
        return [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            *self.twistd_args,
            "capserv",
            *self.capserv_args,
            *listen,
            "--worker",
        ]

    def startService(self) -> None:
        Service.startService(self)
        command = self.child_command()
        for _ in range(self.count - 1):
            self.children.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        self._log.info("Started {n} more workers: {pids}", n=len(self.children), pids=[c.pid for c in self.children])
        self._watch = LoopingCall(self._check)
        self._watch.clock = self.reactor
        self._watch.start(1.0, now=False)

    def _check(self) -> None:
        for child in self.children:
            code = child.poll()
            if code is not None and not getattr(child, "_reported", False):
                child._reported = True  # type: ignore[attr-defined]
                self._log.error("Worker {pid} exited with status {code}", pid=child.pid, code=code)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        running = [c for c in self.children if c.poll() is None]
        if not running:
            return succeed(None)
        for child in running:
            child.send_signal(signal.SIGTERM)
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.stop_timeout

        def poll() -> None:
            left = [c for c in running if c.poll() is None]
            if not left:
                waiter.stop()
                done.callback(None)
            elif self.reactor.seconds() > deadline:
                for child in left:
                    child.kill()
                    child.wait()
                self._log.warn("Killed {n} workers that did not stop in time", n=len(left))
                waiter.stop()
                done.callback(None)

        waiter = LoopingCall(poll)
        waiter.clock = self.reactor
        waiter.start(0.05)
        return done
