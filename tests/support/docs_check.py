"""
Run every shell command and code example in README.md and docs/ as written.

What a new user does, done by a program: copy the checkout (its tracked
files) into a scratch folder, then go through README.md and each page of
docs/ in the order of the site's table of contents, running each block:

* shell blocks: a transcript (``$ command`` lines followed by the output they
  print) runs each command and compares what it prints (stdout and stderr,
  as a terminal shows them; a ``...`` line matches any lines); a block
  without ``$`` runs each line, which must succeed.  ``. .venv/bin/activate``
  and ``cd`` are replayed before the page's later commands, as they would
  last in the reader's shell.  A ``twistd -n`` command is a daemon the
  reader leaves running: it is started, must print its start line, serves
  the rest of the page, and is stopped with Ctrl-C (SIGINT) at the end of
  the page, which must end it with status 0;
* Python blocks: ``>>>`` examples run as doctests; other blocks run as
  programs with the scratch folder's ``.venv/bin/python``, and must exit 0.

Markers (an rst comment ``.. docs-check: ...`` or a Markdown comment
``<!-- docs-check: ... -->`` before a block) say what a block needs:

``skip REASON``
    not run, with the reason (a synopsis, an illustration, a command that
    needs what the test machine lacks, CI's own command);
``type WORD...``
    the transcript runs in a terminal and WORD, at the end of a line, is
    typed by the reader; ``^D`` is Ctrl-D;
``status N``
    the transcript's commands exit with status N (a documented failure);
``serves HOST PORT``
    the Python program is a server that runs until stopped: it must answer
    a TCP round trip on HOST PORT, then is stopped with SIGINT.

A block in a language that is not run (``text``, ``ini``...) needs no
marker; any other block without one is run, so a new example cannot slip
through unchecked.  The daemons use the documented port 50007, shared with
tests/system/test_daemon.py through the same lock file.  Every process started is
stopped, and the scratch folder removed, whatever happens.

Usage: python tests/support/docs_check.py [PAGE...]      (run by ``tox -e docs``)
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Languages whose blocks are files or output to read, not programs to run.
NOT_RUN = {"text", "ini", "toml", "cfg", "yaml", "json", "none", "dockerfile"}
PYTHON = {"python", "python3", "py", "pycon"}
SHELL = {"sh", "shell", "bash", "console", "default", ""}

#: How long one command may take; one that installs packages gets longer.
COMMAND_SECONDS = 60
INSTALL_SECONDS = 600
#: How long the whole check may take.
TOTAL_SECONDS = 1200

STATE_COMMAND = re.compile(r"^(\.|source|cd|export)\s")
DAEMON_COMMAND = re.compile(r"\btwistd\b.*\s-n\b")
STARTED = re.compile(r"capserv \S+ started \(")


@dataclass
class Block:
    """One code block of a page, with the markers written before it."""

    path: str
    line: int
    language: str
    text: str
    markers: list[list[str]] = field(default_factory=list)

    def marker(self, kind: str) -> list[str] | None:
        """The arguments of this block's ``kind`` marker, or `None`."""
        for marker in self.markers:
            if marker and marker[0] == kind:
                return marker[1:]
        return None

    @property
    def where(self) -> str:
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


@dataclass
class Step:
    """One shell command of a block and the output the page shows for it."""

    command: str
    expected: list[str] | None  # None: the page shows no output


class DocsError(Exception):
    """A block that does not run as written, or cannot be classified."""


# -- reading pages -----------------------------------------------------------------

