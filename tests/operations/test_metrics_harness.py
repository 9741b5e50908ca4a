"""The metrics a host's Prometheus scrapes, during a run with faults.

A host process (examples/prometheus_host.py's app with a maintenance worker in a
thread) releases through the fake Stripe, which drops the responses of three
transfers. The test scrapes ``/metrics`` and ``/health/`` every 100 ms, as
Prometheus and a load balancer would, and checks the story they tell: the
in-flight gauge rises to three; the oldest in-flight age crosses the health
threshold and health turns failing; the worker resumes the three; the gauge
falls to zero and health recovers. At Stripe, one transfer per service.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from payout_ledger.testing.fake_stripe import FakeStripe, faults

ROOT = Path(__file__).resolve().parents[2]
IN_FLIGHT_THRESHOLD = 1.5
"""Seconds: health fails while an attempt is in flight longer than this."""
RESUME_AFTER = 5.0
"""Seconds: the worker resumes attempts in flight longer than this (the health route
answers a report up to 2 s old: it turns failing by 3.5 s, recovers by 7 s)."""
DROPPED = 3


@dataclass(frozen=True)
class Sample:
    at: float
    in_flight: float | None
    oldest_age: float | None
    health: int
    failing: tuple[str, ...]
    """The checks the health report names failing."""
    in_flight_age: float | None
    """The oldest in-flight age the health report measured."""


def gauge(text: str, name: str) -> float | None:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return None if found is None else float(found[1])


@pytest.fixture
def host(fake: FakeStripe, account: str, durable_store_url: str) -> object:
    config = {
        "store_url": durable_store_url,
        "api_key": fake.api_key,
        "api_base": fake.url,
        "account": account,
        "in_flight_threshold": IN_FLIGHT_THRESHOLD,
        "resume_after": RESUME_AFTER,
        "worker_interval": 0.3,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.operations.metrics_host", json.dumps(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    line = process.stdout.readline()
    assert line.startswith("ready "), line
    try:
        yield line.split()[1]
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            process.stdout.close()


def test_in_flight_rises_and_falls_and_health_fails_then_recovers(
    fake: FakeStripe, host: str
) -> None:
    samples: list[Sample] = []
    scraping = threading.Event()

    def scrape() -> None:
        with httpx.Client(base_url=host, timeout=10) as http:
            while not scraping.is_set():
                health = http.get("/health/")
                report = health.json()
                text = http.get("/metrics").text
                samples.append(
                    Sample(
                        time.monotonic(),
                        gauge(text, "payout_ledger_payouts_in_flight"),
                        gauge(text, "payout_ledger_oldest_in_flight_age_seconds"),
                        health.status_code,
                        tuple(n for n, c in report["checks"].items() if c["state"] == "failing"),
                        report["status"]["oldest_in_flight_seconds"],
                    )
                )
                scraping.wait(0.1)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        with httpx.Client(base_url=host, timeout=30) as http:
            amount = {"amount": 2500, "currency": "usd"}
            fake.inject(faults.drop_after_commit(), times=DROPPED)
            outcomes = [
                http.post(
                    "/releases",
                    json={"event_service_id": f"es_{n}", "provider_id": "prov_1", "amount": amount},
                ).json()["outcome"]
                for n in range(DROPPED + 2)
            ]
        assert outcomes == ["outcome_unknown"] * DROPPED + ["released"] * 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recent = samples[-3:]
            settled = len(recent) == 3 and all(s.in_flight == 0 and s.health == 200 for s in recent)
            if settled and any(s.in_flight == DROPPED for s in samples):
                break
            time.sleep(0.1)
    finally:
        scraping.set()
        scraper.join()

    story = [(round(s.at - samples[0].at, 1), s.in_flight, s.oldest_age, s.health) for s in samples]
    print(*story, sep="\n")
    peak = next(i for i, s in enumerate(samples) if s.in_flight == DROPPED)
    failing = next(i for i, s in enumerate(samples) if s.health == 503)
    recovered = next(
        i for i, s in enumerate(samples) if i > failing and s.in_flight == 0 and s.health == 200
    )
    assert peak <= failing < recovered, story
    # Health failed because the oldest attempt in flight crossed its threshold...
    assert all(s.failing == ("in_flight",) and (s.in_flight_age or 0) > IN_FLIGHT_THRESHOLD
               for s in samples if s.health == 503), story  # fmt: skip
    assert all(s.health == 200 for s in samples[:peak]), story
    assert max(s.oldest_age or 0 for s in samples) > IN_FLIGHT_THRESHOLD
    # ...and recovered once the worker settled the three, not before they were due.
    assert all(s.in_flight == 0 and s.health == 200 for s in samples[recovered:]), story
    assert (samples[recovered].at - samples[peak].at) >= RESUME_AFTER - 1.0, story
    # One transfer per service at Stripe: the resumes found the dropped ones.
    per_service: dict[str, int] = {}
    for transfer in fake.transfers():
        service = transfer["metadata"]["event_service_id"]
        per_service[service] = per_service.get(service, 0) + 1
    assert per_service == {f"es_{n}": 1 for n in range(DROPPED + 2)}
