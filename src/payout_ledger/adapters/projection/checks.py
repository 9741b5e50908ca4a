"""Events and writes the payouts table cannot hold: the checks, and how a skip is logged."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import psycopg
from eventsourcing.persistence import DataError, IntegrityError

from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.domain.typecheck import type_check

logger = logging.getLogger("payout_ledger.adapters.projection")

INT4 = (-(2**31), 2**31 - 1)
"""PostgreSQL ``integer``: the ``attempt``, ``reversal_attempt`` and ``version`` columns."""
INT8 = (-(2**63), 2**63 - 1)
"""PostgreSQL ``bigint`` (and SQLite ``INTEGER``): ``amount`` and ``amount_reversed``."""

_P = PayoutAggregate
FOLDED_FIELDS: dict[type, tuple[str, ...]] = {
    _P.PayoutStarted: (
        "event_service_id",
        "provider_id",
        "payee_user_id",
        "destination_account",
        "amount",
        "currency",
        "attempt",
    ),
    _P.TransferFailed: ("failure_code",),
    _P.TransferSucceeded: ("transfer_id",),
    _P.Released: (),
    _P.TransferReversed: ("amount_reversed",),
    _P.ReversalStarted: ("reversal_attempt",),
    _P.ReversalSucceeded: ("reversal_attempt", "amount_reversed"),
    _P.ReversalFailed: ("reversal_attempt",),
}
"""The fields :meth:`PayoutsProjection.fold` writes to the table, per event class."""
COLUMN_RANGES = {
    "amount": INT8,
    "amount_reversed": INT8,
    "attempt": INT4,
    "reversal_attempt": INT4,
    "originator_version": INT4,
}
"""The range of each integer field's column (on PostgreSQL; SQLite's is ``INT8``)."""

WRITE_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    OverflowError,
    UnicodeEncodeError,
)
"""What a database raises for a row it cannot hold (never for a lost connection)."""


def unprojectable(event: Any) -> str | None:
    """Why the payouts table cannot hold ``event`` (None: it can).

    Its folded fields, version and time must have their declared types, integers
    fit their columns (``integer`` or ``bigint``), text be valid Unicode without
    NUL, and a ``PayoutStarted``'s service id must be its payout's.
    """
    fields_ = FOLDED_FIELDS.get(type(event))
    if fields_ is None:
        return None  # not an event the base fold writes
    names = (*fields_, "originator_version", "timestamp")
    state = vars(event)
    wrong = type_check(type(event), names)(state)
    if wrong is not None:
        return wrong
    for name in names:
        value = state[name]
        if isinstance(value, int) and name in COLUMN_RANGES:
            low, high = COLUMN_RANGES[name]
            if not low <= value <= high:
                return f"{name} is out of the column's range"
        elif isinstance(value, str) and ("\x00" in value or not _encodable(value)):
            return f"{name} is not text the table can hold (NUL or a lone surrogate)"
    if isinstance(event, _P.PayoutStarted) and (
        PayoutAggregate.create_id(event.event_service_id) != event.originator_id
    ):
        return "event_service_id is not the payout's"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def report_skip(notification: Any, reason: str) -> None:
    """Log (WARNING) that ``notification`` is left out, and why."""
    logger.warning(
        "notification %d (%s, payout %s) not projected: %s; run payout-ledger verify",
        notification.id,
        notification.topic,
        notification.originator_id,
        reason,
    )


def first_line(exc: BaseException) -> str:
    """``exc``'s type and the first line of its message (200 characters at most)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
