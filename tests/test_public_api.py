"""The public API is deliberate: this test pins it."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from eventsourcing.application import Application

import payout_ledger
import payout_ledger.testing


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a conscious change to this list."""
    assert sorted(payout_ledger.__all__) == [
        "AccountLookup",
        "AccountPayability",
        "BulkItemResult",
        "BulkReleaseReport",
        "BulkRequestError",
        "Clock",
        "ConfigurationError",
        "DestinationUnpayable",
        "GatewayError",
        "HealthCheck",
        "HealthReport",
        "InvalidMoneyError",
        "InvalidRequestError",
        "LedgerBusyError",
        "LedgerIntegrityError",
        "LedgerSettings",
        "LedgerStatus",
        "LivemodeMismatchError",
        "MaintenanceWorker",
        "Money",
        "PayabilitySource",
        "PayoutAggregate",
        "PayoutLedger",
        "PayoutLedgerError",
        "PayoutNotFoundError",
        "PayoutStatus",
        "ProviderDirectory",
        "ProviderNotFoundError",
        "ReleaseConflictError",
        "ReleaseOutcome",
        "ReleaseRequest",
        "ReleaseResult",
        "ReversalConflictError",
        "ReversalOutcome",
        "ReversalRefusedError",
        "ReversalResult",
        "STRIPE_API_VERSION",
        "SendWindowClosed",
        "ServiceProvider",
        "SourceTransactionError",
        "StoreError",
        "StoreNotFoundError",
        "StoreUnavailableError",
        "StripeAccount",
        "TransferDeclined",
        "TransferGateway",
        "TransferNotExecuted",
        "TransferOutcomeUnknown",
        "TransferRequest",
        "TransferResult",
        "WorkerCycle",
        "check_send_window",
        "idempotency_key",
    ]
    for name in payout_ledger.__all__:
        assert hasattr(payout_ledger, name)


PINNED_SUBPACKAGES = {
    "payout_ledger.stripe": [
        "StripeEventSink",
        "StripeTransferGateway",
        "WebhookHandler",
        "WebhookResponse",
        "classify_error",
    ],
    "payout_ledger.testing": [
        "InMemoryProviderDirectory",
        "InMemoryTransferGateway",
        "RecordedTransfer",
    ],
    "payout_ledger.audit": [
        "AuditReport",
        "ChainProblem",
        "CurrencyTotals",
        "InFlightPayout",
        "InFlightReversal",
        "InFlightRows",
        "PayoutSummary",
        "ProblemKind",
        "ProviderTotals",
        "ReversalSummary",
        "SealInfo",
        "VerifyReport",
        "Violation",
        "ViolationKind",
        "audit_ledger",
        "export_events",
        "export_payouts",
        "iter_notifications",
        "last_notification_id",
        "latest_seal",
        "seal_ledger",
        "verify_ledger",
    ],
    "payout_ledger.asgi": ["health_app", "health_endpoint", "webhook_app", "webhook_endpoint"],
}


@pytest.mark.parametrize("name", sorted(PINNED_SUBPACKAGES))
def test_public_subpackages_are_pinned(name: str) -> None:
    """The public subpackages keep their names and their ``__all__``, wherever the code lives."""
    module = importlib.import_module(name)
    assert sorted(module.__all__) == PINNED_SUBPACKAGES[name]
    for public in module.__all__:
        assert hasattr(module, public), public


def test_the_ledger_keeps_its_methods() -> None:
    """PayoutLedger's own public attributes (beyond eventsourcing's Application) are pinned."""
    own = sorted(set(dir(payout_ledger.PayoutLedger)) - set(dir(Application)))
    assert [n for n in own if not n.startswith("_")] == [
        "accepts_api_version",
        "account_payability",
        "captured_payment",
        "check_livemode",
        "find_payout",
        "gateway",
        "get_payout",
        "get_payout_by_id",
        "has_stripe_event",
        "health",
        "history",
        "in_flight",
        "livemode",
        "other_mode",
        "payout_id",
        "rate_governor",
        "record_stripe_event",
        "release_many",
        "release_many_async",
        "release_payment",
        "release_payment_async",
        "resume",
        "resume_in_flight",
        "resume_reversal",
        "resume_reversals_in_flight",
        "reversals_in_flight",
        "reverse_payment",
        "seal",
        "status",
        "sync_account",
    ]
    assert payout_ledger.PayoutLedger.name == "PayoutLedger"  # names its PostgreSQL table


def test_the_ledger_s_constructor_keeps_its_typed_keywords() -> None:
    """Type checkers and the reference page read them: no use case may hide them
    behind an ``__init__(**kwargs)`` of its own."""
    parameters = inspect.signature(payout_ledger.PayoutLedger).parameters
    assert list(parameters) == [
        "settings",
        "providers",
        "gateway",
        "clock",
        "must_exist",
        "on_payability_changed",
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())


def test_testing_fakes_are_public() -> None:
    """Hosts' tests can import the in-memory fakes."""
    assert {"InMemoryProviderDirectory", "InMemoryTransferGateway"} <= set(
        payout_ledger.testing.__all__
    )


def test_event_topics_are_stable() -> None:
    """Stored events name these topics; renaming a class must not change them."""
    agg = payout_ledger.PayoutAggregate
    assert agg.TOPIC == "payout_ledger:PayoutAggregate"
    assert [
        agg.PayoutStarted.TOPIC,
        agg.TransferFailed.TOPIC,
        agg.TransferSucceeded.TOPIC,
        agg.Released.TOPIC,
        agg.TransferReversed.TOPIC,
        agg.ReversalStarted.TOPIC,
        agg.ReversalSucceeded.TOPIC,
        agg.ReversalFailed.TOPIC,
    ] == [
        "payout_ledger:PayoutStarted",
        "payout_ledger:TransferFailed",
        "payout_ledger:TransferSucceeded",
        "payout_ledger:Released",
        "payout_ledger:TransferReversed",
        "payout_ledger:ReversalStarted",
        "payout_ledger:ReversalSucceeded",
        "payout_ledger:ReversalFailed",
    ]


def test_payout_ids_are_derived_from_the_event_service_id() -> None:
    """The payout id is a uuid5 of the service id: the same in every process, forever."""
    first = payout_ledger.PayoutLedger.payout_id("es_1")
    assert first == payout_ledger.PayoutLedger.payout_id("es_1")
    assert str(first) == "a7f9b31a-0389-565a-bc63-3304bfbb1f49"


def test_the_reference_page_shows_every_method_of_the_ledger() -> None:
    """PayoutLedger's methods live in several modules: the reference page lists them all."""
    page = (Path(__file__).parents[1] / "docs" / "reference.md").read_text(encoding="utf-8")
    block = page.split("::: payout_ledger.PayoutLedger\n", 1)[1].split("\n\n", 1)[0]
    listed = {line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")}
    own = set(dir(payout_ledger.PayoutLedger)) - set(dir(Application))
    assert listed == {n for n in own if not n.startswith("_")} | {"save"}
