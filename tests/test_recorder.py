"""The PostgreSQL recorder: every arity saves atomically, in order, once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from payout_ledger import LedgerSettings, PayoutLedger
from payout_ledger.adapters.recorders import OneRoundTripRecorder
from payout_ledger.testing import InMemoryProviderDirectory
from tests.conftest import schema_of_its_own

pytestmark = pytest.mark.postgres


@pytest.fixture
def recorder(postgres_url: str) -> Iterator[OneRoundTripRecorder]:
    with PayoutLedger(
        settings=LedgerSettings(store_url=postgres_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory([]),
    ) as ledger:
        assert isinstance(ledger.recorder, OneRoundTripRecorder)
        yield ledger.recorder


def _events(originator: uuid.UUID, first: int, count: int) -> list[StoredEvent]:
    return [
        StoredEvent(
            originator_id=originator,
            originator_version=first + i,
            topic=f"topic_{first + i}",
            state=f"state {first + i}".encode(),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_a_save_of_any_size_stores_every_event_in_order(
    recorder: OneRoundTripRecorder, count: int
) -> None:
    """One, two (scalar calls) and more (array call): all stored, ids ascending."""
    originator = uuid.uuid4()
    ids = recorder.insert_events(_events(originator, 1, count))

    assert ids is not None and len(ids) == count and list(ids) == sorted(ids)
    # The ids returned are the events' notification ids.
    notified = recorder.select_notifications(ids[0], count, stop=ids[-1])
    assert [(n.id, n.originator_version) for n in notified] == [
        (i, v) for i, v in zip(ids, range(1, count + 1), strict=True)
    ]
    stored = recorder.select_events(originator)
    assert [(e.originator_version, e.topic, e.state) for e in stored] == [
        (e.originator_version, e.topic, e.state) for e in _events(originator, 1, count)
    ]


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("taken", ["first", "last"])
def test_a_save_meeting_a_stored_version_is_refused_whole(
    recorder: OneRoundTripRecorder, count: int, taken: str
) -> None:
    """A conflict on the first version (checked early) or a later one stores nothing."""
    originator = uuid.uuid4()
    batch = _events(originator, 1, count)
    clash = batch[0] if taken == "first" else batch[-1]
    recorder.insert_events([clash])

    with pytest.raises(IntegrityError):
        recorder.insert_events(batch)

    assert [e.originator_version for e in recorder.select_events(originator)] == [
        clash.originator_version
    ]


def test_a_schema_named_beyond_ascii_saves_on_connections_of_another_encoding(
    postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save's statement names the schema, quoted: a connection opened with
    another client encoding (a host's PGCLIENTENCODING, a role's setting) gets it in
    its own encoding, for every kind of save."""
    with schema_of_its_own(postgres_server_url, f"payouts_ü_{uuid.uuid4().hex[:8]}") as url:
        settings = LedgerSettings(
            store_url=url,
            stripe_enabled=False,
            postgres_pool_size=1,
            postgres_max_overflow=0,
        )
        with PayoutLedger(settings=settings, providers=InMemoryProviderDirectory([])) as ledger:
            recorder = ledger.recorder
            assert isinstance(recorder, OneRoundTripRecorder)
            pool = ledger.factory.datastore.pool  # type: ignore[attr-defined]
            originator = uuid.uuid4()
            saved: list[int] = []
            for encoding in ("utf-8", "iso8859-1"):
                monkeypatch.setenv("PGCLIENTENCODING", {"utf-8": "UTF8"}.get(encoding, "LATIN1"))
                with pool.connection() as conn:  # the next save gets a new connection
                    conn.close()
                with pool.connection() as conn:
                    assert conn.info.encoding == encoding
                for count in (1, 2, 3):  # scalar calls, then the array call
                    ids = recorder.insert_events(_events(originator, len(saved) + 1, count))
                    saved += ids or []
            assert [e.originator_version for e in recorder.select_events(originator)] == list(
                range(1, 13)
            )
            assert len(saved) == 12
