"""
The packaging guard, run by ``tox -e packaging`` after building.

Checks the built wheel and sdist, then installs the wheel into a fresh
virtual environment and, from a directory outside the source tree, runs
``twistd capserv --help``, refreshes the plugin cache and makes a real TCP
and UDP round trip with the installed daemon.  (daphne lost its twistd plugin
to packaging changes three times; this is the guard against that.)

Usage: python .ci/packaging_check.py DIST_DIR
"""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

PLUGIN = "twisted/plugins/capserv_plugin.py"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"packaging check FAILED: {message}")
    print(f"ok: {message}")


def check_wheel(path: str) -> None:
    names = zipfile.ZipFile(path).namelist()
    check(PLUGIN in names, f"wheel ships {PLUGIN}")
    check("twisted/__init__.py" not in names, "wheel does not ship twisted/__init__.py")
    check("twisted/plugins/__init__.py" not in names, "wheel does not ship twisted/plugins/__init__.py")
    check(not any(n.startswith("tests/") for n in names), "wheel has no top-level tests package")
    check("capserv/py.typed" in names, "wheel marks capserv as typed")
    check(not any(n.endswith("dropin.cache") for n in names), "wheel carries no plugin cache")


def check_sdist(path: str) -> None:
    names = {n.split("/", 1)[1] for n in tarfile.open(path).getnames() if "/" in n}
    for needed in (
        "tox.ini",
        "setup.py",
        "README.md",
        "tests/unit/test_tcp.py",
        "docs/conf.py",
        "docs/index.rst",
        PLUGIN.replace("twisted/plugins", "twisted_plugins"),
    ):
        check(needed in names, f"sdist carries {needed}")


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]


def main(dist: str) -> None:
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    (sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    check_wheel(wheel)
    check_sdist(sdist)

    with tempfile.TemporaryDirectory() as outside:
        venv = os.path.join(outside, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        bindir = os.path.join(venv, "bin")
        result = run([os.path.join(bindir, "pip"), "install", "--quiet", wheel])
        if result.returncode != 0:
            print(result.stderr[-2000:])
        check(result.returncode == 0, "the wheel installs into a fresh virtualenv")
        twistd = os.path.join(bindir, "twistd")
        python = os.path.join(bindir, "python")

        result = run([twistd, "--help"], cwd=outside)
        check("capserv" in result.stdout, "twistd --help lists capserv")
        result = run([twistd, "capserv", "--help"], cwd=outside)
        check(result.returncode == 0 and "--listen" in result.stdout, "twistd capserv --help works")

        refresh = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
        run([python, "-c", refresh], cwd=outside)
        caches = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "twisted", "plugins", "dropin.cache"))
        check(bool(caches), "the plugin cache is written where writable")

        daemon = subprocess.Popen(
            [
                twistd,
                "-n",
                "--pidfile=",
                "capserv",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--listen",
                "udp:0:interface=127.0.0.1",
            ],
            cwd=outside,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert daemon.stdout is not None
        addresses: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + 60
        try:
            for line in daemon.stdout:
                match = re.search(r"Listening for (streams|datagrams) on (\S+):(\d+)", line)
                if match:
                    addresses[match.group(1)] = (match.group(2), int(match.group(3)))
                if " started" in line or time.monotonic() > deadline:
                    break
            check(set(addresses) == {"streams", "datagrams"}, "the installed daemon listens on TCP and UDP")
            with socket.create_connection(addresses["streams"], timeout=10) as s:
                s.sendall("installed straße".encode())
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(100):
                    reply += chunk
            check(reply == b"INSTALLED STRASSE", "TCP round trip through the installed daemon")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(10)
                u.sendto(b"datagram", addresses["datagrams"])
                check(u.recvfrom(2048)[0] == b"DATAGRAM", "UDP round trip through the installed daemon")
            client = os.path.join(bindir, "capserv-client")
            host, port = addresses["streams"]
            result = run([client, "--host", host, "--port", str(port), "console", "script"], cwd=outside)
            check(result.stdout == "CONSOLE SCRIPT\n", "the installed capserv-client talks TCP")
            host, port = addresses["datagrams"]
            result = run([client, "--udp", "--host", host, "--port", str(port), "console", "udp"], cwd=outside)
            check(result.stdout == "CONSOLE UDP\n", "the installed capserv-client talks UDP")
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
            daemon.stdout.close()
        check(code == 0, "the installed daemon stops with status 0 on SIGTERM")
    print("packaging check passed")


if __name__ == "__main__":
    main(sys.argv[1])
