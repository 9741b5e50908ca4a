"""Shared benchmark plumbing: the server, throw-away schemas, a closed-loop driver, stats."""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from payout_ledger import ServiceProvider

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
POSTGRES_URL_VARIABLE = "PAYOUT_LEDGER_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

PROVIDER = ServiceProvider(id="prov_bench", user_id="user_bench", stripe_account_id="acct_bench")
AMOUNT = 5000


def postgres_url() -> str:
    """The server every PostgreSQL figure is measured on (env override for other hosts)."""
    return os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)


def conninfo(url: str) -> str:
    """A libpq URL without our own query parameters (``?schema=``)."""
    parts = urlsplit(url)
    return parts._replace(query="").geturl()


def sqlalchemy_url(url: str) -> str:
    """The same server as an SQLAlchemy URL on the psycopg 3 driver."""
    parts = urlsplit(conninfo(url))
    return parts._replace(scheme="postgresql+psycopg").geturl()


@contextmanager
def temp_schema(url: str, prefix: str = "bench") -> Iterator[str]:
    """A fresh schema on the server, dropped (with everything in it) afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def with_schema(url: str, schema: str) -> str:
    """The store URL of the ledger on ``schema``."""
    return f"{conninfo(url)}?schema={schema}"


def release_request(event_service_id: str) -> dict[str, Any]:
    """A release request as a host writes it."""
    return {
        "event_service_id": event_service_id,
        "provider_id": PROVIDER.id,
        "amount": {"amount": AMOUNT, "currency": "usd"},
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class RunStats:
    """One timed run: how many releases finished, how fast, and how long each took."""

    releases: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    outcomes: dict[str, int]
    errors: int
    client_cpu_ms_per_release: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def closed_loop(
    workers: int,
    seconds: float,
    release: Callable[[int], str],
    start: int = 0,
    limit: int | None = None,
) -> RunStats:
    """``workers`` threads each releasing new event services back to back for ``seconds``.

    ``release(i)`` releases event service number ``i`` (every call gets a new one)
    and returns its outcome. Latency is measured around each call; throughput is
    completed calls over the wall time from the common start to the last finish.
    """
    numbers = itertools.count(start)  # next() on a count is atomic under the GIL
    latencies: list[list[float]] = [[] for _ in range(workers)]
    outcomes: list[Counter[str]] = [Counter() for _ in range(workers)]
    errors: list[int] = [0] * workers
    barrier = threading.Barrier(workers + 1)
    deadline = 0.0

    def worker(slot: int) -> None:
        barrier.wait()
        mine, seen = latencies[slot], outcomes[slot]
        while time.perf_counter() < deadline:
            i = next(numbers)
            if limit is not None and i >= start + limit:
                break
            t0 = time.perf_counter()
            try:
                outcome = release(i)
            except Exception as exc:
                errors[slot] += 1
                seen[f"error:{type(exc).__name__}"] += 1
                continue
            mine.append(time.perf_counter() - t0)
            seen[outcome] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    cpu0 = time.process_time()
    began = time.perf_counter()
    deadline = began + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    flat = [x for lat in latencies for x in lat]
    merged: Counter[str] = Counter()
    for seen in outcomes:
        merged.update(seen)
    done = len(flat)
    return RunStats(
        releases=done,
        seconds=round(elapsed, 3),
        per_second=round(done / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(percentile(flat, 50) * 1000, 2),
        p99_ms=round(percentile(flat, 99) * 1000, 2),
        outcomes=dict(merged),
        errors=sum(errors),
        client_cpu_ms_per_release=round(cpu / done * 1000, 3) if done else float("nan"),
    )


@dataclass
class Repeated:
    """Repetitions of one configuration; the median is the figure reported."""

    runs: list[RunStats] = field(default_factory=list)

    def add(self, stats: RunStats) -> None:
        self.runs.append(stats)

    def summary(self) -> dict[str, Any]:
        if not self.runs:
            return {"repetitions": 0}

        def med(name: str) -> float:
            values: list[float] = [getattr(r, name) for r in self.runs]
            return round(float(statistics.median(values)), 2)

        return {
            "repetitions": len(self.runs),
            "per_second": med("per_second"),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "client_cpu_ms_per_release": med("client_cpu_ms_per_release"),
            "per_second_runs": [r.per_second for r in self.runs],
            "errors": sum(r.errors for r in self.runs),
            "outcomes": dict(sum((Counter(r.outcomes) for r in self.runs), Counter())),
        }


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine_info(url: str) -> dict[str, Any]:
    """What the figures were measured on: CPU, memory, PostgreSQL, versions, commit."""
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = int(line.split()[1]) // 1024
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        settings = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "commit_delay",
                "shared_buffers",
                "max_connections",
            )
        }
    versions: dict[str, str | None] = {}
    for package in ("payout-ledger", "eventsourcing", "psycopg", "psycopg-pool", "sqlalchemy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": mem_total_mb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": settings,
        "postgres_url": _redact(url),
        "packages": versions,
        "git_commit": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or None,
        "git_src_dirty": bool(dirty),
    }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")
