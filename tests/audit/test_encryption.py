"""Encryption at rest with eventsourcing's AES-GCM cipher (``LedgerSettings.cipher_key``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from eventsourcing.cryptography import AESCipher
from pydantic import SecretStr

from payout_ledger import ConfigurationError, LedgerSettings, PayoutLedger
from payout_ledger.adapters.projection import run_projection
from payout_ledger.audit import audit_ledger, verify_ledger
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import run_scenario
from tests.audit.support import RawStore
from tests.support import ALICE

ACCOUNT = ALICE.stripe_account_id or ""


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """Encryption at rest is about bytes on disk: SQLite and PostgreSQL."""
    return durable_store_url


@pytest.fixture
def key() -> str:
    return AESCipher.create_key(32)


@pytest.fixture
def encrypted(
    store_url: str,
    key: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
) -> Iterator[PayoutLedger]:
    """A ledger that encrypts, with the scenario already written."""
    settings = LedgerSettings(store_url=store_url, cipher_key=SecretStr(key))
    with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
        run_scenario(ledger, gateway)
        yield ledger


def open_ledger(store_url: str, key: str | None) -> PayoutLedger:
    settings = LedgerSettings(
        store_url=store_url, cipher_key=SecretStr(key) if key is not None else None
    )
    return PayoutLedger(
        settings=settings,
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=InMemoryTransferGateway(),
    )


def test_without_a_key_the_destination_account_is_stored_in_clear(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, store_url: str
) -> None:
    """The control: plain JSON events show the account id (so the next test can fail)."""
    run_scenario(ledger, gateway)

    assert any(ACCOUNT.encode() in row.state for row in RawStore(store_url).rows())


def test_stored_bytes_do_not_contain_the_destination_account(
    encrypted: PayoutLedger, store_url: str
) -> None:
    """No stored state carries the account, payee or service id in clear, nor is it JSON."""
    rows = RawStore(store_url).rows()
    assert rows

    secrets = [ACCOUNT, ALICE.user_id, "es_paid", "release_payment"]
    for row in rows:
        for secret in secrets:
            assert secret.encode() not in row.state
        with pytest.raises((UnicodeDecodeError, json.JSONDecodeError)):
            json.loads(row.state)


def test_an_encrypted_ledger_replays_audits_verifies_and_projects(
    encrypted: PayoutLedger, store_url: str, key: str
) -> None:
    """Everything that reads the log works through the cipher, in a second process too."""
    encrypted.seal()
    with open_ledger(store_url, key) as reader:
        assert reader.get_payout("es_paid").destination_account == ACCOUNT
        report = audit_ledger(reader)
        assert report.ok and report.payouts > 0
        assert audit_ledger(reader, decode="mapper") == report
        assert verify_ledger(reader).ok
        assert run_projection(reader).events > 0


def test_the_wrong_key_is_refused_at_start_with_a_clear_error(
    encrypted: PayoutLedger, store_url: str
) -> None:
    """A process with another key cannot start, so it never writes events nobody can read."""
    with pytest.raises(ConfigurationError, match="cipher_key is wrong"):
        open_ledger(store_url, AESCipher.create_key(32))


def test_no_key_on_an_encrypted_store_is_refused_with_a_clear_error(
    encrypted: PayoutLedger, store_url: str
) -> None:
    """Without a key the events are not JSON: the error says to set cipher_key."""
    with pytest.raises(ConfigurationError, match="set cipher_key"):
        open_ledger(store_url, None)


def test_a_key_on_a_plain_store_is_refused(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, store_url: str
) -> None:
    """Turning encryption on over plain events would mix two formats: refused."""
    run_scenario(ledger, gateway)

    with pytest.raises(ConfigurationError, match="written without encryption"):
        open_ledger(store_url, AESCipher.create_key(16))


@pytest.mark.parametrize("bad", ["not base64!", "c2hvcnQ="], ids=["not-base64", "too-short"])
def test_a_malformed_key_is_a_configuration_error(bad: str, store_url: str) -> None:
    """A key that is not base64 of 16, 24 or 32 bytes is refused before anything is read."""
    with pytest.raises(ConfigurationError, match="cipher_key"):
        open_ledger(store_url, bad)


def test_the_key_never_appears_in_settings_output(key: str, store_url: str) -> None:
    """The key is a secret: repr and model dumps hide it."""
    settings = LedgerSettings(store_url=store_url, cipher_key=SecretStr(key))

    assert key not in repr(settings)
    assert key not in str(settings.model_dump())
