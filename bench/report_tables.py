"""The tables of ``docs/performance.md``, each computed from ``bench/results.json`` alone.

A table is a header and rows of cells; ``report.py`` numbers and labels the tables and
places them in the page's template. Every figure on the page is in one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Results = dict[str, Any]
Row = dict[str, Any]
Table = tuple[list[str], list[list[str]]]
Column = tuple[str, Callable[[Row], str]]
COMMITS_PER_RELEASE = 2
TARGET_LATENCY_RATIO = 6.0
TARGET_DB_VS_BASELINE = 4.0
TARGET_DB_VS_PGBENCH = 0.2
TARGET_CONTENTION_P99_MS = 100.0
TOP = 16  # workers (and pgbench clients) of the database-bound targets
LATENCY_CALLERS = 64
AUDIT_SCALE_EVENTS = 10_000_000
"""The log size the audit-scale targets are read at; a smaller log is not at scale."""
TARGET_TOOL_RATES = {
    ("verify", "sqlite"): 300_000,
    ("verify", "postgres"): 150_000,
    ("audit", "sqlite"): 250_000,
    ("audit", "postgres"): 150_000,
    ("project", "sqlite"): 150_000,
    ("project", "postgres"): 150_000,
}
"""Events/s each tool must replay a log of ``AUDIT_SCALE_EVENTS`` at, per store."""
TARGET_PEAK_RSS_MB = 300.0
TARGET_INCREMENTAL_BASE_S = 1.0
"""An incremental run must take less than this + the new events at the full-run rate."""
STORES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
LIMITS = ("raw_read", "raw_sha256")
TOOLS = ("audit", "verify", "project")
CHECKPOINTED = ("audit", "verify")
BASELINE_NAME = "row-lock (original backend)"
"""The baseline's name: the original backend's row-lock design (``baseline_rowlock.py``)."""
LEGACY_NAMES = {
    "row-lock baseline (seed)": BASELINE_NAME,
    "the seed's row-lock design": "the original backend's row-lock design",
}
"""Names older results files use, and the names the page shows instead."""


def find(rows: Iterable[Row], **match: Any) -> Row | None:
    """The first row whose fields equal ``match``."""
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def rate(row: Row | None) -> float | None:
    return None if row is None else row.get("per_second")


def raised(row: Row | None) -> int:
    """How many of ``row``'s timed releases raised instead of returning an outcome."""
    return 0 if row is None else int(row.get("errors") or 0)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def pgbench_tps(
    results: Results, clients: int, script: str = "single_insert", block: str = "pgbench"
) -> float | None:
    """pgbench's median tps in one block (``pgbench`` or ``prototypes_pgbench``)."""
    row = find(results.get(block, []), script=script, clients=clients)
    return None if row is None else row["tps"]


def ledger_db(results: Results, workers: int, block: str = "database_bound") -> Row | None:
    """The shipped ledger on PostgreSQL in ``block``, with a pool of ``workers``."""
    rows = results.get(block, [])
    return find(
        rows, system="ledger", store="postgres", variant="ours", workers=workers, pool_size=workers
    )


def baseline_db(results: Results, workers: int) -> Row | None:
    return find(results.get("database_bound", []), system="baseline", workers=workers)


def current_names(value: Any) -> Any:
    """``value`` (results, or any part of them) with every legacy name replaced."""
    if isinstance(value, str):
        for old, new in LEGACY_NAMES.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: current_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [current_names(v) for v in value]
    return value


def replay_result(results: Results, store: str) -> Row | None:
    """``bench/replay.py``'s result for ``store``: the one with the largest log."""
    found = [
        r["result"]
        for r in (results.get("replay") or {}).get("runs", [])
        if r.get("result") and r["result"].get("store") == store
    ]
    return max(found, key=lambda r: r.get("events") or 0, default=None)


def replay_failure(results: Results, store: str) -> str | None:
    """Why ``store``'s replay command gave no result (a timeout, a crash), if it did not."""
    for r in (results.get("replay") or {}).get("runs", []):
        if f"--store {store} " in f"{r['command']} " and not r.get("result"):
            return str(r.get("status"))
    return None


