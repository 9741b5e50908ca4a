"""The fake's in-memory Stripe account and its v1 endpoints.

Handlers run under one lock.  Each first validates its parameters, raising
`ParamError` (never saved under an idempotency key) before changing
anything, then executes, raising `StripeError` (saved) for failures
that Stripe only detects while executing, like an unknown destination or an
insufficient balance.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ._clock import FakeClock
from ._errors import ParamError, StripeError, resource_missing
from ._forms import Params
from ._paging import Listable, page
from ._params import (
    amount_param,
    check_known,
    created_filter,
    currency_param,
    description_param,
    metadata_param,
    optional_amount_param,
    required_str,
    str_param,
)
from ._resources import (
    JSON,
    Account,
    Charge,
    Event,
    PaymentIntent,
    RequestInfo,
    Reversal,
    Transfer,
    new_id,
)

__all__ = ["ApiCall", "Handler", "StripeBackend"]

ACCOUNT_TYPES = ("custom", "express", "standard")
CAPABILITY_STATUSES = ("active", "inactive", "pending", "unrequested")
TRANSFER_CAPABILITIES = ("transfers", "crypto_transfers", "legacy_payments")
"""Any one of these, active, lets an account receive transfers."""
_DEFAULT_CURRENCIES = {
    "AU": "aud",
    "CA": "cad",
    "CH": "chf",
    "GB": "gbp",
    "JP": "jpy",
    "US": "usd",
}


@dataclass(frozen=True)
class ApiCall:
    """What a handler gets: parameters, path ids and the request's identity."""

    params: Params
    path_args: Mapping[str, str]
    request: RequestInfo


