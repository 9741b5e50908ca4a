"""Every interleaving of small concurrent scenarios, explored and counted.

The deterministic scheduler (``scheduler.py``) runs two or three actors at
their I/O points and ``explore`` enumerates every order, with and without one
crash. Stripe is ``ModelStripe``: idempotent by key for 24 hours, *not* after
the key is pruned, so a second transfer always shows up. After each run:

* at most one transfer per service at Stripe, of the payout's current attempt;
  the log is whole and well formed (``check_agreement``);
* in scenarios with releases only, each idempotency key reached Stripe at most
  once: only the caller whose claim was saved calls Stripe;
* no actor failed with an unexpected error, and every answer it returned agrees
  with the ledger and Stripe;
* settling afterwards (resume, past the key window if need be) pays the service
  exactly once, and the replayed log equals the live state.

Two positive controls show the explorer can fail: a ledger whose claim ignores
the store's conflict, and a claimant stalled for longer than the key window
(the documented limit of a lock-free claim).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from payout_ledger import (
    PayoutLedger,
    PayoutStatus,
    ReleaseResult,
    ReversalOutcome,
    ReversalRefusedError,
    ReversalResult,
)
from payout_ledger.service.release import _Claimed, _LostClaim
from payout_ledger.service.requests import ReleaseOutcome
from payout_ledger.settings import STRIPE_API_VERSION
from tests.reliability.config import SIZES
from tests.reliability.figures import FIGURES
from tests.reliability.harness import instrument_recorder
from tests.reliability.scheduler import Exploration, Scheduler, explore
from tests.reliability.stripe_model import ModelClock, ModelStripe
from tests.reliability.system import (
    DAY_AND_A_BIT,
    AuditError,
    Reversal,
    SimulatedCrash,
    build_ledger,
    check_agreement,
    check_history,
    check_reversals,
    release_request,
    replay,
    state_of,
)

SERVICE = "es_x"
ACCOUNT = "acct_model"
SECTION = "interleavings"


class ActorClocks:
    """Each actor's wall clock, off true time by that actor's own error.

    The actor is the thread the scheduler runs it in (``actor-<name>``); the
    set-up runs outside them (``setup``). Monotonic time is true time for all.
    """

    def __init__(self, clock: ModelClock, errors: dict[str, float]) -> None:
        self.clock = clock
        self.errors = errors

    def now(self) -> datetime:
        name = threading.current_thread().name.removeprefix("actor-")
        name = name if name in self.errors else "setup"
        return self.clock.now() + timedelta(seconds=self.errors.get(name, 0.0))

    def monotonic(self) -> float:
        return self.clock.monotonic()


@dataclass
class World:
    """One run's system: a fresh store, the model Stripe, a clock, and the actors' ledgers."""

    scheduler: Scheduler
    store: str
    ledger_class: type[PayoutLedger] = PayoutLedger
    errors: dict[str, float] = field(default_factory=dict)
    """Each actor's clock error in seconds (``setup`` for the set-up); 0 if absent."""
    clock: ModelClock = field(default_factory=ModelClock)
    stripe: ModelStripe = field(init=False)
    ledgers: list[PayoutLedger] = field(default_factory=list)
    folder: str | None = None

    def __post_init__(self) -> None:
        self.stripe = ModelStripe(self.clock, self.scheduler.point)
        if self.store == "sqlite":
            self.folder = tempfile.mkdtemp(prefix="payout-reliability-ilv-")
        self.shared = self._new_ledger()
        # The store has run before: its mode is recorded (the race for a new
        # store's mode is tested in tests/test_store_mode.py).
        self.shared._settle_store_mode()

    def _new_ledger(self) -> PayoutLedger:
        url = "memory://" if self.folder is None else f"sqlite:///{self.folder}/payouts.db"
        clock = ActorClocks(self.clock, self.errors) if self.errors else self.clock
        ledger = build_ledger(
            url, ACCOUNT, self.stripe, clock=clock, ledger_class=self.ledger_class
        )
        instrument_recorder(ledger, self.scheduler.hook)
        self.ledgers.append(ledger)
        return ledger

    def ledger(self) -> PayoutLedger:
        """An actor's ledger: its own on SQLite (a process), the shared one in memory.

        The ledger object keeps no state between calls, so on ``memory://``
        actors share it and its store, as processes share a database.
        """
        return self.shared if self.folder is None else self._new_ledger()

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# -- actors ----------------------------------------------------------------------------

Actor = Callable[[World], Callable[[], Any]]


def releaser(world: World) -> Callable[[], Any]:
    ledger = world.ledger()
    return lambda: ledger.release_payment(release_request(SERVICE))


def resumer(world: World) -> Callable[[], Any]:
    ledger = world.ledger()
    return ledger.resume_in_flight


def webhook(world: World) -> Callable[[], Any]:
    """Stripe's ``transfer.created`` for whatever transfer exists when it is delivered."""
    ledger = world.ledger()

    def deliver() -> list[Any]:
        if world.scheduler.point("webhook.deliver"):
            raise SimulatedCrash("before webhook.deliver")
        receipts = []
        for t in list(world.stripe.transfers):
            obj = {"object": "transfer", **t.__dict__, "metadata": dict(t.metadata)}
            event = {"id": f"evt_{t.id}", "type": "transfer.created", "data": {"object": obj}}
            event["api_version"] = STRIPE_API_VERSION
            receipts.append(
                ledger.record_stripe_event(
                    event=event, raw_body=json.dumps(event).encode(), headers={}
                )
            )
        return receipts

    return deliver


