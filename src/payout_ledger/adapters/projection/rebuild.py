"""The fast rebuild: the whole log folded in memory, its rows written many at a time.

``run_projection(..., rebuild=True)`` uses it when the projection folds as
[`PayoutsProjection.fold`][payout_ledger.adapters.projection.PayoutsProjection.fold]
does (not a subclass with a fold of its own) and the view has a
[`RowWriter`][payout_ledger.adapters.projection.view.RowWriter]. Applying the log
in batches costs some 30 µs an event (a ``Notification``, a UUID, the mapper's
digest, an event object, dicts per row change, a query per batch); this, a few:

* the log is read with [`iter_states`][payout_ledger.adapters.log.iter_states]
  (pages of plain tuples) and each payout event's state decoded here: decrypted,
  JSON-decoded, its ``{"_type_", "_data_"}`` values revived by the ledger's own
  transcodings and upcast, as the ledger's mapper does, without an event object;
* each payout's row is a tuple in ``COLUMNS`` order; the rows of the payouts
  touched last stay in memory (up to ``_CACHED_ROWS``);
* the changed rows are handed to the writer every ``_FLUSH_ROWS`` rows, which
  writes them on a thread of its own while the next ones are folded, each batch
  as one JSON document the database reads (see
  [`json_rows`][payout_ledger.adapters.projection.view.json_rows]): on SQLite
  into a scratch table, copied into the new table at the end; on PostgreSQL
  into the new table, each batch with its tracking record.

**The same table, the same skips.** The decoding here only takes the common
case: a JSON object without ``\\u`` escapes, whose folded fields have exactly
their declared types, whose integers fit their columns and whose service id is
its payout's. A state as the ledger writes it (every key declared by its class,
each value of its declared type, no escape, the class's own version) is read in
one typed pass (``payout_ledger.adapters.typed_state``); any other is decoded as
JSON and revived here. Any other payout event (and any that fails to decode
here) is decoded by the ledger's mapper and checked by
[`unprojectable`][payout_ledger.adapters.projection.unprojectable], as when the
log is applied in batches: left out, logged and counted for the same reasons.
A row whose columns have impossible types is read again as those runs read it.
``tests/audit/test_projection.py`` requires a rebuild to make the same table as
folding the log event by event.

**Memory.** A payout whose row was written and is no longer in memory is read
back when a later event touches it, say a reversal months later (one query for
all such payouts of a page). A payout's first event (``PayoutStarted`` of
version 1) is taken to start a new row without a query: in an edited log where
it does not, the row is written as a new one and the database refuses it. If
the database refuses a row (this, or what the checks should make impossible),
the new table is dropped and the log applied again in batches, which leave out
only the event the database refuses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from json import JSONDecoder
from operator import attrgetter, itemgetter
from typing import Any, cast
from uuid import UUID

import msgspec
import pydantic_core
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Notification, Transcoding
from eventsourcing.utils import get_topic

from payout_ledger.adapters.log import ILL_TYPED_ROW, RawEvent, iter_states
from payout_ledger.adapters.mapper import ChainedMapper
from payout_ledger.adapters.projection.checks import (
    COLUMN_RANGES,
    FOLDED_FIELDS,
    INT4,
    WRITE_ERRORS,
    first_line,
    report_skip,
    unprojectable,
)
from payout_ledger.adapters.projection.fold import PAYOUT_TOPICS, PayoutsProjection
from payout_ledger.adapters.projection.view import COLUMNS, PayoutsView, Row, RowWriter
from payout_ledger.adapters.typed_state import typed_state
from payout_ledger.domain.chain import LedgerTranscoder
from payout_ledger.domain.payout import PAYOUT_NAMESPACE, PayoutAggregate, PayoutStatus
from payout_ledger.domain.payout import ReversalStatus as _Reversal

logger = logging.getLogger("payout_ledger.adapters.projection")

_PAGE_SIZE = 5000
"""Stored events read per query."""
_FLUSH_ROWS = 20_000
"""Changed rows held before they are written (one batch)."""
_CACHED_ROWS = 60_000
"""Rows kept in memory after a batch is written (the payouts touched last)."""

_P = PayoutAggregate
_KINDS_IN_ORDER = (
    _P.PayoutStarted,
    _P.TransferFailed,
    _P.TransferSucceeded,
    _P.Released,
    _P.TransferReversed,
    _P.ReversalStarted,
    _P.ReversalSucceeded,
    _P.ReversalFailed,
)
_STARTED, _FAILED, _SUCCEEDED, _RELEASED, _REVERSED = range(5)
_REVERSAL_STARTED, _REVERSAL_SUCCEEDED, _REVERSAL_FAILED = range(5, 8)
"""Each kind's code: its position in ``_KINDS_IN_ORDER``."""

