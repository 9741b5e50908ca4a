"""Audit tests: the root fixtures, with a second onboarded provider paid in euros."""

from __future__ import annotations

import pytest

from payout_ledger.testing import InMemoryProviderDirectory
from tests.audit.scenario import CAROL
from tests.support import ALICE, BOB_NOT_ONBOARDED


@pytest.fixture
def providers() -> InMemoryProviderDirectory:
    return InMemoryProviderDirectory([ALICE, BOB_NOT_ONBOARDED, CAROL])
