"""How the benchmark builds ledgers: our settings, eventsourcing's stock settings, prototypes.

Nothing here changes ``src/``. A prototype is a subclass of
:class:`~payout_ledger.PayoutLedger` (or of eventsourcing's PostgreSQL recorder, chosen
through eventsourcing's own ``APPLICATION_RECORDER_TOPIC``) that measures what a change to
``src/`` would gain before anyone makes it. ``docs/performance.md`` lists each
prototype's measured gain and the change to ``src/`` it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.utils import Environment, get_topic
from psycopg.sql import SQL, Identifier

from payout_ledger import LedgerSettings, PayoutLedger, ReleaseRequest, ReleaseResult
from payout_ledger.payout import PayoutAggregate
from payout_ledger.ports import ServiceProvider, TransferGateway
from payout_ledger.settings import store_environment
from payout_ledger.testing import InMemoryProviderDirectory

__all__ = ["VARIANTS", "LedgerVariant", "open_ledger", "settings_difference"]

_STARTED_TOPIC = PayoutAggregate.PayoutStarted.TOPIC


class OneRoundTripRecorder(PostgresApplicationRecorder):
    """eventsourcing's save protocol, unchanged, in one round trip instead of five.

    The libpq trace of a stock save shows BEGIN, then SET LOCAL/LOCK TABLE/NOTIFY/INSERT
    pipelined, an extra pipeline Sync, COMMIT and another Sync: five round trips, three
    of them while the EXCLUSIVE table lock is held (and, in a threaded host, however
    long the holding thread waits for the GIL between them). Here a plpgsql function
    takes the same lock with the same timeout, sends the same NOTIFY and inserts the
    same rows; it is called in autocommit, so the lock is taken and released inside
    one statement's transaction on the server. A save whose first version is already
    committed fails before queueing for the lock, with the unique violation the INSERT
    would have raised.
    """

    take_lock = True
    async_outcomes = False
    early_conflict = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema = Identifier(self.datastore.schema)
        table = Identifier(self.events_table_name)
        function = Identifier(f"{self.events_table_name}_insert_{type(self).__name__.lower()}")
        lock = SQL(
            "SET LOCAL lock_timeout = '{timeout}s'; "
            "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; NOTIFY {channel}; "
        ).format(
            timeout=SQL(str(int(self.datastore.lock_timeout))),
            schema=schema,
            table=table,
            channel=Identifier(self.channel_name),
        )
        # A claim that already lost (its version is committed) fails without queueing for
        # the table lock: the same unique_violation the INSERT would raise.
        early = SQL(
            "IF EXISTS (SELECT 1 FROM {schema}.{table} WHERE originator_id = ids[1] "
            "AND originator_version = versions[1]) THEN RAISE unique_violation USING "
            "MESSAGE = 'duplicate key value violates unique constraint (checked early)'; "
            "END IF; "
        ).format(schema=schema, table=table)
        relax = SQL(
            "IF NOT durable THEN PERFORM set_config('synchronous_commit', 'off', true); END IF; "
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}("
                "ids uuid[], versions bigint[], topics text[], states bytea[], durable boolean) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN {early}{relax}{lock}"
                "RETURN QUERY INSERT INTO {schema}.{table} "
                "(originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(ids, versions, topics, states) "
                "RETURNING notification_id; END; $BODY$"
            ).format(
                schema=schema,
                table=table,
                function=function,
                early=early if self.early_conflict else SQL(""),
                relax=relax if self.async_outcomes else SQL(""),
                lock=lock if self.take_lock else SQL(""),
            )
        )
        self._call_statement = SQL("SELECT * FROM {schema}.{function}(%s, %s, %s, %s, %s)").format(
            schema=schema, function=function
        )

    def insert_events(self, stored_events: Sequence[Any], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        params = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
            any(e.topic == _STARTED_TOPIC for e in stored_events),  # a claim: durable
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._call_statement, params, prepare=True)
            return [row[next(iter(row))] for row in curs.fetchall()]


class OneRoundTripAsyncOutcomeRecorder(OneRoundTripRecorder):
    """As above, plus ``synchronous_commit = off`` for outcome saves; claims stay durable.

    A server crash can lose an outcome committed in the last ~3 x wal_writer_delay. The
    payout is then in flight again, the state a crash between Stripe's answer and the
    outcome save already leaves today, and resume() settles it with the same
    idempotency key (Stripe answers with the transfer it made). A lost *claim* could
    let a later attempt pay twice, so claims keep synchronous commit.
    """

    async_outcomes = True


class OneRoundTripNoLockRecorder(OneRoundTripRecorder):
    """As above, without ``LOCK TABLE`` and ``NOTIFY``: commits share fsyncs again.

    The (originator_id, originator_version) primary key still makes the claim a save.
    What is lost is eventsourcing's promise that notification ids commit in order: a
    reader tailing the log (a projection, a subscription) could pass a gap that fills
    later. The ledger's own readers (in_flight, reconcile) rescan from the start.
    """

    take_lock = False


@dataclass(frozen=True)
class LedgerVariant:
    """One way of building the ledger."""

    name: str
    summary: str
    env: Mapping[str, str] = field(default_factory=dict)
    """eventsourcing environment keys set on top of ours."""
    drop: tuple[str, ...] = ()
    """Our environment keys removed, so eventsourcing's defaults apply."""
    recorder: type[PostgresApplicationRecorder] | None = None
    skip_load: bool = False
    """Claim a never-seen payout without loading it first (fall back on a conflict)."""
    proposal: str = ""
    """The change to src/ this prototype stands for."""
    safe: bool = True
    """Whether it keeps every guarantee the ledger documents today."""


