"""docs/performance.md: hand-written prose from bench/performance.md.in, tables from results."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PAGE = ROOT / "docs" / "performance.md"


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    """bench/report.py, imported as bench/run.py imports it (bench/ on the path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("report")


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return dict(json.loads((BENCH / "results.json").read_text()))


@pytest.fixture(scope="module")
def template(report: ModuleType) -> str:
    return str(report.TEMPLATE.read_text())


def test_every_table_is_placed_labelled_and_filled(
    report: ModuleType, results: dict[str, Any]
) -> None:
    """Each table appears once, in order, under its label, with rows from the results."""
    titles = [title for title, _ in report.tables(results, "bench/results.json").values()]

    page = report.render(results, "bench/results.json")

    assert "{{" not in page
    labels = re.findall(r"^\*\*Table (\d+): (.+)\*\*$", page, re.MULTILINE)
    assert labels == [(str(n), title) for n, title in enumerate(titles, 1)]
    assert "Not measured in this run." not in page
    for label in labels:
        after = page.split(f"**Table {label[0]}: {label[1]}**\n\n", 1)[1]
        assert after.startswith("| "), label


def test_the_committed_page_is_the_rendered_one(report: ModuleType, tmp_path: Path) -> None:
    """docs/performance.md is what the report writes from bench/results.json, as run.py does."""
    results_path = BENCH / "results.json"
    written = tmp_path / "performance.md"

    report.write_report(json.loads(results_path.read_text()), written, results_path)

    assert written.read_text() == PAGE.read_text()


def test_the_command_line_prints_the_page() -> None:
    """`python bench/report.py bench/results.json` prints the page and writes nothing."""
    out = subprocess.run(
        [sys.executable, "bench/report.py", "bench/results.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )

    assert out.stdout == PAGE.read_text()


def test_the_prose_quotes_no_figures(template: str) -> None:
    """Figures live in the tables: the prose names tables, never a number from the results."""
    prose = re.sub(r"```.*?```|<!--.*?-->|^\{\{\w+\}\}$", "", template, flags=re.DOTALL | re.M)
    prose = re.sub(r"\bTables? \d+(?:(?:, | and )\d+)*|\bp(?:50|99)\b", "", prose)

    assert re.findall(r".{0,30}\d.{0,30}", prose) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("{{contention}}\n", ""), "tables not placed: contention"),
        (lambda t: t + "\n{{nonesuch}}\n", "no such table: nonesuch"),
        (lambda t: t.replace("{{replay}}", "{{ replay }}"), "stand alone on its line"),
        (lambda t: t + "\n{{run}}\n", "placed twice or out of order"),
        (lambda t: t + "\nAs Table 99 shows.\n", "cites tables that do not exist: 99"),
    ],
    ids=["missing", "unknown", "malformed", "twice", "cited"],
)
def test_a_template_that_does_not_match_the_tables_fails(
    report: ModuleType,
    results: dict[str, Any],
    template: str,
    change: Callable[[str], str],
    message: str,
) -> None:
    """A table left out, an unknown or malformed placeholder, or a bad citation is an error."""
    with pytest.raises(report.TemplateError, match=re.escape(message)):
        report.render(results, "bench/results.json", change(template))
