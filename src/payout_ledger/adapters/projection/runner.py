"""Running the projection on a ledger: opening its view, catching up, rebuilding."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InternalError, OperationalError
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

from payout_ledger.adapters.projection.checks import (
    WRITE_ERRORS,
    first_line,
    report_skip,
    unprojectable,
)
from payout_ledger.adapters.projection.fold import PayoutsProjection
from payout_ledger.adapters.projection.postgres import PostgresPayoutsView
from payout_ledger.adapters.projection.rebuild import (
    RefusedByTheTableError,
    fast_rebuild_applies,
    fold_log,
)
from payout_ledger.adapters.projection.sqlite import SQLitePayoutsView
from payout_ledger.adapters.projection.view import (
    PayoutsView,
    ProjectionConflictError,
    checked_name,
)
from payout_ledger.errors import ConfigurationError

logger = logging.getLogger("payout_ledger.adapters.projection")


def open_payouts_view(ledger: Any, *, table: str | None = None) -> PayoutsView:
    """The payouts view on the ledger's own database (tables created if missing)."""
    datastore = getattr(ledger.factory, "datastore", None)
    name = table or ledger.settings.read_model_table
    view: PayoutsView
    if isinstance(datastore, SQLiteDatastore):
        view = SQLitePayoutsView(datastore, table=name)
    elif isinstance(datastore, PostgresDatastore):
        view = PostgresPayoutsView(datastore, table=name)
    else:
        raise ConfigurationError("the read model needs an SQLite or PostgreSQL store")
    # Runners starting together race to create the tables and the tracking table's
    # migration row; every statement is IF NOT EXISTS, and a second try sees the row.
    for attempt in range(1, _DDL_ATTEMPTS + 1):
        try:
            view.create_table()
        except (IntegrityError, InternalError, OperationalError):
            if attempt == _DDL_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
        else:
            break
    return view


_DDL_ATTEMPTS = 6


@dataclass(frozen=True)
class ProjectionRun:
    """What one run applied."""

    events: int
    batches: int
    tracking_id: int | None
    """The last notification id applied (the tracking record)."""
    skipped: int = 0
    """Events the table cannot hold (undecodable, ill-typed, out of range...): each
    logged with its notification id and left out (see the package's notes)."""


def _unchanged(rows: dict[str, dict[str, Any]]) -> Mapping[str, dict[str, Any]]:
    return {}


class _TrackingMoved(Exception):  # noqa: N818 - a signal, not an error
    """Another runner moved the tracking record: read the log again."""


@dataclass
class _Tally:
    events: int = 0
    batches: int = 0
    skipped: int = 0


