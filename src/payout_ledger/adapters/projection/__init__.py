"""The payouts read model: one row per event service, for hosts to query with SQL.

A [`PayoutsProjection`][payout_ledger.adapters.projection.PayoutsProjection] (an
``eventsourcing.projection.Projection``) folds payout events into rows of a
table in the events' own database (``payout_ledger_payouts`` by default).
Its view is an eventsourcing tracking recorder
([`SQLitePayoutsView`][payout_ledger.adapters.projection.SQLitePayoutsView],
[`PostgresPayoutsView`][payout_ledger.adapters.projection.PostgresPayoutsView]): the rows
of a batch and the tracking record (the last notification id applied) are
written in one transaction, which first checks that the tracking record is
still where the batch started. So each event is applied exactly once, a crash
loses only the uncommitted batch, and the next run resumes after the last
committed one.

[`run_projection`][payout_ledger.adapters.projection.run_projection] reads the log with
``select_notifications`` (SQLite has no subscriptions, so it polls, and so does
PostgreSQL, for one code path). eventsourcing's ``ProjectionRunner`` is not
used: it constructs the application from an environment alone (the ledger
needs its settings and ports), subscribes (SQLite cannot) and commits one event
per transaction (a rebuild of a million events would take hours on SQLite).

[`PayoutLedger`][payout_ledger.PayoutLedger] works without the read model;
run ``payout-ledger project`` (or ``run_projection``) to keep it. The table
holds plain text columns, including the destination account, even when the
events are encrypted at rest.

**Events the table cannot hold.** The log may hold events no column can take:
damaged or crafted ones (undecodable, a field of the wrong type, an amount
beyond PostgreSQL's ``bigint`` or an attempt beyond its ``integer``, text with
NUL or a lone surrogate, a service id that is not its payout's). Each is logged
(WARNING, with its notification id and the reason), counted in
[`ProjectionRun.skipped`][payout_ledger.adapters.projection.ProjectionRun] and left out;
the tracking record moves past it and every other event is applied. A payout
whose ``PayoutStarted`` is left out has no row; a later event that is left out
leaves its payout's row as it was. A write the database refuses for its data
is retried one event per transaction, so only the refused event is left out.
``payout-ledger verify`` and ``audit`` name such events.

**Rebuilds.** ``run_projection(..., rebuild=True)`` folds the whole log into a
new table (``<table>_rb_<6 hex digits>``, with its own tracking table) and
replaces the old table with it in one transaction once it is complete. Until
then, and if the rebuild fails, readers see the old rows; the new table is
dropped. Run one rebuild at a time: a rebuild that completes drops every other
rebuild's table (a crashed one's too), and a rebuild whose table was dropped
fails without touching the old rows. With the package's own fold, a rebuild
does not apply batches: it folds the log in memory and writes the rows many at
a time (see ``rebuild``), into the same table, leaving out the same events.

**Modules.** The names above are defined in these submodules and re-exported here:

* ``view``: the row type, the abstract view, and table names;
* ``sqlite``, ``postgres``: the view on each database (tables, batches, queries,
  rebuild swap);
* ``fold``: the projection, and how each event changes a row;
* ``rebuild``: the fast rebuild, the same fold over decoded states;
* ``checks``: the events and writes the table cannot hold, and how a skip is logged;
* ``runner``: ``open_payouts_view`` and ``run_projection``, on a ledger.
"""

from payout_ledger.adapters.projection.checks import INT4, INT8, unprojectable
from payout_ledger.adapters.projection.fold import PAYOUT_TOPICS, PayoutsProjection
from payout_ledger.adapters.projection.postgres import PostgresPayoutsView
from payout_ledger.adapters.projection.runner import (
    ProjectionRun,
    open_payouts_view,
    run_projection,
)
from payout_ledger.adapters.projection.sqlite import SQLitePayoutsView
from payout_ledger.adapters.projection.view import (
    PayoutRow,
    PayoutsView,
    ProjectionConflictError,
)

__all__ = [
    "INT4",
    "INT8",
    "PAYOUT_TOPICS",
    "PayoutRow",
    "PayoutsProjection",
    "PayoutsView",
    "PostgresPayoutsView",
    "ProjectionConflictError",
    "ProjectionRun",
    "SQLitePayoutsView",
    "open_payouts_view",
    "run_projection",
    "unprojectable",
]
