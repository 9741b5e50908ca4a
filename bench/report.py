"""Targets and ``docs/performance.md``, from ``bench/results.json`` and the page's template.

``python bench/report.py bench/results.json --docs docs/performance.md`` regenerates the
page from the results without measuring anything (without ``--docs`` it prints the page);
``bench/run.py`` calls ``write_report`` after every run.

The prose is written by hand in ``performance.md.in``, beside this file, and quotes no
figure: the figures are in the tables of ``report_tables.py``, computed from the results.
A line ``{{name}}`` in the template places the table ``name``. The tables are numbered
in page order and labelled ("Table 7: hot contention") so that each claim of the prose
can name the table behind it. A template that leaves a table out, names a table that
does not exist, places the tables out of order or cites a table number past the last is
an error, so the page cannot lose a table silently.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import report_tables as t

__all__ = ["TEMPLATE", "TemplateError", "evaluate_targets", "render", "tables", "write_report"]

TEMPLATE = Path(__file__).resolve().with_name("performance.md.in")
PLACEHOLDER = re.compile(r"^\{\{(\w+)\}\}$", re.MULTILINE)
CITATION = re.compile(r"\bTables? (\d+(?:(?:, | and )\d+)*)")
Tables = dict[str, tuple[str, t.Table]]


class TemplateError(ValueError):
    """The page's template and its tables do not match."""


def evaluate_targets(results: t.Results) -> dict[str, Any]:
    """Every performance target, each with the measured value and whether it holds.

    The write path's targets first (latency-bound, database-bound, contention), then
    the audit at scale: each tool's events/s and peak memory on a log of
    ``AUDIT_SCALE_EVENTS`` (a smaller log is not at scale: measured, no verdict), and
    the incremental runs.
    """
    return {**_write_path_targets(results), **_audit_targets(results)}


def _write_path_targets(results: t.Results) -> dict[str, Any]:
    ledger, base = t.ledger_db(results, t.TOP), t.baseline_db(results, t.TOP)
    commits = None if ledger is None else ledger["per_second"] * t.COMMITS_PER_RELEASE
    lat, hot = results.get("latency_bound", []), results.get("contention", [])

    def contended(latency_s: float, key: str) -> dict[str, Any]:
        row = t.find(
            hot, system="ledger", store="postgres", variant="ours", gateway_latency_s=latency_s
        )
        if row is None:
            return {"value": None, "one_transfer_every_round": None}
        return {
            "value": row[key],
            "one_transfer_every_round": row["exactly_one_transfer_every_round"],
        }

    within = f"< {t.TARGET_CONTENTION_P99_MS} ms"
    found: dict[str, dict[str, Any]] = {
        "latency_bound_vs_baseline": {
            "target": f">= {t.TARGET_LATENCY_RATIO}x",
            "value": t.ratio(
                t.rate(t.find(lat, system="ledger", variant="ours")),
                t.rate(t.find(lat, system="baseline")),
            ),
        },
        "database_bound_16_vs_baseline": {
            "target": f">= {t.TARGET_DB_VS_BASELINE}x",
            "value": t.ratio(t.rate(ledger), t.rate(base)),
        },
        "database_bound_16_vs_pgbench": {
            "target": f">= {t.TARGET_DB_VS_PGBENCH}",
            "formula": "releases/s x 2 commits / pgbench tps (single-row INSERT, 16 clients)",
            "value": t.ratio(commits, t.pgbench_tps(results, t.TOP)),
        },
        "contention_p99_gateway_0ms": {"target": within, **contended(0.0, "p99_ms")},
        "contention_losers_p99_gateway_200ms": {
            "target": within,
            **contended(0.2, "losers_p99_ms"),
        },
    }
    # A target computed from timed releases that raised is not measured cleanly.
    sources = {
        "latency_bound_vs_baseline": [
            t.find(lat, system="ledger", variant="ours"),
            t.find(lat, system="baseline"),
        ],
        "database_bound_16_vs_baseline": [ledger, base],
        "database_bound_16_vs_pgbench": [ledger],
    }
    for key, rows in sources.items():
        failed = [r for r in rows if r is not None and t.raised(r)]
        if failed:
            found[key]["error"] = "timed releases raised: " + "; ".join(
                f"{t.raised(r):,} of {r['label']}" for r in failed
            )
    at_least = [t.TARGET_LATENCY_RATIO, t.TARGET_DB_VS_BASELINE, t.TARGET_DB_VS_PGBENCH]
    limits = [(limit, False) for limit in at_least] + [(t.TARGET_CONTENTION_P99_MS, True)] * 2
    for target, (limit, below) in zip(found.values(), limits, strict=True):
        value = target["value"]
        holds = None if value is None else (value < limit if below else value >= limit)
        if target.get("one_transfer_every_round") is False or "error" in target:
            holds = False
        target["holds"] = holds
    return found