def run_projection(
    ledger: Any,
    *,
    view: PayoutsView | None = None,
    projection_class: type[PayoutsProjection] = PayoutsProjection,
    rebuild: bool = False,
    follow: bool = False,
    poll_interval: float = 1.0,
    batch_size: int = 1000,
    stop: threading.Event | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ProjectionRun:
    """Bring the payouts table up to date with the log (and keep it so with ``follow``).

    Each batch of up to ``batch_size`` payout events is one transaction with
    its tracking record. After a crash, running again resumes after the last
    committed batch. ``rebuild`` folds the whole log into a new table and swaps
    it in, in one transaction, once it is complete: until then (and if the
    rebuild fails or is stopped) the old rows stay. With ``PayoutsProjection``'s
    own fold, a rebuild folds the log in memory and writes its rows in batches
    of thousands (``batch_size`` does not apply; see the ``rebuild`` module). An
    event the table cannot hold is logged, counted in ``skipped`` and left out,
    never the whole run. A table an older release made (without this release's
    columns) is rebuilt. ``on_batch(last notification id, events)`` is called
    after each commit (in a rebuild, after each batch of rows is handed over).
    """
    view = view or open_payouts_view(ledger)
    app_name = cast(str, ledger.name)
    missing = view.missing_columns()
    if missing and not rebuild:
        # A table of an older release: it lacks columns, and it skipped the events
        # they are made of, so it is folded again from the start (and swapped in).
        logger.warning(
            "%s lacks the columns %s (an older release made it): rebuilding it",
            view.table,
            ", ".join(missing),
        )
        rebuild = True
    stopping = stop or threading.Event()
    tally = _Tally()
    if rebuild:
        staging = view.staging()
        swapped = False
        try:
            writer = staging.row_writer() if fast_rebuild_applies(projection_class) else None
            if writer is not None:
                try:
                    folded = fold_log(ledger, view, writer, app_name, stopping, on_batch)
                except RefusedByTheTableError as exc:
                    logger.warning(
                        "the database refused a row of the rebuild (%s): folding the log "
                        "again in batches, which leave out only the refused event",
                        exc,
                    )
                    _drop_quietly(staging)
                    staging = view.staging()
                else:
                    if folded is None:  # stopped before the end: the old rows stay
                        return ProjectionRun(0, 0, view.max_tracking_id(app_name))
                    tally.events, tally.skipped = folded.events, folded.skipped
                    tally.batches = folded.batches
                    swapped = True  # the writer replaced the table, staging tables dropped
                finally:
                    writer.close()
            if not swapped:
                _catch_up(ledger, staging, projection_class, app_name, batch_size, stopping,
                          on_batch, tally)  # fmt: skip
                if stopping.is_set():  # stopped before the end: the old rows stay
                    return ProjectionRun(0, 0, view.max_tracking_id(app_name))
                view.replace_with(staging, app_name)
                swapped = True
        finally:
            if not swapped:
                _drop_quietly(staging)
    while not stopping.is_set():
        _catch_up(ledger, view, projection_class, app_name, batch_size, stopping, on_batch, tally)
        if not follow:
            break
        stopping.wait(poll_interval)
    return ProjectionRun(
        events=tally.events,
        batches=tally.batches,
        tracking_id=view.max_tracking_id(app_name),
        skipped=tally.skipped,
    )


def _drop_quietly(staging: PayoutsView) -> None:
    try:
        staging.drop()
    except Exception:  # the original error matters more; the next rebuild drops it
        logger.exception("the unfinished rebuild's table %s could not be dropped", staging.table)


def _catch_up(
    ledger: Any,
    view: PayoutsView,
    projection_class: type[PayoutsProjection],
    app_name: str,
    batch_size: int,
    stopping: threading.Event,
    on_batch: Callable[[int, int], None] | None,
    tally: _Tally,
) -> None:
    """Apply pages of the log to ``view`` until none is left (or ``stopping``)."""
    projection = projection_class(view=view)
    while not stopping.is_set():
        after = view.max_tracking_id(app_name)
        page = ledger.recorder.select_notifications(
            (after or 0) + 1, batch_size, topics=projection.topics
        )
        if not page:
            return
        batch, skipped = [], 0
        for notification in page:
            try:
                event = ledger.mapper.to_domain_event(notification)
            except Exception as exc:
                report_skip(notification, f"undecodable ({first_line(exc)})")
                skipped += 1
                continue
            reason = unprojectable(event)
            if reason is not None:
                report_skip(notification, reason)
                skipped += 1
                continue
            batch.append((event, notification.id))
        through = page[-1].id
        try:
            try:
                projection.process_batch(app_name, after, batch, through=through)
                applied = len(batch)
            except ProjectionConflictError:
                raise _TrackingMoved from None
            except WRITE_ERRORS:
                if view.max_tracking_id(app_name) != after:
                    raise _TrackingMoved from None
                applied, refused = _one_by_one(
                    projection, view, app_name, after, batch, through, page
                )
                skipped += refused
        except _TrackingMoved:
            logger.info("another runner applied these events first; reading on")
            continue
        tally.events += applied
        tally.skipped += skipped
        tally.batches += 1
        if on_batch is not None:
            on_batch(through, applied)


def _one_by_one(
    projection: PayoutsProjection,
    view: PayoutsView,
    app_name: str,
    after: int | None,
    batch: Sequence[tuple[Any, int]],
    through: int,
    page: Sequence[Any],
) -> tuple[int, int]:
    """The batch again, one event per transaction: only an event the database
    refuses is left out. Returns (applied, refused)."""
    notifications = {n.id: n for n in page}
    applied = refused = 0
    position = after
    for event, notification_id in batch:
        try:
            projection.process_batch(app_name, position, [(event, notification_id)])
            applied += 1
        except ProjectionConflictError:
            raise _TrackingMoved from None
        except WRITE_ERRORS as exc:
            if view.max_tracking_id(app_name) != position:
                raise _TrackingMoved from None
            report_skip(notifications[notification_id], f"refused by the table ({first_line(exc)})")
            view.apply(app_name, position, notification_id, [], _unchanged)
            refused += 1
        position = notification_id
    if position != through:
        view.apply(app_name, position, through, [], _unchanged)
    return applied, refused


def projection_position(ledger: Any, *, table: str | None = None) -> int | None:
    """The last notification id the read model applied (0: none yet), or None when
    its tracking table does not exist. Reads only: nothing is created."""
    datastore = getattr(ledger.factory, "datastore", None)
    tracking = checked_name(table or ledger.settings.read_model_table) + "_tracking"
    app_name = cast(str, ledger.name)
    if isinstance(datastore, SQLiteDatastore):
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (tracking,)
            )
            if cursor.fetchone() is None:
                return None
            cursor.execute(
                f"SELECT MAX(notification_id) FROM {tracking} WHERE application_name = ?",  # noqa: S608
                (app_name,),
            )
            return int(cursor.fetchone()[0] or 0)
    if isinstance(datastore, PostgresDatastore):
        schema, tt = Identifier(datastore.schema), Identifier(tracking)
        with datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT 1 AS found FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                (datastore.schema, tracking),
            )
            if curs.fetchone() is None:
                return None
            curs.execute(
                SQL("SELECT MAX(notification_id) AS n FROM {schema}.{tt} WHERE {where}").format(
                    schema=schema, tt=tt, where=SQL("application_name = %s")
                ),
                (app_name,),
            )
            return int((curs.fetchone() or {}).get("n") or 0)
    return None