Handler = Callable[[ApiCall], JSON]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class StripeBackend:
    """State (accounts, transfers, balance, events, ...) and endpoints."""

    def __init__(
        self,
        *,
        clock: FakeClock,
        balance: Mapping[str, int],
        api_version: str,
        on_event: Callable[[JSON], None],
        subscribers: Callable[[str], int],
        livemode: bool = False,
    ) -> None:
        """``on_event`` receives each new event; ``subscribers`` counts the
        webhook endpoints an event type goes to (its ``pending_webhooks``)."""
        self.lock = threading.RLock()
        self._clock = clock
        self._api_version = api_version
        self._livemode = livemode
        """Live or test mode, as the fake's API key says: objects and events carry it."""
        self._on_event = on_event
        self._subscribers = subscribers
        self._seq = itertools.count()
        self._available: dict[str, int] = {c.lower(): a for c, a in balance.items()}
        self._accounts: dict[str, Account] = {}
        self._transfers: dict[str, Transfer] = {}
        self._payment_intents: dict[str, PaymentIntent] = {}
        self._charges: dict[str, Charge] = {}
        self._events: dict[str, Event] = {}
        self._routes = self._build_routes()

    # -- routing ---------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/accounts", self.create_account),
            ("GET", "/v1/accounts/{id}", self.retrieve_account),
            ("POST", "/v1/accounts/{id}", self.update_account),
            ("DELETE", "/v1/accounts/{id}", self.delete_account),
            ("POST", "/v1/transfers", self.create_transfer),
            ("GET", "/v1/transfers", self.list_transfers),
            ("GET", "/v1/transfers/{id}", self.retrieve_transfer),
            ("POST", "/v1/transfers/{id}", self.update_transfer),
            ("POST", "/v1/transfers/{id}/reversals", self.create_reversal),
            ("GET", "/v1/transfers/{id}/reversals", self.list_reversals),
            ("GET", "/v1/transfers/{transfer}/reversals/{id}", self.retrieve_reversal),
            ("GET", "/v1/balance", self.retrieve_balance),
            ("GET", "/v1/events", self.list_events),
            ("GET", "/v1/events/{id}", self.retrieve_event),
            ("GET", "/v1/payment_intents/{id}", self.retrieve_payment_intent),
            ("GET", "/v1/charges/{id}", self.retrieve_charge),
        ]
        return [
            _Route(
                method,
                re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"),
                handler,
            )
            for method, path, handler in table
        ]

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """Find the handler for ``method path`` and its path arguments."""
        for route in self._routes:
            match = route.pattern.match(path)
            if route.method == method and match is not None:
                return route.handler, match.groupdict()
        return None

    # -- accounts --------------------------------------------------------

    def create_account(self, call: ApiCall) -> JSON:
        """``POST /v1/accounts``."""
        params = call.params
        check_known(
            params,
            (
                "type",
                "country",
                "email",
                "business_type",
                "default_currency",
                "metadata",
                "capabilities",
            ),
        )
        account_type = str_param(params, "type") or "custom"
        if account_type not in ACCOUNT_TYPES:
            raise ParamError(
                f"Invalid type: must be one of {', '.join(ACCOUNT_TYPES)}", param="type"
            )
        country = (str_param(params, "country") or "US").upper()
        if not re.fullmatch("[A-Z]{2}", country):
            raise ParamError(f"Invalid country: {country}", param="country")
        default_currency = (
            currency_param(params, "default_currency")
            if "default_currency" in params
            else _DEFAULT_CURRENCIES.get(country, "eur")
        )
        capabilities = _requested_capabilities(params)
        metadata = metadata_param(params, {}) or {}
        email = str_param(params, "email")
        business_type = str_param(params, "business_type")
        with self.lock:
            account = Account(
                id=new_id("acct"),
                created=self._clock.timestamp(),
                seq=next(self._seq),
                type=account_type,
                country=country,
                default_currency=default_currency,
                email=email,
                business_type=business_type,
                metadata=metadata,
                capabilities=capabilities,
                capabilities_checked="capabilities" in params,
            )
            self._accounts[account.id] = account
            return account.to_json()

    def retrieve_account(self, call: ApiCall) -> JSON:
        """``GET /v1/accounts/{id}``."""
        check_known(call.params, ())
        with self.lock:
            return self._account(call.path_args["id"]).to_json()

    def update_account(self, call: ApiCall) -> JSON:
        """``POST /v1/accounts/{id}``: ``metadata``, ``email``, ``business_type``."""
        params = call.params
        check_known(params, ("metadata", "email", "business_type"))
        email = str_param(params, "email")
        business_type = str_param(params, "business_type")
        with self.lock:
            account = self._account(call.path_args["id"])
            metadata = metadata_param(params, account.metadata)
            before = account.to_json()
            if metadata is not None:
                account.metadata = metadata
            if email is not None:
                account.email = email
            if business_type is not None:
                account.business_type = business_type
            self._account_changed(account, before, call.request)
            return account.to_json()

    def delete_account(self, call: ApiCall) -> JSON:
        """``DELETE /v1/accounts/{id}``: the account is gone for good.

        Later retrieves are ``resource_missing`` and transfers to it get
        "No such destination".  The fake allows it whatever the account's
        balance, as Stripe does for test-mode accounts, and emits no event.
        """
        check_known(call.params, ())
        with self.lock:
            account = self._account(call.path_args["id"])
            del self._accounts[account.id]
            return {"id": account.id, "object": "account", "deleted": True}

    def set_payouts_enabled(self, account_id: str, enabled: bool) -> None:
        """Test control: flip ``payouts_enabled`` (emits ``account.updated``)."""
        with self.lock:
            account = self._known_account(account_id)
            before = account.to_json()
            account.payouts_enabled = enabled
            self._account_changed(account, before, RequestInfo())

    def set_capability(self, account_id: str, name: str, status: str) -> None:
        """Test control: set capability ``name`` to ``status`` (``active``,
        ``inactive``, ``pending``; ``unrequested`` removes it).  From then on
        transfers to the account need an active transfers capability.  Emits
        ``account.updated`` when the account changes."""
        if status not in CAPABILITY_STATUSES:
            raise ValueError(
                f"capability status must be one of {', '.join(CAPABILITY_STATUSES)}: {status!r}"
            )
        with self.lock:
            account = self._known_account(account_id)
            before = account.to_json()
            account.capabilities_checked = True
            if status == "unrequested":
                account.capabilities.pop(name, None)
            else:
                account.capabilities[name] = status
            self._account_changed(account, before, RequestInfo())

    def set_disabled_reason(self, account_id: str, reason: str | None) -> None:
        """Test control: set ``requirements.disabled_reason`` (``None`` clears
        it); emits ``account.updated`` when it changes."""
        with self.lock:
            account = self._known_account(account_id)
            before = account.to_json()
            account.disabled_reason = reason
            self._account_changed(account, before, RequestInfo())

    def remove_account(self, account_id: str) -> None:
        """Test control: delete the account as ``DELETE /v1/accounts/{id}`` does."""
        with self.lock:
            del self._accounts[self._known_account(account_id).id]

    def _known_account(self, account_id: str) -> Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise KeyError(f"no such account: {account_id!r}")
        return account

    def _account(self, account_id: str) -> Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise resource_missing("account", account_id)
        return account

    def _account_changed(self, account: Account, before: JSON, request: RequestInfo) -> None:
        after = account.to_json()
        previous = _previous_attributes(before, after)
        if previous:
            self._emit("account.updated", after, request, previous=previous, account=account.id)

    # -- connected accounts' balances ------------------------------------

    def account_available(self, account_id: str, currency: str) -> int:
        """Test inspection: a connected account's available balance."""
        with self.lock:
            return self._known_account(account_id).available.get(currency.lower(), 0)

    def set_account_balance(self, account_id: str, currency: str, amount: int) -> None:
        """Test control: set a connected account's available balance."""
        if amount < 0:
            raise ValueError("a balance cannot be negative in the fake")
        with self.lock:
            self._known_account(account_id).available[currency.lower()] = amount

    # -- transfers -------------------------------------------------------

    def create_transfer(self, call: ApiCall) -> JSON:
        """``POST /v1/transfers``: pays a connected account.

        The destination's available balance is credited at once.  Without
        ``source_transaction`` the platform's available balance must cover
        the amount and is debited (else ``balance_insufficient``).  With it,
        the transfer is funded by that charge, as Stripe's succeeds before the
        charge's funds are available: the platform's available balance is
        neither checked nor debited, and only the charge's amount, less its
        refunds and the transfers already made from it, limits the transfer.
        (The fake credits a payment to the available balance at once and does
        not model the later settlement, so a charge-linked transfer leaves
        that balance as it was.)
        """
        params = call.params
        check_known(
            params,
            (
                "amount",
                "currency",
                "destination",
                "description",
                "metadata",
                "source_transaction",
                "source_type",
                "transfer_group",
            ),
        )
        currency = currency_param(params)
        amount = amount_param(params, currency)
        destination = required_str(params, "destination")
        metadata = metadata_param(params, {}) or {}
        description = description_param(params)
        transfer_group = str_param(params, "transfer_group")
        source_transaction = str_param(params, "source_transaction")
        source_type = str_param(params, "source_type") or "card"
        with self.lock:
            account = self._accounts.get(destination)
            if account is None:
                raise resource_missing("destination", destination, param="destination", status=400)
            _check_can_receive_transfers(account)
            if source_transaction is not None:
                self._check_source_transaction(source_transaction, amount, currency)
            elif self._available.get(currency, 0) < amount:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "You have insufficient available funds in your Stripe account. "
                    "In the fake, use FakeStripe.set_balance() or "
                    "succeed_payment_intent() to add funds.",
                    code="balance_insufficient",
                )
            else:
                self._available[currency] -= amount
            account.available[currency] = account.available.get(currency, 0) + amount
            transfer = Transfer(
                id=new_id("tr"),
                created=self._clock.timestamp(),
                seq=next(self._seq),
                amount=amount,
                currency=currency,
                destination=destination,
                destination_payment=new_id("py"),
                description=description,
                transfer_group=transfer_group,
                source_transaction=source_transaction,
                source_type=source_type,
                metadata=metadata,
                livemode=self._livemode,
            )
            self._transfers[transfer.id] = transfer
            rendered = transfer.to_json()
            self._emit("transfer.created", rendered, call.request)
            return rendered

    def _check_source_transaction(self, charge_id: str, amount: int, currency: str) -> None:
        charge = self._charges.get(charge_id)
        if charge is None:
            raise resource_missing("charge", charge_id, param="source_transaction", status=400)
        if charge.currency != currency:
            raise StripeError(
                400,
                "invalid_request_error",
                f"The currency of source_transaction's balance transaction "
                f"({charge.currency}) must be the same as the transfer currency "
                f"({currency})",
                param="source_transaction",
            )
        already = sum(
            t.amount for t in self._transfers.values() if t.source_transaction == charge_id
        )
        transferable = charge.amount - charge.amount_refunded
        if already + amount > transferable:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Transfers from charge {charge_id} would total {already + amount}, "
                f"more than its amount less refunds ({transferable}).",
                param="amount",
            )

    def retrieve_transfer(self, call: ApiCall) -> JSON:
        """``GET /v1/transfers/{id}``."""
        check_known(call.params, ())
        with self.lock:
            return self._transfer(call.path_args["id"]).to_json()

    def update_transfer(self, call: ApiCall) -> JSON:
        """``POST /v1/transfers/{id}``: ``description`` and ``metadata``."""
        params = call.params
        check_known(params, ("description", "metadata"))
        description = description_param(params)
        with self.lock:
            transfer = self._transfer(call.path_args["id"])
            metadata = metadata_param(params, transfer.metadata)
            before = transfer.to_json()
            if metadata is not None:
                transfer.metadata = metadata
            if description is not None:
                transfer.description = description
            after = transfer.to_json()
            previous = _previous_attributes(before, after)
            if previous:
                self._emit("transfer.updated", after, call.request, previous=previous)
            return after

    def list_transfers(self, call: ApiCall) -> JSON:
        """``GET /v1/transfers``, newest first, filtered and paged."""
        params = call.params
        check_known(
            params,
            (
                "created",
                "destination",
                "transfer_group",
                "limit",
                "starting_after",
                "ending_before",
            ),
        )
        created = created_filter(params)
        destination = str_param(params, "destination")
        group = str_param(params, "transfer_group")

        def wanted(transfer: Transfer) -> bool:
            return (
                created(transfer.created)
                and (destination is None or transfer.destination == destination)
                and (group is None or transfer.transfer_group == group)
            )

        with self.lock:
            return page(
                list(self._transfers.values()),
                wanted,
                params,
                "/v1/transfers",
                "transfer",
            )

    def _transfer(self, transfer_id: str) -> Transfer:
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            raise resource_missing("transfer", transfer_id)
        return transfer

    # -- reversals -------------------------------------------------------

    def create_reversal(self, call: ApiCall) -> JSON:
        """``POST /v1/transfers/{id}/reversals``: moves money back from the
        destination's available balance to the platform's.

        A reversal the destination's available balance cannot cover is
        refused (``balance_insufficient``) while executing, so the refusal is
        saved under the idempotency key and replayed on retry.
        """
        params = call.params
        check_known(params, ("amount", "description", "metadata", "refund_application_fee"))
        amount = optional_amount_param(params)
        description_param(params)  # validated; reversals do not render it
        metadata = metadata_param(params, {}) or {}
        with self.lock:
            transfer = self._transfer(call.path_args["id"])
            remaining = transfer.amount - transfer.amount_reversed
            if remaining == 0:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Transfer {transfer.id} has already been fully reversed.",
                )
            if amount is None:
                amount = remaining
            if amount > remaining:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Reversal amount ({amount}) is greater than the amount of "
                    f"transfer {transfer.id} not yet reversed ({remaining}).",
                    param="amount",
                )
            destination = self._accounts.get(transfer.destination)
            funds = 0 if destination is None else destination.available.get(transfer.currency, 0)
            if destination is None or funds < amount:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "Insufficient funds in the destination account to reverse this "
                    f"transfer: it has {funds} {transfer.currency} available, the "
                    f"reversal needs {amount}.",
                    code="balance_insufficient",
                )
            before = transfer.to_json()
            reversal = Reversal(
                id=new_id("trr"),
                created=self._clock.timestamp(),
                seq=next(self._seq),
                amount=amount,
                currency=transfer.currency,
                transfer=transfer.id,
                destination_payment_refund=new_id("pyr"),
                metadata=metadata,
            )
            transfer.reversals.append(reversal)
            destination.available[transfer.currency] = funds - amount
            if transfer.source_transaction is None:
                # A charge-linked transfer never debited the platform's
                # available balance (see create_transfer): nothing to give back.
                self._available[transfer.currency] = (
                    self._available.get(transfer.currency, 0) + amount
                )
            after = transfer.to_json()
            previous = _previous_attributes(before, after)
            self._emit("transfer.reversed", after, call.request, previous=previous)
            return reversal.to_json()

    def list_reversals(self, call: ApiCall) -> JSON:
        """``GET /v1/transfers/{id}/reversals``, newest first, paged."""
        check_known(call.params, ("limit", "starting_after", "ending_before"))
        with self.lock:
            transfer = self._transfer(call.path_args["id"])
            return page(
                transfer.reversals,
                lambda _r: True,
                call.params,
                f"/v1/transfers/{transfer.id}/reversals",
                "transfer_reversal",
            )

    def retrieve_reversal(self, call: ApiCall) -> JSON:
        """``GET /v1/transfers/{transfer}/reversals/{id}``."""
        check_known(call.params, ())
        with self.lock:
            transfer = self._transfer(call.path_args["transfer"])
            for reversal in transfer.reversals:
                if reversal.id == call.path_args["id"]:
                    return reversal.to_json()
            raise resource_missing("transfer_reversal", call.path_args["id"])

    # -- balance ---------------------------------------------------------

    def retrieve_balance(self, call: ApiCall) -> JSON:
        """``GET /v1/balance``: the platform's available balance per currency."""
        check_known(call.params, ())
        with self.lock:
            currencies = sorted(self._available)
            return {
                "object": "balance",
                "available": [
                    {
                        "amount": self._available[c],
                        "currency": c,
                        "source_types": {"card": self._available[c]},
                    }
                    for c in currencies
                ],
                "livemode": self._livemode,
                "pending": [
                    {"amount": 0, "currency": c, "source_types": {"card": 0}} for c in currencies
                ],
            }

    def available(self, currency: str) -> int:
        """Test inspection: the available balance in ``currency``."""
        with self.lock:
            return self._available.get(currency.lower(), 0)

    def set_balance(self, currency: str, amount: int) -> None:
        """Test control: set the available balance in ``currency``."""
        if amount < 0:
            raise ValueError("a balance cannot be negative in the fake")
        with self.lock:
            self._available[currency.lower()] = amount

    # -- payment intents -------------------------------------------------

    def succeed_payment_intent(
        self,
        amount: int,
        currency: str,
        metadata: Mapping[str, str] | None,
        transfer_group: str | None,
    ) -> JSON:
        """Test control: a customer paid.  Credits the available balance at
        once (no fees, no pending period) and emits ``payment_intent.created``
        then ``payment_intent.succeeded``."""
        if amount < 1:
            raise ValueError("amount must be a positive number of minor units")
        currency = currency.lower()
        with self.lock:
            charge_id = new_id("ch")
            intent = PaymentIntent(
                id=new_id("pi"),
                created=self._clock.timestamp(),
                seq=next(self._seq),
                amount=amount,
                currency=currency,
                latest_charge=charge_id,
                metadata=dict(metadata or {}),
                transfer_group=transfer_group,
                livemode=self._livemode,
            )
            self._payment_intents[intent.id] = intent
            self._charges[charge_id] = Charge(
                id=charge_id,
                created=intent.created,
                seq=next(self._seq),
                amount=amount,
                currency=currency,
                payment_intent=intent.id,
                balance_transaction=new_id("txn"),
                metadata=dict(intent.metadata),
                transfer_group=transfer_group,
                livemode=self._livemode,
            )
            self._available[currency] = self._available.get(currency, 0) + amount
            rendered = intent.to_json()
            self._emit("payment_intent.created", rendered, RequestInfo())
            self._emit("payment_intent.succeeded", rendered, RequestInfo())
            return rendered

    def retrieve_payment_intent(self, call: ApiCall) -> JSON:
        """``GET /v1/payment_intents/{id}``."""
        check_known(call.params, ())
        with self.lock:
            intent = self._payment_intents.get(call.path_args["id"])
            if intent is None:
                raise resource_missing("payment_intent", call.path_args["id"])
            return intent.to_json()

    def retrieve_charge(self, call: ApiCall) -> JSON:
        """``GET /v1/charges/{id}``."""
        check_known(call.params, ())
        with self.lock:
            charge = self._charges.get(call.path_args["id"])
            if charge is None:
                raise resource_missing("charge", call.path_args["id"])
            return charge.to_json()

    # -- events ----------------------------------------------------------

    @property
    def event_api_version(self) -> str:
        """The API version new events are rendered with."""
        with self.lock:
            return self._api_version

    def set_event_api_version(self, version: str) -> None:
        """Test control: render events created from now on with ``version``."""
        if not version:
            raise ValueError("an API version cannot be empty")
        with self.lock:
            self._api_version = version

    def list_events(self, call: ApiCall) -> JSON:
        """``GET /v1/events``: ``type`` (``*`` wildcards) or ``types``, ``created``."""
        params = call.params
        check_known(
            params,
            ("type", "types", "created", "limit", "starting_after", "ending_before"),
        )
        created = created_filter(params)
        patterns = _event_type_patterns(params)

        def wanted(event: Event) -> bool:
            return created(event.created) and (
                patterns is None or any(fnmatch.fnmatchcase(event.type, p) for p in patterns)
            )

        with self.lock:
            return page(list(self._events.values()), wanted, params, "/v1/events", "event")

    def retrieve_event(self, call: ApiCall) -> JSON:
        """``GET /v1/events/{id}``."""
        check_known(call.params, ())
        with self.lock:
            event = self._events.get(call.path_args["id"])
            if event is None:
                raise resource_missing("event", call.path_args["id"])
            return event.to_json()

    def _emit(
        self,
        event_type: str,
        data_object: JSON,
        request: RequestInfo,
        *,
        previous: JSON | None = None,
        account: str | None = None,
    ) -> None:
        event = Event(
            id=new_id("evt"),
            created=self._clock.timestamp(),
            seq=next(self._seq),
            type=event_type,
            api_version=self._api_version,
            data_object=copy.deepcopy(data_object),
            request=request,
            pending_webhooks=self._subscribers(event_type),
            previous_attributes=copy.deepcopy(previous),
            account=account,
            livemode=self._livemode,
        )
        self._events[event.id] = event
        self._on_event(event.to_json())

    # -- inspection ------------------------------------------------------

    def snapshot(self, kind: str) -> list[JSON]:
        """Test inspection: every object of ``kind`` in creation order."""
        with self.lock:
            sources: dict[str, Sequence[Listable]] = {
                "accounts": list(self._accounts.values()),
                "transfers": list(self._transfers.values()),
                "payment_intents": list(self._payment_intents.values()),
                "events": list(self._events.values()),
            }
            return [copy.deepcopy(item.to_json()) for item in sources[kind]]


