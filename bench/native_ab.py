"""
The native transports against Twisted's, in one process, alternating.

    python bench/native_ab.py [--rounds 5] [--seconds 1] [--asyncio]

One server process (Twisted's asyncio reactor on uvloop's loop, or on
asyncio's with ``--asyncio``; capserv's factory with every limit on and
capserv's buffered log observer) listens twice: through the event loop's
own transports (`capserv.native`) on one port and through Twisted's on
another, TCP and UDP alike (UDP: uvloop's datagram transport against
Twisted's port).  The load generator (``bench/loadgen.c``) alternates
between the two, pinned to CPU 1 with the server on CPU 0, so whatever
else loads the machine loads both alike.  Prints, per workload and path,
the best run and the server's CPU time per request (or session, or
datagram): on a shared machine these ratios hold where absolute figures
do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import build_loadgen, free_port, pinned  # noqa: E402

SERVER = """
import asyncio, socket, sys
loop = asyncio.SelectorEventLoop() if sys.argv[3] == "asyncio" else __import__("uvloop").new_event_loop()
from twisted.internet import asyncioreactor
asyncioreactor.install(loop)
from twisted.internet import reactor
from twisted.logger import globalLogBeginner
from capserv.protocols.accesslog import TextLogObserver
globalLogBeginner.beginLoggingTo([TextLogObserver(open(sys.argv[4], "w"))], redirectStandardIO=False)
from capserv import MAX_DATAGRAM, CapservConfig, UppercaseDatagramProtocol, UppercaseFactory
from capserv.native import NativeSocketEndpoint, listen_datagrams
native, twisted = int(sys.argv[1]), int(sys.argv[2])
config = CapservConfig(max_connections_per_ip=16384)
def stream():
    s = socket.socket(); s.bind(("127.0.0.1", native)); s.listen(1024); return s
def datagrams():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", native)); return s
NativeSocketEndpoint(reactor, stream).listen(UppercaseFactory(config, clock=reactor))
reactor.listenTCP(twisted, UppercaseFactory(config, clock=reactor), interface="127.0.0.1", backlog=1024)
if sys.argv[3] != "asyncio":
    datagram_protocol = UppercaseDatagramProtocol(config, clock=reactor)
    listen_datagrams(reactor, datagram_protocol, datagrams, send_error=datagram_protocol.send_error)
reactor.listenUDP(twisted, UppercaseDatagramProtocol(config, clock=reactor), interface="127.0.0.1",
                  maxPacketSize=MAX_DATAGRAM)
print("ready", flush=True)
reactor.run()
"""

WORKLOADS = {
    "rr_100x64": ["rr", "100", "64"],
    "rr_100x1k": ["rr", "100", "1024"],
    "rr_1x64": ["rr", "1", "64"],
    "connect_20": ["connect", "20", "64"],
    "udp_50x64": ["udp", "50", "64"],
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--asyncio", action="store_true", help="asyncio's own loop instead of uvloop's (TCP only)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args()
    loop = "asyncio" if args.asyncio else "uvloop"
    print(f"{loop}, {args.rounds} rounds of {args.seconds:g} s; load: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        loadgen = build_loadgen(Path(work))
        native, twisted = free_port(), free_port()
        while twisted == native:
            twisted = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(native), str(twisted), loop, str(Path(work) / "log.txt")],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(0),
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise SystemExit("the server did not start")
            deadline = args.seconds * 10 + 30
            for name in args.workloads.split(","):
                if name.startswith("udp") and args.asyncio:
                    continue
                mode, *rest = WORKLOADS[name]
                samples: dict[str, list[tuple[float, float]]] = {"native": [], "twisted": []}
                for _ in range(args.rounds):
                    for path, port in (("native", native), ("twisted", twisted)):
                        before = cpu_seconds(server.pid)
                        command = [str(loadgen), mode, "127.0.0.1", str(port), *rest, str(args.seconds)]
                        result = subprocess.run(
                            command, capture_output=True, text=True, preexec_fn=pinned(1), timeout=deadline
                        )
                        data: dict[str, Any] = json.loads(result.stdout)
                        used = cpu_seconds(server.pid) - before
                        samples[path].append((data["ops"] / data["seconds"], used / max(data["ops"], 1) * 1e6))
                        time.sleep(0.05)
                best = {path: max(rate for rate, _ in values) for path, values in samples.items()}
                cpu = {path: sorted(c for _, c in values)[len(values) // 2] for path, values in samples.items()}
                print(
                    f"{name:11} native {best['native']:10,.0f}/s {cpu['native']:6.1f} us   "
                    f"twisted {best['twisted']:10,.0f}/s {cpu['twisted']:6.1f} us   "
                    f"native/twisted {best['native'] / best['twisted']:.2f}"
                )
        finally:
            server.kill()
            server.wait(10)
    print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
