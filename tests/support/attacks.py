"""
Misbehaving clients, on loopback only, for the adversarial tests and the
long runs in ``bench/adversarial.py`` (which imports this module, so a
figure in the docs and a test assertion come from the same attack code).

Every helper is bounded in time and closes what it opens.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import resource
import selectors
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator

from .contract import reference
from .loopback import read_all

#: What a slow reader sends, over and over; its uppercase is known.
PATTERN = b"slow readers pile up replies\n"


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted``; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def connect(host: str, port: int, source: str | None = None, buffers: int | None = None) -> socket.socket:
    """A blocking TCP connection, from ``source`` if given, with small kernel buffers if asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if buffers is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        if source is not None:
            s.bind((source, 0))
        s.settimeout(10)
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


@contextlib.contextmanager
def many(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    """Close every socket in the list at the end, whatever happens."""
    try:
        yield sockets
    finally:
        for s in sockets:
            s.close()


def exchange(host: str, port: int, payload: bytes, source: str | None = None, timeout: float = 10.0) -> bytes:
    """Send, half-close, read to the end."""
    with connect(host, port, source) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def closed_by_server(sockets: list[socket.socket], timeout: float) -> int:
    """
    Wait up to ``timeout`` seconds for the server to close each socket
    (end of stream or reset); how many it closed.  Data the server sends
    first is read and discarded.
    """
    closed = 0
    with selectors.DefaultSelector() as selector:
        for s in sockets:
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while closed < len(sockets):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                s = key.fileobj  # type: ignore[assignment]
                try:
                    data = s.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                if not data:
                    selector.unregister(s)
                    closed += 1
    return closed


def fill_without_reading(
    sockets: list[socket.socket], quiet: float = 1.0, limit: float = 30.0, most: int | None = None
) -> list[int]:
    """
    Send `PATTERN` on every socket without ever reading, until none of them
    has taken a byte for ``quiet`` seconds (the server stopped reading) or
    ``limit`` seconds have passed.  Bytes sent per socket.
    """
    chunk = PATTERN * (16384 // len(PATTERN))
    sent = [0] * len(sockets)
    closed: set[int] = set()
    for s in sockets:
        s.setblocking(False)
    start = last_progress = time.monotonic()
    while True:
        progress = False
        for i, s in enumerate(sockets):
            if i in closed or (most is not None and sent[i] >= most):
                continue
            try:
                n = s.send(chunk[sent[i] % len(PATTERN) :])  # the stream stays PATTERN repeated
            except BlockingIOError:
                continue
            except ConnectionError:
                closed.add(i)  # the server gave up on it (idle timeout): stop here
                continue
            sent[i] += n
            progress = True
        now = time.monotonic()
        if progress:
            last_progress = now
        elif now - last_progress >= quiet or now - start >= limit:
            return sent
        else:
            time.sleep(0.02)


def read_back(s: socket.socket, sent: int, timeout: float = 30.0) -> bytes:
    """Half-close, then read everything the server owes for ``sent`` bytes of `PATTERN`."""
    s.setblocking(True)
    s.settimeout(timeout)
    s.shutdown(socket.SHUT_WR)
    return read_all(s)


def expected_pattern(sent: int) -> bytes:
    """The reply owed for ``sent`` bytes of `PATTERN` sent in a row."""
    whole, part = divmod(sent, len(PATTERN))
    return reference(PATTERN * whole + PATTERN[:part])


def reset(s: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a reset instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def timed_exchanges(host: str, port: int, count: int, payload: bytes = b"keep my latency\n") -> list[float]:
    """
    One connection, ``count`` request/response round trips; the seconds
    each took.  Raises if a reply is not the exact uppercase.
    """
    want = reference(payload)
    times = []
    with connect(host, port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(payload)
            got = b""
            while len(got) < len(want):
                chunk = s.recv(65536)
                if not chunk:
                    raise AssertionError("server closed a normal client")
                got += chunk
            times.append(time.perf_counter() - start)
            if got != want:
                raise AssertionError(f"wrong reply {got!r}")
    return times


# -- UDP -----------------------------------------------------------------------


def can_spoof() -> bool:
    """Whether raw sockets are allowed here (root or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
    except PermissionError:
        return False
    return True


def spoof_udp(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """
    Send one IPv4 UDP datagram with a forged source address and port, as an
    attacker would to start a loop or a reflection.  Needs `can_spoof`.
    """
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", source[1], destination[1], length, 0) + payload  # checksum 0: none (IPv4)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, 5 words
        0,
        20 + length,
        0,  # id: the kernel fills it in
        0,
        64,  # TTL
        socket.IPPROTO_UDP,
        0,  # checksum: the kernel fills it in
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(header + udp, (destination[0], 0))


class UDPEcho:
    """
    An echo server (RFC 862) in a thread: every datagram goes back to its
    source unchanged.  It counts what it bounced.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """
        :param port: the port to serve, 0 for any; a low port (echo is 7)
            is taken if free, else the next free one below 1024, so that
            runs in parallel do not collide.
        """
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        candidates = [port] if port == 0 or port >= 1024 else [port, *range(port + 1, 1024)]
        for candidate in candidates:
            try:
                self.socket.bind((host, candidate))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE or candidate == candidates[-1]:
                    self.socket.close()
                    raise
        self.socket.settimeout(0.1)
        self.address: tuple[str, int] = self.socket.getsockname()
        self.bounced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                self.socket.sendto(data, source)
                self.bounced += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()

    def __enter__(self) -> UDPEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flood(destination: tuple[str, int], count: int, source: str = "127.0.0.1", payload: bytes = b"flood") -> int:
    """
    Send ``count`` datagrams as fast as the kernel takes them from one
    socket, reading replies as they come; how many replies arrived.
    """
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
        sent = 0
        while sent < count:
            try:
                s.sendto(payload, destination)
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.001)
            replies += _drain(s)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            got = _drain(s)
            replies += got
            if not got:
                time.sleep(0.05)
    return replies


def _drain(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(65535)
        except BlockingIOError:
            return n
        n += 1


@contextlib.contextmanager
def kernel_buffers_to_ourselves() -> Iterator[None]:
    """
    Run a test that fills hundreds of megabytes of the kernel's socket
    buffers alone: parallel test runs (tox run-parallel) take turns through
    a lock file.  Two at once can pass Linux's ``tcp_mem`` pressure mark,
    where the kernel holds back every socket on the machine, and a client
    waits on the kernel rather than on capserv.
    """
    import fcntl
    import tempfile

    with open(os.path.join(tempfile.gettempdir(), "capserv-tests-kernel-buffers.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- Fairness: one client's heavy work against another's latency ---------------

#: The bystander's request: one line of 64 bytes.
LINE = b"a bystander's line of sixty-four bytes, timed there and back...\n"


def random_bytes(size: int, seed: int = 18) -> bytes:
    """``size`` random bytes, the same on every run (mostly invalid UTF-8)."""
    return random.Random(seed).randbytes(size)


def latin1_text(size: int) -> bytes:
    """``size`` bytes of French in Latin-1: every accented letter is a byte invalid in UTF-8."""
    sentence = "Ça déjà, l'été à Noël : où naïve Zoë mangeait ses crêpes brûlées. ".encode("latin-1")
    return (sentence * (size // len(sentence) + 1))[:size]


class Bystander:
    """
    A well-behaved client that already holds a connection: in a thread, it
    sends `LINE` every ``interval`` seconds and times each round trip, until
    the ``with`` block ends.  Leaving the block raises what went wrong (a
    wrong reply, a stall past the socket's 10-second timeout).
    """

    def __init__(self, host: str, port: int, interval: float = 0.005) -> None:
        self.interval = interval
        #: The round trips' seconds, in order.
        self.times: list[float] = []
        self._want = reference(LINE)
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self._socket = connect(host, port)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            self._trip()  # open and served before the attack starts
        except BaseException:
            self._socket.close()
            raise
        self.times.clear()

    def _trip(self) -> None:
        s = self._socket
        start = time.perf_counter()
        s.sendall(LINE)
        got = b""
        while len(got) < len(self._want):
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("the server closed the bystander's connection")
            got += chunk
        self.times.append(time.perf_counter() - start)
        if got != self._want:
            raise AssertionError(f"wrong reply to the bystander: {got!r}")

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._trip()
        except BaseException as e:
            self._errors.append(e)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._socket.close()
        if self._errors:
            raise self._errors[0]

    def summary(self) -> dict[str, float]:
        """Round trips, and their p50, p99 and maximum in milliseconds."""
        return percentiles(self.times)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """How many, and the p50, p99 and maximum of ``seconds``, in milliseconds."""
    ms = sorted(t * 1000 for t in seconds)
    if not ms:
        return {"round_trips": 0}
    return {
        "round_trips": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[math.ceil(len(ms) * 0.99) - 1], 3),  # nearest rank
        "max_ms": round(ms[-1], 3),
    }


def stream(host: str, port: int, data: bytes, timeout: float = 60.0) -> bytes:
    """
    A bulk pipe (``producer | nc -N``): one connection sends ``data`` as
    fast as the server takes it while the reply is read, half-closes at the
    end; the whole reply.
    """
    errors: list[BaseException] = []
    with connect(host, port) as s:
        s.settimeout(timeout)

        def send() -> None:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except BaseException as e:
                errors.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            reply = read_all(s)
        except BaseException:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the sender
            raise
        finally:
            sender.join(timeout)
    if errors:
        raise errors[0]
    return reply


def udp_stream(
    host: str, port: int, payloads: list[bytes], rate: float, seconds: float, source: str = "127.0.0.1"
) -> tuple[int, int, int]:
    """
    Send ``payloads`` in turn, ``rate`` datagrams a second for ``seconds``,
    from one socket, reading the replies as they come (and after, until
    none comes for 0.2 s).  (datagrams sent, replies, replies that are the
    exact uppercase of one of the payloads).
    """
    wanted = {reference(p) for p in payloads}
    sent = replies = exact = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)

        def drain() -> int:
            nonlocal replies, exact
            n = 0
            while True:
                try:
                    reply = s.recv(65535)
                except BlockingIOError:
                    return n
                n += 1
                replies += 1
                exact += reply in wanted

        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < elapsed * rate:
                try:
                    s.sendto(payloads[sent % len(payloads)], (host, port))
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    break
                sent += 1
            drain()
            time.sleep(0.001)
        # The last replies: until all are in, or none came for 0.2 s.
        quiet_since = time.monotonic()
        while replies < sent and time.monotonic() - quiet_since < 0.2:
            if drain():
                quiet_since = time.monotonic()
            else:
                time.sleep(0.01)
    return sent, replies, exact