# A new row is written out whole, and a started one's columns payout_id..attempt
# replaced as a slice: the fold relies on this order of the columns.
assert COLUMNS == (
    "payout_id", "event_service_id", "provider_id", "payee_user_id", "destination_account",
    "amount", "currency", "status", "attempt", "transfer_id", "amount_reversed",
    "failure_code", "released_at", "updated_at", "version", "notification_id",
    "reversal_attempt", "reversal_status",
)  # fmt: skip
_PAYOUT_ID, _AMOUNT, _STATUS, _ATTEMPT, _TRANSFER_ID, _AMOUNT_REVERSED = 0, 5, 7, 8, 9, 10
_FAILURE_CODE, _RELEASED_AT, _UPDATED_AT, _VERSION, _NOTIFICATION_ID = 11, 12, 13, 14, 15
_REVERSAL_ATTEMPT, _REVERSAL_STATUS = 16, 17

_IN_FLIGHT = PayoutStatus.IN_FLIGHT.value
_FAILED_STATUS = PayoutStatus.FAILED.value
_TRANSFERRED = PayoutStatus.TRANSFERRED.value
_RELEASED_STATUS = PayoutStatus.RELEASED.value
_REVERSED_STATUS = PayoutStatus.REVERSED.value
_REVERSAL_IN_FLIGHT = _Reversal.IN_FLIGHT.value
_REVERSAL_SUCCEEDED_STATUS = _Reversal.SUCCEEDED.value
_REVERSAL_FAILED_STATUS = _Reversal.FAILED.value

_HEX = "0123456789abcdef"
_UUID5_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID5_SET = (0x5 << 76) | (0x2 << 62)
_SERVICE_ID_PREFIX = PAYOUT_NAMESPACE.bytes + b"event-service:"
_LOW4, _HIGH4 = INT4
_NONE = type(None)
_EXACT_TYPES = (int, str, bool, float, datetime, _NONE)


@dataclass(frozen=True)
class _Kind:
    """What the fold reads from one kind of payout event, and how to trust it."""

    code: int
    cls: type[Any]
    read: Callable[[dict[str, Any]], tuple[Any, ...]]
    """The folded fields, then the timestamp (KeyError if one is missing)."""
    holds: Callable[[Sequence[Any]], bool]
    """Whether the values :attr:`read` returned certainly pass ``unprojectable``'s
    type and range checks (False: maybe not, the exact path decides)."""
    transcoded: tuple[str, ...]
    """The fields that hold transcoded values ({"_type_", "_data_"}) when stored."""
    class_version: int
    typed: Callable[[bytes], list[Any]] | None
    """The values :attr:`read` would return, from a stored state of the current class
    version whose every key the class declares with a value of its declared type
    (raises on any other state; None: a class this reading does not know)."""


