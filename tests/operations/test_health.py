"""ledger.status(), ledger.health() and the ASGI health route."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import pytest
from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import OperationalError

from payout_ledger import LedgerSettings, PayoutLedger, TransferOutcomeUnknown
from payout_ledger.adapters import log as log_module
from payout_ledger.adapters.log import claims_without_outcomes
from payout_ledger.adapters.projection import run_projection
from payout_ledger.adapters.projection.runner import projection_position
from payout_ledger.asgi import health_app
from payout_ledger.domain.payout import REVERSAL_CLAIMS, TRANSFER_CLAIMS
from payout_ledger.service import health as health_module
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.conftest import DURABLE_STORES, LedgerFactory
from tests.stripe.stripe_support import real_gateway
from tests.support import ALICE, MovableClock, SlowHostClock, release
from tests.webhooks.conftest import serve

CHECKS = ["store", "cipher", "stripe", "in_flight", "projection", "seal"]


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


def states(ledger: PayoutLedger, **kwargs: Any) -> dict[str, str]:
    return {check.name: check.state for check in ledger.health(**kwargs).checks}


def test_a_new_ledger_is_healthy_and_names_every_check(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger()
    report = ledger.health()
    assert report.ok, report.as_dict()
    assert [c.name for c in report.checks] == CHECKS
    assert report.status is not None
    assert report.status.in_flight == 0
    assert report.status.last_notification_id == 0
    assert states(ledger)["stripe"] == "ok"  # the in-memory gateway answered its lookup


def test_an_old_attempt_in_flight_fails_health_until_it_is_resumed(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    ledger = make_ledger(clock=clock, health_in_flight_threshold=600)
    ledger.release_payment(release("es_ok"))
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.release_payment(release("es_lost"))

    status = ledger.status()
    assert (status.in_flight, status.oldest_in_flight_seconds) == (1, 0.0)
    assert states(ledger)["in_flight"] == "ok"  # in flight, but young

    clock.advance(601)
    report = ledger.health()
    assert not report.ok
    assert report.failing == ["in_flight"]
    [check] = [c for c in report.checks if c.name == "in_flight"]
    assert (check.value, check.threshold) == (601.0, 600)
    assert "es_lost" not in json.dumps(report.as_dict())

    ledger.resume_in_flight()
    assert ledger.status().in_flight == 0
    assert ledger.health().ok
    assert len(gateway.transfers_for("es_lost")) == 1


def test_a_reversal_in_flight_counts_and_ages_too(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    ledger = make_ledger(clock=clock)
    ledger.release_payment(release("es_1"))
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.reverse_payment("es_1", reason="requested_by_customer", reference="re_1")
    clock.advance(1000)
    status = ledger.status()
    assert (status.in_flight, status.reversals_in_flight) == (0, 1)
    assert status.oldest_in_flight_seconds == 1000.0
    assert states(ledger)["in_flight"] == "failing"


def test_a_threshold_set_to_none_turns_its_check_off(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    ledger = make_ledger(
        clock=clock, health_in_flight_threshold=None, health_seal_age_threshold=None
    )
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.release_payment(release("es_lost"))
    clock.advance(10 * 86_400)
    checked = states(ledger)
    assert checked["in_flight"] == checked["seal"] == "disabled"
    assert ledger.health().ok


@pytest.mark.parametrize("store_url", DURABLE_STORES, indirect=True)
def test_the_read_model_lag_is_measured_and_checked(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(health_projection_lag_threshold=2)
    ledger.release_payment(release("es_1"))
    assert ledger.status().projection_lag is None  # never created: nothing to lag
    assert states(ledger)["projection"] == "ok"
    run_projection(ledger)
    assert ledger.status().projection_lag == 0
    for n in range(2, 4):
        ledger.release_payment(release(f"es_{n}"))
    assert ledger.status().projection_lag == 6  # claim, transfer and release each
    assert states(ledger)["projection"] == "failing"
    run_projection(ledger)
    ledger.seal()  # a seal is no payout event: the read model does not lag behind it
    assert ledger.status().projection_lag == 0
    assert states(ledger)["projection"] == "ok"


def test_events_waiting_unsealed_past_the_threshold_fail_health(
    make_ledger: LedgerFactory, clock: MovableClock
) -> None:
    ledger = make_ledger(clock=clock, health_seal_age_threshold=3600)
    assert states(ledger)["seal"] == "ok"  # an empty log has nothing to seal
    ledger.release_payment(release("es_1"))
    assert ledger.status().unsealed_events == 4  # the store's mode, and the release's three
    assert states(ledger)["seal"] == "ok"  # waiting, but not for long
    clock.advance(3601)
    assert states(ledger)["seal"] == "failing"  # never sealed
    ledger.seal()
    status = ledger.status()
    assert status.unsealed_events == 0
    assert status.seconds_since_last_seal is not None
    clock.advance(7200)
    assert states(ledger)["seal"] == "ok"  # quiet: nothing waits for a seal
    clock.moment = datetime.now(UTC)  # events are stamped with the real time
    ledger.release_payment(release("es_2"))
    assert states(ledger)["seal"] == "ok"  # behind a seal two hours old, but just recorded
    clock.advance(3601)
    report = ledger.health()
    assert report.failing == ["seal"]
    assert ledger.status().oldest_unsealed_seconds == pytest.approx(3601, abs=1)
    ledger.seal()
    assert ledger.health().ok


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_events_the_cipher_cannot_read_fail_the_cipher_check(store_url: str) -> None:
    key, other = AESCipher.create_key(32), AESCipher.create_key(32)
    providers = InMemoryProviderDirectory([ALICE])
    gateway = InMemoryTransferGateway()

    def ledger_with(cipher_key: str) -> PayoutLedger:
        settings = LedgerSettings(store_url=store_url, cipher_key=cipher_key)
        return PayoutLedger(settings=settings, providers=providers, gateway=gateway)

    early = ledger_with(other)  # opened on an empty store: nothing to check yet
    writer = ledger_with(key)
    try:
        writer.release_payment(release("es_1"))
        assert states(writer)["cipher"] == "ok"
        report = early.health()
        assert report.failing == ["cipher"]
        assert other not in json.dumps(report.as_dict())
    finally:
        early.close()
        writer.close()


def test_a_store_that_does_not_answer_fails_without_its_message(
    make_ledger: LedgerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger()

    def refuse() -> int:
        raise OperationalError("connection to postgresql://u:hunter2@db failed")

    monkeypatch.setattr(ledger.recorder, "max_notification_id", refuse)
    report = ledger.health()
    assert report.failing == ["store"]
    assert report.as_dict()["checks"]["store"]["detail"] == "unreachable (OperationalError)"
    assert "hunter2" not in json.dumps(report.as_dict())


def test_stripe_is_asked_one_read_only_request_and_its_failure_is_reported(
    fake: FakeStripe, tmp_path: Any
) -> None:
    settings = LedgerSettings(
        store_url=f"sqlite:///{tmp_path / 'l.db'}", stripe_api_key=fake.api_key
    )
    ledger = PayoutLedger(
        settings=settings, providers=InMemoryProviderDirectory([ALICE]), gateway=real_gateway(fake)
    )
    try:
        before = len(fake.requests)
        assert states(ledger)["stripe"] == "ok"
        asked = fake.requests[before:]
        assert [(r.method, r.path) for r in asked] == [("GET", "/v1/transfers")]
        assert states(ledger, check_stripe=False)["stripe"] == "disabled"
        fake.stop()
        report = ledger.health()
        assert report.failing == ["stripe"]
        assert fake.api_key not in json.dumps(report.as_dict())
    finally:
        ledger.close()


def test_without_stripe_the_check_is_disabled(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(stripe_enabled=False, gateway=None)
    assert states(ledger)["stripe"] == "disabled"
    assert ledger.health().ok


@pytest.fixture
def client_of() -> Iterator[Any]:
    """An HTTP client of the ledger's health app, served by uvicorn on 127.0.0.1."""
    with contextlib.ExitStack() as stack:

        def make(ledger: PayoutLedger, max_age: float = 0.0) -> httpx.Client:
            base = stack.enter_context(serve(health_app(ledger, max_age=max_age)))
            return stack.enter_context(httpx.Client(base_url=base, timeout=30))

        yield make