def unlike_claim(world: World) -> Callable[[], Any]:
    """A signed platform ``transfer.created`` naming the claim, but for another amount and
    destination (and a connected account's copy of it): neither may settle the payout."""
    ledger = world.ledger()

    def deliver() -> list[Any]:
        if world.scheduler.point("webhook.deliver"):
            raise SimulatedCrash("before webhook.deliver")
        payout = ledger.find_payout(SERVICE)
        attempt = str(payout.attempt if payout else 1)
        obj = {
            "id": "tr_unlike_claim",
            "object": "transfer",
            "amount": 1,
            "currency": "usd",
            "destination": "acct_mallory",
            "transfer_group": f"event_service:{SERVICE}",
            "metadata": {
                "event_service_id": SERVICE,
                "payout_id": str(PayoutLedger.payout_id(SERVICE)),
                "attempt": attempt,
            },
        }
        receipts = []
        for event in (
            {"id": "evt_unlike", "type": "transfer.created", "data": {"object": obj}},
            {
                "id": "evt_connected",
                "type": "transfer.created",
                "account": "acct_mallory",
                "data": {"object": {**obj, "amount": 5000, "destination": ACCOUNT}},
            },
        ):
            event = {**event, "api_version": STRIPE_API_VERSION}
            receipts.append(
                ledger.record_stripe_event(
                    event=event, raw_body=json.dumps(event).encode(), headers={}
                )
            )
        return receipts

    return deliver


def stalled_operator(world: World) -> Callable[[], Any]:
    """24 hours pass (at a moment the scheduler picks), then an operator resumes."""
    ledger = world.ledger()

    def run() -> list[ReleaseResult]:
        if world.scheduler.point("clock.jump_24h"):
            raise SimulatedCrash("before clock.jump_24h")
        world.clock.advance(DAY_AND_A_BIT)
        return ledger.resume_in_flight()

    return run


# -- set-ups -------------------------------------------------------------------------


def nothing(world: World) -> None:
    pass


def in_flight_never_sent_then_24h(world: World) -> None:
    """Attempt 1 claimed, its request never reached Stripe; a day passes."""
    world.stripe.refuse_next_request = True
    assert world.shared.release_payment(release_request(SERVICE)).in_flight
    world.clock.advance(DAY_AND_A_BIT)


def in_flight_answer_lost_then_24h(world: World) -> None:
    """Attempt 1 executed at Stripe, its answer lost; a day passes and the key is pruned."""
    world.stripe.lose_next_answer = True
    assert world.shared.release_payment(release_request(SERVICE)).in_flight
    world.clock.advance(DAY_AND_A_BIT)


# -- checks --------------------------------------------------------------------------


def check_answers(world: World, outcomes: dict[str, Any]) -> None:
    """No unexpected errors; every returned answer agrees with the ledger and Stripe."""
    payout = world.shared.find_payout(SERVICE)
    at_stripe = [t.id for t in world.stripe.transfers]
    for name, outcome in outcomes.items():
        assert outcome.error is None, f"{name} failed: {outcome.error!r}"
        results = outcome.result if isinstance(outcome.result, list) else [outcome.result]
        for result in results:
            if not isinstance(result, ReleaseResult):
                continue
            if result.success:
                assert payout is not None and payout.is_paid
                assert result.transfer_id == payout.transfer_id and at_stripe == [
                    result.transfer_id
                ]
            elif result.outcome is ReleaseOutcome.FAILED:
                raise AssertionError(f"{name}: nothing refuses here, got {result}")


def settle_and_check(world: World) -> None:
    """Resume (past the key window if need be), release again as the host would: paid once."""
    ledger = world.shared
    for _ in range(2):
        ledger.resume_in_flight()
        if not ledger.in_flight():
            break
        world.clock.advance(DAY_AND_A_BIT)
    assert ledger.in_flight() == []
    assert ledger.release_payment(release_request(SERVICE)).success
    states = check_agreement(ledger, world.stripe.audit_transfers(), [SERVICE])
    assert states[SERVICE] == "paid", states
    assert len(world.stripe.transfers) == 1
    history = ledger.history(SERVICE)
    assert state_of(replay(history)) == state_of(ledger.get_payout(SERVICE))
    assert ledger.get_payout(SERVICE).status is PayoutStatus.RELEASED
    assert check_history(history, SERVICE) == "paid"


def signature(world: World, outcomes: dict[str, Any]) -> tuple[object, ...]:
    """Everything a run's observers could tell apart: answers, the log, Stripe's side."""

    def summary(value: Any) -> object:
        if isinstance(value, list):
            return tuple(summary(v) for v in value)
        if isinstance(value, ReleaseResult):
            return (value.outcome.value, value.attempt, value.transfer_id, value.detail)
        return repr(value)

    answers = tuple(
        sorted(
            (name, summary(o.result), o.crashed_at, repr(o.error)) for name, o in outcomes.items()
        )
    )
    log = tuple(
        (type(e).__name__, getattr(e, "attempt", None), getattr(e, "transfer_id", None))
        for e in world.shared.history(SERVICE)
    )
    stripe_side = (
        tuple(sorted(Counter(world.stripe.sent).items())),
        tuple(sorted((t.id, t.metadata.get("attempt")) for t in world.stripe.transfers)),
    )
    return answers, log, stripe_side


