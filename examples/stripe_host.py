"""A host wired to the real Stripe gateway, run against the fake Stripe server.

Run it: ``.venv/bin/python examples/stripe_host.py``. In production the only
difference is the gateway's arguments: a live secret key and no ``api_base``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from payout_ledger import LedgerSettings, Money, PayoutLedger, ReleaseRequest, ServiceProvider
from payout_ledger.service.reconcile import reconcile
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults


def main() -> None:
    with FakeStripe() as stripe_server, tempfile.TemporaryDirectory() as tmp:
        # The provider onboarded: Stripe gave them a connected account.
        account = stripe_server.client().v1.accounts.create({"type": "express"}).id
        providers = InMemoryProviderDirectory(
            [ServiceProvider(id="prov_7", user_id="user_7", stripe_account_id=account)]
        )
        gateway = StripeTransferGateway(
            stripe_server.api_key, api_base=stripe_server.url, max_network_retries=0
        )
        settings = LedgerSettings(store_url=f"sqlite:///{Path(tmp) / 'payouts.db'}")
        with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
            request = ReleaseRequest(
                event_service_id="es_42", provider_id="prov_7", amount=Money(5000, "usd")
            )
            print("first release:", ledger.release_payment(request).outcome.value)
            print("second release:", ledger.release_payment(request).outcome.value)

            # Stripe commits a transfer but the response never arrives.
            stripe_server.inject(faults.drop_after_commit())
            lost = request.model_copy(update={"event_service_id": "es_43"})
            print("lost response:", ledger.release_payment(lost).outcome.value)
            for result in ledger.resume_in_flight():
                print("resumed:", result.event_service_id, result.outcome.value, result.detail)

            report = reconcile(ledger, event_service_ids=["es_42", "es_43"])
            print("transfers at Stripe:", len(stripe_server.transfers()))
            print("books agree with Stripe:", report.ok)


if __name__ == "__main__":
    main()
