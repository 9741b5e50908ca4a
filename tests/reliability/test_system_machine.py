"""Random histories of the whole system: callers, the fake Stripe, faults, crashes, webhooks.

A hypothesis state machine drives several callers (separate ledgers on one
store, as separate processes would be) against the fake Stripe server over
HTTP, with the production gateway. Each caller is a host of its own: its wall
clock is off true time by its own error (up to 12 hours either way, and it can
be stepped by hours between operations), and its settings are drawn from the
whole space ``LedgerSettings`` accepts (send window, timeout, the SDK's retries,
claim attempts, lock timeout). Rules release by any caller, program gateway
faults (timeout before or after Stripe commits, a stored 5xx, a 429, a refusal
for lack of funds, failed lookups), crash a caller at any I/O step of a release
or a resume (then restart it), deliver Stripe's webhooks (in any order,
duplicated), forged ones, connected accounts' events and events of the other
mode, resume, reconcile and move true time past Stripe's 24-hour key pruning.
After every step:

* at most one transfer per event service at Stripe, and each belongs to the
  payout's current attempt; a paid payout records exactly Stripe's transfer, a
  failed or absent one has none (``check_agreement``);
* every payout's log is whole and well formed, and a fresh ledger replaying it
  sees what each caller's live ledger sees;
* a forged webhook, a connected account's event or an event of the other mode
  changed no payout and captured no payment (checked in its rules);
* reversals (rules reverse by any caller, a partial one with a reference drawn
  from a small pool so retries of one reference happen, or a full one; crash a
  caller at any I/O step of one; program reversal faults; drain or refill the
  connected account so Stripe refuses with ``balance_insufficient``): at
  Stripe the reversals of a transfer never add up to more than it, there is at
  most one per reversal attempt and one per host reference, each recorded
  reversal exists at Stripe as claimed, and the ledger never counts more
  reversed than Stripe (``check_reversals``).

``settle_everything`` then proves liveness: faults cleared, releases and
reversals resumed (past the key window if need be) and released again, every
service is paid exactly once, the ledger's reversed total equals Stripe's for
every transfer and ``reconcile`` is clean.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import psycopg
import pytest
import stripe
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from payout_ledger import (
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
    ReleaseResult,
    ReversalConflictError,
    ReversalOutcome,
    ReversalRefusedError,
    ReversalResult,
)
from payout_ledger.domain.payout import ReversalStatus
from payout_ledger.errors import TransferOutcomeUnknown
from payout_ledger.service.reconcile import MismatchKind, reconcile
from payout_ledger.settings import MAX_STRIPE_TIMEOUT, SEND_MARGIN, STRIPE_KEY_RETENTION
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing.fake_stripe import FakeStripe, faults, sign_payload
from tests.conftest import _conninfo, with_query
from tests.reliability.config import SIZES
from tests.reliability.figures import FIGURES
from tests.reliability.harness import CrashPlan, HookedGateway, SwitchableHook, instrument_recorder
from tests.reliability.system import (
    CURRENCY,
    DAY_AND_A_BIT,
    HostClock,
    LedgerClock,
    SimulatedCrash,
    build_ledger,
    by_service,
    check_agreement,
    check_replay_equals_live,
    check_reversals,
    fake_reversals,
    fake_transfers,
    release_request,
    stripe_gateway,
)

SERVICES = ["es_sm_0", "es_sm_1", "es_sm_2", "es_sm_3"]
CALLERS = 3
SECRET = "whsec_reliability_current_0123456789abcdef"
ATTACKER_SECRET = "whsec_reliability_attacker_fedcba9876543210"
BALANCE = 10**9

TRANSFER_FAULTS: dict[str, Callable[[], faults.Fault]] = {
    "timeout_before_commit": faults.drop_before_commit,
    "timeout_after_commit": faults.drop_after_commit,
    "server_error_5xx": faults.server_error,
    "rate_limited_429": faults.rate_limited,
}
LOOKUP_FAULTS: dict[str, Callable[[], faults.Fault]] = {
    "lookup_5xx": faults.server_error,
    "lookup_timeout": faults.drop_before_commit,
}
REVERSAL_PATH = "/v1/transfers/*/reversals"
REFUNDS = {"refund_a": 1500, "refund_b": 1500, "refund_c": 2500}
"""The host's refunds: a small pool, so the same reference is asked for again; A and B
have one amount, and the three add up to more than a transfer (5000)."""
REFUND_DRAWS = st.sampled_from([*sorted(REFUNDS), *sorted(REFUNDS), "full"])
ACCOUNT_BALANCES = [0, 0, 1000, 2000]
CLOCK_JUMPS = [3600, 23 * 3600 + 1800, DAY_AND_A_BIT]
FORGERIES = ["wrong_secret", "tampered_body", "stale_signature", "unsigned", "fabricated"]
FOREIGN_EVENTS = [
    "connected_transfer_copy",
    "connected_transfer_forgery",
    "connected_payment",
    "platform_transfer_unlike_claim",
    "other_mode",
]
HOUR = 3600
MAX_CLOCK_ERROR = 12 * HOUR
CLOCK_ERRORS = st.sampled_from([-12 * HOUR, -3 * HOUR, -2 * HOUR, 0, 2 * HOUR, 3 * HOUR, 12 * HOUR])
CLOCK_ERRORS = CLOCK_ERRORS | st.integers(-MAX_CLOCK_ERROR, MAX_CLOCK_ERROR)
SECTION = "state_machine"


@st.composite
def accepted_settings(draw: st.DrawFn) -> dict[str, Any]:
    """Settings from the whole space LedgerSettings accepts (timeouts from 0.5 s)."""
    timeout = draw(st.floats(min_value=0.5, max_value=MAX_STRIPE_TIMEOUT), label="timeout")
    longest_window = int(STRIPE_KEY_RETENTION - SEND_MARGIN - timeout)
    return {
        "stripe_timeout": timeout,
        "stripe_idempotency_window": draw(st.integers(60, longest_window), label="window"),
        "stripe_max_network_retries": draw(st.integers(0, 5), label="retries"),
        "claim_attempts": draw(st.integers(1, 10), label="claim_attempts"),
        "sqlite_lock_timeout": draw(st.integers(1, 30), label="sqlite_lock_timeout"),
        "payability_cache_seconds": draw(
            st.sampled_from([0.0, 30.0]) | st.floats(0, 3600), label="payability_cache_seconds"
        ),
    }


StoreFactory = Callable[[], tuple[str, Callable[[], None]]]


def count(name: str, n: int = 1) -> None:
    FIGURES.add(SECTION, name, n)


def step(method: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine busy while a rule or invariant runs.

    If one raises, the machine stays busy, and the teardown then skips its
    final settlement rather than mask the failure with another one.
    """

    @functools.wraps(method)
    def tracked(self: WholeSystem, *args: Any, **kwargs: Any) -> None:
        self.busy = True
        method(self, *args, **kwargs)
        self.busy = False

    return tracked


