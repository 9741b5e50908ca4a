"""Replay benchmark: how fast the audit replays the log, and how much memory it needs.

    .venv/bin/python bench/replay.py --store sqlite --events 100000
    .venv/bin/python bench/replay.py --store postgres --events 1000000 --repeat 3
    .venv/bin/python bench/replay.py --store sqlite --reuse sqlite:////tmp/kept.db --repeat 3

Writes one JSON line of results to stdout (progress goes to stderr).

1. A fresh store (an SQLite file in a temporary folder, or a fresh schema on
   ``--postgres-url``) is filled with ``--events`` real events: payouts built
   by ``PayoutAggregate`` commands (so they are hash-chained and encoded exactly
   as the ledger stores them), inserted in batches through the ledger's own
   recorder. Mix: most payouts start, transfer and release (3 events); every
   7th is declined once and then paid (5); every 19th stays in flight (1); every
   11th paid one is partly reversed (4).
2. In a **new process** (so the writer's memory does not count), the ledger is
   opened and ``audit_ledger`` replays the whole log: page through
   ``select_notifications``, decode every payout event with the ledger's mapper,
   fold it into per-payout summaries and check every rule. The figure is
   events/s over the whole log; peak memory is that process's maximum RSS
   (interpreter and libraries included), with its RSS before the replay.
3. Optionally (``--also verify,project``) the same for ``verify_ledger`` (a
   SHA-256 per event) and a projection rebuild, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from payout_ledger import LedgerSettings, PayoutAggregate, PayoutLedger, ServiceProvider
from payout_ledger.testing import InMemoryProviderDirectory

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 3000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_ledger(store_url: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_bench", user_id="user_bench", stripe_account_id="acct_b")]
        ),
    )


def payout_events(n: int, start: datetime) -> list[Any]:
    """The events of payout number ``n``, made by the aggregate's own commands."""
    provider = f"prov_{n % 50}"
    payout = PayoutAggregate.start(
        event_service_id=f"es_bench_{n:08d}",
        provider_id=provider,
        payee_user_id=f"user_{n % 50}",
        destination_account=f"acct_{n % 50:04d}",
        amount=1000 + n % 9000,
        currency="eur" if n % 3 == 0 else "usd",
        started_at=start + timedelta(seconds=n),
    )
    if n % 19 == 0:
        return list(payout.collect_events())  # left in flight
    if n % 7 == 0:
        payout.record_failure(code="balance_insufficient", message="declined", request_id=None)
        payout.start_next_attempt(
            payee_user_id=payout.payee_user_id,
            destination_account=payout.destination_account,
            started_at=start + timedelta(seconds=n, minutes=5),
        )
    payout.record_transfer(transfer_id=f"tr_bench_{n:08d}", request_id=f"req_{n}")
    if n % 11 == 0:
        payout.record_reversal(
            transfer_id=f"tr_bench_{n:08d}", amount_reversed=500, stripe_event_id=f"evt_{n}"
        )
    return list(payout.collect_events())


def write(store_url: str, events: int) -> dict[str, Any]:
    """Fill the store with at least ``events`` events; returns counts and timing."""
    started = time.perf_counter()
    written = payouts = 0
    batch: list[Any] = []
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with open_ledger(store_url) as ledger:
        to_stored = ledger.mapper.to_stored_event
        while written < events:
            for event in payout_events(payouts, start):
                batch.append(to_stored(event))
            payouts += 1
            if len(batch) >= BATCH or written + len(batch) >= events:
                ledger.recorder.insert_events(batch)
                written += len(batch)
                batch = []
                if written % 100_000 < BATCH:
                    log(f"  written {written:,} events")
    return {"events": written, "payouts": payouts, "write_s": time.perf_counter() - started}


def rss_mb() -> float:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(store_url: str, what: str, page_size: int) -> dict[str, Any]:
    """Run one replay in this (fresh) process; returns throughput and memory."""
    from payout_ledger.adapters.projection import run_projection
    from payout_ledger.audit import audit_ledger, verify_ledger

    with open_ledger(store_url) as ledger:
        before = rss_mb()
        cpu = time.process_time()
        started = time.perf_counter()
        if what == "audit":
            report = audit_ledger(ledger, page_size=page_size)
            count, ok = report.events, report.ok
            extra = {"payouts": report.payouts, "in_flight": len(report.in_flight)}
        elif what == "verify":
            verified = verify_ledger(ledger, page_size=page_size)
            count, ok = verified.events, verified.ok
            extra = {"aggregates": verified.aggregates}
        else:
            run = run_projection(ledger, rebuild=True, batch_size=page_size)
            count, ok, extra = run.events, True, {"batches": run.batches}
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "what": what,
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds),
        "cpu_seconds": round(cpu, 3),
        "events_per_cpu_s": round(count / cpu),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ok": ok,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        **extra,
    }


def fresh_postgres(url: str) -> tuple[str, str, str]:
    """A store URL on a new schema; returns (store url, conninfo, schema)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.pop("schema", None)
    conninfo = urlunsplit(parts._replace(query=urlencode(query)))
    schema = f"bench_replay_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return (
        urlunsplit(parts._replace(query=urlencode({**query, "schema": schema}))),
        conninfo,
        schema,
    )


def _plan(args: argparse.Namespace) -> list[str]:
    kinds = ["audit", *[w for w in args.also.split(",") if w]]
    return [what for what in kinds for _ in range(args.repeat)]


def run_child(store_url: str, what: str, page_size: int) -> dict[str, Any]:
    """Measure one replay in a fresh Python process."""
    log(f"measuring {what} in a fresh process")
    child = subprocess.run(
        [sys.executable, __file__, "--measure", what, "--store-url", store_url,
         "--page-size", str(page_size)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--also", default="", help="verify,project: measure these too")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--repeat", type=int, default=1, help="measure each this many times")
    parser.add_argument("--reuse", help="measure this kept store URL instead of writing one")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(args.store_url, args.measure, args.page_size)))
        return

    if args.reuse:
        runs = [run_child(args.reuse, what, args.page_size) for what in _plan(args)]
        print(json.dumps({"store": args.store, "reused": args.reuse, "runs": runs}))
        return

    tmp: Path | None = None
    cleanup = None
    if args.store == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="payout-replay-"))
        store_url = f"sqlite:///{tmp / 'replay.db'}"
    else:
        store_url, conninfo, schema = fresh_postgres(args.postgres_url)
        cleanup = (conninfo, schema)
    try:
        log(f"writing {args.events:,} events to {args.store}")
        written = write(store_url, args.events)
        runs = [run_child(store_url, what, args.page_size) for what in _plan(args)]
        result = {
            "store": args.store,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            **written,
            "write_s": round(written["write_s"], 1),
            "runs": runs,
        }
        print(json.dumps(result))
    finally:
        if cleanup is not None and not args.keep:
            with psycopg.connect(cleanup[0], autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {cleanup[1]} CASCADE")
        if not args.keep:
            if tmp is not None:
                shutil.rmtree(tmp)
        else:
            log(f"kept {store_url}")


if __name__ == "__main__":
    main()
