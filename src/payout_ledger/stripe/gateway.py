"""StripeTransferGateway: Connect transfers through the stripe SDK's StripeClient.

How Stripe's errors become ledger outcomes (the docs' "Stripe" page explains why):

| Stripe error (HTTP) | outcome | the ledger records |
|---|---|---|
| InvalidRequest, destination unpayable (see below) | DestinationUnpayable | TransferFailed (*) |
| Card, InvalidRequest, Permission, Authentication (4xx) | TransferDeclined | TransferFailed |
| RateLimitError (429) | TransferNotExecuted | nothing; retried with the same key |
| APIConnectionError (timeout, dropped connection) | TransferOutcomeUnknown | nothing |
| APIError (5xx, and 409 key in use) | TransferOutcomeUnknown | nothing |
| IdempotencyError, any other StripeError | TransferOutcomeUnknown | nothing |

(*) ``insufficient_capabilities_for_transfer``, or ``resource_missing`` for the
destination ("No such destination"): a [`TransferDeclined`][payout_ledger.TransferDeclined]
whose ``TransferFailed`` is saved with the account's payability report; the
release answers ``provider_action_required``.

Every request asks for the API version the library is tested against,
[`STRIPE_API_VERSION`][payout_ledger.settings.STRIPE_API_VERSION] (the
``Stripe-Version`` header).

The idempotency key goes in the request *options*: inside the params dict the
SDK would send it as a form field and invent a random key of its own.

Every try of a POST, the SDK's own retries included, first checks the
attempt's send window ([`check_send_window`][payout_ledger.service.ports.check_send_window]):
once it has closed nothing more is sent and the call ends as
[`SendWindowClosed`][payout_ledger.SendWindowClosed], an unknown outcome.

Under a rate governor (bulk releases, [`governor`][payout_ledger.service.governor])
every try, GETs included, first waits for a token of the store-shared budget; a
429 backs the whole budget off and is retried by the governor alone (the SDK's
own retry of a 429 is off then), each try checking the send window after its wait.

Every error Stripe answers (or the SDK raises for want of an answer) is counted
here, once, by code and operation (``payout_ledger.stripe.errors``, see
[`telemetry`][payout_ledger.adapters.telemetry]): transfers, reversals and lookups
alike, after the SDK's own retries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import stripe
from stripe.params import TransferCreateParams, TransferListParams

from payout_ledger.adapters import telemetry
from payout_ledger.errors import (
    ConfigurationError,
    DestinationUnpayable,
    GatewayError,
    TransferDeclined,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.service.governor import (
    current_governor,
    governed_request,
    governed_request_async,
)
from payout_ledger.service.ports import (
    ReversalCreated,
    ReversalRequest,
    StripeAccount,
    StripeCharge,
    StripeReversal,
    StripeTransfer,
    TransferRequest,
    TransferResult,
    check_send_window,
)
from payout_ledger.settings import STRIPE_API_VERSION, LedgerSettings, livemode_of_key

__all__ = ["StripeTransfer", "StripeTransferGateway", "classify_error"]

_DECLINED = (
    stripe.CardError,
    stripe.InvalidRequestError,
    stripe.PermissionError,
    stripe.AuthenticationError,
)


def classify_error(exc: stripe.StripeError, *, destination: str | None = None) -> GatewayError:
    """Map a Stripe SDK error to the ledger's outcome (see the module's table).

    ``destination`` is the transfer's connected account, named by
    [`DestinationUnpayable`][payout_ledger.DestinationUnpayable] when Stripe
    refuses it because that account cannot be paid.
    """
    code = _error_code(exc)
    message = _safe_message(exc)
    kwargs: dict[str, Any] = {
        "code": code,
        "request_id": exc.request_id,
        "http_status": exc.http_status,
    }
    if isinstance(exc, stripe.IdempotencyError):
        return TransferOutcomeUnknown(message, **kwargs)
    unpayable = _unpayable_reason(exc, code, message)
    if unpayable is not None:
        return DestinationUnpayable(message, reason=unpayable, account_id=destination, **kwargs)
    if isinstance(exc, _DECLINED):
        return TransferDeclined(message, **kwargs)
    if isinstance(exc, stripe.RateLimitError):
        return TransferNotExecuted(message, **kwargs)
    return TransferOutcomeUnknown(message, **kwargs)


def _unpayable_reason(exc: stripe.StripeError, code: str | None, message: str) -> str | None:
    """The ledger's reason when Stripe refused because the destination cannot be paid."""
    if not isinstance(exc, stripe.InvalidRequestError):
        return None
    if code == "insufficient_capabilities_for_transfer":
        return "transfers_capability_inactive"
    param = getattr(exc, "param", None) or getattr(exc.error, "param", None)
    if code == "resource_missing" and (
        param == "destination" or message.startswith("No such destination")
    ):
        return "no_such_destination"
    return None


