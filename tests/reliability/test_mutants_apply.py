"""Guard for the mutation check: every mutant still finds the one line it breaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.mutants import MUTANTS

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "payout_ledger"


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_applies_to_exactly_one_place_in_its_module(name: str) -> None:
    """A mutant whose text drifted away from its module would test nothing."""
    _, module, old, new = MUTANTS[name]
    assert (PACKAGE / module).read_text().count(old) == 1
    assert old != new
