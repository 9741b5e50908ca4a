"""docs/performance.md: hand-written prose from bench/performance.md.in, tables from results."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PAGE = ROOT / "docs" / "performance.md"


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    """bench/report.py, imported as bench/run.py imports it (bench/ on the path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("report")


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return dict(json.loads((BENCH / "results.json").read_text()))


@pytest.fixture(scope="module")
def template(report: ModuleType) -> str:
    return str(report.TEMPLATE.read_text())


SCALE = 10_000_000
NEW = 10_000
KEPT_COMMAND = (
    "python bench/replay.py --store {store} --events 10000000 --kept {kept} --also verify,project"
)


def measured(
    what: str, per_second: int, rss: float, events: int = SCALE, **extra: Any
) -> dict[str, Any]:
    """One measurement as bench/replay.py records it (a full run unless ``mode`` says so)."""
    run = {"what": what, "mode": "full", "events": events, "events_read": events}
    run |= {"seconds": round(events / per_second, 3), "events_per_s": per_second}
    run |= {"cpu_seconds": 1.0, "events_per_cpu_s": per_second, "load_avg_1m": 1.0, "ok": True}
    return run | {"rss_before_mb": 55.0, "peak_rss_mb": rss, **extra}


def incremental_run(what: str, seconds: float, *, continued: bool = True) -> dict[str, Any]:
    """An incremental run of ``what`` after ``NEW`` new events."""
    return measured(what, round(NEW / seconds), 90.0, events=NEW, mode="incremental") | {
        "seconds": seconds,
        "incremental": continued,
        "checkpoint_status": "continued" if continued else "stale: replayed the whole log",
    }


def replay_result(store: str, runs: list[dict[str, Any]], events: int = SCALE) -> dict[str, Any]:
    """bench/replay.py's JSON line for one store."""
    return {
        "store": store,
        "events": events,
        "kept": True,
        "write_s": None,
        "runs": runs,
        "appended": {"events": NEW, "payouts": 3075, "write_s": 1.5},
    }


def replay_section(*results: dict[str, Any]) -> dict[str, Any]:
    """The replay section of results.json, one command per store."""
    kept = {"sqlite": "bench/.work/replay-10m", "postgres": "bench_replay_10m"}
    runs = [
        {
            "command": KEPT_COMMAND.format(store=r["store"], kept=kept[r["store"]]),
            "status": "ok" if all("error" not in m for m in r["runs"]) else "failed",
            "returncode": 0,
            "wall_s": 100.0,
            "result": r,
            "stderr_tail": "",
        }
        for r in results
    ]
    return {"status": "ran", "events": SCALE, "kept": kept, "runs": runs}


# SQLite meets every audit-scale target; PostgreSQL misses audit's rate, audit's memory
# and both incremental goals (audit too slow, verify replayed the whole log).
SQLITE_RUNS = [
    measured("raw_read", 1_000_000, 60.0),
    measured("raw_sha256", 800_000, 60.0),
    measured("audit", 260_000, 120.0),
    measured("verify", 320_000, 250.0),
    measured("project", 160_000, 140.0),
    incremental_run("audit", 0.5),
    incremental_run("verify", 0.9),
]
POSTGRES_RUNS = [
    measured("raw_read", 600_000, 60.0),
    measured("raw_sha256", 500_000, 60.0),
    measured("audit", 140_000, 310.0),
    measured("verify", 200_000, 200.0),
    measured("project", 150_000, 150.0),
    incremental_run("audit", 1.2),
    incremental_run("verify", 0.3, continued=False),
]


@pytest.fixture(scope="module")
def synthetic(results: dict[str, Any]) -> dict[str, Any]:
    """The committed results with a replay section of the audit at scale (no timing)."""
    section = replay_section(
        replay_result("sqlite", SQLITE_RUNS), replay_result("postgres", POSTGRES_RUNS)
    )
    return {**results, "replay": section}


def cells(report: ModuleType, results: dict[str, Any], name: str) -> list[dict[str, str]]:
    """Table ``name``'s rows, each as {header: cell}."""
    header, rows = report.tables(results, "bench/results.json")[name][1]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_every_table_is_placed_labelled_and_filled(
    report: ModuleType, synthetic: dict[str, Any]
) -> None:
    """Each table appears once, in order, under its label, with rows from the results."""
    titles = [title for title, _ in report.tables(synthetic, "bench/results.json").values()]

    page = report.render(synthetic, "bench/results.json")

    assert "{{" not in page
    labels = re.findall(r"^\*\*Table (\d+): (.+)\*\*$", page, re.MULTILINE)
    assert labels == [(str(n), title) for n, title in enumerate(titles, 1)]
    assert "Not measured in this run." not in page
    for label in labels:
        after = page.split(f"**Table {label[0]}: {label[1]}**\n\n", 1)[1]
        assert after.startswith("| "), label


def test_the_committed_page_is_the_rendered_one(report: ModuleType, tmp_path: Path) -> None:
    """docs/performance.md is what the report writes from bench/results.json, as run.py does."""
    results_path = BENCH / "results.json"
    written = tmp_path / "performance.md"

    report.write_report(json.loads(results_path.read_text()), written, results_path)

    assert written.read_text() == PAGE.read_text()


def test_the_command_line_prints_the_page() -> None:
    """`python bench/report.py bench/results.json` prints the page and writes nothing."""
    out = subprocess.run(
        [sys.executable, "bench/report.py", "bench/results.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )

    assert out.stdout == PAGE.read_text()


def test_the_prose_quotes_no_figures(template: str) -> None:
    """Figures live in the tables: the prose names tables, never a number from the results."""
    prose = re.sub(r"```.*?```|<!--.*?-->|^\{\{\w+\}\}$", "", template, flags=re.DOTALL | re.M)
    prose = re.sub(r"`[^`\n]+`", "", prose)  # names in code (`raw_sha256`), not figures
    prose = re.sub(r"\bTables? \d+(?:(?:, | and )\d+)*|\bp(?:50|99)\b", "", prose)

    assert re.findall(r".{0,30}\d.{0,30}", prose) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("{{contention}}\n", ""), "tables not placed: contention"),
        (
            lambda t: t.replace("{{audit_incremental}}\n", ""),
            "tables not placed: audit_incremental",
        ),
        (lambda t: t + "\n{{nonesuch}}\n", "no such table: nonesuch"),
        (lambda t: t.replace("{{replay}}", "{{ replay }}"), "stand alone on its line"),
        (lambda t: t + "\n{{run}}\n", "placed twice or out of order"),
        (lambda t: t + "\nAs Table 99 shows.\n", "cites tables that do not exist: 99"),
    ],
    ids=["missing", "missing-new", "unknown", "malformed", "twice", "cited"],
)
def test_a_template_that_does_not_match_the_tables_fails(
    report: ModuleType,
    results: dict[str, Any],
    template: str,
    change: Callable[[str], str],
    message: str,
) -> None:
    """A table left out, an unknown or malformed placeholder, or a bad citation is an error."""
    with pytest.raises(report.TemplateError, match=re.escape(message)):
        report.render(results, "bench/results.json", change(template))


