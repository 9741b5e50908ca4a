"""The ledger's save records what eventsourcing's own ``Application.save`` does."""

from __future__ import annotations

import ast
import inspect
import textwrap
from datetime import UTC, datetime
from typing import Any

from eventsourcing.application import Application, ProcessingEvent

from payout_ledger import PayoutLedger
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.service.core import _collected
from tests.conftest import LedgerFactory


def _objects(tag: str) -> list[Any]:
    """Two aggregates with pending events, None and a bare event, as a save may get them."""
    first, second, third = (
        PayoutAggregate.start(
            event_service_id=f"es_{tag}_{n}",
            provider_id="prov_alice",
            payee_user_id="user_alice",
            destination_account="acct_alice",
            amount=5000,
            currency="usd",
            started_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for n in range(3)
    )
    second.record_failure(code="card_declined", message="declined", request_id=None)
    return [first, None, second, third.collect_events()[0]]


def _recorded(recordings: list[Any], objs: list[Any]) -> list[tuple[int, int, type]]:
    """Each recording as (which object it came from, version, event class)."""
    ids = [o.id if isinstance(o, PayoutAggregate) else o.originator_id for o in objs if o]
    return [
        (ids.index(r.domain_event.originator_id), r.domain_event.originator_version,
         type(r.domain_event))
        for r in recordings
    ]  # fmt: skip


def test_the_ledger_saves_what_eventsourcings_save_would(make_ledger: LedgerFactory) -> None:
    """The same recordings in the same order, every event stored, the aggregates
    cached, none left pending, and the deprecated ``notify`` hook called once."""
    ledger: PayoutLedger = make_ledger()
    notified: list[list[Any]] = []
    ledger.notify = notified.append  # type: ignore[method-assign]
    ours, theirs = _objects("ours"), _objects("theirs")

    recorded = _recorded(ledger.save(*ours), ours)
    expected = _recorded(Application.save(ledger, *theirs), theirs)

    assert recorded == expected
    assert recorded == [
        (0, 1, PayoutAggregate.PayoutStarted),
        (1, 1, PayoutAggregate.PayoutStarted),
        (1, 2, PayoutAggregate.TransferFailed),
        (2, 1, PayoutAggregate.PayoutStarted),
    ]
    # The first money event's save records the store's mode first (a save of its own).
    assert [len(events) for events in notified] == [1, 4, 4]
    for payout in (ours[0], ours[2]):
        assert payout.collect_events() == []
        assert ledger.repository.get(payout.id).version == payout.version
    assert len(ledger.recorder.select_events(ours[3].originator_id)) == 1


def test_collecting_gives_eventsourcings_processing_event() -> None:
    """What a snapshot or a repository cache reads (the aggregates by id) as well as
    the events and keywords: as ``ProcessingEvent.collect_events`` gives them."""
    objs = _objects("collect")
    events_of = {id(o): list(o._pending_events) for o in objs if isinstance(o, PayoutAggregate)}
    ours = _collected(tuple(objs), {"extra": 1})
    for o in objs:  # collect them again, for eventsourcing's own collecting
        if isinstance(o, PayoutAggregate):
            o._pending_events = list(events_of[id(o)])
    theirs: ProcessingEvent[Any] = ProcessingEvent()
    theirs.collect_events(*objs, extra=1)

    assert ours.events == theirs.events and len(ours.events) == 4
    assert ours.aggregates == theirs.aggregates and len(ours.aggregates) == 2
    assert ours.saved_kwargs == theirs.saved_kwargs == {"extra": 1}


def test_eventsourcings_save_still_has_the_steps_the_ledger_repeats() -> None:
    """The ledger's save repeats eventsourcing's ``Application.save`` step for step:
    if a release of eventsourcing changes that method, this fails, to be looked at."""
    source = textwrap.dedent(inspect.getsource(Application.save))
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.FunctionDef)
    body = [s for s in function.body if not isinstance(s, ast.Expr) or
            not isinstance(s.value, ast.Constant)]  # fmt: skip

    assert [ast.unparse(s) for s in body] == [
        "processing_event: ProcessingEvent[TAggregateID] = ProcessingEvent()",
        "processing_event.collect_events(*objs, **kwargs)",
        "recordings = self._record(processing_event)",
        "self._take_snapshots(processing_event)",
        "self._notify(recordings)",
        "self.notify(processing_event.events)",
        "return recordings",
    ]