@dataclass(frozen=True)
class InFlightRows:
    """What the read model shows in flight, as of its tracking record."""

    position: int
    """The last notification id the read model applied."""
    transfers: list[UUID]
    """Payouts whose row has a transfer attempt in flight."""
    reversals: list[UUID]
    """Payouts whose row has a reversal attempt in flight."""


def in_flight_rows(ledger: Any, *, table: str | None = None) -> InFlightRows | None:
    """The payouts the read model shows in flight, and its position (read first, so
    the rows are as of that position or later); None when it has no table. Reads
    only: nothing is created."""
    datastore = getattr(ledger.factory, "datastore", None)
    name = checked_name(table or ledger.settings.read_model_table)
    tracking = name + "_tracking"
    app_name = cast(str, ledger.name)
    if isinstance(datastore, SQLiteDatastore):
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                (name, tracking),
            )
            if cursor.fetchone()[0] != 2:
                return None
            cursor.execute(
                f"SELECT MAX(notification_id) FROM {tracking} WHERE application_name = ?",  # noqa: S608
                (app_name,),
            )
            position = int(cursor.fetchone()[0] or 0)
            cursor.execute(f"SELECT payout_id FROM {name} WHERE status = 'in_flight'")  # noqa: S608
            transfers = [UUID(row[0]) for row in cursor.fetchall()]
            cursor.execute(f"SELECT payout_id FROM {name} WHERE reversal_status = 'in_flight'")  # noqa: S608
            reversals = [UUID(row[0]) for row in cursor.fetchall()]
        return InFlightRows(position, transfers, reversals)
    if isinstance(datastore, PostgresDatastore):
        schema = Identifier(datastore.schema)
        with datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT count(*) AS n FROM pg_tables "
                "WHERE schemaname = %s AND tablename IN (%s, %s)",
                (datastore.schema, name, tracking),
            )
            if (curs.fetchone() or {}).get("n") != 2:
                return None
            curs.execute(
                SQL("SELECT MAX(notification_id) AS n FROM {schema}.{tt} WHERE {where}").format(
                    schema=schema, tt=Identifier(tracking), where=SQL("application_name = %s")
                ),
                (app_name,),
            )
            position = int((curs.fetchone() or {}).get("n") or 0)
            found = []
            for column in ("status", "reversal_status"):
                curs.execute(
                    SQL("SELECT payout_id FROM {schema}.{t} WHERE {c} = 'in_flight'").format(
                        schema=schema, t=Identifier(name), c=Identifier(column)
                    )
                )
                found.append([UUID(str(row["payout_id"])) for row in curs.fetchall()])
        return InFlightRows(position, *found)
    return None
