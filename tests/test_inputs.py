"""Bad input is refused with typed errors, and nothing is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from payout_ledger import (
    ConfigurationError,
    InvalidMoneyError,
    InvalidRequestError,
    LedgerSettings,
    Money,
    PayoutLedger,
    PayoutLedgerError,
)
from payout_ledger.settings import redact_url, store_environment
from payout_ledger.testing import InMemoryTransferGateway
from tests.support import release


def test_money_is_integer_minor_units_with_a_lower_case_currency() -> None:
    """Money(1050, "EUR") is 10.50 eur, stored as 1050 and "eur"."""
    money = Money(1050, "EUR")
    assert (money.amount, money.currency) == (1050, "eur")
    assert Money(amount=1, currency="jpy") == Money(1, "jpy")


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (10.5, "usd"),
        (10.0, "usd"),
        (True, "usd"),
        ("1050", "usd"),
        (0, "usd"),
        (-1, "usd"),
        (100, "xyz"),
        (100, "US"),
        (100, None),
        (None, "usd"),
    ],
)
def test_bad_money_is_refused(amount: Any, currency: Any) -> None:
    """Floats, bools, strings, zero, negatives and unknown currencies raise InvalidMoneyError."""
    with pytest.raises(InvalidMoneyError):
        Money(amount=amount, currency=currency)


@pytest.mark.parametrize(
    "request_",
    [
        release("es_1", amount=10.5),  # type: ignore[arg-type]
        release("es_1", amount=0),
        release("es_1", currency="zzz"),
        {**release("es_1"), "amount": 5000},
    ],
)
def test_release_with_bad_money_records_nothing(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, request_: dict[str, Any]
) -> None:
    """A release with bad money raises InvalidMoneyError before anything happens."""
    with pytest.raises(InvalidMoneyError):
        ledger.release_payment(request_)
    assert gateway.calls == 0
    assert ledger.history("es_1") == []


@pytest.mark.parametrize(
    "request_",
    [
        release(""),
        release("has space"),
        release("x" * 201),
        release(True),  # type: ignore[arg-type]
        {**release("es_1"), "unexpected": 1},
        {"provider_id": "prov_alice", "amount": {"amount": 1, "currency": "usd"}},
        "es_1",
        None,
    ],
)
def test_release_with_bad_fields_records_nothing(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, request_: Any
) -> None:
    """Bad ids, unknown fields and non-mappings raise InvalidRequestError."""
    with pytest.raises(InvalidRequestError):
        ledger.release_payment(request_)
    assert gateway.calls == 0


def test_int_and_uuid_ids_are_accepted_as_text(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Hosts keyed by int or UUID pass them as they are; the key uses their text."""
    import uuid

    service = uuid.UUID("00000000-0000-4000-8000-000000000042")
    ledger.release_payment(release(service))  # type: ignore[arg-type]
    ledger.release_payment(release(42))  # type: ignore[arg-type]
    keys = [t.idempotency_key for t in gateway.transfers]
    assert keys == [f"release_payment:{service}", "release_payment:42"]


def test_errors_share_one_root() -> None:
    """Every error the library raises on purpose is a PayoutLedgerError."""
    assert issubclass(InvalidMoneyError, InvalidRequestError)
    assert issubclass(InvalidRequestError, PayoutLedgerError)
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(ConfigurationError, PayoutLedgerError)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", {"PERSISTENCE_MODULE": "eventsourcing.popo"}),
        ("sqlite:///payouts.db", {"SQLITE_DBNAME": "payouts.db"}),
        ("sqlite:////var/tmp/payouts.db", {"SQLITE_DBNAME": "/var/tmp/payouts.db"}),  # noqa: S108
        (
            "postgresql://app:pw@db.internal:6543/ledger?schema=payouts",
            {
                "POSTGRES_HOST": "db.internal",
                "POSTGRES_PORT": "6543",
                "POSTGRES_USER": "app",
                "POSTGRES_PASSWORD": "pw",
                "POSTGRES_DBNAME": "ledger",
                "POSTGRES_SCHEMA": "payouts",
            },
        ),
        ("postgresql://postgres:@/postgres?host=/run/pg", {"POSTGRES_HOST": "/run/pg"}),
    ],
)
def test_store_urls_map_to_eventsourcing_settings(url: str, expected: dict[str, str]) -> None:
    """The store URL alone picks the store; nothing is read from os.environ."""
    env = store_environment(LedgerSettings(store_url=url))
    assert expected.items() <= env.items()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x/y",
        "sqlite://payouts.db",
        "sqlite:///:memory:",
        "sqlite:////no/such/folder/x.db",
        "postgresql://host-only",
        "postgresql://h/db?sslmode=require&bogus=1",
    ],
)
def test_unusable_store_urls_are_configuration_errors(url: str) -> None:
    """A store URL that cannot work is refused before any connection is made."""
    with pytest.raises((ConfigurationError, ValueError)):
        store_environment(LedgerSettings(store_url=url))


def test_the_environment_does_not_choose_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """PERSISTENCE_MODULE in os.environ is ignored: only the settings decide."""
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.sqlite")
    monkeypatch.setenv("SQLITE_DBNAME", str(tmp_path / "hijack.db"))
    from payout_ledger.testing import InMemoryProviderDirectory

    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=InMemoryProviderDirectory(),
        gateway=InMemoryTransferGateway(),
    ) as ledger:
        assert type(ledger.recorder).__module__ == "eventsourcing.popo"
    assert not (tmp_path / "hijack.db").exists()


def test_settings_read_the_environment_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LedgerSettings() reads PAYOUT_LEDGER_* variables; secrets stay hidden in repr."""
    monkeypatch.setenv("PAYOUT_LEDGER_STORE_URL", "memory://")
    monkeypatch.setenv("PAYOUT_LEDGER_STRIPE_API_KEY", "sk_test_secret_value")
    settings = LedgerSettings()
    assert settings.store_url == "memory://"
    assert "sk_test_secret_value" not in repr(settings)


def test_passwords_are_redacted_from_urls() -> None:
    """redact_url() hides a store URL's password."""
    assert redact_url("postgresql://app:s3cret@h:5432/db") == "postgresql://app:***@h:5432/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_gateway_is_required_when_stripe_is_enabled() -> None:
    """Stripe enabled and no gateway is a ConfigurationError, not a later crash."""
    from payout_ledger.testing import InMemoryProviderDirectory

    with pytest.raises(ConfigurationError):
        PayoutLedger(
            settings=LedgerSettings(store_url="memory://"),
            providers=InMemoryProviderDirectory(),
        )