def test_each_tool_is_shown_with_its_ratio_to_the_limits(
    report: ModuleType, synthetic: dict[str, Any]
) -> None:
    """Per store: the limits, then each tool's events/s, memory and share of raw_read."""
    rows = {r["measured"].split(":")[0]: r for r in cells(report, synthetic, "audit_sqlite")}

    assert list(rows) == ["raw_read", "raw_sha256", "audit", "verify", "project --rebuild"]
    assert rows["audit"]["events/s"] == "260,000"
    assert rows["audit"]["peak RSS MB"] == "120.0"
    assert rows["audit"]["vs raw_read"] == "26.0%"
    assert rows["audit"]["vs raw_sha256"] == "-"
    assert rows["verify"]["vs raw_read"] == "32.0%"
    assert rows["verify"]["vs raw_sha256"] == "40.0%"
    assert rows["raw_read"]["vs raw_read"] == "-"
    assert {r["check"] for r in rows.values()} == {"ok"}
    postgres = cells(report, synthetic, "audit_postgres")
    assert postgres[2]["measured"] == "audit"
    assert postgres[2]["vs raw_read"] == f"{140_000 / 600_000:.1%}"


def test_the_incremental_runs_are_held_to_one_second_plus_the_new_events(
    report: ModuleType, synthetic: dict[str, Any]
) -> None:
    """Goal: seconds < 1 + new events / full-run events/s, and the run continued."""
    rows = cells(report, synthetic, "audit_incremental")

    assert [(r["store"], r["tool"]) for r in rows] == [
        ("SQLite", "audit"),
        ("SQLite", "verify"),
        ("PostgreSQL", "audit"),
        ("PostgreSQL", "verify"),
    ]
    sqlite_audit, _, postgres_audit, postgres_verify = rows
    assert sqlite_audit["new events"] == "10,000"
    assert sqlite_audit["new events at the full-run rate, s"] == f"{NEW / 260_000:.3f}"
    assert sqlite_audit["goal: less than, s"] == f"{1 + NEW / 260_000:.3f}"
    assert sqlite_audit["goal"] == "**holds**"
    assert postgres_audit["goal"] == "**does not hold**"  # 1.2 s against 1.071 s
    assert postgres_verify["continued from the checkpoint"] == "no"
    assert postgres_verify["goal"] == "**does not hold**"  # fast, but replayed the whole log


