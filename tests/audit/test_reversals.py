"""Platform-started reversals in the audit: known events, their rules, totals and in-flight list.

Each reversal rule is broken on purpose by a "buggy writer" (state forced past
a guard, or an event triggered directly) and the audit must name the offending
event, on both decode paths.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from payout_ledger import (
    LedgerSettings,
    PayoutAggregate,
    PayoutLedger,
    TransferOutcomeUnknown,
)
from payout_ledger.adapters.projection import PAYOUT_TOPICS, open_payouts_view, run_projection
from payout_ledger.audit import (
    InFlightReversal,
    ViolationKind,
    audit_ledger,
    export_events,
    export_payouts,
    verify_ledger,
)
from payout_ledger.domain.payout import ReversalStatus, reversal_idempotency_key
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import release, run_reversal_scenario, run_scenario
from tests.audit.support import RawStore, notification_ids


@pytest.fixture
def durable_ledger(
    durable_store_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
) -> Iterator[PayoutLedger]:
    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url), providers=providers, gateway=gateway
    ) as ledger:
        yield ledger


def test_platform_reversals_audit_clean_and_count_once_in_the_totals(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Succeeded, refused, webhook-reported and in-flight reversals break no rule; the
    totals count the payout's final reversed amount once; the one in flight is listed."""
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)

    report = audit_ledger(ledger)

    assert report.ok, report.violations
    assert report == audit_ledger(ledger, decode="mapper")
    usd = next(c for c in report.currencies if c.currency == "usd")
    assert usd.reversed_amount == 1500  # r1 (1000) + 500 reported by a webhook; r3 in flight
    alice = next(
        p for p in report.providers if (p.provider_id, p.currency) == ("prov_alice", "usd")
    )
    assert alice.reversed_amount == 1500
    started = notification_ids(ledger, ledger.payout_id("es_rev"))[-1]
    assert report.reversals_in_flight == [
        InFlightReversal(
            event_service_id="es_rev",
            payout_id=str(ledger.payout_id("es_rev")),
            reversal_attempt=3,
            reference="r3",
            amount=700,
            currency="usd",
            started_notification_id=started,
        )
    ]
    assert report.as_dict()["reversals_in_flight"][0]["reference"] == "r3"
    assert report.events_by_type["ReversalStarted"] == 3
    assert report.events_by_type["ReversalSucceeded"] == 1
    assert report.events_by_type["ReversalFailed"] == 1

    assert ledger.resume_reversal("es_rev").success
    settled = audit_ledger(ledger)
    assert settled.ok and settled.reversals_in_flight == []
    assert next(c for c in settled.currencies if c.currency == "usd").reversed_amount == 2200


