"""Payability: a connected account that cannot be paid is known, recorded and answered.

Gumroad's finding: transfers to accounts without the ``transfers`` capability
failed by the thousand, and nobody told the sellers. Here an ``account.updated``
(or a sync, or Stripe's own refusal) is recorded per account; a release to an
account known to be unpayable answers ``provider_action_required`` without a
claim or a request to Stripe, and the host is told when payability changes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from payout_ledger import (
    STRIPE_API_VERSION,
    AccountPayability,
    ConfigurationError,
    DestinationUnpayable,
    InvalidRequestError,
    LedgerSettings,
    PayabilitySource,
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
    TransferDeclined,
)
from payout_ledger.domain.account import ConnectedAccount
from payout_ledger.domain.stripe_events import StripeEventOutcome
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.conftest import LedgerFactory
from tests.support import release

ACCOUNT = "acct_alice"


def account_event(
    *,
    transfers: str | None = "active",
    payouts_enabled: bool = True,
    disabled_reason: str | None = None,
    created: int | None = None,
    event_id: str | None = None,
    account: str = ACCOUNT,
) -> dict[str, Any]:
    """A Connect ``account.updated`` as Stripe sends it."""
    obj: dict[str, Any] = {
        "id": account,
        "object": "account",
        "payouts_enabled": payouts_enabled,
        "capabilities": {} if transfers is None else {"transfers": transfers},
        "requirements": {"disabled_reason": disabled_reason},
    }
    return {
        "id": event_id or f"evt_acct_{time.monotonic_ns()}",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "account": account,
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "type": "account.updated",
        "data": {"object": obj},
    }


def deliver(ledger: PayoutLedger, event: dict[str, Any]) -> StripeEventOutcome:
    body = json.dumps(event).encode()
    return ledger.record_stripe_event(event=event, raw_body=body, headers={}).outcome


def reports(ledger: PayoutLedger, account: str = ACCOUNT) -> list[Any]:
    return list(ledger.events.get(ConnectedAccount.create_id(account)))


# account.updated


def test_an_account_updated_records_the_accounts_payability(ledger: PayoutLedger) -> None:
    """The report is saved with the event; the account reads as unpayable, and why."""
    event = account_event(transfers="inactive", payouts_enabled=False)

    assert deliver(ledger, event) is StripeEventOutcome.APPLIED

    payability = ledger.account_payability(ACCOUNT)
    assert payability is not None
    assert (payability.payable, payability.reason) == (False, "transfers_capability_inactive")
    assert payability.payouts_enabled is False
    assert payability.transfers == "inactive"
    assert payability.source is PayabilitySource.ACCOUNT_UPDATED
    assert payability.stripe_event_id == event["id"]
    assert ledger.has_stripe_event(event["id"])
    assert deliver(ledger, event) is StripeEventOutcome.DUPLICATE
    assert len(reports(ledger)) == 1


def test_payouts_disabled_alone_does_not_block_a_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The money waits in the connected balance: payable, and payouts_enabled shown."""
    deliver(ledger, account_event(payouts_enabled=False))

    payability = ledger.account_payability(ACCOUNT)
    assert payability is not None and payability.payable and payability.payouts_enabled is False
    assert ledger.release_payment(release("es_1")).outcome is ReleaseOutcome.RELEASED


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"transfers": "inactive"}, "transfers_capability_inactive"),
        ({"transfers": "pending"}, "transfers_capability_inactive"),
        ({"disabled_reason": "requirements.past_due"}, "requirements.past_due"),
    ],
)
def test_a_release_to_an_unpayable_account_records_nothing_and_sends_nothing(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    changes: dict[str, Any],
    reason: str,
) -> None:
    deliver(ledger, account_event(**changes))
    stored = ledger.recorder.max_notification_id()

    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.provider_action_required and not result.success
    assert result.error_code == reason
    assert ACCOUNT in (result.error_message or "")
    assert gateway.calls == 0 and gateway.list_calls == 0
    assert ledger.find_payout("es_1") is None
    assert ledger.recorder.max_notification_id() == stored


def test_an_older_account_updated_does_not_overwrite_a_newer_one(ledger: PayoutLedger) -> None:
    """Deliveries come in any order: Stripe's created decides."""
    now = int(time.time())
    deliver(ledger, account_event(transfers="active", created=now))
    outcome = deliver(ledger, account_event(transfers="inactive", created=now - 60))

    assert outcome is StripeEventOutcome.RECORDED  # kept for audit, no effect
    payability = ledger.account_payability(ACCOUNT)
    assert payability is not None and payability.payable
    assert len(reports(ledger)) == 1


def test_a_connected_accounts_other_events_still_change_nothing(ledger: PayoutLedger) -> None:
    """Only account.updated reports payability; no payout is touched."""
    event = account_event()
    event["type"] = "payment_intent.succeeded"
    event["data"]["object"] = {"id": "pi_1", "amount": 5000, "currency": "usd", "metadata": {}}

    assert deliver(ledger, event) is StripeEventOutcome.RECORDED
    assert ledger.captured_payment("pi_1") is None
    assert ledger.account_payability(ACCOUNT) is None


# Stripe's refusal


