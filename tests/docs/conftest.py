"""The runs of the documentation's pages, and the count of their blocks in the summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docs.markdown import load_pages
from tests.docs.runner import PageRuns


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageRuns]:
    runs = PageRuns(tmp_path_factory.mktemp("docs"))
    yield runs
    runs.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many of the documentation's blocks ran, and which were not run and why."""
    pages = load_pages()
    blocks = [block for page in pages for block in page.blocks]
    not_run = [block for block in blocks if block.not_run is not None]
    terminalreporter.write_sep("-", "documentation code blocks")
    terminalreporter.write_line(
        f"{len(blocks) - len(not_run)} run as tests, {len(not_run)} marked not-run:"
    )
    for block in not_run:
        terminalreporter.write_line(f"  {block.id} ```{block.lang}: {block.not_run}")