def test_the_route_answers_200_then_503_with_no_id_and_no_secret(
    make_ledger: LedgerFactory,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    client_of: Any,
) -> None:
    cipher_key = AESCipher.create_key(32)
    ledger = make_ledger(
        clock=clock, cipher_key=cipher_key, stripe_api_key="sk_test_" + "s3cret" * 4
    )
    ledger.release_payment(release("es_visible"))
    ledger.seal()
    client = client_of(ledger)
    ok = client.get("/")
    assert ok.status_code == 200
    assert ok.json()["ok"] is True
    assert set(ok.json()["checks"]) == set(CHECKS)

    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    result = ledger.release_payment(release("es_stuck"))
    clock.advance(3600)
    failing = client.get("/")
    assert failing.status_code == 503
    body = failing.text
    assert failing.json()["checks"]["in_flight"]["state"] == "failing"
    for secret_or_id in (
        "es_visible",
        "es_stuck",
        str(result.payout_id),
        ALICE.id,
        ALICE.stripe_account_id,
        ALICE.user_id,
        cipher_key,
        "s3cret",
    ):
        assert str(secret_or_id) not in body
    assert client.post("/").status_code == 405


def test_the_route_answers_503_when_the_check_itself_breaks(
    make_ledger: LedgerFactory, client_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger()

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("password=hunter2")

    monkeypatch.setattr(ledger, "health", broken)
    response = client_of(ledger).get("/")
    assert (response.status_code, response.json()) == (503, {"ok": False})


def test_the_route_reuses_a_report_younger_than_its_max_age(
    make_ledger: LedgerFactory, client_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger()
    checks: list[bool] = []
    health = ledger.health

    def counted(**kwargs: Any) -> Any:
        checks.append(kwargs["check_stripe"])
        return health(**kwargs)

    monkeypatch.setattr(ledger, "health", counted)
    client = client_of(ledger, max_age=0.5)
    assert [client.get("/").status_code for _ in range(5)] == [200] * 5
    assert checks == [True]
    time.sleep(0.6)
    assert client.get("/").status_code == 200
    assert checks == [True, True]


def in_flight_by_scan(ledger: PayoutLedger) -> list[set[UUID]]:
    found = claims_without_outcomes(ledger, [TRANSFER_CLAIMS, REVERSAL_CLAIMS])
    return [set(ids) for ids in found]


def in_flight_by_status(ledger: PayoutLedger) -> list[set[UUID]]:
    return [set(ids) for ids in health_module._in_flight(ledger)]


@pytest.mark.parametrize("store_url", DURABLE_STORES, indirect=True)
def test_in_flight_from_the_read_model_and_the_events_after_it_equals_the_whole_log(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger()

    def lose_next() -> None:
        gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)

    def check() -> list[set[UUID]]:
        expected = in_flight_by_scan(ledger)
        assert in_flight_by_status(ledger) == expected
        status = ledger.status()
        assert (status.in_flight, status.reversals_in_flight) == tuple(map(len, expected))
        return expected

    ledger.release_payment(release("es_paid"))
    ledger.release_payment(release("es_reversed"))
    lose_next()
    ledger.release_payment(release("es_lost"))
    lose_next()
    ledger.release_payment(release("es_lost_twice"))
    check()  # no read model yet: the whole log
    run_projection(ledger)
    assert [len(ids) for ids in check()] == [2, 0]

    # After the read model's position: an in-flight row settled, a new claim left in
    # flight, a reversal claimed and left in flight, and one settled at once.
    ledger.resume("es_lost")
    lose_next()
    ledger.release_payment(release("es_new"))
    lose_next()
    ledger.reverse_payment("es_paid", reason="requested_by_customer", reference="re_1")
    ledger.reverse_payment("es_reversed", reason="requested_by_customer", reference="re_2")
    assert [len(ids) for ids in check()] == [2, 1]

    run_projection(ledger)
    check()
    ledger.resume("es_lost_twice")
    ledger.resume_reversal("es_paid")
    assert [len(ids) for ids in check()] == [1, 0]

    # With a read model, only the events after its position are read.
    starts: list[int | None] = []
    scan = log_module.iter_notifications

    def recorded(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs.get("start"))
        return scan(*args, **kwargs)

    monkeypatch.setattr(log_module, "iter_notifications", recorded)
    position = projection_position(ledger)
    assert position is not None and position > 0
    health_module._in_flight(ledger)
    assert starts == [position + 1]


@pytest.mark.parametrize("store_url", DURABLE_STORES, indirect=True)
def test_a_health_host_whose_clock_is_hours_behind_still_sees_a_stuck_payout_age(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway
) -> None:
    """The claim was made on a host whose clock is right; the host answering health is
    three hours behind. The age it reports grows from when it first saw the claim."""
    writer = make_ledger()
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    writer.release_payment(release("es_stuck"))
    slow = SlowHostClock()
    checker = make_ledger(clock=slow, health_in_flight_threshold=900)
    assert checker.status().oldest_in_flight_seconds == 0.0
    slow.advance(901)
    status = checker.status()
    assert status.oldest_in_flight_seconds == pytest.approx(901)
    assert checker.health().failing == ["in_flight"]
    writer.resume("es_stuck")
    assert checker.status().oldest_in_flight_seconds is None
    assert checker.health().ok