@dataclass(frozen=True)
class Scenario:
    name: str
    actors: tuple[tuple[str, Actor], ...]
    setup: Callable[[World], None] = nothing
    releases_only: bool = False


def run_scenario(
    scenario: Scenario,
    *,
    crash_budget: int,
    store: str = "memory",
    ledger_class: type[PayoutLedger] = PayoutLedger,
    stop_after_violations: int = 1,
    reduce: bool = True,
    signatures: set[tuple[object, ...]] | None = None,
    errors: dict[str, float] | None = None,
) -> Exploration:
    def run_once(scheduler: Scheduler) -> None:
        world = World(scheduler, store, ledger_class, dict(errors or {}))
        try:
            scenario.setup(world)
            for name, actor in scenario.actors:
                scheduler.spawn(name, actor(world))
            outcomes = scheduler.run()
            if signatures is not None:
                signatures.add(signature(world, outcomes))
            check_agreement(world.shared, world.stripe.audit_transfers(), [SERVICE])
            if scenario.releases_only:
                sent_twice = [k for k, n in Counter(world.stripe.sent).items() if n > 1]
                assert not sent_twice, f"a key reached Stripe twice: {sent_twice}"
            check_answers(world, outcomes)
            settle_and_check(world)
        finally:
            world.close()

    return explore(
        run_once,
        crash_budget=crash_budget,
        reduce=reduce,
        stop_after_violations=stop_after_violations,
    )


def record(
    scenario: Scenario,
    crashes: int,
    found: Exploration,
    *,
    store: str = "memory",
    reduce: bool = True,
    clocks: str = "one clock",
) -> None:
    FIGURES.row(
        SECTION,
        {
            "scenario": scenario.name,
            "clocks": clocks,
            "actors": len(scenario.actors),
            "crash_budget": crashes,
            "store": store,
            "reduction": "sleep sets" if reduce else "none",
            "runs": found.runs,
            "redundant_runs": found.redundant_runs,
            "runs_with_crash": found.runs_with_crash,
            "max_steps": found.max_depth,
            "exhaustive": found.exhaustive,
            "violations": len(found.violations),
        },
    )
    FIGURES.add(SECTION, "explored runs", found.runs)
    FIGURES.add(SECTION, "explored runs with a crash", found.runs_with_crash)
    FIGURES.add(SECTION, "redundant runs (cut by sleep sets)", found.redundant_runs)
    FIGURES.add(SECTION, "steps scheduled", found.steps)
    FIGURES.add(SECTION, "crashes injected", found.runs_with_crash)


def assert_exhaustive_and_clean(found: Exploration) -> None:
    if found.violations:
        first = found.violations[0]
        schedule = "\n  ".join(first.schedule)
        raise AssertionError(f"{first.error}\nschedule:\n  {schedule}") from first.error
    assert found.exhaustive and found.runs > 1


TWO_RELEASES = Scenario(
    "two releases", (("release_1", releaser), ("release_2", releaser)), releases_only=True
)
THREE_RELEASES = Scenario(
    "three releases",
    (("release_1", releaser), ("release_2", releaser), ("release_3", releaser)),
    releases_only=True,
)
RELEASE_AND_RESUME = Scenario("release + resume", (("release", releaser), ("resume", resumer)))
RELEASE_AND_WEBHOOK = Scenario("release + webhook", (("release", releaser), ("webhook", webhook)))
LOST_ANSWER_AND_UNLIKE_CLAIM = Scenario(
    "answer lost + transfer events unlike the claim",
    (("resume", resumer), ("webhook", unlike_claim)),
    setup=in_flight_answer_lost_then_24h,
)
RESUMERS_NEVER_SENT = Scenario(
    "two resumers past the key window (request never sent)",
    (("resume_1", resumer), ("resume_2", resumer)),
    setup=in_flight_never_sent_then_24h,
)
RESUMERS_ANSWER_LOST = Scenario(
    "two resumers past the key window (Stripe executed, answer lost)",
    (("resume_1", resumer), ("resume_2", resumer)),
    setup=in_flight_answer_lost_then_24h,
)
TWO_RELEASES_AND_RESUME = Scenario(
    "two releases + resume",
    (("release_1", releaser), ("release_2", releaser), ("resume", resumer)),
)
RELEASE_RESUME_WEBHOOK = Scenario(
    "release + resume + webhook",
    (("release", releaser), ("resume", resumer), ("webhook", webhook)),
)
RESUMERS_AND_RELEASE_PAST_WINDOW = Scenario(
    "two resumers + release past the key window",
    (("resume_1", resumer), ("resume_2", resumer), ("release", releaser)),
    setup=in_flight_answer_lost_then_24h,
)

DEFAULT_CASES = [
    (TWO_RELEASES, 0),
    (TWO_RELEASES, 1),
    (RELEASE_AND_RESUME, 0),
    (RELEASE_AND_RESUME, 1),
    (RESUMERS_NEVER_SENT, 0),
    (RESUMERS_NEVER_SENT, 1),
    (RESUMERS_ANSWER_LOST, 0),
    (RESUMERS_ANSWER_LOST, 1),
    (RELEASE_AND_WEBHOOK, 0),
    (RELEASE_AND_WEBHOOK, 1),
    (LOST_ANSWER_AND_UNLIKE_CLAIM, 0),
    (TWO_RELEASES_AND_RESUME, 0),
    (RELEASE_RESUME_WEBHOOK, 0),
    (RESUMERS_AND_RELEASE_PAST_WINDOW, 0),
]
LONG_CASES = [
    (TWO_RELEASES_AND_RESUME, 1),
    (RELEASE_RESUME_WEBHOOK, 1),
    (RESUMERS_AND_RELEASE_PAST_WINDOW, 1),
]


