"""
tox inline plugin: find the interpreters pyenv has installed, and add the
environments of Pythons newer than the default matrix where they exist.

pyenv installs every Python under ``$PYENV_ROOT/versions/*/bin`` but puts only
the selected ones on ``PATH`` (through shims that refuse the others), so tox
would skip the rest.  This adds those directories to the end of ``PATH`` for
tox's interpreter discovery; where pyenv is absent it changes nothing.

A newer Python's environments (`NEWER_PYTHONS`) join tox.ini's ``envlist``
through ``{env:CAPSERV_NEWER_PYTHON_ENVS:}`` only where that interpreter is
found: CI makes a listed environment without its interpreter a failure.
Setting ``CAPSERV_NEWER_PYTHON_ENVS`` (even empty) overrides the search.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

from tox.plugin import impl

# Interpreter name -> its environments (tox.ini's factor syntax).
NEWER_PYTHONS = {"python3.14": "py314-twnewest-{epoll,asyncio}"}


def pyenv_bin_dirs() -> list[str]:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return sorted(glob.glob(os.path.join(root, "versions", "*", "bin")), reverse=True)


def newer_python_envs(path: str) -> str:
    """The envlist entries of the `NEWER_PYTHONS` found on ``path``."""
    return ",".join(envs for name, envs in NEWER_PYTHONS.items() if shutil.which(name, path=path))


@impl
def tox_add_core_config(core_conf: Any, state: Any) -> None:
    extra = [d for d in pyenv_bin_dirs() if d not in os.environ.get("PATH", "").split(os.pathsep)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *extra])
    os.environ.setdefault("CAPSERV_NEWER_PYTHON_ENVS", newer_python_envs(os.environ["PATH"]))
