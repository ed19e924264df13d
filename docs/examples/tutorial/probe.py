"""
Push an uppercase server the ways the lesson's programs do not expect, and
say in one line what came back.

Each check is one subcommand; run ``python3 probe.py --help`` for the list.
Every check talks to ``localhost`` port 50007 unless ``--host``/``--port``
say otherwise, is bounded in time, and ends with a sentence, not a
traceback, whatever the server does (including crashing, or not being
there).
"""

import argparse
import socket
import sys
import threading
import time

MB = 1024 * 1024


def show(data):
    """Bytes as readable text: UTF-8 where it is, ``\\xNN`` where it is not."""
    return repr(data.decode("utf-8", "backslashreplace")).replace("\\\\x", "\\x")


def connect(args):
    """A TCP connection to the server, or exit with a sentence saying why not."""
    try:
        return socket.create_connection((args.host, args.port), timeout=args.timeout)
    except ConnectionRefusedError:
        sys.exit(f"nothing is listening on TCP {args.host}:{args.port}: start a server first")
    except OSError as e:
        sys.exit(f"cannot connect to TCP {args.host}:{args.port}: {e.strerror or e}")


def read_to_end(sock, limit=None):
    """
    Read until the server closes, resets, or goes quiet for the socket's
    timeout; return (bytes, how it ended).
    """
    chunks, total = [], 0
    while limit is None or total < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), "timeout"
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "closed"
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), "enough"


def udp_exchange(args, payload):
    """Send one datagram and wait for one reply; None if none comes in time."""
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        try:
            sock.sendto(payload, (args.host, args.port))
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        except ConnectionRefusedError:
            return None  # ICMP port unreachable: nothing is listening (any more)
        except OSError as e:
            sys.exit(f"cannot send to UDP {args.host}:{args.port}: {e.strerror or e}")
        return reply


def no_reply(args):
    return (
        f"no reply within {args.timeout:g} s: is a server running on UDP {args.host}:{args.port}? "
        "(the lesson's server stops at its first error: look at its window)"
    )


def big_datagram(args):
    """One datagram of SIZE bytes: how much of it comes back?"""
    reply = udp_exchange(args, b"a" * args.size)
    if reply is None:
        return no_reply(args)
    verdict = "all of it" if len(reply) == args.size else "the server read only the start of the datagram"
    return f"sent {args.size} bytes by UDP, got {len(reply)} back: {verdict}"


def bad_utf8(args):
    """One datagram that is not UTF-8 (Latin-1 'café'): a reply, or a crash?"""
    payload = "café".encode("latin-1")
    reply = udp_exchange(args, payload)
    if reply is None:
        return no_reply(args)
    return f"sent {show(payload)} (not UTF-8) by UDP, got back {show(reply)}"


def tcp_parts(args, parts, what):
    """
    Send the parts with a pause between them (no half-close), then read
    until as many bytes came back as went out, or the server closes or goes
    quiet.
    """
    sock = connect(args)
    with sock:
        try:
            for i, part in enumerate(parts):
                if i:
                    time.sleep(args.pause)
                sock.sendall(part)
        except OSError:
            pass  # the server has closed or reset the connection: read what it sent before
        reply, end = read_to_end(sock, limit=sum(map(len, parts)))
    ending = {
        "enough": "",
        "closed": ", and the server closed the connection",
        "reset": ", and the server reset the connection",
        "timeout": f", and then nothing for {args.timeout:g} s",
    }[end]
    return f"sent {what}, got back {show(reply)}{ending}"


def two_writes(args):
    """'hello ' and, a moment later, 'world' on one connection: one reply or two?"""
    return tcp_parts(args, [b"hello ", b"world"], "'hello ' and 'world' in two writes")


def split_char(args):
    """'café' with the two bytes of 'é' in two writes: is the 'é' uppercased?"""
    return tcp_parts(args, [b"caf\xc3", b"\xa9"], "'café' in two writes, split inside the 'é'")


