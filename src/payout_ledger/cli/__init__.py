"""The operator's command line: ``payout-ledger``. Nothing imports this module.

Every command but ``demo`` reads its settings from ``PAYOUT_LEDGER_*``
environment variables (``--store-url`` overrides ``PAYOUT_LEDGER_STORE_URL``)
and opens an *existing* store: it never creates a file, a schema or the events
table (``project`` creates only its own read-model tables).

Exit codes, the same for every command:

- ``0``: done, nothing found.
- ``1``: findings: ``audit`` violations, ``verify`` problems, ``reconcile``
  mismatches or a ``--service`` the ledger has no payout for, ``export``
  events that cannot be read, ``project`` events the read model cannot hold,
  ``resume`` payouts or reversals still in flight, a ``reverse`` that did not
  reverse (failed, in flight, or another reversal in flight), a
  ``sync-account`` account that cannot be paid, a ``worker --once`` cycle
  with findings (a step that failed, payouts still in flight after resume,
  reconcile mismatches, an anchor not written), or the ledger refusing to
  act on what it read (``seal`` over a damaged seal chain), a
  ``release-many`` batch with items not released.
- ``2``: usage or configuration: a bad option or argument (``--since`` not
  before ``--until``...), an invalid ``PAYOUT_LEDGER_*`` setting (named, with
  the reason, never its value), a store URL that can name no existing store
  (``memory://``, an SQLite file in a folder that does not exist), settings
  the ledger refuses (no Stripe key for ``resume`` or ``reconcile``, a wrong
  ``cipher_key``...), a Stripe key Stripe refuses (401, 403), an ``--output``
  that cannot be written, a ``release-many`` file with a bad row (nothing
  released).
- ``3``: the store or Stripe cannot be reached or opened: connection refused
  or timed out (after ``postgres_connect_timeout``), authentication failed, no
  such database, schema, events table or SQLite file, a file that is no SQLite
  database, a database error while running, Stripe not answering
  (``reconcile``), a payout too busy to claim (``LedgerBusyError``).
- ``130``: interrupted (Ctrl-C).

A command that cannot run (2, 3) prints one line on stderr, ``error: `` and the
cause, with the store URL's password replaced by ``***``, and nothing on
stdout. Findings (1) are the command's report on stdout; ``audit``, ``verify``,
``export``, ``resume`` and ``reconcile`` (without ``--json``) also sum them up in
one ``error:`` line on stderr.

Output: tables on a terminal wide enough for them; otherwise (piped, cron
mail, CI logs, a narrow terminal) plain aligned text, one line per row, as
wide as it needs. Amounts (integers, minor units) and ids are never cut.

JSON shapes (``--json``; amounts are integers in minor units; timestamps are
ISO 8601 strings):

- ``audit``: ``{"ok", "events", "last_notification_id", "payouts",
  "events_by_type": {event type: count}, "currencies": [{"currency", "payouts",
  "released", "released_amount", "reversed_amount", "in_flight",
  "in_flight_amount", "failed", "captured", "captured_amount", "net_amount"}],
  "providers": [{"provider_id", "currency", "payouts", "released",
  "released_amount", "reversed_amount", "in_flight", "net_amount"}],
  "in_flight": [{"event_service_id", "payout_id", "attempt", "amount",
  "currency", "started_notification_id"}], "reversals_in_flight":
  [{"event_service_id", "payout_id", "reversal_attempt", "reference",
  "amount", "currency", "started_notification_id"}], "violations": [{"kind",
  "notification_id", "payout_id", "originator_version", "event_type",
  "event_service_id", "detail"}], "checkpoint", "incremental"}``
- ``verify``: ``{"ok", "events", "aggregates", "chained_events",
  "legacy_events", "v1_links", "last_notification_id", "log_digest", "seals",
  "latest_seal": seal or null, "unsealed_events", "anchors_found": [digest],
  "problems": [{"kind", "notification_id", "originator_id",
  "originator_version", "topic", "detail"}], "checkpoint", "incremental"}``
- ``seal``: ``{"seal_number", "through_notification_id", "event_count",
  "log_digest", "seal_digest", "sealed_at"}``
- ``reconcile``: ``{"payouts_checked", "transfers_checked", "ok",
  "mismatches": [{"kind", "event_service_id", "transfer_id", "ledger",
  "stripe"}], "reversals_in_flight": [same shape, kind "reversal_in_flight"],
  "unknown_services": [event service id]}``; ``ok`` is false when there is a
  mismatch or an unknown service (a reversal in flight is not one).
- ``reverse``: the ``ReversalResult``: ``{"event_service_id", "payout_id",
  "outcome", "reference", "amount", "currency", "reversal_id", "transfer_id",
  "attempt", "idempotency_key", "amount_reversed", "error_code",
  "error_message", "stripe_request_id", "detail"}``.
- ``sync-account``: ``{"account_id", "payable", "reason", "message",
  "payouts_enabled", "transfers", "disabled_reason", "source", "reported_at"}``.
- ``export`` writes JSON Lines or CSV (see the audit documentation).
- ``release-many``: ``{"items", "released", "counts": {outcome: count},
  "seconds", "governor": {"tokens", "waited_seconds", "http_seconds",
  "rate_limited", "retried", "not_retried", "backoff_seconds"} or null,
  "not_released": [{"line", "event_service_id", "outcome", "error_code",
  "error_message"}]}``; ``released`` counts ``released`` and
  ``already_released``; an item the ledger refused has outcome ``rejected``.
- ``worker --once --json``: the cycle: ``{"started_at", "leading", "result",
  "resumed", "settled", "still_in_flight": [event service id], "not_yet_due",
  "outcomes": {outcome: count}, "reversals_resumed", "reversals_settled",
  "reversals_still_in_flight", "reversals_not_yet_due", "reconciled",
  "payouts_checked", "transfers_checked", "mismatches": [{"kind",
  "event_service_id", "transfer_id"}], "awaiting_resume", "events_projected",
  "projection_skipped", "seal": seal or null, "anchored": [seal number],
  "errors": {step: reason}, "interrupted", "findings": [text],
  "duration_seconds"}``; ``result`` is ``clean``, ``findings``,
  ``interrupted`` or ``follower`` (another worker leads: nothing done, exit 0).

Where it lives:

- ``root``: the typer ``app``, ``--version``, the ``EXIT_*`` codes and the
  decorator that turns what stops a command into its exit code.
- ``output``: consoles, tables (plain aligned lines off a terminal), counts.
- ``opening``: settings, and opening the existing store for a command.
- ``operate``: ``demo``, ``resume``, ``reconcile`` and ``sync-account``; ``demo``: the
  demo's scenario.
- ``reversing``: ``reverse``, and how reversal results print (``reverse``, ``resume``).
- ``audit_commands``: ``audit``, ``verify``, ``seal``, ``project`` and ``export``.
- ``reports``: how ``audit`` and ``verify`` print their reports.
- ``bulk``: ``release-many``, a batch of releases from a file under the
  shared Stripe rate budget, with its progress.
- ``worker``: ``worker``, the maintenance worker (looping, or ``--once``), its
  signals and its log lines.
"""

from __future__ import annotations

# Commands register on ``app`` as their modules are imported, and ``--help``
# lists them in that order.
from payout_ledger.cli import (
    operate,  # noqa: F401
    reversing,  # noqa: F401
)

# isort: split
from payout_ledger.cli import audit_commands  # noqa: F401

# isort: split
from payout_ledger.cli import worker  # noqa: F401

# isort: split
from payout_ledger.cli import bulk  # noqa: F401
from payout_ledger.cli.root import (
    EXIT_CODES_HELP,
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    app,
)

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FINDINGS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "app",
    "main",
]


def main() -> None:
    """Run ``payout-ledger`` (the console script)."""
    app()
