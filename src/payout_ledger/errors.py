"""The exceptions payout_ledger raises, all under one root.

```text
PayoutLedgerError
├── InvalidRequestError          bad input; nothing was recorded      (also ValueError)
│   ├── InvalidMoneyError        float, bool, zero/negative amount, unknown currency
│   ├── BulkRequestError         a batch of releases with bad items: none of it was released
│   └── LivemodeMismatchError    a Stripe event of the other mode (test vs live)
├── ConfigurationError           settings that cannot work (e.g. Stripe off in production)
├── StoreError                   the event store cannot be opened as configured
│   ├── StoreUnavailableError    cannot connect, authenticate, open or create it
│   └── StoreNotFoundError       no such schema, or (must_exist=True) no file or events table
├── ProviderNotFoundError        the ProviderDirectory has no such provider
├── PayoutNotFoundError          no payout has been recorded for that event service
├── ReleaseConflictError         re-release with another amount, currency or provider
├── LedgerBusyError              the claim kept losing optimistic-concurrency races
├── LedgerIntegrityError         the log or Stripe says a failed attempt paid: not paid again
└── GatewayError                 raised by TransferGateway implementations
    ├── TransferDeclined         definite refusal: nothing moved, a new attempt needs a new key
    │   └── DestinationUnpayable the connected account cannot be paid (capability, deleted)
    ├── TransferNotExecuted      not executed (rate limited): retry later with the same key
    └── TransferOutcomeUnknown   timeout, dropped connection, 5xx: money may have moved
        └── SendWindowClosed     the attempt's send window closed before this HTTP attempt
```

Business outcomes of a release (already released, in progress, onboarding
required, declined, unknown outcome) are *results*, not exceptions: see
[`ReleaseResult`][payout_ledger.ReleaseResult]. Exceptions are for callers' bugs
and for conditions the caller must handle differently.

No message ever contains an API key, webhook secret or database password.
"""

from __future__ import annotations

__all__ = [
    "BulkRequestError",
    "ConfigurationError",
    "DestinationUnpayable",
    "GatewayError",
    "InvalidMoneyError",
    "InvalidRequestError",
    "LedgerBusyError",
    "LedgerIntegrityError",
    "LivemodeMismatchError",
    "PayoutLedgerError",
    "PayoutNotFoundError",
    "ProviderNotFoundError",
    "ReleaseConflictError",
    "ReversalConflictError",
    "ReversalRefusedError",
    "SendWindowClosed",
    "SourceTransactionError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TransferDeclined",
    "TransferNotExecuted",
    "TransferOutcomeUnknown",
]


class PayoutLedgerError(Exception):
    """Root of every exception this library raises on purpose."""


class InvalidRequestError(PayoutLedgerError, ValueError):
    """Input was rejected before anything was recorded or sent to Stripe."""


class InvalidMoneyError(InvalidRequestError):
    """An amount or currency is not acceptable money."""


class BulkRequestError(InvalidRequestError):
    """A batch of releases holds items that are not release requests, or one event
    service twice; nothing of the batch was recorded or sent.

    ``problems`` lists ``(index, reason)`` for each bad item (0-based, in input
    order, at most 100); the message names the first few.
    """

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = tuple(problems[:100])
        shown = "; ".join(f"item {i}: {reason}" for i, reason in self.problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"{len(problems)} bad item(s) in the batch, none released: {shown}{more}")


class LivemodeMismatchError(InvalidRequestError):
    """A Stripe event of the other mode: a test-mode event at a live ledger, or the reverse.

    Nothing is recorded; the webhook endpoint answers 400 ``livemode_mismatch``.
    """


class ConfigurationError(PayoutLedgerError):
    """The ledger's settings cannot work as given."""


class StoreError(PayoutLedgerError):
    """The event store named by ``settings.store_url`` cannot be used.

    Raised while a [`PayoutLedger`][payout_ledger.PayoutLedger] is constructed,
    instead of the database driver's own exception (which stays the
    ``__cause__``). The message is one line: what failed, the store URL with any
    password replaced by ``***``, and the driver's reason. ``url`` is that
    redacted URL, ``reason`` the driver's reason alone.
    """

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class StoreUnavailableError(StoreError):
    """The store cannot be reached, authenticated to, opened or set up.

    For example PostgreSQL refused the password, the host does not answer
    within ``settings.postgres_connect_timeout``, the database does not exist,
    or the SQLite file cannot be opened or is not an SQLite database.
    """


class StoreNotFoundError(StoreError):
    """The database answered, but the store is not there; nothing was created.

    Raised when the PostgreSQL schema named by ``?schema=`` does not exist and,
    with ``PayoutLedger(..., must_exist=True)`` (every operator command opens
    its store so), when the SQLite file or the events table does not exist:
    typically a misspelt or unset store URL.
    """


class ProviderNotFoundError(PayoutLedgerError):
    """The host's provider directory has no provider with this id."""

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"no service provider with id {provider_id!r}")
        self.provider_id = provider_id