def test_the_audit_targets_are_evaluated_from_the_run(
    report: ModuleType, synthetic: dict[str, Any]
) -> None:
    """Every audit-scale target, beside the write path's, from the same results."""
    targets = report.evaluate_targets(synthetic)
    verdicts = {key: target["holds"] for key, target in targets.items()}

    write_path = {
        key: synthetic["targets"][key]["holds"]  # the committed run's own verdicts
        for key in (
            "latency_bound_vs_baseline",
            "database_bound_16_vs_baseline",
            "database_bound_16_vs_pgbench",
            "contention_p99_gateway_0ms",
            "contention_losers_p99_gateway_200ms",
        )
    }
    assert verdicts == {
        **write_path,
        "verify_sqlite_events_per_s": True,
        "verify_postgres_events_per_s": True,
        "audit_sqlite_events_per_s": True,
        "audit_postgres_events_per_s": False,
        "project_sqlite_events_per_s": True,
        "project_postgres_events_per_s": True,  # exactly the target: at least is enough
        "peak_rss_sqlite": True,
        "peak_rss_postgres": False,
        "incremental_audit_sqlite": True,
        "incremental_verify_sqlite": True,
        "incremental_audit_postgres": False,
        "incremental_verify_postgres": False,
    }
    assert targets["peak_rss_sqlite"]["value"] == 250.0
    assert targets["peak_rss_postgres"]["tool"] == "audit"
    shown = {r["target (the ledger as shipped)"]: r for r in cells(report, synthetic, "targets")}
    row = shown["audit, PostgreSQL, log of 10,000,000 events: events/s"]
    assert (row["required"], row["verdict"]) == (">= 150,000 events/s", "**does not hold**")


def test_a_log_below_the_targets_scale_gets_no_verdict(
    report: ModuleType, results: dict[str, Any]
) -> None:
    """A quick run's small log is measured and shown, but not held to the 10M targets."""
    small = [{**m, "events": 10_000} for m in SQLITE_RUNS]
    quick = {**results, "replay": replay_section(replay_result("sqlite", small, 10_000))}

    targets = report.evaluate_targets(quick)
    shown = {r["target (the ledger as shipped)"]: r for r in cells(report, quick, "targets")}

    assert targets["audit_sqlite_events_per_s"]["value"] == 260_000
    assert targets["audit_sqlite_events_per_s"]["holds"] is None
    row = shown["audit, SQLite, log of 10,000,000 events: events/s"]
    assert row["verdict"] == "not at scale"
    assert "log of 10,000 events, not at scale" in row["measured"]
    assert targets["audit_postgres_events_per_s"]["holds"] is None  # not run at all


def test_a_failed_measurement_is_shown_failed(report: ModuleType, results: dict[str, Any]) -> None:
    """A tool without a checkpoint (or a crash) is a failure on the page, not a blank."""
    error = "not run: audit_ledger() takes no checkpoint and no full argument"
    runs = [m for m in SQLITE_RUNS if m.get("mode") == "full"]
    runs += [{"what": "audit", "mode": "incremental", "ok": False, "error": error}]
    failed = {**results, "replay": replay_section(replay_result("sqlite", runs))}

    target = report.evaluate_targets(failed)["incremental_audit_sqlite"]
    shown = {r["target (the ledger as shipped)"]: r for r in cells(report, failed, "targets")}
    incremental = cells(report, failed, "audit_incremental")
    replay = cells(report, failed, "replay")

    assert (target["holds"], target["error"]) == (None, error)
    row = shown["audit from its checkpoint after new events, SQLite, log of 10,000,000 events: s"]
    assert (row["measured"], row["verdict"]) == (f"failed: {error}", "**run failed**")
    assert [(r["tool"], r["checkpoint"], r["goal"]) for r in incremental] == [
        ("audit", error, "**run failed**")
    ]
    assert replay[-1]["status"] == f"**failed**: {error}"


