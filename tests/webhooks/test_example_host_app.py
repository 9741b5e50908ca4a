"""The example host application (examples/host_app/app.py), over real HTTP."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from pydantic import SecretStr

from payout_ledger import LedgerSettings, ServiceProvider
from payout_ledger.testing.fake_stripe import FakeStripe

from .conftest import SECRET, encode, make_event, payment_intent, serve, sign

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "host_app" / "app.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("payout_ledger_example_host_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


def test_example_pays_a_delivered_service_once_through_stripe_and_its_webhooks(
    tmp_path: Path, client: httpx.Client
) -> None:
    """Customer pays (webhook), service delivered (transfer), delivered again (no transfer)."""
    with FakeStripe(api_key="sk_live_fake_platform") as fake:  # production is live
        account = fake.client().v1.accounts.create({"type": "express"}).id
        marketplace = example.Marketplace(
            [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id=account)],
            [example.EventService(id="es_1", provider_id="prov_1", amount=5000, currency="usd")],
        )
        settings = LedgerSettings(
            store_url=f"sqlite:///{tmp_path / 'host.db'}",
            environment="production",
            stripe_api_key=SecretStr(fake.api_key),
            stripe_api_base=fake.url,
            stripe_webhook_secrets=(SecretStr(SECRET),),
        )
        app = example.create_app(settings, marketplace)
        try:
            with serve(app) as base:
                fake.add_webhook_endpoint(f"{base}/stripe/webhooks/", SECRET)
                deliver = f"{base}/event-services/es_1/deliver"

                assert client.post(deliver).status_code == 409  # not paid yet
                intent = fake.succeed_payment_intent(
                    5000, "usd", metadata={"event_service_id": "es_1"}
                )
                fake.flush_webhooks()
                assert marketplace.services["es_1"].customer_paid
                assert marketplace.services["es_1"].payment_intent_id == intent["id"]

                first = client.post(deliver)
                second = client.post(deliver)
                fake.flush_webhooks()
                assert client.post(f"{base}/event-services/es_404/deliver").status_code == 404
            assert app.state.ledger.captured_payment(intent["id"]) is not None
        finally:
            app.state.ledger.close()
        transfers = fake.transfers()
        deliveries = fake.webhook_deliveries

    assert first.status_code == 200
    assert first.json()["outcome"] == "released"
    assert second.status_code == 200
    assert second.json()["outcome"] == "already_released"
    assert [t["id"] for t in transfers] == [first.json()["transfer_id"]]
    assert transfers[0]["destination"] == account
    assert transfers[0]["metadata"]["event_service_id"] == "es_1"
    assert {d.event_type for d in deliveries} >= {"payment_intent.succeeded", "transfer.created"}
    assert all(d.status_code == 200 for d in deliveries)


def test_example_rejects_unsigned_webhooks_and_records_account_updates(
    tmp_path: Path, client: httpx.Client
) -> None:
    """The example's endpoint refuses unsigned posts and passes account.updated to the host."""
    marketplace = example.Marketplace()
    settings = LedgerSettings(
        store_url=f"sqlite:///{tmp_path / 'host.db'}",
        environment="production",
        stripe_api_key=SecretStr("sk_live_not_called"),
        stripe_webhook_secrets=(SecretStr(SECRET),),
    )
    app = example.create_app(settings, marketplace)
    event = make_event("account.updated", {"id": "acct_9", "payouts_enabled": True})
    event["livemode"] = True
    body = encode(event)
    try:
        with serve(app) as base:
            url = f"{base}/stripe/webhooks/"
            unsigned = client.post(url, content=body)
            signed = client.post(url, content=body, headers={"Stripe-Signature": sign(body)})
        assert app.state.ledger.has_stripe_event(event["id"])
    finally:
        app.state.ledger.close()

    assert unsigned.status_code == 403
    assert signed.status_code == 200
    assert marketplace.payouts_enabled == {"acct_9": True}


def test_example_without_a_stripe_key_uses_the_in_memory_gateway(
    tmp_path: Path, client: httpx.Client
) -> None:
    """In development without keys the example releases through InMemoryTransferGateway."""
    marketplace = example.Marketplace(
        [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id="acct_1")],
        [example.EventService(id="es_1", provider_id="prov_1", amount=700, currency="eur")],
    )
    settings = LedgerSettings(store_url=f"sqlite:///{tmp_path / 'dev.db'}")
    app = example.create_app(settings, marketplace)
    paid = encode(make_event("payment_intent.succeeded", payment_intent(event_service_id="es_1")))
    try:
        with serve(app) as base:
            assert client.post(f"{base}/stripe/webhooks/", content=paid).status_code == 200
            response = client.post(f"{base}/event-services/es_1/deliver")
    finally:
        app.state.ledger.close()

    assert response.status_code == 200
    assert response.json()["transfer_id"].startswith("tr_mem_")
