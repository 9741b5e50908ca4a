"""The rate budget shared in the store: slots one interval apart across processes,
a back-off that holds the whole budget, and the governor's policy on a 429."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from payout_ledger import LedgerSettings, PayoutLedger
from payout_ledger.adapters.rate_budget import (
    RATE_BUDGET_TABLE,
    MemoryRateBudget,
    PostgresRateBudget,
    RateBudget,
    SQLiteRateBudget,
    open_rate_budget,
)
from payout_ledger.errors import ConfigurationError
from payout_ledger.service.governor import HORIZON_MARGIN, RateGovernor, retry_after
from payout_ledger.testing import InMemoryProviderDirectory
from tests.operations.bulk_workers import reserve_slots
from tests.support import gather_process_results

PROCESSES = 3
SLOTS = 40
INTERVAL = 0.01  # 100 tokens a second


@pytest.fixture
def store_ledger(durable_store_url: str) -> Iterator[PayoutLedger]:
    ledger = PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory([]),
    )
    yield ledger
    ledger.close()


def _budget(ledger: PayoutLedger, name: str = "stripe") -> RateBudget:
    return open_rate_budget(ledger.factory.datastore, name)


def test_processes_sharing_a_store_get_slots_one_interval_apart(durable_store_url: str) -> None:
    """Every slot any process was given is a store-clock timestamp; no two are closer
    than the interval, so no window holds more tokens than the rate allows."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCESSES)
    # The table exists before the processes race (its creation race is the store's).
    PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory([]),
    ).close()
    with ctx.Pool(PROCESSES) as pool:
        pending = [
            pool.apply_async(reserve_slots, (durable_store_url, "shared", INTERVAL, SLOTS, barrier))
            for _ in range(PROCESSES)
        ]
        per_process = gather_process_results(pending)

    slots = sorted(slot for slots in per_process for slot in slots)
    assert len(slots) == PROCESSES * SLOTS
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= INTERVAL * 0.999
    # Over any window, at most rate x window tokens (and one for the window's edge).
    window = 0.1
    for i, start in enumerate(slots):
        inside = sum(1 for s in slots[i:] if s < start + window)
        assert inside <= window / INTERVAL + 1
    # The processes interleaved: each took slots among the others'.
    owners = sorted((s, n) for n, taken in enumerate(per_process) for s in taken)
    assert len({n for _, n in owners[: SLOTS + 1]}) > 1


def test_a_block_holds_back_every_taker_of_the_budget(store_ledger: PayoutLedger) -> None:
    """A 429 seen by one process blocks another's next slot (same store, another object)."""
    first, second = _budget(store_ledger), _budget(store_ledger)
    assert isinstance(first, SQLiteRateBudget | PostgresRateBudget)
    assert first.reserve(0.001).wait < 1.0
    assert first.block(3.0) == pytest.approx(3.0, abs=0.5)
    assert second.reserve(0.001).wait == pytest.approx(3.0, abs=0.5)
    # A shorter block does not shorten it; and other budgets are not held back.
    assert second.block(0.5) > 2.0
    assert _budget(store_ledger, "other").reserve(0.001).wait < 1.0


def test_the_budget_table_is_in_the_ledgers_store(store_ledger: PayoutLedger) -> None:
    budget = _budget(store_ledger)
    budget.reserve(0.5)
    budget.reserve(0.5)
    # A new budget object on the same store continues the schedule: it is not in memory.
    again = _budget(store_ledger).reserve(0.5)
    assert again.wait == pytest.approx(1.0, abs=0.3)


def test_a_memory_ledger_gets_an_in_process_budget() -> None:
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://", stripe_enabled=False),
        providers=InMemoryProviderDirectory([]),
    ) as ledger:
        budget = open_rate_budget(getattr(ledger.factory, "datastore", None), "stripe")
    assert isinstance(budget, MemoryRateBudget)
    assert budget.reserve(1.0).wait == 0
    assert budget.reserve(1.0).wait == pytest.approx(1.0, abs=0.1)
    budget.block(5.0)
    assert budget.reserve(1.0).wait == pytest.approx(5.0, abs=0.1)


class _Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def _governor(retries: int = 2, backoff_max: float = 30.0) -> tuple[RateGovernor, _Sleeps]:
    sleeps = _Sleeps()
    governor = RateGovernor(
        MemoryRateBudget("t"), rate=10, backoff_max=backoff_max, retries=retries, sleep=sleeps
    )
    return governor, sleeps


def _answers(*responses: tuple[int, dict[str, str]]) -> tuple[list[int], object]:
    sent: list[int] = []
    queue = list(responses)

    def send() -> tuple[bytes, int, dict[str, str]]:
        status, headers = queue.pop(0)
        sent.append(status)
        return b"{}", status, headers

    return sent, send


def test_the_governor_waits_its_turn_before_each_request() -> None:
    governor, sleeps = _governor()
    for _ in range(3):
        governor.send(lambda: (b"{}", 200, {}))
    assert governor.stats.tokens == 3
    # The first token is free; each next one is a tenth of a second later.
    assert sleeps.slept == [pytest.approx(0.1, abs=0.02), pytest.approx(0.2, abs=0.03)]


