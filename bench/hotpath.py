"""Where a database-bound release spends its time: a pyinstrument profile, summarised.

One worker releases new event services on PostgreSQL with a zero-latency gateway.
pyinstrument samples the release loop; every sample's self time is put in a bucket
by the module it was spent in (waiting on the server, psycopg, eventsourcing, ...).

Round trips are counted from a libpq protocol trace of the ledger's one pooled
connection: each switch from messages the client sends to messages the server
answers is one round trip; those between the server's ``LOCK TABLE`` and its
``COMMIT`` are made while every other writer waits for the table.

The HTML profile is written next to results.json for anyone who wants the tree.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PROVIDER, release_request, temp_schema, with_schema
from ledger_variants import open_ledger
from psycopg import pq
from pyinstrument import Profiler
from pyinstrument.frame import Frame

from payout_ledger import PayoutLedger
from payout_ledger.testing import InMemoryTransferGateway

__all__ = ["count_round_trips", "profile_release"]

_BUCKETS: list[tuple[str, str]] = [
    # (substring of the file path, bucket); the first match wins
    ("psycopg_pool/", "psycopg_pool (check-out, return)"),
    ("psycopg/", "psycopg client (adapt, send, results; incl. time descheduled)"),
    ("eventsourcing/postgres.py", "recorder (SQL, connections)"),
    ("payout_ledger/adapters/recorders.py", "recorder (SQL, connections)"),
    ("eventsourcing/persistence.py", "eventsourcing mapper + JSON transcoding"),
    ("json/", "eventsourcing mapper + JSON transcoding"),
    ("eventsourcing/", "eventsourcing application + aggregate"),
    ("payout_ledger/", "payout_ledger (decide, events, results)"),
    ("ledger_variants.py", "recorder (SQL, connections)"),
    ("pydantic", "pydantic validation (request, results)"),
    ("uuid.py", "uuid5 ids"),
]
_WAIT = "waiting on PostgreSQL (round trips, locks, fsync)"
_OTHER = "other (contextlib, logging, ...)"


def _bucket(frame: Frame, parent_bucket: str) -> str:
    path = frame.file_path or ""
    if frame.function == "wait" and path.endswith("psycopg/connection.py"):
        return _WAIT
    if not path or path.startswith("<"):  # built-ins count for whoever called them
        return parent_bucket
    for needle, bucket in _BUCKETS:
        if needle in path:
            return bucket
    return _OTHER


def _walk(frame: Frame, parent_bucket: str, into: dict[str, float]) -> None:
    bucket = _bucket(frame, parent_bucket)
    children = list(frame.children)
    own = frame.time - sum(child.time for child in children)
    if own > 0:
        into[bucket] = into.get(bucket, 0.0) + own
    for child in children:
        _walk(child, bucket, into)


def _trace_counts(trace: str) -> dict[str, int]:
    """Round trips, statements and round trips under the table lock, from a libpq trace."""
    round_trips = statements = under_lock = 0
    locked = False
    last = ""
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        direction, message = fields[0], fields[2]
        if direction == "F" and message in ("Bind", "Query"):
            statements += 1
        if direction == "B" and last == "F":
            round_trips += 1
            if locked:
                under_lock += 1
        if direction == "B" and message == "CommandComplete":
            tag = fields[3].strip().strip('"') if len(fields) > 3 else ""
            if tag == "LOCK TABLE":
                locked = True
            elif tag in ("COMMIT", "ROLLBACK"):
                locked = False
        last = direction
    return {
        "round_trips": round_trips,
        "statements": statements,
        "round_trips_after_lock_table": under_lock,
    }


def count_round_trips(ledger: PayoutLedger, releases: int) -> dict[str, float]:
    """Trace the ledger's only pooled connection (pool size 1) over ``releases`` releases."""
    pool = ledger.factory.datastore.pool  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        path = Path(tmp) / "libpq.trace"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pool.connection() as conn:
                conn.pgconn.trace(fd)
                conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            for i in range(releases):
                ledger.release_payment(release_request(f"traced_{i}"))
            with pool.connection() as conn:
                conn.pgconn.untrace()
        finally:
            os.close(fd)
        counts = _trace_counts(path.read_text(errors="replace"))
    return {name: round(value / releases, 2) for name, value in counts.items()}


def profile_release(
    url: str, releases: int, variant: str = "ours", html: Path | None = None
) -> dict[str, Any]:
    """Profile ``releases`` single-worker releases of ``variant`` on PostgreSQL."""
    with temp_schema(url) as schema:
        ledger = open_ledger(
            store_url=with_schema(url, schema),
            gateway=InMemoryTransferGateway(),
            provider=PROVIDER,
            variant=variant,
            pool_size=1,
            max_overflow=0,
        )
        try:
            for i in range(20):  # open the pool, prepare statements
                ledger.release_payment(release_request(f"warm_{i}"))
            trips = count_round_trips(ledger, 20)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            for i in range(releases):
                ledger.release_payment(release_request(f"plain_{i}"))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            for i in range(releases):
                ledger.release_payment(release_request(f"prof_{i}"))
            profiler.stop()
        finally:
            ledger.close()
    session = profiler.last_session
    assert session is not None
    root = session.root_frame()
    buckets: dict[str, float] = {}
    if root is not None:
        _walk(root, _OTHER, buckets)
    total = sum(buckets.values()) or 1.0
    if html is not None:
        html.write_text(profiler.output_html())
    return {
        "variant": variant,
        "releases": releases,
        "wall_ms_per_release": round(wall / releases * 1000, 3),
        "client_cpu_ms_per_release": round(cpu / releases * 1000, 3),
        "per_release": trips,
        "profiled_ms_per_release": round(total / releases * 1000, 3),
        "buckets_share": {
            name: round(seconds / total, 3)
            for name, seconds in sorted(buckets.items(), key=lambda kv: -kv[1])
        },
    }