def test_a_replay_that_timed_out_fails_its_targets(
    report: ModuleType, results: dict[str, Any]
) -> None:
    """A store's command that gave no result (timeout) shows as a failure, not a blank."""
    section = replay_section(replay_result("sqlite", SQLITE_RUNS))
    section["runs"].append(
        {"command": KEPT_COMMAND.format(store="postgres", kept="bench_replay_10m"),
         "status": "timeout", "timeout_s": 14400.0}
    )  # fmt: skip
    timed_out = {**results, "replay": section}

    targets = report.evaluate_targets(timed_out)

    assert targets["verify_postgres_events_per_s"]["error"] == "replay timeout"
    assert targets["verify_sqlite_events_per_s"]["holds"] is True
    assert cells(report, timed_out, "replay")[-1]["status"] == "**timeout**"


def test_the_baseline_is_named_after_the_original_backend(
    report: ModuleType, results: dict[str, Any]
) -> None:
    """Older results call it the seed's: the page shows the original backend's name."""
    page = report.render(results, "bench/results.json")

    assert "row-lock (original backend), PostgreSQL, pool 16" in page
    assert "seed" not in page.lower()


def _with_errors(results: dict[str, Any], section: str, errors: int, **match: Any) -> None:
    for row in results[section]:
        if all(row.get(k) == v for k, v in match.items()):
            row["errors"] = errors


def test_releases_that_raised_are_shown_and_fail_the_targets_they_feed(
    report: ModuleType, results: dict[str, Any]
) -> None:
    """A timed configuration whose releases raised is not a clean figure: its rate shows
    how many raised, and a target computed from it does not hold."""
    broken = json.loads(json.dumps(results))
    _with_errors(broken, "database_bound", 7, system="ledger", variant="ours", store="postgres")
    _with_errors(broken, "prototypes", 3, system="ledger", variant="no_table_lock")
    _with_errors(broken, "latency_bound", 2, system="baseline")

    found = report.evaluate_targets(broken)
    broken["targets"] = found
    shown = {r["target (the ledger as shipped)"]: r for r in cells(report, broken, "targets")}
    database = cells(report, broken, "database_bound")
    prototypes = {r["prototype"]: r for r in cells(report, broken, "prototypes")}

    for key in ("database_bound_16_vs_baseline", "database_bound_16_vs_pgbench",
                "latency_bound_vs_baseline"):  # fmt: skip
        assert "releases raised" in found[key]["error"], key
        assert shown[report.t.TARGET_LABELS[key]]["verdict"] == "**run failed**"
    assert found["contention_p99_gateway_0ms"].get("error") is None
    assert any("**7 raised**" in r["releases/s"] for r in database)
    assert "**3 raised**" in prototypes["`no_table_lock`"]["16 workers rel/s"]
    assert "raised" not in prototypes["`ours`"]["16 workers rel/s"]


def test_a_verify_run_in_two_processes_is_named_so(report: ModuleType) -> None:
    tables = importlib.import_module("report_tables")
    assert tables.run_name({"what": "verify", "processes": 2}) == "verify, 2 processes"
    assert tables.run_name({"what": "verify", "processes": 1}) == "verify"
    assert tables.run_name({"what": "verify", "mode": "incremental"}) == "verify, incremental"


def test_a_childs_peak_memory_is_its_own_not_its_parents(report: ModuleType) -> None:
    """Verify's second process is measured by its own high-water mark: ``ru_maxrss``
    would start it at this process's peak."""
    replay = importlib.import_module("replay")
    ballast = bytearray(150_000_000)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # resident, not only reserved
    child = (
        "import time; b = bytearray(60_000_000); b[::4096] = b'\\x01' * len(b[::4096]); "
        "time.sleep(0.5)"
    )
    with replay.ChildPeaks(every=0.01) as peaks:
        process = subprocess.Popen([sys.executable, "-c", child])
        assert process.wait() == 0
    peak = peaks.peaks[process.pid]  # this test's process may have other children
    assert 60 < peak < 150, peak
    del ballast
