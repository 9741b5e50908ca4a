"""The public API is deliberate: this test pins it."""

from __future__ import annotations

import payout_ledger
import payout_ledger.testing


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a conscious change to this list."""
    assert sorted(payout_ledger.__all__) == [
        "Clock",
        "ConfigurationError",
        "GatewayError",
        "InvalidMoneyError",
        "InvalidRequestError",
        "LedgerBusyError",
        "LedgerIntegrityError",
        "LedgerSettings",
        "LivemodeMismatchError",
        "Money",
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
        "SendWindowClosed",
        "ServiceProvider",
        "StoreError",
        "StoreNotFoundError",
        "StoreUnavailableError",
        "TransferDeclined",
        "TransferGateway",
        "TransferNotExecuted",
        "TransferOutcomeUnknown",
        "TransferRequest",
        "TransferResult",
        "check_send_window",
        "idempotency_key",
    ]
    for name in payout_ledger.__all__:
        assert hasattr(payout_ledger, name)


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
    ] == [
        "payout_ledger:PayoutStarted",
        "payout_ledger:TransferFailed",
        "payout_ledger:TransferSucceeded",
        "payout_ledger:Released",
    ]


def test_payout_ids_are_derived_from_the_event_service_id() -> None:
    """The payout id is a uuid5 of the service id: the same in every process, forever."""
    first = payout_ledger.PayoutLedger.payout_id("es_1")
    assert first == payout_ledger.PayoutLedger.payout_id("es_1")
    assert str(first) == "a7f9b31a-0389-565a-bc63-3304bfbb1f49"
