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
- ``fairness``: a bystander's round trips (p50/p99/max) on a connection it
  already holds, alone, then while one client streams 10 MB of random
  bytes (5 times), 10 MB of Latin-1 text (5 times), and datagrams of
  60,000 random bytes at the default --udp-rate for 5 s; on the daemon's
  default transports and on Twisted's (``--no-native``).
- ``codec`` (in this process, no daemon): MB/s of ``capserv.uppercase`` and
  of ``Uppercaser.feed`` in 64 KiB chunks for each kind of input, beside
  Python's own decode/upper/encode round trip (the floor).  With
  ``--codec-from FILE``, the codec in FILE instead (an older
  ``text.py``, say, from ``git show``), stored as ``codec_from_file``.

Loopback only; bounded in time and count; every daemon is stopped at the
end.  ``--out`` adds the cases run to the file, keeping the others.
"""

from __future__ import annotations

import argparse
import json
import os
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
from tests.support.contract import reference  # noqa: E402
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


#: The transports the fairness case runs on: the daemon as shipped (the
#: event loop's own, ``capserv.native``, on uvloop) and Twisted's.
TRANSPORTS = {"native": [], "twisted": ["--no-native"]}


def fairness(megabytes: int, repeat: int, udp_seconds: float, interval: float = 0.002) -> dict[str, Any]:
    """
    A bystander's round trips (`attacks.Bystander`: a 64-byte line every
    ``interval`` seconds on a connection it already holds) while one client
    streams ``megabytes`` of random bytes (``repeat`` times, one connection
    after another), then as much Latin-1 text, then sends datagrams of
    60,000 random bytes at the default --udp-rate (500 a second) for
    ``udp_seconds``; one daemon per transport.
    """
    size = megabytes * 1_000_000
    payloads = [attacks.random_bytes(60_000, seed) for seed in range(8)]
    streams = {"random_bytes": attacks.random_bytes(size), "latin1_text": attacks.latin1_text(size)}
    # What else ran on the machine meanwhile (a shared machine's latencies
    # depend on it).
    results: dict[str, Any] = {"load_average_before": os.getloadavg()[0]}
    for transport, options in TRANSPORTS.items():
        one: dict[str, Any] = {}
        with serving(*options) as server:
            with attacks.Bystander(server.host, server.tcp, interval) as alone:
                time.sleep(1.0)
            one["alone"] = alone.summary()
            for kind, data in streams.items():
                want = reference(data)
                took: list[float] = []
                exact = 0
                with attacks.Bystander(server.host, server.tcp, interval) as other:
                    for _ in range(repeat):
                        start = time.monotonic()
                        exact += attacks.stream(server.host, server.tcp, data) == want
                        took.append(time.monotonic() - start)
                one[kind] = {
                    "streams": f"{repeat} x {megabytes} MB",
                    "mb_per_s": round(len(data) / statistics.median(took) / 1e6, 1),
                    "exact": exact,
                    "bystander": other.summary(),
                }
            with attacks.Bystander(server.host, server.tcp, interval) as other:
                sent, replies, exact = attacks.udp_stream(server.host, server.udp, payloads, 500, udp_seconds)
            metrics = server.metrics()
            one["udp_60k_random"] = {
                "datagrams_sent": sent,
                "received_by_capserv": metrics["capserv_datagrams_received_total"],
                "answered_by_capserv": metrics["capserv_datagrams_sent_total"],
                "replies": replies,
                "exact": exact,
                "bystander": other.summary(),
            }
        results[transport] = one
    results["load_average_after"] = os.getloadavg()[0]
    return results


def _repeated(unit: bytes) -> Callable[[int], bytes]:
    return lambda size: (unit * (size // len(unit) + 1))[:size]


#: The kinds of input the codec case measures (those that once cost 40-130x
#: what text costs, tests/unit/test_text.py's slow inputs, and two of text).
CODEC_INPUTS: dict[str, Callable[[int], bytes]] = {
    "random bytes": attacks.random_bytes,
    "Latin-1 text": attacks.latin1_text,
    "a run of 0xff": _repeated(b"\xff"),
    "lone continuation bytes": _repeated(b"\x80\xbf" * 16 + b"a\x80"),
    "truncated sequences": _repeated(b"\xe2\x82a\xf0\x9f\x98b\xc3"),
    "surrogates encoded as UTF-8": _repeated("\ud800\udfff".encode("utf-8", "surrogatepass") + b"x"),
    "valid UTF-8 (Greek)": _repeated("Καλημέρα κόσμε, ΐ ς ".encode()),
    "ASCII": _repeated(b"the quick brown fox jumps over the lazy dog\n"),
}


def _best(f: Callable[[], object], rounds: int) -> float:
    """
    The fastest of ``rounds`` calls of ``f``, in seconds of this process's
    CPU time: on a shared machine, time spent waiting for a core is not
    counted (the codec is single-threaded and never waits for I/O).
    """
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        f()
        best = min(best, time.process_time() - start)
    return best


def codec(size: int = 1 << 20, chunk: int = 65536, rounds: int = 5, module_file: Path | None = None) -> dict[str, Any]:
    """
    MB/s of ``uppercase`` (the whole input at once) and of ``Uppercaser.feed``
    (``chunk`` bytes at a time, then ``flush``) on ``size`` bytes of each of
    `CODEC_INPUTS`, beside the floor, Python's own
    ``data.decode("utf-8", "surrogateescape").upper().encode("utf-8",
    "surrogateescape")``; the best of ``rounds`` (CPU time).  Each answer is
    checked against the floor's.
    """
    if module_file is None:
        import capserv.protocols.text as module
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("codec_under_test", module_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    def fed(data: bytes) -> bytes:
        codec = module.Uppercaser()
        out = [codec.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
        out.append(codec.flush())
        return b"".join(out)

    kinds: dict[str, Any] = {}
    for kind, make in CODEC_INPUTS.items():
        data = make(size)
        want = reference(data)
        assert module.uppercase(data) == want and fed(data) == want, kind
        floor = _best(lambda data=data: reference(data), rounds)
        whole = _best(lambda data=data: module.uppercase(data), rounds)
        feed = _best(lambda data=data: fed(data), rounds)
        kinds[kind] = {
            "floor_mb_s": round(size / floor / 1e6, 1),
            "uppercase_mb_s": round(size / whole / 1e6, 1),
            "feed_mb_s": round(size / feed / 1e6, 1),
            "uppercase_x_floor": round(whole / floor, 2),
            "feed_x_floor": round(feed / floor, 2),
        }
    return {
        "module": str(module_file) if module_file else module.__name__,
        "bytes": size,
        "feed_chunk": chunk,
        "best_of": rounds,
        "kinds": kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    parser.add_argument("--codec-from", type=Path, help="the codec case measures the text.py in this file")
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
        "fairness": lambda: fairness(10, 5, 5.0),
        "codec": lambda: codec(module_file=args.codec_from),
    }
    results: dict[str, Any] = {}
    for name, case in cases.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        key = "codec_from_file" if name == "codec" and args.codec_from else name
        results[key] = case()
        print(json.dumps(results[key], indent=2), flush=True)
    if args.out:
        # Keep the other cases' results from earlier runs.
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(kept | results, indent=2) + "\n")


if __name__ == "__main__":
    main()
