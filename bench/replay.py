"""Replay benchmark: how fast the auditor tools read the log, and how much memory they need.

    .venv/bin/python bench/replay.py --store sqlite --events 100000 --also verify,project
    .venv/bin/python bench/replay.py --store postgres --events 1000000 --repeat 3
    .venv/bin/python bench/replay.py --store sqlite --kept bench/.work/replay-10m \\
        --events 10000000 --also verify,project
    .venv/bin/python bench/replay.py --store sqlite --kept bench/.work/replay-10m \\
        --events 10000000 --only raw_read,raw_sha256

Writes one JSON line of results to stdout (progress goes to stderr); exits 1 when a
measurement failed (its entry then has an ``error``).

1. The store: a fresh one (an SQLite file in a temporary folder, or a fresh schema on
   ``--postgres-url``), or with ``--kept`` one kept between runs (a folder for
   SQLite, a schema name for PostgreSQL: written once, when it holds fewer than
   ``--events`` events, then reused, its tail sealed first, as the ledger's worker
   would have: see ``seal_tail``), or ``--reuse URL``. It is filled with real
   events: payouts built by ``PayoutAggregate`` commands (so they are hash-chained
   and encoded exactly as the ledger stores them), inserted in batches through the
   ledger's own recorder. Mix: most payouts start, transfer and release (3 events);
   every 7th is declined once and then paid (5); every 19th stays in flight (1);
   every 11th paid one is partly reversed (4).
2. The physical limits, each in a **new process** (so the writer's memory does not
   count): ``raw_read`` is a plain cursor (``sqlite3`` or psycopg, no ledger code)
   that reads every row's five columns (notification id, originator id, version,
   topic, state) in notification order, ``--page-size`` rows a page, with the
   query the audit's reader sends; ``raw_sha256`` is the same read plus one
   ``hashlib.sha256(state).digest()`` per row.
3. The tools, each in a new process: ``audit_ledger`` replays the whole log (page
   through the log, decode every payout event, fold it into per-payout summaries
   and check every rule); with ``--also verify,project`` also ``verify_ledger``
   (a SHA-256 per event) and a projection rebuild. Each figure is events/s over the
   whole log; peak memory is that process's maximum RSS (interpreter and libraries
   included), with its RSS before the run. With ``--verify-processes 2``, verify's
   full run reads the log in two processes, split at a seal (``verify --processes
   2``): its CPU time and peak memory are both processes' added. Every tool gets
   its ratio to the limits: events/s / ``raw_read``'s events/s (and, for verify,
   / ``raw_sha256``'s).
4. Incremental runs (``--new-events``, default 10,000; 0 for none): the full runs of
   audit and verify write a checkpoint (``checkpoint=PATH, full=True``) into a
   temporary folder of this run; then ``--new-events`` events of new payouts (event
   service ids with a random token, so they never collide with an earlier run's)
   are appended to the store as in step 1, and each tool runs again from its
   checkpoint (``full=False``) in a new process: seconds, events read, whether the
   report says it continued from the checkpoint (``report.incremental``), and the
   goal: seconds < 1 + new events / the tool's full-run events/s. A kept store
   keeps the appended events (it then holds a little more than ``--events``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from payout_ledger import LedgerSettings, PayoutAggregate, PayoutLedger, ServiceProvider
from payout_ledger.testing import InMemoryProviderDirectory

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 3000
SEAL_EVERY = 1_000_000
LIMITS = ("raw_read", "raw_sha256")
TOOLS = ("audit", "verify", "project")
KINDS = (*LIMITS, *TOOLS)
CHECKPOINTED = ("audit", "verify")
"""The tools with a checkpoint, measured again after new events."""
NEW_EVENTS = 10_000
INCREMENTAL_BASE_S = 1.0
"""The incremental goal: seconds < this + the new events' time at the full-run rate."""
CHILD_TIMEOUT_S = 3600.0
"""The longest one measurement may take: a bound against a hang, with room for the
slowest tool over 10M events on a busy machine."""
SMALLEST_ID = -(2**63)
"""Readers start here, as the tools do: a row with an id below 1 is read too."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_ledger(store_url: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_bench", user_id="user_bench", stripe_account_id="acct_b")]
        ),
    )


def payout_events(n: int, start: datetime, tag: str = "bench") -> list[Any]:
    """The events of payout number ``n``, made by the aggregate's own commands.

    ``tag`` goes into the event service and transfer ids: payouts of another tag
    never collide with these.
    """
    provider = f"prov_{n % 50}"
    payout = PayoutAggregate.start(
        event_service_id=f"es_{tag}_{n:08d}",
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
    payout.record_transfer(transfer_id=f"tr_{tag}_{n:08d}", request_id=f"req_{tag}_{n}")
    if n % 11 == 0:
        payout.record_reversal(
            transfer_id=f"tr_{tag}_{n:08d}", amount_reversed=500, stripe_event_id=f"evt_{tag}_{n}"
        )
    return list(payout.collect_events())


def kept_store(store: str, kept: str, postgres_url: str) -> str:
    """The URL of a store kept between runs: an SQLite file in a folder, or a named schema."""
    if store == "sqlite":
        folder = Path(kept)
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder.resolve() / 'replay.db'}"
    parts = urlsplit(postgres_url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    with psycopg.connect(urlunsplit(parts._replace(query=urlencode(query))), autocommit=True) as c:
        c.execute(f'CREATE SCHEMA IF NOT EXISTS "{kept}"')
    return urlunsplit(parts._replace(query=urlencode({**query, "schema": kept})))


def stored_events(store_url: str) -> int:
    """How many events a store holds (0 for a new one)."""
    with open_ledger(store_url) as ledger:
        return ledger.recorder.max_notification_id() or 0


def write(store_url: str, events: int, *, fresh: bool = False) -> dict[str, Any]:
    """Fill the store with at least ``events`` events; returns counts and timing.

    ``fresh``: first empty a kept store that holds too few (a run stopped midway).
    """
    if fresh:
        _empty(store_url)
    started = time.perf_counter()
    with open_ledger(store_url) as ledger:
        written, payouts = _insert(ledger, events, "bench", seal=True)
    analyze(store_url)
    return {"events": written, "payouts": payouts, "write_s": time.perf_counter() - started}


def seal_tail(store_url: str) -> None:
    """Seal a kept store's events up to now, as the ledger's worker would have since.

    Earlier runs appended events of new payouts and left them unsealed. Verify's
    checkpoint sits at the newest seal, so each incremental run would read that
    tail again on top of its own new events, more with every run.
    """
    with open_ledger(store_url) as ledger:
        ledger.seal()


def analyze(store_url: str) -> None:
    """Refresh PostgreSQL's statistics of the events table, as autovacuum would after a load.

    Right after a bulk load the planner has none, and may read a whole log to find one
    aggregate's events (the audit's and verify's rebuilds look them up by id).
    """
    if store_url.startswith("sqlite:"):
        return
    with open_ledger(store_url) as ledger:
        datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
        table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            conn.execute(f'ANALYZE "{datastore.schema}"."{table}"')


def append(store_url: str, events: int) -> dict[str, Any]:
    """Append at least ``events`` events of new payouts, as ``write`` writes them.

    The payouts' ids carry a random token, so appending again (to a kept store, in
    a later run) never reuses an event service or transfer id.
    """
    tag = f"inc{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    with open_ledger(store_url) as ledger:
        before = ledger.recorder.max_notification_id() or 0
        written, payouts = _insert(ledger, events, tag, seal=False)
        last = ledger.recorder.max_notification_id() or 0
    return {
        "events": written,
        "payouts": payouts,
        "tag": tag,
        "after_notification_id": before,
        "last_notification_id": last,
        "write_s": round(time.perf_counter() - started, 2),
    }


def _insert(ledger: PayoutLedger, events: int, tag: str, *, seal: bool) -> tuple[int, int]:
    """Insert whole payouts of ``tag`` in batches until ``events`` are written."""
    written = payouts = 0
    batch: list[Any] = []
    start = datetime(2025, 1, 1, tzinfo=UTC)
    to_stored = ledger.mapper.to_stored_event
    while written < events:
        for event in payout_events(payouts, start, tag):
            batch.append(to_stored(event))
        payouts += 1
        if len(batch) >= BATCH or written + len(batch) >= events:
            ledger.recorder.insert_events(batch)
            written += len(batch)
            batch = []
            if written % 100_000 < BATCH:
                log(f"  written {written:,} events")
            if seal and written % SEAL_EVERY < BATCH:
                ledger.seal()  # as a ledger's worker would: the log is sealed as it grows
    return written, payouts


def _empty(store_url: str) -> None:
    if store_url.startswith("sqlite:///"):
        Path(store_url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    with open_ledger(store_url) as ledger:
        datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
        table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            conn.execute(f'TRUNCATE "{datastore.schema}"."{table}" RESTART IDENTITY')


def rss_mb() -> float:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux ``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``exec``, so a child
    started by ``subprocess`` reports at least its parent's peak (the writer's, here).
    """
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024 / 1e6


