"""The whole log, in notification order, one page at a time.

Nothing here keeps more than one page of stored events: callers fold each
event into whatever compact state they need.

Two ways to read:

* [`iter_notifications`][payout_ledger.audit.iter_notifications] yields
  eventsourcing ``Notification`` objects, for ``ledger.mapper.to_domain_event``
  (verify, seal, export and the read model use it);
* [`iter_states`][payout_ledger.adapters.log.iter_states] yields plain tuples
  and each event's *state as a dict* (decrypted, JSON-decoded and upcast by the
  event class's own ``upcast_vN_vM`` methods, exactly as the mapper would, but
  without building event objects, UUIDs or datetimes). The audit uses it: on
  the benchmark machine the mapper path costs about 22 µs per event (the
  ``Notification`` dataclass, the UUID, the JSON object hook, the event object)
  and this one about 10 µs, which is what it takes to replay 100k events/s.
  ``audit_ledger(..., decode="mapper")`` uses the mapper instead, and a test
  requires both to give the same report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID, uuid5

from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
from eventsourcing.utils import resolve_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

if TYPE_CHECKING:
    from eventsourcing.application import Application

    PayoutLedger = Application[Any]

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Claims",
    "PageCallback",
    "RawEvent",
    "StateDecoder",
    "aggregate_rows",
    "claims_without_outcome",
    "claims_without_outcomes",
    "iter_notifications",
    "iter_states",
    "last_notification_id",
    "notification",
    "respelt_rows",
    "well_typed_row",
]

DEFAULT_PAGE_SIZE = 2000
"""Stored events read per query: large enough to amortise the round trip."""

PageCallback = Callable[[int, int], None]
"""Called after each page with (last notification id read, events in the page)."""

RawEvent = tuple[int, str, int, str, bytes]
"""(notification id, originator id as 32 hex digits, originator version, topic, stored state)."""


def hidden_rows(ledger: PayoutLedger, limit: int = 1000) -> list[tuple[str, object, object]]:
    """Rows no reader in notification order can see: (originator id, version, topic).

    On PostgreSQL the table's owner can drop ``notification_id``'s NOT NULL and
    set it to NULL. Such a row is skipped by every reader that pages by
    notification id (verify, seal, the audit, exports) while the ledger still
    loads it with its payout by originator id. SQLite's rowid cannot be NULL.
    """
    recorder = ledger.recorder
    if not isinstance(recorder, PostgresApplicationRecorder):
        return []
    query = SQL(
        "SELECT originator_id::text, originator_version, topic FROM {schema}.{table} "
        "WHERE notification_id IS NULL LIMIT %s"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
    )
    with (
        recorder.datastore.get_connection() as conn,
        conn.cursor(row_factory=tuple_row) as cursor,
    ):
        cursor.execute(query, (limit,))
        return [(str(oid), version, topic) for oid, version, topic in cursor.fetchall()]


def last_notification_id(ledger: PayoutLedger) -> int:
    """The highest notification id in the log (0 when it is empty)."""
    return ledger.recorder.max_notification_id() or 0


def iter_notifications(
    ledger: PayoutLedger,
    *,
    start: int | None = None,
    stop: int | None = None,
    topics: Sequence[str] = (),
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
) -> Iterator[Notification]:
    """Every stored event with ``start <= id <= stop``, in notification order.

    Ids may have gaps (PostgreSQL's sequence skips after a failed insert), so
    each page starts after the last id actually read. ``start=None`` (the
    default) also reads ids below 1, which the ledger never writes but someone
    editing the database could, to hide a row from readers that start at 1.
    """
    recorder = ledger.recorder
    select = functools.partial(_checked_notifications, recorder.select_notifications)
    if isinstance(recorder, SQLiteApplicationRecorder | PostgresApplicationRecorder):
        select = functools.partial(_stored_notifications, recorder)
    first: int | None = start
    while True:
        page = select(first, page_size, stop=stop, topics=topics)
        if not page:
            return
        yield from page
        first = page[-1].id + 1
        if on_page is not None:
            on_page(page[-1].id, len(page))
        if len(page) < page_size:
            return


def _stored_notifications(
    recorder: SQLiteApplicationRecorder | PostgresApplicationRecorder,
    start: int | None,
    limit: int,
    *,
    stop: int | None = None,
    topics: Sequence[str] = (),
) -> list[Notification]:
    """``select_notifications``, for rows whose columns someone may have edited.

    SQLite lets any column hold any type, and on PostgreSQL the table's owner can
    drop a column's NOT NULL. eventsourcing's own read raises on an originator
    id that is not a UUID or a NULL state, which would stop an auditor at that
    row; here such a row becomes a placeholder that no mapper decodes (its state
    names the row's real columns), so readers report it and go on, and seals and
    verify digest the same placeholder. A row without a notification id has no
    place in the log: [`hidden_rows`][payout_ledger.adapters.log.hidden_rows]
    lists it.
    """
    sqlite = isinstance(recorder, SQLiteApplicationRecorder)
    column, mark = ("rowid", "?") if sqlite else ("notification_id", "%s")
    where: list[str] = [f"{column} IS NOT NULL"]
    params: list[object] = []
    if start is not None:
        where.append(f"{column} >= {mark}")
        params.append(start)
    if stop is not None:
        where.append(f"{column} <= {mark}")
        params.append(stop)
    if topics:
        where.append(f"topic IN ({', '.join(mark for _ in topics)})")
        params.extend(topics)
    params.append(limit)
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {recorder.events_table_name} WHERE {' AND '.join(where)} "
            "ORDER BY rowid LIMIT ?"
        )
        rows = _sqlite_rows(recorder.datastore, statement, params)
    else:
        query = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {schema}.{table} WHERE " + " AND ".join(where) + " "
            "ORDER BY notification_id LIMIT %s"
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        with (
            recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(query, params)
            rows = cursor.fetchall()
    notifications = []
    for row in rows:
        state = row[4]
        if isinstance(state, memoryview):
            state = bytes(state)
        rowid, originator_id, version, topic, state = well_typed_row(
            row[0], row[1], row[2], row[3], state
        )
        notifications.append(
            Notification(
                id=rowid,
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=state,
            )
        )
    return notifications


def _checked_notifications(
    select: Callable[..., Sequence[Notification]],
    start: int | None,
    limit: int,
    *,
    stop: int | None = None,
    topics: Sequence[str] = (),
) -> list[Notification]:
    """The recorder's notifications, each with columns of the types the ledger writes.

    On PostgreSQL the table's owner can drop a column's NOT NULL and store a
    NULL state, topic or id: such a row becomes a placeholder, as on SQLite.
    """
    page = list(select(start, limit, stop=stop, topics=topics))
    for i, n in enumerate(page):
        if not (
            isinstance(n.originator_id, UUID)
            and type(n.originator_version) is int
            and type(n.topic) is str
            and type(n.state) is bytes
        ):
            row = well_typed_row(n.id, n.originator_id, n.originator_version, n.topic, n.state)
            page[i] = Notification(
                id=row[0],
                originator_id=row[1],
                originator_version=row[2],
                topic=row[3],
                state=row[4],
            )
    return page


def _as_is(rows: list[Any]) -> list[RawEvent]:
    return rows


def _typed_rows(rows: list[Any]) -> list[RawEvent]:
    """Raw rows, each a placeholder if its columns do not have the types the ledger writes."""
    for i, (nid, oid, version, topic, state) in enumerate(rows):
        if (
            type(oid) is not str
            or type(version) is not int
            or type(topic) is not str
            or type(state) is not bytes
        ):
            row = well_typed_row(nid, oid, version, topic, state)
            rows[i] = (row[0], row[1].hex, row[2], row[3], row[4])
    return rows


ILL_TYPED_ROW = "payout_ledger:ill-typed-row"
"""The topic of a placeholder for an SQLite row whose columns have impossible types."""


def well_typed_row(
    rowid: int, oid: object, version: object, topic: object, state: object
) -> tuple[int, UUID, int, str, bytes]:
    """The row's columns, or a placeholder that names them (topic ``ILL_TYPED_ROW``)."""
    try:
        originator_id = (
            oid if isinstance(oid, UUID) else UUID(oid) if isinstance(oid, str) else None
        )
    except ValueError:
        originator_id = None
    if (
        originator_id is not None
        and type(version) is int
        and isinstance(topic, str)
        and isinstance(state, bytes)
    ):
        return rowid, originator_id, version, topic, state
    columns = repr((oid, version, topic, state)).encode("utf-8", "backslashreplace")
    placeholder = uuid5(_ROW_NAMESPACE, repr(oid))
    number = version if type(version) is int else 0
    return rowid, placeholder, number, ILL_TYPED_ROW, b"ill-typed columns: " + columns


_ROW_NAMESPACE = UUID("0b5e55ed-0c1d-4b6e-9a2f-00000000c01d")


_SMALLEST_ID, _LARGEST_ID = -(2**63), 2**63 - 1
"""Notification ids are 64-bit: every one of them is read, the smallest included."""


def _raw_pages(
    ledger: PayoutLedger, page_size: int, start: int | None = None, *, checked: bool = True
) -> Iterator[list[RawEvent]]:
    """Pages of plain tuples, each page from the id after the last of the one before.

    On PostgreSQL they are read ahead (``_read_ahead``). SQLite's are not: its rows
    are made in this process, under the same interpreter lock as the reader's
    work, and a thread made the audit slower there, not faster.
    """
    pages = _pages(_page_reader(ledger, page_size, checked), page_size, start)
    if isinstance(ledger.recorder, PostgresApplicationRecorder):
        return _read_ahead(pages)
    return pages


def _pages(
    fetch: Callable[[int], list[RawEvent]], page_size: int, start: int | None
) -> Generator[list[RawEvent], None, None]:
    page = fetch(_SMALLEST_ID if start is None else start)
    while page:
        yield page
        if len(page) < page_size or page[-1][0] >= _LARGEST_ID:
            return
        page = fetch(page[-1][0] + 1)


def _read_ahead(pages: Generator[list[RawEvent], None, None]) -> Iterator[list[RawEvent]]:
    """``pages``, each one fetched in a thread while the caller works on the one
    before: the server's time is not added to the reader's.

    One page at most is held ahead, fetched in the reader's context (its context
    variables: a host's tracing covers the read). A failed fetch raises where its
    page would have come; a reader that stops early waits for the fetch in flight
    (its connection goes back to the pool) and starts no other.
    """

    def next_page() -> list[RawEvent] | None:
        return next(pages, None)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="payout-ledger-read-ahead") as ahead:
            pending = ahead.submit(copy_context().run, next_page)
            try:
                while (page := pending.result()) is not None:
                    pending = ahead.submit(copy_context().run, next_page)
                    yield page
            finally:  # the reader stopped, or a fetch failed: no read it will not use
                pending.cancel()
    finally:  # no thread runs it now
        pages.close()


def _page_reader(
    ledger: PayoutLedger, page_size: int, checked: bool = True
) -> Callable[[int], list[RawEvent]]:
    """The store's query for ``page_size`` events with ids from ``start`` on.

    ``checked=False``: rows as the store returns them, for a reader that checks
    each row's column types itself (see ``iter_states``).
    """
    recorder = ledger.recorder
    typed = _typed_rows if checked else _as_is
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {recorder.events_table_name} WHERE rowid >= ? ORDER BY rowid LIMIT ?"
        )
        sqlite_datastore = recorder.datastore

        def read_sqlite(start: int) -> list[RawEvent]:
            return typed(_sqlite_rows(sqlite_datastore, statement, (start, page_size)))

        return read_sqlite
    if isinstance(recorder, PostgresApplicationRecorder):
        query = SQL(
            "SELECT notification_id, replace(originator_id::text, '-', ''), originator_version, "
            "topic, state "
            "FROM {schema}.{table} WHERE notification_id >= %s ORDER BY notification_id LIMIT %s"
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        postgres_datastore = recorder.datastore

        def read_postgres(start: int) -> list[RawEvent]:
            with (
                postgres_datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as cursor,
            ):
                # Binary results: a state arrives as its bytes, not as hex to decode.
                cursor.execute(query, (start, page_size), prepare=True, binary=True)
                return typed(cursor.fetchall())

        return read_postgres

    def read_memory(start: int) -> list[RawEvent]:
        first = None if start == _SMALLEST_ID else start  # None: from the very first
        return [
            (n.id, UUID(str(n.originator_id)).hex, n.originator_version, n.topic, n.state)
            for n in recorder.select_notifications(first, page_size)
        ]

    return read_memory


Claims = tuple[str, Sequence[str]]
"""A claim's topic and the topics of its outcomes (``TRANSFER_CLAIMS`` and
``REVERSAL_CLAIMS`` of ``payout_ledger.domain.payout``)."""


def claims_without_outcome(
    ledger: PayoutLedger, claim: str, outcomes: Sequence[str], page_size: int = 500
) -> list[UUID]:
    """Aggregates whose last event among ``claim`` and ``outcomes`` is the claim.

    Reads the log once, in pages, keeping only each aggregate's last topic of
    interest: the payouts with an attempt (``PayoutStarted``) or a reversal attempt
    (``ReversalStarted``) left in flight. A row with impossible columns is skipped
    here (its placeholder has another topic) and reported by verify and audit.
    """
    return claims_without_outcomes(ledger, [(claim, outcomes)], page_size)[0]


def claims_without_outcomes(
    ledger: PayoutLedger,
    kinds: Sequence[Claims],
    page_size: int = 500,
    *,
    after: int | None = None,
    known: Sequence[Iterable[UUID]] = (),
) -> list[list[UUID]]:
    """[`claims_without_outcome`][payout_ledger.adapters.log.claims_without_outcome]
    for several kinds of claims, in one read of the log: a list per kind.

    With ``after``, only the events after that notification id are read, on top
    of ``known`` (per kind, the aggregates with a claim in flight as of ``after``,
    from a read model): an aggregate those events touch is decided by its last
    one, any other keeps what ``known`` says.
    """
    topics = sorted({topic for claim, outcomes in kinds for topic in (claim, *outcomes)})
    last: list[dict[UUID, str]] = [{} for _ in kinds]
    for (claim, _), seen, ids in zip(kinds, last, known, strict=False):
        seen.update(dict.fromkeys(ids, claim))
    start = None if after is None else after + 1
    for notification in iter_notifications(ledger, start=start, topics=topics, page_size=page_size):
        for (claim, outcomes), seen in zip(kinds, last, strict=True):
            if notification.topic == claim or notification.topic in outcomes:
                seen[cast(UUID, notification.originator_id)] = notification.topic
    return [
        [originator_id for originator_id, topic in seen.items() if topic == claim]
        for (claim, _), seen in zip(kinds, last, strict=True)
    ]


def iter_states(
    ledger: PayoutLedger,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    after: int | None = None,
    checked: bool = True,
) -> Iterator[list[RawEvent]]:
    """The whole log as pages of plain tuples, in notification order (ids below 1 included).

    With ``after``, only the events after that notification id. Decode the states
    with a [`StateDecoder`][payout_ledger.adapters.log.StateDecoder]. Each row's
    columns have the types of ``RawEvent`` (a row whose columns have impossible
    types becomes a placeholder, see ``well_typed_row``) unless ``checked=False``:
    then the caller checks them (SQLite lets a column hold any type).
    """
    start = None if after is None else after + 1
    for page in _raw_pages(ledger, page_size, start, checked=checked):
        yield page
        if on_page is not None:
            on_page(page[-1][0], len(page))


class StateDecoder:
    """A stored event's state as the dict the mapper would build the event from.

    Decrypts (and decompresses) with the ledger mapper's cipher, decodes the
    JSON with the mapper's transcoder and applies the event class's upcasters.
    Values the transcoder turns into objects (datetimes, UUIDs, decimals) are
    revived as the mapper revives them, so a state the mapper cannot read (a
    time that is no time, a type no transcoding has) raises here too.
    """

    def __init__(self, ledger: PayoutLedger) -> None:
        mapper = ledger.mapper
        self._cipher = mapper.cipher
        self._compressor = mapper.compressor
        self._loads: Callable[[bytes], Any] = mapper.transcoder.decode
        self._versions: dict[str, tuple[type[Any], int]] = {}

    def __call__(self, topic: str, state: bytes) -> dict[str, Any]:
        return self.decode(topic, state)

    def decode(self, topic: str, state: bytes) -> dict[str, Any]:
        """The state the mapper would build an event of ``topic`` from (raises as it does)."""
        if self._cipher is not None:
            state = self._cipher.decrypt(state)
        if self._compressor is not None:
            state = self._compressor.decompress(state)
        decoded = self._loads(state)
        known = self._versions.get(topic)
        if known is None:
            cls = resolve_topic(topic)
            known = self._versions[topic] = (cls, getattr(cls, "class_version", 1))
        cls, class_version = known
        version = decoded.pop("class_version", 1)
        while version < class_version:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(decoded)
            version += 1
        return cast(dict[str, Any], decoded)


def notification(
    nid: int, oid: object, version: object, topic: object, state: object
) -> Notification:
    """A raw row as a ``Notification`` (a placeholder if its columns are impossible)."""
    row = well_typed_row(nid, oid, version, topic, state)
    return Notification(
        id=row[0], originator_id=row[1], originator_version=row[2], topic=row[3], state=row[4]
    )


# Ordered by version, so the planner reads the primary key's range for the one aggregate
# (ordered by notification id, it may walk that index over the whole log instead); the
# rows are put in notification order here.
_AGGREGATE = SQL(
    "SELECT notification_id, replace(originator_id::text, '-', ''), originator_version, "
    "topic, state FROM {schema}.{table} WHERE originator_id = %s "
    "AND notification_id IS NOT NULL ORDER BY originator_version"
)
_AGGREGATE_BEFORE = SQL(
    "SELECT notification_id, replace(originator_id::text, '-', ''), originator_version, "
    "topic, state FROM {schema}.{table} WHERE originator_id = %s "
    "AND notification_id < %s ORDER BY originator_version"
)


def _notification_id(row: RawEvent) -> int:
    return row[0]


def aggregate_rows(
    ledger: PayoutLedger, originator_id: str, before: int | None = None
) -> list[RawEvent]:
    """One aggregate's stored events (with notification ids below ``before``), in order.

    ``originator_id`` is 32 lower-case hex digits. A bounded reader that has let
    an aggregate's state go uses this to rebuild it from the log when a later
    event of that aggregate arrives: one indexed query, no scan.
    """
    recorder = ledger.recorder
    bound = before is not None
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {recorder.events_table_name} WHERE originator_id = ? "
            + ("AND rowid < ? " if bound else "")
            + "ORDER BY originator_version"
        )
        params = (originator_id, before) if bound else (originator_id,)
        rows = _sqlite_rows(recorder.datastore, statement, params)
        return sorted(_typed_rows(rows), key=_notification_id)
    if isinstance(recorder, PostgresApplicationRecorder):
        query = (_AGGREGATE_BEFORE if bound else _AGGREGATE).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        with (
            recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            oid = UUID(originator_id)
            cursor.execute(query, (oid, before) if bound else (oid,))
            return sorted(_typed_rows(cursor.fetchall()), key=_notification_id)
    return [
        row
        for page in _raw_pages(ledger, DEFAULT_PAGE_SIZE)
        for row in page
        if (before is None or row[0] < before) and row[1] == originator_id
    ]


def _sqlite_rows(
    datastore: SQLiteDatastore, statement: str, params: Sequence[object] = ()
) -> list[Any]:
    """The rows of one query, as plain tuples (not ``sqlite3.Row``), in a read transaction."""
    with datastore.transaction(commit=False) as cursor:
        raw = cursor.sqlite_cursor
        raw.row_factory = None
        raw.execute(statement, params)
        return raw.fetchall()


def respelt_rows(ledger: PayoutLedger) -> dict[str, list[RawEvent]]:
    """SQLite rows whose originator id is not spelt as the store writes it, by the id they name.

    Keyed by the id as 32 lower-case hex digits (rows whose id is no UUID at all
    are under ``""``). The ledger does not load such a row with its aggregate;
    verify reports each, and a reader that rebuilds an aggregate from
    [`aggregate_rows`][payout_ledger.adapters.log.aggregate_rows] (which finds rows
    by their exact text) adds these. Empty for other stores.
    """
    recorder = ledger.recorder
    if not isinstance(recorder, SQLiteApplicationRecorder):
        return {}
    statement = (
        "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
        f"FROM {recorder.events_table_name} WHERE typeof(originator_id) != 'text' "
        "OR length(originator_id) != 32 OR originator_id GLOB '*[^0-9a-f]*' ORDER BY rowid"
    )
    rows = _sqlite_rows(recorder.datastore, statement)
    found: dict[str, list[RawEvent]] = {}
    for row in rows:
        try:
            key = UUID(row[1]).hex if isinstance(row[1], str) else ""
        except ValueError:
            key = ""
        found.setdefault(key, []).append(row)
    return found
