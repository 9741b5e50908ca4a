"""Schema evolution: events stored by earlier releases keep replaying, and verifying.

``fixtures/*.json`` are StoredEvent rows written by real ledger runs
(``fixtures/generate.py``): ``legacy_unchained`` before events were chained and
before ``PayoutStarted`` had a class version; ``chained_v2`` (unsealed) and
``digest_v1_sealed`` (sealed twice) by the release whose links and seals used
the v1 digest (canonical JSON of the decoded fields); ``digest_v2_sealed`` by
the release whose ``PayoutStarted`` was class version 2; ``connect_v3`` as
written today (``PayoutStarted`` v3, platform reversals, a connected account's
payability, Stripe events with their ``api_version``). The last two have
digests over the stored bytes and are sealed twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from payout_ledger import PayoutAggregate, PayoutLedger, TransferOutcomeUnknown
from payout_ledger.audit import ProblemKind, audit_ledger, verify_ledger
from payout_ledger.domain.chain import legacy_digest
from payout_ledger.service.sealing import seal_ledger
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.fixtures.generate import public_state
from tests.audit.scenario import release
from tests.audit.support import RawStore

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


@pytest.mark.parametrize(
    "name",
    ["legacy_unchained", "chained_v2", "digest_v1_sealed", "digest_v2_sealed", "connect_v3"],
)
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


@pytest.mark.parametrize("name", ["digest_v2_sealed", "connect_v3"])
def test_todays_fixture_verifies_strict_with_only_v2_links(name: str, ledger: PayoutLedger) -> None:
    """The events written today all carry previous_hash, link v2 digests, and both seals hold."""
    data = fixture(name)
    store(ledger, data["events"])

    report = verify_ledger(ledger, strict=True, anchors=data["seal_digests"])

    assert report.ok, report.problems
    assert report.chained_events == len(data["events"])
    assert report.v1_links == 0
    assert report.seals == 2 and report.anchors_found == data["seal_digests"]


@pytest.mark.parametrize("name", ["chained_v2", "digest_v1_sealed"])
def test_the_previous_releases_links_verify_as_v1_links(name: str, ledger: PayoutLedger) -> None:
    """Links to v1 digests are accepted and counted; ``strict`` reports each of them."""
    data = fixture(name)
    events = data["events"]
    store(ledger, events)
    aggregates = len({e["originator_id"] for e in events})

    report = verify_ledger(ledger, anchors=data.get("seal_digests", []))
    strict = verify_ledger(ledger, strict=True)

    assert report.ok, report.problems
    assert report.chained_events == len(events)
    assert report.v1_links == len(events) - aggregates  # every link but the GENESIS ones
    assert report.seals == len(data.get("seal_digests", []))
    assert [p.kind for p in strict.problems] == [ProblemKind.V1_LINK] * report.v1_links


def test_new_events_and_seals_continue_a_store_of_the_previous_release(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A retry links v2 after v1 links; the first new seal rolls over the whole log again."""
    data = fixture("digest_v1_sealed")
    store(ledger, data["events"])
    gateway.decline_next()
    ledger.release_payment(release("es_v2"))
    ledger.release_payment(release("es_failed", provider_id="prov_carol", currency="eur"))

    seal = seal_ledger(ledger)

    assert seal.event_count == seal.through_notification_id  # the whole log, from its start
    report = verify_ledger(ledger, anchors=[*data["seal_digests"], seal.seal_digest])
    assert report.ok, report.problems
    assert report.seals == 3
    assert seal_ledger(ledger).event_count == seal.event_count + 1  # continues from a v2 seal
    assert verify_ledger(ledger, anchors=data["seal_digests"]).ok


@pytest.mark.parametrize(
    "store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
@pytest.mark.parametrize("name", ["digest_v1_sealed", "digest_v2_sealed", "connect_v3"])
def test_an_edit_under_a_seal_of_either_release_is_caught(
    name: str, ledger: PayoutLedger, store_url: str
) -> None:
    """The newest Released of a payout has no later link: the (v1 or v2) seal notices it."""
    data = fixture(name)
    store(ledger, data["events"])
    raw = RawStore(store_url)
    rows = raw.rows()
    newest = {r.originator_id: r for r in rows}  # each aggregate's newest event
    released = next(
        r.notification_id
        for r in rows
        if r.topic == PayoutAggregate.Released.TOPIC and newest[r.originator_id] == r
    )

    raw.edit(released, lambda state: state.update(payee_user_id="user_mallory"))

    report = verify_ledger(ledger, anchors=data["seal_digests"])
    assert {p.kind for p in report.problems} == {ProblemKind.SEAL_MISMATCH}


def _append_linked_to_v1(ledger: PayoutLedger, event: Any, previous: Any) -> None:
    """Store ``event`` with previous_hash the v1 digest of ``previous`` (as stored)."""
    stored_previous = ledger.mapper.to_stored_event(previous)
    v1 = legacy_digest(
        stored_previous.topic,
        stored_previous.originator_id,
        stored_previous.originator_version,
        ledger.mapper.transcoder.decode(stored_previous.state),
    )
    stored = ledger.mapper.to_stored_event(event)
    state = json.loads(stored.state)
    state["previous_hash"] = v1
    ledger.recorder.insert_events(
        [
            StoredEvent(
                stored.originator_id,
                stored.originator_version,
                stored.topic,
                json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode(),
            )
        ]
    )


def test_a_v1_link_counts_only_before_the_aggregates_first_v2_link(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A v1 link after a v2 link of the same aggregate is a broken link, not a legacy one."""
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledger.release_payment(release("es_in_flight"))  # one event: no link yet
    in_flight = ledger.get_payout("es_in_flight")
    started = ledger.history("es_in_flight")[-1]
    in_flight.record_failure(code=None, message="declined", request_id=None)
    _append_linked_to_v1(ledger, in_flight.collect_events()[0], started)
    ledger.release_payment(release("es_paid"))  # links v2 digests
    paid = ledger.get_payout("es_paid")
    assert paid.transfer_id is not None
    released = ledger.history("es_paid")[-1]
    paid.record_reversal(transfer_id=paid.transfer_id, amount_reversed=1, stripe_event_id=None)
    _append_linked_to_v1(ledger, paid.collect_events()[0], released)

    report = verify_ledger(ledger)

    assert report.v1_links == 1
    [problem] = report.problems
    assert problem.kind is ProblemKind.BROKEN_LINK
    assert problem.originator_id == str(paid.id) and "v1 link" in problem.detail


def test_a_later_upcaster_leaves_old_chains_valid(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Digests cover the stored bytes and are taken before upcasting: any upcaster is safe."""
    gateway.decline_next()
    ledger.release_payment(release("es_1"))
    ledger.release_payment(release("es_1"))
    assert verify_ledger(ledger, strict=True).ok

    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["failure_message"] = state["failure_message"].upper()

    failed = PayoutAggregate.TransferFailed
    monkeypatch.setattr(failed, "class_version", 2, raising=False)
    monkeypatch.setattr(failed, "upcast_v1_v2", staticmethod(upcast_v1_v2), raising=False)

    report = verify_ledger(ledger, strict=True)

    assert ledger.history("es_1")[1].failure_message.isupper()  # type: ignore[attr-defined]
    assert report.ok, report.problems
