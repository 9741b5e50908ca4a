"""What a verified event does: callbacks, duplicates, ordering and failures."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from payout_ledger import PayoutLedger, ServiceProvider
from payout_ledger.domain.payout import PayoutStatus
from payout_ledger.domain.stripe_events import StripeEventReceipt
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults

from .conftest import SECRET, SiteFactory, encode, make_event, payment_intent, sign


def release(event_service_id: str, provider_id: str, amount: int) -> dict[str, Any]:
    return {
        "event_service_id": event_service_id,
        "provider_id": provider_id,
        "amount": {"amount": amount, "currency": "usd"},
    }


def test_duplicate_delivery_gets_200_and_has_no_second_effect_or_callback(
    make_site: SiteFactory,
) -> None:
    """The same event delivered again answers 200 duplicate and changes nothing."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)

    first = site.post(body, sign(body))
    assert first.status_code == 200
    assert first.json()["outcome"] == "applied"
    stored = site.stored_count()

    for _ in range(3):
        again = site.post(body, sign(body))  # a retry is signed afresh
        assert again.status_code == 200
        assert again.json() == {
            "received": True,
            "duplicate": True,
            "event_id": event["id"],
            "type": "payment_intent.succeeded",
        }
    assert site.stored_count() == stored
    assert len(site.callbacks.payments) == 1


def test_concurrent_deliveries_of_one_event_are_recorded_once(make_site: SiteFactory) -> None:
    """Eight simultaneous deliveries of one event all get 200 and one is applied."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)
    before = site.stored_count()

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: site.post(body, sign(body)), range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    outcomes = sorted(r.json().get("outcome", "duplicate") for r in responses)
    assert outcomes == ["applied"] + ["duplicate"] * 7
    # The store's mode (recorded with its first money event), the event's record
    # and the captured payment.
    assert site.stored_count() == before + 3
    assert 1 <= len(site.callbacks.payments) <= 8  # callbacks are at least once


def test_unknown_event_types_are_recorded_and_otherwise_ignored(make_site: SiteFactory) -> None:
    """An event type the ledger does not know gets 200, is kept once and calls nothing."""
    site = make_site()
    event = make_event("charge.dispute.created", {"id": "dp_1", "amount": 100})

    response = site.deliver(event)

    assert response.status_code == 200
    assert response.json()["outcome"] == "recorded"
    assert site.ledger.has_stripe_event(event["id"])
    assert site.callbacks.count == 0
    assert site.deliver(event).json()["duplicate"] is True


def test_account_updated_calls_the_host_with_the_connect_account_and_payouts_enabled(
    make_site: SiteFactory,
) -> None:
    """account.updated passes event.account (Connect) or else data.object.id to the host."""
    site = make_site()
    with FakeStripe() as fake:
        account = fake.client().v1.accounts.create({"type": "express"})
        fake.add_webhook_endpoint(site.url, SECRET, enabled_events=["account.updated"])
        fake.set_payouts_enabled(account.id, False)
        fake.set_payouts_enabled(account.id, True)
        fake.flush_webhooks()
        statuses = [d.status_code for d in fake.webhook_deliveries]

    assert statuses == [200, 200]
    assert [(a, enabled) for a, enabled, _ in site.callbacks.accounts] == [
        (account.id, False),
        (account.id, True),
    ]
    platform_event = make_event("account.updated", {"id": "acct_platform"})
    assert site.deliver(platform_event).status_code == 200
    assert site.callbacks.accounts[-1][:2] == ("acct_platform", False)
    nameless = make_event("account.updated", {"object": "account"})
    assert site.deliver(nameless).status_code == 400
    assert not site.ledger.has_stripe_event(nameless["id"])


def test_failing_host_callback_answers_500_records_nothing_and_runs_again_on_retry(
    make_site: SiteFactory,
) -> None:
    """If the host callback raises, the answer is 500 and Stripe's retry calls it again."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)
    before = site.stored_count()
    site.callbacks.fail = True

    failed = site.post(body, sign(body))

    assert failed.status_code == 500
    assert failed.json() == {"error": "callback_failed"}
    assert site.stored_count() == before
    assert not site.ledger.has_stripe_event(event["id"])

    site.callbacks.fail = False
    retried = site.post(body, sign(body))
    assert retried.status_code == 200
    assert retried.json()["outcome"] == "applied"
    assert len(site.callbacks.payments) == 1


