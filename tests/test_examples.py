"""The examples the docs show run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_host_usage_example_pays_once() -> None:
    """examples/host_usage.py: the second release finds the first transfer."""
    lines = _run("host_usage.py").splitlines()
    assert len(lines) == 2
    assert lines[0] == lines[1]
    assert lines[0].startswith("paid by transfer tr_")


def test_stripe_host_example_runs_the_real_gateway_against_the_fake() -> None:
    """examples/stripe_host.py: two transfers at Stripe, a settled lost response, clean books."""
    out = _run("stripe_host.py")
    assert "first release: released" in out
    assert "second release: already_released" in out
    assert "lost response: outcome_unknown" in out
    assert "resumed: es_43 released found at Stripe" in out
    assert "transfers at Stripe: 2" in out
    assert "books agree with Stripe: True" in out