def measurement(result: Row | None, what: str, mode: str = "full") -> Row | None:
    """The run of ``what`` in ``result`` (the median by events/s of repeats), or its failure."""
    runs: list[Row] = [
        m
        for m in (result or {}).get("runs", [])
        if m.get("what") == what and m.get("mode", "full") == mode
    ]
    done = sorted((m for m in runs if "error" not in m), key=lambda m: m["events_per_s"] or 0)
    if done:
        return done[len(done) // 2]
    return runs[-1] if runs else None


def rate_of(row: Row | None) -> float | None:
    """A measurement's events/s (None for a failed one)."""
    return None if row is None or "error" in row else row.get("events_per_s")


def incremental(result: Row | None, tool: str) -> Row | None:
    """``tool``'s incremental run with its goal: seconds < 1 + new events / full-run rate."""
    run = measurement(result, tool, "incremental")
    if run is None:
        return None
    full = rate_of(measurement(result, tool))
    new = ((result or {}).get("appended") or {}).get("events")
    found = {**run, "store": (result or {}).get("store"), "tool": tool}
    found |= {"full_events_per_s": full, "new_events": new, "new_events_s": None, "goal_s": None}
    found["holds"] = None
    if full and new is not None:
        found["new_events_s"] = round(new / full, 3)
        found["goal_s"] = round(TARGET_INCREMENTAL_BASE_S + new / full, 3)
        if "error" not in run:
            found["holds"] = run.get("incremental") is True and run["seconds"] < found["goal_s"]
    return found


TOOL_NAMES = {
    "raw_read": "raw_read: plain cursor, five columns",
    "raw_sha256": "raw_sha256: raw_read + SHA-256 of each state",
    "audit": "audit",
    "verify": "verify",
    "project": "project --rebuild",
}


def run_name(r: Row) -> str:
    name = TOOL_NAMES.get(r["what"], str(r["what"]))
    if (r.get("processes") or 1) > 1:
        name = f"{name}, {r['processes']} processes"
    return f"{name}, incremental" if r.get("mode") == "incremental" else name


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def holds(value: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "not measured"}[value]


def col(header: str, key: str, digits: int = 1) -> Column:
    """A column showing ``row[key]``."""
    return header, lambda r: num(r.get(key), digits)


def releases(header: str, key: str = "per_second", errors: str = "errors") -> Column:
    """A rate of releases, and how many raised if any did: such a figure is not clean."""

    def cell(r: Row) -> str:
        failed = int(r.get(errors) or 0)
        shown = num(r.get(key))
        return f"{shown} (**{failed:,} raised**)" if failed else shown

    return header, cell


def per_repetition(header: str = "per repetition", key: str = "per_second_runs") -> Column:
    return header, lambda r: ", ".join(num(v) for v in r.get(key, []))


def table(rows: Iterable[Row], *columns: Column) -> Table:
    """One row of cells per row of ``rows``, one cell per column."""
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


# The tables, in page order.


def run(results: Results, source: str) -> Table:
    meta = results["meta"]
    m, pg = meta["machine"], meta["machine"]["postgres"]
    dirty = " (src/ had local changes)" if m.get("git_src_dirty") else ""
    pg_settings = ("fsync", "synchronous_commit", "wal_sync_method")
    items = {
        "results": f"`{source}`",
        "command": f"`{meta['command']}`",
        "mode": f"{meta['mode']}: {meta['repetitions']} repetition(s), median reported",
        "seconds per timed run": num(meta["seconds_per_run"]),
        "started": meta["started_at"],
        "run took": f"{num(meta.get('duration_s'))} s",
        "git commit": f"`{m['git_commit']}`{dirty}",
        "CPU": f"{m['nproc']} x {m['cpu_model']}",
        "memory": f"{num(m['mem_total_mb'])} MB",
        "PostgreSQL": ", ".join([pg["server_version"], *(f"{k}={pg[k]}" for k in pg_settings)]),
        "Python": m["python"],
        "packages": ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        "load average (1/5/15 min)": f"start {meta['load_average_at_start']}, "
        f"end {meta.get('load_average_at_end')}",
    }
    return ["", "this run"], [[k, v] for k, v in items.items()]


TARGET_LABELS = {
    "latency_bound_vs_baseline": "latency-bound (200 ms gateway, 64 callers, pool 10): "
    f"ledger / {BASELINE_NAME}",
    "database_bound_16_vs_baseline": f"database-bound, 16 workers: ledger / {BASELINE_NAME}",
    "database_bound_16_vs_pgbench": "database-bound, 16 workers: 2 x releases/s / pgbench tps",
    "contention_p99_gateway_0ms": "hot contention, 32 callers, 0 ms gateway: p99 of every caller",
    "contention_losers_p99_gateway_200ms": "hot contention, 32 callers, 200 ms gateway: "
    "p99 of the callers that did not transfer",
    **{
        f"{tool}_{store}_events_per_s": f"{run_name({'what': tool})}, {STORES[store]}, "
        f"log of {AUDIT_SCALE_EVENTS:,} events: events/s"
        for tool, store in TARGET_TOOL_RATES
    },
    **{
        f"peak_rss_{store}": f"peak RSS of every tool, {STORES[store]}, "
        f"log of {AUDIT_SCALE_EVENTS:,} events"
        for store in STORES
    },
    **{
        f"incremental_{tool}_{store}": f"{tool} from its checkpoint after new events, "
        f"{STORES[store]}, log of {AUDIT_SCALE_EVENTS:,} events: s"
        for store in STORES
        for tool in CHECKPOINTED
    },
}


def _measured_target(r: Row) -> str:
    """A target's measured value, in its unit, with what it depends on."""
    if r.get("error"):
        return f"failed: {r['error']}"
    unit, value = r.get("unit"), r["value"]
    if unit is None:  # the write path's targets
        if r["key"].startswith("contention"):
            return f"{num(value)} ms"
        return pct(value) if r["key"].endswith("pgbench") else times(value)
    if value is None:
        return "n/a"
    shown = {
        "events/s": f"{num(value)} events/s",
        "MB": f"{num(value)} MB ({r.get('tool')})",
        "s": f"{num(value, 3)} s; goal < {num(r.get('goal_s'), 3)} s "
        f"({num(r.get('new_events'))} new events, {num(r.get('new_events_s'), 3)} s at the "
        "full-run rate)"
        + ("" if r.get("incremental") else "; did not continue from its checkpoint"),
    }[unit]
    if not r.get("at_scale"):
        shown += f"; log of {num(r.get('events'))} events, not at scale"
    return shown


def _target_verdict(r: Row) -> str:
    if r.get("error"):
        return "**run failed**"
    if r.get("unit") is not None and r["value"] is not None and not r.get("at_scale"):
        return "not at scale"
    return holds(r["holds"])


def targets(results: Results) -> Table:
    return table(
        [{**v, "key": k, "label": TARGET_LABELS[k]} for k, v in results["targets"].items()],
        col("target (the ledger as shipped)", "label"),
        col("required", "target"),
        ("measured", _measured_target),
        ("verdict", _target_verdict),
    )


def checks(results: Results) -> Table:
    return table(
        results.get("checks", []),
        col("configuration", "label"),
        col("release", "first"),
        col("release again", "again"),
        col("gateway calls, 16-caller race", "race_gateway_calls"),
        ("check", lambda c: "ok" if c["ok"] else "**FAILED**"),
    )


def database_bound(results: Results) -> Table:
    def commits(r: Row) -> float:
        return float(r["per_second"] * (COMMITS_PER_RELEASE if r["system"] == "ledger" else 1))

    def on_pg(show: Callable[[Row], str]) -> Callable[[Row], str]:
        return lambda r: show(r) if r["store"] == "postgres" else "-"

    return table(
        # The stock and default-pool rows are in the settings table.
        [
            r
            for r in results.get("database_bound", [])
            if r["variant"] == "ours"
            and (r["store"] != "postgres" or r["pool_size"] == r["workers"])
        ],
        col("system", "label"),
        col("workers", "workers"),
        releases("releases/s"),
        col("p50 ms", "p50_ms", 2),
        col("p99 ms", "p99_ms", 2),
        ("commits/s", lambda r: num(commits(r))),
        (
            "vs baseline",
            on_pg(lambda r: times(ratio(rate(r), rate(baseline_db(results, r["workers"]))))),
        ),
        ("vs pgbench", on_pg(lambda r: pct(ratio(commits(r), pgbench_tps(results, r["workers"]))))),
        col("client CPU ms/release", "client_cpu_ms_per_release", 2),
        per_repetition("releases/s per repetition"),
    )


def pgbench(results: Results) -> Table:
    blocks = {"pgbench": "database-bound", "prototypes_pgbench": "prototypes"}
    return table(
        [{**r, "block": name} for key, name in blocks.items() for r in results.get(key, [])],
        col("block", "block"),
        col("pgbench script", "script"),
        col("clients", "clients"),
        col("tps (median)", "tps"),
        ("= releases/s at 2 commits", lambda r: num(r["tps"] / COMMITS_PER_RELEASE)),
        per_repetition("tps per repetition", "tps_runs"),
    )


def latency_bound(results: Results) -> Table:
    found = results.get("latency_bound", [])
    base = rate(find(found, system="baseline"))
    return table(
        found,
        col("system", "label"),
        col("callers", "workers"),
        releases("releases/s"),
        col("p50 ms", "p50_ms"),
        col("p99 ms", "p99_ms"),
        ("vs baseline", lambda r: times(ratio(rate(r), base))),
        per_repetition(),
    )


def contention(results: Results) -> Table:
    return table(
        results.get("contention", []),
        col("system", "label"),
        ("gateway ms", lambda r: num(r["gateway_latency_s"] * 1000, 0)),
        ("rounds x callers", lambda r: f"{r['rounds']} x {r['callers']}"),
        (
            "one transfer per round",
            lambda r: "yes" if r["exactly_one_transfer_every_round"] else "**NO**",
        ),
        col("p50 ms", "p50_ms", 2),
        col("p99 ms", "p99_ms", 2),
        col("p99 ms, callers that did not transfer", "losers_p99_ms", 2),
        col("p99 ms until all answered", "all_answered_p99_ms", 2),
        ("outcomes", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))),
    )


