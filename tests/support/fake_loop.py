"""
In-memory stand-ins for an asyncio event loop and its stream transport, for
testing `capserv.native`'s adapter without sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeLoop:
    """``call_soon`` whose callbacks wait for the next turn (`run`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_soon(self, f: Callable[..., object], *args: object) -> None:
        self.calls.append((f, args))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class FakeLoopTransport:
    """The part of an asyncio transport the adapter uses, recording calls."""

    def __init__(self, peername: Any = ("192.0.2.1", 40000), sockname: Any = ("127.0.0.1", 50007)) -> None:
        self.extra = {"peername": peername, "sockname": sockname, "socket": None}
        self.written: list[bytes] = []
        self.closed = self.aborted = self.eof = False
        self.reading = True
        self.limits = (16384, 65536)
        self.buffered = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.eof, "write after write_eof raises in asyncio"
        self.written.append(data)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.limits

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None
        self.limits = (high // 4 if low is None else low, high)

    def value(self) -> bytes:
        return b"".join(self.written)