def test_a_429_with_retry_after_blocks_the_budget_that_long_and_is_sent_again() -> None:
    governor, sleeps = _governor()
    sent, send = _answers((429, {"Retry-After": "7"}), (200, {}))
    governor.send(send)  # type: ignore[arg-type]
    assert sent == [429, 200]
    assert governor.stats.backoff_seconds == 7
    assert sleeps.slept[-1] == pytest.approx(7.0, abs=0.1)
    assert governor.stats.snapshot()["retried"] == 1


def test_retry_after_is_capped_and_without_it_the_backoff_is_exponential_with_jitter() -> None:
    governor, _ = _governor(backoff_max=4.0)
    assert governor.backoff({"Retry-After": "3600"}, 0) == 4.0
    firsts = [governor.backoff({}, 0) for _ in range(50)]
    thirds = [governor.backoff({}, 2) for _ in range(50)]
    assert all(0.5 <= d <= 0.5 for d in firsts)  # never below the first step
    assert all(1.0 <= d <= 2.0 for d in thirds)  # 0.5 x 2^2, jittered down to half
    assert len(set(thirds)) > 1
    assert all(d <= 4.0 for d in (governor.backoff({}, n) for n in range(10)))


def test_retry_after_as_a_date_is_measured_against_the_responses_date() -> None:
    sent = datetime(2030, 1, 1, tzinfo=UTC)
    headers = {
        "Date": format_datetime(sent, usegmt=True),
        "Retry-After": format_datetime(sent + timedelta(seconds=12), usegmt=True),
    }
    assert retry_after(headers) == 12
    assert retry_after({"Retry-After": format_datetime(sent, usegmt=True)}) is None  # no Date
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({"Retry-After": "-3"}) is None
    assert retry_after({"retry-after": "2"}) == 2


def test_should_retry_false_is_not_sent_again() -> None:
    governor, _ = _governor()
    sent, send = _answers((429, {"Stripe-Should-Retry": "false"}), (200, {}))
    status = governor.send(send)[1]  # type: ignore[arg-type]
    assert (sent, status) == ([429], 429)
    assert governor.stats.snapshot()["not_retried"] == 1
    assert governor.stats.rate_limited == 1


def test_a_429_still_standing_after_the_retries_is_returned() -> None:
    governor, _ = _governor(retries=2)
    sent, send = _answers(*[(429, {"Retry-After": "0"})] * 5)
    assert governor.send(send)[1] == 429  # type: ignore[arg-type]
    assert sent == [429, 429, 429]


def test_a_rate_is_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateGovernor(MemoryRateBudget("t"), rate=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bulk_rate_share", 0),
        ("bulk_rate_share", 1.5),
        ("bulk_rate_limit", 0),
        ("bulk_rate_budget", "Not A Name"),
        ("bulk_backoff_max", 0.1),
    ],
)
def test_bulk_settings_are_checked(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        LedgerSettings(**{field: value})  # type: ignore[arg-type]


def test_a_lock_timeout_holds_back_only_its_request_not_the_budget() -> None:
    governor, sleeps = _governor()
    body = b'{"error": {"code": "lock_timeout", "type": "invalid_request_error"}}'
    answers = [(body, 429, {"Stripe-Should-Retry": "true", "Retry-After": "4"}), (b"{}", 200, {})]
    assert governor.send(lambda: answers.pop(0))[1] == 200
    assert 4.0 in sleeps.slept  # this request waited
    # The budget was not blocked: the next slot is the next interval, not 4 s away.
    assert governor.budget.reserve(0.1).wait < 1.0


def test_a_schedule_far_ahead_of_the_databases_clock_stalls_takers_no_longer_than_its_horizon(
    store_ledger: PayoutLedger,
) -> None:
    """A database clock stepped back an hour (or a row edited by someone with a database
    login) leaves ``tat`` and ``blocked_until`` far in the future: a taker waits at
    most the horizon, not until then, and the schedule is pulled back with it."""
    budget = _budget(store_ledger, "stepped")
    budget.reserve(INTERVAL, 5.0)
    datastore = store_ledger.factory.datastore
    schema = getattr(datastore, "schema", None)
    table = f'"{schema}".{RATE_BUDGET_TABLE}' if schema else RATE_BUDGET_TABLE
    with datastore.transaction(commit=True) as curs:
        curs.execute(
            f"UPDATE {table} SET tat = tat + 86400, "
            "blocked_until = tat + 86400 WHERE name = 'stepped'"
        )
    waits = [budget.reserve(INTERVAL, 5.0).wait for _ in range(3)]
    assert waits[0] <= 5.0 + INTERVAL
    assert waits[2] == pytest.approx(waits[0] + 2 * INTERVAL, abs=0.05)


def test_the_governor_waits_at_most_its_backoff_and_a_margin() -> None:
    budget = MemoryRateBudget("far")
    budget.block(86400)
    sleeps = _Sleeps()
    governor = RateGovernor(budget, rate=10, backoff_max=2.0, sleep=sleeps)
    governor.take()
    assert sleeps.slept == [pytest.approx(2.0 + HORIZON_MARGIN, abs=0.05)]
