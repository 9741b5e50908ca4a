"""Worker processes on PostgreSQL, SIGKILLed at random while payouts are left in flight.

``run_leadership`` starts ``workers`` ``payout-ledger worker`` processes on one
PostgreSQL store and the fake Stripe, while this process releases payouts of
which most end in flight (the fake drops the connection before or after the
transfer is made) and kills, at random moments, the current leader or a
follower with SIGKILL, starting each killed worker again. A thread reads
``pg_locks`` every 50 ms for the holder of the workers' advisory lock. Once
the releases stop, the workers settle what is left, are stopped with SIGTERM,
and the run's record is returned for the test to check.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.adapters.leader import advisory_key
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.operations.workers import WorkerProcess, seconds_of, worker_environment

TABLE = "payoutledger_events"
SAMPLE_EVERY = 0.05


@dataclass
class Sample:
    at: float
    holders: list[int]
    """OS pids of the workers whose sessions hold the lock (from application_name)."""


@dataclass
class Kill:
    pid: int
    sent_at: float
    was_leader: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)
    settle_seconds: float = 0.0
    anchor_files: list[Path] = field(default_factory=list)

    def replacements(self) -> list[float]:
        """Seconds from each leader kill to the first sample with another holder."""
        waits = []
        for kill in (k for k in self.kills if k.was_leader):
            after = [s for s in self.samples if s.at > kill.sent_at]
            new = next((s for s in after if s.holders and s.holders != [kill.pid]), None)
            waits.append(float("inf") if new is None else new.at - kill.sent_at)
        return waits

    def leader_changes(self) -> int:
        changes, previous = 0, None
        for sample in self.samples:
            if sample.holders and sample.holders[0] != previous:
                changes += previous is not None
                previous = sample.holders[0]
        return changes

    def believed_intervals(self) -> list[tuple[float, float, int]]:
        """(start, end, pid) of each time a worker logged that it leads; a killed
        worker's ends when its SIGKILL was sent at the latest."""
        intervals = []
        for worker in self.workers:
            start = None
            for record in worker.log():
                event = record.get("payout_ledger.worker_event")
                if event == "lead_start":
                    start = seconds_of(record)
                elif event == "lead_end" and start is not None:
                    intervals.append((start, seconds_of(record), worker.pid))
                    start = None
            if start is not None:
                end = worker.killed_at if worker.killed_at is not None else float("inf")
                kill = next((k for k in self.kills if k.pid == worker.pid), None)
                intervals.append((start, kill.sent_at if kill else end, worker.pid))
        return sorted(intervals)


def _conninfo(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    return parts._replace(query=urlencode(query)).geturl(), schema  # host=/socket/dir kept


class Sampler(threading.Thread):
    """Who holds the workers' advisory lock, every 50 ms."""

    def __init__(self, store_url: str, run: Run) -> None:
        super().__init__(name="pg-locks-sampler", daemon=True)
        self.conninfo, schema = _conninfo(store_url)
        key = advisory_key(schema, TABLE)
        self.parts = ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
        self.run_record = run
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self.stopping.is_set():
                    rows = conn.execute(
                        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                        " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                        " AND l.classid::bigint = %s AND l.objid::bigint = %s"
                        " AND l.objsubid = 1",
                        self.parts,
                    ).fetchall()
                    holders = [int(str(name).split()[-1]) for (name,) in rows]
                    self.run_record.samples.append(Sample(time.time(), holders))
                    self.stopping.wait(SAMPLE_EVERY)
        except BaseException as exc:
            self.error = exc

    def current(self) -> list[int]:
        samples = self.run_record.samples
        return samples[-1].holders if samples else []


def host_ledger(store_url: str, fake: FakeStripe, account: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url, postgres_pool_size=2),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_w", user_id="user_w", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway(
            fake.api_key, api_base=fake.url, timeout=5.0, max_network_retries=0
        ),
    )


