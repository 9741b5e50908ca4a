"""examples/prometheus_host.py: Prometheus scrapes a host app over HTTP and finds the
ledger's series, named and labelled as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prometheus_host.py"


def test_a_scrape_of_the_example_host_shows_the_ledgers_series() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    head, _, exposition = done.stdout.partition("# HELP")
    assert head.splitlines() == ["release: released", "rate limited: not_executed", "health: 200"]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families("# HELP" + exposition)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        scope = {"otel_scope_name": "payout_ledger"}
        matches = [
            v
            for (n, found), v in samples.items()
            if n == name and {**labels, **scope}.items() <= dict(found).items()
        ]
        assert len(matches) == 1, (name, labels, sorted(samples))
        return matches[0]

    assert value("payout_ledger_releases_total", outcome="released") == 1
    assert value("payout_ledger_releases_total", outcome="not_executed") == 1
    assert value("payout_ledger_release_duration_seconds_count", outcome="released") == 1
    bucket = "payout_ledger_release_duration_seconds_bucket"
    assert value(bucket, outcome="released", le="+Inf") == 1
    assert value(bucket, outcome="released", le="30.0") == 1  # seconds, not milliseconds
    assert (
        value("payout_ledger_stripe_errors_total", code="rate_limit", operation="create_transfer")
        == 1
    )
    # The health check took the ledger's status: the rate-limited payout is in flight.
    assert value("payout_ledger_payouts_in_flight") == 1
    assert value("payout_ledger_oldest_in_flight_age_seconds") >= 0
    # No label names an id: only these label names appear.
    names = {name for (_, labels) in samples for name, _ in labels}
    assert names <= {
        "otel_scope_name",
        "otel_scope_version",
        "otel_scope_schema_url",
        "outcome",
        "le",
        "code",
        "operation",
        "kind",
    }
