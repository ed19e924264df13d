"""
tox inline plugin: find the interpreters pyenv has installed.

pyenv installs every Python under ``$PYENV_ROOT/versions/*/bin`` but puts only
the selected ones on ``PATH`` (through shims that refuse the others), so tox
would skip the rest.  This adds those directories to the end of ``PATH`` for
tox's interpreter discovery; where pyenv is absent it changes nothing.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from tox.plugin import impl


def pyenv_bin_dirs() -> list[str]:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return sorted(glob.glob(os.path.join(root, "versions", "*", "bin")), reverse=True)


@impl
def tox_add_core_config(core_conf: Any, state: Any) -> None:
    extra = [d for d in pyenv_bin_dirs() if d not in os.environ.get("PATH", "").split(os.pathsep)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *extra])