VARIANTS: dict[str, LedgerVariant] = {
    v.name: v
    for v in [
        LedgerVariant("ours", "the ledger as shipped (LedgerSettings defaults)"),
        LedgerVariant(
            "stock",
            "eventsourcing's own defaults: no lock timeout, 30 s connect timeout",
            drop=("POSTGRES_LOCK_TIMEOUT", "POSTGRES_CONNECT_TIMEOUT"),
        ),
        LedgerVariant(
            "skip_load",
            "claim a never-seen payout without first loading it",
            skip_load=True,
            proposal=(
                "In PayoutLedger._decide, try the claim of attempt 1 first "
                "(PayoutAggregate.start + save as version 1); only on IntegrityError load "
                "and decide as today. One SELECT round trip fewer per first release."
            ),
        ),
        LedgerVariant(
            "one_round_trip",
            "eventsourcing's LOCK TABLE + NOTIFY + INSERT, sent as one round trip",
            recorder=OneRoundTripRecorder,
            proposal=(
                "A PostgresApplicationRecorder subclass in src/ (chosen in "
                "PayoutLedger.construct_recorder through APPLICATION_RECORDER_TOPIC) whose "
                "insert_events calls a plpgsql function, created with the table, that takes "
                "the same EXCLUSIVE lock with the same timeout, NOTIFYs and inserts, in "
                "autocommit: 1 round trip per save instead of 5, none of them made while "
                "the table is locked."
            ),
        ),
        LedgerVariant(
            "skip_load+one_round_trip",
            "both of the above",
            recorder=OneRoundTripRecorder,
            skip_load=True,
            proposal="Both changes: 2 round trips per first release instead of 11.",
        ),
        LedgerVariant(
            "skip_load+one_round_trip+async_outcome",
            "and synchronous_commit=off for the outcome save (claims stay durable)",
            recorder=OneRoundTripAsyncOutcomeRecorder,
            skip_load=True,
            safe=False,
            proposal=(
                "Opt-in setting: outcome saves commit with synchronous_commit=off, so only "
                "the claim waits for an fsync under the table lock. A server crash may lose "
                "a just-recorded outcome; the payout is then in flight and resume() "
                "records the same transfer again with the same idempotency key."
            ),
        ),
        LedgerVariant(
            "db_functions",
            "eventsourcing's own POSTGRES_ENABLE_DB_FUNCTIONS=y (no LOCK TABLE)",
            env={"POSTGRES_ENABLE_DB_FUNCTIONS": "y"},
            safe=False,
            proposal=(
                "A LedgerSettings flag passing POSTGRES_ENABLE_DB_FUNCTIONS=y: eventsourcing "
                "inserts through its plpgsql function, which NOTIFYs but takes no table lock, "
                "so notification ids may commit out of order."
            ),
        ),
        LedgerVariant(
            "skip_load+one_round_trip+no_table_lock",
            "one round trip without LOCK TABLE and NOTIFY",
            recorder=OneRoundTripNoLockRecorder,
            skip_load=True,
            safe=False,
            proposal=(
                "Only if no reader ever tails the log: the claim is still the primary key, "
                "but notification ids may commit out of order."
            ),
        ),
    ]
}


