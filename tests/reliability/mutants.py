"""Mutation check: break the ledger on purpose, run the reliability suite, see what catches it.

    python -m tests.reliability.mutants [--out PATH] [NAME ...]

Each mutant is a copy of ``src/`` with one change to one module; the suite
runs against it (``PYTHONPATH`` puts the copy first, worker processes
included) and every failing test is recorded. The working tree is never
touched. A mutant whose pattern is not found (the code moved on) is reported,
not applied.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MUTANTS: dict[str, tuple[str, str, str, str]] = {
    # name: (what it breaks, module under src/payout_ledger, text, replacement)
    "claim_ignores_conflict": (
        "a release that loses the claim race carries on as if it had won",
        "service/release.py",
        "            return _LostClaim(stored)\n",
        "            return _Claimed(payout, window)\n",
    ),
    "unknown_is_failure": (
        "a timeout or a 5xx is recorded as a refusal (TransferFailed)",
        "service/attempts.py",
        "        if isinstance(outcome, TransferDeclined):\n",
        "        if not isinstance(outcome, TransferNotExecuted):\n",
    ),
    "resume_skips_lookup": (
        "resume sends the attempt's key again without asking Stripe first",
        "service/resume.py",
        "            found = self._find_transfers(payout)\n",
        "            found = []\n",
    ),
    "send_window_never_closes": (
        "a request is sent however long after its claim or lookup",
        "service/ports.py",
        "        if self.remaining() <= 0:\n",
        "        if False:\n",
    ),
    "transfer_report_ignores_claim": (
        "a transfer report settles a payout whatever its amount, currency or destination",
        "service/stripe_event_effects.py",
        "        differs = claim_differences(payout, transfer)\n",
        "        differs = None\n",
    ),
    "connected_account_events_applied": (
        "a connected account's event settles and captures like the platform's",
        "service/stripe_event_effects.py",
        "            elif account is None:\n",
        "            elif True:\n",
    ),
    "reversal_resume_skips_lookup": (
        "a reversal's resume sends its key again without asking Stripe first",
        "service/reversal.py",
        "            found = self._find_reversals(gateway, payout)\n",
        "            found = []\n",
    ),
    "reversal_claim_ignores_conflict": (
        "a reversal that loses the claim race sends its own claim anyway",
        "service/reversal.py",
        "                payout = self.get_payout(event_service_id)\n"
        "                logger.info(\n"
        '                    "reversal of %s lost the claim race",\n'
        "                    event_service_id,\n"
        "                    extra=telemetry.extras("
        "event_service_id=event_service_id, reference=ref),\n"
        "                )\n"
        "                continue\n",
        "                return self._conclude_reversal(\n"
        "                    payout, self._send_reversal(payout, window)\n"
        "                )\n",
    ),
}


def run(name: str, folder: Path, extra: list[str]) -> dict[str, object]:
    what, module, old, new = MUTANTS[name]
    copy = folder / name
    shutil.copytree(REPO / "src", copy / "src")
    target = copy / "src" / "payout_ledger" / module
    text = target.read_text()
    if text.count(old) != 1:
        return {"mutant": name, "what": what, "applied": False, "caught_by": []}
    target.write_text(text.replace(old, new))
    env = {
        **os.environ,
        "PYTHONPATH": str(copy / "src"),
        "PAYOUT_LEDGER_RELIABILITY_FIGURES": str(copy / "figures.json"),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import payout_ledger; print(payout_ledger.__file__)"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(copy)), probe.stdout
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-rfE",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:logging",
            *extra,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)))
    return {
        "mutant": name,
        "what": what,
        "applied": True,
        "caught_by": failed,
        "summary": result.stdout.strip().splitlines()[-1] if result.stdout else "",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(MUTANTS))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "payout-ledger-reliability" / "mutants.json",
    )
    args, extra = parser.parse_known_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="payout-mutants-") as tmp:
        for name in args.names:
            outcome = run(name, Path(tmp), extra)
            results.append(outcome)
            print(json.dumps(outcome, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"mutants": results}, indent=2) + "\n")
    survivors = [r["mutant"] for r in results if r["applied"] and not r["caught_by"]]
    print(f"mutants: {len(results)}, survived: {survivors or 'none'}; written to {args.out}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
