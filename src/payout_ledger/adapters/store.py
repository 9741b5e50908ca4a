"""The ledger's store: checked, opened, and wired the way the ledger needs.

[`StoreWiring`][payout_ledger.adapters.store.StoreWiring] is the part of the
ledger that eventsourcing calls to build its recorder, transcoder and mapper;
the functions below check a store before it is opened and turn a driver's
failure into [`StoreUnavailableError`][payout_ledger.errors.StoreUnavailableError]
or [`StoreNotFoundError`][payout_ledger.errors.StoreNotFoundError].
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import random
import sqlite3
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import (
    ApplicationRecorder,
    Cipher,
    IntegrityError,
    InternalError,
    Mapper,
    MapperDeserialisationError,
    PersistenceError,
    ProgrammingError,
    Transcoder,
)
from eventsourcing.postgres import (
    BasePostgresFactory,
    PostgresApplicationRecorder,
    PostgresFactory,
)
from eventsourcing.utils import Environment, get_topic

from payout_ledger.adapters.mapper import ChainedMapper
from payout_ledger.adapters.recorders import OneRoundTripRecorder
from payout_ledger.domain.chain import ledger_transcoder
from payout_ledger.errors import (
    ConfigurationError,
    PayoutLedgerError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from payout_ledger.settings import LedgerSettings, redact_url, store_environment

__all__ = ["STORE_FAILURES", "StoreWiring", "first_cause"]

_DDL_ATTEMPTS = 6

_CIPHER_SAMPLE = 5


_CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"


STORE_FAILURES = (PersistenceError, psycopg.Error, sqlite3.Error, OSError, ValueError)
"""What eventsourcing and the drivers raise when a store cannot be opened or set up."""


class StoreWiring(Application):  # type: ignore[type-arg]
    """eventsourcing's construction hooks, as the ledger's store needs them.

    The store named by ``settings.store_url`` is checked before eventsourcing
    opens it (a reason in one line, never a password), PostgreSQL tables are
    created in a way that survives processes starting together, the recorder
    saves in one round trip, the mapper chains events by their stored bytes,
    and the cipher key is checked against the stored events and then dropped
    from the environment.
    """

    settings: LedgerSettings
    _must_exist: bool

    def _open_store(self, settings: LedgerSettings, must_exist: bool) -> None:
        """Open the store (``Application.__init__``) with these settings, or raise
        a typed error; nothing is left open when it fails."""
        self._must_exist = must_exist
        env = {
            **_store_environment(settings, self.name, must_exist),
            **_cipher_environment(settings),
        }
        try:
            Application.__init__(self, env=env)
            self._check_cipher()
        except BaseException as exc:
            self._close_partly_opened()
            if isinstance(exc, STORE_FAILURES) and not isinstance(exc, PayoutLedgerError):
                raise _unavailable(settings, exc) from exc
            raise
        _forget_secrets(self.env)

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only what the host passed in: os.environ must not pick the store.
        return Environment(name, dict(env or {}))

    def construct_recorder(self) -> ApplicationRecorder:
        # eventsourcing creates tables when the recorder is built. Several processes
        # starting at once (web workers) race on PostgreSQL's catalog: the loser of
        # an IF NOT EXISTS gets "tuple concurrently updated", a unique violation in
        # the catalog or "relation ... already exists". Every statement is IF NOT
        # EXISTS / OR REPLACE, so creating again after a short pause is safe.
        if not isinstance(self.factory, BasePostgresFactory):
            return super().construct_recorder()
        self.factory.env[BasePostgresFactory.CREATE_TABLE] = "no"
        self.factory.env.setdefault(
            PostgresFactory.APPLICATION_RECORDER_TOPIC, get_topic(OneRoundTripRecorder)
        )
        recorder = super().construct_recorder()
        if not self.settings.create_tables or self._must_exist:
            return recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        for attempt in range(1, _DDL_ATTEMPTS + 1):
            try:
                recorder.create_table()
            except (InternalError, IntegrityError, ProgrammingError) as exc:
                if attempt == _DDL_ATTEMPTS or not _lost_a_creation_race(exc):
                    raise
                time.sleep(random.uniform(0.05, 0.2) * attempt)
            else:
                break
        return recorder

    def construct_transcoder(self) -> Transcoder:
        # The one transcoder chain.stored_state() also uses: aggregates predict
        # the stored bytes of their fresh events to chain them (see chain.py).
        return ledger_transcoder()

    def construct_mapper(self) -> Mapper[UUID]:
        mapper: Mapper[UUID] = self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=ChainedMapper
        )
        if mapper.cipher is not None:
            mapper.cipher = _ExplainedCipher(mapper.cipher)
        return mapper

    def _close_partly_opened(self) -> None:
        # A constructor that fails must not leave a pool (and its threads) behind.
        factory = self.__dict__.get("factory")
        if factory is not None:
            with contextlib.suppress(Exception):
                factory.close()

    def _check_cipher(self) -> None:
        # A process with the wrong key (or none, on an encrypted store) must not
        # start writing events that no other process can read. One damaged event
        # must not stop the ledger either: a few are tried, one must decode.
        try:
            sample = self.recorder.select_notifications(1, _CIPHER_SAMPLE)
        except (TypeError, ValueError):
            # Columns of other types than the ledger's (retyped by someone with its
            # login): not a question of keys. The auditor's tools read such rows and
            # report each; the ledger's own reads fail on them.
            return
        errors = []
        for notification in sample:
            try:
                self.mapper.to_domain_event(notification)
            except MapperDeserialisationError as exc:  # decryption or JSON: reported below
                errors.append(exc)
            except Exception:
                return
            else:
                return
        if errors:
            cause = first_cause(errors[0])
            raise ConfigurationError(
                f"the stored events cannot be read with these settings: {cause}"
            ) from errors[0]


def _store_environment(settings: LedgerSettings, name: str, must_exist: bool) -> dict[str, str]:
    """The eventsourcing environment of the settings' store, after checking the store.

    PostgreSQL: one connection first (``postgres_connect_timeout``), so that a
    refused password or an unreachable host is said at once, with its reason,
    instead of after the pool's wait; the schema must exist, and with
    ``must_exist`` the events table too. SQLite with ``must_exist``: the file
    must exist and hold the events table; nothing is created.
    """
    env = store_environment(settings)  # ConfigurationError for a URL that names no store
    module = env["PERSISTENCE_MODULE"]
    if must_exist and module == "eventsourcing.popo":
        raise ConfigurationError(
            "must_exist=True cannot open an in-memory store (memory://): it exists only "
            "in the process that made it"
        )
    if must_exist and module == "eventsourcing.sqlite":
        _check_sqlite_store(settings.store_url, env["SQLITE_DBNAME"])
    if module == "eventsourcing.postgres":
        _check_postgres_store(settings, env, f"{name.lower()}_events", must_exist)
    if must_exist:
        env["CREATE_TABLE"] = "no"
    return env


_SQLITE_EVENTS_TABLE = "stored_events"


def _check_sqlite_store(url: str, path: str) -> None:
    try:
        exists = Path(path).exists()
    except (OSError, ValueError) as exc:  # a name the file system refuses
        raise _unavailable_url(url, _first_line(str(exc)) or type(exc).__name__) from None
    if not exists:
        raise StoreNotFoundError(
            f"no store at {url}: the file {path} does not exist",
            url=url,
            reason="the file does not exist",
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (_SQLITE_EVENTS_TABLE,),
            ).fetchone()
    except sqlite3.Error as exc:
        raise _unavailable_url(url, _first_line(str(exc)) or type(exc).__name__) from exc
    if found is None:
        raise StoreNotFoundError(
            f"no store at {url}: the file {path} has no table {_SQLITE_EVENTS_TABLE}",
            url=url,
            reason=f"no table {_SQLITE_EVENTS_TABLE}",
        )


def _check_postgres_store(
    settings: LedgerSettings, env: Mapping[str, str], table: str, must_exist: bool
) -> None:
    url = redact_url(settings.store_url)
    password = env["POSTGRES_PASSWORD"]
    schema = env.get("POSTGRES_SCHEMA") or "public"
    try:
        with psycopg.connect(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=password,
            connect_timeout=settings.postgres_connect_timeout,
            autocommit=True,
        ) as conn:
            _check_schema_name(conn, schema, url)
            if not conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone():
                reason = f'schema "{schema}" does not exist'
                raise StoreNotFoundError(f"no store at {url}: {reason}", url=url, reason=reason)
            if (
                must_exist
                and not conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    (schema, table),
                ).fetchone()
            ):
                reason = f'table "{schema}.{table}" does not exist'
                raise StoreNotFoundError(f"no store at {url}: {reason}", url=url, reason=reason)
    except psycopg.Error as exc:
        reason = _first_line(str(exc)) or type(exc).__name__
        if password:
            reason = reason.replace(password, "***")
        raise _unavailable_url(url, reason) from None


def _check_schema_name(conn: psycopg.Connection[Any], schema: str, url: str) -> None:
    """Refuse a schema name that SQL must quote where a type name goes (a hyphen, a
    space, a quote, a reserved word...): eventsourcing names the schema of its row
    type unquoted, so its first statement there fails with a syntax error.

    Capitals are folded to lower case, as SQL folds an unquoted name, and any
    character beyond ASCII belongs in a name (as SQL's lexer takes it); the server
    decides the rest: a name ``quote_ident`` leaves as it is, or a keyword SQL takes
    as a type's name (``left``, ``authorization``: category ``T``).
    """
    folded = "".join(c if c.isascii() else "x" for c in schema.translate(_ASCII_LOWER))
    row = conn.execute(
        "SELECT quote_ident(%(name)s) = %(name)s OR EXISTS "
        "(SELECT FROM pg_get_keywords() WHERE word = %(name)s AND catcode = 'T')",
        {"name": folded},
    ).fetchone()
    if row is None or not row[0]:
        raise ConfigurationError(
            f"the schema {schema!r} needs quoting in SQL, which the event store does not "
            "do: name a schema of letters, digits and underscores that is no reserved "
            f"word ({url})"
        )


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _lost_a_creation_race(exc: Exception) -> bool:
    """Whether a failed table creation lost to a concurrent creator (and may be retried)."""
    if not isinstance(exc, ProgrammingError):
        return True  # "tuple concurrently updated", a catalog unique violation
    return isinstance(
        exc.__cause__,
        psycopg.errors.DuplicateTable
        | psycopg.errors.DuplicateObject
        | psycopg.errors.DuplicateFunction,
    )


def _unavailable(settings: LedgerSettings, exc: BaseException) -> StoreUnavailableError:
    cause = first_cause(exc) or type(exc).__name__
    reason = _first_line(cause) or type(exc).__name__
    password = _password_of(settings.store_url)
    if password:
        reason = reason.replace(password, "***")
    return _unavailable_url(redact_url(settings.store_url), reason)


def _unavailable_url(url: str, reason: str) -> StoreUnavailableError:
    return StoreUnavailableError(f"cannot open the store {url}: {reason}", url=url, reason=reason)


def _password_of(url: str) -> str | None:
    return urlsplit(url).password


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


_SECRET_ENVIRONMENT = ("POSTGRES_PASSWORD", "CIPHER_KEY")
"""eventsourcing settings that hold secrets: read while the ledger is built, then
dropped from ``ledger.env`` so that no copy of them stays readable there."""


def _forget_secrets(env: dict[str, str]) -> None:
    # The datastore's pool and the cipher keep what they need; the environment
    # (shared with ledger.factory.env) is not needed once they are built.
    for name in _SECRET_ENVIRONMENT:
        env.pop(name, None)


def _cipher_environment(settings: LedgerSettings) -> dict[str, str]:
    """CIPHER_TOPIC and CIPHER_KEY when the settings name a key (the key is
    dropped from ``ledger.env`` once the cipher is built)."""
    if settings.cipher_key is None:
        return {}
    key = settings.cipher_key.get_secret_value()
    try:
        size = len(base64.b64decode(key.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError):
        raise ConfigurationError("cipher_key is not base64") from None
    if size not in (16, 24, 32):
        raise ConfigurationError(f"cipher_key is {size} bytes; AES needs 16, 24 or 32")
    return {"CIPHER_TOPIC": _CIPHER_TOPIC, "CIPHER_KEY": key}


class _ExplainedCipher(Cipher):
    """The configured cipher, with a decryption error that says what is wrong."""

    def __init__(self, cipher: Cipher) -> None:  # wraps a cipher, not built from env
        self._cipher = cipher

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._cipher.encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._cipher.decrypt(ciphertext)
        except ValueError:
            raise ValueError(
                "cannot decrypt a stored event: the cipher_key is wrong, the store "
                "was written without encryption, or the event is damaged"
            ) from None


def first_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)
