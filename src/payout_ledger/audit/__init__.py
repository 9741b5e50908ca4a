"""Audit the ledger from its log: replay and invariants, tamper evidence, export.

* [`audit_ledger`][payout_ledger.audit.audit_ledger] replays every payout and
  checks the money rules;
* [`verify_ledger`][payout_ledger.audit.verify_ledger] recomputes every hash
  chain and seal; [`seal_ledger`][payout_ledger.audit.seal_ledger] (also
  ``PayoutLedger.seal()``) records a new seal;
* [`export_events`][payout_ledger.audit.export_events] and
  [`export_payouts`][payout_ledger.audit.export_payouts] write JSON Lines or CSV.

All of them read the log in notification order, a page at a time.
"""

from payout_ledger.adapters.log import iter_notifications, last_notification_id
from payout_ledger.audit.export import export_events, export_payouts
from payout_ledger.audit.replay import (
    AuditReport,
    CurrencyTotals,
    InFlightPayout,
    InFlightReversal,
    InFlightRows,
    PayoutSummary,
    ProviderTotals,
    ReversalSummary,
    Violation,
    ViolationKind,
    audit_ledger,
)
from payout_ledger.audit.verify import ChainProblem, ProblemKind, VerifyReport, verify_ledger
from payout_ledger.service.sealing import SealInfo, latest_seal, seal_ledger

__all__ = [
    "AuditReport",
    "ChainProblem",
    "CurrencyTotals",
    "InFlightPayout",
    "InFlightReversal",
    "InFlightRows",
    "PayoutSummary",
    "ProblemKind",
    "ProviderTotals",
    "ReversalSummary",
    "SealInfo",
    "VerifyReport",
    "Violation",
    "ViolationKind",
    "audit_ledger",
    "export_events",
    "export_payouts",
    "iter_notifications",
    "last_notification_id",
    "latest_seal",
    "seal_ledger",
    "verify_ledger",
]
