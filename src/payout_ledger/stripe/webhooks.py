"""Stripe webhooks: verify, parse and record each event exactly once.

[`WebhookHandler`][payout_ledger.stripe.webhooks.WebhookHandler] is framework
neutral: it takes the raw request body and headers and returns a
[`WebhookResponse`][payout_ledger.stripe.webhooks.WebhookResponse] (a status and
a JSON body). [`webhook_app`][payout_ledger.asgi.webhook_app] serves it over
ASGI. The rules, in the order they are applied:

| condition | status |
|---|---|
| no webhook secret, and ``environment="production"`` or a live-mode ledger | 403, every request |
| body larger than ``max_body_bytes`` | 413 |
| a secret is configured and ``Stripe-Signature`` is missing | 403 |
| the signature matches none of the secrets (or the body is not UTF-8) | 403 |
| the signature's timestamp is older than ``tolerance`` seconds (a replay) | 403 |
| no secret configured outside production, ledger not live | verification skipped, WARNING logged |
| the body is not JSON, or not a Stripe event object | 400 |
| a connected account's event of the other mode (sent to live Connect endpoints) | 200, ignored |
| a platform event whose ``livemode`` is not the ledger's | 400, nothing runs |
| the event id was recorded before | 200, ``"duplicate": true``, nothing runs |
| an ``api_version`` the ledger does not understand | 200, recorded, no callback, no effect |
| the host callback raises | 500, nothing recorded (Stripe retries) |
| the ledger's store fails | 500 (Stripe retries) |
| anything else, unknown event types included | 200, recorded once |

Nothing is parsed, and no callback or store call runs, before the signature
has been verified on the raw body bytes. Host callbacks run before the event is
recorded, so they are called *at least once* per event: after a failure the
retry calls them again, and two concurrent deliveries of one event may both
call them. Make them idempotent (key on the event's object id).

Logs go to the ``payout_ledger.webhooks`` logger and name event ids, types and
outcomes only: never a secret, a ``Stripe-Signature`` value or a body. Each
record carries them as extras (``payout_ledger.event_id``,
``payout_ledger.event_type``, ``payout_ledger.outcome``, ``payout_ledger.status``).
Each request handled is a ``payout_ledger.webhook`` span (with the event's
type, the outcome and the status, never an id) when the host traces.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import stripe

from payout_ledger.adapters import telemetry
from payout_ledger.domain.stripe_events import StripeEventOutcome, StripeEventReceipt
from payout_ledger.errors import ConfigurationError, InvalidRequestError, LivemodeMismatchError
from payout_ledger.settings import STRIPE_API_VERSION
from payout_ledger.stripe.event_json import MAX_JSON_DEPTH, is_identifier, parse_event

if TYPE_CHECKING:
    from payout_ledger.settings import LedgerSettings

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_TOLERANCE",
    "ENVIRONMENTS",
    "MAX_JSON_DEPTH",
    "AccountUpdatedCallback",
    "PaymentSucceededCallback",
    "StripeEventSink",
    "WebhookHandler",
    "WebhookResponse",
]

logger = logging.getLogger("payout_ledger.webhooks")

DEFAULT_TOLERANCE: Final = 300
"""Seconds a signature's timestamp may be old before the request is a replay."""

DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest body accepted (1 MiB); Stripe's events are far smaller."""


ENVIRONMENTS: Final = frozenset({"development", "test", "staging", "production"})
"""The environments a handler accepts (``LedgerSettings.environment``'s values)."""


# Headers passed to the ledger with the raw body, so that an auditor can verify
# the signature again later. Others (cookies, proxies' credentials) are not kept.
_AUDIT_HEADERS = ("stripe-signature", "content-type", "user-agent")

PaymentSucceededCallback = Callable[[Mapping[str, Any]], None]
"""``on_payment_succeeded(payment_intent)``: called with ``data.object``."""

