"""A small marketplace backend (FastAPI) that pays providers through payout_ledger.

It keeps its own tables (providers and event services; in memory here), builds
a ledger on an SQLite file, mounts the Stripe webhook endpoint at
``/stripe/webhooks/`` and releases a service's payment on
``POST /event-services/{id}/deliver``.

Run it against the fake Stripe server: ``.venv/bin/python examples/host_app/app.py``.
The tests are ``tests/webhooks/test_example_host_app.py``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from payout_ledger import (
    ConfigurationError,
    LedgerSettings,
    Money,
    PayoutLedger,
    ReleaseOutcome,
    ReleaseRequest,
    ServiceProvider,
    TransferGateway,
)
from payout_ledger.asgi import webhook_app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryTransferGateway

__all__ = ["EventService", "Marketplace", "build_gateway", "create_app"]


@dataclass
class EventService:
    """A row of the host's event_services table."""

    id: str
    provider_id: str
    amount: int
    currency: str
    customer_paid: bool = False
    payment_intent_id: str | None = None


class Marketplace:
    """The host's own data, and the callbacks the webhook endpoint calls.

    It is the ledger's provider directory too (``get_provider``). The callbacks
    are called at least once per event, so they are idempotent: they set state
    rather than add to it.
    """

    def __init__(
        self,
        providers: list[ServiceProvider] | None = None,
        services: list[EventService] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.providers = {p.id: p for p in providers or []}
        self.services = {s.id: s for s in services or []}
        self.payouts_enabled: dict[str, bool] = {}

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        """The ledger's ProviderDirectory port."""
        with self._lock:
            return self.providers.get(provider_id)

    def payment_succeeded(self, payment_intent: Mapping[str, Any]) -> None:
        """``payment_intent.succeeded``: the customer paid for an event service."""
        metadata = payment_intent.get("metadata") or {}
        service_id = metadata.get("event_service_id") if isinstance(metadata, Mapping) else None
        with self._lock:
            service = self.services.get(str(service_id))
            if service is not None:
                service.customer_paid = True
                service.payment_intent_id = str(payment_intent.get("id"))

    def account_updated(
        self, account_id: str, payouts_enabled: bool, account: Mapping[str, Any]
    ) -> None:
        """``account.updated``: a provider's connected account changed."""
        with self._lock:
            self.payouts_enabled[account_id] = payouts_enabled


def build_gateway(settings: LedgerSettings) -> TransferGateway:
    """Stripe when an API key is configured, else an in-memory gateway (development only)."""
    if settings.stripe_api_key is None:
        if settings.environment == "production":
            raise ConfigurationError("PAYOUT_LEDGER_STRIPE_API_KEY is required in production")
        return InMemoryTransferGateway()
    return StripeTransferGateway(
        settings.stripe_api_key.get_secret_value(),
        api_base=settings.stripe_api_base,
        timeout=settings.stripe_timeout,
        max_network_retries=settings.stripe_max_network_retries,
    )


_STATUS = {
    ReleaseOutcome.RELEASED: 200,
    ReleaseOutcome.ALREADY_RELEASED: 200,
    ReleaseOutcome.IN_PROGRESS: 202,
    ReleaseOutcome.OUTCOME_UNKNOWN: 202,
    ReleaseOutcome.NOT_EXECUTED: 202,
    ReleaseOutcome.ONBOARDING_REQUIRED: 409,
    ReleaseOutcome.FAILED: 409,
}


def create_app(
    settings: LedgerSettings,
    marketplace: Marketplace,
    gateway: TransferGateway | None = None,
) -> FastAPI:
    """The host application: the webhook endpoint and the delivery route."""
    ledger = PayoutLedger(
        settings=settings,
        providers=marketplace,
        gateway=gateway if gateway is not None else build_gateway(settings),
    )
    handler = WebhookHandler.from_settings(
        ledger,
        settings,
        on_payment_succeeded=marketplace.payment_succeeded,
        on_account_updated=marketplace.account_updated,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app = FastAPI(title="Marketplace (payout_ledger example)", lifespan=lifespan)
    app.state.ledger = ledger
    app.state.marketplace = marketplace
    # Register https://<host>/stripe/webhooks/ at Stripe, with the trailing slash.
    app.mount("/stripe/webhooks", webhook_app(handler))

    @app.post("/event-services/{event_service_id}/deliver")
    def deliver(event_service_id: str) -> JSONResponse:
        """The service was delivered: release its payment to the provider, once.

        A plain ``def``: FastAPI runs it in a worker thread, and the ledger blocks.
        """
        service = marketplace.services.get(event_service_id)
        if service is None:
            raise HTTPException(404, f"no event service {event_service_id!r}")
        if not service.customer_paid:
            raise HTTPException(409, "the customer's payment has not succeeded yet")
        result = ledger.release_payment(
            ReleaseRequest(
                event_service_id=service.id,
                provider_id=service.provider_id,
                amount=Money(service.amount, service.currency),
            )
        )
        return JSONResponse(
            {
                "event_service_id": result.event_service_id,
                "outcome": result.outcome.value,
                "transfer_id": result.transfer_id,
                "error_code": result.error_code,
            },
            status_code=_STATUS[result.outcome],
        )

    return app


def main() -> None:  # pragma: no cover - a manual demo
    """Serve the example on 127.0.0.1:8000 with the fake Stripe server."""
    import tempfile
    from pathlib import Path

    import uvicorn

    from payout_ledger.testing.fake_stripe import FakeStripe

    with FakeStripe() as fake, tempfile.TemporaryDirectory() as tmp:
        account = fake.client().v1.accounts.create({"type": "express"}).id
        marketplace = Marketplace(
            [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id=account)],
            [EventService(id="es_1", provider_id="prov_1", amount=5000, currency="usd")],
        )
        endpoint = fake.add_webhook_endpoint("http://127.0.0.1:8000/stripe/webhooks/")
        settings = LedgerSettings(
            store_url=f"sqlite:///{Path(tmp) / 'payouts.db'}",
            stripe_api_key=fake.api_key,
            stripe_api_base=fake.url,
            stripe_webhook_secrets=(endpoint.secret,),
        )
        # The customer pays a second after start-up; the webhook marks es_1 paid.
        pay = threading.Timer(
            1.0,
            fake.succeed_payment_intent,
            (5000, "usd"),
            {"metadata": {"event_service_id": "es_1"}},
        )
        pay.start()
        print(f"fake Stripe at {fake.url}; then try:")
        print("  curl -X POST http://127.0.0.1:8000/event-services/es_1/deliver")
        uvicorn.run(create_app(settings, marketplace), host="127.0.0.1", port=8000)


if __name__ == "__main__":  # pragma: no cover
    main()
