"""Bulk releases under the store-shared rate governor, against a rate-limited fake Stripe.

Run::

    .venv/bin/python bench/bulk.py --quick             # 2,000 releases (about 3 minutes)
    .venv/bin/python bench/bulk.py                     # 20,000 releases (about 30 minutes)
    .venv/bin/python bench/bulk.py --out bench         # the figures of record:
                                                       # bench/bulk-results.json and .md
    nox -s bench_bulk -- --quick                       # the same through nox

One batch of releases is split between ``--processes`` OS processes (4), each with
its own ``PayoutLedger`` on one shared store: PostgreSQL when ``--store-url`` or
``$PAYOUT_LEDGER_BENCH_POSTGRES_URL`` names a server (a fresh schema, dropped
afterwards), else a fresh SQLite file. They all pay through the stripe SDK a fake
Stripe served by this process, limited as Stripe's sandbox is: 25 requests per
second per endpoint and 25 in all, 429 ``rate_limit`` beyond (token buckets of one
second, see ``payout_ledger.testing.fake_stripe._rate_limit``).

Variants, each on a fresh store and a fresh fake:

* **governed**: ``release_many`` as shipped: a token of the shared budget
  (``bulk_rate_limit`` 25 x ``bulk_rate_share`` 0.9 = 22.5/s) before every request;
* **ungoverned**: ``release_many(governed=False)``: each release sends at
  once; a 429 leaves the payout in flight (``not_executed``);
  then the same batch run again and again (each pass resumes what the last left in
  flight, a second after it) until every release is paid, ``--max-passes`` or
  ``--ungoverned-seconds`` (300): the first pass and the last are reported.

Figures: requests per second admitted by the fake (from the arrival times it
records, first to last request) as a share of the limit, the share of requests
answered 429 (goal: at least 90 % of the limit, under 1 % of 429s, governed), the
most requests admitted in any one second, releases paid / left in flight, and
transfers at the fake against payouts (never two for one payout).

The ledger's own overhead per release is measured in the governed run: the wall
time each release spends inside ``release_many`` (claim, outcome, reads, the
budget's statement) minus the seconds it waited for a token and the seconds its
HTTP requests to Stripe took, both measured by the governor; and each process's CPU
time per release. No figure is asserted: the targets are printed next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import POSTGRES_URL_VARIABLE, release_request, temp_schema, with_schema

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe

API_KEY = "sk_test_bulk_bench"
PROVIDER_ID = "prov_bench"
RATE_LIMIT = 25
TARGET_SHARE = 0.90
TARGET_429 = 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2,000 releases")
    parser.add_argument("--releases", type=int, default=None, help="batch size (20,000)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="releases at once per process")
    parser.add_argument("--rate-limit", type=float, default=RATE_LIMIT)
    parser.add_argument("--store-url", default=os.environ.get(POSTGRES_URL_VARIABLE))
    parser.add_argument("--max-passes", type=int, default=100)
    parser.add_argument(
        "--ungoverned-seconds",
        type=float,
        default=300.0,
        help="no new ungoverned pass after this many seconds",
    )
    parser.add_argument(
        "--variants", default="governed,ungoverned", help="governed, ungoverned (comma-separated)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the results")
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    releases = args.releases or (2_000 if args.quick else 20_000)
    out = args.out or Path(tempfile.gettempdir()) / "payout-ledger-bench"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "releases": releases,
        "processes": args.processes,
        "concurrency_per_process": args.concurrency,
        "rate_limit": args.rate_limit,
        "store": "postgresql" if args.store_url else "sqlite",
        "command": " ".join(["bench/bulk.py", *sys.argv[1:]]),
        "variants": {},
    }
    for variant in args.variants.split(","):
        print(f"== {variant}: {releases} releases, {args.processes} processes", flush=True)
        results["variants"][variant] = _run_variant(variant, releases, args)
        print(json.dumps(results["variants"][variant], indent=2), flush=True)
        (out / "bulk-results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bulk-results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"results: {out / 'bulk-results.json'} and {out / 'bulk-results.md'}")


@contextlib.contextmanager
def _store(store_url: str | None) -> Iterator[str]:
    if store_url:
        with temp_schema(store_url, prefix="bulk") as schema:
            yield with_schema(store_url, schema)
    else:
        with tempfile.TemporaryDirectory(prefix="payout-ledger-bulk-") as folder:
            yield f"sqlite:///{Path(folder) / 'payouts.db'}"


def _run_variant(variant: str, releases: int, args: argparse.Namespace) -> dict[str, Any]:
    with (
        _store(args.store_url) as store_url,
        FakeStripe(
            api_key=API_KEY,
            rate_limit=args.rate_limit,
            global_rate_limit=args.rate_limit,
            balance={"usd": 10**12},
        ) as fake,
    ):
        account = str(fake.client().v1.accounts.create({"type": "express"}).id)
        # Create the store once before the workers start together.
        _ledger(store_url, fake.url, account).close()
        bounds = [
            (releases * k // args.processes, releases * (k + 1) // args.processes)
            for k in range(args.processes)
        ]
        config = {
            "store_url": store_url,
            "fake_url": fake.url,
            "account": account,
            "concurrency": args.concurrency,
            "governed": variant == "governed",
            "passes": 1 if variant == "governed" else args.max_passes,
            "seconds": args.ungoverned_seconds,
        }
        reports, go = _run_workers(config, bounds)
        wall = time.monotonic() - go
        requests = [r for r in fake.requests if r.received_at >= go]
        transfers = fake.transfers()
    return _figures(variant, releases, reports, requests, transfers, wall, args.rate_limit)


def _run_workers(
    config: dict[str, Any], bounds: list[tuple[int, int]]
) -> tuple[list[dict[str, Any]], float]:
    """The workers' reports, and when they were told to go (``time.monotonic``)."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                json.dumps({**config, "start": start, "stop": stop}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for start, stop in bounds
    ]
    for proc in procs:  # each says "ready" once its ledger is open
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a worker did not start: {line!r}")
    go = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed ({proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports, go


def _ledger(store_url: str, fake_url: str, account: str) -> PayoutLedger:
    settings = LedgerSettings(
        store_url=store_url,
        stripe_api_key=API_KEY,
        stripe_api_base=fake_url,
        bulk_rate_limit=RATE_LIMIT,
    )
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id=PROVIDER_ID, user_id="user_bench", stripe_account_id=account)]
    )
    return PayoutLedger(
        settings=settings,
        providers=providers,
        gateway=StripeTransferGateway.from_settings(settings),
    )


