"""
Process limits: enough open files for ``--max-connections``.

Most systems start a process with a soft limit of 1,024 open files, which
would cut ``--max-connections 20000`` short with "Too many open files".
The soft limit may be raised up to the hard limit without privileges.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

__all__ = ["raise_file_limit"]

_log = Logger(namespace="capserv.rlimits")


def raise_file_limit(wanted: int) -> int:
    """
    Raise the soft limit on open files towards ``wanted`` (at most the hard
    limit); never lower it.

    :return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            _log.warn("Could not raise the open-file limit from {soft} to {target}", soft=soft, target=target)
            return soft
        return target
    return soft
