"""Audit tests: the root fixtures, with a second onboarded provider paid in euros."""

from __future__ import annotations

import pytest

from payout_ledger.testing import InMemoryProviderDirectory
from tests.audit.scenario import CAROL
from tests.audit.support import RawStore
from tests.support import ALICE, BOB_NOT_ONBOARDED


@pytest.fixture
def providers() -> InMemoryProviderDirectory:
    return InMemoryProviderDirectory([ALICE, BOB_NOT_ONBOARDED, CAROL])


@pytest.fixture
def raw(store_url: str) -> RawStore:
    """The store's rows as an attacker with a database login sees and edits them
    (for the modules whose ``store_url`` is SQLite or PostgreSQL)."""
    return RawStore(store_url)
