"""Every code block of README.md and docs/*.md runs as written (rules: ``markdown.py``)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.docs.markdown import ROOT, Block, load_pages, parse_page
from tests.docs.runner import FIXTURES, BlockFailedError, PageRun, PageRuns

PAGES = load_pages()
RUNNABLE = [block for page in PAGES for block in page.runnable]

NOT_RUN = {
    "README.md": 2,
    "docs/architecture.md": 1,
    "docs/audit.md": 4,
    "docs/getting-started.md": 3,
    "docs/operations.md": 4,
    "docs/performance.md": 1,
    "docs/reliability.md": 3,
}
"""Blocks marked not-run, per page: marking another is a conscious change to this list."""


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_the_block_runs_as_written(block: Block, page_runs: PageRuns) -> None:
    """The block runs as the page shows it, after the page's earlier blocks."""
    page_runs.run(block.page).run_through(block)


def test_every_block_runs_or_says_why_not() -> None:
    """Each block has a language the runner runs, or a not-run mark with a reason."""
    problems = [problem for page in PAGES for problem in page.problems]
    unknown = [
        f"{page.path}: unknown fixture {name!r}"
        for page in PAGES
        for name in page.fixtures
        if name not in FIXTURES
    ]
    assert problems + unknown == []


def test_the_blocks_not_run_are_counted() -> None:
    """Which pages have blocks that do not run, and how many, is pinned."""
    counted = {page.path: len(page.not_run) for page in PAGES if page.not_run}
    assert counted == NOT_RUN


def test_the_pages_have_blocks_to_run() -> None:
    """The runner finds the pages and their blocks (a parser that finds none would pass)."""
    assert {page.path for page in PAGES} >= {"README.md", "docs/getting-started.md"}
    assert len(RUNNABLE) >= 30


# The runner itself: a snippet that stops working must fail.


def _run(tmp_path: Path, markdown: str) -> PageRun:
    page = parse_page(markdown, "example.md")
    assert page.problems == []
    run = PageRun(page, tmp_path)
    try:
        for block in page.runnable:
            run.run_through(block)
    finally:
        run.close()
    return run


def test_console_output_and_exit_status_are_checked(tmp_path: Path) -> None:
    """Output shown must be output given; the status is 0 unless '# exit N' says otherwise."""
    _run(tmp_path, "```console\n$ echo hello; exit 3   # exit 3\nhello\n$ echo 'a  b'\na b\n```\n")
    with pytest.raises(BlockFailedError, match="exited 0, the page says 1"):
        _run(tmp_path, "```console\n$ true   # exit 1\n```\n")
    with pytest.raises(BlockFailedError, match="Expected"):
        _run(tmp_path, "```console\n$ echo goodbye\nhello\n```\n")


def test_python_blocks_share_a_page_and_their_tests_are_called(tmp_path: Path) -> None:
    """A later block sees an earlier one's names; a test_ function it defines runs."""
    with pytest.raises(AssertionError, match="called"):
        _run(
            tmp_path,
            "```python\nx = 1\n```\n\n```python\ndef test_x():\n    assert x == 2, 'called'\n```\n",
        )


def test_a_failing_block_names_its_page_line(tmp_path: Path) -> None:
    """The traceback points at the page and line of the failing statement."""
    with pytest.raises(ZeroDivisionError) as failed:
        _run(tmp_path, "text\n\n```python\nx = 1\ny = x / 0\n```\n")
    assert failed.traceback[-1].lineno + 1 == 5


def test_pycon_output_is_checked(tmp_path: Path) -> None:
    """A pycon block is a doctest."""
    _run(tmp_path, "```pycon\n>>> 1 + 1\n2\n```\n")
    with pytest.raises(BlockFailedError, match="Expected"):
        _run(tmp_path, "```pycon\n>>> 1 + 1\n3\n```\n")


def test_blocks_that_cannot_run_must_say_why() -> None:
    """An unmarked text block, a mark without a reason and a stray mark are problems."""
    assert parse_page("```text\nx\n```\n", "p.md").problems
    assert parse_page("<!-- not-run: network -->\n```bash\nx\n```\n", "p.md").problems
    assert parse_page("<!-- not-run: needs network -->\nprose\n", "p.md").problems
    assert parse_page("<!-- docs-test: fixture host -->\n", "p.md").problems
    marked = parse_page("<!-- not-run: needs network -->\n\n```bash\nx\n```\n", "p.md")
    assert marked.problems == []
    assert [b.not_run for b in marked.blocks] == ["needs network"]


def test_python_blocks_have_no_network(tmp_path: Path) -> None:
    """A connection to anything but loopback is refused while a block runs."""
    with pytest.raises(OSError, match="no network"):
        _run(
            tmp_path,
            "```python\nimport socket\nsocket.create_connection(('192.0.2.1', 443), timeout=1)\n"
            "```\n",
        )
    with socket.socket() as sock:  # outside a block, sockets are untouched
        assert sock.connect_ex(("127.0.0.1", 9)) != 0


def test_the_documented_exit_codes_are_the_commands_own() -> None:
    """docs/cli.md's exit-code table names exactly the codes payout_ledger.cli defines."""
    from payout_ledger import cli

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {
        int(code): name
        for code, name in re.findall(r"^\| (\d+) \| `(EXIT_[A-Z_]+)` \|", section, re.MULTILINE)
    }
    defined = {
        value: name
        for name, value in vars(cli).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == defined
