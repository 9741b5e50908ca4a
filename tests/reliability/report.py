"""Render the reliability figures (JSON written by a test run) into docs/reliability.md.

    python -m tests.reliability.report FIGURES.json [MORE.json ...] [--docs docs/reliability.md]

Each figures file replaces the block between ``<!-- figures:<mode>:start -->``
and ``<!-- figures:<mode>:end -->`` in the document; without ``--docs`` the
Markdown is printed. Every number comes from the file: nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_n(v) for v in row) + " |" for row in rows]
    return lines


class Figures:
    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.sections: dict[str, Any] = document.get("sections", {})

    def count(self, section: str, name: str) -> int:
        return int(self.sections.get(section, {}).get("counts", {}).get(name, 0))

    def counts(self, section: str) -> dict[str, int]:
        return dict(self.sections.get(section, {}).get("counts", {}))

    def rows(self, section: str) -> list[dict[str, Any]]:
        return list(self.sections.get(section, {}).get("rows", []))

    def notes(self, section: str) -> dict[str, Any]:
        return dict(self.sections.get(section, {}).get("notes", {}))

    def prefixed(self, section: str, prefix: str) -> dict[str, int]:
        return {
            k.removeprefix(prefix): v
            for k, v in self.counts(section).items()
            if k.startswith(prefix)
        }


def render(document: dict[str, Any]) -> str:
    f = Figures(document)
    mode = document["mode"]
    tests = document.get("tests", {})
    out: list[str] = [
        f"Run: `{mode}` mode, {document.get('started_at')}, commit `{document.get('commit')}`"
        + (" with uncommitted changes in `src/`" if document.get("uncommitted_src_changes") else "")
        + ", "
        f"Python {document.get('python')}, {document.get('cpus')} CPUs, "
        f"PostgreSQL {document.get('postgres')}; {tests.get('passed', 0)} passed, "
        f"{tests.get('xfailed', 0)} xfailed (known bugs), {tests.get('failed', 0)} failed, "
        f"in {document.get('wall_seconds')} s. Suite seed {document.get('suite_seed')}"
        + (
            f", hypothesis seed {document['hypothesis_seed']}."
            if document.get("hypothesis_seed")
            else "."
        ),
        "",
    ]

    sm = "state_machine"
    rv = "interleavings_reversals"
    reversal_rows = f.rows(rv)
    fuzz_examples = sum(f.prefixed("bad_input", "examples: ").values())
    interleavings = f.rows("interleavings")
    reduced = [r for r in interleavings if r["reduction"] != "none" and r["violations"] == 0]
    killed = f.rows("killed_processes")
    db = f.counts("database_faults")
    db_faults = (
        db.get("pg_terminate_backend", 0)
        + db.get("postgres stopped (immediate)", 0)
        + db.get("postgres restarted (immediate)", 0)
        + db.get("sqlite exclusive locks by another process", 0)
    )
    out += _table(
        ["figure", "value"],
        [
            ["hypothesis examples: whole-system state machine", f.count(sm, "examples")],
            [
                "state-machine steps checked (every invariant after each)",
                f.count(sm, "invariant_checks"),
            ],
            ["hypothesis examples: bad input at the public doors", fuzz_examples],
            [
                "hypothesis examples: one mutation under an anchored seal, all caught "
                "(tests/audit)",
                sum(f.prefixed("tamper", "examples: ").values())
                or "- (tests/audit was not part of the run)",
            ],
            [
                "interleavings explored (classes, sleep-set reduction), all scenarios",
                sum(r["runs"] for r in reduced),
            ],
            [
                "interleavings run one by one without reduction",
                sum(r["runs"] for r in interleavings if r["reduction"] == "none"),
            ],
            [
                "faults injected: Stripe faults in the state machine "
                "(dropped, 5xx or 429 responses actually served)",
                f"{f.count(sm, 'faults_injected')} "
                f"({f.count(sm, 'stripe_faults_that_hit_a_request')})",
            ],
            ["faults injected: caller crashes in the state machine", f.count(sm, "crashes")],
            [
                "faults injected: crashes in explored interleavings",
                sum(r["runs_with_crash"] for r in interleavings),
            ],
            [
                "faults injected: Stripe faults around killed processes",
                sum(r["faults_injected"] for r in killed),
            ],
            ["faults injected: database (terminations, stops, restarts, locks)", db_faults],
            [
                "webhooks delivered / of them forged (all refused, nothing changed)",
                f"{f.count(sm, 'webhooks_delivered') + f.count(sm, 'webhooks_forged')} / "
                f"{f.count(sm, 'webhooks_forged')}",
            ],
            [
                "signed events of connected accounts, unlike the claim, or of the other "
                "mode (none changed the books)",
                f.count(sm, "foreign_events_delivered"),
            ],
            [
                "hosts' clocks: largest disagreement between two callers / clock steps",
                f"{f.count(sm, 'max_clock_disagreement_between_callers_s') / 3600:.1f} h / "
                f"{f.count(sm, 'host_clock_steps')}",
            ],
            [
                "processes started / killed with SIGKILL",
                f"{sum(r['processes_started'] for r in killed)} / "
                f"{sum(r['processes_killed'] for r in killed)}",
            ],
            [
                "transfers at Stripe / expected (state machine, each example settled)",
                f"{f.count(sm, 'final_transfers_at_stripe')} / "
                f"{f.count(sm, 'final_transfers_expected')}",
            ],
            [
                "transfers at Stripe / expected (killed processes)",
                f"{sum(r['transfers_at_stripe'] for r in killed)} / "
                f"{sum(r['transfers_expected'] for r in killed)}",
            ],
            [
                "events stored / expected (killed processes)",
                f"{sum(r['events_stored'] for r in killed)} / "
                f"{sum(r['events_expected'] for r in killed)}",
            ],
            [
                "reversals asked for in the state machine (of them killed mid-way) / "
                "reversals at Stripe, each example settled",
                f"{f.count(sm, 'reversals')} ({f.count(sm, 'reversals_killed')}) / "
                f"{f.count(sm, 'final_reversals_at_stripe')}",
            ],
            [
                "reversal faults injected in the state machine / refusals for the connected "
                "account's balance (state machine + interleavings)",
                f"{f.count(sm, 'reversal_faults_injected')} / "
                f"{f.count(sm, 'reversal_balance_refusals')} + {f.count(rv, 'balance refusals')}",
            ],
            [
                "interleavings of reversal scenarios explored (classes, sleep-set reduction)",
                sum(r["runs"] for r in reversal_rows),
            ],
            [
                "over-reversals at Stripe (state machine / interleavings; must be 0)",
                f"{f.count(sm, 'over_reversals')} / {f.count(rv, 'over-reversals')}",
            ],
            [
                "duplicate reversals at Stripe (state machine / interleavings; must be 0)",
                f"{f.count(sm, 'duplicate_reversals')} / {f.count(rv, 'duplicate reversals')}",
            ],
            [
                "most transfers for one service (state machine / killed processes)",
                f"{f.count(sm, 'max_transfers_per_service')} / "
                f"{max((r['max_transfers_per_service'] for r in killed), default=0)}",
            ],
        ],
    )

    out += [
        "",
        "**Explored interleavings** (every order of the actors' I/O steps; "
        "`runs` are classes of equivalent orders under sleep-set reduction, or single "
        "orders without it):",
        "",
    ]
    out += _table(
        [
            "scenario",
            "clocks",
            "actors",
            "crash budget",
            "store",
            "reduction",
            "runs",
            "redundant",
            "runs with a crash",
            "max steps",
            "exhaustive",
            "double transfers",
        ],
        [
            [
                r["scenario"],
                r.get("clocks", "one clock"),
                r["actors"],
                r["crash_budget"],
                r["store"],
                r["reduction"],
                r["runs"],
                r["redundant_runs"],
                r["runs_with_crash"],
                r["max_steps"],
                "yes" if r["exhaustive"] else "no",
                r["violations"],
            ]
            for r in interleavings
        ],
    )
    out += [
        "",
        "The *stalled claimant* row is the documented limit: every double transfer "
        "it finds is a request Stripe received before the 24-hour jump and executed "
        "after it (Stripe holding one request for a day).",
        "",
    ]
    if reversal_rows:
        out += [
            "**Explored interleavings of reversals** (the payout paid in the set-up; "
            "after each run no over-reversal, no duplicate reversal, every recorded "
            "reversal at Stripe as claimed; settled, exactly the wanted reversals):",
            "",
        ]
        out += _table(
            [
                "scenario",
                "clocks",
                "actors",
                "crash budget",
                "runs",
                "redundant",
                "runs with a crash",
                "max steps",
                "exhaustive",
                "violations",
            ],
            [
                [
                    r["scenario"],
                    r.get("clocks", "one clock"),
                    r["actors"],
                    r["crash_budget"],
                    r["runs"],
                    r["redundant_runs"],
                    r["runs_with_crash"],
                    r["max_steps"],
                    "yes" if r["exhaustive"] else "no",
                    r["violations"],
                ]
                for r in reversal_rows
            ],
        )
        answers = f.prefixed(rv, "answer ")
        out += [
            "",
            "Rows with violations are known bugs, kept as strict expected failures "
            "until fixed (see *Bugs these tests found*). Answers seen: "
            + ", ".join(f"{k} {v}" for k, v in sorted(answers.items()))
            + ".",
            "",
        ]
    controls = f.prefixed("interleavings", "positive control: ")
    if controls:
        out += [
            "Positive controls: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(controls.items()))
            + ".",
            "",
        ]

    if killed:
        out += ["**Killed processes** (seeded; rerun with the same seed and sizes):", ""]
        out += _table(
            [
                "store",
                "seed",
                "P x R x S",
                "started",
                "killed",
                "releases answered",
                "Stripe faults",
                "left in flight",
                "transfers / expected",
                "events / expected",
                "events per payout",
            ],
            [
                [
                    r["store"],
                    r["seed"],
                    f"{r['processes']} x {r['rounds']} x {r['services']}",
                    r["processes_started"],
                    r["processes_killed"],
                    r["releases_answered"],
                    r["faults_injected"],
                    r["payouts_left_in_flight"],
                    f"{r['transfers_at_stripe']} / {r['transfers_expected']}",
                    f"{r['events_stored']} / {r['events_expected']}",
                    ", ".join(f"{k}: {v}" for k, v in sorted(r["events_per_payout"].items())),
                ]
                for r in killed
            ],
        )
        out += [""]

    crashes = f.prefixed(sm, "crash ")
    faults = f.prefixed(sm, "fault ")
    forged = f.prefixed(sm, "forged ")
    out += ["**State machine detail**:", ""]
    out += _table(
        ["what", "counts"],
        [
            [
                "Stripe faults by kind",
                ", ".join(
                    f"{k} {v}" for k, v in sorted(faults.items()) if not k.startswith("revers")
                ),
            ],
            ["crashes by point", ", ".join(f"{k} {v}" for k, v in sorted(crashes.items()))],
            [
                "release outcomes",
                ", ".join(f"{k} {v}" for k, v in sorted(f.prefixed(sm, "outcome ").items())),
            ],
            [
                "resumes / how they settled",
                f"{f.count(sm, 'resumes')}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(f.prefixed(sm, "resume ").items())),
            ],
            [
                "reversals: outcomes",
                ", ".join(
                    f"{k} {v}" for k, v in sorted(f.prefixed(sm, "reversal outcome ").items())
                ),
            ],
            [
                "reversals refused before any claim",
                ", ".join(
                    f"{k} {v}" for k, v in sorted(f.prefixed(sm, "reversal refused: ").items())
                ),
            ],
            [
                "reversal faults by kind",
                ", ".join(f"{k} {v}" for k, v in sorted(f.prefixed(sm, "reversal fault ").items())),
            ],
            [
                "reversal resumes / how they settled",
                f"{f.count(sm, 'reversal resumes')}: "
                + ", ".join(
                    f"{k} {v}" for k, v in sorted(f.prefixed(sm, "reversal resume ").items())
                ),
            ],
            [
                "connected account drained / refilled; transfer.reversed webhooks delivered",
                f"{f.count(sm, 'account_drained')} / {f.count(sm, 'account_refilled')}; "
                f"{f.count(sm, 'webhooks_transfer_reversed')}",
            ],
            [
                "webhooks: duplicates, out of order",
                f"{f.count(sm, 'webhooks_duplicate')}, {f.count(sm, 'webhooks_out_of_order')}",
            ],
            ["forged webhooks by kind", ", ".join(f"{k} {v}" for k, v in sorted(forged.items()))],
            [
                "connected-account and other-mode events by kind",
                ", ".join(f"{k} {v}" for k, v in sorted(f.prefixed(sm, "foreign ").items())),
            ],
            [
                "callers' drawn settings: total / window under 1 h / with SDK retries; "
                "callers 3 h or more off",
                f"{f.count(sm, 'callers_with_drawn_settings')} / "
                f"{f.count(sm, 'callers_with_window_under_an_hour')} / "
                f"{f.count(sm, 'callers_with_sdk_retries')}; "
                f"{f.count(sm, 'callers_with_a_clock_off_by_3h_or_more')}",
            ],
            [
                "clock jumps (past 24 h)",
                f"{f.count(sm, 'clock_jumps')} ({f.count(sm, 'clock_jumps_past_24h')})",
            ],
            [
                "reconciles / agreement checks after resume / settled histories",
                f"{f.count(sm, 'reconciles')} / {f.count(sm, 'agreement_checks_after_resume')} / "
                f"{f.count(sm, 'settled_histories')}",
            ],
        ],
    )
    out += ["", "**Database faults**:", ""]
    out += _table(["what", "count"], [[k, v] for k, v in sorted(db.items())])
    out += ["", "**Bad input**:", ""]
    out += _table(["what", "count"], [[k, v] for k, v in sorted(f.counts("bad_input").items())])
    leadership = f.counts("worker_leadership")
    if leadership:  # the long run only
        out += ["", "**Maintenance workers** (four on PostgreSQL, SIGKILLed at random):", ""]
        out += _table(["what", "count"], [[k, v] for k, v in sorted(leadership.items())])
    return "\n".join(out) + "\n"


def render_mutants(document: dict[str, Any]) -> str:
    rows = []
    for m in document["mutants"]:
        caught = m["caught_by"]
        tests = sorted({c.split("::")[0].removeprefix("tests/reliability/") for c in caught})
        rows.append(
            [
                f"`{m['mutant']}`",
                m["what"],
                "not applied (code moved)" if not m["applied"] else len(caught),
                ", ".join(f"`{t}`" for t in tests) if tests else "**survived**",
            ]
        )
    lines = _table(["mutant", "what it breaks", "failing tests", "caught in"], rows)
    return "\n".join(lines) + "\n"


def splice(document: str, mode: str, block: str) -> str:
    start, end = f"<!-- figures:{mode}:start -->", f"<!-- figures:{mode}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(document):
        raise SystemExit(f"{start} ... {end} not found in the document")
    return pattern.sub(lambda _: f"{start}\n{block}{end}", document)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", nargs="+", type=Path)
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args(argv)
    blocks = []
    for path in args.figures:
        document = json.loads(path.read_text())
        if "mutants" in document:
            blocks.append(("mutants", render_mutants(document)))
        else:
            blocks.append((document["mode"], render(document)))
    if args.docs is None:
        for mode, block in blocks:
            print(f"## {mode}\n\n{block}")
        return 0
    text = args.docs.read_text()
    for mode, block in blocks:
        text = splice(text, mode, block)
    args.docs.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
