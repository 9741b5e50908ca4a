"""Traces, metrics and log records: what a host's SDK sees, and that it never sees an id.

The SDK is the session's (tests/operations/otel_support.py); each test reads what
happened during its own ``recording()`` block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import stripe
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, generate_latest

from payout_ledger import (
    STRIPE_API_VERSION,
    LedgerSettings,
    PayoutLedger,
    ProviderNotFoundError,
    ReleaseOutcome,
    ServiceProvider,
    TransferDeclined,
)
from payout_ledger.adapters import telemetry
from payout_ledger.audit import audit_ledger, verify_ledger
from payout_ledger.service.reconcile import reconcile
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.operations.otel_support import Telemetry, installed

SECRET = "whsec_telemetry_0123456789abcdef"
PROVIDER = "prov_tel_7f3a"
USER = "user_tel_7f3a"


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    with installed().recording() as recorded:
        yield recorded


@pytest.fixture
def stripe_ledger(fake: FakeStripe, account: str) -> Iterator[PayoutLedger]:
    """A ledger on the real Stripe gateway, against the fake Stripe server."""
    gateway = StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0)
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id=PROVIDER, user_id=USER, stripe_account_id=account)]
    )
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"), providers=providers, gateway=gateway
    ) as ledger:
        yield ledger


@pytest.fixture
def memory_ledger() -> Iterator[tuple[PayoutLedger, InMemoryTransferGateway]]:
    gateway = InMemoryTransferGateway()
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id=PROVIDER, user_id=USER, stripe_account_id="acct_telmemory")]
    )
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"), providers=providers, gateway=gateway
    ) as ledger:
        yield ledger, gateway


def request(event_service_id: str, amount: int = 5000) -> dict[str, Any]:
    return {
        "event_service_id": event_service_id,
        "provider_id": PROVIDER,
        "amount": {"amount": amount, "currency": "usd"},
    }


def signed_event(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": STRIPE_API_VERSION,
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": "pi_tel_5d1c",
                    "object": "payment_intent",
                    "amount": 5000,
                    "currency": "usd",
                    "metadata": {"event_service_id": "es_tel_paid"},
                }
            },
            "livemode": False,
            "type": "payment_intent.succeeded",
        }
    ).encode()
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
    return body, {"Stripe-Signature": header, "Content-Type": "application/json"}


# -- every operation, and no id anywhere --------------------------------------------


def test_each_operation_is_one_span_and_no_span_or_label_carries_an_id(
    otel: Telemetry, fake: FakeStripe, account: str, stripe_ledger: PayoutLedger
) -> None:
    ledger = stripe_ledger
    paid = ledger.release_payment(request("es_tel_a1"))
    fake.inject(faults.rate_limited())
    limited = ledger.release_payment(request("es_tel_b2"))
    resumed = ledger.resume("es_tel_b2")
    reversed_ = ledger.reverse_payment("es_tel_a1", 1000, reference="refund_tel_9")
    body, headers = signed_event("evt_tel_4e2b")
    answer = WebhookHandler(ledger, secrets=[SECRET], environment="test").handle(body, headers)
    report = reconcile(ledger, event_service_ids=["es_tel_a1", "es_tel_b2"])
    audited = audit_ledger(ledger)
    verified = verify_ledger(ledger)

    assert paid.outcome is ReleaseOutcome.RELEASED
    assert limited.outcome is ReleaseOutcome.NOT_EXECUTED
    assert resumed.outcome is ReleaseOutcome.RELEASED
    assert reversed_.success
    assert answer.status == 200
    assert report.ok and audited.ok and verified.ok

    names = [s.name for s in otel.spans()]
    assert names.count("payout_ledger.release") == 2
    assert names.count("payout_ledger.resume") == 1
    assert names.count("payout_ledger.reverse") == 1
    assert names.count("payout_ledger.webhook") == 1
    assert names.count("payout_ledger.reconcile") == 1
    assert names.count("payout_ledger.audit") == 1
    assert names.count("payout_ledger.verify") == 1
    assert all(name.startswith("payout_ledger.") for name in names)
    scopes = {s.instrumentation_scope.name for s in otel.spans()}
    assert scopes == {"payout_ledger"}

    ids = {
        PROVIDER,
        USER,
        account,
        "es_tel_a1",
        "es_tel_b2",
        "refund_tel_9",
        "evt_tel_4e2b",
        "pi_tel_5d1c",
        "es_tel_paid",
    }
    for result in (paid, limited, resumed):
        ids |= {str(result.payout_id), str(result.transfer_id), str(result.idempotency_key)}
    ids |= {str(reversed_.reversal_id), str(reversed_.idempotency_key)}
    ids |= {str(t["id"]) for t in fake.transfers()}
    ids.discard("None")
    recorded = [str(value) for value in otel.attribute_values()]
    recorded += [str(value) for labels in otel.labels() for value in labels.values()]
    recorded += [str(key) for labels in otel.labels() for key in labels]
    assert recorded, "nothing was recorded"
    leaked = {(i, value) for i in ids for value in recorded if i in value}
    assert not leaked


def test_a_release_span_says_its_outcome_and_attempt(
    otel: Telemetry, memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway]
) -> None:
    ledger, gateway = memory_ledger
    gateway.fail_next(TransferDeclined("declined", code="Card_Declined"))
    failed = ledger.release_payment(request("es_tel_c3"))
    again = ledger.release_payment(request("es_tel_c3"))

    assert (failed.outcome, again.outcome) == (ReleaseOutcome.FAILED, ReleaseOutcome.RELEASED)
    first, second = otel.spans("payout_ledger.release")
    assert dict(first.attributes or {}) == {
        "payout_ledger.outcome": "failed",
        "payout_ledger.attempt": 1,
        "payout_ledger.error_code": "card_declined",
    }
    assert dict(second.attributes or {}) == {
        "payout_ledger.outcome": "released",
        "payout_ledger.attempt": 2,
    }
    assert first.status.status_code is StatusCode.UNSET
    assert otel.delta("payout_ledger.releases", outcome="failed") == 1
    assert otel.delta("payout_ledger.releases", outcome="released") == 1
    assert otel.delta("payout_ledger.release.duration.count", outcome="released") == 1
    assert otel.delta("payout_ledger.release.duration.sum", outcome="released") > 0
    # A decline by a gateway that is not Stripe's is no Stripe error.
    assert not [k for k in otel.labels() if "code" in k]


def test_an_async_release_is_a_release_span_too(
    otel: Telemetry, memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway]
) -> None:
    ledger, _ = memory_ledger
    result = asyncio.run(ledger.release_payment_async(request("es_tel_d4")))

    assert result.outcome is ReleaseOutcome.RELEASED
    [span] = otel.spans("payout_ledger.release")
    assert (span.attributes or {})["payout_ledger.outcome"] == "released"
    assert otel.delta("payout_ledger.releases", outcome="released") == 1


def test_a_release_that_raises_is_an_error_span_and_counted_as_error(
    otel: Telemetry, memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway]
) -> None:
    ledger, _ = memory_ledger
    with pytest.raises(ProviderNotFoundError):
        ledger.release_payment({**request("es_tel_e5"), "provider_id": "prov_tel_missing"})

    [span] = otel.spans("payout_ledger.release")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ProviderNotFoundError"
    assert dict(span.attributes or {}) == {"error.type": "ProviderNotFoundError"}
    assert not span.events  # the message (with the provider's id) is not recorded
    assert otel.delta("payout_ledger.releases", outcome="error") == 1


# -- Stripe's errors: counted once, where the SDK raised them ------------------------


def test_stripe_errors_are_counted_once_by_code_and_operation_lookups_included(
    otel: Telemetry, fake: FakeStripe, stripe_ledger: PayoutLedger
) -> None:
    fake.inject(faults.rate_limited())
    limited = stripe_ledger.release_payment(request("es_tel_f6"))
    fake.inject(faults.server_error(), method="GET", path="/v1/transfers")
    lookup = stripe_ledger.resume("es_tel_f6")

    assert limited.outcome is ReleaseOutcome.NOT_EXECUTED
    assert lookup.detail == "lookup failed"
    created = {"code": "rate_limit", "operation": "create_transfer"}
    assert otel.delta("payout_ledger.stripe.errors", **created) == 1
    listed = [
        labels
        for labels in otel.labels()
        if labels.get("operation") == "list_transfers" and "code" in labels
    ]
    assert len(listed) == 1
    assert otel.delta("payout_ledger.stripe.errors", **listed[0]) == 1
    assert sum(1 for labels in otel.labels() if "code" in labels) == 2


def test_an_error_code_becomes_a_label_of_few_values() -> None:
    assert telemetry.label("rate_limit") == "rate_limit"
    assert telemetry.label("Card_Declined") == "card_declined"
    assert telemetry.label("payment_intent.succeeded") == "payment_intent.succeeded"
    assert telemetry.label(None) == "unknown"
    assert telemetry.label("") == "unknown"
    assert telemetry.label("acct 1; drop") == "other"
    assert telemetry.label("x" * 65) == "other"
    assert telemetry.label("no such destination: acct_1XYZ") == "other"


# -- reconcile and the gauges ------------------------------------------------------


def test_reconcile_counts_mismatches_by_kind(otel: Telemetry) -> None:
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id=PROVIDER, user_id=USER, stripe_account_id="acct_telreconcile")]
    )
    settings = LedgerSettings(store_url="memory://")
    with PayoutLedger(
        settings=settings, providers=providers, gateway=InMemoryTransferGateway()
    ) as ledger:
        ledger.release_payment(request("es_tel_g7"))
        ledger.release_payment(request("es_tel_h8"))
        # Stripe (another gateway) knows none of the ledger's transfers.
        ledger._gateway = InMemoryTransferGateway()  # type: ignore[misc]
        report = reconcile(ledger, event_service_ids=["es_tel_g7", "es_tel_h8"])

    assert [m.kind.value for m in report.mismatches] == ["missing_at_stripe"] * 2
    assert otel.delta("payout_ledger.reconcile.mismatches", kind="missing_at_stripe") == 2
    [span] = otel.spans("payout_ledger.reconcile")
    assert (span.attributes or {})["payout_ledger.mismatches"] == 2
    assert (span.attributes or {})["payout_ledger.ok"] is False


@dataclass(frozen=True)
class Status:
    in_flight: int = 0
    reversals_in_flight: int = 0
    oldest_in_flight_seconds: float | None = None
    projection_lag: int | None = None
    seconds_since_last_seal: float | None = None


def test_record_status_sets_the_gauges_and_leaves_unknown_ones_alone(otel: Telemetry) -> None:
    telemetry.record_status(Status(3, 1, 42.5, 7, 600.0))
    telemetry.record_status(Status(in_flight=0))

    assert otel.value("payout_ledger.payouts.in_flight") == 0
    assert otel.value("payout_ledger.reversals.in_flight") == 0
    assert otel.value("payout_ledger.oldest_in_flight.age") == 0.0
    assert otel.value("payout_ledger.projection.lag") == 7
    assert otel.value("payout_ledger.last_seal.age") == 600.0


def test_a_ledgers_status_sets_the_in_flight_gauge(
    otel: Telemetry, memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway]
) -> None:
    ledger, gateway = memory_ledger
    gateway.fail_next(telemetry_unknown())
    ledger.release_payment(request("es_tel_i9"))
    ledger.status()
    assert otel.value("payout_ledger.payouts.in_flight") == 1
    ledger.resume_in_flight()
    ledger.status()
    assert otel.value("payout_ledger.payouts.in_flight") == 0


def telemetry_unknown() -> Exception:
    from payout_ledger import TransferOutcomeUnknown

    return TransferOutcomeUnknown("no answer", code="timeout")


# -- the Prometheus names ------------------------------------------------------------


def test_the_prometheus_exporter_names_the_series_as_documented(
    otel: Telemetry, memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway]
) -> None:
    ledger, _ = memory_ledger
    ledger.release_payment(request("es_tel_j10"))
    telemetry.count_stripe_error("rate_limit", "create_transfer")
    telemetry.count_reconcile_mismatch("amount")
    telemetry.record_status(Status(2, 0, 12.0, 5, 30.0))

    scraped = generate_latest(REGISTRY).decode()
    series = {line.split("{")[0].split(" ")[0] for line in scraped.splitlines() if line[:1] != "#"}
    assert {
        "payout_ledger_releases_total",
        "payout_ledger_release_duration_seconds_bucket",
        "payout_ledger_release_duration_seconds_count",
        "payout_ledger_release_duration_seconds_sum",
        "payout_ledger_stripe_errors_total",
        "payout_ledger_reconcile_mismatches_total",
        "payout_ledger_payouts_in_flight",
        "payout_ledger_reversals_in_flight",
        "payout_ledger_oldest_in_flight_age_seconds",
        "payout_ledger_projection_lag",
        "payout_ledger_last_seal_age_seconds",
    } <= series
    assert 'outcome="released"' in next(
        line for line in scraped.splitlines() if line.startswith("payout_ledger_releases_total")
    )
    assert 'le="30.0"' in scraped  # the duration's own buckets, in seconds


# -- logs -----------------------------------------------------------------------------


def test_the_library_adds_only_a_null_handler() -> None:
    root = logging.getLogger("payout_ledger")
    assert [type(h) for h in root.handlers] == [logging.NullHandler]
    assert root.level == logging.NOTSET and root.propagate
    for name in ("payout_ledger.webhooks", "payout_ledger.adapters.projection"):
        assert logging.getLogger(name).handlers == []


def test_log_records_carry_structured_extras(
    caplog: pytest.LogCaptureFixture,
    memory_ledger: tuple[PayoutLedger, InMemoryTransferGateway],
) -> None:
    ledger, gateway = memory_ledger
    caplog.set_level(logging.DEBUG, logger="payout_ledger")
    gateway.fail_next(telemetry_unknown())
    ledger.release_payment(request("es_tel_k11"))
    body, headers = signed_event("evt_tel_k11")
    WebhookHandler(ledger, secrets=[SECRET], environment="test").handle(body, headers)

    unknown = next(r for r in caplog.records if r.getMessage().startswith("transfer outcome"))
    assert vars(unknown)["payout_ledger.event_service_id"] == "es_tel_k11"
    assert vars(unknown)["payout_ledger.attempt"] == 1
    assert vars(unknown)["payout_ledger.outcome"] == "outcome_unknown"
    assert vars(unknown)["payout_ledger.error_code"] == "timeout"
    done = next(r for r in caplog.records if r.getMessage().startswith("release of es_tel_k11:"))
    assert vars(done)["payout_ledger.outcome"] == "outcome_unknown"
    webhook = next(r for r in caplog.records if r.name == "payout_ledger.webhooks")
    assert vars(webhook)["payout_ledger.event_id"] == "evt_tel_k11"
    assert vars(webhook)["payout_ledger.event_type"] == "payment_intent.succeeded"
    assert vars(webhook)["payout_ledger.status"] == 200
    for record in caplog.records:
        fields = {k: v for k, v in vars(record).items() if k.startswith("payout_ledger.")}
        assert fields, record.getMessage()
        assert SECRET not in repr(fields)


# -- without an SDK, and without the API ----------------------------------------------

_WITHOUT_API = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.adapters import telemetry
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
providers = InMemoryProviderDirectory(
    [ServiceProvider(id="p", user_id="u", stripe_account_id="acct_1")]
)
with PayoutLedger(settings=LedgerSettings(store_url="memory://"), providers=providers,
                  gateway=InMemoryTransferGateway()) as ledger:
    result = ledger.release_payment(
        {"event_service_id": "es_1", "provider_id": "p",
         "amount": {"amount": 100, "currency": "usd"}}
    )
with telemetry.span("payout_ledger.anything", a=1) as span:
    span.set(b=2)
    assert not span.recording
telemetry.counter("payout_ledger.things", unit="{thing}")
telemetry.gauge("payout_ledger.level", 1.0)
telemetry.histogram("payout_ledger.wait", 0.5)
telemetry.count_stripe_error("rate_limit", "create_transfer")
print(result.outcome.value, telemetry._state.meter is None)
"""

