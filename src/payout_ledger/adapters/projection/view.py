"""What a payouts view is: the row type, the abstract view and its table names."""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from eventsourcing.persistence import TrackingRecorder

from payout_ledger.errors import ConfigurationError


@dataclass(frozen=True)
class PayoutRow:
    """One row of the payouts table: an event service's payout as of its last event."""

    payout_id: str
    event_service_id: str
    provider_id: str
    payee_user_id: str
    destination_account: str | None
    amount: int
    currency: str
    status: str
    """A [`PayoutStatus`][payout_ledger.PayoutStatus] value."""
    attempt: int
    transfer_id: str | None
    amount_reversed: int
    failure_code: str | None
    released_at: datetime | None
    updated_at: datetime
    """The time of the payout's last event."""
    version: int
    """The payout aggregate's version after its last event."""
    notification_id: int
    """The notification id of the payout's last event."""
    reversal_attempt: int = 0
    """The latest platform reversal attempt (0: the platform never reversed)."""
    reversal_status: str | None = None
    """The latest platform reversal's [`ReversalStatus`][payout_ledger.domain.payout.ReversalStatus]
    value (``in_flight``, ``succeeded``, ``failed``), or None."""


COLUMNS = tuple(f.name for f in fields(PayoutRow))

ADDED_COLUMNS = ("reversal_attempt", "reversal_status")
"""Columns added after the table's first release. A table without them (made by
an older release) is still read (as 0 and None), and the next run of the
projection rebuilds it: the older release skipped the reversal events, so the
rows must be folded again, not only given the columns."""


Row = tuple[Any, ...]
"""A row as a rebuild keeps it in memory: its values in ``COLUMNS`` order."""


def json_rows(rows: Sequence[Row]) -> str | None:
    """``rows`` as one JSON array of arrays (msgspec, in one call), for a rebuild's
    writer to hand the database, or None if JSON cannot carry them exactly.

    Text, integers, None and UUIDs are written as they are. A time is written as
    ``datetime.isoformat`` writes it, but that a zero UTC offset is ``Z`` (as a
    time read back from SQLite, text, is written as it is). These make None: a
    time whose offset is not whole minutes (msgspec writes it to the minute),
    time text that holds a ``Z`` (a reader could not tell it from a zero offset),
    a time of another type, text that UTF-8 cannot hold or that holds a NUL
    (which the databases' JSON does not read back as it was).
    """
    for row in rows:
        for i in TIME_COLUMNS:
            time = row[i]
            if time is None or (type(time) is datetime and time.tzinfo is UTC):
                continue  # as the ledger writes its times
            if type(time) is str:
                if "Z" in time:
                    return None
            elif not isinstance(time, datetime):
                return None
            else:
                offset = time.utcoffset()
                if offset is not None and offset % _MINUTE:
                    return None
    try:
        document = _encode(rows)
    except (TypeError, ValueError):  # a lone surrogate, a type JSON has not
        return None
    if b"\\u0000" in document:
        return None
    return document.decode("utf-8")


TIME_COLUMNS = tuple(i for i, c in enumerate(COLUMNS) if c in ("released_at", "updated_at"))
"""The positions in ``Row`` of the columns that hold times."""
_MINUTE = timedelta(minutes=1)
_encode = msgspec.json.Encoder().encode


class ProjectionConflictError(Exception):
    """Another runner moved the tracking record while this batch was being applied."""


_IN_FLIGHT = 2
"""Batches a rebuild's writer holds before the caller waits (they smooth its pace)."""