def _id(case: tuple[Scenario, int]) -> str:
    scenario, crashes = case
    words = scenario.name.replace("(", "").replace(")", "").replace(",", "").replace("+", "and")
    return f"{'_'.join(words.split())}-crash{crashes}"


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=[_id(c) for c in DEFAULT_CASES])
def test_every_interleaving_of_a_small_scenario_pays_once(case: tuple[Scenario, int]) -> None:
    """Every order of the actors' I/O steps, with up to one crash, pays the service once."""
    scenario, crashes = case
    found = run_scenario(scenario, crash_budget=crashes)
    record(scenario, crashes, found)
    assert_exhaustive_and_clean(found)


def test_every_interleaving_of_three_releases_pays_once() -> None:
    """Three releases of one service at once, every order: one claim, one key sent, one transfer."""
    crashes = SIZES.explore_three_releases_crashes
    found = run_scenario(THREE_RELEASES, crash_budget=crashes)
    record(THREE_RELEASES, crashes, found)
    assert_exhaustive_and_clean(found)


@pytest.mark.parametrize(
    "case", [(TWO_RELEASES, 1), (RELEASE_AND_RESUME, 0), (RELEASE_AND_WEBHOOK, 0)], ids=_id
)
def test_the_reduction_reaches_every_outcome_that_full_enumeration_reaches(
    case: tuple[Scenario, int],
) -> None:
    """Sleep sets skip only equivalent orders: reduced and full runs reach the same outcomes."""
    scenario, crashes = case
    full: set[tuple[object, ...]] = set()
    reduced: set[tuple[object, ...]] = set()
    everything = run_scenario(scenario, crash_budget=crashes, reduce=False, signatures=full)
    record(scenario, crashes, everything, reduce=False)
    assert_exhaustive_and_clean(everything)
    assert_exhaustive_and_clean(run_scenario(scenario, crash_budget=crashes, signatures=reduced))
    assert reduced == full
    assert len(full) > 1


@pytest.mark.parametrize("case", [(TWO_RELEASES, 0), (RELEASE_AND_RESUME, 1)], ids=_id)
def test_interleavings_on_sqlite_with_a_ledger_per_actor_pay_once(
    case: tuple[Scenario, int],
) -> None:
    """The same exploration with each actor a separate ledger on one SQLite file."""
    scenario, crashes = case
    found = run_scenario(scenario, crash_budget=crashes, store="sqlite")
    record(scenario, crashes, found, store="sqlite")
    assert_exhaustive_and_clean(found)


@pytest.mark.reliability_long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("case", LONG_CASES, ids=[_id(c) for c in LONG_CASES])
def test_every_interleaving_of_a_larger_scenario_pays_once(case: tuple[Scenario, int]) -> None:
    """Three actors mixing releases, resumes and webhooks, every order (long run only)."""
    scenario, crashes = case
    found = run_scenario(scenario, crash_budget=crashes)
    record(scenario, crashes, found)
    assert_exhaustive_and_clean(found)


HOUR = 3600
CLOCK_ERRORS = {
    "claimant+2h": {"setup": 2 * HOUR, "release": 2 * HOUR},
    "claimant+12h, resumers-12h": {
        "setup": 12 * HOUR,
        "release": 12 * HOUR,
        "resume": -12 * HOUR,
        "resume_1": -12 * HOUR,
        "resume_2": 3 * HOUR,
    },
    "claimant-12h, resumers+12h": {
        "setup": -12 * HOUR,
        "release": -12 * HOUR,
        "resume": 12 * HOUR,
        "resume_1": 12 * HOUR,
        "resume_2": -3 * HOUR,
    },
    "claimant+3h, resumers-3h": {
        "setup": 3 * HOUR,
        "release": 3 * HOUR,
        "resume": -3 * HOUR,
        "resume_1": -3 * HOUR,
        "resume_2": 3 * HOUR,
    },
}
SKEWED_CASES = [
    (scenario, crashes, errors)
    for scenario, crashes in [
        (RELEASE_AND_RESUME, 1),
        (RESUMERS_ANSWER_LOST, 0),
        (RESUMERS_NEVER_SENT, 0),
    ]
    for errors in CLOCK_ERRORS
]


@pytest.mark.parametrize(
    "case",
    SKEWED_CASES,
    ids=[f"{_id((scenario, crashes))}-{errors}" for scenario, crashes, errors in SKEWED_CASES],
)
def test_every_interleaving_with_hosts_clocks_hours_apart_pays_once(
    case: tuple[Scenario, int, str],
) -> None:
    """Each actor's wall clock off by its own error (up to 12 h): every order pays once."""
    scenario, crashes, errors = case
    found = run_scenario(scenario, crash_budget=crashes, errors=CLOCK_ERRORS[errors])
    record(scenario, crashes, found, clocks=errors)
    assert_exhaustive_and_clean(found)


# -- positive controls: the explorer finds what is there ------------------------------


