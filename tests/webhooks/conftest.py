"""Fixtures for the webhook tests: a real ledger behind a real HTTP server.

Every test that takes ``site`` or ``make_site`` runs twice: on a ``memory://``
ledger and on an SQLite file (``store_url`` overrides the suite's fixture).
"""

from __future__ import annotations

import itertools
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from payout_ledger import STRIPE_API_VERSION, PayoutLedger
from payout_ledger.asgi import webhook_app
from payout_ledger.stripe.webhooks import StripeEventSink, WebhookHandler

SECRET = "whsec_test_current_0123456789abcdef"
OLD_SECRET = "whsec_test_previous_fedcba9876543210"
UNKNOWN_SECRET = "whsec_test_unknown_00000000000000"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A real ledger on memory:// and on an SQLite file (not PostgreSQL here)."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("sqlite_url"))


# -- HTTP server ---------------------------------------------------------------


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 and a free port; yield its base URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets, and
    # without it each keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="webhook-test-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# -- signing and events --------------------------------------------------------


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``body``, made by the stripe SDK."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, timestamp=timestamp
    )
    return header


def new_event_id() -> str:
    return f"evt_test_{secrets.token_hex(8)}"


def make_event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    event_id: str | None = None,
    account: str | None = None,
) -> dict[str, Any]:
    """A Stripe event object as Stripe renders it."""
    event: dict[str, Any] = {
        "id": event_id or new_event_id(),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(time.time()),
        "data": {"object": dict(obj)},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    if account is not None:
        event["account"] = account
    return event


def payment_intent(amount: int = 5000, **metadata: str) -> dict[str, Any]:
    return {
        "id": f"pi_test_{secrets.token_hex(6)}",
        "object": "payment_intent",
        "amount": amount,
        "currency": "usd",
        "status": "succeeded",
        "metadata": dict(metadata),
    }


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event).encode()


# -- the site under test -------------------------------------------------------


@dataclass
class Callbacks:
    """Records host callback calls; can be told to fail."""

    payments: list[Mapping[str, Any]] = field(default_factory=list)
    accounts: list[tuple[str, bool, Mapping[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def on_payment_succeeded(self, payment: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("host database unavailable")
        self.payments.append(payment)

    def on_account_updated(self, account_id: str, enabled: bool, obj: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("host database unavailable")
        self.accounts.append((account_id, enabled, obj))

    @property
    def count(self) -> int:
        return len(self.payments) + len(self.accounts)


@dataclass
class Site:
    """A ledger, a webhook handler and the endpoint served over real HTTP."""

    ledger: PayoutLedger
    handler: WebhookHandler
    callbacks: Callbacks
    url: str
    client: httpx.Client

    def post(
        self,
        body: bytes,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body``; header values are sent as their UTF-8 bytes, unchecked."""
        sent = {"content-type": "application/json"}
        if signature is not None:
            sent["stripe-signature"] = signature
        sent.update(headers or {})
        raw = [(name.encode(), value.encode()) for name, value in sent.items()]
        return self.client.post(self.url, content=body, headers=raw)

    def deliver(self, event: Mapping[str, Any], secret: str = SECRET) -> httpx.Response:
        """POST the event, signed with ``secret``."""
        body = encode(event)
        return self.post(body, sign(body, secret))

    def stored_count(self) -> int:
        """How many events the ledger has stored (every aggregate's events)."""
        return self.ledger.recorder.max_notification_id() or 0


SiteFactory = Callable[..., Site]


class Sites:
    """One ASGI app per test site, each under its own path prefix (``/site-7/``).

    One uvicorn server serves every test (starting one per test costs ~0.3 s);
    the app under test is still reached over real HTTP, each at its own URL.
    """

    def __init__(self) -> None:
        self._apps: dict[str, ASGIApp] = {}
        self._numbers = itertools.count(1)

    def add(self, app: ASGIApp) -> str:
        prefix = f"site-{next(self._numbers)}"
        self._apps[prefix] = app
        return prefix

    def remove(self, prefix: str) -> None:
        self._apps.pop(prefix, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan
        prefix, _, rest = scope["path"][1:].partition("/")
        app = self._apps.get(prefix)
        if app is None:
            await PlainTextResponse("no such test site", status_code=404)(scope, receive, send)
            return
        await app({**scope, "path": "/" + rest}, receive, send)


@pytest.fixture(scope="session")
def shared_server() -> Iterator[tuple[str, Sites]]:
    """A uvicorn server for the whole session, serving every test's sites."""
    sites = Sites()
    with serve(sites) as base:
        yield base, sites


@pytest.fixture
def make_site(ledger: PayoutLedger, shared_server: tuple[str, Sites]) -> Iterator[SiteFactory]:
    """Build an endpoint for the test's ledger with a given configuration."""
    base, sites = shared_server
    prefixes: list[str] = []
    with httpx.Client(timeout=10, trust_env=False) as client:

        def make(
            *,
            secrets: tuple[str, ...] = (SECRET,),
            environment: str = "production",
            sink: StripeEventSink | None = None,
            **options: Any,
        ) -> Site:
            callbacks = Callbacks()
            handler = WebhookHandler(
                sink if sink is not None else ledger,
                secrets=secrets,
                environment=environment,
                on_payment_succeeded=callbacks.on_payment_succeeded,
                on_account_updated=callbacks.on_account_updated,
                **options,
            )
            prefixes.append(sites.add(webhook_app(handler)))
            return Site(ledger, handler, callbacks, f"{base}/{prefixes[-1]}/", client)

        try:
            yield make
        finally:
            for prefix in prefixes:
                sites.remove(prefix)


@pytest.fixture
def site(make_site: SiteFactory) -> Site:
    """The endpoint in production with one secret, ``SECRET``."""
    return make_site()
