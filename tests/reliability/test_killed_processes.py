"""Real processes on real PostgreSQL, killed with SIGKILL at random moments, then audited.

P worker processes (``kill_worker.py``) each release S services R times over
HTTP to one fake Stripe, while the test kills random workers with SIGKILL at
random moments (a seeded RNG; the seed is published with the figures),
restarts each one killed, and injects Stripe faults (dropped connections
before and after commit, 429s, stored 5xx). Every transfer request is held
20 ms at the fake, so kills often land while one is in flight. Afterwards a
fresh ledger resumes what was left in flight (past the key window if a stored
5xx needs it) and the audit requires:

* exactly S transfers at the fake Stripe, one per service;
* every payout released with exactly that transfer (``check_agreement``);
* ``reconcile`` clean;
* no lost or partial events: each log is whole and well formed, and the store
  holds exactly the events of the payouts' histories, no more, no fewer.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from payout_ledger.service.reconcile import reconcile
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.reliability.config import SIZES, seed
from tests.reliability.figures import FIGURES
from tests.reliability.system import (
    LedgerClock,
    build_ledger,
    check_agreement,
    check_replay_equals_live,
    fake_transfers,
    stripe_gateway,
)

REPO = Path(__file__).resolve().parents[2]
SECTION = "killed_processes"
FAULTS: dict[str, Callable[[], faults.Fault]] = {
    "timeout_before_commit": faults.drop_before_commit,
    "timeout_after_commit": faults.drop_after_commit,
    "rate_limited_429": faults.rate_limited,
    "server_error_5xx": faults.server_error,
}
TWO_DAYS = 2 * 24 * 3600


class Workers:
    """P worker slots; a killed worker is restarted in its slot with a new generation."""

    def __init__(self, fake: FakeStripe, account: str, store_url: str, folder: Path) -> None:
        self.fake = fake
        self.account = account
        self.store_url = store_url
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.generation: list[int] = []
        self.started = 0

    def spawn(self, slot: int, services: list[str], rounds: int, run_seed: int) -> None:
        generation = self.generation[slot] + 1 if slot < len(self.generation) else 0
        config = {
            "store_url": self.store_url,
            "api_base": self.fake.url,
            "api_key": self.fake.api_key,
            "account": self.account,
            "services": services,
            "rounds": rounds,
            "seed": run_seed * 1000 + slot * 100 + generation,
            "resume_every": 7,
            "log": str(self.folder / f"worker-{slot}-{generation}.jsonl"),
        }
        stderr = (self.folder / f"worker-{slot}-{generation}.err").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.kill_worker", json.dumps(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        if slot < len(self.procs):
            self.procs[slot], self.generation[slot] = proc, generation
        else:
            self.procs.append(proc)
            self.generation.append(generation)
        self.started += 1

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def check_exits(self) -> None:
        """A worker that was not killed must have finished cleanly."""
        for slot, proc in enumerate(self.procs):
            code = proc.wait(timeout=120)
            err = self.folder / f"worker-{slot}-{self.generation[slot]}.err"
            assert code == 0, f"worker {slot} exited {code}:\n{err.read_text()[-3000:]}"

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for path in sorted(self.folder.glob("worker-*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # torn by SIGKILL mid-write
                    lines.append(json.loads(line))
        return lines

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stored_event_count(ledger: Any) -> int:
    """Rows in the store, read page by page (PostgreSQL ids may have gaps)."""
    total, start = 0, 1
    while True:
        page = ledger.recorder.select_notifications(start, 500)
        if not page:
            return total
        total += len(page)
        start = page[-1].id + 1


def run_with_kills(
    store: str, store_url: str, fake: FakeStripe, account: str, folder: Path
) -> dict[str, Any]:
    run_seed = seed() + (0 if store == "postgres" else 1)
    rng = random.Random(run_seed)
    services = [f"es_kill_{i:03d}" for i in range(SIZES.kill_services)]
    fake.inject(faults.latency(0.02), times=None)
    workers = Workers(fake, account, store_url, folder)
    kills = 0
    injected: list[tuple[str, Any]] = []
    try:
        for slot in range(SIZES.kill_processes):
            workers.spawn(slot, services, SIZES.kill_rounds, run_seed)
        while workers.alive():
            time.sleep(rng.uniform(0.05, 0.4))
            if rng.random() < 0.5:
                kind = rng.choice(sorted(FAULTS))
                injected.append((kind, fake.inject(FAULTS[kind](), times=1)))
            alive = workers.alive()
            if kills >= SIZES.kill_budget or not alive:
                continue
            slot = rng.choice(alive)
            workers.procs[slot].send_signal(signal.SIGKILL)
            if workers.procs[slot].wait(timeout=30) == -signal.SIGKILL:
                kills += 1
                workers.spawn(slot, services, SIZES.kill_rounds, run_seed)
        workers.check_exits()
    finally:
        workers.kill_all()

    fake.clear_faults()
    clock = LedgerClock(fake.clock)
    auditor = build_ledger(store_url, account, stripe_gateway(fake), clock=clock)
    fresh = build_ledger(store_url, account, stripe_gateway(fake), clock=clock)
    try:
        stranded = auditor.in_flight()
        auditor.resume_in_flight()
        waited_for_window = bool(auditor.in_flight())
        if waited_for_window:  # a stored 5xx replays until Stripe prunes the key
            clock.advance(TWO_DAYS)
            auditor.resume_in_flight()
        assert auditor.in_flight() == []

        transfers = fake_transfers(fake)
        states = check_agreement(auditor, transfers, services)
        assert set(states.values()) == {"paid"}, states
        assert len(transfers) == len(services)
        report = reconcile(auditor, event_service_ids=services)
        assert report.ok, report.mismatches
        histories = {s: auditor.history(s) for s in services}
        for s in services:
            check_replay_equals_live(auditor, fresh, s)
        # Every payout's history, and the store's mode (recorded once, with the
        # first money event of whichever process came first).
        events_expected = sum(len(h) for h in histories.values()) + 1
        events_stored = stored_event_count(auditor)
        assert events_stored == events_expected
    finally:
        auditor.close()
        fresh.close()

    lines = workers.log_lines()
    outcomes = Counter(line["out"] for line in lines if line.get("op") == "release")
    triggered = Counter(kind for kind, rule in injected for _ in range(rule.triggered))
    return {
        "store": store,
        "seed": run_seed,
        "processes": SIZES.kill_processes,
        "rounds": SIZES.kill_rounds,
        "services": len(services),
        "processes_started": workers.started,
        "processes_killed": kills,
        "releases_answered": sum(outcomes.values()),
        "outcomes": dict(sorted(outcomes.items())),
        "faults_injected": sum(triggered.values()),
        "faults": dict(sorted(triggered.items())),
        "payouts_left_in_flight": len(stranded),
        "settled_past_key_window": waited_for_window,
        "transfers_at_stripe": len(transfers),
        "transfers_expected": len(services),
        "max_transfers_per_service": max(Counter(t.event_service_id for t in transfers).values()),
        "stripe_transfer_posts": sum(
            1 for r in fake.requests if r.method == "POST" and r.path == "/v1/transfers"
        ),
        "stripe_replays": fake.counters.get("idempotent_replays", 0),
        "stripe_key_in_use_409": fake.counters.get("idempotency_conflicts", 0),
        "events_stored": events_stored,
        "events_expected": events_expected,
        "events_per_payout": dict(Counter(str(len(h)) for h in histories.values())),
    }


def _record(row: dict[str, Any]) -> None:
    FIGURES.row(SECTION, row)
    for name in (
        "processes_started",
        "processes_killed",
        "releases_answered",
        "faults_injected",
        "payouts_left_in_flight",
        "transfers_at_stripe",
        "transfers_expected",
        "events_stored",
        "events_expected",
    ):
        FIGURES.add(SECTION, name, row[name])


@pytest.mark.postgres
@pytest.mark.timeout(1800)
def test_killed_and_restarted_processes_on_postgres_pay_each_service_exactly_once(
    postgres_url: str, fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    """P processes x R releases over S services, random SIGKILLs: S transfers, nothing lost."""
    row = run_with_kills("postgres", postgres_url, fake, account, tmp_path)
    _record(row)
    assert row["processes_killed"] > 0


@pytest.mark.reliability_long
@pytest.mark.timeout(1800)
def test_killed_and_restarted_processes_on_sqlite_pay_each_service_exactly_once(
    sqlite_url: str, fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    """The same on one SQLite file shared by the processes (long run only)."""
    row = run_with_kills("sqlite", sqlite_url, fake, account, tmp_path)
    _record(row)
    assert row["processes_killed"] > 0
