"""
capserv's side-by-side benchmark: capserv against its peers, on loopback.

One command (see bench/README.md)::

    python bench/run.py                 # full run, writes docs/benchmarks/
    python bench/run.py --smoke --out /tmp/bench   # seconds-long check

Servers: capserv (the installed ``twistd -n capserv`` as the shipped
deployments run it: ``--logger=capserv.logs.json_lines``, default options
plus a per-IP limit so every limit is on), a plain asyncio Protocol server, the
same on uvloop, the tutorial-level Twisted server, and the lesson's iterative
socket server where the workload allows.  Load comes from ``loadgen.c``,
compiled here, which checks every reply byte for byte.  The server is pinned
to CPU 0 and the load generator to CPU 1; the server's CPU use is recorded
for every run, to show the server, not the load, is the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name: (loadgen arguments after HOST PORT, unit, what it measures)
WORKLOADS: dict[str, tuple[list[str], str, str]] = {
    "rr_1x64": (["rr", "1", "64"], "req/s", "request/response, 1 connection, 64 B"),
    "rr_1x1k": (["rr", "1", "1024"], "req/s", "request/response, 1 connection, 1 KiB"),
    "rr_100x64": (["rr", "100", "64"], "req/s", "request/response, 100 connections, 64 B"),
    "rr_100x1k": (["rr", "100", "1024"], "req/s", "request/response, 100 connections, 1 KiB"),
    "bulk": (["bulk"], "MB/s", "one bulk stream"),
    "connect_20": (["connect", "20", "64"], "sessions/s", "connect-send-receive-close, 20 in parallel"),
    "udp_50x64": (["udp", "50", "64"], "datagrams/s", "UDP, 50 sockets, 64 B"),
    "idle_10k": (["idle"], "KiB/conn", "server memory per idle connection (lower is better)"),
}
# What one unit of work is, for server CPU per unit (µs of server CPU each).
PER_UNIT = {"bulk": "MB", "connect_20": "session", "udp_50x64": "datagram"}

# Workloads the lesson's iterative server can take (one client at a time).
ITERATIVE_OK = {"rr_1x64", "rr_1x1k", "bulk", "connect_20", "udp_50x64"}

# Targets from issue 13, as ratios capserv / peer in the same run (idle:
# absolute KiB per connection, no worse than before the issue).
TARGETS = {
    "uvloop": {
        "rr_1x64": 0.95,
        "rr_1x1k": 0.95,
        "rr_100x64": 0.9,
        "rr_100x1k": 0.9,
        "udp_50x64": 0.9,
        "bulk": 1.0,
        "connect_20": 0.85,
    },
    "asyncio": dict.fromkeys(("rr_1x64", "rr_1x1k", "rr_100x64", "rr_100x1k", "udp_50x64", "bulk", "connect_20"), 1.0),
    "twisted-tutorial": dict.fromkeys(
        ("rr_1x64", "rr_1x1k", "rr_100x64", "rr_100x1k", "udp_50x64", "bulk", "connect_20"), 1.0
    ),
}
IDLE_TARGET_KIB = 2.6

# capserv variants for the lever table: a suffix of the server's name turns
# one lever off (or names the reactor), e.g. ``capserv-twisted-twistdlog``.
#   -epoll      Twisted's epoll reactor (--no-uvloop): no event loop of asyncio's
#   -asyncio    Twisted's asyncio reactor on asyncio's own loop, not uvloop's
#   -twisted    Twisted's transports on the asyncio reactor (CAPSERV_NATIVE=0)
#   -twistdlog  twisted.logger's own text observer for the log instead of
#               capserv's JSON lines (--logger=capserv.logs.twisted_text)
#   -fastlog    capserv's buffered text observer instead of its JSON lines
#               (--logger=capserv.logs.text_lines)
#   -nofast     no write-now / direct sendto paths (CAPSERV_NO_FASTPATH=1)
#   -nativeudp  UDP through uvloop's datagram transport (CAPSERV_NATIVE_UDP=1;
#               off by default: not measured faster)
# What docs/systemd/capserv.service, the Containerfile and docs/kubernetes run.
DEPLOYED_LOGGER = "--logger=capserv.logs.json_lines"
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "-epoll": (["--no-uvloop"], {}),
    "-asyncio": (["--reactor=asyncio"], {}),
    "-twisted": ([], {"CAPSERV_NATIVE": "0"}),
    "-twistdlog": (["--logger=capserv.logs.twisted_text"], {}),
    "-fastlog": (["--logger=capserv.logs.text_lines"], {}),
    "-noaccess": (["--no-access-log"], {}),
    "-nofast": ([], {"CAPSERV_NO_FASTPATH": "1"}),
    "-nativeudp": ([], {"CAPSERV_NATIVE_UDP": "1"}),
}


def variant(name: str) -> tuple[list[str], list[str], dict[str, str]]:
    """
    twistd's options, capserv's options and the environment for a capserv
    variant's name.
    """
    twistd: list[str] = []
    capserv: list[str] = []
    env: dict[str, str] = {}
    rest = name[len("capserv") :]
    for suffix, (args, variables) in VARIANTS.items():
        if suffix in rest:
            rest = rest.replace(suffix, "", 1)
            for arg in args:
                (twistd if arg.startswith(("--reactor", "--logger")) else capserv).append(arg)
            env.update(variables)
    if rest:
        raise ValueError(f"unknown capserv variant {name!r} (suffixes: {', '.join(VARIANTS)})")
    if not any(arg.startswith("--logger") for arg in twistd):
        twistd.append(DEPLOYED_LOGGER)
    return twistd, capserv, env


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def pinned(cpu: int | None) -> Any:
    def setup() -> None:
        raise_nofile()
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})

    return setup


def server_command(name: str, port: int, workers: int) -> list[str]:
    python = sys.executable
    if name.startswith("capserv"):
        # Variants for measuring levers: see VARIANTS.
        twistd_options, capserv_options, _ = variant(name)
        twistd = str(Path(python).parent / "twistd")
        command = [twistd, "-n", "--pidfile=", *twistd_options, "capserv", *capserv_options]
        command += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", f"udp:{port}:interface=127.0.0.1"]
        command += ["--max-connections-per-ip=16384"]
        if workers > 1:
            command += [f"--workers={workers}"]
        return command
    if name == "asyncio":
        return [python, str(HERE / "peers" / "asyncio_server.py"), str(port)]
    if name == "uvloop":
        return [python, str(HERE / "peers" / "asyncio_server.py"), str(port), "--uvloop"]
    if name == "twisted-tutorial":
        return [python, str(HERE / "peers" / "twisted_tutorial.py"), str(port)]
    if name == "iterative":
        return [python, str(HERE / "peers" / "iterative.py"), str(port)]
    if name.split("-")[0] in ("forking", "threading"):
        # forking, threading, forking-tuned, threading-tuned (--concurrency)
        return [python, str(HERE / "peers" / "socketserver_server.py"), str(port), *name.split("-")]
    raise ValueError(name)


class Server:
    def __init__(self, name: str, workers: int = 1, cpu: int | None = 0, prefix: list[str] | None = None) -> None:
        """``prefix``: a command the server runs under (bench/instructions.py: valgrind), slow to start and stop."""
        self.name = name
        self.slow = bool(prefix)
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        if name.startswith("capserv"):
            env.update(variant(name)[2])
        self.process = subprocess.Popen(
            [*(prefix or []), *server_command(name, self.port, workers)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=pinned(cpu),
        )
        deadline = time.monotonic() + (300 if self.slow else 30)
        while time.monotonic() < deadline:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace")
            if "ready" in text or " started" in text:
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {text}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.2)

    def pids(self) -> list[int]:
        """The server and its children (workers)."""
        pids = [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            pids += [int(p) for p in children]
        except OSError:
            pass
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / CLK_TCK

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(300 if self.slow else 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def build_loadgen(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench: a C compiler (cc or gcc) is needed for loadgen.c")
    binary = workdir / "loadgen"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(HERE / "loadgen.c")], check=True)
    return binary


def run_workload(
    loadgen: Path, server: Server, workload: str, seconds: float, bulk_mb: int, idle: int, cpu: int | None
) -> dict[str, float]:
    args, _, _ = WORKLOADS[workload]
    target = ["127.0.0.1", str(server.port)]
    if workload == "bulk":
        command = [str(loadgen), "bulk", *target, str(bulk_mb)]
    elif workload == "idle_10k":
        command = [str(loadgen), "idle", *target, str(idle), "2"]
    else:
        command = [str(loadgen), args[0], *target, *args[1:], str(seconds)]
    if workload == "idle_10k":
        before = server.rss_kib()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(cpu))
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        if first.get("ready") != idle:
            raise RuntimeError(f"idle: {first}")
        time.sleep(0.5)
        held = server.rss_kib()
        rest = process.stdout.read()
        if process.wait() != 0:
            raise RuntimeError(f"loadgen failed: {rest}")
        return {"value": (held - before) / idle, "cpu": 0.0, "cpu_us": 0.0, "errors": 0}
    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=pinned(cpu), timeout=seconds * 10 + 120)
    wall = time.monotonic() - wall_before
    cpu_used = server.cpu_seconds() - cpu_before
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {workload} against {server.name}: {result.stderr.strip()}")
    data = json.loads(result.stdout)
    if data["errors"]:
        raise RuntimeError(f"{server.name} gave {data['errors']} wrong replies in {workload}")
    value = data["ops"] if workload == "bulk" else data["ops"] / data["seconds"]
    units = data["bytes"] / 1048576 if workload == "bulk" else data["ops"]
    return {
        "value": value,
        "cpu": cpu_used / wall,
        "cpu_us": cpu_used * 1e6 / units if units else float("nan"),
        "errors": data["errors"],
        "answered": data.get("answered"),
    }


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description="capserv side-by-side benchmark")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed run")
    parser.add_argument("--bulk-mb", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10000, help="connections for the idle workload")
    parser.add_argument("--servers", default="capserv,uvloop,asyncio,twisted-tutorial,iterative")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--workers", action="store_true", help="also compare capserv with 1 and 2 workers")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run: 1 round, tiny loads")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--from-json", help="rebuild the table and plots from a saved results.json; run nothing")
    parser.add_argument(
        "--concurrency",
        action="store_true",
        help="only the lesson's last slide: capserv, the iterative server and the process- and thread-per-client "
        "servers, on connect-per-message, request/response with 100 connections and idle connections; "
        "writes OUT/concurrency/",
    )
    parser.add_argument("--hold", type=int, default=2000, help="--concurrency: idle connections to try to hold (2000)")
    args = parser.parse_args()
    if args.concurrency:
        run_concurrency(args)
        return
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        out = Path(args.out)
        write_table(report, out / "results.rst")
        plot(report, out)
        print(f"rebuilt {out / 'results.rst'} and plots from {args.from_json}")
        return
    if args.smoke:
        args.rounds, args.seconds, args.bulk_mb, args.idle = 1, 0.3, 20, 200

    servers = args.servers.split(",")
    workloads = args.workloads.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory() as work:
        loadgen = build_loadgen(Path(work))
        for round_number in range(args.rounds):
            for name in servers:
                server = Server(name)
                try:
                    for workload in workloads:
                        if name == "iterative" and workload not in ITERATIVE_OK:
                            continue
                        slot = results.setdefault(name, {}).setdefault(
                            workload, {"value": [], "cpu": [], "cpu_us": [], "failures": []}
                        )
                        try:
                            sample = run_workload(loadgen, server, workload, args.seconds, args.bulk_mb, args.idle, 1)
                        except RuntimeError as e:
                            # A peer that loses data or closes early: recorded, not fatal.
                            slot["failures"].append(str(e))
                            print(f"round {round_number + 1} {name:17} {workload:11} FAILED: {e}", flush=True)
                            server.stop()
                            server = Server(name)
                            continue
                        slot["value"].append(sample["value"])
                        slot["cpu"].append(sample["cpu"])
                        slot["cpu_us"].append(sample["cpu_us"])
                        print(
                            f"round {round_number + 1} {name:17} {workload:11} "
                            f"{sample['value']:12.1f}  server cpu {sample['cpu']:.2f}  "
                            f"{sample['cpu_us']:8.2f} us/{PER_UNIT.get(workload, 'request')}",
                            flush=True,
                        )
                finally:
                    server.stop()
        workers_results = {}
        if args.workers:
            for count in (1, 2):
                for _ in range(args.rounds):
                    server = Server("capserv", workers=count, cpu=None)
                    try:
                        for workload in ("rr_100x64", "connect_20", "udp_50x64"):
                            sample = run_workload(
                                loadgen, server, workload, args.seconds, args.bulk_mb, args.idle, None
                            )
                            slot = workers_results.setdefault(str(count), {}).setdefault(
                                workload, {"value": [], "cpu": []}
                            )
                            slot["value"].append(sample["value"])
                            slot["cpu"].append(sample["cpu"])
                            print(
                                f"workers {count} {workload:11} {sample['value']:12.1f}  cpu {sample['cpu']:.2f}",
                                flush=True,
                            )
                    finally:
                        server.stop()

    report = build_report(results, workers_results, args)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_table(report, out / "results.rst")
    plot(report, out)
    print(f"wrote {out / 'results.json'}, {out / 'results.rst'} and plots")


def build_report(results: dict[str, Any], workers_results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    summary = {
        name: {
            w: {
                "value": summarize(v["value"]),
                "server_cpu": summarize(v["cpu"]),
                "cpu_us_per_unit": summarize(v["cpu_us"]),
                "failures": v.get("failures", []),
            }
            for w, v in per.items()
            if v["value"]
        }
        for name, per in results.items()
    }
    failures = {
        f"{name} {w}": v["failures"] for name, per in results.items() for w, v in per.items() if v.get("failures")
    }
    ratios: dict[str, dict[str, Any]] = {}
    cpu_ratios: dict[str, dict[str, Any]] = {}  # capserv's server CPU per unit / the peer's (lower is better)
    capserv = summary.get("capserv", {})
    for peer in summary:
        if peer == "capserv":
            continue
        for workload, data in capserv.items():
            other = summary[peer].get(workload)
            if other and workload != "idle_10k" and other["value"]["median"]:
                ratios.setdefault(peer, {})[workload] = data["value"]["median"] / other["value"]["median"]
                if other["cpu_us_per_unit"]["median"]:
                    cpu_ratio = data["cpu_us_per_unit"]["median"] / other["cpu_us_per_unit"]["median"]
                    cpu_ratios.setdefault(peer, {})[workload] = cpu_ratio
    targets = {}
    for peer, per_workload in TARGETS.items():
        for workload, target in per_workload.items():
            ratio = ratios.get(peer, {}).get(workload)
            if ratio is not None:
                targets[f"{workload} / {peer}"] = {
                    "workload": workload,
                    "peer": peer,
                    "target": target,
                    "ratio": ratio,
                    "met": ratio >= target,
                }
    idle = capserv.get("idle_10k")
    if idle:
        kib = idle["value"]["median"]
        targets["idle_10k"] = {
            "workload": "idle_10k",
            "target_kib": IDLE_TARGET_KIB,
            "kib_per_conn": kib,
            "met": kib <= IDLE_TARGET_KIB,
        }
    return {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "bulk_mb": args.bulk_mb, "idle": args.idle},
        "workloads": {w: {"unit": WORKLOADS[w][1], "what": WORKLOADS[w][2]} for w in WORKLOADS},
        "results": summary,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "targets": targets,
        "failures": failures,
        "workers": {
            count: {w: {"value": summarize(v["value"]), "cpu": summarize(v["cpu"])} for w, v in per.items()}
            for count, per in workers_results.items()
        },
    }


def write_table(report: dict[str, Any], path: Path) -> None:
    servers = list(report["results"])
    lines = [
        ".. Generated by bench/run.py; do not edit.",
        "",
        f"Command: ``{report['command']}``, {report['when']}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}. Medians of {report['settings']['rounds']} rounds (min-max); "
        "server CPU is the share of one core the server used, then the server's CPU time per unit of work "
        "(per request, session, datagram or MB); the last column is capserv / uvloop for the rate, then for "
        "CPU per unit (lower is better).",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - workload",
    ]
    lines += [f"     - {s}" for s in servers]
    lines += ["     - capserv / uvloop"]
    for workload, meta in report["workloads"].items():
        if not any(workload in report["results"][s] for s in servers):
            continue
        lines.append(f"   * - {meta['what']} ({meta['unit']})")
        for s in servers:
            data = report["results"][s].get(workload)
            if data is None:
                lines.append("     - n/a")
                continue
            v = data["value"]
            cpu = data["server_cpu"]["median"]
            cpu_text = ""
            if workload != "idle_10k":
                per_unit = data.get("cpu_us_per_unit", {}).get("median")
                unit = PER_UNIT.get(workload, "request")
                cpu_text = f", cpu {cpu:.2f}" + (f"; {per_unit:,.1f} µs/{unit}" if per_unit is not None else "")
            lines.append(f"     - {v['median']:,.1f} ({v['min']:,.1f}-{v['max']:,.1f}{cpu_text})")
        ratio = report["ratios"].get("uvloop", {}).get(workload)
        cpu_ratio = report.get("cpu_ratios", {}).get("uvloop", {}).get(workload)
        text = f"{ratio:.2f}" if ratio is not None else ""
        text += f"; cpu {cpu_ratio:.2f}" if cpu_ratio is not None else ""
        lines.append(f"     - {text}".rstrip())
    if report.get("targets"):
        lines += ["", "Targets (capserv / peer in the same run; memory in KiB per connection):", ""]
        lines += [".. list-table::", "   :header-rows: 1", "", "   * - workload", "     - against"]
        lines += ["     - target", "     - capserv", "     - met"]
        for key, t in report["targets"].items():
            workload = t.get("workload", key)
            lines.append(f"   * - {report['workloads'][workload]['what']}")
            lines.append(f"     - {t.get('peer', '')}")
            if "ratio" in t:
                lines += [f"     - >= {t['target']:.2f}x", f"     - {t['ratio']:.2f}x"]
            else:
                lines += [f"     - <= {t['target_kib']:.0f} KiB", f"     - {t['kib_per_conn']:.1f} KiB"]
            lines.append(f"     - {'yes' if t['met'] else 'no'}")
    if report.get("failures"):
        lines += ["", "Runs that failed (the load generator saw lost or wrong bytes, or an early close):", ""]
        for key, messages in report["failures"].items():
            lines.append(f"* {key}: {len(messages)} of {report['settings']['rounds']} rounds: ``{messages[0]}``")
    if report.get("workers"):
        lines += ["", "capserv with ``--workers`` (unpinned, both cores shared with the load generator):", ""]
        lines += [".. list-table::", "   :header-rows: 1", "", "   * - workload", "     - 1 worker", "     - 2 workers"]
        for workload in ("rr_100x64", "connect_20", "udp_50x64"):
            lines.append(f"   * - {report['workloads'][workload]['what']}")
            for count in ("1", "2"):
                v = report["workers"].get(count, {}).get(workload, {}).get("value")
                lines.append(f"     - {v['median']:,.1f}" if v else "     - n/a")
    path.write_text("\n".join(lines) + "\n")


def plot(report: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    servers = list(report["results"])
    workloads = [w for w in report["workloads"] if w != "idle_10k" and any(w in report["results"][s] for s in servers)]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(len(servers), 1)
    for i, s in enumerate(servers):
        xs, heights, low, high = [], [], [], []
        for j, w in enumerate(workloads):
            base = report["results"].get("uvloop", {}).get(w, {}).get("value", {}).get("median")
            data = report["results"][s].get(w)
            if not data or not base:
                continue
            v = data["value"]
            xs.append(j + i * width)
            heights.append(v["median"] / base)
            low.append((v["median"] - v["min"]) / base)
            high.append((v["max"] - v["median"]) / base)
        ax.bar(xs, heights, width, yerr=[low, high], label=s, capsize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(workloads))])
    ax.set_xticklabels(workloads, rotation=20)
    ax.set_ylabel("throughput relative to uvloop (median, min-max)")
    ax.set_title("capserv and its peers on loopback (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    idle = [
        (s, report["results"][s]["idle_10k"]["value"]["median"]) for s in servers if "idle_10k" in report["results"][s]
    ]
    if idle:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([s for s, _ in idle], [v for _, v in idle])
        ax.axhline(IDLE_TARGET_KIB, color="red", linewidth=0.8, label=f"target: {IDLE_TARGET_KIB:g} KiB")
        ax.set_ylabel("server KiB per idle connection")
        ax.set_title(f"{report['settings']['idle']:,} idle connections (lower is better)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "idle_memory.png", dpi=110)
        plt.close(fig)


# ---- --concurrency: the lesson's last slide, measured ----------------------
#
# "The solution is to use a concurrent server, that makes a copy of itself or
# child to deal with each client."  These runs put the standard library's
# process-per-client and thread-per-client servers (bench/peers/
# socketserver_server.py) beside the lesson's iterative server and capserv's
# one event loop, on the workloads they can all be given.

CONCURRENCY_SERVERS = ["capserv", "iterative", "forking", "threading", "forking-tuned", "threading-tuned"]
CONCURRENCY_WORKLOADS = {"connect_20": 20, "rr_100x64": 100}  # workload: clients it opens at once
CONCURRENCY_LABELS = {
    "capserv": "capserv (one event loop)",
    "iterative": "iterative (the lesson's server)",
    "forking": "ForkingTCPServer (a process per client)",
    "threading": "ThreadingTCPServer (a thread per client)",
    "forking-tuned": "ForkingTCPServer, backlog 1024, no child cap",
    "threading-tuned": "ThreadingTCPServer, backlog 1024",
}
#: Stop opening idle connections when the machine has less memory than this left.
HOLD_RESERVE_KIB = 4 * 1024 * 1024


def footprint_kib(pids: list[int]) -> int:
    """
    What a server and its children hold in memory, in KiB: the server
    process's resident set, plus each child's private pages (the pages it
    alone holds: its own allocations and the pages it copied on write).
    Pages a forked child still shares with its parent are counted once, in
    the parent; RSS summed over the children would count them once per
    child, and PSS would shift with whatever other processes on the machine
    map the same libraries.
    """
    total = 0
    for index, pid in enumerate(pids):
        try:
            if index == 0:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            else:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        total += int(line.split()[1])
        except OSError:
            pass  # a child that has just exited
    return total


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def hold_idle(server: Server, cap: int, wait: float) -> dict[str, Any]:
    """
    Open up to ``cap`` connections one after another, each with one round trip
    (so the server has taken it on), and keep them all open: how many does
    the server hold, and what does each cost it?  Stops at the first
    connection that is refused, reset or not answered within ``wait``
    seconds, or when the machine runs low on memory.
    """
    before = footprint_kib(server.pids())
    held: list[socket.socket] = []
    stopped = ""
    try:
        for number in range(1, cap + 1):
            if number % 100 == 0 and mem_available_kib() < HOLD_RESERVE_KIB:
                stopped = f"stopped at {number - 1}: the machine was running low on memory"
                break
            try:
                conn = socket.create_connection(("127.0.0.1", server.port), timeout=wait)
            except OSError as e:
                stopped = f"connection {number} failed: {e.strerror or e}"
                break
            try:
                conn.sendall(b"x")
                if conn.recv(1) != b"X":
                    raise ConnectionResetError(0, "closed without a reply")
            except TimeoutError:
                stopped = f"connection {number} got no reply within {wait:g} s"
                conn.close()
                break
            except OSError as e:
                stopped = f"connection {number} failed: {e.strerror or e}"
                conn.close()
                break
            held.append(conn)
        time.sleep(0.5)
        during = footprint_kib(server.pids())
    finally:
        for conn in held:
            conn.close()
    return {
        "held": len(held),
        "cap": cap,
        # A handful of connections is lost in the allocator's noise.
        "kib_per_conn": (during - before) / len(held) if len(held) >= 20 else None,
        "stopped": stopped,
    }


def run_concurrency(args: argparse.Namespace) -> None:
    """The --concurrency run: measure, then write OUT/concurrency/ (results.json, results.rst, concurrency.png)."""
    out = Path(args.out) / "concurrency"
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        out.mkdir(parents=True, exist_ok=True)
        write_concurrency(report, out)
        print(f"rebuilt {out} from {args.from_json}")
        return
    if args.smoke:
        args.rounds, args.seconds, args.hold = 1, 0.3, 60
    wait = 0.5 if args.smoke else 2.0
    given = any(a == "--servers" or a.startswith("--servers=") for a in sys.argv[1:])
    servers = args.servers.split(",") if given else CONCURRENCY_SERVERS
    out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    load_before = os.getloadavg()
    samples: dict[str, dict[str, dict[str, list[Any]]]] = {}
    holds: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        loadgen = build_loadgen(Path(work))
        for round_number in range(args.rounds):
            for name in servers:
                server = Server(name)
                try:
                    for workload in CONCURRENCY_WORKLOADS:
                        slot = samples.setdefault(name, {}).setdefault(
                            workload, {"value": [], "answered": [], "failures": []}
                        )
                        try:
                            sample = run_workload(loadgen, server, workload, args.seconds, args.bulk_mb, args.idle, 1)
                        except (RuntimeError, subprocess.TimeoutExpired) as e:
                            slot["failures"].append(str(e))
                            print(f"round {round_number + 1} {name:16} {workload:10} FAILED: {e}", flush=True)
                            server.stop()
                            server = Server(name)
                            continue
                        slot["value"].append(sample["value"])
                        slot["answered"].append(sample["answered"])
                        print(
                            f"round {round_number + 1} {name:16} {workload:10} {sample['value']:10.1f}/s  "
                            f"clients answered {sample['answered']}/{CONCURRENCY_WORKLOADS[workload]}",
                            flush=True,
                        )
                    if round_number == 0:
                        holds[name] = hold_idle(server, args.hold, wait)
                        h = holds[name]
                        per = f"{h['kib_per_conn']:.1f} KiB each" if h["kib_per_conn"] is not None else ""
                        print(f"hold {name:16} held {h['held']}/{args.hold} {per} {h['stopped']}", flush=True)
                finally:
                    server.stop()
    report = {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "hold": args.hold, "reply_wait": wait},
        "workloads": {
            w: {"unit": WORKLOADS[w][1], "what": WORKLOADS[w][2], "clients": n}
            for w, n in CONCURRENCY_WORKLOADS.items()
        },
        "labels": {name: CONCURRENCY_LABELS.get(name, name) for name in servers},
        "results": {
            name: {
                w: {
                    "value": summarize(v["value"]) if v["value"] else None,
                    "answered": min(v["answered"]) if v["answered"] and None not in v["answered"] else None,
                    "failures": v["failures"],
                }
                for w, v in per.items()
            }
            for name, per in samples.items()
        },
        "idle": holds,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_concurrency(report, out)
    print(f"wrote {out / 'results.json'}, {out / 'results.rst'} and {out / 'concurrency.png'}")


def write_concurrency(report: dict[str, Any], out: Path) -> None:
    """The table (results.rst, for the tutorial) and the plot (concurrency.png) of a --concurrency report."""
    machine = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in machine["load_average_before"])
    load_after = ", ".join(f"{x:.1f}" for x in machine["load_average_after"])
    lines = [
        ".. Generated by bench/run.py --concurrency; do not edit.",
        "",
        f"Command: ``{report['command']}``, {report['when']}, {machine['cpus']} CPUs, Python {machine['python']}, "
        f"{machine['platform']}; load average (1, 5, 15 min) {load} before the run and {load_after} after it.  "
        f"Throughput: medians of "
        f'{report["settings"]["rounds"]} rounds of {report["settings"]["seconds"]:g} s (min-max); "answered" is how '
        "many of the clients open at once got any reply at all (the fewest over the rounds).  Idle: connections "
        f"opened one by one, one round trip each, up to {report['settings']['hold']:,}; memory is the growth, per "
        "connection held, of the server's resident memory plus its children's private pages.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - server",
        "     - connect-per-message, 20 at once (sessions/s; answered)",
        "     - request/response, 100 connections, 64 B (messages/s; answered)",
        "     - idle connections held",
        "     - memory per idle connection",
    ]
    for name, label in report["labels"].items():
        lines.append(f"   * - {label}")
        for workload, meta in report["workloads"].items():
            data = report["results"].get(name, {}).get(workload)
            if not data or data["value"] is None:
                failures = data["failures"] if data else []
                lines.append(f"     - failed: ``{failures[0]}``" if failures else "     - n/a")
                continue
            v = data["value"]
            answered = f"; {data['answered']} of {meta['clients']}" if data["answered"] is not None else ""
            lines.append(f"     - {v['median']:,.0f} ({v['min']:,.0f}-{v['max']:,.0f}){answered}")
        hold = report["idle"].get(name)
        if hold is None:
            lines += ["     - n/a", "     - n/a"]
            continue
        if hold["held"] == hold["cap"]:
            lines.append(f"     - held all {hold['cap']:,}")
        else:
            lines.append(f"     - {hold['held']:,}: {hold['stopped']}")
        kib = hold["kib_per_conn"]
        lines.append(f"     - {kib:,.1f} KiB" if kib is not None else "     - n/a")
    (out / "results.rst").write_text("\n".join(lines) + "\n")
    plot_concurrency(report, out / "concurrency.png")


def plot_concurrency(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    names = list(report["labels"])
    short = [n.replace("-tuned", "\n(tuned)") for n in names]
    colours = ["tab:blue" if n == "capserv" else "tab:grey" if n == "iterative" else "tab:orange" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    panels = [
        ("connect_20", "connect-per-message, 20 at once\nsessions/s (median, min-max; log scale)"),
        ("rr_100x64", "request/response, 100 connections\nmessages/s (median, min-max; log scale)"),
    ]
    for ax, (workload, title) in zip(axes[:2], panels, strict=True):
        clients = report["workloads"][workload]["clients"]
        heights, low, high, notes = [], [], [], []
        for n in names:
            data = report["results"].get(n, {}).get(workload)
            v = data["value"] if data and data["value"] else {"median": 0, "min": 0, "max": 0}
            heights.append(v["median"])
            low.append(v["median"] - v["min"])
            high.append(v["max"] - v["median"])
            answered = data["answered"] if data else None
            notes.append(f"{answered}/{clients}\nanswered" if answered is not None else "")
        bars = ax.bar(short, heights, color=colours, yerr=[low, high], capsize=3, ecolor="black")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        for bar, note, top in zip(bars, notes, high, strict=True):
            if bar.get_height() > 0:
                ax.annotate(
                    note,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height() + top),  # above the error bar
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(y=0.25)
    ax = axes[2]
    heights, notes = [], []
    for n in names:
        hold = report["idle"].get(n) or {}
        heights.append(hold.get("kib_per_conn") or 0)
        notes.append(f"held {hold.get('held', 0):,}" if hold else "")
    bars = ax.bar(short, heights, color=colours)
    ax.set_yscale("log")
    ax.set_title(
        f"memory per idle connection, KiB (log scale)\nof up to {report['settings']['hold']:,} held", fontsize=10
    )
    for bar, note in zip(bars, notes, strict=True):
        ax.annotate(
            note, (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 1)), ha="center", va="bottom", fontsize=7
        )
    ax.tick_params(axis="x", labelsize=7)
    ax.margins(y=0.25)
    fig.suptitle("The lesson's last slide, measured: one event loop against a process or a thread per client")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
