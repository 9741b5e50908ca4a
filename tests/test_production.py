"""What ``environment="production"`` refuses: settings that lose payouts or move no money.

The trial's red-team: the default store URL is a relative SQLite path (another
working directory is another, empty store: a day later the same service is paid
again), and a production host with a test key or a test double records payouts
nobody receives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from payout_ledger import ConfigurationError, LedgerSettings, PayoutLedger
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.support import ALICE

LIVE_KEY = "sk_live_not_called"


def production(store_url: str, gateway: object, **settings: object) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url, environment="production", **settings),  # type: ignore[arg-type]
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=gateway,  # type: ignore[arg-type]
    )


def live_gateway() -> StripeTransferGateway:
    return StripeTransferGateway(LIVE_KEY, api_base="http://127.0.0.1:9")


@pytest.mark.parametrize(
    "store_url", ["sqlite:///payout_ledger.db", "sqlite:///data/payouts.db", "memory://"]
)
def test_a_store_that_depends_on_the_working_directory_or_the_process_is_refused(
    store_url: str,
) -> None:
    with pytest.raises(ConfigurationError, match="store_url"):
        production(store_url, live_gateway())


def test_an_absolute_sqlite_path_with_a_live_key_is_accepted(tmp_path: Path) -> None:
    with production(f"sqlite:///{tmp_path / 'payouts.db'}", live_gateway()) as ledger:
        assert ledger.livemode is True
        assert ledger.store_mode.value == "live"


@pytest.mark.parametrize(
    "gateway",
    [
        InMemoryTransferGateway(),
        StripeTransferGateway("sk_test_not_called", api_base="http://127.0.0.1:9"),
        object(),  # a host's own gateway that does not say its mode
    ],
    ids=["test-double", "test-key", "unknown"],
)
def test_a_gateway_that_is_not_live_is_refused(tmp_path: Path, gateway: object) -> None:
    with pytest.raises(ConfigurationError, match="must be live"):
        production(f"sqlite:///{tmp_path / 'payouts.db'}", gateway)


def test_a_live_key_in_the_settings_makes_a_hosts_own_gateway_live(tmp_path: Path) -> None:
    with production(
        f"sqlite:///{tmp_path / 'payouts.db'}", object(), stripe_api_key=SecretStr(LIVE_KEY)
    ) as ledger:
        assert ledger.livemode is True
