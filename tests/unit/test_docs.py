"""
Tests for tests/support/docs_check.py, the checker that runs every command and
example of README.md and docs/ (``tox -e docs`` runs it on the real pages),
and for the drifts it was written to stop.  These read the pages and run
tiny made-up pages; they start no daemon.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ..support.docs_check import (
    ROOT,
    Block,
    Checker,
    DocsError,
    kind_of,
    md_blocks,
    output_matches,
    page_blocks,
    page_order,
    plan,
    rst_blocks,
    shell_steps,
    terminal_script,
)


def commands() -> list[tuple[Block, str]]:
    """Every shell command the pages show that the checker runs, with its
    block."""
    found = []
    for block, kind in plan(page_order()):
        if kind == "shell":
            found += [(block, step.command) for step in shell_steps(block.text)]
    return found


class PagesTests(SynchronousTestCase):
    """
    The real pages: every block is run or marked, and the drifts of issue
    #12 stay fixed.
    """

    def test_every_block_is_run_or_marked_with_a_reason(self) -> None:
        """
        Every code block of README.md and docs/ is one the checker runs, or
        is marked skip with a reason, or is in a language that is not run;
        the pages hold runnable blocks at all.
        """
        kinds = [kind for _block, kind in plan(page_order())]
        self.assertGreater(kinds.count("shell"), 20)
        self.assertGreaterEqual(kinds.count("python") + kinds.count("server") + kinds.count("doctest"), 3)

    def test_pages_in_table_of_contents_order(self) -> None:
        """
        README.md comes first, then the quick start, before the pages that
        build on its install.
        """
        pages = [os.path.relpath(p, ROOT) for p in page_order()]
        self.assertEqual(pages[0], "README.md")
        self.assertLess(pages.index(os.path.join("docs", "quickstart.rst")), pages.index("docs/client.rst"))

    def test_nc_half_closes(self) -> None:
        """
        Every nc command in the pages uses -N: without it OpenBSD nc does
        not end at Ctrl-D or at the end of a pipe.
        """
        for block, command in commands():
            if command.startswith("nc ") or " nc " in command:
                self.assertIn(" -N ", command, block.where)

    def test_daemons_write_no_pid_file(self) -> None:
        """
        Every twistd command the pages show has --pidfile= (otherwise a
        second instance refuses and twistd.pid lands in the checkout),
        skipped ones included.
        """
        for path in page_order():
            for block in page_blocks(path):
                for line in block.text.splitlines():
                    if "twistd " in line and " -n " in line:
                        self.assertIn("--pidfile=", line, block.where)

    def test_contract_cites_no_missing_file(self) -> None:
        """
        docs/contract.rst does not call a file outside the repository the
        specification of record.
        """
        with open(os.path.join(ROOT, "docs", "contract.rst"), encoding="utf-8") as f:
            contract = f.read()
        self.assertNotIn("SPEC.md", contract)
        self.assertIn("This page is the record", contract)

    def test_client_api_example_is_whole(self) -> None:
        """
        The client page's API example imports everything it uses (defer
        included), so that it runs as shown.
        """
        (example,) = [b for b in page_blocks(os.path.join(ROOT, "docs", "client.rst")) if b.language == "python"]
        self.assertIn("from twisted.internet import defer, endpoints, task", example.text)

    def test_readme_names_the_system_tools(self) -> None:
        """
        README's "Try it" names OpenBSD netcat with -N and socat.
        """
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        try_it = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
        self.assertIn("OpenBSD netcat", try_it)
        self.assertIn("`-N`", try_it)
        self.assertIn("`socat`", try_it)

    def test_development_page_names_the_trial_modules(self) -> None:
        """
        docs/development.rst's trial command runs the unit tests, the
        folder .ci/trial_check.py holds trial to.
        """
        blocks = page_blocks(os.path.join(ROOT, "docs", "development.rst"))
        (command,) = [b.text for b in blocks if "twisted.trial" in b.text]
        self.assertEqual(command.split()[3:], ["tests.unit"])
        with open(os.path.join(ROOT, ".ci", "trial_check.py")) as script:
            self.assertIn('"tests", "unit"', script.read())

    def test_gitignore(self) -> None:
        """
        The folders and files the README's commands and the docs' examples
        make are ignored by git.
        """
        with open(os.path.join(ROOT, ".gitignore"), encoding="utf-8") as f:
            ignored = f.read().split()
        for name in (".venv/", ".venv-tox/", "twistd.pid", "tls-test/", "capserv.sock"):
            self.assertIn(name, ignored)


class ReadingTests(SynchronousTestCase):
    """
    How the checker finds blocks, markers and transcript steps.
    """

    def test_rst_literal_and_code_blocks_with_markers(self) -> None:
        """
        A paragraph ending in ``::`` and a code-block directive each give a
        block; a docs-check comment applies to the next block only.
        """
        page = (
            "Intro::\n\n    $ echo hi\n    hi\n\n"
            '.. docs-check: skip "an illustration"\n\n'
            ".. code-block:: python\n   :caption: x\n\n    print(1)\n\nText.\n\n"
            "Again::\n\n    true\n"
        )
        blocks = rst_blocks("page.rst", page)
        self.assertEqual(
            [(b.language, b.text) for b in blocks],
            [("default", "$ echo hi\nhi"), ("python", "print(1)"), ("default", "true")],
        )
        self.assertEqual([b.markers for b in blocks], [[], [["skip", "an illustration"]], []])
        self.assertEqual([kind_of(b) for b in blocks], ["shell", "skip", "shell"])

    def test_markdown_fences_and_markers(self) -> None:
        """
        Fenced blocks keep their language; an HTML-comment marker applies to
        the next fence.
        """
        page = "<!-- docs-check: type hello -->\n```sh\n$ cat\n```\n\n```python\n>>> 1\n1\n```\n"
        blocks = md_blocks("README.md", page)
        self.assertEqual([(b.language, b.markers) for b in blocks], [("sh", [["type", "hello"]]), ("python", [])])
        self.assertEqual([kind_of(b) for b in blocks], ["shell", "doctest"])

    def test_bad_markers_are_errors(self) -> None:
        """
        A skip without a reason, an unknown marker, and a block in an
        unknown language are errors, so nothing slips through unchecked.
        """
        for markers, language in (([["skip"]], "sh"), ([["maybe"]], "sh"), ([], "perl")):
            with self.assertRaises(DocsError):
                kind_of(Block("p.rst", 1, language, "x", markers))

    def test_transcript_steps(self) -> None:
        """
        ``$`` lines are commands and the lines after them their output; a
        block without ``$`` is one command a line, with continuation
        lines joined and comments left out.
        """
        steps = shell_steps("$ echo a\na\n\n$ true\n$ printf 'b\\n'\nb\n")
        self.assertEqual(
            [(s.command, s.expected) for s in steps], [("echo a", ["a"]), ("true", []), ("printf 'b\\n'", ["b"])]
        )
        steps = shell_steps("# a comment\nls \\\n  -l\ntrue\n")
        self.assertEqual([(s.command, s.expected) for s in steps], [("ls    -l", None), ("true", None)])

    def test_output_matching(self) -> None:
        """
        Output must match line for line (trailing spaces and blank lines
        aside); a ``...`` line stands for any lines.
        """
        self.assertTrue(output_matches(["a", "b"], "a\nb  \n\n"))
        self.assertFalse(output_matches(["a", "b"], "a\nc\n"))
        self.assertTrue(output_matches(["a", "...", "z"], "a\nb\nc\nz\n"))
        self.assertFalse(output_matches(["a"], "a\nb\n"))

    def test_terminal_script(self) -> None:
        """
        In a terminal transcript the typed word at the end of a line is
        input, echoed by the terminal, and ``^D`` is Ctrl-D, not echoed.
        """
        script = terminal_script(["Input lowercase sentence:hello", "HELLO", "Input lowercase sentence:^D"], ["hello"])
        self.assertEqual(
            script,
            [
                ("out", "Input lowercase sentence:"),
                ("in", "hello\n"),
                ("out", "hello\n"),
                ("out", "HELLO\n"),
                ("out", "Input lowercase sentence:"),
                ("in", "\x04"),
            ],
        )


class RunningTests(SynchronousTestCase):
    """
    The checker run on made-up pages with plain shell commands.
    """

    def run_page(self, text: str, name: str = "page.rst") -> list[str]:
        """Run one page in a scratch folder; return the failures."""
        with tempfile.TemporaryDirectory() as folder:
            page = os.path.join(folder, name)
            with open(page, "w", encoding="utf-8") as f:
                f.write(text)
            sandbox = os.path.join(folder, "sandbox")
            os.mkdir(sandbox)
            checker = Checker(sandbox, deadline=float("inf"))
            try:
                checker.page(page)
            finally:
                checker.cleanup()
            return checker.failures

    def test_matching_output_and_state_pass(self) -> None:
        """
        A transcript whose output matches passes; ``cd`` and ``export``
        last for the page's later commands, as in the reader's shell.
        """
        page = "A::\n\n    $ mkdir -p sub\n    $ cd sub\n    $ export WORD=there\n\nB::\n\n"
        page += '    $ basename "$PWD"; echo "$WORD"\n    sub\n    there\n'
        self.assertEqual(self.run_page(page), [])

    def test_wrong_output_and_status_fail(self) -> None:
        """
        Output other than the page shows, a command that fails, and a
        documented failure that succeeds are each reported.
        """
        failures = self.run_page(
            "A::\n\n    $ echo hi\n    HI\n\nB::\n\n    false\n\n.. docs-check: status 1\n\nC::\n\n    $ true\n"
        )
        self.assertEqual(len(failures), 3, failures)
        self.assertIn("printed", failures[0])
        self.assertIn("exited with status 1, not 0", failures[1])
        self.assertIn("exited with status 0, not 1", failures[2])

    def test_typed_input_in_a_terminal(self) -> None:
        """
        With a type marker the command runs in a terminal and the reader's
        words are typed after the prompt; a prompt-driven program then
        shows exactly the transcript.
        """
        program = "python3 -c 'print(input(\"Say:\").upper())'"
        page = f".. docs-check: type hello\n\nA::\n\n    $ {program}\n    Say:hello\n    HELLO\n"
        self.assertEqual(self.run_page(page), [])
        page = f".. docs-check: type hello\n\nA::\n\n    $ {program}\n    Say:hello\n    HELLO!\n"
        self.assertEqual(len(self.run_page(page)), 1)

    def test_python_blocks(self) -> None:
        """
        A doctest that holds and a program that exits 0 pass; a program
        that raises fails.
        """
        ok = ".. code-block:: python\n\n    >>> 2 + 2\n    4\n\n.. code-block:: python\n\n    print('fine')\n"
        bad = ".. code-block:: python\n\n    raise SystemExit('no')\n"
        self.assertEqual(self.run_python_page(ok), [])
        self.assertEqual(len(self.run_python_page(bad)), 1)

    def run_python_page(self, text: str) -> list[str]:
        """Run a page of Python blocks with this interpreter as the page's
        .venv/bin/python."""
        import sys

        with tempfile.TemporaryDirectory() as folder:
            page = os.path.join(folder, "page.rst")
            with open(page, "w", encoding="utf-8") as f:
                f.write(text)
            sandbox = os.path.join(folder, "sandbox")
            os.makedirs(os.path.join(sandbox, ".venv", "bin"))
            os.symlink(sys.executable, os.path.join(sandbox, ".venv", "bin", "python"))
            checker = Checker(sandbox, deadline=float("inf"))
            try:
                checker.page(page)
            finally:
                checker.cleanup()
            return checker.failures