class RowWriter(ABC):
    """Writes a rebuild's rows into a new (staging) view, many at a time.

    Batches are written in order by a thread of the writer's own while the
    caller folds the next ones (at most ``_IN_FLIGHT`` waiting; an error is
    raised by a later call). Nothing written shows in the staging view before
    :meth:`finish`, or only with the tracking record that covers it: a rebuild
    that stops or fails leaves it consistent, and the old table in place.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="payouts-rebuild-writer")
        self._pending: deque[Future[None]] = deque()

    def load(self, payout_ids: Sequence[str]) -> dict[str, Row]:
        """The rows written so far of these payouts (ids as 32 hex digits), by id."""
        self._wait()
        return self._load(payout_ids)

    def write(
        self, application_name: str, new: Sequence[Row], changed: Sequence[Row], through: int
    ) -> None:
        """Write ``new`` rows (of payouts without one yet) and ``changed`` ones (that
        replace the payout's row), every event up to ``through`` folded into them."""
        while len(self._pending) >= _IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(
            self._thread.submit(self._write, application_name, new, changed, through)
        )

    def finish(self, view: PayoutsView, application_name: str, through: int | None) -> None:
        """Replace ``view``'s table by the rows written, tracked ``through`` (None: no
        event), as [`replace_with`][payout_ledger.adapters.projection.PayoutsView.replace_with]
        replaces it by the staging view's: in one transaction, indexes recreated,
        every rebuild's leftover tables dropped."""
        self._wait()
        self._finish(view, application_name, through)

    def close(self) -> None:
        """Release the connection and any scratch storage (also after a failure)."""
        for pending in self._pending:
            pending.cancel()
        wait(self._pending)  # their errors no longer matter: the rebuild is over
        self._pending.clear()
        self._thread.shutdown()
        self._close()

    def _wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    @abstractmethod
    def _load(self, payout_ids: Sequence[str]) -> dict[str, Row]: ...

    @abstractmethod
    def _write(
        self, application_name: str, new: Sequence[Row], changed: Sequence[Row], through: int
    ) -> None:
        """:meth:`write`, on the writer's thread."""

    @abstractmethod
    def _finish(self, view: PayoutsView, application_name: str, through: int | None) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...


class PayoutsView(TrackingRecorder, ABC):
    """The payouts table and its tracking record, in one database."""

    table: str

    @abstractmethod
    def apply(
        self,
        application_name: str,
        after: int | None,
        through: int,
        payout_ids: Iterable[str],
        update: Callable[[dict[str, dict[str, Any]]], Mapping[str, dict[str, Any]]],
    ) -> None:
        """In one transaction: check the tracking record is ``after``, load the rows
        of ``payout_ids``, let ``update`` change them, write them and track ``through``."""

    @abstractmethod
    def rows(self) -> list[PayoutRow]:
        """Every row, ordered by event service id."""

    @abstractmethod
    def get(self, event_service_id: str) -> PayoutRow | None:
        """One event service's row."""

    @abstractmethod
    def reset(self, application_name: str) -> None:
        """Empty the table and forget the tracking record (for a rebuild)."""

    @abstractmethod
    def count(self) -> int:
        """How many rows (payouts) the table has."""

    @abstractmethod
    def staging(self) -> PayoutsView:
        """A new, empty view of the same kind for a rebuild (``<table>_rb_<hex>``,
        without secondary indexes), to be swapped in by
        [`replace_with`][payout_ledger.adapters.projection.PayoutsView.replace_with]."""

    @abstractmethod
    def replace_with(self, staging: PayoutsView, application_name: str) -> None:
        """In one transaction: replace this table by ``staging``'s (indexes recreated),
        take over its tracking record, and drop its tracking table and every other
        rebuild's leftover tables."""

    @abstractmethod
    def drop(self) -> None:
        """Drop this (staging) view's table and tracking table, if they exist."""

    @abstractmethod
    def missing_columns(self) -> list[str]:
        """The columns of this release the table lacks (it was made by an older one)."""

    def row_writer(self) -> RowWriter | None:
        """A writer of many rows at a time into this new, empty (staging) view, for a
        rebuild; None if this kind of view has none (the rebuild applies batches)."""
        return None

    def _leftovers(self, names: Iterable[str]) -> list[str]:
        """Of ``names``, the tables of this table's rebuilds (and their tracking tables)."""
        pattern = re.compile(rf"^{re.escape(self.table)}_rb_[0-9a-f]{{6}}(_tracking)?$")
        return sorted(n for n in names if pattern.match(n))


_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_STAGING_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}_rb_[0-9a-f]{6}$")


def checked_name(table: str) -> str:
    """``table``, if it is a plain identifier (SQLite statements are built with it)."""
    if not (_TABLE_NAME.match(table) or _STAGING_NAME.match(table)):
        raise ConfigurationError(f"not a plain table name: {table!r}")
    return table


def staging_name(table: str) -> str:
    """A new rebuild table's name: ``<table>_rb_<6 hex digits>``."""
    return f"{table}_rb_{secrets.token_hex(3)}"


def payout_row(values: Mapping[str, Any]) -> PayoutRow:
    """The row a database returned (payout id and timestamps as text or native)."""
    data = dict(values)
    for name in ("released_at", "updated_at"):
        if isinstance(data[name], str):
            data[name] = datetime.fromisoformat(data[name])
    data["payout_id"] = str(data["payout_id"])
    data.setdefault("reversal_attempt", 0)  # a table of an older release, not yet rebuilt
    data.setdefault("reversal_status", None)
    return PayoutRow(**data)