class ClaimIgnoresConflicts(PayoutLedger):
    """A broken ledger: when its claim loses the race it carries on as if it had won."""

    name = "PayoutLedger"

    def _claim(self, payout: Any, req: Any, provider: Any) -> Any:
        claim = super()._claim(payout, req, provider)
        if isinstance(claim, _LostClaim) and claim.stored is not None:
            # the payout someone else claimed, taken as our own
            return _Claimed(claim.stored, self._open_window())
        return claim


def test_the_explorer_catches_a_claim_that_ignores_conflicts() -> None:
    """Positive control: a ledger that calls Stripe after losing its claim is found out."""
    found = run_scenario(TWO_RELEASES, crash_budget=0, ledger_class=ClaimIgnoresConflicts)
    FIGURES.add(SECTION, "positive control: broken claim, runs until caught", found.runs)
    assert found.violations, "the explorer missed a claim that ignores the store's conflict"
    assert "reached Stripe twice" in str(found.violations[0].error)


def test_a_claimant_stalled_past_the_key_window_pays_once_unless_stripe_holds_its_request() -> None:
    """Documented limit: only Stripe executing one request for 24 hours pays twice.

    A release claims, then 24 hours pass (at a moment the scheduler picks) and an
    operator resumes. Whenever the jump comes before the claimant's request left
    it, its send window has closed and nothing more is sent: one transfer. The
    explorer finds double transfers only in schedules where Stripe received the
    claimant's request before the jump and executed it after: a request held at
    Stripe for a day, outside the documented assumption (docs/concepts.md).
    """
    stalled = Scenario("stalled claimant", (("release", releaser), ("operator", stalled_operator)))
    found = run_scenario(stalled, crash_budget=0, stop_after_violations=10**6)
    record(stalled, 0, found)
    FIGURES.note(SECTION, "documented limit: runs", found.runs)
    FIGURES.note(SECTION, "documented limit: runs with two transfers", len(found.violations))
    assert found.exhaustive and found.runs > 1
    for violation in found.violations:
        assert "2 transfers at Stripe" in str(violation.error)
        order = [step.split(" ", 1) for step in violation.schedule]
        sent = order.index(["release", "stripe.send"])
        jump = order.index(["operator", "clock.jump_24h"])
        committed = order.index(["release", "stripe.commit"])
        assert sent < jump < committed, violation.schedule


def resume_then_a_day(world: World) -> Callable[[], Any]:
    """An operator resumes 2 hours after the claim, then a day passes."""
    ledger = world.ledger()

    def run() -> list[ReleaseResult]:
        if world.scheduler.point("clock.jump_2h"):
            raise SimulatedCrash("before clock.jump_2h")
        world.clock.advance(2 * 3600)
        results = ledger.resume_in_flight()
        if world.scheduler.point("clock.jump_24h"):
            raise SimulatedCrash("before clock.jump_24h")
        world.clock.advance(DAY_AND_A_BIT)
        return results

    return run


class WindowNeverCloses(PayoutLedger):
    """A broken ledger: its send windows never close (no bound on a late request)."""

    name = "PayoutLedger"

    def _open_window(self) -> Any:
        window = super()._open_window()
        return type(window)(window.opened, float("inf"), window.monotonic)


SLOW_CLAIMANT = Scenario(
    "claimant slower than a resume and a day",
    (("release", releaser), ("operator", resume_then_a_day)),
)


def test_a_claimant_slower_than_a_resume_and_a_day_sends_nothing_late() -> None:
    """The resume pays with the claim's key; the claimant, a day late, sends nothing."""
    found = run_scenario(SLOW_CLAIMANT, crash_budget=0)
    record(SLOW_CLAIMANT, 0, found)
    assert_exhaustive_and_clean(found)


def test_the_explorer_catches_a_ledger_whose_send_window_never_closes() -> None:
    """Positive control: without the window, the late claimant's key was pruned: two transfers."""
    found = run_scenario(SLOW_CLAIMANT, crash_budget=0, ledger_class=WindowNeverCloses)
    FIGURES.add(SECTION, "positive control: window never closes, runs until caught", found.runs)
    assert found.violations, "the explorer missed a request sent a day after its claim"
    assert "2 transfers at Stripe" in str(found.violations[0].error)


@pytest.fixture(autouse=True)
def _note_sizes() -> None:
    FIGURES.note(SECTION, "three_releases_crash_budget", SIZES.explore_three_releases_crashes)
    FIGURES.note(SECTION, "stores", "memory (shared ledger), SQLite (ledger per actor)")


# -- reversals -------------------------------------------------------------------------
#
# The payout is paid in the set-up; the actors reverse (part of) its transfer. After
# each run: no over-reversal and no duplicate reversal at Stripe, every reversal the
# ledger recorded exists there as claimed, and the ledger never counts more reversed
# than Stripe (``check_reversals``). Settling (resume, past the key window if need be,
# then the host asking again for each reversal it wants) leaves exactly the intended
# reversals at Stripe, and the ledger's reversed total equal to Stripe's.

REVERSAL_SECTION = "interleavings_reversals"
REFUND_A, REFUND_B = ("refund_a", 1500), ("refund_b", 2000)
REFUND_B_SAME_AMOUNT = ("refund_b", 1500)


def reverser(reference: str, amount: int) -> Actor:
    def actor(world: World) -> Callable[[], Any]:
        ledger = world.ledger()
        return lambda: ledger.reverse_payment(SERVICE, amount, reference=reference)

    return actor


