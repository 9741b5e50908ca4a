"""Events delivered as signed webhooks to a real local receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe

SECRET = "whsec_test_secret"


class Receiver:
    """A tiny webhook receiver answering scripted statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    receiver.received.append((self.headers["Stripe-Signature"], body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(webhook_retry_delay=0.01) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def test_each_event_is_posted_with_a_signature_the_sdk_verifies(
    fake: FakeStripe, receiver: Receiver
) -> None:
    """Webhook payloads verify with stripe.Webhook.construct_event and the secret."""
    fake.add_webhook_endpoint(receiver.url, SECRET)
    client = fake.client()
    account = client.v1.accounts.create({"type": "express"})
    made = client.v1.transfers.create({"amount": 900, "currency": "usd", "destination": account.id})
    fake.succeed_payment_intent(1500, "usd", metadata={"booking": "b-9"})
    fake.flush_webhooks(timeout=5)

    events = [
        stripe.Webhook.construct_event(body.decode(), header, SECRET, tolerance=300)
        for header, body in receiver.received
    ]
    assert [e.type for e in events] == [
        "transfer.created",
        "payment_intent.created",
        "payment_intent.succeeded",
    ]
    assert events[0].data.object.id == made.id
    assert events[2].data.object.metadata.to_dict() == {"booking": "b-9"}
    assert [e.id for e in events] == [e["id"] for e in fake.events()]
    assert all(e.pending_webhooks == 1 for e in events)
    assert [(d.event_id, d.status_code) for d in fake.webhook_deliveries] == [
        (e.id, 200) for e in events
    ]


def test_a_payload_signed_with_another_secret_fails_verification(
    fake: FakeStripe, receiver: Receiver
) -> None:
    """The signature is a real HMAC: the wrong secret does not verify."""
    fake.add_webhook_endpoint(receiver.url, SECRET)
    fake.succeed_payment_intent(100, "usd")
    fake.flush_webhooks(timeout=5)
    header, body = receiver.received[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), header, "whsec_other", tolerance=300)
    assert json.loads(body)["object"] == "event"


def test_connect_events_name_the_connected_account(fake: FakeStripe, receiver: Receiver) -> None:
    """account.updated carries the account id and the previous attributes."""
    fake.add_webhook_endpoint(receiver.url, SECRET, enabled_events=["account.updated"])
    account = fake.client().v1.accounts.create({"type": "express"})
    fake.set_payouts_enabled(account.id, False)
    fake.flush_webhooks(timeout=5)
    [(header, body)] = receiver.received
    event = stripe.Webhook.construct_event(body.decode(), header, SECRET, tolerance=300)
    assert (event.type, event.account) == ("account.updated", account.id)
    assert event.data.previous_attributes.payouts_enabled is True


def test_failed_deliveries_are_retried_a_bounded_number_of_times(
    fake: FakeStripe,
) -> None:
    """A receiver answering 500 twice gets the event on the third attempt."""
    flaky = Receiver(statuses=[500, 500])
    try:
        fake.add_webhook_endpoint(flaky.url, SECRET)
        fake.succeed_payment_intent(100, "usd")
        fake.flush_webhooks(timeout=5)
    finally:
        flaky.close()
    first_event = fake.events()[0]["id"]
    attempts = [d for d in fake.webhook_deliveries if d.event_id == first_event]
    assert [(d.attempt, d.status_code) for d in attempts] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]


def test_an_unreachable_receiver_is_given_up_after_the_last_attempt(
    fake: FakeStripe,
) -> None:
    """Connection failures are recorded without a status, up to the attempt limit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fake.add_webhook_endpoint(f"http://127.0.0.1:{port}/gone", SECRET)
    fake.succeed_payment_intent(100, "usd", metadata={})
    fake.flush_webhooks(timeout=5)
    deliveries = fake.webhook_deliveries
    assert len(deliveries) == 2 * 3  # two events, three attempts each
    assert all(d.status_code is None and d.error for d in deliveries)


def test_webhook_urls_off_this_machine_are_refused(fake: FakeStripe) -> None:
    """Only loopback receivers are allowed; a secret is generated when omitted."""
    with pytest.raises(ValueError, match="loopback"):
        fake.add_webhook_endpoint("https://example.com/hooks")
    endpoint = fake.add_webhook_endpoint("http://localhost:9/hooks")
    assert endpoint.secret.startswith("whsec_")