class StripeTransferGateway:
    """A [`TransferGateway`][payout_ledger.TransferGateway] on Stripe Connect transfers.

    ``api_base`` points the SDK elsewhere (the fake Stripe server in tests).
    ``timeout`` is seconds per HTTP request; ``max_network_retries`` are the
    SDK's own retries, which reuse our idempotency key. The API key is kept
    inside the SDK client and never appears in messages or logs.

    Raises [`ConfigurationError`][payout_ledger.ConfigurationError] when
    ``api_key`` is not a str, or not a secret or restricted key (``sk_``/``rk_``,
    printable ASCII without spaces); the message never quotes the key.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 30.0,
        max_network_retries: int = 2,
        stripe_account: str | None = None,
    ) -> None:
        # Never echo the key: a wrong one may still be someone's secret. A key with
        # whitespace or control characters would fail later, in an HTTP header
        # error that quotes it.
        if not isinstance(api_key, str):
            raise ConfigurationError(
                f"a Stripe secret key is a str (sk_... or rk_...), not {type(api_key).__name__}"
            )
        if not (
            api_key.startswith(("sk_", "rk_"))
            and api_key.isascii()
            and api_key.isprintable()
            and " " not in api_key
        ):
            raise ConfigurationError(
                "a Stripe secret key (sk_... or rk_..., printable ASCII without spaces) is required"
            )
        self.livemode = livemode_of_key(api_key)
        """True for a live key, False for a test key (which webhooks' ``livemode`` must match)."""
        http_client = _WindowedRequestsClient(
            timeout=timeout, async_fallback_client=_WindowedHTTPXClient(timeout=timeout)
        )
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=http_client,
            stripe_account=stripe_account,
            stripe_version=STRIPE_API_VERSION,
        )

    @classmethod
    def from_settings(cls, settings: LedgerSettings) -> StripeTransferGateway:
        """A gateway configured by ``settings.stripe_*``."""
        if settings.stripe_api_key is None:
            raise ConfigurationError("settings.stripe_api_key is not set")
        return cls(
            settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            timeout=settings.stripe_timeout,
            max_network_retries=settings.stripe_max_network_retries,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<api key hidden>)"

    @staticmethod
    def _params(request: TransferRequest) -> TransferCreateParams:
        params: TransferCreateParams = {
            "amount": request.amount,
            "currency": request.currency,
            "destination": request.destination,
            "transfer_group": request.transfer_group,
            "metadata": dict(request.metadata),
        }
        if request.source_transaction is not None:
            params["source_transaction"] = request.source_transaction
        if request.description is not None:
            params["description"] = request.description
        return params

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        try:
            transfer = self.client.v1.transfers.create(
                self._params(request), options={"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            _count(exc, "create_transfer")
            raise classify_error(exc, destination=request.destination) from exc
        return _result(transfer)

    async def create_transfer_async(self, request: TransferRequest) -> TransferResult:
        """The same as create_transfer, on the SDK's async transport (httpx)."""
        try:
            transfer = await self.client.v1.transfers.create_async(
                self._params(request), options={"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            _count(exc, "create_transfer")
            raise classify_error(exc, destination=request.destination) from exc
        return _result(transfer)

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> Iterator[StripeTransfer]:
        """Every transfer matching the filters, newest first, across pages.

        Raises [`TransferOutcomeUnknown`][payout_ledger.TransferOutcomeUnknown]
        when Stripe cannot be asked: an unanswered lookup proves nothing.
        """
        params: TransferListParams = {"limit": 100}
        if transfer_group is not None:
            params["transfer_group"] = transfer_group
        created: dict[str, int] = {}
        if created_gte is not None:
            created["gte"] = created_gte
        if created_lt is not None:
            created["lt"] = created_lt
        if created:
            params["created"] = created  # type: ignore[typeddict-item,unused-ignore]
        try:
            for transfer in self.client.v1.transfers.list(params).auto_paging_iter():
                yield _stripe_transfer(transfer)
        except stripe.StripeError as exc:
            _count(exc, "list_transfers")
            raise _unanswered(exc, "could not list transfers") from exc

    def create_reversal(self, request: ReversalRequest) -> ReversalCreated:
        """Reverse (part of) a transfer, idempotently by the request's key.

        Errors are classified as for transfers: a refusal (``balance_insufficient``
        when the connected account lacks the funds, more than is not yet
        reversed) is [`TransferDeclined`][payout_ledger.TransferDeclined].
        """
        try:
            reversal = self.client.v1.transfers.reversals.create(
                request.transfer_id,
                {"amount": request.amount, "metadata": dict(request.metadata)},
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as exc:
            _count(exc, "create_reversal")
            raise classify_error(exc) from exc
        response = reversal.last_response
        return ReversalCreated(
            reversal_id=reversal.id, request_id=response.request_id if response else None
        )

    def list_reversals(self, transfer_id: str) -> Iterator[StripeReversal]:
        """Every reversal of the transfer, newest first, across pages."""
        try:
            listing = self.client.v1.transfers.reversals.list(transfer_id, {"limit": 100})
            for reversal in listing.auto_paging_iter():
                yield StripeReversal.from_stripe(reversal.to_dict())
        except stripe.StripeError as exc:
            _count(exc, "list_reversals")
            raise _unanswered(exc, "could not list reversals") from exc

    def retrieve_charge(self, charge_id: str) -> StripeCharge:
        """The charge a release names as its source transaction."""
        try:
            charge = self.client.v1.charges.retrieve(charge_id)
        except stripe.StripeError as exc:
            _count(exc, "retrieve_charge")
            raise _lookup_error(exc, "charge") from exc
        return StripeCharge(
            id=charge.id,
            amount=int(charge.amount),
            amount_refunded=int(charge.amount_refunded or 0),
            currency=str(charge.currency),
        )

    def latest_charge(self, payment_intent_id: str) -> str:
        """The PaymentIntent's ``latest_charge``."""
        try:
            intent = self.client.v1.payment_intents.retrieve(payment_intent_id)
        except stripe.StripeError as exc:
            _count(exc, "retrieve_payment_intent")
            raise _lookup_error(exc, "payment intent") from exc
        charge = intent.latest_charge
        if charge is None:
            raise TransferDeclined(
                f"payment intent {payment_intent_id} has no charge yet", code="no_charge"
            )
        return charge if isinstance(charge, str) else str(charge.id)

    def retrieve_account(self, account_id: str) -> StripeAccount:
        """The connected account's payability as Stripe has it now
        ([`AccountLookup`][payout_ledger.service.ports.AccountLookup]).

        An account Stripe does not know (``resource_missing``: deleted, or never
        connected) is ``deleted=True``; any other error raises
        [`GatewayError`][payout_ledger.GatewayError] and proves nothing.
        """
        try:
            account = self.client.v1.accounts.retrieve(account_id)
        except stripe.InvalidRequestError as exc:
            _count(exc, "retrieve_account")
            if _error_code(exc) == "resource_missing":
                return StripeAccount(
                    id=account_id,
                    payouts_enabled=None,
                    transfers=None,
                    disabled_reason=None,
                    deleted=True,
                )
            raise _lookup_error(exc, "account") from exc
        except stripe.StripeError as exc:
            _count(exc, "retrieve_account")
            raise _lookup_error(exc, "account") from exc
        return StripeAccount.from_stripe(account.to_dict())


def _count(exc: stripe.StripeError, operation: str) -> None:
    """Count one error from Stripe (the only place they are counted)."""
    telemetry.count_stripe_error(_error_code(exc), operation)


def _lookup_error(exc: stripe.StripeError, what: str) -> GatewayError:
    """A definite "no such ..." is TransferDeclined; anything else proves nothing."""
    if isinstance(exc, stripe.InvalidRequestError | stripe.PermissionError):
        return TransferDeclined(f"{what}: {_safe_message(exc)}", **_details(exc))
    return _unanswered(exc, f"could not look up the {what}")


def _unanswered(exc: stripe.StripeError, doing: str) -> TransferOutcomeUnknown:
    """A read Stripe did not answer: it proves nothing."""
    return TransferOutcomeUnknown(f"{doing}: {_safe_message(exc)}", **_details(exc))


def _details(exc: stripe.StripeError) -> dict[str, Any]:
    return {"code": _error_code(exc), "request_id": exc.request_id, "http_status": exc.http_status}


class _WindowedRequestsClient(stripe.RequestsClient):
    """The SDK's requests transport, checking the send window before every POST.

    Under a rate governor ([`governed_by`][payout_ledger.service.governor.governed_by])
    every try first waits for a token of the shared budget, and a 429 is retried
    by the governor only: the SDK's own retry of it is turned off.
    """

    def request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def send() -> Any:
            if method.lower() == "post":
                check_send_window()
            return super(_WindowedRequestsClient, self).request(method, *args, **kwargs)

        return governed_request(send)

    def _should_retry(self, response: Any, *args: Any, **kwargs: Any) -> bool:
        return _sdk_may_retry(response) and bool(super()._should_retry(response, *args, **kwargs))


class _WindowedHTTPXClient(stripe.HTTPXClient):
    """The SDK's async transport (httpx), checking the send window before every POST.

    It also sends the SDK's encoded form body as httpx's ``content=``. The SDK
    passes it as ``data=`` (a string), which httpx deprecates for raw bodies
    with a ``DeprecationWarning`` raised inside the request: a host whose
    warnings are errors (``-W error``) would see every async transfer end as a
    connection error, an unknown outcome. The bytes on the wire are the same.
    """

    async def request_async(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def send() -> Any:
            if method.lower() == "post":
                check_send_window()
            return await super(_WindowedHTTPXClient, self).request_async(method, *args, **kwargs)

        return await governed_request_async(send)

    def _should_retry(self, response: Any, *args: Any, **kwargs: Any) -> bool:
        return _sdk_may_retry(response) and bool(super()._should_retry(response, *args, **kwargs))

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> list[Any]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        if isinstance(kwargs.get("data"), bytes | str):
            kwargs["content"] = kwargs.pop("data")
        return [args, kwargs]


def _sdk_may_retry(response: Any) -> bool:
    """Whether the SDK may retry this response itself: not a 429 under a governor,
    which has retried it already (or was told not to)."""
    status = response[1] if isinstance(response, tuple) and len(response) == 3 else None
    return not (status == 429 and current_governor() is not None)


def _result(transfer: stripe.Transfer) -> TransferResult:
    response = transfer.last_response
    return TransferResult(
        transfer_id=transfer.id, request_id=response.request_id if response else None
    )


def _stripe_transfer(t: stripe.Transfer) -> StripeTransfer:
    return StripeTransfer.from_stripe(t.to_dict())


def _error_code(exc: stripe.StripeError) -> str | None:
    # The SDK leaves `code` unset on some error classes (429, 401, 403, 5xx) even
    # when Stripe's body has one; read it from the parsed error first.
    return exc.code or getattr(exc.error, "code", None) or _error_type(exc)


def _error_type(exc: stripe.StripeError) -> str | None:
    error = exc.error
    return getattr(error, "type", None) if error is not None else type(exc).__name__


def _safe_message(exc: stripe.StripeError) -> str:
    # Stripe's messages mask keys already; the SDK's own connection errors can
    # echo request details, so keep only the first line.
    text = exc.user_message or type(exc).__name__
    return text.splitlines()[0][:500]