def test_a_wholly_reversed_payout_counts_its_amount_once(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A webhook reporting the platform's own reversal adds nothing to the totals."""
    ledger.release_payment(release("es_1", amount=5000))
    assert ledger.reverse_payment("es_1").success
    [paid] = gateway.transfers_for("es_1")
    payout = ledger.get_payout("es_1")
    assert not payout.record_reversal(
        transfer_id=paid.transfer_id, amount_reversed=5000, stripe_event_id="evt_1"
    )

    report = audit_ledger(ledger)

    assert report.ok
    [usd] = report.currencies
    assert (usd.released_amount, usd.reversed_amount, usd.net_amount) == (5000, 5000, 0)


Planter = Callable[[PayoutLedger, InMemoryTransferGateway], tuple[str, int]]


def _paid(ledger: PayoutLedger, service: str = "es_v") -> Any:
    assert ledger.release_payment(release(service)).success
    return ledger.get_payout(service)


def _reversal_in_flight(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, amount: int = 700
) -> Any:
    _paid(ledger)
    gateway.fail_next(TransferOutcomeUnknown("lost"), after_commit=True)
    assert ledger.reverse_payment("es_v", amount, reference="r_v").in_flight
    return ledger.get_payout("es_v")


def _start(payout: Any, **changes: Any) -> None:
    """A ReversalStarted written directly, as the next attempt would be, with ``changes``."""
    attempt = payout.reversal_attempt + 1
    fields = {
        "reversal_attempt": attempt,
        "reference": "r_v",
        "transfer_id": payout.transfer_id,
        "amount": 1000,
        "currency": payout.currency,
        "reason": "requested_by_customer",
        "idempotency_key": reversal_idempotency_key(payout.event_service_id, attempt),
        "reversed_before": payout.amount_reversed,
        "started_at": datetime.now(UTC),
        **changes,
    }
    payout.trigger_event(PayoutAggregate.ReversalStarted, **fields)


def plant_reversal_of_unpaid_payout(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    assert ledger.release_payment(release("es_v")).in_flight
    payout = ledger.get_payout("es_v")
    _start(payout, transfer_id="tr_ghost")
    ledger.save(payout)
    return "es_v", payout.version


def plant_second_reversal_in_flight(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _reversal_in_flight(ledger, gateway)
    payout.reversal_status = ReversalStatus.SUCCEEDED  # past the guard
    payout.start_reversal(reference="r_w", amount=100, reason="x", started_at=datetime.now(UTC))
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_out_of_sequence(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger)
    payout.reversal_attempt = 4  # attempt 5 follows no attempt 4
    payout.start_reversal(reference="r_v", amount=100, reason="x", started_at=datetime.now(UTC))
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_key_mismatch(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger)
    _start(payout, idempotency_key="reverse_payment.attempt1:es_other")
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_exceeding_what_is_left(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger)
    assert ledger.reverse_payment("es_v", 4000, reference="r_0").success
    payout = ledger.get_payout("es_v")
    _start(payout, amount=1001)  # 1000 is left
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_unlike_payout(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger)
    _start(payout, currency="eur")
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversed_before_wrong(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger)
    _start(payout, reversed_before=300)  # nothing was reversed
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_outcome_without_attempt(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    _paid(ledger)
    assert ledger.reverse_payment("es_v", 100, reference="r_v").success
    payout = ledger.get_payout("es_v")
    payout.reversal_status = ReversalStatus.IN_FLIGHT  # past the guard: attempt 1 succeeded
    payout.record_reversal_failure(code="again", message="a second outcome", request_id=None)
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_unlike_claim(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _reversal_in_flight(ledger, gateway)
    payout.reversal_reference = "r_someone_else"
    payout.record_reversal_success(reversal_id="trr_x", request_id=None)
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversed_total_too_small(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _reversal_in_flight(ledger, gateway, amount=700)
    payout.trigger_event(
        PayoutAggregate.ReversalSucceeded,
        reversal_attempt=1,
        reference="r_v",
        idempotency_key=payout.reversal_idempotency_key,
        reversal_id="trr_x",
        amount=700,
        amount_reversed=699,  # reversed_before (0) + 700 at least
        stripe_request_id=None,
    )
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversed_total_above_the_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _reversal_in_flight(ledger, gateway, amount=5000)
    payout.trigger_event(
        PayoutAggregate.ReversalSucceeded,
        reversal_attempt=1,
        reference="r_v",
        idempotency_key=payout.reversal_idempotency_key,
        reversal_id="trr_x",
        amount=5000,
        amount_reversed=5001,
        stripe_request_id=None,
    )
    ledger.save(payout)
    return "es_v", payout.version


PLANTERS: dict[str, tuple[ViolationKind, Planter]] = {
    "unpaid": (ViolationKind.REVERSAL_WITHOUT_TRANSFER, plant_reversal_of_unpaid_payout),
    "second_in_flight": (ViolationKind.REVERSAL_WITHOUT_OUTCOME, plant_second_reversal_in_flight),
    "out_of_sequence": (ViolationKind.REVERSAL_OUT_OF_SEQUENCE, plant_reversal_out_of_sequence),
    "key": (ViolationKind.REVERSAL_KEY_MISMATCH, plant_reversal_key_mismatch),
    "exceeds_left": (ViolationKind.REVERSAL_EXCEEDS_AMOUNT, plant_reversal_exceeding_what_is_left),
    "currency": (ViolationKind.REVERSAL_UNLIKE_PAYOUT, plant_reversal_unlike_payout),
    "reversed_before": (ViolationKind.REVERSAL_AMOUNTS_INCONSISTENT, plant_reversed_before_wrong),
    "outcome": (
        ViolationKind.REVERSAL_OUTCOME_WITHOUT_ATTEMPT,
        plant_reversal_outcome_without_attempt,
    ),
    "unlike_claim": (ViolationKind.REVERSAL_UNLIKE_CLAIM, plant_reversal_unlike_claim),
    "total_too_small": (
        ViolationKind.REVERSAL_AMOUNTS_INCONSISTENT,
        plant_reversed_total_too_small,
    ),
    "total_above": (ViolationKind.REVERSAL_EXCEEDS_AMOUNT, plant_reversed_total_above_the_transfer),
}


def test_every_reversal_kind_has_a_planted_violation() -> None:
    reversal_kinds = {k for k in ViolationKind if k.value.startswith("reversal")}
    assert {kind for kind, _ in PLANTERS.values()} == reversal_kinds


@pytest.mark.parametrize("name", list(PLANTERS))
def test_each_broken_reversal_rule_is_caught_and_names_its_event(
    name: str, ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The audit reports exactly the broken rule at the offending event, on both paths."""
    run_scenario(ledger, gateway)
    kind, plant = PLANTERS[name]
    service, version = plant(ledger, gateway)
    expected_id = notification_ids(ledger, ledger.payout_id(service))[version - 1]

    report = audit_ledger(ledger)

    assert [v.kind for v in report.violations] == [kind], report.violations
    [violation] = report.violations
    assert (violation.notification_id, violation.originator_version) == (expected_id, version)
    assert violation.event_service_id == service
    assert audit_ledger(ledger, decode="mapper") == report


@pytest.mark.parametrize("decode", ["states", "mapper"])
@pytest.mark.parametrize(
    ("event", "field", "value"),
    [
        ("ReversalStarted", "amount", "1000"),
        ("ReversalStarted", "reversed_before", None),
        ("ReversalSucceeded", "amount_reversed", 1.5),
        ("ReversalSucceeded", "reversal_id", None),
        ("ReversalFailed", "reversal_attempt", True),
        ("PayoutStarted", "description", 7),
        ("PayoutStarted", "source_transaction", ["ch_1"]),
    ],
)
def test_an_ill_typed_reversal_field_is_a_finding(
    decode: Any,
    event: str,
    field: str,
    value: Any,
    durable_ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    durable_store_url: str,
) -> None:
    """Each reversal event's fields (and PayoutStarted's v3 fields) are type-checked."""
    run_reversal_scenario(durable_ledger, gateway)
    store = RawStore(durable_store_url)
    [row] = [r for r in store.rows() if r.topic == f"payout_ledger:{event}"][:1]

    def change(state: dict[str, Any]) -> None:
        state[field] = value

    store.edit(row.notification_id, change)

    report = audit_ledger(durable_ledger, decode=decode)

    assert (report.violations[0].kind, report.violations[0].notification_id) == (
        ViolationKind.ILL_TYPED,
        row.notification_id,
    )
    assert field in report.violations[0].detail


def test_a_release_with_the_host_s_group_charge_and_description_audits_clean(
    ledger: PayoutLedger,
) -> None:
    """PayoutStarted v3's source_transaction and description are accepted."""
    assert ledger.release_payment(
        {
            **release("es_v3"),
            "transfer_group": "order_42",
            "source_transaction": "ch_1",
            "description": "Concert, 12 May",
        }
    ).success

    report = audit_ledger(ledger)

    assert report.ok, report.violations
    assert report == audit_ledger(ledger, decode="mapper")


# -- export --------------------------------------------------------------------


def test_the_events_export_flattens_the_reversals_fields_after_the_old_columns(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """CSV keeps its earlier columns in place; the reversal columns come last."""
    from payout_ledger.audit.export import EVENT_COLUMNS

    run_reversal_scenario(ledger, gateway)
    out = io.StringIO()

    export_events(ledger, out, fmt="csv")

    assert EVENT_COLUMNS[:16] == _OLD_EVENT_COLUMNS
    assert EVENT_COLUMNS[16:] == ("reversal_attempt", "reference", "reversal_id", "reversed_before")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    succeeded = [r for r in rows if r["event_type"] == "ReversalSucceeded"]
    started = [r for r in rows if r["event_type"] == "ReversalStarted"]
    assert [(r["reversal_attempt"], r["reference"], r["amount"]) for r in started] == [
        ("1", "r1", "1000"),
        ("2", "r2", "1000"),
        ("3", "r3", "700"),
    ]
    assert started[2]["reversed_before"] == "1500"
    [ok] = succeeded
    assert ok["reversal_id"].startswith("trr_") and ok["amount_reversed"] == "1000"
    assert not any(r["error"] for r in rows)


def test_the_payouts_export_has_the_reversal_status_last(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    from payout_ledger.audit.export import PAYOUT_COLUMNS

    run_reversal_scenario(ledger, gateway)
    ledger.release_payment(release("es_plain"))
    out = io.StringIO()

    export_payouts(ledger, out, fmt="csv")

    assert PAYOUT_COLUMNS[-2:] == ("reversal_attempts", "reversal_status")
    rows = {r["event_service_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert (rows["es_rev"]["reversal_attempts"], rows["es_rev"]["reversal_status"]) == (
        "3",
        "in_flight",
    )
    assert rows["es_rev"]["amount_reversed"] == "1500"
    assert (rows["es_plain"]["reversal_attempts"], rows["es_plain"]["reversal_status"]) == ("0", "")


_OLD_EVENT_COLUMNS = (
    "notification_id",
    "originator_id",
    "originator_version",
    "event_type",
    "topic",
    "timestamp",
    "event_service_id",
    "attempt",
    "amount",
    "currency",
    "transfer_id",
    "amount_reversed",
    "previous_hash",
    "digest",
    "error",
    "fields",
)


# -- read model ----------------------------------------------------------------


def test_the_read_model_carries_both_kinds_of_reversal_and_the_reversal_status(
    durable_ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    run_reversal_scenario(durable_ledger, gateway)
    view = open_payouts_view(durable_ledger)

    run_projection(durable_ledger, view=view)

    row = view.get("es_rev")
    assert row is not None
    assert (row.amount_reversed, row.reversal_attempt, row.reversal_status, row.status) == (
        1500,
        3,
        "in_flight",
        "released",
    )
    assert durable_ledger.resume_reversal("es_rev").success
    run_projection(durable_ledger, view=view)
    row = view.get("es_rev")
    assert row is not None
    assert (row.amount_reversed, row.reversal_status) == (2200, "succeeded")
    assert durable_ledger.reverse_payment("es_rev").success  # the rest: wholly reversed
    run_projection(durable_ledger, view=view)
    row = view.get("es_rev")
    assert row is not None
    assert (row.amount_reversed, row.reversal_attempt, row.status) == (5000, 4, "reversed")


def test_a_table_of_an_older_release_is_read_then_rebuilt_with_the_new_columns(
    durable_ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> None:
    """The older table lacks the reversal columns and skipped the reversal events: it
    stays readable, and the next run folds the whole log again into the new schema."""
    run_reversal_scenario(durable_ledger, gateway)
    view = open_payouts_view(durable_ledger)
    run_projection(durable_ledger, view=view)
    _drop_reversal_columns(durable_store_url, view.table)
    assert view.missing_columns() == ["reversal_attempt", "reversal_status"]
    old = view.get("es_rev")
    assert old is not None and (old.reversal_attempt, old.reversal_status) == (0, None)

    run = run_projection(durable_ledger, view=view)

    assert view.missing_columns() == []
    row = view.get("es_rev")
    assert row is not None and (row.reversal_attempt, row.reversal_status) == (3, "in_flight")
    assert run.events == len(
        durable_ledger.recorder.select_notifications(None, 10_000, topics=PAYOUT_TOPICS)
    )


def _drop_reversal_columns(store_url: str, table: str) -> None:
    store = RawStore(store_url)
    schema = "" if store.kind == "sqlite" else store.table.split(".")[0] + "."
    with store._cursor() as c:
        for column in ("reversal_attempt", "reversal_status"):
            c.execute(f"ALTER TABLE {schema}{table} DROP COLUMN {column}")


@pytest.mark.parametrize(
    ("field", "value"), [("amount", 100), ("amount_reversed", 100), ("reversal_id", "trr_other")]
)
def test_an_edited_reversal_is_caught_by_verify_under_a_seal(
    durable_ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    durable_store_url: str,
    field: str,
    value: object,
) -> None:
    """An attacker with a database login lowers a recorded reversal: the chain says so."""
    run_reversal_scenario(durable_ledger, gateway)
    durable_ledger.reverse_payment("es_rev", 700, reference="r3")  # settle the one in flight
    durable_ledger.seal()
    raw = RawStore(durable_store_url)
    [succeeded, *_] = [r for r in raw.rows() if r.topic == "payout_ledger:ReversalSucceeded"]
    assert verify_ledger(durable_ledger).ok

    raw.edit(succeeded.notification_id, lambda state: state.update({field: value}))

    assert not verify_ledger(durable_ledger).ok
