"""
Soak: the real daemon under steady mixed load for minutes, with its memory
and file descriptors sampled, to show there is no growth once warm, no
descriptor leak, and not one wrong reply.

Each round runs, at the same time and at full speed, ``loadgen rr`` (20
connections, request/response), ``loadgen connect`` (a new connection per
message) and ``loadgen udp`` (datagram ping-pong); loadgen checks every
reply byte for byte.  Between rounds, once the round's connections are
closed, the daemon's resident memory and open descriptors are read from
/proc and its metrics from ``--metrics``.

    python bench/soak.py --minutes 5 --out docs/reliability/soak.json
    python bench/soak.py --smoke           # two short rounds (tox -e bench)

Loopback only; the daemon is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from run import build_loadgen  # noqa: E402

from tests.support.daemon import process_usage, scrape, serving  # noqa: E402

#: name: loadgen arguments after HOST PORT (SECONDS is added).
LOADS = {
    "rr": ["rr", "{tcp}", "20", "64"],
    "connect": ["connect", "{tcp}", "4", "64"],
    "udp": ["udp", "{udp}", "4", "64"],
}


def run_round(loadgen: Path, host: str, ports: dict[str, int], seconds: float) -> dict[str, Any]:
    """One round: every load at once; operations and errors per load."""
    running = {}
    for name, args in LOADS.items():
        command = [str(loadgen), args[0], host] + [a.format(**ports) for a in args[1:]] + [str(seconds)]
        running[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=seconds * 5 + 60)
        if process.returncode != 0:
            raise RuntimeError(f"loadgen {name} failed: {err.strip()}")
        results[name] = json.loads(out)
    return results


def report(summary: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """The summary as reStructuredText, for docs/reliability.rst."""
    first, warm, last = samples[0], samples[max(1, len(samples) // 5) - 1], samples[-1]
    minutes = summary["rounds"] * summary["round_seconds"] / 60
    rows = [
        ("rounds", f"{summary['rounds']} x {summary['round_seconds']:g} s ({minutes:g} min)"),
        ("requests (request/response)", f"{summary['requests']:,}"),
        ("TCP connections served", f"{summary['connections']:,.0f}"),
        ("datagrams served", f"{summary['datagrams']:,.0f}"),
        ("wrong replies", f"{summary['wrong_replies']}"),
        ("resident memory at start", f"{summary['rss_start_kib']:,} KiB"),
        (
            f"after round 1 / {warm['round']} (warm) / {last['round']}",
            f"{first['rss_kib']:,} / {warm['rss_kib']:,} / {last['rss_kib']:,} KiB",
        ),
        ("growth after warm-up", f"{summary['rss_end_kib'] - summary['rss_warm_kib']:,} KiB"),
        (
            "descriptors at start / after every round",
            f"{summary['fds_start']} / {', '.join(map(str, summary['fds_after_each_round']))}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    rule = "=" * width + "  " + "=" * value_width
    lines = [rule] + [f"{name:<{width}}  {value}" for name, value in rows] + [rule]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to soak (default 5)")
    parser.add_argument("--round-seconds", type=float, default=10.0, help="length of one round (default 10)")
    parser.add_argument("--smoke", action="store_true", help="two 2-second rounds, for CI")
    parser.add_argument("--out", type=Path, help="write the samples and summary as JSON here (and a .rst table)")
    parser.add_argument("--from-json", type=Path, help="only write the .rst table from an earlier run's JSON")
    args = parser.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        args.from_json.with_suffix(".rst").write_text(report(data["summary"], data["samples"]))
        return
    if args.smoke:
        args.minutes, args.round_seconds = 4 / 60, 2.0
    rounds = max(2, round(args.minutes * 60 / args.round_seconds))
    with tempfile.TemporaryDirectory() as work, serving() as server:
        loadgen = build_loadgen(Path(work))
        host, tcp, udp, metrics_port, pid = server.host, server.tcp, server.udp, server.metrics_port, server.pid
        rss0, fds0 = process_usage(pid)
        samples = []
        started = time.monotonic()
        for number in range(1, rounds + 1):
            result = run_round(loadgen, host, {"tcp": tcp, "udp": udp}, args.round_seconds)
            deadline = time.monotonic() + 10
            while scrape(metrics_port)["capserv_connections_active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            # The scrape above is a connection too: give its close a moment,
            # then read /proc before the next scrape.
            deadline = time.monotonic() + 2
            while process_usage(pid)[1] > fds0 and time.monotonic() < deadline:
                time.sleep(0.05)
            rss, fds = process_usage(pid)
            metrics = scrape(metrics_port)
            sample = {
                "round": number,
                "elapsed": round(time.monotonic() - started, 1),
                "rss_kib": rss,
                "fds": fds,
                "connections_active": metrics["capserv_connections_active"],
                "connections_total": metrics["capserv_connections_total"],
                "datagrams": metrics["capserv_datagrams_received_total"],
                "ops": {name: r["ops"] for name, r in result.items()},
                "errors": sum(r["errors"] for r in result.values()),
            }
            samples.append(sample)
            print(
                f"round {number:3d}/{rounds} t={sample['elapsed']:7.1f}s rss={rss} KiB fds={fds} "
                f"open={sample['connections_active']:.0f} errors={sample['errors']} "
                + " ".join(f"{k}={v}" for k, v in sample["ops"].items()),
                flush=True,
            )
            if server.daemon.process.poll() is not None:
                raise SystemExit("soak: the daemon died")
        final = scrape(metrics_port)
    warm = samples[max(1, len(samples) // 5) - 1 :]
    summary = {
        "rounds": rounds,
        "round_seconds": args.round_seconds,
        "rss_start_kib": rss0,
        "rss_warm_kib": warm[0]["rss_kib"],
        "rss_end_kib": samples[-1]["rss_kib"],
        "rss_max_after_warm_kib": max(s["rss_kib"] for s in warm),
        "fds_start": fds0,
        "fds_after_each_round": sorted({s["fds"] for s in samples}),
        "requests": sum(s["ops"]["rr"] for s in samples),
        "connections": final["capserv_connections_total"],
        "datagrams": final["capserv_datagrams_received_total"],
        "tcp_bytes": final['capserv_received_bytes_total{transport="tcp"}'],
        "wrong_replies": sum(s["errors"] for s in samples),
        "aborts": final["capserv_aborts_total"],
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
        args.out.with_suffix(".rst").write_text(report(summary, samples))
    failures = []
    if summary["wrong_replies"]:
        failures.append("wrong replies")
    if summary["fds_after_each_round"] != [fds0]:
        failures.append("descriptors not back to the start after a round")
    if summary["rss_end_kib"] - summary["rss_warm_kib"] > 8192:
        failures.append("memory grew more than 8 MiB after warm-up")
    if failures:
        raise SystemExit("soak: " + "; ".join(failures))


if __name__ == "__main__":
    main()