class ChildPeaks:
    """The peak resident set size (``VmHWM``) of this process's children, sampled.

    A child's ``VmHWM`` is its own high-water mark since ``exec``, so a sample
    taken at any time after its peak is exact; only a rise in the last interval
    before it ends would be missed. Read from the children of this process's main
    thread (``/proc/self/task/PID/children``), every ``every`` seconds, while the
    ``with`` block runs: verify's second process, here.
    """

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        children = f"/proc/self/task/{os.getpid()}/children"
        while not self._stop.wait(self.every):
            try:
                with open(children) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        kib = next(
                            (int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0
                        )
                except OSError:  # it ended
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), kib * 1024 / 1e6)


# The measurements, each in its own (fresh) process.

Pages = Callable[[], Iterator[list[tuple[Any, ...]]]]


def events_table(store_url: str) -> str:
    """Where the store's events are: ``table`` (SQLite) or ``schema.table`` (PostgreSQL)."""
    with open_ledger(store_url) as ledger:
        table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
        schema = getattr(ledger.recorder.datastore, "schema", None)  # type: ignore[attr-defined]
    return table if schema is None else f"{schema}.{table}"


def raw_pages(store_url: str, page_size: int, where: str) -> tuple[Pages, Callable[[], None]]:
    """A plain cursor's pages of (id, originator id, version, topic, state), and a closer.

    ``where``: the events table, from ``events_table`` (the parent process asks the
    ledger, so that no ledger is opened here). The query is the one the audit's
    reader sends (``payout_ledger.adapters.log``), on a connection of the driver
    itself: no ledger code runs in this process.
    """
    schema, _, table = where.rpartition(".")
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT ?"
        )

        def sqlite_pages() -> Iterator[list[tuple[Any, ...]]]:
            return _paged(lambda start: conn.execute(statement, (start, page_size)).fetchall())

        return sqlite_pages, conn.close
    parts = urlsplit(store_url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    pg = psycopg.connect(urlunsplit(parts._replace(query=urlencode(query))), autocommit=True)
    select = (
        "SELECT notification_id, replace(originator_id::text, '-', ''), originator_version, "
        f'topic, state FROM "{schema}"."{table}" WHERE notification_id >= %s '
        "ORDER BY notification_id LIMIT %s"
    )

    def postgres_pages() -> Iterator[list[tuple[Any, ...]]]:
        with pg.cursor() as cursor:

            def fetch(start: int) -> list[tuple[Any, ...]]:
                cursor.execute(select, (start, page_size), prepare=True, binary=True)
                return cursor.fetchall()

            yield from _paged(fetch)

    return postgres_pages, pg.close


def _paged(fetch: Callable[[int], list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    """Pages of ``fetch(first id)`` in notification order, until one comes back empty."""
    start = SMALLEST_ID
    while True:
        page = fetch(start)
        if not page:
            return
        yield page
        start = page[-1][0] + 1


def measure_raw(store_url: str, what: str, page_size: int, where: str) -> dict[str, Any]:
    """``raw_read`` or ``raw_sha256`` over the whole log, in this process."""
    pages, close = raw_pages(store_url, page_size, where)
    sha256 = hashlib.sha256
    count = 0
    try:
        before = rss_mb()
        cpu, started = time.process_time(), time.perf_counter()
        if what == "raw_sha256":
            for page in pages():
                for row in page:
                    sha256(row[4]).digest()
                count += len(page)
        else:
            for page in pages():
                count += len(page)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        close()
    return _figures(what, "full", count, seconds, cpu, before, ok=True, events_read=count)


class CheckpointUnsupportedError(RuntimeError):
    """The tool has no ``checkpoint`` and ``full`` parameters (not in ``src/`` yet)."""


def _checkpoint_args(
    tool: Callable[..., Any], checkpoint: str | None, full: bool
) -> dict[str, Any]:
    """The keyword arguments that run ``tool`` from (or writing) ``checkpoint``."""
    if checkpoint is None:
        return {}
    params = inspect.signature(tool).parameters
    missing = [name for name in ("checkpoint", "full") if name not in params]
    if missing:
        raise CheckpointUnsupportedError(
            f"{tool.__name__}() takes no {' and no '.join(missing)} argument: "
            "the checkpoint API is not there yet"
        )
    return {"checkpoint": Path(checkpoint), "full": full}


def measure(
    store_url: str,
    what: str,
    page_size: int,
    checkpoint: str | None = None,
    mode: str = "full",
    where: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Run one tool in this (fresh) process; returns throughput and memory.

    With ``checkpoint``, audit and verify run with it: ``mode="full"`` replays the
    whole log and writes it, ``mode="incremental"`` continues from it. A full run
    whose tool takes no checkpoint yet runs without one and says so
    (``checkpoint_error``); an incremental run fails. ``where``: the events table
    of the limits (``events_table``). ``processes``: verify's (2: split at a seal);
    the second process's CPU time is counted in ``cpu_seconds``, and its peak
    memory (``second_process_peak_rss_mb``, see ``ChildPeaks``) in ``peak_rss_mb``.
    """
    if what in LIMITS:
        return measure_raw(store_url, what, page_size, where or events_table(store_url))
    from payout_ledger.adapters.projection import run_projection
    from payout_ledger.audit import audit_ledger, verify_ledger

    read = 0

    def on_page(last_id: int, events: int) -> None:
        nonlocal read
        read += events

    extra: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if what in CHECKPOINTED and checkpoint is not None:
        tool = audit_ledger if what == "audit" else verify_ledger
        try:
            kwargs = _checkpoint_args(tool, checkpoint, full=mode == "full")
        except CheckpointUnsupportedError as exc:
            if mode != "full":
                raise
            extra["checkpoint_error"] = str(exc)
    opened = time.perf_counter()
    with open_ledger(store_url) as ledger:
        open_s = time.perf_counter() - opened
        before = rss_mb()
        cpu = _cpu_seconds()
        started = time.perf_counter()
        report: Any
        if what == "audit":
            report = audit_ledger(ledger, page_size=page_size, on_page=on_page, **kwargs)
            count, ok = report.events, report.ok
            extra |= {"payouts": report.payouts, "in_flight": len(report.in_flight)}
        elif what == "verify":
            with ChildPeaks() as children:
                report = verify_ledger(
                    ledger, page_size=page_size, on_page=on_page, processes=processes, **kwargs
                )
            count, ok = report.events, report.ok
            extra |= {"aggregates": report.aggregates, "processes": report.processes}
            if children.peaks:
                extra["second_process_peak_rss_mb"] = round(max(children.peaks.values()), 1)
        else:
            run = run_projection(ledger, rebuild=True, batch_size=page_size, on_batch=on_page)
            report, count, ok = None, run.events, True
            extra |= {"batches": run.batches}
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu
        if what == "audit":  # apart: a run from a checkpoint makes these rows when listed
            listing = time.perf_counter()
            extra["in_flight_listed"] = sum(1 for _ in report.in_flight)
            extra["in_flight_listed_s"] = round(time.perf_counter() - listing, 3)
    if kwargs:
        extra["incremental"] = getattr(report, "incremental", None)
        extra["checkpoint_status"] = getattr(report, "checkpoint", None)
        if mode == "incremental" and extra["incremental"] is None:
            raise CheckpointUnsupportedError(f"the {what} report has no `incremental` attribute")
    return _figures(
        what, mode, count, seconds, cpu, before, ok=ok, events_read=read, open_s=open_s, **extra
    )


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (verify's second)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _figures(
    what: str,
    mode: str,
    count: int,
    seconds: float,
    cpu: float,
    before: float,
    *,
    ok: bool,
    **extra: Any,
) -> dict[str, Any]:
    peak = peak_rss_mb()
    second = extra.get("second_process_peak_rss_mb")
    if second is not None:  # both run at once: the tool's memory is theirs together
        extra["this_process_peak_rss_mb"] = round(peak, 1)
        peak += second
    return {
        "what": what,
        "mode": mode,
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds) if seconds else None,
        "cpu_seconds": round(cpu, 3),
        "events_per_cpu_s": round(count / cpu) if cpu else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ok": ok,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()},
    }


# The run: what to measure, each in a child process, and the ratios.


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


def plan(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """What to measure: the kinds of full runs (in order), and the tools run incrementally.

    By default: the limits (unless ``--no-limits``), audit, the ``--also`` tools, and
    audit and verify again incrementally (unless ``--new-events 0``). ``--only``
    names exactly what runs, ``incremental`` included.
    """
    if args.only:
        chosen = {w for w in args.only.split(",") if w}
        unknown = chosen - {*KINDS, "incremental"}
        if unknown:
            raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))}")
        incremental = "incremental" in chosen
    else:
        chosen = {"audit", *[w for w in args.also.split(",") if w]}
        if args.limits:
            chosen |= set(LIMITS)
        incremental = args.new_events > 0
    kinds = [k for k in KINDS if k in chosen]
    return kinds, [k for k in CHECKPOINTED if k in kinds] if incremental else []


def run_child(
    store_url: str,
    what: str,
    page_size: int,
    *,
    checkpoint: Path | None = None,
    mode: str = "full",
    where: str | None = None,
    timeout: float = CHILD_TIMEOUT_S,
    processes: int = 1,
) -> dict[str, Any]:
    """Measure one run in a fresh Python process; a failure is returned as ``error``."""
    log(f"measuring {what} ({mode}) in a fresh process")
    command = [sys.executable, __file__, "--measure", what, "--store-url", store_url,
               "--page-size", str(page_size), "--mode", mode]  # fmt: skip
    if what == "verify" and processes != 1:
        command += ["--processes", str(processes)]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    if where is not None:
        command += ["--events-table", where]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"what": what, "mode": mode, "ok": False, "error": f"timed out after {timeout} s"}
    if child.returncode != 0:
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit status {child.returncode}"
        log(f"  FAILED: {error}")
        return {"what": what, "mode": mode, "ok": False, "error": error}
    result = dict(json.loads(child.stdout.strip().splitlines()[-1]))
    log(f"  {result['events']:,} events, {result['events_per_s']:,}/s")
    return result


def measure_store(store_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the plan on one store; returns ``runs`` (and ``appended``)."""
    kinds, incremental = plan(args)
    where = events_table(store_url)
    folder = Path(tempfile.mkdtemp(prefix="payout-replay-checkpoints-"))
    try:
        runs: list[dict[str, Any]] = []
        for what in kinds:
            checkpoint = folder / f"{what}.checkpoint" if what in incremental else None
            for _ in range(args.repeat):
                runs.append(
                    run_child(
                        store_url,
                        what,
                        args.page_size,
                        checkpoint=checkpoint,
                        where=where if what in LIMITS else None,
                        timeout=args.child_timeout,
                        processes=args.verify_processes,
                    )
                )
        appended: dict[str, Any] | None = None
        blocked = {what: _without_checkpoint(runs, what) for what in incremental}
        if any(why is None for why in blocked.values()):
            log(f"appending {args.new_events:,} events of new payouts")
            appended = append(store_url, args.new_events)
        for what in incremental:
            if blocked[what] is not None:
                log(f"incremental {what} not run: {blocked[what]}")
                error = f"not run: {blocked[what]}"
                runs.append({"what": what, "mode": "incremental", "ok": False, "error": error})
                continue
            runs.append(
                run_child(
                    store_url,
                    what,
                    args.page_size,
                    mode="incremental",
                    checkpoint=folder / f"{what}.checkpoint",
                    timeout=args.child_timeout,
                    processes=args.verify_processes,
                )
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    limits = compare(runs, appended)
    return {"runs": runs, "limits": limits, "appended": appended}


def _without_checkpoint(runs: list[dict[str, Any]], what: str) -> str | None:
    """Why ``what`` cannot continue from a checkpoint (None: its full run wrote one)."""
    full = [r for r in runs if r["what"] == what and r.get("mode") == "full"]
    if not full:
        return "no full run"
    if "error" in full[-1]:
        return f"the full run failed: {full[-1]['error']}"
    return full[-1].get("checkpoint_error")


def _median_rate(runs: list[dict[str, Any]], what: str, mode: str = "full") -> float | None:
    rates = [
        r["events_per_s"]
        for r in runs
        if r["what"] == what and r.get("mode") == mode and r.get("events_per_s")
    ]
    return statistics.median(rates) if rates else None


def compare(runs: list[dict[str, Any]], appended: dict[str, Any] | None) -> dict[str, Any]:
    """Add each tool's ratios to the limits and each incremental run's goal; the limits."""
    limits = {what: _median_rate(runs, what) for what in LIMITS}
    for r in runs:
        if r["what"] not in TOOLS or "error" in r:
            continue
        if r.get("mode") == "full":
            for what, limit in limits.items():
                if limit and (what == "raw_read" or r["what"] == "verify"):
                    r[f"vs_{what}"] = round(r["events_per_s"] / limit, 3)
            continue
        full = _median_rate(runs, r["what"])
        new = None if appended is None else appended["events"]
        r["new_events"] = new
        r["full_events_per_s"] = full
        if full and new is not None:
            r["new_events_s"] = round(new / full, 3)
            r["goal_s"] = round(INCREMENTAL_BASE_S + new / full, 3)
            r["meets_goal"] = r.get("incremental") is True and r["seconds"] < r["goal_s"]
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--also", default="", help="verify,project: measure these too")
    parser.add_argument(
        "--limits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the physical limits raw_read and raw_sha256 (default: yes)",
    )
    parser.add_argument(
        "--new-events",
        type=int,
        default=NEW_EVENTS,
        help="events appended before the incremental runs of audit and verify "
        f"(default {NEW_EVENTS:,}; 0: no incremental runs)",
    )
    parser.add_argument(
        "--only",
        help="measure exactly these, comma-separated: "
        f"{', '.join(KINDS)}, incremental (overrides --also and --limits)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--repeat", type=int, default=1, help="measure each this many times")
    parser.add_argument("--reuse", help="measure this kept store URL instead of writing one")
    parser.add_argument(
        "--kept",
        help="a folder (SQLite) or schema name (PostgreSQL) that holds the store between runs: "
        "written once, when it holds fewer than --events events, then reused",
    )
    parser.add_argument(
        "--child-timeout",
        type=float,
        default=CHILD_TIMEOUT_S,
        help=f"seconds one measurement may take (default {CHILD_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--verify-processes",
        type=int,
        choices=[1, 2],
        default=1,
        help="verify's processes (2: a full run split at a seal; default 1)",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--events-table", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        result = measure(
            args.store_url,
            args.measure,
            args.page_size,
            args.checkpoint,
            args.mode,
            args.events_table,
            args.processes,
        )
        print(json.dumps(result))
        return
    plan(args)  # an unknown --only fails before anything is written

    head = {"store": args.store, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if args.reuse:
        finish({**head, "reused": True, **measure_store(args.reuse, args)})
        return

    if args.kept:
        store_url = kept_store(args.store, args.kept, args.postgres_url)
        held = stored_events(store_url)
        written: dict[str, Any] = {"events": held, "payouts": None, "write_s": None}
        if held < args.events:
            log(f"writing {args.events:,} events to the kept {args.store} store")
            written = write(store_url, args.events, fresh=True)
            written["write_s"] = round(written["write_s"], 1)
        else:
            log(f"reusing the kept {args.store} store: {held:,} events")
            seal_tail(store_url)
            analyze(store_url)
        finish({**head, "kept": True, **written, **measure_store(store_url, args)})
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
        written["write_s"] = round(written["write_s"], 1)
        result = {**head, **written, **measure_store(store_url, args)}
    finally:
        if cleanup is not None and not args.keep:
            with psycopg.connect(cleanup[0], autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {cleanup[1]} CASCADE")
        if not args.keep:
            if tmp is not None:
                shutil.rmtree(tmp)
        else:
            log(f"kept {store_url}")
    finish(result)


def finish(result: dict[str, Any]) -> None:
    """Print the result line; exit 1 (after printing) when a measurement failed."""
    print(json.dumps(result), flush=True)
    failed = [
        f"{r['what']} ({r.get('mode', 'full')}): {r['error']}"
        for r in result["runs"]
        if "error" in r
    ]
    if failed:
        log("FAILED: " + "; ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
