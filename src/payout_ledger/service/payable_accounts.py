"""The connected accounts a ledger read as payable, trusted for ``payability_cache_seconds``.

A release to an account known to be unpayable is answered without a claim or a
request (``payout_ledger.service.payability``); knowing costs a read of the
account's record. A ledger reads a payable (or never reported) account once per
window, and an unpayable one before every release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import islice

__all__ = ["REMEMBERED_ACCOUNTS", "PayableAccounts"]

REMEMBERED_ACCOUNTS = 10_000
"""Payable accounts a ledger remembers at most (the oldest half is dropped beyond)."""


class PayableAccounts:
    """The connected accounts a release read as payable (or never reported), each
    trusted until a moment of the ledger's monotonic clock.

    A report this ledger saves forgets its account, and voids every read made
    before it that is not remembered yet (``token``): what such a read said may
    be what the report replaced.
    """

    def __init__(self, seconds: float, monotonic: Callable[[], float]) -> None:
        self._seconds = seconds
        self._monotonic = monotonic
        self._until: dict[str, float] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._until)

    def payable(self, account_id: str) -> bool:
        """Whether the account was read as payable less than the window ago."""
        until = self._until.get(account_id)
        return until is not None and self._monotonic() < until

    def token(self) -> int:
        """Taken before the account is read; :meth:`remember` needs it."""
        return self._generation

    def remember(self, account_id: str, token: int) -> None:
        """Trust the account's read as payable for the window, unless a report was
        saved since ``token`` was taken."""
        if self._seconds <= 0:
            return
        with self._lock:
            if token != self._generation:
                return
            until = self._until
            until.pop(account_id, None)  # the newest last
            until[account_id] = self._monotonic() + self._seconds
            if len(until) > REMEMBERED_ACCOUNTS:
                for key in list(islice(until, len(until) - REMEMBERED_ACCOUNTS // 2)):
                    del until[key]

    def forget(self, account_id: str) -> None:
        """A report of the account was saved (or tried): read it again."""
        with self._lock:
            self._generation += 1
            self._until.pop(account_id, None)
