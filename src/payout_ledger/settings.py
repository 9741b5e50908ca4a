"""Settings and stores.

The ledger never reads the environment by itself. A host builds
[`LedgerSettings`][payout_ledger.LedgerSettings] explicitly, from arguments or,
by calling ``LedgerSettings()``, from ``PAYOUT_LEDGER_*`` environment variables,
and passes it in.

Stores are chosen by URL:

| URL | store |
|---|---|
| ``memory://`` | in memory (tests) |
| ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` | an SQLite file (the default) |
| ``postgresql://user:password@host:5432/dbname`` | PostgreSQL through psycopg 3 |

A PostgreSQL URL may name a schema with ``?schema=payouts`` and a Unix socket
directory with ``?host=/run/postgresql``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from payout_ledger.errors import ConfigurationError

__all__ = ["LedgerSettings", "livemode_of_key", "redact_url", "store_environment"]

Environment = Literal["development", "test", "staging", "production"]

STRIPE_KEY_RETENTION = 24 * 3600
"""Stripe may prune an idempotency key once it is this many seconds old."""
SEND_MARGIN = 3600
"""Kept free below the key retention: Stripe may still be executing a request
after the client gave up on it, and clocks run at slightly different rates."""
MAX_STRIPE_TIMEOUT = 600.0
"""The longest accepted ``stripe_timeout`` (Stripe's own SDKs use 80 s)."""


class LedgerSettings(BaseSettings):
    """Everything the ledger can be configured with."""

    model_config = SettingsConfigDict(env_prefix="PAYOUT_LEDGER_", frozen=True, extra="forbid")

    store_url: str = "sqlite:///payout_ledger.db"
    """Where events are stored: ``memory://``, ``sqlite:///...`` or ``postgresql://...``."""

    environment: Environment = "development"
    """``production`` turns every unsafe development convenience into an error."""

    stripe_enabled: bool = True
    """``False`` is for local development only: no money moves. Releases do not
    call the transfer gateway; each transfer is *simulated* (recorded with
    ``simulated=True`` and a ``sim_`` transfer id) and providers need no
    connected account. Refused when ``environment`` is ``production``."""

    stripe_api_key: SecretStr | None = None
    """Used by the Stripe gateway; never logged."""

    stripe_api_base: str | None = None
    """Another Stripe API address (the fake Stripe server in tests)."""

    stripe_timeout: float = Field(default=30.0, gt=0, le=MAX_STRIPE_TIMEOUT)
    """Seconds per Stripe HTTP request; a timeout is an unknown outcome."""

    stripe_max_network_retries: int = Field(default=2, ge=0, le=5)
    """The SDK's own retries of connection errors and 5xx, with the same key."""

    stripe_idempotency_window: int = Field(
        default=3600, ge=60, le=STRIPE_KEY_RETENTION - SEND_MARGIN
    )
    """Seconds after a claim (or after a resume asked Stripe) during which that
    attempt's request may still be sent; every HTTP try, the SDK's retries
    included, checks it first on the process's monotonic clock. Together with
    one request's ``stripe_timeout`` it must stay within 23 hours, well inside
    the 24 hours after which Stripe may prune a key, so no request can reach
    Stripe after its key may be gone. A request not sent in time leaves the
    payout in flight for a resume, which asks Stripe first."""

    stripe_webhook_secrets: tuple[SecretStr, ...] = ()
    """Webhook signing secrets (``whsec_...``); several during a rotation. Never logged."""

    stripe_webhook_tolerance: int = Field(default=300, ge=1)
    """Seconds a webhook signature's timestamp may be old; older is a replay (403)."""

    sqlite_lock_timeout: int = Field(default=10, ge=1)
    """Seconds an SQLite writer waits for the database lock."""

    postgres_lock_timeout: int = Field(default=5, ge=1)
    """Seconds a PostgreSQL writer waits for the events table lock."""

    postgres_pool_size: int = Field(default=5, ge=1)
    postgres_max_overflow: int = Field(default=10, ge=0)
    postgres_connect_timeout: int = Field(default=10, ge=1)

    create_tables: bool = True
    """Create the events table on start-up (idempotent). Turn off where the
    database user may not run DDL and the table was created beforehand."""

    claim_attempts: int = Field(default=5, ge=1)
    """How many times a release reloads and decides again after losing a race."""

    cipher_key: SecretStr | None = None
    """Encrypt stored events at rest: a base64 AES key of 16, 24 or 32 bytes, made with
    ``eventsourcing.cryptography.AESCipher.create_key(32)``.
    Events are then stored with eventsourcing's AES-GCM cipher
    (``eventsourcing.cryptography:AESCipher``); every process needs the same key
    and a store must be encrypted from its first event. Never logged."""

    read_model_table: str = Field(
        default="payout_ledger_payouts", pattern=r"^[a-z_][a-z0-9_]{0,40}$"
    )
    """The read model's table (one row per event service), in the events' database;
    its tracking table is this name plus ``_tracking``."""

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in {"memory", "sqlite", "postgresql", "postgres"}:
            raise ValueError(
                f"store_url scheme must be memory, sqlite or postgresql, not {scheme!r}"
            )
        return url

    @model_validator(mode="after")
    def _requests_end_before_keys_may_be_pruned(self) -> LedgerSettings:
        latest = self.stripe_idempotency_window + self.stripe_timeout
        if latest > STRIPE_KEY_RETENTION - SEND_MARGIN:
            raise ValueError(
                "stripe_idempotency_window + stripe_timeout must not exceed "
                f"{STRIPE_KEY_RETENTION - SEND_MARGIN} s (23 hours): a request started at "
                f"the end of the window could reach Stripe {latest:g} s after its claim"
            )
        return self

    def check(self) -> None:
        """Raise [`ConfigurationError`][payout_ledger.ConfigurationError] for
        combinations that cannot be used."""
        if self.environment != "production":
            return
        if not self.stripe_enabled:
            raise ConfigurationError(
                "stripe_enabled=False simulates transfers and is refused in production"
            )
        scheme = urlsplit(self.store_url).scheme
        if scheme == "memory":
            raise ConfigurationError(
                "store_url memory:// forgets every payout when the process ends: refused "
                "in production"
            )
        if scheme == "sqlite" and not Path(_sqlite_file(self.store_url)).is_absolute():
            raise ConfigurationError(
                "store_url names a relative SQLite path, which depends on each process's "
                "working directory (another directory is another, empty store): use "
                "sqlite:////absolute/path.db or PostgreSQL in production"
            )


def livemode_of_key(api_key: str) -> bool | None:
    """True for a live Stripe key, False for a test key, None if the key says neither."""
    if api_key.startswith(("sk_live_", "rk_live_")):
        return True
    if api_key.startswith(("sk_test_", "rk_test_")):
        return False
    return None


def _sqlite_file(url: str) -> str:
    # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db" (SQLAlchemy's rule)
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            "an SQLite store URL looks like sqlite:///relative.db or sqlite:////abs.db"
        )
    path = rest[1:]
    if path in {":memory:", ""}:
        raise ConfigurationError("use memory:// for an in-memory store")
    return path


