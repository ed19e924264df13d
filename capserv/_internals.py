"""
Every place capserv reaches into Twisted's private attributes, in one module.

Each helper checks that the internals look as expected and otherwise does
nothing, so a Twisted release that changes them degrades to the public
behaviour instead of breaking.  The tox matrix runs these on the oldest and
newest Twisted capserv supports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["clear_exit_signal"]


def clear_exit_signal(reactor: Any) -> bool:
    """
    Make twistd exit with status 0 after a graceful stop caused by a signal.

    twistd records the signal that stopped the reactor (``_exitSignal``) and,
    once the reactor has stopped, kills itself with that signal again, so a
    clean SIGTERM stop ends with status -15.  capserv's contract is status 0
    once open connections were let finish; forgetting the recorded signal
    gives that.

    :return: whether a recorded signal was cleared.
    """
    if isinstance(getattr(reactor, "_exitSignal", None), int):
        reactor._exitSignal = None
        return True
    return False