def _exact_types(hint: Any) -> tuple[type, ...] | None:
    """The types that certainly pass ``type_check``'s test of ``hint`` (None: unknown)."""
    if hint is None or hint is _NONE:
        return (_NONE,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_exact_types(a) for a in typing.get_args(hint)]
        if any(p is None for p in parts):
            return None
        return tuple(t for p in parts if p is not None for t in p)
    if hint in _EXACT_TYPES:
        return (hint,)
    return None


def _holds(names: tuple[str, ...], hints: dict[str, Any]) -> Callable[[Sequence[Any]], bool]:
    """A function that tells whether values of ``names`` certainly pass the checks of
    ``unprojectable``: each of a type its annotation accepts (exactly), each integer
    in its column's range. Generated, as ``dataclasses`` generates ``__init__``: a
    test per value costs a tenth of what a generic loop does."""
    namespace: dict[str, Any] = {}
    tests = []
    for i, name in enumerate(names):
        accepted = _exact_types(hints[name])
        if accepted is None:
            return lambda values: False  # an annotation only the exact path checks
        alternatives = []
        for t in accepted:
            if t is _NONE:
                alternatives.append(f"v[{i}] is None")
            else:
                namespace[f"t{len(namespace)}"] = t
                alternatives.append(f"type(v[{i}]) is t{len(namespace) - 1}")
        tests.append(f"({' or '.join(alternatives)})")
        if name in COLUMN_RANGES:
            low, high = COLUMN_RANGES[name]
            tests.append(f"{low} <= v[{i}] <= {high}")
    source = f"def holds(v):\n    return {' and '.join(tests)}\n"
    exec(source, namespace)  # noqa: S102 - the source is made here, of names and types
    return cast(Callable[[Sequence[Any]], bool], namespace["holds"])


def _kind(code: int, cls: type[Any]) -> _Kind:
    names = (*FOLDED_FIELDS[cls], "timestamp")
    hints = typing.get_type_hints(cls)
    read: Callable[[dict[str, Any]], tuple[Any, ...]]
    if len(names) == 1:
        only = names[0]

        def read(state: dict[str, Any]) -> tuple[Any, ...]:
            return (state[only],)
    else:
        read = cast(Callable[[dict[str, Any]], tuple[Any, ...]], itemgetter(*names))
    transcoded = tuple(n for n, h in hints.items() if h is datetime)
    return _Kind(code, cls, read, _holds(names, hints), transcoded,
                 getattr(cls, "class_version", 1), _typed_reader(cls, names))  # fmt: skip


def _typed_reader(cls: type[Any], names: tuple[str, ...]) -> Callable[[bytes], list[Any]] | None:
    """A reader of the values of ``names`` (the fields :attr:`_Kind.read` returns) from a
    stored state in one typed pass, or None if ``cls`` has no typed state.

    It raises unless the state is exactly as ``cls`` declares (see
    ``payout_ledger.adapters.typed_state``) and every transcoded value revives as the
    mapper revives it: what it returns is what the mapper's event holds.
    """
    typed = typed_state(cls)
    if typed is None or not set(names) <= {f.name for f in dataclasses.fields(cls)}:
        return None
    decode = typed.decode
    others = tuple((n, revive) for n, revive in typed.revivers if n not in names)
    revived = tuple((names.index(n), revive) for n, revive in typed.revivers if n in names)
    get: Callable[[Any], Any] = attrgetter(*names)
    single = len(names) == 1
    unset = msgspec.UNSET

    def read(plaintext: bytes) -> list[Any]:
        state = decode(plaintext)
        for name, revive in others:
            revive(getattr(state, name))  # the mapper revives it, or fails
        values = [get(state)] if single else list(get(state))
        for i, revive in revived:
            values[i] = revive(values[i])
        if unset in values:
            raise KeyError("a folded field with a default is absent")  # as read() does
        return values

    return read


_KINDS = {get_topic(cls): _kind(code, cls) for code, cls in enumerate(_KINDS_IN_ORDER)}
assert set(_KINDS) == set(PAYOUT_TOPICS)


