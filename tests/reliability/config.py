"""How big each reliability run is: ``default`` (CI, a few minutes) or ``long`` (opt-in).

``PAYOUT_LEDGER_RELIABILITY=long`` selects the long version. Sizes can be
overridden one by one with ``PAYOUT_LEDGER_RELIABILITY_<NAME>`` (for example
``PAYOUT_LEDGER_RELIABILITY_MACHINE_EXAMPLES=500``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

MODE_VARIABLE = "PAYOUT_LEDGER_RELIABILITY"
FIGURES_VARIABLE = "PAYOUT_LEDGER_RELIABILITY_FIGURES"
SEED_VARIABLE = "PAYOUT_LEDGER_RELIABILITY_SEED"


@dataclass(frozen=True)
class Sizes:
    """Every knob of the reliability suite."""

    machine_examples: int
    """Hypothesis examples of the whole-system state machine on SQLite."""
    machine_postgres_examples: int
    """The same on PostgreSQL (long run only: a schema per example)."""
    machine_steps: int
    """Steps per state-machine example."""
    explore_three_releases_crashes: int
    """Crash budget of the three-release exploration (0 or 1)."""
    kill_processes: int
    """Worker processes running at once in the SIGKILL test."""
    kill_rounds: int
    """Times each worker releases every service."""
    kill_services: int
    """Event services the workers release."""
    kill_budget: int
    """SIGKILLs sent per run (each killed worker is restarted)."""
    db_fault_releases: int
    """Releases running while the database is restarted."""
    fuzz_examples: int
    """Hypothesis examples per bad-input door."""
    tamper_examples: int
    """Hypothesis examples of one mutation under an anchored seal, per store (tests/audit)."""


DEFAULT = Sizes(
    machine_examples=60,
    machine_postgres_examples=0,
    machine_steps=25,
    explore_three_releases_crashes=0,
    kill_processes=4,
    kill_rounds=2,
    kill_services=12,
    kill_budget=6,
    db_fault_releases=12,
    fuzz_examples=150,
    tamper_examples=150,
)

LONG = Sizes(
    machine_examples=400,
    machine_postgres_examples=100,
    machine_steps=40,
    explore_three_releases_crashes=1,
    kill_processes=8,
    kill_rounds=5,
    kill_services=60,
    kill_budget=40,
    db_fault_releases=40,
    fuzz_examples=1500,
    tamper_examples=1500,
)


def mode() -> str:
    """``default`` or ``long``."""
    value = os.environ.get(MODE_VARIABLE, "default").strip().lower() or "default"
    if value not in {"default", "long"}:
        raise ValueError(f"{MODE_VARIABLE} must be 'default' or 'long', not {value!r}")
    return value


def sizes() -> Sizes:
    """The sizes of this run: the mode's, with any per-knob override applied."""
    chosen = LONG if mode() == "long" else DEFAULT
    overrides: dict[str, object] = {}
    for f in fields(Sizes):
        raw = os.environ.get(f"{MODE_VARIABLE}_{f.name.upper()}")
        if raw is None:
            continue
        overrides[f.name] = int(raw)
    return replace(chosen, **overrides)  # type: ignore[arg-type]


def seed() -> int:
    """The seed of the suite's own random choices (kill timing and so on)."""
    raw = os.environ.get(SEED_VARIABLE)
    return int(raw) if raw else 20240601


SIZES = sizes()
MODE = mode()