def replay(results: Results) -> Table:
    found = results.get("replay") or {}
    rows = [
        {"command": c, "status": "not run: no bench/replay.py"} for c in found.get("commands", [])
    ]
    for r in found.get("runs", []):
        result = r.get("result")
        if not result:
            rows.append({"command": r["command"], "status": f"**{r['status']}**"})
            continue
        for m in result.get("runs") or [result]:
            shown = {**m, "write_s": result.get("write_s")}
            rows.append({**shown, "command": r["command"], "status": _status(m)})
    return table(
        rows,
        ("command", lambda r: f"`{r['command']}`"),
        col("status", "status"),
        ("replay", lambda r: run_name(r) if "what" in r else "-"),
        col("events", "events"),
        col("events/s", "events_per_s"),
        col("replay s", "seconds", 2),
        col("peak RSS MB", "peak_rss_mb"),
        col("RSS before MB", "rss_before_mb"),
        col("writing the log s", "write_s"),
    )


def _status(m: Row) -> str:
    if "error" in m:
        return f"**failed**: {m['error']}"
    return "ok" if m.get("ok", True) else "**check failed**"


def audit_at_scale(results: Results, store: str) -> Table:
    """Each limit and tool over one store's log: events/s, memory, and ratio to the limits."""
    result = replay_result(results, store)
    limits = {what: rate_of(measurement(result, what)) for what in LIMITS}
    rows = [m for what in (*LIMITS, *TOOLS) if (m := measurement(result, what)) is not None]

    def versus(limit: str) -> Column:
        def cell(r: Row) -> str:
            if r["what"] in LIMITS or (limit == "raw_sha256" and r["what"] != "verify"):
                return "-"
            return pct(ratio(rate_of(r), limits[limit]))

        return f"vs {limit}", cell

    return table(
        rows,
        ("measured", run_name),
        ("log events", lambda r: num((result or {}).get("events"))),
        col("events", "events"),
        col("s", "seconds", 2),
        col("events/s", "events_per_s"),
        col("events/s of CPU", "events_per_cpu_s"),
        col("peak RSS MB", "peak_rss_mb"),
        col("RSS before MB", "rss_before_mb"),
        versus("raw_read"),
        versus("raw_sha256"),
        ("check", _status),
    )


