"""Connected accounts' payability: whether the ledger can pay a provider's account now.

One ``ConnectedAccount`` aggregate per Stripe connected account (id: uuid5 of
``connected-account:{account_id}``) records each report of its payability:

* ``account.updated`` events (Connect endpoint): ``payouts_enabled``, the
  ``transfers`` capability's status and ``requirements.disabled_reason``;
* a sync, when the ledger asked Stripe for the account (``sync_account``);
* a transfer refused because of the destination (``transfer_refused``):
  Stripe's ``insufficient_capabilities_for_transfer`` or "No such destination".

An account is *unpayable* when its ``transfers`` capability is reported and not
``active``, when ``disabled_reason`` is set, or when Stripe said the account
does not exist. ``payouts_enabled=False`` alone does not block a transfer
(the money waits in the connected account's balance); it is kept and shown.

Which report counts (deliveries come in any order): an ``account.updated`` is
applied only when its Stripe ``created`` is not older than the newest
``account.updated`` already applied to the account; a sync and a refusal are
what Stripe answered the ledger just now, so they are always applied and leave
that high-water mark where it is. A late ``account.updated`` that is newer than
every event seen before (but older than a sync) may still be applied: its state
lasts until the next event or sync, and at worst it blocks a release, or lets one
reach Stripe, which refuses it again. No host clock is compared with Stripe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.utils import get_topic

from payout_ledger.domain.chain import ChainedAggregate, create_or_continue
from payout_ledger.domain.payout import PAYOUT_NAMESPACE

__all__ = [
    "NO_SUCH_DESTINATION",
    "TRANSFERS_CAPABILITY_INACTIVE",
    "AccountPayability",
    "ConnectedAccount",
    "PayabilitySource",
    "payability_of",
]

TRANSFERS_CAPABILITY_INACTIVE = "transfers_capability_inactive"
"""The reason code of an account whose ``transfers`` capability is not active."""
NO_SUCH_DESTINATION = "no_such_destination"
"""The reason code of an account Stripe does not know (deleted or closed)."""


class PayabilitySource(StrEnum):
    """Where a payability report came from."""

    ACCOUNT_UPDATED = "account.updated"
    """A Connect ``account.updated`` event."""
    SYNC = "sync"
    """The ledger asked Stripe for the account
    ([`sync_account`][payout_ledger.PayoutLedger.sync_account])."""
    TRANSFER_REFUSED = "transfer_refused"
    """Stripe refused a transfer because of its destination."""


@dataclass(frozen=True)
class AccountPayability:
    """Whether a connected account can be paid, by the latest report that counts.

    ``payable`` is false when ``reason`` is set: ``transfers_capability_inactive``,
    ``no_such_destination``, or Stripe's ``requirements.disabled_reason`` itself
    (``requirements.past_due``, ``rejected.fraud``...). ``message`` says it in a
    sentence. ``payouts_enabled`` is shown but does not block a transfer.
    """

    account_id: str
    payable: bool
    reason: str | None
    message: str | None
    payouts_enabled: bool | None
    transfers: str | None
    """The ``transfers`` capability's status (``active``, ``inactive``, ``pending``),
    None when not reported."""
    disabled_reason: str | None
    refusal: str | None
    """Stripe's code when the report is a refusal or a sync that found no account."""
    source: PayabilitySource
    stripe_event_id: str | None
    stripe_created: int | None
    reported_at: datetime
    """The ledger's clock when the report was recorded."""


def payability_of(
    *, transfers: str | None, disabled_reason: str | None, refusal: str | None
) -> tuple[str | None, str | None]:
    """The reason code and message that make an account unpayable, or (None, None)."""
    if refusal == NO_SUCH_DESTINATION:
        return NO_SUCH_DESTINATION, "Stripe has no such destination account (deleted or closed)"
    if disabled_reason:
        return disabled_reason, f"Stripe disabled the account ({disabled_reason})"
    if transfers is not None and transfers != "active":
        return (
            TRANSFERS_CAPABILITY_INACTIVE,
            f"the account's transfers capability is {transfers}, not active",
        )
    if refusal is not None:
        return (
            TRANSFERS_CAPABILITY_INACTIVE,
            "Stripe refused a transfer: the account needs an active transfers capability",
        )
    return None, None


