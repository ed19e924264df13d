"""
The adversarial cases of tests/integration/test_adversarial.py at full size, with
timings: what each attack costs the daemon and the clients that behave.
It needs capserv installed with its test extra (the attacks and the daemon
helpers are the tests' own; the figures come from ``--metrics``), from the
top of the checkout:

    .venv/bin/pip install '.[test]'
    .venv/bin/python bench/adversarial.py --out docs/reliability/adversarial.json

Cases (each against a fresh ``twistd -n capserv`` on 127.0.0.1):

- ``slow_readers``: normal clients' round-trip latency (p50/p99/max) alone,
  then while 300 clients send without reading; then every slow reader's
  bytes read back and checked.
- ``slowloris``: 10,000 silent connections (the limit), the next refused,
  a normal client's latency meanwhile, memory per silent connection, all
  closed by the idle timeout, descriptors back to the start.
- ``reset_storm``: 20,000 connections reset mid-stream (SO_LINGER 0) from 4
  threads; rate, descriptors after, a normal client's replies exact.
- ``udp_flood``: 200,000 datagrams from one source at full speed (rate
  limit applied to loopback), answers to another source meanwhile; then
  50,000 sources, rate table bounded.
- ``loop``: a datagram spoofed between two capservs (needs raw sockets):
  how many bounces until it dies, and how long.

Loopback only; bounded in time and count; every daemon is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support import attacks  # noqa: E402
from tests.support.daemon import serving  # noqa: E402


def latency(host: str, port: int, clients: int = 10, count: int = 200) -> dict[str, float]:
    """Round trips of ``clients`` normal clients at once, in milliseconds."""
    times: list[float] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            times.extend(attacks.timed_exchanges(host, port, count))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    ms = sorted(t * 1000 for t in times)
    return {
        "round_trips": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3),
        "max_ms": round(ms[-1], 3),
    }


def slow_readers(count: int) -> dict[str, Any]:
    with serving() as server:
        alone = latency(server.host, server.tcp)
        rss0, _ = server.usage()
        sockets = [attacks.connect(server.host, server.tcp, buffers=16384) for _ in range(count)]
        with attacks.many(sockets):
            start = time.monotonic()
            sent = attacks.fill_without_reading(sockets, quiet=2.0, limit=120)
            fill = time.monotonic() - start
            rss1, _ = server.usage()
            during = latency(server.host, server.tcp)
            pauses = server.metrics()["capserv_read_pauses_total"]
            pairs = zip(sockets, sent, strict=True)
            exact = sum(attacks.read_back(s, n) == attacks.expected_pattern(n) for s, n in pairs)
        return {
            "slow_readers": count,
            "bytes_they_sent": sum(sent),
            "seconds_until_all_blocked": round(fill, 1),
            "read_pauses": pauses,
            "rss_growth_kib": rss1 - rss0,
            "latency_alone": alone,
            "latency_with_slow_readers": during,
            "slow_readers_read_back_exact": exact,
        }


def slowloris(count: int) -> dict[str, Any]:
    attacks.raise_fd_limit(count * 2 + 1000)
    with serving(f"--max-connections={count}", "--idle-timeout=20") as server:
        rss0, fds0 = server.usage()
        start = time.monotonic()
        silent = []
        with attacks.many(silent):
            for i in range(count):
                silent.append(attacks.connect(server.host, server.tcp, f"127.0.{1 + i // 5000}.1"))
            opened = time.monotonic() - start
            server.wait_until(lambda: server.metrics()["capserv_connections_active"] == count, timeout=60)
            rss1, fds1 = server.usage()
            with attacks.many([attacks.connect(server.host, server.tcp, "127.0.9.9")]) as over:
                refused = attacks.closed_by_server(over, 10)
            closed_after = time.monotonic()
            closed = attacks.closed_by_server(silent, 60)
            closed_in = time.monotonic() - closed_after
        back = server.wait_until(lambda: server.usage()[1] <= fds0, timeout=60)
        served = attacks.exchange(server.host, server.tcp, b"after") == b"AFTER"
        return {
            "silent_connections": count,
            "seconds_to_open": round(opened, 2),
            "rss_per_connection_kib": round((rss1 - rss0) / count, 2),
            "fds_held": fds1 - fds0,
            "over_limit_closed_at_once": refused,
            "closed_by_idle_timeout": closed,
            "seconds_until_all_closed": round(closed_in, 1),
            "fds_back_to_start_after_s": round(back, 1),
            "served_after": served,
        }


def reset_storm(count: int, threads: int = 4) -> dict[str, Any]:
    with serving() as server:
        _, fds0 = server.usage()
        errors: list[BaseException] = []

        def storm(n: int) -> None:
            try:
                for i in range(n):
                    s = attacks.connect(server.host, server.tcp)
                    s.sendall(b"reset me " * 200)
                    if i % 2:
                        s.recv(100)
                    attacks.reset(s)
            except BaseException as e:
                errors.append(e)

        workers = [threading.Thread(target=storm, args=(count // threads,)) for _ in range(threads)]
        start = time.monotonic()
        for t in workers:
            t.start()
        during = latency(server.host, server.tcp, clients=2, count=500)
        for t in workers:
            t.join(300)
        took = time.monotonic() - start
        if errors:
            raise errors[0]
        back = server.wait_until(lambda: server.usage()[1] <= fds0, timeout=60)
        metrics = server.metrics()
        return {
            "resets": count,
            "resets_per_second": round(count / took),
            "latency_during": during,
            "connections_served": metrics["capserv_connections_total"],
            "fds_back_to_start_after_s": round(back, 1),
        }


def udp_flood(count: int, sources: int) -> dict[str, Any]:
    with serving("--udp-rate-loopback", "--udp-rate=500", "--udp-burst=1000") as server:
        start = time.monotonic()
        result: dict[str, int] = {}
        flooder = threading.Thread(
            target=lambda: result.setdefault("replies", attacks.flood((server.host, server.udp), count))
        )
        flooder.start()
        other: list[float] = []
        lost = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(0.5)
            while flooder.is_alive() and len(other) + lost < 1000:
                t = time.perf_counter()
                s.sendto(b"me too", (server.host, server.udp))
                try:
                    while s.recvfrom(100)[0] != b"ME TOO":
                        pass
                    other.append((time.perf_counter() - t) * 1000)
                except TimeoutError:
                    lost += 1  # dropped in the kernel's queue before capserv saw it
                time.sleep(0.005)
        flooder.join(300)
        took = time.monotonic() - start
        metrics = server.metrics()
        one = {
            "datagrams_sent": count,
            "seconds": round(took, 2),
            "received_by_capserv": metrics["capserv_datagrams_received_total"],
            "answered_to_flooder": result.get("replies"),
            "dropped_rate_limit": metrics['capserv_datagrams_dropped_total{reason="rate_limit"}'],
            "other_source_answered": len(other),
            "other_source_lost": lost,
            "other_source_p99_ms": round(sorted(other)[int(len(other) * 0.99) - 1], 3) if other else None,
        }
    with serving("--udp-rate-loopback", "--udp-rate-table-size=4096") as server:
        rss0, _ = server.usage()
        answered = 0
        start = time.monotonic()
        for i in range(sources):
            source = f"127.{2 + i // 60000}.{(i // 240) % 250}.{i % 240 + 1}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((source, 0))
                u.settimeout(2)
                u.sendto(b"x", (server.host, server.udp))
                answered += u.recvfrom(10)[0] == b"X"
        rss1, _ = server.usage()
        metrics = server.metrics()
        many = {
            "sources": sources,
            "answered": answered,
            "seconds": round(time.monotonic() - start, 1),
            "rate_table_size": metrics["capserv_udp_rate_sources"],
            "rss_growth_kib": rss1 - rss0,
        }
    return {"one_source": one, "many_sources": many}


def loop() -> dict[str, Any]:
    if not attacks.can_spoof():
        return {"skipped": "raw sockets not allowed (needs root or CAP_NET_RAW)"}
    options = ["--udp-rate-loopback"]  # loopback sources are exempt by default
    with serving(*options) as a, serving(*options) as b:
        start = time.monotonic()
        attacks.spoof_udp((b.host, b.udp), (a.host, a.udp), b"ping pong")
        last, quiet_since = -1.0, time.monotonic()
        while time.monotonic() - quiet_since < 1.0 and time.monotonic() - start < 60:
            total = a.metrics()["capserv_datagrams_received_total"] + b.metrics()["capserv_datagrams_received_total"]
            if total != last:
                last, quiet_since = total, time.monotonic()
            time.sleep(0.05)
        return {
            "bounces": last,
            "died_within_s": round(quiet_since - start, 2),
            "dropped_rate_limit": a.metrics()['capserv_datagrams_dropped_total{reason="rate_limit"}']
            + b.metrics()['capserv_datagrams_dropped_total{reason="rate_limit"}'],
            "options": "default --udp-rate 500 --udp-burst 1000, plus --udp-rate-loopback",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    args = parser.parse_args()
    attacks.raise_fd_limit(30000)
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        # Each slow reader parks about 1.5 MB in this host's kernel buffers
        # before capserv pauses it; 300 of them stay under Linux's default
        # TCP memory pressure mark (tcp_mem) on a small machine.
        "slow_readers": lambda: slow_readers(300),
        "slowloris": lambda: slowloris(10000),
        "reset_storm": lambda: reset_storm(20000),
        "udp_flood": lambda: udp_flood(200000, 50000),
        "loop": loop,
    }
    results: dict[str, Any] = {}
    for name, case in cases.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        results[name] = case()
        print(json.dumps(results[name], indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