def audit_sqlite(results: Results) -> Table:
    return audit_at_scale(results, "sqlite")


def audit_postgres(results: Results) -> Table:
    return audit_at_scale(results, "postgres")


def audit_incremental(results: Results) -> Table:
    """Audit and verify from their checkpoints after new events, against the goal."""
    rows = [
        found
        for store in STORES
        for tool in CHECKPOINTED
        if (found := incremental(replay_result(results, store), tool)) is not None
    ]

    def verdict(r: Row) -> str:
        return "**run failed**" if "error" in r else holds(r["holds"])

    return table(
        rows,
        ("store", lambda r: STORES.get(r["store"], str(r["store"]))),
        col("tool", "tool"),
        col("full run events/s", "full_events_per_s"),
        col("new events", "new_events"),
        col("s", "seconds", 3),
        col("events read", "events_read"),
        col("continued from the checkpoint", "incremental"),
        ("checkpoint", lambda r: r.get("error") or num(r.get("checkpoint_status"))),
        col("new events at the full-run rate, s", "new_events_s", 3),
        ("goal: less than, s", lambda r: num(r["goal_s"], 3)),
        ("goal", verdict),
        ("then listing every row in flight, s", lambda r: num(r.get("in_flight_listed_s"), 3)),
    )


def settings(results: Results) -> Table:
    s = results["settings"]
    return table(
        [{"key": k, "stock": s["stock"][k], "ours": v} for k, v in s["ours"].items()],
        col("eventsourcing datastore setting", "key"),
        col("stock", "stock"),
        col("ours", "ours"),
        ("", lambda r: "differs" if r["key"] in s["differ"] else ""),
    )