class ConnectedAccount(ChainedAggregate):
    """A Stripe connected account's payability reports (see the module docs)."""

    TOPIC = "payout_ledger:ConnectedAccount"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:ConnectedAccount.Event"

    class PayabilityReported(Event, ChainedAggregate.Created):
        """A report of the account's payability; it creates the aggregate the first time."""

        TOPIC = "payout_ledger:PayabilityReported"
        account_id: str
        payouts_enabled: bool | None
        transfers: str | None
        disabled_reason: str | None
        refusal: str | None
        source: str
        stripe_event_id: str | None
        stripe_created: int | None
        reported_at: datetime

        def mutate(self, aggregate: Any) -> Any:
            return create_or_continue(self, aggregate)

        def apply(self, aggregate: ConnectedAccount) -> None:
            aggregate.account_id = self.account_id
            aggregate.payouts_enabled = self.payouts_enabled
            aggregate.transfers = self.transfers
            aggregate.disabled_reason = self.disabled_reason
            aggregate.refusal = self.refusal
            aggregate.source = self.source
            aggregate.stripe_event_id = self.stripe_event_id
            aggregate.stripe_created = self.stripe_created
            aggregate.reported_at = self.reported_at
            if self.source == PayabilitySource.ACCOUNT_UPDATED:
                aggregate.newest_event_created = self.stripe_created

    def __init__(self) -> None:
        self.account_id: str
        self.payouts_enabled: bool | None
        self.transfers: str | None
        self.disabled_reason: str | None
        self.refusal: str | None
        self.source: str
        self.stripe_event_id: str | None
        self.stripe_created: int | None
        self.reported_at: datetime
        self.newest_event_created: int | None = None
        """Stripe's ``created`` of the newest ``account.updated`` applied."""

    @staticmethod
    def create_id(account_id: str) -> UUID:
        return uuid5(PAYOUT_NAMESPACE, f"connected-account:{account_id}")

    @classmethod
    def report(cls, account: ConnectedAccount | None, **fields: Any) -> ConnectedAccount | None:
        """Add a report to ``account`` (a new aggregate when None).

        Returns the aggregate with the report pending, or None when the report is
        an ``account.updated`` older than the newest one applied (stale).
        """
        if account is None:
            new_id = cls.create_id(fields["account_id"])
            return cls._create(cls.PayabilityReported, id=new_id, **fields)
        if account.is_stale(fields["source"], fields.get("stripe_created")):
            return None
        account.trigger_event(
            cls.PayabilityReported, originator_topic=get_topic(type(account)), **fields
        )
        return account

    def is_stale(self, source: str, stripe_created: int | None) -> bool:
        """Whether an ``account.updated`` created at ``stripe_created`` is older than
        the newest one applied (a sync or a refusal never is)."""
        if source != PayabilitySource.ACCOUNT_UPDATED or self.newest_event_created is None:
            return False
        return (stripe_created or 0) < self.newest_event_created

    @property
    def payability(self) -> AccountPayability:
        """The account's payability by its latest report."""
        reason, message = payability_of(
            transfers=self.transfers, disabled_reason=self.disabled_reason, refusal=self.refusal
        )
        return AccountPayability(
            account_id=self.account_id,
            payable=reason is None,
            reason=reason,
            message=message,
            payouts_enabled=self.payouts_enabled,
            transfers=self.transfers,
            disabled_reason=self.disabled_reason,
            refusal=self.refusal,
            source=PayabilitySource(self.source),
            stripe_event_id=self.stripe_event_id,
            stripe_created=self.stripe_created,
            reported_at=self.reported_at,
        )
