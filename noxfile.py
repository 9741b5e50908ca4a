"""Developer sessions: ``nox`` runs lint, typecheck, tests and docs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYTHON_SOURCES = ["src", "tests", "examples", "noxfile.py"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import contracts (docs/architecture.md)."""
    session.install("ruff", "import-linter")
    session.run("ruff", "check", *PYTHON_SOURCES)
    session.run("ruff", "format", "--check", *PYTHON_SOURCES)
    session.run("lint-imports", env={"PYTHONPATH": "src"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and on host-style example code."""
    session.install("-e", ".[dev]")
    session.run("mypy")
    session.run("mypy", "--strict", "examples")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (embedded PostgreSQL unless PAYOUT_LEDGER_TEST_POSTGRES_URL is set)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning fails the build."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (opt-in): `nox -s bench -- --quick` for the short run.

    Writes results, page and profiles to a temporary folder (printed at the end);
    the figures of record: `nox -s bench -- --out bench --docs docs/performance.md`.
    """
    session.install("-e", ".[dev]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def bench_bulk(session: nox.Session) -> None:
    """Bulk releases under the rate governor against a rate-limited fake Stripe (opt-in).

    `nox -s bench_bulk -- --quick` (2,000 releases, about 3 minutes); 20,000 without it
    (about 30 minutes); the figures of record with `-- --out bench`.
    """
    session.install("-e", ".[dev]")
    session.run("python", "bench/bulk.py", *session.posargs)


def reliability_plan(posargs: list[str]) -> tuple[list[str], str, str | None]:
    """pytest's arguments, the figures file and the page to render, from the session's.

    `--figures PATH` and `--docs PATH` are the session's own; everything else goes to
    pytest. The figures go to a temporary folder unless `--figures` names a file, and
    docs/reliability.md is rewritten only when `--docs` names it.
    """
    pytest_args: list[str] = []
    own: dict[str, str] = {}
    args = iter(posargs)
    for arg in args:
        name, equals, value = arg.partition("=")
        if name in ("--figures", "--docs"):
            own[name] = value if equals else next(args, "")
            if not own[name]:
                raise ValueError(f"{name} needs a path")
        else:
            pytest_args.append(arg)
    default = Path(tempfile.gettempdir()) / "payout-ledger-reliability" / "figures-long.json"
    return pytest_args, own.get("--figures", str(default)), own.get("--docs")


@nox.session
def reliability(session: nox.Session) -> None:
    """The long reliability run (opt-in, 10-20 minutes): figures into a temporary folder.

    The figures are printed as Markdown; `nox -s reliability -- --docs docs/reliability.md`
    renders them into the page instead (`--figures PATH` keeps the JSON there).
    """
    session.install("-e", ".[dev]")
    pytest_args, figures, docs = reliability_plan(list(session.posargs))
    Path(figures).parent.mkdir(parents=True, exist_ok=True)
    env = {"PAYOUT_LEDGER_RELIABILITY": "long", "PAYOUT_LEDGER_RELIABILITY_FIGURES": figures}
    session.run("pytest", "tests/reliability", "-q", *pytest_args, env=env)
    render = ["python", "-m", "tests.reliability.report", figures]
    session.run(*render, *(["--docs", docs] if docs else []))
