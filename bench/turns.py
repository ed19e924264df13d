"""
How much of one connection's work a turn of the event loop holds, on each
transport capserv serves.

    python bench/turns.py [--loop uvloop|asyncio] [--megabytes 20]

One process runs Twisted's asyncio reactor on uvloop's loop (as the daemon
does; ``--loop asyncio`` for asyncio's own) and serves capserv's factory,
with a protocol that records each ``dataReceived``, on: the event loop's
own transports (``capserv.native``) over TCP, UNIX and behind the PROXY
protocol; Twisted's over TCP, UNIX, behind the PROXY protocol and TLS; and
Twisted's TCP with ``--high-water`` at 1 MiB.  One client streams random
bytes (the codec's dearest input) to each in turn and reads the reply.  A
callback the loop runs once a turn counts the turns.  Prints, per transport:
the largest single ``dataReceived``, the most bytes handed on in one turn,
and the median and largest time a turn spent in ``dataReceived``
(uppercasing and writing, wall clock: on a shared machine the largest
includes time the process waited for a core).

Loopback only; every listener and connection is closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROXY_HEADER = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50007\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--megabytes", type=int, default=20, help="bytes each client streams (20 MB)")
    args = parser.parse_args()

    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from capserv import CapservConfig, UppercaseFactory, UppercaseProtocol
    from capserv.endpoints.native import native_endpoint
    from capserv.protocols._twisted import proxy_protocol_factory

    turn = [0]

    def tick() -> None:
        turn[0] += 1
        loop.call_soon(tick)

    class Recording(UppercaseProtocol):
        def dataReceived(self, data: bytes) -> None:
            start = time.perf_counter()
            super().dataReceived(data)
            spent = time.perf_counter() - start
            record = self.factory.turns.setdefault(turn[0], [0, 0.0])  # type: ignore[attr-defined]
            record[0] += len(data)
            record[1] += spent
            self.factory.largest = max(self.factory.largest, len(data))  # type: ignore[attr-defined]

    class RecordingFactory(UppercaseFactory):
        turns: dict[int, list[Any]]
        largest = 0

        def buildProtocol(self, addr: Any) -> Any:
            return Recording(self, addr)

    data = os.urandom(args.megabytes * 1_000_000)
    folder = tempfile.mkdtemp(prefix="capserv-turns-")
    cases: list[tuple[str, str, bool, dict[str, Any]]] = [
        ("native tcp", "tcp:0:interface=127.0.0.1", True, {}),
        ("native unix", f"unix:{folder}/native.sock", True, {}),
        ("native haproxy:tcp", "tcp:0:interface=127.0.0.1", True, {"proxy": True}),
        ("twisted tcp", "tcp:0:interface=127.0.0.1", False, {}),
        ("twisted unix", f"unix:{folder}/twisted.sock", False, {}),
        ("twisted haproxy:tcp", "tcp:0:interface=127.0.0.1", False, {"proxy": True}),
        ("twisted tcp, --high-water 1 MiB", "tcp:0:interface=127.0.0.1", False, {"high_water": 1 << 20}),
    ]
    try:
        import trustme
    except ImportError:
        print("trustme is not installed (pip install trustme): no TLS case")
    else:
        pem = os.path.join(folder, "server.pem")
        trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
        cases.insert(6, ("twisted ssl", f"ssl:0:interface=127.0.0.1:privateKey={pem}", False, {"tls": True}))

    def client(address: Any, tls: bool, proxy: bool) -> int:
        family = socket.AF_UNIX if isinstance(address, (str, bytes)) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
            s.connect(address)
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s = context.wrap_socket(s)
            if proxy:
                s.sendall(PROXY_HEADER)
            got = [0]

            def read() -> None:
                with contextlib.suppress(OSError):  # closed under it
                    while chunk := s.recv(1 << 20):
                        got[0] += len(chunk)
                        if tls and got[0] >= len(data):
                            return  # TLS: no half-close; the whole reply is the end

            reader = threading.Thread(target=read)
            reader.start()
            s.sendall(data)
            if not tls:
                s.shutdown(socket.SHUT_WR)
            reader.join(60)
            return got[0]
        finally:
            s.close()

    async def run() -> None:
        tick()
        print(f"{args.megabytes} MB of random bytes per transport, {args.loop} loop")
        heading = ("transport", "reply MB", "largest read", "most a turn", "ms a turn: median", "max")
        print("{:34} {:>8} {:>12} {:>11} {:>17} {:>6}".format(*heading))
        for name, description, native, options in cases:
            factory = RecordingFactory(
                CapservConfig(high_water=options.get("high_water", 65536), idle_timeout=0), clock=reactor
            )
            factory.turns = {}
            listening = proxy_protocol_factory(factory) if options.get("proxy") else factory
            endpoint = native_endpoint(reactor, description) if native else serverFromString(reactor, description)
            port = await endpoint.listen(listening).asFuture(loop)
            try:
                host = port.getHost()
                address = host.name if description.startswith("unix:") else ("127.0.0.1", host.port)
                got = await loop.run_in_executor(
                    None, client, address, bool(options.get("tls")), bool(options.get("proxy"))
                )
            finally:
                stopped = port.stopListening()
                if stopped is not None:
                    await stopped.asFuture(loop)
            await factory.drain(timeout=5).asFuture(loop)
            turns = factory.turns.values()
            ms = [spent * 1000 for _, spent in turns]
            print(
                f"{name:34} {got / 1e6:8.1f} {factory.largest:12,} {max(n for n, _ in turns):11,} "
                f"{statistics.median(ms):17.2f} {max(ms):6.1f}",
                flush=True,
            )

    try:
        loop.run_until_complete(run())
    finally:
        for leftover in Path(folder).iterdir():
            leftover.unlink()
        os.rmdir(folder)


if __name__ == "__main__":
    main()