class Caller:
    """One host process: its own ledger, clock and settings on the shared store,
    crashable at any I/O step."""

    def __init__(
        self, system: WholeSystem, clock: HostClock, overrides: dict[str, Any] | None = None
    ) -> None:
        self.hook = SwitchableHook()
        self.clock = clock
        self.overrides = dict(overrides or {})
        gateway = HookedGateway(
            stripe_gateway(
                system.fake,
                timeout=self.overrides.get("stripe_timeout", 10.0),
                retries=self.overrides.get("stripe_max_network_retries", 0),
            ),
            self.hook,
        )
        self.ledger = build_ledger(
            system.store_url, system.account, gateway, clock=clock, **self.overrides
        )
        instrument_recorder(self.ledger, self.hook)

    def run(self, plan: CrashPlan | None, action: Callable[[PayoutLedger], Any]) -> Any:
        """Run ``action`` under ``plan``; SimulatedCrash propagates."""
        self.hook.plan = plan
        try:
            return action(self.ledger)
        finally:
            self.hook.plan = None


class WholeSystem(RuleBasedStateMachine):
    """The host's callers, a webhook endpoint, an auditor and the fake Stripe."""

    store_factory: StoreFactory

    def __init__(self) -> None:
        super().__init__()
        count("examples")
        self.store_url, self._drop_store = self.store_factory()
        self.fake = FakeStripe().start()
        self.account = str(self.fake.client().v1.accounts.create({"type": "express"}).id)
        self.clock_for_ledgers = LedgerClock(self.fake.clock)
        self.callers = [Caller(self, self._host_clock(0)) for _ in range(CALLERS)]
        # The auditor reads the log as a separate process would; the webhook
        # endpoint runs in yet another one.
        self.auditor = build_ledger(
            self.store_url, self.account, stripe_gateway(self.fake), clock=self.clock_for_ledgers
        )
        self.endpoint_ledger = build_ledger(
            self.store_url, self.account, stripe_gateway(self.fake), clock=self.clock_for_ledgers
        )
        self.webhooks = WebhookHandler(
            self.endpoint_ledger, secrets=[SECRET], tolerance=300, environment="production"
        )
        # The store has run before: its mode is recorded, and crashes land in releases
        # (the race for a new store's mode is tests/test_store_mode.py's).
        self.auditor._settle_store_mode()
        self.delivered: set[str] = set()
        self.latest_delivered = -1
        self.busy = False
        self.refusing = False

    def teardown(self) -> None:
        try:
            if not self.busy:
                # Every example ends settled: each service paid exactly once.
                self._settle()
                transfers = fake_transfers(self.fake)
                count(
                    "stripe_faults_that_hit_a_request",
                    self.fake.counters.get("faults_triggered", 0),
                )
                count("final_transfers_at_stripe", len(transfers))
                _, reversals = fake_reversals(self.fake)
                count("final_reversals_at_stripe", len(reversals))
                count("final_transfers_expected", len(SERVICES))
                FIGURES.maximum(
                    SECTION,
                    "max_transfers_per_service",
                    max(len(v) for v in by_service(transfers).values()),
                )
        finally:
            for caller in self.callers:
                caller.ledger.close()
            self.auditor.close()
            self.endpoint_ledger.close()
            self.fake.stop()
            self._drop_store()

    @initialize(
        errors=st.lists(CLOCK_ERRORS, min_size=CALLERS, max_size=CALLERS),
        drawn=st.lists(accepted_settings(), min_size=CALLERS, max_size=CALLERS),
    )
    @step
    def hosts(self, errors: list[int], drawn: list[dict[str, Any]]) -> None:
        """Each caller a host of its own: its clock's error and its settings."""
        for index, (error, overrides) in enumerate(zip(errors, drawn, strict=True)):
            self.callers[index].ledger.close()
            self.callers[index] = Caller(self, self._host_clock(error), overrides)
        spread = max(errors) - min(errors)
        FIGURES.maximum(SECTION, "max_clock_disagreement_between_callers_s", spread)
        count("callers_with_a_clock_off_by_3h_or_more", sum(abs(e) >= 3 * HOUR for e in errors))
        count("callers_with_drawn_settings", len(drawn))
        count(
            "callers_with_window_under_an_hour",
            sum(o["stripe_idempotency_window"] < HOUR for o in drawn),
        )
        count("callers_with_sdk_retries", sum(o["stripe_max_network_retries"] > 0 for o in drawn))

    # -- helpers -----------------------------------------------------------------

    def _host_clock(self, error: float) -> HostClock:
        return HostClock(self.fake.clock.now, error)

    def _books(self) -> dict[str, object]:
        """What money-moving state each service is in, and the captured payments."""
        books: dict[str, object] = {}
        for service in SERVICES:
            payout = self.auditor.find_payout(service)
            books[service] = (
                None
                if payout is None
                else (
                    payout.status,
                    payout.attempt,
                    payout.transfer_id,
                    payout.amount_reversed,
                    payout.reversal_attempt,
                    payout.reversal_status,
                )
            )
        return books

    def _paid(self, service: str) -> bool:
        payout = self.auditor.find_payout(service)
        return payout is not None and payout.is_paid

    def _stored(self) -> int:
        return self.auditor.recorder.max_notification_id() or 0

    def _restart(self, index: int) -> None:
        old = self.callers[index]
        old.ledger.close()
        self.callers[index] = Caller(self, old.clock, old.overrides)
        count("restarts")

    def _check_result(self, result: ReleaseResult) -> None:
        """A caller's answer agrees with the ledger and with Stripe right after."""
        payout = self.auditor.get_payout(result.event_service_id)
        at_stripe = [
            t for t in fake_transfers(self.fake) if t.event_service_id == result.event_service_id
        ]
        if result.success:
            assert payout.is_paid
            assert [t.id for t in at_stripe] == [result.transfer_id] == [payout.transfer_id]
        elif result.outcome is ReleaseOutcome.FAILED:
            assert payout.status is PayoutStatus.FAILED and at_stripe == []
        else:
            assert result.outcome in (
                ReleaseOutcome.IN_PROGRESS,
                ReleaseOutcome.OUTCOME_UNKNOWN,
                ReleaseOutcome.NOT_EXECUTED,
            ), result
            assert payout.status is PayoutStatus.IN_FLIGHT

    def _crashable(self, index: int, plan: CrashPlan | None, action: Any) -> Any:
        try:
            return self.callers[index].run(plan, action)
        except SimulatedCrash:
            count("crashes")
            assert plan is not None and plan.fired is not None
            count(f"crash {plan.fired}")
            self._restart(index)
            return None

    def _check_settled_agree(self) -> None:
        """With nothing in flight, reconcile finds no disagreement at all."""
        if self.auditor.in_flight() or self.auditor.reversals_in_flight():
            return
        try:
            report = reconcile(self.auditor, event_service_ids=SERVICES)
        except TransferOutcomeUnknown:
            count("reconcile_blocked_by_lookup_fault")
            return
        assert report.ok, report.mismatches
        count("agreement_checks_after_resume")

    # -- rules -------------------------------------------------------------------

    def _draw_service(self, data: st.DataObject) -> str:
        """Any service, or (as often) one not yet paid: histories keep work to do."""
        unpaid = [s for s in SERVICES if not self._paid(s)]
        pool = st.sampled_from(SERVICES)
        if unpaid:
            pool = pool | st.sampled_from(unpaid)
        return data.draw(pool, label="service")

    @rule(caller=st.integers(0, CALLERS - 1), data=st.data())
    @step
    def release(self, caller: int, data: st.DataObject) -> None:
        service = self._draw_service(data)
        result = self.callers[caller].ledger.release_payment(release_request(service))
        self._operation_done()
        count("releases")
        count(f"outcome {result.outcome.value}")
        self._check_result(result)

    @rule(
        caller=st.integers(0, CALLERS - 1),
        at=st.integers(0, 3),
        after=st.booleans(),
        data=st.data(),
    )
    @step
    def release_and_crash(self, caller: int, at: int, after: bool, data: st.DataObject) -> None:
        """A release killed at its at-th I/O call (load, claim, Stripe, outcome)."""
        service = self._draw_service(data)
        plan = CrashPlan(at, after=after)
        result = self._crashable(
            caller, plan, lambda ledger: ledger.release_payment(release_request(service))
        )
        self._operation_done()
        count("releases")
        if result is not None:
            count("crash point not reached")
            self._check_result(result)

    @rule(kind=st.sampled_from(sorted(TRANSFER_FAULTS)))
    @step
    def stripe_fault(self, kind: str) -> None:
        self.fake.inject(TRANSFER_FAULTS[kind](), method="POST", path="/v1/transfers")
        count(f"fault {kind}")
        count("faults_injected")

    @rule(kind=st.sampled_from(sorted(LOOKUP_FAULTS)))
    @step
    def lookup_fault(self, kind: str) -> None:
        self.fake.inject(LOOKUP_FAULTS[kind](), method="GET", path="/v1/transfers")
        count(f"fault {kind}")
        count("faults_injected")

    @rule()
    @step
    def refuse_next_operation(self) -> None:
        """Stripe refuses (balance_insufficient) every transfer of the next release or resume."""
        self.fake.set_balance("usd", 0)
        self.refusing = True
        count("fault refusal_balance_insufficient")
        count("faults_injected")

    def _operation_done(self) -> None:
        if self.refusing:
            self.fake.set_balance("usd", BALANCE)
            self.refusing = False

    @rule(
        seconds=st.sampled_from(CLOCK_JUMPS),
        step_host=st.none()
        | st.tuples(st.integers(0, CALLERS - 1), st.sampled_from([-12, -3, -2, -1, 1, 2, 3, 12])),
    )
    @step
    def advance_clock(self, seconds: int, step_host: tuple[int, int] | None) -> None:
        """True time moves on; or one host's wall clock is stepped (NTP, a VM resumed)."""
        if step_host is not None:
            caller, hours = step_host
            clock = self.callers[caller].clock
            clock.error = max(-MAX_CLOCK_ERROR, min(MAX_CLOCK_ERROR, clock.error + hours * HOUR))
            count("host_clock_steps")
            return
        self.clock_for_ledgers.advance(seconds)
        count("clock_jumps")
        if seconds >= DAY_AND_A_BIT:
            count("clock_jumps_past_24h")

    @rule(
        caller=st.integers(0, CALLERS - 1),
        crash=st.none() | st.tuples(st.integers(0, 8), st.booleans()),
    )
    @step
    def resume(self, caller: int, crash: tuple[int, bool] | None) -> None:
        plan = None if crash is None else CrashPlan(crash[0], after=crash[1])
        results = self._crashable(
            caller,
            plan,
            lambda ledger: [*ledger.resume_in_flight(), *ledger.resume_reversals_in_flight()],
        )
        self._operation_done()
        count("resumes")
        if results is None:
            return
        for result in results:
            if isinstance(result, ReversalResult):
                count(f"reversal resume {result.detail or result.outcome.value}")
                self._check_reversal_result(result)
                continue
            count(f"resume {result.detail or result.outcome.value}")
            self._check_result(result)
        self._check_settled_agree()

    @precondition(lambda self: bool(self.fake.events()))
    @rule(data=st.data())
    @step
    def deliver_webhook(self, data: st.DataObject) -> None:
        """One of Stripe's events, signed: in any order, as often as drawn."""
        events = self.fake.events()
        index = data.draw(st.integers(0, len(events) - 1), label="event")
        event = events[index]
        body = json.dumps(event).encode()
        response = self.webhooks.handle(
            body, {"Stripe-Signature": sign_payload(body, SECRET, int(time.time()))}
        )
        assert response.status == 200, response
        count("webhooks_delivered")
        if event["type"] == "transfer.reversed":
            count("webhooks_transfer_reversed")
        if event["id"] in self.delivered:
            count("webhooks_duplicate")
            assert response.body.get("duplicate") is True
        if index < self.latest_delivered:
            count("webhooks_out_of_order")
        self.delivered.add(event["id"])
        self.latest_delivered = max(self.latest_delivered, index)

    @rule(kind=st.sampled_from(FORGERIES + FOREIGN_EVENTS), data=st.data())
    @step
    def deliver_bad_webhook(self, kind: str, data: st.DataObject) -> None:
        """Forged, or signed but not the platform's business: it changes no money."""
        if kind in FOREIGN_EVENTS:
            self._deliver_foreign_event(kind, data)
        else:
            self._deliver_forged_webhook(kind, data)

    def _deliver_forged_webhook(self, kind: str, data: st.DataObject) -> None:
        """A request Stripe did not sign (or not like this) is refused and changes nothing."""
        stored_before = self._stored()
        body, header = self._forge(kind, data)
        headers = {} if header is None else {"Stripe-Signature": header}
        response = self.webhooks.handle(body, headers)
        assert response.status == 403, (kind, response)
        assert self._stored() == stored_before
        count("webhooks_forged")
        count(f"forged {kind}")

    def _forge(self, kind: str, data: st.DataObject) -> tuple[bytes, str | None]:
        events = self.fake.events()
        now = int(time.time())
        if kind == "fabricated" or not events:
            service = data.draw(st.sampled_from(SERVICES), label="service")
            payout = self.auditor.find_payout(service)
            obj = {
                "id": f"tr_forged_{uuid.uuid4().hex[:12]}",
                "object": "transfer",
                "amount": 5000,
                "currency": "usd",
                "destination": self.account,
                "transfer_group": f"event_service:{service}",
                "metadata": {
                    "event_service_id": service,
                    "payout_id": str(PayoutLedger.payout_id(service)),
                    "attempt": str(payout.attempt if payout else 1),
                },
            }
            forged = {
                "id": f"evt_forged_{uuid.uuid4().hex[:12]}",
                "object": "event",
                "type": "transfer.created",
                "data": {"object": obj},
            }
            body = json.dumps(forged).encode()
            return body, sign_payload(body, ATTACKER_SECRET, now)
        event = data.draw(st.sampled_from(events), label="event")
        body = json.dumps(event).encode()
        if kind == "wrong_secret":
            return body, sign_payload(body, ATTACKER_SECRET, now)
        if kind == "tampered_body":
            header = sign_payload(body, SECRET, now)
            event = json.loads(body)
            event["data"]["object"]["id"] = "tr_tampered"
            event["data"]["object"]["amount"] = 1
            return json.dumps(event).encode(), header
        if kind == "stale_signature":
            return body, sign_payload(body, SECRET, now - 3600)
        return body, None  # unsigned

    def _deliver_foreign_event(self, kind: str, data: st.DataObject) -> None:
        """Correctly signed, but a connected account's, unlike the claim, or of the other mode.

        None of them may settle, reverse or capture anything; the other mode is
        refused outright.
        """
        books, stored_before = self._books(), self._stored()
        event = self._foreign(kind, data)
        body = json.dumps(event).encode()
        response = self.webhooks.handle(
            body, {"Stripe-Signature": sign_payload(body, SECRET, int(time.time()))}
        )
        if kind == "other_mode" and event.get("account") is not None:
            # Live Connect endpoints get connected accounts' test events too: ignored.
            assert response.status == 200, response
            assert response.body["outcome"] == "ignored"
            assert self._stored() == stored_before
        elif kind == "other_mode":
            assert response.status == 400, response
            assert response.body == {"error": "livemode_mismatch"}
            assert self._stored() == stored_before
        else:
            assert response.status == 200, (kind, response)
            assert response.body.get("outcome", "duplicate") in ("recorded", "duplicate")
        assert self._books() == books, kind
        if kind == "connected_payment":
            intent = event["data"]["object"]["id"]
            assert self.auditor.captured_payment(intent) is None
        count("foreign_events_delivered")
        count(f"foreign {kind}")

    def _foreign(self, kind: str, data: st.DataObject) -> dict[str, Any]:
        new_id = f"evt_foreign_{uuid.uuid4().hex[:12]}"
        if kind == "connected_payment":
            intent = {
                "id": f"pi_conn_{uuid.uuid4().hex[:8]}",
                "object": "payment_intent",
                "amount": 5000,
                "currency": "usd",
                "metadata": {"event_service_id": SERVICES[0]},
            }
            return {
                "id": new_id,
                "type": "payment_intent.succeeded",
                "account": "acct_connected_other",
                "livemode": False,
                "data": {"object": intent},
            }
        transfers = [e for e in self.fake.events() if e["type"].startswith("transfer.")]
        if kind == "other_mode":
            source = (
                data.draw(st.sampled_from(self.fake.events()), label="event")
                if self.fake.events()
                else self._claimed_transfer_event(data, new_id)
            )
            flipped = copy.deepcopy(source)
            flipped["id"], flipped["livemode"] = new_id, True
            if data.draw(st.booleans(), label="a connected account's"):
                flipped["account"] = "acct_connected_other"
            return flipped
        if kind == "connected_transfer_copy" and transfers:
            copied = copy.deepcopy(data.draw(st.sampled_from(transfers), label="event"))
            copied["id"], copied["account"] = new_id, "acct_connected_other"
            return copied
        event = self._claimed_transfer_event(data, new_id)
        obj = event["data"]["object"]
        if kind == "platform_transfer_unlike_claim":
            field = data.draw(st.sampled_from(["amount", "currency", "destination"]), label="f")
            obj[field] = {"amount": 100, "currency": "eur", "destination": "acct_mallory"}[field]
        else:  # a connected account's transfer dressed as the claim (the trial's case)
            obj["amount"], obj["destination"] = 100, "acct_mallory"
            event["account"] = "acct_mallory"
        return event

    def _claimed_transfer_event(self, data: st.DataObject, event_id: str) -> dict[str, Any]:
        """A transfer.created naming a drawn service's current claim (one in flight if any:
        that is the claim such an event could wrongly settle)."""
        in_flight = self.auditor.in_flight()
        service = data.draw(st.sampled_from(in_flight or SERVICES), label="service")
        payout = self.auditor.find_payout(service)
        obj = {
            "id": f"tr_foreign_{uuid.uuid4().hex[:12]}",
            "object": "transfer",
            "amount": 5000,
            "currency": "usd",
            "destination": self.account,
            "transfer_group": f"event_service:{service}",
            "metadata": {
                "event_service_id": service,
                "payout_id": str(PayoutLedger.payout_id(service)),
                "attempt": str(payout.attempt if payout else 1),
            },
        }
        return {
            "id": event_id,
            "type": "transfer.created",
            "livemode": False,
            "data": {"object": obj},
        }

    # -- reversals --------------------------------------------------------------

    def _check_reversal_result(self, result: ReversalResult) -> None:
        """A reversal's answer agrees with the ledger and with Stripe right after."""
        payout = self.auditor.get_payout(result.event_service_id)
        _, reversals = fake_reversals(self.fake)
        by_id = {r.id: r for r in reversals}
        count(f"reversal outcome {result.outcome.value}")
        if result.outcome is ReversalOutcome.REVERSED:
            found = by_id.get(str(result.reversal_id))
            assert found is not None, result
            assert (found.reference, found.amount) == (result.reference, result.amount), result
            assert payout.reversals[result.reference] == result.reversal_id
        elif result.outcome is ReversalOutcome.ALREADY_REVERSED:
            if result.amount:
                assert result.reference in payout.reversals, result
        elif result.outcome is ReversalOutcome.FAILED:
            assert result.error_code == "balance_insufficient", result
            assert payout.reversal_status is not ReversalStatus.IN_FLIGHT, result
            count("reversal_balance_refusals")
        else:
            # in progress, unknown or not executed: a reversal stays in flight
            assert payout.reversal_status is ReversalStatus.IN_FLIGHT, result

    def _draw_reversible(self, data: st.DataObject) -> str:
        """Any paid service, or (as often) one not yet wholly reversed."""
        paid = [s for s in SERVICES if self._paid(s)]
        reversible = [s for s in paid if self.auditor.get_payout(s).reversible > 0]
        pool = st.sampled_from(paid)
        if reversible:
            pool = pool | st.sampled_from(reversible)
        return data.draw(pool, label="paid service")

    @precondition(lambda self: any(self._paid(s) for s in SERVICES))
    @rule(
        caller=st.integers(0, CALLERS - 1),
        refund=REFUND_DRAWS,
        other_amount=st.booleans() | st.just(False),
        account=st.none() | st.none() | st.none() | st.sampled_from(ACCOUNT_BALANCES),
        data=st.data(),
    )
    @step
    def reverse(
        self,
        caller: int,
        refund: str,
        other_amount: bool,
        account: int | None,
        data: st.DataObject,
    ) -> None:
        """A refund's reversal by any caller: a reference from the pool (its amount, or
        now and then another one), or the whole rest; now and then the connected account
        was paid out just before (drained to little or nothing, until refilled)."""
        if account is not None:
            self.fake.set_account_balance(self.account, CURRENCY, account)
            count("account_drained")
        self._reverse(caller, refund, other_amount, None, data)

    @precondition(lambda self: any(self._paid(s) for s in SERVICES))
    @rule(
        caller=st.integers(0, CALLERS - 1),
        refund=REFUND_DRAWS,
        at=st.integers(0, 5),
        after=st.booleans(),
        data=st.data(),
    )
    @step
    def reverse_and_crash(
        self, caller: int, refund: str, at: int, after: bool, data: st.DataObject
    ) -> None:
        """A reversal killed at its at-th I/O call (load, claim, lookup, Stripe, outcome)."""
        self._reverse(caller, refund, False, (at, after), data)

    def _reverse(
        self,
        caller: int,
        refund: str,
        other_amount: bool,
        crash: tuple[int, bool] | None,
        data: st.DataObject,
    ) -> None:
        service = self._draw_reversible(data)
        if refund == "full":
            amount, reference = None, None
        else:
            amount, reference = REFUNDS[refund] + (100 if other_amount else 0), refund
        plan = None if crash is None else CrashPlan(crash[0], after=crash[1])
        count("reversals")
        try:
            result = self._crashable(
                caller,
                plan,
                lambda ledger: ledger.reverse_payment(
                    service, amount, reference=reference, reason="requested_by_customer"
                ),
            )
        except ReversalRefusedError:
            count("reversal refused: more than not yet reversed")
            payout = self.auditor.get_payout(service)
            assert amount is not None and amount > payout.reversible, (amount, payout.reversible)
            return
        except ReversalConflictError:
            count("reversal refused: reference used for another amount")
            payout = self.auditor.get_payout(service)
            assert reference is not None and payout.reversal_amounts[reference] != amount
            return
        finally:
            self._operation_done()
        if result is None:
            count("reversals_killed")
            return
        if plan is not None:
            count("crash point not reached")
        self._check_reversal_result(result)

    @precondition(lambda self: bool(self.auditor.reversals_in_flight()))
    @rule(caller=st.integers(0, CALLERS - 1), data=st.data())
    @step
    def resume_reversal(self, caller: int, data: st.DataObject) -> None:
        """``resume_reversal`` of a service whose reversal is in flight, by any caller."""
        service = data.draw(st.sampled_from(self.auditor.reversals_in_flight()), label="service")
        result = self.callers[caller].ledger.resume_reversal(service)
        count("reversal resumes")
        count(f"reversal resume {result.detail or result.outcome.value}")
        self._check_reversal_result(result)

    @precondition(lambda self: any(self._paid(s) for s in SERVICES))
    @rule(kind=st.sampled_from(sorted(TRANSFER_FAULTS)))
    @step
    def reversal_fault(self, kind: str) -> None:
        """The next reversal request: dropped before or after Stripe commits, a 5xx, a 429."""
        self.fake.inject(TRANSFER_FAULTS[kind](), method="POST", path=REVERSAL_PATH)
        count(f"reversal fault {kind}")
        count("reversal_faults_injected")
        count("faults_injected")

    @precondition(lambda self: any(self._paid(s) for s in SERVICES))
    @rule(kind=st.sampled_from(sorted(LOOKUP_FAULTS)))
    @step
    def reversal_lookup_fault(self, kind: str) -> None:
        """The next listing of a transfer's reversals fails (500 or dropped)."""
        self.fake.inject(LOOKUP_FAULTS[kind](), method="GET", path=REVERSAL_PATH)
        count(f"reversal fault {kind}")
        count("reversal_faults_injected")
        count("faults_injected")

    @precondition(lambda self: any(self._paid(s) for s in SERVICES))
    @rule(available=st.sampled_from(ACCOUNT_BALANCES) | st.just(BALANCE))
    @step
    def set_account_balance(self, available: int) -> None:
        """The connected account is paid out (drained to little or nothing), or refilled:
        reversals it cannot cover are refused (``balance_insufficient``)."""
        self.fake.set_account_balance(self.account, CURRENCY, available)
        count("account_drained" if available < BALANCE else "account_refilled")

    @rule()
    @step
    def reconcile_now(self) -> None:
        """Reconcile never reports a duplicate or a wrong transfer; only unsettled ones."""
        try:
            report = reconcile(self.auditor, event_service_ids=SERVICES)
        except TransferOutcomeUnknown:
            count("reconcile_blocked_by_lookup_fault")
            return
        count("reconciles")
        in_flight = set(self.auditor.in_flight())
        reversing = set(self.auditor.reversals_in_flight())
        for m in report.mismatches:
            if m.kind is MismatchKind.REVERSED:
                # Stripe reversed more than the ledger knows: only a reversal in flight.
                assert m.event_service_id in reversing, m
                continue
            assert m.kind is MismatchKind.MISSING_IN_LEDGER, m
            assert m.event_service_id in in_flight, m

    @rule()
    @step
    def settle_everything(self) -> None:
        """Faults cleared: resume (past the key window if need be) and release pay each once."""
        self._settle()

    def _settle(self) -> None:
        self.fake.clear_faults()
        self._operation_done()
        for _ in range(3):
            self.auditor.resume_in_flight()
            self.auditor.resume_reversals_in_flight()
            if not self.auditor.in_flight() and not self.auditor.reversals_in_flight():
                break
            self.clock_for_ledgers.advance(DAY_AND_A_BIT)
            count("settle_needed_the_key_window")
        assert self.auditor.in_flight() == []
        assert self.auditor.reversals_in_flight() == []
        for service in SERVICES:
            result = self.callers[0].ledger.release_payment(release_request(service))
            assert result.success, result
        grouped = by_service(fake_transfers(self.fake))
        assert sorted(grouped) == SERVICES
        assert all(len(ts) == 1 for ts in grouped.values()), grouped
        amounts, reversals = fake_reversals(self.fake)
        audit = check_reversals(self.auditor, amounts, reversals, SERVICES)
        for service in SERVICES:
            payout = self.auditor.get_payout(service)
            at_stripe = audit.reversed_transfers.get(str(payout.transfer_id), 0)
            assert payout.amount_reversed == at_stripe, (service, payout.amount_reversed, at_stripe)
        report = reconcile(self.auditor, event_service_ids=SERVICES)
        assert report.ok, report.mismatches
        count("settled_histories")

    # -- invariants --------------------------------------------------------------

    @invariant()
    @step
    def ledger_and_stripe_agree(self) -> None:
        check_agreement(self.auditor, fake_transfers(self.fake), SERVICES)
        amounts, reversals = fake_reversals(self.fake)
        try:
            audit = check_reversals(self.auditor, amounts, reversals, SERVICES)
        except AssertionError as exc:
            if "over-reversal" in str(exc):
                count("over_reversals")
            if "duplicate reversal" in str(exc):
                count("duplicate_reversals")
            raise
        count("over_reversals", audit.over_reversals)
        count("duplicate_reversals", audit.duplicate_reversals)
        count("reversal_checks")
        FIGURES.maximum(SECTION, "max_reversals_at_stripe_in_a_step", audit.at_stripe)
        count("invariant_checks")

    @invariant()
    @step
    def replay_equals_live_state(self) -> None:
        for caller in self.callers:
            for service in SERVICES:
                check_replay_equals_live(caller.ledger, self.auditor, service)


