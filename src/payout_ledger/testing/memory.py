"""In-memory adapters for tests: a provider directory and a transfer gateway."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from payout_ledger.errors import DestinationUnpayable, GatewayError, TransferDeclined
from payout_ledger.service.ports import (
    ReversalCreated,
    ReversalRequest,
    ServiceProvider,
    StripeAccount,
    StripeReversal,
    StripeTransfer,
    TransferRequest,
    TransferResult,
    check_send_window,
)

__all__ = ["InMemoryProviderDirectory", "InMemoryTransferGateway", "RecordedTransfer"]


class InMemoryProviderDirectory:
    """A [`ProviderDirectory`][payout_ledger.ProviderDirectory] over a dict."""

    def __init__(self, providers: Iterable[ServiceProvider] = ()) -> None:
        self._providers = {p.id: p for p in providers}
        self._lock = threading.Lock()

    def add(self, provider: ServiceProvider) -> None:
        """Add or replace a provider (e.g. after onboarding)."""
        with self._lock:
            self._providers[provider.id] = provider

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        with self._lock:
            return self._providers.get(provider_id)


@dataclass(frozen=True)
class RecordedTransfer:
    """A transfer the in-memory gateway made."""

    transfer_id: str
    amount: int
    currency: str
    destination: str
    idempotency_key: str
    transfer_group: str
    metadata: dict[str, str] = field(default_factory=dict)
    created: int = 0
    amount_reversed: int = 0

    def as_stripe(self) -> StripeTransfer:
        """The transfer as Stripe would report it."""
        return StripeTransfer(
            id=self.transfer_id,
            amount=self.amount,
            currency=self.currency,
            destination=self.destination,
            transfer_group=self.transfer_group,
            metadata=dict(self.metadata),
            created=self.created,
            amount_reversed=self.amount_reversed,
            reversed=self.amount_reversed >= self.amount,
        )


@dataclass
class _Fault:
    error: GatewayError
    after_commit: bool


class InMemoryTransferGateway:
    """A [`TransferGateway`][payout_ledger.TransferGateway] that keeps transfers in memory.

    Idempotent by key like Stripe: the same key with the same parameters returns
    the transfer made first; with other parameters it is declined with
    ``idempotency_error``. Failures are programmed with
    [`fail_next`][payout_ledger.testing.InMemoryTransferGateway.fail_next];
    ``latency`` (seconds) is slept inside every call, outside the lock, so
    concurrent callers really overlap.
    """

    livemode = False
    """A test double: it takes test-mode Stripe events."""

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.calls = 0
        self._transfers: list[RecordedTransfer] = []
        self._by_key: dict[str, RecordedTransfer] = {}
        self._faults: deque[_Fault] = deque()
        self._list_faults: deque[GatewayError] = deque()
        self.list_calls = 0
        self.account_calls = 0
        self._accounts: dict[str, StripeAccount] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.reversal_calls = 0
        self._reversal_by_key: dict[str, tuple[StripeReversal, ReversalRequest]] = {}
        self._reversal_by_id: dict[str, tuple[StripeReversal, ReversalRequest]] = {}

    @property
    def transfers(self) -> list[RecordedTransfer]:
        """Every transfer made, oldest first."""
        with self._lock:
            return list(self._transfers)

    def transfers_for(self, event_service_id: str) -> list[RecordedTransfer]:
        """The transfers made for one event service."""
        return [t for t in self.transfers if t.metadata.get("event_service_id") == event_service_id]

    def fail_next(self, error: GatewayError, *, times: int = 1, after_commit: bool = False) -> None:
        """Make the next ``times`` calls raise ``error``.

        With ``after_commit=True`` the transfer is made first and the error is
        raised afterwards: the response was lost after Stripe committed.
        """
        with self._lock:
            self._faults.extend(_Fault(error, after_commit) for _ in range(times))

    def decline_next(
        self, code: str = "balance_insufficient", message: str = "Insufficient funds"
    ) -> None:
        """Make the next call a definite refusal."""
        self.fail_next(TransferDeclined(message, code=code, http_status=400))

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        check_send_window()  # one call is one try, as a gateway must check before each
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is not None and not fault.after_commit:
                raise fault.error
            transfer = self._by_key.get(request.idempotency_key)
            if transfer is None:
                self._check_destination_locked(request.destination)
                transfer = RecordedTransfer(
                    transfer_id=f"tr_mem_{next(self._ids):06d}",
                    amount=request.amount,
                    currency=request.currency,
                    destination=request.destination,
                    idempotency_key=request.idempotency_key,
                    transfer_group=request.transfer_group,
                    metadata=dict(request.metadata),
                    created=int(time.time()),
                )
                self._by_key[request.idempotency_key] = transfer
                self._transfers.append(transfer)
            elif _params(transfer) != _params(request):
                raise TransferDeclined(
                    "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with.",
                    code="idempotency_error",
                    http_status=400,
                )
            if fault is not None:
                raise fault.error
            return TransferResult(transfer_id=transfer.transfer_id)

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> list[StripeTransfer]:
        """Transfers matching the filters, newest first, as Stripe lists them."""
        with self._lock:
            self.list_calls += 1
            if self._list_faults:
                raise self._list_faults.popleft()
            found = newest_matching(
                self._transfers,
                transfer_group=transfer_group,
                created_gte=created_gte,
                created_lt=created_lt,
            )
        return [t.as_stripe() for t in found]

    def fail_next_lookup(self, error: GatewayError) -> None:
        """Make the next list_transfers call raise ``error``."""
        with self._lock:
            self._list_faults.append(error)

    def reverse(self, transfer_id: str, amount: int | None = None) -> RecordedTransfer:
        """Reverse (part of) a transfer, as the platform would at Stripe by hand
        (``ValueError`` beyond its amount, ``KeyError`` for an unknown transfer)."""
        with self._lock:
            return self._add_reversed_locked(transfer_id, amount)

    def _add_reversed_locked(self, transfer_id: str, amount: int | None) -> RecordedTransfer:
        """Add ``amount`` (None: all that is left) to the transfer's reversed amount."""
        for i, t in enumerate(self._transfers):
            if t.transfer_id == transfer_id:
                remaining = t.amount - t.amount_reversed
                amount = remaining if amount is None else amount
                if amount > remaining:
                    raise ValueError(
                        f"Reversal amount ({amount}) is greater than the amount of "
                        f"transfer {transfer_id} not yet reversed ({remaining})."
                    )
                updated = replace(t, amount_reversed=t.amount_reversed + amount)
                self._transfers[i] = updated
                if t.idempotency_key in self._by_key:  # a pruned key stays pruned
                    self._by_key[t.idempotency_key] = updated
                return updated
        raise KeyError(transfer_id)

    def forget_keys(self) -> None:
        """Drop every stored idempotency key, as Stripe does after 24 hours."""
        with self._lock:
            self._by_key.clear()
            self._reversal_by_key.clear()

    @property
    def reversals(self) -> list[StripeReversal]:
        """Every reversal made, oldest first."""
        with self._lock:
            return [r for r, _ in self._reversal_by_id.values()]

    def create_reversal(self, request: ReversalRequest) -> ReversalCreated:
        """Reverse (part of) a transfer, idempotently by key, as Stripe does: never
        more than is not yet reversed (``TransferDeclined``)."""
        check_send_window()
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls += 1
            self.reversal_calls += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is not None and not fault.after_commit:
                raise fault.error
            made = self._reversal_by_key.get(request.idempotency_key)
            if made is None:
                reversal = self._reverse_locked(request)
                self._reversal_by_key[request.idempotency_key] = (reversal, request)
            elif made[1] != request:
                raise TransferDeclined(
                    "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with.",
                    code="idempotency_error",
                    http_status=400,
                )
            else:
                reversal = made[0]
            if fault is not None:
                raise fault.error
            return ReversalCreated(reversal_id=reversal.id)

    def _reverse_locked(self, request: ReversalRequest) -> StripeReversal:
        try:
            transfer = self._add_reversed_locked(request.transfer_id, request.amount)
        except ValueError as exc:
            raise TransferDeclined(
                str(exc), code="invalid_request_error", http_status=400
            ) from None
        except KeyError:
            raise TransferDeclined(
                f"No such transfer: '{request.transfer_id}'",
                code="resource_missing",
                http_status=404,
            ) from None
        reversal = StripeReversal(
            id=f"trr_mem_{next(self._ids):06d}",
            transfer=transfer.transfer_id,
            amount=request.amount,
            currency=transfer.currency,
            metadata=dict(request.metadata),
            created=int(time.time()),
        )
        self._reversal_by_id[reversal.id] = (reversal, request)
        return reversal

    def list_reversals(self, transfer_id: str) -> list[StripeReversal]:
        """The transfer's reversals, newest first."""
        with self._lock:
            self.list_calls += 1
            if self._list_faults:
                raise self._list_faults.popleft()
            return [
                r for r, _ in reversed(self._reversal_by_id.values()) if r.transfer == transfer_id
            ]

    # Connected accounts: unknown accounts are payable, as if onboarded.

    def set_account(
        self,
        account_id: str,
        *,
        transfers: str | None = "active",
        payouts_enabled: bool | None = True,
        disabled_reason: str | None = None,
    ) -> None:
        """Set a connected account's state as Stripe would report it. Transfers to
        it are refused (``DestinationUnpayable``) while ``transfers`` is set and
        not ``active``; ``disabled_reason`` and ``payouts_enabled`` are only reported."""
        with self._lock:
            self._accounts[account_id] = StripeAccount(
                id=account_id,
                payouts_enabled=payouts_enabled,
                transfers=transfers,
                disabled_reason=disabled_reason,
            )

    def delete_account(self, account_id: str) -> None:
        """Delete a connected account: transfers get "No such destination" and
        ``retrieve_account`` reports it deleted."""
        with self._lock:
            self._accounts[account_id] = StripeAccount(
                id=account_id,
                payouts_enabled=None,
                transfers=None,
                disabled_reason=None,
                deleted=True,
            )

    def retrieve_account(self, account_id: str) -> StripeAccount:
        """The account as set (an unknown one is active, payouts enabled)."""
        with self._lock:
            self.account_calls += 1
            found = self._accounts.get(account_id)
        if found is None:
            return StripeAccount(
                id=account_id, payouts_enabled=True, transfers="active", disabled_reason=None
            )
        return found

    def _check_destination_locked(self, destination: str) -> None:
        found = self._accounts.get(destination)
        if found is None:
            return
        if found.deleted:
            raise DestinationUnpayable(
                f"No such destination: '{destination}'",
                reason="no_such_destination",
                account_id=destination,
                code="resource_missing",
                http_status=400,
            )
        if found.transfers is not None and found.transfers != "active":
            raise DestinationUnpayable(
                "Your destination account needs to have at least one of the following "
                "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                reason="transfers_capability_inactive",
                account_id=destination,
                code="insufficient_capabilities_for_transfer",
                http_status=400,
            )


class _Listed(Protocol):
    @property
    def transfer_group(self) -> str | None: ...
    @property
    def created(self) -> int: ...


T = TypeVar("T", bound=_Listed)


def newest_matching(
    transfers: Sequence[T],
    *,
    transfer_group: str | None = None,
    created_gte: int | None = None,
    created_lt: int | None = None,
) -> list[T]:
    """Transfers matching Stripe's list filters, newest first (oldest-first input)."""
    return [
        t
        for t in reversed(transfers)
        if (transfer_group is None or t.transfer_group == transfer_group)
        and (created_gte is None or t.created >= created_gte)
        and (created_lt is None or t.created < created_lt)
    ]


def _params(t: RecordedTransfer | TransferRequest) -> tuple[object, ...]:
    return (t.amount, t.currency, t.destination, t.transfer_group, t.metadata)
