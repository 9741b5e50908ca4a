"""payout_ledger benchmarks: the write path against its baselines, and the audit at 10M events.

Run::

    nox -s bench -- --quick        # a few minutes: 1 repetition, short runs, 10k-event replay
    nox -s bench                   # 3 repetitions, median, and the audit at 10M events
                                   # (under an hour at today's tool rates, most of it
                                   # the reads of the 10M logs; far longer the first
                                   # time, when the kept logs are written)
    nox -s bench -- --out bench --docs docs/performance.md   # the figures of record
    .venv/bin/python bench/run.py --quick   # the same without nox

A run writes ``results.json``, the page rendered from it (``performance.md``) and the
profiles to ``--out`` (default: ``<tmp>/payout-ledger-bench``), so it leaves the working
tree as it was. ``--out bench --docs docs/performance.md`` records the figures of record:
``bench/results.json`` and the page (its tables are never typed by hand); ``--results``
names the results file alone. PostgreSQL is the server at
``$PAYOUT_LEDGER_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every timed run of the write path gets a fresh schema, dropped afterwards; the replay
reads stores kept between runs (see below). ``--only`` picks sections.

Systems, all in one process, on the same server, with the same in-memory gateway:

* **ledger**: ``PayoutLedger`` as shipped (``LedgerSettings`` defaults), PostgreSQL or SQLite;
* **row-lock (original backend)**, the baseline: the original backend's design on
  SQLAlchemy (``baseline_rowlock.py``):
  ``SELECT ... FOR UPDATE`` on the event service, a unique ``payments`` row,
  ``payout_started`` before the transfer, ``released`` after, the transaction (row lock
  and pooled connection) held across the gateway call;
* **pgbench**: PostgreSQL's own limit, one single-row INSERT per transaction, same clients
  (``pgbench.py``); and the same with eventsourcing's per-save ``LOCK TABLE`` + ``NOTIFY``,
  statement by statement and in one round trip;
* **eventsourcing stock settings** against ours, read back from eventsourcing's factory.

Scenarios:

1. *database-bound*: zero-latency gateway, 1 and 16 workers, distinct event services,
   PostgreSQL (pool = workers, both systems) and SQLite: releases/s, p50, p99. A release
   commits twice, so its PostgreSQL limit is pgbench's tps / 2.
2. *latency-bound*: gateway latency 200 ms, 64 concurrent callers, a pool of 10
   connections for both systems: releases/s.
3. *hot contention*: 32 callers release one event service at once, over many rounds:
   exactly one transfer per round, p99 until every caller has its answer (gateway at
   0 ms and at 200 ms).
4. *replay*: the auditor tools over a log of 10M events, SQLite and PostgreSQL, from
   ``bench/replay.py`` (run as a subprocess; see ``replay_hook``): the physical limits
   (``raw_read``, ``raw_sha256``), audit, verify and the projection rebuild, each in a
   fresh process (events/s, peak RSS, ratio to the limits), then audit and verify again
   from their checkpoints after 10,000 new events. The stores are kept between runs
   (``--replay-kept-sqlite``, default ``bench/.work/replay-10m``;
   ``--replay-kept-postgres``, default schema ``bench_replay_10m``): written once, when
   they hold fewer than ``--replay-events`` events, then reused; each run adds its new
   events to them. ``--quick`` writes 10k events into a fresh store instead.

Then the hot path: a pyinstrument profile and a libpq trace of one database-bound
worker (``hotpath.py``), and bench-only prototypes of changes to ``src/``
(``ledger_variants.py``) measured against the shipped ledger in the same run.

Workers are threads in this one process, for every system alike. Figures are medians
of the repetitions; the load average is recorded because other work on a small machine
moves them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    POSTGRES_URL_VARIABLE,
    ROOT,
    Repeated,
    machine_info,
    postgres_url,
    temp_schema,
)
from hotpath import profile_release
from ledger_variants import VARIANTS, settings_difference
from pgbench import prepare_table, run_pgbench
from report import evaluate_targets, write_report
from scenarios import Spec, check_behaviour, contention, load_average, throughput

SECTIONS = ("database", "latency", "contention", "prototypes", "profile", "replay")

DB_WORKERS = (1, 16)
LATENCY_S = 0.2
LATENCY_CALLERS = 64
LATENCY_POOL = 10
HOT_CALLERS = 32
HOT_POOL = 10
REPLAY_EVENTS_FULL = 10_000_000
REPLAY_EVENTS_QUICK = 10_000
REPLAY_KEPT_SQLITE = Path("bench/.work/replay-10m")
"""The folder of the kept SQLite store (relative to the repository; not in git)."""
REPLAY_KEPT_POSTGRES = "bench_replay_10m"
"""The schema of the kept PostgreSQL store."""
REPLAY_ALSO = "verify,project"
REPLAY_TIMEOUT_QUICK_S = 300.0
REPLAY_TIMEOUT_FULL_S = 8 * 3600.0
"""Per store, a bound against a hang, not a budget: writing the kept store first if it is
missing or short, then seven reads of the whole log (each bounded by replay.py's own
timeout per measurement)."""
PROTOTYPES = [name for name in VARIANTS if name not in ("ours", "stock")]
PROFILED = ("ours", "stock")
LATENCY_PROTOTYPES = ("async_outcome",)
ROW_LOCK_SUMMARY = "the original backend's row-lock design"


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _row(spec: Spec, scenario: str, workers: int, latency: float, rep: Repeated) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "label": spec.label,
        "system": spec.system,
        "store": spec.store,
        "variant": spec.variant,
        "pool_size": spec.pool_size,
        "max_overflow": spec.max_overflow if spec.pool_size is not None else None,
        "workers": workers,
        "gateway_latency_s": latency,
        **rep.summary(),
    }


PgbenchPlan = list[tuple[str, int]]
PGBENCH_PLAN: PgbenchPlan = [
    ("single_insert", 1),
    ("single_insert", 16),
    ("recorder_protocol", 16),
    ("recorder_one_round_trip", 16),
]


def _interleaved(
    runs: list[tuple[Spec, int, float]],
    url: str,
    reps: int,
    seconds: float,
    scenario: str,
    pgbench_plan: PgbenchPlan | None = None,
    pgbench_seconds: int = 4,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every configuration once per repetition, in turn, so drift hits all alike.

    pgbench's runs (if any) take their turn in each repetition too: the disk's commit
    latency moves during a run on a shared machine, so the limit a figure is compared
    with is measured next to it.
    """
    results = {i: Repeated() for i in range(len(runs))}
    pgbench_plan = pgbench_plan or []
    bench: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in pgbench_plan}
    with temp_schema(url, "bench_pgbench") as schema:
        table = prepare_table(url, schema) if pgbench_plan else ""
        for r in range(reps):
            for script, clients in pgbench_plan:
                result = run_pgbench(url, table, script, clients, pgbench_seconds)
                bench[(script, clients)].append(result)
                _log(
                    f"{scenario} rep {r + 1}/{reps}: pgbench {script} -c {clients}: "
                    f"{result['tps']} tps"
                )
            for i, (spec, workers, latency) in enumerate(runs):
                stats = throughput(spec, url, workers=workers, seconds=seconds, latency=latency)
                results[i].add(stats)
                _log(
                    f"{scenario} rep {r + 1}/{reps}: {spec.label}, {workers} workers: "
                    f"{stats.per_second}/s p99 {stats.p99_ms} ms"
                )
    rows = [
        _row(spec, scenario, workers, latency, results[i])
        for i, (spec, workers, latency) in enumerate(runs)
    ]
    pgbench_rows = []
    for (script, clients), found in bench.items():
        tps = sorted(x["tps"] for x in found)
        pgbench_rows.append(
            {
                "script": script,
                "clients": clients,
                "tps": tps[len(tps) // 2],
                "tps_runs": [x["tps"] for x in found],
                "seconds": pgbench_seconds,
                "command": found[0]["command"],
            }
        )
    return rows, pgbench_rows


def run_database_bound(
    url: str, reps: int, seconds: float, pgbench_seconds: int, *, defaults: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs: list[tuple[Spec, int, float]] = []
    for workers in DB_WORKERS:
        runs += [
            (Spec("ledger", pool_size=workers), workers, 0.0),
            (Spec("baseline", pool_size=workers), workers, 0.0),
            (Spec("ledger", store="sqlite"), workers, 0.0),
        ]
    # (c) eventsourcing's stock settings against ours, same pool; then ours as shipped.
    top = max(DB_WORKERS)
    runs.append((Spec("ledger", variant="stock", pool_size=top), top, 0.0))
    if defaults:  # the ledger as shipped: LedgerSettings' own pool (5 + 10 overflow)
        runs.append((Spec("ledger", pool_size=None), top, 0.0))
    return _interleaved(runs, url, reps, seconds, "database_bound", PGBENCH_PLAN, pgbench_seconds)


def run_latency_bound(
    url: str, reps: int, seconds: float, *, stock: bool = True
) -> list[dict[str, Any]]:
    runs = [
        (Spec("ledger", pool_size=LATENCY_POOL), LATENCY_CALLERS, LATENCY_S),
        (Spec("baseline", pool_size=LATENCY_POOL), LATENCY_CALLERS, LATENCY_S),
    ]
    if stock:
        runs.append(
            (Spec("ledger", variant="stock", pool_size=LATENCY_POOL), LATENCY_CALLERS, LATENCY_S)
        )
    return _interleaved(runs, url, reps, seconds, "latency_bound")[0]


def run_contention(url: str, rounds: int, variants: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for latency in (0.0, LATENCY_S):
        specs = [Spec("ledger", variant=v, pool_size=HOT_POOL) for v in variants]
        specs += [Spec("baseline", pool_size=HOT_POOL), Spec("ledger", store="sqlite")]
        results = contention(specs, url, callers=HOT_CALLERS, rounds=rounds, latency=latency)
        for result in results:
            _log(
                f"contention {result['label']}, gateway {latency * 1000:.0f} ms: p99 "
                f"{result['p99_ms']} ms, losers p99 {result['losers_p99_ms']} ms, "
                f"one transfer every round: {result['exactly_one_transfer_every_round']}"
            )
        out += results
    return out


def run_checks(url: str, variants: list[str]) -> list[dict[str, Any]]:
    specs = [Spec("ledger", variant=v, pool_size=4) for v in variants]
    specs += [Spec("baseline", pool_size=4), Spec("ledger", store="sqlite")]
    checks = []
    for spec in specs:
        result = check_behaviour(spec, url)
        checks.append(result)
        _log(f"check {spec.label}: {'ok' if result['ok'] else 'FAILED ' + str(result)}")
    return checks


def run_prototypes(
    url: str, reps: int, seconds: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    top = max(DB_WORKERS)  # the targets are read at 16 workers; 1 worker is in the profile
    runs: list[tuple[Spec, int, float]] = [(Spec("baseline", pool_size=top), top, 0.0)]
    runs += [(Spec("ledger", variant=v, pool_size=top), top, 0.0) for v in ["ours", *PROTOTYPES]]
    runs += [(Spec("baseline", pool_size=LATENCY_POOL), LATENCY_CALLERS, LATENCY_S)]
    runs += [
        (Spec("ledger", variant=v, pool_size=LATENCY_POOL), LATENCY_CALLERS, LATENCY_S)
        for v in ("ours", *LATENCY_PROTOTYPES)
    ]
    rows, pgbench_rows = _interleaved(
        runs, url, reps, seconds, "prototypes", [("single_insert", 1), ("single_insert", top)], 3
    )
    for row in rows:
        if row["system"] == "baseline":
            row["summary"], row["proposal"], row["safe"] = ROW_LOCK_SUMMARY, "", True
            continue
        variant = VARIANTS[row["variant"]]
        row["summary"] = variant.summary
        row["proposal"] = variant.proposal
        row["safe"] = variant.safe
    return rows, pgbench_rows


def run_profile(url: str, releases: int, out_dir: Path) -> list[dict[str, Any]]:
    profiles = []
    for variant in PROFILED:
        html = out_dir / f"profile-{variant.replace('+', '-')}.html"
        result = profile_release(url, releases, variant, html=html)
        result["html"] = _shown(html)
        profiles.append(result)
        _log(
            f"profile {variant}: {result['wall_ms_per_release']} ms/release wall, "
            f"{result['client_cpu_ms_per_release']} ms CPU, {result['per_release']}"
        )
    return profiles


def replay_commands(events: int, kept: dict[str, str] | None) -> list[list[str]]:
    """The arguments of ``bench/replay.py``, one list per store.

    Every tool (audit, verify, the projection rebuild), the limits (``raw_read``,
    ``raw_sha256``) and the incremental audit and verify, on the ``kept`` store of
    each (a folder for SQLite, a schema for PostgreSQL), else on a fresh one.
    Verify's full run reads the log in two processes (``verify --processes 2``),
    as an auditor with two cores would run it.
    """
    commands = []
    for store in ("sqlite", "postgres"):
        args = ["--store", store, "--events", str(events)]
        if kept is not None:
            args += ["--kept", kept[store]]
        commands.append([*args, "--also", REPLAY_ALSO, "--verify-processes", "2"])
    return commands


def replay_hook(
    url: str, events: int, kept: dict[str, str] | None, timeout: float
) -> dict[str, Any]:
    """Run ``bench/replay.py`` on SQLite and on PostgreSQL (see ``replay_commands``).

    Its contract is to print one JSON line (the last line of stdout that parses as
    a JSON object is taken) with its figures: the store, ``events``, ``write_s``,
    ``limits`` and ``runs`` (``what``, ``mode``, ``events_per_s``, ``peak_rss_mb``,
    ...), each measured in a fresh process, and to exit non-zero when a measurement
    failed (the figures it has are kept). ``timeout`` bounds one store's command;
    on expiry its whole process group is stopped. Without the script this section
    records ``status: "missing"`` and the commands it would run.
    """
    script = BENCH_DIR / "replay.py"
    commands = replay_commands(events, kept)
    shown = [" ".join(["python", "bench/replay.py", *_shown_args(c)]) for c in commands]
    found: dict[str, Any] = {
        "events": events,
        "kept": None if kept is None else {k: _shown_args([v])[0] for k, v in kept.items()},
    }
    if not script.exists():
        return {"status": "missing", **found, "commands": shown}
    env = {**os.environ, POSTGRES_URL_VARIABLE: url}
    runs = []
    for args, text in zip(commands, shown, strict=True):
        _log(f"replay: {text}")
        started = time.perf_counter()
        command = [sys.executable, str(script), *args, "--postgres-url", url]
        try:
            returncode, stdout, stderr = _run_group(command, timeout, env)
        except subprocess.TimeoutExpired:
            runs.append({"command": text, "status": "timeout", "timeout_s": timeout})
            _log(f"replay: timed out after {timeout} s")
            continue
        parsed: dict[str, Any] | None = None
        for line in reversed(stdout.splitlines()):
            try:
                candidate = json.loads(line)
            except ValueError:
                continue
            if isinstance(candidate, dict):
                parsed = candidate
                break
        status = "ok" if returncode == 0 and parsed is not None else "failed"
        _log(f"replay: {status} in {time.perf_counter() - started:.0f} s")
        runs.append(
            {
                "command": text,
                "status": status,
                "returncode": returncode,
                "wall_s": round(time.perf_counter() - started, 2),
                "result": parsed,
                "stderr_tail": stderr[-800:] if returncode else "",
            }
        )
    return {"status": "ran", **found, "runs": runs}


def _shown_args(args: list[str]) -> list[str]:
    """``args`` as results.json shows them: a kept folder relative to the repository."""
    return [_shown(Path(a)) if Path(a).is_absolute() else a for a in args]


def _run_group(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``command`` in its own process group; stop the whole group if it outlives ``timeout``.

    replay.py measures in child processes of its own: stopping replay.py alone would
    leave a measurement running.
    """
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:  # the timeout, Ctrl-C or SIGTERM: no measurement outlives the run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr


def _shown(path: Path) -> str:
    """A path as results.json records it: relative to the repository, else its name alone."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


DEFAULT_OUT = Path(tempfile.gettempdir()) / "payout-ledger-bench"


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Where a run writes: ``results`` (JSON), ``profiles`` (a folder) and ``docs`` (the page).

    Everything goes to ``--out`` (a temporary folder by default); ``--results`` and
    ``--docs`` name those two files explicitly.
    """
    out: Path = args.out or DEFAULT_OUT
    return {
        "results": args.results or out / "results.json",
        "profiles": out,
        "docs": args.docs or out / "performance.md",
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per timed run")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for results.json, performance.md and the profiles "
        f"(default {DEFAULT_OUT}; the figures of record: bench)",
    )
    parser.add_argument("--results", type=Path, help="the results file (default OUT/results.json)")
    parser.add_argument(
        "--docs",
        type=Path,
        help="the page to write (default OUT/performance.md; of record: docs/performance.md)",
    )
    parser.add_argument("--postgres-url", default=postgres_url())
    parser.add_argument(
        "--replay-events",
        type=int,
        help=f"events in the replay's log (default {REPLAY_EVENTS_FULL:,}; "
        f"quick {REPLAY_EVENTS_QUICK:,}, in a fresh store)",
    )
    parser.add_argument(
        "--replay-kept-sqlite",
        type=Path,
        default=REPLAY_KEPT_SQLITE,
        help="the folder of the kept SQLite store, written once and reused "
        f"(relative to the repository; default {REPLAY_KEPT_SQLITE})",
    )
    parser.add_argument(
        "--replay-kept-postgres",
        default=REPLAY_KEPT_POSTGRES,
        help=f"the schema of the kept PostgreSQL store (default {REPLAY_KEPT_POSTGRES})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # A stopped run still drops its schemas: SIGTERM unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = _parse(argv)
    paths = output_paths(args)
    for path in (paths["results"].parent, paths["profiles"], paths["docs"].parent):
        path.mkdir(parents=True, exist_ok=True)
    quick: bool = args.quick
    reps: int = args.reps or (1 if quick else 3)
    seconds: float = args.seconds or (2.0 if quick else 4.0)
    sections = set(args.only or [s for s in SECTIONS if not (quick and s == "prototypes")])
    url: str = args.postgres_url
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "command": "nox -s bench" + (" -- --quick" if quick else ""),
            "argv": sys.argv[1:] if argv is None else argv,
            "mode": "quick" if quick else "full",
            "repetitions": reps,
            "seconds_per_run": seconds,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "load_average_at_start": load_average(),
            "machine": machine_info(url),
            "sections": sorted(sections),
        },
        "settings": settings_difference(f"{url}?schema=public"),
    }

    def save() -> None:
        results["meta"]["load_average_at_end"] = load_average()
        results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
        results["targets"] = evaluate_targets(results)
        paths["results"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")

    variants = ["ours", "stock"] + (PROTOTYPES if "prototypes" in sections else [])
    results["checks"] = run_checks(url, variants)
    save()
    if "database" in sections:  # pgbench takes its turn in each repetition of this block
        results["database_bound"], results["pgbench"] = run_database_bound(
            url, reps, seconds, 2 if quick else 4, defaults=not quick
        )
        save()
    if "latency" in sections:
        results["latency_bound"] = run_latency_bound(
            url, reps, seconds + (1 if quick else 0), stock=not quick
        )
        save()
    if "contention" in sections:
        hot: tuple[str, ...] = ("ours",) if quick else ("ours", "stock")
        results["contention"] = run_contention(url, 4 if quick else 15, hot)
        save()
    if "prototypes" in sections:
        results["prototypes"], results["prototypes_pgbench"] = run_prototypes(
            url, reps, min(seconds, 3.0)
        )
        save()
    if "profile" in sections:
        results["profile"] = run_profile(url, 100 if quick else 500, paths["profiles"])
        save()
    if "replay" in sections:
        events = args.replay_events or (REPLAY_EVENTS_QUICK if quick else REPLAY_EVENTS_FULL)
        kept: dict[str, str] | None = None
        if not quick:  # a kept store: written once (if it holds fewer events), then reused
            folder: Path = args.replay_kept_sqlite
            kept = {
                "sqlite": str(folder if folder.is_absolute() else ROOT / folder),
                "postgres": args.replay_kept_postgres,
            }
        timeout = REPLAY_TIMEOUT_QUICK_S if quick else REPLAY_TIMEOUT_FULL_S
        results["replay"] = replay_hook(url, events, kept, timeout=timeout)
        save()
    save()
    write_report(results, paths["docs"], paths["results"])
    _log(f"wrote {paths['results']} and {paths['docs']} in {results['meta']['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
