"""The second process of a split verify (see ``payout_ledger.audit.verify_split``).

``python -m payout_ledger.audit.verify_second`` reads its request (the ledger's
settings, the seal's position, the pass's options) as a pickle on its standard
input, verifies the events up to the seal, and writes its result on its
standard output: a dict, as a pickle, then the bits of its filter of seen
aggregates. It never writes to the store.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import fields
from typing import Any

from payout_ledger.audit.checkpoint import store_identity
from payout_ledger.audit.verify import first_part_pass
from payout_ledger.audit.verify_split import FirstPartResult
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import NoProviders, NoTransfers
from payout_ledger.settings import LedgerSettings


def _first_part(request: dict[str, Any]) -> FirstPartResult:
    """The second process's work: verify the events up to ``request["through"]``."""
    settings: LedgerSettings = request["settings"]
    with PayoutLedger(
        settings=settings,
        providers=NoProviders(),
        gateway=NoTransfers(request["livemode"]) if settings.stripe_enabled else None,
        must_exist=True,
    ) as ledger:
        run = first_part_pass(
            ledger,
            through=request["through"],
            strict=request["strict"],
            heads_limit=request["heads_limit"],
            page_size=request["page_size"],
            seen_bits=request["seen_bits"],
        )
        report = run.report
        return FirstPartResult(
            clean=not report.problems and not run.respelt,
            store=store_identity(ledger),
            aggregates=run.aggregates,
            chained_events=report.chained_events,
            legacy_events=report.legacy_events,
            v1_links=report.v1_links,
            seen=run.seen.bits,
        )


def main() -> None:
    """The second process: a request on standard input, its result (a dict) on standard output."""
    request = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 (from the parent process)
    result = _first_part(request)
    out = sys.stdout.buffer
    # The filter's bits follow the pickle as they are: pickling would copy them.
    found = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "seen"}
    pickle.dump(found | {"seen": len(result.seen)}, out)
    out.write(result.seen)
    out.flush()


if __name__ == "__main__":
    main()
