"""
capserv.endpoints.sockets: the one socket factory, on real sockets and
files in a temporary folder.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from capserv.endpoints.grammar import Inet, Unix
from capserv.endpoints.sockets import make_socket, release


def test_tcp_socket_is_bound_listening_and_non_blocking() -> None:
    sock = make_socket(Inet("tcp", "127.0.0.1", 0, backlog=7))
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        sock.close()


def test_reuse_port_is_set_only_when_asked() -> None:
    sock = make_socket(Inet("tcp", "127.0.0.1", 0), reuse_port=True)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    finally:
        sock.close()


def test_udp_socket_is_a_bound_datagram_socket() -> None:
    sock = make_socket(Inet("udp", "127.0.0.1", 0))
    try:
        assert sock.type == socket.SOCK_DGRAM
        assert sock.getsockname()[1] != 0
    finally:
        sock.close()


def test_ipv6_host_binds_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    sock = make_socket(Inet("tcp", "::1", 0))
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"
    finally:
        sock.close()


def test_address_in_use_raises_and_closes_nothing_it_did_not_open() -> None:
    first = make_socket(Inet("tcp", "127.0.0.1", 0))
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError) as raised:
            make_socket(Inet("tcp", "127.0.0.1", port))
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        first.close()


def test_unix_socket_mode_and_lock_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    address = Unix(path, mode=0o600)
    sock = make_socket(address)
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.readlink(path + ".lock") == str(os.getpid())
    finally:
        sock.close()
        release(address)
    assert not os.path.lexists(path + ".lock")


def test_unix_without_lock_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    sock = make_socket(Unix(path, lockfile=False))
    sock.close()
    assert not os.path.lexists(path + ".lock")


def test_stale_unix_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    gone = socket.socket(socket.AF_UNIX)
    gone.bind(path)
    gone.close()  # the file stays; no server answers on it
    sock = make_socket(Unix(path, lockfile=False))
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)  # the new socket answers
        client.close()
    finally:
        sock.close()


def test_live_unix_socket_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(OSError) as raised:
            make_socket(Unix(path, lockfile=False))
        assert raised.value.errno == errno.EADDRINUSE
        assert stat.S_ISSOCK(os.stat(path).st_mode)  # left in place
    finally:
        live.close()


def test_file_that_is_no_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("not a socket")
    with pytest.raises(OSError) as raised:
        make_socket(Unix(str(path), lockfile=False))
    assert raised.value.errno == errno.EEXIST
    assert path.read_text() == "not a socket"


def test_lock_held_by_a_running_process_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    os.symlink("1", path + ".lock")  # PID 1 is always running
    with pytest.raises(OSError) as raised:
        make_socket(Unix(path))
    assert raised.value.errno == errno.EADDRINUSE
    assert "lock file" in str(raised.value)
    assert os.readlink(path + ".lock") == "1"  # not ours to release


def test_release_leaves_another_process_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    os.symlink("1", path + ".lock")
    release(Unix(path))
    assert os.readlink(path + ".lock") == "1"
