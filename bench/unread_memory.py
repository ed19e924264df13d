"""
Measure the daemon's memory while one client sends 100 MB without reading.

Starts the installed ``twistd -n capserv`` on a free loopback port, samples
its resident memory (VmRSS from /proc) before and while a client pushes
bytes without reading, then lets the client read everything and checks every
byte.  Backpressure should keep the daemon's growth near its 64 KiB
high-water mark plus socket-buffer bookkeeping, not near 100 MB.

Usage: python bench/unread_memory.py [--megabytes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    daemon = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "capserv", "--listen", "tcp:0:interface=127.0.0.1", "--idle-timeout=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert daemon.stdout is not None
    port = 0
    for line in daemon.stdout:
        match = re.search(r"Listening for streams on 127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
        if " started" in line:
            break
    threading.Thread(target=lambda: [None for _ in daemon.stdout], daemon=True).start()  # type: ignore[union-attr]
    time.sleep(0.5)
    before = rss_kib(daemon.pid)

    unit = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    chunk = unit * (1048576 // len(unit))
    total = args.megabytes * len(chunk)
    client = socket.create_connection(("127.0.0.1", port))
    sent = [0]

    def send() -> None:
        for _ in range(args.megabytes):
            client.sendall(chunk)
            sent[0] += len(chunk)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    peak = before
    stalled_at = None
    last, still = -1, 0
    while still < 20:  # 2 s with no progress: the sender is blocked
        time.sleep(0.1)
        peak = max(peak, rss_kib(daemon.pid))
        still = still + 1 if sent[0] == last else 0
        last = sent[0]
    stalled_at = sent[0]

    expected = unit.upper()
    received = 0
    ok = True
    while True:
        data = client.recv(1048576)
        if not data:
            break
        offset = received % len(expected)
        reps = (offset + len(data)) // len(expected) + 2
        ok = ok and data == (expected * reps)[offset : offset + len(data)]
        received += len(data)
        peak = max(peak, rss_kib(daemon.pid))
    sender.join()
    client.close()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(30)
    result = {
        "megabytes_sent": total / 1048576,
        "client_blocked_after_mb": round(stalled_at / 1048576, 1),
        "daemon_rss_before_kib": before,
        "daemon_rss_peak_kib": peak,
        "daemon_rss_growth_kib": peak - before,
        "bytes_received": received,
        "reply_exact": ok and received == total,
        "daemon_exit": code,
    }
    print(json.dumps(result, indent=2))
    if not result["reply_exact"]:
        raise SystemExit("reply was not exact")


if __name__ == "__main__":
    main()