def _sqlite_store() -> tuple[str, Callable[[], None]]:
    folder = tempfile.mkdtemp(prefix="payout-reliability-sm-")
    return f"sqlite:///{folder}/payouts.db", lambda: shutil.rmtree(folder, ignore_errors=True)


def _postgres_store(server_url: str) -> StoreFactory:
    def make() -> tuple[str, Callable[[], None]]:
        schema = f"rel_sm_{uuid.uuid4().hex[:12]}"
        conninfo = _conninfo(server_url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")

        def drop() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")

        return with_query(server_url, schema=schema), drop

    return make


def _run(store: str, factory: StoreFactory, examples: int) -> None:
    machine = type(f"WholeSystem_{store}", (WholeSystem,), {"store_factory": staticmethod(factory)})
    FIGURES.note(SECTION, f"store {store}", "run")
    FIGURES.note(SECTION, "steps_per_example", SIZES.machine_steps)
    FIGURES.note(SECTION, "callers", CALLERS)
    FIGURES.note(SECTION, "services", len(SERVICES))
    FIGURES.note(SECTION, "max_clock_error_per_host_s", MAX_CLOCK_ERROR)
    # The SDK's retries sleep 0.5-5 s between tries; here a few milliseconds, so
    # drawing up to 5 retries per call keeps an example fast.
    retry_delays = mock.patch.multiple(
        stripe._http_client.HTTPClient, INITIAL_DELAY=0.001, MAX_DELAY=0.005
    )
    with retry_delays:
        _run_machine(machine, examples)


def _run_machine(machine: type[WholeSystem], examples: int) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=SIZES.machine_steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.timeout(3600)
def test_random_histories_on_sqlite_pay_each_service_at_most_once() -> None:
    """Histories of releases, faults, crashes, webhooks and resumes on SQLite keep exactly-once."""
    _run("sqlite", _sqlite_store, SIZES.machine_examples)


@pytest.mark.postgres
@pytest.mark.reliability_long
@pytest.mark.timeout(3600)
def test_random_histories_on_postgres_pay_each_service_at_most_once(
    postgres_server_url: str,
) -> None:
    """The same histories on PostgreSQL (long run only)."""
    _run("postgres", _postgres_store(postgres_server_url), SIZES.machine_postgres_examples)