def _audit_targets(results: t.Results) -> dict[str, Any]:
    """The audit-scale targets, from the replay section's result per store."""
    found: dict[str, dict[str, Any]] = {}
    stores = {store: t.replay_result(results, store) for store in t.STORES}

    def scaled(store: str, target: dict[str, Any], holds: bool | None) -> dict[str, Any]:
        """``target`` with the log's size; a verdict only at scale."""
        result = stores[store]
        events = None if result is None else result.get("events")
        at_scale = events is not None and events >= t.AUDIT_SCALE_EVENTS
        if result is None and (failure := t.replay_failure(results, store)):
            target.setdefault("error", f"replay {failure}")
        return {
            **target,
            "events": events,
            "at_scale": at_scale,
            "holds": holds if at_scale else None,
        }

    for (tool, store), limit in t.TARGET_TOOL_RATES.items():
        run = t.measurement(stores[store], tool)
        value = t.rate_of(run)
        target = {"target": f">= {limit:,} events/s", "unit": "events/s", "value": value}
        if run is not None and "error" in run:
            target["error"] = run["error"]
        found[f"{tool}_{store}_events_per_s"] = scaled(
            store, target, None if value is None else value >= limit
        )
    for store in t.STORES:
        result = stores[store]
        full = [t.measurement(result, tool) for tool in t.TOOLS]
        done = [
            r
            for r in [*full, *(t.measurement(result, x, "incremental") for x in t.CHECKPOINTED)]
            if r is not None and "error" not in r
        ]
        worst = max(done, key=lambda r: r["peak_rss_mb"], default=None)
        peak = None if worst is None else worst["peak_rss_mb"]
        if peak is not None and peak > t.TARGET_PEAK_RSS_MB:
            holds: bool | None = False
        else:  # it holds once every tool's full run is measured (and none is over)
            holds = True if all(r is not None and "error" not in r for r in full) else None
        target = {
            "target": f"<= {t.TARGET_PEAK_RSS_MB:g} MB, each tool",
            "unit": "MB",
            "value": peak,
            "tool": None if worst is None else t.run_name(worst),
        }
        found[f"peak_rss_{store}"] = scaled(store, target, holds)
    for store in t.STORES:
        for tool in t.CHECKPOINTED:
            run = t.incremental(stores[store], tool) or {}
            target = {
                "target": f"< {t.TARGET_INCREMENTAL_BASE_S:g} s + new events / full-run events/s",
                "unit": "s",
                "value": None if "error" in run else run.get("seconds"),
                **{k: run.get(k) for k in ("goal_s", "new_events", "new_events_s", "incremental")},
            }
            if "error" in run:
                target["error"] = run["error"]
            found[f"incremental_{tool}_{store}"] = scaled(store, target, run.get("holds"))
    return found