def _ledger_class(variant: LedgerVariant) -> type[PayoutLedger]:
    class BenchLedger(PayoutLedger):
        def construct_env(self, name: str, env: Any = None) -> Environment:
            values = {k: v for k, v in dict(env or {}).items() if k not in variant.drop}
            if values.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
                values.update(variant.env)
                if variant.recorder is not None:
                    values["APPLICATION_RECORDER_TOPIC"] = get_topic(variant.recorder)
            return Environment(name, values)

        if variant.skip_load:

            def _decide(
                self, req: ReleaseRequest, provider: ServiceProvider
            ) -> ReleaseResult | PayoutAggregate | None:
                # Optimistic first claim: version 1 can be saved only once, so a
                # conflict means the payout exists and we decide the normal way.
                if provider.stripe_account_id is not None:
                    claimed = self._claim(None, req, provider)
                    if claimed is not None:
                        return claimed
                return super()._decide(req, provider)

    BenchLedger.__name__ = BenchLedger.__qualname__ = f"BenchLedger_{variant.name}"
    BenchLedger.name = PayoutLedger.name  # the same table: payoutledger_events
    return BenchLedger


def open_ledger(
    *,
    store_url: str,
    gateway: TransferGateway,
    provider: ServiceProvider,
    variant: str = "ours",
    pool_size: int | None = None,
    max_overflow: int | None = None,
) -> PayoutLedger:
    """A ledger on ``store_url`` built as ``variant``; pool sizes as given (else defaults)."""
    overrides: dict[str, Any] = {}
    if pool_size is not None:
        overrides["postgres_pool_size"] = pool_size
    if max_overflow is not None:
        overrides["postgres_max_overflow"] = max_overflow
    settings = LedgerSettings(store_url=store_url, **overrides)
    cls = _ledger_class(VARIANTS[variant])
    return cls(settings=settings, providers=InMemoryProviderDirectory([provider]), gateway=gateway)


def _datastore_settings(env: Mapping[str, str]) -> dict[str, Any]:
    factory = PostgresFactory(Environment("PayoutLedger", dict(env)))
    store = factory.datastore
    try:
        return {
            "pool_min_size": store.pool.min_size,
            "pool_max_size": store.pool.max_size,
            "lock_timeout_s": store.lock_timeout,
            "connect_timeout_s": store.pool.timeout,
            "idle_in_transaction_session_timeout_s": store.idle_in_transaction_session_timeout,
            "pre_ping": store.pre_ping,
            "enable_db_functions": store.enable_db_functions,
        }
    finally:
        store.close()


def settings_difference(store_url: str) -> dict[str, Any]:
    """eventsourcing's stock PostgreSQL datastore settings next to the ledger's.

    Both are read back from eventsourcing's own factory, so this is what each
    really runs with, not what anyone believes the defaults are.
    """
    ours_env = store_environment(LedgerSettings(store_url=store_url))
    stock_env = {k: v for k, v in ours_env.items() if k in _CONNECTION_KEYS}
    ours = _datastore_settings(ours_env)
    stock = _datastore_settings(stock_env)
    return {
        "stock": stock,
        "ours": ours,
        "differ": sorted(k for k in ours if ours[k] != stock[k]),
    }


_CONNECTION_KEYS = {
    "PERSISTENCE_MODULE",
    "POSTGRES_DBNAME",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_SCHEMA",
}