def store_environment(settings: LedgerSettings) -> dict[str, str]:
    """The eventsourcing environment for the settings' store URL."""
    parts = urlsplit(settings.store_url)
    if parts.scheme == "memory":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if parts.scheme == "sqlite":
        path = _sqlite_path(settings.store_url)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": str(settings.sqlite_lock_timeout),
        }
    return _postgres_environment(settings)


def _sqlite_path(url: str) -> str:
    path = _sqlite_file(url)
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise ConfigurationError(f"the SQLite file's folder does not exist: {parent}")
    return path


def _postgres_environment(settings: LedgerSettings) -> dict[str, str]:
    parts = urlsplit(settings.store_url)
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname
    schema = query.pop("schema", None)
    dbname = parts.path.lstrip("/")
    if not host or not dbname:
        raise ConfigurationError(
            "a PostgreSQL store URL needs a host (or ?host=/socket/dir) and a "
            f"database: {redact_url(settings.store_url)}"
        )
    if query:
        raise ConfigurationError(f"unsupported PostgreSQL URL parameters: {sorted(query)}")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "POSTGRES_LOCK_TIMEOUT": str(settings.postgres_lock_timeout),
        "POSTGRES_POOL_SIZE": str(settings.postgres_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.postgres_max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": str(settings.postgres_connect_timeout),
    }
    if schema:
        env["POSTGRES_SCHEMA"] = schema
    return env


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    redacted = f"{user}:***@{netloc[-1]}"
    return urlunsplit(parts._replace(netloc=redacted, query=urlencode(parse_qsl(parts.query))))