class _BrokenStore:
    """A ledger whose store fails on writes (or on reads too)."""

    def __init__(self, ledger: PayoutLedger, *, reads_fail: bool) -> None:
        self._ledger = ledger
        self._reads_fail = reads_fail

    def has_stripe_event(self, event_id: str) -> bool:
        if self._reads_fail:
            raise OSError("database is unreachable")
        return self._ledger.has_stripe_event(event_id)

    def record_stripe_event(
        self, *, event: Mapping[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> StripeEventReceipt:
        raise OSError("disk full")


def test_store_failure_answers_500_so_that_stripe_retries(
    make_site: SiteFactory, ledger: PayoutLedger
) -> None:
    """A failing lookup or write is a 500; nothing is recorded."""
    event = make_event("account.updated", {"id": "acct_1", "payouts_enabled": True})
    for reads_fail in (True, False):
        site = make_site(sink=_BrokenStore(ledger, reads_fail=reads_fail))
        response = site.deliver(event)
        assert response.status_code == 500
        assert response.json() == {"error": "store_failed"}
        assert len(site.callbacks.accounts) == (0 if reads_fail else 1)
    assert not ledger.has_stripe_event(event["id"])


def test_event_the_ledger_rejects_as_invalid_answers_400(make_site: SiteFactory) -> None:
    """A signed payment_intent.succeeded without an amount is refused by the ledger: 400."""
    site = make_site()
    event = make_event("payment_intent.succeeded", {"id": "pi_1", "currency": "usd"})

    response = site.deliver(event)

    assert response.status_code == 400
    assert response.json() == {"error": "invalid_event"}
    assert not site.ledger.has_stripe_event(event["id"])


def test_signed_event_with_malformed_fields_the_ledger_reads_never_gets_500(
    make_site: SiteFactory,
) -> None:
    """Odd metadata or ids in a signed event are bad input: 200 or 400, never a 500."""
    site = make_site()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("payment_intent.succeeded", {"id": "pi_1", "metadata": [1]}),
        ("transfer.created", {"id": "tr_1", "metadata": "abc"}),
        ("transfer.reversed", {"id": [], "metadata": [None]}),
    ]
    for event_type, fields in cases:
        obj = {"amount": 100, "currency": "usd", **fields}
        response = site.deliver(make_event(event_type, obj))
        assert response.status_code in {200, 400}, (event_type, fields, response.text)


def test_out_of_order_transfer_events_all_get_200_and_settle_the_payout(
    make_ledger: Any, make_site: SiteFactory
) -> None:
    """transfer.reversed before transfer.created: both 200, the lost transfer is settled."""
    with FakeStripe() as fake:
        account = fake.client().v1.accounts.create({"type": "express"})
        providers = InMemoryProviderDirectory(
            [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id=account.id)]
        )
        gateway = StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0)
        ledger = make_ledger(providers=providers, gateway=gateway)
        site = make_site(sink=ledger)

        # Stripe makes the transfer but the response is lost: the payout stays in flight.
        fake.inject(faults.drop_after_commit(), path="/v1/transfers")
        result = ledger.release_payment(release("es_ooo", "prov_1", 4000))
        assert result.in_flight
        (transfer,) = fake.transfers()
        fake.client().v1.transfers.reversals.create(transfer["id"], {"amount": 1500})
        by_type = {e["type"]: e for e in fake.events() if e["type"].startswith("transfer.")}

    reversed_first = site.deliver(by_type["transfer.reversed"])
    created_late = site.deliver(by_type["transfer.created"])

    assert (reversed_first.status_code, created_late.status_code) == (200, 200)
    assert reversed_first.json()["outcome"] == "applied"
    assert created_late.json()["outcome"] == "recorded"
    payout = ledger.get_payout("es_ooo")
    assert payout.transfer_id == transfer["id"]
    assert payout.status is PayoutStatus.RELEASED
    assert payout.amount_reversed == 1500
    assert ledger.release_payment(release("es_ooo", "prov_1", 4000)).already_released
    assert len(fake.transfers()) == 1
