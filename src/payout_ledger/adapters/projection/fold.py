"""The projection: which events make the payouts table, and how each changes a row."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from payout_ledger.adapters.projection.view import PayoutsView
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus, ReversalStatus

logger = logging.getLogger("payout_ledger.adapters.projection")

PAYOUT_TOPICS = (
    PayoutAggregate.PayoutStarted.TOPIC,
    PayoutAggregate.TransferFailed.TOPIC,
    PayoutAggregate.TransferSucceeded.TOPIC,
    PayoutAggregate.Released.TOPIC,
    PayoutAggregate.TransferReversed.TOPIC,
    PayoutAggregate.ReversalStarted.TOPIC,
    PayoutAggregate.ReversalSucceeded.TOPIC,
    PayoutAggregate.ReversalFailed.TOPIC,
)
"""The events the read model is made of."""

_NEW_ROW = {
    "transfer_id": None,
    "amount_reversed": 0,
    "released_at": None,
    "reversal_attempt": 0,
    "reversal_status": None,
}


class PayoutsProjection(Projection[PayoutsView]):
    """Folds payout events into payouts-table rows; :meth:`fold` is the whole rule."""

    name = "payout_ledger_payouts"
    topics = PAYOUT_TOPICS

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """One event, tracked (eventsourcing's interface); runs use :meth:`process_batch`."""
        previous = self.view.max_tracking_id(tracking.application_name)
        self.process_batch(
            tracking.application_name, previous, [(domain_event, tracking.notification_id)]
        )

    def process_batch(
        self,
        application_name: str,
        after: int | None,
        batch: Sequence[tuple[Any, int]],
        *,
        through: int | None = None,
    ) -> None:
        """Apply events (with their notification ids) in one transaction, tracked
        ``through`` the given notification id (the batch's last by default; an
        empty batch only moves the tracking record, if ``through`` is given)."""
        through = batch[-1][1] if through is None and batch else through
        if through is None:
            return
        payout_ids = {str(event.originator_id) for event, _ in batch}

        def update(rows: dict[str, dict[str, Any]]) -> Mapping[str, dict[str, Any]]:
            changed: dict[str, dict[str, Any]] = {}
            for event, notification_id in batch:
                key = str(event.originator_id)
                row = changed.get(key) or rows.get(key)
                folded = self.fold(row, event, notification_id)
                if folded is not None:
                    changed[key] = folded
            return changed

        self.view.apply(application_name, after, through, payout_ids, update)

    def fold(
        self, row: dict[str, Any] | None, event: Any, notification_id: int
    ) -> dict[str, Any] | None:
        """The row after ``event`` (None: nothing to write)."""
        if isinstance(event, PayoutAggregate.PayoutStarted):
            row = {
                **(row or _NEW_ROW),
                "payout_id": str(event.originator_id),
                "event_service_id": event.event_service_id,
                "provider_id": event.provider_id,
                "payee_user_id": event.payee_user_id,
                "destination_account": event.destination_account,
                "amount": event.amount,
                "currency": event.currency,
                "attempt": event.attempt,
                "status": PayoutStatus.IN_FLIGHT.value,
                "failure_code": None,
            }
        elif row is None:
            logger.warning(
                "%s at notification %d for payout %s without PayoutStarted; not projected",
                type(event).__name__,
                notification_id,
                event.originator_id,
            )
            return None
        elif isinstance(event, PayoutAggregate.TransferFailed):
            row = {**row, "status": PayoutStatus.FAILED.value, "failure_code": event.failure_code}
        elif isinstance(event, PayoutAggregate.TransferSucceeded):
            row = {
                **row,
                "status": PayoutStatus.TRANSFERRED.value,
                "transfer_id": event.transfer_id,
            }
        elif isinstance(event, PayoutAggregate.Released):
            row = {**row, "status": PayoutStatus.RELEASED.value, "released_at": event.timestamp}
        elif isinstance(event, PayoutAggregate.TransferReversed):
            row = {**row, "amount_reversed": event.amount_reversed}
            if event.amount_reversed >= row["amount"]:
                row["status"] = PayoutStatus.REVERSED.value
        elif isinstance(event, PayoutAggregate.ReversalStarted):
            row = {
                **row,
                "reversal_attempt": event.reversal_attempt,
                "reversal_status": ReversalStatus.IN_FLIGHT.value,
            }
        elif isinstance(event, PayoutAggregate.ReversalSucceeded):
            reversed_ = max(row["amount_reversed"], event.amount_reversed)
            row = {
                **row,
                "amount_reversed": reversed_,
                "reversal_status": ReversalStatus.SUCCEEDED.value,
            }
            if reversed_ >= row["amount"]:
                row["status"] = PayoutStatus.REVERSED.value
        elif isinstance(event, PayoutAggregate.ReversalFailed):
            row = {**row, "reversal_status": ReversalStatus.FAILED.value}
        else:
            return None
        row["updated_at"] = event.timestamp
        row["version"] = event.originator_version
        row["notification_id"] = notification_id
        return row
