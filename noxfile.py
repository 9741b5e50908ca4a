"""Developer sessions: ``nox`` runs lint, typecheck, tests and docs."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYTHON_SOURCES = ["src", "tests", "examples", "noxfile.py"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", *PYTHON_SOURCES)
    session.run("ruff", "format", "--check", *PYTHON_SOURCES)


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

    Writes bench/results.json and the table in docs/performance.md.
    """
    session.install("-e", ".[dev]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """The long reliability run (opt-in, 10-20 minutes); figures in docs/reliability.md.

    `nox -s reliability` writes figures-long.json and renders it into the page.
    """
    session.install("-e", ".[dev]")
    env = {
        "PAYOUT_LEDGER_RELIABILITY": "long",
        "PAYOUT_LEDGER_RELIABILITY_FIGURES": "figures-long.json",
    }
    session.run("pytest", "tests/reliability", "-q", *session.posargs, env=env)
    session.run(
        "python",
        "-m",
        "tests.reliability.report",
        "figures-long.json",
        "--docs",
        "docs/reliability.md",
    )