def tcp_message(args):
    """One message over TCP, then half-close and read the reply to its end."""
    sock = connect(args)
    with sock:
        started = time.monotonic()
        # Corked, the text and the half-close leave in one packet, as they
        # do when a fast client writes and shuts down at once: the server
        # sees both together, every time (Linux; elsewhere they may not).
        if hasattr(socket, "TCP_CORK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(args.text.encode())
        sock.shutdown(socket.SHUT_WR)
        reply, end = read_to_end(sock)
    if not reply:
        if end == "timeout":
            return f"no reply within {args.timeout:g} s"
        return "got back nothing: the server closed the connection without replying"
    waited = time.monotonic() - started
    return f"got back {show(reply)} after {waited:.1f} s" + (", the reply was cut short" if end != "closed" else "")


def silent(args):
    """Connect and send nothing; print when the server closes, or give up after --seconds."""
    sock = connect(args)
    with sock:
        print(f"connected to {args.host}:{args.port}, sending nothing (Ctrl-C ends)", flush=True)
        started = time.monotonic()
        sock.settimeout(args.seconds)
        try:
            data = sock.recv(1)
        except TimeoutError:
            return f"still connected after {args.seconds:g} s; closing"
        except ConnectionResetError:
            data = b""
        except KeyboardInterrupt:
            return "stopped"
        waited = time.monotonic() - started
        if data:
            return f"the server sent {show(data)} after {waited:.1f} s"
        return f"the server closed the connection after {waited:.1f} s"


def pipe(args):
    """
    Send MEGABYTES without reading, then read: backpressure? the whole reply?

    This is what a pipe that has not started reading yet does.  Shows
    whether the server stops reading when its replies are not being taken
    (backpressure), and whether it sends the whole reply after the
    half-close.
    """
    total = args.megabytes * MB
    sock = connect(args)
    sent = [0]
    sender_done = threading.Event()

    def send_all():
        chunk = b"x" * 65536
        try:
            while sent[0] < total:
                sent[0] += sock.send(chunk[: total - sent[0]])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed or reset: what came back says the rest
        sender_done.set()

    with sock:
        sock.settimeout(None)  # the sender blocks while the server does not read
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        # Wait until everything is sent, or the sending has stalled for a second.
        last, last_change, deadline = -1, time.monotonic(), time.monotonic() + 60
        while not sender_done.wait(0.1) and time.monotonic() < deadline:
            if sent[0] != last:
                last, last_change = sent[0], time.monotonic()
            elif time.monotonic() - last_change > 1.0:
                break
        before_reading = sent[0]
        sock.settimeout(args.timeout)
        reply, end = read_to_end(sock, limit=total)
        sender.join(args.timeout)
    if before_reading >= total:
        first = f"sent all {args.megabytes} MB before reading a byte: the server read it all and held the replies"
    else:
        first = f"the server stopped reading after {before_reading / MB:.1f} MB until we read (backpressure)"
    got = f"got back {len(reply) / MB:.1f} MB of {args.megabytes} MB"
    if len(reply) < total:
        got += " (the server closed without sending the rest)" if end != "timeout" else " (then silence)"
    return f"{first}; {got}"


CHECKS = {
    "big-datagram": big_datagram,
    "bad-utf8": bad_utf8,
    "two-writes": two_writes,
    "split-char": split_char,
    "tcp": tcp_message,
    "silent": silent,
    "pipe": pipe,
}


def first_paragraph(text):
    return " ".join(text.strip().split("\n\n")[0].split())


def main():
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=50007)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply (2)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between two writes (0.5)")
    sub = parser.add_subparsers(dest="check", required=True, metavar="CHECK")
    for name, check in CHECKS.items():
        command = sub.add_parser(name, help=first_paragraph(check.__doc__))
        if name == "big-datagram":
            command.add_argument("size", type=int, help="bytes in the datagram")
        if name == "tcp":
            command.add_argument("text")
        if name == "silent":
            command.add_argument("--seconds", type=float, default=3600.0, help="give up after this long (3600)")
        if name == "pipe":
            command.add_argument("megabytes", type=int)
    args = parser.parse_args()
    if args.check == "big-datagram" and not 0 < args.size <= 65507:
        parser.error("a UDP datagram over IPv4 holds 1 to 65507 bytes")
    try:
        print(CHECKS[args.check](args))
    except KeyboardInterrupt:
        sys.exit("stopped")


if __name__ == "__main__":
    main()
