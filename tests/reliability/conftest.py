"""Markers, the run's mode and the figures file of the reliability suite.

``reliability_long`` tests run only with ``PAYOUT_LEDGER_RELIABILITY=long``; in
the default run they are *deselected* (not skipped: CI counts skips as
failures). At the end of the session every count the tests recorded is written
to ``PAYOUT_LEDGER_RELIABILITY_FIGURES`` or, by default, to
``<tmp>/payout-ledger-reliability/figures-<mode>.json`` (the tree stays clean).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability import figures
from tests.reliability.config import FIGURES_VARIABLE, MODE, MODE_VARIABLE, SIZES, seed

LONG_MARKER = "reliability_long"
_STARTED = time.monotonic()
_STARTED_AT = datetime.now(UTC)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{LONG_MARKER}: part of the long reliability run only ({MODE_VARIABLE}=long)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MODE == "long":
        return
    deselected = [item for item in items if item.get_closest_marker(LONG_MARKER)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(LONG_MARKER)]


def figures_path() -> Path:
    """Where this session's figures go."""
    configured = os.environ.get(FIGURES_VARIABLE)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "payout-ledger-reliability" / f"figures-{MODE}.json"


def _git(*args: str) -> str | None:
    """A read-only git query about the tree the run used."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if figures.FIGURES.empty():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter else {}
    header = {
        "mode": MODE,
        "sizes": SIZES.__dict__,
        "suite_seed": seed(),
        "hypothesis_seed": session.config.getoption("hypothesis_seed", None),
        "started_at": _STARTED_AT.isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - _STARTED),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_src_changes": bool(_git("status", "--porcelain", "--", "src")),
        "postgres": "PAYOUT_LEDGER_TEST_POSTGRES_URL"
        if os.environ.get("PAYOUT_LEDGER_TEST_POSTGRES_URL")
        else "embedded",
        "tests": {
            outcome: len(stats.get(outcome, []))
            for outcome in ("passed", "failed", "error", "xfailed", "xpassed", "skipped")
        },
        "exit_status": int(exitstatus),
    }
    path = figures_path()
    figures.write(path, header)
    if reporter:
        reporter.write_line(f"reliability figures ({MODE}): {path}")
