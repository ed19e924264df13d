"""
What capserv's protocol costs per connection, in memory, and what each
lazy piece of connection set-up saves.

    python bench/setup_cost.py [--connections N]

One connection's life, as the lesson's client makes it (19 others open): accepted, one
64-byte ASCII message, end of input, closed -- through `capserv.native`'s
adapter over a stand-in event-loop transport (no sockets, no log observer;
the clock is Twisted's asyncio reactor, built and not run), so only capserv's and the adapter's Python is measured.
Each lever is switched off in turn by patching this process only:

- ``eager codec``: every connection builds its `Uppercaser` when it is
  made (before: always; now: at the first chunk that is not plain ASCII);
- ``eager abort timer``: a connection closing after end of input schedules
  (and cancels) its abort timer even with nothing left to send;
- (not switchable any more: the read throttle was a separate object
  registered with the transport, in a reference cycle with the protocol
  that only the garbage collector freed; the protocol is its own producer
  now.  Measured before the change: 2.5 to 3.5 us a connection.)

Numbers are for comparing rows of one run; note the load (``uptime``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.logger import globalLogBeginner

import capserv.protocols.tcp
from capserv import CapservConfig, UppercaseFactory
from capserv.native import NativeConnections, NativeTransport

MESSAGE = b"hello from the lesson's client, sixty-four bytes of lowercase..."


class StandInTransport:
    """The event-loop transport calls the adapter makes, doing nothing."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 54321) if name == "peername" else default

    def write(self, data: bytes) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def one_life(listening: NativeConnections) -> None:
    adapter = NativeTransport(listening)
    adapter.connection_made(StandInTransport())  # type: ignore[arg-type]
    adapter.data_received(MESSAGE)
    adapter.eof_received()
    adapter.connection_lost(None)


def per_connection(n: int, life: Callable[[], None], loop: asyncio.AbstractEventLoop) -> float:
    """
    Best of three runs of ``n`` lives, in microseconds each; the event loop
    turns every 500 lives (it drops cancelled timers then).
    """

    def batch(count: int) -> None:
        for i in range(count):
            life()
            if i % 500 == 499:
                loop.run_until_complete(asyncio.sleep(0))

    batch(1000)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        batch(n)
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


@contextmanager
def eager_codec() -> Iterator[None]:
    original = capserv.protocols.tcp.UppercaseProtocol.connectionMade

    def made(self: Any) -> None:
        original(self)
        self._codec = self.factory.codec()

    capserv.protocols.tcp.UppercaseProtocol.connectionMade = made  # type: ignore[method-assign]
    try:
        yield
    finally:
        capserv.protocols.tcp.UppercaseProtocol.connectionMade = original  # type: ignore[method-assign]


@contextmanager
def eager_abort_timer() -> Iterator[None]:
    original = capserv.protocols.tcp.unsent_bytes
    capserv.protocols.tcp.unsent_bytes = lambda transport: None  # type: ignore[assignment]
    try:
        yield
    finally:
        capserv.protocols.tcp.unsent_bytes = original


@contextmanager
def nothing() -> Iterator[None]:
    yield


@contextmanager
def alone() -> Iterator[None]:
    """No other connection open: the idle sweep starts and stops with each."""
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20000)
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    loop = asyncio.new_event_loop()
    # The daemon's clock: Twisted's asyncio reactor (built, not installed).
    reactor = AsyncioSelectorReactor(loop)
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("as committed (lazy codec, no needless abort timer)", nothing),
        ("eager codec", eager_codec),
        ("eager abort timer", eager_abort_timer),
        ("eager codec and abort timer", lambda: _both(eager_codec, eager_abort_timer)),
        ("as committed, one connection at a time (sweep timer each)", alone),
    ]
    print(f"{args.connections} connections, best of 3; load: {os.getloadavg()[0]:.2f}")
    for name, switch in rows:
        factory = UppercaseFactory(CapservConfig(max_connections_per_ip=16384), clock=reactor)
        listening = NativeConnections(factory, socket.AF_INET, loop)
        # 19 more connections stay open, as in the benchmark's 20 in
        # parallel: the idle sweep stays scheduled.
        others = [NativeTransport(listening) for _ in range(0 if switch is alone else 19)]
        for other in others:
            other.connection_made(StandInTransport())  # type: ignore[arg-type]
        with switch():
            micros = per_connection(args.connections, lambda listening=listening: one_life(listening), loop)
        for other in others:
            other.connection_lost(None)
        print(f"{name:52}  {micros:6.2f} us/connection")
        for call in reactor.getDelayedCalls():
            call.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@contextmanager
def _both(*switches: Callable[[], Any]) -> Iterator[None]:
    with switches[0](), switches[1]():
        yield


if __name__ == "__main__":
    main()