class PayoutNotFoundError(PayoutLedgerError):
    """No payout has been recorded for this event service."""

    def __init__(self, event_service_id: str) -> None:
        super().__init__(f"no payout recorded for event service {event_service_id!r}")
        self.event_service_id = event_service_id


class ReleaseConflictError(PayoutLedgerError):
    """A release disagrees with what the ledger already recorded for the service.

    One event service is paid once, to one provider, for one amount. A request
    that differs is refused rather than silently paid or silently ignored.
    """

    def __init__(
        self, event_service_id: str, field: str, recorded: object, requested: object
    ) -> None:
        super().__init__(
            f"event service {event_service_id!r} was recorded with "
            f"{field}={recorded!r}, not {requested!r}"
        )
        self.event_service_id = event_service_id
        self.field = field
        self.recorded = recorded
        self.requested = requested


class SourceTransactionError(InvalidRequestError):
    """The charge a release names cannot fund its transfer (Stripe's rules).

    Raised before anything is recorded: the charge does not exist, is in
    another currency, or is smaller than the amount (less what was refunded).
    """


class ReversalRefusedError(InvalidRequestError):
    """A reversal the ledger will not ask Stripe for; nothing is recorded.

    The payout is not paid, the amount is more than what is not yet reversed,
    or a partial reversal names no reference (a retry could not be told from a
    second refund).
    """


class ReversalConflictError(PayoutLedgerError):
    """A reversal's reference was used before for another amount; nothing is recorded."""

    def __init__(
        self, event_service_id: str, reference: str, recorded: int, requested: int
    ) -> None:
        super().__init__(
            f"reversal {reference!r} of event service {event_service_id!r} was recorded "
            f"for {recorded}, not {requested}"
        )
        self.event_service_id = event_service_id
        self.reference = reference
        self.recorded = recorded
        self.requested = requested


class LedgerBusyError(PayoutLedgerError):
    """Every claim on the payout lost a concurrent write; try again later."""

    def __init__(self, event_service_id: str, attempts: int) -> None:
        super().__init__(
            f"payout for event service {event_service_id!r} kept changing "
            f"under {attempts} attempts to claim it"
        )
        self.event_service_id = event_service_id


class LedgerIntegrityError(PayoutLedgerError):
    """A new attempt would pay again, and the evidence says it must not.

    Raised before a release starts a new attempt on a failed payout when the
    payout's log does not chain (edited, copied or forged events) or when
    Stripe already has a transfer of that payout. Nothing is recorded and
    nothing sent; ``payout-ledger verify`` and ``reconcile`` say more.
    """


class GatewayError(PayoutLedgerError):
    """A transfer gateway could not report a created transfer.

    ``code`` is the provider's error code (Stripe's ``code`` or error type),
    ``request_id`` the provider's request id when there was a response.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.http_status = http_status


class TransferDeclined(GatewayError):  # noqa: N818 - it names an outcome
    """Stripe definitely refused the transfer; nothing moved.

    Stripe caches the refusal under its idempotency key, so the next attempt
    must use a new key.
    """


class DestinationUnpayable(TransferDeclined):
    """Stripe refused the transfer because the connected account cannot be paid.

    The destination lacks an active ``transfers`` capability (Stripe's code
    ``insufficient_capabilities_for_transfer``) or no longer exists ("No such
    destination"). Like every refusal nothing moved and the attempt is recorded
    as failed; the release answers ``provider_action_required`` and the
    account's payability is recorded, so later releases wait until the
    provider has acted. ``account_id`` is the destination (when known) and
    ``reason`` the ledger's code: ``transfers_capability_inactive`` or
    ``no_such_destination``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        account_id: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id, http_status=http_status)
        self.reason = reason
        self.account_id = account_id


class TransferNotExecuted(GatewayError):  # noqa: N818
    """The request was not executed (rate limited); retry later with the same key."""


class TransferOutcomeUnknown(GatewayError):  # noqa: N818
    """The transfer may or may not exist (timeout, dropped connection, 5xx).

    The payout stays in flight until it is settled by retrying with the same
    key inside Stripe's idempotency window, or by looking the transfer up.
    """


class SendWindowClosed(TransferOutcomeUnknown):
    """The attempt's send window closed: this HTTP attempt was not sent.

    A claim (or a resume's lookup at Stripe) opens a window of
    ``settings.stripe_idempotency_window`` seconds, measured on the process's
    monotonic clock, in which the attempt's request may be sent. Gateways check
    it immediately before every HTTP attempt (see
    [`check_send_window`][payout_ledger.service.ports.check_send_window]), so no request
    can reach Stripe once its key may have been pruned. Earlier HTTP attempts of
    the same call may have reached Stripe, so the outcome is unknown: the payout
    stays in flight and is settled by a resume (a lookup first).
    """

    def __init__(self, message: str = "the attempt's send window closed") -> None:
        super().__init__(message, code="send_window_closed")