def _worker(config: dict[str, Any]) -> None:
    ledger = _ledger(config["store_url"], config["fake_url"], config["account"])
    batch = [
        {**release_request(f"es_{i}"), "provider_id": PROVIDER_ID}
        for i in range(config["start"], config["stop"])
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = _cpu()
    started = time.monotonic()
    passes: list[dict[str, Any]] = []
    items_seconds = 0.0
    for _ in range(config["passes"]):
        report = ledger.release_many(
            batch, concurrency=config["concurrency"], governed=config["governed"]
        )
        items_seconds += sum(item.seconds for item in report.items)
        passes.append({**report.summary(), "items_seconds": items_seconds})
        if report.all_released or time.monotonic() - started > config["seconds"]:
            break
        time.sleep(1.0)
    ledger.close()
    print(
        json.dumps(
            {
                "releases": len(batch),
                "seconds": time.monotonic() - started,
                "cpu_seconds": _cpu() - cpu_before,
                "passes": passes,
            }
        ),
        flush=True,
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _figures(
    variant: str,
    releases: int,
    reports: list[dict[str, Any]],
    requests: list[Any],
    transfers: list[dict[str, Any]],
    wall: float,
    limit: float,
) -> dict[str, Any]:
    sent = [r for r in requests if r.path.startswith("/v1/")]
    limited = [r for r in sent if r.status == 429]
    admitted = sorted(r.received_at for r in sent if r.status != 429)
    span = (admitted[-1] - admitted[0]) if len(admitted) > 1 else float("nan")
    first_pass = Counter[str]()
    final = Counter[str]()
    for report in reports:
        first_pass.update(report["passes"][0]["counts"])
        final.update(report["passes"][-1]["counts"])
    payouts = Counter(t["metadata"].get("payout_id") for t in transfers)
    figures: dict[str, Any] = {
        "wall_seconds": round(wall, 1),
        "requests": len(sent),
        "requests_429": len(limited),
        "share_429": round(len(limited) / len(sent), 4) if sent else None,
        "admitted_per_second": round((len(admitted) - 1) / span, 2) if span == span else None,
        "share_of_limit": round((len(admitted) - 1) / span / limit, 4) if span == span else None,
        "max_admitted_in_one_second": _max_in_window(admitted, 1.0),
        "transfers": len(transfers),
        "payouts_paid_twice": sum(1 for n in payouts.values() if n > 1),
        "first_pass_outcomes": dict(sorted(first_pass.items())),
        "paid_at_the_end": sum(r["passes"][-1]["released"] for r in reports),
        "passes": max(len(r["passes"]) for r in reports),
        "left_in_flight": final.get("not_executed", 0)
        + final.get("outcome_unknown", 0)
        + final.get("in_progress", 0),
    }
    if variant == "governed":
        governor: Counter[str] = Counter()
        for report in reports:
            governor.update(report["passes"][-1]["governor"] or {})
        items_seconds = sum(r["passes"][-1]["items_seconds"] for r in reports)
        own = items_seconds - governor["waited_seconds"] - governor["http_seconds"]
        cpu = sum(r["cpu_seconds"] for r in reports)
        figures["governor"] = {k: round(v, 3) for k, v in sorted(governor.items())}
        figures["ledger_overhead_ms_per_release"] = round(own / releases * 1000, 2)
        figures["http_ms_per_request"] = round(
            governor["http_seconds"] / max(governor["tokens"], 1) * 1000, 2
        )
        figures["cpu_ms_per_release"] = round(cpu / releases * 1000, 2)
    return figures


def _max_in_window(times: list[float], window: float) -> int:
    best, low = 0, 0
    for high, t in enumerate(times):
        while t - times[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table, the variants side by side."""
    variants = results["variants"]
    names = list(variants)
    rows = [
        ("admitted requests/s", "admitted_per_second", "{}"),
        ("share of the limit (goal >= 90 %)", "share_of_limit", "{:.1%}"),
        ("requests answered 429 (goal < 1 %)", "share_429", "{:.2%}"),
        ("requests", "requests", "{}"),
        ("most admitted in one second", "max_admitted_in_one_second", "{}"),
        ("wall seconds", "wall_seconds", "{}"),
        ("passes", "passes", "{}"),
        ("first pass: outcomes", "first_pass_outcomes", "{}"),
        ("paid at the end", "paid_at_the_end", "{}"),
        ("left in flight", "left_in_flight", "{}"),
        ("transfers at the fake", "transfers", "{}"),
        ("payouts paid twice", "payouts_paid_twice", "{}"),
        ("ledger overhead, ms per release", "ledger_overhead_ms_per_release", "{}"),
        ("HTTP to the fake, ms per request", "http_ms_per_request", "{}"),
        ("CPU ms per release (all processes)", "cpu_ms_per_release", "{}"),
    ]
    lines = [
        f"Bulk releases: {results['releases']} releases, {results['processes']} processes x "
        f"{results['concurrency_per_process']} at once, {results['store']} store, fake Stripe "
        f"limited to {results['rate_limit']:g} requests/s ({results['date']}; "
        f"`{results['command']}`).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, key, fmt in rows:
        cells = []
        for name in names:
            value = variants[name].get(key)
            if isinstance(value, dict):
                cells.append(", ".join(f"{k} {v}" for k, v in value.items()) or "-")
            else:
                cells.append("-" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ledger overhead: each release's wall time inside `release_many` less the seconds it "
        "waited for a token and the seconds its HTTP requests took (both measured by the "
        "governor), averaged over the batch. CPU: user + system time of the worker processes "
        "(the fake Stripe's excluded) over the batch.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
