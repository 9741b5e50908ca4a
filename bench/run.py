"""payout_ledger benchmarks: the ledger against the seed's row-lock design and PostgreSQL.

Run::

    nox -s bench -- --quick        # under two minutes: 1 repetition, short runs
    nox -s bench                   # 3 repetitions, median (12-15 min,
                                   # about half of it replay.py writing 1M events twice)
    nox -s bench -- --out bench --docs docs/performance.md   # the figures of record
    .venv/bin/python bench/run.py --quick   # the same without nox

A run writes ``results.json``, the page rendered from it (``performance.md``) and the
profiles to ``--out`` (default: ``<tmp>/payout-ledger-bench``), so it leaves the working
tree as it was. ``--out bench --docs docs/performance.md`` records the figures of record:
``bench/results.json`` and the page (its tables are never typed by hand); ``--results``
names the results file alone. PostgreSQL is the server at
``$PAYOUT_LEDGER_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every timed run gets a fresh schema, dropped afterwards. ``--only`` picks sections.

Systems, all in one process, on the same server, with the same in-memory gateway:

* **ledger**: ``PayoutLedger`` as shipped (``LedgerSettings`` defaults), PostgreSQL or SQLite;
* **row-lock baseline**: the seed's Phase 3 design on SQLAlchemy (``baseline_rowlock.py``):
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
4. *replay*: events/s and peak memory at 100k and 1M events (quick: 10k), SQLite and
   PostgreSQL, from ``bench/replay.py`` (run as a subprocess;
   see ``replay_hook``).

Then the hot path: a pyinstrument profile and a libpq trace of one database-bound
worker (``hotpath.py``), and bench-only prototypes of changes to ``src/``
(``ledger_variants.py``) measured against the shipped ledger in the same run.

Workers are threads in this one process, for every system alike. Figures are medians
of the repetitions; the load average is recorded because other work on a small machine
moves them.
"""

from __future__ import annotations

import argparse
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
REPLAY_EVENTS_FULL = (100_000, 1_000_000)
REPLAY_EVENTS_QUICK = (10_000,)
PROTOTYPES = [name for name in VARIANTS if name not in ("ours", "stock")]
PROFILED = ("ours", "stock")
LATENCY_PROTOTYPES = ("async_outcome",)


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
            row["summary"], row["proposal"], row["safe"] = "the seed's row-lock design", "", True
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


def replay_hook(url: str, sizes: tuple[int, ...], timeout: float) -> dict[str, Any]:
    """Run ``bench/replay.py --store {sqlite,postgres} --events N`` if it exists.

    Its contract is to print one JSON line (the last
    line of stdout that parses as a JSON object is taken) with its figures: the store,
    ``events``, ``write_s`` and ``runs`` (``what``, ``events_per_s``, ``peak_rss_mb``, ...),
    each replay measured in a fresh process. Without the script this section records
    ``status: "missing"`` and the commands it would run.
    """
    script = BENCH_DIR / "replay.py"
    commands = [
        [sys.executable, str(script), "--store", store, "--events", str(n), "--postgres-url", url]
        for n in sizes
        for store in ("sqlite", "postgres")
    ]
    shown = [" ".join(["python", "bench/replay.py", *c[2:6]]) for c in commands]
    if not script.exists():
        return {"status": "missing", "commands": shown}
    env = {**os.environ, POSTGRES_URL_VARIABLE: url}
    runs = []
    for command, text in zip(commands, shown, strict=True):
        _log(f"replay: {text}")
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=ROOT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            runs.append({"command": text, "status": "timeout", "timeout_s": timeout})
            continue
        parsed: dict[str, Any] | None = None
        for line in reversed(done.stdout.splitlines()):
            try:
                candidate = json.loads(line)
            except ValueError:
                continue
            if isinstance(candidate, dict):
                parsed = candidate
                break
        runs.append(
            {
                "command": text,
                "status": "ok" if done.returncode == 0 and parsed is not None else "failed",
                "returncode": done.returncode,
                "wall_s": round(time.perf_counter() - started, 2),
                "result": parsed,
                "stderr_tail": done.stderr[-800:] if done.returncode else "",
            }
        )
    return {"status": "ran", "runs": runs}


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
        nargs="+",
        help="event counts for bench/replay.py (default 100000 1000000, quick 10000)",
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
        sizes = tuple(args.replay_events or (REPLAY_EVENTS_QUICK if quick else REPLAY_EVENTS_FULL))
        results["replay"] = replay_hook(url, sizes, timeout=60 if quick else 900)
        save()
    save()
    write_report(results, paths["docs"], paths["results"])
    _log(f"wrote {paths['results']} and {paths['docs']} in {results['meta']['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