AccountUpdatedCallback = Callable[[str, bool, Mapping[str, Any]], None]
"""``on_account_updated(account_id, payouts_enabled, account)``."""


@runtime_checkable
class StripeEventSink(Protocol):
    """Where verified events go: [`PayoutLedger`][payout_ledger.PayoutLedger] in production."""

    def has_stripe_event(self, event_id: str) -> bool:
        """Whether an event with this Stripe id was recorded already."""
        ...

    def record_stripe_event(
        self,
        *,
        event: Mapping[str, Any],
        raw_body: bytes,
        headers: Mapping[str, str],
    ) -> StripeEventReceipt:
        """Record the event once, with its effect on the ledger, in one atomic save.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an
        event without ``id``, ``type`` or ``data.object``.
        """
        ...


@dataclass(frozen=True)
class WebhookResponse:
    """What to answer Stripe: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class WebhookHandler:
    """Verifies Stripe webhook requests and records their events in the ledger.

    ```python
    handler = WebhookHandler.from_settings(ledger, settings, on_payment_succeeded=mark_paid)
    response = handler.handle(raw_body, headers)   # -> WebhookResponse(status, body)
    ```

    ``secrets`` are the endpoint's signing secrets (``whsec_...``), several
    while a secret is being rotated: a request is accepted when its signature
    matches any of them. ``tolerance`` is how many seconds old a signature's
    timestamp may be (at least 1: the Stripe SDK skips the age check for
    ``None`` and ``0``). ``environment`` is one of ``development``, ``test``,
    ``staging``, ``production``; only outside production may ``secrets`` be
    empty, and then every request is processed unverified with a WARNING.

    Callbacks run before the event is recorded and are called at least once per
    event: ``on_payment_succeeded(payment_intent)`` for the platform's own
    ``payment_intent.succeeded`` (never a connected account's: those carry a
    top-level ``account`` and are recorded only), ``on_account_updated(account_id,
    payouts_enabled, account)`` for ``account.updated``. If one raises, the
    response is a 500, nothing is recorded and Stripe delivers the event again.
    Neither is called for an event whose ``api_version`` the ledger does not
    understand (``accepts_api_version``): it is recorded for audit only.

    Raises [`ConfigurationError`][payout_ledger.ConfigurationError] for an
    empty or blank secret, a tolerance below 1, an unknown environment or a
    ``max_body_bytes`` below 1.
    """

    def __init__(
        self,
        ledger: StripeEventSink,
        *,
        secrets: Sequence[str],
        tolerance: int = DEFAULT_TOLERANCE,
        environment: str = "development",
        on_payment_succeeded: PaymentSucceededCallback | None = None,
        on_account_updated: AccountUpdatedCallback | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if isinstance(secrets, str):
            raise ConfigurationError("secrets must be a sequence of webhook secrets, not one str")
        checked: list[str] = []
        for position, secret in enumerate(secrets, start=1):
            if not isinstance(secret, str) or not secret.strip() or secret != secret.strip():
                raise ConfigurationError(
                    f"webhook secret #{position} is empty or has surrounding whitespace"
                )
            checked.append(secret)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 1:
            raise ConfigurationError(
                "tolerance must be a whole number of seconds >= 1 "
                "(None or 0 would skip the replay check)"
            )
        if environment not in ENVIRONMENTS:
            raise ConfigurationError(
                f"environment must be one of {sorted(ENVIRONMENTS)}, not {environment!r}"
            )
        if isinstance(max_body_bytes, bool) or max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be at least 1")
        self._ledger = ledger
        self._secrets = tuple(checked)
        self.tolerance = tolerance
        self.environment = environment
        self.max_body_bytes = max_body_bytes
        self._on_payment_succeeded = on_payment_succeeded
        self._on_account_updated = on_account_updated
        self._live = getattr(ledger, "livemode", None) is True
        """A live-mode ledger never takes unverified events, whatever the environment."""

    @classmethod
    def from_settings(
        cls,
        ledger: StripeEventSink,
        settings: LedgerSettings,
        *,
        on_payment_succeeded: PaymentSucceededCallback | None = None,
        on_account_updated: AccountUpdatedCallback | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> WebhookHandler:
        """A handler configured by ``settings.stripe_webhook_secrets``,
        ``settings.stripe_webhook_tolerance`` and ``settings.environment``."""
        return cls(
            ledger,
            secrets=[secret.get_secret_value() for secret in settings.stripe_webhook_secrets],
            tolerance=settings.stripe_webhook_tolerance,
            environment=settings.environment,
            on_payment_succeeded=on_payment_succeeded,
            on_account_updated=on_account_updated,
            max_body_bytes=max_body_bytes,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(secrets=<{len(self._secrets)} hidden>, "
            f"tolerance={self.tolerance}, environment={self.environment!r})"
        )

    @property
    def verifies_signatures(self) -> bool:
        """Whether at least one secret is configured (signatures are checked)."""
        return bool(self._secrets)

    # -- the request -------------------------------------------------------

    def precheck(self, body_size: int) -> WebhookResponse | None:
        """The answer due before the body is read, or ``None`` to go on.

        403 in production without a secret, 413 for a body larger than
        ``max_body_bytes``. [`handle`][payout_ledger.stripe.webhooks.WebhookHandler.handle]
        applies it too; servers call it first to avoid reading a body at all.
        """
        if not self._secrets and (self.environment == "production" or self._live):
            logger.error(
                "stripe webhook rejected (403): no webhook secret is configured and %s",
                "the environment is production" if not self._live else "the ledger is live",
                extra=_about(status=403, outcome="webhook_secret_not_configured"),
            )
            return _reject(403, "webhook_secret_not_configured")
        if body_size > self.max_body_bytes:
            logger.warning(
                "stripe webhook rejected (413): body of %d bytes exceeds %d",
                body_size,
                self.max_body_bytes,
                extra=_about(status=413, outcome="payload_too_large"),
            )
            return _reject(413, "payload_too_large")
        return None

    def handle(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookResponse:
        """Verify, parse and record one webhook request; see the module's rules.

        ``raw_body`` must be the body exactly as received; ``headers`` are looked
        up case-insensitively (the first of repeated headers counts). Blocking:
        it calls the ledger's store, so run it off an event loop.
        """
        with telemetry.span("payout_ledger.webhook") as current:
            response = self._handle(raw_body, headers)
            if current.recording:
                body = response.body
                current.set(
                    status=response.status,
                    event_type=telemetry.label(body.get("type"), missing="") or None,
                    outcome=telemetry.label(_outcome_of(body), missing="") or None,
                )
                if response.status >= 500:
                    current.fail(telemetry.label(body.get("error")))
            return response

    def _handle(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookResponse:
        lowered = _lower_keys(headers)
        early = self.precheck(len(raw_body))
        if early is not None:
            return early
        if self._secrets:
            rejection = self._verify(raw_body, lowered.get("stripe-signature"))
            if rejection is not None:
                return rejection
        else:
            logger.warning(
                "stripe webhook signature NOT verified: no webhook secret is configured "
                "(environment=%s); configure one before production",
                self.environment,
                extra=_about(outcome="signature_not_verified"),
            )
        parsed = parse_event(raw_body)
        if isinstance(parsed, str):
            return _reject(400, parsed)
        return self._dispatch(parsed, raw_body, lowered)

    # -- steps ---------------------------------------------------------------

    def _verify(self, raw_body: bytes, header: str | None) -> WebhookResponse | None:
        if header is None or not header.strip():
            logger.warning(
                "stripe webhook rejected (403): no Stripe-Signature header",
                extra=_about(status=403, outcome="signature_missing"),
            )
            return _reject(403, "signature_missing")
        if not header.isascii():
            logger.warning(
                "stripe webhook rejected (403): malformed Stripe-Signature header",
                extra=_about(status=403, outcome="signature_invalid"),
            )
            return _reject(403, "signature_invalid")
        try:
            payload = raw_body.decode("utf-8")
        except UnicodeDecodeError:
            logger.warning(
                "stripe webhook rejected (403): body is not UTF-8, cannot verify",
                extra=_about(status=403, outcome="signature_invalid"),
            )
            return _reject(403, "signature_invalid")
        expired = False
        for secret in self._secrets:
            try:
                stripe.WebhookSignature.verify_header(
                    payload, header, secret, tolerance=self.tolerance
                )
            except stripe.SignatureVerificationError as exc:
                # The SDK checks the signature before the age: this message means
                # the signature was right and the timestamp too old.
                expired = expired or str(exc).startswith("Timestamp outside the tolerance")
            except (TypeError, ValueError):
                continue  # an unparseable header: no secret can match it
            else:
                return None
        if expired:
            logger.warning(
                "stripe webhook rejected (403): signature timestamp older than %d s (replay?)",
                self.tolerance,
                extra=_about(status=403, outcome="signature_expired"),
            )
            return _reject(403, "signature_expired")
        logger.warning(
            "stripe webhook rejected (403): signature does not match any secret",
            extra=_about(status=403, outcome="signature_invalid"),
        )
        return _reject(403, "signature_invalid")

    def _dispatch(
        self, event: dict[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> WebhookResponse:
        event_id: str = event["id"]
        event_type: str = event["type"]
        expected = getattr(self._ledger, "livemode", None)
        if isinstance(expected, bool) and event.get("livemode", expected) is not expected:
            if event.get("account") is not None:
                logger.info(
                    "stripe event %s (%s) of a connected account, other mode: ignored",
                    event_id,
                    event_type,
                    extra=_about(event_id, event_type, status=200, outcome="ignored"),
                )
                return WebhookResponse(
                    200,
                    {
                        "received": True,
                        "event_id": event_id,
                        "type": event_type,
                        "outcome": "ignored",
                    },
                )
            logger.warning(
                "stripe event %s (%s) rejected (400): livemode %r, the ledger is %s",
                event_id,
                event_type,
                event.get("livemode"),
                "live" if expected else "test",
                extra=_about(event_id, event_type, status=400, outcome="livemode_mismatch"),
            )
            return _reject(400, "livemode_mismatch")
        try:
            seen = self._ledger.has_stripe_event(event_id)
        except Exception:
            logger.exception(
                "stripe event %s (%s): store lookup failed",
                event_id,
                event_type,
                extra=_about(event_id, event_type, status=500, outcome="store_failed"),
            )
            return _reject(500, "store_failed")
        if seen:
            logger.info(
                "stripe event %s (%s): duplicate, ignored",
                event_id,
                event_type,
                extra=_about(event_id, event_type, status=200, outcome="duplicate"),
            )
            return WebhookResponse(
                200,
                {"received": True, "duplicate": True, "event_id": event_id, "type": event_type},
            )
        failed = self._run_callback(event)
        if failed is not None:
            return failed
        audit_headers = {name: headers[name] for name in _AUDIT_HEADERS if name in headers}
        try:
            receipt = self._ledger.record_stripe_event(
                event=event, raw_body=raw_body, headers=audit_headers
            )
        except LivemodeMismatchError:
            logger.warning(
                "stripe event %s (%s): livemode mismatch (400)",
                event_id,
                event_type,
                extra=_about(event_id, event_type, status=400, outcome="livemode_mismatch"),
            )
            return _reject(400, "livemode_mismatch")
        except InvalidRequestError:
            logger.warning(
                "stripe event %s (%s) rejected by the ledger (400)",
                event_id,
                event_type,
                extra=_about(event_id, event_type, status=400, outcome="invalid_event"),
            )
            return _reject(400, "invalid_event")
        except Exception:
            logger.exception(
                "stripe event %s (%s): recording failed",
                event_id,
                event_type,
                extra=_about(event_id, event_type, status=500, outcome="store_failed"),
            )
            return _reject(500, "store_failed")
        outcome = receipt.outcome
        logger.info(
            "stripe event %s (%s): %s",
            event_id,
            event_type,
            outcome.value,
            extra=_about(event_id, event_type, status=200, outcome=outcome.value),
        )
        body: dict[str, Any] = {
            "received": True,
            "event_id": event_id,
            "type": event_type,
            "outcome": outcome.value,
        }
        if outcome is StripeEventOutcome.DUPLICATE:
            body["duplicate"] = True
        return WebhookResponse(200, body)

    def _understood(self, event: dict[str, Any]) -> bool:
        """Whether the ledger lets this event's ``api_version`` act (a sink without
        ``accepts_api_version`` understands the pinned version only)."""
        accepts = getattr(self._ledger, "accepts_api_version", None)
        version = event.get("api_version")
        if callable(accepts):
            return bool(accepts(version))
        return version == STRIPE_API_VERSION

    def _run_callback(self, event: dict[str, Any]) -> WebhookResponse | None:
        event_type: str = event["type"]
        obj: dict[str, Any] = event["data"]["object"]
        if not self._understood(event):
            # The ledger records it and logs the one WARNING; its shape is unknown.
            logger.info(
                "stripe event %s (%s): api_version not understood, host callbacks not run",
                event["id"],
                event_type,
                extra=_about(event["id"], event_type),
            )
            return None
        call: Callable[[], None] | None = None
        if event_type == "payment_intent.succeeded" and event.get("account") is None:
            on_payment = self._on_payment_succeeded
            if on_payment is not None:
                # A copy: a callback that mutates it cannot change what is recorded.
                intent = copy.deepcopy(obj)
                call = partial(on_payment, intent)
        elif event_type == "account.updated":
            account_id = _account_id(event)
            if account_id is None:
                logger.warning(
                    "stripe event %s (account.updated) names no account",
                    event["id"],
                    extra=_about(event["id"], event_type, status=400, outcome="invalid_event"),
                )
                return _reject(400, "invalid_event")
            on_account = self._on_account_updated
            if on_account is not None:
                account = copy.deepcopy(obj)
                enabled = account.get("payouts_enabled") is True
                call = partial(on_account, account_id, enabled, account)
        if call is None:
            return None
        try:
            call()
        except Exception:
            logger.exception(
                "stripe event %s (%s): host callback failed; nothing recorded, "
                "Stripe will deliver it again",
                event["id"],
                event_type,
                extra=_about(event["id"], event_type, status=500, outcome="callback_failed"),
            )
            return _reject(500, "callback_failed")
        return None


# -- helpers -----------------------------------------------------------------


def _about(
    event_id: str | None = None,
    event_type: str | None = None,
    *,
    status: int | None = None,
    outcome: str | None = None,
) -> dict[str, object]:
    """A webhook log record's extras: only what is given, never a secret or a body."""
    fields = {"event_id": event_id, "event_type": event_type, "status": status, "outcome": outcome}
    return telemetry.extras(**{name: value for name, value in fields.items() if value is not None})


def _outcome_of(body: Mapping[str, Any]) -> str | None:
    """What a response body says happened: the recording's outcome, the rejection, or a
    duplicate."""
    if body.get("duplicate") is True:
        return "duplicate"
    found = body.get("outcome") or body.get("error")
    return str(found) if found is not None else None


def _reject(status: int, error: str) -> WebhookResponse:
    return WebhookResponse(status, {"error": error})


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    items = headers.items()
    for name, value in items:
        lowered.setdefault(name.lower(), value)
    return lowered


def _account_id(event: Mapping[str, Any]) -> str | None:
    """``event.account`` for a Connect event, else the account object's id."""
    for candidate in (event.get("account"), event["data"]["object"].get("id")):
        if is_identifier(candidate):
            return str(candidate)
    return None