_RST_MARKER = re.compile(r"^\s*\.\. docs-check:\s*(.*?)\s*$")
_MD_MARKER = re.compile(r"^\s*<!--\s*docs-check:\s*(.*?)\s*-->\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _body(lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """The indented block starting at or after ``start``, and where it ends."""
    index = start
    while index < len(lines) and (not lines[index].strip() or lines[index].lstrip().startswith(":")):
        if lines[index].strip() and _indent(lines[index]) <= indent:
            break
        index += 1
    body: list[str] = []
    while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > indent):
        body.append(lines[index])
        index += 1
    return textwrap.dedent("\n".join(body)).strip("\n"), index


def rst_blocks(path: str, text: str) -> list[Block]:
    """The literal blocks and code blocks of a reStructuredText page."""
    lines = text.splitlines()
    blocks: list[Block] = []
    markers: list[list[str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = _RST_MARKER.match(line)
        directive = _DIRECTIVE.match(line)
        if marker:
            markers.append(shlex.split(marker.group(1)))
        elif directive:
            body, end = _body(lines, index + 1, len(directive.group(1)))
            blocks.append(Block(path, index + 2, directive.group(2).lower(), body, markers))
            markers, index = [], end
            continue
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".. "):
            # A literal block follows a paragraph that ends with "::".
            paragraph_start = index
            while paragraph_start > 0 and lines[paragraph_start - 1].strip():
                paragraph_start -= 1
            body, end = _body(lines, index + 1, _indent(lines[paragraph_start]))
            if body:
                blocks.append(Block(path, index + 2, "default", body, markers))
                markers, index = [], end
                continue
        index += 1
    return blocks


def md_blocks(path: str, text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page."""
    lines = text.splitlines()
    blocks: list[Block] = []
    markers: list[list[str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = _MD_MARKER.match(line)
        if marker:
            markers.append(shlex.split(marker.group(1)))
        elif line.startswith("```"):
            language = line[3:].strip().lower()
            end = index + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            blocks.append(Block(path, index + 2, language, "\n".join(lines[index + 1 : end]), markers))
            markers, index = [], end + 1
            continue
        index += 1
    return blocks


def page_order(root: str = ROOT) -> list[str]:
    """README.md, then the site's pages in the order of its table of
    contents, then any other page under docs/."""
    pages = [os.path.join(root, "README.md")]
    with open(os.path.join(root, "docs", "index.rst"), encoding="utf-8") as f:
        index = f.read()
    pages.append(os.path.join(root, "docs", "index.rst"))
    toctree = index.split(".. toctree::", 1)[1] if ".. toctree::" in index else ""
    for line in toctree.splitlines()[1:]:
        name = line.strip()
        if name and not name.startswith(":"):
            pages.append(os.path.join(root, "docs", name + ".rst"))
    for folder, _dirs, files in sorted(os.walk(os.path.join(root, "docs"))):
        if "_build" in folder:
            continue
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith(".rst") and path not in pages:
                pages.append(path)
    return pages


def page_blocks(path: str) -> list[Block]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return md_blocks(path, text) if path.endswith(".md") else rst_blocks(path, text)


def kind_of(block: Block) -> str:
    """What the check does with a block: ``skip``, ``shell``, ``doctest``,
    ``python`` or ``server``.

    :raise DocsError: a skip without a reason, or a marker the check does
        not know.
    """
    for marker in block.markers:
        if not marker or marker[0] not in ("skip", "type", "status", "serves"):
            raise DocsError(f"{block.where}: unknown docs-check marker {marker}")
    skip = block.marker("skip")
    if skip is not None:
        if not skip:
            raise DocsError(f"{block.where}: 'docs-check: skip' needs a reason")
        return "skip"
    if block.language in NOT_RUN:
        return "skip"
    if block.language in PYTHON:
        if ">>>" in block.text:
            return "doctest"
        return "server" if block.marker("serves") is not None else "python"
    if block.language in SHELL:
        return "shell"
    raise DocsError(f"{block.where}: a {block.language!r} block; mark it 'docs-check: skip REASON' or make it run")


def shell_steps(text: str) -> list[Step]:
    """The commands of a shell block, each with the output shown after it
    (a transcript), or with none (a block of plain commands)."""
    lines = text.splitlines()
    steps: list[Step] = []
    if not any(line.startswith("$ ") for line in lines):
        command = ""
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            command += line.rstrip()
            if command.endswith("\\"):
                command = command[:-1] + " "
                continue
            steps.append(Step(command.strip(), None))
            command = ""
        return steps
    for line in lines:
        if line.startswith("$ "):
            steps.append(Step(line[2:].strip(), []))
        elif steps and steps[-1].expected is not None:
            steps[-1].expected.append(line.rstrip())
        elif line.strip():
            raise DocsError(f"output before the first command: {line!r}")
    for step in steps:
        assert step.expected is not None
        while step.expected and not step.expected[-1]:
            step.expected.pop()
    return steps


def output_matches(expected: list[str], actual: str) -> bool:
    """Whether ``actual`` is the output shown (lines compared without
    trailing spaces and surrounding blank lines; a ``...`` line stands for
    any lines)."""
    pattern = "\n".join(".*" if line.strip() == "..." else re.escape(line.rstrip()) for line in expected)
    lines = [line.rstrip() for line in actual.replace("\r\n", "\n").split("\n")]
    return re.fullmatch(pattern, "\n".join(lines).strip("\n"), re.DOTALL) is not None


def terminal_script(expected: list[str], typed: list[str]) -> list[tuple[str, str]]:
    """A transcript cut into what the program prints (``("out", text)``) and
    what the reader types (``("in", text)``): a typed word at the end of a
    line, or ``^D``."""
    script: list[tuple[str, str]] = []
    for line in expected:
        if line.endswith("^D"):
            script += [("out", line[:-2]), ("in", "\x04")]
            continue
        word = next((w for w in typed if line.endswith(w)), None)
        if word is None:
            script.append(("out", line + "\n"))
        else:
            # The terminal echoes what is typed.
            script += [("out", line[: -len(word)]), ("in", word + "\n"), ("out", word + "\n")]
    return [(kind, text) for kind, text in script if text]


def plan(pages: list[str]) -> Iterator[tuple[Block, str]]:
    """Every block of ``pages`` with what the check does with it."""
    for path in pages:
        for block in page_blocks(path):
            kind = kind_of(block)
            if kind == "shell":
                shell_steps(block.text)  # raises on a malformed transcript
            yield block, kind


# -- running them ----------------------------------------------------------------------


class CheckFailedError(Exception):
    """A block that did not do what its page says."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    | " + line for line in text.rstrip().splitlines()[-lines:])


class Reader(threading.Thread):
    """Collects a process's output as it comes, so a daemon never blocks."""

    def __init__(self, stream: object) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.data = b""

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read1(65536), b""):  # type: ignore[attr-defined]
            self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class Running:
    """A process a page left running: a daemon or a server program."""

    where: str
    command: str
    process: subprocess.Popen[bytes]
    output: Reader


class Checker:
    """Runs the pages' blocks in one scratch copy of the checkout."""

    def __init__(self, sandbox: str, deadline: float) -> None:
        self.sandbox = sandbox
        self.deadline = deadline
        self.env = _environment(sandbox)
        self.prefix: list[str] = []
        self.running: list[Running] = []
        self.everything: list[subprocess.Popen[bytes]] = []
        self.failures: list[str] = []
        # A run in the background inherits SIGINT ignored, and so would every
        # daemon it starts: Ctrl-C would not stop them.  A handler (reset to
        # the default at exec) gives the programs the reader's disposition.
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def seconds(self, command: str) -> float:
        wanted = INSTALL_SECONDS if "pip install" in command else COMMAND_SECONDS
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckFailedError(f"the whole check took more than {TOTAL_SECONDS}s")
        return min(wanted, left)

    def bash(self, command: str) -> list[str]:
        return ["bash", "-c", " && ".join([*self.prefix, command])]

    def start(self, command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # type: ignore[call-overload]
            self.bash(command), cwd=self.sandbox, env=self.env, start_new_session=True, **kwargs
        )
        self.everything.append(process)
        return process  # type: ignore[no-any-return]

    # pages

    def page(self, path: str) -> None:
        self.prefix = []
        try:
            for block in page_blocks(path):
                kind = kind_of(block)
                if kind == "skip":
                    continue
                began = time.monotonic()
                try:
                    getattr(self, f"run_{kind}")(block)
                    print(f"ok: {block.where} ({kind}, {time.monotonic() - began:.1f}s)", flush=True)
                except CheckFailedError as e:
                    self.failures.append(f"{block.where}: {e}")
                    print(f"FAILED: {block.where}: {e}", flush=True)
        finally:
            began = time.monotonic()
            self.stop_running()
            print(f"stopped what {os.path.relpath(path, ROOT)} left running ({time.monotonic() - began:.1f}s)")

    def stop_running(self) -> None:
        """Ctrl-C for what the page left running: each must stop, status 0."""
        for running in reversed(self.running):
            process = running.process
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                self.failures.append(f"{running.where}: {running.command!r} did not stop on Ctrl-C (SIGINT)")
                continue
            running.output.join(5)
            if process.returncode != 0:
                self.failures.append(
                    f"{running.where}: {running.command!r} ended with status {process.returncode} on Ctrl-C\n"
                    + _tail(running.output.text)
                )
        self.running = []

    def cleanup(self) -> None:
        for process in self.everything:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()

    # shell

    def run_shell(self, block: Block) -> None:
        status = int((block.marker("status") or ["0"])[0])
        typed = block.marker("type")
        for step in shell_steps(block.text):
            if STATE_COMMAND.match(step.command):
                self.run_command(step.command, [], 0)
                self.prefix.append(step.command)
            elif DAEMON_COMMAND.search(step.command) and "--help" not in step.command:
                self.run_daemon(block, step.command)
            elif typed is not None and step.expected and any(line.endswith(("^D", *typed)) for line in step.expected):
                self.run_in_terminal(step.command, step.expected, typed, status)
            else:
                self.run_command(step.command, step.expected, status)

    def run_command(self, command: str, expected: list[str] | None, status: int) -> None:
        process = self.start(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = process.communicate(timeout=self.seconds(command))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            raise CheckFailedError(f"{command!r} did not finish\n{_tail(out.decode('utf-8', 'replace'))}") from None
        text = out.decode("utf-8", "replace")
        if process.returncode != status:
            raise CheckFailedError(f"{command!r} exited with status {process.returncode}, not {status}\n{_tail(text)}")
        if expected and not output_matches(expected, text):
            raise CheckFailedError(
                f"{command!r} printed\n{_tail(text, 30)}\n  instead of\n{_tail(chr(10).join(expected), 30)}"
            )

    def run_in_terminal(self, command: str, expected: list[str], typed: list[str], status: int) -> None:
        controller, terminal = pty.openpty()
        process = self.start(command, stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        seen = ""
        shown = ""
        deadline = time.monotonic() + self.seconds(command)
        try:
            for kind, text in terminal_script(expected, typed):
                if kind == "in":
                    os.write(controller, text.encode())
                    continue
                shown += text
                while len(seen) < len(shown) and time.monotonic() < deadline:
                    seen += _read_terminal(controller, deadline)
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise CheckFailedError(f"{command!r} did not finish\n{_tail(seen)}") from None
            seen += _read_terminal(controller, time.monotonic() + 0.5, until_closed=True)
        finally:
            os.close(controller)
        if process.returncode != status:
            raise CheckFailedError(f"{command!r} exited with status {process.returncode}, not {status}\n{_tail(seen)}")
        if seen.replace("\r\n", "\n").rstrip("\n") != shown.rstrip("\n"):
            raise CheckFailedError(f"{command!r} showed\n{_tail(seen, 30)}\n  instead of\n{_tail(shown, 30)}")

    def run_daemon(self, block: Block, command: str) -> None:
        process = self.start(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = Reader(process.stdout)
        reader.start()
        self.running.append(Running(block.where, command, process, reader))
        deadline = time.monotonic() + self.seconds(command)
        while not STARTED.search(reader.text):
            if process.poll() is not None or time.monotonic() > deadline:
                reader.join(5)
                self.running.pop()
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise CheckFailedError(f"{command!r} did not start\n{_tail(reader.text)}")
            time.sleep(0.1)

    # Python

    def python(self) -> str:
        return os.path.join(self.sandbox, ".venv", "bin", "python")

    def write(self, block: Block, suffix: str) -> str:
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="docs-check-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(block.text + "\n")
        return path

    def run_doctest(self, block: Block) -> None:
        path = self.write(block, ".txt")
        try:
            self.run_command(f"{shlex.quote(self.python())} -m doctest {shlex.quote(path)}", None, 0)
        finally:
            os.unlink(path)

    def run_python(self, block: Block) -> None:
        path = self.write(block, ".py")
        try:
            self.run_command(f"{shlex.quote(self.python())} {shlex.quote(path)}", None, 0)
        finally:
            os.unlink(path)

    def run_server(self, block: Block) -> None:
        serves = block.marker("serves") or []
        if len(serves) != 2:
            raise CheckFailedError("'docs-check: serves' needs HOST PORT")
        host, port = serves[0], int(serves[1])
        path = self.write(block, ".py")
        command = f"{shlex.quote(self.python())} {shlex.quote(path)}"
        process = self.start(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = Reader(process.stdout)
        reader.start()
        running = Running(block.where, "the program", process, reader)
        self.running.append(running)
        try:
            deadline = time.monotonic() + self.seconds(command)
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailedError(f"the program never served {host} {port}\n{_tail(reader.text)}")
                try:
                    reply = _round_trip(host, port, b"served by the docs\n")
                    break
                except OSError:
                    time.sleep(0.2)
            if reply != b"SERVED BY THE DOCS\n":
                raise CheckFailedError(f"the program answered {reply!r}")
            if process.poll() is not None:  # something else answered
                raise CheckFailedError(f"the program ended (status {process.returncode})\n{_tail(reader.text)}")
        finally:
            self.stop_running()
            os.unlink(path)


def _read_terminal(fd: int, deadline: float, until_closed: bool = False) -> str:
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program has ended
            break
        if not chunk:
            break
        data += chunk
        if not until_closed:
            break
    return data.decode("utf-8", "replace")


def _round_trip(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _port_free(kind: int, port: int = 50007) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as twistd does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _environment(sandbox: str) -> dict[str, str]:
    """The reader's environment: no virtual environment active, and no
    ``twistd`` or ``capserv-client`` on PATH until a page says how to get
    them there; ``python3`` is the interpreter running the check."""
    tools = os.path.join(sandbox, ".docs-check-bin")
    os.makedirs(tools, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    os.symlink(os.path.realpath(base), os.path.join(tools, "python3"))
    path = [tools]
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if folder and not any(os.path.exists(os.path.join(folder, n)) for n in ("twistd", "capserv-client")):
            path.append(folder)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=os.pathsep.join(path), LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8", TERM="dumb")
    return env


def copy_checkout(destination: str) -> None:
    """The checkout's files as a fresh clone has them (tracked, plus new
    files not ignored), without virtual environments or build output."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = os.path.join(ROOT, name)
            if os.path.isfile(source):
                os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
                shutil.copy2(source, os.path.join(destination, name))
        return
    ignore = shutil.ignore_patterns(".git", ".venv*", ".tox", "build", "dist", "*.egg-info", "_build", "__pycache__")
    shutil.copytree(ROOT, destination, ignore=ignore, dirs_exist_ok=True)


def main(argv: list[str]) -> int:
    pages = [os.path.abspath(p) for p in argv] or page_order()
    try:
        list(plan(pages))
    except DocsError as e:
        print(f"docs check FAILED: {e}")
        return 1
    started = time.monotonic()
    lock_path = os.path.join(tempfile.gettempdir(), "capserv-tests-50007.lock")
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix="capserv-docs-") as scratch:
        fcntl.flock(lock, fcntl.LOCK_EX)  # port 50007, shared with tests/system/test_daemon.py
        while not (_port_free(socket.SOCK_STREAM) and _port_free(socket.SOCK_DGRAM)):
            if time.monotonic() - started > 120:
                print("docs check FAILED: port 50007, which the docs use, is taken by another program")
                return 1
            time.sleep(1)
        print(f"port 50007 is ours after {time.monotonic() - started:.0f}s", flush=True)
        started = time.monotonic()
        sandbox = os.path.join(scratch, "capserv")
        copy_checkout(sandbox)
        checker = Checker(sandbox, started + TOTAL_SECONDS)
        try:
            for path in pages:
                checker.page(path)
        finally:
            checker.cleanup()
    took = time.monotonic() - started
    if checker.failures:
        print(f"\ndocs check FAILED ({len(checker.failures)}, {took:.0f}s):")
        for failure in checker.failures:
            print(f"- {failure}")
        return 1
    print(f"docs check: every command and example ran as written ({took:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
