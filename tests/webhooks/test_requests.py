"""Bad input over HTTP: malformed bodies, sizes, methods and where the endpoint is mounted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

from payout_ledger import PayoutLedger
from payout_ledger.asgi import webhook_app, webhook_endpoint
from payout_ledger.stripe.webhooks import WebhookHandler

from .conftest import SECRET, Site, SiteFactory, encode, make_event, payment_intent, serve, sign

NOT_EVENTS = [
    (b"{not json", "malformed_json"),
    (b"", "malformed_json"),
    (b'{"id": "evt_1", "type": "x", "data": {"object": {}}', "malformed_json"),
    (b'{"id": "evt_1", "type": "x", "data": {"object": {"a": NaN}}}', "malformed_json"),
    (b"[" * 5000 + b"]" * 5000, "malformed_json"),
    (b'"just a string"', "not_an_event"),
    (b"[]", "not_an_event"),
    (b'{"type": "x", "data": {"object": {}}}', "not_an_event"),
    (b'{"id": "evt_1", "data": {"object": {}}}', "not_an_event"),
    (b'{"id": "evt_1", "type": "x", "data": {}}', "not_an_event"),
    (b'{"id": "evt_1", "type": "x", "data": {"object": []}}', "not_an_event"),
    (b'{"id": 7, "type": "x", "data": {"object": {}}}', "not_an_event"),
    (b'{"id": "evt 1\\n", "type": "x", "data": {"object": {}}}', "not_an_event"),
    (b'{"id": "evt_1", "type": "x", "account": 3, "data": {"object": {}}}', "not_an_event"),
    (
        b'{"id": "evt_1", "type": "x", "data": {"object": {"a": '
        + b"[" * 100
        + b"]" * 100
        + b"}}}",
        "not_an_event",
    ),
]


def test_signed_body_that_is_not_a_stripe_event_gets_400(make_site: SiteFactory) -> None:
    """Correctly signed malformed JSON, or JSON that is not an event, is a 400."""
    site = make_site()
    before = site.stored_count()

    for body, error in NOT_EVENTS:
        response = site.post(body, sign(body))
        assert response.status_code == 400, body[:80]
        assert response.json() == {"error": error}, body[:80]

    assert site.stored_count() == before
    assert site.callbacks.count == 0


def test_malformed_json_without_a_secret_outside_production_gets_400(
    make_site: SiteFactory,
) -> None:
    """Without verification, malformed JSON or a non-UTF-8 body is still a 400, not a 500."""
    site = make_site(secrets=(), environment="development")
    assert site.post(b"{oops").status_code == 400
    assert site.post(b"\xff\xfe{}").status_code == 400


def test_body_that_is_not_utf8_cannot_be_verified_and_gets_403(make_site: SiteFactory) -> None:
    """Stripe signs UTF-8 JSON: a body that is not UTF-8 cannot carry a valid signature."""
    site = make_site()
    assert site.post(b'{"id": "\xff"}', "t=1,v1=00").status_code == 403


def test_body_over_the_size_limit_gets_413_without_being_processed(make_site: SiteFactory) -> None:
    """A body over max_body_bytes is a 413, announced by Content-Length or streamed chunked."""
    site = make_site(max_body_bytes=2048)
    event = make_event("payment_intent.succeeded", payment_intent(padding="x" * 4000))
    body = encode(event)
    before = site.stored_count()

    announced = site.post(body, sign(body))
    chunked = site.client.post(
        site.url,
        content=iter([body[:1000], body[1000:2000], body[2000:]]),
        headers={"stripe-signature": sign(body)},
    )

    assert (announced.status_code, chunked.status_code) == (413, 413)
    assert chunked.json() == {"error": "payload_too_large"}
    assert site.stored_count() == before
    small = make_event("payment_intent.succeeded", payment_intent())
    assert site.deliver(small).status_code == 200


def test_chunked_body_within_the_limit_is_read_whole(make_site: SiteFactory) -> None:
    """A chunked body is reassembled byte for byte before its signature is checked."""
    site = make_site()
    body = encode(make_event("payment_intent.succeeded", payment_intent()))
    parts = [body[i : i + 7] for i in range(0, len(body), 7)]

    response = site.client.post(
        site.url, content=iter(parts), headers={"stripe-signature": sign(body)}
    )

    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"


def test_only_post_is_served(site: Site) -> None:
    """GET and PUT on the endpoint are 405; nothing else is mounted."""
    assert site.client.get(site.url).status_code == 405
    assert site.client.put(site.url, content=b"{}").status_code == 405
    assert site.client.post(site.url + "other", content=b"{}").status_code == 404


@pytest.fixture
def handler(ledger: PayoutLedger) -> WebhookHandler:
    return WebhookHandler(ledger, secrets=[SECRET], environment="production")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


def _signed_event() -> tuple[bytes, dict[str, str]]:
    body = encode(make_event("account.updated", {"id": "acct_1", "payouts_enabled": True}))
    return body, {"stripe-signature": sign(body)}


def test_mounted_in_fastapi_the_endpoint_answers_under_its_prefix(
    handler: WebhookHandler, client: httpx.Client, ledger: PayoutLedger
) -> None:
    """FastAPI app.mount('/stripe/webhooks', ...) serves POST /stripe/webhooks/."""
    app = FastAPI()
    app.mount("/stripe/webhooks", webhook_app(handler))
    body, headers = _signed_event()
    with serve(app) as base:
        response = client.post(f"{base}/stripe/webhooks/", content=body, headers=headers)
        bare = client.post(f"{base}/stripe/webhooks", content=body, headers=headers)
    assert response.status_code == 200
    assert ledger.has_stripe_event(json.loads(body)["id"])
    # Documented: without the slash the host's router redirects (Stripe counts it a failure).
    assert bare.status_code == 307


def test_as_a_route_the_endpoint_answers_at_an_exact_path(
    handler: WebhookHandler, client: httpx.Client
) -> None:
    """webhook_endpoint serves a path without a trailing slash, in FastAPI and Starlette."""
    fastapi_app = FastAPI()
    fastapi_app.add_route("/stripe/webhooks", webhook_endpoint(handler), methods=["POST"])
    starlette_app = Starlette(routes=[Mount("/hooks", app=webhook_app(handler))])
    with serve(fastapi_app) as fastapi_base, serve(starlette_app) as starlette_base:
        body, headers = _signed_event()
        assert (
            client.post(
                f"{fastapi_base}/stripe/webhooks", content=body, headers=headers
            ).status_code
            == 200
        )
        body, headers = _signed_event()
        assert (
            client.post(f"{starlette_base}/hooks/", content=body, headers=headers).status_code
            == 200
        )
        assert client.post(f"{starlette_base}/hooks/", content=body).status_code == 403