def run_leadership(
    store_url: str,
    fake: FakeStripe,
    account: str,
    folder: Path,
    *,
    workers: int = 4,
    seconds: float = 12.0,
    lease: float = 3.0,
    seed: int = 20261130,
) -> Run:
    rng = random.Random(seed)
    record = Run()
    ledger = host_ledger(store_url, fake, account)  # creates the store before the workers
    env_of = {
        slot: worker_environment(
            store_url=store_url,
            stripe_api_key=fake.api_key,
            stripe_api_base=fake.url,
            stripe_max_network_retries="0",
            stripe_timeout="5",
            postgres_pool_size="2",
            postgres_max_overflow="2",
            worker_interval="0.3",
            worker_resume_after="1",
            worker_lease_seconds=str(lease),
            worker_reconcile_window="3600",
            worker_anchor_sink=f"file:{folder / f'anchors-{slot}.jsonl'}",
        )
        for slot in range(workers)
    }
    record.anchor_files = [folder / f"anchors-{slot}.jsonl" for slot in range(workers)]
    generation = Counter[int]()

    def spawn(slot: int) -> WorkerProcess:
        worker = WorkerProcess(folder, f"worker-{slot}-{generation[slot]}", env_of[slot])
        generation[slot] += 1
        record.workers.append(worker)
        return worker

    fake.inject(faults.latency(0.02), times=None)
    slots = [spawn(slot) for slot in range(workers)]
    sampler = Sampler(store_url, record)
    producing = threading.Event()
    producing.set()
    release_errors: list[BaseException] = []

    def produce() -> None:
        n = 0
        try:
            while producing.is_set():
                service = f"es_w_{n:04d}"
                record.services.append(service)
                roll = rng.random()
                if roll < 0.4:
                    fake.inject(faults.drop_after_commit(), path="/v1/transfers")
                elif roll < 0.7:
                    fake.inject(faults.drop_before_commit(), path="/v1/transfers")
                ledger.release_payment(
                    {
                        "event_service_id": service,
                        "provider_id": "prov_w",
                        "amount": {"amount": 1000 + n, "currency": "usd"},
                    }
                )
                n += 1
                time.sleep(0.15)
        except BaseException as exc:
            release_errors.append(exc)

    producer = threading.Thread(target=produce, name="releases", daemon=True)
    try:
        sampler.start()
        _wait_for_a_leader(sampler, slots)
        producer.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.8, 2.0))
            _wait_for_a_leader(sampler, slots)
            holders = sampler.current()
            by_pid = {w.pid: i for i, w in enumerate(slots)}
            leader = by_pid.get(holders[0]) if holders else None
            if leader is not None and rng.random() < 0.7:
                victim = leader
                for i, other in enumerate(slots):  # a follower ready to take over
                    if i != leader:
                        other.wait_for("start", 60)
            else:
                victim = rng.choice([i for i in range(workers) if i != leader])
            sent = time.time()
            was_leader = slots[victim].pid in sampler.current()
            slots[victim].kill()
            record.kills.append(Kill(slots[victim].pid, sent, was_leader))
            slots[victim] = spawn(victim)
        producing.clear()
        producer.join(30)
        settling = time.monotonic()
        while ledger.in_flight() and time.monotonic() - settling < 60:
            time.sleep(0.2)
        record.settle_seconds = time.monotonic() - settling
        for worker in slots:
            worker.wait_for("start", 60)  # SIGTERM before its handler is set would kill it
        for worker in slots:
            worker.proc.terminate()
        for worker in slots:
            record.exit_codes[worker.name] = worker.proc.wait(timeout=60)
    finally:
        producing.clear()
        sampler.stopping.set()
        if sampler.is_alive():
            sampler.join(10)
        for worker in record.workers:
            worker.stop()
        ledger.close()
        fake.clear_faults()
    if release_errors:
        raise release_errors[0]
    if sampler.error is not None:
        raise sampler.error
    return record


def _wait_for_a_leader(sampler: Sampler, slots: list[WorkerProcess], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not sampler.current():
        if time.monotonic() > deadline or sampler.error is not None:
            logs = "\n".join(w.stderr_path.read_text()[-1000:] for w in slots)
            raise AssertionError(f"no worker leads ({sampler.error}):\n{logs}")
        time.sleep(0.05)