def fast_rebuild_applies(projection_class: type[PayoutsProjection]) -> bool:
    """Whether ``projection_class`` folds as the package's own projection does."""
    return (
        projection_class.fold is PayoutsProjection.fold
        and projection_class.process_batch is PayoutsProjection.process_batch
        and tuple(projection_class.topics) == PAYOUT_TOPICS
    )


class RefusedByTheTableError(Exception):
    """The database refused a row of the rebuild: fold again in batches."""


@dataclass
class FoldTally:
    """What a fast rebuild folded."""

    events: int = 0
    skipped: int = 0
    batches: int = 0
    through: int | None = None
    """The notification id of the last payout event read."""


def fold_log(
    ledger: Any,
    view: PayoutsView,
    writer: RowWriter,
    application_name: str,
    stopping: threading.Event,
    on_batch: Callable[[int, int], None] | None,
) -> FoldTally | None:
    """Fold the whole log into rows with ``writer`` (a new staging view's), then
    replace ``view``'s table by them.

    Returns what was folded, or None if ``stopping`` was set first (the table
    is not replaced then: the caller drops the staging view). Raises
    :class:`RefusedByTheTableError` if the database refuses a row.
    """
    folder = _Folder(ledger, writer, application_name)
    tally = folder.tally
    for page in iter_states(ledger, page_size=_PAGE_SIZE, checked=False):
        folder.fold(page)
        if folder.pending() >= _FLUSH_ROWS:
            applied = folder.flush()
            if on_batch is not None and tally.through is not None:
                on_batch(tally.through, applied)
        if stopping.is_set():
            return None
    applied = folder.flush()
    if on_batch is not None and tally.through is not None and (applied or not tally.batches):
        on_batch(tally.through, applied)
    if stopping.is_set():
        return None
    try:
        writer.finish(view, application_name, tally.through)
    except WRITE_ERRORS as exc:
        raise RefusedByTheTableError(first_line(exc)) from exc
    return tally


