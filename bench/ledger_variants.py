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

from payout_ledger import LedgerSettings, PayoutLedger, ReleaseRequest
from payout_ledger.adapters.recorders import OneRoundTripRecorder
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.service.ports import ServiceProvider, TransferGateway
from payout_ledger.service.release import _LostClaim
from payout_ledger.settings import store_environment
from payout_ledger.testing import InMemoryProviderDirectory

__all__ = ["VARIANTS", "LedgerVariant", "open_ledger", "settings_difference"]

_STARTED_TOPIC = PayoutAggregate.PayoutStarted.TOPIC


class AsyncOutcomeRecorder(OneRoundTripRecorder):
    """The shipped recorder, plus ``synchronous_commit = off`` for outcome saves.

    Claims (a save holding ``PayoutStarted``) still wait for their fsync. A server crash
    can lose an outcome committed in the last ~3 x wal_writer_delay; the payout is then
    in flight again, the state a crash between Stripe's answer and the outcome save
    already leaves today, and resume() settles it with the same idempotency key.
    """

    def _add_function(self, suffix: str, *, params: list[str], **kwargs: Any) -> str:
        # Next to each shipped function, a wrapper that relaxes the commit and calls it.
        shipped = super()._add_function(suffix, params=params, **kwargs)
        schema = Identifier(self.datastore.schema)
        name = f"{self.events_table_name}_{suffix}"
        args = SQL(", ").join(SQL(p.split()[0]) for p in params)
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{relaxed}({params}) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
                "PERFORM set_config('synchronous_commit', 'off', true); "
                "RETURN QUERY SELECT * FROM {schema}.{shipped}({args}); END; $BODY$"
            ).format(
                schema=schema,
                relaxed=Identifier(name + "_async"),
                params=SQL(", ".join(params)),
                shipped=Identifier(name),
                args=args,
            )
        )
        relaxed = SQL("SELECT * FROM {schema}.{relaxed}({placeholders})").format(
            schema=schema,
            relaxed=Identifier(name + "_async"),
            placeholders=SQL(", ".join(["%s"] * len(params))),
        )
        self.__dict__.setdefault("_relaxed", {})[id(shipped)] = relaxed
        return shipped

    def _insert_statement(self, stored_events: Sequence[Any]) -> tuple[Any, tuple[Any, ...]]:
        statement, params = super()._insert_statement(stored_events)
        if any(e.topic == _STARTED_TOPIC for e in stored_events):
            return statement, params  # claims stay durable
        return self.__dict__["_relaxed"][id(statement)], params


class NoTableLockRecorder(OneRoundTripRecorder):
    """The shipped recorder's scalar inserts without ``LOCK TABLE`` and ``NOTIFY``.

    The (originator_id, originator_version) primary key still makes the claim a save.
    What is lost is eventsourcing's promise that notification ids commit in order: a
    reader tailing the log (a projection, a subscription) could pass a gap that fills
    later.
    """

    def _insert_statement(self, stored_events: Sequence[Any]) -> tuple[Any, tuple[Any, ...]]:
        statement, params = super()._insert_statement(stored_events)
        if len(stored_events) not in self._insert_rows:
            return statement, params
        rows = ", ".join(["(%s, %s, %s, %s)"] * len(stored_events))
        plain = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "VALUES {rows} RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            rows=SQL(rows),
        )
        return plain, params


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
    """The application recorder (else the shipped ``OneRoundTripRecorder``)."""
    load_first: bool = False
    """Load the payout before claiming it, as the ledger did before claim-first."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """``LedgerSettings`` values set on top of the defaults."""
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
            "eventsourcing's own recorder and defaults: five round trips per save, "
            "no lock timeout, 30 s connect timeout",
            drop=("POSTGRES_LOCK_TIMEOUT", "POSTGRES_CONNECT_TIMEOUT"),
            recorder=PostgresApplicationRecorder,
        ),
        LedgerVariant(
            "load_first",
            "the ledger before claim-first: every release loads the payout, then claims",
            load_first=True,
            proposal=(
                "What PayoutLedger._decide did before it tried the claim of attempt 1 "
                "first: kept to measure what claim-first gained."
            ),
        ),
        LedgerVariant(
            "account_read_first",
            "every release reads the connected account's record before its claim",
            settings={"payability_cache_seconds": 0},
            proposal=(
                "What PayoutLedger._known_unpayable did before payability_cache_seconds "
                "(the setting at 0): kept to measure what trusting a payable account for "
                "the window gained."
            ),
        ),
        LedgerVariant(
            "async_outcome",
            "synchronous_commit=off for the outcome save (claims stay durable)",
            recorder=AsyncOutcomeRecorder,
            safe=False,
            proposal=(
                "Opt-in setting: outcome saves commit with synchronous_commit=off, so only "
                "the claim waits for an fsync under the table lock. A server crash may lose "
                "a just-recorded outcome; the payout is then in flight and resume() "
                "records the same transfer again with the same idempotency key."
            ),
        ),
        LedgerVariant(
            "no_table_lock",
            "the single-event insert without LOCK TABLE and NOTIFY",
            recorder=NoTableLockRecorder,
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

        if variant.load_first:

            def _claim(
                self,
                payout: PayoutAggregate | None,
                req: ReleaseRequest,
                provider: ServiceProvider,
            ) -> Any:
                # The optimistic first claim comes in with payout=None before any read:
                # read first, as before, and decide on what was read.
                if payout is None:
                    stored = self._load(req.event_service_id)
                    if stored is not None:
                        return _LostClaim(stored)
                return super()._claim(payout, req, provider)

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
    create_tables: bool = True,
) -> PayoutLedger:
    """A ledger on ``store_url`` built as ``variant``; pool sizes as given (else defaults)."""
    overrides: dict[str, Any] = {"create_tables": create_tables}
    if pool_size is not None:
        overrides["postgres_pool_size"] = pool_size
    if max_overflow is not None:
        overrides["postgres_max_overflow"] = max_overflow
    overrides.update(VARIANTS[variant].settings)
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