def reversals_in_turn(*refunds: tuple[str, int]) -> Actor:
    """A host refunding several things one after the other (each reversal asked once)."""

    def actor(world: World) -> Callable[[], Any]:
        ledger = world.ledger()
        return lambda: [ledger.reverse_payment(SERVICE, a, reference=r) for r, a in refunds]

    return actor


def reversal_resumer(world: World) -> Callable[[], Any]:
    """``resume_reversal``: refused (nothing recorded, nothing sent) while none was claimed."""
    ledger = world.ledger()

    def run() -> Any:
        try:
            return ledger.resume_reversal(SERVICE)
        except ReversalRefusedError:
            return "no reversal to resume"

    return run


def reversal_operator_after_a_day(world: World) -> Callable[[], Any]:
    """24 hours pass (at a moment the scheduler picks), then an operator resumes reversals."""
    ledger = world.ledger()

    def run() -> list[ReversalResult]:
        if world.scheduler.point("clock.jump_24h"):
            raise SimulatedCrash("before clock.jump_24h")
        world.clock.advance(DAY_AND_A_BIT)
        return ledger.resume_reversals_in_flight()

    return run


def paid(world: World) -> None:
    assert world.shared.release_payment(release_request(SERVICE)).success


def paid_and_balance_for_one(world: World) -> None:
    """Paid; the connected account then holds enough for only one of two reversals."""
    paid(world)
    world.stripe.account_balance = 2000


def reversal_answer_lost(world: World) -> None:
    """Paid; refund A's reversal executed at Stripe and its answer was lost."""
    paid(world)
    world.stripe.lose_next_answer = True
    reference, amount = REFUND_A
    assert world.shared.reverse_payment(SERVICE, amount, reference=reference).in_flight


def reversal_answer_lost_then_24h(world: World) -> None:
    """As above, then a day passes and Stripe prunes the key."""
    reversal_answer_lost(world)
    world.clock.advance(DAY_AND_A_BIT)


def reversal_never_sent_then_24h(world: World) -> None:
    """Paid; refund A's reversal was claimed, its request never reached Stripe; a day passes."""
    paid(world)
    world.stripe.refuse_next_request = True
    reference, amount = REFUND_A
    assert world.shared.reverse_payment(SERVICE, amount, reference=reference).in_flight
    world.clock.advance(DAY_AND_A_BIT)


@dataclass(frozen=True)
class ReversalScenario:
    name: str
    actors: tuple[tuple[str, Actor], ...]
    setup: Callable[[World], None]
    wanted: tuple[tuple[str, int], ...]
    """The reversals the host wants: asked again when settling, until each is done."""
    one_of: bool = False
    """The account covers only one of ``wanted``: exactly one is made, the rest refused."""


def stripe_reversals(world: World) -> list[Reversal]:
    return [
        Reversal.from_metadata(r.id, r.transfer, r.amount, r.metadata)
        for r in world.stripe.reversals
    ]


def audit_reversals(world: World) -> None:
    """No over-reversal, no duplicate, the ledger's reversals as Stripe has them."""
    amounts = {t.id: t.amount for t in world.stripe.transfers}
    try:
        check_reversals(world.shared, amounts, stripe_reversals(world), [SERVICE])
    except AuditError as exc:
        kind = "over-reversals" if "over-reversal" in str(exc) else "duplicate reversals"
        if "over-reversal" in str(exc) or "duplicate reversal" in str(exc):
            FIGURES.add(REVERSAL_SECTION, kind)
        raise


def check_reversal_answers(world: World, outcomes: dict[str, Any]) -> None:
    """No unexpected errors; a reversed answer names a reversal Stripe has, as answered."""
    by_id = {r.id: r for r in world.stripe.reversals}
    for name, outcome in outcomes.items():
        assert outcome.error is None, f"{name} failed: {outcome.error!r}"
        results = outcome.result if isinstance(outcome.result, list) else [outcome.result]
        for result in results:
            if not isinstance(result, ReversalResult):
                continue
            FIGURES.add(REVERSAL_SECTION, f"answer {result.outcome.value}")
            if result.outcome is ReversalOutcome.REVERSED:
                found = by_id.get(cast(str, result.reversal_id))
                assert found is not None, f"{name}: {result} is not at Stripe"
                assert found.metadata["reference"] == result.reference, (name, result, found)
                assert found.amount == result.amount, (name, result, found)
            elif result.outcome is ReversalOutcome.FAILED:
                assert result.error_code == "balance_insufficient", (name, result)
                FIGURES.add(REVERSAL_SECTION, "balance refusals")


def settle_reversals_and_check(world: World, scenario: ReversalScenario) -> None:
    """Resume (past the key window if need be), ask again for each wanted reversal: exactly
    the wanted reversals are at Stripe, once each, and the ledger agrees with Stripe."""
    ledger = world.shared
    for _ in range(2):
        ledger.resume_reversals_in_flight()
        if not ledger.reversals_in_flight():
            break
        world.clock.advance(DAY_AND_A_BIT)
    assert ledger.reversals_in_flight() == []
    for reference, amount in scenario.wanted:
        again = ledger.reverse_payment(SERVICE, amount, reference=reference)
        assert again.outcome in (
            ReversalOutcome.REVERSED,
            ReversalOutcome.ALREADY_REVERSED,
            ReversalOutcome.FAILED,
        ), again
        if again.outcome is ReversalOutcome.FAILED:
            assert scenario.one_of and again.error_code == "balance_insufficient", again
    audit_reversals(world)
    made = sorted(r.metadata["reference"] for r in world.stripe.reversals)
    wanted = sorted(reference for reference, _ in scenario.wanted)
    if scenario.one_of:
        assert len(made) == 1 and made[0] in wanted, made
    else:
        assert made == wanted, f"Stripe has {made}, the host wanted {wanted}"
    payout = ledger.get_payout(SERVICE)
    assert payout.amount_reversed == world.stripe.amount_reversed(cast(str, payout.transfer_id))
    assert sorted(payout.reversals) == made
    history = ledger.history(SERVICE)
    check_history(history, SERVICE)
    assert state_of(replay(history)) == state_of(payout)
    FIGURES.add(REVERSAL_SECTION, "reversals at Stripe after settling", len(made))