def test_stripes_refusal_records_the_failure_and_the_accounts_payability_together(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.set_account(ACCOUNT, transfers="inactive")

    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "transfers_capability_inactive"
    assert result.attempt == 1
    payout = ledger.get_payout("es_1")
    assert payout.status is PayoutStatus.FAILED
    assert payout.failure_code == "insufficient_capabilities_for_transfer"
    payability = ledger.account_payability(ACCOUNT)
    assert payability is not None and not payability.payable
    assert payability.source is PayabilitySource.TRANSFER_REFUSED
    # The next release knows it: nothing sent.
    calls = gateway.calls
    again = ledger.release_payment(release("es_1"))
    assert again.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert gateway.calls == calls
    assert ledger.get_payout("es_1").attempt == 1


def test_once_payable_again_a_release_starts_the_next_attempt_with_a_new_key(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.set_account(ACCOUNT, transfers="inactive")
    assert ledger.release_payment(release("es_1")).provider_action_required

    gateway.set_account(ACCOUNT, transfers="active")
    deliver(ledger, account_event(transfers="active", created=int(time.time()) + 1))
    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.RELEASED
    assert result.attempt == 2
    [transfer] = gateway.transfers
    assert transfer.idempotency_key == "release_payment.attempt2:es_1"


def test_a_deleted_destination_is_no_such_destination(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.delete_account(ACCOUNT)

    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "no_such_destination"
    payability = ledger.account_payability(ACCOUNT)
    assert payability is not None and payability.reason == "no_such_destination"


def test_other_refusals_are_still_failures(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.decline_next()
    result = ledger.release_payment(release("es_1"))
    assert result.outcome is ReleaseOutcome.FAILED
    assert ledger.account_payability(ACCOUNT) is None


def test_a_paid_payout_is_still_already_released_when_the_account_is_unpayable(
    ledger: PayoutLedger,
) -> None:
    assert ledger.release_payment(release("es_1")).success
    deliver(ledger, account_event(transfers="inactive"))
    assert ledger.release_payment(release("es_1")).outcome is ReleaseOutcome.ALREADY_RELEASED


def test_destination_unpayable_is_a_definite_refusal() -> None:
    error = DestinationUnpayable("x", reason="no_such_destination", account_id=ACCOUNT)
    assert isinstance(error, TransferDeclined)
    assert (error.reason, error.account_id) == ("no_such_destination", ACCOUNT)


# sync_account


def test_sync_account_asks_stripe_and_records_the_answer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    deliver(ledger, account_event(transfers="inactive"))
    gateway.set_account(ACCOUNT, transfers="active", payouts_enabled=False)

    synced = ledger.sync_account(ACCOUNT)

    assert gateway.account_calls == 1
    assert synced.payable and synced.source is PayabilitySource.SYNC
    assert synced.payouts_enabled is False
    assert ledger.account_payability(ACCOUNT) == synced
    assert ledger.release_payment(release("es_1")).success
    # Unchanged: nothing more recorded.
    count = len(reports(ledger))
    ledger.sync_account(ACCOUNT)
    assert len(reports(ledger)) == count


def test_sync_account_records_a_deleted_account_as_no_such_destination(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.delete_account(ACCOUNT)
    synced = ledger.sync_account(ACCOUNT)
    assert (synced.payable, synced.reason) == (False, "no_such_destination")


def test_sync_account_needs_a_gateway_that_retrieves_accounts(
    make_ledger: LedgerFactory,
) -> None:
    class TransfersOnly:
        livemode = False

        def create_transfer(self, request: Any) -> Any:
            raise AssertionError("not called")

        def list_transfers(self, **filters: Any) -> list[Any]:
            return []

    ledger = make_ledger(gateway=TransfersOnly())
    with pytest.raises(ConfigurationError, match="retrieve_account"):
        ledger.sync_account(ACCOUNT)
    with pytest.raises(InvalidRequestError):
        ledger.sync_account("not an account")
    assert ledger.account_payability(ACCOUNT) is None


# The host's callback


def test_the_host_is_told_when_payability_changes(
    store_url: str, providers: InMemoryProviderDirectory, gateway: InMemoryTransferGateway
) -> None:
    told: list[AccountPayability] = []
    with PayoutLedger(
        settings=LedgerSettings(store_url=store_url),
        providers=providers,
        gateway=gateway,
        on_payability_changed=told.append,
    ) as ledger:
        now = int(time.time())
        deliver(ledger, account_event(transfers="inactive", created=now))
        deliver(ledger, account_event(transfers="inactive", created=now + 1))  # unchanged
        deliver(ledger, account_event(transfers="active", created=now + 2))

    assert [(p.payable, p.reason) for p in told] == [
        (False, "transfers_capability_inactive"),
        (True, None),
    ]


def test_a_failing_callback_is_logged_and_loses_nothing(
    store_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(payability: AccountPayability) -> None:
        raise RuntimeError("host database unavailable")

    gateway.set_account(ACCOUNT, transfers="inactive")
    with PayoutLedger(
        settings=LedgerSettings(store_url=store_url),
        providers=providers,
        gateway=gateway,
        on_payability_changed=broken,
    ) as ledger:
        with caplog.at_level(logging.ERROR, logger="payout_ledger"):
            result = ledger.release_payment(release("es_1"))

        assert result.provider_action_required
        assert ledger.get_payout("es_1").status is PayoutStatus.FAILED
        payability = ledger.account_payability(ACCOUNT)
        assert payability is not None and not payability.payable
    assert "on_payability_changed failed for acct_alice" in caplog.text
