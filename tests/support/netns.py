"""
Hosts made of Linux network namespaces, for tests that need real routing
between machines (``tests/system/test_multihost.py``).

The topology (docs/operations.rst, "Several hosts")::

    capns-client            capns-lb                         capns-host1
    10.77.1.2, 10.77.1.3 -- 10.77.1.1 (the service address)
                            10.77.2.1 (bridge) -------------- 10.77.2.11
                                                 \\---------- 10.77.2.12
                                                             capns-host2

The clients' default route is the load balancer, and so is the hosts', so
replies to a client go back through it and nothing rewrites a client's
address (no SNAT).  Each name carries a suffix (the test process's pid), so
runs side by side do not meet; the addresses are fixed because each
namespace has its own.

A thread can step into a namespace (`Netns.entered`): sockets it creates
and processes it starts there belong to that namespace's network, as with
``ip netns exec``, while the rest of the test process stays where it is.
Namespaces left behind by an earlier run that died are removed
(`remove_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

#: setns(2)'s flag for a network namespace.
CLONE_NEWNET = 0x40000000

#: The service address on the load balancer, and its other side.
VIP = "10.77.1.1"
LB_INSIDE = "10.77.2.1"
#: The client namespace's two addresses (two "clients" for the limits).
CLIENT = "10.77.1.2"
OTHER_CLIENT = "10.77.1.3"
#: The capserv hosts.
HOSTS = ("10.77.2.11", "10.77.2.12")

_STALE = re.compile(r"^capns-\w+-(\d+)$")


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    setns = getattr(os, "setns", None)  # Python 3.12 and later
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def ip(*args: str) -> None:
    """Run one ``ip`` command; an error says which command and why."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Netns:
    """One named network namespace (``ip netns add NAME``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """
        Run the block with the calling thread in this namespace: sockets it
        creates and processes it starts (and the threads it starts) belong
        here; other threads are not moved.  The thread returns where it was.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def enter(self) -> None:
        """Move the calling thread here for good (a thread of its own)."""
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``command`` in this namespace (as ``ip netns exec`` would)."""
        with self.entered():
            return subprocess.Popen(command, text=True, **kwargs)

    def run(self, command: list[str], timeout: float = 30) -> str:
        """Run ``command`` here; its output, or an error naming it and saying why."""
        with self.entered():
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} in {self.name}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def sysctl(self, name: str, value: str) -> None:
        """Set a network sysctl of this namespace (``net.ipv4.ip_forward``)."""
        path = "/proc/sys/" + name.replace(".", "/")
        with self.entered():
            with open(path, "w") as f:
                f.write(value)
            with open(path) as f:
                assert f.read().strip() == value, f"{name} did not take {value} in {self.name}"

    def pids(self) -> list[int]:
        """The processes still running in this namespace."""
        result = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=30)
        return [int(word) for word in result.stdout.split()]

    def delete(self) -> None:
        """
        Kill what still runs here (only this suite's processes can be in
        its namespaces), then remove the namespace and its interfaces.
        """
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)


def remove_stale() -> None:
    """Remove namespaces of earlier runs whose test process has died."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _STALE.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            Netns(name).delete()
        except PermissionError:
            pass  # a live process of someone else's


class Topology:
    """
    A client, a load balancer and two hosts; `build` makes them, `destroy`
    removes everything (also after a failed `build`).
    """

    def __init__(self, suffix: str | None = None) -> None:
        suffix = suffix or str(os.getpid())
        self.client = Netns(f"capns-client-{suffix}")
        self.lb = Netns(f"capns-lb-{suffix}")
        self.hosts = [Netns(f"capns-host{i}-{suffix}") for i in (1, 2)]

    @property
    def all(self) -> list[Netns]:
        return [self.client, self.lb, *self.hosts]

    def build(self) -> None:
        """Make the namespaces, links, addresses and routes."""
        for ns in self.all:
            ip("netns", "add", ns.name)
            ip("-n", ns.name, "link", "set", "lo", "up")
        lb = self.lb.name
        # client <-> lb: one veth pair.
        ip("-n", lb, "link", "add", "client", "type", "veth", "peer", "name", "eth0", "netns", self.client.name)
        ip("-n", lb, "addr", "add", f"{VIP}/24", "dev", "client")
        ip("-n", lb, "link", "set", "client", "up")
        for address in (CLIENT, OTHER_CLIENT):
            ip("-n", self.client.name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", self.client.name, "link", "set", "eth0", "up")
        ip("-n", self.client.name, "route", "add", "default", "via", VIP)
        # lb <-> hosts: a bridge in the lb with a veth pair to each host.
        ip("-n", lb, "link", "add", "br0", "type", "bridge")
        ip("-n", lb, "addr", "add", f"{LB_INSIDE}/24", "dev", "br0")
        ip("-n", lb, "link", "set", "br0", "up")
        for index, (ns, address) in enumerate(zip(self.hosts, HOSTS, strict=True), start=1):
            port = f"host{index}"
            ip("-n", lb, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            ip("-n", lb, "link", "set", port, "master", "br0")
            ip("-n", lb, "link", "set", port, "up")
            ip("-n", ns.name, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns.name, "link", "set", "eth0", "up")
            ip("-n", ns.name, "route", "add", "default", "via", LB_INSIDE)
        self.lb.sysctl("net.ipv4.ip_forward", "1")

    def destroy(self) -> None:
        for ns in self.all:
            ns.delete()