def run_reversal_scenario(
    scenario: ReversalScenario,
    *,
    crash_budget: int,
    errors: dict[str, float] | None = None,
    ledger_class: type[PayoutLedger] = PayoutLedger,
) -> Exploration:
    def run_once(scheduler: Scheduler) -> None:
        world = World(scheduler, "memory", ledger_class, dict(errors or {}))
        try:
            scenario.setup(world)
            for name, actor in scenario.actors:
                scheduler.spawn(name, actor(world))
            outcomes = scheduler.run()
            check_agreement(world.shared, world.stripe.audit_transfers(), [SERVICE])
            audit_reversals(world)
            check_reversal_answers(world, outcomes)
            settle_reversals_and_check(world, scenario)
        finally:
            world.close()

    return explore(run_once, crash_budget=crash_budget)


def record_reversals(
    scenario: ReversalScenario, crashes: int, found: Exploration, clocks: str = "one clock"
) -> None:
    FIGURES.row(
        REVERSAL_SECTION,
        {
            "scenario": scenario.name,
            "clocks": clocks,
            "actors": len(scenario.actors),
            "crash_budget": crashes,
            "runs": found.runs,
            "redundant_runs": found.redundant_runs,
            "runs_with_crash": found.runs_with_crash,
            "max_steps": found.max_depth,
            "exhaustive": found.exhaustive,
            "violations": len(found.violations),
        },
    )
    FIGURES.add(REVERSAL_SECTION, "explored runs", found.runs)
    FIGURES.add(REVERSAL_SECTION, "explored runs with a crash", found.runs_with_crash)
    FIGURES.add(REVERSAL_SECTION, "steps scheduled", found.steps)
    FIGURES.add(REVERSAL_SECTION, "over-reversals", 0)
    FIGURES.add(REVERSAL_SECTION, "duplicate reversals", 0)


SAME_REFERENCE = ReversalScenario(
    "two reversals of the same reference",
    (("reverse_1", reverser(*REFUND_A)), ("reverse_2", reverser(*REFUND_A))),
    paid,
    (REFUND_A,),
)
TWO_REFERENCES = ReversalScenario(
    "two reversals of different references",
    (("reverse_a", reverser(*REFUND_A)), ("reverse_b", reverser(*REFUND_B))),
    paid,
    (REFUND_A, REFUND_B),
)
BALANCE_FOR_ONE = ReversalScenario(
    "two references, the account covers one",
    (("reverse_a", reverser(*REFUND_A)), ("reverse_b", reverser(*REFUND_B_SAME_AMOUNT))),
    paid_and_balance_for_one,
    (REFUND_A, REFUND_B_SAME_AMOUNT),
    one_of=True,
)
REVERSAL_AND_RESUME = ReversalScenario(
    "reversal + resume_reversal",
    (("reverse", reverser(*REFUND_A)), ("resume", reversal_resumer)),
    paid,
    (REFUND_A,),
)
LOST_REVERSAL_RESUMERS = ReversalScenario(
    "reversal answer lost, two resumers",
    (("resume_1", reversal_resumer), ("resume_2", reversal_resumer)),
    reversal_answer_lost,
    (REFUND_A,),
)
LOST_REVERSAL_RESUMERS_PAST_WINDOW = ReversalScenario(
    "reversal answer lost, two resumers past the key window",
    (("resume_1", reversal_resumer), ("resume_2", reversal_resumer)),
    reversal_answer_lost_then_24h,
    (REFUND_A,),
)
NEVER_SENT_REVERSAL_RESUMERS_PAST_WINDOW = ReversalScenario(
    "reversal never sent, two resumers past the key window",
    (("resume_1", reversal_resumer), ("resume_2", reversal_resumer)),
    reversal_never_sent_then_24h,
    (REFUND_A,),
)
LOST_REVERSAL_RETRIED_AND_RESUMED = ReversalScenario(
    "reversal answer lost, its retry + the next refund + resume_reversal",
    (
        ("host", reversals_in_turn(REFUND_A, REFUND_B_SAME_AMOUNT)),
        ("resume", reversal_resumer),
    ),
    reversal_answer_lost,
    (REFUND_A, REFUND_B_SAME_AMOUNT),
)
LOST_REVERSAL_AND_A_DAY = ReversalScenario(
    "reversal answer lost, a resumer + an operator a day later",
    (("resume", reversal_resumer), ("operator", reversal_operator_after_a_day)),
    reversal_answer_lost,
    (REFUND_A,),
)

