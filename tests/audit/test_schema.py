"""Schema evolution: events stored by earlier releases keep replaying, and verifying.

``fixtures/*.json`` are StoredEvent rows written by real ledger runs
(``fixtures/generate.py``): ``legacy_unchained`` before events were chained and
before ``PayoutStarted`` had a class version, ``chained_v2`` as written today.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from payout_ledger import PayoutAggregate, PayoutLedger
from payout_ledger.audit import ProblemKind, audit_ledger, verify_ledger
from payout_ledger.chain import event_digest, keeps_stored_form
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.fixtures.generate import public_state
from tests.audit.scenario import release

FIXTURES = Path(__file__).parent / "fixtures"
STARTED = PayoutAggregate.PayoutStarted.TOPIC


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8")))


def store(ledger: PayoutLedger, rows: list[dict[str, Any]]) -> None:
    """Insert fixture rows, in their notification order."""
    for row in sorted(rows, key=lambda r: r["notification_id"]):
        ledger.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=UUID(row["originator_id"]),
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=row["state"].encode("utf-8"),
                )
            ]
        )


@pytest.mark.parametrize("name", ["legacy_unchained", "chained_v2"])
def test_stored_events_of_earlier_releases_replay_to_the_recorded_state(
    name: str, ledger: PayoutLedger
) -> None:
    """Every aggregate of a fixture replays to the state recorded when it was written."""
    data = fixture(name)
    store(ledger, data["events"])

    for aggregate_id, expected in data["expected"].items():
        replayed = public_state(ledger.repository.get(UUID(aggregate_id)))
        assert {k: replayed.get(k) for k in expected} == expected, aggregate_id
    report = audit_ledger(ledger)
    assert report.ok
    assert audit_ledger(ledger, decode="mapper") == report


def test_the_legacy_prefix_verifies_as_unchained_and_is_refused_when_strict(
    ledger: PayoutLedger,
) -> None:
    """Events stored before chaining are counted as legacy; ``strict`` reports each of them."""
    events = fixture("legacy_unchained")["events"]
    store(ledger, events)

    report = verify_ledger(ledger)
    strict = verify_ledger(ledger, strict=True)

    assert report.ok
    assert report.legacy_events == len(events) and report.chained_events == 0
    assert [p.kind for p in strict.problems] == [ProblemKind.LEGACY_UNCHAINED] * len(events)


def test_todays_fixture_is_fully_chained(ledger: PayoutLedger) -> None:
    """The events written today all carry previous_hash and verify."""
    events = fixture("chained_v2")["events"]
    store(ledger, events)

    report = verify_ledger(ledger, strict=True)

    assert report.ok, report.problems
    assert report.chained_events == len(events)


def test_a_payout_started_stored_without_started_at_is_upcast_from_its_timestamp(
    ledger: PayoutLedger,
) -> None:
    """A version 1 PayoutStarted (no started_at) gets its own timestamp as started_at."""
    rows = [r for r in fixture("legacy_unchained")["events"] if r["topic"] == STARTED][:1]
    state = json.loads(rows[0]["state"])
    del state["started_at"]
    assert "class_version" not in state  # stored as version 1
    store(ledger, [{**rows[0], "state": json.dumps(state)}])

    [started] = ledger.history(state["event_service_id"])

    moment = datetime.fromisoformat(state["timestamp"]["_data_"])
    assert isinstance(started, PayoutAggregate.PayoutStarted)
    assert started.started_at == moment
    assert ledger.get_payout(state["event_service_id"]).attempt_started_at == moment
    assert verify_ledger(ledger).ok
    assert audit_ledger(ledger) == audit_ledger(ledger, decode="mapper")


def test_new_events_chain_onto_a_legacy_payout(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A retry of a legacy failed payout links its first event to the last legacy one."""
    events = fixture("legacy_unchained")["events"]
    store(ledger, events)
    legacy = ledger.history("es_failed")

    result = ledger.release_payment(release("es_failed", provider_id="prov_carol", currency="eur"))

    assert result.success
    first_new = ledger.history("es_failed")[len(legacy)]
    assert first_new.previous_hash == event_digest(legacy[-1])
    report = verify_ledger(ledger)
    assert report.ok, report.problems
    assert report.legacy_events == len(events)
    assert report.chained_events == report.events - len(events)


def test_an_unchained_event_after_chained_ones_is_a_problem(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Stripping previous_hash from a new event of a chained payout does not pass as legacy."""
    ledger.release_payment(release("es_1"))
    payout = ledger.get_payout("es_1")
    assert payout.transfer_id is not None
    payout.record_reversal(transfer_id=payout.transfer_id, amount_reversed=1, stripe_event_id=None)
    [event] = payout.collect_events()
    stored = ledger.mapper.to_stored_event(event)
    state = json.loads(stored.state)
    del state["previous_hash"]
    ledger.recorder.insert_events(
        [
            StoredEvent(
                stored.originator_id,
                stored.originator_version,
                stored.topic,
                json.dumps(state).encode(),
            )
        ]
    )

    report = verify_ledger(ledger)

    assert [p.kind for p in report.problems] == [ProblemKind.UNCHAINED_AFTER_CHAINED]
    assert report.problems[0].originator_version == event.originator_version


@pytest.mark.parametrize("keeps", [True, False], ids=["keeps-stored-form", "careless"])
def test_a_later_upcaster_leaves_old_chains_valid_only_if_it_keeps_the_stored_form(
    keeps: bool,
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Digests cover events as stored: an upcaster added later must not change them."""
    gateway.decline_next()
    ledger.release_payment(release("es_1"))
    ledger.release_payment(release("es_1"))
    assert verify_ledger(ledger).ok

    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["failure_message"] = state["failure_message"].upper()

    failed = PayoutAggregate.TransferFailed
    upcaster = keeps_stored_form(upcast_v1_v2) if keeps else upcast_v1_v2
    monkeypatch.setattr(failed, "class_version", 2, raising=False)
    monkeypatch.setattr(failed, "upcast_v1_v2", staticmethod(upcaster), raising=False)

    report = verify_ledger(ledger)

    assert ledger.history("es_1")[1].failure_message.isupper()  # type: ignore[attr-defined]
    assert report.ok is keeps
    if not keeps:
        assert {p.kind for p in report.problems} == {ProblemKind.BROKEN_LINK}
