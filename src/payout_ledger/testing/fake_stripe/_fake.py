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
from ._rate_limit import RateLimiter
from ._resources import JSON
from ._webhooks import WebhookDelivery, WebhookDispatcher, WebhookEndpoint
from .faults import Fault, FaultPlan, FaultRule

__all__ = ["DEFAULT_BALANCE", "FakeStripe"]

DEFAULT_BALANCE: Mapping[str, int] = {"usd": 10**9, "eur": 10**9}
"""The platform's available balance of a new fake, in minor units."""

IDEMPOTENCY_KEY_MAX_AGE = 24 * 3600


class FakeStripe:
    """A fake Stripe API server for tests, spoken to over real HTTP.

    It serves the v1 endpoints a Stripe Connect payout integration uses on
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

    Endpoints: ``POST /v1/accounts``, ``GET|POST|DELETE /v1/accounts/{id}``;
    ``POST|GET /v1/transfers``, ``GET|POST /v1/transfers/{id}``;
    ``POST|GET /v1/transfers/{id}/reversals``,
    ``GET /v1/transfers/{id}/reversals/{reversal}``; ``GET /v1/balance``;
    ``GET /v1/events``, ``GET /v1/events/{id}``;
    ``GET /v1/payment_intents/{id}``; ``GET /v1/charges/{id}``.

    Connect behaviour, as Stripe documents it:

    * a transfer without ``source_transaction`` needs the platform's
      available balance (``balance_insufficient``) and debits it; one with
      ``source_transaction=ch_...`` is funded by that charge and succeeds
      whatever the available balance, which it neither checks nor debits
      (the fake credits a payment at once and models no settlement), up to
      the charge's amount less refunds and earlier transfers from it;
    * a transfer credits its destination's available balance and a reversal
      debits it; a reversal that balance cannot cover is refused
      (``balance_insufficient``, saved under the idempotency key);
    * a destination whose capabilities include none of ``transfers``,
      ``crypto_transfers``, ``legacy_payments`` as ``active`` is refused
      (``insufficient_capabilities_for_transfer``); a deleted or unknown one
      gets "No such destination: 'acct_...'" (``resource_missing``);
    * events carry ``api_version`` (`event_api_version`), and those about a
      connected account its id in ``account``.

    It refuses what Stripe documents it refuses, with Stripe's errors and
    nothing kept under the idempotency key: amounts above 99999999
    (``amount_too_large``), metadata beyond 50 keys, keys over 40 characters
    or holding square brackets, values over 500 characters, descriptions over
    5000 characters, idempotency keys outside 1-255 characters.  It serves
    hundreds of concurrent connections, as a host's test suite may open.

    Test controls: `set_balance`, `set_payouts_enabled`, `set_capability`,
    `set_disabled_reason`, `delete_account`, `set_account_balance`,
    `succeed_payment_intent`, `set_event_api_version`, `inject` and
    `clear_faults`, ``clock``, `add_webhook_endpoint`.  Inspection:
    `balance`, `account_available`, `transfers`, `accounts`,
    `payment_intents`, `events`, `requests` (each with its ``Stripe-Version``
    and ``Idempotency-Key``), `counters`, `webhook_deliveries`.

    Simplifications: one platform account (``Stripe-Account`` only scopes
    idempotency keys); no fees or pending funds; requested capabilities are
    active at once.  Leniency: an account created without requesting
    capabilities, and never given one by `set_capability`, is not checked for
    a transfers capability (it is treated as fully onboarded).  Deleting an
    account is allowed whatever its balance (as for test-mode accounts) and
    emits no event.  ``expand`` is accepted and ignored.
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
        rate_limit: float | None = None,
        global_rate_limit: float | None = None,
        rate_limit_retry_after: float | None = None,
    ) -> None:
        """Configure a fake; `start` (or ``with``) starts serving.

        ``balance`` is the platform's initial available balance per currency
        (default `DEFAULT_BALANCE`). With a live key (``sk_live_...``) objects
        and events say ``livemode: true``, as live Stripe's do. ``clock``
        stamps ``created`` and ages idempotency keys, which are pruned after
        ``idempotency_key_max_age`` seconds.  Webhook deliveries are tried
        ``webhook_max_attempts`` times.

        ``rate_limit`` turns on Stripe's rate limiter: at most that many requests
        per second to each endpoint (Stripe's default is 25), and
        ``global_rate_limit`` to all of them (live 100, sandboxes 25); requests
        beyond are answered 429 ``rate_limit`` and nothing runs (see
        `._rate_limit` for how faithfully). ``rate_limit_retry_after`` adds a
        ``Retry-After`` of that many seconds to those 429s (Stripe documents none).
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
            rate_limiter=None
            if rate_limit is None and global_rate_limit is None
            else RateLimiter(
                per_endpoint=rate_limit,
                total=global_rate_limit,
                retry_after=rate_limit_retry_after,
            ),
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

    def set_capability(self, account_id: str, name: str, status: str) -> None:
        """Set capability ``name`` (e.g. ``"transfers"``) of a connected account
        to ``status``: ``"active"``, ``"inactive"``, ``"pending"`` or
        ``"unrequested"`` (removes it from ``capabilities``).

        From then on transfers to the account need one of ``transfers``,
        ``crypto_transfers``, ``legacy_payments`` active.  Emits a Connect
        ``account.updated`` (``previous_attributes`` holds the old status) when
        it changes.  ``KeyError`` if the account is unknown, ``ValueError``
        for another status.
        """
        self._backend.set_capability(account_id, name, status)

    def set_disabled_reason(self, account_id: str, reason: str | None) -> None:
        """Set a connected account's ``requirements.disabled_reason`` (e.g.
        ``"rejected.fraud"``; ``None`` clears it).  It changes nothing else:
        use `set_payouts_enabled` and `set_capability` for those.  Emits
        ``account.updated`` when it changes.  ``KeyError`` if unknown."""
        self._backend.set_disabled_reason(account_id, reason)

    def delete_account(self, account_id: str) -> None:
        """Delete a connected account as ``DELETE /v1/accounts/{id}`` does:
        retrieving it is then ``resource_missing`` and transfers to it get
        "No such destination".  ``KeyError`` if unknown."""
        self._backend.remove_account(account_id)

    def set_account_balance(self, account_id: str, currency: str, amount: int) -> None:
        """Set a connected account's available balance in ``currency`` (minor
        units), e.g. to 0 as if it had been paid out; reversals need it.
        ``KeyError`` if the account is unknown."""
        self._backend.set_account_balance(account_id, currency, amount)

    def account_available(self, account_id: str, currency: str) -> int:
        """A connected account's available balance in ``currency``: what
        transfers credited, less reversals (or what `set_account_balance`
        set).  ``KeyError`` if the account is unknown."""
        return self._backend.account_available(account_id, currency)

    def set_event_api_version(self, version: str) -> None:
        """Render events created from now on with API version ``version``
        (their ``api_version``, and the shape a test may build on it);
        earlier events keep theirs."""
        self._backend.set_event_api_version(version)

    @property
    def event_api_version(self) -> str:
        """The API version new events carry (at first ``api_version``)."""
        return self._backend.event_api_version

    def succeed_payment_intent(
        self,
        amount: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
        transfer_group: str | None = None,
    ) -> JSON:
        """Record a customer's successful payment and return the PaymentIntent.

        Its charge (``latest_charge``, served at ``GET /v1/charges/{id}``)
        can be a transfer's ``source_transaction``; the amount is added to
        the available balance at once.  Emits ``payment_intent.created`` and
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