def _check_can_receive_transfers(account: Account) -> None:
    """Refuse a destination without an active transfers-like capability.

    Accounts created without requesting capabilities (and never given one by a
    test control) are not checked: the fake treats them as fully onboarded.
    """
    if not account.capabilities_checked:
        return
    if any(account.capabilities.get(name) == "active" for name in TRANSFER_CAPABILITIES):
        return
    raise StripeError(
        400,
        "invalid_request_error",
        "Your destination account needs to have at least one of the following "
        f"capabilities enabled: {', '.join(TRANSFER_CAPABILITIES)}",
        code="insufficient_capabilities_for_transfer",
        param="destination",
    )


def _previous_attributes(before: JSON, after: JSON) -> JSON:
    """Stripe's ``previous_attributes``: the old values of what changed only,
    nested hashes narrowed to their changed keys (a key that did not exist
    before is ``None``)."""
    previous: JSON = {}
    for name in before.keys() | after.keys():
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            previous[name] = _previous_attributes(old, new)
        else:
            previous[name] = old
    return previous


def _requested_capabilities(params: Params) -> dict[str, str]:
    raw = params.get("capabilities")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamError("Invalid hash: capabilities", param="capabilities")
    capabilities: dict[str, str] = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("requested") not in ("true", "false"):
            raise ParamError(
                f"Invalid capabilities[{name}]: expected requested=true|false",
                param=f"capabilities[{name}][requested]",
            )
        if spec["requested"] == "true":
            # Onboarding is instant in the fake: requested capabilities are active.
            capabilities[name] = "active"
    return capabilities


def _event_type_patterns(params: Params) -> list[str] | None:
    if "type" in params and "types" in params:
        raise ParamError(
            "You may only specify one of these parameters: type, types.",
            param="type",
            code="parameters_exclusive",
        )
    single = str_param(params, "type")
    if single is not None:
        return [single]
    many = params.get("types")
    if many is None:
        return None
    if not isinstance(many, list) or not all(isinstance(t, str) for t in many):
        raise ParamError("Invalid array: types must be a list of strings", param="types")
    return [t for t in many if isinstance(t, str)]