REVERSAL_CASES = [
    (SAME_REFERENCE, 0),
    (SAME_REFERENCE, 1),
    (TWO_REFERENCES, 0),
    (TWO_REFERENCES, 1),
    (BALANCE_FOR_ONE, 0),
    (BALANCE_FOR_ONE, 1),
    (REVERSAL_AND_RESUME, 0),
    (REVERSAL_AND_RESUME, 1),
    (LOST_REVERSAL_RESUMERS, 0),
    (LOST_REVERSAL_RESUMERS, 1),
    (LOST_REVERSAL_RESUMERS_PAST_WINDOW, 0),
    (LOST_REVERSAL_RESUMERS_PAST_WINDOW, 1),
    (NEVER_SENT_REVERSAL_RESUMERS_PAST_WINDOW, 0),
    (NEVER_SENT_REVERSAL_RESUMERS_PAST_WINDOW, 1),
    (LOST_REVERSAL_AND_A_DAY, 0),
]
LONG_REVERSAL_CASES = [
    (LOST_REVERSAL_AND_A_DAY, 1),
]


def _reversal_id(case: tuple[ReversalScenario, int]) -> str:
    scenario, crashes = case
    words = scenario.name.replace(",", "").replace("+", "and").replace("_", " ")
    return f"{'_'.join(words.split())}-crash{crashes}"


@pytest.mark.parametrize("case", REVERSAL_CASES, ids=[_reversal_id(c) for c in REVERSAL_CASES])
def test_every_interleaving_of_reversals_reverses_once(
    case: tuple[ReversalScenario, int],
) -> None:
    """Every order of reversals and resumes, with up to one crash: never more than the
    transfer, never a reference twice, exactly the wanted reversals once settled."""
    scenario, crashes = case
    found = run_reversal_scenario(scenario, crash_budget=crashes)
    record_reversals(scenario, crashes, found)
    assert_exhaustive_and_clean(found)


@pytest.mark.reliability_long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    "case", LONG_REVERSAL_CASES, ids=[_reversal_id(c) for c in LONG_REVERSAL_CASES]
)
def test_every_interleaving_of_a_larger_reversal_scenario_reverses_once(
    case: tuple[ReversalScenario, int],
) -> None:
    """The reversal scenarios with more steps, with a crash (long run only)."""
    scenario, crashes = case
    found = run_reversal_scenario(scenario, crash_budget=crashes)
    record_reversals(scenario, crashes, found)
    assert_exhaustive_and_clean(found)


SKEWED_REVERSAL_CASES = [
    (LOST_REVERSAL_RESUMERS_PAST_WINDOW, 0, "claimant+12h, resumers-12h"),
    (LOST_REVERSAL_RESUMERS, 0, "claimant-12h, resumers+12h"),
    (REVERSAL_AND_RESUME, 1, "claimant+3h, resumers-3h"),
]


@pytest.mark.parametrize(
    "case",
    SKEWED_REVERSAL_CASES,
    ids=[f"{_reversal_id((s, c))}-{errors}" for s, c, errors in SKEWED_REVERSAL_CASES],
)
def test_every_interleaving_of_reversals_with_hosts_clocks_hours_apart_reverses_once(
    case: tuple[ReversalScenario, int, str],
) -> None:
    """Each actor's wall clock off by its own error: every order still reverses once."""
    scenario, crashes, errors = case
    clocks = {**CLOCK_ERRORS[errors], "reverse": CLOCK_ERRORS[errors]["release"]}
    found = run_reversal_scenario(scenario, crash_budget=crashes, errors=clocks)
    record_reversals(scenario, crashes, found, clocks=errors)
    assert_exhaustive_and_clean(found)


# -- found by these tests: a resume that outlives its reversal attempt -------------------
# resume_reversal once looked up attempt N's reversal and then recorded it for attempt
# N+1 when that was claimed meanwhile; it now decides only for the attempt it looked up.


def test_every_interleaving_of_a_lost_reversal_its_retry_the_next_refund_and_a_resume() -> None:
    """The host retries refund A (answer lost) then asks for refund B of the same amount,
    while a resume runs: the resume must not record A's reversal as B's."""
    found = run_reversal_scenario(LOST_REVERSAL_RETRIED_AND_RESUMED, crash_budget=0)
    record_reversals(LOST_REVERSAL_RETRIED_AND_RESUMED, 0, found)
    assert_exhaustive_and_clean(found)


def test_a_resume_that_outlives_its_attempt_never_counts_a_reversal_stripe_lacks() -> None:
    """One schedule, step by step: the resume lists attempt 1's reversal; meanwhile the
    host settles attempt 1 and claims attempt 2 (refund B, same amount), whose request
    never reaches Stripe; the resume then records attempt 1's reversal as refund B's.
    The ledger counts 3000 reversed where Stripe has 1500: money it never recovered."""
    world = World(Scheduler(), "memory")
    try:
        reversal_answer_lost(world)
        host, resumer = world.ledger(), world.ledger()
        listing = world.stripe.list_reversals

        def list_while_the_host_moves_on(transfer_id: str) -> list[Any]:
            world.stripe.list_reversals = listing  # type: ignore[method-assign]
            found = listing(transfer_id)
            reference, amount = REFUND_A
            assert host.reverse_payment(SERVICE, amount, reference=reference).success
            world.stripe.refuse_next_request = True
            reference, amount = REFUND_B_SAME_AMOUNT
            assert host.reverse_payment(SERVICE, amount, reference=reference).in_flight
            return found

        world.stripe.list_reversals = list_while_the_host_moves_on  # type: ignore[method-assign]
        resumer.resume_reversal(SERVICE)

        audit_reversals(world)
    finally:
        world.close()
