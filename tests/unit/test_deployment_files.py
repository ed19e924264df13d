"""
The files an operator deploys from, read as text and held to capserv itself:
the Containerfile and its build context (.containerignore), the systemd
unit and the page that installs it, and README's account of what the tests
need.  No container engine or systemd runs here: these parse the files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory
from capserv.protocols.udp import DatagramState
from capserv.site.metrics import CapservCollector
from capserv.tap import Options

ROOT = Path(__file__).resolve().parents[2]
#: What docker and podman give a container between SIGTERM and SIGKILL
#: unless told otherwise (``docker stop``'s and ``podman stop``'s default).
ENGINE_STOP_SECONDS = 10


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def ignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .containerignore/.dockerignore pattern as a regular expression over
    a context-relative path: ``*`` and ``?`` stay within a folder, ``**``
    spans folders, and a pattern naming a folder takes what is inside."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts) + "(?:/.*)?")


def in_context(path: str, ignore: str) -> bool:
    """Whether ``path`` is in the build context: the last pattern of
    ``ignore`` that matches decides, ``!`` putting back what an earlier one
    left out (the rule docker and podman follow)."""
    kept = True
    for line in ignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if ignore_pattern(line.lstrip("!")).fullmatch(path):
            kept = negated
    return kept


def instruction(text: str, name: str) -> list[str]:
    """The JSON (exec) form of a Containerfile instruction."""
    match = re.search(rf"^{name}\b.*?(\[.*\])\s*$", text, re.M)
    assert match is not None, f"no {name} in the Containerfile"
    words: list[str] = json.loads(match.group(1))
    return words


def longest_stop(args: list[str]) -> float:
    """The longest graceful stop capserv's options allow: the drain, the
    wait for open connections, and the grace for their last bytes."""
    options = Options()
    options.parseOptions(args)
    config = options["settings"].config
    return float(options["drain-delay"]) + config.shutdown_timeout + config.abort_grace


class ContainerTests(SynchronousTestCase):
    """
    The Containerfile and .containerignore.
    """

    def test_context_leaves_out_environments_keys_and_builds(self) -> None:
        """
        The virtual environments, git's history, tox's environments, build
        output and key files never reach the build context.
        """
        ignore = read(".containerignore")
        for path in (
            ".git/HEAD",
            ".venv/bin/python",
            ".venv-tox/bin/tox",
            ".venv-bench/lib/x.py",
            ".tox/docs/bin/python",
            "build/lib/capserv/__init__.py",
            "dist/capserv-0.1.0-py3-none-any.whl",
            "capserv.egg-info/PKG-INFO",
            "tls-test/key.pem",
            "tests/keys/server.key",
            "capserv/server.pem",
            "docs/_build/html/index.html",
            "capserv/__pycache__/tap.cpython-313.pyc",
            "twistd.pid",
            "twistd.log",
        ):
            self.assertFalse(in_context(path, ignore), path)

    def test_context_holds_what_the_wheel_is_built_from(self) -> None:
        """
        Everything setup.py reads or packages is in the context: the package,
        the plugin, the metadata files.
        """
        ignore = read(".containerignore")
        needed = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"]
        for folder in ("capserv", "twisted_plugins"):
            for dirpath, dirnames, filenames in os.walk(ROOT / folder):
                dirnames[:] = [name for name in dirnames if name != "__pycache__"]
                needed += [
                    os.path.relpath(os.path.join(dirpath, name), ROOT)
                    for name in filenames
                    if not name.endswith(".pyc")
                ]
        self.assertIn("capserv/py.typed", needed)
        self.assertIn("capserv/_version.py", needed)
        for path in needed:
            self.assertTrue(in_context(path, ignore), path)

    def test_matching_follows_the_engines_rules(self) -> None:
        """
        The matcher above: ``*`` stays in one folder, ``**`` does not, a
        folder takes its contents, and the last matching pattern wins.
        """
        ignore = "*\n!capserv\n**/*.pem\n"
        self.assertFalse(in_context("tests/x.py", ignore))
        self.assertTrue(in_context("capserv/tap.py", ignore))
        self.assertFalse(in_context("capserv/deep/key.pem", ignore))
        self.assertTrue(in_context("a/b.py", "*.py\n"))
        self.assertFalse(in_context("b.py", "*.py\n"))

    def test_only_the_wheel_reaches_the_image(self) -> None:
        """
        The source tree is copied into a build stage only; the image gets
        the wheel built there.
        """
        text = read("Containerfile")
        stages = re.split(r"^FROM\s", text, flags=re.M)[1:]
        self.assertEqual(len(stages), 2)
        self.assertRegex(stages[0], r"^\S+ AS build\n")
        self.assertIn("COPY . /src", stages[0])
        self.assertIn("pip wheel", stages[0])
        copies = re.findall(r"^COPY\s.*$", stages[1], re.M)
        self.assertEqual(copies, ["COPY --from=build /wheels /wheels"])

    def test_stop_comment_gives_engines_time_for_the_whole_stop(self) -> None:
        """
        The graceful stop of the image's command can take longer than an
        engine's default 10 seconds; the Containerfile says so with the
        real defaults, and the stop timeout it and docs/operations tell
        operators to use covers the whole stop.
        """
        text = read("Containerfile")
        command = instruction(text, "CMD")
        args = command[command.index("capserv") + 1 :]
        longest = longest_stop(args)
        self.assertGreater(longest, ENGINE_STOP_SECONDS)
        defaults = Options()
        defaults.parseOptions([])
        config = defaults["settings"].config
        comments = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
        self.assertIn(f"--shutdown-timeout ({config.shutdown_timeout:g} s)", comments)
        self.assertIn(f"--abort-grace ({config.abort_grace:g} s)", comments)
        self.assertIn(f"--drain-delay, {float(defaults['drain-delay']):g} here", comments)
        self.assertIn(f"{ENGINE_STOP_SECONDS} s after SIGTERM by default, which is shorter", comments)
        (seconds,) = set(re.findall(r"--stop-timeout (\d+)", comments))
        self.assertIn(f"stop_grace_period: {seconds}s", comments)
        self.assertGreater(int(seconds), longest)
        self.assertEqual(instruction(text, "HEALTHCHECK")[0], "capserv-client")
        self.assertRegex(text, re.compile(r"^STOPSIGNAL SIGTERM$", re.M))
        operations = read("docs/operations.rst")
        runs = [line for line in operations.splitlines() if re.search(r"\b(podman|docker) run\b", line)]
        self.assertTrue(runs)
        for line in runs:
            self.assertIn(f"--stop-timeout {seconds}", line)


class SystemdTests(SynchronousTestCase):
    """
    The systemd unit and the steps docs/operations.rst gives to install it.
    """

    def test_operations_page_makes_what_the_unit_runs(self) -> None:
        """
        The unit's ``twistd`` is in a virtual environment the page creates
        and installs capserv into, the unit's user needs no account (systemd
        makes one, ``DynamicUser=``), and the page copies the unit under the
        name the .socket unit starts.
        """
        unit = read("docs/systemd/capserv.service")
        settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
        twistd = shlex.split(settings["ExecStart"].rstrip("\\"))[0]
        venv = str(Path(twistd).parent.parent)
        self.assertEqual(venv, "/opt/capserv")
        self.assertEqual(settings["DynamicUser"], "yes")
        self.assertIn("Service=capserv.service", read("docs/systemd/capserv.socket"))
        operations = read("docs/operations.rst")
        self.assertIn(f"python3 -m venv {venv}", operations)
        self.assertIn(f"{venv}/bin/pip install '.[metrics]'", operations)
        self.assertIn("cp docs/systemd/capserv.service docs/systemd/capserv.socket /etc/systemd/system/", operations)
        self.assertIn(".. literalinclude:: systemd/capserv.service", operations)


class ReadmeTests(SynchronousTestCase):
    """
    What README says the tests need.
    """

    def test_one_script_installs_the_system_tools(self) -> None:
        """
        README's install command for the tests' system tools is the script
        CI runs, and README names every package and tool the script
        installs; .ci/run installs nothing of its own.
        """
        script = read(".ci/install-system-deps")
        readme = read("README.md")
        ci = read(".ci/run")
        self.assertIn("sudo .ci/install-system-deps", readme)
        self.assertIn(".ci/install-system-deps", ci)
        self.assertNotIn("apt-get install", ci)
        (packages,) = re.findall(r'^PACKAGES="([^"]*)"', script, re.M)
        (tools,) = re.findall(r'^TOOLS="([^"]*)"', script, re.M)
        for name in packages.split() + tools.split():
            self.assertIn(f"`{name}`", readme)
        self.assertIn("root", readme)

    def test_readme_says_how_to_run_each_environment_of_its_own(self) -> None:
        """
        The environments that need more than Python (bench, fuzz, multihost)
        are each named with the command that runs one.
        """
        readme = read("README.md")
        envlist = read("tox.ini").split("envlist =", 1)[1].split("skip_missing", 1)[0]
        for env in ("bench", "fuzz", "multihost"):
            self.assertIn(f"\n    {env}\n", envlist)
            self.assertIn(f"tox -e {env}", readme)


class MetricsTableTests(SynchronousTestCase):
    """
    docs/operations.rst's table of metrics.
    """

    def test_table_names_every_metric_and_label_value(self) -> None:
        """
        Every metric capserv serves has a row, and the row of a metric with a
        ``limit`` or ``reason`` label names each value the label takes.
        """
        page = read("docs/operations.rst")
        section = page.split("\nMetrics\n-------\n", 1)[1]
        table = re.search(r"^(=+  =+)\n.*?^\1\n(.*?)^\1$", section, re.M | re.S)
        assert table is not None, "no table in Metrics"
        rows: dict[str, str] = {}
        for line in table.group(2).splitlines():
            match = re.match(r"``(capserv_\w+)``\s{2,}(.*)", line)
            if match:
                name = match.group(1)
                rows[name] = match.group(2)
            elif line.startswith(" ") and rows:
                rows[name] += " " + line.strip()
        config = CapservConfig()
        factory, datagrams = UppercaseFactory(config, clock=Clock()), DatagramState(config, clock=Clock())
        collector = CapservCollector(
            lambda: {"tcp": factory.snapshot(), "udp": datagrams.snapshot(), "workers": 1}, config
        )
        for family in collector.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            self.assertIn(name, rows)
            for sample in family.samples:
                for label in ("limit", "reason"):
                    if label in sample.labels:
                        self.assertIn(sample.labels[label], rows[name], f"{name} {label}")
