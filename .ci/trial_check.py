"""
Twisted's trial runs the in-memory tests, and finds all of them.

The in-memory suite (`IN_MEMORY`) is written with ``twisted.trial``
``SynchronousTestCase`` classes, so either runner runs it.  The other test
modules are pytest functions (pytest-twisted for the loopback ones), which
trial does not see: they need pytest.  This script, run by
``tox -e trial-twoldest,trial-twnewest``, counts the tests pytest collects
from the in-memory modules, runs them under ``python -m twisted.trial``, and
fails if trial ran fewer, found none in some module, or reported a failure.

Usage: python .ci/trial_check.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The unit test modules: no sockets, no processes, no reactor running.
IN_MEMORY = sorted(
    "tests.unit." + name.removesuffix(".py")
    for name in os.listdir(os.path.join(ROOT, "tests", "unit"))
    if name.startswith("test_") and name.endswith(".py")
)


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return result.stdout + result.stderr


def pytest_counts() -> dict[str, int]:
    """Tests per module as pytest collects them."""
    files = [name.replace(".", "/") + ".py" for name in IN_MEMORY]
    output = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files])
    counts = dict.fromkeys(IN_MEMORY, 0)
    for line in output.splitlines():
        if "::" in line:
            module = line.split("::", 1)[0].removesuffix(".py").replace("/", ".")
            counts[module] = counts.get(module, 0) + 1
    return counts


def main() -> int:
    expected = pytest_counts()
    output = run([sys.executable, "-m", "twisted.trial", "tests.unit"])
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    passed = re.search(r"^PASSED \(", output, re.MULTILINE)
    found: dict[str, int] = {}
    dry = run([sys.executable, "-m", "twisted.trial", "--dry-run", *IN_MEMORY])
    module = None
    for line in dry.splitlines():
        if re.fullmatch(r"tests\.unit\.\w+", line.strip()) and not line.startswith(" "):
            module = line.strip()
        elif module and line.rstrip().endswith("[OK]"):
            found[module] = found.get(module, 0) + 1
    problems = []
    if not passed or not ran:
        problems.append("trial did not pass:\n" + output[-3000:])
    total = sum(expected.values())
    if ran and int(ran.group(1)) < total:
        problems.append(f"trial ran {ran.group(1)} tests; pytest collects {total} from the same modules")
    for name, count in expected.items():
        if found.get(name, 0) < count:
            problems.append(f"{name}: trial finds {found.get(name, 0)} tests, pytest {count}")
    for problem in problems:
        print(f"trial check FAILED: {problem}")
    if not problems:
        print(f"trial check: trial ran all {total} in-memory tests of {len(IN_MEMORY)} modules and passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