def settings_measured(results: Results) -> Table:
    return table(
        [
            {**r, "scenario": scenario.replace("_", "-")}
            for scenario in ("database_bound", "latency_bound")
            for r in results.get(scenario, [])
            if r["system"] == "ledger"
            and r["store"] == "postgres"
            and r["variant"] in ("stock", "ours")
            and (r["workers"] == TOP or scenario == "latency_bound")
        ],
        col("scenario", "scenario"),
        col("configuration", "label"),
        col("workers", "workers"),
        releases("releases/s"),
        col("p99 ms", "p99_ms", 2),
        per_repetition(),
    )


def hot_path(results: Results) -> Table:
    profiles = results.get("profile", [])
    flat = [{**p, **p["per_release"], **p["buckets_share"]} for p in profiles]
    lines = [
        col("round trips per release", "round_trips"),
        col("statements per release", "statements"),
        col("round trips while the table lock is held", "round_trips_after_lock_table"),
        col("wall ms per release (1 worker, unprofiled)", "wall_ms_per_release", 2),
        col("client CPU ms per release (unprofiled)", "client_cpu_ms_per_release", 2),
        *[
            (f"profile share: {b}", lambda p, b=b: pct(p.get(b)))
            for b in dict.fromkeys(b for p in profiles for b in p["buckets_share"])
        ],
        ("full profile (HTML, not committed)", lambda p: f"`{p['html']}`"),
    ]
    rows = [[name, *[cell(p) for p in flat]] for name, cell in lines]
    return ["", *[f"`{p['variant']}`" for p in profiles]], rows if profiles else []


def _variants(protos: list[Row]) -> list[str]:
    return list(dict.fromkeys(p["variant"] for p in protos if p["system"] == "ledger"))


def prototypes(results: Results) -> Table:
    protos = results.get("prototypes", [])
    pg16 = pgbench_tps(results, TOP, block="prototypes_pgbench")

    def of(variant: str, workers: int, system: str = "ledger") -> float | None:
        return rate(find(protos, system=system, variant=variant, workers=workers))

    def vs(over: str, base: float | None) -> Callable[[Row], str]:
        return lambda r: "-" if r[over] is None else times(ratio(r[over], base))

    latency = releases("latency-bound rel/s", "lat", "lat_errors")
    rows = []
    for v in _variants(protos):
        db = find(protos, system="ledger", variant=v, workers=TOP)
        lat = find(protos, system="ledger", variant=v, workers=LATENCY_CALLERS)
        safe = (db or lat or {}).get("safe")
        rows.append({**(db or {}), "variant": v, "safe": safe, "db": rate(db), "lat": rate(lat),
                     "lat_errors": raised(lat)})  # fmt: skip
    return table(
        rows,
        ("prototype", lambda r: f"`{r['variant']}`"),
        ("keeps every guarantee", lambda r: "yes" if r.get("safe") else "**no**"),
        releases("16 workers rel/s", "db"),
        ("gain", vs("db", of("ours", TOP))),
        col("p99 ms", "p99_ms"),
        col("CPU ms/release", "client_cpu_ms_per_release", 2),
        ("vs baseline", vs("db", of("ours", TOP, "baseline"))),
        (
            "vs pgbench",
            lambda r: pct(ratio(None if r["db"] is None else r["db"] * COMMITS_PER_RELEASE, pg16)),
        ),
        (latency[0], lambda r: "-" if r["lat"] is None else latency[1](r)),
        ("gain", vs("lat", of("ours", LATENCY_CALLERS))),
        ("vs baseline", vs("lat", of("ours", LATENCY_CALLERS, "baseline"))),
    )


