"""
User-space instructions per unit of work: a server under valgrind's
callgrind, counting only while ``loadgen.c`` runs one workload.

    python bench/instructions.py [--servers capserv,uvloop] [--workload connect_20] [--seconds 5]

Unlike CPU time, the count hardly moves with the machine's load or a virtual
machine's neighbours, so a change of 1 % shows in one run. It leaves out the
kernel's share, the same for every server here (bench/syscalls.py), and the
cost of cache misses. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import WORKLOADS, Server, build_loadgen


def callgrind_total(path: Path) -> int:
    """The ``totals:`` line of a callgrind output file: instructions counted."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"bench: no totals in {path}")


def measure(loadgen: Path, name: str, workload: str, seconds: float, work: Path) -> tuple[int, int]:
    """(units of work done, instructions counted) for one server."""
    out = work / f"callgrind-{name}.out"
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server = Server(name, cpu=None, prefix=prefix)
    try:
        pid = str(server.process.pid)
        subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
        args = WORKLOADS[workload][0]
        command = [str(loadgen), args[0], "127.0.0.1", str(server.port), *args[1:], str(seconds)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
    finally:
        server.stop()  # callgrind writes its file as the server exits
    return json.loads(result.stdout)["ops"], callgrind_total(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="capserv,uvloop")
    parser.add_argument("--workload", default="connect_20", choices=[w for w in WORKLOADS if w != "idle_10k"])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench: valgrind is needed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as work:
        loadgen = build_loadgen(Path(work))
        for name in args.servers.split(","):
            units, instructions = measure(loadgen, name, args.workload, args.seconds, Path(work))
            print(f"{name:<18} {args.workload}: {units:>7} units, {instructions / units:>9,.0f} instructions per unit")


if __name__ == "__main__":
    main()