def tables(results: t.Results, source: str) -> Tables:
    """Every table of the page, in page order: name -> (title, table)."""
    r = t.current_names({**results, "targets": evaluate_targets(results)})
    return {
        "run": ("the run", t.run(r, source)),
        "targets": ("targets", t.targets(r)),
        "checks": ("exactly-once checks", t.checks(r)),
        "database_bound": ("database-bound", t.database_bound(r)),
        "pgbench": ("PostgreSQL's limit (pgbench)", t.pgbench(r)),
        "latency_bound": ("latency-bound", t.latency_bound(r)),
        "contention": ("hot contention", t.contention(r)),
        "replay": ("replay", t.replay(r)),
        "audit_sqlite": ("the audit tools at scale, SQLite", t.audit_sqlite(r)),
        "audit_postgres": ("the audit tools at scale, PostgreSQL", t.audit_postgres(r)),
        "audit_incremental": ("incremental runs after new events", t.audit_incremental(r)),
        "settings": ("datastore settings", t.settings(r)),
        "settings_measured": ("stock settings against ours", t.settings_measured(r)),
        "hot_path": ("the hot path", t.hot_path(r)),
        "prototypes": ("prototypes", t.prototypes(r)),
        "prototype_baseline": ("the baseline in the prototype block", t.prototype_baseline(r)),
        "prototype_changes": ("what each prototype stands for", t.prototype_changes(r)),
        "bounds": ("what bounds the figures", t.bounds(r)),
        "repetitions": ("the pgbench ratio per repetition", t.repetitions(r)),
    }


def markdown(number: int, title: str, table: t.Table) -> str:
    """The table's label, then the table (or a note that nothing was measured)."""
    header, rows = table
    label = f"**Table {number}: {title}**\n\n"
    if not rows:
        return label + "Not measured in this run."

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return label + "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def fill(template: str, found: Tables) -> str:
    """``template`` with each ``{{name}}`` line replaced by its labelled table."""
    placed = PLACEHOLDER.findall(template)
    problems = []
    if template.count("{{") != len(placed):
        problems.append("a placeholder must stand alone on its line, as {{name}}")
    if unknown := [name for name in placed if name not in found]:
        problems.append(f"no such table: {', '.join(unknown)}")
    if missing := [name for name in found if name not in placed]:
        problems.append(f"tables not placed: {', '.join(missing)}")
    if not (unknown or missing) and placed != list(found):
        problems.append(f"tables placed twice or out of order (the order: {', '.join(found)})")
    cited = {int(n) for group in CITATION.findall(template) for n in re.findall(r"\d+", group)}
    if past := sorted(n for n in cited if not 1 <= n <= len(found)):
        problems.append(f"cites tables that do not exist: {', '.join(map(str, past))}")
    if problems:
        raise TemplateError("the page's template does not match its tables: " + "; ".join(problems))
    number = {name: n for n, name in enumerate(found, 1)}
    return PLACEHOLDER.sub(lambda m: markdown(number[m[1]], *found[m[1]]), template)


def render(results: t.Results, source: str, template: str | None = None) -> str:
    """The whole of docs/performance.md (``template``: the text of the template file)."""
    text = TEMPLATE.read_text() if template is None else template
    return fill(text, tables(results, source)).rstrip() + "\n"


def write_report(results: t.Results, docs: Path, results_path: Path) -> None:
    """Write ``docs`` from ``results``."""
    docs.write_text(render(results, _shown(results_path)))


def _shown(results_path: Path) -> str:
    """The results file as the page names it: relative to the repository, else by name."""
    try:
        return str(results_path.resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:  # outside the repository: no machine's path in the page
        return results_path.name


if __name__ == "__main__":
    # python bench/report.py [RESULTS] [--docs PAGE]: prints the page unless --docs names it.
    parser = argparse.ArgumentParser(description="Render docs/performance.md from results.")
    parser.add_argument("results", nargs="?", type=Path)
    parser.add_argument("--docs", type=Path, help="write the page here (default: print it)")
    args = parser.parse_args()
    source = args.results or Path(__file__).resolve().parent / "results.json"
    data = json.loads(source.read_text())
    if args.docs is None:
        print(render(data, _shown(source)), end="")
    else:
        write_report(data, args.docs, source)
