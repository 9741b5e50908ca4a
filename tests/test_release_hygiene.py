"""The version, the licence, and commands that leave the working tree as they found it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType

from typer.testing import CliRunner

import payout_ledger
from payout_ledger.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_installed_metadata() -> None:
    """`payout_ledger.__version__` and `payout-ledger --version` agree with the metadata."""
    installed = importlib.metadata.version("payout-ledger")

    result = CliRunner().invoke(app, ["--version"])

    assert payout_ledger.__version__ == installed
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"payout-ledger {installed}"


def test_the_licence_file_matches_the_metadata() -> None:
    """pyproject says MIT; LICENSE is the MIT licence and ships with the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licence = (ROOT / "LICENSE").read_text()

    assert project["license"] == "MIT"
    assert "LICENSE" in project["license-files"]
    assert licence.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in licence
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in licence


def _bench_run_defaults(*argv: str) -> dict[str, str | None]:
    """bench/run.py's output paths for ``argv``, read in a process of their own."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import run; "
        f"print(json.dumps({{k: (str(v) if v is not None else None) "
        f"for k, v in run.output_paths(run._parse({list(argv)!r})).items()}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_benchmark_run_writes_outside_the_tree_unless_told_where() -> None:
    """`nox -s bench -- --quick` writes results, page and profiles to a temporary folder."""
    tmp = Path(tempfile.gettempdir()).resolve()

    paths = _bench_run_defaults("--quick")

    for name in ("results", "profiles", "docs"):
        written = Path(str(paths[name])).resolve()
        assert written.is_relative_to(tmp), paths
        assert not written.is_relative_to(ROOT), paths


def test_a_benchmark_run_writes_the_figures_of_record_when_asked() -> None:
    """--out and --docs name where the figures of record go."""
    paths = _bench_run_defaults("--out", "bench", "--docs", "docs/performance.md")

    assert paths == {
        "results": "bench/results.json",
        "profiles": "bench",
        "docs": "docs/performance.md",
    }


def _noxfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("payout_noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reliability_session_writes_docs_only_when_asked() -> None:
    """`nox -s reliability` keeps its figures in a temporary folder; `-- --docs` renders them."""
    plan = _noxfile().reliability_plan

    pytest_args, figures, docs = plan(["-x"])
    assert pytest_args == ["-x"]
    assert docs is None
    assert Path(figures).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())

    pytest_args, figures, docs = plan(["--docs", "docs/reliability.md", "-k", "kill"])
    assert pytest_args == ["-k", "kill"]
    assert docs == "docs/reliability.md"


def test_the_reliability_report_prints_without_docs(tmp_path: Path) -> None:
    """tests.reliability.report without --docs prints the Markdown and writes nothing."""
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"mutants": []}))

    out = subprocess.run(
        [sys.executable, "-m", "tests.reliability.report", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )

    assert out.stdout.startswith("## mutants")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json"]