class _Folder:
    """The fold's state: the rows in memory, what is left to write, the counts."""

    def __init__(self, ledger: Any, writer: RowWriter, application_name: str) -> None:
        self.ledger = ledger
        self.writer = writer
        self.application_name = application_name
        self.tally = FoldTally()
        self.applied = 0
        """Events folded since the last batch was written."""
        self.rows: dict[str, Row] = {}
        """Rows in memory, by payout id (32 hex digits), oldest first."""
        self.fresh: set[str] = set()
        """Payouts whose row started here and is not written yet (written by INSERT)."""
        self.dirty: set[str] = set()
        """Payouts whose row changed since the last batch was written."""
        mapper = ledger.mapper
        self.mapper = mapper
        transcoder = mapper.transcoder
        # The decoding here is the mapper's as long as the mapper and the transcoder
        # are the ledger's own classes; otherwise every event takes the exact path.
        self.decodes = type(mapper) is ChainedMapper and type(transcoder) in (
            LedgerTranscoder,
            JSONTranscoder,
        )
        self.names: dict[str, Transcoding] = getattr(transcoder, "names", {})
        self.iso = type(self.names.get("datetime_iso")) is DatetimeAsISO
        self.cipher = mapper.cipher
        self.compressor = mapper.compressor

    def pending(self) -> int:
        """How many changed rows wait to be written."""
        return len(self.fresh) + len(self.dirty)

    def flush(self) -> int:
        """Write the changed rows (one batch); returns the events folded since the last."""
        applied, self.applied = self.applied, 0
        if not self.fresh and not self.dirty:
            return applied
        rows, fresh = self.rows, self.fresh
        new = [rows[key] for key in fresh]
        changed = [rows[key] for key in self.dirty if key not in fresh]
        through = self.tally.through
        assert through is not None
        try:
            self.writer.write(self.application_name, new, changed, through)
        except WRITE_ERRORS as exc:
            raise RefusedByTheTableError(first_line(exc)) from exc
        self.tally.batches += 1
        self.fresh, self.dirty = set(), set()
        excess = len(rows) - _CACHED_ROWS
        if excess > 0:
            for key in list(islice(rows, excess)):
                del rows[key]
        return applied

    def fold(self, page: Sequence[RawEvent]) -> None:
        """Fold one page of the log into the rows (the rule of ``PayoutsProjection.fold``).

        Rows are tuples (a new one per event): the garbage collector stops tracking
        tuples of plain values, and a list per payout in memory would make it
        traverse them all again and again.
        """
        kinds_get, rows, fresh, dirty = _KINDS.get, self.rows, self.fresh, self.dirty
        rows_get, tally = rows.get, self.tally
        decodes, plain, iso = (
            self.decodes,
            self.cipher is None and self.compressor is None,
            self.iso,
        )
        loaded, applied, through = False, 0, tally.through
        values: Sequence[Any] | None
        for nid, oid, version, topic, stored in page:
            kind = kinds_get(topic)
            if (
                kind is None
                or type(oid) is not str
                or type(version) is not int
                or type(stored) is not bytes
            ):
                if (kind is None and topic != ILL_TYPED_ROW) or nid < 1:
                    continue
                # Columns of impossible types (SQLite lets a column hold any): the row is
                # read as runs that apply batches read it.
                read, found = self._ill_typed(nid)
                if read:
                    through = nid
                if found is None:
                    continue
                kind, key, version, values = found
                row = rows_get(key)
                if row is None:
                    rows.update(self._read_back([key]))
                    row = rows_get(key)
            else:
                if nid < 1:
                    continue  # runs that apply batches read from notification 1 on
                through = nid
                row = rows_get(oid)
                if row is None:
                    key = oid if len(oid) == 32 and not oid.strip(_HEX) else UUID(oid).hex
                    row = rows_get(key)
                    if row is None and not loaded and (version != 1 or kind.code != _STARTED):
                        self._load(page)  # all the page needs, in one query
                        loaded = True
                        row = rows_get(key)
                else:
                    key = oid
                # The common case, decoded here as the mapper decodes it (see the module's
                # notes); anything else (values None) takes the exact path.
                values = None
                if decodes:
                    try:
                        plaintext = stored if plain else self._plaintext(stored)
                        typed = kind.typed
                        if typed is not None and iso and b"\\" not in plaintext:
                            try:
                                values = typed(plaintext)
                            except Exception:  # not of its declared types: read as JSON
                                values = None
                        if values is None:
                            values = self._decoded(kind, plaintext)
                        if values is not None and not (
                            kind.holds(values)
                            and _LOW4 <= version <= _HIGH4
                            and (kind.code != _STARTED or _payout_int(values[0]) == int(key, 16))
                        ):
                            values = None
                    except Exception:  # the exact path decides, and says why
                        values = None
                if values is None:  # anything but the common case: as runs that apply batches
                    values = self._exact(nid, key, version, topic, stored, kind)
            if values is None:
                continue
            applied += 1
            code = kind.code
            if code == _STARTED:
                esid, provider, payee, destination, amount, currency, attempt, at = values
                if row is None:
                    rows[key] = (_payout_id(key), esid, provider, payee, destination, amount,
                                 currency, _IN_FLIGHT, attempt, None, 0, None, None, at, version,
                                 nid, 0, None)  # fmt: skip
                    fresh.add(key)
                    continue
                new = list(row)
                new[_PAYOUT_ID : _ATTEMPT + 1] = (_payout_id(key), esid, provider, payee,
                                                  destination, amount, currency, _IN_FLIGHT,
                                                  attempt)  # fmt: skip
                new[_FAILURE_CODE] = None
            elif row is None:
                logger.warning(
                    "%s at notification %d for payout %s without PayoutStarted; not projected",
                    kind.cls.__name__,
                    nid,
                    UUID(hex=key),
                )
                continue
            else:
                new = list(row)
                if code == _SUCCEEDED:
                    new[_STATUS], new[_TRANSFER_ID] = _TRANSFERRED, values[0]
                elif code == _RELEASED:
                    new[_STATUS], new[_RELEASED_AT] = _RELEASED_STATUS, values[0]
                elif code == _FAILED:
                    new[_STATUS], new[_FAILURE_CODE] = _FAILED_STATUS, values[0]
                elif code == _REVERSED:
                    new[_AMOUNT_REVERSED] = values[0]
                    if values[0] >= new[_AMOUNT]:
                        new[_STATUS] = _REVERSED_STATUS
                elif code == _REVERSAL_STARTED:
                    new[_REVERSAL_ATTEMPT], new[_REVERSAL_STATUS] = values[0], _REVERSAL_IN_FLIGHT
                elif code == _REVERSAL_SUCCEEDED:
                    reversed_ = max(new[_AMOUNT_REVERSED], values[1])
                    new[_AMOUNT_REVERSED] = reversed_
                    new[_REVERSAL_STATUS] = _REVERSAL_SUCCEEDED_STATUS
                    if reversed_ >= new[_AMOUNT]:
                        new[_STATUS] = _REVERSED_STATUS
                else:  # _REVERSAL_FAILED
                    new[_REVERSAL_STATUS] = _REVERSAL_FAILED_STATUS
            new[_UPDATED_AT], new[_VERSION], new[_NOTIFICATION_ID] = values[-1], version, nid
            rows[key] = tuple(new)
            dirty.add(key)
        tally.through = through
        tally.events += applied
        self.applied += applied

    def _load(self, page: Sequence[RawEvent]) -> None:
        """Read back the written rows of the payouts this page touches that are not in
        memory (one query for the page), but those it starts (see :meth:`fold`)."""
        rows = self.rows
        wanted: set[str] = set()
        for nid, oid, version, topic, _stored in page:
            kind = _KINDS.get(topic)
            if (
                kind is not None
                and nid >= 1
                and type(oid) is str
                and oid not in rows
                and (version != 1 or kind.code != _STARTED)
            ):
                wanted.add(oid if len(oid) == 32 and not oid.strip(_HEX) else UUID(oid).hex)
        wanted.difference_update(rows)
        if wanted:
            rows.update(self._read_back(sorted(wanted)))

    def _decoded(self, kind: _Kind, plaintext: bytes) -> Sequence[Any] | None:
        """The values :attr:`_Kind.read` takes from ``plaintext``, decoded as JSON and revived
        and upcast as the mapper does; None if it is not a JSON object without ``\\u``
        escapes of a known class version (raises if a value cannot be revived)."""
        text = plaintext.decode("utf-8")
        if "\\" not in text:
            state = _from_json(text, cache_strings="keys")
        elif "\\u" in text:  # NUL or a lone surrogate maybe
            return None
        else:
            state, end = _scan_once(text, 0)
            if end != len(text):
                return None
        if type(state) is not dict or len(state) <= 2:
            return None
        cv = state.pop("class_version", 1)
        brace, walk = text.find("{", 1), "[" in text
        for name in kind.transcoded:
            value = state.get(name)
            if type(value) is dict:
                data = value.get("_data_")
                if (
                    self.iso
                    and type(data) is str
                    and len(value) == 2
                    and value.get("_type_") == "datetime_iso"
                ):
                    state[name] = datetime.fromisoformat(data)
                    brace = text.find("{", brace + 1)
                else:
                    state[name] = self._revived(value)
                    walk = True
        if walk or brace != -1:
            # Other objects or arrays: revived as the transcoder's hook does.
            for name, value in state.items():
                if type(value) is dict or type(value) is list:
                    state[name] = self._revived(value)
        if type(cv) is not int:
            return None
        if cv < kind.class_version:
            _upcast(kind, state, cv)
        return kind.read(state)

    def _read_back(self, payout_ids: Sequence[str]) -> dict[str, Row]:
        try:
            return self.writer.load(payout_ids)
        except WRITE_ERRORS as exc:  # a batch written meanwhile was refused
            raise RefusedByTheTableError(first_line(exc)) from exc

    def _plaintext(self, stored: bytes) -> bytes:
        if self.cipher is not None:
            stored = self.cipher.decrypt(stored)
        if self.compressor is not None:
            stored = self.compressor.decompress(stored)
        return stored

    def _revived(self, value: Any) -> Any:
        """``value`` (a decoded JSON object or array) as the transcoder's object hook
        makes it: every ``{"_type_", "_data_"}`` object decoded, innermost first."""
        if type(value) is list:
            return [self._revived(v) if type(v) in (dict, list) else v for v in value]
        revived = {k: self._revived(v) if type(v) in (dict, list) else v for k, v in value.items()}
        if len(revived) == 2 and "_type_" in revived and "_data_" in revived:
            return self.names[revived["_type_"]].decode(revived["_data_"])
        return revived

    def _exact(
        self, nid: int, key: str, version: int, topic: str, stored: bytes, kind: _Kind
    ) -> tuple[Any, ...] | None:
        """The event decoded by the ledger's mapper and checked as runs that apply
        batches do: the values the fold reads, or None if it is left out (logged)."""
        notification = Notification(
            id=nid, originator_id=UUID(hex=key), originator_version=version, topic=topic,
            state=stored,
        )  # fmt: skip
        return self._checked(notification, kind)

    def _checked(self, notification: Notification, kind: _Kind) -> tuple[Any, ...] | None:
        try:
            event = self.mapper.to_domain_event(notification)
        except Exception as exc:  # a damaged event is left out, and logged
            report_skip(notification, f"undecodable ({first_line(exc)})")
            self.tally.skipped += 1
            return None
        reason = unprojectable(event)
        if reason is not None:
            report_skip(notification, reason)
            self.tally.skipped += 1
            return None
        return kind.read(vars(event))

    def _ill_typed(self, nid: int) -> tuple[bool, tuple[_Kind, str, int, tuple[Any, ...]] | None]:
        """A stored row with impossible column types, read as runs that apply batches
        read it (which may raise, as it does there): whether it is read as a payout
        event, and its kind, payout, version and values (None: left out, logged)."""
        recorder = self.ledger.recorder
        for notification in recorder.select_notifications(nid, 1, stop=nid, topics=PAYOUT_TOPICS):
            kind = _KINDS[notification.topic]
            values = self._checked(notification, kind)
            if values is None:
                return True, None
            key = UUID(str(notification.originator_id)).hex
            return True, (kind, key, notification.originator_version, values)
        return False, None


def _upcast(kind: _Kind, state: dict[str, Any], version: int) -> None:
    while version < kind.class_version:
        getattr(kind.cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1


def _payout_id(key: str) -> str:
    """The payout id column's text: the UUID of the 32 hex digits ``key``."""
    return f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}"


def _payout_int(event_service_id: str) -> int:
    """``PayoutAggregate.create_id(event_service_id).int`` (a uuid5), without the UUID."""
    digest = hashlib.sha1(_SERVICE_ID_PREFIX + event_service_id.encode("utf-8")).digest()  # noqa: S324
    return int.from_bytes(digest[:16], "big") & _UUID5_KEEP | _UUID5_SET


# The C scanner, without json.loads' wrappers (as payout_ledger.adapters.log uses it).
_scan_once: Callable[[str, int], tuple[Any, int]] = cast(Any, JSONDecoder()).scan_once
_from_json = pydantic_core.from_json
"""pydantic's JSON parser (jiter): faster than ``json`` and, on text without escapes,
decoding the same documents to the same values (anything it refuses takes the exact
path, which uses ``json``)."""