_PROVIDER_SET_LATER = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway

providers = InMemoryProviderDirectory(
    [ServiceProvider(id="p", user_id="u", stripe_account_id="acct_1")]
)
def release(ledger, es):
    return ledger.release_payment(
        {"event_service_id": es, "provider_id": "p", "amount": {"amount": 100, "currency": "usd"}})
with PayoutLedger(settings=LedgerSettings(store_url="memory://"), providers=providers,
                  gateway=InMemoryTransferGateway()) as ledger:
    release(ledger, "es_1")  # no provider yet: the instruments are made on the API's proxy
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    release(ledger, "es_2")
points = {
    (m.name, tuple(sorted(p.attributes.items()))): getattr(p, "value", getattr(p, "count", None))
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
    for p in m.data.data_points
}
print(points[("payout_ledger.releases", (("outcome", "released"),))])
print(points[("payout_ledger.release.duration", (("outcome", "released"),))])
print([s.name for s in exporter.get_finished_spans()])
"""


def _python(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_without_the_api_installed_everything_is_a_no_op() -> None:
    assert _python(_WITHOUT_API) == ["released True"]


def test_providers_set_after_the_first_release_still_get_its_metrics_and_spans() -> None:
    counted, timed, spans = _python(_PROVIDER_SET_LATER)
    assert (counted, timed) == ("1", "1")  # the release after the providers were set
    assert spans == "['payout_ledger.release']"


def test_a_name_outside_the_librarys_namespace_or_of_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"payout_ledger\."), telemetry.span("release"):
        pass
    with pytest.raises(ValueError, match=r"payout_ledger\."):
        telemetry.counter("cycles")
    telemetry.counter("payout_ledger.tel_test.things", unit="{thing}")
    with pytest.raises(ValueError, match="is a counter, not a gauge"):
        telemetry.gauge("payout_ledger.tel_test.things", 1.0)
