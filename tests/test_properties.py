"""Random histories of releases, failures, retries and onboarding.

A hypothesis state machine drives one ledger against a model of what the seed
promises, and after every step checks: at most one successful transfer per
event service, result flags as the seed says, and a replay of the log equal to
the live state.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from payout_ledger import (
    LedgerSettings,
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
    ServiceProvider,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.support import release

SERVICES = ["es_a", "es_b", "es_c"]
PROVIDERS = {"es_a": "prov_1", "es_b": "prov_1", "es_c": "prov_2"}

FAULTS = {
    "decline": lambda g: g.decline_next("card_declined", "declined"),
    "unknown_before_commit": lambda g: g.fail_next(TransferOutcomeUnknown("timeout")),
    "unknown_after_commit": lambda g: g.fail_next(
        TransferOutcomeUnknown("response lost"), after_commit=True
    ),
    "rate_limited": lambda g: g.fail_next(TransferNotExecuted("429", code="rate_limit")),
}


class ReleaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.providers = InMemoryProviderDirectory(
            [
                ServiceProvider(id="prov_1", user_id="u1", stripe_account_id="acct_1"),
                ServiceProvider(id="prov_2", user_id="u2"),  # not onboarded yet
            ]
        )
        self.gateway = InMemoryTransferGateway()
        self.ledger = PayoutLedger(
            settings=LedgerSettings(store_url="memory://"),
            providers=self.providers,
            gateway=self.gateway,
        )
        self.model: dict[str, PayoutStatus | None] = dict.fromkeys(SERVICES)
        self.onboarded = {"prov_1"}
        self.pending_fault: str | None = None

    def teardown(self) -> None:
        self.ledger.close()

    @precondition(lambda self: self.pending_fault is None)
    @rule(fault=st.sampled_from(sorted(FAULTS)))
    def program_fault(self, fault: str) -> None:
        FAULTS[fault](self.gateway)
        self.pending_fault = fault

    @rule()
    def onboard_provider_2(self) -> None:
        self.providers.add(ServiceProvider(id="prov_2", user_id="u2", stripe_account_id="acct_2"))
        self.onboarded.add("prov_2")

    @rule(service=st.sampled_from(SERVICES))
    def release_service(self, service: str) -> None:
        calls_before = self.gateway.calls
        result = self.ledger.release_payment(release(service, PROVIDERS[service]))
        state = self.model[service]

        if state is PayoutStatus.RELEASED:
            assert result.already_released and result.success
            assert self.gateway.calls == calls_before
        elif state is PayoutStatus.IN_FLIGHT:
            assert result.in_progress and not result.success
            assert self.gateway.calls == calls_before
        elif PROVIDERS[service] not in self.onboarded:
            assert result.onboarding_required and not result.success
            assert self.gateway.calls == calls_before
        else:
            assert self.gateway.calls == calls_before + 1
            fault, self.pending_fault = self.pending_fault, None
            expected = {
                None: (ReleaseOutcome.RELEASED, PayoutStatus.RELEASED),
                "decline": (ReleaseOutcome.FAILED, PayoutStatus.FAILED),
                "unknown_before_commit": (
                    ReleaseOutcome.OUTCOME_UNKNOWN,
                    PayoutStatus.IN_FLIGHT,
                ),
                "unknown_after_commit": (
                    ReleaseOutcome.OUTCOME_UNKNOWN,
                    PayoutStatus.IN_FLIGHT,
                ),
                "rate_limited": (ReleaseOutcome.NOT_EXECUTED, PayoutStatus.IN_FLIGHT),
            }[fault]
            assert result.outcome is expected[0]
            self.model[service] = expected[1]
            assert result.success == (expected[1] is PayoutStatus.RELEASED)

    @invariant()
    def at_most_one_transfer_per_service(self) -> None:
        for service in SERVICES:
            assert len(self.gateway.transfers_for(service)) <= 1

    @invariant()
    def ledger_matches_model_and_replay(self) -> None:
        for service in SERVICES:
            history = self.ledger.history(service)
            if self.model[service] is None:
                assert history == []
                continue
            live = self.ledger.get_payout(service)
            assert live.status is self.model[service]
            replayed = None
            for event in history:
                replayed = event.mutate(replayed)
            assert replayed is not None
            assert _state(replayed) == _state(live)
            if live.status is PayoutStatus.RELEASED:
                [transfer] = self.gateway.transfers_for(service)
                assert live.transfer_id == transfer.transfer_id
                assert transfer.idempotency_key == live.idempotency_key


def _state(payout: object) -> dict[str, object]:
    return {k: v for k, v in vars(payout).items() if k != "_pending_events"}


ReleaseMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReleaseHistories = ReleaseMachine.TestCase
