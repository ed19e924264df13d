"""
Command-line helpers shared by ``twistd capserv`` and ``capserv-client``: numeric
coercers whose errors name the option (Twisted's do not), and ``--help`` output.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["number", "print_and_exit"]


def number(option: str, kind: type, minimum: float = 0, maximum: float | None = None) -> Callable[[str], Any]:
    """A coercer of ``--option``'s text to ``kind`` (``int`` or ``float``), from ``minimum`` to ``maximum``."""

    def coerce(value: str) -> Any:
        try:
            result = kind(value)
        except ValueError:
            raise ValueError(f"--{option}: {value!r} is not a {'whole ' if kind is int else ''}number") from None
        if result != result:
            raise ValueError(f"--{option}: {value!r} is not a number; write one such as 0 or 2.5")
        if maximum is not None and not minimum <= result <= maximum:
            raise ValueError(f"--{option}: {value!r} must be from {minimum:g} to {maximum:g}")
        if result < minimum:
            raise ValueError(f"--{option}: {value!r} must be >= {minimum:g}")
        if result == float("inf"):
            raise ValueError(f"--{option}: {value!r} must be a finite number (0 turns it off)")
        return result

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def print_and_exit(text: str, program: str, code: int) -> NoReturn:
    """
    Print ``text`` (``--help``) and exit 0; where stdout fails, exit ``code`` with no traceback: quietly
    for a closed pipe (as ``ls --help | true``), else with one line.
    """
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # so that Python's flush at exit does not fail again
        if e.errno != errno.EPIPE:
            sys.stderr.write(f"{program}: cannot write to stdout: {e.strerror}\n")
        raise SystemExit(code) from None
    raise SystemExit(0)