def prototype_baseline(results: Results) -> Table:
    return table(
        [r for r in results.get("prototypes", []) if r["system"] == "baseline"],
        ("baseline", lambda r: f"{r['label']}, {r['workers']} workers"),
        releases("releases/s"),
        col("p99 ms", "p99_ms"),
        per_repetition(),
    )


def prototype_changes(results: Results) -> Table:
    protos = results.get("prototypes", [])
    found = [find(protos, system="ledger", variant=v) or {} for v in _variants(protos)]
    return table(
        [r for r in found if r.get("proposal")],
        ("prototype", lambda r: f"`{r['variant']}`"),
        col("what it is", "summary"),
        col("the change to src/ it stands for", "proposal"),
    )


def bounds(results: Results) -> Table:
    ledger, pg16 = ledger_db(results, TOP) or {}, pgbench_tps(results, TOP)
    ceiling = pgbench_tps(results, TOP, "recorder_one_round_trip")
    need = None if pg16 is None else pg16 * TARGET_DB_VS_PGBENCH / COMMITS_PER_RELEASE
    cpu = ledger.get("client_cpu_ms_per_release")

    def cap(row: Row | None) -> str:
        """Releases/s one process allows at the row's client CPU: Python runs on one core."""
        ms = None if row is None else row.get("client_cpu_ms_per_release")
        return num(1000 / ms if ms else None)

    def commits(releases: float | None) -> float | None:
        return None if releases is None else releases * COMMITS_PER_RELEASE

    target = f"{TARGET_DB_VS_PGBENCH:.0%} of single_insert tps at 16 clients / 2 commits"
    lock = "recorder_one_round_trip tps at 16 clients: lock, NOTIFY and insert in one call"
    one_core = "1000 / client CPU ms per release (threads share one core for Python)"
    core_share = None if need is None or cpu is None else need * cpu / 1000
    rows = [
        ["releases/s the pgbench target needs", num(need), target],
        ["table-lock ceiling, commits/s", num(ceiling), lock],
        [
            "the pgbench target, as a share of the ceiling",
            pct(ratio(commits(need), ceiling)),
            "2 x the first row / the ceiling",
        ],
        [
            "the ledger at 16 workers, as a share of the ceiling",
            pct(ratio(commits(rate(ledger)), ceiling)),
            "2 x releases/s / the ceiling",
        ],
        ["ledger: most releases/s one process allows at its client CPU", cap(ledger), one_core],
        [
            "the pgbench target, as a share of one core in Python",
            pct(core_share),
            "the first row x the ledger's client CPU ms per release / 1000",
        ],
        [
            "baseline: most releases/s one process allows at its client CPU",
            cap(baseline_db(results, TOP)),
            "as for the ledger",
        ],
    ]
    return ["bound", "value", "computed as"], rows


def repetitions(results: Results) -> Table:
    rows = []
    for block, key, pg_key in (
        ("database-bound", "database_bound", "pgbench"),
        ("prototypes", "prototypes", "prototypes_pgbench"),
    ):
        ledger = ledger_db(results, TOP, key)
        bench = find(results.get(pg_key, []), script="single_insert", clients=TOP)
        if ledger is not None and bench is not None:
            pairs = zip(ledger["per_second_runs"], bench["tps_runs"], strict=False)
            for n, (releases, tps) in enumerate(pairs, 1):
                rows.append({"block": block, "n": n, "releases": releases, "tps": tps})

    def share(r: Row) -> float | None:
        return ratio(r["releases"] * COMMITS_PER_RELEASE, r["tps"])

    def verdict(r: Row) -> str:
        value = share(r)
        return holds(None if value is None else value >= TARGET_DB_VS_PGBENCH)

    return table(
        rows,
        col("block", "block"),
        col("repetition", "n"),
        col("ledger releases/s, 16 workers", "releases"),
        col("pgbench tps, 16 clients", "tps"),
        ("2 x releases/s / pgbench tps", lambda r: pct(share(r))),
        ("pgbench target", verdict),
    )
