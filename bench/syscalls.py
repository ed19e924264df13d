"""
System calls per unit of work, by kind: a server under ``strace -f -c``
(attached once it is ready) while ``loadgen.c`` runs one workload.

    python bench/syscalls.py [--servers capserv,uvloop] [--workload connect_20] [--seconds 3]

Counts, unlike CPU time, do not depend on the machine's load (bar the
``EAGAIN`` reads and ``epoll_wait`` wake-ups, which depend on timing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import WORKLOADS, Server, build_loadgen


def strace_counts(path: Path) -> dict[str, tuple[int, int]]:
    """``strace -c``'s table: syscall -> (calls, errors)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit() or fields[-1] == "total":
            continue
        calls = int(fields[3])
        errors = int(fields[4]) if len(fields) == 6 else 0
        counts[fields[-1]] = (calls, errors)
    return counts


def measure(loadgen: Path, name: str, workload: str, seconds: float) -> tuple[int, dict[str, tuple[int, int]]]:
    server = Server(name, cpu=None)
    out = Path(tempfile.mktemp(prefix="strace-"))
    try:
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(server.process.pid)])
        time.sleep(1.0)
        args = WORKLOADS[workload][0]
        command = [str(loadgen), args[0], "127.0.0.1", str(server.port), *args[1:], str(seconds)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        return json.loads(result.stdout)["ops"], strace_counts(out)
    finally:
        server.stop()
        out.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="capserv,uvloop")
    parser.add_argument("--workload", default="connect_20", choices=[w for w in WORKLOADS if w != "idle_10k"])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("bench: strace is needed (apt-get install strace)")
    names = args.servers.split(",")
    with tempfile.TemporaryDirectory() as work:
        loadgen = build_loadgen(Path(work))
        results = {name: measure(loadgen, name, args.workload, args.seconds) for name in names}
    kinds = sorted(
        {k for _, counts in results.values() for k in counts}, key=lambda k: -results[names[0]][1].get(k, (0, 0))[0]
    )
    print(f"{'calls/errors per unit':<18}" + "".join(f"{name:>16}" for name in names))
    for kind in kinds:
        row = ""
        for name in names:
            units, counts = results[name]
            calls, errors = counts.get(kind, (0, 0))
            row += f"{calls / units:>9.2f}/{errors / units:<6.2f}"
        print(f"{kind:<18}{row}")
    total = "".join(f"{sum(c for c, _ in counts.values()) / units:>10.2f}      " for units, counts in results.values())
    print(f"{'total':<18}{total}")
    print("units:", {name: units for name, (units, _) in results.items()})


if __name__ == "__main__":
    main()
