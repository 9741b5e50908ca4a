"""`FakeStripe`: the server, its state, and the test controls, in one object."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import stripe

from ._api import StripeBackend
from ._clock import FakeClock
from ._http import FakeStripeServer, Pipeline, RecordedRequest
from ._idempotency import IdempotencyStore
from ._resources import JSON
from ._webhooks import WebhookDelivery, WebhookDispatcher, WebhookEndpoint
from .faults import Fault, FaultPlan, FaultRule

__all__ = ["DEFAULT_BALANCE", "FakeStripe"]

DEFAULT_BALANCE: Mapping[str, int] = {"usd": 10**9, "eur": 10**9}
"""The platform's available balance of a new fake, in minor units."""

IDEMPOTENCY_KEY_MAX_AGE = 24 * 3600


class FakeStripe:
    """A fake Stripe API server for tests, spoken to over real HTTP.

    It serves the v1 endpoints a Stripe Connect payout integration uses
    (accounts, transfers and reversals, balance, events, payment intents) on
    ``127.0.0.1`` and a random port, with Stripe's idempotency semantics, a
    controllable clock, per-request fault injection, a request log and signed
    webhooks::

        with FakeStripe() as fake:
            client = fake.client()
            account = client.v1.accounts.create({"type": "express"})
            client.v1.transfers.create(
                {"amount": 500, "currency": "usd", "destination": account.id}
            )
            assert fake.transfers()[0]["amount"] == 500

    It refuses what Stripe documents it refuses, with Stripe's errors and
    nothing kept under the idempotency key: amounts above 99999999
    (``amount_too_large``), metadata beyond 50 keys, keys over 40 characters
    or holding square brackets, values over 500 characters, descriptions over
    5000 characters, idempotency keys outside 1-255 characters.  It serves
    hundreds of concurrent connections, as a host's test suite may open.

    Simplifications: one platform account (``Stripe-Account`` only scopes
    idempotency keys); no fees, pending funds or capability checks; requested
    capabilities are active at once; ``expand`` is accepted and ignored.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk_test_fake",
        balance: Mapping[str, int] | None = None,
        clock: FakeClock | None = None,
        idempotency_key_max_age: float = IDEMPOTENCY_KEY_MAX_AGE,
        api_version: str | None = None,
        webhook_max_attempts: int = 3,
        webhook_retry_delay: float = 0.05,
        webhook_timeout: float = 5.0,
    ) -> None:
        """Configure a fake; `start` (or ``with``) starts serving.

        ``balance`` is the platform's initial available balance per currency
        (default `DEFAULT_BALANCE`). With a live key (``sk_live_...``) objects
        and events say ``livemode: true``, as live Stripe's do. ``clock``
        stamps ``created`` and ages idempotency keys, which are pruned after
        ``idempotency_key_max_age`` seconds.  Webhook deliveries are tried
        ``webhook_max_attempts`` times.
        """
        self.api_key = api_key
        self.clock = clock if clock is not None else FakeClock()
        self.api_version = api_version if api_version is not None else stripe.api_version
        self._webhooks = WebhookDispatcher(
            max_attempts=webhook_max_attempts,
            retry_delay=webhook_retry_delay,
            timeout=webhook_timeout,
        )
        self._backend = StripeBackend(
            clock=self.clock,
            balance=DEFAULT_BALANCE if balance is None else balance,
            api_version=self.api_version,
            on_event=self._webhooks.enqueue,
            subscribers=self._webhooks.subscribers,
            livemode=api_key.startswith(("sk_live_", "rk_live_")),
        )
        self._faults = FaultPlan()
        self._pipeline = Pipeline(
            backend=self._backend,
            faults=self._faults,
            idempotency=IdempotencyStore(self.clock, idempotency_key_max_age),
            api_key=api_key,
            api_version=self.api_version,
        )
        self._server: FakeStripeServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Self:
        """Start serving on ``127.0.0.1`` and a free port; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("FakeStripe is already running")
        self._server = FakeStripeServer(self._pipeline)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-stripe-http",
            daemon=True,
        )
        self._thread.start()
        self._webhooks.start()
        return self

    def stop(self) -> None:
        """Stop serving and sending webhooks (safe to call twice).

        Connections without a request are closed at once; requests being
        handled get up to 5 seconds to answer, then their connections are
        closed too.  Webhooks not yet delivered are dropped: call
        `flush_webhooks` first to wait for them.
        """
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()
        self._webhooks.stop()

    def __enter__(self) -> Self:
        """Start the fake."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the fake."""
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only while running)."""
        if self._server is None:
            raise RuntimeError("FakeStripe is not running; call start() first")
        return f"http://127.0.0.1:{self._server.port}"

    def client(self, **kwargs: Any) -> stripe.StripeClient:
        """Return a ``stripe.StripeClient`` pointed at this fake.

        Defaults: this fake's ``api_key``, every base address (api, connect,
        files, meter_events) set to `url` so nothing reaches the real
        Stripe, and ``max_network_retries=0``.  Keyword arguments override them
        (``api_key=...`` included) and are passed to ``StripeClient``.
        """
        url = self.url
        options: dict[str, Any] = {
            "base_addresses": {
                "api": url,
                "connect": url,
                "files": url,
                "meter_events": url,
            },
            "max_network_retries": 0,
        }
        options.update(kwargs)
        api_key = options.pop("api_key", self.api_key)
        return stripe.StripeClient(api_key, **options)

    # -- fault injection -------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        method: str | None = "POST",
        path: str | None = "/v1/transfers",
        times: int | None = 1,
    ) -> FaultRule:
        """Make the next ``times`` requests matching ``method`` and ``path`` hit
        ``fault`` (see `.faults`).

        ``None`` matches any method or path; ``path`` may use ``*`` wildcards;
        ``times=None`` means every matching request until cancelled.  Returns
        the rule, whose ``triggered`` count and ``cancel()`` tests may use.
        """
        return self._faults.add(fault, method=method, path=path, times=times)

    def clear_faults(self) -> None:
        """Cancel every injected fault."""
        self._faults.clear()

    # -- test controls ---------------------------------------------------

    def set_balance(self, currency: str, amount: int) -> None:
        """Set the platform's available balance in ``currency`` (minor units)."""
        self._backend.set_balance(currency, amount)

    def balance(self, currency: str) -> int:
        """The platform's available balance in ``currency`` (minor units)."""
        return self._backend.available(currency)

    def set_payouts_enabled(self, account_id: str, enabled: bool) -> None:
        """Set a connected account's ``payouts_enabled``; emits
        ``account.updated`` when it changes.  ``KeyError`` if unknown."""
        self._backend.set_payouts_enabled(account_id, enabled)

    def succeed_payment_intent(
        self,
        amount: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
        transfer_group: str | None = None,
    ) -> JSON:
        """Record a customer's successful payment and return the PaymentIntent.

        Its charge (``latest_charge``) can be a transfer's
        ``source_transaction``; the amount is added to the available balance
        at once.  Emits ``payment_intent.created`` and
        ``payment_intent.succeeded``.
        """
        return self._backend.succeed_payment_intent(amount, currency, metadata, transfer_group)

    # -- inspection ------------------------------------------------------

    def transfers(self) -> list[JSON]:
        """Every transfer, in creation order, as Stripe renders it."""
        return self._backend.snapshot("transfers")

    def accounts(self) -> list[JSON]:
        """Every connected account, in creation order."""
        return self._backend.snapshot("accounts")

    def payment_intents(self) -> list[JSON]:
        """Every PaymentIntent, in creation order."""
        return self._backend.snapshot("payment_intents")

    def events(self) -> list[JSON]:
        """Every event, oldest first."""
        return self._backend.snapshot("events")

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (copies)."""
        return self._pipeline.requests

    @property
    def counters(self) -> dict[str, int]:
        """Counts of what happened, e.g. ``requests``, ``idempotent_replays``,
        ``idempotency_conflicts``, ``idempotency_mismatches``,
        ``faults_triggered``, ``dropped_connections``, ``rate_limited``,
        ``server_errors``, ``auth_failures``, ``not_found`` (absent = 0)."""
        return self._pipeline.counters

    # -- webhooks --------------------------------------------------------

    def add_webhook_endpoint(
        self,
        url: str,
        secret: str | None = None,
        *,
        enabled_events: Sequence[str] = ("*",),
    ) -> WebhookEndpoint:
        """Send every later event of an enabled type to ``url``, signed.

        ``url`` must be on a loopback host.  Without ``secret`` a ``whsec_...``
        one is generated; either way it is on the returned endpoint.
        """
        return self._webhooks.add_endpoint(url, secret, enabled_events)

    def flush_webhooks(self, timeout: float = 5.0) -> None:
        """Wait until every queued webhook delivery has been made (including
        retries); raise ``TimeoutError`` after ``timeout`` seconds."""
        self._webhooks.flush(timeout)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook delivery attempt, in the order they were made."""
        return self._webhooks.deliveries
