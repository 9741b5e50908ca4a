"""Verify in two processes: the log up to a seal in a second process, the rest in this one.

A seal records the log's event count and rolling digest at its position. So
the events after a seal can be checked starting from what the seal recorded,
while a second process checks the events up to it, and that the seal is right.
Each process reads and hashes its own part: on a machine with two free cores,
the whole takes about as long as the longer part.

The second process (``python -m payout_ledger.audit.verify_second``) opens the
same store with the same settings, which it reads from its standard input
(never from its command line or environment), and answers on its standard
output. Its part counts only if it is *clean*: no finding, no respelt id, the
seal agreed and the store is the same. The part after the seal, checked here,
differs from the one pass in two ways, which change no finding:

* An aggregate this process has not seen may have events before the seal: it
  is always rebuilt from the log (one indexed query), never assumed new.
* A first event that looks like the start of a new aggregate is noted. At the
  end, each one the second process's filter of seen aggregates may have seen
  is looked up in the log before the seal (one indexed query each, about 1 in
  2,000 of them). If one was there after all, the split cannot stand for the
  one pass.

Anything else (a finding before the seal, a second process that failed or
read another store, an aggregate started twice across the seal, seals of
the previous release's class version) makes [`verify_ledger`][payout_ledger.audit.verify_ledger]
verify the whole log again in one process, from the first event: every
report is the one pass's report.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

import payout_ledger
from payout_ledger.adapters.log import aggregate_rows
from payout_ledger.audit.stored import SeenFilter
from payout_ledger.audit.verify_seals import Seal

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = [
    "SPLIT_SMALLEST",
    "FirstPart",
    "FirstPartResult",
    "first_seen_before",
    "split_seal",
    "splittable",
]

SPLIT_SMALLEST = 200_000
"""Events on each side of the seal below which a second process is not worth starting."""


@dataclass(frozen=True)
class FirstPartResult:
    """What the second process found over the events up to the seal."""

    clean: bool
    """No finding, no respelt id, and the seal's count and digest were the log's."""
    store: str
    """The digest of the store's first event (``store_identity``): the same store."""
    aggregates: int
    chained_events: int
    legacy_events: int
    v1_links: int
    seen: bytearray
    """The bits of its filter of seen aggregates."""


def split_seal(seals: list[Seal], last_notification_id: int) -> Seal | None:
    """The seal to split the log at: the one nearest its middle (None: do not split).

    Not the last seal (the part after it takes the checkpoint's snapshot at the
    last seal), not when any seal is of class version 1 (their digests roll v1
    digests, computed in one pass), and not when either part would be smaller
    than ``SPLIT_SMALLEST`` events.
    """
    if any(s.class_version == 1 for s in seals):
        return None
    middle = last_notification_id // 2
    candidates = [
        s
        for s in seals[:-1]
        if s.info.event_count >= SPLIT_SMALLEST
        and last_notification_id - s.info.through_notification_id >= SPLIT_SMALLEST
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda s: abs(s.info.through_notification_id - middle))


def splittable(ledger: PayoutLedger) -> bool:
    """Whether a second process can open this ledger's store (a file or a server)."""
    return isinstance(ledger.recorder, SQLiteApplicationRecorder | PostgresApplicationRecorder)


class FirstPart:
    """The second process, verifying the events up to ``seal``."""

    def __init__(
        self,
        ledger: PayoutLedger,
        seal: Seal,
        *,
        strict: bool,
        heads_limit: int,
        page_size: int,
        seen_bits: int,
    ) -> None:
        request = {
            "settings": ledger.settings,
            "livemode": ledger.livemode,
            "through": seal.info.through_notification_id,
            "strict": strict,
            "heads_limit": heads_limit,
            "page_size": page_size,
            "seen_bits": seen_bits,
        }
        data = pickle.dumps(request)
        package_parent = str(Path(payout_ledger.__file__).parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "payout_ledger.audit.verify_second"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a driver's message may quote a store URL
            env=env,
        )
        try:
            with cast(Any, self.process.stdin) as stdin:
                stdin.write(data)
        except OSError:  # it ended already: result() says None
            pass

    def result(self) -> FirstPartResult | None:
        """Its result once it has ended (None: it failed)."""
        try:
            with cast(Any, self.process.stdout) as stdout:
                found = pickle.load(stdout)  # noqa: S301 (this library's own process)
                seen = bytearray(found.pop("seen"))
                if stdout.readinto(seen) != len(seen) or stdout.read(1):
                    raise ValueError("not its filter's bits")
                result = FirstPartResult(**found, seen=seen)
        except Exception:
            result = None
        return result if self.process.wait() == 0 else None

    def stop(self) -> None:
        """End it (this process's part failed)."""
        if self.process.poll() is None:
            self.process.kill()
        cast(Any, self.process.stdout).close()
        self.process.wait()


def first_seen_before(
    ledger: PayoutLedger, first: FirstPartResult, new_ids: bytearray, through: int
) -> bool:
    """Whether an aggregate whose first event came after ``through`` had events up to it.

    ``new_ids``: 16 bytes an aggregate. Only an id the first part's filter may
    have seen is looked up in the log.
    """
    seen = SeenFilter(len(first.seen) * 8, first.seen)
    for k in range(0, len(new_ids), 16):
        key = int.from_bytes(new_ids[k : k + 16], "big")
        if seen.may_have(key) and aggregate_rows(ledger, UUID(int=key).hex, through + 1):
            return True
    return False
